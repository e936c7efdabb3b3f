/* card_applet.c - command APDUs in, the card's operations run, response APDUs out
 * (see card_applet.h; the command set is in docs/CARD.md).
 *
 * Invariants:
 *   1. Only the selected applet runs a command: after a reset nothing but SELECT, GET DATA of
 *      the last refusal and GET RESPONSE is answered with anything but 6985.
 *   2. A chain is one command: its parts have the same CLA (without the chain bit) and INS,
 *      and nothing runs until its last part; any other command in between drops the chain.
 *   3. An error status word carries no data; response data is kept for GET RESPONSE only
 *      until the next command that is not GET RESPONSE.
 *   4. The money rules are the card's (card_device.c); the applet never changes the state
 *      itself, it only asks card_device_handle(). */
#include "card_applet.h"

#include <assert.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "card.pb-c.h"
#include "device_pin.h"
#include "device_wire.h"
#include "ops_log.h"

_Static_assert(CARD_APPLET_CHAIN_MAX <= DEVICE_WIRE_FRAME_MAX, "a chain is one card command");

/* 3B: direct convention; 86: TD1 follows, 6 historical bytes; 80: TD2 follows, T=0;
 * 01: T=1; "QCCARD"; TCK = XOR of T0 .. the last historical byte. */
static const uint8_t applet_atr[] = {0x3B, 0x86, 0x80, 0x01, 'Q', 'C', 'C', 'A', 'R', 'D', 0x01};

struct card_applet {
    card_device_t *dev; /* borrowed */
    bool selected;
    bool chaining;
    uint8_t chain_cla, chain_ins;
    size_t chain_len;
    uint8_t chain[CARD_APPLET_CHAIN_MAX];
    size_t resp_len, resp_off; /* response data not yet read */
    uint8_t resp[CARD_APPLET_RESPONSE_MAX];
    int refusal_code;
    char refusal[CARD_APDU_SENTENCE_MAX + 1];
};

/* What one command produces: a status word and, with 9000, the data in applet->resp. */
typedef struct command {
    const card_apdu_t *apdu;
    const uint8_t *data; /* the whole data of the chain */
    size_t nc;
} command_t;

typedef uint16_t (*handler_fn)(card_applet_t *a, const command_t *c);

const uint8_t *card_applet_atr(size_t *len)
{
    assert(len != NULL);
    *len = sizeof(applet_atr);
    return applet_atr;
}

int card_applet_new(card_device_t *dev, card_applet_t **out)
{
    assert(dev != NULL);
    assert(out != NULL);
    card_applet_t *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return QC_ENOMEM;
    a->dev = dev;
    *out = a;
    return 0;
}

void card_applet_destroy(card_applet_t **applet_p)
{
    if (applet_p == NULL || *applet_p == NULL)
        return;
    OPENSSL_cleanse(*applet_p, sizeof(**applet_p));
    free(*applet_p);
    *applet_p = NULL;
}

static void drop_chain(card_applet_t *a)
{
    OPENSSL_cleanse(a->chain, a->chain_len);
    a->chain_len = 0;
    a->chaining = false;
}

void card_applet_reset(card_applet_t *a)
{
    assert(a != NULL);
    a->selected = false;
    drop_chain(a);
    a->resp_len = 0;
    a->resp_off = 0;
    card_device_session_reset(a->dev);
}

/* Records why a command was refused (GET DATA 0102) and returns its status word. */
static uint16_t refuse(card_applet_t *a, uint16_t sw, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static uint16_t refuse(card_applet_t *a, uint16_t sw, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->refusal, sizeof(a->refusal), fmt, ap);
    va_end(ap);
    a->refusal_code = code;
    a->resp_len = 0;
    return sw;
}

/* ------------------------------------------------------------------ the card's operations */

/* Runs one operation of the card. On 0, *resp is its answer (the caller frees it); a refusal
 * by the card is an answer with resp->code != 0. Otherwise the card could not answer. */
