/* signer_main.c - qc-signer: the bank's signing service, and `qc-signer keygen` to make its keys.
 *
 * The loop is in signer_service.c, the subcommand in signer_keygen.c. */
#include <stdio.h>
#include <string.h>

#include "ops_config.h"
#include "ops_log.h"
#include "ops_signal.h"
#include "qc_error.h"
#include "signer_keygen.h"
#include "signer_service.h"
#include "signer_token.h"

#define SIGNER_QUEUE_DEFAULT "1024" /* jobs waiting for a worker */

static const ops_config_key_t signer_keys[] = {
    {"listen", OPS_CONFIG_STRING, "tcp://127.0.0.1:7500", "endpoint the ROUTER socket binds"},
    {"curve_key", OPS_CONFIG_STRING, NULL, "this service's CURVE key pair file"},
    {"allow", OPS_CONFIG_STRING, NULL, "file of client CURVE public keys allowed to call"},
    {"audit", OPS_CONFIG_STRING, NULL, "audit endpoints: every signature is reported there"},
    {"audit_key", OPS_CONFIG_STRING, NULL, "the audit service's CURVE public key (Z85)"},
    {"http_port", OPS_CONFIG_INT, "0", "port of /metrics and /healthz on 127.0.0.1 (0 = off)"},
    {"module", OPS_CONFIG_STRING, SIGNER_MODULE_DEFAULT, "PKCS#11 module to load"},
    {"token_label", OPS_CONFIG_STRING, "quancun", "label of the token holding the keys"},
    {"pin_file", OPS_CONFIG_STRING, NULL, "file holding the user PIN (else $QC_SIGNER_PIN)"},
    {"workers", OPS_CONFIG_INT, "0", "signing threads, one session each (0 = one per core)"},
    {"queue_max", OPS_CONFIG_INT, SIGNER_QUEUE_DEFAULT, "sign jobs waiting before QC_EBUSY"},
    {"allow_key_version", OPS_CONFIG_INT, "1", "version of the allow-signing key"},
    {"outcome_key_version", OPS_CONFIG_INT, "1", "version of the outcome-signing key"},
    {"checkpoint_key_version", OPS_CONFIG_INT, "1", "version of the audit-checkpoint key"},
    {"instance", OPS_CONFIG_STRING, "0", "instance name in logs"},
    {"log_level", OPS_CONFIG_STRING, "info", "debug, info, warn or error"},
};

#define SIGNER_USAGE                                                                               \
    "[--config FILE] [options]   |   keygen --help\n"                                              \
    "Signs LoadAllow, LoadOutcome and audit checkpoints with the bank's keys in a PKCS#11\n"       \
    "token (method \"sign\", proto/signer.proto)."

static int signer_log_setup(const ops_config_t *cfg, const char *instance)
{
    int level = ops_log_level_parse(ops_config_str(cfg, "log_level"));
    if (level < 0) {
        fprintf(stderr, "qc-signer: bad log_level (debug, info, warn, error)\n");
        return QC_ECONFIG;
    }
    ops_log_init("signer", instance, (ops_log_level_t)level);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "keygen") == 0)
        return signer_keygen_main(argc - 1, argv + 1);

    char err[OPS_CONFIG_ERROR_MAX];
    ops_config_t *cfg = NULL;
    int rc = ops_config_load("qc-signer", SIGNER_USAGE, signer_keys,
                             sizeof(signer_keys) / sizeof(signer_keys[0]), argc, argv, &cfg, err,
                             sizeof(err));
    if (rc == 1)
        return 0;
    if (rc != 0) {
        fprintf(stderr, "qc-signer: %s\n", err);
        return 2;
    }
    if (ops_config_argc(cfg) != 0) {
        fprintf(stderr, "qc-signer: unexpected argument %s\n", ops_config_arg(cfg, 0));
        ops_config_destroy(&cfg);
        return 2;
    }
    if (signer_log_setup(cfg, ops_config_str(cfg, "instance")) != 0) {
        ops_config_destroy(&cfg);
        return 2;
    }
    ops_signal_install();
    signer_service_t *svc = NULL;
    rc = signer_service_new(cfg, &svc);
    if (rc == 0)
        rc = signer_service_run(svc);
    if (rc != 0)
        ops_log(OPS_LOG_ERROR, "signer.failed", "error", qc_strerror(rc), NULL);
    else
        ops_log(OPS_LOG_INFO, "signer.stopped", NULL);
    signer_service_destroy(&svc);
    ops_config_destroy(&cfg);
    return rc == 0 ? 0 : 1;
}
