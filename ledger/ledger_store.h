/* ledger_store.h - the ledger's LMDB environment: databases, records and their encoding.
 *
 * One environment per shard, in one directory. Records are stored as protobuf messages of
 * proto/ledger.proto and handled in memory as the plain structs below, so callers never
 * own protobuf-c allocations. Every function that touches data takes the LMDB transaction
 * it works in; the store never begins or commits one behind the caller's back, so a caller
 * can group many changes (the group commit) or nest one per request (mdb_txn_begin with a
 * parent) and abort it to undo a refused request.
 *
 * Databases:
 *   accounts   account id            -> Account
 *   devices    device id             -> Device
 *   loads      txn id (16)           -> Load
 *   deadlines  deadline_ms (8, BE) || txn id (16) -> empty; exactly the RESERVED loads
 *   transfers  txn id (16) || kind (1) -> Transfer; one transfer of each kind per txn
 *   outbox     seq (8, BE)           -> OutboxEvent
 *   meta       name                  -> value (shard identity, next outbox sequence, each
 *                                        outbox consumer's cursor "outbox_acked:<consumer>")
 *   certs      device id             -> the device's certificate (DER), written once
 * and, not replicated (derived or local state, outside snapshots and digests):
 *   loads_by_time     created_ms (8, BE) || txn id            -> empty   (ledger_store_index.h)
 *   loads_by_device   device id || 0 || created_ms || txn id  -> empty
 *   loads_by_account  account id || 0 || created_ms || txn id -> empty
 *   transfers_by_account account id || 0 || time_ms || txn id || kind -> empty (both accounts)
 *   local      name                  -> value (loads_index_version)
 * Every load has exactly its three index entries, written in the transaction that writes the
 * load (ledger_store_load_put(), _load_del(), _record_append()), and every transfer the entries
 * of its debit and credit accounts (ledger_store_transfer_add()); a store opened without them
 * (made before them) gets them at open, in the open's own write transaction, with one log line
 * ledger.index_build at its start and end. The scrub and check --deep check both ways (every
 * load has its entries, every entry names a load with its device, account and time): a
 * disagreement is logged as ledger.index_mismatch and counted (qc_ledger_index_mismatches_total,
 * ledger_store_scrub_t.index_bad).
 *
 * Checksums (issue 21; LMDB keeps none of keys or values). The value of every record of
 * accounts, devices, loads, transfers and outbox is the protobuf followed by 4 bytes,
 * CRC-32C(key || protobuf) big-endian (ops/lib/ops_crc32c.h says why CRC-32C). Every read
 * checks it: get, the walks (each_*, each_record for snapshots), outbox_read. A mismatch is
 * QC_ECORRUPT to the caller, one log line ledger.corrupt_record naming the database and the
 * key (hex), the counter qc_ledger_corrupt_records_total, and ledger_store_corrupt() true for
 * the life of the store: the service then refuses every write (reads go on). A flipped bit in
 * a key is caught too, since the checksum covers the key the record was written under.
 * Stores written before checksums (identity format < LEDGER_STORE_FORMAT) are refused at
 * start; `qc-ledger init --upgrade` adds them (ledger_store_add_checksums()).
 *
 * The environment is opened without MDB_NOSYNC: a commit returns once it is on disk. */
#ifndef LEDGER_STORE_H
#define LEDGER_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lmdb.h>

#include "ledger.pb-c.h"
#include "ledger_store_index.h"
#include "proto_cert.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "qc_error.h"

#define LEDGER_ID_MAX PROTO_ACCOUNT_ID_MAX       /* bytes of an account id */
#define LEDGER_DEVICE_ID_MAX PROTO_DEVICE_ID_MAX /* bytes of a device id */
#define LEDGER_TXN_ID_SIZE PROTO_TXN_ID_SIZE     /* bytes of a txn id */
#define LEDGER_CERT_MAX PROTO_CERT_MAX           /* bytes of a device certificate */
#define LEDGER_SIGNED_MAX                                                                          \
    (PROTO_BODY_MAX + PROTO_CERT_MAX + PROTO_ENVELOPE_FIXED_MAX) /* one envelope */
