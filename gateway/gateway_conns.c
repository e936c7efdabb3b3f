/* gateway_conns.c - the gateway's device connections: their bound (max_connections), the
 * closing of those over it, and giving a flood's memory back (gateway_conns.h).
 *
 * Invariants:
 *  1. in + over == open == the slots whose state is not FREE; each of them was ACCEPTED by
 *     the monitor and is not yet DISCONNECTED.
 *  2. in <= max, except for connections the monitor had not reported yet (unknown ones are
 *     served and never counted).
 *  3. A descriptor is shut down only when its slot is OVER or CLOSING-due, the monitor was
 *     drained just before, and getpeername() still gives the address read when it was
 *     accepted (a descriptor libzmq closed and reused is never touched). */
#define _GNU_SOURCE
#include "gateway_conns.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <zmq.h>

#include "ops_log.h"
#include "ops_metrics.h"
#include "ops_time.h"

#define GATEWAY_CONNS_FD_TABLE_MAX (1 << 20) /* descriptors tracked; higher ones are served */
#define GATEWAY_CONNS_ENDPOINT_MAX 64
#define GATEWAY_CONNS_EVENT_SIZE 6 /* libzmq's monitor frame: uint16 event, uint32 value */

typedef enum gateway_conn_state {
    GATEWAY_CONN_FREE = 0,
    GATEWAY_CONN_IN,
    GATEWAY_CONN_OVER,
    GATEWAY_CONN_SHUT, /* over and shut down: waits for the monitor's DISCONNECTED */
} gateway_conn_state_t;

typedef struct gateway_conn {
    uint8_t state;     /* gateway_conn_state_t */
    uint64_t peer_tag; /* hash of getpeername() at accept; 0 = unknown, never shut down */
    uint64_t due_ms;   /* OVER: when to shut it down */
} gateway_conn_t;

struct gateway_conns {
    void *pair; /* our end of the monitor */
    void *router;
    char endpoint[GATEWAY_CONNS_ENDPOINT_MAX];
    int64_t max;
    int64_t in, over;
    gateway_conn_t *slots;
    int slot_cap; /* descriptors [0, slot_cap) are tracked */
    int fd_hi;    /* one past the highest descriptor ever accepted */
    uint64_t next_due_ms;
    uint64_t closed_since_trim;
    uint64_t last_close_ms;
    uint64_t last_trim_ms;
    uint64_t next_audit_ms;
    ops_gauge_t *m_open, *m_over;
    ops_counter_t *m_refused, *m_trims;
};

/* FNV-1a of the peer's address: equal for the same connection, 0 when there is none. */
static uint64_t gateway_conns_peer_tag(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0 || len == 0)
        return 0;
    uint64_t h = UINT64_C(14695981039346656037);
    const uint8_t *p = (const uint8_t *)&ss;
    for (socklen_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= UINT64_C(1099511628211);
    }
    return h != 0 ? h : 1;
}

/* Resident set size of this process in kB, -1 when unknown. */
static long gateway_conns_rss_kb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL)
        return -1;
    long size = 0, resident = -1;
    if (fscanf(f, "%ld %ld", &size, &resident) != 2)
        resident = -1;
    fclose(f);
    return resident < 0 ? -1 : resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static void gateway_conns_schedule(gateway_conns_t *gc, uint64_t due_ms)
{
    if (gc->next_due_ms == 0 || due_ms < gc->next_due_ms)
        gc->next_due_ms = due_ms;
}

static void gateway_conns_gauges(gateway_conns_t *gc)
{
    ops_gauge_set(gc->m_open, gc->in + gc->over);
    ops_gauge_set(gc->m_over, gc->over);
}

static void gateway_conns_accepted(gateway_conns_t *gc, int fd, uint64_t now_ms)
{
    if (fd < 0 || fd >= gc->slot_cap)
        return; /* untracked: served, not counted (invariant 2) */
    gateway_conn_t *s = &gc->slots[fd];
    if (s->state == GATEWAY_CONN_IN)
        gc->in--; /* a DISCONNECTED we never saw: the descriptor was reused */
    else if (s->state != GATEWAY_CONN_FREE)
        gc->over--;
    s->peer_tag = gateway_conns_peer_tag(fd);
    s->due_ms = 0;
    if (fd >= gc->fd_hi)
        gc->fd_hi = fd + 1;
    if (gc->in < gc->max) {
        s->state = GATEWAY_CONN_IN;
        gc->in++;
        return;
    }
    s->state = GATEWAY_CONN_OVER;
    s->due_ms = now_ms + GATEWAY_CONNS_OVER_GRACE_MS;
    gateway_conns_schedule(gc, s->due_ms);
    gc->over++;
    ops_counter_add(gc->m_refused, 1);
    char open[24], max[24];
    snprintf(open, sizeof open, "%" PRId64, gc->in + gc->over);
    snprintf(max, sizeof max, "%" PRId64, gc->max);
    ops_log_limited(OPS_LOG_WARN, "gateway.connection_limit", NULL, "connections", open,
                    "max_connections", max, "action", "calls answered QC_EBUSY, connection closed",
                    NULL);
}

