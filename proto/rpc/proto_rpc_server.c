/* proto_rpc_server.c - the server side of proto_rpc: one ROUTER socket per server, whose
 * clients the ZAP handler of its context (rpc_zap.c) admits by the server's allow-list. */
#include "proto_rpc_server.h"

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
#include "proto_limits.h"
#include "proto_rpc_client.h"
#include "qc_error.h"
#include "rpc_common.h"
#include "rpc_zap.h"

/* ZMQ_ZAP_ENFORCE_DOMAIN is a DRAFT option: zmq.h defines it only under ZMQ_BUILD_DRAFT_API,
 * so we set it by number. Debian's libzmq 4.3.4 (libzmq5 4.3.4-6) accepts it, reads it back as
 * 1 and enforces it: with no handler bound a CURVE client's message never reaches the server
 * (checked by hand on 2026-11-27). A libzmq that refuses it with EINVAL gets the fallback
 * described at rpc_server_harden(). */
#define PROTO_RPC_ZMQ_ZAP_ENFORCE_DOMAIN 93

struct proto_rpc_server {
    void *ctx;
    void *sock;
    rpc_zap_t *zap;
    rpc_zap_domain_t domain;
    ops_counter_t *requests;
    ops_counter_t *malformed;
    ops_counter_t *expired;
    ops_counter_t *unroutable;
    bool zap_enforced; /* libzmq took ZMQ_ZAP_ENFORCE_DOMAIN */
    char *allow_path;  /* re-read on SIGHUP; NULL with allow_any */
    uint64_t hup_seen;
};

/* Sets ZMQ_ZAP_ENFORCE_DOMAIN; *enforced tells whether libzmq took it. Without it, a CURVE
 * server whose ZAP handler is missing admits every client (the "Stonehouse" legacy mode), so
 * we fail closed another way as well, whatever libzmq says: proto_rpc_server_new() binds only
 * after the handler's socket is bound and the handler has answered a self-check, and the
 * handler lives until the last server of its context is closed (server sockets are closed
 * first). The handler thread leaves its loop only on stop or on context termination, both of
 * which also end the server, so it cannot silently vanish under a live server. */
static int rpc_server_harden(void *sock, bool *enforced)
{
    *enforced = rpc_setsockopt_int(sock, PROTO_RPC_ZMQ_ZAP_ENFORCE_DOMAIN, 1) == 0;
    if (*enforced || zmq_errno() == EINVAL)
        return 0;
    return QC_EIO;
}

static int rpc_server_socket_new(proto_rpc_server_t *srv, const proto_rpc_server_config_t *cfg)
{
    srv->sock = zmq_socket(srv->ctx, ZMQ_ROUTER);
    if (srv->sock == NULL)
        return QC_EIO;
    if (rpc_socket_common(srv->sock) != 0 ||
        rpc_setsockopt_int(srv->sock, ZMQ_CURVE_SERVER, 1) != 0 ||
        zmq_setsockopt(srv->sock, ZMQ_CURVE_SECRETKEY, cfg->keys->secret_z85,
                       PROTO_CURVE_KEY_Z85_LEN) != 0 ||
        zmq_setsockopt(srv->sock, ZMQ_ZAP_DOMAIN, srv->domain.name, strlen(srv->domain.name)) !=
            0 ||
        rpc_server_harden(srv->sock, &srv->zap_enforced) != 0 ||
        rpc_setsockopt_int(srv->sock, ZMQ_ROUTER_MANDATORY, 1) != 0 ||
        /* Per peer: a client never has more than PROTO_RPC_INFLIGHT_MAX calls out, so a
         * client that reads its replies is never dropped at the high-water mark. */
        rpc_setsockopt_int(srv->sock, ZMQ_SNDHWM, PROTO_RPC_INFLIGHT_MAX) != 0 ||
        rpc_setsockopt_int(srv->sock, ZMQ_RCVHWM, PROTO_RPC_INFLIGHT_MAX) != 0)
        return QC_ECONFIG;
    if (zmq_bind(srv->sock, cfg->endpoint) != 0) {
        ops_log(OPS_LOG_ERROR, "rpc.bind_failed", "rpc_service", cfg->service, "endpoint",
                cfg->endpoint, "error", zmq_strerror(zmq_errno()), NULL);
        return QC_EIO;
    }
    return 0;
}

