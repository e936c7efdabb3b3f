/* ops_log.h - JSON log lines on stderr, one per event.
 *
 * {"time":"2026-11-27T20:30:00.123Z","level":"info","service":"ledger","instance":"0",
 *  "event":"load.reserved","txn_id":"...","amount":"1200"}
 * Values are JSON-escaped; a line is written with one write() so lines from threads do not
 * interleave. Thread-safe.
 * A NULL value is written as null. Bytes that are not valid UTF-8 become \ufffd, control
 * characters \u00XX. A line that would exceed OPS_LOG_LINE_MAX is cut inside the value that
 * overflows (never inside an escape or a UTF-8 character), later fields are dropped, and
 * "truncated":true is added, so the line is still one JSON object ending in "}\n". */
#ifndef OPS_LOG_H
#define OPS_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ops_hex.h"

#define OPS_LOG_LINE_MAX 4096

typedef enum ops_log_level {
    OPS_LOG_DEBUG = 0,
    OPS_LOG_INFO,
    OPS_LOG_WARN,
    OPS_LOG_ERROR,
} ops_log_level_t;

/* Sets the service and instance names written on every line, and the lowest level
 * written (default info). May be called again; not thread-safe against concurrent logging. */
void ops_log_init(const char *service, const char *instance, ops_log_level_t min_level);

/* Parses "debug", "info", "warn", "error"; returns -1 for anything else. */
int ops_log_level_parse(const char *name);

/* The check of a log_level config key (an ops_config_check_fn): true for a level
 * ops_log_level_parse() knows, else false with why. */
bool ops_log_level_check(const char *value, char *why, size_t why_cap);

/* Writes one line: event, then key/value string pairs, terminated by a NULL key.
 *   ops_log(OPS_LOG_INFO, "rpc.refused", "peer", key, "reason", "not allowed", NULL);
 * The compiler checks the terminating NULL (sentinel attribute); forgetting it would read
 * past the arguments. */
void ops_log(ops_log_level_t level, const char *event, ...) __attribute__((sentinel));

/* Same, for a warning that may repeat (a storm of accept errors, bad reports, a full queue):
 * at most OPS_RATELIMIT_BURST lines per (event, peer) and OPS_RATELIMIT_EVENT_BURST per event
 * every OPS_RATELIMIT_WINDOW_MS (ops_ratelimit.h). peer (may be NULL) names who caused it and
 * is written as the field "peer". A line written after some were held back carries
 * "suppressed":"N"; a key that went quiet gets one "log.suppressed" line with the event, the
 * peer and the count once its window is over (written by the next log line of any kind, or by
 * ops_log_limited_flush()). Thread-safe. */
void ops_log_limited(ops_log_level_t level, const char *event, const char *peer, ...)
    __attribute__((sentinel));

/* Writes the "log.suppressed" summaries that are due. Services call it from their loops so a
 * storm that stopped is summed up even when nothing else is logged. */
void ops_log_limited_flush(void);

/* Same, with one "msg" field formatted printf-style. */
void ops_logf(ops_log_level_t level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
