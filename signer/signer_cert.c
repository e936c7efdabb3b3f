/* signer_cert.c - X.509 certificates and CSRs signed by a key that stays in the token.
 *
 * OpenSSL fills in the to-be-signed structure. To get the signature AlgorithmIdentifier
 * right in both places it appears (inside the TBS and after it), the structure is first
 * signed with a throwaway software P-256 key; that signature is discarded. Then the TBS is
 * re-encoded, its SHA-256 signed by the token, and the final DER assembled by hand as
 * SEQUENCE { tbs, algorithm, BIT STRING signature } and parsed back. Nothing here ever
 * holds the bank's private key. */
#include "signer_cert.h"

#include <assert.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "proto_ecdsa.h"
#include "proto_envelope.h"
#include "qc_error.h"

#define SIGNER_CERT_SERIAL_BITS 128
#define SIGNER_CERT_ORG "quancun"
#define SIGNER_SECONDS_PER_DAY (24L * 60 * 60)
/* DER tags. */
#define DER_SEQUENCE 0x30
#define DER_BIT_STRING 0x03
/* Largest DER header: tag plus a 0x82 two-byte length (certificates stay far below 64 KiB). */
#define DER_HEADER_MAX 4
#define DER_LEN_MAX 0xffff

/* Writes a DER tag and length into out (capacity DER_HEADER_MAX); returns the bytes used,
 * or 0 when len is above DER_LEN_MAX. */
static size_t der_header(uint8_t tag, size_t len, uint8_t out[DER_HEADER_MAX])
{
    out[0] = tag;
    if (len < 0x80) {
        out[1] = (uint8_t)len;
        return 2;
    }
    if (len <= 0xff) {
        out[1] = 0x81;
        out[2] = (uint8_t)len;
        return 3;
    }
    if (len <= DER_LEN_MAX) {
        out[1] = 0x82;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 4;
    }
    return 0;
}

/* Signs tbs (DER) with the token and assembles SEQUENCE { tbs, alg, BIT STRING sig } into a
 * malloc'd buffer. Returns 0, or a QC_E* code. */
static int signer_assemble(signer_session_t *sess, const signer_key_t *key, const uint8_t *tbs,
                           size_t tbs_len, const X509_ALGOR *alg, uint8_t **out, size_t *out_len)
{
    *out = NULL;
    uint8_t digest[PROTO_DIGEST_SIZE];
    if (proto_sha256(tbs, tbs_len, digest) != 0)
        return QC_ECRYPTO;
    uint8_t raw[PROTO_SIG_RAW_SIZE];
    int rc = signer_session_sign(sess, key, digest, raw);
    if (rc != 0)
        return rc;
    uint8_t sig[PROTO_SIG_DER_MAX];
    size_t sig_len = 0;
    rc = proto_ecdsa_raw_to_der(raw, sig, sizeof(sig), &sig_len);
    if (rc != 0)
        return QC_ECRYPTO;

    unsigned char *alg_der = NULL;
    int alg_len = i2d_X509_ALGOR(alg, &alg_der);
    if (alg_len <= 0)
        return QC_ECRYPTO;

    /* BIT STRING: one byte of unused bits (0), then the DER signature. */
    uint8_t bits_hdr[DER_HEADER_MAX];
    size_t bits_hdr_len = der_header(DER_BIT_STRING, sig_len + 1, bits_hdr);
    size_t body_len = tbs_len + (size_t)alg_len + bits_hdr_len + 1 + sig_len;
    uint8_t seq_hdr[DER_HEADER_MAX];
    size_t seq_hdr_len = der_header(DER_SEQUENCE, body_len, seq_hdr);
    if (bits_hdr_len == 0 || seq_hdr_len == 0) {
        OPENSSL_free(alg_der);
        return QC_EINVAL;
    }
    uint8_t *buf = malloc(seq_hdr_len + body_len);
    if (buf == NULL) {
        OPENSSL_free(alg_der);
        return QC_ENOMEM;
    }
    uint8_t *p = buf;
    memcpy(p, seq_hdr, seq_hdr_len);
    p += seq_hdr_len;
    memcpy(p, tbs, tbs_len);
    p += tbs_len;
    memcpy(p, alg_der, (size_t)alg_len);
    p += alg_len;
    memcpy(p, bits_hdr, bits_hdr_len);
    p += bits_hdr_len;
    *p++ = 0;
    memcpy(p, sig, sig_len);
    p += sig_len;
    OPENSSL_free(alg_der);
    assert((size_t)(p - buf) == seq_hdr_len + body_len);
    *out = buf;
    *out_len = seq_hdr_len + body_len;
    return 0;
}

/* Sets CN=common_name, O=quancun on name. */
static int signer_set_name(X509_NAME *name, const char *common_name)
{
    if (X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)SIGNER_CERT_ORG,
                                   -1, -1, 0) != 1)
        return QC_ECRYPTO;
    if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)common_name,
                                   -1, -1, 0) != 1)
        return QC_ECRYPTO;
    return 0;
}

/* Adds one extension given in OpenSSL's config syntax. */
static int signer_add_ext(X509 *cert, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
    if (ext == NULL)
        return QC_ECRYPTO;
    int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok == 1 ? 0 : QC_ECRYPTO;
}

static int signer_random_serial(X509 *cert)
{
    int rc = QC_ECRYPTO;
    BIGNUM *bn = BN_new();
    if (bn == NULL)
        return QC_ENOMEM;
    /* Top bit clear keeps the INTEGER positive without a pad byte; bottom bit set keeps it
     * non-zero. */
    if (BN_rand(bn, SIGNER_CERT_SERIAL_BITS - 1, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ODD) == 1 &&
        BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) != NULL)
        rc = 0;
    BN_free(bn);
    return rc;
}

