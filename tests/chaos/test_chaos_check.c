/* test_chaos_check.c - the chaos checker passes a consistent run and fails each broken
 * invariant: a checker that cannot fail proves nothing. */
#include "chaos_check.h"

#include "qc_error.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* One device, one account, a CONFIRMED load and a LATE_CONFIRMED one, all consistent. */
static const char BASE[] = "# a consistent run\n"
                           "shard\t0\t2\t0\t0\n"
                           "currency\t0\t156\t0\t0\t0\t300\n"
                           "account\tA1\t156\t9700\t10000\n"
                           "load\tT1\tCONFIRMED\tA1\t100\n"
                           "load\tT2\tLATE_CONFIRMED\tA1\t200\n"
                           "load\tT3\tNONE\t-\t0\n"
                           "wallet\tw1\t300\t2\tIDLE\n"
                           "wlog\tw1\t1\tdevice.created\t-\t0\t0\t-\t-\n"
                           "wlog\tw1\t2\tload.requested\tT1\t0\t0\t100\t-\n"
                           "wlog\tw1\t3\tload.applied\tT1\t100\t1\t100\t-\n"
                           "wlog\tw1\t4\tload.outcome\tT1\t100\t1\t100\tCONFIRMED\n"
                           "wlog\tw1\t5\tload.requested\tT2\t100\t1\t200\t-\n"
                           "wlog\tw1\t6\tload.applied\tT2\t300\t2\t200\t-\n"
                           "wlog\tw1\t7\tload.outcome\tT2\t300\t2\t200\tLATE_CONFIRMED\n"
                           "wlog\tw1\t8\tload.requested\tT3\t300\t2\t50\t-\n"
                           "wlog\tw1\t9\tload.abandoned\tT3\t300\t2\t50\t-\n"
                           "ack\tw1\tT1\tCONFIRMED\n"
                           "audit\tok\n"
                           "aentry\tledger-0\t1\tload.reserved\tT1\n"
                           "aentry\tledger-0\t2\tload.confirmed\tT1\n"
                           "aentry\tledger-0\t3\tload.reserved\tT2\n"
                           "aentry\tledger-0\t4\tload.compensated\tT2\n"
                           "aentry\tledger-0\t5\tload.late_confirmed\tT2\n"
                           "replica\t0\ttcp://r1\ttrue\t{\"loads\":2,\"reserved\":0}\n"
                           "replica\t0\ttcp://r2\ttrue\t{\"loads\":2,\"reserved\":0}\n";

/* Runs the checker on BASE with the first occurrence of `from` replaced by `to` (both NULL:
 * BASE as is). Returns chaos_check_run's code; the verdicts are in *r. */
static int run_edited(const char *from, const char *to, chaos_check_result_t *r)
{
    char facts[sizeof(BASE) + 512];
    if (from == NULL) {
        snprintf(facts, sizeof(facts), "%s", BASE);
    } else {
        const char *at = strstr(BASE, from);
        assert_non_null(at);
        snprintf(facts, sizeof(facts), "%.*s%s%s", (int)(at - BASE), BASE, to, at + strlen(from));
    }
    FILE *in = fmemopen(facts, strlen(facts), "r");
    assert_non_null(in);
    char *text = NULL;
    size_t text_len = 0;
    FILE *out = open_memstream(&text, &text_len);
    assert_non_null(out);
    int rc = chaos_check_run(in, out, r);
    fclose(in);
    fclose(out);
    printf("%s", text);
    free(text);
    return rc;
}

/* Asserts that the edit fails property `which` (and says so in the test's output). */
static void expect_fail(const char *from, const char *to, int which)
{
    chaos_check_result_t r;
    assert_int_equal(run_edited(from, to, &r), 0);
    assert_int_equal(r.verdicts[which], CHAOS_VERDICT_FAIL);
    assert_true(r.failed >= 1);
}

static void test_consistent_run_passes(void **state)
{
    (void)state;
    chaos_check_result_t r;
    assert_int_equal(run_edited(NULL, NULL, &r), 0);
    assert_int_equal(r.failed, 0);
    assert_int_equal(r.pending, 0);
    for (int i = 1; i <= CHAOS_CHECK_COUNT; i++)
        assert_int_equal(r.verdicts[i], CHAOS_VERDICT_PASS);
}

static void test_money_created_fails_sum(void **state)
{
    (void)state;
    expect_fail("156\t0\t0\t0\t300", "156\t5\t0\t0\t300", CHAOS_CHECK_SUM_ZERO);
}

