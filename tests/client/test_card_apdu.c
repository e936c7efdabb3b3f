/* test_card_apdu.c - the APDU layer without a reader: the pure parser and encoder of
 * client/device/card_apdu.h (every Lc/Le case, extended lengths, truncations, lengths that
 * lie) and the card's applet (client/card/card_applet.h) answering raw command APDUs with
 * the status words docs/CARD.md lists: selection, classes and instructions it does not know,
 * order, chaining, GET RESPONSE after 61xx, the refusal sentence. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "card_apdu.h"
#include "card_applet.h"
#include "card_device.h"
#include "qc_error.h"
#include "qctest_fs.h"

#define PIN "1357"

static void test_parse_short_cases(void **state)
{
    (void)state;
    card_apdu_t a;
    const uint8_t c1[] = {0x00, 0xA4, 0x04, 0x00};
    assert_int_equal(card_apdu_parse(c1, sizeof(c1), &a), 0);
    assert_int_equal(a.ins, 0xA4);
    assert_int_equal(a.nc, 0);
    assert_int_equal(a.ne, 0);
    const uint8_t c2[] = {0x00, 0xCA, 0x01, 0x01, 0x00};
    assert_int_equal(card_apdu_parse(c2, sizeof(c2), &a), 0);
    assert_int_equal(a.ne, 256); /* Le 00 = 256 */
    assert_false(a.extended);
    const uint8_t c3[] = {0x00, 0x20, 0x00, 0x81, 0x02, '1', '2'};
    assert_int_equal(card_apdu_parse(c3, sizeof(c3), &a), 0);
    assert_int_equal(a.nc, 2);
    assert_memory_equal(a.data, "12", 2);
    assert_int_equal(a.ne, 0);
    const uint8_t c4[] = {0x80, 0x34, 0x00, 0x00, 0x01, 0xAB, 0x10};
    assert_int_equal(card_apdu_parse(c4, sizeof(c4), &a), 0);
    assert_int_equal(a.nc, 1);
    assert_int_equal(a.ne, 16);
}

static void test_parse_refuses_lying_lengths(void **state)
{
    (void)state;
    card_apdu_t a;
    const uint8_t hdr[] = {0x00, 0xA4, 0x04};
    assert_int_equal(card_apdu_parse(hdr, sizeof(hdr), &a), QC_EDECODE); /* truncated */
    assert_int_equal(card_apdu_parse(NULL, 0, &a), QC_EDECODE);
    /* Lc says 5, 3 bytes follow; Lc says 1, 3 follow (neither case 3 nor 4). */
    const uint8_t short_data[] = {0x00, 0x20, 0x00, 0x81, 0x05, '1', '2', '3'};
    assert_int_equal(card_apdu_parse(short_data, sizeof(short_data), &a), QC_EDECODE);
    const uint8_t long_data[] = {0x00, 0x20, 0x00, 0x81, 0x01, '1', '2', '3'};
    assert_int_equal(card_apdu_parse(long_data, sizeof(long_data), &a), QC_EDECODE);
    /* 00 then one byte: neither a short Lc nor an extended length. */
    const uint8_t half[] = {0x00, 0x20, 0x00, 0x81, 0x00, 0x01};
    assert_int_equal(card_apdu_parse(half, sizeof(half), &a), QC_EDECODE);
    /* An extended Lc of zero is not a command. */
    const uint8_t zero_lc[] = {0x00, 0x20, 0x00, 0x81, 0x00, 0x00, 0x00, 0x01};
    assert_int_equal(card_apdu_parse(zero_lc, sizeof(zero_lc), &a), QC_EDECODE);
    /* Extended Lc of 2 with 1 byte. */
    const uint8_t ext_short[] = {0x00, 0x20, 0x00, 0x81, 0x00, 0x00, 0x02, '1'};
    assert_int_equal(card_apdu_parse(ext_short, sizeof(ext_short), &a), QC_EDECODE);
    uint8_t *big = calloc(1, CARD_APDU_COMMAND_MAX + 1);
    assert_non_null(big);
    assert_int_equal(card_apdu_parse(big, CARD_APDU_COMMAND_MAX + 1, &a), QC_ETOOBIG);
    free(big);
    assert_int_equal(a.nc, 0); /* zeroed on error */
}

