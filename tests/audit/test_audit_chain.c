/* test_audit_chain.c - the audit log through its API: encoding, append, dedupe, tampering,
 * checkpoints. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <lmdb.h>

#include "ops_time.h"
#include "audit_chain.h"
#include "audit_store.h"
#include "audit_verify.h"
#include "ledger_testkit.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "qc_error.h"
#include "qctest_fs.h"

#define T_MAP_SIZE (64ull << 20)
#define T_DIR_MAX QCTEST_PATH_MAX

typedef struct fixture {
    char dir[T_DIR_MAX];
    audit_store_t *store;
    EVP_PKEY *cp_key;    /* the audit-checkpoint key */
    EVP_PKEY *other_key; /* some other key */
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_int_equal(qctest_dir_new("qc-audit-chain", f->dir), 0);
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

/* Appends one event; returns the result. */
static audit_append_result_t append1(fixture_t *f, const char *source, uint64_t sseq,
                                     const char *type, const uint8_t *txn, const char *payload)
{
    audit_event_t ev = {.source = source,
                        .source_seq = sseq,
                        .type = type,
                        .txn_id = txn,
                        .txn_id_len = txn != NULL ? 16 : 0,
                        .payload = (const uint8_t *)payload,
                        .payload_len = payload != NULL ? strlen(payload) : 0};
    audit_append_result_t r;
    assert_int_equal(audit_store_append(f->store, &ev, 1, &r), 0);
    return r;
}

static int verify(fixture_t *f, audit_verify_report_t *r)
{
    return audit_verify_dir(f->dir, f->cp_key, r);
}

/* Signs {seq, hash of seq} with key and appends it as a checkpoint entry. */
static uint64_t checkpoint(fixture_t *f, EVP_PKEY *key, uint64_t seq, bool wrong_hash)
{
    uint8_t *rec = NULL;
    size_t len = 0;
    assert_int_equal(audit_store_get(f->store, seq, &rec, &len), 0);
    uint8_t hash[AUDIT_HASH_SIZE];
    memcpy(hash, rec + len - AUDIT_HASH_SIZE, AUDIT_HASH_SIZE);
    free(rec);
    if (wrong_hash)
        hash[0] ^= 1;
    Quancun__AuditCheckpoint cp = QUANCUN__AUDIT_CHECKPOINT__INIT;
    cp.seq = seq;
    cp.hash.data = hash;
    cp.hash.len = sizeof hash;
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
    audit_append_result_t r;
    assert_int_equal(audit_store_append(f->store, &ev, 1, &r), 0);
    assert_int_equal(r.code, 0);
    free(body);
    free(env);
    return r.seq;
}

/* ------------------------------------------------------------------ encoding */

static void test_encode_parse(void **state)
{
    (void)state;
    uint8_t txn[16] = {1, 2, 3};
    audit_entry_t e = {.seq = 7,
                       .time_ms = 123456789,
                       .source = "gateway-0",
                       .source_len = 9,
                       .source_seq = 42,
                       .type = "security.x",
                       .type_len = 10,
                       .txn_id = txn,
                       .txn_id_len = 16,
                       .payload = (const uint8_t *)"abc",
                       .payload_len = 3};
    memset(e.prev_hash, 0xab, AUDIT_HASH_SIZE);
    assert_int_equal(audit_chain_hash(&e, e.hash), 0);
    uint8_t *rec = NULL;
    size_t len = 0;
    assert_int_equal(audit_chain_record(&e, &rec, &len), 0);
    assert_int_equal(len, AUDIT_ENCODING_FIXED + 9 + 10 + 16 + 3 + AUDIT_HASH_SIZE);
    /* The documented layout: version, then seq big-endian at offset 1. */
    assert_int_equal(rec[0], AUDIT_ENCODING_VERSION);
    assert_int_equal(rec[8], 7);
    assert_int_equal(rec[25], 0);
    assert_int_equal(rec[26], 9);
    assert_memory_equal(rec + 27, "gateway-0", 9);
    audit_entry_t p;
    assert_int_equal(audit_chain_parse(rec, len, &p), 0);
    assert_int_equal(p.seq, 7);
    assert_int_equal(p.time_ms, 123456789);
    assert_int_equal(p.source_seq, 42);
    assert_memory_equal(p.source, "gateway-0", 9);
    assert_memory_equal(p.payload, "abc", 3);
    assert_memory_equal(p.hash, e.hash, AUDIT_HASH_SIZE);
    assert_int_equal(audit_chain_check(&p, e.prev_hash), 0);
    assert_int_equal(audit_chain_check_record(rec, len, e.prev_hash, &p), 0);
    /* Truncated, trailing, wrong version. */
    assert_int_not_equal(audit_chain_parse(rec, len - 1, &p), 0);
    uint8_t *longer = calloc(1, len + 1);
    memcpy(longer, rec, len);
    assert_int_not_equal(audit_chain_parse(longer, len + 1, &p), 0);
    rec[0] = 2;
    assert_int_equal(audit_chain_parse(rec, len, &p), QC_EVERSION);
    free(longer);
    free(rec);
    /* Names: control bytes and spaces are refused. */
    e.source = "gate way";
    e.source_len = 8;
    assert_int_equal(audit_chain_validate(&e), QC_EINVAL);
}

