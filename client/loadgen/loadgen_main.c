/* loadgen_main.c - qc-loadgen: many simulated devices doing real loads through real gateways.
 *
 * Phases: set-up (device keys and certificates from the cluster's dev CA, accounts opened,
 * funded and devices enrolled through the ledger's admin RPC), the crypto floor (P-256
 * verify and HSM C_Sign rates on this machine), then the run: open loop (a target rate;
 * every load has an intended send time and its latency is measured from it, so a
 * generator that falls behind cannot hide queueing: no coordinated omission) or closed loop
 * (a fixed number of devices busy at all times). One thread drives every device through
 * the asynchronous proto_rpc client of each gateway. At the end: a table on stdout and,
 * with --json, the same figures as JSON. */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>
#include <zmq.h>

#include "device_core.h"
#include "loadgen_fleet.h"
#include "loadgen_floor.h"
#include "loadgen_stats.h"
#include "ops_config.h"
#include "ops_log.h"
#include "ops_signal.h"
#include "ops_time.h"
#include "proto_rpc.h"
#include "qc_error.h"

#define LOADGEN_GATEWAYS_MAX 16
#define LOADGEN_PATH_MAX 1024
#define LOADGEN_LINE_MAX 4096
#define LOADGEN_POLLITEMS_MAX (LOADGEN_GATEWAYS_MAX * PROTO_RPC_ENDPOINTS_MAX)
#define LOADGEN_BACKLOG_MAX (1u << 22) /* open loop: due loads waiting for an idle device */
#define LOADGEN_PROGRESS_NS 1000000000ull
#define LOADGEN_DRAIN_EXTRA_MS 2000       /* after the call timeout, to let the last calls end */
#define LOADGEN_DEPOSIT (1000000000000ll) /* minor units per account: never the limit */
#define LOADGEN_RATE_MAX 1000000
#define LOADGEN_CONCURRENCY_MAX 65536
#define LOADGEN_HSM_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#define LOADGEN_NS_PER_S 1000000000ull
#define LOADGEN_REPORT_SENDS_MAX 10    /* sends of one report before the device gives up */
#define LOADGEN_REPORT_BACKOFF_MS 200  /* before a report is sent again after a busy reply */
#define LOADGEN_POLL_MAX_MS 10         /* longest sleep of the loop, for the progress line */
#define LOADGEN_WARMUP_CONCURRENCY 128 /* warm-up of an open-loop run */

static const ops_config_key_t loadgen_keys[] = {
    {"dir", OPS_CONFIG_STRING, NULL, "the cluster's directory (ops/cluster up --dir)"},
    {"devices", OPS_CONFIG_INT, "1000", "simulated devices (each loads one at a time)"},
    {"mode", OPS_CONFIG_STRING, "closed", "closed (a concurrency) or open (a target rate)"},
    {"concurrency", OPS_CONFIG_INT, "64", "closed loop: loads in flight at all times"},
    {"rate", OPS_CONFIG_INT, "1000", "open loop: loads started per second"},
    {"duration_s", OPS_CONFIG_INT, "10", "seconds of loads (unless --loads)"},
    {"loads", OPS_CONFIG_INT, "0", "stop after this many loads started (0 = use duration)"},
    {"amount", OPS_CONFIG_INT, "100", "minor units per load"},
    {"timeout_ms", OPS_CONFIG_INT, "10000", "budget of one call to a gateway, retries included"},
    {"floor_ms", OPS_CONFIG_INT, "1000", "CPU ms spent on each crypto floor rate (0 = skip)"},
    {"hsm_module", OPS_CONFIG_STRING, LOADGEN_HSM_MODULE, "PKCS#11 module for the floor"},
    {"json", OPS_CONFIG_STRING, NULL, "write the results as JSON to this file"},
    {"tag", OPS_CONFIG_STRING, NULL, "id tag of this run's devices (default: random)"},
    {"progress", OPS_CONFIG_BOOL, "true", "a progress line on stderr every second"},
    {"warmup", OPS_CONFIG_BOOL, "true",
     "every device loads once before the measured run (connections, caches)"},
};

#define LOADGEN_USAGE                                                                              \
    "--dir DIR [--mode closed --concurrency N | --mode open --rate R] [--duration-s S | "          \
    "--loads N] [--devices N] [--json FILE]\n"                                                     \
    "Simulated devices loading money through the gateways of the cluster in DIR, with real\n"      \
    "signatures on both sides; prints loads/s, outcomes, latencies, errors, server CPU per\n"      \
    "load and its ratio to the crypto floor (2 HSM signs + 2 P-256 verifies) of this machine."

/* ------------------------------------------------------------------ cluster files */

typedef struct loadgen_gateway {
    char endpoint[LOADGEN_PATH_MAX];
    char key_z85[PROTO_CURVE_KEY_Z85_LEN + 1];
} loadgen_gateway_t;

typedef struct loadgen_cluster {
    char dir[LOADGEN_PATH_MAX];
    loadgen_gateway_t gateways[LOADGEN_GATEWAYS_MAX];
    uint32_t gateway_count;
    char ledger_endpoints[LOADGEN_LINE_MAX];
    char ledger_key[PROTO_CURVE_KEY_Z85_LEN + 1];
    char qcctl_key_path[LOADGEN_PATH_MAX];
    char token_label[LOADGEN_PATH_MAX];
} loadgen_cluster_t;

/* Reads the value of key from a "key = value" file into out. Returns 0, QC_EIO or
 * QC_ENOTFOUND. */
