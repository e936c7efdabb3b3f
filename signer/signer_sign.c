/* signer_sign.c - checks a sign request's body against its kind, signs it in the token, seals it.
 *
 * Untrusted input is checked in a fixed order: size, SignRequest parse, kind, then the body
 * must decode as the kind's message. Only then is the digest computed and the token asked
 * to sign. The token returns raw r || s; the envelope carries DER. */
#include "signer_sign.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_log.h"
#include "ops_metrics.h"
#include "ops_time.h"
#include "proto_decode.h"
#include "proto_ecdsa.h"
#include "proto_envelope.h"
#include "qc_error.h"
#include "signer.pb-c.h"

#define SIGNER_HEX_MAX (2 * PROTO_TXN_ID_SIZE + 1)
#define SIGNER_NUM_MAX 24 /* decimal uint64 and the NUL */
#define SIGNER_NS_PER_S 1e9

typedef struct signer_kind_info {
    const char *label;
    const char *name;
    proto_type_t type;
    Quancun__SignKind wire;
} signer_kind_info_t;

static const signer_kind_info_t signer_kinds[SIGNER_KIND_COUNT] = {
    [SIGNER_KIND_ALLOW] = {"allow-signing", "load_allow", PROTO_TYPE_LOAD_ALLOW,
                           QUANCUN__SIGN_KIND__SIGN_LOAD_ALLOW},
    [SIGNER_KIND_OUTCOME] = {"outcome-signing", "load_outcome", PROTO_TYPE_LOAD_OUTCOME,
                             QUANCUN__SIGN_KIND__SIGN_LOAD_OUTCOME},
    [SIGNER_KIND_CHECKPOINT] = {"audit-checkpoint", "audit_checkpoint", PROTO_TYPE_AUDIT_CHECKPOINT,
                                QUANCUN__SIGN_KIND__SIGN_AUDIT_CHECKPOINT},
};

struct signer_keyring {
    signer_key_t *keys[SIGNER_KIND_COUNT];
    char version_text[SIGNER_KIND_COUNT][SIGNER_NUM_MAX];
    ops_counter_t *signed_total[SIGNER_KIND_COUNT];
    ops_counter_t *refused_total;
    ops_counter_t *failed_total;
    ops_histogram_t *sign_seconds;
};

const char *signer_kind_label(signer_kind_t kind)
{
    assert((unsigned)kind < SIGNER_KIND_COUNT);
    return signer_kinds[kind].label;
}

const char *signer_kind_name(signer_kind_t kind)
{
    assert((unsigned)kind < SIGNER_KIND_COUNT);
    return signer_kinds[kind].name;
}

int signer_keyring_load(signer_token_t *tok, const uint32_t versions[SIGNER_KIND_COUNT],
                        signer_keyring_t **out)
{
    assert(tok != NULL);
    assert(versions != NULL);
    assert(out != NULL);
    *out = NULL;
    signer_keyring_t *ring = calloc(1, sizeof(*ring));
    if (ring == NULL)
        return QC_ENOMEM;
    for (int k = 0; k < SIGNER_KIND_COUNT; k++) {
        int rc = signer_token_find_key(tok, signer_kinds[k].label, versions[k], &ring->keys[k]);
        if (rc != 0) {
            signer_keyring_destroy(&ring);
            return rc;
        }
        snprintf(ring->version_text[k], SIGNER_NUM_MAX, "%" PRIu32, versions[k]);
        char name[OPS_METRICS_NAME_MAX];
        snprintf(name, sizeof(name), "qc_signer_signatures_total{kind=\"%s\"}",
                 signer_kinds[k].name);
        ring->signed_total[k] = ops_counter(name, "Signatures made by the token, by kind");
    }
    ring->refused_total =
        ops_counter("qc_signer_refused_total", "Sign requests refused before signing");
    ring->failed_total = ops_counter("qc_signer_failed_total", "Token signing failures");
    ring->sign_seconds = ops_histogram("qc_signer_sign_seconds", "Time to check, sign and seal");
    *out = ring;
    return 0;
}

const signer_key_t *signer_keyring_key(const signer_keyring_t *ring, signer_kind_t kind)
{
    assert(ring != NULL);
    assert((unsigned)kind < SIGNER_KIND_COUNT);
    return ring->keys[kind];
}

void signer_keyring_destroy(signer_keyring_t **ring_p)
{
    if (ring_p == NULL || *ring_p == NULL)
        return;
    for (int k = 0; k < SIGNER_KIND_COUNT; k++)
        signer_key_destroy(&(*ring_p)->keys[k]);
    free(*ring_p);
    *ring_p = NULL;
}

/* Decodes body as kind's message; fills txn (hex txn id, or "seq:N" for a checkpoint) for
 * the audit event. Returns 0 or the decoder's code. */
static int signer_check_body(signer_kind_t kind, const uint8_t *body, size_t len,
                             char txn[SIGNER_HEX_MAX + SIGNER_NUM_MAX])
{
    int rc;
    switch (kind) {
    case SIGNER_KIND_ALLOW: {
        Quancun__LoadAllow *m = NULL;
        rc = proto_decode_load_allow(body, len, &m);
        if (rc == 0)
            ops_hex(m->txn_id.data, m->txn_id.len, txn);
        quancun__load_allow__free_unpacked(m, NULL);
        return rc;
    }
    case SIGNER_KIND_OUTCOME: {
        Quancun__LoadOutcome *m = NULL;
        rc = proto_decode_load_outcome(body, len, &m);
        if (rc == 0)
            ops_hex(m->txn_id.data, m->txn_id.len, txn);
        quancun__load_outcome__free_unpacked(m, NULL);
        return rc;
    }
    case SIGNER_KIND_CHECKPOINT: {
        Quancun__AuditCheckpoint *m = NULL;
        rc = proto_decode_audit_checkpoint(body, len, &m);
        if (rc == 0)
            snprintf(txn, SIGNER_HEX_MAX + SIGNER_NUM_MAX, "seq:%" PRIu64, m->seq);
        quancun__audit_checkpoint__free_unpacked(m, NULL);
        return rc;
    }
    default:
        assert(!"unreachable kind");
        return QC_EINTERNAL;
    }
}

