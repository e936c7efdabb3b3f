/* test_rpc.c - proto_rpc end to end: real server processes, real TCP, CURVE and ZAP.
 *
 * argv[1] is the rpc_echo_server binary. Each test starts its servers as child processes on
 * its own ports of the test's range (qc_test_ports: 17100-17299) and kills them in its teardown,
 * even when an assertion failed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <zmq.h>

#include "ops_log.h"
#include "ops_metrics.h"
#include "ops_signal.h"
#include "ops_time.h"
#include "proto_rpc.h"
#include "qc_error.h"
#include "qctest_fs.h"
#include "qctest_port.h"
#include "qctest_proc.h"

#define T_CHILDREN_MAX 8
#define T_PATH_MAX QCTEST_PATH_MAX
#define T_READY_MS 8000    /* a fresh server must answer within this */
#define T_CALL_MS 2000     /* an ordinary call */
#define T_ASYNC_CALLS 200  /* calls in flight at once in the async test */
#define T_LOG_WAIT_MS 3000 /* a log line must appear within this */

static const char *echo_server_bin;

typedef struct fixture {
    char dir[T_PATH_MAX];
    char server_keys[T_PATH_MAX];
    char client_keys[T_PATH_MAX];
    char stranger_keys[T_PATH_MAX];
    char allow[T_PATH_MAX];
    proto_curve_keypair_t server, client, stranger;
    pid_t children[T_CHILDREN_MAX];
    proto_rpc_client_t *clients[T_CHILDREN_MAX]; /* destroyed in teardown */
    void *raws[T_CHILDREN_MAX];                  /* raw sockets, closed in teardown */
    void *ctx;
} fixture_t;

/* ---------------------------------------------------------------- helpers */

static void path_in(const fixture_t *f, const char *name, char *out)
{
    int n = snprintf(out, T_PATH_MAX, "%s/%s", f->dir, name);
    assert_true(n > 0 && n < T_PATH_MAX);
}

static void write_text(const char *path, const char *text)
{
    char tmp[T_PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *fp = fopen(tmp, "w");
    assert_non_null(fp);
    assert_true(fputs(text, fp) >= 0);
    assert_int_equal(fclose(fp), 0);
    assert_int_equal(rename(tmp, path), 0);
}

static void endpoint_of(int port, char *out, size_t cap)
{
    assert_true(cap >= QCTEST_ENDPOINT_MAX);
    qctest_endpoint(port, out);
}

/* Port i of the test's range, and its endpoint (a string that lives as long as the test). */
static qctest_ports_t ports;
#define T_PORTS_USED 28
#define T_PORT(i) qctest_port(&ports, (i))
static const char *endpoint_at(int i)
{
    static char eps[T_PORTS_USED][QCTEST_ENDPOINT_MAX];
    assert_true(i >= 0 && i < T_PORTS_USED);
    qctest_endpoint(T_PORT(i), eps[i]);
    return eps[i];
}

/* not_leader of spawn_echo for a replica that knows no leader (QC_ENOQUORUM). */
#define T_NO_QUORUM "(no quorum)"

/* Starts an echo server on port; stderr goes to stderr_path when it is set. With not_leader
 * set it plays a follower replica that names not_leader as its leader (T_NO_QUORUM: one that
 * knows none and answers QC_ENOQUORUM). */
static pid_t spawn_echo(fixture_t *f, int port, const char *name, bool stall,
                        const char *stderr_path, const char *not_leader)
{
    char endpoint[64];
    endpoint_of(port, endpoint, sizeof endpoint);
    int slot = -1;
    for (int i = 0; i < T_CHILDREN_MAX && slot < 0; i++)
        if (f->children[i] == 0)
            slot = i;
    assert_true(slot >= 0);
    const char *args[16];
    int n = 0;
    args[n++] = echo_server_bin;
    args[n++] = "--endpoint";
    args[n++] = endpoint;
    args[n++] = "--keys";
    args[n++] = f->server_keys;
    args[n++] = "--allow";
    args[n++] = f->allow;
    args[n++] = "--name";
    args[n++] = name;
    if (stall)
        args[n++] = "--stall";
    if (not_leader != NULL && strcmp(not_leader, T_NO_QUORUM) == 0) {
        args[n++] = "--no-quorum";
    } else if (not_leader != NULL) {
        args[n++] = "--not-leader";
        args[n++] = not_leader;
    }
    args[n] = NULL;
    pid_t pid = qctest_spawn(&(qctest_cmd_t){.argv = (char *const *)args, .err_path = stderr_path});
    assert_true(pid >= 0);
    f->children[slot] = pid;
    return pid;
}

static pid_t spawn_server(fixture_t *f, int port, const char *name, bool stall,
                          const char *stderr_path)
{
    return spawn_echo(f, port, name, stall, stderr_path, NULL);
}

static void kill_server(fixture_t *f, pid_t pid)
{
    for (int i = 0; i < T_CHILDREN_MAX; i++) {
        if (f->children[i] != pid)
            continue;
        qctest_stop(pid, SIGKILL);
        f->children[i] = 0;
    }
}

/* Stops a server with SIGTERM and returns its exit status (-1 if it had to be killed): a
 * clean exit also means LeakSanitizer found nothing in it. */
static int stop_server(fixture_t *f, pid_t pid)
{
    for (int i = 0; i < T_CHILDREN_MAX; i++)
        if (f->children[i] == pid)
            f->children[i] = 0;
    int status = qctest_stop(pid, SIGTERM); /* SIGKILL after QCTEST_STOP_GRACE_MS */
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static proto_rpc_client_t *client_new(fixture_t *f, const char *endpoints,
                                      const char *endpoints_path, const proto_curve_keypair_t *keys)
{
    proto_rpc_client_config_t cfg = {
        .service = "echo",
        .endpoints = endpoints,
        .endpoints_path = endpoints_path,
        .server_public_z85 = f->server.public_z85,
        .keys = keys,
    };
    proto_rpc_client_t *cli = NULL;
    assert_int_equal(proto_rpc_client_new(f->ctx, &cfg, &cli), 0);
    assert_non_null(cli);
    for (int i = 0; i < T_CHILDREN_MAX; i++) {
        if (f->clients[i] == NULL) {
            f->clients[i] = cli;
            return cli;
        }
    }
    fail_msg("too many clients in one test");
    return NULL;
}

/* Calls method and returns the reply body as a string in out (empty on failure). */
static int call_text(proto_rpc_client_t *cli, const char *method, const char *body, int timeout_ms,
                     int flags, char *out, size_t cap)
{
    proto_rpc_reply_t *r = NULL;
    int rc = proto_rpc_client_call(cli, method, (const uint8_t *)body, body ? strlen(body) : 0,
                                   timeout_ms, flags, &r);
    out[0] = '\0';
    if (rc == 0) {
        assert_non_null(r);
        rc = r->code;
        size_t n = r->body_len < cap - 1 ? r->body_len : cap - 1;
        if (n > 0)
            memcpy(out, r->body, n);
        out[n] = '\0';
        proto_rpc_reply_destroy(&r);
        assert_null(r);
    } else {
        assert_null(r);
    }
    return rc;
}

/* Polls with short idempotent calls until the service answers (bounded). */
static void wait_ready(proto_rpc_client_t *cli)
{
    uint64_t end = ops_time_mono_ms() + T_READY_MS;
    char out[64];
    while (ops_time_mono_ms() < end) {
        if (call_text(cli, "echo", "ping", 300, PROTO_RPC_IDEMPOTENT, out, sizeof out) == 0) {
            assert_string_equal(out, "ping");
            return;
        }
    }
    fail_msg("server did not become ready within %d ms", T_READY_MS);
}

/* A raw CURVE DEALER with the client's keys, for frames proto_rpc would never send. */
static void *raw_dealer(fixture_t *f, int port)
{
    void *s = zmq_socket(f->ctx, ZMQ_DEALER);
    assert_non_null(s);
    int zero = 0;
    char endpoint[64];
    endpoint_of(port, endpoint, sizeof endpoint);
    assert_int_equal(zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, f->server.public_z85, 40), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, f->client.public_z85, 40), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, f->client.secret_z85, 40), 0);
    assert_int_equal(zmq_connect(s, endpoint), 0);
    for (int i = 0; i < T_CHILDREN_MAX; i++) {
        if (f->raws[i] == NULL) {
            f->raws[i] = s;
            return s;
        }
    }
    fail_msg("too many raw sockets in one test");
    return NULL;
}

