/* proto_rpc.h - authenticated request/reply over ZeroMQ with CURVE, for services and devices.
 *
 * Servers bind a ROUTER socket; clients connect one DEALER per endpoint. Every message is
 * one frame (after the ROUTER's routing id): a protobuf Rpc on the way in, an RpcReply on
 * the way out. Frames over PROTO_RPC_FRAME_MAX are dropped by libzmq (ZMQ_MAXMSGSIZE)
 * before anything parses them.
 *
 * Security: every socket uses CURVE. A server runs a ZAP handler (inproc://zeromq.zap.01,
 * in the server's context) that admits only the client public keys of its allow-list, or
 * any key when the list is "*" (the gateway's device port), and sets ZAP_ENFORCE_DOMAIN so
 * that a missing handler fails closed. The admitted key (Z85) reaches every request as
 * peer_key. Refusals are logged and counted.
 *
 * Clients: request ids, a per-call deadline, bounded retries of idempotent calls with a
 * fresh socket per retry (the zguide's Lazy Pirate), and failover across the endpoints of
 * the service. The endpoint list is re-read on SIGHUP (see ops_signal.h) so an operator
 * can add or remove an instance without restarting callers.
 *
 * Neither a server nor a client is thread-safe: one thread owns each.
 *
 * Implementation notes (proto_rpc.c), part of the contract:
 *  - One ZAP handler thread serves every server of a zmq context; each server socket's
 *    ZAP domain is its service name ("service#2", "#3"... when two servers of the same
 *    service share a context). Another component that already bound
 *    inproc://zeromq.zap.01 in the same context makes proto_rpc_server_new() fail (QC_EIO)
 *    rather than serve without our allow-list.
 *  - Metrics (ops_metrics counters, label service="<service>"): qc_rpc_requests_total,
 *    qc_rpc_refused_total, qc_rpc_malformed_total, qc_rpc_expired_total,
 *    qc_rpc_unroutable_total on servers; qc_rpc_client_late_replies_total,
 *    qc_rpc_client_retries_total, qc_rpc_client_timeouts_total,
 *    qc_rpc_client_sockets_recreated_total on clients.
 *  - Log events: rpc.listening, rpc.refused (peer address and key), rpc.malformed,
 *    rpc.expired, rpc.endpoint_added/removed/silent, rpc.endpoints_reload_failed.
 *  - RpcReply.message is truncated to 1024 bytes (proto_decode's limit).
 *  - Service names: letters, digits, '_', '-', '.', at most 64 (else QC_ECONFIG).
 *  - Lazy Pirate exception: when the endpoint of a timed-out attempt has answered anything
 *    since that attempt was sent, it is alive, so its socket (and the other calls on it) is
 *    kept and only the call moves on; a silent endpoint's socket is recreated.
 *  - A socket that has had no live connection for 1 s while calls wanted it is reopened
 *    (libzmq never retries a handshake that ZAP refused), so a client whose key is added to
 *    a server's allow-list later gets in without being restarted. */
#ifndef PROTO_RPC_H
#define PROTO_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto_decode.h"

#define PROTO_CURVE_KEY_Z85_LEN 40  /* a Z85 CURVE key, without the NUL */
#define PROTO_RPC_ENDPOINTS_MAX 16  /* instances of one service a client knows */
#define PROTO_RPC_ALLOW_MAX 1024    /* client keys in one server's allow-list */
#define PROTO_RPC_RETRIES_MAX 3     /* resends of an idempotent call */
#define PROTO_RPC_INFLIGHT_MAX 4096 /* outstanding calls of one client */
#define PROTO_RPC_HEARTBEAT_IVL_MS 1000
#define PROTO_RPC_HEARTBEAT_TIMEOUT_MS 3000
#define PROTO_RPC_ROUTING_ID_MAX 256

/* A CURVE key pair in Z85 text. */
typedef struct proto_curve_keypair {
    char public_z85[PROTO_CURVE_KEY_Z85_LEN + 1];
    char secret_z85[PROTO_CURVE_KEY_Z85_LEN + 1];
} proto_curve_keypair_t;

