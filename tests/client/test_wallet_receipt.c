/* test_wallet_receipt.c - the wallet's receipts (wallet_receipt.h) against a bank simulated by
 * audit logs in this process: a receipt verified and its head kept, a later head accepted only
 * with its consistency proof, a forked log detected (and its head kept as evidence), a head
 * by another key refused, an exported receipt checked offline and refused once altered; and
 * the shape checks a gateway applies to what it forwards. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "audit.pb-c.h"
#include "audit_proof.h"
#include "audit_store.h"
#include "device_home.h"
#include "ledger_testkit.h"
#include "ops_time.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "proto_receipt.h"
#include "qc_error.h"
#include "qctest_fs.h"
#include "qctest_key.h"
#include "wallet_receipt.h"

#define T_MAP_SIZE (16ull << 20)
#define T_TIME_MS UINT64_C(1765000000000)

typedef struct bank {
    char dir[QCTEST_PATH_MAX];
    audit_store_t *store;
} bank_t;

typedef struct fixture {
    char home[QCTEST_PATH_MAX];
    bank_t a, b;     /* two logs: b is a fork of a */
    bank_t *shown;   /* the one the "gateway" answers from */
    EVP_PKEY *key;   /* the bank's audit-checkpoint key */
    EVP_PKEY *other; /* someone else's */
    uint8_t txn[16]; /* the device's load */
    int calls;       /* calls made by the wallet */
} fixture_t;

static void bank_open(bank_t *b, const char *name)
{
    assert_int_equal(qctest_dir_new(name, b->dir), 0);
    assert_int_equal(audit_store_open(b->dir, 0, T_MAP_SIZE, &b->store), 0);
}

static void bank_close(bank_t *b)
{
    audit_store_destroy(&b->store);
    assert_int_equal(qctest_dir_remove(b->dir), 0);
}

/* Appends events first..first+n-1 (about txn when given), at fixed times so that two logs
 * can hold the same entries. */
static void bank_append(bank_t *b, uint64_t first, size_t n, const uint8_t *txn)
{
    for (size_t i = 0; i < n; i++) {
        audit_event_t ev = {.source = "ledger-0",
                            .source_seq = first + i,
                            .type = txn != NULL ? "load.reserved" : "account.deposit",
                            .txn_id = txn,
                            .txn_id_len = txn != NULL ? 16 : 0,
                            .payload = (const uint8_t *)"x",
                            .payload_len = 1,
                            .time_ms = T_TIME_MS + first + i};
        audit_append_result_t res;
        assert_int_equal(audit_store_append(b->store, &ev, 1, &res), 0);
        assert_int_equal(res.code, 0);
    }
}

/* Signs the head of the log's current size with key and appends it. */
static void bank_head(bank_t *b, EVP_PKEY *key)
{
    uint64_t seq = 0;
    uint8_t hash[32], root[32];
    assert_int_equal(audit_store_last(b->store, &seq, hash), 0);
    assert_int_equal(audit_store_tree_root(b->store, seq, root), 0);
    Quancun__AuditCheckpoint cp = QUANCUN__AUDIT_CHECKPOINT__INIT;
    cp.seq = seq;
    cp.hash.data = hash;
    cp.hash.len = sizeof hash;
    cp.root.data = root;
    cp.root.len = sizeof root;
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
    assert_int_equal(audit_store_append(b->store, &ev, 1, &res), 0);
    free(body);
    free(env);
}

/* The gateway and audit log as the wallet sees them: the gateway's shape checks, then the
 * audit log's answer from the log shown. */
