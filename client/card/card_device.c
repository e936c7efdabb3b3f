/* card_device.c - the card side of the card protocol: sessions, PIN, credits and proofs.
 *
 * Invariants (checked by card_check_invariants() after every change):
 *   1. 0 <= balance <= max_balance: a credit that would pass the maximum is refused.
 *   2. counter is the number of credits applied, and each applied credit has exactly one
 *      record, whose transfer id is unique; a credit only ever raises the balance by its
 *      amount, counter by 1 and adds its record, in one atomic state write.
 *   3. A credit is applied only in an authenticated session (AUTH_BEGIN, AUTH_FINISH), after
 *      a good PIN in that session, for a CardCredit signed by the session's device key that
 *      names this card, that device and this session's card challenge, so a credit cannot
 *      be replayed in another session, and never twice for one transfer id.
 *   4. A PIN try is counted on disk before the PIN is compared; 3 wrong tries lock the card.
 *   5. A proof (CardReceipt) is signed by the card's key and names the host's challenge of
 *      the session that asked: CREDITED is the record of invariant 2; NOT_CREDITED is only
 *      ever said of a transfer id with no record, and no credit for that id follows it: a
 *      credit is bound to its session, and the session remembers the ids it declared
 *      never credited (a credit held back by a man in the middle and delivered after the
 *      proof is refused).
 *
 *   contact:  card_device_session_reset() -> (none)
 *   (none) --AUTH_BEGIN, device certificate and serial trusted--> CHALLENGED
 *   CHALLENGED --AUTH_FINISH, signature over the card challenge--> AUTHENTICATED
 *   AUTHENTICATED --VERIFY_PIN good--> PIN_OK --CREDIT--> credited (stays PIN_OK)
 */
#include "card_device.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "card.pb-c.h"
#include "device_wire.h"
#include "ops_fault.h"
#include "ops_log.h"
#include "ops_time.h"
#include "proto_cert.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "qc_error.h"
#include "device_amount.h"
#include "device_pki.h"
#include "device_home.h"

#define CARD_PUBLIC_MODE 0644
#define CARD_KEY_VERSION 1
#define CARD_SESSION_VOIDED_MAX 8 /* NOT_CREDITED proofs one session may give */

_Static_assert(CARD_NUMBER_MAX == PROTO_DEVICE_ID_MAX, "a card number is a certificate CN");

typedef enum card_session_phase {
    SESSION_NONE = 0,
    SESSION_CHALLENGED,
    SESSION_AUTHENTICATED,
    SESSION_PIN_OK,
} card_session_phase_t;

struct card_device {
    char home[DEVICE_PATH_MAX];
    int lock_fd;
    card_state_t st;
    EVP_PKEY *key;
    uint8_t *cert_der; /* NULL until install-cert */
    size_t cert_len;
    proto_trust_t *trust; /* the CA bundle for device certificates; NULL until install-cert */

    /* The session of the current contact. */
    card_session_phase_t phase;
    uint8_t host_challenge[DEVICE_CARD_CHALLENGE_SIZE];
    uint8_t card_challenge[DEVICE_CARD_CHALLENGE_SIZE];
    char host_id[CARD_NUMBER_MAX + 1];
    EVP_PKEY *host_key;
    uint8_t voided[CARD_SESSION_VOIDED_MAX][CARD_XFER_ID_SIZE]; /* proved never credited */
    size_t voided_count;
};

/* ------------------------------------------------------------------ invariants */

static void card_check_invariants(const card_device_t *dev)
{
    const card_state_t *st = &dev->st;
    assert(st->balance >= 0);
    assert(st->balance <= st->max_balance); /* 1 */
    assert(st->transfer_count <= CARD_TRANSFERS_MAX);
    assert(st->pin.tries_left <= DEVICE_PIN_TRIES); /* 4 */
    assert(st->transfer_count == 0 ||
           st->transfers[st->transfer_count - 1].counter == st->counter); /* 2 */
    (void)st;
}

/* ------------------------------------------------------------------ state writes */

