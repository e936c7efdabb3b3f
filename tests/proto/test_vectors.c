/* test_vectors.c - the test vectors of docs/PROTOCOL.md, checked against the code.
 *
 * docs/vectors/v1.txt holds, one "name: value" per line, a device's and the bank's key ids,
 * a LoadRequest, LoadAllow, ExecutionReport and LoadOutcome (every field, the body bytes, the
 * exact signature input, its SHA-256, the DER signature and the whole Signed envelope), the
 * RPC frames that carry them, refusals, and envelopes that must be refused with their code.
 * docs/vectors/ holds in PEM the keys (test keys: never use them for anything else).
 *
 * Checked (ECDSA signatures are randomized, so they are verified rather than regenerated):
 * every body decodes under the canonical rule and its fields read as listed; the signature
 * input is context || 0x00 || body; the digest is its SHA-256 and proto_envelope_digest();
 * the signature is low-S and verifies with the listed key; sealing the parts gives the
 * envelope byte for byte; the request and allow digests chain; every frame decodes as listed;
 * every bad envelope is refused with its code; and every line of v1.txt appears verbatim in
 * docs/PROTOCOL.md, so the document cannot drift from the code.
 *
 * Run with --generate DIR to write a fresh set (new keys and signatures) into DIR. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "ops_hex.h"
#include "proto_cert.h"
#include "proto_decode.h"
#include "proto_ecdsa.h"
#include "proto_envelope.h"
#include "qc_error.h"
#include "qctest_key.h"
#include "wire_fields.h"

#define VEC_LINES_MAX 256
#define VEC_LINE_MAX 16384
#define VEC_PATH_MAX 1024
#define VEC_BYTES_MAX 8192
#define VEC_DOC_MAX (512 * 1024)

typedef struct vec_line {
    char *name;
    char *value;
} vec_line_t;

static vec_line_t vec[VEC_LINES_MAX];
static int vec_count;
static char vec_dir[VEC_PATH_MAX];
static char doc_path[VEC_PATH_MAX];

/* ------------------------------------------------------------------ formatting */

/* The text of one field of msg: integers in decimal, enums as "N NAME", strings as they are,
 * bytes in lower-case hex. Writes into out (capacity cap). */
static void field_text(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *fd, char *out,
                       size_t cap)
{
    const char *base = (const char *)msg;
    const void *p = base + fd->offset;
    switch (fd->type) {
    case PROTOBUF_C_TYPE_UINT64:
        snprintf(out, cap, "%llu", (unsigned long long)*(const uint64_t *)p);
        break;
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_INT64:
        snprintf(out, cap, "%lld", (long long)*(const int64_t *)p);
        break;
    case PROTOBUF_C_TYPE_UINT32:
        snprintf(out, cap, "%u", *(const uint32_t *)p);
        break;
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_INT32:
        snprintf(out, cap, "%d", *(const int32_t *)p);
        break;
    case PROTOBUF_C_TYPE_ENUM: {
        int v = *(const int *)p;
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(fd->descriptor, v);
        snprintf(out, cap, "%d %s", v, ev != NULL ? ev->name : "?");
        break;
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(const char *const *)p;
        snprintf(out, cap, "%s", s != NULL && s[0] != '\0' ? s : "\"\""); /* "" for empty */
        break;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *b = p;
        assert_true(2 * b->len + 3 <= cap);
        if (b->len == 0)
            snprintf(out, cap, "\"\"");
        else
            ops_hex(b->data, b->len, out);
        break;
    }
    default:
        fail_msg("field %s: type %d not used by quancun.proto", fd->name, (int)fd->type);
    }
}

static char *hex_of(const uint8_t *bytes, size_t len)
{
    char *h = malloc(2 * len + 1);
    assert_non_null(h);
    return ops_hex(bytes, len, h);
}

/* ------------------------------------------------------------------ generation */

static FILE *gen_out;

