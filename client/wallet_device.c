/* wallet_device.c - the device state machine of the load protocol, its keys and its PIN.
 *
 * Invariants (asserted in wallet_device_check_invariants() after every transition):
 *   1. counter is the number of allows this device has applied. It changes only in
 *      wallet_device_judge_allow(), by exactly +1, in the same atomic state write as the
 *      credit of exactly the pending amount and the signed APPLIED report.
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
 *   8. Every change is one atomic write of the state file carrying its log line
 *      (device_commit()); in memory the state never runs ahead of the disk.
 *   9. A card transfer is pending only in IDLE, and a load request is only signed with no
 *      card transfer pending; the debit of a card transfer and its pending record are one
 *      atomic write (wallet_device_card_debit()), and only the card's signed receipt ends
 *      it: CREDITED completes, a fresh NOT_CREDITED refunds (wallet_device_card_settle()).
 *
 *              wallet_device_request()              wallet_device_judge_allow()
 *      IDLE --------------------------> PENDING(txn, c) -----------------------> REPORTED
 *       ^  ^                                |          APPLIED: credit, c+1      |
 *       |  |     wallet_device_abandon()    |          REJECTED: nothing moves   |
 *       |  +--------------------------------+                                    |
 *       |                                                                        |
 *       +------------------ wallet_device_accept_outcome() ----------------------+
 */
#include "wallet_device.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "ops_fault.h"
#include "ops_log.h"
#include "ops_time.h"
#include "proto_cert.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "qc_error.h"
#include "card.pb-c.h"
#include "quancun.pb-c.h"
#include "wallet_amount.h"

#define DEVICE_GROUP_NAME "P-256"
#define DEVICE_GROUP_NAME_MAX 64
#define DEVICE_NONCE_SIZE 16
#define DEVICE_TIME_TEXT_MAX 64
#define DEVICE_DETAIL_MAX 256 /* bytes of a reason or server message kept in the log */
#define DEVICE_PUBLIC_MODE 0644
#define DEVICE_SECRET_MODE 0600
#define DEVICE_BANK_KEYS 2 /* allow-signing, outcome-signing */

/* The device's limits are the wire's. */
_Static_assert(WALLET_SERIAL_MAX == PROTO_DEVICE_ID_MAX, "serial = device id");
_Static_assert(WALLET_ACCOUNT_MAX == PROTO_ACCOUNT_ID_MAX, "account id");
_Static_assert(WALLET_TXN_SIZE == PROTO_TXN_ID_SIZE, "txn id");
_Static_assert(WALLET_DIGEST_SIZE == PROTO_DIGEST_SIZE, "digest");
_Static_assert(WALLET_BLOB_MAX == PROTO_ENVELOPE_MAX, "a stored envelope");

typedef struct bank_key {
    EVP_PKEY *key;
    X509 *cert; /* NULL when installed as a bare public key */
} bank_key_t;

struct wallet_device {
    char home[WALLET_PATH_MAX];
    int lock_fd;
    wallet_state_t st;
    EVP_PKEY *key;
    uint8_t *cert_der; /* NULL until install-cert */
    size_t cert_len;
    bank_key_t bank[DEVICE_BANK_KEYS]; /* [0] allow, [1] outcome */
    bool pin_ok;
};

enum { BANK_ALLOW = 0, BANK_OUTCOME = 1 };

/* ------------------------------------------------------------------ invariants */

static void wallet_device_check_invariants(const wallet_device_t *dev)
{
    const wallet_state_t *st = &dev->st;
    assert(st->serial[0] != '\0');
    assert(st->pin.tries_left <= WALLET_PIN_TRIES);
    assert(!st->card_pending || (st->phase == WALLET_IDLE && st->card_amount > 0)); /* 9 */
    switch (st->phase) {
    case WALLET_IDLE:
        assert(st->request == NULL && st->report == NULL); /* 2 */
        break;
    case WALLET_PENDING:
        assert(st->request != NULL && st->report == NULL); /* 3 */
        assert(st->amount > 0);
        break;
    case WALLET_REPORTED:
        assert(st->request != NULL && st->report != NULL); /* 4 */
        assert(st->report_status == QUANCUN__REPORT_STATUS__REPORT_APPLIED ||
               st->report_status == QUANCUN__REPORT_STATUS__REPORT_REJECTED);
        break;
    default:
        assert(!"unknown phase");
    }
    (void)st;
}

/* ------------------------------------------------------------------ small helpers */

const char *wallet_phase_name(wallet_phase_t phase)
{
    switch (phase) {
    case WALLET_IDLE:
        return "IDLE";
    case WALLET_PENDING:
        return "PENDING";
    case WALLET_REPORTED:
        return "REPORTED";
    }
    return "UNKNOWN";
}

const char *wallet_device_serial(const wallet_device_t *dev)
{
    assert(dev != NULL);
    return dev->st.serial;
}

static bool serial_ok(const char *s)
{
    size_t n = strnlen(s, WALLET_SERIAL_MAX + 1);
    if (n == 0 || n > WALLET_SERIAL_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_';
        if (!ok)
            return false;
    }
    return true;
}

bool wallet_account_valid(const char *s)
{
    assert(s != NULL);
    size_t n = strnlen(s, WALLET_ACCOUNT_MAX + 1);
    if (n == 0 || n > WALLET_ACCOUNT_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c >= 0x7f || c == '"' || c == '\\')
            return false;
    }
    return true;
}

static bool key_is_p256(EVP_PKEY *key)
{
    char group[DEVICE_GROUP_NAME_MAX];
    size_t len = 0;
    if (key == NULL || !EVP_PKEY_is_a(key, "EC"))
        return false;
    if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                       &len) != 1)
        return false;
    return strcmp(group, "prime256v1") == 0 || strcmp(group, DEVICE_GROUP_NAME) == 0;
}

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

