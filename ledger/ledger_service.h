/* ledger_service.h - the ledger's RPC loop: one thread that reads, writes and group-commits.
 *
 * The loop polls the ROUTER socket and the signer's, drains up to batch_max waiting requests
 * (waiting at most batch_wait_us more for stragglers), applies every write of the batch in one
 * LMDB write transaction (one nested transaction per request, so a refusal changes nothing),
 * compensates loads past their deadline and stores the allows the signer returned in the same
 * transaction, commits with fsync, and only then replies to all of them: a reply means
 * durable. Reads are answered from a read transaction after the commit.
 *
 * The bank debits before it signs: a reserve's reply waits (in ledger_signer, never blocking
 * the loop) until the bank's signer has signed the allow of the committed load and a later
 * commit has stored it; a settle's reply carries the outcome signed after its commit. A signer
 * that does not answer leaves the load RESERVED and its deadline compensates it.
 *
 * Methods (bodies in proto/ledger.proto): reserve, settle, outbox_read, outbox_ack (keys of
 * allow_keys); open_account, deposit, freeze, unfreeze, enroll_device, revoke_device,
 * add_replica, remove_replica (keys of admin_keys); get_load, get_account, get_device, check,
 * shard_status (either).
 *
 * Replica mode (replica_id set; docs/DESIGN.md, "Replication"): the same loop drives a Raft
 * node (ledger_replica.h) on the same thread. The leader admits a batch as above against its
 * applied state, in a transaction it aborts, proposes what passed as one Raft entry
 * (ledger_fsm.h), and replies once the entry is committed by a majority and applied here;
 * every LMDB write is an apply. Followers answer check and shard_status, and refuse the rest
 * with QC_ENOTLEADER naming the leader, or QC_ENOQUORUM. */
#ifndef LEDGER_SERVICE_H
#define LEDGER_SERVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto_limits.h"
#include "qc_error.h"

#define LEDGER_BATCH_MAX 256     /* requests applied in one group commit, at most */
#define LEDGER_BATCH_WAIT_US 200 /* extra wait for a batch to fill, at most */
#define LEDGER_BATCH_WAIT_US_MAX 100000
#define LEDGER_POLL_MS 250           /* longest sleep before looking at signals and deadlines */
#define LEDGER_READER_CHECK_MS 10000 /* period of mdb_reader_check() */
#define LEDGER_STORAGE_POLL_MS 1000  /* period of the look at free space and the map's use */
/* A commit that failed (full disk, full map, I/O) is retried by the deadline sweep after this
 * long, not at once: a retry in a loop spun at 89% of a core on a full disk (issue 21). */
#define LEDGER_COMMIT_RETRY_MS 1000
#define LEDGER_OUTBOX_READ_MAX PROTO_OUTBOX_READ_MAX /* events per outbox_read */
#define LEDGER_DEADLINE_MIN_MS 1000 /* shortest report deadline the config may set */
#define LEDGER_DEADLINE_MAX_MS 86400000
#define LEDGER_PROPOSALS_MAX 64 /* replica mode: entries proposed and not yet applied */
/* Replica mode: the longest period between two digest ops (a day). Each costs every replica
 * one read of its whole state (the canonical dump's SHA-256). */
#define LEDGER_DIGEST_INTERVAL_MS_MAX 86400000
#define LEDGER_HELD_MAX 4096 /* replica mode: requests waiting for a new leader's barrier */

typedef struct ledger_service ledger_service_t;

typedef struct ledger_service_config {
    const char *listen;         /* endpoint to bind */
    const char *curve_key_path; /* this service's CURVE key pair */
    const char *allow_keys;     /* file: service (gateway, relay) client keys */
    const char *admin_keys;     /* file: operator (qcctl) client keys; may be NULL */
    const char *data_dir;       /* the LMDB environment of this shard */
    const char *allow_cert;     /* PEM: the bank's allow-signing certificate or public key */
    const char *ca_path;        /* PEM CA bundle for device certificates; may be NULL */
    const char *crl_path;       /* PEM CRLs; may be NULL */
    uint32_t shard;
    uint32_t shard_count;
    uint64_t map_size;
    uint64_t map_max;        /* online growth up to this (bytes); 0 or at most map_size: none */
    size_t batch_max;        /* 1..LEDGER_BATCH_MAX */
    uint32_t batch_wait_us;  /* 0..LEDGER_BATCH_WAIT_US_MAX */
    int64_t deadline_ms;     /* a load's report deadline after its reserve: the allow says it */
    const char *signer;      /* signer endpoints, comma-separated, or */
    const char *signer_file; /* a file of them, re-read on SIGHUP */
    const char *signer_key;  /* the signer's CURVE public key */
    int signer_timeout_ms;   /* budget of one signature, retries included */
    /* The audit witnesses that each pull the outbox, comma-separated (ledger_outbox.h);
     * NULL: one consumer, as before witnesses. */
    const char *audit_consumers;
    /* Replica mode (docs/DESIGN.md, "Replication"; ledger_replica.h): replica_id 0 runs one
     * process without Raft, as before. */
    uint64_t replica_id;
    const char *replicas_file;
    const char *raft_dir; /* NULL: <data_dir>/raft */
    const char *raft_key; /* this replica's CURVE key pair for the replica links */
    bool join;
    unsigned snapshot_threshold;
    unsigned snapshot_trailing;
    /* Replica repair: the leader proposes its state digest this often (0 = never); a replica
     * whose state differs stops (ledger_fsm.h, ledger_fsm_repair). */
    uint64_t digest_interval_ms;
    bool repair; /* a diverged replica rebuilds itself from a healthy one (ledger_repair.h) */
    uint32_t scrub_per_second; /* records the background scrub checks a second; 0 = off */
} ledger_service_config_t;

/* Opens the store, loads the keys and binds the socket.
 * Returns 0 and sets *out, or QC_ECONFIG, QC_EIO, QC_ENOMEM (each logged). */
QC_MUST_CHECK int ledger_service_new(const ledger_service_config_t *cfg, ledger_service_t **out);

/* The ledger's /healthz check (an ops_health_fn, called from the HTTP thread): false once a
 * group commit failed. */
bool ledger_service_healthy(void *svc, char *why, size_t why_cap);

/* Serves until ops_signal_stop_requested(). Returns 0, or QC_EIO when the socket failed. */
QC_MUST_CHECK int ledger_service_run(ledger_service_t *svc);

/* Stops everything, closes the store, frees svc, nulls *svc_p; accepts NULL. */
void ledger_service_destroy(ledger_service_t **svc_p);

#endif
