/* test_decode.c - decoding untrusted bodies and frames: limits, shape checks, and a fuzz loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/rand.h>

#include "proto_cert.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "qc_error.h"
#include "wire_fields.h"

#define FUZZ_ROUNDS 10000
#define FUZZ_LEN_MAX 512

/* Every decoder behind one signature, so the checks below can be shared. */
typedef int (*decoder_fn)(const uint8_t *bytes, size_t len, ProtobufCMessage **out);

#define ADAPT(name, type)                                                                          \
    static int dec_##name(const uint8_t *bytes, size_t len, ProtobufCMessage **out)                \
    {                                                                                              \
        type *m = (type *)1; /* must be overwritten, also on error */                              \
        int rc = proto_decode_##name(bytes, len, &m);                                              \
        if (rc != 0)                                                                               \
            assert_null(m);                                                                        \
        *out = rc == 0 ? &m->base : NULL;                                                          \
        return rc;                                                                                 \
    }
ADAPT(load_request, Quancun__LoadRequest)
ADAPT(load_allow, Quancun__LoadAllow)
ADAPT(execution_report, Quancun__ExecutionReport)
ADAPT(load_outcome, Quancun__LoadOutcome)
ADAPT(audit_checkpoint, Quancun__AuditCheckpoint)
ADAPT(rpc, Quancun__Rpc)
ADAPT(rpc_reply, Quancun__RpcReply)

static uint8_t txn[PROTO_TXN_ID_SIZE] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
static uint8_t nonce[PROTO_NONCE_SIZE] = {16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1};
static uint8_t digest[PROTO_DIGEST_SIZE] = {0xd1, 0xd2, 0xd3, 0xd4, 0xd5};
static uint8_t rpc_body[] = {0xb0, 0xd1, 0xe5, 0x01, 0x02, 0x03, 0x04, 0x05};

static void valid_load_request(Quancun__LoadRequest *m)
{
    quancun__load_request__init(m);
    m->txn_id = (ProtobufCBinaryData){sizeof(txn), txn};
    m->device_id = "QC-DEV-0001";
    m->account_id = "6222020000000001";
    m->amount = 12345;
    m->currency = 156;
    m->balance_before = 500;
    m->counter = 0; /* a device with no applied load yet is valid */
    m->key_version = 1;
    m->alg = QUANCUN__ALG__ALG_ECDSA_P256_SHA256;
    m->nonce = (ProtobufCBinaryData){sizeof(nonce), nonce};
    m->device_time_ms = 1790000000000ULL;
}

static void valid_load_allow(Quancun__LoadAllow *m)
{
    quancun__load_allow__init(m);
    m->txn_id = (ProtobufCBinaryData){sizeof(txn), txn};
    m->device_id = "QC-DEV-0001";
    m->amount = 12345;
    m->currency = 156;
    m->counter = 7;
    m->request_digest = (ProtobufCBinaryData){sizeof(digest), digest};
    m->host_time_ms = 1790000000000ULL;
    m->deadline_ms = 1790000030000ULL;
    m->account_id = "6222020000000001";
}

static void valid_execution_report(Quancun__ExecutionReport *m)
{
    quancun__execution_report__init(m);
    m->txn_id = (ProtobufCBinaryData){sizeof(txn), txn};
    m->device_id = "QC-DEV-0001";
    m->account_id = "6222020000000001";
    m->counter_after = 8;
    m->status = QUANCUN__REPORT_STATUS__REPORT_APPLIED;
    m->balance_after = 12845;
    m->allow_digest = (ProtobufCBinaryData){sizeof(digest), digest};
}

static void valid_load_outcome(Quancun__LoadOutcome *m)
{
    quancun__load_outcome__init(m);
    m->txn_id = (ProtobufCBinaryData){sizeof(txn), txn};
    m->device_id = "QC-DEV-0001";
    m->state = QUANCUN__LOAD_STATE__LOAD_CONFIRMED;
    m->amount = 12345;
    m->currency = 156;
    m->host_time_ms = 1790000001000ULL;
}

static void valid_audit_checkpoint(Quancun__AuditCheckpoint *m)
{
    quancun__audit_checkpoint__init(m);
    m->seq = 42;
    m->hash = (ProtobufCBinaryData){sizeof(digest), digest};
    m->time_ms = 1790000000000ULL;
}

