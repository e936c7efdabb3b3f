/* device_core.c - the device state machine of the load protocol, its PIN gate and its card
 * transfers, in memory.
 *
 * Invariants (asserted in core_check_invariants() after every transition):
 *   1. counter is the number of allows this device has applied. It changes only in
 *      device_core_judge_allow(), by exactly +1, in the same state change as the credit of
 *      exactly the pending amount and the signed APPLIED report.
 *   2. IDLE has no load in progress: no request, no report.
 *   3. PENDING has one signed request stored, whose body SHA-256 is request_digest, whose
 *      counter is the current counter and which is re-sent as is (same txn) until judged.
 *   4. REPORTED has the signed report of its judgement stored before it is ever sent; an
 *      APPLIED report means counter = request counter + 1, a REJECTED one that nothing was
 *      credited. A load is judged once: an allow is only ever judged in PENDING.
 *   5. Only a verified outcome for the same txn leaves REPORTED, so a report is re-sent
 *      until the bank has settled it.
 *   6. PENDING -> IDLE (abandon) never applies anything; the unchanged counter proves that
 *      to the ledger, which compensates.
 *   7. At most one load is in progress: a request is only signed in IDLE, after the PIN.
 *   8. Every change is one new state, with its log line, handed to the store before the core
 *      adopts it (core_adopt()); in memory the state never runs ahead of the store.
 *   9. A card transfer is pending only in IDLE, and a load request is only signed with no
 *      card transfer pending; the debit of a card transfer and its pending record are one
 *      state change (device_core_card_debit()), and only the card's signed receipt ends it:
 *      CREDITED completes, a fresh NOT_CREDITED refunds (device_core_card_settle()).
 *
 *              device_core_request()                device_core_judge_allow()
 *      IDLE --------------------------> PENDING(txn, c) -----------------------> REPORTED
 *       ^  ^                                |          APPLIED: credit, c+1      |
 *       |  |      device_core_abandon()     |          REJECTED: nothing moves   |
 *       |  +--------------------------------+                                    |
 *       |                                                                        |
 *       +------------------- device_core_accept_outcome() -----------------------+
 *
 * A transition builds the next state as a copy of the current one that shares its signed
 * blobs, hands it to the store, and only then adopts it and frees the blobs it dropped; a
 * store that fails leaves the current state untouched and frees the blobs the next one
 * added. */
#include "device_core.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "card.pb-c.h"
#include "device_amount.h"
#include "ops_fault.h"
#include "ops_hex.h"
#include "ops_log.h"
#include "ops_time.h"
#include "proto_cert.h"
#include "proto_decode.h"
#include "proto_ecdsa.h"
#include "proto_envelope.h"
#include "proto_load.h"
#include "qc_error.h"
#include "quancun.pb-c.h"

#define CORE_TIME_TEXT_MAX 64
#define CORE_DETAIL_MAX 256 /* bytes of a reason or server message kept in the log */

struct device_core {
    device_state_t st;
    EVP_PKEY *key;
    uint8_t *cert_der; /* NULL until a certificate is installed */
    size_t cert_len;
    device_bank_key_t allow;   /* the bank's allow-signing key */
    device_bank_key_t outcome; /* the bank's outcome-signing key */
    bool pin_ok;
    device_store_fn *store; /* NULL: memory only */
    void *store_arg;
    device_sign_fn *sign; /* NULL: key is the private key and OpenSSL signs */
    void *sign_arg;
};

/* ------------------------------------------------------------------ invariants */

static void core_check_invariants(const device_core_t *c)
{
    const device_state_t *st = &c->st;
    assert(st->serial[0] != '\0');
    assert(st->pin.tries_left <= DEVICE_PIN_TRIES);
    assert(!st->card_pending || st->phase == DEVICE_IDLE); /* 9 */
    assert(!st->card_pending || st->card_amount > 0);
    switch (st->phase) {
    case DEVICE_IDLE:
        assert(st->request == NULL); /* 2 */
        assert(st->report == NULL);
        break;
    case DEVICE_PENDING:
        assert(st->request != NULL); /* 3 */
        assert(st->report == NULL);
        assert(st->amount > 0);
        break;
    case DEVICE_REPORTED:
        assert(st->request != NULL); /* 4 */
        assert(st->report != NULL);
        assert(st->report_status == QUANCUN__REPORT_STATUS__REPORT_APPLIED ||
               st->report_status == QUANCUN__REPORT_STATUS__REPORT_REJECTED);
        break;
    default:
        assert(!"unknown phase");
    }
    (void)st;
}

/* ------------------------------------------------------------------ the state record */

void device_state_clear(device_state_t *st)
{
    if (st == NULL)
        return;
    free(st->request);
    free(st->report);
    OPENSSL_cleanse(st, sizeof(*st));
}

int device_state_set_blob(uint8_t **blob_p, size_t *len_p, const uint8_t *bytes, size_t len)
{
    assert(blob_p != NULL);
    assert(len_p != NULL);
    if (bytes == NULL || len == 0 || len > DEVICE_BLOB_MAX)
        return QC_EINVAL;
    uint8_t *copy = malloc(len);
    if (copy == NULL)
        return QC_ENOMEM;
    memcpy(copy, bytes, len);
    free(*blob_p);
    *blob_p = copy;
    *len_p = len;
    return 0;
}

int device_state_init(device_state_t *st, const char *serial, const char *pin, size_t pin_len,
                      uint32_t pin_iterations)
{
    assert(st != NULL);
    assert(serial != NULL);
    assert(pin != NULL || pin_len == 0);
    device_state_clear(st);
    memset(st, 0, sizeof(*st));
    if (!device_pki_id_valid(serial))
        return QC_EINVAL;
    memcpy(st->serial, serial, strlen(serial) + 1);
    st->phase = DEVICE_IDLE;
    int rc = device_pin_set_iterations(&st->pin, pin, pin_len, pin_iterations);
    if (rc != 0)
        device_state_clear(st);
    return rc;
}

