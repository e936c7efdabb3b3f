/* ops_metrics.c - the process-wide metrics registry, its Prometheus text rendering and the
 * /metrics + /healthz HTTP server (libmicrohttpd).
 *
 * Invariants:
 * 1. Slots [0, ops_metrics_count) are fully initialised and never change except for their
 *    atomic values; ops_metrics_count only grows, and is published with release ordering
 *    after the slot is written, so readers (render, the HTTP thread) need no lock.
 * 2. Every slot of one family (the name before '{') has the same kind.
 * 3. A histogram keeps per-bucket (not cumulative) counts; render accumulates them, and
 *    _count is the sum of the buckets, so _count always equals the +Inf bucket. */
#include "ops_metrics.h"

#include "ops_log.h"
#include "qc_error.h"

#include <arpa/inet.h>
#include <assert.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Longest HELP text kept per metric; longer text is cut. */
#define OPS_METRICS_HELP_MAX 256
/* Longest /healthz failure text. */
#define OPS_HEALTH_WHY_MAX 256
/* First size of the render buffer; it doubles as needed. */
#define OPS_METRICS_RENDER_INITIAL 8192
/* The HTTP server is for one Prometheus and a few operators, not for the public. */
#define OPS_HTTP_CONNECTIONS_MAX 16
#define OPS_HTTP_TIMEOUT_S 10
/* Longest libmicrohttpd error message forwarded to the log. */
#define OPS_HTTP_ERROR_MAX 512

/* Bucket upper bounds in seconds, 100 us to 10 s, plus the implicit +Inf bucket. The text
 * is what Prometheus sees in le="..." so it is written out, not printed from a double. */
static const struct {
    double le;
    const char *text;
} ops_histogram_bounds[] = {
    {0.0001, "0.0001"}, {0.00025, "0.00025"}, {0.0005, "0.0005"}, {0.001, "0.001"},
    {0.0025, "0.0025"}, {0.005, "0.005"},     {0.01, "0.01"},     {0.025, "0.025"},
    {0.05, "0.05"},     {0.1, "0.1"},         {0.25, "0.25"},     {0.5, "0.5"},
    {1.0, "1"},         {2.5, "2.5"},         {5.0, "5"},         {10.0, "10"},
};
#define OPS_HISTOGRAM_BOUNDS (sizeof ops_histogram_bounds / sizeof ops_histogram_bounds[0])
#define OPS_HISTOGRAM_SLOTS (OPS_HISTOGRAM_BOUNDS + 1) /* the last one is +Inf */
#define OPS_NS_PER_S UINT64_C(1000000000)

typedef enum ops_metric_kind {
    OPS_METRIC_COUNTER,
    OPS_METRIC_GAUGE,
    OPS_METRIC_HISTOGRAM,
} ops_metric_kind_t;

static const char *const ops_metric_kind_names[] = {"counter", "gauge", "histogram"};

struct ops_counter {
    atomic_uint_fast64_t value;
};

struct ops_gauge {
    atomic_int_fast64_t value;
};

struct ops_histogram {
    atomic_uint_fast64_t buckets[OPS_HISTOGRAM_SLOTS];
    atomic_uint_fast64_t sum_ns; /* nanoseconds: exact, and 584 years before it wraps */
};

typedef struct ops_metric {
    ops_metric_kind_t kind;
    char name[OPS_METRICS_NAME_MAX]; /* full name as registered, labels included */
    size_t family_len;               /* name[0, family_len) is the family */
    char help[OPS_METRICS_HELP_MAX]; /* as given; escaped when rendered */
    struct ops_counter counter;
    struct ops_gauge gauge;
    struct ops_histogram histogram;
} ops_metric_t;

static ops_metric_t ops_metrics[OPS_METRICS_MAX];
static atomic_size_t ops_metrics_count;
static pthread_mutex_t ops_metrics_lock = PTHREAD_MUTEX_INITIALIZER;

