/* wallet_store.c - atomic state file, home-directory files and the operation log. */
#include "wallet_store.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "qc_error.h"

#define STATE_VERSION 1
#define STATE_TMP_SUFFIX ".tmp"
#define STATE_CHECKSUM_KEY "checksum "
#define STATE_LINE_KEY_MAX 32
#define LOCK_FILE ".lock"
#define HOME_MODE 0700
#define LOG_SEQ_PREFIX "{\"seq\":"

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

int wallet_store_path(const char *home, const char *name, char out[WALLET_PATH_MAX])
{
    assert(home != NULL && name != NULL);
    int n = snprintf(out, WALLET_PATH_MAX, "%s/%s", home, name);
    if (n < 0 || n >= WALLET_PATH_MAX)
        return QC_EINVAL;
    return 0;
}

static int write_all(int fd, const uint8_t *bytes, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, bytes, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return QC_EIO;
        bytes += n;
        len -= (size_t)n;
    }
    return 0;
}

static int fsync_dir(const char *home)
{
    int fd = open(home, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return QC_EIO;
    int rc = fsync(fd) == 0 ? 0 : QC_EIO;
    close(fd);
    return rc;
}

int wallet_store_write(const char *home, const char *name, const uint8_t *bytes, size_t len,
                       mode_t mode)
{
    assert(home != NULL && name != NULL);
    assert(bytes != NULL || len == 0);
    char path[WALLET_PATH_MAX];
    char tmp[WALLET_PATH_MAX];
    if (wallet_store_path(home, name, path) != 0)
        return QC_EINVAL;
    int n = snprintf(tmp, sizeof(tmp), "%s%s", path, STATE_TMP_SUFFIX);
    if (n < 0 || (size_t)n >= sizeof(tmp))
        return QC_EINVAL;

    (void)unlink(tmp); /* a leftover of a crash; O_EXCL below must not trip on it */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        return QC_EIO;
    int rc = write_all(fd, bytes, len);
    if (rc == 0 && fchmod(fd, mode) != 0) /* the umask must not widen or narrow it */
        rc = QC_EIO;
    if (rc == 0 && fsync(fd) != 0)
        rc = QC_EIO;
    if (close(fd) != 0 && rc == 0)
        rc = QC_EIO;
    if (rc == 0 && rename(tmp, path) != 0)
        rc = QC_EIO;
    if (rc != 0) {
        (void)unlink(tmp);
        return rc;
    }
    return fsync_dir(home);
}

int wallet_store_read(const char *home, const char *name, size_t max, uint8_t **out, size_t *len)
{
    assert(home != NULL && name != NULL && out != NULL && len != NULL);
    *out = NULL;
    *len = 0;
    char path[WALLET_PATH_MAX];
    if (wallet_store_path(home, name, path) != 0)
        return QC_EINVAL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? QC_ENOTFOUND : QC_EIO;
    int rc = 0;
    struct stat sb;
    uint8_t *buf = NULL;
    if (fstat(fd, &sb) != 0) {
        rc = QC_EIO;
        goto out;
    }
    if (sb.st_size < 0 || (uint64_t)sb.st_size > max) {
        rc = QC_ETOOBIG;
        goto out;
    }
    size_t size = (size_t)sb.st_size;
    buf = malloc(size + 1);
    if (buf == NULL) {
        rc = QC_ENOMEM;
        goto out;
    }
    size_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = QC_EIO;
            goto out;
        }
        got += (size_t)n;
    }
    buf[size] = '\0';
    *out = buf;
    *len = size;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return rc;
}

int wallet_store_lock(const char *home, int *fd_out)
{
    assert(home != NULL && fd_out != NULL);
    char path[WALLET_PATH_MAX];
    if (wallet_store_path(home, LOCK_FILE, path) != 0)
        return QC_EINVAL;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return QC_EIO;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int err = errno;
        close(fd);
        return err == EWOULDBLOCK ? QC_EBUSY : QC_EIO;
    }
    *fd_out = fd;
    return 0;
}

