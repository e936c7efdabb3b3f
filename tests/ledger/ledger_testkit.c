/* ledger_testkit.c - keys, certificates and signed load messages for the ledger's tests. */
#include "ledger_testkit.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "proto_decode.h"
#include "proto_envelope.h"

#define TK_CERT_DAYS 30
#define TK_DEADLINE_MS 60000

static void die(const char *what)
{
    fprintf(stderr, "testkit: %s failed\n", what);
    abort();
}

EVP_PKEY *tk_key_new(void)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    if (k == NULL)
        die("EVP_EC_gen");
    return k;
}

static X509 *make_cert(EVP_PKEY *key, const char *cn)
{
    X509 *x = X509_new();
    if (x == NULL)
        die("X509_new");
    ASN1_INTEGER_set(X509_get_serialNumber(x), (long)(tk_now_ms() & 0x7fffffff));
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), (long)TK_CERT_DAYS * 86400);
    X509_NAME *name = X509_get_subject_name(x);
    if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1,
                                   0) != 1 ||
        X509_set_issuer_name(x, name) != 1 || X509_set_pubkey(x, key) != 1 ||
        X509_sign(x, key, EVP_sha256()) <= 0)
        die("cert");
    return x;
}

void tk_cert_new(EVP_PKEY *key, const char *cn, uint8_t **der, size_t *der_len)
{
    X509 *x = make_cert(key, cn);
    unsigned char *buf = NULL;
    int n = i2d_X509(x, &buf);
    if (n <= 0)
        die("i2d_X509");
    *der = malloc((size_t)n);
    memcpy(*der, buf, (size_t)n);
    *der_len = (size_t)n;
    OPENSSL_free(buf);
    X509_free(x);
}

static void add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (ext == NULL || X509_add_ext(cert, ext, -1) != 1)
        die("extension");
    X509_EXTENSION_free(ext);
}

static X509 *issue(EVP_PKEY *key, const char *cn, EVP_PKEY *ca_key, X509 *ca, bool is_ca)
{
    X509 *x = X509_new();
    if (x == NULL || X509_set_version(x, X509_VERSION_3) != 1)
        die("X509_new");
    ASN1_INTEGER_set(X509_get_serialNumber(x), (long)(tk_now_ms() & 0x7fffffff));
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), (long)TK_CERT_DAYS * 86400);
    X509_NAME *name = X509_get_subject_name(x);
    if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1,
                                   0) != 1 ||
        X509_set_pubkey(x, key) != 1 ||
        X509_set_issuer_name(x, X509_get_subject_name(ca != NULL ? ca : x)) != 1)
        die("cert");
    X509 *iss = ca != NULL ? ca : x;
    add_ext(x, iss, NID_basic_constraints, is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
    add_ext(x, iss, NID_key_usage,
            is_ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
    if (X509_sign(x, ca_key, EVP_sha256()) <= 0)
        die("X509_sign");
    return x;
}

void tk_ca_new(const char *pem_path, EVP_PKEY **ca_key, X509 **ca_cert)
{
    *ca_key = tk_key_new();
    *ca_cert = issue(*ca_key, "quancun test CA", *ca_key, NULL, true);
    FILE *f = fopen(pem_path, "w");
    if (f == NULL || PEM_write_X509(f, *ca_cert) != 1)
        die("write CA");
    fclose(f);
}

void tk_cert_issued(EVP_PKEY *key, const char *cn, EVP_PKEY *ca_key, X509 *ca_cert, uint8_t **der,
                    size_t *der_len)
{
    X509 *x = issue(key, cn, ca_key, ca_cert, false);
    unsigned char *buf = NULL;
    int n = i2d_X509(x, &buf);
    if (n <= 0)
        die("i2d_X509");
    *der = malloc((size_t)n);
    memcpy(*der, buf, (size_t)n);
    *der_len = (size_t)n;
    OPENSSL_free(buf);
    X509_free(x);
}

void tk_write_pub_pem(EVP_PKEY *key, const char *path)
{
    FILE *f = fopen(path, "w");
    if (f == NULL || PEM_write_PUBKEY(f, key) != 1)
        die("write pubkey");
    fclose(f);
}

void tk_write_cert_pem(EVP_PKEY *key, const char *cn, const char *path)
{
    X509 *x = make_cert(key, cn);
    FILE *f = fopen(path, "w");
    if (f == NULL || PEM_write_X509(f, x) != 1)
        die("write cert");
    fclose(f);
    X509_free(x);
}

void tk_txn_id(uint8_t txn_id[16])
{
    if (RAND_bytes(txn_id, 16) != 1)
        die("RAND_bytes");
}

uint64_t tk_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
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
    r.device_time_ms = tk_now_ms();
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

void tk_allow_fields(EVP_PKEY *bank, const tk_load_t *l, const uint8_t *req, size_t req_len,
                     uint64_t deadline_ms, uint8_t **out, size_t *out_len)
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
    a.host_time_ms = deadline_ms > TK_DEADLINE_MS ? deadline_ms - TK_DEADLINE_MS : 1;
    a.deadline_ms = deadline_ms;
    sign(PROTO_TYPE_LOAD_ALLOW, &a.base, bank, out, out_len);
}

void tk_allow(EVP_PKEY *bank, const uint8_t *req, size_t req_len, uint64_t deadline_ms,
              uint8_t **out, size_t *out_len)
{
    proto_envelope_t *env = NULL;
    Quancun__LoadRequest *r = NULL;
    size_t len = 0;
    if (proto_envelope_open(req, req_len, &env) != 0)
        die("open request");
    const uint8_t *body = proto_envelope_body(env, &len);
    if (proto_decode_load_request(body, len, &r) != 0)
        die("decode request");
    tk_load_t l = {.device_id = r->device_id,
                   .account_id = r->account_id,
                   .amount = r->amount,
                   .currency = r->currency,
                   .counter = r->counter};
    memcpy(l.txn_id, r->txn_id.data, 16);
    tk_allow_fields(bank, &l, req, req_len, deadline_ms, out, out_len);
    quancun__load_request__free_unpacked(r, NULL);
    proto_envelope_destroy(&env);
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
