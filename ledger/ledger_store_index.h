/* ledger_store_index.h - the secondary indexes of a shard's loads and transfers: their keys,
 * their upkeep and their walks, for ledger_store.c (which owns the databases and calls these in
 * the write transaction that writes the record, so an index is never half-applied) and for
 * listings and statements.
 *
 * Three databases, keys only (empty values), big-endian numbers so that LMDB's byte order is
 * time order:
 *   loads_by_time     created_ms (8, BE) || txn id (16)
 *   loads_by_device   device id || 0x00 || created_ms (8, BE) || txn id (16)
 *   loads_by_account  account id || 0x00 || created_ms (8, BE) || txn id (16)
 * and one of transfers, the movements of each account (an account's statement):
 *   transfers_by_account  account id || 0x00 || time_ms (8, BE) || txn id (16) || kind (1)
 *                         for the debit account and for the credit account of each transfer;
 *                         its order is the statement's (time, txn id, kind). Transfers are
 *                         immutable, so their entries are written once, with the transfer.
 * The 0x00 after an id keeps one id's entries together and apart from a longer id it is the
 * prefix of ("dev-1" sorts before "dev-10": 0x00 < '0'); ids hold no NUL (C strings).
 * A load's device, account and creation time never change after its reserve, so a state
 * change leaves its entries alone; a load whose record changes them anyway (or is deleted)
 * has its old entries replaced.
 *
 * The indexes are derived state: every replica maintains them from the loads it applies, in
 * the same transaction, so they are deterministic; they are not part of the snapshot or of
 * the replica digest (ledger_store_each_record() walks the primary databases only), and a
 * snapshot loaded record by record rebuilds them (ledger_store_record_append()). */
#ifndef LEDGER_STORE_INDEX_H
#define LEDGER_STORE_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lmdb.h>

#include "proto_limits.h"
#include "qc_error.h"

/* The version of the index layout above; stored in the store's `local` database (not
 * replicated) and built at open when absent or another (ledger_store_open()). 1: loads only;
 * 2: transfers_by_account too. */
#define LEDGER_INDEX_VERSION 2
#define LEDGER_INDEX_TIME_KEY_SIZE (8 + PROTO_TXN_ID_SIZE)
/* The longest key: an id of PROTO_ACCOUNT_ID_MAX (or PROTO_DEVICE_ID_MAX) bytes, the 0x00,
 * then the time key. */
#define LEDGER_INDEX_KEY_MAX                                                                       \
    ((PROTO_ACCOUNT_ID_MAX > PROTO_DEVICE_ID_MAX ? PROTO_ACCOUNT_ID_MAX : PROTO_DEVICE_ID_MAX) +   \
     1 + LEDGER_INDEX_TIME_KEY_SIZE)

typedef enum ledger_index_kind {
    LEDGER_INDEX_TIME = 0,
    LEDGER_INDEX_DEVICE,
    LEDGER_INDEX_ACCOUNT,
    LEDGER_INDEX_COUNT,
} ledger_index_kind_t;

/* What of a load its entries are made of (borrowed strings). */
typedef struct ledger_index_load {
    const uint8_t *txn_id; /* PROTO_TXN_ID_SIZE bytes */
    const char *device_id;
    const char *account_id;
    uint64_t created_ms;
} ledger_index_load_t;

/* The database names, in ledger_index_kind_t order. */
const char *ledger_index_name(ledger_index_kind_t kind);

/* The entry of l in index kind into key (LEDGER_INDEX_KEY_MAX bytes); returns its length. */
size_t ledger_index_key(ledger_index_kind_t kind, const ledger_index_load_t *l, uint8_t *key);

/* Puts (del: deletes) the entries of l in the three databases dbi[] (in ledger_index_kind_t
 * order), in txn. put: 0, QC_EFULL, QC_EIO. del: 0 (an absent entry is no error), QC_EIO. */
QC_MUST_CHECK int ledger_index_put(MDB_txn *txn, const MDB_dbi dbi[LEDGER_INDEX_COUNT],
                                   const ledger_index_load_t *l);
