/* proto_merkle.c - RFC 9162 Merkle tree hashes, proofs and their verification.
 *
 * Invariants:
 *  1. Every subtree the recursion visits, [lo, lo + n), is either complete (n a power of two
 *     and lo a multiple of n: read through node()) or the right edge of its parent, split at
 *     k = the largest power of two below n into a complete left part and a smaller right one.
 *  2. Proofs are written leaf side first: a recursion appends its own hash after its child's.
 *  3. A verifier reads exactly the proof length the sizes imply (checked before any hashing).
 */
#include "proto_merkle.h"

#include <assert.h>
#include <stdbool.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#define MERKLE_LEAF_PREFIX 0x00
#define MERKLE_NODE_PREFIX 0x01

int proto_merkle_leaf_hash(const uint8_t *data, size_t len, uint8_t out[PROTO_MERKLE_HASH_SIZE])
{
    assert(out != NULL);
    assert(data != NULL || len == 0);
    static const uint8_t prefix = MERKLE_LEAF_PREFIX;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned out_len = 0;
    int ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, &prefix, 1) == 1 &&
             (len == 0 || EVP_DigestUpdate(ctx, data, len) == 1) &&
             EVP_DigestFinal_ex(ctx, out, &out_len) == 1 && out_len == PROTO_MERKLE_HASH_SIZE;
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : QC_ECRYPTO;
}

int proto_merkle_node_hash(const uint8_t left[PROTO_MERKLE_HASH_SIZE],
                           const uint8_t right[PROTO_MERKLE_HASH_SIZE],
                           uint8_t out[PROTO_MERKLE_HASH_SIZE])
{
    assert(left != NULL);
    assert(right != NULL);
    assert(out != NULL);
    uint8_t buf[1 + 2 * PROTO_MERKLE_HASH_SIZE];
    buf[0] = MERKLE_NODE_PREFIX;
    memcpy(buf + 1, left, PROTO_MERKLE_HASH_SIZE);
    memcpy(buf + 1 + PROTO_MERKLE_HASH_SIZE, right, PROTO_MERKLE_HASH_SIZE);
    return SHA256(buf, sizeof buf, out) != NULL ? 0 : QC_ECRYPTO;
}

static bool is_pow2(uint64_t n)
{
    return n != 0 && (n & (n - 1)) == 0;
}

/* The largest power of two strictly below n (n >= 2). */
static uint64_t split_point(uint64_t n)
{
    assert(n >= 2);
    return UINT64_C(1) << (63 - __builtin_clzll(n - 1));
}

/* MTH(D[lo:lo+n]) for n >= 1 (invariant 1). Reads at most one node per level. */
static int mth(proto_merkle_node_fn *node, void *arg, uint64_t lo, uint64_t n,
               uint8_t out[PROTO_MERKLE_HASH_SIZE])
{
    assert(n >= 1);
    if (is_pow2(n)) {
        assert(lo % n == 0);
        unsigned level = (unsigned)__builtin_ctzll(n);
        return node(arg, level, lo >> level, out);
    }
    uint64_t k = split_point(n);
    uint8_t left[PROTO_MERKLE_HASH_SIZE], right[PROTO_MERKLE_HASH_SIZE];
    int rc = node(arg, (unsigned)__builtin_ctzll(k), lo / k, left);
    if (rc == 0)
        rc = mth(node, arg, lo + k, n - k, right);
    if (rc == 0)
        rc = proto_merkle_node_hash(left, right, out);
    return rc;
}

static int empty_root(uint8_t root[PROTO_MERKLE_HASH_SIZE])
{
    return SHA256((const uint8_t *)"", 0, root) != NULL ? 0 : QC_ECRYPTO;
}

int proto_merkle_root(proto_merkle_node_fn *node, void *arg, uint64_t size,
                      uint8_t root[PROTO_MERKLE_HASH_SIZE])
{
    assert(node != NULL);
    assert(root != NULL);
    if (size > PROTO_MERKLE_SIZE_MAX)
        return QC_EINVAL;
    return size == 0 ? empty_root(root) : mth(node, arg, 0, size, root);
}

/* Appends MTH(D[lo:lo+n]) to out[*len]. */
static int append_mth(proto_merkle_node_fn *node, void *arg, uint64_t lo, uint64_t n,
                      proto_merkle_hash_t *out, size_t *len)
{
    assert(*len < PROTO_MERKLE_PROOF_MAX);
    int rc = mth(node, arg, lo, n, out[*len]);
    if (rc == 0)
        (*len)++;
    return rc;
}

