/* proto_audit.c - events of a service without storage, delivered to every audit witness at
 * least once.
 *
 * One link per witness, each a ring of events; each event is QUEUED (waiting to be sent) or
 * SENT (in a frame in flight). Events go in frames ("append_batch"): every queued event, in
 * order, up to PROTO_AUDIT_BATCH_MAX events or PROTO_AUDIT_BATCH_BYTES of payload a frame, and
 * PROTO_AUDIT_FRAMES_INFLIGHT (one) frame in flight a witness, so that events raised while a
 * frame is in flight (its commit's fsync) leave together in the next one: no timer, no wait
 * when the sender is idle, and the order raised is the order appended. A result of 0 frees its
 * event; a refusal that audit calls final (bad shape) is logged and frees it too; a timeout, a
 * failed commit or a reply that does not match its frame puts its events back to QUEUED with the
 * same source_seqs, so the witness can deduplicate a resend. A witness that answers "append_batch"
 * with QC_EMETHOD (one from before it) is sent one event per "append" from then on. Links share
 * nothing but the source_seq counter: a witness that is down fills only its own ring. */
#include "proto_audit.h"

#include <assert.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

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

_Static_assert(PROTO_AUDIT_QUEUE_MAX <= UINT16_MAX + 1, "a ring slot fits a frame's uint16_t");

/* One frame in flight: the ring slots of its events, in the order sent. */
typedef struct proto_audit_frame {
    bool used;
    bool batch; /* "append_batch" (else one event by "append") */
    uint16_t count;
    uint16_t slot[PROTO_AUDIT_BATCH_MAX];
} proto_audit_frame_t;

/* One witness: its client, its ring and its frames in flight. */
typedef struct proto_audit_link {
    proto_audit_t *owner;
    proto_rpc_client_t *cli;
    proto_audit_event_t events[PROTO_AUDIT_QUEUE_MAX];
    size_t head;  /* oldest event */
    size_t count; /* events in the ring */
    proto_audit_frame_t frames[PROTO_AUDIT_INFLIGHT_MAX];
    int inflight; /* frames in flight */
    bool single;  /* the witness knows only "append" */
} proto_audit_link_t;

struct proto_audit {
    char source[PROTO_AUDIT_NAME_MAX + 1];
    size_t link_count; /* 0: log only */
    proto_audit_link_t *links;
    uint64_t seq_base;
    uint64_t seq_next;
    ops_counter_t *m_raised, *m_delivered, *m_dropped;
    ops_gauge_t *m_queued;
    /* For health, read from the HTTP thread. */
    _Atomic size_t room;           /* proto_audit_room() as of the last change */
    _Atomic uint64_t last_shed_ms; /* monotonic; 0 = never */
    _Atomic uint64_t shed;
};

static void proto_audit_free_event(proto_audit_event_t *e)
{
    free(e->payload);
    memset(e, 0, sizeof *e);
}

/* Drops empty slots at the head of l, so count covers the oldest live event onwards; the
 * gauge counts the events waiting for any witness. */
static void proto_audit_compact(proto_audit_link_t *l)
{
    while (l->count > 0 && !l->events[l->head].used) {
        l->head = (l->head + 1) % PROTO_AUDIT_QUEUE_MAX;
        l->count--;
    }
    size_t queued = 0, room = 0;
    for (size_t i = 0; i < l->owner->link_count; i++) {
        queued += l->owner->links[i].count;
        size_t free_slots = PROTO_AUDIT_QUEUE_MAX - l->owner->links[i].count;
        room = free_slots > room ? free_slots : room;
    }
    ops_gauge_set(l->owner->m_queued, (int64_t)queued);
    atomic_store(&l->owner->room, room);
}