static int run(card_applet_t *a, const Qccard__CardRequest *req, Qccard__CardResponse **resp)
{
    *resp = NULL;
    size_t len = qccard__card_request__get_packed_size(req);
    uint8_t *buf = malloc(len > 0 ? len : 1);
    if (buf == NULL)
        return QC_ENOMEM;
    size_t packed = qccard__card_request__pack(req, buf);
    assert(packed == len);
    uint8_t *out = NULL;
    size_t out_len = 0;
    int rc = card_device_handle(a->dev, buf, len, &out, &out_len);
    OPENSSL_cleanse(buf, len);
    free(buf);
    if (rc != 0)
        return rc;
    *resp = qccard__card_response__unpack(NULL, out_len, out);
    free(out);
    return *resp == NULL ? QC_EINTERNAL : 0; /* our own card's bytes: never malformed */
}

/* The status word of a refusal no handler treats specially. */
static uint16_t sw_of(int code)
{
    switch (code) {
    case QC_EDENIED:
    case QC_EUNTRUSTED:
        return CARD_SW_SECURITY;
    case QC_ESTATE:
    case QC_EREPLAY:
        return CARD_SW_CONDITIONS;
    case QC_ECARDMAX:
    case QC_EFULL:
        return CARD_SW_NO_SPACE;
    case QC_ELOCKED:
        return CARD_SW_BLOCKED;
    case QC_ETOOBIG:
        return CARD_SW_WRONG_LENGTH;
    case QC_EIO:
        return CARD_SW_MEMORY;
    case QC_ENOMEM:
    case QC_ECRYPTO:
    case QC_EINTERNAL:
        return CARD_SW_UNKNOWN;
    default:
        return CARD_SW_WRONG_DATA;
    }
}

/* Runs req; on success copies the card challenge (when with_challenge) and the signed blob
 * into the response data. A refusal is recorded, with status word sw (0: sw_of()). */
static uint16_t run_signed(card_applet_t *a, const Qccard__CardRequest *req, bool with_challenge,
                           uint16_t sw)
{
    Qccard__CardResponse *r = NULL;
    int rc = run(a, req, &r);
    if (rc != 0)
        return refuse(a, sw_of(rc), rc, "the card could not answer: %s", qc_strerror(rc));
    uint16_t out = CARD_SW_OK;
    if (r->code != 0) {
        out = refuse(a, sw != 0 ? sw : sw_of(r->code), r->code, "%s",
                     r->message != NULL ? r->message : qc_strerror(r->code));
    } else {
        size_t ch = with_challenge ? r->challenge.len : 0;
        if (ch + r->signed_.len > sizeof(a->resp)) {
            out = refuse(a, CARD_SW_UNKNOWN, QC_ETOOBIG, "the card's answer is too long");
        } else {
            if (ch > 0)
                memcpy(a->resp, r->challenge.data, ch);
            if (r->signed_.len > 0)
                memcpy(a->resp + ch, r->signed_.data, r->signed_.len);
            a->resp_len = ch + r->signed_.len;
        }
    }
    qccard__card_response__free_unpacked(r, NULL);
    return out;
}

/* ------------------------------------------------------------------ the commands */

static uint16_t cmd_select(card_applet_t *a, const command_t *c)
{
    const card_apdu_t *p = c->apdu;
    if (p->p1 != CARD_P1_SELECT_BY_AID || (p->p2 != 0x00 && p->p2 != 0x0C))
        return refuse(a, CARD_SW_WRONG_P1P2, QC_EINVAL, "only selection by AID is supported");
    card_applet_reset(a); /* a new selection is a new session */
    if (c->nc != CARD_APDU_AID_SIZE || memcmp(c->data, card_apdu_aid, CARD_APDU_AID_SIZE) != 0)
        return refuse(a, CARD_SW_NOT_FOUND, QC_ENOTFOUND, "no applet with this AID");
    a->selected = true;
    return CARD_SW_OK;
}

