/* audit_main.c - qc-audit: the audit service, and `qc-audit verify|show|export|prove|consistency`
 * for operators.
 *
 * The start-up is the one every service shares (ops_service.h); the service is in
 * audit_service.c, the operator verbs in audit_cli.c. */
#include <stdio.h>
#include <string.h>

#include "audit_checkpoint.h"
#include "audit_cli.h"
#include "audit_relay.h"
#include "audit_service.h"
#include "audit_store.h"
#include "ops_config.h"
#include "ops_log.h"
#include "ops_service.h"
#include "ops_store.h"
#include "qc_error.h"

#define AUDIT_POLL_MS_MAX 60000
#define AUDIT_MAP_MB_MAX (1024ll * 1024ll) /* 1 TiB: AUDIT_STORE_MAP_SIZE_MAX */

static const ops_config_key_t audit_keys[] = {
    {"listen", OPS_CONFIG_STRING, "tcp://127.0.0.1:7400", "endpoint the append ROUTER binds",
     .check = ops_config_check_endpoint},
    {"curve_key", OPS_CONFIG_STRING, NULL, "audit's CURVE key pair file"},
    {"allow", OPS_CONFIG_STRING, NULL, "file of keys allowed to call append (gateways, signers)"},
    {"ledger", OPS_CONFIG_STRING, NULL,
     "ledger endpoints: shard 0 first, shards separated by ';', instances by ','",
     .check = ops_config_check_endpoints},
    {"ledger_key", OPS_CONFIG_STRING, NULL, "the ledger's CURVE public key (Z85)",
     .check = ops_config_check_curve_key},
    {"consumer", OPS_CONFIG_STRING, NULL,
     "this witness's name on the ledgers' audit_consumers list (audit-1); empty = the one "
     "consumer of a ledger without the list"},
    {"signer", OPS_CONFIG_STRING, NULL, "signer endpoints, comma-separated (checkpoints)",
     .check = ops_config_check_endpoints},
    {"signer_key", OPS_CONFIG_STRING, NULL, "the signer's CURVE public key (Z85)",
     .check = ops_config_check_curve_key},
    {"checkpoint_cert", OPS_CONFIG_STRING, NULL,
     "audit-checkpoint certificate (PEM): every signed checkpoint is checked before it is kept"},
    {"data_dir", OPS_CONFIG_STRING, NULL,
     "directory of the log's LMDB environment (made by `qc-audit init`)"},
    {"cluster_id", OPS_CONFIG_STRING, "quancun",
     "this bank's cluster id, written into the store by init and checked at every start",
     .check = ops_store_check_cluster_id},
    {"map_size_mb", OPS_CONFIG_INT, "4096", "LMDB map size in MiB", .min = 1,
     .max = AUDIT_MAP_MB_MAX},
    {"map_max_mb", OPS_CONFIG_INT, "0",
     "the map grows online up to this many MiB, its threads paused meanwhile (0 = no growth "
     "past map_size_mb)",
     .min = 0, .max = AUDIT_MAP_MB_MAX},
    {"checkpoint_entries", OPS_CONFIG_INT, "1000", "entries between signed checkpoints", .min = 1,
     .max = AUDIT_CHECKPOINT_ENTRIES_MAX},
    {"checkpoint_seconds", OPS_CONFIG_INT, "10", "longest wait of an entry for a checkpoint",
     .min = 1, .max = AUDIT_CHECKPOINT_SECONDS_MAX},
    {"poll_ms", OPS_CONFIG_INT, "200", "idle wait of the relay between outbox reads", .min = 1,
     .max = AUDIT_POLL_MS_MAX},
    {"batch_max", OPS_CONFIG_INT, "64", "events per outbox read and per append commit", .min = 1,
     .max = AUDIT_RELAY_BATCH_MAX},
};

#define AUDIT_USAGE                                                                                \
    "[--config FILE] [options]\n"                                                                  \
    "       qc-audit init [--upgrade] --help\n"                                                    \
    "       qc-audit verify|show|export|prove|consistency --dir DATA ... (--help)\n"               \
    "Keeps the bank's audit log: relays every ledger shard's outbox, takes security events\n"      \
    "(method append, proto/audit.proto), chains every entry by SHA-256 and has the signer\n"       \
    "sign checkpoints. A reply or an outbox ack means the event is durable."

/* A growth limit below the map it starts with would never be reached: a mistake, said so. */
static bool audit_check(const ops_config_t *cfg, char *err, size_t errcap)
{
    int64_t size = ops_config_int(cfg, "map_size_mb"), max = ops_config_int(cfg, "map_max_mb");
    if (max != 0 && max < size) {
        snprintf(err, errcap,
                 "map_max_mb: %lld is below map_size_mb %lld (0 = no growth past map_size_mb)",
                 (long long)max, (long long)size);
        return false;
    }
    return true;
}

static const ops_service_spec_t audit_spec = {
    .program = "qc-audit",
    .service = "audit",
    .usage = AUDIT_USAGE,
    .keys = audit_keys,
    .key_count = sizeof audit_keys / sizeof audit_keys[0],
    .check = audit_check,
};

/* The identity this config's store must have (ops_store.h): the log has no shard. */
static void audit_identity(const ops_config_t *cfg, ops_store_identity_t *want)
{
    memset(want, 0, sizeof *want);
    snprintf(want->kind, sizeof want->kind, "audit");
    snprintf(want->cluster_id, sizeof want->cluster_id, "%s", ops_config_str(cfg, "cluster_id"));
    want->shard = OPS_STORE_NO_SHARD;
    want->format = AUDIT_STORE_FORMAT;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "init") == 0)
        return ops_store_init_main(&audit_spec, audit_identity, NULL, argc - 1, argv + 1);
    if (argc >= 2 && audit_cli_is_verb(argv[1]))
        return audit_cli_main("qc-audit", argc - 1, argv + 1);
    ops_service_t *ops = NULL;
    int rc = ops_service_start(&audit_spec, argc, argv, &ops);
    if (rc != 0)
        return ops_service_start_status(rc);
    /* One owner per store, and only a store init made for this cluster (ops_store.h). */
    ops_store_identity_t want;
    audit_identity(ops_service_config(ops), &want);
    ops_store_lock_t *owner = NULL;
    char why[OPS_STORE_WHY_MAX];
    if (ops_store_claim(ops_config_str(ops_service_config(ops), "data_dir"), &want, &owner, why,
                        sizeof why) != 0) {
        ops_service_destroy(&ops);
        return OPS_SERVICE_EXIT_FAILED;
    }
    audit_service_t *svc = NULL;
    rc = audit_service_new(ops_service_config(ops), &svc);
    if (rc == 0) {
        ops_service_ready(ops, audit_service_healthy, svc);
        rc = audit_service_run(svc);
    }
    ops_service_stopping(ops);
    audit_service_destroy(&svc);
    ops_store_unlock(&owner);
    ops_service_destroy(&ops);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "audit.exit", "error", qc_strerror(rc), NULL);
        return OPS_SERVICE_EXIT_FAILED;
    }
    ops_log(OPS_LOG_INFO, "audit.stopped", NULL);
    return OPS_SERVICE_EXIT_OK;
}
