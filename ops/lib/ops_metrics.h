/* ops_metrics.h - Prometheus /metrics and /healthz on a per-service HTTP port (libmicrohttpd).
 *
 * Metrics live in one process-wide registry, found or created by full name (labels
 * included, e.g. "qc_rpc_requests_total{method=\"reserve\"}"). Updates are lock-free
 * atomics, safe from any thread; registration takes a lock. Metric objects live until
 * exit. */
#ifndef OPS_METRICS_H
#define OPS_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "qc_error.h"

#define OPS_METRICS_MAX 512
#define OPS_METRICS_NAME_MAX 160

typedef struct ops_counter ops_counter_t;
typedef struct ops_gauge ops_gauge_t;
typedef struct ops_histogram ops_histogram_t;

/* Find-or-create. Never NULL: running out of slots is a programming error (asserted). */
ops_counter_t *ops_counter(const char *name, const char *help);
ops_gauge_t *ops_gauge(const char *name, const char *help);
/* Latency histogram in seconds with fixed buckets from 100 us to 10 s:
 * 0.0001 0.00025 0.0005 0.001 0.0025 0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5 10 +Inf.
 * A name with labels gets le merged into them: name_bucket{a="b",le="0.1"}. A negative or
 * NaN observation counts as 0. */
ops_histogram_t *ops_histogram(const char *name, const char *help);

void ops_counter_add(ops_counter_t *c, uint64_t n);
uint64_t ops_counter_value(const ops_counter_t *c);
void ops_gauge_set(ops_gauge_t *g, int64_t v);
void ops_gauge_add(ops_gauge_t *g, int64_t delta);
int64_t ops_gauge_value(const ops_gauge_t *g);
void ops_histogram_observe(ops_histogram_t *h, double seconds);

/* Renders the whole registry in Prometheus text format into a malloc'd string the caller
 * frees; NULL on allocation failure. */
char *ops_metrics_render(void);

/* Health: the server answers /healthz with 200 "ok\n" when fn returns true (or fn is NULL),
 * 503 with the text it filled in plus "\n" otherwise ("unhealthy\n" if it left why empty).
 * fn is called from the HTTP thread. Any other path is 404; a method other than GET or HEAD
 * on /metrics or /healthz is 405. */
typedef bool(ops_health_fn)(void *arg, char *why, size_t why_cap);

typedef struct ops_http ops_http_t;

/* Starts the HTTP server on 127.0.0.1:port (port 0 = disabled: returns 0 with *out NULL).
 * Returns 0, or QC_EIO when the port cannot be bound. */
QC_MUST_CHECK int ops_http_start(uint16_t port, ops_health_fn *fn, void *arg, ops_http_t **out);
void ops_http_stop(ops_http_t **http_p);

#endif