static uint16_t cmd_get_data(card_applet_t *a, const command_t *c)
{
    unsigned tag = ((unsigned)c->apdu->p1 << 8) | c->apdu->p2;
    if (tag == CARD_DATA_REFUSAL) {
        /* Readable before selection too: it may explain why SELECT failed. */
        size_t n = strlen(a->refusal);
        uint32_t code = (uint32_t)a->refusal_code;
        a->resp[0] = (uint8_t)(code >> 24);
        a->resp[1] = (uint8_t)(code >> 16);
        a->resp[2] = (uint8_t)(code >> 8);
        a->resp[3] = (uint8_t)code;
        memcpy(a->resp + 4, a->refusal, n);
        a->resp_len = 4 + n;
        return CARD_SW_OK;
    }
    if (!a->selected)
        return refuse(a, CARD_SW_CONDITIONS, QC_ESTATE, "select the quancun applet first");
    if (tag != CARD_DATA_PURSE)
        return refuse(a, CARD_SW_NO_DATA, QC_ENOTFOUND, "no data object %04X", tag);
    const card_state_t *st = card_device_state(a->dev);
    card_apdu_purse_t purse = {.balance = st->balance,
                               .max_balance = st->max_balance,
                               .counter = st->counter,
                               .pin_tries_left = (uint8_t)st->pin.tries_left};
    snprintf(purse.number, sizeof(purse.number), "%s", st->number);
    a->resp_len = card_apdu_purse_encode(&purse, a->resp);
    assert(a->resp_len > 0); /* the card's own number is valid */
    return CARD_SW_OK;
}

static uint16_t cmd_internal_auth(card_applet_t *a, const command_t *c)
{
    if (c->apdu->p1 != 0 || c->apdu->p2 != 0)
        return refuse(a, CARD_SW_WRONG_P1P2, QC_EINVAL, "INTERNAL AUTHENTICATE takes P1 P2 0000");
    if (c->nc <= DEVICE_CARD_CHALLENGE_SIZE)
        return refuse(a, CARD_SW_WRONG_LENGTH, QC_EDECODE,
                      "the data must be a %d-byte challenge and the device's certificate",
                      DEVICE_CARD_CHALLENGE_SIZE);
    Qccard__CardRequest req = QCCARD__CARD_REQUEST__INIT;
    req.op = QCCARD__CARD_OP__CARD_OP_AUTH_BEGIN;
    req.challenge.data = (uint8_t *)c->data;
    req.challenge.len = DEVICE_CARD_CHALLENGE_SIZE;
    req.cert.data = (uint8_t *)c->data + DEVICE_CARD_CHALLENGE_SIZE;
    req.cert.len = c->nc - DEVICE_CARD_CHALLENGE_SIZE;
    uint16_t sw = card_device_has_cert(a->dev) ? 0 : CARD_SW_CONDITIONS;
    return run_signed(a, &req, true, sw);
}

static uint16_t cmd_external_auth(card_applet_t *a, const command_t *c)
{
    if (c->apdu->p1 != 0 || c->apdu->p2 != 0)
        return refuse(a, CARD_SW_WRONG_P1P2, QC_EINVAL, "EXTERNAL AUTHENTICATE takes P1 P2 0000");
    Qccard__CardRequest req = QCCARD__CARD_REQUEST__INIT;
    req.op = QCCARD__CARD_OP__CARD_OP_AUTH_FINISH;
    req.signed_.data = (uint8_t *)c->data;
    req.signed_.len = c->nc;
    Qccard__CardResponse *r = NULL;
    int rc = run(a, &req, &r);
    if (rc != 0)
        return refuse(a, sw_of(rc), rc, "the card could not answer: %s", qc_strerror(rc));
    uint16_t sw = CARD_SW_OK;
    if (r->code != 0)
        sw = refuse(a, r->code == QC_ESTATE ? CARD_SW_CONDITIONS : CARD_SW_AUTH_FAILED, r->code,
                    "%s", r->message != NULL ? r->message : qc_strerror(r->code));
    qccard__card_response__free_unpacked(r, NULL);
    return sw;
}

