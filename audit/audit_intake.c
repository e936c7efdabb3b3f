/* audit_intake.c - serves "append": decode, check, group-commit, then reply to every caller. */
#include "audit_intake.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "audit.pb-c.h"
#include "audit_proof.h"
#include "audit_relay.h"
#include "ops_fault.h"
#include "ops_log.h"
#include "ops_metrics.h"
#include "ops_signal.h"
#include "ops_time.h"
#include "proto_decode.h"
#include "qc_error.h"

/* intake_decode()'s answer for a read method (audit_proof.h): no event, answered after the
 * batch's commit so that it sees every event acknowledged before it. */
#define INTAKE_READ 1
#define AUDIT_INTAKE_STORAGE_POLL_MS 1000 /* look at free space and the map this often */
/* Events of one commit: a round takes requests while one more frame of the most events a
 * frame may hold still fits. */
#define AUDIT_INTAKE_EVENTS_MAX AUDIT_STORE_BATCH_MAX
_Static_assert(AUDIT_INTAKE_FRAME_EVENTS_MAX <= AUDIT_INTAKE_EVENTS_MAX,
               "one frame's events fit one commit");

struct audit_intake {
    audit_store_t *store;
    proto_rpc_server_t *srv;
    uint32_t batch_max;
    uint32_t poll_ms;
    /* One round: the requests (batch_max), their decoded bodies, and for each its items:
     * one for "append", one per event for "append_batch". */
    proto_rpc_request_t **reqs;
    Qcaudit__AppendRequest **msgs;     /* "append" */
    Qcaudit__AppendBatchRequest **bms; /* "append_batch" */
    int *codes;                        /* the request's own code (0, INTAKE_READ, QC_E*) */
    size_t *item_first;                /* its items [first, first + count) */
    size_t *item_count;
    /* AUDIT_INTAKE_EVENTS_MAX items; the events that passed their checks, in order. */
    int *item_code;
    size_t *item_event; /* index into events, when item_code == 0 */
    audit_event_t *events;
    audit_append_result_t *results;
    ops_counter_t *m_appended;
    ops_counter_t *m_dedupe;
    ops_counter_t *m_refused;
    ops_counter_t *m_reads;
    ops_counter_t *m_frames;
    ops_histogram_t *m_commit;
};

int audit_intake_new(const audit_intake_config_t *cfg, audit_intake_t **out)
{
    assert(cfg != NULL);
    assert(cfg->zctx != NULL);
    assert(cfg->store != NULL);
    assert(out != NULL);
    *out = NULL;
    if (cfg->batch_max < 1 || cfg->batch_max > AUDIT_STORE_BATCH_MAX || cfg->keys == NULL ||
        cfg->listen == NULL || cfg->allow_path == NULL)
        return QC_ECONFIG;
    audit_intake_t *in = calloc(1, sizeof *in);
    if (in == NULL)
        return QC_ENOMEM;
    size_t n = cfg->batch_max;
    in->reqs = calloc(n, sizeof *in->reqs);
    in->msgs = calloc(n, sizeof *in->msgs);
    in->bms = calloc(n, sizeof *in->bms);
    in->codes = calloc(n, sizeof *in->codes);
    in->item_first = calloc(n, sizeof *in->item_first);
    in->item_count = calloc(n, sizeof *in->item_count);
    in->item_code = calloc(AUDIT_INTAKE_EVENTS_MAX, sizeof *in->item_code);
    in->item_event = calloc(AUDIT_INTAKE_EVENTS_MAX, sizeof *in->item_event);
    in->events = calloc(AUDIT_INTAKE_EVENTS_MAX, sizeof *in->events);
    in->results = calloc(AUDIT_INTAKE_EVENTS_MAX, sizeof *in->results);
    if (in->reqs == NULL || in->msgs == NULL || in->bms == NULL || in->codes == NULL ||
        in->item_first == NULL || in->item_count == NULL || in->item_code == NULL ||
        in->item_event == NULL || in->events == NULL || in->results == NULL) {
        audit_intake_destroy(&in);
        return QC_ENOMEM;
    }
    in->store = cfg->store;
    in->batch_max = cfg->batch_max;
    in->poll_ms = cfg->poll_ms;
    proto_rpc_server_config_t sc = {
        .service = "audit",
        .endpoint = cfg->listen,
        .keys = cfg->keys,
        .allow_path = cfg->allow_path,
    };
    int rc = proto_rpc_server_new(cfg->zctx, &sc, &in->srv);
    if (rc != 0) {
        audit_intake_destroy(&in);
        return rc;
    }
    in->m_appended = ops_counter("qc_audit_entries_appended_total", "Entries appended to the log");
    in->m_dedupe = ops_counter("qc_audit_dedupe_hits_total", "Events already in the log");
    in->m_refused = ops_counter("qc_audit_append_refused_total", "append requests refused");
    in->m_reads = ops_counter("qc_audit_proof_reads_total", "tree_head, prove and consistency "
                                                            "requests answered");
    in->m_frames =
        ops_counter("qc_audit_append_frames_total", "append and append_batch requests received");
    in->m_commit = ops_histogram("qc_audit_commit_seconds", "Group commit of append requests");
    *out = in;
    return 0;
}

