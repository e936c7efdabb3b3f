/* proto_audit.c - events of a service without storage, delivered to audit at least once.
 *
 * A ring of events; each is QUEUED (waiting to be sent) or SENT (an append in flight). A reply
 * frees it; a refusal that audit calls final (bad shape) is logged and frees it too; a timeout
 * puts it back to QUEUED with the same source_seq, so audit can deduplicate a resend. */
#include "proto_audit.h"

#include <assert.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit.pb-c.h"
#include "ops_log.h"
#include "ops_metrics.h"
#include "ops_time.h"
#include "proto_decode.h"
#include "proto_limits.h"
#include "qc_error.h"

typedef struct proto_audit_event {
    bool used;
    bool sent;
    uint64_t source_seq;
    uint64_t time_ms;
    char type[PROTO_AUDIT_NAME_MAX + 1];
    uint8_t txn_id[PROTO_TXN_ID_SIZE];
    bool has_txn;
    uint8_t *payload;
    size_t payload_len;
} proto_audit_event_t;

struct proto_audit {
    char source[PROTO_AUDIT_NAME_MAX + 1];
    proto_rpc_client_t *cli; /* NULL: log only */
    proto_audit_event_t events[PROTO_AUDIT_QUEUE_MAX];
    size_t head;  /* oldest event */
    size_t count; /* events in the ring */
    int inflight;
    uint64_t seq_base;
    uint64_t seq_next;
    ops_counter_t *m_raised, *m_delivered, *m_dropped;
    ops_gauge_t *m_queued;
};

static void proto_audit_free_event(proto_audit_t *ga, proto_audit_event_t *e)
{
    if (e->sent)
        ga->inflight--;
    free(e->payload);
    memset(e, 0, sizeof *e);
}

/* Drops empty slots at the head, so count covers the oldest live event onwards. */
static void proto_audit_compact(proto_audit_t *ga)
{
    while (ga->count > 0 && !ga->events[ga->head].used) {
        ga->head = (ga->head + 1) % PROTO_AUDIT_QUEUE_MAX;
        ga->count--;
    }
    ops_gauge_set(ga->m_queued, (int64_t)ga->count);
}

int proto_audit_new(void *ctx, const char *source, const char *endpoints, const char *audit_key,
                    const proto_curve_keypair_t *keys, proto_audit_t **out)
{
    assert(source != NULL);
    assert(out != NULL);
    *out = NULL;
    if (strlen(source) > PROTO_AUDIT_NAME_MAX || (endpoints != NULL && audit_key == NULL))
        return QC_ECONFIG;
    proto_audit_t *ga = calloc(1, sizeof *ga);
    if (ga == NULL)
        return QC_ENOMEM;
    snprintf(ga->source, sizeof ga->source, "%s", source);
    ga->seq_base = ops_time_wall_ms() << PROTO_AUDIT_SEQ_SHIFT;
    ga->m_raised = ops_counter("qc_proto_audit_events_total", "security events raised");
    ga->m_delivered =
        ops_counter("qc_proto_audit_delivered_total", "security events audit acknowledged");
    ga->m_dropped =
        ops_counter("qc_proto_audit_dropped_total", "security events dropped: queue full");
    ga->m_queued = ops_gauge("qc_proto_audit_queued", "security events waiting for audit");
    if (endpoints != NULL) {
        proto_rpc_client_config_t cc = {
            .service = "audit",
            .endpoints = endpoints,
            .server_public_z85 = audit_key,
            .keys = keys,
        };
        int rc = proto_rpc_client_new(ctx, &cc, &ga->cli);
        if (rc != 0) {
            free(ga);
            return rc;
        }
    }
    *out = ga;
    return 0;
}