static uint16_t cmd_verify(card_applet_t *a, const command_t *c)
{
    if (c->apdu->p1 != 0 || c->apdu->p2 != CARD_P2_VERIFY_PIN)
        return refuse(a, CARD_SW_WRONG_P1P2, QC_EINVAL, "VERIFY takes P1 P2 0081 (the card PIN)");
    uint32_t tries = card_device_state(a->dev)->pin.tries_left;
    if (c->nc == 0) {
        /* No data: the retry counter, as ISO/IEC 7816-4 11.5.6 says; no try is spent. */
        if (tries == 0)
            return refuse(a, CARD_SW_BLOCKED, QC_ELOCKED, "the card PIN is blocked");
        if (card_device_pin_verified(a->dev))
            return CARD_SW_OK;
        return refuse(a, (uint16_t)(CARD_SW_PIN_TRIES | tries), QC_EPIN,
                      "the card PIN is not verified, %u tries left", (unsigned)tries);
    }
    if (c->nc > DEVICE_PIN_LEN_MAX || memchr(c->data, 0, c->nc) != NULL)
        return refuse(a, CARD_SW_WRONG_DATA, QC_EINVAL, "a card PIN has at most %d digits",
                      DEVICE_PIN_LEN_MAX);
    char pin[DEVICE_PIN_LEN_MAX + 1];
    memcpy(pin, c->data, c->nc);
    pin[c->nc] = '\0';
    Qccard__CardRequest req = QCCARD__CARD_REQUEST__INIT;
    req.op = QCCARD__CARD_OP__CARD_OP_VERIFY_PIN;
    req.pin = pin;
    Qccard__CardResponse *r = NULL;
    int rc = run(a, &req, &r);
    OPENSSL_cleanse(pin, sizeof(pin));
    if (rc != 0)
        return refuse(a, sw_of(rc), rc, "the card could not answer: %s", qc_strerror(rc));
    uint16_t sw = CARD_SW_OK;
    if (r->code != 0) {
        uint16_t want = sw_of(r->code);
        if (r->code == QC_EPIN)
            want = (uint16_t)(CARD_SW_PIN_TRIES | (r->pin_tries_left & 0x0F));
        else if (r->code == QC_ELOCKED && tries > 0)
            want = CARD_SW_PIN_TRIES; /* this wrong PIN was the last try: 63C0 */
        sw = refuse(a, want, r->code, "%s", r->message != NULL ? r->message : qc_strerror(r->code));
    }
    qccard__card_response__free_unpacked(r, NULL);
    return sw;
}

static uint16_t cmd_credit(card_applet_t *a, const command_t *c)
{
    if (c->apdu->p1 != 0 || c->apdu->p2 != 0)
        return refuse(a, CARD_SW_WRONG_P1P2, QC_EINVAL, "CREDIT takes P1 P2 0000");
    Qccard__CardRequest req = QCCARD__CARD_REQUEST__INIT;
    req.op = QCCARD__CARD_OP__CARD_OP_CREDIT;
    req.signed_.data = (uint8_t *)c->data;
    req.signed_.len = c->nc;
    return run_signed(a, &req, false, 0);
}

static uint16_t cmd_proof(card_applet_t *a, const command_t *c)
{
    if (c->apdu->p1 != 0 || c->apdu->p2 != 0)
        return refuse(a, CARD_SW_WRONG_P1P2, QC_EINVAL, "PROOF takes P1 P2 0000");
    if (c->nc != CARD_XFER_ID_SIZE)
        return refuse(a, CARD_SW_WRONG_LENGTH, QC_EDECODE, "a transfer id has %d bytes",
                      CARD_XFER_ID_SIZE);
    Qccard__CardRequest req = QCCARD__CARD_REQUEST__INIT;
    req.op = QCCARD__CARD_OP__CARD_OP_PROOF;
    req.transfer_id.data = (uint8_t *)c->data;
    req.transfer_id.len = c->nc;
    uint16_t sw = run_signed(a, &req, false, 0);
    /* Too many proofs in one contact is a matter of order, not of room on the card. */
    return sw == CARD_SW_NO_SPACE ? CARD_SW_CONDITIONS : sw;
}