int proto_rpc_server_new(void *ctx, const proto_rpc_server_config_t *cfg, proto_rpc_server_t **out)
{
    assert(ctx != NULL);
    assert(cfg != NULL);
    assert(out != NULL);
    assert(cfg->service != NULL);
    assert(cfg->endpoint != NULL);
    assert(cfg->keys != NULL);
    *out = NULL;
    if (!rpc_service_valid(cfg->service) || !rpc_z85_key_valid(cfg->keys->secret_z85) ||
        (cfg->allow_path == NULL) != cfg->allow_any)
        return QC_ECONFIG;
    proto_rpc_server_t *srv = calloc(1, sizeof *srv);
    if (srv == NULL)
        return QC_ENOMEM;
    srv->ctx = ctx;
    snprintf(srv->domain.service, sizeof srv->domain.service, "%s", cfg->service);
    srv->domain.allow_any = cfg->allow_any;
    srv->domain.refused = rpc_counter("qc_rpc_refused_total", cfg->service,
                                      "CURVE clients refused by the ZAP handler");
    srv->requests = rpc_counter("qc_rpc_requests_total", cfg->service, "requests received");
    srv->malformed = rpc_counter("qc_rpc_malformed_total", cfg->service,
                                 "frames dropped because they did not parse");
    srv->expired = rpc_counter("qc_rpc_expired_total", cfg->service,
                               "requests dropped because their deadline had passed");
    srv->unroutable = rpc_counter("qc_rpc_unroutable_total", cfg->service,
                                  "replies dropped because the client had gone");
    int rc = 0;
    srv->hup_seen = ops_signal_hup_generation();
    if (cfg->allow_path != NULL) {
        srv->allow_path = strdup(cfg->allow_path);
        if (srv->allow_path == NULL) {
            rc = QC_ENOMEM;
            goto err;
        }
        if ((rc = proto_curve_keylist_load(cfg->allow_path, PROTO_RPC_ALLOW_MAX,
                                           &srv->domain.allow)) != 0)
            goto err;
    }
    rc = rpc_zap_attach(ctx, &srv->domain, &srv->zap);
    if (rc != 0)
        goto err;
    rc = rpc_server_socket_new(srv, cfg);
    if (rc != 0)
        goto err;
    ops_log(OPS_LOG_INFO, "rpc.listening", "rpc_service", cfg->service, "endpoint", cfg->endpoint,
            "zap_domain", srv->domain.name, "zap_enforce",
            srv->zap_enforced ? "libzmq" : "self-check", "allow",
            cfg->allow_any ? "any" : cfg->allow_path, NULL);
    *out = srv;
    return 0;
err:
    proto_rpc_server_destroy(&srv);
    return rc;
}

void *proto_rpc_server_socket(proto_rpc_server_t *srv)
{
    assert(srv != NULL);
    return srv->sock;
}

static void rpc_server_malformed(proto_rpc_server_t *srv, const char *why, const char *peer)
{
    ops_log_limited(OPS_LOG_WARN, "rpc.malformed", peer, "rpc_service", srv->domain.service,
                    "reason", why, NULL);
    ops_counter_add(srv->malformed, 1);
}

static int rpc_server_send(proto_rpc_server_t *srv, const uint8_t *rid, size_t rid_len,
                           const Quancun__RpcReply *r);

/* Answers a request refused before it became a proto_rpc_request_t (late, malformed), when
 * it has an id. Sending errors are counted, never fatal. */
