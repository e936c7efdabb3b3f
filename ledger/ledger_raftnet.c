/* ledger_raftnet.c - the replica links: libraft's uv transport over ZeroMQ CURVE
 * (ledger_raftnet.h holds the contract and the wire).
 *
 * Two threads touch a transport. Raft's loop thread runs the transport's entry points and
 * the async callback; the bridge thread owns the ZMQ context's sockets and the bridge ends
 * of the socketpairs. They share, under lock, the peer table (with a generation the bridge
 * watches), the command queue (loop -> bridge: connects) and the event queue (bridge ->
 * loop: connected, connect failed, accepted). An eventfd wakes the bridge; a uv_async_t
 * wakes the loop.
 *
 * A connect is one raftnet_msg_t from connect() to its callback: queued as CONNECT, held by
 * the bridge's outbound link while it connects, queued back as CONNECTED or CONNECT_FAILED,
 * and consumed by the async callback, or by close() as cancelled. An outbound link:
 *
 *   (connect) --raftnet_out_start--> CONNECTING --WELCOME: raftnet_out_recv--> OPEN
 *   CONNECTING --timeout, CURVE refused, BYE, table change: raftnet_out_fail--> gone
 *   OPEN --ZMQ disconnect, BYE, table change: raftnet_out_lost--> gone (raft's write fails)
 *   OPEN --raft closed its stream: raftnet_out_pump--> gone
 *
 * An inbound link is born from an accepted hello (raftnet_hello) and dies when raft closes
 * its stream, a new hello of the same replica replaces it, or the table drops its key.
 *
 * Invariants:
 *   1. Every connect() that returned 0 gets exactly one callback, on the loop thread, after
 *      connect() returned: a stream on WELCOME, RAFT_NOCONNECTION on failure,
 *      RAFT_CANCELED once close() started.
 *   2. accept_cb is called only for a hello whose id, CURVE key and address are one entry of
 *      the table at the time the hello arrived.
 *   3. Every fd has one owner: a socketpair's loop end belongs to its message until raft
 *      gets it as a pipe; its bridge end to the bridge once the command is taken.
 *   4. When close() returns the bridge thread has stopped, every ZMQ socket is closed and the
 *      context is terminated; the close callback runs later on the loop, after the cancelled
 *      connects' callbacks. */
#include "ledger_raftnet.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <raft.h>
#include <raft/uv.h>
#include <uv.h>
#include <zmq.h>

#include "ops_log.h"
#include "ops_metrics.h"
#include "ops_time.h"
#include "rpc_zap.h"

#define RAFTNET_SERVICE "raft"       /* ZAP domain and the refused counter's label */
#define RAFTNET_POLL_MS 100          /* the bridge looks at its stop flag at least this often */
#define RAFTNET_ROUTER_BATCH 64      /* ROUTER messages taken per poll */
#define RAFTNET_DEALER_BATCH 16      /* DEALER / monitor messages taken per poll */
#define RAFTNET_RECONNECT_IVL_MS 100 /* the DEALER's retries within the connect timeout */
#define RAFTNET_ROUTING_ID_MAX 255   /* libzmq's limit */
/* libzmq applies ZMQ_MAXMSGSIZE to a CURVE MESSAGE command as it arrives, the encrypted
 * frame with its name, flags, nonce and MAC (33 bytes more): a limit of exactly
 * LEDGER_RAFTNET_FRAME_MAX disconnected every link that sent a full chunk. */
#define RAFTNET_CURVE_OVERHEAD 64
#define RAFTNET_ENDPOINT_MAX (LEDGER_RAFTNET_ADDRESS_MAX + 16)
#define RAFTNET_ITEMS_MAX (2 + 3 * LEDGER_RAFTNET_OUTBOUND_MAX + LEDGER_RAFTNET_INBOUND_MAX)
/* ZMQ_ZAP_ENFORCE_DOMAIN, a DRAFT option set by number (see proto_rpc_server.c). */
#define RAFTNET_ZMQ_ZAP_ENFORCE_DOMAIN 93
#define RAFTNET_MONITOR_EVENTS                                                                     \
    (ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |                               \
     ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)

typedef enum raftnet_msg_kind {
    RAFTNET_CONNECT,        /* loop -> bridge */
    RAFTNET_CONNECTED,      /* bridge -> loop */
    RAFTNET_CONNECT_FAILED, /* bridge -> loop */
    RAFTNET_ACCEPTED,       /* bridge -> loop */
} raftnet_msg_kind_t;

typedef struct raftnet_msg {
    raftnet_msg_kind_t kind;
    uint64_t id;
    char address[LEDGER_RAFTNET_ADDRESS_MAX];
    char key_z85[PROTO_CURVE_KEY_Z85_LEN + 1]; /* connect: the server's key */
    int loop_fd;                               /* the end raft gets */
    int bridge_fd;                             /* connect: the bridge's end until taken */
    struct raft_uv_connect *req;
    raft_uv_connect_cb cb;
    struct raftnet_msg *next;
} raftnet_msg_t;

typedef enum raftnet_out_state { RAFTNET_OUT_CONNECTING, RAFTNET_OUT_OPEN } raftnet_out_state_t;

/* An outbound link; bridge thread only. */
typedef struct raftnet_out {
    uint64_t id;
    uint64_t serial;
    char key_z85[PROTO_CURVE_KEY_Z85_LEN + 1];
    raftnet_msg_t *msg; /* while CONNECTING */
    void *dealer;
    void *monitor;
    int fd;
    raftnet_out_state_t state;
    uint64_t deadline_ms;
    bool dead;
    size_t len; /* a frame in buf waiting for the DEALER's high-water mark */
    uint8_t buf[LEDGER_RAFTNET_FRAME_MAX];
    struct raftnet_out *next;
} raftnet_out_t;

/* An inbound link; bridge thread only. */
typedef struct raftnet_in {
    uint8_t rid[RAFTNET_ROUTING_ID_MAX];
    size_t rid_len;
    uint64_t id;
    char key_z85[PROTO_CURVE_KEY_Z85_LEN + 1];
    int fd;
    bool dead;
    size_t len, off; /* bytes of buf raft has not taken yet */
    uint8_t buf[LEDGER_RAFTNET_CHUNK_MAX];
    struct raftnet_in *next;
} raftnet_in_t;

/* The counters of ledger_raftnet_stats_t, each also a metric of the process. */
typedef enum raftnet_stat {
    RAFTNET_LINKS_OUT,
    RAFTNET_CONNECTS_FAILED,
    RAFTNET_LINKS_OUT_LOST,
    RAFTNET_LINKS_IN,
    RAFTNET_LINKS_REPLACED,
    RAFTNET_HELLO_REFUSED,
    RAFTNET_FRAMES_DROPPED,
    RAFTNET_STATS,
} raftnet_stat_t;

