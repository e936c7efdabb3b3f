/* ledger_fsm.h - a ledger shard replica as a Raft state machine (libraft's struct raft_fsm).
 *
 * A shard is a group of replicas, each with its own LMDB environment. The leader verifies
 * and orders requests; one group-commit batch becomes one Raft log entry; every replica
 * applies the committed entries to its own LMDB through the saga (ledger_saga.h), and so
 * every replica that applied the same index holds the same bytes in every database.
 *
 * Entry format (proto/replica.proto, version 1): an Entry {version, time_ms, ops[], padding},
 * at most LEDGER_FSM_ENTRY_MAX bytes and LEDGER_FSM_OPS_MAX ops, canonically encoded (it
 * re-measures to exactly its length), its length a multiple of 8 (padding: zeros, because
 * libraft's uv I/O decodes several entries of one message at 8-byte aligned offsets). Each op
 * carries what its apply needs, already verified by the leader: signed envelopes byte for byte
 * (reserve: request + deadline; store_allow: the allow the bank signed after the reserve applied;
 * settle: report), admin arguments, the deadline compensation "expire up to T", an outbox
 * acknowledgement.
 *
 * Apply is deterministic: it reads the replica's LMDB and the entry, nothing else. Its "now"
 * is max(entry time, applied time): the leader's clock, never going back when a leader with
 * a slower clock takes over. No signature is verified; parsing is. The saga runs with
 * replica set, so no rule depends on the map's fill (which differs between replicas).
 *   - An op refused by a business rule (funds, limits, state, a malformed artefact) is
 *     refused identically everywhere: its nested txn is undone and its code and sentence
 *     are in the result. The entry still applies.
 *   - A local failure (I/O, map full, memory) undoes the whole entry and apply returns an
 *     error: the replica stops applying there and never diverges. libraft turns a
 *     follower's apply error into RAFT_UNAVAILABLE; the leader retries.
 *   - An entry that does not parse is refused whole (every replica alike); an entry of an
 *     unknown version stops the replica: an old replica must not guess at a new format.
 *
 * Applied index: the Raft index of the entry and the time it applied with are written to
 * LMDB (ledger_store_applied_put) in the same write txn as its changes. An entry at or
 * below the stored index is skipped, so a replica that restarts and is handed entries again
 * applies nothing twice. libraft does not pass the index to apply: during apply,
 * raft_last_applied() is the previous index, so the entry's is that + 1 (checked to grow).
 *
 * Snapshot format (version 1): a logical dump of every database, header then records.
 *   header (LEDGER_FSM_SNAP_HEADER_SIZE bytes, integers big-endian):
 *     magic "QCLS" (4) | version (4) | shard (4) | shard_count (4) | applied index (8) |
 *     applied time_ms (8) | record count (8) | body length (8) | SHA-256 of body (32)
 *   body: per record, database by database (ledger_store.h numbering), each in key order:
 *     db (1) | key length (2) | key | value length (4) | value
 * Identical states give identical bytes, so SHA-256(body) is also the state's digest
 * (ledger_fsm_digest). Restore checks size, magic, version, shard, length and digest, then
 * replaces every database in one write txn, which brings the snapshot's applied index with
 * it. A snapshot whose applied index is at or below the replica's own is not applied:
 * both are prefixes of the same committed log, and the replica's is the longer one (this is
 * the case when libraft restores its last snapshot at start over an LMDB that went on). */
#ifndef LEDGER_FSM_H
#define LEDGER_FSM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "ledger_saga.h"
#include "ledger_store.h"
#include "qc_error.h"

struct raft;
struct raft_fsm;
struct raft_buffer;

#define LEDGER_FSM_OPS_MAX 512           /* ops in one entry: a full batch, its expiry, acks */
#define LEDGER_FSM_ENTRY_MAX (16u << 20) /* bytes of one entry */
#define LEDGER_FSM_SNAP_HEADER_SIZE 80   /* bytes before the records */
#define LEDGER_FSM_SNAP_VERSION 1
#define LEDGER_FSM_SNAP_MAX (1ull << 32) /* bytes of a snapshot: 4 GiB, above any map */
#define LEDGER_FSM_VALUE_MAX (64u << 20) /* bytes of one record's value in a snapshot */

