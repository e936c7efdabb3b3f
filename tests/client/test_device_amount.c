/* test_device_amount.c - the amount parser's table: what a user may type and what is refused
 * before anything is signed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "qc_error.h"
#include "device_amount.h"

typedef struct amount_case {
    const char *text;
    int rc;
    int64_t minor;       /* when rc == 0 */
    const char *why_has; /* when rc != 0: a word the message must contain */
} amount_case_t;

static const amount_case_t cases[] = {
    {"12.34", 0, 1234, NULL},
    {"12.3", 0, 1230, NULL},
    {"12", 0, 1200, NULL},
    {"0.01", 0, 1, NULL},
    {"0.5", 0, 50, NULL},
    {"007.00", 0, 700, NULL},
    {"1000000", 0, 100000000, NULL},
    {"92233720368547758.07", 0, INT64_MAX, NULL},
    {"92233720368547758.08", QC_EAMOUNT, 0, "large"},
    {"92233720368547759", QC_EAMOUNT, 0, "large"},
    {"99999999999999999999", QC_EAMOUNT, 0, "large"},
    {"-1", QC_EAMOUNT, 0, "negative"},
    {"-0.01", QC_EAMOUNT, 0, "negative"},
    {"+1", QC_EAMOUNT, 0, "sign"},
    {"0", QC_EAMOUNT, 0, "zero"},
    {"0.00", QC_EAMOUNT, 0, "zero"},
    {"0.0", QC_EAMOUNT, 0, "zero"},
    {"1.234", QC_EAMOUNT, 0, "decimals"},
    {"0.001", QC_EAMOUNT, 0, "decimals"},
    {"", QC_EAMOUNT, 0, "empty"},
    {"abc", QC_EAMOUNT, 0, "number"},
    {"12a", QC_EAMOUNT, 0, "number"},
    {"1,000", QC_EAMOUNT, 0, "number"},
    {"1e3", QC_EAMOUNT, 0, "number"},
    {" 12", QC_EAMOUNT, 0, "number"},
    {"12 ", QC_EAMOUNT, 0, "number"},
    {".5", QC_EAMOUNT, 0, "number"},
    {"12.", QC_EAMOUNT, 0, "ends"},
    {"1.2.3", QC_EAMOUNT, 0, "number"},
    {"0x10", QC_EAMOUNT, 0, "number"},
    {"123456789012345678901234567890123", QC_EAMOUNT, 0, "long"},
};

static void test_parse_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const amount_case_t *c = &cases[i];
        int64_t minor = -7;
        const char *why = NULL;
        int rc = device_amount_parse(c->text, &minor, &why);
        if (rc != c->rc)
            fail_msg("\"%s\": rc %d, want %d", c->text, rc, c->rc);
        if (c->rc == 0) {
            if (minor != c->minor)
                fail_msg("\"%s\": %lld, want %lld", c->text, (long long)minor, (long long)c->minor);
        } else {
            assert_int_equal(minor, -7); /* untouched on error */
            assert_non_null(why);
            if (strstr(why, c->why_has) == NULL)
                fail_msg("\"%s\": message \"%s\" lacks \"%s\"", c->text, why, c->why_has);
        }
    }
}

static void test_format(void **state)
{
    (void)state;
    char buf[DEVICE_AMOUNT_FORMAT_MAX];
    assert_string_equal(device_amount_format(1234, buf, sizeof(buf)), "12.34");
    assert_string_equal(device_amount_format(5, buf, sizeof(buf)), "0.05");
    assert_string_equal(device_amount_format(0, buf, sizeof(buf)), "0.00");
    assert_string_equal(device_amount_format(-5, buf, sizeof(buf)), "-0.05");
    assert_string_equal(device_amount_format(INT64_MAX, buf, sizeof(buf)), "92233720368547758.07");
    assert_string_equal(device_amount_format(INT64_MIN, buf, sizeof(buf)), "-92233720368547758.08");
}

/* Whatever is formatted parses back to itself. */
static void test_round_trip(void **state)
{
    (void)state;
    const int64_t values[] = {1, 9, 10, 99, 100, 101, 1234567, INT64_MAX - 1, INT64_MAX};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        char buf[DEVICE_AMOUNT_FORMAT_MAX];
        int64_t back = 0;
        assert_int_equal(
            device_amount_parse(device_amount_format(values[i], buf, sizeof(buf)), &back, NULL), 0);
        assert_int_equal(back, values[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_table),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
