/* qctest_key.c - keys and X.509 certificates for tests (see qctest_key.h). */
#include "qctest_key.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "ops_time.h"

#define QCTEST_HOUR_S 3600L
#define QCTEST_DAY_S 86400L
#define QCTEST_SERIAL_MASK 0x7fffffff /* a positive long from the clock */

static void die(const char *what)
{
    fprintf(stderr, "qctest_key: %s failed\n", what);
    abort();
}

EVP_PKEY *qctest_key_new(void)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    if (k == NULL)
        die("EVP_EC_gen");
    return k;
}

static void add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (ext == NULL || X509_add_ext(cert, ext, -1) != 1)
        die("X509_add_ext");
    X509_EXTENSION_free(ext);
}

static void set_name(X509 *x, bool subject, const X509_NAME *as_is, const char *cn)
{
    if (as_is != NULL) {
        if ((subject ? X509_set_subject_name(x, as_is) : X509_set_issuer_name(x, as_is)) != 1)
            die("X509_set_name");
        return;
    }
    X509_NAME *n = X509_NAME_new();
    if (n == NULL ||
        X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0) !=
            1 ||
        (subject ? X509_set_subject_name(x, n) : X509_set_issuer_name(x, n)) != 1)
        die("X509_NAME");
    X509_NAME_free(n);
}

X509 *qctest_cert_new(const qctest_cert_t *s)
{
    assert(s->key != NULL);
    assert(s->cn != NULL || s->subject_name != NULL);
    X509 *x = X509_new();
    if (x == NULL)
        die("X509_new");
    bool v3 = s->v3 || s->ext != QCTEST_EXT_NONE;
    if (v3 && X509_set_version(x, X509_VERSION_3) != 1)
        die("X509_set_version");
    time_t now = s->now != 0 ? s->now : time(NULL);
    long serial = s->serial != 0 ? s->serial : (long)(ops_time_wall_ms() & QCTEST_SERIAL_MASK);
    if (ASN1_INTEGER_set(X509_get_serialNumber(x), serial) != 1 ||
        X509_time_adj_ex(X509_getm_notBefore(x), 0, s->not_before_s, &now) == NULL ||
        X509_time_adj_ex(X509_getm_notAfter(x), 0, s->not_after_s, &now) == NULL ||
        X509_set_pubkey(x, s->key) != 1)
        die("X509 fields");
    set_name(x, true, s->subject_name, s->cn);
    if (s->issuer != NULL)
        set_name(x, false, X509_get_subject_name(s->issuer), NULL);
    else if (s->issuer_cn != NULL)
        set_name(x, false, NULL, s->issuer_cn);
    else
        set_name(x, false, X509_get_subject_name(x), NULL);
    X509 *iss = s->issuer != NULL ? (X509 *)s->issuer : x;
    if (s->ext == QCTEST_EXT_CA) {
        add_ext(x, iss, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(x, iss, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else if (s->ext == QCTEST_EXT_LEAF) {
        add_ext(x, iss, NID_basic_constraints, "critical,CA:FALSE");
        add_ext(x, iss, NID_key_usage, "critical,digitalSignature");
    }
    if (X509_sign(x, s->signer != NULL ? s->signer : s->key, EVP_sha256()) <= 0)
        die("X509_sign");
    return x;
}

X509 *qctest_cert_self(EVP_PKEY *key, const char *cn)
{
    qctest_cert_t spec = {.key = key,
                          .cn = cn,
                          .not_before_s = -QCTEST_HOUR_S,
                          .not_after_s = QCTEST_CERT_DAYS * QCTEST_DAY_S};
    return qctest_cert_new(&spec);
}

void qctest_cert_self_der(EVP_PKEY *key, const char *cn, uint8_t **der, size_t *der_len)
{
    X509 *x = qctest_cert_self(key, cn);
    qctest_cert_der(x, der, der_len);
    X509_free(x);
}

void qctest_ca_new(EVP_PKEY **ca_key, X509 **ca_cert)
{
    *ca_key = qctest_key_new();
    qctest_cert_t spec = {.key = *ca_key,
                          .cn = "quancun test CA",
                          .not_before_s = -QCTEST_HOUR_S,
                          .not_after_s = QCTEST_CERT_DAYS * QCTEST_DAY_S,
                          .ext = QCTEST_EXT_CA};
    *ca_cert = qctest_cert_new(&spec);
}

void qctest_cert_issued_der(EVP_PKEY *key, const char *cn, EVP_PKEY *ca_key, const X509 *ca_cert,
                            uint8_t **der, size_t *der_len)
{
    qctest_cert_t spec = {.key = key,
                          .cn = cn,
                          .signer = ca_key,
                          .issuer = ca_cert,
                          .not_before_s = -QCTEST_HOUR_S,
                          .not_after_s = QCTEST_CERT_DAYS * QCTEST_DAY_S,
                          .ext = QCTEST_EXT_LEAF};
    X509 *x = qctest_cert_new(&spec);
    qctest_cert_der(x, der, der_len);
    X509_free(x);
}

void qctest_cert_der(const X509 *cert, uint8_t **der, size_t *der_len)
{
    unsigned char *buf = NULL;
    int n = i2d_X509(cert, &buf);
    if (n <= 0)
        die("i2d_X509");
    *der = malloc((size_t)n);
    if (*der == NULL)
        die("malloc");
    memcpy(*der, buf, (size_t)n);
    *der_len = (size_t)n;
    OPENSSL_free(buf);
}

static FILE *open_w(const char *path)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "qctest_key: cannot write %s\n", path);
        abort();
    }
    return f;
}

