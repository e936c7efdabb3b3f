/* signer_keygen.c - `qc-signer keygen`: makes a key pair in the token and writes its public key,
 * a self-signed certificate and a CSR. */
#include "signer_keygen.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/pem.h>

#include "ops_config.h"
#include "ops_log.h"
#include "qc_error.h"
#include "signer_cert.h"
#include "signer_login.h"
#include "signer_token.h"

#define SIGNER_PATH_MAX 1024

static const ops_config_key_t signer_keygen_keys[] = {
    {"module", OPS_CONFIG_STRING, SIGNER_MODULE_DEFAULT, "PKCS#11 module to load"},
    {"token_label", OPS_CONFIG_STRING, "quancun", "label of the token holding the keys"},
    {"pin_file", OPS_CONFIG_STRING, NULL, "file holding the user PIN (else $QC_SIGNER_PIN)"},
    {"label", OPS_CONFIG_STRING, NULL,
     "key name: allow-signing, outcome-signing or audit-checkpoint"},
    {"version", OPS_CONFIG_INT, "1", "key version, stored as CKA_ID \"v<version>\"", .min = 1,
     .max = SIGNER_KEY_VERSION_MAX},
    {"out", OPS_CONFIG_STRING, NULL, "directory for <label>-v<version>.{pub,cert,csr}.pem"},
    {"days", OPS_CONFIG_INT, "3650", "validity of the self-signed certificate", .min = 1,
     .max = SIGNER_CERT_DAYS_MAX},
    {"common_name", OPS_CONFIG_STRING, NULL, "certificate CN (default \"quancun-<label>-v<N>\")"},
    {"log_level", OPS_CONFIG_STRING, "info", "debug, info, warn or error",
     .check = ops_log_level_check},
};

#define SIGNER_KEYGEN_USAGE                                                                        \
    "keygen --label NAME --version N --out DIR [--pin-file F] [options]\n"                         \
    "Generates a P-256 key pair inside the token (never exported) and writes\n"                    \
    "DIR/NAME-vN.pub.pem (public key), DIR/NAME-vN.cert.pem (self-signed by the token key,\n"      \
    "what devices are provisioned with) and DIR/NAME-vN.csr.pem (for a CA to sign).\n"             \
    "Refuses an existing key of the same name and version, and existing output files."

enum { SIGNER_OUT_PUB, SIGNER_OUT_CERT, SIGNER_OUT_CSR, SIGNER_OUT_COUNT };
static const char *const signer_out_suffix[SIGNER_OUT_COUNT] = {".pub.pem", ".cert.pem",
                                                                ".csr.pem"};

/* Opens path for writing, refusing to replace a file. */
static FILE *signer_create(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return NULL;
    FILE *f = fdopen(fd, "w");
    if (f == NULL)
        close(fd);
    return f;
}

/* Writes the public key, the self-signed certificate and the CSR of key. */
static int signer_keygen_write(signer_token_t *tok, const signer_key_t *key, const char *cn,
                               int days, char paths[SIGNER_OUT_COUNT][SIGNER_PATH_MAX])
{
    signer_session_t *sess = NULL;
    X509 *cert = NULL;
    X509_REQ *req = NULL;
    FILE *files[SIGNER_OUT_COUNT] = {NULL};
    int rc = signer_session_open(tok, &sess);
    if (rc == 0)
        rc = signer_cert_self_signed(sess, key, cn, days, &cert);
    if (rc == 0)
        rc = signer_cert_request(sess, key, cn, &req);
    for (int i = 0; i < SIGNER_OUT_COUNT && rc == 0; i++) {
        files[i] = signer_create(paths[i]);
        if (files[i] == NULL) {
            ops_log(OPS_LOG_ERROR, "keygen.write_failed", "path", paths[i], "error",
                    strerror(errno), NULL);
            rc = QC_EIO;
        }
    }
    if (rc == 0 && (PEM_write_PUBKEY(files[SIGNER_OUT_PUB], signer_key_public(key)) != 1 ||
                    PEM_write_X509(files[SIGNER_OUT_CERT], cert) != 1 ||
                    PEM_write_X509_REQ(files[SIGNER_OUT_CSR], req) != 1))
        rc = QC_EIO;
    for (int i = 0; i < SIGNER_OUT_COUNT; i++) {
        if (files[i] != NULL && fclose(files[i]) != 0)
            rc = QC_EIO;
    }
    X509_REQ_free(req);
    X509_free(cert);
    signer_session_destroy(&sess);
    return rc;
}

