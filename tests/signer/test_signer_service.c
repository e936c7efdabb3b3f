/* test_signer_service.c - qc-signer as a process: signing over CURVE RPC, refusals, start-up
 * failures, two signers on one token, kill -9 under load.
 *
 * Usage: test_signer_service QC_SIGNER_BINARY GROUP, GROUP one of "sign", "startup", "chaos".
 * Each test makes its own dev HSM with ops/devhsm (which runs `qc-signer keygen`), so the
 * keygen path and the devhsm script are exercised too. Ports: each group its own range
 * (qc_test_ports in tests/signer/CMakeLists.txt): sign 17500-17509, startup 17510-17519, chaos
 * 17520-17539. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

#include "ops_time.h"
#include "proto_cert.h"
#include "proto_decode.h"
#include "proto_ecdsa.h"
#include "proto_envelope.h"
#include "proto_rpc.h"
#include "qc_error.h"
#include "signer.pb-c.h"
#include "qctest_fs.h"
#include "qctest_proc.h"
#include "signer_test_util.h"
#include "qctest_http.h"
#include "qctest_port.h"

#define TEST_RANDOM_SIGNATURES 2000 /* a short r or s (p = 1/128 each) is missed with p < 1e-6 */
#define TEST_READY_TIMEOUT_MS 20000
#define TEST_CALL_TIMEOUT_MS 2000
#define TEST_EXIT_TIMEOUT_MS 20000
#define TEST_LOAD_CALLS 400
#define TEST_LOAD_WINDOW 32
#define TEST_HTTP_MAX 65536
#define TEST_SIGNERS_MAX 2
#define TEST_CLIENTS_MAX 4

static const char *signer_bin;
static qctest_ports_t ports; /* the group's range */
#define T_PORT(i) qctest_port(&ports, (i))

typedef struct fixture {
    char dir[SIGNER_TEST_DIR_MAX];
    char hsm[SIGNER_TEST_PATH_MAX];
    char pin_file[SIGNER_TEST_PATH_MAX + 16];
    char server_key[SIGNER_TEST_PATH_MAX];
    char client_key[SIGNER_TEST_PATH_MAX];
    char allow[SIGNER_TEST_PATH_MAX + 16];
    /* Role files: the test client holds both roles unless a test says otherwise. */
    char ledger_keys[SIGNER_TEST_PATH_MAX + 16];
    char audit_keys[SIGNER_TEST_PATH_MAX + 16];
    char log[SIGNER_TEST_PATH_MAX];
    proto_curve_keypair_t server_kp, client_kp;
    EVP_PKEY *pub[3]; /* allow, outcome, checkpoint */
    void *zctx;
    pid_t pids[TEST_SIGNERS_MAX];
    /* Every client a test opens, so teardown closes them even after a failed assertion:
     * an open socket would make zmq_ctx_term() wait forever. */
    proto_rpc_client_t *clients[TEST_CLIENTS_MAX];
} fixture_t;

static const char *const key_labels[3] = {"allow-signing", "outcome-signing", "audit-checkpoint"};

static void path_in(const fixture_t *f, char out[SIGNER_TEST_PATH_MAX], const char *name)
{
    snprintf(out, SIGNER_TEST_PATH_MAX, "%s/%s", f->dir, name);
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    *state = f;
    assert_int_equal(qctest_dir_new("qc-signer-svc", f->dir), 0);
    path_in(f, f->hsm, "hsm");
    path_in(f, f->log, "signer.log");
    snprintf(f->pin_file, sizeof(f->pin_file), "%s/pin", f->hsm);

    const char *src = getenv("QC_SOURCE_DIR");
    assert_non_null(src);
    char devhsm[SIGNER_TEST_PATH_MAX];
    snprintf(devhsm, sizeof(devhsm), "%s/ops/devhsm", src);
    char *argv[] = {
        devhsm, "init", f->hsm, "--pin", SIGNER_TEST_PIN, "--signer", (char *)signer_bin, NULL};
    assert_int_equal(qctest_run_argv(argv), 0);
    char conf[SIGNER_TEST_PATH_MAX + 16];
    snprintf(conf, sizeof(conf), "%s/softhsm2.conf", f->hsm);
    assert_int_equal(setenv("SOFTHSM2_CONF", conf, 1), 0);
    unsetenv("QC_SIGNER_PIN");

    for (int k = 0; k < 3; k++) {
        char pem[SIGNER_TEST_PATH_MAX + 64];
        snprintf(pem, sizeof(pem), "%s/keys/%s-v1.pub.pem", f->hsm, key_labels[k]);
        assert_int_equal(proto_key_load_pem(pem, &f->pub[k]), 0);
    }
    path_in(f, f->server_key, "server.key");
    path_in(f, f->client_key, "client.key");
    assert_int_equal(proto_curve_keypair_create(f->server_key, &f->server_kp), 0);
    assert_int_equal(proto_curve_keypair_create(f->client_key, &f->client_kp), 0);
    snprintf(f->allow, sizeof(f->allow), "%s.pub", f->client_key);
    snprintf(f->ledger_keys, sizeof(f->ledger_keys), "%s", f->allow);
    snprintf(f->audit_keys, sizeof(f->audit_keys), "%s", f->allow);
    f->zctx = zmq_ctx_new();
    assert_non_null(f->zctx);
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    for (int i = 0; i < TEST_SIGNERS_MAX; i++)
        qctest_stop(f->pids[i], SIGKILL);
    for (int k = 0; k < 3; k++)
        EVP_PKEY_free(f->pub[k]);
    for (int i = 0; i < TEST_CLIENTS_MAX; i++)
        proto_rpc_client_destroy(&f->clients[i]);
    zmq_ctx_term(f->zctx);
    qctest_dir_remove(f->dir);
    free(f);
    return 0;
}