static void test_hold_or_reserved_fails(void **state)
{
    (void)state;
    expect_fail("156\t0\t0\t0\t300", "156\t0\t100\t0\t300", CHAOS_CHECK_HOLD_ZERO);
    expect_fail("shard\t0\t2\t0\t0", "shard\t0\t2\t1\t0", CHAOS_CHECK_HOLD_ZERO);
    expect_fail("T2\tLATE_CONFIRMED", "T2\tRESERVED", CHAOS_CHECK_HOLD_ZERO);
}

static void test_float_differs_from_wallets(void **state)
{
    (void)state;
    expect_fail("156\t0\t0\t0\t300", "156\t0\t0\t0\t301", CHAOS_CHECK_FLOAT);
    expect_fail("w1\t300\t2\tIDLE", "w1\t300\t2\tREPORTED", CHAOS_CHECK_FLOAT);
}

/* Money moved from w1 onto a card is still e-money: FLOAT = wallets + cards (issue 9). */
static void test_cards_count_in_float(void **state)
{
    (void)state;
    chaos_check_result_t r;
    /* w1 moved 120 of its 300 onto card c1: passes only when the card is counted. */
    assert_int_equal(
        run_edited("wallet\tw1\t300\t2\tIDLE\n", "wallet\tw1\t180\t2\tIDLE\ncard\tc1\t120\n", &r),
        0);
    assert_int_equal(r.verdicts[CHAOS_CHECK_FLOAT], CHAOS_VERDICT_PASS);
    expect_fail("wallet\tw1\t300\t2\tIDLE\n", "wallet\tw1\t180\t2\tIDLE\ncard\tc1\t121\n",
                CHAOS_CHECK_FLOAT);
    expect_fail("wallet\tw1\t300\t2\tIDLE\n", "wallet\tw1\t180\t2\tIDLE\n", CHAOS_CHECK_FLOAT);
}

static void test_account_not_replayed(void **state)
{
    (void)state;
    /* The account kept a confirmed load's money. */
    expect_fail("A1\t156\t9700", "A1\t156\t9800", CHAOS_CHECK_ACCOUNTS);
    /* The ledger holds a load no device asked for. */
    expect_fail("shard\t0\t2\t", "shard\t0\t3\t", CHAOS_CHECK_ACCOUNTS);
}

static void test_applied_twice_or_counter_back(void **state)
{
    (void)state;
    /* A second device applied T1 too. */
    expect_fail("ack\t", "wlog\tw2\t1\tload.applied\tT1\t100\t1\t100\t-\nack\t", CHAOS_CHECK_ONCE);
    /* The counter went back. */
    expect_fail("T2\t300\t2\t200\tLATE", "T2\t300\t1\t200\tLATE", CHAOS_CHECK_ONCE);
    /* The device applied a load that the ledger compensated. */
    expect_fail("T2\tLATE_CONFIRMED\tA1", "T2\tCOMPENSATED\tA1", CHAOS_CHECK_ONCE);
    /* The ledger's own check found a txn debited twice. */
    expect_fail("audit\tok", "problem\t0\ttxn 00ff debited twice\naudit\tok", CHAOS_CHECK_ONCE);
    /* The ledger confirmed a load no device applied. */
    expect_fail("T3\tNONE\t-\t0", "T3\tCONFIRMED\tA1\t0", CHAOS_CHECK_ONCE);
}

static void test_acknowledged_outcome_differs(void **state)
{
    (void)state;
    expect_fail("ack\tw1\tT1\tCONFIRMED", "ack\tw1\tT1\tCOMPENSATED", CHAOS_CHECK_ACKS);
    expect_fail("200\tLATE_CONFIRMED\n", "200\tCOMPENSATED\n", CHAOS_CHECK_ACKS);
    /* The device dropped a load as refused ("nothing was debited") that the ledger confirmed. */
    expect_fail("ack\t", "wlog\tw1\t8\tload.abandoned\tT1\t300\t2\t100\t-\nack\t",
                CHAOS_CHECK_ACKS);
    /* ... or as settled in a state the ledger does not hold. */
    expect_fail("ack\t", "wlog\tw1\t8\tload.abandoned\tT1\t300\t2\t100\tCOMPENSATED\nack\t",
                CHAOS_CHECK_ACKS);
}