static void put(const char *name, const char *value)
{
    fprintf(gen_out, "%s: %s\n", name, value);
}

static void put_hex(const char *name, const uint8_t *bytes, size_t len)
{
    char *h = hex_of(bytes, len);
    put(name, h);
    free(h);
}

static void put_fields(const char *prefix, const ProtobufCMessage *msg)
{
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        char text[VEC_LINE_MAX];
        char name[128];
        field_text(msg, &d->fields[i], text, sizeof text);
        snprintf(name, sizeof name, "%s.%s", prefix, d->fields[i].name);
        put(name, text);
    }
}

/* Signs msg as type with key and writes its lines; returns the envelope (caller frees). */
static uint8_t *put_signed(const char *prefix, proto_type_t type, const ProtobufCMessage *msg,
                           EVP_PKEY *key, const uint8_t *cert, size_t cert_len, size_t *env_len)
{
    uint8_t *body = NULL;
    size_t body_len = 0;
    assert_int_equal(proto_pack(msg, &body, &body_len), 0);
    char name[128];
    put_fields(prefix, msg);
    snprintf(name, sizeof name, "%s.body", prefix);
    put_hex(name, body, body_len);
    const char *ctx = proto_type_context(type);
    size_t si_len = strlen(ctx) + 1 + body_len;
    uint8_t *si = malloc(si_len);
    assert_non_null(si);
    memcpy(si, ctx, strlen(ctx));
    si[strlen(ctx)] = 0x00;
    memcpy(si + strlen(ctx) + 1, body, body_len);
    snprintf(name, sizeof name, "%s.signature_input", prefix);
    put_hex(name, si, si_len);
    uint8_t digest[PROTO_DIGEST_SIZE];
    assert_int_equal(proto_envelope_digest(type, body, body_len, digest), 0);
    snprintf(name, sizeof name, "%s.digest", prefix);
    put_hex(name, digest, sizeof digest);
    uint8_t *env = NULL;
    assert_int_equal(
        proto_envelope_sign(type, body, body_len, key, 1, cert, cert_len, &env, env_len), 0);
    Quancun__Signed *s = quancun__signed__unpack(NULL, *env_len, env);
    assert_non_null(s);
    snprintf(name, sizeof name, "%s.signature", prefix);
    put_hex(name, s->signature.data, s->signature.len);
    quancun__signed__free_unpacked(s, NULL);
    snprintf(name, sizeof name, "%s.envelope", prefix);
    put_hex(name, env, *env_len);
    uint8_t plain[PROTO_DIGEST_SIZE];
    assert_int_equal(proto_sha256(body, body_len, plain), 0);
    snprintf(name, sizeof name, "%s.body_sha256", prefix);
    put_hex(name, plain, sizeof plain);
    free(si);
    free(body);
    return env;
}

static void put_frame(const char *prefix, const ProtobufCMessage *msg)
{
    uint8_t *bytes = NULL;
    size_t len = 0;
    assert_int_equal(proto_pack(msg, &bytes, &len), 0);
    char name[128];
    put_fields(prefix, msg);
    snprintf(name, sizeof name, "%s.frame", prefix);
    put_hex(name, bytes, len);
    free(bytes);
}