static void gateway_conns_closed(gateway_conns_t *gc, int fd, uint64_t now_ms)
{
    gc->closed_since_trim++;
    gc->last_close_ms = now_ms;
    if (fd < 0 || fd >= gc->slot_cap)
        return;
    gateway_conn_t *s = &gc->slots[fd];
    if (s->state == GATEWAY_CONN_IN)
        gc->in--;
    else if (s->state != GATEWAY_CONN_FREE)
        gc->over--;
    memset(s, 0, sizeof *s);
}

/* Reads one monitor event; false when none was waiting. */
static bool gateway_conns_event(gateway_conns_t *gc, uint64_t now_ms)
{
    zmq_msg_t head, addr;
    zmq_msg_init(&head);
    if (zmq_msg_recv(&head, gc->pair, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&head);
        return false;
    }
    uint16_t event = 0;
    uint32_t value = 0;
    bool ok = zmq_msg_size(&head) == GATEWAY_CONNS_EVENT_SIZE;
    if (ok) {
        memcpy(&event, zmq_msg_data(&head), sizeof event);
        memcpy(&value, (const uint8_t *)zmq_msg_data(&head) + sizeof event, sizeof value);
    }
    bool more = zmq_msg_more(&head);
    zmq_msg_close(&head);
    if (more) {
        zmq_msg_init(&addr);
        QC_IGNORE(zmq_msg_recv(&addr, gc->pair, ZMQ_DONTWAIT)); /* the endpoint: not used */
        zmq_msg_close(&addr);
    }
    if (ok && event == ZMQ_EVENT_ACCEPTED)
        gateway_conns_accepted(gc, (int)value, now_ms);
    else if (ok && event == ZMQ_EVENT_DISCONNECTED)
        gateway_conns_closed(gc, (int)value, now_ms);
    return true;
}

static void gateway_conns_drain(gateway_conns_t *gc, uint64_t now_ms)
{
    while (gateway_conns_event(gc, now_ms)) {
    }
    gateway_conns_gauges(gc);
}

/* Shuts down the over connections whose time has come (invariant 3). */
static void gateway_conns_close_due(gateway_conns_t *gc, uint64_t now_ms)
{
    if (gc->next_due_ms == 0 || now_ms < gc->next_due_ms)
        return;
    gc->next_due_ms = 0;
    for (int fd = 0; fd < gc->fd_hi; fd++) {
        gateway_conn_t *s = &gc->slots[fd];
        if (s->state != GATEWAY_CONN_OVER || s->due_ms == 0)
            continue;
        if (s->due_ms > now_ms) {
            gateway_conns_schedule(gc, s->due_ms);
            continue;
        }
        s->due_ms = 0;
        if (s->peer_tag != 0 && gateway_conns_peer_tag(fd) == s->peer_tag &&
            shutdown(fd, SHUT_RDWR) == 0)
            s->state = GATEWAY_CONN_SHUT;
    }
}

/* Frees the slots whose connection is gone without a DISCONNECTED having said so: the
 * descriptor no longer has the peer it had at accept (closed, or reused by another socket).
 * Unhealed, each such slot would hold a place for good. Every GATEWAY_CONNS_AUDIT_MS, one
 * getpeername() per open connection. */
static void gateway_conns_audit(gateway_conns_t *gc, uint64_t now_ms)
{
    if (now_ms < gc->next_audit_ms)
        return;
    gc->next_audit_ms = now_ms + GATEWAY_CONNS_AUDIT_MS;
    bool healed = false;
    for (int fd = 0; fd < gc->fd_hi; fd++) {
        gateway_conn_t *s = &gc->slots[fd];
        if (s->state == GATEWAY_CONN_FREE ||
            (s->peer_tag != 0 && gateway_conns_peer_tag(fd) == s->peer_tag))
            continue; /* a tag of 0: it had no peer even at accept, so it is gone */
        if (s->state == GATEWAY_CONN_IN)
            gc->in--;
        else
            gc->over--;
        memset(s, 0, sizeof *s);
        healed = true;
    }
    if (healed)
        gateway_conns_gauges(gc);
}

