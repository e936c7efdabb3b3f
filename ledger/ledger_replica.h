/* ledger_replica.h - one replica of a ledger shard's Raft group: libraft over raft_uv, the
 * shard's peer table, bootstrap or join, membership changes and status.
 *
 * The service (ledger_service.c) owns the requests; this module owns the Raft node. Both run
 * on the service's one thread: the node's libuv loop is driven from the service's zmq_poll()
 * loop (ledger_replica_fd() is polled beside the sockets, ledger_replica_run() runs whatever
 * is ready without blocking), so every libraft callback, and so every LMDB write (apply, in
 * ledger_fsm), happens on that thread.
 *
 * The peer table is read from replicas_file, one replica per line, '#' comments:
 *     <id> <raft address host:port> <client endpoint tcp://host:port> <raft CURVE key, Z85>
 * It names every replica of the shard, this one included. It is re-read on SIGHUP
 * (ledger_replica_reload()); add_replica appends to it in memory.
 *
 * Start (ledger_replica_new()): raft_dir is created when missing. A replica whose raft_dir
 * holds no state bootstraps the configuration of replicas_file (every replica a voter) unless
 * join is set; a joining replica waits, empty, for the leader to send it a snapshot and the
 * log. A replica whose raft_dir is empty while its LMDB has applied entries lost its Raft
 * state but not its data: it does not bootstrap (it joins), and says so in the log.
 *
 * The replica links: the CURVE transport of ledger_raftnet.h, with this replica's raft_key,
 * admitting only the replicas of the peer table (kept in step with it on reload and add).
 * Not thread-safe. */
#ifndef LEDGER_REPLICA_H
#define LEDGER_REPLICA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ledger_fsm.h"
#include "proto_curve.h"
#include "qc_error.h"

struct raft;

#define LEDGER_REPLICAS_MAX 16          /* replicas in one shard's peer table */
#define LEDGER_REPLICA_ADDRESS_MAX 256  /* bytes of a raft address or a client endpoint */
#define LEDGER_SNAPSHOT_THRESHOLD 4096  /* entries between two snapshots, by default */
#define LEDGER_SNAPSHOT_TRAILING 1024   /* entries kept behind a snapshot, by default */
#define LEDGER_SNAPSHOT_THRESHOLD_MIN 8 /* a snapshot dumps the whole LMDB: not every entry */
#define LEDGER_SNAPSHOT_THRESHOLD_MAX 1000000
#define LEDGER_SNAPSHOT_TRAILING_MAX 1000000
#define LEDGER_REPLICA_CLOSE_MS 5000 /* longest wait for libraft to close at stop */

typedef struct ledger_replica ledger_replica_t;

typedef struct ledger_replica_peer {
    uint64_t id;
    char address[LEDGER_REPLICA_ADDRESS_MAX];  /* raft address, host:port */
    char endpoint[LEDGER_REPLICA_ADDRESS_MAX]; /* client endpoint, tcp://host:port */
    char public_z85[PROTO_CURVE_KEY_Z85_LEN + 1];
} ledger_replica_peer_t;

typedef struct ledger_replica_config {
    uint64_t id;               /* this replica's Raft id, >= 1, listed in replicas_file */
    const char *replicas_file; /* the peer table */
    const char *raft_dir;      /* libraft's log and snapshots */
    const char *raft_key;      /* this replica's CURVE key pair for the links; its public
                                  key is the one replicas_file lists for id */
    bool join;                 /* never bootstrap: wait for the leader */
    unsigned snapshot_threshold;
    unsigned snapshot_trailing;
    ledger_fsm_t *fsm; /* borrowed; outlives the replica */
} ledger_replica_config_t;

/* Reads the peer table, starts libraft (raft_uv over raft_dir, the transport, raft_init with
 * the fsm, bootstrap unless join or state exists, raft_start). Returns 0 and sets *out, or
 * QC_ECONFIG (peer table, id not in it, key), QC_EIO (raft_dir, libraft's start), QC_ENOMEM;
 * each logged. */
QC_MUST_CHECK int ledger_replica_new(const ledger_replica_config_t *cfg, ledger_replica_t **out);

/* Closes libraft (its pending requests get their callbacks with an error, on this thread),
 * waits for it at most LEDGER_REPLICA_CLOSE_MS, frees rep, nulls *rep_p; accepts NULL. */
void ledger_replica_destroy(ledger_replica_t **rep_p);

/* The libraft instance, for raft_apply(), raft_barrier(), raft_add() and the like. */
struct raft *ledger_replica_raft(ledger_replica_t *rep);

/* The descriptor to poll for readability (libuv's backend), and the milliseconds until its
 * next timer (-1: none). */
int ledger_replica_fd(const ledger_replica_t *rep);
int ledger_replica_timeout_ms(const ledger_replica_t *rep);

/* Runs every ready libuv callback (network, disk, timers) without blocking. */
void ledger_replica_run(ledger_replica_t *rep);

uint64_t ledger_replica_id(const ledger_replica_t *rep);

/* The peer with this id, or NULL. Borrowed until the next reload or add. */
const ledger_replica_peer_t *ledger_replica_peer(const ledger_replica_t *rep, uint64_t id);

/* The leader this replica knows: its id (0 when none) and its client endpoint (NULL when no
 * leader is known, or its id is not in the peer table). */
uint64_t ledger_replica_leader(ledger_replica_t *rep, const char **endpoint);

/* Re-reads replicas_file into the peer table and the links' allow-list; keeps the old table
 * when the file does not parse. Returns 0, QC_ECONFIG or the links' refusal. */
QC_MUST_CHECK int ledger_replica_reload(ledger_replica_t *rep);

/* Adds (or replaces, by id) a peer in the table, and lets it on the links. Returns 0,
 * QC_EFULL, or the links' refusal (QC_EINVAL, QC_ENOMEM; the peer stays in the table). */
QC_MUST_CHECK int ledger_replica_add_peer(ledger_replica_t *rep, const ledger_replica_peer_t *peer);

/* Parses one peer line; returns 0 or QC_EDECODE. Blank and '#' lines are QC_ENOTFOUND. */
QC_MUST_CHECK int ledger_replica_parse_peer(const char *line, ledger_replica_peer_t *out);

#endif
