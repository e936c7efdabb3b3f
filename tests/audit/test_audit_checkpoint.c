/* test_audit_checkpoint.c - qc-audit with a real qc-signer on a SoftHSM2 token: checkpoints
 * every N entries and after T seconds, verified offline with the audit-checkpoint
 * certificate; another certificate finds the break; a signer key that does not match the
 * configured certificate is refused before anything is stored. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "audit_proc.h"
#include "audit_verify.h"
#include "proto_cert.h"
#include "qc_error.h"
#include "qctest_fs.h"
#include "qctest_proc.h"
#include "signer_test_util.h"
#include "qctest_http.h"
#include "qctest_port.h"

/* Port i of the test's range (qc_test_ports in CMakeLists.txt). */
static qctest_ports_t ports;
#define T_PORT(i) qctest_port(&ports, (i))
#define T_AUDIT_PORT T_PORT(0)
#define T_SIGNER_PORT T_PORT(20)
#define T_WAIT_MS 20000
#define T_OUT_MAX 4096
#define T_EVENTS 25

static const char *g_audit_bin, *g_signer_bin;

typedef struct fixture {
    ap_t ap;
    char hsm[AP_PATH_MAX];
    char cert[AP_PATH_MAX + 64];       /* audit-checkpoint certificate */
    char other_cert[AP_PATH_MAX + 64]; /* allow-signing certificate */
    char signer_ep[64];
    proto_curve_keypair_t signer_kp;
    pid_t signer;
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->signer = -1;
    ap_t *ap = &f->ap;
    assert_int_equal(ap_setup(ap, g_audit_bin, T_AUDIT_PORT), 0);
    ap_path(ap, "hsm", f->hsm);
    const char *src = getenv("QC_SOURCE_DIR");
    assert_non_null(src);
    char devhsm[AP_PATH_MAX];
    snprintf(devhsm, sizeof devhsm, "%.200s/ops/devhsm", src);
    char *argv[] = {
        devhsm, "init", f->hsm, "--pin", SIGNER_TEST_PIN, "--signer", (char *)g_signer_bin, NULL};
    assert_int_equal(qctest_run_argv(argv), 0);
    char conf[AP_PATH_MAX + 32], pin[AP_PATH_MAX + 16], key[AP_PATH_MAX], allow[AP_PATH_MAX],
        log[AP_PATH_MAX];
    snprintf(conf, sizeof conf, "%s/softhsm2.conf", f->hsm);
    assert_int_equal(setenv("SOFTHSM2_CONF", conf, 1), 0);
    snprintf(pin, sizeof pin, "%s/pin", f->hsm);
    snprintf(f->cert, sizeof f->cert, "%s/keys/audit-checkpoint-v1.cert.pem", f->hsm);
    snprintf(f->other_cert, sizeof f->other_cert, "%s/keys/allow-signing-v1.cert.pem", f->hsm);
    ap_path(ap, "signer.key", key);
    assert_int_equal(proto_curve_keypair_create(key, &f->signer_kp), 0);
    ap_path(ap, "audit.key.pub", allow); /* the signer admits audit's key */
    /* Roles: audit's key may have checkpoints signed; no ledger in this test. */
    char no_ledger[AP_PATH_MAX];
    ap_path(ap, "no-ledger.roles", no_ledger);
    FILE *roles = fopen(no_ledger, "w");
    assert_non_null(roles);
    fprintf(roles, "# no ledger key: this signer signs no allow\n");
    assert_int_equal(fclose(roles), 0);
    ap_path(ap, "signer.log", log);
    int port = ap_pick_port(T_SIGNER_PORT, ap->http_port);
    snprintf(f->signer_ep, sizeof f->signer_ep, "tcp://127.0.0.1:%d", port);
    char *sargv[] = {(char *)g_signer_bin,
                     "--listen",
                     f->signer_ep,
                     "--curve_key",
                     key,
                     "--allow",
                     allow,
                     "--ledger_keys",
                     no_ledger,
                     "--audit_keys",
                     allow,
                     "--token_label",
                     "quancun",
                     "--workers",
                     "1",
                     "--pin_file",
                     pin,
                     NULL};
    f->signer = qctest_spawn(&(qctest_cmd_t){.argv = sargv, .out_path = log, .err_path = log});
    assert_true(f->signer > 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    qctest_stop(f->signer, SIGKILL);
    ap_teardown(&f->ap); /* removes the hsm too: it lives in the same directory */
    proto_curve_keypair_wipe(&f->signer_kp);
    free(f);
    return 0;
}

/* Starts audit with the signer and cert as its checkpoint certificate. */
static void start_audit(fixture_t *f, const char *cert)
{
    const char *extra[] = {"--signer",
                           f->signer_ep,
                           "--signer-key",
                           f->signer_kp.public_z85,
                           "--checkpoint-cert",
                           cert,
                           "--checkpoint-entries",
                           "10",
                           "--checkpoint-seconds",
                           "1",
                           NULL};
    assert_int_equal(ap_start(&f->ap, NULL, 0, extra), 0);
}

/* Waits until metric reaches at least want; returns its last value. */
static int64_t wait_metric(fixture_t *f, const char *metric, int64_t want)
{
    int64_t v = -1;
    for (int waited = 0; waited < T_WAIT_MS; waited += 50) {
        v = qctest_metric(f->ap.http_port, metric);
        if (v >= want)
            break;
        qctest_sleep_ms(50);
    }
    return v;
}

static void test_checkpoints(void **state)
{
    fixture_t *f = *state;
    ap_t *ap = &f->ap;
    start_audit(f, f->cert);
    /* 12 entries: a checkpoint by count; then 13 more, whose tail is signed by time. */
    for (uint64_t i = 1; i <= T_EVENTS; i++) {
        assert_int_equal(ap_append(ap, "gateway-0", i, "security.test", NULL, 0,
                                   (const uint8_t *)"x", 1, NULL, NULL),
                         0);
        if (i == 12)
            assert_true(wait_metric(f, "qc_audit_checkpoints_total", 1) >= 1);
    }
    assert_true(wait_metric(f, "qc_audit_checkpoints_total", 2) >= 2);
    int64_t unsigned_entries = -1;
    for (int waited = 0; waited < T_WAIT_MS && unsigned_entries != 0; waited += 50) {
        unsigned_entries = qctest_metric(ap->http_port, "qc_audit_unsigned_entries");
        if (unsigned_entries != 0)
            qctest_sleep_ms(50);
    }
    assert_int_equal(unsigned_entries, 0);
    assert_int_equal(qctest_metric(ap->http_port, "qc_audit_checkpoint_errors_total"), 0);
    int st = ap_stop(ap, SIGTERM);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);

    char data[AP_PATH_MAX];
    ap_path(ap, "data", data);
    EVP_PKEY *key = NULL;
    assert_int_equal(proto_key_load_pem(f->cert, &key), 0);
    audit_verify_report_t r;
    int rc = audit_verify_dir(data, key, &r);
    EVP_PKEY_free(key);
    if (rc != 0)
        fail_msg("verify: %s", r.why);
    assert_true(r.checkpoints >= 2);
    assert_true(r.signed_seq >= T_EVENTS);
    assert_int_equal(r.entries, T_EVENTS + r.checkpoints);
    /* Every checkpoint the HSM signed is a tree head whose Merkle root matches the entries. */
    assert_int_equal(r.tree_heads, r.checkpoints);
    assert_int_equal(r.tree_size, r.signed_seq);

    char out[T_OUT_MAX];
    const char *ok[] = {"qc-audit", "verify", "--dir", data, "--cert", f->cert, NULL};
    assert_int_equal(ap_run_cli(ap, ok, out, sizeof out), 0);
    assert_non_null(strstr(out, "ok: "));
    /* The allow-signing certificate is not the audit's: the first checkpoint breaks. */
    const char *bad[] = {"qc-audit", "verify", "--dir", data, "--cert", f->other_cert, NULL};
    assert_int_equal(ap_run_cli(ap, bad, out, sizeof out), 1);
    assert_non_null(strstr(out, "BROKEN at seq "));
    assert_non_null(strstr(out, "(QC_EKEYID)"));
}