#define LEDGER_REASON_MAX (PROTO_REASON_MAX + 64)                /* a compensation reason */
#define LEDGER_EVENT_TYPE_MAX 48             /* "security.bad_report_signature" */
#define LEDGER_MAP_SIZE_DEFAULT (1ull << 30) /* 1 GiB */
#define LEDGER_MAP_SIZE_MIN (1ull << 20)     /* 1 MiB, for tests of a full map */
#define LEDGER_MAP_USED_PCT_MAX 90           /* growth is refused above this share of the map */
#define LEDGER_READERS_MAX 126

typedef struct ledger_store ledger_store_t;

typedef struct ledger_account {
    char id[LEDGER_ID_MAX + 1];
    uint32_t currency;
    int64_t balance;
    Qcledger__AccountStatus status;
    Qcledger__AccountKind kind;
    int64_t load_min; /* 0 = 1 */
    int64_t load_max; /* 0 = no limit */
    int64_t daily_max;
    uint64_t day;
    int64_t day_total;
    bool overdrawn;
    uint64_t created_ms;
} ledger_account_t;

typedef struct ledger_device {
    char id[LEDGER_DEVICE_ID_MAX + 1];
    char account_id[LEDGER_ID_MAX + 1];
    uint8_t cert[LEDGER_CERT_MAX];
    size_t cert_len;
    uint8_t cert_fp[PROTO_DIGEST_SIZE];
    Qcledger__DeviceStatus status;
    uint64_t counter;
    bool has_reserved;
    uint8_t reserved_txn[LEDGER_TXN_ID_SIZE];
    bool has_last;
    uint8_t last_txn[LEDGER_TXN_ID_SIZE];
    int64_t wallet_cap; /* 0 = no cap */
    uint64_t created_ms;
} ledger_device_t;

typedef struct ledger_load {
    uint8_t txn_id[LEDGER_TXN_ID_SIZE];
    Quancun__LoadState state;
    int64_t amount;
    uint32_t currency;
    char device_id[LEDGER_DEVICE_ID_MAX + 1];
    char account_id[LEDGER_ID_MAX + 1];
    uint64_t counter;
    uint64_t deadline_ms;
    char reason[LEDGER_REASON_MAX + 1];
    uint8_t request[LEDGER_SIGNED_MAX];
    size_t request_len;
    uint8_t allow[LEDGER_SIGNED_MAX];
    size_t allow_len;
    uint8_t report[LEDGER_SIGNED_MAX];
    size_t report_len;
    uint64_t created_ms;
    uint64_t updated_ms;
    bool flagged;
} ledger_load_t;

typedef struct ledger_transfer {
    uint8_t txn_id[LEDGER_TXN_ID_SIZE];
    Qcledger__TransferKind kind;
    char debit[LEDGER_ID_MAX + 1];
    char credit[LEDGER_ID_MAX + 1];
    int64_t amount;
    uint32_t currency;
    uint64_t time_ms;
} ledger_transfer_t;

/* Opens (creating when absent) the environment in directory dir (which must exist) with a
 * map of map_size bytes, opens every database, and clears stale reader slots left by dead
 * processes (mdb_reader_check). Returns 0 and sets *out, or QC_EINVAL (map_size below
 * LEDGER_MAP_SIZE_MIN), QC_EIO (LMDB refused: the message is logged), QC_ENOMEM. */
QC_MUST_CHECK int ledger_store_open(const char *dir, uint64_t map_size, ledger_store_t **out);

/* Closes the environment, frees store, nulls *store_p; accepts NULL. No transaction may be
 * open. */
void ledger_store_close(ledger_store_t **store_p);

/* The record format of the store's identity (ops/lib/ops_store.h): 2 = every record of the
 * summed databases carries its checksum. */
#define LEDGER_STORE_FORMAT 2

/* True once a record read through this store failed its checksum (QC_ECORRUPT): the shard
 * stops writing. Safe from any thread. */
bool ledger_store_corrupt(const ledger_store_t *store);

/* Forgets that a record failed its checksum: only once every record was replaced (a replica
 * whose whole state was rebuilt from a healthy replica's snapshot, ledger_fsm_repair). */
void ledger_store_corrupt_clear(ledger_store_t *store);

