/* signer_main.c - qc-signer: the bank's signing service, and `qc-signer keygen` to make its keys.
 *
 * The main thread owns the ROUTER socket: it receives "sign" requests, hands them to the
 * worker pool (signer_pool.h) and sends the replies the workers hand back. It never signs.
 * Start-up fails loudly (a log line naming what is missing, exit status 1) when the module,
 * the token, the PIN or any configured key is missing: there is no software-key fallback. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <zmq.h>

#include "ops_config.h"
#include "ops_fault.h"
#include "ops_log.h"
#include "ops_metrics.h"
#include "ops_signal.h"
#include "ops_time.h"
#include "proto_audit.h"
#include "proto_rpc.h"
#include "qc_error.h"
#include "signer_cert.h"
#include "signer_pool.h"
#include "signer_sign.h"
#include "signer_token.h"
#include "signer.pb-c.h"

#define SIGNER_SERVICE "signer"
#define SIGNER_METHOD_SIGN "sign"
#define SIGNER_SOURCE_MAX 64 /* this signer's name in the audit log */
#define SIGNER_PIN_ENV "QC_SIGNER_PIN"
#define SIGNER_POLL_MS 250          /* longest wait before looking at the stop flag */
#define SIGNER_RECV_BATCH_MAX 256   /* requests taken per wakeup before replies are sent */
#define SIGNER_STOP_GRACE_MS 5000   /* time given to jobs in flight at SIGTERM */
#define SIGNER_QUEUE_DEFAULT "1024" /* jobs waiting for a worker */
#define SIGNER_PATH_MAX 1024
#define SIGNER_HTTP_PORT_MAX 65535

/* ------------------------------------------------------------------ shared start-up */

/* Reads the PIN from pin_file, or else from $QC_SIGNER_PIN (which is then wiped from the
 * environment), into pin (capacity SIGNER_PIN_MAX + 1). A trailing newline is dropped.
 * Returns the length, or a negative QC_E* code (logged). */
static int signer_read_pin(const char *pin_file, char pin[SIGNER_PIN_MAX + 1])
{
    if (pin_file != NULL && pin_file[0] != '\0') {
        int fd = open(pin_file, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            ops_log(OPS_LOG_ERROR, "signer.pin_missing", "pin_file", pin_file, "error",
                    strerror(errno), NULL);
            return QC_EIO;
        }
        struct stat st;
        if (fstat(fd, &st) == 0 && (st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
            ops_log(OPS_LOG_WARN, "signer.pin_file_mode", "pin_file", pin_file, "error",
                    "readable by group or others; it should be 0600", NULL);
        /* One byte beyond the limit tells "too long" from "exactly the limit". */
        char buf[SIGNER_PIN_MAX + 3];
        ssize_t n = read(fd, buf, sizeof(buf));
        close(fd);
        if (n < 0) {
            OPENSSL_cleanse(buf, sizeof(buf));
            return QC_EIO;
        }
        size_t len = (size_t)n;
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
            len--;
        if (len == 0 || len > SIGNER_PIN_MAX) {
            OPENSSL_cleanse(buf, sizeof(buf));
            ops_log(OPS_LOG_ERROR, "signer.pin_invalid", "pin_file", pin_file, "error",
                    len == 0 ? "empty" : "too long", NULL);
            return QC_ECONFIG;
        }
        memcpy(pin, buf, len);
        pin[len] = '\0';
        OPENSSL_cleanse(buf, sizeof(buf));
        return (int)len;
    }
    char *env = getenv(SIGNER_PIN_ENV);
    if (env == NULL || env[0] == '\0') {
        ops_log(OPS_LOG_ERROR, "signer.pin_missing", "error",
                "no pin_file configured and QC_SIGNER_PIN is not set", NULL);
        return QC_ECONFIG;
    }
    size_t len = strlen(env);
    if (len > SIGNER_PIN_MAX) {
        ops_log(OPS_LOG_ERROR, "signer.pin_invalid", "error", "QC_SIGNER_PIN too long", NULL);
        return QC_ECONFIG;
    }
    memcpy(pin, env, len + 1);
    /* Wipe it where it lives, so neither children nor /proc/<pid>/environ keep it. */
    OPENSSL_cleanse(env, len);
    unsetenv(SIGNER_PIN_ENV);
    return (int)len;
}

/* Opens the token and logs in; the PIN is wiped before returning. */
static int signer_open_token(const ops_config_t *cfg, signer_token_t **out)
{
    const char *module = ops_config_str(cfg, "module");
    const char *label = ops_config_str(cfg, "token_label");
    int rc = signer_token_open(module, label, out);
    if (rc != 0)
        return rc;
    char pin[SIGNER_PIN_MAX + 1];
    int pin_len = signer_read_pin(ops_config_str(cfg, "pin_file"), pin);
    if (pin_len < 0) {
        signer_token_destroy(out);
        return pin_len;
    }
    rc = signer_token_login(*out, pin, (size_t)pin_len);
    OPENSSL_cleanse(pin, sizeof(pin));
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "signer.login_failed", "token_label", label, "error",
                qc_strerror(rc), NULL);
        signer_token_destroy(out);
    }
    return rc;
}

