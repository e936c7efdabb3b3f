/* signer_service.c - the signer's loop: requests to the worker pool, replies and audit events out.
 *
 * The main thread owns the ROUTER socket: it receives "sign" requests, checks that the caller's
 * role may have the kind signed (signer_roles.h), hands them to the worker pool (signer_pool.h)
 * and sends the replies the workers hand back. It never signs. */
#include "signer_service.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zmq.h>

#include "ops_fault.h"
#include "ops_log.h"
#include "ops_metrics.h"
#include "ops_signal.h"
#include "ops_time.h"
#include "proto_audit.h"
#include "proto_limits.h"
#include "proto_rpc.h"
#include "qc_error.h"
#include "signer_login.h"
#include "signer_pool.h"
#include "signer_roles.h"
#include "signer_sign.h"
#include "signer_token.h"
#include "signer.pb-c.h"

#define SIGNER_SERVICE "signer"
#define SIGNER_METHOD_SIGN "sign"
#define SIGNER_SOURCE_MAX PROTO_AUDIT_NAME_MAX /* this signer's name in the audit log */
#define SIGNER_POLL_MS 250                     /* longest wait before looking at the stop flag */
#define SIGNER_RECV_BATCH_MAX 256 /* requests taken per wakeup before replies are sent */
#define SIGNER_STOP_GRACE_MS 5000 /* time given to jobs in flight at SIGTERM */

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
    signer_roles_t *roles;
    ops_counter_t *busy_total;
    ops_counter_t *no_evidence_total;
    ops_counter_t *method_total;
    ops_counter_t *refused_total[SIGNER_KIND_COUNT]; /* by kind: the caller's role may not */
} signer_service_t;

/* The kinds a role may ask for, in SIGNER_KIND order, as they appear in metrics and events. */
static const Quancun__SignKind signer_kinds[SIGNER_KIND_COUNT] = {
    [SIGNER_KIND_ALLOW] = QUANCUN__SIGN_KIND__SIGN_LOAD_ALLOW,
    [SIGNER_KIND_OUTCOME] = QUANCUN__SIGN_KIND__SIGN_LOAD_OUTCOME,
    [SIGNER_KIND_CHECKPOINT] = QUANCUN__SIGN_KIND__SIGN_AUDIT_CHECKPOINT,
};
static const char *const signer_kind_names[SIGNER_KIND_COUNT] = {
    [SIGNER_KIND_ALLOW] = "load_allow",
    [SIGNER_KIND_OUTCOME] = "load_outcome",
    [SIGNER_KIND_CHECKPOINT] = "audit_checkpoint",
};

bool signer_service_healthy(void *arg, char *why, size_t why_cap)
{
    signer_service_t *svc = arg;
    if (svc->pool != NULL && !signer_pool_healthy(svc->pool)) {
        snprintf(why, why_cap, "token unavailable");
        return false;
    }
    return svc->audit == NULL || proto_audit_healthy(svc->audit, why, why_cap);
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
    if (workers < 1 || workers > SIGNER_WORKERS_MAX || queue_max < 1 ||
        queue_max > SIGNER_QUEUE_MAX) {
        ops_log(OPS_LOG_ERROR, "signer.config_invalid", "error",
                "workers or queue_max out of range", NULL);
        return QC_ECONFIG;
    }
    const char *curve_path = ops_config_str(cfg, "curve_key");
    const char *allow_path = ops_config_str(cfg, "allow");
    if (curve_path == NULL || allow_path == NULL) {
        ops_log(OPS_LOG_ERROR, "signer.config_invalid", "error", "curve_key and allow are required",
                NULL);
        return QC_ECONFIG;
    }

    int rc = signer_roles_new(ops_config_str(cfg, "ledger_keys"), ops_config_str(cfg, "audit_keys"),
                              &svc->roles);
    if (rc != 0)
        return rc;
    rc = signer_login_open(cfg, &svc->tok);
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
    svc->busy_total = ops_counter("qc_signer_busy_total", "Requests refused: queue full");
    svc->no_evidence_total = ops_counter("qc_signer_evidence_full_total",
                                         "Requests refused: the queue for audit was full");
    svc->method_total = ops_counter("qc_signer_bad_method_total", "Requests for other methods");
    for (int k = 0; k < SIGNER_KIND_COUNT; k++) {
        char name[96];
        snprintf(name, sizeof name, "qc_signer_refused_total{kind=\"%s\"}", signer_kind_names[k]);
        svc->refused_total[k] =
            ops_counter(name, "Sign requests refused: the caller's role may not have this kind");
    }
    char workers_text[24];
    snprintf(workers_text, sizeof(workers_text), "%" PRId64, workers);
    ops_log(OPS_LOG_INFO, "signer.started", "listen", scfg.endpoint, "token_label",
            ops_config_str(cfg, "token_label"), "workers", workers_text, NULL);
    return 0;
}

/* The role check, before anything is signed: allows and outcomes for ledger keys only,
 * checkpoints for audit keys only. A refusal is a security event: counted, logged, and sent to
 * the audit log with the request that was refused. Returns 0 or QC_EROLE (with why). A body
 * that is not a SignRequest of a known kind is left to the pool, which refuses it. */
