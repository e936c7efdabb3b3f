/* test_gateway_flow.c - the gateway's saga orchestration (gateway_flow.h) against a fake signer
 * and two fake ledger shards: real ZeroMQ with CURVE, in one process, over ipc:// sockets in the
 * test's directory (no TCP port, so no ports lock).
 *
 * The gateway runs gateway_run() in a thread of its own; the fakes answer in another thread, as
 * each test's script says (answer, refuse with a code, stay silent, reply a settled load or
 * garbage), and record what they were asked. A device is the test's main thread with a plain
 * RPC client. The tests assert the orchestration, not money: a load is routed to its account's
 * shard, the allow the device gets is the one the ledger stored, a report is settled on its
 * shard and answered with the signed outcome, a downstream call that is not answered is sent
 * again, and every refusal reaches the device with its code.
 *
 * The bank debits before it signs (issue 13): the gateway has no connection to the signer. The
 * fake signer is still served, so that the tests can assert that nothing ever calls it: the
 * allow comes in the ledger's Reserve reply, the outcome in its Settle reply. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>
#include <zmq.h>

#include "gateway_flow.h"
#include "ledger.pb-c.h"
#include "ops_log.h"
#include "ops_signal.h"
#include "ops_time.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "proto_rpc.h"
#include "proto_shard.h"
#include "qc_error.h"
#include "qctest_fs.h"
#include "qctest_key.h"
#include "signer.pb-c.h"

#define T_SHARDS 2
#define T_RPC_TIMEOUT_MS 1200 /* the gateway's budget of one downstream call, retries included */
#define T_CALL_MS 5000        /* the device's budget: above the gateway's, so its answer arrives */
#define T_POLL_MS 20
#define T_CURRENCY 156
#define T_DEVICE "QCGWFLOW01"
#define T_ENDPOINT_MAX (QCTEST_PATH_MAX + 16)

/* What a fake does with the next calls of one method. */
typedef enum fake_mode {
    FAKE_ANSWER = 0, /* the answer a real service would give */
    FAKE_REFUSE,     /* refuse with code and message */
    FAKE_SILENT,     /* never answer */
    FAKE_SETTLED,    /* reserve only: the load is already COMPENSATED, and no allow was stored */
    FAKE_GARBAGE,    /* a reply body that does not decode */
    FAKE_NO_ALLOW,   /* reserve: RESERVED with no allow; settle: no outcome (both malformed) */
} fake_mode_t;

/* One method of a fake: its script and what it saw. */
typedef struct fake_method {
    fake_mode_t mode;
    int drop;           /* calls left unanswered before the mode applies (retries) */
    int refuse_code;    /* FAKE_REFUSE */
    int calls;          /* every call that arrived */
    int last_shard;     /* ledger methods: the shard that got the last call */
    int last_kind;      /* sign: the kind of the last call */
    uint8_t *last_body; /* the last call's body (owned) */
    size_t last_len;
} fake_method_t;

typedef struct world {
    char dir[QCTEST_PATH_MAX];
    void *ctx;
    proto_curve_keypair_t gw_keys, signer_keys, ledger_keys, device_keys;
    proto_rpc_server_t *signer;
    proto_rpc_server_t *ledgers[T_SHARDS];
    gateway_t *gw;
    proto_rpc_client_t *device;
    pthread_t gw_thread, fake_thread;
    atomic_bool fake_stop;
    pthread_mutex_t mu; /* guards the fake_method_t below */
    fake_method_t sign, reserve, settle;
    EVP_PKEY *device_key, *ca_key;
    uint8_t *device_cert;
    size_t device_cert_len;
} world_t;

/* ------------------------------------------------------------------ the fakes */

/* A check in the fakes' or the gateway's thread: cmocka's assertions jump back into the main
 * thread's test, so these abort instead, naming what failed. */
