/* test_ledger_replica.c - a ledger shard as a Raft group of three real qc-ledger processes
 * over real ZeroMQ: a leader is elected and serves loads; a follower names it; every replica
 * holds the same state (check on each, and the digest of each stopped replica's LMDB); the
 * leader killed during writes loses nothing acknowledged; without a majority nothing moves. */
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <zmq.h>

#include "ledger_fsm.h"
#include "ledger_proc.h"
#include "ledger_testkit.h"
#include "ops_time.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "qc_error.h"
#include "qctest_http.h"
#include "qctest_lmdb.h"
#include "qctest_port.h"
#include "qctest_proc.h"

static qctest_ports_t ports;
#define T_PORT(i) qctest_port(&ports, (i))
#define T_REPLICAS 3
#define T_SLOTS 4             /* a fourth replica, added online by test_replica_added_online */
#define T_RAFT_PORT_OFFSET 40 /* raft ports: this far into the range */
#define T_HTTP_PORT_OFFSET 50 /* /metrics and /healthz */
#define T_REPAIR_MS 30000     /* longest wait for a diverged replica to rebuild itself */
#define T_LEADER_MS 20000     /* longest wait for a leader */
#define T_CALL_MS 5000
#define T_ACCOUNT "acct-r1"
#define T_FUNDS 1000000
#define T_LOADS 12

static const char *ledger_bin;
/* Small, so the tests' groups really snapshot and compact; the bench uses the defaults. */
static const char *snapshot_threshold = "32";
static const char *snapshot_trailing = "8";

typedef struct group {
    int n; /* replicas set up: T_REPLICAS, and one more once group_grow() ran */
    lp_t r[T_SLOTS];
    int raft_port[T_SLOTS];
    proto_curve_keypair_t raft_keys[T_SLOTS];
    char extra[T_SLOTS][12][LP_PATH_MAX];
    const char *argv[T_SLOTS][24];
    int http_port[T_SLOTS];
    /* The leader's digest ops (replica repair): off unless a test turns them on, so that an
     * idle group proposes nothing and stopped replicas end at the same index. */
    char digest_ms[16];
    bool no_repair; /* --repair false: a diverged replica stops and waits for the runbook */
} group_t;

typedef struct dev {
    char id[32];
    EVP_PKEY *key;
    uint8_t *cert;
    size_t cert_len;
    uint64_t counter;
} dev_t_;

/* ------------------------------------------------------------ the group */

static void write_replicas_file(group_t *g)
{
    char text[4096] = "# id raft-address endpoint raft-key\n";
    for (int i = 0; i < g->n; i++) {
        char line[512];
        snprintf(line, sizeof line, "%d 127.0.0.1:%d %s %s\n", i + 1, g->raft_port[i],
                 g->r[i].endpoint, g->raft_keys[i].public_z85);
        strncat(text, line, sizeof text - strlen(text) - 1);
    }
    for (int i = 0; i < g->n; i++) {
        char p[LP_PATH_MAX];
        qctest_path(g->r[i].dir, "replicas", p);
        assert_int_equal(qctest_file_write(p, text), 0);
    }
}

/* The flags that make replica i of the group (join for a replica that lost its disk). */
static const char *const *replica_args(group_t *g, int i, bool join)
{
    char(*e)[LP_PATH_MAX] = g->extra[i];
    snprintf(e[0], LP_PATH_MAX, "%d", i + 1);
    qctest_path(g->r[i].dir, "replicas", e[1]);
    qctest_path(g->r[i].dir, "raft.key", e[2]);
    const char **a = g->argv[i];
    int n = 0;
    a[n++] = "--replica-id";
    a[n++] = e[0];
    a[n++] = "--replicas-file";
    a[n++] = e[1];
    a[n++] = "--raft-key";
    a[n++] = e[2];
    a[n++] = "--snapshot-threshold";
    a[n++] = snapshot_threshold;
    a[n++] = "--snapshot-trailing";
    a[n++] = snapshot_trailing;
    a[n++] = "--digest-interval-ms";
    a[n++] = g->digest_ms[0] != '\0' ? g->digest_ms : "0";
    a[n++] = "--join";
    a[n++] = join ? "true" : "false";
    a[n++] = "--repair";
    a[n++] = g->no_repair ? "false" : "true";
    snprintf(e[3], LP_PATH_MAX, "%d", g->http_port[i]);
    a[n++] = "--http-port";
    a[n++] = e[3];
    a[n] = NULL;
    return a;
}

/* The running group, which the teardown stops even when a test failed half-way. */
static group_t *current;

static void group_setup(group_t *g)
{
    char digest_ms[sizeof g->digest_ms]; /* the settings a test makes before the set-up */
    memcpy(digest_ms, g->digest_ms, sizeof digest_ms);
    bool no_repair = g->no_repair;
    memset(g, 0, sizeof *g);
    memcpy(g->digest_ms, digest_ms, sizeof digest_ms);
    g->no_repair = no_repair;
    current = g;
    for (int i = 0; i < T_REPLICAS; i++) {
        g->n = i + 1;
        assert_int_equal(lp_setup_like(&g->r[i], ledger_bin, T_PORT(i), i == 0 ? NULL : &g->r[0]),
                         0);
        g->raft_port[i] = lp_free_port(T_PORT(T_RAFT_PORT_OFFSET + i));
        g->http_port[i] = lp_free_port(T_PORT(T_HTTP_PORT_OFFSET + i));
        char p[LP_PATH_MAX];
        qctest_path(g->r[i].dir, "raft.key", p);
        assert_int_equal(proto_curve_keypair_create(p, &g->raft_keys[i]), 0);
    }
    write_replicas_file(g);
}

static void group_start(group_t *g, int i, bool join)
{
    assert_int_equal(lp_start(&g->r[i], NULL, 0, replica_args(g, i, join)), 0);
}

static void group_teardown(group_t *g)
{
    for (int i = 0; i < g->n; i++) {
        proto_curve_keypair_wipe(&g->raft_keys[i]);
        lp_teardown(&g->r[i]);
    }
    current = NULL;
}

/* cmocka's teardown: no qc-ledger outlives its test. */
static int teardown(void **state)
{
    (void)state;
    if (current != NULL) {
        group_t *g = current;
        group_teardown(g);
        free(g);
    }
    return 0;
}

/* shard_status of replica i, or NULL when it did not answer. */
static Qcledger__ShardStatusReply *status_of(lp_t *lp)
{
    Qcledger__ShardStatusRequest m = QCLEDGER__SHARD_STATUS_REQUEST__INIT;
    proto_rpc_reply_t *rep = NULL;
    if (lp_call(lp->op, "shard_status", &m.base, &rep) != 0) {
        proto_rpc_reply_destroy(&rep);
        return NULL;
    }
    Qcledger__ShardStatusReply *s =
        qcledger__shard_status_reply__unpack(NULL, rep->body_len, rep->body);
    proto_rpc_reply_destroy(&rep);
    return s;
}

/* Waits (bounded) until one running replica leads and serves (its barrier applied: a read
 * through it is answered); returns its index. */
static int wait_leader(group_t *g, const bool *running)
{
    uint64_t end = ops_time_mono_ms() + T_LEADER_MS;
    while (ops_time_mono_ms() < end) {
        for (int i = 0; i < g->n; i++) {
            if (!running[i])
                continue;
            Qcledger__ShardStatusReply *s = status_of(&g->r[i]);
            bool leads = s != NULL && s->role == QCLEDGER__REPLICA_ROLE__ROLE_LEADER;
            if (s != NULL)
                qcledger__shard_status_reply__free_unpacked(s, NULL);
            if (!leads)
                continue;
            Qcledger__GetAccountRequest m = QCLEDGER__GET_ACCOUNT_REQUEST__INIT;
            m.account_id = "nobody";
            int rc = lp_call(g->r[i].op, "get_account", &m.base, NULL);
            if (rc == QC_EUNKNOWNACCT || rc == 0)
                return i;
        }
        usleep(100 * 1000);
    }
    fail_msg("no leader within %d ms", T_LEADER_MS);
    return -1;
}

/* ------------------------------------------------------------ loads */

static void dev_make(dev_t_ *d, const char *id)
{
    snprintf(d->id, sizeof d->id, "%s", id);
    d->key = qctest_key_new();
    qctest_cert_self_der(d->key, d->id, &d->cert, &d->cert_len);
    d->counter = 0;
}