/* When a trim is due: GATEWAY_CONNS_TRIM_CLOSED_MIN closed since the last one, and then a
 * quiet GATEWAY_CONNS_TRIM_QUIET_MS, or GATEWAY_CONNS_TRIM_IVL_MAX_MS since the last trim (a
 * gateway whose devices connect and close all the time is never quiet). 0 = not due. */
static uint64_t gateway_conns_trim_due(const gateway_conns_t *gc)
{
    if (gc->closed_since_trim < GATEWAY_CONNS_TRIM_CLOSED_MIN)
        return 0;
    uint64_t quiet = gc->last_close_ms + GATEWAY_CONNS_TRIM_QUIET_MS;
    uint64_t late = gc->last_trim_ms + GATEWAY_CONNS_TRIM_IVL_MAX_MS;
    return quiet < late ? quiet : late;
}

/* Gives the free memory of every arena back to the system once a burst of connections has
 * closed and the closing has stopped (gateway_conns.h, "Memory"). */
static void gateway_conns_trim(gateway_conns_t *gc, uint64_t now_ms)
{
    uint64_t due = gateway_conns_trim_due(gc);
    if (due == 0 || now_ms < due)
        return;
    gc->last_trim_ms = now_ms;
    long before = gateway_conns_rss_kb();
    QC_IGNORE(malloc_trim(0));
    long after = gateway_conns_rss_kb();
    ops_counter_add(gc->m_trims, 1);
    char closed[24], b[24], a[24], open[24];
    snprintf(closed, sizeof closed, "%" PRIu64, gc->closed_since_trim);
    snprintf(b, sizeof b, "%ld", before);
    snprintf(a, sizeof a, "%ld", after);
    snprintf(open, sizeof open, "%" PRId64, gc->in + gc->over);
    ops_log_limited(OPS_LOG_INFO, "gateway.memory_trimmed", NULL, "connections_closed", closed,
                    "connections", open, "rss_kb_before", b, "rss_kb_after", a, NULL);
    gc->closed_since_trim = 0;
}

void gateway_conns_process(gateway_conns_t *gc, uint64_t now_ms)
{
    assert(gc != NULL);
    gateway_conns_drain(gc, now_ms);
    gateway_conns_audit(gc, now_ms);
    gateway_conns_close_due(gc, now_ms);
    gateway_conns_trim(gc, now_ms);
}

int gateway_conns_next_timeout_ms(const gateway_conns_t *gc, uint64_t now_ms)
{
    assert(gc != NULL);
    uint64_t due = gc->next_due_ms;
    if (gc->in + gc->over > 0 && (due == 0 || gc->next_audit_ms < due))
        due = gc->next_audit_ms;
    uint64_t trim = gateway_conns_trim_due(gc);
    if (trim != 0 && (due == 0 || trim < due))
        due = trim;
    if (due == 0)
        return -1;
    return due <= now_ms ? 0 : (int)(due - now_ms < INT32_MAX ? due - now_ms : INT32_MAX);
}

gateway_conns_verdict_t gateway_conns_admit(gateway_conns_t *gc, int fd, uint64_t now_ms)
{
    assert(gc != NULL);
    if (fd < 0 || fd >= gc->slot_cap)
        return GATEWAY_CONNS_SERVE;
    gateway_conn_t *s = &gc->slots[fd];
    if (s->state == GATEWAY_CONN_FREE || s->state == GATEWAY_CONN_IN)
        return GATEWAY_CONNS_SERVE;
    if (s->state == GATEWAY_CONN_OVER && gc->in < gc->max) {
        s->state = GATEWAY_CONN_IN; /* room again: in it comes */
        s->due_ms = 0;
        gc->over--;
        gc->in++;
        gateway_conns_gauges(gc);
        return GATEWAY_CONNS_SERVE;
    }
    if (s->state == GATEWAY_CONN_OVER) {
        /* Closed once its answer is out, sooner than its grace would have. */
        uint64_t due = now_ms + GATEWAY_CONNS_CLOSE_DELAY_MS;
        if (s->due_ms == 0 || due < s->due_ms)
            s->due_ms = due;
        gateway_conns_schedule(gc, s->due_ms);
    }
    return GATEWAY_CONNS_BUSY;
}

