/* merkle_bench.c - RFC 9162 tree figures (proto_merkle.h) at N entries, in memory: seconds to
 * hash N entries and build every complete subtree, then per proof the microseconds to prove
 * and to verify inclusion and consistency, and the proofs' sizes in hashes and bytes.
 *
 *   merkle_bench [--entries N] [--payload BYTES] [--proofs K] [--store DIR]
 *
 * Entries are --payload bytes each (default 256, about an audit entry of a signed event); the
 * tree is kept as the audit log keeps it, one hash per complete subtree. K inclusion proofs
 * of evenly spread leaves in the tree of N, and K consistency proofs from evenly spread old
 * sizes to N, are built and verified. With --store DIR, the same N entries are also appended
 * to an audit log in DIR (audit_store.h: 4096 events a commit, fsync on), and its proofs,
 * read from the stored subtree hashes in LMDB as qc-audit answers them, are timed, with the
 * offline recomputation of the whole tree (audit_store_check_tree()).
 * Not a CTest test; run it from a Release build. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit_store.h"
#include "ops_time.h"
#include "proto_merkle.h"
#include "qc_error.h"

#define BENCH_ENTRIES_DEFAULT 1000000
#define BENCH_PAYLOAD_DEFAULT 256
#define BENCH_PROOFS_DEFAULT 10000
#define BENCH_PAYLOAD_MAX 65536
#define HASH PROTO_MERKLE_HASH_SIZE

typedef struct bench_tree {
    uint64_t size;
    uint8_t *levels[PROTO_MERKLE_LEVELS_MAX]; /* levels[l][i * HASH] = node (l, i) */
} bench_tree_t;

static int bench_node(void *arg, unsigned level, uint64_t index, uint8_t out[HASH])
{
    const bench_tree_t *t = arg;
    if (level >= PROTO_MERKLE_LEVELS_MAX || ((index + 1) << level) > t->size)
        return QC_EINTERNAL;
    memcpy(out, t->levels[level] + index * HASH, HASH);
    return 0;
}

static int bench_build(bench_tree_t *t, uint64_t n, size_t payload, uint8_t root[HASH])
{
    uint8_t *entry = calloc(1, payload + 8);
    if (entry == NULL)
        return QC_ENOMEM;
    for (unsigned l = 0; l < PROTO_MERKLE_LEVELS_MAX && (n >> l) > 0; l++)
        if ((t->levels[l] = malloc((n >> l) * HASH)) == NULL)
            return QC_ENOMEM;
    proto_merkle_compact_t c = {0};
    int rc = 0;
    for (uint64_t i = 0; i < n && rc == 0; i++) {
        memcpy(entry, &i, sizeof i); /* every entry differs */
        uint8_t leaf[HASH];
        proto_merkle_hash_t done[PROTO_MERKLE_LEVELS_MAX];
        size_t nd = 0;
        if ((rc = proto_merkle_leaf_hash(entry, payload, leaf)) == 0)
            rc = proto_merkle_compact_append(&c, leaf, done, &nd);
        for (size_t l = 0; rc == 0 && l < nd; l++)
            memcpy(t->levels[l] + (i >> l) * HASH, done[l], HASH);
    }
    free(entry);
    t->size = n;
    return rc != 0 ? rc : proto_merkle_compact_root(&c, root);
}

#define BENCH_STORE_MAP (8ull << 30)

