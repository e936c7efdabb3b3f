/* audit_proof.h - the audit log's read methods over its Merkle tree: signed tree heads,
 * inclusion proofs of a load's entries, consistency proofs between two tree heads.
 *
 * Methods (bodies in proto/audit.proto), answered from the store alone:
 *   "tree_head"    TreeHeadRequest{tree_size}       -> TreeHeadReply{tree_head}
 *   "prove"        ProveRequest{txn_id, tree_size, from_seq}
 *                                                   -> ProveReply{tree_head, proofs, pending, more}
 *   "consistency"  ConsistencyRequest{old_size, new_size}
 *                                                   -> ConsistencyReply{old_tree_head, tree_head,
 *                                                                       proof}
 * A tree head is the payload of a checkpoint entry, exactly as stored: a Signed AuditCheckpoint
 * {seq = tree size, chain hash, time, Merkle root}. tree_size / new_size 0 means the latest
 * checkpoint; any other size must be one a checkpoint covers exactly. Proofs are only ever
 * given against a signed tree head, so what a caller checks is what the HSM signed.
 *
 * The same functions serve qc-audit's RPC (audit_intake.c) and `qcctl audit prove|consistency`
 * on a copy of the files, so an operator and a device see the same answer. */
#ifndef AUDIT_PROOF_H
#define AUDIT_PROOF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "audit_store.h"
#include "qc_error.h"

#define AUDIT_PROOF_METHOD_TREE_HEAD "tree_head"
#define AUDIT_PROOF_METHOD_PROVE "prove"
#define AUDIT_PROOF_METHOD_CONSISTENCY "consistency"
/* Entries of one load proven in one reply: a load has 3 to 6 (reserved, allowed, settled,
 * and security events about it); more are paged with from_seq. */
#define AUDIT_PROOF_ENTRIES_MAX 32
#define AUDIT_PROOF_SEQS_MAX 4096 /* entries of one load looked at per request */
/* Bytes of proofs (entries and paths, as on the wire) in one reply; the first entry always goes,
 * however large. With the tree head, either fits an RPC frame. */
#define AUDIT_PROOF_REPLY_MAX (192 * 1024)
#define AUDIT_PROOF_WIRE_HASH 34  /* a 32-byte hash as a repeated bytes element */
#define AUDIT_PROOF_WIRE_FIXED 64 /* tags, lengths, seq, pending, more */
#define AUDIT_PROOF_WIRE_ONE                                                                       \
    (AUDIT_RECORD_MAX + PROTO_MERKLE_PROOF_MAX * AUDIT_PROOF_WIRE_HASH + AUDIT_PROOF_WIRE_FIXED)

_Static_assert(AUDIT_PROOF_WIRE_ONE + PROTO_ENVELOPE_MAX <
                   PROTO_RPC_FRAME_MAX - PROTO_RPC_MESSAGE_MAX,
               "a ProveReply with one largest entry fits one RPC frame");
_Static_assert(AUDIT_PROOF_REPLY_MAX + PROTO_ENVELOPE_MAX + AUDIT_PROOF_WIRE_FIXED <
                   PROTO_RPC_FRAME_MAX - PROTO_RPC_MESSAGE_MAX,
               "a ProveReply fits one RPC frame");

/* True when method is one of the three above. */
bool audit_proof_is_method(const char *method);

/* Answers method with request body[0..len) from store into a malloc'd reply body the caller
 * frees (*reply NULL on error). Returns 0; QC_EDECODE (body not the canonical request),
 * QC_EINVAL (a field out of range: txn_id not 16 bytes, old_size > new_size), QC_ENOTFOUND
 * (no checkpoint covers the size asked, no checkpoint at all, or no entry about the load),
 * QC_EMETHOD, QC_ENOMEM, QC_EIO, QC_EDECODE (a damaged tree). */
QC_MUST_CHECK int audit_proof_answer(audit_store_t *store, const char *method, const uint8_t *body,
                                     size_t len, uint8_t **reply, size_t *reply_len);

/* A copy of the signed tree head covering size (0: the latest) in a malloc'd buffer.
 * Returns 0, QC_ENOTFOUND, QC_EDECODE (the checkpoint entry does not parse), QC_EIO,
 * QC_ENOMEM. */
QC_MUST_CHECK int audit_proof_tree_head(audit_store_t *store, uint64_t size, uint8_t **head,
                                        size_t *head_len, uint64_t *covered);

#endif
