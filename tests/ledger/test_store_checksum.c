/* test_store_checksum.c - a bit flipped below LMDB (which keeps no checksums) is caught on
 * read: an account's balance, an account's key, a load, an audit entry; the ledger's store
 * then says it is corrupt (its service stops writing), and an old store gets its checksums
 * from the upgrade (issue 21). The flips go through LMDB itself on a closed store, which is
 * what a flipped bit in data.mdb is to every reader. No process, no port. */
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

#include "audit_store.h"
#include "audit_verify.h"
#include "ledger_store.h"
#include "ops_metrics.h"
#include "qc_error.h"
#include "qctest_fs.h"
#include "qctest_lmdb.h"

#define T_MAP_SIZE (64ull << 20)
#define T_ENTRIES 20
#define T_FLIP_SEQ 7

/* Opens dir's environment raw, lets fn change database db in one write txn, commits. */
typedef void(raw_fn)(MDB_txn *txn, MDB_dbi dbi, void *arg);

typedef struct raw_db {
    const char *db;
    raw_fn *fn;
    void *arg;
} raw_db_t;

static int raw_db_run(MDB_txn *txn, void *arg)
{
    raw_db_t *r = arg;
    MDB_dbi dbi;
    int rc = mdb_dbi_open(txn, r->db, 0, &dbi);
    if (rc == 0)
        r->fn(txn, dbi, r->arg);
    return rc;
}

/* Opens dir's environment raw and lets fn change database db in one write txn. */
static void raw_edit(const char *dir, const char *db, raw_fn *fn, void *arg)
{
    raw_db_t r = {.db = db, .fn = fn, .arg = arg};
    assert_int_equal(qctest_lmdb_edit(dir, raw_db_run, &r), 0);
}

typedef struct flip {
    const void *key;
    size_t key_len;
    size_t offset; /* byte of the value to flip (from its start) */
    uint8_t mask;
    const void *new_key; /* when not NULL: move the value there (a flipped key) */
} flip_t;

static void flip_value(MDB_txn *txn, MDB_dbi dbi, void *arg)
{
    flip_t *f = arg;
    MDB_val k = {.mv_size = f->key_len, .mv_data = (void *)f->key}, v;
    assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
    uint8_t *copy = malloc(v.mv_size);
    assert_non_null(copy);
    memcpy(copy, v.mv_data, v.mv_size);
    MDB_val nv = {.mv_size = v.mv_size, .mv_data = copy};
    if (f->new_key != NULL) {
        assert_int_equal(mdb_del(txn, dbi, &k, NULL), 0);
        MDB_val nk = {.mv_size = f->key_len, .mv_data = (void *)f->new_key};
        assert_int_equal(mdb_put(txn, dbi, &nk, &nv, 0), 0);
    } else {
        assert_true(f->offset < v.mv_size);
        copy[f->offset] ^= f->mask;
        assert_int_equal(mdb_put(txn, dbi, &k, &nv, 0), 0);
    }
    free(copy);
}

/* Offset of the balance varint in a stored Account: after field 3's tag (0x18). */
static size_t balance_offset(const char *dir, const char *id)
{
    ledger_store_t *store = NULL;
    assert_int_equal(ledger_store_open(dir, T_MAP_SIZE, &store), 0);
    ledger_account_t a;
    MDB_txn *txn = NULL;
    assert_int_equal(ledger_store_txn_begin(store, NULL, false, &txn), 0);
    assert_int_equal(ledger_store_account_get(store, txn, id, &a), 0);
    ledger_store_txn_abort(txn);
    ledger_store_close(&store);
    Qcledger__Account m;
    ledger_store_account_view(&a, &m);
    uint8_t buf[256];
    size_t n = protobuf_c_message_pack(&m.base, buf);
    for (size_t i = 0; i + 1 < n; i++)
        if (buf[i] == 0x18)
            return i + 1;
    fail_msg("no balance field");
    return 0;
}

static void put_account(const char *dir, const char *id, int64_t balance)
{
    ledger_store_t *store = NULL;
    assert_int_equal(ledger_store_open(dir, T_MAP_SIZE, &store), 0);
    MDB_txn *txn = NULL;
    assert_int_equal(ledger_store_txn_begin(store, NULL, true, &txn), 0);
    ledger_account_t a;
    memset(&a, 0, sizeof a);
    snprintf(a.id, sizeof a.id, "%s", id);
    a.currency = 156;
    a.balance = balance;
    a.status = QCLEDGER__ACCOUNT_STATUS__ACCOUNT_OPEN;
    assert_int_equal(ledger_store_account_put(store, txn, &a), 0);
    assert_int_equal(ledger_store_txn_commit(txn), 0);
    ledger_store_close(&store);
}

static int count_account(void *arg, const ledger_account_t *a)
{
    (void)a;
    (*(int *)arg)++;
    return 0;
}

