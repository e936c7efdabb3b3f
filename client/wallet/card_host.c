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
#include "device_wire.h"
#include "ops_fault.h"
#include "ops_log.h"
#include "ops_time.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "qc_error.h"
#include "device_amount.h"

struct card_host {
    int fd;
    char message[CARD_HOST_MESSAGE_MAX];
    bool authenticated;
    char card_number[DEVICE_SERIAL_MAX + 1];
    EVP_PKEY *card_key;
    uint8_t host_challenge[DEVICE_CARD_CHALLENGE_SIZE];
    uint8_t card_challenge[DEVICE_CARD_CHALLENGE_SIZE];
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

int card_host_connect(const char *socket_path, card_host_t **out)
{
    assert(socket_path != NULL);
    assert(out != NULL);
    *out = NULL;
    card_host_t *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return QC_ENOMEM;
    int rc = device_wire_connect(socket_path, &h->fd);
    if (rc != 0) {
        free(h);
        return rc;
    }
    *out = h;
    return 0;
}

void card_host_destroy(card_host_t **h_p)
{
    if (h_p == NULL || *h_p == NULL)
        return;
    card_host_t *h = *h_p;
    close(h->fd);
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

static void fill_info(const Qccard__CardResponse *r, card_info_t *info)
{
    if (info == NULL)
        return;
    memset(info, 0, sizeof(*info));
    if (r->card_number != NULL)
        snprintf(info->number, sizeof(info->number), "%s", r->card_number);
    info->balance = r->balance;
    info->max_balance = r->max_balance;
    info->counter = r->counter;
    info->pin_tries_left = r->pin_tries_left;
}

/* One command and its answer. On 0, *resp is the card's answer (free it with
 * qccard__card_response__free_unpacked); a refusal by the card is returned as its code
 * with the card's sentence in h->message (and *resp still set). */
static int call(card_host_t *h, const Qccard__CardRequest *req, Qccard__CardResponse **resp,
                card_info_t *info)
{
    *resp = NULL;
    size_t len = qccard__card_request__get_packed_size(req);
    uint8_t *buf = malloc(len > 0 ? len : 1);
    if (buf == NULL)
        return QC_ENOMEM;
    qccard__card_request__pack(req, buf);
    int rc = device_wire_send(h->fd, buf, len, DEVICE_WIRE_TIMEOUT_MS);
    OPENSSL_cleanse(buf, len);
    free(buf);
    uint8_t *in = NULL;
    size_t in_len = 0;
    if (rc == 0)
        rc = device_wire_recv(h->fd, DEVICE_WIRE_TIMEOUT_MS, &in, &in_len);
    if (rc != 0)
        return say(h, rc == QC_ENOTFOUND ? QC_EIO : rc, "the contact with the card was lost (%s)",
                   qc_strerror(rc));
    Qccard__CardResponse *r = qccard__card_response__unpack(NULL, in_len, in);
    free(in);
    if (r == NULL)
        return say(h, QC_EDECODE, "the card's answer is malformed");
    fill_info(r, info);
    *resp = r;
    if (r->code != 0) {
        int code = r->code < 0 ? r->code : QC_EINTERNAL;
        return say(h, code, "the card refused: %s",
                   r->message != NULL && r->message[0] != '\0' ? r->message : qc_strerror(code));
    }
    return 0;
}

/* Checks the card's signed answer to our challenge; sets h->card_number and h->card_key. */
static int check_card_challenge(card_host_t *h, const Qccard__CardResponse *r,
                                const proto_trust_t *card_ca, const char *trusted_csv,
                                const char *serial)
{
    if (r->challenge.len != DEVICE_CARD_CHALLENGE_SIZE || r->signed_.len == 0 ||
        r->signed_.len > PROTO_ENVELOPE_MAX)
        return say(h, QC_EDECODE, "the card's answer to our challenge is malformed");
    proto_envelope_t *env = NULL;
    int rc = proto_envelope_open(r->signed_.data, r->signed_.len, &env);
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
        CRYPTO_memcmp(ch->own_challenge.data, r->challenge.data, DEVICE_CARD_CHALLENGE_SIZE) != 0) {
        rc = say(h, QC_EMISMATCH, "the card's answer does not match our challenge");
        goto out;
    }
    memcpy(h->card_number, cn, cn_len + 1);
    memcpy(h->card_challenge, r->challenge.data, DEVICE_CARD_CHALLENGE_SIZE);
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
    Qccard__CardRequest req = QCCARD__CARD_REQUEST__INIT;
    req.op = QCCARD__CARD_OP__CARD_OP_AUTH_BEGIN;
    req.challenge.data = h->host_challenge;
    req.challenge.len = sizeof(h->host_challenge);
    req.cert.data = (uint8_t *)cert;
    req.cert.len = cert_len;
    Qccard__CardResponse *r = NULL;
    int rc = call(h, &req, &r, info);
    if (rc == 0)
        rc = check_card_challenge(h, r, card_ca, trusted_csv, device_core_serial(dev));
    if (r != NULL)
        qccard__card_response__free_unpacked(r, NULL);
    if (rc != 0)
        return rc;

    uint8_t *answer = NULL;
    size_t answer_len = 0;
    rc = device_core_card_auth(dev, h->card_number, h->card_challenge, h->host_challenge, &answer,
                               &answer_len);
    if (rc != 0)
        return say(h, rc, "the wallet could not answer the card's challenge: %s", qc_strerror(rc));
    Qccard__CardRequest fin = QCCARD__CARD_REQUEST__INIT;
    fin.op = QCCARD__CARD_OP__CARD_OP_AUTH_FINISH;
    fin.signed_.data = answer;
    fin.signed_.len = answer_len;
    rc = call(h, &fin, &r, info);
    free(answer);
    if (r != NULL)
        qccard__card_response__free_unpacked(r, NULL);
    if (rc == 0)
        h->authenticated = true;
    return rc;
}

int card_host_verify_pin(card_host_t *h, const char *pin, size_t pin_len, card_info_t *info)
{
    assert(h != NULL);
    assert(pin != NULL);
    char copy[DEVICE_PIN_LEN_MAX + 1];
    if (pin_len > DEVICE_PIN_LEN_MAX)
        return say(h, QC_EINVAL, "a card PIN has at most %d digits", DEVICE_PIN_LEN_MAX);
    memcpy(copy, pin, pin_len);
    copy[pin_len] = '\0';
    Qccard__CardRequest req = QCCARD__CARD_REQUEST__INIT;
    req.op = QCCARD__CARD_OP__CARD_OP_VERIFY_PIN;
    req.pin = copy;
    Qccard__CardResponse *r = NULL;
    int rc = call(h, &req, &r, info);
    OPENSSL_cleanse(copy, sizeof(copy));
    if (r != NULL)
        qccard__card_response__free_unpacked(r, NULL);
    return rc;
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
    Qccard__CardRequest req = QCCARD__CARD_REQUEST__INIT;
    req.op = QCCARD__CARD_OP__CARD_OP_PROOF;
    req.transfer_id.data = s.card_xfer_id;
    req.transfer_id.len = DEVICE_TXN_SIZE;
    Qccard__CardResponse *r = NULL;
    int rc = call(h, &req, &r, info);
    if (rc == 0)
        rc = device_core_card_settle(dev, h->card_key, h->host_challenge, r->signed_.data,
                                     r->signed_.len, result);
    if (r != NULL)
        qccard__card_response__free_unpacked(r, NULL);
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
    Qccard__CardRequest req = QCCARD__CARD_REQUEST__INIT;
    req.op = QCCARD__CARD_OP__CARD_OP_CREDIT;
    req.signed_.data = credit;
    req.signed_.len = credit_len;
    Qccard__CardResponse *r = NULL;
    rc = call(h, &req, &r, info);
    free(credit);
    if (rc == 0)
        rc = device_core_card_settle(dev, h->card_key, h->host_challenge, r->signed_.data,
                                     r->signed_.len, result);
    if (r != NULL)
        qccard__card_response__free_unpacked(r, NULL);
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
