/* signer_main.c - qc-signer: the bank's signing service, and `qc-signer keygen` to make its keys.
 *
 * The start-up is the one every service shares (ops_service.h); the loop is in signer_service.c,
 * the subcommand in signer_keygen.c. */
#include <string.h>

#include "ops_config.h"
#include "ops_log.h"
#include "ops_service.h"
#include "qc_error.h"
#include "signer_keygen.h"
#include "signer_pool.h"
#include "signer_service.h"
#include "signer_token.h"

#define SIGNER_QUEUE_DEFAULT "1024" /* jobs waiting for a worker */

static const ops_config_key_t signer_keys[] = {
    {"listen", OPS_CONFIG_STRING, "tcp://127.0.0.1:7500", "endpoint the ROUTER socket binds",
     .check = ops_config_check_endpoint},
    {"curve_key", OPS_CONFIG_STRING, NULL, "this service's CURVE key pair file"},
    {"allow", OPS_CONFIG_STRING, NULL, "file of client CURVE public keys allowed to call"},
    {"ledger_keys", OPS_CONFIG_STRING, NULL,
     "file of ledger keys: the only callers allows and outcomes are signed for (SIGHUP)"},
    {"audit_keys", OPS_CONFIG_STRING, NULL,
     "file of audit keys: the only callers checkpoints are signed for (SIGHUP)"},
    {"audit", OPS_CONFIG_STRING, NULL, "audit endpoints: every signature is reported there",
     .check = ops_config_check_endpoints},
    {"audit_key", OPS_CONFIG_STRING, NULL, "the audit service's CURVE public key (Z85)",
     .check = ops_config_check_curve_key},
    {"module", OPS_CONFIG_STRING, SIGNER_MODULE_DEFAULT, "PKCS#11 module to load"},
    {"token_label", OPS_CONFIG_STRING, "quancun", "label of the token holding the keys"},
    {"pin_file", OPS_CONFIG_STRING, NULL, "file holding the user PIN (else $QC_SIGNER_PIN)"},
    {"workers", OPS_CONFIG_INT, "0", "signing threads, one session each (0 = one per core)",
     .min = 0, .max = SIGNER_WORKERS_MAX},
    {"queue_max", OPS_CONFIG_INT, SIGNER_QUEUE_DEFAULT, "sign jobs waiting before QC_EBUSY",
     .min = 1, .max = SIGNER_QUEUE_MAX},
    {"allow_key_version", OPS_CONFIG_INT, "1", "version of the allow-signing key", .min = 1,
     .max = SIGNER_KEY_VERSION_MAX},
    {"outcome_key_version", OPS_CONFIG_INT, "1", "version of the outcome-signing key", .min = 1,
     .max = SIGNER_KEY_VERSION_MAX},
    {"checkpoint_key_version", OPS_CONFIG_INT, "1", "version of the audit-checkpoint key", .min = 1,
     .max = SIGNER_KEY_VERSION_MAX},
};

#define SIGNER_USAGE                                                                               \
    "[--config FILE] [options]   |   keygen --help\n"                                              \
    "Signs LoadAllow, LoadOutcome and audit checkpoints with the bank's keys in a PKCS#11\n"       \
    "token (method \"sign\", proto/signer.proto)."

static const ops_service_spec_t signer_spec = {
    .program = "qc-signer",
    .service = "signer",
    .usage = SIGNER_USAGE,
    .keys = signer_keys,
    .key_count = sizeof signer_keys / sizeof signer_keys[0],
};

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "keygen") == 0)
        return signer_keygen_main(argc - 1, argv + 1);
    ops_service_t *ops = NULL;
    int rc = ops_service_start(&signer_spec, argc, argv, &ops);
    if (rc != 0)
        return ops_service_start_status(rc);
    signer_service_t *svc = NULL;
    rc = signer_service_new(ops_service_config(ops), &svc);
    if (rc == 0) {
        ops_service_ready(ops, signer_service_healthy, svc);
        rc = signer_service_run(svc);
    }
    ops_service_stopping(ops);
    if (rc != 0)
        ops_log(OPS_LOG_ERROR, "signer.failed", "error", qc_strerror(rc), NULL);
    else
        ops_log(OPS_LOG_INFO, "signer.stopped", NULL);
    signer_service_destroy(&svc);
    ops_service_destroy(&ops);
    return rc == 0 ? OPS_SERVICE_EXIT_OK : OPS_SERVICE_EXIT_FAILED;
}
