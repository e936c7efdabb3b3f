/* test_wallet_device.c - the device state machine against an in-test bank: the happy path,
 * every allow it must refuse (and report REJECTED), allows applied at most once, outcomes,
 * a damaged state file, and the operation log rewritten after a crash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ops_time.h"
#include "proto_envelope.h"
#include "qc_error.h"
#include "quancun.pb-c.h"
#include "wallet_device.h"
#include "wallet_store.h"
#include "wallet_test_bank.h"

#define AMOUNT 1234
#define CURRENCY 156
#define SERIAL "QCTEST0001"

typedef struct fixture {
    wt_bank_t *bank;
    wallet_device_t *dev;
    const uint8_t *req; /* borrowed from the device */
    size_t req_len;
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return -1;
    f->bank = wt_bank_new();
    f->dev = wt_device_ready(f->bank, SERIAL);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    wallet_device_destroy(&f->dev);
    wt_bank_free(f->bank);
    free(f);
    return 0;
}

/* PIN, then a signed request for AMOUNT. */
static void begin(fixture_t *f)
{
    assert_int_equal(device_core_verify_pin(wallet_device_core(f->dev), WT_PIN, strlen(WT_PIN)), 0);
    assert_int_equal(device_core_request(wallet_device_core(f->dev), WT_ACCOUNT, AMOUNT, CURRENCY,
                                         &f->req, &f->req_len),
                     0);
}

static void expect(const fixture_t *f, device_phase_t phase, int64_t balance, uint64_t counter)
{
    device_status_t s;
    device_core_status(wallet_device_core(f->dev), &s);
    assert_int_equal(s.phase, phase);
    assert_int_equal(s.balance, balance);
    assert_int_equal(s.counter, counter);
}

