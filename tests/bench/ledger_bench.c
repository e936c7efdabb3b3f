/* ledger_bench.c - Reserve+Settle pairs per second on the ledger, fsync on, at several
 * group-commit batch sizes: store-only (the saga in-process, signatures made and checked
 * beforehand) and full path (qc-ledger over CURVE RPC, verifying every signature).
 *
 *   ledger_bench [--mode store|full|both] [--pairs N] [--runs R] [--ledger PATH]
 *                [--batches 1,4,16,64,256]
 *
 * Batch size B: the store-only path applies B requests per LMDB commit (B reserves, then
 * the B settles of those loads); the full path runs qc-ledger with --batch-max B and keeps
 * B devices busy, so up to B requests wait at each commit. Not a CTest test. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "ops_time.h"
#include "ledger_proc.h"
#include "ledger_saga.h"
#include "ledger_service.h"
#include "ledger_store.h"
#include "ledger_testkit.h"
#include "ops_log.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "qc_error.h"
#include "qctest_fs.h"

#define BENCH_BATCHES_MAX 16
#define BENCH_PAIRS_DEFAULT 4096
#define BENCH_MAP_SIZE (1ull << 30)
#define BENCH_PORT 17480
#define BENCH_DEPOSIT 1000000000000ll
#define BENCH_AMOUNT 100
#define BENCH_DEADLINE_MS (3600 * 1000)
#define BENCH_CALL_MS 30000
#define BENCH_RUNS_DEFAULT 3      /* the machine is shared: report the best of a few runs */
#define BENCH_ROUNDS_PER_BATCH 64 /* pairs per run = batch * this, within [256, --pairs] */
#define BENCH_PAIRS_MIN 256

#ifndef QC_BENCH_LEDGER
#define QC_BENCH_LEDGER "qc-ledger"
#endif

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "ledger_bench: %s: %s\n", what, qc_strerror(rc));
    exit(1);
}

/* One load's signed artefacts, made before the clock starts. */
typedef struct pair {
    tk_load_t l;
    char device[32];
    uint8_t *req, *allow, *rep;
    size_t req_len, allow_len, rep_len;
    uint8_t *reserve_body, *settle_body; /* RPC bodies, full path */
    size_t reserve_body_len, settle_body_len;
} pair_t;

typedef struct devs {
    size_t n;
    EVP_PKEY **key;
    uint8_t **cert;
    size_t *cert_len;
} devs_t;

static void devs_make(devs_t *d, size_t n)
{
    d->n = n;
    d->key = calloc(n, sizeof *d->key);
    d->cert = calloc(n, sizeof *d->cert);
    d->cert_len = calloc(n, sizeof *d->cert_len);
    for (size_t i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof id, "bench-dev-%zu", i);
        d->key[i] = qctest_key_new();
        qctest_cert_self_der(d->key[i], id, &d->cert[i], &d->cert_len[i]);
    }
}

static void devs_free(devs_t *d)
{
    for (size_t i = 0; i < d->n; i++) {
        EVP_PKEY_free(d->key[i]);
        free(d->cert[i]);
    }
    free(d->key);
    free(d->cert);
    free(d->cert_len);
}

/* Pair k belongs to device k % n, round k / n: its counter is the round. The allow is the one
 * the ledger builds for a load reserved at now with deadline (the store-only run stores it;
 * over RPC the ledger has its own clock and signer, so the prepared reports name another allow
 * body and settle as REPORT_MISMATCH: compensations, the same work as confirmations). */
static pair_t *pairs_make(const devs_t *d, EVP_PKEY *bank, size_t count, uint64_t now,
                          uint64_t deadline)
{
    pair_t *p = calloc(count, sizeof *p);
    for (size_t k = 0; k < count; k++) {
        snprintf(p[k].device, sizeof p[k].device, "bench-dev-%zu", k % d->n);
        p[k].l.device_id = p[k].device;
        p[k].l.account_id = "bench";
        p[k].l.amount = BENCH_AMOUNT;
        p[k].l.counter = k / d->n;
        tk_txn_id(p[k].l.txn_id);
        tk_request(d->key[k % d->n], &p[k].l, &p[k].req, &p[k].req_len);
        tk_allow_at(bank, p[k].req, p[k].req_len, now, deadline, &p[k].allow, &p[k].allow_len);
        tk_report(d->key[k % d->n], &p[k].l, p[k].l.counter + 1,
                  QUANCUN__REPORT_STATUS__REPORT_APPLIED, p[k].allow, p[k].allow_len, &p[k].rep,
                  &p[k].rep_len);
        Qcledger__ReserveRequest r = QCLEDGER__RESERVE_REQUEST__INIT;
        r.request.data = p[k].req;
        r.request.len = p[k].req_len;
        Qcledger__SettleRequest s = QCLEDGER__SETTLE_REQUEST__INIT;
        s.txn_id.data = p[k].l.txn_id;
        s.txn_id.len = 16;
        s.report.data = p[k].rep;
        s.report.len = p[k].rep_len;
        if (proto_pack(&r.base, &p[k].reserve_body, &p[k].reserve_body_len) != 0 ||
            proto_pack(&s.base, &p[k].settle_body, &p[k].settle_body_len) != 0)
            die("pack", QC_ENOMEM);
    }
    return p;
}

