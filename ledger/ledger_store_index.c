/* ledger_store_index.c - the secondary indexes of loads: keys, upkeep, walks
 * (ledger_store_index.h). */
#include "ledger_store_index.h"

#include <assert.h>
#include <string.h>

#include "ops_bytes.h"
#include "ops_lmdb.h"

static const char *const index_names[LEDGER_INDEX_COUNT] = {
    "loads_by_time",
    "loads_by_device",
    "loads_by_account",
};

const char *ledger_index_name(ledger_index_kind_t kind)
{
    assert(kind < LEDGER_INDEX_COUNT);
    return index_names[kind];
}

static int index_err(const char *what, int rc)
{
    return ops_lmdb_error("ledger.lmdb", what, rc);
}

/* The id an entry of kind starts with, or NULL for the time index. */
static const char *index_id(ledger_index_kind_t kind, const ledger_index_load_t *l)
{
    switch (kind) {
    case LEDGER_INDEX_DEVICE:
        return l->device_id;
    case LEDGER_INDEX_ACCOUNT:
        return l->account_id;
    default:
        return NULL;
    }
}

/* id || 0x00 (nothing for NULL) into key; returns its length. */
static size_t index_prefix(const char *id, uint8_t *key)
{
    if (id == NULL)
        return 0;
    size_t n = strlen(id);
    assert(n > 0); /* a load always has its device and account */
    assert(n + 1 + LEDGER_INDEX_TIME_KEY_SIZE <= LEDGER_INDEX_KEY_MAX);
    memcpy(key, id, n);
    key[n] = 0;
    return n + 1;
}

static size_t index_position(uint8_t *key, size_t plen, uint64_t ms, const uint8_t *txn_id)
{
    ops_be_put(key + plen, ms, 8);
    if (txn_id != NULL)
        memcpy(key + plen + 8, txn_id, PROTO_TXN_ID_SIZE);
    else
        memset(key + plen + 8, 0, PROTO_TXN_ID_SIZE);
    return plen + LEDGER_INDEX_TIME_KEY_SIZE;
}

size_t ledger_index_key(ledger_index_kind_t kind, const ledger_index_load_t *l, uint8_t *key)
{
    assert(kind < LEDGER_INDEX_COUNT);
    assert(l != NULL);
    assert(l->txn_id != NULL);
    size_t plen = index_prefix(index_id(kind, l), key);
    return index_position(key, plen, l->created_ms, l->txn_id);
}

typedef enum index_op { INDEX_PUT, INDEX_DEL, INDEX_COUNT_MISSING } index_op_t;

static const char *const op_names[] = {"index_put", "index_del", "index_get"};

/* Does op to each of l's three entries; *missing counts the absent ones for
 * INDEX_COUNT_MISSING. */
static int index_each(MDB_txn *txn, const MDB_dbi dbi[LEDGER_INDEX_COUNT],
                      const ledger_index_load_t *l, index_op_t op, unsigned *missing)
{
    assert(txn != NULL);
    assert(dbi != NULL);
    for (int kind = 0; kind < LEDGER_INDEX_COUNT; kind++) {
        uint8_t key[LEDGER_INDEX_KEY_MAX];
        MDB_val k = {.mv_size = ledger_index_key((ledger_index_kind_t)kind, l, key),
                     .mv_data = key};
        MDB_val v = {.mv_size = 0, .mv_data = NULL};
        int rc;
        if (op == INDEX_PUT)
            rc = mdb_put(txn, dbi[kind], &k, &v, 0);
        else if (op == INDEX_DEL)
            rc = mdb_del(txn, dbi[kind], &k, NULL);
        else
            rc = mdb_get(txn, dbi[kind], &k, &v);
        if (rc == MDB_NOTFOUND && op != INDEX_PUT) {
            if (missing != NULL)
                (*missing)++;
            continue; /* deleting an absent entry is no error */
        }
        if (rc != 0)
            return index_err(op_names[op], rc);
    }
    return 0;
}

int ledger_index_put(MDB_txn *txn, const MDB_dbi dbi[LEDGER_INDEX_COUNT],
                     const ledger_index_load_t *l)
{
    return index_each(txn, dbi, l, INDEX_PUT, NULL);
}

