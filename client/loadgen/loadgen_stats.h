/* loadgen_stats.h - what qc-loadgen measures: latency samples, outcomes and errors by kind.
 *
 * Latencies are kept as every sample (microseconds, 4 bytes each) rather than a histogram,
 * so the percentiles are exact; LOADGEN_SAMPLES_MAX bounds the memory (160 MB at the limit).
 * Samples beyond it are counted but not kept. */
#ifndef LOADGEN_STATS_H
#define LOADGEN_STATS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "qc_error.h"

#define LOADGEN_SAMPLES_MAX (40u * 1000u * 1000u)
#define LOADGEN_ERROR_KINDS_MAX 64 /* distinct error codes counted */
#define LOADGEN_STATE_MAX 8        /* Quancun__LoadState values counted */

typedef enum loadgen_series {
    LOADGEN_SERIES_ALLOW = 0, /* intended send of the request -> verified allow */
    LOADGEN_SERIES_OUTCOME,   /* intended send of the request -> verified outcome */
    LOADGEN_SERIES_COUNT
} loadgen_series_t;

/* Where an error happened: the step of the load it ended. */
typedef enum loadgen_step {
    LOADGEN_STEP_LOAD = 0, /* the "load" call or the allow it returned */
    LOADGEN_STEP_REPORT,   /* the "report" call or the outcome it returned */
    LOADGEN_STEP_LOCAL,    /* our own signing or packing */
    LOADGEN_STEP_COUNT
} loadgen_step_t;

typedef struct loadgen_stats loadgen_stats_t;

/* Percentiles of one series, microseconds. */
typedef struct loadgen_latency {
    uint64_t count;
    double p50_us, p90_us, p99_us, p999_us, max_us, mean_us;
} loadgen_latency_t;

/* Returns 0 and sets *out, or QC_ENOMEM. */
QC_MUST_CHECK int loadgen_stats_new(loadgen_stats_t **out);
void loadgen_stats_destroy(loadgen_stats_t **stats_p);

/* Records one latency of series, in nanoseconds. */
void loadgen_stats_latency(loadgen_stats_t *s, loadgen_series_t series, uint64_t ns);

/* Records a final outcome state (Quancun__LoadState) of a completed load. */
void loadgen_stats_outcome(loadgen_stats_t *s, int state);

/* Records an error code (negative QC_E*) at step. */
void loadgen_stats_error(loadgen_stats_t *s, loadgen_step_t step, int code);

/* Completed loads (an outcome arrived), loads in every state, errors in all. */
uint64_t loadgen_stats_completed(const loadgen_stats_t *s);
uint64_t loadgen_stats_outcomes(const loadgen_stats_t *s, int state);
uint64_t loadgen_stats_errors(const loadgen_stats_t *s);

/* Sorts the samples of series (once; later samples re-sort) and fills *out. */
void loadgen_stats_latency_summary(loadgen_stats_t *s, loadgen_series_t series,
                                   loadgen_latency_t *out);

/* Writes the errors as a JSON object {"load:QC_EBUSY": 3, ...} to f. */
void loadgen_stats_errors_json(const loadgen_stats_t *s, FILE *f);

/* Writes the errors as table lines, "  step  code  count", to f. */
void loadgen_stats_errors_table(const loadgen_stats_t *s, FILE *f);

#endif