#define FAKE_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: fake: %s failed\n", __FILE__, __LINE__, #cond);                \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void record(world_t *w, fake_method_t *m, const proto_rpc_request_t *req, int shard)
{
    m->calls++;
    m->last_shard = shard;
    free(m->last_body);
    m->last_body = malloc(req->body_len + 1);
    FAKE_CHECK(m->last_body != NULL);
    if (req->body_len > 0)
        memcpy(m->last_body, req->body, req->body_len);
    m->last_len = req->body_len;
    (void)w;
}

/* The bytes the fake signer returns for kind. */
static void signed_by_signer(int kind, char *out, size_t cap)
{
    snprintf(out, cap, "signed-by-the-signer:%d", kind);
}

/* The signer's answer: a "signed" envelope the fake makes up, its body the body to sign. The
 * gateway only passes it on, so the bytes need not verify. */
static void fake_sign(world_t *w, proto_rpc_server_t *srv, const proto_rpc_request_t *req)
{
    Quancun__SignRequest *sr = quancun__sign_request__unpack(NULL, req->body_len, req->body);
    FAKE_CHECK(sr != NULL);
    w->sign.last_kind = sr->kind;
    Quancun__SignReply rep = QUANCUN__SIGN_REPLY__INIT;
    uint8_t env[64];
    signed_by_signer(sr->kind, (char *)env, sizeof env);
    rep.signed_.data = env;
    rep.signed_.len = strlen((char *)env);
    uint8_t *body = NULL;
    size_t len = 0;
    FAKE_CHECK(proto_pack(&rep.base, &body, &len) == 0);
    FAKE_CHECK(proto_rpc_server_reply(srv, req, 0, NULL, body, len) == 0);
    free(body);
    quancun__sign_request__free_unpacked(sr, NULL);
}

/* The ledger's answer to reserve (a RESERVED load and the allow it had signed and stored, or a
 * COMPENSATED one with none) or to settle (the state the report says, and the outcome it had
 * signed). */
static void fake_ledger(world_t *w, proto_rpc_server_t *srv, const proto_rpc_request_t *req,
                        fake_mode_t mode)
{
    Qcledger__Load load = QCLEDGER__LOAD__INIT;
    uint8_t txn[PROTO_TXN_ID_SIZE] = {0};
    load.txn_id.data = txn;
    load.txn_id.len = sizeof txn;
    load.device_id = T_DEVICE;
    load.amount = 100;
    load.currency = T_CURRENCY;
    uint8_t *body = NULL;
    size_t len = 0;
    static uint8_t stored_allow[] = "the-allow-the-ledger-stored";
    if (strcmp(req->method, "reserve") == 0) {
        load.state = mode == FAKE_SETTLED ? QUANCUN__LOAD_STATE__LOAD_COMPENSATED
                                          : QUANCUN__LOAD_STATE__LOAD_RESERVED;
        Qcledger__ReserveReply rep = QCLEDGER__RESERVE_REPLY__INIT;
        rep.load = &load;
        if (mode == FAKE_ANSWER) {
            rep.allow.data = stored_allow;
            rep.allow.len = sizeof stored_allow - 1;
        }
        FAKE_CHECK(proto_pack(&rep.base, &body, &len) == 0);
    } else {
        Qcledger__SettleRequest *sr =
            qcledger__settle_request__unpack(NULL, req->body_len, req->body);
        FAKE_CHECK(sr != NULL);
        load.state = sr->verdict == QUANCUN__REPORT_STATUS__REPORT_APPLIED
                         ? QUANCUN__LOAD_STATE__LOAD_CONFIRMED
                         : QUANCUN__LOAD_STATE__LOAD_COMPENSATED;
        qcledger__settle_request__free_unpacked(sr, NULL);
        static uint8_t outcome[] = "the-outcome-the-ledger-had-signed";
        Qcledger__SettleReply rep = QCLEDGER__SETTLE_REPLY__INIT;
        rep.load = &load;
        if (mode == FAKE_ANSWER) {
            rep.outcome.data = outcome;
            rep.outcome.len = sizeof outcome - 1;
        }
        FAKE_CHECK(proto_pack(&rep.base, &body, &len) == 0);
    }
    FAKE_CHECK(proto_rpc_server_reply(srv, req, 0, NULL, body, len) == 0);
    free(body);
    (void)w;
}