static void pairs_free(pair_t *p, size_t count)
{
    for (size_t k = 0; k < count; k++) {
        free(p[k].req);
        free(p[k].allow);
        free(p[k].rep);
        free(p[k].reserve_body);
        free(p[k].settle_body);
    }
    free(p);
}

/* Decoded views of a pair's bodies, for the trusted (store-only) entry points. */
typedef struct decoded {
    Quancun__LoadRequest *r;
    Quancun__ExecutionReport *e;
} decoded_t;

static void *decode_body(const uint8_t *env_bytes, size_t len, int kind)
{
    proto_envelope_t *env = NULL;
    size_t blen = 0;
    if (proto_envelope_open(env_bytes, len, &env) != 0)
        die("open", QC_EDECODE);
    const uint8_t *body = proto_envelope_body(env, &blen);
    void *out = NULL;
    int rc = kind == 0 ? proto_decode_load_request(body, blen, (Quancun__LoadRequest **)&out)
             : kind == 1
                 ? proto_decode_load_allow(body, blen, (Quancun__LoadAllow **)&out)
                 : proto_decode_execution_report(body, blen, (Quancun__ExecutionReport **)&out);
    proto_envelope_destroy(&env);
    if (rc != 0)
        die("decode", rc);
    return out;
}

/* ------------------------------------------------------------ store-only */

