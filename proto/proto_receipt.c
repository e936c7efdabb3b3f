/* proto_receipt.c - signed tree heads, receipts of a load and consistency, for any verifier. */
#include "proto_receipt.h"

#include <assert.h>
#include <string.h>

#include <openssl/crypto.h>

#include "audit.pb-c.h"
#include "ops_bytes.h"
#include "proto_decode.h"
#include "proto_envelope.h"

/* The audit encoding's fixed head: version, seq, time_ms, source_seq (audit_chain.h). */
#define ENTRY_SEQ_OFF 1
#define ENTRY_SOURCE_LEN_OFF 25

int proto_tree_head_open(const uint8_t *signed_head, size_t len, EVP_PKEY *key,
                         proto_tree_head_t *head)
{
    bool has_root = false;
    int rc = proto_checkpoint_open(signed_head, len, key, head, &has_root);
    if (rc == 0 && !has_root)
        rc = QC_EMISSING;
    return rc;
}

int proto_checkpoint_open(const uint8_t *signed_head, size_t len, EVP_PKEY *key,
                          proto_tree_head_t *head, bool *has_root)
{
    assert(key != NULL);
    assert(head != NULL);
    assert(has_root != NULL);
    memset(head, 0, sizeof *head);
    *has_root = false;
    if (signed_head == NULL || len == 0)
        return QC_EMISSING;
    if (len > PROTO_ENVELOPE_MAX)
        return QC_ETOOBIG;
    proto_envelope_t *env = NULL;
    int rc = proto_envelope_open(signed_head, len, &env);
    if (rc != 0)
        return rc;
    if ((rc = proto_envelope_verify(env, PROTO_TYPE_AUDIT_CHECKPOINT, key)) != 0) {
        proto_envelope_destroy(&env);
        return rc;
    }
    size_t body_len = 0;
    const uint8_t *body = proto_envelope_body(env, &body_len);
    Quancun__AuditCheckpoint *cp = NULL;
    rc = proto_decode_audit_checkpoint(body, body_len, &cp);
    proto_envelope_destroy(&env);
    if (rc != 0)
        return rc;
    /* The decoder checked the lengths: hash 32 bytes, root absent or 32 bytes. */
    assert(cp->hash.len == PROTO_MERKLE_HASH_SIZE);
    *has_root = cp->root.len == PROTO_MERKLE_HASH_SIZE;
    head->size = cp->seq;
    head->time_ms = cp->time_ms;
    if (*has_root)
        memcpy(head->root, cp->root.data, PROTO_MERKLE_HASH_SIZE);
    memcpy(head->chain_hash, cp->hash.data, PROTO_MERKLE_HASH_SIZE);
    quancun__audit_checkpoint__free_unpacked(cp, NULL);
    return 0;
}

int proto_tree_head_consistent(const proto_tree_head_t *old_head, const proto_tree_head_t *new_head,
                               const proto_merkle_hash_t *proof, size_t proof_len)
{
    assert(old_head != NULL);
    assert(new_head != NULL);
    if (new_head->size < old_head->size)
        return QC_EINVAL;
    return proto_merkle_verify_consistency(old_head->size, new_head->size, old_head->root,
                                           new_head->root, proof, proof_len);
}

/* Reads a u16-length-prefixed field at *off. */
static int entry_field(const uint8_t *e, size_t len, size_t *off, const uint8_t **p, size_t *n)
{
    if (len - *off < 2)
        return QC_EDECODE;
    *n = (size_t)ops_be_get(e + *off, 2);
    *off += 2;
    if (len - *off < *n)
        return QC_EDECODE;
    *p = e + *off;
    *off += *n;
    return 0;
}