const char *device_phase_name(device_phase_t phase)
{
    switch (phase) {
    case DEVICE_IDLE:
        return "IDLE";
    case DEVICE_PENDING:
        return "PENDING";
    case DEVICE_REPORTED:
        return "REPORTED";
    }
    return "UNKNOWN";
}

bool device_account_valid(const char *s)
{
    assert(s != NULL);
    size_t n = strnlen(s, DEVICE_ACCOUNT_MAX + 1);
    if (n == 0 || n > DEVICE_ACCOUNT_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c >= 0x7f || c == '"' || c == '\\')
            return false;
    }
    return true;
}

/* Frees the blobs of a that b does not share. */
static void state_free_unshared(device_state_t *a, const device_state_t *b)
{
    if (a->request != b->request)
        free(a->request);
    if (a->report != b->report)
        free(a->report);
    a->request = NULL;
    a->report = NULL;
}

/* Forgets the load in progress (back to IDLE fields). The blobs are not freed: they are
 * still the current state's until the next state is adopted. */
static void forget_load(device_state_t *st)
{
    st->request = NULL;
    st->report = NULL;
    st->request_len = 0;
    st->report_len = 0;
    memset(st->txn_id, 0, sizeof(st->txn_id));
    memset(st->account_id, 0, sizeof(st->account_id));
    memset(st->request_digest, 0, sizeof(st->request_digest));
    memset(st->allow_digest, 0, sizeof(st->allow_digest));
    st->amount = 0;
    st->currency = 0;
    st->report_status = 0;
    st->phase = DEVICE_IDLE;
}

/* ------------------------------------------------------------------ log lines */

/* Appends s JSON-escaped to out at *pos (capacity cap); stops quietly when full. */
static void json_escape(char *out, size_t cap, size_t *pos, const char *s)
{
    for (; *s != '\0' && *pos + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[(*pos)++] = '\\';
            out[(*pos)++] = (char)c;
        } else if (c < 0x20 || c >= 0x7f) {
            *pos += (size_t)snprintf(out + *pos, cap - *pos, "\\u%04x", c);
        } else {
            out[(*pos)++] = (char)c;
        }
    }
    out[*pos] = '\0';
}

static void time_text(uint64_t ms, char out[CORE_TIME_TEXT_MAX])
{
    time_t secs = (time_t)(ms / 1000u);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(out, CORE_TIME_TEXT_MAX, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(ms % 1000u));
}

/* Builds the log line of a transition into st->log_pending, numbered st->log_seq + 1. The
 * load fields are taken from st, so a transition that ends a load builds its line first and
 * names the phase it goes to in phase_after. */
static void log_line(device_state_t *st, device_phase_t phase_after, const char *event,
                     const char *detail)
{
    char when[CORE_TIME_TEXT_MAX];
    char txn[2 * DEVICE_TXN_SIZE + 1] = "";
    char amount[DEVICE_AMOUNT_FORMAT_MAX];
    char balance[DEVICE_AMOUNT_FORMAT_MAX];
    char *out = st->log_pending;
    size_t cap = sizeof(st->log_pending);
    time_text(ops_time_wall_ms(), when);
    if (st->phase != DEVICE_IDLE)
        ops_hex(st->txn_id, DEVICE_TXN_SIZE, txn);
    int n = snprintf(out, cap,
                     "{\"seq\":%" PRIu64 ",\"time\":\"%s\",\"event\":\"%s\",\"state\":\"%s\","
                     "\"balance\":\"%s\",\"counter\":%" PRIu64,
                     st->log_seq + 1, when, event, device_phase_name(phase_after),
                     device_amount_format(st->balance, balance, sizeof(balance)), st->counter);
    assert(n > 0);
    assert((size_t)n < cap);
    size_t pos = (size_t)n;
    if (st->phase != DEVICE_IDLE) {
        n = snprintf(out + pos, cap - pos,
                     ",\"txn\":\"%s\",\"account\":\"%s\",\"amount\":\"%s\",\"currency\":%" PRIu32,
                     txn, st->account_id, device_amount_format(st->amount, amount, sizeof(amount)),
                     st->currency);
        assert(n > 0);
        assert((size_t)n < cap - pos);
        pos += (size_t)n;
    }
    if (detail != NULL && pos + sizeof(",\"detail\":\"\"}") < cap) {
        char clipped[CORE_DETAIL_MAX + 1];
        snprintf(clipped, sizeof(clipped), "%s", detail);
        static const char key[] = ",\"detail\":\"";
        memcpy(out + pos, key, sizeof(key) - 1);
        pos += sizeof(key) - 1;
        json_escape(out, cap - 3, &pos, clipped);
        out[pos++] = '"';
    }
    assert(pos + 2 <= cap);
    out[pos++] = '}';
    out[pos] = '\0';
    st->log_seq++;
}

/* ------------------------------------------------------------------ state changes */

/* Makes *next the device's state: the store takes it first (when there is one), and only
 * then does the core adopt it and free the blobs it dropped (invariant 8). When the store
 * fails, the blobs next added are freed and the state is as before. *next is wiped either
 * way. */
static int core_adopt(device_core_t *c, device_state_t *next, bool has_line)
{
    int rc = c->store != NULL ? c->store(c->store_arg, next, has_line) : 0;
    if (rc != 0) {
        state_free_unshared(next, &c->st);
        OPENSSL_cleanse(next, sizeof(*next));
        return rc;
    }
    state_free_unshared(&c->st, next);
    memcpy(&c->st, next, sizeof(c->st));
    OPENSSL_cleanse(next, sizeof(*next));
    core_check_invariants(c);
    return 0;
}

/* Commits the transition already made in *next, logged as event (none when NULL). */
static int core_commit(device_core_t *c, device_state_t *next, const char *event,
                       const char *detail)
{
    if (event != NULL)
        log_line(next, next->phase, event, detail);
    return core_adopt(c, next, event != NULL);
}

