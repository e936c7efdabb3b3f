/* test_ops_metrics.c - registry values, Prometheus text, and /metrics + /healthz over HTTP. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ops_metrics.h"
#include "qc_error.h"
#include "qctest_port.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

/* The test's three ports (qc_test_ports in tests/ops/CMakeLists.txt). */
static qctest_ports_t ports;
#define TEST_PORT_HTTP qctest_port(&ports, 0)
#define TEST_PORT_HEALTH qctest_port(&ports, 1)
#define TEST_PORT_BUSY qctest_port(&ports, 2)
#define TEST_RESPONSE_MAX (256 * 1024)
#define TEST_IO_TIMEOUT_S 5
#define TEST_THREADS 4
#define TEST_ADDS_PER_THREAD 50000

static size_t count_occurrences(const char *text, const char *needle)
{
    size_t n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* Asserts text contains the whole line "line\n". */
static void assert_has_line(const char *text, const char *line)
{
    size_t len = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++) {
        if ((p == text || p[-1] == '\n') && p[len] == '\n')
            return;
    }
    fail_msg("missing line: %s", line);
}

static void test_counter_and_gauge(void **state)
{
    (void)state;
    ops_counter_t *c = ops_counter("test_requests_total", "Requests handled.");
    assert_non_null(c);
    assert_ptr_equal(ops_counter("test_requests_total", "ignored second help"), c);
    assert_int_equal(ops_counter_value(c), 0);
    ops_counter_add(c, 1);
    ops_counter_add(c, 41);
    assert_int_equal(ops_counter_value(c), 42);

    ops_gauge_t *g = ops_gauge("test_queue_depth", "Items waiting.");
    ops_gauge_set(g, 10);
    ops_gauge_add(g, -15);
    assert_int_equal(ops_gauge_value(g), -5);

    char *text = ops_metrics_render();
    assert_non_null(text);
    assert_has_line(text, "# HELP test_requests_total Requests handled.");
    assert_has_line(text, "# TYPE test_requests_total counter");
    assert_has_line(text, "test_requests_total 42");
    assert_has_line(text, "# TYPE test_queue_depth gauge");
    assert_has_line(text, "test_queue_depth -5");
    free(text);
}

static void test_labels_share_one_family(void **state)
{
    (void)state;
    ops_counter_t *a = ops_counter("test_rpc_total{method=\"reserve\"}", "RPCs by method.");
    ops_counter_t *b = ops_counter("test_rpc_total{method=\"settle\",code=\"0\"}", "x");
    assert_ptr_not_equal(a, b);
    ops_counter_add(a, 3);
    ops_counter_add(b, 4);
    /* Another family registered in between must not split this one's series. */
    ops_gauge_set(ops_gauge("test_between", "Registered between two series."), 1);
    ops_counter_t *c = ops_counter("test_rpc_total{method=\"sync\"}", "x");
    ops_counter_add(c, 5);

    char *text = ops_metrics_render();
    assert_non_null(text);
    assert_int_equal(count_occurrences(text, "# HELP test_rpc_total "), 1);
    assert_int_equal(count_occurrences(text, "# TYPE test_rpc_total counter\n"), 1);
    const char *family = strstr(text, "# TYPE test_rpc_total counter\n");
    const char *want = "# TYPE test_rpc_total counter\n"
                       "test_rpc_total{method=\"reserve\"} 3\n"
                       "test_rpc_total{method=\"settle\",code=\"0\"} 4\n"
                       "test_rpc_total{method=\"sync\"} 5\n";
    assert_non_null(family);
    assert_memory_equal(family, want, strlen(want));
    free(text);
}