static void test_parse_extended_cases(void **state)
{
    (void)state;
    card_apdu_t a;
    const uint8_t e2[] = {0x00, 0xCA, 0x01, 0x01, 0x00, 0x00, 0x00};
    assert_int_equal(card_apdu_parse(e2, sizeof(e2), &a), 0);
    assert_true(a.extended);
    assert_int_equal(a.ne, 65536); /* Le 0000 = 65536 */
    enum { N = 300 };
    uint8_t e4[4 + 3 + N + 2];
    memset(e4, 0x5A, sizeof(e4));
    e4[0] = 0x00, e4[1] = 0x88, e4[2] = 0, e4[3] = 0;
    e4[4] = 0, e4[5] = N >> 8, e4[6] = N & 0xFF;
    e4[7 + N] = 0x01, e4[8 + N] = 0x00;
    assert_int_equal(card_apdu_parse(e4, sizeof(e4), &a), 0);
    assert_int_equal(a.nc, N);
    assert_int_equal(a.ne, 256);
    assert_ptr_equal(a.data, e4 + 7);
    assert_int_equal(card_apdu_parse(e4, sizeof(e4) - 2, &a), 0); /* case 3 extended */
    assert_int_equal(a.ne, 0);
    assert_int_equal(card_apdu_parse(e4, sizeof(e4) - 1, &a), QC_EDECODE);
}

static void test_encode_round_trip(void **state)
{
    (void)state;
    uint8_t data[400];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)i;
    const size_t ncs[] = {0, 1, 255, 256, 400};
    const size_t nes[] = {0, 1, 256, 257, 65536};
    uint8_t buf[512];
    for (size_t i = 0; i < 5; i++) {
        for (size_t j = 0; j < 5; j++) {
            card_apdu_t in = {.cla = 0x80,
                              .ins = 0x30,
                              .p1 = 1,
                              .p2 = 2,
                              .data = data,
                              .nc = ncs[i],
                              .ne = nes[j]};
            size_t len = 0;
            assert_int_equal(card_apdu_encode(&in, buf, sizeof(buf), &len), 0);
            card_apdu_t out;
            assert_int_equal(card_apdu_parse(buf, len, &out), 0);
            assert_int_equal(out.nc, in.nc);
            assert_int_equal(out.ne, in.ne);
            assert_int_equal(out.extended, in.nc > 255 || in.ne > 256);
            if (in.nc > 0)
                assert_memory_equal(out.data, data, in.nc);
        }
    }
    card_apdu_t in = {.cla = 0, .ins = 0x20, .data = data, .nc = 10};
    size_t len = 0;
    assert_int_equal(card_apdu_encode(&in, buf, 10, &len), QC_ETOOBIG);
    in.ne = 65537;
    assert_int_equal(card_apdu_encode(&in, buf, sizeof(buf), &len), QC_EINVAL);
}

static void test_response_and_purse(void **state)
{
    (void)state;
    uint16_t sw = 0;
    size_t n = 0;
    const uint8_t r[] = {0x01, 0x02, 0x63, 0xC2};
    assert_int_equal(card_apdu_response(r, sizeof(r), &sw, &n), 0);
    assert_int_equal(sw, 0x63C2);
    assert_int_equal(n, 2);
    assert_int_equal(card_apdu_sw_code(sw), QC_EPIN);
    assert_int_equal(card_apdu_sw_code(0x63C0), QC_ELOCKED);
    assert_int_equal(card_apdu_response(r, 1, &sw, &n), QC_EDECODE);
    card_apdu_purse_t p = {
        .balance = 1234, .max_balance = 10000, .counter = 7, .pin_tries_left = 2};
    snprintf(p.number, sizeof(p.number), "CARD-1");
    uint8_t buf[CARD_APDU_PURSE_MAX];
    size_t len = card_apdu_purse_encode(&p, buf);
    assert_int_equal(len, 1 + 6 + 25);
    card_apdu_purse_t q;
    assert_int_equal(card_apdu_purse_parse(buf, len, &q), 0);
    assert_string_equal(q.number, "CARD-1");
    assert_int_equal(q.balance, 1234);
    assert_int_equal(q.counter, 7);
    assert_int_equal(q.pin_tries_left, 2);
    assert_int_equal(card_apdu_purse_parse(buf, len - 1, &q), QC_EDECODE);
    assert_int_equal(card_apdu_purse_parse(buf, len + 1, &q), QC_EDECODE);
    buf[1] = ' ';
    assert_int_equal(card_apdu_purse_parse(buf, len, &q), QC_EDECODE);
}