static void time_text(uint64_t ms, char out[DEVICE_TIME_TEXT_MAX])
{
    time_t secs = (time_t)(ms / 1000u);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(out, DEVICE_TIME_TEXT_MAX, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(ms % 1000u));
}

/* Builds the log line of a transition into st->log_pending, numbered st->log_seq + 1. The
 * load fields are taken from st, so a transition that ends a load builds its line first and
 * names the phase it goes to in phase_after. */
static void log_line(wallet_state_t *st, wallet_phase_t phase_after, const char *event,
                     const char *detail)
{
    char when[DEVICE_TIME_TEXT_MAX];
    char txn[2 * WALLET_TXN_SIZE + 1] = "";
    char amount[WALLET_AMOUNT_FORMAT_MAX];
    char balance[WALLET_AMOUNT_FORMAT_MAX];
    char *out = st->log_pending;
    size_t cap = sizeof(st->log_pending);
    time_text(ops_time_wall_ms(), when);
    if (st->phase != WALLET_IDLE)
        ops_hex(st->txn_id, WALLET_TXN_SIZE, txn);
    int n = snprintf(out, cap,
                     "{\"seq\":%" PRIu64 ",\"time\":\"%s\",\"event\":\"%s\",\"state\":\"%s\","
                     "\"balance\":\"%s\",\"counter\":%" PRIu64,
                     st->log_seq + 1, when, event, wallet_phase_name(phase_after),
                     wallet_amount_format(st->balance, balance, sizeof(balance)), st->counter);
    assert(n > 0 && (size_t)n < cap);
    size_t pos = (size_t)n;
    if (st->phase != WALLET_IDLE) {
        n = snprintf(out + pos, cap - pos,
                     ",\"txn\":\"%s\",\"account\":\"%s\",\"amount\":\"%s\",\"currency\":%" PRIu32,
                     txn, st->account_id, wallet_amount_format(st->amount, amount, sizeof(amount)),
                     st->currency);
        assert(n > 0 && (size_t)n < cap - pos);
        pos += (size_t)n;
    }
    if (detail != NULL && pos + sizeof(",\"detail\":\"\"}") < cap) {
        char clipped[DEVICE_DETAIL_MAX + 1];
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

/* Reloads the state from disk after a failed write, so memory never runs ahead of it. */
static void device_restore(wallet_device_t *dev)
{
    wallet_state_clear(&dev->st);
    int rc = wallet_state_load(dev->home, &dev->st);
    /* The previous state was on disk a moment ago; losing it now is not recoverable here. */
    assert(rc == 0);
    (void)rc;
}

/* Writes dev->st atomically and, when has_line, then appends st->log_pending (the line
 * log_line() numbered st->log_seq) to the log. On failure the previous state is restored
 * in memory. */
static int device_write(wallet_device_t *dev, bool has_line)
{
    int rc = wallet_state_save(dev->home, &dev->st);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "wallet.state_write_failed", "error", qc_strerror(rc), NULL);
        device_restore(dev);
        return rc;
    }
    wallet_device_check_invariants(dev);
    if (has_line) {
        /* The state is durable; a lost log line is rewritten by the next open. */
        int lrc = wallet_oplog_append(dev->home, dev->st.log_pending);
        if (lrc != 0)
            ops_log(OPS_LOG_WARN, "wallet.oplog_append_failed", "error", qc_strerror(lrc), NULL);
    }
    return 0;
}

/* Commits the transition already made in dev->st, logged as event (none when NULL). */
static int device_commit(wallet_device_t *dev, const char *event, const char *detail)
{
    if (event != NULL)
        log_line(&dev->st, dev->st.phase, event, detail);
    return device_write(dev, event != NULL);
}

/* Clears the load in progress (back to IDLE fields). */
static void clear_load(wallet_state_t *st)
{
    free(st->request);
    free(st->report);
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
    st->phase = WALLET_IDLE;
}

/* ------------------------------------------------------------------ PEM files */

static int pem_to_bio(const char *home, const char *name, BIO **out)
{
    uint8_t *text = NULL;
    size_t len = 0;
    int rc = wallet_store_read(home, name, WALLET_FILE_MAX, &text, &len);
    if (rc != 0)
        return rc;
    BIO *bio = BIO_new(BIO_s_mem());
    if (bio == NULL || BIO_write(bio, text, (int)len) != (int)len) {
        BIO_free(bio);
        OPENSSL_cleanse(text, len);
        free(text);
        return QC_ENOMEM;
    }
    OPENSSL_cleanse(text, len);
    free(text);
    *out = bio;
    return 0;
}

/* Writes the contents of a memory BIO to HOME/name atomically. */
static int bio_to_file(const char *home, const char *name, BIO *bio, mode_t mode)
{
    char *data = NULL;
    long len = BIO_get_mem_data(bio, &data);
    if (len <= 0 || data == NULL)
        return QC_ECRYPTO;
    return wallet_store_write(home, name, (const uint8_t *)data, (size_t)len, mode);
}

/* Reads the next PEM block of bio as a bank key: a certificate or a public key on P-256. */
static int read_bank_block(BIO *bio, bank_key_t *out)
{
    char *name = NULL, *header = NULL;
    unsigned char *data = NULL;
    long len = 0;
    if (PEM_read_bio(bio, &name, &header, &data, &len) != 1)
        return QC_ECERT;
    int rc = QC_ECERT;
    const unsigned char *p = data;
    if (strcmp(name, PEM_STRING_X509) == 0) {
        out->cert = d2i_X509(NULL, &p, len);
        if (out->cert != NULL && p == data + len)
            out->key = X509_get_pubkey(out->cert);
    } else if (strcmp(name, PEM_STRING_PUBLIC) == 0) {
        out->key = d2i_PUBKEY(NULL, &p, len);
        if (p != data + len) {
            EVP_PKEY_free(out->key);
            out->key = NULL;
        }
    }
    if (out->key != NULL && key_is_p256(out->key))
        rc = 0;
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(data);
    if (rc != 0) {
        EVP_PKEY_free(out->key);
        X509_free(out->cert);
        out->key = NULL;
        out->cert = NULL;
    }
    return rc;
}

