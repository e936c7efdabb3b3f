/* proto_audit.h - events of a service without storage (gateway, signer), delivered to the
 * audit service at least once.
 *
 * Such a service keeps nothing on disk, so its events wait in a bounded queue in memory and
 * are resent with the same (source, source_seq) until audit acknowledges them; audit
 * deduplicates. source_seq = (Unix ms at start << PROTO_AUDIT_SEQ_SHIFT) + a counter, so a
 * restarted process never reuses a sequence. Events still queued when the process dies are
 * lost: they are also in its log, and the ledger records every change to money on its own.
 * One thread owns a proto_audit_t. */
#ifndef PROTO_AUDIT_H
#define PROTO_AUDIT_H

#include <stddef.h>
#include <stdint.h>

#include "proto_rpc_client.h"
#include "qc_error.h"

#define PROTO_AUDIT_QUEUE_MAX 1024  /* events waiting for audit; beyond it new ones drop */
#define PROTO_AUDIT_INFLIGHT_MAX 64 /* appends sent and not yet answered */
#define PROTO_AUDIT_TIMEOUT_MS 3000 /* budget of one append, retries included */
#define PROTO_AUDIT_SEQ_SHIFT 20    /* events one process may raise per ms of uptime */

typedef struct proto_audit proto_audit_t;

/* Creates the queue for source (e.g. "gateway-0", "signer-1"). With endpoints NULL events are only
 * logged and counted. Returns 0, QC_ECONFIG or QC_ENOMEM. */
QC_MUST_CHECK int proto_audit_new(void *ctx, const char *source, const char *endpoints,
                                  const char *audit_key, const proto_curve_keypair_t *keys,
                                  proto_audit_t **out);

/* Queues one event: type ("security.bad_report"), the txn it concerns (16 bytes or NULL) and
 * the exact bytes received. Never blocks, never fails: when the queue is full the event is
 * dropped, logged and counted in qc_audit_client_dropped_total. */
void proto_audit_event(proto_audit_t *ga, const char *type, const uint8_t *txn_id,
                       const uint8_t *payload, size_t payload_len);

/* The RPC client, for the caller's poll loop; NULL when audit is not configured. */
proto_rpc_client_t *proto_audit_client(proto_audit_t *ga);

/* Sends queued events, handles replies and timeouts. Call every loop turn. */
void proto_audit_process(proto_audit_t *ga);

void proto_audit_destroy(proto_audit_t **ga_p);

#endif
