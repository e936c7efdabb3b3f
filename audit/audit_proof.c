/* audit_proof.c - tree heads, inclusion and consistency proofs, answered from the store. */
#include "audit_proof.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "audit.pb-c.h"
#include "audit_chain.h"
#include "proto_decode.h"
#include "proto_limits.h"
#include "qc_error.h"

bool audit_proof_is_method(const char *method)
{
    return method != NULL && (strcmp(method, AUDIT_PROOF_METHOD_TREE_HEAD) == 0 ||
                              strcmp(method, AUDIT_PROOF_METHOD_PROVE) == 0 ||
                              strcmp(method, AUDIT_PROOF_METHOD_CONSISTENCY) == 0);
}

int audit_proof_tree_head(audit_store_t *store, uint64_t size, uint8_t **head, size_t *head_len,
                          uint64_t *covered)
{
    assert(store != NULL);
    assert(head != NULL);
    assert(head_len != NULL);
    assert(covered != NULL);
    *head = NULL;
    uint64_t entry_seq = 0;
    int rc = audit_store_checkpoint_for(store, size, &entry_seq, covered);
    if (rc == 0 && entry_seq == 0)
        rc = QC_ENOTFOUND;
    uint8_t *rec = NULL;
    size_t len = 0;
    if (rc == 0)
        rc = audit_store_get(store, entry_seq, &rec, &len);
    audit_entry_t e;
    if (rc == 0 && audit_chain_parse(rec, len, &e) != 0)
        rc = QC_EDECODE;
    if (rc == 0 && e.payload_len == 0)
        rc = QC_EDECODE;
    if (rc == 0 && (*head = malloc(e.payload_len)) == NULL)
        rc = QC_ENOMEM;
    if (rc == 0) {
        memcpy(*head, e.payload, e.payload_len);
        *head_len = e.payload_len;
    }
    free(rec);
    return rc;
}

/* Points out[0..n) into the hashes of h (no copy) for a repeated bytes field. */
static void hashes_view(proto_merkle_hash_t *h, size_t n, ProtobufCBinaryData *out)
{
    for (size_t i = 0; i < n; i++) {
        out[i].data = h[i];
        out[i].len = PROTO_MERKLE_HASH_SIZE;
    }
}

static int answer_tree_head(audit_store_t *store, const uint8_t *body, size_t len, uint8_t **reply,
                            size_t *reply_len)
{
    Qcaudit__TreeHeadRequest *req = qcaudit__tree_head_request__unpack(NULL, len, body);
    if (req == NULL)
        return QC_EDECODE;
    int rc = qcaudit__tree_head_request__get_packed_size(req) == len ? 0 : QC_EDECODE;
    Qcaudit__TreeHeadReply rep = QCAUDIT__TREE_HEAD_REPLY__INIT;
    uint64_t covered = 0;
    if (rc == 0)
        rc = audit_proof_tree_head(store, req->tree_size, &rep.tree_head.data, &rep.tree_head.len,
                                   &covered);
    if (rc == 0)
        rc = proto_pack(&rep.base, reply, reply_len);
    free(rep.tree_head.data);
    qcaudit__tree_head_request__free_unpacked(req, NULL);
    return rc;
}

/* One entry's proof: its record (kept in *rec for the reply's lifetime) and path. */
typedef struct proof_slot {
    Qcaudit__InclusionProof msg;
    uint8_t *rec;
    proto_merkle_hash_t path[PROTO_MERKLE_PROOF_MAX];
    ProtobufCBinaryData path_view[PROTO_MERKLE_PROOF_MAX];
} proof_slot_t;

static int proof_fill(audit_store_t *store, uint64_t seq, uint64_t size, proof_slot_t *s)
{
    qcaudit__inclusion_proof__init(&s->msg);
    size_t len = 0, path_len = 0;
    int rc = audit_store_get(store, seq, &s->rec, &len);
    if (rc == 0 && len <= AUDIT_HASH_SIZE)
        rc = QC_EDECODE;
    if (rc == 0)
        rc = audit_store_prove_inclusion(store, seq, size, s->path, &path_len);
    if (rc != 0)
        return rc;
    hashes_view(s->path, path_len, s->path_view);
    s->msg.seq = seq;
    s->msg.entry.data = s->rec;
    s->msg.entry.len = len - AUDIT_HASH_SIZE; /* canonical(entry): the leaf's bytes */
    s->msg.n_path = path_len;
    s->msg.path = s->path_view;
    return 0;
}

static int prove_request(const uint8_t *body, size_t len, Qcaudit__ProveRequest **out)
{
    *out = qcaudit__prove_request__unpack(NULL, len, body);
    if (*out == NULL)
        return QC_EDECODE;
    if (qcaudit__prove_request__get_packed_size(*out) != len)
        return QC_EDECODE;
    return (*out)->txn_id.len == PROTO_TXN_ID_SIZE ? 0 : QC_EINVAL;
}

/* Fills rep with the proofs of the load's entries in (from, size], reading their seqs from
 * the by_txn index (ascending); slots and ptrs hold what rep points to. */
