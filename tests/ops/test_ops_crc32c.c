/* test_ops_crc32c.c - CRC-32C against its published check value and RFC 3720's vectors, and
 * that it catches every single flipped bit of a record. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "ops_crc32c.h"

static void test_vectors(void **state)
{
    (void)state;
    assert_int_equal(ops_crc32c(0, "123456789", 9), 0xE3069283u);
    uint8_t zeros[32], ones[32], inc[32];
    memset(zeros, 0, sizeof zeros);
    memset(ones, 0xff, sizeof ones);
    for (int i = 0; i < 32; i++)
        inc[i] = (uint8_t)i;
    /* RFC 3720, B.4. */
    assert_int_equal(ops_crc32c(0, zeros, sizeof zeros), 0x8A9136AAu);
    assert_int_equal(ops_crc32c(0, ones, sizeof ones), 0x62A8AB43u);
    assert_int_equal(ops_crc32c(0, inc, sizeof inc), 0x46DD794Eu);
    /* Extending is the same as one call over both parts. */
    assert_int_equal(ops_crc32c(ops_crc32c(0, "1234", 4), "56789", 5), 0xE3069283u);
    assert_int_equal(ops_crc32c(0, NULL, 0), 0);
    assert_int_equal(ops_crc32c_soft(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(ops_crc32c_soft(0, inc, sizeof inc), 0x46DD794Eu);
}

/* The instruction's path and the table's agree on every length and alignment. */
static void test_paths_agree(void **state)
{
    (void)state;
    uint8_t buf[300];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)(i * 31 + 7);
    for (size_t off = 0; off < 8; off++)
        for (size_t len = 0; len + off <= sizeof buf; len += 13)
            assert_int_equal(ops_crc32c(0x1234u, buf + off, len),
                             ops_crc32c_soft(0x1234u, buf + off, len));
}

static void test_every_bit(void **state)
{
    (void)state;
    uint8_t rec[200];
    for (size_t i = 0; i < sizeof rec; i++)
        rec[i] = (uint8_t)(i * 7 + 3);
    uint32_t good = ops_crc32c(0, rec, sizeof rec);
    for (size_t bit = 0; bit < 8 * sizeof rec; bit++) {
        rec[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        assert_int_not_equal(ops_crc32c(0, rec, sizeof rec), good);
        rec[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_paths_agree),
        cmocka_unit_test(test_every_bit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
