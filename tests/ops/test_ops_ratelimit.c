/* test_ops_ratelimit.c - the log limiter: per key and per event bursts, the counts of what was
 * held back, summaries of keys gone quiet, eviction, and one real storm through
 * ops_log_limited(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ops_log.h"
#include "ops_ratelimit.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TEST_STORM 100000 /* occurrences of one warning in the real storm */
#define TEST_CAPTURE_MAX (64 * 1024)

typedef struct sums {
    size_t count;
    uint64_t total;
    uint64_t aggregate_total; /* summaries with peer NULL */
} sums_t;

static void on_summary(void *arg, const ops_ratelimit_summary_t *s)
{
    sums_t *sums = arg;
    assert_non_null(s->event);
    assert_true(s->suppressed > 0);
    sums->count++;
    sums->total += s->suppressed;
    if (s->peer == NULL)
        sums->aggregate_total += s->suppressed;
}

static void test_burst_then_count(void **state)
{
    (void)state;
    sums_t sums = {0};
    ops_ratelimit_t *rl = ops_ratelimit_new(on_summary, &sums);
    assert_non_null(rl);
    uint64_t held = 99;
    size_t written = 0;
    for (int i = 0; i < 1000; i++) {
        if (ops_ratelimit_allow(rl, "http.error", NULL, 1000 + (uint64_t)i, &held)) {
            written++;
            assert_int_equal(held, 0);
        }
    }
    assert_int_equal(written, OPS_RATELIMIT_BURST);
    /* Within the window nothing is summed up yet. */
    assert_int_equal(ops_ratelimit_flush(rl, 1000 + OPS_RATELIMIT_WINDOW_MS - 1), 0);
    /* The next window: the first line carries the count of the first. */
    assert_true(ops_ratelimit_allow(rl, "http.error", NULL, 1000 + OPS_RATELIMIT_WINDOW_MS, &held));
    assert_int_equal(held, 1000 - OPS_RATELIMIT_BURST);
    assert_int_equal(sums.count, 0);
    ops_ratelimit_destroy(&rl);
    assert_null(rl);
    ops_ratelimit_destroy(&rl); /* accepts NULL */
}

static void test_quiet_key_summarized(void **state)
{
    (void)state;
    sums_t sums = {0};
    ops_ratelimit_t *rl = ops_ratelimit_new(on_summary, &sums);
    assert_non_null(rl);
    uint64_t held = 0;
    for (int i = 0; i < 20; i++)
        (void)ops_ratelimit_allow(rl, "audit.queue_full", NULL, 5, &held);
    assert_int_equal(ops_ratelimit_flush(rl, 5 + OPS_RATELIMIT_WINDOW_MS), 1);
    assert_int_equal(sums.total, 20 - OPS_RATELIMIT_BURST);
    /* Summed up once: the count is gone. */
    assert_int_equal(ops_ratelimit_flush(rl, 5 + 3 * OPS_RATELIMIT_WINDOW_MS), 0);
    assert_int_equal(sums.count, 1);
    ops_ratelimit_destroy(&rl);
}

static void test_per_peer_and_per_event(void **state)
{
    (void)state;
    sums_t sums = {0};
    ops_ratelimit_t *rl = ops_ratelimit_new(on_summary, &sums);
    assert_non_null(rl);
    uint64_t held = 0;
    /* One noisy peer is held to its own burst and does not use up the others'. */
    size_t noisy = 0;
    for (int i = 0; i < 100; i++)
        noisy += ops_ratelimit_allow(rl, "security.bad_report", "peer-noisy", 10, &held);
    assert_int_equal(noisy, OPS_RATELIMIT_BURST);
    assert_true(ops_ratelimit_allow(rl, "security.bad_report", "peer-quiet", 10, &held));
    /* Many peers together are held to the event's burst. */
    size_t written = 0;
    char peer[32];
    for (int i = 0; i < 200; i++) {
        snprintf(peer, sizeof peer, "peer-%d", i);
        written += ops_ratelimit_allow(rl, "security.bad_report", peer, 10, &held);
    }
    assert_int_equal(written + OPS_RATELIMIT_BURST + 1, OPS_RATELIMIT_EVENT_BURST);
    /* Nothing held back is lost: the summaries add up to every occurrence not written. */
    (void)ops_ratelimit_flush(rl, 10 + OPS_RATELIMIT_WINDOW_MS);
    assert_int_equal(sums.total, 100 + 1 + 200 - OPS_RATELIMIT_EVENT_BURST);
    assert_int_equal(sums.aggregate_total, 200 - written);
    /* Another event is not affected by this one's storm. */
    assert_true(ops_ratelimit_allow(rl, "rpc.zap_denied", "peer-noisy", 10, &held));
    ops_ratelimit_destroy(&rl);
}

static void test_eviction_keeps_counts(void **state)
{
    (void)state;
    sums_t sums = {0};
    ops_ratelimit_t *rl = ops_ratelimit_new(on_summary, &sums);
    assert_non_null(rl);
    uint64_t held = 0;
    char peer[32];
    uint64_t occurrences = 0;
    uint64_t written = 0;
    /* Four times as many keys as slots, each over its burst. */
    for (int k = 0; k < 4 * OPS_RATELIMIT_SLOTS; k++) {
        snprintf(peer, sizeof peer, "%d", k);
        for (int i = 0; i < OPS_RATELIMIT_BURST + 3; i++) {
            occurrences++;
            written += ops_ratelimit_allow(rl, "rpc.zap_denied", peer, (uint64_t)k, &held);
            written += held; /* a count carried on a line is accounted for too */
        }
    }
    (void)ops_ratelimit_flush(rl, 10ull * OPS_RATELIMIT_WINDOW_MS);
    assert_int_equal(written + sums.total, occurrences);
    ops_ratelimit_destroy(&rl);
}

/* A real storm through ops_log_limited(): 100,000 identical warnings are a handful of lines. */
static void test_storm_through_log(void **state)
{
    (void)state;
    int fd[2];
    assert_int_equal(pipe(fd), 0);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_true(dup2(fd[1], STDERR_FILENO) >= 0);
    ops_log_init("test", "0", OPS_LOG_INFO);
    for (int i = 0; i < TEST_STORM; i++)
        ops_log_limited(OPS_LOG_WARN, "test.storm", NULL, "error", "No space left on device", NULL);
    ops_log_limited(OPS_LOG_WARN, "test.storm", "peer-a", NULL);
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    close(fd[1]);
    char *text = calloc(1, TEST_CAPTURE_MAX);
    assert_non_null(text);
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd[0], text + len, TEST_CAPTURE_MAX - 1 - len);
        assert_true(n >= 0);
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd[0]);
    size_t lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    /* The burst of the peer-less key, and the one line of peer-a (its own key). */
    assert_int_equal(lines, OPS_RATELIMIT_BURST + 1);
    assert_non_null(strstr(text, "\"event\":\"test.storm\",\"error\":\"No space left on device\""));
    assert_non_null(strstr(text, "\"event\":\"test.storm\",\"peer\":\"peer-a\""));
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_count),       cmocka_unit_test(test_quiet_key_summarized),
        cmocka_unit_test(test_per_peer_and_per_event), cmocka_unit_test(test_eviction_keeps_counts),
        cmocka_unit_test(test_storm_through_log),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