/* One request to a fake: recorded, then answered as the method's script says. */
static void fake_serve(world_t *w, proto_rpc_server_t *srv, int shard)
{
    proto_rpc_request_t *req = NULL;
    if (proto_rpc_server_recv(srv, 0, &req) != 0)
        return;
    pthread_mutex_lock(&w->mu);
    fake_method_t *m = strcmp(req->method, "sign") == 0      ? &w->sign
                       : strcmp(req->method, "reserve") == 0 ? &w->reserve
                       : strcmp(req->method, "settle") == 0  ? &w->settle
                                                             : NULL;
    FAKE_CHECK(m != NULL);
    record(w, m, req, shard);
    if (m->drop > 0) {
        m->drop--;
    } else if (m->mode == FAKE_REFUSE) {
        FAKE_CHECK(
            proto_rpc_server_reply(srv, req, m->refuse_code, "refused by the fake", NULL, 0) == 0);
    } else if (m->mode == FAKE_GARBAGE) {
        const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff};
        FAKE_CHECK(proto_rpc_server_reply(srv, req, 0, NULL, junk, sizeof junk) == 0);
    } else if (m->mode != FAKE_SILENT) {
        if (m == &w->sign)
            fake_sign(w, srv, req);
        else
            fake_ledger(w, srv, req, m->mode);
    }
    pthread_mutex_unlock(&w->mu);
    proto_rpc_request_destroy(&req);
}

static void *fake_thread(void *arg)
{
    world_t *w = arg;
    while (!atomic_load(&w->fake_stop)) {
        zmq_pollitem_t items[1 + T_SHARDS] = {{0}};
        items[0].socket = proto_rpc_server_socket(w->signer);
        items[0].events = ZMQ_POLLIN;
        for (int s = 0; s < T_SHARDS; s++) {
            items[1 + s].socket = proto_rpc_server_socket(w->ledgers[s]);
            items[1 + s].events = ZMQ_POLLIN;
        }
        if (zmq_poll(items, 1 + T_SHARDS, T_POLL_MS) <= 0)
            continue;
        if (items[0].revents & ZMQ_POLLIN)
            fake_serve(w, w->signer, -1);
        for (int s = 0; s < T_SHARDS; s++)
            if (items[1 + s].revents & ZMQ_POLLIN)
                fake_serve(w, w->ledgers[s], s);
    }
    return NULL;
}

static void *gateway_thread(void *arg)
{
    world_t *w = arg;
    FAKE_CHECK(gateway_run(w->gw) == 0);
    return NULL;
}

/* ------------------------------------------------------------------ the world */

static void keypair(world_t *w, const char *name, proto_curve_keypair_t *kp)
{
    char path[QCTEST_PATH_MAX];
    qctest_path(w->dir, name, path);
    assert_int_equal(proto_curve_keypair_create(path, kp), 0);
}

static void endpoint(const world_t *w, const char *name, char out[T_ENDPOINT_MAX])
{
    int n = snprintf(out, T_ENDPOINT_MAX, "ipc://%s/%s", w->dir, name);
    assert_true(n > 0 && n < T_ENDPOINT_MAX);
}

static proto_rpc_server_t *fake_server(world_t *w, const char *service, const char *name,
                                       const proto_curve_keypair_t *keys)
{
    char ep[T_ENDPOINT_MAX], allow[QCTEST_PATH_MAX], line[PROTO_CURVE_KEY_Z85_LEN + 2];
    endpoint(w, name, ep);
    qctest_path(w->dir, "gateway.allow", allow);
    snprintf(line, sizeof line, "%s\n", w->gw_keys.public_z85);
    assert_int_equal(qctest_file_write(allow, line), 0);
    proto_rpc_server_config_t cfg = {
        .service = service, .endpoint = ep, .keys = keys, .allow_path = allow};
    proto_rpc_server_t *srv = NULL;
    assert_int_equal(proto_rpc_server_new(w->ctx, &cfg, &srv), 0);
    return srv;
}