/* ------------------------------------------------------------------ new, destroy, setup */

int device_core_new(device_state_t *st, EVP_PKEY *key, device_core_t **out)
{
    assert(st != NULL);
    assert(key != NULL);
    assert(out != NULL);
    assert(st->serial[0] != '\0');
    *out = NULL;
    device_core_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return QC_ENOMEM;
    if (EVP_PKEY_up_ref(key) != 1) {
        free(c);
        return QC_ENOMEM;
    }
    c->key = key;
    memcpy(&c->st, st, sizeof(c->st));
    memset(st, 0, sizeof(*st)); /* the blobs are the core's now */
    core_check_invariants(c);
    *out = c;
    return 0;
}

void device_core_destroy(device_core_t **core_p)
{
    if (core_p == NULL || *core_p == NULL)
        return;
    device_core_t *c = *core_p;
    device_state_clear(&c->st);
    EVP_PKEY_free(c->key); /* OpenSSL wipes the private key as it frees the last reference */
    free(c->cert_der);
    device_pki_bank_key_clear(&c->allow);
    device_pki_bank_key_clear(&c->outcome);
    OPENSSL_cleanse(c, sizeof(*c));
    free(c);
    *core_p = NULL;
}

void device_core_set_store(device_core_t *c, device_store_fn *store, void *arg)
{
    assert(c != NULL);
    assert(store != NULL || arg == NULL);
    c->store = store;
    c->store_arg = arg;
}

int device_core_set_cert(device_core_t *c, const uint8_t *der, size_t der_len)
{
    assert(c != NULL);
    assert(der != NULL || der_len == 0);
    uint8_t *copy = NULL;
    if (der != NULL) {
        if (der_len == 0 || der_len > PROTO_CERT_MAX)
            return QC_EINVAL;
        if ((copy = malloc(der_len)) == NULL)
            return QC_ENOMEM;
        memcpy(copy, der, der_len);
    }
    free(c->cert_der);
    c->cert_der = copy;
    c->cert_len = copy != NULL ? der_len : 0;
    return 0;
}

/* Makes *dst a second reference to src (empty when src is NULL or empty). */
static void bank_key_share(device_bank_key_t *dst, const device_bank_key_t *src)
{
    device_pki_bank_key_clear(dst);
    if (src == NULL || src->key == NULL)
        return;
    /* Taking a reference only counts: it cannot fail for a live object. */
    int ok = EVP_PKEY_up_ref(src->key);
    assert(ok == 1);
    dst->key = src->key;
    if (src->cert != NULL) {
        ok = X509_up_ref(src->cert);
        assert(ok == 1);
        dst->cert = src->cert;
    }
    (void)ok;
}

void device_core_set_bank(device_core_t *c, const device_bank_key_t *allow,
                          const device_bank_key_t *outcome)
{
    assert(c != NULL);
    bank_key_share(&c->allow, allow);
    bank_key_share(&c->outcome, outcome);
}

int device_core_note(device_core_t *c, const char *event, const char *detail)
{
    assert(c != NULL);
    assert(event != NULL);
    device_state_t next = c->st;
    return core_commit(c, &next, event, detail);
}

const char *device_core_serial(const device_core_t *c)
{
    assert(c != NULL);
    return c->st.serial;
}

void device_core_status(const device_core_t *c, device_status_t *out)
{
    assert(c != NULL);
    assert(out != NULL);
    const device_state_t *st = &c->st;
    memset(out, 0, sizeof(*out));
    memcpy(out->serial, st->serial, sizeof(out->serial));
    out->balance = st->balance;
    out->counter = st->counter;
    out->phase = st->phase;
    memcpy(out->txn_id, st->txn_id, sizeof(out->txn_id));
    memcpy(out->account_id, st->account_id, sizeof(out->account_id));
    out->amount = st->amount;
    out->currency = st->currency;
    out->report_status = st->report_status;
    memcpy(out->last_txn_id, st->last_txn_id, sizeof(out->last_txn_id));
    out->last_outcome = st->last_outcome;
    out->pin_tries_left = st->pin.tries_left;
    out->has_cert = c->cert_der != NULL;
    out->has_bank = c->allow.key != NULL && c->outcome.key != NULL;
    out->card_pending = st->card_pending;
    memcpy(out->card_xfer_id, st->card_xfer_id, sizeof(out->card_xfer_id));
    out->card_amount = st->card_amount;
    memcpy(out->card_number, st->card_number, sizeof(out->card_number));
}

/* ------------------------------------------------------------------ PIN */

int device_core_verify_pin(device_core_t *c, const char *pin, size_t pin_len)
{
    assert(c != NULL);
    assert(pin != NULL || pin_len == 0);
    c->pin_ok = false;
    if (c->sign != NULL)
        return QC_EDENIED; /* the PIN is the signer's (device_core_pin_verified()) */
    if (c->st.pin.tries_left == 0)
        return QC_ELOCKED;
    /* Count the try in the store first, then compare. */
    device_state_t next = c->st;
    device_pin_t before = next.pin;
    next.pin.tries_left--;
    int rc = core_adopt(c, &next, false);
    if (rc != 0) {
        OPENSSL_cleanse(&before, sizeof(before));
        return rc;
    }
    int verdict = device_pin_check(&before, pin, pin_len);
    if (verdict == QC_ECRYPTO) {
        OPENSSL_cleanse(&before, sizeof(before));
        return verdict; /* the try stays counted: failing closed */
    }
    next = c->st;
    next.pin = before;
    OPENSSL_cleanse(&before, sizeof(before));
    const char *event = verdict == 0 ? NULL : verdict == QC_ELOCKED ? "pin.locked" : "pin.wrong";
    rc = core_commit(c, &next, event, NULL);
    if (rc != 0)
        return rc;
    c->pin_ok = verdict == 0;
    return verdict;
}

