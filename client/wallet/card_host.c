/* card_host.c - the host side of the card protocol (see card_host.h). */
#include "card_host.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "card.pb-c.h"
#include "card_apdu.h"
#include "card_pcsc.h"
#include "ops_fault.h"
#include "ops_log.h"
#include "ops_time.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "qc_error.h"
#include "device_amount.h"

/* The longest response data we accept from the card in one exchange (a signed envelope
 * with the card's certificate, read in pieces with GET RESPONSE). */
#define CARD_HOST_RESPONSE_MAX 16384
#define CARD_HOST_RAPDU_MAX (CARD_APDU_SHORT_NE_MAX + CARD_APDU_SW_SIZE)
#define CARD_HOST_COMMAND_MAX (CARD_APDU_HEADER_SIZE + 1 + CARD_APDU_SHORT_NC_MAX + 1)

struct card_host {
    card_pcsc_t *reader;
    char message[CARD_HOST_MESSAGE_MAX];
    bool authenticated;
    char card_number[DEVICE_SERIAL_MAX + 1];
    EVP_PKEY *card_key;
    uint8_t host_challenge[DEVICE_CARD_CHALLENGE_SIZE];
    uint8_t card_challenge[DEVICE_CARD_CHALLENGE_SIZE];
    uint16_t sw; /* the status word of the last command */
    size_t data_len;
    uint8_t data[CARD_HOST_RESPONSE_MAX]; /* its response data */
};

static int say(card_host_t *h, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int say(card_host_t *h, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->message, sizeof(h->message), fmt, ap);
    va_end(ap);
    return code;
}

int card_host_connect(const char *reader, card_host_t **out)
{
    assert(out != NULL);
    *out = NULL;
    card_host_t *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return QC_ENOMEM;
    int rc = card_pcsc_open(reader, &h->reader, h->message, sizeof(h->message));
    if (rc == 0) {
        /* SELECT the applet by its AID: a card without it is not a quancun card. */
        uint8_t cmd[CARD_APDU_HEADER_SIZE + 1 + CARD_APDU_AID_SIZE] = {
            CARD_APDU_CLA_ISO, CARD_INS_SELECT, CARD_P1_SELECT_BY_AID, 0x0C, CARD_APDU_AID_SIZE};
        memcpy(cmd + CARD_APDU_HEADER_SIZE + 1, card_apdu_aid, CARD_APDU_AID_SIZE);
        uint8_t resp[CARD_HOST_RAPDU_MAX];
        size_t len = 0;
        uint16_t sw = 0;
        size_t data_len = 0;
        rc = card_pcsc_transmit(h->reader, cmd, sizeof(cmd), resp, sizeof(resp), &len);
        if (rc != 0)
            say(h, rc, "%s", card_pcsc_why(h->reader));
        else if (card_apdu_response(resp, len, &sw, &data_len) != 0 || sw != CARD_SW_OK)
            rc = say(h, QC_ENOTFOUND, "the card in %s has no quancun applet (SW %04X)",
                     card_pcsc_reader(h->reader), sw);
    }
    if (rc != 0) {
        ops_log(OPS_LOG_WARN, "card.no_contact", "error", qc_strerror(rc), "why", h->message, NULL);
        *out = h; /* the caller reads the message, then destroys */
        return rc;
    }
    ops_log(OPS_LOG_INFO, "card.contact", "reader", card_pcsc_reader(h->reader), NULL);
    *out = h;
    return 0;
}

void card_host_destroy(card_host_t **h_p)
{
    if (h_p == NULL || *h_p == NULL)
        return;
    card_host_t *h = *h_p;
    card_pcsc_destroy(&h->reader);
    EVP_PKEY_free(h->card_key);
    OPENSSL_cleanse(h, sizeof(*h));
    free(h);
    *h_p = NULL;
}

const char *card_host_message(const card_host_t *h)
{
    assert(h != NULL);
    return h->message;
}

/* One exchange with the reader; a lost card is QC_EIO with the reader's sentence. */
static int exchange(card_host_t *h, const card_apdu_t *cmd, uint8_t *resp, size_t *resp_len,
                    uint16_t *sw, size_t *data_len)
{
    uint8_t buf[CARD_HOST_COMMAND_MAX];
    size_t len = 0;
    int rc = card_apdu_encode(cmd, buf, sizeof(buf), &len);
    assert(rc == 0); /* our commands are short */
    if (h->reader == NULL)
        return say(h, QC_EIO, "no card reader is open");
    rc = card_pcsc_transmit(h->reader, buf, len, resp, CARD_HOST_RAPDU_MAX, resp_len);
    OPENSSL_cleanse(buf, len);
    if (rc != 0)
        return say(h, QC_EIO, "the contact with the card was lost (%s)", card_pcsc_why(h->reader));
    /* vpcd answers a command the card never answered (it was pulled out) with nothing. */
    if (card_apdu_response(resp, *resp_len, sw, data_len) != 0)
        return say(h, QC_EIO, "the contact with the card was lost (no status word came back)");
    return 0;
}

