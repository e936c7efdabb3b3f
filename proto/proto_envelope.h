/* proto_envelope.h - signed envelopes: sign and verify a body under a per-type context.
 *
 * signature = ECDSA P-256 over SHA-256(context || 0x00 || body), DER-encoded with low S
 * (s <= n/2, proto_ecdsa.h), where context
 * is the fixed ASCII string of the body's type, so no signed body can be replayed as
 * another type. key id = SHA-256 of the signing key's SubjectPublicKeyInfo (DER).
 * Verification works on the exact bytes that were signed and never re-serializes.
 *
 * Untrusted envelopes are checked in a fixed order: size, parse, algorithm, key id and
 * version, then the signature. Only after proto_envelope_verify() returns 0 may the body
 * be believed (and decoded with proto_decode_*()). */
#ifndef PROTO_ENVELOPE_H
#define PROTO_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>
#include <openssl/evp.h>

#include "proto_limits.h"
#include "qc_error.h"

#define PROTO_DIGEST_SIZE 32 /* SHA-256 */
#define PROTO_KEY_ID_SIZE 32
#define PROTO_SIG_RAW_SIZE 64 /* r || s, 32 bytes each, as PKCS#11 returns it */
#define PROTO_SIG_DER_MAX 72  /* SEQUENCE of two 33-byte INTEGERs */

_Static_assert(PROTO_SIG_DER_MAX + PROTO_KEY_ID_SIZE + 64 <= PROTO_ENVELOPE_FIXED_MAX,
               "signature, key id, version, algorithm and tags fit beside body and cert");

typedef enum proto_type {
    PROTO_TYPE_LOAD_REQUEST = 0,
    PROTO_TYPE_LOAD_ALLOW,
    PROTO_TYPE_EXECUTION_REPORT,
    PROTO_TYPE_LOAD_OUTCOME,
    PROTO_TYPE_AUDIT_CHECKPOINT,
    PROTO_TYPE_CARD_CHALLENGE, /* IC card protocol (proto/card.proto) */
    PROTO_TYPE_CARD_CREDIT,
    PROTO_TYPE_CARD_RECEIPT,
    PROTO_TYPE_COUNT
} proto_type_t;

/* Returns the context string of type ("quancun/v1/LoadRequest", ...). Asserts on a type
 * outside the enum. */
const char *proto_type_context(proto_type_t type);

/* Computes SHA-256(context(type) || 0x00 || body) into digest: the value that is signed.
 * Returns 0, or QC_ECRYPTO. */
QC_MUST_CHECK int proto_envelope_digest(proto_type_t type, const uint8_t *body, size_t body_len,
                                        uint8_t digest[PROTO_DIGEST_SIZE]);

/* Computes plain SHA-256(bytes): the request digest and the allow digest of docs/DESIGN.md
 * section 2. Returns 0, or QC_ECRYPTO. */
QC_MUST_CHECK int proto_sha256(const uint8_t *bytes, size_t len, uint8_t digest[PROTO_DIGEST_SIZE]);

/* Computes the key id of a public (or private) EC key: SHA-256 of its SPKI DER.
 * Returns 0, or QC_ECRYPTO. */
QC_MUST_CHECK int proto_key_id(EVP_PKEY *key, uint8_t key_id[PROTO_KEY_ID_SIZE]);

/* Signs body as type with a software key (devices, tests) and serializes the Signed
 * envelope. cert_der may be NULL (cert_len 0); when given it travels in the envelope.
 * On success *out is a malloc'd buffer the caller frees and *out_len its length.
 * Returns 0, QC_EINVAL (not a P-256 key, body empty), QC_ECRYPTO or QC_ENOMEM; on error
 * *out is NULL. */
QC_MUST_CHECK int proto_envelope_sign(proto_type_t type, const uint8_t *body, size_t body_len,
                                      EVP_PKEY *key, uint32_t key_version, const uint8_t *cert_der,
                                      size_t cert_len, uint8_t **out, size_t *out_len);