/* Upgrades the store of dir (no other process may have it open) to LEDGER_STORE_FORMAT:
 * appends the checksum to every value of the summed databases that does not already end in
 * its own (so it may run twice), in one write transaction. *count gets the number of records
 * changed. Returns 0, or what ledger_store_open() and LMDB return
 * (nothing changed then). */
QC_MUST_CHECK int ledger_store_add_checksums(const char *dir, uint64_t map_size, uint64_t *count);

/* Records (or, on later opens, checks) the shard identity this environment belongs to, so
 * a data directory cannot be served as another shard. Commits its own transaction.
 * Returns 0, QC_ECONFIG when the stored identity differs, QC_EIO. */
QC_MUST_CHECK int ledger_store_bind_shard(ledger_store_t *store, uint32_t shard,
                                          uint32_t shard_count);

/* Begins a transaction: a read-only one (write false, parent NULL), a top-level write one
 * (parent NULL), or a nested write one inside parent. Returns 0, QC_EIO or QC_EBUSY. */
QC_MUST_CHECK int ledger_store_txn_begin(ledger_store_t *store, MDB_txn *parent, bool write,
                                         MDB_txn **out);
/* Commits txn (durably, for a top-level write txn). Returns 0, QC_EFULL (map full),
 * QC_EIO. txn is gone either way. */
QC_MUST_CHECK int ledger_store_txn_commit(MDB_txn *txn);
void ledger_store_txn_abort(MDB_txn *txn);

/* Record access. get: 0, QC_ENOTFOUND, QC_ECORRUPT (checksum mismatch), QC_EDECODE (a
 * record that does not parse), QC_EIO.
 * put: 0, QC_EFULL, QC_EIO. */
QC_MUST_CHECK int ledger_store_account_get(ledger_store_t *store, MDB_txn *txn, const char *id,
                                           ledger_account_t *out);
QC_MUST_CHECK int ledger_store_account_put(ledger_store_t *store, MDB_txn *txn,
                                           const ledger_account_t *acct);
QC_MUST_CHECK int ledger_store_device_get(ledger_store_t *store, MDB_txn *txn, const char *id,
                                          ledger_device_t *out);
QC_MUST_CHECK int ledger_store_device_put(ledger_store_t *store, MDB_txn *txn,
                                          const ledger_device_t *dev);
QC_MUST_CHECK int ledger_store_load_get(ledger_store_t *store, MDB_txn *txn,
                                        const uint8_t txn_id[LEDGER_TXN_ID_SIZE],
                                        ledger_load_t *out);
QC_MUST_CHECK int ledger_store_load_put(ledger_store_t *store, MDB_txn *txn,
                                        const ledger_load_t *load);
/* Deletes a load and its index entries (nothing deletes loads today; compaction would).
 * Returns 0, QC_ENOTFOUND, QC_ECORRUPT, QC_EDECODE, QC_EIO. */
QC_MUST_CHECK int ledger_store_load_del(ledger_store_t *store, MDB_txn *txn,
                                        const uint8_t txn_id[LEDGER_TXN_ID_SIZE]);

/* Transfers are immutable: add returns QC_EEXIST when (txn id, kind) is already there. */
QC_MUST_CHECK int ledger_store_transfer_add(ledger_store_t *store, MDB_txn *txn,
                                            const ledger_transfer_t *t);
QC_MUST_CHECK int ledger_store_transfer_get(ledger_store_t *store, MDB_txn *txn,
                                            const uint8_t txn_id[LEDGER_TXN_ID_SIZE],
                                            Qcledger__TransferKind kind, ledger_transfer_t *out);

/* The deadline index of RESERVED loads. del of an absent entry returns QC_ENOTFOUND.
 * first: the earliest entry, or QC_ENOTFOUND when there is none. */
QC_MUST_CHECK int ledger_store_deadline_add(ledger_store_t *store, MDB_txn *txn,
                                            uint64_t deadline_ms,
                                            const uint8_t txn_id[LEDGER_TXN_ID_SIZE]);
QC_MUST_CHECK int ledger_store_deadline_del(ledger_store_t *store, MDB_txn *txn,
                                            uint64_t deadline_ms,
                                            const uint8_t txn_id[LEDGER_TXN_ID_SIZE]);
