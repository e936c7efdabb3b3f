/* test_proto_amount.c - the flags the device does not use: zero where a limit of 0 means none,
 * and whole minor units (qcctl --minor). The yuan table itself is test_device_amount.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "proto_amount.h"
#include "qc_error.h"

typedef struct flag_case {
    const char *text;
    unsigned flags;
    int rc;
    int64_t minor;       /* when rc == 0 */
    const char *why_has; /* when rc != 0 */
} flag_case_t;

static const flag_case_t cases[] = {
    {"0", PROTO_AMOUNT_ZERO_OK, 0, 0, NULL},
    {"0.00", PROTO_AMOUNT_ZERO_OK, 0, 0, NULL},
    {"12.34", PROTO_AMOUNT_ZERO_OK, 0, 1234, NULL},
    {"0", 0, QC_EAMOUNT, 0, "zero"},
    {"-0", PROTO_AMOUNT_ZERO_OK, QC_EAMOUNT, 0, "negative"},
    {"1.234", PROTO_AMOUNT_ZERO_OK, QC_EAMOUNT, 0, "decimals"},
    {"1234", PROTO_AMOUNT_MINOR, 0, 1234, NULL},
    {"9223372036854775807", PROTO_AMOUNT_MINOR, 0, INT64_MAX, NULL},
    {"9223372036854775808", PROTO_AMOUNT_MINOR, QC_EAMOUNT, 0, "large"},
    {"12.34", PROTO_AMOUNT_MINOR, QC_EAMOUNT, 0, "whole"},
    {"0", PROTO_AMOUNT_MINOR, QC_EAMOUNT, 0, "zero"},
    {"0", PROTO_AMOUNT_MINOR | PROTO_AMOUNT_ZERO_OK, 0, 0, NULL},
    {"-5", PROTO_AMOUNT_MINOR, QC_EAMOUNT, 0, "negative"},
    {"12x", PROTO_AMOUNT_MINOR, QC_EAMOUNT, 0, "number"},
    {"", PROTO_AMOUNT_MINOR, QC_EAMOUNT, 0, "empty"},
    {"1e3", PROTO_AMOUNT_MINOR, QC_EAMOUNT, 0, "number"},
    /* Yuan: the largest amount is INT64_MAX fen, one fen more overflows. */
    {"92233720368547758.07", 0, 0, INT64_MAX, NULL},
    {"92233720368547758.08", PROTO_AMOUNT_ZERO_OK, QC_EAMOUNT, 0, "large"},
};

static void test_flags(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const flag_case_t *c = &cases[i];
        int64_t minor = -7;
        const char *why = NULL;
        int rc = proto_amount_parse(c->text, c->flags, &minor, &why);
        if (rc != c->rc)
            fail_msg("\"%s\" flags %u: rc %d, want %d", c->text, c->flags, rc, c->rc);
        if (c->rc == 0) {
            if (minor != c->minor)
                fail_msg("\"%s\": %lld, want %lld", c->text, (long long)minor, (long long)c->minor);
            continue;
        }
        assert_int_equal(minor, -7);
        assert_non_null(why);
        if (strstr(why, c->why_has) == NULL)
            fail_msg("\"%s\": message \"%s\" lacks \"%s\"", c->text, why, c->why_has);
    }
}

/* Minor units formatted as decimals parse back, in either notation. */
static void test_round_trip_minor(void **state)
{
    (void)state;
    const int64_t values[] = {1, 99, 100, 123456789, INT64_MAX};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        char buf[PROTO_AMOUNT_FORMAT_MAX], digits[PROTO_AMOUNT_FORMAT_MAX];
        int64_t a = 0, b = 0;
        assert_int_equal(
            proto_amount_parse(proto_amount_format(values[i], buf, sizeof buf), 0, &a, NULL), 0);
        snprintf(digits, sizeof digits, "%lld", (long long)values[i]);
        assert_int_equal(proto_amount_parse(digits, PROTO_AMOUNT_MINOR, &b, NULL), 0);
        assert_int_equal(a, values[i]);
        assert_int_equal(b, values[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flags),
        cmocka_unit_test(test_round_trip_minor),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