static const struct {
    const char *name;
    const char *help;
} raftnet_metrics[RAFTNET_STATS] = {
    [RAFTNET_LINKS_OUT] = {"qc_raftnet_links_total{direction=\"out\"}",
                           "Replica links opened (out: welcomed; in: hellos accepted)"},
    [RAFTNET_CONNECTS_FAILED] = {"qc_raftnet_connects_failed_total",
                                 "Replica link connects that ended without a link"},
    [RAFTNET_LINKS_OUT_LOST] = {"qc_raftnet_links_lost_total",
                                "Open outbound replica links closed by a drop or a BYE"},
    [RAFTNET_LINKS_IN] = {"qc_raftnet_links_total{direction=\"in\"}",
                          "Replica links opened (out: welcomed; in: hellos accepted)"},
    [RAFTNET_LINKS_REPLACED] = {"qc_raftnet_links_replaced_total",
                                "Inbound replica links replaced by a new hello of the replica"},
    [RAFTNET_HELLO_REFUSED] = {"qc_raftnet_hellos_refused_total",
                               "Replica hellos refused: id, key, address, version or size"},
    [RAFTNET_FRAMES_DROPPED] = {"qc_raftnet_frames_dropped_total",
                                "Replica link frames dropped: no accepted hello, or malformed"},
};

typedef struct raftnet {
    struct raft_uv_transport *t;
    uv_loop_t *loop;
    proto_curve_keypair_t keys;
    uint64_t self_id;
    char self_address[LEDGER_RAFTNET_ADDRESS_MAX];

    pthread_mutex_t lock; /* guards the fields up to events_tail */
    ledger_raftnet_peer_t peers[LEDGER_RAFTNET_PEERS_MAX];
    size_t n_peers;
    uint64_t generation;
    raftnet_msg_t *cmds, *cmds_tail;
    raftnet_msg_t *events, *events_tail;

    int wake_fd;
    uv_async_t async;
    bool initialised, listening, closing, closed;
    raft_uv_accept_cb accept_cb;
    raft_uv_transport_close_cb close_cb;
    raftnet_msg_t *cancelled; /* connects to answer RAFT_CANCELED; loop thread */
    atomic_int outbound;      /* outbound links, counted from connect() to the reaping */

    void *ctx;
    rpc_zap_t *zap;
    rpc_zap_domain_t domain;
    void *router;
    pthread_t thread;
    bool thread_running;
    atomic_bool stop;

    /* The bridge thread's own. */
    raftnet_out_t *outs;
    raftnet_in_t *ins;
    uint64_t serial;
    uint64_t generation_seen;

    atomic_uint_fast64_t stats[RAFTNET_STATS];
    ops_counter_t *metrics[RAFTNET_STATS];
} raftnet_t;

static void raftnet_count(raftnet_t *n, raftnet_stat_t which)
{
    assert(which < RAFTNET_STATS);
    atomic_fetch_add(&n->stats[which], 1);
    ops_counter_add(n->metrics[which], 1);
}

static uint64_t raftnet_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static void raftnet_put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

/* Options of every replica link socket: those of every RPC socket (no linger, heartbeats),
 * with our frame limit and high-water marks. */
static int raftnet_socket_common(void *sock)
{
    int64_t max = LEDGER_RAFTNET_FRAME_MAX + RAFTNET_CURVE_OVERHEAD;
    if (rpc_socket_common(sock) != 0 ||
        zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &max, sizeof max) != 0 ||
        rpc_setsockopt_int(sock, ZMQ_SNDHWM, LEDGER_RAFTNET_HWM) != 0 ||
        rpc_setsockopt_int(sock, ZMQ_RCVHWM, LEDGER_RAFTNET_HWM) != 0)
        return QC_EIO;
    return 0;
}

static bool raftnet_key_valid(const char *z85)
{
    uint8_t raw[PROTO_CURVE_KEY_SIZE];
    return strnlen(z85, PROTO_CURVE_KEY_Z85_LEN + 1) == PROTO_CURVE_KEY_Z85_LEN &&
           zmq_z85_decode(raw, z85) != NULL;
}

/* A table is 1..LEDGER_RAFTNET_PEERS_MAX entries, each with an id, an address and a valid
 * key, no id and no key twice: one key per replica is what binds a connection to an id. */
static int raftnet_peers_check(const ledger_raftnet_peer_t *peers, size_t n)
{
    if (peers == NULL || n == 0 || n > LEDGER_RAFTNET_PEERS_MAX)
        return QC_EINVAL;
    for (size_t i = 0; i < n; i++) {
        const ledger_raftnet_peer_t *p = &peers[i];
        size_t len = strnlen(p->address, sizeof p->address);
        if (p->id == 0 || len == 0 || len == sizeof p->address || !raftnet_key_valid(p->public_z85))
            return QC_EINVAL;
        for (size_t j = 0; j < i; j++)
            if (peers[j].id == p->id || strcmp(peers[j].public_z85, p->public_z85) == 0)
                return QC_EINVAL;
    }
    return 0;
}

/* The table's entry of id, or NULL; called with the lock held. */
static const ledger_raftnet_peer_t *raftnet_peer(const raftnet_t *n, uint64_t id)
{
    for (size_t i = 0; i < n->n_peers; i++)
        if (n->peers[i].id == id)
            return &n->peers[i];
    return NULL;
}

/* The table's keys as a ZAP allow-list. Returns 0 or QC_ENOMEM. */
static int raftnet_keylist(const ledger_raftnet_peer_t *peers, size_t count,
                           proto_curve_keylist_t *out)
{
    assert(out->keys == NULL);
    out->keys = calloc(count, sizeof *out->keys);
    if (out->keys == NULL)
        return QC_ENOMEM;
    for (size_t i = 0; i < count; i++) {
        uint8_t *ok = zmq_z85_decode(out->keys[i], peers[i].public_z85);
        assert(ok != NULL); /* raftnet_peers_check() passed */
    }
    out->count = count;
    return 0;
}

static void raftnet_wake(raftnet_t *n)
{
    uint64_t one = 1;
    /* EAGAIN only when the counter is at its maximum: the bridge wakes anyway. */
    QC_IGNORE(write(n->wake_fd, &one, sizeof one));
}

/* Appends m to the queue head/tail under n's lock. */
static void raftnet_queue(raftnet_t *n, raftnet_msg_t **head, raftnet_msg_t **tail,
                          raftnet_msg_t *m)
{
    m->next = NULL;
    pthread_mutex_lock(&n->lock);
    if (*tail != NULL)
        (*tail)->next = m;
    else
        *head = m;
    *tail = m;
    pthread_mutex_unlock(&n->lock);
}

/* Queues an event for the loop (from the bridge thread, which close() joins first). */
static void raftnet_emit(raftnet_t *n, raftnet_msg_t *m)
{
    raftnet_queue(n, &n->events, &n->events_tail, m);
    uv_async_send(&n->async);
}

static void raftnet_close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* ---- bridge thread: outbound links ---- */

static void raftnet_out_fail(raftnet_t *n, raftnet_out_t *o, const char *why)
{
    assert(o->state == RAFTNET_OUT_CONNECTING);
    assert(o->msg != NULL);
    ops_log(OPS_LOG_DEBUG, "raftnet.connect_failed", "peer", o->msg->address, "reason", why, NULL);
    raftnet_msg_t *m = o->msg;
    o->msg = NULL;
    o->dead = true;
    m->kind = RAFTNET_CONNECT_FAILED;
    raftnet_count(n, RAFTNET_CONNECTS_FAILED);
    raftnet_emit(n, m);
}