static int world_up(void **state)
{
    world_t *w = calloc(1, sizeof *w);
    assert_non_null(w);
    assert_int_equal(qctest_dir_new("qc-gw-flow", w->dir), 0);
    assert_int_equal(pthread_mutex_init(&w->mu, NULL), 0);
    w->ctx = zmq_ctx_new();
    assert_non_null(w->ctx);
    keypair(w, "gateway.key", &w->gw_keys);
    keypair(w, "signer.key", &w->signer_keys);
    keypair(w, "ledger.key", &w->ledger_keys);
    keypair(w, "device.key", &w->device_keys);

    /* The device CA the gateway trusts, and a device it certified. */
    X509 *ca = NULL;
    qctest_ca_new(&w->ca_key, &ca);
    char ca_path[QCTEST_PATH_MAX];
    qctest_path(w->dir, "ca.pem", ca_path);
    qctest_write_cert(ca_path, ca);
    w->device_key = qctest_key_new();
    qctest_cert_issued_der(w->device_key, T_DEVICE, w->ca_key, ca, &w->device_cert,
                           &w->device_cert_len);
    X509_free(ca);

    w->signer = fake_server(w, "signer", "signer", &w->signer_keys);
    char ledgers[T_SHARDS * T_ENDPOINT_MAX + T_SHARDS];
    ledgers[0] = '\0';
    for (int s = 0; s < T_SHARDS; s++) {
        char name[16], ep[T_ENDPOINT_MAX];
        snprintf(name, sizeof name, "ledger-%d", s);
        w->ledgers[s] = fake_server(w, "ledger", name, &w->ledger_keys);
        endpoint(w, name, ep);
        strcat(ledgers, s > 0 ? ";" : "");
        strcat(ledgers, ep);
    }
    char listen[T_ENDPOINT_MAX];
    endpoint(w, "gateway", listen);
    /* No signer in the gateway's config: it has none to call. */
    gateway_config_t cfg = {.listen = listen,
                            .keys = &w->gw_keys,
                            .ledger = ledgers,
                            .ledger_key = w->ledger_keys.public_z85,
                            .ca_path = ca_path,
                            .rpc_timeout_ms = T_RPC_TIMEOUT_MS,
                            .source = "gateway-test"};
    assert_int_equal(gateway_new(w->ctx, &cfg, &w->gw), 0);
    proto_rpc_client_config_t dc = {.service = "gateway",
                                    .endpoints = listen,
                                    .server_public_z85 = w->gw_keys.public_z85,
                                    .keys = &w->device_keys};
    assert_int_equal(proto_rpc_client_new(w->ctx, &dc, &w->device), 0);
    assert_int_equal(pthread_create(&w->fake_thread, NULL, fake_thread, w), 0);
    assert_int_equal(pthread_create(&w->gw_thread, NULL, gateway_thread, w), 0);
    *state = w;
    return 0;
}

static int world_down(void **state)
{
    world_t *w = *state;
    ops_signal_request_stop(); /* gateway_run returns within GATEWAY_POLL_MAX_MS */
    pthread_join(w->gw_thread, NULL);
    atomic_store(&w->fake_stop, true);
    pthread_join(w->fake_thread, NULL);
    proto_rpc_client_destroy(&w->device);
    gateway_destroy(&w->gw);
    proto_rpc_server_destroy(&w->signer);
    for (int s = 0; s < T_SHARDS; s++)
        proto_rpc_server_destroy(&w->ledgers[s]);
    zmq_ctx_term(w->ctx);
    fake_method_t *ms[] = {&w->sign, &w->reserve, &w->settle};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++)
        free(ms[i]->last_body);
    proto_curve_keypair_wipe(&w->gw_keys);
    proto_curve_keypair_wipe(&w->signer_keys);
    proto_curve_keypair_wipe(&w->ledger_keys);
    proto_curve_keypair_wipe(&w->device_keys);
    EVP_PKEY_free(w->device_key);
    EVP_PKEY_free(w->ca_key);
    free(w->device_cert);
    pthread_mutex_destroy(&w->mu);
    qctest_dir_remove(w->dir);
    free(w);
    return 0;
}

