/* gateway_flow.c - the gateway's event loop: device calls in, ledger calls out.
 *
 * Every device call is an operation in a fixed table, moving through stages:
 *
 *   load:   verify request --> RESERVE (ledger "reserve": it debits, commits, then has the bank
 *           sign the allow and stores it) --> reply the stored signed allow
 *   report: verify report  --> SETTLE (ledger "settle": it settles, commits, then has the bank
 *           sign the outcome) --> reply the signed outcome
 *   receipt, tree_consistency: check the request's shape --> AUDIT_READ (audit "prove" or
 *           "consistency") --> check the reply's shape --> reply it as it came; the device
 *           verifies it against the bank's checkpoint certificate (proto_receipt.h)
 *
 * Invariants:
 *  1. An operation is FREE or owns exactly one device request and waits for exactly one
 *     downstream call, whose tag is the operation (gateway_on_done() asserts the stage).
 *  2. Every operation ends with exactly one reply to its device (gateway_op_finish()), which
 *     frees it; a device that has gone away loses only its reply.
 *  3. Nothing a device sent is believed before gateway_verify_*() returned 0.
 *  4. The gateway never decides money and holds no signing power: it has no connection to the
 *     signer, the ledger decides reserve and settle, and only the ledger obtains the bank's
 *     signatures, after its commit. */
#include "gateway_flow.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "proto_audit.h"
#include "gateway_conns.h"
#include "gateway_trust.h"
#include "gateway_verify.h"
#include "ledger.pb-c.h"
#include "ops_fault.h"
#include "ops_log.h"
#include "ops_metrics.h"
#include "ops_signal.h"
#include "ops_time.h"
#include "proto_receipt.h"
#include "proto_shard.h"
#include "qc_error.h"

#define GATEWAY_ENDPOINTS_TEXT_MAX 4096 /* one shard's endpoint list, as configured */
#define GATEWAY_POLLITEMS_MAX                                                                      \
    (2 + (GATEWAY_SHARDS_MAX + 1) * PROTO_RPC_ENDPOINTS_MAX + PROTO_AUDIT_POLLITEMS_MAX)
#define GATEWAY_RECV_BATCH_MAX 256 /* device requests taken per loop turn */
#define GATEWAY_MESSAGE_MAX 128    /* a refusal's words for the device */
/* QC_EBUSY's words on a connection over max_connections (PROTOCOL.md section 7). */
#define GATEWAY_CONNECTION_LIMIT_MESSAGE                                                           \
    "the gateway is at its connection limit: this connection will be closed; reconnect "           \
    "after a back-off, or use another gateway"

typedef enum gateway_stage {
    GATEWAY_OP_FREE = 0,
    GATEWAY_OP_VERIFY, /* accepted, being checked: no downstream call yet */
    GATEWAY_OP_RESERVE,
    GATEWAY_OP_SETTLE,
    GATEWAY_OP_AUDIT_READ,
} gateway_stage_t;

typedef struct gateway_op {
    gateway_stage_t stage;
    proto_rpc_request_t *req; /* the device's call, owned */
    uint32_t shard;
    uint64_t start_ns;
} gateway_op_t;

struct gateway {
    gateway_config_t cfg;
    gateway_trust_t *trust; /* CAs, CRL (re-read when it changes) and the certificate cache */
    /* Reports only: the same CAs without the CRL and without validity periods, for a
     * certificate revoked or expired while its load was in flight (gateway_report_start). */
    proto_trust_t *trust_report;
    gateway_certcache_t *report_certs;
    proto_rpc_server_t *server;
    gateway_conns_t *conns; /* the device connections' bound */
    proto_rpc_client_t *shards[GATEWAY_SHARDS_MAX];
    proto_audit_t *audit;
    proto_rpc_client_t *audit_reader; /* receipts: NULL when no audit is configured */
    uint32_t shard_count;
    gateway_op_t ops[GATEWAY_OPS_MAX];
    int free_ops[GATEWAY_OPS_MAX];
    int free_count;
    ops_counter_t *m_loads_ok, *m_loads_refused, *m_reports_ok, *m_reports_refused;
    ops_counter_t *m_bad_reports, *m_unavailable, *m_busy, *m_receipts_ok, *m_receipts_refused;
    ops_histogram_t *m_load_seconds, *m_report_seconds;
    ops_gauge_t *m_inflight;
};