/* Adds item k for event m: its own code, and the event when it passed its checks. */
static void intake_item(audit_intake_t *in, size_t k, const Qcaudit__AppendRequest *m, size_t *ne)
{
    assert(k < AUDIT_INTAKE_EVENTS_MAX);
    in->item_code[k] = audit_frame_check(m, &in->events[*ne]);
    if (in->item_code[k] == 0)
        in->item_event[k] = (*ne)++;
}

/* Decodes request i into items from *ni on (events from *ne on); returns the request's own
 * code: 0 (its items decide), INTAKE_READ, or why the whole request is refused. */
static int intake_decode(audit_intake_t *in, size_t i, size_t *ni, size_t *ne)
{
    const proto_rpc_request_t *req = in->reqs[i];
    in->item_first[i] = *ni;
    in->item_count[i] = 0;
    if (audit_proof_is_method(req->method))
        return INTAKE_READ;
    ops_counter_add(in->m_frames, 1);
    if (strcmp(req->method, AUDIT_INTAKE_METHOD) == 0) {
        int rc = audit_frame_decode_one(req->body, req->body_len, &in->msgs[i]);
        if (rc != 0)
            return rc;
        intake_item(in, (*ni)++, in->msgs[i], ne);
        in->item_count[i] = 1;
        return 0;
    }
    if (strcmp(req->method, AUDIT_INTAKE_BATCH_METHOD) != 0)
        return QC_EMETHOD;
    int rc = audit_frame_decode_batch(req->body, req->body_len, &in->bms[i]);
    if (rc != 0)
        return rc;
    const Qcaudit__AppendBatchRequest *b = in->bms[i];
    for (size_t e = 0; e < b->n_events; e++)
        intake_item(in, (*ni)++, b->events[e], ne);
    in->item_count[i] = b->n_events;
    return 0;
}

/* Sends one reply; a reply that cannot be sent is logged, and the sender's at-least-once
 * retry asks again (its events are deduplicated). */
static void intake_send(audit_intake_t *in, size_t i, int code, const uint8_t *body, size_t len)
{
    int rc = proto_rpc_server_reply(in->srv, in->reqs[i], code, NULL, body, len);
    if (rc != 0)
        ops_log(OPS_LOG_WARN, "audit.reply_failed", "error", qc_errname(rc), NULL);
}

/* Replies to request i with msg packed (or the packing's failure). */
static void intake_send_msg(audit_intake_t *in, size_t i, const ProtobufCMessage *msg)
{
    uint8_t *body = NULL;
    size_t len = 0;
    int rc = proto_pack(msg, &body, &len);
    intake_send(in, i, rc, body, len);
    free(body);
}

/* Answers read request i from the store (audit_proof.h). */
static void intake_read(audit_intake_t *in, size_t i)
{
    const proto_rpc_request_t *req = in->reqs[i];
    uint8_t *body = NULL;
    size_t len = 0;
    int rc = audit_proof_answer(in->store, req->method, req->body, req->body_len, &body, &len);
    ops_counter_add(rc == 0 ? in->m_reads : in->m_refused, 1);
    intake_send(in, i, rc, body, len);
    free(body);
}

/* Item k's outcome after a commit that returned rc: its code, and its result when 0. */
static int intake_outcome(audit_intake_t *in, size_t k, int rc, const audit_append_result_t **r)
{
    *r = NULL;
    int code = in->item_code[k];
    if (code == 0) {
        *r = &in->results[in->item_event[k]];
        code = rc != 0 ? rc : (*r)->code;
    }
    if (code == 0)
        ops_counter_add((*r)->duplicate ? in->m_dedupe : in->m_appended, 1);
    else
        ops_counter_add(in->m_refused, 1);
    return code;
}

/* Replies to "append" request i (one item). */
static void intake_reply_one(audit_intake_t *in, size_t i, int rc)
{
    const audit_append_result_t *r = NULL;
    int code = intake_outcome(in, in->item_first[i], rc, &r);
    if (code != 0) {
        intake_send(in, i, code, NULL, 0);
        return;
    }
    Qcaudit__AppendReply rep = QCAUDIT__APPEND_REPLY__INIT;
    rep.seq = r->seq;
    rep.duplicate = r->duplicate;
    intake_send_msg(in, i, &rep.base);
}

/* Replies to "append_batch" request i: a failed commit that held any of its events answers
 * the whole frame with the failure (the caller resends it); otherwise one result per event. */