/* One bit of a balance: the record is refused (QC_ECORRUPT), the store says corrupt, the
 * counter moved; a sound record of the same store still reads. */
static void test_flipped_balance(void **state)
{
    (void)state;
    char dir[QCTEST_PATH_MAX];
    assert_int_equal(qctest_dir_new("qc-checksum", dir), 0);
    put_account(dir, "ACCT-A", 1000);
    put_account(dir, "ACCT-B", 2000);
    flip_t f = {.key = "ACCT-A", .key_len = 6, .offset = balance_offset(dir, "ACCT-A"), .mask = 1};
    raw_edit(dir, "accounts", flip_value, &f);

    ledger_store_t *store = NULL;
    assert_int_equal(ledger_store_open(dir, T_MAP_SIZE, &store), 0);
    ops_counter_t *corrupt = ops_counter("qc_ledger_corrupt_records_total", "");
    uint64_t before = ops_counter_value(corrupt);
    assert_false(ledger_store_corrupt(store));
    MDB_txn *txn = NULL;
    ledger_account_t a;
    assert_int_equal(ledger_store_txn_begin(store, NULL, false, &txn), 0);
    assert_int_equal(ledger_store_account_get(store, txn, "ACCT-B", &a), 0);
    assert_int_equal(a.balance, 2000);
    assert_int_equal(ledger_store_account_get(store, txn, "ACCT-A", &a), QC_ECORRUPT);
    int n = 0;
    assert_int_equal(ledger_store_each_account(store, txn, count_account, &n), QC_ECORRUPT);
    ledger_store_txn_abort(txn);
    assert_true(ledger_store_corrupt(store));
    assert_int_equal(ops_counter_value(corrupt), before + 2);
    ledger_store_close(&store);
    assert_int_equal(qctest_dir_remove(dir), 0);
}

/* One bit of an account's key: "ACCT-A" becomes "ACCT-@". The moved record no longer matches
 * the key it was summed under, so the walk (check, scrub, snapshot) refuses it. */
static void test_flipped_key(void **state)
{
    (void)state;
    char dir[QCTEST_PATH_MAX];
    assert_int_equal(qctest_dir_new("qc-checksum", dir), 0);
    put_account(dir, "ACCT-A", 1000);
    flip_t f = {.key = "ACCT-A", .key_len = 6, .new_key = "ACCT-@"};
    raw_edit(dir, "accounts", flip_value, &f);
    ledger_store_t *store = NULL;
    assert_int_equal(ledger_store_open(dir, T_MAP_SIZE, &store), 0);
    MDB_txn *txn = NULL;
    ledger_account_t a;
    assert_int_equal(ledger_store_txn_begin(store, NULL, false, &txn), 0);
    assert_int_equal(ledger_store_account_get(store, txn, "ACCT-A", &a), QC_ENOTFOUND);
    assert_int_equal(ledger_store_account_get(store, txn, "ACCT-@", &a), QC_ECORRUPT);
    int n = 0;
    assert_int_equal(ledger_store_each_account(store, txn, count_account, &n), QC_ECORRUPT);
    ledger_store_txn_abort(txn);
    assert_true(ledger_store_corrupt(store));
    ledger_store_close(&store);
    assert_int_equal(qctest_dir_remove(dir), 0);
}

static int strip_sum(MDB_txn *txn, void *arg)
{
    return qctest_lmdb_strip_tail(txn, arg, 4);
}

/* One bit of a load record (its amount, say): refused the same way. */
static void test_flipped_load(void **state)
{
    (void)state;
    char dir[QCTEST_PATH_MAX];
    assert_int_equal(qctest_dir_new("qc-checksum", dir), 0);
    ledger_store_t *store = NULL;
    assert_int_equal(ledger_store_open(dir, T_MAP_SIZE, &store), 0);
    ledger_load_t *l = calloc(1, sizeof *l);
    assert_non_null(l);
    memset(l->txn_id, 0x5a, sizeof l->txn_id);
    l->state = QUANCUN__LOAD_STATE__LOAD_RESERVED;
    l->amount = 500;
    l->currency = 156;
    snprintf(l->device_id, sizeof l->device_id, "DEV-1");
    snprintf(l->account_id, sizeof l->account_id, "ACCT-A");
    memset(l->request, 0x42, 64); /* stands for the signed request it answers */
    l->request_len = 64;
    MDB_txn *txn = NULL;
    assert_int_equal(ledger_store_txn_begin(store, NULL, true, &txn), 0);
    assert_int_equal(ledger_store_load_put(store, txn, l), 0);
    assert_int_equal(ledger_store_txn_commit(txn), 0);
    ledger_store_close(&store);
    flip_t f = {.key = l->txn_id, .key_len = sizeof l->txn_id, .offset = 10, .mask = 0x04};
    raw_edit(dir, "loads", flip_value, &f);
    assert_int_equal(ledger_store_open(dir, T_MAP_SIZE, &store), 0);
    assert_int_equal(ledger_store_txn_begin(store, NULL, false, &txn), 0);
    assert_int_equal(ledger_store_load_get(store, txn, l->txn_id, l), QC_ECORRUPT);
    ledger_store_txn_abort(txn);
    /* The scrub finds it too, on its own walk. */
    ledger_store_scrub_t *s = calloc(1, sizeof *s);
    assert_non_null(s);
    bool pass = false;
    assert_int_equal(ledger_store_scrub_step(store, s, 1000, &pass), 0);
    assert_true(pass);
    assert_int_equal(s->checked, 1);
    assert_int_equal(s->corrupt, 1);
    free(s);
    free(l);
    ledger_store_close(&store);
    assert_int_equal(qctest_dir_remove(dir), 0);
}