/* ------------------------------------------------------------------ operations */

/* The device's read methods of the audit log (proto_receipt.h). */
static bool gateway_is_receipt(const char *method)
{
    return strcmp(method, PROTO_METHOD_RECEIPT) == 0 ||
           strcmp(method, PROTO_METHOD_TREE_CONSISTENCY) == 0;
}

static gateway_op_t *gateway_op_new(gateway_t *gw, proto_rpc_request_t *req)
{
    if (gw->free_count == 0)
        return NULL;
    gateway_op_t *op = &gw->ops[gw->free_ops[--gw->free_count]];
    assert(op->stage == GATEWAY_OP_FREE);
    assert(op->req == NULL);
    op->req = req;
    op->start_ns = ops_time_mono_ns();
    ops_gauge_add(gw->m_inflight, 1);
    return op;
}

/* Replies to the device and frees op (invariant 2). */
static void gateway_op_answer(gateway_t *gw, gateway_op_t *op, const proto_rpc_answer_t *a)
{
    assert(op->stage != GATEWAY_OP_FREE);
    assert(op->req != NULL);
    int code = a->code;
    bool is_load = strcmp(op->req->method, "load") == 0;
    double seconds = (double)(ops_time_mono_ns() - op->start_ns) / 1e9;
    if (gateway_is_receipt(op->req->method)) {
        ops_counter_add(code == 0 ? gw->m_receipts_ok : gw->m_receipts_refused, 1);
    } else {
        ops_histogram_observe(is_load ? gw->m_load_seconds : gw->m_report_seconds, seconds);
        if (code == 0)
            ops_counter_add(is_load ? gw->m_loads_ok : gw->m_reports_ok, 1);
        else
            ops_counter_add(is_load ? gw->m_loads_refused : gw->m_reports_refused, 1);
    }
    int rc = proto_rpc_server_answer(gw->server, op->req, a);
    if (rc != 0)
        ops_log_limited(OPS_LOG_WARN, "gateway.reply_failed", NULL, "error", qc_errname(rc), NULL);
    proto_rpc_request_destroy(&op->req);
    op->stage = GATEWAY_OP_FREE;
    gw->free_ops[gw->free_count++] = (int)(op - gw->ops);
    ops_gauge_add(gw->m_inflight, -1);
}

static void gateway_op_finish(gateway_t *gw, gateway_op_t *op, int code, const char *message,
                              const uint8_t *body, size_t body_len)
{
    proto_rpc_answer_t a = {.code = code, .message = message, .body = body, .body_len = body_len};
    gateway_op_answer(gw, op, &a);
}

static void gateway_op_refuse(gateway_t *gw, gateway_op_t *op, int code, const char *message)
{
    gateway_op_finish(gw, op, code, message != NULL ? message : qc_strerror(code), NULL, 0);
}

/* A refusal that names the state the load already reached (RpcReply.load_state), for a
 * device to act on without reading words. */
static void gateway_op_refuse_state(gateway_t *gw, gateway_op_t *op, int code, const char *message,
                                    int load_state)
{
    proto_rpc_answer_t a = {.code = code, .message = message, .load_state = load_state};
    if (a.load_state < 0 || a.load_state > QUANCUN__LOAD_STATE__LOAD_LATE_CONFIRMED)
        a.load_state = 0; /* a ledger's unknown state is not passed on */
    gateway_op_answer(gw, op, &a);
}