static void raftnet_out_lost(raftnet_t *n, raftnet_out_t *o, const char *why)
{
    if (o->dead)
        return;
    if (o->state == RAFTNET_OUT_CONNECTING) {
        raftnet_out_fail(n, o, why);
        return;
    }
    char id[24];
    snprintf(id, sizeof id, "%" PRIu64, o->id);
    ops_log(OPS_LOG_INFO, "raftnet.link_lost", "peer_id", id, "reason", why, NULL);
    raftnet_count(n, RAFTNET_LINKS_OUT_LOST);
    o->dead = true;
}

static void raftnet_out_free(raftnet_t *n, raftnet_out_t *o)
{
    if (o->monitor != NULL) {
        QC_IGNORE(zmq_socket_monitor(o->dealer, NULL, 0)); /* the socket closes next */
        zmq_close(o->monitor);
    }
    if (o->dealer != NULL)
        zmq_close(o->dealer);
    raftnet_close_fd(&o->fd);
    if (o->msg != NULL) { /* only at teardown: close() cancels it */
        o->msg->kind = RAFTNET_CONNECT_FAILED;
        raftnet_emit(n, o->msg);
    }
    free(o);
    atomic_fetch_sub(&n->outbound, 1);
}

/* The DEALER of a new link: CURVE client of the peer's key, monitored, connected, hello
 * queued. Returns 0 or QC_EIO. */
static int raftnet_out_socket(raftnet_t *n, raftnet_out_t *o, const raftnet_msg_t *m)
{
    char endpoint[RAFTNET_ENDPOINT_MAX];
    o->dealer = zmq_socket(n->ctx, ZMQ_DEALER);
    if (o->dealer == NULL || raftnet_socket_common(o->dealer) != 0 ||
        rpc_setsockopt_int(o->dealer, ZMQ_RECONNECT_IVL, RAFTNET_RECONNECT_IVL_MS) != 0 ||
        zmq_setsockopt(o->dealer, ZMQ_CURVE_SERVERKEY, m->key_z85, PROTO_CURVE_KEY_Z85_LEN) != 0 ||
        zmq_setsockopt(o->dealer, ZMQ_CURVE_PUBLICKEY, n->keys.public_z85,
                       PROTO_CURVE_KEY_Z85_LEN) != 0 ||
        zmq_setsockopt(o->dealer, ZMQ_CURVE_SECRETKEY, n->keys.secret_z85,
                       PROTO_CURVE_KEY_Z85_LEN) != 0)
        return QC_EIO;
    snprintf(endpoint, sizeof endpoint, "inproc://raftnet-monitor-%" PRIu64, o->serial);
    if (zmq_socket_monitor(o->dealer, endpoint, RAFTNET_MONITOR_EVENTS) != 0)
        return QC_EIO;
    o->monitor = zmq_socket(n->ctx, ZMQ_PAIR);
    if (o->monitor == NULL || rpc_setsockopt_int(o->monitor, ZMQ_LINGER, 0) != 0 ||
        zmq_connect(o->monitor, endpoint) != 0)
        return QC_EIO;
    int len = snprintf(endpoint, sizeof endpoint, "tcp://%s", m->address);
    if (len < 0 || (size_t)len >= sizeof endpoint || zmq_connect(o->dealer, endpoint) != 0)
        return QC_EIO;
    uint8_t hello[LEDGER_RAFTNET_HELLO_HEAD + LEDGER_RAFTNET_ADDRESS_MAX];
    hello[0] = LEDGER_RAFTNET_MSG_HELLO;
    hello[1] = LEDGER_RAFTNET_VERSION;
    raftnet_put_be64(hello + 2, n->self_id);
    size_t alen = strlen(n->self_address);
    memcpy(hello + LEDGER_RAFTNET_HELLO_HEAD, n->self_address, alen);
    if (zmq_send(o->dealer, hello, LEDGER_RAFTNET_HELLO_HEAD + alen, ZMQ_DONTWAIT) < 0)
        return QC_EIO;
    return 0;
}

/* Takes a CONNECT: a new link in CONNECTING, or the connect fails at once. */
static void raftnet_out_start(raftnet_t *n, raftnet_msg_t *m)
{
    assert(m->kind == RAFTNET_CONNECT);
    raftnet_out_t *o = calloc(1, sizeof *o);
    if (o == NULL) {
        raftnet_close_fd(&m->bridge_fd);
        m->kind = RAFTNET_CONNECT_FAILED;
        raftnet_count(n, RAFTNET_CONNECTS_FAILED);
        raftnet_emit(n, m);
        atomic_fetch_sub(&n->outbound, 1);
        return;
    }
    o->id = m->id;
    o->serial = ++n->serial;
    memcpy(o->key_z85, m->key_z85, sizeof o->key_z85);
    o->fd = m->bridge_fd;
    m->bridge_fd = -1;
    o->msg = m;
    o->state = RAFTNET_OUT_CONNECTING;
    o->deadline_ms = ops_time_mono_ms() + LEDGER_RAFTNET_CONNECT_TIMEOUT_MS;
    o->next = n->outs;
    n->outs = o;
    if (raftnet_out_socket(n, o, m) != 0) {
        ops_log(OPS_LOG_ERROR, "raftnet.socket_failed", "peer", m->address, "error",
                zmq_strerror(zmq_errno()), NULL);
        raftnet_out_fail(n, o, "socket");
    }
}

/* Sends the frame waiting in o->buf, if any; false while the DEALER is at its HWM. */
static bool raftnet_out_flush(raftnet_t *n, raftnet_out_t *o)
{
    if (o->len == 0)
        return true;
    if (zmq_send(o->dealer, o->buf, o->len, ZMQ_DONTWAIT) >= 0) {
        o->len = 0;
        return true;
    }
    if (zmq_errno() != EAGAIN)
        raftnet_out_lost(n, o, "send failed");
    return false;
}

