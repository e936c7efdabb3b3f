/* proto_rpc_client.c - the client side of proto_rpc: endpoints, retries and failover.
 *
 * One DEALER per endpoint, a table of calls in flight indexed by the low bits of the
 * request id, and the Lazy Pirate rule: when an attempt gets no answer, the socket of that
 * endpoint is closed and recreated (unless the endpoint answered something else meanwhile,
 * which proves it alive) and an idempotent call is resent to the next endpoint.
 *
 * Invariants of the client:
 *  1. A call slot is FREE, PENDING (waiting for a reply or for a send) or DONE (finished
 *     during proto_rpc_client_call() for another caller, parked until the next process()).
 *  2. A PENDING call with endpoint -1 is not outstanding anywhere: it has not been handed to
 *     libzmq (every socket refused it under ZMQ_IMMEDIATE), or every replica it reached
 *     refused it with QC_ENOTLEADER or QC_ENOQUORUM (nothing changed) and it waits out a
 *     backoff. So resending it is safe even when it is not idempotent.
 *  3. calls[id & PROTO_RPC_SLOT_MASK].request_id == id for every call in flight; a reply whose
 *     id fails this test is late or forged and is dropped.
 *  4. A call follows at most (endpoints) QC_ENOTLEADER or QC_ENOQUORUM redirects (its hops), all
 * within its own deadline, so followers that point at each other cannot keep it alive.
 *  5. preferred is -1 or a used endpoint: the leader found by the last redirect, tried
 *     first by every new call (no redirect ever seen: round-robin as before).
 *  6. A call that waits for a leader (refusal kept) ends with that refusal only when its
 *     budget is spent while it is not outstanding; a call outstanding at its deadline ends
 *     with QC_ETIMEOUT (its outcome is unknown), and its kept refusal is dropped.
 *
 * Following the leader (replicated ledger shards): a follower changed nothing when it
 * answered QC_ENOTLEADER, so resending the same frame (same request id) is safe even for a
 * call that is not idempotent. The resend goes to RpcReply.leader when that is one of our
 * endpoints (a leader outside the configured list is never dialled: the list is the trust
 * boundary), else to the next endpoint after the one that answered. QC_ENOQUORUM (a replica
 * that knows no leader, e.g. one cut off from the others) is followed to the next endpoint
 * the same way: it changed nothing either.
 *
 * Waiting out an election: when the call has used its hops and the last replica still
 * refused it (QC_ENOQUORUM, or QC_ENOTLEADER), no replica it reached knows a leader it can
 * serve through: the group is electing. The call is then held for a backoff
 * (PROTO_RPC_ELECTION_BACKOFF_MIN_MS, doubling up to _MAX_MS) and offered again from the next
 * endpoint with its hops renewed, for as long as its budget lasts; only a call whose budget
 * cannot cover another backoff hands the refusal to its caller. */
#include "proto_rpc_client.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "ops_log.h"
#include "ops_metrics.h"
#include "ops_signal.h"
#include "ops_time.h"
#include "qc_error.h"
#include "rpc_common.h"

#define PROTO_RPC_ENDPOINT_MAX 256   /* one endpoint string */
#define PROTO_RPC_SEND_RETRY_MS 10   /* a call no socket accepted is offered again */
#define PROTO_RPC_REOPEN_MIN_MS 1000 /* a socket that cannot connect is reopened */
/* A call refused during an election waits this long before it is offered again, doubling
 * each time up to the max: libraft elects within one to two election timeouts (about 1-3 s
 * on a busy machine), and 50 refusals a second per waiting call would be load for nothing. */
#define PROTO_RPC_ELECTION_BACKOFF_MIN_MS 25
#define PROTO_RPC_ELECTION_BACKOFF_MAX_MS 200
#define PROTO_RPC_SLOTS 4096 /* == PROTO_RPC_INFLIGHT_MAX, a power of two */
#define PROTO_RPC_SLOT_MASK (PROTO_RPC_SLOTS - 1)
#define PROTO_RPC_SLOT_BITS 12

_Static_assert(PROTO_RPC_SLOTS == PROTO_RPC_INFLIGHT_MAX, "slot table sized to the limit");
_Static_assert((PROTO_RPC_SLOTS & PROTO_RPC_SLOT_MASK) == 0, "slots must be a power of two");
_Static_assert((1 << PROTO_RPC_SLOT_BITS) == PROTO_RPC_SLOTS, "slot bits match slots");

/* Methods are what proto_decode_rpc() accepts: 1..PROTO_METHOD_MAX printable characters
 * without spaces. Anything else would be dropped by the server as malformed. */
