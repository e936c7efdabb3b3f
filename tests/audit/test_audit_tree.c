/* test_audit_tree.c - the audit log's Merkle tree (audit_store.h) through its API: roots and
 * proofs from the stored nodes against the tree recomputed from the entries' bytes, signed
 * tree heads checked by verify (a wrong root, a forged head, a tampered or missing node are
 * each found), the tree rebuilt for a log written before it existed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <lmdb.h>

#include "audit.pb-c.h"
#include "audit_chain.h"
#include "audit_proof.h"
#include "audit_store.h"
#include "audit_verify.h"
#include "ledger_testkit.h"
#include "ops_time.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "proto_merkle.h"
#include "proto_receipt.h"
#include "qc_error.h"
#include "qctest_fs.h"

#define T_MAP_SIZE (64ull << 20)
#define T_ENTRIES 70 /* every size, seq and (old, new) pair up to this */
#define HASH PROTO_MERKLE_HASH_SIZE
#define T_TIME_MS UINT64_C(1765000000000)

typedef struct fixture {
    char dir[QCTEST_PATH_MAX];
    audit_store_t *store;
    EVP_PKEY *cp_key;    /* the audit-checkpoint key */
    EVP_PKEY *other_key; /* some other key */
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_int_equal(qctest_dir_new("qc-audit-tree", f->dir), 0);
    assert_int_equal(audit_store_open(f->dir, 0, T_MAP_SIZE, &f->store), 0);
    f->cp_key = qctest_key_new();
    f->other_key = qctest_key_new();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    audit_store_destroy(&f->store);
    assert_int_equal(qctest_dir_remove(f->dir), 0);
    EVP_PKEY_free(f->cp_key);
    EVP_PKEY_free(f->other_key);
    free(f);
    return 0;
}

/* Appends n events from gateway-0, source_seq first.., in one commit. */
static void append_n(fixture_t *f, uint64_t first, size_t n)
{
    audit_event_t ev[8];
    audit_append_result_t res[8];
    char payload[8][32];
    assert_true(n <= 8);
    for (size_t i = 0; i < n; i++) {
        snprintf(payload[i], sizeof payload[i], "event %llu", (unsigned long long)(first + i));
        ev[i] = (audit_event_t){.source = "gateway-0",
                                .source_seq = first + i,
                                .type = "security.test",
                                .payload = (const uint8_t *)payload[i],
                                .payload_len = strlen(payload[i]),
                                /* Fixed, so that two logs can hold the same entries. */
                                .time_ms = T_TIME_MS + first + i};
    }
    assert_int_equal(audit_store_append(f->store, ev, n, res), 0);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(res[i].code, 0);
}

/* Leaf hash of entry seq, from its stored record (canonical bytes, the chain hash cut). */
static void leaf_of(fixture_t *f, uint64_t seq, uint8_t out[HASH])
{
    uint8_t *rec = NULL;
    size_t len = 0;
    assert_int_equal(audit_store_get(f->store, seq, &rec, &len), 0);
    assert_true(len > AUDIT_HASH_SIZE);
    assert_int_equal(proto_merkle_leaf_hash(rec, len - AUDIT_HASH_SIZE, out), 0);
    free(rec);
}

/* Signs a tree head {seq, chain hash of seq, root} with key and appends it as a checkpoint.
 * root NULL: the stored tree's root. Returns the checkpoint's seq. */
static uint64_t tree_head(fixture_t *f, EVP_PKEY *key, uint64_t seq, const uint8_t *root)
{
    uint8_t *rec = NULL, r[HASH];
    size_t len = 0;
    assert_int_equal(audit_store_get(f->store, seq, &rec, &len), 0);
    if (root == NULL) {
        assert_int_equal(audit_store_tree_root(f->store, seq, r), 0);
        root = r;
    }
    Quancun__AuditCheckpoint cp = QUANCUN__AUDIT_CHECKPOINT__INIT;
    cp.seq = seq;
    cp.hash.data = rec + len - AUDIT_HASH_SIZE;
    cp.hash.len = AUDIT_HASH_SIZE;
    cp.root.data = (uint8_t *)root;
    cp.root.len = HASH;
    cp.time_ms = ops_time_wall_ms();
    uint8_t *body = NULL, *env = NULL;
    size_t body_len = 0, env_len = 0;
    assert_int_equal(proto_pack(&cp.base, &body, &body_len), 0);
    assert_int_equal(proto_envelope_sign(PROTO_TYPE_AUDIT_CHECKPOINT, body, body_len, key, 1, NULL,
                                         0, &env, &env_len),
                     0);
    audit_event_t ev = {.source = AUDIT_SOURCE_SELF,
                        .source_seq = seq,
                        .type = AUDIT_TYPE_CHECKPOINT,
                        .payload = env,
                        .payload_len = env_len};
    audit_append_result_t res;
    assert_int_equal(audit_store_append(f->store, &ev, 1, &res), 0);
    assert_int_equal(res.code, 0);
    free(rec);
    free(body);
    free(env);
    return res.seq;
}