/* Sends a downstream call for op, or refuses the device when it cannot be sent. */
static void gateway_op_call(gateway_t *gw, gateway_op_t *op, proto_rpc_client_t *cli,
                            gateway_stage_t stage, const char *method, const ProtobufCMessage *msg)
{
    uint8_t *body = NULL;
    size_t body_len = 0;
    int rc = proto_pack(msg, &body, &body_len);
    if (rc != 0) {
        gateway_op_refuse(gw, op, rc, NULL);
        return;
    }
    uint64_t request_id = 0;
    op->stage = stage;
    /* Every downstream call of the gateway is idempotent: reserve and settle are idempotent by
     * txn_id on the ledger, which releases one stored allow per load whatever is resent. */
    rc = proto_rpc_client_send(cli, method, body, body_len, (int)gw->cfg.rpc_timeout_ms,
                               PROTO_RPC_IDEMPOTENT, op, &request_id);
    free(body);
    if (rc != 0) {
        ops_counter_add(gw->m_unavailable, 1);
        gateway_op_refuse(gw, op, QC_EUNAVAIL, "service unavailable - try again");
    }
}

/* ------------------------------------------------------------------ load */

/* True for refusals that mean someone may be forging: they go to the audit log. A malformed
 * or oversized message is refused too, but is not evidence of anything. */
static bool gateway_security_code(int code)
{
    switch (code) {
    case QC_EBADSIG:
    case QC_EKEYID:
    case QC_ECERT:
    case QC_ECERTEXPIRED:
    case QC_ECERTNOTYET:
    case QC_ECERTREVOKED:
    case QC_ECERTUSAGE:
    case QC_ECERTCA:
    case QC_EDEVICEID:
        return true;
    default:
        return false;
    }
}

static void gateway_load_start(gateway_t *gw, gateway_op_t *op)
{
    Quancun__LoadRequest *req = NULL;
    uint8_t digest[PROTO_DIGEST_SIZE];
    uint64_t now_ms = ops_time_wall_ms();
    int rc = gateway_verify_request(gateway_trust_certs(gw->trust), op->req->body,
                                    op->req->body_len, (time_t)(now_ms / 1000), &req, digest);
    if (rc != 0) {
        ops_log_limited(OPS_LOG_WARN, "load.refused", op->req->peer_key, "error", qc_errname(rc),
                        NULL);
        if (gateway_security_code(rc))
            proto_audit_event(gw->audit, "security.bad_request", NULL, op->req->body,
                              op->req->body_len);
        gateway_op_refuse(gw, op, rc, NULL);
        return;
    }
    op->shard = proto_shard_of(req->account_id, gw->shard_count);
    quancun__load_request__free_unpacked(req, NULL);
    /* The ledger verifies the request again, debits, commits, and only then has the bank sign
     * the allow: the gateway passes on the device's exact bytes and nothing of its own. */
    Qcledger__ReserveRequest rr = QCLEDGER__RESERVE_REQUEST__INIT;
    rr.request.data = op->req->body;
    rr.request.len = op->req->body_len;
    gateway_op_call(gw, op, gw->shards[op->shard], GATEWAY_OP_RESERVE, "reserve", &rr.base);
}

