/* test_wallet_flow.c - a whole load through device_flow over a scripted in-process bank:
 * lost replies, refusals, lost reports and forged allows, and reconciliation by re-sending
 * the very same signed request. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qc_error.h"
#include "quancun.pb-c.h"
#include "wallet_device.h"
#include "device_flow.h"
#include "wallet_test_bank.h"

#define AMOUNT 888
#define CURRENCY 156

/* The scripted bank: idempotent by txn like the ledger, with faults on demand. */
typedef struct fake_bank {
    wt_bank_t *b;
    int load_calls;
    int report_calls;
    int lose_load_replies; /* the bank works, the reply is lost */
    int refuse_code;       /* reply to load with this code */
    int lose_reports;      /* report calls that get no answer */
    bool forge_allow;      /* sign the allow with a key the device does not trust */
    bool forge_outcome;    /* sign outcomes with the allow key instead of the outcome key */
    uint8_t *allow;        /* the stored allow: every retry gets these bytes */
    size_t allow_len;
    uint8_t *first_req;
    size_t first_req_len;
    int identical_resends;
    char last_report_method[16];
} fake_bank_t;

static uint8_t *dup_bytes(const uint8_t *p, size_t n)
{
    uint8_t *c = malloc(n);
    assert_non_null(c);
    memcpy(c, p, n);
    return c;
}

static int fake_call(void *arg, const char *method, const uint8_t *body, size_t len,
                     device_reply_t *out)
{
    fake_bank_t *fb = arg;
    memset(out, 0, sizeof(*out));
    if (strcmp(method, DEVICE_METHOD_LOAD) == 0) {
        fb->load_calls++;
        if (fb->first_req == NULL) {
            fb->first_req = dup_bytes(body, len);
            fb->first_req_len = len;
        } else if (len == fb->first_req_len && memcmp(body, fb->first_req, len) == 0) {
            fb->identical_resends++;
        }
        if (fb->refuse_code != 0) {
            out->code = fb->refuse_code;
            snprintf(out->message, sizeof(out->message), "scripted refusal: %s",
                     qc_strerror(fb->refuse_code));
            return 0;
        }
        if (fb->allow == NULL)
            wt_make_allow(fb->b, body, len, NULL, fb->forge_allow ? fb->b->other_key : NULL,
                          &fb->allow, &fb->allow_len);
        if (fb->lose_load_replies > 0) {
            fb->lose_load_replies--;
            return QC_ETIMEOUT;
        }
        out->body = dup_bytes(fb->allow, fb->allow_len);
        out->body_len = fb->allow_len;
        return 0;
    }
    assert_true(strcmp(method, DEVICE_METHOD_REPORT) == 0 ||
                strcmp(method, DEVICE_METHOD_SYNC) == 0);
    fb->report_calls++;
    snprintf(fb->last_report_method, sizeof(fb->last_report_method), "%s", method);
    if (fb->lose_reports > 0) {
        fb->lose_reports--;
        return QC_ETIMEOUT;
    }
    Quancun__ExecutionReport *er = wt_open_report(fb->b, body, len);
    Quancun__LoadState st = er->status == QUANCUN__REPORT_STATUS__REPORT_APPLIED
                                ? QUANCUN__LOAD_STATE__LOAD_CONFIRMED
                                : QUANCUN__LOAD_STATE__LOAD_COMPENSATED;
    quancun__execution_report__free_unpacked(er, NULL);
    wt_make_outcome(fb->b, body, len, false, st, fb->forge_outcome ? fb->b->allow_key : NULL,
                    &out->body, &out->body_len);
    return 0;
}