/* ------------------------------------------------------------------ the applet */

typedef struct world {
    char dir[QCTEST_PATH_MAX];
    card_device_t *card;
    card_applet_t *applet;
    uint8_t resp[CARD_APPLET_RAPDU_MAX];
    size_t resp_len;
} world_t;

static int world_setup(void **state)
{
    world_t *w = calloc(1, sizeof(*w));
    assert_non_null(w);
    assert_int_equal(qctest_dir_new("qc-apdu", w->dir), 0);
    char home[QCTEST_PATH_MAX];
    qctest_path(w->dir, "card", home);
    assert_int_equal(card_device_init(home, "CARD-A1", 10000, "QCW1", PIN, strlen(PIN)), 0);
    assert_int_equal(card_device_open(home, &w->card), 0);
    assert_int_equal(card_applet_new(w->card, &w->applet), 0);
    *state = w;
    return 0;
}

static int world_teardown(void **state)
{
    world_t *w = *state;
    card_applet_destroy(&w->applet);
    assert_null(w->applet);
    card_device_destroy(&w->card);
    QC_IGNORE(qctest_dir_remove(w->dir)); /* a temp dir left behind harms nobody */
    free(w);
    return 0;
}

/* Sends hex-free bytes; returns the status word (data in w->resp). */
static uint16_t send(world_t *w, const uint8_t *cmd, size_t len)
{
    card_applet_process(w->applet, cmd, len, w->resp, sizeof(w->resp), &w->resp_len);
    assert_true(w->resp_len >= 2);
    return (uint16_t)((w->resp[w->resp_len - 2] << 8) | w->resp[w->resp_len - 1]);
}

static uint16_t select_aid(world_t *w)
{
    uint8_t cmd[5 + CARD_APDU_AID_SIZE] = {0x00, 0xA4, 0x04, 0x00, CARD_APDU_AID_SIZE};
    memcpy(cmd + 5, card_apdu_aid, CARD_APDU_AID_SIZE);
    return send(w, cmd, sizeof(cmd));
}

/* The refusal object: its code, and the sentence in out. */
static int refusal(world_t *w, char *out, size_t cap)
{
    const uint8_t cmd[] = {0x00, 0xCA, 0x01, 0x02, 0x00};
    assert_int_equal(send(w, cmd, sizeof(cmd)), 0x9000);
    assert_true(w->resp_len >= 6);
    int32_t code = (int32_t)(((uint32_t)w->resp[0] << 24) | ((uint32_t)w->resp[1] << 16) |
                             ((uint32_t)w->resp[2] << 8) | w->resp[3]);
    size_t n = w->resp_len - 6;
    assert_true(n < cap);
    memcpy(out, w->resp + 4, n);
    out[n] = '\0';
    return code;
}