static void dev_free(dev_t_ *d)
{
    EVP_PKEY_free(d->key);
    free(d->cert);
}

/* Reserves a load of amount for d through lp; returns the code, the allow in *allow. */
static int reserve(lp_t *lp, dev_t_ *d, int64_t amount, tk_load_t *l, uint8_t **allow,
                   size_t *allow_len)
{
    memset(l, 0, sizeof *l);
    l->device_id = d->id;
    l->account_id = T_ACCOUNT;
    l->amount = amount;
    l->counter = d->counter;
    tk_txn_id(l->txn_id);
    uint8_t *req = NULL;
    size_t req_len = 0;
    tk_request(d->key, l, &req, &req_len);
    int rc = lp_reserve(lp, req, req_len, allow, allow_len);
    free(req);
    return rc;
}

/* Settles l as applied by the device (counter + 1); returns the code and the final state. */
static int settle(lp_t *lp, dev_t_ *d, const tk_load_t *l, const uint8_t *allow, size_t allow_len,
                  Quancun__LoadState *state)
{
    uint8_t *rep = NULL;
    size_t rep_len = 0;
    tk_report(d->key, l, l->counter + 1, QUANCUN__REPORT_STATUS__REPORT_APPLIED, allow, allow_len,
              &rep, &rep_len);
    Qcledger__SettleRequest sr = QCLEDGER__SETTLE_REQUEST__INIT;
    sr.txn_id.data = (uint8_t *)l->txn_id;
    sr.txn_id.len = 16;
    sr.report.data = rep;
    sr.report.len = rep_len;
    proto_rpc_reply_t *reply = NULL;
    int rc = lp_call(lp->gw, "settle", &sr.base, &reply);
    free(rep);
    if (rc == 0) {
        Qcledger__SettleReply *r =
            qcledger__settle_reply__unpack(NULL, reply->body_len, reply->body);
        assert_non_null(r);
        assert_non_null(r->load);
        *state = r->load->state;
        assert_true(r->outcome.len > 0); /* signed after the entry applied */
        qcledger__settle_reply__free_unpacked(r, NULL);
    }
    proto_rpc_reply_destroy(&reply);
    return rc;
}

/* One whole load through the leader: reserve, allow, settle CONFIRMED. */
static void one_load(lp_t *lp, dev_t_ *d, int64_t amount)
{
    tk_load_t l;
    uint8_t *allow = NULL;
    size_t allow_len = 0;
    assert_int_equal(reserve(lp, d, amount, &l, &allow, &allow_len), 0);
    assert_non_null(allow);
    proto_envelope_t *env = NULL;
    assert_int_equal(proto_envelope_open(allow, allow_len, &env), 0);
    assert_int_equal(proto_envelope_verify(env, PROTO_TYPE_LOAD_ALLOW, lp->bank), 0);
    proto_envelope_destroy(&env);
    Quancun__LoadState st = QUANCUN__LOAD_STATE__LOAD_NONE;
    assert_int_equal(settle(lp, d, &l, allow, allow_len, &st), 0);
    assert_int_equal(st, QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
    d->counter++;
    free(allow);
}

/* ------------------------------------------------------------ raw replies */

/* Calls method on endpoint with a bare DEALER socket and returns the whole RpcReply (the
 * client library follows QC_ENOTLEADER itself; the test wants to see the field). */
static Quancun__RpcReply *raw_call(lp_t *lp, const char *method, const ProtobufCMessage *msg)
{
    void *s = zmq_socket(lp->zctx, ZMQ_DEALER);
    assert_non_null(s);
    int linger = 0, timeout = T_CALL_MS;
    assert_int_equal(zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout, sizeof timeout), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, lp->server.public_z85, 41), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, lp->admin.public_z85, 41), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, lp->admin.secret_z85, 41), 0);
    assert_int_equal(zmq_connect(s, lp->endpoint), 0);
    uint8_t *body = NULL, *frame = NULL;
    size_t body_len = 0, frame_len = 0;
    assert_int_equal(proto_pack(msg, &body, &body_len), 0);
    Quancun__Rpc rpc = QUANCUN__RPC__INIT;
    rpc.request_id = 7;
    rpc.method = (char *)method;
    rpc.body.data = body;
    rpc.body.len = body_len;
    assert_int_equal(proto_pack(&rpc.base, &frame, &frame_len), 0);
    assert_int_equal(zmq_send(s, frame, frame_len, 0), (int)frame_len);
    uint8_t buf[4096];
    int n = zmq_recv(s, buf, sizeof buf, 0);
    assert_true(n > 0);
    Quancun__RpcReply *r = quancun__rpc_reply__unpack(NULL, (size_t)n, buf);
    assert_non_null(r);
    free(body);
    free(frame);
    zmq_close(s);
    return r;
}

/* ------------------------------------------------------------ state */

/* The check of replica lp: ok, and its totals (the customer balance sum) in *sum. */
static void check_replica(lp_t *lp, Qcledger__CheckReply **out)
{
    Qcledger__CheckRequest m = QCLEDGER__CHECK_REQUEST__INIT;
    proto_rpc_reply_t *rep = NULL;
    assert_int_equal(lp_call(lp->op, "check", &m.base, &rep), 0);
    Qcledger__CheckReply *c = qcledger__check_reply__unpack(NULL, rep->body_len, rep->body);
    proto_rpc_reply_destroy(&rep);
    assert_non_null(c);
    for (size_t i = 0; i < c->n_problems; i++)
        fprintf(stderr, "check problem: %s\n", c->problems[i]);
    assert_true(c->ok);
    *out = c;
}

/* The checks of two replicas count and total the same. */
static void assert_same_check(const Qcledger__CheckReply *a, const Qcledger__CheckReply *b)
{
    assert_int_equal(a->accounts, b->accounts);
    assert_int_equal(a->devices, b->devices);
    assert_int_equal(a->loads, b->loads);
    assert_int_equal(a->reserved, b->reserved);
    assert_int_equal(a->transfers, b->transfers);
    assert_int_equal(a->outbox_depth, b->outbox_depth);
    assert_int_equal(a->n_currencies, b->n_currencies);
    for (size_t i = 0; i < a->n_currencies; i++) {
        assert_int_equal(a->currencies[i]->hold, b->currencies[i]->hold);
        assert_int_equal(a->currencies[i]->float_balance, b->currencies[i]->float_balance);
        assert_int_equal(a->currencies[i]->reserved_sum, b->currencies[i]->reserved_sum);
    }
}

/* Waits (bounded) until every running replica applied as far as the leader committed. */
static void wait_caught_up(group_t *g, const bool *running, int leader)
{
    uint64_t end = ops_time_mono_ms() + T_LEADER_MS;
    while (ops_time_mono_ms() < end) {
        Qcledger__ShardStatusReply *ls = status_of(&g->r[leader]);
        assert_non_null(ls);
        uint64_t want = ls->commit_index;
        qcledger__shard_status_reply__free_unpacked(ls, NULL);
        bool all = true;
        for (int i = 0; i < g->n; i++) {
            if (!running[i])
                continue;
            Qcledger__ShardStatusReply *s = status_of(&g->r[i]);
            all = all && s != NULL && s->applied_index >= want;
            if (s != NULL)
                qcledger__shard_status_reply__free_unpacked(s, NULL);
        }
        if (all)
            return;
        usleep(50 * 1000);
    }
    fail_msg("replicas did not catch up within %d ms", T_LEADER_MS);
}

/* The digest of replica lp's LMDB, read after it stopped. */
static void digest_of(lp_t *lp, uint8_t digest[32], uint64_t *index)
{
    char data[LP_PATH_MAX];
    qctest_path(lp->dir, "data", data);
    ledger_fsm_config_t cfg = {
        .dir = data, .map_size = 256ull << 20, .allow_key = lp->bank, .shard = 0, .shard_count = 1};
    ledger_fsm_t *f = NULL;
    assert_int_equal(ledger_fsm_new(&cfg, &f), 0);
    assert_int_equal(ledger_fsm_digest(f, digest, index), 0);
    ledger_fsm_destroy(&f);
}

/* ------------------------------------------------------------ tests */

/* Three replicas elect a leader, which serves an account, a deposit and whole loads; a
 * follower refuses with QC_ENOTLEADER and the leader's endpoint; every replica checks ok and
 * holds the same state: the same check totals while running, the same digest once stopped. */
