/* fuzz_apdu.c - libFuzzer target over the card applet's APDU layer (client/device/card_apdu.h),
 * which both the card and the wallet run on bytes from the other side of a reader.
 *
 * Input: byte 0 picks the parser, the rest is its input:
 *   0: a command APDU (card_apdu_parse)      1: a response APDU (card_apdu_response)
 *   2: a purse object (card_apdu_purse_parse)
 * Properties, beyond "no crash, no leak, no undefined behaviour, no read past the input":
 * - a command that parses has exactly the length its Lc and Le say; re-encoded, it parses to
 *   the same fields, and a short-form command re-encodes to exactly the input bytes;
 * - a response splits into len - 2 data bytes and the last two as the status word;
 * - a purse that parses re-encodes to exactly the input bytes (one encoding per purse). */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "card_apdu.h"
#include "fuzz_common.h"

static uint8_t encoded[CARD_APDU_COMMAND_MAX];

static void check_command(const uint8_t *in, size_t len)
{
    card_apdu_t a;
    if (card_apdu_parse(in, len, &a) != 0) {
        FUZZ_CHECK(a.data == NULL);
        FUZZ_CHECK(a.nc == 0);
        return;
    }
    FUZZ_CHECK(len >= CARD_APDU_HEADER_SIZE);
    FUZZ_CHECK(a.nc <= CARD_APDU_EXTENDED_NC_MAX);
    FUZZ_CHECK(a.ne <= CARD_APDU_EXTENDED_NE_MAX);
    FUZZ_CHECK(a.nc == 0 || (a.data >= in && a.data + a.nc <= in + len));
    /* The length is exactly what Lc and Le say. */
    size_t lc = a.nc == 0 ? 0 : (a.extended ? 3 : 1);
    size_t le = a.ne == 0 ? 0 : (a.extended ? (a.nc == 0 ? 3 : 2) : 1);
    FUZZ_CHECK(len == CARD_APDU_HEADER_SIZE + lc + a.nc + le);
    size_t n = 0;
    FUZZ_CHECK(card_apdu_encode(&a, encoded, sizeof encoded, &n) == 0);
    card_apdu_t b;
    FUZZ_CHECK(card_apdu_parse(encoded, n, &b) == 0);
    FUZZ_CHECK(b.cla == a.cla);
    FUZZ_CHECK(b.ins == a.ins);
    FUZZ_CHECK(b.p1 == a.p1);
    FUZZ_CHECK(b.p2 == a.p2);
    FUZZ_CHECK(b.nc == a.nc);
    FUZZ_CHECK(b.ne == a.ne);
    FUZZ_CHECK(a.nc == 0 || memcmp(a.data, b.data, a.nc) == 0);
    if (!a.extended) {
        FUZZ_CHECK(n == len);
        FUZZ_CHECK(memcmp(encoded, in, len) == 0);
    }
}

static void check_response(const uint8_t *in, size_t len)
{
    uint16_t sw = 0;
    size_t data_len = 0;
    int rc = card_apdu_response(in, len, &sw, &data_len);
    if (len < CARD_APDU_SW_SIZE) {
        FUZZ_CHECK(rc == QC_EDECODE);
        return;
    }
    FUZZ_CHECK(rc == 0);
    FUZZ_CHECK(data_len == len - CARD_APDU_SW_SIZE);
    FUZZ_CHECK(sw == (uint16_t)((in[len - 2] << 8) | in[len - 1]));
    FUZZ_CHECK(card_apdu_sw_text(sw) != NULL);
    FUZZ_CHECK(card_apdu_sw_code(sw) <= 0);
}

static void check_purse(const uint8_t *in, size_t len)
{
    card_apdu_purse_t p;
    if (card_apdu_purse_parse(in, len, &p) != 0)
        return;
    FUZZ_CHECK(p.balance >= 0);
    FUZZ_CHECK(p.max_balance >= 0);
    FUZZ_CHECK(strlen(p.number) > 0);
    uint8_t out[CARD_APDU_PURSE_MAX];
    size_t n = card_apdu_purse_encode(&p, out);
    FUZZ_CHECK(n == len);
    FUZZ_CHECK(memcmp(out, in, len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t *in = data + 1;
    size_t len = size - 1;
    switch (data[0] % 3) {
    case 0:
        check_command(in, len);
        break;
    case 1:
        check_response(in, len);
        break;
    default:
        check_purse(in, len);
    }
    return 0;
}
