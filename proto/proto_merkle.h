/* proto_merkle.h - the Merkle tree of RFC 9162 (Certificate Transparency 2.0): tree hash,
 * inclusion and consistency proofs, their verification. Pure: no I/O, no allocation.
 *
 * The tree over n leaves D[0:n] (RFC 9162 section 2.1.1):
 *
 *     leaf hash   = SHA-256(0x00 || leaf bytes)
 *     node hash   = SHA-256(0x01 || left || right)
 *     MTH({})     = SHA-256("")                         (the empty tree)
 *     MTH(D[0:n]) = node(MTH(D[0:k]), MTH(D[k:n]))      k = the largest power of 2 below n
 *
 * Every node of that tree is either a complete subtree (2^level leaves starting at a multiple
 * of 2^level: "node (level, index)" covers leaves [index << level, (index + 1) << level)) or
 * lies on the right edge of a tree whose size is not a power of two. Proofs are built from
 * the hashes of complete subtrees, which the caller supplies through a proto_merkle_node_fn:
 * the audit log keeps them in LMDB (one row per complete subtree, about 2n rows for n leaves),
 * a test computes them from leaf hashes. An incomplete node is computed from at most
 * log2(n) complete ones, so a proof costs O(log^2 n) node reads at worst, O(log n) typically.
 *
 * Proofs are arrays of hashes, leaf side first, exactly as RFC 9162 sections 2.1.3 and 2.1.4
 * define them: a verifier anywhere (a device, a third party) needs only this file. The
 * verifiers take untrusted sizes, indexes and proofs: they refuse a proof whose length is not
 * the one the sizes imply, never read past proof_len, and compare hashes with CRYPTO_memcmp.
 *
 * Sizes are uint64_t leaf counts; tree sizes up to 2^63 are handled (PROTO_MERKLE_PROOF_MAX
 * hashes suffice for any of them). */
#ifndef PROTO_MERKLE_H
#define PROTO_MERKLE_H

#include <stddef.h>
#include <stdint.h>

#include "qc_error.h"

#define PROTO_MERKLE_HASH_SIZE 32
/* Longest proof: an inclusion path has ceil(log2 n) <= 63 hashes for n <= 2^63, a
 * consistency proof at most one more. */
#define PROTO_MERKLE_PROOF_MAX 64
#define PROTO_MERKLE_SIZE_MAX (UINT64_C(1) << 63)
/* Levels of a compact range (one complete subtree per set bit of the size). */
#define PROTO_MERKLE_LEVELS_MAX 64

typedef uint8_t proto_merkle_hash_t[PROTO_MERKLE_HASH_SIZE];

/* The hash of the complete subtree (level, index): level 0 is leaf index's hash. Returns 0,
 * or a negative QC_E* code that the caller's proof function passes back unchanged. */
typedef int(proto_merkle_node_fn)(void *arg, unsigned level, uint64_t index,
                                  uint8_t out[PROTO_MERKLE_HASH_SIZE]);

/* SHA-256(0x00 || data[0..len)) into out. data may be NULL when len is 0.
 * Returns 0 or QC_ECRYPTO. */
QC_MUST_CHECK int proto_merkle_leaf_hash(const uint8_t *data, size_t len,
                                         uint8_t out[PROTO_MERKLE_HASH_SIZE]);

/* SHA-256(0x01 || left || right) into out (out may alias either input).
 * Returns 0 or QC_ECRYPTO. */
QC_MUST_CHECK int proto_merkle_node_hash(const uint8_t left[PROTO_MERKLE_HASH_SIZE],
                                         const uint8_t right[PROTO_MERKLE_HASH_SIZE],
                                         uint8_t out[PROTO_MERKLE_HASH_SIZE]);

/* MTH(D[0:size]) into root, from the complete subtrees node() gives. size 0 gives
 * SHA-256(""). Returns 0, QC_EINVAL (size above PROTO_MERKLE_SIZE_MAX), QC_ECRYPTO or
 * node()'s error. */
QC_MUST_CHECK int proto_merkle_root(proto_merkle_node_fn *node, void *arg, uint64_t size,
                                    uint8_t root[PROTO_MERKLE_HASH_SIZE]);

/* The inclusion proof (audit path) of leaf index in the tree of size leaves, RFC 9162
 * 2.1.3.1, into path[0..*path_len) (leaf side first; capacity PROTO_MERKLE_PROOF_MAX).
 * Returns 0, QC_EINVAL (index >= size, or size above PROTO_MERKLE_SIZE_MAX), QC_ECRYPTO or
 * node()'s error. */