/* Reads a key pair file: two lines "public = Z85" and "secret = Z85" ('#' comments).
 * Returns 0, QC_EIO or QC_ECONFIG. */
int proto_curve_keypair_load(const char *path, proto_curve_keypair_t *out);

/* Creates a new key pair and writes it to path with mode 0600 (the public key also to
 * path + ".pub", as one bare Z85 line so allow-lists can be concatenated from .pub files).
 * Never overwrites: an existing path (or path.pub) gives QC_EIO. Returns 0, QC_EIO or
 * QC_ECRYPTO; on error nothing is left on disk and *out holds no secret. */
int proto_curve_keypair_create(const char *path, proto_curve_keypair_t *out);

/* Wipes the secret half. */
void proto_curve_keypair_wipe(proto_curve_keypair_t *kp);

/* ---------------------------------------------------------------- server */

typedef struct proto_rpc_server proto_rpc_server_t;

typedef struct proto_rpc_server_config {
    const char *service;  /* name for logs and metrics ("ledger") */
    const char *endpoint; /* where to bind ("tcp://127.0.0.1:7101") */
    const proto_curve_keypair_t *keys;
    const char *allow_path; /* file of allowed client public keys, one Z85 per line,
                               or NULL together with allow_any */
    bool allow_any;         /* admit any CURVE client (the gateway's device port) */
} proto_rpc_server_config_t;

/* One request received by a server. The server fills it; the caller owns it and frees it
 * with proto_rpc_request_destroy() after replying (or after deciding not to). */
typedef struct proto_rpc_request {
    uint8_t routing_id[PROTO_RPC_ROUTING_ID_MAX];
    size_t routing_id_len;
    char peer_key[PROTO_CURVE_KEY_Z85_LEN + 1]; /* the client's CURVE public key */
    uint64_t request_id;
    char method[PROTO_METHOD_MAX + 1];
    uint64_t deadline_ms; /* absolute wall-clock ms, 0 = none */
    uint8_t *body;        /* owned; may be NULL when body_len is 0 */
    size_t body_len;
} proto_rpc_request_t;

/* Creates a server in zmq context ctx (not owned): starts its ZAP handler, configures CURVE
 * and the socket limits, binds. Returns 0 and sets *out, or QC_ECONFIG (bad keys or allow
 * file), QC_EIO (bind failed), QC_ENOMEM. */
int proto_rpc_server_new(void *ctx, const proto_rpc_server_config_t *cfg, proto_rpc_server_t **out);

/* The ROUTER socket, for zmq_poll(). */
void *proto_rpc_server_socket(proto_rpc_server_t *srv);

/* Waits up to timeout_ms (0 = do not wait, -1 = forever) for one well-formed request.
 * Malformed frames are dropped, logged and counted, and do not end the wait. After a SIGHUP
 * (ops_signal_hup_generation() changed) it first re-reads allow_path; a file that does not
 * load keeps the current list (logged as rpc.allow_reload_failed). Connections already
 * admitted stay open: a removed key is refused only when it connects again.
 * Returns 0 and sets *out, QC_ETIMEOUT when none arrived, or QC_EIO (context terminated). */
int proto_rpc_server_recv(proto_rpc_server_t *srv, int timeout_ms, proto_rpc_request_t **out);

/* Sends the reply for req: code 0 with body, or a negative QC_E* code with a message
 * (NULL = qc_strerror(code)). A peer that went away is not an error (the reply is dropped
 * and counted). Returns 0, or QC_ENOMEM / QC_EIO. */
int proto_rpc_server_reply(proto_rpc_server_t *srv, const proto_rpc_request_t *req, int code,
                           const char *message, const uint8_t *body, size_t body_len);

void proto_rpc_request_destroy(proto_rpc_request_t **req_p);

/* Stops the ZAP handler, closes the socket, frees srv, nulls *srv_p; accepts NULL. */
void proto_rpc_server_destroy(proto_rpc_server_t **srv_p);

/* ---------------------------------------------------------------- client */

typedef struct proto_rpc_client proto_rpc_client_t;