static void gateway_load_reserved(gateway_t *gw, gateway_op_t *op, const proto_rpc_reply_t *reply)
{
    Qcledger__ReserveReply *rr =
        qcledger__reserve_reply__unpack(NULL, reply->body_len, reply->body);
    /* A load the ledger settled before any allow was stored (its deadline passed while the
     * signer was down) comes back with none: that is an answer, not a malformed reply. */
    if (rr == NULL || rr->load == NULL ||
        (rr->load->state == QUANCUN__LOAD_STATE__LOAD_RESERVED && rr->allow.len == 0)) {
        if (rr != NULL)
            qcledger__reserve_reply__free_unpacked(rr, NULL);
        gateway_op_refuse(gw, op, QC_EINTERNAL, "the ledger's reply was malformed");
        return;
    }
    /* A retried request whose load was settled meanwhile (its deadline passed, say) must not be
     * applied now: the device goes back to idle on this refusal. */
    if (rr->load->state != QUANCUN__LOAD_STATE__LOAD_RESERVED) {
        const ProtobufCEnumValue *state =
            protobuf_c_enum_descriptor_get_value(&quancun__load_state__descriptor, rr->load->state);
        char message[GATEWAY_MESSAGE_MAX];
        snprintf(message, sizeof message, "the load is already settled: %s",
                 state != NULL ? state->name : "unknown state");
        int load_state = (int)rr->load->state;
        qcledger__reserve_reply__free_unpacked(rr, NULL);
        gateway_op_refuse_state(gw, op, QC_ESTATE, message, load_state);
        return;
    }
    gateway_op_finish(gw, op, 0, NULL, rr->allow.data, rr->allow.len);
    qcledger__reserve_reply__free_unpacked(rr, NULL);
}

/* ------------------------------------------------------------------ report */

static void gateway_report_start(gateway_t *gw, gateway_op_t *op)
{
    Quancun__ExecutionReport *rep = NULL;
    time_t now = (time_t)(ops_time_wall_ms() / 1000);
    int rc = gateway_verify_report(gateway_trust_certs(gw->trust), op->req->body, op->req->body_len,
                                   now, &rep);
    if (rc == QC_ECERTREVOKED || rc == QC_ECERTEXPIRED || rc == QC_ECRLSTALE) {
        /* The certificate was revoked, or expired, after the device signed its request. Its
         * report is still the only evidence of what the device applied: refusing it would let
         * the deadline refund a load the device holds (money created, and the device could
         * never settle it). Revocation and expiry stop new loads; a report can only settle this
         * device's own loads, and the ledger checks it against the load and the enrolled
         * certificate, as it does for a device revoked in its registry. Chain and signature
         * still hold. */
        ops_log_limited(OPS_LOG_WARN, "report.certificate_no_longer_valid", op->req->peer_key,
                        "error", qc_errname(rc), NULL);
        proto_audit_event(gw->audit, "security.report_certificate_no_longer_valid", NULL,
                          op->req->body, op->req->body_len);
        rc = gateway_verify_report(gw->report_certs, op->req->body, op->req->body_len, now, &rep);
    }
    if (rc != 0) {
        /* Not the device speaking: a security event, and nothing is settled. */
        ops_counter_add(gw->m_bad_reports, 1);
        ops_log_limited(OPS_LOG_WARN, "security.bad_report", op->req->peer_key, "error",
                        qc_errname(rc), NULL);
        proto_audit_event(gw->audit, "security.bad_report", NULL, op->req->body, op->req->body_len);
        gateway_op_refuse(gw, op, rc, NULL);
        return;
    }
    op->shard = proto_shard_of(rep->account_id, gw->shard_count);
    Qcledger__SettleRequest sr = QCLEDGER__SETTLE_REQUEST__INIT;
    sr.txn_id = rep->txn_id;
    sr.report.data = op->req->body;
    sr.report.len = op->req->body_len;
    sr.verdict = rep->status;
    gateway_op_call(gw, op, gw->shards[op->shard], GATEWAY_OP_SETTLE, "settle", &sr.base);
    quancun__execution_report__free_unpacked(rep, NULL);
}

static void gateway_report_settled(gateway_t *gw, gateway_op_t *op, const proto_rpc_reply_t *reply)
{
    Qcledger__SettleReply *sr = qcledger__settle_reply__unpack(NULL, reply->body_len, reply->body);
    if (sr == NULL || sr->load == NULL || sr->load->state == QUANCUN__LOAD_STATE__LOAD_NONE ||
        sr->load->state == QUANCUN__LOAD_STATE__LOAD_RESERVED || sr->outcome.len == 0) {
        if (sr != NULL)
            qcledger__settle_reply__free_unpacked(sr, NULL);
        gateway_op_refuse(gw, op, QC_EINTERNAL, "the ledger's reply was malformed");
        return;
    }
    gateway_op_finish(gw, op, 0, NULL, sr->outcome.data, sr->outcome.len);
    qcledger__settle_reply__free_unpacked(sr, NULL);
}