static bool rpc_method_valid(const char *method)
{
    size_t len = strlen(method);
    if (len == 0 || len > PROTO_METHOD_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (method[i] < '!' || method[i] > '~')
            return false;
    return true;
}

typedef enum rpc_call_state {
    RPC_CALL_FREE = 0,
    RPC_CALL_PENDING,
    RPC_CALL_DONE,
} rpc_call_state_t;

typedef struct rpc_call {
    rpc_call_state_t state;
    uint64_t request_id;
    int flags;
    void *tag;
    /* The packed Rpc, kept for resends: fields 1-4 (frame_prefix bytes), then field 5, the
     * budget left, rewritten at each send (rpc_call_stamp), which keeps the field order. */
    uint8_t *frame;
    size_t frame_prefix;
    size_t frame_len;
    uint64_t deadline_mono;
    uint64_t attempt_deadline_mono;
    uint64_t sent_mono;
    int attempt_ms;
    int retries;
    int hops; /* QC_ENOTLEADER redirects followed (invariant 4) */
    /* After a redirect naming a leader: only that endpoint is offered the call until
     * only_until_mono, so a leader whose connection is not up yet is waited for rather than
     * skipped (which would spend the hops on followers). -1 when unset. */
    int only;
    uint64_t only_until_mono;
    int endpoint; /* -1 while no socket took it, or while it waits for a leader */
    /* Waiting for a leader (invariant 6): the last refusal, the backoff it waits, and the
     * endpoint it is offered to next (-1: where every call starts). */
    proto_rpc_reply_t *refusal;
    int backoff_ms;
    int resume;
    /* DONE: the outcome parked for the next process(). */
    int code;
    proto_rpc_reply_t *reply;
} rpc_call_t;

typedef struct rpc_endpoint {
    bool used;
    char addr[PROTO_RPC_ENDPOINT_MAX];
    void *sock;
    uint64_t last_rx_mono;
    uint64_t opened_mono;
    uint64_t refused_since; /* first send refused since the last one taken; 0 = none */
} rpc_endpoint_t;

struct proto_rpc_client {
    void *ctx;
    char service[PROTO_RPC_SERVICE_MAX + 1];
    char *endpoints_path;
    char server_public_z85[PROTO_CURVE_KEY_Z85_LEN + 1];
    proto_curve_keypair_t keys;
    rpc_endpoint_t endpoints[PROTO_RPC_ENDPOINTS_MAX];
    int rr;        /* next endpoint to try */
    bool in_order; /* rr stays 0: every call starts at the first endpoint that takes it */
    int preferred; /* the leader found by a redirect, or -1 (invariant 5) */
    uint64_t hup_seen;
    rpc_call_t calls[PROTO_RPC_SLOTS];
    int free_slots[PROTO_RPC_SLOTS];
    int free_count;
    int inflight;
    int parked;
    uint64_t seq;
    ops_counter_t *late;
    ops_counter_t *retries;
    ops_counter_t *timeouts;
    ops_counter_t *recreated;
    ops_counter_t *redirects;
    ops_counter_t *election_waits;
};

static int rpc_endpoint_open(proto_rpc_client_t *cli, rpc_endpoint_t *ep)
{
    assert(ep->used);
    assert(ep->sock == NULL);
    ep->sock = zmq_socket(cli->ctx, ZMQ_DEALER);
    if (ep->sock == NULL)
        return QC_EIO;
    /* ZMQ_IMMEDIATE: a send to an endpoint with no live connection fails at once instead of
     * queueing, so failover does not wait for an attempt timeout. */
    if (rpc_socket_common(ep->sock) != 0 || rpc_setsockopt_int(ep->sock, ZMQ_IMMEDIATE, 1) != 0 ||
        rpc_setsockopt_int(ep->sock, ZMQ_SNDHWM, PROTO_RPC_INFLIGHT_MAX) != 0 ||
        rpc_setsockopt_int(ep->sock, ZMQ_RCVHWM, PROTO_RPC_INFLIGHT_MAX) != 0 ||
        zmq_setsockopt(ep->sock, ZMQ_CURVE_SERVERKEY, cli->server_public_z85,
                       PROTO_CURVE_KEY_Z85_LEN) != 0 ||
        zmq_setsockopt(ep->sock, ZMQ_CURVE_PUBLICKEY, cli->keys.public_z85,
                       PROTO_CURVE_KEY_Z85_LEN) != 0 ||
        zmq_setsockopt(ep->sock, ZMQ_CURVE_SECRETKEY, cli->keys.secret_z85,
                       PROTO_CURVE_KEY_Z85_LEN) != 0 ||
        zmq_connect(ep->sock, ep->addr) != 0) {
        ops_log(OPS_LOG_ERROR, "rpc.connect_failed", "rpc_service", cli->service, "endpoint",
                ep->addr, "error", zmq_strerror(zmq_errno()), NULL);
        zmq_close(ep->sock);
        ep->sock = NULL;
        return QC_ECONFIG;
    }
    ep->last_rx_mono = 0;
    ep->opened_mono = ops_time_mono_ms();
    ep->refused_since = 0;
    return 0;
}

static void rpc_endpoint_close(rpc_endpoint_t *ep)
{
    if (ep->sock != NULL)
        zmq_close(ep->sock);
    ep->sock = NULL;
}

/* Parses a list of endpoints (separated by commas or newlines, '#' comments in files) into
 * list. Returns the count, or QC_ECONFIG. */
static int rpc_endpoints_parse(char *text, char list[][PROTO_RPC_ENDPOINT_MAX])
{
    int count = 0;
    char *save = NULL;
    for (char *tok = strtok_r(text, ",\n", &save); tok != NULL;
         tok = strtok_r(NULL, ",\n", &save)) {
        char *s = rpc_trim(tok);
        if (*s == '\0' || *s == '#')
            continue;
        if (count == PROTO_RPC_ENDPOINTS_MAX || strlen(s) >= PROTO_RPC_ENDPOINT_MAX)
            return QC_ECONFIG;
        snprintf(list[count++], PROTO_RPC_ENDPOINT_MAX, "%s", s);
    }
    return count;
}

static int rpc_endpoints_read_file(const char *path, char list[][PROTO_RPC_ENDPOINT_MAX])
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return QC_ECONFIG;
    enum { FILE_MAX = PROTO_RPC_ENDPOINTS_MAX * (PROTO_RPC_ENDPOINT_MAX + 64) };
    char *text = calloc(1, FILE_MAX + 1);
    if (text == NULL) {
        fclose(f);
        return QC_ENOMEM;
    }
    size_t n = fread(text, 1, FILE_MAX + 1, f);
    int rc = ferror(f) || n > FILE_MAX ? QC_ECONFIG : 0;
    fclose(f);
    if (rc == 0) {
        text[n] = '\0';
        rc = rpc_endpoints_parse(text, list);
    }
    free(text);
    return rc;
}

