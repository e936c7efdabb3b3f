/* proto_rpc_server.h - the server side of proto_rpc (see proto_rpc.h): a ROUTER socket with
 * CURVE, whose clients a ZAP handler admits by allow-list.
 *
 * Implementation notes (proto_rpc_server.c, rpc_zap.c), part of the contract:
 *  - One ZAP handler thread serves every server of a zmq context; each server socket's
 *    ZAP domain is its service name ("service#2", "#3"... when two servers of the same
 *    service share a context). Another component that already bound
 *    inproc://zeromq.zap.01 in the same context makes proto_rpc_server_new() fail (QC_EIO)
 *    rather than serve without our allow-list.
 *  - Metrics (ops_metrics counters, label service="<service>"): qc_rpc_requests_total,
 *    qc_rpc_refused_total, qc_rpc_malformed_total, qc_rpc_expired_total,
 *    qc_rpc_unroutable_total.
 *  - Log events: rpc.listening, rpc.refused (peer address and key), rpc.malformed,
 *    rpc.expired, rpc.allow_reloaded, rpc.allow_reload_failed.
 *  - RpcReply.message is truncated to 1024 bytes (proto_decode's limit).
 *  - Service names: letters, digits, '_', '-', '.', at most 64 (else QC_ECONFIG).
 *
 * A server is not thread-safe: one thread owns it. */
#ifndef PROTO_RPC_SERVER_H
#define PROTO_RPC_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto_curve.h"
#include "proto_decode.h"
#include "qc_error.h"

#define PROTO_RPC_ALLOW_MAX 1024 /* client keys in one server's allow-list */
#define PROTO_RPC_ROUTING_ID_MAX 256

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
    /* This server's ops_time_mono_ms() past which the caller no longer waits: the time of
     * receipt plus Rpc.timeout_ms (or, from a legacy caller without one, what its absolute
     * deadline_ms left); 0 = none. */
    uint64_t deadline_mono_ms;
    uint8_t *body; /* owned; may be NULL when body_len is 0 */
    size_t body_len;
    /* The descriptor of the connection the call came on (libzmq's ZMQ_SRCFD), -1 when
     * unknown: what a socket monitor's events name (the gateway's connection bound). */
    int fd;
} proto_rpc_request_t;

/* Creates a server in zmq context ctx (not owned): starts its ZAP handler, configures CURVE
 * and the socket limits, binds. Returns 0 and sets *out, or QC_ECONFIG (bad keys or allow
 * file), QC_EIO (bind failed), QC_ENOMEM. */
QC_MUST_CHECK int proto_rpc_server_new(void *ctx, const proto_rpc_server_config_t *cfg,
                                       proto_rpc_server_t **out);

/* The ROUTER socket, for zmq_poll(). */
void *proto_rpc_server_socket(proto_rpc_server_t *srv);

/* Waits up to timeout_ms (0 = do not wait, -1 = forever) for one well-formed request.
 * Malformed frames are dropped, logged and counted, and do not end the wait; one whose
 * request id can be read (proto_decode_rpc_request_id) is answered with the decoding code.
 * A call whose legacy absolute deadline_ms has passed on this server's clock is answered
 * QC_EEXPIRED (both answers carry server_time_ms) and not returned. After a SIGHUP
 * (ops_signal_hup_generation() changed) it first re-reads allow_path; a file that does not
 * load keeps the current list (logged as rpc.allow_reload_failed). Connections already
 * admitted stay open: a removed key is refused only when it connects again.
 * Returns 0 and sets *out, QC_ETIMEOUT when none arrived, or QC_EIO (context terminated). */
QC_MUST_CHECK int proto_rpc_server_recv(proto_rpc_server_t *srv, int timeout_ms,
                                        proto_rpc_request_t **out);

/* A reply with everything RpcReply can say. */
typedef struct proto_rpc_answer {
    int code;            /* 0 or a negative QC_E* code */
    const char *message; /* NULL = qc_strerror(code); truncated to PROTO_RPC_MESSAGE_MAX */
    const uint8_t *body;
    size_t body_len;
    const char *leader; /* RpcReply.leader (QC_ENOTLEADER); NULL = none; at most
                           PROTO_RPC_LEADER_MAX bytes are sent */
    int load_state;     /* RpcReply.load_state (Quancun__LoadState), 0 = none */
} proto_rpc_answer_t;

/* Sends the answer for req. Every refusal (code != 0) carries the server's wall clock in
 * RpcReply.server_time_ms. Returns as proto_rpc_server_reply(). */
QC_MUST_CHECK int proto_rpc_server_answer(proto_rpc_server_t *srv, const proto_rpc_request_t *req,
                                          const proto_rpc_answer_t *a);

/* Sends the reply for req: code 0 with body, or a negative QC_E* code with a message
 * (NULL = qc_strerror(code)). A peer that went away is not an error (the reply is dropped
 * and counted). Returns 0, or QC_ENOMEM / QC_EIO. */
QC_MUST_CHECK int proto_rpc_server_reply(proto_rpc_server_t *srv, const proto_rpc_request_t *req,
                                         int code, const char *message, const uint8_t *body,
                                         size_t body_len);

/* Replies QC_ENOTLEADER to req, naming leader: the client endpoint ("tcp://host:port") of
 * the shard's leader as the clients are configured with it, or NULL / "" when this replica
 * knows none. The client resends the request there (proto_rpc_client.h), so reply this only
 * when nothing was changed. Returns as proto_rpc_server_reply(). */
QC_MUST_CHECK int proto_rpc_server_reply_not_leader(proto_rpc_server_t *srv,
                                                    const proto_rpc_request_t *req,
                                                    const char *leader);

void proto_rpc_request_destroy(proto_rpc_request_t **req_p);

/* Stops the ZAP handler, closes the socket, frees srv, nulls *srv_p; accepts NULL. */
void proto_rpc_server_destroy(proto_rpc_server_t **srv_p);

#endif