typedef struct ledger_fsm ledger_fsm_t;

typedef struct ledger_fsm_config {
    const char *dir;     /* the replica's LMDB directory; must exist */
    uint64_t map_size;   /* LMDB map, bytes */
    EVP_PKEY *allow_key; /* borrowed; the saga needs it, apply never verifies with it */
    uint32_t shard;
    uint32_t shard_count;
} ledger_fsm_config_t;

/* The outcome of one op of an applied entry: 0, or the refusal (a negative QC_E* code) and
 * its sentence. */
typedef struct ledger_fsm_op_result {
    int code;
    char why[LEDGER_WHY_MAX];
} ledger_fsm_op_result_t;

/* The outcome of the last applied entry, owned by the fsm, valid until the next apply. The
 * raft_apply callback of the leader that proposed the entry receives it as result. */
typedef struct ledger_fsm_result {
    uint64_t index;
    uint64_t time_ms; /* the "now" it applied with */
    bool skipped;     /* at or below the applied index: nothing was done */
    bool refused;     /* did not parse: nothing was done but the applied index */
    size_t expired;   /* loads compensated by its expire ops */
    size_t n_ops;
    ledger_fsm_op_result_t ops[LEDGER_FSM_OPS_MAX];
} ledger_fsm_result_t;

/* Counters since ledger_fsm_new(), for tests and figures. */
typedef struct ledger_fsm_stats {
    uint64_t applied;     /* entries applied */
    uint64_t skipped;     /* entries at or below the applied index */
    uint64_t ops_refused; /* ops refused by a rule */
    uint64_t snapshots_taken;
    uint64_t snapshots_restored; /* that replaced the state */
    uint64_t snapshots_kept;     /* not applied: the replica was as far or further */
    uint64_t apply_failures;     /* local failures of apply through libraft (nothing applied) */
    int apply_error;             /* the last apply's local failure, 0 once one applies again */
    uint64_t digest_checks;      /* digest ops compared with this replica's state */
    uint64_t digest_mismatches;  /* of which differed */
    bool diverged;               /* a digest differed: nothing applies until ledger_fsm_repair */
    uint64_t diverged_index;     /* the applied index whose state differed */
    uint64_t diverged_passed;    /* the last entry a diverged follower passed unapplied */
    uint64_t digest_ok_index;    /* the last applied index whose state equalled the digest */
    uint64_t repairs;            /* states rebuilt by ledger_fsm_repair */
} ledger_fsm_stats_t;

/* Opens (creating when empty) the replica's environment in cfg->dir, binds it to the shard
 * and makes the saga over it. Returns 0 and sets *out, or QC_EINVAL, QC_ECONFIG (the
 * directory belongs to another shard), QC_EIO, QC_ENOMEM. */
QC_MUST_CHECK int ledger_fsm_new(const ledger_fsm_config_t *cfg, ledger_fsm_t **out);

/* Closes the environment and frees fsm; nulls *fsm_p; accepts NULL. The raft instance it
 * was given to must be closed first. */
void ledger_fsm_destroy(ledger_fsm_t **fsm_p);

/* The libraft callbacks (version 1: raft owns the snapshot buffers), to pass to raft_init()
 * or raft_fixture_grow(). Borrowed; lives as long as fsm. */
struct raft_fsm *ledger_fsm_raft(ledger_fsm_t *fsm);

/* Tells fsm which raft instance applies through it, so apply learns each entry's index.
 * Call after raft_init() and before raft_start(). */
void ledger_fsm_bind(ledger_fsm_t *fsm, struct raft *raft);

/* Applies the entry at Raft index index (> 0), as the raft callback does; for callers that
 * drive the log themselves (tests, tools). *result (may be NULL) gets the outcome.
 * Returns 0 (applied, skipped, or refused whole), QC_EVERSION (unknown entry version),
 * QC_EIO, QC_EFULL, QC_ENOMEM, QC_EINTERNAL (nothing applied; the replica must stop). */