int device_core_admin_reset(device_core_t *c)
{
    assert(c != NULL);
    device_state_t next = c->st;
    device_pin_admin_reset(&next.pin);
    return core_commit(c, &next, "pin.admin_reset", NULL);
}

/* ------------------------------------------------------------------ signing */

void device_core_set_signer(device_core_t *c, device_sign_fn *sign, void *arg)
{
    assert(c != NULL);
    assert(sign != NULL);
    c->sign = sign;
    c->sign_arg = arg;
    c->pin_ok = false;
}

void device_core_pin_verified(device_core_t *c)
{
    assert(c != NULL);
    assert(c->sign != NULL);
    c->pin_ok = true;
}

/* Signs body as type through the core's signer: digest, raw r || s, low S, DER, envelope. */
static int sign_external(const device_core_t *c, proto_type_t type, const uint8_t *body, size_t len,
                         bool with_cert, uint8_t **out, size_t *out_len)
{
    uint8_t digest[PROTO_DIGEST_SIZE], key_id[PROTO_KEY_ID_SIZE], raw[PROTO_SIG_RAW_SIZE];
    uint8_t der[PROTO_SIG_DER_MAX];
    size_t der_len = 0;
    int rc = proto_envelope_digest(type, body, len, digest);
    if (rc == 0)
        rc = proto_key_id(c->key, key_id);
    if (rc == 0)
        rc = c->sign(c->sign_arg, digest, raw);
    if (rc == 0 && proto_ecdsa_raw_low_s(raw) < 0)
        rc = QC_ECRYPTO;
    if (rc == 0 && proto_ecdsa_raw_to_der(raw, der, sizeof(der), &der_len) != 0)
        rc = QC_ECRYPTO;
    if (rc == 0)
        rc = proto_envelope_seal(body, len, key_id, DEVICE_KEY_VERSION, der, der_len,
                                 with_cert ? c->cert_der : NULL, with_cert ? c->cert_len : 0, out,
                                 out_len);
    return rc;
}

/* Packs msg and signs it as type with the device key (and certificate when given). */
static int sign_message(const device_core_t *c, proto_type_t type, const ProtobufCMessage *msg,
                        bool with_cert, uint8_t **out, size_t *out_len,
                        uint8_t body_digest[PROTO_DIGEST_SIZE])
{
    assert(c->key != NULL);
    assert(!with_cert || c->cert_der != NULL);
    size_t len = protobuf_c_message_get_packed_size(msg);
    if (len == 0 || len > PROTO_BODY_MAX)
        return QC_EINVAL;
    uint8_t *body = malloc(len);
    if (body == NULL)
        return QC_ENOMEM;
    size_t packed = protobuf_c_message_pack(msg, body);
    assert(packed == len);
    (void)packed;
    int rc = 0;
    if (body_digest != NULL)
        rc = proto_sha256(body, len, body_digest);
    if (rc == 0 && c->sign != NULL)
        rc = sign_external(c, type, body, len, with_cert, out, out_len);
    else if (rc == 0)
        rc = proto_envelope_sign(type, body, len, c->key, DEVICE_KEY_VERSION,
                                 with_cert ? c->cert_der : NULL, with_cert ? c->cert_len : 0, out,
                                 out_len);
    free(body);
    return rc;
}

int device_core_request(device_core_t *c, const char *account_id, int64_t amount, uint32_t currency,
                        const uint8_t **request, size_t *request_len)
{
    assert(c != NULL);
    assert(account_id != NULL);
    assert(request != NULL);
    assert(request_len != NULL);
    const device_state_t *st = &c->st;
    if (!c->pin_ok)
        return QC_EDENIED;
    if (st->phase != DEVICE_IDLE)
        return QC_EPENDING;
    if (st->card_pending)
        return QC_ECARDPENDING; /* invariant 9 */
    if (c->cert_der == NULL)
        return QC_ECERT;
    if (c->allow.key == NULL || c->outcome.key == NULL)
        return QC_ECONFIG;
    if (amount <= 0)
        return QC_EAMOUNT;
    if (!device_account_valid(account_id) || currency == 0 || currency > PROTO_CURRENCY_MAX)
        return QC_EINVAL;

    uint8_t txn[DEVICE_TXN_SIZE];
    uint8_t nonce[PROTO_NONCE_SIZE];
    if (RAND_bytes(txn, sizeof(txn)) != 1 || RAND_bytes(nonce, sizeof(nonce)) != 1)
        return QC_ECRYPTO;
    Quancun__LoadRequest req = QUANCUN__LOAD_REQUEST__INIT;
    req.txn_id.data = txn;
    req.txn_id.len = sizeof(txn);
    req.device_id = (char *)st->serial; /* pack only reads it */
    req.account_id = (char *)account_id;
    req.amount = amount;
    req.currency = currency;
    req.balance_before = st->balance;
    req.counter = st->counter;
    req.key_version = DEVICE_KEY_VERSION;
    req.alg = QUANCUN__ALG__ALG_ECDSA_P256_SHA256;
    req.nonce.data = nonce;
    req.nonce.len = sizeof(nonce);
    req.device_time_ms = ops_time_wall_ms();

    uint8_t *signed_req = NULL;
    size_t signed_len = 0;
    uint8_t digest[DEVICE_DIGEST_SIZE];
    int rc =
        sign_message(c, PROTO_TYPE_LOAD_REQUEST, &req.base, true, &signed_req, &signed_len, digest);
    if (rc != 0)
        return rc;

    /* Every field of the transition is set, then one commit makes it real. */
    device_state_t next = c->st;
    next.request = signed_req;
    next.request_len = signed_len;
    memcpy(next.txn_id, txn, sizeof(txn));
    memcpy(next.account_id, account_id, strlen(account_id) + 1);
    next.amount = amount;
    next.currency = currency;
    memcpy(next.request_digest, digest, sizeof(digest));
    next.phase = DEVICE_PENDING;
    rc = core_commit(c, &next, "load.requested", NULL);
    if (rc != 0)
        return rc;
    ops_fault_point("wallet.after_request_signed");
    *request = c->st.request;
    *request_len = c->st.request_len;
    return 0;
}

