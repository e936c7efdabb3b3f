/* test_audit_relay.c - qc-audit relaying a real qc-ledger's outbox: events arrive once, the
 * outbox drains, a backlog built while audit is down drains afterwards, a crash between commit
 * and ack duplicates nothing, and `show` verifies a load's signatures from the log alone. */
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
#include "audit_proc.h"
#include "audit_store.h"
#include "audit_verify.h"
#include "ledger_proc.h"
#include "ledger_testkit.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "proto_shard.h"
#include "qc_error.h"
#include "qctest_proc.h"
#include "qctest_http.h"
#include "qctest_port.h"

/* Port i of the test's range (qc_test_ports in CMakeLists.txt). */
static qctest_ports_t ports;
#define T_PORT(i) qctest_port(&ports, (i))
#define T_LEDGER_PORT T_PORT(0) /* searched upwards in the range */
#define T_AUDIT_PORT T_PORT(40)
#define T_DRAIN_MS 20000
#define T_OUT_MAX (256 * 1024)
#define T_SOURCE_METRIC "qc_audit_relay_events_total{source=\"ledger-0\"}"

static const char *g_audit_bin, *g_ledger_bin;

typedef struct fixture {
    lp_t lp;
    ap_t ap;
    char key_path[LP_PATH_MAX + 16];
    const char *extra[12];
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    lp_t *lp = &f->lp;
    assert_int_equal(lp_setup(lp, g_ledger_bin, T_LEDGER_PORT), 0);
    assert_int_equal(ap_setup(&f->ap, g_audit_bin, T_AUDIT_PORT), 0);
    /* lp_setup picks a port in the ledger's range; these tests use the audit range. */
    int port = ap_pick_port(T_LEDGER_PORT, f->ap.port);
    assert_int_not_equal(port, f->ap.http_port);
    lp->port = port;
    snprintf(lp->endpoint, sizeof lp->endpoint, "tcp://127.0.0.1:%d", port);
    proto_rpc_client_destroy(&lp->gw);
    proto_rpc_client_destroy(&lp->op);
    lp->gw = lp_client(lp, &lp->gateway);
    lp->op = lp_client(lp, &lp->admin);
    assert_non_null(lp->gw);
    assert_non_null(lp->op);
    assert_int_equal(lp_start(lp, NULL, 0, NULL), 0);
    /* Audit calls the ledger with a service key of its allow-list (the "gateway" one). */
    snprintf(f->key_path, sizeof f->key_path, "%s/gateway.key", lp->dir);
    const char *extra[] = {
        "--curve-key",         f->key_path,   "--ledger", lp->endpoint, "--ledger-key",
        lp->server.public_z85, "--batch-max", "8",        NULL};
    memcpy(f->extra, extra, sizeof extra);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    ap_teardown(&f->ap);
    lp_teardown(&f->lp);
    free(f);
    return 0;
}

/* The ledger's outbox depth (from "check"), or -1. */
static int64_t outbox_depth(lp_t *lp)
{
    proto_rpc_reply_t *r = NULL;
    Qcledger__CheckRequest req = QCLEDGER__CHECK_REQUEST__INIT;
    if (lp_call(lp->op, "check", &req.base, &r) != 0) {
        proto_rpc_reply_destroy(&r);
        return -1;
    }
    Qcledger__CheckReply *c = qcledger__check_reply__unpack(NULL, r->body_len, r->body);
    proto_rpc_reply_destroy(&r);
    if (c == NULL)
        return -1;
    int64_t d = (int64_t)c->outbox_depth;
    qcledger__check_reply__free_unpacked(c, NULL);
    return d;
}

/* Waits until the outbox is empty; fails the test after T_DRAIN_MS. */
static void wait_drained(fixture_t *f)
{
    for (int waited = 0; waited < T_DRAIN_MS; waited += 20) {
        if (outbox_depth(&f->lp) == 0)
            return;
        qctest_sleep_ms(20);
    }
    fail_msg("outbox still holds %lld events", (long long)outbox_depth(&f->lp));
}

static void deposits(fixture_t *f, int n)
{
    for (int i = 0; i < n; i++)
        assert_int_equal(lp_deposit(&f->lp, "alice", 100), 0);
}