static void rpc_call_finish(proto_rpc_client_t *cli, int slot, int code, proto_rpc_reply_t *reply,
                            proto_rpc_done_fn *done, void *arg);

/* Makes the endpoint set equal to list: closes sockets of endpoints no longer listed (their
 * idempotent calls are offered again elsewhere, the others end with QC_ETIMEOUT, since their
 * outcome is unknown) and connects new ones. */
static int rpc_endpoints_apply(proto_rpc_client_t *cli, char list[][PROTO_RPC_ENDPOINT_MAX],
                               int count, proto_rpc_done_fn *done, void *arg)
{
    int finished = 0;
    for (int e = 0; e < PROTO_RPC_ENDPOINTS_MAX; e++) {
        rpc_endpoint_t *ep = &cli->endpoints[e];
        if (!ep->used)
            continue;
        bool keep = false;
        for (int i = 0; i < count && !keep; i++)
            keep = strcmp(list[i], ep->addr) == 0;
        if (keep)
            continue;
        ops_log(OPS_LOG_INFO, "rpc.endpoint_removed", "rpc_service", cli->service, "endpoint",
                ep->addr, NULL);
        rpc_endpoint_close(ep);
        ep->used = false;
        if (cli->preferred == e)
            cli->preferred = -1;
        for (int s = 0; s < PROTO_RPC_SLOTS; s++) {
            rpc_call_t *c = &cli->calls[s];
            if (c->state != RPC_CALL_PENDING || c->endpoint != e)
                continue;
            if (c->flags & PROTO_RPC_IDEMPOTENT) {
                c->endpoint = -1; /* offered again by the next tick */
                c->attempt_deadline_mono = 0;
            } else {
                rpc_call_finish(cli, s, QC_ETIMEOUT, NULL, done, arg);
                finished++;
            }
        }
    }
    for (int i = 0; i < count; i++) {
        bool have = false;
        for (int e = 0; e < PROTO_RPC_ENDPOINTS_MAX && !have; e++)
            have = cli->endpoints[e].used && strcmp(cli->endpoints[e].addr, list[i]) == 0;
        if (have)
            continue;
        for (int e = 0; e < PROTO_RPC_ENDPOINTS_MAX; e++) {
            rpc_endpoint_t *ep = &cli->endpoints[e];
            if (ep->used)
                continue;
            ep->used = true;
            /* memcpy, not snprintf: gcc -O2 cannot see list[i]'s bound through the callers
             * and fails the build with -Wformat-truncation. Both are one endpoint's size. */
            _Static_assert(sizeof ep->addr == PROTO_RPC_ENDPOINT_MAX, "one endpoint size");
            memcpy(ep->addr, list[i], sizeof ep->addr);
            ep->addr[sizeof ep->addr - 1] = '\0';
            if (rpc_endpoint_open(cli, ep) != 0)
                ep->used = false;
            else
                ops_log(OPS_LOG_INFO, "rpc.endpoint_added", "rpc_service", cli->service, "endpoint",
                        ep->addr, NULL);
            break;
        }
    }
    return finished;
}

/* Re-reads endpoints_path after a SIGHUP. A file that cannot be read or lists nothing
 * leaves the current set in place: a typo must not cut a service off. */
static int rpc_client_reload(proto_rpc_client_t *cli, proto_rpc_done_fn *done, void *arg)
{
    uint64_t gen = ops_signal_hup_generation();
    if (gen == cli->hup_seen || cli->endpoints_path == NULL)
        return 0;
    cli->hup_seen = gen;
    char list[PROTO_RPC_ENDPOINTS_MAX][PROTO_RPC_ENDPOINT_MAX];
    int count = rpc_endpoints_read_file(cli->endpoints_path, list);
    if (count <= 0) {
        ops_log(OPS_LOG_WARN, "rpc.endpoints_reload_failed", "rpc_service", cli->service, "path",
                cli->endpoints_path, "error", qc_errname(count == 0 ? QC_ECONFIG : count), NULL);
        return 0;
    }
    return rpc_endpoints_apply(cli, list, count, done, arg);
}