static void bank_free(wallet_device_t *dev)
{
    for (int i = 0; i < DEVICE_BANK_KEYS; i++) {
        EVP_PKEY_free(dev->bank[i].key);
        X509_free(dev->bank[i].cert);
        dev->bank[i].key = NULL;
        dev->bank[i].cert = NULL;
    }
}

static int load_bank(wallet_device_t *dev)
{
    BIO *bio = NULL;
    int rc = pem_to_bio(dev->home, WALLET_BANK_FILE, &bio);
    if (rc == QC_ENOTFOUND)
        return 0; /* not installed yet */
    if (rc != 0)
        return rc;
    rc = read_bank_block(bio, &dev->bank[BANK_ALLOW]);
    if (rc == 0)
        rc = read_bank_block(bio, &dev->bank[BANK_OUTCOME]);
    BIO_free(bio);
    if (rc != 0)
        bank_free(dev);
    return rc;
}

int wallet_pki_load_key(const char *home, const char *name, EVP_PKEY **out)
{
    assert(home != NULL && name != NULL && out != NULL);
    BIO *bio = NULL;
    *out = NULL;
    int rc = pem_to_bio(home, name, &bio);
    if (rc != 0)
        return rc == QC_ENOTFOUND ? QC_EIO : rc;
    EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (key == NULL || !key_is_p256(key)) {
        EVP_PKEY_free(key);
        return QC_ECRYPTO;
    }
    *out = key;
    return 0;
}

static int load_key(wallet_device_t *dev)
{
    return wallet_pki_load_key(dev->home, WALLET_KEY_FILE, &dev->key);
}

/* Checks that cert belongs to the holder of key named cn: its key and its commonName. */
static int cert_matches(X509 *cert, EVP_PKEY *key, const char *cn_want)
{
    EVP_PKEY *pub = X509_get0_pubkey(cert);
    if (pub == NULL || EVP_PKEY_eq(pub, key) != 1)
        return QC_ECERT;
    char cn[WALLET_SERIAL_MAX + 2];
    int n =
        X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, (int)sizeof(cn));
    if (n <= 0 || n > WALLET_SERIAL_MAX || strcmp(cn, cn_want) != 0)
        return QC_ECERT;
    return 0;
}

int wallet_pki_load_cert(const char *home, const char *name, EVP_PKEY *key, const char *cn,
                         uint8_t **der_out, size_t *der_len_out)
{
    assert(home != NULL && name != NULL && key != NULL && cn != NULL);
    assert(der_out != NULL && der_len_out != NULL);
    *der_out = NULL;
    *der_len_out = 0;
    BIO *bio = NULL;
    int rc = pem_to_bio(home, name, &bio);
    if (rc == QC_ENOTFOUND)
        return 0; /* not enrolled yet */
    if (rc != 0)
        return rc;
    X509 *cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (cert == NULL)
        return QC_ECERT;
    rc = cert_matches(cert, key, cn);
    unsigned char *der = NULL;
    int der_len = rc == 0 ? i2d_X509(cert, &der) : 0;
    X509_free(cert);
    if (rc != 0)
        return rc;
    if (der_len <= 0 || (size_t)der_len > PROTO_CERT_MAX) {
        OPENSSL_free(der);
        return QC_ECERT;
    }
    uint8_t *copy = malloc((size_t)der_len);
    if (copy == NULL) {
        OPENSSL_free(der);
        return QC_ENOMEM;
    }
    memcpy(copy, der, (size_t)der_len);
    OPENSSL_free(der);
    *der_out = copy;
    *der_len_out = (size_t)der_len;
    return 0;
}

static int load_cert(wallet_device_t *dev)
{
    return wallet_pki_load_cert(dev->home, WALLET_CERT_FILE, dev->key, dev->st.serial,
                                &dev->cert_der, &dev->cert_len);
}

/* ------------------------------------------------------------------ init, open, destroy */

static int write_key_and_csr(const char *home, const char *key_file, const char *csr_file,
                             const char *serial, EVP_PKEY *key)
{
    assert(home != NULL && key_file != NULL && csr_file != NULL && serial != NULL);
    assert(key != NULL);
    int rc = QC_ECRYPTO;
    BIO *kbio = BIO_new(BIO_s_mem());
    BIO *cbio = BIO_new(BIO_s_mem());
    X509_REQ *req = X509_REQ_new();
    X509_NAME *name = X509_NAME_new();
    if (kbio == NULL || cbio == NULL || req == NULL || name == NULL) {
        rc = QC_ENOMEM;
        goto out;
    }
    if (PEM_write_bio_PrivateKey(kbio, key, NULL, NULL, 0, NULL, NULL) != 1)
        goto out;
    if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)serial, -1, -1,
                                   0) != 1)
        goto out;
    if (X509_REQ_set_version(req, 0) != 1 || X509_REQ_set_subject_name(req, name) != 1 ||
        X509_REQ_set_pubkey(req, key) != 1 || X509_REQ_sign(req, key, EVP_sha256()) <= 0)
        goto out;
    if (PEM_write_bio_X509_REQ(cbio, req) != 1)
        goto out;
    rc = bio_to_file(home, key_file, kbio, DEVICE_SECRET_MODE);
    if (rc == 0)
        rc = bio_to_file(home, csr_file, cbio, DEVICE_PUBLIC_MODE);
out:
    if (kbio != NULL) {
        char *data = NULL;
        long len = BIO_get_mem_data(kbio, &data);
        if (len > 0 && data != NULL)
            OPENSSL_cleanse(data, (size_t)len);
    }
    BIO_free(kbio);
    BIO_free(cbio);
    X509_REQ_free(req);
    X509_NAME_free(name);
    return rc;
}

