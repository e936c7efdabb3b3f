/* audit_relay.c - the outbox relay: ledger shards' audit events into the log, acked after commit.
 */
#include "audit_relay.h"

#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ledger.pb-c.h"
#include "ops_fault.h"
#include "ops_log.h"
#include "ops_metrics.h"
#include "ops_signal.h"
#include "ops_time.h"
#include "proto_decode.h"
#include "proto_id.h"
#include "qc_error.h"

#define RELAY_SOURCE_LEN 32    /* "ledger-" and a shard number */
#define RELAY_SLEEP_STEP_MS 50 /* longest sleep before looking at the stop flag */
#define RELAY_TYPE_INVALID "audit.invalid_event"

typedef struct relay_shard {
    char source[RELAY_SOURCE_LEN];
    proto_rpc_client_t *cli;
    uint64_t acked;    /* highest seq acked to this shard since start */
    uint32_t read_max; /* events asked per read: halved after a read timed out */
    ops_counter_t *m_events;
    ops_counter_t *m_errors;
    ops_gauge_t *m_lag;
    ops_gauge_t *m_rewound;        /* 1 while the shard reuses seqs the log holds */
    uint64_t next_rewind_check_ms; /* monotonic */
    bool rewound;                  /* checked every round until it is brought forward */
} relay_shard_t;

struct audit_relay {
    audit_store_t *store;
    char consumer[AUDIT_RELAY_CONSUMER_MAX + 1]; /* "" = anonymous, before witnesses */
    uint32_t batch_max;
    uint32_t poll_ms;
    size_t shard_count;
    relay_shard_t *shards;
    pthread_t thread;
    bool started;
    atomic_bool stop;
    _Atomic uint64_t last_ok_ms;
    _Atomic size_t rewound; /* 1 + index of a shard found rewound, 0 = none */
    ops_counter_t *m_appended;
    ops_counter_t *m_dedupe;
};

int audit_relay_new(const audit_relay_config_t *cfg, audit_relay_t **out)
{
    assert(cfg != NULL);
    assert(cfg->store != NULL);
    assert(cfg->zctx != NULL);
    assert(out != NULL);
    *out = NULL;
    if (cfg->ledger == NULL || cfg->ledger[0] == '\0' || cfg->ledger_key == NULL ||
        cfg->keys == NULL || cfg->batch_max < 1 || cfg->batch_max > AUDIT_RELAY_BATCH_MAX ||
        (cfg->consumer != NULL && strlen(cfg->consumer) > AUDIT_RELAY_CONSUMER_MAX))
        return QC_ECONFIG;
    audit_relay_t *r = calloc(1, sizeof *r);
    char *list = strdup(cfg->ledger);
    if (r == NULL || list == NULL ||
        (r->shards = calloc(AUDIT_RELAY_SHARDS_MAX, sizeof *r->shards)) == NULL) {
        free(list);
        free(r);
        return QC_ENOMEM;
    }
    r->store = cfg->store;
    snprintf(r->consumer, sizeof r->consumer, "%s", cfg->consumer != NULL ? cfg->consumer : "");
    r->batch_max = cfg->batch_max;
    r->poll_ms = cfg->poll_ms;
    atomic_init(&r->stop, false);
    /* Health counts from the start: a shard gets AUDIT_RELAY_STALE_MS to answer first. */
    atomic_init(&r->last_ok_ms, ops_time_mono_ms());
    r->m_appended = ops_counter("qc_audit_entries_appended_total", "Entries appended to the log");
    r->m_dedupe = ops_counter("qc_audit_dedupe_hits_total", "Events already in the log");
    int rc = 0;
    char *save = NULL;
    /* strtok_r would skip an empty shard (";;") and shift every later shard's number. */
    for (char *p = list; rc == 0 && p != NULL; p = save) {
        save = strchr(p, ';');
        if (save != NULL)
            *save++ = '\0';
        if (p[0] == '\0' || r->shard_count == AUDIT_RELAY_SHARDS_MAX) {
            rc = QC_ECONFIG;
            break;
        }
        relay_shard_t *s = &r->shards[r->shard_count];
        s->read_max = r->batch_max;
        snprintf(s->source, sizeof s->source, AUDIT_RELAY_SOURCE_PREFIX "%zu", r->shard_count);
        proto_rpc_client_config_t cc = {
            .service = "ledger",
            .endpoints = p,
            .server_public_z85 = cfg->ledger_key,
            .keys = cfg->keys,
        };
        if ((rc = proto_rpc_client_new(cfg->zctx, &cc, &s->cli)) != 0)
            break;
        char name[OPS_METRICS_NAME_MAX];
        snprintf(name, sizeof name, "qc_audit_relay_events_total{source=\"%s\"}", s->source);
        s->m_events = ops_counter(name, "Outbox events relayed into the log");
        snprintf(name, sizeof name, "qc_audit_relay_errors_total{source=\"%s\"}", s->source);
        s->m_errors = ops_counter(name, "Failed outbox reads, acks or commits");
        snprintf(name, sizeof name, "qc_audit_relay_lag{source=\"%s\"}", s->source);
        s->m_lag = ops_gauge(name, "Events left in the shard's outbox after the last ack");
        snprintf(name, sizeof name, "qc_audit_relay_rewound{source=\"%s\"}", s->source);
        s->m_rewound = ops_gauge(name, "1 while the shard's outbox reuses seqs the log holds");
        r->shard_count++;
    }
    free(list);
    if (rc != 0) {
        audit_relay_destroy(&r);
        return rc == QC_ENOMEM ? rc : QC_ECONFIG;
    }
    *out = r;
    return 0;
}

