/* test_card_device.c - the card and the wallet's card transfer through the library, one
 * message at a time: replayed and out-of-session credits, credits without authentication
 * or PIN, stale and forged proofs, one operation at a time, frame limits, damaged state.
 *
 * Usage: test_card_device QC_WALLET QC_CARD (the card is personalised with the binaries). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "card.pb-c.h"
#include "card_device.h"
#include "device_wire.h"
#include "proto_cert.h"
#include "qc_error.h"
#include "test_card_env.h"
#include "wallet_device.h"

#define FUNDS 10000
#define AMOUNT 100

typedef struct session {
    uint8_t host_ch[DEVICE_CARD_CHALLENGE_SIZE];
    uint8_t card_ch[DEVICE_CARD_CHALLENGE_SIZE];
    EVP_PKEY *card_key;
} session_t;

/* One command to the card in-process; the caller frees the answer. */
static Qccard__CardResponse *card_call(card_device_t *card, const Qccard__CardRequest *req)
{
    size_t len = qccard__card_request__get_packed_size(req);
    uint8_t *buf = malloc(len + 1);
    assert_non_null(buf);
    qccard__card_request__pack(req, buf);
    uint8_t *resp = NULL;
    size_t resp_len = 0;
    assert_int_equal(card_device_handle(card, buf, len, &resp, &resp_len), 0);
    free(buf);
    Qccard__CardResponse *r = qccard__card_response__unpack(NULL, resp_len, resp);
    free(resp);
    assert_non_null(r);
    return r;
}

static int card_code(card_device_t *card, const Qccard__CardRequest *req)
{
    Qccard__CardResponse *r = card_call(card, req);
    int code = r->code;
    qccard__card_response__free_unpacked(r, NULL);
    return code;
}

/* A new contact: both sides authenticated, the card's key taken from its certificate. */
static void authenticate(tc_env_t *e, card_device_t *card, wallet_device_t *dev, session_t *s)
{
    card_device_session_reset(card);
    EVP_PKEY_free(s->card_key);
    s->card_key = NULL;
    for (size_t i = 0; i < sizeof(s->host_ch); i++)
        s->host_ch[i] = (uint8_t)rand();
    const uint8_t *cert = NULL;
    size_t cert_len = 0;
    assert_int_equal(device_core_cert(wallet_device_core(dev), &cert, &cert_len), 0);
    Qccard__CardRequest req = QCCARD__CARD_REQUEST__INIT;
    req.op = QCCARD__CARD_OP__CARD_OP_AUTH_BEGIN;
    req.challenge.data = s->host_ch;
    req.challenge.len = sizeof(s->host_ch);
    req.cert.data = (uint8_t *)cert;
    req.cert.len = cert_len;
    Qccard__CardResponse *r = card_call(card, &req);
    assert_int_equal(r->code, 0);
    assert_int_equal(r->challenge.len, DEVICE_CARD_CHALLENGE_SIZE);
    memcpy(s->card_ch, r->challenge.data, DEVICE_CARD_CHALLENGE_SIZE);
    qccard__card_response__free_unpacked(r, NULL);

    char pem[TC_PATH_MAX + 32];
    snprintf(pem, sizeof(pem), "%s/card.pem", e->card);
    assert_int_equal(proto_key_load_pem(pem, &s->card_key), 0);

    uint8_t *answer = NULL;
    size_t answer_len = 0;
    assert_int_equal(device_core_card_auth(wallet_device_core(dev), e->number, s->card_ch,
                                           s->host_ch, &answer, &answer_len),
                     0);
    Qccard__CardRequest fin = QCCARD__CARD_REQUEST__INIT;
    fin.op = QCCARD__CARD_OP__CARD_OP_AUTH_FINISH;
    fin.signed_.data = answer;
    fin.signed_.len = answer_len;
    assert_int_equal(card_code(card, &fin), 0);
    free(answer);
}

static int card_pin(card_device_t *card, const char *pin)
{
    Qccard__CardRequest req = QCCARD__CARD_REQUEST__INIT;
    req.op = QCCARD__CARD_OP__CARD_OP_VERIFY_PIN;
    req.pin = (char *)pin;
    return card_code(card, &req);
}

