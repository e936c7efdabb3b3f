/* signer_bench.c - signatures per second: raw PKCS#11 C_Sign beside qc-signer at 1, 2, N workers.
 *
 * Makes a dev HSM (ops/devhsm) in a temporary directory, measures the token's raw rate
 * (C_Sign in a loop, one session per thread, at 1, 2 and N threads), then starts qc-signer
 * with 1, 2 and N workers and drives it over CURVE RPC with a window of calls in flight,
 * and prints each rate and its ratio to the raw rate with as many threads. Not a CTest test:
 * run it on a quiet machine, from a Release build without sanitizers. */
#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <openssl/rand.h>
#include <zmq.h>

#include "ops_log.h"
#include "ops_time.h"
#include "proto_decode.h"
#include "proto_rpc.h"
#include "qc_error.h"
#include "signer.pb-c.h"
#include "signer_sign.h"
#include "signer_token.h"
#include "qctest_fs.h"
#include "qctest_http.h"
#include "qctest_proc.h"

#define BENCH_PIN "123456"
#define BENCH_TOKEN "quancun"
#define BENCH_PORT 17690
#define BENCH_HTTP_PORT 17691
#define BENCH_PAGE_MAX (256 * 1024)
#define BENCH_PATH_MAX 1024
#define BENCH_THREADS_MAX 64
#define BENCH_READY_TIMEOUT_MS 20000
#define BENCH_CALL_TIMEOUT_MS 5000
#define BENCH_WARMUP_MS 500
#define BENCH_SECONDS_DEFAULT 3
#define BENCH_WINDOW_DEFAULT 256
#define BENCH_ROUNDS_DEFAULT 3
#define BENCH_ROUNDS_MAX 20

typedef struct bench {
    char dir[BENCH_PATH_MAX];
    char hsm[BENCH_PATH_MAX + 8];
    char server_key[BENCH_PATH_MAX + 16];
    char client_key[BENCH_PATH_MAX + 16];
    char allow[BENCH_PATH_MAX + 32];
    const char *signer;
    const char *module;
    int seconds;
    int window;
    int workers_max;
    int rounds;
    proto_curve_keypair_t server_kp, client_kp;
} bench_t;

/* ---------------------------------------------------------------- raw C_Sign */

typedef struct raw_thread {
    signer_session_t *sess;
    const signer_key_t *key;
    uint64_t end_ms;
    uint64_t count;
    int rc;
} raw_thread_t;

static void *raw_main(void *arg)
{
    raw_thread_t *t = arg;
    uint8_t digest[PROTO_DIGEST_SIZE], raw[PROTO_SIG_RAW_SIZE];
    RAND_bytes(digest, sizeof(digest));
    while (ops_time_mono_ms() < t->end_ms) {
        t->rc = signer_session_sign(t->sess, t->key, digest, raw);
        if (t->rc != 0)
            break;
        digest[t->count % PROTO_DIGEST_SIZE]++;
        t->count++;
    }
    return NULL;
}

/* Signs in a loop on threads sessions for b->seconds; returns signatures per second. */
static double bench_raw(const bench_t *b, signer_token_t *tok, const signer_key_t *key, int threads)
{
    raw_thread_t t[BENCH_THREADS_MAX] = {0};
    pthread_t th[BENCH_THREADS_MAX];
    for (int i = 0; i < threads; i++) {
        if (signer_session_open(tok, &t[i].sess) != 0)
            return -1;
        t[i].key = key;
    }
    uint64_t start = ops_time_mono_ms();
    for (int i = 0; i < threads; i++) {
        t[i].end_ms = start + (uint64_t)b->seconds * 1000;
        pthread_create(&th[i], NULL, raw_main, &t[i]);
    }
    uint64_t total = 0;
    bool ok = true;
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        total += t[i].count;
        ok = ok && t[i].rc == 0;
        signer_session_destroy(&t[i].sess);
    }
    double secs = (double)(ops_time_mono_ms() - start) / 1000.0;
    return ok ? (double)total / secs : -1;
}

