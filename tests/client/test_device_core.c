/* test_device_core.c - the device core in memory, as qc-loadgen drives it: a whole load with
 * no store touches no file of the home, every state goes through the store before the core
 * adopts it, and a store that fails leaves the state exactly as it was. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device_core.h"
#include "qc_error.h"
#include "quancun.pb-c.h"
#include "wallet_device.h"
#include "wallet_store.h"
#include "wallet_test_bank.h"

#define AMOUNT 500
#define SERIAL "QCCORE0001"
#define STORES_MAX 16

/* A store that records what it was given and fails when told to. */
typedef struct store_spy {
    int calls;
    int fail_at; /* the call number that fails with QC_EIO, 0 = none */
    uint64_t log_seq[STORES_MAX];
    bool has_line[STORES_MAX];
    device_phase_t phase[STORES_MAX];
    char line[STORES_MAX][DEVICE_LOG_LINE_MAX + 1];
} store_spy_t;

static int spy_store(void *arg, const device_state_t *st, bool has_line)
{
    store_spy_t *spy = arg;
    int n = ++spy->calls;
    if (n == spy->fail_at)
        return QC_EIO;
    assert_true(n <= STORES_MAX);
    spy->log_seq[n - 1] = st->log_seq;
    spy->has_line[n - 1] = has_line;
    spy->phase[n - 1] = st->phase;
    snprintf(spy->line[n - 1], sizeof(spy->line[n - 1]), "%s", st->log_pending);
    return 0;
}

typedef struct fixture {
    wt_bank_t *bank;
    device_core_t *core;
    uint8_t *state_before; /* the home's state file when the core was made */
    size_t state_before_len;
} fixture_t;

/* A device made and certified in a home by the wallet, then taken into memory: its key, its
 * certificate and the bank's keys, a state of its own with a PIN of one round. */
static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->bank = wt_bank_new();
    wallet_device_t *dev = wt_device_ready(f->bank, SERIAL);
    wallet_device_destroy(&dev);

    EVP_PKEY *key = NULL;
    uint8_t *der = NULL;
    size_t der_len = 0;
    assert_int_equal(device_pki_load_key(f->bank->home, WALLET_KEY_FILE, &key), 0);
    assert_int_equal(
        device_pki_load_cert(f->bank->home, WALLET_CERT_FILE, key, SERIAL, &der, &der_len), 0);
    assert_non_null(der);
    device_state_t st = {0};
    assert_int_equal(
        device_state_init(&st, SERIAL, WT_PIN, strlen(WT_PIN), DEVICE_PIN_ITERATIONS_SIMULATED), 0);
    assert_int_equal(device_core_new(&st, key, &f->core), 0);
    assert_null(st.request); /* taken over */
    assert_int_equal(device_core_set_cert(f->core, der, der_len), 0);
    device_bank_key_t allow = {.key = f->bank->allow_key}, outcome = {.key = f->bank->outcome_key};
    device_core_set_bank(f->core, &allow, &outcome);
    EVP_PKEY_free(key); /* the core holds its own reference */
    free(der);
    assert_int_equal(device_home_read(f->bank->home, WALLET_STATE_FILE, DEVICE_STATE_FILE_MAX,
                                      &f->state_before, &f->state_before_len),
                     0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    device_core_destroy(&f->core);
    assert_null(f->core);
    free(f->state_before);
    wt_bank_free(f->bank);
    free(f);
    return 0;
}

static void expect(const fixture_t *f, device_phase_t phase, int64_t balance, uint64_t counter)
{
    device_status_t s;
    device_core_status(f->core, &s);
    assert_int_equal(s.phase, phase);
    assert_int_equal(s.balance, balance);
    assert_int_equal(s.counter, counter);
}

