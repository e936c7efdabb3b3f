/* ledger_repair.c - a diverged replica rebuilds its state from a healthy follower's snapshot
 * (ledger_repair.h; docs/DESIGN.md section 3, "Replica repair").
 *
 * States of the diverged side, and the function performing each transition (all in
 * ledger_repair_tick(), on the service's thread):
 *
 *   HEALTHY --fsm diverged (digest op; or a corrupt record: repair_mark)--> WAITING
 *   WAITING --its retry time came: fetch_start()--> FETCHING
 *   FETCHING --fetch thread done: fetch_finish()--> HEALTHY (rebuilt) or WAITING (failed)
 *   WAITING --LEDGER_REPAIR_ATTEMPTS_MAX fetches failed--> GAVE_UP
 *   WAITING, GAVE_UP --the fsm is no longer diverged (libraft installed a newer snapshot)-->
 * HEALTHY
 *
 * Invariants:
 *   1. The state is replaced only by ledger_fsm_repair(), in one LMDB write txn, only while
 *      the fsm is diverged, and only by a snapshot whose header and body check (shard, length,
 *      SHA-256) and whose applied index is at or past the diverged one. The Raft log and vote
 *      are never written here.
 *   2. At most one fetch thread runs; it owns its inputs and outputs until it sets done, and
 *      the service's thread reads them only after it joined it.
 *   3. A source serves a snapshot only as a follower whose state is known good and equalled
 *      the leader's digest at or past the requester's diverged index. */
#include "ledger_repair.h"

#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>
#include <raft.h>

#include "ops_bytes.h"
#include "ops_log.h"
#include "ops_metrics.h"
#include "ops_time.h"
#include "proto_curve.h"
#include "proto_decode.h"
#include "proto_rpc_client.h"

#define REPAIR_METHOD "replica_snapshot"
#define REPAIR_SNAP_INDEX_AT 16 /* the applied index in a snapshot's header (ledger_fsm.h) */

typedef enum repair_state {
    REPAIR_HEALTHY,
    REPAIR_WAITING,
    REPAIR_FETCHING,
    REPAIR_GAVE_UP,
} repair_state_t;

/* One fetch, owned by its thread until done is set (invariant 2). */
typedef struct repair_fetch {
    void *zctx;
    proto_curve_keypair_t keys;
    uint64_t min_index;
    size_t n;
    uint64_t ids[LEDGER_REPLICAS_MAX];
    char endpoints[LEDGER_REPLICAS_MAX][LEDGER_REPLICA_ADDRESS_MAX];
    atomic_bool stop;
    atomic_bool done;
    /* results */
    int rc;
    char why[LEDGER_REPAIR_WHY_MAX];
    uint8_t *snap;
    size_t len;
    uint64_t index;
    uint64_t source_id;
} repair_fetch_t;

struct ledger_repair {
    void *zctx;
    proto_curve_keypair_t keys;
    ledger_fsm_t *fsm;
    ledger_replica_t *replica;
    bool enabled;
    repair_state_t state;
    unsigned attempts;       /* fetches of this divergence */
    uint64_t next_try_ms;    /* WAITING: the next fetch, monotonic */
    uint64_t diverged_ms;    /* when this divergence was noticed, monotonic */
    uint64_t repaired_index; /* the applied index of the last rebuild */
    pthread_t thread;        /* FETCHING */
    repair_fetch_t *fetch;   /* FETCHING */
    uint64_t next_transfer_ms;
    struct raft_transfer transfer;
    bool transfer_busy;
    /* The source side: one snapshot session. */
    uint8_t *snap; /* raft_malloc'd by ledger_fsm_snapshot */
    size_t snap_len;
    uint64_t snap_index;
    uint64_t session;
    uint64_t session_used_ms;
    ops_counter_t *m_rebuilds;
    ops_counter_t *m_failures;
    ops_gauge_t *m_diverged;
};

/* ------------------------------------------------------------ the fetch thread */