/* Pumps an async client for up to ms, or until *stop is true. */
static void pump(proto_rpc_client_t *cli, proto_rpc_done_fn *done, void *arg, int ms,
                 const bool *stop)
{
    uint64_t end = ops_time_mono_ms() + (uint64_t)ms;
    while (ops_time_mono_ms() < end && !(stop != NULL && *stop)) {
        zmq_pollitem_t items[PROTO_RPC_ENDPOINTS_MAX];
        int n = proto_rpc_client_pollitems(cli, items, PROTO_RPC_ENDPOINTS_MAX);
        int wait = proto_rpc_client_next_timeout_ms(cli);
        if (wait < 0 || wait > 50)
            wait = 50;
        zmq_poll(items, n, wait);
        proto_rpc_client_process(cli, done, arg);
    }
}

/* ---------------------------------------------------------------- fixture */

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_int_equal(qctest_dir_new("qc-test-rpc", f->dir), 0);
    path_in(f, "server.key", f->server_keys);
    path_in(f, "client.key", f->client_keys);
    path_in(f, "stranger.key", f->stranger_keys);
    path_in(f, "allow", f->allow);
    assert_int_equal(proto_curve_keypair_create(f->server_keys, &f->server), 0);
    assert_int_equal(proto_curve_keypair_create(f->client_keys, &f->client), 0);
    assert_int_equal(proto_curve_keypair_create(f->stranger_keys, &f->stranger), 0);
    char allow[256];
    snprintf(allow, sizeof allow, "# test clients\n%s\n\n", f->client.public_z85);
    write_text(f->allow, allow);
    f->ctx = zmq_ctx_new();
    assert_non_null(f->ctx);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    for (int i = 0; i < T_CHILDREN_MAX; i++)
        if (f->children[i] != 0)
            kill_server(f, f->children[i]);
    /* zmq_ctx_term() waits for every socket: a failed test must not leave one open. */
    for (int i = 0; i < T_CHILDREN_MAX; i++) {
        proto_rpc_client_destroy(&f->clients[i]);
        if (f->raws[i] != NULL)
            zmq_close(f->raws[i]);
    }
    zmq_ctx_term(f->ctx);
    proto_curve_keypair_wipe(&f->server);
    proto_curve_keypair_wipe(&f->client);
    proto_curve_keypair_wipe(&f->stranger);
    if (qctest_dir_remove(f->dir) != 0)
        fprintf(stderr, "could not remove %s\n", f->dir);
    free(f);
    return 0;
}

/* ---------------------------------------------------------------- tests */