/* The same figures from an audit log on disk: append n entries, then prove from LMDB. */
static int bench_store(const char *dir, uint64_t n, size_t payload, uint64_t proofs)
{
    audit_store_t *store = NULL;
    int rc = audit_store_open(dir, 0, BENCH_STORE_MAP, &store);
    if (rc != 0)
        return rc;
    uint64_t have = 0;
    uint8_t hash[HASH];
    if ((rc = audit_store_last(store, &have, hash)) != 0)
        goto out;
    audit_event_t *ev = calloc(AUDIT_STORE_BATCH_MAX, sizeof *ev);
    audit_append_result_t *res = calloc(AUDIT_STORE_BATCH_MAX, sizeof *res);
    uint8_t *pay = calloc(AUDIT_STORE_BATCH_MAX, payload + 8);
    if (ev == NULL || res == NULL || pay == NULL) {
        rc = QC_ENOMEM;
        free(ev);
        free(res);
        free(pay);
        goto out;
    }
    uint64_t t0 = ops_time_mono_ns();
    for (uint64_t next = have + 1; next <= n && rc == 0;) {
        size_t b = 0;
        for (; b < AUDIT_STORE_BATCH_MAX && next + b <= n; b++) {
            uint8_t *p = pay + b * (payload + 8);
            uint64_t id = next + b;
            memcpy(p, &id, sizeof id);
            ev[b] = (audit_event_t){.source = "bench",
                                    .source_seq = id,
                                    .type = "bench.event",
                                    .payload = p,
                                    .payload_len = payload};
        }
        rc = audit_store_append(store, ev, b, res);
        next += b;
    }
    double append_s = (double)(ops_time_mono_ns() - t0) / 1e9;
    free(ev);
    free(res);
    free(pay);
    if (rc != 0)
        goto out;
    if (have < n)
        printf("store       %" PRIu64 " entries appended in %.1f s (%.0f entries/s, leaves and "
               "subtrees written in the same commits)\n",
               n - have, append_s, (double)(n - have) / append_s);
    uint8_t root[HASH];
    t0 = ops_time_mono_ns();
    if ((rc = audit_store_tree_root(store, n, root)) != 0)
        goto out;
    printf("store       root of %" PRIu64 " entries from LMDB in %.1f us\n", n,
           (double)(ops_time_mono_ns() - t0) / 1e3);
    proto_merkle_hash_t path[PROTO_MERKLE_PROOF_MAX];
    size_t len = 0, len_max = 0;
    uint64_t prove_ns = 0, cons_ns = 0;
    for (uint64_t k = 0; k < proofs && rc == 0; k++) {
        uint64_t seq = 1 + k * (n / proofs) + (k % 7);
        if (seq > n)
            seq = n;
        uint64_t a = ops_time_mono_ns();
        rc = audit_store_prove_inclusion(store, seq, n, path, &len);
        prove_ns += ops_time_mono_ns() - a;
        len_max = len > len_max ? len : len_max;
        uint64_t old = seq < n ? seq : n - 1;
        a = ops_time_mono_ns();
        if (rc == 0)
            rc = audit_store_prove_consistency(store, old, n, path, &len);
        cons_ns += ops_time_mono_ns() - a;
    }
    if (rc != 0)
        goto out;
    printf("store       %" PRIu64 " inclusion proofs from LMDB: %.1f us each (at most %zu hashes); "
           "%" PRIu64 " consistency proofs: %.1f us each\n",
           proofs, (double)prove_ns / proofs / 1e3, len_max, proofs,
           (double)cons_ns / proofs / 1e3);
    uint64_t bad = 0;
    t0 = ops_time_mono_ns();
    rc = audit_store_check_tree(store, &bad);
    printf("store       whole tree recomputed from the entries and compared: %.1f s (%s)\n",
           (double)(ops_time_mono_ns() - t0) / 1e9, rc == 0 ? "intact" : qc_strerror(rc));
out:
    audit_store_destroy(&store);
    return rc;
}