int wallet_pki_create_key(const char *home, const char *key_file, const char *csr_file,
                          const char *cn, EVP_PKEY **key)
{
    assert(home != NULL && cn != NULL && key != NULL);
    *key = EVP_EC_gen(DEVICE_GROUP_NAME);
    if (*key == NULL)
        return QC_ECRYPTO;
    int rc = write_key_and_csr(home, key_file, csr_file, cn, *key);
    if (rc != 0) {
        EVP_PKEY_free(*key);
        *key = NULL;
    }
    return rc;
}

int wallet_device_init(const char *home, const char *serial, const char *pin, size_t pin_len)
{
    assert(home != NULL);
    assert(pin != NULL || pin_len == 0);
    char made[WALLET_SERIAL_MAX + 1];
    if (serial == NULL) {
        uint8_t rnd[WALLET_SERIAL_RANDOM_BYTES];
        char hex[2 * WALLET_SERIAL_RANDOM_BYTES + 1];
        if (RAND_bytes(rnd, sizeof(rnd)) != 1)
            return QC_ECRYPTO;
        ops_hex(rnd, sizeof(rnd), hex);
        for (char *p = hex; *p != '\0'; p++)
            *p = (char)(*p >= 'a' ? *p - 'a' + 'A' : *p);
        snprintf(made, sizeof(made), "%s%s", WALLET_SERIAL_PREFIX, hex);
        serial = made;
    }
    if (!serial_ok(serial) || wallet_pin_valid(pin, pin_len) != 0)
        return QC_EINVAL;

    wallet_device_t *dev = calloc(1, sizeof(*dev));
    if (dev == NULL)
        return QC_ENOMEM;
    dev->lock_fd = -1;
    int rc = QC_EINVAL;
    if (strlen(home) >= sizeof(dev->home))
        goto out;
    memcpy(dev->home, home, strlen(home) + 1);
    rc = wallet_store_claim(home, WALLET_STATE_FILE, true, &dev->lock_fd);
    if (rc == 0)
        rc = wallet_pki_create_key(home, WALLET_KEY_FILE, WALLET_CSR_FILE, serial, &dev->key);
    if (rc != 0)
        goto out;
    memcpy(dev->st.serial, serial, strlen(serial) + 1);
    rc = wallet_pin_set(&dev->st.pin, pin, pin_len);
    if (rc != 0)
        goto out;
    /* The state file is written last: its presence is what makes the device exist. */
    char detail[WALLET_SERIAL_MAX + 16];
    snprintf(detail, sizeof(detail), "serial %s", serial);
    rc = wallet_state_save(home, &dev->st); /* so that device_commit() can restore */
    if (rc == 0)
        rc = device_commit(dev, "device.created", detail);
out:
    wallet_device_destroy(&dev);
    return rc;
}

int wallet_device_open(const char *home, wallet_device_t **out)
{
    assert(home != NULL && out != NULL);
    *out = NULL;
    wallet_device_t *dev = calloc(1, sizeof(*dev));
    if (dev == NULL)
        return QC_ENOMEM;
    dev->lock_fd = -1;
    int rc = QC_EINVAL;
    if (strlen(home) >= sizeof(dev->home))
        goto err;
    memcpy(dev->home, home, strlen(home) + 1);
    rc = wallet_store_claim(home, WALLET_STATE_FILE, false, &dev->lock_fd);
    if (rc != 0)
        goto err;
    rc = wallet_state_load(home, &dev->st);
    if (rc != 0)
        goto err;
    int lrc = wallet_oplog_recover(home, &dev->st);
    if (lrc != 0) /* the state file is authoritative; a damaged log does not stop the device */
        ops_log(OPS_LOG_WARN, "wallet.oplog_inconsistent", "error", qc_strerror(lrc), NULL);
    rc = load_key(dev);
    if (rc == 0)
        rc = load_cert(dev);
    if (rc == 0)
        rc = load_bank(dev);
    if (rc != 0)
        goto err;
    wallet_device_check_invariants(dev);
    *out = dev;
    return 0;
err:
    wallet_device_destroy(&dev);
    return rc;
}

void wallet_device_destroy(wallet_device_t **dev_p)
{
    if (dev_p == NULL || *dev_p == NULL)
        return;
    wallet_device_t *dev = *dev_p;
    wallet_state_clear(&dev->st);
    EVP_PKEY_free(dev->key); /* OpenSSL wipes the private key as it frees it */
    bank_free(dev);
    free(dev->cert_der);
    if (dev->lock_fd >= 0)
        close(dev->lock_fd);
    OPENSSL_cleanse(dev, sizeof(*dev));
    free(dev);
    *dev_p = NULL;
}

/* ------------------------------------------------------------------ enrollment */

int wallet_pki_install_cert(const char *home, const char *name, const char *cert_path,
                            EVP_PKEY *key, const char *cn)
{
    assert(home != NULL && name != NULL && cert_path != NULL && key != NULL && cn != NULL);
    BIO *in = BIO_new_file(cert_path, "r");
    if (in == NULL)
        return QC_EIO;
    X509 *cert = PEM_read_bio_X509(in, NULL, NULL, NULL);
    BIO_free(in);
    if (cert == NULL)
        return QC_ECERT;
    int rc = cert_matches(cert, key, cn);
    BIO *out = rc == 0 ? BIO_new(BIO_s_mem()) : NULL;
    if (rc == 0 && (out == NULL || PEM_write_bio_X509(out, cert) != 1))
        rc = QC_ECRYPTO;
    if (rc == 0)
        rc = bio_to_file(home, name, out, DEVICE_PUBLIC_MODE);
    BIO_free(out);
    X509_free(cert);
    return rc;
}

int wallet_device_install_cert(wallet_device_t *dev, const char *cert_path)
{
    assert(dev != NULL && cert_path != NULL);
    int rc =
        wallet_pki_install_cert(dev->home, WALLET_CERT_FILE, cert_path, dev->key, dev->st.serial);
    if (rc != 0)
        return rc;
    free(dev->cert_der);
    dev->cert_der = NULL;
    dev->cert_len = 0;
    return load_cert(dev);
}