/* ------------------------------------------------------------------ append, dedupe */

static void test_append_verify(void **state)
{
    fixture_t *f = *state;
    audit_verify_report_t r;
    assert_int_equal(verify(f, &r), 0); /* an empty log is intact */
    assert_int_equal(r.entries, 0);
    audit_event_t evs[50];
    audit_append_result_t res[50];
    char payloads[50][32];
    for (int round = 0; round < 4; round++) {
        for (int i = 0; i < 50; i++) {
            snprintf(payloads[i], sizeof payloads[i], "payload %d/%d", round, i);
            evs[i] = (audit_event_t){.source = "gateway-0",
                                     .source_seq = (uint64_t)(round * 50 + i + 1),
                                     .type = "security.test",
                                     .payload = (const uint8_t *)payloads[i],
                                     .payload_len = strlen(payloads[i])};
        }
        assert_int_equal(audit_store_append(f->store, evs, 50, res), 0);
        for (int i = 0; i < 50; i++) {
            assert_int_equal(res[i].code, 0);
            assert_false(res[i].duplicate);
            assert_int_equal(res[i].seq, (uint64_t)(round * 50 + i + 1));
        }
    }
    uint64_t last = 0, hwm = 0;
    uint8_t hash[AUDIT_HASH_SIZE];
    assert_int_equal(audit_store_last(f->store, &last, hash), 0);
    assert_int_equal(last, 200);
    assert_int_equal(audit_store_hwm(f->store, "gateway-0", &hwm), 0);
    assert_int_equal(hwm, 200);
    assert_int_equal(audit_store_hwm(f->store, "nobody", &hwm), 0);
    assert_int_equal(hwm, 0);
    assert_int_equal(verify(f, &r), 0);
    assert_int_equal(r.entries, 200);
    assert_int_equal(r.last_seq, 200);
    assert_int_equal(r.break_seq, 0);
}

static void test_dedupe(void **state)
{
    fixture_t *f = *state;
    audit_append_result_t a = append1(f, "gateway-0", 5, "security.a", NULL, "one");
    assert_false(a.duplicate);
    assert_int_equal(a.seq, 1);
    audit_append_result_t b = append1(f, "gateway-0", 5, "security.a", NULL, "one again");
    assert_true(b.duplicate);
    assert_int_equal(b.seq, 1);
    /* The same (source, seq) twice inside one batch, between two new ones. */
    audit_event_t evs[3] = {
        {.source = "signer-0", .source_seq = 1, .type = "security.b"},
        {.source = "signer-0", .source_seq = 1, .type = "security.b"},
        {.source = "signer-0", .source_seq = 2, .type = "security.b"},
    };
    audit_append_result_t res[3];
    assert_int_equal(audit_store_append(f->store, evs, 3, res), 0);
    assert_false(res[0].duplicate);
    assert_int_equal(res[0].seq, 2);
    assert_true(res[1].duplicate);
    assert_int_equal(res[1].seq, 2);
    assert_false(res[2].duplicate);
    assert_int_equal(res[2].seq, 3);
    uint64_t seq = 0;
    assert_int_equal(audit_store_dedupe_get(f->store, "signer-0", 2, &seq), 0);
    assert_int_equal(seq, 3);
    assert_int_equal(audit_store_dedupe_get(f->store, "signer-0", 3, &seq), QC_ENOTFOUND);
    /* An invalid event is refused alone; the others of its batch are appended. */
    audit_event_t mixed[2] = {
        {.source = "bad source", .source_seq = 1, .type = "x"},
        {.source = "signer-0", .source_seq = 3, .type = "security.b"},
    };
    assert_int_equal(audit_store_append(f->store, mixed, 2, res), 0);
    assert_int_equal(res[0].code, QC_EINVAL);
    assert_int_equal(res[1].code, 0);
    assert_int_equal(res[1].seq, 4);
    audit_verify_report_t r;
    assert_int_equal(verify(f, &r), 0);
    assert_int_equal(r.entries, 4);
}