static void test_histogram(void **state)
{
    (void)state;
    ops_histogram_t *h = ops_histogram("test_latency_seconds{method=\"reserve\"}", "Latency.");
    ops_histogram_observe(h, 0.00005); /* <= 0.0001 */
    ops_histogram_observe(h, 0.0001);  /* exactly on a bound: counts in that bucket */
    ops_histogram_observe(h, 0.003);   /* <= 0.005 */
    ops_histogram_observe(h, 2.0);     /* <= 2.5 */
    ops_histogram_observe(h, 60.0);    /* +Inf only */
    ops_histogram_observe(h, -1.0);    /* a clock step: counted as 0 */
    ops_histogram_t *plain = ops_histogram("test_plain_seconds", "No labels.");
    ops_histogram_observe(plain, 0.5);

    char *text = ops_metrics_render();
    assert_non_null(text);
    assert_int_equal(count_occurrences(text, "# TYPE test_latency_seconds histogram\n"), 1);
    assert_has_line(text, "test_latency_seconds_bucket{method=\"reserve\",le=\"0.0001\"} 3");
    assert_has_line(text, "test_latency_seconds_bucket{method=\"reserve\",le=\"0.0025\"} 3");
    assert_has_line(text, "test_latency_seconds_bucket{method=\"reserve\",le=\"0.005\"} 4");
    assert_has_line(text, "test_latency_seconds_bucket{method=\"reserve\",le=\"1\"} 4");
    assert_has_line(text, "test_latency_seconds_bucket{method=\"reserve\",le=\"2.5\"} 5");
    assert_has_line(text, "test_latency_seconds_bucket{method=\"reserve\",le=\"10\"} 5");
    assert_has_line(text, "test_latency_seconds_bucket{method=\"reserve\",le=\"+Inf\"} 6");
    assert_has_line(text, "test_latency_seconds_sum{method=\"reserve\"} 62.003150000");
    assert_has_line(text, "test_latency_seconds_count{method=\"reserve\"} 6");
    assert_has_line(text, "test_plain_seconds_bucket{le=\"0.25\"} 0");
    assert_has_line(text, "test_plain_seconds_bucket{le=\"0.5\"} 1");
    assert_has_line(text, "test_plain_seconds_sum 0.500000000");
    assert_has_line(text, "test_plain_seconds_count 1");
    assert_int_equal(count_occurrences(text, "test_plain_seconds_bucket{"), 17);
    free(text);
}

static void test_help_is_escaped(void **state)
{
    (void)state;
    ops_counter("test_escaped_total", "Back\\slash and\nnewline.");
    char *text = ops_metrics_render();
    assert_non_null(text);
    assert_has_line(text, "# HELP test_escaped_total Back\\\\slash and\\nnewline.");
    free(text);
}

static void *add_many(void *arg)
{
    ops_counter_t *c = ops_counter("test_concurrent_total", "Added from many threads.");
    ops_gauge_t *g = ops_gauge("test_concurrent_gauge", "Moved from many threads.");
    ops_histogram_t *h = ops_histogram("test_concurrent_seconds", "Observed from many threads.");
    (void)arg;
    for (int i = 0; i < TEST_ADDS_PER_THREAD; i++) {
        ops_counter_add(c, 1);
        ops_gauge_add(g, 2);
        ops_gauge_add(g, -1);
        ops_histogram_observe(h, 0.001);
    }
    return NULL;
}

static void test_concurrent_updates(void **state)
{
    (void)state;
    pthread_t threads[TEST_THREADS];
    for (int i = 0; i < TEST_THREADS; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, add_many, NULL), 0);
    for (int i = 0; i < TEST_THREADS; i++)
        assert_int_equal(pthread_join(threads[i], NULL), 0);
    const uint64_t total = (uint64_t)TEST_THREADS * TEST_ADDS_PER_THREAD;
    assert_int_equal(ops_counter_value(ops_counter("test_concurrent_total", "")), total);
    assert_int_equal(ops_gauge_value(ops_gauge("test_concurrent_gauge", "")), (int64_t)total);
    char *text = ops_metrics_render();
    assert_non_null(text);
    char line[128];
    snprintf(line, sizeof line, "test_concurrent_seconds_count %llu", (unsigned long long)total);
    assert_has_line(text, line);
    free(text);
}

/* A tiny HTTP/1.0 client: sends "GET path", reads until the server closes, returns the
 * status code and copies the body (NUL-terminated) into body. */
static int http_get(uint16_t port, const char *method, const char *path, char *body,
                    size_t body_cap)
{
    static char response[TEST_RESPONSE_MAX];
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct timeval tv = {.tv_sec = TEST_IO_TIMEOUT_S, .tv_usec = 0};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv), 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    char request[256];
    int n = snprintf(request, sizeof request, "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", method,
                     path);
    assert_int_equal(send(fd, request, (size_t)n, MSG_NOSIGNAL), n);
    size_t len = 0;
    for (;;) {
        ssize_t got = recv(fd, response + len, sizeof response - 1 - len, 0);
        assert_true(got >= 0); /* a timeout fails here instead of hanging */
        if (got == 0)
            break;
        len += (size_t)got;
        assert_true(len < sizeof response - 1);
    }
    close(fd);
    response[len] = '\0';
    int status = 0;
    assert_int_equal(sscanf(response, "HTTP/1.%*d %d", &status), 1);
    const char *start = strstr(response, "\r\n\r\n");
    assert_non_null(start);
    snprintf(body, body_cap, "%s", start + 4);
    return status;
}