/* Reads one bank key file and appends it, re-encoded, to out under a label. */
static int bank_append(const char *path, const char *label, BIO *out)
{
    BIO *in = BIO_new_file(path, "r");
    if (in == NULL)
        return QC_EIO;
    bank_key_t k = {0};
    int rc = read_bank_block(in, &k);
    BIO_free(in);
    if (rc != 0)
        return rc;
    if (BIO_printf(out, "# %s\n", label) <= 0)
        rc = QC_ENOMEM;
    else if (k.cert != NULL ? PEM_write_bio_X509(out, k.cert) != 1
                            : PEM_write_bio_PUBKEY(out, k.key) != 1)
        rc = QC_ECRYPTO;
    EVP_PKEY_free(k.key);
    X509_free(k.cert);
    return rc;
}

int wallet_device_install_bank(wallet_device_t *dev, const char *allow_path,
                               const char *outcome_path)
{
    assert(dev != NULL && allow_path != NULL && outcome_path != NULL);
    BIO *out = BIO_new(BIO_s_mem());
    if (out == NULL)
        return QC_ENOMEM;
    /* Order matters: load_bank() reads the allow key first, then the outcome key. */
    int rc = bank_append(allow_path, "bank allow-signing key", out);
    if (rc == 0)
        rc = bank_append(outcome_path, "bank outcome-signing key", out);
    if (rc == 0)
        rc = bio_to_file(dev->home, WALLET_BANK_FILE, out, DEVICE_PUBLIC_MODE);
    BIO_free(out);
    if (rc != 0)
        return rc;
    bank_free(dev);
    return load_bank(dev);
}

void wallet_device_status(const wallet_device_t *dev, wallet_status_t *out)
{
    assert(dev != NULL && out != NULL);
    const wallet_state_t *st = &dev->st;
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
    out->has_cert = dev->cert_der != NULL;
    out->has_bank = dev->bank[BANK_ALLOW].key != NULL && dev->bank[BANK_OUTCOME].key != NULL;
    out->card_pending = st->card_pending;
    memcpy(out->card_xfer_id, st->card_xfer_id, sizeof(out->card_xfer_id));
    out->card_amount = st->card_amount;
    memcpy(out->card_number, st->card_number, sizeof(out->card_number));
}

/* ------------------------------------------------------------------ PIN */

int wallet_device_verify_pin(wallet_device_t *dev, const char *pin, size_t pin_len)
{
    assert(dev != NULL);
    assert(pin != NULL || pin_len == 0);
    dev->pin_ok = false;
    if (dev->st.pin.tries_left == 0)
        return QC_ELOCKED;
    /* Count the try on disk first, then compare. */
    wallet_pin_t before = dev->st.pin;
    dev->st.pin.tries_left--;
    int rc = device_commit(dev, NULL, NULL);
    if (rc != 0) {
        OPENSSL_cleanse(&before, sizeof(before));
        return rc;
    }
    int verdict = wallet_pin_check(&before, pin, pin_len);
    if (verdict == QC_ECRYPTO) {
        OPENSSL_cleanse(&before, sizeof(before));
        return verdict; /* the try stays counted: failing closed */
    }
    dev->st.pin = before;
    OPENSSL_cleanse(&before, sizeof(before));
    const char *event = verdict == 0 ? NULL : verdict == QC_ELOCKED ? "pin.locked" : "pin.wrong";
    rc = device_commit(dev, event, NULL);
    if (rc != 0)
        return rc;
    dev->pin_ok = verdict == 0;
    return verdict;
}

int wallet_device_admin_reset(wallet_device_t *dev)
{
    assert(dev != NULL);
    wallet_pin_admin_reset(&dev->st.pin);
    return device_commit(dev, "pin.admin_reset", NULL);
}

/* ------------------------------------------------------------------ signing */

/* Packs msg and signs it as type with the device key (and certificate when given). */
static int sign_message(wallet_device_t *dev, proto_type_t type, const ProtobufCMessage *msg,
                        bool with_cert, uint8_t **out, size_t *out_len,
                        uint8_t body_digest[PROTO_DIGEST_SIZE])
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    if (len == 0 || len > PROTO_BODY_MAX)
        return QC_EINVAL;
    uint8_t *body = malloc(len);
    if (body == NULL)
        return QC_ENOMEM;
    size_t packed = protobuf_c_message_pack(msg, body);
    assert(packed == len);
    int rc = 0;
    if (body_digest != NULL)
        rc = proto_sha256(body, len, body_digest);
    if (rc == 0)
        rc = proto_envelope_sign(type, body, len, dev->key, WALLET_KEY_VERSION,
                                 with_cert ? dev->cert_der : NULL, with_cert ? dev->cert_len : 0,
                                 out, out_len);
    free(body);
    return rc;
}

