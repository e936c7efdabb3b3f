/* test_ops_service.c - the start-up every service shares: its exit statuses, its messages naming
 * the key and the bound, the keys it adds, and /healthz through starting, ready and stopping. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ops_service.h"
#include "qc_error.h"
#include "qctest_http.h"
#include "qctest_port.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* The test's ports (qc_test_ports in tests/ops/CMakeLists.txt). */
static qctest_ports_t ports;
#define TEST_PORT_SERVICE qctest_port(&ports, 0)
#define TEST_PORT_TAKEN qctest_port(&ports, 1)
#define TEST_PORT_TEXT_MAX 16
#define TEST_RESPONSE_MAX 4096
#define TEST_ARGS_MAX 16
#define TEST_STDERR_MAX 1024

static const ops_config_key_t test_keys[] = {
    {"listen", OPS_CONFIG_STRING, "tcp://127.0.0.1:7300", "endpoint",
     .check = ops_config_check_endpoint},
    {"shard", OPS_CONFIG_INT, "0", "shard number", .min = 0, .max = 255},
    {"shard_count", OPS_CONFIG_INT, "1", "shards", .min = 1, .max = 256},
};

static bool test_check(const ops_config_t *cfg, char *err, size_t errcap)
{
    if (ops_config_int(cfg, "shard") < ops_config_int(cfg, "shard_count"))
        return true;
    snprintf(err, errcap, "shard: not below shard_count");
    return false;
}

static const ops_service_spec_t test_spec = {
    .program = "qc-test",
    .service = "test",
    .usage = "[options]",
    .keys = test_keys,
    .key_count = sizeof test_keys / sizeof test_keys[0],
    .check = test_check,
};

/* Runs ops_service_start on a NULL-terminated argument list (argv[0] added) with stdout and
 * stderr sent to a file; what went to stderr lands in err_text. */
static int start(ops_service_t **out, char *err_text, size_t err_cap, ...)
{
    char *argv[TEST_ARGS_MAX] = {"qc-test"};
    int argc = 1;
    va_list ap;
    va_start(ap, err_cap);
    char *arg;
    while ((arg = va_arg(ap, char *)) != NULL) {
        assert_true(argc < TEST_ARGS_MAX - 1);
        argv[argc++] = arg;
    }
    va_end(ap);
    FILE *f = tmpfile();
    assert_non_null(f);
    fflush(stdout);
    fflush(stderr);
    int saved_out = dup(STDOUT_FILENO), saved_err = dup(STDERR_FILENO);
    assert_true(saved_out >= 0 && saved_err >= 0);
    assert_true(dup2(fileno(f), STDOUT_FILENO) >= 0);
    assert_true(dup2(fileno(f), STDERR_FILENO) >= 0);
    int rc = ops_service_start(&test_spec, argc, argv, out);
    fflush(stdout);
    fflush(stderr);
    assert_true(dup2(saved_out, STDOUT_FILENO) >= 0);
    assert_true(dup2(saved_err, STDERR_FILENO) >= 0);
    close(saved_out);
    close(saved_err);
    rewind(f);
    size_t n = fread(err_text, 1, err_cap - 1, f);
    err_text[n] = '\0';
    fclose(f);
    return rc;
}

/* Expects start-up to refuse argv with exit status 2 and a message holding want. */
static void expect_usage_error(const char *want, char *a, char *b)
{
    ops_service_t *svc = NULL;
    char text[TEST_STDERR_MAX];
    int rc = start(&svc, text, sizeof text, a, b, NULL);
    assert_int_equal(rc, QC_ECONFIG);
    assert_null(svc);
    assert_int_equal(ops_service_start_status(rc), OPS_SERVICE_EXIT_USAGE);
    if (strstr(text, want) == NULL)
        print_error("stderr '%s' lacks '%s'\n", text, want);
    assert_non_null(strstr(text, want));
}

/* GET path from port; the body into body (capacity body_cap). Returns the HTTP status. */
static int http_get(int port, const char *path, char *body, size_t body_cap)
{
    char resp[TEST_RESPONSE_MAX];
    int status = qctest_http(port, "GET", path, resp, sizeof resp);
    assert_true(status > 0);
    snprintf(body, body_cap, "%s", qctest_http_body(resp));
    return status;
}

static void test_help_exits_0(void **state)
{
    (void)state;
    ops_service_t *svc = NULL;
    char text[TEST_STDERR_MAX * 4];
    int rc = start(&svc, text, sizeof text, "--help", NULL);
    assert_int_equal(rc, OPS_SERVICE_HELP);
    assert_null(svc);
    assert_int_equal(ops_service_start_status(rc), OPS_SERVICE_EXIT_OK);
    /* The service's keys and the three every service has, with their bounds. */
    assert_non_null(strstr(text, "Usage: qc-test [options]"));
    assert_non_null(strstr(text, "--shard-count <int>"));
    assert_non_null(strstr(text, "--http-port <int>"));
    assert_non_null(strstr(text, "(default: 0; 0..65535)"));
    assert_non_null(strstr(text, "--instance <string>"));
    assert_non_null(strstr(text, "--log-level <string>"));
}