static void test_http_metrics(void **state)
{
    (void)state;
    static char body[TEST_RESPONSE_MAX];
    ops_counter_add(ops_counter("test_http_scraped_total{path=\"/metrics\"}", "Scrapes."), 7);
    ops_http_t *http = NULL;
    assert_int_equal(ops_http_start(TEST_PORT_HTTP, NULL, NULL, &http), 0);
    assert_non_null(http);

    assert_int_equal(http_get(TEST_PORT_HTTP, "GET", "/metrics", body, sizeof body), 200);
    assert_has_line(body, "# TYPE test_http_scraped_total counter");
    assert_has_line(body, "test_http_scraped_total{path=\"/metrics\"} 7");
    /* The body served is exactly what render produces. */
    char *text = ops_metrics_render();
    assert_non_null(text);
    assert_string_equal(body, text);
    free(text);

    assert_int_equal(http_get(TEST_PORT_HTTP, "GET", "/healthz", body, sizeof body), 200);
    assert_string_equal(body, "ok\n");
    assert_int_equal(http_get(TEST_PORT_HTTP, "GET", "/nope", body, sizeof body), 404);
    assert_int_equal(http_get(TEST_PORT_HTTP, "GET", "/metricsx", body, sizeof body), 404);
    assert_int_equal(http_get(TEST_PORT_HTTP, "POST", "/metrics", body, sizeof body), 405);

    ops_http_stop(&http);
    assert_null(http);
    ops_http_stop(&http); /* idempotent */
}

typedef struct health_state {
    atomic_bool healthy;
    atomic_int calls;
} health_state_t;

static bool health_check(void *arg, char *why, size_t why_cap)
{
    health_state_t *h = arg;
    atomic_fetch_add(&h->calls, 1);
    if (atomic_load(&h->healthy))
        return true;
    snprintf(why, why_cap, "ledger shard 2 unreachable");
    return false;
}

static void test_http_health(void **state)
{
    (void)state;
    char body[1024];
    health_state_t health;
    atomic_init(&health.healthy, true);
    atomic_init(&health.calls, 0);
    ops_http_t *http = NULL;
    assert_int_equal(ops_http_start(TEST_PORT_HEALTH, health_check, &health, &http), 0);

    assert_int_equal(http_get(TEST_PORT_HEALTH, "GET", "/healthz", body, sizeof body), 200);
    assert_string_equal(body, "ok\n");
    atomic_store(&health.healthy, false);
    assert_int_equal(http_get(TEST_PORT_HEALTH, "GET", "/healthz", body, sizeof body), 503);
    assert_string_equal(body, "ledger shard 2 unreachable\n");
    atomic_store(&health.healthy, true);
    assert_int_equal(http_get(TEST_PORT_HEALTH, "GET", "/healthz", body, sizeof body), 200);
    assert_int_equal(atomic_load(&health.calls), 3);
    ops_http_stop(&http);
}

static void test_http_port_errors(void **state)
{
    (void)state;
    ops_http_t *http = (ops_http_t *)&http; /* must be overwritten */
    assert_int_equal(ops_http_start(0, NULL, NULL, &http), 0);
    assert_null(http);

    ops_http_t *first = NULL;
    ops_http_t *second = NULL;
    assert_int_equal(ops_http_start(TEST_PORT_BUSY, NULL, NULL, &first), 0);
    assert_int_equal(ops_http_start(TEST_PORT_BUSY, NULL, NULL, &second), QC_EIO);
    assert_null(second);
    ops_http_stop(&first);
}

int main(void)
{
    ports = qctest_ports(17000, 3);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter_and_gauge),  cmocka_unit_test(test_labels_share_one_family),
        cmocka_unit_test(test_histogram),          cmocka_unit_test(test_help_is_escaped),
        cmocka_unit_test(test_concurrent_updates), cmocka_unit_test(test_http_metrics),
        cmocka_unit_test(test_http_health),        cmocka_unit_test(test_http_port_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
