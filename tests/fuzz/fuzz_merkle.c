/* fuzz_merkle.c - libFuzzer target over RFC 9162 proof verification (proto/proto_merkle.h):
 * proto_merkle_verify_inclusion() and proto_merkle_verify_consistency() take sizes, indexes,
 * roots and proofs from whoever answers a device, so every byte of them is the input.
 *
 * Input: byte 0 the mode, bytes 1..16 two big-endian u64 (a, b), then the proof, 32 bytes a
 * hash (a trailing partial hash is dropped), at most PROTO_MERKLE_PROOF_MAX hashes.
 *   mode & 3 == 0: inclusion of leaf a % size in the honest tree of size = 1 + b % TREE_MAX
 *   mode & 3 == 1: consistency from old = a % (size + 1) to size = 1 + b % TREE_MAX
 *   mode & 3 == 2: inclusion with a and b raw (any index, any size), roots from the input
 *   mode & 3 == 3: consistency with a and b raw
 * Bit 2 of the mode replaces the honest leaf (inclusion) or old root (consistency) by the
 * first proof hash, shifting the proof by one.
 *
 * Properties, beyond "no crash, no leak, no undefined behaviour, no read past the proof":
 * - honest modes: a proof is accepted exactly when it is, byte for byte, the proof
 *   proto_merkle_prove_*() builds for the honest tree (with the honest leaf or old root):
 *   SHA-256 being collision resistant, nothing else can lead to the honest root;
 * - raw modes: a proof that is accepted had exactly the length the sizes imply. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "proto_merkle.h"

#define TREE_MAX 300 /* leaves of the honest tree */
#define HASH PROTO_MERKLE_HASH_SIZE
#define HEADER (1 + 2 * 8)

static uint8_t tree_levels[10][TREE_MAX][HASH]; /* node (l, i): 2^9 > TREE_MAX */
static bool tree_built;

static int tree_node(void *arg, unsigned level, uint64_t index, uint8_t out[HASH])
{
    (void)arg;
    FUZZ_CHECK(level < 10 && ((index + 1) << level) <= TREE_MAX);
    memcpy(out, tree_levels[level][index], HASH);
    return 0;
}

static void tree_build(void)
{
    proto_merkle_compact_t c = {0};
    for (uint64_t i = 0; i < TREE_MAX; i++) {
        uint8_t entry[8], leaf[HASH];
        memcpy(entry, &i, sizeof entry);
        FUZZ_CHECK(proto_merkle_leaf_hash(entry, sizeof entry, leaf) == 0);
        proto_merkle_hash_t done[PROTO_MERKLE_LEVELS_MAX];
        size_t nd = 0;
        FUZZ_CHECK(proto_merkle_compact_append(&c, leaf, done, &nd) == 0);
        for (size_t l = 0; l < nd; l++)
            memcpy(tree_levels[l][i >> l], done[l], HASH);
    }
    tree_built = true;
}

static uint64_t be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static bool same_proof(const proto_merkle_hash_t *a, size_t a_len, const proto_merkle_hash_t *b,
                       size_t b_len)
{
    return a_len == b_len && (a_len == 0 || memcmp(a, b, a_len * HASH) == 0);
}

static void honest_inclusion(uint64_t a, uint64_t b, bool own_leaf, const proto_merkle_hash_t *p,
                             size_t n)
{
    uint64_t size = 1 + b % TREE_MAX, index = a % size;
    uint8_t root[HASH], leaf[HASH];
    FUZZ_CHECK(proto_merkle_root(tree_node, NULL, size, root) == 0);
    memcpy(leaf, tree_levels[0][index], HASH);
    bool leaf_honest = true;
    if (own_leaf && n > 0) {
        leaf_honest = memcmp(leaf, p[0], HASH) == 0;
        memcpy(leaf, p[0], HASH);
        p++;
        n--;
    }
    proto_merkle_hash_t want[PROTO_MERKLE_PROOF_MAX];
    size_t want_len = 0;
    FUZZ_CHECK(proto_merkle_prove_inclusion(tree_node, NULL, index, size, want, &want_len) == 0);
    int rc = proto_merkle_verify_inclusion(leaf, index, size, p, n, root);
    FUZZ_CHECK((rc == 0) == (leaf_honest && same_proof(p, n, want, want_len)));
}

static void honest_consistency(uint64_t a, uint64_t b, bool own_root, const proto_merkle_hash_t *p,
                               size_t n)
{
    uint64_t size = 1 + b % TREE_MAX, old = a % (size + 1);
    uint8_t root[HASH], old_root[HASH];
    FUZZ_CHECK(proto_merkle_root(tree_node, NULL, size, root) == 0);
    FUZZ_CHECK(proto_merkle_root(tree_node, NULL, old, old_root) == 0);
    bool root_honest = true;
    if (own_root && n > 0) {
        root_honest = memcmp(old_root, p[0], HASH) == 0;
        memcpy(old_root, p[0], HASH);
        p++;
        n--;
    }
    proto_merkle_hash_t want[PROTO_MERKLE_PROOF_MAX];
    size_t want_len = 0;
    FUZZ_CHECK(proto_merkle_prove_consistency(tree_node, NULL, old, size, want, &want_len) == 0);
    int rc = proto_merkle_verify_consistency(old, size, old_root, root, p, n);
    /* Every tree extends the empty one, whatever root is claimed for it. */
    bool expect = same_proof(p, n, want, want_len) && (root_honest || old == 0);
    FUZZ_CHECK((rc == 0) == expect);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < HEADER)
        return 0;
    if (!tree_built)
        tree_build();
    uint8_t mode = data[0];
    uint64_t a = be64(data + 1), b = be64(data + 9);
    size_t n = (size - HEADER) / HASH;
    if (n > PROTO_MERKLE_PROOF_MAX)
        n = PROTO_MERKLE_PROOF_MAX;
    /* A copy of exactly n hashes, so that ASan sees a read past the proof. */
    proto_merkle_hash_t *p = n > 0 ? malloc(n * HASH) : NULL;
    FUZZ_CHECK(n == 0 || p != NULL);
    if (n > 0)
        memcpy(p, data + HEADER, n * HASH);
    bool own = (mode & 4) != 0;
    switch (mode & 3) {
    case 0:
        honest_inclusion(a, b, own, p, n);
        break;
    case 1:
        honest_consistency(a, b, own, p, n);
        break;
    case 2: {
        static const uint8_t zero[HASH];
        const uint8_t *leaf = n > 0 ? p[0] : zero, *root = n > 1 ? p[1] : zero;
        size_t skip = n > 2 ? 2 : n;
        const proto_merkle_hash_t *rest = n > skip ? p + skip : NULL;
        int rc = proto_merkle_verify_inclusion(leaf, a, b, rest, n - skip, root);
        FUZZ_CHECK(rc != 0 || (a < b && n - skip == proto_merkle_inclusion_len(a, b)));
        break;
    }
    default: {
        static const uint8_t zero[HASH];
        const uint8_t *r1 = n > 0 ? p[0] : zero, *r2 = n > 1 ? p[1] : zero;
        size_t skip = n > 2 ? 2 : n;
        const proto_merkle_hash_t *rest = n > skip ? p + skip : NULL;
        int rc = proto_merkle_verify_consistency(a, b, r1, r2, rest, n - skip);
        FUZZ_CHECK(rc != 0 || (a <= b && n - skip == proto_merkle_consistency_len(a, b)));
        break;
    }
    }
    free(p);
    return 0;
}
