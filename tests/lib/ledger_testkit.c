/* ledger_testkit.c - signed load messages for the tests (see ledger_testkit.h). */
#include "ledger_testkit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "ops_time.h"
#include "proto_decode.h"
#include "proto_envelope.h"

#define TK_DEADLINE_MS 60000

static void die(const char *what)
{
    fprintf(stderr, "testkit: %s failed\n", what);
    abort();
}

void tk_txn_id(uint8_t txn_id[16])
{
    if (RAND_bytes(txn_id, 16) != 1)
        die("RAND_bytes");
}

static void sign(proto_type_t type, const ProtobufCMessage *msg, EVP_PKEY *key, uint8_t **out,
                 size_t *out_len)
{
    uint8_t *body = NULL;
    size_t len = 0;
    if (proto_pack(msg, &body, &len) != 0 ||
        proto_envelope_sign(type, body, len, key, 1, NULL, 0, out, out_len) != 0)
        die("sign");
    free(body);
}

void tk_request(EVP_PKEY *key, const tk_load_t *l, uint8_t **out, size_t *out_len)
{
    Quancun__LoadRequest r = QUANCUN__LOAD_REQUEST__INIT;
    uint8_t nonce[16];
    tk_txn_id(nonce);
    r.txn_id.data = (uint8_t *)l->txn_id;
    r.txn_id.len = 16;
    r.device_id = (char *)l->device_id;
    r.account_id = (char *)l->account_id;
    r.amount = l->amount;
    r.currency = l->currency ? l->currency : TK_CURRENCY;
    r.balance_before = l->balance_before;
    r.counter = l->counter;
    r.key_version = 1;
    r.alg = QUANCUN__ALG__ALG_ECDSA_P256_SHA256;
    r.nonce.data = nonce;
    r.nonce.len = sizeof nonce;
    r.device_time_ms = ops_time_wall_ms();
    sign(PROTO_TYPE_LOAD_REQUEST, &r.base, key, out, out_len);
}

static void request_digest(const uint8_t *req, size_t req_len, uint8_t digest[32])
{
    proto_envelope_t *env = NULL;
    size_t len = 0;
    if (proto_envelope_open(req, req_len, &env) != 0)
        die("open request");
    const uint8_t *body = proto_envelope_body(env, &len);
    if (proto_sha256(body, len, digest) != 0)
        die("sha256");
    proto_envelope_destroy(&env);
}

static void allow_fields_at(EVP_PKEY *bank, const tk_load_t *l, const uint8_t *req, size_t req_len,
                            uint64_t host_time_ms, uint64_t deadline_ms, uint8_t **out,
                            size_t *out_len)
{
    uint8_t digest[32];
    request_digest(req, req_len, digest);
    Quancun__LoadAllow a = QUANCUN__LOAD_ALLOW__INIT;
    a.txn_id.data = (uint8_t *)l->txn_id;
    a.txn_id.len = 16;
    a.device_id = (char *)l->device_id;
    a.account_id = (char *)l->account_id;
    a.amount = l->amount;
    a.currency = l->currency ? l->currency : TK_CURRENCY;
    a.counter = l->counter;
    a.request_digest.data = digest;
    a.request_digest.len = sizeof digest;
    a.host_time_ms = host_time_ms;
    a.deadline_ms = deadline_ms;
    sign(PROTO_TYPE_LOAD_ALLOW, &a.base, bank, out, out_len);
}

void tk_allow_fields(EVP_PKEY *bank, const tk_load_t *l, const uint8_t *req, size_t req_len,
                     uint64_t deadline_ms, uint8_t **out, size_t *out_len)
{
    allow_fields_at(bank, l, req, req_len,
                    deadline_ms > TK_DEADLINE_MS ? deadline_ms - TK_DEADLINE_MS : 1, deadline_ms,
                    out, out_len);
}

/* The fields of the signed request req. */
static Quancun__LoadRequest *request_fields(const uint8_t *req, size_t req_len, tk_load_t *l)
{
    proto_envelope_t *env = NULL;
    Quancun__LoadRequest *r = NULL;
    size_t len = 0;
    if (proto_envelope_open(req, req_len, &env) != 0)
        die("open request");
    const uint8_t *body = proto_envelope_body(env, &len);
    if (proto_decode_load_request(body, len, &r) != 0)
        die("decode request");
    proto_envelope_destroy(&env);
    *l = (tk_load_t){.device_id = r->device_id,
                     .account_id = r->account_id,
                     .amount = r->amount,
                     .currency = r->currency,
                     .counter = r->counter};
    memcpy(l->txn_id, r->txn_id.data, 16);
    return r; /* owns the strings l points to */
}

void tk_allow(EVP_PKEY *bank, const uint8_t *req, size_t req_len, uint64_t deadline_ms,
              uint8_t **out, size_t *out_len)
{
    tk_load_t l;
    Quancun__LoadRequest *r = request_fields(req, req_len, &l);
    tk_allow_fields(bank, &l, req, req_len, deadline_ms, out, out_len);
    quancun__load_request__free_unpacked(r, NULL);
}

void tk_allow_at(EVP_PKEY *bank, const uint8_t *req, size_t req_len, uint64_t host_time_ms,
                 uint64_t deadline_ms, uint8_t **out, size_t *out_len)
{
    tk_load_t l;
    Quancun__LoadRequest *r = request_fields(req, req_len, &l);
    allow_fields_at(bank, &l, req, req_len, host_time_ms, deadline_ms, out, out_len);
    quancun__load_request__free_unpacked(r, NULL);
}

void tk_report(EVP_PKEY *key, const tk_load_t *l, uint64_t counter_after,
               Quancun__ReportStatus status, const uint8_t *allow, size_t allow_len, uint8_t **out,
               size_t *out_len)
{
    uint8_t digest[32];
    request_digest(allow, allow_len, digest); /* same computation: SHA-256 of the body */
    Quancun__ExecutionReport rep = QUANCUN__EXECUTION_REPORT__INIT;
    rep.txn_id.data = (uint8_t *)l->txn_id;
    rep.txn_id.len = 16;
    rep.device_id = (char *)l->device_id;
    rep.account_id = (char *)l->account_id;
    rep.counter_after = counter_after;
    rep.status = status;
    rep.reason = status == QUANCUN__REPORT_STATUS__REPORT_REJECTED ? "bad allow" : "";
    rep.balance_after =
        l->balance_before + (status == QUANCUN__REPORT_STATUS__REPORT_APPLIED ? l->amount : 0);
    rep.allow_digest.data = digest;
    rep.allow_digest.len = sizeof digest;
    sign(PROTO_TYPE_EXECUTION_REPORT, &rep.base, key, out, out_len);
}
