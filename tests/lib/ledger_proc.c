/* ledger_proc.c - runs qc-ledger as a real process for tests and the benchmark. */
#include "ledger_proc.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "ledger_testkit.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "qc_error.h"
#include "qctest_fs.h"
#include "qctest_port.h"
#include "qctest_proc.h"
#include "qctest_store.h"
#include "signer.pb-c.h"

#define LP_READY_MS 15000
#define LP_CALL_MS 5000
#define LP_CHECK_MS 60000 /* a check's budget: it reads every record */
#define LP_ARGS_MAX 48
#define LP_PORT_FIRST 17300 /* the ledger's area of test ports: 17300-17499 */
#define LP_PORT_SPAN 200
#define LP_PORT_STEP 7
#define LP_PORT_TRIES 28
#define LP_SIGNER_PORT_OFFSET 17 /* the stand-in signer: this far from the ledger, in its range */
#define LP_SIGNER_POLL_MS 50

static void path_in(const lp_t *lp, const char *name, char *out)
{
    qctest_path(lp->dir, name, out);
}

/* A key file of the allow-lists: one public key and a newline. */
static int write_key_line(const char *path, const char *key_z85)
{
    char line[PROTO_CURVE_KEY_Z85_LEN + 2];
    snprintf(line, sizeof line, "%s\n", key_z85);
    return qctest_file_write(path, line);
}

/* When the port is taken (by a process of an earlier test still closing, or another build tree
 * run without the ports lock), step through the test's range for a free one: the range CTest
 * gave the test (qc_test_ports), or the ledger's when it runs by hand. */
static int pick_port(int port)
{
    qctest_ports_t range = qctest_ports(LP_PORT_FIRST, LP_PORT_SPAN);
    return qctest_port_pick(&range, port, -1);
}

int lp_free_port(int port)
{
    return pick_port(port);
}

/* One "sign" request: the kind's type signed with the bank key, as qc-signer would. */
static void signer_serve(lp_t *lp, proto_rpc_server_t *srv, proto_rpc_request_t *req)
{
    Quancun__SignRequest *sr = quancun__sign_request__unpack(NULL, req->body_len, req->body);
    proto_type_t type = PROTO_TYPE_LOAD_ALLOW;
    int code = sr == NULL || strcmp(req->method, "sign") != 0 ? QC_EDECODE : 0;
    if (code == 0 && sr->kind == QUANCUN__SIGN_KIND__SIGN_LOAD_OUTCOME)
        type = PROTO_TYPE_LOAD_OUTCOME;
    else if (code == 0 && sr->kind != QUANCUN__SIGN_KIND__SIGN_LOAD_ALLOW)
        code = QC_EDENIED;
    uint8_t *env = NULL, *reply = NULL;
    size_t env_len = 0, reply_len = 0;
    if (code == 0)
        code = proto_envelope_sign(type, sr->body.data, sr->body.len, lp->bank, 1, NULL, 0, &env,
                                   &env_len);
    if (code == 0) {
        atomic_fetch_add(type == PROTO_TYPE_LOAD_ALLOW ? &lp->signed_allows : &lp->signed_outcomes,
                         1);
        Quancun__SignReply rep = QUANCUN__SIGN_REPLY__INIT;
        rep.signed_.data = env;
        rep.signed_.len = env_len;
        code = proto_pack(&rep.base, &reply, &reply_len);
    }
    if (proto_rpc_server_reply(srv, req, code, NULL, reply, reply_len) != 0)
        fprintf(stderr, "ledger_proc: the stand-in signer could not reply\n");
    free(env);
    free(reply);
    if (sr != NULL)
        quancun__sign_request__free_unpacked(sr, NULL);
}