static void write_key(const char *name, EVP_PKEY *key)
{
    char path[VEC_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", vec_dir, name);
    qctest_write_private(path, key);
}

static void put_key_id(const char *name, EVP_PKEY *key)
{
    uint8_t id[PROTO_KEY_ID_SIZE];
    assert_int_equal(proto_key_id(key, id), 0);
    put_hex(name, id, sizeof id);
}

/* A refusal of a load, as the gateway sends it. */
static void put_refusal(int n, uint64_t request_id, int code, const char *message, int load_state)
{
    Quancun__RpcReply r = QUANCUN__RPC_REPLY__INIT;
    r.request_id = request_id;
    r.code = code;
    r.message = (char *)message;
    r.server_time_ms = 1796000000500ULL; /* every refusal carries the bank's clock */
    r.load_state = (Quancun__LoadState)load_state;
    char prefix[64];
    snprintf(prefix, sizeof prefix, "refusal.%d", n);
    put_frame(prefix, &r.base);
    char name[80];
    snprintf(name, sizeof name, "%s.code_name", prefix);
    put(name, qc_errname(code));
}

static void put_bad(int n, const char *what, const uint8_t *env, size_t len, int expect)
{
    char name[64];
    snprintf(name, sizeof name, "bad.%d.what", n);
    put(name, what);
    snprintf(name, sizeof name, "bad.%d.envelope", n);
    put_hex(name, env, len);
    snprintf(name, sizeof name, "bad.%d.expect", n);
    put(name, qc_errname(expect));
}

static void generate(void)
{
    char path[VEC_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/v1.txt", vec_dir);
    gen_out = fopen(path, "w");
    assert_non_null(gen_out);
    fprintf(gen_out, "# quancun v1 test vectors: docs/PROTOCOL.md, section 9. Test keys only.\n");

    EVP_PKEY *ca_key = NULL, *dev = qctest_key_new(), *allow_key = qctest_key_new();
    EVP_PKEY *outcome_key = qctest_key_new();
    X509 *ca = NULL;
    qctest_ca_new(&ca_key, &ca);
    uint8_t *cert = NULL;
    size_t cert_len = 0;
    qctest_cert_issued_der(dev, "QC-VEC-0001", ca_key, ca, &cert, &cert_len);
    write_key("device.key.pem", dev);
    write_key("allow.key.pem", allow_key);
    write_key("outcome.key.pem", outcome_key);
    put_key_id("device.key_id", dev);
    put_hex("device.cert", cert, cert_len);
    put_key_id("allow.key_id", allow_key);
    put_key_id("outcome.key_id", outcome_key);

    static uint8_t txn[16] = {0x5a, 0x17, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05,
                              0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d};
    static uint8_t nonce[16] = {0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8,
                                0xe9, 0xea, 0xeb, 0xec, 0xed, 0xee, 0xef, 0xf0};
    Quancun__LoadRequest rq = QUANCUN__LOAD_REQUEST__INIT;
    rq.txn_id = (ProtobufCBinaryData){sizeof txn, txn};
    rq.device_id = "QC-VEC-0001";
    rq.account_id = "6222020000000001";
    rq.amount = 10000;
    rq.currency = 156;
    rq.balance_before = 2500;
    rq.counter = 3;
    rq.key_version = 1;
    rq.alg = QUANCUN__ALG__ALG_ECDSA_P256_SHA256;
    rq.nonce = (ProtobufCBinaryData){sizeof nonce, nonce};
    rq.device_time_ms = 1796000000000ULL;
    size_t req_env_len = 0;
    uint8_t *req_env =
        put_signed("request", PROTO_TYPE_LOAD_REQUEST, &rq.base, dev, cert, cert_len, &req_env_len);

    uint8_t *rq_body = NULL;
    size_t rq_len = 0;
    assert_int_equal(proto_pack(&rq.base, &rq_body, &rq_len), 0);
    uint8_t req_digest[PROTO_DIGEST_SIZE];
    assert_int_equal(proto_sha256(rq_body, rq_len, req_digest), 0);
    Quancun__LoadAllow al = QUANCUN__LOAD_ALLOW__INIT;
    al.txn_id = rq.txn_id;
    al.device_id = rq.device_id;
    al.account_id = rq.account_id;
    al.amount = rq.amount;
    al.currency = rq.currency;
    al.counter = rq.counter;
    al.request_digest = (ProtobufCBinaryData){sizeof req_digest, req_digest};
    al.host_time_ms = 1796000000150ULL;
    al.deadline_ms = al.host_time_ms + 30000;
    size_t allow_env_len = 0;
    uint8_t *allow_env =
        put_signed("allow", PROTO_TYPE_LOAD_ALLOW, &al.base, allow_key, NULL, 0, &allow_env_len);

    uint8_t *al_body = NULL;
    size_t al_len = 0;
    assert_int_equal(proto_pack(&al.base, &al_body, &al_len), 0);
    uint8_t allow_digest[PROTO_DIGEST_SIZE];
    assert_int_equal(proto_sha256(al_body, al_len, allow_digest), 0);
    Quancun__ExecutionReport er = QUANCUN__EXECUTION_REPORT__INIT;
    er.txn_id = rq.txn_id;
    er.device_id = rq.device_id;
    er.account_id = rq.account_id;
    er.counter_after = rq.counter + 1;
    er.status = QUANCUN__REPORT_STATUS__REPORT_APPLIED;
    er.reason = "";
    er.balance_after = rq.balance_before + rq.amount;
    er.allow_digest = (ProtobufCBinaryData){sizeof allow_digest, allow_digest};
    size_t rep_env_len = 0;
    uint8_t *rep_env = put_signed("report", PROTO_TYPE_EXECUTION_REPORT, &er.base, dev, cert,
                                  cert_len, &rep_env_len);

    Quancun__LoadOutcome oc = QUANCUN__LOAD_OUTCOME__INIT;
    oc.txn_id = rq.txn_id;
    oc.device_id = rq.device_id;
    oc.state = QUANCUN__LOAD_STATE__LOAD_CONFIRMED;
    oc.amount = rq.amount;
    oc.currency = rq.currency;
    oc.reason = "";
    oc.host_time_ms = 1796000000400ULL;
    size_t out_env_len = 0;
    uint8_t *out_env = put_signed("outcome", PROTO_TYPE_LOAD_OUTCOME, &oc.base, outcome_key, NULL,
                                  0, &out_env_len);

    Quancun__Rpc call = QUANCUN__RPC__INIT;
    call.request_id = 1;
    call.method = "load";
    call.deadline_ms = 0;
    call.timeout_ms = 30000; /* the call's budget, not a clock reading */
    call.body = (ProtobufCBinaryData){req_env_len, req_env};
    put_frame("rpc.load", &call.base);
    Quancun__RpcReply ok = QUANCUN__RPC_REPLY__INIT;
    ok.request_id = 1;
    ok.body = (ProtobufCBinaryData){allow_env_len, allow_env};
    put_frame("rpc.load_reply", &ok.base);
    call.request_id = 2;
    call.method = "report";
    call.body = (ProtobufCBinaryData){rep_env_len, rep_env};
    put_frame("rpc.report", &call.base);
    ok.request_id = 2;
    ok.body = (ProtobufCBinaryData){out_env_len, out_env};
    put_frame("rpc.report_reply", &ok.base);

    put_refusal(1, 1, QC_EFUNDS, "insufficient funds", 0);
    put_refusal(2, 1, QC_ESTATE, "the load is already settled: LOAD_COMPENSATED",
                QUANCUN__LOAD_STATE__LOAD_COMPENSATED);
    put_refusal(3, 1, QC_EBUSY, "busy, try again", 0);
    put_refusal(4, 1, QC_ECERTREVOKED, "certificate revoked", 0);

    /* Envelopes that must be refused. */
    uint8_t bad[VEC_BYTES_MAX];
    assert_true(req_env_len + 16 <= sizeof bad);
    wire_fields_reverse(req_env, req_env_len, bad);
    put_bad(1, "the request envelope with its fields in reverse order", bad, req_env_len,
            QC_EDECODE);
    static const uint8_t garbage_sig[] = {0x2a, 0x08, 0x30, 0x06, 0x02,
                                          0x01, 0x01, 0x02, 0x01, 0x02};
    memcpy(bad, garbage_sig, sizeof garbage_sig);
    memcpy(bad + sizeof garbage_sig, req_env, req_env_len);
    put_bad(2, "a garbage signature field, then the valid request envelope", bad,
            sizeof garbage_sig + req_env_len, QC_EDECODE);
    Quancun__Signed *s = quancun__signed__unpack(NULL, req_env_len, req_env);
    assert_non_null(s);
    uint8_t raw[PROTO_SIG_RAW_SIZE];
    assert_int_equal(proto_ecdsa_der_to_raw(s->signature.data, s->signature.len, raw), 0);
    /* The high-S twin: s' = n - s, from the low-S raw, by making it high again. */
    static const uint8_t n[32] = {0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
                                  0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17,
                                  0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51};
    unsigned borrow = 0;
    for (int i = 31; i >= 0; i--) {
        unsigned d = (unsigned)n[i] - raw[32 + i] - borrow;
        raw[32 + i] = (uint8_t)d;
        borrow = (d >> 8) & 1u;
    }
    uint8_t twin[PROTO_SIG_DER_MAX];
    size_t twin_len = 0;
    assert_int_equal(proto_ecdsa_raw_to_der(raw, twin, sizeof twin, &twin_len), 0);
    ProtobufCBinaryData kept = s->signature;
    s->signature = (ProtobufCBinaryData){twin_len, twin};
    size_t twin_env_len = quancun__signed__pack(s, bad);
    s->signature = kept;
    quancun__signed__free_unpacked(s, NULL);
    put_bad(3, "the request envelope with the high-S twin of its signature", bad, twin_env_len,
            QC_EBADSIG);

    assert_int_equal(fclose(gen_out), 0);
    free(req_env);
    free(allow_env);
    free(rep_env);
    free(out_env);
    free(rq_body);
    free(al_body);
    free(cert);
    X509_free(ca);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(dev);
    EVP_PKEY_free(allow_key);
    EVP_PKEY_free(outcome_key);
}

/* ------------------------------------------------------------------ checking */

static void load_vectors(void)
{
    char path[VEC_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/v1.txt", vec_dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    static char line[VEC_LINE_MAX];
    while (fgets(line, sizeof line, f) != NULL) {
        char *end = strchr(line, '\n');
        assert_non_null(end); /* no line over the limit: fgets kept its newline */
        *end = '\0';
        if (line[0] == '#' || line[0] == '\0')
            continue;
        char *sep = strstr(line, ": ");
        assert_non_null(sep);
        assert_true(vec_count < VEC_LINES_MAX);
        *sep = '\0';
        vec[vec_count].name = strdup(line);
        vec[vec_count].value = strdup(sep + 2);
        assert_non_null(vec[vec_count].name);
        assert_non_null(vec[vec_count].value);
        vec_count++;
    }
    assert_int_equal(fclose(f), 0);
    assert_true(vec_count > 0);
}

static const char *get(const char *name)
{
    for (int i = 0; i < vec_count; i++)
        if (strcmp(vec[i].name, name) == 0)
            return vec[i].value;
    fail_msg("vector %s missing", name);
    return NULL;
}

static const char *getf(const char *prefix, const char *field)
{
    char name[128];
    snprintf(name, sizeof name, "%s.%s", prefix, field);
    return get(name);
}

/* The bytes of a hex vector, malloc'd into *out. */
static size_t get_bytes(const char *prefix, const char *field, uint8_t **out)
{
    const char *h = getf(prefix, field);
    size_t len = strlen(h) / 2;
    assert_int_equal(strlen(h), 2 * len);
    *out = malloc(len > 0 ? len : 1);
    assert_non_null(*out);
    assert_int_equal(ops_unhex(h, *out, len), 0);
    return len;
}

static EVP_PKEY *load_key(const char *file)
{
    char path[VEC_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", vec_dir, file);
    EVP_PKEY *key = NULL;
    assert_int_equal(proto_key_load_pem(path, &key), 0);
    return key;
}

static void expect_key_id(const char *name, EVP_PKEY *key)
{
    uint8_t id[PROTO_KEY_ID_SIZE];
    assert_int_equal(proto_key_id(key, id), 0);
    char h[2 * PROTO_KEY_ID_SIZE + 1];
    assert_string_equal(get(name), ops_hex(id, sizeof id, h));
}

/* Every field of msg reads as listed under prefix. */
static void expect_fields(const char *prefix, const ProtobufCMessage *msg)
{
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        static char text[VEC_LINE_MAX];
        field_text(msg, &d->fields[i], text, sizeof text);
        assert_string_equal(getf(prefix, d->fields[i].name), text);
    }
}

typedef int (*decode_fn)(const uint8_t *bytes, size_t len, ProtobufCMessage **out);
#define ADAPT(name, type)                                                                          \
    static int dec_##name(const uint8_t *bytes, size_t len, ProtobufCMessage **out)                \
    {                                                                                              \
        type *m = NULL;                                                                            \
        int rc = proto_decode_##name(bytes, len, &m);                                              \
        *out = m != NULL ? &m->base : NULL;                                                        \
        return rc;                                                                                 \
    }
ADAPT(load_request, Quancun__LoadRequest)
ADAPT(load_allow, Quancun__LoadAllow)
ADAPT(execution_report, Quancun__ExecutionReport)
ADAPT(load_outcome, Quancun__LoadOutcome)
ADAPT(rpc, Quancun__Rpc)
ADAPT(rpc_reply, Quancun__RpcReply)

static void expect_signed(const char *prefix, proto_type_t type, decode_fn dec, EVP_PKEY *key,
                          const char *cert_name)
{
    uint8_t *body = NULL, *si = NULL, *digest = NULL, *sig = NULL, *env_bytes = NULL, *sha = NULL;
    size_t body_len = get_bytes(prefix, "body", &body);
    ProtobufCMessage *msg = NULL;
    assert_int_equal(dec(body, body_len, &msg), 0);
    expect_fields(prefix, msg);
    protobuf_c_message_free_unpacked(msg, NULL);

    /* The signature input: the context, one 0x00, the body. */
    size_t si_len = get_bytes(prefix, "signature_input", &si);
    const char *ctx = proto_type_context(type);
    assert_int_equal(si_len, strlen(ctx) + 1 + body_len);
    assert_memory_equal(si, ctx, strlen(ctx));
    assert_int_equal(si[strlen(ctx)], 0x00);
    assert_memory_equal(si + strlen(ctx) + 1, body, body_len);
    uint8_t want[PROTO_DIGEST_SIZE], mine[PROTO_DIGEST_SIZE];
    assert_int_equal(get_bytes(prefix, "digest", &digest), PROTO_DIGEST_SIZE);
    assert_int_equal(proto_sha256(si, si_len, want), 0);
    assert_memory_equal(digest, want, PROTO_DIGEST_SIZE);
    assert_int_equal(proto_envelope_digest(type, body, body_len, mine), 0);
    assert_memory_equal(digest, mine, PROTO_DIGEST_SIZE);
    assert_int_equal(get_bytes(prefix, "body_sha256", &sha), PROTO_DIGEST_SIZE);
    assert_int_equal(proto_sha256(body, body_len, want), 0);
    assert_memory_equal(sha, want, PROTO_DIGEST_SIZE);

    /* The signature: low S, and it verifies inside the listed envelope. */
    size_t sig_len = get_bytes(prefix, "signature", &sig);
    uint8_t raw[PROTO_SIG_RAW_SIZE];
    assert_int_equal(proto_ecdsa_der_to_raw(sig, sig_len, raw), 0);
    assert_true(proto_ecdsa_raw_is_low_s(raw));
    size_t env_len = get_bytes(prefix, "envelope", &env_bytes);
    proto_envelope_t *env = NULL;
    assert_int_equal(proto_envelope_open(env_bytes, env_len, &env), 0);
    assert_int_equal(proto_envelope_verify(env, type, key), 0);
    size_t got_len = 0;
    const uint8_t *got = proto_envelope_body(env, &got_len);
    assert_int_equal(got_len, body_len);
    assert_memory_equal(got, body, body_len);
    assert_int_equal(proto_envelope_key_version(env), 1);
    proto_envelope_destroy(&env);

    /* Sealing the listed parts gives the envelope byte for byte. */
    uint8_t key_id[PROTO_KEY_ID_SIZE];
    assert_int_equal(proto_key_id(key, key_id), 0);
    uint8_t *cert = NULL;
    size_t cert_len = cert_name != NULL ? get_bytes(cert_name, "cert", &cert) : 0;
    uint8_t *sealed = NULL;
    size_t sealed_len = 0;
    assert_int_equal(proto_envelope_seal(body, body_len, key_id, 1, sig, sig_len, cert, cert_len,
                                         &sealed, &sealed_len),
                     0);
    assert_int_equal(sealed_len, env_len);
    assert_memory_equal(sealed, env_bytes, env_len);
    free(sealed);
    free(cert);
    free(body);
    free(si);
    free(digest);
    free(sig);
    free(env_bytes);
    free(sha);
}

static void expect_frame(const char *prefix, decode_fn dec)
{
    uint8_t *frame = NULL;
    size_t len = get_bytes(prefix, "frame", &frame);
    ProtobufCMessage *msg = NULL;
    assert_int_equal(dec(frame, len, &msg), 0);
    expect_fields(prefix, msg);
    protobuf_c_message_free_unpacked(msg, NULL);
    free(frame);
}

static void test_keys_and_messages(void **state)
{
    (void)state;
    EVP_PKEY *dev = load_key("device.key.pem");
    EVP_PKEY *allow = load_key("allow.key.pem");
    EVP_PKEY *outcome = load_key("outcome.key.pem");
    expect_key_id("device.key_id", dev);
    expect_key_id("allow.key_id", allow);
    expect_key_id("outcome.key_id", outcome);
    /* The device certificate's key is the device key, and its CN the device id. */
    uint8_t *cert = NULL;
    size_t cert_len = get_bytes("device", "cert", &cert);
    const uint8_t *p = cert;
    X509 *x = d2i_X509(NULL, &p, (long)cert_len);
    assert_non_null(x);
    assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(x), dev), 1);
    char cn[PROTO_DEVICE_ID_MAX + 1];
    assert_true(X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof cn) >
                0);
    assert_string_equal(cn, get("request.device_id"));
    X509_free(x);
    free(cert);

    expect_signed("request", PROTO_TYPE_LOAD_REQUEST, dec_load_request, dev, "device");
    expect_signed("allow", PROTO_TYPE_LOAD_ALLOW, dec_load_allow, allow, NULL);
    expect_signed("report", PROTO_TYPE_EXECUTION_REPORT, dec_execution_report, dev, "device");
    expect_signed("outcome", PROTO_TYPE_LOAD_OUTCOME, dec_load_outcome, outcome, NULL);
    /* The digests chain: the allow names the request, the report the allow. */
    assert_string_equal(get("allow.request_digest"), get("request.body_sha256"));
    assert_string_equal(get("report.allow_digest"), get("allow.body_sha256"));
    EVP_PKEY_free(dev);
    EVP_PKEY_free(allow);
    EVP_PKEY_free(outcome);
}