struct ops_http {
    struct MHD_Daemon *daemon;
    ops_health_fn *health;
    void *health_arg;
    uint16_t port;
};

/* ---- registry ---- */

/* Only called from assert(): unused, and fine, when NDEBUG is set. */
static bool ops_metric_name_char(char c, bool first) __attribute__((unused));

static bool ops_metric_name_char(char c, bool first)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':')
        return true;
    return !first && c >= '0' && c <= '9';
}

/* Length of the family part of name; asserts the name is a valid metric name optionally
 * followed by one {label="value",...} block at the very end. */
static size_t ops_metric_family_len(const char *name)
{
    size_t len = strlen(name);
    assert(len > 0);
    assert(len < OPS_METRICS_NAME_MAX);
    size_t i = 0;
    while (i < len && name[i] != '{') {
        assert(ops_metric_name_char(name[i], i == 0));
        i++;
    }
    assert(i > 0);
    assert(i == len || name[len - 1] == '}');
    assert(i == len || len > i + 2);
    return i;
}

static ops_metric_t *ops_metric_find_or_add(ops_metric_kind_t kind, const char *name,
                                            const char *help)
{
    assert(name != NULL);
    size_t family_len = ops_metric_family_len(name);
    int rc = pthread_mutex_lock(&ops_metrics_lock);
    assert(rc == 0);
    size_t count = atomic_load_explicit(&ops_metrics_count, memory_order_relaxed);
    ops_metric_t *found = NULL;
    for (size_t i = 0; i < count && found == NULL; i++) {
        ops_metric_t *m = &ops_metrics[i];
        if (strcmp(m->name, name) == 0)
            found = m;
        else if (m->family_len == family_len && memcmp(m->name, name, family_len) == 0)
            assert(m->kind == kind); /* one family, one type */
    }
    if (found == NULL) {
        assert(count < OPS_METRICS_MAX);
        if (count >= OPS_METRICS_MAX) {
            /* Even with NDEBUG: the header promises never NULL, and the slot would be out
             * of bounds. Raise OPS_METRICS_MAX if a service really needs more. */
            ops_log(OPS_LOG_ERROR, "metrics.full", "name", name, NULL);
            abort();
        }
        found = &ops_metrics[count];
        memset(found, 0, sizeof *found);
        found->kind = kind;
        snprintf(found->name, sizeof found->name, "%s", name);
        found->family_len = family_len;
        snprintf(found->help, sizeof found->help, "%s", help != NULL ? help : "");
        atomic_store_explicit(&ops_metrics_count, count + 1, memory_order_release);
    }
    assert(found->kind == kind);
    rc = pthread_mutex_unlock(&ops_metrics_lock);
    assert(rc == 0);
    (void)rc;
    return found;
}

ops_counter_t *ops_counter(const char *name, const char *help)
{
    return &ops_metric_find_or_add(OPS_METRIC_COUNTER, name, help)->counter;
}

ops_gauge_t *ops_gauge(const char *name, const char *help)
{
    return &ops_metric_find_or_add(OPS_METRIC_GAUGE, name, help)->gauge;
}

ops_histogram_t *ops_histogram(const char *name, const char *help)
{
    return &ops_metric_find_or_add(OPS_METRIC_HISTOGRAM, name, help)->histogram;
}

void ops_counter_add(ops_counter_t *c, uint64_t n)
{
    assert(c != NULL);
    atomic_fetch_add_explicit(&c->value, n, memory_order_relaxed);
}

uint64_t ops_counter_value(const ops_counter_t *c)
{
    assert(c != NULL);
    return atomic_load_explicit(&((ops_counter_t *)c)->value, memory_order_relaxed);
}

void ops_gauge_set(ops_gauge_t *g, int64_t v)
{
    assert(g != NULL);
    atomic_store_explicit(&g->value, v, memory_order_relaxed);
}

