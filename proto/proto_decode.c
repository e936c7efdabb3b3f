/* proto_decode.c - size-limited, shape-checked decoding of untrusted protobuf messages.
 *
 * Every decoder runs the same order: size limit, protobuf unpack, then the presence and shape
 * of each field the protocol needs. An absent field (proto3's zero or empty) is QC_EMISSING,
 * except a zero or negative amount, which is QC_EAMOUNT; a present field of the wrong shape
 * (a 15-byte txn id, a currency over 999) is QC_EDECODE; a text field over its limit is
 * QC_ETOOBIG. The unpacked message is freed on every error path. */
#include "proto_decode.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "proto_cert.h"
#include "proto_envelope.h"
#include "proto_id.h"
#include "qc_error.h"

/* Checks a byte field of exactly size bytes. */
static int check_bytes(const ProtobufCBinaryData *b, size_t size)
{
    if (b->len == 0)
        return QC_EMISSING;
    return b->len == size ? 0 : QC_EDECODE;
}

/* Checks optional free text: at most max bytes. */
static int check_text(const char *s, size_t max)
{
    if (s == NULL)
        return 0;
    return strnlen(s, max + 1) > max ? QC_ETOOBIG : 0;
}

static int check_currency(uint32_t currency)
{
    if (currency == 0)
        return QC_EMISSING;
    return currency <= PROTO_CURRENCY_MAX ? 0 : QC_EDECODE;
}

/* A ProtobufCBuffer that compares what protobuf-c packs with the bytes received, instead of
 * storing it: the canonical check costs no allocation. */
typedef struct canon_buffer {
    ProtobufCBuffer base;
    const uint8_t *expect;
    size_t len;
    size_t at;
    int differs;
} canon_buffer_t;

static void canon_append(ProtobufCBuffer *buffer, size_t len, const uint8_t *data)
{
    canon_buffer_t *c = (canon_buffer_t *)buffer;
    assert(c->at <= c->len);
    if (c->differs || len > c->len - c->at || memcmp(c->expect + c->at, data, len) != 0) {
        c->differs = 1;
        return;
    }
    c->at += len;
}

int proto_decode_canonical(const ProtobufCMessage *msg, const uint8_t *bytes, size_t len)
{
    assert(msg != NULL);
    assert(bytes != NULL || len == 0);
    /* protobuf-c hands strings over NUL-terminated, so "dev\0ice" would read as "dev" while
     * the signature covers all of it; it also takes the last of a repeated field, any field
     * order and non-minimal varints. Packing the parsed message again and comparing it byte
     * for byte with what was received refuses all of these: one meaning per byte string is
     * what a signature over bytes needs. The size first, because it is cheap. */
    if (protobuf_c_message_get_packed_size(msg) != len)
        return QC_EDECODE;
    canon_buffer_t c = {.base = {canon_append}, .expect = bytes, .len = len, .at = 0, .differs = 0};
    size_t packed = protobuf_c_message_pack_to_buffer(msg, &c.base);
    if (c.differs || packed != len || c.at != len)
        return QC_EDECODE;
    return 0;
}

/* Runs the size limit and the unpack shared by every decoder. */
static int unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *bytes, size_t len,
                  size_t max, ProtobufCMessage **out)
{
    assert(desc != NULL);
    assert(out != NULL);
    *out = NULL;
    if (len > max)
        return QC_ETOOBIG;
    if (bytes == NULL && len > 0)
        return QC_EINVAL;
    ProtobufCMessage *msg = protobuf_c_message_unpack(desc, NULL, len, bytes);
    if (msg == NULL)
        return QC_EDECODE; /* protobuf-c does not tell malformed input from no memory */
    int rc = proto_decode_canonical(msg, bytes, len);
    if (rc != 0) {
        protobuf_c_message_free_unpacked(msg, NULL);
        return rc;
    }
    *out = msg;
    return 0;
}

/* Frees msg when rc is an error and returns rc: the tail of every decoder. */
static int finish(int rc, ProtobufCMessage *msg)
{
    if (rc != 0)
        protobuf_c_message_free_unpacked(msg, NULL);
    return rc;
}

#define CHECK(expr)                                                                                \
    do {                                                                                           \
        int check_rc_ = (expr);                                                                    \
        if (check_rc_ != 0)                                                                        \
            return check_rc_;                                                                      \
    } while (0)