static int signer_log_setup(const ops_config_t *cfg, const char *instance)
{
    int level = ops_log_level_parse(ops_config_str(cfg, "log_level"));
    if (level < 0) {
        fprintf(stderr, "qc-signer: bad log_level (debug, info, warn, error)\n");
        return QC_ECONFIG;
    }
    ops_log_init(SIGNER_SERVICE, instance, (ops_log_level_t)level);
    return 0;
}

/* ------------------------------------------------------------------ keygen */

static const ops_config_key_t signer_keygen_keys[] = {
    {"module", OPS_CONFIG_STRING, SIGNER_MODULE_DEFAULT, "PKCS#11 module to load"},
    {"token_label", OPS_CONFIG_STRING, "quancun", "label of the token holding the keys"},
    {"pin_file", OPS_CONFIG_STRING, NULL, "file holding the user PIN (else $QC_SIGNER_PIN)"},
    {"label", OPS_CONFIG_STRING, NULL,
     "key name: allow-signing, outcome-signing or audit-checkpoint"},
    {"version", OPS_CONFIG_INT, "1", "key version (1..9999), stored as CKA_ID \"v<version>\""},
    {"out", OPS_CONFIG_STRING, NULL, "directory for <label>-v<version>.{pub,cert,csr}.pem"},
    {"days", OPS_CONFIG_INT, "3650", "validity of the self-signed certificate"},
    {"common_name", OPS_CONFIG_STRING, NULL, "certificate CN (default \"quancun-<label>-v<N>\")"},
    {"log_level", OPS_CONFIG_STRING, "info", "debug, info, warn or error"},
};

#define SIGNER_KEYGEN_USAGE                                                                        \
    "keygen --label NAME --version N --out DIR [--pin-file F] [options]\n"                         \
    "Generates a P-256 key pair inside the token (never exported) and writes\n"                    \
    "DIR/NAME-vN.pub.pem (public key), DIR/NAME-vN.cert.pem (self-signed by the token key,\n"      \
    "what devices are provisioned with) and DIR/NAME-vN.csr.pem (for a CA to sign).\n"             \
    "Refuses an existing key of the same name and version, and existing output files."

enum { SIGNER_OUT_PUB, SIGNER_OUT_CERT, SIGNER_OUT_CSR, SIGNER_OUT_COUNT };
static const char *const signer_out_suffix[SIGNER_OUT_COUNT] = {".pub.pem", ".cert.pem",
                                                                ".csr.pem"};

/* Opens path for writing, refusing to replace a file. */
static FILE *signer_create(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return NULL;
    FILE *f = fdopen(fd, "w");
    if (f == NULL)
        close(fd);
    return f;
}

