/* gateway_flood.c - a bounded flood of connections on a gateway's device port, with the
 * gateway's memory (VmRSS, VmHWM of --pid) read before, during and after each round.
 *
 * Each round opens --connections connections: every --curve-every'th is a real CURVE client
 * (proto_rpc_client) making one call ("load" with an empty body, which the gateway refuses at
 * once without calling a ledger); the others are, in turn, idle (connect, send nothing), a
 * ZMTP greeting cut short, and bytes that are no ZMTP at all (an HTTP request). The round holds
 * them for --hold-ms, closes them all, then waits --settle-ms and reads the gateway's RSS again.
 * Every CURVE call is tallied by the code it was answered with (QC_EBUSY when the gateway is at its
 * connection limit), or as no reply. With --early N, N more CURVE clients connect and are
 * answered before the flood, then call again a quarter into the hold: being within the bound,
 * they must be served (early_answered, early_busy).
 *
 * One line per round on stdout:
 *   round=1 connections=5000 connected=5000 rss_before_kb=.. rss_peak_kb=.. rss_after_kb=..
 *   hwm_kb=.. calls=1250 answered=1250 busy=0 noreply=0
 *
 * Loopback only, bounded: at most GATEWAY_FLOOD_CONNECTIONS_MAX connections and
 * GATEWAY_FLOOD_ROUNDS_MAX rounds. The caller's descriptor limit must exceed --connections. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "ops_time.h"
#include "proto_curve.h"
#include "proto_rpc_client.h"
#include "qc_error.h"

#define GATEWAY_FLOOD_CONNECTIONS_MAX 20000
#define GATEWAY_FLOOD_ROUNDS_MAX 10
#define GATEWAY_FLOOD_EARLY_MAX 1000
#define GATEWAY_FLOOD_MS_MAX 600000 /* longest hold or settle */
#define GATEWAY_FLOOD_SAMPLE_MS 100 /* RSS sampling step */
#define GATEWAY_FLOOD_RAW_KINDS 3   /* idle, partial, bad */

typedef enum flood_kind {
    FLOOD_IDLE = 0,
    FLOOD_PARTIAL = 1, /* a ZMTP 3 greeting cut after its signature and version */
    FLOOD_BAD = 2,     /* not ZMTP at all */
    FLOOD_CURVE = 3,   /* a real CURVE client with one call */
} flood_kind_t;

typedef struct flood_opts {
    const char *endpoint;
    const char *server_key;
    long connections;
    long rounds;
    long hold_ms;
    long settle_ms;
    long pid;
    long call_timeout_ms;
    long curve_every;
    long early; /* CURVE clients connected before the flood, calling again during it */
} flood_opts_t;

typedef struct flood_conn {
    flood_kind_t kind;
    int fd;                  /* raw kinds: the socket, -1 when none */
    bool sent;               /* raw kinds: their bytes went out */
    proto_rpc_client_t *cli; /* FLOOD_CURVE */
    bool done;
} flood_conn_t;

typedef struct flood_tally {
    long calls, answered, busy, noreply, connected;
} flood_tally_t;

/* Reads "VmRSS:" or "VmHWM:" of pid in kB; -1 when it cannot. */
static long flood_status_kb(long pid, const char *field)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    char line[256];
    long kb = -1;
    size_t flen = strlen(field);
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, field, flen) == 0) {
            kb = strtol(line + flen, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb;
}

static int flood_parse_endpoint(const char *ep, struct sockaddr_in *sa)
{
    char host[64];
    unsigned port = 0;
    if (sscanf(ep, "tcp://%63[^:]:%u", host, &port) != 2 || port == 0 || port > 65535)
        return -1;
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1)
        return -1;
    /* Loopback only: this is a flood. */
    if ((ntohl(sa->sin_addr.s_addr) >> 24) != 127)
        return -1;
    return 0;
}

static void flood_done(void *arg, void *tag, int code, proto_rpc_reply_t *reply)
{
    flood_tally_t *t = arg;
    flood_conn_t *c = tag;
    c->done = true;
    if (code == 0 && reply != NULL) {
        t->answered++;
        if (reply->code == QC_EBUSY)
            t->busy++;
    } else {
        t->noreply++;
    }
    proto_rpc_reply_destroy(&reply);
}