QC_MUST_CHECK int proto_merkle_prove_inclusion(proto_merkle_node_fn *node, void *arg,
                                               uint64_t index, uint64_t size,
                                               proto_merkle_hash_t path[PROTO_MERKLE_PROOF_MAX],
                                               size_t *path_len);

/* The consistency proof between the trees of old_size and new_size leaves, RFC 9162
 * 2.1.4.1, into proof[0..*proof_len). Empty when old_size is 0 or equals new_size.
 * Returns 0, QC_EINVAL (old_size > new_size, or a size above PROTO_MERKLE_SIZE_MAX),
 * QC_ECRYPTO or node()'s error. */
QC_MUST_CHECK int proto_merkle_prove_consistency(proto_merkle_node_fn *node, void *arg,
                                                 uint64_t old_size, uint64_t new_size,
                                                 proto_merkle_hash_t proof[PROTO_MERKLE_PROOF_MAX],
                                                 size_t *proof_len);

/* Verifies that leaf_hash is leaf index of the tree of size leaves whose root is root, with
 * path[0..path_len) (RFC 9162 2.1.3.2). All arguments are untrusted.
 * Returns 0 when it holds; QC_EINVAL (index >= size, size 0 or above PROTO_MERKLE_SIZE_MAX),
 * QC_EDECODE (path_len is not the length the index and size imply), QC_EMISMATCH (the
 * recomputed root differs) or QC_ECRYPTO. */
QC_MUST_CHECK int proto_merkle_verify_inclusion(const uint8_t leaf_hash[PROTO_MERKLE_HASH_SIZE],
                                                uint64_t index, uint64_t size,
                                                const proto_merkle_hash_t *path, size_t path_len,
                                                const uint8_t root[PROTO_MERKLE_HASH_SIZE]);

/* Verifies that the tree of old_size leaves with root old_root is a prefix of the tree of
 * new_size leaves with root new_root, with proof[0..proof_len) (RFC 9162 2.1.4.2). Equal
 * sizes need an empty proof and equal roots; old_size 0 needs an empty proof (every tree
 * extends the empty one). All arguments are untrusted.
 * Returns 0 when it holds; QC_EINVAL (old_size > new_size, a size above
 * PROTO_MERKLE_SIZE_MAX), QC_EDECODE (proof_len is not the length the sizes imply),
 * QC_EMISMATCH (a recomputed root differs: the logs have forked or the proof is false) or
 * QC_ECRYPTO. */
QC_MUST_CHECK int proto_merkle_verify_consistency(uint64_t old_size, uint64_t new_size,
                                                  const uint8_t old_root[PROTO_MERKLE_HASH_SIZE],
                                                  const uint8_t new_root[PROTO_MERKLE_HASH_SIZE],
                                                  const proto_merkle_hash_t *proof,
                                                  size_t proof_len);

/* Expected proof lengths, for callers that size-check before verifying (a gateway, a
 * decoder). Both require valid arguments (index < size; old_size <= new_size). */
size_t proto_merkle_inclusion_len(uint64_t index, uint64_t size);
size_t proto_merkle_consistency_len(uint64_t old_size, uint64_t new_size);

/* A compact range: the tree of the leaves appended so far, held as one complete subtree per
 * set bit of size (RFC 9162's "Merkle tree hash" computed incrementally). It is how a
 * verifier walking the whole log recomputes every complete subtree and the root at any size
 * without storing the tree. Zero-initialize it ({0}) to start empty. */
typedef struct proto_merkle_compact {
    uint64_t size;
    proto_merkle_hash_t peaks[PROTO_MERKLE_LEVELS_MAX]; /* peaks[l]: the subtree of level l
                                                           when bit l of size is set */
} proto_merkle_compact_t;

/* Appends leaf_hash as leaf c->size. The complete subtrees this append completes are written
 * to done[0..*done_count): done[l] is node (l, c->size_before >> l), level 0 being the leaf
 * itself; done may be NULL. Returns 0, QC_EFULL (PROTO_MERKLE_SIZE_MAX leaves) or
 * QC_ECRYPTO (then c is unchanged). */
QC_MUST_CHECK int proto_merkle_compact_append(proto_merkle_compact_t *c,
                                              const uint8_t leaf_hash[PROTO_MERKLE_HASH_SIZE],
                                              proto_merkle_hash_t done[PROTO_MERKLE_LEVELS_MAX],
                                              size_t *done_count);

/* MTH of the c->size leaves appended. Returns 0 or QC_ECRYPTO. */
QC_MUST_CHECK int proto_merkle_compact_root(const proto_merkle_compact_t *c,
                                            uint8_t root[PROTO_MERKLE_HASH_SIZE]);

#endif