/* Before each test: every fake answers, and nothing was seen yet. */
static int script_reset(void **state)
{
    world_t *w = *state;
    pthread_mutex_lock(&w->mu);
    fake_method_t *ms[] = {&w->sign, &w->reserve, &w->settle};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
        free(ms[i]->last_body);
        memset(ms[i], 0, sizeof *ms[i]);
        ms[i]->last_shard = -1;
    }
    pthread_mutex_unlock(&w->mu);
    return 0;
}

static void script(world_t *w, fake_method_t *m, fake_mode_t mode, int drop, int refuse_code)
{
    pthread_mutex_lock(&w->mu);
    m->mode = mode;
    m->drop = drop;
    m->refuse_code = refuse_code;
    pthread_mutex_unlock(&w->mu);
}

/* A copy of what the fakes saw of one method, taken under the lock. */
static fake_method_t seen(world_t *w, const fake_method_t *m)
{
    pthread_mutex_lock(&w->mu);
    fake_method_t copy = *m;
    copy.last_body = NULL;
    if (m->last_body != NULL) {
        copy.last_body = malloc(m->last_len + 1);
        assert_non_null(copy.last_body);
        memcpy(copy.last_body, m->last_body, m->last_len);
    }
    pthread_mutex_unlock(&w->mu);
    return copy;
}

static int seen_calls(world_t *w, const fake_method_t *m)
{
    pthread_mutex_lock(&w->mu);
    int calls = m->calls;
    pthread_mutex_unlock(&w->mu);
    return calls;
}

/* ------------------------------------------------------------------ the device */

static void sign_as_device(world_t *w, proto_type_t type, const ProtobufCMessage *msg,
                           uint8_t **out, size_t *out_len)
{
    uint8_t *body = NULL;
    size_t len = 0;
    assert_int_equal(proto_pack(msg, &body, &len), 0);
    assert_int_equal(proto_envelope_sign(type, body, len, w->device_key, 1, w->device_cert,
                                         w->device_cert_len, out, out_len),
                     0);
    free(body);
}

/* A signed LoadRequest of the test device for account. */
static void load_request(world_t *w, const char *account, uint8_t txn[PROTO_TXN_ID_SIZE],
                         uint8_t **out, size_t *out_len)
{
    uint8_t nonce[PROTO_NONCE_SIZE];
    assert_int_equal(RAND_bytes(txn, PROTO_TXN_ID_SIZE), 1);
    assert_int_equal(RAND_bytes(nonce, sizeof nonce), 1);
    Quancun__LoadRequest r = QUANCUN__LOAD_REQUEST__INIT;
    r.txn_id.data = txn;
    r.txn_id.len = PROTO_TXN_ID_SIZE;
    r.device_id = T_DEVICE;
    r.account_id = (char *)account;
    r.amount = 1250;
    r.currency = T_CURRENCY;
    r.balance_before = 0;
    r.counter = 3;
    r.key_version = 1;
    r.alg = QUANCUN__ALG__ALG_ECDSA_P256_SHA256;
    r.nonce.data = nonce;
    r.nonce.len = sizeof nonce;
    r.device_time_ms = ops_time_wall_ms();
    sign_as_device(w, PROTO_TYPE_LOAD_REQUEST, &r.base, out, out_len);
}