static int prove_entries(audit_store_t *store, const Qcaudit__ProveRequest *req, uint64_t size,
                         Qcaudit__ProveReply *rep, proof_slot_t *slots,
                         Qcaudit__InclusionProof **ptrs)
{
    uint64_t *seqs = calloc(AUDIT_PROOF_SEQS_MAX, sizeof *seqs);
    size_t found = 0, n = 0, bytes = 0;
    int rc = seqs == NULL ? QC_ENOMEM
                          : audit_store_txn_seqs(store, req->txn_id.data, req->txn_id.len, seqs,
                                                 AUDIT_PROOF_SEQS_MAX, &found);
    if (rc == 0 && found == 0)
        rc = QC_ENOTFOUND;
    size_t shown = found < AUDIT_PROOF_SEQS_MAX ? found : AUDIT_PROOF_SEQS_MAX;
    rep->more = found > AUDIT_PROOF_SEQS_MAX;
    for (size_t i = 0; rc == 0 && i < shown; i++) {
        if (seqs[i] > size) {
            rep->pending++;
            continue;
        }
        if (seqs[i] <= req->from_seq || rep->more)
            continue;
        if (n == AUDIT_PROOF_ENTRIES_MAX) {
            rep->more = true;
            continue;
        }
        if ((rc = proof_fill(store, seqs[i], size, &slots[n])) != 0)
            break;
        size_t wire = slots[n].msg.entry.len + slots[n].msg.n_path * AUDIT_PROOF_WIRE_HASH +
                      AUDIT_PROOF_WIRE_FIXED;
        if (n > 0 && bytes + wire > AUDIT_PROOF_REPLY_MAX) {
            rep->more = true;
            continue;
        }
        bytes += wire;
        ptrs[n] = &slots[n].msg;
        n++;
    }
    rep->n_proofs = n;
    rep->proofs = ptrs;
    free(seqs);
    return rc;
}

static int answer_prove(audit_store_t *store, const uint8_t *body, size_t len, uint8_t **reply,
                        size_t *reply_len)
{
    Qcaudit__ProveRequest *req = NULL;
    Qcaudit__ProveReply rep = QCAUDIT__PROVE_REPLY__INIT;
    /* One more slot than proofs: the entry that did not fit is read before it is dropped. */
    proof_slot_t *slots = calloc(AUDIT_PROOF_ENTRIES_MAX + 1, sizeof *slots);
    Qcaudit__InclusionProof *ptrs[AUDIT_PROOF_ENTRIES_MAX];
    uint64_t size = 0;
    int rc = slots == NULL ? QC_ENOMEM : prove_request(body, len, &req);
    if (rc == 0)
        rc = audit_proof_tree_head(store, req->tree_size, &rep.tree_head.data, &rep.tree_head.len,
                                   &size);
    if (rc == 0)
        rc = prove_entries(store, req, size, &rep, slots, ptrs);
    if (rc == 0)
        rc = proto_pack(&rep.base, reply, reply_len);
    for (size_t i = 0; slots != NULL && i <= AUDIT_PROOF_ENTRIES_MAX; i++)
        free(slots[i].rec);
    free(slots);
    free(rep.tree_head.data);
    if (req != NULL)
        qcaudit__prove_request__free_unpacked(req, NULL);
    return rc;
}

static int answer_consistency(audit_store_t *store, const uint8_t *body, size_t len,
                              uint8_t **reply, size_t *reply_len)
{
    Qcaudit__ConsistencyRequest *req = qcaudit__consistency_request__unpack(NULL, len, body);
    if (req == NULL)
        return QC_EDECODE;
    Qcaudit__ConsistencyReply rep = QCAUDIT__CONSISTENCY_REPLY__INIT;
    proto_merkle_hash_t proof[PROTO_MERKLE_PROOF_MAX];
    ProtobufCBinaryData view[PROTO_MERKLE_PROOF_MAX];
    size_t proof_len = 0;
    uint64_t new_size = 0, old_covered = 0;
    int rc = qcaudit__consistency_request__get_packed_size(req) == len ? 0 : QC_EDECODE;
    if (rc == 0)
        rc = audit_proof_tree_head(store, req->new_size, &rep.tree_head.data, &rep.tree_head.len,
                                   &new_size);
    if (rc == 0 && req->old_size > new_size)
        rc = QC_EINVAL;
    if (rc == 0)
        rc = audit_store_prove_consistency(store, req->old_size, new_size, proof, &proof_len);
    /* The old head too, when one covers exactly old_size: the caller may not hold it. */
    if (rc == 0 && req->old_size > 0) {
        int hrc = audit_proof_tree_head(store, req->old_size, &rep.old_tree_head.data,
                                        &rep.old_tree_head.len, &old_covered);
        if (hrc != 0 && hrc != QC_ENOTFOUND)
            rc = hrc;
    }
    if (rc == 0) {
        hashes_view(proof, proof_len, view);
        rep.n_proof = proof_len;
        rep.proof = view;
        rc = proto_pack(&rep.base, reply, reply_len);
    }
    free(rep.tree_head.data);
    free(rep.old_tree_head.data);
    qcaudit__consistency_request__free_unpacked(req, NULL);
    return rc;
}

int audit_proof_answer(audit_store_t *store, const char *method, const uint8_t *body, size_t len,
                       uint8_t **reply, size_t *reply_len)
{
    assert(store != NULL);
    assert(method != NULL);
    assert(reply != NULL);
    assert(reply_len != NULL);
    *reply = NULL;
    *reply_len = 0;
    if (len > 0 && body == NULL)
        return QC_EINVAL;
    if (strcmp(method, AUDIT_PROOF_METHOD_TREE_HEAD) == 0)
        return answer_tree_head(store, body, len, reply, reply_len);
    if (strcmp(method, AUDIT_PROOF_METHOD_PROVE) == 0)
        return answer_prove(store, body, len, reply, reply_len);
    if (strcmp(method, AUDIT_PROOF_METHOD_CONSISTENCY) == 0)
        return answer_consistency(store, body, len, reply, reply_len);
    return QC_EMETHOD;
}