int wallet_device_request(wallet_device_t *dev, const char *account_id, int64_t amount,
                          uint32_t currency, const uint8_t **request, size_t *request_len)
{
    assert(dev != NULL && account_id != NULL);
    assert(request != NULL && request_len != NULL);
    wallet_state_t *st = &dev->st;
    if (!dev->pin_ok)
        return QC_EDENIED;
    if (st->phase != WALLET_IDLE)
        return QC_EPENDING;
    if (st->card_pending)
        return QC_ECARDPENDING; /* invariant 9 */
    if (dev->cert_der == NULL)
        return QC_ECERT;
    if (dev->bank[BANK_ALLOW].key == NULL || dev->bank[BANK_OUTCOME].key == NULL)
        return QC_ECONFIG;
    if (amount <= 0)
        return QC_EAMOUNT;
    if (!wallet_account_valid(account_id) || currency == 0 || currency > WALLET_CURRENCY_MAX)
        return QC_EINVAL;

    uint8_t txn[WALLET_TXN_SIZE];
    uint8_t nonce[DEVICE_NONCE_SIZE];
    if (RAND_bytes(txn, sizeof(txn)) != 1 || RAND_bytes(nonce, sizeof(nonce)) != 1)
        return QC_ECRYPTO;
    Quancun__LoadRequest req = QUANCUN__LOAD_REQUEST__INIT;
    req.txn_id.data = txn;
    req.txn_id.len = sizeof(txn);
    req.device_id = st->serial;
    req.account_id = (char *)account_id; /* pack only reads it */
    req.amount = amount;
    req.currency = currency;
    req.balance_before = st->balance;
    req.counter = st->counter;
    req.key_version = WALLET_KEY_VERSION;
    req.alg = QUANCUN__ALG__ALG_ECDSA_P256_SHA256;
    req.nonce.data = nonce;
    req.nonce.len = sizeof(nonce);
    req.device_time_ms = ops_time_wall_ms();

    uint8_t *signed_req = NULL;
    size_t signed_len = 0;
    uint8_t digest[WALLET_DIGEST_SIZE];
    int rc = sign_message(dev, PROTO_TYPE_LOAD_REQUEST, &req.base, true, &signed_req, &signed_len,
                          digest);
    if (rc != 0)
        return rc;

    /* Every field of the transition is set, then one atomic write makes it real. */
    st->request = signed_req;
    st->request_len = signed_len;
    memcpy(st->txn_id, txn, sizeof(txn));
    memcpy(st->account_id, account_id, strlen(account_id) + 1);
    st->amount = amount;
    st->currency = currency;
    memcpy(st->request_digest, digest, sizeof(digest));
    st->phase = WALLET_PENDING;
    rc = device_commit(dev, "load.requested", NULL);
    if (rc != 0)
        return rc;
    ops_fault_point("wallet.after_request_signed");
    *request = st->request;
    *request_len = st->request_len;
    return 0;
}

int wallet_device_pending_request(const wallet_device_t *dev, const uint8_t **request,
                                  size_t *request_len)
{
    assert(dev != NULL && request != NULL && request_len != NULL);
    if (dev->st.phase == WALLET_IDLE)
        return QC_ESTATE;
    *request = dev->st.request;
    *request_len = dev->st.request_len;
    return 0;
}

int wallet_device_report(const wallet_device_t *dev, const uint8_t **report, size_t *report_len)
{
    assert(dev != NULL && report != NULL && report_len != NULL);
    if (dev->st.phase != WALLET_REPORTED)
        return QC_ESTATE;
    *report = dev->st.report;
    *report_len = dev->st.report_len;
    return 0;
}

/* ------------------------------------------------------------------ verification */