/* A signed ExecutionReport of the test device about txn on account. */
static void report(world_t *w, const char *account, const uint8_t txn[PROTO_TXN_ID_SIZE],
                   Quancun__ReportStatus status, uint8_t **out, size_t *out_len)
{
    uint8_t digest[PROTO_DIGEST_SIZE];
    assert_int_equal(RAND_bytes(digest, sizeof digest), 1);
    Quancun__ExecutionReport rep = QUANCUN__EXECUTION_REPORT__INIT;
    rep.txn_id.data = (uint8_t *)txn;
    rep.txn_id.len = PROTO_TXN_ID_SIZE;
    rep.device_id = T_DEVICE;
    rep.account_id = (char *)account;
    rep.counter_after = 4;
    rep.status = status;
    rep.reason = status == QUANCUN__REPORT_STATUS__REPORT_APPLIED ? "" : "bad allow";
    rep.balance_after = 1250;
    rep.allow_digest.data = digest;
    rep.allow_digest.len = sizeof digest;
    sign_as_device(w, PROTO_TYPE_EXECUTION_REPORT, &rep.base, out, out_len);
}

/* The device's call: returns the reply code (or the transport's), the reply in *out. */
static int device_call(world_t *w, const char *method, const uint8_t *body, size_t len,
                       proto_rpc_reply_t **out)
{
    *out = NULL;
    /* Not idempotent for the client: one attempt, so each test knows what the gateway got. */
    int rc = proto_rpc_client_call(w->device, method, body, len, T_CALL_MS, 0, out);
    return rc != 0 ? rc : (*out)->code;
}

/* An account whose shard is shard (of T_SHARDS). */
static void account_on(int shard, char out[32])
{
    for (int i = 0;; i++) {
        snprintf(out, 32, "acct-%04d", i);
        if ((int)proto_shard_of(out, T_SHARDS) == shard)
            return;
        assert_true(i < 1000);
    }
}

/* ------------------------------------------------------------------ tests */

/* A load goes to its account's shard, and the device gets the allow the ledger stored. */
static void test_load_routed_allow_reaches_device(void **state)
{
    world_t *w = *state;
    for (int shard = 0; shard < T_SHARDS; shard++) {
        script_reset(state);
        char account[32];
        account_on(shard, account);
        uint8_t txn[PROTO_TXN_ID_SIZE], *req = NULL;
        size_t req_len = 0;
        load_request(w, account, txn, &req, &req_len);
        proto_rpc_reply_t *r = NULL;
        assert_int_equal(device_call(w, "load", req, req_len, &r), 0);
        const char stored[] = "the-allow-the-ledger-stored";
        assert_int_equal(r->body_len, strlen(stored));
        assert_memory_equal(r->body, stored, strlen(stored));

        fake_method_t reserve = seen(w, &w->reserve);
        assert_int_equal(reserve.calls, 1);
        assert_int_equal(reserve.last_shard, shard);
        Qcledger__ReserveRequest *rr =
            qcledger__reserve_request__unpack(NULL, reserve.last_len, reserve.last_body);
        assert_non_null(rr);
        /* The ledger gets the device's signed request byte for byte. */
        assert_int_equal(rr->request.len, req_len);
        assert_memory_equal(rr->request.data, req, req_len);
        /* Nothing but the request: no allow travels with a Reserve (it was field 2), and the
         * signer was never called. */
        assert_int_equal(rr->base.n_unknown_fields, 0);
        assert_int_equal(seen_calls(w, &w->sign), 0);
        qcledger__reserve_request__free_unpacked(rr, NULL);
        free(reserve.last_body);
        proto_rpc_reply_destroy(&r);
        free(req);
    }
}

/* A report is settled on its account's shard and answered with the signed outcome; sent again
 * (a device that lost the answer), it is settled again and answered alike: the ledger is the one
 * that makes settle idempotent, the gateway passes every report on. */
