/* test_qcctl_audit.c - `qcctl audit verify|show|export` through qcctl_audit_main(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ops_time.h"
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verbs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
