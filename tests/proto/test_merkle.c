/* test_merkle.c - the RFC 9162 tree of proto_merkle against a naive reference written straight
 * from the RFC's recursive definitions: roots, inclusion and consistency proofs at every size
 * 1..70 and around every power of two up to 2^12 + 1, and the refusals (a tampered entry, a
 * wrong root, index or size, a truncated or padded proof, a forked log). */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/sha.h>

#include "proto_merkle.h"

#define SMALL_MAX 70      /* every size, index and (old, new) pair up to this */
#define POW2_LEVEL_MAX 12 /* sizes 2^k - 1, 2^k, 2^k + 1 for k up to this */
#define LEAVES_MAX ((1u << POW2_LEVEL_MAX) + 1)
#define HASH PROTO_MERKLE_HASH_SIZE

/* ------------------------------------------------------------- the reference (RFC text) */

static uint8_t leaves[LEAVES_MAX][HASH]; /* leaf hashes of the entries "entry-<i>" */

static void entry_bytes(size_t i, char *buf, size_t cap, size_t *len)
{
    int n = snprintf(buf, cap, "entry-%zu", i);
    assert_true(n > 0 && (size_t)n < cap);
    *len = (size_t)n;
}

static void ref_leaf(const uint8_t *d, size_t len, uint8_t out[HASH])
{
    uint8_t buf[64];
    assert_true(len + 1 <= sizeof buf);
    buf[0] = 0x00;
    memcpy(buf + 1, d, len);
    SHA256(buf, len + 1, out);
}

static void ref_node(const uint8_t l[HASH], const uint8_t r[HASH], uint8_t out[HASH])
{
    uint8_t buf[1 + 2 * HASH];
    buf[0] = 0x01;
    memcpy(buf + 1, l, HASH);
    memcpy(buf + 1 + HASH, r, HASH);
    SHA256(buf, sizeof buf, out);
}

static uint64_t ref_k(uint64_t n)
{
    uint64_t k = 1;
    while (k * 2 < n)
        k *= 2;
    return k;
}

/* MTH(D[lo:lo+n]), by the definition. */
static void ref_mth(size_t lo, size_t n, uint8_t out[HASH])
{
    if (n == 0) {
        SHA256((const uint8_t *)"", 0, out);
        return;
    }
    if (n == 1) {
        memcpy(out, leaves[lo], HASH);
        return;
    }
    uint64_t k = ref_k(n);
    uint8_t l[HASH], r[HASH];
    ref_mth(lo, k, l);
    ref_mth(lo + k, n - k, r);
    ref_node(l, r, out);
}

static void ref_path(size_t m, size_t lo, size_t n, uint8_t out[][HASH], size_t *len)
{
    if (n == 1)
        return;
    uint64_t k = ref_k(n);
    if (m < k) {
        ref_path(m, lo, k, out, len);
        ref_mth(lo + k, n - k, out[(*len)++]);
    } else {
        ref_path(m - k, lo + k, n - k, out, len);
        ref_mth(lo, k, out[(*len)++]);
    }
}

static void ref_subproof(size_t m, size_t lo, size_t n, bool b, uint8_t out[][HASH], size_t *len)
{
    if (m == n) {
        if (!b)
            ref_mth(lo, n, out[(*len)++]);
        return;
    }
    uint64_t k = ref_k(n);
    if (m <= k) {
        ref_subproof(m, lo, k, b, out, len);
        ref_mth(lo + k, n - k, out[(*len)++]);
    } else {
        ref_subproof(m - k, lo + k, n - k, false, out, len);
        ref_mth(lo, k, out[(*len)++]);
    }
}

/* ------------------------------------------------------------- the tree under test */

/* Complete subtrees, as the compact range completes them: levels[l][i] = node (l, i). */
static uint8_t *levels[POW2_LEVEL_MAX + 2];
static uint64_t node_reads;