int proto_receipt_entry_fields(const uint8_t *entry, size_t len, uint64_t *seq,
                               const uint8_t **txn_id, size_t *txn_id_len, const char **type,
                               size_t *type_len)
{
    assert(entry != NULL);
    assert(seq != NULL);
    assert(txn_id != NULL);
    assert(txn_id_len != NULL);
    assert(type != NULL);
    assert(type_len != NULL);
    if (len < ENTRY_SOURCE_LEN_OFF)
        return QC_EDECODE;
    if (entry[0] != PROTO_AUDIT_ENTRY_VERSION)
        return QC_EVERSION;
    *seq = ops_be_get(entry + ENTRY_SEQ_OFF, 8);
    size_t off = ENTRY_SOURCE_LEN_OFF, n = 0;
    const uint8_t *p = NULL;
    int rc = entry_field(entry, len, &off, &p, &n); /* source */
    if (rc == 0 && (n == 0 || n > PROTO_AUDIT_NAME_MAX))
        rc = QC_EDECODE;
    if (rc == 0)
        rc = entry_field(entry, len, &off, &p, &n); /* type */
    if (rc == 0 && (n == 0 || n > PROTO_AUDIT_NAME_MAX))
        rc = QC_EDECODE;
    if (rc != 0)
        return rc;
    *type = (const char *)p;
    *type_len = n;
    return entry_field(entry, len, &off, txn_id, txn_id_len);
}

/* Checks one proof of the reply against the verified head. */
static int receipt_entry(const Qcaudit__InclusionProof *pr, const proto_tree_head_t *head,
                         const uint8_t *txn_id, proto_receipt_t *out)
{
    if (pr->seq == 0 || pr->seq > head->size)
        return QC_EMISMATCH;
    if (pr->n_path > PROTO_MERKLE_PROOF_MAX)
        return QC_ETOOBIG;
    uint64_t seq = 0;
    const uint8_t *txn = NULL;
    const char *type = NULL;
    size_t txn_len = 0, type_len = 0;
    int rc = proto_receipt_entry_fields(pr->entry.data, pr->entry.len, &seq, &txn, &txn_len, &type,
                                        &type_len);
    if (rc != 0)
        return rc;
    if (seq != pr->seq || txn_len != PROTO_TXN_ID_SIZE ||
        CRYPTO_memcmp(txn, txn_id, PROTO_TXN_ID_SIZE) != 0)
        return QC_EMISMATCH;
    proto_merkle_hash_t path[PROTO_MERKLE_PROOF_MAX];
    for (size_t i = 0; i < pr->n_path; i++) {
        if (pr->path[i].len != PROTO_MERKLE_HASH_SIZE)
            return QC_EDECODE;
        memcpy(path[i], pr->path[i].data, PROTO_MERKLE_HASH_SIZE);
    }
    uint8_t leaf[PROTO_MERKLE_HASH_SIZE];
    if ((rc = proto_merkle_leaf_hash(pr->entry.data, pr->entry.len, leaf)) != 0)
        return rc;
    rc = proto_merkle_verify_inclusion(leaf, pr->seq - 1, head->size, path, pr->n_path, head->root);
    if (rc != 0)
        return rc;
    /* Strictly ascending: no entry proven twice to look like two. */
    if (out->entries > 0 && pr->seq <= out->seqs[out->entries - 1])
        return QC_EMISMATCH;
    out->seqs[out->entries] = pr->seq;
    memcpy(out->types[out->entries], type, type_len);
    out->types[out->entries][type_len] = '\0';
    out->entries++;
    return 0;
}

int proto_receipt_verify(const uint8_t *reply, size_t len, EVP_PKEY *key, const uint8_t *txn_id,
                         proto_receipt_t *out)
{
    assert(key != NULL);
    assert(txn_id != NULL);
    assert(out != NULL);
    memset(out, 0, sizeof *out);
    if (len > PROTO_RECEIPT_REPLY_MAX)
        return QC_ETOOBIG;
    if (reply == NULL || len == 0)
        return QC_EMISSING;
    Qcaudit__ProveReply *r = qcaudit__prove_reply__unpack(NULL, len, reply);
    if (r == NULL)
        return QC_EDECODE;
    int rc = qcaudit__prove_reply__get_packed_size(r) == len ? 0 : QC_EDECODE;
    if (rc == 0 && r->n_proofs > PROTO_RECEIPT_ENTRIES_MAX)
        rc = QC_ETOOBIG;
    if (rc == 0)
        rc = proto_tree_head_open(r->tree_head.data, r->tree_head.len, key, &out->head);
    for (size_t i = 0; rc == 0 && i < r->n_proofs; i++)
        rc = receipt_entry(r->proofs[i], &out->head, txn_id, out);
    if (rc == 0 && out->entries == 0)
        rc = QC_ENOTFOUND;
    out->pending = r->pending;
    out->more = r->more;
    qcaudit__prove_reply__free_unpacked(r, NULL);
    return rc;
}

