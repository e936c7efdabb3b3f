/* test_store_index.c - the indexes of loads by time, device and account
 * (ledger/ledger_store_index.h): kept in the write transaction of the load (insert, state
 * change, a changed device, delete), equal to what the loads say after a seeded run of random
 * operations, built at open for a store made without them, rebuilt by a snapshot's records,
 * and checked both ways by the scrub (a missing entry, a dangling one). A walk of one device's
 * entries reads that device's loads and nothing else. The movements of accounts (transfers by
 * account) likewise, in statement order. No process, no port. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <lmdb.h>

#include "ledger_store.h"
#include "ops_bytes.h"
#include "qc_error.h"
#include "qctest_fs.h"
#include "qctest_lmdb.h"

#define T_MAP_SIZE (256ull << 20)
#define T_DEVICES 7
#define T_ACCOUNTS 3
#define T_RANDOM_OPS 3000
#define T_RANDOM_SEED 19u
#define T_MANY_LOADS 20000 /* loads of the shard a device's listing must not read */
#define T_MANY_DEVICES 400
#define T_COMMIT_EVERY 5000

typedef struct model_load {
    uint8_t txn_id[LEDGER_TXN_ID_SIZE];
    int device, account;
    uint64_t created_ms;
    bool live;
} model_load_t;

static uint32_t rng_state;

static uint32_t rng(void)
{
    rng_state = rng_state * 1103515245u + 12345u;
    return rng_state >> 8;
}

static void device_name(int d, char out[LEDGER_DEVICE_ID_MAX + 1])
{
    /* dev-1 and dev-10 both exist when there are more than ten: a prefix of another id. */
    snprintf(out, LEDGER_DEVICE_ID_MAX + 1, "dev-%d", d);
}

static void account_name(int a, char out[LEDGER_ID_MAX + 1])
{
    snprintf(out, LEDGER_ID_MAX + 1, "acct-%d", a);
}

static ledger_load_t *load_new(const model_load_t *m, Quancun__LoadState state)
{
    ledger_load_t *l = calloc(1, sizeof *l);
    assert_non_null(l);
    memcpy(l->txn_id, m->txn_id, LEDGER_TXN_ID_SIZE);
    l->state = state;
    l->amount = 100;
    l->currency = 156;
    device_name(m->device, l->device_id);
    account_name(m->account, l->account_id);
    l->request[0] = 0x0a;
    l->request_len = 1;
    l->created_ms = m->created_ms;
    l->updated_ms = m->created_ms;
    return l;
}

static void put(ledger_store_t *store, MDB_txn *txn, const model_load_t *m,
                Quancun__LoadState state)
{
    ledger_load_t *l = load_new(m, state);
    assert_int_equal(ledger_store_load_put(store, txn, l), 0);
    free(l);
}

typedef struct seen {
    uint8_t (*txn)[LEDGER_TXN_ID_SIZE];
    uint64_t *created;
    size_t n, cap;
    size_t stop_at; /* 0: never */
} seen_t;

static int seen_add(void *arg, const ledger_load_t *l)
{
    seen_t *s = arg;
    if (s->stop_at != 0 && s->n == s->stop_at)
        return QC_ETOOBIG;
    assert_true(s->n < s->cap);
    memcpy(s->txn[s->n], l->txn_id, LEDGER_TXN_ID_SIZE);
    s->created[s->n] = l->created_ms;
    s->n++;
    return 0;
}

static seen_t seen_new(size_t cap)
{
    seen_t s = {.cap = cap};
    s.txn = calloc(cap, sizeof *s.txn);
    s.created = calloc(cap, sizeof *s.created);
    assert_non_null(s.txn);
    assert_non_null(s.created);
    return s;
}

static void seen_free(seen_t *s)
{
    free(s->txn);
    free(s->created);
}

static size_t walk(ledger_store_t *store, const ledger_index_range_t *r, seen_t *s)
{
    MDB_txn *txn = NULL;
    s->n = 0;
    assert_int_equal(ledger_store_txn_begin(store, NULL, false, &txn), 0);
    int rc = ledger_store_each_load_in(store, txn, r, seen_add, s);
    assert_true(rc == 0 || rc == QC_ETOOBIG);
    ledger_store_txn_abort(txn);
    return s->n;
}