/* Sends cla/ins/p1/p2 with data (chained in short commands when longer than 255 bytes) and
 * collects the whole response data into h->data (reading 61xx with GET RESPONSE); h->sw is
 * the final status word. Returns 0 (whatever the status word) or a contact error. */
static int command(card_host_t *h, uint8_t cla, uint8_t ins, uint8_t p1, uint8_t p2,
                   const uint8_t *data, size_t nc, bool want_data)
{
    uint8_t resp[CARD_HOST_RAPDU_MAX];
    size_t resp_len = 0, data_len = 0;
    uint16_t sw = 0;
    h->data_len = 0;
    h->sw = 0;
    size_t off = 0;
    do {
        size_t part = nc - off > CARD_APDU_SHORT_NC_MAX ? CARD_APDU_SHORT_NC_MAX : nc - off;
        bool last = off + part == nc;
        card_apdu_t cmd = {.cla = last ? cla : (uint8_t)(cla | CARD_APDU_CLA_CHAIN),
                           .ins = ins,
                           .p1 = p1,
                           .p2 = p2,
                           .data = part > 0 ? data + off : NULL,
                           .nc = part,
                           .ne = last && want_data ? CARD_APDU_SHORT_NE_MAX : 0};
        int rc = exchange(h, &cmd, resp, &resp_len, &sw, &data_len);
        if (rc != 0)
            return rc;
        off += part;
        if (!last && sw != CARD_SW_OK) {
            h->sw = sw; /* the card stopped the chain */
            return 0;
        }
    } while (off < nc);
    for (;;) {
        if (data_len > sizeof(h->data) - h->data_len)
            return say(h, QC_EIO, "the card's answer is longer than %d bytes",
                       CARD_HOST_RESPONSE_MAX);
        memcpy(h->data + h->data_len, resp, data_len);
        h->data_len += data_len;
        if ((sw & 0xFF00) != CARD_SW_MORE)
            break;
        card_apdu_t more = {.cla = CARD_APDU_CLA_ISO,
                            .ins = CARD_INS_GET_RESPONSE,
                            .ne = (sw & 0xFF) == 0 ? CARD_APDU_SHORT_NE_MAX : (sw & 0xFF)};
        int rc = exchange(h, &more, resp, &resp_len, &sw, &data_len);
        if (rc != 0)
            return rc;
    }
    h->sw = sw;
    return 0;
}

/* After a status word other than 9000: asks the card why (GET DATA 0102) and says so.
 * Returns the card's code (or the status word's meaning when the card cannot say). */
static int refused(card_host_t *h)
{
    uint16_t sw = h->sw;
    int code = card_apdu_sw_code(sw);
    char sentence[CARD_APDU_SENTENCE_MAX + 1];
    snprintf(sentence, sizeof(sentence), "%s", card_apdu_sw_text(sw));
    int rc = command(h, CARD_APDU_CLA_ISO, CARD_INS_GET_DATA, CARD_DATA_REFUSAL >> 8,
                     CARD_DATA_REFUSAL & 0xFF, NULL, 0, true);
    if (rc != 0)
        return rc;
    if (h->sw == CARD_SW_OK && h->data_len >= 4 && h->data_len <= CARD_APDU_REFUSAL_MAX) {
        int32_t told = (int32_t)(((uint32_t)h->data[0] << 24) | ((uint32_t)h->data[1] << 16) |
                                 ((uint32_t)h->data[2] << 8) | h->data[3]);
        size_t n = h->data_len - 4;
        bool printable = n > 0;
        for (size_t i = 0; i < n; i++)
            printable &= h->data[4 + i] >= 0x20 && h->data[4 + i] < 0x7F;
        if (told < 0 && strcmp(qc_errname(told), "QC_EUNKNOWN") != 0 && printable) {
            code = told;
            memcpy(sentence, h->data + 4, n);
            sentence[n] = '\0';
        }
    }
    h->sw = sw;
    return say(h, code, "the card refused: %s (SW %04X)", sentence, sw);
}