/* Sends a signed credit; *receipt gets the card's receipt when it credits. */
static int card_credit(card_device_t *card, const uint8_t *credit, size_t len, uint8_t **receipt,
                       size_t *receipt_len)
{
    Qccard__CardRequest req = QCCARD__CARD_REQUEST__INIT;
    req.op = QCCARD__CARD_OP__CARD_OP_CREDIT;
    req.signed_.data = (uint8_t *)credit;
    req.signed_.len = len;
    Qccard__CardResponse *r = card_call(card, &req);
    int code = r->code;
    if (receipt != NULL && code == 0) {
        *receipt = malloc(r->signed_.len);
        assert_non_null(*receipt);
        memcpy(*receipt, r->signed_.data, r->signed_.len);
        *receipt_len = r->signed_.len;
    }
    qccard__card_response__free_unpacked(r, NULL);
    return code;
}

static void proof(card_device_t *card, const uint8_t id[DEVICE_TXN_SIZE], uint8_t **receipt,
                  size_t *receipt_len)
{
    Qccard__CardRequest req = QCCARD__CARD_REQUEST__INIT;
    req.op = QCCARD__CARD_OP__CARD_OP_PROOF;
    req.transfer_id.data = (uint8_t *)id;
    req.transfer_id.len = DEVICE_TXN_SIZE;
    Qccard__CardResponse *r = card_call(card, &req);
    assert_int_equal(r->code, 0);
    *receipt = malloc(r->signed_.len);
    assert_non_null(*receipt);
    memcpy(*receipt, r->signed_.data, r->signed_.len);
    *receipt_len = r->signed_.len;
    qccard__card_response__free_unpacked(r, NULL);
}

typedef struct world {
    tc_env_t *e;
    card_device_t *card;
    wallet_device_t *dev;
    session_t s;
} world_t;

static int setup(void **state)
{
    world_t *w = calloc(1, sizeof(*w));
    assert_non_null(w);
    w->e = tc_env_new("QCCD1", FUNDS, "CARD-D1", "80.00", NULL);
    assert_int_equal(card_device_open(w->e->card, &w->card), 0);
    assert_int_equal(wallet_device_open(w->e->b->home, &w->dev), 0);
    assert_int_equal(device_core_verify_pin(wallet_device_core(w->dev), WT_PIN, strlen(WT_PIN)), 0);
    *state = w;
    return 0;
}

static int teardown(void **state)
{
    world_t *w = *state;
    EVP_PKEY_free(w->s.card_key);
    card_device_destroy(&w->card);
    wallet_device_destroy(&w->dev);
    tc_env_free(w->e);
    free(w);
    return 0;
}

static int64_t wallet_balance(world_t *w, bool *pending)
{
    device_status_t s;
    device_core_status(wallet_device_core(w->dev), &s);
    if (pending != NULL)
        *pending = s.card_pending;
    return s.balance;
}

static void test_replayed_credit_refused(void **state)
{
    world_t *w = *state;
    authenticate(w->e, w->card, w->dev, &w->s);
    assert_int_equal(card_pin(w->card, TC_CARD_PIN), 0);
    uint8_t *credit = NULL, *receipt = NULL;
    size_t credit_len = 0, receipt_len = 0;
    assert_int_equal(device_core_card_debit(wallet_device_core(w->dev), w->e->number, AMOUNT,
                                            w->s.card_ch, &credit, &credit_len),
                     0);
    assert_int_equal(card_credit(w->card, credit, credit_len, &receipt, &receipt_len), 0);
    assert_int_equal(card_device_state(w->card)->balance, AMOUNT);
    device_card_result_t result = 0;
    assert_int_equal(device_core_card_settle(wallet_device_core(w->dev), w->s.card_key,
                                             w->s.host_ch, receipt, receipt_len, &result),
                     0);
    assert_int_equal(result, DEVICE_CARD_COMPLETED);

    /* The same credit again, in the same session and in a new one: nothing more. */
    assert_int_equal(card_credit(w->card, credit, credit_len, NULL, NULL), QC_EREPLAY);
    authenticate(w->e, w->card, w->dev, &w->s);
    assert_int_equal(card_pin(w->card, TC_CARD_PIN), 0);
    assert_int_equal(card_credit(w->card, credit, credit_len, NULL, NULL), QC_EREPLAY);
    assert_int_equal(card_device_state(w->card)->balance, AMOUNT);
    assert_int_equal(card_device_state(w->card)->counter, 1);
    assert_int_equal(wallet_balance(w, NULL), FUNDS - AMOUNT);
    /* The receipt cannot be used twice by the wallet either. */
    assert_int_equal(device_core_card_settle(wallet_device_core(w->dev), w->s.card_key,
                                             w->s.host_ch, receipt, receipt_len, &result),
                     QC_ESTATE);
    free(credit);
    free(receipt);
}