/* ------------------------------------------------------------------ dispatch */

typedef struct instruction {
    uint8_t cla; /* without the chain bit */
    uint8_t ins;
    bool chain_ok;
    bool needs_selection;
    handler_fn run;
} instruction_t;

static const instruction_t instructions[] = {
    {CARD_APDU_CLA_ISO, CARD_INS_SELECT, false, false, cmd_select},
    {CARD_APDU_CLA_ISO, CARD_INS_GET_DATA, false, false, cmd_get_data},
    {CARD_APDU_CLA_ISO, CARD_INS_INTERNAL_AUTH, true, true, cmd_internal_auth},
    {CARD_APDU_CLA_ISO, CARD_INS_EXTERNAL_AUTH, true, true, cmd_external_auth},
    {CARD_APDU_CLA_ISO, CARD_INS_VERIFY, false, true, cmd_verify},
    {CARD_APDU_CLA_PROPRIETARY, CARD_INS_CREDIT, true, true, cmd_credit},
    {CARD_APDU_CLA_PROPRIETARY, CARD_INS_PROOF, false, true, cmd_proof},
};

/* Writes the status word after n data bytes; returns the response length. */
static size_t put_sw(uint8_t *out, size_t n, uint16_t sw)
{
    out[n] = (uint8_t)(sw >> 8);
    out[n + 1] = (uint8_t)sw;
    return n + CARD_APDU_SW_SIZE;
}

/* Sends as much of the pending data as ne allows; 61xx when some is left. */
static size_t send_data(card_applet_t *a, size_t ne, uint8_t *out)
{
    assert(a->resp_off <= a->resp_len);
    size_t left = a->resp_len - a->resp_off;
    size_t n = left < ne ? left : ne;
    memcpy(out, a->resp + a->resp_off, n);
    a->resp_off += n;
    left -= n;
    if (left == 0) {
        a->resp_len = 0;
        a->resp_off = 0;
        return put_sw(out, n, CARD_SW_OK);
    }
    size_t next = left < CARD_APDU_SHORT_NE_MAX ? left : CARD_APDU_SHORT_NE_MAX;
    return put_sw(out, n, (uint16_t)(CARD_SW_MORE | (next & 0xFF))); /* 6100: 256 more */
}

static uint16_t get_response(card_applet_t *a, const card_apdu_t *p, uint8_t *out, size_t *len)
{
    if (p->p1 != 0 || p->p2 != 0)
        return refuse(a, CARD_SW_WRONG_P1P2, QC_EINVAL, "GET RESPONSE takes P1 P2 0000");
    if (a->resp_len == a->resp_off)
        return refuse(a, CARD_SW_CONDITIONS, QC_ESTATE, "no response data is waiting");
    size_t ne = p->ne == 0 ? CARD_APDU_SHORT_NE_MAX : p->ne;
    *len = send_data(a, ne, out);
    return CARD_SW_OK;
}

/* Finds the instruction of p, or says why there is none. */
static const instruction_t *find(card_applet_t *a, const card_apdu_t *p, uint16_t *sw)
{
    uint8_t cla = p->cla & (uint8_t)~CARD_APDU_CLA_CHAIN;
    bool ins_known = false;
    for (size_t i = 0; i < sizeof(instructions) / sizeof(instructions[0]); i++) {
        if (instructions[i].ins != p->ins)
            continue;
        ins_known = true;
        if (instructions[i].cla == cla)
            return &instructions[i];
    }
    if (cla != CARD_APDU_CLA_ISO && cla != CARD_APDU_CLA_PROPRIETARY)
        *sw = refuse(a, CARD_SW_CLA_UNKNOWN, QC_EMETHOD, "class %02X is not supported", p->cla);
    else if (!ins_known)
        *sw =
            refuse(a, CARD_SW_INS_UNKNOWN, QC_EMETHOD, "instruction %02X is not supported", p->ins);
    else
        *sw = refuse(a, CARD_SW_CLA_UNKNOWN, QC_EMETHOD,
                     "instruction %02X is not defined in class %02X", p->ins, cla);
    return NULL;
}