int signer_keygen_main(int argc, char **argv)
{
    char err[OPS_CONFIG_ERROR_MAX];
    ops_config_t *cfg = NULL;
    int rc = ops_config_load("qc-signer", SIGNER_KEYGEN_USAGE, signer_keygen_keys,
                             sizeof(signer_keygen_keys) / sizeof(signer_keygen_keys[0]), argc, argv,
                             &cfg, err, sizeof(err));
    if (rc == 1)
        return 0;
    if (rc != 0) {
        fprintf(stderr, "qc-signer keygen: %s\n", err);
        return 2;
    }
    ops_log_init("signer", "keygen",
                 (ops_log_level_t)ops_log_level_parse(ops_config_str(cfg, "log_level")));
    const char *label = ops_config_str(cfg, "label");
    const char *out_dir = ops_config_str(cfg, "out");
    int64_t version = ops_config_int(cfg, "version");
    int64_t days = ops_config_int(cfg, "days");
    assert(version >= 1);
    assert(version <= SIGNER_KEY_VERSION_MAX); /* the keys' bounds */
    assert(days >= 1);
    assert(days <= SIGNER_CERT_DAYS_MAX);
    if (label == NULL || out_dir == NULL) {
        fprintf(stderr, "qc-signer keygen: --label and --out are required\n");
        ops_config_destroy(&cfg);
        return 2;
    }
    char cn[SIGNER_CERT_CN_MAX + 1];
    const char *cn_cfg = ops_config_str(cfg, "common_name");
    snprintf(cn, sizeof(cn), "%s", cn_cfg != NULL ? cn_cfg : "");
    if (cn_cfg == NULL)
        snprintf(cn, sizeof(cn), "quancun-%.40s-v%" PRId64, label, version);

    /* Check the output side before the token: a key made but not exported is of no use. */
    struct stat st;
    if (stat(out_dir, &st) != 0 || !S_ISDIR(st.st_mode) || access(out_dir, W_OK) != 0) {
        ops_log(OPS_LOG_ERROR, "keygen.refused", "path", out_dir, "error",
                "not a writable directory", NULL);
        ops_config_destroy(&cfg);
        return 1;
    }
    char paths[SIGNER_OUT_COUNT][SIGNER_PATH_MAX];
    for (int i = 0; i < SIGNER_OUT_COUNT; i++) {
        int n = snprintf(paths[i], SIGNER_PATH_MAX, "%s/%s-v%" PRId64 "%s", out_dir, label, version,
                         signer_out_suffix[i]);
        if (n < 0 || n >= SIGNER_PATH_MAX || access(paths[i], F_OK) == 0) {
            ops_log(OPS_LOG_ERROR, "keygen.refused", "path", paths[i], "error",
                    n >= SIGNER_PATH_MAX ? "path too long" : "file exists", NULL);
            ops_config_destroy(&cfg);
            return 1;
        }
    }

    signer_token_t *tok = NULL;
    signer_key_t *key = NULL;
    rc = signer_login_open(cfg, &tok);
    if (rc == 0) {
        rc = signer_token_generate_key(tok, label, (uint32_t)version, &key);
        if (rc != 0)
            ops_log(OPS_LOG_ERROR, "keygen.failed", "label", label, "error", qc_strerror(rc), NULL);
    }
    if (rc == 0)
        rc = signer_keygen_write(tok, key, cn, (int)days, paths);
    if (rc == 0) {
        char key_id[2 * PROTO_KEY_ID_SIZE + 1];
        ops_log(OPS_LOG_INFO, "keygen.done", "label", label, "version",
                ops_config_str(cfg, "version"), "key_id",
                ops_hex(signer_key_id(key), PROTO_KEY_ID_SIZE, key_id), "cert",
                paths[SIGNER_OUT_CERT], NULL);
    }
    signer_key_destroy(&key);
    signer_token_destroy(&tok);
    ops_config_destroy(&cfg);
    return rc == 0 ? 0 : 1;
}
