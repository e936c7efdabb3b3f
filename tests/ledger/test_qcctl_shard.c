/* test_qcctl_shard.c - qcctl's replica verbs (shard status, add-replica, remove-replica,
 * check --replicas) against a shard of fake replicas: proto_rpc servers in a thread of the
 * test that answer as a follower, a leader and (the third) not at all.
 *
 * The fakes let the test pin every figure qcctl prints (roles, terms, indexes, lag) and see
 * exactly what reached the leader, independently of the real replica mode. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "ledger.pb-c.h"
#include "ops_log.h"
#include "proto_decode.h"
#include "proto_rpc.h"
#include "qc_error.h"
#include "qctest_fs.h"
#include "qctest_port.h"
#include "qctest_proc.h"

#define T_OUT_MAX 16384
#define T_POLL_MS 20
#define T_REPLICAS 3 /* listed; the third never runs */

static const char *qcctl_bin;
static qctest_ports_t ports;

typedef struct fake_shard {
    void *ctx;
    proto_rpc_server_t *srv[2]; /* [0] follower (replica 1), [1] leader (replica 2) */
    char ep[T_REPLICAS][QCTEST_ENDPOINT_MAX];
    atomic_bool stop;
    atomic_int follower_changes; /* add/remove_replica that reached the follower */
    atomic_int adds, removes;    /* ... that reached the leader */
    atomic_ullong last_id;
    char last_key[PROTO_CURVE_KEY_Z85_LEN + 1]; /* written before adds is incremented */
} fake_shard_t;

/* The status each fake replica reports: term 3, the leader's commit index 10. */
static void fake_status(const fake_shard_t *fs, bool leader, Qcledger__ShardStatusReply *st,
                        Qcledger__ReplicaInfo infos[], Qcledger__ReplicaInfo *ptrs[])
{
    qcledger__shard_status_reply__init(st);
    st->shard = 0;
    st->id = leader ? 2 : 1;
    st->role = leader ? QCLEDGER__REPLICA_ROLE__ROLE_LEADER : QCLEDGER__REPLICA_ROLE__ROLE_FOLLOWER;
    st->term = 3;
    st->commit_index = 10;
    st->applied_index = leader ? 10 : 7;
    st->last_index = leader ? 11 : 10;
    st->leader_id = 2;
    st->leader_endpoint = (char *)fs->ep[1];
    static const char *const raft[T_REPLICAS] = {"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"};
    for (int i = 0; i < T_REPLICAS; i++) {
        qcledger__replica_info__init(&infos[i]);
        infos[i].id = (uint64_t)i + 1;
        infos[i].raft_address = (char *)raft[i];
        infos[i].endpoint = (char *)fs->ep[i];
        infos[i].voter = true;
        ptrs[i] = &infos[i];
    }
    st->n_replicas = T_REPLICAS;
    st->replicas = ptrs;
}

static void reply_msg(proto_rpc_server_t *srv, proto_rpc_request_t *req, const ProtobufCMessage *m)
{
    uint8_t *body = NULL;
    size_t len = 0;
    assert_int_equal(proto_pack(m, &body, &len), 0);
    assert_int_equal(proto_rpc_server_reply(srv, req, 0, NULL, body, len), 0);
    free(body);
}

