/* card_apdu.c - command and response APDUs: pure parser and encoder (see card_apdu.h). */
#include "card_apdu.h"

#include <assert.h>
#include <string.h>

#include "proto_limits.h"

_Static_assert(CARD_APDU_NUMBER_MAX == PROTO_DEVICE_ID_MAX, "a card number is a certificate CN");
_Static_assert(CARD_APDU_PURSE_MAX <= CARD_APDU_SHORT_NE_MAX, "the purse fits one response");
_Static_assert(CARD_APDU_REFUSAL_MAX <= CARD_APDU_SHORT_NE_MAX, "a refusal fits one response");

const uint8_t card_apdu_aid[CARD_APDU_AID_SIZE] = {0xF0, 'Q', 'C', 'C', 'A', 'R', 'D', 0x01};

static size_t be16(const uint8_t *p)
{
    return ((size_t)p[0] << 8) | p[1];
}

int card_apdu_parse(const uint8_t *buf, size_t len, card_apdu_t *out)
{
    assert(out != NULL);
    assert(buf != NULL || len == 0);
    memset(out, 0, sizeof(*out));
    if (len > CARD_APDU_COMMAND_MAX)
        return QC_ETOOBIG;
    if (len < CARD_APDU_HEADER_SIZE)
        return QC_EDECODE;
    card_apdu_t a = {.cla = buf[0], .ins = buf[1], .p1 = buf[2], .p2 = buf[3]};
    const uint8_t *body = buf + CARD_APDU_HEADER_SIZE;
    size_t n = len - CARD_APDU_HEADER_SIZE; /* bytes after the header */
    if (n == 0) {
        /* case 1 */
    } else if (n == 1) {
        a.ne = body[0] == 0 ? CARD_APDU_SHORT_NE_MAX : body[0]; /* case 2 short */
    } else if (body[0] != 0) {
        size_t lc = body[0]; /* case 3 or 4 short */
        if (n == 1 + lc) {
            a.nc = lc;
        } else if (n == 2 + lc) {
            a.nc = lc;
            a.ne = body[1 + lc] == 0 ? CARD_APDU_SHORT_NE_MAX : body[1 + lc];
        } else {
            return QC_EDECODE;
        }
        a.data = body + 1;
    } else if (n == 3) {
        size_t le = be16(body + 1); /* case 2 extended */
        a.ne = le == 0 ? CARD_APDU_EXTENDED_NE_MAX : le;
        a.extended = true;
    } else {
        if (n < 3)
            return QC_EDECODE; /* 00 and one byte: neither form */
        size_t lc = be16(body + 1);
        if (lc == 0)
            return QC_EDECODE; /* an extended Lc of zero is not a command */
        if (n == 3 + lc) {
            a.nc = lc; /* case 3 extended */
        } else if (n == 5 + lc) {
            size_t le = be16(body + 3 + lc); /* case 4 extended */
            a.nc = lc;
            a.ne = le == 0 ? CARD_APDU_EXTENDED_NE_MAX : le;
        } else {
            return QC_EDECODE;
        }
        a.data = body + 3;
        a.extended = true;
    }
    assert(a.nc <= CARD_APDU_EXTENDED_NC_MAX);
    assert(a.ne <= CARD_APDU_EXTENDED_NE_MAX);
    *out = a;
    return 0;
}

int card_apdu_encode(const card_apdu_t *cmd, uint8_t *out, size_t cap, size_t *len)
{
    assert(cmd != NULL);
    assert(out != NULL);
    assert(len != NULL);
    assert(cmd->data != NULL || cmd->nc == 0);
    *len = 0;
    if (cmd->nc > CARD_APDU_EXTENDED_NC_MAX || cmd->ne > CARD_APDU_EXTENDED_NE_MAX)
        return QC_EINVAL;
    bool extended = cmd->nc > CARD_APDU_SHORT_NC_MAX || cmd->ne > CARD_APDU_SHORT_NE_MAX;
    size_t need = CARD_APDU_HEADER_SIZE;
    if (cmd->nc > 0)
        need += (extended ? 3 : 1) + cmd->nc;
    if (cmd->ne > 0)
        need += extended ? (cmd->nc > 0 ? 2 : 3) : 1;
    if (need > cap)
        return QC_ETOOBIG;
    size_t at = 0;
    out[at++] = cmd->cla;
    out[at++] = cmd->ins;
    out[at++] = cmd->p1;
    out[at++] = cmd->p2;
    if (cmd->nc > 0) {
        if (extended) {
            out[at++] = 0;
            out[at++] = (uint8_t)(cmd->nc >> 8);
        }
        out[at++] = (uint8_t)cmd->nc;
        memcpy(out + at, cmd->data, cmd->nc);
        at += cmd->nc;
    }
    if (cmd->ne > 0) {
        if (extended && cmd->nc == 0)
            out[at++] = 0;
        if (extended)
            out[at++] = (uint8_t)(cmd->ne >> 8); /* 65536 encodes as 0000 */
        out[at++] = (uint8_t)cmd->ne;            /* 256 encodes as 00 */
    }
    assert(at == need);
    *len = at;
    return 0;
}

