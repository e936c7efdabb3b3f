/* qctest_lmdb.c - raw edits of a stopped store (qctest_lmdb.h). */
#include "qctest_lmdb.h"

#include <string.h>

int qctest_lmdb_edit(const char *dir, qctest_lmdb_fn *fn, void *arg)
{
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    int rc = mdb_env_create(&env);
    if (rc != 0)
        return rc;
    if ((rc = mdb_env_set_maxdbs(env, QCTEST_LMDB_MAXDBS)) != 0 ||
        (rc = mdb_env_open(env, dir, 0, 0600)) != 0 ||
        (rc = mdb_txn_begin(env, NULL, 0, &txn)) != 0)
        goto out;
    if ((rc = fn(txn, arg)) != 0) {
        mdb_txn_abort(txn);
        goto out;
    }
    rc = mdb_txn_commit(txn);
out:
    mdb_env_close(env);
    return rc;
}

typedef struct flip {
    const char *db;
    MDB_val key;
    size_t offset;
    uint8_t mask;
} flip_t;

static int flip_one(MDB_txn *txn, void *arg)
{
    flip_t *f = arg;
    MDB_dbi dbi;
    MDB_val v;
    int rc = mdb_dbi_open(txn, f->db, 0, &dbi);
    if (rc != 0 || (rc = mdb_get(txn, dbi, &f->key, &v)) != 0)
        return rc;
    size_t at = f->offset == QCTEST_LMDB_LAST ? v.mv_size - 1 : f->offset;
    uint8_t buf[QCTEST_LMDB_VALUE_MAX];
    if (v.mv_size == 0 || at >= v.mv_size || v.mv_size > sizeof buf)
        return -1;
    memcpy(buf, v.mv_data, v.mv_size); /* v points into the page the put rewrites */
    buf[at] ^= f->mask;
    MDB_val nv = {.mv_size = v.mv_size, .mv_data = buf};
    return mdb_put(txn, dbi, &f->key, &nv, 0);
}

int qctest_lmdb_flip(const char *dir, const char *db, const void *key, size_t key_len,
                     size_t offset, uint8_t mask)
{
    flip_t f = {.db = db,
                .key = {.mv_size = key_len, .mv_data = (void *)key},
                .offset = offset,
                .mask = mask};
    return qctest_lmdb_edit(dir, flip_one, &f);
}

int qctest_lmdb_strip_tail(MDB_txn *txn, const char *db, size_t n)
{
    MDB_dbi dbi;
    MDB_cursor *cur = NULL;
    int rc = mdb_dbi_open(txn, db, 0, &dbi);
    if (rc != 0 || (rc = mdb_cursor_open(txn, dbi, &cur)) != 0)
        return rc;
    MDB_val k, v;
    int op = MDB_FIRST;
    while ((rc = mdb_cursor_get(cur, &k, &v, op)) == 0) {
        op = MDB_NEXT;
        uint8_t buf[QCTEST_LMDB_VALUE_MAX], key[QCTEST_LMDB_KEY_MAX];
        if (v.mv_size <= n || v.mv_size > sizeof buf || k.mv_size > sizeof key) {
            rc = -1;
            break;
        }
        memcpy(buf, v.mv_data, v.mv_size - n);
        memcpy(key, k.mv_data, k.mv_size); /* both point into the page the put rewrites */
        MDB_val nk = {.mv_size = k.mv_size, .mv_data = key};
        MDB_val nv = {.mv_size = v.mv_size - n, .mv_data = buf};
        if ((rc = mdb_cursor_put(cur, &nk, &nv, MDB_CURRENT)) != 0)
            break;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}
