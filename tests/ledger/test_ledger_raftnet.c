/* test_ledger_raftnet.c - the replica links (ledger_raftnet.h) under real libraft instances.
 *
 * Three replicas, each a libraft uv instance (its own raft directory, its own CURVE key, a
 * counting state machine) over ledger_raftnet, share one uv loop in this process and talk
 * over loopback TCP. The tests run in order on the same group:
 *   1. a leader is elected and entries applied on it are applied on all three;
 *   2. a stranger whose key is not in the table (a raft instance bootstrapped with the
 *      group's ids and its own, campaigning for votes; then raw ZMQ frames) gets nothing in:
 *      no replica's term, leader or state moves, and the refusals are counted;
 *   3. a listed key that claims another replica's id is refused (BYE, counted), data without
 *      an accepted hello is dropped (counted), while the same key claiming its own id is
 *      welcomed, and the group still replicates afterwards;
 *   4. a follower closed and restarted on its directory catches up with entries applied
 *      while it was down, through the leader's snapshot (larger than one link chunk);
 *   5. a replica the others drop from their tables (ledger_raftnet_set_peers, as a SIGHUP
 *      re-reading replicas_file does) is cut off at once, open links included, and gets
 *      nothing; put back, it catches up.
 * Every wait has a deadline.
 *
 * By hand, a figure: test_ledger_raftnet --bench ENTRIES BYTES [tcp] applies ENTRIES entries
 * of BYTES each on the leader, at most T_BENCH_WINDOW (and T_BENCH_WINDOW_BYTES) in flight, and
 * prints how long until all three replicas applied them, over ledger_raftnet or over libraft's
 * stock TCP transport (tcp), for comparison. Run it under the ports lock. */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>
#include <raft.h>
#include <raft/uv.h>
#include <uv.h>
#include <zmq.h>

#include "ledger_raftnet.h"
#include "ops_log.h"
#include "ops_metrics.h"
#include "ops_time.h"
#include "proto_curve.h"
#include "qctest_fs.h"
#include "qctest_port.h"

#define T_PORT_FIRST 17460 /* tests/ledger/CMakeLists.txt: qc_test_ports(test_ledger_raftnet) */
#define T_PORT_COUNT 20
#define T_REPLICAS 3
#define T_NODES (T_REPLICAS + 1) /* the replicas and the stranger */
#define T_STRANGER_ID 4
#define T_ENTRIES 40          /* per batch applied on the leader */
#define T_DOWN_ENTRIES 120    /* applied while a follower is down: several snapshots */
#define T_SNAPSHOT_PAD 200000 /* bytes in every snapshot: more than 3 link chunks */
#define T_SNAPSHOT_THRESHOLD 32
#define T_SNAPSHOT_TRAILING 8
#define T_WAIT_MS 30000    /* any one condition, at most */
#define T_STRANGER_MS 4000 /* the stranger campaigns this long: several election rounds */
#define T_RAW_WAIT_MS 2000 /* a raw socket waits this long for an answer */
#define T_TICK_MS 5
#define T_BENCH_WINDOW 256                     /* entries in flight in --bench, at most */
#define T_BENCH_WINDOW_BYTES (2 * 1024 * 1024) /* and bytes in flight */
#define T_BENCH_BYTES_MAX (1 << 20)
#define T_REFUSED_METRIC "qc_rpc_refused_total{service=\"raft\"}"

typedef struct node {
    uint64_t id;
    char address[LEDGER_RAFTNET_ADDRESS_MAX];
    char dir[QCTEST_PATH_MAX];
    proto_curve_keypair_t keys;
    struct raft_uv_transport transport;
    struct raft_io io;
    struct raft_fsm fsm;
    struct raft raft;
    bool running;
    bool isolated; /* cut off by the others' tables: the conditions leave it out */
    bool closed;
    uint64_t count, sum;    /* the state machine: entries applied, and their values' sum */
    uint64_t restored_max;  /* the largest count a restored snapshot carried */
    uint64_t applied_cb_ok; /* raft_apply callbacks with status 0 */
} node_t;

static bool t_stock_tcp;                                     /* --bench ... tcp */
static unsigned t_snapshot_threshold = T_SNAPSHOT_THRESHOLD; /* --bench: rare snapshots */
static unsigned t_inflight;                                  /* raft_apply()s not answered yet */

typedef struct group {
    uv_loop_t loop;
    uv_timer_t tick;
    char dir[QCTEST_PATH_MAX];
    node_t nodes[T_NODES];
    ledger_raftnet_peer_t table[T_REPLICAS];
    uint64_t expect_count, expect_sum; /* what every replica must reach */
    uint64_t next_value;
} group_t;