QC_MUST_CHECK int ledger_index_del(MDB_txn *txn, const MDB_dbi dbi[LEDGER_INDEX_COUNT],
                                   const ledger_index_load_t *l);

/* Sets *missing to the number of l's entries that are not in dbi[] (0 when all three are).
 * Returns 0 or QC_EIO. */
QC_MUST_CHECK int ledger_index_missing(MDB_txn *txn, const MDB_dbi dbi[LEDGER_INDEX_COUNT],
                                       const ledger_index_load_t *l, unsigned *missing);

/* Splits an entry's key of index kind: the id (device or account; "" for the time index, id
 * must hold PROTO_ACCOUNT_ID_MAX + 1 bytes), the creation time and the txn id. Returns 0 or
 * QC_EDECODE (a key of another shape). */
QC_MUST_CHECK int ledger_index_parse(ledger_index_kind_t kind, const uint8_t *key, size_t key_len,
                                     char *id, uint64_t *created_ms,
                                     uint8_t txn_id[PROTO_TXN_ID_SIZE]);

/* A range of one index: the entries of id (kind DEVICE or ACCOUNT; ignored for TIME) created in
 * [since_ms, until_ms) (until_ms 0: no upper bound), in key order, starting after the position
 * (after_ms, after_txn) when after_txn is not NULL. */
typedef struct ledger_index_range {
    ledger_index_kind_t kind;
    const char *id;
    uint64_t since_ms, until_ms;
    const uint8_t *after_txn;
    uint64_t after_ms;
} ledger_index_range_t;

/* Calls fn(arg, txn id) for each entry of range r in dbi, in order, until fn returns non-zero
 * (returned) or the range ends (0). QC_EIO from LMDB, QC_EDECODE for a key of another shape. */
typedef int(ledger_index_fn)(void *arg, const uint8_t txn_id[PROTO_TXN_ID_SIZE]);
QC_MUST_CHECK int ledger_index_walk(MDB_txn *txn, MDB_dbi dbi, const ledger_index_range_t *r,
                                    ledger_index_fn *fn, void *arg);

/* ---------------------------------------------------------------- movements of accounts */

#define LEDGER_INDEX_MOVE_TAIL_SIZE (8 + PROTO_TXN_ID_SIZE + 1) /* time, txn id, kind */
#define LEDGER_INDEX_MOVE_KEY_MAX (PROTO_ACCOUNT_ID_MAX + 1 + LEDGER_INDEX_MOVE_TAIL_SIZE)

/* One movement's place: (time, txn id, kind). */
typedef struct ledger_index_move {
    uint64_t time_ms;
    uint8_t txn_id[PROTO_TXN_ID_SIZE];
    uint8_t kind;
} ledger_index_move_t;

/* The entry of account's movement mv into key (LEDGER_INDEX_MOVE_KEY_MAX bytes); its length. */
size_t ledger_index_move_key(const char *account, const ledger_index_move_t *mv, uint8_t *key);

/* Splits an entry's key: account (PROTO_ACCOUNT_ID_MAX + 1 bytes) and the movement. Returns 0
 * or QC_EDECODE. */
QC_MUST_CHECK int ledger_index_move_parse(const uint8_t *key, size_t key_len, char *account,
                                          ledger_index_move_t *mv);

/* Calls fn(arg, movement) for each entry of account in dbi, in (time, txn id, kind) order,
 * from the later of (since_ms, the first) and just after *after (NULL: no cursor), until fn
 * returns non-zero (returned) or the account's entries end (0). QC_EIO, QC_EDECODE. */
typedef int(ledger_index_move_fn)(void *arg, const ledger_index_move_t *mv);
QC_MUST_CHECK int ledger_index_move_walk(MDB_txn *txn, MDB_dbi dbi, const char *account,
                                         uint64_t since_ms, const ledger_index_move_t *after,
                                         ledger_index_move_fn *fn, void *arg);

#endif