/* A device-signed request that carries the device certificate, as real devices send it. */
static void request_with_cert(EVP_PKEY *key, const tk_load_t *l, const uint8_t *cert,
                              size_t cert_len, uint8_t **out, size_t *out_len)
{
    uint8_t *plain = NULL;
    size_t plain_len = 0;
    tk_request(key, l, &plain, &plain_len);
    proto_envelope_t *env = NULL;
    assert_int_equal(proto_envelope_open(plain, plain_len, &env), 0);
    size_t body_len = 0;
    const uint8_t *body = proto_envelope_body(env, &body_len);
    assert_int_equal(proto_envelope_sign(PROTO_TYPE_LOAD_REQUEST, body, body_len, key, 1, cert,
                                         cert_len, out, out_len),
                     0);
    proto_envelope_destroy(&env);
    free(plain);
}

/* Enrolls a device on alice, reserves and settles one load; returns its txn id. */
static void one_load(fixture_t *f, uint8_t txn_id[16])
{
    lp_t *lp = &f->lp;
    EVP_PKEY *dev = qctest_key_new();
    uint8_t *cert = NULL;
    size_t cert_len = 0;
    qctest_cert_self_der(dev, "dev-audit-1", &cert, &cert_len);
    assert_int_equal(lp_enroll(lp, "alice", cert, cert_len), 0);
    tk_load_t l = {.device_id = "dev-audit-1", .account_id = "alice", .amount = 300};
    tk_txn_id(l.txn_id);
    memcpy(txn_id, l.txn_id, 16);
    uint8_t *req = NULL, *allow = NULL, *rep = NULL;
    size_t req_len = 0, allow_len = 0, rep_len = 0;
    request_with_cert(dev, &l, cert, cert_len, &req, &req_len);
    assert_int_equal(lp_reserve(lp, req, req_len, &allow, &allow_len), 0);
    assert_non_null(allow);
    tk_report(dev, &l, 1, QUANCUN__REPORT_STATUS__REPORT_APPLIED, allow, allow_len, &rep, &rep_len);
    Qcledger__SettleRequest sr = QCLEDGER__SETTLE_REQUEST__INIT;
    sr.txn_id.data = l.txn_id;
    sr.txn_id.len = 16;
    sr.report.data = rep;
    sr.report.len = rep_len;
    sr.verdict = QUANCUN__REPORT_STATUS__REPORT_APPLIED;
    assert_int_equal(lp_call(lp->gw, "settle", &sr.base, NULL), 0);
    free(req);
    free(allow);
    free(rep);
    free(cert);
    EVP_PKEY_free(dev);
}