/* Builds log line number log_seq + 1 into st->log_pending. */
static void card_log_line(card_state_t *st, const char *event, const card_record_t *rec,
                          const char *detail)
{
    char bal[DEVICE_AMOUNT_FORMAT_MAX], amt[DEVICE_AMOUNT_FORMAT_MAX];
    char hex[2 * CARD_XFER_ID_SIZE + 1];
    char *out = st->log_pending;
    size_t cap = sizeof(st->log_pending);
    int n =
        snprintf(out, cap,
                 "{\"seq\":%" PRIu64 ",\"time_ms\":%" PRIu64 ",\"event\":\"%s\",\"card\":\"%s\","
                 "\"balance\":\"%s\",\"counter\":%" PRIu64,
                 st->log_seq + 1, ops_time_wall_ms(), event, st->number,
                 device_amount_format(st->balance, bal, sizeof(bal)), st->counter);
    assert(n > 0);
    assert((size_t)n < cap);
    size_t pos = (size_t)n;
    if (rec != NULL) {
        n = snprintf(out + pos, cap - pos,
                     ",\"transfer\":\"%s\",\"device\":\"%s\",\"amount\":\"%s\"",
                     ops_hex(rec->transfer_id, CARD_XFER_ID_SIZE, hex), rec->device_id,
                     device_amount_format(rec->amount, amt, sizeof(amt)));
        assert(n > 0);
        assert((size_t)n < cap - pos);
        pos += (size_t)n;
    }
    /* details are our own fixed sentences and validated identifiers: no escaping needed */
    n = snprintf(out + pos, cap - pos, "%s%s%s}", detail != NULL ? ",\"detail\":\"" : "",
                 detail != NULL ? detail : "", detail != NULL ? "\"" : "");
    assert(n > 0);
    assert((size_t)n < cap - pos);
    st->log_seq++;
}

/* Writes the state atomically, then appends its log line (when event is given). On
 * failure the state is reloaded from disk, so memory never runs ahead of it. */
static int card_commit(card_device_t *dev, const char *event, const card_record_t *rec,
                       const char *detail)
{
    if (event != NULL)
        card_log_line(&dev->st, event, rec, detail);
    int rc = card_state_save(dev->home, &dev->st);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "card.state_write_failed", "error", qc_strerror(rc), NULL);
        int lrc = card_state_load(dev->home, &dev->st);
        assert(lrc == 0); /* it was on disk a moment ago */
        (void)lrc;
        return rc;
    }
    card_check_invariants(dev);
    if (event != NULL) {
        int lrc = device_home_log_append(dev->home, dev->st.log_pending);
        if (lrc != 0) /* the next open writes it again */
            ops_log(OPS_LOG_WARN, "card.oplog_append_failed", "error", qc_strerror(lrc), NULL);
    }
    return 0;
}

/* ------------------------------------------------------------------ init, open, destroy */

/* Splits "A,B,C" into st->trusted. */
static int parse_trusted(const char *csv, card_state_t *st)
{
    st->trusted_count = 0;
    if (csv == NULL)
        return 0;
    const char *p = csv;
    while (*p != '\0') {
        const char *comma = strchr(p, ',');
        size_t n = comma != NULL ? (size_t)(comma - p) : strlen(p);
        if (n > 0) {
            char id[CARD_NUMBER_MAX + 1];
            if (n > CARD_NUMBER_MAX || st->trusted_count == CARD_TRUSTED_MAX)
                return QC_EINVAL;
            memcpy(id, p, n);
            id[n] = '\0';
            if (!device_pki_id_valid(id))
                return QC_EINVAL;
            memcpy(st->trusted[st->trusted_count++], id, n + 1);
        }
        p += n;
        if (*p == ',')
            p++;
    }
    return 0;
}