static int loadgen_conf_get(const char *path, const char *key, char *out, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return QC_EIO;
    char line[LOADGEN_LINE_MAX];
    size_t klen = strlen(key);
    int rc = QC_ENOTFOUND;
    while (fgets(line, sizeof line, f) != NULL) {
        line[strcspn(line, "\r\n")] = '\0';
        if (strncmp(line, key, klen) != 0)
            continue;
        const char *p = line + klen;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p != '=')
            continue;
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
        if (strlen(p) < cap) {
            snprintf(out, cap, "%s", p);
            rc = 0;
        }
        break;
    }
    fclose(f);
    return rc;
}

/* Reads a .pub file, a key list of one key, with the one key-list parser (proto_curve.h). */
static int loadgen_read_pub(const char *path, char out[PROTO_CURVE_KEY_Z85_LEN + 1])
{
    proto_curve_keylist_t list = {0};
    int rc = proto_curve_keylist_load(path, 1, &list);
    if (rc == 0 && list.count != 1)
        rc = QC_ECONFIG;
    if (rc == 0 && zmq_z85_encode(out, list.keys[0], PROTO_CURVE_KEY_SIZE) == NULL)
        rc = QC_EINTERNAL; /* 32 bytes always encode */
    proto_curve_keylist_clear(&list);
    return rc;
}

static int loadgen_cluster_read(const char *dir, loadgen_cluster_t *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->dir, sizeof c->dir, "%s", dir);
    char path[LOADGEN_PATH_MAX * 2];
    for (uint32_t g = 0; g < LOADGEN_GATEWAYS_MAX; g++) {
        snprintf(path, sizeof path, "%s/conf/gateway-%u.conf", dir, g);
        if (access(path, R_OK) != 0)
            break;
        loadgen_gateway_t *gw = &c->gateways[g];
        if (loadgen_conf_get(path, "listen", gw->endpoint, sizeof gw->endpoint) != 0)
            return QC_ECONFIG;
        snprintf(path, sizeof path, "%s/keys/gateway-%u.key.pub", dir, g);
        if (loadgen_read_pub(path, gw->key_z85) != 0)
            return QC_ECONFIG;
        c->gateway_count++;
    }
    if (c->gateway_count == 0)
        return QC_ECONFIG;
    snprintf(path, sizeof path, "%s/conf/qcctl.conf", dir);
    if (loadgen_conf_get(path, "ledger_endpoints", c->ledger_endpoints,
                         sizeof c->ledger_endpoints) != 0 ||
        loadgen_conf_get(path, "ledger_public_key", c->ledger_key, sizeof c->ledger_key) != 0 ||
        loadgen_conf_get(path, "curve_key", c->qcctl_key_path, sizeof c->qcctl_key_path) != 0)
        return QC_ECONFIG;
    snprintf(path, sizeof path, "%s/conf/signer-0.conf", dir);
    if (loadgen_conf_get(path, "token_label", c->token_label, sizeof c->token_label) != 0)
        snprintf(c->token_label, sizeof c->token_label, "quancun");
    return 0;
}

/* ------------------------------------------------------------------ the run */

typedef enum loadgen_step_state {
    LOADGEN_DEV_IDLE = 0,
    LOADGEN_DEV_SYNCING,   /* the report of an earlier, failed load is sent again first */
    LOADGEN_DEV_LOADING,   /* "load" call in flight */
    LOADGEN_DEV_REPORTING, /* the core's report sent; its outcome awaited */
} loadgen_dev_state_t;

typedef struct loadgen_slot {
    uint64_t intended_ns; /* when this load was due to be sent */
    loadgen_dev_state_t state;
    uint32_t report_sends; /* of the core's stored report (SYNCING, REPORTING) */
} loadgen_slot_t;

/* A report waiting to be sent again after a transient refusal. */
typedef struct loadgen_resend {
    size_t device;
    uint64_t due_ns;
} loadgen_resend_t;

typedef struct loadgen_run {
    loadgen_fleet_t *fleet;
    loadgen_stats_t *stats;
    proto_rpc_client_t *gw[LOADGEN_GATEWAYS_MAX];
    uint32_t gw_count;
    loadgen_slot_t *slots;
    size_t *idle; /* stack of idle device indices */
    size_t idle_count;
    uint64_t *backlog; /* ring of intended times (open loop) */
    size_t backlog_head, backlog_count;
    uint64_t backlog_dropped;
    int64_t amount;
    int timeout_ms;
    uint64_t started, finished, failed, inflight;
    uint64_t synced; /* earlier loads settled before a device's next load */
    uint64_t last_finish_ns;
    int timer_fd; /* open loop: wakes the poll at the next intended send time, to the ns */
    loadgen_resend_t *resends; /* ring, in due order (one fixed back-off), one per device */
    size_t resend_head, resend_count;
    uint64_t report_resends;
} loadgen_run_t;

static device_phase_t loadgen_phase(loadgen_run_t *r, size_t i)
{
    device_status_t st;
    device_core_status(loadgen_fleet_core(r->fleet, i), &st);
    return st.phase;
}

static void loadgen_release(loadgen_run_t *r, size_t i)
{
    r->slots[i].report_sends = 0;
    r->slots[i].state = LOADGEN_DEV_IDLE;
    r->idle[r->idle_count++] = i;
    r->inflight--;
    r->last_finish_ns = ops_time_mono_ns();
}

/* Ends a load that failed. A request that got no allow is abandoned, as a wallet abandons a
 * refused one (its unchanged counter proves to the ledger that nothing was applied); a
 * judged load keeps its report, which the device sends again ("sync") before its next load,
 * as a wallet does until the outcome arrives. */
static void loadgen_fail(loadgen_run_t *r, size_t i, loadgen_step_t step, int code)
{
    loadgen_stats_error(r->stats, step, code);
    if (loadgen_phase(r, i) == DEVICE_PENDING) {
        int rc = device_core_abandon(loadgen_fleet_core(r->fleet, i), code, NULL);
        assert(rc == 0); /* no store: abandoning a PENDING load cannot fail */
        (void)rc;
    }
    r->failed++;
    loadgen_release(r, i);
}