/* GET DATA 0101: what the card says about its purse, into info (when not NULL). */
static int read_purse(card_host_t *h, card_info_t *info)
{
    int rc = command(h, CARD_APDU_CLA_ISO, CARD_INS_GET_DATA, CARD_DATA_PURSE >> 8,
                     CARD_DATA_PURSE & 0xFF, NULL, 0, true);
    if (rc != 0)
        return rc;
    if (h->sw != CARD_SW_OK)
        return refused(h);
    card_apdu_purse_t p;
    if (card_apdu_purse_parse(h->data, h->data_len, &p) != 0)
        return say(h, QC_EDECODE, "the card's purse data is malformed");
    if (info != NULL) {
        memset(info, 0, sizeof(*info));
        snprintf(info->number, sizeof(info->number), "%s", p.number);
        info->balance = p.balance;
        info->max_balance = p.max_balance;
        info->counter = p.counter;
        info->pin_tries_left = p.pin_tries_left;
    }
    return 0;
}

/* Runs a command, then refreshes info from the purse: a refusal keeps its sentence and code
 * even when the purse is read after it. */
static int command_then_purse(card_host_t *h, uint8_t cla, uint8_t ins, uint8_t p1, uint8_t p2,
                              const uint8_t *data, size_t nc, bool want_data, card_info_t *info)
{
    int rc = command(h, cla, ins, p1, p2, data, nc, want_data);
    if (rc != 0)
        return rc;
    int verdict = h->sw == CARD_SW_OK ? 0 : refused(h);
    if (verdict == QC_EIO)
        return verdict;
    /* Keep the command's answer: reading the purse reuses the buffer. */
    size_t kept = h->data_len;
    uint8_t *copy = kept > 0 ? malloc(kept) : NULL;
    if (kept > 0 && copy == NULL)
        return say(h, QC_ENOMEM, "out of memory");
    if (kept > 0)
        memcpy(copy, h->data, kept);
    uint16_t sw = h->sw;
    char why[CARD_HOST_MESSAGE_MAX];
    snprintf(why, sizeof(why), "%s", h->message);
    int prc = read_purse(h, info);
    if (kept > 0)
        memcpy(h->data, copy, kept);
    free(copy);
    h->data_len = kept;
    h->sw = sw;
    snprintf(h->message, sizeof(h->message), "%s", why);
    if (prc == QC_EIO && verdict == 0)
        return prc;
    return verdict;
}

/* Checks the card's signed answer to our challenge; sets h->card_number and h->card_key. */
/* The answer to INTERNAL AUTHENTICATE is in h->data: the card's challenge, then its signed
 * CardChallenge over ours. */
static int check_card_challenge(card_host_t *h, const proto_trust_t *card_ca,
                                const char *trusted_csv, const char *serial)
{
    if (h->data_len <= DEVICE_CARD_CHALLENGE_SIZE ||
        h->data_len - DEVICE_CARD_CHALLENGE_SIZE > PROTO_ENVELOPE_MAX)
        return say(h, QC_EDECODE, "the card's answer to our challenge is malformed");
    const uint8_t *card_ch = h->data;
    proto_envelope_t *env = NULL;
    int rc = proto_envelope_open(h->data + DEVICE_CARD_CHALLENGE_SIZE,
                                 h->data_len - DEVICE_CARD_CHALLENGE_SIZE, &env);
    if (rc != 0)
        return say(h, rc, "the card's answer to our challenge is malformed");
    size_t cert_len = 0;
    const uint8_t *cert = proto_envelope_cert(env, &cert_len);
    char cn[PROTO_DEVICE_ID_MAX + 1];
    EVP_PKEY *pub = NULL;
    Qccard__CardChallenge *ch = NULL;
    if (cert == NULL) {
        rc = say(h, QC_ECERT, "the card sent no certificate");
        goto out;
    }
    rc = proto_cert_verify(card_ca, cert, cert_len, (time_t)(ops_time_wall_ms() / 1000u), cn, &pub);
    if (rc != 0) {
        rc = say(h, rc, "the card's certificate is refused: %s", qc_strerror(rc));
        goto out;
    }
    /* The card's number must be one this wallet trusts: compare whole items of the list. */
    bool trusted = false;
    size_t cn_len = strlen(cn);
    for (const char *p = trusted_csv; p != NULL && *p != '\0';) {
        const char *comma = strchr(p, ',');
        size_t n = comma != NULL ? (size_t)(comma - p) : strlen(p);
        trusted |= n == cn_len && memcmp(p, cn, n) == 0;
        p = comma != NULL ? comma + 1 : p + n;
    }
    if (!trusted || !device_pki_id_valid(cn)) {
        rc = say(h, QC_EUNTRUSTED, "card %s is not in this wallet's trusted card list", cn);
        goto out;
    }
    rc = proto_envelope_verify(env, PROTO_TYPE_CARD_CHALLENGE, pub);
    if (rc != 0) {
        rc = say(h, rc, "the card did not prove possession of its key: %s", qc_strerror(rc));
        goto out;
    }
    size_t body_len = 0;
    const uint8_t *body = proto_envelope_body(env, &body_len);
    if (body_len > 0 && body_len <= PROTO_BODY_MAX)
        ch = qccard__card_challenge__unpack(NULL, body_len, body);
    if (ch == NULL || ch->signer_id == NULL || strcmp(ch->signer_id, cn) != 0 ||
        ch->peer_id == NULL || strcmp(ch->peer_id, serial) != 0 ||
        ch->challenge.len != DEVICE_CARD_CHALLENGE_SIZE ||
        CRYPTO_memcmp(ch->challenge.data, h->host_challenge, DEVICE_CARD_CHALLENGE_SIZE) != 0 ||
        ch->own_challenge.len != DEVICE_CARD_CHALLENGE_SIZE ||
        CRYPTO_memcmp(ch->own_challenge.data, card_ch, DEVICE_CARD_CHALLENGE_SIZE) != 0) {
        rc = say(h, QC_EMISMATCH, "the card's answer does not match our challenge");
        goto out;
    }
    memcpy(h->card_number, cn, cn_len + 1);
    memcpy(h->card_challenge, card_ch, DEVICE_CARD_CHALLENGE_SIZE);
    h->card_key = pub;
    pub = NULL;
    rc = 0;
out:
    if (ch != NULL)
        qccard__card_challenge__free_unpacked(ch, NULL);
    EVP_PKEY_free(pub);
    proto_envelope_destroy(&env);
    return rc;
}

