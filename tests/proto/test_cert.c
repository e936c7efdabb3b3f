/* test_cert.c - device-certificate verification: chains, validity, CRLs, usage, ids, PEM keys. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "proto_cert.h"
#include "proto_envelope.h"
#include "qc_error.h"

#define DAY_S (24L * 3600L)
#define PATH_MAX_LEN 512
#define KU_DEVICE "critical,digitalSignature"
#define KU_CA "critical,keyCertSign,cRLSign"

typedef struct fixture {
    char dir[PATH_MAX_LEN];
    char ca_path[PATH_MAX_LEN + 32];  /* the trusted CA, PEM */
    char crl_path[PATH_MAX_LEN + 32]; /* its CRL revoking serial REVOKED_SERIAL */
    time_t now;
    EVP_PKEY *ca_key;
    X509 *ca;
    EVP_PKEY *other_ca_key; /* an untrusted CA with the same name as the trusted one */
    X509 *other_ca;
    EVP_PKEY *dev_key;
} fixture_t;

#define REVOKED_SERIAL 666

static EVP_PKEY *new_key(const char *curve)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", curve);
    assert_non_null(k);
    return k;
}

static void add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    assert_non_null(ext);
    assert_int_equal(X509_add_ext(cert, ext, -1), 1);
    X509_EXTENSION_free(ext);
}

/* Makes a certificate for key named cn, valid from now+from_s to now+to_s, signed by
 * issuer/issuer_key (self-signed when issuer is NULL). ku may be NULL for no keyUsage. */
static X509 *make_cert(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key,
                       time_t now, long from_s, long to_s, int is_ca, const char *ku, long serial)
{
    X509 *c = X509_new();
    assert_non_null(c);
    assert_int_equal(X509_set_version(c, X509_VERSION_3), 1);
    assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(c), serial), 1);
    assert_non_null(X509_time_adj_ex(X509_getm_notBefore(c), 0, from_s, &now));
    assert_non_null(X509_time_adj_ex(X509_getm_notAfter(c), 0, to_s, &now));
    assert_int_equal(X509_set_pubkey(c, key), 1);
    X509_NAME *name = X509_get_subject_name(c);
    if (cn != NULL)
        assert_int_equal(X509_NAME_add_entry_by_txt(name, "CN", V_ASN1_UTF8STRING,
                                                    (const unsigned char *)cn, -1, -1, 0),
                         1);
    assert_int_equal(X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                                                (const unsigned char *)"quancun test", -1, -1, 0),
                     1);
    X509 *iss = issuer != NULL ? issuer : c;
    assert_int_equal(X509_set_issuer_name(c, X509_get_subject_name(iss)), 1);
    add_ext(c, iss, NID_basic_constraints, is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
    if (ku != NULL)
        add_ext(c, iss, NID_key_usage, ku);
    assert_true(X509_sign(c, issuer_key, EVP_sha256()) > 0);
    return c;
}

static size_t cert_der(X509 *c, uint8_t **der)
{
    *der = NULL;
    int n = i2d_X509(c, der);
    assert_true(n > 0);
    return (size_t)n;
}

static void write_pem_cert(const char *path, X509 *c)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_X509(f, c), 1);
    assert_int_equal(fclose(f), 0);
}