static void *signer_main(void *arg)
{
    lp_t *lp = arg;
    void *ctx = zmq_ctx_new();
    char allow[LP_PATH_MAX];
    path_in(lp, "signer.allow", allow);
    proto_rpc_server_config_t cfg = {.service = "signer",
                                     .endpoint = lp->signer_endpoint,
                                     .keys = &lp->signer_keys,
                                     .allow_path = allow};
    proto_rpc_server_t *srv = NULL;
    if (ctx == NULL || proto_rpc_server_new(ctx, &cfg, &srv) != 0) {
        fprintf(stderr, "ledger_proc: the stand-in signer could not bind %s\n",
                lp->signer_endpoint);
        if (ctx != NULL)
            zmq_ctx_term(ctx);
        return NULL;
    }
    while (!atomic_load(&lp->signer_stop)) {
        proto_rpc_request_t *req = NULL;
        if (proto_rpc_server_recv(srv, LP_SIGNER_POLL_MS, &req) != 0)
            continue;
        if (!atomic_load(&lp->signer_down))
            signer_serve(lp, srv, req);
        proto_rpc_request_destroy(&req);
    }
    proto_rpc_server_destroy(&srv);
    zmq_ctx_term(ctx);
    return NULL;
}

static int signer_start(lp_t *lp)
{
    char p[LP_PATH_MAX];
    path_in(lp, "signer.key", p);
    if (proto_curve_keypair_create(p, &lp->signer_keys) != 0)
        return -1;
    path_in(lp, "signer.allow", p);
    if (write_key_line(p, lp->server.public_z85) != 0)
        return -1;
    qctest_ports_t range = qctest_ports(LP_PORT_FIRST, LP_PORT_SPAN);
    int port = qctest_port_pick(&range, lp->port + LP_SIGNER_PORT_OFFSET, lp->port);
    snprintf(lp->signer_endpoint, sizeof lp->signer_endpoint, "tcp://127.0.0.1:%d", port);
    atomic_store(&lp->signer_stop, false);
    atomic_store(&lp->signer_down, false);
    if (pthread_create(&lp->signer_thread, NULL, signer_main, lp) != 0)
        return -1;
    lp->signer_running = true;
    return 0;
}

void lp_signer_down(lp_t *lp, bool down)
{
    atomic_store(&lp->signer_down, down);
}

/* Copies the file name of like's dir into lp's (key files: small text). */
static int copy_from(lp_t *lp, const lp_t *like, const char *name)
{
    char from[LP_PATH_MAX], to[LP_PATH_MAX], text[4096];
    qctest_path(like->dir, name, from);
    path_in(lp, name, to);
    long n = qctest_file_read(from, text, sizeof text);
    if (n <= 0 || (size_t)n >= sizeof text - 1)
        return -1;
    return qctest_file_write(to, text);
}

/* The service's, the gateway's and the operator's CURVE keys and the bank key: new, or
 * like's (a replica of the same shard). */
static int keys_setup(lp_t *lp, const lp_t *like)
{
    char p[LP_PATH_MAX];
    static const char *const files[] = {"server.key", "gateway.key", "admin.key",
                                        "allow.keys", "admin.keys",  "allow.pem"};
    if (like != NULL) {
        for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
            if (copy_from(lp, like, files[i]) != 0)
                return -1;
        lp->server = like->server;
        lp->gateway = like->gateway;
        lp->admin = like->admin;
        if (EVP_PKEY_up_ref(like->bank) != 1)
            return -1;
        lp->bank = like->bank;
        return 0;
    }
    path_in(lp, "server.key", p);
    if (proto_curve_keypair_create(p, &lp->server) != 0)
        return -1;
    path_in(lp, "gateway.key", p);
    if (proto_curve_keypair_create(p, &lp->gateway) != 0)
        return -1;
    path_in(lp, "admin.key", p);
    if (proto_curve_keypair_create(p, &lp->admin) != 0)
        return -1;
    path_in(lp, "allow.keys", p);
    if (write_key_line(p, lp->gateway.public_z85) != 0)
        return -1;
    path_in(lp, "admin.keys", p);
    if (write_key_line(p, lp->admin.public_z85) != 0)
        return -1;
    lp->bank = qctest_key_new();
    path_in(lp, "allow.pem", p);
    qctest_write_pubkey(p, lp->bank);
    return 0;
}

int lp_setup(lp_t *lp, const char *bin, int port)
{
    return lp_setup_like(lp, bin, port, NULL);
}