/* Raft's stream has bytes (or was closed): one chunk becomes one DATA frame. */
static void raftnet_out_pump(raftnet_t *n, raftnet_out_t *o)
{
    assert(o->state == RAFTNET_OUT_OPEN);
    assert(o->len == 0);
    ssize_t got = read(o->fd, o->buf + 1, LEDGER_RAFTNET_CHUNK_MAX);
    if (got < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (got <= 0) { /* raft closed its end: the link is done */
        o->dead = true;
        return;
    }
    o->buf[0] = LEDGER_RAFTNET_MSG_DATA;
    o->len = (size_t)got + 1;
    raftnet_out_flush(n, o);
}

/* WELCOME or BYE from the peer's ROUTER. */
static void raftnet_out_recv(raftnet_t *n, raftnet_out_t *o)
{
    for (int i = 0; i < RAFTNET_DEALER_BATCH && !o->dead; i++) {
        uint8_t frame[8];
        int got = zmq_recv(o->dealer, frame, sizeof frame, ZMQ_DONTWAIT);
        if (got < 0)
            return;
        if (got == 2 && frame[0] == LEDGER_RAFTNET_MSG_WELCOME &&
            frame[1] == LEDGER_RAFTNET_VERSION && o->state == RAFTNET_OUT_CONNECTING) {
            raftnet_msg_t *m = o->msg;
            o->msg = NULL;
            o->state = RAFTNET_OUT_OPEN;
            m->kind = RAFTNET_CONNECTED;
            raftnet_count(n, RAFTNET_LINKS_OUT);
            raftnet_emit(n, m);
        } else if (got == 1 && frame[0] == LEDGER_RAFTNET_MSG_BYE) {
            raftnet_out_lost(n, o, "peer said bye");
        }
    }
}

/* Socket monitor events: a dropped connection or a refused CURVE handshake ends the link. */
static void raftnet_out_monitor(raftnet_t *n, raftnet_out_t *o)
{
    for (int i = 0; i < RAFTNET_DEALER_BATCH && !o->dead; i++) {
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, o->monitor, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&msg);
            return;
        }
        uint16_t event = 0;
        if (zmq_msg_size(&msg) >= sizeof event)
            memcpy(&event, zmq_msg_data(&msg), sizeof event);
        bool more = zmq_msg_more(&msg);
        zmq_msg_close(&msg);
        while (more) { /* the endpoint frame */
            zmq_msg_init(&msg);
            if (zmq_msg_recv(&msg, o->monitor, 0) < 0)
                more = false;
            else
                more = zmq_msg_more(&msg);
            zmq_msg_close(&msg);
        }
        if (event == ZMQ_EVENT_DISCONNECTED)
            raftnet_out_lost(n, o, "disconnected");
        else if (event & RAFTNET_MONITOR_EVENTS)
            raftnet_out_lost(n, o, "CURVE handshake refused");
    }
}

/* ---- bridge thread: inbound links ---- */