static void write_crl(const char *path, X509 *ca, EVP_PKEY *ca_key, time_t now, long serial)
{
    X509_CRL *crl = X509_CRL_new();
    assert_non_null(crl);
    assert_int_equal(X509_CRL_set_version(crl, 1), 1);
    assert_int_equal(X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca)), 1);
    ASN1_TIME *t = X509_time_adj_ex(NULL, 0, -DAY_S, &now);
    assert_int_equal(X509_CRL_set1_lastUpdate(crl, t), 1);
    ASN1_TIME_free(t);
    t = X509_time_adj_ex(NULL, 30, 0, &now);
    assert_int_equal(X509_CRL_set1_nextUpdate(crl, t), 1);
    ASN1_TIME_free(t);
    X509_REVOKED *rev = X509_REVOKED_new();
    assert_non_null(rev);
    ASN1_INTEGER *sn = ASN1_INTEGER_new();
    assert_int_equal(ASN1_INTEGER_set(sn, serial), 1);
    assert_int_equal(X509_REVOKED_set_serialNumber(rev, sn), 1);
    ASN1_INTEGER_free(sn);
    t = X509_time_adj_ex(NULL, 0, -3600, &now);
    assert_int_equal(X509_REVOKED_set_revocationDate(rev, t), 1);
    ASN1_TIME_free(t);
    assert_int_equal(X509_CRL_add0_revoked(crl, rev), 1);
    assert_int_equal(X509_CRL_sort(crl), 1);
    assert_true(X509_CRL_sign(crl, ca_key, EVP_sha256()) > 0);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_X509_CRL(f, crl), 1);
    assert_int_equal(fclose(f), 0);
    X509_CRL_free(crl);
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return -1;
    snprintf(f->dir, sizeof(f->dir), "/tmp/qc-test-cert-XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    snprintf(f->ca_path, sizeof(f->ca_path), "%s/ca.pem", f->dir);
    snprintf(f->crl_path, sizeof(f->crl_path), "%s/crl.pem", f->dir);
    f->now = time(NULL);
    f->ca_key = new_key("P-256");
    f->ca = make_cert("quancun test CA", f->ca_key, NULL, f->ca_key, f->now, -30 * DAY_S,
                      3650 * DAY_S, 1, KU_CA, 1);
    f->other_ca_key = new_key("P-256");
    f->other_ca = make_cert("quancun test CA", f->other_ca_key, NULL, f->other_ca_key, f->now,
                            -DAY_S, 3650 * DAY_S, 1, KU_CA, 1);
    f->dev_key = new_key("P-256");
    write_pem_cert(f->ca_path, f->ca);
    write_crl(f->crl_path, f->ca, f->ca_key, f->now, REVOKED_SERIAL);
    *state = f;
    return 0;
}

/* Removes the files a test may have written, then the directory. */
static int teardown(void **state)
{
    fixture_t *f = *state;
    static const char *const names[] = {"ca.pem",   "crl.pem", "garbage.pem",
                                        "priv.pem", "pub.pem", "cert.pem"};
    char path[PATH_MAX_LEN + 32];
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", f->dir, names[i]);
        unlink(path);
    }
    rmdir(f->dir);
    EVP_PKEY_free(f->ca_key);
    X509_free(f->ca);
    EVP_PKEY_free(f->other_ca_key);
    X509_free(f->other_ca);
    EVP_PKEY_free(f->dev_key);
    free(f);
    return 0;
}

/* Verifies cert against trust at time at; returns the code, and the device id when 0. */
static int verify_at(const proto_trust_t *trust, X509 *cert, time_t at, char *id)
{
    uint8_t *der = NULL;
    size_t len = cert_der(cert, &der);
    EVP_PKEY *pub = (EVP_PKEY *)1;
    int rc = proto_cert_verify(trust, der, len, at, id, &pub);
    if (rc == 0) {
        assert_non_null(pub);
        EVP_PKEY_free(pub);
    } else {
        assert_null(pub);
    }
    OPENSSL_free(der);
    return rc;
}

static X509 *device_cert(fixture_t *f, const char *cn, long from_s, long to_s, const char *ku,
                         long serial)
{
    return make_cert(cn, f->dev_key, f->ca, f->ca_key, f->now, from_s, to_s, 0, ku, serial);
}

