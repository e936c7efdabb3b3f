/* test_qcctl_audit.c - `qcctl audit verify|show|export|prove|consistency` through
 * qcctl_audit_main(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmocka.h>

#include "ops_time.h"
#include "proto_merkle.h"
#include "audit_store.h"
#include "ledger_testkit.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "qcctl_audit.h"
#include "qctest_fs.h"

#define T_DIR_MAX QCTEST_PATH_MAX
#define T_PATH_MAX (T_DIR_MAX + 32)

static int run(const char *const *args)
{
    int argc = 0;
    while (args[argc] != NULL)
        argc++;
    return qcctl_audit_main(argc, (char **)args);
}

static void test_verbs(void **state)
{
    (void)state;
    char dir[T_DIR_MAX], data[T_PATH_MAX], good[T_PATH_MAX], bad[T_PATH_MAX];
    assert_int_equal(qctest_dir_new("qc-qcctl-audit", dir), 0);
    snprintf(data, sizeof data, "%s", dir);
    snprintf(good, sizeof good, "%s/good.pem", dir);
    snprintf(bad, sizeof bad, "%s/bad.pem", dir);
    EVP_PKEY *key = qctest_key_new(), *other = qctest_key_new();
    qctest_write_pubkey(good, key);
    qctest_write_pubkey(bad, other);

    audit_store_t *store = NULL;
    assert_int_equal(audit_store_open(data, 0, 16ull << 20, &store), 0);
    uint8_t txn[16];
    tk_txn_id(txn);
    audit_event_t evs[3] = {
        {.source = "gateway-0",
         .source_seq = 1,
         .type = "security.a",
         .txn_id = txn,
         .txn_id_len = 16},
        {.source = "gateway-0", .source_seq = 2, .type = "security.b"},
        {.source = "signer-0", .source_seq = 1, .type = "security.c"},
    };
    audit_append_result_t res[3];
    assert_int_equal(audit_store_append(store, evs, 3, res), 0);
    uint64_t seq = 0;
    uint8_t hash[32];
    assert_int_equal(audit_store_last(store, &seq, hash), 0);
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
    audit_event_t ce = {.source = AUDIT_SOURCE_SELF,
                        .source_seq = seq,
                        .type = AUDIT_TYPE_CHECKPOINT,
                        .payload = env,
                        .payload_len = env_len};
    assert_int_equal(audit_store_append(store, &ce, 1, res), 0);
    audit_store_destroy(&store);
    free(body);
    free(env);

    char hex[33];
    for (int i = 0; i < 16; i++)
        snprintf(hex + 2 * i, 3, "%02x", txn[i]);
    const char *ok[] = {"audit", "verify", "--dir", data, "--cert", good, NULL};
    assert_int_equal(run(ok), 0);
    const char *broken[] = {"audit", "verify", "--dir", data, "--cert", bad, NULL};
    assert_int_equal(run(broken), 1);
    const char *nocert[] = {"audit", "verify", "--dir", data, NULL};
    assert_int_equal(run(nocert), 2);
    const char *show[] = {"audit", "show", "--dir", data, hex, NULL};
    assert_int_equal(run(show), 0);
    const char *unknown[] = {"audit", "show", "--dir", data, "00112233445566778899aabbccddeeff",
                             NULL};
    assert_int_equal(run(unknown), 1);
    const char *exp[] = {"audit", "export", "--dir", data, NULL};
    assert_int_equal(run(exp), 0);
    const char *verb[] = {"audit", "rewrite", "--dir", data, NULL};
    assert_int_equal(run(verb), 2);
    const char *help[] = {"audit", "--help", NULL};
    assert_int_equal(run(help), 0);
    const char *none[] = {"audit", NULL};
    assert_int_equal(run(none), 2);

    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
    assert_int_equal(qctest_dir_remove(dir), 0);
}

/* Runs args with stdout into out (NUL terminated, truncated to cap). */
static int run_out(const char *const *args, char *out, size_t cap)
{
    char path[] = "/tmp/qc-qcctl-out-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(stdout);
    int saved = dup(1);
    assert_true(saved >= 0);
    assert_int_equal(dup2(fd, 1), 1);
    int rc = run(args);
    fflush(stdout);
    assert_int_equal(dup2(saved, 1), 1);
    close(saved);
    off_t n = lseek(fd, 0, SEEK_END);
    assert_true(n >= 0);
    size_t len = (size_t)n < cap - 1 ? (size_t)n : cap - 1;
    assert_int_equal(pread(fd, out, len, 0), (ssize_t)len);
    out[len] = '\0';
    close(fd);
    unlink(path);
    return rc;
}

