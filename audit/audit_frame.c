/* audit_frame.c - "append" and "append_batch" bodies: decode, then check each event. */
#include "audit_frame.h"

#include <string.h>

#include "proto_id.h"
#include "proto_limits.h"

int audit_frame_decode_one(const uint8_t *body, size_t len, Qcaudit__AppendRequest **out)
{
    *out = NULL;
    Qcaudit__AppendRequest *m = qcaudit__append_request__unpack(NULL, len, body);
    if (m == NULL)
        return QC_EDECODE;
    /* Canonical input only: a NUL inside a string would be cut short by protobuf-c. */
    if (qcaudit__append_request__get_packed_size(m) != len) {
        qcaudit__append_request__free_unpacked(m, NULL);
        return QC_EDECODE;
    }
    *out = m;
    return 0;
}

int audit_frame_decode_batch(const uint8_t *body, size_t len, Qcaudit__AppendBatchRequest **out)
{
    *out = NULL;
    Qcaudit__AppendBatchRequest *b = qcaudit__append_batch_request__unpack(NULL, len, body);
    if (b == NULL)
        return QC_EDECODE;
    int rc = 0;
    if (qcaudit__append_batch_request__get_packed_size(b) != len)
        rc = QC_EDECODE;
    else if (b->n_events == 0)
        rc = QC_EMISSING;
    else if (b->n_events > AUDIT_FRAME_EVENTS_MAX)
        rc = QC_ETOOBIG;
    if (rc != 0) {
        qcaudit__append_batch_request__free_unpacked(b, NULL);
        return rc;
    }
    *out = b;
    return 0;
}

int audit_frame_check(const Qcaudit__AppendRequest *m, audit_event_t *ev)
{
    if (m->source == NULL || m->type == NULL || m->source[0] == '\0' || m->type[0] == '\0' ||
        m->source_seq == 0)
        return QC_EMISSING;
    if (strcmp(m->source, AUDIT_SOURCE_SELF) == 0 ||
        strncmp(m->source, AUDIT_SOURCE_RELAY_PREFIX, strlen(AUDIT_SOURCE_RELAY_PREFIX)) == 0)
        return QC_EDENIED;
    size_t sl = strlen(m->source), tl = strlen(m->type);
    if (sl > AUDIT_SOURCE_MAX || tl > AUDIT_TYPE_MAX || m->txn_id.len > AUDIT_TXN_ID_MAX ||
        m->payload.len > AUDIT_PAYLOAD_MAX)
        return QC_ETOOBIG;
    if (proto_id_check_len(m->source, sl, AUDIT_SOURCE_MAX, PROTO_ID_VISIBLE) != 0 ||
        proto_id_check_len(m->type, tl, AUDIT_TYPE_MAX, PROTO_ID_VISIBLE) != 0 ||
        (m->txn_id.len != 0 && m->txn_id.len != PROTO_TXN_ID_SIZE))
        return QC_EINVAL;
    *ev = (audit_event_t){
        .source = m->source,
        .source_seq = m->source_seq,
        .type = m->type,
        .txn_id = m->txn_id.data,
        .txn_id_len = m->txn_id.len,
        .payload = m->payload.data,
        .payload_len = m->payload.len,
        .time_ms = m->time_ms,
    };
    return 0;
}