static int tree_node(void *arg, unsigned level, uint64_t index, uint8_t out[HASH])
{
    uint64_t size = *(const uint64_t *)arg;
    assert_true(level <= POW2_LEVEL_MAX + 1);
    /* A proof may read only complete subtrees of the tree it is about. */
    assert_true(((index + 1) << level) <= size);
    memcpy(out, levels[level] + index * HASH, HASH);
    node_reads++;
    return 0;
}

static int setup(void **state)
{
    (void)state;
    proto_merkle_compact_t c = {0};
    for (unsigned l = 0; l < POW2_LEVEL_MAX + 2; l++) {
        levels[l] = calloc((LEAVES_MAX >> l) + 1, HASH);
        assert_non_null(levels[l]);
    }
    for (size_t i = 0; i < LEAVES_MAX; i++) {
        char buf[32];
        size_t len = 0;
        entry_bytes(i, buf, sizeof buf, &len);
        ref_leaf((const uint8_t *)buf, len, leaves[i]);
        uint8_t lh[HASH];
        assert_int_equal(proto_merkle_leaf_hash((const uint8_t *)buf, len, lh), 0);
        assert_memory_equal(lh, leaves[i], HASH);
        proto_merkle_hash_t done[PROTO_MERKLE_LEVELS_MAX];
        size_t nd = 0;
        assert_int_equal(proto_merkle_compact_append(&c, lh, done, &nd), 0);
        for (size_t l = 0; l < nd; l++)
            memcpy(levels[l] + (i >> l) * HASH, done[l], HASH);
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (unsigned l = 0; l < POW2_LEVEL_MAX + 2; l++)
        free(levels[l]);
    return 0;
}

/* ------------------------------------------------------------- checks of one size */

static void check_root(uint64_t n)
{
    uint8_t want[HASH], got[HASH];
    ref_mth(0, n, want);
    assert_int_equal(proto_merkle_root(tree_node, &n, n, got), 0);
    assert_memory_equal(got, want, HASH);
    /* The compact range at size n agrees. */
    proto_merkle_compact_t c = {0};
    for (uint64_t i = 0; i < n; i++)
        assert_int_equal(proto_merkle_compact_append(&c, leaves[i], NULL, NULL), 0);
    assert_int_equal(proto_merkle_compact_root(&c, got), 0);
    assert_memory_equal(got, want, HASH);
}

static void check_inclusion(uint64_t m, uint64_t n)
{
    uint8_t root[HASH], want[PROTO_MERKLE_PROOF_MAX][HASH];
    size_t want_len = 0, len = 0;
    proto_merkle_hash_t path[PROTO_MERKLE_PROOF_MAX];
    ref_mth(0, n, root);
    ref_path(m, 0, n, want, &want_len);
    assert_int_equal(proto_merkle_prove_inclusion(tree_node, &n, m, n, path, &len), 0);
    assert_int_equal(len, want_len);
    assert_int_equal(len, proto_merkle_inclusion_len(m, n));
    if (len > 0)
        assert_memory_equal(path, want, len * HASH);
    assert_int_equal(proto_merkle_verify_inclusion(leaves[m], m, n, path, len, root), 0);

    /* Refusals: another leaf (a tampered entry), a wrong root, a wrong index, a truncated and a
     * padded proof, a flipped bit anywhere in the path. */
    uint8_t bad[HASH];
    memcpy(bad, leaves[m], HASH);
    bad[0] ^= 1;
    assert_int_equal(proto_merkle_verify_inclusion(bad, m, n, path, len, root), QC_EMISMATCH);
    memcpy(bad, root, HASH);
    bad[HASH - 1] ^= 0x80;
    assert_int_equal(proto_merkle_verify_inclusion(leaves[m], m, n, path, len, bad), QC_EMISMATCH);
    for (uint64_t other = 0; other < n && n <= SMALL_MAX; other++) {
        if (other == m)
            continue;
        int rc = proto_merkle_verify_inclusion(leaves[m], other, n, path, len, root);
        assert_true(rc == QC_EMISMATCH || rc == QC_EDECODE);
    }
    assert_int_equal(proto_merkle_verify_inclusion(leaves[m], n, n, path, len, root), QC_EINVAL);
    /* No check with another size: the size is bound to the root by the signed tree head, and
     * a path can fit two sizes (index 0 of 3 and of 4 leaves have equally long paths). */
    if (len > 0)
        assert_int_equal(proto_merkle_verify_inclusion(leaves[m], m, n, path, len - 1, root),
                         QC_EDECODE);
    if (len < PROTO_MERKLE_PROOF_MAX)
        assert_int_equal(proto_merkle_verify_inclusion(leaves[m], m, n, path, len + 1, root),
                         QC_EDECODE);
    for (size_t i = 0; i < len; i++) {
        path[i][i % HASH] ^= 0x10;
        assert_int_equal(proto_merkle_verify_inclusion(leaves[m], m, n, path, len, root),
                         QC_EMISMATCH);
        path[i][i % HASH] ^= 0x10;
    }
}

static void check_consistency(uint64_t m, uint64_t n)
{
    uint8_t old_root[HASH], new_root[HASH], want[PROTO_MERKLE_PROOF_MAX][HASH];
    size_t want_len = 0, len = 0;
    proto_merkle_hash_t proof[PROTO_MERKLE_PROOF_MAX];
    ref_mth(0, m, old_root);
    ref_mth(0, n, new_root);
    if (m > 0 && m < n)
        ref_subproof(m, 0, n, true, want, &want_len);
    assert_int_equal(proto_merkle_prove_consistency(tree_node, &n, m, n, proof, &len), 0);
    assert_int_equal(len, want_len);
    assert_int_equal(len, proto_merkle_consistency_len(m, n));
    if (len > 0)
        assert_memory_equal(proof, want, len * HASH);
    assert_int_equal(proto_merkle_verify_consistency(m, n, old_root, new_root, proof, len), 0);
    if (m == 0)
        return; /* every tree extends the empty one: nothing to refuse */

    uint8_t bad[HASH];
    memcpy(bad, old_root, HASH);
    bad[3] ^= 4;
    assert_int_equal(proto_merkle_verify_consistency(m, n, bad, new_root, proof, len),
                     QC_EMISMATCH);
    memcpy(bad, new_root, HASH);
    bad[7] ^= 4;
    assert_int_equal(proto_merkle_verify_consistency(m, n, old_root, bad, proof, len),
                     QC_EMISMATCH);
    if (len > 0)
        assert_int_equal(proto_merkle_verify_consistency(m, n, old_root, new_root, proof, len - 1),
                         QC_EDECODE);
    for (size_t i = 0; i < len; i++) {
        proof[i][0] ^= 1;
        assert_int_equal(proto_merkle_verify_consistency(m, n, old_root, new_root, proof, len),
                         QC_EMISMATCH);
        proof[i][0] ^= 1;
    }
    /* Reversed sizes are refused as such. */
    if (m < n)
        assert_int_equal(proto_merkle_verify_consistency(n, m, new_root, old_root, proof, len),
                         QC_EINVAL);
}

/* ------------------------------------------------------------- the tests */

static void test_empty_and_hashes(void **state)
{
    (void)state;
    uint8_t got[HASH], want[HASH];
    uint64_t zero = 0;
    assert_int_equal(proto_merkle_root(tree_node, &zero, 0, got), 0);
    SHA256((const uint8_t *)"", 0, want);
    assert_memory_equal(got, want, HASH);
    proto_merkle_compact_t c = {0};
    assert_int_equal(proto_merkle_compact_root(&c, got), 0);
    assert_memory_equal(got, want, HASH);
    /* RFC 9162's prefixes: an empty leaf is SHA-256(0x00), not SHA-256(""). */
    uint8_t z = 0x00;
    SHA256(&z, 1, want);
    assert_int_equal(proto_merkle_leaf_hash(NULL, 0, got), 0);
    assert_memory_equal(got, want, HASH);
    ref_node(leaves[0], leaves[1], want);
    assert_int_equal(proto_merkle_node_hash(leaves[0], leaves[1], got), 0);
    assert_memory_equal(got, want, HASH);
    /* A leaf is never a node: the two leaves' node hash differs from a leaf over their bytes. */
    uint8_t cat[2 * HASH];
    memcpy(cat, leaves[0], HASH);
    memcpy(cat + HASH, leaves[1], HASH);
    assert_int_equal(proto_merkle_leaf_hash(cat, sizeof cat, got), 0);
    assert_memory_not_equal(got, want, HASH);
}

static void test_small_sizes(void **state)
{
    (void)state;
    for (uint64_t n = 1; n <= SMALL_MAX; n++) {
        check_root(n);
        for (uint64_t m = 0; m < n; m++)
            check_inclusion(m, n);
    }
}

static void test_small_consistency(void **state)
{
    (void)state;
    for (uint64_t n = 1; n <= SMALL_MAX; n++)
        for (uint64_t m = 0; m <= n; m++)
            check_consistency(m, n);
}

static void test_powers_of_two(void **state)
{
    (void)state;
    for (unsigned k = 1; k <= POW2_LEVEL_MAX; k++) {
        uint64_t p = UINT64_C(1) << k;
        uint64_t sizes[] = {p - 1, p, p + 1};
        for (size_t s = 0; s < 3; s++) {
            uint64_t n = sizes[s];
            check_root(n);
            uint64_t idx[] = {0, 1, n / 2, n - 2, n - 1, p / 2 - 1, p / 2, (n * 7) / 9};
            for (size_t i = 0; i < sizeof idx / sizeof idx[0]; i++)
                if (idx[i] < n)
                    check_inclusion(idx[i], n);
            uint64_t olds[] = {1, 2, n / 2, p / 2, p / 2 + 1, p - 1, n - 1, n};
            for (size_t i = 0; i < sizeof olds / sizeof olds[0]; i++)
                if (olds[i] >= 1 && olds[i] <= n)
                    check_consistency(olds[i], n);
            /* And this size as the old tree of the largest one. */
            check_consistency(n, LEAVES_MAX);
        }
    }
}

/* A proof reads O(log n) stored nodes at worst O(log^2 n), never O(n). */
static void test_reads_are_logarithmic(void **state)
{
    (void)state;
    uint64_t n = LEAVES_MAX;
    proto_merkle_hash_t path[PROTO_MERKLE_PROOF_MAX];
    size_t len = 0;
    uint64_t worst = 0;
    for (uint64_t m = 0; m < n; m += 97) {
        node_reads = 0;
        assert_int_equal(proto_merkle_prove_inclusion(tree_node, &n, m, n, path, &len), 0);
        if (node_reads > worst)
            worst = node_reads;
    }
    assert_true(worst <= (POW2_LEVEL_MAX + 1) * (POW2_LEVEL_MAX + 1));
}

/* Two logs of the same size that differ in one entry (a fork): neither one's consistency proof
 * from a shared earlier head makes the other's head, and a device holding one head refuses the
 * other with any proof the bank can build. */
static void test_fork_detected(void **state)
{
    (void)state;
    const uint64_t n = 40, m = 23, fork_at = 30;
    static uint8_t saved[HASH];
    uint8_t a_old[HASH], a_new[HASH], b_new[HASH], b_old[HASH];
    ref_mth(0, m, a_old);
    ref_mth(0, n, a_new);
    memcpy(saved, leaves[fork_at], HASH);
    leaves[fork_at][5] ^= 0x55; /* log B: entry 30 rewritten */
    ref_mth(0, n, b_new);
    ref_mth(0, m, b_old);
    assert_memory_equal(a_old, b_old, HASH); /* the shared past */
    assert_memory_not_equal(a_new, b_new, HASH);
    uint8_t proof_b[PROTO_MERKLE_PROOF_MAX][HASH];
    size_t len_b = 0;
    ref_subproof(m, 0, n, true, proof_b, &len_b);
    memcpy(leaves[fork_at], saved, HASH);
    /* B's proof links the shared old head to B's head ... */
    assert_int_equal(proto_merkle_verify_consistency(m, n, a_old, b_new,
                                                     (const proto_merkle_hash_t *)proof_b, len_b),
                     0);
    /* ... but a device that saw A's head at size n, then B's at size n, sees two roots for one
     * size, and B's proof does not link A's head to B's. */
    assert_int_equal(proto_merkle_verify_consistency(n, n, a_new, b_new, NULL, 0), QC_EMISMATCH);
    assert_int_equal(proto_merkle_verify_consistency(m, n, a_old, a_new,
                                                     (const proto_merkle_hash_t *)proof_b, len_b),
                     QC_EMISMATCH);
    /* A device at A's size-n head shown B grown to n + 5: no proof from A's head holds. */
    uint8_t proof_a[PROTO_MERKLE_PROOF_MAX][HASH];
    size_t len_a = 0;
    ref_subproof(n, 0, n + 5, true, proof_a, &len_a);
    uint8_t a_grown[HASH], b_grown[HASH];
    ref_mth(0, n + 5, a_grown);
    leaves[fork_at][5] ^= 0x55;
    ref_mth(0, n + 5, b_grown);
    uint8_t proof_bg[PROTO_MERKLE_PROOF_MAX][HASH];
    size_t len_bg = 0;
    ref_subproof(n, 0, n + 5, true, proof_bg, &len_bg);
    memcpy(leaves[fork_at], saved, HASH);
    assert_int_equal(proto_merkle_verify_consistency(n, n + 5, a_new, a_grown,
                                                     (const proto_merkle_hash_t *)proof_a, len_a),
                     0);
    assert_int_equal(proto_merkle_verify_consistency(n, n + 5, a_new, b_grown,
                                                     (const proto_merkle_hash_t *)proof_bg, len_bg),
                     QC_EMISMATCH);
    assert_int_equal(proto_merkle_verify_consistency(n, n + 5, a_new, b_grown,
                                                     (const proto_merkle_hash_t *)proof_a, len_a),
                     QC_EMISMATCH);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    uint64_t n = 8;
    proto_merkle_hash_t path[PROTO_MERKLE_PROOF_MAX];
    size_t len = 99;
    uint8_t root[HASH] = {0};
    assert_int_equal(proto_merkle_prove_inclusion(tree_node, &n, 8, 8, path, &len), QC_EINVAL);
    assert_int_equal(len, 0);
    assert_int_equal(proto_merkle_prove_consistency(tree_node, &n, 9, 8, path, &len), QC_EINVAL);
    assert_int_equal(proto_merkle_verify_inclusion(leaves[0], 0, 0, NULL, 0, root), QC_EINVAL);
    assert_int_equal(
        proto_merkle_verify_inclusion(leaves[0], 0, PROTO_MERKLE_SIZE_MAX + 1, path, 0, root),
        QC_EINVAL);
    assert_int_equal(
        proto_merkle_verify_consistency(1, PROTO_MERKLE_SIZE_MAX + 1, root, root, path, 0),
        QC_EINVAL);
    /* The largest size's proofs fit PROTO_MERKLE_PROOF_MAX. */
    assert_true(proto_merkle_inclusion_len(0, PROTO_MERKLE_SIZE_MAX) <= PROTO_MERKLE_PROOF_MAX);
    assert_true(proto_merkle_inclusion_len(PROTO_MERKLE_SIZE_MAX - 1, PROTO_MERKLE_SIZE_MAX) <=
                PROTO_MERKLE_PROOF_MAX);
    assert_true(proto_merkle_consistency_len(3, PROTO_MERKLE_SIZE_MAX) <= PROTO_MERKLE_PROOF_MAX);
    assert_true(proto_merkle_consistency_len(PROTO_MERKLE_SIZE_MAX - 1, PROTO_MERKLE_SIZE_MAX) <=
                PROTO_MERKLE_PROOF_MAX);
    assert_true(proto_merkle_consistency_len(1, PROTO_MERKLE_SIZE_MAX - 1) <=
                PROTO_MERKLE_PROOF_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_and_hashes),      cmocka_unit_test(test_small_sizes),
        cmocka_unit_test(test_small_consistency),     cmocka_unit_test(test_powers_of_two),
        cmocka_unit_test(test_reads_are_logarithmic), cmocka_unit_test(test_fork_detected),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