static void test_keypair_files(void **state)
{
    fixture_t *f = *state;
    proto_curve_keypair_t kp;
    assert_int_equal(proto_curve_keypair_load(f->client_keys, &kp), 0);
    assert_string_equal(kp.public_z85, f->client.public_z85);
    assert_string_equal(kp.secret_z85, f->client.secret_z85);
    struct stat st;
    assert_int_equal(stat(f->client_keys, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char pub_path[T_PATH_MAX + 8];
    snprintf(pub_path, sizeof pub_path, "%s.pub", f->client_keys);
    assert_true(qctest_file_contains(pub_path, f->client.public_z85));
    assert_false(qctest_file_contains(pub_path, f->client.secret_z85));
    /* Never overwrite a key in use. */
    proto_curve_keypair_t again;
    assert_int_equal(proto_curve_keypair_create(f->client_keys, &again), QC_EIO);
    proto_curve_keypair_wipe(&kp);
    for (size_t i = 0; i < sizeof kp.secret_z85; i++)
        assert_int_equal(kp.secret_z85[i], 0);
    /* A public key that is not the secret's is a configuration error. */
    char bad[T_PATH_MAX];
    path_in(f, "bad.key", bad);
    char text[256];
    snprintf(text, sizeof text, "public = %s\nsecret = %s\n", f->server.public_z85,
             f->client.secret_z85);
    write_text(bad, text);
    assert_int_equal(proto_curve_keypair_load(bad, &kp), QC_ECONFIG);
    write_text(bad, "public = not-a-key\n");
    assert_int_equal(proto_curve_keypair_load(bad, &kp), QC_ECONFIG);
}

/* 1. A call succeeds and the handler sees the caller's CURVE key. */
static void test_call_and_peer_key(void **state)
{
    fixture_t *f = *state;
    pid_t pid = spawn_server(f, T_PORT(0), "a", false, NULL);
    proto_rpc_client_t *cli = client_new(f, endpoint_at(0), NULL, &f->client);
    wait_ready(cli);
    char out[128];
    assert_int_equal(call_text(cli, "echo", "hello", T_CALL_MS, 0, out, sizeof out), 0);
    assert_string_equal(out, "hello");
    assert_int_equal(call_text(cli, "peer", NULL, T_CALL_MS, 0, out, sizeof out), 0);
    assert_string_equal(out, f->client.public_z85);
    assert_int_equal(call_text(cli, "nosuch", NULL, T_CALL_MS, 0, out, sizeof out), QC_EMETHOD);
    /* A clean stop: the server destroys its socket and ZAP handler and exits 0. */
    assert_int_equal(stop_server(f, pid), 0);
    assert_int_equal(proto_rpc_client_inflight(cli), 0);
    assert_ptr_equal(f->clients[0], cli);
    proto_rpc_client_destroy(&f->clients[0]);
    assert_null(f->clients[0]);
}

/* 2. A key off the allow-list gets no answer, and the server logs the refusal. */
static void test_refused_key(void **state)
{
    fixture_t *f = *state;
    char log_path[T_PATH_MAX];
    path_in(f, "server.stderr", log_path);
    pid_t pid = spawn_server(f, T_PORT(1), "a", false, log_path);
    proto_rpc_client_t *good = client_new(f, endpoint_at(1), NULL, &f->client);
    wait_ready(good);
    proto_rpc_client_t *bad = client_new(f, endpoint_at(1), NULL, &f->stranger);
    char out[64];
    assert_int_equal(call_text(bad, "echo", "x", 1000, PROTO_RPC_IDEMPOTENT, out, sizeof out),
                     QC_ETIMEOUT);
    uint64_t end = ops_time_mono_ms() + T_LOG_WAIT_MS;
    while (!qctest_file_contains(log_path, "rpc.refused") && ops_time_mono_ms() < end)
        usleep(20 * 1000);
    assert_true(qctest_file_contains(log_path, "rpc.refused"));
    assert_true(qctest_file_contains(log_path, f->stranger.public_z85));
    assert_int_equal(call_text(good, "stats", NULL, T_CALL_MS, 0, out, sizeof out), 0);
    assert_null(strstr(out, "refused=0"));
    /* SIGHUP after adding the key to the allow-list admits it, without a restart. */
    char allow[256];
    snprintf(allow, sizeof allow, "%s\n%s\n", f->client.public_z85, f->stranger.public_z85);
    write_text(f->allow, allow);
    assert_int_equal(kill(pid, SIGHUP), 0);
    proto_rpc_client_t *later = client_new(f, endpoint_at(1), NULL, &f->stranger);
    wait_ready(later);
    assert_true(qctest_file_contains(log_path, "rpc.allow_reloaded"));
}

typedef struct async_one {
    bool done;
    int code;
    char body[64];
} async_one_t;

static void one_done(void *arg, void *tag, int code, proto_rpc_reply_t *reply)
{
    (void)tag;
    async_one_t *o = arg;
    o->done = true;
    o->code = code;
    if (reply != NULL) {
        size_t n = reply->body_len < sizeof o->body - 1 ? reply->body_len : sizeof o->body - 1;
        if (n > 0)
            memcpy(o->body, reply->body, n);
        o->body[n] = '\0';
        proto_rpc_reply_destroy(&reply);
    }
}

/* Like one_done, with the outcome's destination in the call's tag. */
static void tag_done(void *arg, void *tag, int code, proto_rpc_reply_t *reply)
{
    (void)arg;
    one_done(tag, NULL, code, reply);
}

/* Sends a "stall" call, kills the stalling server while the call is in flight and starts a
 * server that answers on the same port; returns the call's outcome. */
static async_one_t kill_mid_call(fixture_t *f, int port, int flags, int timeout_ms)
{
    char endpoint[64];
    endpoint_of(port, endpoint, sizeof endpoint);
    pid_t pid = spawn_server(f, port, "staller", true, NULL);
    proto_rpc_client_t *cli = client_new(f, endpoint, NULL, &f->client);
    wait_ready(cli);
    async_one_t o = {0};
    uint64_t id = 0;
    assert_int_equal(proto_rpc_client_send(cli, "stall", (const uint8_t *)"abc", 3, timeout_ms,
                                           flags, NULL, &id),
                     0);
    assert_true(id != 0);
    pump(cli, one_done, &o, 300, &o.done); /* the server has it and sits on it */
    assert_false(o.done);
    kill_server(f, pid);
    spawn_server(f, port, "answerer", false, NULL);
    pump(cli, one_done, &o, timeout_ms + 1000, &o.done);
    assert_true(o.done);
    assert_int_equal(proto_rpc_client_inflight(cli), 0);
    return o;
}

/* 3. Server killed and restarted mid-call: idempotent retried, non-idempotent times out. */
static void test_restart_mid_call(void **state)
{
    fixture_t *f = *state;
    async_one_t o = kill_mid_call(f, T_PORT(2), PROTO_RPC_IDEMPOTENT, 4000);
    assert_int_equal(o.code, 0);
    assert_string_equal(o.body, "abc");
    for (int i = 0; i < T_CHILDREN_MAX; i++)
        if (f->children[i] != 0)
            kill_server(f, f->children[i]);
    o = kill_mid_call(f, T_PORT(3), 0, 2500);
    assert_int_equal(o.code, QC_ETIMEOUT);
}

/* 4. A frame over PROTO_RPC_FRAME_MAX is dropped; the server keeps serving. */
static void test_oversize_frame(void **state)
{
    fixture_t *f = *state;
    spawn_server(f, T_PORT(4), "a", false, NULL);
    proto_rpc_client_t *cli = client_new(f, endpoint_at(4), NULL, &f->client);
    wait_ready(cli);
    void *raw = raw_dealer(f, T_PORT(4));
    /* A well-formed "whoami" whose body pushes it over the limit: only the size can be the
     * reason it goes unanswered. */
    size_t body_len = PROTO_RPC_FRAME_MAX;
    uint8_t *body = calloc(1, body_len);
    assert_non_null(body);
    Quancun__Rpc m = QUANCUN__RPC__INIT;
    m.request_id = 7;
    m.method = "whoami";
    m.body.data = body;
    m.body.len = body_len;
    size_t big_len = quancun__rpc__get_packed_size(&m);
    assert_true(big_len > PROTO_RPC_FRAME_MAX);
    uint8_t *big = malloc(big_len);
    assert_non_null(big);
    assert_int_equal(quancun__rpc__pack(&m, big), big_len);
    free(body);
    assert_int_equal(zmq_send(raw, big, big_len, 0), (int)big_len);
    free(big);
    zmq_pollitem_t item = {raw, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&item, 1, 500), 0); /* no answer to it */
    char out[64];
    assert_int_equal(call_text(cli, "echo", "after", T_CALL_MS, 0, out, sizeof out), 0);
    assert_string_equal(out, "after");
}

/* 5. Failover: with one of two instances killed, calls keep succeeding via the other. */
static void test_failover(void **state)
{
    fixture_t *f = *state;
    pid_t a = spawn_server(f, T_PORT(5), "a", false, NULL);
    char two[2 * QCTEST_ENDPOINT_MAX + 2];
    snprintf(two, sizeof two, "%s, %s", endpoint_at(5), endpoint_at(6));
    spawn_server(f, T_PORT(6), "b", false, NULL);
    proto_rpc_client_t *cli = client_new(f, two, NULL, &f->client);
    /* Both instances answer, in turn. */
    bool seen_a = false, seen_b = false;
    uint64_t end = ops_time_mono_ms() + T_READY_MS;
    char out[64];
    while (!(seen_a && seen_b) && ops_time_mono_ms() < end) {
        if (call_text(cli, "whoami", NULL, 300, PROTO_RPC_IDEMPOTENT, out, sizeof out) == 0) {
            seen_a = seen_a || strcmp(out, "a") == 0;
            seen_b = seen_b || strcmp(out, "b") == 0;
        }
    }
    assert_true(seen_a && seen_b);
    kill_server(f, a);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(
            call_text(cli, "whoami", NULL, 3000, PROTO_RPC_IDEMPOTENT, out, sizeof out), 0);
        assert_string_equal(out, "b");
    }
}

