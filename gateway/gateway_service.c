/* gateway_service.c - qc-gateway's service: keys, context and flow from the config. */
#include "gateway_service.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "gateway_conns.h"
#include "gateway_flow.h"
#include "ops_log.h"
#include "proto_cert.h"
#include "qc_error.h"

struct gateway_service {
    void *ctx;
    gateway_t *gw;
};

bool gateway_service_healthy(void *arg, char *why, size_t why_cap)
{
    gateway_service_t *svc = arg;
    assert(svc != NULL);
    return svc->gw == NULL || gateway_healthy(svc->gw, why, why_cap);
}

static const char *gateway_nonempty(const char *s)
{
    return s != NULL && s[0] != '\0' ? s : NULL;
}

/* Logs "gateway.config": the setting at fault, its value and what is wrong with it. */
static void gateway_config_error(const char *setting, const char *value, const char *error)
{
    ops_log(OPS_LOG_ERROR, "gateway.config", "setting", setting, "value",
            value != NULL ? value : "(unset)", "error", error, NULL);
}

/* Checks the settings gateway_new() would only refuse with one code for all of them, so a
 * start error names the one at fault: the required ones are set, the CA bundle loads alone,
 * then with the CRL (under the crl_stale policy). Returns 0 or the first failure's code,
 * logged. */
static int gateway_service_precheck(const ops_config_t *cfg)
{
    static const char *const required[] = {"curve_key", "ledger", "ledger_key", "ca"};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        const char *v = ops_config_str(cfg, required[i]);
        if (v == NULL || v[0] == '\0') {
            gateway_config_error(required[i], v, "required");
            return QC_ECONFIG;
        }
    }
    const char *audit = gateway_nonempty(ops_config_str(cfg, "audit"));
    if (audit != NULL && gateway_nonempty(ops_config_str(cfg, "audit_key")) == NULL) {
        gateway_config_error("audit_key", NULL, "required when audit is set");
        return QC_ECONFIG;
    }
    int64_t max_connections = ops_config_int(cfg, "max_connections");
    char why[160];
    if (gateway_conns_check_fds(max_connections, why, sizeof why) != 0) {
        char value[24];
        snprintf(value, sizeof value, "%lld", (long long)max_connections);
        gateway_config_error("max_connections", value, why);
        return QC_ECONFIG;
    }
    const char *ca = ops_config_str(cfg, "ca");
    const char *crl = gateway_nonempty(ops_config_str(cfg, "crl"));
    proto_trust_t *trust = NULL;
    int rc = proto_trust_new_ex(ca, NULL, PROTO_TRUST_NO_CHECK_TIME, &trust);
    proto_trust_destroy(&trust);
    if (rc != 0) {
        gateway_config_error("ca", ca,
                             rc == QC_EIO ? "cannot read the file" : "not a PEM CA bundle");
        return rc;
    }
    if (crl == NULL)
        return 0;
    unsigned flags =
        strcmp(ops_config_str(cfg, "crl_stale"), "accept") == 0 ? PROTO_TRUST_STALE_CRL_OK : 0;
    rc = proto_trust_new_ex(ca, crl, flags, &trust);
    proto_trust_destroy(&trust);
    if (rc != 0) {
        gateway_config_error("crl", crl,
                             rc == QC_EIO     ? "cannot read the file"
                             : rc == QC_ECERT ? "not a PEM CRL of the ca bundle"
                                              : qc_strerror(rc));
        return rc;
    }
    return 0;
}

/* Builds the gateway of cfg in svc->ctx; the key pair is wiped before returning. */
static int gateway_service_start(gateway_service_t *svc, const ops_config_t *cfg)
{
    int rc = gateway_service_precheck(cfg);
    if (rc != 0)
        return rc;
    proto_curve_keypair_t keys;
    const char *key_path = ops_config_str(cfg, "curve_key");
    if ((rc = proto_curve_keypair_load(key_path, &keys)) != 0) {
        gateway_config_error("curve_key", key_path, qc_strerror(rc));
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
        .max_connections = ops_config_int(cfg, "max_connections"),
    };
    rc = gateway_new(svc->ctx, &gc, &svc->gw);
    proto_curve_keypair_wipe(&keys);
    if (rc != 0) {
        /* The settings were checked above; what is left is binding listen (rpc.bind_failed
         * names the endpoint) and the sockets to ledger and audit. */
        ops_log(OPS_LOG_ERROR, "gateway.start_failed", "error", qc_strerror(rc), "listen",
                gc.listen, "ledger", gc.ledger, "audit", gc.audit != NULL ? gc.audit : "", NULL);
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