static void test_valid_and_device_id(void **state)
{
    fixture_t *f = *state;
    proto_trust_t *trust = NULL;
    assert_int_equal(proto_trust_new(f->ca_path, f->crl_path, &trust), 0);
    X509 *c = device_cert(f, "QC-DEV-0001", -DAY_S, 365 * DAY_S, KU_DEVICE, 10);

    uint8_t *der = NULL;
    size_t len = cert_der(c, &der);
    char id[PROTO_DEVICE_ID_MAX + 1] = "";
    EVP_PKEY *pub = NULL;
    assert_int_equal(proto_cert_verify(trust, der, len, f->now, id, &pub), 0);
    assert_string_equal(id, "QC-DEV-0001");
    /* The returned key is the device's: same key id as the key that was certified. */
    uint8_t want[PROTO_KEY_ID_SIZE], got[PROTO_KEY_ID_SIZE];
    assert_int_equal(proto_key_id(f->dev_key, want), 0);
    assert_int_equal(proto_key_id(pub, got), 0);
    assert_memory_equal(want, got, PROTO_KEY_ID_SIZE);
    EVP_PKEY_free(pub);
    /* pub may be NULL when the caller only wants the id. */
    assert_int_equal(proto_cert_verify(trust, der, len, f->now, id, NULL), 0);

    /* The fingerprint is SHA-256 of the DER. */
    uint8_t fp[32], sha[32];
    assert_int_equal(proto_cert_fingerprint(der, len, fp), 0);
    assert_int_equal(proto_sha256(der, len, sha), 0);
    assert_memory_equal(fp, sha, 32);

    /* Trailing bytes after the certificate are refused, as are garbage and oversize. */
    uint8_t *longer = malloc(len + 1);
    assert_non_null(longer);
    memcpy(longer, der, len);
    longer[len] = 0;
    assert_int_equal(proto_cert_verify(trust, longer, len + 1, f->now, id, NULL), QC_EDECODE);
    free(longer);
    assert_int_equal(proto_cert_verify(trust, der, len - 1, f->now, id, NULL), QC_EDECODE);
    static const uint8_t garbage[] = {0x30, 0x03, 0x02, 0x01, 0x05};
    assert_int_equal(proto_cert_verify(trust, garbage, sizeof(garbage), f->now, id, NULL),
                     QC_EDECODE);
    uint8_t *big = calloc(1, PROTO_CERT_MAX + 1);
    assert_non_null(big);
    assert_int_equal(proto_cert_verify(trust, big, PROTO_CERT_MAX + 1, f->now, id, NULL),
                     QC_ETOOBIG);
    free(big);

    OPENSSL_free(der);
    X509_free(c);
    proto_trust_destroy(&trust);
    assert_null(trust);
    proto_trust_destroy(&trust);
}

static void test_validity_period(void **state)
{
    fixture_t *f = *state;
    proto_trust_t *trust = NULL;
    assert_int_equal(proto_trust_new(f->ca_path, NULL, &trust), 0);
    char id[PROTO_DEVICE_ID_MAX + 1];

    X509 *expired = device_cert(f, "QC-DEV-0002", -10 * DAY_S, -DAY_S, KU_DEVICE, 11);
    assert_int_equal(verify_at(trust, expired, f->now, id), QC_ECERTEXPIRED);
    /* The check uses the time given, not the clock: at an earlier time it was valid. */
    assert_int_equal(verify_at(trust, expired, f->now - 5 * DAY_S, id), 0);
    X509_free(expired);

    X509 *future = device_cert(f, "QC-DEV-0003", DAY_S, 365 * DAY_S, KU_DEVICE, 12);
    assert_int_equal(verify_at(trust, future, f->now, id), QC_ECERTNOTYET);
    assert_int_equal(verify_at(trust, future, f->now + 2 * DAY_S, id), 0);
    X509_free(future);

    X509 *valid = device_cert(f, "QC-DEV-0004", -DAY_S, 30 * DAY_S, KU_DEVICE, 13);
    assert_int_equal(verify_at(trust, valid, f->now + 31 * DAY_S, id), QC_ECERTEXPIRED);
    X509_free(valid);
    proto_trust_destroy(&trust);

    /* A trust store for evidence of the past ignores validity periods, and only them: the
     * chain must still hold. */
    assert_int_equal(proto_trust_new_ex(f->ca_path, NULL, PROTO_TRUST_NO_CHECK_TIME, &trust), 0);
    expired = device_cert(f, "QC-DEV-0002", -10 * DAY_S, -DAY_S, KU_DEVICE, 11);
    assert_int_equal(verify_at(trust, expired, f->now, id), 0);
    assert_string_equal(id, "QC-DEV-0002");
    X509_free(expired);
    X509 *impostor = make_cert("QC-DEV-0010", f->dev_key, f->other_ca, f->other_ca_key, f->now,
                               -10 * DAY_S, -DAY_S, 0, KU_DEVICE, 17);
    assert_int_equal(verify_at(trust, impostor, f->now, id), QC_ECERTCA);
    X509_free(impostor);
    proto_trust_destroy(&trust);
}