int card_device_init(const char *home, const char *number, int64_t max_balance,
                     const char *trusted_csv, const char *pin, size_t pin_len)
{
    assert(home != NULL);
    assert(number != NULL);
    assert(pin != NULL || pin_len == 0);
    if (!device_pki_id_valid(number) || max_balance <= 0 || max_balance > CARD_BALANCE_MAX_LIMIT ||
        device_pin_valid(pin, pin_len) != 0)
        return QC_EINVAL;
    card_device_t *dev = calloc(1, sizeof(*dev));
    if (dev == NULL)
        return QC_ENOMEM;
    dev->lock_fd = -1;
    int rc = QC_EINVAL;
    if (strlen(home) >= sizeof(dev->home))
        goto out;
    memcpy(dev->home, home, strlen(home) + 1);
    rc = parse_trusted(trusted_csv, &dev->st);
    if (rc != 0)
        goto out;
    rc = device_home_claim(home, CARD_STATE_FILE, true, &dev->lock_fd);
    if (rc == 0)
        rc = device_pki_create_key(home, CARD_KEY_FILE, CARD_CSR_FILE, number, &dev->key);
    if (rc != 0)
        goto out;
    memcpy(dev->st.number, number, strlen(number) + 1);
    dev->st.max_balance = max_balance;
    rc = device_pin_set(&dev->st.pin, pin, pin_len);
    if (rc != 0)
        goto out;
    /* The state file is written last: its presence is what makes the card exist. */
    rc = card_state_save(home, &dev->st);
    if (rc == 0)
        rc = card_commit(dev, "card.created", NULL, NULL);
out:
    card_device_destroy(&dev);
    return rc;
}

static int load_ca(card_device_t *dev)
{
    char path[DEVICE_PATH_MAX];
    int rc = device_home_path(dev->home, CARD_CA_FILE, path);
    if (rc != 0)
        return rc;
    if (access(path, F_OK) != 0)
        return 0; /* not personalised yet */
    return proto_trust_new(path, NULL, &dev->trust);
}

int card_device_open(const char *home, card_device_t **out)
{
    assert(home != NULL);
    assert(out != NULL);
    *out = NULL;
    card_device_t *dev = calloc(1, sizeof(*dev));
    if (dev == NULL)
        return QC_ENOMEM;
    dev->lock_fd = -1;
    int rc = QC_EINVAL;
    if (strlen(home) >= sizeof(dev->home))
        goto err;
    memcpy(dev->home, home, strlen(home) + 1);
    rc = device_home_claim(home, CARD_STATE_FILE, false, &dev->lock_fd);
    if (rc == 0)
        rc = card_state_load(home, &dev->st);
    if (rc != 0)
        goto err;
    int lrc = device_home_log_recover(home, dev->st.log_seq, dev->st.log_pending);
    if (lrc != 0) /* the state file is authoritative */
        ops_log(OPS_LOG_WARN, "card.oplog_inconsistent", "error", qc_strerror(lrc), NULL);
    rc = device_pki_load_key(home, CARD_KEY_FILE, &dev->key);
    if (rc == 0)
        rc = device_pki_load_cert(home, CARD_CERT_FILE, dev->key, dev->st.number, &dev->cert_der,
                                  &dev->cert_len);
    if (rc == 0)
        rc = load_ca(dev);
    if (rc != 0)
        goto err;
    card_check_invariants(dev);
    *out = dev;
    return 0;
err:
    card_device_destroy(&dev);
    return rc;
}

void card_device_session_reset(card_device_t *dev)
{
    assert(dev != NULL);
    EVP_PKEY_free(dev->host_key);
    dev->host_key = NULL;
    dev->phase = SESSION_NONE;
    OPENSSL_cleanse(dev->host_challenge, sizeof(dev->host_challenge));
    OPENSSL_cleanse(dev->card_challenge, sizeof(dev->card_challenge));
    memset(dev->host_id, 0, sizeof(dev->host_id));
    memset(dev->voided, 0, sizeof(dev->voided));
    dev->voided_count = 0;
}

void card_device_destroy(card_device_t **dev_p)
{
    if (dev_p == NULL || *dev_p == NULL)
        return;
    card_device_t *dev = *dev_p;
    card_device_session_reset(dev);
    EVP_PKEY_free(dev->key);
    free(dev->cert_der);
    proto_trust_destroy(&dev->trust);
    if (dev->lock_fd >= 0)
        close(dev->lock_fd);
    OPENSSL_cleanse(dev, sizeof(*dev));
    free(dev);
    *dev_p = NULL;
}

