/* audit_bench.c - audit log figures: events per second appended with fsync on (store-only at
 * several group-commit sizes, and qc-audit over CURVE RPC), and seconds to verify N entries
 * offline (chain recomputed, every checkpoint signature checked).
 *
 *   audit_bench [--events N] [--payload BYTES] [--batches 1,16,64,256] [--rpc-inflight K]
 *               [--verify-entries N] [--checkpoint-every N] [--dir DIR] [--skip-rpc]
 *               [--paced RATE]
 *
 * Store-only: batches of B events per audit_store_append() (one LMDB commit, one fsync).
 * RPC: qc-audit --batch-max 64 with K appends in flight from one client, so up to K wait at
 * each commit. Verify: N entries written in large commits, a checkpoint signed by a software
 * P-256 key every --checkpoint-every entries, then audit_verify_dir() is timed.
 * Paced (--paced RATE, events/s, as a signer raises them: two a load): the same events sent
 * at that rate one "append" each with up to 64 in flight (the sender before issue 15's
 * batches), then through proto_audit (frames of "append_batch"); for each the CPU of
 * qc-audit and of this sending process (its ZeroMQ threads included) per event, and frames.
 * Not a CTest test; run it from a Release build. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "ops_time.h"
#include "audit.pb-c.h"
#include "audit_proc.h"
#include "audit_store.h"
#include "audit_verify.h"
#include "ledger_testkit.h"
#include "proto_cert.h"
#include "proto_audit.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "qc_error.h"
#include "ops_metrics.h"
#include "qctest_fs.h"
#include "qctest_http.h"

#define BENCH_BATCHES_MAX 16
#define BENCH_EVENTS_DEFAULT 20000
#define BENCH_PAYLOAD_DEFAULT 1024 /* a Load with request and allow is about this size */
#define BENCH_VERIFY_DEFAULT 1000000
#define BENCH_VERIFY_PAYLOAD 256
#define BENCH_CHECKPOINT_EVERY 1000
#define BENCH_FILL_BATCH 4096 /* entries per commit while filling the verify log */
#define BENCH_MAP_SIZE (16ull << 30)
#define BENCH_PORT 18180
#define BENCH_INFLIGHT_DEFAULT 256
#define BENCH_CALL_MS 30000

#ifndef QC_BENCH_AUDIT
#define QC_BENCH_AUDIT "qc-audit"
#endif

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "audit_bench: %s: %s\n", what, qc_strerror(rc));
    exit(1);
}

static void make_dir(const char *base, const char *name, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s-XXXXXX", base, name);
    if (mkdtemp(out) == NULL)
        die("mkdtemp", QC_EIO);
}

static void remove_dir(const char *dir)
{
    if (qctest_dir_remove(dir) != 0)
        fprintf(stderr, "audit_bench: could not remove %s\n", dir);
}

/* ------------------------------------------------------------------ store-only appends */

static void bench_store(const char *base, uint64_t events, size_t payload_len, size_t batch)
{
    char dir[256];
    make_dir(base, "audit-bench-store", dir, sizeof dir);
    audit_store_t *store = NULL;
    int rc = audit_store_open(dir, 0, BENCH_MAP_SIZE, &store);
    if (rc != 0)
        die("open", rc);
    uint8_t *payload = malloc(payload_len);
    audit_event_t *evs = calloc(batch, sizeof *evs);
    audit_append_result_t *res = calloc(batch, sizeof *res);
    uint8_t txn[16];
    for (size_t i = 0; i < payload_len; i++)
        payload[i] = (uint8_t)i;
    double t0 = now_s();
    uint64_t done = 0;
    while (done < events) {
        size_t n = events - done < batch ? (size_t)(events - done) : batch;
        for (size_t i = 0; i < n; i++) {
            tk_txn_id(txn);
            evs[i] = (audit_event_t){.source = "ledger-0",
                                     .source_seq = done + i + 1,
                                     .type = "load.reserved",
                                     .txn_id = txn,
                                     .txn_id_len = 16,
                                     .payload = payload,
                                     .payload_len = payload_len};
        }
        if ((rc = audit_store_append(store, evs, n, res)) != 0)
            die("append", rc);
        done += n;
    }
    double dt = now_s() - t0;
    printf("store  batch %4zu: %8" PRIu64 " events of %zu B in %6.2f s = %9.0f events/s "
           "(%7.0f commits/s)\n",
           batch, events, payload_len, dt, (double)events / dt, (double)events / batch / dt);
    fflush(stdout);
    free(res);
    free(evs);
    free(payload);
    audit_store_destroy(&store);
    remove_dir(dir);
}

/* ------------------------------------------------------------------ appends over RPC */