/* 6. SIGHUP makes the client re-read its endpoints file. */
static void test_sighup_reload(void **state)
{
    fixture_t *f = *state;
    ops_signal_install(); /* raise(SIGHUP) must count, not kill us */
    char eps[T_PATH_MAX];
    path_in(f, "endpoints", eps);
    char text[2 * QCTEST_ENDPOINT_MAX];
    snprintf(text, sizeof text, "# echo instances\n%s\n", endpoint_at(7));
    write_text(eps, text);
    spawn_server(f, T_PORT(7), "old", false, NULL);
    proto_rpc_client_t *cli = client_new(f, NULL, eps, &f->client);
    wait_ready(cli);
    char out[64];
    assert_int_equal(
        call_text(cli, "whoami", NULL, T_CALL_MS, PROTO_RPC_IDEMPOTENT, out, sizeof out), 0);
    assert_string_equal(out, "old");
    spawn_server(f, T_PORT(8), "new", false, NULL);
    snprintf(text, sizeof text, "%s\n", endpoint_at(8));
    write_text(eps, text);
    assert_int_equal(raise(SIGHUP), 0);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(
            call_text(cli, "whoami", NULL, T_READY_MS, PROTO_RPC_IDEMPOTENT, out, sizeof out), 0);
        assert_string_equal(out, "new");
    }
    /* An unreadable file keeps the current set. */
    assert_int_equal(unlink(eps), 0);
    assert_int_equal(raise(SIGHUP), 0);
    assert_int_equal(
        call_text(cli, "whoami", NULL, T_CALL_MS, PROTO_RPC_IDEMPOTENT, out, sizeof out), 0);
    assert_string_equal(out, "new");
}

typedef struct async_many {
    uint64_t ids[T_ASYNC_CALLS];
    bool done[T_ASYNC_CALLS];
    int finished;
    int ok;
} async_many_t;

static void many_done(void *arg, void *tag, int code, proto_rpc_reply_t *reply)
{
    async_many_t *m = arg;
    int i = (int)(intptr_t)tag;
    assert_true(i >= 0 && i < T_ASYNC_CALLS);
    assert_false(m->done[i]);
    m->done[i] = true;
    m->finished++;
    if (code == 0 && reply != NULL && reply->request_id == m->ids[i]) {
        char want[32];
        int n = snprintf(want, sizeof want, "call-%d", i);
        if (reply->body_len == (size_t)n && memcmp(reply->body, want, (size_t)n) == 0)
            m->ok++;
    }
    proto_rpc_reply_destroy(&reply);
}

/* 7. 200 calls in flight on one client all complete, each with its own reply. */
static void test_async_many(void **state)
{
    fixture_t *f = *state;
    spawn_server(f, T_PORT(9), "a", false, NULL);
    proto_rpc_client_t *cli = client_new(f, endpoint_at(9), NULL, &f->client);
    wait_ready(cli);
    async_many_t m = {0};
    for (int i = 0; i < T_ASYNC_CALLS; i++) {
        char body[32];
        int n = snprintf(body, sizeof body, "call-%d", i);
        assert_int_equal(proto_rpc_client_send(cli, "echo", (const uint8_t *)body, (size_t)n, 5000,
                                               PROTO_RPC_IDEMPOTENT, (void *)(intptr_t)i,
                                               &m.ids[i]),
                         0);
        for (int j = 0; j < i; j++)
            assert_true(m.ids[j] != m.ids[i]);
    }
    assert_int_equal(proto_rpc_client_inflight(cli), T_ASYNC_CALLS);
    uint64_t end = ops_time_mono_ms() + 6000;
    while (m.finished < T_ASYNC_CALLS && ops_time_mono_ms() < end)
        pump(cli, many_done, &m, 50, NULL);
    assert_int_equal(m.finished, T_ASYNC_CALLS);
    assert_int_equal(m.ok, T_ASYNC_CALLS);
    assert_int_equal(proto_rpc_client_inflight(cli), 0);
    assert_int_equal(proto_rpc_client_next_timeout_ms(cli), -1);
}