/* ------------------------------------------------------------------ receipts */

/* The audit method a device's read method is forwarded to. */
static const char *gateway_audit_method(const char *method)
{
    return strcmp(method, PROTO_METHOD_RECEIPT) == 0 ? "prove" : "consistency";
}

/* A device asks for a receipt or a consistency proof: only its shape is checked here (a
 * receipt proves itself to the device, under the bank's checkpoint key), and it is passed on
 * as it came. */
static void gateway_receipt_start(gateway_t *gw, gateway_op_t *op)
{
    if (gw->audit_reader == NULL) {
        gateway_op_refuse(gw, op, QC_EUNAVAIL, "this gateway has no audit log configured");
        return;
    }
    int rc = proto_receipt_check_request(op->req->method, op->req->body, op->req->body_len);
    if (rc != 0) {
        gateway_op_refuse(gw, op, rc, NULL);
        return;
    }
    uint64_t request_id = 0;
    op->stage = GATEWAY_OP_AUDIT_READ;
    /* Reads: idempotent. */
    rc = proto_rpc_client_send(gw->audit_reader, gateway_audit_method(op->req->method),
                               op->req->body, op->req->body_len, (int)gw->cfg.rpc_timeout_ms,
                               PROTO_RPC_IDEMPOTENT, op, &request_id);
    if (rc != 0) {
        ops_counter_add(gw->m_unavailable, 1);
        gateway_op_refuse(gw, op, QC_EUNAVAIL, "service unavailable - try again");
    }
}

static void gateway_receipt_done(gateway_t *gw, gateway_op_t *op, const proto_rpc_reply_t *reply)
{
    int rc = proto_receipt_check_reply(op->req->method, reply->body, reply->body_len);
    if (rc != 0) {
        ops_log_limited(OPS_LOG_WARN, "gateway.audit_reply_malformed", NULL, "error",
                        qc_errname(rc), NULL);
        gateway_op_refuse(gw, op, QC_EINTERNAL, "the audit log's reply was malformed");
        return;
    }
    gateway_op_finish(gw, op, 0, NULL, reply->body, reply->body_len);
}

/* ------------------------------------------------------------------ loop */

static void gateway_on_done(void *arg, void *tag, int code, proto_rpc_reply_t *reply)
{
    gateway_t *gw = arg;
    gateway_op_t *op = tag;
    assert(op >= gw->ops);
    assert(op < gw->ops + GATEWAY_OPS_MAX);
    assert(op->stage != GATEWAY_OP_FREE); /* invariant 1 */
    if (code != 0) {
        ops_counter_add(gw->m_unavailable, 1);
        gateway_op_refuse(gw, op, QC_EUNAVAIL, "service unavailable - try again");
    } else if (reply->code != 0) {
        /* The ledger's refusal (its signer's failure included), passed on with its words
         * and the load's state when the ledger named it. */
        gateway_op_refuse_state(gw, op, reply->code, reply->message, reply->load_state);
    } else {
        switch (op->stage) {
        case GATEWAY_OP_RESERVE:
            gateway_load_reserved(gw, op, reply);
            break;
        case GATEWAY_OP_SETTLE:
            gateway_report_settled(gw, op, reply);
            break;
        case GATEWAY_OP_AUDIT_READ:
            gateway_receipt_done(gw, op, reply);
            break;
        case GATEWAY_OP_FREE:
        case GATEWAY_OP_VERIFY:
            assert(!"no call in flight in this stage");
        }
    }
    proto_rpc_reply_destroy(&reply);
}

