/* gateway_audit.h - the gateway's security events, delivered to the audit service at least once.
 *
 * The gateway keeps nothing on disk, so its events wait in a bounded queue in memory and are
 * resent with the same (source, source_seq) until audit acknowledges them; audit deduplicates.
 * source_seq = (Unix ms at start << GATEWAY_AUDIT_SEQ_SHIFT) + a counter, so a restarted
 * gateway never reuses a sequence. Events still queued when the gateway dies are lost: they
 * are also in its log, and the ledger records every change to money on its own. */
#ifndef GATEWAY_AUDIT_H
#define GATEWAY_AUDIT_H

#include <stddef.h>
#include <stdint.h>

#include "proto_rpc.h"

#define GATEWAY_AUDIT_QUEUE_MAX 1024  /* events waiting for audit; beyond it new ones drop */
#define GATEWAY_AUDIT_INFLIGHT_MAX 64 /* appends sent and not yet answered */
#define GATEWAY_AUDIT_TIMEOUT_MS 3000 /* budget of one append, retries included */
#define GATEWAY_AUDIT_SEQ_SHIFT 20    /* events one gateway may raise per ms of uptime */

typedef struct gateway_audit gateway_audit_t;

/* Creates the queue for source (e.g. "gateway-0"). With endpoints NULL events are only
 * logged and counted. Returns 0, QC_ECONFIG or QC_ENOMEM. */
int gateway_audit_new(void *ctx, const char *source, const char *endpoints, const char *audit_key,
                      const proto_curve_keypair_t *keys, gateway_audit_t **out);

/* Queues one event: type ("security.bad_report"), the txn it concerns (16 bytes or NULL) and
 * the exact bytes received. Never blocks, never fails: when the queue is full the event is
 * dropped, logged and counted in qc_gateway_audit_dropped_total. */
void gateway_audit_event(gateway_audit_t *ga, const char *type, const uint8_t *txn_id,
                         const uint8_t *payload, size_t payload_len);

/* The RPC client, for the caller's poll loop; NULL when audit is not configured. */
proto_rpc_client_t *gateway_audit_client(gateway_audit_t *ga);

/* Sends queued events, handles replies and timeouts. Call every loop turn. */
void gateway_audit_process(gateway_audit_t *ga);

void gateway_audit_destroy(gateway_audit_t **ga_p);

#endif