/* Writes the public key, the self-signed certificate and the CSR of key. */
static int signer_keygen_write(signer_token_t *tok, const signer_key_t *key, const char *cn,
                               int days, char paths[SIGNER_OUT_COUNT][SIGNER_PATH_MAX])
{
    signer_session_t *sess = NULL;
    X509 *cert = NULL;
    X509_REQ *req = NULL;
    FILE *files[SIGNER_OUT_COUNT] = {NULL};
    int rc = signer_session_open(tok, &sess);
    if (rc == 0)
        rc = signer_cert_self_signed(sess, key, cn, days, &cert);
    if (rc == 0)
        rc = signer_cert_request(sess, key, cn, &req);
    for (int i = 0; i < SIGNER_OUT_COUNT && rc == 0; i++) {
        files[i] = signer_create(paths[i]);
        if (files[i] == NULL) {
            ops_log(OPS_LOG_ERROR, "keygen.write_failed", "path", paths[i], "error",
                    strerror(errno), NULL);
            rc = QC_EIO;
        }
    }
    if (rc == 0 && (PEM_write_PUBKEY(files[SIGNER_OUT_PUB], signer_key_public(key)) != 1 ||
                    PEM_write_X509(files[SIGNER_OUT_CERT], cert) != 1 ||
                    PEM_write_X509_REQ(files[SIGNER_OUT_CSR], req) != 1))
        rc = QC_EIO;
    for (int i = 0; i < SIGNER_OUT_COUNT; i++) {
        if (files[i] != NULL && fclose(files[i]) != 0)
            rc = QC_EIO;
    }
    X509_REQ_free(req);
    X509_free(cert);
    signer_session_destroy(&sess);
    return rc;
}

static int signer_keygen(int argc, char **argv)
{
    char err[OPS_CONFIG_ERROR_MAX];
    ops_config_t *cfg = NULL;
    int rc = ops_config_load("qc-signer", SIGNER_KEYGEN_USAGE, signer_keygen_keys,
                             sizeof(signer_keygen_keys) / sizeof(signer_keygen_keys[0]), argc, argv,
                             &cfg, err, sizeof(err));
    if (rc == 1)
        return 0;
    if (rc != 0) {
        fprintf(stderr, "qc-signer keygen: %s\n", err);
        return 2;
    }
    if (signer_log_setup(cfg, "keygen") != 0) {
        ops_config_destroy(&cfg);
        return 2;
    }
    const char *label = ops_config_str(cfg, "label");
    const char *out_dir = ops_config_str(cfg, "out");
    int64_t version = ops_config_int(cfg, "version");
    int64_t days = ops_config_int(cfg, "days");
    if (label == NULL || out_dir == NULL || version < 1 || version > SIGNER_KEY_VERSION_MAX ||
        days < 1 || days > SIGNER_CERT_DAYS_MAX) {
        fprintf(stderr,
                "qc-signer keygen: --label, --out, --version 1..%d and --days 1..%d "
                "are required\n",
                SIGNER_KEY_VERSION_MAX, SIGNER_CERT_DAYS_MAX);
        ops_config_destroy(&cfg);
        return 2;
    }
    char cn[SIGNER_CERT_CN_MAX + 1];
    const char *cn_cfg = ops_config_str(cfg, "common_name");
    snprintf(cn, sizeof(cn), "%s", cn_cfg != NULL ? cn_cfg : "");
    if (cn_cfg == NULL)
        snprintf(cn, sizeof(cn), "quancun-%.40s-v%" PRId64, label, version);

    /* Check the output side before the token: a key made but not exported is of no use. */
    struct stat st;
    if (stat(out_dir, &st) != 0 || !S_ISDIR(st.st_mode) || access(out_dir, W_OK) != 0) {
        ops_log(OPS_LOG_ERROR, "keygen.refused", "path", out_dir, "error",
                "not a writable directory", NULL);
        ops_config_destroy(&cfg);
        return 1;
    }
    char paths[SIGNER_OUT_COUNT][SIGNER_PATH_MAX];
    for (int i = 0; i < SIGNER_OUT_COUNT; i++) {
        int n = snprintf(paths[i], SIGNER_PATH_MAX, "%s/%s-v%" PRId64 "%s", out_dir, label, version,
                         signer_out_suffix[i]);
        if (n < 0 || n >= SIGNER_PATH_MAX || access(paths[i], F_OK) == 0) {
            ops_log(OPS_LOG_ERROR, "keygen.refused", "path", paths[i], "error",
                    n >= SIGNER_PATH_MAX ? "path too long" : "file exists", NULL);
            ops_config_destroy(&cfg);
            return 1;
        }
    }

    signer_token_t *tok = NULL;
    signer_key_t *key = NULL;
    rc = signer_open_token(cfg, &tok);
    if (rc == 0) {
        rc = signer_token_generate_key(tok, label, (uint32_t)version, &key);
        if (rc != 0)
            ops_log(OPS_LOG_ERROR, "keygen.failed", "label", label, "error", qc_strerror(rc), NULL);
    }
    if (rc == 0)
        rc = signer_keygen_write(tok, key, cn, (int)days, paths);
    if (rc == 0) {
        char key_id[2 * PROTO_KEY_ID_SIZE + 1];
        ops_log(OPS_LOG_INFO, "keygen.done", "label", label, "version",
                ops_config_str(cfg, "version"), "key_id",
                ops_hex(signer_key_id(key), PROTO_KEY_ID_SIZE, key_id), "cert",
                paths[SIGNER_OUT_CERT], NULL);
    }
    signer_key_destroy(&key);
    signer_token_destroy(&tok);
    ops_config_destroy(&cfg);
    return rc == 0 ? 0 : 1;
}

