/* test_ledger_query.c - `check` on a big shard does not stop its writes: the check runs on the
 * ledger's query thread in a read transaction of its own (ledger/ledger_query.h), so deposits
 * sent while it reads are committed and answered before it ends.
 *
 * The shard is made big behind the ledger's back (transfers written into its LMDB while it is
 * stopped, balanced so that the check finds nothing wrong), then one thread asks for the check
 * while the test deposits, one call after the other, until the check answers. Before the
 * query thread, every deposit sent during a check waited for the whole check.
 * Usage: test_ledger_query PATH-TO-qc-ledger [TRANSFERS] (default TEST_TRANSFERS). */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>

#include "ledger_proc.h"
#include "ledger_saga.h"
#include "ledger_store.h"
#include "ledger_testkit.h"
#include "ops_time.h"
#include "proto_decode.h"
#include "qc_error.h"
#include "qctest_port.h"

#define TEST_TRANSFERS 400000    /* a check of this takes seconds under ASan */
#define TEST_COMMIT_EVERY 50000  /* transfers per write transaction while filling */
#define TEST_CHECK_MS 120000     /* the check's call budget */
#define TEST_CHECK_MIN_MS 300    /* a shorter check proves nothing: the test says so */
#define TEST_DEPOSITS_MAX 100000 /* bound of the deposit loop */
#define TEST_ACCOUNT "big-account"

static qctest_ports_t ports;
static const char *ledger_bin;
static long transfers = TEST_TRANSFERS;

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

typedef struct check_call {
    lp_t *lp;
    atomic_bool sent, done;
    uint64_t t_sent_ms, t_done_ms;
    int code;
    bool ok;
} check_call_t;

static void *check_thread(void *arg)
{
    check_call_t *c = arg;
    proto_rpc_client_t *cli = lp_client(c->lp, &c->lp->admin);
    Qcledger__CheckRequest m = QCLEDGER__CHECK_REQUEST__INIT;
    uint8_t *body = NULL;
    size_t len = 0;
    assert_int_equal(proto_pack(&m.base, &body, &len), 0);
    proto_rpc_reply_t *r = NULL;
    c->t_sent_ms = ops_time_mono_ms();
    atomic_store(&c->sent, true);
    c->code =
        proto_rpc_client_call(cli, "check", body, len, TEST_CHECK_MS, PROTO_RPC_IDEMPOTENT, &r);
    c->t_done_ms = ops_time_mono_ms();
    if (c->code == 0)
        c->code = r->code;
    if (c->code == 0) {
        Qcledger__CheckReply *cr = qcledger__check_reply__unpack(NULL, r->body_len, r->body);
        c->ok = cr != NULL && cr->ok && cr->transfers >= (uint64_t)transfers;
        if (cr != NULL)
            qcledger__check_reply__free_unpacked(cr, NULL);
    }
    proto_rpc_reply_destroy(&r);
    free(body);
    proto_rpc_client_destroy(&cli);
    atomic_store(&c->done, true);
    return NULL;
}

/* Writes n deposits FUNDING:156 -> TEST_ACCOUNT straight into the stopped ledger's LMDB,
 * with both balances moved, as the saga would have. */