/* Starts qc-signer on rpc_port (http_port 0 = none) with extra flags (NULL terminated). */
static pid_t start_signer(fixture_t *f, int rpc_port, int http_port, ...)
{
    char listen[64], http[16];
    snprintf(listen, sizeof(listen), "tcp://127.0.0.1:%d", rpc_port);
    snprintf(http, sizeof(http), "%d", http_port);
    char *argv[QCTEST_ARGS_MAX] = {
        (char *)signer_bin,
        "--listen",
        listen,
        "--curve-key",
        f->server_key,
        "--allow",
        f->allow,
        "--http-port",
        http,
        "--token-label",
        "quancun",
        "--workers",
        "2",
        "--pin-file",
        f->pin_file,
        "--ledger-keys",
        f->ledger_keys,
        "--audit-keys",
        f->audit_keys,
    };
    int argc = 19;
    va_list ap;
    va_start(ap, http_port);
    for (char *a; (a = va_arg(ap, char *)) != NULL && argc < QCTEST_ARGS_MAX - 1;)
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    return qctest_spawn(&(qctest_cmd_t){.argv = argv, .out_path = f->log, .err_path = f->log});
}

/* A client of the signer with key pair kp, closed by the teardown. */
static proto_rpc_client_t *client_with(fixture_t *f, int rpc_port, const proto_curve_keypair_t *kp)
{
    char ep[64];
    snprintf(ep, sizeof(ep), "tcp://127.0.0.1:%d", rpc_port);
    proto_rpc_client_config_t cfg = {
        .service = "signer",
        .endpoints = ep,
        .server_public_z85 = f->server_kp.public_z85,
        .keys = kp,
    };
    for (int i = 0; i < TEST_CLIENTS_MAX; i++) {
        if (f->clients[i] == NULL) {
            assert_int_equal(proto_rpc_client_new(f->zctx, &cfg, &f->clients[i]), 0);
            return f->clients[i];
        }
    }
    fail_msg("more than %d clients open", TEST_CLIENTS_MAX);
    return NULL;
}

static proto_rpc_client_t *client_for(fixture_t *f, int rpc_port)
{
    return client_with(f, rpc_port, &f->client_kp);
}

/* Closes a client opened by client_for(). */
static void client_close(fixture_t *f, proto_rpc_client_t *cli)
{
    for (int i = 0; i < TEST_CLIENTS_MAX; i++) {
        if (f->clients[i] == cli) {
            proto_rpc_client_destroy(&f->clients[i]);
            return;
        }
    }
    fail_msg("unknown client");
}

/* ---------------------------------------------------------------- bodies */

static uint8_t *pack(const ProtobufCMessage *m, size_t *len)
{
    uint8_t *out = NULL;
    assert_int_equal(proto_pack(m, &out, len), 0);
    return out;
}

static uint8_t *allow_body(size_t *len)
{
    static uint8_t txn[PROTO_TXN_ID_SIZE], digest[PROTO_DIGEST_SIZE];
    RAND_bytes(txn, sizeof(txn));
    RAND_bytes(digest, sizeof(digest));
    Quancun__LoadAllow m = QUANCUN__LOAD_ALLOW__INIT;
    m.txn_id.data = txn;
    m.txn_id.len = sizeof(txn);
    m.device_id = "dev-0001";
    m.account_id = "acct-0001";
    m.amount = 1200;
    m.currency = 156;
    m.counter = 3;
    m.request_digest.data = digest;
    m.request_digest.len = sizeof(digest);
    m.host_time_ms = ops_time_wall_ms();
    m.deadline_ms = m.host_time_ms + 60000;
    return pack(&m.base, len);
}

static uint8_t *outcome_body(size_t *len)
{
    static uint8_t txn[PROTO_TXN_ID_SIZE];
    RAND_bytes(txn, sizeof(txn));
    Quancun__LoadOutcome m = QUANCUN__LOAD_OUTCOME__INIT;
    m.txn_id.data = txn;
    m.txn_id.len = sizeof(txn);
    m.device_id = "dev-0001";
    m.state = QUANCUN__LOAD_STATE__LOAD_CONFIRMED;
    m.amount = 1200;
    m.currency = 156;
    m.host_time_ms = ops_time_wall_ms();
    return pack(&m.base, len);
}

static uint8_t *checkpoint_body(uint64_t seq, size_t *len)
{
    static uint8_t hash[PROTO_DIGEST_SIZE];
    RAND_bytes(hash, sizeof(hash));
    Quancun__AuditCheckpoint m = QUANCUN__AUDIT_CHECKPOINT__INIT;
    m.seq = seq;
    m.hash.data = hash;
    m.hash.len = sizeof(hash);
    m.time_ms = ops_time_wall_ms();
    return pack(&m.base, len);
}