/* ------------------------------------------------------------------ service */

static const ops_config_key_t signer_keys[] = {
    {"listen", OPS_CONFIG_STRING, "tcp://127.0.0.1:7500", "endpoint the ROUTER socket binds"},
    {"curve_key", OPS_CONFIG_STRING, NULL, "this service's CURVE key pair file"},
    {"allow", OPS_CONFIG_STRING, NULL, "file of client CURVE public keys allowed to call"},
    {"audit", OPS_CONFIG_STRING, NULL, "audit endpoints: every signature is reported there"},
    {"audit_key", OPS_CONFIG_STRING, NULL, "the audit service's CURVE public key (Z85)"},
    {"http_port", OPS_CONFIG_INT, "0", "port of /metrics and /healthz on 127.0.0.1 (0 = off)"},
    {"module", OPS_CONFIG_STRING, SIGNER_MODULE_DEFAULT, "PKCS#11 module to load"},
    {"token_label", OPS_CONFIG_STRING, "quancun", "label of the token holding the keys"},
    {"pin_file", OPS_CONFIG_STRING, NULL, "file holding the user PIN (else $QC_SIGNER_PIN)"},
    {"workers", OPS_CONFIG_INT, "0", "signing threads, one session each (0 = one per core)"},
    {"queue_max", OPS_CONFIG_INT, SIGNER_QUEUE_DEFAULT, "sign jobs waiting before QC_EBUSY"},
    {"allow_key_version", OPS_CONFIG_INT, "1", "version of the allow-signing key"},
    {"outcome_key_version", OPS_CONFIG_INT, "1", "version of the outcome-signing key"},
    {"checkpoint_key_version", OPS_CONFIG_INT, "1", "version of the audit-checkpoint key"},
    {"instance", OPS_CONFIG_STRING, "0", "instance name in logs"},
    {"log_level", OPS_CONFIG_STRING, "info", "debug, info, warn or error"},
};

#define SIGNER_USAGE                                                                               \
    "[--config FILE] [options]   |   keygen --help\n"                                              \
    "Signs LoadAllow, LoadOutcome and audit checkpoints with the bank's keys in a PKCS#11\n"       \
    "token (method \"sign\", proto/signer.proto)."