static ledger_store_scrub_t scrub(ledger_store_t *store)
{
    ledger_store_scrub_t s;
    memset(&s, 0, sizeof s);
    bool pass = false;
    assert_int_equal(ledger_store_scrub_step(store, &s, SIZE_MAX, &pass), 0);
    assert_true(pass);
    return s;
}

/* The model's live loads of range r, in index order (creation time, then txn id). */
static int model_cmp(const void *pa, const void *pb)
{
    const model_load_t *a = *(model_load_t *const *)pa, *b = *(model_load_t *const *)pb;
    if (a->created_ms != b->created_ms)
        return a->created_ms < b->created_ms ? -1 : 1;
    return memcmp(a->txn_id, b->txn_id, LEDGER_TXN_ID_SIZE);
}

static size_t model_range(model_load_t *loads, size_t n, const ledger_index_range_t *r,
                          model_load_t **out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const model_load_t *m = &loads[i];
        char dev[LEDGER_DEVICE_ID_MAX + 1], acct[LEDGER_ID_MAX + 1];
        device_name(m->device, dev);
        account_name(m->account, acct);
        if (!m->live || m->created_ms < r->since_ms ||
            (r->until_ms != 0 && m->created_ms >= r->until_ms))
            continue;
        if ((r->kind == LEDGER_INDEX_DEVICE && strcmp(dev, r->id) != 0) ||
            (r->kind == LEDGER_INDEX_ACCOUNT && strcmp(acct, r->id) != 0))
            continue;
        out[k++] = &loads[i];
    }
    qsort(out, k, sizeof *out, model_cmp);
    return k;
}

static void assert_range(ledger_store_t *store, model_load_t *loads, size_t n,
                         const ledger_index_range_t *r)
{
    model_load_t **want = calloc(n + 1, sizeof *want);
    assert_non_null(want);
    size_t k = model_range(loads, n, r, want);
    seen_t s = seen_new(n + 1);
    assert_int_equal(walk(store, r, &s), k);
    for (size_t i = 0; i < k; i++) {
        assert_memory_equal(s.txn[i], want[i]->txn_id, LEDGER_TXN_ID_SIZE);
        assert_int_equal(s.created[i], want[i]->created_ms);
    }
    /* Paging: from the position of any load, the rest of the range. */
    if (k > 2) {
        ledger_index_range_t p = *r;
        p.after_txn = want[k / 2]->txn_id;
        p.after_ms = want[k / 2]->created_ms;
        assert_int_equal(walk(store, &p, &s), k - k / 2 - 1);
        assert_memory_equal(s.txn[0], want[k / 2 + 1]->txn_id, LEDGER_TXN_ID_SIZE);
    }
    seen_free(&s);
    free(want);
}

static void random_txn(uint8_t txn[LEDGER_TXN_ID_SIZE])
{
    for (int i = 0; i < LEDGER_TXN_ID_SIZE; i++)
        txn[i] = (uint8_t)rng();
}

