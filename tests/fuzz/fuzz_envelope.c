/* fuzz_envelope.c - libFuzzer target over the Signed envelope: proto_envelope_open() and
 * proto_envelope_verify() for every message type, with the seeds' signing key.
 *
 * Properties, beyond "no crash, no leak, no undefined behaviour":
 * - no field believed without its signature: an envelope that verifies as type T carries a
 *   body fuzz_seed really signed as T (the fixed bodies of fuzz_msgs.c), so no mutation of a
 *   signed envelope verifies with a changed body, another type or another key id;
 * - the verdict agrees with OpenSSL asked directly (SHA-256 of context || 0x00 || body);
 * - canonical: an envelope that opens and can be sealed again re-packs to the same bytes
 *   (leaving out the unknown fields it may carry, which sealing cannot reproduce), once
 *   proto/ checks canonical bytes (FUZZ_CANONICAL_BYTES, see CMakeLists.txt). */
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "fuzz_common.h"
#include "fuzz_msgs.h"
#include "proto_envelope.h"
#include "quancun.pb-c.h"

static uint8_t signed_digest[PROTO_TYPE_COUNT][PROTO_DIGEST_SIZE];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    for (int t = 0; t < PROTO_TYPE_COUNT; t++) {
        uint8_t *body = NULL;
        size_t len = 0;
        fuzz_body((proto_type_t)t, &body, &len);
        FUZZ_CHECK(proto_envelope_digest((proto_type_t)t, body, len, signed_digest[t]) == 0);
        free(body);
    }
    return 0;
}

/* OpenSSL's own verdict on a DER signature by the seeds' key over digest. */
static int openssl_verifies(const uint8_t digest[PROTO_DIGEST_SIZE], const uint8_t *sig,
                            size_t sig_len)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, fuzz_key_signing(), NULL);
    FUZZ_CHECK(ctx != NULL);
    FUZZ_CHECK(EVP_PKEY_verify_init(ctx) == 1);
    FUZZ_CHECK(EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) == 1);
    int ok = EVP_PKEY_verify(ctx, sig, sig_len, digest, PROTO_DIGEST_SIZE);
    EVP_PKEY_CTX_free(ctx);
    return ok == 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    proto_envelope_t *env = NULL;
    if (proto_envelope_open(data, size, &env) != 0) {
        FUZZ_CHECK(env == NULL);
        return 0;
    }
    size_t body_len = 0, cert_len = 0;
    const uint8_t *body = proto_envelope_body(env, &body_len);
    const uint8_t *cert = proto_envelope_cert(env, &cert_len);
    FUZZ_CHECK(body_len <= PROTO_ENVELOPE_MAX && cert_len <= PROTO_ENVELOPE_MAX);

    /* The parts as protobuf-c sees them: open() accepted the bytes, so they parse. */
    Quancun__Signed *parts = quancun__signed__unpack(NULL, size, data);
    FUZZ_CHECK(parts != NULL);

    int verified = 0;
    for (int t = 0; t < PROTO_TYPE_COUNT; t++) {
        if (proto_envelope_verify(env, (proto_type_t)t, fuzz_key_signing()) != 0)
            continue;
        verified++;
        uint8_t digest[PROTO_DIGEST_SIZE];
        FUZZ_CHECK(proto_envelope_digest((proto_type_t)t, body, body_len, digest) == 0);
        FUZZ_CHECK(CRYPTO_memcmp(digest, signed_digest[t], PROTO_DIGEST_SIZE) == 0);
        FUZZ_CHECK(openssl_verifies(digest, parts->signature.data, parts->signature.len));
    }
    /* One body, one context: no signature verifies as two types. */
    FUZZ_CHECK(verified <= 1);

    /* Sealing the parts again must give the received bytes back when the signature is one
     * proto_envelope_seal() accepts (strict DER); it refuses the others with QC_EINVAL. An
     * envelope with unknown fields (kept and allowed, as in every message) cannot be sealed
     * with them, so only the others are compared. */
    uint8_t *sealed = NULL;
    size_t sealed_len = 0;
    int rc = proto_envelope_seal(body, body_len, proto_envelope_key_id(env),
                                 proto_envelope_key_version(env), parts->signature.data,
                                 parts->signature.len, cert, cert_len, &sealed, &sealed_len);
    if (rc == 0 && FUZZ_CANONICAL_BYTES) {
        /* protobuf-c packs unknown fields last: what sealing gives is then a prefix. */
        FUZZ_CHECK(parts->base.n_unknown_fields > 0 || sealed_len == size);
        FUZZ_CHECK(sealed_len <= size && memcmp(sealed, data, sealed_len) == 0);
    }
    free(sealed);
    quancun__signed__free_unpacked(parts, NULL);
    proto_envelope_destroy(&env);
    FUZZ_CHECK(env == NULL);
    return 0;
}