/* Calls method once; a refusal's message goes to why. Returns the call's or the reply's code. */
static int fetch_call(proto_rpc_client_t *cli, const Qcledger__ReplicaSnapshotRequest *m,
                      Qcledger__ReplicaSnapshotReply **out, char *why, size_t why_cap)
{
    *out = NULL;
    uint8_t *body = NULL;
    size_t body_len = 0;
    int rc = proto_pack(&m->base, &body, &body_len);
    if (rc != 0)
        return rc;
    proto_rpc_reply_t *rep = NULL;
    rc = proto_rpc_client_call(cli, REPAIR_METHOD, body, body_len, LEDGER_REPAIR_CALL_MS,
                               PROTO_RPC_IDEMPOTENT, &rep);
    free(body);
    if (rc == 0 && rep->code != 0) {
        rc = rep->code;
        snprintf(why, why_cap, "%s", rep->message);
    } else if (rc == 0) {
        *out = qcledger__replica_snapshot_reply__unpack(NULL, rep->body_len, rep->body);
        if (*out == NULL)
            rc = QC_EDECODE;
    }
    proto_rpc_reply_destroy(&rep);
    return rc;
}

/* Reads one whole snapshot from the replica cli talks to, into f. */
static int fetch_from(repair_fetch_t *f, proto_rpc_client_t *cli, uint64_t end_ms)
{
    Qcledger__ReplicaSnapshotRequest m = QCLEDGER__REPLICA_SNAPSHOT_REQUEST__INIT;
    m.min_index = f->min_index;
    uint64_t total = 0, offset = 0;
    int rc = 0;
    do {
        if (atomic_load(&f->stop) || ops_time_mono_ms() >= end_ms)
            return QC_ETIMEOUT;
        m.offset = offset;
        Qcledger__ReplicaSnapshotReply *r = NULL;
        if ((rc = fetch_call(cli, &m, &r, f->why, sizeof f->why)) != 0)
            return rc;
        bool first = m.session == 0;
        bool ok = r->offset == offset && r->chunk.len > 0 && r->chunk.len <= LEDGER_REPAIR_CHUNK &&
                  (first ? r->session != 0 && r->total >= LEDGER_FSM_SNAP_HEADER_SIZE &&
                               r->total <= LEDGER_FSM_SNAP_MAX
                         : r->session == m.session && r->total == total && r->index == f->index) &&
                  r->chunk.len <= r->total - offset;
        if (ok && first) {
            f->snap = malloc(r->total);
            if (f->snap == NULL) {
                qcledger__replica_snapshot_reply__free_unpacked(r, NULL);
                return QC_ENOMEM;
            }
            m.session = r->session;
            total = r->total;
            f->index = r->index;
            f->source_id = r->source_id;
        }
        if (ok) {
            memcpy(f->snap + offset, r->chunk.data, r->chunk.len);
            offset += r->chunk.len;
        }
        qcledger__replica_snapshot_reply__free_unpacked(r, NULL);
        if (!ok) {
            snprintf(f->why, sizeof f->why, "a reply out of sequence");
            return QC_EDECODE;
        }
    } while (offset < total);
    f->len = (size_t)total;
    return 0;
}

static void *fetch_main(void *arg)
{
    repair_fetch_t *f = arg;
    uint64_t end_ms = ops_time_mono_ms() + LEDGER_REPAIR_FETCH_MS;
    f->rc = QC_EUNAVAIL;
    snprintf(f->why, sizeof f->why, "no follower other than this one is known");
    for (size_t i = 0; i < f->n && !atomic_load(&f->stop); i++) {
        proto_rpc_client_config_t cfg = {.service = "ledger",
                                         .endpoints = f->endpoints[i],
                                         .server_public_z85 = f->keys.public_z85,
                                         .keys = &f->keys};
        proto_rpc_client_t *cli = NULL;
        f->why[0] = '\0';
        f->rc = proto_rpc_client_new(f->zctx, &cfg, &cli);
        if (f->rc == 0)
            f->rc = fetch_from(f, cli, end_ms);
        proto_rpc_client_destroy(&cli);
        if (f->rc == 0)
            break;
        free(f->snap);
        f->snap = NULL;
        if (f->why[0] == '\0')
            snprintf(f->why, sizeof f->why, "%s", qc_strerror(f->rc));
        /* The last refusal names the last replica asked; the log line says how many. */
        char tail[LEDGER_REPAIR_WHY_MAX + 32];
        snprintf(tail, sizeof tail, "replica %" PRIu64 ": %s", f->ids[i], f->why);
        tail[sizeof f->why - 1] = '\0'; /* a longer sentence is cut */
        memcpy(f->why, tail, sizeof f->why);
    }
    proto_curve_keypair_wipe(&f->keys);
    atomic_store(&f->done, true);
    return NULL;
}

static void fetch_free(repair_fetch_t **f_p)
{
    if (*f_p == NULL)
        return;
    proto_curve_keypair_wipe(&(*f_p)->keys);
    free((*f_p)->snap);
    free(*f_p);
    *f_p = NULL;
}

