/* audit_main.c - qc-audit: the audit service, and `qc-audit verify|show|export` for operators. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <zmq.h>

#include "audit_checkpoint.h"
#include "audit_cli.h"
#include "audit_intake.h"
#include "audit_relay.h"
#include "audit_store.h"
#include "ops_config.h"
#include "ops_log.h"
#include "ops_metrics.h"
#include "ops_signal.h"
#include "proto_cert.h"
#include "proto_rpc.h"
#include "qc_error.h"

#define AUDIT_HTTP_PORT_MAX 65535
#define AUDIT_POLL_MS_MAX 60000
#define AUDIT_MIB (1024ull * 1024ull)
#define AUDIT_MAP_MB_MAX (1024ull * 1024ull) /* 1 TiB */
#define AUDIT_RELAY_STALE_MS 30000           /* /healthz fails when no round succeeded since */

static const ops_config_key_t audit_keys[] = {
    {"listen", OPS_CONFIG_STRING, "tcp://127.0.0.1:7400", "endpoint the append ROUTER binds"},
    {"curve_key", OPS_CONFIG_STRING, NULL, "audit's CURVE key pair file"},
    {"allow", OPS_CONFIG_STRING, NULL, "file of keys allowed to call append (gateways, signers)"},
    {"ledger", OPS_CONFIG_STRING, NULL,
     "ledger endpoints: shard 0 first, shards separated by ';', instances by ','"},
    {"ledger_key", OPS_CONFIG_STRING, NULL, "the ledger's CURVE public key (Z85)"},
    {"signer", OPS_CONFIG_STRING, NULL, "signer endpoints, comma-separated (checkpoints)"},
    {"signer_key", OPS_CONFIG_STRING, NULL, "the signer's CURVE public key (Z85)"},
    {"checkpoint_cert", OPS_CONFIG_STRING, NULL,
     "audit-checkpoint certificate (PEM): every signed checkpoint is checked before it is kept"},
    {"data_dir", OPS_CONFIG_STRING, NULL, "directory of the log's LMDB environment"},
    {"map_size_mb", OPS_CONFIG_INT, "4096", "LMDB map size in MiB"},
    {"checkpoint_entries", OPS_CONFIG_INT, "1000", "entries between signed checkpoints"},
    {"checkpoint_seconds", OPS_CONFIG_INT, "10", "longest wait of an entry for a checkpoint"},
    {"poll_ms", OPS_CONFIG_INT, "200", "idle wait of the relay between outbox reads"},
    {"batch_max", OPS_CONFIG_INT, "64", "events per outbox read and per append commit"},
    {"http_port", OPS_CONFIG_INT, "0", "port of /metrics and /healthz on 127.0.0.1 (0 = off)"},
    {"instance", OPS_CONFIG_STRING, "0", "instance name in logs"},
    {"log_level", OPS_CONFIG_STRING, "info", "debug, info, warn or error"},
};
#define AUDIT_KEY_COUNT (sizeof audit_keys / sizeof audit_keys[0])

#define AUDIT_USAGE                                                                                \
    "[--config FILE] [options]\n"                                                                  \
    "       qc-audit verify|show|export --dir DATA ... (qc-audit verify --help)\n"                 \
    "Keeps the bank's audit log: relays every ledger shard's outbox, takes security events\n"      \
    "(method append, proto/audit.proto), chains every entry by SHA-256 and has the signer\n"       \
    "sign checkpoints. A reply or an outbox ack means the event is durable."

typedef struct audit_health {
    audit_relay_t *relay;
} audit_health_t;

static bool audit_healthy(void *arg, char *why, size_t cap)
{
    audit_health_t *h = arg;
    if (h->relay != NULL && audit_relay_stale_ms(h->relay) > AUDIT_RELAY_STALE_MS) {
        snprintf(why, cap, "relay: no ledger shard round succeeded for %d s",
                 AUDIT_RELAY_STALE_MS / 1000);
        return false;
    }
    return true;
}

static const char *nonempty(const char *s)
{
    return s != NULL && s[0] != '\0' ? s : NULL;
}

/* Checks the ranges of the integer settings. */
static bool audit_ranges_ok(const ops_config_t *cfg)
{
    int64_t port = ops_config_int(cfg, "http_port"), map = ops_config_int(cfg, "map_size_mb");
    int64_t ce = ops_config_int(cfg, "checkpoint_entries");
    int64_t cs = ops_config_int(cfg, "checkpoint_seconds");
    int64_t poll = ops_config_int(cfg, "poll_ms"), batch = ops_config_int(cfg, "batch_max");
    return port >= 0 && port <= AUDIT_HTTP_PORT_MAX && map >= 1 &&
           (uint64_t)map <= AUDIT_MAP_MB_MAX && ce >= 1 && ce <= AUDIT_CHECKPOINT_ENTRIES_MAX &&
           cs >= 1 && cs <= AUDIT_CHECKPOINT_SECONDS_MAX && poll >= 1 &&
           poll <= AUDIT_POLL_MS_MAX && batch >= 1 && batch <= AUDIT_RELAY_BATCH_MAX;
}

