/* test_ledger_outbox.c - the outbox with several audit consumers (witnesses): an event stays
 * until every configured consumer acked it, an unknown consumer changes nothing, and the op a
 * replica applies (ledger_fsm_batch_outbox_ack_by) carries everything apply reads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <raft.h>

#include "ledger_fsm.h"
#include "ledger_outbox.h"
#include "ledger_store.h"
#include "ledger_testkit.h"
#include "qc_error.h"
#include "qctest_fs.h"
#include "qctest_key.h"

#define T_MAP_SIZE (16ull << 20)
#define T_EVENTS 10

typedef struct fx {
    char dir[QCTEST_PATH_MAX];
    ledger_store_t *store;
} fx_t;

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_int_equal(qctest_dir_new("qc-ledger-outbox", f->dir), 0);
    assert_int_equal(ledger_store_open(f->dir, T_MAP_SIZE, &f->store), 0);
    MDB_txn *txn = NULL;
    assert_int_equal(ledger_store_txn_begin(f->store, NULL, true, &txn), 0);
    for (int i = 0; i < T_EVENTS; i++)
        assert_int_equal(ledger_store_outbox_append(f->store, txn, 0, "test.event", NULL,
                                                    (uint64_t)i, (const uint8_t *)"x", 1, NULL),
                         0);
    assert_int_equal(ledger_store_txn_commit(txn), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    ledger_store_close(&f->store);
    assert_int_equal(qctest_dir_remove(f->dir), 0);
    free(f);
    return 0;
}

/* Acks in its own committed transaction; returns the code. */
static int ack(fx_t *f, const ledger_outbox_t *ob, const char *consumer, uint64_t upto)
{
    MDB_txn *txn = NULL;
    assert_int_equal(ledger_store_txn_begin(f->store, NULL, true, &txn), 0);
    int rc = ledger_outbox_ack(ob, f->store, txn, consumer, upto);
    if (rc == 0)
        assert_int_equal(ledger_store_txn_commit(txn), 0);
    else
        ledger_store_txn_abort(txn);
    return rc;
}

/* The events still kept, and consumer's lag as an ack's reply gives it. */
static uint64_t depth(fx_t *f, const ledger_outbox_t *ob, const char *consumer, uint64_t *lag)
{
    MDB_txn *txn = NULL;
    assert_int_equal(ledger_store_txn_begin(f->store, NULL, false, &txn), 0);
    Qcledger__OutboxAckReply r = QCLEDGER__OUTBOX_ACK_REPLY__INIT;
    assert_int_equal(ledger_outbox_reply(ob, f->store, txn, consumer, &r), 0);
    ledger_store_txn_abort(txn);
    if (lag != NULL)
        *lag = r.lag;
    return r.depth;
}

static void test_every_consumer_must_ack(void **state)
{
    fx_t *f = *state;
    ledger_outbox_t *ob = NULL;
    assert_int_equal(ledger_outbox_new("audit-1,audit-2", &ob), 0);
    uint64_t lag = 0;
    assert_int_equal(ack(f, ob, "audit-1", 7), 0);
    /* audit-2 has acked nothing: everything stays. */
    assert_int_equal(depth(f, ob, "audit-1", &lag), T_EVENTS);
    assert_int_equal(lag, T_EVENTS - 7);
    assert_int_equal(depth(f, ob, "audit-2", &lag), T_EVENTS);
    assert_int_equal(lag, T_EVENTS);
    assert_int_equal(ack(f, ob, "audit-2", 4), 0);
    assert_int_equal(depth(f, ob, "audit-2", &lag), T_EVENTS - 4);
    assert_int_equal(lag, T_EVENTS - 4);
    /* A cursor never goes back: audit-1 restored from an older copy acks 2. */
    assert_int_equal(ack(f, ob, "audit-1", 2), 0);
    assert_int_equal(depth(f, ob, "audit-1", &lag), T_EVENTS - 4);
    assert_int_equal(lag, T_EVENTS - 7);
    assert_int_equal(ack(f, ob, "audit-2", T_EVENTS), 0);
    assert_int_equal(depth(f, ob, "audit-2", NULL), T_EVENTS - 7);
    assert_int_equal(ack(f, ob, "audit-1", T_EVENTS), 0);
    assert_int_equal(depth(f, ob, "audit-1", &lag), 0);
    assert_int_equal(lag, 0);
    ledger_outbox_destroy(&ob);
    assert_null(ob);
}

