/* card_apdu.h - ISO/IEC 7816-4 command and response APDUs of the quancun card applet: a pure
 * parser and encoder (no I/O, no allocation), the applet's identifier and instruction set, and
 * the status words both sides use. The wallet (client/wallet/card_host.c) and the card
 * (client/card/card_applet.c) share it; docs/CARD.md lists every command.
 *
 * A command APDU is CLA INS P1 P2, then one of the four cases of ISO/IEC 7816-3 12.1:
 *   case 1   nothing
 *   case 2   Le                    short: 1 byte (00 = 256); extended: 00 Le1 Le2 (0000 = 65536)
 *   case 3   Lc data               short: Lc 1..255; extended: 00 Lc1 Lc2 (1..65535)
 *   case 4   Lc data Le            both short or both extended (then Le is 2 bytes)
 * The parser takes the lengths from the bytes but never believes them: a command is accepted
 * only when its length is exactly what its Lc and Le say. Nc is the number of data bytes, Ne
 * the most response bytes the reader accepts (0 when no Le). */
#ifndef CARD_APDU_H
#define CARD_APDU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qc_error.h"

#define CARD_APDU_HEADER_SIZE 4
#define CARD_APDU_SHORT_NC_MAX 255      /* data of one short command */
#define CARD_APDU_SHORT_NE_MAX 256      /* Le = 00 */
#define CARD_APDU_EXTENDED_NC_MAX 65535 /* data of one extended command */
#define CARD_APDU_EXTENDED_NE_MAX 65536 /* Le = 0000 */
#define CARD_APDU_COMMAND_MAX (CARD_APDU_HEADER_SIZE + 3 + CARD_APDU_EXTENDED_NC_MAX + 2)
#define CARD_APDU_SW_SIZE 2

/* The class byte: bit 5 (0x10) marks a command that a further one continues (command
 * chaining, ISO/IEC 7816-4 5.1.1.1); 0x80 marks our proprietary commands. */
#define CARD_APDU_CLA_ISO 0x00
#define CARD_APDU_CLA_PROPRIETARY 0x80
#define CARD_APDU_CLA_CHAIN 0x10

/* The applet's AID: a proprietary RID (F0, not registered) and "QCCARD" 01. */
#define CARD_APDU_AID_SIZE 8
extern const uint8_t card_apdu_aid[CARD_APDU_AID_SIZE];

/* Instructions (docs/CARD.md has their data, responses and status words). */
#define CARD_INS_SELECT 0xA4        /* 00 A4 04 00: select the applet by AID */
#define CARD_INS_GET_RESPONSE 0xC0  /* 00 C0 00 00: the rest of a response (after 61xx) */
#define CARD_INS_GET_DATA 0xCA      /* 00 CA P1P2: the purse (0101), the last refusal (0102) */
#define CARD_INS_INTERNAL_AUTH 0x88 /* 00 88 00 00: host challenge and certificate */
#define CARD_INS_EXTERNAL_AUTH 0x82 /* 00 82 00 00: host's signed answer to the card challenge */
#define CARD_INS_VERIFY 0x20        /* 00 20 00 81: the card PIN */
#define CARD_INS_CREDIT 0x30        /* 80 30 00 00: a signed CardCredit */
#define CARD_INS_PROOF 0x34         /* 80 34 00 00: a transfer id: the signed CardReceipt */

#define CARD_P1_SELECT_BY_AID 0x04
#define CARD_P2_VERIFY_PIN 0x81
#define CARD_DATA_PURSE 0x0101   /* GET DATA P1P2: number, balance, maximum, counter, tries */
#define CARD_DATA_REFUSAL 0x0102 /* GET DATA P1P2: code and sentence of the last refusal */

