/* audit_relay.h - pulls every ledger shard's audit outbox into the log, at least once.
 *
 * One thread. For each shard, source "ledger-<shard>": outbox_read after the highest
 * source_seq the log holds for that source, append the events in one durable commit
 * (dedupe by (source, source_seq) makes a re-delivery harmless), then outbox_ack up to the
 * last of them, so a ledger deletes an event only once audit holds it. A crash between the
 * commit and the ack (fault point "audit.after_commit_before_ack") is repaired on restart:
 * the relay acks up to its high-water mark before reading again.
 *
 * Witnesses (docs/DESIGN.md section 4): each audit instance is a witness with its own log and
 * relay, named by `consumer`; the ledger keeps an event until every consumer on its
 * audit_consumers list acked it. Reads and acks carry the name. A read whose first event is
 * not the one after the log's high-water mark means the shard deleted events this log never
 * held (the log was wiped, or restored from an older copy): the relay appends nothing from
 * that shard, logs audit.relay_gap and counts an error, until the log is restored from a
 * surviving witness's copy.
 *
 * Metrics: qc_audit_relay_events_total{source}, qc_audit_relay_lag{source} (events left in
 * the shard's outbox after the last ack), qc_audit_relay_errors_total{source}. */
#ifndef AUDIT_RELAY_H
#define AUDIT_RELAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "audit_store.h"
#include "proto_limits.h"
#include "proto_rpc.h"
#include "qc_error.h"

#define AUDIT_RELAY_SHARDS_MAX PROTO_SHARD_COUNT_MAX
#define AUDIT_RELAY_RPC_TIMEOUT_MS 3000   /* budget of one outbox_read or outbox_ack */
#define AUDIT_RELAY_LAG_WARN 100000       /* outbox depth that is logged as a warning */
#define AUDIT_RELAY_REWIND_CHECK_MS 10000 /* a shard's held events compared with the log's */
#define AUDIT_RELAY_BATCH_MAX PROTO_OUTBOX_READ_MAX /* events per outbox_read */
#define AUDIT_RELAY_SOURCE_PREFIX AUDIT_SOURCE_RELAY_PREFIX
#define AUDIT_RELAY_CONSUMER_MAX 32 /* a witness's name on the ledgers' audit_consumers */

typedef struct audit_relay audit_relay_t;

typedef struct audit_relay_config {
    void *zctx;                        /* zmq context, not owned */
    audit_store_t *store;              /* not owned */
    const char *ledger;                /* shard endpoints: ';' between shards, ',' instances */
    const char *ledger_key;            /* the ledger's CURVE public key (Z85) */
    const proto_curve_keypair_t *keys; /* audit's own key pair */
    uint32_t batch_max;                /* events per read, 1..AUDIT_RELAY_BATCH_MAX */
    uint32_t poll_ms;                  /* idle wait between rounds */
    const char *consumer;              /* this witness's name ("audit-1"), or NULL */
} audit_relay_config_t;

/* Parses the shard list and creates one RPC client per shard (no thread yet).
 * Returns 0 and sets *out, QC_ECONFIG (empty or bad list, too many shards, bad key) or
 * QC_ENOMEM. */
QC_MUST_CHECK int audit_relay_new(const audit_relay_config_t *cfg, audit_relay_t **out);

/* Starts the relay thread. Returns 0 or QC_EINTERNAL. */
QC_MUST_CHECK int audit_relay_start(audit_relay_t *relay);

/* Asks the thread to stop, joins it (an RPC in flight ends within its timeout), closes the
 * clients, frees relay, nulls *relay_p; accepts NULL. */
void audit_relay_destroy(audit_relay_t **relay_p);

/* Milliseconds since the last round in which every shard answered, or since
 * audit_relay_new() before the first (for /healthz). Thread-safe. */
uint64_t audit_relay_stale_ms(const audit_relay_t *relay);

/* True, with why, while a shard's outbox is behind what the log already holds: it still holds,
 * at or below the log's high-water mark for its source, an event the log holds differently
 * or not at all (a ledger restored from an older copy). Those events are not acked (nor
 * deleted) until the shard is brought forward. Thread-safe. */
bool audit_relay_alarm(const audit_relay_t *relay, char *why, size_t why_cap);

#endif