static void test_unknown_consumer_changes_nothing(void **state)
{
    fx_t *f = *state;
    ledger_outbox_t *ob = NULL;
    assert_int_equal(ledger_outbox_new("audit-1,audit-2", &ob), 0);
    assert_int_equal(ack(f, ob, "audit-3", T_EVENTS), QC_EDENIED);
    assert_int_equal(ack(f, ob, "", T_EVENTS), QC_EDENIED);
    assert_int_equal(ack(f, ob, NULL, T_EVENTS), QC_EDENIED);
    assert_int_equal(depth(f, ob, "audit-1", NULL), T_EVENTS);
    assert_false(ledger_outbox_known(ob, "audit-3"));
    assert_false(ledger_outbox_known(ob, NULL));
    assert_true(ledger_outbox_known(ob, "audit-2"));
    ledger_outbox_destroy(&ob);
}

/* Without the list, any ack deletes what it names, as before witnesses. */
static void test_one_anonymous_consumer(void **state)
{
    fx_t *f = *state;
    ledger_outbox_t *ob = NULL;
    assert_int_equal(ledger_outbox_new(NULL, &ob), 0);
    size_t n = 1;
    (void)ledger_outbox_consumers(ob, &n);
    assert_int_equal(n, 0);
    assert_true(ledger_outbox_known(ob, NULL));
    assert_int_equal(ack(f, ob, NULL, 3), 0);
    assert_int_equal(depth(f, ob, NULL, NULL), T_EVENTS - 3);
    assert_int_equal(ack(f, ob, "anyone", 5), 0);
    assert_int_equal(depth(f, ob, NULL, NULL), T_EVENTS - 5);
    ledger_outbox_destroy(&ob);
}

/* A consumer added to the list later starts at cursor 0: nothing it has not acked goes. */
static void test_added_consumer_holds_events(void **state)
{
    fx_t *f = *state;
    ledger_outbox_t *one = NULL, *two = NULL;
    assert_int_equal(ledger_outbox_new("audit-1", &one), 0);
    assert_int_equal(ledger_outbox_new("audit-1,audit-2", &two), 0);
    assert_int_equal(ack(f, one, "audit-1", 2), 0);
    assert_int_equal(depth(f, one, "audit-1", NULL), T_EVENTS - 2);
    assert_int_equal(ack(f, two, "audit-1", 6), 0);
    assert_int_equal(depth(f, two, "audit-1", NULL), T_EVENTS - 2);
    ledger_outbox_destroy(&one);
    ledger_outbox_destroy(&two);
}

static void test_bad_lists(void **state)
{
    (void)state;
    ledger_outbox_t *ob = NULL;
    assert_int_equal(ledger_outbox_new("audit-1,audit-1", &ob), QC_ECONFIG);
    assert_int_equal(ledger_outbox_new("audit-1,,audit-2", &ob), QC_ECONFIG);
    assert_int_equal(ledger_outbox_new("audit 1", &ob), QC_ECONFIG);
    assert_int_equal(ledger_outbox_new("a,b,c,d,e,f,g,h,i", &ob), QC_ECONFIG);
    assert_int_equal(ledger_outbox_new("a23456789012345678901234567890123", &ob), QC_ECONFIG);
    assert_null(ob);
    assert_int_equal(ledger_outbox_new("a,b,c,d,e,f,g,h", &ob), 0);
    ledger_outbox_destroy(&ob);
}