static int loadgen_send(loadgen_run_t *r, size_t i, const char *method, const uint8_t *body,
                        size_t body_len)
{
    uint64_t id = 0;
    /* Both calls are idempotent: the ledger keys reserve and settle by txn id. */
    return proto_rpc_client_send(r->gw[loadgen_fleet_gateway(r->fleet, i)], method, body, body_len,
                                 r->timeout_ms, PROTO_RPC_IDEMPOTENT, (void *)(uintptr_t)i, &id);
}

/* Sends the core's stored report: "report" for the load of this slot, "sync" for an earlier
 * one. */
static int loadgen_send_report(loadgen_run_t *r, size_t i)
{
    loadgen_slot_t *s = &r->slots[i];
    assert(s->state == LOADGEN_DEV_REPORTING || s->state == LOADGEN_DEV_SYNCING);
    const uint8_t *rep = NULL;
    size_t rep_len = 0;
    int rc = device_core_report(loadgen_fleet_core(r->fleet, i), &rep, &rep_len);
    assert(rc == 0); /* the slot reports only a REPORTED device */
    (void)rc;
    s->report_sends++;
    return loadgen_send(r, i, s->state == LOADGEN_DEV_SYNCING ? "sync" : "report", rep, rep_len);
}

/* The device of slot i signs its request and sends it. */
static void loadgen_request(loadgen_run_t *r, size_t i)
{
    loadgen_slot_t *s = &r->slots[i];
    s->state = LOADGEN_DEV_LOADING;
    s->report_sends = 0;
    const uint8_t *req = NULL;
    size_t req_len = 0;
    int rc = loadgen_fleet_request(r->fleet, i, r->amount, &req, &req_len);
    if (rc == 0)
        rc = loadgen_send(r, i, "load", req, req_len);
    if (rc != 0)
        loadgen_fail(r, i, LOADGEN_STEP_LOCAL, rc);
}

/* Starts a load on an idle device, due at intended_ns. A device whose last load failed after
 * its allow was judged first settles that one. */
static void loadgen_start(loadgen_run_t *r, uint64_t intended_ns)
{
    assert(r->idle_count > 0);
    size_t i = r->idle[--r->idle_count];
    loadgen_slot_t *s = &r->slots[i];
    assert(s->state == LOADGEN_DEV_IDLE);
    s->intended_ns = intended_ns;
    r->started++;
    r->inflight++;
    device_phase_t phase = loadgen_phase(r, i);
    assert(phase != DEVICE_PENDING); /* a failed request is abandoned */
    if (phase == DEVICE_IDLE) {
        loadgen_request(r, i);
        return;
    }
    s->state = LOADGEN_DEV_SYNCING;
    s->report_sends = 0;
    int rc = loadgen_send_report(r, i);
    if (rc != 0)
        loadgen_fail(r, i, LOADGEN_STEP_LOCAL, rc);
}

static void loadgen_on_allow(loadgen_run_t *r, size_t i, const proto_rpc_reply_t *reply)
{
    int verdict = 0;
    int rc = device_core_judge_allow(loadgen_fleet_core(r->fleet, i), reply->body, reply->body_len,
                                     &verdict);
    if (rc != 0) {
        loadgen_fail(r, i, LOADGEN_STEP_LOAD, rc);
        return;
    }
    /* A refused allow is an error of the load, but the device reports it (REJECTED) and the
     * load ends with its outcome, as a wallet's does. */
    if (verdict != 0)
        loadgen_stats_error(r->stats, LOADGEN_STEP_LOAD, verdict);
    loadgen_stats_latency(r->stats, LOADGEN_SERIES_ALLOW,
                          ops_time_mono_ns() - r->slots[i].intended_ns);
    r->slots[i].state = LOADGEN_DEV_REPORTING;
    rc = loadgen_send_report(r, i);
    if (rc != 0)
        loadgen_fail(r, i, LOADGEN_STEP_LOCAL, rc);
}

/* True for refusals that mean "try again later", on which a device re-sends its report. An
 * outcome that is not final yet (QC_EBUSY from the core) is one of them. */
static bool loadgen_transient(int code)
{
    return code == QC_EBUSY || code == QC_EUNAVAIL || code == QC_ETIMEOUT;
}

/* The device re-sends its stored report after a back-off, as a real one does until the
 * outcome arrives (client/device/device_flow.c), at most LOADGEN_REPORT_SENDS_MAX times. */
static bool loadgen_report_again(loadgen_run_t *r, size_t i, int code)
{
    loadgen_slot_t *s = &r->slots[i];
    if (!loadgen_transient(code) || s->report_sends >= LOADGEN_REPORT_SENDS_MAX)
        return false;
    assert(r->resend_count < loadgen_fleet_count(r->fleet));
    size_t n = loadgen_fleet_count(r->fleet);
    r->resends[(r->resend_head + r->resend_count++) % n] = (loadgen_resend_t){
        .device = i, .due_ns = ops_time_mono_ns() + LOADGEN_REPORT_BACKOFF_MS * 1000000ull};
    return true;
}

/* Sends the reports whose back-off is over. */
static void loadgen_resend_due(loadgen_run_t *r, uint64_t now)
{
    size_t n = loadgen_fleet_count(r->fleet);
    while (r->resend_count > 0 && r->resends[r->resend_head].due_ns <= now) {
        size_t i = r->resends[r->resend_head].device;
        r->resend_head = (r->resend_head + 1) % n;
        r->resend_count--;
        r->report_resends++;
        int rc = loadgen_send_report(r, i);
        if (rc != 0)
            loadgen_fail(r, i, LOADGEN_STEP_LOCAL, rc);
    }
}