/* ---- the counting state machine ---- */

static int fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf, void **result)
{
    node_t *nd = fsm->data;
    uint64_t v;
    if (buf->len < sizeof v)
        return RAFT_MALFORMED;
    memcpy(&v, buf->base, sizeof v);
    nd->count++;
    nd->sum += v;
    *result = NULL;
    return 0;
}

/* count, sum, then T_SNAPSHOT_PAD bytes of a pattern restore checks. */
static int fsm_snapshot(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    node_t *nd = fsm->data;
    struct raft_buffer *b = raft_malloc(sizeof *b);
    if (b == NULL)
        return RAFT_NOMEM;
    b->len = 16 + T_SNAPSHOT_PAD;
    b->base = raft_malloc(b->len);
    if (b->base == NULL) {
        raft_free(b);
        return RAFT_NOMEM;
    }
    uint8_t *p = b->base;
    memcpy(p, &nd->count, 8);
    memcpy(p + 8, &nd->sum, 8);
    for (size_t i = 0; i < T_SNAPSHOT_PAD; i++)
        p[16 + i] = (uint8_t)(i * 131u + 7u);
    *bufs = b;
    *n_bufs = 1;
    return 0;
}

static int fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
    node_t *nd = fsm->data;
    const uint8_t *p = buf->base;
    if (buf->len != 16 + T_SNAPSHOT_PAD)
        return RAFT_MALFORMED;
    for (size_t i = 0; i < T_SNAPSHOT_PAD; i++)
        if (p[16 + i] != (uint8_t)(i * 131u + 7u))
            return RAFT_MALFORMED;
    memcpy(&nd->count, p, 8);
    memcpy(&nd->sum, p + 8, 8);
    if (nd->count > nd->restored_max)
        nd->restored_max = nd->count;
    raft_free(buf->base);
    return 0;
}

/* ---- running the loop ---- */

static void tick_cb(uv_timer_t *t)
{
    (void)t; /* wakes uv_run(UV_RUN_ONCE) so conditions are looked at */
}

typedef bool (*cond_fn)(group_t *g, const void *arg);

/* Runs the loop until cond holds (true) or ms pass (false). */
static bool run_until(group_t *g, cond_fn cond, const void *arg, uint64_t ms)
{
    uint64_t deadline = ops_time_mono_ms() + ms;
    while (!cond(g, arg)) {
        if (ops_time_mono_ms() >= deadline)
            return false;
        uv_run(&g->loop, UV_RUN_ONCE);
    }
    return true;
}

static bool cond_never(group_t *g, const void *arg)
{
    (void)g;
    (void)arg;
    return false;
}

static void run_for(group_t *g, uint64_t ms)
{
    (void)run_until(g, cond_never, NULL, ms);
}

/* ---- nodes ---- */

static void node_closed_cb(struct raft *r)
{
    node_t *nd = r->data;
    nd->closed = true;
}

static void node_start(group_t *g, node_t *nd, const ledger_raftnet_peer_t *table, size_t n,
                       const ledger_raftnet_peer_t *voters, size_t n_voters)
{
    nd->count = nd->sum = 0;
    nd->closed = false;
    if (t_stock_tcp)
        assert_int_equal(raft_uv_tcp_init(&nd->transport, &g->loop), 0);
    else
        assert_int_equal(ledger_raftnet_init(&nd->transport, &g->loop, &nd->keys, table, n), 0);
    assert_int_equal(raft_uv_init(&nd->io, &g->loop, nd->dir, &nd->transport), 0);
    raft_uv_set_connect_retry_delay(&nd->io, 250);
    nd->fsm = (struct raft_fsm){.version = 1,
                                .data = nd,
                                .apply = fsm_apply,
                                .snapshot = fsm_snapshot,
                                .restore = fsm_restore};
    assert_int_equal(raft_init(&nd->raft, &nd->io, &nd->fsm, nd->id, nd->address), 0);
    nd->raft.data = nd;
    raft_set_snapshot_threshold(&nd->raft, t_snapshot_threshold);
    raft_set_snapshot_trailing(&nd->raft, T_SNAPSHOT_TRAILING);
    if (voters != NULL) {
        struct raft_configuration conf;
        raft_configuration_init(&conf);
        for (size_t i = 0; i < n_voters; i++)
            assert_int_equal(
                raft_configuration_add(&conf, voters[i].id, voters[i].address, RAFT_VOTER), 0);
        int rc = raft_bootstrap(&nd->raft, &conf);
        assert_true(rc == 0 || rc == RAFT_CANTBOOTSTRAP);
        raft_configuration_close(&conf);
    }
    assert_int_equal(raft_start(&nd->raft), 0);
    nd->running = true;
}