/* Runs fn on the raw LMDB "nodes" database, behind the store's back. */
typedef void(raw_fn)(MDB_txn *txn, MDB_dbi dbi, void *arg);
static void raw_nodes(fixture_t *f, raw_fn *fn, void *arg)
{
    audit_store_destroy(&f->store);
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
    assert_int_equal(mdb_env_open(env, f->dir, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "nodes", 0, &dbi), 0);
    fn(txn, dbi, arg);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

typedef struct poke {
    uint8_t level;
    uint64_t index;
    bool del;
} poke_t;

static void poke_node(MDB_txn *txn, MDB_dbi dbi, void *arg)
{
    const poke_t *p = arg;
    uint8_t key[9], val[HASH];
    key[0] = p->level;
    for (int i = 0; i < 8; i++)
        key[1 + i] = (uint8_t)(p->index >> (8 * (7 - i)));
    MDB_val k = {.mv_size = sizeof key, .mv_data = key}, v;
    if (p->del) {
        assert_int_equal(mdb_del(txn, dbi, &k, NULL), 0);
        return;
    }
    int rc = mdb_get(txn, dbi, &k, &v);
    if (rc == 0) {
        memcpy(val, v.mv_data, HASH);
        val[9] ^= 0x20;
    } else {
        memset(val, 0x5a, HASH); /* a node that should not exist */
    }
    MDB_val nv = {.mv_size = HASH, .mv_data = val};
    assert_int_equal(mdb_put(txn, dbi, &k, &nv, 0), 0);
}

static void drop_nodes(MDB_txn *txn, MDB_dbi dbi, void *arg)
{
    (void)arg;
    assert_int_equal(mdb_drop(txn, dbi, 0), 0);
}

/* ------------------------------------------------------------------ the tests */

/* Every size 1..T_ENTRIES, appended in commits of 1..5 events: the stored tree's root is the
 * tree of the entries' bytes, every entry's proof verifies, every (old, new) pair is consistent
 * and a proof for one entry does not prove another. */
static void test_proofs_every_size(void **state)
{
    fixture_t *f = *state;
    uint8_t leaves[T_ENTRIES][HASH], roots[T_ENTRIES + 1][HASH];
    proto_merkle_compact_t c = {0};
    assert_int_equal(audit_store_tree_root(f->store, 0, roots[0]), 0);
    assert_int_equal(proto_merkle_compact_root(&c, leaves[0]), 0);
    assert_memory_equal(roots[0], leaves[0], HASH);
    uint64_t seq = 0;
    while (seq < T_ENTRIES) {
        size_t n = 1 + seq % 5;
        if (seq + n > T_ENTRIES)
            n = T_ENTRIES - seq;
        append_n(f, seq + 1, n);
        for (size_t i = 0; i < n; i++) {
            seq++;
            leaf_of(f, seq, leaves[seq - 1]);
            assert_int_equal(proto_merkle_compact_append(&c, leaves[seq - 1], NULL, NULL), 0);
            uint8_t want[HASH];
            assert_int_equal(proto_merkle_compact_root(&c, want), 0);
            assert_int_equal(audit_store_tree_root(f->store, seq, roots[seq]), 0);
            assert_memory_equal(roots[seq], want, HASH);
        }
    }
    assert_int_equal(audit_store_tree_root(f->store, T_ENTRIES + 1, roots[0]), QC_ENOTFOUND);
    proto_merkle_hash_t p[PROTO_MERKLE_PROOF_MAX];
    size_t len = 0;
    for (uint64_t size = 1; size <= T_ENTRIES; size++) {
        for (uint64_t s = 1; s <= size; s++) {
            assert_int_equal(audit_store_prove_inclusion(f->store, s, size, p, &len), 0);
            assert_int_equal(
                proto_merkle_verify_inclusion(leaves[s - 1], s - 1, size, p, len, roots[size]), 0);
            if (s > 1)
                assert_int_not_equal(
                    proto_merkle_verify_inclusion(leaves[s - 2], s - 1, size, p, len, roots[size]),
                    0);
        }
        for (uint64_t old = 1; old <= size; old++) {
            assert_int_equal(audit_store_prove_consistency(f->store, old, size, p, &len), 0);
            assert_int_equal(
                proto_merkle_verify_consistency(old, size, roots[old], roots[size], p, len), 0);
        }
    }
    assert_int_equal(audit_store_prove_inclusion(f->store, 0, 5, p, &len), QC_EINVAL);
    assert_int_equal(audit_store_prove_inclusion(f->store, 6, 5, p, &len), QC_EINVAL);
    assert_int_equal(audit_store_prove_inclusion(f->store, 1, T_ENTRIES + 1, p, &len),
                     QC_ENOTFOUND);
    assert_int_equal(audit_store_prove_consistency(f->store, 6, 5, p, &len), QC_EINVAL);
    uint64_t bad = 99;
    assert_int_equal(audit_store_check_tree(f->store, &bad), 0);
    assert_int_equal(bad, 0);
}

/* Signed tree heads: verify checks each root against the entries; the latest and a given
 * size are found; a wrong root and another key's head break the log at that entry. */
static void test_tree_heads_verified(void **state)
{
    fixture_t *f = *state;
    append_n(f, 1, 5);
    uint64_t h1 = tree_head(f, f->cp_key, 5, NULL);
    append_n(f, 6, 7);
    uint64_t h2 = tree_head(f, f->cp_key, h1 + 7, NULL);
    audit_verify_report_t r;
    assert_int_equal(audit_verify_dir(f->dir, f->cp_key, &r), 0);
    assert_int_equal(r.checkpoints, 2);
    assert_int_equal(r.tree_heads, 2);
    assert_int_equal(r.tree_size, h2 - 1);
    uint64_t entry = 0, covered = 0;
    assert_int_equal(audit_store_checkpoint_for(f->store, 0, &entry, &covered), 0);
    assert_int_equal(entry, h2);
    assert_int_equal(covered, h2 - 1);
    assert_int_equal(audit_store_checkpoint_for(f->store, 5, &entry, &covered), 0);
    assert_int_equal(entry, h1);
    assert_int_equal(audit_store_checkpoint_for(f->store, 4, &entry, &covered), QC_ENOTFOUND);

    /* A head whose root is not the tree's: the signature is good, the root is not. */
    uint8_t wrong[HASH];
    assert_int_equal(audit_store_tree_root(f->store, h2, wrong), 0);
    wrong[0] ^= 1;
    uint64_t h3 = tree_head(f, f->cp_key, h2, wrong);
    assert_int_equal(audit_verify_dir(f->dir, f->cp_key, &r), QC_EMISMATCH);
    assert_int_equal(r.break_seq, h3);
    assert_non_null(strstr(r.why, "Merkle root"));
}

static void test_forged_tree_head(void **state)
{
    fixture_t *f = *state;
    append_n(f, 1, 3);
    uint64_t h = tree_head(f, f->other_key, 3, NULL);
    audit_verify_report_t r;
    assert_int_equal(audit_verify_dir(f->dir, f->cp_key, &r), QC_EKEYID);
    assert_int_equal(r.break_seq, h);
    /* And opened on its own, as a device would. */
    uint8_t *rec = NULL;
    size_t len = 0;
    audit_entry_t e;
    assert_int_equal(audit_store_get(f->store, h, &rec, &len), 0);
    assert_int_equal(audit_chain_parse(rec, len, &e), 0);
    audit_tree_head_t head;
    assert_int_equal(audit_verify_tree_head(e.payload, e.payload_len, f->cp_key, &head), QC_EKEYID);
    assert_int_equal(audit_verify_tree_head(e.payload, e.payload_len, f->other_key, &head), 0);
    assert_true(head.has_root);
    assert_int_equal(head.size, 3);
    free(rec);
}

/* A stored node altered, removed or added is found, naming the entry whose subtree it is. */
static void test_tampered_nodes_found(void **state)
{
    fixture_t *f = *state;
    append_n(f, 1, 8);
    append_n(f, 9, 4);
    audit_verify_report_t r;
    assert_int_equal(audit_verify_dir(f->dir, f->cp_key, &r), 0);
    struct {
        poke_t poke;
        uint64_t break_seq;
    } cases[] = {
        {{.level = 0, .index = 6}, 7},           /* a leaf */
        {{.level = 2, .index = 1}, 8},           /* leaves 4..7, completed by entry 8 */
        {{.level = 3, .index = 0, .del = true}}, /* leaves 0..7, gone: found at entry 8 */
        {{.level = 0, .index = 12}, 13},         /* a leaf beyond the log */
    };
    cases[2].break_seq = 8;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        raw_nodes(f, poke_node, &cases[i].poke);
        assert_int_equal(audit_verify_dir(f->dir, f->cp_key, &r), QC_EMISMATCH);
        assert_int_equal(r.break_seq, cases[i].break_seq);
        /* Rebuild: drop the tree and let the store rebuild it from the entries. */
        raw_nodes(f, drop_nodes, NULL);
        assert_int_equal(audit_store_open(f->dir, 0, T_MAP_SIZE, &f->store), 0);
        assert_int_equal(audit_verify_dir(f->dir, f->cp_key, &r), 0);
    }
}