/* Appends a tree head of the log's current size, signed with key, with the stored root (or a
 * wrong one). Returns the size it covers. */
static uint64_t sign_head(audit_store_t *store, EVP_PKEY *key, bool wrong_root)
{
    uint64_t seq = 0;
    uint8_t hash[32], root[32];
    assert_int_equal(audit_store_last(store, &seq, hash), 0);
    assert_int_equal(audit_store_tree_root(store, seq, root), 0);
    if (wrong_root)
        root[31] ^= 1;
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
    audit_event_t ce = {.source = AUDIT_SOURCE_SELF,
                        .source_seq = seq,
                        .type = AUDIT_TYPE_CHECKPOINT,
                        .payload = env,
                        .payload_len = env_len};
    audit_append_result_t res;
    assert_int_equal(audit_store_append(store, &ce, 1, &res), 0);
    free(body);
    free(env);
    return seq;
}

/* prove, consistency and verify over tree heads, text and --json. */
static void test_tree_verbs(void **state)
{
    (void)state;
    char dir[T_DIR_MAX], good[T_PATH_MAX], bad[T_PATH_MAX], out[16384];
    assert_int_equal(qctest_dir_new("qc-qcctl-tree", dir), 0);
    snprintf(good, sizeof good, "%s/good.pem", dir);
    snprintf(bad, sizeof bad, "%s/bad.pem", dir);
    EVP_PKEY *key = qctest_key_new(), *other = qctest_key_new();
    qctest_write_pubkey(good, key);
    qctest_write_pubkey(bad, other);
    audit_store_t *store = NULL;
    assert_int_equal(audit_store_open(dir, 0, 16ull << 20, &store), 0);
    uint8_t txn[16];
    tk_txn_id(txn);
    for (uint64_t i = 1; i <= 9; i++) {
        audit_event_t ev = {.source = "gateway-0",
                            .source_seq = i,
                            .type = i % 4 == 1 ? "load.reserved" : "security.x",
                            .txn_id = i % 4 == 1 ? txn : NULL,
                            .txn_id_len = i % 4 == 1 ? 16 : 0};
        audit_append_result_t res;
        assert_int_equal(audit_store_append(store, &ev, 1, &res), 0);
    }
    uint64_t old = sign_head(store, key, false); /* 9 (head at 10): the txn's entries 1, 5, 9 */
    audit_event_t late = {.source = "gateway-0",
                          .source_seq = 10,
                          .type = "load.confirmed",
                          .txn_id = txn,
                          .txn_id_len = 16};
    audit_append_result_t res;
    assert_int_equal(audit_store_append(store, &late, 1, &res), 0);
    uint64_t cur = sign_head(store, key, false); /* 11 (late at 11, head at 12) */
    audit_store_destroy(&store);

    char hex[33], olds[24], curs[24];
    for (int i = 0; i < 16; i++)
        snprintf(hex + 2 * i, 3, "%02x", txn[i]);
    snprintf(olds, sizeof olds, "%llu", (unsigned long long)old);
    snprintf(curs, sizeof curs, "%llu", (unsigned long long)cur);

    const char *prove[] = {"audit", "prove", "--dir", dir, "--cert", good, hex, NULL};
    assert_int_equal(run_out(prove, out, sizeof out), 0);
    assert_non_null(strstr(out, "ok: 4 entries"));
    const char *prove_json[] = {"audit", "prove",  "--dir", dir, "--cert",
                                good,    "--json", hex,     NULL};
    assert_int_equal(run_out(prove_json, out, sizeof out), 0);
    assert_non_null(strstr(out, "\"verified\":true"));
    assert_non_null(strstr(out, "\"seq\":1,\"leaf_index\":0,\"type\":\"load.reserved\""));
    assert_non_null(strstr(out, "\"seq\":11,\"leaf_index\":10,\"type\":\"load.confirmed\""));
    /* Against the older head: the entry appended after it is pending. */
    const char *prove_old[] = {"audit",  "prove", "--dir",  dir, "--cert", good,
                               "--size", olds,    "--json", hex, NULL};
    assert_int_equal(run_out(prove_old, out, sizeof out), 0);
    assert_non_null(strstr(out, "\"pending\":1,\"verified\":true"));
    const char *prove_bad[] = {"audit", "prove", "--dir", dir, "--cert", bad, hex, NULL};
    assert_int_equal(run_out(prove_bad, out, sizeof out), 1);
    assert_non_null(strstr(out, "NOT VERIFIED"));
    const char *prove_none[] = {
        "audit", "prove", "--dir", dir, "--cert", good, "00112233445566778899aabbccddeeff", NULL};
    assert_int_equal(run_out(prove_none, out, sizeof out), 1);
    const char *prove_usage[] = {"audit", "prove", "--dir", dir, hex, NULL};
    assert_int_equal(run(prove_usage), 2);

    const char *cons[] = {"audit", "consistency", "--dir", dir, "--cert", good, olds, curs, NULL};
    assert_int_equal(run_out(cons, out, sizeof out), 0);
    assert_non_null(strstr(out, "ok: the log of 11 entries extends the log of 9"));
    const char *cons_json[] = {"audit", "consistency", "--dir", dir, "--cert",
                               good,    "--json",      olds,    "0", NULL};
    assert_int_equal(run_out(cons_json, out, sizeof out), 0);
    assert_non_null(strstr(out, "\"consistent\":true"));
    const char *cons_nohead[] = {"audit", "consistency", "--dir", dir, "--cert",
                                 good,    "5",           curs,    NULL};
    assert_int_equal(run_out(cons_nohead, out, sizeof out), 1);
    const char *cons_back[] = {"audit", "consistency", "--dir", dir, "--cert",
                               good,    curs,          olds,    NULL};
    assert_int_equal(run_out(cons_back, out, sizeof out), 1);
    const char *cons_key[] = {"audit", "consistency", "--dir", dir, "--cert",
                              bad,     olds,          curs,    NULL};
    assert_int_equal(run_out(cons_key, out, sizeof out), 1);

    const char *verify_json[] = {"audit", "verify", "--dir", dir, "--cert", good, "--json", NULL};
    assert_int_equal(run_out(verify_json, out, sizeof out), 0);
    assert_non_null(strstr(out, "\"ok\":true"));
    assert_non_null(strstr(out, "\"tree_heads\":2,\"tree_size\":11"));
    /* A head whose root is not the entries' (however well signed) breaks verify. */
    assert_int_equal(audit_store_open(dir, 0, 16ull << 20, &store), 0);
    uint64_t wrong = sign_head(store, key, true);
    audit_store_destroy(&store);
    assert_int_equal(run_out(verify_json, out, sizeof out), 1);
    assert_non_null(strstr(out, "\"ok\":false"));
    char want[64];
    snprintf(want, sizeof want, "\"break_seq\":%llu", (unsigned long long)wrong + 1);
    assert_non_null(strstr(out, want));

    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
    assert_int_equal(qctest_dir_remove(dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verbs),
        cmocka_unit_test(test_tree_verbs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
