/* wallet_test_bank.c - the in-test bank of the wallet tests (see wallet_test_bank.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "wallet_test_bank.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "ops_time.h"
#include "proto_envelope.h"
#include "qc_error.h"
#include "qctest_fs.h"
#include "qctest_key.h"
#include "wallet_store.h"

#define WT_DEADLINE_MS 60000

wt_bank_t *wt_bank_new(void)
{
    wt_bank_t *b = calloc(1, sizeof(*b));
    assert_non_null(b);
    assert_int_equal(qctest_dir_new("qc-wallet-test", b->dir), 0);
    snprintf(b->home, sizeof(b->home), "%s/home", b->dir);
    b->ca = qctest_key_new();
    b->allow_key = qctest_key_new();
    b->outcome_key = qctest_key_new();
    b->other_key = qctest_key_new();
    return b;
}

void wt_bank_free(wt_bank_t *b)
{
    if (b == NULL)
        return;
    assert_int_equal(qctest_dir_remove(b->dir), 0);
    EVP_PKEY_free(b->ca);
    EVP_PKEY_free(b->allow_key);
    EVP_PKEY_free(b->outcome_key);
    EVP_PKEY_free(b->other_key);
    free(b);
}

void wt_issue_cert(wt_bank_t *b, const char *out_path)
{
    char path[WT_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%s", b->home, WALLET_CSR_FILE);
    qctest_cert_from_csr(path, b->ca, "test CA", out_path);
}

wallet_device_t *wt_device_ready(wt_bank_t *b, const char *serial)
{
    assert_int_equal(wallet_device_init(b->home, serial, WT_PIN, strlen(WT_PIN)), 0);
    wallet_device_t *dev = NULL;
    assert_int_equal(wallet_device_open(b->home, &dev), 0);
    char cert[WT_PATH_MAX + 64], allow[WT_PATH_MAX + 64], outcome[WT_PATH_MAX + 64];
    snprintf(cert, sizeof(cert), "%s/issued.pem", b->dir);
    snprintf(allow, sizeof(allow), "%s/allow.pub", b->dir);
    snprintf(outcome, sizeof(outcome), "%s/outcome.pub", b->dir);
    wt_issue_cert(b, cert);
    qctest_write_pubkey(allow, b->allow_key);
    qctest_write_pubkey(outcome, b->outcome_key);
    assert_int_equal(wallet_device_install_cert(dev, cert), 0);
    assert_int_equal(wallet_device_install_bank(dev, allow, outcome), 0);
    return dev;
}

/* Opens a signed envelope and verifies it with the key of its certificate. */
static const uint8_t *open_device_signed(const uint8_t *bytes, size_t len, proto_type_t type,
                                         EVP_PKEY *device_key, proto_envelope_t **env,
                                         size_t *body_len)
{
    assert_int_equal(proto_envelope_open(bytes, len, env), 0);
    assert_int_equal(proto_envelope_verify(*env, type, device_key), 0);
    return proto_envelope_body(*env, body_len);
}

static EVP_PKEY *device_pub(wt_bank_t *b)
{
    char path[WT_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%s", b->home, WALLET_CERT_FILE);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    X509 *cert = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(cert);
    EVP_PKEY *pub = X509_get_pubkey(cert);
    X509_free(cert);
    assert_non_null(pub);
    return pub;
}

Quancun__LoadRequest *wt_open_request(wt_bank_t *b, const uint8_t *req, size_t len)
{
    EVP_PKEY *pub = device_pub(b);
    proto_envelope_t *env = NULL;
    size_t body_len = 0;
    const uint8_t *body =
        open_device_signed(req, len, PROTO_TYPE_LOAD_REQUEST, pub, &env, &body_len);
    size_t cert_len = 0;
    assert_non_null(proto_envelope_cert(env, &cert_len)); /* devices send their certificate */
    Quancun__LoadRequest *r = quancun__load_request__unpack(NULL, body_len, body);
    assert_non_null(r);
    proto_envelope_destroy(&env);
    EVP_PKEY_free(pub);
    return r;
}

Quancun__ExecutionReport *wt_open_report(wt_bank_t *b, const uint8_t *report, size_t len)
{
    EVP_PKEY *pub = device_pub(b);
    proto_envelope_t *env = NULL;
    size_t body_len = 0;
    const uint8_t *body =
        open_device_signed(report, len, PROTO_TYPE_EXECUTION_REPORT, pub, &env, &body_len);
    size_t cert_len = 0;
    assert_non_null(proto_envelope_cert(env, &cert_len)); /* for a stateless gateway */
    Quancun__ExecutionReport *r = quancun__execution_report__unpack(NULL, body_len, body);
    assert_non_null(r);
    proto_envelope_destroy(&env);
    EVP_PKEY_free(pub);
    return r;
}

static void sign_body(proto_type_t type, const ProtobufCMessage *msg, EVP_PKEY *key, uint8_t **out,
                      size_t *out_len)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t *body = malloc(len);
    assert_non_null(body);
    assert_int_equal(protobuf_c_message_pack(msg, body), len);
    assert_int_equal(proto_envelope_sign(type, body, len, key, 1, NULL, 0, out, out_len), 0);
    free(body);
}