static void rpc_server_answer_early(proto_rpc_server_t *srv, zmq_msg_t *rid, uint64_t request_id,
                                    int code, const char *message)
{
    if (request_id == 0)
        return;
    Quancun__RpcReply r = QUANCUN__RPC_REPLY__INIT;
    r.request_id = request_id;
    r.code = code;
    r.message = (char *)message;
    r.server_time_ms = ops_time_wall_ms();
    QC_IGNORE(rpc_server_send(srv, zmq_msg_data(rid), zmq_msg_size(rid), &r)); /* best effort */
}

/* Reads one message without waiting. Returns 0 with *out set, 1 when a frame was dropped,
 * QC_ETIMEOUT when nothing was waiting, QC_EIO on context termination, QC_ENOMEM. */
static int rpc_server_recv_one(proto_rpc_server_t *srv, proto_rpc_request_t **out)
{
    zmq_msg_t rid, body;
    zmq_msg_init(&rid);
    if (zmq_msg_recv(&rid, srv->sock, ZMQ_DONTWAIT) < 0) {
        int e = zmq_errno();
        zmq_msg_close(&rid);
        return e == EAGAIN || e == EINTR ? QC_ETIMEOUT : QC_EIO;
    }
    /* The routing id is first; the peer's frame follows, and must be exactly one. */
    zmq_msg_init(&body);
    if (!zmq_msg_more(&rid) || zmq_msg_recv(&body, srv->sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&rid);
        zmq_msg_close(&body);
        rpc_server_malformed(srv, "no body frame", "");
        return 1;
    }
    const char *user = zmq_msg_gets(&body, "User-Id");
    const char *addr = zmq_msg_gets(&body, "Peer-Address");
    if (addr == NULL)
        addr = "";
    int rc = 1;
    proto_rpc_request_t *req = NULL;
    Quancun__Rpc *m = NULL;
    if (zmq_msg_more(&body)) {
        rpc_drain(srv->sock);
        rpc_server_malformed(srv, "more than one frame", addr);
        goto out;
    }
    if (zmq_msg_size(&rid) > PROTO_RPC_ROUTING_ID_MAX || user == NULL ||
        strlen(user) != PROTO_CURVE_KEY_Z85_LEN) {
        rpc_server_malformed(srv, "no routing id or peer key", addr);
        goto out;
    }
    int drc = proto_decode_rpc(zmq_msg_data(&body), zmq_msg_size(&body), &m);
    if (drc != 0) {
        rpc_server_malformed(srv, qc_errname(drc), addr);
        /* Answered where there is a request id to answer, so the caller learns why. */
        rpc_server_answer_early(
            srv, &rid, proto_decode_rpc_request_id(zmq_msg_data(&body), zmq_msg_size(&body)), drc,
            "malformed request frame");
        goto out;
    }
    ops_counter_add(srv->requests, 1);
    uint64_t now_mono = ops_time_mono_ms();
    uint64_t deadline_mono = 0;
    if (m->timeout_ms != 0) {
        deadline_mono = now_mono + m->timeout_ms;
    } else if (m->deadline_ms != 0) {
        /* A legacy caller's absolute deadline: what it leaves on our clock, now. */
        uint64_t wall = ops_time_wall_ms();
        if (m->deadline_ms < wall) {
            ops_log(OPS_LOG_INFO, "rpc.expired", "rpc_service", srv->domain.service, "method",
                    m->method, "peer", user, NULL);
            ops_counter_add(srv->expired, 1);
            rpc_server_answer_early(srv, &rid, m->request_id, QC_EEXPIRED,
                                    "the call's deadline_ms had passed on the server's clock "
                                    "(see server_time_ms); send timeout_ms instead");
            goto out;
        }
        deadline_mono = now_mono + (m->deadline_ms - wall);
    }
    req = calloc(1, sizeof *req);
    if (req == NULL || (m->body.len > 0 && (req->body = malloc(m->body.len)) == NULL)) {
        rc = QC_ENOMEM;
        goto out;
    }
    memcpy(req->routing_id, zmq_msg_data(&rid), zmq_msg_size(&rid));
    req->routing_id_len = zmq_msg_size(&rid);
    memcpy(req->peer_key, user, PROTO_CURVE_KEY_Z85_LEN + 1);
    req->request_id = m->request_id;
    snprintf(req->method, sizeof req->method, "%s", m->method);
    req->deadline_mono_ms = deadline_mono;
    if (m->body.len > 0)
        memcpy(req->body, m->body.data, m->body.len);
    req->body_len = m->body.len;
    req->fd = zmq_msg_get(&body, ZMQ_SRCFD);
    *out = req;
    req = NULL;
    rc = 0;
out:
    proto_rpc_request_destroy(&req);
    if (m != NULL)
        quancun__rpc__free_unpacked(m, NULL);
    zmq_msg_close(&rid);
    zmq_msg_close(&body);
    return rc;
}