/* PATH(m, D[lo:lo+n]) of RFC 9162 2.1.3.1. */
static int path_of(proto_merkle_node_fn *node, void *arg, uint64_t m, uint64_t lo, uint64_t n,
                   proto_merkle_hash_t *out, size_t *len)
{
    assert(m < n);
    if (n == 1)
        return 0;
    uint64_t k = split_point(n);
    int rc;
    if (m < k) {
        if ((rc = path_of(node, arg, m, lo, k, out, len)) != 0)
            return rc;
        return append_mth(node, arg, lo + k, n - k, out, len);
    }
    if ((rc = path_of(node, arg, m - k, lo + k, n - k, out, len)) != 0)
        return rc;
    return append_mth(node, arg, lo, k, out, len);
}

int proto_merkle_prove_inclusion(proto_merkle_node_fn *node, void *arg, uint64_t index,
                                 uint64_t size, proto_merkle_hash_t path[PROTO_MERKLE_PROOF_MAX],
                                 size_t *path_len)
{
    assert(node != NULL);
    assert(path != NULL);
    assert(path_len != NULL);
    *path_len = 0;
    if (index >= size || size > PROTO_MERKLE_SIZE_MAX)
        return QC_EINVAL;
    int rc = path_of(node, arg, index, 0, size, path, path_len);
    assert(rc != 0 || *path_len == proto_merkle_inclusion_len(index, size));
    return rc;
}

/* SUBPROOF(m, D[lo:lo+n], b) of RFC 9162 2.1.4.1. */
static int subproof(proto_merkle_node_fn *node, void *arg, uint64_t m, uint64_t lo, uint64_t n,
                    bool b, proto_merkle_hash_t *out, size_t *len)
{
    assert(m >= 1);
    assert(m <= n);
    if (m == n)
        return b ? 0 : append_mth(node, arg, lo, n, out, len);
    uint64_t k = split_point(n);
    int rc;
    if (m <= k) {
        if ((rc = subproof(node, arg, m, lo, k, b, out, len)) != 0)
            return rc;
        return append_mth(node, arg, lo + k, n - k, out, len);
    }
    if ((rc = subproof(node, arg, m - k, lo + k, n - k, false, out, len)) != 0)
        return rc;
    return append_mth(node, arg, lo, k, out, len);
}

int proto_merkle_prove_consistency(proto_merkle_node_fn *node, void *arg, uint64_t old_size,
                                   uint64_t new_size,
                                   proto_merkle_hash_t proof[PROTO_MERKLE_PROOF_MAX],
                                   size_t *proof_len)
{
    assert(node != NULL);
    assert(proof != NULL);
    assert(proof_len != NULL);
    *proof_len = 0;
    if (old_size > new_size || new_size > PROTO_MERKLE_SIZE_MAX)
        return QC_EINVAL;
    if (old_size == 0 || old_size == new_size)
        return 0;
    int rc = subproof(node, arg, old_size, 0, new_size, true, proof, proof_len);
    assert(rc != 0 || *proof_len == proto_merkle_consistency_len(old_size, new_size));
    return rc;
}

size_t proto_merkle_inclusion_len(uint64_t index, uint64_t size)
{
    assert(index < size);
    size_t len = 0;
    while (size > 1) {
        uint64_t k = split_point(size);
        if (index < k) {
            size = k;
        } else {
            index -= k;
            size -= k;
        }
        len++;
    }
    return len;
}

size_t proto_merkle_consistency_len(uint64_t old_size, uint64_t new_size)
{
    assert(old_size <= new_size);
    if (old_size == 0 || old_size == new_size)
        return 0;
    size_t len = 0;
    bool b = true;
    while (old_size != new_size) {
        uint64_t k = split_point(new_size);
        if (old_size <= k) {
            new_size = k;
        } else {
            old_size -= k;
            new_size -= k;
            b = false;
        }
        len++;
    }
    return len + (b ? 0 : 1);
}

int proto_merkle_verify_inclusion(const uint8_t leaf_hash[PROTO_MERKLE_HASH_SIZE], uint64_t index,
                                  uint64_t size, const proto_merkle_hash_t *path, size_t path_len,
                                  const uint8_t root[PROTO_MERKLE_HASH_SIZE])
{
    assert(leaf_hash != NULL);
    assert(root != NULL);
    if (size == 0 || index >= size || size > PROTO_MERKLE_SIZE_MAX)
        return QC_EINVAL;
    if (path_len != proto_merkle_inclusion_len(index, size) || (path_len > 0 && path == NULL))
        return QC_EDECODE;
    uint64_t fn = index, sn = size - 1;
    uint8_t r[PROTO_MERKLE_HASH_SIZE];
    memcpy(r, leaf_hash, sizeof r);
    for (size_t i = 0; i < path_len; i++) {
        if (sn == 0)
            return QC_EMISMATCH;
        int rc;
        if ((fn & 1) != 0 || fn == sn) {
            rc = proto_merkle_node_hash(path[i], r, r);
            while ((fn & 1) == 0 && fn != 0) {
                fn >>= 1;
                sn >>= 1;
            }
        } else {
            rc = proto_merkle_node_hash(r, path[i], r);
        }
        if (rc != 0)
            return rc;
        fn >>= 1;
        sn >>= 1;
    }
    if (sn != 0 || CRYPTO_memcmp(r, root, sizeof r) != 0)
        return QC_EMISMATCH;
    return 0;
}