/* One link per witness of endpoints (';'-separated). Returns 0, QC_ECONFIG, QC_ENOMEM. */
static int proto_audit_links(proto_audit_t *ga, void *ctx, const char *endpoints,
                             const char *audit_key, const proto_curve_keypair_t *keys)
{
    size_t n = 1;
    for (const char *p = endpoints; *p != '\0'; p++)
        n += *p == ';';
    if (n > PROTO_AUDIT_WITNESSES_MAX)
        return QC_ECONFIG;
    char *list = strdup(endpoints);
    ga->links = calloc(n, sizeof *ga->links);
    if (list == NULL || ga->links == NULL) {
        free(list);
        return QC_ENOMEM;
    }
    int rc = 0;
    char *next = NULL;
    for (char *p = list; rc == 0 && p != NULL; p = next) {
        next = strchr(p, ';');
        if (next != NULL)
            *next++ = '\0';
        proto_rpc_client_config_t cc = {
            .service = "audit",
            .endpoints = p,
            .server_public_z85 = audit_key,
            .keys = keys,
        };
        proto_audit_link_t *l = &ga->links[ga->link_count];
        l->owner = ga;
        if (p[0] == '\0')
            rc = QC_ECONFIG;
        else if ((rc = proto_rpc_client_new(ctx, &cc, &l->cli)) == 0)
            ga->link_count++;
    }
    assert(ga->link_count <= n);
    free(list);
    return rc;
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
    ga->m_delivered = ops_counter("qc_proto_audit_delivered_total",
                                  "security events a witness acknowledged (one per witness)");
    ga->m_dropped = ops_counter("qc_audit_events_dropped_total",
                                "audit events shed for a witness: its queue was full");
    atomic_init(&ga->room, PROTO_AUDIT_QUEUE_MAX);
    ga->m_queued = ops_gauge("qc_proto_audit_queued", "security events waiting for a witness");
    if (endpoints != NULL) {
        int rc = proto_audit_links(ga, ctx, endpoints, audit_key, keys);
        if (rc != 0) {
            proto_audit_destroy(&ga);
            return rc;
        }
    }
    *out = ga;
    return 0;
}

/* Queues the event for one witness; false when its ring is full or memory ran out. */
static bool proto_audit_queue(proto_audit_link_t *l, uint64_t source_seq, uint64_t time_ms,
                              const char *type, const uint8_t *txn_id, const uint8_t *payload,
                              size_t payload_len)
{
    if (l->count == PROTO_AUDIT_QUEUE_MAX)
        return false; /* the oldest may be in flight (its slot is a call's tag): the newest goes */
    proto_audit_event_t *e = &l->events[(l->head + l->count) % PROTO_AUDIT_QUEUE_MAX];
    assert(!e->used);
    e->payload = malloc(payload_len > 0 ? payload_len : 1);
    if (e->payload == NULL)
        return false;
    /* An empty payload may come as NULL (a report frame with no body): memcpy(dst, NULL, 0)
     * is undefined, and the sanitized gateway stopped on it (found by qc-fuzz-live). */
    if (payload_len > 0)
        memcpy(e->payload, payload, payload_len);
    e->payload_len = payload_len;
    e->used = true;
    e->source_seq = source_seq;
    e->time_ms = time_ms;
    snprintf(e->type, sizeof e->type, "%s", type);
    if (txn_id != NULL) {
        memcpy(e->txn_id, txn_id, PROTO_TXN_ID_SIZE);
        e->has_txn = true;
    }
    l->count++;
    proto_audit_compact(l);
    return true;
}

void proto_audit_event(proto_audit_t *ga, const char *type, const uint8_t *txn_id,
                       const uint8_t *payload, size_t payload_len)
{
    assert(ga != NULL);
    assert(type != NULL);
    assert(strlen(type) <= PROTO_AUDIT_NAME_MAX);
    ops_counter_add(ga->m_raised, 1);
    if (ga->link_count == 0)
        return;
    uint64_t source_seq = ga->seq_base + ++ga->seq_next;
    uint64_t time_ms = ops_time_wall_ms();
    for (size_t i = 0; i < ga->link_count; i++) {
        if (proto_audit_queue(&ga->links[i], source_seq, time_ms, type, txn_id, payload,
                              payload_len))
            continue;
        /* Shed loudly: counted, health degraded, a limited line with the count held back. */
        char witness[24];
        snprintf(witness, sizeof witness, "%zu", i);
        ops_counter_add(ga->m_dropped, 1);
        atomic_fetch_add(&ga->shed, 1);
        uint64_t now = ops_time_mono_ms();
        atomic_store(&ga->last_shed_ms, now > 0 ? now : 1);
        ops_log_limited(OPS_LOG_ERROR, "audit.event_dropped", witness, "type", type, "witness",
                        witness, "why", "queue for the witness full", NULL);
    }
}

size_t proto_audit_room(const proto_audit_t *ga)
{
    assert(ga != NULL);
    if (ga->link_count == 0)
        return SIZE_MAX; /* nothing is queued: events are only logged */
    size_t room = 0;
    for (size_t i = 0; i < ga->link_count; i++) {
        assert(ga->links[i].count <= PROTO_AUDIT_QUEUE_MAX);
        size_t free_slots = PROTO_AUDIT_QUEUE_MAX - ga->links[i].count;
        room = free_slots > room ? free_slots : room;
    }
    return room;
}