/* A log whose tree is missing (written before the tree existed) gets it rebuilt on open, with
 * the same root. */
static void test_backfill(void **state)
{
    fixture_t *f = *state;
    append_n(f, 1, 7);
    append_n(f, 8, 6);
    uint8_t before[HASH], after[HASH];
    assert_int_equal(audit_store_tree_root(f->store, 13, before), 0);
    raw_nodes(f, drop_nodes, NULL);
    /* Read-only (a verifier's copy) sees no tree: the log is reported, not repaired. */
    audit_verify_report_t r;
    assert_int_equal(audit_verify_dir(f->dir, f->cp_key, &r), QC_EMISMATCH);
    assert_int_equal(r.break_seq, 1);
    assert_int_equal(audit_store_open(f->dir, 0, T_MAP_SIZE, &f->store), 0);
    assert_int_equal(audit_store_tree_root(f->store, 13, after), 0);
    assert_memory_equal(before, after, HASH);
    assert_int_equal(audit_verify_dir(f->dir, f->cp_key, &r), 0);
    append_n(f, 14, 1);
    uint64_t bad = 0;
    assert_int_equal(audit_store_check_tree(f->store, &bad), 0);
}

/* Appends n events about txn (gateway-1, source_seq first..), one commit each. */
static void append_txn(fixture_t *f, const uint8_t txn[16], uint64_t first, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        audit_event_t ev = {.source = "gateway-1",
                            .source_seq = first + i,
                            .type = i == 0 ? "load.reserved" : "load.confirmed",
                            .txn_id = txn,
                            .txn_id_len = 16,
                            .payload = (const uint8_t *)"load",
                            .payload_len = 4};
        audit_append_result_t res;
        assert_int_equal(audit_store_append(f->store, &ev, 1, &res), 0);
        assert_int_equal(res.code, 0);
    }
}