static uint8_t *bench_request(size_t *len);

/* signer_sign_request() in a loop on one session, no transport: what a worker does per
 * job, audit log line included (written to /dev/null). Returns signatures per second. */
static double bench_in_process(const bench_t *b, signer_token_t *tok)
{
    const uint32_t versions[SIGNER_KIND_COUNT] = {1, 1, 1};
    signer_keyring_t *ring = NULL;
    signer_session_t *sess = NULL;
    size_t req_len = 0;
    uint8_t *req = bench_request(&req_len);
    if (req == NULL || signer_keyring_load(tok, versions, &ring) != 0 ||
        signer_session_open(tok, &sess) != 0)
        return -1;
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    FILE *null = fopen("/dev/null", "w");
    dup2(fileno(null), STDERR_FILENO);
    ops_log_init("signer_bench", "0", OPS_LOG_INFO);
    uint64_t count = 0, start = ops_time_mono_ms();
    uint64_t end = start + (uint64_t)b->seconds * 1000;
    int rc = 0;
    while (rc == 0 && ops_time_mono_ms() < end) {
        uint8_t *reply = NULL;
        size_t reply_len = 0;
        char msg[SIGNER_MESSAGE_MAX];
        rc = signer_sign_request(sess, ring, req, req_len, &reply, &reply_len, msg);
        free(reply);
        count++;
    }
    double secs = (double)(ops_time_mono_ms() - start) / 1000.0;
    ops_log_init("signer_bench", "0", OPS_LOG_WARN);
    dup2(saved, STDERR_FILENO);
    close(saved);
    fclose(null);
    signer_session_destroy(&sess);
    signer_keyring_destroy(&ring);
    free(req);
    return rc == 0 ? (double)count / secs : -1;
}

/* ---------------------------------------------------------------- through the service */

typedef struct load {
    uint64_t ok, failed;
} load_t;

static void load_done(void *arg, void *tag, int code, proto_rpc_reply_t *reply)
{
    (void)tag;
    load_t *l = arg;
    if (code == 0 && reply->code == 0)
        l->ok++;
    else
        l->failed++;
    proto_rpc_reply_destroy(&reply);
}

static uint8_t *bench_request(size_t *len)
{
    uint8_t hash[PROTO_DIGEST_SIZE];
    RAND_bytes(hash, sizeof(hash));
    Quancun__AuditCheckpoint cp = QUANCUN__AUDIT_CHECKPOINT__INIT;
    cp.seq = 1;
    cp.hash.data = hash;
    cp.hash.len = sizeof(hash);
    cp.time_ms = ops_time_wall_ms();
    uint8_t *body = NULL;
    size_t body_len = 0;
    if (proto_pack(&cp.base, &body, &body_len) != 0)
        return NULL;
    Quancun__SignRequest r = QUANCUN__SIGN_REQUEST__INIT;
    r.kind = QUANCUN__SIGN_KIND__SIGN_AUDIT_CHECKPOINT;
    r.body.data = body;
    r.body.len = body_len;
    uint8_t *out = NULL;
    int rc = proto_pack(&r.base, &out, len);
    free(body);
    return rc == 0 ? out : NULL;
}

/* Keeps b->window calls in flight until end_ms; counts what finished after count_from_ms. */
static void drive(const bench_t *b, proto_rpc_client_t *cli, const uint8_t *req, size_t req_len,
                  uint64_t end_ms, load_t *l)
{
    while (ops_time_mono_ms() < end_ms) {
        while (proto_rpc_client_inflight(cli) < b->window) {
            uint64_t id;
            if (proto_rpc_client_send(cli, "sign", req, req_len, BENCH_CALL_TIMEOUT_MS, 0, NULL,
                                      &id) != 0)
                break;
        }
        zmq_pollitem_t items[PROTO_RPC_ENDPOINTS_MAX];
        int n = proto_rpc_client_pollitems(cli, items, PROTO_RPC_ENDPOINTS_MAX);
        int wait = proto_rpc_client_next_timeout_ms(cli);
        zmq_poll(items, n, wait < 0 || wait > 10 ? 10 : wait);
        proto_rpc_client_process(cli, load_done, l);
    }
}