int card_host_authenticate(card_host_t *h, device_core_t *dev, const proto_trust_t *card_ca,
                           const char *trusted_csv, card_info_t *info)
{
    assert(h != NULL);
    assert(dev != NULL);
    assert(card_ca != NULL);
    h->authenticated = false;
    EVP_PKEY_free(h->card_key);
    h->card_key = NULL;
    const uint8_t *cert = NULL;
    size_t cert_len = 0;
    if (device_core_cert(dev, &cert, &cert_len) != 0)
        return say(h, QC_ECERT, "the wallet has no certificate (qc-wallet install-cert)");
    if (RAND_bytes(h->host_challenge, sizeof(h->host_challenge)) != 1)
        return say(h, QC_ECRYPTO, "no random challenge could be drawn");
    /* INTERNAL AUTHENTICATE: our challenge and certificate; the card's challenge and its
     * signature over ours come back. */
    size_t n = DEVICE_CARD_CHALLENGE_SIZE + cert_len;
    uint8_t *data = malloc(n);
    if (data == NULL)
        return say(h, QC_ENOMEM, "out of memory");
    memcpy(data, h->host_challenge, DEVICE_CARD_CHALLENGE_SIZE);
    memcpy(data + DEVICE_CARD_CHALLENGE_SIZE, cert, cert_len);
    int rc = command(h, CARD_APDU_CLA_ISO, CARD_INS_INTERNAL_AUTH, 0, 0, data, n, true);
    free(data);
    if (rc == 0 && h->sw != CARD_SW_OK)
        rc = refused(h);
    if (rc == 0)
        rc = check_card_challenge(h, card_ca, trusted_csv, device_core_serial(dev));
    if (rc != 0)
        return rc;

    /* EXTERNAL AUTHENTICATE: our signature over the card's challenge. */
    uint8_t *answer = NULL;
    size_t answer_len = 0;
    rc = device_core_card_auth(dev, h->card_number, h->card_challenge, h->host_challenge, &answer,
                               &answer_len);
    if (rc != 0)
        return say(h, rc, "the wallet could not answer the card's challenge: %s", qc_strerror(rc));
    rc = command_then_purse(h, CARD_APDU_CLA_ISO, CARD_INS_EXTERNAL_AUTH, 0, 0, answer, answer_len,
                            false, info);
    free(answer);
    if (rc == 0)
        h->authenticated = true;
    return rc;
}