/* A throwaway software key, used only so OpenSSL writes the algorithm identifiers. */
static EVP_PKEY *signer_scratch_key(void)
{
    return EVP_EC_gen("P-256");
}

static bool signer_cn_ok(const char *cn)
{
    size_t n = strlen(cn);
    return n > 0 && n <= SIGNER_CERT_CN_MAX;
}

/* Fills every field of the self-signed certificate except the signature. */
static int signer_fill_cert(X509 *cert, const signer_key_t *key, const char *common_name, int days)
{
    if (X509_set_version(cert, X509_VERSION_3) != 1)
        return QC_ECRYPTO;
    int rc = signer_random_serial(cert);
    if (rc != 0)
        return rc;
    if (X509_gmtime_adj(X509_getm_notBefore(cert), 0) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(cert), (long)days * SIGNER_SECONDS_PER_DAY) == NULL)
        return QC_ECRYPTO;
    rc = signer_set_name(X509_get_subject_name(cert), common_name);
    if (rc == 0)
        rc = signer_set_name(X509_get_issuer_name(cert), common_name);
    if (rc != 0)
        return rc;
    if (X509_set_pubkey(cert, signer_key_public(key)) != 1)
        return QC_ECRYPTO;
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, cert, cert, NULL, NULL, 0);
    rc = signer_add_ext(cert, &ctx, NID_basic_constraints, "critical,CA:FALSE");
    if (rc == 0)
        rc = signer_add_ext(cert, &ctx, NID_key_usage, "critical,digitalSignature");
    if (rc == 0)
        rc = signer_add_ext(cert, &ctx, NID_subject_key_identifier, "hash");
    return rc;
}

int signer_cert_self_signed(signer_session_t *sess, const signer_key_t *key,
                            const char *common_name, int days, X509 **out)
{
    assert(sess != NULL);
    assert(key != NULL);
    assert(common_name != NULL);
    assert(out != NULL);
    *out = NULL;
    if (days < 1 || days > SIGNER_CERT_DAYS_MAX || !signer_cn_ok(common_name))
        return QC_EINVAL;
    int rc = QC_ECRYPTO;
    X509 *cert = X509_new();
    EVP_PKEY *scratch = signer_scratch_key();
    unsigned char *tbs = NULL;
    uint8_t *der = NULL;
    size_t der_len = 0;
    if (cert == NULL || scratch == NULL)
        goto done;
    rc = signer_fill_cert(cert, key, common_name, days);
    if (rc != 0)
        goto done;
    rc = QC_ECRYPTO;
    if (X509_sign(cert, scratch, EVP_sha256()) <= 0)
        goto done;
    int tbs_len = i2d_re_X509_tbs(cert, &tbs);
    if (tbs_len <= 0)
        goto done;
    const X509_ALGOR *alg = NULL;
    X509_get0_signature(NULL, &alg, cert);
    rc = signer_assemble(sess, key, tbs, (size_t)tbs_len, alg, &der, &der_len);
    if (rc != 0)
        goto done;
    rc = QC_ECRYPTO;
    const unsigned char *p = der;
    X509 *final = d2i_X509(NULL, &p, (long)der_len);
    if (final == NULL || p != der + der_len || X509_verify(final, signer_key_public(key)) != 1) {
        X509_free(final);
        goto done;
    }
    *out = final;
    rc = 0;
done:
    free(der);
    OPENSSL_free(tbs);
    EVP_PKEY_free(scratch);
    X509_free(cert);
    return rc;
}

int signer_cert_request(signer_session_t *sess, const signer_key_t *key, const char *common_name,
                        X509_REQ **out)
{
    assert(sess != NULL);
    assert(key != NULL);
    assert(common_name != NULL);
    assert(out != NULL);
    *out = NULL;
    if (!signer_cn_ok(common_name))
        return QC_EINVAL;
    int rc = QC_ECRYPTO;
    X509_REQ *req = X509_REQ_new();
    EVP_PKEY *scratch = signer_scratch_key();
    unsigned char *tbs = NULL;
    uint8_t *der = NULL;
    size_t der_len = 0;
    if (req == NULL || scratch == NULL)
        goto done;
    if (X509_REQ_set_version(req, X509_REQ_VERSION_1) != 1 ||
        X509_REQ_set_pubkey(req, signer_key_public(key)) != 1)
        goto done;
    rc = signer_set_name(X509_REQ_get_subject_name(req), common_name);
    if (rc != 0)
        goto done;
    rc = QC_ECRYPTO;
    if (X509_REQ_sign(req, scratch, EVP_sha256()) <= 0)
        goto done;
    int tbs_len = i2d_re_X509_REQ_tbs(req, &tbs);
    if (tbs_len <= 0)
        goto done;
    const X509_ALGOR *alg = NULL;
    X509_REQ_get0_signature(req, NULL, &alg);
    rc = signer_assemble(sess, key, tbs, (size_t)tbs_len, alg, &der, &der_len);
    if (rc != 0)
        goto done;
    rc = QC_ECRYPTO;
    const unsigned char *p = der;
    X509_REQ *final = d2i_X509_REQ(NULL, &p, (long)der_len);
    if (final == NULL || p != der + der_len ||
        X509_REQ_verify(final, signer_key_public(key)) != 1) {
        X509_REQ_free(final);
        goto done;
    }
    *out = final;
    rc = 0;
done:
    free(der);
    OPENSSL_free(tbs);
    EVP_PKEY_free(scratch);
    X509_REQ_free(req);
    return rc;
}