static int check_load_request(const Quancun__LoadRequest *m)
{
    CHECK(check_bytes(&m->txn_id, PROTO_TXN_ID_SIZE));
    CHECK(proto_id_check(m->device_id, PROTO_DEVICE_ID_MAX, PROTO_ID_VISIBLE));
    CHECK(proto_id_check(m->account_id, PROTO_ACCOUNT_ID_MAX, PROTO_ID_VISIBLE));
    if (m->amount <= 0)
        return QC_EAMOUNT;
    CHECK(check_currency(m->currency));
    if (m->balance_before < 0)
        return QC_EAMOUNT;
    if (m->key_version < 1)
        return QC_EMISSING;
    if (m->alg == QUANCUN__ALG__ALG_NONE)
        return QC_EMISSING;
    if (m->alg != QUANCUN__ALG__ALG_ECDSA_P256_SHA256)
        return QC_EALG;
    CHECK(check_bytes(&m->nonce, PROTO_NONCE_SIZE));
    if (m->device_time_ms == 0)
        return QC_EMISSING;
    return 0; /* counter 0 is a device that has applied no load yet */
}

static int check_load_allow(const Quancun__LoadAllow *m)
{
    CHECK(check_bytes(&m->txn_id, PROTO_TXN_ID_SIZE));
    CHECK(proto_id_check(m->device_id, PROTO_DEVICE_ID_MAX, PROTO_ID_VISIBLE));
    CHECK(proto_id_check(m->account_id, PROTO_ACCOUNT_ID_MAX, PROTO_ID_VISIBLE));
    if (m->amount <= 0)
        return QC_EAMOUNT;
    CHECK(check_currency(m->currency));
    CHECK(check_bytes(&m->request_digest, PROTO_DIGEST_SIZE));
    if (m->host_time_ms == 0 || m->deadline_ms == 0)
        return QC_EMISSING;
    if (m->deadline_ms <= m->host_time_ms)
        return QC_EDECODE;
    return 0;
}

static int check_execution_report(const Quancun__ExecutionReport *m)
{
    CHECK(check_bytes(&m->txn_id, PROTO_TXN_ID_SIZE));
    CHECK(proto_id_check(m->device_id, PROTO_DEVICE_ID_MAX, PROTO_ID_VISIBLE));
    CHECK(proto_id_check(m->account_id, PROTO_ACCOUNT_ID_MAX, PROTO_ID_VISIBLE));
    if (m->status == QUANCUN__REPORT_STATUS__REPORT_NONE)
        return QC_EMISSING;
    if (m->status != QUANCUN__REPORT_STATUS__REPORT_APPLIED &&
        m->status != QUANCUN__REPORT_STATUS__REPORT_REJECTED)
        return QC_EDECODE;
    CHECK(check_bytes(&m->allow_digest, PROTO_DIGEST_SIZE));
    if (m->balance_after < 0)
        return QC_EAMOUNT;
    CHECK(check_text(m->reason, PROTO_REASON_MAX));
    return 0; /* counter_after is whatever the device says; the ledger judges it */
}

static int check_load_outcome(const Quancun__LoadOutcome *m)
{
    CHECK(check_bytes(&m->txn_id, PROTO_TXN_ID_SIZE));
    CHECK(proto_id_check(m->device_id, PROTO_DEVICE_ID_MAX, PROTO_ID_VISIBLE));
    if (m->state == QUANCUN__LOAD_STATE__LOAD_NONE)
        return QC_EMISSING;
    if (m->state != QUANCUN__LOAD_STATE__LOAD_RESERVED &&
        m->state != QUANCUN__LOAD_STATE__LOAD_CONFIRMED &&
        m->state != QUANCUN__LOAD_STATE__LOAD_COMPENSATED &&
        m->state != QUANCUN__LOAD_STATE__LOAD_LATE_CONFIRMED)
        return QC_EDECODE;
    if (m->amount <= 0)
        return QC_EAMOUNT;
    CHECK(check_currency(m->currency));
    CHECK(check_text(m->reason, PROTO_REASON_MAX));
    if (m->host_time_ms == 0)
        return QC_EMISSING;
    return 0;
}

static int check_audit_checkpoint(const Quancun__AuditCheckpoint *m)
{
    if (m->seq == 0)
        return QC_EMISSING;
    CHECK(check_bytes(&m->hash, PROTO_DIGEST_SIZE));
    if (m->time_ms == 0)
        return QC_EMISSING;
    /* The Merkle root is absent from checkpoints made before the tree existed. */
    if (m->root.len != 0 && m->root.len != PROTO_DIGEST_SIZE)
        return QC_EDECODE;
    return 0;
}

static int check_rpc(const Quancun__Rpc *m)
{
    if (m->request_id == 0)
        return QC_EMISSING;
    CHECK(proto_id_check(m->method, PROTO_METHOD_MAX, PROTO_ID_VISIBLE));
    if (m->timeout_ms > PROTO_RPC_TIMEOUT_MAX)
        return QC_EDECODE;
    return 0; /* an empty body is a call without arguments */
}