int card_device_install_cert(card_device_t *dev, const char *cert_path, const char *ca_path)
{
    assert(dev != NULL);
    assert(cert_path != NULL);
    assert(ca_path != NULL);
    proto_trust_t *trust = NULL;
    int rc = proto_trust_new(ca_path, NULL, &trust); /* a bundle that does not load is refused */
    if (rc != 0)
        return rc;
    proto_trust_destroy(&trust);
    uint8_t *pem = NULL;
    size_t pem_len = 0;
    FILE *f = fopen(ca_path, "rb");
    if (f == NULL)
        return QC_EIO;
    pem = malloc(DEVICE_FILE_MAX);
    if (pem == NULL) {
        fclose(f);
        return QC_ENOMEM;
    }
    pem_len = fread(pem, 1, DEVICE_FILE_MAX, f);
    bool too_big = pem_len == DEVICE_FILE_MAX;
    fclose(f);
    rc = too_big ? QC_ETOOBIG : pem_len == 0 ? QC_ECERT : 0;
    if (rc == 0)
        rc =
            device_pki_install_cert(dev->home, CARD_CERT_FILE, cert_path, dev->key, dev->st.number);
    if (rc == 0)
        rc = device_home_write(dev->home, CARD_CA_FILE, pem, pem_len, CARD_PUBLIC_MODE);
    free(pem);
    if (rc != 0)
        return rc;
    free(dev->cert_der);
    dev->cert_der = NULL;
    proto_trust_destroy(&dev->trust);
    rc = device_pki_load_cert(dev->home, CARD_CERT_FILE, dev->key, dev->st.number, &dev->cert_der,
                              &dev->cert_len);
    if (rc == 0)
        rc = load_ca(dev);
    return rc;
}

const card_state_t *card_device_state(const card_device_t *dev)
{
    assert(dev != NULL);
    return &dev->st;
}

bool card_device_has_cert(const card_device_t *dev)
{
    assert(dev != NULL);
    return dev->cert_der != NULL && dev->trust != NULL;
}

bool card_device_pin_verified(const card_device_t *dev)
{
    assert(dev != NULL);
    return dev->phase == SESSION_PIN_OK;
}

/* ------------------------------------------------------------------ the answers */

/* What one request produces: a code and sentence, the fields, and an owned signed blob. */
typedef struct answer {
    Qccard__CardResponse resp;
    char message[CARD_MESSAGE_MAX];
    uint8_t *signed_blob;
    size_t signed_len;
} answer_t;

static void refuse(answer_t *a, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void refuse(answer_t *a, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->message, sizeof(a->message), fmt, ap);
    va_end(ap);
    a->resp.code = code;
    ops_log(OPS_LOG_WARN, "card.refused", "code", qc_errname(code), "message", a->message, NULL);
}

static bool is_trusted(const card_state_t *st, const char *id)
{
    for (size_t i = 0; i < st->trusted_count; i++) {
        if (strcmp(st->trusted[i], id) == 0)
            return true;
    }
    return false;
}

static bool bytes_are(const ProtobufCBinaryData *b, const uint8_t *want, size_t len)
{
    return b->len == len && CRYPTO_memcmp(b->data, want, len) == 0;
}

static int sign_body(card_device_t *dev, proto_type_t type, const ProtobufCMessage *msg,
                     bool with_cert, answer_t *a)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    if (len == 0 || len > PROTO_BODY_MAX)
        return QC_EINVAL;
    uint8_t *body = malloc(len);
    if (body == NULL)
        return QC_ENOMEM;
    size_t packed = protobuf_c_message_pack(msg, body);
    assert(packed == len);
    int rc = proto_envelope_sign(type, body, len, dev->key, CARD_KEY_VERSION,
                                 with_cert ? dev->cert_der : NULL, with_cert ? dev->cert_len : 0,
                                 &a->signed_blob, &a->signed_len);
    free(body);
    return rc;
}

