/* proto_envelope.c - signs, seals, parses and verifies Signed envelopes (ECDSA P-256). */
#include "proto_envelope.h"

#include <assert.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/obj_mac.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include "proto_decode.h"
#include "proto_ecdsa.h"
#include "qc_error.h"
#include "quancun.pb-c.h"

#define PROTO_SIG_DER_MIN 8     /* SEQUENCE { INTEGER 1 byte, INTEGER 1 byte } */
#define PROTO_GROUP_NAME_MAX 64 /* longest curve name we ask OpenSSL for */

struct proto_envelope {
    Quancun__Signed *msg; /* owned; every borrowed view points into it */
};

static const char *const proto_contexts[PROTO_TYPE_COUNT] = {
    [PROTO_TYPE_LOAD_REQUEST] = "quancun/v1/LoadRequest",
    [PROTO_TYPE_LOAD_ALLOW] = "quancun/v1/LoadAllow",
    [PROTO_TYPE_EXECUTION_REPORT] = "quancun/v1/ExecutionReport",
    [PROTO_TYPE_LOAD_OUTCOME] = "quancun/v1/LoadOutcome",
    [PROTO_TYPE_AUDIT_CHECKPOINT] = "quancun/v1/AuditCheckpoint",
    [PROTO_TYPE_CARD_CHALLENGE] = "quancun/v1/CardChallenge",
    [PROTO_TYPE_CARD_CREDIT] = "quancun/v1/CardCredit",
    [PROTO_TYPE_CARD_RECEIPT] = "quancun/v1/CardReceipt",
};

const char *proto_type_context(proto_type_t type)
{
    assert(type >= 0);
    assert(type < PROTO_TYPE_COUNT);
    if ((unsigned)type >= PROTO_TYPE_COUNT)
        abort(); /* even with NDEBUG: a wrong context must never be signed or checked */
    assert(proto_contexts[type] != NULL);
    return proto_contexts[type];
}

/* Hashes up to three byte strings in sequence; a NULL part with length 0 is skipped. */
static int sha256_parts(const void *a, size_t a_len, const void *b, size_t b_len, const void *c,
                        size_t c_len, uint8_t digest[PROTO_DIGEST_SIZE])
{
    int rc = QC_ECRYPTO;
    unsigned int out_len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        return QC_ENOMEM;
    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
        goto out;
    if (a_len > 0 && EVP_DigestUpdate(ctx, a, a_len) != 1)
        goto out;
    if (b_len > 0 && EVP_DigestUpdate(ctx, b, b_len) != 1)
        goto out;
    if (c_len > 0 && EVP_DigestUpdate(ctx, c, c_len) != 1)
        goto out;
    if (EVP_DigestFinal_ex(ctx, digest, &out_len) != 1 || out_len != PROTO_DIGEST_SIZE)
        goto out;
    rc = 0;
out:
    EVP_MD_CTX_free(ctx);
    return rc;
}

int proto_envelope_digest(proto_type_t type, const uint8_t *body, size_t body_len,
                          uint8_t digest[PROTO_DIGEST_SIZE])
{
    assert(digest != NULL);
    assert(body != NULL || body_len == 0);
    const char *context = proto_type_context(type);
    static const uint8_t separator = 0x00;
    return sha256_parts(context, strlen(context), &separator, 1, body, body_len, digest);
}

int proto_sha256(const uint8_t *bytes, size_t len, uint8_t digest[PROTO_DIGEST_SIZE])
{
    assert(digest != NULL);
    assert(bytes != NULL || len == 0);
    return sha256_parts(bytes, len, NULL, 0, NULL, 0, digest);
}

/* The DER SubjectPublicKeyInfo of a P-256 key is this fixed prefix (SEQUENCE, the algorithm
 * id-ecPublicKey with the named curve prime256v1, BIT STRING header) and then the 65-byte
 * uncompressed point. */
static const uint8_t proto_p256_spki_prefix[] = {
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
    0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
};
#define PROTO_P256_POINT_SIZE 65 /* 0x04 || X || Y */

static int key_is_p256(EVP_PKEY *key);

int proto_key_id(EVP_PKEY *key, uint8_t key_id[PROTO_KEY_ID_SIZE])
{
    assert(key != NULL);
    assert(key_id != NULL);
    /* i2d_PUBKEY() goes through OpenSSL 3's encoder machinery and costs as much as a P-256
     * verification; for P-256, the only curve of v1, the SPKI is a fixed prefix and the point,
     * so the same bytes are hashed without it. Other keys take the general path. */
    uint8_t point[PROTO_P256_POINT_SIZE + 1];
    size_t point_len = 0;
    if (key_is_p256(key) &&
        EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point,
                                        sizeof point, &point_len) == 1 &&
        point_len == PROTO_P256_POINT_SIZE && point[0] == 0x04)
        return sha256_parts(proto_p256_spki_prefix, sizeof proto_p256_spki_prefix, point, point_len,
                            NULL, 0, key_id);
    unsigned char *spki = NULL;
    int spki_len = i2d_PUBKEY(key, &spki);
    if (spki_len <= 0)
        return QC_ECRYPTO;
    int rc = proto_sha256(spki, (size_t)spki_len, key_id);
    OPENSSL_free(spki);
    return rc;
}

