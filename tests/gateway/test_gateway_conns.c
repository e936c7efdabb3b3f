/* test_gateway_conns.c - the gateway's bound on device connections (gateway_conns.h) on a real
 * ROUTER socket over ipc:// (no TCP port): connections within max_connections are served, one
 * beyond it is answered busy and then closed by the gateway, a freed place is taken again,
 * and a descriptor the monitor does not know is served. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <zmq.h>

#include "gateway_conns.h"
#include "ops_time.h"
#include "qc_error.h"
#include "qctest_fs.h"

#define MAX_CONNECTIONS 2
#define DEALERS 3
#define WAIT_MS 5000 /* longest wait for one thing to happen */

typedef struct fixture {
    char dir[QCTEST_PATH_MAX];
    char endpoint[QCTEST_PATH_MAX + 32];
    void *ctx;
    void *router;
    gateway_conns_t *gc;
} fixture_t;

static uint64_t now_ms(void)
{
    return ops_time_mono_ns() / 1000000u;
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_int_equal(qctest_dir_new("gwconns", f->dir), 0);
    snprintf(f->endpoint, sizeof f->endpoint, "ipc://%s/device.sock", f->dir);
    f->ctx = zmq_ctx_new();
    assert_non_null(f->ctx);
    f->router = zmq_socket(f->ctx, ZMQ_ROUTER);
    assert_non_null(f->router);
    int linger = 0;
    assert_int_equal(zmq_setsockopt(f->router, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(zmq_bind(f->router, f->endpoint), 0);
    assert_int_equal(gateway_conns_new(f->ctx, f->router, MAX_CONNECTIONS, &f->gc), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    gateway_conns_destroy(&f->gc);
    assert_null(f->gc);
    zmq_close(f->router);
    zmq_ctx_term(f->ctx);
    qctest_dir_remove(f->dir);
    free(f);
    return 0;
}

/* A DEALER that does not reconnect by itself, so a close by the gateway stays visible. */
static void *dealer_new(fixture_t *f)
{
    void *d = zmq_socket(f->ctx, ZMQ_DEALER);
    assert_non_null(d);
    int linger = 0, no_reconnect = -1;
    assert_int_equal(zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(zmq_setsockopt(d, ZMQ_RECONNECT_IVL, &no_reconnect, sizeof no_reconnect), 0);
    assert_int_equal(zmq_connect(d, f->endpoint), 0);
    return d;
}

/* Processes the monitor until gateway_conns_open() is want; fails after WAIT_MS. */
static void wait_open(fixture_t *f, int64_t want)
{
    uint64_t end = now_ms() + WAIT_MS;
    while (gateway_conns_open(f->gc) != want && now_ms() < end) {
        zmq_pollitem_t item = {gateway_conns_socket(f->gc), 0, ZMQ_POLLIN, 0};
        QC_IGNORE(zmq_poll(&item, 1, 20));
        gateway_conns_process(f->gc, now_ms());
    }
    assert_int_equal(gateway_conns_open(f->gc), want);
}

/* Sends one frame from d and returns the gateway's verdict on it, the monitor being processed
 * first as the gateway's loop does. */
static gateway_conns_verdict_t call(fixture_t *f, void *d)
{
    assert_int_equal(zmq_send(d, "x", 1, 0), 1);
    uint64_t end = now_ms() + WAIT_MS;
    while (now_ms() < end) {
        zmq_pollitem_t item = {f->router, 0, ZMQ_POLLIN, 0};
        QC_IGNORE(zmq_poll(&item, 1, 20));
        gateway_conns_process(f->gc, now_ms());
        zmq_msg_t rid, body;
        zmq_msg_init(&rid);
        if (zmq_msg_recv(&rid, f->router, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&rid);
            continue;
        }
        zmq_msg_init(&body);
        assert_int_equal(zmq_msg_recv(&body, f->router, 0), 1);
        int fd = zmq_msg_get(&body, ZMQ_SRCFD);
        assert_true(fd >= 0);
        zmq_msg_close(&rid);
        zmq_msg_close(&body);
        return gateway_conns_admit(f->gc, fd, now_ms());
    }
    fail_msg("the router received nothing");
    return GATEWAY_CONNS_SERVE;
}

static void test_over_the_bound_is_busy_then_closed(void **state)
{
    fixture_t *f = *state;
    void *d[DEALERS];
    for (int i = 0; i < DEALERS; i++) {
        d[i] = dealer_new(f);
        wait_open(f, i + 1); /* one at a time: the third is the one over */
    }
    assert_int_equal(gateway_conns_over(f->gc), 1);
    assert_int_equal(call(f, d[0]), GATEWAY_CONNS_SERVE);
    assert_int_equal(call(f, d[1]), GATEWAY_CONNS_SERVE);
    assert_int_equal(call(f, d[2]), GATEWAY_CONNS_BUSY);
    /* The gateway closes the one over the bound once its answer had time to go out. */
    wait_open(f, MAX_CONNECTIONS);
    assert_int_equal(gateway_conns_over(f->gc), 0);
    /* A place freed is taken by the next connection. */
    zmq_close(d[0]);
    wait_open(f, MAX_CONNECTIONS - 1);
    void *late = dealer_new(f);
    wait_open(f, MAX_CONNECTIONS);
    assert_int_equal(gateway_conns_over(f->gc), 0);
    assert_int_equal(call(f, late), GATEWAY_CONNS_SERVE);
    zmq_close(late);
    zmq_close(d[1]);
    zmq_close(d[2]);
    wait_open(f, 0);
}

static void test_over_connection_moves_in_when_a_place_frees(void **state)
{
    fixture_t *f = *state;
    void *d[DEALERS];
    for (int i = 0; i < DEALERS; i++) {
        d[i] = dealer_new(f);
        wait_open(f, i + 1);
    }
    zmq_close(d[0]); /* a place frees before the one over makes its call */
    wait_open(f, DEALERS - 1);
    assert_int_equal(gateway_conns_over(f->gc), 1);
    assert_int_equal(call(f, d[2]), GATEWAY_CONNS_SERVE);
    assert_int_equal(gateway_conns_over(f->gc), 0);
    zmq_close(d[1]);
    zmq_close(d[2]);
    wait_open(f, 0);
}

static void test_unknown_descriptor_is_served(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(gateway_conns_admit(f->gc, -1, now_ms()), GATEWAY_CONNS_SERVE);
    assert_int_equal(gateway_conns_admit(f->gc, 1 << 30, now_ms()), GATEWAY_CONNS_SERVE);
}

static void test_descriptor_limit_is_checked(void **state)
{
    (void)state;
    char why[160] = "";
    assert_int_equal(gateway_conns_check_fds(1, why, sizeof why), 0);
    assert_int_equal(gateway_conns_check_fds(GATEWAY_CONNECTIONS_MAX * 1000LL, why, sizeof why),
                     QC_ECONFIG);
    assert_non_null(strstr(why, "max_connections"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_over_the_bound_is_busy_then_closed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_over_connection_moves_in_when_a_place_frees, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_unknown_descriptor_is_served, setup, teardown),
        cmocka_unit_test(test_descriptor_limit_is_checked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