/* 8. A frame that is not protobuf is dropped and counted; the server keeps serving. */
static void test_garbage_frame(void **state)
{
    fixture_t *f = *state;
    spawn_server(f, T_PORT(10), "a", false, NULL);
    proto_rpc_client_t *cli = client_new(f, endpoint_at(10), NULL, &f->client);
    wait_ready(cli);
    char out[128];
    assert_int_equal(call_text(cli, "stats", NULL, T_CALL_MS, 0, out, sizeof out), 0);
    assert_non_null(strstr(out, "malformed=0"));
    void *raw = raw_dealer(f, T_PORT(10));
    const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x13};
    /* The raw socket has no ZMQ_IMMEDIATE: the frame waits for the handshake. */
    assert_int_equal(zmq_send(raw, garbage, sizeof garbage, 0), (int)sizeof garbage);
    /* An Rpc without a method is malformed too. */
    const uint8_t no_method[] = {0x08, 0x01};
    assert_int_equal(zmq_send(raw, no_method, sizeof no_method, 0), (int)sizeof no_method);
    /* A well-formed call whose legacy absolute deadline has passed is not served, counted as
     * expired, and answered QC_EEXPIRED with the server's clock (the caller learns why). */
    Quancun__Rpc m = QUANCUN__RPC__INIT;
    m.request_id = 9;
    m.method = "echo";
    m.deadline_ms = ops_time_wall_ms() - 1000;
    uint8_t packed[64];
    size_t packed_len = quancun__rpc__get_packed_size(&m);
    assert_true(packed_len <= sizeof packed);
    quancun__rpc__pack(&m, packed);
    assert_int_equal(zmq_send(raw, packed, packed_len, 0), (int)packed_len);
    uint64_t end = ops_time_mono_ms() + T_LOG_WAIT_MS;
    while (ops_time_mono_ms() < end) {
        assert_int_equal(call_text(cli, "stats", NULL, T_CALL_MS, 0, out, sizeof out), 0);
        if (strstr(out, "malformed=2") != NULL && strstr(out, "expired=1") != NULL)
            break;
        usleep(20 * 1000);
    }
    assert_non_null(strstr(out, "malformed=2"));
    assert_non_null(strstr(out, "expired=1"));
    /* The garbage has no request id: no answer. The method-less call (id 1) is answered with
     * its decoding code, the late one (id 9) with QC_EEXPIRED; both carry the server's time. */
    uint64_t wall_before = ops_time_wall_ms() - T_LOG_WAIT_MS - 1000;
    int answered = 0;
    zmq_pollitem_t item = {raw, 0, ZMQ_POLLIN, 0};
    while (answered < 2 && zmq_poll(&item, 1, T_CALL_MS) == 1) {
        uint8_t buf[512];
        int n = zmq_recv(raw, buf, sizeof buf, 0);
        assert_true(n > 0);
        Quancun__RpcReply *r = NULL;
        assert_int_equal(proto_decode_rpc_reply(buf, (size_t)n, &r), 0);
        assert_true(r->server_time_ms > wall_before);
        assert_true(r->server_time_ms <= ops_time_wall_ms());
        if (r->request_id == 1)
            assert_int_equal(r->code, QC_EMISSING);
        else if (r->request_id == 9)
            assert_int_equal(r->code, QC_EEXPIRED);
        else
            fail_msg("an answer to request %" PRIu64, r->request_id);
        quancun__rpc_reply__free_unpacked(r, NULL);
        answered++;
    }
    assert_int_equal(answered, 2);
    assert_int_equal(zmq_poll(&item, 1, 0), 0);
    assert_int_equal(call_text(cli, "echo", "still", T_CALL_MS, 0, out, sizeof out), 0);
    assert_string_equal(out, "still");
}

/* 8b. Deadlines travel as budgets: a call whose caller's clock is an hour behind (its legacy
 * deadline_ms long past) but which carries timeout_ms is served, because the server times it
 * on its own clock; and the client library sends a budget, not a clock reading. */
static void test_budget_beats_skewed_clock(void **state)
{
    fixture_t *f = *state;
    spawn_server(f, T_PORT(12), "a", false, NULL);
    proto_rpc_client_t *cli = client_new(f, endpoint_at(12), NULL, &f->client);
    wait_ready(cli);
    char out[128];
    assert_int_equal(call_text(cli, "stats", NULL, T_CALL_MS, 0, out, sizeof out), 0);
    void *raw = raw_dealer(f, T_PORT(12));
    Quancun__Rpc m = QUANCUN__RPC__INIT;
    m.request_id = 11;
    m.method = "echo";
    m.deadline_ms = ops_time_wall_ms() - 3600 * 1000; /* what a skewed clock would say */
    m.timeout_ms = 5000;
    m.body.data = (uint8_t *)"skewed";
    m.body.len = 6;
    uint8_t packed[64];
    size_t packed_len = quancun__rpc__get_packed_size(&m);
    assert_true(packed_len <= sizeof packed);
    quancun__rpc__pack(&m, packed);
    assert_int_equal(zmq_send(raw, packed, packed_len, 0), (int)packed_len);
    zmq_pollitem_t item = {raw, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&item, 1, T_CALL_MS), 1);
    uint8_t buf[512];
    int n = zmq_recv(raw, buf, sizeof buf, 0);
    assert_true(n > 0);
    Quancun__RpcReply *r = NULL;
    assert_int_equal(proto_decode_rpc_reply(buf, (size_t)n, &r), 0);
    assert_int_equal(r->request_id, 11);
    assert_int_equal(r->code, 0);
    assert_int_equal(r->server_time_ms, 0); /* only refusals carry the clock */
    assert_int_equal(r->body.len, 6);
    assert_memory_equal(r->body.data, "skewed", 6);
    quancun__rpc_reply__free_unpacked(r, NULL);
    /* A budget over the 24 h limit is malformed, and answered as such. */
    m.request_id = 12;
    m.timeout_ms = PROTO_RPC_TIMEOUT_MAX + 1;
    packed_len = quancun__rpc__get_packed_size(&m);
    quancun__rpc__pack(&m, packed);
    assert_int_equal(zmq_send(raw, packed, packed_len, 0), (int)packed_len);
    assert_int_equal(zmq_poll(&item, 1, T_CALL_MS), 1);
    n = zmq_recv(raw, buf, sizeof buf, 0);
    assert_true(n > 0);
    assert_int_equal(proto_decode_rpc_reply(buf, (size_t)n, &r), 0);
    assert_int_equal(r->request_id, 12);
    assert_int_equal(r->code, QC_EDECODE);
    assert_true(r->server_time_ms != 0);
    quancun__rpc_reply__free_unpacked(r, NULL);
    /* The library's own calls carry a budget: the server sees at most what the caller gave,
     * and most of it (the call takes far less than a second here). */
    assert_int_equal(call_text(cli, "budget", NULL, 4000, 0, out, sizeof out), 0);
    long left = strtol(out, NULL, 10);
    assert_true(left > 1000);
    assert_true(left <= 4000);
}

static uint64_t client_counter(const char *name)
{
    char full[OPS_METRICS_NAME_MAX];
    snprintf(full, sizeof full, "%s{service=\"echo\"}", name);
    return ops_counter_value(ops_counter(full, ""));
}

