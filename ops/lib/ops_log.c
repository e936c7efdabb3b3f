/* ops_log.c - JSON log lines on stderr: one line per event, one write() per line. */
#include "ops_log.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ops_ratelimit.h"
#include "ops_time.h"

#define OPS_LOG_XSTR(x) #x
#define OPS_LOG_STR(x) OPS_LOG_XSTR(x)

/* Longest service or instance name kept; longer names are cut (they are operator-chosen). */
#define OPS_LOG_NAME_MAX 64
/* Room kept free at the end of every line for the closing quote, the truncation marker
 * and "}\n", so a truncated line is still one valid JSON object. */
#define OPS_LOG_TAIL_RESERVE 32
/* "2026-11-27T20:30:00.123Z" plus the terminating NUL. */
#define OPS_LOG_TIME_MAX 32

static char ops_log_service[OPS_LOG_NAME_MAX] = "unknown";
static char ops_log_instance[OPS_LOG_NAME_MAX] = "0";
static atomic_int ops_log_min_level = OPS_LOG_INFO;

static const char *const ops_log_level_names[] = {"debug", "info", "warn", "error"};
#define OPS_LOG_LEVEL_COUNT (sizeof ops_log_level_names / sizeof ops_log_level_names[0])

/* One line being built. Everything is appended through ops_log_put*(), which refuse to go
 * past limit; once something did not fit, truncated is set and the rest is dropped. */
typedef struct ops_log_line {
    char buf[OPS_LOG_LINE_MAX];
    size_t len;
    size_t limit;
    bool truncated;
} ops_log_line_t;

static void ops_log_copy_name(char *dst, const char *src)
{
    snprintf(dst, OPS_LOG_NAME_MAX, "%s", src != NULL ? src : "");
}

void ops_log_init(const char *service, const char *instance, ops_log_level_t min_level)
{
    assert((unsigned)min_level < OPS_LOG_LEVEL_COUNT);
    ops_log_copy_name(ops_log_service, service);
    ops_log_copy_name(ops_log_instance, instance);
    atomic_store(&ops_log_min_level, (int)min_level);
}

int ops_log_level_parse(const char *name)
{
    if (name == NULL)
        return -1;
    for (size_t i = 0; i < OPS_LOG_LEVEL_COUNT; i++) {
        if (strcmp(name, ops_log_level_names[i]) == 0)
            return (int)i;
    }
    return -1;
}

bool ops_log_level_check(const char *value, char *why, size_t why_cap)
{
    if (ops_log_level_parse(value) >= 0)
        return true;
    snprintf(why, why_cap, "not a level (use debug, info, warn or error)");
    return false;
}

/* Appends n raw bytes if they fit below the limit; returns false (and marks the line
 * truncated) if not, appending nothing. */
static bool ops_log_put(ops_log_line_t *line, const char *s, size_t n)
{
    if (line->truncated || line->len + n > line->limit) {
        line->truncated = true;
        return false;
    }
    memcpy(line->buf + line->len, s, n);
    line->len += n;
    return true;
}

/* Length of the valid UTF-8 sequence starting at s (at most avail bytes), or 0 when the
 * bytes there are not valid UTF-8 (overlong forms, surrogates and > U+10FFFF included). */
static size_t ops_log_utf8_len(const unsigned char *s, size_t avail)
{
    size_t n;
    unsigned min;
    unsigned cp;
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        n = 2;
        min = 0x80;
        cp = s[0] & 0x1fu;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        n = 3;
        min = 0x800;
        cp = s[0] & 0x0fu;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        n = 4;
        min = 0x10000;
        cp = s[0] & 0x07u;
    } else {
        return 0;
    }
    if (avail < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0u) != 0x80u)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

/* Appends s as a quoted JSON string. Each escape or UTF-8 sequence goes in whole or not at
 * all, so a value cut at the limit never ends in half an escape. Bytes that are not valid
 * UTF-8 become U+FFFD so the line stays valid JSON whatever the caller passed. */