int proto_rpc_client_new(void *ctx, const proto_rpc_client_config_t *cfg, proto_rpc_client_t **out)
{
    assert(ctx != NULL);
    assert(cfg != NULL);
    assert(out != NULL);
    assert(cfg->service != NULL);
    assert(cfg->keys != NULL);
    assert(cfg->server_public_z85 != NULL);
    *out = NULL;
    if ((cfg->endpoints == NULL) == (cfg->endpoints_path == NULL) ||
        !rpc_service_valid(cfg->service) || !rpc_z85_key_valid(cfg->server_public_z85) ||
        !rpc_z85_key_valid(cfg->keys->public_z85) || !rpc_z85_key_valid(cfg->keys->secret_z85))
        return QC_ECONFIG;
    proto_rpc_client_t *cli = calloc(1, sizeof *cli);
    if (cli == NULL)
        return QC_ENOMEM;
    cli->ctx = ctx;
    snprintf(cli->service, sizeof cli->service, "%s", cfg->service);
    memcpy(cli->server_public_z85, cfg->server_public_z85, sizeof cli->server_public_z85);
    cli->keys = *cfg->keys;
    cli->hup_seen = ops_signal_hup_generation();
    cli->preferred = -1;
    cli->in_order = cfg->in_order;
    for (int i = 0; i < PROTO_RPC_SLOTS; i++)
        cli->free_slots[i] = PROTO_RPC_SLOTS - 1 - i;
    cli->free_count = PROTO_RPC_SLOTS;
    cli->late = rpc_counter("qc_rpc_client_late_replies_total", cfg->service,
                            "replies dropped because no call waited for them");
    cli->retries = rpc_counter("qc_rpc_client_retries_total", cfg->service,
                               "idempotent calls resent after an attempt timed out");
    cli->timeouts =
        rpc_counter("qc_rpc_client_timeouts_total", cfg->service, "calls that got no reply");
    cli->recreated = rpc_counter("qc_rpc_client_sockets_recreated_total", cfg->service,
                                 "sockets closed and reopened after a silent endpoint");
    cli->redirects = rpc_counter("qc_rpc_client_leader_redirects_total", cfg->service,
                                 "calls resent after a replica answered QC_ENOTLEADER");
    cli->election_waits =
        rpc_counter("qc_rpc_client_election_waits_total", cfg->service,
                    "backoffs of calls refused while a replicated service had no leader");
    char list[PROTO_RPC_ENDPOINTS_MAX][PROTO_RPC_ENDPOINT_MAX];
    int count;
    if (cfg->endpoints_path != NULL) {
        cli->endpoints_path = strdup(cfg->endpoints_path);
        if (cli->endpoints_path == NULL) {
            proto_rpc_client_destroy(&cli);
            return QC_ENOMEM;
        }
        count = rpc_endpoints_read_file(cfg->endpoints_path, list);
    } else {
        char *text = strdup(cfg->endpoints);
        if (text == NULL) {
            proto_rpc_client_destroy(&cli);
            return QC_ENOMEM;
        }
        count = rpc_endpoints_parse(text, list);
        free(text);
    }
    if (count < 0) {
        proto_rpc_client_destroy(&cli);
        return count == QC_ENOMEM ? QC_ENOMEM : QC_ECONFIG;
    }
    rpc_endpoints_apply(cli, list, count, NULL, NULL);
    for (int i = 0; i < count; i++) {
        bool have = false;
        for (int e = 0; e < PROTO_RPC_ENDPOINTS_MAX && !have; e++)
            have = cli->endpoints[e].used && strcmp(cli->endpoints[e].addr, list[i]) == 0;
        if (!have) {
            proto_rpc_client_destroy(&cli);
            return QC_ECONFIG;
        }
    }
    *out = cli;
    return 0;
}

void proto_rpc_reply_destroy(proto_rpc_reply_t **reply_p)
{
    assert(reply_p != NULL);
    if (*reply_p == NULL)
        return;
    free((*reply_p)->message);
    free((*reply_p)->body);
    free(*reply_p);
    *reply_p = NULL;
}

static int rpc_endpoint_count(const proto_rpc_client_t *cli)
{
    int n = 0;
    for (int e = 0; e < PROTO_RPC_ENDPOINTS_MAX; e++)
        n += cli->endpoints[e].used && cli->endpoints[e].sock != NULL;
    return n;
}

#define RPC_BUDGET_FIELD_MAX 6 /* tag 0x28 and a uint32 varint */

/* Writes Rpc.timeout_ms = what is left of the call's budget at now (at least 1 ms) after
 * the frame's prefix: the receiver times the call on its own clock from this. */
static void rpc_call_stamp(rpc_call_t *c, uint64_t now)
{
    uint64_t left = c->deadline_mono > now ? c->deadline_mono - now : 1;
    if (left > PROTO_RPC_TIMEOUT_MAX)
        left = PROTO_RPC_TIMEOUT_MAX;
    uint8_t *p = c->frame + c->frame_prefix;
    *p++ = (5u << 3) | 0u; /* field 5, varint */
    while (left >= 0x80) {
        *p++ = (uint8_t)(left | 0x80);
        left >>= 7;
    }
    *p++ = (uint8_t)left;
    c->frame_len = (size_t)(p - c->frame);
    assert(c->frame_len <= c->frame_prefix + RPC_BUDGET_FIELD_MAX);
}

/* Where a call that is not moving away from an endpoint starts: the leader a redirect
 * found, else the round-robin position. */
static int rpc_start_of(const proto_rpc_client_t *cli)
{
    return cli->preferred >= 0 ? cli->preferred : cli->rr;
}

/* Offers the call to the endpoints in order from endpoint `start` on, wrapping around; the
 * first socket that takes it wins. Returns true when one did. */
static bool rpc_call_transmit(proto_rpc_client_t *cli, rpc_call_t *c, int start, uint64_t now)
{
    assert(start >= 0);
    int tries = PROTO_RPC_ENDPOINTS_MAX;
    if (c->only >= 0 && now < c->only_until_mono) {
        start = c->only;
        tries = 1;
    } else {
        c->only = -1;
    }
    for (int i = 0; i < tries; i++) {
        int e = (start + i) % PROTO_RPC_ENDPOINTS_MAX;
        rpc_endpoint_t *ep = &cli->endpoints[e];
        if (!ep->used || ep->sock == NULL)
            continue;
        rpc_call_stamp(c, now);
        if (zmq_send(ep->sock, c->frame, c->frame_len, ZMQ_DONTWAIT) < 0) {
            if (ep->refused_since == 0) /* EAGAIN under ZMQ_IMMEDIATE: no live connection */
                ep->refused_since = now;
            continue;
        }
        if (!cli->in_order)
            cli->rr = (e + 1) % PROTO_RPC_ENDPOINTS_MAX;
        assert(!cli->in_order || cli->rr == 0);
        c->endpoint = e;
        ep->refused_since = 0;
        c->sent_mono = now;
        c->attempt_deadline_mono = now + (uint64_t)c->attempt_ms;
        if (c->attempt_deadline_mono > c->deadline_mono)
            c->attempt_deadline_mono = c->deadline_mono;
        return true;
    }
    c->endpoint = -1;
    c->attempt_deadline_mono = now + PROTO_RPC_SEND_RETRY_MS;
    if (c->attempt_deadline_mono > c->deadline_mono)
        c->attempt_deadline_mono = c->deadline_mono;
    return false;
}