/* Re-reads the allow-list after a SIGHUP and swaps it in under the handler's lock. A file
 * that does not load keeps the current list: a typo must not lock every client out. */
static void rpc_server_reload(proto_rpc_server_t *srv)
{
    uint64_t gen = ops_signal_hup_generation();
    if (gen == srv->hup_seen || srv->allow_path == NULL)
        return;
    srv->hup_seen = gen;
    proto_curve_keylist_t fresh = {0};
    int rc = proto_curve_keylist_load(srv->allow_path, PROTO_RPC_ALLOW_MAX, &fresh);
    if (rc != 0) {
        ops_log(OPS_LOG_WARN, "rpc.allow_reload_failed", "rpc_service", srv->domain.service, "path",
                srv->allow_path, "error", qc_errname(rc), NULL);
        return;
    }
    char count[24];
    snprintf(count, sizeof count, "%zu", fresh.count);
    rpc_zap_swap_allow(srv->zap, &srv->domain, &fresh);
    proto_curve_keylist_clear(&fresh); /* now the old list */
    ops_log(OPS_LOG_INFO, "rpc.allow_reloaded", "rpc_service", srv->domain.service, "path",
            srv->allow_path, "keys", count, NULL);
}

int proto_rpc_server_recv(proto_rpc_server_t *srv, int timeout_ms, proto_rpc_request_t **out)
{
    assert(srv != NULL);
    assert(out != NULL);
    assert(timeout_ms >= -1);
    *out = NULL;
    rpc_server_reload(srv);
    uint64_t end = ops_time_mono_ms() + (uint64_t)(timeout_ms < 0 ? 0 : timeout_ms);
    for (;;) {
        int rc = rpc_server_recv_one(srv, out);
        if (rc <= 0 && rc != QC_ETIMEOUT)
            return rc;
        if (rc == 1)
            continue; /* dropped a frame: look again at once */
        int wait = -1;
        if (timeout_ms >= 0) {
            uint64_t now = ops_time_mono_ms();
            if (now >= end)
                return QC_ETIMEOUT;
            wait = (int)(end - now);
        }
        zmq_pollitem_t item = {srv->sock, 0, ZMQ_POLLIN, 0};
        int n = zmq_poll(&item, 1, wait);
        if (n < 0 && zmq_errno() != EINTR)
            return QC_EIO;
        if (n < 0 && timeout_ms < 0 && ops_signal_stop_requested())
            return QC_ETIMEOUT; /* a stop request must end an endless wait */
    }
}

int proto_rpc_server_reply(proto_rpc_server_t *srv, const proto_rpc_request_t *req, int code,
                           const char *message, const uint8_t *body, size_t body_len)
{
    proto_rpc_answer_t a = {.code = code, .message = message, .body = body, .body_len = body_len};
    return proto_rpc_server_answer(srv, req, &a);
}