void wt_make_allow(wt_bank_t *b, const uint8_t *req, size_t req_len, wt_allow_tweak_fn *tweak,
                   EVP_PKEY *key, uint8_t **out, size_t *out_len)
{
    proto_envelope_t *env = NULL;
    assert_int_equal(proto_envelope_open(req, req_len, &env), 0);
    size_t body_len = 0;
    const uint8_t *body = proto_envelope_body(env, &body_len);
    Quancun__LoadRequest *r = quancun__load_request__unpack(NULL, body_len, body);
    assert_non_null(r);
    uint8_t digest[PROTO_DIGEST_SIZE];
    assert_int_equal(proto_sha256(body, body_len, digest), 0);

    Quancun__LoadAllow a = QUANCUN__LOAD_ALLOW__INIT;
    uint8_t txn[DEVICE_TXN_SIZE];
    assert_int_equal(r->txn_id.len, sizeof(txn));
    memcpy(txn, r->txn_id.data, sizeof(txn));
    a.txn_id.data = txn;
    a.txn_id.len = sizeof(txn);
    a.device_id = r->device_id;
    a.amount = r->amount;
    a.currency = r->currency;
    a.counter = r->counter;
    a.request_digest.data = digest;
    a.request_digest.len = sizeof(digest);
    a.host_time_ms = ops_time_wall_ms();
    a.deadline_ms = a.host_time_ms + WT_DEADLINE_MS;
    a.account_id = r->account_id;
    if (tweak != NULL)
        tweak(&a);
    sign_body(PROTO_TYPE_LOAD_ALLOW, &a.base, key != NULL ? key : b->allow_key, out, out_len);
    quancun__load_request__free_unpacked(r, NULL);
    proto_envelope_destroy(&env);
}

void wt_make_outcome(wt_bank_t *b, const uint8_t *msg, size_t msg_len, bool is_request,
                     Quancun__LoadState state, EVP_PKEY *key, uint8_t **out, size_t *out_len)
{
    proto_envelope_t *env = NULL;
    assert_int_equal(proto_envelope_open(msg, msg_len, &env), 0);
    size_t body_len = 0;
    const uint8_t *body = proto_envelope_body(env, &body_len);
    uint8_t txn[DEVICE_TXN_SIZE];
    char device[DEVICE_SERIAL_MAX + 1];
    if (is_request) {
        Quancun__LoadRequest *r = quancun__load_request__unpack(NULL, body_len, body);
        assert_non_null(r);
        memcpy(txn, r->txn_id.data, sizeof(txn));
        snprintf(device, sizeof(device), "%s", r->device_id);
        quancun__load_request__free_unpacked(r, NULL);
    } else {
        Quancun__ExecutionReport *r = quancun__execution_report__unpack(NULL, body_len, body);
        assert_non_null(r);
        memcpy(txn, r->txn_id.data, sizeof(txn));
        snprintf(device, sizeof(device), "%s", r->device_id);
        quancun__execution_report__free_unpacked(r, NULL);
    }
    Quancun__LoadOutcome o = QUANCUN__LOAD_OUTCOME__INIT;
    o.txn_id.data = txn;
    o.txn_id.len = sizeof(txn);
    o.device_id = device;
    o.state = state;
    o.host_time_ms = ops_time_wall_ms();
    sign_body(PROTO_TYPE_LOAD_OUTCOME, &o.base, key != NULL ? key : b->outcome_key, out, out_len);
    proto_envelope_destroy(&env);
}

int wt_log_count(wt_bank_t *b, const char *needle)
{
    char path[WT_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%s", b->home, DEVICE_LOG_FILE);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    char line[DEVICE_LOG_LINE_MAX + 2];
    int n = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strstr(line, needle) != NULL)
            n++;
    }
    fclose(f);
    return n;
}
