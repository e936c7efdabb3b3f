/* test_ops_hex.c - hex both ways: what decodes, and everything that must not. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ops_hex.h"
#include "qc_error.h"

static void test_round_trip(void **state)
{
    (void)state;
    uint8_t bytes[256], back[256];
    char text[2 * sizeof bytes + 1];
    for (size_t i = 0; i < sizeof bytes; i++)
        bytes[i] = (uint8_t)i;
    ops_hex(bytes, sizeof bytes, text);
    assert_int_equal(ops_unhex(text, back, sizeof back), 0);
    assert_memory_equal(bytes, back, sizeof bytes);
    uint8_t upper[2];
    assert_int_equal(ops_unhex("ABcd", upper, sizeof upper), 0);
    assert_int_equal(upper[0], 0xab);
    assert_int_equal(upper[1], 0xcd);
}

static void test_refusals(void **state)
{
    (void)state;
    /* What sscanf("%2x") would take and a strict decoder must not. */
    static const char *const bad[] = {"",     "0",    "000",  " f00", "+f00", "-100",
                                      "0x10", "zz00", "00zz", "0 00", "00\n", NULL};
    for (size_t i = 0; i + 1 < sizeof bad / sizeof bad[0]; i++) {
        uint8_t out[2] = {0x55, 0x55};
        assert_int_equal(ops_unhex(bad[i], out, sizeof out), QC_EDECODE);
        assert_int_equal(out[0], 0x55); /* untouched on error */
        assert_int_equal(out[1], 0x55);
    }
    uint8_t out[2];
    assert_int_equal(ops_unhex(NULL, out, sizeof out), QC_EDECODE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
