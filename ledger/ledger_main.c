/* ledger_main.c - qc-ledger: one shard of the ledger (accounts, load sagas, audit outbox).
 *
 * The start-up is the one every service shares (ops_service.h); the loop is in ledger_service.c. */
#include <stdio.h>
#include <string.h>

#include "ledger_replica.h"
#include "ledger_scrub.h"
#include "ledger_service.h"
#include "ledger_store.h"
#include "ops_config.h"
#include "ops_log.h"
#include "ops_service.h"
#include "ops_store.h"
#include "proto_shard.h"
#include "qc_error.h"

#define LEDGER_MIB (1024ull * 1024ull)
#define LEDGER_MAP_MB_MAX (1024ll * 1024ll) /* 1 TiB */
#define LEDGER_SIGNER_TIMEOUT_MS_MAX 60000
#define LEDGER_REPLICA_ID_MAX 1000000 /* Raft ids: small numbers, one per replica ever */

static const char *ledger_nonempty(const char *s)
{
    return s != NULL && s[0] != '\0' ? s : NULL;
}

static const ops_config_key_t ledger_keys[] = {
    {"listen", OPS_CONFIG_STRING, "tcp://127.0.0.1:7300", "endpoint the ROUTER socket binds",
     .check = ops_config_check_endpoint},
    {"curve_key", OPS_CONFIG_STRING, NULL, "this service's CURVE key pair file"},
    {"allow_keys", OPS_CONFIG_STRING, NULL,
     "file of service client keys (gateways, audit relay): reserve, settle, outbox_*"},
    {"admin_keys", OPS_CONFIG_STRING, NULL,
     "file of operator keys (qcctl): open_account, deposit, freeze, enroll_device, ..."},
    {"data_dir", OPS_CONFIG_STRING, NULL,
     "directory of this shard's LMDB environment (made by `qc-ledger init`)"},
    {"cluster_id", OPS_CONFIG_STRING, "quancun",
     "this bank's cluster id, written into the store by init and checked at every start",
     .check = ops_store_check_cluster_id},
    {"shard", OPS_CONFIG_INT, "0", "this shard's number, 0 .. shard_count-1", .min = 0,
     .max = PROTO_SHARD_COUNT_MAX - 1},
    {"shard_count", OPS_CONFIG_INT, "1", "number of ledger shards", .min = 1,
     .max = PROTO_SHARD_COUNT_MAX},
    {"allow_cert", OPS_CONFIG_STRING, NULL,
     "PEM certificate (or public key) of the bank's allow-signing key"},
    {"ca", OPS_CONFIG_STRING, NULL, "PEM CA bundle device certificates must chain to"},
    {"crl", OPS_CONFIG_STRING, NULL, "PEM CRLs for device certificates"},
    {"map_size_mb", OPS_CONFIG_INT, "1024", "LMDB map size in MiB", .min = 1,
     .max = LEDGER_MAP_MB_MAX},
    {"map_max_mb", OPS_CONFIG_INT, "0",
     "the map grows online up to this many MiB (0 = no growth past map_size_mb)", .min = 0,
     .max = LEDGER_MAP_MB_MAX},
    {"batch_max", OPS_CONFIG_INT, "256", "requests applied per group commit", .min = 1,
     .max = LEDGER_BATCH_MAX},
    {"batch_wait_us", OPS_CONFIG_INT, "200", "extra wait for a group commit to fill (us)", .min = 0,
     .max = LEDGER_BATCH_WAIT_US_MAX},
    {"deadline_ms", OPS_CONFIG_INT, "30000",
     "time a device has to report after its load is reserved (the allow carries it)",
     .min = LEDGER_DEADLINE_MIN_MS, .max = LEDGER_DEADLINE_MAX_MS},
    {"signer", OPS_CONFIG_STRING, NULL, "signer endpoints, comma-separated",
     .check = ops_config_check_endpoints},
    {"signer_file", OPS_CONFIG_STRING, NULL, "file of signer endpoints, re-read on SIGHUP"},
    {"signer_key", OPS_CONFIG_STRING, NULL, "the signer's CURVE public key (Z85)"},
    {"signer_timeout_ms", OPS_CONFIG_INT, "2000",
     "budget of one signature, retries to every signer included", .min = 1,
     .max = LEDGER_SIGNER_TIMEOUT_MS_MAX},
    {"audit_consumers", OPS_CONFIG_STRING, NULL,
     "audit witnesses that each pull the outbox, comma-separated (audit-1,audit-2): an event "
     "is kept until every one acked it; empty = one consumer"},
    {"replica_id", OPS_CONFIG_INT, "0",
     "this replica's Raft id in its shard's group (1..); 0 = one process without Raft", .min = 0,
     .max = LEDGER_REPLICA_ID_MAX},
    {"replicas_file", OPS_CONFIG_STRING, NULL,
     "the shard's replicas, one a line: <id> <host:port> <tcp://host:port> <Z85 key>; "
     "re-read on SIGHUP"},
    {"raft_key", OPS_CONFIG_STRING, NULL, "this replica's CURVE key pair for the replica links"},
    {"raft_dir", OPS_CONFIG_STRING, NULL, "libraft's log and snapshots (default <data_dir>/raft)"},
    {"join", OPS_CONFIG_BOOL, "false",
     "with an empty raft_dir, wait for the leader instead of bootstrapping from replicas_file "
     "(a replica added online, or one whose disk was wiped)"},
    {"snapshot_threshold", OPS_CONFIG_INT, "4096", "Raft entries between two snapshots",
     .min = LEDGER_SNAPSHOT_THRESHOLD_MIN, .max = LEDGER_SNAPSHOT_THRESHOLD_MAX},
    {"snapshot_trailing", OPS_CONFIG_INT, "1024", "Raft entries kept behind a snapshot", .min = 0,
     .max = LEDGER_SNAPSHOT_TRAILING_MAX},
    {"digest_interval_ms", OPS_CONFIG_INT, "60000",
     "replicas: the leader proposes its state digest this often, every replica compares (0 = "
     "never)",
     .min = 0, .max = LEDGER_DIGEST_INTERVAL_MS_MAX},
    {"repair", OPS_CONFIG_BOOL, "true",
     "replicas: a replica whose state differs from the leader's digest, or holds a corrupt "
     "record, rebuilds it from a healthy follower's snapshot by itself (false: it stops)"},
    {"scrub_per_second", OPS_CONFIG_INT, "1000",
     "records whose checksum the background scrub checks a second (0 = off)", .min = 0,
     .max = LEDGER_SCRUB_PER_SECOND_MAX},
};