static uint64_t g_rpc_ok;

static void rpc_done(void *arg, void *tag, int code, proto_rpc_reply_t *reply)
{
    (void)arg;
    (void)tag;
    if (code == 0 && reply->code == 0)
        g_rpc_ok++;
    proto_rpc_reply_destroy(&reply);
}

/* Starts qc-audit (group commits of up to 64 requests) with a client on its allow-list. */
static void start_audit(ap_t *ap)
{
    if (ap_setup(ap, QC_BENCH_AUDIT, BENCH_PORT) != 0)
        die("ap_setup", QC_EIO);
    const char *extra[] = {"--batch-max", "64", "--log-level", "warn", NULL};
    if (ap_start(ap, NULL, 0, extra) != 0)
        die("start qc-audit", QC_EIO);
}

/* Sends one "append" without waiting for its reply. */
static void send_append(ap_t *ap, const char *source, uint64_t source_seq, const char *type,
                        uint8_t *payload, size_t payload_len)
{
    Qcaudit__AppendRequest m = QCAUDIT__APPEND_REQUEST__INIT;
    m.source = (char *)source;
    m.source_seq = source_seq;
    m.type = (char *)type;
    m.payload.data = payload;
    m.payload.len = payload_len;
    uint8_t *body = NULL;
    size_t len = 0;
    uint64_t id = 0;
    if (proto_pack(&m.base, &body, &len) != 0 ||
        proto_rpc_client_send(ap->cli, "append", body, len, BENCH_CALL_MS, 0, NULL, &id) != 0)
        die("send", QC_EIO);
    free(body);
}

static void bench_rpc(const char *base, uint64_t events, size_t payload_len, int inflight)
{
    (void)base;
    ap_t ap;
    start_audit(&ap);
    uint8_t *payload = calloc(1, payload_len);
    uint64_t sent = 0;
    g_rpc_ok = 0;
    double t0 = now_s();
    while (g_rpc_ok < events) {
        while (sent < events && proto_rpc_client_inflight(ap.cli) < inflight) {
            send_append(&ap, "gateway-0", ++sent, "security.bench", payload, payload_len);
        }
        zmq_pollitem_t items[PROTO_RPC_ENDPOINTS_MAX];
        int n = proto_rpc_client_pollitems(ap.cli, items, PROTO_RPC_ENDPOINTS_MAX);
        zmq_poll(items, n, 100);
        proto_rpc_client_process(ap.cli, rpc_done, NULL);
        if (sent == events && proto_rpc_client_inflight(ap.cli) == 0)
            break;
    }
    double dt = now_s() - t0;
    printf("rpc    inflight %4d: %8" PRIu64 " events of %zu B in %6.2f s = %9.0f events/s "
           "(%" PRIu64 " acknowledged)\n",
           inflight, events, payload_len, dt, (double)g_rpc_ok / dt, g_rpc_ok);
    fflush(stdout);
    free(payload);
    ap_teardown(&ap);
}

/* ------------------------------------------------------------------ paced: one by one or in frames
 */

#define BENCH_PACED_INFLIGHT 64 /* the sender's appends in flight before batches */