static void loadgen_on_outcome(loadgen_run_t *r, size_t i, const proto_rpc_reply_t *reply)
{
    int state = 0;
    int rc = device_core_accept_outcome(loadgen_fleet_core(r->fleet, i), reply->body,
                                        reply->body_len, &state);
    if (rc != 0) {
        if (!loadgen_report_again(r, i, rc))
            loadgen_fail(r, i, LOADGEN_STEP_REPORT, rc);
        return;
    }
    if (r->slots[i].state == LOADGEN_DEV_SYNCING) {
        /* The earlier load is settled: now this slot's own load. */
        r->synced++;
        loadgen_request(r, i);
        return;
    }
    loadgen_stats_latency(r->stats, LOADGEN_SERIES_OUTCOME,
                          ops_time_mono_ns() - r->slots[i].intended_ns);
    loadgen_stats_outcome(r->stats, state);
    r->finished++;
    loadgen_release(r, i);
}

static void loadgen_on_done(void *arg, void *tag, int code, proto_rpc_reply_t *reply)
{
    loadgen_run_t *r = arg;
    size_t i = (size_t)(uintptr_t)tag;
    assert(i < loadgen_fleet_count(r->fleet));
    loadgen_slot_t *s = &r->slots[i];
    assert(s->state != LOADGEN_DEV_IDLE);
    loadgen_step_t step = s->state == LOADGEN_DEV_LOADING ? LOADGEN_STEP_LOAD : LOADGEN_STEP_REPORT;
    int rc = code != 0 ? code : reply->code;
    if (rc != 0) {
        /* A busy report is sent again after its back-off; anything else ends the load. */
        if (step != LOADGEN_STEP_REPORT || !loadgen_report_again(r, i, rc))
            loadgen_fail(r, i, step, rc);
    } else if (step == LOADGEN_STEP_LOAD)
        loadgen_on_allow(r, i, reply);
    else
        loadgen_on_outcome(r, i, reply);
    proto_rpc_reply_destroy(&reply);
}

/* Polls every gateway client until wait_ms passed, or (when wake_ns is not 0) the monotonic
 * time wake_ns came, and handles what finished. zmq_poll() counts in milliseconds, so the
 * precise wake-up of the open loop is a timerfd among the poll items: rounding to a
 * millisecond would either send late or spin. */