/* Status words. */
#define CARD_SW_OK 0x9000
#define CARD_SW_MORE 0x6100         /* 61xx: xx more bytes with GET RESPONSE (00 = 256) */
#define CARD_SW_AUTH_FAILED 0x6300  /* EXTERNAL AUTHENTICATE: the host's answer is refused */
#define CARD_SW_PIN_TRIES 0x63C0    /* 63Cx: wrong PIN, x tries left (63C0: now blocked) */
#define CARD_SW_MEMORY 0x6581       /* the card could not write its state */
#define CARD_SW_WRONG_LENGTH 0x6700 /* Lc or Le inconsistent, or data too long */
#define CARD_SW_CHAIN_LAST 0x6883   /* the last command of a chain was expected */
#define CARD_SW_CHAIN_NONE 0x6884   /* this instruction does not take a chain */
#define CARD_SW_SECURITY 0x6982     /* not authenticated, or PIN not verified, or untrusted */
#define CARD_SW_BLOCKED 0x6983      /* the PIN is blocked */
#define CARD_SW_CONDITIONS 0x6985   /* wrong order, replay, not personalised */
#define CARD_SW_WRONG_DATA 0x6A80   /* the data field is refused (signature, names, amount) */
#define CARD_SW_NOT_FOUND 0x6A82    /* SELECT: no such applet */
#define CARD_SW_NO_SPACE 0x6A84     /* the purse's maximum or the card's transfer log */
#define CARD_SW_WRONG_P1P2 0x6A86   /* P1 P2 not supported */
#define CARD_SW_NO_DATA 0x6A88      /* GET DATA: no such object */
#define CARD_SW_INS_UNKNOWN 0x6D00  /* instruction not supported */
#define CARD_SW_CLA_UNKNOWN 0x6E00  /* class not supported */
#define CARD_SW_UNKNOWN 0x6F00      /* no precise diagnosis */

/* A parsed command. data points into the parsed buffer (borrowed). */
typedef struct card_apdu {
    uint8_t cla, ins, p1, p2;
    const uint8_t *data;
    size_t nc;     /* data bytes, 0..65535 */
    size_t ne;     /* response bytes accepted, 0 (no Le) .. 65536 */
    bool extended; /* Lc/Le were in the extended form */
} card_apdu_t;

/* Parses len bytes of buf as one command APDU into *out (data borrowed from buf).
 * Returns 0; QC_EDECODE when len < 4 (truncated) or the length does not match Lc and Le;
 * QC_ETOOBIG when len > CARD_APDU_COMMAND_MAX. *out is zeroed on error. */
QC_MUST_CHECK int card_apdu_parse(const uint8_t *buf, size_t len, card_apdu_t *out);

/* Encodes cmd (nc data bytes at cmd->data, ne as above) into out[0..cap): the short form when
 * nc <= 255 and ne <= 256, else the extended one. Returns 0 and sets *len, QC_EINVAL
 * (nc or ne out of range), or QC_ETOOBIG (cap too small). */
QC_MUST_CHECK int card_apdu_encode(const card_apdu_t *cmd, uint8_t *out, size_t cap, size_t *len);

/* Splits a response APDU: *sw from its last two bytes, *data_len the bytes before them.
 * Returns 0, or QC_EDECODE when len < 2. */
QC_MUST_CHECK int card_apdu_response(const uint8_t *buf, size_t len, uint16_t *sw,
                                     size_t *data_len);

/* A short English name of a status word ("wrong length"), for messages; never NULL. */
const char *card_apdu_sw_text(uint16_t sw);

/* The QC_E* code a status word stands for when the card gave no better reason. */
int card_apdu_sw_code(uint16_t sw);

/* The purse object of GET DATA 0101: number length (1), number, balance (8), maximum (8),
 * counter (8), PIN tries left (1); integers big-endian. */
#define CARD_APDU_NUMBER_MAX 64
#define CARD_APDU_PURSE_MAX (1 + CARD_APDU_NUMBER_MAX + 8 + 8 + 8 + 1)
typedef struct card_apdu_purse {
    char number[CARD_APDU_NUMBER_MAX + 1];
    int64_t balance;
    int64_t max_balance;
    uint64_t counter;
    uint8_t pin_tries_left;
} card_apdu_purse_t;

/* Encodes p into out (CARD_APDU_PURSE_MAX bytes). Returns the length, or 0 when the number
 * is empty or too long. */
size_t card_apdu_purse_encode(const card_apdu_purse_t *p, uint8_t out[CARD_APDU_PURSE_MAX]);

/* Parses a purse object. Returns 0, or QC_EDECODE (any length mismatch, a number that is not
 * visible ASCII, a negative balance or maximum). */
QC_MUST_CHECK int card_apdu_purse_parse(const uint8_t *buf, size_t len, card_apdu_purse_t *out);

/* The refusal object of GET DATA 0102: the QC_E* code (4 bytes, big-endian two's
 * complement), then the card's sentence (0..CARD_APDU_SENTENCE_MAX bytes, no NUL). */
#define CARD_APDU_SENTENCE_MAX 252 /* so a refusal fits one short response */
#define CARD_APDU_REFUSAL_MAX (4 + CARD_APDU_SENTENCE_MAX)

#endif