int ledger_index_del(MDB_txn *txn, const MDB_dbi dbi[LEDGER_INDEX_COUNT],
                     const ledger_index_load_t *l)
{
    return index_each(txn, dbi, l, INDEX_DEL, NULL);
}

int ledger_index_missing(MDB_txn *txn, const MDB_dbi dbi[LEDGER_INDEX_COUNT],
                         const ledger_index_load_t *l, unsigned *missing)
{
    assert(missing != NULL);
    *missing = 0;
    return index_each(txn, dbi, l, INDEX_COUNT_MISSING, missing);
}

int ledger_index_parse(ledger_index_kind_t kind, const uint8_t *key, size_t key_len, char *id,
                       uint64_t *created_ms, uint8_t txn_id[PROTO_TXN_ID_SIZE])
{
    assert(kind < LEDGER_INDEX_COUNT);
    assert(key != NULL);
    assert(id != NULL);
    size_t plen = 0;
    id[0] = '\0';
    if (kind != LEDGER_INDEX_TIME) {
        const uint8_t *nul = memchr(key, 0, key_len);
        if (nul == NULL || nul == key)
            return QC_EDECODE;
        plen = (size_t)(nul - key) + 1;
        if (plen - 1 > PROTO_ACCOUNT_ID_MAX)
            return QC_EDECODE;
        memcpy(id, key, plen);
    }
    if (key_len != plen + LEDGER_INDEX_TIME_KEY_SIZE)
        return QC_EDECODE;
    *created_ms = ops_be_get(key + plen, 8);
    memcpy(txn_id, key + plen + 8, PROTO_TXN_ID_SIZE);
    return 0;
}

/* Called with each key of a range walk, the id's prefix included: nonzero stops the walk and is
 * returned; *end = true ends it with 0 (the range is over). */
typedef int index_key_fn(void *arg, const uint8_t *key, size_t key_len, bool *end);

/* Walks the keys of dbi that start with start[0..plen) in order, from the later of start
 * (start_len bytes) and the cursor after (after_len bytes, 0 for none; the cursor's own key is
 * skipped: it was on the page before). The one loop under both kinds of index. */
static int index_range(MDB_txn *txn, MDB_dbi dbi, const uint8_t *start, size_t start_len,
                       const uint8_t *after, size_t after_len, size_t plen, index_key_fn *fn,
                       void *arg)
{
    assert(plen <= start_len);
    bool from_cursor = after_len > 0 && memcmp(after, start, start_len) >= 0;
    MDB_cursor *cur = NULL;
    int rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc != 0)
        return index_err("cursor_open", rc);
    MDB_val k = {.mv_size = from_cursor ? after_len : start_len,
                 .mv_data = (void *)(from_cursor ? after : start)},
            v;
    int op = MDB_SET_RANGE, qrc = 0;
    bool end = false;
    while (!end && (rc = mdb_cursor_get(cur, &k, &v, op)) == 0) {
        op = MDB_NEXT;
        /* MDB_SET_RANGE lands on the cursor's own entry when it exists: that one was read. */
        if (from_cursor && k.mv_size == after_len && memcmp(k.mv_data, after, after_len) == 0)
            continue;
        if (k.mv_size < plen || memcmp(k.mv_data, start, plen) != 0)
            break; /* past the id's entries */
        if ((qrc = fn(arg, k.mv_data, k.mv_size, &end)) != 0)
            break;
    }
    mdb_cursor_close(cur);
    if (qrc != 0)
        return qrc;
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : index_err("index_walk", rc);
}

struct index_load_walk {
    const ledger_index_range_t *r;
    size_t plen;
    ledger_index_fn *fn;
    void *arg;
};

static int index_load_key(void *arg, const uint8_t *key, size_t key_len, bool *end)
{
    struct index_load_walk *w = arg;
    if (key_len != w->plen + LEDGER_INDEX_TIME_KEY_SIZE)
        return QC_EDECODE;
    const uint8_t *p = key + w->plen;
    if (w->r->until_ms != 0 && ops_be_get(p, 8) >= w->r->until_ms) {
        *end = true; /* past the window */
        return 0;
    }
    return w->fn(w->arg, p + 8);
}