/* Reads qc_signer_sign_seconds (check, sign and seal inside a worker) from /metrics and
 * returns its mean in microseconds, or -1. */
static double worker_mean_us(void)
{
    char *page = malloc(BENCH_PAGE_MAX);
    if (page != NULL && qctest_http(BENCH_HTTP_PORT, "GET", "/metrics", page, BENCH_PAGE_MAX) < 0)
        page[0] = '\0';
    double mean = -1;
    if (page != NULL) {
        const char *sum = strstr(page, "\nqc_signer_sign_seconds_sum");
        const char *count = strstr(page, "\nqc_signer_sign_seconds_count");
        if (sum != NULL && count != NULL) {
            double s = strtod(strchr(sum + 1, ' '), NULL);
            double c = strtod(strchr(count + 1, ' '), NULL);
            mean = c > 0 ? 1e6 * s / c : -1;
        }
    }
    free(page);
    return mean;
}

/* Starts qc-signer with workers, drives it for b->seconds after a warm-up, stops it.
 * Returns signatures per second, or -1. */
/* Waits until no call is in flight. */
static void drain(proto_rpc_client_t *cli, load_t *l)
{
    while (proto_rpc_client_inflight(cli) > 0) {
        zmq_pollitem_t items[PROTO_RPC_ENDPOINTS_MAX];
        int n = proto_rpc_client_pollitems(cli, items, PROTO_RPC_ENDPOINTS_MAX);
        int wait = proto_rpc_client_next_timeout_ms(cli);
        zmq_poll(items, n, wait < 0 || wait > 10 ? 10 : wait);
        proto_rpc_client_process(cli, load_done, l);
    }
}

/* Starts qc-signer with workers and, b->rounds times, measures the raw rate at as many
 * threads (the service idle) and then the service's rate, keeping the best of each: the
 * machine is shared, and alternating the two exposes both to the same disturbances.
 * Returns the service's best signatures per second (or -1) and sets *raw_best. */