/* Calls method on shard s with msg; on success unpacks the reply body with desc into *out. */
static int relay_call(relay_shard_t *s, const char *method, const ProtobufCMessage *msg,
                      const ProtobufCMessageDescriptor *desc, ProtobufCMessage **out)
{
    uint8_t *body = NULL;
    size_t len = 0;
    int rc = proto_pack(msg, &body, &len);
    if (rc != 0)
        return rc;
    proto_rpc_reply_t *reply = NULL;
    rc = proto_rpc_client_call(s->cli, method, body, len, AUDIT_RELAY_RPC_TIMEOUT_MS,
                               PROTO_RPC_IDEMPOTENT, &reply);
    free(body);
    if (rc != 0)
        return rc;
    if ((rc = reply->code) == 0) {
        *out = protobuf_c_message_unpack(desc, NULL, reply->body_len, reply->body);
        if (*out == NULL)
            rc = QC_EDECODE;
    } else {
        ops_log_limited(OPS_LOG_WARN, "audit.relay_refused", s->source, "source", s->source,
                        "method", method, "error", reply->message, NULL);
    }
    proto_rpc_reply_destroy(&reply);
    return rc;
}

/* Acks everything up to upto on shard s and records the depth the ledger reports. */
static int relay_ack(audit_relay_t *r, relay_shard_t *s, uint64_t upto)
{
    Qcledger__OutboxAckRequest req = QCLEDGER__OUTBOX_ACK_REQUEST__INIT;
    req.upto_seq = upto;
    req.consumer = r->consumer;
    Qcledger__OutboxAckReply *rep = NULL;
    int rc = relay_call(s, "outbox_ack", &req.base, &qcledger__outbox_ack_reply__descriptor,
                        (ProtobufCMessage **)&rep);
    if (rc != 0)
        return rc;
    s->acked = upto;
    /* A named consumer's lag is its own; the depth also counts what other witnesses lack. */
    uint64_t lag = r->consumer[0] != '\0' ? rep->lag : rep->depth;
    ops_gauge_set(s->m_lag, (int64_t)lag);
    if (lag >= AUDIT_RELAY_LAG_WARN)
        ops_logf(OPS_LOG_WARN, "audit.relay_lag", "%s has %" PRIu64 " events not yet relayed",
                 s->source, lag);
    qcledger__outbox_ack_reply__free_unpacked(rep, NULL);
    return 0;
}

/* Fills ev from the ledger's event e. An event the log cannot hold as it is (a type that is
 * not a name, an oversized txn id or payload) is still kept, never skipped: it becomes an
 * audit.invalid_event whose payload is the packed OutboxEvent, cut to the payload limit,
 * and whose packed copy the caller frees (*packed). */