/* Maps the wire kind to ours; returns -1 for SIGN_NONE and unknown values. */
static int signer_kind_of(Quancun__SignKind wire)
{
    for (int k = 0; k < SIGNER_KIND_COUNT; k++) {
        if (signer_kinds[k].wire == wire)
            return k;
    }
    return -1;
}

/* Signs body as kind and packs the SignReply. */
static int signer_sign_body(signer_session_t *sess, const signer_keyring_t *ring,
                            signer_kind_t kind, const uint8_t *body, size_t len, uint8_t **reply,
                            size_t *reply_len)
{
    const signer_key_t *key = ring->keys[kind];
    uint8_t digest[PROTO_DIGEST_SIZE];
    if (proto_envelope_digest(signer_kinds[kind].type, body, len, digest) != 0)
        return QC_ECRYPTO;
    uint8_t raw[PROTO_SIG_RAW_SIZE];
    int rc = signer_session_sign(sess, key, digest, raw);
    if (rc != 0)
        return rc;
    uint8_t der[PROTO_SIG_DER_MAX];
    size_t der_len = 0;
    /* A token that returns r or s of zero is broken: raw_to_der refuses it. */
    if (proto_ecdsa_raw_to_der(raw, der, sizeof(der), &der_len) != 0)
        return QC_ECRYPTO;
    uint8_t *env = NULL;
    size_t env_len = 0;
    rc = proto_envelope_seal(body, len, signer_key_id(key), signer_key_version(key), der, der_len,
                             NULL, 0, &env, &env_len);
    if (rc != 0)
        return rc == QC_ENOMEM ? QC_ENOMEM : QC_ECRYPTO;
    Quancun__SignReply msg = QUANCUN__SIGN_REPLY__INIT;
    msg.signed_.data = env;
    msg.signed_.len = env_len;
    rc = proto_pack(&msg.base, reply, reply_len);
    free(env);
    return rc;
}

int signer_sign_request(signer_session_t *sess, const signer_keyring_t *ring, const uint8_t *req,
                        size_t req_len, uint8_t **reply, size_t *reply_len,
                        char msg[SIGNER_MESSAGE_MAX])
{
    assert(sess != NULL);
    assert(ring != NULL);
    assert(reply != NULL);
    assert(reply_len != NULL);
    assert(msg != NULL);
    uint64_t start_ns = ops_time_mono_ns();
    *reply = NULL;
    *reply_len = 0;
    msg[0] = '\0';
    if (req_len > SIGNER_REQUEST_MAX) {
        snprintf(msg, SIGNER_MESSAGE_MAX, "sign request over %d bytes", SIGNER_REQUEST_MAX);
        ops_counter_add(ring->refused_total, 1);
        return QC_ETOOBIG;
    }
    Quancun__SignRequest *sr = quancun__sign_request__unpack(NULL, req_len, req);
    if (sr == NULL) {
        snprintf(msg, SIGNER_MESSAGE_MAX, "not a SignRequest");
        ops_counter_add(ring->refused_total, 1);
        return QC_EDECODE;
    }
    int kind = signer_kind_of(sr->kind);
    if (kind < 0) {
        snprintf(msg, SIGNER_MESSAGE_MAX, "unknown sign kind %d", (int)sr->kind);
        quancun__sign_request__free_unpacked(sr, NULL);
        ops_counter_add(ring->refused_total, 1);
        return QC_EDECODE;
    }
    char txn[SIGNER_HEX_MAX + SIGNER_NUM_MAX] = "";
    int rc = signer_check_body((signer_kind_t)kind, sr->body.data, sr->body.len, txn);
    if (rc != 0) {
        /* The contract is one code for "not the kind's message"; the detail goes in words. */
        snprintf(msg, SIGNER_MESSAGE_MAX, "body is not a valid %s: %s", signer_kinds[kind].name,
                 qc_strerror(rc));
        quancun__sign_request__free_unpacked(sr, NULL);
        ops_counter_add(ring->refused_total, 1);
        ops_log_limited(OPS_LOG_WARN, "sign.refused", NULL, "kind", signer_kinds[kind].name,
                        "reason", msg, NULL);
        return QC_EDECODE;
    }
    rc = signer_sign_body(sess, ring, (signer_kind_t)kind, sr->body.data, sr->body.len, reply,
                          reply_len);
    quancun__sign_request__free_unpacked(sr, NULL);
    if (rc != 0) {
        snprintf(msg, SIGNER_MESSAGE_MAX, "signing failed: %s", qc_strerror(rc));
        ops_counter_add(ring->failed_total, 1);
        return rc;
    }
    ops_counter_add(ring->signed_total[kind], 1);
    ops_histogram_observe(ring->sign_seconds,
                          (double)(ops_time_mono_ns() - start_ns) / SIGNER_NS_PER_S);
    /* The audit event of this signature: a log line here, and the signed envelope itself goes
     * to the audit service from the main thread (signer_audit_signature), at least once. */
    const signer_key_t *key = ring->keys[kind];
    ops_log(OPS_LOG_INFO, "sign", "label", signer_key_label(key), "version",
            ring->version_text[kind], "kind", signer_kinds[kind].name, "txn_id", txn, NULL);
    return 0;
}