static void test_bad_config_exits_2_naming_the_key(void **state)
{
    (void)state;
    expect_usage_error("qc-test: unknown flag --bogus", "--bogus", "1");
    expect_usage_error("qc-test: http_port: 70000 is out of range 0..65535", "--http-port",
                       "70000");
    expect_usage_error("qc-test: shard_count: 0 is out of range 1..256", "--shard-count", "0");
    expect_usage_error("qc-test: log_level: loud: not a level (use debug, info, warn or error)",
                       "--log-level", "loud");
    expect_usage_error("qc-test: listen: tcp://127.0.0.1:99999: port 99999 is out of range",
                       "--listen", "tcp://127.0.0.1:99999");
    expect_usage_error("qc-test: unexpected argument extra", "extra", NULL);
    /* The check across keys runs once every key passed its own bounds. */
    expect_usage_error("qc-test: shard: not below shard_count", "--shard", "1");
}

typedef struct test_health {
    atomic_bool healthy;
    atomic_int calls;
} test_health_t;

static bool test_health_check(void *arg, char *why, size_t why_cap)
{
    test_health_t *h = arg;
    atomic_fetch_add(&h->calls, 1);
    if (atomic_load(&h->healthy))
        return true;
    snprintf(why, why_cap, "token unavailable");
    return false;
}

static void test_healthz_follows_the_service(void **state)
{
    (void)state;
    ops_service_t *svc = NULL;
    char text[TEST_STDERR_MAX];
    char port[TEST_PORT_TEXT_MAX];
    snprintf(port, sizeof port, "%d", TEST_PORT_SERVICE);
    assert_int_equal(start(&svc, text, sizeof text, "--http-port", port, "--instance", "7", NULL),
                     0);
    assert_non_null(svc);
    const ops_config_t *cfg = ops_service_config(svc);
    assert_int_equal(ops_config_int(cfg, "http_port"), TEST_PORT_SERVICE);
    assert_string_equal(ops_config_str(cfg, "instance"), "7");
    assert_string_equal(ops_config_str(cfg, "listen"), "tcp://127.0.0.1:7300");

    char body[TEST_RESPONSE_MAX];
    /* Up before the service it reports on: not healthy yet. */
    assert_int_equal(http_get(TEST_PORT_SERVICE, "/healthz", body, sizeof body), 503);
    assert_string_equal(body, "starting\n");
    test_health_t h;
    atomic_init(&h.healthy, true);
    atomic_init(&h.calls, 0);
    ops_service_ready(svc, test_health_check, &h);
    assert_int_equal(http_get(TEST_PORT_SERVICE, "/healthz", body, sizeof body), 200);
    atomic_store(&h.healthy, false);
    assert_int_equal(http_get(TEST_PORT_SERVICE, "/healthz", body, sizeof body), 503);
    assert_string_equal(body, "token unavailable\n");
    assert_int_equal(http_get(TEST_PORT_SERVICE, "/metrics", body, sizeof body), 200);
    /* Stopping: the service's check is no longer called, whatever it would say. */
    ops_service_stopping(svc);
    int calls = atomic_load(&h.calls);
    atomic_store(&h.healthy, true);
    assert_int_equal(http_get(TEST_PORT_SERVICE, "/healthz", body, sizeof body), 503);
    assert_string_equal(body, "stopping\n");
    assert_int_equal(atomic_load(&h.calls), calls);
    ops_service_destroy(&svc);
    assert_null(svc);
    ops_service_destroy(&svc); /* accepts NULL */
}

static void test_ready_without_check(void **state)
{
    (void)state;
    ops_service_t *svc = NULL;
    char text[TEST_STDERR_MAX];
    char port[TEST_PORT_TEXT_MAX];
    snprintf(port, sizeof port, "%d", TEST_PORT_SERVICE);
    assert_int_equal(start(&svc, text, sizeof text, "--http-port", port, NULL), 0);
    ops_service_ready(svc, NULL, NULL);
    char body[TEST_RESPONSE_MAX];
    assert_int_equal(http_get(TEST_PORT_SERVICE, "/healthz", body, sizeof body), 200);
    ops_service_stopping(svc);
    ops_service_destroy(&svc);
}

static void test_port_taken_exits_1(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(TEST_PORT_TAKEN)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    assert_int_equal(listen(fd, 1), 0);
    ops_service_t *svc = NULL;
    char text[TEST_STDERR_MAX];
    char port[TEST_PORT_TEXT_MAX];
    snprintf(port, sizeof port, "%d", TEST_PORT_TAKEN);
    int rc = start(&svc, text, sizeof text, "--http-port", port, NULL);
    close(fd);
    assert_int_equal(rc, QC_EIO);
    assert_null(svc);
    assert_int_equal(ops_service_start_status(rc), OPS_SERVICE_EXIT_FAILED);
    /* Logged as the service's event, naming the port. */
    assert_non_null(strstr(text, "\"event\":\"test.http_failed\""));
    char field[TEST_PORT_TEXT_MAX * 2];
    snprintf(field, sizeof field, "\"http_port\":\"%d\"", TEST_PORT_TAKEN);
    assert_non_null(strstr(text, field));
}

int main(void)
{
    ports = qctest_ports(17010, 2);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help_exits_0),
        cmocka_unit_test(test_bad_config_exits_2_naming_the_key),
        cmocka_unit_test(test_healthz_follows_the_service),
        cmocka_unit_test(test_ready_without_check),
        cmocka_unit_test(test_port_taken_exits_1),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