int card_apdu_response(const uint8_t *buf, size_t len, uint16_t *sw, size_t *data_len)
{
    assert(sw != NULL);
    assert(data_len != NULL);
    *sw = 0;
    *data_len = 0;
    if (buf == NULL || len < CARD_APDU_SW_SIZE)
        return QC_EDECODE;
    *sw = (uint16_t)be16(buf + len - CARD_APDU_SW_SIZE);
    *data_len = len - CARD_APDU_SW_SIZE;
    return 0;
}

typedef struct sw_name {
    uint16_t sw;
    int code;
    const char *text;
} sw_name_t;

static const sw_name_t sw_names[] = {
    {CARD_SW_OK, 0, "done"},
    {CARD_SW_AUTH_FAILED, QC_EBADSIG, "authentication failed"},
    {CARD_SW_MEMORY, QC_EIO, "the card could not write its memory"},
    {CARD_SW_WRONG_LENGTH, QC_EDECODE, "wrong length"},
    {CARD_SW_CHAIN_LAST, QC_EDECODE, "the last command of the chain was expected"},
    {CARD_SW_CHAIN_NONE, QC_EDECODE, "command chaining not supported"},
    {CARD_SW_SECURITY, QC_EDENIED, "security status not satisfied"},
    {CARD_SW_BLOCKED, QC_ELOCKED, "the PIN is blocked"},
    {CARD_SW_CONDITIONS, QC_ESTATE, "conditions of use not satisfied"},
    {CARD_SW_WRONG_DATA, QC_EDECODE, "incorrect data"},
    {CARD_SW_NOT_FOUND, QC_ENOTFOUND, "no quancun applet on this card"},
    {CARD_SW_NO_SPACE, QC_ECARDMAX, "not enough room on the card"},
    {CARD_SW_WRONG_P1P2, QC_EINVAL, "incorrect P1 P2"},
    {CARD_SW_NO_DATA, QC_ENOTFOUND, "referenced data not found"},
    {CARD_SW_INS_UNKNOWN, QC_EMETHOD, "instruction not supported"},
    {CARD_SW_CLA_UNKNOWN, QC_EMETHOD, "class not supported"},
};

static const sw_name_t *sw_find(uint16_t sw)
{
    for (size_t i = 0; i < sizeof(sw_names) / sizeof(sw_names[0]); i++) {
        if (sw_names[i].sw == sw)
            return &sw_names[i];
    }
    return NULL;
}

const char *card_apdu_sw_text(uint16_t sw)
{
    if ((sw & 0xFFF0) == CARD_SW_PIN_TRIES)
        return (sw & 0x000F) == 0 ? "wrong PIN, now blocked" : "wrong PIN";
    if ((sw & 0xFF00) == CARD_SW_MORE)
        return "more data available";
    const sw_name_t *n = sw_find(sw);
    return n != NULL ? n->text : "unknown status";
}

int card_apdu_sw_code(uint16_t sw)
{
    if ((sw & 0xFFF0) == CARD_SW_PIN_TRIES)
        return (sw & 0x000F) == 0 ? QC_ELOCKED : QC_EPIN;
    const sw_name_t *n = sw_find(sw);
    return n != NULL ? n->code : QC_EINTERNAL;
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

size_t card_apdu_purse_encode(const card_apdu_purse_t *p, uint8_t out[CARD_APDU_PURSE_MAX])
{
    assert(p != NULL);
    assert(out != NULL);
    size_t n = strnlen(p->number, sizeof(p->number));
    if (n == 0 || n > CARD_APDU_NUMBER_MAX)
        return 0;
    size_t at = 0;
    out[at++] = (uint8_t)n;
    memcpy(out + at, p->number, n);
    at += n;
    put64(out + at, (uint64_t)p->balance);
    put64(out + at + 8, (uint64_t)p->max_balance);
    put64(out + at + 16, p->counter);
    at += 24;
    out[at++] = p->pin_tries_left;
    assert(at <= CARD_APDU_PURSE_MAX);
    return at;
}

int card_apdu_purse_parse(const uint8_t *buf, size_t len, card_apdu_purse_t *out)
{
    assert(out != NULL);
    memset(out, 0, sizeof(*out));
    if (buf == NULL || len < 1)
        return QC_EDECODE;
    size_t n = buf[0];
    if (n == 0 || n > CARD_APDU_NUMBER_MAX || len != 1 + n + 25)
        return QC_EDECODE;
    for (size_t i = 0; i < n; i++) {
        if (buf[1 + i] <= 0x20 || buf[1 + i] >= 0x7F)
            return QC_EDECODE;
    }
    card_apdu_purse_t p;
    memset(&p, 0, sizeof(p));
    memcpy(p.number, buf + 1, n);
    p.balance = (int64_t)get64(buf + 1 + n);
    p.max_balance = (int64_t)get64(buf + 1 + n + 8);
    p.counter = get64(buf + 1 + n + 16);
    p.pin_tries_left = buf[1 + n + 24];
    if (p.balance < 0 || p.max_balance < 0)
        return QC_EDECODE;
    *out = p;
    return 0;
}