/* Refuses a bank key whose certificate is not valid at the device's time. */
static int bank_cert_current(const bank_key_t *bk)
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
static int open_bank_envelope(const bank_key_t *bk, proto_type_t type, const uint8_t *bytes,
                              size_t len, proto_envelope_t **env_out)
{
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

/* Judges an allow against the pending load. Returns 0 when it may be applied, or the
 * refusal code with *reason set; *allow_digest is always set (SHA-256 of the body, or of the
 * raw bytes when no envelope could be parsed). */
static int check_allow(const wallet_device_t *dev, const uint8_t *bytes, size_t len,
                       uint8_t allow_digest[WALLET_DIGEST_SIZE], const char **reason)
{
    const wallet_state_t *st = &dev->st;
    proto_envelope_t *env = NULL;
    Quancun__LoadAllow *allow = NULL;
    size_t body_len = 0;
    const uint8_t *body = NULL;

    int rc = proto_sha256(bytes, len, allow_digest);
    if (rc != 0) {
        *reason = "allow digest failed";
        return rc;
    }
    rc = open_bank_envelope(&dev->bank[BANK_ALLOW], PROTO_TYPE_LOAD_ALLOW, bytes, len, &env);
    if (env == NULL && rc != 0) {
        /* The envelope may have parsed: report the digest of its body if so. */
        proto_envelope_t *raw = NULL;
        if (len <= PROTO_ENVELOPE_MAX && proto_envelope_open(bytes, len, &raw) == 0) {
            body = proto_envelope_body(raw, &body_len);
            if (proto_sha256(body, body_len, allow_digest) != 0)
                memset(allow_digest, 0, WALLET_DIGEST_SIZE);
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

    /* Business checks, each with the reason the report will carry. */
    rc = QC_EMISMATCH;
    if (!bytes_equal(&allow->txn_id, st->txn_id, WALLET_TXN_SIZE)) {
        *reason = "allow names another transaction";
        goto out;
    }
    if (allow->device_id == NULL || strcmp(allow->device_id, st->serial) != 0) {
        rc = QC_EDEVICEID;
        *reason = "allow names another device";
        goto out;
    }
    if (allow->counter != st->counter) {
        rc = QC_ESTALE;
        *reason = "allow names another counter";
        goto out;
    }
    if (allow->amount != st->amount || allow->currency != st->currency) {
        *reason = "allow amount or currency differs from the request";
        goto out;
    }
    if (allow->account_id == NULL || strcmp(allow->account_id, st->account_id) != 0) {
        *reason = "allow names another account";
        goto out;
    }
    if (!bytes_equal(&allow->request_digest, st->request_digest, WALLET_DIGEST_SIZE)) {
        *reason = "allow request digest does not match the signed request";
        goto out;
    }
    if (allow->deadline_ms == 0 || allow->deadline_ms <= ops_time_wall_ms()) {
        rc = QC_EEXPIRED;
        *reason = "allow deadline has passed";
        goto out;
    }
    if (st->balance > INT64_MAX - st->amount) {
        rc = QC_EAMOUNT;
        *reason = "the wallet balance would overflow";
        goto out;
    }
    rc = 0;
    *reason = NULL;
out:
    if (allow != NULL)
        quancun__load_allow__free_unpacked(allow, NULL);
    proto_envelope_destroy(&env);
    return rc;
}

int wallet_device_judge_allow(wallet_device_t *dev, const uint8_t *allow, size_t allow_len,
                              int *verdict)
{
    assert(dev != NULL && verdict != NULL);
    assert(allow != NULL || allow_len == 0);
    wallet_state_t *st = &dev->st;
    if (st->phase == WALLET_IDLE)
        return QC_ESTATE;
    if (st->phase == WALLET_REPORTED)
        return QC_EREPLAY; /* invariant 4: judged once */
    if (dev->bank[BANK_ALLOW].key == NULL)
        return QC_ECONFIG;

    uint8_t allow_digest[WALLET_DIGEST_SIZE];
    const char *reason = NULL;
    int v = check_allow(dev, allow, allow_len, allow_digest, &reason);
    if (v == QC_ENOMEM || v == QC_ECRYPTO)
        return v; /* our own trouble, not the allow's: it is judged on the next try */
    bool apply = v == 0;
    int64_t balance_after = apply ? st->balance + st->amount : st->balance;
    uint64_t counter_after = apply ? st->counter + 1 : st->counter;

    Quancun__ExecutionReport rep = QUANCUN__EXECUTION_REPORT__INIT;
    rep.txn_id.data = st->txn_id;
    rep.txn_id.len = WALLET_TXN_SIZE;
    rep.device_id = st->serial;
    rep.account_id = st->account_id;
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
    int rc = sign_message(dev, PROTO_TYPE_EXECUTION_REPORT, &rep.base, dev->cert_der != NULL,
                          &report, &report_len, NULL);
    if (rc != 0)
        return rc;

    /* Credit, counter + 1 and the signed report: one atomic write (invariant 1). */
    uint64_t counter_before = st->counter;
    st->balance = balance_after;
    st->counter = counter_after;
    st->report = report;
    st->report_len = report_len;
    st->report_status = (int)rep.status;
    memcpy(st->allow_digest, allow_digest, sizeof(allow_digest));
    st->phase = WALLET_REPORTED;
    rc = device_commit(dev, apply ? "load.applied" : "load.rejected", apply ? NULL : reason);
    if (rc != 0)
        return rc;
    assert(st->counter == counter_before + (apply ? 1u : 0u));
    if (apply)
        ops_fault_point("wallet.after_credit_before_report");
    else
        ops_log(OPS_LOG_WARN, "wallet.allow_rejected", "reason", reason, "code", qc_errname(v),
                NULL);
    *verdict = v;
    return 0;
}

int wallet_device_accept_outcome(wallet_device_t *dev, const uint8_t *outcome, size_t outcome_len,
                                 int *load_state)
{
    assert(dev != NULL && load_state != NULL);
    assert(outcome != NULL || outcome_len == 0);
    wallet_state_t *st = &dev->st;
    if (st->phase != WALLET_REPORTED)
        return QC_ESTATE;
    if (dev->bank[BANK_OUTCOME].key == NULL)
        return QC_ECONFIG;
    proto_envelope_t *env = NULL;
    int rc = open_bank_envelope(&dev->bank[BANK_OUTCOME], PROTO_TYPE_LOAD_OUTCOME, outcome,
                                outcome_len, &env);
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
    if (!bytes_equal(&oc->txn_id, st->txn_id, WALLET_TXN_SIZE))
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
    char detail[DEVICE_DETAIL_MAX];
    snprintf(detail, sizeof(detail), "%s%s%s", proto_load_state_name(state),
             oc->reason != NULL && oc->reason[0] != '\0' ? ": " : "",
             oc->reason != NULL ? oc->reason : "");
    /* The log line names the load, so it is built before the load is cleared. */
    log_line(st, WALLET_IDLE, "load.outcome", detail);
    memcpy(st->last_txn_id, st->txn_id, WALLET_TXN_SIZE);
    st->last_outcome = state;
    clear_load(st);
    rc = device_write(dev, true);
    if (rc == 0)
        *load_state = state;
out:
    if (oc != NULL)
        quancun__load_outcome__free_unpacked(oc, NULL);
    proto_envelope_destroy(&env);
    return rc;
}

int wallet_device_abandon(wallet_device_t *dev, int server_code, const char *message)
{
    assert(dev != NULL);
    wallet_state_t *st = &dev->st;
    if (st->phase != WALLET_PENDING)
        return QC_ESTATE;
    char detail[DEVICE_DETAIL_MAX];
    snprintf(detail, sizeof(detail), "%s: %s", qc_errname(server_code),
             message != NULL ? message : qc_strerror(server_code));
    uint64_t counter_before = st->counter;
    log_line(st, WALLET_IDLE, "load.abandoned", detail);
    clear_load(st);
    int rc = device_write(dev, true);
    if (rc != 0)
        return rc;
    assert(st->counter == counter_before); /* invariant 6 */
    return 0;
}

/* ------------------------------------------------------------------ IC card transfers */

int wallet_device_cert(const wallet_device_t *dev, const uint8_t **der, size_t *der_len)
{
    assert(dev != NULL && der != NULL && der_len != NULL);
    if (dev->cert_der == NULL)
        return QC_ECERT;
    *der = dev->cert_der;
    *der_len = dev->cert_len;
    return 0;
}

int wallet_device_card_auth(wallet_device_t *dev, const char *card_number,
                            const uint8_t card_challenge[WALLET_CARD_CHALLENGE_SIZE],
                            const uint8_t host_challenge[WALLET_CARD_CHALLENGE_SIZE], uint8_t **out,
                            size_t *out_len)
{
    assert(dev != NULL && card_number != NULL && out != NULL && out_len != NULL);
    assert(card_challenge != NULL && host_challenge != NULL);
    *out = NULL;
    if (dev->cert_der == NULL)
        return QC_ECERT;
    if (!serial_ok(card_number))
        return QC_EINVAL;
    Qccard__CardChallenge ch = QCCARD__CARD_CHALLENGE__INIT;
    ch.signer_id = dev->st.serial;
    ch.peer_id = (char *)card_number; /* pack only reads it */
    ch.challenge.data = (uint8_t *)card_challenge;
    ch.challenge.len = WALLET_CARD_CHALLENGE_SIZE;
    ch.own_challenge.data = (uint8_t *)host_challenge;
    ch.own_challenge.len = WALLET_CARD_CHALLENGE_SIZE;
    return sign_message(dev, PROTO_TYPE_CARD_CHALLENGE, &ch.base, true, out, out_len, NULL);
}

/* The detail of a card log line: which card, which transfer, how much. */
static void card_detail(const wallet_state_t *st, char out[DEVICE_DETAIL_MAX])
{
    char hex[2 * WALLET_TXN_SIZE + 1];
    char amount[WALLET_AMOUNT_FORMAT_MAX];
    snprintf(out, DEVICE_DETAIL_MAX, "card %s transfer %s amount %s", st->card_number,
             ops_hex(st->card_xfer_id, WALLET_TXN_SIZE, hex),
             wallet_amount_format(st->card_amount, amount, sizeof(amount)));
}

int wallet_device_card_debit(wallet_device_t *dev, const char *card_number, int64_t amount,
                             const uint8_t session[WALLET_CARD_CHALLENGE_SIZE], uint8_t **credit,
                             size_t *credit_len)
{
    assert(dev != NULL && card_number != NULL && session != NULL);
    assert(credit != NULL && credit_len != NULL);
    wallet_state_t *st = &dev->st;
    *credit = NULL;
    if (!dev->pin_ok)
        return QC_EDENIED;
    if (st->phase != WALLET_IDLE)
        return QC_EPENDING;
    if (st->card_pending)
        return QC_ECARDPENDING;
    if (amount <= 0)
        return QC_EAMOUNT;
    if (amount > st->balance)
        return QC_EFUNDS;
    if (!serial_ok(card_number))
        return QC_EINVAL;
    if (dev->cert_der == NULL)
        return QC_ECERT;

    uint8_t xfer[WALLET_TXN_SIZE];
    if (RAND_bytes(xfer, sizeof(xfer)) != 1)
        return QC_ECRYPTO;
    Qccard__CardCredit cc = QCCARD__CARD_CREDIT__INIT;
    cc.transfer_id.data = xfer;
    cc.transfer_id.len = sizeof(xfer);
    cc.device_id = st->serial;
    cc.card_number = (char *)card_number;
    cc.amount = amount;
    cc.session.data = (uint8_t *)session;
    cc.session.len = WALLET_CARD_CHALLENGE_SIZE;
    uint8_t *signed_credit = NULL;
    size_t signed_len = 0;
    int rc = sign_message(dev, PROTO_TYPE_CARD_CREDIT, &cc.base, false, &signed_credit, &signed_len,
                          NULL);
    if (rc != 0)
        return rc;

    /* The debit and the record of the pending transfer: one atomic write (invariant 9). */
    int64_t balance_before = st->balance;
    st->balance -= amount;
    st->card_pending = true;
    memcpy(st->card_xfer_id, xfer, sizeof(xfer));
    st->card_amount = amount;
    memcpy(st->card_number, card_number, strlen(card_number) + 1);
    char detail[DEVICE_DETAIL_MAX];
    card_detail(st, detail);
    rc = device_commit(dev, "card.debited", detail);
    if (rc != 0) {
        free(signed_credit);
        return rc;
    }
    assert(st->balance == balance_before - amount);
    (void)balance_before;
    ops_fault_point("wallet.after_card_debit");
    *credit = signed_credit;
    *credit_len = signed_len;
    return 0;
}

/* Checks a verified receipt body against the pending transfer. */
static int check_receipt(const wallet_state_t *st, const Qccard__CardReceipt *r,
                         const uint8_t host_challenge[WALLET_CARD_CHALLENGE_SIZE])
{
    if (!bytes_equal(&r->transfer_id, st->card_xfer_id, WALLET_TXN_SIZE))
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
    if (!bytes_equal(&r->session, host_challenge, WALLET_CARD_CHALLENGE_SIZE))
        return QC_EREPLAY;
    return 0;
}

int wallet_device_card_settle(wallet_device_t *dev, EVP_PKEY *card_key,
                              const uint8_t host_challenge[WALLET_CARD_CHALLENGE_SIZE],
                              const uint8_t *receipt, size_t receipt_len,
                              wallet_card_result_t *result)
{
    assert(dev != NULL && card_key != NULL && host_challenge != NULL && result != NULL);
    assert(receipt != NULL || receipt_len == 0);
    wallet_state_t *st = &dev->st;
    if (!st->card_pending)
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
    rc = check_receipt(st, r, host_challenge);
    if (rc != 0)
        goto out;
    bool credited = r->status == QCCARD__RECEIPT_STATUS__RECEIPT_CREDITED;
    char detail[DEVICE_DETAIL_MAX];
    card_detail(st, detail);
    /* Killed here, the card has its proof and the next contact settles from it. */
    ops_fault_point("wallet.after_card_receipt");
    if (!credited)
        st->balance += st->card_amount; /* the card proved it never had it */
    st->card_pending = false;
    memset(st->card_xfer_id, 0, sizeof(st->card_xfer_id));
    st->card_amount = 0;
    memset(st->card_number, 0, sizeof(st->card_number));
    rc = device_commit(dev, credited ? "card.completed" : "card.refunded", detail);
    if (rc != 0)
        goto out;
    *result = credited ? WALLET_CARD_COMPLETED : WALLET_CARD_REFUNDED;
out:
    if (r != NULL)
        qccard__card_receipt__free_unpacked(r, NULL);
    proto_envelope_destroy(&env);
    return rc;
}