int proto_receipt_check_request(const char *method, const uint8_t *body, size_t len)
{
    assert(method != NULL);
    if (len > PROTO_RECEIPT_REQUEST_MAX)
        return QC_ETOOBIG;
    if (len > 0 && body == NULL)
        return QC_EINVAL;
    int rc = 0;
    if (strcmp(method, PROTO_METHOD_RECEIPT) == 0) {
        Qcaudit__ProveRequest *r = qcaudit__prove_request__unpack(NULL, len, body);
        if (r == NULL)
            return QC_EDECODE;
        if (qcaudit__prove_request__get_packed_size(r) != len)
            rc = QC_EDECODE;
        else if (r->txn_id.len != PROTO_TXN_ID_SIZE)
            rc = QC_EINVAL;
        qcaudit__prove_request__free_unpacked(r, NULL);
        return rc;
    }
    if (strcmp(method, PROTO_METHOD_TREE_CONSISTENCY) == 0) {
        Qcaudit__ConsistencyRequest *r = qcaudit__consistency_request__unpack(NULL, len, body);
        if (r == NULL)
            return QC_EDECODE;
        if (qcaudit__consistency_request__get_packed_size(r) != len)
            rc = QC_EDECODE;
        else if (r->new_size != 0 && r->old_size > r->new_size)
            rc = QC_EINVAL;
        qcaudit__consistency_request__free_unpacked(r, NULL);
        return rc;
    }
    return QC_EMETHOD;
}

static int hashes_check(const ProtobufCBinaryData *h, size_t n)
{
    if (n > PROTO_MERKLE_PROOF_MAX)
        return QC_ETOOBIG;
    for (size_t i = 0; i < n; i++)
        if (h[i].len != PROTO_MERKLE_HASH_SIZE)
            return QC_EDECODE;
    return 0;
}

static int prove_reply_check(const Qcaudit__ProveReply *r)
{
    if (r->tree_head.len == 0)
        return QC_EMISSING;
    if (r->tree_head.len > PROTO_ENVELOPE_MAX || r->n_proofs > PROTO_RECEIPT_ENTRIES_MAX)
        return QC_ETOOBIG;
    for (size_t i = 0; i < r->n_proofs; i++) {
        int rc = hashes_check(r->proofs[i]->path, r->proofs[i]->n_path);
        if (rc != 0)
            return rc;
        if (r->proofs[i]->seq == 0 || r->proofs[i]->entry.len == 0)
            return QC_EDECODE;
    }
    return 0;
}

static int consistency_reply_check(const Qcaudit__ConsistencyReply *r)
{
    if (r->tree_head.len == 0)
        return QC_EMISSING;
    if (r->tree_head.len > PROTO_ENVELOPE_MAX || r->old_tree_head.len > PROTO_ENVELOPE_MAX)
        return QC_ETOOBIG;
    return hashes_check(r->proof, r->n_proof);
}

int proto_receipt_check_reply(const char *method, const uint8_t *body, size_t len)
{
    assert(method != NULL);
    if (len > PROTO_RECEIPT_REPLY_MAX)
        return QC_ETOOBIG;
    if (len == 0 || body == NULL)
        return QC_EMISSING;
    int rc = QC_EMETHOD;
    if (strcmp(method, PROTO_METHOD_RECEIPT) == 0) {
        Qcaudit__ProveReply *r = qcaudit__prove_reply__unpack(NULL, len, body);
        if (r == NULL)
            return QC_EDECODE;
        rc = qcaudit__prove_reply__get_packed_size(r) != len ? QC_EDECODE : prove_reply_check(r);
        qcaudit__prove_reply__free_unpacked(r, NULL);
    } else if (strcmp(method, PROTO_METHOD_TREE_CONSISTENCY) == 0) {
        Qcaudit__ConsistencyReply *r = qcaudit__consistency_reply__unpack(NULL, len, body);
        if (r == NULL)
            return QC_EDECODE;
        rc = qcaudit__consistency_reply__get_packed_size(r) != len ? QC_EDECODE
                                                                   : consistency_reply_check(r);
        qcaudit__consistency_reply__free_unpacked(r, NULL);
    }
    return rc;
}