void qctest_write_cert(const char *path, const X509 *cert)
{
    FILE *f = open_w(path);
    if (PEM_write_X509(f, cert) != 1 || fclose(f) != 0)
        die("PEM_write_X509");
}

void qctest_write_pubkey(const char *path, EVP_PKEY *key)
{
    FILE *f = open_w(path);
    if (PEM_write_PUBKEY(f, key) != 1 || fclose(f) != 0)
        die("PEM_write_PUBKEY");
}

void qctest_write_private(const char *path, EVP_PKEY *key)
{
    FILE *f = open_w(path);
    if (PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) != 1 || fclose(f) != 0)
        die("PEM_write_PrivateKey");
}

void qctest_cert_from_csr(const char *csr_path, EVP_PKEY *signer, const char *issuer_cn,
                          const char *out_path)
{
    FILE *f = fopen(csr_path, "r");
    X509_REQ *req = f != NULL ? PEM_read_X509_REQ(f, NULL, NULL, NULL) : NULL;
    if (f != NULL)
        fclose(f);
    if (req == NULL)
        die("PEM_read_X509_REQ");
    EVP_PKEY *pub = X509_REQ_get_pubkey(req);
    if (pub == NULL || X509_REQ_verify(req, pub) != 1)
        die("X509_REQ_verify");
    qctest_cert_t spec = {.key = pub,
                          .subject_name = X509_REQ_get_subject_name(req),
                          .signer = signer,
                          .issuer_cn = issuer_cn,
                          .serial = 1,
                          .not_before_s = -60,
                          .not_after_s = QCTEST_DAY_S,
                          .v3 = true};
    X509 *cert = qctest_cert_new(&spec);
    qctest_write_cert(out_path, cert);
    X509_free(cert);
    EVP_PKEY_free(pub);
    X509_REQ_free(req);
}

void qctest_write_crl(const char *path, EVP_PKEY *ca_key, const X509 *ca_cert, const long *serials,
                      int n, long next_update_s)
{
    time_t now = time(NULL);
    X509_CRL *crl = X509_CRL_new();
    if (crl == NULL || X509_CRL_set_version(crl, 1) != 1 ||
        X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca_cert)) != 1)
        die("X509_CRL");
    ASN1_TIME *t = X509_time_adj_ex(NULL, -2, 0, &now);
    if (t == NULL || X509_CRL_set1_lastUpdate(crl, t) != 1)
        die("X509_CRL lastUpdate");
    ASN1_TIME_free(t);
    t = X509_time_adj_ex(NULL, 0, next_update_s, &now);
    if (t == NULL || X509_CRL_set1_nextUpdate(crl, t) != 1)
        die("X509_CRL nextUpdate");
    ASN1_TIME_free(t);
    for (int i = 0; i < n; i++) {
        X509_REVOKED *rev = X509_REVOKED_new();
        ASN1_INTEGER *sn = ASN1_INTEGER_new();
        t = X509_time_adj_ex(NULL, 0, -60, &now);
        if (rev == NULL || sn == NULL || t == NULL || ASN1_INTEGER_set(sn, serials[i]) != 1 ||
            X509_REVOKED_set_serialNumber(rev, sn) != 1 ||
            X509_REVOKED_set_revocationDate(rev, t) != 1 || X509_CRL_add0_revoked(crl, rev) != 1)
            die("X509_REVOKED");
        ASN1_INTEGER_free(sn);
        ASN1_TIME_free(t);
    }
    if (X509_CRL_sort(crl) != 1 || X509_CRL_sign(crl, ca_key, EVP_sha256()) <= 0)
        die("X509_CRL_sign");
    /* Written aside and renamed, as an operator's tool would: a reader never sees half. */
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *fp = fopen(tmp, "w");
    if (fp == NULL || PEM_write_X509_CRL(fp, crl) != 1 || fclose(fp) != 0 || rename(tmp, path) != 0)
        die("write CRL");
    X509_CRL_free(crl);
}