static bool cond_closed(group_t *g, const void *arg)
{
    (void)g;
    return ((const node_t *)arg)->closed;
}

static void node_stop(group_t *g, node_t *nd)
{
    if (!nd->running)
        return;
    raft_close(&nd->raft, node_closed_cb);
    assert_true(run_until(g, cond_closed, nd, T_WAIT_MS));
    raft_uv_close(&nd->io);
    if (t_stock_tcp)
        raft_uv_tcp_close(&nd->transport);
    else
        ledger_raftnet_close(&nd->transport);
    nd->running = false;
}

static void key_new(const char *dir, const char *name, proto_curve_keypair_t *out)
{
    char path[QCTEST_PATH_MAX];
    qctest_path(dir, name, path);
    assert_int_equal(proto_curve_keypair_create(path, out), 0);
}

static node_t *leader_of(group_t *g)
{
    for (int i = 0; i < T_REPLICAS; i++) {
        node_t *nd = &g->nodes[i];
        if (nd->running && !nd->isolated && raft_state(&nd->raft) == RAFT_LEADER)
            return nd;
    }
    return NULL;
}

static bool cond_leader(group_t *g, const void *arg)
{
    (void)arg;
    node_t *l = leader_of(g);
    if (l == NULL)
        return false;
    /* every running replica knows it */
    for (int i = 0; i < T_REPLICAS; i++) {
        node_t *nd = &g->nodes[i];
        raft_id id = 0;
        const char *address = NULL;
        if (!nd->running || nd->isolated)
            continue;
        raft_leader(&nd->raft, &id, &address);
        if (id != l->id)
            return false;
    }
    return true;
}

static bool cond_caught_up(group_t *g, const void *arg)
{
    (void)arg;
    for (int i = 0; i < T_REPLICAS; i++) {
        node_t *nd = &g->nodes[i];
        if (nd->running && !nd->isolated &&
            (nd->count != g->expect_count || nd->sum != g->expect_sum))
            return false;
    }
    return true;
}

typedef struct applying {
    struct raft_apply req;
    node_t *leader;
} applying_t;

static void applied_cb(struct raft_apply *req, int status, void *result)
{
    applying_t *a = req->data;
    (void)result;
    if (status == 0)
        a->leader->applied_cb_ok++;
    t_inflight--;
    free(a);
}

/* Proposes one entry of bytes (>= 8) carrying the value next_value on the leader l. */
static void apply_one(group_t *g, node_t *l, size_t bytes)
{
    applying_t *a = calloc(1, sizeof *a);
    assert_non_null(a);
    a->req.data = a;
    a->leader = l;
    uint64_t v = ++g->next_value;
    struct raft_buffer buf = {.base = raft_malloc(bytes), .len = bytes};
    assert_non_null(buf.base);
    memset(buf.base, 0x5A, bytes);
    memcpy(buf.base, &v, sizeof v);
    assert_int_equal(raft_apply(&l->raft, &a->req, &buf, 1, applied_cb), 0);
    t_inflight++;
    g->expect_count++;
    g->expect_sum += v;
}

/* Proposes count entries (values next_value..) on the leader; all must be accepted. */
static void apply_entries(group_t *g, int count)
{
    assert_true(run_until(g, cond_leader, NULL, T_WAIT_MS));
    node_t *l = leader_of(g);
    assert_non_null(l);
    for (int i = 0; i < count; i++)
        apply_one(g, l, sizeof g->next_value);
}

/* ---- the group ---- */