/* 9. A retry on an endpoint that is alive but slow: the first reply completes the call, the
 * second (to the resend) is late and is dropped and counted. */
static void test_late_reply_dropped(void **state)
{
    fixture_t *f = *state;
    spawn_server(f, T_PORT(11), "a", false, NULL);
    proto_rpc_client_t *cli = client_new(f, endpoint_at(11), NULL, &f->client);
    wait_ready(cli);
    uint64_t late_before = client_counter("qc_rpc_client_late_replies_total");
    uint64_t retries_before = client_counter("qc_rpc_client_retries_total");
    async_one_t quick = {0}, slow = {0};
    uint64_t id_quick, id_slow;
    /* The quick call is answered first, which proves the endpoint alive when the slow call's
     * attempt (3000 / 4 = 750 ms) times out, so the socket is kept and the call resent. */
    assert_int_equal(proto_rpc_client_send(cli, "echo", (const uint8_t *)"q", 1, 3000,
                                           PROTO_RPC_IDEMPOTENT, &quick, &id_quick),
                     0);
    assert_int_equal(proto_rpc_client_send(cli, "slow", (const uint8_t *)"1000", 4, 3000,
                                           PROTO_RPC_IDEMPOTENT, &slow, &id_slow),
                     0);
    assert_true(id_quick != id_slow);
    uint64_t end = ops_time_mono_ms() + 5000;
    while (!(quick.done && slow.done) && ops_time_mono_ms() < end) {
        zmq_pollitem_t items[PROTO_RPC_ENDPOINTS_MAX];
        int n = proto_rpc_client_pollitems(cli, items, PROTO_RPC_ENDPOINTS_MAX);
        zmq_poll(items, n, 20);
        proto_rpc_client_process(cli, tag_done, NULL);
    }
    assert_true(quick.done && slow.done);
    assert_int_equal(quick.code, 0);
    assert_string_equal(quick.body, "q");
    assert_int_equal(slow.code, 0);
    assert_string_equal(slow.body, "1000");
    assert_true(client_counter("qc_rpc_client_retries_total") > retries_before);
    /* The resend's reply arrives about a second after the first one. */
    end = ops_time_mono_ms() + 3000;
    while (client_counter("qc_rpc_client_late_replies_total") == late_before &&
           ops_time_mono_ms() < end)
        pump(cli, tag_done, NULL, 50, NULL);
    assert_int_equal(client_counter("qc_rpc_client_late_replies_total"), late_before + 1);
    assert_int_equal(proto_rpc_client_inflight(cli), 0);
}

typedef struct shared_case {
    proto_rpc_client_t *cli;
    async_one_t out;
    int want;
} shared_case_t;

/* 10. Three servers in one zmq context share one ZAP handler; each keeps its allow-list. */
static void test_shared_context(void **state)
{
    fixture_t *f = *state;
    char allow_stranger[T_PATH_MAX];
    path_in(f, "allow-stranger", allow_stranger);
    char text[128];
    snprintf(text, sizeof text, "%s\n", f->stranger.public_z85);
    write_text(allow_stranger, text);
    proto_rpc_server_config_t c1 = {.service = "alpha",
                                    .endpoint = endpoint_at(12),
                                    .keys = &f->server,
                                    .allow_path = f->allow};
    proto_rpc_server_config_t c2 = {.service = "beta",
                                    .endpoint = endpoint_at(13),
                                    .keys = &f->server,
                                    .allow_path = allow_stranger};
    proto_rpc_server_config_t c3 = {
        .service = "alpha", .endpoint = endpoint_at(14), .keys = &f->server, .allow_any = true};
    proto_rpc_server_t *srv[3] = {NULL, NULL, NULL};
    assert_int_equal(proto_rpc_server_new(f->ctx, &c1, &srv[0]), 0);
    assert_int_equal(proto_rpc_server_new(f->ctx, &c2, &srv[1]), 0);
    assert_int_equal(proto_rpc_server_new(f->ctx, &c3, &srv[2]), 0);
    /* A second bind of the same address fails; the handler keeps serving the others. */
    proto_rpc_server_t *dup = NULL;
    assert_int_equal(proto_rpc_server_new(f->ctx, &c1, &dup), QC_EIO);
    assert_null(dup);
    shared_case_t cases[] = {
        {client_new(f, endpoint_at(12), NULL, &f->client), {0}, 0},
        {client_new(f, endpoint_at(12), NULL, &f->stranger), {0}, QC_ETIMEOUT},
        {client_new(f, endpoint_at(13), NULL, &f->stranger), {0}, 0},
        {client_new(f, endpoint_at(13), NULL, &f->client), {0}, QC_ETIMEOUT},
        {client_new(f, endpoint_at(14), NULL, &f->stranger), {0}, 0},
    };
    size_t ncases = sizeof cases / sizeof cases[0];
    for (size_t i = 0; i < ncases; i++) {
        uint64_t id;
        assert_int_equal(proto_rpc_client_send(cases[i].cli, "echo", (const uint8_t *)"s", 1, 1500,
                                               PROTO_RPC_IDEMPOTENT, NULL, &id),
                         0);
    }
    uint64_t end = ops_time_mono_ms() + 4000;
    size_t done = 0;
    while (done < ncases && ops_time_mono_ms() < end) {
        for (int s = 0; s < 3; s++) {
            proto_rpc_request_t *req = NULL;
            if (proto_rpc_server_recv(srv[s], 0, &req) == 0) {
                assert_int_equal(
                    proto_rpc_server_reply(srv[s], req, 0, NULL, req->body, req->body_len), 0);
                proto_rpc_request_destroy(&req);
                assert_null(req);
            }
        }
        done = 0;
        for (size_t i = 0; i < ncases; i++) {
            proto_rpc_client_process(cases[i].cli, one_done, &cases[i].out);
            done += cases[i].out.done;
        }
        usleep(5 * 1000);
    }
    for (size_t i = 0; i < ncases; i++) {
        assert_true(cases[i].out.done);
        assert_int_equal(cases[i].out.code, cases[i].want);
    }
    for (int s = 0; s < 3; s++) {
        proto_rpc_server_destroy(&srv[s]);
        assert_null(srv[s]);
    }
    proto_rpc_server_destroy(&srv[0]); /* idempotent */
    /* With every server gone the handler stopped; a new server starts a new one. */
    assert_int_equal(proto_rpc_server_new(f->ctx, &c3, &srv[0]), 0);
    proto_rpc_server_destroy(&srv[0]);
}