static int op_auth_begin(card_device_t *dev, const Qccard__CardRequest *req, answer_t *a)
{
    card_device_session_reset(dev);
    if (!card_device_has_cert(dev)) {
        refuse(a, QC_ECERT, "this card has no certificate yet (qc-card install-cert)");
        return 0;
    }
    if (req->challenge.len != DEVICE_CARD_CHALLENGE_SIZE) {
        refuse(a, QC_EDECODE, "the device's challenge must be %d bytes",
               DEVICE_CARD_CHALLENGE_SIZE);
        return 0;
    }
    if (req->cert.len == 0 || req->cert.len > PROTO_CERT_MAX) {
        refuse(a, QC_ECERT, "the device sent no certificate");
        return 0;
    }
    char id[PROTO_DEVICE_ID_MAX + 1];
    EVP_PKEY *pub = NULL;
    int rc = proto_cert_verify(dev->trust, req->cert.data, req->cert.len,
                               (time_t)(ops_time_wall_ms() / 1000u), id, &pub);
    if (rc != 0) {
        refuse(a, rc, "the device's certificate is refused by the card: %s", qc_strerror(rc));
        return 0;
    }
    if (!device_pki_id_valid(id) || !is_trusted(&dev->st, id)) {
        EVP_PKEY_free(pub);
        refuse(a, QC_EUNTRUSTED, "device %s is not in card %s's trusted list", id, dev->st.number);
        return 0;
    }
    if (RAND_bytes(dev->card_challenge, DEVICE_CARD_CHALLENGE_SIZE) != 1) {
        EVP_PKEY_free(pub);
        return QC_ECRYPTO;
    }
    memcpy(dev->host_challenge, req->challenge.data, DEVICE_CARD_CHALLENGE_SIZE);
    memcpy(dev->host_id, id, strlen(id) + 1);
    dev->host_key = pub;
    Qccard__CardChallenge ch = QCCARD__CARD_CHALLENGE__INIT;
    ch.signer_id = dev->st.number;
    ch.peer_id = dev->host_id;
    ch.challenge.data = dev->host_challenge;
    ch.challenge.len = DEVICE_CARD_CHALLENGE_SIZE;
    ch.own_challenge.data = dev->card_challenge;
    ch.own_challenge.len = DEVICE_CARD_CHALLENGE_SIZE;
    rc = sign_body(dev, PROTO_TYPE_CARD_CHALLENGE, &ch.base, true, a);
    if (rc != 0) {
        card_device_session_reset(dev);
        return rc;
    }
    dev->phase = SESSION_CHALLENGED;
    a->resp.challenge.data = dev->card_challenge;
    a->resp.challenge.len = DEVICE_CARD_CHALLENGE_SIZE;
    return 0;
}

/* Opens an envelope signed by the session's device key as type; returns its body. */
static int open_host_signed(card_device_t *dev, const ProtobufCBinaryData *blob, proto_type_t type,
                            proto_envelope_t **env, const uint8_t **body, size_t *body_len)
{
    if (blob->len == 0 || blob->len > PROTO_ENVELOPE_MAX)
        return QC_ETOOBIG;
    int rc = proto_envelope_open(blob->data, blob->len, env);
    if (rc == 0)
        rc = proto_envelope_verify(*env, type, dev->host_key);
    if (rc == 0) {
        *body = proto_envelope_body(*env, body_len);
        if (*body_len == 0 || *body_len > PROTO_BODY_MAX)
            rc = QC_EDECODE;
    }
    return rc;
}

static int op_auth_finish(card_device_t *dev, const Qccard__CardRequest *req, answer_t *a)
{
    if (dev->phase != SESSION_CHALLENGED) {
        refuse(a, QC_ESTATE, "authentication must start with the card's challenge");
        return 0;
    }
    proto_envelope_t *env = NULL;
    const uint8_t *body = NULL;
    size_t body_len = 0;
    Qccard__CardChallenge *ch = NULL;
    int rc =
        open_host_signed(dev, &req->signed_, PROTO_TYPE_CARD_CHALLENGE, &env, &body, &body_len);
    if (rc == 0) {
        ch = qccard__card_challenge__unpack(NULL, body_len, body);
        rc = ch == NULL ? QC_EDECODE : 0;
    }
    if (rc == 0 &&
        (ch->signer_id == NULL || strcmp(ch->signer_id, dev->host_id) != 0 || ch->peer_id == NULL ||
         strcmp(ch->peer_id, dev->st.number) != 0 ||
         !bytes_are(&ch->challenge, dev->card_challenge, DEVICE_CARD_CHALLENGE_SIZE) ||
         !bytes_are(&ch->own_challenge, dev->host_challenge, DEVICE_CARD_CHALLENGE_SIZE)))
        rc = QC_EMISMATCH;
    if (ch != NULL)
        qccard__card_challenge__free_unpacked(ch, NULL);
    proto_envelope_destroy(&env);
    if (rc != 0) {
        card_device_session_reset(dev);
        refuse(a, rc, "the device did not prove possession of its key: %s", qc_strerror(rc));
        return 0;
    }
    dev->phase = SESSION_AUTHENTICATED;
    ops_log(OPS_LOG_INFO, "card.authenticated", "device", dev->host_id, NULL);
    return 0;
}