/* Asks the store method with request m packed; returns the code, *reply the body. */
static int ask(fixture_t *f, const char *method, const ProtobufCMessage *m, uint8_t **reply,
               size_t *len)
{
    uint8_t *body = NULL;
    size_t body_len = 0;
    assert_int_equal(proto_pack(m, &body, &body_len), 0);
    int rc = audit_proof_answer(f->store, method, body, body_len, reply, len);
    free(body);
    return rc;
}

static int ask_prove(fixture_t *f, const uint8_t txn[16], uint64_t size, uint8_t **reply,
                     size_t *len)
{
    Qcaudit__ProveRequest req = QCAUDIT__PROVE_REQUEST__INIT;
    req.txn_id.data = (uint8_t *)txn;
    req.txn_id.len = 16;
    req.tree_size = size;
    return ask(f, AUDIT_PROOF_METHOD_PROVE, &req.base, reply, len);
}

/* A receipt for a load: every entry of it within the signed head, verified as a device would;
 * a later entry is pending until the next head; another load, a tampered entry, a path for
 * another leaf and a head by another key are each refused. */
static void test_receipt(void **state)
{
    fixture_t *f = *state;
    uint8_t txn[16], other[16];
    tk_txn_id(txn);
    tk_txn_id(other);
    append_n(f, 1, 3);
    append_txn(f, txn, 100, 2);
    append_n(f, 4, 2);
    append_txn(f, other, 200, 1);
    uint64_t h = tree_head(f, f->cp_key, 8, NULL);
    append_txn(f, txn, 102, 1); /* after the head: pending */
    uint8_t *reply = NULL;
    size_t len = 0;
    assert_int_equal(ask_prove(f, txn, 0, &reply, &len), 0);
    proto_receipt_t rc;
    assert_int_equal(proto_receipt_verify(reply, len, f->cp_key, txn, &rc), 0);
    assert_int_equal(rc.head.size, 8);
    assert_int_equal(rc.entries, 2);
    assert_int_equal(rc.seqs[0], 4);
    assert_int_equal(rc.seqs[1], 5);
    assert_string_equal(rc.types[0], "load.reserved");
    assert_int_equal(rc.pending, 1);
    assert_false(rc.more);
    /* The same reply is no receipt for another load, nor under another key. */
    assert_int_equal(proto_receipt_verify(reply, len, f->cp_key, other, &rc), QC_EMISMATCH);
    assert_int_equal(proto_receipt_verify(reply, len, f->other_key, txn, &rc), QC_EKEYID);

    /* Tampering, on the decoded reply: an entry byte, a path hash, the claimed seq. */
    Qcaudit__ProveReply *r = qcaudit__prove_reply__unpack(NULL, len, reply);
    assert_non_null(r);
    uint8_t *t = NULL;
    size_t tlen = 0;
    struct {
        uint8_t *byte;
        int want;
    } flips[] = {
        {&r->proofs[0]->entry.data[r->proofs[0]->entry.len - 1], QC_EMISMATCH},
        {&r->proofs[1]->path[0].data[3], QC_EMISMATCH},
    };
    for (size_t i = 0; i < sizeof flips / sizeof flips[0]; i++) {
        *flips[i].byte ^= 1;
        assert_int_equal(proto_pack(&r->base, &t, &tlen), 0);
        assert_int_equal(proto_receipt_verify(t, tlen, f->cp_key, txn, &rc), flips[i].want);
        free(t);
        *flips[i].byte ^= 1;
    }
    r->proofs[0]->seq = 5; /* the first entry's proof presented as the second's */
    assert_int_equal(proto_pack(&r->base, &t, &tlen), 0);
    assert_int_equal(proto_receipt_verify(t, tlen, f->cp_key, txn, &rc), QC_EMISMATCH);
    free(t);
    r->proofs[0]->seq = 4;
    r->proofs[1]->n_path--; /* truncated */
    assert_int_equal(proto_pack(&r->base, &t, &tlen), 0);
    assert_int_equal(proto_receipt_verify(t, tlen, f->cp_key, txn, &rc), QC_EDECODE);
    free(t);
    r->proofs[1]->n_path++;
    qcaudit__prove_reply__free_unpacked(r, NULL);
    free(reply);

    /* A head signed by another key, appended as the latest: the receipt built on it is
     * refused by a device holding the bank's certificate. */
    tree_head(f, f->other_key, h + 1, NULL);
    assert_int_equal(ask_prove(f, txn, 0, &reply, &len), 0);
    assert_int_equal(proto_receipt_verify(reply, len, f->cp_key, txn, &rc), QC_EKEYID);
    free(reply);
    /* The earlier head by size still proves it. */
    assert_int_equal(ask_prove(f, txn, 8, &reply, &len), 0);
    assert_int_equal(proto_receipt_verify(reply, len, f->cp_key, txn, &rc), 0);
    free(reply);
    uint8_t unknown[16] = {1};
    assert_int_equal(ask_prove(f, unknown, 0, &reply, &len), QC_ENOTFOUND);
    assert_int_equal(ask_prove(f, txn, 7, &reply, &len), QC_ENOTFOUND);
}

