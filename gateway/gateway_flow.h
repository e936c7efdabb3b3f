/* gateway_flow.h - the gateway's event loop: device calls in, ledger calls out.
 *
 * The gateway holds nothing durable and no signing power: it never talks to the signer. A
 * device's "load" is verified and reserved on the ledger shard of its account, which debits,
 * commits, has the bank sign the allow and stores it; the device gets the allow the ledger
 * stored (on a retry, the very same bytes). A "report" (or "sync") is verified and settled on
 * the ledger, whose reply carries the LoadOutcome the bank signed after the settlement. One
 * thread drives every call at once through a table of operations in flight, so one slow shard
 * stalls only the devices waiting on it. */
#ifndef GATEWAY_FLOW_H
#define GATEWAY_FLOW_H

#include <stdbool.h>
#include <stdint.h>

#include "proto_rpc.h"
#include "qc_error.h"

/* Device calls in flight in one gateway. It is also the admission limit: every call in flight
 * may be queued at a ledger shard, and a queue longer than the per-attempt
 * timeout of those calls (rpc_timeout_ms / 4) makes the gateway resend calls the shard is
 * still working on. At 4096, an open-loop overload of 1.1x the peak grew the ledger's queue
 * past that timeout: it received 2.6 requests per call and completed loads fell from ~1000/s
 * to ~600/s (tests/bench/run). At 512 the excess is refused at once with QC_EBUSY and the
 * completed rate holds. */
#define GATEWAY_OPS_MAX 512
/* Calls kept for reports (and syncs) when the table fills: a report finishes a load whose
 * money is already held, so new loads are refused busy first. */
#define GATEWAY_OPS_REPORT_RESERVE 64
#define GATEWAY_SHARDS_MAX 64   /* ledger shards one gateway routes to */
#define GATEWAY_POLL_MAX_MS 200 /* longest sleep of the loop, to notice signals */

typedef struct gateway_config {
    const char *listen;                /* device endpoint */
    const proto_curve_keypair_t *keys; /* the gateway's CURVE key pair (server and client) */
    const char *ledger;     /* shard endpoints: shards separated by ';', instances by ',' */
    const char *ledger_key; /* the ledger's CURVE public key */
    const char *ca_path;    /* device CA bundle (PEM) */
    const char *crl_path;   /* device CRL (PEM), NULL for none; re-read when it changes */
    bool crl_stale_ok;      /* use a CRL past its nextUpdate (default: refuse, QC_ECRLSTALE) */
    int64_t rpc_timeout_ms; /* budget of one downstream call, retries included */
    const char *audit;      /* audit endpoints for security events, NULL = log only */
    const char *audit_key;  /* audit's CURVE public key */
    const char *source;     /* this gateway's name in the audit log ("gateway-0") */
    /* Device connections served at once (gateway_conns.h); 0 = GATEWAY_CONNECTIONS_DEFAULT.
     * Calls on connections over it are answered QC_EBUSY and the connections closed. */
    int64_t max_connections;
} gateway_config_t;

typedef struct gateway gateway_t;

/* Creates the gateway in zmq context ctx (not owned): loads the trust store, binds the device
 * port, connects to every ledger shard. Returns 0, QC_ECONFIG, QC_EIO,
 * QC_ECERT or QC_ENOMEM. */
QC_MUST_CHECK int gateway_new(void *ctx, const gateway_config_t *cfg, gateway_t **out);

/* Runs the loop until ops_signal_stop_requested(). Calls still in flight when it stops are
 * dropped: every one of them is safe to retry by the device. Returns 0 or QC_EIO. */
QC_MUST_CHECK int gateway_run(gateway_t *gw);

/* Device calls in flight. */
int gateway_inflight(const gateway_t *gw);

/* False, with why, while the gateway's audit events are shed or wait in a full queue
 * (proto_audit_healthy()). Callable from the HTTP thread. */
bool gateway_healthy(const gateway_t *gw, char *why, size_t why_cap);

void gateway_destroy(gateway_t **gw_p);

#endif
