/* gateway_main.c - qc-gateway: where devices connect; passes their loads on to the ledger.
 *
 * The start-up is the one every service shares (ops_service.h); the service is in
 * gateway_service.c, its loop in gateway_flow.c. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "gateway_conns.h"
#include "gateway_flow.h"
#include "gateway_service.h"
#include "ops_config.h"
#include "ops_log.h"
#include "ops_service.h"
#include "qc_error.h"

#define GATEWAY_RPC_TIMEOUT_MS_MAX INT32_MAX /* handed to the RPC client as an int */
#define GATEWAY_STR_(x) #x
#define GATEWAY_STR(x) GATEWAY_STR_(x) /* a limit's default, as config text */

/* crl_stale is a policy word: refuse or accept. */
static bool gateway_check_crl_stale(const char *value, char *why, size_t why_cap)
{
    if (strcmp(value, "refuse") == 0 || strcmp(value, "accept") == 0)
        return true;
    snprintf(why, why_cap, "use refuse or accept");
    return false;
}

static const ops_config_key_t gateway_keys[] = {
    {"listen", OPS_CONFIG_STRING, "tcp://127.0.0.1:7001", "device endpoint to bind",
     .check = ops_config_check_endpoint},
    {"curve_key", OPS_CONFIG_STRING, NULL, "the gateway's CURVE key pair file (qc-curve-keygen)"},
    {"ledger", OPS_CONFIG_STRING, NULL,
     "ledger endpoints: shard 0 first, shards separated by ';', instances by ','",
     .check = ops_config_check_endpoints},
    {"ledger_key", OPS_CONFIG_STRING, NULL, "the ledger's CURVE public key (Z85)",
     .check = ops_config_check_curve_key},
    {"ca", OPS_CONFIG_STRING, NULL, "device CA bundle (PEM)"},
    {"crl", OPS_CONFIG_STRING, NULL,
     "device CRL (PEM); empty for none; re-read when the file changes and on SIGHUP"},
    {"crl_stale", OPS_CONFIG_STRING, "refuse",
     "a CRL past its nextUpdate: refuse (every device, QC_ECRLSTALE) or accept (keep using it)",
     .check = gateway_check_crl_stale},
    {"rpc_timeout_ms", OPS_CONFIG_INT, "3000", "budget of one ledger call", .min = 1,
     .max = GATEWAY_RPC_TIMEOUT_MS_MAX},
    {"audit", OPS_CONFIG_STRING, NULL, "audit endpoints for security events (empty = log only)",
     .check = ops_config_check_endpoints},
    {"audit_key", OPS_CONFIG_STRING, NULL, "the audit service's CURVE public key (Z85)",
     .check = ops_config_check_curve_key},
    {"max_connections", OPS_CONFIG_INT, GATEWAY_STR(GATEWAY_CONNECTIONS_DEFAULT),
     "device connections served at once; calls on more are answered QC_EBUSY and those "
     "connections closed (needs this many descriptors plus 256)",
     .min = 1, .max = GATEWAY_CONNECTIONS_MAX},
};

static const ops_service_spec_t gateway_spec = {
    .program = "qc-gateway",
    .service = "gateway",
    .usage = "[--config FILE] [--key value ...]",
    .keys = gateway_keys,
    .key_count = sizeof gateway_keys / sizeof gateway_keys[0],
};

int main(int argc, char **argv)
{
    ops_service_t *ops = NULL;
    int rc = ops_service_start(&gateway_spec, argc, argv, &ops);
    if (rc != 0)
        return ops_service_start_status(rc);
    gateway_service_t *svc = NULL;
    rc = gateway_service_new(ops_service_config(ops), &svc);
    if (rc == 0) {
        ops_service_ready(ops, gateway_service_healthy, svc);
        rc = gateway_service_run(svc);
        ops_log(OPS_LOG_INFO, "gateway.stopped", "result", qc_strerror(rc), NULL);
    }
    ops_service_stopping(ops);
    gateway_service_destroy(&svc);
    ops_service_destroy(&ops);
    return rc == 0 ? OPS_SERVICE_EXIT_OK : OPS_SERVICE_EXIT_FAILED;
}
