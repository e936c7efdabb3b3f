/* fuzz_audit_frame.c - libFuzzer target over the bodies qc-audit's intake takes from gateways
 * and signers (audit/audit_frame.h): audit_frame_decode_batch() ("append_batch": the frame's
 * own verdict) then audit_frame_check() on each event (its verdict), and the same bytes as
 * one "append" body (audit_frame_decode_one()). The store and the socket are not involved:
 * the intake hands the events that pass to audit_store_append() unchanged.
 *
 * Properties, beyond "no crash, no leak, no undefined behaviour":
 * - the frame: a frame accepted holds 1..AUDIT_FRAME_EVENTS_MAX events and re-packs to its
 *   own length; a refusal is QC_EDECODE, QC_EMISSING or QC_ETOOBIG, and leaves nothing;
 * - each event's verdict is one of the documented codes; an event accepted has a visible
 *   source that is not reserved, a visible type, source_seq >= 1, fields within their limits,
 *   and the event handed on borrows exactly its fields;
 * - an event of a frame gets the verdict it would get sent alone: packed alone it decodes as
 *   an "append" body and checks the same, to the same event. */
#include <stdlib.h>
#include <string.h>

#include "audit_frame.h"
#include "fuzz_common.h"
#include "proto_decode.h"

/* The verdict of event m, with its properties checked; ev is filled when it is 0. */
static int check_event(const Qcaudit__AppendRequest *m, audit_event_t *ev)
{
    int rc = audit_frame_check(m, ev);
    FUZZ_CHECK(rc == 0 || rc == QC_EMISSING || rc == QC_EDENIED || rc == QC_ETOOBIG ||
               rc == QC_EINVAL);
    if (rc != 0)
        return rc;
    FUZZ_CHECK(ev->source == m->source && ev->type == m->type);
    FUZZ_CHECK(ev->source_seq == m->source_seq && ev->source_seq >= 1);
    FUZZ_CHECK(ev->time_ms == m->time_ms);
    FUZZ_CHECK(ev->txn_id == m->txn_id.data && ev->txn_id_len == m->txn_id.len);
    FUZZ_CHECK(ev->payload == m->payload.data && ev->payload_len == m->payload.len);
    size_t sl = strlen(ev->source), tl = strlen(ev->type);
    FUZZ_CHECK(sl >= 1 && sl <= AUDIT_SOURCE_MAX && tl >= 1 && tl <= AUDIT_TYPE_MAX);
    for (size_t i = 0; i < sl; i++)
        FUZZ_CHECK(ev->source[i] > 0x20 && ev->source[i] < 0x7f);
    for (size_t i = 0; i < tl; i++)
        FUZZ_CHECK(ev->type[i] > 0x20 && ev->type[i] < 0x7f);
    FUZZ_CHECK(strcmp(ev->source, AUDIT_SOURCE_SELF) != 0);
    FUZZ_CHECK(strncmp(ev->source, AUDIT_SOURCE_RELAY_PREFIX, strlen(AUDIT_SOURCE_RELAY_PREFIX)) !=
               0);
    FUZZ_CHECK(ev->txn_id_len == 0 || ev->txn_id_len == PROTO_TXN_ID_SIZE);
    FUZZ_CHECK(ev->payload_len <= AUDIT_PAYLOAD_MAX);
    return 0;
}

/* Event m of a frame, sent alone as an "append": the same verdict, the same event. */
static void check_alone(const Qcaudit__AppendRequest *m, int rc, const audit_event_t *ev)
{
    uint8_t *bytes = NULL;
    size_t len = 0;
    FUZZ_CHECK(proto_pack(&m->base, &bytes, &len) == 0);
    Qcaudit__AppendRequest *one = NULL;
    FUZZ_CHECK(audit_frame_decode_one(bytes, len, &one) == 0 && one != NULL);
    audit_event_t ev1;
    FUZZ_CHECK(check_event(one, &ev1) == rc);
    if (rc == 0) {
        FUZZ_CHECK(strcmp(ev1.source, ev->source) == 0 && strcmp(ev1.type, ev->type) == 0);
        FUZZ_CHECK(ev1.source_seq == ev->source_seq && ev1.time_ms == ev->time_ms);
        FUZZ_CHECK(ev1.txn_id_len == ev->txn_id_len && ev1.payload_len == ev->payload_len);
        FUZZ_CHECK(ev->txn_id_len == 0 || memcmp(ev1.txn_id, ev->txn_id, ev->txn_id_len) == 0);
        FUZZ_CHECK(ev->payload_len == 0 || memcmp(ev1.payload, ev->payload, ev->payload_len) == 0);
    }
    qcaudit__append_request__free_unpacked(one, NULL);
    free(bytes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Qcaudit__AppendBatchRequest *b = NULL;
    int rc = audit_frame_decode_batch(data, size, &b);
    FUZZ_CHECK(rc == 0 || rc == QC_EDECODE || rc == QC_EMISSING || rc == QC_ETOOBIG);
    FUZZ_CHECK((rc == 0) == (b != NULL));
    if (b != NULL) {
        FUZZ_CHECK(b->n_events >= 1 && b->n_events <= AUDIT_FRAME_EVENTS_MAX);
        FUZZ_CHECK(qcaudit__append_batch_request__get_packed_size(b) == size);
        for (size_t k = 0; k < b->n_events; k++) {
            audit_event_t ev;
            int vk = check_event(b->events[k], &ev);
            check_alone(b->events[k], vk, &ev);
        }
        qcaudit__append_batch_request__free_unpacked(b, NULL);
    }

    Qcaudit__AppendRequest *m = NULL;
    rc = audit_frame_decode_one(data, size, &m);
    FUZZ_CHECK((rc == 0) == (m != NULL) && (rc == 0 || rc == QC_EDECODE));
    if (m != NULL) {
        FUZZ_CHECK(qcaudit__append_request__get_packed_size(m) == size);
        audit_event_t ev;
        (void)check_event(m, &ev);
        qcaudit__append_request__free_unpacked(m, NULL);
    }
    return 0;
}