static int group_setup(void **state)
{
    signal(SIGPIPE, SIG_IGN); /* the transport's contract, as ops_signal does for services */
    ops_log_init("test_ledger_raftnet", "test", OPS_LOG_INFO);
    group_t *g = calloc(1, sizeof *g);
    assert_non_null(g);
    assert_int_equal(qctest_dir_new("raftnet", g->dir), 0);
    assert_int_equal(uv_loop_init(&g->loop), 0);
    assert_int_equal(uv_timer_init(&g->loop, &g->tick), 0);
    assert_int_equal(uv_timer_start(&g->tick, tick_cb, T_TICK_MS, T_TICK_MS), 0);
    qctest_ports_t ports = qctest_ports(T_PORT_FIRST, T_PORT_COUNT);
    int port = qctest_port(&ports, 0);
    for (int i = 0; i < T_NODES; i++) {
        node_t *nd = &g->nodes[i];
        char name[32];
        nd->id = (uint64_t)i + 1;
        port = qctest_port_pick(&ports, port, -1);
        snprintf(nd->address, sizeof nd->address, "127.0.0.1:%d", port);
        port++;
        snprintf(name, sizeof name, "raft-%d", i + 1);
        qctest_path(g->dir, name, nd->dir);
        assert_int_equal(mkdir(nd->dir, 0700), 0);
        snprintf(name, sizeof name, "raft-%d.key", i + 1);
        key_new(g->dir, name, &nd->keys);
    }
    for (int i = 0; i < T_REPLICAS; i++) {
        ledger_raftnet_peer_t *p = &g->table[i];
        p->id = g->nodes[i].id;
        snprintf(p->address, sizeof p->address, "%s", g->nodes[i].address);
        snprintf(p->public_z85, sizeof p->public_z85, "%s", g->nodes[i].keys.public_z85);
    }
    for (int i = 0; i < T_REPLICAS; i++)
        node_start(g, &g->nodes[i], g->table, T_REPLICAS, g->table, T_REPLICAS);
    *state = g;
    return 0;
}

static int group_teardown(void **state)
{
    group_t *g = *state;
    for (int i = 0; i < T_NODES; i++)
        node_stop(g, &g->nodes[i]);
    uv_close((uv_handle_t *)&g->tick, NULL);
    uv_run(&g->loop, UV_RUN_DEFAULT);
    /* Every handle the transports and raft opened is closed: nothing leaks on the loop. */
    assert_int_equal(uv_loop_close(&g->loop), 0);
    for (int i = 0; i < T_NODES; i++)
        proto_curve_keypair_wipe(&g->nodes[i].keys);
    qctest_dir_remove(g->dir);
    free(g);
    return 0;
}

static uint64_t refused_total(void)
{
    return ops_counter_value(
        ops_counter(T_REFUSED_METRIC, "CURVE clients refused by the ZAP handler"));
}

/* ---- raw ZMQ peers: what a host that speaks the wire without a transport can do ---- */

typedef struct raw {
    void *ctx;
    void *sock;
} raw_t;

static void raw_open(raw_t *r, const proto_curve_keypair_t *keys, const node_t *server)
{
    r->ctx = zmq_ctx_new();
    assert_non_null(r->ctx);
    r->sock = zmq_socket(r->ctx, ZMQ_DEALER);
    assert_non_null(r->sock);
    int zero = 0;
    char endpoint[LEDGER_RAFTNET_ADDRESS_MAX + 8];
    snprintf(endpoint, sizeof endpoint, "tcp://%s", server->address);
    assert_int_equal(zmq_setsockopt(r->sock, ZMQ_LINGER, &zero, sizeof zero), 0);
    assert_int_equal(zmq_setsockopt(r->sock, ZMQ_CURVE_SERVERKEY, server->keys.public_z85, 40), 0);
    assert_int_equal(zmq_setsockopt(r->sock, ZMQ_CURVE_PUBLICKEY, keys->public_z85, 40), 0);
    assert_int_equal(zmq_setsockopt(r->sock, ZMQ_CURVE_SECRETKEY, keys->secret_z85, 40), 0);
    assert_int_equal(zmq_connect(r->sock, endpoint), 0);
}

static void raw_close(raw_t *r)
{
    zmq_close(r->sock);
    zmq_ctx_term(r->ctx);
}

static void raw_hello(raw_t *r, uint64_t id, const char *address)
{
    uint8_t hello[LEDGER_RAFTNET_HELLO_HEAD + LEDGER_RAFTNET_ADDRESS_MAX];
    size_t alen = strlen(address);
    hello[0] = LEDGER_RAFTNET_MSG_HELLO;
    hello[1] = LEDGER_RAFTNET_VERSION;
    for (int i = 0; i < 8; i++)
        hello[2 + i] = (uint8_t)(id >> (56 - 8 * i));
    memcpy(hello + LEDGER_RAFTNET_HELLO_HEAD, address, alen);
    assert_true(zmq_send(r->sock, hello, LEDGER_RAFTNET_HELLO_HEAD + alen, ZMQ_DONTWAIT) >= 0);
}