static void test_relay(void **state)
{
    fixture_t *f = *state;
    lp_t *lp = &f->lp;
    ap_t *ap = &f->ap;
    /* 1. Live: 1 account, 5 deposits, enrol + reserve + settle = 9 events. */
    assert_int_equal(ap_start(ap, NULL, 0, f->extra), 0);
    assert_int_equal(lp_open_account(lp, "alice", TK_CURRENCY, 0), 0);
    deposits(f, 5);
    uint8_t txn[16];
    one_load(f, txn);
    wait_drained(f);
    /* opened, 5 deposits, enrolled, reserved, allowed (the bank's allow, signed after the
     * debit), confirmed */
    assert_int_equal(qctest_metric(ap->http_port, T_SOURCE_METRIC), 10);
    /* The ack's reply (and so the gauge) may still be on its way when check sees 0. */
    int64_t lag = -1;
    for (int waited = 0; waited < T_DRAIN_MS && lag != 0; waited += 20) {
        lag = qctest_metric(ap->http_port, "qc_audit_relay_lag{source=\"ledger-0\"}");
        if (lag != 0)
            qctest_sleep_ms(20);
    }
    assert_int_equal(lag, 0);
    assert_int_equal(ap_stop(ap, SIGTERM), 0);

    /* 2. Backlog while audit is down: nothing is lost, it drains on return. */
    deposits(f, 20);
    assert_int_equal(outbox_depth(lp), 20);
    assert_int_equal(ap_start(ap, NULL, 0, f->extra), 0);
    wait_drained(f);
    assert_int_equal(qctest_metric(ap->http_port, T_SOURCE_METRIC), 20);
    assert_int_equal(ap_stop(ap, SIGTERM), 0);

    /* 3. Killed between its commit and the ack: the ledger keeps the events, audit does not
     *    append them twice when it comes back. */
    deposits(f, 10);
    /* It may die before it answers /healthz: do not wait for that. */
    assert_int_equal(ap_spawn(ap, "audit.after_commit_before_ack", 0, f->extra), 0);
    int st = ap_wait_exit(ap, 10000);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    assert_int_equal(outbox_depth(lp), 10);
    assert_int_equal(ap_start(ap, NULL, 0, f->extra), 0);
    wait_drained(f);
    /* Only the 2 events after the first batch of 8 were new to this process. */
    assert_int_equal(qctest_metric(ap->http_port, T_SOURCE_METRIC), 2);
    assert_int_equal(ap_stop(ap, SIGTERM), 0);

    /* The log: 40 events, seqs 1..40, ledger seqs 1..40 each once, chain intact. */
    char data[AP_PATH_MAX];
    ap_path(ap, "data", data);
    audit_verify_report_t r;
    assert_int_equal(audit_verify_dir(data, NULL, &r), 0);
    assert_int_equal(r.entries, 40);
    audit_store_t *store = NULL;
    assert_int_equal(audit_store_open(data, AUDIT_STORE_RDONLY, 0, &store), 0);
    uint64_t hwm = 0, seq = 0;
    assert_int_equal(audit_store_hwm(store, "ledger-0", &hwm), 0);
    assert_int_equal(hwm, 40);
    for (uint64_t i = 1; i <= 40; i++) {
        assert_int_equal(audit_store_dedupe_get(store, "ledger-0", i, &seq), 0);
        assert_int_equal(seq, i);
    }
    uint64_t seqs[8];
    size_t n = 0;
    assert_int_equal(audit_store_txn_seqs(store, txn, 16, seqs, 8, &n), 0);
    assert_int_equal(n, 3); /* load.reserved, load.allowed, load.confirmed */
    audit_store_destroy(&store);

    /* The load's history, every signature checked from the log alone. */
    char hex[33], allow_pem[LP_PATH_MAX + 16];
    for (int i = 0; i < 16; i++)
        snprintf(hex + 2 * i, 3, "%02x", txn[i]);
    snprintf(allow_pem, sizeof allow_pem, "%s/allow.pem", lp->dir);
    char *out = malloc(T_OUT_MAX);
    const char *show[] = {"qc-audit", "show", "--dir", data, "--allow-cert", allow_pem, hex, NULL};
    int rc = ap_run_cli(ap, show, out, T_OUT_MAX);
    if (rc != 0) {
        fprintf(stderr, "show exited %d:\n%s", rc, out);
        free(out);
        fail();
    }
    assert_non_null(strstr(out, "load.reserved"));
    assert_non_null(strstr(out, "load.allowed"));
    assert_non_null(strstr(out, "load.confirmed"));
    assert_non_null(strstr(out, "request  signature ok"));
    assert_non_null(strstr(out, "allow    signature ok, names this request"));
    assert_non_null(strstr(out, "report   signature ok, by the device, names this allow"));
    assert_null(strstr(out, "NOT VERIFIED"));
    /* Another allow key: the allows are refused, and show says so. */
    snprintf(allow_pem, sizeof allow_pem, "%s/other.pem", lp->dir);
    EVP_PKEY *other = qctest_key_new();
    qctest_write_pubkey(allow_pem, other);
    EVP_PKEY_free(other);
    rc = ap_run_cli(ap, show, out, T_OUT_MAX);
    char *bad = strstr(out, "allow    NOT VERIFIED");
    free(out);
    assert_int_equal(rc, 1);
    assert_non_null(bad);
}