static void test_frames(void **state)
{
    (void)state;
    expect_frame("rpc.load", dec_rpc);
    expect_frame("rpc.load_reply", dec_rpc_reply);
    expect_frame("rpc.report", dec_rpc);
    expect_frame("rpc.report_reply", dec_rpc_reply);
    assert_string_equal(get("rpc.load.body"), get("request.envelope"));
    assert_string_equal(get("rpc.load_reply.body"), get("allow.envelope"));
    assert_string_equal(get("rpc.report.body"), get("report.envelope"));
    assert_string_equal(get("rpc.report_reply.body"), get("outcome.envelope"));
    for (int n = 1;; n++) {
        char prefix[32], name[64];
        snprintf(prefix, sizeof prefix, "refusal.%d", n);
        snprintf(name, sizeof name, "%s.frame", prefix);
        bool found = false;
        for (int i = 0; i < vec_count && !found; i++)
            found = strcmp(vec[i].name, name) == 0;
        if (!found) {
            assert_true(n > 1);
            break;
        }
        expect_frame(prefix, dec_rpc_reply);
        assert_string_equal(getf(prefix, "code_name"), qc_errname(atoi(getf(prefix, "code"))));
    }
}

static void test_refused_envelopes(void **state)
{
    (void)state;
    EVP_PKEY *dev = load_key("device.key.pem");
    int count = 0;
    for (int i = 0; i < vec_count; i++) {
        size_t len = strlen(vec[i].name);
        if (strncmp(vec[i].name, "bad.", 4) != 0 || len < 9 ||
            strcmp(vec[i].name + len - 9, ".envelope") != 0)
            continue;
        char prefix[32];
        snprintf(prefix, sizeof prefix, "%.*s", (int)(len - 9), vec[i].name);
        uint8_t *bytes = NULL;
        size_t n = get_bytes(prefix, "envelope", &bytes);
        proto_envelope_t *env = NULL;
        int rc = proto_envelope_open(bytes, n, &env);
        if (rc == 0)
            rc = proto_envelope_verify(env, PROTO_TYPE_LOAD_REQUEST, dev);
        proto_envelope_destroy(&env);
        assert_string_equal(qc_errname(rc), getf(prefix, "expect"));
        /* protobuf-c alone would take each of them: the rule is ours. */
        Quancun__Signed *s = quancun__signed__unpack(NULL, n, bytes);
        assert_non_null(s);
        quancun__signed__free_unpacked(s, NULL);
        free(bytes);
        count++;
    }
    assert_true(count >= 3);
    EVP_PKEY_free(dev);
}