/* A man in the middle holds the credit back, the host asks for the proof, gets "never
 * credited" and refunds; the held credit delivered afterwards must not credit the card. */
static void test_credit_after_not_credited_proof_refused(void **state)
{
    world_t *w = *state;
    authenticate(w->e, w->card, w->dev, &w->s);
    assert_int_equal(card_pin(w->card, TC_CARD_PIN), 0);
    uint8_t *credit = NULL, *receipt = NULL;
    size_t credit_len = 0, receipt_len = 0;
    assert_int_equal(device_core_card_debit(wallet_device_core(w->dev), w->e->number, AMOUNT,
                                            w->s.card_ch, &credit, &credit_len),
                     0);
    device_status_t s;
    device_core_status(wallet_device_core(w->dev), &s);
    proof(w->card, s.card_xfer_id, &receipt, &receipt_len);
    device_card_result_t result = 0;
    assert_int_equal(device_core_card_settle(wallet_device_core(w->dev), w->s.card_key,
                                             w->s.host_ch, receipt, receipt_len, &result),
                     0);
    assert_int_equal(result, DEVICE_CARD_REFUNDED);
    assert_int_equal(card_credit(w->card, credit, credit_len, NULL, NULL), QC_EREPLAY);
    assert_int_equal(card_device_state(w->card)->balance, 0);
    assert_int_equal(wallet_balance(w, NULL), FUNDS);
    free(credit);
    free(receipt);
}

static void test_credit_needs_authentication_and_pin(void **state)
{
    world_t *w = *state;
    card_device_session_reset(w->card);
    uint8_t junk[DEVICE_CARD_CHALLENGE_SIZE] = {0};
    assert_int_equal(card_pin(w->card, TC_CARD_PIN), QC_EDENIED);
    uint8_t *credit = NULL;
    size_t credit_len = 0;
    assert_int_equal(device_core_card_debit(wallet_device_core(w->dev), w->e->number, AMOUNT, junk,
                                            &credit, &credit_len),
                     0);
    assert_int_equal(card_credit(w->card, credit, credit_len, NULL, NULL), QC_EDENIED);
    authenticate(w->e, w->card, w->dev, &w->s);
    assert_int_equal(card_credit(w->card, credit, credit_len, NULL, NULL), QC_EDENIED); /* no PIN */
    assert_int_equal(card_pin(w->card, TC_CARD_PIN), 0);
    /* Signed for another session (junk challenge): a replay. */
    assert_int_equal(card_credit(w->card, credit, credit_len, NULL, NULL), QC_EREPLAY);
    assert_int_equal(card_device_state(w->card)->balance, 0);
    free(credit);
    device_card_result_t result = 0;
    device_status_t s;
    uint8_t *receipt = NULL;
    size_t receipt_len = 0;

    /* The card proves it never credited it; the wallet gets its money back. */
    device_core_status(wallet_device_core(w->dev), &s);
    assert_true(s.card_pending);
    proof(w->card, s.card_xfer_id, &receipt, &receipt_len);
    assert_int_equal(device_core_card_settle(wallet_device_core(w->dev), w->s.card_key,
                                             w->s.host_ch, receipt, receipt_len, &result),
                     0);
    assert_int_equal(result, DEVICE_CARD_REFUNDED);
    assert_int_equal(wallet_balance(w, NULL), FUNDS);
    free(receipt);
}

