/* chaos_check.h - the bank invariants of a chaos run, proved from a file of facts. */
#ifndef CHAOS_CHECK_H
#define CHAOS_CHECK_H

#include <stdio.h>

/* The properties of tests/chaos (issue 7), numbered as there. */
enum {
    CHAOS_CHECK_SUM_ZERO = 1, /* per currency and shard, the balances add up to zero */
    CHAOS_CHECK_HOLD_ZERO,    /* HOLD is zero, nothing RESERVED, every load final */
    CHAOS_CHECK_FLOAT,        /* FLOAT equals the sum of the wallets */
    CHAOS_CHECK_ACCOUNTS,     /* each account = funding - confirmed loads; no unknown load */
    CHAOS_CHECK_ONCE,         /* no txn applied twice; counters only grew, by one per load */
    CHAOS_CHECK_ACKS,         /* every acknowledged outcome is the ledger's final state */
    CHAOS_CHECK_AUDIT,        /* the audit chain verifies and has every ledger transition */
    CHAOS_CHECK_REPLICAS,     /* every replica of a shard checks ok and equals the others */
    CHAOS_CHECK_COUNT = CHAOS_CHECK_REPLICAS
};

/* The verdict of one property. */
typedef enum { CHAOS_VERDICT_PASS, CHAOS_VERDICT_FAIL, CHAOS_VERDICT_PENDING } chaos_verdict_t;

/* The result of a whole check: verdicts[i] is property i (1..CHAOS_CHECK_COUNT). */
typedef struct {
    chaos_verdict_t verdicts[CHAOS_CHECK_COUNT + 1];
    int failed;  /* how many properties failed */
    int pending; /* how many could not be decided (the audit service was not there) */
} chaos_check_result_t;

/* Reads the facts of a run from `facts` (one fact a line, tab-separated fields, the first
 * naming the kind; the format is described at the top of chaos_check.c), proves the eight
 * properties, and prints to `out` one line "PASS|FAIL|PENDING n. name: figures" per property,
 * followed by up to a few lines naming the offending items of a failed one.
 *
 * Returns 0 when the facts could be read (whatever the verdicts, which are in *result), or
 * QC_EINVAL when a line is malformed (its number is printed to `out`), QC_ENOMEM when memory
 * ran out; *result is then undefined. */
int chaos_check_run(FILE *facts, FILE *out, chaos_check_result_t *result);

#endif
