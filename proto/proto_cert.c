/* proto_cert.c - verifies device certificates against trusted CAs and CRLs; loads PEM keys. */
#include "proto_cert.h"

#include <assert.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "proto_envelope.h"
#include "proto_id.h"
#include "qc_error.h"

#define CERT_GROUP_NAME_MAX 64 /* longest curve name we ask OpenSSL for */

struct proto_trust {
    X509_STORE *store; /* CAs and CRLs; never modified after proto_trust_new() */
    unsigned flags;    /* PROTO_TRUST_* */
};

/* Refuses to prompt for a passphrase: keys are unencrypted files or live in the HSM. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

/* Adds every certificate of a PEM file to store; returns how many, or a negative code. */
static int load_cas(X509_STORE *store, const char *path)
{
    BIO *bio = BIO_new_file(path, "r");
    if (bio == NULL)
        return QC_EIO;
    int count = 0;
    for (;;) {
        X509 *ca = PEM_read_bio_X509(bio, NULL, no_passphrase, NULL);
        if (ca == NULL)
            break;
        int ok = X509_STORE_add_cert(store, ca);
        X509_free(ca);
        if (ok != 1) {
            count = QC_ECERT;
            break;
        }
        count++;
    }
    ERR_clear_error(); /* the end of the file is reported as a PEM error */
    BIO_free(bio);
    return count;
}

/* Adds every CRL of a PEM file to store; returns how many, or a negative code. */
static int load_crls(X509_STORE *store, const char *path)
{
    BIO *bio = BIO_new_file(path, "r");
    if (bio == NULL)
        return QC_EIO;
    int count = 0;
    for (;;) {
        X509_CRL *crl = PEM_read_bio_X509_CRL(bio, NULL, no_passphrase, NULL);
        if (crl == NULL)
            break;
        int ok = X509_STORE_add_crl(store, crl);
        X509_CRL_free(crl);
        if (ok != 1) {
            count = QC_ECERT;
            break;
        }
        count++;
    }
    ERR_clear_error();
    BIO_free(bio);
    return count;
}

/* The verify callback of PROTO_TRUST_STALE_CRL_OK: a CRL past its nextUpdate is still used
 * (its revocations still count); every other error stands. */
static int accept_stale_crl(int ok, X509_STORE_CTX *ctx)
{
    if (!ok && X509_STORE_CTX_get_error(ctx) == X509_V_ERR_CRL_HAS_EXPIRED)
        return 1;
    return ok;
}

int proto_trust_new(const char *ca_pem_path, const char *crl_pem_path, proto_trust_t **out)
{
    return proto_trust_new_ex(ca_pem_path, crl_pem_path, 0, out);
}

int proto_trust_new_ex(const char *ca_pem_path, const char *crl_pem_path, unsigned flags,
                       proto_trust_t **out)
{
    assert(ca_pem_path != NULL);
    assert(out != NULL);
    assert((flags & ~(PROTO_TRUST_NO_CHECK_TIME | PROTO_TRUST_STALE_CRL_OK)) == 0);
    *out = NULL;
    proto_trust_t *trust = calloc(1, sizeof(*trust));
    if (trust == NULL)
        return QC_ENOMEM;
    int rc = QC_ENOMEM;
    trust->store = X509_STORE_new();
    if (trust->store == NULL)
        goto err;
    int n = load_cas(trust->store, ca_pem_path);
    if (n <= 0) {
        rc = n < 0 ? n : QC_ECERT;
        goto err;
    }
    if (crl_pem_path != NULL) {
        n = load_crls(trust->store, crl_pem_path);
        if (n <= 0) {
            rc = n < 0 ? n : QC_ECERT;
            goto err;
        }
        /* Only the leaf: the roots are trusted as configured, and an intermediate's CRL is
         * not something a dev CA bundle carries. */
        if (X509_STORE_set_flags(trust->store, X509_V_FLAG_CRL_CHECK) != 1) {
            rc = QC_ECRYPTO;
            goto err;
        }
    }
    if ((flags & PROTO_TRUST_STALE_CRL_OK) != 0)
        X509_STORE_set_verify_cb(trust->store, accept_stale_crl);
    if ((flags & PROTO_TRUST_NO_CHECK_TIME) != 0 &&
        X509_STORE_set_flags(trust->store, X509_V_FLAG_NO_CHECK_TIME) != 1) {
        rc = QC_ECRYPTO;
        goto err;
    }
    trust->flags = flags;
    *out = trust;
    return 0;
err:
    proto_trust_destroy(&trust);
    return rc;
}

void proto_trust_destroy(proto_trust_t **trust_p)
{
    if (trust_p == NULL || *trust_p == NULL)
        return;
    X509_STORE_free((*trust_p)->store);
    free(*trust_p);
    *trust_p = NULL;
}

/* Maps an X509_V_ERR_* code to ours. */
static int map_verify_error(int err)
{
    switch (err) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
        return QC_ECERTEXPIRED;
    case X509_V_ERR_CERT_NOT_YET_VALID:
        return QC_ECERTNOTYET;
    case X509_V_ERR_CERT_REVOKED:
        return QC_ECERTREVOKED;
    case X509_V_ERR_CRL_HAS_EXPIRED:
        return QC_ECRLSTALE;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
    case X509_V_ERR_CERT_UNTRUSTED:
    case X509_V_ERR_CERT_REJECTED:
    case X509_V_ERR_INVALID_CA:
        return QC_ECERTCA;
    default:
        return QC_ECERT;
    }
}