static void valid_rpc(Quancun__Rpc *m)
{
    quancun__rpc__init(m);
    m->request_id = 9;
    m->method = "load";
    m->deadline_ms = 1790000000000ULL;
    m->body = (ProtobufCBinaryData){sizeof(rpc_body), rpc_body};
}

static void valid_rpc_reply(Quancun__RpcReply *m)
{
    quancun__rpc_reply__init(m);
    m->request_id = 9;
    m->code = -54;
    m->message = "insufficient funds";
    m->body = (ProtobufCBinaryData){sizeof(rpc_body), rpc_body};
}

/* Packs msg, decodes it with fn, and checks the result code; frees whatever came back. */
static void expect_code(const ProtobufCMessage *msg, decoder_fn fn, int want)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(proto_pack(msg, &buf, &len), 0);
    ProtobufCMessage *out = NULL;
    int rc = fn(buf, len, &out);
    if (rc != want)
        print_error("decode: got %d (%s), want %d\n", rc, qc_errname(rc), want);
    assert_int_equal(rc, want);
    if (out != NULL)
        protobuf_c_message_free_unpacked(out, NULL);
    free(buf);
}

/* The checks every decoder shares: oversize, garbage, truncation of a valid encoding. */
static void expect_limits(const ProtobufCMessage *valid, decoder_fn fn, size_t limit,
                          int last_field_required)
{
    ProtobufCMessage *out = NULL;
    uint8_t *big = calloc(1, limit + 1);
    assert_non_null(big);
    assert_int_equal(fn(big, limit + 1, &out), QC_ETOOBIG);
    free(big);

    static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(fn(garbage, sizeof(garbage), &out), QC_EDECODE);
    static const uint8_t bad_wire_type[] = {0x0f, 0x01}; /* field 1, wire type 7 */
    assert_int_equal(fn(bad_wire_type, sizeof(bad_wire_type), &out), QC_EDECODE);
    static const uint8_t overlong[] = {0x0a, 0x7f, 0x01}; /* field 1 claims 127 bytes */
    assert_int_equal(fn(overlong, sizeof(overlong), &out), QC_EDECODE);

    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(proto_pack(valid, &buf, &len), 0);
    assert_int_equal(fn(buf, len, &out), 0);
    protobuf_c_message_free_unpacked(out, NULL);
    /* Truncated in the middle of the last field: malformed. */
    assert_int_equal(fn(buf, len - 1, &out), QC_EDECODE);
    if (last_field_required) {
        for (size_t cut = 0; cut < len; cut++) {
            int rc = fn(buf, cut, &out);
            assert_true(rc < 0);
        }
    }
    free(buf);
}