static void test_three_replicas_serve_and_agree(void **state)
{
    (void)state;
    group_t *g = calloc(1, sizeof *g);
    assert_non_null(g);
    group_setup(g);
    bool running[T_REPLICAS];
    for (int i = 0; i < T_REPLICAS; i++) {
        group_start(g, i, false);
        running[i] = true;
    }
    int leader = wait_leader(g, running);
    lp_t *L = &g->r[leader];
    assert_int_equal(lp_open_account(L, T_ACCOUNT, TK_CURRENCY, 100000), 0);
    assert_int_equal(lp_deposit(L, T_ACCOUNT, T_FUNDS), 0);
    dev_t_ d;
    dev_make(&d, "dev-r1");
    assert_int_equal(lp_enroll(L, T_ACCOUNT, d.cert, d.cert_len), 0);
    int64_t loaded = 0;
    for (int i = 0; i < T_LOADS; i++) {
        one_load(L, &d, 100 + i);
        loaded += 100 + i;
    }
    bool ok = false;
    assert_int_equal(lp_balance(L, T_ACCOUNT, &ok), T_FUNDS - loaded);
    assert_true(ok);

    /* A follower changes nothing and names the leader. */
    int follower = (leader + 1) % T_REPLICAS;
    Qcledger__DepositRequest dm = QCLEDGER__DEPOSIT_REQUEST__INIT;
    uint8_t txn[16];
    tk_txn_id(txn);
    dm.account_id = T_ACCOUNT;
    dm.amount = 5;
    dm.txn_id.data = txn;
    dm.txn_id.len = sizeof txn;
    Quancun__RpcReply *r = raw_call(&g->r[follower], "deposit", &dm.base);
    assert_int_equal(r->code, QC_ENOTLEADER);
    assert_string_equal(r->leader, L->endpoint);
    quancun__rpc_reply__free_unpacked(r, NULL);
    Qcledger__GetAccountRequest gm = QCLEDGER__GET_ACCOUNT_REQUEST__INIT;
    gm.account_id = T_ACCOUNT;
    r = raw_call(&g->r[follower], "get_account", &gm.base);
    assert_int_equal(r->code, QC_ENOTLEADER);
    assert_string_equal(r->leader, L->endpoint);
    quancun__rpc_reply__free_unpacked(r, NULL);

    /* The leader's status knows every replica's progress. */
    Qcledger__ShardStatusReply *s = status_of(L);
    assert_non_null(s);
    assert_int_equal(s->role, QCLEDGER__REPLICA_ROLE__ROLE_LEADER);
    assert_int_equal(s->id, leader + 1);
    assert_int_equal(s->leader_id, leader + 1);
    assert_string_equal(s->leader_endpoint, L->endpoint);
    assert_int_equal(s->n_replicas, T_REPLICAS);
    for (size_t i = 0; i < s->n_replicas; i++) {
        assert_true(s->replicas[i]->voter);
        assert_true(s->replicas[i]->match_index > 0);
    }
    qcledger__shard_status_reply__free_unpacked(s, NULL);

    /* Every replica checks ok, with the same totals. */
    wait_caught_up(g, running, leader);
    Qcledger__CheckReply *c[T_REPLICAS];
    for (int i = 0; i < T_REPLICAS; i++)
        check_replica(&g->r[i], &c[i]);
    for (int i = 1; i < T_REPLICAS; i++)
        assert_same_check(c[0], c[i]);
    assert_int_equal(c[0]->loads, T_LOADS);
    for (int i = 0; i < T_REPLICAS; i++)
        qcledger__check_reply__free_unpacked(c[i], NULL);

    /* Stopped, their LMDBs are byte-identical in content. */
    uint8_t dg[T_REPLICAS][32];
    uint64_t idx[T_REPLICAS];
    for (int i = 0; i < T_REPLICAS; i++)
        assert_int_equal(WIFEXITED(lp_stop(&g->r[i], SIGTERM)), 1);
    for (int i = 0; i < T_REPLICAS; i++)
        digest_of(&g->r[i], dg[i], &idx[i]);
    for (int i = 1; i < T_REPLICAS; i++) {
        assert_int_equal(idx[i], idx[0]);
        assert_memory_equal(dg[i], dg[0], 32);
    }
    dev_free(&d);
    group_teardown(g);
    free(g);
}

/* ------------------------------------------------------------ a writer through every replica */

#define T_WRITER_LOADS 40 /* loads the writer makes, at most */
#define T_RETRY_MS 30000  /* a load's retries end after this */
#define T_KILL_AFTER 8    /* acknowledged loads before the leader dies */

/* A client that knows every replica of the group, as gateways do. */
static proto_rpc_client_t *group_client(group_t *g, const proto_curve_keypair_t *keys)
{
    char eps[3 * 64 + 8] = "";
    for (int i = 0; i < T_REPLICAS; i++) {
        if (i > 0)
            strcat(eps, ",");
        strcat(eps, g->r[i].endpoint);
    }
    proto_rpc_client_config_t cfg = {.service = "ledger",
                                     .endpoints = eps,
                                     .server_public_z85 = g->r[0].server.public_z85,
                                     .keys = keys};
    proto_rpc_client_t *cli = NULL;
    assert_int_equal(proto_rpc_client_new(g->r[0].zctx, &cfg, &cli), 0);
    return cli;
}

/* Codes after which the same request is sent again: nothing was decided, or the outcome is
 * unknown and the txn id keeps a retry exact. */
static bool transient(int rc)
{
    return rc == QC_ETIMEOUT || rc == QC_EUNAVAIL || rc == QC_ENOTLEADER || rc == QC_ENOQUORUM ||
           rc == QC_EBUSY;
}

/* Calls method with body until a definitive answer, at most T_RETRY_MS; the reply in *out. */
static int call_retry(proto_rpc_client_t *cli, const char *method, const uint8_t *body, size_t len,
                      proto_rpc_reply_t **out)
{
    uint64_t end = ops_time_mono_ms() + T_RETRY_MS;
    int rc = QC_ETIMEOUT;
    while (ops_time_mono_ms() < end) {
        proto_rpc_reply_t *rep = NULL;
        rc = proto_rpc_client_call(cli, method, body, len, 2000, PROTO_RPC_IDEMPOTENT, &rep);
        if (rc == 0)
            rc = rep->code;
        if (!transient(rc)) {
            *out = rep;
            return rc;
        }
        proto_rpc_reply_destroy(&rep);
        usleep(50 * 1000);
    }
    return rc;
}

typedef struct writer {
    group_t *g;
    dev_t_ *d;
    proto_rpc_client_t *cli;
    atomic_int acked; /* loads acknowledged CONFIRMED */
    atomic_bool stop;
    uint8_t txn[T_WRITER_LOADS][16];
    int64_t amount[T_WRITER_LOADS];
    uint64_t acked_ms[T_WRITER_LOADS]; /* when each was acknowledged (mono) */
    int failed;                        /* the code of a load that never got an answer */
} writer_t;

