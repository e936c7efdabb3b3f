/* test_ledger_process.c - qc-ledger as a real process over real CURVE RPC: methods and
 * roles, concurrency without overdraft, its own deadline timer, and crashes (SIGKILL in
 * the middle of a group commit, and between commit and reply) followed by a restart. */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <zmq.h>

#include <openssl/x509.h>

#include "ops_time.h"
#include "ledger_proc.h"
#include "ledger_testkit.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "qc_error.h"
#include "qctest_http.h"
#include "qctest_port.h"

/* Port i of the test's range (qc_test_ports in CMakeLists.txt). */
static qctest_ports_t ports;
#define T_PORT(i) qctest_port(&ports, (i))
#define T_LEDGER_DEADLINE_MS 30000 /* qc-ledger's default deadline_ms */
#define T_ASYNC_MS 10000
#define T_DEVICES_MAX 64

static const char *ledger_bin;

typedef struct dev {
    char id[32];
    EVP_PKEY *key;
    uint8_t *cert;
    size_t cert_len;
    uint64_t counter;
} dev_t_;

static void dev_make(dev_t_ *d, const char *id)
{
    snprintf(d->id, sizeof d->id, "%s", id);
    d->key = qctest_key_new();
    qctest_cert_self_der(d->key, d->id, &d->cert, &d->cert_len);
    d->counter = 0;
}

static void dev_free(dev_t_ *d)
{
    EVP_PKEY_free(d->key);
    free(d->cert);
}

/* A signed request for device d, packed as a ReserveRequest body, and the allow the ledger
 * replied with (after reserve()). */
typedef struct rsv {
    tk_load_t l;
    uint8_t *req, *allow, *body;
    size_t req_len, allow_len, body_len;
} rsv_t;

static void rsv_make(dev_t_ *d, const char *account, int64_t amount, rsv_t *r)
{
    memset(r, 0, sizeof *r);
    r->l.device_id = d->id;
    r->l.account_id = account;
    r->l.amount = amount;
    r->l.counter = d->counter;
    tk_txn_id(r->l.txn_id);
    tk_request(d->key, &r->l, &r->req, &r->req_len);
    Qcledger__ReserveRequest m = QCLEDGER__RESERVE_REQUEST__INIT;
    m.request.data = r->req;
    m.request.len = r->req_len;
    assert_int_equal(proto_pack(&m.base, &r->body, &r->body_len), 0);
}

static void rsv_free(rsv_t *r)
{
    free(r->req);
    free(r->allow);
    free(r->body);
}

/* Reserves r with client cli; returns the code and, on success, the reply in *out. The first
 * allow replied becomes r->allow; every later reply must carry the same bytes. */
static int reserve(proto_rpc_client_t *cli, rsv_t *r, Qcledger__ReserveReply **out)
{
    proto_rpc_reply_t *rep = NULL;
    int rc = proto_rpc_client_call(cli, "reserve", r->body, r->body_len, 5000, PROTO_RPC_IDEMPOTENT,
                                   &rep);
    if (rc != 0)
        return rc;
    rc = rep->code;
    if (rc == 0) {
        Qcledger__ReserveReply *rr =
            qcledger__reserve_reply__unpack(NULL, rep->body_len, rep->body);
        assert_non_null(rr);
        if (rr->allow.len > 0 && r->allow == NULL) {
            r->allow = malloc(rr->allow.len);
            memcpy(r->allow, rr->allow.data, rr->allow.len);
            r->allow_len = rr->allow.len;
        } else if (rr->allow.len > 0) {
            assert_int_equal(rr->allow.len, r->allow_len);
            assert_memory_equal(rr->allow.data, r->allow, r->allow_len);
        }
        if (out != NULL)
            *out = rr;
        else
            qcledger__reserve_reply__free_unpacked(rr, NULL);
    }
    proto_rpc_reply_destroy(&rep);
    return rc;
}

/* The allow verifies with the bank's key and says what the request says, with the ledger's
 * deadline. */
static void assert_allow_for(lp_t *lp, const rsv_t *r, uint64_t deadline_ms)
{
    proto_envelope_t *env = NULL;
    assert_int_equal(proto_envelope_open(r->allow, r->allow_len, &env), 0);
    assert_int_equal(proto_envelope_verify(env, PROTO_TYPE_LOAD_ALLOW, lp->bank), 0);
    size_t len = 0;
    const uint8_t *body = proto_envelope_body(env, &len);
    Quancun__LoadAllow *a = NULL;
    assert_int_equal(proto_decode_load_allow(body, len, &a), 0);
    assert_memory_equal(a->txn_id.data, r->l.txn_id, 16);
    assert_string_equal(a->device_id, r->l.device_id);
    assert_string_equal(a->account_id, r->l.account_id);
    assert_int_equal(a->amount, r->l.amount);
    assert_int_equal(a->counter, r->l.counter);
    assert_int_equal(a->deadline_ms - a->host_time_ms, deadline_ms);
    quancun__load_allow__free_unpacked(a, NULL);
    proto_envelope_destroy(&env);
}