#define EXPECT(type, mutation, fn, want)                                                           \
    do {                                                                                           \
        type m;                                                                                    \
        valid_##fn(&m);                                                                            \
        mutation;                                                                                  \
        expect_code(&m.base, dec_##fn, want);                                                      \
    } while (0)

static char long_id[PROTO_ACCOUNT_ID_MAX + 2];
static char long_reason[1100];

static void fill_long_strings(void)
{
    memset(long_id, 'a', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = '\0';
    memset(long_reason, 'r', sizeof(long_reason) - 1);
    long_reason[sizeof(long_reason) - 1] = '\0';
}

static uint8_t short_bytes[15] = {1};

static void test_load_request(void **state)
{
    (void)state;
    fill_long_strings();
    typedef Quancun__LoadRequest T;
    EXPECT(T, (void)0, load_request, 0);
    EXPECT(T, m.counter = 99, load_request, 0);
    EXPECT(T, m.txn_id.len = 0, load_request, QC_EMISSING);
    EXPECT(T, m.txn_id = ((ProtobufCBinaryData){sizeof(short_bytes), short_bytes}), load_request,
           QC_EDECODE);
    EXPECT(T, m.device_id = "", load_request, QC_EMISSING);
    EXPECT(T, m.device_id = long_id, load_request, QC_ETOOBIG);
    EXPECT(T, m.device_id = "dev 1", load_request, QC_EDECODE);
    EXPECT(T, m.device_id = "dev\x01", load_request, QC_EDECODE);
    EXPECT(T, m.account_id = "", load_request, QC_EMISSING);
    EXPECT(T, m.account_id = long_id, load_request, QC_ETOOBIG);
    EXPECT(T, m.amount = 0, load_request, QC_EAMOUNT);
    EXPECT(T, m.amount = -1, load_request, QC_EAMOUNT);
    EXPECT(T, m.currency = 0, load_request, QC_EMISSING);
    EXPECT(T, m.currency = 1000, load_request, QC_EDECODE);
    EXPECT(T, m.balance_before = -5, load_request, QC_EAMOUNT);
    EXPECT(T, m.balance_before = 0, load_request, 0);
    EXPECT(T, m.key_version = 0, load_request, QC_EMISSING);
    EXPECT(T, m.alg = QUANCUN__ALG__ALG_NONE, load_request, QC_EMISSING);
    EXPECT(T, m.alg = (Quancun__Alg)2, load_request, QC_EALG);
    EXPECT(T, m.nonce.len = 0, load_request, QC_EMISSING);
    EXPECT(T, m.nonce.len = 8, load_request, QC_EDECODE);
    EXPECT(T, m.device_time_ms = 0, load_request, QC_EMISSING);

    /* A device id of exactly the limit is fine, one more is not. */
    char id[PROTO_DEVICE_ID_MAX + 1];
    memset(id, 'd', PROTO_DEVICE_ID_MAX);
    id[PROTO_DEVICE_ID_MAX] = '\0';
    EXPECT(T, m.device_id = id, load_request, 0);

    Quancun__LoadRequest v;
    valid_load_request(&v);
    expect_limits(&v.base, dec_load_request, PROTO_BODY_MAX, 1);
}

static void test_load_allow(void **state)
{
    (void)state;
    fill_long_strings();
    typedef Quancun__LoadAllow T;
    EXPECT(T, (void)0, load_allow, 0);
    EXPECT(T, m.counter = 0, load_allow, 0);
    EXPECT(T, m.txn_id.len = 0, load_allow, QC_EMISSING);
    EXPECT(T, m.txn_id.len = 15, load_allow, QC_EDECODE);
    EXPECT(T, m.device_id = "", load_allow, QC_EMISSING);
    EXPECT(T, m.account_id = "", load_allow, QC_EMISSING);
    EXPECT(T, m.account_id = long_id, load_allow, QC_ETOOBIG);
    EXPECT(T, m.amount = 0, load_allow, QC_EAMOUNT);
    EXPECT(T, m.amount = -100, load_allow, QC_EAMOUNT);
    EXPECT(T, m.currency = 0, load_allow, QC_EMISSING);
    EXPECT(T, m.request_digest.len = 0, load_allow, QC_EMISSING);
    EXPECT(T, m.request_digest.len = 31, load_allow, QC_EDECODE);
    EXPECT(T, m.host_time_ms = 0, load_allow, QC_EMISSING);
    EXPECT(T, m.deadline_ms = 0, load_allow, QC_EMISSING);
    EXPECT(T, m.deadline_ms = m.host_time_ms, load_allow, QC_EDECODE);
    EXPECT(T, m.deadline_ms = m.host_time_ms - 1, load_allow, QC_EDECODE);

    Quancun__LoadAllow v;
    valid_load_allow(&v);
    expect_limits(&v.base, dec_load_allow, PROTO_BODY_MAX, 1);
}

static void test_execution_report(void **state)
{
    (void)state;
    fill_long_strings();
    typedef Quancun__ExecutionReport T;
    EXPECT(T, (void)0, execution_report, 0);
    EXPECT(T, m.counter_after = 0, execution_report, 0);
    EXPECT(T, (m.status = QUANCUN__REPORT_STATUS__REPORT_REJECTED, m.reason = "user cancelled"),
           execution_report, 0);
    EXPECT(T, m.txn_id.len = 0, execution_report, QC_EMISSING);
    EXPECT(T, m.device_id = "", execution_report, QC_EMISSING);
    EXPECT(T, m.account_id = "", execution_report, QC_EMISSING);
    EXPECT(T, m.status = QUANCUN__REPORT_STATUS__REPORT_NONE, execution_report, QC_EMISSING);
    EXPECT(T, m.status = (Quancun__ReportStatus)3, execution_report, QC_EDECODE);
    EXPECT(T, m.allow_digest.len = 0, execution_report, QC_EMISSING);
    EXPECT(T, m.allow_digest.len = 16, execution_report, QC_EDECODE);
    EXPECT(T, m.balance_after = -1, execution_report, QC_EAMOUNT);
    EXPECT(T, m.balance_after = 0, execution_report, 0);
    EXPECT(T, m.reason = long_reason, execution_report, QC_ETOOBIG);

    Quancun__ExecutionReport v;
    valid_execution_report(&v);
    expect_limits(&v.base, dec_execution_report, PROTO_BODY_MAX, 1);
}

static void test_load_outcome(void **state)
{
    (void)state;
    fill_long_strings();
    typedef Quancun__LoadOutcome T;
    EXPECT(T, (void)0, load_outcome, 0);
    EXPECT(T, m.state = QUANCUN__LOAD_STATE__LOAD_LATE_CONFIRMED, load_outcome, 0);
    EXPECT(T, m.txn_id.len = 0, load_outcome, QC_EMISSING);
    EXPECT(T, m.device_id = "", load_outcome, QC_EMISSING);
    EXPECT(T, m.state = QUANCUN__LOAD_STATE__LOAD_NONE, load_outcome, QC_EMISSING);
    EXPECT(T, m.state = (Quancun__LoadState)9, load_outcome, QC_EDECODE);
    EXPECT(T, m.amount = 0, load_outcome, QC_EAMOUNT);
    EXPECT(T, m.currency = 0, load_outcome, QC_EMISSING);
    EXPECT(T, m.host_time_ms = 0, load_outcome, QC_EMISSING);
    EXPECT(T, m.reason = long_reason, load_outcome, QC_ETOOBIG);

    Quancun__LoadOutcome v;
    valid_load_outcome(&v);
    expect_limits(&v.base, dec_load_outcome, PROTO_BODY_MAX, 1);
}

static void test_audit_checkpoint(void **state)
{
    (void)state;
    typedef Quancun__AuditCheckpoint T;
    EXPECT(T, (void)0, audit_checkpoint, 0);
    EXPECT(T, m.seq = 0, audit_checkpoint, QC_EMISSING);
    EXPECT(T, m.hash.len = 0, audit_checkpoint, QC_EMISSING);
    EXPECT(T, m.hash.len = 20, audit_checkpoint, QC_EDECODE);
    EXPECT(T, m.time_ms = 0, audit_checkpoint, QC_EMISSING);

    Quancun__AuditCheckpoint v;
    valid_audit_checkpoint(&v);
    expect_limits(&v.base, dec_audit_checkpoint, PROTO_BODY_MAX, 1);
}

static void test_rpc(void **state)
{
    (void)state;
    typedef Quancun__Rpc T;
    EXPECT(T, (void)0, rpc, 0);
    EXPECT(T, m.body.len = 0, rpc, 0);
    EXPECT(T, m.deadline_ms = 0, rpc, 0);
    EXPECT(T, m.request_id = 0, rpc, QC_EMISSING);
    EXPECT(T, m.method = "", rpc, QC_EMISSING);
    EXPECT(T, m.method = "lo ad", rpc, QC_EDECODE);
    EXPECT(T, m.method = "load\n", rpc, QC_EDECODE);
    EXPECT(T, m.method = "0123456789abcdef0123456789abcdef", rpc, 0); /* 32 = the limit */
    EXPECT(T, m.method = "0123456789abcdef0123456789abcdefX", rpc, QC_ETOOBIG);

    Quancun__Rpc v;
    valid_rpc(&v);
    expect_limits(&v.base, dec_rpc, PROTO_RPC_FRAME_MAX, 0);

    /* A body up to the frame limit is accepted: Rpc carries envelopes and batches. */
    uint8_t *body = calloc(1, PROTO_RPC_FRAME_MAX - 64);
    assert_non_null(body);
    EXPECT(T, m.body = ((ProtobufCBinaryData){PROTO_RPC_FRAME_MAX - 64, body}), rpc, 0);
    free(body);
}

static void test_rpc_reply(void **state)
{
    (void)state;
    fill_long_strings();
    typedef Quancun__RpcReply T;
    EXPECT(T, (void)0, rpc_reply, 0);
    EXPECT(T, (m.code = 0, m.message = "", m.body.len = 0), rpc_reply, 0);
    EXPECT(T, m.request_id = 0, rpc_reply, QC_EMISSING);
    EXPECT(T, m.message = long_reason, rpc_reply, QC_ETOOBIG);

    Quancun__RpcReply v;
    valid_rpc_reply(&v);
    expect_limits(&v.base, dec_rpc_reply, PROTO_RPC_FRAME_MAX, 0);
}

/* A string with an embedded NUL would read shorter than what was signed: refused. */
static void test_embedded_nul_refused(void **state)
{
    (void)state;
    /* Rpc { request_id: 1, method: "lo\0ad" } written by hand. */
    static const uint8_t nul_method[] = {0x08, 0x01, 0x12, 0x05, 'l', 'o', 0x00, 'a', 'd'};
    static const uint8_t ok_method[] = {0x08, 0x01, 0x12, 0x05, 'l', 'o', 'x', 'a', 'd'};
    ProtobufCMessage *out = NULL;
    assert_int_equal(dec_rpc(ok_method, sizeof(ok_method), &out), 0);
    protobuf_c_message_free_unpacked(out, NULL);
    assert_int_equal(dec_rpc(nul_method, sizeof(nul_method), &out), QC_EDECODE);
    /* A field sent twice is ambiguous and refused too. */
    static const uint8_t twice[] = {0x08, 0x01, 0x08, 0x02, 0x12, 0x01, 'x'};
    assert_int_equal(dec_rpc(twice, sizeof(twice), &out), QC_EDECODE);
    /* An unknown field from a later version is kept and does not break decoding. */
    static const uint8_t unknown[] = {0x08, 0x01, 0x12, 0x01, 'x', 0xa0, 0x06, 0x05};
    assert_int_equal(dec_rpc(unknown, sizeof(unknown), &out), 0);
    protobuf_c_message_free_unpacked(out, NULL);
}

/* Found by an independent device: a LoadRequest whose fields came in reverse order was
 * accepted, because only the re-packed length was compared. Each of these parses to a valid
 * message of the same length or meaning; only an exact comparison refuses them. */
static void test_canonical_bytes_only(void **state)
{
    (void)state;
    Quancun__LoadRequest m;
    valid_load_request(&m);
    m.counter = 3;
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(proto_pack(&m.base, &buf, &len), 0);
    ProtobufCMessage *out = NULL;
    assert_int_equal(dec_load_request(buf, len, &out), 0);
    protobuf_c_message_free_unpacked(out, NULL);

    uint8_t reversed[PROTO_BODY_MAX];
    assert_int_equal(wire_fields_reverse(buf, len, reversed), len);
    assert_memory_not_equal(reversed, buf, len);
    Quancun__LoadRequest *raw = quancun__load_request__unpack(NULL, len, reversed);
    assert_non_null(raw); /* protobuf-c itself takes it, and it means the same */
    assert_int_equal(raw->amount, m.amount);
    assert_int_equal(quancun__load_request__get_packed_size(raw), len);
    quancun__load_request__free_unpacked(raw, NULL);
    assert_int_equal(dec_load_request(reversed, len, &out), QC_EDECODE);
    assert_null(out);
    free(buf);

    /* Two fields swapped in an Rpc frame, as a hand-written client might send them. */
    static const uint8_t swapped[] = {0x12, 0x01, 'x', 0x08, 0x01};
    static const uint8_t in_order[] = {0x08, 0x01, 0x12, 0x01, 'x'};
    assert_int_equal(dec_rpc(in_order, sizeof(in_order), &out), 0);
    protobuf_c_message_free_unpacked(out, NULL);
    assert_int_equal(dec_rpc(swapped, sizeof(swapped), &out), QC_EDECODE);
    /* A field present with its default value (deadline_ms = 0) is not how it packs. */
    static const uint8_t zero_field[] = {0x08, 0x01, 0x12, 0x01, 'x', 0x18, 0x00};
    assert_int_equal(dec_rpc(zero_field, sizeof(zero_field), &out), QC_EDECODE);
    /* A non-minimal varint (request_id 1 as 0x81 0x00). */
    static const uint8_t long_varint[] = {0x08, 0x81, 0x00, 0x12, 0x01, 'x'};
    assert_int_equal(dec_rpc(long_varint, sizeof(long_varint), &out), QC_EDECODE);
    /* An unknown field before a known one is out of order; after them it is kept. */
    static const uint8_t unknown_first[] = {0xa0, 0x06, 0x05, 0x08, 0x01, 0x12, 0x01, 'x'};
    assert_int_equal(dec_rpc(unknown_first, sizeof(unknown_first), &out), QC_EDECODE);
}

static void test_pack_empty(void **state)
{
    (void)state;
    Quancun__Rpc m = QUANCUN__RPC__INIT;
    uint8_t *buf = NULL;
    size_t len = 99;
    assert_int_equal(proto_pack(&m.base, &buf, &len), 0);
    assert_non_null(buf);
    assert_int_equal(len, 0);
    free(buf);
}

static void fuzz_one(decoder_fn fn, const uint8_t *buf, size_t len)
{
    ProtobufCMessage *out = NULL;
    int rc = fn(buf, len, &out);
    if (rc == 0) {
        assert_non_null(out);
        protobuf_c_message_free_unpacked(out, NULL);
    } else {
        assert_true(rc < 0);
        assert_null(out);
    }
}

static void test_fuzz(void **state)
{
    (void)state;
    static const decoder_fn fns[] = {dec_load_request, dec_load_allow,       dec_execution_report,
                                     dec_load_outcome, dec_audit_checkpoint, dec_rpc,
                                     dec_rpc_reply};
    const size_t nfns = sizeof(fns) / sizeof(fns[0]);
    /* Seeds: one valid encoding of each type. */
    uint8_t *seeds[7];
    size_t seed_len[7];
    Quancun__LoadRequest a;
    Quancun__LoadAllow b;
    Quancun__ExecutionReport c;
    Quancun__LoadOutcome d;
    Quancun__AuditCheckpoint e;
    Quancun__Rpc f;
    Quancun__RpcReply g;
    valid_load_request(&a);
    valid_load_allow(&b);
    valid_execution_report(&c);
    valid_load_outcome(&d);
    valid_audit_checkpoint(&e);
    valid_rpc(&f);
    valid_rpc_reply(&g);
    const ProtobufCMessage *msgs[7] = {&a.base, &b.base, &c.base, &d.base,
                                       &e.base, &f.base, &g.base};
    for (size_t i = 0; i < nfns; i++)
        assert_int_equal(proto_pack(msgs[i], &seeds[i], &seed_len[i]), 0);

    int accepted = 0;
    for (int round = 0; round < FUZZ_ROUNDS; round++) {
        uint8_t buf[FUZZ_LEN_MAX];
        uint8_t r[8];
        assert_int_equal(RAND_bytes(r, sizeof(r)), 1);
        size_t which = (size_t)round % nfns;
        size_t len;
        if (r[0] % 3 == 0) {
            /* Pure random bytes. */
            len = (size_t)((r[1] << 8 | r[2]) % FUZZ_LEN_MAX);
            assert_int_equal(RAND_bytes(buf, (int)sizeof(buf)), 1);
        } else {
            /* A valid encoding of some type, mutated: byte flips, a cut, or random tail. */
            size_t src = r[3] % nfns;
            len = seed_len[src];
            memcpy(buf, seeds[src], len);
            int flips = 1 + r[4] % 4;
            for (int k = 0; k < flips; k++) {
                uint8_t p[2];
                assert_int_equal(RAND_bytes(p, 2), 1);
                buf[p[0] % len] ^= p[1];
            }
            if (r[5] % 4 == 0)
                len = r[6] % (len + 1);
            else if (r[5] % 4 == 1 && len + 16 <= sizeof(buf)) {
                assert_int_equal(RAND_bytes(buf + len, 16), 1);
                len += r[7] % 17;
            }
        }
        ProtobufCMessage *out = NULL;
        if (fns[which](buf, len, &out) == 0) {
            accepted++;
            protobuf_c_message_free_unpacked(out, NULL);
        }
        fuzz_one(fns[(which + 1) % nfns], buf, len);
    }
    print_message("fuzz: %d rounds, %d accepted\n", FUZZ_ROUNDS, accepted);
    for (size_t i = 0; i < nfns; i++)
        free(seeds[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_request),
        cmocka_unit_test(test_load_allow),
        cmocka_unit_test(test_execution_report),
        cmocka_unit_test(test_load_outcome),
        cmocka_unit_test(test_audit_checkpoint),
        cmocka_unit_test(test_rpc),
        cmocka_unit_test(test_rpc_reply),
        cmocka_unit_test(test_embedded_nul_refused),
        cmocka_unit_test(test_pack_empty),
        cmocka_unit_test(test_fuzz),
        cmocka_unit_test(test_canonical_bytes_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