static double bench_service(const bench_t *b, void *zctx, signer_token_t *tok,
                            const signer_key_t *key, int workers, double *raw_best, double *mean_us)
{
    char listen[64], workers_text[16], pin_file[BENCH_PATH_MAX + 16], http[16];
    snprintf(http, sizeof(http), "%d", BENCH_HTTP_PORT);
    snprintf(listen, sizeof(listen), "tcp://127.0.0.1:%d", BENCH_PORT);
    snprintf(workers_text, sizeof(workers_text), "%d", workers);
    snprintf(pin_file, sizeof(pin_file), "%s/pin", b->hsm);
    char *argv[] = {(char *)b->signer,
                    "--listen",
                    listen,
                    "--curve-key",
                    (char *)b->server_key,
                    "--allow",
                    (char *)b->allow,
                    "--ledger-keys", /* the bench's client signs allows: the ledger's role */
                    (char *)b->allow,
                    "--audit-keys",
                    (char *)b->allow,
                    "--token-label",
                    BENCH_TOKEN,
                    "--pin-file",
                    pin_file,
                    "--workers",
                    workers_text,
                    "--module",
                    (char *)b->module,
                    "--http-port",
                    http,
                    NULL};
    /* The audit log line of every signature is still written, to /dev/null. */
    pid_t pid = qctest_spawn(&(qctest_cmd_t){.argv = argv, .err_path = "/dev/null"});
    if (pid < 0)
        return -1;
    char ep[64];
    snprintf(ep, sizeof(ep), "tcp://127.0.0.1:%d", BENCH_PORT);
    proto_rpc_client_config_t cfg = {.service = "signer",
                                     .endpoints = ep,
                                     .server_public_z85 = b->server_kp.public_z85,
                                     .keys = &b->client_kp};
    proto_rpc_client_t *cli = NULL;
    size_t req_len = 0;
    uint8_t *req = bench_request(&req_len);
    double rate = -1;
    if (req == NULL || proto_rpc_client_new(zctx, &cfg, &cli) != 0)
        goto done;
    /* Ready when one call succeeds. */
    uint64_t ready_end = ops_time_mono_ms() + BENCH_READY_TIMEOUT_MS;
    bool ready = false;
    while (!ready && ops_time_mono_ms() < ready_end) {
        proto_rpc_reply_t *reply = NULL;
        if (proto_rpc_client_call(cli, "sign", req, req_len, 500, PROTO_RPC_IDEMPOTENT, &reply) ==
            0)
            ready = reply->code == 0;
        proto_rpc_reply_destroy(&reply);
    }
    if (!ready)
        goto done;
    load_t warm = {0};
    drive(b, cli, req, req_len, ops_time_mono_ms() + BENCH_WARMUP_MS, &warm);
    drain(cli, &warm);
    *raw_best = -1;
    for (int r = 0; r < b->rounds; r++) {
        double raw = bench_raw(b, tok, key, workers);
        *raw_best = raw > *raw_best ? raw : *raw_best;
        load_t l = {0};
        uint64_t start = ops_time_mono_ms();
        drive(b, cli, req, req_len, start + (uint64_t)b->seconds * 1000, &l);
        double secs = (double)(ops_time_mono_ms() - start) / 1000.0;
        /* Calls still in flight at the end are not counted: a window's worth, which the
         * calls in flight at the start (answered inside the interval) make up for. */
        drain(cli, &l);
        if (l.failed != 0) {
            fprintf(stderr, "signer_bench: %" PRIu64 " calls failed at %d workers\n", l.failed,
                    workers);
            goto done;
        }
        double got = (double)l.ok / secs;
        rate = got > rate ? got : rate;
    }
    *mean_us = worker_mean_us();
done:
    proto_rpc_client_destroy(&cli);
    free(req);
    qctest_stop(pid, SIGTERM);
    return rate;
}

/* ---------------------------------------------------------------- main */

static void usage(FILE *to)
{
    fprintf(to,
            "usage: signer_bench [--signer PATH] [--seconds S] [--rounds R] [--window W]\n"
            "                    [--workers N]\n"
            "Measures raw PKCS#11 C_Sign and qc-signer at 1, 2 and N threads/workers (N\n"
            "defaults to the number of cores) on a fresh SoftHSM2 token: R alternating rounds\n"
            "of S seconds each, best of each reported.\n"
            "Defaults: --signer %s, --seconds %d, --rounds %d, --window %d.\n",
            QC_BENCH_SIGNER, BENCH_SECONDS_DEFAULT, BENCH_ROUNDS_DEFAULT, BENCH_WINDOW_DEFAULT);
}

static int bench_setup(bench_t *b)
{
    if (qctest_dir_new("qc-signer-bench", b->dir) != 0)
        return -1;
    snprintf(b->hsm, sizeof(b->hsm), "%s/hsm", b->dir);
    char devhsm[BENCH_PATH_MAX];
    snprintf(devhsm, sizeof(devhsm), "%s/ops/devhsm", QC_BENCH_SOURCE_DIR);
    char *argv[] = {devhsm,
                    "init",
                    b->hsm,
                    "--pin",
                    BENCH_PIN,
                    "--signer",
                    (char *)b->signer,
                    "--module",
                    (char *)b->module,
                    NULL};
    if (qctest_run_argv(argv) != 0)
        return -1;
    char conf[BENCH_PATH_MAX + 32];
    snprintf(conf, sizeof(conf), "%s/softhsm2.conf", b->hsm);
    setenv("SOFTHSM2_CONF", conf, 1);
    snprintf(b->server_key, sizeof(b->server_key), "%s/server.key", b->dir);
    snprintf(b->client_key, sizeof(b->client_key), "%s/client.key", b->dir);
    snprintf(b->allow, sizeof(b->allow), "%s.pub", b->client_key);
    if (proto_curve_keypair_create(b->server_key, &b->server_kp) != 0 ||
        proto_curve_keypair_create(b->client_key, &b->client_kp) != 0)
        return -1;
    return 0;
}