/* Returns 1 when key is an EC key on P-256. */
static int cert_key_is_p256(EVP_PKEY *key)
{
    char group[CERT_GROUP_NAME_MAX];
    size_t group_len = 0;
    if (key == NULL || !EVP_PKEY_is_a(key, "EC"))
        return 0;
    if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                       &group_len) != 1)
        return 0;
    int nid = OBJ_sn2nid(group);
    if (nid == NID_undef)
        nid = EC_curve_nist2nid(group);
    return nid == NID_X9_62_prime256v1;
}

/* Copies the single commonName of cert into device_id after checking it is a device id. */
static int cert_device_id(X509 *cert, char device_id[PROTO_DEVICE_ID_MAX + 1])
{
    const X509_NAME *name = X509_get_subject_name(cert);
    if (name == NULL)
        return QC_ECERT;
    int idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
    if (idx < 0)
        return QC_ECERT;
    if (X509_NAME_get_index_by_NID(name, NID_commonName, idx) >= 0)
        return QC_ECERT; /* two CNs: which one is the device is ambiguous */
    const ASN1_STRING *cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
    if (cn == NULL)
        return QC_ECERT;
    int len = ASN1_STRING_length(cn);
    const unsigned char *data = ASN1_STRING_get0_data(cn);
    if (len <= 0 || len > PROTO_DEVICE_ID_MAX || data == NULL)
        return QC_ECERT;
    /* The one id rule (proto_id.h), the same proto_decode applies to ids in bodies, so the two
     * compare byte for byte (this also refuses BMPString and embedded NULs). */
    if (proto_id_check_len((const char *)data, (size_t)len, PROTO_DEVICE_ID_MAX,
                           PROTO_ID_VISIBLE) != 0)
        return QC_ECERT;
    memcpy(device_id, data, (size_t)len);
    device_id[len] = '\0';
    return 0;
}

/* The checks after the chain: key usage, key type, device id. */
static int cert_check_leaf(X509 *cert, char device_id[PROTO_DEVICE_ID_MAX + 1])
{
    /* A certificate without a keyUsage extension would allow everything; a device
     * certificate must say digitalSignature explicitly. */
    if ((X509_get_extension_flags(cert) & EXFLAG_KUSAGE) == 0)
        return QC_ECERTUSAGE;
    if ((X509_get_key_usage(cert) & KU_DIGITAL_SIGNATURE) == 0)
        return QC_ECERTUSAGE;
    if (!cert_key_is_p256(X509_get0_pubkey(cert)))
        return QC_ECERT;
    return cert_device_id(cert, device_id);
}

int proto_cert_verify(const proto_trust_t *trust, const uint8_t *der, size_t der_len, time_t now,
                      char device_id[PROTO_DEVICE_ID_MAX + 1], EVP_PKEY **pub)
{
    assert(trust != NULL);
    assert(trust->store != NULL);
    assert(device_id != NULL);
    if (pub != NULL)
        *pub = NULL;
    if (der_len > PROTO_CERT_MAX)
        return QC_ETOOBIG;
    if (der == NULL || der_len == 0 || der_len > LONG_MAX)
        return QC_EDECODE;

    const unsigned char *p = der;
    X509 *cert = d2i_X509(NULL, &p, (long)der_len);
    if (cert == NULL || p != der + der_len) {
        X509_free(cert);
        ERR_clear_error();
        return QC_EDECODE; /* unparseable, or trailing bytes after the certificate */
    }

    int rc = QC_ENOMEM;
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    if (ctx == NULL)
        goto out;
    rc = QC_ECRYPTO;
    if (X509_STORE_CTX_init(ctx, trust->store, cert, NULL) != 1)
        goto out;
    /* OpenSSL lets a set time override X509_V_FLAG_NO_CHECK_TIME, so set it only when time
     * counts. */
    if ((trust->flags & PROTO_TRUST_NO_CHECK_TIME) == 0)
        X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(ctx), now);
    if (X509_verify_cert(ctx) != 1) {
        rc = map_verify_error(X509_STORE_CTX_get_error(ctx));
        goto out;
    }
    char id[PROTO_DEVICE_ID_MAX + 1];
    rc = cert_check_leaf(cert, id);
    if (rc != 0)
        goto out;
    if (pub != NULL) {
        *pub = X509_get_pubkey(cert);
        if (*pub == NULL) {
            rc = QC_ECRYPTO;
            goto out;
        }
    }
    memcpy(device_id, id, sizeof(id));
    rc = 0;
out:
    X509_STORE_CTX_free(ctx);
    X509_free(cert);
    ERR_clear_error();
    return rc;
}

int proto_cert_fingerprint(const uint8_t *der, size_t der_len, uint8_t fp[32])
{
    assert(der != NULL);
    assert(fp != NULL);
    return proto_sha256(der, der_len, fp);
}

int proto_key_load_pem(const char *path, EVP_PKEY **out)
{
    assert(path != NULL);
    assert(out != NULL);
    *out = NULL;
    BIO *bio = BIO_new_file(path, "r");
    if (bio == NULL) {
        ERR_clear_error();
        return QC_EIO;
    }
    /* Each reader skips PEM blocks of other types, so try them in turn from the start. */
    EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    if (key == NULL && BIO_reset(bio) == 0)
        key = PEM_read_bio_PUBKEY(bio, NULL, no_passphrase, NULL);
    if (key == NULL && BIO_reset(bio) == 0) {
        X509 *cert = PEM_read_bio_X509(bio, NULL, no_passphrase, NULL);
        if (cert != NULL) {
            key = X509_get_pubkey(cert);
            X509_free(cert);
        }
    }
    BIO_free(bio);
    ERR_clear_error();
    if (key == NULL)
        return QC_ECRYPTO;
    *out = key;
    return 0;
}
