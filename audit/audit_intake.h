/* audit_intake.h - the "append" RPCs: security events from gateways and signers into the log.
 *
 * Method "append", body qcaudit.AppendRequest (proto/audit.proto), reply AppendReply
 * {seq, duplicate}; method "append_batch", body AppendBatchRequest (1..
 * AUDIT_INTAKE_FRAME_EVENTS_MAX events, each handled as its own "append" would be, in order),
 * reply AppendBatchReply with one result per event. Callers are the CURVE keys of the
 * allow-list. Requests that arrive together (up to batch_max of them) are group-committed
 * (one write transaction, one fsync, at most AUDIT_STORE_BATCH_MAX events) and answered only
 * after the commit. A refused event gets its own error code: QC_EDECODE (body
 * not a canonical AppendRequest), QC_EINVAL / QC_ETOOBIG (a field out of its limits),
 * QC_EDENIED (source "audit" or "ledger-*": those are audit's and the relay's own),
 * QC_EMETHOD (another method; the checks are audit_frame.h's); in a frame of "append_batch" such a
 * refusal is that event's result and the others are appended, and a frame that is not a canonical
 * AppendBatchRequest, holds no event (QC_EMISSING) or too many (QC_ETOOBIG) is refused whole. A
 * failed commit answers every request holding one of its events with its code (QC_EFULL, QC_EIO),
 * and the caller resends (the same source_seqs: deduplicated).
 *
 * The read methods of audit_proof.h ("tree_head", "prove", "consistency") are served by the
 * same socket to the same callers (a gateway forwards its devices' requests), answered after
 * the batch they arrive with is committed.
 *
 * Fault point "audit.append_after_commit_before_reply": SIGKILL between commit and replies. */
#ifndef AUDIT_INTAKE_H
#define AUDIT_INTAKE_H

#include <stdint.h>

#include "audit_frame.h"
#include "audit_store.h"
#include "proto_rpc.h"
#include "qc_error.h"

#define AUDIT_INTAKE_METHOD "append"
#define AUDIT_INTAKE_BATCH_METHOD "append_batch"
#define AUDIT_INTAKE_FRAME_EVENTS_MAX AUDIT_FRAME_EVENTS_MAX

typedef struct audit_intake audit_intake_t;

typedef struct audit_intake_config {
    void *zctx;                        /* not owned */
    audit_store_t *store;              /* not owned */
    const char *listen;                /* endpoint to bind */
    const proto_curve_keypair_t *keys; /* audit's key pair */
    const char *allow_path;            /* file of caller public keys (Z85, one per line) */
    uint32_t batch_max;                /* requests per commit, 1..AUDIT_STORE_BATCH_MAX */
    uint32_t poll_ms;                  /* longest wait before looking at the stop flag */
} audit_intake_config_t;

/* Binds the server. Returns 0 and sets *out, QC_ECONFIG, QC_EIO (bind) or QC_ENOMEM. */
QC_MUST_CHECK int audit_intake_new(const audit_intake_config_t *cfg, audit_intake_t **out);

/* Serves until ops_signal_stop_requested(). Returns 0, or QC_EIO when the socket fails. */
QC_MUST_CHECK int audit_intake_run(audit_intake_t *in);

/* Closes the server, frees in, nulls *in_p; accepts NULL. */
void audit_intake_destroy(audit_intake_t **in_p);

#endif