/* One load, reserve and settle, each retried with the same bytes until decided. */
static int writer_load(writer_t *w, int i)
{
    tk_load_t l;
    memset(&l, 0, sizeof l);
    l.device_id = w->d->id;
    l.account_id = T_ACCOUNT;
    l.amount = 100 + i;
    l.counter = w->d->counter;
    tk_txn_id(l.txn_id);
    uint8_t *req = NULL, *body = NULL;
    size_t req_len = 0, body_len = 0;
    tk_request(w->d->key, &l, &req, &req_len);
    Qcledger__ReserveRequest m = QCLEDGER__RESERVE_REQUEST__INIT;
    m.request.data = req;
    m.request.len = req_len;
    assert_int_equal(proto_pack(&m.base, &body, &body_len), 0);
    proto_rpc_reply_t *rep = NULL;
    int rc = call_retry(w->cli, "reserve", body, body_len, &rep);
    free(body);
    free(req);
    if (rc != 0) {
        proto_rpc_reply_destroy(&rep);
        return rc;
    }
    Qcledger__ReserveReply *rr = qcledger__reserve_reply__unpack(NULL, rep->body_len, rep->body);
    proto_rpc_reply_destroy(&rep);
    assert_non_null(rr);
    assert_true(rr->allow.len > 0);
    uint8_t *report = NULL;
    size_t report_len = 0;
    tk_report(w->d->key, &l, l.counter + 1, QUANCUN__REPORT_STATUS__REPORT_APPLIED, rr->allow.data,
              rr->allow.len, &report, &report_len);
    qcledger__reserve_reply__free_unpacked(rr, NULL);
    Qcledger__SettleRequest sr = QCLEDGER__SETTLE_REQUEST__INIT;
    sr.txn_id.data = l.txn_id;
    sr.txn_id.len = 16;
    sr.report.data = report;
    sr.report.len = report_len;
    assert_int_equal(proto_pack(&sr.base, &body, &body_len), 0);
    rc = call_retry(w->cli, "settle", body, body_len, &rep);
    free(body);
    free(report);
    if (rc == 0) {
        Qcledger__SettleReply *s = qcledger__settle_reply__unpack(NULL, rep->body_len, rep->body);
        assert_non_null(s);
        assert_int_equal(s->load->state, QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
        qcledger__settle_reply__free_unpacked(s, NULL);
        memcpy(w->txn[i], l.txn_id, 16);
        w->amount[i] = l.amount;
        w->d->counter++;
    }
    proto_rpc_reply_destroy(&rep);
    return rc;
}

static void *writer_main(void *arg)
{
    writer_t *w = arg;
    for (int i = 0; i < T_WRITER_LOADS && !atomic_load(&w->stop); i++) {
        int rc = writer_load(w, i);
        if (rc != 0) {
            w->failed = rc;
            break;
        }
        w->acked_ms[i] = ops_time_mono_ms();
        atomic_store(&w->acked, i + 1);
    }
    return NULL;
}

/* The record of txn on the leader: its state (or -1 when not found). */
static int load_state_on(lp_t *lp, const uint8_t *txn)
{
    Qcledger__GetLoadRequest m = QCLEDGER__GET_LOAD_REQUEST__INIT;
    m.txn_id.data = (uint8_t *)txn;
    m.txn_id.len = 16;
    proto_rpc_reply_t *rep = NULL;
    int rc = lp_call(lp->op, "get_load", &m.base, &rep);
    if (rc != 0) {
        proto_rpc_reply_destroy(&rep);
        return -1;
    }
    Qcledger__LoadReply *lr = qcledger__load_reply__unpack(NULL, rep->body_len, rep->body);
    proto_rpc_reply_destroy(&rep);
    assert_non_null(lr);
    int st = lr->load->state;
    qcledger__load_reply__free_unpacked(lr, NULL);
    return st;
}

/* The group running with an account, its funds and an enrolled device; returns the leader. */
static int group_up(group_t *g, bool *running, dev_t_ *d, const char *dev_id)
{
    group_setup(g);
    for (int i = 0; i < T_REPLICAS; i++) {
        group_start(g, i, false);
        running[i] = true;
    }
    int leader = wait_leader(g, running);
    lp_t *L = &g->r[leader];
    assert_int_equal(lp_open_account(L, T_ACCOUNT, TK_CURRENCY, 100000), 0);
    assert_int_equal(lp_deposit(L, T_ACCOUNT, T_FUNDS), 0);
    dev_make(d, dev_id);
    assert_int_equal(lp_enroll(L, T_ACCOUNT, d->cert, d->cert_len), 0);
    return leader;
}

/* Every running replica checks ok with the same totals. */
static void assert_replicas_agree(group_t *g, const bool *running, int leader)
{
    wait_caught_up(g, running, leader);
    Qcledger__CheckReply *first = NULL;
    for (int i = 0; i < g->n; i++) {
        if (!running[i])
            continue;
        Qcledger__CheckReply *c = NULL;
        check_replica(&g->r[i], &c);
        if (first == NULL) {
            first = c;
            continue;
        }
        assert_same_check(first, c);
        qcledger__check_reply__free_unpacked(c, NULL);
    }
    qcledger__check_reply__free_unpacked(first, NULL);
}

/* kill -9 of the leader while a writer loads through every replica: a new leader serves within
 * seconds, every acknowledged load is CONFIRMED on the survivors, and they agree. */
static void test_leader_killed_during_writes(void **state)
{
    (void)state;
    group_t *g = calloc(1, sizeof *g);
    assert_non_null(g);
    bool running[T_REPLICAS];
    dev_t_ d;
    int leader = group_up(g, running, &d, "dev-r2");
    writer_t *w = calloc(1, sizeof *w);
    assert_non_null(w);
    w->g = g;
    w->d = &d;
    w->cli = group_client(g, &g->r[0].gateway);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, writer_main, w), 0);
    uint64_t end = ops_time_mono_ms() + T_RETRY_MS;
    while (atomic_load(&w->acked) < T_KILL_AFTER && ops_time_mono_ms() < end)
        usleep(10 * 1000);
    assert_true(atomic_load(&w->acked) >= T_KILL_AFTER);
    int acked_at_kill = atomic_load(&w->acked);
    uint64_t killed_ms = ops_time_mono_ms();
    lp_stop(&g->r[leader], SIGKILL);
    running[leader] = false;
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(w->failed, 0);
    int acked = atomic_load(&w->acked);
    assert_int_equal(acked, T_WRITER_LOADS);
    /* The first load acknowledged after the kill: the group served again. */
    uint64_t back_ms = 0;
    for (int i = acked_at_kill; i < acked && back_ms == 0; i++)
        if (w->acked_ms[i] > killed_ms)
            back_ms = w->acked_ms[i] - killed_ms;
    int next = wait_leader(g, running);
    assert_true(next != leader);
    fprintf(stderr, "figure: first load acknowledged %llu ms after kill -9 of the leader\n",
            (unsigned long long)back_ms);
    assert_true(back_ms > 0 && back_ms < 10000);
    int64_t loaded = 0;
    for (int i = 0; i < acked; i++) {
        assert_int_equal(load_state_on(&g->r[next], w->txn[i]),
                         QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
        loaded += w->amount[i];
    }
    bool ok = false;
    assert_int_equal(lp_balance(&g->r[next], T_ACCOUNT, &ok), T_FUNDS - loaded);
    assert_true(ok);
    assert_replicas_agree(g, running, next);
    proto_rpc_client_destroy(&w->cli);
    free(w);
    dev_free(&d);
    group_teardown(g);
    free(g);
}

/* Two of three stopped: the survivor refuses writes with QC_ENOQUORUM and nothing moves; once
 * they are back, writes succeed and every replica agrees. */
static void test_no_quorum_refuses_then_recovers(void **state)
{
    (void)state;
    group_t *g = calloc(1, sizeof *g);
    assert_non_null(g);
    bool running[T_REPLICAS];
    dev_t_ d;
    int leader = group_up(g, running, &d, "dev-r3");
    one_load(&g->r[leader], &d, 250);
    Qcledger__CheckReply *before = NULL;
    wait_caught_up(g, running, leader);
    int survivor = (leader + 1) % T_REPLICAS;
    check_replica(&g->r[survivor], &before);
    for (int i = 0; i < T_REPLICAS; i++) {
        if (i == survivor)
            continue;
        lp_stop(&g->r[i], i == leader ? SIGKILL : SIGTERM);
        running[i] = false;
    }
    /* Bounded: the survivor learns that no leader is left. */
    uint64_t end = ops_time_mono_ms() + T_LEADER_MS;
    bool leaderless = false;
    while (!leaderless && ops_time_mono_ms() < end) {
        Qcledger__ShardStatusReply *s = status_of(&g->r[survivor]);
        assert_non_null(s);
        leaderless = s->leader_id == 0 && s->role != QCLEDGER__REPLICA_ROLE__ROLE_LEADER;
        qcledger__shard_status_reply__free_unpacked(s, NULL);
        if (!leaderless)
            usleep(100 * 1000);
    }
    assert_true(leaderless);
    Qcledger__DepositRequest dm = QCLEDGER__DEPOSIT_REQUEST__INIT;
    uint8_t txn[16];
    tk_txn_id(txn);
    dm.account_id = T_ACCOUNT;
    dm.amount = 77;
    dm.txn_id.data = txn;
    dm.txn_id.len = sizeof txn;
    Quancun__RpcReply *r = raw_call(&g->r[survivor], "deposit", &dm.base);
    assert_int_equal(r->code, QC_ENOQUORUM);
    quancun__rpc_reply__free_unpacked(r, NULL);
    Qcledger__GetAccountRequest gm = QCLEDGER__GET_ACCOUNT_REQUEST__INIT;
    gm.account_id = T_ACCOUNT;
    r = raw_call(&g->r[survivor], "get_account", &gm.base);
    assert_int_equal(r->code, QC_ENOQUORUM);
    quancun__rpc_reply__free_unpacked(r, NULL);
    /* Nothing moved on the survivor. */
    Qcledger__CheckReply *during = NULL;
    check_replica(&g->r[survivor], &during);
    assert_same_check(before, during);
    qcledger__check_reply__free_unpacked(during, NULL);
    /* Back: a leader again, and writes go through. */
    for (int i = 0; i < T_REPLICAS; i++) {
        if (running[i])
            continue;
        group_start(g, i, false);
        running[i] = true;
    }
    int next = wait_leader(g, running);
    bool ok = false;
    int64_t balance = lp_balance(&g->r[next], T_ACCOUNT, &ok);
    assert_true(ok);
    assert_int_equal(balance, T_FUNDS - 250);
    assert_int_equal(lp_deposit(&g->r[next], T_ACCOUNT, 77), 0);
    assert_int_equal(lp_balance(&g->r[next], T_ACCOUNT, &ok), T_FUNDS - 250 + 77);
    one_load(&g->r[next], &d, 260);
    assert_replicas_agree(g, running, next);
    qcledger__check_reply__free_unpacked(before, NULL);
    dev_free(&d);
    group_teardown(g);
    free(g);
}