/* Runs a parsed command; returns its status word (data, if any, left in a->resp). */
static uint16_t execute(card_applet_t *a, const card_apdu_t *p)
{
    uint16_t sw = CARD_SW_UNKNOWN;
    const instruction_t *in = find(a, p, &sw);
    bool chained = (p->cla & CARD_APDU_CLA_CHAIN) != 0;
    if (a->chaining && (in == NULL || (p->cla & (uint8_t)~CARD_APDU_CLA_CHAIN) != a->chain_cla ||
                        p->ins != a->chain_ins)) {
        drop_chain(a);
        return refuse(a, CARD_SW_CHAIN_LAST, QC_EDECODE,
                      "the chain was interrupted by another command");
    }
    if (in == NULL)
        return sw;
    if (in->needs_selection && !a->selected)
        return refuse(a, CARD_SW_CONDITIONS, QC_ESTATE, "select the quancun applet first");
    if (chained && !in->chain_ok)
        return refuse(a, CARD_SW_CHAIN_NONE, QC_EDECODE, "instruction %02X does not take a chain",
                      p->ins);
    if (chained || a->chaining) {
        if (p->nc > sizeof(a->chain) - a->chain_len) {
            drop_chain(a);
            return refuse(a, CARD_SW_WRONG_LENGTH, QC_ETOOBIG,
                          "a chained command has at most %d bytes", CARD_APPLET_CHAIN_MAX);
        }
        memcpy(a->chain + a->chain_len, p->data, p->nc);
        a->chain_len += p->nc;
        a->chain_cla = p->cla & (uint8_t)~CARD_APDU_CLA_CHAIN;
        a->chain_ins = p->ins;
        a->chaining = true;
        if (chained)
            return CARD_SW_OK; /* more parts follow */
        command_t c = {.apdu = p, .data = a->chain, .nc = a->chain_len};
        sw = in->run(a, &c);
        drop_chain(a);
        return sw;
    }
    command_t c = {.apdu = p, .data = p->data, .nc = p->nc};
    return in->run(a, &c);
}

void card_applet_process(card_applet_t *a, const uint8_t *cmd, size_t cmd_len, uint8_t *rapdu,
                         size_t cap, size_t *rapdu_len)
{
    assert(a != NULL);
    assert(rapdu != NULL);
    assert(rapdu_len != NULL);
    assert(cap >= CARD_APPLET_RAPDU_MAX);
    (void)cap;
    card_apdu_t p;
    int rc = card_apdu_parse(cmd, cmd_len, &p);
    if (rc != 0) {
        drop_chain(a);
        *rapdu_len = put_sw(rapdu, 0,
                            refuse(a, CARD_SW_WRONG_LENGTH, rc,
                                   "the command's length does not match its Lc and Le"));
        return;
    }
    if (p.ins == CARD_INS_GET_RESPONSE && (p.cla & (uint8_t)~CARD_APDU_CLA_CHAIN) == 0 &&
        !a->chaining) {
        uint16_t sw = get_response(a, &p, rapdu, rapdu_len);
        if (sw != CARD_SW_OK)
            *rapdu_len = put_sw(rapdu, 0, sw);
        return;
    }
    a->resp_len = 0; /* invariant 3: unread data goes with the next command */
    a->resp_off = 0;
    uint16_t sw = execute(a, &p);
    if (sw != CARD_SW_OK || a->resp_len == 0) {
        a->resp_len = 0;
        *rapdu_len = put_sw(rapdu, 0, sw);
        return;
    }
    /* No Le: the reader asked for nothing now; 61xx tells it how much is waiting. */
    *rapdu_len = send_data(a, p.ne, rapdu);
}