static void test_untrusted_issuer(void **state)
{
    fixture_t *f = *state;
    proto_trust_t *trust = NULL;
    assert_int_equal(proto_trust_new(f->ca_path, f->crl_path, &trust), 0);
    char id[PROTO_DEVICE_ID_MAX + 1];

    /* Same issuer name as the trusted CA, different key: the signature does not chain. */
    X509 *impostor = make_cert("QC-DEV-0005", f->dev_key, f->other_ca, f->other_ca_key, f->now,
                               -DAY_S, 365 * DAY_S, 0, KU_DEVICE, 14);
    assert_int_equal(verify_at(trust, impostor, f->now, id), QC_ECERTCA);
    X509_free(impostor);

    /* A CA with another name altogether. */
    EVP_PKEY *k = new_key("P-256");
    X509 *stranger = make_cert("stranger CA", k, NULL, k, f->now, -DAY_S, 365 * DAY_S, 1, KU_CA, 1);
    X509 *c = make_cert("QC-DEV-0006", f->dev_key, stranger, k, f->now, -DAY_S, 365 * DAY_S, 0,
                        KU_DEVICE, 15);
    assert_int_equal(verify_at(trust, c, f->now, id), QC_ECERTCA);
    /* A self-signed device certificate is not trusted either. */
    X509 *self = make_cert("QC-DEV-0007", f->dev_key, NULL, f->dev_key, f->now, -DAY_S, 365 * DAY_S,
                           0, KU_DEVICE, 16);
    assert_int_equal(verify_at(trust, self, f->now, id), QC_ECERTCA);
    X509_free(self);
    X509_free(c);
    X509_free(stranger);
    EVP_PKEY_free(k);
    proto_trust_destroy(&trust);
}

static void test_revoked(void **state)
{
    fixture_t *f = *state;
    proto_trust_t *with_crl = NULL, *without_crl = NULL;
    assert_int_equal(proto_trust_new(f->ca_path, f->crl_path, &with_crl), 0);
    assert_int_equal(proto_trust_new(f->ca_path, NULL, &without_crl), 0);
    char id[PROTO_DEVICE_ID_MAX + 1];

    X509 *revoked = device_cert(f, "QC-DEV-0008", -DAY_S, 365 * DAY_S, KU_DEVICE, REVOKED_SERIAL);
    assert_int_equal(verify_at(with_crl, revoked, f->now, id), QC_ECERTREVOKED);
    assert_int_equal(verify_at(without_crl, revoked, f->now, id), 0);
    X509 *fine = device_cert(f, "QC-DEV-0009", -DAY_S, 365 * DAY_S, KU_DEVICE, REVOKED_SERIAL + 1);
    assert_int_equal(verify_at(with_crl, fine, f->now, id), 0);

    /* Past the CRL's nextUpdate (30 days on): refused by default, fail closed, whatever the
     * certificate; with PROTO_TRUST_STALE_CRL_OK the stale CRL's revocations still count. */
    time_t stale = f->now + 31 * DAY_S;
    assert_int_equal(verify_at(with_crl, fine, stale, id), QC_ECRLSTALE);
    assert_int_equal(verify_at(with_crl, revoked, stale, id), QC_ECRLSTALE);
    assert_int_equal(verify_at(without_crl, fine, stale, id), 0);
    proto_trust_t *stale_ok = NULL;
    assert_int_equal(
        proto_trust_new_ex(f->ca_path, f->crl_path, PROTO_TRUST_STALE_CRL_OK, &stale_ok), 0);
    assert_int_equal(verify_at(stale_ok, fine, stale, id), 0);
    assert_int_equal(verify_at(stale_ok, revoked, stale, id), QC_ECERTREVOKED);
    assert_int_equal(verify_at(stale_ok, fine, f->now, id), 0);
    proto_trust_destroy(&stale_ok);
    X509_free(revoked);
    X509_free(fine);
    proto_trust_destroy(&with_crl);
    proto_trust_destroy(&without_crl);
}