/* A DATA frame that would be a raft message's first bytes: garbage to raft, if it got in. */
static void raw_data(raw_t *r)
{
    uint8_t data[64];
    memset(data, 0xA5, sizeof data);
    data[0] = LEDGER_RAFTNET_MSG_DATA;
    assert_true(zmq_send(r->sock, data, sizeof data, ZMQ_DONTWAIT) >= 0);
}

/* The first frame the server sends within T_RAW_WAIT_MS, running the loop meanwhile: its
 * type byte, or 0 when none came. */
static int raw_answer(group_t *g, raw_t *r)
{
    uint64_t deadline = ops_time_mono_ms() + T_RAW_WAIT_MS;
    while (ops_time_mono_ms() < deadline) {
        uint8_t frame[16];
        int got = zmq_recv(r->sock, frame, sizeof frame, ZMQ_DONTWAIT);
        if (got >= 1)
            return frame[0];
        uv_run(&g->loop, UV_RUN_ONCE);
    }
    return 0;
}

typedef struct snapshot_of_group {
    raft_term term[T_REPLICAS];
    raft_id leader[T_REPLICAS];
    uint64_t count[T_REPLICAS];
    ledger_raftnet_stats_t stats[T_REPLICAS];
} group_view_t;

static void group_view(group_t *g, group_view_t *v)
{
    for (int i = 0; i < T_REPLICAS; i++) {
        node_t *nd = &g->nodes[i];
        const char *address = NULL;
        v->term[i] = nd->raft.current_term;
        raft_leader(&nd->raft, &v->leader[i], &address);
        v->count[i] = nd->count;
        ledger_raftnet_stats(&nd->transport, &v->stats[i]);
    }
}

/* ---- the tests ---- */

static void test_init_refuses_bad_tables(void **state)
{
    group_t *g = *state;
    struct raft_uv_transport t;
    ledger_raftnet_peer_t bad[T_REPLICAS];
    const proto_curve_keypair_t *keys = &g->nodes[0].keys;
    memcpy(bad, g->table, sizeof bad);
    bad[1].id = bad[0].id; /* an id twice */
    assert_int_equal(ledger_raftnet_init(&t, &g->loop, keys, bad, T_REPLICAS), QC_EINVAL);
    memcpy(bad, g->table, sizeof bad);
    memcpy(bad[1].public_z85, bad[0].public_z85, sizeof bad[0].public_z85); /* a key twice */
    assert_int_equal(ledger_raftnet_init(&t, &g->loop, keys, bad, T_REPLICAS), QC_EINVAL);
    memcpy(bad, g->table, sizeof bad);
    bad[2].public_z85[5] = '\0'; /* not a key */
    assert_int_equal(ledger_raftnet_init(&t, &g->loop, keys, bad, T_REPLICAS), QC_EINVAL);
    memcpy(bad, g->table, sizeof bad);
    bad[2].id = 0;
    assert_int_equal(ledger_raftnet_init(&t, &g->loop, keys, bad, T_REPLICAS), QC_EINVAL);
    assert_int_equal(ledger_raftnet_init(&t, &g->loop, keys, g->table, 0), QC_EINVAL);

    /* A good table, but raft starts under an id whose entry holds another key: raft_init
     * fails (the transport's init refuses) and everything is freed. */
    struct raft_io io;
    struct raft r;
    struct raft_fsm fsm = {.version = 1, .apply = fsm_apply};
    char dir[QCTEST_PATH_MAX];
    qctest_path(g->dir, "raft-refused", dir);
    assert_int_equal(mkdir(dir, 0700), 0);
    assert_int_equal(ledger_raftnet_init(&t, &g->loop, keys, g->table, T_REPLICAS), 0);
    assert_int_equal(raft_uv_init(&io, &g->loop, dir, &t), 0);
    assert_int_not_equal(raft_init(&r, &io, &fsm, g->table[1].id, g->table[1].address), 0);
    raft_uv_close(&io);
    ledger_raftnet_close(&t);
}

static void test_replicate(void **state)
{
    group_t *g = *state;
    assert_true(run_until(g, cond_leader, NULL, T_WAIT_MS));
    apply_entries(g, T_ENTRIES);
    assert_true(run_until(g, cond_caught_up, NULL, T_WAIT_MS));
    node_t *l = leader_of(g);
    assert_non_null(l);
    assert_int_equal(l->applied_cb_ok, T_ENTRIES);
    ledger_raftnet_stats_t s;
    ledger_raftnet_stats(&l->transport, &s);
    assert_true(s.links_out >= T_REPLICAS - 1); /* the leader reached both followers */
    for (int i = 0; i < T_REPLICAS; i++) {
        ledger_raftnet_stats(&g->nodes[i].transport, &s);
        assert_int_equal(s.hello_refused, 0);
        assert_int_equal(s.frames_dropped, 0);
        if (&g->nodes[i] != l)
            assert_true(s.links_in >= 1); /* the leader's link, admitted */
    }
}

