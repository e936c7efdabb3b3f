/* audit_chain.c - entry encoding and hash chain of the audit log (the evidence of the bank).
 *
 * Invariants of the log (audit_store.c keeps them, audit_verify.c checks them offline):
 *  1. Entries are keyed by seq; seqs start at 1 and are contiguous: there is no gap.
 *  2. Entry 1's prev_hash is 32 zero bytes; entry n's prev_hash is entry n-1's hash.
 *  3. hash = SHA-256(prev_hash || canonical(entry)), canonical as in audit_chain.h; the
 *     stored value is canonical || hash, nothing else.
 *  4. (source, source_seq) appears at most once in the log: an event delivered again is
 *     answered with the seq it already holds and is not appended.
 *  5. An entry is never rewritten or deleted. Every append is one LMDB write transaction
 *     that adds the entries together with their indexes (txn_id, dedupe, per-source
 *     high-water mark, checkpoints): an index never names an entry that is not there.
 *  6. A checkpoint entry (source "audit", type "audit.checkpoint", source_seq = the seq it
 *     covers) carries a Signed AuditCheckpoint {seq, hash, time} made by the
 *     audit-checkpoint key, where seq is an earlier entry and hash is that entry's hash.
 *  7. Nothing is acknowledged (RPC reply, outbox ack to a ledger) before the transaction
 *     holding it has committed (and so been fsynced).
 *
 * Life of an event:
 *
 *   received --audit_store_append()--> committed --reply / outbox_ack--> acknowledged
 *       |                                  ^
 *       +-- (source, source_seq) known ----+ (duplicate: same seq, nothing appended)
 *
 *   committed entries --audit_checkpoint (signer "sign")--> covered by a checkpoint entry
 */
#include "audit_chain.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "ops_bytes.h"
#include "proto_id.h"
#include "qc_error.h"

#define CHAIN_U16_MAX 0xffffu

int audit_chain_validate(const audit_entry_t *e)
{
    assert(e != NULL);
    if (e->source_len > AUDIT_SOURCE_MAX || e->type_len > AUDIT_TYPE_MAX ||
        e->txn_id_len > AUDIT_TXN_ID_MAX || e->payload_len > AUDIT_PAYLOAD_MAX)
        return QC_ETOOBIG;
    if (proto_id_check_len(e->source, e->source_len, AUDIT_SOURCE_MAX, PROTO_ID_VISIBLE) != 0 ||
        proto_id_check_len(e->type, e->type_len, AUDIT_TYPE_MAX, PROTO_ID_VISIBLE) != 0 ||
        e->seq == 0 || e->source_seq == 0 || (e->txn_id_len > 0 && e->txn_id == NULL) ||
        (e->payload_len > 0 && e->payload == NULL))
        return QC_EINVAL;
    return 0;
}

size_t audit_chain_encoded_len(const audit_entry_t *e)
{
    assert(e != NULL);
    return AUDIT_ENCODING_FIXED + e->source_len + e->type_len + e->txn_id_len + e->payload_len;
}

int audit_chain_encode(const audit_entry_t *e, uint8_t *out, size_t cap, size_t *len)
{
    assert(e != NULL);
    assert(out != NULL);
    assert(len != NULL);
    int rc = audit_chain_validate(e);
    if (rc != 0)
        return rc;
    size_t need = audit_chain_encoded_len(e);
    if (cap < need)
        return QC_ETOOBIG;
    uint8_t *p = out;
    *p++ = AUDIT_ENCODING_VERSION;
    p = ops_be_put(p, e->seq, 8);
    p = ops_be_put(p, e->time_ms, 8);
    p = ops_be_put(p, e->source_seq, 8);
    p = ops_be_put(p, e->source_len, 2);
    memcpy(p, e->source, e->source_len);
    p += e->source_len;
    p = ops_be_put(p, e->type_len, 2);
    memcpy(p, e->type, e->type_len);
    p += e->type_len;
    p = ops_be_put(p, e->txn_id_len, 2);
    if (e->txn_id_len > 0)
        memcpy(p, e->txn_id, e->txn_id_len);
    p += e->txn_id_len;
    p = ops_be_put(p, e->payload_len, 4);
    if (e->payload_len > 0)
        memcpy(p, e->payload, e->payload_len);
    p += e->payload_len;
    memcpy(p, e->prev_hash, AUDIT_HASH_SIZE);
    p += AUDIT_HASH_SIZE;
    assert((size_t)(p - out) == need);
    *len = need;
    return 0;
}

/* SHA-256(prev || enc) into hash. */
static int chain_digest(const uint8_t prev[AUDIT_HASH_SIZE], const uint8_t *enc, size_t enc_len,
                        uint8_t hash[AUDIT_HASH_SIZE])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (md == NULL)
        return QC_ENOMEM;
    unsigned int n = 0;
    int ok = EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(md, prev, AUDIT_HASH_SIZE) == 1 &&
             EVP_DigestUpdate(md, enc, enc_len) == 1 && EVP_DigestFinal_ex(md, hash, &n) == 1 &&
             n == AUDIT_HASH_SIZE;
    EVP_MD_CTX_free(md);
    return ok ? 0 : QC_ECRYPTO;
}

