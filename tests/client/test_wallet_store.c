/* test_wallet_store.c - the state file: every field survives a save and a load, a crash's
 * leftovers do not matter, and a truncated or edited file is refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qc_error.h"
#include "wallet_store.h"
#include "qctest_fs.h"

#define DIR_MAX QCTEST_PATH_MAX
#define PATH_MAX_T (DIR_MAX + 32)

static void fill(device_state_t *st)
{
    memset(st, 0, sizeof(*st));
    snprintf(st->serial, sizeof(st->serial), "QC0123456789ABCDEF");
    st->balance = -42;
    st->counter = UINT64_MAX - 1;
    st->phase = DEVICE_REPORTED;
    memset(st->txn_id, 0xa5, sizeof(st->txn_id));
    snprintf(st->account_id, sizeof(st->account_id), "acct:42/x");
    st->amount = INT64_MAX;
    st->currency = 978;
    memset(st->request_digest, 0x11, sizeof(st->request_digest));
    uint8_t blob[300];
    for (size_t i = 0; i < sizeof(blob); i++)
        blob[i] = (uint8_t)i;
    assert_int_equal(device_state_set_blob(&st->request, &st->request_len, blob, sizeof(blob)), 0);
    assert_int_equal(device_state_set_blob(&st->report, &st->report_len, blob, 7), 0);
    st->report_status = 2;
    memset(st->allow_digest, 0x22, sizeof(st->allow_digest));
    memset(st->last_txn_id, 0x33, sizeof(st->last_txn_id));
    st->last_outcome = 4;
    memset(st->pin.salt, 0x44, sizeof(st->pin.salt));
    memset(st->pin.hash, 0x55, sizeof(st->pin.hash));
    st->pin.iterations = DEVICE_PIN_ITERATIONS;
    st->pin.tries_left = 1;
    st->log_seq = 9;
    snprintf(st->log_pending, sizeof(st->log_pending), "{\"seq\":9,\"detail\":\"a b\\\"c\"}");
}

static void test_round_trip(void **state)
{
    (void)state;
    char dir[DIR_MAX];
    assert_int_equal(qctest_dir_new("qc-wallet-store", dir), 0);
    device_state_t a, b;
    fill(&a);
    memset(&b, 0, sizeof(b));
    assert_int_equal(wallet_state_load(dir, &b), QC_ENOTFOUND);

    /* A state.tmp left by a crash is ignored and replaced. */
    char tmp[PATH_MAX_T];
    snprintf(tmp, sizeof(tmp), "%s/state.tmp", dir);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fputs("half a state", f);
    fclose(f);
    assert_int_equal(wallet_state_save(dir, &a), 0);
    assert_int_equal(access(tmp, F_OK), -1);

    assert_int_equal(wallet_state_load(dir, &b), 0);
    assert_string_equal(b.serial, a.serial);
    assert_int_equal(b.balance, a.balance);
    assert_true(b.counter == a.counter);
    assert_int_equal(b.phase, a.phase);
    assert_memory_equal(b.txn_id, a.txn_id, sizeof(a.txn_id));
    assert_string_equal(b.account_id, a.account_id);
    assert_true(b.amount == a.amount);
    assert_int_equal(b.currency, a.currency);
    assert_memory_equal(b.request_digest, a.request_digest, sizeof(a.request_digest));
    assert_int_equal(b.request_len, a.request_len);
    assert_memory_equal(b.request, a.request, a.request_len);
    assert_int_equal(b.report_len, a.report_len);
    assert_memory_equal(b.report, a.report, a.report_len);
    assert_int_equal(b.report_status, a.report_status);
    assert_memory_equal(b.allow_digest, a.allow_digest, sizeof(a.allow_digest));
    assert_memory_equal(b.last_txn_id, a.last_txn_id, sizeof(a.last_txn_id));
    assert_int_equal(b.last_outcome, a.last_outcome);
    assert_memory_equal(&b.pin, &a.pin, sizeof(a.pin));
    assert_true(b.log_seq == a.log_seq);
    assert_string_equal(b.log_pending, a.log_pending);
    device_state_clear(&b);

    /* Cut anywhere, the file is refused rather than half believed. */
    char path[PATH_MAX_T];
    snprintf(path, sizeof(path), "%s/state", dir);
    long full = 0;
    f = fopen(path, "r");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    full = ftell(f);
    fclose(f);
    for (long cut = full - 1; cut > 0; cut -= full / 7) {
        assert_int_equal(wallet_state_save(dir, &a), 0);
        assert_int_equal(truncate(path, cut), 0);
        memset(&b, 0, sizeof(b));
        assert_int_equal(wallet_state_load(dir, &b), QC_EDECODE);
    }

    /* Out-of-range records are not written. */
    a.pin.tries_left = DEVICE_PIN_TRIES + 1;
    assert_int_equal(wallet_state_save(dir, &a), QC_EINVAL);
    a.pin.tries_left = 0;
    snprintf(a.account_id, sizeof(a.account_id), "has space");
    assert_int_equal(wallet_state_save(dir, &a), QC_EINVAL);
    device_state_clear(&a);

    assert_int_equal(qctest_dir_remove(dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