/* Bytes of the raw kinds once connected. */
static void flood_send_raw(flood_conn_t *c)
{
    static const uint8_t partial[] = {0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3};
    static const char bad[] = "GET /metrics HTTP/1.1\r\nHost: gateway\r\n\r\n";
    ssize_t n = 0;
    if (c->kind == FLOOD_PARTIAL)
        n = send(c->fd, partial, sizeof partial, MSG_NOSIGNAL);
    else if (c->kind == FLOOD_BAD)
        n = send(c->fd, bad, sizeof bad - 1, MSG_NOSIGNAL);
    (void)n; /* a refused send is a connection the gateway already closed */
    c->sent = true;
}

/* Sends c's call ("load", empty: refused at once by a gateway that serves it). */
static int flood_call(const flood_opts_t *o, flood_conn_t *c)
{
    uint64_t id = 0;
    c->done = false;
    return proto_rpc_client_send(c->cli, "load", NULL, 0, (int)o->call_timeout_ms, 0, c, &id);
}

/* Opens connection i of a round (i < 0: an early client, always CURVE). */
static int flood_open(const flood_opts_t *o, void *ctx, const struct sockaddr_in *sa, long i,
                      flood_conn_t *c)
{
    memset(c, 0, sizeof *c);
    c->fd = -1;
    c->kind = i < 0 || i % o->curve_every == o->curve_every - 1
                  ? FLOOD_CURVE
                  : (flood_kind_t)(i % GATEWAY_FLOOD_RAW_KINDS);
    if (c->kind == FLOOD_CURVE) {
        proto_curve_keypair_t kp;
        if (zmq_curve_keypair(kp.public_z85, kp.secret_z85) != 0)
            return -1;
        proto_rpc_client_config_t cc = {.service = "flood",
                                        .endpoints = o->endpoint,
                                        .server_public_z85 = o->server_key,
                                        .keys = &kp};
        int rc = proto_rpc_client_new(ctx, &cc, &c->cli);
        proto_curve_keypair_wipe(&kp);
        if (rc != 0)
            return -1;
        return flood_call(o, c);
    }
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    if (connect(c->fd, (const struct sockaddr *)sa, sizeof *sa) != 0 && errno != EINPROGRESS)
        return -1;
    return 0;
}

/* One pass over the connections: raw ones that connected send their bytes, CURVE clients
 * take their replies. Waits at most wait_ms. */
static void flood_step(flood_conn_t *conns, long n, struct pollfd *pfds, zmq_pollitem_t *items,
                       flood_tally_t *t, int wait_ms)
{
    long np = 0;
    for (long i = 0; i < n; i++) {
        flood_conn_t *c = &conns[i];
        if (c->fd >= 0 && !c->sent)
            pfds[np++] = (struct pollfd){.fd = c->fd, .events = POLLOUT};
    }
    if (np > 0 && poll(pfds, (nfds_t)np, 0) > 0) {
        long k = 0;
        for (long i = 0; i < n && k < np; i++) {
            flood_conn_t *c = &conns[i];
            if (c->fd < 0 || c->sent)
                continue;
            if ((pfds[k].revents & POLLOUT) != 0) {
                int err = 0;
                socklen_t len = sizeof err;
                if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) {
                    t->connected++;
                    flood_send_raw(c);
                } else {
                    c->sent = true; /* refused: nothing to send */
                }
            }
            k++;
        }
    }
    long ni = 0;
    for (long i = 0; i < n; i++) {
        if (conns[i].cli != NULL && !conns[i].done)
            ni += proto_rpc_client_pollitems(conns[i].cli, &items[ni], 1);
    }
    if (ni > 0)
        (void)zmq_poll(items, (int)ni, wait_ms);
    else if (wait_ms > 0)
        usleep((useconds_t)wait_ms * 1000);
    for (long i = 0; i < n; i++) {
        if (conns[i].cli != NULL && !conns[i].done)
            (void)proto_rpc_client_process(conns[i].cli, flood_done, t);
    }
}