/* The stored record of a load: its state, and whether it holds an allow. */
static Quancun__LoadState get_load(lp_t *lp, const uint8_t *txn_id, size_t *allow_len)
{
    Qcledger__GetLoadRequest m = QCLEDGER__GET_LOAD_REQUEST__INIT;
    m.txn_id.data = (uint8_t *)txn_id;
    m.txn_id.len = 16;
    proto_rpc_reply_t *rep = NULL;
    assert_int_equal(lp_call(lp->op, "get_load", &m.base, &rep), 0);
    Qcledger__LoadReply *lr = qcledger__load_reply__unpack(NULL, rep->body_len, rep->body);
    proto_rpc_reply_destroy(&rep);
    assert_non_null(lr);
    Quancun__LoadState st = lr->load->state;
    *allow_len = lr->load->allow.len;
    qcledger__load_reply__free_unpacked(lr, NULL);
    return st;
}

static Quancun__LoadState get_state(lp_t *lp, const uint8_t *txn_id, char *reason, size_t cap)
{
    Qcledger__GetLoadRequest m = QCLEDGER__GET_LOAD_REQUEST__INIT;
    m.txn_id.data = (uint8_t *)txn_id;
    m.txn_id.len = 16;
    proto_rpc_reply_t *rep = NULL;
    int rc = lp_call(lp->op, "get_load", &m.base, &rep);
    if (rc != 0) {
        proto_rpc_reply_destroy(&rep);
        return rc == QC_ENOTFOUND ? QUANCUN__LOAD_STATE__LOAD_NONE : (Quancun__LoadState)-1;
    }
    Qcledger__LoadReply *lr = qcledger__load_reply__unpack(NULL, rep->body_len, rep->body);
    proto_rpc_reply_destroy(&rep);
    assert_non_null(lr);
    Quancun__LoadState st = lr->load->state;
    if (reason != NULL)
        snprintf(reason, cap, "%s", lr->load->reason);
    qcledger__load_reply__free_unpacked(lr, NULL);
    return st;
}

static lp_t *start_with(int port_offset, const char *const *extra)
{
    lp_t *lp = calloc(1, sizeof *lp);
    assert_int_equal(lp_setup(lp, ledger_bin, T_PORT(port_offset)), 0);
    assert_int_equal(lp_start(lp, NULL, 0, extra), 0);
    return lp;
}

static lp_t *start(int port_offset)
{
    return start_with(port_offset, NULL);
}

static void finish(lp_t *lp)
{
    lp_teardown(lp);
    free(lp);
}

/* ------------------------------------------------------------ methods and roles */