static int audit_serve(const ops_config_t *cfg)
{
    const char *data_dir = nonempty(ops_config_str(cfg, "data_dir"));
    const char *key_path = nonempty(ops_config_str(cfg, "curve_key"));
    const char *allow = nonempty(ops_config_str(cfg, "allow"));
    if (data_dir == NULL || key_path == NULL || allow == NULL) {
        ops_log(OPS_LOG_ERROR, "audit.config", "error",
                "data_dir, curve_key and allow are required", NULL);
        return QC_ECONFIG;
    }
    proto_curve_keypair_t keys;
    int rc = proto_curve_keypair_load(key_path, &keys);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "audit.config", "curve_key", key_path, "error", qc_strerror(rc),
                NULL);
        return rc;
    }
    void *zctx = zmq_ctx_new();
    audit_store_t *store = NULL;
    audit_intake_t *intake = NULL;
    audit_relay_t *relay = NULL;
    audit_checkpoint_t *cp = NULL;
    ops_http_t *http = NULL;
    EVP_PKEY *cert_key = NULL;
    audit_health_t health = {0};
    uint32_t batch = (uint32_t)ops_config_int(cfg, "batch_max");
    uint32_t poll = (uint32_t)ops_config_int(cfg, "poll_ms");
    const char *cert = nonempty(ops_config_str(cfg, "checkpoint_cert"));
    if (zctx == NULL) {
        rc = QC_EINTERNAL;
        goto out;
    }
    if (cert != NULL && (rc = proto_key_load_pem(cert, &cert_key)) != 0) {
        ops_log(OPS_LOG_ERROR, "audit.config", "checkpoint_cert", cert, "error", qc_strerror(rc),
                NULL);
        goto out;
    }
    if ((rc = audit_store_open(
             data_dir, 0, (uint64_t)ops_config_int(cfg, "map_size_mb") * AUDIT_MIB, &store)) != 0)
        goto out;
    audit_intake_config_t ic = {.zctx = zctx,
                                .store = store,
                                .listen = ops_config_str(cfg, "listen"),
                                .keys = &keys,
                                .allow_path = allow,
                                .batch_max = batch,
                                .poll_ms = poll};
    if ((rc = audit_intake_new(&ic, &intake)) != 0)
        goto out;
    const char *ledger = nonempty(ops_config_str(cfg, "ledger"));
    if (ledger != NULL) {
        audit_relay_config_t rcfg = {.zctx = zctx,
                                     .store = store,
                                     .ledger = ledger,
                                     .ledger_key = ops_config_str(cfg, "ledger_key"),
                                     .keys = &keys,
                                     .batch_max = batch,
                                     .poll_ms = poll};
        if ((rc = audit_relay_new(&rcfg, &relay)) != 0 || (rc = audit_relay_start(relay)) != 0)
            goto out;
    } else {
        ops_log(OPS_LOG_WARN, "audit.no_ledger", "error", "no ledger configured: no relay", NULL);
    }
    const char *signer = nonempty(ops_config_str(cfg, "signer"));
    if (signer != NULL) {
        if (cert_key == NULL)
            ops_log(OPS_LOG_WARN, "audit.no_checkpoint_cert", "error",
                    "signed checkpoints are kept without being checked first", NULL);
        audit_checkpoint_config_t ccfg = {
            .zctx = zctx,
            .store = store,
            .signer = signer,
            .signer_key = ops_config_str(cfg, "signer_key"),
            .keys = &keys,
            .cert_key = cert_key,
            .entries = (uint64_t)ops_config_int(cfg, "checkpoint_entries"),
            .seconds = (uint64_t)ops_config_int(cfg, "checkpoint_seconds")};
        if ((rc = audit_checkpoint_new(&ccfg, &cp)) != 0 || (rc = audit_checkpoint_start(cp)) != 0)
            goto out;
    } else {
        ops_log(OPS_LOG_WARN, "audit.no_signer", "error", "no signer configured: no checkpoints",
                NULL);
    }
    health.relay = relay;
    if ((rc = ops_http_start((uint16_t)ops_config_int(cfg, "http_port"), audit_healthy, &health,
                             &http)) != 0)
        goto out;
    ops_log(OPS_LOG_INFO, "audit.started", "data_dir", data_dir, NULL);
    rc = audit_intake_run(intake);
out:
    ops_signal_request_stop();
    ops_http_stop(&http);
    audit_checkpoint_destroy(&cp);
    audit_relay_destroy(&relay);
    audit_intake_destroy(&intake);
    audit_store_destroy(&store);
    EVP_PKEY_free(cert_key);
    proto_curve_keypair_wipe(&keys);
    if (zctx != NULL)
        zmq_ctx_term(zctx);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && audit_cli_is_verb(argv[1]))
        return audit_cli_main("qc-audit", argc - 1, argv + 1);
    char err[OPS_CONFIG_ERROR_MAX];
    ops_config_t *cfg = NULL;
    int rc = ops_config_load("qc-audit", AUDIT_USAGE, audit_keys, AUDIT_KEY_COUNT, argc, argv, &cfg,
                             err, sizeof err);
    if (rc == 1)
        return 0;
    if (rc != 0) {
        fprintf(stderr, "qc-audit: %s\n", err);
        return 2;
    }
    int level = ops_log_level_parse(ops_config_str(cfg, "log_level"));
    if (ops_config_argc(cfg) != 0 || level < 0 || !audit_ranges_ok(cfg)) {
        fprintf(stderr, "qc-audit: bad arguments or a setting out of range (see --help)\n");
        ops_config_destroy(&cfg);
        return 2;
    }
    ops_log_init("audit", ops_config_str(cfg, "instance"), (ops_log_level_t)level);
    ops_signal_install();
    rc = audit_serve(cfg);
    ops_config_destroy(&cfg);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "audit.exit", "error", qc_strerror(rc), NULL);
        return 1;
    }
    ops_log(OPS_LOG_INFO, "audit.stopped", NULL);
    return 0;
}