static int op_verify_pin(card_device_t *dev, const Qccard__CardRequest *req, answer_t *a)
{
    if (dev->phase < SESSION_AUTHENTICATED) {
        refuse(a, QC_EDENIED, "authenticate before presenting the PIN");
        return 0;
    }
    card_state_t *st = &dev->st;
    dev->phase = SESSION_AUTHENTICATED;
    if (st->pin.tries_left == 0) {
        refuse(a, QC_ELOCKED, "card %s is locked after %u wrong PINs", st->number,
               DEVICE_PIN_TRIES);
        return 0;
    }
    const char *pin = req->pin != NULL ? req->pin : "";
    /* Count the try on disk first, then compare (invariant 4). */
    device_pin_t before = st->pin;
    st->pin.tries_left--;
    int rc = card_commit(dev, NULL, NULL, NULL);
    if (rc != 0) {
        OPENSSL_cleanse(&before, sizeof(before));
        return rc;
    }
    int verdict = device_pin_check(&before, pin, strlen(pin));
    if (verdict == QC_ECRYPTO) {
        OPENSSL_cleanse(&before, sizeof(before));
        return verdict;
    }
    st->pin = before;
    OPENSSL_cleanse(&before, sizeof(before));
    rc = card_commit(dev,
                     verdict == 0            ? NULL
                     : verdict == QC_ELOCKED ? "pin.locked"
                                             : "pin.wrong",
                     NULL, NULL);
    if (rc != 0)
        return rc;
    a->resp.pin_tries_left = st->pin.tries_left;
    if (verdict == QC_EPIN)
        refuse(a, QC_EPIN, "wrong card PIN, %" PRIu32 " %s left", st->pin.tries_left,
               st->pin.tries_left == 1 ? "try" : "tries");
    else if (verdict == QC_ELOCKED)
        refuse(a, QC_ELOCKED, "wrong card PIN; card %s is now locked", st->number);
    else
        dev->phase = SESSION_PIN_OK;
    return 0;
}

static const card_record_t *find_record(const card_state_t *st, const uint8_t *id, size_t len)
{
    if (len != CARD_XFER_ID_SIZE)
        return NULL;
    for (size_t i = 0; i < st->transfer_count; i++) {
        if (CRYPTO_memcmp(st->transfers[i].transfer_id, id, CARD_XFER_ID_SIZE) == 0)
            return &st->transfers[i];
    }
    return NULL;
}

/* Signs the receipt for transfer id: CREDITED from rec, or NOT_CREDITED when rec is NULL. */
static int sign_receipt(card_device_t *dev, const uint8_t id[CARD_XFER_ID_SIZE],
                        const card_record_t *rec, answer_t *a)
{
    Qccard__CardReceipt r = QCCARD__CARD_RECEIPT__INIT;
    r.transfer_id.data = (uint8_t *)id;
    r.transfer_id.len = CARD_XFER_ID_SIZE;
    r.card_number = dev->st.number;
    r.device_id = rec != NULL ? (char *)rec->device_id : dev->host_id;
    r.amount = rec != NULL ? rec->amount : 0;
    r.status = rec != NULL ? QCCARD__RECEIPT_STATUS__RECEIPT_CREDITED
                           : QCCARD__RECEIPT_STATUS__RECEIPT_NOT_CREDITED;
    r.balance_after = rec != NULL ? rec->balance_after : dev->st.balance;
    r.counter = rec != NULL ? rec->counter : dev->st.counter;
    r.session.data = dev->host_challenge;
    r.session.len = DEVICE_CARD_CHALLENGE_SIZE;
    return sign_body(dev, PROTO_TYPE_CARD_RECEIPT, &r.base, false, a);
}

