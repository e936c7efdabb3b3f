/* test_envelope.c - signed envelopes: round trips, type binding, tampering, keys, seal, parsing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/rand.h>

#include "proto_decode.h"
#include "proto_ecdsa.h"
#include "proto_envelope.h"
#include "qc_error.h"
#include "quancun.pb-c.h"
#include "wire_fields.h"

#define KEY_VERSION 3
#define GARBAGE_ROUNDS 2000
#define GARBAGE_LEN_MAX 256
#define LOW_S_ROUNDS 64 /* P(all 64 of OpenSSL's signatures already low) = 2^-64 */

typedef struct fixture {
    EVP_PKEY *key;   /* the signer */
    EVP_PKEY *other; /* another P-256 key */
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return -1;
    f->key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    f->other = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (f->key == NULL || f->other == NULL)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    EVP_PKEY_free(f->key);
    EVP_PKEY_free(f->other);
    free(f);
    return 0;
}

/* A body that differs per type, so a mixed-up test would notice. */
static size_t make_body(proto_type_t type, uint8_t *buf, size_t cap)
{
    int n = snprintf((char *)buf, cap, "body of type %d with some payload", (int)type);
    assert_true(n > 0 && (size_t)n < cap);
    return (size_t)n;
}

/* Unpacks an envelope in the test to tamper with it, and packs it again. */
static Quancun__Signed *raw_unpack(const uint8_t *buf, size_t len)
{
    Quancun__Signed *msg = quancun__signed__unpack(NULL, len, buf);
    assert_non_null(msg);
    return msg;
}

static void repack(const Quancun__Signed *msg, uint8_t **out, size_t *out_len)
{
    assert_int_equal(proto_pack(&msg->base, out, out_len), 0);
}

static int open_and_verify(const uint8_t *buf, size_t len, proto_type_t type, EVP_PKEY *key)
{
    proto_envelope_t *env = NULL;
    int rc = proto_envelope_open(buf, len, &env);
    if (rc != 0) {
        assert_null(env);
        return rc;
    }
    rc = proto_envelope_verify(env, type, key);
    /* The prepared path (a key id and verify context made once, as the gateway and the ledger
     * keep them) gives the same verdict every time, on every case of this file. */
    proto_verifier_t *v = NULL;
    assert_int_equal(proto_verifier_new(key, &v), 0);
    assert_ptr_equal(proto_verifier_key(v), key);
    for (int i = 0; i < 2; i++)
        assert_int_equal(proto_envelope_verify_prepared(env, type, v), rc);
    proto_verifier_destroy(&v);
    assert_null(v);
    proto_envelope_destroy(&env);
    assert_null(env);
    return rc;
}

static void test_contexts_and_digest(void **state)
{
    (void)state;
    assert_string_equal(proto_type_context(PROTO_TYPE_LOAD_REQUEST), "quancun/v1/LoadRequest");
    assert_string_equal(proto_type_context(PROTO_TYPE_LOAD_ALLOW), "quancun/v1/LoadAllow");
    assert_string_equal(proto_type_context(PROTO_TYPE_EXECUTION_REPORT),
                        "quancun/v1/ExecutionReport");
    assert_string_equal(proto_type_context(PROTO_TYPE_LOAD_OUTCOME), "quancun/v1/LoadOutcome");
    assert_string_equal(proto_type_context(PROTO_TYPE_AUDIT_CHECKPOINT),
                        "quancun/v1/AuditCheckpoint");
    assert_string_equal(proto_type_context(PROTO_TYPE_CARD_CHALLENGE), "quancun/v1/CardChallenge");
    assert_string_equal(proto_type_context(PROTO_TYPE_CARD_CREDIT), "quancun/v1/CardCredit");
    assert_string_equal(proto_type_context(PROTO_TYPE_CARD_RECEIPT), "quancun/v1/CardReceipt");

    /* digest = SHA-256("quancun/v1/LoadAllow" || 0x00 || "abc"), computed independently. */
    static const char concat[] = "quancun/v1/LoadAllow\0abc";
    uint8_t expect[PROTO_DIGEST_SIZE];
    unsigned int len = 0;
    assert_int_equal(EVP_Digest(concat, sizeof(concat) - 1, expect, &len, EVP_sha256(), NULL), 1);
    uint8_t got[PROTO_DIGEST_SIZE];
    assert_int_equal(proto_envelope_digest(PROTO_TYPE_LOAD_ALLOW, (const uint8_t *)"abc", 3, got),
                     0);
    assert_memory_equal(got, expect, PROTO_DIGEST_SIZE);

    /* Known SHA-256("abc") vector (FIPS 180-2). */
    static const uint8_t abc[PROTO_DIGEST_SIZE] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea,
                                                   0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
                                                   0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c,
                                                   0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    assert_int_equal(proto_sha256((const uint8_t *)"abc", 3, got), 0);
    assert_memory_equal(got, abc, PROTO_DIGEST_SIZE);
}