static void test_methods_and_roles(void **state)
{
    (void)state;
    char http_port[16];
    int hp = lp_free_port(T_PORT(39));
    snprintf(http_port, sizeof http_port, "%d", hp);
    const char *extra[] = {"--http-port", http_port, NULL};
    lp_t *lp = start_with(0, extra);
    dev_t_ d;
    dev_make(&d, "dev-1");
    assert_int_equal(lp_open_account(lp, "alice", TK_CURRENCY, 0), 0);
    assert_int_equal(lp_deposit(lp, "alice", 10000), 0);
    assert_int_equal(lp_enroll(lp, "alice", d.cert, d.cert_len), 0);
    /* The gateway key may not administer; the admin key may not reserve. */
    Qcledger__FreezeRequest fr = QCLEDGER__FREEZE_REQUEST__INIT;
    fr.account_id = "alice";
    assert_int_equal(lp_call(lp->gw, "freeze", &fr.base, NULL), QC_EDENIED);
    assert_int_equal(lp_call(lp->gw, "no_such_method", NULL, NULL), QC_EMETHOD);
    rsv_t r;
    rsv_make(&d, "alice", 700, &r);
    assert_int_equal(reserve(lp->op, &r, NULL), QC_EDENIED);
    assert_int_equal(atomic_load(&lp->signed_allows), 0);
    /* Reserve: the ledger debits, has the bank sign the allow, stores it, replies with it. */
    Qcledger__ReserveReply *rr = NULL;
    assert_int_equal(reserve(lp->gw, &r, &rr), 0);
    assert_int_equal(rr->load->state, QUANCUN__LOAD_STATE__LOAD_RESERVED);
    assert_int_equal(rr->load->allow.len, r.allow_len);
    assert_memory_equal(rr->load->allow.data, r.allow, r.allow_len);
    qcledger__reserve_reply__free_unpacked(rr, NULL);
    assert_allow_for(lp, &r, T_LEDGER_DEADLINE_MS);
    assert_int_equal(atomic_load(&lp->signed_allows), 1);
    /* Retries get the stored allow byte for byte (reserve() asserts it), and the bank signs
     * nothing more. */
    for (int i = 0; i < 3; i++)
        assert_int_equal(reserve(lp->gw, &r, NULL), 0);
    assert_int_equal(atomic_load(&lp->signed_allows), 1);
    bool ok = false;
    assert_int_equal(lp_balance(lp, "alice", &ok), 10000 - 700);
    assert_true(ok);
    /* Settle with the device's APPLIED report. */
    uint8_t *rep = NULL;
    size_t rep_len = 0;
    tk_report(d.key, &r.l, 1, QUANCUN__REPORT_STATUS__REPORT_APPLIED, r.allow, r.allow_len, &rep,
              &rep_len);
    Qcledger__SettleRequest sr = QCLEDGER__SETTLE_REQUEST__INIT;
    sr.txn_id.data = r.l.txn_id;
    sr.txn_id.len = 16;
    sr.report.data = rep;
    sr.report.len = rep_len;
    sr.verdict = QUANCUN__REPORT_STATUS__REPORT_APPLIED;
    proto_rpc_reply_t *reply = NULL;
    assert_int_equal(lp_call(lp->gw, "settle", &sr.base, &reply), 0);
    Qcledger__SettleReply *lr = qcledger__settle_reply__unpack(NULL, reply->body_len, reply->body);
    assert_non_null(lr);
    assert_int_equal(lr->load->state, QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
    /* The outcome the bank signed after the settlement comes with it. */
    proto_envelope_t *oenv = NULL;
    assert_int_equal(proto_envelope_open(lr->outcome.data, lr->outcome.len, &oenv), 0);
    assert_int_equal(proto_envelope_verify(oenv, PROTO_TYPE_LOAD_OUTCOME, lp->bank), 0);
    size_t olen = 0;
    const uint8_t *obody = proto_envelope_body(oenv, &olen);
    Quancun__LoadOutcome *oc = NULL;
    assert_int_equal(proto_decode_load_outcome(obody, olen, &oc), 0);
    assert_int_equal(oc->state, QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
    assert_memory_equal(oc->txn_id.data, r.l.txn_id, 16);
    quancun__load_outcome__free_unpacked(oc, NULL);
    proto_envelope_destroy(&oenv);
    qcledger__settle_reply__free_unpacked(lr, NULL);
    proto_rpc_reply_destroy(&reply);
    free(rep);
    assert_int_equal(get_state(lp, r.l.txn_id, NULL, 0), QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
    assert_int_equal(lp_check(lp), 1);
    /* The outbox holds the events, and the relay's ack empties it. */
    Qcledger__OutboxReadRequest orq = QCLEDGER__OUTBOX_READ_REQUEST__INIT;
    assert_int_equal(lp_call(lp->gw, "outbox_read", &orq.base, &reply), 0);
    Qcledger__OutboxReadReply *orr =
        qcledger__outbox_read_reply__unpack(NULL, reply->body_len, reply->body);
    proto_rpc_reply_destroy(&reply);
    assert_non_null(orr);
    assert_true(orr->n_events >= 6); /* opened, deposit, enrolled, reserved, allowed, confirmed */
    assert_string_equal(orr->events[orr->n_events - 2]->type, "load.allowed");
    assert_string_equal(orr->events[orr->n_events - 1]->type, "load.confirmed");
    Qcledger__OutboxAckRequest oa = QCLEDGER__OUTBOX_ACK_REQUEST__INIT;
    oa.upto_seq = orr->events[orr->n_events - 1]->seq;
    qcledger__outbox_read_reply__free_unpacked(orr, NULL);
    assert_int_equal(lp_call(lp->gw, "outbox_ack", &oa.base, &reply), 0);
    Qcledger__OutboxAckReply *oar =
        qcledger__outbox_ack_reply__unpack(NULL, reply->body_len, reply->body);
    assert_non_null(oar);
    assert_int_equal(oar->depth, 0);
    qcledger__outbox_ack_reply__free_unpacked(oar, NULL);
    proto_rpc_reply_destroy(&reply);
    /* Garbage bodies for every method: refused, and the ledger keeps serving. */
    static const char *const methods[] = {"reserve",  "settle",      "outbox_ack", "outbox_read",
                                          "get_load", "get_account", "get_device", "check"};
    static const char *const admin_methods[] = {"open_account", "deposit",       "freeze",
                                                "unfreeze",     "enroll_device", "revoke_device"};
    uint8_t junk[97];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)(i * 37 + 11);
    for (size_t i = 0; i < sizeof methods / sizeof methods[0] + 6; i++) {
        bool adm = i >= sizeof methods / sizeof methods[0];
        const char *name = adm ? admin_methods[i - sizeof methods / sizeof methods[0]] : methods[i];
        proto_rpc_reply_t *jr = NULL;
        assert_int_equal(proto_rpc_client_call(adm ? lp->op : lp->gw, name, junk, sizeof junk, 5000,
                                               PROTO_RPC_IDEMPOTENT, &jr),
                         0);
        /* check takes no body fields: a parsable prefix may pass; anything else is refused */
        if (strcmp(name, "check") != 0)
            assert_true(jr->code < 0);
        proto_rpc_reply_destroy(&jr);
    }
    assert_int_equal(lp_check(lp), 1);
    /* Metrics and health on the HTTP port. */
    static char page[65536];
    qctest_http(hp, "GET", "/healthz", page, sizeof page);
    assert_non_null(strstr(page, " 200 "));
    qctest_http(hp, "GET", "/metrics", page, sizeof page);
    assert_non_null(strstr(page, "qc_ledger_reserve_total{result=\"ok\"} 4"));
    /* One allow, however many retries, and one outcome. */
    assert_non_null(strstr(page, "qc_ledger_sign_requests_total 2"));
    /* Refused before the saga, so counted as denied, not as a reserve result. */
    assert_null(strstr(page, "qc_ledger_reserve_total{result=\"QC_EDENIED\"}"));
    assert_non_null(strstr(page, "qc_ledger_denied_total 2"));
    assert_non_null(strstr(page, "qc_ledger_settle_total{result=\"ok\"} 1"));
    assert_non_null(strstr(page, "qc_ledger_commits_total"));
    assert_non_null(strstr(page, "qc_ledger_batch_size_count"));
    assert_non_null(strstr(page, "qc_ledger_outbox_depth 0"));
    /* SIGTERM: a clean stop, exit status 0. */
    int status = lp_stop(lp, SIGTERM);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    rsv_free(&r);
    dev_free(&d);
    finish(lp);
}

/* ------------------------------------------------------------ concurrency */

#define T_THREADS 4
#define T_LOADS_PER_THREAD 6
#define T_POOL 10000
#define T_POOL_AMOUNT 1000

typedef struct worker {
    lp_t *lp;
    dev_t_ dev;
    int ok, refused, other;
} worker_t;

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    proto_rpc_client_t *cli = lp_client(w->lp, &w->lp->gateway);
    for (int i = 0; i < T_LOADS_PER_THREAD; i++) {
        rsv_t r;
        rsv_make(&w->dev, "pool", T_POOL_AMOUNT, &r);
        int rc = reserve(cli, &r, NULL);
        if (rc == 0) {
            w->ok++;
            w->dev.counter++; /* the device applied it: its next request proves it */
        } else if (rc == QC_EFUNDS) {
            w->refused++;
        } else {
            fprintf(stderr, "worker: %s\n", qc_errname(rc));
            w->other++;
        }
        rsv_free(&r);
    }
    proto_rpc_client_destroy(&cli);
    return NULL;
}

static void test_concurrent_reserves_never_overdraw(void **state)
{
    (void)state;
    lp_t *lp = start(1);
    assert_int_equal(lp_open_account(lp, "pool", TK_CURRENCY, 0), 0);
    assert_int_equal(lp_deposit(lp, "pool", T_POOL), 0);
    worker_t w[T_THREADS];
    pthread_t th[T_THREADS];
    for (int i = 0; i < T_THREADS; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].lp = lp;
        char id[32];
        snprintf(id, sizeof id, "pool-dev-%d", i);
        dev_make(&w[i].dev, id);
        assert_int_equal(lp_enroll(lp, "pool", w[i].dev.cert, w[i].dev.cert_len), 0);
    }
    for (int i = 0; i < T_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    int ok = 0, refused = 0, other = 0;
    for (int i = 0; i < T_THREADS; i++) {
        pthread_join(th[i], NULL);
        ok += w[i].ok;
        refused += w[i].refused;
        other += w[i].other;
    }
    /* 24 loads of 1000 against 10000: exactly 10 pass, whatever the interleaving. */
    assert_int_equal(other, 0);
    assert_int_equal(ok, T_POOL / T_POOL_AMOUNT);
    assert_int_equal(refused, T_THREADS * T_LOADS_PER_THREAD - ok);
    bool got = false;
    assert_int_equal(lp_balance(lp, "pool", &got), 0);
    assert_true(got);
    assert_int_equal(lp_check(lp), 1);
    for (int i = 0; i < T_THREADS; i++)
        dev_free(&w[i].dev);
    finish(lp);
}

/* ------------------------------------------------------------ the ledger's own timer */

static void test_deadline_compensates_without_callers(void **state)
{
    (void)state;
    static const char *const extra[] = {"--deadline-ms", "1000", NULL};
    lp_t *lp = start_with(2, extra);
    dev_t_ d;
    dev_make(&d, "dev-late");
    assert_int_equal(lp_open_account(lp, "dora", TK_CURRENCY, 0), 0);
    assert_int_equal(lp_deposit(lp, "dora", 5000), 0);
    assert_int_equal(lp_enroll(lp, "dora", d.cert, d.cert_len), 0);
    rsv_t r;
    rsv_make(&d, "dora", 1200, &r);
    assert_int_equal(reserve(lp->gw, &r, NULL), 0);
    assert_allow_for(lp, &r, 1000);
    char reason[64] = "";
    Quancun__LoadState st = QUANCUN__LOAD_STATE__LOAD_NONE;
    for (int i = 0; i < 100; i++) { /* up to 5 s */
        st = get_state(lp, r.l.txn_id, reason, sizeof reason);
        if (st == QUANCUN__LOAD_STATE__LOAD_COMPENSATED)
            break;
        usleep(50000);
    }
    assert_int_equal(st, QUANCUN__LOAD_STATE__LOAD_COMPENSATED);
    assert_string_equal(reason, "REPORT_MISSING");
    bool ok = false;
    assert_int_equal(lp_balance(lp, "dora", &ok), 5000);
    assert_int_equal(lp_check(lp), 1);
    rsv_free(&r);
    dev_free(&d);
    finish(lp);
}

/* ------------------------------------------------------------ crashes */

typedef struct async_ctx {
    int *codes; /* per tag index: 1 = pending, else the reply code or transport error */
    int pending;
} async_ctx_t;

static void async_done(void *arg, void *tag, int code, proto_rpc_reply_t *reply)
{
    async_ctx_t *a = arg;
    size_t i = (size_t)(uintptr_t)tag;
    a->codes[i] = code == 0 ? reply->code : code;
    a->pending--;
    proto_rpc_reply_destroy(&reply);
}

/* Sends rs[0..n) (at most window in flight) and collects the codes until all finished or
 * the ledger died and their calls timed out. */
static void reserve_stream(lp_t *lp, rsv_t *rs, size_t n, size_t window, int *codes)
{
    proto_rpc_client_t *cli = lp_client(lp, &lp->gateway);
    async_ctx_t a = {.codes = codes, .pending = 0};
    size_t next = 0;
    for (size_t i = 0; i < n; i++)
        codes[i] = QC_ETIMEOUT; /* unless a reply says otherwise */
    while (next < n || a.pending > 0) {
        if (!lp_alive(lp))
            n = next; /* the ledger died: send no more, collect the calls in flight */
        while (next < n && (size_t)a.pending < window) {
            uint64_t id = 0;
            /* Not idempotent here: a resend could be answered after a restart and blur
             * what was acknowledged before the crash. */
            assert_int_equal(proto_rpc_client_send(cli, "reserve", rs[next].body, rs[next].body_len,
                                                   2000, 0, (void *)(uintptr_t)next, &id),
                             0);
            next++;
            a.pending++;
        }
        zmq_pollitem_t items[PROTO_RPC_ENDPOINTS_MAX];
        int k = proto_rpc_client_pollitems(cli, items, PROTO_RPC_ENDPOINTS_MAX);
        int t = proto_rpc_client_next_timeout_ms(cli);
        zmq_poll(items, k, t < 0 || t > 100 ? 100 : t);
        proto_rpc_client_process(cli, async_done, &a);
    }
    proto_rpc_client_destroy(&cli);
}

#define T_CRASH_DEVICES 48
#define T_CRASH_AMOUNT 10

static void test_sigkill_mid_group_commit(void **state)
{
    (void)state;
    lp_t *lp = start(3);
    static dev_t_ devs[T_CRASH_DEVICES];
    assert_int_equal(lp_open_account(lp, "kay", TK_CURRENCY, 0), 0);
    assert_int_equal(lp_deposit(lp, "kay", 1000000), 0);
    for (int i = 0; i < T_CRASH_DEVICES; i++) {
        char id[32];
        snprintf(id, sizeof id, "kay-dev-%d", i);
        dev_make(&devs[i], id);
        assert_int_equal(lp_enroll(lp, "kay", devs[i].cert, devs[i].cert_len), 0);
    }
    assert_int_equal(lp_stop(lp, SIGTERM), 0);

    /* 1. Killed inside the first group commit with writes: nothing of it survives. */
    assert_int_equal(lp_start(lp, "ledger.mid_group_commit", 0, NULL), 0);
    rsv_t rs[T_CRASH_DEVICES];
    int codes[T_CRASH_DEVICES];
    size_t half = T_CRASH_DEVICES / 2;
    for (size_t i = 0; i < T_CRASH_DEVICES; i++)
        rsv_make(&devs[i], "kay", T_CRASH_AMOUNT, &rs[i]);
    reserve_stream(lp, rs, half, half, codes);
    int status = lp_wait_exit(lp, 10000);
    assert_true(status != -1 && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    for (size_t i = 0; i < half; i++)
        assert_int_not_equal(codes[i], 0); /* nobody was told "done" */
    assert_int_equal(lp_start(lp, NULL, 0, NULL), 0);
    for (size_t i = 0; i < half; i++)
        assert_int_equal(get_state(lp, rs[i].l.txn_id, NULL, 0), QUANCUN__LOAD_STATE__LOAD_NONE);
    bool ok = false;
    assert_int_equal(lp_balance(lp, "kay", &ok), 1000000);
    assert_int_equal(lp_check(lp), 1);
    assert_int_equal(lp_stop(lp, SIGTERM), 0);

    /* 2. A stream of group commits, killed in the middle of the fourth: every
     * acknowledged reserve is there after the restart, and the books balance. */
    assert_int_equal(lp_start(lp, "ledger.mid_group_commit", 3, NULL), 0);
    reserve_stream(lp, rs + half, T_CRASH_DEVICES - half, 4, codes + half);
    status = lp_wait_exit(lp, 10000);
    assert_true(status != -1 && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    assert_int_equal(lp_start(lp, NULL, 0, NULL), 0);
    int acked = 0, present = 0;
    for (size_t i = half; i < T_CRASH_DEVICES; i++) {
        Quancun__LoadState st = get_state(lp, rs[i].l.txn_id, NULL, 0);
        if (codes[i] == 0) {
            acked++;
            assert_int_equal(st, QUANCUN__LOAD_STATE__LOAD_RESERVED);
        }
        if (st == QUANCUN__LOAD_STATE__LOAD_RESERVED)
            present++;
    }
    assert_true(acked >= 2); /* batches before the last answered one were received */
    assert_true(present >= acked && present < (int)(T_CRASH_DEVICES - half));
    assert_int_equal(lp_balance(lp, "kay", &ok), 1000000 - present * T_CRASH_AMOUNT);
    assert_int_equal(lp_check(lp), 1);
    for (size_t i = 0; i < T_CRASH_DEVICES; i++) {
        rsv_free(&rs[i]);
        dev_free(&devs[i]);
    }
    finish(lp);
}

static void test_sigkill_after_commit_before_reply(void **state)
{
    (void)state;
    lp_t *lp = start(4);
    dev_t_ d;
    dev_make(&d, "dev-k2");
    assert_int_equal(lp_open_account(lp, "kim", TK_CURRENCY, 0), 0);
    assert_int_equal(lp_deposit(lp, "kim", 3000), 0);
    assert_int_equal(lp_enroll(lp, "kim", d.cert, d.cert_len), 0);
    assert_int_equal(lp_stop(lp, SIGTERM), 0);
    assert_int_equal(lp_start(lp, "ledger.after_commit_before_reply", 0, NULL), 0);
    rsv_t r;
    rsv_make(&d, "kim", 1000, &r);
    int code = 1;
    reserve_stream(lp, &r, 1, 1, &code);
    assert_int_not_equal(code, 0);
    int status = lp_wait_exit(lp, 10000);
    assert_true(status != -1 && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    /* Committed though never answered (nor signed for): the retry gets the stored record with
     * the allow the bank signs now, and no second debit; the next retry the same allow. */
    assert_int_equal(atomic_load(&lp->signed_allows), 0);
    assert_int_equal(lp_start(lp, NULL, 0, NULL), 0);
    assert_int_equal(reserve(lp->gw, &r, NULL), 0);
    assert_non_null(r.allow);
    assert_int_equal(reserve(lp->gw, &r, NULL), 0);
    assert_int_equal(atomic_load(&lp->signed_allows), 1);
    bool ok = false;
    assert_int_equal(lp_balance(lp, "kim", &ok), 2000);
    assert_int_equal(lp_check(lp), 1);
    rsv_free(&r);
    dev_free(&d);
    finish(lp);
}

/* ------------------------------------------------------------ the bank signs after the debit */

/* A gateway's retries of one reserve until an answer, at most tries, a second apart. */
static int reserve_until(lp_t *lp, rsv_t *r, int tries)
{
    int rc = QC_ETIMEOUT;
    for (int i = 0; i < tries && rc != 0; i++) {
        rc = reserve(lp->gw, r, NULL);
        if (rc != 0)
            usleep(200000);
    }
    return rc;
}

/* The signer is down: the money stays held, no allow exists, and the deadline gives it back.
 * A retry after the deadline gets the compensated record and still no allow. */
static void test_signer_down_leaves_reserved_then_compensates(void **state)
{
    (void)state;
    static const char *const extra[] = {"--deadline-ms", "2000", "--signer-timeout-ms", "300",
                                        NULL};
    lp_t *lp = start_with(5, extra);
    dev_t_ d;
    dev_make(&d, "dev-nosig");
    assert_int_equal(lp_open_account(lp, "nina", TK_CURRENCY, 0), 0);
    assert_int_equal(lp_deposit(lp, "nina", 5000), 0);
    assert_int_equal(lp_enroll(lp, "nina", d.cert, d.cert_len), 0);
    lp_signer_down(lp, true);
    rsv_t r;
    rsv_make(&d, "nina", 1500, &r);
    assert_int_equal(reserve(lp->gw, &r, NULL), QC_EUNAVAIL);
    assert_null(r.allow);
    size_t allow_len = 1;
    assert_int_equal(get_load(lp, r.l.txn_id, &allow_len), QUANCUN__LOAD_STATE__LOAD_RESERVED);
    assert_int_equal(allow_len, 0);
    bool ok = false;
    assert_int_equal(lp_balance(lp, "nina", &ok), 5000 - 1500); /* debited, not signed for */
    Quancun__LoadState st = QUANCUN__LOAD_STATE__LOAD_RESERVED;
    for (int i = 0; i < 100 && st == QUANCUN__LOAD_STATE__LOAD_RESERVED; i++) { /* up to 5 s */
        usleep(50000);
        st = get_load(lp, r.l.txn_id, &allow_len);
    }
    assert_int_equal(st, QUANCUN__LOAD_STATE__LOAD_COMPENSATED);
    assert_int_equal(allow_len, 0);
    assert_int_equal(lp_balance(lp, "nina", &ok), 5000);
    /* The signer is back: the retry gets the record, and no allow is signed for it. */
    lp_signer_down(lp, false);
    Qcledger__ReserveReply *rr = NULL;
    assert_int_equal(reserve(lp->gw, &r, &rr), 0);
    assert_int_equal(rr->load->state, QUANCUN__LOAD_STATE__LOAD_COMPENSATED);
    assert_int_equal(rr->allow.len, 0);
    qcledger__reserve_reply__free_unpacked(rr, NULL);
    assert_int_equal(atomic_load(&lp->signed_allows), 0);
    assert_int_equal(lp_check(lp), 1);
    rsv_free(&r);
    dev_free(&d);
    finish(lp);
}

/* Killed after the debit committed and before the signer was asked, then killed after the
 * signer signed and before the allow was stored: after each restart the load is RESERVED with
 * no allow, a retry has it signed and stored, and every later retry gets those same bytes. */
/* ------------------------------------------------------------ revocation */

/* True when the ledger's log has a line containing needle. */
static bool ledger_log_has(const lp_t *lp, const char *needle)
{
    char path[LP_PATH_MAX + 16], line[2048];
    snprintf(path, sizeof path, "%s/ledger.log", lp->dir);
    FILE *f = fopen(path, "r");
    bool found = false;
    while (f != NULL && !found && fgets(line, sizeof line, f) != NULL)
        found = strstr(line, needle) != NULL;
    if (f != NULL)
        fclose(f);
    return found;
}

/* A device certificate issued by the CA with the given serial. */
static void issued_cert(EVP_PKEY *ca_key, X509 *ca, const char *cn, long serial, uint8_t **der,
                        size_t *der_len)
{
    EVP_PKEY *key = qctest_key_new();
    qctest_cert_t spec = {.key = key,
                          .cn = cn,
                          .signer = ca_key,
                          .issuer = ca,
                          .serial = serial,
                          .not_before_s = -3600,
                          .not_after_s = 30 * 86400L,
                          .ext = QCTEST_EXT_LEAF};
    X509 *cert = qctest_cert_new(&spec);
    qctest_cert_der(cert, der, der_len);
    X509_free(cert);
    EVP_PKEY_free(key);
}

/* A device revoked in the CA's CRL while the ledger runs cannot be enrolled any more: the
 * ledger re-reads its CRL file when the file changes, without a restart (issue 20). */
static void test_crl_reread_without_restart(void **state)
{
    (void)state;
    lp_t *lp = calloc(1, sizeof *lp);
    assert_non_null(lp);
    assert_int_equal(lp_setup(lp, ledger_bin, T_PORT(7)), 0);
    char ca_path[LP_PATH_MAX + 16], crl_path[LP_PATH_MAX + 16];
    snprintf(ca_path, sizeof ca_path, "%s/ca.pem", lp->dir);
    snprintf(crl_path, sizeof crl_path, "%s/crl.pem", lp->dir);
    EVP_PKEY *ca_key = NULL;
    X509 *ca = NULL;
    qctest_ca_new(&ca_key, &ca);
    qctest_write_cert(ca_path, ca);
    qctest_write_crl(crl_path, ca_key, ca, NULL, 0, 7 * 86400L);
    uint8_t *kept = NULL, *revoked = NULL;
    size_t kept_len = 0, revoked_len = 0;
    issued_cert(ca_key, ca, "dev-kept", 501, &kept, &kept_len);
    issued_cert(ca_key, ca, "dev-revoked", 502, &revoked, &revoked_len);
    const char *const extra[] = {"--ca", ca_path, "--crl", crl_path, NULL};
    assert_int_equal(lp_start(lp, NULL, 0, extra), 0);
    assert_int_equal(lp_open_account(lp, "rita", TK_CURRENCY, 0), 0);
    assert_int_equal(lp_enroll(lp, "rita", kept, kept_len), 0);

    const long serials[] = {502};
    qctest_write_crl(crl_path, ca_key, ca, serials, 1, 7 * 86400L);
    /* The file is looked at every PROTO_TRUST_WATCH_POLL_MS; wait for the reload it logs. */
    uint64_t end = ops_time_mono_ms() + T_ASYNC_MS;
    while (!ledger_log_has(lp, "\"event\":\"ledger.crl_reloaded\"") && ops_time_mono_ms() < end)
        usleep(50 * 1000);
    assert_true(ledger_log_has(lp, "\"event\":\"ledger.crl_reloaded\""));
    assert_true(lp_alive(lp));
    assert_int_equal(lp_enroll(lp, "rita", revoked, revoked_len), QC_ECERTREVOKED);
    /* The store was rebuilt, not emptied: the CA still admits a device it did not revoke. */
    uint8_t *fresh = NULL;
    size_t fresh_len = 0;
    issued_cert(ca_key, ca, "dev-fresh", 503, &fresh, &fresh_len);
    assert_int_equal(lp_enroll(lp, "rita", fresh, fresh_len), 0);
    free(kept);
    free(revoked);
    free(fresh);
    EVP_PKEY_free(ca_key);
    X509_free(ca);
    finish(lp);
}

static void test_sigkill_around_the_signature(void **state)
{
    (void)state;
    static const char *const points[] = {"ledger.after_reserve_before_sign",
                                         "ledger.after_sign_before_store"};
    lp_t *lp = start(6);
    dev_t_ d;
    dev_make(&d, "dev-k3");
    assert_int_equal(lp_open_account(lp, "kit", TK_CURRENCY, 0), 0);
    assert_int_equal(lp_deposit(lp, "kit", 5000), 0);
    assert_int_equal(lp_enroll(lp, "kit", d.cert, d.cert_len), 0);
    assert_int_equal(lp_stop(lp, SIGTERM), 0);
    for (int p = 0; p < 2; p++) {
        int signed_before = atomic_load(&lp->signed_allows);
        assert_int_equal(lp_start(lp, points[p], 0, NULL), 0);
        rsv_t r;
        rsv_make(&d, "kit", 1000, &r);
        int code = 1;
        reserve_stream(lp, &r, 1, 1, &code);
        assert_int_not_equal(code, 0);
        int status = lp_wait_exit(lp, 10000);
        assert_true(status != -1 && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
        /* after_sign_before_store: the bank signed once, and that allow was never sent. */
        assert_int_equal(atomic_load(&lp->signed_allows), signed_before + p);
        assert_int_equal(lp_start(lp, NULL, 0, NULL), 0);
        size_t allow_len = 1;
        assert_int_equal(get_load(lp, r.l.txn_id, &allow_len), QUANCUN__LOAD_STATE__LOAD_RESERVED);
        assert_int_equal(allow_len, 0);
        bool ok = false;
        assert_int_equal(lp_balance(lp, "kit", &ok), 5000 - 1000 * (p + 1));
        assert_int_equal(reserve_until(lp, &r, 5), 0);
        assert_non_null(r.allow);
        assert_allow_for(lp, &r, T_LEDGER_DEADLINE_MS);
        assert_int_equal(reserve(lp->gw, &r, NULL), 0); /* the same bytes */
        assert_int_equal(atomic_load(&lp->signed_allows), signed_before + p + 1);
        assert_int_equal(lp_balance(lp, "kit", &ok), 5000 - 1000 * (p + 1));
        assert_int_equal(lp_check(lp), 1);
        assert_int_equal(lp_stop(lp, SIGTERM), 0);
        d.counter++; /* the device applies it: its next request proves it */
        rsv_free(&r);
    }
    dev_free(&d);
    finish(lp);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PATH-TO-qc-ledger\n", argv[0]);
        return 2;
    }
    ledger_bin = argv[1];
    ports = qctest_ports(17300, 40);
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_methods_and_roles),
        cmocka_unit_test(test_concurrent_reserves_never_overdraw),
        cmocka_unit_test(test_deadline_compensates_without_callers),
        cmocka_unit_test(test_sigkill_mid_group_commit),
        cmocka_unit_test(test_sigkill_after_commit_before_reply),
        cmocka_unit_test(test_signer_down_leaves_reserved_then_compensates),
        cmocka_unit_test(test_sigkill_around_the_signature),
        cmocka_unit_test(test_crl_reread_without_restart),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