#define LEDGER_USAGE                                                                               \
    "[--config FILE] [options]   |   init [--upgrade] --help\n"                                    \
    "Serves one shard of the quancun ledger: accounts, devices and load sagas in LMDB,\n"          \
    "group-committed (a reply means durable). Methods and bodies: proto/ledger.proto."

/* The bounds that span two keys. */
static bool ledger_check(const ops_config_t *cfg, char *err, size_t errcap)
{
    int64_t shard = ops_config_int(cfg, "shard"), count = ops_config_int(cfg, "shard_count");
    if (shard >= count) {
        snprintf(err, errcap, "shard: %lld is not below shard_count %lld", (long long)shard,
                 (long long)count);
        return false;
    }
    if (ops_config_int(cfg, "replica_id") != 0 &&
        (ledger_nonempty(ops_config_str(cfg, "replicas_file")) == NULL ||
         ledger_nonempty(ops_config_str(cfg, "raft_key")) == NULL)) {
        snprintf(err, errcap, "replica_id: a replica needs replicas_file and raft_key");
        return false;
    }
    return true;
}

static const ops_service_spec_t ledger_spec = {
    .program = "qc-ledger",
    .service = "ledger",
    .usage = LEDGER_USAGE,
    .keys = ledger_keys,
    .key_count = sizeof ledger_keys / sizeof ledger_keys[0],
    .check = ledger_check,
};

/* The identity this config's store must have (ops_store.h). */
static void ledger_identity(const ops_config_t *cfg, ops_store_identity_t *want)
{
    memset(want, 0, sizeof *want);
    snprintf(want->kind, sizeof want->kind, "ledger");
    snprintf(want->cluster_id, sizeof want->cluster_id, "%s", ops_config_str(cfg, "cluster_id"));
    want->shard = ops_config_int(cfg, "shard");
    want->shard_count = (uint32_t)ops_config_int(cfg, "shard_count");
    want->format = LEDGER_STORE_FORMAT;
}

/* init --upgrade: a store without identity, or of format 1, gets the checksum of every record
 * (ledger_store.h) before its identity says format 2. */