static uint8_t *sign_request(Quancun__SignKind kind, const uint8_t *body, size_t body_len,
                             size_t *len)
{
    Quancun__SignRequest r = QUANCUN__SIGN_REQUEST__INIT;
    r.kind = kind;
    r.body.data = (uint8_t *)body;
    r.body.len = body_len;
    return pack(&r.base, len);
}

/* Calls sign; returns the RPC code (or the transport error) and, on success, the Signed
 * envelope bytes in *env (malloc'd). */
static int call_sign(proto_rpc_client_t *cli, Quancun__SignKind kind, const uint8_t *body,
                     size_t body_len, int timeout_ms, uint8_t **env, size_t *env_len)
{
    size_t req_len = 0;
    uint8_t *req = sign_request(kind, body, body_len, &req_len);
    proto_rpc_reply_t *reply = NULL;
    int rc =
        proto_rpc_client_call(cli, "sign", req, req_len, timeout_ms, PROTO_RPC_IDEMPOTENT, &reply);
    free(req);
    if (rc != 0)
        return rc;
    rc = reply->code;
    if (rc == 0 && env != NULL) {
        Quancun__SignReply *sr = quancun__sign_reply__unpack(NULL, reply->body_len, reply->body);
        assert_non_null(sr);
        *env = malloc(sr->signed_.len);
        assert_non_null(*env);
        memcpy(*env, sr->signed_.data, sr->signed_.len);
        *env_len = sr->signed_.len;
        quancun__sign_reply__free_unpacked(sr, NULL);
    }
    proto_rpc_reply_destroy(&reply);
    return rc;
}

/* Checks an envelope the way a device does: open, verify with the exported public key,
 * same body, version 1. Returns the raw signature in raw. */
static void check_envelope(const uint8_t *env, size_t env_len, proto_type_t type, EVP_PKEY *pub,
                           const uint8_t *body, size_t body_len, uint8_t raw[PROTO_SIG_RAW_SIZE])
{
    proto_envelope_t *e = NULL;
    assert_int_equal(proto_envelope_open(env, env_len, &e), 0);
    assert_int_equal(proto_envelope_verify(e, type, pub), 0);
    /* The same signature must not pass as another type (contexts differ). */
    proto_type_t other =
        type == PROTO_TYPE_LOAD_ALLOW ? PROTO_TYPE_LOAD_OUTCOME : PROTO_TYPE_LOAD_ALLOW;
    assert_int_not_equal(proto_envelope_verify(e, other, pub), 0);
    assert_int_equal(proto_envelope_key_version(e), 1);
    size_t got_len = 0;
    const uint8_t *got = proto_envelope_body(e, &got_len);
    assert_int_equal(got_len, body_len);
    assert_memory_equal(got, body, body_len);
    if (raw != NULL) {
        /* Re-encode the envelope's DER to find the scalars' leading bytes. */
        Quancun__Signed *s = quancun__signed__unpack(NULL, env_len, env);
        assert_non_null(s);
        assert_int_equal(proto_ecdsa_der_to_raw(s->signature.data, s->signature.len, raw), 0);
        quancun__signed__free_unpacked(s, NULL);
    }
    proto_envelope_destroy(&e);
}

/* Waits until the signer on rpc_port signs, failing if pid exits first. */
static void wait_ready(fixture_t *f, proto_rpc_client_t *cli, pid_t pid)
{
    uint64_t end = ops_time_mono_ms() + TEST_READY_TIMEOUT_MS;
    size_t len = 0;
    uint8_t *body = checkpoint_body(1, &len);
    int rc = -1;
    while (ops_time_mono_ms() < end) {
        rc = call_sign(cli, QUANCUN__SIGN_KIND__SIGN_AUDIT_CHECKPOINT, body, len, 500, NULL, NULL);
        if (rc == 0)
            break;
        if (qctest_wait(pid, 0) != QCTEST_STATUS_RUNNING) {
            print_error("qc-signer exited during start; log %s\n", f->log);
            break;
        }
    }
    free(body);
    assert_int_equal(rc, 0);
}

/* ---------------------------------------------------------------- group "sign" */