static void fake_serve(fake_shard_t *fs, int which, proto_rpc_request_t *req)
{
    proto_rpc_server_t *srv = fs->srv[which];
    bool leader = which == 1;
    Qcledger__ShardStatusReply st;
    Qcledger__ReplicaInfo infos[T_REPLICAS];
    Qcledger__ReplicaInfo *ptrs[T_REPLICAS];
    fake_status(fs, leader, &st, infos, ptrs);
    bool change =
        strcmp(req->method, "add_replica") == 0 || strcmp(req->method, "remove_replica") == 0;
    if (strcmp(req->method, "shard_status") == 0) {
        reply_msg(srv, req, &st.base);
    } else if (strcmp(req->method, "check") == 0) {
        Qcledger__CheckReply c = QCLEDGER__CHECK_REPLY__INIT;
        c.shard = 0;
        c.shard_count = 1;
        c.ok = true;
        c.loads = leader ? 5 : 4;
        reply_msg(srv, req, &c.base);
    } else if (change && !leader) {
        atomic_fetch_add(&fs->follower_changes, 1);
        assert_int_equal(proto_rpc_server_reply_not_leader(srv, req, fs->ep[1]), 0);
    } else if (strcmp(req->method, "add_replica") == 0) {
        Qcledger__AddReplicaRequest *a =
            qcledger__add_replica_request__unpack(NULL, req->body_len, req->body);
        assert_non_null(a);
        snprintf(fs->last_key, sizeof fs->last_key, "%s", a->raft_public_key);
        atomic_store(&fs->last_id, a->id);
        atomic_fetch_add(&fs->adds, 1);
        qcledger__add_replica_request__free_unpacked(a, NULL);
        Qcledger__ReplicaChangeReply r = QCLEDGER__REPLICA_CHANGE_REPLY__INIT;
        r.status = &st;
        reply_msg(srv, req, &r.base);
    } else if (strcmp(req->method, "remove_replica") == 0) {
        Qcledger__RemoveReplicaRequest *m =
            qcledger__remove_replica_request__unpack(NULL, req->body_len, req->body);
        assert_non_null(m);
        atomic_store(&fs->last_id, m->id);
        atomic_fetch_add(&fs->removes, 1);
        qcledger__remove_replica_request__free_unpacked(m, NULL);
        Qcledger__ReplicaChangeReply r = QCLEDGER__REPLICA_CHANGE_REPLY__INIT;
        r.status = &st;
        reply_msg(srv, req, &r.base);
    } else {
        assert_int_equal(proto_rpc_server_reply(srv, req, QC_EMETHOD, NULL, NULL, 0), 0);
    }
}

static void *fake_thread(void *arg)
{
    fake_shard_t *fs = arg;
    while (!atomic_load(&fs->stop)) {
        zmq_pollitem_t items[2] = {{proto_rpc_server_socket(fs->srv[0]), 0, ZMQ_POLLIN, 0},
                                   {proto_rpc_server_socket(fs->srv[1]), 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 2, T_POLL_MS) < 0)
            break;
        for (int i = 0; i < 2; i++) {
            proto_rpc_request_t *req = NULL;
            while (proto_rpc_server_recv(fs->srv[i], 0, &req) == 0) {
                fake_serve(fs, i, req);
                proto_rpc_request_destroy(&req);
            }
        }
    }
    return NULL;
}