/* ------------------------------------------------------------ a follower that lost its disk */

#define T_WIPE_LOADS 20 /* loads before the wipe, and again while it is down */

/* Stops replica i and empties its data dir, raft dir (inside it) included, as a new disk
 * mounted where the old one was. */
static void wipe_replica(group_t *g, int i)
{
    lp_stop(&g->r[i], SIGKILL);
    char data[LP_PATH_MAX];
    qctest_path(g->r[i].dir, "data", data);
    char *argv[] = {"rm", "-rf", "--", data, NULL}; /* even under QC_KEEP_TMP */
    assert_int_equal(qctest_run_argv(argv), 0);
    assert_int_equal(mkdir(data, 0700), 0);
}

/* A follower whose data dir and raft dir were wiped restarts with join = true and catches up
 * from the leader's snapshot (the threshold is 32 entries, so the log it missed was compacted)
 * and log: it checks ok with the leader's totals, and stopped, its LMDB has the leader's
 * digest. */
static void test_wiped_follower_catches_up(void **state)
{
    (void)state;
    group_t *g = calloc(1, sizeof *g);
    assert_non_null(g);
    bool running[T_REPLICAS];
    dev_t_ d;
    int leader = group_up(g, running, &d, "dev-r4");
    lp_t *L = &g->r[leader];
    int64_t loaded = 0;
    for (int i = 0; i < T_WIPE_LOADS; i++) {
        one_load(L, &d, 100 + i);
        loaded += 100 + i;
    }
    int lost = (leader + 1) % T_REPLICAS;
    wipe_replica(g, lost);
    running[lost] = false;
    for (int i = 0; i < T_WIPE_LOADS; i++) {
        one_load(L, &d, 200 + i);
        loaded += 200 + i;
    }
    /* The leader compacted its log past what the lost replica needs: it gets a snapshot. */
    Qcledger__ShardStatusReply *s = status_of(L);
    assert_non_null(s);
    uint64_t commit_before = s->commit_index;
    qcledger__shard_status_reply__free_unpacked(s, NULL);
    assert_true(commit_before > 2 * 32);
    group_start(g, lost, true);
    running[lost] = true;
    one_load(L, &d, 300);
    loaded += 300;
    bool ok = false;
    assert_int_equal(lp_balance(L, T_ACCOUNT, &ok), T_FUNDS - loaded);
    assert_true(ok);
    assert_replicas_agree(g, running, leader);
    char log[LP_PATH_MAX];
    qctest_path(g->r[lost].dir, "ledger.log", log);
    assert_true(qctest_file_contains(log, "ledger.fsm_snapshot_restored"));
    s = status_of(&g->r[lost]);
    assert_non_null(s);
    assert_int_equal(s->role, QCLEDGER__REPLICA_ROLE__ROLE_FOLLOWER);
    assert_int_equal(s->leader_id, leader + 1);
    qcledger__shard_status_reply__free_unpacked(s, NULL);
    /* Stopped, the rejoined replica's LMDB is the leader's, byte for byte in content. */
    uint8_t dg[T_REPLICAS][32];
    uint64_t idx[T_REPLICAS];
    for (int i = 0; i < T_REPLICAS; i++)
        assert_int_equal(WIFEXITED(lp_stop(&g->r[i], SIGTERM)), 1);
    digest_of(&g->r[leader], dg[leader], &idx[leader]);
    digest_of(&g->r[lost], dg[lost], &idx[lost]);
    assert_int_equal(idx[lost], idx[leader]);
    assert_memory_equal(dg[lost], dg[leader], 32);
    dev_free(&d);
    group_teardown(g);
    free(g);
}

/* ------------------------------------------------------------ the catch-up figure */

#define T_BENCH_LOADS_MAX 1000000
#define T_BENCH_CATCHUP_MS 600000 /* longest wait for the wiped replica */

/* Not a test: the seconds a follower wiped after n loads takes to catch up (restart with
 * join = true until its applied index reaches the leader's commit index), with the default
 * snapshot settings (4096, 1024), printed as one line. Returns the exit status. */
static int catchup_bench(long n)
{
    snapshot_threshold = "4096";
    snapshot_trailing = "1024";
    group_t *g = calloc(1, sizeof *g);
    assert_non_null(g);
    bool running[T_REPLICAS];
    dev_t_ d;
    int leader = group_up(g, running, &d, "dev-bench");
    lp_t *L = &g->r[leader];
    uint64_t t0 = ops_time_mono_ms();
    for (long i = 0; i < n; i++)
        one_load(L, &d, 1 + i % 50);
    double load_s = (double)(ops_time_mono_ms() - t0) / 1000.0;
    int lost = (leader + 1) % T_REPLICAS;
    wipe_replica(g, lost);
    Qcledger__ShardStatusReply *s = status_of(L);
    assert_non_null(s);
    uint64_t want = s->commit_index;
    qcledger__shard_status_reply__free_unpacked(s, NULL);
    uint64_t start = ops_time_mono_ms();
    group_start(g, lost, true);
    uint64_t started = ops_time_mono_ms();
    uint64_t applied = 0, end = start + T_BENCH_CATCHUP_MS;
    while (applied < want && ops_time_mono_ms() < end) {
        s = status_of(&g->r[lost]);
        if (s != NULL) {
            applied = s->applied_index;
            qcledger__shard_status_reply__free_unpacked(s, NULL);
        }
        if (applied < want)
            usleep(10 * 1000);
    }
    uint64_t done = ops_time_mono_ms();
    char log[LP_PATH_MAX];
    qctest_path(g->r[lost].dir, "ledger.log", log);
    bool snap = qctest_file_contains(log, "ledger.fsm_snapshot_restored");
    printf("catch-up: %ld loads (%.1f s to make), %llu entries; wiped replica %s after "
           "%.2f s (process up in %.2f s), %s\n",
           n, load_s, (unsigned long long)want, applied >= want ? "caught up" : "NOT caught up",
           (double)(done - start) / 1000.0, (double)(started - start) / 1000.0,
           snap ? "from a snapshot and the log" : "from the log alone");
    dev_free(&d);
    group_teardown(g);
    free(g);
    return applied >= want ? 0 : 1;
}

/* Flips one bit of the account's balance in replica lp's stopped LMDB, through the store, so
 * that its checksum is right and only a digest can tell. */
static void flip_balance(lp_t *lp)
{
    char data[LP_PATH_MAX];
    qctest_path(lp->dir, "data", data);
    ledger_store_t *st = NULL;
    MDB_txn *txn = NULL;
    ledger_account_t a;
    assert_int_equal(ledger_store_open(data, 256ull << 20, &st), 0);
    assert_int_equal(ledger_store_txn_begin(st, NULL, true, &txn), 0);
    assert_int_equal(ledger_store_account_get(st, txn, T_ACCOUNT, &a), 0);
    a.balance ^= 64;
    assert_int_equal(ledger_store_account_put(st, txn, &a), 0);
    assert_int_equal(ledger_store_txn_commit(txn), 0);
    ledger_store_close(&st);
}

/* Flips one bit of the checksum that ends the account's record in replica lp's stopped LMDB,
 * below the store (as a bad disk would): the next read or the scrub finds it corrupt. */