int device_core_pending_request(const device_core_t *c, const uint8_t **request,
                                size_t *request_len)
{
    assert(c != NULL);
    assert(request != NULL);
    assert(request_len != NULL);
    if (c->st.phase == DEVICE_IDLE)
        return QC_ESTATE;
    *request = c->st.request;
    *request_len = c->st.request_len;
    return 0;
}

int device_core_report(const device_core_t *c, const uint8_t **report, size_t *report_len)
{
    assert(c != NULL);
    assert(report != NULL);
    assert(report_len != NULL);
    if (c->st.phase != DEVICE_REPORTED)
        return QC_ESTATE;
    *report = c->st.report;
    *report_len = c->st.report_len;
    return 0;
}

/* ------------------------------------------------------------------ verification */

/* Refuses a bank key whose certificate is not valid at the device's time. */
static int bank_cert_current(const device_bank_key_t *bk)
{
    if (bk->cert == NULL)
        return 0;
    time_t now = (time_t)(ops_time_wall_ms() / 1000u);
    if (X509_cmp_time(X509_get0_notBefore(bk->cert), &now) >= 0)
        return QC_ECERTNOTYET;
    if (X509_cmp_time(X509_get0_notAfter(bk->cert), &now) <= 0)
        return QC_ECERTEXPIRED;
    return 0;
}

/* Opens and verifies a bank-signed envelope, in the fixed order: size, parse, bank
 * certificate validity, key id and signature. On success *env_out holds it. */
static int open_bank_envelope(const device_bank_key_t *bk, proto_type_t type, const uint8_t *bytes,
                              size_t len, proto_envelope_t **env_out)
{
    assert(bk->key != NULL);
    if (len > PROTO_ENVELOPE_MAX)
        return QC_ETOOBIG;
    proto_envelope_t *env = NULL;
    int rc = proto_envelope_open(bytes, len, &env);
    if (rc == 0)
        rc = bank_cert_current(bk);
    if (rc == 0)
        rc = proto_envelope_verify(env, type, bk->key);
    if (rc != 0) {
        proto_envelope_destroy(&env);
        return rc;
    }
    *env_out = env;
    return 0;
}

static bool bytes_equal(const ProtobufCBinaryData *b, const uint8_t *want, size_t want_len)
{
    return b->len == want_len && CRYPTO_memcmp(b->data, want, want_len) == 0;
}

/* The time this device signed its pending request, on its own clock (the request's
 * device_time_ms, read back from the stored envelope). Returns 0, or QC_EDECODE. */
static int pending_request_time(const device_state_t *st, uint64_t *out)
{
    proto_envelope_t *env = NULL;
    Quancun__LoadRequest *req = NULL;
    size_t body_len = 0;
    int rc = proto_envelope_open(st->request, st->request_len, &env);
    if (rc == 0) {
        const uint8_t *body = proto_envelope_body(env, &body_len);
        rc = proto_decode_load_request(body, body_len, &req);
    }
    if (rc == 0)
        *out = req->device_time_ms;
    if (req != NULL)
        quancun__load_request__free_unpacked(req, NULL);
    proto_envelope_destroy(&env);
    return rc == 0 ? 0 : QC_EDECODE;
}

/* The allow is timed by elapsed time, never by comparing two machines' clocks: the bank
 * grants the report window deadline_ms - host_time_ms (both on the bank's clock), and the
 * device spends it from the moment it signed its request (on its own clock), which is before
 * the bank started the window. So a device whose clock is off, by any amount, judges the
 * same way as one whose clock is right; only its own clock's running matters. A clock that
 * went back since the request leaves the elapsed time unknown: refused, the safe side (the
 * bank's deadline gives the money back). */
static int allow_in_time(const device_state_t *st, const Quancun__LoadAllow *allow,
                         const char **reason)
{
    if (allow->deadline_ms <= allow->host_time_ms) {
        *reason = "allow deadline has passed";
        return QC_EEXPIRED;
    }
    uint64_t window = allow->deadline_ms - allow->host_time_ms;
    uint64_t sent = 0;
    if (pending_request_time(st, &sent) != 0) {
        *reason = "the pending request cannot be read back";
        return QC_EDECODE;
    }
    uint64_t now = ops_time_wall_ms();
    if (now < sent) {
        *reason = "this device's clock went back since the request";
        return QC_EEXPIRED;
    }
    if (now - sent >= window) {
        *reason = "allow deadline has passed";
        return QC_EEXPIRED;
    }
    return 0;
}

/* An allow (verified, decoded) belongs to the pending load of st when it says what the
 * request said (the one rule, proto_load.h) and its report window, timed from the request by
 * this device's clock (allow_in_time), has not run out. Returns 0, or the refusal code with
 * *reason set to the sentence the report will carry. */
static int allow_matches(const device_state_t *st, const Quancun__LoadAllow *allow,
                         const char **reason)
{
    Quancun__LoadRequest pending = QUANCUN__LOAD_REQUEST__INIT;
    pending.txn_id = (ProtobufCBinaryData){.len = DEVICE_TXN_SIZE, .data = (uint8_t *)st->txn_id};
    pending.device_id = (char *)st->serial;      /* only read */
    pending.account_id = (char *)st->account_id; /* only read */
    pending.amount = st->amount;
    pending.currency = st->currency;
    pending.counter = st->counter;
    int rc = proto_allow_matches_request(allow, &pending, st->request_digest, reason);
    if (rc != 0)
        return rc;
    return allow_in_time(st, allow, reason);
}

/* Judges an allow against the pending load. Returns 0 when it may be applied, or the
 * refusal code with *reason set; *allow_digest is always set (SHA-256 of the body, or of the
 * raw bytes when no envelope could be parsed). */