/* Applies an entry holding b's ops at index; returns the first op's code. */
static int fsm_apply(ledger_fsm_t *fsm, uint64_t index, ledger_fsm_batch_t *b)
{
    struct raft_buffer buf;
    assert_int_equal(ledger_fsm_batch_encode(b, &buf), 0);
    ledger_fsm_batch_destroy(&b);
    const ledger_fsm_result_t *res = NULL;
    assert_int_equal(ledger_fsm_apply(fsm, index, buf.base, buf.len, &res), 0);
    raft_free(buf.base);
    assert_non_null(res);
    assert_true(res->n_ops >= 1);
    return res->ops[0].code;
}

static uint64_t kept_events(ledger_store_t *store)
{
    MDB_txn *txn = NULL;
    uint64_t kept = 0;
    assert_int_equal(ledger_store_txn_begin(store, NULL, false, &txn), 0);
    assert_int_equal(ledger_store_outbox_depth(store, txn, &kept), 0);
    ledger_store_txn_abort(txn);
    return kept;
}

/* A replicated shard: the ack op carries the consumer and the leader's list, and an unknown
 * consumer is refused by a rule (the replica goes on), not as a local failure. */
static void test_replicated_ack(void **state)
{
    (void)state;
    char dir[QCTEST_PATH_MAX];
    assert_int_equal(qctest_dir_new("qc-ledger-outbox-fsm", dir), 0);
    EVP_PKEY *bank = qctest_key_new();
    ledger_fsm_config_t cfg = {
        .dir = dir, .map_size = T_MAP_SIZE, .allow_key = bank, .shard = 0, .shard_count = 1};
    ledger_fsm_t *fsm = NULL;
    assert_int_equal(ledger_fsm_new(&cfg, &fsm), 0);
    ledger_fsm_batch_t *b = NULL;
    assert_int_equal(ledger_fsm_batch_new(1000, &b), 0);
    for (int i = 0; i < 3; i++) {
        ledger_account_t spec = {.currency = TK_CURRENCY};
        snprintf(spec.id, sizeof spec.id, "acct-%d", i);
        assert_int_equal(ledger_fsm_batch_open_account(b, &spec), 0);
    }
    assert_int_equal(fsm_apply(fsm, 1, b), 0);
    ledger_store_t *store = ledger_fsm_store(fsm);
    MDB_txn *txn = NULL;
    uint64_t last = 0;
    assert_int_equal(ledger_store_txn_begin(store, NULL, false, &txn), 0);
    assert_int_equal(ledger_store_outbox_last(store, txn, &last), 0);
    ledger_store_txn_abort(txn);
    assert_true(last >= 3);
    const char *const list[] = {"audit-1", "audit-2"};
    assert_int_equal(ledger_fsm_batch_new(1001, &b), 0);
    assert_int_equal(ledger_fsm_batch_outbox_ack_by(b, last, "audit-9", list, 2), 0);
    assert_int_equal(fsm_apply(fsm, 2, b), QC_EDENIED);
    assert_int_equal(ledger_fsm_batch_new(1002, &b), 0);
    assert_int_equal(ledger_fsm_batch_outbox_ack_by(b, last, "audit-1", list, 2), 0);
    assert_int_equal(fsm_apply(fsm, 3, b), 0);
    assert_int_equal(kept_events(store), last); /* audit-2 has not acked */
    assert_int_equal(ledger_fsm_batch_new(1003, &b), 0);
    assert_int_equal(ledger_fsm_batch_outbox_ack_by(b, last, "audit-2", list, 2), 0);
    assert_int_equal(fsm_apply(fsm, 4, b), 0);
    assert_int_equal(kept_events(store), 0);
    ledger_fsm_destroy(&fsm);
    EVP_PKEY_free(bank);
    assert_int_equal(qctest_dir_remove(dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_every_consumer_must_ack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_consumer_changes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_anonymous_consumer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_added_consumer_holds_events, setup, teardown),
        cmocka_unit_test(test_bad_lists),
        cmocka_unit_test(test_replicated_ack),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