static void test_stranger_cannot_join(void **state)
{
    group_t *g = *state;
    assert_true(run_until(g, cond_leader, NULL, T_WAIT_MS));
    group_view_t before, after;
    group_view(g, &before);
    uint64_t refused_before = refused_total();

    /* A raft instance with a key nobody listed, which knows the replicas' addresses and
     * public keys and bootstraps the group's ids plus its own: it campaigns, and its
     * RequestVotes (higher terms) would move every replica's term if one got through. */
    node_t *s = &g->nodes[T_STRANGER_ID - 1];
    ledger_raftnet_peer_t table[T_NODES];
    memcpy(table, g->table, sizeof g->table);
    table[T_REPLICAS].id = s->id;
    snprintf(table[T_REPLICAS].address, sizeof table[0].address, "%s", s->address);
    snprintf(table[T_REPLICAS].public_z85, sizeof table[0].public_z85, "%s", s->keys.public_z85);
    node_start(g, s, table, T_NODES, table, T_NODES);
    run_for(g, T_STRANGER_MS);
    assert_true(s->raft.current_term > 1); /* it did campaign */

    /* And raw frames under the same key: a hello claiming replica 2, then data. */
    raw_t raw;
    raw_open(&raw, &s->keys, &g->nodes[0]);
    raw_hello(&raw, g->nodes[1].id, g->nodes[1].address);
    raw_data(&raw);
    assert_int_equal(raw_answer(g, &raw), 0); /* no WELCOME, not even a BYE */
    raw_close(&raw);

    group_view(g, &after);
    ledger_raftnet_stats_t ss;
    ledger_raftnet_stats(&s->transport, &ss);
    node_stop(g, s);
    assert_int_equal(ss.links_out, 0);
    assert_true(ss.connects_failed >= T_REPLICAS);
    assert_true(refused_total() > refused_before);
    for (int i = 0; i < T_REPLICAS; i++) {
        assert_int_equal(after.term[i], before.term[i]);
        assert_int_equal(after.leader[i], before.leader[i]);
        assert_int_equal(after.count[i], before.count[i]);
        assert_int_equal(after.stats[i].links_in, before.stats[i].links_in);
        assert_int_equal(after.stats[i].hello_refused, 0); /* stopped at CURVE, before hello */
    }
    /* The group still serves. */
    apply_entries(g, 5);
    assert_true(run_until(g, cond_caught_up, NULL, T_WAIT_MS));
}

static bool cond_relinked(group_t *g, const void *arg)
{
    const uint64_t *args = arg; /* the target's index, the links_in to reach */
    ledger_raftnet_stats_t s;
    ledger_raftnet_stats(&g->nodes[args[0]].transport, &s);
    return s.links_in >= args[1];
}