void ops_gauge_add(ops_gauge_t *g, int64_t delta)
{
    assert(g != NULL);
    atomic_fetch_add_explicit(&g->value, delta, memory_order_relaxed);
}

int64_t ops_gauge_value(const ops_gauge_t *g)
{
    assert(g != NULL);
    return atomic_load_explicit(&((ops_gauge_t *)g)->value, memory_order_relaxed);
}

/* A negative or NaN duration (a clock stepped back, a caller bug) counts as zero rather
 * than poisoning the sum; a huge one lands in +Inf and its sum saturates at 10^10 s. */
void ops_histogram_observe(ops_histogram_t *h, double seconds)
{
    assert(h != NULL);
    if (!(seconds >= 0.0))
        seconds = 0.0;
    size_t slot = 0;
    while (slot < OPS_HISTOGRAM_BOUNDS && seconds > ops_histogram_bounds[slot].le)
        slot++;
    const double sum_cap_s = 1e10;
    uint64_t ns =
        (uint64_t)((seconds < sum_cap_s ? seconds : sum_cap_s) * (double)OPS_NS_PER_S + 0.5);
    atomic_fetch_add_explicit(&h->buckets[slot], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns, ns, memory_order_relaxed);
}

/* ---- rendering ---- */

typedef struct ops_buf {
    char *data;
    size_t len;
    size_t cap;
    bool failed;
} ops_buf_t;