static void corrupt_account(lp_t *lp)
{
    char data[LP_PATH_MAX];
    qctest_path(lp->dir, "data", data);
    assert_int_equal(
        qctest_lmdb_flip(data, "accounts", T_ACCOUNT, strlen(T_ACCOUNT), QCTEST_LMDB_LAST, 0x01),
        0);
}

/* Replica repair with real processes (issue 21): one bit of the account's balance flipped in a
 * stopped follower's LMDB (a fault LMDB cannot see). Started again, the follower finds at the
 * leader's next digest op that its state differs and stops applying (shard_status: diverged),
 * while the leader and the other follower, whose digests agree, go on serving. Rebuilt as
 * the runbook says (its LMDB emptied, its Raft log and vote kept: libraft restores its own
 * snapshot and log), it rejoins and every replica agrees again. */
static void test_follower_diverged_stops_then_rebuilt(void **state)
{
    (void)state;
    group_t *g = calloc(1, sizeof *g);
    assert_non_null(g);
    bool running[T_REPLICAS];
    dev_t_ d;
    snprintf(g->digest_ms, sizeof g->digest_ms, "300"); /* group_setup keeps it */
    g->no_repair = true;                                /* the runbook's path: repair = false */
    int leader = group_up(g, running, &d, "dev-r4");
    one_load(&g->r[leader], &d, 310);
    wait_caught_up(g, running, leader);
    int bad = (leader + 1) % T_REPLICAS;
    lp_stop(&g->r[bad], SIGTERM);
    running[bad] = false;
    flip_balance(&g->r[bad]);
    group_start(g, bad, false);

    uint64_t end = ops_time_mono_ms() + T_LEADER_MS;
    bool diverged = false;
    while (!diverged && ops_time_mono_ms() < end) {
        Qcledger__ShardStatusReply *s = status_of(&g->r[bad]);
        diverged = s != NULL && s->diverged;
        if (s != NULL)
            qcledger__shard_status_reply__free_unpacked(s, NULL);
        if (!diverged)
            usleep(100 * 1000);
    }
    assert_true(diverged);
    /* The others compared the same digests and agree; the group serves on without it. */
    one_load(&g->r[leader], &d, 320);
    wait_caught_up(g, running, leader);
    for (int i = 0; i < T_REPLICAS; i++) {
        if (i == bad)
            continue;
        Qcledger__ShardStatusReply *s = status_of(&g->r[i]);
        assert_non_null(s);
        assert_false(s->diverged);
        assert_true(s->digest_checks > 0);
        qcledger__shard_status_reply__free_unpacked(s, NULL);
    }
    Qcledger__ShardStatusReply *s = status_of(&g->r[bad]);
    assert_non_null(s);
    uint64_t stuck = s->applied_index;
    assert_int_equal(s->diverged_index, stuck);
    qcledger__shard_status_reply__free_unpacked(s, NULL);
    usleep(500 * 1000);
    s = status_of(&g->r[bad]);
    assert_non_null(s);
    assert_int_equal(s->applied_index, stuck); /* nothing applies on the wrong state */
    qcledger__shard_status_reply__free_unpacked(s, NULL);

    /* Rebuilt: its LMDB emptied, its raft directory (log, vote, snapshots) kept. */
    lp_stop(&g->r[bad], SIGTERM);
    char data[LP_PATH_MAX], f[LP_PATH_MAX + 16];
    qctest_path(g->r[bad].dir, "data", data);
    snprintf(f, sizeof f, "%s/data.mdb", data);
    assert_int_equal(unlink(f), 0);
    snprintf(f, sizeof f, "%s/lock.mdb", data);
    unlink(f);
    group_start(g, bad, false);
    running[bad] = true;
    one_load(&g->r[leader], &d, 330);
    assert_replicas_agree(g, running, leader);
    s = status_of(&g->r[bad]);
    assert_non_null(s);
    assert_false(s->diverged);
    qcledger__shard_status_reply__free_unpacked(s, NULL);
    dev_free(&d);
    group_teardown(g);
    free(g);
}

/* Waits (bounded) until replica i rebuilt itself (shard_status: rebuilds, not diverged) and
 * then agreed with a later digest of the leader; returns the milliseconds since since_ms. */
static uint64_t wait_rebuilt(group_t *g, int i, uint64_t since_ms)
{
    uint64_t end = ops_time_mono_ms() + T_REPAIR_MS, rebuilt_ms = 0, rebuilt_at = 0;
    while (ops_time_mono_ms() < end) {
        Qcledger__ShardStatusReply *s = status_of(&g->r[i]);
        if (s != NULL && s->rebuilds > 0 && !s->diverged && rebuilt_ms == 0) {
            rebuilt_ms = ops_time_mono_ms() - since_ms;
            rebuilt_at = s->applied_index;
        }
        /* A digest compared after the rebuild and equal: its state is the leader's. */
        bool agreed =
            s != NULL && rebuilt_ms != 0 && !s->diverged && s->digest_ok_index > rebuilt_at;
        if (s != NULL)
            qcledger__shard_status_reply__free_unpacked(s, NULL);
        if (agreed)
            return rebuilt_ms;
        usleep(50 * 1000);
    }
    fail_msg("replica %d was not rebuilt within %d ms", i + 1, T_REPAIR_MS);
    return 0;
}

/* After a rebuild: writes go on, the rebuilt replica is a healthy follower of the same leader
 * with the same id, applied as far as the leader committed, checks ok with everyone's totals,
 * was rebuilt once (its metric too), and its /healthz is ok. */
static void assert_rebuilt_follower(group_t *g, bool *running, int leader, int bad, dev_t_ *d)
{
    one_load(&g->r[leader], d, 340);
    assert_replicas_agree(g, running, leader);
    Qcledger__ShardStatusReply *s = status_of(&g->r[bad]);
    assert_non_null(s);
    assert_int_equal(s->role, QCLEDGER__REPLICA_ROLE__ROLE_FOLLOWER);
    assert_int_equal(s->id, bad + 1);
    assert_int_equal(s->leader_id, leader + 1);
    assert_false(s->diverged);
    assert_int_equal(s->rebuilds, 1);
    qcledger__shard_status_reply__free_unpacked(s, NULL);
    assert_int_equal(qctest_metric(g->http_port[bad], "qc_ledger_replica_rebuilds_total"), 1);
    assert_int_equal(qctest_metric(g->http_port[bad], "qc_ledger_replica_diverged"), 0);
    assert_int_equal(qctest_http(g->http_port[bad], "GET", "/healthz", NULL, 0), 200);
    char log[LP_PATH_MAX];
    qctest_path(g->r[bad].dir, "ledger.log", log);
    assert_true(qctest_file_contains(log, "ledger.fsm_diverged"));
    assert_true(qctest_file_contains(log, "ledger.replica_rebuilt"));
    for (int i = 0; i < T_REPLICAS; i++)
        if (i != bad)
            assert_int_equal(qctest_metric(g->http_port[i], "qc_ledger_replica_rebuilds_total"), 0);
}

/* A group with digest ops every 300 ms whose follower (leader + offset) is stopped, damaged
 * by fault and started again: it rebuilds itself (wait_rebuilt) while loads go on, and is a
 * healthy follower afterwards (assert_rebuilt_follower). Prints the time the rebuild took. */
static void rebuild_case(void (*fault)(lp_t *), int offset, const char *dev_id, const char *what,
                         const char *event)
{
    group_t *g = calloc(1, sizeof *g);
    assert_non_null(g);
    bool running[T_REPLICAS];
    dev_t_ d;
    snprintf(g->digest_ms, sizeof g->digest_ms, "300"); /* group_setup keeps it */
    int leader = group_up(g, running, &d, dev_id);
    one_load(&g->r[leader], &d, 310);
    wait_caught_up(g, running, leader);
    int bad = (leader + offset) % T_REPLICAS;
    lp_stop(&g->r[bad], SIGTERM);
    fault(&g->r[bad]);
    uint64_t t0 = ops_time_mono_ms();
    group_start(g, bad, false);
    one_load(&g->r[leader], &d, 320); /* writes go on meanwhile */
    uint64_t ms = wait_rebuilt(g, bad, t0);
    printf("repair: a follower with %s, restarted, rebuilt itself %.2f s later\n", what,
           (double)ms / 1000.0);
    assert_rebuilt_follower(g, running, leader, bad, &d);
    char log[LP_PATH_MAX];
    qctest_path(g->r[bad].dir, "ledger.log", log);
    assert_true(qctest_file_contains(log, event)); /* what it found */
    dev_free(&d);
    group_teardown(g);
    free(g);
}

