/* wallet_store.c - the wallet device's state file: text lines, a checksum, atomic replace. */
#include "wallet_store.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "ops_hex.h"
#include "proto_ecdsa.h"
#include "proto_id.h"
#include "qc_error.h"

#define STATE_VERSION 1
#define STATE_CHECKSUM_KEY "checksum "
#define STATE_SIG_KEY "state_sig "
#define STATE_LINE_KEY_MAX 32
#define STATE_MODE 0600

/* ------------------------------------------------------------------ small helpers */

static int hex_nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Decodes exactly out_len bytes of lower-case hex; returns 0 or QC_EDECODE. */
static int unhex(const char *text, size_t text_len, uint8_t *out, size_t out_len)
{
    if (text_len != 2 * out_len)
        return QC_EDECODE;
    for (size_t i = 0; i < out_len; i++) {
        int hi = hex_nibble(text[2 * i]);
        int lo = hex_nibble(text[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return QC_EDECODE;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

/* ------------------------------------------------------------------ state record */

/* A growing text buffer; the first failure sticks and is reported at the end. */
typedef struct textbuf {
    char *p;
    size_t len;
    size_t cap;
    int rc;
} textbuf_t;

static void tb_reserve(textbuf_t *tb, size_t extra)
{
    if (tb->rc != 0 || tb->len + extra + 1 <= tb->cap)
        return;
    size_t cap = tb->cap == 0 ? 4096 : tb->cap;
    while (cap < tb->len + extra + 1)
        cap *= 2;
    if (cap > DEVICE_STATE_FILE_MAX) {
        tb->rc = QC_EINVAL;
        return;
    }
    char *p = realloc(tb->p, cap);
    if (p == NULL) {
        tb->rc = QC_ENOMEM;
        return;
    }
    tb->p = p;
    tb->cap = cap;
}

static void tb_printf(textbuf_t *tb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tb_printf(textbuf_t *tb, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        tb->rc = QC_EINVAL;
        return;
    }
    tb_reserve(tb, (size_t)n);
    if (tb->rc != 0)
        return;
    va_start(ap, fmt);
    vsnprintf(tb->p + tb->len, tb->cap - tb->len, fmt, ap);
    va_end(ap);
    tb->len += (size_t)n;
}

static void tb_hex(textbuf_t *tb, const char *key, const uint8_t *bytes, size_t len)
{
    tb_printf(tb, "%s ", key);
    tb_reserve(tb, 2 * len + 1);
    if (tb->rc != 0)
        return;
    ops_hex(bytes, len, tb->p + tb->len);
    tb->len += 2 * len;
    tb_printf(tb, "\n");
}

/* Serial and account ids are written raw, so they must be plain tokens: visible ASCII. */
static bool token_ok(const char *s, size_t max)
{
    return proto_id_check(s, max, PROTO_ID_VISIBLE) == 0;
}

static int state_check(const device_state_t *st)
{
    if (!token_ok(st->serial, DEVICE_SERIAL_MAX))
        return QC_EINVAL;
    if (st->phase != DEVICE_IDLE && st->phase != DEVICE_PENDING && st->phase != DEVICE_REPORTED)
        return QC_EINVAL;
    if (st->phase != DEVICE_IDLE) {
        if (!token_ok(st->account_id, DEVICE_ACCOUNT_MAX) || st->request == NULL)
            return QC_EINVAL;
    }
    if (st->phase == DEVICE_REPORTED && st->report == NULL)
        return QC_EINVAL;
    if (st->card_pending && (!token_ok(st->card_number, DEVICE_SERIAL_MAX) || st->card_amount <= 0))
        return QC_EINVAL;
    if (strnlen(st->log_pending, sizeof(st->log_pending)) > DEVICE_LOG_LINE_MAX)
        return QC_EINVAL;
    if (st->pin.tries_left > DEVICE_PIN_TRIES || st->pin.iterations < DEVICE_PIN_ITERATIONS_MIN ||
        st->pin.iterations > DEVICE_PIN_ITERATIONS_MAX)
        return QC_EINVAL;
    return 0;
}

static int sha256(const void *bytes, size_t len, uint8_t out[DEVICE_DIGEST_SIZE])
{
    unsigned int out_len = 0;
    if (EVP_Digest(bytes, len, out, &out_len, EVP_sha256(), NULL) != 1 ||
        out_len != DEVICE_DIGEST_SIZE)
        return QC_ECRYPTO;
    return 0;
}

/* The digest a state signature signs: SHA-256(context || 0x00 || text). */
static int state_sig_digest(const char *text, size_t len, uint8_t out[PROTO_DIGEST_SIZE])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int out_len = 0;
    static const char ctx[] = WALLET_STATE_SIG_CONTEXT; /* with its NUL: the 0x00 */
    int ok = md != NULL && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(md, ctx, sizeof(ctx)) == 1 && EVP_DigestUpdate(md, text, len) == 1 &&
             EVP_DigestFinal_ex(md, out, &out_len) == 1 && out_len == PROTO_DIGEST_SIZE;
    EVP_MD_CTX_free(md);
    return ok ? 0 : QC_ECRYPTO;
}

int wallet_state_save(const char *home, const device_state_t *st)
{
    return wallet_state_save_signed(home, st, NULL, NULL);
}

int wallet_state_save_signed(const char *home, const device_state_t *st, wallet_state_sign_fn *sign,
                             void *arg)
{
    assert(home != NULL);
    assert(st != NULL);
    int rc = state_check(st);
    if (rc != 0)
        return rc;

    textbuf_t tb = {0};
    tb_printf(&tb, "# quancun wallet device state; written atomically, do not edit\n");
    tb_printf(&tb, "version %d\n", STATE_VERSION);
    tb_printf(&tb, "serial %s\n", st->serial);
    tb_printf(&tb, "balance %" PRId64 "\n", st->balance);
    tb_printf(&tb, "counter %" PRIu64 "\n", st->counter);
    tb_printf(&tb, "phase %d\n", (int)st->phase);
    if (st->phase != DEVICE_IDLE) {
        tb_hex(&tb, "txn_id", st->txn_id, DEVICE_TXN_SIZE);
        tb_printf(&tb, "account_id %s\n", st->account_id);
        tb_printf(&tb, "amount %" PRId64 "\n", st->amount);
        tb_printf(&tb, "currency %" PRIu32 "\n", st->currency);
        tb_hex(&tb, "request_digest", st->request_digest, DEVICE_DIGEST_SIZE);
        tb_hex(&tb, "request", st->request, st->request_len);
    }
    if (st->phase == DEVICE_REPORTED) {
        tb_printf(&tb, "report_status %d\n", st->report_status);
        tb_hex(&tb, "allow_digest", st->allow_digest, DEVICE_DIGEST_SIZE);
        tb_hex(&tb, "report", st->report, st->report_len);
    }
    tb_hex(&tb, "last_txn_id", st->last_txn_id, DEVICE_TXN_SIZE);
    tb_printf(&tb, "last_outcome %d\n", st->last_outcome);
    tb_hex(&tb, "pin_salt", st->pin.salt, DEVICE_PIN_SALT_SIZE);
    tb_hex(&tb, "pin_hash", st->pin.hash, DEVICE_PIN_HASH_SIZE);
    tb_printf(&tb, "pin_iterations %" PRIu32 "\n", st->pin.iterations);
    tb_printf(&tb, "pin_tries_left %" PRIu32 "\n", st->pin.tries_left);
    if (st->card_pending) { /* only then, so files without card transfers stay as they were */
        tb_hex(&tb, "card_xfer_id", st->card_xfer_id, DEVICE_TXN_SIZE);
        tb_printf(&tb, "card_amount %" PRId64 "\n", st->card_amount);
        tb_printf(&tb, "card_number %s\n", st->card_number);
    }
    tb_printf(&tb, "log_seq %" PRIu64 "\n", st->log_seq);
    tb_hex(&tb, "log_pending", (const uint8_t *)st->log_pending, strlen(st->log_pending));
    if (sign != NULL && tb.rc == 0) {
        uint8_t sig_digest[PROTO_DIGEST_SIZE], raw[PROTO_SIG_RAW_SIZE];
        tb.rc = state_sig_digest(tb.p, tb.len, sig_digest);
        if (tb.rc == 0)
            tb.rc = sign(arg, sig_digest, raw);
        if (tb.rc == 0)
            tb_hex(&tb, "state_sig", raw, sizeof(raw));
    }
    uint8_t digest[DEVICE_DIGEST_SIZE];
    if (tb.rc == 0)
        tb.rc = sha256(tb.p, tb.len, digest);
    if (tb.rc == 0)
        tb_hex(&tb, "checksum", digest, sizeof(digest));
    rc = tb.rc;
    if (rc == 0)
        rc = device_home_write(home, WALLET_STATE_FILE, (const uint8_t *)tb.p, tb.len, STATE_MODE);
    if (tb.p != NULL)
        OPENSSL_cleanse(tb.p, tb.cap);
    free(tb.p);
    return rc;
}

static int parse_i64(const char *v, int64_t *out)
{
    char *end = NULL;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0')
        return QC_EDECODE;
    *out = (int64_t)x;
    return 0;
}

static int parse_u64(const char *v, uint64_t *out)
{
    char *end = NULL;
    if (v[0] == '-')
        return QC_EDECODE;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0')
        return QC_EDECODE;
    *out = (uint64_t)x;
    return 0;
}

static int parse_u32(const char *v, uint32_t *out)
{
    uint64_t x = 0;
    if (parse_u64(v, &x) != 0 || x > UINT32_MAX)
        return QC_EDECODE;
    *out = (uint32_t)x;
    return 0;
}

static int parse_int(const char *v, int *out)
{
    int64_t x = 0;
    if (parse_i64(v, &x) != 0 || x < 0 || x > INT32_MAX)
        return QC_EDECODE;
    *out = (int)x;
    return 0;
}

static int parse_token(const char *v, char *out, size_t max)
{
    if (!token_ok(v, max))
        return QC_EDECODE;
    memcpy(out, v, strlen(v) + 1);
    return 0;
}

static int parse_blob(const char *v, uint8_t **blob_p, size_t *len_p)
{
    size_t n = strlen(v);
    if (n == 0 || n % 2 != 0 || n / 2 > DEVICE_BLOB_MAX)
        return QC_EDECODE;
    uint8_t *b = malloc(n / 2);
    if (b == NULL)
        return QC_ENOMEM;
    if (unhex(v, n, b, n / 2) != 0) {
        free(b);
        return QC_EDECODE;
    }
    free(*blob_p);
    *blob_p = b;
    *len_p = n / 2;
    return 0;
}

/* Applies one "key value" line to st. */
static int state_line(device_state_t *st, const char *key, const char *v, int *version)
{
    int64_t phase = 0;
    int rc;
    if (strcmp(key, "version") == 0)
        return parse_int(v, version);
    if (strcmp(key, "serial") == 0)
        return parse_token(v, st->serial, DEVICE_SERIAL_MAX);
    if (strcmp(key, "balance") == 0)
        return parse_i64(v, &st->balance);
    if (strcmp(key, "counter") == 0)
        return parse_u64(v, &st->counter);
    if (strcmp(key, "phase") == 0) {
        rc = parse_i64(v, &phase);
        if (rc != 0 || phase < DEVICE_IDLE || phase > DEVICE_REPORTED)
            return QC_EDECODE;
        st->phase = (device_phase_t)phase;
        return 0;
    }
    if (strcmp(key, "txn_id") == 0)
        return unhex(v, strlen(v), st->txn_id, DEVICE_TXN_SIZE);
    if (strcmp(key, "account_id") == 0)
        return parse_token(v, st->account_id, DEVICE_ACCOUNT_MAX);
    if (strcmp(key, "amount") == 0)
        return parse_i64(v, &st->amount);
    if (strcmp(key, "currency") == 0)
        return parse_u32(v, &st->currency);
    if (strcmp(key, "request_digest") == 0)
        return unhex(v, strlen(v), st->request_digest, DEVICE_DIGEST_SIZE);
    if (strcmp(key, "request") == 0)
        return parse_blob(v, &st->request, &st->request_len);
    if (strcmp(key, "report_status") == 0)
        return parse_int(v, &st->report_status);
    if (strcmp(key, "allow_digest") == 0)
        return unhex(v, strlen(v), st->allow_digest, DEVICE_DIGEST_SIZE);
    if (strcmp(key, "report") == 0)
        return parse_blob(v, &st->report, &st->report_len);
    if (strcmp(key, "last_txn_id") == 0)
        return unhex(v, strlen(v), st->last_txn_id, DEVICE_TXN_SIZE);
    if (strcmp(key, "last_outcome") == 0)
        return parse_int(v, &st->last_outcome);
    if (strcmp(key, "pin_salt") == 0)
        return unhex(v, strlen(v), st->pin.salt, DEVICE_PIN_SALT_SIZE);
    if (strcmp(key, "pin_hash") == 0)
        return unhex(v, strlen(v), st->pin.hash, DEVICE_PIN_HASH_SIZE);
    if (strcmp(key, "pin_iterations") == 0)
        return parse_u32(v, &st->pin.iterations);
    if (strcmp(key, "pin_tries_left") == 0)
        return parse_u32(v, &st->pin.tries_left);
    if (strcmp(key, "card_xfer_id") == 0) {
        st->card_pending = true;
        return unhex(v, strlen(v), st->card_xfer_id, DEVICE_TXN_SIZE);
    }
    if (strcmp(key, "card_amount") == 0)
        return parse_i64(v, &st->card_amount);
    if (strcmp(key, "card_number") == 0)
        return parse_token(v, st->card_number, DEVICE_SERIAL_MAX);
    if (strcmp(key, "log_seq") == 0)
        return parse_u64(v, &st->log_seq);
    if (strcmp(key, "log_pending") == 0) {
        size_t n = strlen(v);
        if (n % 2 != 0 || n / 2 > DEVICE_LOG_LINE_MAX)
            return QC_EDECODE;
        rc = unhex(v, n, (uint8_t *)st->log_pending, n / 2);
        st->log_pending[n / 2] = '\0';
        if (rc == 0 && strlen(st->log_pending) != n / 2)
            return QC_EDECODE; /* an embedded NUL */
        return rc;
    }
    return QC_EDECODE; /* an unknown key: a newer or damaged file */
}

/* Verifies and cuts off the state signature line, which must end text (the checksum line
 * already cut). */
static int state_sig_check(char *text, EVP_PKEY *state_key)
{
    char *mark = NULL;
    for (char *p = text; (p = strstr(p, "\n" STATE_SIG_KEY)) != NULL; p++)
        mark = p + 1;
    if (mark == NULL)
        return QC_EBADSIG;
    const char *hex = mark + strlen(STATE_SIG_KEY);
    uint8_t raw[PROTO_SIG_RAW_SIZE], digest[PROTO_DIGEST_SIZE], der[PROTO_SIG_DER_MAX];
    size_t der_len = 0;
    if (strlen(hex) != 2 * PROTO_SIG_RAW_SIZE + 1 || hex[2 * PROTO_SIG_RAW_SIZE] != '\n' ||
        unhex(hex, 2 * PROTO_SIG_RAW_SIZE, raw, sizeof(raw)) != 0 ||
        proto_ecdsa_raw_to_der(raw, der, sizeof(der), &der_len) != 0)
        return QC_EBADSIG;
    if (state_sig_digest(text, (size_t)(mark - text), digest) != 0)
        return QC_ECRYPTO;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, state_key, NULL);
    int ok = ctx != NULL && EVP_PKEY_verify_init(ctx) == 1 &&
             EVP_PKEY_verify(ctx, der, der_len, digest, sizeof(digest)) == 1;
    EVP_PKEY_CTX_free(ctx);
    if (!ok)
        return QC_EBADSIG;
    *mark = '\0';
    return 0;
}

static int state_parse(char *text, size_t len, device_state_t *st, EVP_PKEY *state_key)
{
    /* The checksum line covers every byte before it and must be the last line. */
    char *mark = NULL;
    for (char *p = text; (p = strstr(p, "\n" STATE_CHECKSUM_KEY)) != NULL; p++)
        mark = p + 1;
    if (mark == NULL)
        return QC_EDECODE;
    const char *sum_hex = mark + strlen(STATE_CHECKSUM_KEY);
    uint8_t want[DEVICE_DIGEST_SIZE];
    uint8_t got[DEVICE_DIGEST_SIZE];
    size_t tail = len - (size_t)(sum_hex - text);
    if (tail != 2 * DEVICE_DIGEST_SIZE + 1 || sum_hex[2 * DEVICE_DIGEST_SIZE] != '\n')
        return QC_EDECODE;
    if (unhex(sum_hex, 2 * DEVICE_DIGEST_SIZE, want, sizeof(want)) != 0)
        return QC_EDECODE;
    if (sha256(text, (size_t)(mark - text), got) != 0)
        return QC_ECRYPTO;
    if (CRYPTO_memcmp(want, got, sizeof(want)) != 0)
        return QC_EDECODE;
    *mark = '\0';
    if (state_key != NULL) {
        int rc = state_sig_check(text, state_key);
        if (rc != 0)
            return rc;
    }

    int version = 0;
    bool have_serial = false, have_pin = false;
    for (char *line = text; *line != '\0';) {
        char *nl = strchr(line, '\n');
        if (nl == NULL)
            return QC_EDECODE;
        *nl = '\0';
        if (line[0] != '#') {
            char *sp = strchr(line, ' ');
            if (sp == NULL || sp - line > STATE_LINE_KEY_MAX)
                return QC_EDECODE;
            *sp = '\0';
            int rc = state_line(st, line, sp + 1, &version);
            if (rc != 0)
                return rc;
            have_serial |= strcmp(line, "serial") == 0;
            have_pin |= strcmp(line, "pin_hash") == 0;
        }
        line = nl + 1;
    }
    if (version != STATE_VERSION || !have_serial || !have_pin)
        return QC_EDECODE;
    return state_check(st) == 0 ? 0 : QC_EDECODE;
}

int wallet_state_load(const char *home, device_state_t *st)
{
    return wallet_state_load_signed(home, st, NULL);
}

int wallet_state_load_signed(const char *home, device_state_t *st, EVP_PKEY *state_key)
{
    assert(home != NULL);
    assert(st != NULL);
    assert(st->request == NULL);
    assert(st->report == NULL);
    uint8_t *text = NULL;
    size_t len = 0;
    int rc = device_home_read(home, WALLET_STATE_FILE, DEVICE_STATE_FILE_MAX, &text, &len);
    if (rc != 0)
        return rc;
    memset(st, 0, sizeof(*st));
    rc = state_parse((char *)text, len, st, state_key);
    if (rc != 0)
        device_state_clear(st);
    OPENSSL_cleanse(text, len);
    free(text);
    return rc;
}
