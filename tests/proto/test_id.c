/* test_id.c - the one identifier rule: both alphabets, the limits, and what a NUL does. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "proto_id.h"
#include "qc_error.h"

static void test_visible(void **state)
{
    (void)state;
    assert_int_equal(proto_id_check("dev-1", 64, PROTO_ID_VISIBLE), 0);
    assert_int_equal(proto_id_check("a:b/c!~", 64, PROTO_ID_VISIBLE), 0);
    assert_int_equal(proto_id_check("x", 1, PROTO_ID_VISIBLE), 0);
    assert_int_equal(proto_id_check("xy", 1, PROTO_ID_VISIBLE), QC_ETOOBIG);
    assert_int_equal(proto_id_check("", 64, PROTO_ID_VISIBLE), QC_EMISSING);
    assert_int_equal(proto_id_check(NULL, 64, PROTO_ID_VISIBLE), QC_EMISSING);
    static const char *const bad[] = {"a b", "tab\there", "nl\n", "\x7f", "caf\xc3\xa9", NULL};
    for (size_t i = 0; bad[i] != NULL; i++)
        assert_int_equal(proto_id_check(bad[i], 64, PROTO_ID_VISIBLE), QC_EDECODE);
}

static void test_serial(void **state)
{
    (void)state;
    assert_int_equal(proto_id_check("QC-0123_abcZ", 64, PROTO_ID_SERIAL), 0);
    /* Visible, but not a serial: punctuation would break a comma-separated trust list. */
    static const char *const bad[] = {"a,b", "a:b", "a.b", "a/b", "a@b", NULL};
    for (size_t i = 0; bad[i] != NULL; i++) {
        assert_int_equal(proto_id_check(bad[i], 64, PROTO_ID_VISIBLE), 0);
        assert_int_equal(proto_id_check(bad[i], 64, PROTO_ID_SERIAL), QC_EDECODE);
    }
    assert_int_equal(proto_id_check("", 64, PROTO_ID_SERIAL), QC_EMISSING);
}

static void test_len(void **state)
{
    (void)state;
    /* Exactly len bytes are read: a name inside a record or a certificate has no NUL. */
    const char rec[] = {'a', 'b', 'c', 'd'};
    assert_int_equal(proto_id_check_len(rec, 3, 3, PROTO_ID_VISIBLE), 0);
    assert_int_equal(proto_id_check_len(rec, 4, 3, PROTO_ID_VISIBLE), QC_ETOOBIG);
    assert_int_equal(proto_id_check_len(rec, 0, 3, PROTO_ID_VISIBLE), QC_EMISSING);
    assert_int_equal(proto_id_check_len(NULL, 2, 3, PROTO_ID_VISIBLE), QC_EMISSING);
    /* An embedded NUL would silently shorten the id a C string reader sees: refused. */
    const char nul[] = {'d', 'e', 'v', '\0', 'x'};
    assert_int_equal(proto_id_check_len(nul, sizeof nul, 64, PROTO_ID_VISIBLE), QC_EDECODE);
    assert_int_equal(proto_id_check_len(nul, sizeof nul, 64, PROTO_ID_SERIAL), QC_EDECODE);
    /* The NUL-terminated form reads at most max + 1 bytes. */
    char longer[80];
    memset(longer, 'a', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    assert_int_equal(proto_id_check(longer, 64, PROTO_ID_VISIBLE), QC_ETOOBIG);
    longer[64] = '\0';
    assert_int_equal(proto_id_check(longer, 64, PROTO_ID_VISIBLE), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_visible),
        cmocka_unit_test(test_serial),
        cmocka_unit_test(test_len),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