/* Replica repair with real processes, by itself (issue 21): one bit of the account's balance
 * flipped in a stopped follower's LMDB, its checksum right. Started again, the follower finds
 * at the leader's next digest op that its state differs, fetches the other follower's
 * snapshot (which agreed with the same digest) and rebuilds its state under its own Raft id,
 * its log and vote kept: no operator. */
static void test_follower_diverged_rebuilds_itself(void **state)
{
    (void)state;
    rebuild_case(flip_balance, 1, "dev-r5", "a flipped balance", "differs from the leader");
}

/* The same for a record whose checksum fails on a follower (its scrub, or the next read):
 * it stops applying, is rebuilt from a healthy follower, and no longer reports a corrupt
 * store (its /healthz is ok again). */
static void test_follower_corrupt_rebuilds_itself(void **state)
{
    (void)state;
    rebuild_case(corrupt_account, 2, "dev-r6", "a corrupt record", "ledger.corrupt_record");
}

/* ------------------------------------------------------------ a replica added online */

#define T_GROW_LOADS 40     /* loads before the fourth replica: past a snapshot (threshold 32) */
#define T_CHANGE_MS "60000" /* qcctl's --timeout-ms for a membership change */
#define T_OUT_MAX 16384

static const char *qcctl_bin;

/* Runs qcctl against the group's shard (every replica set up, as a ',' list) with args
 * (NULL-terminated); its stdout in out. Returns its exit code. */
static int group_qcctl(group_t *g, char out[T_OUT_MAX], ...)
{
    char conf[LP_PATH_MAX], admin[LP_PATH_MAX], text[2048] = "ledger_endpoints = ";
    qctest_path(g->r[0].dir, "qcctl.conf", conf);
    qctest_path(g->r[0].dir, "admin.key", admin);
    for (int i = 0; i < g->n; i++) {
        strncat(text, i > 0 ? "," : "", sizeof text - strlen(text) - 1);
        strncat(text, g->r[i].endpoint, sizeof text - strlen(text) - 1);
    }
    char tail[2 * LP_PATH_MAX];
    snprintf(tail, sizeof tail, "\nledger_public_key = %s\ncurve_key = %s\n",
             g->r[0].server.public_z85, admin);
    strncat(text, tail, sizeof text - strlen(text) - 1);
    assert_int_equal(qctest_file_write(conf, text), 0);
    char *argv[QCTEST_ARGS_MAX];
    int n = 0;
    argv[n++] = (char *)qcctl_bin;
    argv[n++] = "--config";
    argv[n++] = conf;
    va_list ap;
    va_start(ap, out);
    for (const char *a = va_arg(ap, const char *); a != NULL; a = va_arg(ap, const char *)) {
        assert_true(n < QCTEST_ARGS_MAX - 1);
        argv[n++] = (char *)a;
    }
    va_end(ap);
    argv[n] = NULL;
    char out_path[LP_PATH_MAX], err_path[LP_PATH_MAX], err[T_OUT_MAX];
    qctest_path(g->r[0].dir, "qcctl.out", out_path);
    qctest_path(g->r[0].dir, "qcctl.err", err_path);
    int rc = qctest_run(&(qctest_cmd_t){.argv = argv,
                                        .out_path = out_path,
                                        .err_path = err_path,
                                        .truncate = true,
                                        .stdin_null = true});
    qctest_file_read(out_path, out, T_OUT_MAX);
    qctest_file_read(err_path, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "qcctl %s %s: exit %d: %s%s", argv[3], argv[4], rc, out, err);
    return rc;
}

/* One more replica, set up as the runbook says: its keys, its line in every replicas_file
 * (the running replicas re-read theirs on SIGHUP), started empty with join = true. */
static int group_grow(group_t *g, bool *running)
{
    assert_true(g->n < T_SLOTS);
    int i = g->n;
    assert_int_equal(lp_setup_like(&g->r[i], ledger_bin, T_PORT(i), &g->r[0]), 0);
    g->n = i + 1;
    g->raft_port[i] = lp_free_port(T_PORT(T_RAFT_PORT_OFFSET + i));
    g->http_port[i] = lp_free_port(T_PORT(T_HTTP_PORT_OFFSET + i));
    char p[LP_PATH_MAX];
    qctest_path(g->r[i].dir, "raft.key", p);
    assert_int_equal(proto_curve_keypair_create(p, &g->raft_keys[i]), 0);
    write_replicas_file(g);
    for (int k = 0; k < i; k++)
        if (running[k])
            assert_int_equal(kill(g->r[k].pid, SIGHUP), 0);
    group_start(g, i, true);
    running[i] = true;
    return i;
}

/* The leader's configuration: how many members, how many of them voters, and whether id is
 * one of them. */
static void configuration_of(lp_t *leader, size_t *members, size_t *voters, uint64_t id,
                             bool *has_id)
{
    Qcledger__ShardStatusReply *s = status_of(leader);
    assert_non_null(s);
    assert_int_equal(s->role, QCLEDGER__REPLICA_ROLE__ROLE_LEADER);
    *members = s->n_replicas;
    *voters = 0;
    *has_id = false;
    for (size_t k = 0; k < s->n_replicas; k++) {
        *voters += s->replicas[k]->voter ? 1 : 0;
        *has_id = *has_id || s->replicas[k]->id == id;
    }
    qcledger__shard_status_reply__free_unpacked(s, NULL);
}

/* A fourth replica added online to a group of three real processes, while a writer loads
 * through the group: `qcctl shard add-replica` answers once it is a voter; shard status shows
 * four voters with lag 0; it checks with the leader's totals. Then one original replica is
 * killed: with four voters the majority is three, so every write from then on is committed
 * with the new replica's vote. `qcctl shard remove-replica` takes the dead one out, the three
 * left serve and agree, and stopped, the new replica's LMDB has the leader's digest. */
static void test_replica_added_online(void **state)
{
    (void)state;
    group_t *g = calloc(1, sizeof *g);
    assert_non_null(g);
    bool running[T_SLOTS] = {false};
    dev_t_ d;
    int leader = group_up(g, running, &d, "dev-r5");
    lp_t *L = &g->r[leader];
    int64_t loaded = 0;
    for (int i = 0; i < T_GROW_LOADS; i++) {
        one_load(L, &d, 100 + i);
        loaded += 100 + i;
    }
    int added = group_grow(g, running);
    writer_t *w = calloc(1, sizeof *w);
    assert_non_null(w);
    w->g = g;
    w->d = &d;
    w->cli = group_client(g, &g->r[0].gateway);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, writer_main, w), 0);
    char out[T_OUT_MAX], id[16], raft_address[64];
    snprintf(id, sizeof id, "%d", added + 1);
    snprintf(raft_address, sizeof raft_address, "127.0.0.1:%d", g->raft_port[added]);
    uint64_t t0 = ops_time_mono_ms();
    int rc = group_qcctl(g, out, "--timeout-ms", T_CHANGE_MS, "shard", "add-replica", "--shard",
                         "0", "--id", id, "--raft-address", raft_address, "--endpoint",
                         g->r[added].endpoint, "--raft-key", g->raft_keys[added].public_z85, NULL);
    uint64_t t_answer = ops_time_mono_ms() - t0;
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "added"));
    size_t members = 0, voters = 0;
    bool has = false;
    configuration_of(L, &members, &voters, (uint64_t)added + 1, &has);
    assert_int_equal(members, 4);
    assert_int_equal(voters, 4);
    assert_true(has);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(w->failed, 0);
    int acked = atomic_load(&w->acked);
    for (int i = 0; i < acked; i++)
        loaded += w->amount[i];
    wait_caught_up(g, running, leader);
    uint64_t t_lag0 = ops_time_mono_ms() - t0;
    /* As an operator sees it: every replica answers (exit 0) with lag 0. */
    assert_int_equal(group_qcctl(g, out, "--json", "shard", "status", "--shard", "0", NULL), 0);
    int lag0 = 0;
    for (const char *p = out; (p = strstr(p, "\"lag\":0,")) != NULL; p++)
        lag0++;
    assert_int_equal(lag0, 4);
    Qcledger__ShardStatusReply *s = status_of(L);
    assert_non_null(s);
    fprintf(stderr,
            "figure: add-replica after %d loads (%llu entries), %d more during it: qcctl "
            "answered in %.2f s, replica %d a voter with lag 0 %.2f s after qcctl started\n",
            T_GROW_LOADS, (unsigned long long)s->commit_index, acked, (double)t_answer / 1000.0,
            added + 1, (double)t_lag0 / 1000.0);
    qcledger__shard_status_reply__free_unpacked(s, NULL);
    assert_replicas_agree(g, running, leader);

    /* One original replica lost: three of four voters left, the new one among them. */
    int lost = (leader + 1) % T_REPLICAS;
    lp_stop(&g->r[lost], SIGKILL);
    running[lost] = false;
    for (int i = 0; i < 3; i++) {
        one_load(L, &d, 500 + i);
        loaded += 500 + i;
    }
    bool ok = false;
    assert_int_equal(lp_balance(L, T_ACCOUNT, &ok), T_FUNDS - loaded);
    assert_true(ok);
    snprintf(id, sizeof id, "%d", lost + 1);
    assert_int_equal(group_qcctl(g, out, "--timeout-ms", T_CHANGE_MS, "shard", "remove-replica",
                                 "--shard", "0", "--id", id, NULL),
                     0);
    configuration_of(L, &members, &voters, (uint64_t)lost + 1, &has);
    assert_int_equal(members, 3);
    assert_int_equal(voters, 3);
    assert_false(has);
    one_load(L, &d, 600);
    loaded += 600;
    assert_int_equal(lp_balance(L, T_ACCOUNT, &ok), T_FUNDS - loaded);
    assert_replicas_agree(g, running, leader);
    uint8_t dg[T_SLOTS][32];
    uint64_t idx[T_SLOTS];
    for (int i = 0; i < g->n; i++)
        if (running[i])
            assert_int_equal(WIFEXITED(lp_stop(&g->r[i], SIGTERM)), 1);
    digest_of(&g->r[leader], dg[leader], &idx[leader]);
    digest_of(&g->r[added], dg[added], &idx[added]);
    assert_int_equal(idx[added], idx[leader]);
    assert_memory_equal(dg[added], dg[leader], 32);
    proto_rpc_client_destroy(&w->cli);
    free(w);
    dev_free(&d);
    group_teardown(g);
    free(g);
}