static void test_key_usage_key_type_and_name(void **state)
{
    fixture_t *f = *state;
    proto_trust_t *trust = NULL;
    assert_int_equal(proto_trust_new(f->ca_path, NULL, &trust), 0);
    char id[PROTO_DEVICE_ID_MAX + 1];

    X509 *c = device_cert(f, "QC-DEV-0010", -DAY_S, 365 * DAY_S, "critical,keyAgreement", 20);
    assert_int_equal(verify_at(trust, c, f->now, id), QC_ECERTUSAGE);
    X509_free(c);
    c = device_cert(f, "QC-DEV-0011", -DAY_S, 365 * DAY_S, NULL, 21);
    assert_int_equal(verify_at(trust, c, f->now, id), QC_ECERTUSAGE);
    X509_free(c);
    c = device_cert(f, "QC-DEV-0012", -DAY_S, 365 * DAY_S,
                    "critical,digitalSignature,nonRepudiation", 22);
    assert_int_equal(verify_at(trust, c, f->now, id), 0);
    assert_string_equal(id, "QC-DEV-0012");
    X509_free(c);

    /* Only P-256 device keys. */
    EVP_PKEY *p384 = new_key("P-384");
    c = make_cert("QC-DEV-0013", p384, f->ca, f->ca_key, f->now, -DAY_S, 365 * DAY_S, 0, KU_DEVICE,
                  23);
    assert_int_equal(verify_at(trust, c, f->now, id), QC_ECERT);
    X509_free(c);
    EVP_PKEY_free(p384);

    /* Device ids: present, at most PROTO_DEVICE_ID_MAX, visible ASCII. */
    char cn[PROTO_DEVICE_ID_MAX + 2];
    memset(cn, 'D', PROTO_DEVICE_ID_MAX);
    cn[PROTO_DEVICE_ID_MAX] = '\0';
    c = device_cert(f, cn, -DAY_S, 365 * DAY_S, KU_DEVICE, 24);
    assert_int_equal(verify_at(trust, c, f->now, id), 0);
    assert_string_equal(id, cn);
    X509_free(c);
    cn[PROTO_DEVICE_ID_MAX] = 'D';
    cn[PROTO_DEVICE_ID_MAX + 1] = '\0';
    c = device_cert(f, cn, -DAY_S, 365 * DAY_S, KU_DEVICE, 25);
    assert_int_equal(verify_at(trust, c, f->now, id), QC_ECERT);
    X509_free(c);
    c = device_cert(f, "QC DEV", -DAY_S, 365 * DAY_S, KU_DEVICE, 26);
    assert_int_equal(verify_at(trust, c, f->now, id), QC_ECERT);
    X509_free(c);
    c = device_cert(f, NULL, -DAY_S, 365 * DAY_S, KU_DEVICE, 27);
    assert_int_equal(verify_at(trust, c, f->now, id), QC_ECERT);
    X509_free(c);
    proto_trust_destroy(&trust);
}