static void test_audit_broken_or_incomplete(void **state)
{
    (void)state;
    expect_fail("audit\tok", "audit\tfailed", CHAOS_CHECK_AUDIT);
    expect_fail("aentry\tledger-0\t5\tload.late_confirmed\tT2\n", "", CHAOS_CHECK_AUDIT);
    expect_fail("aentry\tledger-0\t2\t", "aentry\tledger-0\t1\t", CHAOS_CHECK_AUDIT);
    expect_fail("shard\t0\t2\t0\t0", "shard\t0\t2\t0\t4", CHAOS_CHECK_AUDIT);
}

/* Sources number their events with 64-bit integers that a double cannot hold: two that differ
 * in the last digit are two events, not one appended twice. */
static void test_audit_big_source_seqs_are_distinct(void **state)
{
    (void)state;
    chaos_check_result_t r;
    assert_int_equal(run_edited("audit\tok\n",
                                "audit\tok\n"
                                "aentry\tsigner-0\t1883049728089784321\tsign.load_allow\t-\n"
                                "aentry\tsigner-0\t1883049728089784322\tsign.load_allow\t-\n"
                                "aentry\tsigner-0\t999\tsign.load_allow\t-\n",
                                &r),
                     0);
    assert_int_equal(r.verdicts[CHAOS_CHECK_AUDIT], CHAOS_VERDICT_PASS);
    expect_fail("audit\tok\n",
                "audit\tok\n"
                "aentry\tsigner-0\t1883049728089784321\tsign.load_allow\t-\n"
                "aentry\tsigner-0\t1883049728089784321\tsign.load_allow\t-\n",
                CHAOS_CHECK_AUDIT);
}

static void test_audit_absent_is_pending_not_pass(void **state)
{
    (void)state;
    chaos_check_result_t r;
    assert_int_equal(run_edited("audit\tok\n", "", &r), 0);
    assert_int_equal(r.verdicts[CHAOS_CHECK_AUDIT], CHAOS_VERDICT_PENDING);
    assert_int_equal(r.pending, 1);
    assert_int_equal(r.failed, 0);
}

static void test_replicas_not_ok_or_differing_fail(void **state)
{
    (void)state;
    expect_fail("tcp://r2\ttrue", "tcp://r2\tfalse", CHAOS_CHECK_REPLICAS);
    expect_fail("tcp://r2\ttrue\t{\"loads\":2", "tcp://r2\ttrue\t{\"loads\":1",
                CHAOS_CHECK_REPLICAS);
    /* Another shard's replica is not compared with shard 0's. */
    chaos_check_result_t r;
    assert_int_equal(run_edited("replica\t0\ttcp://r2\ttrue\t{\"loads\":2",
                                "replica\t1\ttcp://r2\ttrue\t{\"loads\":7", &r),
                     0);
    assert_int_equal(r.verdicts[CHAOS_CHECK_REPLICAS], CHAOS_VERDICT_PASS);
    /* No replica facts: not checked, which is not a pass. */
    assert_int_equal(run_edited("replica\t0\ttcp://r1\ttrue\t{\"loads\":2,\"reserved\":0}\n"
                                "replica\t0\ttcp://r2\ttrue\t{\"loads\":2,\"reserved\":0}\n",
                                "", &r),
                     0);
    assert_int_equal(r.verdicts[CHAOS_CHECK_REPLICAS], CHAOS_VERDICT_PENDING);
}

static void test_malformed_fact_is_refused(void **state)
{
    (void)state;
    chaos_check_result_t r;
    assert_int_equal(run_edited("wallet\tw1\t300", "wallet\tw1\tx300", &r), QC_EINVAL);
    assert_int_equal(run_edited("shard\t", "shrad\t", &r), QC_EINVAL);
    assert_int_equal(run_edited("load\tT2\t", "load\tT1\t", &r), QC_EINVAL);
    assert_int_equal(run_edited("tcp://r2\ttrue", "tcp://r2\tyes", &r), QC_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_consistent_run_passes),
        cmocka_unit_test(test_money_created_fails_sum),
        cmocka_unit_test(test_hold_or_reserved_fails),
        cmocka_unit_test(test_float_differs_from_wallets),
        cmocka_unit_test(test_cards_count_in_float),
        cmocka_unit_test(test_account_not_replayed),
        cmocka_unit_test(test_applied_twice_or_counter_back),
        cmocka_unit_test(test_acknowledged_outcome_differs),
        cmocka_unit_test(test_audit_broken_or_incomplete),
        cmocka_unit_test(test_audit_big_source_seqs_are_distinct),
        cmocka_unit_test(test_audit_absent_is_pending_not_pass),
        cmocka_unit_test(test_replicas_not_ok_or_differing_fail),
        cmocka_unit_test(test_malformed_fact_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