static void test_applet_selection_and_classes(void **state)
{
    world_t *w = *state;
    char why[CARD_APDU_SENTENCE_MAX + 1];
    const uint8_t verify[] = {0x00, 0x20, 0x00, 0x81};
    assert_int_equal(send(w, verify, sizeof(verify)), 0x6985); /* not selected */
    const uint8_t other[] = {0x00, 0xA4, 0x04, 0x00, 0x03, 0xA0, 0x00, 0x01};
    assert_int_equal(send(w, other, sizeof(other)), 0x6A82);
    assert_int_equal(refusal(w, why, sizeof(why)), QC_ENOTFOUND);
    assert_string_equal(why, "no applet with this AID");
    const uint8_t by_path[] = {0x00, 0xA4, 0x08, 0x00, 0x02, 0x3F, 0x00};
    assert_int_equal(send(w, by_path, sizeof(by_path)), 0x6A86);
    assert_int_equal(select_aid(w), 0x9000);
    const uint8_t ins[] = {0x00, 0xFE, 0x00, 0x00};
    assert_int_equal(send(w, ins, sizeof(ins)), 0x6D00);
    const uint8_t cla[] = {0x40, 0x20, 0x00, 0x81};
    assert_int_equal(send(w, cla, sizeof(cla)), 0x6E00);
    const uint8_t wrong_class[] = {0x80, 0x20, 0x00, 0x81}; /* VERIFY is an ISO command */
    assert_int_equal(send(w, wrong_class, sizeof(wrong_class)), 0x6E00);
    const uint8_t credit_iso[] = {0x00, 0x30, 0x00, 0x00, 0x01, 0x00}; /* CREDIT is ours */
    assert_int_equal(send(w, credit_iso, sizeof(credit_iso)), 0x6E00);
    const uint8_t lying[] = {0x00, 0xA4, 0x04, 0x00, 0x08, 0xF0, 'Q', 'C'};
    assert_int_equal(send(w, lying, sizeof(lying)), 0x6700);
    const uint8_t two[] = {0x00, 0xA4};
    assert_int_equal(send(w, two, sizeof(two)), 0x6700);
    /* A reset forgets the selection. */
    card_applet_reset(w->applet);
    const uint8_t purse[] = {0x00, 0xCA, 0x01, 0x01, 0x00};
    assert_int_equal(send(w, purse, sizeof(purse)), 0x6985);
}

static void test_applet_data_and_order(void **state)
{
    world_t *w = *state;
    char why[CARD_APDU_SENTENCE_MAX + 1];
    assert_int_equal(select_aid(w), 0x9000);
    const uint8_t purse[] = {0x00, 0xCA, 0x01, 0x01, 0x00};
    assert_int_equal(send(w, purse, sizeof(purse)), 0x9000);
    card_apdu_purse_t p;
    assert_int_equal(card_apdu_purse_parse(w->resp, w->resp_len - 2, &p), 0);
    assert_string_equal(p.number, "CARD-A1");
    assert_int_equal(p.balance, 0);
    assert_int_equal(p.max_balance, 10000);
    assert_int_equal(p.pin_tries_left, 3);
    const uint8_t nothing[] = {0x00, 0xCA, 0x01, 0x99, 0x00};
    assert_int_equal(send(w, nothing, sizeof(nothing)), 0x6A88);
    /* VERIFY without data: the tries left, none spent; with a PIN before authentication:
     * 6982, and no try spent either. */
    const uint8_t tries[] = {0x00, 0x20, 0x00, 0x81};
    assert_int_equal(send(w, tries, sizeof(tries)), 0x63C3);
    const uint8_t verify[] = {0x00, 0x20, 0x00, 0x81, 0x04, '1', '3', '5', '7'};
    assert_int_equal(send(w, verify, sizeof(verify)), 0x6982);
    assert_int_equal(refusal(w, why, sizeof(why)), QC_EDENIED);
    assert_string_equal(why, "authenticate before presenting the PIN");
    assert_int_equal(send(w, tries, sizeof(tries)), 0x63C3);
    const uint8_t wrong_p2[] = {0x00, 0x20, 0x00, 0x01, 0x01, '1'};
    assert_int_equal(send(w, wrong_p2, sizeof(wrong_p2)), 0x6A86);
    /* Credits and proofs before authentication. */
    const uint8_t credit[] = {0x80, 0x30, 0x00, 0x00, 0x02, 0x0A, 0x00, 0x00};
    assert_int_equal(send(w, credit, sizeof(credit)), 0x6982);
    uint8_t proof[5 + 16 + 1] = {0x80, 0x34, 0x00, 0x00, 16};
    assert_int_equal(send(w, proof, sizeof(proof)), 0x6982);
    assert_int_equal(send(w, proof, 5 + 15), 0x6700); /* Lc says 16, 15 follow */
    const uint8_t ext_auth[] = {0x00, 0x82, 0x00, 0x00, 0x01, 0x00};
    assert_int_equal(send(w, ext_auth, sizeof(ext_auth)), 0x6985); /* no challenge yet */
    /* This card has no certificate yet: INTERNAL AUTHENTICATE cannot be answered. */
    uint8_t auth[5 + 40] = {0x00, 0x88, 0x00, 0x00, 40};
    assert_int_equal(send(w, auth, sizeof(auth)), 0x6985);
    assert_int_equal(refusal(w, why, sizeof(why)), QC_ECERT);
}