static double bench_store(size_t batch, size_t count)
{
    char dir[QCTEST_PATH_MAX];
    if (qctest_dir_new("qc-ledger-bench", dir) != 0)
        die("mkdtemp", QC_EIO);
    ledger_store_t *store = NULL;
    int rc = ledger_store_open(dir, BENCH_MAP_SIZE, &store);
    if (rc != 0)
        die("store open", rc);
    EVP_PKEY *bank = qctest_key_new();
    ledger_saga_t *saga = NULL;
    ledger_saga_config_t cfg = {.store = store, .allow_key = bank, .shard_count = 1};
    if ((rc = ledger_saga_new(&cfg, &saga)) != 0)
        die("saga", rc);
    uint64_t now = ops_time_wall_ms();
    char why[LEDGER_WHY_MAX] = "";
    ledger_account_t spec = {.id = "bench", .currency = TK_CURRENCY}, acct;
    uint8_t txn[16];
    tk_txn_id(txn);
    if ((rc = ledger_saga_open_account(saga, NULL, now, &spec, &acct, why)) != 0 ||
        (rc = ledger_saga_deposit(saga, NULL, now, "bench", BENCH_DEPOSIT, txn, &acct, why)) != 0)
        die(why, rc);
    devs_t d;
    devs_make(&d, batch);
    ledger_device_t *dev = malloc(sizeof *dev);
    for (size_t i = 0; i < batch; i++)
        if ((rc = ledger_saga_enroll_device(saga, NULL, now, "bench", d.cert[i], d.cert_len[i], 0,
                                            0, dev, why)) != 0)
            die(why, rc);
    free(dev);
    pair_t *p = pairs_make(&d, bank, count, now, now + BENCH_DEADLINE_MS);
    decoded_t *dec = calloc(count, sizeof *dec);
    for (size_t k = 0; k < count; k++) {
        dec[k].r = decode_body(p[k].req, p[k].req_len, 0);
        dec[k].e = decode_body(p[k].rep, p[k].rep_len, 2);
    }
    ledger_load_t *load = malloc(sizeof *load);
    double t0 = now_s(), commit_s = 0;
    for (size_t base = 0; base < count; base += batch) {
        size_t end = base + batch < count ? base + batch : count;
        for (int phase = 0; phase < 2; phase++) {
            MDB_txn *t = NULL;
            if ((rc = ledger_store_txn_begin(store, NULL, true, &t)) != 0)
                die("begin", rc);
            for (size_t k = base; k < end; k++) {
                /* Reserve, then (a later commit in the service) the bank's allow stored. */
                rc = phase == 0
                         ? ledger_saga_reserve_trusted(saga, t, now, now + BENCH_DEADLINE_MS,
                                                       dec[k].r, p[k].req, p[k].req_len, load, why)
                         : ledger_saga_settle_trusted(saga, t, now, p[k].l.txn_id, dec[k].e,
                                                      p[k].rep, p[k].rep_len, load, why);
                if (rc == 0 && phase == 0)
                    rc = ledger_saga_store_allow(saga, t, now, p[k].l.txn_id, p[k].allow,
                                                 p[k].allow_len, load, why);
                if (rc != 0)
                    die(why, rc);
            }
            double c0 = now_s();
            if ((rc = ledger_store_txn_commit(t)) != 0)
                die("commit", rc);
            commit_s += now_s() - c0;
        }
    }
    double total_s = now_s() - t0;
    double rate = (double)count / total_s;
    fprintf(stderr, "store-only batch %zu: %.3f s applying, %.3f s committing (%zu commits)\n",
            batch, total_s - commit_s, commit_s, 2 * ((count + batch - 1) / batch));
    ledger_check_t *c = malloc(sizeof *c);
    if (ledger_saga_check(saga, NULL, c) != 0 || !c->ok || c->loads != count)
        die("check after the run", QC_EINTERNAL);
    free(c);
    for (size_t k = 0; k < count; k++) {
        quancun__load_request__free_unpacked(dec[k].r, NULL);
        quancun__execution_report__free_unpacked(dec[k].e, NULL);
    }
    free(dec);
    free(load);
    pairs_free(p, count);
    devs_free(&d);
    ledger_saga_destroy(&saga);
    ledger_store_close(&store);
    EVP_PKEY_free(bank);
    if (qctest_dir_remove(dir) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return rate;
}

/* ------------------------------------------------------------ full path */

typedef struct flow {
    pair_t *p;
    size_t count, ndev;
    size_t *next_round; /* per device: the round of its next reserve */
    size_t done, failed;
    proto_rpc_client_t *cli;
} flow_t;

/* Tag: pair index * 2 + (0 reserve, 1 settle). */
static void flow_send(flow_t *f, size_t k, int step)
{
    uint64_t id = 0;
    const pair_t *p = &f->p[k];
    int rc = proto_rpc_client_send(
        f->cli, step == 0 ? "reserve" : "settle", step == 0 ? p->reserve_body : p->settle_body,
        step == 0 ? p->reserve_body_len : p->settle_body_len, BENCH_CALL_MS, PROTO_RPC_IDEMPOTENT,
        (void *)(uintptr_t)(k * 2 + (size_t)step), &id);
    if (rc != 0)
        die("send", rc);
}

static void flow_done(void *arg, void *tag, int code, proto_rpc_reply_t *reply)
{
    flow_t *f = arg;
    size_t k = (size_t)(uintptr_t)tag / 2;
    int step = (int)((uintptr_t)tag % 2);
    if (code == 0)
        code = reply->code;
    proto_rpc_reply_destroy(&reply);
    if (code != 0) {
        fprintf(stderr, "ledger_bench: %s failed: %s\n", step == 0 ? "reserve" : "settle",
                qc_errname(code));
        f->failed++;
        return;
    }
    if (step == 0) {
        flow_send(f, k, 1);
        return;
    }
    f->done++;
    size_t next = k + f->ndev; /* the same device's next round */
    if (next < f->count)
        flow_send(f, next, 0);
}

static double bench_full(const char *bin, size_t batch, size_t count)
{
    lp_t lp;
    if (lp_setup(&lp, bin, BENCH_PORT) != 0)
        die("setup", QC_EIO);
    char bm[16];
    snprintf(bm, sizeof bm, "%zu", batch);
    const char *extra[] = {"--batch-max", bm, "--log-level", "warn", "--map-size-mb", "1024", NULL};
    if (lp_start(&lp, NULL, 0, extra) != 0)
        die("start qc-ledger", QC_EIO);
    int rc;
    if ((rc = lp_open_account(&lp, "bench", TK_CURRENCY, 0)) != 0 ||
        (rc = lp_deposit(&lp, "bench", BENCH_DEPOSIT)) != 0)
        die("account", rc);
    devs_t d;
    devs_make(&d, batch);
    for (size_t i = 0; i < batch; i++)
        if ((rc = lp_enroll(&lp, "bench", d.cert[i], d.cert_len[i])) != 0)
            die("enroll", rc);
    uint64_t now = ops_time_wall_ms();
    pair_t *p = pairs_make(&d, lp.bank, count, now, now + BENCH_DEADLINE_MS);
    flow_t f = {.p = p, .count = count, .ndev = batch, .cli = lp_client(&lp, &lp.gateway)};
    double t0 = now_s();
    for (size_t i = 0; i < batch && i < count; i++)
        flow_send(&f, i, 0);
    while (f.done + f.failed < count && proto_rpc_client_inflight(f.cli) > 0) {
        zmq_pollitem_t items[PROTO_RPC_ENDPOINTS_MAX];
        int n = proto_rpc_client_pollitems(f.cli, items, PROTO_RPC_ENDPOINTS_MAX);
        int t = proto_rpc_client_next_timeout_ms(f.cli);
        zmq_poll(items, n, t);
        proto_rpc_client_process(f.cli, flow_done, &f);
    }
    double rate = (double)f.done / (now_s() - t0);
    if (f.failed != 0 || f.done != count)
        die("some pairs failed", QC_EINTERNAL);
    if (lp_check(&lp) != 1)
        die("check after the run", QC_EINTERNAL);
    proto_rpc_client_destroy(&f.cli);
    pairs_free(p, count);
    devs_free(&d);
    lp_teardown(&lp);
    return rate;
}

int main(int argc, char **argv)
{
    const char *mode = "both", *bin = QC_BENCH_LEDGER, *batches_arg = "1,4,16,64,256";
    size_t count = BENCH_PAIRS_DEFAULT;
    int runs = BENCH_RUNS_DEFAULT;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0) {
            printf("usage: ledger_bench [--mode store|full|both] [--pairs N] [--runs R] "
                   "[--ledger PATH] [--batches 1,4,16,64,256]\n"
                   "Each cell is the best of R runs of min(N, max(%d, %d x batch)) pairs.\n",
                   BENCH_PAIRS_MIN, BENCH_ROUNDS_PER_BATCH);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "ledger_bench: %s needs a value\n", argv[i]);
            return 2;
        }
        if (strcmp(argv[i], "--mode") == 0)
            mode = argv[++i];
        else if (strcmp(argv[i], "--pairs") == 0)
            count = (size_t)strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--runs") == 0)
            runs = (int)strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--ledger") == 0)
            bin = argv[++i];
        else if (strcmp(argv[i], "--batches") == 0)
            batches_arg = argv[++i];
        else {
            fprintf(stderr, "ledger_bench: unknown %s\n", argv[i]);
            return 2;
        }
    }
    size_t batches[BENCH_BATCHES_MAX], nb = 0;
    char buf[128];
    snprintf(buf, sizeof buf, "%s", batches_arg);
    for (char *s = strtok(buf, ","); s != NULL && nb < BENCH_BATCHES_MAX; s = strtok(NULL, ","))
        batches[nb++] = (size_t)strtoul(s, NULL, 10);
    bool store = strcmp(mode, "full") != 0, full = strcmp(mode, "store") != 0;
    ops_log_init("ledger_bench", "0", OPS_LOG_ERROR);
    printf("Reserve+Settle pairs per second, fsync on, best of %d runs\n", runs < 1 ? 1 : runs);
    printf("%-7s %8s %16s %16s\n", "batch", "pairs", "store-only", "full (RPC+sigs)");
    for (size_t i = 0; i < nb; i++) {
        size_t b = batches[i];
        if (b == 0 || b > LEDGER_BATCH_MAX)
            continue;
        size_t n = b * BENCH_ROUNDS_PER_BATCH;
        if (n < BENCH_PAIRS_MIN)
            n = BENCH_PAIRS_MIN;
        if (n > count)
            n = count;
        n -= n % b;
        if (n == 0)
            continue;
        double s = 0, f = 0;
        for (int r = 0; r < runs || r == 0; r++) {
            double rs = store ? bench_store(b, n) : 0;
            double rf = full ? bench_full(bin, b, n) : 0;
            s = rs > s ? rs : s;
            f = rf > f ? rf : f;
        }
        printf("%-7zu %8zu %16.0f %16.0f\n", b, n, s, f);
        fflush(stdout);
    }
    return 0;
}