static void test_sign_every_kind_and_verify(void **state)
{
    fixture_t *f = *state;
    f->pids[0] = start_signer(f, T_PORT(0), T_PORT(9), NULL);
    proto_rpc_client_t *cli = client_for(f, T_PORT(0));
    wait_ready(f, cli, f->pids[0]);

    struct {
        Quancun__SignKind kind;
        proto_type_t type;
        uint8_t *body;
        size_t len;
    } cases[3];
    cases[0].kind = QUANCUN__SIGN_KIND__SIGN_LOAD_ALLOW;
    cases[0].type = PROTO_TYPE_LOAD_ALLOW;
    cases[0].body = allow_body(&cases[0].len);
    cases[1].kind = QUANCUN__SIGN_KIND__SIGN_LOAD_OUTCOME;
    cases[1].type = PROTO_TYPE_LOAD_OUTCOME;
    cases[1].body = outcome_body(&cases[1].len);
    cases[2].kind = QUANCUN__SIGN_KIND__SIGN_AUDIT_CHECKPOINT;
    cases[2].type = PROTO_TYPE_AUDIT_CHECKPOINT;
    cases[2].body = checkpoint_body(7, &cases[2].len);
    for (int k = 0; k < 3; k++) {
        uint8_t *env = NULL;
        size_t env_len = 0;
        assert_int_equal(call_sign(cli, cases[k].kind, cases[k].body, cases[k].len,
                                   TEST_CALL_TIMEOUT_MS, &env, &env_len),
                         0);
        check_envelope(env, env_len, cases[k].type, f->pub[k], cases[k].body, cases[k].len, NULL);
        /* Signed by the kind's own key, not another one. */
        proto_envelope_t *e = NULL;
        assert_int_equal(proto_envelope_open(env, env_len, &e), 0);
        assert_int_equal(proto_envelope_verify(e, cases[k].type, f->pub[(k + 1) % 3]), QC_EKEYID);
        proto_envelope_destroy(&e);
        free(env);
        free(cases[k].body);
    }

    /* Counted in metrics, by kind; and reported as a "sign" audit event. */
    char *page = malloc(TEST_HTTP_MAX);
    assert_non_null(page);
    qctest_http(T_PORT(9), "GET", "/metrics", page, TEST_HTTP_MAX);
    assert_non_null(strstr(page, "qc_signer_signatures_total{kind=\"load_allow\"} 1"));
    assert_non_null(strstr(page, "qc_signer_signatures_total{kind=\"load_outcome\"} 1"));
    qctest_http(T_PORT(9), "GET", "/healthz", page, TEST_HTTP_MAX);
    assert_non_null(strstr(page, "200"));
    free(page);
    assert_true(qctest_file_contains(f->log, "\"event\":\"sign\",\"label\":\"allow-signing\","
                                             "\"version\":\"1\",\"kind\":\"load_allow\""));

    /* SIGTERM is a clean stop. */
    client_close(f, cli);
    assert_int_equal(qctest_exit_code(qctest_stop(f->pids[0], SIGTERM)), 0);
    f->pids[0] = 0;
    assert_true(qctest_file_contains(f->log, "signer.stopped"));
}

static void write_keys(const char *path, const char *a, const char *b, const char *c)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fprintf(fp, "# written by test_signer_service\n");
    const char *keys[3] = {a, b, c};
    for (int i = 0; i < 3; i++)
        if (keys[i] != NULL)
            fprintf(fp, "%s\n", keys[i]);
    assert_int_equal(fclose(fp), 0);
}

/* The code of one sign call of kind by cli, with a fresh body. */
static int sign_kind(proto_rpc_client_t *cli, Quancun__SignKind kind)
{
    size_t len = 0;
    uint8_t *body = kind == QUANCUN__SIGN_KIND__SIGN_LOAD_ALLOW     ? allow_body(&len)
                    : kind == QUANCUN__SIGN_KIND__SIGN_LOAD_OUTCOME ? outcome_body(&len)
                                                                    : checkpoint_body(9, &len);
    int rc = call_sign(cli, kind, body, len, TEST_CALL_TIMEOUT_MS, NULL, NULL);
    free(body);
    return rc;
}

/* Roles by kind: allows and outcomes for ledger keys only, checkpoints for audit keys only. A
 * gateway's key the allow-list admits (a misconfiguration) gets nothing signed: QC_EROLE,
 * counted, logged as a security event, and no signature made. The roles are re-read on
 * SIGHUP, and a file that no longer loads keeps them. A signer without role files does not
 * start. */