QC_MUST_CHECK int ledger_store_deadline_first(ledger_store_t *store, MDB_txn *txn,
                                              uint64_t *deadline_ms,
                                              uint8_t txn_id[LEDGER_TXN_ID_SIZE]);

/* Appends an audit event with the next per-shard sequence (set in *seq when seq is not
 * NULL). txn_id may be NULL. Returns 0, QC_EFULL, QC_EIO. */
QC_MUST_CHECK int ledger_store_outbox_append(ledger_store_t *store, MDB_txn *txn, uint32_t shard,
                                             const char *type, const uint8_t *txn_id,
                                             uint64_t time_ms, const uint8_t *payload,
                                             size_t payload_len, uint64_t *seq);
/* Events waiting for the relay. */
QC_MUST_CHECK int ledger_store_outbox_depth(ledger_store_t *store, MDB_txn *txn, uint64_t *depth);
/* Up to max events with seq > after_seq, in order, into reply->events (malloc'd; free
 * with ledger_store_outbox_read_free()). Returns 0, QC_ENOMEM, QC_EIO, QC_EDECODE. */
QC_MUST_CHECK int ledger_store_outbox_read(ledger_store_t *store, MDB_txn *txn, uint64_t after_seq,
                                           size_t max, Qcledger__OutboxReadReply *reply);
void ledger_store_outbox_read_free(Qcledger__OutboxReadReply *reply);
/* Deletes every event with seq <= upto_seq (the relay delivered them). */
QC_MUST_CHECK int ledger_store_outbox_ack(ledger_store_t *store, MDB_txn *txn, uint64_t upto_seq);

/* Outbox consumers (audit witnesses, docs/DESIGN.md section 4): each of the names in
 * consumers[] (consumer_count of them, the ledger's configured list) pulls every event, and
 * an event is deleted only once every one of them acknowledged it. With consumer_count 0 (one
 * relay, as before witnesses) this is ledger_store_outbox_ack(). Otherwise consumer must be
 * one of consumers[] (else QC_EDENIED, nothing changed); its cursor becomes
 * max(cursor, upto_seq), and every event at or below the smallest cursor of consumers[] (a
 * consumer that never acknowledged counts 0) is deleted. Everything it reads is the store and
 * its arguments, so replicas applying the same op agree. Returns 0, QC_EDENIED, QC_EIO. */
#define LEDGER_OUTBOX_CONSUMERS_MAX 8      /* audit witnesses per shard */
#define LEDGER_OUTBOX_CONSUMER_NAME_MAX 32 /* "audit-1" */
QC_MUST_CHECK int ledger_store_outbox_ack_by(ledger_store_t *store, MDB_txn *txn,
                                             const char *consumer, uint64_t upto_seq,
                                             const char *const *consumers, size_t consumer_count);
/* The highest seq consumer acknowledged (0 when it never did), and the last seq appended (0
 * when none was). Returns 0 or QC_EIO. */
QC_MUST_CHECK int ledger_store_outbox_acked(ledger_store_t *store, MDB_txn *txn,
                                            const char *consumer, uint64_t *seq);
QC_MUST_CHECK int ledger_store_outbox_last(ledger_store_t *store, MDB_txn *txn, uint64_t *seq);

/* Iteration for the invariant check: fn is called for every record, in key order, and may
 * stop the walk by returning non-zero (which is returned). Devices come without their
 * certificate (cert_len 0). */
typedef int(ledger_store_account_fn)(void *arg, const ledger_account_t *acct);
typedef int(ledger_store_load_fn)(void *arg, const ledger_load_t *load);
typedef int(ledger_store_transfer_fn)(void *arg, const ledger_transfer_t *t);
typedef int(ledger_store_device_fn)(void *arg, const ledger_device_t *dev);
typedef int(ledger_store_deadline_fn)(void *arg, uint64_t deadline_ms, const uint8_t *txn_id);
QC_MUST_CHECK int ledger_store_each_account(ledger_store_t *store, MDB_txn *txn,
                                            ledger_store_account_fn *fn, void *arg);
QC_MUST_CHECK int ledger_store_each_load(ledger_store_t *store, MDB_txn *txn,
                                         ledger_store_load_fn *fn, void *arg);