QC_MUST_CHECK int ledger_fsm_apply(ledger_fsm_t *fsm, uint64_t index, const uint8_t *entry,
                                   size_t len, const ledger_fsm_result_t **result);

/* A snapshot of the whole state, as above, in *out (allocated with raft_malloc(): free it
 * with raft_free(), or hand it to raft). Returns 0, QC_ENOMEM, QC_EIO, QC_EDECODE. */
QC_MUST_CHECK int ledger_fsm_snapshot(ledger_fsm_t *fsm, uint8_t **out, size_t *out_len);

/* Restores snap (not consumed). *replaced (may be NULL) tells whether the state was
 * replaced or kept. Returns 0, QC_EDECODE (damaged or malformed), QC_EVERSION, QC_ECONFIG
 * (another shard's), QC_EIO, QC_EFULL; on error the state is unchanged. */
QC_MUST_CHECK int ledger_fsm_restore(ledger_fsm_t *fsm, const uint8_t *snap, size_t len,
                                     bool *replaced);

/* Replica repair (docs/DESIGN.md, "Replica repair"). A replica whose state differed from the
 * leader's at a digest op is diverged: ledger_fsm_apply refuses every entry (QC_EMISMATCH)
 * until its state is replaced by a healthy replica's snapshot here, whatever its own applied
 * index. Through libraft (the raft callback) a diverged follower passes each entry instead,
 * unapplied (stats.diverged_passed: libraft would make a follower whose apply fails
 * unavailable), and takes no snapshot (RAFT_BUSY); a diverged leader's apply fails. The
 * snapshot must be at or past the index that diverged (entries up to its index are then
 * skipped); when it is before the last entry passed, libraft's applied index is set back to
 * the snapshot's, so the entries after it apply again from this replica's own log (which
 * holds them: nothing after the diverged index is compacted while diverged). The raft log and
 * vote are kept: only the state is rebuilt, so the replica goes on under its own id without
 * breaking Raft's rules.
 * Returns 0 (diverged is cleared), QC_ESTALE (a snapshot before the diverged index, or one
 * whose following entries are no longer in the log),
 * QC_ESTATE (not diverged), and the errors of ledger_fsm_restore. */
QC_MUST_CHECK int ledger_fsm_repair(ledger_fsm_t *fsm, const uint8_t *snap, size_t len);

/* Marks the replica diverged at its applied index for a reason of its own (why: a stored
 * record failed its checksum), as a differing digest does: apply refuses every entry until
 * ledger_fsm_repair. Logs ledger.fsm_diverged once. Returns 0 (also when already diverged)
 * or QC_EIO. */
QC_MUST_CHECK int ledger_fsm_diverge(ledger_fsm_t *fsm, const char *why);

/* The stored applied index and time (0, 0 before the first entry). Returns 0 or QC_EIO. */
QC_MUST_CHECK int ledger_fsm_applied(ledger_fsm_t *fsm, uint64_t *index, uint64_t *time_ms);

/* SHA-256 of the snapshot body of the current state, and the applied index it is at.
 * Returns 0, QC_ENOMEM, QC_EIO. */
QC_MUST_CHECK int ledger_fsm_digest(ledger_fsm_t *fsm, uint8_t digest[32], uint64_t *index);

/* Borrowed views, for reads and the invariant check (ledger_saga_check). Never write
 * through them on a replica: only apply writes. */
ledger_store_t *ledger_fsm_store(ledger_fsm_t *fsm);
ledger_saga_t *ledger_fsm_saga(ledger_fsm_t *fsm);
void ledger_fsm_stats(const ledger_fsm_t *fsm, ledger_fsm_stats_t *out);