static void test_roles_by_kind(void **state)
{
    fixture_t *f = *state;
    const Quancun__SignKind allow = QUANCUN__SIGN_KIND__SIGN_LOAD_ALLOW,
                            outcome = QUANCUN__SIGN_KIND__SIGN_LOAD_OUTCOME,
                            checkpoint = QUANCUN__SIGN_KIND__SIGN_AUDIT_CHECKPOINT;
    proto_curve_keypair_t ledger_kp, gateway_kp;
    char ledger_key[SIGNER_TEST_PATH_MAX], gateway_key[SIGNER_TEST_PATH_MAX];
    path_in(f, ledger_key, "ledger.key");
    path_in(f, gateway_key, "gateway.key");
    assert_int_equal(proto_curve_keypair_create(ledger_key, &ledger_kp), 0);
    assert_int_equal(proto_curve_keypair_create(gateway_key, &gateway_kp), 0);
    /* Everyone may connect; the test client is the audit service. */
    path_in(f, f->allow, "all.allow");
    write_keys(f->allow, f->client_kp.public_z85, ledger_kp.public_z85, gateway_kp.public_z85);
    path_in(f, f->ledger_keys, "ledger.roles");
    write_keys(f->ledger_keys, ledger_kp.public_z85, NULL, NULL);
    path_in(f, f->audit_keys, "audit.roles");
    write_keys(f->audit_keys, f->client_kp.public_z85, NULL, NULL);

    f->pids[0] = start_signer(f, T_PORT(3), T_PORT(8), NULL);
    proto_rpc_client_t *audit = client_for(f, T_PORT(3));
    wait_ready(f, audit, f->pids[0]); /* a checkpoint, for the audit key */
    proto_rpc_client_t *ledger = client_with(f, T_PORT(3), &ledger_kp);
    proto_rpc_client_t *gateway = client_with(f, T_PORT(3), &gateway_kp);

    assert_int_equal(sign_kind(gateway, allow), QC_EROLE);
    assert_int_equal(sign_kind(gateway, outcome), QC_EROLE);
    assert_int_equal(sign_kind(gateway, checkpoint), QC_EROLE);
    assert_int_equal(sign_kind(ledger, checkpoint), QC_EROLE);
    assert_int_equal(sign_kind(audit, allow), QC_EROLE);
    assert_int_equal(sign_kind(ledger, allow), 0);
    assert_int_equal(sign_kind(ledger, outcome), 0);
    assert_int_equal(sign_kind(audit, checkpoint), 0);

    /* Nothing was signed for a refused caller: one allow and one outcome (the ledger's), and
     * two checkpoints (the audit's, wait_ready's included). */
    char *page = malloc(TEST_HTTP_MAX);
    assert_non_null(page);
    qctest_http(T_PORT(8), "GET", "/metrics", page, TEST_HTTP_MAX);
    assert_non_null(strstr(page, "qc_signer_signatures_total{kind=\"load_allow\"} 1"));
    assert_non_null(strstr(page, "qc_signer_signatures_total{kind=\"load_outcome\"} 1"));
    assert_non_null(strstr(page, "qc_signer_signatures_total{kind=\"audit_checkpoint\"} 2"));
    assert_non_null(strstr(page, "qc_signer_refused_total{kind=\"load_allow\"} 2"));
    assert_non_null(strstr(page, "qc_signer_refused_total{kind=\"load_outcome\"} 1"));
    assert_non_null(strstr(page, "qc_signer_refused_total{kind=\"audit_checkpoint\"} 2"));
    char line[256];
    snprintf(line, sizeof line, "\"event\":\"security.sign_refused\",\"peer\":\"%s\"",
             gateway_kp.public_z85);
    assert_true(qctest_file_contains(f->log, line));

    /* SIGHUP: the gateway's key is made a ledger key; then a role file that does not load is
     * refused and the roles in force stay. */
    write_keys(f->ledger_keys, ledger_kp.public_z85, gateway_kp.public_z85, NULL);
    assert_int_equal(kill(f->pids[0], SIGHUP), 0);
    int rc = QC_EROLE;
    for (int i = 0; i < 50 && rc == QC_EROLE; i++) {
        rc = sign_kind(gateway, allow);
        if (rc == QC_EROLE)
            usleep(100000);
    }
    assert_int_equal(rc, 0);
    write_keys(f->audit_keys, "not a key", NULL, NULL);
    assert_int_equal(kill(f->pids[0], SIGHUP), 0);
    for (int i = 0; i < 50 && !qctest_file_contains(f->log, "signer.roles_reload_failed"); i++)
        usleep(100000);
    assert_true(qctest_file_contains(f->log, "signer.roles_reload_failed"));
    assert_int_equal(sign_kind(audit, checkpoint), 0);
    assert_int_equal(sign_kind(gateway, checkpoint), QC_EROLE);
    free(page);
    client_close(f, gateway);
    client_close(f, ledger);
    client_close(f, audit);
    assert_int_equal(qctest_exit_code(qctest_stop(f->pids[0], SIGTERM)), 0);
    f->pids[0] = 0;

    /* No role files: it does not start. */
    f->audit_keys[0] = '\0';
    char listen[64];
    snprintf(listen, sizeof(listen), "tcp://127.0.0.1:%d", T_PORT(4));
    char *argv[] = {(char *)signer_bin, "--listen",   listen,      "--curve-key",
                    f->server_key,      "--allow",    f->allow,    "--token-label",
                    "quancun",          "--pin-file", f->pin_file, "--ledger-keys",
                    f->ledger_keys,     NULL};
    pid_t pid = qctest_spawn(&(qctest_cmd_t){.argv = argv, .out_path = f->log, .err_path = f->log});
    int status = qctest_exit_code(qctest_wait(pid, TEST_EXIT_TIMEOUT_MS));
    assert_true(status > 0);
    assert_true(qctest_file_contains(f->log, "ledger_keys and audit_keys are required"));
    proto_curve_keypair_wipe(&ledger_kp);
    proto_curve_keypair_wipe(&gateway_kp);
}

static void test_many_random_digests(void **state)
{
    fixture_t *f = *state;
    f->pids[0] = start_signer(f, T_PORT(1), 0, NULL);
    proto_rpc_client_t *cli = client_for(f, T_PORT(1));
    wait_ready(f, cli, f->pids[0]);
    int short_scalars = 0;
    for (int i = 0; i < TEST_RANDOM_SIGNATURES; i++) {
        size_t len = 0;
        uint8_t *body = checkpoint_body((uint64_t)i + 1, &len);
        uint8_t *env = NULL;
        size_t env_len = 0;
        assert_int_equal(call_sign(cli, QUANCUN__SIGN_KIND__SIGN_AUDIT_CHECKPOINT, body, len,
                                   TEST_CALL_TIMEOUT_MS, &env, &env_len),
                         0);
        uint8_t raw[PROTO_SIG_RAW_SIZE];
        check_envelope(env, env_len, PROTO_TYPE_AUDIT_CHECKPOINT, f->pub[2], body, len, raw);
        if (raw[0] == 0 || raw[PROTO_SIG_RAW_SIZE / 2] == 0)
            short_scalars++;
        free(env);
        free(body);
    }
    assert_true(short_scalars > 0);
    client_close(f, cli);
}