static void test_two_sources_interleaved(void **state)
{
    fixture_t *f = *state;
    uint8_t txn[16];
    tk_txn_id(txn);
    uint64_t expect = 1;
    /* A1 B1 A1(dup) A2 B2 B1(dup) ... : every (source, seq) once, in arrival order. */
    for (uint64_t i = 1; i <= 20; i++) {
        audit_append_result_t a = append1(f, "ledger-0", i, "load.reserved", txn, "a");
        assert_false(a.duplicate);
        assert_int_equal(a.seq, expect++);
        audit_append_result_t b = append1(f, "ledger-1", i, "load.reserved", NULL, "b");
        assert_false(b.duplicate);
        assert_int_equal(b.seq, expect++);
        assert_true(append1(f, "ledger-0", i, "load.reserved", txn, "a").duplicate);
        if (i > 1)
            assert_true(append1(f, "ledger-1", i - 1, "load.reserved", NULL, "b").duplicate);
    }
    uint64_t hwm = 0;
    assert_int_equal(audit_store_hwm(f->store, "ledger-0", &hwm), 0);
    assert_int_equal(hwm, 20);
    assert_int_equal(audit_store_hwm(f->store, "ledger-1", &hwm), 0);
    assert_int_equal(hwm, 20);
    uint64_t seqs[64];
    size_t n = 0;
    assert_int_equal(audit_store_txn_seqs(f->store, txn, 16, seqs, 64, &n), 0);
    assert_int_equal(n, 20);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(seqs[i], 2 * i + 1); /* ledger-0's are the odd seqs */
    audit_verify_report_t r;
    assert_int_equal(verify(f, &r), 0);
    assert_int_equal(r.entries, 40);
}

/* ------------------------------------------------------------------ tampering */

/* Flips bit 0 of byte off of the stored value of seq, directly in LMDB, behind the store. */
static void flip_stored_byte(fixture_t *f, uint64_t seq, size_t off, size_t *value_len)
{
    audit_store_destroy(&f->store);
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
    assert_int_equal(mdb_env_open(env, f->dir, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "entries", 0, &dbi), 0);
    uint8_t key[8];
    for (int i = 7; i >= 0; i--)
        key[7 - i] = (uint8_t)(seq >> (8 * i));
    MDB_val k = {.mv_size = 8, .mv_data = key}, v;
    assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
    *value_len = v.mv_size;
    if (off < v.mv_size) {
        uint8_t *copy = malloc(v.mv_size);
        memcpy(copy, v.mv_data, v.mv_size);
        copy[off] ^= 0x01;
        MDB_val nv = {.mv_size = v.mv_size, .mv_data = copy};
        assert_int_equal(mdb_put(txn, dbi, &k, &nv, 0), 0);
        free(copy);
    }
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    assert_int_equal(audit_store_open(f->dir, 0, T_MAP_SIZE, &f->store), 0);
}

static void test_every_byte_flip_found(void **state)
{
    fixture_t *f = *state;
    uint8_t txn[16];
    tk_txn_id(txn);
    for (uint64_t i = 1; i <= 5; i++)
        append1(f, "gateway-0", i, "security.test", i == 3 ? txn : NULL, "payload bytes");
    uint64_t cp = checkpoint(f, f->cp_key, 5, false);
    assert_int_equal(cp, 6);
    append1(f, "gateway-0", 6, "security.test", NULL, "after the checkpoint");
    audit_verify_report_t r;
    assert_int_equal(verify(f, &r), 0);
    assert_int_equal(r.checkpoints, 1);
    assert_int_equal(r.signed_seq, 5);
    /* Every byte of a middle entry, the first, the checkpoint and the last. */
    const uint64_t victims[] = {3, 1, 6, 7};
    for (size_t vi = 0; vi < sizeof victims / sizeof victims[0]; vi++) {
        size_t len = 0;
        flip_stored_byte(f, victims[vi], SIZE_MAX, &len); /* just the length */
        for (size_t off = 0; off < len; off++) {
            size_t l2 = 0;
            flip_stored_byte(f, victims[vi], off, &l2);
            int rc = verify(f, &r);
            if (rc == 0 || r.break_seq != victims[vi])
                fail_msg("flip of byte %zu of seq %llu: rc %d, break at %llu (%s)", off,
                         (unsigned long long)victims[vi], rc, (unsigned long long)r.break_seq,
                         r.why);
            flip_stored_byte(f, victims[vi], off, &l2); /* and back */
        }
    }
    assert_int_equal(verify(f, &r), 0);
    assert_int_equal(r.entries, 7);
}