/* Returns 1 when key is an EC key on P-256, 0 otherwise: the only curve of v1. */
static int key_is_p256(EVP_PKEY *key)
{
    char group[PROTO_GROUP_NAME_MAX];
    size_t group_len = 0;
    if (!EVP_PKEY_is_a(key, "EC"))
        return 0;
    if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                       &group_len) != 1)
        return 0;
    int nid = OBJ_sn2nid(group);
    if (nid == NID_undef)
        nid = EC_curve_nist2nid(group);
    return nid == NID_X9_62_prime256v1;
}

int proto_envelope_seal(const uint8_t *body, size_t body_len,
                        const uint8_t key_id[PROTO_KEY_ID_SIZE], uint32_t key_version,
                        const uint8_t *sig_der, size_t sig_len, const uint8_t *cert_der,
                        size_t cert_len, uint8_t **out, size_t *out_len)
{
    assert(out != NULL);
    assert(out_len != NULL);
    assert(key_id != NULL);
    *out = NULL;
    *out_len = 0;
    if (body == NULL || body_len == 0 || body_len > PROTO_BODY_MAX)
        return QC_EINVAL;
    if (key_version < 1 || sig_der == NULL || sig_len < PROTO_SIG_DER_MIN ||
        sig_len > PROTO_SIG_DER_MAX)
        return QC_EINVAL;
    if ((cert_der == NULL) != (cert_len == 0) || cert_len > PROTO_CERT_MAX)
        return QC_EINVAL;
    /* Refuse to emit what proto_envelope_open() or a strict verifier would refuse: the
     * signer normalizes to low S (proto_ecdsa_raw_low_s()) before it seals. */
    uint8_t raw[PROTO_SIG_RAW_SIZE];
    if (proto_ecdsa_der_to_raw(sig_der, sig_len, raw) != 0 || !proto_ecdsa_raw_is_low_s(raw))
        return QC_EINVAL;

    /* protobuf-c's pack never writes through these pointers; the casts only drop const. */
    Quancun__Signed msg = QUANCUN__SIGNED__INIT;
    msg.body.data = (uint8_t *)body;
    msg.body.len = body_len;
    msg.alg = QUANCUN__ALG__ALG_ECDSA_P256_SHA256;
    msg.key_id.data = (uint8_t *)key_id;
    msg.key_id.len = PROTO_KEY_ID_SIZE;
    msg.key_version = key_version;
    msg.signature.data = (uint8_t *)sig_der;
    msg.signature.len = sig_len;
    msg.cert.data = (uint8_t *)cert_der;
    msg.cert.len = cert_len;

    size_t len = quancun__signed__get_packed_size(&msg);
    assert(len <= PROTO_ENVELOPE_MAX);
    uint8_t *buf = malloc(len);
    if (buf == NULL)
        return QC_ENOMEM;
    size_t packed = quancun__signed__pack(&msg, buf);
    assert(packed == len);
    *out = buf;
    *out_len = packed;
    return 0;
}

/* Signs digest with key, writing a DER signature into sig (capacity PROTO_SIG_DER_MAX). */
static int sign_digest(EVP_PKEY *key, const uint8_t digest[PROTO_DIGEST_SIZE],
                       uint8_t sig[PROTO_SIG_DER_MAX], size_t *sig_len)
{
    int rc = QC_ECRYPTO;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
    if (ctx == NULL)
        return QC_ENOMEM;
    if (EVP_PKEY_sign_init(ctx) != 1)
        goto out;
    /* Declaring the digest makes OpenSSL check its length and sign it as SHA-256. */
    if (EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) != 1)
        goto out;
    size_t len = PROTO_SIG_DER_MAX;
    if (EVP_PKEY_sign(ctx, sig, &len, digest, PROTO_DIGEST_SIZE) != 1)
        goto out;
    assert(len <= PROTO_SIG_DER_MAX);
    /* OpenSSL returns either form of s; we emit only the low one. */
    uint8_t raw[PROTO_SIG_RAW_SIZE];
    if (proto_ecdsa_der_to_raw(sig, len, raw) != 0)
        goto out;
    if (proto_ecdsa_raw_low_s(raw) < 0)
        goto out;
    rc = proto_ecdsa_raw_to_der(raw, sig, PROTO_SIG_DER_MAX, sig_len) == 0 ? 0 : QC_ECRYPTO;