/* Checks a decoded CardCredit against the session and the purse; refuses with a sentence. */
static int credit_check(card_device_t *dev, const Qccard__CardCredit *cc, answer_t *a)
{
    const card_state_t *st = &dev->st;
    char have[DEVICE_AMOUNT_FORMAT_MAX], max[DEVICE_AMOUNT_FORMAT_MAX];
    if (cc->transfer_id.len != CARD_XFER_ID_SIZE || cc->device_id == NULL ||
        strcmp(cc->device_id, dev->host_id) != 0 || cc->card_number == NULL ||
        strcmp(cc->card_number, st->number) != 0) {
        refuse(a, QC_EMISMATCH, "the credit names another device, card or transfer");
        return QC_EMISMATCH;
    }
    if (!bytes_are(&cc->session, dev->card_challenge, DEVICE_CARD_CHALLENGE_SIZE)) {
        refuse(a, QC_EREPLAY, "the credit belongs to another session: refused as a replay");
        return QC_EREPLAY;
    }
    for (size_t i = 0; i < dev->voided_count; i++) {
        if (CRYPTO_memcmp(dev->voided[i], cc->transfer_id.data, CARD_XFER_ID_SIZE) == 0) {
            refuse(a, QC_EREPLAY,
                   "this card has proved it never credited this transfer: "
                   "it will not credit it now");
            return QC_EREPLAY;
        }
    }
    if (find_record(st, cc->transfer_id.data, cc->transfer_id.len) != NULL) {
        refuse(a, QC_EREPLAY, "this transfer was already credited: nothing more is credited");
        return QC_EREPLAY;
    }
    if (cc->amount <= 0) {
        refuse(a, QC_EAMOUNT, "the credit amount must be positive");
        return QC_EAMOUNT;
    }
    if (cc->amount > st->max_balance - st->balance) {
        refuse(a, QC_ECARDMAX, "the card holds %s and may hold at most %s: refused",
               device_amount_format(st->balance, have, sizeof(have)),
               device_amount_format(st->max_balance, max, sizeof(max)));
        return QC_ECARDMAX;
    }
    if (st->transfer_count == CARD_TRANSFERS_MAX) {
        refuse(a, QC_EFULL, "the card's transfer log is full (%d credits)", CARD_TRANSFERS_MAX);
        return QC_EFULL;
    }
    return 0;
}

static int op_credit(card_device_t *dev, const Qccard__CardRequest *req, answer_t *a)
{
    if (dev->phase < SESSION_AUTHENTICATED) {
        refuse(a, QC_EDENIED, "authenticate before asking for a credit");
        return 0;
    }
    if (dev->phase != SESSION_PIN_OK) {
        refuse(a, QC_EDENIED, "the card PIN has not been verified in this session");
        return 0;
    }
    proto_envelope_t *env = NULL;
    const uint8_t *body = NULL;
    size_t body_len = 0;
    Qccard__CardCredit *cc = NULL;
    int rc = open_host_signed(dev, &req->signed_, PROTO_TYPE_CARD_CREDIT, &env, &body, &body_len);
    if (rc == 0) {
        cc = qccard__card_credit__unpack(NULL, body_len, body);
        rc = cc == NULL ? QC_EDECODE : 0;
    }
    if (rc != 0) {
        refuse(a, rc, "the credit is not signed by the authenticated device: %s", qc_strerror(rc));
        rc = 0;
        goto out;
    }
    if (credit_check(dev, cc, a) != 0)
        goto out;
    ops_fault_point("card.before_credit");

    /* Balance, counter and the record: one atomic write (invariant 2). */
    card_state_t *st = &dev->st;
    card_record_t *rec = &st->transfers[st->transfer_count];
    memset(rec, 0, sizeof(*rec));
    memcpy(rec->transfer_id, cc->transfer_id.data, CARD_XFER_ID_SIZE);
    memcpy(rec->device_id, dev->host_id, sizeof(rec->device_id));
    rec->amount = cc->amount;
    rec->counter = st->counter + 1;
    rec->balance_after = st->balance + cc->amount;
    rec->time_ms = ops_time_wall_ms();
    st->balance += cc->amount;
    st->counter++;
    st->transfer_count++;
    rc = card_commit(dev, "card.credited", rec, NULL);
    if (rc != 0)
        goto out;
    ops_fault_point("card.after_credit_before_receipt");
    rc = sign_receipt(dev, rec->transfer_id, rec, a);
out:
    if (cc != NULL)
        qccard__card_credit__free_unpacked(cc, NULL);
    proto_envelope_destroy(&env);
    return rc;
}