static void test_round_trip_each_type(void **state)
{
    fixture_t *f = *state;
    uint8_t key_id[PROTO_KEY_ID_SIZE];
    assert_int_equal(proto_key_id(f->key, key_id), 0);
    for (int t = 0; t < PROTO_TYPE_COUNT; t++) {
        uint8_t body[128];
        size_t body_len = make_body((proto_type_t)t, body, sizeof(body));
        uint8_t *buf = NULL;
        size_t len = 0;
        assert_int_equal(proto_envelope_sign((proto_type_t)t, body, body_len, f->key, KEY_VERSION,
                                             NULL, 0, &buf, &len),
                         0);
        assert_non_null(buf);
        assert_true(len <= PROTO_ENVELOPE_MAX);

        proto_envelope_t *env = NULL;
        assert_int_equal(proto_envelope_open(buf, len, &env), 0);
        assert_int_equal(proto_envelope_verify(env, (proto_type_t)t, f->key), 0);
        size_t got_len = 0;
        const uint8_t *got = proto_envelope_body(env, &got_len);
        assert_int_equal(got_len, body_len);
        assert_memory_equal(got, body, body_len);
        assert_memory_equal(proto_envelope_key_id(env), key_id, PROTO_KEY_ID_SIZE);
        assert_int_equal(proto_envelope_key_version(env), KEY_VERSION);
        size_t cert_len = 99;
        assert_null(proto_envelope_cert(env, &cert_len));
        assert_int_equal(cert_len, 0);

        /* The signature is plain ECDSA/SHA-256 over context || 0x00 || body: anyone with
         * OpenSSL and the spec can check it. */
        Quancun__Signed *msg = raw_unpack(buf, len);
        const char *ctx_str = proto_type_context((proto_type_t)t);
        size_t ctx_len = strlen(ctx_str);
        uint8_t concat[256];
        memcpy(concat, ctx_str, ctx_len);
        concat[ctx_len] = 0x00;
        memcpy(concat + ctx_len + 1, body, body_len);
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, f->key), 1);
        assert_int_equal(EVP_DigestVerify(md, msg->signature.data, msg->signature.len, concat,
                                          ctx_len + 1 + body_len),
                         1);
        EVP_MD_CTX_free(md);
        quancun__signed__free_unpacked(msg, NULL);

        proto_envelope_destroy(&env);
        assert_null(env);
        proto_envelope_destroy(&env); /* idempotent */
        free(buf);
    }
}

static void test_type_binding(void **state)
{
    fixture_t *f = *state;
    for (int t = 0; t < PROTO_TYPE_COUNT; t++) {
        uint8_t body[128];
        size_t body_len = make_body(PROTO_TYPE_LOAD_REQUEST, body, sizeof(body));
        uint8_t *buf = NULL;
        size_t len = 0;
        assert_int_equal(
            proto_envelope_sign((proto_type_t)t, body, body_len, f->key, 1, NULL, 0, &buf, &len),
            0);
        for (int u = 0; u < PROTO_TYPE_COUNT; u++) {
            int want = (u == t) ? 0 : QC_EBADSIG;
            assert_int_equal(open_and_verify(buf, len, (proto_type_t)u, f->key), want);
        }
        free(buf);
    }
}