int card_host_verify_pin(card_host_t *h, const char *pin, size_t pin_len, card_info_t *info)
{
    assert(h != NULL);
    assert(pin != NULL);
    if (pin_len > DEVICE_PIN_LEN_MAX)
        return say(h, QC_EINVAL, "a card PIN has at most %d digits", DEVICE_PIN_LEN_MAX);
    /* VERIFY 0081 with the PIN: 9000, or 63Cx with x tries left, or 6983 when blocked. */
    return command_then_purse(h, CARD_APDU_CLA_ISO, CARD_INS_VERIFY, 0, CARD_P2_VERIFY_PIN,
                              (const uint8_t *)pin, pin_len, false, info);
}

uint16_t card_host_last_sw(const card_host_t *h)
{
    assert(h != NULL);
    return h->sw;
}

/* Asks the card for its proof about the pending transfer and settles from it. */
static int settle(card_host_t *h, device_core_t *dev, device_card_result_t *result,
                  card_info_t *info)
{
    device_status_t s;
    device_core_status(dev, &s);
    if (!s.card_pending)
        return say(h, QC_ESTATE, "no card transfer is pending");
    if (strcmp(s.card_number, h->card_number) != 0)
        return say(h, QC_EMISMATCH,
                   "a transfer to card %s is pending: present that card to settle it first",
                   s.card_number);
    int rc = command_then_purse(h, CARD_APDU_CLA_PROPRIETARY, CARD_INS_PROOF, 0, 0, s.card_xfer_id,
                                DEVICE_TXN_SIZE, true, info);
    if (rc == 0)
        rc = device_core_card_settle(dev, h->card_key, h->host_challenge, h->data, h->data_len,
                                     result);
    if (rc != 0 && h->message[0] == '\0')
        say(h, rc, "the card's proof does not settle the transfer: %s", qc_strerror(rc));
    return rc;
}

int card_host_settle(card_host_t *h, device_core_t *dev, device_card_result_t *result,
                     card_info_t *info)
{
    assert(h != NULL);
    assert(dev != NULL);
    assert(result != NULL);
    h->message[0] = '\0';
    if (!h->authenticated)
        return say(h, QC_EDENIED, "authenticate the card first");
    return settle(h, dev, result, info);
}

int card_host_transfer(card_host_t *h, device_core_t *dev, int64_t amount,
                       device_card_result_t *result, card_info_t *info)
{
    assert(h != NULL);
    assert(dev != NULL);
    assert(result != NULL);
    assert(info != NULL);
    h->message[0] = '\0';
    if (!h->authenticated)
        return say(h, QC_EDENIED, "authenticate the card first");
    device_status_t s;
    device_core_status(dev, &s);
    char a[DEVICE_AMOUNT_FORMAT_MAX], b[DEVICE_AMOUNT_FORMAT_MAX];
    if (amount > s.balance)
        return say(h, QC_EFUNDS, "the wallet holds %s, less than %s: nothing moved",
                   device_amount_format(s.balance, a, sizeof(a)),
                   device_amount_format(amount, b, sizeof(b)));
    if (amount > info->max_balance - info->balance)
        return say(h, QC_ECARDMAX, "card %s holds %s and may hold at most %s: nothing moved",
                   h->card_number, device_amount_format(info->balance, a, sizeof(a)),
                   device_amount_format(info->max_balance, b, sizeof(b)));
    uint8_t *credit = NULL;
    size_t credit_len = 0;
    int rc = device_core_card_debit(dev, h->card_number, amount, h->card_challenge, &credit,
                                    &credit_len);
    if (rc != 0)
        return say(h, rc, "the wallet refused to debit: %s; nothing moved", qc_strerror(rc));
    /* CREDIT: our signed CardCredit; the card's signed CardReceipt comes back. */
    rc = command_then_purse(h, CARD_APDU_CLA_PROPRIETARY, CARD_INS_CREDIT, 0, 0, credit, credit_len,
                            true, info);
    free(credit);
    if (rc == 0)
        rc = device_core_card_settle(dev, h->card_key, h->host_challenge, h->data, h->data_len,
                                     result);
    if (rc == 0)
        return 0;
    if (rc == QC_EIO || rc == QC_ETIMEOUT)
        return rc; /* the contact is gone: the transfer stays pending for the next one */
    /* The card refused or its receipt did not settle: its proof decides, in this session. */
    char why[CARD_HOST_MESSAGE_MAX];
    snprintf(why, sizeof(why), "%s", h->message);
    h->message[0] = '\0';
    int src = settle(h, dev, result, info);
    if (src == 0 && *result == DEVICE_CARD_REFUNDED)
        return say(h, rc, "%s; the wallet was refunded, nothing moved", why);
    if (src == 0)
        return 0;
    return src;
}