/* Insert, a state change, a changed device, delete: the entries follow, in the same txn. */
static void test_index_follows_the_load(void **state)
{
    (void)state;
    char dir[QCTEST_PATH_MAX];
    assert_int_equal(qctest_dir_new("qc-index", dir), 0);
    ledger_store_t *store = NULL;
    assert_int_equal(ledger_store_open(dir, T_MAP_SIZE, &store), 0);
    rng_state = 1;
    model_load_t m = {.device = 1, .account = 2, .created_ms = 1000, .live = true};
    random_txn(m.txn_id);
    MDB_txn *txn = NULL;
    /* A load put in a transaction that is aborted leaves no entry. */
    assert_int_equal(ledger_store_txn_begin(store, NULL, true, &txn), 0);
    put(store, txn, &m, QUANCUN__LOAD_STATE__LOAD_RESERVED);
    ledger_store_txn_abort(txn);
    ledger_index_range_t dev1 = {.kind = LEDGER_INDEX_DEVICE, .id = "dev-1"};
    ledger_index_range_t acct2 = {.kind = LEDGER_INDEX_ACCOUNT, .id = "acct-2"};
    ledger_index_range_t all = {.kind = LEDGER_INDEX_TIME};
    seen_t s = seen_new(8);
    assert_int_equal(walk(store, &dev1, &s), 0);
    assert_int_equal(ledger_store_txn_begin(store, NULL, true, &txn), 0);
    put(store, txn, &m, QUANCUN__LOAD_STATE__LOAD_RESERVED);
    assert_int_equal(ledger_store_txn_commit(txn), 0);
    assert_int_equal(walk(store, &dev1, &s), 1);
    assert_int_equal(walk(store, &acct2, &s), 1);
    assert_int_equal(walk(store, &all, &s), 1);
    /* The time window: [since, until). */
    ledger_index_range_t w = {.kind = LEDGER_INDEX_DEVICE, .id = "dev-1", .since_ms = 1000};
    assert_int_equal(walk(store, &w, &s), 1);
    w.since_ms = 1001;
    assert_int_equal(walk(store, &w, &s), 0);
    w.since_ms = 0;
    w.until_ms = 1000;
    assert_int_equal(walk(store, &w, &s), 0);
    w.until_ms = 1001;
    assert_int_equal(walk(store, &w, &s), 1);
    /* A state change keeps the entries, one of each. */
    assert_int_equal(ledger_store_txn_begin(store, NULL, true, &txn), 0);
    put(store, txn, &m, QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
    assert_int_equal(ledger_store_txn_commit(txn), 0);
    assert_int_equal(walk(store, &dev1, &s), 1);
    assert_int_equal(walk(store, &all, &s), 1);
    ledger_store_scrub_t sc = scrub(store);
    assert_int_equal(sc.index_bad, 0);
    assert_int_equal(sc.index_checked, 4); /* the load, then its three entries */
    /* A record rewritten with another device moves its device entry. */
    m.device = 10;
    assert_int_equal(ledger_store_txn_begin(store, NULL, true, &txn), 0);
    put(store, txn, &m, QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
    assert_int_equal(ledger_store_txn_commit(txn), 0);
    assert_int_equal(walk(store, &dev1, &s), 0);
    ledger_index_range_t dev10 = {.kind = LEDGER_INDEX_DEVICE, .id = "dev-10"};
    assert_int_equal(walk(store, &dev10, &s), 1);
    assert_int_equal(scrub(store).index_bad, 0);
    /* Delete: the record and every entry. */
    assert_int_equal(ledger_store_txn_begin(store, NULL, true, &txn), 0);
    assert_int_equal(ledger_store_load_del(store, txn, m.txn_id), 0);
    assert_int_equal(ledger_store_load_del(store, txn, m.txn_id), QC_ENOTFOUND);
    assert_int_equal(ledger_store_txn_commit(txn), 0);
    assert_int_equal(walk(store, &dev10, &s), 0);
    assert_int_equal(walk(store, &acct2, &s), 0);
    assert_int_equal(walk(store, &all, &s), 0);
    sc = scrub(store);
    assert_int_equal(sc.index_bad, 0);
    assert_int_equal(sc.index_checked, 0);
    seen_free(&s);
    ledger_store_close(&store);
    assert_int_equal(qctest_dir_remove(dir), 0);
}

/* Seeded random inserts, state changes and deletes over a few devices, accounts and times;
 * afterwards every device's, account's and window's walk is exactly what the loads say. */
static void test_index_after_random_ops(void **state)
{
    (void)state;
    char dir[QCTEST_PATH_MAX];
    assert_int_equal(qctest_dir_new("qc-index", dir), 0);
    ledger_store_t *store = NULL;
    assert_int_equal(ledger_store_open(dir, T_MAP_SIZE, &store), 0);
    model_load_t *loads = calloc(T_RANDOM_OPS, sizeof *loads);
    assert_non_null(loads);
    size_t n = 0, live = 0;
    rng_state = T_RANDOM_SEED;
    MDB_txn *txn = NULL;
    assert_int_equal(ledger_store_txn_begin(store, NULL, true, &txn), 0);
    for (int op = 0; op < T_RANDOM_OPS; op++) {
        uint32_t what = rng() % 10;
        if (n == 0 || what < 6) {
            model_load_t *m = &loads[n++];
            random_txn(m->txn_id);
            m->device = (int)(rng() % T_DEVICES) + 1;
            m->account = (int)(rng() % T_ACCOUNTS);
            m->created_ms = 1000 + rng() % 500; /* equal times: the txn id orders them */
            m->live = true;
            put(store, txn, m, QUANCUN__LOAD_STATE__LOAD_RESERVED);
            live++;
        } else {
            model_load_t *m = &loads[rng() % n];
            if (!m->live)
                continue;
            if (what < 9) {
                put(store, txn, m, QUANCUN__LOAD_STATE__LOAD_COMPENSATED);
            } else {
                assert_int_equal(ledger_store_load_del(store, txn, m->txn_id), 0);
                m->live = false;
                live--;
            }
        }
        if (op % 500 == 499) { /* some commits between, some in one txn */
            assert_int_equal(ledger_store_txn_commit(txn), 0);
            assert_int_equal(ledger_store_txn_begin(store, NULL, true, &txn), 0);
        }
    }
    assert_int_equal(ledger_store_txn_commit(txn), 0);
    for (int d = 1; d <= T_DEVICES; d++) {
        char id[LEDGER_DEVICE_ID_MAX + 1];
        device_name(d, id);
        ledger_index_range_t r = {.kind = LEDGER_INDEX_DEVICE, .id = id};
        assert_range(store, loads, n, &r);
        r.since_ms = 1100;
        r.until_ms = 1300;
        assert_range(store, loads, n, &r);
    }
    for (int a = 0; a < T_ACCOUNTS; a++) {
        char id[LEDGER_ID_MAX + 1];
        account_name(a, id);
        ledger_index_range_t r = {.kind = LEDGER_INDEX_ACCOUNT, .id = id, .since_ms = 1200};
        assert_range(store, loads, n, &r);
    }
    ledger_index_range_t all = {.kind = LEDGER_INDEX_TIME};
    assert_range(store, loads, n, &all);
    ledger_index_range_t win = {.kind = LEDGER_INDEX_TIME, .since_ms = 1250, .until_ms = 1251};
    assert_range(store, loads, n, &win);
    ledger_store_scrub_t sc = scrub(store);
    assert_int_equal(sc.index_bad, 0);
    assert_int_equal(sc.index_checked, 4 * live);
    print_message("%zu loads made, %zu live after the random operations\n", n, live);
    free(loads);
    ledger_store_close(&store);
    assert_int_equal(qctest_dir_remove(dir), 0);
}

/* Opens dir's environment raw and lets fn change it in one write txn. */
static void raw_edit(const char *dir, qctest_lmdb_fn *fn, void *arg)
{
    assert_int_equal(qctest_lmdb_edit(dir, fn, arg), 0);
}

/* What a store made before the indexes holds: no index databases, no version. */
static int drop_indexes(MDB_txn *txn, void *arg)
{
    (void)arg;
    const char *names[] = {"loads_by_time", "loads_by_device", "loads_by_account",
                           "transfers_by_account", "local"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        MDB_dbi dbi;
        assert_int_equal(mdb_dbi_open(txn, names[i], 0, &dbi), 0);
        assert_int_equal(mdb_drop(txn, dbi, 1), 0);
    }
    return 0;
}

typedef struct raw_key {
    const char *db;
    uint8_t key[LEDGER_INDEX_MOVE_KEY_MAX];
    size_t len;
    bool add; /* add it (a dangling entry) or delete it (a missing one) */
} raw_key_t;

static int edit_key(MDB_txn *txn, void *arg)
{
    raw_key_t *r = arg;
    MDB_dbi dbi;
    assert_int_equal(mdb_dbi_open(txn, r->db, 0, &dbi), 0);
    MDB_val k = {.mv_size = r->len, .mv_data = r->key}, v = {.mv_size = 0, .mv_data = NULL};
    if (r->add)
        assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    else
        assert_int_equal(mdb_del(txn, dbi, &k, NULL), 0);
    return 0;
}

/* A snapshot's records, as ledger_store_each_record() hands them. */
typedef struct rec {
    unsigned db;
    uint8_t *key, *val;
    size_t klen, vlen;
} rec_t;

typedef struct dump {
    rec_t *recs;
    size_t n;
} dump_t;

static int dump_fn(void *arg, unsigned db, const uint8_t *key, size_t klen, const uint8_t *val,
                   size_t vlen)
{
    dump_t *d = arg;
    rec_t *r = &d->recs[d->n++];
    r->db = db;
    r->klen = klen;
    r->vlen = vlen;
    r->key = malloc(klen);
    r->val = malloc(vlen + 1);
    assert_non_null(r->key);
    assert_non_null(r->val);
    memcpy(r->key, key, klen);
    memcpy(r->val, val, vlen);
    return 0;
}

/* A store made before the indexes gets them at open; a missing or dangling entry is named by
 * the scrub; a snapshot's records (wipe, then append) bring their loads' entries. */
static void test_index_built_checked_restored(void **state)
{
    (void)state;
    char dir[QCTEST_PATH_MAX];
    assert_int_equal(qctest_dir_new("qc-index", dir), 0);
    ledger_store_t *store = NULL;
    assert_int_equal(ledger_store_open(dir, T_MAP_SIZE, &store), 0);
    enum { N = 50 };
    model_load_t loads[N];
    rng_state = 7;
    MDB_txn *txn = NULL;
    assert_int_equal(ledger_store_txn_begin(store, NULL, true, &txn), 0);
    for (int i = 0; i < N; i++) {
        loads[i] =
            (model_load_t){.device = i % 5, .account = i % 2, .created_ms = 5000 + i, .live = true};
        random_txn(loads[i].txn_id);
        put(store, txn, &loads[i], QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
    }
    assert_int_equal(ledger_store_txn_commit(txn), 0);
    ledger_store_close(&store);

    raw_edit(dir, drop_indexes, NULL);
    assert_int_equal(ledger_store_open(dir, T_MAP_SIZE, &store), 0);
    ledger_index_range_t dev3 = {.kind = LEDGER_INDEX_DEVICE, .id = "dev-3"};
    assert_range(store, loads, N, &dev3);
    ledger_index_range_t all = {.kind = LEDGER_INDEX_TIME};
    assert_range(store, loads, N, &all);
    ledger_store_scrub_t sc = scrub(store);
    assert_int_equal(sc.index_bad, 0);
    assert_int_equal(sc.index_checked, 4 * N);
    ledger_store_close(&store);

    /* An entry gone (the load lacks it), then one that names no load (dangling). */
    raw_key_t rk = {.db = "loads_by_account"};
    char acct[LEDGER_ID_MAX + 1], dev[LEDGER_DEVICE_ID_MAX + 1];
    account_name(loads[4].account, acct);
    device_name(loads[4].device, dev);
    ledger_index_load_t il = {.txn_id = loads[4].txn_id,
                              .device_id = dev,
                              .account_id = acct,
                              .created_ms = loads[4].created_ms};
    rk.len = ledger_index_key(LEDGER_INDEX_ACCOUNT, &il, rk.key);
    raw_edit(dir, edit_key, &rk);
    assert_int_equal(ledger_store_open(dir, T_MAP_SIZE, &store), 0);
    sc = scrub(store);
    assert_int_equal(sc.index_bad, 1);
    ledger_store_close(&store);
    rk.add = true; /* put it back */
    raw_edit(dir, edit_key, &rk);
    uint8_t ghost[LEDGER_TXN_ID_SIZE];
    memset(ghost, 0xab, sizeof ghost);
    raw_key_t dangling = {.db = "loads_by_device", .add = true};
    il.txn_id = ghost;
    dangling.len = ledger_index_key(LEDGER_INDEX_DEVICE, &il, dangling.key);
    raw_edit(dir, edit_key, &dangling);
    assert_int_equal(ledger_store_open(dir, T_MAP_SIZE, &store), 0);
    sc = scrub(store);
    assert_int_equal(sc.index_bad, 1);
    /* A listing skips what names no load: it shows what the loads hold. */
    ledger_index_range_t d4 = {.kind = LEDGER_INDEX_DEVICE, .id = dev};
    assert_range(store, loads, N, &d4);

    /* A snapshot's way in: wipe, then every record appended; the entries come with the loads
     * (the dangling one is gone with the rest). The replicated records are dumped first. */
    dump_t dump = {.recs = calloc(4 * N, sizeof *dump.recs)};
    assert_non_null(dump.recs);
    assert_int_equal(ledger_store_txn_begin(store, NULL, false, &txn), 0);
    assert_int_equal(ledger_store_each_record(store, txn, dump_fn, &dump), 0);
    ledger_store_txn_abort(txn);
    assert_int_equal(dump.n, N); /* the loads only: no index entry is in a snapshot */
    assert_int_equal(ledger_store_txn_begin(store, NULL, true, &txn), 0);
    assert_int_equal(ledger_store_wipe(store, txn), 0);
    for (size_t i = 0; i < dump.n; i++) {
        const rec_t *r = &dump.recs[i];
        assert_int_equal(
            ledger_store_record_append(store, txn, r->db, r->key, r->klen, r->val, r->vlen), 0);
    }
    assert_int_equal(ledger_store_txn_commit(txn), 0);
    sc = scrub(store);
    assert_int_equal(sc.index_bad, 0);
    assert_int_equal(sc.index_checked, 4 * N);
    assert_range(store, loads, N, &all);
    assert_range(store, loads, N, &d4);
    for (size_t i = 0; i < dump.n; i++) {
        free(dump.recs[i].key);
        free(dump.recs[i].val);
    }
    free(dump.recs);
    ledger_store_close(&store);
    assert_int_equal(qctest_dir_remove(dir), 0);
}

typedef struct moves {
    ledger_transfer_t t[16];
    size_t n;
} moves_t;

static int move_add(void *arg, const ledger_transfer_t *t)
{
    moves_t *m = arg;
    assert_true(m->n < 16);
    m->t[m->n++] = *t;
    return 0;
}

static size_t moves_of(ledger_store_t *store, const char *account, uint64_t since_ms,
                       const ledger_index_move_t *after, moves_t *out)
{
    MDB_txn *txn = NULL;
    out->n = 0;
    assert_int_equal(ledger_store_txn_begin(store, NULL, false, &txn), 0);
    assert_int_equal(ledger_store_each_move(store, txn, account, since_ms, after, move_add, out),
                     0);
    ledger_store_txn_abort(txn);
    return out->n;
}

/* Transfers bring the movements of both their accounts, in statement order (time, txn id,
 * kind), from a window's start or after a cursor; the scrub checks them; a store without them
 * gets them at open. */
static void test_index_of_movements(void **state)
{
    (void)state;
    char dir[QCTEST_PATH_MAX];
    assert_int_equal(qctest_dir_new("qc-index", dir), 0);
    ledger_store_t *store = NULL;
    assert_int_equal(ledger_store_open(dir, T_MAP_SIZE, &store), 0);
    /* alice: a deposit at 10, then two loads' reserves at 20 (txn 0x02.. and 0x01..: the txn
     * id orders equal times) and the compensation of one at 30; bob a deposit at 15. */
    struct {
        uint8_t txn;
        Qcledger__TransferKind kind;
        const char *debit, *credit;
        uint64_t time_ms;
    } add[] = {
        {9, QCLEDGER__TRANSFER_KIND__TRANSFER_DEPOSIT, "FUNDING:156", "alice", 10},
        {2, QCLEDGER__TRANSFER_KIND__TRANSFER_RESERVE, "alice", "HOLD:156", 20},
        {1, QCLEDGER__TRANSFER_KIND__TRANSFER_RESERVE, "alice", "HOLD:156", 20},
        {1, QCLEDGER__TRANSFER_KIND__TRANSFER_COMPENSATE, "HOLD:156", "alice", 30},
        {8, QCLEDGER__TRANSFER_KIND__TRANSFER_DEPOSIT, "FUNDING:156", "bob", 15},
    };
    enum { ADDS = sizeof add / sizeof add[0] };
    MDB_txn *txn = NULL;
    assert_int_equal(ledger_store_txn_begin(store, NULL, true, &txn), 0);
    for (size_t i = 0; i < ADDS; i++) {
        ledger_transfer_t t = {
            .kind = add[i].kind, .amount = 5, .currency = 156, .time_ms = add[i].time_ms};
        memset(t.txn_id, add[i].txn, sizeof t.txn_id);
        snprintf(t.debit, sizeof t.debit, "%s", add[i].debit);
        snprintf(t.credit, sizeof t.credit, "%s", add[i].credit);
        assert_int_equal(ledger_store_transfer_add(store, txn, &t), 0);
    }
    assert_int_equal(ledger_store_txn_commit(txn), 0);
    moves_t mv;
    assert_int_equal(moves_of(store, "alice", 0, NULL, &mv), 4);
    assert_int_equal(mv.t[0].time_ms, 10);
    assert_int_equal(mv.t[1].txn_id[0], 1); /* at 20: txn 01.. before 02.. */
    assert_int_equal(mv.t[2].txn_id[0], 2);
    assert_int_equal(mv.t[3].kind, QCLEDGER__TRANSFER_KIND__TRANSFER_COMPENSATE);
    assert_int_equal(moves_of(store, "bob", 0, NULL, &mv), 1);
    assert_int_equal(moves_of(store, "HOLD:156", 0, NULL, &mv), 3);
    assert_int_equal(moves_of(store, "ali", 0, NULL, &mv), 0); /* a prefix is another account */
    assert_int_equal(moves_of(store, "alice", 20, NULL, &mv), 3);
    ledger_index_move_t after = {.time_ms = 20, .kind = QCLEDGER__TRANSFER_KIND__TRANSFER_RESERVE};
    memset(after.txn_id, 1, sizeof after.txn_id);
    assert_int_equal(moves_of(store, "alice", 0, &after, &mv), 2);
    assert_int_equal(mv.t[0].txn_id[0], 2);
    assert_int_equal(moves_of(store, "alice", 25, &after, &mv), 1); /* the later of both */
    ledger_store_scrub_t sc = scrub(store);
    assert_int_equal(sc.index_bad, 0);
    assert_int_equal(sc.index_checked, 3 * ADDS); /* each transfer, then its two entries */
    ledger_store_close(&store);
    /* Made before the indexes: built at open. */
    raw_edit(dir, drop_indexes, NULL);
    assert_int_equal(ledger_store_open(dir, T_MAP_SIZE, &store), 0);
    assert_int_equal(moves_of(store, "alice", 0, NULL, &mv), 4);
    assert_int_equal(scrub(store).index_bad, 0);
    ledger_store_close(&store);
    /* bob's entry gone: the scrub names his transfer. */
    raw_key_t rk = {.db = "transfers_by_account"};
    ledger_index_move_t bob = {.time_ms = 15, .kind = QCLEDGER__TRANSFER_KIND__TRANSFER_DEPOSIT};
    memset(bob.txn_id, 8, sizeof bob.txn_id);
    rk.len = ledger_index_move_key("bob", &bob, rk.key);
    raw_edit(dir, edit_key, &rk);
    assert_int_equal(ledger_store_open(dir, T_MAP_SIZE, &store), 0);
    assert_int_equal(moves_of(store, "bob", 0, NULL, &mv), 0);
    assert_int_equal(scrub(store).index_bad, 1);
    ledger_store_close(&store);
    assert_int_equal(qctest_dir_remove(dir), 0);
}

static int count_read(void *arg, const ledger_load_t *l)
{
    (void)l;
    (*(size_t *)arg)++;
    return 0;
}

/* One device's walk on a shard of T_MANY_LOADS loads reads that device's loads only (the
 * callback sees every load the walk read), where the walk of the whole shard reads them all. */
static void test_index_reads_only_matching(void **state)
{
    (void)state;
    char dir[QCTEST_PATH_MAX];
    assert_int_equal(qctest_dir_new("qc-index", dir), 0);
    ledger_store_t *store = NULL;
    assert_int_equal(ledger_store_open(dir, T_MAP_SIZE, &store), 0);
    rng_state = 3;
    MDB_txn *txn = NULL;
    size_t of_dev7 = 0;
    for (int i = 0; i < T_MANY_LOADS; i++) {
        if (i % T_COMMIT_EVERY == 0)
            assert_int_equal(ledger_store_txn_begin(store, NULL, true, &txn), 0);
        model_load_t m = {.device = (int)(rng() % T_MANY_DEVICES),
                          .account = i % 10,
                          .created_ms = 100000 + (uint64_t)i};
        random_txn(m.txn_id);
        of_dev7 += m.device == 7;
        put(store, txn, &m, QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
        if (i % T_COMMIT_EVERY == T_COMMIT_EVERY - 1 || i == T_MANY_LOADS - 1)
            assert_int_equal(ledger_store_txn_commit(txn), 0);
    }
    assert_true(of_dev7 > 0);
    size_t read = 0;
    assert_int_equal(ledger_store_txn_begin(store, NULL, false, &txn), 0);
    ledger_index_range_t r = {.kind = LEDGER_INDEX_DEVICE, .id = "dev-7"};
    assert_int_equal(ledger_store_each_load_in(store, txn, &r, count_read, &read), 0);
    assert_int_equal(read, of_dev7);
    size_t whole = 0;
    assert_int_equal(ledger_store_each_load(store, txn, count_read, &whole), 0);
    assert_int_equal(whole, T_MANY_LOADS);
    ledger_store_txn_abort(txn);
    print_message("device dev-7: %zu loads read of %d\n", read, T_MANY_LOADS);
    ledger_store_close(&store);
    assert_int_equal(qctest_dir_remove(dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_index_follows_the_load),
        cmocka_unit_test(test_index_after_random_ops),
        cmocka_unit_test(test_index_built_checked_restored),
        cmocka_unit_test(test_index_reads_only_matching),
        cmocka_unit_test(test_index_of_movements),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