static void test_refuses_wrong_type(void **state)
{
    fixture_t *f = *state;
    f->pids[0] = start_signer(f, T_PORT(2), 0, NULL);
    proto_rpc_client_t *cli = client_for(f, T_PORT(2));
    wait_ready(f, cli, f->pids[0]);
    size_t a_len = 0, o_len = 0, c_len = 0;
    uint8_t *allow = allow_body(&a_len);
    uint8_t *outcome = outcome_body(&o_len);
    uint8_t *cp = checkpoint_body(5, &c_len);
    const uint8_t junk[] = {0xff, 0xff, 0xff, 0x01, 0x02};

    assert_int_equal(call_sign(cli, QUANCUN__SIGN_KIND__SIGN_LOAD_ALLOW, outcome, o_len,
                               TEST_CALL_TIMEOUT_MS, NULL, NULL),
                     QC_EDECODE);
    assert_int_equal(call_sign(cli, QUANCUN__SIGN_KIND__SIGN_LOAD_ALLOW, cp, c_len,
                               TEST_CALL_TIMEOUT_MS, NULL, NULL),
                     QC_EDECODE);
    assert_int_equal(call_sign(cli, QUANCUN__SIGN_KIND__SIGN_LOAD_OUTCOME, allow, a_len,
                               TEST_CALL_TIMEOUT_MS, NULL, NULL),
                     QC_EDECODE);
    assert_int_equal(call_sign(cli, QUANCUN__SIGN_KIND__SIGN_AUDIT_CHECKPOINT, allow, a_len,
                               TEST_CALL_TIMEOUT_MS, NULL, NULL),
                     QC_EDECODE);
    assert_int_equal(call_sign(cli, QUANCUN__SIGN_KIND__SIGN_AUDIT_CHECKPOINT, junk, sizeof(junk),
                               TEST_CALL_TIMEOUT_MS, NULL, NULL),
                     QC_EDECODE);
    assert_int_equal(call_sign(cli, QUANCUN__SIGN_KIND__SIGN_NONE, allow, a_len,
                               TEST_CALL_TIMEOUT_MS, NULL, NULL),
                     QC_EDECODE);
    assert_int_equal(call_sign(cli, QUANCUN__SIGN_KIND__SIGN_LOAD_ALLOW, NULL, 0,
                               TEST_CALL_TIMEOUT_MS, NULL, NULL),
                     QC_EDECODE);

    /* A request that is not a SignRequest at all, and another method. */
    proto_rpc_reply_t *reply = NULL;
    assert_int_equal(
        proto_rpc_client_call(cli, "sign", junk, sizeof(junk), TEST_CALL_TIMEOUT_MS, 0, &reply), 0);
    assert_int_equal(reply->code, QC_EDECODE);
    proto_rpc_reply_destroy(&reply);
    assert_int_equal(
        proto_rpc_client_call(cli, "verify", junk, sizeof(junk), TEST_CALL_TIMEOUT_MS, 0, &reply),
        0);
    assert_int_equal(reply->code, QC_EMETHOD);
    proto_rpc_reply_destroy(&reply);

    /* And the right type still signs. */
    assert_int_equal(call_sign(cli, QUANCUN__SIGN_KIND__SIGN_LOAD_ALLOW, allow, a_len,
                               TEST_CALL_TIMEOUT_MS, NULL, NULL),
                     0);
    free(allow);
    free(outcome);
    free(cp);
    client_close(f, cli);
}

/* ---------------------------------------------------------------- group "startup" */

/* Starts a signer with extra flags and expects it to exit non-zero, logging needle. */
static void expect_start_failure(fixture_t *f, int port, const char *needle, char *flag,
                                 char *value)
{
    f->pids[0] = start_signer(f, port, 0, flag, value, NULL);
    int status = qctest_exit_code(qctest_wait(f->pids[0], TEST_EXIT_TIMEOUT_MS));
    f->pids[0] = status >= 0 ? 0 : f->pids[0];
    assert_int_equal(status, 1); /* an orderly failure: no crash, no leak report */
    if (!qctest_file_contains(f->log, needle))
        print_error("log %s lacks %s\n", f->log, needle);
    assert_true(qctest_file_contains(f->log, needle));
}

static void test_wrong_pin_fails_loudly(void **state)
{
    fixture_t *f = *state;
    char bad[SIGNER_TEST_PATH_MAX];
    path_in(f, bad, "badpin");
    FILE *p = fopen(bad, "w");
    assert_non_null(p);
    fputs("000000\n", p);
    fclose(p);
    expect_start_failure(f, T_PORT(0), "CKR_PIN_INCORRECT", "--pin-file", bad);
    assert_true(qctest_file_contains(f->log, "signer.login_failed"));
}

static void test_missing_key_fails_loudly(void **state)
{
    fixture_t *f = *state;
    expect_start_failure(f, T_PORT(1),
                         "\"event\":\"signer.key_missing\",\"label\":\"outcome-signing\","
                         "\"version\":\"v7\"",
                         "--outcome-key-version", "7");
}