/* CPU seconds of process pid (utime + stime), from /proc. */
static double proc_cpu_s(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    if (p == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* Events [0, events) at rate per second: batched through proto_audit, or one append each. */
static void bench_paced(uint64_t events, size_t payload_len, uint64_t rate, bool batched)
{
    ap_t ap;
    start_audit(&ap);
    proto_audit_t *ga = NULL;
    if (batched && proto_audit_new(ap.zctx, "signer-0", ap.endpoint, ap.server.public_z85,
                                   &ap.client, &ga) != 0)
        die("proto_audit_new", QC_EIO);
    uint8_t *payload = calloc(1, payload_len);
    ops_counter_t *delivered = ops_counter("qc_proto_audit_delivered_total", "");
    uint64_t base_delivered = ops_counter_value(delivered);
    uint64_t sent = 0;
    g_rpc_ok = 0;
    double a0 = proc_cpu_s(ap.pid), s0 = self_cpu_s(), t0 = now_s();
    for (;;) {
        uint64_t due = (uint64_t)((now_s() - t0) * (double)rate);
        for (; sent < events && sent < due; sent++) {
            if (batched) {
                proto_audit_event(ga, "sign.load_allow", NULL, payload, payload_len);
                continue;
            }
            if (proto_rpc_client_inflight(ap.cli) >= BENCH_PACED_INFLIGHT)
                break;
            send_append(&ap, "signer-0", sent + 1, "sign.load_allow", payload, payload_len);
        }
        uint64_t done = batched ? ops_counter_value(delivered) - base_delivered : g_rpc_ok;
        if (sent == events && done >= events)
            break;
        zmq_pollitem_t items[PROTO_AUDIT_POLLITEMS_MAX];
        int n = batched ? proto_audit_pollitems(ga, items, PROTO_AUDIT_POLLITEMS_MAX)
                        : proto_rpc_client_pollitems(ap.cli, items, PROTO_RPC_ENDPOINTS_MAX);
        zmq_poll(items, n, 1);
        if (batched)
            proto_audit_process(ga);
        else
            proto_rpc_client_process(ap.cli, rpc_done, NULL);
    }
    double dt = now_s() - t0, acpu = proc_cpu_s(ap.pid) - a0, scpu = self_cpu_s() - s0;
    int64_t frames = qctest_metric(ap.http_port, "qc_audit_append_frames_total");
    printf("paced  %-8s %6" PRIu64 " events/s: %8" PRIu64 " events of %zu B in %6.2f s; CPU per "
           "event: qc-audit %5.1f us, sender %5.1f us; %.1f events a frame\n",
           batched ? "batched" : "single", rate, events, payload_len, dt,
           acpu * 1e6 / (double)events, scpu * 1e6 / (double)events,
           frames > 0 ? (double)events / (double)frames : 1.0);
    fflush(stdout);
    proto_audit_destroy(&ga);
    free(payload);
    ap_teardown(&ap);
}

/* ------------------------------------------------------------------ offline verify */

static void append_checkpoint(audit_store_t *store, EVP_PKEY *key)
{
    uint64_t seq = 0;
    uint8_t hash[AUDIT_HASH_SIZE];
    int rc = audit_store_last(store, &seq, hash);
    if (rc != 0)
        die("last", rc);
    Quancun__AuditCheckpoint cp = QUANCUN__AUDIT_CHECKPOINT__INIT;
    cp.seq = seq;
    cp.hash.data = hash;
    cp.hash.len = sizeof hash;
    cp.time_ms = ops_time_wall_ms();
    uint8_t *body = NULL, *env = NULL;
    size_t body_len = 0, env_len = 0;
    if ((rc = proto_pack(&cp.base, &body, &body_len)) != 0 ||
        (rc = proto_envelope_sign(PROTO_TYPE_AUDIT_CHECKPOINT, body, body_len, key, 1, NULL, 0,
                                  &env, &env_len)) != 0)
        die("sign", rc);
    audit_event_t ev = {.source = AUDIT_SOURCE_SELF,
                        .source_seq = seq,
                        .type = AUDIT_TYPE_CHECKPOINT,
                        .payload = env,
                        .payload_len = env_len};
    audit_append_result_t res;
    if ((rc = audit_store_append(store, &ev, 1, &res)) != 0)
        die("append checkpoint", rc);
    free(body);
    free(env);
}

static void bench_verify(const char *base, uint64_t entries, uint64_t every)
{
    char dir[256];
    make_dir(base, "audit-bench-verify", dir, sizeof dir);
    audit_store_t *store = NULL;
    int rc = audit_store_open(dir, 0, BENCH_MAP_SIZE, &store);
    if (rc != 0)
        die("open", rc);
    EVP_PKEY *key = qctest_key_new();
    uint8_t payload[BENCH_VERIFY_PAYLOAD];
    memset(payload, 0x5a, sizeof payload);
    audit_event_t *evs = calloc(BENCH_FILL_BATCH, sizeof *evs);
    audit_append_result_t *res = calloc(BENCH_FILL_BATCH, sizeof *res);
    uint8_t(*txns)[16] = calloc(BENCH_FILL_BATCH, 16);
    double t0 = now_s();
    uint64_t total = 0, events = 0, since = 0, checkpoints = 0;
    while (total < entries) {
        /* Fill up to the next checkpoint (or the end), in commits of BENCH_FILL_BATCH. */
        uint64_t room = entries - total;
        size_t n = room < BENCH_FILL_BATCH ? (size_t)room : BENCH_FILL_BATCH;
        if (every > 0 && since + n >= every)
            n = (size_t)(every - since);
        for (size_t i = 0; i < n; i++) {
            tk_txn_id(txns[i]);
            evs[i] = (audit_event_t){.source = (events % 2) ? "ledger-1" : "ledger-0",
                                     .source_seq = events / 2 + 1,
                                     .type = "load.reserved",
                                     .txn_id = txns[i],
                                     .txn_id_len = 16,
                                     .payload = payload,
                                     .payload_len = sizeof payload};
            events++;
        }
        if (n > 0 && (rc = audit_store_append(store, evs, n, res)) != 0)
            die("fill", rc);
        total += n;
        since += n;
        if (every > 0 && since == every && total < entries) {
            append_checkpoint(store, key);
            total++;
            checkpoints++;
            since = 0;
        }
    }
    double fill = now_s() - t0;
    audit_store_destroy(&store);
    char pem[300];
    snprintf(pem, sizeof pem, "%s.pem", dir);
    qctest_write_pubkey(pem, key);
    EVP_PKEY *pub = NULL;
    if (proto_key_load_pem(pem, &pub) != 0)
        die("load pem", QC_EIO);
    /* Cold-ish: the files were just written, so the page cache holds them; that is the
     * figure for a copy on local disk that was just made. */
    audit_verify_report_t r;
    t0 = now_s();
    rc = audit_verify_dir(dir, pub, &r);
    double dt = now_s() - t0;
    if (rc != 0)
        fprintf(stderr, "audit_bench: verify failed: %s\n", r.why);
    printf("verify: %" PRIu64 " entries (%" PRIu64 " checkpoints, payload %d B) filled in "
           "%.1f s; verified in %.2f s = %.0f entries/s (%s)\n",
           r.entries, r.checkpoints, BENCH_VERIFY_PAYLOAD, fill, dt, (double)r.entries / dt,
           rc == 0 ? "intact" : "BROKEN");
    fflush(stdout);
    EVP_PKEY_free(pub);
    EVP_PKEY_free(key);
    free(txns);
    free(res);
    free(evs);
    unlink(pem);
    remove_dir(dir);
    (void)checkpoints;
}

int main(int argc, char **argv)
{
    uint64_t events = BENCH_EVENTS_DEFAULT, verify_entries = BENCH_VERIFY_DEFAULT;
    uint64_t every = BENCH_CHECKPOINT_EVERY;
    size_t payload = BENCH_PAYLOAD_DEFAULT;
    size_t batches[BENCH_BATCHES_MAX] = {1, 16, 64, 256};
    size_t nb = 4;
    int inflight = BENCH_INFLIGHT_DEFAULT;
    bool rpc = true;
    uint64_t paced = 0;
    const char *tmp = getenv("TMPDIR");
    const char *base = tmp != NULL ? tmp : "/tmp";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--skip-rpc") == 0) {
            rpc = false;
            continue;
        }
        if (v == NULL) {
            fprintf(stderr, "usage: see the top of tests/bench/audit_bench.c\n");
            return 2;
        }
        i++;
        if (strcmp(a, "--events") == 0)
            events = strtoull(v, NULL, 10);
        else if (strcmp(a, "--payload") == 0)
            payload = strtoull(v, NULL, 10);
        else if (strcmp(a, "--verify-entries") == 0)
            verify_entries = strtoull(v, NULL, 10);
        else if (strcmp(a, "--checkpoint-every") == 0)
            every = strtoull(v, NULL, 10);
        else if (strcmp(a, "--rpc-inflight") == 0)
            inflight = atoi(v);
        else if (strcmp(a, "--paced") == 0)
            paced = strtoull(v, NULL, 10);
        else if (strcmp(a, "--dir") == 0)
            base = v;
        else if (strcmp(a, "--batches") == 0) {
            nb = 0;
            char buf[256];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *s = NULL, *t = strtok_r(buf, ",", &s); t != NULL && nb < BENCH_BATCHES_MAX;
                 t = strtok_r(NULL, ",", &s))
                batches[nb++] = strtoull(t, NULL, 10);
        } else {
            fprintf(stderr, "audit_bench: unknown option %s\n", a);
            return 2;
        }
    }
    if (payload > AUDIT_PAYLOAD_MAX || inflight < 1 || inflight > PROTO_RPC_INFLIGHT_MAX) {
        fprintf(stderr, "audit_bench: payload or inflight out of range\n");
        return 2;
    }
    if (paced > 0) {
        /* Alternated, twice each: the machine's neighbours change between runs. */
        for (int r = 0; r < 2; r++) {
            bench_paced(events, payload, paced, false);
            bench_paced(events, payload, paced, true);
        }
        return 0;
    }
    for (size_t i = 0; i < nb; i++) {
        if (batches[i] < 1 || batches[i] > AUDIT_STORE_BATCH_MAX)
            die("batch size", QC_EINVAL);
        /* Fewer events at batch 1: one fsync each. */
        uint64_t n = batches[i] == 1 && events > 2000 ? 2000 : events;
        bench_store(base, n, payload, batches[i]);
    }
    if (rpc)
        bench_rpc(base, events, payload, inflight);
    if (verify_entries > 0)
        bench_verify(base, verify_entries, every);
    return 0;
}