static void test_listed_key_cannot_claim_another_id(void **state)
{
    group_t *g = *state;
    assert_true(run_until(g, cond_leader, NULL, T_WAIT_MS));
    /* The leader is the target, so the liar (a follower) keeps writing to it. */
    node_t *target = leader_of(g), *liar = NULL, *victim = NULL;
    assert_non_null(target);
    for (int i = 0; i < T_REPLICAS; i++) {
        node_t *nd = &g->nodes[i];
        if (nd == target)
            continue;
        if (liar == NULL)
            liar = nd;
        else
            victim = nd;
    }
    uint64_t t_index = target->id - 1;
    group_view_t before, after;
    group_view(g, &before);
    ops_counter_t *refused_metric = ops_counter("qc_raftnet_hellos_refused_total", "");
    uint64_t refused_metric_before = ops_counter_value(refused_metric);

    /* The liar's key (listed) claims the victim's id and address: refused with BYE. */
    raw_t raw;
    raw_open(&raw, &liar->keys, target);
    raw_hello(&raw, victim->id, victim->address);
    assert_int_equal(raw_answer(g, &raw), LEDGER_RAFTNET_MSG_BYE);
    raw_data(&raw); /* data on the refused connection: dropped, BYE again */
    assert_int_equal(raw_answer(g, &raw), LEDGER_RAFTNET_MSG_BYE);
    raw_close(&raw);

    /* Data with no hello at all: dropped, BYE. */
    raw_open(&raw, &liar->keys, target);
    raw_data(&raw);
    assert_int_equal(raw_answer(g, &raw), LEDGER_RAFTNET_MSG_BYE);
    raw_close(&raw);

    /* The control: the same key claiming its own id is welcomed, so the refusal above was
     * the check, not a broken client. It replaces the liar's real link to the leader. */
    raw_open(&raw, &liar->keys, target);
    raw_hello(&raw, liar->id, liar->address);
    assert_int_equal(raw_answer(g, &raw), LEDGER_RAFTNET_MSG_WELCOME);
    raw_close(&raw);

    group_view(g, &after);
    ledger_raftnet_stats_t *sb = &before.stats[t_index], *sa = &after.stats[t_index];
    assert_int_equal(sa->hello_refused, sb->hello_refused + 1);
    assert_int_equal(ops_counter_value(refused_metric), refused_metric_before + 1); /* /metrics */
    assert_true(sa->frames_dropped >= sb->frames_dropped + 2);
    assert_true(sa->links_in >= sb->links_in + 1);
    assert_true(sa->links_replaced >= sb->links_replaced + 1);
    for (int i = 0; i < T_REPLICAS; i++) {
        assert_int_equal(after.term[i], before.term[i]);
        assert_int_equal(after.count[i], before.count[i]);
    }
    /* The liar's real link was cut by the control's hello (BYE): raft connects again and
     * says hello anew, and the group replicates to everyone. */
    uint64_t relinked[2] = {t_index, sb->links_in + 2};
    assert_true(run_until(g, cond_relinked, relinked, T_WAIT_MS));
    apply_entries(g, 5);
    assert_true(run_until(g, cond_caught_up, NULL, T_WAIT_MS));
}

static void test_follower_restart_catches_up(void **state)
{
    group_t *g = *state;
    assert_true(run_until(g, cond_leader, NULL, T_WAIT_MS));
    node_t *l = leader_of(g);
    node_t *f = NULL;
    for (int i = 0; i < T_REPLICAS && f == NULL; i++)
        if (&g->nodes[i] != l)
            f = &g->nodes[i];
    assert_non_null(f);
    uint64_t count_before = f->count;
    ledger_raftnet_stats_t lb, la;
    ledger_raftnet_stats(&l->transport, &lb);

    node_stop(g, f);
    apply_entries(g, T_DOWN_ENTRIES); /* a majority of two commits them */
    assert_true(run_until(g, cond_caught_up, NULL, T_WAIT_MS));

    f->restored_max = 0;
    uint64_t t0 = ops_time_mono_ms();
    node_start(g, f, g->table, T_REPLICAS, NULL, 0);
    assert_true(run_until(g, cond_caught_up, NULL, T_WAIT_MS));
    uint64_t caught_up_ms = ops_time_mono_ms() - t0;
    assert_int_equal(f->count, g->expect_count);
    print_message("follower %" PRIu64 ": %" PRIu64
                  " entries before its stop, a snapshot of %" PRIu64 " restored, %" PRIu64
                  " at the end, caught up %" PRIu64 " ms after its start\n",
                  f->id, count_before, f->restored_max, f->count, caught_up_ms);
    /* The leader had compacted past the follower's log: a snapshot came over the link, in
     * several chunks, and carried more than the follower had (its own snapshots carry at
     * most count_before). */
    assert_true(f->restored_max > count_before);
    ledger_raftnet_stats(&l->transport, &la);
    assert_true(la.links_out > lb.links_out); /* the leader connected again */
    assert_true(la.links_out_lost + la.connects_failed > lb.links_out_lost + lb.connects_failed);
}

static bool cond_refused_above(group_t *g, const void *arg)
{
    (void)g;
    return refused_total() > *(const uint64_t *)arg;
}