static void test_report_settled_outcome_signed(void **state)
{
    world_t *w = *state;
    char account[32];
    account_on(1, account);
    uint8_t txn[PROTO_TXN_ID_SIZE], *rep = NULL;
    size_t rep_len = 0;
    assert_int_equal(RAND_bytes(txn, sizeof txn), 1);
    report(w, account, txn, QUANCUN__REPORT_STATUS__REPORT_APPLIED, &rep, &rep_len);
    const char outcome[] = "the-outcome-the-ledger-had-signed";
    for (int round = 1; round <= 2; round++) {
        proto_rpc_reply_t *r = NULL;
        assert_int_equal(device_call(w, "report", rep, rep_len, &r), 0);
        assert_int_equal(r->body_len, strlen(outcome));
        assert_memory_equal(r->body, outcome, strlen(outcome));
        proto_rpc_reply_destroy(&r);

        fake_method_t settle = seen(w, &w->settle);
        assert_int_equal(settle.calls, round);
        assert_int_equal(settle.last_shard, 1);
        Qcledger__SettleRequest *sr =
            qcledger__settle_request__unpack(NULL, settle.last_len, settle.last_body);
        assert_non_null(sr);
        assert_memory_equal(sr->txn_id.data, txn, sizeof txn);
        assert_int_equal(sr->verdict, QUANCUN__REPORT_STATUS__REPORT_APPLIED);
        assert_int_equal(sr->report.len, rep_len);
        assert_memory_equal(sr->report.data, rep, rep_len);
        qcledger__settle_request__free_unpacked(sr, NULL);
        free(settle.last_body);

        /* The outcome is the ledger's: the gateway never calls the signer. */
        assert_int_equal(seen_calls(w, &w->sign), 0);
    }
    /* "sync" is a report too. */
    proto_rpc_reply_t *r = NULL;
    assert_int_equal(device_call(w, "sync", rep, rep_len, &r), 0);
    proto_rpc_reply_destroy(&r);
    assert_int_equal(seen_calls(w, &w->settle), 3);
    free(rep);
}

/* A downstream call that is not answered is sent again within the gateway's budget: the
 * device sees one answer, the ledger two calls. */
static void test_unanswered_calls_are_retried(void **state)
{
    world_t *w = *state;
    char account[32];
    account_on(0, account);
    uint8_t txn[PROTO_TXN_ID_SIZE], *rep = NULL, *req = NULL;
    size_t rep_len = 0, req_len = 0;
    assert_int_equal(RAND_bytes(txn, sizeof txn), 1);
    report(w, account, txn, QUANCUN__REPORT_STATUS__REPORT_REJECTED, &rep, &rep_len);
    script(w, &w->settle, FAKE_ANSWER, 1, 0);
    proto_rpc_reply_t *r = NULL;
    assert_int_equal(device_call(w, "report", rep, rep_len, &r), 0);
    proto_rpc_reply_destroy(&r);
    fake_method_t settle = seen(w, &w->settle);
    free(settle.last_body);
    assert_int_equal(settle.calls, 2);

    script_reset(state);
    script(w, &w->reserve, FAKE_ANSWER, 1, 0);
    load_request(w, account, txn, &req, &req_len);
    assert_int_equal(device_call(w, "load", req, req_len, &r), 0);
    proto_rpc_reply_destroy(&r);
    fake_method_t reserve = seen(w, &w->reserve);
    free(reserve.last_body);
    assert_int_equal(reserve.calls, 2);
    free(rep);
    free(req);
}

/* Every refusal reaches the device with its code: the ledger's (its signer's failure too), an
 * unanswered downstream service, a settled load, a malformed reply, a forged or unknown call. */