static void test_missing_token_module_pin_fail_loudly(void **state)
{
    fixture_t *f = *state;
    expect_start_failure(f, T_PORT(2), "signer.token_missing", "--token-label", "no-such-token");
    expect_start_failure(f, T_PORT(3), "signer.module_missing", "--module", "/nonexistent/p11.so");
    expect_start_failure(f, T_PORT(4), "signer.pin_missing", "--pin-file", "/nonexistent/pin");
    expect_start_failure(f, T_PORT(5), "signer.pin_missing", "--pin-file", "");
}

static void test_keygen_refuses_existing_key(void **state)
{
    fixture_t *f = *state;
    char out[SIGNER_TEST_PATH_MAX];
    path_in(f, out, "keys2");
    char *mk[] = {"mkdir", out, NULL};
    assert_int_equal(qctest_run_argv(mk), 0);
    char *argv[] = {(char *)signer_bin,
                    "keygen",
                    "--token-label",
                    "quancun",
                    "--pin-file",
                    f->pin_file,
                    "--label",
                    "allow-signing",
                    "--version",
                    "1",
                    "--out",
                    out,
                    "--log-level",
                    "error",
                    NULL};
    /* devhsm made allow-signing v1 already: the token refuses a second one. */
    assert_int_equal(qctest_run_argv(argv), 1);
    char pub[SIGNER_TEST_PATH_MAX + 32];
    snprintf(pub, sizeof(pub), "%s/allow-signing-v1.pub.pem", out);
    assert_int_not_equal(access(pub, F_OK), 0);
    /* Version 2 is new: made, and its files written. */
    argv[9] = "2";
    assert_int_equal(qctest_run_argv(argv), 0);
    snprintf(pub, sizeof(pub), "%s/allow-signing-v2.pub.pem", out);
    assert_int_equal(access(pub, F_OK), 0);
    /* And a signer configured for allow-signing v2 signs with it. */
    f->pids[0] = start_signer(f, T_PORT(6), 0, "--allow-key-version", "2", NULL);
    proto_rpc_client_t *cli = client_for(f, T_PORT(6));
    wait_ready(f, cli, f->pids[0]);
    EVP_PKEY *v2 = NULL;
    assert_int_equal(proto_key_load_pem(pub, &v2), 0);
    size_t len = 0;
    uint8_t *body = allow_body(&len);
    uint8_t *env = NULL;
    size_t env_len = 0;
    assert_int_equal(call_sign(cli, QUANCUN__SIGN_KIND__SIGN_LOAD_ALLOW, body, len,
                               TEST_CALL_TIMEOUT_MS, &env, &env_len),
                     0);
    proto_envelope_t *e = NULL;
    assert_int_equal(proto_envelope_open(env, env_len, &e), 0);
    assert_int_equal(proto_envelope_key_version(e), 2);
    assert_int_equal(proto_envelope_verify(e, PROTO_TYPE_LOAD_ALLOW, v2), 0);
    assert_int_equal(proto_envelope_verify(e, PROTO_TYPE_LOAD_ALLOW, f->pub[0]), QC_EKEYID);
    proto_envelope_destroy(&e);
    EVP_PKEY_free(v2);
    free(env);
    free(body);
    client_close(f, cli);
}

/* ---------------------------------------------------------------- group "chaos" */

static void test_fault_after_sign_then_restart(void **state)
{
    fixture_t *f = *state;
    setenv("QC_FAULT", "signer.after_sign", 1);
    f->pids[0] = start_signer(f, T_PORT(11), 0, NULL);
    unsetenv("QC_FAULT");
    proto_rpc_client_t *cli = client_for(f, T_PORT(11));
    size_t len = 0;
    uint8_t *body = checkpoint_body(3, &len);
    /* The first signature kills it before the reply: the caller sees no answer. */
    uint64_t end = ops_time_mono_ms() + TEST_READY_TIMEOUT_MS;
    int status = -1;
    while (status < 0 && ops_time_mono_ms() < end) {
        assert_int_not_equal(
            call_sign(cli, QUANCUN__SIGN_KIND__SIGN_AUDIT_CHECKPOINT, body, len, 500, NULL, NULL),
            0);
        status = qctest_exit_code(qctest_wait(f->pids[0], 0));
    }
    assert_int_equal(status, 128 + SIGKILL);
    f->pids[0] = 0;
    client_close(f, cli);
    f->pids[0] = start_signer(f, T_PORT(11), 0, NULL);
    cli = client_for(f, T_PORT(11));
    wait_ready(f, cli, f->pids[0]);
    free(body);
    client_close(f, cli);
}

static void test_two_signers_share_one_token(void **state)
{
    fixture_t *f = *state;
    f->pids[0] = start_signer(f, T_PORT(0), 0, NULL);
    /* The second one reads its PIN from the environment instead of a file. */
    setenv("QC_SIGNER_PIN", SIGNER_TEST_PIN, 1);
    f->pids[1] = start_signer(f, T_PORT(1), 0, "--pin-file", "", NULL);
    unsetenv("QC_SIGNER_PIN");
    proto_rpc_client_t *a = client_for(f, T_PORT(0));
    proto_rpc_client_t *b = client_for(f, T_PORT(1));
    wait_ready(f, a, f->pids[0]);
    wait_ready(f, b, f->pids[1]);
    for (int i = 0; i < 20; i++) {
        proto_rpc_client_t *cli = i % 2 == 0 ? a : b;
        size_t len = 0;
        uint8_t *body = allow_body(&len);
        uint8_t *env = NULL;
        size_t env_len = 0;
        assert_int_equal(call_sign(cli, QUANCUN__SIGN_KIND__SIGN_LOAD_ALLOW, body, len,
                                   TEST_CALL_TIMEOUT_MS, &env, &env_len),
                         0);
        check_envelope(env, env_len, PROTO_TYPE_LOAD_ALLOW, f->pub[0], body, len, NULL);
        free(env);
        free(body);
    }
    client_close(f, a);
    client_close(f, b);
}