static const char *const signer_version_keys[SIGNER_KIND_COUNT] = {
    [SIGNER_KIND_ALLOW] = "allow_key_version",
    [SIGNER_KIND_OUTCOME] = "outcome_key_version",
    [SIGNER_KIND_CHECKPOINT] = "checkpoint_key_version",
};

typedef struct signer_service {
    const ops_config_t *cfg;
    void *zctx;
    signer_token_t *tok;
    signer_keyring_t *ring;
    signer_pool_t *pool;
    proto_rpc_server_t *srv;
    proto_audit_t *audit; /* every signature, delivered to the audit log at least once */
    ops_http_t *http;
    ops_counter_t *busy_total;
    ops_counter_t *method_total;
} signer_service_t;

static bool signer_health(void *arg, char *why, size_t why_cap)
{
    signer_service_t *svc = arg;
    if (svc->pool != NULL && !signer_pool_healthy(svc->pool)) {
        snprintf(why, why_cap, "token unavailable");
        return false;
    }
    return true;
}

static void signer_free_request(void *tag)
{
    proto_rpc_request_t *req = tag;
    proto_rpc_request_destroy(&req);
}

static int signer_start(signer_service_t *svc)
{
    const ops_config_t *cfg = svc->cfg;
    uint32_t versions[SIGNER_KIND_COUNT];
    for (int k = 0; k < SIGNER_KIND_COUNT; k++) {
        int64_t v = ops_config_int(cfg, signer_version_keys[k]);
        if (v < 1 || v > SIGNER_KEY_VERSION_MAX) {
            ops_log(OPS_LOG_ERROR, "signer.config_invalid", "key", signer_version_keys[k], NULL);
            return QC_ECONFIG;
        }
        versions[k] = (uint32_t)v;
    }
    int64_t workers = ops_config_int(cfg, "workers");
    if (workers == 0)
        workers = sysconf(_SC_NPROCESSORS_ONLN);
    int64_t queue_max = ops_config_int(cfg, "queue_max");
    int64_t http_port = ops_config_int(cfg, "http_port");
    if (workers < 1 || workers > SIGNER_WORKERS_MAX || queue_max < 1 ||
        queue_max > SIGNER_QUEUE_MAX || http_port < 0 || http_port > SIGNER_HTTP_PORT_MAX) {
        ops_log(OPS_LOG_ERROR, "signer.config_invalid", "error",
                "workers, queue_max or http_port out of range", NULL);
        return QC_ECONFIG;
    }
    const char *curve_path = ops_config_str(cfg, "curve_key");
    const char *allow_path = ops_config_str(cfg, "allow");
    if (curve_path == NULL || allow_path == NULL) {
        ops_log(OPS_LOG_ERROR, "signer.config_invalid", "error", "curve_key and allow are required",
                NULL);
        return QC_ECONFIG;
    }

    int rc = signer_open_token(cfg, &svc->tok);
    if (rc == 0)
        rc = signer_keyring_load(svc->tok, versions, &svc->ring);
    if (rc == 0)
        rc = signer_pool_new(svc->tok, svc->ring, (size_t)workers, (size_t)queue_max, &svc->pool);
    if (rc != 0)
        return rc;

    proto_curve_keypair_t keys;
    rc = proto_curve_keypair_load(curve_path, &keys);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "signer.curve_key_invalid", "path", curve_path, NULL);
        return rc;
    }
    svc->zctx = zmq_ctx_new();
    if (svc->zctx == NULL) {
        proto_curve_keypair_wipe(&keys);
        return QC_ENOMEM;
    }
    proto_rpc_server_config_t scfg = {
        .service = SIGNER_SERVICE,
        .endpoint = ops_config_str(cfg, "listen"),
        .keys = &keys,
        .allow_path = allow_path,
        .allow_any = false,
    };
    rc = proto_rpc_server_new(svc->zctx, &scfg, &svc->srv);
    if (rc != 0) {
        proto_curve_keypair_wipe(&keys);
        ops_log(OPS_LOG_ERROR, "signer.listen_failed", "endpoint", scfg.endpoint, "error",
                qc_strerror(rc), NULL);
        return rc;
    }
    const char *audit = ops_config_str(cfg, "audit");
    char source[SIGNER_SOURCE_MAX];
    snprintf(source, sizeof source, "signer-%s", ops_config_str(cfg, "instance"));
    rc = proto_audit_new(svc->zctx, source, audit != NULL && audit[0] != '\0' ? audit : NULL,
                         ops_config_str(cfg, "audit_key"), &keys, &svc->audit);
    proto_curve_keypair_wipe(&keys);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "signer.audit_invalid", "error", qc_strerror(rc), "hint",
                "audit and audit_key go together; instance must be short", NULL);
        return rc;
    }
    rc = ops_http_start((uint16_t)http_port, signer_health, svc, &svc->http);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "signer.http_failed", NULL);
        return rc;
    }
    svc->busy_total = ops_counter("qc_signer_busy_total", "Requests refused: queue full");
    svc->method_total = ops_counter("qc_signer_bad_method_total", "Requests for other methods");
    char workers_text[24];
    snprintf(workers_text, sizeof(workers_text), "%" PRId64, workers);
    ops_log(OPS_LOG_INFO, "signer.started", "listen", scfg.endpoint, "token_label",
            ops_config_str(cfg, "token_label"), "workers", workers_text, NULL);
    return 0;
}