static void relay_event(const relay_shard_t *s, const Qcledger__OutboxEvent *e, audit_event_t *ev,
                        uint8_t **packed)
{
    *packed = NULL;
    *ev = (audit_event_t){
        .source = s->source,
        .source_seq = e->seq,
        .type = e->type,
        .txn_id = e->txn_id.data,
        .txn_id_len = e->txn_id.len,
        .payload = e->payload.data,
        .payload_len = e->payload.len,
        .time_ms = e->time_ms,
    };
    size_t tl = e->type != NULL ? strnlen(e->type, AUDIT_TYPE_MAX + 1) : 0;
    if (proto_id_check_len(e->type, tl, AUDIT_TYPE_MAX, PROTO_ID_VISIBLE) == 0 &&
        e->txn_id.len <= AUDIT_TXN_ID_MAX && e->payload.len <= AUDIT_PAYLOAD_MAX)
        return;
    size_t len = 0;
    ev->type = RELAY_TYPE_INVALID;
    ev->txn_id = NULL;
    ev->txn_id_len = 0;
    ev->payload = NULL;
    ev->payload_len = 0;
    if (proto_pack(&e->base, packed, &len) == 0) {
        ev->payload = *packed;
        ev->payload_len = len < AUDIT_PAYLOAD_MAX ? len : AUDIT_PAYLOAD_MAX;
    }
    ops_logf(OPS_LOG_ERROR, "audit.invalid_event", "%s seq %" PRIu64 " kept as %s", s->source,
             e->seq, RELAY_TYPE_INVALID);
}

/* Appends the read events in one commit. Returns 0 or the store's error. */
static int relay_append(audit_relay_t *r, relay_shard_t *s, const Qcledger__OutboxReadReply *rep)
{
    size_t n = rep->n_events;
    audit_event_t *evs = calloc(n, sizeof *evs);
    audit_append_result_t *res = calloc(n, sizeof *res);
    uint8_t **packed = calloc(n, sizeof *packed);
    int rc = QC_ENOMEM;
    if (evs != NULL && res != NULL && packed != NULL) {
        for (size_t i = 0; i < n; i++)
            relay_event(s, rep->events[i], &evs[i], &packed[i]);
        rc = audit_store_append(r->store, evs, n, res);
    }
    if (rc == 0) {
        uint64_t appended = 0, dups = 0;
        for (size_t i = 0; i < n; i++) {
            if (res[i].code != 0)
                ops_logf(OPS_LOG_ERROR, "audit.event_refused", "%s seq %" PRIu64 ": %s", s->source,
                         evs[i].source_seq, qc_strerror(res[i].code));
            else if (res[i].duplicate)
                dups++;
            else
                appended++;
        }
        ops_counter_add(r->m_appended, appended);
        ops_counter_add(r->m_dedupe, dups);
        ops_counter_add(s->m_events, appended);
    }
    for (size_t i = 0; packed != NULL && i < n; i++)
        free(packed[i]);
    free(packed);
    free(res);
    free(evs);
    return rc;
}

/* True when the log holds event e of shard s under its (source, seq) as it is now: same type
 * (or kept as an invalid event), txn id and payload. */
static bool relay_same(audit_relay_t *r, relay_shard_t *s, const Qcledger__OutboxEvent *e)
{
    uint64_t seq = 0;
    uint8_t *rec = NULL;
    size_t len = 0;
    audit_entry_t entry;
    if (audit_store_dedupe_get(r->store, s->source, e->seq, &seq) != 0 ||
        audit_store_get(r->store, seq, &rec, &len) != 0)
        return false;
    bool same = audit_chain_parse(rec, len, &entry) == 0;
    if (same && !(entry.type_len == strlen(RELAY_TYPE_INVALID) &&
                  memcmp(entry.type, RELAY_TYPE_INVALID, entry.type_len) == 0)) {
        size_t tl = e->type != NULL ? strlen(e->type) : 0;
        same = entry.type_len == tl && memcmp(entry.type, e->type, tl) == 0 &&
               entry.txn_id_len == e->txn_id.len &&
               (e->txn_id.len == 0 || memcmp(entry.txn_id, e->txn_id.data, e->txn_id.len) == 0) &&
               entry.payload_len == e->payload.len &&
               (e->payload.len == 0 || memcmp(entry.payload, e->payload.data, e->payload.len) == 0);
    }
    free(rec);
    return same;
}