static void test_wrong_cert_refused(void **state)
{
    fixture_t *f = *state;
    ap_t *ap = &f->ap;
    /* Configured with the allow-signing certificate, audit must not keep what the
     * audit-checkpoint key signs. */
    start_audit(f, f->other_cert);
    for (uint64_t i = 1; i <= 3; i++)
        assert_int_equal(
            ap_append(ap, "signer-0", i, "security.test", NULL, 0, NULL, 0, NULL, NULL), 0);
    assert_true(wait_metric(f, "qc_audit_checkpoint_errors_total", 1) >= 1);
    assert_int_equal(qctest_metric(ap->http_port, "qc_audit_checkpoints_total"), 0);
    assert_int_equal(ap_stop(ap, SIGTERM), 0);
    char data[AP_PATH_MAX];
    ap_path(ap, "data", data);
    audit_verify_report_t r;
    assert_int_equal(audit_verify_dir(data, NULL, &r), 0);
    assert_int_equal(r.entries, 3); /* no checkpoint entry */
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s PATH-TO-qc-audit PATH-TO-qc-signer\n", argv[0]);
        return 2;
    }
    g_audit_bin = argv[1];
    ports = qctest_ports(18100, 100);
    g_signer_bin = argv[2];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_checkpoints, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_cert_refused, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