static int op_proof(card_device_t *dev, const Qccard__CardRequest *req, answer_t *a)
{
    if (dev->phase < SESSION_AUTHENTICATED) {
        refuse(a, QC_EDENIED, "authenticate before asking for a proof");
        return 0;
    }
    if (req->transfer_id.len != CARD_XFER_ID_SIZE) {
        refuse(a, QC_EDECODE, "a transfer id has %d bytes", CARD_XFER_ID_SIZE);
        return 0;
    }
    const card_record_t *rec = find_record(&dev->st, req->transfer_id.data, req->transfer_id.len);
    if (rec == NULL) {
        /* Saying "never credited" voids the id for the rest of the session (invariant 5). */
        if (dev->voided_count == CARD_SESSION_VOIDED_MAX) {
            refuse(a, QC_EFULL, "too many proofs in one contact: present the card again");
            return 0;
        }
        memcpy(dev->voided[dev->voided_count++], req->transfer_id.data, CARD_XFER_ID_SIZE);
    }
    ops_fault_point("card.before_proof");
    return sign_receipt(dev, req->transfer_id.data, rec, a);
}

static int dispatch(card_device_t *dev, const Qccard__CardRequest *req, answer_t *a)
{
    switch (req->op) {
    case QCCARD__CARD_OP__CARD_OP_READ_BALANCE:
        return 0; /* every answer carries the purse */
    case QCCARD__CARD_OP__CARD_OP_AUTH_BEGIN:
        return op_auth_begin(dev, req, a);
    case QCCARD__CARD_OP__CARD_OP_AUTH_FINISH:
        return op_auth_finish(dev, req, a);
    case QCCARD__CARD_OP__CARD_OP_VERIFY_PIN:
        return op_verify_pin(dev, req, a);
    case QCCARD__CARD_OP__CARD_OP_CREDIT:
        return op_credit(dev, req, a);
    case QCCARD__CARD_OP__CARD_OP_PROOF:
        return op_proof(dev, req, a);
    default:
        refuse(a, QC_EMETHOD, "unknown card command");
        return 0;
    }
}

int card_device_handle(card_device_t *dev, const uint8_t *req_bytes, size_t req_len, uint8_t **resp,
                       size_t *resp_len)
{
    assert(dev != NULL);
    assert(resp != NULL);
    assert(resp_len != NULL);
    assert(req_bytes != NULL || req_len == 0);
    *resp = NULL;
    answer_t a;
    memset(&a, 0, sizeof(a));
    qccard__card_response__init(&a.resp);
    Qccard__CardRequest *req = NULL;
    int rc = 0;
    if (req_len == 0 || req_len > DEVICE_WIRE_FRAME_MAX)
        refuse(&a, QC_ETOOBIG, "the command is larger than the card accepts");
    else if ((req = qccard__card_request__unpack(NULL, req_len, req_bytes)) == NULL)
        refuse(&a, QC_EDECODE, "the command is not a card command");
    else
        rc = dispatch(dev, req, &a);
    if (req != NULL) {
        if (req->pin != NULL)
            OPENSSL_cleanse(req->pin, strlen(req->pin));
        qccard__card_request__free_unpacked(req, NULL);
    }
    if (rc != 0) {
        free(a.signed_blob);
        return rc;
    }
    const card_state_t *st = &dev->st;
    a.resp.message = a.message;
    a.resp.card_number = (char *)st->number;
    a.resp.balance = st->balance;
    a.resp.max_balance = st->max_balance;
    a.resp.counter = st->counter;
    if (a.resp.pin_tries_left == 0)
        a.resp.pin_tries_left = st->pin.tries_left;
    if (a.signed_blob != NULL && a.resp.code == 0) {
        a.resp.signed_.data = a.signed_blob;
        a.resp.signed_.len = a.signed_len;
    }
    size_t len = qccard__card_response__get_packed_size(&a.resp);
    uint8_t *buf = malloc(len > 0 ? len : 1);
    if (buf == NULL) {
        free(a.signed_blob);
        return QC_ENOMEM;
    }
    size_t packed = qccard__card_response__pack(&a.resp, buf);
    assert(packed == len);
    free(a.signed_blob);
    *resp = buf;
    *resp_len = len;
    return 0;
}