/* The alarm of a shard behind the log (issue 21): after a ledger is restored from an older
 * copy, its outbox hands out seqs the log already holds for other events. The relay reads
 * after the log's high-water mark, so it would never see them, and its catch-up ack would
 * delete them: evidence lost without a word. So, before that ack and every
 * AUDIT_RELAY_REWIND_CHECK_MS, the events the shard still holds at or below the mark are
 * compared with the log's; one that differs (or that the log lacks) raises the alarm: an
 * error line, qc_audit_relay_rewound{source} = 1, /healthz degraded, and no ack of those seqs.
 * Returns 0, QC_ESTATE (rewound) or the read's error. */
static int relay_check_rewind(audit_relay_t *r, relay_shard_t *s, uint64_t hwm)
{
    Qcledger__OutboxReadRequest req = QCLEDGER__OUTBOX_READ_REQUEST__INIT;
    req.after_seq = 0;
    req.max = s->read_max;
    req.consumer = r->consumer;
    Qcledger__OutboxReadReply *rep = NULL;
    int rc = relay_call(s, "outbox_read", &req.base, &qcledger__outbox_read_reply__descriptor,
                        (ProtobufCMessage **)&rep);
    if (rc != 0)
        return rc;
    const Qcledger__OutboxEvent *bad = NULL;
    for (size_t i = 0; i < rep->n_events && bad == NULL; i++) {
        if (rep->events[i]->seq <= hwm && !relay_same(r, s, rep->events[i]))
            bad = rep->events[i];
    }
    size_t self = (size_t)(s - r->shards) + 1;
    if (bad != NULL) {
        char seq[24], mark[24];
        snprintf(seq, sizeof seq, "%" PRIu64, bad->seq);
        snprintf(mark, sizeof mark, "%" PRIu64, hwm);
        ops_log_limited(OPS_LOG_ERROR, "audit.outbox_rewound", s->source, "source", s->source,
                        "seq", seq, "log_holds_up_to", mark, "why",
                        "the shard reuses a seq the log holds for another event: restored from "
                        "an older copy? its events are not acked until it is brought forward",
                        NULL);
        ops_gauge_set(s->m_rewound, 1);
        s->rewound = true;
        atomic_store(&r->rewound, self);
        rc = QC_ESTATE;
    } else {
        ops_gauge_set(s->m_rewound, 0);
        s->rewound = false;
        size_t expected = self;
        atomic_compare_exchange_strong(&r->rewound, &expected, 0);
    }
    qcledger__outbox_read_reply__free_unpacked(rep, NULL);
    return rc;
}

/* One round on shard s; *full when it read as many events as it asked for (more may wait).
 * Returns the number of events read (>= 0) or an error. */