static int check_rpc_reply(const Quancun__RpcReply *m)
{
    if (m->request_id == 0)
        return QC_EMISSING;
    CHECK(check_text(m->message, PROTO_RPC_MESSAGE_MAX));
    CHECK(check_text(m->leader, PROTO_RPC_LEADER_MAX));
    if (protobuf_c_enum_descriptor_get_value(&quancun__load_state__descriptor,
                                             (int)m->load_state) == NULL)
        return QC_EDECODE;
    return 0;
}

/* Defines proto_decode_<name>(): unpack with the limit, run check_<name>, free on error. */
#define DEFINE_DECODER(name, type, desc, limit)                                                    \
    int proto_decode_##name(const uint8_t *bytes, size_t len, type **out)                          \
    {                                                                                              \
        assert(out != NULL);                                                                       \
        ProtobufCMessage *msg = NULL;                                                              \
        int rc = unpack(&(desc), bytes, len, (limit), &msg);                                       \
        if (rc != 0) {                                                                             \
            *out = NULL;                                                                           \
            return rc;                                                                             \
        }                                                                                          \
        rc = finish(check_##name((const type *)msg), msg);                                         \
        *out = rc == 0 ? (type *)msg : NULL;                                                       \
        return rc;                                                                                 \
    }

DEFINE_DECODER(load_request, Quancun__LoadRequest, quancun__load_request__descriptor,
               PROTO_BODY_MAX)
DEFINE_DECODER(load_allow, Quancun__LoadAllow, quancun__load_allow__descriptor, PROTO_BODY_MAX)
DEFINE_DECODER(execution_report, Quancun__ExecutionReport, quancun__execution_report__descriptor,
               PROTO_BODY_MAX)
DEFINE_DECODER(load_outcome, Quancun__LoadOutcome, quancun__load_outcome__descriptor,
               PROTO_BODY_MAX)
DEFINE_DECODER(audit_checkpoint, Quancun__AuditCheckpoint, quancun__audit_checkpoint__descriptor,
               PROTO_BODY_MAX)
DEFINE_DECODER(rpc, Quancun__Rpc, quancun__rpc__descriptor, PROTO_RPC_FRAME_MAX)
DEFINE_DECODER(rpc_reply, Quancun__RpcReply, quancun__rpc_reply__descriptor, PROTO_RPC_FRAME_MAX)

uint64_t proto_decode_rpc_request_id(const uint8_t *bytes, size_t len)
{
    assert(bytes != NULL || len == 0);
    if (len > PROTO_RPC_FRAME_MAX)
        return 0;
    Quancun__Rpc *m = quancun__rpc__unpack(NULL, len, bytes);
    if (m != NULL) {
        uint64_t id = m->request_id;
        quancun__rpc__free_unpacked(m, NULL);
        return id;
    }
    /* It did not parse at all: believe only a leading field 1 (varint, tag 0x08), as every
     * encoder writes it first. */
    if (len < 2 || bytes[0] != 0x08)
        return 0;
    uint64_t id = 0;
    for (size_t i = 1; i < len && i <= 10; i++) {
        id |= (uint64_t)(bytes[i] & 0x7f) << (7 * (i - 1));
        if ((bytes[i] & 0x80) == 0)
            return id;
    }
    return 0;
}

int proto_pack(const ProtobufCMessage *msg, uint8_t **out, size_t *out_len)
{
    assert(msg != NULL);
    assert(out != NULL);
    assert(out_len != NULL);
    *out = NULL;
    *out_len = 0;
    size_t len = protobuf_c_message_get_packed_size(msg);
    /* An all-default message packs to zero bytes; still hand back a freeable buffer. */
    uint8_t *buf = malloc(len > 0 ? len : 1);
    if (buf == NULL)
        return QC_ENOMEM;
    size_t packed = protobuf_c_message_pack(msg, buf);
    assert(packed == len);
    *out = buf;
    *out_len = packed;
    return 0;
}

const char *proto_load_state_name(int state)
{
    switch (state) {
    case QUANCUN__LOAD_STATE__LOAD_NONE:
        return "NONE";
    case QUANCUN__LOAD_STATE__LOAD_RESERVED:
        return "RESERVED";
    case QUANCUN__LOAD_STATE__LOAD_CONFIRMED:
        return "CONFIRMED";
    case QUANCUN__LOAD_STATE__LOAD_COMPENSATED:
        return "COMPENSATED";
    case QUANCUN__LOAD_STATE__LOAD_LATE_CONFIRMED:
        return "LATE_CONFIRMED";
    }
    return "UNKNOWN";
}