/* A store of format 1 (records without checksums) reads as corrupt; the upgrade adds them. */
static void test_upgrade(void **state)
{
    (void)state;
    char dir[QCTEST_PATH_MAX];
    assert_int_equal(qctest_dir_new("qc-checksum", dir), 0);
    put_account(dir, "ACCT-A", 1000);
    put_account(dir, "ACCT-B", 2000);
    assert_int_equal(qctest_lmdb_edit(dir, strip_sum, "accounts"), 0);
    uint64_t count = 0;
    assert_int_equal(ledger_store_add_checksums(dir, T_MAP_SIZE, &count), 0);
    assert_int_equal(count, 2);
    assert_int_equal(ledger_store_add_checksums(dir, T_MAP_SIZE, &count), 0);
    assert_int_equal(count, 0); /* a second run changes nothing */
    ledger_store_t *store = NULL;
    assert_int_equal(ledger_store_open(dir, T_MAP_SIZE, &store), 0);
    MDB_txn *txn = NULL;
    ledger_account_t a;
    assert_int_equal(ledger_store_txn_begin(store, NULL, false, &txn), 0);
    assert_int_equal(ledger_store_account_get(store, txn, "ACCT-A", &a), 0);
    assert_int_equal(a.balance, 1000);
    ledger_store_txn_abort(txn);
    assert_false(ledger_store_corrupt(store));
    ledger_store_close(&store);
    assert_int_equal(qctest_dir_remove(dir), 0);
}

/* One bit inside an audit entry: reading it is QC_ECORRUPT, and the start-up check of the
 * chain since the last checkpoint names it. */
static void test_flipped_audit_entry(void **state)
{
    (void)state;
    char dir[QCTEST_PATH_MAX];
    assert_int_equal(qctest_dir_new("qc-checksum-audit", dir), 0);
    audit_store_t *store = NULL;
    assert_int_equal(audit_store_open(dir, 0, T_MAP_SIZE, &store), 0);
    for (uint64_t i = 1; i <= T_ENTRIES; i++) {
        char payload[64];
        snprintf(payload, sizeof payload, "event %llu of the test", (unsigned long long)i);
        audit_event_t ev = {.source = "gateway-0",
                            .source_seq = i,
                            .type = "security.test",
                            .payload = (const uint8_t *)payload,
                            .payload_len = strlen(payload)};
        audit_append_result_t r;
        assert_int_equal(audit_store_append(store, &ev, 1, &r), 0);
    }
    audit_verify_report_t rep;
    assert_int_equal(audit_verify_tail(store, &rep), 0);
    assert_int_equal(rep.entries, T_ENTRIES);
    audit_store_destroy(&store);

    uint8_t key[8] = {0, 0, 0, 0, 0, 0, 0, T_FLIP_SEQ};
    flip_t f = {.key = key, .key_len = sizeof key, .offset = 40, .mask = 0x10};
    raw_edit(dir, "entries", flip_value, &f);

    assert_int_equal(audit_store_open(dir, 0, T_MAP_SIZE, &store), 0);
    uint8_t *rec = NULL;
    size_t len = 0;
    assert_int_equal(audit_store_get(store, T_FLIP_SEQ, &rec, &len), QC_ECORRUPT);
    assert_null(rec);
    assert_int_equal(audit_store_get(store, T_FLIP_SEQ + 1, &rec, &len), 0);
    free(rec);
    assert_int_not_equal(audit_verify_tail(store, &rep), 0);
    assert_int_equal(rep.break_seq, T_FLIP_SEQ);
    audit_store_destroy(&store);
    assert_int_equal(qctest_dir_remove(dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flipped_balance),     cmocka_unit_test(test_flipped_key),
        cmocka_unit_test(test_flipped_load),        cmocka_unit_test(test_upgrade),
        cmocka_unit_test(test_flipped_audit_entry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