typedef struct fixture {
    char dir[QCTEST_PATH_MAX];
    char conf[QCTEST_PATH_MAX];
    proto_curve_keypair_t server, admin;
    fake_shard_t fs;
    pthread_t thread;
    char out[T_OUT_MAX];
    char err[T_OUT_MAX];
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_int_equal(qctest_dir_new("qc-test-qcctl-shard", f->dir), 0);
    char path[QCTEST_PATH_MAX], admin_path[QCTEST_PATH_MAX], allow[QCTEST_PATH_MAX];
    qctest_path(f->dir, "ledger.key", path);
    assert_int_equal(proto_curve_keypair_create(path, &f->server), 0);
    qctest_path(f->dir, "admin.key", admin_path);
    assert_int_equal(proto_curve_keypair_create(admin_path, &f->admin), 0);
    qctest_path(f->dir, "admins.allow", allow);
    char text[128];
    snprintf(text, sizeof text, "%s\n", f->admin.public_z85);
    assert_int_equal(qctest_file_write(allow, text), 0);
    fake_shard_t *fs = &f->fs;
    fs->ctx = zmq_ctx_new();
    assert_non_null(fs->ctx);
    for (int i = 0; i < T_REPLICAS; i++)
        qctest_endpoint(qctest_port(&ports, i), fs->ep[i]);
    for (int i = 0; i < 2; i++) {
        proto_rpc_server_config_t cfg = {
            .service = "ledger", .endpoint = fs->ep[i], .keys = &f->server, .allow_path = allow};
        assert_int_equal(proto_rpc_server_new(fs->ctx, &cfg, &fs->srv[i]), 0);
    }
    assert_int_equal(pthread_create(&f->thread, NULL, fake_thread, fs), 0);
    qctest_path(f->dir, "qcctl.conf", f->conf);
    char conf[1024];
    snprintf(conf, sizeof conf,
             "ledger_endpoints = %s,%s,%s\nledger_public_key = %s\ncurve_key = %s\n"
             "timeout_ms = 3000\n",
             fs->ep[0], fs->ep[1], fs->ep[2], f->server.public_z85, admin_path);
    assert_int_equal(qctest_file_write(f->conf, conf), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    atomic_store(&f->fs.stop, true);
    pthread_join(f->thread, NULL);
    for (int i = 0; i < 2; i++)
        proto_rpc_server_destroy(&f->fs.srv[i]);
    zmq_ctx_term(f->fs.ctx);
    proto_curve_keypair_wipe(&f->server);
    proto_curve_keypair_wipe(&f->admin);
    qctest_dir_remove(f->dir);
    free(f);
    return 0;
}

/* Runs qcctl --config <conf> with args (NULL-terminated); stdout into f->out, stderr into
 * f->err. Returns its exit code. */
static int qcctl(fixture_t *f, ...)
{
    char *argv[QCTEST_ARGS_MAX];
    int n = 0;
    argv[n++] = (char *)qcctl_bin;
    argv[n++] = "--config";
    argv[n++] = f->conf;
    va_list ap;
    va_start(ap, f);
    for (const char *a = va_arg(ap, const char *); a != NULL; a = va_arg(ap, const char *)) {
        assert_true(n < QCTEST_ARGS_MAX - 1);
        argv[n++] = (char *)a;
    }
    va_end(ap);
    argv[n] = NULL;
    char out_path[QCTEST_PATH_MAX], err_path[QCTEST_PATH_MAX];
    qctest_path(f->dir, "qcctl.out", out_path);
    qctest_path(f->dir, "qcctl.err", err_path);
    int rc = qctest_run(&(qctest_cmd_t){.argv = argv,
                                        .out_path = out_path,
                                        .err_path = err_path,
                                        .truncate = true,
                                        .stdin_null = true});
    qctest_file_read(out_path, f->out, sizeof f->out);
    qctest_file_read(err_path, f->err, sizeof f->err);
    return rc;
}

/* 1. Status asks every replica on its own: figures per replica, lag against the leader's
 * commit index, the silent third shown unreachable (exit 3), the leader's configuration. */
static void test_status(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(qcctl(f, "--json", "shard", "status", NULL), 3);
    assert_non_null(strstr(f->out, "{\"shards\":[{\"shard\":0,\"leader_id\":2,"));
    assert_non_null(strstr(f->out, "\"reachable\":true,\"id\":1,\"role\":\"follower\",\"term\":3,"
                                   "\"commit_index\":10,\"applied_index\":7,\"last_index\":10,"
                                   "\"lag\":3,"));
    assert_non_null(strstr(f->out, "\"reachable\":true,\"id\":2,\"role\":\"leader\",\"term\":3,"
                                   "\"commit_index\":10,\"applied_index\":10,\"last_index\":11,"
                                   "\"lag\":0,"));
    char want[256];
    snprintf(want, sizeof want, "{\"endpoint\":\"%s\",\"reachable\":false,", f->fs.ep[2]);
    assert_non_null(strstr(f->out, want));
    assert_non_null(
        strstr(f->out, "\"configuration\":[{\"id\":1,\"raft_address\":\"127.0.0.1:1\""));
    assert_non_null(strstr(f->out, "],\"ok\":false}"));
    /* The text form says the same. */
    assert_int_equal(qcctl(f, "shard", "status", "--shard", "0", NULL), 3);
    assert_non_null(strstr(f->out, "shard 0: leader 2, term 3"));
    assert_non_null(strstr(f->out, "unreachable"));
    snprintf(want, sizeof want, "%-4s %-11s %-6s %-10s %-10s %-8s %s", "1", "follower", "3", "10",
             "7", "3", f->fs.ep[0]);
    assert_non_null(strstr(f->out, want));
    /* A shard the configuration does not list is a usage error. */
    assert_int_equal(qcctl(f, "shard", "status", "--shard", "1", NULL), 2);
    assert_non_null(strstr(f->err, "lists 1 shard"));
}

/* 2. add-replica and remove-replica reach the leader (through a follower's redirect when the
 * client starts there) and nothing else changes anything; bad arguments are refused before
 * any call, naming what is wrong. */
static void test_membership(void **state)
{
    fixture_t *f = *state;
    char ep[QCTEST_ENDPOINT_MAX];
    qctest_endpoint(qctest_port(&ports, 5), ep);
    const char *key = f->admin.public_z85; /* any well-formed Z85 public key */
    assert_int_equal(qcctl(f, "shard", "add-replica", "--shard", "0", "--id", "4", "--raft-address",
                           "127.0.0.1:9", "--endpoint", ep, "--raft-key", key, NULL),
                     0);
    assert_int_equal(atomic_load(&f->fs.adds), 1);
    assert_int_equal(atomic_load(&f->fs.last_id), 4);
    assert_string_equal(f->fs.last_key, key);
    assert_non_null(strstr(f->out, "shard 0: replica 4 added"));
    assert_int_equal(
        qcctl(f, "--json", "shard", "remove-replica", "--shard", "0", "--id", "3", NULL), 0);
    assert_int_equal(atomic_load(&f->fs.removes), 1);
    assert_int_equal(atomic_load(&f->fs.last_id), 3);
    assert_non_null(strstr(f->out, "{\"shard\":0,\"removed\":3,\"status\":{\"id\":2,"));

    /* Refused before any call. */
    assert_int_equal(qcctl(f, "shard", "add-replica", "--shard", "0", "--id", "4", NULL), 2);
    assert_non_null(strstr(f->err, "--raft-address"));
    assert_int_equal(qcctl(f, "shard", "add-replica", "--shard", "0", "--id", "4", "--raft-address",
                           "127.0.0.1:9", "--endpoint", ep, "--raft-key", "not-a-key", NULL),
                     2);
    assert_non_null(strstr(f->err, "--raft-key"));
    assert_int_equal(qcctl(f, "shard", "add-replica", "--shard", "0", "--id", "4", "--raft-address",
                           "nocolon", "--endpoint", ep, "--raft-key", key, NULL),
                     2);
    assert_int_equal(qcctl(f, "shard", "remove-replica", "--id", "3", NULL), 2);
    assert_non_null(strstr(f->err, "--shard S"));
    assert_int_equal(qcctl(f, "shard", "remove-replica", "--shard", "0", NULL), 2);
    assert_int_equal(qcctl(f, "shard", "frobnicate", NULL), 2);
    assert_int_equal(atomic_load(&f->fs.adds), 1);
    assert_int_equal(atomic_load(&f->fs.removes), 1);

    /* --help on each verb is the shard page. */
    assert_int_equal(qcctl(f, "shard", "--help", NULL), 0);
    assert_non_null(strstr(f->out, "qcctl shard add-replica --shard S --id N"));
    assert_int_equal(qcctl(f, "shard", "status", "--help", NULL), 0);
    assert_non_null(strstr(f->out, "qcctl shard status [--shard S]"));
    assert_int_equal(qcctl(f, "shard", "remove-replica", "-h", NULL), 0);
    assert_non_null(strstr(f->out, "qcctl shard remove-replica"));
}

/* 3. check --replicas asks each replica for its own check: one element per endpoint. */
static void test_check_replicas(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(qcctl(f, "--timeout-ms", "1500", "check", "--replicas", NULL), 3);
    char want[256];
    snprintf(want, sizeof want, "{\"shard\":0,\"endpoint\":\"%s\",\"ok\":true,", f->fs.ep[0]);
    assert_non_null(strstr(f->out, want));
    assert_non_null(strstr(f->out, "\"loads\":4,"));
    assert_non_null(strstr(f->out, "\"loads\":5,"));
    snprintf(want, sizeof want, "{\"shard\":0,\"endpoint\":\"%s\",\"ok\":false,", f->fs.ep[2]);
    assert_non_null(strstr(f->out, want));
    /* Without --replicas: one element for the shard, no endpoint. */
    assert_int_equal(qcctl(f, "check", NULL), 0);
    assert_null(strstr(f->out, "\"endpoint\""));
    assert_non_null(strstr(f->out, "\"ok\":true}"));
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test_qcctl_shard PATH-TO-qcctl\n");
        return 2;
    }
    qcctl_bin = argv[1];
    ports = qctest_ports(17480, 20);
    ops_log_init("test_qcctl_shard", "0", OPS_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_membership, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check_replicas, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