QC_MUST_CHECK int ledger_store_each_transfer(ledger_store_t *store, MDB_txn *txn,
                                             ledger_store_transfer_fn *fn, void *arg);
/* As each_load, from the first load whose txn id is above after_txn (LEDGER_TXN_ID_SIZE
 * bytes; NULL: from the first load): the pages of a listing (ledger_query.h). */
QC_MUST_CHECK int ledger_store_each_load_after(ledger_store_t *store, MDB_txn *txn,
                                               const uint8_t *after_txn, ledger_store_load_fn *fn,
                                               void *arg);
/* The loads of an index range (ledger_store_index.h) in its order (creation time, then txn
 * id), each read from the loads database, checksum checked, and handed to fn: a walk reads the
 * entries of its range and their loads, nothing else. An entry whose load is missing is
 * skipped. Returns what each_load does, and QC_EDECODE for an entry that is not an index key. */
QC_MUST_CHECK int ledger_store_each_load_in(ledger_store_t *store, MDB_txn *txn,
                                            const ledger_index_range_t *r, ledger_store_load_fn *fn,
                                            void *arg);
/* The transfers that move account (debit or credit), in statement order (time, txn id, kind),
 * read through transfers_by_account: from the first at or after since_ms, and after *after
 * when it is not NULL (a statement's cursor). Returns what each_transfer does. */
QC_MUST_CHECK int ledger_store_each_move(ledger_store_t *store, MDB_txn *txn, const char *account,
                                         uint64_t since_ms, const ledger_index_move_t *after,
                                         ledger_store_transfer_fn *fn, void *arg);
QC_MUST_CHECK int ledger_store_each_device(ledger_store_t *store, MDB_txn *txn,
                                           ledger_store_device_fn *fn, void *arg);
QC_MUST_CHECK int ledger_store_each_deadline(ledger_store_t *store, MDB_txn *txn,
                                             ledger_store_deadline_fn *fn, void *arg);

/* Raft replication (ledger_fsm.h). The applied index is the Raft index of the last log
 * entry applied to this environment, and the applied time the leader's time it applied with
 * (never decreasing); both are written in the write txn that applies the entry. get: 0, with
 * both 0 when nothing was ever applied, QC_EDECODE, QC_EIO. put: 0, QC_EFULL, QC_EIO. */
QC_MUST_CHECK int ledger_store_applied_get(ledger_store_t *store, MDB_txn *txn, uint64_t *index,
                                           uint64_t *time_ms);
QC_MUST_CHECK int ledger_store_applied_put(ledger_store_t *store, MDB_txn *txn, uint64_t index,
                                           uint64_t time_ms);

/* Backup and restore (ledger_backup.h, ledger_replay.h).
 * copy: a compacted, consistent copy of the environment into directory dir (which must exist
 *   and hold no data.mdb), read in one read txn while writers go on (mdb_env_copy2).
 *   Returns 0, QC_ENOSPACE (no space left on the disk), QC_EIO.
 * outbox_next: the sequence the next outbox event will get (1 when none was ever appended):
 *   every event up to *next - 1 was written by this environment. Returns 0, QC_EDECODE, QC_EIO.
 * applied_clear: forgets the applied index and time (both read 0 afterwards), for a state
 *   that starts a new Raft group (a restore). Returns 0 or QC_EIO. */
QC_MUST_CHECK int ledger_store_copy(ledger_store_t *store, const char *dir);
QC_MUST_CHECK int ledger_store_outbox_next(ledger_store_t *store, MDB_txn *txn, uint64_t *next);
QC_MUST_CHECK int ledger_store_applied_clear(ledger_store_t *store, MDB_txn *txn);

/* Raw records, for snapshots. The replicated databases of the table above are numbered in its
 * order (accounts 0, devices 1, ... certs 7); the numbers are part of the snapshot format. The
 * indexes and `local` are not walked (each_record) nor loaded (record_append): a load appended
 * brings its index entries, and wipe empties the indexes with the rest (not `local`).
 * each_record calls fn for every record of every database, database by database, each in
 * key order, and stops when fn returns non-zero (which is returned). wipe empties every
 * database. record_append puts one record at the end of database db: a key that is not
 * above the last key there, an empty key, or one over LEDGER_STORE_KEY_MAX bytes is
 * QC_EDECODE, so only canonical dumps load. Returns 0, QC_EDECODE, QC_EFULL, QC_EIO. */