static void ops_log_put_string(ops_log_line_t *line, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    if (!ops_log_put(line, "\"", 1))
        return;
    const unsigned char *p = (const unsigned char *)s;
    size_t avail = strlen(s);
    while (avail > 0) {
        char esc[8];
        const char *out = esc;
        size_t n;
        size_t used = 1;
        unsigned char c = *p;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            n = 2;
        } else if (c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f') {
            esc[0] = '\\';
            esc[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : c == '\t' ? 't' : c == '\b' ? 'b' : 'f';
            n = 2;
        } else if (c < 0x20 || c == 0x7f) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 0x0f];
            n = 6;
        } else if (c < 0x80) {
            esc[0] = (char)c;
            n = 1;
        } else if ((used = ops_log_utf8_len(p, avail)) > 0) {
            out = (const char *)p;
            n = used;
        } else {
            out = "\\ufffd";
            n = 6;
            used = 1;
        }
        /* The closing quote always fits: the limit keeps the tail reserve free. */
        if (!ops_log_put(line, out, n))
            break;
        p += used;
        avail -= used;
    }
    line->buf[line->len++] = '"';
    assert(line->len < sizeof line->buf);
}

/* Appends ,"key":"value" (value NULL is written as JSON null). A field that does not fit
 * whole is cut inside its value; if not even its key fits, the field is dropped. */
static void ops_log_put_field(ops_log_line_t *line, const char *key, const char *value)
{
    assert(key != NULL);
    size_t mark = line->len;
    if (!ops_log_put(line, ",", 1))
        return;
    ops_log_put_string(line, key);
    if (line->truncated || !ops_log_put(line, ":", 1)) {
        line->len = mark; /* a key without its value would not be JSON */
        return;
    }
    if (value == NULL)
        ops_log_put(line, "null", 4);
    else
        ops_log_put_string(line, value);
    if (line->buf[line->len - 1] == ':')
        line->len = mark; /* "null" did not fit: drop the whole field */
}

static void ops_log_time(char *out, size_t cap)
{
    struct timespec ts;
    struct tm tm;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0 || gmtime_r(&ts.tv_sec, &tm) == NULL) {
        snprintf(out, cap, "1970-01-01T00:00:00.000Z");
        return;
    }
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    assert(n > 0);
    snprintf(out + n, cap - n, ".%03ldZ", ts.tv_nsec / 1000000L);
}

static void ops_log_begin(ops_log_line_t *line, ops_log_level_t level, const char *event)
{
    char now[OPS_LOG_TIME_MAX];
    line->len = 0;
    line->limit = sizeof line->buf - OPS_LOG_TAIL_RESERVE;
    line->truncated = false;
    ops_log_time(now, sizeof now);
    ops_log_put(line, "{\"time\":", 8);
    ops_log_put_string(line, now);
    ops_log_put_field(line, "level", ops_log_level_names[level]);
    ops_log_put_field(line, "service", ops_log_service);
    ops_log_put_field(line, "instance", ops_log_instance);
    ops_log_put_field(line, "event", event != NULL ? event : "");
}

/* Closes the object and writes it. stderr is unbuffered in stdio terms, but we bypass stdio
 * entirely: one write() of at most OPS_LOG_LINE_MAX (= PIPE_BUF on Linux) bytes is atomic on
 * a pipe, so lines from several threads or processes never interleave. */