static void test_applet_chaining_and_get_response(void **state)
{
    world_t *w = *state;
    assert_int_equal(select_aid(w), 0x9000);
    /* A response longer than Le: 61xx, then GET RESPONSE for the rest. */
    const uint8_t purse_small[] = {0x00, 0xCA, 0x01, 0x01, 0x10};
    assert_int_equal(send(w, purse_small, sizeof(purse_small)), 0x6100 | (1 + 7 + 25 - 16));
    assert_int_equal(w->resp_len, 16 + 2);
    uint8_t whole[64];
    memcpy(whole, w->resp, 16);
    const uint8_t get_response[] = {0x00, 0xC0, 0x00, 0x00, 0x00};
    assert_int_equal(send(w, get_response, sizeof(get_response)), 0x9000);
    assert_int_equal(w->resp_len, 1 + 7 + 25 - 16 + 2);
    memcpy(whole + 16, w->resp, w->resp_len - 2);
    card_apdu_purse_t p;
    assert_int_equal(card_apdu_purse_parse(whole, 1 + 7 + 25, &p), 0);
    assert_string_equal(p.number, "CARD-A1");
    assert_int_equal(send(w, get_response, sizeof(get_response)), 0x6985); /* nothing left */
    /* No Le at all: 61xx says how much is waiting. */
    const uint8_t purse_no_le[] = {0x00, 0xCA, 0x01, 0x01};
    assert_int_equal(send(w, purse_no_le, sizeof(purse_no_le)), 0x6100 | (1 + 7 + 25));
    /* An extended Le takes it all at once. */
    const uint8_t purse_ext[] = {0x00, 0xCA, 0x01, 0x01, 0x00, 0x00, 0x00};
    assert_int_equal(send(w, purse_ext, sizeof(purse_ext)), 0x9000);
    assert_int_equal(w->resp_len, 1 + 7 + 25 + 2);

    /* A chain interrupted by another command: 6883, and the chain is gone. */
    uint8_t part[5 + 200] = {0x10, 0x88, 0x00, 0x00, 200};
    assert_int_equal(send(w, part, sizeof(part)), 0x9000);
    assert_int_equal(send(w, purse_ext, sizeof(purse_ext)), 0x6883);
    /* A chain of an instruction that takes none: 6884. */
    const uint8_t chained_verify[] = {0x10, 0x20, 0x00, 0x81, 0x01, '1'};
    assert_int_equal(send(w, chained_verify, sizeof(chained_verify)), 0x6884);
    /* A chain longer than the card takes: 6700. */
    uint8_t big[5 + 255] = {0x10, 0x88, 0x00, 0x00, 255};
    uint16_t sw = 0x9000;
    int parts = 0;
    while (sw == 0x9000 && parts < 100) {
        sw = send(w, big, sizeof(big));
        parts++;
    }
    assert_int_equal(sw, 0x6700);
    assert_int_equal(parts, CARD_APPLET_CHAIN_MAX / 255 + 1);
    /* The whole chain, finished: it reaches the card as one command (here refused because
     * this card has no certificate, which is decided only on the last part). */
    assert_int_equal(send(w, part, sizeof(part)), 0x9000);
    uint8_t last[5 + 10] = {0x00, 0x88, 0x00, 0x00, 10};
    assert_int_equal(send(w, last, sizeof(last)), 0x6985);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_short_cases),
        cmocka_unit_test(test_parse_refuses_lying_lengths),
        cmocka_unit_test(test_parse_extended_cases),
        cmocka_unit_test(test_encode_round_trip),
        cmocka_unit_test(test_response_and_purse),
        cmocka_unit_test_setup_teardown(test_applet_selection_and_classes, world_setup,
                                        world_teardown),
        cmocka_unit_test_setup_teardown(test_applet_data_and_order, world_setup, world_teardown),
        cmocka_unit_test_setup_teardown(test_applet_chaining_and_get_response, world_setup,
                                        world_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