/* Hands one request to the pool, or answers it at once when it cannot be queued. */
static void signer_accept(signer_service_t *svc, proto_rpc_request_t *req)
{
    int rc;
    if (strcmp(req->method, SIGNER_METHOD_SIGN) != 0) {
        ops_counter_add(svc->method_total, 1);
        rc = QC_EMETHOD;
    } else {
        rc = signer_pool_submit(svc->pool, req, req->body, req->body_len, req->deadline_ms);
        if (rc == 0)
            return;
        if (rc == QC_EBUSY)
            ops_counter_add(svc->busy_total, 1);
    }
    proto_rpc_server_reply(svc->srv, req, rc, NULL, NULL, 0);
    proto_rpc_request_destroy(&req);
}

/* Reports one signature to the audit log: the signed envelope itself is the evidence, and the
 * event type names what was signed ("sign.load_allow"). */
static void signer_audit_signature(signer_service_t *svc, const proto_rpc_request_t *req,
                                   const uint8_t *signed_env, size_t signed_len)
{
    const char *type = "sign.unknown";
    Quancun__SignRequest *sr = quancun__sign_request__unpack(NULL, req->body_len, req->body);
    if (sr != NULL) {
        switch (sr->kind) {
        case QUANCUN__SIGN_KIND__SIGN_LOAD_ALLOW:
            type = "sign.load_allow";
            break;
        case QUANCUN__SIGN_KIND__SIGN_LOAD_OUTCOME:
            type = "sign.load_outcome";
            break;
        case QUANCUN__SIGN_KIND__SIGN_AUDIT_CHECKPOINT:
            type = "sign.audit_checkpoint";
            break;
        default:
            break;
        }
        quancun__sign_request__free_unpacked(sr, NULL);
    }
    proto_audit_event(svc->audit, type, NULL, signed_env, signed_len);
}

/* Sends every finished reply. */
static void signer_send_replies(signer_service_t *svc)
{
    void *tag;
    int code;
    uint8_t *reply;
    size_t reply_len;
    char msg[SIGNER_MESSAGE_MAX];
    while (signer_pool_take(svc->pool, &tag, &code, &reply, &reply_len, msg)) {
        proto_rpc_request_t *req = tag;
        /* The chaos suite kills the signer here: signed, not yet answered. */
        ops_fault_point("signer.after_sign");
        if (code == 0)
            signer_audit_signature(svc, req, reply, reply_len);
        int rc =
            proto_rpc_server_reply(svc->srv, req, code, code == 0 ? NULL : msg, reply, reply_len);
        if (rc != 0)
            ops_log(OPS_LOG_WARN, "signer.reply_failed", "error", qc_strerror(rc), NULL);
        free(reply);
        proto_rpc_request_destroy(&req);
    }
}