int proto_rpc_server_reply_not_leader(proto_rpc_server_t *srv, const proto_rpc_request_t *req,
                                      const char *leader)
{
    assert(leader == NULL || strlen(leader) < PROTO_RPC_LEADER_MAX);
    proto_rpc_answer_t a = {.code = QC_ENOTLEADER, .leader = leader};
    return proto_rpc_server_answer(srv, req, &a);
}

int proto_rpc_server_answer(proto_rpc_server_t *srv, const proto_rpc_request_t *req,
                            const proto_rpc_answer_t *a)
{
    assert(srv != NULL);
    assert(req != NULL);
    assert(a != NULL);
    assert(a->code <= 0);
    assert(a->body != NULL || a->body_len == 0);
    assert(a->leader == NULL || a->code == QC_ENOTLEADER);
    assert(a->load_state >= 0);
    assert(a->load_state <= QUANCUN__LOAD_STATE__LOAD_LATE_CONFIRMED);
    Quancun__RpcReply r = QUANCUN__RPC_REPLY__INIT;
    r.request_id = req->request_id;
    r.code = a->code;
    /* A longer message would make the client refuse the whole reply: truncate it. */
    char text[PROTO_RPC_MESSAGE_MAX + 1];
    snprintf(text, sizeof text, "%s", a->message != NULL ? a->message : qc_strerror(a->code));
    r.message = text;
    r.body.data = (uint8_t *)a->body;
    r.body.len = a->body_len;
    char leader[PROTO_RPC_LEADER_MAX + 1] = "";
    if (a->leader != NULL)
        snprintf(leader, sizeof leader, "%s", a->leader);
    r.leader = leader;
    r.load_state = (Quancun__LoadState)a->load_state;
    if (a->code != 0)
        r.server_time_ms = ops_time_wall_ms();
    return rpc_server_send(srv, req->routing_id, req->routing_id_len, &r);
}

static int rpc_server_send(proto_rpc_server_t *srv, const uint8_t *rid, size_t rid_len,
                           const Quancun__RpcReply *r)
{
    size_t len = quancun__rpc_reply__get_packed_size(r);
    if (len > PROTO_RPC_FRAME_MAX)
        return QC_ETOOBIG;
    zmq_msg_t msg;
    if (zmq_msg_init_size(&msg, len) != 0)
        return QC_ENOMEM;
    quancun__rpc_reply__pack(r, zmq_msg_data(&msg));
    int rc = 0;
    if (zmq_send(srv->sock, rid, rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        int e = zmq_errno();
        if (e == EHOSTUNREACH || e == EAGAIN) {
            /* The client went away (or stopped reading): its retry, if any, will go
             * elsewhere. Not our error. */
            ops_counter_add(srv->unroutable, 1);
        } else {
            rc = QC_EIO;
        }
        zmq_msg_close(&msg);
        return rc;
    }
    if (zmq_msg_send(&msg, srv->sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&msg);
        ops_counter_add(srv->unroutable, 1);
    }
    return rc;
}

void proto_rpc_request_destroy(proto_rpc_request_t **req_p)
{
    assert(req_p != NULL);
    if (*req_p == NULL)
        return;
    free((*req_p)->body);
    free(*req_p);
    *req_p = NULL;
}

void proto_rpc_server_destroy(proto_rpc_server_t **srv_p)
{
    assert(srv_p != NULL);
    proto_rpc_server_t *srv = *srv_p;
    if (srv == NULL)
        return;
    /* Socket first: the handler must outlive every socket that relies on it. */
    if (srv->sock != NULL)
        zmq_close(srv->sock);
    if (srv->zap != NULL) {
        rpc_zap_detach(srv->zap, &srv->domain);
    }
    proto_curve_keylist_clear(&srv->domain.allow);
    free(srv->allow_path);
    free(srv);
    *srv_p = NULL;
}