static void raftnet_bye(raftnet_t *n, const uint8_t *rid, size_t rid_len)
{
    uint8_t bye = LEDGER_RAFTNET_MSG_BYE;
    if (zmq_send(n->router, rid, rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0)
        QC_IGNORE(zmq_send(n->router, &bye, 1, ZMQ_DONTWAIT)); /* BYE is a courtesy */
}

/* Ends an inbound link; raftnet_reap() closes its fd (raft reads EOF) and says BYE. */
static void raftnet_in_end(raftnet_t *n, raftnet_in_t *in)
{
    (void)n;
    in->dead = true;
}

static raftnet_in_t *raftnet_in_find(raftnet_t *n, const uint8_t *rid, size_t rid_len)
{
    for (raftnet_in_t *in = n->ins; in != NULL; in = in->next)
        if (!in->dead && in->rid_len == rid_len && memcmp(in->rid, rid, rid_len) == 0)
            return in;
    return NULL;
}

static bool raftnet_in_pending(const raftnet_t *n)
{
    for (const raftnet_in_t *in = n->ins; in != NULL; in = in->next)
        if (!in->dead && in->len > in->off)
            return true;
    return false;
}

/* Writes bytes for raft; what the socketpair cannot take now waits in in->buf. */
static void raftnet_in_deliver(raftnet_t *n, raftnet_in_t *in, const uint8_t *data, size_t len)
{
    assert(in->len == in->off);
    assert(len <= sizeof in->buf);
    ssize_t put = send(in->fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (put < 0 && errno != EAGAIN && errno != EINTR) {
        raftnet_in_end(n, in); /* raft closed its end */
        return;
    }
    size_t done = put < 0 ? 0 : (size_t)put;
    memcpy(in->buf, data + done, len - done);
    in->off = 0;
    in->len = len - done;
}

static void raftnet_in_flush(raftnet_t *n, raftnet_in_t *in)
{
    ssize_t put = send(in->fd, in->buf + in->off, in->len - in->off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (put < 0) {
        if (errno != EAGAIN && errno != EINTR)
            raftnet_in_end(n, in);
        return;
    }
    in->off += (size_t)put;
    if (in->off == in->len)
        in->off = in->len = 0;
}

/* Raft never writes on an inbound stream: readable means it closed it. */
static void raftnet_in_readable(raftnet_t *n, raftnet_in_t *in)
{
    uint8_t scratch[256];
    ssize_t got = recv(in->fd, scratch, sizeof scratch, MSG_DONTWAIT);
    if (got < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (got <= 0)
        raftnet_in_end(n, in);
}

static size_t raftnet_in_live(const raftnet_t *n)
{
    size_t live = 0;
    for (const raftnet_in_t *in = n->ins; in != NULL; in = in->next)
        live += in->dead ? 0 : 1;
    return live;
}

/* Checks a hello in the order: size, version, key, the table's entry of the id claimed
 * (key, then address). Returns NULL when it is acceptable, else why not. */
static const char *raftnet_hello_check(raftnet_t *n, zmq_msg_t *msg, uint64_t *id,
                                       char address[LEDGER_RAFTNET_ADDRESS_MAX],
                                       char key[PROTO_CURVE_KEY_Z85_LEN + 1])
{
    const uint8_t *p = zmq_msg_data(msg);
    size_t size = zmq_msg_size(msg);
    if (size <= LEDGER_RAFTNET_HELLO_HEAD ||
        size >= LEDGER_RAFTNET_HELLO_HEAD + LEDGER_RAFTNET_ADDRESS_MAX)
        return "hello size";
    if (p[1] != LEDGER_RAFTNET_VERSION)
        return "hello version";
    size_t alen = size - LEDGER_RAFTNET_HELLO_HEAD;
    memcpy(address, p + LEDGER_RAFTNET_HELLO_HEAD, alen);
    address[alen] = '\0';
    if (strlen(address) != alen)
        return "hello address";
    *id = raftnet_be64(p + 2);
    const char *user = zmq_msg_gets(msg, "User-Id");
    if (user == NULL || !raftnet_key_valid(user))
        return "no CURVE key";
    memcpy(key, user, PROTO_CURVE_KEY_Z85_LEN + 1);
    const char *why = NULL;
    pthread_mutex_lock(&n->lock);
    const ledger_raftnet_peer_t *peer = raftnet_peer(n, *id);
    if (peer == NULL)
        why = "unknown replica id";
    else if (strcmp(peer->public_z85, key) != 0)
        why = "the key is not that replica's";
    else if (strcmp(peer->address, address) != 0)
        why = "the address is not that replica's";
    pthread_mutex_unlock(&n->lock);
    if (why == NULL && *id == n->self_id)
        why = "claims this replica's own id";
    return why;
}

static void raftnet_refuse(raftnet_t *n, const uint8_t *rid, size_t rid_len, uint64_t id,
                           const char *key, const char *why)
{
    char id_text[24];
    snprintf(id_text, sizeof id_text, "%" PRIu64, id);
    ops_log(OPS_LOG_WARN, "raftnet.refused", "peer_id", id_text, "key", key, "reason", why, NULL);
    raftnet_count(n, RAFTNET_HELLO_REFUSED);
    raftnet_bye(n, rid, rid_len);
}

/* A hello on a new connection: checked, then it replaces any link of the same replica and
 * becomes an inbound link raft is handed on its loop. */
static void raftnet_hello(raftnet_t *n, const uint8_t *rid, size_t rid_len, zmq_msg_t *msg)
{
    uint64_t id = 0;
    char address[LEDGER_RAFTNET_ADDRESS_MAX] = "";
    char key[PROTO_CURVE_KEY_Z85_LEN + 1] = "";
    const char *why = raftnet_hello_check(n, msg, &id, address, key);
    if (why == NULL && raftnet_in_find(n, rid, rid_len) != NULL)
        why = "a second hello on one connection";
    if (why != NULL) {
        raftnet_in_t *same = raftnet_in_find(n, rid, rid_len);
        if (same != NULL)
            same->dead = true;
        raftnet_refuse(n, rid, rid_len, id, key, why);
        return;
    }
    for (raftnet_in_t *in = n->ins; in != NULL; in = in->next) {
        if (!in->dead && in->id == id) {
            raftnet_in_end(n, in);
            raftnet_count(n, RAFTNET_LINKS_REPLACED);
        }
    }
    if (raftnet_in_live(n) >= LEDGER_RAFTNET_INBOUND_MAX) {
        raftnet_refuse(n, rid, rid_len, id, key, "too many inbound links");
        return;
    }
    raftnet_in_t *in = calloc(1, sizeof *in);
    raftnet_msg_t *m = calloc(1, sizeof *m);
    int sv[2] = {-1, -1};
    if (in == NULL || m == NULL ||
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) != 0) {
        free(in);
        free(m);
        raftnet_refuse(n, rid, rid_len, id, key, "out of memory or descriptors");
        return;
    }
    memcpy(in->rid, rid, rid_len);
    in->rid_len = rid_len;
    in->id = id;
    memcpy(in->key_z85, key, sizeof in->key_z85);
    in->fd = sv[1];
    in->next = n->ins;
    n->ins = in;
    m->kind = RAFTNET_ACCEPTED;
    m->id = id;
    memcpy(m->address, address, sizeof m->address);
    m->loop_fd = sv[0];
    m->bridge_fd = -1;
    uint8_t welcome[2] = {LEDGER_RAFTNET_MSG_WELCOME, LEDGER_RAFTNET_VERSION};
    if (zmq_send(n->router, rid, rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0)
        /* Lost (HWM): the peer's connect times out and raft tries again. */
        QC_IGNORE(zmq_send(n->router, welcome, sizeof welcome, ZMQ_DONTWAIT));
    raftnet_count(n, RAFTNET_LINKS_IN);
    char id_text[24];
    snprintf(id_text, sizeof id_text, "%" PRIu64, id);
    ops_log(OPS_LOG_INFO, "raftnet.accepted", "peer_id", id_text, "peer", address, NULL);
    raftnet_emit(n, m);
}

/* One message on the ROUTER: [routing id][payload]. */
static bool raftnet_router_one(raftnet_t *n)
{
    uint8_t rid[RAFTNET_ROUTING_ID_MAX];
    int rid_len = zmq_recv(n->router, rid, sizeof rid, ZMQ_DONTWAIT);
    if (rid_len < 0)
        return false;
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    if (zmq_msg_recv(&msg, n->router, 0) < 0) {
        zmq_msg_close(&msg);
        return false;
    }
    bool well_formed = rid_len > 0 && (size_t)rid_len <= sizeof rid && !zmq_msg_more(&msg) &&
                       zmq_msg_size(&msg) >= 1;
    while (zmq_msg_more(&msg)) { /* our peers send one frame: drain anything else */
        zmq_msg_close(&msg);
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, n->router, 0) < 0)
            break;
    }
    const uint8_t *p = zmq_msg_data(&msg);
    size_t size = zmq_msg_size(&msg);
    raftnet_in_t *in = well_formed ? raftnet_in_find(n, rid, (size_t)rid_len) : NULL;
    if (well_formed && p[0] == LEDGER_RAFTNET_MSG_HELLO)
        raftnet_hello(n, rid, (size_t)rid_len, &msg);
    else if (in != NULL && p[0] == LEDGER_RAFTNET_MSG_DATA && size > 1)
        raftnet_in_deliver(n, in, p + 1, size - 1);
    else {
        raftnet_count(n, RAFTNET_FRAMES_DROPPED);
        if (in != NULL)
            raftnet_in_end(n, in); /* a broken stream: raft must not read it further */
        else if (rid_len > 0)
            raftnet_bye(n, rid, (size_t)rid_len);
    }
    zmq_msg_close(&msg);
    return true;
}

static void raftnet_router_recv(raftnet_t *n)
{
    for (int i = 0; i < RAFTNET_ROUTER_BATCH && !raftnet_in_pending(n); i++)
        if (!raftnet_router_one(n))
            return;
}

/* ---- bridge thread: the loop ---- */

/* True when the table lists id with key. */
static bool raftnet_listed(const ledger_raftnet_peer_t *peers, size_t count, uint64_t id,
                           const char *key)
{
    for (size_t i = 0; i < count; i++)
        if (peers[i].id == id)
            return strcmp(peers[i].public_z85, key) == 0;
    return false;
}

static void raftnet_take_cmds(raftnet_t *n)
{
    uint64_t wakes;
    QC_IGNORE(read(n->wake_fd, &wakes, sizeof wakes)); /* EAGAIN: nobody woke us */
    pthread_mutex_lock(&n->lock);
    raftnet_msg_t *m = n->cmds;
    n->cmds = n->cmds_tail = NULL;
    uint64_t generation = n->generation;
    pthread_mutex_unlock(&n->lock);
    while (m != NULL) {
        raftnet_msg_t *next = m->next;
        raftnet_out_start(n, m);
        m = next;
    }
    if (generation == n->generation_seen)
        return;
    /* The table changed: links whose replica is gone or has another key end. */
    n->generation_seen = generation;
    ledger_raftnet_peer_t peers[LEDGER_RAFTNET_PEERS_MAX];
    pthread_mutex_lock(&n->lock);
    size_t count = n->n_peers;
    memcpy(peers, n->peers, count * sizeof *peers);
    pthread_mutex_unlock(&n->lock);
    for (raftnet_out_t *o = n->outs; o != NULL; o = o->next)
        if (!raftnet_listed(peers, count, o->id, o->key_z85))
            raftnet_out_lost(n, o, "no longer in the replicas table");
    for (raftnet_in_t *in = n->ins; in != NULL; in = in->next)
        if (!raftnet_listed(peers, count, in->id, in->key_z85))
            raftnet_in_end(n, in);
}

typedef enum raftnet_item_kind {
    RAFTNET_ITEM_WAKE,
    RAFTNET_ITEM_ROUTER,
    RAFTNET_ITEM_DEALER,
    RAFTNET_ITEM_MONITOR,
    RAFTNET_ITEM_OUT_FD,
    RAFTNET_ITEM_IN_FD,
} raftnet_item_kind_t;

typedef struct raftnet_items {
    zmq_pollitem_t item[RAFTNET_ITEMS_MAX];
    raftnet_item_kind_t kind[RAFTNET_ITEMS_MAX];
    void *link[RAFTNET_ITEMS_MAX];
    size_t count;
} raftnet_items_t;

static void raftnet_item(raftnet_items_t *it, raftnet_item_kind_t kind, void *link, void *sock,
                         int fd, short events)
{
    assert(it->count < RAFTNET_ITEMS_MAX);
    zmq_pollitem_t *p = &it->item[it->count];
    p->socket = sock;
    p->fd = fd;
    p->events = events;
    p->revents = 0;
    it->kind[it->count] = kind;
    it->link[it->count] = link;
    it->count++;
}

static void raftnet_items_build(raftnet_t *n, raftnet_items_t *it)
{
    it->count = 0;
    raftnet_item(it, RAFTNET_ITEM_WAKE, NULL, NULL, n->wake_fd, ZMQ_POLLIN);
    if (!raftnet_in_pending(n)) /* raft has not taken what it got: backpressure */
        raftnet_item(it, RAFTNET_ITEM_ROUTER, NULL, n->router, -1, ZMQ_POLLIN);
    for (raftnet_out_t *o = n->outs; o != NULL; o = o->next) {
        if (o->dead)
            continue;
        raftnet_item(it, RAFTNET_ITEM_DEALER, o, o->dealer, -1,
                     (short)(ZMQ_POLLIN | (o->len > 0 ? ZMQ_POLLOUT : 0)));
        raftnet_item(it, RAFTNET_ITEM_MONITOR, o, o->monitor, -1, ZMQ_POLLIN);
        if (o->state == RAFTNET_OUT_OPEN && o->len == 0)
            raftnet_item(it, RAFTNET_ITEM_OUT_FD, o, NULL, o->fd, ZMQ_POLLIN);
    }
    for (raftnet_in_t *in = n->ins; in != NULL; in = in->next) {
        if (!in->dead)
            raftnet_item(it, RAFTNET_ITEM_IN_FD, in, NULL, in->fd,
                         (short)(ZMQ_POLLIN | (in->len > in->off ? ZMQ_POLLOUT : 0)));
    }
}

static long raftnet_timeout_ms(const raftnet_t *n)
{
    uint64_t now = ops_time_mono_ms();
    long timeout = RAFTNET_POLL_MS;
    for (const raftnet_out_t *o = n->outs; o != NULL; o = o->next) {
        if (o->dead || o->state != RAFTNET_OUT_CONNECTING)
            continue;
        long left = o->deadline_ms > now ? (long)(o->deadline_ms - now) : 0;
        timeout = left < timeout ? left : timeout;
    }
    return timeout;
}

static void raftnet_dispatch(raftnet_t *n, raftnet_items_t *it)
{
    for (size_t i = 0; i < it->count; i++) {
        short ev = it->item[i].revents;
        if (ev == 0)
            continue;
        raftnet_out_t *o = it->link[i];
        raftnet_in_t *in = it->link[i];
        switch (it->kind[i]) {
        case RAFTNET_ITEM_WAKE:
            break; /* the commands are taken at the top of the loop */
        case RAFTNET_ITEM_ROUTER:
            raftnet_router_recv(n);
            break;
        case RAFTNET_ITEM_DEALER:
            if (!o->dead && (ev & ZMQ_POLLIN))
                raftnet_out_recv(n, o);
            if (!o->dead && (ev & ZMQ_POLLOUT))
                raftnet_out_flush(n, o);
            break;
        case RAFTNET_ITEM_MONITOR:
            if (!o->dead)
                raftnet_out_monitor(n, o);
            break;
        case RAFTNET_ITEM_OUT_FD:
            if (!o->dead && o->len == 0)
                raftnet_out_pump(n, o);
            break;
        case RAFTNET_ITEM_IN_FD:
            if (!in->dead && (ev & ZMQ_POLLOUT) && in->len > in->off)
                raftnet_in_flush(n, in);
            if (!in->dead && (ev & (ZMQ_POLLIN | ZMQ_POLLERR)))
                raftnet_in_readable(n, in);
            break;
        }
    }
}

/* Connect deadlines, then the dead links go. */
static void raftnet_reap(raftnet_t *n)
{
    uint64_t now = ops_time_mono_ms();
    for (raftnet_out_t *o = n->outs; o != NULL; o = o->next)
        if (!o->dead && o->state == RAFTNET_OUT_CONNECTING && now >= o->deadline_ms)
            raftnet_out_fail(n, o, "no welcome in time");
    for (raftnet_out_t **p = &n->outs; *p != NULL;) {
        raftnet_out_t *o = *p;
        if (!o->dead) {
            p = &o->next;
            continue;
        }
        *p = o->next;
        raftnet_out_free(n, o);
    }
    for (raftnet_in_t **p = &n->ins; *p != NULL;) {
        raftnet_in_t *in = *p;
        if (!in->dead) {
            p = &in->next;
            continue;
        }
        *p = in->next;
        raftnet_bye(n, in->rid, in->rid_len);
        raftnet_close_fd(&in->fd);
        free(in);
    }
}

static void *raftnet_main(void *arg)
{
    raftnet_t *n = arg;
    raftnet_items_t *it = malloc(sizeof *it);
    while (it != NULL && !atomic_load(&n->stop)) {
        raftnet_take_cmds(n);
        raftnet_items_build(n, it);
        int rc = zmq_poll(it->item, (int)it->count, raftnet_timeout_ms(n));
        if (rc < 0 && zmq_errno() != EINTR) {
            ops_log(OPS_LOG_ERROR, "raftnet.poll_failed", "error", zmq_strerror(zmq_errno()), NULL);
            break;
        }
        if (rc > 0)
            raftnet_dispatch(n, it);
        raftnet_reap(n);
    }
    if (it == NULL)
        ops_log(OPS_LOG_ERROR, "raftnet.no_memory", NULL);
    free(it);
    /* Teardown: every link goes; a connect still in progress returns to the loop, which
     * cancels it (close() is what stopped us). */
    for (raftnet_out_t *o = n->outs; o != NULL; o = o->next)
        o->dead = true;
    for (raftnet_in_t *in = n->ins; in != NULL; in = in->next)
        in->dead = true;
    raftnet_reap(n);
    zmq_close(n->router);
    n->router = NULL;
    return NULL;
}

/* ---- loop thread ---- */

static void raftnet_pipe_free(uv_handle_t *h)
{
    raft_free(h);
}

/* The loop end of a socketpair as a stream raft owns (it uv_close()s and frees it with
 * raft_free), or NULL with fd closed. */
static uv_stream_t *raftnet_pipe(raftnet_t *n, int fd)
{
    uv_pipe_t *p = raft_malloc(sizeof *p);
    if (p == NULL) {
        close(fd);
        return NULL;
    }
    if (uv_pipe_init(n->loop, p, 0) != 0) {
        raft_free(p);
        close(fd);
        return NULL;
    }
    if (uv_pipe_open(p, fd) != 0) {
        close(fd);
        uv_close((uv_handle_t *)p, raftnet_pipe_free);
        return NULL;
    }
    return (uv_stream_t *)p;
}

static void raftnet_cancel(raftnet_t *n, raftnet_msg_t *m)
{
    m->next = n->cancelled;
    n->cancelled = m;
}

/* One event from the bridge, on the loop thread. */
static void raftnet_event(raftnet_t *n, raftnet_msg_t *m)
{
    if (n->closing) { /* a callback before this one started close() */
        if (m->kind == RAFTNET_ACCEPTED) {
            raftnet_close_fd(&m->loop_fd);
            free(m);
        } else {
            raftnet_cancel(n, m);
        }
        return;
    }
    uv_stream_t *stream = NULL;
    switch (m->kind) {
    case RAFTNET_CONNECTED:
        stream = raftnet_pipe(n, m->loop_fd);
        m->cb(m->req, stream, stream != NULL ? 0 : RAFT_NOCONNECTION);
        break;
    case RAFTNET_CONNECT_FAILED:
        raftnet_close_fd(&m->loop_fd);
        m->cb(m->req, NULL, RAFT_NOCONNECTION);
        break;
    case RAFTNET_ACCEPTED:
        stream = raftnet_pipe(n, m->loop_fd);
        if (stream != NULL)
            n->accept_cb(n->t, m->id, m->address, stream);
        break;
    case RAFTNET_CONNECT:
        assert(!"a connect came back unanswered");
    }
    free(m);
}

static void raftnet_async_cb(uv_async_t *async)
{
    raftnet_t *n = async->data;
    pthread_mutex_lock(&n->lock);
    raftnet_msg_t *m = n->events;
    n->events = n->events_tail = NULL;
    pthread_mutex_unlock(&n->lock);
    while (m != NULL) {
        raftnet_msg_t *next = m->next;
        raftnet_event(n, m);
        m = next;
    }
}

static int raftnet_init_cb(struct raft_uv_transport *t, raft_id id, const char *address)
{
    raftnet_t *n = t->impl;
    assert(n != NULL);
    assert(!n->initialised);
    pthread_mutex_lock(&n->lock);
    const ledger_raftnet_peer_t *self = raftnet_peer(n, id);
    bool ok = self != NULL && strcmp(self->address, address) == 0 &&
              strcmp(self->public_z85, n->keys.public_z85) == 0;
    pthread_mutex_unlock(&n->lock);
    if (!ok) {
        snprintf(t->errmsg, sizeof t->errmsg,
                 "raft id %" PRIu64 " at %.150s with this key is not in the replicas table",
                 (uint64_t)id, address);
        return RAFT_INVALID;
    }
    if (uv_async_init(n->loop, &n->async, raftnet_async_cb) != 0) {
        snprintf(t->errmsg, sizeof t->errmsg, "uv_async_init failed");
        return RAFT_NOMEM;
    }
    n->async.data = n;
    n->self_id = id;
    snprintf(n->self_address, sizeof n->self_address, "%s", address);
    n->initialised = true;
    return 0;
}

/* The context, its ZAP domain and the ROUTER bound at our address. Returns 0 or a RAFT_*. */
static int raftnet_listen_sockets(raftnet_t *n)
{
    n->ctx = zmq_ctx_new();
    if (n->ctx == NULL)
        return RAFT_NOMEM;
    snprintf(n->domain.service, sizeof n->domain.service, "%s", RAFTNET_SERVICE);
    n->domain.refused = rpc_counter("qc_rpc_refused_total", RAFTNET_SERVICE,
                                    "CURVE clients refused by the ZAP handler");
    /* Under the lock, so a set_peers() meanwhile finds either no handler or this one. */
    pthread_mutex_lock(&n->lock);
    int rc = raftnet_keylist(n->peers, n->n_peers, &n->domain.allow);
    if (rc == 0 && rpc_zap_attach(n->ctx, &n->domain, &n->zap) != 0) {
        n->zap = NULL;
        rc = QC_EIO;
    }
    pthread_mutex_unlock(&n->lock);
    if (rc != 0)
        return rc == QC_ENOMEM ? RAFT_NOMEM : RAFT_IOERR;
    char endpoint[RAFTNET_ENDPOINT_MAX];
    snprintf(endpoint, sizeof endpoint, "tcp://%s", n->self_address);
    n->router = zmq_socket(n->ctx, ZMQ_ROUTER);
    if (n->router == NULL || raftnet_socket_common(n->router) != 0 ||
        rpc_setsockopt_int(n->router, ZMQ_CURVE_SERVER, 1) != 0 ||
        zmq_setsockopt(n->router, ZMQ_CURVE_SECRETKEY, n->keys.secret_z85,
                       PROTO_CURVE_KEY_Z85_LEN) != 0 ||
        zmq_setsockopt(n->router, ZMQ_ZAP_DOMAIN, n->domain.name, strlen(n->domain.name)) != 0)
        return RAFT_IOERR;
    if (rpc_setsockopt_int(n->router, RAFTNET_ZMQ_ZAP_ENFORCE_DOMAIN, 1) != 0 &&
        zmq_errno() != EINVAL)
        return RAFT_IOERR;
    if (zmq_bind(n->router, endpoint) != 0) {
        ops_log(OPS_LOG_ERROR, "raftnet.bind_failed", "endpoint", endpoint, "error",
                zmq_strerror(zmq_errno()), NULL);
        return RAFT_IOERR;
    }
    return 0;
}

/* Undoes raftnet_listen_sockets() (and the thread's end): sockets, ZAP, context. */
static void raftnet_listen_release(raftnet_t *n)
{
    if (n->router != NULL) {
        zmq_close(n->router);
        n->router = NULL;
    }
    pthread_mutex_lock(&n->lock);
    rpc_zap_t *zap = n->zap;
    n->zap = NULL;
    pthread_mutex_unlock(&n->lock);
    if (zap != NULL)
        rpc_zap_detach(zap, &n->domain);
    proto_curve_keylist_clear(&n->domain.allow);
    if (n->ctx != NULL) {
        while (zmq_ctx_term(n->ctx) != 0 && zmq_errno() == EINTR)
            ;
        n->ctx = NULL;
    }
}

static int raftnet_listen(struct raft_uv_transport *t, raft_uv_accept_cb cb)
{
    raftnet_t *n = t->impl;
    assert(n->initialised);
    assert(!n->listening);
    assert(!n->closing);
    n->accept_cb = cb;
    int rc = raftnet_listen_sockets(n);
    if (rc == 0) {
        atomic_store(&n->stop, false);
        if (pthread_create(&n->thread, NULL, raftnet_main, n) != 0)
            rc = RAFT_NOMEM;
    }
    if (rc != 0) {
        snprintf(t->errmsg, sizeof t->errmsg, "replica links cannot listen at %.200s",
                 n->self_address);
        raftnet_listen_release(n);
        return rc;
    }
    n->thread_running = true;
    n->listening = true;
    return 0;
}

static int raftnet_connect(struct raft_uv_transport *t, struct raft_uv_connect *req, raft_id id,
                           const char *address, raft_uv_connect_cb cb)
{
    raftnet_t *n = t->impl;
    assert(n->listening);
    assert(!n->closing);
    assert(req != NULL);
    assert(cb != NULL);
    raftnet_msg_t *m = calloc(1, sizeof *m);
    if (m == NULL)
        return RAFT_NOMEM;
    m->kind = RAFTNET_CONNECT;
    m->id = id;
    m->req = req;
    m->cb = cb;
    pthread_mutex_lock(&n->lock);
    const ledger_raftnet_peer_t *peer = raftnet_peer(n, id);
    bool listed = peer != NULL && strcmp(peer->address, address) == 0;
    if (listed) {
        memcpy(m->address, peer->address, sizeof m->address);
        memcpy(m->key_z85, peer->public_z85, sizeof m->key_z85);
    }
    pthread_mutex_unlock(&n->lock);
    if (!listed || atomic_load(&n->outbound) >= LEDGER_RAFTNET_OUTBOUND_MAX) {
        free(m);
        return RAFT_NOCONNECTION;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        free(m);
        return RAFT_NOCONNECTION;
    }
    int flags = fcntl(sv[1], F_GETFL);
    if (flags < 0 || fcntl(sv[1], F_SETFL, flags | O_NONBLOCK) != 0) {
        close(sv[0]);
        close(sv[1]);
        free(m);
        return RAFT_NOCONNECTION;
    }
    m->loop_fd = sv[0];
    m->bridge_fd = sv[1];
    atomic_fetch_add(&n->outbound, 1);
    raftnet_queue(n, &n->cmds, &n->cmds_tail, m);
    raftnet_wake(n);
    return 0;
}

static void raftnet_async_closed(uv_handle_t *h)
{
    raftnet_t *n = h->data;
    while (n->cancelled != NULL) {
        raftnet_msg_t *m = n->cancelled;
        n->cancelled = m->next;
        raftnet_close_fd(&m->loop_fd);
        m->cb(m->req, NULL, RAFT_CANCELED);
        free(m);
    }
    n->closed = true;
    if (n->close_cb != NULL)
        n->close_cb(n->t); /* may free what holds t: nothing of n is touched after */
}

/* Messages the bridge will not answer: connects are cancelled, accepted streams closed. */
static void raftnet_drain(raftnet_t *n, raftnet_msg_t *m)
{
    while (m != NULL) {
        raftnet_msg_t *next = m->next;
        raftnet_close_fd(&m->bridge_fd);
        if (m->kind == RAFTNET_ACCEPTED) {
            raftnet_close_fd(&m->loop_fd);
            free(m);
        } else {
            raftnet_cancel(n, m);
        }
        m = next;
    }
}

static void raftnet_close(struct raft_uv_transport *t, raft_uv_transport_close_cb cb)
{
    raftnet_t *n = t->impl;
    assert(n->initialised);
    assert(!n->closing);
    n->closing = true;
    n->close_cb = cb;
    if (n->thread_running) {
        atomic_store(&n->stop, true);
        raftnet_wake(n);
        pthread_join(n->thread, NULL);
        n->thread_running = false;
    }
    raftnet_listen_release(n);
    pthread_mutex_lock(&n->lock);
    raftnet_msg_t *cmds = n->cmds, *events = n->events;
    n->cmds = n->cmds_tail = n->events = n->events_tail = NULL;
    pthread_mutex_unlock(&n->lock);
    raftnet_drain(n, cmds);
    raftnet_drain(n, events);
    uv_close((uv_handle_t *)&n->async, raftnet_async_closed);
}

int ledger_raftnet_init(struct raft_uv_transport *t, struct uv_loop_s *loop,
                        const proto_curve_keypair_t *keys, const ledger_raftnet_peer_t *peers,
                        size_t n_peers)
{
    assert(t != NULL);
    assert(loop != NULL);
    assert(keys != NULL);
    memset(t, 0, sizeof *t);
    if (!raftnet_key_valid(keys->public_z85) || !raftnet_key_valid(keys->secret_z85) ||
        raftnet_peers_check(peers, n_peers) != 0)
        return QC_EINVAL;
    raftnet_t *n = calloc(1, sizeof *n);
    if (n == NULL)
        return QC_ENOMEM;
    n->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (n->wake_fd < 0 || pthread_mutex_init(&n->lock, NULL) != 0) {
        if (n->wake_fd >= 0)
            close(n->wake_fd);
        free(n);
        return QC_ENOMEM;
    }
    n->t = t;
    n->loop = loop;
    n->keys = *keys;
    memcpy(n->peers, peers, n_peers * sizeof *peers);
    n->n_peers = n_peers;
    atomic_init(&n->stop, false);
    atomic_init(&n->outbound, 0);
    for (int i = 0; i < RAFTNET_STATS; i++) {
        atomic_init(&n->stats[i], 0);
        n->metrics[i] = ops_counter(raftnet_metrics[i].name, raftnet_metrics[i].help);
    }
    t->impl = n;
    t->init = raftnet_init_cb;
    t->listen = raftnet_listen;
    t->connect = raftnet_connect;
    t->close = raftnet_close;
    return 0;
}

int ledger_raftnet_set_peers(struct raft_uv_transport *t, const ledger_raftnet_peer_t *peers,
                             size_t count)
{
    assert(t != NULL);
    raftnet_t *n = t->impl;
    assert(n != NULL);
    if (raftnet_peers_check(peers, count) != 0)
        return QC_EINVAL;
    proto_curve_keylist_t fresh = {0};
    if (raftnet_keylist(peers, count, &fresh) != 0)
        return QC_ENOMEM;
    pthread_mutex_lock(&n->lock);
    memcpy(n->peers, peers, count * sizeof *peers);
    n->n_peers = count;
    n->generation++;
    if (n->zap != NULL) /* under the lock: close() cannot detach it meanwhile */
        rpc_zap_swap_allow(n->zap, &n->domain, &fresh);
    pthread_mutex_unlock(&n->lock);
    proto_curve_keylist_clear(&fresh);
    raftnet_wake(n);
    return 0;
}

void ledger_raftnet_stats(struct raft_uv_transport *t, ledger_raftnet_stats_t *out)
{
    assert(t != NULL);
    assert(out != NULL);
    raftnet_t *n = t->impl;
    assert(n != NULL);
    out->links_out = atomic_load(&n->stats[RAFTNET_LINKS_OUT]);
    out->connects_failed = atomic_load(&n->stats[RAFTNET_CONNECTS_FAILED]);
    out->links_out_lost = atomic_load(&n->stats[RAFTNET_LINKS_OUT_LOST]);
    out->links_in = atomic_load(&n->stats[RAFTNET_LINKS_IN]);
    out->links_replaced = atomic_load(&n->stats[RAFTNET_LINKS_REPLACED]);
    out->hello_refused = atomic_load(&n->stats[RAFTNET_HELLO_REFUSED]);
    out->frames_dropped = atomic_load(&n->stats[RAFTNET_FRAMES_DROPPED]);
}

void ledger_raftnet_close(struct raft_uv_transport *t)
{
    assert(t != NULL);
    raftnet_t *n = t->impl;
    if (n == NULL)
        return;
    if (n->initialised && !n->closed) {
        /* raft_close() has not completed (a slow disk, a caller that gave up waiting): the
         * loop still holds our async handle and will call into us, so freeing now would be a
         * use after free. Leaking is the lesser harm, and it happens only at exit. */
        ops_log(OPS_LOG_WARN, "raftnet.close_pending", "detail",
                "raft_close() had not completed: the transport is left allocated", NULL);
        if (n->closing) /* the bridge has stopped: nothing uses the key any more */
            proto_curve_keypair_wipe(&n->keys);
        t->impl = NULL;
        return;
    }
    assert(!n->thread_running);
    assert(n->cmds == NULL);
    assert(n->events == NULL);
    assert(n->cancelled == NULL);
    proto_curve_keypair_wipe(&n->keys);
    pthread_mutex_destroy(&n->lock);
    close(n->wake_fd);
    free(n);
    t->impl = NULL;
}
