/* test_qcctl.c - the operator CLI against a real qc-ledger: every verb, --json, exit codes,
 * and `qcctl check` failing on a balance corrupted behind the ledger's back. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "ops_time.h"
#include "ledger_proc.h"
#include "ledger_store.h"
#include "ledger_testkit.h"
#include "proto_decode.h"
#include "proto_shard.h"
#include "qc_error.h"
#include "qctest_port.h"

/* Port i of the test's range (qc_test_ports in CMakeLists.txt). */
static qctest_ports_t ports;
#define T_PORT(i) qctest_port(&ports, (i))
#define T_OUT_MAX 16384

static const char *ledger_bin, *qcctl_bin;
static char out[T_OUT_MAX];

/* Runs qcctl with args (a shell-safe string) and the test's config; returns its exit
 * status and leaves its stdout in out. */
static int qcctl(lp_t *lp, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int qcctl(lp_t *lp, const char *fmt, ...)
{
    char args[1024], cmd[4096], outp[LP_PATH_MAX + 16];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(outp, sizeof outp, "%s/qcctl.out", lp->dir);
    snprintf(cmd, sizeof cmd, "%s --config %s/qcctl.conf %s > %s 2>>%s/qcctl.err", qcctl_bin,
             lp->dir, args, outp, lp->dir);
    int status = system(cmd);
    FILE *f = fopen(outp, "r");
    size_t n = f != NULL ? fread(out, 1, sizeof out - 1, f) : 0;
    out[n] = '\0';
    if (f != NULL)
        fclose(f);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* A ledger started on port, and a qcctl.conf for it in its directory. */
static lp_t *ledger_with_qcctl(int port)
{
    lp_t *lp = calloc(1, sizeof *lp);
    assert_non_null(lp);
    assert_int_equal(lp_setup(lp, ledger_bin, port), 0);
    assert_int_equal(lp_start(lp, NULL, 0, NULL), 0);
    char path[LP_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/qcctl.conf", lp->dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "ledger_endpoints = %s\nledger_public_key = %s\ncurve_key = %s/admin.key\n",
            lp->endpoint, lp->server.public_z85, lp->dir);
    fclose(f);
    return lp;
}

static void test_qcctl_verbs(void **state)
{
    (void)state;
    lp_t *lp = ledger_with_qcctl(T_PORT(0));
    char path[LP_PATH_MAX + 32];

    assert_int_equal(qcctl(lp, "account open alice --currency 156 --load-max 50.00"), 0);
    assert_non_null(strstr(out, "alice"));
    assert_non_null(strstr(out, "per load 0.00..50.00"));
    /* Amounts in yuan as the wallet shows them; JSON carries fen. */
    assert_int_equal(qcctl(lp, "--json account deposit alice 70.00"), 0);
    assert_non_null(strstr(out, "\"balance\":7000"));
    assert_int_equal(qcctl(lp, "--json --minor account deposit alice 5"), 0);
    assert_non_null(strstr(out, "\"balance\":7005"));
    assert_int_equal(qcctl(lp, "account show alice"), 0);
    assert_non_null(strstr(out, "balance   70.05\n"));
    assert_int_equal(qcctl(lp, "--minor account show alice"), 0);
    assert_non_null(strstr(out, "balance   7005 fen\n"));
    assert_int_equal(qcctl(lp, "account show nobody"), 1);
    assert_int_equal(qcctl(lp, "account deposit alice -5"), 2);
    /* Refused before anything is sent: more than 2 decimals, a decimal in fen, overflow. */
    assert_int_equal(qcctl(lp, "account deposit alice 1.234"), 2);
    assert_int_equal(qcctl(lp, "--minor account deposit alice 1.5"), 2);
    assert_int_equal(qcctl(lp, "account deposit alice 92233720368547758.08"), 2);
    assert_int_equal(qcctl(lp, "--minor account deposit alice 9223372036854775808"), 2);
    assert_int_equal(qcctl(lp, "account open bob --load-max 1.001"), 2);
    assert_int_equal(qcctl(lp, "--json account show alice"), 0);
    assert_non_null(strstr(out, "\"balance\":7005"));
    assert_int_equal(qcctl(lp, "--json account freeze alice"), 0);
    assert_non_null(strstr(out, "\"status\":\"frozen\""));
    assert_int_equal(qcctl(lp, "--json account unfreeze alice"), 0);
    assert_non_null(strstr(out, "\"status\":\"open\""));

    EVP_PKEY *dev = qctest_key_new();
    snprintf(path, sizeof path, "%s/dev.pem", lp->dir);
    X509 *dev_cert = qctest_cert_self(dev, "dev-q");
    qctest_write_cert(path, dev_cert);
    X509_free(dev_cert);
    assert_int_equal(qcctl(lp, "device enroll %s --account alice --wallet-cap 90.00", path), 0);
    assert_non_null(strstr(out, "wallet cap 90.00\n"));
    assert_int_equal(qcctl(lp, "--json device show dev-q"), 0);
    assert_non_null(strstr(out, "\"status\":\"active\""));
    assert_non_null(strstr(out, "\"wallet_cap\":9000"));

    /* A load reserved through the gateway's key, shown by txn id. */
    tk_load_t l = {.device_id = "dev-q", .account_id = "alice", .amount = 1500};
    tk_txn_id(l.txn_id);
    uint8_t *req = NULL, *allow = NULL;
    size_t req_len = 0, allow_len = 0;
    tk_request(dev, &l, &req, &req_len);
    assert_int_equal(lp_reserve(lp, req, req_len, &allow, &allow_len), 0);
    assert_non_null(allow);
    char hex[33];
    for (int i = 0; i < 16; i++)
        snprintf(hex + 2 * i, 3, "%02x", l.txn_id[i]);
    assert_int_equal(qcctl(lp, "load show %s", hex), 0);
    assert_non_null(strstr(out, "RESERVED"));
    assert_non_null(strstr(out, "amount    15.00 (currency"));
    assert_int_equal(qcctl(lp, "--json load show %s", hex), 0);
    assert_non_null(strstr(out, "\"state\":\"RESERVED\""));
    assert_int_equal(qcctl(lp, "load show 00000000000000000000000000000000"), 1);

    assert_int_equal(qcctl(lp, "device revoke dev-q"), 0);
    assert_non_null(strstr(out, "revoked"));

    assert_int_equal(qcctl(lp, "check"), 0);
    assert_non_null(strstr(out, "\"ok\":true}"));
    assert_non_null(strstr(out, "\"reserved_sum\":1500"));

    /* Corrupt a balance while the ledger is down; check must fail after the restart. */
    assert_int_equal(lp_stop(lp, SIGTERM), 0);
    snprintf(path, sizeof path, "%s/data", lp->dir);
    ledger_store_t *store = NULL;
    assert_int_equal(ledger_store_open(path, 256ull << 20, &store), 0);
    MDB_txn *txn = NULL;
    ledger_account_t a;
    assert_int_equal(ledger_store_txn_begin(store, NULL, true, &txn), 0);
    assert_int_equal(ledger_store_account_get(store, txn, "alice", &a), 0);
    a.balance += 100;
    assert_int_equal(ledger_store_account_put(store, txn, &a), 0);
    assert_int_equal(ledger_store_txn_commit(txn), 0);
    ledger_store_close(&store);
    assert_int_equal(lp_start(lp, NULL, 0, NULL), 0);
    assert_int_equal(qcctl(lp, "check"), 1);
    assert_non_null(strstr(out, "\"ok\":false}"));
    assert_non_null(strstr(out, "sum to 100"));

    /* A shard that does not answer: exit 3. */
    assert_int_equal(lp_stop(lp, SIGTERM), 0);
    assert_int_equal(qcctl(lp, "--timeout-ms 300 check"), 3);

    free(req);
    free(allow);
    EVP_PKEY_free(dev);
    lp_teardown(lp);
    free(lp);
}

/* Two shards: qcctl routes each account to the shard proto_shard_of() names, each ledger
 * refuses the other's accounts, and check covers both. */
static void test_qcctl_two_shards(void **state)
{
    (void)state;
    lp_t *lp[2];
    char keyfile[4 * LP_PATH_MAX + 64], path[LP_PATH_MAX + 32];
    for (int i = 0; i < 2; i++) {
        lp[i] = calloc(1, sizeof *lp[i]);
        assert_int_equal(lp_setup(lp[i], ledger_bin, T_PORT(10 + i * 5)), 0);
    }
    /* One ledger key and one operator key for both shards, as qcctl expects. */
    snprintf(keyfile, sizeof keyfile, "cp %s/server.key %s/server.key && cp %s/admin.keys %s/",
             lp[0]->dir, lp[1]->dir, lp[0]->dir, lp[1]->dir);
    assert_int_equal(system(keyfile), 0);
    lp[1]->server = lp[0]->server;
    lp[1]->admin = lp[0]->admin;
    proto_rpc_client_destroy(&lp[1]->gw);
    proto_rpc_client_destroy(&lp[1]->op);
    lp[1]->gw = lp_client(lp[1], &lp[1]->gateway);
    lp[1]->op = lp_client(lp[1], &lp[1]->admin);
    for (int i = 0; i < 2; i++) {
        char shard[8];
        snprintf(shard, sizeof shard, "%d", i);
        const char *extra[] = {"--shard", shard, "--shard-count", "2", NULL};
        assert_int_equal(lp_start(lp[i], NULL, 0, extra), 0);
    }
    snprintf(path, sizeof path, "%s/qcctl.conf", lp[0]->dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "ledger_endpoints = %s;%s\nledger_public_key = %s\ncurve_key = %s/admin.key\n",
            lp[0]->endpoint, lp[1]->endpoint, lp[0]->server.public_z85, lp[0]->dir);
    fclose(f);
    char id[2][32];
    for (int s = 0; s < 2; s++) {
        int n = 0;
        do
            snprintf(id[s], sizeof id[s], "acct-%d", n++);
        while ((int)proto_shard_of(id[s], 2) != s);
        assert_int_equal(qcctl(lp[0], "account open %s", id[s]), 0);
        assert_int_equal(qcctl(lp[0], "--minor --json account deposit %s 1234", id[s]), 0);
        assert_non_null(strstr(out, "\"balance\":1234"));
    }
    assert_int_equal(qcctl(lp[0], "check"), 0);
    assert_non_null(strstr(out, "\"shard\":1,\"ok\":true"));
    assert_non_null(strstr(out, "\"accounts\":4")); /* one customer + HOLD, FLOAT, FUNDING */
    /* Asked directly, shard 0 refuses an account of shard 1. */
    Qcledger__OpenAccountRequest m = QCLEDGER__OPEN_ACCOUNT_REQUEST__INIT;
    m.account_id = id[1];
    m.currency = TK_CURRENCY;
    assert_int_equal(lp_call(lp[0]->op, "open_account", &m.base, NULL), QC_ESHARD);
    for (int i = 0; i < 2; i++) {
        lp_teardown(lp[i]);
        free(lp[i]);
    }
}

/* load list (filters, paging by cursor, --json) and account statement (movements with the
 * running balance) against a real ledger: five loads of one device, each request settling the
 * one before (counter + 1). */
static void test_qcctl_list_and_statement(void **state)
{
    (void)state;
    lp_t *lp = ledger_with_qcctl(T_PORT(25));
    char path[LP_PATH_MAX + 32];
    assert_int_equal(qcctl(lp, "account open carol"), 0);
    assert_int_equal(qcctl(lp, "account deposit carol 1000.00"), 0);
    EVP_PKEY *dev = qctest_key_new();
    snprintf(path, sizeof path, "%s/dev.pem", lp->dir);
    X509 *dev_cert = qctest_cert_self(dev, "dev-l");
    qctest_write_cert(path, dev_cert);
    X509_free(dev_cert);
    assert_int_equal(qcctl(lp, "device enroll %s --account carol", path), 0);
    enum { LOADS = 5 };
    char hex[LOADS][33];
    for (int n = 0; n < LOADS; n++) {
        tk_load_t l = {.device_id = "dev-l",
                       .account_id = "carol",
                       .amount = 100 + n,
                       .balance_before = 0,
                       .counter = (uint64_t)n};
        tk_txn_id(l.txn_id);
        for (int i = 0; i < 16; i++)
            snprintf(hex[n] + 2 * i, 3, "%02x", l.txn_id[i]);
        uint8_t *req = NULL, *allow = NULL;
        size_t req_len = 0, allow_len = 0;
        tk_request(dev, &l, &req, &req_len);
        assert_int_equal(lp_reserve(lp, req, req_len, &allow, &allow_len), 0);
        free(req);
        free(allow);
    }
    /* Every load, then the filters. */
    assert_int_equal(qcctl(lp, "load list"), 0);
    for (int n = 0; n < LOADS; n++)
        assert_non_null(strstr(out, hex[n]));
    assert_non_null(strstr(out, "(5 loads)"));
    assert_non_null(strstr(out, " 1.04 "));
    assert_int_equal(qcctl(lp, "--json load list --state RESERVED"), 0);
    assert_non_null(strstr(out, "\"count\":1,\"next\":null"));
    assert_non_null(strstr(out, hex[LOADS - 1]));
    assert_int_equal(qcctl(lp, "--json load list --state confirmed --device dev-l"), 0);
    assert_non_null(strstr(out, "\"count\":4,"));
    assert_int_equal(qcctl(lp, "--json load list --device nobody"), 0);
    assert_non_null(strstr(out, "\"count\":0,"));
    assert_int_equal(qcctl(lp, "--json load list --account carol --since 2020-01-01"), 0);
    assert_non_null(strstr(out, "\"count\":5,"));
    assert_int_equal(qcctl(lp, "--json load list --since 2000-01-01 --until 2000-01-02T00:00Z"), 0);
    assert_non_null(strstr(out, "\"count\":0,"));
    assert_int_equal(qcctl(lp, "load list --state FOO"), 2);
    assert_int_equal(qcctl(lp, "load list --since yesterday"), 2);
    assert_int_equal(qcctl(lp, "load list --limit 0"), 2);
    /* Paging: 2, then the rest after the cursor; together every load once. */
    assert_int_equal(qcctl(lp, "--json load list --limit 2"), 0);
    assert_non_null(strstr(out, "\"count\":2,"));
    char *nx = strstr(out, "\"next\":\"");
    assert_non_null(nx);
    char cursor[64];
    assert_int_equal(sscanf(nx + 8, "%63[^\"]", cursor), 1);
    char first[T_OUT_MAX];
    snprintf(first, sizeof first, "%s", out);
    assert_int_equal(qcctl(lp, "--json load list --after %s --limit 10", cursor), 0);
    assert_non_null(strstr(out, "\"count\":3,\"next\":null"));
    for (int n = 0; n < LOADS; n++)
        assert_true((strstr(first, hex[n]) != NULL) != (strstr(out, hex[n]) != NULL));
    assert_int_equal(qcctl(lp, "load list --after 0:zz"), 2);

    /* The statement: the deposit, five reserves; the running balance ends at the balance. */
    assert_int_equal(qcctl(lp, "--json --minor account statement carol"), 0);
    assert_non_null(strstr(out, "\"opening_balance\":0,"));
    assert_non_null(strstr(out, "\"kind\":\"DEPOSIT\",\"amount\":100000,\"balance\":100000"));
    assert_non_null(strstr(out, "\"kind\":\"RESERVE\",\"amount\":-100,"));
    assert_non_null(strstr(out, "\"closing_balance\":99490,\"count\":6,\"more\":false"));
    assert_non_null(strstr(out, "\"balance\":99490,\"opening_balance\""));
    assert_int_equal(qcctl(lp, "account statement carol --limit 2"), 0);
    assert_non_null(strstr(out, "+1000.00"));
    assert_non_null(strstr(out, "more after them"));
    assert_int_equal(
        qcctl(lp, "--json account statement carol --since 2000-01-01 --until 2000-01-02"), 0);
    assert_non_null(strstr(out, "\"opening_balance\":0,\"lines\":[],\"closing_balance\":0"));
    assert_int_equal(qcctl(lp, "account statement nobody"), 1);
    assert_int_equal(qcctl(lp, "check"), 0);
    EVP_PKEY_free(dev);
    lp_teardown(lp);
    free(lp);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s PATH-TO-qc-ledger PATH-TO-qcctl\n", argv[0]);
        return 2;
    }
    ledger_bin = argv[1];
    ports = qctest_ports(17340, 40);
    qcctl_bin = argv[2];
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qcctl_verbs),
        cmocka_unit_test(test_qcctl_two_shards),
        cmocka_unit_test(test_qcctl_list_and_statement),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