typedef struct proto_rpc_client_config {
    const char *service; /* name of the service called, for logs and metrics */
    /* Endpoints: either a comma-separated list, or a file with one endpoint per line that
     * is re-read on SIGHUP. Exactly one of the two is set. */
    const char *endpoints;
    const char *endpoints_path;
    const char *server_public_z85;     /* the service's CURVE public key */
    const proto_curve_keypair_t *keys; /* this client's key pair */
} proto_rpc_client_config_t;

/* A reply, owned by the caller; free with proto_rpc_reply_destroy(). */
typedef struct proto_rpc_reply {
    uint64_t request_id;
    int code;      /* 0 or a QC_E* code sent by the server */
    char *message; /* never NULL */
    uint8_t *body; /* may be NULL when body_len is 0 */
    size_t body_len;
} proto_rpc_reply_t;

void proto_rpc_reply_destroy(proto_rpc_reply_t **reply_p);

#define PROTO_RPC_IDEMPOTENT 0x1 /* may be resent, to the same or another endpoint */

/* Creates a client in zmq context ctx (not owned) and connects to every endpoint.
 * Returns 0, QC_ECONFIG or QC_ENOMEM. */
int proto_rpc_client_new(void *ctx, const proto_rpc_client_config_t *cfg, proto_rpc_client_t **out);

/* Calls method with body and waits for the reply, for at most timeout_ms in all. An
 * idempotent call is resent on a fresh socket to the next endpoint when an attempt gets
 * no answer within timeout_ms / (PROTO_RPC_RETRIES_MAX + 1), at most PROTO_RPC_RETRIES_MAX
 * times. Returns 0 with *out set when a reply arrived (its code may still be an error),
 * QC_ETIMEOUT when none did, QC_EUNAVAIL when no endpoint is configured. */
int proto_rpc_client_call(proto_rpc_client_t *cli, const char *method, const uint8_t *body,
                          size_t body_len, int timeout_ms, int flags, proto_rpc_reply_t **out);
/* call() may be used while asynchronous calls are in flight on the same client: those that
 * finish during it are kept and handed to done by the next proto_rpc_client_process().
 * A non-idempotent call whose endpoint is removed by a reload, or whose socket had to be
 * recreated for another call, ends with QC_ETIMEOUT: its outcome is unknown. */

/* Asynchronous use, for event loops with many calls in flight. */

/* Called once per finished call: code is 0 with reply set, or QC_ETIMEOUT / QC_EUNAVAIL
 * with reply NULL. The callee owns reply. */
typedef void(proto_rpc_done_fn)(void *arg, void *tag, int code, proto_rpc_reply_t *reply);

/* Starts a call; tag is handed back to the done callback. Returns 0 and sets
 * *request_id, QC_EBUSY at PROTO_RPC_INFLIGHT_MAX, QC_EUNAVAIL, QC_ENOMEM, or QC_ETOOBIG
 * when the request frame would exceed PROTO_RPC_FRAME_MAX (call() too). */
int proto_rpc_client_send(proto_rpc_client_t *cli, const char *method, const uint8_t *body,
                          size_t body_len, int timeout_ms, int flags, void *tag,
                          uint64_t *request_id);

/* Fills items (capacity cap, zmq_pollitem_t) with the client's sockets, POLLIN; returns how
 * many. Sockets are replaced by retries and SIGHUP reloads: refill before every poll. */
int proto_rpc_client_pollitems(proto_rpc_client_t *cli, void *items, int cap);

/* Milliseconds until the next retry or deadline of a call in flight, -1 when none. */
int proto_rpc_client_next_timeout_ms(const proto_rpc_client_t *cli);

/* Receives every reply waiting on the client's sockets, resends or expires calls whose
 * attempt timed out, re-reads the endpoints after SIGHUP, and calls done for each call
 * that finished. Never blocks. Returns the number of finished calls. */
int proto_rpc_client_process(proto_rpc_client_t *cli, proto_rpc_done_fn *done, void *arg);

/* Calls in flight (including finished ones not yet handed to done). */
int proto_rpc_client_inflight(const proto_rpc_client_t *cli);

/* Closes every socket, frees cli without calling done for calls in flight, nulls *cli_p;
 * accepts NULL. */
void proto_rpc_client_destroy(proto_rpc_client_t **cli_p);

#endif