/* Calls whoami until the (single) endpoint of cli answers. */
static void wait_up(proto_rpc_client_t *cli)
{
    uint64_t end = ops_time_mono_ms() + T_READY_MS;
    char out[64];
    while (ops_time_mono_ms() < end)
        if (call_text(cli, "whoami", NULL, 300, PROTO_RPC_IDEMPOTENT, out, sizeof out) == 0)
            return;
    fail_msg("the endpoint did not answer within %d ms", T_READY_MS);
}

/* Calls whoami round-robin until every one of names (the client's endpoints, in order) has
 * answered and the last answer came from the last one, so the client's next call starts at
 * the first endpoint: the leader tests below depend on where a call starts. */
static void rotate_to_first(proto_rpc_client_t *cli, const char *const *names, int count)
{
    bool seen[PROTO_RPC_ENDPOINTS_MAX] = {false};
    int seen_count = 0;
    uint64_t end = ops_time_mono_ms() + T_READY_MS;
    char out[64];
    while (ops_time_mono_ms() < end) {
        if (call_text(cli, "whoami", NULL, 300, PROTO_RPC_IDEMPOTENT, out, sizeof out) != 0)
            continue;
        for (int i = 0; i < count; i++) {
            if (strcmp(out, names[i]) == 0 && !seen[i]) {
                seen[i] = true;
                seen_count++;
            }
        }
        if (seen_count == count && strcmp(out, names[count - 1]) == 0)
            return;
    }
    fail_msg("not every endpoint answered within %d ms", T_READY_MS);
}

/* 11. Following the leader: followers answer QC_ENOTLEADER with the leader's endpoint (or
 * none, or one the client does not know) and the call, not idempotent, ends at the leader;
 * the leader found is where later calls start; followers that point at each other make at
 * most one hop per endpoint between backoffs, and the call ends with QC_ENOTLEADER within its
 * deadline. */
static void test_follow_leader(void **state)
{
    fixture_t *f = *state;
    const char *a = endpoint_at(15), *b = endpoint_at(16), *c = endpoint_at(17);
    const char *d = endpoint_at(18), *e = endpoint_at(19), *g = endpoint_at(20);
    spawn_echo(f, T_PORT(15), "a", false, NULL, c);                  /* knows the leader */
    spawn_echo(f, T_PORT(16), "b", false, NULL, "");                 /* knows none */
    spawn_server(f, T_PORT(17), "c", false, NULL);                   /* the leader */
    spawn_echo(f, T_PORT(18), "d", false, NULL, "tcp://10.9.9.9:1"); /* names a stranger */
    spawn_echo(f, T_PORT(19), "e", false, NULL, g);                  /* e and g: a loop */
    spawn_echo(f, T_PORT(20), "g", false, NULL, e);
    char list[4 * QCTEST_ENDPOINT_MAX + 4];
    char out[64];

    /* The follower names the leader: one hop, straight there, then straight on. */
    snprintf(list, sizeof list, "%s,%s,%s", a, b, c);
    proto_rpc_client_t *cli = client_new(f, list, NULL, &f->client);
    rotate_to_first(cli, (const char *const[]){"a", "b", "c"}, 3);
    uint64_t before = client_counter("qc_rpc_client_leader_redirects_total");
    assert_int_equal(call_text(cli, "echo", "one", T_CALL_MS, 0, out, sizeof out), 0);
    assert_string_equal(out, "one");
    assert_int_equal(client_counter("qc_rpc_client_leader_redirects_total"), before + 1);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(call_text(cli, "echo", "again", T_CALL_MS, 0, out, sizeof out), 0);
        assert_string_equal(out, "again");
    }
    assert_int_equal(client_counter("qc_rpc_client_leader_redirects_total"), before + 1);

    /* Leader unknown, then a leader outside the list: each time the next endpoint. */
    snprintf(list, sizeof list, "%s,%s,%s", b, d, c);
    cli = client_new(f, list, NULL, &f->client);
    rotate_to_first(cli, (const char *const[]){"b", "d", "c"}, 3);
    before = client_counter("qc_rpc_client_leader_redirects_total");
    assert_int_equal(call_text(cli, "echo", "two", T_CALL_MS, 0, out, sizeof out), 0);
    assert_string_equal(out, "two");
    assert_int_equal(client_counter("qc_rpc_client_leader_redirects_total"), before + 2);
    /* Found by walking the list, the leader is remembered all the same. */
    assert_int_equal(call_text(cli, "echo", "three", T_CALL_MS, 0, out, sizeof out), 0);
    assert_int_equal(client_counter("qc_rpc_client_leader_redirects_total"), before + 2);

    /* Two followers naming each other: two hops (one per endpoint), then a backoff (no
     * leader is reachable: an election), again and again until the budget is spent, then
     * the refusal. */
    snprintf(list, sizeof list, "%s,%s", e, g);
    cli = client_new(f, list, NULL, &f->client);
    rotate_to_first(cli, (const char *const[]){"e", "g"}, 2);
    before = client_counter("qc_rpc_client_leader_redirects_total");
    uint64_t waits = client_counter("qc_rpc_client_election_waits_total");
    uint64_t t0 = ops_time_mono_ms();
    assert_int_equal(call_text(cli, "echo", "loop", 3000, 0, out, sizeof out), QC_ENOTLEADER);
    assert_true(ops_time_mono_ms() - t0 < 3000);
    uint64_t rounds = client_counter("qc_rpc_client_election_waits_total") - waits;
    assert_true(rounds >= 1);
    assert_true(rounds <= 3000 / 25);
    assert_int_equal(client_counter("qc_rpc_client_leader_redirects_total"),
                     before + 2 * (rounds + 1));
    assert_int_equal(proto_rpc_client_inflight(cli), 0);

    /* A leader named before its connection is up is waited for (within half the attempt),
     * not skipped: here it is not even running when the follower names it. */
    const char *a2 = endpoint_at(21), *h = endpoint_at(22);
    spawn_echo(f, T_PORT(21), "a2", false, NULL, h);
    wait_up(client_new(f, a2, NULL, &f->client));
    snprintf(list, sizeof list, "%s,%s", a2, h);
    cli = client_new(f, list, NULL, &f->client);
    before = client_counter("qc_rpc_client_leader_redirects_total");
    async_one_t late = {0};
    uint64_t late_id = 0;
    assert_int_equal(
        proto_rpc_client_send(cli, "echo", (const uint8_t *)"late", 4, 5000, 0, NULL, &late_id), 0);
    pump(cli, one_done, &late, 200, &late.done);
    assert_false(late.done);
    spawn_server(f, T_PORT(22), "h", false, NULL);
    pump(cli, one_done, &late, 5000, &late.done);
    assert_true(late.done);
    assert_int_equal(late.code, 0);
    assert_string_equal(late.body, "late");
    assert_int_equal(client_counter("qc_rpc_client_leader_redirects_total"), before + 1);

    /* The asynchronous path follows the leader too. */
    snprintf(list, sizeof list, "%s,%s", a, c);
    cli = client_new(f, list, NULL, &f->client);
    rotate_to_first(cli, (const char *const[]){"a", "c"}, 2);
    before = client_counter("qc_rpc_client_leader_redirects_total");
    async_one_t o = {0};
    uint64_t id = 0;
    assert_int_equal(
        proto_rpc_client_send(cli, "echo", (const uint8_t *)"four", 4, T_CALL_MS, 0, NULL, &id), 0);
    pump(cli, one_done, &o, T_CALL_MS + 500, &o.done);
    assert_true(o.done);
    assert_int_equal(o.code, 0);
    assert_string_equal(o.body, "four");
    assert_int_equal(client_counter("qc_rpc_client_leader_redirects_total"), before + 1);
    assert_int_equal(proto_rpc_client_inflight(cli), 0);
}