int proto_rpc_client_send(proto_rpc_client_t *cli, const char *method, const uint8_t *body,
                          size_t body_len, int timeout_ms, int flags, void *tag,
                          uint64_t *request_id)
{
    assert(cli != NULL);
    assert(method != NULL);
    assert(request_id != NULL);
    assert(body != NULL || body_len == 0);
    assert(timeout_ms > 0);
    assert(rpc_method_valid(method));
    *request_id = 0;
    rpc_client_reload(cli, NULL, NULL);
    if (rpc_endpoint_count(cli) == 0)
        return QC_EUNAVAIL;
    if (cli->free_count == 0)
        return QC_EBUSY;
    int slot = cli->free_slots[cli->free_count - 1];
    rpc_call_t *c = &cli->calls[slot];
    assert(c->state == RPC_CALL_FREE);
    uint64_t id = (++cli->seq << PROTO_RPC_SLOT_BITS) | (uint64_t)slot;
    Quancun__Rpc m = QUANCUN__RPC__INIT;
    m.request_id = id;
    m.method = (char *)method;
    m.body.data = (uint8_t *)body;
    m.body.len = body_len;
    size_t len = quancun__rpc__get_packed_size(&m); /* timeout_ms is 0: not packed */
    if (len + RPC_BUDGET_FIELD_MAX > PROTO_RPC_FRAME_MAX)
        return QC_ETOOBIG;
    uint8_t *frame = malloc(len + RPC_BUDGET_FIELD_MAX);
    if (frame == NULL)
        return QC_ENOMEM;
    quancun__rpc__pack(&m, frame);
    cli->free_count--;
    memset(c, 0, sizeof *c);
    c->state = RPC_CALL_PENDING;
    c->request_id = id;
    c->flags = flags;
    c->tag = tag;
    c->frame = frame;
    c->frame_prefix = len;
    c->frame_len = len;
    uint64_t now = ops_time_mono_ms();
    c->deadline_mono = now + (uint64_t)timeout_ms;
    /* Non-idempotent calls get one attempt: the whole budget. */
    c->attempt_ms =
        (flags & PROTO_RPC_IDEMPOTENT) ? timeout_ms / (PROTO_RPC_RETRIES_MAX + 1) : timeout_ms;
    if (c->attempt_ms <= 0)
        c->attempt_ms = 1;
    c->endpoint = -1;
    c->only = -1;
    c->resume = -1;
    cli->inflight++;
    rpc_call_transmit(cli, c, rpc_start_of(cli), now);
    *request_id = id;
    return 0;
}

int proto_rpc_client_pollitems(proto_rpc_client_t *cli, void *items, int cap)
{
    assert(cli != NULL);
    assert(items != NULL || cap == 0);
    zmq_pollitem_t *it = items;
    int n = 0;
    for (int e = 0; e < PROTO_RPC_ENDPOINTS_MAX && n < cap; e++) {
        if (!cli->endpoints[e].used || cli->endpoints[e].sock == NULL)
            continue;
        it[n].socket = cli->endpoints[e].sock;
        it[n].fd = 0;
        it[n].events = ZMQ_POLLIN;
        it[n].revents = 0;
        n++;
    }
    return n;
}

int proto_rpc_client_next_timeout_ms(const proto_rpc_client_t *cli)
{
    assert(cli != NULL);
    if (cli->parked > 0)
        return 0;
    if (cli->inflight == 0)
        return -1;
    uint64_t now = ops_time_mono_ms();
    uint64_t best = UINT64_MAX;
    for (int s = 0; s < PROTO_RPC_SLOTS; s++) {
        const rpc_call_t *c = &cli->calls[s];
        if (c->state == RPC_CALL_PENDING && c->attempt_deadline_mono < best)
            best = c->attempt_deadline_mono;
    }
    if (best == UINT64_MAX)
        return -1;
    return best <= now ? 0 : (int)(best - now);
}

int proto_rpc_client_inflight(const proto_rpc_client_t *cli)
{
    assert(cli != NULL);
    return cli->inflight + cli->parked;
}

static void rpc_call_release(proto_rpc_client_t *cli, int slot)
{
    rpc_call_t *c = &cli->calls[slot];
    free(c->frame);
    proto_rpc_reply_destroy(&c->refusal);
    memset(c, 0, sizeof *c);
    assert(cli->free_count < PROTO_RPC_SLOTS);
    cli->free_slots[cli->free_count++] = slot;
}

/* Ends a PENDING call: hands the outcome to done, or parks it when done is NULL (during
 * proto_rpc_client_call(), for another caller's call). */
static void rpc_call_finish(proto_rpc_client_t *cli, int slot, int code, proto_rpc_reply_t *reply,
                            proto_rpc_done_fn *done, void *arg)
{
    rpc_call_t *c = &cli->calls[slot];
    assert(c->state == RPC_CALL_PENDING);
    cli->inflight--;
    if (code == QC_ETIMEOUT)
        ops_counter_add(cli->timeouts, 1);
    if (done == NULL) {
        c->state = RPC_CALL_DONE;
        c->code = code;
        c->reply = reply;
        free(c->frame);
        c->frame = NULL;
        cli->parked++;
        return;
    }
    void *tag = c->tag;
    rpc_call_release(cli, slot);
    done(arg, tag, code, reply);
}

