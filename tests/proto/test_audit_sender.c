/* test_audit_sender.c - proto_audit, the security-event sender every service holds: what it
 * queues for the audit service, with no audit service running (nothing is sent, so nothing
 * needs a port). Regression: an event whose payload is empty may come as NULL (a report
 * frame with no body, found by qc-fuzz-live); queuing it once called memcpy(dst, NULL, 0),
 * which UBSan (-fsanitize=undefined, halt_on_error) stopped the gateway on. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <zmq.h>

#include "ops_log.h"
#include "ops_metrics.h"
#include "proto_audit.h"
#include "proto_curve.h"
#include "qc_error.h"
#include "qctest_fs.h"

typedef struct fixture {
    char dir[QCTEST_PATH_MAX];
    void *ctx;
    proto_curve_keypair_t mine, server;
    proto_audit_t *ga;
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    if (f == NULL || qctest_dir_new("qc-test-audit-sender", f->dir) != 0)
        return -1;
    char path[QCTEST_PATH_MAX];
    qctest_path(f->dir, "mine.key", path);
    if (proto_curve_keypair_create(path, &f->mine) != 0)
        return -1;
    qctest_path(f->dir, "server.key", path);
    if (proto_curve_keypair_create(path, &f->server) != 0)
        return -1;
    f->ctx = zmq_ctx_new();
    /* An endpoint nobody listens on: events queue and wait, which is what is checked. */
    if (f->ctx == NULL || proto_audit_new(f->ctx, "test-0", "tcp://127.0.0.1:9",
                                          f->server.public_z85, &f->mine, &f->ga) != 0)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    proto_audit_destroy(&f->ga);
    zmq_ctx_term(f->ctx);
    proto_curve_keypair_wipe(&f->mine);
    proto_curve_keypair_wipe(&f->server);
    qctest_dir_remove(f->dir);
    free(f);
    return 0;
}

static int64_t queued(void)
{
    return ops_gauge_value(ops_gauge("qc_proto_audit_queued", ""));
}

static void test_empty_payload_queued(void **state)
{
    fixture_t *f = *state;
    int64_t before = queued();
    static const uint8_t txn[16] = {1, 2, 3};
    proto_audit_event(f->ga, "security.bad_report", txn, NULL, 0);
    assert_int_equal(queued(), before + 1);
    static const uint8_t some[] = {0x0a, 0x00};
    proto_audit_event(f->ga, "security.bad_request", NULL, some, sizeof some);
    assert_int_equal(queued(), before + 2);
    /* Processing with no audit service keeps them: at least once, never dropped silently. */
    proto_audit_process(f->ga);
    assert_int_equal(queued(), before + 2);
}

/* Two witnesses: every event is queued for each, so one that is down loses nothing the other
 * gets, and a list that names no witness between two ';' or too many is refused. */
static void test_every_witness_gets_every_event(void **state)
{
    fixture_t *f = *state;
    proto_audit_t *two = NULL;
    assert_int_equal(proto_audit_new(f->ctx, "test-1", "tcp://127.0.0.1:9;tcp://127.0.0.1:10",
                                     f->server.public_z85, &f->mine, &two),
                     0);
    /* The gauge is the last sender's count (one sender a process): one event, two queues. */
    static const uint8_t some[] = {0x0a, 0x00};
    proto_audit_event(two, "security.bad_request", NULL, some, sizeof some);
    assert_int_equal(queued(), 2);
    proto_audit_process(two);
    assert_int_equal(queued(), 2);
    zmq_pollitem_t items[PROTO_AUDIT_POLLITEMS_MAX];
    assert_true(proto_audit_pollitems(two, items, PROTO_AUDIT_POLLITEMS_MAX) >= 2);
    proto_audit_destroy(&two);
    assert_null(two);
    assert_int_equal(proto_audit_new(f->ctx, "test-2", "tcp://127.0.0.1:9;;tcp://127.0.0.1:10",
                                     f->server.public_z85, &f->mine, &two),
                     QC_ECONFIG);
    assert_int_equal(proto_audit_new(f->ctx, "test-2",
                                     "tcp://127.0.0.1:1;tcp://127.0.0.1:2;tcp://127.0.0.1:3;"
                                     "tcp://127.0.0.1:4;tcp://127.0.0.1:5;tcp://127.0.0.1:6;"
                                     "tcp://127.0.0.1:7;tcp://127.0.0.1:8;tcp://127.0.0.1:9",
                                     f->server.public_z85, &f->mine, &two),
                     QC_ECONFIG);
    assert_null(two);
}

/* Audit does not answer and the queue fills: the sender says so before it sheds (room 0,
 * health degraded), and what it sheds is counted, not lost in silence (issue 21: 14,954
 * events were dropped with nothing but a log line each). */
static void test_full_queue_sheds_loudly(void **state)
{
    fixture_t *f = *state;
    char why[256] = "";
    assert_true(proto_audit_healthy(f->ga, why, sizeof why));
    assert_int_equal(proto_audit_room(f->ga), PROTO_AUDIT_QUEUE_MAX);
    static const uint8_t body[] = {0x0a, 0x01, 0x41};
    for (int i = 0; i < PROTO_AUDIT_QUEUE_MAX; i++)
        proto_audit_event(f->ga, "sign.load_allow", NULL, body, sizeof body);
    /* Full, nothing shed yet: a signer refuses new work here (back-pressure). */
    assert_int_equal(proto_audit_room(f->ga), 0);
    assert_false(proto_audit_healthy(f->ga, why, sizeof why));
    assert_non_null(strstr(why, "queue is full"));
    ops_counter_t *dropped = ops_counter("qc_audit_events_dropped_total", "");
    uint64_t before = ops_counter_value(dropped);
    for (int i = 0; i < 10; i++)
        proto_audit_event(f->ga, "security.bad_report", NULL, body, sizeof body);
    assert_int_equal(ops_counter_value(dropped), before + 10);
    assert_false(proto_audit_healthy(f->ga, why, sizeof why));
}

int main(void)
{
    ops_log_init("test_audit_sender", "0", OPS_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_empty_payload_queued, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_witness_gets_every_event, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_queue_sheds_loudly, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