static void write_text(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    assert_true(fputs(text, fp) >= 0);
    assert_int_equal(fclose(fp), 0);
}

static void test_trust_files(void **state)
{
    fixture_t *f = *state;
    proto_trust_t *trust = (proto_trust_t *)1;
    char path[PATH_MAX_LEN + 32];
    snprintf(path, sizeof(path), "%s/missing.pem", f->dir);
    assert_int_equal(proto_trust_new(path, NULL, &trust), QC_EIO);
    assert_null(trust);
    assert_int_equal(proto_trust_new(f->ca_path, path, &trust), QC_EIO);
    assert_null(trust);
    snprintf(path, sizeof(path), "%s/garbage.pem", f->dir);
    write_text(path, "this is not PEM\n");
    assert_int_equal(proto_trust_new(path, NULL, &trust), QC_ECERT);
    assert_int_equal(proto_trust_new(f->ca_path, path, &trust), QC_ECERT);
    /* A CRL file given where the CAs belong holds no certificate. */
    assert_int_equal(proto_trust_new(f->crl_path, NULL, &trust), QC_ECERT);
    assert_null(trust);
}

static void test_key_load_pem(void **state)
{
    fixture_t *f = *state;
    uint8_t want[PROTO_KEY_ID_SIZE], got[PROTO_KEY_ID_SIZE];
    assert_int_equal(proto_key_id(f->dev_key, want), 0);
    char path[PATH_MAX_LEN + 32];
    EVP_PKEY *k = NULL;

    snprintf(path, sizeof(path), "%s/priv.pem", f->dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(PEM_write_PrivateKey(fp, f->dev_key, NULL, NULL, 0, NULL, NULL), 1);
    assert_int_equal(fclose(fp), 0);
    assert_int_equal(proto_key_load_pem(path, &k), 0);
    assert_int_equal(proto_key_id(k, got), 0);
    assert_memory_equal(want, got, PROTO_KEY_ID_SIZE);
    /* It is the private key: it can sign an envelope that the public key verifies. */
    uint8_t *env_buf = NULL;
    size_t env_len = 0;
    assert_int_equal(proto_envelope_sign(PROTO_TYPE_LOAD_REQUEST, (const uint8_t *)"x", 1, k, 1,
                                         NULL, 0, &env_buf, &env_len),
                     0);
    free(env_buf);
    EVP_PKEY_free(k);

    snprintf(path, sizeof(path), "%s/pub.pem", f->dir);
    fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(PEM_write_PUBKEY(fp, f->dev_key), 1);
    assert_int_equal(fclose(fp), 0);
    assert_int_equal(proto_key_load_pem(path, &k), 0);
    assert_int_equal(proto_key_id(k, got), 0);
    assert_memory_equal(want, got, PROTO_KEY_ID_SIZE);
    EVP_PKEY_free(k);

    snprintf(path, sizeof(path), "%s/cert.pem", f->dir);
    X509 *c = device_cert(f, "QC-DEV-0020", -DAY_S, 365 * DAY_S, KU_DEVICE, 30);
    write_pem_cert(path, c);
    X509_free(c);
    assert_int_equal(proto_key_load_pem(path, &k), 0);
    assert_int_equal(proto_key_id(k, got), 0);
    assert_memory_equal(want, got, PROTO_KEY_ID_SIZE);
    EVP_PKEY_free(k);

    snprintf(path, sizeof(path), "%s/missing.pem", f->dir);
    assert_int_equal(proto_key_load_pem(path, &k), QC_EIO);
    assert_null(k);
    snprintf(path, sizeof(path), "%s/garbage.pem", f->dir);
    write_text(path, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    assert_int_equal(proto_key_load_pem(path, &k), QC_ECRYPTO);
    assert_null(k);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_valid_and_device_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_validity_period, setup, teardown),
        cmocka_unit_test_setup_teardown(test_untrusted_issuer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_revoked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_usage_key_type_and_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_trust_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_load_pem, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
