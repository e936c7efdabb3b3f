/* gateway_main.c - qc-gateway: where devices connect; orchestrates loads across signer and ledger.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "gateway_flow.h"
#include "ops_config.h"
#include "ops_log.h"
#include "ops_metrics.h"
#include "ops_signal.h"
#include "qc_error.h"

static const ops_config_key_t gateway_keys[] = {
    {"listen", OPS_CONFIG_STRING, "tcp://127.0.0.1:7001", "device endpoint to bind"},
    {"curve_key", OPS_CONFIG_STRING, NULL, "the gateway's CURVE key pair file (qc-curve-keygen)"},
    {"signer", OPS_CONFIG_STRING, NULL, "signer endpoints, comma-separated"},
    {"signer_file", OPS_CONFIG_STRING, NULL, "file of signer endpoints, re-read on SIGHUP"},
    {"signer_key", OPS_CONFIG_STRING, NULL, "the signer's CURVE public key (Z85)"},
    {"ledger", OPS_CONFIG_STRING, NULL,
     "ledger endpoints: shard 0 first, shards separated by ';', instances by ','"},
    {"ledger_key", OPS_CONFIG_STRING, NULL, "the ledger's CURVE public key (Z85)"},
    {"ca", OPS_CONFIG_STRING, NULL, "device CA bundle (PEM)"},
    {"crl", OPS_CONFIG_STRING, NULL,
     "device CRL (PEM); empty for none; re-read when the file changes and on SIGHUP"},
    {"crl_stale", OPS_CONFIG_STRING, "refuse",
     "a CRL past its nextUpdate: refuse (every device, QC_ECRLSTALE) or accept (keep using it)"},
    {"deadline_ms", OPS_CONFIG_INT, "30000", "time a device has to report after its allow"},
    {"rpc_timeout_ms", OPS_CONFIG_INT, "3000", "budget of one signer or ledger call"},
    {"audit", OPS_CONFIG_STRING, NULL, "audit endpoints for security events (empty = log only)"},
    {"audit_key", OPS_CONFIG_STRING, NULL, "the audit service's CURVE public key (Z85)"},
    {"http_port", OPS_CONFIG_INT, "0", "port of /metrics and /healthz (0 = off)"},
    {"instance", OPS_CONFIG_STRING, "0", "instance name in logs"},
    {"log_level", OPS_CONFIG_STRING, "info", "debug, info, warn or error"},
};
#define GATEWAY_KEY_COUNT (sizeof gateway_keys / sizeof gateway_keys[0])
#define GATEWAY_HTTP_PORT_MAX 65535

static const char *gateway_nonempty(const char *s)
{
    return s != NULL && s[0] != '\0' ? s : NULL;
}

int main(int argc, char **argv)
{
    ops_config_t *cfg = NULL;
    char err[OPS_CONFIG_ERROR_MAX];
    int rc = ops_config_load("qc-gateway", "[--config FILE] [--key value ...]", gateway_keys,
                             GATEWAY_KEY_COUNT, argc, argv, &cfg, err, sizeof err);
    if (rc == 1)
        return 0;
    if (rc != 0) {
        fprintf(stderr, "qc-gateway: %s\n", err);
        return 2;
    }
    int level = ops_log_level_parse(ops_config_str(cfg, "log_level"));
    ops_log_init("gateway", ops_config_str(cfg, "instance"),
                 level < 0 ? OPS_LOG_INFO : (ops_log_level_t)level);
    ops_signal_install();

    int exit_code = 1;
    void *ctx = zmq_ctx_new();
    gateway_t *gw = NULL;
    ops_http_t *http = NULL;
    proto_curve_keypair_t keys;
    const char *key_path = ops_config_str(cfg, "curve_key");
    int64_t port = ops_config_int(cfg, "http_port");
    if (key_path == NULL || port < 0 || port > GATEWAY_HTTP_PORT_MAX) {
        ops_log(OPS_LOG_ERROR, "gateway.config", "error", "curve_key is required", NULL);
        goto out;
    }
    const char *crl_stale = ops_config_str(cfg, "crl_stale");
    if (strcmp(crl_stale, "refuse") != 0 && strcmp(crl_stale, "accept") != 0) {
        ops_log(OPS_LOG_ERROR, "gateway.config", "error", "crl_stale is refuse or accept",
                "crl_stale", crl_stale, NULL);
        goto out;
    }
    if ((rc = proto_curve_keypair_load(key_path, &keys)) != 0) {
        ops_log(OPS_LOG_ERROR, "gateway.config", "error", qc_strerror(rc), "curve_key", key_path,
                NULL);
        goto out;
    }
    char source[OPS_CONFIG_VALUE_MAX];
    snprintf(source, sizeof source, "gateway-%s", ops_config_str(cfg, "instance"));
    gateway_config_t gc = {
        .listen = ops_config_str(cfg, "listen"),
        .keys = &keys,
        .signer = gateway_nonempty(ops_config_str(cfg, "signer")),
        .signer_file = gateway_nonempty(ops_config_str(cfg, "signer_file")),
        .signer_key = ops_config_str(cfg, "signer_key"),
        .ledger = ops_config_str(cfg, "ledger"),
        .ledger_key = ops_config_str(cfg, "ledger_key"),
        .ca_path = ops_config_str(cfg, "ca"),
        .crl_path = gateway_nonempty(ops_config_str(cfg, "crl")),
        .crl_stale_ok = strcmp(crl_stale, "accept") == 0,
        .deadline_ms = ops_config_int(cfg, "deadline_ms"),
        .rpc_timeout_ms = ops_config_int(cfg, "rpc_timeout_ms"),
        .audit = gateway_nonempty(ops_config_str(cfg, "audit")),
        .audit_key = gateway_nonempty(ops_config_str(cfg, "audit_key")),
        .source = source,
    };
    rc = gateway_new(ctx, &gc, &gw);
    proto_curve_keypair_wipe(&keys);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "gateway.start_failed", "error", qc_strerror(rc), "hint",
                "check listen, signer, signer_key, ledger, ledger_key, ca, crl, deadline_ms", NULL);
        goto out;
    }
    if ((rc = ops_http_start((uint16_t)port, NULL, NULL, &http)) != 0) {
        ops_log(OPS_LOG_ERROR, "gateway.http_failed", "error", qc_strerror(rc), NULL);
        goto out;
    }
    ops_log(OPS_LOG_INFO, "gateway.started", "listen", gc.listen, NULL);
    rc = gateway_run(gw);
    ops_log(OPS_LOG_INFO, "gateway.stopped", "result", qc_strerror(rc), NULL);
    exit_code = rc == 0 ? 0 : 1;
out:
    ops_http_stop(&http);
    gateway_destroy(&gw);
    zmq_ctx_term(ctx);
    ops_config_destroy(&cfg);
    return exit_code;
}