out:
    EVP_PKEY_CTX_free(ctx);
    return rc;
}

int proto_envelope_sign(proto_type_t type, const uint8_t *body, size_t body_len, EVP_PKEY *key,
                        uint32_t key_version, const uint8_t *cert_der, size_t cert_len,
                        uint8_t **out, size_t *out_len)
{
    assert(out != NULL);
    assert(out_len != NULL);
    assert(key != NULL);
    *out = NULL;
    *out_len = 0;
    if (body == NULL || body_len == 0 || body_len > PROTO_BODY_MAX || key_version < 1)
        return QC_EINVAL;
    if (!key_is_p256(key))
        return QC_EINVAL;

    uint8_t digest[PROTO_DIGEST_SIZE];
    uint8_t key_id[PROTO_KEY_ID_SIZE];
    uint8_t sig[PROTO_SIG_DER_MAX];
    size_t sig_len = 0;
    int rc = proto_envelope_digest(type, body, body_len, digest);
    if (rc != 0)
        return rc;
    rc = proto_key_id(key, key_id);
    if (rc != 0)
        return rc;
    rc = sign_digest(key, digest, sig, &sig_len);
    if (rc != 0)
        return rc;
    return proto_envelope_seal(body, body_len, key_id, key_version, sig, sig_len, cert_der,
                               cert_len, out, out_len);
}

/* Checks the shape of an unpacked envelope in signify's order: algorithm, key id and
 * version, signature, body, certificate. */
static int envelope_check(const Quancun__Signed *msg)
{
    if (msg->alg != QUANCUN__ALG__ALG_ECDSA_P256_SHA256)
        return QC_EALG;
    if (msg->key_id.len == 0)
        return QC_EMISSING;
    if (msg->key_id.len != PROTO_KEY_ID_SIZE)
        return QC_EDECODE;
    if (msg->key_version < 1)
        return QC_EMISSING;
    if (msg->signature.len == 0)
        return QC_EMISSING;
    if (msg->signature.len < PROTO_SIG_DER_MIN || msg->signature.len > PROTO_SIG_DER_MAX)
        return QC_EDECODE;
    if (msg->body.len == 0)
        return QC_EMISSING;
    if (msg->body.len > PROTO_BODY_MAX || msg->cert.len > PROTO_CERT_MAX)
        return QC_ETOOBIG;
    return 0;
}

int proto_envelope_open(const uint8_t *bytes, size_t len, proto_envelope_t **out)
{
    assert(out != NULL);
    *out = NULL;
    if (len > PROTO_ENVELOPE_MAX)
        return QC_ETOOBIG;
    if (bytes == NULL && len > 0)
        return QC_EINVAL;
    Quancun__Signed *msg = quancun__signed__unpack(NULL, len, bytes);
    if (msg == NULL)
        return QC_EDECODE;
    /* The envelope is canonical too: protobuf-c keeps the last of a repeated field, so a
     * garbage signature followed by the valid one would otherwise pass, and the stored
     * evidence would not be what was verified. */
    int rc = proto_decode_canonical(&msg->base, bytes, len);
    if (rc == 0)
        rc = envelope_check(msg);
    if (rc != 0) {
        quancun__signed__free_unpacked(msg, NULL);
        return rc;
    }
    proto_envelope_t *env = malloc(sizeof(*env));
    if (env == NULL) {
        quancun__signed__free_unpacked(msg, NULL);
        return QC_ENOMEM;
    }
    env->msg = msg;
    *out = env;
    return 0;
}

/* A public key prepared once for many verifications (proto_envelope.h). */
struct proto_verifier {
    EVP_PKEY *key; /* up-referenced */
    uint8_t key_id[PROTO_KEY_ID_SIZE];
    bool p256;
    EVP_PKEY_CTX *ctx; /* verify-initialized with SHA-256; NULL when !p256 */
};

/* Checks env against a key whose id and curve are known, with ctx verify-initialized for it:
 * the one body of proto_envelope_verify() and proto_envelope_verify_prepared(). */