static void test_gap_found(void **state)
{
    fixture_t *f = *state;
    for (uint64_t i = 1; i <= 4; i++)
        append1(f, "gateway-0", i, "security.test", NULL, "x");
    audit_store_destroy(&f->store);
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
    assert_int_equal(mdb_env_open(env, f->dir, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "entries", 0, &dbi), 0);
    uint8_t key[8] = {0, 0, 0, 0, 0, 0, 0, 2};
    MDB_val k = {.mv_size = 8, .mv_data = key};
    assert_int_equal(mdb_del(txn, dbi, &k, NULL), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    audit_verify_report_t r;
    assert_int_equal(audit_verify_dir(f->dir, f->cp_key, &r), QC_ENOTFOUND);
    assert_int_equal(r.break_seq, 2);
    assert_int_equal(r.entries, 1);
    assert_int_equal(audit_store_open(f->dir, 0, T_MAP_SIZE, &f->store), 0);
}

static void test_checkpoint_keys(void **state)
{
    fixture_t *f = *state;
    for (uint64_t i = 1; i <= 3; i++)
        append1(f, "gateway-0", i, "security.test", NULL, "x");
    checkpoint(f, f->cp_key, 3, false); /* seq 4 */
    uint64_t entry = 0, covered = 0;
    assert_int_equal(audit_store_last_checkpoint(f->store, &entry, &covered), 0);
    assert_int_equal(entry, 4);
    assert_int_equal(covered, 3);
    audit_verify_report_t r;
    assert_int_equal(verify(f, &r), 0);
    /* Signed by another key: found, at its seq. */
    uint64_t bad = checkpoint(f, f->other_key, 4, false);
    assert_int_equal(verify(f, &r), QC_EKEYID);
    assert_int_equal(r.break_seq, bad);
    assert_int_equal(r.checkpoints, 1);
    assert_int_equal(r.entries, bad - 1);
    /* Verified under the other key instead, the first checkpoint is the break. */
    assert_int_equal(audit_verify_dir(f->dir, f->other_key, &r), QC_EKEYID);
    assert_int_equal(r.break_seq, 4);
}

static void test_checkpoint_wrong_hash(void **state)
{
    fixture_t *f = *state;
    for (uint64_t i = 1; i <= 3; i++)
        append1(f, "gateway-0", i, "security.test", NULL, "x");
    uint64_t bad = checkpoint(f, f->cp_key, 2, true);
    audit_verify_report_t r;
    assert_int_equal(verify(f, &r), QC_EMISMATCH);
    assert_int_equal(r.break_seq, bad);
}

/* Puts (or, with seq 0, deletes) the dedupe row (source, source_seq) directly in LMDB. */
static void poke_dedupe(fixture_t *f, const char *source, uint64_t source_seq, uint64_t seq)
{
    audit_store_destroy(&f->store);
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
    assert_int_equal(mdb_env_open(env, f->dir, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "dedupe", 0, &dbi), 0);
    uint8_t key[1 + AUDIT_SOURCE_MAX + 8], val[8];
    size_t sl = strlen(source);
    key[0] = (uint8_t)sl;
    memcpy(key + 1, source, sl);
    for (int i = 0; i < 8; i++) {
        key[1 + sl + (size_t)i] = (uint8_t)(source_seq >> (8 * (7 - i)));
        val[i] = (uint8_t)(seq >> (8 * (7 - i)));
    }
    MDB_val k = {.mv_size = 1 + sl + 8, .mv_data = key}, v = {.mv_size = 8, .mv_data = val};
    if (seq == 0)
        assert_int_equal(mdb_del(txn, dbi, &k, NULL), 0);
    else
        assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    assert_int_equal(audit_store_open(f->dir, 0, T_MAP_SIZE, &f->store), 0);
}

static void test_forged_index_found(void **state)
{
    fixture_t *f = *state;
    for (uint64_t i = 1; i <= 4; i++)
        append1(f, "gateway-0", i, "security.test", NULL, "x");
    audit_verify_report_t r;
    assert_int_equal(verify(f, &r), 0);
    /* A forged key would make audit answer "duplicate" for event 99 and never keep it. */
    poke_dedupe(f, "gateway-0", 99, 2);
    assert_true(append1(f, "gateway-0", 99, "security.test", NULL, "lost").duplicate);
    assert_int_equal(verify(f, &r), QC_EMISMATCH);
    assert_int_equal(r.break_seq, 2);
    poke_dedupe(f, "gateway-0", 99, 0);
    assert_int_equal(verify(f, &r), 0);
    /* A missing key would let event 3 be appended twice. */
    poke_dedupe(f, "gateway-0", 3, 0);
    assert_int_equal(verify(f, &r), QC_EMISMATCH);
    assert_int_equal(r.break_seq, 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_parse),
        cmocka_unit_test_setup_teardown(test_append_verify, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dedupe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_sources_interleaved, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_byte_flip_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gap_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_checkpoint_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_checkpoint_wrong_hash, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forged_index_found, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