typedef struct fixture {
    fake_bank_t fb;
    wallet_device_t *dev;
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return -1;
    f->fb.b = wt_bank_new();
    f->dev = wt_device_ready(f->fb.b, "QCFLOW01");
    assert_int_equal(device_core_verify_pin(wallet_device_core(f->dev), WT_PIN, strlen(WT_PIN)), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    wallet_device_destroy(&f->dev);
    wt_bank_free(f->fb.b);
    free(f->fb.allow);
    free(f->fb.first_req);
    free(f);
    return 0;
}

static void expect(const fixture_t *f, device_phase_t phase, int64_t balance, uint64_t counter)
{
    device_status_t s;
    device_core_status(wallet_device_core(f->dev), &s);
    assert_int_equal(s.phase, phase);
    assert_int_equal(s.balance, balance);
    assert_int_equal(s.counter, counter);
}

static void test_flow_happy(void **state)
{
    fixture_t *f = *state;
    device_flow_result_t res;
    assert_int_equal(device_flow_load(wallet_device_core(f->dev), WT_ACCOUNT, AMOUNT, CURRENCY,
                                      fake_call, &f->fb, &res),
                     0);
    assert_true(res.judged && res.finished);
    assert_int_equal(res.verdict, 0);
    assert_int_equal(res.outcome, QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
    assert_string_equal(f->fb.last_report_method, DEVICE_METHOD_REPORT);
    expect(f, DEVICE_IDLE, AMOUNT, 1);
    assert_int_equal(f->fb.load_calls, 1);
    assert_int_equal(f->fb.report_calls, 1);
}

/* The allow is lost on the way: the device stays PENDING; sync re-sends the same signed
 * request, gets the same allow, applies it once. */
static void test_flow_lost_allow_then_sync(void **state)
{
    fixture_t *f = *state;
    f->fb.lose_load_replies = 1;
    device_flow_result_t res;
    assert_int_equal(device_flow_load(wallet_device_core(f->dev), WT_ACCOUNT, AMOUNT, CURRENCY,
                                      fake_call, &f->fb, &res),
                     QC_ETIMEOUT);
    expect(f, DEVICE_PENDING, 0, 0);

    /* A restart in between changes nothing. */
    wallet_device_destroy(&f->dev);
    assert_int_equal(wallet_device_open(f->fb.b->home, &f->dev), 0);
    memset(&res, 0, sizeof(res));
    assert_int_equal(
        device_flow_settle(wallet_device_core(f->dev), fake_call, &f->fb, DEVICE_METHOD_SYNC, &res),
        0);
    assert_true(res.finished);
    assert_int_equal(res.outcome, QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
    assert_int_equal(f->fb.identical_resends, 1);
    assert_string_equal(f->fb.last_report_method, DEVICE_METHOD_SYNC);
    expect(f, DEVICE_IDLE, AMOUNT, 1);
    /* Nothing left to settle. */
    assert_int_equal(
        device_flow_settle(wallet_device_core(f->dev), fake_call, &f->fb, DEVICE_METHOD_SYNC, &res),
        0);
    assert_int_equal(f->fb.load_calls, 2);
}

static void test_flow_refused(void **state)
{
    fixture_t *f = *state;
    f->fb.refuse_code = QC_EFUNDS;
    device_flow_result_t res;
    assert_int_equal(device_flow_load(wallet_device_core(f->dev), WT_ACCOUNT, AMOUNT, CURRENCY,
                                      fake_call, &f->fb, &res),
                     QC_EFUNDS);
    assert_true(res.abandoned);
    assert_int_equal(res.server_code, QC_EFUNDS);
    assert_non_null(strstr(res.server_message, "scripted refusal"));
    expect(f, DEVICE_IDLE, 0, 0);
    assert_int_equal(wt_log_count(f->fb.b, "\"load.abandoned\""), 1);
}

static void test_flow_transient_keeps_pending(void **state)
{
    fixture_t *f = *state;
    f->fb.refuse_code = QC_EUNAVAIL;
    device_flow_result_t res;
    assert_int_equal(device_flow_load(wallet_device_core(f->dev), WT_ACCOUNT, AMOUNT, CURRENCY,
                                      fake_call, &f->fb, &res),
                     QC_EUNAVAIL);
    assert_false(res.abandoned);
    expect(f, DEVICE_PENDING, 0, 0);
    f->fb.refuse_code = 0;
    assert_int_equal(
        device_flow_settle(wallet_device_core(f->dev), fake_call, &f->fb, DEVICE_METHOD_SYNC, &res),
        0);
    expect(f, DEVICE_IDLE, AMOUNT, 1);
}

static void test_flow_lost_reports(void **state)
{
    fixture_t *f = *state;
    f->fb.lose_reports = 2;
    device_flow_result_t res;
    assert_int_equal(device_flow_load(wallet_device_core(f->dev), WT_ACCOUNT, AMOUNT, CURRENCY,
                                      fake_call, &f->fb, &res),
                     0);
    assert_int_equal(f->fb.report_calls, 3);
    expect(f, DEVICE_IDLE, AMOUNT, 1);

    /* Every attempt lost: the device keeps the report for the next sync. */
    f->fb.lose_reports = DEVICE_REPORT_ATTEMPTS_MAX;
    free(f->fb.allow);
    free(f->fb.first_req);
    f->fb.allow = NULL;
    f->fb.first_req = NULL;
    assert_int_equal(device_flow_load(wallet_device_core(f->dev), WT_ACCOUNT, AMOUNT, CURRENCY,
                                      fake_call, &f->fb, &res),
                     QC_ETIMEOUT);
    expect(f, DEVICE_REPORTED, 2 * AMOUNT, 2);
    assert_int_equal(
        device_flow_settle(wallet_device_core(f->dev), fake_call, &f->fb, DEVICE_METHOD_SYNC, &res),
        0);
    expect(f, DEVICE_IDLE, 2 * AMOUNT, 2);
}

static void test_flow_forged_allow(void **state)
{
    fixture_t *f = *state;
    f->fb.forge_allow = true;
    device_flow_result_t res;
    assert_int_equal(device_flow_load(wallet_device_core(f->dev), WT_ACCOUNT, AMOUNT, CURRENCY,
                                      fake_call, &f->fb, &res),
                     0);
    assert_true(res.judged);
    assert_int_equal(res.verdict, QC_EKEYID);
    assert_int_equal(res.outcome, QUANCUN__LOAD_STATE__LOAD_COMPENSATED);
    expect(f, DEVICE_IDLE, 0, 0);
}

/* An outcome that does not verify is not believed: the report is re-sent a bounded number
 * of times and kept for the next sync. */
static void test_flow_forged_outcome(void **state)
{
    fixture_t *f = *state;
    f->fb.forge_outcome = true;
    device_flow_result_t res;
    assert_int_equal(device_flow_load(wallet_device_core(f->dev), WT_ACCOUNT, AMOUNT, CURRENCY,
                                      fake_call, &f->fb, &res),
                     QC_EKEYID);
    assert_false(res.finished);
    assert_int_equal(f->fb.report_calls, DEVICE_REPORT_ATTEMPTS_MAX);
    expect(f, DEVICE_REPORTED, AMOUNT, 1);
    f->fb.forge_outcome = false;
    assert_int_equal(
        device_flow_settle(wallet_device_core(f->dev), fake_call, &f->fb, DEVICE_METHOD_SYNC, &res),
        0);
    expect(f, DEVICE_IDLE, AMOUNT, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_flow_happy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flow_lost_allow_then_sync, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flow_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flow_transient_keeps_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flow_lost_reports, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flow_forged_allow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flow_forged_outcome, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
