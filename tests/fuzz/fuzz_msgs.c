/* fuzz_msgs.c - deterministic bodies of every signed message type (see fuzz_msgs.h). */
#include "fuzz_msgs.h"

#include <string.h>

#include "card.pb-c.h"
#include "fuzz_common.h"
#include "proto_decode.h"

static uint8_t TXN[PROTO_TXN_ID_SIZE] = {0x51, 0x43, 0x46, 0x55, 0x5a, 0x5a, 1, 2,
                                         3,    4,    5,    6,    7,    8,    9, 10};
static uint8_t NONCE[PROTO_NONCE_SIZE] = {0xa5, 0x5a, 1, 2,  3,  4,  5,  6,
                                          7,    8,    9, 10, 11, 12, 13, 14};
static uint8_t DIGEST[PROTO_DIGEST_SIZE] = {0xd1, 0x6e, 0x57, 1,  2,  3,  4,  5,  6,  7,  8,
                                            9,    10,   11,   12, 13, 14, 15, 16, 17, 18, 19,
                                            20,   21,   22,   23, 24, 25, 26, 27, 28, 29};
static uint8_t CHALLENGE[32] = {0xc4, 0xa1, 0x1e, 0x96, 1,  2,  3,  4,  5,  6,  7,
                                8,    9,    10,   11,   12, 13, 14, 15, 16, 17, 18,
                                19,   20,   21,   22,   23, 24, 25, 26, 27, 28};

#define BYTES(a) ((ProtobufCBinaryData){.len = sizeof(a), .data = (a)})
#define TIME_MS UINT64_C(1765000000000)

static void pack(const ProtobufCMessage *m, uint8_t **out, size_t *out_len)
{
    FUZZ_CHECK(proto_pack(m, out, out_len) == 0);
}

void fuzz_body(proto_type_t type, uint8_t **out, size_t *out_len)
{
    switch (type) {
    case PROTO_TYPE_LOAD_REQUEST: {
        Quancun__LoadRequest m = QUANCUN__LOAD_REQUEST__INIT;
        m.txn_id = BYTES(TXN);
        m.device_id = FUZZ_DEVICE_ID;
        m.account_id = FUZZ_ACCOUNT_ID;
        m.amount = 12345;
        m.currency = 156;
        m.balance_before = 500;
        m.counter = 7;
        m.key_version = 1;
        m.alg = QUANCUN__ALG__ALG_ECDSA_P256_SHA256;
        m.nonce = BYTES(NONCE);
        m.device_time_ms = TIME_MS;
        pack(&m.base, out, out_len);
        return;
    }
    case PROTO_TYPE_LOAD_ALLOW: {
        Quancun__LoadAllow m = QUANCUN__LOAD_ALLOW__INIT;
        m.txn_id = BYTES(TXN);
        m.device_id = FUZZ_DEVICE_ID;
        m.account_id = FUZZ_ACCOUNT_ID;
        m.amount = 12345;
        m.currency = 156;
        m.counter = 7;
        m.request_digest = BYTES(DIGEST);
        m.host_time_ms = TIME_MS;
        m.deadline_ms = TIME_MS + 30000;
        pack(&m.base, out, out_len);
        return;
    }
    case PROTO_TYPE_EXECUTION_REPORT: {
        Quancun__ExecutionReport m = QUANCUN__EXECUTION_REPORT__INIT;
        m.txn_id = BYTES(TXN);
        m.device_id = FUZZ_DEVICE_ID;
        m.account_id = FUZZ_ACCOUNT_ID;
        m.counter_after = 8;
        m.status = QUANCUN__REPORT_STATUS__REPORT_REJECTED;
        m.reason = "allow names another counter";
        m.balance_after = 12845;
        m.allow_digest = BYTES(DIGEST);
        pack(&m.base, out, out_len);
        return;
    }
    case PROTO_TYPE_LOAD_OUTCOME: {
        Quancun__LoadOutcome m = QUANCUN__LOAD_OUTCOME__INIT;
        m.txn_id = BYTES(TXN);
        m.device_id = FUZZ_DEVICE_ID;
        m.state = QUANCUN__LOAD_STATE__LOAD_CONFIRMED;
        m.amount = 12345;
        m.currency = 156;
        m.reason = "applied";
        m.host_time_ms = TIME_MS + 1000;
        pack(&m.base, out, out_len);
        return;
    }
    case PROTO_TYPE_AUDIT_CHECKPOINT: {
        Quancun__AuditCheckpoint m = QUANCUN__AUDIT_CHECKPOINT__INIT;
        m.seq = 4096;
        m.hash = BYTES(DIGEST);
        m.time_ms = TIME_MS;
        pack(&m.base, out, out_len);
        return;
    }
    case PROTO_TYPE_CARD_CHALLENGE: {
        Qccard__CardChallenge m = QCCARD__CARD_CHALLENGE__INIT;
        m.signer_id = FUZZ_DEVICE_ID;
        m.peer_id = FUZZ_CARD_NUMBER;
        m.challenge = BYTES(CHALLENGE);
        m.own_challenge = BYTES(CHALLENGE);
        pack(&m.base, out, out_len);
        return;
    }
    case PROTO_TYPE_CARD_CREDIT: {
        Qccard__CardCredit m = QCCARD__CARD_CREDIT__INIT;
        m.transfer_id = BYTES(TXN);
        m.device_id = FUZZ_DEVICE_ID;
        m.card_number = FUZZ_CARD_NUMBER;
        m.amount = 2000;
        m.session = BYTES(CHALLENGE);
        pack(&m.base, out, out_len);
        return;
    }
    case PROTO_TYPE_CARD_RECEIPT: {
        Qccard__CardReceipt m = QCCARD__CARD_RECEIPT__INIT;
        m.transfer_id = BYTES(TXN);
        m.card_number = FUZZ_CARD_NUMBER;
        m.device_id = FUZZ_DEVICE_ID;
        m.amount = 2000;
        m.status = QCCARD__RECEIPT_STATUS__RECEIPT_CREDITED;
        m.balance_after = 2000;
        m.counter = 1;
        m.session = BYTES(CHALLENGE);
        pack(&m.base, out, out_len);
        return;
    }
    case PROTO_TYPE_COUNT:
        break;
    }
    fuzz_fail(__FILE__, __LINE__, "no body for this type");
}
