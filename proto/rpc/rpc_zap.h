/* rpc_zap.h - the ZAP handler (RFC 27) that admits CURVE clients to the servers of one zmq
 * context. Used by proto_rpc_server.c and by the ledger's replica links
 * (ledger/ledger_raftnet.c), whose transport runs a zmq context of its own.
 *
 * libzmq looks for exactly one handler per context, at inproc://zeromq.zap.01, so one handler
 * thread serves every server of a context. It finds the server by the ZAP domain, which each
 * server socket sets to a name unique in its context: the service name, or "service#2",
 * "#3"... when two servers of the same service share a context. The handler admits a key
 * that is in the domain's allow-list (or any key when allow_any), answers 200 with the key in
 * Z85 as User-Id, and refuses anything else with 400, logged (rpc.refused, with the peer
 * address and key) and counted (qc_rpc_refused_total of the service, or service="unknown"
 * for an unknown domain).
 *
 * Fail-closed: the handler's socket is bound in the caller's thread and the handler must
 * answer a self-check before rpc_zap_attach() returns; another component that already bound
 * inproc://zeromq.zap.01 in the same context makes it fail (QC_EIO) rather than let a
 * server run without our allow-list. The handler lives until the last domain is detached. */
#ifndef RPC_ZAP_H
#define RPC_ZAP_H

#include <stdbool.h>

#include "ops_metrics.h"
#include "proto_curve.h"
#include "rpc_common.h"
#include "qc_error.h"

typedef struct rpc_zap rpc_zap_t;

/* What the ZAP handler knows about one server: its domain and its allow-list. The server
 * owns it; between attach and detach the handler reads it under the handler's lock, so the
 * allow-list changes only through rpc_zap_swap_allow(). */
typedef struct rpc_zap_domain {
    char name[PROTO_RPC_SERVICE_MAX + 16]; /* set by rpc_zap_attach() */
    char service[PROTO_RPC_SERVICE_MAX + 1];
    bool allow_any;
    proto_curve_keylist_t allow;
    ops_counter_t *refused;
    struct rpc_zap_domain *next;
} rpc_zap_domain_t;

/* Finds or starts the handler of ctx and adds d to it under a domain name unique in ctx
 * (written to d->name). Returns 0 and sets *out, QC_EIO (the handler could not bind or did
 * not answer its self-check; logged) or QC_ENOMEM. */
QC_MUST_CHECK int rpc_zap_attach(void *ctx, rpc_zap_domain_t *d, rpc_zap_t **out);

/* Removes d; the last domain of a context stops its handler thread. Every socket that
 * relies on the handler must be closed first. */
void rpc_zap_detach(rpc_zap_t *zap, rpc_zap_domain_t *d);

/* Replaces d's allow-list by *fresh under the handler's lock; *fresh receives the old list,
 * for the caller to clear. */
void rpc_zap_swap_allow(rpc_zap_t *zap, rpc_zap_domain_t *d, proto_curve_keylist_t *fresh);

#endif
