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
#include "proto_id.h"
#include "qc_error.h"

/* intake_decode()'s answer for a read method (audit_proof.h): no event, answered after the
 * batch's commit so that it sees every event acknowledged before it. */
#define INTAKE_READ 1
#define AUDIT_INTAKE_STORAGE_POLL_MS 1000 /* look at free space and the map this often */

struct audit_intake {
    audit_store_t *store;
    proto_rpc_server_t *srv;
    uint32_t batch_max;
    uint32_t poll_ms;
    /* One batch: the requests, their decoded bodies, the events built from them. */
    proto_rpc_request_t **reqs;
    Qcaudit__AppendRequest **msgs;
    int *codes;
    audit_event_t *events;
    size_t *event_of; /* index into events of request i, when codes[i] == 0 */
    audit_append_result_t *results;
    ops_counter_t *m_appended;
    ops_counter_t *m_dedupe;
    ops_counter_t *m_refused;
    ops_counter_t *m_reads;
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
    in->codes = calloc(n, sizeof *in->codes);
    in->events = calloc(n, sizeof *in->events);
    in->event_of = calloc(n, sizeof *in->event_of);
    in->results = calloc(n, sizeof *in->results);
    if (in->reqs == NULL || in->msgs == NULL || in->codes == NULL || in->events == NULL ||
        in->event_of == NULL || in->results == NULL) {
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
    in->m_commit = ops_histogram("qc_audit_commit_seconds", "Group commit of append requests");
    *out = in;
    return 0;
}

/* Decodes and checks request i; on success sets in->msgs[i] and fills ev. */
static int intake_decode(audit_intake_t *in, size_t i, audit_event_t *ev)
{
    const proto_rpc_request_t *req = in->reqs[i];
    if (audit_proof_is_method(req->method))
        return INTAKE_READ;
    if (strcmp(req->method, AUDIT_INTAKE_METHOD) != 0)
        return QC_EMETHOD;
    Qcaudit__AppendRequest *m = qcaudit__append_request__unpack(NULL, req->body_len, req->body);
    if (m == NULL)
        return QC_EDECODE;
    in->msgs[i] = m;
    /* Canonical input only: a NUL inside a string would be cut short by protobuf-c. */
    if (qcaudit__append_request__get_packed_size(m) != req->body_len)
        return QC_EDECODE;
    if (m->source == NULL || m->type == NULL || m->source[0] == '\0' || m->type[0] == '\0' ||
        m->source_seq == 0)
        return QC_EMISSING;
    if (strcmp(m->source, AUDIT_SOURCE_SELF) == 0 ||
        strncmp(m->source, AUDIT_RELAY_SOURCE_PREFIX, strlen(AUDIT_RELAY_SOURCE_PREFIX)) == 0)
        return QC_EDENIED;
    size_t sl = strlen(m->source), tl = strlen(m->type);
    if (sl > AUDIT_SOURCE_MAX || tl > AUDIT_TYPE_MAX || m->txn_id.len > AUDIT_TXN_ID_MAX ||
        m->payload.len > AUDIT_PAYLOAD_MAX)
        return QC_ETOOBIG;
    if (proto_id_check_len(m->source, sl, AUDIT_SOURCE_MAX, PROTO_ID_VISIBLE) != 0 ||
        proto_id_check_len(m->type, tl, AUDIT_TYPE_MAX, PROTO_ID_VISIBLE) != 0 ||
        (m->txn_id.len != 0 && m->txn_id.len != PROTO_TXN_ID_SIZE))
        return QC_EINVAL;
    *ev = (audit_event_t){
        .source = m->source,
        .source_seq = m->source_seq,
        .type = m->type,
        .txn_id = m->txn_id.data,
        .txn_id_len = m->txn_id.len,
        .payload = m->payload.data,
        .payload_len = m->payload.len,
        .time_ms = m->time_ms,
    };
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

static void intake_reply(audit_intake_t *in, size_t i, int code, const audit_append_result_t *r)
{
    if (code != 0) {
        ops_counter_add(in->m_refused, 1);
        intake_send(in, i, code, NULL, 0);
        return;
    }
    Qcaudit__AppendReply rep = QCAUDIT__APPEND_REPLY__INIT;
    rep.seq = r->seq;
    rep.duplicate = r->duplicate;
    uint8_t *body = NULL;
    size_t len = 0;
    int rc = proto_pack(&rep.base, &body, &len);
    intake_send(in, i, rc, body, len);
    free(body);
}

/* Handles the n requests of in->reqs: one commit for all valid ones, then every reply. */
static void intake_batch(audit_intake_t *in, size_t n)
{
    size_t ne = 0;
    for (size_t i = 0; i < n; i++) {
        in->codes[i] = intake_decode(in, i, &in->events[ne]);
        if (in->codes[i] == 0)
            in->event_of[i] = ne++;
    }
    int rc = 0;
    if (ne > 0) {
        uint64_t t0 = ops_time_mono_ns();
        rc = audit_store_append(in->store, in->events, ne, in->results);
        ops_histogram_observe(in->m_commit, (double)(ops_time_mono_ns() - t0) / 1e9);
        /* Senders resend until it commits: one line per storm, not per resend; a full disk
         * or map is logged by the store's watch once per change of state. */
        if (rc != 0 && rc != QC_ENOSPACE && rc != QC_EFULL)
            ops_log_limited(OPS_LOG_ERROR, "audit.commit_failed", NULL, "error", qc_strerror(rc),
                            NULL);
        else
            ops_fault_point("audit.append_after_commit_before_reply");
    }
    for (size_t i = 0; i < n; i++) {
        const audit_append_result_t *r = NULL;
        int code = in->codes[i];
        if (code == INTAKE_READ) {
            intake_read(in, i);
            proto_rpc_request_destroy(&in->reqs[i]);
            continue;
        }
        if (code == 0) {
            r = &in->results[in->event_of[i]];
            code = rc != 0 ? rc : r->code;
        }
        if (code == 0)
            ops_counter_add(r->duplicate ? in->m_dedupe : in->m_appended, 1);
        intake_reply(in, i, code, r);
        if (in->msgs[i] != NULL)
            qcaudit__append_request__free_unpacked(in->msgs[i], NULL);
        in->msgs[i] = NULL;
        proto_rpc_request_destroy(&in->reqs[i]);
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
    free(in->codes);
    free(in->events);
    free(in->event_of);
    free(in->results);
    free(in);
    *in_p = NULL;
}