/* Not a test: the seconds `qcctl shard add-replica` takes to make a new, empty replica a voter
 * with lag 0 after n loads, with the default snapshot settings (4096, 1024), printed as one
 * line. Returns the exit status. */
static int add_bench(long n)
{
    snapshot_threshold = "4096";
    snapshot_trailing = "1024";
    group_t *g = calloc(1, sizeof *g);
    assert_non_null(g);
    bool running[T_SLOTS] = {false};
    dev_t_ d;
    int leader = group_up(g, running, &d, "dev-add");
    uint64_t t0 = ops_time_mono_ms();
    for (long i = 0; i < n; i++)
        one_load(&g->r[leader], &d, 1 + i % 50);
    double load_s = (double)(ops_time_mono_ms() - t0) / 1000.0;
    int added = group_grow(g, running);
    char out[T_OUT_MAX], id[16], raft_address[64];
    snprintf(id, sizeof id, "%d", added + 1);
    snprintf(raft_address, sizeof raft_address, "127.0.0.1:%d", g->raft_port[added]);
    uint64_t start = ops_time_mono_ms();
    int rc = group_qcctl(g, out, "--timeout-ms", "600000", "shard", "add-replica", "--shard", "0",
                         "--id", id, "--raft-address", raft_address, "--endpoint",
                         g->r[added].endpoint, "--raft-key", g->raft_keys[added].public_z85, NULL);
    uint64_t answered = ops_time_mono_ms();
    Qcledger__ShardStatusReply *s = status_of(&g->r[leader]);
    assert_non_null(s);
    uint64_t want = s->commit_index, applied = 0, end = answered + T_BENCH_CATCHUP_MS;
    qcledger__shard_status_reply__free_unpacked(s, NULL);
    while (rc == 0 && applied < want && ops_time_mono_ms() < end) {
        s = status_of(&g->r[added]);
        if (s != NULL) {
            applied = s->applied_index;
            qcledger__shard_status_reply__free_unpacked(s, NULL);
        }
        if (applied < want)
            usleep(10 * 1000);
    }
    uint64_t done = ops_time_mono_ms();
    s = status_of(&g->r[leader]);
    assert_non_null(s);
    printf("add-replica: %ld loads (%.1f s to make), %llu entries; qcctl %s in %.2f s, replica "
           "%d a voter, applied up to the leader's commit %.2f s after qcctl started\n",
           n, load_s, (unsigned long long)s->commit_index, rc == 0 ? "answered" : "FAILED",
           (double)(answered - start) / 1000.0, added + 1, (double)(done - start) / 1000.0);
    rc = rc == 0 && applied >= want ? 0 : 1;
    qcledger__shard_status_reply__free_unpacked(s, NULL);
    dev_free(&d);
    group_teardown(g);
    free(g);
    return rc;
}

/* A leader one of whose records fails its checksum while it leads (flipped below LMDB under
 * the running process; its scrub finds it) hands the leadership to another voter instead of
 * stopping the group, and is then rebuilt as a follower like any other. */
static void test_leader_corrupt_steps_down_and_rebuilds(void **state)
{
    (void)state;
    group_t *g = calloc(1, sizeof *g);
    assert_non_null(g);
    bool running[T_REPLICAS];
    dev_t_ d;
    snprintf(g->digest_ms, sizeof g->digest_ms, "300");
    int old = group_up(g, running, &d, "dev-r7");
    one_load(&g->r[old], &d, 310);
    wait_caught_up(g, running, old);
    uint64_t t0 = ops_time_mono_ms();
    corrupt_account(&g->r[old]); /* LMDB lets a second process write beside the ledger */
    int leader = old;
    uint64_t end = t0 + T_LEADER_MS;
    while (leader == old && ops_time_mono_ms() < end) {
        usleep(100 * 1000);
        leader = wait_leader(g, running);
    }
    assert_int_not_equal(leader, old);
    uint64_t ms = wait_rebuilt(g, old, t0);
    printf("repair: a leader with a corrupt record stepped down and was rebuilt %.2f s later\n",
           (double)ms / 1000.0);
    assert_rebuilt_follower(g, running, leader, old, &d);
    char log[LP_PATH_MAX];
    qctest_path(g->r[old].dir, "ledger.log", log);
    assert_true(qctest_file_contains(log, "ledger.leader_stepping_down"));
    assert_true(qctest_file_contains(log, "ledger.corrupt_record"));
    dev_free(&d);
    group_teardown(g);
    free(g);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PATH-TO-qc-ledger [--catchup N | --add N]\n", argv[0]);
        return 2;
    }
    ledger_bin = argv[1];
    qcctl_bin = getenv("QC_QCCTL") != NULL ? getenv("QC_QCCTL") : "qcctl";
    ports = qctest_ports(17400, 60);
    signal(SIGPIPE, SIG_IGN);
    if (argc == 4 && (strcmp(argv[2], "--catchup") == 0 || strcmp(argv[2], "--add") == 0)) {
        long n = strtol(argv[3], NULL, 10);
        if (n < 1 || n > T_BENCH_LOADS_MAX) {
            fprintf(stderr, "%s N: 1..%d loads\n", argv[2], T_BENCH_LOADS_MAX);
            return 2;
        }
        return strcmp(argv[2], "--add") == 0 ? add_bench(n) : catchup_bench(n);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_three_replicas_serve_and_agree, teardown),
        cmocka_unit_test_teardown(test_leader_killed_during_writes, teardown),
        cmocka_unit_test_teardown(test_no_quorum_refuses_then_recovers, teardown),
        cmocka_unit_test_teardown(test_wiped_follower_catches_up, teardown),
        cmocka_unit_test_teardown(test_follower_diverged_stops_then_rebuilt, teardown),
        cmocka_unit_test_teardown(test_follower_diverged_rebuilds_itself, teardown),
        cmocka_unit_test_teardown(test_follower_corrupt_rebuilds_itself, teardown),
        cmocka_unit_test_teardown(test_leader_corrupt_steps_down_and_rebuilds, teardown),
        cmocka_unit_test_teardown(test_replica_added_online, teardown),
    };
    /* T_FILTER=name runs one test (cmocka's pattern), for a look at one failure. */
    if (getenv("T_FILTER") != NULL)
        cmocka_set_test_filter(getenv("T_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