static void gateway_accept(gateway_t *gw, proto_rpc_request_t *req)
{
    /* Receipts wait, like new loads, when only the reports' reserve is left. */
    bool is_load = strcmp(req->method, "load") == 0;
    bool is_receipt = gateway_is_receipt(req->method);
    bool over = gateway_conns_admit(gw->conns, req->fd, ops_time_mono_ns() / 1000000u) ==
                GATEWAY_CONNS_BUSY;
    gateway_op_t *op = NULL;
    if (!over && ((!is_load && !is_receipt) || gw->free_count > GATEWAY_OPS_REPORT_RESERVE))
        op = gateway_op_new(gw, req);
    if (op == NULL) {
        ops_counter_add(gw->m_busy, 1);
        int rc = proto_rpc_server_reply(gw->server, req, QC_EBUSY,
                                        over ? GATEWAY_CONNECTION_LIMIT_MESSAGE : NULL, NULL, 0);
        if (rc != 0)
            ops_log_limited(OPS_LOG_WARN, "gateway.reply_failed", NULL, "error", qc_errname(rc),
                            NULL);
        proto_rpc_request_destroy(&req);
        return;
    }
    op->stage = GATEWAY_OP_VERIFY; /* every path below moves it on or frees it */
    if (is_load)
        gateway_load_start(gw, op);
    else if (strcmp(req->method, "report") == 0 || strcmp(req->method, "sync") == 0)
        gateway_report_start(gw, op);
    else if (is_receipt)
        gateway_receipt_start(gw, op);
    else
        gateway_op_refuse(gw, op, QC_EMETHOD, NULL);
}

int gateway_run(gateway_t *gw)
{
    assert(gw != NULL);
    zmq_pollitem_t items[GATEWAY_POLLITEMS_MAX];
    proto_rpc_client_t *clients[GATEWAY_SHARDS_MAX + 1]; /* the shards and the audit reader */
    uint32_t client_count = 0;
    for (uint32_t s = 0; s < gw->shard_count; s++)
        clients[client_count++] = gw->shards[s];
    if (gw->audit_reader != NULL)
        clients[client_count++] = gw->audit_reader;

    while (!ops_signal_stop_requested()) {
        int n = 0;
        items[n].socket = proto_rpc_server_socket(gw->server);
        items[n].fd = 0;
        items[n].events = ZMQ_POLLIN;
        items[n].revents = 0;
        n++;
        long timeout = GATEWAY_POLL_MAX_MS;
        for (uint32_t c = 0; c < client_count; c++) {
            n += proto_rpc_client_pollitems(clients[c], &items[n], GATEWAY_POLLITEMS_MAX - n);
            int t = proto_rpc_client_next_timeout_ms(clients[c]);
            if (t >= 0 && t < timeout)
                timeout = t;
        }
        n += proto_audit_pollitems(gw->audit, &items[n], GATEWAY_POLLITEMS_MAX - n);
        int t = proto_audit_next_timeout_ms(gw->audit);
        if (t >= 0 && t < timeout)
            timeout = t;
        items[n].socket = gateway_conns_socket(gw->conns);
        items[n].fd = 0;
        items[n].events = ZMQ_POLLIN;
        items[n].revents = 0;
        n++;
        t = gateway_conns_next_timeout_ms(gw->conns, ops_time_mono_ns() / 1000000u);
        if (t >= 0 && t < timeout)
            timeout = t;
        if (zmq_poll(items, n, timeout) < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ETERM)
                return QC_EIO;
            ops_log(OPS_LOG_ERROR, "gateway.poll_failed", "errno", zmq_strerror(errno), NULL);
            return QC_EIO;
        }
        /* Before the calls: a connection is known to be in or over before its first call. */
        gateway_conns_process(gw->conns, ops_time_mono_ns() / 1000000u);
        if (items[0].revents & ZMQ_POLLIN) {
            for (int i = 0; i < GATEWAY_RECV_BATCH_MAX; i++) {
                proto_rpc_request_t *req = NULL;
                if (proto_rpc_server_recv(gw->server, 0, &req) != 0)
                    break;
                gateway_accept(gw, req);
            }
        }
        for (uint32_t c = 0; c < client_count; c++)
            proto_rpc_client_process(clients[c], gateway_on_done, gw);
        proto_audit_process(gw->audit);
        /* A failed re-read is logged by the poll and keeps the current store: the gateway
         * serves on, and the next SIGHUP or due time tries again. */
        QC_IGNORE(gateway_trust_poll(gw->trust, ops_time_mono_ns() / 1000000u,
                                     ops_signal_hup_generation()));
    }
    return 0;
}

