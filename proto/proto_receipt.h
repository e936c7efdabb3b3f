/* proto_receipt.h - a load's receipt from the bank's audit log, checked by whoever holds it:
 * signed tree heads, inclusion proofs of the load's entries, consistency between two heads.
 *
 * What a device (or a third party, or qcctl) holds: the bank's audit-checkpoint certificate.
 * What it is given: a qcaudit.ProveReply (proto/audit.proto) - a signed tree head and, for each
 * audit entry about the load, the entry's canonical bytes and its RFC 9162 inclusion path.
 * A receipt verifies when, in this order (untrusted input, checked size first, then parse,
 * then signature, then the business rules):
 *   1. the reply is at most PROTO_RECEIPT_REPLY_MAX bytes and decodes canonically;
 *   2. the tree head is an envelope of type quancun/v1/AuditCheckpoint signed by the key, and
 *      carries a 32-byte Merkle root (proto_tree_head_open());
 *   3. every entry parses as the audit encoding (audit/audit_chain.h, version 1) far enough to
 *      read its seq and txn id, its seq is the proof's, at most the head's size, and its txn id
 *      is the load's;
 *   4. SHA-256(0x00 || entry) with the path leads to the head's root at leaf seq - 1.
 * Entries appended after the head are not in the reply; ProveReply.pending counts them.
 *
 * Consistency: a device keeps the last head it verified; a new head is accepted only with a
 * consistency proof from the kept one (proto_tree_head_consistent()). Two heads of one size
 * with different roots, or a proof that fails, mean the log was rewritten or forked. */
#ifndef PROTO_RECEIPT_H
#define PROTO_RECEIPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "proto_limits.h"
#include "proto_merkle.h"
#include "qc_error.h"

#define PROTO_RECEIPT_REPLY_MAX PROTO_RPC_FRAME_MAX
#define PROTO_RECEIPT_ENTRIES_MAX 32 /* entries of one load in one reply (the audit log's page) */
#define PROTO_AUDIT_ENTRY_VERSION 1
/* The device-facing methods of a gateway (docs/PROTOCOL.md), forwarded to the audit log's
 * "prove" and "consistency" (proto/audit.proto). */
#define PROTO_METHOD_RECEIPT "receipt" /* ProveRequest -> ProveReply */
#define PROTO_METHOD_TREE_CONSISTENCY                                                              \
    "tree_consistency"               /* ConsistencyRequest -> ConsistencyReply */
#define PROTO_RECEIPT_REQUEST_MAX 64 /* either request: a txn id or two sizes, and tags */

/* A verified tree head: the AuditCheckpoint's fields. */
typedef struct proto_tree_head {
    uint64_t size;    /* tree size: entries 1..size */
    uint64_t time_ms; /* when it was signed (Unix ms) */
    uint8_t root[PROTO_MERKLE_HASH_SIZE];
    uint8_t chain_hash[PROTO_MERKLE_HASH_SIZE]; /* entry size's chain hash */
} proto_tree_head_t;

/* A verified receipt. */
typedef struct proto_receipt {
    proto_tree_head_t head;
    size_t entries;                           /* entries proven, all about the load */
    uint64_t seqs[PROTO_RECEIPT_ENTRIES_MAX]; /* their seqs, ascending */
    char types[PROTO_RECEIPT_ENTRIES_MAX][PROTO_AUDIT_NAME_MAX + 1]; /* their event types */
    uint32_t pending; /* entries about the load after the head */
    bool more;        /* more entries than this reply holds */
} proto_receipt_t;

/* Opens a Signed AuditCheckpoint under key into *head. Returns 0; QC_ETOOBIG, QC_EDECODE,
 * QC_EVERSION, QC_EALG, QC_EKEYID, QC_EBADSIG (the envelope); QC_EMISSING (no Merkle root:
 * a checkpoint made before the tree existed is no tree head). */
QC_MUST_CHECK int proto_tree_head_open(const uint8_t *signed_head, size_t len, EVP_PKEY *key,
                                       proto_tree_head_t *head);

/* As proto_tree_head_open(), but a checkpoint without a root is returned too, with *has_root
 * false (and head->root zero): for the offline verifier of a log that has older checkpoints. */
QC_MUST_CHECK int proto_checkpoint_open(const uint8_t *signed_head, size_t len, EVP_PKEY *key,
                                        proto_tree_head_t *head, bool *has_root);

/* Checks that the tree of new_head extends that of old_head, with proof (RFC 9162 2.1.4).
 * Returns 0; QC_EMISMATCH (a fork: equal sizes with different roots, or a proof that does not
 * link them); QC_EINVAL (new_head is smaller: the log went back); QC_EDECODE (the proof's
 * length is not the one the sizes imply). */
QC_MUST_CHECK int proto_tree_head_consistent(const proto_tree_head_t *old_head,
                                             const proto_tree_head_t *new_head,
                                             const proto_merkle_hash_t *proof, size_t proof_len);

/* Verifies a ProveReply for the load txn_id (PROTO_TXN_ID_SIZE bytes) under key, as above,
 * into *out. A reply with no entry is refused (QC_ENOTFOUND): a receipt proves something.
 * Returns 0, the first failure's code (QC_EMISMATCH: a path or an entry that does not match,
 * an entry about another load) or QC_ETOOBIG. */
QC_MUST_CHECK int proto_receipt_verify(const uint8_t *reply, size_t len, EVP_PKEY *key,
                                       const uint8_t *txn_id, proto_receipt_t *out);

/* The shape of a request or reply of the two methods above, for a forwarder that holds no key
 * (the gateway): sizes first, then a canonical decoding, then every count and length (the
 * txn id 16 bytes, at most PROTO_RECEIPT_ENTRIES_MAX proofs of at most PROTO_MERKLE_PROOF_MAX
 * hashes of 32 bytes, tree heads of at most PROTO_ENVELOPE_MAX bytes). Nothing is verified.
 * Returns 0, QC_ETOOBIG, QC_EDECODE, QC_EINVAL or QC_EMETHOD. */
QC_MUST_CHECK int proto_receipt_check_request(const char *method, const uint8_t *body, size_t len);
QC_MUST_CHECK int proto_receipt_check_reply(const char *method, const uint8_t *body, size_t len);

/* Reads seq, txn id and type from an entry's canonical bytes (audit/audit_chain.h's layout,
 * only as far as the txn id). The pointers point into entry. Returns 0, QC_EDECODE or
 * QC_EVERSION. */
QC_MUST_CHECK int proto_receipt_entry_fields(const uint8_t *entry, size_t len, uint64_t *seq,
                                             const uint8_t **txn_id, size_t *txn_id_len,
                                             const char **type, size_t *type_len);

#endif