bool proto_audit_healthy(const proto_audit_t *ga, char *why, size_t why_cap)
{
    assert(ga != NULL);
    proto_audit_t *m = (proto_audit_t *)ga; /* atomics only */
    uint64_t last = atomic_load(&m->last_shed_ms);
    if (atomic_load(&m->room) == 0) {
        snprintf(why, why_cap,
                 "degraded: every audit witness's queue is full (%d events each): work that "
                 "needs evidence is refused",
                 PROTO_AUDIT_QUEUE_MAX);
        return false;
    }
    if (last != 0 && ops_time_mono_ms() - last < PROTO_AUDIT_SHED_HEALTH_MS) {
        snprintf(why, why_cap,
                 "degraded: %" PRIu64 " audit events shed since start, the last %" PRIu64
                 " ms ago (a witness's queue full)",
                 atomic_load(&m->shed), ops_time_mono_ms() - last);
        return false;
    }
    return true;
}

int proto_audit_pollitems(proto_audit_t *ga, void *items, int cap)
{
    assert(ga != NULL);
    assert(cap >= 0);
    int n = 0;
    for (size_t i = 0; i < ga->link_count && n < cap; i++)
        n += proto_rpc_client_pollitems(
            ga->links[i].cli, (char *)items + (size_t)n * sizeof(zmq_pollitem_t), cap - n);
    assert(n <= cap);
    return n;
}

int proto_audit_next_timeout_ms(const proto_audit_t *ga)
{
    assert(ga != NULL);
    int timeout = -1;
    for (size_t i = 0; i < ga->link_count; i++) {
        int t = proto_rpc_client_next_timeout_ms(ga->links[i].cli);
        if (t >= 0 && (timeout < 0 || t < timeout))
            timeout = t;
    }
    return timeout;
}

/* Fills req from event e of link l. */
static void proto_audit_fill(const proto_audit_link_t *l, proto_audit_event_t *e,
                             Qcaudit__AppendRequest *req)
{
    qcaudit__append_request__init(req);
    req->source = l->owner->source;
    req->source_seq = e->source_seq;
    req->type = e->type;
    req->time_ms = e->time_ms;
    if (e->has_txn) {
        req->txn_id.data = e->txn_id;
        req->txn_id.len = PROTO_TXN_ID_SIZE;
    }
    req->payload.data = e->payload;
    req->payload.len = e->payload_len;
}

/* Sends fr (its slots set) as one frame; its events are SENT when it went out. */
static void proto_audit_send(proto_audit_link_t *l, proto_audit_frame_t *fr)
{
    assert(fr->count >= 1 && fr->count <= PROTO_AUDIT_BATCH_MAX);
    assert(fr->batch || fr->count == 1);
    Qcaudit__AppendRequest reqs[PROTO_AUDIT_BATCH_MAX];
    Qcaudit__AppendRequest *ptrs[PROTO_AUDIT_BATCH_MAX];
    for (size_t k = 0; k < fr->count; k++) {
        proto_audit_fill(l, &l->events[fr->slot[k]], &reqs[k]);
        ptrs[k] = &reqs[k];
    }
    Qcaudit__AppendBatchRequest batch = QCAUDIT__APPEND_BATCH_REQUEST__INIT;
    batch.n_events = fr->count;
    batch.events = ptrs;
    uint8_t *body = NULL;
    size_t body_len = 0;
    if (proto_pack(fr->batch ? &batch.base : &reqs[0].base, &body, &body_len) != 0)
        return;
    uint64_t request_id = 0;
    int rc = proto_rpc_client_send(l->cli, fr->batch ? "append_batch" : "append", body, body_len,
                                   PROTO_AUDIT_TIMEOUT_MS, PROTO_RPC_IDEMPOTENT, fr, &request_id);
    free(body);
    if (rc != 0)
        return;
    fr->used = true;
    l->inflight++;
    for (size_t k = 0; k < fr->count; k++)
        l->events[fr->slot[k]].sent = true;
}

/* One event's answer: 0 frees it (delivered), a busy or failing witness leaves it for a
 * resend, anything else is a final refusal, logged, and frees it. */
static void proto_audit_settle(proto_audit_link_t *l, proto_audit_event_t *e, int code,
                               const char *message)
{
    assert(e->used && e->sent);
    e->sent = false;
    if (code == QC_EFULL || code == QC_ENOSPACE || code == QC_EIO)
        return;
    if (code == 0)
        ops_counter_add(l->owner->m_delivered, 1);
    else
        ops_log_limited(OPS_LOG_ERROR, "audit.event_refused", NULL, "type", e->type, "error",
                        qc_errname(code), "message", message, NULL);
    proto_audit_free_event(e);
}

/* The results of a batch frame, one per event in order; false when the reply does not
 * match the frame (its events are then resent: the witness deduplicates). */