/* ------------------------------------------------------------------ life cycle */

/* Splits cfg->ledger on ';' and connects one client per shard. */
static int gateway_connect_shards(gateway_t *gw, void *ctx)
{
    const char *p = gw->cfg.ledger;
    while (*p != '\0') {
        const char *end = strchr(p, ';');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        if (len == 0 || len >= GATEWAY_ENDPOINTS_TEXT_MAX || gw->shard_count == GATEWAY_SHARDS_MAX)
            return QC_ECONFIG;
        char endpoints[GATEWAY_ENDPOINTS_TEXT_MAX];
        memcpy(endpoints, p, len);
        endpoints[len] = '\0';
        proto_rpc_client_config_t cc = {
            .service = "ledger",
            .endpoints = endpoints,
            .server_public_z85 = gw->cfg.ledger_key,
            .keys = gw->cfg.keys,
        };
        int rc = proto_rpc_client_new(ctx, &cc, &gw->shards[gw->shard_count]);
        if (rc != 0)
            return rc;
        gw->shard_count++;
        p += len;
        if (*p == ';')
            p++;
    }
    return gw->shard_count > 0 ? 0 : QC_ECONFIG;
}

static void gateway_metrics(gateway_t *gw)
{
    gw->m_loads_ok = ops_counter("qc_gateway_loads_total{result=\"allowed\"}", "device loads");
    gw->m_loads_refused = ops_counter("qc_gateway_loads_total{result=\"refused\"}", "device loads");
    gw->m_reports_ok = ops_counter("qc_gateway_reports_total{result=\"settled\"}", "reports");
    gw->m_reports_refused =
        ops_counter("qc_gateway_reports_total{result=\"refused\"}", "device reports");
    gw->m_bad_reports =
        ops_counter("qc_gateway_security_events_total{type=\"bad_report\"}", "security events");
    gw->m_unavailable =
        ops_counter("qc_gateway_downstream_unavailable_total", "a ledger shard did not answer");
    gw->m_busy = ops_counter("qc_gateway_busy_total", "device calls refused: table full");
    gw->m_receipts_ok =
        ops_counter("qc_gateway_receipts_total{result=\"answered\"}", "receipts and proofs");
    gw->m_receipts_refused =
        ops_counter("qc_gateway_receipts_total{result=\"refused\"}", "receipts and proofs");
    gw->m_load_seconds = ops_histogram("qc_gateway_load_seconds", "request to allow latency");
    gw->m_report_seconds = ops_histogram("qc_gateway_report_seconds", "report to outcome latency");
    gw->m_inflight = ops_gauge("qc_gateway_inflight", "device calls in flight");
}