/* Every vector line is in docs/PROTOCOL.md, verbatim. */
static void test_document_carries_them(void **state)
{
    (void)state;
    FILE *f = fopen(doc_path, "r");
    assert_non_null(f);
    char *doc = malloc(VEC_DOC_MAX + 1);
    assert_non_null(doc);
    size_t n = fread(doc, 1, VEC_DOC_MAX, f);
    assert_true(n < VEC_DOC_MAX);
    doc[n] = '\0';
    fclose(f);
    for (int i = 0; i < vec_count; i++) {
        char line[VEC_LINE_MAX + 256];
        snprintf(line, sizeof line, "%s: %s\n", vec[i].name, vec[i].value);
        if (strstr(doc, line) == NULL)
            fail_msg("docs/PROTOCOL.md lacks the vector line \"%s: ...\"", vec[i].name);
    }
    free(doc);
}

int main(int argc, char **argv)
{
    const char *src = getenv("QC_SOURCE_DIR");
    if (src == NULL)
        src = QC_SOURCE_DIR_DEFAULT;
    snprintf(vec_dir, sizeof vec_dir, "%s/docs/vectors", src);
    snprintf(doc_path, sizeof doc_path, "%s/docs/PROTOCOL.md", src);
    if (argc == 3 && strcmp(argv[1], "--generate") == 0) {
        snprintf(vec_dir, sizeof vec_dir, "%s", argv[2]);
        generate();
        return 0;
    }
    load_vectors();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys_and_messages),
        cmocka_unit_test(test_frames),
        cmocka_unit_test(test_refused_envelopes),
        cmocka_unit_test(test_document_carries_them),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    for (int i = 0; i < vec_count; i++) {
        free(vec[i].name);
        free(vec[i].value);
    }
    return rc;
}
