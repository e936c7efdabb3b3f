/* test_audit_process.c - qc-audit over real CURVE RPC: append from two sources with duplicates,
 * killed -9 mid-batch and restarted (no gap, no duplicate, chain verifies), operator verbs. */
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
#include <zmq.h>

#include "audit.pb-c.h"
#include "audit_proc.h"
#include "audit_store.h"
#include "audit_verify.h"
#include "ledger_testkit.h"
#include "proto_decode.h"
#include "qc_error.h"
#include "qctest_http.h"
#include "qctest_port.h"

/* Port i of the test's range (qc_test_ports in CMakeLists.txt). */
static qctest_ports_t ports;
#define T_PORT(i) qctest_port(&ports, (i))
#define T_CRASH_EVENTS 300
#define T_ASYNC_MS 3000
#define T_OUT_MAX (256 * 1024)

static const char *g_bin;

static int setup(void **state)
{
    ap_t *ap = calloc(1, sizeof *ap);
    assert_non_null(ap);
    assert_int_equal(ap_setup(ap, g_bin, T_PORT(0)), 0);
    /* verify needs a checkpoint key even when there is no checkpoint. */
    EVP_PKEY *k = qctest_key_new();
    char p[AP_PATH_MAX];
    ap_path(ap, "checkpoint.pem", p);
    qctest_write_pubkey(p, k);
    EVP_PKEY_free(k);
    *state = ap;
    return 0;
}

static int teardown(void **state)
{
    ap_t *ap = *state;
    ap_teardown(ap);
    free(ap);
    return 0;
}

/* Opens the stopped service's files and checks: entries == expect, seqs 1..expect, intact. */
static void check_log(ap_t *ap, uint64_t expect)
{
    char data[AP_PATH_MAX];
    ap_path(ap, "data", data);
    audit_verify_report_t r;
    int rc = audit_verify_dir(data, NULL, &r);
    if (rc != 0)
        fail_msg("verify: %s", r.why);
    assert_int_equal(r.entries, expect);
    assert_int_equal(r.last_seq, expect);
}

static void test_append_two_sources(void **state)
{
    ap_t *ap = *state;
    assert_int_equal(ap_start(ap, NULL, 0, NULL), 0);
    uint8_t txn[16];
    tk_txn_id(txn);
    uint64_t expect = 1, seq = 0, dups = 0;
    bool dup = false;
    for (uint64_t i = 1; i <= 30; i++) {
        char payload[32];
        snprintf(payload, sizeof payload, "evidence %llu", (unsigned long long)i);
        assert_int_equal(ap_append(ap, "gateway-0", i, "security.bad_device_signature", txn, 16,
                                   (const uint8_t *)payload, strlen(payload), &seq, &dup),
                         0);
        assert_false(dup);
        assert_int_equal(seq, expect++);
        assert_int_equal(
            ap_append(ap, "signer-0", i, "security.refused", NULL, 0, NULL, 0, &seq, &dup), 0);
        assert_false(dup);
        assert_int_equal(seq, expect++);
        if (i % 3 == 0) { /* a resend: answered with the seq it already holds */
            assert_int_equal(ap_append(ap, "gateway-0", i - 1, "security.bad_device_signature", txn,
                                       16, NULL, 0, &seq, &dup),
                             0);
            assert_true(dup);
            assert_int_equal(seq, 2 * (i - 1) - 1);
            dups++;
        }
    }
    /* Reserved sources, bad fields, another method. */
    assert_int_equal(ap_append(ap, "ledger-0", 1, "load.reserved", NULL, 0, NULL, 0, NULL, NULL),
                     QC_EDENIED);
    assert_int_equal(ap_append(ap, "audit", 1, "audit.checkpoint", NULL, 0, NULL, 0, NULL, NULL),
                     QC_EDENIED);
    assert_int_equal(ap_append(ap, "gateway-0", 0, "x", NULL, 0, NULL, 0, NULL, NULL), QC_EMISSING);
    assert_int_equal(ap_append(ap, "gateway 0", 1, "x", NULL, 0, NULL, 0, NULL, NULL), QC_EINVAL);
    assert_int_equal(ap_append(ap, "gateway-0", 99, "x", txn, 5, NULL, 0, NULL, NULL), QC_EINVAL);
    proto_rpc_reply_t *r = NULL;
    assert_int_equal(proto_rpc_client_call(ap->cli, "delete", NULL, 0, 3000, 0, &r), 0);
    assert_int_equal(r->code, QC_EMETHOD);
    proto_rpc_reply_destroy(&r);
    /* Metrics say the same. */
    assert_int_equal(qctest_metric(ap->http_port, "qc_audit_entries_appended_total"), 60);
    assert_int_equal(qctest_metric(ap->http_port, "qc_audit_dedupe_hits_total"), (int64_t)dups);
    /* A clean stop. */
    int st = ap_stop(ap, SIGTERM);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    check_log(ap, 60);

    /* The operator's verbs on the files. */
    char data[AP_PATH_MAX], pem[AP_PATH_MAX], hex[33];
    ap_path(ap, "data", data);
    ap_path(ap, "checkpoint.pem", pem);
    char *out = malloc(T_OUT_MAX);
    const char *verify[] = {"qc-audit", "verify", "--dir", data, "--cert", pem, NULL};
    assert_int_equal(ap_run_cli(ap, verify, out, T_OUT_MAX), 0);
    assert_non_null(strstr(out, "ok: 60 entries"));
    const char *exp[] = {"qc-audit", "export", "--dir", data, NULL};
    assert_int_equal(ap_run_cli(ap, exp, out, T_OUT_MAX), 0);
    size_t lines = 0;
    for (char *p = out; (p = strchr(p, '\n')) != NULL; p++)
        lines++;
    assert_int_equal(lines, 60);
    assert_non_null(strstr(out, "\"seq\":60,"));
    assert_non_null(strstr(out, "\"source\":\"signer-0\""));
    for (int i = 0; i < 16; i++)
        snprintf(hex + 2 * i, 3, "%02x", txn[i]);
    const char *show[] = {"qc-audit", "show", "--dir", data, hex, NULL};
    assert_int_equal(ap_run_cli(ap, show, out, T_OUT_MAX), 0);
    assert_non_null(strstr(out, "seq 59 "));
    assert_null(strstr(out, "seq 60 "));
    assert_non_null(strstr(out, "entry hash ok"));
    free(out);
}

