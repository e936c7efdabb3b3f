/* ledger_repair.h - replica repair with real processes: a replica whose state cannot be trusted
 * rebuilds it from a healthy follower's snapshot, by itself, under its own Raft id
 * (docs/DESIGN.md section 3, "Replica repair").
 *
 * Both halves run on the service's thread, in replica mode:
 *
 *   - The diverged side (ledger_repair_tick(), each turn of the loop). A replica is diverged
 *     when a leader's digest op found its state different (ledger_fsm.c), or when a stored
 *     record failed its checksum on a follower (marked here with ledger_fsm_diverge()): apply
 *     refuses every entry, so nothing more is built on the wrong state. It then fetches, in a
 *     thread of its own, the snapshot of another replica of the shard over the client
 *     RPC ("replica_snapshot", proto/ledger.proto), authenticated by the shard's own CURVE key
 *     both ways (every replica of a shard holds curve_key, and only they do), chunk by chunk.
 *     Back on the service's thread, ledger_fsm_repair() checks it (magic, version, shard,
 *     length, SHA-256 of the body, an applied index at or past the diverged one) and replaces
 *     the whole state in one LMDB write transaction. The Raft log and vote are never touched:
 *     libraft goes on applying after the index it stopped at, and every entry at or below the
 *     snapshot's applied index is skipped (ledger_fsm.h), so nothing applies twice and no
 *     committed entry is lost. A failed fetch is retried after 0.25, 0.5, 1 ... 60 s, at most
 *     LEDGER_REPAIR_ATTEMPTS_MAX times per divergence (then it gives up and says so; the
 *     runbook takes over).
 *   - The source side (ledger_repair_serve(), the method "replica_snapshot"). Only a follower
 *     answers, and only while its own state is known good: not diverged, no apply failure,
 *     no corrupt record, and its state equalled the leader's digest at an index at or past the
 *     requester's diverged index. So a replica is only ever rebuilt from a state that two
 *     replicas (the leader and that follower) agreed on; a leader whose own state is wrong
 *     makes every follower diverge and none of them can serve, so the group stops rather
 *     than copy it. One snapshot session at a time, dropped after
 *     LEDGER_REPAIR_SESSION_IDLE_MS without a call.
 *   - A leader whose store holds a corrupt record (its scrub, a read) hands the leadership to
 *     another voter (raft_transfer), at most every LEDGER_REPAIR_TRANSFER_MS, and once a
 *     follower is repaired as above.
 *
 * Metrics: qc_ledger_replica_rebuilds_total, qc_ledger_replica_repair_failures_total,
 * qc_ledger_replica_diverged (gauge, 1 while diverged). Log events, one per change of state:
 * ledger.repair_started, ledger.repair_attempt_failed, ledger.replica_rebuilt,
 * ledger.repair_gave_up, ledger.leader_stepping_down.
 *
 * Not thread-safe: the service's thread owns it (the fetch thread shares nothing with it but
 * its result, handed over through an atomic flag). */
#ifndef LEDGER_REPAIR_H
#define LEDGER_REPAIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ledger.pb-c.h"
#include "ledger_fsm.h"
#include "ledger_replica.h"
#include "qc_error.h"

#define LEDGER_REPAIR_CHUNK (128u * 1024)        /* snapshot bytes in one reply */
#define LEDGER_REPAIR_ATTEMPTS_MAX 12            /* fetches per divergence */
#define LEDGER_REPAIR_BACKOFF_MIN_MS 250         /* after the first failed fetch */
#define LEDGER_REPAIR_BACKOFF_MAX_MS 60000       /* between two fetches, at most */
#define LEDGER_REPAIR_CALL_MS 5000               /* budget of one chunk's call */
#define LEDGER_REPAIR_FETCH_MS (10u * 60 * 1000) /* budget of one whole fetch */
#define LEDGER_REPAIR_SESSION_IDLE_MS 30000      /* a source drops an unread snapshot */
#define LEDGER_REPAIR_SESSION_BUSY_MS 2000       /* a session this fresh is not replaced */
#define LEDGER_REPAIR_TRANSFER_MS 5000           /* between two leadership transfers */
#define LEDGER_REPAIR_WHY_MAX 256

typedef struct ledger_repair ledger_repair_t;

typedef struct ledger_repair_config {
    void *zctx;                 /* the service's ZeroMQ context; outlives the repair */
    const char *curve_key_path; /* the shard's key pair (curve_key): client and server key */
    ledger_fsm_t *fsm;          /* borrowed */
    ledger_replica_t *replica;  /* borrowed */
    bool enabled;               /* false: never rebuilds itself (still serves snapshots) */
} ledger_repair_config_t;

/* Returns 0 and sets *out, QC_ECONFIG (the key pair), QC_ENOMEM. */
QC_MUST_CHECK int ledger_repair_new(const ledger_repair_config_t *cfg, ledger_repair_t **out);

/* Stops a fetch that runs (waits at most one call's budget), frees r, nulls *r_p; accepts
 * NULL. Before the replica, the fsm and the ZeroMQ context. */
void ledger_repair_destroy(ledger_repair_t **r_p);

/* One turn (mono_ms: ops_time_mono_ms()): notices a corrupt store, starts, finishes or retries a
 * fetch, rebuilds the state, steps a corrupt leader down, drops an idle source session. */
void ledger_repair_tick(ledger_repair_t *r, uint64_t mono_ms);

/* Answers "replica_snapshot" from this replica's state (see above). *out's chunk points into
 * r until the next call. Returns 0, or QC_ESTATE, QC_ESTALE, QC_EBUSY, QC_ENOTFOUND (no such
 * session), QC_EINVAL (offset), ledger_fsm_snapshot's errors, with why filled. */
QC_MUST_CHECK int ledger_repair_serve(ledger_repair_t *r, const Qcledger__ReplicaSnapshotRequest *m,
                                      uint64_t mono_ms, Qcledger__ReplicaSnapshotReply *out,
                                      char *why, size_t why_cap);

#endif