static void test_tampered_body_and_signature(void **state)
{
    fixture_t *f = *state;
    uint8_t body[128];
    size_t body_len = make_body(PROTO_TYPE_LOAD_ALLOW, body, sizeof(body));
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(
        proto_envelope_sign(PROTO_TYPE_LOAD_ALLOW, body, body_len, f->key, 1, NULL, 0, &buf, &len),
        0);

    /* Every single-bit flip of the body is refused. */
    Quancun__Signed *msg = raw_unpack(buf, len);
    for (size_t bit = 0; bit < body_len * 8; bit++) {
        msg->body.data[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        uint8_t *t = NULL;
        size_t t_len = 0;
        repack(msg, &t, &t_len);
        assert_int_equal(open_and_verify(t, t_len, PROTO_TYPE_LOAD_ALLOW, f->key), QC_EBADSIG);
        free(t);
        msg->body.data[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    /* And every single-bit flip of the signature. */
    for (size_t bit = 0; bit < msg->signature.len * 8; bit++) {
        msg->signature.data[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        uint8_t *t = NULL;
        size_t t_len = 0;
        repack(msg, &t, &t_len);
        assert_int_equal(open_and_verify(t, t_len, PROTO_TYPE_LOAD_ALLOW, f->key), QC_EBADSIG);
        free(t);
        msg->signature.data[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    /* Untouched, it still verifies: the refusals above were about the flips. */
    uint8_t *t = NULL;
    size_t t_len = 0;
    repack(msg, &t, &t_len);
    assert_int_equal(open_and_verify(t, t_len, PROTO_TYPE_LOAD_ALLOW, f->key), 0);
    free(t);
    quancun__signed__free_unpacked(msg, NULL);
    free(buf);
}

static void test_wrong_key_and_forged_signature(void **state)
{
    fixture_t *f = *state;
    uint8_t body[128];
    size_t body_len = make_body(PROTO_TYPE_EXECUTION_REPORT, body, sizeof(body));
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(proto_envelope_sign(PROTO_TYPE_EXECUTION_REPORT, body, body_len, f->other, 1,
                                         NULL, 0, &buf, &len),
                     0);
    /* Signed by other, checked against key: the ids differ. */
    assert_int_equal(open_and_verify(buf, len, PROTO_TYPE_EXECUTION_REPORT, f->key), QC_EKEYID);
    assert_int_equal(open_and_verify(buf, len, PROTO_TYPE_EXECUTION_REPORT, f->other), 0);

    /* A forger puts key's id on a signature made by other: the id matches, the math does not. */
    uint8_t key_id[PROTO_KEY_ID_SIZE];
    assert_int_equal(proto_key_id(f->key, key_id), 0);
    Quancun__Signed *msg = raw_unpack(buf, len);
    assert_int_equal(msg->key_id.len, PROTO_KEY_ID_SIZE);
    memcpy(msg->key_id.data, key_id, PROTO_KEY_ID_SIZE);
    uint8_t *forged = NULL;
    size_t forged_len = 0;
    repack(msg, &forged, &forged_len);
    assert_int_equal(open_and_verify(forged, forged_len, PROTO_TYPE_EXECUTION_REPORT, f->key),
                     QC_EBADSIG);
    free(forged);
    quancun__signed__free_unpacked(msg, NULL);
    free(buf);

    /* Only P-256 keys sign; a P-384 key is refused, and never matches a P-256 id. */
    EVP_PKEY *p384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    assert_non_null(p384);
    assert_int_equal(proto_envelope_sign(PROTO_TYPE_EXECUTION_REPORT, body, body_len, p384, 1, NULL,
                                         0, &buf, &len),
                     QC_EINVAL);
    assert_null(buf);
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(ed);
    assert_int_equal(proto_envelope_sign(PROTO_TYPE_EXECUTION_REPORT, body, body_len, ed, 1, NULL,
                                         0, &buf, &len),
                     QC_EINVAL);
    assert_int_equal(proto_envelope_sign(PROTO_TYPE_EXECUTION_REPORT, body, body_len, f->key, 1,
                                         NULL, 0, &buf, &len),
                     0);
    assert_int_equal(open_and_verify(buf, len, PROTO_TYPE_EXECUTION_REPORT, p384), QC_EKEYID);
    free(buf);
    EVP_PKEY_free(p384);
    EVP_PKEY_free(ed);
}

/* Signs a digest the way the signer's PKCS#11 path ends up doing: raw r||s from the token,
 * converted to DER, then sealed. */
/* Turns a low-S raw signature into its high-S twin: s = n - s. */
static void high_s_twin(uint8_t raw[PROTO_SIG_RAW_SIZE])
{
    static const uint8_t n[32] = {
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17,
        0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
    };
    assert_true(proto_ecdsa_raw_is_low_s(raw));
    unsigned borrow = 0;
    for (int i = 31; i >= 0; i--) {
        unsigned d = (unsigned)n[i] - raw[32 + i] - borrow;
        raw[32 + i] = (uint8_t)d;
        borrow = (d >> 8) & 1u;
    }
    assert_false(proto_ecdsa_raw_is_low_s(raw));
}

/* Every signature proto_envelope_sign makes is low-S; the high-S twin of one verifies with
 * OpenSSL but is refused by proto_envelope_verify, so each signature has one form. */
static void test_low_s_only(void **state)
{
    fixture_t *f = *state;
    uint8_t body[128];
    size_t body_len = make_body(PROTO_TYPE_LOAD_REQUEST, body, sizeof(body));
    for (int i = 0; i < LOW_S_ROUNDS; i++) {
        uint8_t *buf = NULL;
        size_t len = 0;
        assert_int_equal(proto_envelope_sign(PROTO_TYPE_LOAD_REQUEST, body, body_len, f->key, 1,
                                             NULL, 0, &buf, &len),
                         0);
        Quancun__Signed *msg = raw_unpack(buf, len);
        uint8_t raw[PROTO_SIG_RAW_SIZE];
        assert_int_equal(proto_ecdsa_der_to_raw(msg->signature.data, msg->signature.len, raw), 0);
        assert_true(proto_ecdsa_raw_is_low_s(raw));
        assert_int_equal(open_and_verify(buf, len, PROTO_TYPE_LOAD_REQUEST, f->key), 0);

        high_s_twin(raw);
        uint8_t der[PROTO_SIG_DER_MAX];
        size_t der_len = 0;
        assert_int_equal(proto_ecdsa_raw_to_der(raw, der, sizeof(der), &der_len), 0);
        uint8_t digest[PROTO_DIGEST_SIZE];
        assert_int_equal(proto_envelope_digest(PROTO_TYPE_LOAD_REQUEST, body, body_len, digest), 0);
        EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, f->key, NULL);
        assert_non_null(ctx);
        assert_int_equal(EVP_PKEY_verify_init(ctx), 1);
        assert_int_equal(EVP_PKEY_verify(ctx, der, der_len, digest, sizeof digest), 1);
        EVP_PKEY_CTX_free(ctx);

        ProtobufCBinaryData kept = msg->signature;
        msg->signature.data = der;
        msg->signature.len = der_len;
        uint8_t *twin = NULL;
        size_t twin_len = 0;
        repack(msg, &twin, &twin_len);
        assert_int_equal(open_and_verify(twin, twin_len, PROTO_TYPE_LOAD_REQUEST, f->key),
                         QC_EBADSIG);
        free(twin);
        msg->signature = kept; /* der is on the stack; free the unpacked copy */
        quancun__signed__free_unpacked(msg, NULL);
        free(buf);
    }
}

/* The envelope is checked for canonical encoding: the same fields in another order, a
 * signature field sent twice (garbage first, protobuf-c keeps the last) and a field present
 * with its default value are refused, although each parses to a valid, verifying envelope. */
static void test_open_canonical(void **state)
{
    fixture_t *f = *state;
    uint8_t body[128];
    size_t body_len = make_body(PROTO_TYPE_LOAD_REQUEST, body, sizeof(body));
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(proto_envelope_sign(PROTO_TYPE_LOAD_REQUEST, body, body_len, f->key, 1, NULL,
                                         0, &buf, &len),
                     0);
    assert_int_equal(open_and_verify(buf, len, PROTO_TYPE_LOAD_REQUEST, f->key), 0);

    /* A garbage signature field in front of the whole valid envelope. */
    uint8_t twice[PROTO_ENVELOPE_MAX];
    static const uint8_t garbage[] = {0x2a, 0x08, 0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02};
    memcpy(twice, garbage, sizeof garbage);
    memcpy(twice + sizeof garbage, buf, len);
    Quancun__Signed *parsed = raw_unpack(twice, sizeof garbage + len);
    quancun__signed__free_unpacked(parsed, NULL); /* protobuf-c itself takes it */
    assert_int_equal(open_and_verify(twice, sizeof garbage + len, PROTO_TYPE_LOAD_REQUEST, f->key),
                     QC_EDECODE);

    /* The same fields in reverse order: the same length, the same meaning. */
    uint8_t reversed[PROTO_ENVELOPE_MAX];
    size_t reversed_len = wire_fields_reverse(buf, len, reversed);
    assert_int_equal(reversed_len, len);
    assert_memory_not_equal(reversed, buf, len);
    assert_int_equal(open_and_verify(reversed, len, PROTO_TYPE_LOAD_REQUEST, f->key), QC_EDECODE);

    /* An explicit empty cert field (tag 6, length 0) at the end. */
    uint8_t empty_cert[PROTO_ENVELOPE_MAX];
    memcpy(empty_cert, buf, len);
    empty_cert[len] = 0x32;
    empty_cert[len + 1] = 0x00;
    assert_int_equal(open_and_verify(empty_cert, len + 2, PROTO_TYPE_LOAD_REQUEST, f->key),
                     QC_EDECODE);
    free(buf);
}

static void test_seal_path(void **state)
{
    fixture_t *f = *state;
    uint8_t body[128];
    size_t body_len = make_body(PROTO_TYPE_LOAD_OUTCOME, body, sizeof(body));
    uint8_t digest[PROTO_DIGEST_SIZE];
    assert_int_equal(proto_envelope_digest(PROTO_TYPE_LOAD_OUTCOME, body, body_len, digest), 0);

    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, f->key, NULL);
    assert_non_null(ctx);
    assert_int_equal(EVP_PKEY_sign_init(ctx), 1);
    uint8_t der[PROTO_SIG_DER_MAX];
    size_t der_len = sizeof(der);
    assert_int_equal(EVP_PKEY_sign(ctx, der, &der_len, digest, sizeof(digest)), 1);
    EVP_PKEY_CTX_free(ctx);
    uint8_t raw[PROTO_SIG_RAW_SIZE];
    assert_int_equal(proto_ecdsa_der_to_raw(der, der_len, raw), 0);
    /* As the signer does after C_Sign: seal takes only the low-S form. */
    uint8_t high[PROTO_SIG_RAW_SIZE];
    memcpy(high, raw, sizeof high);
    assert_true(proto_ecdsa_raw_low_s(raw) >= 0);
    uint8_t sig[PROTO_SIG_DER_MAX];
    size_t sig_len = 0;
    assert_int_equal(proto_ecdsa_raw_to_der(raw, sig, sizeof(sig), &sig_len), 0);

    uint8_t key_id[PROTO_KEY_ID_SIZE];
    assert_int_equal(proto_key_id(f->key, key_id), 0);
    static const uint8_t cert[] = {0x30, 0x03, 0x02, 0x01, 0x05}; /* opaque to the envelope */
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(proto_envelope_seal(body, body_len, key_id, 7, sig, sig_len, cert,
                                         sizeof(cert), &buf, &len),
                     0);
    proto_envelope_t *env = NULL;
    assert_int_equal(proto_envelope_open(buf, len, &env), 0);
    assert_int_equal(proto_envelope_verify(env, PROTO_TYPE_LOAD_OUTCOME, f->key), 0);
    assert_int_equal(proto_envelope_verify(env, PROTO_TYPE_LOAD_ALLOW, f->key), QC_EBADSIG);
    assert_int_equal(proto_envelope_key_version(env), 7);
    size_t cert_len = 0;
    const uint8_t *got = proto_envelope_cert(env, &cert_len);
    assert_int_equal(cert_len, sizeof(cert));
    assert_memory_equal(got, cert, sizeof(cert));
    proto_envelope_destroy(&env);
    free(buf);

    /* Seal refuses what open would refuse. */
    buf = (uint8_t *)1;
    assert_int_equal(
        proto_envelope_seal(body, body_len, key_id, 0, sig, sig_len, NULL, 0, &buf, &len),
        QC_EINVAL);
    assert_null(buf);
    assert_int_equal(proto_envelope_seal(body, 0, key_id, 1, sig, sig_len, NULL, 0, &buf, &len),
                     QC_EINVAL);
    assert_int_equal(proto_envelope_seal(body, body_len, key_id, 1, sig, 7, NULL, 0, &buf, &len),
                     QC_EINVAL);
    uint8_t bad_sig[PROTO_SIG_DER_MAX];
    memcpy(bad_sig, sig, sig_len);
    bad_sig[0] = 0x31; /* not a SEQUENCE */
    assert_int_equal(
        proto_envelope_seal(body, body_len, key_id, 1, bad_sig, sig_len, NULL, 0, &buf, &len),
        QC_EINVAL);
    /* The high-S twin of the signature is refused by seal. */
    uint8_t twin[PROTO_SIG_RAW_SIZE];
    memcpy(twin, raw, sizeof twin);
    high_s_twin(twin);
    uint8_t twin_der[PROTO_SIG_DER_MAX];
    size_t twin_len = 0;
    assert_int_equal(proto_ecdsa_raw_to_der(twin, twin_der, sizeof(twin_der), &twin_len), 0);
    assert_int_equal(
        proto_envelope_seal(body, body_len, key_id, 1, twin_der, twin_len, NULL, 0, &buf, &len),
        QC_EINVAL);
    (void)high;
    uint8_t big_cert[PROTO_CERT_MAX + 1] = {0};
    assert_int_equal(proto_envelope_seal(body, body_len, key_id, 1, sig, sig_len, big_cert,
                                         sizeof(big_cert), &buf, &len),
                     QC_EINVAL);
}

/* Builds a Signed by hand, with every field valid unless the caller changes it. */
static void valid_signed(Quancun__Signed *msg, uint8_t *body, uint8_t *key_id, uint8_t *sig)
{
    quancun__signed__init(msg);
    memset(body, 'b', 10);
    memset(key_id, 'k', PROTO_KEY_ID_SIZE);
    static const uint8_t der[] = {0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02};
    memcpy(sig, der, sizeof(der));
    msg->body.data = body;
    msg->body.len = 10;
    msg->alg = QUANCUN__ALG__ALG_ECDSA_P256_SHA256;
    msg->key_id.data = key_id;
    msg->key_id.len = PROTO_KEY_ID_SIZE;
    msg->key_version = 1;
    msg->signature.data = sig;
    msg->signature.len = sizeof(der);
}

static int open_msg(const Quancun__Signed *msg)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    repack(msg, &buf, &len);
    proto_envelope_t *env = (proto_envelope_t *)1;
    int rc = proto_envelope_open(buf, len, &env);
    if (rc == 0)
        proto_envelope_destroy(&env);
    assert_null(env);
    free(buf);
    return rc;
}

static void test_open_shape(void **state)
{
    (void)state;
    static uint8_t body[PROTO_BODY_MAX + 1];
    static uint8_t key_id[PROTO_KEY_ID_SIZE + 1];
    static uint8_t sig[PROTO_SIG_DER_MAX + 1];
    static uint8_t cert[PROTO_CERT_MAX + 1];
    Quancun__Signed msg;

    valid_signed(&msg, body, key_id, sig);
    assert_int_equal(open_msg(&msg), 0); /* opens: no crypto is done in open */

    valid_signed(&msg, body, key_id, sig);
    msg.alg = QUANCUN__ALG__ALG_NONE;
    assert_int_equal(open_msg(&msg), QC_EALG);
    msg.alg = (Quancun__Alg)7;
    assert_int_equal(open_msg(&msg), QC_EALG);

    valid_signed(&msg, body, key_id, sig);
    msg.key_id.len = 0;
    assert_int_equal(open_msg(&msg), QC_EMISSING);
    msg.key_id.len = PROTO_KEY_ID_SIZE - 1;
    assert_int_equal(open_msg(&msg), QC_EDECODE);
    msg.key_id.len = PROTO_KEY_ID_SIZE + 1;
    assert_int_equal(open_msg(&msg), QC_EDECODE);

    valid_signed(&msg, body, key_id, sig);
    msg.key_version = 0;
    assert_int_equal(open_msg(&msg), QC_EMISSING);

    valid_signed(&msg, body, key_id, sig);
    msg.signature.len = 0;
    assert_int_equal(open_msg(&msg), QC_EMISSING);
    msg.signature.len = 7;
    assert_int_equal(open_msg(&msg), QC_EDECODE);
    msg.signature.len = PROTO_SIG_DER_MAX + 1;
    assert_int_equal(open_msg(&msg), QC_EDECODE);
    msg.signature.len = PROTO_SIG_DER_MAX;
    assert_int_equal(open_msg(&msg), 0);

    valid_signed(&msg, body, key_id, sig);
    msg.body.len = 0;
    assert_int_equal(open_msg(&msg), QC_EMISSING);
    msg.body.len = PROTO_BODY_MAX + 1;
    assert_int_equal(open_msg(&msg), QC_ETOOBIG);
    msg.body.len = PROTO_BODY_MAX;
    assert_int_equal(open_msg(&msg), 0);

    valid_signed(&msg, body, key_id, sig);
    msg.cert.data = cert;
    msg.cert.len = PROTO_CERT_MAX + 1;
    assert_int_equal(open_msg(&msg), QC_ETOOBIG);
    msg.cert.len = PROTO_CERT_MAX;
    assert_int_equal(open_msg(&msg), 0);
}

static void test_open_oversize_garbage_truncated(void **state)
{
    fixture_t *f = *state;
    proto_envelope_t *env = NULL;

    /* Oversize is refused before parsing, whatever the bytes. */
    uint8_t *big = calloc(1, PROTO_ENVELOPE_MAX + 1);
    assert_non_null(big);
    assert_int_equal(proto_envelope_open(big, PROTO_ENVELOPE_MAX + 1, &env), QC_ETOOBIG);
    assert_null(env);
    free(big);

    static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(proto_envelope_open(garbage, sizeof(garbage), &env), QC_EDECODE);
    assert_null(env);
    /* An empty buffer parses as an all-default message and fails the first shape check. */
    assert_int_equal(proto_envelope_open(garbage, 0, &env), QC_EALG);
    assert_null(env);

    uint8_t body[64];
    size_t body_len = make_body(PROTO_TYPE_LOAD_REQUEST, body, sizeof(body));
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(proto_envelope_sign(PROTO_TYPE_LOAD_REQUEST, body, body_len, f->key, 1, NULL,
                                         0, &buf, &len),
                     0);
    /* Every proper prefix is refused by open, or (if it happens to parse) by verify. */
    for (size_t cut = 0; cut < len; cut++) {
        int rc = open_and_verify(buf, cut, PROTO_TYPE_LOAD_REQUEST, f->key);
        assert_true(rc < 0);
    }

    /* Random bytes and random mutations of a valid envelope never crash. A mutation that
     * still verifies may only have touched what the signature does not cover (the key
     * version): the body must then be the one that was signed. */
    for (int i = 0; i < GARBAGE_ROUNDS; i++) {
        uint8_t junk[GARBAGE_LEN_MAX];
        size_t junk_len;
        if (i % 2 == 0) {
            uint8_t n = 0;
            assert_int_equal(RAND_bytes(&n, 1), 1);
            junk_len = n;
            assert_int_equal(RAND_bytes(junk, (int)sizeof(junk)), 1);
        } else {
            assert_true(len <= sizeof(junk));
            memcpy(junk, buf, len);
            junk_len = len;
            uint8_t pos[2];
            assert_int_equal(RAND_bytes(pos, 2), 1);
            junk[pos[0] % len] ^= (uint8_t)(pos[1] | 1);
        }
        proto_envelope_t *m = NULL;
        if (proto_envelope_open(junk, junk_len, &m) != 0) {
            assert_null(m);
            continue;
        }
        if (proto_envelope_verify(m, PROTO_TYPE_LOAD_REQUEST, f->key) == 0) {
            size_t got_len = 0;
            const uint8_t *got = proto_envelope_body(m, &got_len);
            assert_int_equal(got_len, body_len);
            assert_memory_equal(got, body, body_len);
        }
        proto_envelope_destroy(&m);
    }
    free(buf);
}

/* The key id is SHA-256 of the SPKI DER. proto_key_id() takes a shortcut for P-256 keys, so it
 * is checked against OpenSSL's own encoding: for fresh key pairs, for public-only keys read
 * back from DER, and for a P-384 key, which takes the general path. */
#define KEY_ID_ROUNDS 200
static void expect_key_id_is_spki_hash(EVP_PKEY *key)
{
    unsigned char *spki = NULL;
    int spki_len = i2d_PUBKEY(key, &spki);
    assert_true(spki_len > 0);
    uint8_t want[PROTO_KEY_ID_SIZE], got[PROTO_KEY_ID_SIZE];
    assert_int_equal(proto_sha256(spki, (size_t)spki_len, want), 0);
    assert_int_equal(proto_key_id(key, got), 0);
    assert_memory_equal(want, got, PROTO_KEY_ID_SIZE);

    const unsigned char *p = spki;
    EVP_PKEY *pub = d2i_PUBKEY(NULL, &p, spki_len);
    assert_non_null(pub);
    assert_int_equal(proto_key_id(pub, got), 0);
    assert_memory_equal(want, got, PROTO_KEY_ID_SIZE);
    EVP_PKEY_free(pub);
    OPENSSL_free(spki);
}

static void test_key_id_is_spki_hash(void **state)
{
    (void)state;
    for (int i = 0; i < KEY_ID_ROUNDS; i++) {
        EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        assert_non_null(key);
        expect_key_id_is_spki_hash(key);
        EVP_PKEY_free(key);
    }
    EVP_PKEY *p384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    assert_non_null(p384);
    expect_key_id_is_spki_hash(p384);
    EVP_PKEY_free(p384);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_contexts_and_digest),
        cmocka_unit_test(test_key_id_is_spki_hash),
        cmocka_unit_test_setup_teardown(test_round_trip_each_type, setup, teardown),
        cmocka_unit_test_setup_teardown(test_type_binding, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tampered_body_and_signature, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_key_and_forged_signature, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seal_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_low_s_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_canonical, setup, teardown),
        cmocka_unit_test(test_open_shape),
        cmocka_unit_test_setup_teardown(test_open_oversize_garbage_truncated, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