#define LEDGER_STORE_DB_COUNT 8
#define LEDGER_STORE_KEY_MAX 511 /* LMDB's default key size limit */
typedef int(ledger_store_record_fn)(void *arg, unsigned db, const uint8_t *key, size_t key_len,
                                    const uint8_t *val, size_t val_len);
QC_MUST_CHECK int ledger_store_each_record(ledger_store_t *store, MDB_txn *txn,
                                           ledger_store_record_fn *fn, void *arg);
QC_MUST_CHECK int ledger_store_wipe(ledger_store_t *store, MDB_txn *txn);
QC_MUST_CHECK int ledger_store_record_append(ledger_store_t *store, MDB_txn *txn, unsigned db,
                                             const uint8_t *key, size_t key_len, const uint8_t *val,
                                             size_t val_len);

/* The scrub: a walk over every record of the summed databases that checks each checksum, a
 * few at a time (the service does ledger_store_scrub_step() on a timer: scrub_per_second), so
 * that a flipped bit in a record nobody reads is found too. A corrupt record is logged,
 * counted and marks the store as any read does; the walk goes on past it. */
typedef struct ledger_store_scrub {
    unsigned db;                           /* the database the walk is in */
    uint8_t key[LEDGER_STORE_KEY_MAX + 1]; /* the last key checked there */
    size_t key_len;                        /* 0: from the first key */
    uint64_t checked;                      /* records checked, all passes */
    uint64_t corrupt;                      /* of which failed their checksum */
    uint64_t passes;                       /* whole walks completed */
    uint64_t index_checked;                /* loads and index entries checked against each other */
    uint64_t index_bad;                    /* of which disagreed (ledger.index_mismatch) */
} ledger_store_scrub_t;

/* Checks up to max records from where s left off, in one read transaction, and moves on
 * (wrapping to the first database after the last: *pass_done true then). s starts zeroed.
 * Returns 0, QC_EIO or QC_EBUSY (no reader slot). */
QC_MUST_CHECK int ledger_store_scrub_step(ledger_store_t *store, ledger_store_scrub_t *s,
                                          size_t max, bool *pass_done);

/* True when the map is more than LEDGER_MAP_USED_PCT_MAX percent used: callers refuse
 * growth (new loads, accounts, deposits) with QC_EFULL while releases still fit. Sets
 * *used_bytes and *map_bytes when not NULL. */
bool ledger_store_nearly_full(ledger_store_t *store, uint64_t *used_bytes, uint64_t *map_bytes);

/* The environment, borrowed, for the watch of its space (ops/lib/ops_storage.h): valid while
 * the store is open. */
MDB_env *ledger_store_env(ledger_store_t *store);

/* Clears reader slots of dead processes; *dead (may be NULL) gets their number.
 * Returns 0 or QC_EIO. */
QC_MUST_CHECK int ledger_store_reader_check(ledger_store_t *store, int *dead);

/* Record <-> protobuf views: the message points into the struct (no allocation), valid
 * while the struct lives and is unchanged. For packing RPC replies. */
void ledger_store_account_view(const ledger_account_t *acct, Qcledger__Account *msg);
void ledger_store_device_view(const ledger_device_t *dev, Qcledger__Device *msg);
void ledger_store_load_view(const ledger_load_t *load, Qcledger__Load *msg);

/* Copies a decoded protobuf record into a struct, checking every length.
 * Returns 0 or QC_EDECODE. For qcctl and the gateway side of the RPC. */
QC_MUST_CHECK int ledger_store_account_from_msg(const Qcledger__Account *msg,
                                                ledger_account_t *out);
QC_MUST_CHECK int ledger_store_device_from_msg(const Qcledger__Device *msg, ledger_device_t *out);
QC_MUST_CHECK int ledger_store_load_from_msg(const Qcledger__Load *msg, ledger_load_t *out);

/* Text name of a transfer kind, for logs and the CLI. */
const char *ledger_transfer_kind_name(Qcledger__TransferKind kind);

#endif