/* Copies file name from src's dir to dst's dir (same name). */
/* Copies the file from to the file to (appended when append). */
static void copy_path(const char *from, const char *to, bool append)
{
    FILE *in = fopen(from, "r"), *out = fopen(to, append ? "a" : "w");
    assert_non_null(in);
    assert_non_null(out);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    assert_int_equal(fclose(out), 0);
}

static void copy_file(const lp_t *src, const lp_t *dst, const char *name, bool append)
{
    char a[LP_PATH_MAX + 64], b[LP_PATH_MAX + 64];
    snprintf(a, sizeof a, "%s/%s", src->dir, name);
    snprintf(b, sizeof b, "%s/%s", dst->dir, name);
    copy_path(a, b, append);
}

/* A ledger restored from an older copy hands out outbox seqs the log already holds for other
 * events (issue 21). The relay must not ack (delete) them in silence: it raises the alarm
 * (health, metric, log line) and keeps them in the outbox. */
static void test_relay_rewound_shard_alarms(void **state)
{
    fixture_t *f = *state;
    lp_t *lp = &f->lp;
    ap_t *ap = &f->ap;
    assert_int_equal(ap_start(ap, NULL, 0, f->extra), 0);
    assert_int_equal(lp_open_account(lp, "alice", TK_CURRENCY, 0), 0);
    deposits(f, 2);
    wait_drained(f);
    /* The copy, taken while the ledger is stopped. */
    char data[LP_PATH_MAX + 32], copy[LP_PATH_MAX + 32];
    snprintf(data, sizeof data, "%s/data/data.mdb", lp->dir);
    snprintf(copy, sizeof copy, "%s/data.mdb.copy", lp->dir);
    assert_int_equal(lp_stop(lp, SIGTERM) & 0x7f, 0);
    copy_path(data, copy, false);
    assert_int_equal(lp_start(lp, NULL, 0, NULL), 0);
    deposits(f, 3);
    wait_drained(f);
    char resp[QCTEST_HTTP_MAX];
    assert_int_equal(qctest_http(ap->http_port, "GET", "/healthz", resp, sizeof resp), 200);
    /* Lost: restored from the copy; one new deposit takes a seq the log holds. */
    assert_int_equal(lp_stop(lp, SIGTERM) & 0x7f, 0);
    copy_path(copy, data, false);
    assert_int_equal(lp_start(lp, NULL, 0, NULL), 0);
    assert_int_equal(lp_deposit(lp, "alice", 7), 0);
    int status = 0;
    for (int waited = 0; waited < T_DRAIN_MS; waited += 100) {
        status = qctest_http(ap->http_port, "GET", "/healthz", resp, sizeof resp);
        if (status == 503)
            break;
        qctest_sleep_ms(100);
    }
    assert_int_equal(status, 503);
    assert_non_null(strstr(qctest_http_body(resp), "behind what the audit log holds"));
    assert_int_equal(qctest_metric(ap->http_port, "qc_audit_relay_rewound{source=\"ledger-0\"}"),
                     1);
    /* Not acked, not deleted: the event waits for the shard to be brought forward. */
    assert_true(outbox_depth(lp) >= 1);
    assert_int_equal(ap_stop(ap, SIGTERM), 0);
}

/* The first "acct-N" that lives on shard of 2. */
static void account_on(uint32_t shard, char *out, size_t cap)
{
    for (int i = 0;; i++) {
        snprintf(out, cap, "acct-%d", i);
        if (proto_shard_of(out, 2) == shard)
            return;
    }
}

/* Two shards of one ledger (same server key, as in a cluster), events made on both in
 * turn: each arrives once under its own source, both outboxes drain, seqs interleave. */