static uint64_t arg_u64(const char *s)
{
    char *end = NULL;
    uint64_t v = strtoull(s, &end, 10);
    if (end == s || *end != '\0' || v == 0) {
        fprintf(stderr, "merkle_bench: bad number %s\n", s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    uint64_t n = BENCH_ENTRIES_DEFAULT, proofs = BENCH_PROOFS_DEFAULT;
    size_t payload = BENCH_PAYLOAD_DEFAULT;
    const char *store_dir = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--entries") == 0)
            n = arg_u64(argv[i + 1]);
        else if (strcmp(argv[i], "--payload") == 0)
            payload = (size_t)arg_u64(argv[i + 1]);
        else if (strcmp(argv[i], "--proofs") == 0)
            proofs = arg_u64(argv[i + 1]);
        else if (strcmp(argv[i], "--store") == 0)
            store_dir = argv[i + 1];
        else {
            fprintf(stderr, "usage: merkle_bench [--entries N] [--payload BYTES] [--proofs K] "
                            "[--store DIR]\n");
            return 2;
        }
    }
    if (payload > BENCH_PAYLOAD_MAX || n < 2)
        return 2;
    bench_tree_t t = {0};
    uint8_t root[HASH];
    uint64_t t0 = ops_time_mono_ns();
    int rc = bench_build(&t, n, payload, root);
    double build_s = (double)(ops_time_mono_ns() - t0) / 1e9;
    if (rc != 0) {
        fprintf(stderr, "merkle_bench: build: %s\n", qc_strerror(rc));
        return 1;
    }
    printf("entries %" PRIu64 " of %zu bytes: leaves hashed and tree built in %.2f s (%.0f "
           "entries/s)\n",
           n, payload, build_s, (double)n / build_s);

    proto_merkle_hash_t path[PROTO_MERKLE_PROOF_MAX];
    size_t len = 0, len_min = SIZE_MAX, len_max = 0, len_sum = 0;
    uint64_t prove_ns = 0, verify_ns = 0;
    for (uint64_t k = 0; k < proofs && rc == 0; k++) {
        uint64_t m = k * (n / proofs) + (k % 7);
        if (m >= n)
            m = n - 1;
        uint64_t a = ops_time_mono_ns();
        rc = proto_merkle_prove_inclusion(bench_node, &t, m, n, path, &len);
        uint64_t b = ops_time_mono_ns();
        if (rc == 0)
            rc = proto_merkle_verify_inclusion(t.levels[0] + m * HASH, m, n, path, len, root);
        verify_ns += ops_time_mono_ns() - b;
        prove_ns += b - a;
        len_sum += len;
        len_min = len < len_min ? len : len_min;
        len_max = len > len_max ? len : len_max;
    }
    if (rc != 0) {
        fprintf(stderr, "merkle_bench: inclusion: %s\n", qc_strerror(rc));
        return 1;
    }
    printf("inclusion   %" PRIu64 " proofs: %zu..%zu hashes (%zu..%zu bytes), mean %.1f; prove "
           "%.2f us, verify %.2f us each\n",
           proofs, len_min, len_max, len_min * HASH, len_max * HASH, (double)len_sum / proofs,
           (double)prove_ns / proofs / 1e3, (double)verify_ns / proofs / 1e3);

    len_min = SIZE_MAX;
    len_max = len_sum = 0;
    prove_ns = verify_ns = 0;
    for (uint64_t k = 0; k < proofs && rc == 0; k++) {
        uint64_t m = 1 + k * ((n - 1) / proofs) + (k % 5);
        if (m >= n)
            m = n - 1;
        uint8_t old_root[HASH];
        if ((rc = proto_merkle_root(bench_node, &t, m, old_root)) != 0)
            break;
        uint64_t a = ops_time_mono_ns();
        rc = proto_merkle_prove_consistency(bench_node, &t, m, n, path, &len);
        uint64_t b = ops_time_mono_ns();
        if (rc == 0)
            rc = proto_merkle_verify_consistency(m, n, old_root, root, path, len);
        verify_ns += ops_time_mono_ns() - b;
        prove_ns += b - a;
        len_sum += len;
        len_min = len < len_min ? len : len_min;
        len_max = len > len_max ? len : len_max;
    }
    if (rc != 0) {
        fprintf(stderr, "merkle_bench: consistency: %s\n", qc_strerror(rc));
        return 1;
    }
    printf("consistency %" PRIu64 " proofs to size %" PRIu64 ": %zu..%zu hashes (%zu..%zu bytes), "
           "mean %.1f; prove %.2f us, verify %.2f us each\n",
           proofs, n, len_min, len_max, len_min * HASH, len_max * HASH, (double)len_sum / proofs,
           (double)prove_ns / proofs / 1e3, (double)verify_ns / proofs / 1e3);
    for (unsigned l = 0; l < PROTO_MERKLE_LEVELS_MAX; l++)
        free(t.levels[l]);
    if (store_dir != NULL && (rc = bench_store(store_dir, n, payload, proofs)) != 0) {
        fprintf(stderr, "merkle_bench: store: %s\n", qc_strerror(rc));
        return 1;
    }
    return 0;
}
