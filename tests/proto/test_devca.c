/* test_devca.c - ops/devca end to end: its certificates pass (and fail) proto_cert_verify. */
#define _XOPEN_SOURCE 700
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <ftw.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "proto_cert.h"
#include "proto_envelope.h"
#include "qc_error.h"

#define PATH_LEN 1024
#define CMD_LEN 4096
#define FILE_MAX 65536
#define DAY_S (24L * 3600L)
#define NFTW_FDS 16

static char dir[PATH_LEN / 4];
static char devca[PATH_LEN];

/* Runs ops/devca with args (already shell-quoted) and returns its exit status. */
static int run_devca(const char *args)
{
    char cmd[CMD_LEN];
    int n = snprintf(cmd, sizeof(cmd), "'%s' %s >'%s/out.log' 2>&1", devca, args, dir);
    assert_true(n > 0 && (size_t)n < sizeof(cmd));
    int status = system(cmd);
    assert_true(status != -1);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static size_t read_file(const char *path, uint8_t *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    size_t n = fread(buf, 1, cap, f);
    assert_true(n < cap);
    fclose(f);
    return n;
}

/* Loads a PEM certificate file as DER (malloc'd). */
static size_t pem_cert_der(const char *path, uint8_t **der)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    X509 *c = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(c);
    *der = NULL;
    int n = i2d_X509(c, der);
    assert_true(n > 0);
    X509_free(c);
    return (size_t)n;
}

static void write_csr(const char *path, EVP_PKEY *key, const char *cn)
{
    X509_REQ *req = X509_REQ_new();
    assert_non_null(req);
    X509_NAME *name = X509_REQ_get_subject_name(req);
    assert_int_equal(X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                                                (const unsigned char *)"ignored", -1, -1, 0),
                     1);
    assert_int_equal(
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0),
        1);
    assert_int_equal(X509_REQ_set_pubkey(req, key), 1);
    assert_true(X509_REQ_sign(req, key, EVP_sha256()) > 0);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_X509_REQ(f, req), 1);
    assert_int_equal(fclose(f), 0);
    X509_REQ_free(req);
}

static int rm_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb;
    (void)type;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    (void)state;
    const char *src = getenv("QC_SOURCE_DIR");
    if (src == NULL)
        src = QC_SOURCE_DIR_DEFAULT;
    snprintf(devca, sizeof(devca), "%s/ops/devca", src);
    snprintf(dir, sizeof(dir), "/tmp/qc-test-devca-XXXXXX");
    return mkdtemp(dir) == NULL ? -1 : 0;
}

static int teardown(void **state)
{
    (void)state;
    return nftw(dir, rm_entry, NFTW_FDS, FTW_DEPTH | FTW_PHYS);
}

