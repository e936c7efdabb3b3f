/* ledger_scrub.h - the ledger's background scrub: every record's checksum, at a set rate.
 *
 * A flipped bit in a record that nobody reads (an old load, an idle account) would wait for
 * its next read. The scrub walks every record of the summed databases (ledger_store.h) in the
 * service's own thread, a few each tick of its loop, at scrub_per_second records a second, and
 * starts over after the last: at the default 1000/s a shard of a million records is walked in
 * about 17 minutes, at a cost of one CRC-32C per record. A corrupt record is handled as any
 * read of it is (logged with its key, counted, writes stop); the scrub goes on past it.
 * Metrics: qc_ledger_scrub_records_total, qc_ledger_scrub_passes_total. */
#ifndef LEDGER_SCRUB_H
#define LEDGER_SCRUB_H

#include <stdint.h>

#include "ledger_store.h"
#include "qc_error.h"

#define LEDGER_SCRUB_PER_SECOND_DEFAULT 1000
#define LEDGER_SCRUB_PER_SECOND_MAX 1000000
#define LEDGER_SCRUB_TICK_MS 100 /* at most one step this often */

typedef struct ledger_scrub ledger_scrub_t;

/* A scrub of store (borrowed) at per_second records a second; 0 turns it off (tick does
 * nothing). Returns 0 and sets *out, or QC_ENOMEM. */
QC_MUST_CHECK int ledger_scrub_new(ledger_store_t *store, uint32_t per_second,
                                   ledger_scrub_t **out);

/* Checks the records due since the last tick (at most one second's worth), when at least
 * LEDGER_SCRUB_TICK_MS passed. mono_ms is the monotonic clock. A failure to read is logged
 * and retried next tick. */
void ledger_scrub_tick(ledger_scrub_t *scrub, uint64_t mono_ms);

/* Frees scrub, nulls *scrub_p; accepts NULL. */
void ledger_scrub_destroy(ledger_scrub_t **scrub_p);

#endif