int ledger_index_walk(MDB_txn *txn, MDB_dbi dbi, const ledger_index_range_t *r, ledger_index_fn *fn,
                      void *arg)
{
    assert(txn != NULL);
    assert(r != NULL);
    assert(fn != NULL);
    assert(r->kind < LEDGER_INDEX_COUNT);
    assert(r->kind == LEDGER_INDEX_TIME || r->id != NULL);
    uint8_t start[LEDGER_INDEX_KEY_MAX], after[LEDGER_INDEX_KEY_MAX];
    size_t plen = index_prefix(r->kind == LEDGER_INDEX_TIME ? NULL : r->id, start);
    memcpy(after, start, plen);
    size_t after_len = 0;
    if (r->after_txn != NULL)
        after_len = index_position(after, plen, r->after_ms, r->after_txn);
    size_t start_len = index_position(start, plen, r->since_ms, NULL);
    struct index_load_walk w = {.r = r, .plen = plen, .fn = fn, .arg = arg};
    return index_range(txn, dbi, start, start_len, after, after_len, plen, index_load_key, &w);
}

/* ------------------------------------------------------------ movements of accounts */

static size_t move_tail(uint8_t *key, size_t plen, const ledger_index_move_t *mv)
{
    ops_be_put(key + plen, mv->time_ms, 8);
    memcpy(key + plen + 8, mv->txn_id, PROTO_TXN_ID_SIZE);
    key[plen + 8 + PROTO_TXN_ID_SIZE] = mv->kind;
    return plen + LEDGER_INDEX_MOVE_TAIL_SIZE;
}

size_t ledger_index_move_key(const char *account, const ledger_index_move_t *mv, uint8_t *key)
{
    assert(account != NULL);
    assert(mv != NULL);
    assert(strlen(account) <= PROTO_ACCOUNT_ID_MAX);
    return move_tail(key, index_prefix(account, key), mv);
}

int ledger_index_move_parse(const uint8_t *key, size_t key_len, char *account,
                            ledger_index_move_t *mv)
{
    assert(key != NULL);
    assert(account != NULL);
    assert(mv != NULL);
    const uint8_t *nul = memchr(key, 0, key_len);
    if (nul == NULL || nul == key || (size_t)(nul - key) > PROTO_ACCOUNT_ID_MAX)
        return QC_EDECODE;
    size_t plen = (size_t)(nul - key) + 1;
    if (key_len != plen + LEDGER_INDEX_MOVE_TAIL_SIZE)
        return QC_EDECODE;
    memcpy(account, key, plen);
    mv->time_ms = ops_be_get(key + plen, 8);
    memcpy(mv->txn_id, key + plen + 8, PROTO_TXN_ID_SIZE);
    mv->kind = key[plen + 8 + PROTO_TXN_ID_SIZE];
    return 0;
}

struct index_move_walk {
    ledger_index_move_fn *fn;
    void *arg;
};

static int index_move_key(void *arg, const uint8_t *key, size_t key_len, bool *end)
{
    struct index_move_walk *w = arg;
    (void)end; /* the account's entries end where its prefix does */
    char id[PROTO_ACCOUNT_ID_MAX + 2];
    ledger_index_move_t mv;
    int rc = ledger_index_move_parse(key, key_len, id, &mv);
    return rc != 0 ? rc : w->fn(w->arg, &mv);
}

int ledger_index_move_walk(MDB_txn *txn, MDB_dbi dbi, const char *account, uint64_t since_ms,
                           const ledger_index_move_t *after, ledger_index_move_fn *fn, void *arg)
{
    assert(txn != NULL);
    assert(account != NULL);
    assert(fn != NULL);
    uint8_t start[LEDGER_INDEX_MOVE_KEY_MAX], cur_key[LEDGER_INDEX_MOVE_KEY_MAX];
    size_t plen = index_prefix(account, start);
    memcpy(cur_key, start, plen);
    ledger_index_move_t from = {.time_ms = since_ms};
    size_t start_len = move_tail(start, plen, &from);
    size_t after_len = after != NULL ? move_tail(cur_key, plen, after) : 0;
    struct index_move_walk w = {.fn = fn, .arg = arg};
    return index_range(txn, dbi, start, start_len, cur_key, after_len, plen, index_move_key, &w);
}