static int fake_call(void *arg, const char *method, const uint8_t *body, size_t len,
                     device_reply_t *out)
{
    fixture_t *f = arg;
    memset(out, 0, sizeof *out);
    f->calls++;
    int rc = proto_receipt_check_request(method, body, len);
    if (rc == 0)
        rc = audit_proof_answer(f->shown->store,
                                strcmp(method, PROTO_METHOD_RECEIPT) == 0 ? "prove" : "consistency",
                                body, len, &out->body, &out->body_len);
    if (rc == 0)
        rc = proto_receipt_check_reply(method, out->body, out->body_len);
    out->code = rc;
    return 0;
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_int_equal(qctest_dir_new("qc-wallet-receipt", f->home), 0);
    bank_open(&f->a, "qc-receipt-bank-a");
    bank_open(&f->b, "qc-receipt-bank-b");
    f->shown = &f->a;
    f->key = qctest_key_new();
    f->other = qctest_key_new();
    tk_txn_id(f->txn);
    char pem[QCTEST_PATH_MAX + 32];
    snprintf(pem, sizeof pem, "%s/cp.pem", f->home);
    qctest_write_pubkey(pem, f->key);
    assert_int_equal(wallet_receipt_install_checkpoint(f->home, pem), 0);
    /* Both logs: 5 events, the load's 2, then a head; they agree so far. */
    bank_t *banks[] = {&f->a, &f->b};
    for (size_t i = 0; i < 2; i++) {
        bank_append(banks[i], 1, 5, NULL);
        bank_append(banks[i], 6, 2, f->txn);
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    bank_close(&f->a);
    bank_close(&f->b);
    assert_int_equal(qctest_dir_remove(f->home), 0);
    EVP_PKEY_free(f->key);
    EVP_PKEY_free(f->other);
    free(f);
    return 0;
}

static int get(fixture_t *f, wallet_receipt_result_t *res)
{
    uint8_t *reply = NULL;
    size_t len = 0;
    char message[DEVICE_MESSAGE_MAX + 1];
    int rc = wallet_receipt_get(f->home, fake_call, f, f->txn, res, &reply, &len, message);
    free(reply);
    return rc;
}

static bool home_has(fixture_t *f, const char *name)
{
    char path[DEVICE_PATH_MAX];
    assert_int_equal(device_home_path(f->home, name, path), 0);
    return access(path, F_OK) == 0;
}

/* A receipt, then a later head accepted with its consistency proof. */
static void test_receipt_and_consistency(void **state)
{
    fixture_t *f = *state;
    wallet_receipt_result_t res;
    assert_int_equal(get(f, &res), QC_ENOTFOUND); /* no head yet */
    bank_head(&f->a, f->key);
    assert_int_equal(get(f, &res), 0);
    assert_false(res.had_head);
    assert_true(res.advanced);
    assert_int_equal(res.receipt.head.size, 7);
    assert_int_equal(res.receipt.entries, 2);
    assert_int_equal(res.receipt.seqs[0], 6);
    assert_true(home_has(f, WALLET_TREE_HEAD_FILE));
    /* The same head again: agrees, no call beyond the receipt's. */
    f->calls = 0;
    assert_int_equal(get(f, &res), 0);
    assert_true(res.had_head);
    assert_false(res.advanced);
    assert_int_equal(f->calls, 1);
    /* The log grows: the new head is taken only with the proof from the kept one. */
    bank_append(&f->a, 8, 9, NULL);
    bank_head(&f->a, f->key);
    f->calls = 0;
    assert_int_equal(get(f, &res), 0);
    assert_true(res.advanced);
    assert_int_equal(res.kept_size, 17);
    assert_int_equal(f->calls, 2);
    assert_false(home_has(f, WALLET_TREE_HEAD_FORK_FILE));
}

/* The device saw log A's head; the bank then shows it log B, which agrees on the load's
 * entries but not on what came after: refused as a fork, A's head kept, B's kept as evidence. */
static void test_fork_detected(void **state)
{
    fixture_t *f = *state;
    bank_append(&f->a, 8, 3, NULL);
    bank_head(&f->a, f->key); /* A: 10 entries, head at 11 */
    bank_append(&f->b, 80, 3, NULL);
    bank_head(&f->b, f->key); /* B: the same 7, then 3 others: same size, another root */
    wallet_receipt_result_t res;
    assert_int_equal(get(f, &res), 0);
    assert_int_equal(res.kept_size, 10);
    f->shown = &f->b;
    assert_int_equal(get(f, &res), QC_EMISMATCH); /* same size, two roots */
    assert_true(home_has(f, WALLET_TREE_HEAD_FORK_FILE));
    /* B grows: its proof from A's head of 10 does not hold. */
    bank_append(&f->b, 90, 4, NULL);
    bank_head(&f->b, f->key);
    assert_int_equal(get(f, &res), QC_EMISMATCH);
    assert_int_equal(res.kept_size, 10);
    /* Back to A: still consistent with what was kept. */
    f->shown = &f->a;
    assert_int_equal(get(f, &res), 0);
}

/* A head signed by another key is no head; an exported receipt verifies offline under the
 * bank's key only, and not once a byte of it changes. */
static void test_forged_head_and_export(void **state)
{
    fixture_t *f = *state;
    bank_head(&f->a, f->other);
    wallet_receipt_result_t res;
    assert_int_equal(get(f, &res), QC_EKEYID);
    assert_false(home_has(f, WALLET_TREE_HEAD_FILE));
    bank_append(&f->a, 8, 1, NULL);
    bank_head(&f->a, f->key);
    uint8_t *reply = NULL;
    size_t len = 0;
    char message[DEVICE_MESSAGE_MAX + 1];
    assert_int_equal(wallet_receipt_get(f->home, fake_call, f, f->txn, &res, &reply, &len, message),
                     0);
    char path[QCTEST_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/receipt.bin", f->home);
    assert_int_equal(wallet_receipt_export(path, f->txn, reply, len), 0);
    free(reply);
    uint8_t txn[16];
    proto_receipt_t r;
    assert_int_equal(wallet_receipt_verify_file(path, f->key, txn, &r), 0);
    assert_memory_equal(txn, f->txn, 16);
    assert_int_equal(r.entries, 2);
    assert_int_equal(wallet_receipt_verify_file(path, f->other, txn, &r), QC_EKEYID);
    /* Flip every 7th byte in turn: each altered file is refused. */
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    uint8_t buf[8192];
    size_t n = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    assert_true(n > 0 && n < sizeof buf);
    for (size_t off = 0; off < n; off += 7) {
        buf[off] ^= 0x01;
        fp = fopen(path, "wb");
        assert_non_null(fp);
        assert_int_equal(fwrite(buf, 1, n, fp), n);
        fclose(fp);
        assert_int_not_equal(wallet_receipt_verify_file(path, f->key, txn, &r), 0);
        buf[off] ^= 0x01;
    }
}

static void test_no_checkpoint_key(void **state)
{
    fixture_t *f = *state;
    char path[DEVICE_PATH_MAX];
    assert_int_equal(device_home_path(f->home, WALLET_CHECKPOINT_FILE, path), 0);
    assert_int_equal(unlink(path), 0);
    bank_head(&f->a, f->key);
    wallet_receipt_result_t res;
    f->calls = 0;
    assert_int_equal(get(f, &res), QC_EMISSING);
    assert_int_equal(f->calls, 0);
}

/* What a gateway refuses to forward, either way. */
static void test_gateway_shape_checks(void **state)
{
    (void)state;
    uint8_t big[PROTO_RECEIPT_REQUEST_MAX + 1] = {0};
    assert_int_equal(proto_receipt_check_request(PROTO_METHOD_RECEIPT, big, sizeof big),
                     QC_ETOOBIG);
    Qcaudit__ProveRequest pr = QCAUDIT__PROVE_REQUEST__INIT;
    uint8_t txn[15] = {1};
    pr.txn_id.data = txn;
    pr.txn_id.len = sizeof txn;
    uint8_t *b = NULL;
    size_t len = 0;
    assert_int_equal(proto_pack(&pr.base, &b, &len), 0);
    assert_int_equal(proto_receipt_check_request(PROTO_METHOD_RECEIPT, b, len), QC_EINVAL);
    free(b);
    assert_int_equal(proto_receipt_check_request("load", NULL, 0), QC_EMETHOD);
    Qcaudit__ConsistencyRequest cr = QCAUDIT__CONSISTENCY_REQUEST__INIT;
    cr.old_size = 9;
    cr.new_size = 3;
    assert_int_equal(proto_pack(&cr.base, &b, &len), 0);
    assert_int_equal(proto_receipt_check_request(PROTO_METHOD_TREE_CONSISTENCY, b, len), QC_EINVAL);
    free(b);
    /* A consistency reply with a short hash, and one with too many. */
    Qcaudit__ConsistencyReply rep = QCAUDIT__CONSISTENCY_REPLY__INIT;
    uint8_t head[8] = {1}, h[32] = {2};
    ProtobufCBinaryData hashes[PROTO_MERKLE_PROOF_MAX + 1];
    for (size_t i = 0; i <= PROTO_MERKLE_PROOF_MAX; i++)
        hashes[i] = (ProtobufCBinaryData){.data = h, .len = sizeof h};
    rep.tree_head.data = head;
    rep.tree_head.len = sizeof head;
    rep.proof = hashes;
    rep.n_proof = 2;
    assert_int_equal(proto_pack(&rep.base, &b, &len), 0);
    assert_int_equal(proto_receipt_check_reply(PROTO_METHOD_TREE_CONSISTENCY, b, len), 0);
    free(b);
    hashes[1].len = 31;
    assert_int_equal(proto_pack(&rep.base, &b, &len), 0);
    assert_int_equal(proto_receipt_check_reply(PROTO_METHOD_TREE_CONSISTENCY, b, len), QC_EDECODE);
    free(b);
    hashes[1].len = 32;
    rep.n_proof = PROTO_MERKLE_PROOF_MAX + 1;
    assert_int_equal(proto_pack(&rep.base, &b, &len), 0);
    assert_int_equal(proto_receipt_check_reply(PROTO_METHOD_TREE_CONSISTENCY, b, len), QC_ETOOBIG);
    free(b);
    assert_int_equal(proto_receipt_check_reply(PROTO_METHOD_RECEIPT, NULL, 0), QC_EMISSING);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_receipt_and_consistency, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fork_detected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forged_head_and_export, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_checkpoint_key, setup, teardown),
        cmocka_unit_test(test_gateway_shape_checks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
