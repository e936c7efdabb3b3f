/* test_wallet_crash.c - a device killed (SIGKILL) at its fault points loses nothing and
 * applies nothing twice.
 *
 * ops_fault reads QC_FAULT once per process, on the first fault point reached, and a forked
 * child inherits what its parent read. So the first test arms its point in the child before
 * the parent has reached any point, and the second arms the parent's environment before its
 * first point; the parent itself never reaches the armed point unless the device credits
 * twice, which would kill the test loudly. Keep the tests in this order. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qc_error.h"
#include "quancun.pb-c.h"
#include "wallet_device.h"
#include "wallet_test_bank.h"

#define AMOUNT 5000
#define CURRENCY 156
#define CHILD_FAILED 3 /* exit status of a child that got past its fault point */

/* Waits for child and asserts it died by SIGKILL (its fault point fired). */
static void expect_killed(pid_t child)
{
    int status = 0;
    assert_int_equal(waitpid(child, &status, 0), child);
    if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
        fail_msg("child did not die at its fault point (status 0x%x)", status);
}

static void test_crash_after_request_signed(void **state)
{
    (void)state;
    wt_bank_t *b = wt_bank_new();
    wallet_device_t *dev = wt_device_ready(b, "QCCRASH1");
    wallet_device_destroy(&dev); /* the child takes the device's lock */

    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        setenv("QC_FAULT", "wallet.after_request_signed", 1);
        wallet_device_t *d = NULL;
        const uint8_t *req = NULL;
        size_t len = 0;
        if (wallet_device_open(b->home, &d) != 0 ||
            device_core_verify_pin(wallet_device_core(d), WT_PIN, strlen(WT_PIN)) != 0)
            _exit(CHILD_FAILED);
        /* The fault point kills the child inside the call: its result is never seen. */
        QC_IGNORE(
            device_core_request(wallet_device_core(d), WT_ACCOUNT, AMOUNT, CURRENCY, &req, &len));
        _exit(CHILD_FAILED);
    }
    expect_killed(child);

    /* The signed request survived the crash and is the one to re-send. */
    assert_int_equal(wallet_device_open(b->home, &dev), 0);
    device_status_t s;
    device_core_status(wallet_device_core(dev), &s);
    assert_int_equal(s.phase, DEVICE_PENDING);
    assert_int_equal(s.amount, AMOUNT);
    const uint8_t *req = NULL;
    size_t req_len = 0;
    assert_int_equal(device_core_pending_request(wallet_device_core(dev), &req, &req_len), 0);
    Quancun__LoadRequest *r = wt_open_request(b, req, req_len);
    assert_memory_equal(r->txn_id.data, s.txn_id, DEVICE_TXN_SIZE);
    quancun__load_request__free_unpacked(r, NULL);
    wallet_device_destroy(&dev);
    wt_bank_free(b);
}

static void test_crash_after_credit(void **state)
{
    (void)state;
    setenv("QC_FAULT", "wallet.after_credit_before_report", 1);
    wt_bank_t *b = wt_bank_new();
    wallet_device_t *dev = wt_device_ready(b, "QCCRASH2");
    assert_int_equal(device_core_verify_pin(wallet_device_core(dev), WT_PIN, strlen(WT_PIN)), 0);
    const uint8_t *req = NULL;
    size_t req_len = 0;
    assert_int_equal(
        device_core_request(wallet_device_core(dev), WT_ACCOUNT, AMOUNT, CURRENCY, &req, &req_len),
        0);
    uint8_t *allow = NULL;
    size_t allow_len = 0;
    wt_make_allow(b, req, req_len, NULL, NULL, &allow, &allow_len);
    wallet_device_destroy(&dev);

    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        wallet_device_t *d = NULL;
        int verdict = 0;
        if (wallet_device_open(b->home, &d) != 0)
            _exit(CHILD_FAILED);
        /* The fault point kills the child inside the call: its result is never seen. */
        QC_IGNORE(device_core_judge_allow(wallet_device_core(d), allow, allow_len, &verdict));
        _exit(CHILD_FAILED);
    }
    expect_killed(child);

    /* Credited exactly once, and the signed report is stored, ready to send. */
    assert_int_equal(wallet_device_open(b->home, &dev), 0);
    device_status_t s;
    device_core_status(wallet_device_core(dev), &s);
    assert_int_equal(s.phase, DEVICE_REPORTED);
    assert_int_equal(s.balance, AMOUNT);
    assert_int_equal(s.counter, 1);
    const uint8_t *rep = NULL;
    size_t rep_len = 0;
    assert_int_equal(device_core_report(wallet_device_core(dev), &rep, &rep_len), 0);
    Quancun__ExecutionReport *er = wt_open_report(b, rep, rep_len);
    assert_int_equal(er->status, QUANCUN__REPORT_STATUS__REPORT_APPLIED);
    assert_int_equal(er->counter_after, 1);
    assert_int_equal(er->balance_after, AMOUNT);
    quancun__execution_report__free_unpacked(er, NULL);

    /* The same allow again (the gateway re-sends it): nothing moves. Were it credited, the
     * armed fault point would kill this process. */
    int verdict = 0;
    assert_int_equal(device_core_judge_allow(wallet_device_core(dev), allow, allow_len, &verdict),
                     QC_EREPLAY);
    device_core_status(wallet_device_core(dev), &s);
    assert_int_equal(s.balance, AMOUNT);
    assert_int_equal(s.counter, 1);
    /* The log has the applied line exactly once (written by the child or by recovery). */
    assert_int_equal(wt_log_count(b, "\"load.applied\""), 1);

    /* The report is re-sendable after another restart, byte for byte. */
    uint8_t *copy = malloc(rep_len);
    assert_non_null(copy);
    memcpy(copy, rep, rep_len);
    size_t copy_len = rep_len;
    wallet_device_destroy(&dev);
    assert_int_equal(wallet_device_open(b->home, &dev), 0);
    assert_int_equal(device_core_report(wallet_device_core(dev), &rep, &rep_len), 0);
    assert_int_equal(rep_len, copy_len);
    assert_memory_equal(rep, copy, copy_len);

    uint8_t *oc = NULL;
    size_t oc_len = 0;
    wt_make_outcome(b, rep, rep_len, false, QUANCUN__LOAD_STATE__LOAD_CONFIRMED, NULL, &oc,
                    &oc_len);
    int ls = 0;
    assert_int_equal(device_core_accept_outcome(wallet_device_core(dev), oc, oc_len, &ls), 0);
    device_core_status(wallet_device_core(dev), &s);
    assert_int_equal(s.phase, DEVICE_IDLE);
    assert_int_equal(s.balance, AMOUNT);
    free(copy);
    free(oc);
    free(allow);
    wallet_device_destroy(&dev);
    wt_bank_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crash_after_request_signed),
        cmocka_unit_test(test_crash_after_credit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
