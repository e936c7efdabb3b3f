/* proto_audit.h - events of a service without storage (gateway, signer), delivered to every
 * audit witness at least once.
 *
 * The audit log is kept by independent witnesses (docs/DESIGN.md section 4), each with its
 * own log: endpoints lists them separated by ';' (the endpoints of one witness, its
 * fail-over instances, by ','), and every event goes to each of them, through a queue and
 * resends of its own, so a witness that is down or slow neither stops nor drops what the
 * others get. One witness (no ';') is the sender as before witnesses.
 *
 * Such a service keeps nothing on disk, so its events wait in a bounded queue in memory and
 * are resent with the same (source, source_seq) until audit acknowledges them; audit
 * deduplicates. source_seq = (Unix ms at start << PROTO_AUDIT_SEQ_SHIFT) + a counter, so a
 * restarted process never reuses a sequence. Events still queued when the process dies are
 * lost: they are also in its log, and the ledger records every change to money on its own.
 * Events travel in frames of several ("append_batch", proto/audit.proto): all that wait for a
 * witness, up to PROTO_AUDIT_BATCH_MAX a frame, one frame in flight to it at a time; what is
 * raised while it is in flight (audit's commit and fsync) leaves in the next frame, so a busy
 * sender sends few frames and an idle one sends at once, with no timer. One frame at a time
 * also keeps order: a witness's log holds one sender's events in the order raised, across
 * timeouts and restarts of the witness too (a frame not answered is resent before anything
 * raised after it). A witness that does not know "append_batch" gets one "append" per event,
 * up to PROTO_AUDIT_INFLIGHT_MAX in flight, in no guaranteed order across resends.
 * One thread owns a proto_audit_t. */
#ifndef PROTO_AUDIT_H
#define PROTO_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto_rpc_client.h"
#include "qc_error.h"

#define PROTO_AUDIT_QUEUE_MAX 1024  /* events waiting for a witness; beyond it new ones drop */
#define PROTO_AUDIT_WITNESSES_MAX 8 /* audit witnesses each event goes to */
#define PROTO_AUDIT_POLLITEMS_MAX (PROTO_AUDIT_WITNESSES_MAX * PROTO_RPC_ENDPOINTS_MAX)
#define PROTO_AUDIT_INFLIGHT_MAX 64          /* frames sent and not yet answered (one by one) */
#define PROTO_AUDIT_FRAMES_INFLIGHT 1        /* append_batch frames in flight per witness */
#define PROTO_AUDIT_BATCH_MAX 128            /* events in one append_batch frame */
#define PROTO_AUDIT_BATCH_BYTES (128 * 1024) /* payload bytes of a frame (but its first event) */
#define PROTO_AUDIT_TIMEOUT_MS 3000          /* budget of one append, retries included */
#define PROTO_AUDIT_SEQ_SHIFT 20             /* events one process may raise per ms of uptime */
#define PROTO_AUDIT_SHED_HEALTH_MS 60000     /* health stays degraded this long after a drop */

typedef struct proto_audit proto_audit_t;

/* Creates the queues for source (e.g. "gateway-0", "signer-1"): one per witness of endpoints
 * (';' between witnesses, ',' between the instances of one). With endpoints NULL events are
 * only logged and counted. Returns 0, QC_ECONFIG (an empty witness, more than
 * PROTO_AUDIT_WITNESSES_MAX) or QC_ENOMEM. */
QC_MUST_CHECK int proto_audit_new(void *ctx, const char *source, const char *endpoints,
                                  const char *audit_key, const proto_curve_keypair_t *keys,
                                  proto_audit_t **out);

/* Queues one event for every witness: type ("security.bad_report"), the txn it concerns (16
 * bytes or NULL) and the exact bytes received; the same source_seq everywhere. Never blocks,
 * never fails: where a witness's queue is full the event is shed for that witness, loudly:
 * counted in qc_audit_events_dropped_total, logged (rate-limited, with a count of the lines
 * held back) as audit.event_dropped, and proto_audit_healthy() is false for
 * PROTO_AUDIT_SHED_HEALTH_MS. A caller that must not act without its evidence (the signer: it
 * must not sign what it cannot record) asks proto_audit_room() first and refuses the work
 * (back-pressure, docs/DESIGN.md section 4). */
void proto_audit_event(proto_audit_t *ga, const char *type, const uint8_t *txn_id,
                       const uint8_t *payload, size_t payload_len);

/* For the caller's poll loop: fills items (zmq_pollitem_t, capacity cap) with every
 * witness's sockets and returns how many (refill before every poll); and the longest the
 * caller may wait before calling proto_audit_process() (-1: no limit). */
int proto_audit_pollitems(proto_audit_t *ga, void *items, int cap);
int proto_audit_next_timeout_ms(const proto_audit_t *ga);

/* Events that can still be queued for at least one witness without shedding: the most room
 * of any witness's queue (SIZE_MAX when audit is not configured: events are then only
 * logged). A witness that is down does not stop the work the others can record. */
size_t proto_audit_room(const proto_audit_t *ga);

/* False, with a sentence in why, while no witness's queue has room or for
 * PROTO_AUDIT_SHED_HEALTH_MS after an event was shed for some witness. Reads only atomics:
 * callable from the HTTP thread. */
bool proto_audit_healthy(const proto_audit_t *ga, char *why, size_t why_cap);

/* Sends queued events, handles replies and timeouts. Call every loop turn. */
void proto_audit_process(proto_audit_t *ga);

void proto_audit_destroy(proto_audit_t **ga_p);

#endif