static void flood_close_all(flood_conn_t *conns, long n, flood_tally_t *t)
{
    for (long i = 0; i < n; i++) {
        flood_conn_t *c = &conns[i];
        if (c->fd >= 0)
            close(c->fd);
        c->fd = -1;
        if (c->cli != NULL && !c->done)
            t->noreply++;
        if (c->cli != NULL && c->done)
            t->connected++;
        proto_rpc_client_destroy(&c->cli);
    }
}

/* Sleeps ms while sampling RSS; returns the last sample and raises *peak. */
static long flood_watch(long pid, long ms, long *peak)
{
    uint64_t end = ops_time_mono_ns() + (uint64_t)ms * 1000000u;
    long rss = flood_status_kb(pid, "VmRSS:");
    while (ops_time_mono_ns() < end) {
        usleep(GATEWAY_FLOOD_SAMPLE_MS * 1000);
        rss = flood_status_kb(pid, "VmRSS:");
        if (rss > *peak)
            *peak = rss;
    }
    return rss;
}

static int flood_round(const flood_opts_t *o, void *ctx, const struct sockaddr_in *sa, long round)
{
    long n = o->connections;
    flood_conn_t *conns = calloc((size_t)n, sizeof *conns);
    struct pollfd *pfds = calloc((size_t)n, sizeof *pfds);
    zmq_pollitem_t *items = calloc((size_t)n, sizeof *items);
    if (conns == NULL || pfds == NULL || items == NULL) {
        free(conns);
        free(pfds);
        free(items);
        return -1;
    }
    flood_tally_t t = {0}, te = {0};
    long ne = o->early;
    flood_conn_t *early = calloc((size_t)ne + 1, sizeof *early);
    struct pollfd *epfds = calloc((size_t)ne + 1, sizeof *epfds);
    zmq_pollitem_t *eitems = calloc((size_t)ne + 1, sizeof *eitems);
    if (early == NULL || epfds == NULL || eitems == NULL)
        ne = 0; /* no early clients rather than no round */
    /* The early clients connect and are answered once before the flood: they are within the
     * bound, so their calls during the flood must be served. */
    for (long i = 0; i < ne; i++) {
        if (flood_open(o, ctx, sa, -1, &early[i]) != 0) {
            fprintf(stderr, "gateway_flood: early client %ld failed\n", i);
            ne = i;
            break;
        }
    }
    uint64_t early_end = ops_time_mono_ns() + (uint64_t)o->call_timeout_ms * 1000000u;
    while (te.answered + te.noreply < ne && ops_time_mono_ns() < early_end)
        flood_step(early, ne, epfds, eitems, &te, GATEWAY_FLOOD_SAMPLE_MS);
    memset(&te, 0, sizeof te);
    long before = flood_status_kb(o->pid, "VmRSS:");
    long peak = before;
    long opened = 0;
    for (long i = 0; i < n; i++, opened++) {
        if (flood_open(o, ctx, sa, i, &conns[i]) != 0) {
            fprintf(stderr, "gateway_flood: connection %ld: %s\n", i, strerror(errno));
            break;
        }
        if (conns[i].kind == FLOOD_CURVE)
            t.calls++;
    }
    uint64_t start = ops_time_mono_ns();
    uint64_t end = start + (uint64_t)o->hold_ms * 1000000u;
    uint64_t early_at = start + (uint64_t)o->hold_ms * 1000000u / 4; /* the flood is up */
    bool early_sent = false;
    while (ops_time_mono_ns() < end) {
        if (!early_sent && ops_time_mono_ns() >= early_at) {
            for (long i = 0; i < ne; i++) {
                if (flood_call(o, &early[i]) == 0)
                    te.calls++;
            }
            early_sent = true;
        }
        flood_step(conns, opened, pfds, items, &t, GATEWAY_FLOOD_SAMPLE_MS);
        flood_step(early, ne, epfds, eitems, &te, 0);
        long rss = flood_status_kb(o->pid, "VmRSS:");
        if (rss > peak)
            peak = rss;
    }
    flood_close_all(conns, opened, &t);
    flood_close_all(early, ne, &te);
    long after = flood_watch(o->pid, o->settle_ms, &peak);
    printf("round=%ld connections=%ld connected=%ld rss_before_kb=%ld rss_peak_kb=%ld "
           "rss_after_kb=%ld hwm_kb=%ld calls=%ld answered=%ld busy=%ld noreply=%ld "
           "early_calls=%ld early_answered=%ld early_busy=%ld\n",
           round, opened, t.connected, before, peak, after, flood_status_kb(o->pid, "VmHWM:"),
           t.calls, t.answered, t.busy, t.noreply, te.calls, te.answered, te.busy);
    fflush(stdout);
    free(early);
    free(epfds);
    free(eitems);
    free(conns);
    free(pfds);
    free(items);
    return opened == n ? 0 : -1;
}