static proto_rpc_reply_t *rpc_reply_from(const Quancun__RpcReply *m)
{
    proto_rpc_reply_t *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->request_id = m->request_id;
    r->code = m->code;
    r->server_time_ms = m->server_time_ms;
    r->load_state = (int)m->load_state;
    snprintf(r->leader, sizeof r->leader, "%s", m->leader != NULL ? m->leader : "");
    r->message = strdup(m->message != NULL ? m->message : "");
    if (m->body.len > 0) {
        r->body = malloc(m->body.len);
        if (r->body != NULL)
            memcpy(r->body, m->body.data, m->body.len);
        r->body_len = m->body.len;
    }
    if (r->message == NULL || (m->body.len > 0 && r->body == NULL))
        proto_rpc_reply_destroy(&r);
    return r;
}

/* The used endpoint whose address is addr, or -1. */
static int rpc_endpoint_find(const proto_rpc_client_t *cli, const char *addr)
{
    if (addr == NULL || addr[0] == '\0' || strlen(addr) >= PROTO_RPC_ENDPOINT_MAX)
        return -1;
    for (int e = 0; e < PROTO_RPC_ENDPOINTS_MAX; e++)
        if (cli->endpoints[e].used && cli->endpoints[e].sock != NULL &&
            strcmp(cli->endpoints[e].addr, addr) == 0)
            return e;
    return -1;
}

/* Endpoint `from` answered call c with QC_ENOTLEADER naming leader (maybe empty). Resends
 * the call to the leader when it is one of ours, else to the next endpoint, unless the call
 * has used its hops or its deadline (invariant 4). Returns true when the call was resent
 * (or waits to be: no socket took it yet), false when it ends with this reply. */
static bool rpc_call_redirect(proto_rpc_client_t *cli, rpc_call_t *c, int from, const char *leader)
{
    assert(c->state == RPC_CALL_PENDING);
    assert(from >= 0);
    assert(from < PROTO_RPC_ENDPOINTS_MAX);
    uint64_t now = ops_time_mono_ms();
    if (c->hops >= rpc_endpoint_count(cli) || now >= c->deadline_mono)
        return false;
    int to = rpc_endpoint_find(cli, leader);
    if (to == from)
        to = -1; /* a replica naming itself leader while refusing: do not ask it again */
    if (cli->preferred == from)
        cli->preferred = -1;
    if (to >= 0)
        cli->preferred = to;
    c->hops++;
    c->only = to;
    c->only_until_mono = now + (uint64_t)c->attempt_ms / 2;
    if (c->only_until_mono > c->deadline_mono)
        c->only_until_mono = c->deadline_mono;
    ops_counter_add(cli->redirects, 1);
    char shown[PROTO_RPC_ENDPOINT_MAX];
    snprintf(shown, sizeof shown, "%s", leader != NULL && leader[0] != '\0' ? leader : "unknown");
    ops_log(OPS_LOG_INFO, "rpc.leader_redirect", "rpc_service", cli->service, "endpoint",
            cli->endpoints[from].addr, "leader", shown, "leader_known", to >= 0 ? "yes" : "no",
            NULL);
    /* A new attempt with the time the call has left: the follower's answer proves nothing
     * about the next endpoint, and retries of idempotent calls keep their own count. */
    rpc_call_transmit(cli, c, to >= 0 ? to : (from + 1) % PROTO_RPC_ENDPOINTS_MAX, now);
    return true;
}

/* Endpoint `from` refused call c because the group has no leader it can name (QC_ENOQUORUM,
 * or QC_ENOTLEADER with the hops used): keeps the refusal r and holds the call for a backoff,
 * after which the tick offers it again from the next endpoint with its hops renewed. Returns
 * false (r not taken) when the call's budget cannot cover the backoff and another attempt:
 * the call then ends with r. */
static bool rpc_call_wait_leader(proto_rpc_client_t *cli, rpc_call_t *c, int from,
                                 proto_rpc_reply_t *r)
{
    assert(c->state == RPC_CALL_PENDING);
    assert(c->endpoint == from);
    assert(r != NULL);
    uint64_t now = ops_time_mono_ms();
    int backoff = c->backoff_ms == 0 ? PROTO_RPC_ELECTION_BACKOFF_MIN_MS : 2 * c->backoff_ms;
    if (backoff > PROTO_RPC_ELECTION_BACKOFF_MAX_MS)
        backoff = PROTO_RPC_ELECTION_BACKOFF_MAX_MS;
    if (now + 2 * (uint64_t)backoff >= c->deadline_mono)
        return false;
    c->backoff_ms = backoff;
    proto_rpc_reply_destroy(&c->refusal);
    c->refusal = r;
    c->hops = 0;
    c->only = -1;
    c->endpoint = -1; /* invariant 2: refused, so not outstanding */
    c->resume = (from + 1) % PROTO_RPC_ENDPOINTS_MAX;
    c->attempt_deadline_mono = now + (uint64_t)backoff;
    if (cli->preferred == from)
        cli->preferred = -1;
    ops_counter_add(cli->election_waits, 1);
    return true;
}

