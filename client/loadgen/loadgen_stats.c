/* loadgen_stats.c - latency samples, outcomes and errors of one qc-loadgen run. */
#include "loadgen_stats.h"

#include <assert.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "qc_error.h"

#define LOADGEN_SAMPLES_INITIAL 65536

typedef struct loadgen_samples {
    uint32_t *us; /* microseconds, saturated at UINT32_MAX */
    size_t count, cap;
    uint64_t dropped; /* beyond LOADGEN_SAMPLES_MAX */
    bool sorted;
} loadgen_samples_t;

typedef struct loadgen_error_kind {
    loadgen_step_t step;
    int code;
    uint64_t count;
} loadgen_error_kind_t;

struct loadgen_stats {
    loadgen_samples_t series[LOADGEN_SERIES_COUNT];
    uint64_t states[LOADGEN_STATE_MAX];
    uint64_t completed;
    loadgen_error_kind_t errors[LOADGEN_ERROR_KINDS_MAX];
    size_t error_kinds;
    uint64_t errors_other; /* kinds beyond LOADGEN_ERROR_KINDS_MAX */
    uint64_t errors_total;
};

static const char *const loadgen_step_names[LOADGEN_STEP_COUNT] = {"load", "report", "local"};

int loadgen_stats_new(loadgen_stats_t **out)
{
    assert(out != NULL);
    *out = NULL;
    loadgen_stats_t *s = calloc(1, sizeof *s);
    if (s == NULL)
        return QC_ENOMEM;
    for (int i = 0; i < LOADGEN_SERIES_COUNT; i++) {
        s->series[i].us = malloc(LOADGEN_SAMPLES_INITIAL * sizeof(uint32_t));
        if (s->series[i].us == NULL) {
            loadgen_stats_destroy(&s);
            return QC_ENOMEM;
        }
        s->series[i].cap = LOADGEN_SAMPLES_INITIAL;
    }
    *out = s;
    return 0;
}

void loadgen_stats_destroy(loadgen_stats_t **stats_p)
{
    if (stats_p == NULL || *stats_p == NULL)
        return;
    for (int i = 0; i < LOADGEN_SERIES_COUNT; i++)
        free((*stats_p)->series[i].us);
    free(*stats_p);
    *stats_p = NULL;
}

void loadgen_stats_latency(loadgen_stats_t *s, loadgen_series_t series, uint64_t ns)
{
    assert(s != NULL);
    assert(series < LOADGEN_SERIES_COUNT);
    loadgen_samples_t *x = &s->series[series];
    if (x->count == x->cap) {
        size_t cap = x->cap * 2 > LOADGEN_SAMPLES_MAX ? LOADGEN_SAMPLES_MAX : x->cap * 2;
        uint32_t *us = cap > x->cap ? realloc(x->us, cap * sizeof(uint32_t)) : NULL;
        if (us == NULL) {
            x->dropped++;
            return;
        }
        x->us = us;
        x->cap = cap;
    }
    uint64_t us = ns / 1000;
    x->us[x->count++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
    x->sorted = false;
}

void loadgen_stats_outcome(loadgen_stats_t *s, int state)
{
    assert(s != NULL);
    s->completed++;
    if (state >= 0 && state < LOADGEN_STATE_MAX)
        s->states[state]++;
}

void loadgen_stats_error(loadgen_stats_t *s, loadgen_step_t step, int code)
{
    assert(s != NULL);
    assert(step < LOADGEN_STEP_COUNT);
    s->errors_total++;
    for (size_t i = 0; i < s->error_kinds; i++) {
        if (s->errors[i].step == step && s->errors[i].code == code) {
            s->errors[i].count++;
            return;
        }
    }
    if (s->error_kinds == LOADGEN_ERROR_KINDS_MAX) {
        s->errors_other++;
        return;
    }
    s->errors[s->error_kinds++] = (loadgen_error_kind_t){.step = step, .code = code, .count = 1};
}

uint64_t loadgen_stats_completed(const loadgen_stats_t *s)
{
    assert(s != NULL);
    return s->completed;
}

uint64_t loadgen_stats_outcomes(const loadgen_stats_t *s, int state)
{
    assert(s != NULL);
    return state >= 0 && state < LOADGEN_STATE_MAX ? s->states[state] : 0;
}

uint64_t loadgen_stats_errors(const loadgen_stats_t *s)
{
    assert(s != NULL);
    return s->errors_total;
}

static int loadgen_u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* The nearest-rank percentile q (0..1) of sorted samples. */
static double loadgen_rank(const loadgen_samples_t *x, double q)
{
    assert(x->sorted);
    assert(x->count > 0);
    size_t rank = (size_t)(q * (double)x->count + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > x->count)
        rank = x->count;
    return (double)x->us[rank - 1];
}

void loadgen_stats_latency_summary(loadgen_stats_t *s, loadgen_series_t series,
                                   loadgen_latency_t *out)
{
    assert(s != NULL);
    assert(series < LOADGEN_SERIES_COUNT);
    assert(out != NULL);
    loadgen_samples_t *x = &s->series[series];
    memset(out, 0, sizeof *out);
    out->count = x->count;
    if (x->count == 0)
        return;
    if (!x->sorted) {
        qsort(x->us, x->count, sizeof(uint32_t), loadgen_u32_cmp);
        x->sorted = true;
    }
    double sum = 0;
    for (size_t i = 0; i < x->count; i++)
        sum += x->us[i];
    out->mean_us = sum / (double)x->count;
    out->p50_us = loadgen_rank(x, 0.50);
    out->p90_us = loadgen_rank(x, 0.90);
    out->p99_us = loadgen_rank(x, 0.99);
    out->p999_us = loadgen_rank(x, 0.999);
    out->max_us = (double)x->us[x->count - 1];
}

void loadgen_stats_errors_json(const loadgen_stats_t *s, FILE *f)
{
    assert(s != NULL);
    assert(f != NULL);
    fputc('{', f);
    for (size_t i = 0; i < s->error_kinds; i++)
        fprintf(f, "%s\"%s:%s\": %llu", i > 0 ? ", " : "", loadgen_step_names[s->errors[i].step],
                qc_errname(s->errors[i].code), (unsigned long long)s->errors[i].count);
    if (s->errors_other > 0)
        fprintf(f, "%s\"other\": %llu", s->error_kinds > 0 ? ", " : "",
                (unsigned long long)s->errors_other);
    fputc('}', f);
}

void loadgen_stats_errors_table(const loadgen_stats_t *s, FILE *f)
{
    assert(s != NULL);
    assert(f != NULL);
    for (size_t i = 0; i < s->error_kinds; i++)
        fprintf(f, "  %-8s %-16s %10llu  %s\n", loadgen_step_names[s->errors[i].step],
                qc_errname(s->errors[i].code), (unsigned long long)s->errors[i].count,
                qc_strerror(s->errors[i].code));
    if (s->errors_other > 0)
        fprintf(f, "  other kinds               %10llu\n", (unsigned long long)s->errors_other);
}