static int signer_authorize(signer_service_t *svc, const proto_rpc_request_t *req, char *why,
                            size_t why_cap)
{
    Quancun__SignRequest *sr = quancun__sign_request__unpack(NULL, req->body_len, req->body);
    if (sr == NULL)
        return 0;
    Quancun__SignKind kind = sr->kind;
    quancun__sign_request__free_unpacked(sr, NULL);
    int k = 0;
    while (k < SIGNER_KIND_COUNT && signer_kinds[k] != kind)
        k++;
    if (k == SIGNER_KIND_COUNT)
        return 0;
    int rc = signer_roles_check(svc->roles, kind, req->peer_key);
    if (rc == 0)
        return 0;
    const char *role = signer_roles_role_of(kind);
    ops_counter_add(svc->refused_total[k], 1);
    ops_log_limited(OPS_LOG_WARN, "security.sign_refused", req->peer_key, "kind",
                    signer_kind_names[k], "role_needed", role, NULL);
    proto_audit_event(svc->audit, "security.sign_refused", NULL, req->body, req->body_len);
    snprintf(why, why_cap, "%s is signed for %s keys only, and this key holds no %s role",
             signer_kind_names[k], role, role);
    return QC_EROLE;
}

/* Hands one request to the pool, or answers it at once when it cannot be queued. */
static void signer_accept(signer_service_t *svc, proto_rpc_request_t *req)
{
    int rc;
    char why[SIGNER_MESSAGE_MAX] = "";
    if (strcmp(req->method, SIGNER_METHOD_SIGN) != 0) {
        ops_counter_add(svc->method_total, 1);
        rc = QC_EMETHOD;
    } else if ((rc = signer_authorize(svc, req, why, sizeof why)) != 0) {
        /* refused: nothing goes to the pool */
    } else if (proto_audit_room(svc->audit) <= signer_pool_pending(svc->pool)) {
        /* Back-pressure: every signature is evidence, and each job in the pool may need one
         * slot of the queue for audit. What cannot be recorded is not signed. */
        rc = QC_EBUSY;
        ops_counter_add(svc->busy_total, 1);
        ops_counter_add(svc->no_evidence_total, 1);
        snprintf(why, sizeof why,
                 "the audit log cannot take this signature's evidence now: nothing was signed");
        ops_log_limited(OPS_LOG_WARN, "signer.evidence_full", NULL, "why", why, NULL);
    } else {
        rc = signer_pool_submit(svc->pool, req, req->body, req->body_len, req->deadline_mono_ms);
        if (rc == 0)
            return;
        if (rc == QC_EBUSY)
            ops_counter_add(svc->busy_total, 1);
    }
    int reply_rc = proto_rpc_server_reply(svc->srv, req, rc, why[0] != '\0' ? why : NULL, NULL, 0);
    if (reply_rc != 0)
        ops_log(OPS_LOG_WARN, "signer.reply_failed", "error", qc_strerror(reply_rc), NULL);
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
    zmq_pollitem_t items[2 + PROTO_AUDIT_POLLITEMS_MAX] = {
        {proto_rpc_server_socket(svc->srv), 0, ZMQ_POLLIN, 0},
        {NULL, signer_pool_fd(svc->pool), ZMQ_POLLIN, 0},
    };
    while (!ops_signal_stop_requested()) {
        int count = 2, timeout = SIGNER_POLL_MS;
        count += proto_audit_pollitems(svc->audit, &items[2], PROTO_AUDIT_POLLITEMS_MAX);
        int t = proto_audit_next_timeout_ms(svc->audit);
        if (t >= 0 && t < timeout)
            timeout = t;
        int n = zmq_poll(items, count, timeout);
        if (n < 0 && zmq_errno() != EINTR)
            return QC_EIO;
        /* After a SIGHUP. A failure is logged by the refresh and keeps the current roles. */
        QC_IGNORE(signer_roles_refresh(svc->roles));
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
    signer_pool_destroy(&svc->pool, signer_free_request);
    proto_rpc_server_destroy(&svc->srv);
    proto_audit_destroy(&svc->audit);
    if (svc->zctx != NULL)
        zmq_ctx_term(svc->zctx);
    signer_keyring_destroy(&svc->ring);
    signer_token_destroy(&svc->tok);
    signer_roles_destroy(&svc->roles);
}

int signer_service_new(const ops_config_t *cfg, signer_service_t **out)
{
    assert(cfg != NULL);
    assert(out != NULL);
    *out = NULL;
    signer_service_t *svc = calloc(1, sizeof *svc);
    if (svc == NULL)
        return QC_ENOMEM;
    svc->cfg = cfg;
    int rc = signer_start(svc);
    if (rc != 0) {
        signer_service_destroy(&svc);
        return rc;
    }
    *out = svc;
    return 0;
}

int signer_service_run(signer_service_t *svc)
{
    assert(svc != NULL);
    assert(svc->pool != NULL);
    return signer_serve(svc);
}

void signer_service_destroy(signer_service_t **svc_p)
{
    assert(svc_p != NULL);
    signer_service_t *svc = *svc_p;
    if (svc == NULL)
        return;
    signer_stop(svc);
    free(svc);
    *svc_p = NULL;
}