static void fill(lp_t *lp, long n)
{
    char path[LP_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/data", lp->dir);
    ledger_store_t *store = NULL;
    assert_int_equal(ledger_store_open(path, 1024ull << 20, &store), 0);
    char funding[LEDGER_ID_MAX + 1];
    ledger_system_account_id(QCLEDGER__ACCOUNT_KIND__KIND_FUNDING, TK_CURRENCY, funding);
    for (long done = 0; done < n;) {
        MDB_txn *txn = NULL;
        assert_int_equal(ledger_store_txn_begin(store, NULL, true, &txn), 0);
        long k = n - done < TEST_COMMIT_EVERY ? n - done : TEST_COMMIT_EVERY;
        for (long i = 0; i < k; i++) {
            ledger_transfer_t t = {.kind = QCLEDGER__TRANSFER_KIND__TRANSFER_DEPOSIT,
                                   .amount = 1,
                                   .currency = TK_CURRENCY,
                                   .time_ms = ops_time_wall_ms()};
            tk_txn_id(t.txn_id);
            snprintf(t.debit, sizeof t.debit, "%s", funding);
            snprintf(t.credit, sizeof t.credit, "%s", TEST_ACCOUNT);
            assert_int_equal(ledger_store_transfer_add(store, txn, &t), 0);
        }
        ledger_account_t a, f;
        assert_int_equal(ledger_store_account_get(store, txn, TEST_ACCOUNT, &a), 0);
        assert_int_equal(ledger_store_account_get(store, txn, funding, &f), 0);
        a.balance += k;
        f.balance -= k;
        assert_int_equal(ledger_store_account_put(store, txn, &a), 0);
        assert_int_equal(ledger_store_account_put(store, txn, &f), 0);
        assert_int_equal(ledger_store_txn_commit(txn), 0);
        done += k;
    }
    ledger_store_close(&store);
}

static void test_writes_during_check(void **state)
{
    (void)state;
    lp_t *lp = calloc(1, sizeof *lp);
    assert_non_null(lp);
    assert_int_equal(lp_setup(lp, ledger_bin, qctest_port(&ports, 0)), 0);
    assert_int_equal(lp_start(lp, NULL, 0, NULL), 0);
    assert_int_equal(lp_open_account(lp, TEST_ACCOUNT, TK_CURRENCY, 0), 0);
    assert_int_equal(lp_stop(lp, SIGTERM), 0);
    uint64_t t0 = ops_time_mono_ms();
    fill(lp, transfers);
    print_message("filled the shard with %ld transfers in %llu ms\n", transfers,
                  (unsigned long long)(ops_time_mono_ms() - t0));
    assert_int_equal(lp_start(lp, NULL, 0, NULL), 0);

    check_call_t c = {.lp = lp};
    atomic_init(&c.sent, false);
    atomic_init(&c.done, false);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, check_thread, &c), 0);
    while (!atomic_load(&c.sent))
        sleep_ms(1);
    /* Give the check time to reach the ledger and start reading. */
    sleep_ms(100);
    long during = 0, sent = 0;
    uint64_t worst_ms = 0;
    while (!atomic_load(&c.done) && sent < TEST_DEPOSITS_MAX) {
        uint64_t a = ops_time_mono_ms();
        assert_int_equal(lp_deposit(lp, TEST_ACCOUNT, 1), 0);
        uint64_t b = ops_time_mono_ms();
        sent++;
        if (b - a > worst_ms)
            worst_ms = b - a;
        if (!atomic_load(&c.done))
            during++; /* answered while the check was still reading */
    }
    assert_int_equal(pthread_join(th, NULL), 0);
    uint64_t check_ms = c.t_done_ms - c.t_sent_ms;
    print_message("check of %ld transfers: %llu ms; %ld deposits answered during it, the slowest "
                  "in %llu ms\n",
                  transfers, (unsigned long long)check_ms, during, (unsigned long long)worst_ms);
    assert_int_equal(c.code, 0);
    assert_true(c.ok);
    if (check_ms < TEST_CHECK_MIN_MS)
        print_message("the check took only %llu ms: too short to show anything on this machine\n",
                      (unsigned long long)check_ms);
    else {
        /* On the writer thread, no deposit sent after the check would be answered before it
         * ends, and each would wait for the rest of the check. */
        assert_true(during >= 5);
        assert_true(worst_ms < check_ms / 2);
    }
    assert_int_equal(lp_check(lp), 1);
    bool ok = false;
    assert_int_equal(lp_balance(lp, TEST_ACCOUNT, &ok), transfers + sent);
    assert_true(ok);
    lp_teardown(lp);
    free(lp);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PATH-TO-qc-ledger [TRANSFERS]\n", argv[0]);
        return 2;
    }
    ledger_bin = argv[1];
    if (argc > 2)
        transfers = strtol(argv[2], NULL, 10);
    if (transfers < 1)
        transfers = TEST_TRANSFERS;
    ports = qctest_ports(17560, 20);
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_writes_during_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
