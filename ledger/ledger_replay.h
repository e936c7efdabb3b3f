/* ledger_replay.h - brings a shard restored from an older copy forward from the audit log.
 *
 * The audit log holds every event the shard's outbox ever gave it (docs/DESIGN.md section 4),
 * each with the time the ledger made the change and the record it left: the signed request
 * and the reserve's deadline in load.reserved, the allow in load.allowed, the report, reason
 * and new state of a settlement, the account after a deposit, the device after an
 * enrollment. `qcctl shard restore --replay-audit` copies the backup into the data dir and
 * writes the shard's events after the copy's last outbox sequence into a replay file there
 * (format: proto/ledger.proto, ReplayHeader); qc-ledger applies it when it starts, before it
 * serves anything (ledger_replay_pending).
 *
 * Replay runs every event again through the saga, at the event's own time, in sequence order:
 *   load.reserved                 reserve (the request is verified again by the device's
 *                                 enrolled key; the deadline is the event's)
 *   load.allowed                  store_allow
 *   load.confirmed, .compensated, ledger_saga_replay_settle: the same transition, reason and
 *   .late_confirmed               report, whatever caused it (report, deadline, counter)
 *   account.opened, .deposit,     the admin operation (a deposit's amount is the balance it
 *   .frozen, .unfrozen,           left minus the balance before it)
 *   device.enrolled, .revoked
 *   security.bad_report_signature appended again as it was (it changed nothing else)
 * and so every transition appends its event to the outbox again, under the same sequence.
 * Exactness is checked, not assumed: each event appended by the replay must be byte for byte
 * the event the audit log holds (type, txn id, time, payload: the record the change left),
 * or the replay stops there and the ledger does not start. The outbox then goes on after the
 * last of them, so the relay finds no sequence it already holds; the replayed events stay in
 * it until each consumer acknowledges them again (the audit log keeps one of each).
 *
 * Each chunk of LEDGER_REPLAY_CHUNK_MAX events is one durable commit: a replay cut short (a
 * crash) goes on from the store's outbox sequence when the ledger starts again. */
#ifndef LEDGER_REPLAY_H
#define LEDGER_REPLAY_H

#include <stdint.h>

#include <openssl/evp.h>

#include "ledger_store.h"
#include "qc_error.h"

#define LEDGER_REPLAY_FILE "replay.events"
#define LEDGER_REPLAY_DONE "replay.events.done"
#define LEDGER_REPLAY_MAGIC "QCRP"
#define LEDGER_REPLAY_VERSION 1
#define LEDGER_REPLAY_RECORD_MAX (1u << 20) /* bytes of one record: an event is < 200 KiB */
#define LEDGER_REPLAY_CHUNK_MAX 512         /* events per commit */

typedef struct ledger_replay_stats {
    uint64_t events;   /* replayed now */
    uint64_t skipped;  /* replayed before (a replay cut short) */
    uint64_t reserves; /* of which load.reserved */
    uint64_t first_seq, last_seq;
    uint64_t elapsed_ms;
} ledger_replay_stats_t;

/* Replays the replay file at path onto store (the restored copy of shard of shard_count),
 * as above; allow_key is the bank's allow key (borrowed). *stats (may be NULL) gets the
 * figures. Returns 0; QC_EDECODE (a file that does not parse), QC_EVERSION, QC_ESHARD
 * (another shard's events), QC_EMISMATCH (the store is not the copy the events follow, an
 * event is missing, or an event replayed differently from the log: named in the log),
 * QC_EVERSION (an event type this ledger does not know), a saga refusal of an event,
 * QC_EIO, QC_EFULL, QC_ENOMEM. On error what was committed stays (chunks before the
 * failing one) and the file stays. */
QC_MUST_CHECK int ledger_replay_file(ledger_store_t *store, EVP_PKEY *allow_key, uint32_t shard,
                                     uint32_t shard_count, const char *path,
                                     ledger_replay_stats_t *stats);

/* When data_dir holds LEDGER_REPLAY_FILE, replays it (ledger_replay_file) and renames it
 * LEDGER_REPLAY_DONE; otherwise does nothing. Logs what it did. Returns 0 or the replay's
 * error. */
QC_MUST_CHECK int ledger_replay_pending(ledger_store_t *store, EVP_PKEY *allow_key, uint32_t shard,
                                        uint32_t shard_count, const char *data_dir);

#endif