/* tree_head and consistency between heads; a forked log (another log of the same size)
 * is detected by a device holding a head of one and shown a head of the other. */
static void test_consistency_and_fork(void **state)
{
    fixture_t *f = *state;
    append_n(f, 1, 6);
    tree_head(f, f->cp_key, 6, NULL);
    append_n(f, 7, 5);
    tree_head(f, f->cp_key, 12, NULL);
    Qcaudit__TreeHeadRequest thr = QCAUDIT__TREE_HEAD_REQUEST__INIT;
    uint8_t *reply = NULL;
    size_t len = 0;
    assert_int_equal(ask(f, AUDIT_PROOF_METHOD_TREE_HEAD, &thr.base, &reply, &len), 0);
    Qcaudit__TreeHeadReply *th = qcaudit__tree_head_reply__unpack(NULL, len, reply);
    assert_non_null(th);
    proto_tree_head_t latest, old;
    assert_int_equal(
        proto_tree_head_open(th->tree_head.data, th->tree_head.len, f->cp_key, &latest), 0);
    assert_int_equal(latest.size, 12);
    qcaudit__tree_head_reply__free_unpacked(th, NULL);
    free(reply);
    thr.tree_size = 5;
    assert_int_equal(ask(f, AUDIT_PROOF_METHOD_TREE_HEAD, &thr.base, &reply, &len), QC_ENOTFOUND);

    Qcaudit__ConsistencyRequest cr = QCAUDIT__CONSISTENCY_REQUEST__INIT;
    cr.old_size = 6;
    assert_int_equal(ask(f, AUDIT_PROOF_METHOD_CONSISTENCY, &cr.base, &reply, &len), 0);
    Qcaudit__ConsistencyReply *c = qcaudit__consistency_reply__unpack(NULL, len, reply);
    assert_non_null(c);
    assert_int_equal(
        proto_tree_head_open(c->old_tree_head.data, c->old_tree_head.len, f->cp_key, &old), 0);
    assert_int_equal(old.size, 6);
    assert_int_equal(proto_tree_head_open(c->tree_head.data, c->tree_head.len, f->cp_key, &latest),
                     0);
    proto_merkle_hash_t proof[PROTO_MERKLE_PROOF_MAX];
    assert_true(c->n_proof <= PROTO_MERKLE_PROOF_MAX);
    for (size_t i = 0; i < c->n_proof; i++)
        memcpy(proof[i], c->proof[i].data, HASH);
    assert_int_equal(proto_tree_head_consistent(&old, &latest, proof, c->n_proof), 0);
    assert_int_equal(proto_tree_head_consistent(&latest, &old, proof, c->n_proof), QC_EINVAL);
    size_t n_proof = c->n_proof;
    qcaudit__consistency_reply__free_unpacked(c, NULL);
    free(reply);
    cr.old_size = 13;
    assert_int_equal(ask(f, AUDIT_PROOF_METHOD_CONSISTENCY, &cr.base, &reply, &len), QC_EINVAL);

    /* The fork: another log, same first 6 entries, then a different 7th. A device that holds
     * this log's head of 12 (or of 6) is shown the other's head of 12 with its proof. */
    fixture_t *g = NULL;
    setup((void **)&g);
    append_n(g, 1, 6);
    tree_head(g, g->cp_key, 6, NULL);
    append_n(g, 70, 5); /* other events */
    proto_tree_head_t forked;
    uint8_t root[HASH];
    assert_int_equal(audit_store_tree_root(g->store, 12, root), 0);
    forked = latest;
    memcpy(forked.root, root, HASH);
    assert_memory_not_equal(forked.root, latest.root, HASH);
    proto_merkle_hash_t gproof[PROTO_MERKLE_PROOF_MAX];
    size_t glen = 0;
    assert_int_equal(audit_store_prove_consistency(g->store, 6, 12, gproof, &glen), 0);
    assert_int_equal(glen, n_proof);
    /* Same size, two roots: a fork, whatever proof. */
    assert_int_equal(proto_tree_head_consistent(&latest, &forked, NULL, 0), QC_EMISMATCH);
    /* The other log's proof links the shared head of 6 to its own head, not to this one's ... */
    proto_tree_head_t g_old;
    assert_int_equal(audit_store_tree_root(g->store, 6, g_old.root), 0);
    g_old.size = 6;
    assert_memory_equal(g_old.root, old.root, HASH);
    assert_int_equal(proto_tree_head_consistent(&old, &forked, gproof, glen), 0);
    assert_int_equal(proto_tree_head_consistent(&old, &latest, gproof, glen), QC_EMISMATCH);
    /* ... and nothing links this log's head of 12 to the other's grown to 13. */
    append_n(g, 90, 1);
    proto_tree_head_t grown = {.size = 13};
    assert_int_equal(audit_store_tree_root(g->store, 13, grown.root), 0);
    assert_int_equal(audit_store_prove_consistency(g->store, 12, 13, gproof, &glen), 0);
    assert_int_equal(proto_tree_head_consistent(&latest, &grown, gproof, glen), QC_EMISMATCH);
    teardown((void **)&g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_proofs_every_size, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tree_heads_verified, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forged_tree_head, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tampered_nodes_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backfill, setup, teardown),
        cmocka_unit_test_setup_teardown(test_receipt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_consistency_and_fork, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