/* ------------------------------------------------------------ the diverged side */

/* Every other replica of the configuration whose endpoint the peer table knows, but the
 * leader it knows (which refuses: a follower that agreed with it is the source). */
static size_t fetch_sources(ledger_repair_t *r, repair_fetch_t *f)
{
    struct raft *rf = ledger_replica_raft(r->replica);
    uint64_t self = ledger_replica_id(r->replica);
    const char *ep = NULL;
    uint64_t leader = ledger_replica_leader(r->replica, &ep);
    size_t n = 0;
    for (unsigned i = 0; i < rf->configuration.n && n < LEDGER_REPLICAS_MAX; i++) {
        uint64_t id = rf->configuration.servers[i].id;
        const ledger_replica_peer_t *p = ledger_replica_peer(r->replica, id);
        if (id == self || id == leader || p == NULL)
            continue;
        f->ids[n] = id;
        snprintf(f->endpoints[n], sizeof f->endpoints[n], "%s", p->endpoint);
        n++;
    }
    return n;
}

static void fetch_start(ledger_repair_t *r, uint64_t diverged_index)
{
    assert(r->fetch == NULL);
    repair_fetch_t *f = calloc(1, sizeof *f);
    if (f == NULL)
        return; /* tried again next turn */
    f->zctx = r->zctx;
    f->keys = r->keys;
    f->min_index = diverged_index;
    f->n = fetch_sources(r, f);
    atomic_init(&f->stop, false);
    atomic_init(&f->done, false);
    if (pthread_create(&r->thread, NULL, fetch_main, f) != 0) {
        fetch_free(&f);
        return;
    }
    r->fetch = f;
    r->attempts++;
    r->state = REPAIR_FETCHING;
    if (r->attempts == 1)
        ops_logf(OPS_LOG_WARN, "ledger.repair_started",
                 "state diverged at index %" PRIu64
                 ": fetching a healthy follower's snapshot (%zu replicas to ask)",
                 diverged_index, f->n);
}

static uint64_t backoff_ms(unsigned attempts)
{
    uint64_t ms = LEDGER_REPAIR_BACKOFF_MIN_MS;
    for (unsigned i = 1; i < attempts && ms < LEDGER_REPAIR_BACKOFF_MAX_MS; i++)
        ms *= 2;
    return ms < LEDGER_REPAIR_BACKOFF_MAX_MS ? ms : LEDGER_REPAIR_BACKOFF_MAX_MS;
}

/* The fetch thread is done: rebuild from its snapshot, or wait and try again. */
static void fetch_finish(ledger_repair_t *r, uint64_t mono_ms)
{
    pthread_join(r->thread, NULL);
    repair_fetch_t *f = r->fetch;
    r->fetch = NULL;
    int rc = f->rc;
    if (rc == 0) {
        rc = ledger_fsm_repair(r->fsm, f->snap, f->len);
        if (rc != 0)
            snprintf(f->why, sizeof f->why, "replica %" PRIu64 "'s snapshot at %" PRIu64 ": %s",
                     f->source_id, f->index,
                     rc == QC_ESTALE ? "before the diverged index, or its next entries are no "
                                       "longer in this replica's log"
                                     : qc_strerror(rc));
    }
    if (rc == 0) {
        /* Every record was replaced: none of the corrupt ones is left. */
        ledger_store_corrupt_clear(ledger_fsm_store(r->fsm));
        ops_counter_add(r->m_rebuilds, 1);
        ops_gauge_set(r->m_diverged, 0);
        r->repaired_index = f->index;
        r->state = REPAIR_HEALTHY;
        ops_logf(OPS_LOG_WARN, "ledger.replica_rebuilt",
                 "state rebuilt from replica %" PRIu64 "'s snapshot at index %" PRIu64
                 " (%zu bytes, diverged at %" PRIu64 ", %.1f s ago, fetch %u): applying on",
                 f->source_id, f->index, f->len, f->min_index,
                 (double)(mono_ms - r->diverged_ms) / 1000.0, r->attempts);
        fetch_free(&f);
        return;
    }
    ledger_fsm_stats_t st;
    ledger_fsm_stats(r->fsm, &st);
    if (rc == QC_ESTATE && !st.diverged) {
        r->state = REPAIR_HEALTHY; /* libraft installed a newer snapshot meanwhile */
    } else {
        ops_counter_add(r->m_failures, 1);
        if (r->attempts >= LEDGER_REPAIR_ATTEMPTS_MAX) {
            r->state = REPAIR_GAVE_UP;
            ops_logf(OPS_LOG_ERROR, "ledger.repair_gave_up",
                     "%u fetches failed, the last: %s; rebuild this replica by hand "
                     "(OPERATIONS.md section 6)",
                     r->attempts, f->why);
        } else {
            r->state = REPAIR_WAITING;
            r->next_try_ms = mono_ms + backoff_ms(r->attempts);
            ops_logf(OPS_LOG_WARN, "ledger.repair_attempt_failed",
                     "fetch %u of %d: %s; next in %" PRIu64 " ms", r->attempts,
                     LEDGER_REPAIR_ATTEMPTS_MAX, f->why, r->next_try_ms - mono_ms);
        }
    }
    fetch_free(&f);
}