typedef struct crash_state {
    int replied;      /* replies with code 0 */
    uint64_t *seq_of; /* seq answered for event i, 0 when none */
} crash_state_t;

static void crash_done(void *arg, void *tag, int code, proto_rpc_reply_t *reply)
{
    crash_state_t *cs = arg;
    size_t i = (size_t)(uintptr_t)tag;
    if (code == 0 && reply->code == 0) {
        Qcaudit__AppendReply *rep =
            qcaudit__append_reply__unpack(NULL, reply->body_len, reply->body);
        if (rep != NULL) {
            cs->seq_of[i] = rep->seq;
            cs->replied++;
            qcaudit__append_reply__free_unpacked(rep, NULL);
        }
    }
    proto_rpc_reply_destroy(&reply);
}

/* Sends events [from, to) of source asynchronously and processes replies until all finished
 * or, when kill_after > 0, until that many replies arrived: then kill -9 the service. */
static void send_events(ap_t *ap, const char *source, size_t from, size_t to, crash_state_t *cs,
                        int kill_after)
{
    for (size_t i = from; i < to; i++) {
        Qcaudit__AppendRequest m = QCAUDIT__APPEND_REQUEST__INIT;
        char payload[48];
        snprintf(payload, sizeof payload, "event %zu", i);
        m.source = (char *)source;
        m.source_seq = i + 1;
        m.type = "security.test";
        m.payload.data = (uint8_t *)payload;
        m.payload.len = strlen(payload);
        uint8_t *body = NULL;
        size_t len = 0;
        assert_int_equal(proto_pack(&m.base, &body, &len), 0);
        uint64_t id = 0;
        assert_int_equal(proto_rpc_client_send(ap->cli, "append", body, len, T_ASYNC_MS, 0,
                                               (void *)(uintptr_t)i, &id),
                         0);
        free(body);
    }
    bool killed = false;
    while (proto_rpc_client_inflight(ap->cli) > 0) {
        zmq_pollitem_t items[PROTO_RPC_ENDPOINTS_MAX];
        int n = proto_rpc_client_pollitems(ap->cli, items, PROTO_RPC_ENDPOINTS_MAX);
        int t = proto_rpc_client_next_timeout_ms(ap->cli);
        zmq_poll(items, n, t < 0 || t > 100 ? 100 : t);
        proto_rpc_client_process(ap->cli, crash_done, cs);
        if (kill_after > 0 && !killed && cs->replied >= kill_after) {
            ap_stop(ap, SIGKILL);
            killed = true;
        }
    }
}

/* Resends every event [0, n) synchronously (at least once) and checks what each holds. */
static void resend_all(ap_t *ap, const char *source, size_t n, crash_state_t *cs, uint64_t base)
{
    bool *seen = calloc(n + 1, sizeof *seen);
    for (size_t i = 0; i < n; i++) {
        uint64_t seq = 0;
        bool dup = false;
        assert_int_equal(
            ap_append(ap, source, i + 1, "security.test", NULL, 0, NULL, 0, &seq, &dup), 0);
        /* An acknowledged event is durable and keeps its seq. */
        if (cs->seq_of[i] != 0) {
            assert_true(dup);
            assert_int_equal(seq, cs->seq_of[i]);
        }
        assert_true(seq > base && seq <= base + n);
        assert_false(seen[seq - base]); /* no two events share a seq */
        seen[seq - base] = true;
    }
    free(seen);
}

static void test_kill9_mid_batch(void **state)
{
    ap_t *ap = *state;
    crash_state_t cs = {.seq_of = calloc(T_CRASH_EVENTS, sizeof(uint64_t))};
    /* 1. Exactly between a commit and its replies (the 4th batch). */
    assert_int_equal(ap_start(ap, "audit.append_after_commit_before_reply", 3, NULL), 0);
    send_events(ap, "gateway-0", 0, T_CRASH_EVENTS, &cs, 0);
    int st = ap_wait_exit(ap, 5000);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    assert_true(cs.replied < T_CRASH_EVENTS);
    assert_int_equal(ap_start(ap, NULL, 0, NULL), 0);
    resend_all(ap, "gateway-0", T_CRASH_EVENTS, &cs, 0);

    /* 2. kill -9 at an arbitrary moment under load, from another source. */
    memset(cs.seq_of, 0, T_CRASH_EVENTS * sizeof(uint64_t));
    cs.replied = 0;
    send_events(ap, "signer-0", 0, T_CRASH_EVENTS, &cs, T_CRASH_EVENTS / 3);
    assert_int_equal(ap_start(ap, NULL, 0, NULL), 0);
    resend_all(ap, "signer-0", T_CRASH_EVENTS, &cs, T_CRASH_EVENTS);
    assert_int_equal(ap_stop(ap, SIGTERM), 0);
    check_log(ap, 2 * T_CRASH_EVENTS);
    free(cs.seq_of);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PATH-TO-qc-audit\n", argv[0]);
        return 2;
    }
    g_bin = argv[1];
    ports = qctest_ports(18000, 20);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_append_two_sources, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill9_mid_batch, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