static int check_allow(const device_core_t *c, const uint8_t *bytes, size_t len,
                       uint8_t allow_digest[DEVICE_DIGEST_SIZE], const char **reason)
{
    const device_state_t *st = &c->st;
    proto_envelope_t *env = NULL;
    Quancun__LoadAllow *allow = NULL;
    size_t body_len = 0;
    const uint8_t *body = NULL;

    int rc = proto_sha256(bytes, len, allow_digest);
    if (rc != 0) {
        *reason = "allow digest failed";
        return rc;
    }
    rc = open_bank_envelope(&c->allow, PROTO_TYPE_LOAD_ALLOW, bytes, len, &env);
    if (env == NULL && rc != 0) {
        /* The envelope may have parsed: report the digest of its body if so. */
        proto_envelope_t *raw = NULL;
        if (len <= PROTO_ENVELOPE_MAX && proto_envelope_open(bytes, len, &raw) == 0) {
            body = proto_envelope_body(raw, &body_len);
            if (proto_sha256(body, body_len, allow_digest) != 0)
                memset(allow_digest, 0, DEVICE_DIGEST_SIZE);
        }
        proto_envelope_destroy(&raw);
        *reason = rc == QC_EBADSIG        ? "allow signature does not verify with the bank key"
                  : rc == QC_EKEYID       ? "allow not signed by the bank's allow key"
                  : rc == QC_ECERTEXPIRED ? "bank certificate expired"
                  : rc == QC_ECERTNOTYET  ? "bank certificate not yet valid"
                                          : "allow is not a well-formed signed message";
        return rc;
    }
    body = proto_envelope_body(env, &body_len);
    rc = proto_sha256(body, body_len, allow_digest);
    if (rc != 0) {
        *reason = "allow digest failed";
        goto out;
    }
    rc = QC_EDECODE;
    *reason = "allow body is malformed";
    if (body_len == 0 || body_len > PROTO_BODY_MAX)
        goto out;
    allow = quancun__load_allow__unpack(NULL, body_len, body);
    if (allow == NULL)
        goto out;
    rc = allow_matches(st, allow, reason);
    if (rc != 0)
        goto out;
    if (st->balance > INT64_MAX - st->amount) {
        rc = QC_EAMOUNT;
        *reason = "the wallet balance would overflow";
        goto out;
    }
    *reason = NULL;
out:
    if (allow != NULL)
        quancun__load_allow__free_unpacked(allow, NULL);
    proto_envelope_destroy(&env);
    return rc;
}

int device_core_judge_allow(device_core_t *c, const uint8_t *allow, size_t allow_len, int *verdict)
{
    assert(c != NULL);
    assert(verdict != NULL);
    assert(allow != NULL || allow_len == 0);
    const device_state_t *st = &c->st;
    if (st->phase == DEVICE_IDLE)
        return QC_ESTATE;
    if (st->phase == DEVICE_REPORTED)
        return QC_EREPLAY; /* invariant 4: judged once */
    if (c->allow.key == NULL)
        return QC_ECONFIG;

    uint8_t allow_digest[DEVICE_DIGEST_SIZE];
    const char *reason = NULL;
    int v = check_allow(c, allow, allow_len, allow_digest, &reason);
    if (v == QC_ENOMEM || v == QC_ECRYPTO)
        return v; /* our own trouble, not the allow's: it is judged on the next try */
    bool apply = v == 0;
    int64_t balance_after = apply ? st->balance + st->amount : st->balance;
    uint64_t counter_after = apply ? st->counter + 1 : st->counter;

    Quancun__ExecutionReport rep = QUANCUN__EXECUTION_REPORT__INIT;
    rep.txn_id.data = (uint8_t *)st->txn_id; /* pack only reads these */
    rep.txn_id.len = DEVICE_TXN_SIZE;
    rep.device_id = (char *)st->serial;
    rep.account_id = (char *)st->account_id;
    rep.counter_after = counter_after;
    rep.status =
        apply ? QUANCUN__REPORT_STATUS__REPORT_APPLIED : QUANCUN__REPORT_STATUS__REPORT_REJECTED;
    rep.reason = apply ? (char *)"" : (char *)reason;
    rep.balance_after = balance_after;
    rep.allow_digest.data = allow_digest;
    rep.allow_digest.len = sizeof(allow_digest);
    uint8_t *report = NULL;
    size_t report_len = 0;
    /* The certificate travels with the report too, so that a stateless gateway can verify
     * it without looking the device up first. */
    int rc = sign_message(c, PROTO_TYPE_EXECUTION_REPORT, &rep.base, c->cert_der != NULL, &report,
                          &report_len, NULL);
    if (rc != 0)
        return rc;

    /* Credit, counter + 1 and the signed report: one state change (invariant 1). */
    uint64_t counter_before = st->counter;
    device_state_t next = c->st;
    next.balance = balance_after;
    next.counter = counter_after;
    next.report = report;
    next.report_len = report_len;
    next.report_status = (int)rep.status;
    memcpy(next.allow_digest, allow_digest, sizeof(allow_digest));
    next.phase = DEVICE_REPORTED;
    rc = core_commit(c, &next, apply ? "load.applied" : "load.rejected", apply ? NULL : reason);
    if (rc != 0)
        return rc;
    assert(c->st.counter == counter_before + (apply ? 1u : 0u));
    (void)counter_before;
    if (apply)
        ops_fault_point("wallet.after_credit_before_report");
    else
        ops_log(OPS_LOG_WARN, "wallet.allow_rejected", "reason", reason, "code", qc_errname(v),
                NULL);
    *verdict = v;
    return 0;
}

