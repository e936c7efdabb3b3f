/* test_ledger_storage.c - qc-ledger on a full disk (issue 21): a tmpfs of a few MiB, mounted in
 * a private mount namespace, is filled until commits fail. The ledger must refuse writes with
 * QC_ENOSPACE (not QC_EIO), keep serving reads, say "degraded" on /healthz, write one log line
 * for the state and not one per attempt, stay idle with no traffic (before: 89% of a core and
 * 14,930 lines/s), and resume by itself once space comes back. Needs root (unshare, mount):
 * skipped otherwise. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cmocka.h>

#include "ledger_proc.h"
#include "ledger_testkit.h"
#include "ops_time.h"
#include "qc_error.h"
#include "qctest_fs.h"
#include "qctest_http.h"
#include "qctest_key.h"
#include "qctest_port.h"
#include "qctest_proc.h"

static qctest_ports_t ports;
#define T_PORT(i) qctest_port(&ports, (i))
#define T_TMPFS_OPTS "size=3m" /* the disk the ledger gets */
#define T_OPENS_MAX 400        /* account opens tried before the disk must be full */
#define T_IDLE_MS 3000         /* idle time measured on the full disk */
#define T_IDLE_CPU_MS_MAX 300  /* CPU it may use in it (before, Release: 1,910) */
#define T_IDLE_LINES_MAX 10    /* lines: the limiter's bursts (before, Release: 86,740) */
#define T_RESUME_MS 10000

static const char *ledger_bin;
/* The ledger of the test, stopped by the teardown even when an assertion failed: a ledger
 * left running on a full disk would spin (the old one) and hold the test's ports. */
static lp_t lp;
static bool lp_ready;
static char data_mount[LP_PATH_MAX + 8];