static void test_table_change_cuts_a_replica_off(void **state)
{
    group_t *g = *state;
    assert_true(run_until(g, cond_leader, NULL, T_WAIT_MS));
    node_t *l = leader_of(g);
    assert_non_null(l);
    node_t *x = &g->nodes[l == &g->nodes[T_REPLICAS - 1] ? 0 : T_REPLICAS - 1];
    ledger_raftnet_peer_t without[T_REPLICAS - 1];
    size_t n = 0;
    for (int i = 0; i < T_REPLICAS; i++)
        if (g->table[i].id != x->id)
            without[n++] = g->table[i];
    uint64_t refused_before = refused_total();
    ledger_raftnet_stats_t lb, la;
    ledger_raftnet_stats(&l->transport, &lb);

    /* Both others drop x; the open links with x end at once. */
    for (int i = 0; i < T_REPLICAS; i++)
        if (&g->nodes[i] != x)
            assert_int_equal(ledger_raftnet_set_peers(&g->nodes[i].transport, without, n), 0);
    x->isolated = true;
    uint64_t x_count = x->count;
    apply_entries(g, 10); /* the two others are a majority */
    assert_true(run_until(g, cond_caught_up, NULL, T_WAIT_MS));
    /* x writes again when its election timer fires (it hears no leader): refused at CURVE. */
    assert_true(run_until(g, cond_refused_above, &refused_before, T_WAIT_MS));
    assert_int_equal(x->count, x_count);
    ledger_raftnet_stats(&l->transport, &la);
    assert_true(la.links_out_lost > lb.links_out_lost); /* its link to x was cut */

    /* A malformed table is refused and the current one kept. */
    ledger_raftnet_peer_t twice[2] = {without[0], without[0]};
    assert_int_equal(ledger_raftnet_set_peers(&l->transport, twice, 2), QC_EINVAL);

    /* Listed again, x catches up (its campaigns raised its term: there may be an election). */
    for (int i = 0; i < T_REPLICAS; i++)
        if (&g->nodes[i] != x)
            assert_int_equal(ledger_raftnet_set_peers(&g->nodes[i].transport, g->table, T_REPLICAS),
                             0);
    x->isolated = false;
    apply_entries(g, 5);
    assert_true(run_until(g, cond_caught_up, NULL, T_WAIT_MS));
}

static bool cond_window(group_t *g, const void *arg)
{
    (void)g;
    (void)arg;
    return t_inflight < *(const unsigned *)arg;
}

/* --bench ENTRIES BYTES [tcp]: the figure described at the top. */
static int bench(int argc, char **argv)
{
    long entries = argc > 2 ? strtol(argv[2], NULL, 10) : 0;
    long bytes = argc > 3 ? strtol(argv[3], NULL, 10) : 0;
    if (entries < 1 || entries > 10000000 || bytes < 8 || bytes > T_BENCH_BYTES_MAX) {
        fprintf(stderr, "usage: test_ledger_raftnet --bench ENTRIES(1..1e7) BYTES(8..%d) [tcp]\n",
                T_BENCH_BYTES_MAX);
        return 2;
    }
    t_stock_tcp = argc > 4 && strcmp(argv[4], "tcp") == 0;
    t_snapshot_threshold = (unsigned)entries * 2; /* no snapshot during the run */
    void *state = NULL;
    group_setup(&state);
    group_t *g = state;
    ops_log_init("test_ledger_raftnet", "bench", OPS_LOG_WARN);
    if (!run_until(g, cond_leader, NULL, T_WAIT_MS)) {
        fprintf(stderr, "no leader\n");
        return 1;
    }
    node_t *l = leader_of(g);
    unsigned window = (unsigned)(T_BENCH_WINDOW_BYTES / bytes);
    window = window < 1 ? 1 : window > T_BENCH_WINDOW ? T_BENCH_WINDOW : window;
    uint64_t t0 = ops_time_mono_ns();
    for (long i = 0; i < entries; i++) {
        if (!run_until(g, cond_window, &window, T_WAIT_MS) || leader_of(g) != l) {
            fprintf(stderr, "stalled or lost the leader at entry %ld\n", i);
            return 1;
        }
        apply_one(g, l, (size_t)bytes);
    }
    bool done = run_until(g, cond_caught_up, NULL, (uint64_t)T_WAIT_MS * 10);
    double s = (double)(ops_time_mono_ns() - t0) / 1e9;
    printf("%s: %ld entries of %ld bytes applied on %d replicas in %.3f s: %.0f entries/s, "
           "%.1f MB/s%s\n",
           t_stock_tcp ? "stock tcp" : "raftnet", entries, bytes, T_REPLICAS, s, entries / s,
           entries * (double)bytes / s / 1e6, done ? "" : " (NOT all applied)");
    group_teardown(&state);
    return done ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--bench") == 0)
        return bench(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_refuses_bad_tables),
        cmocka_unit_test(test_replicate),
        cmocka_unit_test(test_stranger_cannot_join),
        cmocka_unit_test(test_listed_key_cannot_claim_another_id),
        cmocka_unit_test(test_follower_restart_catches_up),
        cmocka_unit_test(test_table_change_cuts_a_replica_off),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