static int ledger_upgrade(const char *dir, uint32_t from, void *arg, char *why, size_t why_cap)
{
    const ops_config_t *cfg = arg;
    if (from >= LEDGER_STORE_FORMAT)
        return 0;
    uint64_t count = 0;
    int rc = ledger_store_add_checksums(
        dir, (uint64_t)ops_config_int(cfg, "map_size_mb") * LEDGER_MIB, &count);
    if (rc != 0) {
        snprintf(why, why_cap, "adding checksums to the records in %s failed: %s (nothing changed)",
                 dir, qc_strerror(rc));
        return rc;
    }
    printf("qc-ledger init: %llu records of %s now carry their checksum\n",
           (unsigned long long)count, dir);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "init") == 0)
        return ops_store_init_main(&ledger_spec, ledger_identity, ledger_upgrade, argc - 1,
                                   argv + 1);
    ops_service_t *ops = NULL;
    int rc = ops_service_start(&ledger_spec, argc, argv, &ops);
    if (rc != 0)
        return ops_service_start_status(rc);
    const ops_config_t *cfg = ops_service_config(ops);
    /* One owner per store, and only a store init made for this cluster and shard: held until
     * the process ends (the lock goes with the process, whatever ends it). */
    ops_store_identity_t want;
    ledger_identity(cfg, &want);
    ops_store_lock_t *owner = NULL;
    char why[OPS_STORE_WHY_MAX];
    if (ops_store_claim(ops_config_str(cfg, "data_dir"), &want, &owner, why, sizeof why) != 0) {
        ops_service_destroy(&ops);
        return OPS_SERVICE_EXIT_FAILED;
    }
    ledger_service_config_t scfg = {
        .listen = ops_config_str(cfg, "listen"),
        .curve_key_path = ops_config_str(cfg, "curve_key"),
        .allow_keys = ops_config_str(cfg, "allow_keys"),
        .admin_keys = ops_config_str(cfg, "admin_keys"),
        .data_dir = ops_config_str(cfg, "data_dir"),
        .allow_cert = ops_config_str(cfg, "allow_cert"),
        .ca_path = ops_config_str(cfg, "ca"),
        .crl_path = ops_config_str(cfg, "crl"),
        .shard = (uint32_t)ops_config_int(cfg, "shard"),
        .shard_count = (uint32_t)ops_config_int(cfg, "shard_count"),
        .map_size = (uint64_t)ops_config_int(cfg, "map_size_mb") * LEDGER_MIB,
        .map_max = (uint64_t)ops_config_int(cfg, "map_max_mb") * LEDGER_MIB,
        .batch_max = (size_t)ops_config_int(cfg, "batch_max"),
        .batch_wait_us = (uint32_t)ops_config_int(cfg, "batch_wait_us"),
        .deadline_ms = ops_config_int(cfg, "deadline_ms"),
        .signer = ledger_nonempty(ops_config_str(cfg, "signer")),
        .signer_file = ledger_nonempty(ops_config_str(cfg, "signer_file")),
        .signer_key = ops_config_str(cfg, "signer_key"),
        .signer_timeout_ms = (int)ops_config_int(cfg, "signer_timeout_ms"),
        .audit_consumers = ledger_nonempty(ops_config_str(cfg, "audit_consumers")),
        .replica_id = (uint64_t)ops_config_int(cfg, "replica_id"),
        .replicas_file = ledger_nonempty(ops_config_str(cfg, "replicas_file")),
        .raft_key = ledger_nonempty(ops_config_str(cfg, "raft_key")),
        .raft_dir = ledger_nonempty(ops_config_str(cfg, "raft_dir")),
        .join = ops_config_bool(cfg, "join"),
        .snapshot_threshold = (unsigned)ops_config_int(cfg, "snapshot_threshold"),
        .snapshot_trailing = (unsigned)ops_config_int(cfg, "snapshot_trailing"),
        .digest_interval_ms = (uint64_t)ops_config_int(cfg, "digest_interval_ms"),
        .repair = ops_config_bool(cfg, "repair"),
        .scrub_per_second = (uint32_t)ops_config_int(cfg, "scrub_per_second"),
    };
    ledger_service_t *svc = NULL;
    rc = ledger_service_new(&scfg, &svc);
    if (rc == 0) {
        ops_service_ready(ops, ledger_service_healthy, svc);
        rc = ledger_service_run(svc);
    }
    ops_service_stopping(ops);
    ledger_service_destroy(&svc);
    ops_store_unlock(&owner);
    ops_service_destroy(&ops);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "ledger.exit", "error", qc_strerror(rc), NULL);
        return OPS_SERVICE_EXIT_FAILED;
    }
    ops_log(OPS_LOG_INFO, "ledger.stopped", NULL);
    return OPS_SERVICE_EXIT_OK;
}