static void intake_reply_batch(audit_intake_t *in, size_t i, int rc)
{
    size_t first = in->item_first[i], count = in->item_count[i];
    assert(count >= 1 && count <= AUDIT_INTAKE_FRAME_EVENTS_MAX);
    for (size_t k = first; rc != 0 && k < first + count; k++) {
        if (in->item_code[k] == 0) {
            ops_counter_add(in->m_refused, count);
            intake_send(in, i, rc, NULL, 0);
            return;
        }
    }
    Qcaudit__AppendResult res[AUDIT_INTAKE_FRAME_EVENTS_MAX];
    Qcaudit__AppendResult *resp[AUDIT_INTAKE_FRAME_EVENTS_MAX];
    for (size_t k = 0; k < count; k++) {
        const audit_append_result_t *r = NULL;
        qcaudit__append_result__init(&res[k]);
        res[k].code = intake_outcome(in, first + k, rc, &r);
        if (res[k].code == 0) {
            res[k].seq = r->seq;
            res[k].duplicate = r->duplicate;
        }
        resp[k] = &res[k];
    }
    Qcaudit__AppendBatchReply rep = QCAUDIT__APPEND_BATCH_REPLY__INIT;
    rep.n_results = count;
    rep.results = resp;
    intake_send_msg(in, i, &rep.base);
}

/* Answers request i after its round's commit (rc) and frees what it held. */
static void intake_finish(audit_intake_t *in, size_t i, int rc)
{
    int code = in->codes[i];
    if (code == INTAKE_READ) {
        intake_read(in, i);
    } else if (code != 0) {
        ops_counter_add(in->m_refused, 1);
        intake_send(in, i, code, NULL, 0);
    } else if (in->bms[i] != NULL) {
        intake_reply_batch(in, i, rc);
    } else {
        intake_reply_one(in, i, rc);
    }
    if (in->msgs[i] != NULL)
        qcaudit__append_request__free_unpacked(in->msgs[i], NULL);
    if (in->bms[i] != NULL)
        qcaudit__append_batch_request__free_unpacked(in->bms[i], NULL);
    in->msgs[i] = NULL;
    in->bms[i] = NULL;
    proto_rpc_request_destroy(&in->reqs[i]);
}

/* Handles the n requests of in->reqs in rounds: each round decodes requests while one more
 * frame's events still fit, commits every valid event of the round at once (in the order
 * received), then answers the round's requests. */
static void intake_batch(audit_intake_t *in, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t start = i, ni = 0, ne = 0;
        for (; i < n && ni + AUDIT_INTAKE_FRAME_EVENTS_MAX <= AUDIT_INTAKE_EVENTS_MAX; i++)
            in->codes[i] = intake_decode(in, i, &ni, &ne);
        assert(i > start);
        assert(ne <= ni && ni <= AUDIT_INTAKE_EVENTS_MAX);
        int rc = 0;
        if (ne > 0) {
            uint64_t t0 = ops_time_mono_ns();
            rc = audit_store_append(in->store, in->events, ne, in->results);
            ops_histogram_observe(in->m_commit, (double)(ops_time_mono_ns() - t0) / 1e9);
            /* Senders resend until it commits: one line per storm, not per resend; a full
             * disk or map is logged by the store's watch once per change of state. */
            if (rc != 0 && rc != QC_ENOSPACE && rc != QC_EFULL)
                ops_log_limited(OPS_LOG_ERROR, "audit.commit_failed", NULL, "error",
                                qc_strerror(rc), NULL);
            else
                ops_fault_point("audit.append_after_commit_before_reply");
        }
        for (size_t j = start; j < i; j++)
            intake_finish(in, j, rc);
    }
}

int audit_intake_run(audit_intake_t *in)
{
    assert(in != NULL);
    uint64_t next_poll_ms = 0;
    while (!ops_signal_stop_requested()) {
        uint64_t now = ops_time_mono_ms();
        if (now >= next_poll_ms) {
            /* Free space and the map's use: gauges, and the way out of a full disk. */
            next_poll_ms = now + AUDIT_INTAKE_STORAGE_POLL_MS;
            audit_store_poll(in->store);
        }
        size_t n = 0;
        int rc = proto_rpc_server_recv(in->srv, (int)in->poll_ms, &in->reqs[0]);
        if (rc == QC_ETIMEOUT)
            continue;
        if (rc != 0)
            return rc;
        n = 1;
        /* Whatever else has already arrived joins this commit. */
        while (n < in->batch_max && proto_rpc_server_recv(in->srv, 0, &in->reqs[n]) == 0)
            n++;
        intake_batch(in, n);
    }
    return 0;
}

void audit_intake_destroy(audit_intake_t **in_p)
{
    if (in_p == NULL || *in_p == NULL)
        return;
    audit_intake_t *in = *in_p;
    proto_rpc_server_destroy(&in->srv);
    free(in->reqs);
    free(in->msgs);
    free(in->bms);
    free(in->codes);
    free(in->item_first);
    free(in->item_count);
    free(in->item_code);
    free(in->item_event);
    free(in->events);
    free(in->results);
    free(in);
    *in_p = NULL;
}
