/* audit_service.c - qc-audit's service: log, intake, relay and checkpoints, from the config. */
#include "audit_service.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include <openssl/evp.h>
#include <zmq.h>

#include "audit_checkpoint.h"
#include "audit_intake.h"
#include "audit_relay.h"
#include "audit_store.h"
#include "audit_verify.h"
#include "ops_log.h"
#include "ops_signal.h"
#include "proto_cert.h"
#include "proto_rpc.h"
#include "qc_error.h"

#define AUDIT_MIB (1024ull * 1024ull)

struct audit_service {
    void *zctx;
    proto_curve_keypair_t keys;
    audit_store_t *store;
    audit_intake_t *intake;
    audit_relay_t *relay;   /* NULL when no ledger is configured */
    audit_checkpoint_t *cp; /* NULL when no signer is configured */
    EVP_PKEY *cert_key;
};

bool audit_service_healthy(void *arg, char *why, size_t cap)
{
    audit_service_t *svc = arg;
    /* Evidence that cannot be committed is the audit log's one failure that matters most. */
    if (!audit_store_healthy(svc->store, why, cap))
        return false;
    if (svc->relay != NULL && audit_relay_alarm(svc->relay, why, cap))
        return false;
    if (svc->relay != NULL && audit_relay_stale_ms(svc->relay) > AUDIT_RELAY_STALE_MS) {
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

/* Starts everything of cfg in svc, whose zctx and keys are set. */
static int audit_service_start(audit_service_t *svc, const ops_config_t *cfg, const char *data_dir,
                               const char *allow)
{
    int rc;
    uint32_t batch = (uint32_t)ops_config_int(cfg, "batch_max");
    uint32_t poll = (uint32_t)ops_config_int(cfg, "poll_ms");
    const char *cert = nonempty(ops_config_str(cfg, "checkpoint_cert"));
    if (cert != NULL && (rc = proto_key_load_pem(cert, &svc->cert_key)) != 0) {
        ops_log(OPS_LOG_ERROR, "audit.config", "checkpoint_cert", cert, "error", qc_strerror(rc),
                NULL);
        return rc;
    }
    if ((rc = audit_store_open_growing(
             data_dir, 0, (uint64_t)ops_config_int(cfg, "map_size_mb") * AUDIT_MIB,
             (uint64_t)ops_config_int(cfg, "map_max_mb") * AUDIT_MIB, &svc->store)) != 0)
        return rc;
    /* Nothing is appended after a broken chain: what the last checkpoint signed is trusted,
     * every entry since is checked before the service takes an event (issue 21). */
    audit_verify_report_t tail;
    if ((rc = audit_verify_tail(svc->store, &tail)) != 0) {
        char seq[24];
        snprintf(seq, sizeof seq, "%" PRIu64, tail.break_seq);
        ops_log(OPS_LOG_ERROR, "audit.chain_broken", "seq", seq, "error", tail.why, NULL);
        return QC_ECORRUPT;
    }
    char checked[24];
    snprintf(checked, sizeof checked, "%" PRIu64, tail.entries);
    ops_log(OPS_LOG_INFO, "audit.chain_checked", "entries", checked, NULL);
    audit_intake_config_t ic = {.zctx = svc->zctx,
                                .store = svc->store,
                                .listen = ops_config_str(cfg, "listen"),
                                .keys = &svc->keys,
                                .allow_path = allow,
                                .batch_max = batch,
                                .poll_ms = poll};
    if ((rc = audit_intake_new(&ic, &svc->intake)) != 0)
        return rc;
    const char *ledger = nonempty(ops_config_str(cfg, "ledger"));
    if (ledger != NULL) {
        audit_relay_config_t rcfg = {.zctx = svc->zctx,
                                     .store = svc->store,
                                     .ledger = ledger,
                                     .ledger_key = ops_config_str(cfg, "ledger_key"),
                                     .consumer = nonempty(ops_config_str(cfg, "consumer")),
                                     .keys = &svc->keys,
                                     .batch_max = batch,
                                     .poll_ms = poll};
        if ((rc = audit_relay_new(&rcfg, &svc->relay)) != 0 ||
            (rc = audit_relay_start(svc->relay)) != 0)
            return rc;
    } else {
        ops_log(OPS_LOG_WARN, "audit.no_ledger", "error", "no ledger configured: no relay", NULL);
    }
    const char *signer = nonempty(ops_config_str(cfg, "signer"));
    if (signer != NULL) {
        if (svc->cert_key == NULL)
            ops_log(OPS_LOG_WARN, "audit.no_checkpoint_cert", "error",
                    "signed checkpoints are kept without being checked first", NULL);
        audit_checkpoint_config_t ccfg = {
            .zctx = svc->zctx,
            .store = svc->store,
            .signer = signer,
            .signer_key = ops_config_str(cfg, "signer_key"),
            .keys = &svc->keys,
            .cert_key = svc->cert_key,
            .entries = (uint64_t)ops_config_int(cfg, "checkpoint_entries"),
            .seconds = (uint64_t)ops_config_int(cfg, "checkpoint_seconds")};
        if ((rc = audit_checkpoint_new(&ccfg, &svc->cp)) != 0 ||
            (rc = audit_checkpoint_start(svc->cp)) != 0)
            return rc;
    } else {
        ops_log(OPS_LOG_WARN, "audit.no_signer", "error", "no signer configured: no checkpoints",
                NULL);
    }
    ops_log(OPS_LOG_INFO, "audit.started", "data_dir", data_dir, NULL);
    return 0;
}

int audit_service_new(const ops_config_t *cfg, audit_service_t **out)
{
    assert(cfg != NULL);
    assert(out != NULL);
    *out = NULL;
    const char *data_dir = nonempty(ops_config_str(cfg, "data_dir"));
    const char *key_path = nonempty(ops_config_str(cfg, "curve_key"));
    const char *allow = nonempty(ops_config_str(cfg, "allow"));
    if (data_dir == NULL || key_path == NULL || allow == NULL) {
        ops_log(OPS_LOG_ERROR, "audit.config", "error",
                "data_dir, curve_key and allow are required", NULL);
        return QC_ECONFIG;
    }
    audit_service_t *svc = calloc(1, sizeof *svc);
    if (svc == NULL)
        return QC_ENOMEM;
    int rc = proto_curve_keypair_load(key_path, &svc->keys);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "audit.config", "curve_key", key_path, "error", qc_strerror(rc),
                NULL);
        free(svc);
        return rc;
    }
    svc->zctx = zmq_ctx_new();
    rc = svc->zctx == NULL ? QC_EINTERNAL : audit_service_start(svc, cfg, data_dir, allow);
    if (rc != 0) {
        audit_service_destroy(&svc);
        return rc;
    }
    *out = svc;
    return 0;
}

int audit_service_run(audit_service_t *svc)
{
    assert(svc != NULL);
    assert(svc->intake != NULL);
    return audit_intake_run(svc->intake);
}

void audit_service_destroy(audit_service_t **svc_p)
{
    assert(svc_p != NULL);
    audit_service_t *svc = *svc_p;
    if (svc == NULL)
        return;
    /* The relay and checkpoint threads end when a stop is requested. */
    ops_signal_request_stop();
    audit_checkpoint_destroy(&svc->cp);
    audit_relay_destroy(&svc->relay);
    audit_intake_destroy(&svc->intake);
    audit_store_destroy(&svc->store);
    EVP_PKEY_free(svc->cert_key);
    proto_curve_keypair_wipe(&svc->keys);
    if (svc->zctx != NULL)
        zmq_ctx_term(svc->zctx);
    free(svc);
    *svc_p = NULL;
}