int main(int argc, char **argv)
{
    bench_t b = {.signer = QC_BENCH_SIGNER,
                 .module = SIGNER_MODULE_DEFAULT,
                 .seconds = BENCH_SECONDS_DEFAULT,
                 .window = BENCH_WINDOW_DEFAULT,
                 .rounds = BENCH_ROUNDS_DEFAULT,
                 .workers_max = (int)sysconf(_SC_NPROCESSORS_ONLN)};
    for (int i = 1; i < argc; i++) {
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--signer") == 0 && next != NULL) {
            b.signer = argv[++i];
        } else if (strcmp(argv[i], "--seconds") == 0 && next != NULL) {
            b.seconds = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--window") == 0 && next != NULL) {
            b.window = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--rounds") == 0 && next != NULL) {
            b.rounds = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--workers") == 0 && next != NULL) {
            b.workers_max = atoi(argv[++i]);
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (b.seconds < 1 || b.rounds < 1 || b.rounds > BENCH_ROUNDS_MAX || b.window < 1 ||
        b.window > PROTO_RPC_INFLIGHT_MAX || b.workers_max < 1 ||
        b.workers_max > BENCH_THREADS_MAX) {
        usage(stderr);
        return 2;
    }
    ops_log_init("signer_bench", "0", OPS_LOG_WARN);
    if (bench_setup(&b) != 0) {
        fprintf(stderr, "signer_bench: setup failed in %s\n", b.dir);
        return 1;
    }

    signer_token_t *tok = NULL;
    signer_key_t *key = NULL;
    if (signer_token_open(b.module, BENCH_TOKEN, &tok) != 0 ||
        signer_token_login(tok, BENCH_PIN, strlen(BENCH_PIN)) != 0 ||
        signer_token_find_key(tok, "audit-checkpoint", 1, &key) != 0) {
        fprintf(stderr, "signer_bench: token not usable\n");
        return 1;
    }
    int n = b.workers_max;
    /* 1, 2 and N workers; N is left out when it repeats 1 or 2. */
    int counts[3] = {1, 2, n};
    int points = n > 2 ? 3 : 2;
    double raw[3], svc[3], mean_us[3] = {-1, -1, -1};
    double inproc = -1;
    for (int r = 0; r < b.rounds; r++) {
        double got = bench_in_process(&b, tok);
        inproc = got > inproc ? got : inproc;
    }
    /* The service's own process opens the token; ours stays logged in but idle. */
    void *zctx = zmq_ctx_new();
    for (int i = 0; i < points; i++)
        svc[i] = bench_service(&b, zctx, tok, key, counts[i], &raw[i], &mean_us[i]);

    printf("signer_bench: best of %d rounds of %d s, window %d calls in flight, %ld cores\n",
           b.rounds, b.seconds, b.window, sysconf(_SC_NPROCESSORS_ONLN));
    printf(
        "in-process signer_sign_request, 1 thread: %7.0f sig/s (%5.1f us/sig) = %5.1f%% of raw\n",
        inproc, 1e6 / inproc, 100.0 * inproc / raw[0]);
    for (int i = 0; i < points; i++)
        printf("threads/workers %2d: raw C_Sign %7.0f sig/s (%5.1f us/sig/thread)   service %7.0f "
               "sig/s = %5.1f%% of raw   (worker: %5.1f us per check+sign+seal)\n",
               counts[i], raw[i], 1e6 * counts[i] / raw[i], svc[i], 100.0 * svc[i] / raw[i],
               mean_us[i]);
    zmq_ctx_term(zctx);
    signer_key_destroy(&key);
    signer_token_destroy(&tok);
    char *rm[] = {"/bin/rm", "-rf", b.dir, NULL};
    qctest_run_argv(rm);
    return 0;
}