int lp_setup_like(lp_t *lp, const char *bin, int port, const lp_t *like)
{
    memset(lp, 0, sizeof *lp);
    lp->pid = -1;
    lp->last_status = -1;
    if (qctest_dir_new("qc-ledger-proc", lp->dir) != 0)
        return -1;
    snprintf(lp->bin, sizeof lp->bin, "%s", bin);
    lp->port = pick_port(port);
    qctest_endpoint(lp->port, lp->endpoint);
    char p[LP_PATH_MAX];
    if (keys_setup(lp, like) != 0)
        return -1;
    path_in(lp, "data", p);
    if (mkdir(p, 0700) != 0)
        return -1;
    lp->zctx = zmq_ctx_new();
    if (lp->zctx == NULL)
        return -1;
    lp->gw = lp_client(lp, &lp->gateway);
    lp->op = lp_client(lp, &lp->admin);
    if (lp->gw == NULL || lp->op == NULL)
        return -1;
    return signer_start(lp);
}

proto_rpc_client_t *lp_client(lp_t *lp, const proto_curve_keypair_t *keys)
{
    proto_rpc_client_config_t cfg = {.service = "ledger",
                                     .endpoints = lp->endpoint,
                                     .server_public_z85 = lp->server.public_z85,
                                     .keys = keys};
    proto_rpc_client_t *cli = NULL;
    return proto_rpc_client_new(lp->zctx, &cfg, &cli) == 0 ? cli : NULL;
}

static int lp_call_within(proto_rpc_client_t *cli, const char *method, const ProtobufCMessage *msg,
                          int timeout_ms, proto_rpc_reply_t **out)
{
    uint8_t *body = NULL;
    size_t len = 0;
    if (msg != NULL && proto_pack(msg, &body, &len) != 0)
        return QC_ENOMEM;
    proto_rpc_reply_t *r = NULL;
    int rc = proto_rpc_client_call(cli, method, body, len, timeout_ms, PROTO_RPC_IDEMPOTENT, &r);
    free(body);
    if (rc != 0)
        return rc;
    rc = r->code;
    if (out != NULL)
        *out = r;
    else
        proto_rpc_reply_destroy(&r);
    return rc;
}

int lp_call(proto_rpc_client_t *cli, const char *method, const ProtobufCMessage *msg,
            proto_rpc_reply_t **out)
{
    return lp_call_within(cli, method, msg, LP_CALL_MS, out);
}

int lp_check(lp_t *lp)
{
    proto_rpc_reply_t *r = NULL;
    Qcledger__CheckRequest req = QCLEDGER__CHECK_REQUEST__INIT;
    /* A check reads the whole shard: seconds on a big one under ASan and load. */
    if (lp_call_within(lp->op, "check", &req.base, LP_CHECK_MS, &r) != 0) {
        proto_rpc_reply_destroy(&r);
        return -1;
    }
    Qcledger__CheckReply *c = qcledger__check_reply__unpack(NULL, r->body_len, r->body);
    proto_rpc_reply_destroy(&r);
    if (c == NULL)
        return -1;
    int ok = c->ok ? 1 : 0;
    for (size_t i = 0; i < c->n_problems; i++)
        fprintf(stderr, "check problem: %s\n", c->problems[i]);
    qcledger__check_reply__free_unpacked(c, NULL);
    return ok;
}

static int lp_start_once(lp_t *lp, const char *fault, int skip, const char *const *extra);

/* True once the ledger answers at all: a refusal counts; only silence does not. The probe is
 * shard_status, which every replica (and a ledger without replicas) answers itself from a few
 * keys of meta. It was `check`, which reads the whole shard: on a big store under load each
 * probe outlived its timeout and the start was reported failed (test_ledger_query in CI). */
static bool lp_answers(lp_t *lp)
{
    Qcledger__ShardStatusRequest req = QCLEDGER__SHARD_STATUS_REQUEST__INIT;
    int rc = lp_call(lp->op, "shard_status", &req.base, NULL);
    return rc != QC_ETIMEOUT && rc != QC_EUNAVAIL;
}

/* True when the log's last lines say the port was taken. */
static bool lost_port_race(const lp_t *lp)
{
    char log[LP_PATH_MAX], line[1024];
    path_in(lp, "ledger.log", log);
    FILE *f = fopen(log, "r");
    bool busy = false;
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        busy = strstr(line, "Address already in use") != NULL || (busy && strstr(line, "ledger."));
    if (f != NULL)
        fclose(f);
    return busy;
}