static int loadgen_pump(loadgen_run_t *r, int wait_ms, uint64_t wake_ns)
{
    zmq_pollitem_t items[LOADGEN_POLLITEMS_MAX + 1];
    int n = 0;
    if (wake_ns != 0 && r->timer_fd >= 0) {
        struct itimerspec its = {.it_value = {.tv_sec = (time_t)(wake_ns / LOADGEN_NS_PER_S),
                                              .tv_nsec = (long)(wake_ns % LOADGEN_NS_PER_S)}};
        if (timerfd_settime(r->timer_fd, TFD_TIMER_ABSTIME, &its, NULL) != 0)
            return QC_EIO;
        items[n++] = (zmq_pollitem_t){.socket = NULL, .fd = r->timer_fd, .events = ZMQ_POLLIN};
    }
    for (uint32_t g = 0; g < r->gw_count; g++) {
        n += proto_rpc_client_pollitems(r->gw[g], &items[n], LOADGEN_POLLITEMS_MAX - n);
        int t = proto_rpc_client_next_timeout_ms(r->gw[g]);
        if (t >= 0 && t < wait_ms)
            wait_ms = t;
    }
    if (zmq_poll(items, n, wait_ms) < 0 && zmq_errno() != EINTR)
        return QC_EIO;
    if (wake_ns != 0 && r->timer_fd >= 0 && (items[0].revents & ZMQ_POLLIN)) {
        uint64_t expirations = 0;
        if (read(r->timer_fd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
            return QC_EIO;
    }
    for (uint32_t g = 0; g < r->gw_count; g++)
        proto_rpc_client_process(r->gw[g], loadgen_on_done, r);
    return 0;
}

typedef struct loadgen_plan {
    bool open;
    uint64_t rate, concurrency, loads, duration_ns;
    bool progress;
} loadgen_plan_t;

static void loadgen_progress(const loadgen_run_t *r, uint64_t now, uint64_t start,
                             uint64_t *last_finished)
{
    double t = (double)(now - start) / 1e9;
    fprintf(stderr,
            "%st=%5.1fs  started %8" PRIu64 "  completed %8" PRIu64 " (%5" PRIu64
            "/s)  failed %6" PRIu64 "  in flight %5" PRIu64 "  backlog %6zu%s",
            isatty(STDERR_FILENO) ? "\r" : "", t, r->started, r->finished,
            r->finished - *last_finished, r->failed, r->inflight, r->backlog_count,
            isatty(STDERR_FILENO) ? "" : "\n");
    *last_finished = r->finished;
}

static int loadgen_drive(loadgen_run_t *r, const loadgen_plan_t *plan, uint64_t *elapsed_ns);

/* Every device loads once, in closed loop, and then the counters start again from zero: the
 * measured run sees warm connections and a gateway that has seen every certificate. */
static int loadgen_warmup(loadgen_run_t *r, const loadgen_plan_t *plan)
{
    loadgen_plan_t warm = {
        .open = false,
        .concurrency = plan->open ? LOADGEN_WARMUP_CONCURRENCY : plan->concurrency,
        .loads = loadgen_fleet_count(r->fleet),
        .duration_ns = LOADGEN_NS_PER_S,
        .progress = false,
    };
    fprintf(stderr, "loadgen: warm-up: every device loads once\n");
    uint64_t elapsed = 0;
    int rc = loadgen_drive(r, &warm, &elapsed);
    if (rc != 0)
        return rc;
    if (r->failed > 0)
        fprintf(stderr, "loadgen: warm-up: %" PRIu64 " loads failed\n", r->failed);
    loadgen_stats_destroy(&r->stats);
    r->started = r->finished = r->failed = r->report_resends = r->synced = 0;
    return loadgen_stats_new(&r->stats);
}

/* Runs the plan; sets *elapsed_ns from the first intended send to the last finish. */
static int loadgen_drive(loadgen_run_t *r, const loadgen_plan_t *plan, uint64_t *elapsed_ns)
{
    uint64_t start = ops_time_mono_ns(), next = start, tick = start + LOADGEN_PROGRESS_NS;
    uint64_t interval = plan->open ? LOADGEN_NS_PER_S / plan->rate : 0;
    uint64_t due = 0, last_finished = 0;
    uint64_t drain_until = 0;
    r->last_finish_ns = start;
    for (;;) {
        uint64_t now = ops_time_mono_ns();
        bool sending = !ops_signal_stop_requested() &&
                       (plan->loads > 0 ? due < plan->loads : now - start < plan->duration_ns);
        if (sending && plan->open) {
            /* Every due load gets its intended time, even when no device is free. */
            while (next <= now && (plan->loads == 0 || due < plan->loads)) {
                if (r->backlog_count == LOADGEN_BACKLOG_MAX)
                    r->backlog_dropped++;
                else
                    r->backlog[(r->backlog_head + r->backlog_count++) % LOADGEN_BACKLOG_MAX] = next;
                next += interval;
                due++;
            }
        } else if (sending) {
            while (r->inflight < plan->concurrency && r->idle_count > 0 &&
                   (plan->loads == 0 || due < plan->loads)) {
                loadgen_start(r, now);
                due++;
            }
        }
        loadgen_resend_due(r, now);
        while (r->backlog_count > 0 && r->idle_count > 0) {
            uint64_t t = r->backlog[r->backlog_head];
            r->backlog_head = (r->backlog_head + 1) % LOADGEN_BACKLOG_MAX;
            r->backlog_count--;
            loadgen_start(r, t);
        }
        if (!sending && r->backlog_count == 0 && r->inflight == 0)
            break;
        if (!sending && drain_until == 0)
            drain_until = now + ((uint64_t)r->timeout_ms + LOADGEN_DRAIN_EXTRA_MS) * 1000000ull;
        if (drain_until != 0 && now > drain_until)
            break;
        if (plan->progress && now >= tick) {
            loadgen_progress(r, now, start, &last_finished);
            tick += LOADGEN_PROGRESS_NS;
        }
        int wait_ms = LOADGEN_POLL_MAX_MS;
        uint64_t wake_ns = plan->open && sending ? next : 0;
        if (loadgen_pump(r, wait_ms, wake_ns) != 0)
            return QC_EIO;
    }
    if (plan->progress)
        loadgen_progress(r, ops_time_mono_ns(), start, &last_finished);
    if (plan->progress && isatty(STDERR_FILENO))
        fputc('\n', stderr);
    *elapsed_ns = r->last_finish_ns - start;
    return 0;
}

/* ------------------------------------------------------------------ report */

typedef struct loadgen_result {
    const loadgen_plan_t *plan;
    size_t devices;
    uint32_t gateways;
    double elapsed_s;
    loadgen_latency_t allow, outcome;
    loadgen_proc_t procs[LOADGEN_PROCS_MAX];
    size_t proc_count;
    double server_cpu_s, self_cpu_s;
    double verify_cpu_s, sign_cpu_s; /* per operation, 0 when not measured */
    char loadavg[128];
} loadgen_result_t;

static const struct {
    int state;
    const char *name;
} loadgen_states[] = {
    {QUANCUN__LOAD_STATE__LOAD_CONFIRMED, "CONFIRMED"},
    {QUANCUN__LOAD_STATE__LOAD_COMPENSATED, "COMPENSATED"},
    {QUANCUN__LOAD_STATE__LOAD_LATE_CONFIRMED, "LATE_CONFIRMED"},
    {QUANCUN__LOAD_STATE__LOAD_RESERVED, "RESERVED"},
};

static double loadgen_floor_per_load(const loadgen_result_t *res)
{
    return 2 * res->sign_cpu_s + 2 * res->verify_cpu_s;
}

static void loadgen_print_latency(FILE *f, const char *what, const loadgen_latency_t *l)
{
    fprintf(f, "  %-18s %8.2f %8.2f %8.2f %8.2f %8.2f   (%" PRIu64 " samples)\n", what,
            l->p50_us / 1e3, l->p90_us / 1e3, l->p99_us / 1e3, l->p999_us / 1e3, l->max_us / 1e3,
            l->count);
}

static void loadgen_print(const loadgen_run_t *r, const loadgen_result_t *res)
{
    uint64_t done = loadgen_stats_completed(r->stats);
    FILE *f = stdout;
    fprintf(f, "qc-loadgen: %s loop, %s %" PRIu64 ", %zu devices, %u gateway(s), load avg %s\n",
            res->plan->open ? "open" : "closed", res->plan->open ? "rate" : "concurrency",
            res->plan->open ? res->plan->rate : res->plan->concurrency, res->devices, res->gateways,
            res->loadavg);
    fprintf(f, "  loads started       %10" PRIu64 "\n", r->started);
    fprintf(f, "  loads completed     %10" PRIu64 "  in %.2f s = %.1f loads/s\n", done,
            res->elapsed_s, res->elapsed_s > 0 ? (double)done / res->elapsed_s : 0);
    for (size_t k = 0; k < sizeof loadgen_states / sizeof loadgen_states[0]; k++)
        fprintf(f, "    %-17s %10" PRIu64 "\n", loadgen_states[k].name,
                loadgen_stats_outcomes(r->stats, loadgen_states[k].state));
    fprintf(f, "  loads failed        %10" PRIu64 "\n", r->failed);
    fprintf(f, "  reports sent again  %10" PRIu64 "  (after a busy or unavailable reply)\n",
            r->report_resends);
    if (r->synced > 0)
        fprintf(f,
                "  earlier loads synced %9" PRIu64 "  (a failed load's report, before the next)\n",
                r->synced);
    loadgen_stats_errors_table(r->stats, f);
    if (r->backlog_dropped > 0)
        fprintf(f, "  backlog dropped     %10" PRIu64 "\n", r->backlog_dropped);
    fprintf(f, "  latency (ms)            p50      p90      p99    p99.9      max\n");
    loadgen_print_latency(f, "request->allow", &res->allow);
    loadgen_print_latency(f, "request->outcome", &res->outcome);
    fprintf(f, "  CPU seconds during the run\n");
    for (size_t p = 0; p < res->proc_count; p++)
        fprintf(f, "    %-17s %10.2f\n", res->procs[p].name,
                res->procs[p].cpu_end_s - res->procs[p].cpu_start_s);
    fprintf(f, "    %-17s %10.2f\n", "all services", res->server_cpu_s);
    fprintf(f, "    %-17s %10.2f\n", "qc-loadgen", res->self_cpu_s);
    if (done > 0)
        fprintf(f, "  server CPU per load %10.1f us\n", res->server_cpu_s / (double)done * 1e6);
    if (res->sign_cpu_s > 0 && res->verify_cpu_s > 0) {
        double floor = loadgen_floor_per_load(res);
        fprintf(f, "  crypto floor: P-256 verify %.1f us (%.0f/s), HSM C_Sign %.1f us (%.0f/s)\n",
                res->verify_cpu_s * 1e6, 1 / res->verify_cpu_s, res->sign_cpu_s * 1e6,
                1 / res->sign_cpu_s);
        fprintf(f, "  floor per load (2 signs + 2 verifies) %.1f us\n", floor * 1e6);
        if (done > 0)
            fprintf(f, "  server CPU per load / floor  %.2f\n",
                    res->server_cpu_s / (double)done / floor);
    }
}

static void loadgen_json_latency(FILE *f, const char *name, const loadgen_latency_t *l)
{
    fprintf(f,
            "\"%s\": {\"count\": %" PRIu64 ", \"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, "
            "\"p999\": %.3f, \"max\": %.3f, \"mean\": %.3f}",
            name, l->count, l->p50_us / 1e3, l->p90_us / 1e3, l->p99_us / 1e3, l->p999_us / 1e3,
            l->max_us / 1e3, l->mean_us / 1e3);
}

static int loadgen_json(const char *path, const loadgen_run_t *r, const loadgen_result_t *res)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return QC_EIO;
    uint64_t done = loadgen_stats_completed(r->stats);
    double floor = loadgen_floor_per_load(res);
    fprintf(f,
            "{\"mode\": \"%s\", \"rate_target\": %" PRIu64 ", \"concurrency\": %" PRIu64
            ", \"devices\": %zu, \"gateways\": %u, \"loadavg\": \"%s\",\n",
            res->plan->open ? "open" : "closed", res->plan->open ? res->plan->rate : 0,
            res->plan->open ? 0 : res->plan->concurrency, res->devices, res->gateways,
            res->loadavg);
    fprintf(f,
            " \"started\": %" PRIu64 ", \"completed\": %" PRIu64 ", \"failed\": %" PRIu64
            ", \"backlog_dropped\": %" PRIu64 ", \"report_resends\": %" PRIu64
            ", \"synced\": %" PRIu64 ", \"elapsed_s\": %.3f, \"loads_per_s\": %.1f,\n",
            r->started, done, r->failed, r->backlog_dropped, r->report_resends, r->synced,
            res->elapsed_s, res->elapsed_s > 0 ? (double)done / res->elapsed_s : 0);
    fprintf(f, " \"outcomes\": {");
    for (size_t k = 0; k < sizeof loadgen_states / sizeof loadgen_states[0]; k++)
        fprintf(f, "%s\"%s\": %" PRIu64, k > 0 ? ", " : "", loadgen_states[k].name,
                loadgen_stats_outcomes(r->stats, loadgen_states[k].state));
    fprintf(f, "},\n \"errors\": ");
    loadgen_stats_errors_json(r->stats, f);
    fprintf(f, ",\n \"latency_ms\": {");
    loadgen_json_latency(f, "request_allow", &res->allow);
    fprintf(f, ", ");
    loadgen_json_latency(f, "request_outcome", &res->outcome);
    fprintf(f, "},\n \"cpu_s\": {");
    for (size_t p = 0; p < res->proc_count; p++)
        fprintf(f, "%s\"%s\": %.3f", p > 0 ? ", " : "", res->procs[p].name,
                res->procs[p].cpu_end_s - res->procs[p].cpu_start_s);
    fprintf(f, "},\n \"server_cpu_s\": %.3f, \"loadgen_cpu_s\": %.3f, ", res->server_cpu_s,
            res->self_cpu_s);
    fprintf(f, "\"server_cpu_per_load_us\": %.2f,\n",
            done > 0 ? res->server_cpu_s / (double)done * 1e6 : 0);
    fprintf(f, " \"floor\": {\"verify_us\": %.3f, \"hsm_sign_us\": %.3f, \"per_load_us\": %.3f},\n",
            res->verify_cpu_s * 1e6, res->sign_cpu_s * 1e6, floor * 1e6);
    fprintf(f, " \"cpu_per_load_over_floor\": %.3f}\n",
            done > 0 && floor > 0 ? res->server_cpu_s / (double)done / floor : 0);
    return fclose(f) == 0 ? 0 : QC_EIO;
}

/* ------------------------------------------------------------------ main */

static int loadgen_plan_read(const ops_config_t *cfg, loadgen_plan_t *plan)
{
    const char *mode = ops_config_str(cfg, "mode");
    int64_t rate = ops_config_int(cfg, "rate"), conc = ops_config_int(cfg, "concurrency");
    int64_t loads = ops_config_int(cfg, "loads"), dur = ops_config_int(cfg, "duration_s");
    memset(plan, 0, sizeof *plan);
    if (strcmp(mode, "open") == 0)
        plan->open = true;
    else if (strcmp(mode, "closed") != 0)
        return QC_ECONFIG;
    if (rate < 1 || rate > LOADGEN_RATE_MAX || conc < 1 || conc > LOADGEN_CONCURRENCY_MAX ||
        loads < 0 || dur < 1)
        return QC_ECONFIG;
    plan->rate = (uint64_t)rate;
    plan->concurrency = (uint64_t)conc;
    plan->loads = (uint64_t)loads;
    plan->duration_ns = (uint64_t)dur * LOADGEN_NS_PER_S;
    plan->progress = ops_config_bool(cfg, "progress");
    return 0;
}

static int loadgen_connect(loadgen_run_t *r, void *zctx, const loadgen_cluster_t *c,
                           const proto_curve_keypair_t *kp)
{
    for (uint32_t g = 0; g < c->gateway_count; g++) {
        proto_rpc_client_config_t cc = {
            .service = "gateway",
            .endpoints = c->gateways[g].endpoint,
            .server_public_z85 = c->gateways[g].key_z85,
            .keys = kp,
        };
        int rc = proto_rpc_client_new(zctx, &cc, &r->gw[g]);
        if (rc != 0)
            return rc;
        r->gw_count++;
    }
    return 0;
}

static int loadgen_floor(const ops_config_t *cfg, const loadgen_cluster_t *c, loadgen_result_t *res)
{
    int ms = (int)ops_config_int(cfg, "floor_ms");
    if (ms <= 0)
        return 0;
    char conf[LOADGEN_PATH_MAX * 2], pin[LOADGEN_PATH_MAX * 2];
    snprintf(conf, sizeof conf, "%s/hsm/softhsm2.conf", c->dir);
    snprintf(pin, sizeof pin, "%s/hsm/pin", c->dir);
    fprintf(stderr, "loadgen: measuring the crypto floor (%d ms CPU each)\n", ms);
    int rc = loadgen_floor_verify(ms, &res->verify_cpu_s);
    if (rc == 0)
        rc = loadgen_floor_hsm(ops_config_str(cfg, "hsm_module"), conf, c->token_label, pin,
                               "allow-signing", ms, &res->sign_cpu_s);
    if (rc != 0)
        fprintf(stderr, "loadgen: crypto floor: %s\n", qc_strerror(rc));
    return rc;
}

static void loadgen_loadavg(char *out, size_t cap)
{
    snprintf(out, cap, "?");
    FILE *f = fopen("/proc/loadavg", "r");
    if (f == NULL)
        return;
    double a = 0, b = 0, c = 0;
    if (fscanf(f, "%lf %lf %lf", &a, &b, &c) == 3)
        snprintf(out, cap, "%.2f %.2f %.2f", a, b, c);
    fclose(f);
}

/* Everything after the configuration: set-up, floor, run, report. */
static int loadgen_main(const ops_config_t *cfg, const loadgen_plan_t *plan, void *zctx)
{
    loadgen_cluster_t cluster;
    const char *dir = ops_config_str(cfg, "dir");
    int rc = loadgen_cluster_read(dir, &cluster);
    if (rc != 0) {
        fprintf(stderr, "qc-loadgen: %s is not an ops/cluster directory\n", dir);
        return rc;
    }
    char tag[LOADGEN_TAG_MAX + 1];
    uint8_t rnd[4];
    if (ops_config_str(cfg, "tag") != NULL)
        snprintf(tag, sizeof tag, "%s", ops_config_str(cfg, "tag"));
    else if (RAND_bytes(rnd, sizeof rnd) == 1)
        snprintf(tag, sizeof tag, "%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3]);
    else
        return QC_ECRYPTO;

    static loadgen_result_t res;
    loadgen_run_t r = {.amount = ops_config_int(cfg, "amount"),
                       .timeout_ms = (int)ops_config_int(cfg, "timeout_ms"),
                       .timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)};
    if (r.timer_fd < 0)
        return QC_EIO;
    proto_curve_keypair_t admin_kp, device_kp;
    memset(&admin_kp, 0, sizeof admin_kp);
    memset(&device_kp, 0, sizeof device_kp);
    char p1[LOADGEN_PATH_MAX * 2], p2[LOADGEN_PATH_MAX * 2], p3[LOADGEN_PATH_MAX * 2],
        p4[LOADGEN_PATH_MAX * 2];
    snprintf(p1, sizeof p1, "%s/ca/ca.pem", dir);
    snprintf(p2, sizeof p2, "%s/ca/ca.key", dir);
    snprintf(p3, sizeof p3, "%s/hsm/keys/allow-signing-v1.cert.pem", dir);
    snprintf(p4, sizeof p4, "%s/hsm/keys/outcome-signing-v1.cert.pem", dir);
    loadgen_fleet_config_t fc = {
        .count = (size_t)ops_config_int(cfg, "devices"),
        .tag = tag,
        .ca_cert_path = p1,
        .ca_key_path = p2,
        .allow_cert_path = p3,
        .outcome_cert_path = p4,
        .gateway_count = cluster.gateway_count,
    };
    if (r.amount <= 0 || r.timeout_ms <= 0 || ops_config_int(cfg, "devices") < 1 ||
        ops_config_int(cfg, "devices") > LOADGEN_DEVICES_MAX) {
        rc = QC_ECONFIG;
        goto out;
    }
    if ((rc = loadgen_fleet_new(&fc, &r.fleet)) != 0) {
        fprintf(stderr, "qc-loadgen: making the devices: %s\n", qc_strerror(rc));
        goto out;
    }
    if ((rc = proto_curve_keypair_load(cluster.qcctl_key_path, &admin_kp)) != 0)
        goto out;
    loadgen_admin_config_t ac = {
        .endpoints = cluster.ledger_endpoints,
        .server_public_z85 = cluster.ledger_key,
        .keys = &admin_kp,
        .deposit = LOADGEN_DEPOSIT,
    };
    if ((rc = loadgen_fleet_enroll(r.fleet, zctx, &ac)) != 0) {
        fprintf(stderr, "qc-loadgen: enrolling the devices: %s\n", qc_strerror(rc));
        goto out;
    }
    if ((rc = loadgen_floor(cfg, &cluster, &res)) != 0)
        goto out;

    /* Devices are anonymous to the gateway: an ephemeral CURVE key for the whole fleet. */
    rc = QC_ECRYPTO;
    if (zmq_curve_keypair(device_kp.public_z85, device_kp.secret_z85) != 0)
        goto out;
    size_t n = loadgen_fleet_count(r.fleet);
    rc = QC_ENOMEM;
    r.slots = calloc(n, sizeof *r.slots);
    r.idle = calloc(n, sizeof *r.idle);
    r.backlog = plan->open ? calloc(LOADGEN_BACKLOG_MAX, sizeof *r.backlog) : NULL;
    r.resends = calloc(n, sizeof *r.resends);
    if (r.slots == NULL || r.idle == NULL || r.resends == NULL ||
        (plan->open && r.backlog == NULL) || loadgen_stats_new(&r.stats) != 0)
        goto out;
    for (size_t i = 0; i < n; i++)
        r.idle[r.idle_count++] = n - 1 - i;
    if ((rc = loadgen_connect(&r, zctx, &cluster, &device_kp)) != 0)
        goto out;

    char pids[LOADGEN_PATH_MAX * 2];
    snprintf(pids, sizeof pids, "%s/pids", dir);
    if (ops_config_bool(cfg, "warmup") && (rc = loadgen_warmup(&r, plan)) != 0)
        goto out;
    if ((rc = loadgen_procs_find(pids, res.procs, LOADGEN_PROCS_MAX, &res.proc_count)) != 0)
        goto out;
    double self_start = loadgen_self_cpu();
    fprintf(stderr, "loadgen: running (%s loop) against %u gateway(s)\n",
            plan->open ? "open" : "closed", cluster.gateway_count);
    uint64_t elapsed_ns = 0;
    if ((rc = loadgen_drive(&r, plan, &elapsed_ns)) != 0)
        goto out;
    res.self_cpu_s = loadgen_self_cpu() - self_start;
    for (size_t p = 0; p < res.proc_count; p++) {
        if (loadgen_proc_cpu(res.procs[p].pid, &res.procs[p].cpu_end_s) != 0)
            res.procs[p].cpu_end_s = res.procs[p].cpu_start_s; /* it died: unknown */
        res.server_cpu_s += res.procs[p].cpu_end_s - res.procs[p].cpu_start_s;
    }
    loadgen_loadavg(res.loadavg, sizeof res.loadavg);
    res.plan = plan;
    res.devices = n;
    res.gateways = cluster.gateway_count;
    res.elapsed_s = (double)elapsed_ns / 1e9;
    loadgen_stats_latency_summary(r.stats, LOADGEN_SERIES_ALLOW, &res.allow);
    loadgen_stats_latency_summary(r.stats, LOADGEN_SERIES_OUTCOME, &res.outcome);
    loadgen_print(&r, &res);
    const char *json = ops_config_str(cfg, "json");
    if (json != NULL && (rc = loadgen_json(json, &r, &res)) != 0)
        fprintf(stderr, "qc-loadgen: cannot write %s\n", json);
out:
    for (uint32_t g = 0; g < r.gw_count; g++)
        proto_rpc_client_destroy(&r.gw[g]);
    proto_curve_keypair_wipe(&admin_kp);
    proto_curve_keypair_wipe(&device_kp);
    loadgen_stats_destroy(&r.stats);
    loadgen_fleet_destroy(&r.fleet);
    free(r.slots);
    free(r.resends);
    free(r.idle);
    free(r.backlog);
    close(r.timer_fd);
    return rc;
}

int main(int argc, char **argv)
{
    ops_config_t *cfg = NULL;
    char err[OPS_CONFIG_ERROR_MAX];
    int rc = ops_config_load("qc-loadgen", LOADGEN_USAGE, loadgen_keys,
                             sizeof loadgen_keys / sizeof loadgen_keys[0], argc, argv, &cfg, err,
                             sizeof err);
    if (rc == 1)
        return 0;
    if (rc != 0) {
        fprintf(stderr, "qc-loadgen: %s\n", err);
        return 2;
    }
    loadgen_plan_t plan;
    if (ops_config_str(cfg, "dir") == NULL || loadgen_plan_read(cfg, &plan) != 0) {
        fprintf(stderr,
                "qc-loadgen: --dir is required; --mode open|closed, --rate 1..%d, "
                "--concurrency 1..%d, --duration-s >= 1, --loads >= 0\n",
                LOADGEN_RATE_MAX, LOADGEN_CONCURRENCY_MAX);
        ops_config_destroy(&cfg);
        return 2;
    }
    ops_log_init("qc-loadgen", "0", OPS_LOG_WARN);
    ops_signal_install();
    void *zctx = zmq_ctx_new();
    if (zctx == NULL) {
        ops_config_destroy(&cfg);
        return 1;
    }
    rc = loadgen_main(cfg, &plan, zctx);
    zmq_ctx_term(zctx);
    ops_config_destroy(&cfg);
    if (rc != 0)
        fprintf(stderr, "qc-loadgen: %s\n", qc_strerror(rc));
    return rc == 0 ? 0 : 1;
}