static int verify_known(const proto_envelope_t *env, proto_type_t type,
                        const uint8_t key_id[PROTO_KEY_ID_SIZE], bool p256, EVP_PKEY_CTX *ctx)
{
    const Quancun__Signed *msg = env->msg;
    assert(msg->key_id.len == PROTO_KEY_ID_SIZE);
    if (CRYPTO_memcmp(key_id, msg->key_id.data, PROTO_KEY_ID_SIZE) != 0)
        return QC_EKEYID;
    /* A key with the right id on another curve cannot have made a P-256 signature. */
    if (!p256)
        return QC_EALG;
    assert(ctx != NULL);
    /* OpenSSL also insists on canonical DER, but the rule is ours, so check it here; and
     * only the low-S form of a signature is accepted, so each has one encoding. */
    uint8_t raw[PROTO_SIG_RAW_SIZE];
    if (proto_ecdsa_der_to_raw(msg->signature.data, msg->signature.len, raw) != 0)
        return QC_EBADSIG;
    if (!proto_ecdsa_raw_is_low_s(raw))
        return QC_EBADSIG;

    uint8_t digest[PROTO_DIGEST_SIZE];
    int rc = proto_envelope_digest(type, msg->body.data, msg->body.len, digest);
    if (rc != 0)
        return rc;
    int ok =
        EVP_PKEY_verify(ctx, msg->signature.data, msg->signature.len, digest, PROTO_DIGEST_SIZE);
    /* 0 is a wrong signature, a negative value a malformed one: both are refusals. */
    return ok == 1 ? 0 : QC_EBADSIG;
}

/* A verify context for key: initialized once, reusable for every verification by key. */
static EVP_PKEY_CTX *verify_ctx_new(EVP_PKEY *key)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
    if (ctx == NULL)
        return NULL;
    if (EVP_PKEY_verify_init(ctx) != 1 || EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) != 1) {
        EVP_PKEY_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

int proto_envelope_verify(const proto_envelope_t *env, proto_type_t type, EVP_PKEY *key)
{
    assert(env != NULL);
    assert(env->msg != NULL);
    assert(key != NULL);
    uint8_t key_id[PROTO_KEY_ID_SIZE];
    int rc = proto_key_id(key, key_id);
    if (rc != 0)
        return rc;
    bool p256 = key_is_p256(key);
    EVP_PKEY_CTX *ctx = NULL;
    /* The key id is compared before the context is made, so that refusals cost no context. */
    if (CRYPTO_memcmp(key_id, env->msg->key_id.data, PROTO_KEY_ID_SIZE) == 0 && p256) {
        ctx = verify_ctx_new(key);
        if (ctx == NULL)
            return QC_ECRYPTO;
    }
    rc = verify_known(env, type, key_id, p256, ctx);
    EVP_PKEY_CTX_free(ctx);
    return rc;
}

int proto_verifier_new(EVP_PKEY *key, proto_verifier_t **out)
{
    assert(key != NULL);
    assert(out != NULL);
    *out = NULL;
    proto_verifier_t *v = calloc(1, sizeof *v);
    if (v == NULL)
        return QC_ENOMEM;
    int rc = proto_key_id(key, v->key_id);
    if (rc != 0) {
        free(v);
        return rc;
    }
    v->p256 = key_is_p256(key);
    if (v->p256 && (v->ctx = verify_ctx_new(key)) == NULL) {
        free(v);
        return QC_ECRYPTO;
    }
    if (EVP_PKEY_up_ref(key) != 1) {
        EVP_PKEY_CTX_free(v->ctx);
        free(v);
        return QC_ECRYPTO;
    }
    v->key = key;
    *out = v;
    return 0;
}

int proto_envelope_verify_prepared(const proto_envelope_t *env, proto_type_t type,
                                   proto_verifier_t *v)
{
    assert(env != NULL);
    assert(env->msg != NULL);
    assert(v != NULL);
    assert(v->key != NULL);
    assert(!v->p256 || v->ctx != NULL);
    return verify_known(env, type, v->key_id, v->p256, v->ctx);
}

EVP_PKEY *proto_verifier_key(const proto_verifier_t *v)
{
    assert(v != NULL);
    return v->key;
}

void proto_verifier_destroy(proto_verifier_t **v_p)
{
    if (v_p == NULL || *v_p == NULL)
        return;
    EVP_PKEY_CTX_free((*v_p)->ctx);
    EVP_PKEY_free((*v_p)->key);
    free(*v_p);
    *v_p = NULL;
}

const uint8_t *proto_envelope_body(const proto_envelope_t *env, size_t *len)
{
    assert(env != NULL);
    assert(len != NULL);
    *len = env->msg->body.len;
    return env->msg->body.data;
}

const uint8_t *proto_envelope_key_id(const proto_envelope_t *env)
{
    assert(env != NULL);
    return env->msg->key_id.data;
}

uint32_t proto_envelope_key_version(const proto_envelope_t *env)
{
    assert(env != NULL);
    return env->msg->key_version;
}

const uint8_t *proto_envelope_cert(const proto_envelope_t *env, size_t *len)
{
    assert(env != NULL);
    assert(len != NULL);
    if (env->msg->cert.len == 0) {
        *len = 0;
        return NULL;
    }
    *len = env->msg->cert.len;
    return env->msg->cert.data;
}

void proto_envelope_destroy(proto_envelope_t **env_p)
{
    if (env_p == NULL || *env_p == NULL)
        return;
    quancun__signed__free_unpacked((*env_p)->msg, NULL);
    free(*env_p);
    *env_p = NULL;
}