static void ops_log_end(ops_log_line_t *line)
{
    static const char marker[] = ",\"truncated\":true";
    line->limit = sizeof line->buf;
    if (line->truncated) {
        line->truncated = false;
        ops_log_put(line, marker, sizeof marker - 1);
    }
    bool ok = ops_log_put(line, "}\n", 2);
    assert(ok);
    (void)ok;
    size_t off = 0;
    while (off < line->len) {
        ssize_t n = write(STDERR_FILENO, line->buf + off, line->len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* nowhere left to report that logging failed */
        off += (size_t)n;
    }
}

static bool ops_log_enabled(ops_log_level_t level)
{
    assert((unsigned)level < OPS_LOG_LEVEL_COUNT);
    return (int)level >= atomic_load(&ops_log_min_level);
}

static void ops_log_put_fields(ops_log_line_t *line, va_list ap)
{
    for (;;) {
        const char *key = va_arg(ap, const char *);
        if (key == NULL)
            break;
        const char *value = va_arg(ap, const char *);
        ops_log_put_field(line, key, value);
    }
}

/* The limiter of ops_log_limited(): one table for the process, made on first use, under a
 * lock (it is called from the HTTP thread and the service's own threads). */
static pthread_mutex_t ops_log_rl_lock = PTHREAD_MUTEX_INITIALIZER;
static ops_ratelimit_t *ops_log_rl;
static _Atomic uint64_t ops_log_rl_next_flush_ms;
/* How often the summaries are looked for; a summary is due at the end of a key's window. */
#define OPS_LOG_FLUSH_EVERY_MS 1000

static void ops_log_summary(void *arg, const ops_ratelimit_summary_t *s)
{
    (void)arg;
    char count[24];
    snprintf(count, sizeof count, "%" PRIu64, s->suppressed);
    ops_log_line_t line;
    ops_log_begin(&line, OPS_LOG_WARN, "log.suppressed");
    ops_log_put_field(&line, "of", s->event);
    if (s->peer != NULL)
        ops_log_put_field(&line, "peer", s->peer);
    ops_log_put_field(&line, "suppressed", count);
    ops_log_put_field(&line, "window_ms", OPS_LOG_STR(OPS_RATELIMIT_WINDOW_MS));
    ops_log_end(&line);
}

/* Writes the summaries due, at most once per OPS_LOG_FLUSH_EVERY_MS; the caller holds no
 * lock. */
static void ops_log_flush_due(void)
{
    uint64_t now = ops_time_mono_ms();
    uint64_t next = atomic_load(&ops_log_rl_next_flush_ms);
    if (now < next)
        return;
    if (!atomic_compare_exchange_strong(&ops_log_rl_next_flush_ms, &next,
                                        now + OPS_LOG_FLUSH_EVERY_MS))
        return; /* another thread flushes */
    pthread_mutex_lock(&ops_log_rl_lock);
    if (ops_log_rl != NULL)
        (void)ops_ratelimit_flush(ops_log_rl, now); /* the count is for tests */
    pthread_mutex_unlock(&ops_log_rl_lock);
}

void ops_log_limited_flush(void)
{
    ops_log_flush_due();
}

void ops_log_limited(ops_log_level_t level, const char *event, const char *peer, ...)
{
    assert(event != NULL);
    if (!ops_log_enabled(level))
        return;
    uint64_t suppressed = 0;
    pthread_mutex_lock(&ops_log_rl_lock);
    if (ops_log_rl == NULL)
        ops_log_rl = ops_ratelimit_new(ops_log_summary, NULL);
    /* Without a table (out of memory) every line is written: better a storm than silence. */
    bool write = ops_log_rl == NULL ||
                 ops_ratelimit_allow(ops_log_rl, event, peer, ops_time_mono_ms(), &suppressed);
    pthread_mutex_unlock(&ops_log_rl_lock);
    if (write) {
        ops_log_line_t line;
        ops_log_begin(&line, level, event);
        if (peer != NULL)
            ops_log_put_field(&line, "peer", peer);
        va_list ap;
        va_start(ap, peer);
        ops_log_put_fields(&line, ap);
        va_end(ap);
        if (suppressed > 0) {
            char count[24];
            snprintf(count, sizeof count, "%" PRIu64, suppressed);
            ops_log_put_field(&line, "suppressed", count);
        }
        ops_log_end(&line);
    }
    ops_log_flush_due();
}

void ops_log(ops_log_level_t level, const char *event, ...)
{
    if (!ops_log_enabled(level))
        return;
    ops_log_line_t line;
    ops_log_begin(&line, level, event);
    va_list ap;
    va_start(ap, event);
    ops_log_put_fields(&line, ap);
    va_end(ap);
    ops_log_end(&line);
    ops_log_flush_due();
}

void ops_logf(ops_log_level_t level, const char *event, const char *fmt, ...)
{
    assert(fmt != NULL);
    if (!ops_log_enabled(level))
        return;
    char msg[OPS_LOG_LINE_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        snprintf(msg, sizeof msg, "(unformattable message)");
    ops_log_line_t line;
    ops_log_begin(&line, level, event);
    ops_log_put_field(&line, "msg", msg);
    if (n >= (int)sizeof msg)
        line.truncated = true;
    ops_log_end(&line);
}