/* Reads every reply waiting on one endpoint. Returns the number of calls finished. */
static int rpc_endpoint_drain(proto_rpc_client_t *cli, int e, proto_rpc_done_fn *done, void *arg)
{
    rpc_endpoint_t *ep = &cli->endpoints[e];
    int finished = 0;
    while (ep->sock != NULL) {
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, ep->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&msg);
            break;
        }
        ep->last_rx_mono = ops_time_mono_ms();
        bool more = zmq_msg_more(&msg) != 0;
        Quancun__RpcReply *m = NULL;
        int drc =
            more ? QC_EDECODE : proto_decode_rpc_reply(zmq_msg_data(&msg), zmq_msg_size(&msg), &m);
        zmq_msg_close(&msg);
        if (more)
            rpc_drain(ep->sock);
        if (drc != 0) {
            ops_log_limited(OPS_LOG_WARN, "rpc.reply_malformed", ep->addr, "rpc_service",
                            cli->service, "endpoint", ep->addr, "error", qc_errname(drc), NULL);
            continue;
        }
        int slot = (int)(m->request_id & PROTO_RPC_SLOT_MASK);
        rpc_call_t *c = &cli->calls[slot];
        if (c->state != RPC_CALL_PENDING || c->request_id != m->request_id) {
            ops_counter_add(cli->late, 1);
            quancun__rpc_reply__free_unpacked(m, NULL);
            continue;
        }
        /* QC_ENOQUORUM (a replica that knows no leader: a candidate cut off from the others,
         * or one in an election) changed nothing either: the next replica may know the
         * leader. It is followed like QC_ENOTLEADER without a leader, within the same hops;
         * when every replica says so, the call ends with it. */
        bool refused = m->code == QC_ENOTLEADER || m->code == QC_ENOQUORUM;
        if (refused && c->endpoint != e) {
            /* An earlier attempt's refusal: the call is already waiting elsewhere. */
            ops_counter_add(cli->late, 1);
            quancun__rpc_reply__free_unpacked(m, NULL);
            continue;
        }
        if (refused && rpc_call_redirect(cli, c, e, m->code == QC_ENOTLEADER ? m->leader : NULL)) {
            quancun__rpc_reply__free_unpacked(m, NULL);
            continue;
        }
        if (c->hops > 0 && m->code != QC_ENOTLEADER && m->code != QC_ENOQUORUM)
            cli->preferred = e; /* found by walking the list: this one leads */
        proto_rpc_reply_t *r = rpc_reply_from(m);
        quancun__rpc_reply__free_unpacked(m, NULL);
        if (r == NULL)
            continue; /* out of memory: the call times out or is retried */
        if (refused && rpc_call_wait_leader(cli, c, e, r))
            continue;
        rpc_call_finish(cli, slot, 0, r, done, arg);
        finished++;
    }
    return finished;
}

/* Lazy Pirate: closes and reopens the socket of an endpoint that stayed silent, so whatever
 * libzmq still queued for a dead peer is discarded. The other calls sent there are lost with
 * the socket: idempotent ones are offered again, the others end with QC_ETIMEOUT. */
static int rpc_endpoint_recreate(proto_rpc_client_t *cli, int e, proto_rpc_done_fn *done, void *arg)
{
    rpc_endpoint_t *ep = &cli->endpoints[e];
    int finished = 0;
    ops_log_limited(OPS_LOG_WARN, "rpc.endpoint_silent", ep->addr, "rpc_service", cli->service,
                    "endpoint", ep->addr, NULL);
    ops_counter_add(cli->recreated, 1);
    rpc_endpoint_close(ep);
    if (rpc_endpoint_open(cli, ep) != 0) {
        ep->used = false;
        if (cli->preferred == e)
            cli->preferred = -1;
    }
    for (int s = 0; s < PROTO_RPC_SLOTS; s++) {
        rpc_call_t *c = &cli->calls[s];
        if (c->state != RPC_CALL_PENDING || c->endpoint != e)
            continue;
        if (c->flags & PROTO_RPC_IDEMPOTENT) {
            c->endpoint = -1;
            c->attempt_deadline_mono = 0;
        } else {
            rpc_call_finish(cli, s, QC_ETIMEOUT, NULL, done, arg);
            finished++;
        }
    }
    return finished;
}

/* Reopens every socket that has refused sends (no live connection) for
 * PROTO_RPC_REOPEN_MIN_MS and was opened at least that long ago. libzmq does not reconnect
 * after a handshake that ZAP refused (e.g. before our key was added to the allow-list), so
 * without this such a socket would stay dead for the life of the client. */
static int rpc_endpoints_reopen_stuck(proto_rpc_client_t *cli, uint64_t now,
                                      proto_rpc_done_fn *done, void *arg)
{
    int finished = 0;
    for (int e = 0; e < PROTO_RPC_ENDPOINTS_MAX; e++) {
        rpc_endpoint_t *ep = &cli->endpoints[e];
        /* A reply since the refusals began means the connection lives and the refusals
         * were the high-water mark, not a dead link. */
        if (ep->used && ep->sock != NULL && ep->refused_since != 0 &&
            ep->last_rx_mono < ep->refused_since &&
            now - ep->refused_since >= PROTO_RPC_REOPEN_MIN_MS &&
            now - ep->opened_mono >= PROTO_RPC_REOPEN_MIN_MS)
            finished += rpc_endpoint_recreate(cli, e, done, arg);
    }
    return finished;
}