static void ops_buf_printf(ops_buf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void ops_buf_printf(ops_buf_t *b, const char *fmt, ...)
{
    for (;;) {
        if (b->failed)
            return;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        assert(n >= 0);
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2;
        while (cap - b->len <= (size_t)n)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (grown == NULL) {
            b->failed = true;
            return;
        }
        b->data = grown;
        b->cap = cap;
    }
}

/* HELP text escapes backslash and newline (Prometheus text format 0.0.4). */
static void ops_render_help(ops_buf_t *b, const ops_metric_t *m)
{
    ops_buf_printf(b, "# HELP %.*s ", (int)m->family_len, m->name);
    for (const char *p = m->help; *p != '\0'; p++) {
        if (*p == '\\')
            ops_buf_printf(b, "\\\\");
        else if (*p == '\n')
            ops_buf_printf(b, "\\n");
        else
            ops_buf_printf(b, "%c", *p);
    }
    ops_buf_printf(b, "\n# TYPE %.*s %s\n", (int)m->family_len, m->name,
                   ops_metric_kind_names[m->kind]);
}

/* Writes family+suffix then the labels, with extra ("le=\"0.1\"") merged in last:
 * name{a="b"} -> name_bucket{a="b",le="0.1"}; name -> name_bucket{le="0.1"}. */
static void ops_render_series(ops_buf_t *b, const ops_metric_t *m, const char *suffix,
                              const char *extra)
{
    const char *labels = m->name + m->family_len; /* "" or "{...}" */
    size_t labels_len = strlen(labels);
    ops_buf_printf(b, "%.*s%s", (int)m->family_len, m->name, suffix);
    if (extra == NULL)
        ops_buf_printf(b, "%s", labels);
    else if (labels_len == 0)
        ops_buf_printf(b, "{%s}", extra);
    else
        ops_buf_printf(b, "%.*s,%s}", (int)(labels_len - 1), labels, extra);
}

static void ops_render_histogram(ops_buf_t *b, const ops_metric_t *m)
{
    const struct ops_histogram *h = &m->histogram;
    uint64_t cumulative = 0;
    char le[32];
    for (size_t i = 0; i < OPS_HISTOGRAM_SLOTS; i++) {
        cumulative +=
            atomic_load_explicit((atomic_uint_fast64_t *)&h->buckets[i], memory_order_relaxed);
        snprintf(le, sizeof le, "le=\"%s\"",
                 i < OPS_HISTOGRAM_BOUNDS ? ops_histogram_bounds[i].text : "+Inf");
        ops_render_series(b, m, "_bucket", le);
        ops_buf_printf(b, " %" PRIu64 "\n", cumulative);
    }
    uint64_t sum_ns =
        atomic_load_explicit((atomic_uint_fast64_t *)&h->sum_ns, memory_order_relaxed);
    ops_render_series(b, m, "_sum", NULL);
    ops_buf_printf(b, " %" PRIu64 ".%09" PRIu64 "\n", sum_ns / OPS_NS_PER_S, sum_ns % OPS_NS_PER_S);
    ops_render_series(b, m, "_count", NULL);
    ops_buf_printf(b, " %" PRIu64 "\n", cumulative);
}

static void ops_render_sample(ops_buf_t *b, const ops_metric_t *m)
{
    switch (m->kind) {
    case OPS_METRIC_COUNTER:
        ops_render_series(b, m, "", NULL);
        ops_buf_printf(b, " %" PRIu64 "\n", ops_counter_value(&m->counter));
        break;
    case OPS_METRIC_GAUGE:
        ops_render_series(b, m, "", NULL);
        ops_buf_printf(b, " %" PRId64 "\n", ops_gauge_value(&m->gauge));
        break;
    case OPS_METRIC_HISTOGRAM:
        ops_render_histogram(b, m);
        break;
    }
}

static bool ops_same_family(const ops_metric_t *a, const ops_metric_t *b)
{
    return a->family_len == b->family_len && memcmp(a->name, b->name, a->family_len) == 0;
}

/* Families come out in the order their first member was registered, each with one HELP and
 * one TYPE line followed by all its series, as the text format requires. */
char *ops_metrics_render(void)
{
    size_t count = atomic_load_explicit(&ops_metrics_count, memory_order_acquire);
    ops_buf_t b = {.data = malloc(OPS_METRICS_RENDER_INITIAL),
                   .len = 0,
                   .cap = OPS_METRICS_RENDER_INITIAL,
                   .failed = false};
    if (b.data == NULL)
        return NULL;
    b.data[0] = '\0';
    bool done[OPS_METRICS_MAX] = {false};
    for (size_t i = 0; i < count; i++) {
        if (done[i])
            continue;
        ops_render_help(&b, &ops_metrics[i]);
        for (size_t j = i; j < count; j++) {
            if (!done[j] && ops_same_family(&ops_metrics[i], &ops_metrics[j])) {
                ops_render_sample(&b, &ops_metrics[j]);
                done[j] = true;
            }
        }
    }
    if (b.failed) {
        free(b.data);
        return NULL;
    }
    return b.data;
}

/* ---- HTTP ---- */

static enum MHD_Result ops_http_reply(struct MHD_Connection *conn, unsigned status, char *body,
                                      size_t len, enum MHD_ResponseMemoryMode mode,
                                      const char *content_type)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, mode);
    if (resp == NULL) {
        if (mode == MHD_RESPMEM_MUST_FREE)
            free(body);
        return MHD_NO;
    }
    if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type) != MHD_YES) {
        MHD_destroy_response(resp);
        return MHD_NO;
    }
    enum MHD_Result rc = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return rc;
}

static enum MHD_Result ops_http_text(struct MHD_Connection *conn, unsigned status, const char *text)
{
    return ops_http_reply(conn, status, (char *)text, strlen(text), MHD_RESPMEM_MUST_COPY,
                          "text/plain; charset=utf-8");
}

static enum MHD_Result ops_http_healthz(const ops_http_t *http, struct MHD_Connection *conn)
{
    char why[OPS_HEALTH_WHY_MAX] = "";
    if (http->health == NULL || http->health(http->health_arg, why, sizeof why))
        return ops_http_text(conn, MHD_HTTP_OK, "ok\n");
    why[sizeof why - 1] = '\0'; /* the callback is not trusted to terminate it */
    char body[OPS_HEALTH_WHY_MAX + 2];
    snprintf(body, sizeof body, "%s\n", why[0] != '\0' ? why : "unhealthy");
    return ops_http_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, body);
}