int proto_merkle_verify_consistency(uint64_t old_size, uint64_t new_size,
                                    const uint8_t old_root[PROTO_MERKLE_HASH_SIZE],
                                    const uint8_t new_root[PROTO_MERKLE_HASH_SIZE],
                                    const proto_merkle_hash_t *proof, size_t proof_len)
{
    assert(old_root != NULL);
    assert(new_root != NULL);
    if (old_size > new_size || new_size > PROTO_MERKLE_SIZE_MAX)
        return QC_EINVAL;
    if (proof_len != proto_merkle_consistency_len(old_size, new_size) ||
        (proof_len > 0 && proof == NULL))
        return QC_EDECODE;
    if (old_size == 0)
        return 0;
    if (old_size == new_size)
        return CRYPTO_memcmp(old_root, new_root, PROTO_MERKLE_HASH_SIZE) == 0 ? 0 : QC_EMISMATCH;
    /* RFC 9162 2.1.4.2: when old_size is a power of two, old_root is the proof's implicit
     * first element. */
    size_t next = 0;
    uint8_t fr[PROTO_MERKLE_HASH_SIZE], sr[PROTO_MERKLE_HASH_SIZE];
    if (is_pow2(old_size)) {
        memcpy(fr, old_root, sizeof fr);
    } else {
        assert(proof_len >= 1);
        memcpy(fr, proof[next++], sizeof fr);
    }
    memcpy(sr, fr, sizeof sr);
    uint64_t fn = old_size - 1, sn = new_size - 1;
    while ((fn & 1) != 0) {
        fn >>= 1;
        sn >>= 1;
    }
    for (; next < proof_len; next++) {
        if (sn == 0)
            return QC_EMISMATCH;
        int rc = 0;
        if ((fn & 1) != 0 || fn == sn) {
            if ((rc = proto_merkle_node_hash(proof[next], fr, fr)) == 0)
                rc = proto_merkle_node_hash(proof[next], sr, sr);
            while ((fn & 1) == 0 && fn != 0) {
                fn >>= 1;
                sn >>= 1;
            }
        } else {
            rc = proto_merkle_node_hash(sr, proof[next], sr);
        }
        if (rc != 0)
            return rc;
        fn >>= 1;
        sn >>= 1;
    }
    if (sn != 0 || CRYPTO_memcmp(fr, old_root, sizeof fr) != 0 ||
        CRYPTO_memcmp(sr, new_root, sizeof sr) != 0)
        return QC_EMISMATCH;
    return 0;
}

int proto_merkle_compact_append(proto_merkle_compact_t *c,
                                const uint8_t leaf_hash[PROTO_MERKLE_HASH_SIZE],
                                proto_merkle_hash_t done[PROTO_MERKLE_LEVELS_MAX],
                                size_t *done_count)
{
    assert(c != NULL);
    assert(leaf_hash != NULL);
    if (c->size >= PROTO_MERKLE_SIZE_MAX)
        return QC_EFULL;
    uint8_t h[PROTO_MERKLE_HASH_SIZE];
    memcpy(h, leaf_hash, sizeof h);
    if (done != NULL)
        memcpy(done[0], h, sizeof h);
    unsigned level = 0;
    /* Each set low bit of size is a complete subtree that the new leaf's subtree now joins. */
    while (((c->size >> level) & 1) != 0) {
        int rc = proto_merkle_node_hash(c->peaks[level], h, h);
        if (rc != 0)
            return rc;
        level++;
        assert(level < PROTO_MERKLE_LEVELS_MAX);
        if (done != NULL)
            memcpy(done[level], h, sizeof h);
    }
    memcpy(c->peaks[level], h, sizeof h);
    c->size++;
    if (done_count != NULL)
        *done_count = level + 1;
    return 0;
}

int proto_merkle_compact_root(const proto_merkle_compact_t *c, uint8_t root[PROTO_MERKLE_HASH_SIZE])
{
    assert(c != NULL);
    assert(root != NULL);
    if (c->size == 0)
        return empty_root(root);
    unsigned level = (unsigned)__builtin_ctzll(c->size);
    uint8_t r[PROTO_MERKLE_HASH_SIZE];
    memcpy(r, c->peaks[level], sizeof r);
    for (level++; level < PROTO_MERKLE_LEVELS_MAX; level++) {
        if (((c->size >> level) & 1) == 0)
            continue;
        int rc = proto_merkle_node_hash(c->peaks[level], r, r);
        if (rc != 0)
            return rc;
    }
    memcpy(root, r, sizeof r);
    return 0;
}