int64_t gateway_conns_open(const gateway_conns_t *gc)
{
    assert(gc != NULL);
    return gc->in + gc->over;
}

int64_t gateway_conns_over(const gateway_conns_t *gc)
{
    assert(gc != NULL);
    return gc->over;
}

int gateway_conns_check_fds(int64_t max_connections, char *why, size_t why_cap)
{
    assert(max_connections > 0);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        snprintf(why, why_cap, "cannot read the descriptor limit: %s", strerror(errno));
        return QC_ECONFIG;
    }
    rlim_t need = (rlim_t)max_connections + GATEWAY_CONNS_FDS_RESERVE;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
            snprintf(why, why_cap,
                     "needs %llu descriptors (max_connections + %d); the hard limit is %llu: "
                     "raise LimitNOFILE (ulimit -Hn) or lower max_connections",
                     (unsigned long long)need, GATEWAY_CONNS_FDS_RESERVE,
                     (unsigned long long)rl.rlim_max);
            return QC_ECONFIG;
        }
        rl.rlim_cur = need;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            snprintf(why, why_cap,
                     "cannot raise the descriptor limit to %llu (max_connections + %d): %s",
                     (unsigned long long)need, GATEWAY_CONNS_FDS_RESERVE, strerror(errno));
            return QC_ECONFIG;
        }
    }
    return 0;
}

int gateway_conns_new(void *ctx, void *router, int64_t max_connections, gateway_conns_t **out)
{
    assert(ctx != NULL);
    assert(router != NULL);
    assert(out != NULL);
    assert(max_connections > 0 && max_connections <= GATEWAY_CONNECTIONS_MAX);
    *out = NULL;
    gateway_conns_t *gc = calloc(1, sizeof *gc);
    if (gc == NULL)
        return QC_ENOMEM;
    gc->router = router;
    gc->max = max_connections;
    gc->last_trim_ms = ops_time_mono_ns() / 1000000u;
    struct rlimit rl;
    rlim_t cap = GATEWAY_CONNS_FD_TABLE_MAX;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < cap)
        cap = rl.rlim_cur;
    gc->slot_cap = (int)cap;
    /* calloc of this size maps zero pages: only descriptors in use become resident. */
    gc->slots = calloc((size_t)gc->slot_cap, sizeof *gc->slots);
    if (gc->slots == NULL) {
        gateway_conns_destroy(&gc);
        return QC_ENOMEM;
    }
    gc->m_open = ops_gauge("qc_gateway_connections", "open device connections");
    gc->m_over = ops_gauge("qc_gateway_connections_over",
                           "open device connections over max_connections (being closed)");
    gc->m_refused = ops_counter("qc_gateway_connections_refused_total",
                                "device connections accepted over max_connections");
    gc->m_trims = ops_counter("qc_gateway_memory_trims_total",
                              "free heap given back to the system after connections closed");
    snprintf(gc->endpoint, sizeof gc->endpoint, "inproc://qc-gateway-conns-%p", (void *)gc);
    /* A flood sends thousands of events at once; a full monitor pipe (1,000 by default) would
     * make libzmq's I/O thread wait on it or lose them. Our end's RCVHWM 0, set before it
     * connects, makes the inproc pipe unbounded; the loop drains it every turn. */
    int linger = 0, unbounded = 0;
    int rc = 0;
    if (zmq_socket_monitor(router, gc->endpoint, ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED) !=
            0 ||
        (gc->pair = zmq_socket(ctx, ZMQ_PAIR)) == NULL ||
        zmq_setsockopt(gc->pair, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_setsockopt(gc->pair, ZMQ_RCVHWM, &unbounded, sizeof unbounded) != 0 ||
        zmq_connect(gc->pair, gc->endpoint) != 0)
        rc = QC_EIO;
    if (rc != 0) {
        gateway_conns_destroy(&gc);
        return rc;
    }
    gateway_conns_gauges(gc);
    *out = gc;
    return 0;
}

void *gateway_conns_socket(gateway_conns_t *gc)
{
    assert(gc != NULL);
    return gc->pair;
}

void gateway_conns_destroy(gateway_conns_t **gc_p)
{
    assert(gc_p != NULL);
    gateway_conns_t *gc = *gc_p;
    if (gc == NULL)
        return;
    if (gc->router != NULL && gc->pair != NULL)
        QC_IGNORE(zmq_socket_monitor(gc->router, NULL, 0));
    if (gc->pair != NULL)
        zmq_close(gc->pair);
    free(gc->slots);
    free(gc);
    *gc_p = NULL;
}