/* Builds a Signed envelope around a signature made elsewhere (the HSM): sig_der is the
 * DER signature over proto_envelope_digest(type, body), with low S (a high S is QC_EINVAL:
 * normalize with proto_ecdsa_raw_low_s() first). Same ownership and errors as
 * proto_envelope_sign(). */
QC_MUST_CHECK int proto_envelope_seal(const uint8_t *body, size_t body_len,
                                      const uint8_t key_id[PROTO_KEY_ID_SIZE], uint32_t key_version,
                                      const uint8_t *sig_der, size_t sig_len,
                                      const uint8_t *cert_der, size_t cert_len, uint8_t **out,
                                      size_t *out_len);

/* A parsed, not yet verified, envelope. Opaque. */
typedef struct proto_envelope proto_envelope_t;

/* Parses untrusted bytes into an envelope: size (PROTO_ENVELOPE_MAX), protobuf parse, the
 * canonical encoding (proto_decode_canonical(): packed again it must equal bytes),
 * algorithm, presence and sizes of key id, version and signature. No crypto is done.
 * Returns 0 and sets *out, or QC_ETOOBIG, QC_EDECODE, QC_EMISSING, QC_EALG, QC_ENOMEM
 * with *out NULL. */
QC_MUST_CHECK int proto_envelope_open(const uint8_t *bytes, size_t len, proto_envelope_t **out);

/* Verifies env as a signature of type by key: the envelope's key id must equal key's id
 * (else QC_EKEYID), key must be P-256 (else QC_EALG), then the signature must be strict
 * DER with low S and verify (else QC_EBADSIG).
 * Returns 0 only when the body may be believed. */
QC_MUST_CHECK int proto_envelope_verify(const proto_envelope_t *env, proto_type_t type,
                                        EVP_PKEY *key);

/* A public key prepared for verifying many envelopes: its key id computed and its OpenSSL
 * verify context initialized once. OpenSSL 3 spends about as much on fetching, key id and
 * context set-up as on the P-256 arithmetic of one verification (perf of the gateway and the
 * ledger, docs/PERFORMANCE.md), so the services keep one per cached device key.
 * proto_envelope_verify_prepared() checks exactly what proto_envelope_verify() checks, in the
 * same order, with the same codes. A verifier is used by one thread at a time. */
typedef struct proto_verifier proto_verifier_t;

/* Prepares key (up-referenced: the caller keeps its own reference). Returns 0 and sets *out,
 * or QC_ENOMEM, QC_ECRYPTO with *out NULL. A key that is not P-256 is prepared too, and every
 * envelope checked with it then fails as proto_envelope_verify() fails it. */
QC_MUST_CHECK int proto_verifier_new(EVP_PKEY *key, proto_verifier_t **out);

/* proto_envelope_verify(env, type, the verifier's key), without the per-call set-up. */
QC_MUST_CHECK int proto_envelope_verify_prepared(const proto_envelope_t *env, proto_type_t type,
                                                 proto_verifier_t *v);

/* The verifier's key, borrowed: valid until proto_verifier_destroy(). */
EVP_PKEY *proto_verifier_key(const proto_verifier_t *v);

/* Frees v and its reference to the key; nulls *v_p; accepts NULL. */
void proto_verifier_destroy(proto_verifier_t **v_p);

/* Borrowed views into the envelope, valid until it is destroyed. */
const uint8_t *proto_envelope_body(const proto_envelope_t *env, size_t *len);
const uint8_t *proto_envelope_key_id(const proto_envelope_t *env); /* PROTO_KEY_ID_SIZE bytes */
uint32_t proto_envelope_key_version(const proto_envelope_t *env);
/* The certificate carried in the envelope, or NULL with *len 0 when there is none. */
const uint8_t *proto_envelope_cert(const proto_envelope_t *env, size_t *len);

/* Frees env and sets *env_p to NULL; accepts NULL and a NULL *env_p. */
void proto_envelope_destroy(proto_envelope_t **env_p);

#endif