static size_t count_lines(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[8192];
    size_t n = 0;
    while (fgets(line, sizeof line, f) != NULL)
        n += needle == NULL || strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

static void test_full_disk(void **state)
{
    (void)state;
    if (geteuid() != 0 || unshare(CLONE_NEWNS) != 0 ||
        mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) {
        skip(); /* needs root and mount namespaces */
        return;
    }
    assert_int_equal(lp_setup(&lp, ledger_bin, T_PORT(0)), 0);
    lp_ready = true;
    char *data = data_mount;
    char filler[LP_PATH_MAX + 16], log[LP_PATH_MAX + 16];
    snprintf(data, sizeof data_mount, "%s/data", lp.dir);
    snprintf(filler, sizeof filler, "%s/data/filler", lp.dir);
    snprintf(log, sizeof log, "%s/ledger.log", lp.dir);
    assert_int_equal(mount("tmpfs", data, "tmpfs", 0, T_TMPFS_OPTS), 0);
    int http = T_PORT(3); /* the ledger and its stand-in signer take ports from T_PORT(0) on */
    char http_text[16];
    snprintf(http_text, sizeof http_text, "%d", http);
    /* A short deadline: the load reserved below is compensated while the disk is full, the
     * commit the old ledger retried in a loop. */
    const char *extra[] = {"--http-port", http_text, "--map-size-mb", "16", "--deadline-ms",
                           "1000",        NULL};
    assert_int_equal(lp_start(&lp, NULL, 0, extra), 0);
    assert_int_equal(lp_open_account(&lp, "ACCT-A", TK_CURRENCY, 0), 0);
    assert_int_equal(lp_deposit(&lp, "ACCT-A", 5000), 0);
    EVP_PKEY *dev_key = qctest_key_new();
    uint8_t *cert = NULL, *req = NULL, *allow = NULL;
    size_t cert_len = 0, req_len = 0, allow_len = 0;
    qctest_cert_self_der(dev_key, "dev-full", &cert, &cert_len);
    assert_int_equal(lp_enroll(&lp, "ACCT-A", cert, cert_len), 0);
    tk_load_t load = {
        .device_id = "dev-full", .account_id = "ACCT-A", .amount = 1000, .currency = TK_CURRENCY};
    tk_txn_id(load.txn_id);
    tk_request(dev_key, &load, &req, &req_len);
    assert_int_equal(lp_reserve(&lp, req, req_len, &allow, &allow_len), 0);

    assert_int_equal(qctest_fill_disk(filler), 0);
    int rc = 0;
    char id[32];
    for (int i = 0; i < T_OPENS_MAX && rc == 0; i++) {
        snprintf(id, sizeof id, "ACCT-FULL-%d", i);
        rc = lp_open_account(&lp, id, TK_CURRENCY, 0);
    }
    usleep(1500 * 1000); /* the load's deadline passes: its compensation cannot commit */
    /* Idle on the full disk: no spinning, no storm. Measured before anything is asserted, so
     * that the same run against an older qc-ledger prints its figures (issue 21's note). */
    size_t lines_before = count_lines(log, NULL);
    long long cpu_before = qctest_cpu_ms(lp.pid);
    usleep(T_IDLE_MS * 1000);
    long long cpu_used = qctest_cpu_ms(lp.pid) - cpu_before;
    assert_true(cpu_before >= 0);
    size_t lines = count_lines(log, NULL) - lines_before;
    print_message("full disk, refused with %s; then idle %d ms: %lld ms of CPU, %zu log lines\n",
                  qc_errname(rc), T_IDLE_MS, cpu_used, lines);
    /* The cause named: a full disk, not an I/O error. */
    assert_int_equal(rc, QC_ENOSPACE);
    assert_true(cpu_used <= T_IDLE_CPU_MS_MAX);
    assert_true(lines <= T_IDLE_LINES_MAX);
    /* Reads are served. */
    bool ok = false;
    assert_int_equal(lp_balance(&lp, "ACCT-A", &ok), 4000); /* 1000 reserved */
    assert_true(ok);
    char resp[QCTEST_HTTP_MAX];
    assert_int_equal(qctest_http(http, "GET", "/healthz", resp, sizeof resp), 503);
    assert_non_null(strstr(qctest_http_body(resp), "degraded"));
    assert_non_null(strstr(qctest_http_body(resp), "disk"));
    assert_int_equal(qctest_metric(http, "qc_storage_state{store=\"ledger\"}"), 3);
    /* More refused writes: still one line for the state. */
    for (int i = 0; i < 20; i++)
        assert_int_equal(lp_open_account(&lp, id, TK_CURRENCY, 0), QC_ENOSPACE);
    assert_int_equal(count_lines(log, "\"storage.disk_full\""), 1);

    /* Space comes back: the ledger resumes by itself. */
    assert_int_equal(unlink(filler), 0);
    uint64_t end = ops_time_mono_ms() + T_RESUME_MS;
    while ((rc = lp_open_account(&lp, id, TK_CURRENCY, 0)) != 0 && ops_time_mono_ms() < end)
        usleep(200 * 1000);
    assert_int_equal(rc, 0);
    end = ops_time_mono_ms() + T_RESUME_MS;
    while (qctest_http(http, "GET", "/healthz", resp, sizeof resp) != 200 &&
           ops_time_mono_ms() < end)
        usleep(200 * 1000);
    assert_int_equal(qctest_http(http, "GET", "/healthz", resp, sizeof resp), 200);
    assert_int_equal(count_lines(log, "\"storage.resumed\""), 1);
    /* The load the full disk held reserved is compensated once it could commit. */
    end = ops_time_mono_ms() + T_RESUME_MS;
    while (lp_balance(&lp, "ACCT-A", &ok) != 5000 && ops_time_mono_ms() < end)
        usleep(200 * 1000);
    assert_int_equal(lp_balance(&lp, "ACCT-A", &ok), 5000);
    assert_int_equal(lp_check(&lp), 1);
    EVP_PKEY_free(dev_key);
    free(cert);
    free(req);
    free(allow);
    assert_int_equal(lp_stop(&lp, SIGTERM) & 0x7f, 0);
}

static int teardown(void **state)
{
    (void)state;
    if (lp_ready) {
        /* Lazily: the ledger may still hold its files; then the dir is an empty one again. */
        if (data_mount[0] != '\0')
            (void)umount2(data_mount, MNT_DETACH);
        lp_teardown(&lp); /* kills the ledger if it still runs, removes the dir */
        lp_ready = false;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PATH-TO-qc-ledger\n", argv[0]);
        return 2;
    }
    ledger_bin = argv[1];
    ports = qctest_ports(17620, 4);
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_full_disk, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