static int flood_usage(void)
{
    fprintf(stderr, "usage: gateway_flood --endpoint tcp://127.0.0.1:PORT --server-key Z85 "
                    "--pid PID [--connections 5000] [--rounds 2] [--hold-ms 5000] "
                    "[--settle-ms 10000] [--call-timeout-ms 4000] [--curve-every 4] "
                    "[--early 0]\n");
    return 2;
}

static bool flood_long(const char *s, long min, long max, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

int main(int argc, char **argv)
{
    flood_opts_t o = {.connections = 5000,
                      .rounds = 2,
                      .hold_ms = 5000,
                      .settle_ms = 10000,
                      .pid = 0,
                      .call_timeout_ms = 4000,
                      .curve_every = 4};
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        bool ok = true;
        if (strcmp(k, "--endpoint") == 0)
            o.endpoint = v;
        else if (strcmp(k, "--server-key") == 0)
            o.server_key = v;
        else if (strcmp(k, "--pid") == 0)
            ok = flood_long(v, 1, INT32_MAX, &o.pid);
        else if (strcmp(k, "--connections") == 0)
            ok = flood_long(v, 1, GATEWAY_FLOOD_CONNECTIONS_MAX, &o.connections);
        else if (strcmp(k, "--rounds") == 0)
            ok = flood_long(v, 1, GATEWAY_FLOOD_ROUNDS_MAX, &o.rounds);
        else if (strcmp(k, "--hold-ms") == 0)
            ok = flood_long(v, 0, GATEWAY_FLOOD_MS_MAX, &o.hold_ms);
        else if (strcmp(k, "--settle-ms") == 0)
            ok = flood_long(v, 0, GATEWAY_FLOOD_MS_MAX, &o.settle_ms);
        else if (strcmp(k, "--early") == 0)
            ok = flood_long(v, 0, GATEWAY_FLOOD_EARLY_MAX, &o.early);
        else if (strcmp(k, "--curve-every") == 0)
            ok = flood_long(v, 1, GATEWAY_FLOOD_CONNECTIONS_MAX, &o.curve_every);
        else if (strcmp(k, "--call-timeout-ms") == 0)
            ok = flood_long(v, 1, GATEWAY_FLOOD_MS_MAX, &o.call_timeout_ms);
        else
            ok = false;
        if (!ok)
            return flood_usage();
    }
    struct sockaddr_in sa;
    if (o.endpoint == NULL || o.server_key == NULL || o.pid == 0 ||
        flood_parse_endpoint(o.endpoint, &sa) != 0)
        return flood_usage();
    void *ctx = zmq_ctx_new();
    if (ctx == NULL || zmq_ctx_set(ctx, ZMQ_MAX_SOCKETS, (int)o.connections + 64) != 0) {
        fprintf(stderr, "gateway_flood: zmq context\n");
        return 1;
    }
    int rc = 0;
    for (long r = 1; r <= o.rounds && rc == 0; r++)
        rc = flood_round(&o, ctx, &sa, r);
    zmq_ctx_term(ctx);
    return rc == 0 ? 0 : 1;
}