static enum MHD_Result ops_http_metrics(struct MHD_Connection *conn)
{
    char *text = ops_metrics_render();
    if (text == NULL)
        return ops_http_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    return ops_http_reply(conn, MHD_HTTP_OK, text, strlen(text), MHD_RESPMEM_MUST_FREE,
                          "text/plain; version=0.0.4; charset=utf-8");
}

static enum MHD_Result ops_http_handle(void *cls, struct MHD_Connection *conn, const char *url,
                                       const char *method, const char *version,
                                       const char *upload_data, size_t *upload_data_size,
                                       void **req_cls)
{
    static int first_call_marker;
    const ops_http_t *http = cls;
    (void)version;
    (void)upload_data;
    assert(http != NULL);
    /* The first call only announces the headers; answer on the second, once any body has
     * been offered (and ignored: these endpoints take none). */
    if (*req_cls == NULL) {
        *req_cls = &first_call_marker;
        return MHD_YES;
    }
    if (*upload_data_size != 0) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    bool get =
        strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    if (strcmp(url, "/metrics") == 0 && get)
        return ops_http_metrics(conn);
    if (strcmp(url, "/healthz") == 0 && get)
        return ops_http_healthz(http, conn);
    if (strcmp(url, "/metrics") == 0 || strcmp(url, "/healthz") == 0)
        return ops_http_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");
    return ops_http_text(conn, MHD_HTTP_NOT_FOUND, "not found\n");
}

static void ops_http_log(void *cls, const char *fmt, va_list ap)
{
    char msg[OPS_HTTP_ERROR_MAX];
    (void)cls;
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    if (n < 0)
        return;
    size_t len = strlen(msg);
    while (len > 0 && msg[len - 1] == '\n')
        msg[--len] = '\0';
    /* At the descriptor limit libmicrohttpd says so on every accept it retries: 1.5 million
     * identical lines in a minute before this was limited (issue 21). */
    ops_log_limited(OPS_LOG_WARN, "http.error", NULL, "msg", msg, NULL);
}

int ops_http_start(uint16_t port, ops_health_fn *fn, void *arg, ops_http_t **out)
{
    assert(out != NULL);
    *out = NULL;
    if (port == 0)
        return 0;
    ops_http_t *http = calloc(1, sizeof *http);
    if (http == NULL)
        return QC_ENOMEM;
    http->health = fn;
    http->health_arg = arg;
    http->port = port;
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* The logger option must come first or MHD prints early errors its own way.
     * MHD_USE_AUTO picks epoll on Linux: select() would fail once the service has more
     * than FD_SETSIZE descriptors open (LMDB, ZeroMQ and clients add up). */
    http->daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG, port, NULL, NULL,
        ops_http_handle, http, MHD_OPTION_EXTERNAL_LOGGER, ops_http_log, NULL, MHD_OPTION_SOCK_ADDR,
        (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_LIMIT, (unsigned)OPS_HTTP_CONNECTIONS_MAX,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)OPS_HTTP_TIMEOUT_S, MHD_OPTION_END);
    if (http->daemon == NULL) {
        char port_text[8];
        snprintf(port_text, sizeof port_text, "%u", (unsigned)port);
        ops_log(OPS_LOG_ERROR, "http.bind_failed", "address", "127.0.0.1", "port", port_text, NULL);
        free(http);
        return QC_EIO;
    }
    *out = http;
    return 0;
}

void ops_http_stop(ops_http_t **http_p)
{
    assert(http_p != NULL);
    ops_http_t *http = *http_p;
    if (http == NULL)
        return;
    MHD_stop_daemon(http->daemon);
    free(http);
    *http_p = NULL;
}