int lp_start(lp_t *lp, const char *fault, int skip, const char *const *extra)
{
    /* Another build tree running the same test may take our port between the probe and
     * the bind: move to another free port and reconnect the clients. */
    for (int attempt = 0; attempt < LP_PORT_TRIES; attempt++) {
        if (lp_start_once(lp, fault, skip, extra) == 0)
            return 0;
        if (lp->pid > 0 || !lost_port_race(lp))
            return -1;
        lp->port = pick_port(lp->port + 1);
        qctest_endpoint(lp->port, lp->endpoint);
        proto_rpc_client_destroy(&lp->gw);
        proto_rpc_client_destroy(&lp->op);
        lp->gw = lp_client(lp, &lp->gateway);
        lp->op = lp_client(lp, &lp->admin);
        char log[LP_PATH_MAX];
        path_in(lp, "ledger.log", log);
        if (truncate(log, 0) != 0)
            return -1;
    }
    return -1;
}

static int lp_start_once(lp_t *lp, const char *fault, int skip, const char *const *extra)
{
    char data[LP_PATH_MAX], key[LP_PATH_MAX], allow[LP_PATH_MAX], admin[LP_PATH_MAX],
        cert[LP_PATH_MAX], log[LP_PATH_MAX];
    path_in(lp, "data", data);
    path_in(lp, "server.key", key);
    path_in(lp, "allow.keys", allow);
    path_in(lp, "admin.keys", admin);
    path_in(lp, "allow.pem", cert);
    path_in(lp, "ledger.log", log);
    const char *args[LP_ARGS_MAX] = {lp->bin,
                                     "--listen",
                                     lp->endpoint,
                                     "--curve-key",
                                     key,
                                     "--allow-keys",
                                     allow,
                                     "--admin-keys",
                                     admin,
                                     "--data-dir",
                                     data,
                                     "--allow-cert",
                                     cert,
                                     "--map-size-mb",
                                     "256",
                                     "--signer",
                                     lp->signer_endpoint,
                                     "--signer-key",
                                     lp->signer_keys.public_z85};
    int n = 19;
    for (int i = 0; extra != NULL && extra[i] != NULL && n < LP_ARGS_MAX - 1; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    if (!lp->no_init && qctest_store_init(args, data, log) != 0)
        return -1;
    char fault_env[LP_PATH_MAX], skip_env[32];
    snprintf(fault_env, sizeof fault_env, "QC_FAULT=%s", fault != NULL ? fault : "");
    snprintf(skip_env, sizeof skip_env, "QC_FAULT_SKIP=%d", skip);
    const char *env[] = {fault != NULL ? fault_env : "QC_FAULT", fault != NULL ? skip_env : NULL,
                         NULL};
    qctest_cmd_t cmd = {.argv = (char *const *)args, .err_path = log, .env = env};
    pid_t pid = qctest_spawn(&cmd);
    if (pid < 0)
        return -1;
    lp->pid = pid;
    lp->last_status = -1;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        int status = qctest_wait(pid, 0);
        if (status != QCTEST_STATUS_RUNNING) {
            lp->pid = -1;
            lp->last_status = status;
            fprintf(stderr, "qc-ledger exited at start (status %d), see %s\n", status, log);
            return -1;
        }
        if (lp_answers(lp))
            return 0;
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) * 1000 > LP_READY_MS)
            return -1;
    }
}

bool lp_alive(lp_t *lp)
{
    if (lp->pid <= 0)
        return false;
    int status = qctest_wait(lp->pid, 0);
    if (status == QCTEST_STATUS_RUNNING)
        return true;
    lp->pid = -1;
    lp->last_status = status;
    return false;
}

int lp_wait_exit(lp_t *lp, int timeout_ms)
{
    if (lp->pid <= 0)
        return lp->last_status;
    int status = qctest_wait(lp->pid, timeout_ms);
    if (status != QCTEST_STATUS_RUNNING) {
        lp->pid = -1;
        lp->last_status = status;
    }
    return status;
}

int lp_stop(lp_t *lp, int sig)
{
    if (lp->pid <= 0)
        return -1;
    int status = qctest_stop(lp->pid, sig);
    lp->pid = -1;
    return status;
}

