/* qctest_key.h - keys and X.509 certificates for tests, made with the OpenSSL C API.
 *
 * Tests make their own bank keys, device certificates and CAs; they do not go through the
 * HSM or ops/devca unless that is what they test. Every call here aborts with a message when
 * OpenSSL fails: a test cannot go on without its keys, and a NULL would only crash later. */
#ifndef QCTEST_KEY_H
#define QCTEST_KEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#define QCTEST_CERT_DAYS 30 /* validity of qctest_cert_self / qctest_ca_new certificates */

/* A fresh P-256 key (the caller frees it with EVP_PKEY_free). */
EVP_PKEY *qctest_key_new(void);

/* Which extensions a certificate carries. */
typedef enum qctest_cert_ext {
    QCTEST_EXT_NONE, /* none (an X.509 v1 shape unless v3 is asked) */
    QCTEST_EXT_CA,   /* basicConstraints CA:TRUE, keyUsage keyCertSign and cRLSign (critical) */
    QCTEST_EXT_LEAF, /* basicConstraints CA:FALSE, keyUsage digitalSignature (critical) */
} qctest_cert_ext_t;

/* A certificate to make. The subject is subject_name when set (a CSR's), otherwise CN=cn. */
typedef struct qctest_cert {
    EVP_PKEY *key;                 /* the subject's (public) key */
    const char *cn;                /* the subject's CN */
    const X509_NAME *subject_name; /* or the subject as is */
    EVP_PKEY *signer;              /* signs it; NULL: key (self-signed) */
    const X509 *issuer;            /* the issuer's certificate: its subject is the issuer */
    const char *issuer_cn;         /* or, without one, the issuer's CN; neither: self-issued */
    long serial;                   /* 0: from the wall clock */
    long not_before_s;             /* validity, seconds from now (may be negative) */
    long not_after_s;
    time_t now; /* the "now" of the validity (0: the clock) */
    bool v3;    /* version 3 (implied by extensions) */
    qctest_cert_ext_t ext;
} qctest_cert_t;

/* Makes the certificate spec describes (the caller frees it with X509_free). */
X509 *qctest_cert_new(const qctest_cert_t *spec);

/* A self-signed v1 certificate of key with CN=cn, valid from an hour ago for
 * QCTEST_CERT_DAYS days. */
X509 *qctest_cert_self(EVP_PKEY *key, const char *cn);

/* The DER of qctest_cert_self(key, cn) into *der (malloc'd) and *der_len. */
void qctest_cert_self_der(EVP_PKEY *key, const char *cn, uint8_t **der, size_t *der_len);

/* A CA: a new key and its self-signed certificate (QCTEST_EXT_CA, "quancun test CA"). */
void qctest_ca_new(EVP_PKEY **ca_key, X509 **ca_cert);

/* A device certificate of key with CN=cn issued by the CA (QCTEST_EXT_LEAF, valid from an hour
 * ago for QCTEST_CERT_DAYS days), DER into *der (malloc'd) and *der_len. */
void qctest_cert_issued_der(EVP_PKEY *key, const char *cn, EVP_PKEY *ca_key, const X509 *ca_cert,
                            uint8_t **der, size_t *der_len);

/* Writes to path (PEM) a CRL of the CA (ca_key, ca_cert) revoking serials[0..n), valid from
 * two days ago until next_update_s from now (negative: already past). */
void qctest_write_crl(const char *path, EVP_PKEY *ca_key, const X509 *ca_cert, const long *serials,
                      int n, long next_update_s);

/* cert's DER encoding into *der (malloc'd, the caller frees it) and *der_len. */
void qctest_cert_der(const X509 *cert, uint8_t **der, size_t *der_len);

/* PEM files: a certificate, a public key (SubjectPublicKeyInfo), a private key (PKCS#8). */
void qctest_write_cert(const char *path, const X509 *cert);
void qctest_write_pubkey(const char *path, EVP_PKEY *key);
void qctest_write_private(const char *path, EVP_PKEY *key);

/* A certificate for the public key of the CSR in csr_path (PEM, its signature checked), with
 * the CSR's subject, signed by signer under the issuer CN issuer_cn, serial 1, valid from a
 * minute ago for a day; written as PEM to out_path. */
void qctest_cert_from_csr(const char *csr_path, EVP_PKEY *signer, const char *issuer_cn,
                          const char *out_path);

#endif