/* Serves until a stop is requested. Returns 0, or QC_EIO when the socket fails. */
static int signer_serve(signer_service_t *svc)
{
    zmq_pollitem_t items[2 + PROTO_RPC_ENDPOINTS_MAX] = {
        {proto_rpc_server_socket(svc->srv), 0, ZMQ_POLLIN, 0},
        {NULL, signer_pool_fd(svc->pool), ZMQ_POLLIN, 0},
    };
    proto_rpc_client_t *audit = proto_audit_client(svc->audit);
    while (!ops_signal_stop_requested()) {
        int count = 2, timeout = SIGNER_POLL_MS;
        if (audit != NULL) {
            count += proto_rpc_client_pollitems(audit, &items[2], PROTO_RPC_ENDPOINTS_MAX);
            int t = proto_rpc_client_next_timeout_ms(audit);
            if (t >= 0 && t < timeout)
                timeout = t;
        }
        int n = zmq_poll(items, count, timeout);
        if (n < 0 && zmq_errno() != EINTR)
            return QC_EIO;
        for (int i = 0; i < SIGNER_RECV_BATCH_MAX; i++) {
            proto_rpc_request_t *req = NULL;
            int rc = proto_rpc_server_recv(svc->srv, 0, &req);
            if (rc == QC_ETIMEOUT)
                break;
            if (rc != 0)
                return rc;
            signer_accept(svc, req);
        }
        signer_send_replies(svc);
        proto_audit_process(svc->audit);
    }
    /* Stop: take no more requests, give the jobs in flight a bounded time to finish. */
    uint64_t end = ops_time_mono_ms() + SIGNER_STOP_GRACE_MS;
    while (signer_pool_pending(svc->pool) > 0 && ops_time_mono_ms() < end) {
        zmq_poll(&items[1], 1, SIGNER_POLL_MS);
        signer_send_replies(svc);
    }
    return 0;
}

static void signer_stop(signer_service_t *svc)
{
    /* HTTP first: its thread reads the pool's health. */
    ops_http_stop(&svc->http);
    signer_pool_destroy(&svc->pool, signer_free_request);
    proto_rpc_server_destroy(&svc->srv);
    proto_audit_destroy(&svc->audit);
    if (svc->zctx != NULL)
        zmq_ctx_term(svc->zctx);
    signer_keyring_destroy(&svc->ring);
    signer_token_destroy(&svc->tok);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "keygen") == 0)
        return signer_keygen(argc - 1, argv + 1);

    char err[OPS_CONFIG_ERROR_MAX];
    ops_config_t *cfg = NULL;
    int rc = ops_config_load("qc-signer", SIGNER_USAGE, signer_keys,
                             sizeof(signer_keys) / sizeof(signer_keys[0]), argc, argv, &cfg, err,
                             sizeof(err));
    if (rc == 1)
        return 0;
    if (rc != 0) {
        fprintf(stderr, "qc-signer: %s\n", err);
        return 2;
    }
    if (ops_config_argc(cfg) != 0) {
        fprintf(stderr, "qc-signer: unexpected argument %s\n", ops_config_arg(cfg, 0));
        ops_config_destroy(&cfg);
        return 2;
    }
    if (signer_log_setup(cfg, ops_config_str(cfg, "instance")) != 0) {
        ops_config_destroy(&cfg);
        return 2;
    }
    ops_signal_install();
    signer_service_t svc = {.cfg = cfg};
    rc = signer_start(&svc);
    if (rc == 0)
        rc = signer_serve(&svc);
    if (rc != 0)
        ops_log(OPS_LOG_ERROR, "signer.failed", "error", qc_strerror(rc), NULL);
    else
        ops_log(OPS_LOG_INFO, "signer.stopped", NULL);
    signer_stop(&svc);
    ops_config_destroy(&cfg);
    return rc == 0 ? 0 : 1;
}