int wallet_store_claim(const char *home, const char *state_name, bool create, int *fd_out)
{
    assert(home != NULL && state_name != NULL && fd_out != NULL);
    char path[WALLET_PATH_MAX];
    if (wallet_store_path(home, state_name, path) != 0)
        return QC_EINVAL;
    if (create && mkdir(home, HOME_MODE) != 0 && errno != EEXIST)
        return QC_EIO;
    /* No state file, no device: say so without leaving a lock file behind. */
    if (!create && access(path, F_OK) != 0)
        return errno == ENOENT || errno == ENOTDIR ? QC_ENOTFOUND : QC_EIO;
    int fd = -1;
    int rc = wallet_store_lock(home, &fd);
    if (rc != 0)
        return rc;
    if (create && access(path, F_OK) == 0) {
        close(fd);
        return QC_EEXIST;
    }
    *fd_out = fd;
    return 0;
}

/* ------------------------------------------------------------------ state record */

void wallet_state_clear(wallet_state_t *st)
{
    if (st == NULL)
        return;
    free(st->request);
    free(st->report);
    OPENSSL_cleanse(st, sizeof(*st));
}

int wallet_state_set_blob(uint8_t **blob_p, size_t *len_p, const uint8_t *bytes, size_t len)
{
    assert(blob_p != NULL && len_p != NULL);
    if (bytes == NULL || len == 0 || len > WALLET_BLOB_MAX)
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
    if (cap > WALLET_STATE_FILE_MAX) {
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

/* Serial and account ids are written raw, so they must be plain tokens. */
static bool token_ok(const char *s, size_t max)
{
    size_t n = strnlen(s, max + 1);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c >= 0x7f)
            return false;
    }
    return true;
}

static int state_check(const wallet_state_t *st)
{
    if (!token_ok(st->serial, WALLET_SERIAL_MAX))
        return QC_EINVAL;
    if (st->phase != WALLET_IDLE && st->phase != WALLET_PENDING && st->phase != WALLET_REPORTED)
        return QC_EINVAL;
    if (st->phase != WALLET_IDLE) {
        if (!token_ok(st->account_id, WALLET_ACCOUNT_MAX) || st->request == NULL)
            return QC_EINVAL;
    }
    if (st->phase == WALLET_REPORTED && st->report == NULL)
        return QC_EINVAL;
    if (st->card_pending && (!token_ok(st->card_number, WALLET_SERIAL_MAX) || st->card_amount <= 0))
        return QC_EINVAL;
    if (strnlen(st->log_pending, sizeof(st->log_pending)) > WALLET_LOG_LINE_MAX)
        return QC_EINVAL;
    if (st->pin.tries_left > WALLET_PIN_TRIES || st->pin.iterations < WALLET_PIN_ITERATIONS_MIN ||
        st->pin.iterations > WALLET_PIN_ITERATIONS_MAX)
        return QC_EINVAL;
    return 0;
}

static int sha256(const void *bytes, size_t len, uint8_t out[WALLET_DIGEST_SIZE])
{
    unsigned int out_len = 0;
    if (EVP_Digest(bytes, len, out, &out_len, EVP_sha256(), NULL) != 1 ||
        out_len != WALLET_DIGEST_SIZE)
        return QC_ECRYPTO;
    return 0;
}