/* Request, allow, report, outcome: returns the verdict; the core ends IDLE. */
static int one_load(fixture_t *f)
{
    const uint8_t *req = NULL, *rep = NULL;
    size_t req_len = 0, rep_len = 0;
    assert_int_equal(
        device_core_request(f->core, WT_ACCOUNT, AMOUNT, DEVICE_CURRENCY_DEFAULT, &req, &req_len),
        0);
    uint8_t *allow = NULL, *oc = NULL;
    size_t allow_len = 0, oc_len = 0;
    wt_make_allow(f->bank, req, req_len, NULL, NULL, &allow, &allow_len);
    int verdict = -1;
    assert_int_equal(device_core_judge_allow(f->core, allow, allow_len, &verdict), 0);
    assert_int_equal(device_core_report(f->core, &rep, &rep_len), 0);
    wt_make_outcome(f->bank, rep, rep_len, false, QUANCUN__LOAD_STATE__LOAD_CONFIRMED, NULL, &oc,
                    &oc_len);
    int ls = 0;
    assert_int_equal(device_core_accept_outcome(f->core, oc, oc_len, &ls), 0);
    assert_int_equal(ls, QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
    free(allow);
    free(oc);
    return verdict;
}

/* With no store the core runs whole loads and the home it came from is untouched. */
static void test_memory_only(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(device_core_verify_pin(f->core, WT_PIN, strlen(WT_PIN)), 0);
    int logged = wt_log_count(f->bank, "\"seq\"");
    assert_int_equal(one_load(f), 0);
    assert_int_equal(one_load(f), 0);
    expect(f, DEVICE_IDLE, 2 * AMOUNT, 2);

    uint8_t *now = NULL;
    size_t now_len = 0;
    assert_int_equal(
        device_home_read(f->bank->home, WALLET_STATE_FILE, DEVICE_STATE_FILE_MAX, &now, &now_len),
        0);
    assert_int_equal(now_len, f->state_before_len);
    assert_memory_equal(now, f->state_before, now_len);
    assert_int_equal(wt_log_count(f->bank, "\"seq\""), logged);
    free(now);
}

/* Every state goes to the store first, with its log line numbered in order. */
static void test_store_sees_every_state(void **state)
{
    fixture_t *f = *state;
    store_spy_t spy = {0};
    device_core_set_store(f->core, spy_store, &spy);
    assert_int_equal(device_core_verify_pin(f->core, WT_PIN, strlen(WT_PIN)), 0);
    assert_int_equal(spy.calls, 2); /* the try counted, then the PIN judged */
    assert_false(spy.has_line[0]);
    assert_int_equal(one_load(f), 0);
    assert_int_equal(spy.calls, 5);
    static const char *const events[] = {"load.requested", "load.applied", "load.outcome"};
    static const device_phase_t phases[] = {DEVICE_PENDING, DEVICE_REPORTED, DEVICE_IDLE};
    for (int k = 0; k < 3; k++) {
        assert_true(spy.has_line[2 + k]);
        assert_int_equal(spy.phase[2 + k], phases[k]);
        assert_int_equal(spy.log_seq[2 + k], spy.log_seq[1] + 1 + (uint64_t)k);
        assert_non_null(strstr(spy.line[2 + k], events[k]));
    }
}

/* A store that fails leaves the state as it was, at every step; the next try succeeds. */
static void test_failed_store_changes_nothing(void **state)
{
    fixture_t *f = *state;
    store_spy_t spy = {0};
    device_core_set_store(f->core, spy_store, &spy);
    assert_int_equal(device_core_verify_pin(f->core, WT_PIN, strlen(WT_PIN)), 0);

    const uint8_t *req = NULL;
    size_t req_len = 0;
    spy.fail_at = spy.calls + 1;
    assert_int_equal(
        device_core_request(f->core, WT_ACCOUNT, AMOUNT, DEVICE_CURRENCY_DEFAULT, &req, &req_len),
        QC_EIO);
    expect(f, DEVICE_IDLE, 0, 0);
    assert_int_equal(device_core_pending_request(f->core, &req, &req_len), QC_ESTATE);

    assert_int_equal(
        device_core_request(f->core, WT_ACCOUNT, AMOUNT, DEVICE_CURRENCY_DEFAULT, &req, &req_len),
        0);
    uint8_t *allow = NULL;
    size_t allow_len = 0;
    wt_make_allow(f->bank, req, req_len, NULL, NULL, &allow, &allow_len);
    int verdict = -1;
    spy.fail_at = spy.calls + 1;
    assert_int_equal(device_core_judge_allow(f->core, allow, allow_len, &verdict), QC_EIO);
    expect(f, DEVICE_PENDING, 0, 0); /* not credited, the allow still to be judged */
    assert_int_equal(device_core_judge_allow(f->core, allow, allow_len, &verdict), 0);
    assert_int_equal(verdict, 0);
    expect(f, DEVICE_REPORTED, AMOUNT, 1);

    const uint8_t *rep = NULL;
    size_t rep_len = 0;
    assert_int_equal(device_core_report(f->core, &rep, &rep_len), 0);
    uint8_t *oc = NULL;
    size_t oc_len = 0;
    wt_make_outcome(f->bank, rep, rep_len, false, QUANCUN__LOAD_STATE__LOAD_CONFIRMED, NULL, &oc,
                    &oc_len);
    int ls = 0;
    spy.fail_at = spy.calls + 1;
    assert_int_equal(device_core_accept_outcome(f->core, oc, oc_len, &ls), QC_EIO);
    expect(f, DEVICE_REPORTED, AMOUNT, 1); /* the report is still there to be re-sent */
    assert_int_equal(device_core_report(f->core, &rep, &rep_len), 0);
    assert_int_equal(device_core_accept_outcome(f->core, oc, oc_len, &ls), 0);
    expect(f, DEVICE_IDLE, AMOUNT, 1);
    free(allow);
    free(oc);
}

/* A failed store of the counted PIN try refuses the PIN: no free guess, no open gate. */
static void test_failed_pin_store(void **state)
{
    fixture_t *f = *state;
    store_spy_t spy = {.fail_at = 1};
    device_core_set_store(f->core, spy_store, &spy);
    assert_int_equal(device_core_verify_pin(f->core, WT_PIN, strlen(WT_PIN)), QC_EIO);
    const uint8_t *req = NULL;
    size_t req_len = 0;
    assert_int_equal(
        device_core_request(f->core, WT_ACCOUNT, AMOUNT, DEVICE_CURRENCY_DEFAULT, &req, &req_len),
        QC_EDENIED);
    device_status_t s;
    device_core_status(f->core, &s);
    assert_int_equal(s.pin_tries_left, DEVICE_PIN_TRIES);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_memory_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_sees_every_state, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_store_changes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_pin_store, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
