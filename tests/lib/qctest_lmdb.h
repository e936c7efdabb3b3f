/* qctest_lmdb.h - raw edits of a stopped service's LMDB store, below the store's own code, as a
 * bad disk or a wrong hand would make them: the faults the checksums, the scrub and replica
 * repair must find. Free of cmocka (returns codes, as the rest of qctest). */
#ifndef QCTEST_LMDB_H
#define QCTEST_LMDB_H

#include <lmdb.h>
#include <stddef.h>
#include <stdint.h>

#define QCTEST_LMDB_MAXDBS 16      /* at least every database of our stores */
#define QCTEST_LMDB_VALUE_MAX 4096 /* the longest value qctest_lmdb_flip copies */
#define QCTEST_LMDB_KEY_MAX 512    /* the longest key qctest_lmdb_strip_tail copies */
#define QCTEST_LMDB_LAST SIZE_MAX  /* qctest_lmdb_flip: the value's last byte */

/* Called in the write transaction of qctest_lmdb_edit; non-zero aborts it and is returned. */
typedef int(qctest_lmdb_fn)(MDB_txn *txn, void *arg);

/* Opens the LMDB environment in directory dir (no service may hold it) with the map size its
 * own meta page records (so the edit does not change the store's map), runs fn in one write
 * transaction and commits it. Returns 0, an LMDB error, or what fn returned. */
int qctest_lmdb_edit(const char *dir, qctest_lmdb_fn *fn, void *arg);

/* XORs mask into byte offset (QCTEST_LMDB_LAST: the last one) of the value of key in database
 * db of the store in dir. Returns 0, an LMDB error (MDB_NOTFOUND: no such key), or -1 when the
 * offset is past the value or the value is longer than QCTEST_LMDB_VALUE_MAX. */
int qctest_lmdb_flip(const char *dir, const char *db, const void *key, size_t key_len,
                     size_t offset, uint8_t mask);

/* In txn, cuts the last n bytes off every value of database db (a store from before its
 * records carried checksums). Returns 0, an LMDB error, or -1 for a value not longer than n or
 * longer than QCTEST_LMDB_VALUE_MAX, or a key longer than QCTEST_LMDB_KEY_MAX. */
int qctest_lmdb_strip_tail(MDB_txn *txn, const char *db, size_t n);

#endif