void lp_teardown(lp_t *lp)
{
    if (lp->pid > 0)
        lp_stop(lp, SIGKILL);
    if (lp->signer_running) {
        atomic_store(&lp->signer_stop, true);
        pthread_join(lp->signer_thread, NULL);
        lp->signer_running = false;
    }
    proto_curve_keypair_wipe(&lp->signer_keys);
    proto_rpc_client_destroy(&lp->gw);
    proto_rpc_client_destroy(&lp->op);
    if (lp->zctx != NULL)
        zmq_ctx_term(lp->zctx);
    lp->zctx = NULL;
    EVP_PKEY_free(lp->bank);
    lp->bank = NULL;
    proto_curve_keypair_wipe(&lp->server);
    proto_curve_keypair_wipe(&lp->gateway);
    proto_curve_keypair_wipe(&lp->admin);
    if (qctest_dir_remove(lp->dir) != 0)
        fprintf(stderr, "could not remove %s\n", lp->dir);
}

int lp_reserve(lp_t *lp, const uint8_t *req, size_t req_len, uint8_t **allow, size_t *allow_len)
{
    *allow = NULL;
    *allow_len = 0;
    Qcledger__ReserveRequest m = QCLEDGER__RESERVE_REQUEST__INIT;
    m.request.data = (uint8_t *)req;
    m.request.len = req_len;
    proto_rpc_reply_t *r = NULL;
    int rc = lp_call(lp->gw, "reserve", &m.base, &r);
    if (rc != 0) {
        proto_rpc_reply_destroy(&r);
        return rc;
    }
    Qcledger__ReserveReply *rr = qcledger__reserve_reply__unpack(NULL, r->body_len, r->body);
    proto_rpc_reply_destroy(&r);
    if (rr == NULL)
        return QC_EDECODE;
    if (rr->allow.len > 0 && (*allow = malloc(rr->allow.len)) != NULL) {
        memcpy(*allow, rr->allow.data, rr->allow.len);
        *allow_len = rr->allow.len;
    }
    qcledger__reserve_reply__free_unpacked(rr, NULL);
    return 0;
}

int lp_open_account(lp_t *lp, const char *id, uint32_t currency, int64_t load_max)
{
    Qcledger__OpenAccountRequest m = QCLEDGER__OPEN_ACCOUNT_REQUEST__INIT;
    m.account_id = (char *)id;
    m.currency = currency;
    m.load_max = load_max;
    return lp_call(lp->op, "open_account", &m.base, NULL);
}

int lp_deposit(lp_t *lp, const char *id, int64_t amount)
{
    uint8_t txn[16];
    tk_txn_id(txn);
    Qcledger__DepositRequest m = QCLEDGER__DEPOSIT_REQUEST__INIT;
    m.account_id = (char *)id;
    m.amount = amount;
    m.txn_id.data = txn;
    m.txn_id.len = sizeof txn;
    return lp_call(lp->op, "deposit", &m.base, NULL);
}

int lp_enroll(lp_t *lp, const char *account, const uint8_t *cert, size_t cert_len)
{
    Qcledger__EnrollDeviceRequest m = QCLEDGER__ENROLL_DEVICE_REQUEST__INIT;
    m.account_id = (char *)account;
    m.cert.data = (uint8_t *)cert;
    m.cert.len = cert_len;
    return lp_call(lp->op, "enroll_device", &m.base, NULL);
}

int64_t lp_balance(lp_t *lp, const char *id, bool *ok)
{
    Qcledger__GetAccountRequest m = QCLEDGER__GET_ACCOUNT_REQUEST__INIT;
    m.account_id = (char *)id;
    proto_rpc_reply_t *r = NULL;
    *ok = false;
    if (lp_call(lp->op, "get_account", &m.base, &r) != 0) {
        proto_rpc_reply_destroy(&r);
        return 0;
    }
    Qcledger__AccountReply *a = qcledger__account_reply__unpack(NULL, r->body_len, r->body);
    proto_rpc_reply_destroy(&r);
    if (a == NULL || a->account == NULL) {
        if (a != NULL)
            qcledger__account_reply__free_unpacked(a, NULL);
        return 0;
    }
    int64_t b = a->account->balance;
    qcledger__account_reply__free_unpacked(a, NULL);
    *ok = true;
    return b;
}