static void transfer_done(struct raft_transfer *req)
{
    ledger_repair_t *r = req->data;
    r->transfer_busy = false;
}

/* A leader whose own store is corrupt hands the leadership to another voter (libraft picks
 * the most up to date); as a follower it is then rebuilt like any diverged one. */
static void step_down(ledger_repair_t *r, uint64_t mono_ms)
{
    if (r->transfer_busy || mono_ms < r->next_transfer_ms)
        return;
    r->next_transfer_ms = mono_ms + LEDGER_REPAIR_TRANSFER_MS;
    memset(&r->transfer, 0, sizeof r->transfer);
    r->transfer.data = r;
    int rv = raft_transfer(ledger_replica_raft(r->replica), &r->transfer, 0, transfer_done);
    r->transfer_busy = rv == 0;
    ops_logf(rv == 0 ? OPS_LOG_WARN : OPS_LOG_ERROR, "ledger.leader_stepping_down",
             "this leader's own state cannot be trusted (a corrupt record, or diverged): %s",
             rv == 0 ? "handing the leadership to another voter" : raft_strerror(rv));
}

void ledger_repair_tick(ledger_repair_t *r, uint64_t mono_ms)
{
    assert(r != NULL);
    if (r->snap != NULL && mono_ms >= r->session_used_ms + LEDGER_REPAIR_SESSION_IDLE_MS) {
        raft_free(r->snap);
        r->snap = NULL;
    }
    if (!r->enabled)
        return;
    bool leader = raft_state(ledger_replica_raft(r->replica)) == RAFT_LEADER;
    ledger_fsm_stats_t st;
    ledger_fsm_stats(r->fsm, &st);
    bool corrupt = ledger_store_corrupt(ledger_fsm_store(r->fsm));
    if (leader && (corrupt || st.diverged)) {
        step_down(r, mono_ms);
        return;
    }
    if (corrupt && !st.diverged) {
        if (ledger_fsm_diverge(r->fsm, "a stored record failed its checksum") != 0)
            return;
        ledger_fsm_stats(r->fsm, &st);
    }
    /* Agreeing with a digest after the last rebuild ends that divergence's count. */
    if (!st.diverged && st.digest_ok_index > r->repaired_index)
        r->attempts = 0;
    switch (r->state) {
    case REPAIR_HEALTHY:
        if (!st.diverged || leader)
            return;
        r->state = REPAIR_WAITING;
        r->next_try_ms = mono_ms;
        r->diverged_ms = mono_ms;
        ops_gauge_set(r->m_diverged, 1);
        return;
    case REPAIR_WAITING:
    case REPAIR_GAVE_UP:
        if (!st.diverged) {
            r->state = REPAIR_HEALTHY;
            ops_gauge_set(r->m_diverged, 0);
        } else if (r->state == REPAIR_WAITING && mono_ms >= r->next_try_ms && !leader) {
            fetch_start(r, st.diverged_index);
        }
        return;
    case REPAIR_FETCHING:
        if (atomic_load(&r->fetch->done))
            fetch_finish(r, mono_ms);
        return;
    }
}

/* ------------------------------------------------------------ the source side */