static void test_relay_two_shards(void **state)
{
    fixture_t *f = *state;
    lp_t *lp0 = &f->lp;
    lp_t *lp1 = calloc(1, sizeof *lp1);
    assert_non_null(lp1);
    assert_int_equal(lp_setup(lp1, g_ledger_bin, T_LEDGER_PORT), 0);
    /* Shard 1 speaks with shard 0's server key and admits its callers too. */
    copy_file(lp0, lp1, "server.key", false);
    lp1->server = lp0->server;
    copy_file(lp0, lp1, "allow.keys", true);
    copy_file(lp0, lp1, "admin.keys", true);
    int port = ap_pick_port(lp0->port + 1, f->ap.port);
    assert_int_not_equal(port, f->ap.http_port);
    lp1->port = port;
    snprintf(lp1->endpoint, sizeof lp1->endpoint, "tcp://127.0.0.1:%d", port);
    proto_rpc_client_destroy(&lp1->gw);
    proto_rpc_client_destroy(&lp1->op);
    lp1->gw = lp_client(lp1, &lp0->gateway);
    lp1->op = lp_client(lp1, &lp0->admin);
    lp1->admin = lp0->admin;
    /* Shard 0 is already running as 0 of 1: restart it as 0 of 2 on fresh data. */
    lp_stop(lp0, SIGKILL);
    char cmd[2 * LP_PATH_MAX + 64];
    snprintf(cmd, sizeof cmd, "rm -rf '%s/data' && mkdir '%s/data'", lp0->dir, lp0->dir);
    assert_int_equal(system(cmd), 0);
    const char *as0[] = {"--shard", "0", "--shard-count", "2", NULL};
    const char *as1[] = {"--shard", "1", "--shard-count", "2", NULL};
    assert_int_equal(lp_start(lp0, NULL, 0, as0), 0);
    assert_int_equal(lp_start(lp1, NULL, 0, as1), 0);
    char ledgers[2 * 64 + 2];
    snprintf(ledgers, sizeof ledgers, "%s;%s", lp0->endpoint, lp1->endpoint);
    f->extra[3] = ledgers;
    assert_int_equal(ap_start(&f->ap, NULL, 0, f->extra), 0);

    char a0[32], a1[32];
    account_on(0, a0, sizeof a0);
    account_on(1, a1, sizeof a1);
    assert_int_equal(lp_open_account(lp0, a0, TK_CURRENCY, 0), 0);
    assert_int_equal(lp_open_account(lp1, a1, TK_CURRENCY, 0), 0);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(lp_deposit(lp0, a0, 100), 0);
        assert_int_equal(lp_deposit(lp1, a1, 100), 0);
    }
    for (int waited = 0; waited < T_DRAIN_MS; waited += 20) {
        if (outbox_depth(lp0) == 0 && outbox_depth(lp1) == 0)
            break;
        qctest_sleep_ms(20);
    }
    assert_int_equal(outbox_depth(lp0), 0);
    assert_int_equal(outbox_depth(lp1), 0);
    assert_int_equal(ap_stop(&f->ap, SIGTERM), 0);

    char data[AP_PATH_MAX];
    ap_path(&f->ap, "data", data);
    audit_verify_report_t r;
    assert_int_equal(audit_verify_dir(data, NULL, &r), 0);
    assert_int_equal(r.entries, 22);
    audit_store_t *store = NULL;
    assert_int_equal(audit_store_open(data, AUDIT_STORE_RDONLY, 0, &store), 0);
    uint64_t hwm0 = 0, hwm1 = 0, seq = 0;
    assert_int_equal(audit_store_hwm(store, "ledger-0", &hwm0), 0);
    assert_int_equal(audit_store_hwm(store, "ledger-1", &hwm1), 0);
    assert_int_equal(hwm0, 11);
    assert_int_equal(hwm1, 11);
    bool seen[23] = {false};
    for (uint64_t i = 1; i <= 11; i++) {
        assert_int_equal(audit_store_dedupe_get(store, "ledger-0", i, &seq), 0);
        assert_true(seq >= 1 && seq <= 22 && !seen[seq]);
        seen[seq] = true;
        assert_int_equal(audit_store_dedupe_get(store, "ledger-1", i, &seq), 0);
        assert_true(seq >= 1 && seq <= 22 && !seen[seq]);
        seen[seq] = true;
    }
    audit_store_destroy(&store);
    lp_teardown(lp1);
    free(lp1);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s PATH-TO-qc-audit PATH-TO-qc-ledger\n", argv[0]);
        return 2;
    }
    g_audit_bin = argv[1];
    ports = qctest_ports(18020, 80);
    g_ledger_bin = argv[2];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_relay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relay_two_shards, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relay_rewound_shard_alarms, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