static void test_devca_end_to_end(void **state)
{
    (void)state;
    char args[CMD_LEN], path[PATH_LEN], ca_pem[PATH_LEN], crl_pem[PATH_LEN];
    snprintf(ca_pem, sizeof(ca_pem), "%s/ca/ca.pem", dir);
    snprintf(crl_pem, sizeof(crl_pem), "%s/ca/crl.pem", dir);

    assert_int_equal(run_devca("--help"), 0);
    assert_int_not_equal(run_devca("bogus"), 0);
    snprintf(args, sizeof(args), "issue '%s/ca' '%s/none.csr' '%s/x.pem'", dir, dir, dir);
    assert_int_not_equal(run_devca(args), 0); /* no CA yet */

    snprintf(args, sizeof(args), "init '%s/ca'", dir);
    assert_int_equal(run_devca(args), 0);
    static uint8_t before[FILE_MAX], after[FILE_MAX];
    size_t before_len = read_file(ca_pem, before, sizeof(before));
    assert_int_equal(run_devca(args), 0); /* idempotent: the CA is not replaced */
    size_t after_len = read_file(ca_pem, after, sizeof(after));
    assert_int_equal(before_len, after_len);
    assert_memory_equal(before, after, before_len);

    /* A device CSR made with the C API, issued by devca, verifies as that device. */
    EVP_PKEY *dev = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    assert_non_null(dev);
    snprintf(path, sizeof(path), "%s/dev.csr", dir);
    write_csr(path, dev, "QC-DEV-0100");
    snprintf(args, sizeof(args), "issue '%s/ca' '%s/dev.csr' '%s/dev.pem'", dir, dir, dir);
    assert_int_equal(run_devca(args), 0);
    snprintf(args, sizeof(args), "issue '%s/ca' '%s/dev.csr' '%s/short.pem' --days 1", dir, dir,
             dir);
    assert_int_equal(run_devca(args), 0);

    proto_trust_t *trust = NULL;
    assert_int_equal(proto_trust_new(ca_pem, crl_pem, &trust), 0);
    uint8_t *der = NULL;
    snprintf(path, sizeof(path), "%s/dev.pem", dir);
    size_t der_len = pem_cert_der(path, &der);
    char id[PROTO_DEVICE_ID_MAX + 1];
    EVP_PKEY *pub = NULL;
    time_t now = time(NULL);
    assert_int_equal(proto_cert_verify(trust, der, der_len, now, id, &pub), 0);
    assert_string_equal(id, "QC-DEV-0100");
    uint8_t want[PROTO_KEY_ID_SIZE], got[PROTO_KEY_ID_SIZE];
    assert_int_equal(proto_key_id(dev, want), 0);
    assert_int_equal(proto_key_id(pub, got), 0);
    assert_memory_equal(want, got, PROTO_KEY_ID_SIZE);
    EVP_PKEY_free(pub);

    uint8_t *short_der = NULL;
    snprintf(path, sizeof(path), "%s/short.pem", dir);
    size_t short_len = pem_cert_der(path, &short_der);
    assert_int_equal(proto_cert_verify(trust, short_der, short_len, now, id, NULL), 0);
    assert_int_equal(proto_cert_verify(trust, short_der, short_len, now + 2 * DAY_S, id, NULL),
                     QC_ECERTEXPIRED);
    OPENSSL_free(short_der);
    proto_trust_destroy(&trust);

    /* Revoked: the regenerated CRL refuses it. */
    snprintf(args, sizeof(args), "revoke '%s/ca' '%s/dev.pem'", dir, dir);
    assert_int_equal(run_devca(args), 0);
    assert_int_equal(proto_trust_new(ca_pem, crl_pem, &trust), 0);
    /* The CRL's lastUpdate is the second the revoke ran, which on a loaded machine can be
     * after `now`; a CRL is not valid before its lastUpdate, so verify at the time it is now. */
    now = time(NULL);
    assert_int_equal(proto_cert_verify(trust, der, der_len, now, id, NULL), QC_ECERTREVOKED);
    OPENSSL_free(der);

    /* A P-384 request is refused by devca. */
    EVP_PKEY *p384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    assert_non_null(p384);
    snprintf(path, sizeof(path), "%s/p384.csr", dir);
    write_csr(path, p384, "QC-DEV-0101");
    snprintf(args, sizeof(args), "issue '%s/ca' '%s/p384.csr' '%s/p384.pem'", dir, dir, dir);
    assert_int_not_equal(run_devca(args), 0);
    snprintf(path, sizeof(path), "%s/p384.pem", dir);
    assert_int_not_equal(access(path, F_OK), 0);
    EVP_PKEY_free(p384);

    /* A bank signing key: its key signs, its certificate verifies and carries the same key. */
    snprintf(args, sizeof(args), "server '%s/ca' signer-1 '%s/s.key' '%s/s.pem'", dir, dir, dir);
    assert_int_equal(run_devca(args), 0);
    assert_int_equal(run_devca(args), 0); /* already there: left alone */
    EVP_PKEY *sk = NULL, *sc = NULL;
    snprintf(path, sizeof(path), "%s/s.key", dir);
    assert_int_equal(proto_key_load_pem(path, &sk), 0);
    snprintf(path, sizeof(path), "%s/s.pem", dir);
    assert_int_equal(proto_key_load_pem(path, &sc), 0);
    uint8_t *env = NULL;
    size_t env_len = 0;
    assert_int_equal(proto_envelope_sign(PROTO_TYPE_LOAD_ALLOW, (const uint8_t *)"allow", 5, sk, 1,
                                         NULL, 0, &env, &env_len),
                     0);
    proto_envelope_t *e = NULL;
    assert_int_equal(proto_envelope_open(env, env_len, &e), 0);
    assert_int_equal(proto_envelope_verify(e, PROTO_TYPE_LOAD_ALLOW, sc), 0);
    proto_envelope_destroy(&e);
    free(env);
    der_len = pem_cert_der(path, &der);
    assert_int_equal(proto_cert_verify(trust, der, der_len, now, id, NULL), 0);
    assert_string_equal(id, "signer-1");
    OPENSSL_free(der);
    EVP_PKEY_free(sk);
    EVP_PKEY_free(sc);
    EVP_PKEY_free(dev);
    proto_trust_destroy(&trust);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_devca_end_to_end, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
