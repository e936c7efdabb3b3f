/* test_shard.c - account sharding: values every caller must agree on, and an even spread. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "proto_shard.h"

#define SPREAD_IDS 10000
#define SPREAD_SHARDS 4
#define SPREAD_TOLERANCE 300 /* about 3.5 standard deviations of 2500 +- 43 */

typedef struct shard_vector {
    const char *account_id;
    uint32_t shard_count;
    uint32_t shard;
} shard_vector_t;

/* Computed independently: int.from_bytes(sha256(id)[:8], 'big') % n in Python. */
static const shard_vector_t vectors[] = {
    {"acct-0001", 1, 0},
    {"acct-0001", 2, 1},
    {"acct-0001", 3, 2},
    {"acct-0001", 4, 3},
    {"acct-0001", 7, 2},
    {"acct-0001", 256, 115},
    {"acct-0002", 4, 2},
    {"acct-0002", 7, 5},
    {"acct-0002", 256, 250},
    {"alice", 4, 3},
    {"alice", 256, 175},
    {"6222020000000001", 4, 0},
    {"6222020000000001", 7, 3},
    {"6222020000000001", 256, 240},
    {"x", 7, 1},
    {"x", 256, 68},
};

static void test_known_values(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
        const shard_vector_t *v = &vectors[i];
        assert_int_equal(proto_shard_of(v->account_id, v->shard_count), v->shard);
    }
}

static void test_stable_and_in_range(void **state)
{
    (void)state;
    char id[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(id, sizeof(id), "acct-%d", i);
        for (uint32_t n = 1; n <= PROTO_SHARD_COUNT_MAX; n *= 2) {
            uint32_t s = proto_shard_of(id, n);
            assert_true(s < n);
            assert_int_equal(proto_shard_of(id, n), s);
        }
    }
}

static void test_even_spread(void **state)
{
    (void)state;
    unsigned count[SPREAD_SHARDS] = {0};
    char id[32];
    for (int i = 0; i < SPREAD_IDS; i++) {
        snprintf(id, sizeof(id), "6222%012d", i);
        count[proto_shard_of(id, SPREAD_SHARDS)]++;
    }
    for (int s = 0; s < SPREAD_SHARDS; s++) {
        print_message("shard %d: %u\n", s, count[s]);
        assert_true(count[s] > SPREAD_IDS / SPREAD_SHARDS - SPREAD_TOLERANCE);
        assert_true(count[s] < SPREAD_IDS / SPREAD_SHARDS + SPREAD_TOLERANCE);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_values),
        cmocka_unit_test(test_stable_and_in_range),
        cmocka_unit_test(test_even_spread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