static void test_stale_or_forged_proof_refused(void **state)
{
    world_t *w = *state;
    authenticate(w->e, w->card, w->dev, &w->s);
    uint8_t *credit = NULL;
    size_t credit_len = 0;
    assert_int_equal(device_core_card_debit(wallet_device_core(w->dev), w->e->number, AMOUNT,
                                            w->s.card_ch, &credit, &credit_len),
                     0);
    free(credit);
    device_status_t s;
    device_core_status(wallet_device_core(w->dev), &s);
    uint8_t *old = NULL;
    size_t old_len = 0;
    proof(w->card, s.card_xfer_id, &old, &old_len); /* NOT_CREDITED, session 1 */
    uint8_t old_ch[DEVICE_CARD_CHALLENGE_SIZE];
    memcpy(old_ch, w->s.host_ch, sizeof(old_ch));

    /* In a later session an old "never credited" proves nothing. */
    authenticate(w->e, w->card, w->dev, &w->s);
    device_card_result_t result = 0;
    assert_int_equal(device_core_card_settle(wallet_device_core(w->dev), w->s.card_key,
                                             w->s.host_ch, old, old_len, &result),
                     QC_EREPLAY);
    /* Signed by another key: refused. */
    assert_int_not_equal(device_core_card_settle(wallet_device_core(w->dev), w->e->b->other_key,
                                                 old_ch, old, old_len, &result),
                         0);
    /* A damaged proof: refused. */
    old[old_len / 2] ^= 1;
    assert_int_not_equal(device_core_card_settle(wallet_device_core(w->dev), w->s.card_key, old_ch,
                                                 old, old_len, &result),
                         0);
    bool pending = false;
    assert_int_equal(wallet_balance(w, &pending), FUNDS - AMOUNT);
    assert_true(pending);
    free(old);

    /* The pending transfer survives a restart of the wallet. */
    wallet_device_destroy(&w->dev);
    assert_int_equal(wallet_device_open(w->e->b->home, &w->dev), 0);
    assert_int_equal(wallet_balance(w, &pending), FUNDS - AMOUNT);
    assert_true(pending);
    assert_int_equal(device_core_verify_pin(wallet_device_core(w->dev), WT_PIN, strlen(WT_PIN)), 0);

    /* One operation at a time: no load and no second card transfer while it is pending. */
    const uint8_t *req = NULL;
    size_t req_len = 0;
    assert_int_equal(
        device_core_request(wallet_device_core(w->dev), WT_ACCOUNT, AMOUNT, 156, &req, &req_len),
        QC_ECARDPENDING);
    assert_int_equal(device_core_card_debit(wallet_device_core(w->dev), w->e->number, AMOUNT,
                                            w->s.card_ch, &credit, &credit_len),
                     QC_ECARDPENDING);

    /* Settled properly from a fresh proof. */
    uint8_t *fresh = NULL;
    size_t fresh_len = 0;
    proof(w->card, s.card_xfer_id, &fresh, &fresh_len);
    assert_int_equal(device_core_card_settle(wallet_device_core(w->dev), w->s.card_key,
                                             w->s.host_ch, fresh, fresh_len, &result),
                     0);
    assert_int_equal(result, DEVICE_CARD_REFUNDED);
    assert_int_equal(wallet_balance(w, &pending), FUNDS);
    assert_false(pending);
    free(fresh);

    /* And no card transfer while a load is in progress. */
    assert_int_equal(
        device_core_request(wallet_device_core(w->dev), WT_ACCOUNT, AMOUNT, 156, &req, &req_len),
        0);
    assert_int_equal(device_core_card_debit(wallet_device_core(w->dev), w->e->number, AMOUNT,
                                            w->s.card_ch, &credit, &credit_len),
                     QC_EPENDING);
    assert_int_equal(device_core_abandon(wallet_device_core(w->dev), QC_EFUNDS, "test"), 0);
}

static void test_amounts_checked_by_both_sides(void **state)
{
    world_t *w = *state;
    authenticate(w->e, w->card, w->dev, &w->s);
    assert_int_equal(card_pin(w->card, TC_CARD_PIN), 0);
    uint8_t *credit = NULL;
    size_t credit_len = 0;
    assert_int_equal(device_core_card_debit(wallet_device_core(w->dev), w->e->number, FUNDS + 1,
                                            w->s.card_ch, &credit, &credit_len),
                     QC_EFUNDS);
    assert_int_equal(device_core_card_debit(wallet_device_core(w->dev), w->e->number, 0,
                                            w->s.card_ch, &credit, &credit_len),
                     QC_EAMOUNT);
    assert_int_equal(device_core_card_debit(wallet_device_core(w->dev), w->e->number, 7000,
                                            w->s.card_ch, &credit, &credit_len),
                     0);
    assert_int_equal(card_credit(w->card, credit, credit_len, NULL, NULL), 0);
    free(credit);
    device_status_t s;
    device_core_status(wallet_device_core(w->dev), &s);
    uint8_t *receipt = NULL;
    size_t receipt_len = 0;
    proof(w->card, s.card_xfer_id, &receipt, &receipt_len);
    device_card_result_t result = 0;
    assert_int_equal(device_core_card_settle(wallet_device_core(w->dev), w->s.card_key,
                                             w->s.host_ch, receipt, receipt_len, &result),
                     0);
    assert_int_equal(result, DEVICE_CARD_COMPLETED);
    free(receipt);
    /* The card refuses to pass its maximum (80.00, it holds 70.00) even when the wallet,
     * which holds enough, asks; the wallet is refunded from the card's proof. */
    assert_int_equal(device_core_card_debit(wallet_device_core(w->dev), w->e->number, 1001,
                                            w->s.card_ch, &credit, &credit_len),
                     0);
    assert_int_equal(card_credit(w->card, credit, credit_len, NULL, NULL), QC_ECARDMAX);
    free(credit);
    assert_int_equal(card_device_state(w->card)->balance, 7000);
    device_core_status(wallet_device_core(w->dev), &s);
    proof(w->card, s.card_xfer_id, &receipt, &receipt_len);
    assert_int_equal(device_core_card_settle(wallet_device_core(w->dev), w->s.card_key,
                                             w->s.host_ch, receipt, receipt_len, &result),
                     0);
    assert_int_equal(result, DEVICE_CARD_REFUNDED);
    assert_int_equal(wallet_balance(w, NULL) + card_device_state(w->card)->balance, FUNDS);
    free(receipt);
}