static void test_errors_map_to_codes(void **state)
{
    world_t *w = *state;
    char account[32];
    account_on(0, account);
    uint8_t txn[PROTO_TXN_ID_SIZE], *req = NULL, *rep = NULL;
    size_t req_len = 0, rep_len = 0;
    load_request(w, account, txn, &req, &req_len);
    report(w, account, txn, QUANCUN__REPORT_STATUS__REPORT_APPLIED, &rep, &rep_len);
    proto_rpc_reply_t *r = NULL;

    /* The ledger's refusal, with its words. */
    script(w, &w->reserve, FAKE_REFUSE, 0, QC_EFUNDS);
    assert_int_equal(device_call(w, "load", req, req_len, &r), QC_EFUNDS);
    assert_string_equal(r->message, "refused by the fake");
    assert_int_equal(r->load_state, 0);
    /* Every refusal carries the bank's clock (the device learns its skew). */
    assert_true(r->server_time_ms + 60000 > ops_time_wall_ms());
    assert_true(r->server_time_ms <= ops_time_wall_ms());
    proto_rpc_reply_destroy(&r);
    script(w, &w->settle, FAKE_REFUSE, 0, QC_ESTATE);
    assert_int_equal(device_call(w, "report", rep, rep_len, &r), QC_ESTATE);
    proto_rpc_reply_destroy(&r);

    /* A retried load the ledger settled meanwhile (no allow was ever stored for it): the device
     * goes back to idle. */
    script(w, &w->reserve, FAKE_SETTLED, 0, 0);
    assert_int_equal(device_call(w, "load", req, req_len, &r), QC_ESTATE);
    assert_non_null(strstr(r->message, "LOAD_COMPENSATED"));
    /* ... and the state is a field the device acts on, not only words. */
    assert_int_equal(r->load_state, QUANCUN__LOAD_STATE__LOAD_COMPENSATED);
    assert_true(r->server_time_ms != 0);
    proto_rpc_reply_destroy(&r);

    /* A reply that does not decode. */
    script(w, &w->reserve, FAKE_GARBAGE, 0, 0);
    assert_int_equal(device_call(w, "load", req, req_len, &r), QC_EINTERNAL);
    proto_rpc_reply_destroy(&r);
    script(w, &w->settle, FAKE_GARBAGE, 0, 0);
    assert_int_equal(device_call(w, "report", rep, rep_len, &r), QC_EINTERNAL);
    proto_rpc_reply_destroy(&r);

    /* A ledger shard that does not answer at all, within the gateway's budget. */
    script(w, &w->settle, FAKE_SILENT, 0, 0);
    uint64_t t0 = ops_time_mono_ms();
    assert_int_equal(device_call(w, "report", rep, rep_len, &r), QC_EUNAVAIL);
    assert_true(ops_time_mono_ms() - t0 < T_CALL_MS);
    proto_rpc_reply_destroy(&r);

    /* The ledger's signer did not sign: the ledger's code reaches the device. A RESERVED load
     * with no allow, or a settlement with no outcome, is a malformed reply. */
    script(w, &w->reserve, FAKE_REFUSE, 0, QC_EUNAVAIL);
    assert_int_equal(device_call(w, "load", req, req_len, &r), QC_EUNAVAIL);
    proto_rpc_reply_destroy(&r);
    script(w, &w->reserve, FAKE_NO_ALLOW, 0, 0);
    assert_int_equal(device_call(w, "load", req, req_len, &r), QC_EINTERNAL);
    proto_rpc_reply_destroy(&r);
    script(w, &w->settle, FAKE_NO_ALLOW, 0, 0);
    assert_int_equal(device_call(w, "report", rep, rep_len, &r), QC_EINTERNAL);
    proto_rpc_reply_destroy(&r);
    assert_int_equal(seen_calls(w, &w->sign), 0);

    /* What a device sent is believed only once it verified: a changed byte, no downstream
     * call. */
    script_reset(state);
    req[req_len / 2] ^= 0x01;
    int code = device_call(w, "load", req, req_len, &r);
    assert_true(code < 0 && code != QC_EUNAVAIL && code != QC_ETIMEOUT);
    proto_rpc_reply_destroy(&r);
    assert_int_equal(seen_calls(w, &w->sign), 0);
    assert_int_equal(seen_calls(w, &w->reserve), 0);

    /* A method the gateway does not serve. */
    assert_int_equal(device_call(w, "withdraw", rep, rep_len, &r), QC_EMETHOD);
    proto_rpc_reply_destroy(&r);
    free(req);
    free(rep);
}

int main(void)
{
    ops_log_init("test_gateway_flow", "0", OPS_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_load_routed_allow_reaches_device, script_reset),
        cmocka_unit_test_setup(test_report_settled_outcome_signed, script_reset),
        cmocka_unit_test_setup(test_unanswered_calls_are_retried, script_reset),
        cmocka_unit_test_setup(test_errors_map_to_codes, script_reset),
    };
    return cmocka_run_group_tests_name("gateway_flow", tests, world_up, world_down);
}
