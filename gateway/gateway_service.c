/* gateway_service.c - qc-gateway's service: keys, context and flow from the config. */
#include "gateway_service.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "gateway_flow.h"
#include "ops_log.h"
#include "qc_error.h"

struct gateway_service {
    void *ctx;
    gateway_t *gw;
};

static const char *gateway_nonempty(const char *s)
{
    return s != NULL && s[0] != '\0' ? s : NULL;
}

/* Builds the gateway of cfg in svc->ctx; the key pair is wiped before returning. */
static int gateway_service_start(gateway_service_t *svc, const ops_config_t *cfg)
{
    int rc;
    proto_curve_keypair_t keys;
    const char *key_path = ops_config_str(cfg, "curve_key");
    if (key_path == NULL) {
        ops_log(OPS_LOG_ERROR, "gateway.config", "error", "curve_key is required", NULL);
        return QC_ECONFIG;
    }
    if ((rc = proto_curve_keypair_load(key_path, &keys)) != 0) {
        ops_log(OPS_LOG_ERROR, "gateway.config", "error", qc_strerror(rc), "curve_key", key_path,
                NULL);
        return rc;
    }
    char source[OPS_CONFIG_VALUE_MAX];
    snprintf(source, sizeof source, "gateway-%s", ops_config_str(cfg, "instance"));
    gateway_config_t gc = {
        .listen = ops_config_str(cfg, "listen"),
        .keys = &keys,
        .ledger = ops_config_str(cfg, "ledger"),
        .ledger_key = ops_config_str(cfg, "ledger_key"),
        .ca_path = ops_config_str(cfg, "ca"),
        .crl_path = gateway_nonempty(ops_config_str(cfg, "crl")),
        .crl_stale_ok = strcmp(ops_config_str(cfg, "crl_stale"), "accept") == 0,
        .rpc_timeout_ms = ops_config_int(cfg, "rpc_timeout_ms"),
        .audit = gateway_nonempty(ops_config_str(cfg, "audit")),
        .audit_key = gateway_nonempty(ops_config_str(cfg, "audit_key")),
        .source = source,
    };
    rc = gateway_new(svc->ctx, &gc, &svc->gw);
    proto_curve_keypair_wipe(&keys);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "gateway.start_failed", "error", qc_strerror(rc), "hint",
                "check listen, ledger, ledger_key, ca, crl", NULL);
        return rc;
    }
    ops_log(OPS_LOG_INFO, "gateway.started", "listen", gc.listen, NULL);
    return 0;
}

int gateway_service_new(const ops_config_t *cfg, gateway_service_t **out)
{
    assert(cfg != NULL);
    assert(out != NULL);
    *out = NULL;
    gateway_service_t *svc = calloc(1, sizeof *svc);
    if (svc == NULL)
        return QC_ENOMEM;
    svc->ctx = zmq_ctx_new();
    int rc = svc->ctx == NULL ? QC_ENOMEM : gateway_service_start(svc, cfg);
    if (rc != 0) {
        gateway_service_destroy(&svc);
        return rc;
    }
    *out = svc;
    return 0;
}

int gateway_service_run(gateway_service_t *svc)
{
    assert(svc != NULL);
    assert(svc->gw != NULL);
    return gateway_run(svc->gw);
}

void gateway_service_destroy(gateway_service_t **svc_p)
{
    assert(svc_p != NULL);
    gateway_service_t *svc = *svc_p;
    if (svc == NULL)
        return;
    gateway_destroy(&svc->gw);
    if (svc->ctx != NULL)
        zmq_ctx_term(svc->ctx);
    free(svc);
    *svc_p = NULL;
}