static int relay_round(audit_relay_t *r, relay_shard_t *s, bool *full)
{
    *full = false;
    uint64_t hwm = 0;
    int rc = audit_store_hwm(r->store, s->source, &hwm);
    if (rc != 0)
        return rc;
    uint64_t now = ops_time_mono_ms();
    if (hwm > 0 && (s->acked < hwm || s->rewound || now >= s->next_rewind_check_ms)) {
        s->next_rewind_check_ms = now + AUDIT_RELAY_REWIND_CHECK_MS;
        if ((rc = relay_check_rewind(r, s, hwm)) != 0)
            return rc;
    }
    /* After a restart (or a lost ack) the shard may still hold events the log has. */
    if (s->acked < hwm && (rc = relay_ack(r, s, hwm)) != 0)
        return rc;
    Qcledger__OutboxReadRequest req = QCLEDGER__OUTBOX_READ_REQUEST__INIT;
    req.after_seq = hwm;
    req.max = s->read_max;
    req.consumer = r->consumer;
    Qcledger__OutboxReadReply *rep = NULL;
    rc = relay_call(s, "outbox_read", &req.base, &qcledger__outbox_read_reply__descriptor,
                    (ProtobufCMessage **)&rep);
    /* A reply over the RPC frame limit is dropped unseen and looks like a timeout: ask for
     * fewer events next time, and grow back once reads succeed. */
    if (rc == QC_ETIMEOUT && s->read_max > 1)
        s->read_max /= 2;
    if (rc != 0)
        return rc;
    if (s->read_max < r->batch_max)
        s->read_max = s->read_max * 2 < r->batch_max ? s->read_max * 2 : r->batch_max;
    *full = rep->n_events > 0 && rep->n_events >= req.max;
    int n = (int)rep->n_events;
    if (n > 0 && rep->events[0]->seq != hwm + 1) {
        /* The shard deleted events this log never held: every consumer it knows acked them,
         * so this log was lost or restored from an older copy. Appending would hide the
         * hole; the operator restores the log from another witness (docs/OPERATIONS.md). */
        ops_logf(OPS_LOG_ERROR, "audit.relay_gap",
                 "%s starts at seq %" PRIu64 " but the log holds up to %" PRIu64
                 ": restore this witness from another one's copy",
                 s->source, rep->events[0]->seq, hwm);
        qcledger__outbox_read_reply__free_unpacked(rep, NULL);
        return QC_ESTATE;
    }
    if (n > 0) {
        uint64_t upto = rep->events[n - 1]->seq;
        rc = relay_append(r, s, rep);
        if (rc == 0) {
            ops_fault_point("audit.after_commit_before_ack");
            rc = relay_ack(r, s, upto);
        }
    }
    qcledger__outbox_read_reply__free_unpacked(rep, NULL);
    return rc != 0 ? rc : n;
}

static bool relay_stopping(const audit_relay_t *r)
{
    return atomic_load(&r->stop) || ops_signal_stop_requested();
}

static void relay_sleep(const audit_relay_t *r, uint32_t ms)
{
    uint64_t until = ops_time_mono_ms() + ms;
    while (!relay_stopping(r) && ops_time_mono_ms() < until) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = RELAY_SLEEP_STEP_MS * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static void *relay_main(void *arg)
{
    audit_relay_t *r = arg;
    while (!relay_stopping(r)) {
        bool full = false, all_ok = true;
        for (size_t i = 0; i < r->shard_count && !relay_stopping(r); i++) {
            relay_shard_t *s = &r->shards[i];
            bool more = false;
            int n = relay_round(r, s, &more);
            if (n < 0) {
                all_ok = false;
                ops_counter_add(s->m_errors, 1);
                ops_log_limited(OPS_LOG_WARN, "audit.relay_failed", s->source, "source", s->source,
                                "error", qc_strerror(n), NULL);
            } else if (more) {
                full = true;
            }
        }
        if (all_ok)
            atomic_store(&r->last_ok_ms, ops_time_mono_ms());
        if (!full)
            relay_sleep(r, r->poll_ms);
    }
    return NULL;
}

int audit_relay_start(audit_relay_t *relay)
{
    assert(relay != NULL);
    assert(!relay->started);
    if (pthread_create(&relay->thread, NULL, relay_main, relay) != 0)
        return QC_EINTERNAL;
    relay->started = true;
    return 0;
}

void audit_relay_destroy(audit_relay_t **relay_p)
{
    if (relay_p == NULL || *relay_p == NULL)
        return;
    audit_relay_t *r = *relay_p;
    if (r->started) {
        atomic_store(&r->stop, true);
        pthread_join(r->thread, NULL);
    }
    for (size_t i = 0; i < r->shard_count; i++)
        proto_rpc_client_destroy(&r->shards[i].cli);
    free(r->shards);
    free(r);
    *relay_p = NULL;
}

uint64_t audit_relay_stale_ms(const audit_relay_t *relay)
{
    assert(relay != NULL);
    return ops_time_mono_ms() - atomic_load(&relay->last_ok_ms);
}

bool audit_relay_alarm(const audit_relay_t *relay, char *why, size_t why_cap)
{
    assert(relay != NULL);
    size_t shard = atomic_load(&((audit_relay_t *)relay)->rewound);
    if (shard == 0)
        return false;
    snprintf(why, why_cap,
             "degraded: %s's outbox is behind what the audit log holds (restored from an older "
             "copy?): its new events are not relayed",
             relay->shards[shard - 1].source);
    return true;
}