static bool proto_audit_results(proto_audit_link_t *l, proto_audit_frame_t *fr,
                                const proto_rpc_reply_t *reply)
{
    Qcaudit__AppendBatchReply *rep =
        qcaudit__append_batch_reply__unpack(NULL, reply->body_len, reply->body);
    if (rep == NULL || rep->n_results != fr->count) {
        ops_log_limited(OPS_LOG_ERROR, "audit.bad_batch_reply", NULL, "events",
                        rep == NULL ? "undecodable" : "a count other than the frame's", NULL);
        if (rep != NULL)
            qcaudit__append_batch_reply__free_unpacked(rep, NULL);
        return false;
    }
    for (size_t k = 0; k < fr->count; k++)
        proto_audit_settle(l, &l->events[fr->slot[k]], rep->results[k]->code, NULL);
    qcaudit__append_batch_reply__free_unpacked(rep, NULL);
    return true;
}

static void proto_audit_on_done(void *arg, void *tag, int code, proto_rpc_reply_t *reply)
{
    proto_audit_link_t *l = arg;
    proto_audit_frame_t *fr = tag;
    assert(fr >= l->frames);
    assert(fr < l->frames + PROTO_AUDIT_INFLIGHT_MAX);
    assert(fr->used);
    bool settled = false;
    if (code == 0 && fr->batch && reply->code == QC_EMETHOD) {
        /* A witness from before "append_batch": one event a frame from now on. */
        if (!l->single)
            ops_log(OPS_LOG_WARN, "audit.no_batches", "why",
                    "the witness does not know append_batch: events go one by one", NULL);
        l->single = true;
    } else if (code == 0 && reply->code == 0 && fr->batch) {
        settled = proto_audit_results(l, fr, reply);
    } else if (code == 0) {
        /* One code for every event of the frame. */
        for (size_t k = 0; k < fr->count; k++)
            proto_audit_settle(l, &l->events[fr->slot[k]], reply->code, reply->message);
        settled = true;
    }
    if (!settled) {
        /* The witness did not take them: resend later with the same source_seqs. */
        for (size_t k = 0; k < fr->count; k++)
            l->events[fr->slot[k]].sent = false;
    }
    memset(fr, 0, sizeof *fr);
    l->inflight--;
    assert(l->inflight >= 0);
    proto_audit_compact(l);
    proto_rpc_reply_destroy(&reply);
}

/* A free frame of l, or NULL. */
static proto_audit_frame_t *proto_audit_free_frame(proto_audit_link_t *l)
{
    int limit = l->single ? PROTO_AUDIT_INFLIGHT_MAX : PROTO_AUDIT_FRAMES_INFLIGHT;
    if (l->inflight >= limit)
        return NULL;
    for (size_t f = 0; f < PROTO_AUDIT_INFLIGHT_MAX; f++)
        if (!l->frames[f].used)
            return &l->frames[f];
    return NULL;
}

/* Sends l's queued events, oldest first, in as few frames as the limits allow. */
static void proto_audit_flush(proto_audit_link_t *l)
{
    size_t i = 0;
    proto_audit_frame_t *fr = NULL;
    while (i < l->count && (fr = proto_audit_free_frame(l)) != NULL) {
        size_t bytes = 0;
        fr->batch = !l->single;
        fr->count = 0;
        for (; i < l->count && fr->count < (fr->batch ? PROTO_AUDIT_BATCH_MAX : 1); i++) {
            size_t slot = (l->head + i) % PROTO_AUDIT_QUEUE_MAX;
            proto_audit_event_t *e = &l->events[slot];
            if (!e->used || e->sent)
                continue;
            if (fr->count > 0 && bytes + e->payload_len > PROTO_AUDIT_BATCH_BYTES)
                break;
            bytes += e->payload_len;
            fr->slot[fr->count++] = (uint16_t)slot;
        }
        if (fr->count == 0)
            break;
        proto_audit_send(l, fr);
        if (!fr->used) {
            memset(fr, 0, sizeof *fr);
            break; /* not sent (no endpoint up, out of memory): the next turn tries again */
        }
    }
}

void proto_audit_process(proto_audit_t *ga)
{
    assert(ga != NULL);
    for (size_t w = 0; w < ga->link_count; w++) {
        proto_audit_link_t *l = &ga->links[w];
        proto_rpc_client_process(l->cli, proto_audit_on_done, l);
        proto_audit_flush(l);
    }
}

void proto_audit_destroy(proto_audit_t **ga_p)
{
    if (ga_p == NULL || *ga_p == NULL)
        return;
    proto_audit_t *ga = *ga_p;
    for (size_t w = 0; ga->links != NULL && w < ga->link_count; w++) {
        proto_rpc_client_destroy(&ga->links[w].cli);
        for (size_t i = 0; i < PROTO_AUDIT_QUEUE_MAX; i++)
            free(ga->links[w].events[i].payload);
    }
    free(ga->links);
    free(ga);
    *ga_p = NULL;
}