static void test_frame_limits_and_garbage(void **state)
{
    world_t *w = *state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    uint8_t *got = NULL;
    size_t got_len = 0;
    const uint8_t huge[DEVICE_WIRE_HEADER_SIZE] = {0xff, 0xff, 0xff, 0xff};
    assert_int_equal(write(sv[0], huge, sizeof(huge)), (ssize_t)sizeof(huge));
    assert_int_equal(device_wire_recv(sv[1], 1000, &got, &got_len), QC_ETOOBIG);
    const uint8_t zero[DEVICE_WIRE_HEADER_SIZE] = {0, 0, 0, 0};
    assert_int_equal(write(sv[0], zero, sizeof(zero)), (ssize_t)sizeof(zero));
    assert_int_equal(device_wire_recv(sv[1], 1000, &got, &got_len), QC_ETOOBIG);
    const uint8_t one[] = {0, 0, 0, 3, 'a', 'b', 'c'};
    assert_int_equal(write(sv[0], one, sizeof(one)), (ssize_t)sizeof(one));
    assert_int_equal(device_wire_recv(sv[1], 1000, &got, &got_len), 0);
    assert_int_equal(got_len, 3);
    free(got);
    assert_int_equal(device_wire_recv(sv[1], 50, &got, &got_len), QC_ETIMEOUT);
    close(sv[0]);
    assert_int_equal(device_wire_recv(sv[1], 1000, &got, &got_len), QC_ENOTFOUND);
    close(sv[1]);

    /* Garbage is answered with a refusal, not a crash. */
    const uint8_t garbage[] = {0xff, 0xff, 0xff, 0x01, 0x02};
    uint8_t *resp = NULL;
    size_t resp_len = 0;
    assert_int_equal(card_device_handle(w->card, garbage, sizeof(garbage), &resp, &resp_len), 0);
    Qccard__CardResponse *r = qccard__card_response__unpack(NULL, resp_len, resp);
    assert_non_null(r);
    assert_int_equal(r->code, QC_EDECODE);
    qccard__card_response__free_unpacked(r, NULL);
    free(resp);
}

static void test_damaged_card_state_refused(void **state)
{
    world_t *w = *state;
    card_device_destroy(&w->card);
    char path[TC_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/%s", w->e->card, CARD_STATE_FILE);
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, 10, SEEK_SET), 0);
    int c = fgetc(f);
    assert_int_equal(fseek(f, 10, SEEK_SET), 0);
    fputc(c ^ 0x20, f);
    fclose(f);
    assert_int_equal(card_device_open(w->e->card, &w->card), QC_EDECODE);
    assert_null(w->card);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s QC_WALLET QC_CARD\n", argv[0]);
        return 2;
    }
    tc_qc_wallet = argv[1];
    tc_qc_card = argv[2];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_replayed_credit_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_credit_needs_authentication_and_pin, setup, teardown),
        cmocka_unit_test_setup_teardown(test_credit_after_not_credited_proof_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_stale_or_forged_proof_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_amounts_checked_by_both_sides, setup, teardown),
        cmocka_unit_test_setup_teardown(test_frame_limits_and_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_card_state_refused, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
