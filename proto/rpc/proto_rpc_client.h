/* proto_rpc_client.h - the client side of proto_rpc (see proto_rpc.h): one DEALER per
 * endpoint of a service, request ids, deadlines, retries and failover.
 *
 * Clients: request ids, a per-call deadline, bounded retries of idempotent calls with a
 * fresh socket per retry (the zguide's Lazy Pirate), and failover across the endpoints of
 * the service. The endpoint list is re-read on SIGHUP (see ops_signal.h) so an operator
 * can add or remove an instance without restarting callers.
 *
 * Implementation notes (proto_rpc_client.c), part of the contract:
 *  - Metrics (ops_metrics counters, label service="<service>"):
 *    qc_rpc_client_late_replies_total, qc_rpc_client_retries_total,
 *    qc_rpc_client_timeouts_total, qc_rpc_client_sockets_recreated_total,
 *    qc_rpc_client_leader_redirects_total, qc_rpc_client_election_waits_total.
 *  - Log events: rpc.endpoint_added/removed/silent, rpc.endpoints_reload_failed,
 *    rpc.connect_failed, rpc.reply_malformed, rpc.leader_redirect.
 *  - Replicated services (a ledger shard's replicas are its endpoints): a reply with code
 *    QC_ENOTLEADER is not handed to the caller while the call has hops left. The same
 *    request (same id) is resent, idempotent or not (the follower changed nothing), to
 *    RpcReply.leader when that string equals one of the configured endpoints, else to the
 *    next endpoint in the list (a named leader whose connection is not up yet is waited
 *    for, up to half the call's attempt time, before the others are offered the call); at
 *    most (number of endpoints) such hops per call, all within
 *    the call's timeout, in call() and in the asynchronous path alike. A call out of hops
 *    ends with the last QC_ENOTLEADER reply. The leader found (named, or the endpoint that
 *    answered after a hop) is where every later call starts, until it answers QC_ENOTLEADER
 *    itself or is removed; a client that never saw a redirect keeps its round-robin.
 *  - QC_ENOQUORUM (a replica that knows no leader) is followed like a QC_ENOTLEADER naming
 *    none: to the next endpoint, within the same hops.
 *  - Elections: a refusal (QC_ENOQUORUM or QC_ENOTLEADER) that comes once the call has used
 *    its hops is not handed to the caller while the call's budget lasts.
 *    Nothing was changed, so the same request is offered again, idempotent or not, after a
 *    backoff (25 ms, doubling up to 200 ms), starting at the next endpoint, its hops renewed.
 *    A call whose budget cannot cover another backoff and attempt ends with the refusal
 *    (QC_ENOQUORUM or QC_ENOTLEADER); a call that was resent and got no reply by its deadline
 *    ends with QC_ETIMEOUT, as any call does. So a load started during an election completes
 *    once a new leader serves, if its budget covers the election.
 *  - Service names: letters, digits, '_', '-', '.', at most 64 (else QC_ECONFIG).
 *  - Lazy Pirate exception: when the endpoint of a timed-out attempt has answered anything
 *    since that attempt was sent, it is alive, so its socket (and the other calls on it) is
 *    kept and only the call moves on; a silent endpoint's socket is recreated.
 *  - A socket that has had no live connection for 1 s while calls wanted it is reopened
 *    (libzmq never retries a handshake that ZAP refused), so a client whose key is added to
 *    a server's allow-list later gets in without being restarted.
 *
 * A client is not thread-safe: one thread owns it. */
#ifndef PROTO_RPC_CLIENT_H
#define PROTO_RPC_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto_curve.h"
#include "proto_decode.h"
#include "qc_error.h"

#define PROTO_RPC_ENDPOINTS_MAX 16  /* instances of one service a client knows */
#define PROTO_RPC_RETRIES_MAX 3     /* resends of an idempotent call */
#define PROTO_RPC_INFLIGHT_MAX 4096 /* outstanding calls of one client */

typedef struct proto_rpc_client proto_rpc_client_t;

typedef struct proto_rpc_client_config {
    const char *service; /* name of the service called, for logs and metrics */
    /* Endpoints: either a comma-separated list, or a file with one endpoint per line that
     * is re-read on SIGHUP. Exactly one of the two is set. */
    const char *endpoints;
    const char *endpoints_path;
    const char *server_public_z85;     /* the service's CURVE public key */
    const proto_curve_keypair_t *keys; /* this client's key pair */
    /* Instances that are not interchangeable (audit witnesses keep different logs, so a
     * device's proofs must come from one): every call starts at the first endpoint whose
     * connection takes it, instead of round-robin; retries still move on. */
    bool in_order;
} proto_rpc_client_config_t;

/* A reply, owned by the caller; free with proto_rpc_reply_destroy(). */
typedef struct proto_rpc_reply {
    uint64_t request_id;
    int code;      /* 0 or a QC_E* code sent by the server */
    char *message; /* never NULL */
    uint8_t *body; /* may be NULL when body_len is 0 */
    size_t body_len;
    uint64_t server_time_ms;               /* RpcReply.server_time_ms: set on refusals, else 0 */
    int load_state;                        /* RpcReply.load_state (Quancun__LoadState), 0 = none */
    char leader[PROTO_RPC_LEADER_MAX + 1]; /* RpcReply.leader, "" = none */
} proto_rpc_reply_t;

void proto_rpc_reply_destroy(proto_rpc_reply_t **reply_p);

#define PROTO_RPC_IDEMPOTENT 0x1 /* may be resent, to the same or another endpoint */

/* Creates a client in zmq context ctx (not owned) and connects to every endpoint.
 * Returns 0, QC_ECONFIG or QC_ENOMEM. */
QC_MUST_CHECK int proto_rpc_client_new(void *ctx, const proto_rpc_client_config_t *cfg,
                                       proto_rpc_client_t **out);

/* Calls method with body and waits for the reply, for at most timeout_ms in all. An
 * idempotent call is resent on a fresh socket to the next endpoint when an attempt gets
 * no answer within timeout_ms / (PROTO_RPC_RETRIES_MAX + 1), at most PROTO_RPC_RETRIES_MAX
 * times; any call follows QC_ENOTLEADER redirects as described above.
 * Returns 0 with *out set when a reply arrived (its code may still be an error),
 * QC_ETIMEOUT when none did, QC_EUNAVAIL when no endpoint is configured. */
QC_MUST_CHECK int proto_rpc_client_call(proto_rpc_client_t *cli, const char *method,
                                        const uint8_t *body, size_t body_len, int timeout_ms,
                                        int flags, proto_rpc_reply_t **out);
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
QC_MUST_CHECK int proto_rpc_client_send(proto_rpc_client_t *cli, const char *method,
                                        const uint8_t *body, size_t body_len, int timeout_ms,
                                        int flags, void *tag, uint64_t *request_id);

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