int device_core_accept_outcome(device_core_t *c, const uint8_t *outcome, size_t outcome_len,
                               int *load_state)
{
    assert(c != NULL);
    assert(load_state != NULL);
    assert(outcome != NULL || outcome_len == 0);
    const device_state_t *st = &c->st;
    if (st->phase != DEVICE_REPORTED)
        return QC_ESTATE;
    if (c->outcome.key == NULL)
        return QC_ECONFIG;
    proto_envelope_t *env = NULL;
    int rc = open_bank_envelope(&c->outcome, PROTO_TYPE_LOAD_OUTCOME, outcome, outcome_len, &env);
    if (rc != 0)
        return rc;
    size_t body_len = 0;
    const uint8_t *body = proto_envelope_body(env, &body_len);
    Quancun__LoadOutcome *oc = NULL;
    rc = QC_EDECODE;
    if (body_len > 0 && body_len <= PROTO_BODY_MAX)
        oc = quancun__load_outcome__unpack(NULL, body_len, body);
    if (oc == NULL)
        goto out;
    rc = QC_EMISMATCH;
    if (!bytes_equal(&oc->txn_id, st->txn_id, DEVICE_TXN_SIZE))
        goto out;
    rc = QC_EDEVICEID;
    if (oc->device_id == NULL || strcmp(oc->device_id, st->serial) != 0)
        goto out;
    rc = QC_EBUSY;
    if (oc->state != QUANCUN__LOAD_STATE__LOAD_CONFIRMED &&
        oc->state != QUANCUN__LOAD_STATE__LOAD_COMPENSATED &&
        oc->state != QUANCUN__LOAD_STATE__LOAD_LATE_CONFIRMED)
        goto out;
    bool applied = st->report_status == QUANCUN__REPORT_STATUS__REPORT_APPLIED;
    bool bank_says_applied = oc->state != QUANCUN__LOAD_STATE__LOAD_COMPENSATED;
    if (applied != bank_says_applied) {
        /* The bank's word is final; the operator reconciles. Say so loudly. */
        ops_log(OPS_LOG_WARN, "wallet.outcome_disagrees", "device",
                applied ? "applied" : "rejected", "bank", proto_load_state_name((int)oc->state),
                NULL);
    }
    int state = (int)oc->state;
    char detail[CORE_DETAIL_MAX];
    snprintf(detail, sizeof(detail), "%s%s%s", proto_load_state_name(state),
             oc->reason != NULL && oc->reason[0] != '\0' ? ": " : "",
             oc->reason != NULL ? oc->reason : "");
    /* The log line names the load, so it is built before the load is forgotten. */
    device_state_t next = c->st;
    log_line(&next, DEVICE_IDLE, "load.outcome", detail);
    memcpy(next.last_txn_id, next.txn_id, DEVICE_TXN_SIZE);
    next.last_outcome = state;
    forget_load(&next);
    rc = core_adopt(c, &next, true);
    if (rc == 0)
        *load_state = state;
out:
    if (oc != NULL)
        quancun__load_outcome__free_unpacked(oc, NULL);
    proto_envelope_destroy(&env);
    return rc;
}

int device_core_abandon(device_core_t *c, int server_code, const char *message)
{
    assert(c != NULL);
    if (c->st.phase != DEVICE_PENDING)
        return QC_ESTATE;
    char detail[CORE_DETAIL_MAX];
    snprintf(detail, sizeof(detail), "%s: %s", qc_errname(server_code),
             message != NULL ? message : qc_strerror(server_code));
    uint64_t counter_before = c->st.counter;
    device_state_t next = c->st;
    log_line(&next, DEVICE_IDLE, "load.abandoned", detail);
    forget_load(&next);
    int rc = core_adopt(c, &next, true);
    if (rc != 0)
        return rc;
    assert(c->st.counter == counter_before); /* invariant 6 */
    (void)counter_before;
    return 0;
}

/* ------------------------------------------------------------------ IC card transfers */

int device_core_cert(const device_core_t *c, const uint8_t **der, size_t *der_len)
{
    assert(c != NULL);
    assert(der != NULL);
    assert(der_len != NULL);
    if (c->cert_der == NULL)
        return QC_ECERT;
    *der = c->cert_der;
    *der_len = c->cert_len;
    return 0;
}

int device_core_card_auth(device_core_t *c, const char *card_number,
                          const uint8_t card_challenge[DEVICE_CARD_CHALLENGE_SIZE],
                          const uint8_t host_challenge[DEVICE_CARD_CHALLENGE_SIZE], uint8_t **out,
                          size_t *out_len)
{
    assert(c != NULL);
    assert(card_number != NULL);
    assert(out != NULL);
    assert(out_len != NULL);
    assert(card_challenge != NULL);
    assert(host_challenge != NULL);
    *out = NULL;
    if (c->cert_der == NULL)
        return QC_ECERT;
    if (!device_pki_id_valid(card_number))
        return QC_EINVAL;
    Qccard__CardChallenge ch = QCCARD__CARD_CHALLENGE__INIT;
    ch.signer_id = c->st.serial;
    ch.peer_id = (char *)card_number; /* pack only reads it */
    ch.challenge.data = (uint8_t *)card_challenge;
    ch.challenge.len = DEVICE_CARD_CHALLENGE_SIZE;
    ch.own_challenge.data = (uint8_t *)host_challenge;
    ch.own_challenge.len = DEVICE_CARD_CHALLENGE_SIZE;
    return sign_message(c, PROTO_TYPE_CARD_CHALLENGE, &ch.base, true, out, out_len, NULL);
}

/* The detail of a card log line: which card, which transfer, how much. */
static void card_detail(const device_state_t *st, char out[CORE_DETAIL_MAX])
{
    char hex[2 * DEVICE_TXN_SIZE + 1];
    char amount[DEVICE_AMOUNT_FORMAT_MAX];
    snprintf(out, CORE_DETAIL_MAX, "card %s transfer %s amount %s", st->card_number,
             ops_hex(st->card_xfer_id, DEVICE_TXN_SIZE, hex),
             device_amount_format(st->card_amount, amount, sizeof(amount)));
}