/* Expires, resends, or re-offers every call whose attempt deadline passed. */
static int rpc_client_tick(proto_rpc_client_t *cli, proto_rpc_done_fn *done, void *arg)
{
    uint64_t now = ops_time_mono_ms();
    int finished = rpc_endpoints_reopen_stuck(cli, now, done, arg);
    for (int s = 0; s < PROTO_RPC_SLOTS; s++) {
        rpc_call_t *c = &cli->calls[s];
        if (c->state != RPC_CALL_PENDING || c->attempt_deadline_mono > now)
            continue;
        if (now >= c->deadline_mono) {
            /* Invariant 6: the refusal only when nothing is outstanding. */
            proto_rpc_reply_t *r = c->endpoint < 0 ? c->refusal : NULL;
            if (r == NULL)
                proto_rpc_reply_destroy(&c->refusal);
            c->refusal = NULL;
            rpc_call_finish(cli, s, r != NULL ? 0 : QC_ETIMEOUT, r, done, arg);
            finished++;
            continue;
        }
        if (c->endpoint < 0) {
            /* never sent, or refused by every replica it reached: safe to offer again */
            int start = cli->preferred < 0 && c->resume >= 0 ? c->resume : rpc_start_of(cli);
            rpc_call_transmit(cli, c, start, now);
            continue;
        }
        if (!(c->flags & PROTO_RPC_IDEMPOTENT) || c->retries >= PROTO_RPC_RETRIES_MAX) {
            /* No more attempts: wait for a late reply until the call's deadline. */
            c->attempt_deadline_mono = c->deadline_mono;
            continue;
        }
        int e = c->endpoint;
        c->retries++;
        ops_counter_add(cli->retries, 1);
        /* An endpoint that answered anything since this call was sent is alive: keep its
         * socket (and the other calls on it) and only move this call. */
        if (cli->endpoints[e].last_rx_mono < c->sent_mono)
            finished += rpc_endpoint_recreate(cli, e, done, arg);
        if (c->state == RPC_CALL_PENDING)
            rpc_call_transmit(cli, c, (e + 1) % PROTO_RPC_ENDPOINTS_MAX, now);
    }
    return finished;
}

static int rpc_client_deliver_parked(proto_rpc_client_t *cli, proto_rpc_done_fn *done, void *arg)
{
    int finished = 0;
    for (int s = 0; s < PROTO_RPC_SLOTS && cli->parked > 0; s++) {
        rpc_call_t *c = &cli->calls[s];
        if (c->state != RPC_CALL_DONE)
            continue;
        void *tag = c->tag;
        int code = c->code;
        proto_rpc_reply_t *reply = c->reply;
        cli->parked--;
        rpc_call_release(cli, s);
        done(arg, tag, code, reply);
        finished++;
    }
    return finished;
}

static int rpc_client_process(proto_rpc_client_t *cli, proto_rpc_done_fn *done, void *arg)
{
    int finished = rpc_client_reload(cli, done, arg);
    for (int e = 0; e < PROTO_RPC_ENDPOINTS_MAX; e++)
        if (cli->endpoints[e].used)
            finished += rpc_endpoint_drain(cli, e, done, arg);
    finished += rpc_client_tick(cli, done, arg);
    return finished;
}

int proto_rpc_client_process(proto_rpc_client_t *cli, proto_rpc_done_fn *done, void *arg)
{
    assert(cli != NULL);
    assert(done != NULL);
    int finished = rpc_client_deliver_parked(cli, done, arg);
    return finished + rpc_client_process(cli, done, arg);
}

int proto_rpc_client_call(proto_rpc_client_t *cli, const char *method, const uint8_t *body,
                          size_t body_len, int timeout_ms, int flags, proto_rpc_reply_t **out)
{
    assert(cli != NULL);
    assert(out != NULL);
    *out = NULL;
    uint64_t id = 0;
    int rc = proto_rpc_client_send(cli, method, body, body_len, timeout_ms, flags, NULL, &id);
    if (rc != 0)
        return rc;
    rpc_call_t *c = &cli->calls[id & PROTO_RPC_SLOT_MASK];
    for (;;) {
        rpc_client_process(cli, NULL, NULL);
        if (c->state == RPC_CALL_DONE && c->request_id == id)
            break;
        assert(c->state == RPC_CALL_PENDING);
        assert(c->request_id == id);
        zmq_pollitem_t items[PROTO_RPC_ENDPOINTS_MAX];
        int n = proto_rpc_client_pollitems(cli, items, PROTO_RPC_ENDPOINTS_MAX);
        int wait = proto_rpc_client_next_timeout_ms(cli);
        /* Parked calls of other callers make next_timeout 0; wait on our own deadline. */
        uint64_t now = ops_time_mono_ms();
        int own = c->attempt_deadline_mono > now ? (int)(c->attempt_deadline_mono - now) : 0;
        if (cli->parked > 0 || wait < 0 || wait > own)
            wait = own;
        if (zmq_poll(items, n, wait) < 0 && zmq_errno() != EINTR)
            break;
    }
    if (c->state == RPC_CALL_PENDING)
        rpc_call_finish(cli, (int)(id & PROTO_RPC_SLOT_MASK), QC_ETIMEOUT, NULL, NULL, NULL);
    rc = QC_ETIMEOUT;
    if (c->state == RPC_CALL_DONE && c->request_id == id) {
        rc = c->code;
        *out = c->reply;
        cli->parked--;
        rpc_call_release(cli, (int)(id & PROTO_RPC_SLOT_MASK));
    }
    return rc;
}

void proto_rpc_client_destroy(proto_rpc_client_t **cli_p)
{
    assert(cli_p != NULL);
    proto_rpc_client_t *cli = *cli_p;
    if (cli == NULL)
        return;
    for (int e = 0; e < PROTO_RPC_ENDPOINTS_MAX; e++)
        rpc_endpoint_close(&cli->endpoints[e]);
    for (int s = 0; s < PROTO_RPC_SLOTS; s++) {
        free(cli->calls[s].frame);
        proto_rpc_reply_destroy(&cli->calls[s].reply);
        proto_rpc_reply_destroy(&cli->calls[s].refusal);
    }
    proto_curve_keypair_wipe(&cli->keys);
    free(cli->endpoints_path);
    free(cli);
    *cli_p = NULL;
}