int ledger_repair_serve(ledger_repair_t *r, const Qcledger__ReplicaSnapshotRequest *m,
                        uint64_t mono_ms, Qcledger__ReplicaSnapshotReply *out, char *why,
                        size_t why_cap)
{
    assert(r != NULL);
    assert(m != NULL);
    assert(out != NULL);
    ledger_fsm_stats_t st;
    ledger_fsm_stats(r->fsm, &st);
    if (raft_state(ledger_replica_raft(r->replica)) == RAFT_LEADER) {
        snprintf(why, why_cap,
                 "the leader is the digest's reference, not its witness: ask a "
                 "follower that agreed with it");
        return QC_ESTATE;
    }
    if (st.diverged || st.apply_error != 0 || ledger_store_corrupt(ledger_fsm_store(r->fsm))) {
        snprintf(why, why_cap, "this replica's own state is not known good");
        return QC_ESTATE;
    }
    if (m->session == 0) {
        if (st.digest_ok_index == 0 || st.digest_ok_index < m->min_index) {
            snprintf(why, why_cap,
                     "this replica's state last equalled the leader's digest at %" PRIu64
                     ", before %" PRIu64,
                     st.digest_ok_index, m->min_index);
            return QC_ESTALE;
        }
        if (r->snap != NULL && mono_ms < r->session_used_ms + LEDGER_REPAIR_SESSION_BUSY_MS) {
            snprintf(why, why_cap, "another replica is reading this one's snapshot");
            return QC_EBUSY;
        }
        raft_free(r->snap);
        r->snap = NULL;
        uint8_t *snap = NULL;
        size_t len = 0;
        int rc = ledger_fsm_snapshot(r->fsm, &snap, &len);
        if (rc == 0 && RAND_bytes((unsigned char *)&r->session, sizeof r->session) != 1)
            rc = QC_ECRYPTO;
        if (rc != 0) {
            raft_free(snap);
            snprintf(why, why_cap, "snapshot: %s", qc_strerror(rc));
            return rc;
        }
        r->session |= 1; /* never 0 */
        r->snap = snap;
        r->snap_len = len;
        r->snap_index = ops_be_get(snap + REPAIR_SNAP_INDEX_AT, 8);
        ops_logf(OPS_LOG_INFO, "ledger.repair_serving",
                 "a replica reads this one's snapshot at index %" PRIu64 " (%zu bytes)",
                 r->snap_index, len);
    } else if (r->snap == NULL || m->session != r->session) {
        snprintf(why, why_cap, "no such snapshot session (dropped after %d ms idle)",
                 LEDGER_REPAIR_SESSION_IDLE_MS);
        return QC_ENOTFOUND;
    }
    if (m->offset >= r->snap_len) {
        snprintf(why, why_cap, "offset %" PRIu64 " past the snapshot's %zu bytes", m->offset,
                 r->snap_len);
        return QC_EINVAL;
    }
    size_t n = r->snap_len - (size_t)m->offset;
    if (n > LEDGER_REPAIR_CHUNK)
        n = LEDGER_REPAIR_CHUNK;
    out->session = r->session;
    out->total = r->snap_len;
    out->index = r->snap_index;
    out->offset = m->offset;
    out->chunk.data = r->snap + m->offset;
    out->chunk.len = n;
    out->source_id = ledger_replica_id(r->replica);
    r->session_used_ms = mono_ms;
    return 0;
}

/* ------------------------------------------------------------ life cycle */

int ledger_repair_new(const ledger_repair_config_t *cfg, ledger_repair_t **out)
{
    assert(cfg != NULL);
    assert(out != NULL);
    assert(cfg->zctx != NULL && cfg->fsm != NULL && cfg->replica != NULL);
    *out = NULL;
    ledger_repair_t *r = calloc(1, sizeof *r);
    if (r == NULL)
        return QC_ENOMEM;
    if (proto_curve_keypair_load(cfg->curve_key_path, &r->keys) != 0) {
        free(r);
        return QC_ECONFIG;
    }
    r->zctx = cfg->zctx;
    r->fsm = cfg->fsm;
    r->replica = cfg->replica;
    r->enabled = cfg->enabled;
    r->state = REPAIR_HEALTHY;
    r->m_rebuilds = ops_counter("qc_ledger_replica_rebuilds_total",
                                "States rebuilt from a healthy replica's snapshot");
    r->m_failures = ops_counter("qc_ledger_replica_repair_failures_total",
                                "Fetches of a healthy replica's snapshot that failed");
    r->m_diverged = ops_gauge("qc_ledger_replica_diverged",
                              "1 while this replica's state is diverged and being rebuilt");
    *out = r;
    return 0;
}

void ledger_repair_destroy(ledger_repair_t **r_p)
{
    if (r_p == NULL || *r_p == NULL)
        return;
    ledger_repair_t *r = *r_p;
    if (r->fetch != NULL) {
        atomic_store(&r->fetch->stop, true);
        pthread_join(r->thread, NULL);
        fetch_free(&r->fetch);
    }
    raft_free(r->snap);
    proto_curve_keypair_wipe(&r->keys);
    free(r);
    *r_p = NULL;
}
