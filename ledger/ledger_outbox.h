/* ledger_outbox.h - the outbox's consumers: audit witnesses that each pull every event.
 *
 * A shard's outbox keeps each audit event until audit holds it. With several independent
 * audit witnesses (docs/DESIGN.md section 4), "audit holds it" means every witness does: the
 * ledger's config names the consumers (`audit_consumers = audit-1,audit-2`), each has its
 * own cursor in the store (ledger_store_outbox_ack_by()), and an event goes only once every
 * cursor passed it. Without the list the outbox has one anonymous consumer, as before.
 *
 * This module holds the parsed list, answers the outbox methods' consumer questions and
 * publishes one lag gauge per consumer, qc_ledger_outbox_lag{consumer="audit-1"} (events
 * after its cursor). One thread (the service's) owns a ledger_outbox_t. */
#ifndef LEDGER_OUTBOX_H
#define LEDGER_OUTBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ledger.pb-c.h"
#include "ledger_store.h"
#include "qc_error.h"

typedef struct ledger_outbox ledger_outbox_t;

/* Parses list (comma-separated names of [A-Za-z0-9_-], at most
 * LEDGER_OUTBOX_CONSUMER_NAME_MAX bytes each, at most LEDGER_OUTBOX_CONSUMERS_MAX, no
 * repeats; NULL or "" = one anonymous consumer) and registers the gauges. Returns 0,
 * QC_ECONFIG (logged, naming the entry) or QC_ENOMEM. */
QC_MUST_CHECK int ledger_outbox_new(const char *list, ledger_outbox_t **out);
void ledger_outbox_destroy(ledger_outbox_t **outbox_p);

/* The configured names (borrowed) and their number (0 without a list). */
const char *const *ledger_outbox_consumers(const ledger_outbox_t *ob, size_t *count);

/* Whether consumer may read and ack: any name (or none) without a list, else a listed name. */
bool ledger_outbox_known(const ledger_outbox_t *ob, const char *consumer);

/* Acks upto_seq for consumer in txn (ledger_store_outbox_ack_by() with the list). Returns 0,
 * QC_EDENIED (not a listed consumer: nothing changed), QC_EIO. */
QC_MUST_CHECK int ledger_outbox_ack(const ledger_outbox_t *ob, ledger_store_t *store, MDB_txn *txn,
                                    const char *consumer, uint64_t upto_seq);

/* Fills an ack's reply from the state in txn: depth (events kept) and lag (events after
 * consumer's cursor; the depth without a list). Returns 0 or QC_EIO. */
QC_MUST_CHECK int ledger_outbox_reply(const ledger_outbox_t *ob, ledger_store_t *store,
                                      MDB_txn *txn, const char *consumer,
                                      Qcledger__OutboxAckReply *reply);

/* Sets the per-consumer lag gauges from the state in txn (errors leave them as they were). */
void ledger_outbox_gauges(ledger_outbox_t *ob, ledger_store_t *store, MDB_txn *txn);

#endif