typedef struct load_state {
    int ok, failed, done;
} load_state_t;

static void load_done(void *arg, void *tag, int code, proto_rpc_reply_t *reply)
{
    (void)tag;
    load_state_t *ls = arg;
    if (code == 0 && reply->code == 0)
        ls->ok++;
    else
        ls->failed++;
    ls->done++;
    proto_rpc_reply_destroy(&reply);
}

static void test_kill9_under_load_then_restart(void **state)
{
    fixture_t *f = *state;
    f->pids[0] = start_signer(f, T_PORT(10), 0, NULL);
    proto_rpc_client_t *cli = client_for(f, T_PORT(10));
    wait_ready(f, cli, f->pids[0]);

    size_t body_len = 0, req_len = 0;
    uint8_t *body = checkpoint_body(9, &body_len);
    uint8_t *req =
        sign_request(QUANCUN__SIGN_KIND__SIGN_AUDIT_CHECKPOINT, body, body_len, &req_len);
    load_state_t ls = {0};
    int sent = 0;
    bool killed = false;
    uint64_t end = ops_time_mono_ms() + TEST_READY_TIMEOUT_MS;
    /* After the kill no new calls are sent: those in flight at that moment time out. */
    while (((!killed && sent < TEST_LOAD_CALLS) || ls.done < sent) && ops_time_mono_ms() < end) {
        while (!killed && sent < TEST_LOAD_CALLS &&
               proto_rpc_client_inflight(cli) < TEST_LOAD_WINDOW) {
            uint64_t id;
            assert_int_equal(proto_rpc_client_send(cli, "sign", req, req_len, 1000, 0, NULL, &id),
                             0);
            sent++;
        }
        if (!killed && ls.ok >= TEST_LOAD_CALLS / 4) {
            /* Mid-stream, with calls in flight. */
            assert_int_equal(qctest_exit_code(qctest_stop(f->pids[0], SIGKILL)), 128 + SIGKILL);
            f->pids[0] = 0;
            killed = true;
        }
        zmq_pollitem_t items[PROTO_RPC_ENDPOINTS_MAX];
        int n = proto_rpc_client_pollitems(cli, items, PROTO_RPC_ENDPOINTS_MAX);
        int wait = proto_rpc_client_next_timeout_ms(cli);
        zmq_poll(items, n, wait < 0 || wait > 100 ? 100 : wait);
        proto_rpc_client_process(cli, load_done, &ls);
    }
    assert_true(killed);
    assert_int_equal(ls.done, sent);
    assert_true(ls.failed > 0); /* the kill did land mid-load */
    client_close(f, cli);

    /* Restart on the same port and token: it serves again, with the same keys. */
    f->pids[0] = start_signer(f, T_PORT(10), 0, NULL);
    cli = client_for(f, T_PORT(10));
    wait_ready(f, cli, f->pids[0]);
    uint8_t *env = NULL;
    size_t env_len = 0;
    assert_int_equal(call_sign(cli, QUANCUN__SIGN_KIND__SIGN_AUDIT_CHECKPOINT, body, body_len,
                               TEST_CALL_TIMEOUT_MS, &env, &env_len),
                     0);
    check_envelope(env, env_len, PROTO_TYPE_AUDIT_CHECKPOINT, f->pub[2], body, body_len, NULL);
    free(env);
    free(req);
    free(body);
    client_close(f, cli);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s QC_SIGNER_BINARY sign|startup|chaos\n", argv[0]);
        return 2;
    }
    signer_bin = argv[1];
    const struct CMUnitTest sign[] = {
        cmocka_unit_test_setup_teardown(test_sign_every_kind_and_verify, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roles_by_kind, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_random_digests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuses_wrong_type, setup, teardown),
    };
    const struct CMUnitTest startup[] = {
        cmocka_unit_test_setup_teardown(test_wrong_pin_fails_loudly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_key_fails_loudly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_token_module_pin_fail_loudly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keygen_refuses_existing_key, setup, teardown),
    };
    const struct CMUnitTest chaos[] = {
        cmocka_unit_test_setup_teardown(test_two_signers_share_one_token, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill9_under_load_then_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fault_after_sign_then_restart, setup, teardown),
    };
    if (strcmp(argv[2], "sign") == 0) {
        ports = qctest_ports(17500, 10);
        return cmocka_run_group_tests_name("signer_sign", sign, NULL, NULL);
    }
    if (strcmp(argv[2], "startup") == 0) {
        ports = qctest_ports(17510, 10);
        return cmocka_run_group_tests_name("signer_startup", startup, NULL, NULL);
    }
    if (strcmp(argv[2], "chaos") == 0) {
        ports = qctest_ports(17520, 20);
        return cmocka_run_group_tests_name("signer_chaos", chaos, NULL, NULL);
    }
    fprintf(stderr, "unknown group %s\n", argv[2]);
    return 2;
}