int wallet_state_save(const char *home, const wallet_state_t *st)
{
    assert(home != NULL && st != NULL);
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
    if (st->phase != WALLET_IDLE) {
        tb_hex(&tb, "txn_id", st->txn_id, WALLET_TXN_SIZE);
        tb_printf(&tb, "account_id %s\n", st->account_id);
        tb_printf(&tb, "amount %" PRId64 "\n", st->amount);
        tb_printf(&tb, "currency %" PRIu32 "\n", st->currency);
        tb_hex(&tb, "request_digest", st->request_digest, WALLET_DIGEST_SIZE);
        tb_hex(&tb, "request", st->request, st->request_len);
    }
    if (st->phase == WALLET_REPORTED) {
        tb_printf(&tb, "report_status %d\n", st->report_status);
        tb_hex(&tb, "allow_digest", st->allow_digest, WALLET_DIGEST_SIZE);
        tb_hex(&tb, "report", st->report, st->report_len);
    }
    tb_hex(&tb, "last_txn_id", st->last_txn_id, WALLET_TXN_SIZE);
    tb_printf(&tb, "last_outcome %d\n", st->last_outcome);
    tb_hex(&tb, "pin_salt", st->pin.salt, WALLET_PIN_SALT_SIZE);
    tb_hex(&tb, "pin_hash", st->pin.hash, WALLET_PIN_HASH_SIZE);
    tb_printf(&tb, "pin_iterations %" PRIu32 "\n", st->pin.iterations);
    tb_printf(&tb, "pin_tries_left %" PRIu32 "\n", st->pin.tries_left);
    if (st->card_pending) { /* only then, so files without card transfers stay as they were */
        tb_hex(&tb, "card_xfer_id", st->card_xfer_id, WALLET_TXN_SIZE);
        tb_printf(&tb, "card_amount %" PRId64 "\n", st->card_amount);
        tb_printf(&tb, "card_number %s\n", st->card_number);
    }
    tb_printf(&tb, "log_seq %" PRIu64 "\n", st->log_seq);
    tb_hex(&tb, "log_pending", (const uint8_t *)st->log_pending, strlen(st->log_pending));
    uint8_t digest[WALLET_DIGEST_SIZE];
    if (tb.rc == 0)
        tb.rc = sha256(tb.p, tb.len, digest);
    if (tb.rc == 0)
        tb_hex(&tb, "checksum", digest, sizeof(digest));
    rc = tb.rc;
    if (rc == 0)
        rc = wallet_store_write(home, WALLET_STATE_FILE, (const uint8_t *)tb.p, tb.len, 0600);
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
    if (n == 0 || n % 2 != 0 || n / 2 > WALLET_BLOB_MAX)
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
static int state_line(wallet_state_t *st, const char *key, const char *v, int *version)
{
    int64_t phase = 0;
    int rc;
    if (strcmp(key, "version") == 0)
        return parse_int(v, version);
    if (strcmp(key, "serial") == 0)
        return parse_token(v, st->serial, WALLET_SERIAL_MAX);
    if (strcmp(key, "balance") == 0)
        return parse_i64(v, &st->balance);
    if (strcmp(key, "counter") == 0)
        return parse_u64(v, &st->counter);
    if (strcmp(key, "phase") == 0) {
        rc = parse_i64(v, &phase);
        if (rc != 0 || phase < WALLET_IDLE || phase > WALLET_REPORTED)
            return QC_EDECODE;
        st->phase = (wallet_phase_t)phase;
        return 0;
    }
    if (strcmp(key, "txn_id") == 0)
        return unhex(v, strlen(v), st->txn_id, WALLET_TXN_SIZE);
    if (strcmp(key, "account_id") == 0)
        return parse_token(v, st->account_id, WALLET_ACCOUNT_MAX);
    if (strcmp(key, "amount") == 0)
        return parse_i64(v, &st->amount);
    if (strcmp(key, "currency") == 0)
        return parse_u32(v, &st->currency);
    if (strcmp(key, "request_digest") == 0)
        return unhex(v, strlen(v), st->request_digest, WALLET_DIGEST_SIZE);
    if (strcmp(key, "request") == 0)
        return parse_blob(v, &st->request, &st->request_len);
    if (strcmp(key, "report_status") == 0)
        return parse_int(v, &st->report_status);
    if (strcmp(key, "allow_digest") == 0)
        return unhex(v, strlen(v), st->allow_digest, WALLET_DIGEST_SIZE);
    if (strcmp(key, "report") == 0)
        return parse_blob(v, &st->report, &st->report_len);
    if (strcmp(key, "last_txn_id") == 0)
        return unhex(v, strlen(v), st->last_txn_id, WALLET_TXN_SIZE);
    if (strcmp(key, "last_outcome") == 0)
        return parse_int(v, &st->last_outcome);
    if (strcmp(key, "pin_salt") == 0)
        return unhex(v, strlen(v), st->pin.salt, WALLET_PIN_SALT_SIZE);
    if (strcmp(key, "pin_hash") == 0)
        return unhex(v, strlen(v), st->pin.hash, WALLET_PIN_HASH_SIZE);
    if (strcmp(key, "pin_iterations") == 0)
        return parse_u32(v, &st->pin.iterations);
    if (strcmp(key, "pin_tries_left") == 0)
        return parse_u32(v, &st->pin.tries_left);
    if (strcmp(key, "card_xfer_id") == 0) {
        st->card_pending = true;
        return unhex(v, strlen(v), st->card_xfer_id, WALLET_TXN_SIZE);
    }
    if (strcmp(key, "card_amount") == 0)
        return parse_i64(v, &st->card_amount);
    if (strcmp(key, "card_number") == 0)
        return parse_token(v, st->card_number, WALLET_SERIAL_MAX);
    if (strcmp(key, "log_seq") == 0)
        return parse_u64(v, &st->log_seq);
    if (strcmp(key, "log_pending") == 0) {
        size_t n = strlen(v);
        if (n % 2 != 0 || n / 2 > WALLET_LOG_LINE_MAX)
            return QC_EDECODE;
        rc = unhex(v, n, (uint8_t *)st->log_pending, n / 2);
        st->log_pending[n / 2] = '\0';
        if (rc == 0 && strlen(st->log_pending) != n / 2)
            return QC_EDECODE; /* an embedded NUL */
        return rc;
    }
    return QC_EDECODE; /* an unknown key: a newer or damaged file */
}

static int state_parse(char *text, size_t len, wallet_state_t *st)
{
    /* The checksum line covers every byte before it and must be the last line. */
    char *mark = NULL;
    for (char *p = text; (p = strstr(p, "\n" STATE_CHECKSUM_KEY)) != NULL; p++)
        mark = p + 1;
    if (mark == NULL)
        return QC_EDECODE;
    const char *sum_hex = mark + strlen(STATE_CHECKSUM_KEY);
    uint8_t want[WALLET_DIGEST_SIZE];
    uint8_t got[WALLET_DIGEST_SIZE];
    size_t tail = len - (size_t)(sum_hex - text);
    if (tail != 2 * WALLET_DIGEST_SIZE + 1 || sum_hex[2 * WALLET_DIGEST_SIZE] != '\n')
        return QC_EDECODE;
    if (unhex(sum_hex, 2 * WALLET_DIGEST_SIZE, want, sizeof(want)) != 0)
        return QC_EDECODE;
    if (sha256(text, (size_t)(mark - text), got) != 0)
        return QC_ECRYPTO;
    if (CRYPTO_memcmp(want, got, sizeof(want)) != 0)
        return QC_EDECODE;
    *mark = '\0';

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

int wallet_state_load(const char *home, wallet_state_t *st)
{
    assert(home != NULL && st != NULL);
    assert(st->request == NULL && st->report == NULL);
    uint8_t *text = NULL;
    size_t len = 0;
    int rc = wallet_store_read(home, WALLET_STATE_FILE, WALLET_STATE_FILE_MAX, &text, &len);
    if (rc != 0)
        return rc;
    memset(st, 0, sizeof(*st));
    rc = state_parse((char *)text, len, st);
    if (rc != 0)
        wallet_state_clear(st);
    OPENSSL_cleanse(text, len);
    free(text);
    return rc;
}

/* ------------------------------------------------------------------ operation log */

int wallet_oplog_append(const char *home, const char *line)
{
    assert(home != NULL && line != NULL);
    size_t n = strnlen(line, WALLET_LOG_LINE_MAX + 1);
    if (n == 0 || n > WALLET_LOG_LINE_MAX || memchr(line, '\n', n) != NULL)
        return QC_EINVAL;
    char path[WALLET_PATH_MAX];
    if (wallet_store_path(home, WALLET_LOG_FILE, path) != 0)
        return QC_EINVAL;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return QC_EIO;
    char buf[WALLET_LOG_LINE_MAX + 1];
    memcpy(buf, line, n);
    buf[n] = '\n';
    int rc = write_all(fd, (const uint8_t *)buf, n + 1);
    if (rc == 0 && fsync(fd) != 0)
        rc = QC_EIO;
    if (close(fd) != 0 && rc == 0)
        rc = QC_EIO;
    return rc;
}

/* One pass of oplog_last_seq(): reads the tail of the log; a torn last line (the process
 * died inside a write) is cut off and *again set so that the caller reads once more. */
static int oplog_tail(int fd, uint64_t *seq_out, bool *again)
{
    /* Room for a longest line, its newline and the newline before it. */
    char tail[WALLET_LOG_LINE_MAX + 3];
    struct stat sb;
    *again = false;
    *seq_out = 0;
    if (fstat(fd, &sb) != 0 || sb.st_size < 0)
        return QC_EIO;
    off_t size = sb.st_size;
    off_t want = size < (off_t)sizeof(tail) - 1 ? size : (off_t)sizeof(tail) - 1;
    if (want == 0)
        return 0;
    ssize_t got = pread(fd, tail, (size_t)want, size - want);
    if (got != (ssize_t)want)
        return QC_EIO;
    tail[got] = '\0';
    if (memchr(tail, '\0', (size_t)got) != NULL)
        return QC_EDECODE;
    char *last_nl = strrchr(tail, '\n');
    if (tail[got - 1] != '\n') {
        if (last_nl == NULL && size > want)
            return QC_EDECODE; /* a line longer than any we write */
        off_t keep = last_nl == NULL ? 0 : size - want + (last_nl - tail) + 1;
        if (ftruncate(fd, keep) != 0 || fsync(fd) != 0)
            return QC_EIO;
        *again = true;
        return 0;
    }
    tail[got - 1] = '\0';
    char *start = strrchr(tail, '\n');
    if (start == NULL && size > want)
        return QC_EDECODE;
    start = start == NULL ? tail : start + 1;
    if (strncmp(start, LOG_SEQ_PREFIX, strlen(LOG_SEQ_PREFIX)) != 0)
        return QC_EDECODE;
    char *num_end = NULL;
    errno = 0;
    unsigned long long seq = strtoull(start + strlen(LOG_SEQ_PREFIX), &num_end, 10);
    if (errno != 0 || *num_end != ',')
        return QC_EDECODE;
    *seq_out = (uint64_t)seq;
    return 0;
}

/* Reads the sequence number of the log's last complete line (0 for an empty or missing
 * log), cutting a torn tail off first. */
static int oplog_last_seq(const char *path, uint64_t *seq_out)
{
    *seq_out = 0;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : QC_EIO;
    bool again = false;
    int rc = oplog_tail(fd, seq_out, &again);
    if (rc == 0 && again)
        rc = oplog_tail(fd, seq_out, &again);
    close(fd);
    return rc;
}

int wallet_oplog_recover(const char *home, const wallet_state_t *st)
{
    assert(home != NULL && st != NULL);
    char path[WALLET_PATH_MAX];
    if (wallet_store_path(home, WALLET_LOG_FILE, path) != 0)
        return QC_EINVAL;
    uint64_t last = 0;
    int rc = oplog_last_seq(path, &last);
    if (rc != 0)
        return rc;
    if (last == st->log_seq)
        return 0;
    if (st->log_seq > 0 && last == st->log_seq - 1 && st->log_pending[0] != '\0')
        return wallet_oplog_append(home, st->log_pending);
    return QC_EDECODE;
}
