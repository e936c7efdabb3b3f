/* ops_ratelimit.h - how often one repeated event may be logged: per event and per peer.
 *
 * A storm of one warning (libmicrohttpd failing every accept at the descriptor limit, a flood
 * of bad reports, a full queue) must not become a storm of log lines: the issue that asked for
 * this measured 1.5 million identical lines in a minute. A key is (event, peer): peer names
 * who caused it (a CURVE key, an address, a source) or is NULL for a process-wide event.
 *
 * Within each window of OPS_RATELIMIT_WINDOW_MS a key may write OPS_RATELIMIT_BURST lines, and
 * one event, all its peers together, OPS_RATELIMIT_EVENT_BURST: so one noisy peer cannot hide
 * the others, and 5,000 peers cannot flood either. What is held back is counted; the next line
 * written for that key carries the count, and a key that went quiet gets a summary line of its
 * own (event "log.suppressed", the event, the peer and the count) once its window has ended.
 * ops_log_limited() (ops_log.h) is the one caller in the services; the counting is separate
 * here so that it can be tested against a clock the test drives.
 *
 * A table of OPS_RATELIMIT_SLOTS keys: when it is full, the key seen least recently is
 * evicted, its count written first. Not thread-safe: ops_log_limited() holds a lock. */
#ifndef OPS_RATELIMIT_H
#define OPS_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define OPS_RATELIMIT_WINDOW_MS 10000 /* one window per key */
#define OPS_RATELIMIT_BURST 5         /* lines per (event, peer) per window */
#define OPS_RATELIMIT_EVENT_BURST 50  /* lines per event, all peers, per window */
#define OPS_RATELIMIT_SLOTS 512       /* keys remembered; the least recent goes first */
#define OPS_RATELIMIT_NAME_MAX 63     /* bytes of an event or peer kept (longer: cut) */

typedef struct ops_ratelimit ops_ratelimit_t;

/* What was held back for one key, handed to the summary callback. */
typedef struct ops_ratelimit_summary {
    const char *event;
    const char *peer; /* NULL for the event's own count over all peers */
    uint64_t suppressed;
} ops_ratelimit_summary_t;

/* Called for each key whose window ended with lines held back (or that was evicted). */
typedef void(ops_ratelimit_summary_fn)(void *arg, const ops_ratelimit_summary_t *s);

/* Returns a new table whose held-back counts go to fn(arg) (by ops_ratelimit_flush() and on
 * eviction), or NULL when out of memory. */
ops_ratelimit_t *ops_ratelimit_new(ops_ratelimit_summary_fn *fn, void *arg);
void ops_ratelimit_destroy(ops_ratelimit_t **rl_p);

/* One occurrence of event from peer (may be NULL) at now_ms (monotonic). Returns true when a
 * line may be written; *suppressed then holds how many of this key were held back since its
 * last written line (the caller writes it on the line). Returns false, counting it, when the
 * key or the event is over its burst. */
bool ops_ratelimit_allow(ops_ratelimit_t *rl, const char *event, const char *peer, uint64_t now_ms,
                         uint64_t *suppressed);

/* Hands to the summary callback every key whose window ended by now_ms with lines held back,
 * then forgets the count (the summary line is the count), and frees keys idle for two windows.
 * Returns how many summaries it gave. */
size_t ops_ratelimit_flush(ops_ratelimit_t *rl, uint64_t now_ms);

#endif