void proto_audit_event(proto_audit_t *ga, const char *type, const uint8_t *txn_id,
                       const uint8_t *payload, size_t payload_len)
{
    assert(ga != NULL);
    assert(type != NULL);
    assert(strlen(type) <= PROTO_AUDIT_NAME_MAX);
    ops_counter_add(ga->m_raised, 1);
    if (ga->cli == NULL)
        return;
    if (ga->count == PROTO_AUDIT_QUEUE_MAX) {
        /* The oldest may be in flight (its slot is the tag of a call), so the newest goes. */
        ops_counter_add(ga->m_dropped, 1);
        ops_log(OPS_LOG_ERROR, "audit.event_dropped", "type", type, "why", "queue full", NULL);
        return;
    }
    proto_audit_event_t *e = &ga->events[(ga->head + ga->count) % PROTO_AUDIT_QUEUE_MAX];
    assert(!e->used);
    e->payload = malloc(payload_len > 0 ? payload_len : 1);
    if (e->payload == NULL) {
        ops_counter_add(ga->m_dropped, 1);
        return;
    }
    /* An empty payload may come as NULL (a report frame with no body): memcpy(dst, NULL, 0)
     * is undefined, and the sanitized gateway stopped on it (found by qc-fuzz-live). */
    if (payload_len > 0)
        memcpy(e->payload, payload, payload_len);
    e->payload_len = payload_len;
    e->used = true;
    e->source_seq = ga->seq_base + ++ga->seq_next;
    e->time_ms = ops_time_wall_ms();
    snprintf(e->type, sizeof e->type, "%s", type);
    if (txn_id != NULL) {
        memcpy(e->txn_id, txn_id, PROTO_TXN_ID_SIZE);
        e->has_txn = true;
    }
    ga->count++;
    ops_gauge_set(ga->m_queued, (int64_t)ga->count);
}

proto_rpc_client_t *proto_audit_client(proto_audit_t *ga)
{
    assert(ga != NULL);
    return ga->cli;
}

static void proto_audit_send(proto_audit_t *ga, proto_audit_event_t *e)
{
    Qcaudit__AppendRequest req = QCAUDIT__APPEND_REQUEST__INIT;
    req.source = ga->source;
    req.source_seq = e->source_seq;
    req.type = e->type;
    req.time_ms = e->time_ms;
    if (e->has_txn) {
        req.txn_id.data = e->txn_id;
        req.txn_id.len = PROTO_TXN_ID_SIZE;
    }
    req.payload.data = e->payload;
    req.payload.len = e->payload_len;
    uint8_t *body = NULL;
    size_t body_len = 0;
    if (proto_pack(&req.base, &body, &body_len) != 0)
        return;
    uint64_t request_id = 0;
    int rc = proto_rpc_client_send(ga->cli, "append", body, body_len, PROTO_AUDIT_TIMEOUT_MS,
                                   PROTO_RPC_IDEMPOTENT, e, &request_id);
    free(body);
    if (rc == 0) {
        e->sent = true;
        ga->inflight++;
    }
}

static void proto_audit_on_done(void *arg, void *tag, int code, proto_rpc_reply_t *reply)
{
    proto_audit_t *ga = arg;
    proto_audit_event_t *e = tag;
    assert(e >= ga->events);
    assert(e < ga->events + PROTO_AUDIT_QUEUE_MAX);
    assert(e->used);
    assert(e->sent);
    if (code != 0 || reply->code == QC_EFULL || reply->code == QC_EIO) {
        /* Audit did not take it: resend later with the same source_seq. */
        e->sent = false;
        ga->inflight--;
    } else {
        if (reply->code == 0)
            ops_counter_add(ga->m_delivered, 1);
        else
            ops_log(OPS_LOG_ERROR, "audit.event_refused", "type", e->type, "error",
                    qc_errname(reply->code), "message", reply->message, NULL);
        proto_audit_free_event(ga, e);
        proto_audit_compact(ga);
    }
    proto_rpc_reply_destroy(&reply);
}

void proto_audit_process(proto_audit_t *ga)
{
    assert(ga != NULL);
    if (ga->cli == NULL)
        return;
    proto_rpc_client_process(ga->cli, proto_audit_on_done, ga);
    for (size_t i = 0; i < ga->count && ga->inflight < PROTO_AUDIT_INFLIGHT_MAX; i++) {
        proto_audit_event_t *e = &ga->events[(ga->head + i) % PROTO_AUDIT_QUEUE_MAX];
        if (e->used && !e->sent)
            proto_audit_send(ga, e);
    }
}

void proto_audit_destroy(proto_audit_t **ga_p)
{
    if (ga_p == NULL || *ga_p == NULL)
        return;
    proto_audit_t *ga = *ga_p;
    proto_rpc_client_destroy(&ga->cli);
    for (size_t i = 0; i < PROTO_AUDIT_QUEUE_MAX; i++)
        free(ga->events[i].payload);
    free(ga);
    *ga_p = NULL;
}