int gateway_new(void *ctx, const gateway_config_t *cfg, gateway_t **out)
{
    assert(ctx != NULL);
    assert(cfg != NULL);
    assert(out != NULL);
    assert(cfg->keys != NULL);
    *out = NULL;
    if (cfg->rpc_timeout_ms <= 0 || cfg->ledger_key == NULL || cfg->ledger == NULL ||
        cfg->ca_path == NULL || cfg->listen == NULL)
        return QC_ECONFIG;
    gateway_t *gw = calloc(1, sizeof *gw);
    if (gw == NULL)
        return QC_ENOMEM;
    gw->cfg = *cfg;
    for (int i = GATEWAY_OPS_MAX - 1; i >= 0; i--)
        gw->free_ops[gw->free_count++] = i;
    gateway_metrics(gw);
    int rc = gateway_trust_new(cfg->ca_path, cfg->crl_path,
                               cfg->crl_stale_ok ? PROTO_TRUST_STALE_CRL_OK : 0,
                               ops_signal_hup_generation(), &gw->trust);
    if (rc == 0)
        rc = proto_trust_new_ex(cfg->ca_path, NULL, PROTO_TRUST_NO_CHECK_TIME, &gw->trust_report);
    if (rc == 0)
        rc = gateway_certcache_new(gw->trust_report, &gw->report_certs);
    if (rc != 0)
        goto err;
    if ((rc = gateway_connect_shards(gw, ctx)) != 0)
        goto err;
    rc = proto_audit_new(ctx, cfg->source != NULL ? cfg->source : "gateway", cfg->audit,
                         cfg->audit_key, cfg->keys, &gw->audit);
    if (rc != 0)
        goto err;
    if (cfg->audit != NULL && cfg->audit_key != NULL) {
        /* A client of its own: the sender's replies are the sender's to process. The
         * witnesses' logs differ, so a device's proofs come from the first witness that is
         * up (in order), not from each in turn: ';' between witnesses becomes ','. */
        char *list = strdup(cfg->audit);
        if (list == NULL) {
            rc = QC_ENOMEM;
            goto err;
        }
        for (char *p = strchr(list, ';'); p != NULL; p = strchr(p, ';'))
            *p = ',';
        proto_rpc_client_config_t ac = {
            .service = "audit",
            .endpoints = list,
            .server_public_z85 = cfg->audit_key,
            .keys = cfg->keys,
            .in_order = true,
        };
        rc = proto_rpc_client_new(ctx, &ac, &gw->audit_reader);
        free(list);
        if (rc != 0)
            goto err;
    }
    /* Devices are not pre-registered: their identity is their certificate and signatures. */
    proto_rpc_server_config_t srv = {
        .service = "gateway",
        .endpoint = cfg->listen,
        .keys = cfg->keys,
        .allow_any = true,
    };
    if ((rc = proto_rpc_server_new(ctx, &srv, &gw->server)) != 0)
        goto err;
    rc = gateway_conns_new(
        ctx, proto_rpc_server_socket(gw->server),
        cfg->max_connections > 0 ? cfg->max_connections : GATEWAY_CONNECTIONS_DEFAULT, &gw->conns);
    if (rc != 0)
        goto err;
    *out = gw;
    return 0;
err:
    gateway_destroy(&gw);
    return rc;
}

int gateway_inflight(const gateway_t *gw)
{
    assert(gw != NULL);
    return GATEWAY_OPS_MAX - gw->free_count;
}

void gateway_destroy(gateway_t **gw_p)
{
    if (gw_p == NULL || *gw_p == NULL)
        return;
    gateway_t *gw = *gw_p;
    for (int i = 0; i < GATEWAY_OPS_MAX; i++) {
        proto_rpc_request_destroy(&gw->ops[i].req);
    }
    gateway_conns_destroy(&gw->conns); /* its monitor is on the server's socket */
    proto_rpc_server_destroy(&gw->server);
    proto_audit_destroy(&gw->audit);
    proto_rpc_client_destroy(&gw->audit_reader);
    for (uint32_t s = 0; s < gw->shard_count; s++)
        proto_rpc_client_destroy(&gw->shards[s]);
    gateway_trust_destroy(&gw->trust);
    gateway_certcache_destroy(&gw->report_certs);
    proto_trust_destroy(&gw->trust_report);
    free(gw);
    *gw_p = NULL;
}

bool gateway_healthy(const gateway_t *gw, char *why, size_t why_cap)
{
    assert(gw != NULL);
    return gw->audit == NULL || proto_audit_healthy(gw->audit, why, why_cap);
}