int device_core_card_debit(device_core_t *c, const char *card_number, int64_t amount,
                           const uint8_t session[DEVICE_CARD_CHALLENGE_SIZE], uint8_t **credit,
                           size_t *credit_len)
{
    assert(c != NULL);
    assert(card_number != NULL);
    assert(session != NULL);
    assert(credit != NULL);
    assert(credit_len != NULL);
    const device_state_t *st = &c->st;
    *credit = NULL;
    if (!c->pin_ok)
        return QC_EDENIED;
    if (st->phase != DEVICE_IDLE)
        return QC_EPENDING;
    if (st->card_pending)
        return QC_ECARDPENDING;
    if (amount <= 0)
        return QC_EAMOUNT;
    if (amount > st->balance)
        return QC_EFUNDS;
    if (!device_pki_id_valid(card_number))
        return QC_EINVAL;
    if (c->cert_der == NULL)
        return QC_ECERT;

    uint8_t xfer[DEVICE_TXN_SIZE];
    if (RAND_bytes(xfer, sizeof(xfer)) != 1)
        return QC_ECRYPTO;
    Qccard__CardCredit cc = QCCARD__CARD_CREDIT__INIT;
    cc.transfer_id.data = xfer;
    cc.transfer_id.len = sizeof(xfer);
    cc.device_id = (char *)st->serial; /* pack only reads these */
    cc.card_number = (char *)card_number;
    cc.amount = amount;
    cc.session.data = (uint8_t *)session;
    cc.session.len = DEVICE_CARD_CHALLENGE_SIZE;
    uint8_t *signed_credit = NULL;
    size_t signed_len = 0;
    int rc =
        sign_message(c, PROTO_TYPE_CARD_CREDIT, &cc.base, false, &signed_credit, &signed_len, NULL);
    if (rc != 0)
        return rc;

    /* The debit and the record of the pending transfer: one state change (invariant 9). */
    int64_t balance_before = st->balance;
    device_state_t next = c->st;
    next.balance -= amount;
    next.card_pending = true;
    memcpy(next.card_xfer_id, xfer, sizeof(xfer));
    next.card_amount = amount;
    memcpy(next.card_number, card_number, strlen(card_number) + 1);
    char detail[CORE_DETAIL_MAX];
    card_detail(&next, detail);
    rc = core_commit(c, &next, "card.debited", detail);
    if (rc != 0) {
        free(signed_credit);
        return rc;
    }
    assert(c->st.balance == balance_before - amount);
    (void)balance_before;
    ops_fault_point("wallet.after_card_debit");
    *credit = signed_credit;
    *credit_len = signed_len;
    return 0;
}

/* Checks a verified receipt body against the pending transfer. */
static int check_receipt(const device_state_t *st, const Qccard__CardReceipt *r,
                         const uint8_t host_challenge[DEVICE_CARD_CHALLENGE_SIZE])
{
    if (!bytes_equal(&r->transfer_id, st->card_xfer_id, DEVICE_TXN_SIZE))
        return QC_EMISMATCH;
    if (r->card_number == NULL || strcmp(r->card_number, st->card_number) != 0)
        return QC_EMISMATCH;
    if (r->status == QCCARD__RECEIPT_STATUS__RECEIPT_CREDITED) {
        if (r->device_id == NULL || strcmp(r->device_id, st->serial) != 0 ||
            r->amount != st->card_amount)
            return QC_EMISMATCH;
        return 0;
    }
    if (r->status != QCCARD__RECEIPT_STATUS__RECEIPT_NOT_CREDITED)
        return QC_EDECODE;
    /* A "never credited" is only true now: it must answer this session's challenge. */
    if (!bytes_equal(&r->session, host_challenge, DEVICE_CARD_CHALLENGE_SIZE))
        return QC_EREPLAY;
    return 0;
}

int device_core_card_settle(device_core_t *c, EVP_PKEY *card_key,
                            const uint8_t host_challenge[DEVICE_CARD_CHALLENGE_SIZE],
                            const uint8_t *receipt, size_t receipt_len,
                            device_card_result_t *result)
{
    assert(c != NULL);
    assert(card_key != NULL);
    assert(host_challenge != NULL);
    assert(result != NULL);
    assert(receipt != NULL || receipt_len == 0);
    if (!c->st.card_pending)
        return QC_ESTATE;
    if (receipt_len > PROTO_ENVELOPE_MAX)
        return QC_ETOOBIG;
    proto_envelope_t *env = NULL;
    Qccard__CardReceipt *r = NULL;
    int rc = proto_envelope_open(receipt, receipt_len, &env);
    if (rc == 0)
        rc = proto_envelope_verify(env, PROTO_TYPE_CARD_RECEIPT, card_key);
    if (rc != 0)
        goto out;
    size_t body_len = 0;
    const uint8_t *body = proto_envelope_body(env, &body_len);
    rc = QC_EDECODE;
    if (body_len > 0 && body_len <= PROTO_BODY_MAX)
        r = qccard__card_receipt__unpack(NULL, body_len, body);
    if (r == NULL)
        goto out;
    rc = check_receipt(&c->st, r, host_challenge);
    if (rc != 0)
        goto out;
    bool credited = r->status == QCCARD__RECEIPT_STATUS__RECEIPT_CREDITED;
    char detail[CORE_DETAIL_MAX];
    card_detail(&c->st, detail);
    /* Killed here, the card has its proof and the next contact settles from it. */
    ops_fault_point("wallet.after_card_receipt");
    device_state_t next = c->st;
    if (!credited)
        next.balance += next.card_amount; /* the card proved it never had it */
    next.card_pending = false;
    memset(next.card_xfer_id, 0, sizeof(next.card_xfer_id));
    next.card_amount = 0;
    memset(next.card_number, 0, sizeof(next.card_number));
    rc = core_commit(c, &next, credited ? "card.completed" : "card.refunded", detail);
    if (rc != 0)
        goto out;
    *result = credited ? DEVICE_CARD_COMPLETED : DEVICE_CARD_REFUNDED;
out:
    if (r != NULL)
        qccard__card_receipt__free_unpacked(r, NULL);
    proto_envelope_destroy(&env);
    return rc;
}