static void test_happy_path(void **state)
{
    fixture_t *f = *state;
    begin(f);
    expect(f, DEVICE_PENDING, 0, 0);

    /* The request says what the user confirmed, and carries the certificate. */
    Quancun__LoadRequest *r = wt_open_request(f->bank, f->req, f->req_len);
    assert_string_equal(r->device_id, SERIAL);
    assert_string_equal(r->account_id, WT_ACCOUNT);
    assert_int_equal(r->amount, AMOUNT);
    assert_int_equal(r->currency, CURRENCY);
    assert_int_equal(r->counter, 0);
    assert_int_equal(r->balance_before, 0);
    assert_int_equal(r->txn_id.len, DEVICE_TXN_SIZE);
    assert_int_equal(r->nonce.len, 16);
    assert_int_equal(r->alg, QUANCUN__ALG__ALG_ECDSA_P256_SHA256);
    quancun__load_request__free_unpacked(r, NULL);

    uint8_t *allow = NULL;
    size_t allow_len = 0;
    wt_make_allow(f->bank, f->req, f->req_len, NULL, NULL, &allow, &allow_len);
    int verdict = -999;
    assert_int_equal(
        device_core_judge_allow(wallet_device_core(f->dev), allow, allow_len, &verdict), 0);
    assert_int_equal(verdict, 0);
    expect(f, DEVICE_REPORTED, AMOUNT, 1);

    const uint8_t *rep = NULL;
    size_t rep_len = 0;
    assert_int_equal(device_core_report(wallet_device_core(f->dev), &rep, &rep_len), 0);
    Quancun__ExecutionReport *er = wt_open_report(f->bank, rep, rep_len);
    assert_int_equal(er->status, QUANCUN__REPORT_STATUS__REPORT_APPLIED);
    assert_int_equal(er->counter_after, 1);
    assert_int_equal(er->balance_after, AMOUNT);
    assert_string_equal(er->account_id, WT_ACCOUNT);
    /* allow_digest is SHA-256 of the allow's body. */
    proto_envelope_t *env = NULL;
    assert_int_equal(proto_envelope_open(allow, allow_len, &env), 0);
    size_t body_len = 0;
    const uint8_t *body = proto_envelope_body(env, &body_len);
    uint8_t digest[PROTO_DIGEST_SIZE];
    assert_int_equal(proto_sha256(body, body_len, digest), 0);
    assert_int_equal(er->allow_digest.len, PROTO_DIGEST_SIZE);
    assert_memory_equal(er->allow_digest.data, digest, PROTO_DIGEST_SIZE);
    proto_envelope_destroy(&env);
    quancun__execution_report__free_unpacked(er, NULL);

    uint8_t *oc = NULL;
    size_t oc_len = 0;
    wt_make_outcome(f->bank, rep, rep_len, false, QUANCUN__LOAD_STATE__LOAD_CONFIRMED, NULL, &oc,
                    &oc_len);
    int ls = 0;
    assert_int_equal(device_core_accept_outcome(wallet_device_core(f->dev), oc, oc_len, &ls), 0);
    assert_int_equal(ls, QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
    expect(f, DEVICE_IDLE, AMOUNT, 1);
    device_status_t s;
    device_core_status(wallet_device_core(f->dev), &s);
    assert_int_equal(s.last_outcome, QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
    /* A second outcome finds nothing to settle. */
    assert_int_equal(device_core_accept_outcome(wallet_device_core(f->dev), oc, oc_len, &ls),
                     QC_ESTATE);

    /* A second load starts from counter 1 and balance AMOUNT. */
    assert_int_equal(device_core_request(wallet_device_core(f->dev), WT_ACCOUNT, 100, CURRENCY,
                                         &f->req, &f->req_len),
                     0);
    r = wt_open_request(f->bank, f->req, f->req_len);
    assert_int_equal(r->counter, 1);
    assert_int_equal(r->balance_before, AMOUNT);
    quancun__load_request__free_unpacked(r, NULL);

    assert_int_equal(wt_log_count(f->bank, "\"load.requested\""), 2);
    assert_int_equal(wt_log_count(f->bank, "\"load.applied\""), 1);
    assert_int_equal(wt_log_count(f->bank, "\"load.outcome\""), 1);
    assert_int_equal(wt_log_count(f->bank, "CONFIRMED"), 1);
    free(allow);
    free(oc);
}

/* ------------------------------------------------------------------ refusals */

static void tweak_txn(Quancun__LoadAllow *a)
{
    a->txn_id.data[0] ^= 0x01;
}
static void tweak_counter(Quancun__LoadAllow *a)
{
    a->counter += 1;
}
static void tweak_digest(Quancun__LoadAllow *a)
{
    a->request_digest.data[5] ^= 0x80;
}
static void tweak_device(Quancun__LoadAllow *a)
{
    a->device_id = "QCSOMEONEELSE";
}
static void tweak_amount(Quancun__LoadAllow *a)
{
    a->amount += 1;
}
static void tweak_account(Quancun__LoadAllow *a)
{
    a->account_id = "acct-9999";
}
static void tweak_expired(Quancun__LoadAllow *a)
{
    a->deadline_ms = ops_time_wall_ms() - 1;
}

/* A window of 1 ms, spent by the time the device judges: timed by elapsed time on the device,
 * whatever the two clocks say (here the bank's deadline is still ahead of the device's). */
static void tweak_window_spent(Quancun__LoadAllow *a)
{
    a->host_time_ms = ops_time_wall_ms() + 60000;
    a->deadline_ms = a->host_time_ms + 1;
    usleep(5 * 1000); /* > 1 ms since the request, which was signed before this */
}

typedef struct refusal {
    const char *name;
    wt_allow_tweak_fn *tweak;
    int signer;  /* 0 bank allow key, 1 a stranger's key, 2 the outcome key */
    int corrupt; /* 1 flips a signature byte, 2 sends garbage */
    int verdict;
    const char *reason_has;
} refusal_t;

static const refusal_t refusals[] = {
    {"other txn", tweak_txn, 0, 0, QC_EMISMATCH, "transaction"},
    {"other counter", tweak_counter, 0, 0, QC_EMISMATCH, "counter"},
    {"wrong digest", tweak_digest, 0, 0, QC_EMISMATCH, "digest"},
    {"other device", tweak_device, 0, 0, QC_EMISMATCH, "device"},
    {"other amount", tweak_amount, 0, 0, QC_EMISMATCH, "amount"},
    {"other account", tweak_account, 0, 0, QC_EMISMATCH, "account"},
    {"deadline passed", tweak_expired, 0, 0, QC_EEXPIRED, "deadline"},
    {"window spent", tweak_window_spent, 0, 0, QC_EEXPIRED, "deadline"},
    {"stranger's key", NULL, 1, 0, QC_EKEYID, "not signed"},
    {"outcome key", NULL, 2, 0, QC_EKEYID, "not signed"},
    {"bad signature", NULL, 0, 1, QC_EBADSIG, "signature"},
    {"garbage", NULL, 0, 2, QC_EDECODE, "well-formed"},
};

/* Flips one byte inside the DER signature of an envelope (its last field but the cert). */
static void corrupt_signature(uint8_t *env, size_t len)
{
    /* Signed.signature is field 5 (tag 0x2a); find it from the end, where it is. */
    for (size_t i = len; i-- > 2;) {
        if (env[i - 2] == 0x2a && env[i] == 0x30) { /* tag, length, SEQUENCE */
            env[i + 10] ^= 0x01;
            return;
        }
    }
    fail_msg("no signature field found");
}

static void test_refusals(void **state)
{
    fixture_t *f = *state;
    for (size_t i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++) {
        const refusal_t *c = &refusals[i];
        /* A fresh device for each case: one judgement per pending load. */
        wallet_device_destroy(&f->dev);
        wt_bank_free(f->bank);
        f->bank = wt_bank_new();
        f->dev = wt_device_ready(f->bank, SERIAL);
        begin(f);

        uint8_t *allow = NULL;
        size_t allow_len = 0;
        EVP_PKEY *key = c->signer == 1   ? f->bank->other_key
                        : c->signer == 2 ? f->bank->outcome_key
                                         : NULL;
        wt_make_allow(f->bank, f->req, f->req_len, c->tweak, key, &allow, &allow_len);
        if (c->corrupt == 1)
            corrupt_signature(allow, allow_len);
        if (c->corrupt == 2)
            memset(allow, 0xee, allow_len);
        int verdict = 0;
        assert_int_equal(
            device_core_judge_allow(wallet_device_core(f->dev), allow, allow_len, &verdict), 0);
        if (verdict != c->verdict)
            fail_msg("%s: verdict %d, want %d", c->name, verdict, c->verdict);
        expect(f, DEVICE_REPORTED, 0, 0);

        const uint8_t *rep = NULL;
        size_t rep_len = 0;
        assert_int_equal(device_core_report(wallet_device_core(f->dev), &rep, &rep_len), 0);
        Quancun__ExecutionReport *er = wt_open_report(f->bank, rep, rep_len);
        assert_int_equal(er->status, QUANCUN__REPORT_STATUS__REPORT_REJECTED);
        assert_int_equal(er->counter_after, 0);
        assert_int_equal(er->balance_after, 0);
        if (strstr(er->reason, c->reason_has) == NULL)
            fail_msg("%s: reason \"%s\" lacks \"%s\"", c->name, er->reason, c->reason_has);
        quancun__execution_report__free_unpacked(er, NULL);

        /* The bank compensates; the device goes back to IDLE with nothing credited. */
        uint8_t *oc = NULL;
        size_t oc_len = 0;
        wt_make_outcome(f->bank, rep, rep_len, false, QUANCUN__LOAD_STATE__LOAD_COMPENSATED, NULL,
                        &oc, &oc_len);
        int ls = 0;
        assert_int_equal(device_core_accept_outcome(wallet_device_core(f->dev), oc, oc_len, &ls),
                         0);
        assert_int_equal(ls, QUANCUN__LOAD_STATE__LOAD_COMPENSATED);
        expect(f, DEVICE_IDLE, 0, 0);
        assert_int_equal(wt_log_count(f->bank, "\"load.rejected\""), 1);
        free(allow);
        free(oc);
    }
}

/* The bank's clock an hour behind the device's (or the device's an hour ahead): the allow's
 * deadline is long past by the device's clock, yet its 30 s window, timed from the device's
 * own request, has barely begun, so the allow is applied. (Judged by comparing clocks, as
 * before issue 20, this device refused every allow and every load was compensated.) */
static void tweak_bank_clock_behind(Quancun__LoadAllow *a)
{
    a->host_time_ms = ops_time_wall_ms() - 3600 * 1000;
    a->deadline_ms = a->host_time_ms + 30000;
}

static void test_allow_timed_by_elapsed_time(void **state)
{
    fixture_t *f = *state;
    begin(f);
    uint8_t *allow = NULL;
    size_t allow_len = 0;
    wt_make_allow(f->bank, f->req, f->req_len, tweak_bank_clock_behind, NULL, &allow, &allow_len);
    int verdict = -999;
    assert_int_equal(
        device_core_judge_allow(wallet_device_core(f->dev), allow, allow_len, &verdict), 0);
    assert_int_equal(verdict, 0);
    expect(f, DEVICE_REPORTED, AMOUNT, 1);
    free(allow);
}

/* The bank's allow key installed as a certificate: an expired one is refused, a current one
 * accepted. */
/* A self-signed v3 certificate of key, "CN=bank", serial 7, valid from now + not_before_s to
 * now + not_after_s. */
static void write_bank_cert(const char *path, EVP_PKEY *key, long not_before_s, long not_after_s)
{
    qctest_cert_t spec = {.key = key,
                          .cn = "bank",
                          .serial = 7,
                          .not_before_s = not_before_s,
                          .not_after_s = not_after_s,
                          .v3 = true};
    X509 *cert = qctest_cert_new(&spec);
    qctest_write_cert(path, cert);
    X509_free(cert);
}

static void test_bank_certificate_validity(void **state)
{
    fixture_t *f = *state;
    char expired[WT_PATH_MAX + 64], current[WT_PATH_MAX + 64], outcome[WT_PATH_MAX + 64];
    snprintf(expired, sizeof(expired), "%s/allow-expired.pem", f->bank->dir);
    snprintf(current, sizeof(current), "%s/allow-current.pem", f->bank->dir);
    snprintf(outcome, sizeof(outcome), "%s/outcome.pub", f->bank->dir);
    write_bank_cert(expired, f->bank->allow_key, -2 * 86400L, -86400L);
    write_bank_cert(current, f->bank->allow_key, -60L, 86400L);

    assert_int_equal(wallet_device_install_bank(f->dev, expired, outcome), 0);
    begin(f);
    uint8_t *allow = NULL;
    size_t allow_len = 0;
    wt_make_allow(f->bank, f->req, f->req_len, NULL, NULL, &allow, &allow_len);
    int verdict = 0;
    assert_int_equal(
        device_core_judge_allow(wallet_device_core(f->dev), allow, allow_len, &verdict), 0);
    assert_int_equal(verdict, QC_ECERTEXPIRED);
    expect(f, DEVICE_REPORTED, 0, 0);
    const uint8_t *rep = NULL;
    size_t rep_len = 0;
    assert_int_equal(device_core_report(wallet_device_core(f->dev), &rep, &rep_len), 0);
    uint8_t *oc = NULL;
    size_t oc_len = 0;
    wt_make_outcome(f->bank, rep, rep_len, false, QUANCUN__LOAD_STATE__LOAD_COMPENSATED, NULL, &oc,
                    &oc_len);
    int ls = 0;
    assert_int_equal(device_core_accept_outcome(wallet_device_core(f->dev), oc, oc_len, &ls), 0);
    free(oc);
    free(allow);

    assert_int_equal(wallet_device_install_bank(f->dev, current, outcome), 0);
    assert_int_equal(device_core_request(wallet_device_core(f->dev), WT_ACCOUNT, AMOUNT, CURRENCY,
                                         &f->req, &f->req_len),
                     0);
    wt_make_allow(f->bank, f->req, f->req_len, NULL, NULL, &allow, &allow_len);
    assert_int_equal(
        device_core_judge_allow(wallet_device_core(f->dev), allow, allow_len, &verdict), 0);
    assert_int_equal(verdict, 0);
    expect(f, DEVICE_REPORTED, AMOUNT, 1);
    free(allow);
}

/* ------------------------------------------------------------------ at most once */

static void test_allow_applied_once(void **state)
{
    fixture_t *f = *state;
    begin(f);
    uint8_t *allow = NULL;
    size_t allow_len = 0;
    wt_make_allow(f->bank, f->req, f->req_len, NULL, NULL, &allow, &allow_len);
    int verdict = -1;
    assert_int_equal(
        device_core_judge_allow(wallet_device_core(f->dev), allow, allow_len, &verdict), 0);
    assert_int_equal(verdict, 0);
    assert_int_equal(
        device_core_judge_allow(wallet_device_core(f->dev), allow, allow_len, &verdict),
        QC_EREPLAY);
    expect(f, DEVICE_REPORTED, AMOUNT, 1);

    /* Reopened (a restart), the same allow still changes nothing. */
    wallet_device_destroy(&f->dev);
    assert_int_equal(wallet_device_open(f->bank->home, &f->dev), 0);
    expect(f, DEVICE_REPORTED, AMOUNT, 1);
    assert_int_equal(
        device_core_judge_allow(wallet_device_core(f->dev), allow, allow_len, &verdict),
        QC_EREPLAY);
    expect(f, DEVICE_REPORTED, AMOUNT, 1);

    /* After the outcome, the old allow is for no pending load. */
    const uint8_t *rep = NULL;
    size_t rep_len = 0;
    assert_int_equal(device_core_report(wallet_device_core(f->dev), &rep, &rep_len), 0);
    uint8_t *oc = NULL;
    size_t oc_len = 0;
    wt_make_outcome(f->bank, rep, rep_len, false, QUANCUN__LOAD_STATE__LOAD_CONFIRMED, NULL, &oc,
                    &oc_len);
    int ls = 0;
    assert_int_equal(device_core_accept_outcome(wallet_device_core(f->dev), oc, oc_len, &ls), 0);
    assert_int_equal(
        device_core_judge_allow(wallet_device_core(f->dev), allow, allow_len, &verdict), QC_ESTATE);

    /* And for the next load, the old allow is another txn and another counter: refused. */
    assert_int_equal(device_core_verify_pin(wallet_device_core(f->dev), WT_PIN, strlen(WT_PIN)), 0);
    assert_int_equal(device_core_request(wallet_device_core(f->dev), WT_ACCOUNT, AMOUNT, CURRENCY,
                                         &f->req, &f->req_len),
                     0);
    assert_int_equal(
        device_core_judge_allow(wallet_device_core(f->dev), allow, allow_len, &verdict), 0);
    assert_int_equal(verdict, QC_EMISMATCH);
    expect(f, DEVICE_REPORTED, AMOUNT, 1);
    assert_int_equal(wt_log_count(f->bank, "\"load.applied\""), 1);
    free(allow);
    free(oc);
}

/* ------------------------------------------------------------------ outcomes */

static void test_outcome_checks(void **state)
{
    fixture_t *f = *state;
    begin(f);
    uint8_t *allow = NULL;
    size_t allow_len = 0;
    wt_make_allow(f->bank, f->req, f->req_len, NULL, NULL, &allow, &allow_len);
    int verdict = -1;
    assert_int_equal(
        device_core_judge_allow(wallet_device_core(f->dev), allow, allow_len, &verdict), 0);
    const uint8_t *rep = NULL;
    size_t rep_len = 0;
    assert_int_equal(device_core_report(wallet_device_core(f->dev), &rep, &rep_len), 0);

    uint8_t *oc = NULL;
    size_t oc_len = 0;
    int ls = 0;
    /* Signed by the allow key: not the outcome key. */
    wt_make_outcome(f->bank, rep, rep_len, false, QUANCUN__LOAD_STATE__LOAD_CONFIRMED,
                    f->bank->allow_key, &oc, &oc_len);
    assert_int_equal(device_core_accept_outcome(wallet_device_core(f->dev), oc, oc_len, &ls),
                     QC_EKEYID);
    free(oc);
    /* Not final yet. */
    wt_make_outcome(f->bank, rep, rep_len, false, QUANCUN__LOAD_STATE__LOAD_RESERVED, NULL, &oc,
                    &oc_len);
    assert_int_equal(device_core_accept_outcome(wallet_device_core(f->dev), oc, oc_len, &ls),
                     QC_EBUSY);
    free(oc);
    /* Garbage. */
    uint8_t junk[64];
    memset(junk, 0x5a, sizeof(junk));
    assert_int_not_equal(
        device_core_accept_outcome(wallet_device_core(f->dev), junk, sizeof(junk), &ls), 0);
    expect(f, DEVICE_REPORTED, AMOUNT, 1);

    /* Another load's outcome: build one from a second device's request. */
    wt_bank_t *other = wt_bank_new();
    wallet_device_t *dev2 = wt_device_ready(other, SERIAL);
    assert_int_equal(device_core_verify_pin(wallet_device_core(dev2), WT_PIN, strlen(WT_PIN)), 0);
    const uint8_t *req2 = NULL;
    size_t req2_len = 0;
    assert_int_equal(
        device_core_request(wallet_device_core(dev2), WT_ACCOUNT, 5, CURRENCY, &req2, &req2_len),
        0);
    wt_make_outcome(f->bank, req2, req2_len, true, QUANCUN__LOAD_STATE__LOAD_CONFIRMED, NULL, &oc,
                    &oc_len);
    assert_int_equal(device_core_accept_outcome(wallet_device_core(f->dev), oc, oc_len, &ls),
                     QC_EMISMATCH);
    free(oc);
    wallet_device_destroy(&dev2);
    wt_bank_free(other);
    expect(f, DEVICE_REPORTED, AMOUNT, 1);
    free(allow);
}

/* ------------------------------------------------------------------ preconditions */

static void test_preconditions(void **state)
{
    fixture_t *f = *state;
    const uint8_t *req = NULL;
    size_t req_len = 0;
    int verdict = 0;
    uint8_t junk[8] = {0};
    assert_int_equal(device_core_request(wallet_device_core(f->dev), WT_ACCOUNT, AMOUNT, CURRENCY,
                                         &req, &req_len),
                     QC_EDENIED);
    assert_int_equal(
        device_core_judge_allow(wallet_device_core(f->dev), junk, sizeof(junk), &verdict),
        QC_ESTATE);
    assert_int_equal(device_core_verify_pin(wallet_device_core(f->dev), WT_PIN, strlen(WT_PIN)), 0);
    assert_int_equal(
        device_core_request(wallet_device_core(f->dev), WT_ACCOUNT, 0, CURRENCY, &req, &req_len),
        QC_EAMOUNT);
    assert_int_equal(
        device_core_request(wallet_device_core(f->dev), WT_ACCOUNT, -5, CURRENCY, &req, &req_len),
        QC_EAMOUNT);
    assert_int_equal(
        device_core_request(wallet_device_core(f->dev), "has space", 5, CURRENCY, &req, &req_len),
        QC_EINVAL);
    assert_int_equal(
        device_core_request(wallet_device_core(f->dev), WT_ACCOUNT, 5, 1000, &req, &req_len),
        QC_EINVAL);
    expect(f, DEVICE_IDLE, 0, 0);
    assert_int_equal(device_core_request(wallet_device_core(f->dev), WT_ACCOUNT, AMOUNT, CURRENCY,
                                         &req, &req_len),
                     0);
    const uint8_t *req2 = NULL;
    size_t req2_len = 0;
    assert_int_equal(device_core_request(wallet_device_core(f->dev), WT_ACCOUNT, AMOUNT, CURRENCY,
                                         &req2, &req2_len),
                     QC_EPENDING);
    /* The stored request is the one that was signed, byte for byte, after a restart too. */
    uint8_t *copy = malloc(req_len);
    assert_non_null(copy);
    memcpy(copy, req, req_len);
    wallet_device_destroy(&f->dev);
    assert_int_equal(wallet_device_open(f->bank->home, &f->dev), 0);
    assert_int_equal(device_core_pending_request(wallet_device_core(f->dev), &req2, &req2_len), 0);
    assert_int_equal(req2_len, req_len);
    assert_memory_equal(req2, copy, req_len);
    free(copy);

    /* Abandon: back to IDLE, nothing applied. */
    assert_int_equal(
        device_core_abandon(wallet_device_core(f->dev), QC_EFUNDS, "insufficient funds"), 0);
    expect(f, DEVICE_IDLE, 0, 0);
    assert_int_equal(device_core_abandon(wallet_device_core(f->dev), QC_EFUNDS, NULL), QC_ESTATE);
    assert_int_equal(wt_log_count(f->bank, "QC_EFUNDS"), 1);

    /* A second program cannot drive the same device. */
    wallet_device_t *again = NULL;
    assert_int_equal(wallet_device_open(f->bank->home, &again), QC_EBUSY);
    assert_null(again);
    /* Nor can a device be created twice in one home. */
    wallet_device_destroy(&f->dev);
    assert_int_equal(wallet_device_init(f->bank->home, NULL, WT_PIN, strlen(WT_PIN)), QC_EEXIST);
    assert_int_equal(wallet_device_open(f->bank->home, &f->dev), 0);
}

static void test_enrollment_checks(void **state)
{
    fixture_t *f = *state;
    /* A certificate for another key is refused. */
    wt_bank_t *other = wt_bank_new();
    wallet_device_t *dev2 = wt_device_ready(other, SERIAL);
    char path[WT_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%s", other->home, WALLET_CERT_FILE);
    assert_int_equal(wallet_device_install_cert(f->dev, path), QC_ECERT);
    assert_int_equal(wallet_device_install_cert(f->dev, "/nonexistent/cert.pem"), QC_EIO);
    /* A bank key that is not a key. */
    assert_int_equal(wallet_device_install_bank(f->dev, path, "/nonexistent"), QC_EIO);
    snprintf(path, sizeof(path), "%s/%s", other->home, WALLET_STATE_FILE);
    assert_int_equal(wallet_device_install_bank(f->dev, path, path), QC_ECERT);
    wallet_device_destroy(&dev2);
    wt_bank_free(other);
    /* The device still works with its own. */
    device_status_t s;
    device_core_status(wallet_device_core(f->dev), &s);
    assert_true(s.has_cert);
    assert_true(s.has_bank);
    assert_string_equal(s.serial, SERIAL);

    /* A generated serial is QC + 16 hex digits. */
    wt_bank_t *gen = wt_bank_new();
    assert_int_equal(wallet_device_init(gen->home, NULL, WT_PIN, strlen(WT_PIN)), 0);
    wallet_device_t *d = NULL;
    assert_int_equal(wallet_device_open(gen->home, &d), 0);
    const char *serial = device_core_serial(wallet_device_core(d));
    assert_int_equal(strlen(serial), 18);
    assert_memory_equal(serial, "QC", 2);
    wallet_device_destroy(&d);
    wt_bank_free(gen);
    assert_int_equal(wallet_device_init(f->bank->dir, "bad serial", WT_PIN, 4), QC_EINVAL);
    assert_int_equal(wallet_device_init(f->bank->dir, "QCX", "12", 2), QC_EINVAL);
}

/* ------------------------------------------------------------------ storage */

static void test_damaged_state_refused(void **state)
{
    fixture_t *f = *state;
    wallet_device_destroy(&f->dev);
    char path[WT_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%s", f->bank->home, WALLET_STATE_FILE);
    FILE *fp = fopen(path, "r+");
    assert_non_null(fp);
    /* "balance 0" -> "balance 9": the checksum no longer matches. */
    char buf[8192];
    size_t n = fread(buf, 1, sizeof(buf), fp);
    buf[n < sizeof(buf) ? n : sizeof(buf) - 1] = '\0';
    char *p = strstr(buf, "\nbalance 0\n");
    assert_non_null(p);
    assert_int_equal(fseek(fp, (long)(p - buf) + 9, SEEK_SET), 0);
    assert_int_equal(fputc('9', fp), '9');
    assert_int_equal(fclose(fp), 0);
    assert_int_equal(wallet_device_open(f->bank->home, &f->dev), QC_EDECODE);
    assert_null(f->dev);
    /* No device at all. */
    assert_int_equal(wallet_device_open(f->bank->dir, &f->dev), QC_ENOTFOUND);
    char missing[WT_PATH_MAX + 64];
    snprintf(missing, sizeof(missing), "%s/nowhere", f->bank->dir);
    assert_int_equal(wallet_device_open(missing, &f->dev), QC_ENOTFOUND);
}

/* The log line of the last transition is written after the state; a crash in between is
 * repaired at the next open, and a torn line is cut. */
static void test_oplog_recovery(void **state)
{
    fixture_t *f = *state;
    begin(f);
    int before = wt_log_count(f->bank, "\"seq\"");
    assert_true(before >= 2);
    wallet_device_destroy(&f->dev);

    char path[WT_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%s", f->bank->home, DEVICE_LOG_FILE);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    char all[16384];
    size_t n = fread(all, 1, sizeof(all) - 1, fp);
    fclose(fp);
    all[n] = '\0';
    /* Drop the last line and leave half of it, as a crash inside write() would. */
    assert_true(n > 1 && all[n - 1] == '\n');
    all[n - 1] = '\0';
    char *last = strrchr(all, '\n');
    assert_non_null(last);
    size_t keep = (size_t)(last - all) + 1 + 10;
    assert_int_equal(truncate(path, (off_t)keep), 0);

    assert_int_equal(wallet_device_open(f->bank->home, &f->dev), 0);
    assert_int_equal(wt_log_count(f->bank, "\"seq\""), before);
    assert_int_equal(wt_log_count(f->bank, "\"load.requested\""), 1);
    /* Every line is complete JSON-ish: starts with {"seq": and ends with }. */
    fp = fopen(path, "r");
    assert_non_null(fp);
    char line[DEVICE_LOG_LINE_MAX + 2];
    unsigned long seq = 0;
    while (fgets(line, sizeof(line), fp) != NULL) {
        unsigned long got = 0;
        assert_int_equal(sscanf(line, "{\"seq\":%lu,", &got), 1);
        assert_int_equal(got, ++seq);
        assert_string_equal(line + strlen(line) - 2, "}\n");
    }
    fclose(fp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_happy_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_allow_timed_by_elapsed_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bank_certificate_validity, setup, teardown),
        cmocka_unit_test_setup_teardown(test_allow_applied_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outcome_checks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_preconditions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_enrollment_checks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_state_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oplog_recovery, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