int audit_chain_hash(const audit_entry_t *e, uint8_t hash[AUDIT_HASH_SIZE])
{
    assert(e != NULL);
    assert(hash != NULL);
    int rc = audit_chain_validate(e);
    if (rc != 0)
        return rc;
    size_t cap = audit_chain_encoded_len(e), len = 0;
    uint8_t *buf = malloc(cap);
    if (buf == NULL)
        return QC_ENOMEM;
    rc = audit_chain_encode(e, buf, cap, &len);
    if (rc == 0)
        rc = chain_digest(e->prev_hash, buf, len, hash);
    free(buf);
    return rc;
}

int audit_chain_record(const audit_entry_t *e, uint8_t **out, size_t *out_len)
{
    assert(e != NULL);
    assert(out != NULL);
    assert(out_len != NULL);
    *out = NULL;
    int rc = audit_chain_validate(e);
    if (rc != 0)
        return rc;
    size_t cap = audit_chain_encoded_len(e) + AUDIT_HASH_SIZE, len = 0;
    uint8_t *buf = malloc(cap);
    if (buf == NULL)
        return QC_ENOMEM;
    rc = audit_chain_encode(e, buf, cap, &len);
    if (rc != 0) {
        free(buf);
        return rc;
    }
    memcpy(buf + len, e->hash, AUDIT_HASH_SIZE);
    *out = buf;
    *out_len = len + AUDIT_HASH_SIZE;
    return 0;
}

/* Reads a length-prefixed field of prefix bytes at *p, at most max long, from the rest of
 * the record ending at end. */
static int take_field(const uint8_t **p, const uint8_t *end, int prefix, size_t max,
                      const uint8_t **field, size_t *field_len)
{
    if ((size_t)(end - *p) < (size_t)prefix)
        return QC_EDECODE;
    uint64_t n = ops_be_get(*p, prefix);
    *p += prefix;
    if (n > max)
        return QC_ETOOBIG;
    if ((uint64_t)(end - *p) < n)
        return QC_EDECODE;
    *field = *p;
    *field_len = (size_t)n;
    *p += n;
    return 0;
}

int audit_chain_parse(const uint8_t *rec, size_t len, audit_entry_t *e)
{
    assert(rec != NULL);
    assert(e != NULL);
    memset(e, 0, sizeof *e);
    if (len > AUDIT_RECORD_MAX)
        return QC_ETOOBIG;
    if (len < AUDIT_ENCODING_FIXED + AUDIT_HASH_SIZE)
        return QC_EDECODE;
    const uint8_t *p = rec, *end = rec + len - AUDIT_HASH_SIZE;
    if (*p++ != AUDIT_ENCODING_VERSION)
        return QC_EVERSION;
    e->seq = ops_be_get(p, 8);
    e->time_ms = ops_be_get(p + 8, 8);
    e->source_seq = ops_be_get(p + 16, 8);
    p += 24;
    const uint8_t *f = NULL;
    int rc = take_field(&p, end, 2, AUDIT_SOURCE_MAX, &f, &e->source_len);
    e->source = (const char *)f;
    if (rc == 0) {
        rc = take_field(&p, end, 2, AUDIT_TYPE_MAX, &f, &e->type_len);
        e->type = (const char *)f;
    }
    if (rc == 0)
        rc = take_field(&p, end, 2, AUDIT_TXN_ID_MAX, &e->txn_id, &e->txn_id_len);
    if (rc == 0)
        rc = take_field(&p, end, 4, AUDIT_PAYLOAD_MAX, &e->payload, &e->payload_len);
    if (rc == 0 && (size_t)(end - p) != AUDIT_HASH_SIZE)
        rc = QC_EDECODE; /* the prev_hash must end the encoding exactly */
    if (rc != 0)
        return rc;
    memcpy(e->prev_hash, p, AUDIT_HASH_SIZE);
    memcpy(e->hash, end, AUDIT_HASH_SIZE);
    if (audit_chain_validate(e) != 0)
        return QC_EDECODE;
    return 0;
}

int audit_chain_check(const audit_entry_t *e, const uint8_t expected_prev[AUDIT_HASH_SIZE])
{
    assert(e != NULL);
    assert(expected_prev != NULL);
    uint8_t h[AUDIT_HASH_SIZE];
    int rc = audit_chain_hash(e, h);
    if (rc != 0)
        return rc;
    if (CRYPTO_memcmp(e->prev_hash, expected_prev, AUDIT_HASH_SIZE) != 0)
        return QC_EMISMATCH;
    if (CRYPTO_memcmp(h, e->hash, AUDIT_HASH_SIZE) != 0)
        return QC_EBADSIG;
    return 0;
}

int audit_chain_check_record(const uint8_t *rec, size_t len,
                             const uint8_t expected_prev[AUDIT_HASH_SIZE], audit_entry_t *e)
{
    assert(rec != NULL);
    assert(expected_prev != NULL);
    assert(e != NULL);
    int rc = audit_chain_parse(rec, len, e);
    if (rc != 0)
        return rc;
    uint8_t h[AUDIT_HASH_SIZE];
    if ((rc = chain_digest(e->prev_hash, rec, len - AUDIT_HASH_SIZE, h)) != 0)
        return rc;
    if (CRYPTO_memcmp(e->prev_hash, expected_prev, AUDIT_HASH_SIZE) != 0)
        return QC_EMISMATCH;
    if (CRYPTO_memcmp(h, e->hash, AUDIT_HASH_SIZE) != 0)
        return QC_EBADSIG;
    return 0;
}
