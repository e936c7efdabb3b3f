/* test_device_pin.c - the device PIN: right, wrong three times then locked, the lock
 * survives a restart, and only the admin reset lifts it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "qc_error.h"
#include "wallet_device.h"
#include "device_pin.h"
#include "wallet_test_bank.h"

#define WRONG_PIN "1357"

static void test_pin_format(void **state)
{
    (void)state;
    assert_int_equal(device_pin_valid("1234", 4), 0);
    assert_int_equal(device_pin_valid("123456789012", 12), 0);
    assert_int_equal(device_pin_valid("123", 3), QC_EINVAL);
    assert_int_equal(device_pin_valid("1234567890123", 13), QC_EINVAL);
    assert_int_equal(device_pin_valid("12a4", 4), QC_EINVAL);
    assert_int_equal(device_pin_valid("", 0), QC_EINVAL);
}

static void test_pin_record(void **state)
{
    (void)state;
    device_pin_t a, b;
    assert_int_equal(device_pin_set(&a, "1234", 4), 0);
    assert_int_equal(device_pin_set(&b, "1234", 4), 0);
    /* Salted: the same PIN hashes differently on two devices. */
    assert_memory_not_equal(a.salt, b.salt, DEVICE_PIN_SALT_SIZE);
    assert_memory_not_equal(a.hash, b.hash, DEVICE_PIN_HASH_SIZE);
    assert_true(a.iterations >= DEVICE_PIN_ITERATIONS_MIN);
    assert_int_equal(device_pin_check(&a, "1234", 4), 0);
    assert_int_equal(device_pin_check(&a, "4321", 4), QC_EPIN);
    assert_int_equal(a.tries_left, DEVICE_PIN_TRIES - 1);
    /* A right PIN restores the tries. */
    assert_int_equal(device_pin_check(&a, "1234", 4), 0);
    assert_int_equal(a.tries_left, DEVICE_PIN_TRIES);
    /* A malformed PIN is a wrong try too. */
    assert_int_equal(device_pin_check(&a, "12", 2), QC_EPIN);
    assert_int_equal(a.tries_left, DEVICE_PIN_TRIES - 1);
    assert_int_equal(device_pin_set(&a, "12", 2), QC_EINVAL);
}

static void test_pin_lock_survives_restart(void **state)
{
    (void)state;
    wt_bank_t *b = wt_bank_new();
    assert_int_equal(wallet_device_init(b->home, "QCPINTEST", WT_PIN, strlen(WT_PIN)), 0);
    wallet_device_t *dev = NULL;
    assert_int_equal(wallet_device_open(b->home, &dev), 0);

    assert_int_equal(device_core_verify_pin(wallet_device_core(dev), WT_PIN, strlen(WT_PIN)), 0);
    assert_int_equal(device_core_verify_pin(wallet_device_core(dev), WRONG_PIN, 4), QC_EPIN);
    /* A wrong PIN also takes back the session's earlier success. */
    const uint8_t *req = NULL;
    size_t req_len = 0;
    assert_int_equal(
        device_core_request(wallet_device_core(dev), WT_ACCOUNT, 100, 156, &req, &req_len),
        QC_EDENIED);
    assert_int_equal(device_core_verify_pin(wallet_device_core(dev), WRONG_PIN, 4), QC_EPIN);
    device_status_t s;
    device_core_status(wallet_device_core(dev), &s);
    assert_int_equal(s.pin_tries_left, 1);

    /* Tries are on disk: a restart does not give them back. */
    wallet_device_destroy(&dev);
    assert_null(dev);
    assert_int_equal(wallet_device_open(b->home, &dev), 0);
    device_core_status(wallet_device_core(dev), &s);
    assert_int_equal(s.pin_tries_left, 1);
    assert_int_equal(device_core_verify_pin(wallet_device_core(dev), WRONG_PIN, 4), QC_ELOCKED);
    /* Locked: even the right PIN is refused, and nothing is signed. */
    assert_int_equal(device_core_verify_pin(wallet_device_core(dev), WT_PIN, strlen(WT_PIN)),
                     QC_ELOCKED);
    assert_int_equal(
        device_core_request(wallet_device_core(dev), WT_ACCOUNT, 100, 156, &req, &req_len),
        QC_EDENIED);

    wallet_device_destroy(&dev);
    assert_int_equal(wallet_device_open(b->home, &dev), 0);
    assert_int_equal(device_core_verify_pin(wallet_device_core(dev), WT_PIN, strlen(WT_PIN)),
                     QC_ELOCKED);
    assert_int_equal(wt_log_count(b, "\"pin.locked\""), 1);

    assert_int_equal(device_core_admin_reset(wallet_device_core(dev)), 0);
    wallet_device_destroy(&dev);
    assert_int_equal(wallet_device_open(b->home, &dev), 0);
    device_core_status(wallet_device_core(dev), &s);
    assert_int_equal(s.pin_tries_left, DEVICE_PIN_TRIES);
    assert_int_equal(device_core_verify_pin(wallet_device_core(dev), WT_PIN, strlen(WT_PIN)), 0);
    assert_int_equal(wt_log_count(b, "\"pin.admin_reset\""), 1);
    assert_int_equal(wt_log_count(b, "\"pin.wrong\""), 2);
    wallet_device_destroy(&dev);
    wt_bank_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pin_format),
        cmocka_unit_test(test_pin_record),
        cmocka_unit_test(test_pin_lock_survives_restart),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