/* 12. A replica that knows no leader (a candidate cut off from the others) answers
 * QC_ENOQUORUM: it changed nothing, so the call moves on to the next replica and ends at the
 * leader; when every replica says so, the call ends with QC_ENOQUORUM within its deadline,
 * after at most one hop per endpoint between the backoffs of test 13. */
static void test_follow_past_no_quorum(void **state)
{
    fixture_t *f = *state;
    const char *q1 = endpoint_at(23), *q2 = endpoint_at(24), *c = endpoint_at(25);
    spawn_echo(f, T_PORT(23), "q1", false, NULL, T_NO_QUORUM);
    spawn_echo(f, T_PORT(24), "q2", false, NULL, T_NO_QUORUM);
    spawn_server(f, T_PORT(25), "c", false, NULL);
    char list[3 * QCTEST_ENDPOINT_MAX + 3];
    char out[64];

    snprintf(list, sizeof list, "%s,%s", q1, c);
    proto_rpc_client_t *cli = client_new(f, list, NULL, &f->client);
    rotate_to_first(cli, (const char *const[]){"q1", "c"}, 2);
    uint64_t before = client_counter("qc_rpc_client_leader_redirects_total");
    assert_int_equal(call_text(cli, "echo", "past", T_CALL_MS, 0, out, sizeof out), 0);
    assert_string_equal(out, "past");
    assert_int_equal(client_counter("qc_rpc_client_leader_redirects_total"), before + 1);

    snprintf(list, sizeof list, "%s,%s", q1, q2);
    cli = client_new(f, list, NULL, &f->client);
    rotate_to_first(cli, (const char *const[]){"q1", "q2"}, 2);
    before = client_counter("qc_rpc_client_leader_redirects_total");
    uint64_t t0 = ops_time_mono_ms();
    uint64_t waits = client_counter("qc_rpc_client_election_waits_total");
    assert_int_equal(call_text(cli, "echo", "none", 3000, 0, out, sizeof out), QC_ENOQUORUM);
    assert_true(ops_time_mono_ms() - t0 < 3000);
    /* No leader anywhere: an election, waited out (test 13) in rounds of one hop per
     * endpoint until the budget is spent. */
    uint64_t rounds = client_counter("qc_rpc_client_election_waits_total") - waits;
    assert_true(rounds >= 1);
    assert_int_equal(client_counter("qc_rpc_client_leader_redirects_total"),
                     before + 2 * (rounds + 1));
    assert_int_equal(proto_rpc_client_inflight(cli), 0);
}

/* 13. Waiting out an election: a replica that knows no leader answers QC_ENOQUORUM; a call
 * (not idempotent) started then waits with backoffs, within its budget, and is served once a
 * leader is up; a call whose budget ends first gets the refusal, not QC_ETIMEOUT. */
static void test_wait_out_election(void **state)
{
    fixture_t *f = *state;
    const char *q = endpoint_at(26), *l = endpoint_at(27);
    spawn_echo(f, T_PORT(26), "q", false, NULL, T_NO_QUORUM);
    wait_up(client_new(f, q, NULL, &f->client));
    char list[2 * QCTEST_ENDPOINT_MAX + 4];
    snprintf(list, sizeof list, "%s,%s", q, l);
    proto_rpc_client_t *cli = client_new(f, list, NULL, &f->client);
    uint64_t waits = client_counter("qc_rpc_client_election_waits_total");
    async_one_t o = {0};
    uint64_t id = 0;
    assert_int_equal(
        proto_rpc_client_send(cli, "echo", (const uint8_t *)"held", 4, 5000, 0, NULL, &id), 0);
    pump(cli, one_done, &o, 400, &o.done);
    assert_false(o.done); /* refused, and held */
    assert_true(client_counter("qc_rpc_client_election_waits_total") > waits);
    spawn_server(f, T_PORT(27), "l", false, NULL); /* the new leader */
    pump(cli, one_done, &o, 5000, &o.done);
    assert_true(o.done);
    assert_int_equal(o.code, 0);
    assert_string_equal(o.body, "held");
    assert_int_equal(proto_rpc_client_inflight(cli), 0);

    /* Only the replica without a leader: the budget ends, and the caller sees why. */
    cli = client_new(f, q, NULL, &f->client);
    char out[64];
    uint64_t t0 = ops_time_mono_ms();
    assert_int_equal(call_text(cli, "echo", "short", 600, 0, out, sizeof out), QC_ENOQUORUM);
    uint64_t took = ops_time_mono_ms() - t0;
    assert_true(took >= 600 - 2 * 200); /* it waited most of its budget */
    assert_true(took <= 600 + 200);
    assert_int_equal(proto_rpc_client_inflight(cli), 0);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test_rpc PATH-TO-rpc_echo_server\n");
        return 2;
    }
    echo_server_bin = argv[1];
    ports = qctest_ports(17100, 200);
    ops_log_init("test_rpc", "0", OPS_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_keypair_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_call_and_peer_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_mid_call, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oversize_frame, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failover, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sighup_reload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_async_many, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_frame, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_beats_skewed_clock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_late_reply_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shared_context, setup, teardown),
        cmocka_unit_test_setup_teardown(test_follow_leader, setup, teardown),
        cmocka_unit_test_setup_teardown(test_follow_past_no_quorum, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wait_out_election, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