/* ------------------------------------------------------------ building an entry
 *
 * The leader adds the ops it verified to a batch, then encodes it into a raft_buffer for
 * raft_apply(). The batch copies nothing it is given until it encodes: each add packs its op
 * at once. Each add returns 0, QC_EFULL (LEDGER_FSM_OPS_MAX ops or LEDGER_FSM_ENTRY_MAX
 * bytes reached: propose this batch and start another), QC_EINVAL (a txn id not 16 bytes,
 * an artefact over LEDGER_SIGNED_MAX), QC_ENOMEM. */
typedef struct ledger_fsm_batch ledger_fsm_batch_t;

QC_MUST_CHECK int ledger_fsm_batch_new(uint64_t time_ms, ledger_fsm_batch_t **out);
void ledger_fsm_batch_destroy(ledger_fsm_batch_t **batch_p);
size_t ledger_fsm_batch_count(const ledger_fsm_batch_t *b);

/* reserve: the verified request and the deadline the leader set; store_allow: the allow the
 * bank signed after that reserve applied (the bank debits before it signs). */
QC_MUST_CHECK int ledger_fsm_batch_reserve(ledger_fsm_batch_t *b, const uint8_t *request,
                                           size_t request_len, uint64_t deadline_ms);
QC_MUST_CHECK int ledger_fsm_batch_store_allow(ledger_fsm_batch_t *b,
                                               const uint8_t txn_id[LEDGER_TXN_ID_SIZE],
                                               const uint8_t *allow, size_t allow_len);
QC_MUST_CHECK int ledger_fsm_batch_settle(ledger_fsm_batch_t *b,
                                          const uint8_t txn_id[LEDGER_TXN_ID_SIZE],
                                          const uint8_t *report, size_t report_len);
QC_MUST_CHECK int ledger_fsm_batch_bad_report(ledger_fsm_batch_t *b,
                                              const uint8_t txn_id[LEDGER_TXN_ID_SIZE],
                                              const uint8_t *report, size_t report_len);
QC_MUST_CHECK int ledger_fsm_batch_expire(ledger_fsm_batch_t *b, uint64_t upto_ms, uint32_t max);
QC_MUST_CHECK int ledger_fsm_batch_open_account(ledger_fsm_batch_t *b,
                                                const ledger_account_t *spec);
QC_MUST_CHECK int ledger_fsm_batch_deposit(ledger_fsm_batch_t *b, const char *account_id,
                                           int64_t amount,
                                           const uint8_t txn_id[LEDGER_TXN_ID_SIZE]);
QC_MUST_CHECK int ledger_fsm_batch_set_frozen(ledger_fsm_batch_t *b, const char *account_id,
                                              bool frozen);
QC_MUST_CHECK int ledger_fsm_batch_enroll(ledger_fsm_batch_t *b, const char *account_id,
                                          const uint8_t *cert, size_t cert_len, int64_t wallet_cap,
                                          uint64_t counter);
QC_MUST_CHECK int ledger_fsm_batch_revoke(ledger_fsm_batch_t *b, const char *device_id);
QC_MUST_CHECK int ledger_fsm_batch_outbox_ack(ledger_fsm_batch_t *b, uint64_t upto_seq);
/* An outbox ack by one of several consumers (ledger_store_outbox_ack_by()): consumer and the
 * leader's configured list travel in the op, so every replica deletes the same events. */
QC_MUST_CHECK int ledger_fsm_batch_outbox_ack_by(ledger_fsm_batch_t *b, uint64_t upto_seq,
                                                 const char *consumer, const char *const *consumers,
                                                 size_t consumer_count);
/* digest: the proposer's state digest at its applied index (ledger_fsm_digest); to be the
 * only op of its entry, proposed when nothing else is in flight. */
QC_MUST_CHECK int ledger_fsm_batch_digest(ledger_fsm_batch_t *b, uint64_t index,
                                          const uint8_t digest[32]);

/* The entry's bytes in out->base (raft_malloc'd; raft_apply() takes them over, else free
 * with raft_free()). Returns 0 or QC_ENOMEM. */
QC_MUST_CHECK int ledger_fsm_batch_encode(const ledger_fsm_batch_t *b, struct raft_buffer *out);

#endif
