/* audit_frame.h - the bodies of "append" and "append_batch" (audit_intake.h) decoded and
 * checked, without the store or the socket: untrusted bytes from gateways and signers in, the
 * frame's own verdict and one verdict per event out. No I/O, no state; qc-audit's intake and
 * the fuzz target tests/fuzz/fuzz_audit_frame.c call the same functions. */
#ifndef AUDIT_FRAME_H
#define AUDIT_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "audit.pb-c.h"
#include "audit_store.h"
#include "qc_error.h"

#define AUDIT_FRAME_EVENTS_MAX 256 /* events of one append_batch frame */

/* Decodes an "append" body. Returns 0 and sets *out (the caller frees it with
 * qcaudit__append_request__free_unpacked), or QC_EDECODE (not a canonical AppendRequest:
 * a NUL inside a string would be cut short by protobuf-c) with *out NULL. */
QC_MUST_CHECK int audit_frame_decode_one(const uint8_t *body, size_t len,
                                         Qcaudit__AppendRequest **out);

/* Decodes an "append_batch" body. Returns 0 and sets *out (freed with
 * qcaudit__append_batch_request__free_unpacked; 1..AUDIT_FRAME_EVENTS_MAX events), or why
 * the whole frame is refused, with *out NULL: QC_EDECODE (not a canonical
 * AppendBatchRequest), QC_EMISSING (no event), QC_ETOOBIG (too many). */
QC_MUST_CHECK int audit_frame_decode_batch(const uint8_t *body, size_t len,
                                           Qcaudit__AppendBatchRequest **out);

/* Checks one event's fields. Returns 0 and fills *ev (borrowing from m), or this event's
 * own refusal: QC_EMISSING (no source, type or source_seq), QC_EDENIED (source "audit" or
 * "ledger-*", audit's and the relay's own), QC_ETOOBIG (a field over its limit), QC_EINVAL
 * (a name outside visible ASCII, a txn_id neither empty nor PROTO_TXN_ID_SIZE bytes). */
QC_MUST_CHECK int audit_frame_check(const Qcaudit__AppendRequest *m, audit_event_t *ev);

#endif
