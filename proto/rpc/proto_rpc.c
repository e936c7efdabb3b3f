/* proto_rpc.c - authenticated request/reply over ZeroMQ with CURVE, for services and devices.
 *
 * Server: one ROUTER socket per server, and one ZAP handler thread per zmq context shared by
 * every server of that context (libzmq looks for exactly one handler, at
 * inproc://zeromq.zap.01). The handler finds the server by the ZAP domain, which each server
 * socket sets to a name unique in its context (the service name, suffixed when taken).
 *
 * Client: one DEALER per endpoint, a table of calls in flight indexed by the low bits of the
 * request id, and the Lazy Pirate rule: when an attempt gets no answer, the socket of that
 * endpoint is closed and recreated (unless the endpoint answered something else meanwhile,
 * which proves it alive) and an idempotent call is resent to the next endpoint.
 *
 * Invariants of the client:
 *  1. A call slot is FREE, PENDING (waiting for a reply or for a send) or DONE (finished
 *     during proto_rpc_client_call() for another caller, parked until the next process()).
 *  2. A PENDING call with endpoint -1 has not been handed to libzmq (every socket refused it
 *     under ZMQ_IMMEDIATE), so resending it is safe even when it is not idempotent.
 *  3. calls[id & PROTO_RPC_SLOT_MASK].request_id == id for every call in flight; a reply whose
 *     id fails this test is late or forged and is dropped. */
#include "proto_rpc.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <zmq.h>

#include "ops_log.h"
#include "ops_metrics.h"
#include "ops_signal.h"
#include "ops_time.h"
#include "qc_error.h"

/* ZMQ_ZAP_ENFORCE_DOMAIN is a DRAFT option: zmq.h defines it only under ZMQ_BUILD_DRAFT_API,
 * so we set it by number. Debian's libzmq 4.3.4 (libzmq5 4.3.4-6) accepts it, reads it back as
 * 1 and enforces it: with no handler bound a CURVE client's message never reaches the server
 * (checked by hand on 2026-11-27). A libzmq that refuses it with EINVAL gets the fallback
 * described at rpc_server_harden(). */
#define PROTO_RPC_ZMQ_ZAP_ENFORCE_DOMAIN 93

#define PROTO_RPC_ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define PROTO_RPC_ZAP_POLL_MS 100       /* how often the handler looks at its stop flag */
#define PROTO_RPC_ZAP_SELFCHECK_MS 2000 /* the handler must answer the self-check by then */
#define PROTO_RPC_ZAP_SELFCHECK_ID "qc-selfcheck"
#define PROTO_RPC_ZAP_FIELD_MAX 256  /* any text frame of a ZAP request we keep */
#define PROTO_RPC_SERVICE_MAX 64     /* service names in logs, metrics, ZAP domains */
#define PROTO_RPC_ENDPOINT_MAX 256   /* one endpoint string */
#define PROTO_RPC_SEND_RETRY_MS 10   /* a call no socket accepted is offered again */
#define PROTO_RPC_REOPEN_MIN_MS 1000 /* a socket that cannot connect is reopened */
#define PROTO_RPC_SLOTS 4096         /* == PROTO_RPC_INFLIGHT_MAX, a power of two */
#define PROTO_RPC_SLOT_MASK (PROTO_RPC_SLOTS - 1)
#define PROTO_RPC_SLOT_BITS 12
#define PROTO_RPC_KEYFILE_LINE_MAX 256
#define PROTO_RPC_METRIC_NAME_MAX 160
/* RpcReply.message longer than proto_decode.c's PROTO_RPC_MESSAGE_MAX (1024, private there)
 * would make the client refuse the whole reply, so the server truncates to this. */
#define PROTO_RPC_REPLY_MESSAGE_MAX 1024

_Static_assert(PROTO_RPC_SLOTS == PROTO_RPC_INFLIGHT_MAX, "slot table sized to the limit");
_Static_assert((PROTO_RPC_SLOTS & PROTO_RPC_SLOT_MASK) == 0, "slots must be a power of two");
_Static_assert((1 << PROTO_RPC_SLOT_BITS) == PROTO_RPC_SLOTS, "slot bits match slots");

/* ---------------------------------------------------------------- helpers */

static ops_counter_t *rpc_counter(const char *name, const char *service, const char *help)
{
    char full[PROTO_RPC_METRIC_NAME_MAX];
    int n = snprintf(full, sizeof full, "%s{service=\"%s\"}", name, service);
    assert(n > 0 && (size_t)n < sizeof full);
    return ops_counter(full, help);
}

static int rpc_setsockopt_int(void *sock, int option, int value)
{
    return zmq_setsockopt(sock, option, &value, sizeof value);
}

/* Options every socket of this module shares: no lingering on close, the frame limit, and
 * heartbeats so a dead peer is noticed even when nothing is being sent. */
static int rpc_socket_common(void *sock)
{
    int64_t max = PROTO_RPC_FRAME_MAX;
    if (rpc_setsockopt_int(sock, ZMQ_LINGER, 0) != 0 ||
        zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &max, sizeof max) != 0 ||
        rpc_setsockopt_int(sock, ZMQ_HEARTBEAT_IVL, PROTO_RPC_HEARTBEAT_IVL_MS) != 0 ||
        rpc_setsockopt_int(sock, ZMQ_HEARTBEAT_TIMEOUT, PROTO_RPC_HEARTBEAT_TIMEOUT_MS) != 0 ||
        rpc_setsockopt_int(sock, ZMQ_HEARTBEAT_TTL, PROTO_RPC_HEARTBEAT_TIMEOUT_MS) != 0)
        return QC_EIO;
    return 0;
}

static bool rpc_z85_key_valid(const char *z85)
{
    uint8_t raw[32];
    if (strlen(z85) != PROTO_CURVE_KEY_Z85_LEN)
        return false;
    return zmq_z85_decode(raw, z85) != NULL;
}

/* A service name goes into metric labels, log lines and ZAP domains: letters, digits, '_',
 * '-' and '.', at most PROTO_RPC_SERVICE_MAX. */
static bool rpc_service_valid(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > PROTO_RPC_SERVICE_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-' || c == '.';
        if (!ok)
            return false;
    }
    return true;
}

/* Methods are what proto_decode_rpc() accepts: 1..PROTO_METHOD_MAX printable characters
 * without spaces. Anything else would be dropped by the server as malformed. */
static bool rpc_method_valid(const char *method)
{
    size_t len = strlen(method);
    if (len == 0 || len > PROTO_METHOD_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (method[i] < '!' || method[i] > '~')
            return false;
    return true;
}

/* Trims leading and trailing blanks in place; returns the start. */
static char *rpc_trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

/* ---------------------------------------------------------------- key pairs */

int proto_curve_keypair_load(const char *path, proto_curve_keypair_t *out)
{
    assert(path != NULL);
    assert(out != NULL);
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        ops_log(OPS_LOG_ERROR, "rpc.keys_unreadable", "path", path, "error", strerror(errno), NULL);
        return QC_EIO;
    }
    char line[PROTO_RPC_KEYFILE_LINE_MAX];
    int rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f) != NULL) {
        if (strchr(line, '\n') == NULL && !feof(f)) {
            rc = QC_ECONFIG; /* a truncated line is not a key */
            break;
        }
        char *s = rpc_trim(line);
        if (*s == '\0' || *s == '#')
            continue;
        char *eq = strchr(s, '=');
        if (eq == NULL) {
            rc = QC_ECONFIG;
            break;
        }
        *eq = '\0';
        char *key = rpc_trim(s);
        char *value = rpc_trim(eq + 1);
        char *dst = NULL;
        if (strcmp(key, "public") == 0)
            dst = out->public_z85;
        else if (strcmp(key, "secret") == 0)
            dst = out->secret_z85;
        if (dst == NULL || !rpc_z85_key_valid(value)) {
            rc = QC_ECONFIG;
            break;
        }
        memcpy(dst, value, PROTO_CURVE_KEY_Z85_LEN + 1);
    }
    OPENSSL_cleanse(line, sizeof line);
    if (ferror(f))
        rc = QC_EIO;
    fclose(f);
    if (rc == 0 && (out->public_z85[0] == '\0' || out->secret_z85[0] == '\0'))
        rc = QC_ECONFIG;
    if (rc == 0) {
        /* A public key that does not belong to the secret would make every handshake fail
         * far from the cause; catch it here. */
        char derived[PROTO_CURVE_KEY_Z85_LEN + 1];
        if (zmq_curve_public(derived, out->secret_z85) != 0 ||
            strcmp(derived, out->public_z85) != 0)
            rc = QC_ECONFIG;
    }
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "rpc.keys_invalid", "path", path, "error", qc_errname(rc), NULL);
        proto_curve_keypair_wipe(out);
        memset(out->public_z85, 0, sizeof out->public_z85);
    }
    return rc;
}

static int rpc_write_file(const char *path, mode_t mode, const char *text)
{
    /* O_EXCL: creating a key pair must never silently replace one in use. */
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        return QC_EIO;
    int rc = 0;
    if (fchmod(fd, mode) != 0)
        rc = QC_EIO;
    size_t len = strlen(text);
    size_t done = 0;
    while (rc == 0 && done < len) {
        ssize_t n = write(fd, text + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            rc = QC_EIO;
        else
            done += (size_t)n;
    }
    if (rc == 0 && fsync(fd) != 0)
        rc = QC_EIO;
    if (close(fd) != 0)
        rc = QC_EIO;
    if (rc != 0)
        unlink(path);
    return rc;
}

int proto_curve_keypair_create(const char *path, proto_curve_keypair_t *out)
{
    assert(path != NULL);
    assert(out != NULL);
    memset(out, 0, sizeof *out);
    if (zmq_curve_keypair(out->public_z85, out->secret_z85) != 0)
        return QC_ECRYPTO;
    char text[2 * PROTO_RPC_KEYFILE_LINE_MAX];
    char pub_path[PATH_MAX];
    int n = snprintf(pub_path, sizeof pub_path, "%s.pub", path);
    if (n < 0 || (size_t)n >= sizeof pub_path) {
        proto_curve_keypair_wipe(out);
        return QC_EIO;
    }
    snprintf(text, sizeof text,
             "# quancun CURVE key pair: keep secret, mode 0600\npublic = %s\nsecret = %s\n",
             out->public_z85, out->secret_z85);
    int rc = rpc_write_file(path, S_IRUSR | S_IWUSR, text);
    OPENSSL_cleanse(text, sizeof text);
    if (rc == 0) {
        /* The .pub file is one bare key line so allow-lists can be built by concatenation. */
        snprintf(text, sizeof text, "%s\n", out->public_z85);
        rc = rpc_write_file(pub_path, S_IRUSR | S_IWUSR | S_IRGRP | S_IROTH, text);
        if (rc != 0)
            unlink(path);
    }
    if (rc != 0)
        proto_curve_keypair_wipe(out);
    return rc;
}

void proto_curve_keypair_wipe(proto_curve_keypair_t *kp)
{
    if (kp != NULL)
        OPENSSL_cleanse(kp->secret_z85, sizeof kp->secret_z85);
}

/* ---------------------------------------------------------------- decoding */

/* ---------------------------------------------------------------- ZAP handler */

/* What the ZAP handler knows about one server: its domain and its allow-list. */
typedef struct rpc_zap_domain {
    char name[PROTO_RPC_SERVICE_MAX + 16];
    char service[PROTO_RPC_SERVICE_MAX + 1];
    bool allow_any;
    uint8_t (*keys)[32];
    size_t key_count;
    ops_counter_t *refused;
    struct rpc_zap_domain *next;
} rpc_zap_domain_t;

/* One handler per zmq context. */
typedef struct rpc_zap {
    void *ctx;
    void *sock; /* owned by the thread once it runs */
    pthread_t thread;
    atomic_bool stop;
    pthread_mutex_t lock; /* guards domains */
    rpc_zap_domain_t *domains;
    int refs;
    struct rpc_zap *next;
} rpc_zap_t;

static pthread_mutex_t rpc_zap_registry_lock = PTHREAD_MUTEX_INITIALIZER;
static rpc_zap_t *rpc_zap_registry;

/* Receives one frame of at most cap-1 bytes as text; longer frames are truncated and
 * flagged. Returns the frame length or -1 (with *more cleared). */
static int rpc_zap_recv_text(void *sock, char *buf, size_t cap, bool *more)
{
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    int n = zmq_msg_recv(&msg, sock, 0);
    if (n < 0) {
        zmq_msg_close(&msg);
        *more = false;
        return -1;
    }
    size_t len = zmq_msg_size(&msg);
    size_t copy = len < cap - 1 ? len : cap - 1;
    memcpy(buf, zmq_msg_data(&msg), copy);
    buf[copy] = '\0';
    *more = zmq_msg_more(&msg) != 0;
    zmq_msg_close(&msg);
    return (int)len;
}

static void rpc_zap_send_reply(void *sock, const char *request_id, const char *status,
                               const char *text, const char *user_id)
{
    const char *frames[] = {"1.0", request_id, status, text, user_id, ""};
    size_t count = sizeof frames / sizeof frames[0];
    for (size_t i = 0; i < count; i++) {
        int flags = i + 1 < count ? ZMQ_SNDMORE : 0;
        if (zmq_send(sock, frames[i], strlen(frames[i]), flags) < 0) {
            ops_log(OPS_LOG_ERROR, "rpc.zap_send_failed", "error", zmq_strerror(zmq_errno()), NULL);
            return;
        }
    }
}

/* Decides one request: returns true when the key may connect to domain. */
static bool rpc_zap_admit(rpc_zap_t *zap, const char *domain, const uint8_t key[32], char *service,
                          size_t service_cap, ops_counter_t **refused)
{
    bool ok = false;
    pthread_mutex_lock(&zap->lock);
    for (rpc_zap_domain_t *d = zap->domains; d != NULL; d = d->next) {
        if (strcmp(d->name, domain) != 0)
            continue;
        snprintf(service, service_cap, "%s", d->service);
        *refused = d->refused;
        ok = d->allow_any;
        for (size_t i = 0; !ok && i < d->key_count; i++)
            ok = CRYPTO_memcmp(d->keys[i], key, 32) == 0;
        break;
    }
    pthread_mutex_unlock(&zap->lock);
    return ok;
}

/* Handles one ZAP request (RFC 27) waiting on the socket. */
static void rpc_zap_handle(rpc_zap_t *zap)
{
    char version[PROTO_RPC_ZAP_FIELD_MAX], request_id[PROTO_RPC_ZAP_FIELD_MAX];
    char domain[PROTO_RPC_ZAP_FIELD_MAX], address[PROTO_RPC_ZAP_FIELD_MAX];
    char identity[PROTO_RPC_ZAP_FIELD_MAX], mechanism[PROTO_RPC_ZAP_FIELD_MAX];
    char *fields[] = {version, request_id, domain, address, identity, mechanism};
    size_t nfields = sizeof fields / sizeof fields[0];
    uint8_t key[32];
    size_t key_len = 0;
    bool more = true;
    bool well_formed = true;
    for (size_t i = 0; i < nfields; i++) {
        fields[i][0] = '\0';
        if (more && rpc_zap_recv_text(zap->sock, fields[i], PROTO_RPC_ZAP_FIELD_MAX, &more) < 0)
            well_formed = false;
    }
    if (!more)
        well_formed = false;
    /* Credentials, then anything else a peer of libzmq might have added: drained. */
    int frame = 0;
    while (more) {
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, zap->sock, 0) < 0) {
            zmq_msg_close(&msg);
            well_formed = false;
            break;
        }
        if (frame == 0 && zmq_msg_size(&msg) == sizeof key) {
            memcpy(key, zmq_msg_data(&msg), sizeof key);
            key_len = sizeof key;
        }
        frame++;
        more = zmq_msg_more(&msg) != 0;
        zmq_msg_close(&msg);
    }
    char key_z85[PROTO_CURVE_KEY_Z85_LEN + 1] = "";
    if (key_len == sizeof key && zmq_z85_encode(key_z85, key, sizeof key) == NULL)
        key_z85[0] = '\0';
    bool selfcheck = strcmp(request_id, PROTO_RPC_ZAP_SELFCHECK_ID) == 0;
    char service[PROTO_RPC_SERVICE_MAX + 1] = "";
    ops_counter_t *refused = NULL;
    const char *reason = NULL;
    if (!well_formed || strcmp(version, "1.0") != 0)
        reason = "malformed ZAP request";
    else if (strcmp(mechanism, "CURVE") != 0 || key_z85[0] == '\0')
        reason = "not CURVE";
    else if (!rpc_zap_admit(zap, domain, key, service, sizeof service, &refused))
        reason = refused != NULL ? "key not allowed" : "unknown ZAP domain";
    if (reason == NULL) {
        rpc_zap_send_reply(zap->sock, request_id, "200", "OK", key_z85);
        return;
    }
    if (!selfcheck) {
        if (refused == NULL)
            refused = rpc_counter("qc_rpc_refused_total", "unknown",
                                  "CURVE clients refused by the ZAP handler");
        ops_counter_add(refused, 1);
        ops_log(OPS_LOG_WARN, "rpc.refused", "rpc_service", service[0] ? service : domain, "peer",
                address, "key", key_z85, "reason", reason, NULL);
    }
    rpc_zap_send_reply(zap->sock, request_id, "400", reason, "");
}

static void *rpc_zap_main(void *arg)
{
    rpc_zap_t *zap = arg;
    while (!atomic_load(&zap->stop)) {
        zmq_pollitem_t item = {zap->sock, 0, ZMQ_POLLIN, 0};
        int n = zmq_poll(&item, 1, PROTO_RPC_ZAP_POLL_MS);
        if (n < 0) {
            if (zmq_errno() == EINTR)
                continue;
            break; /* ETERM: the context is going away */
        }
        if (n > 0 && (item.revents & ZMQ_POLLIN))
            rpc_zap_handle(zap);
    }
    zmq_close(zap->sock);
    zap->sock = NULL;
    return NULL;
}

/* Asks the handler about a key for no domain and checks the answer is a well-formed 400
 * for our request id: proof that a handler is bound and answering before any server binds. */
static int rpc_zap_selfcheck(void *ctx)
{
    void *req = zmq_socket(ctx, ZMQ_REQ);
    if (req == NULL)
        return QC_EIO;
    int rc = QC_EIO;
    uint8_t key[32] = {0};
    if (rpc_setsockopt_int(req, ZMQ_LINGER, 0) != 0 ||
        rpc_setsockopt_int(req, ZMQ_RCVTIMEO, PROTO_RPC_ZAP_SELFCHECK_MS) != 0 ||
        rpc_setsockopt_int(req, ZMQ_SNDTIMEO, PROTO_RPC_ZAP_SELFCHECK_MS) != 0 ||
        zmq_connect(req, PROTO_RPC_ZAP_ENDPOINT) != 0)
        goto out;
    const char *frames[] = {"1.0", PROTO_RPC_ZAP_SELFCHECK_ID, "", "127.0.0.1", "", "CURVE"};
    for (size_t i = 0; i < sizeof frames / sizeof frames[0]; i++)
        if (zmq_send(req, frames[i], strlen(frames[i]), ZMQ_SNDMORE) < 0)
            goto out;
    if (zmq_send(req, key, sizeof key, 0) < 0)
        goto out;
    char f[6][PROTO_RPC_ZAP_FIELD_MAX];
    bool more = true;
    for (int i = 0; i < 6; i++) {
        if (!more || rpc_zap_recv_text(req, f[i], sizeof f[i], &more) < 0)
            goto out;
    }
    if (!more && strcmp(f[0], "1.0") == 0 && strcmp(f[1], PROTO_RPC_ZAP_SELFCHECK_ID) == 0 &&
        strcmp(f[2], "400") == 0)
        rc = 0;
out:
    zmq_close(req);
    return rc;
}

/* Finds or starts the handler of ctx and takes a reference. Called with the registry lock
 * held. The handler's socket is bound here, in the caller's thread, so the bind has
 * happened before this returns; the self-check proves the thread answers. */
static int rpc_zap_acquire(void *ctx, rpc_zap_t **out)
{
    for (rpc_zap_t *z = rpc_zap_registry; z != NULL; z = z->next) {
        if (z->ctx == ctx) {
            z->refs++;
            *out = z;
            return 0;
        }
    }
    rpc_zap_t *zap = calloc(1, sizeof *zap);
    if (zap == NULL)
        return QC_ENOMEM;
    zap->ctx = ctx;
    atomic_init(&zap->stop, false);
    if (pthread_mutex_init(&zap->lock, NULL) != 0) {
        free(zap);
        return QC_ENOMEM;
    }
    zap->sock = zmq_socket(ctx, ZMQ_REP);
    if (zap->sock == NULL || rpc_setsockopt_int(zap->sock, ZMQ_LINGER, 0) != 0 ||
        zmq_bind(zap->sock, PROTO_RPC_ZAP_ENDPOINT) != 0) {
        /* EADDRINUSE: some other code already runs a handler in this context; we cannot
         * vouch for it, so refuse to serve rather than serve unauthenticated. */
        ops_log(OPS_LOG_ERROR, "rpc.zap_bind_failed", "error", zmq_strerror(zmq_errno()), NULL);
        if (zap->sock != NULL)
            zmq_close(zap->sock);
        pthread_mutex_destroy(&zap->lock);
        free(zap);
        return QC_EIO;
    }
    if (pthread_create(&zap->thread, NULL, rpc_zap_main, zap) != 0) {
        zmq_close(zap->sock);
        pthread_mutex_destroy(&zap->lock);
        free(zap);
        return QC_ENOMEM;
    }
    if (rpc_zap_selfcheck(ctx) != 0) {
        ops_log(OPS_LOG_ERROR, "rpc.zap_selfcheck_failed", NULL);
        atomic_store(&zap->stop, true);
        pthread_join(zap->thread, NULL);
        pthread_mutex_destroy(&zap->lock);
        free(zap);
        return QC_EIO;
    }
    zap->refs = 1;
    zap->next = rpc_zap_registry;
    rpc_zap_registry = zap;
    *out = zap;
    return 0;
}

/* Drops a reference; the last one stops the thread. Called with the registry lock held. */
static void rpc_zap_release(rpc_zap_t *zap)
{
    assert(zap->refs > 0);
    if (--zap->refs > 0)
        return;
    for (rpc_zap_t **p = &rpc_zap_registry; *p != NULL; p = &(*p)->next) {
        if (*p == zap) {
            *p = zap->next;
            break;
        }
    }
    assert(zap->domains == NULL);
    atomic_store(&zap->stop, true);
    pthread_join(zap->thread, NULL);
    pthread_mutex_destroy(&zap->lock);
    free(zap);
}

/* Adds d to zap under a domain name unique in the context: the service name, or
 * "service#N" when another server of the same service already uses it. */
static void rpc_zap_add_domain(rpc_zap_t *zap, rpc_zap_domain_t *d)
{
    pthread_mutex_lock(&zap->lock);
    for (int n = 1;; n++) {
        if (n == 1)
            snprintf(d->name, sizeof d->name, "%s", d->service);
        else
            snprintf(d->name, sizeof d->name, "%s#%d", d->service, n);
        bool taken = false;
        for (rpc_zap_domain_t *o = zap->domains; o != NULL; o = o->next)
            taken = taken || strcmp(o->name, d->name) == 0;
        if (!taken)
            break;
    }
    d->next = zap->domains;
    zap->domains = d;
    pthread_mutex_unlock(&zap->lock);
}

static void rpc_zap_remove_domain(rpc_zap_t *zap, rpc_zap_domain_t *d)
{
    pthread_mutex_lock(&zap->lock);
    for (rpc_zap_domain_t **p = &zap->domains; *p != NULL; p = &(*p)->next) {
        if (*p == d) {
            *p = d->next;
            break;
        }
    }
    pthread_mutex_unlock(&zap->lock);
}

/* Reads an allow-list: one Z85 key per line, blank lines and '#' comments ignored. */
static int rpc_allow_load(const char *path, rpc_zap_domain_t *d)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        ops_log(OPS_LOG_ERROR, "rpc.allow_unreadable", "path", path, "error", strerror(errno),
                NULL);
        return QC_ECONFIG;
    }
    int rc = 0;
    char line[PROTO_RPC_KEYFILE_LINE_MAX];
    size_t cap = 0;
    int lineno = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        lineno++;
        char *s = rpc_trim(line);
        if (*s == '\0' || *s == '#')
            continue;
        uint8_t key[32];
        if (strlen(s) != PROTO_CURVE_KEY_Z85_LEN || zmq_z85_decode(key, s) == NULL) {
            ops_logf(OPS_LOG_ERROR, "rpc.allow_invalid", "%s:%d: not a Z85 CURVE key", path,
                     lineno);
            rc = QC_ECONFIG;
            break;
        }
        if (d->key_count == PROTO_RPC_ALLOW_MAX) {
            ops_logf(OPS_LOG_ERROR, "rpc.allow_invalid", "%s: more than %d keys", path,
                     PROTO_RPC_ALLOW_MAX);
            rc = QC_ECONFIG;
            break;
        }
        if (d->key_count == cap) {
            size_t ncap = cap == 0 ? 16 : cap * 2;
            void *p = realloc(d->keys, ncap * sizeof d->keys[0]);
            if (p == NULL) {
                rc = QC_ENOMEM;
                break;
            }
            d->keys = p;
            cap = ncap;
        }
        memcpy(d->keys[d->key_count++], key, 32);
    }
    if (rc == 0 && ferror(f))
        rc = QC_ECONFIG;
    fclose(f);
    return rc;
}

/* ---------------------------------------------------------------- server */

struct proto_rpc_server {
    void *ctx;
    void *sock;
    rpc_zap_t *zap;
    rpc_zap_domain_t domain;
    ops_counter_t *requests;
    ops_counter_t *malformed;
    ops_counter_t *expired;
    ops_counter_t *unroutable;
    bool zap_enforced; /* libzmq took ZMQ_ZAP_ENFORCE_DOMAIN */
    char *allow_path;  /* re-read on SIGHUP; NULL with allow_any */
    uint64_t hup_seen;
};

/* Sets ZMQ_ZAP_ENFORCE_DOMAIN; *enforced tells whether libzmq took it. Without it, a CURVE
 * server whose ZAP handler is missing admits every client (the "Stonehouse" legacy mode), so
 * we fail closed another way as well, whatever libzmq says: proto_rpc_server_new() binds only
 * after the handler's socket is bound and the handler has answered a self-check, and the
 * handler lives until the last server of its context is closed (server sockets are closed
 * first). The handler thread leaves its loop only on stop or on context termination, both of
 * which also end the server, so it cannot silently vanish under a live server. */
static int rpc_server_harden(void *sock, bool *enforced)
{
    *enforced = rpc_setsockopt_int(sock, PROTO_RPC_ZMQ_ZAP_ENFORCE_DOMAIN, 1) == 0;
    if (*enforced || zmq_errno() == EINVAL)
        return 0;
    return QC_EIO;
}

static int rpc_server_socket_new(proto_rpc_server_t *srv, const proto_rpc_server_config_t *cfg)
{
    srv->sock = zmq_socket(srv->ctx, ZMQ_ROUTER);
    if (srv->sock == NULL)
        return QC_EIO;
    if (rpc_socket_common(srv->sock) != 0 ||
        rpc_setsockopt_int(srv->sock, ZMQ_CURVE_SERVER, 1) != 0 ||
        zmq_setsockopt(srv->sock, ZMQ_CURVE_SECRETKEY, cfg->keys->secret_z85,
                       PROTO_CURVE_KEY_Z85_LEN) != 0 ||
        zmq_setsockopt(srv->sock, ZMQ_ZAP_DOMAIN, srv->domain.name, strlen(srv->domain.name)) !=
            0 ||
        rpc_server_harden(srv->sock, &srv->zap_enforced) != 0 ||
        rpc_setsockopt_int(srv->sock, ZMQ_ROUTER_MANDATORY, 1) != 0 ||
        /* Per peer: a client never has more than PROTO_RPC_INFLIGHT_MAX calls out, so a
         * client that reads its replies is never dropped at the high-water mark. */
        rpc_setsockopt_int(srv->sock, ZMQ_SNDHWM, PROTO_RPC_INFLIGHT_MAX) != 0 ||
        rpc_setsockopt_int(srv->sock, ZMQ_RCVHWM, PROTO_RPC_INFLIGHT_MAX) != 0)
        return QC_ECONFIG;
    if (zmq_bind(srv->sock, cfg->endpoint) != 0) {
        ops_log(OPS_LOG_ERROR, "rpc.bind_failed", "rpc_service", cfg->service, "endpoint",
                cfg->endpoint, "error", zmq_strerror(zmq_errno()), NULL);
        return QC_EIO;
    }
    return 0;
}

int proto_rpc_server_new(void *ctx, const proto_rpc_server_config_t *cfg, proto_rpc_server_t **out)
{
    assert(ctx != NULL && cfg != NULL && out != NULL);
    assert(cfg->service != NULL && cfg->endpoint != NULL && cfg->keys != NULL);
    *out = NULL;
    if (!rpc_service_valid(cfg->service) || !rpc_z85_key_valid(cfg->keys->secret_z85) ||
        (cfg->allow_path == NULL) != cfg->allow_any)
        return QC_ECONFIG;
    proto_rpc_server_t *srv = calloc(1, sizeof *srv);
    if (srv == NULL)
        return QC_ENOMEM;
    srv->ctx = ctx;
    snprintf(srv->domain.service, sizeof srv->domain.service, "%s", cfg->service);
    srv->domain.allow_any = cfg->allow_any;
    srv->domain.refused = rpc_counter("qc_rpc_refused_total", cfg->service,
                                      "CURVE clients refused by the ZAP handler");
    srv->requests = rpc_counter("qc_rpc_requests_total", cfg->service, "requests received");
    srv->malformed = rpc_counter("qc_rpc_malformed_total", cfg->service,
                                 "frames dropped because they did not parse");
    srv->expired = rpc_counter("qc_rpc_expired_total", cfg->service,
                               "requests dropped because their deadline had passed");
    srv->unroutable = rpc_counter("qc_rpc_unroutable_total", cfg->service,
                                  "replies dropped because the client had gone");
    int rc = 0;
    srv->hup_seen = ops_signal_hup_generation();
    if (cfg->allow_path != NULL) {
        srv->allow_path = strdup(cfg->allow_path);
        if (srv->allow_path == NULL) {
            rc = QC_ENOMEM;
            goto err;
        }
        if ((rc = rpc_allow_load(cfg->allow_path, &srv->domain)) != 0)
            goto err;
    }
    pthread_mutex_lock(&rpc_zap_registry_lock);
    rc = rpc_zap_acquire(ctx, &srv->zap);
    if (rc == 0)
        rpc_zap_add_domain(srv->zap, &srv->domain);
    pthread_mutex_unlock(&rpc_zap_registry_lock);
    if (rc != 0)
        goto err;
    rc = rpc_server_socket_new(srv, cfg);
    if (rc != 0)
        goto err;
    ops_log(OPS_LOG_INFO, "rpc.listening", "rpc_service", cfg->service, "endpoint", cfg->endpoint,
            "zap_domain", srv->domain.name, "zap_enforce",
            srv->zap_enforced ? "libzmq" : "self-check", "allow",
            cfg->allow_any ? "any" : cfg->allow_path, NULL);
    *out = srv;
    return 0;
err:
    proto_rpc_server_destroy(&srv);
    return rc;
}

void *proto_rpc_server_socket(proto_rpc_server_t *srv)
{
    assert(srv != NULL);
    return srv->sock;
}

/* Reads the rest of a multipart message so the next recv starts on a boundary. */
static void rpc_drain(void *sock)
{
    int more = 0;
    size_t len = sizeof more;
    while (zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &len) == 0 && more) {
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        int n = zmq_msg_recv(&msg, sock, ZMQ_DONTWAIT);
        zmq_msg_close(&msg);
        if (n < 0)
            break;
        len = sizeof more;
    }
}

static void rpc_server_malformed(proto_rpc_server_t *srv, const char *why, const char *peer)
{
    ops_log(OPS_LOG_WARN, "rpc.malformed", "rpc_service", srv->domain.service, "peer", peer,
            "reason", why, NULL);
    ops_counter_add(srv->malformed, 1);
}

/* Reads one message without waiting. Returns 0 with *out set, 1 when a frame was dropped,
 * QC_ETIMEOUT when nothing was waiting, QC_EIO on context termination, QC_ENOMEM. */
static int rpc_server_recv_one(proto_rpc_server_t *srv, proto_rpc_request_t **out)
{
    zmq_msg_t rid, body;
    zmq_msg_init(&rid);
    if (zmq_msg_recv(&rid, srv->sock, ZMQ_DONTWAIT) < 0) {
        int e = zmq_errno();
        zmq_msg_close(&rid);
        return e == EAGAIN || e == EINTR ? QC_ETIMEOUT : QC_EIO;
    }
    /* The routing id is first; the peer's frame follows, and must be exactly one. */
    zmq_msg_init(&body);
    if (!zmq_msg_more(&rid) || zmq_msg_recv(&body, srv->sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&rid);
        zmq_msg_close(&body);
        rpc_server_malformed(srv, "no body frame", "");
        return 1;
    }
    const char *user = zmq_msg_gets(&body, "User-Id");
    const char *addr = zmq_msg_gets(&body, "Peer-Address");
    if (addr == NULL)
        addr = "";
    int rc = 1;
    proto_rpc_request_t *req = NULL;
    Quancun__Rpc *m = NULL;
    if (zmq_msg_more(&body)) {
        rpc_drain(srv->sock);
        rpc_server_malformed(srv, "more than one frame", addr);
        goto out;
    }
    if (zmq_msg_size(&rid) > PROTO_RPC_ROUTING_ID_MAX || user == NULL ||
        strlen(user) != PROTO_CURVE_KEY_Z85_LEN) {
        rpc_server_malformed(srv, "no routing id or peer key", addr);
        goto out;
    }
    int drc = proto_decode_rpc(zmq_msg_data(&body), zmq_msg_size(&body), &m);
    if (drc != 0) {
        rpc_server_malformed(srv, qc_errname(drc), addr);
        goto out;
    }
    ops_counter_add(srv->requests, 1);
    if (m->deadline_ms != 0 && m->deadline_ms < ops_time_wall_ms()) {
        ops_log(OPS_LOG_INFO, "rpc.expired", "rpc_service", srv->domain.service, "method",
                m->method, "peer", user, NULL);
        ops_counter_add(srv->expired, 1);
        goto out;
    }
    req = calloc(1, sizeof *req);
    if (req == NULL || (m->body.len > 0 && (req->body = malloc(m->body.len)) == NULL)) {
        rc = QC_ENOMEM;
        goto out;
    }
    memcpy(req->routing_id, zmq_msg_data(&rid), zmq_msg_size(&rid));
    req->routing_id_len = zmq_msg_size(&rid);
    memcpy(req->peer_key, user, PROTO_CURVE_KEY_Z85_LEN + 1);
    req->request_id = m->request_id;
    snprintf(req->method, sizeof req->method, "%s", m->method);
    req->deadline_ms = m->deadline_ms;
    if (m->body.len > 0)
        memcpy(req->body, m->body.data, m->body.len);
    req->body_len = m->body.len;
    *out = req;
    req = NULL;
    rc = 0;
out:
    proto_rpc_request_destroy(&req);
    if (m != NULL)
        quancun__rpc__free_unpacked(m, NULL);
    zmq_msg_close(&rid);
    zmq_msg_close(&body);
    return rc;
}

/* Re-reads the allow-list after a SIGHUP and swaps it in under the handler's lock. A file
 * that does not load keeps the current list: a typo must not lock every client out. */
static void rpc_server_reload(proto_rpc_server_t *srv)
{
    uint64_t gen = ops_signal_hup_generation();
    if (gen == srv->hup_seen || srv->allow_path == NULL)
        return;
    srv->hup_seen = gen;
    rpc_zap_domain_t fresh;
    memset(&fresh, 0, sizeof fresh);
    int rc = rpc_allow_load(srv->allow_path, &fresh);
    if (rc != 0) {
        ops_log(OPS_LOG_WARN, "rpc.allow_reload_failed", "rpc_service", srv->domain.service, "path",
                srv->allow_path, "error", qc_errname(rc), NULL);
        free(fresh.keys);
        return;
    }
    pthread_mutex_lock(&srv->zap->lock);
    uint8_t(*old)[32] = srv->domain.keys;
    srv->domain.keys = fresh.keys;
    srv->domain.key_count = fresh.key_count;
    pthread_mutex_unlock(&srv->zap->lock);
    free(old);
    char count[24];
    snprintf(count, sizeof count, "%zu", fresh.key_count);
    ops_log(OPS_LOG_INFO, "rpc.allow_reloaded", "rpc_service", srv->domain.service, "path",
            srv->allow_path, "keys", count, NULL);
}

int proto_rpc_server_recv(proto_rpc_server_t *srv, int timeout_ms, proto_rpc_request_t **out)
{
    assert(srv != NULL && out != NULL);
    assert(timeout_ms >= -1);
    *out = NULL;
    rpc_server_reload(srv);
    uint64_t end = ops_time_mono_ms() + (uint64_t)(timeout_ms < 0 ? 0 : timeout_ms);
    for (;;) {
        int rc = rpc_server_recv_one(srv, out);
        if (rc <= 0 && rc != QC_ETIMEOUT)
            return rc;
        if (rc == 1)
            continue; /* dropped a frame: look again at once */
        int wait = -1;
        if (timeout_ms >= 0) {
            uint64_t now = ops_time_mono_ms();
            if (now >= end)
                return QC_ETIMEOUT;
            wait = (int)(end - now);
        }
        zmq_pollitem_t item = {srv->sock, 0, ZMQ_POLLIN, 0};
        int n = zmq_poll(&item, 1, wait);
        if (n < 0 && zmq_errno() != EINTR)
            return QC_EIO;
        if (n < 0 && timeout_ms < 0 && ops_signal_stop_requested())
            return QC_ETIMEOUT; /* a stop request must end an endless wait */
    }
}

int proto_rpc_server_reply(proto_rpc_server_t *srv, const proto_rpc_request_t *req, int code,
                           const char *message, const uint8_t *body, size_t body_len)
{
    assert(srv != NULL && req != NULL);
    assert(code <= 0);
    assert(body != NULL || body_len == 0);
    Quancun__RpcReply r = QUANCUN__RPC_REPLY__INIT;
    r.request_id = req->request_id;
    r.code = code;
    char text[PROTO_RPC_REPLY_MESSAGE_MAX + 1];
    snprintf(text, sizeof text, "%s", message != NULL ? message : qc_strerror(code));
    r.message = text;
    r.body.data = (uint8_t *)body;
    r.body.len = body_len;
    size_t len = quancun__rpc_reply__get_packed_size(&r);
    if (len > PROTO_RPC_FRAME_MAX)
        return QC_ETOOBIG;
    zmq_msg_t msg;
    if (zmq_msg_init_size(&msg, len) != 0)
        return QC_ENOMEM;
    quancun__rpc_reply__pack(&r, zmq_msg_data(&msg));
    int rc = 0;
    if (zmq_send(srv->sock, req->routing_id, req->routing_id_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        int e = zmq_errno();
        if (e == EHOSTUNREACH || e == EAGAIN) {
            /* The client went away (or stopped reading): its retry, if any, will go
             * elsewhere. Not our error. */
            ops_counter_add(srv->unroutable, 1);
        } else {
            rc = QC_EIO;
        }
        zmq_msg_close(&msg);
        return rc;
    }
    if (zmq_msg_send(&msg, srv->sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&msg);
        ops_counter_add(srv->unroutable, 1);
    }
    return rc;
}

void proto_rpc_request_destroy(proto_rpc_request_t **req_p)
{
    assert(req_p != NULL);
    if (*req_p == NULL)
        return;
    free((*req_p)->body);
    free(*req_p);
    *req_p = NULL;
}

void proto_rpc_server_destroy(proto_rpc_server_t **srv_p)
{
    assert(srv_p != NULL);
    proto_rpc_server_t *srv = *srv_p;
    if (srv == NULL)
        return;
    /* Socket first: the handler must outlive every socket that relies on it. */
    if (srv->sock != NULL)
        zmq_close(srv->sock);
    if (srv->zap != NULL) {
        pthread_mutex_lock(&rpc_zap_registry_lock);
        rpc_zap_remove_domain(srv->zap, &srv->domain);
        rpc_zap_release(srv->zap);
        pthread_mutex_unlock(&rpc_zap_registry_lock);
    }
    free(srv->domain.keys);
    free(srv->allow_path);
    free(srv);
    *srv_p = NULL;
}

/* ---------------------------------------------------------------- client */

typedef enum rpc_call_state {
    RPC_CALL_FREE = 0,
    RPC_CALL_PENDING,
    RPC_CALL_DONE,
} rpc_call_state_t;

typedef struct rpc_call {
    rpc_call_state_t state;
    uint64_t request_id;
    int flags;
    void *tag;
    uint8_t *frame; /* the packed Rpc, kept for resends */
    size_t frame_len;
    uint64_t deadline_mono;
    uint64_t attempt_deadline_mono;
    uint64_t sent_mono;
    int attempt_ms;
    int retries;
    int endpoint; /* -1 while no socket took it */
    /* DONE: the outcome parked for the next process(). */
    int code;
    proto_rpc_reply_t *reply;
} rpc_call_t;

typedef struct rpc_endpoint {
    bool used;
    char addr[PROTO_RPC_ENDPOINT_MAX];
    void *sock;
    uint64_t last_rx_mono;
    uint64_t opened_mono;
    uint64_t refused_since; /* first send refused since the last one taken; 0 = none */
} rpc_endpoint_t;

struct proto_rpc_client {
    void *ctx;
    char service[PROTO_RPC_SERVICE_MAX + 1];
    char *endpoints_path;
    char server_public_z85[PROTO_CURVE_KEY_Z85_LEN + 1];
    proto_curve_keypair_t keys;
    rpc_endpoint_t endpoints[PROTO_RPC_ENDPOINTS_MAX];
    int rr; /* next endpoint to try */
    uint64_t hup_seen;
    rpc_call_t calls[PROTO_RPC_SLOTS];
    int free_slots[PROTO_RPC_SLOTS];
    int free_count;
    int inflight;
    int parked;
    uint64_t seq;
    ops_counter_t *late;
    ops_counter_t *retries;
    ops_counter_t *timeouts;
    ops_counter_t *recreated;
};

static int rpc_endpoint_open(proto_rpc_client_t *cli, rpc_endpoint_t *ep)
{
    assert(ep->used && ep->sock == NULL);
    ep->sock = zmq_socket(cli->ctx, ZMQ_DEALER);
    if (ep->sock == NULL)
        return QC_EIO;
    /* ZMQ_IMMEDIATE: a send to an endpoint with no live connection fails at once instead of
     * queueing, so failover does not wait for an attempt timeout. */
    if (rpc_socket_common(ep->sock) != 0 || rpc_setsockopt_int(ep->sock, ZMQ_IMMEDIATE, 1) != 0 ||
        rpc_setsockopt_int(ep->sock, ZMQ_SNDHWM, PROTO_RPC_INFLIGHT_MAX) != 0 ||
        rpc_setsockopt_int(ep->sock, ZMQ_RCVHWM, PROTO_RPC_INFLIGHT_MAX) != 0 ||
        zmq_setsockopt(ep->sock, ZMQ_CURVE_SERVERKEY, cli->server_public_z85,
                       PROTO_CURVE_KEY_Z85_LEN) != 0 ||
        zmq_setsockopt(ep->sock, ZMQ_CURVE_PUBLICKEY, cli->keys.public_z85,
                       PROTO_CURVE_KEY_Z85_LEN) != 0 ||
        zmq_setsockopt(ep->sock, ZMQ_CURVE_SECRETKEY, cli->keys.secret_z85,
                       PROTO_CURVE_KEY_Z85_LEN) != 0 ||
        zmq_connect(ep->sock, ep->addr) != 0) {
        ops_log(OPS_LOG_ERROR, "rpc.connect_failed", "rpc_service", cli->service, "endpoint",
                ep->addr, "error", zmq_strerror(zmq_errno()), NULL);
        zmq_close(ep->sock);
        ep->sock = NULL;
        return QC_ECONFIG;
    }
    ep->last_rx_mono = 0;
    ep->opened_mono = ops_time_mono_ms();
    ep->refused_since = 0;
    return 0;
}

static void rpc_endpoint_close(rpc_endpoint_t *ep)
{
    if (ep->sock != NULL)
        zmq_close(ep->sock);
    ep->sock = NULL;
}

/* Parses a list of endpoints (separated by commas or newlines, '#' comments in files) into
 * list. Returns the count, or QC_ECONFIG. */
static int rpc_endpoints_parse(char *text, char list[][PROTO_RPC_ENDPOINT_MAX])
{
    int count = 0;
    char *save = NULL;
    for (char *tok = strtok_r(text, ",\n", &save); tok != NULL;
         tok = strtok_r(NULL, ",\n", &save)) {
        char *s = rpc_trim(tok);
        if (*s == '\0' || *s == '#')
            continue;
        if (count == PROTO_RPC_ENDPOINTS_MAX || strlen(s) >= PROTO_RPC_ENDPOINT_MAX)
            return QC_ECONFIG;
        snprintf(list[count++], PROTO_RPC_ENDPOINT_MAX, "%s", s);
    }
    return count;
}

static int rpc_endpoints_read_file(const char *path, char list[][PROTO_RPC_ENDPOINT_MAX])
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return QC_ECONFIG;
    enum { FILE_MAX = PROTO_RPC_ENDPOINTS_MAX * (PROTO_RPC_ENDPOINT_MAX + 64) };
    char *text = calloc(1, FILE_MAX + 1);
    if (text == NULL) {
        fclose(f);
        return QC_ENOMEM;
    }
    size_t n = fread(text, 1, FILE_MAX + 1, f);
    int rc = ferror(f) || n > FILE_MAX ? QC_ECONFIG : 0;
    fclose(f);
    if (rc == 0) {
        text[n] = '\0';
        rc = rpc_endpoints_parse(text, list);
    }
    free(text);
    return rc;
}

static void rpc_call_finish(proto_rpc_client_t *cli, int slot, int code, proto_rpc_reply_t *reply,
                            proto_rpc_done_fn *done, void *arg);

/* Makes the endpoint set equal to list: closes sockets of endpoints no longer listed (their
 * idempotent calls are offered again elsewhere, the others end with QC_ETIMEOUT, since their
 * outcome is unknown) and connects new ones. */
static int rpc_endpoints_apply(proto_rpc_client_t *cli, char list[][PROTO_RPC_ENDPOINT_MAX],
                               int count, proto_rpc_done_fn *done, void *arg)
{
    int finished = 0;
    for (int e = 0; e < PROTO_RPC_ENDPOINTS_MAX; e++) {
        rpc_endpoint_t *ep = &cli->endpoints[e];
        if (!ep->used)
            continue;
        bool keep = false;
        for (int i = 0; i < count && !keep; i++)
            keep = strcmp(list[i], ep->addr) == 0;
        if (keep)
            continue;
        ops_log(OPS_LOG_INFO, "rpc.endpoint_removed", "rpc_service", cli->service, "endpoint",
                ep->addr, NULL);
        rpc_endpoint_close(ep);
        ep->used = false;
        for (int s = 0; s < PROTO_RPC_SLOTS; s++) {
            rpc_call_t *c = &cli->calls[s];
            if (c->state != RPC_CALL_PENDING || c->endpoint != e)
                continue;
            if (c->flags & PROTO_RPC_IDEMPOTENT) {
                c->endpoint = -1; /* offered again by the next tick */
                c->attempt_deadline_mono = 0;
            } else {
                rpc_call_finish(cli, s, QC_ETIMEOUT, NULL, done, arg);
                finished++;
            }
        }
    }
    for (int i = 0; i < count; i++) {
        bool have = false;
        for (int e = 0; e < PROTO_RPC_ENDPOINTS_MAX && !have; e++)
            have = cli->endpoints[e].used && strcmp(cli->endpoints[e].addr, list[i]) == 0;
        if (have)
            continue;
        for (int e = 0; e < PROTO_RPC_ENDPOINTS_MAX; e++) {
            rpc_endpoint_t *ep = &cli->endpoints[e];
            if (ep->used)
                continue;
            ep->used = true;
            snprintf(ep->addr, sizeof ep->addr, "%s", list[i]);
            if (rpc_endpoint_open(cli, ep) != 0)
                ep->used = false;
            else
                ops_log(OPS_LOG_INFO, "rpc.endpoint_added", "rpc_service", cli->service, "endpoint",
                        ep->addr, NULL);
            break;
        }
    }
    return finished;
}

/* Re-reads endpoints_path after a SIGHUP. A file that cannot be read or lists nothing
 * leaves the current set in place: a typo must not cut a service off. */
static int rpc_client_reload(proto_rpc_client_t *cli, proto_rpc_done_fn *done, void *arg)
{
    uint64_t gen = ops_signal_hup_generation();
    if (gen == cli->hup_seen || cli->endpoints_path == NULL)
        return 0;
    cli->hup_seen = gen;
    char list[PROTO_RPC_ENDPOINTS_MAX][PROTO_RPC_ENDPOINT_MAX];
    int count = rpc_endpoints_read_file(cli->endpoints_path, list);
    if (count <= 0) {
        ops_log(OPS_LOG_WARN, "rpc.endpoints_reload_failed", "rpc_service", cli->service, "path",
                cli->endpoints_path, "error", qc_errname(count == 0 ? QC_ECONFIG : count), NULL);
        return 0;
    }
    return rpc_endpoints_apply(cli, list, count, done, arg);
}

int proto_rpc_client_new(void *ctx, const proto_rpc_client_config_t *cfg, proto_rpc_client_t **out)
{
    assert(ctx != NULL && cfg != NULL && out != NULL);
    assert(cfg->service != NULL && cfg->keys != NULL && cfg->server_public_z85 != NULL);
    *out = NULL;
    if ((cfg->endpoints == NULL) == (cfg->endpoints_path == NULL) ||
        !rpc_service_valid(cfg->service) || !rpc_z85_key_valid(cfg->server_public_z85) ||
        !rpc_z85_key_valid(cfg->keys->public_z85) || !rpc_z85_key_valid(cfg->keys->secret_z85))
        return QC_ECONFIG;
    proto_rpc_client_t *cli = calloc(1, sizeof *cli);
    if (cli == NULL)
        return QC_ENOMEM;
    cli->ctx = ctx;
    snprintf(cli->service, sizeof cli->service, "%s", cfg->service);
    memcpy(cli->server_public_z85, cfg->server_public_z85, sizeof cli->server_public_z85);
    cli->keys = *cfg->keys;
    cli->hup_seen = ops_signal_hup_generation();
    for (int i = 0; i < PROTO_RPC_SLOTS; i++)
        cli->free_slots[i] = PROTO_RPC_SLOTS - 1 - i;
    cli->free_count = PROTO_RPC_SLOTS;
    cli->late = rpc_counter("qc_rpc_client_late_replies_total", cfg->service,
                            "replies dropped because no call waited for them");
    cli->retries = rpc_counter("qc_rpc_client_retries_total", cfg->service,
                               "idempotent calls resent after an attempt timed out");
    cli->timeouts =
        rpc_counter("qc_rpc_client_timeouts_total", cfg->service, "calls that got no reply");
    cli->recreated = rpc_counter("qc_rpc_client_sockets_recreated_total", cfg->service,
                                 "sockets closed and reopened after a silent endpoint");
    char list[PROTO_RPC_ENDPOINTS_MAX][PROTO_RPC_ENDPOINT_MAX];
    int count;
    if (cfg->endpoints_path != NULL) {
        cli->endpoints_path = strdup(cfg->endpoints_path);
        if (cli->endpoints_path == NULL) {
            proto_rpc_client_destroy(&cli);
            return QC_ENOMEM;
        }
        count = rpc_endpoints_read_file(cfg->endpoints_path, list);
    } else {
        char *text = strdup(cfg->endpoints);
        if (text == NULL) {
            proto_rpc_client_destroy(&cli);
            return QC_ENOMEM;
        }
        count = rpc_endpoints_parse(text, list);
        free(text);
    }
    if (count < 0) {
        proto_rpc_client_destroy(&cli);
        return count == QC_ENOMEM ? QC_ENOMEM : QC_ECONFIG;
    }
    rpc_endpoints_apply(cli, list, count, NULL, NULL);
    for (int i = 0; i < count; i++) {
        bool have = false;
        for (int e = 0; e < PROTO_RPC_ENDPOINTS_MAX && !have; e++)
            have = cli->endpoints[e].used && strcmp(cli->endpoints[e].addr, list[i]) == 0;
        if (!have) {
            proto_rpc_client_destroy(&cli);
            return QC_ECONFIG;
        }
    }
    *out = cli;
    return 0;
}

void proto_rpc_reply_destroy(proto_rpc_reply_t **reply_p)
{
    assert(reply_p != NULL);
    if (*reply_p == NULL)
        return;
    free((*reply_p)->message);
    free((*reply_p)->body);
    free(*reply_p);
    *reply_p = NULL;
}

static int rpc_endpoint_count(const proto_rpc_client_t *cli)
{
    int n = 0;
    for (int e = 0; e < PROTO_RPC_ENDPOINTS_MAX; e++)
        n += cli->endpoints[e].used && cli->endpoints[e].sock != NULL;
    return n;
}

/* Offers the call to the endpoints in round-robin order, starting after `avoid` when it is
 * set; the first socket that takes it wins. Returns true when one did. */
static bool rpc_call_transmit(proto_rpc_client_t *cli, rpc_call_t *c, int avoid, uint64_t now)
{
    int start = cli->rr;
    if (avoid >= 0)
        start = avoid + 1;
    for (int i = 0; i < PROTO_RPC_ENDPOINTS_MAX; i++) {
        int e = (start + i) % PROTO_RPC_ENDPOINTS_MAX;
        rpc_endpoint_t *ep = &cli->endpoints[e];
        if (!ep->used || ep->sock == NULL)
            continue;
        if (zmq_send(ep->sock, c->frame, c->frame_len, ZMQ_DONTWAIT) < 0) {
            if (ep->refused_since == 0) /* EAGAIN under ZMQ_IMMEDIATE: no live connection */
                ep->refused_since = now;
            continue;
        }
        cli->rr = (e + 1) % PROTO_RPC_ENDPOINTS_MAX;
        c->endpoint = e;
        ep->refused_since = 0;
        c->sent_mono = now;
        c->attempt_deadline_mono = now + (uint64_t)c->attempt_ms;
        if (c->attempt_deadline_mono > c->deadline_mono)
            c->attempt_deadline_mono = c->deadline_mono;
        return true;
    }
    c->endpoint = -1;
    c->attempt_deadline_mono = now + PROTO_RPC_SEND_RETRY_MS;
    if (c->attempt_deadline_mono > c->deadline_mono)
        c->attempt_deadline_mono = c->deadline_mono;
    return false;
}

int proto_rpc_client_send(proto_rpc_client_t *cli, const char *method, const uint8_t *body,
                          size_t body_len, int timeout_ms, int flags, void *tag,
                          uint64_t *request_id)
{
    assert(cli != NULL && method != NULL && request_id != NULL);
    assert(body != NULL || body_len == 0);
    assert(timeout_ms > 0);
    assert(rpc_method_valid(method));
    *request_id = 0;
    rpc_client_reload(cli, NULL, NULL);
    if (rpc_endpoint_count(cli) == 0)
        return QC_EUNAVAIL;
    if (cli->free_count == 0)
        return QC_EBUSY;
    int slot = cli->free_slots[cli->free_count - 1];
    rpc_call_t *c = &cli->calls[slot];
    assert(c->state == RPC_CALL_FREE);
    uint64_t id = (++cli->seq << PROTO_RPC_SLOT_BITS) | (uint64_t)slot;
    Quancun__Rpc m = QUANCUN__RPC__INIT;
    m.request_id = id;
    m.method = (char *)method;
    m.deadline_ms = ops_time_wall_ms() + (uint64_t)timeout_ms;
    m.body.data = (uint8_t *)body;
    m.body.len = body_len;
    size_t len = quancun__rpc__get_packed_size(&m);
    if (len > PROTO_RPC_FRAME_MAX)
        return QC_ETOOBIG;
    uint8_t *frame = malloc(len);
    if (frame == NULL)
        return QC_ENOMEM;
    quancun__rpc__pack(&m, frame);
    cli->free_count--;
    memset(c, 0, sizeof *c);
    c->state = RPC_CALL_PENDING;
    c->request_id = id;
    c->flags = flags;
    c->tag = tag;
    c->frame = frame;
    c->frame_len = len;
    uint64_t now = ops_time_mono_ms();
    c->deadline_mono = now + (uint64_t)timeout_ms;
    /* Non-idempotent calls get one attempt: the whole budget. */
    c->attempt_ms =
        (flags & PROTO_RPC_IDEMPOTENT) ? timeout_ms / (PROTO_RPC_RETRIES_MAX + 1) : timeout_ms;
    if (c->attempt_ms <= 0)
        c->attempt_ms = 1;
    c->endpoint = -1;
    cli->inflight++;
    rpc_call_transmit(cli, c, -1, now);
    *request_id = id;
    return 0;
}

int proto_rpc_client_pollitems(proto_rpc_client_t *cli, void *items, int cap)
{
    assert(cli != NULL && (items != NULL || cap == 0));
    zmq_pollitem_t *it = items;
    int n = 0;
    for (int e = 0; e < PROTO_RPC_ENDPOINTS_MAX && n < cap; e++) {
        if (!cli->endpoints[e].used || cli->endpoints[e].sock == NULL)
            continue;
        it[n].socket = cli->endpoints[e].sock;
        it[n].fd = 0;
        it[n].events = ZMQ_POLLIN;
        it[n].revents = 0;
        n++;
    }
    return n;
}

int proto_rpc_client_next_timeout_ms(const proto_rpc_client_t *cli)
{
    assert(cli != NULL);
    if (cli->parked > 0)
        return 0;
    if (cli->inflight == 0)
        return -1;
    uint64_t now = ops_time_mono_ms();
    uint64_t best = UINT64_MAX;
    for (int s = 0; s < PROTO_RPC_SLOTS; s++) {
        const rpc_call_t *c = &cli->calls[s];
        if (c->state == RPC_CALL_PENDING && c->attempt_deadline_mono < best)
            best = c->attempt_deadline_mono;
    }
    if (best == UINT64_MAX)
        return -1;
    return best <= now ? 0 : (int)(best - now);
}

int proto_rpc_client_inflight(const proto_rpc_client_t *cli)
{
    assert(cli != NULL);
    return cli->inflight + cli->parked;
}

static void rpc_call_release(proto_rpc_client_t *cli, int slot)
{
    rpc_call_t *c = &cli->calls[slot];
    free(c->frame);
    memset(c, 0, sizeof *c);
    assert(cli->free_count < PROTO_RPC_SLOTS);
    cli->free_slots[cli->free_count++] = slot;
}

/* Ends a PENDING call: hands the outcome to done, or parks it when done is NULL (during
 * proto_rpc_client_call(), for another caller's call). */
static void rpc_call_finish(proto_rpc_client_t *cli, int slot, int code, proto_rpc_reply_t *reply,
                            proto_rpc_done_fn *done, void *arg)
{
    rpc_call_t *c = &cli->calls[slot];
    assert(c->state == RPC_CALL_PENDING);
    cli->inflight--;
    if (code == QC_ETIMEOUT)
        ops_counter_add(cli->timeouts, 1);
    if (done == NULL) {
        c->state = RPC_CALL_DONE;
        c->code = code;
        c->reply = reply;
        free(c->frame);
        c->frame = NULL;
        cli->parked++;
        return;
    }
    void *tag = c->tag;
    rpc_call_release(cli, slot);
    done(arg, tag, code, reply);
}

static proto_rpc_reply_t *rpc_reply_from(const Quancun__RpcReply *m)
{
    proto_rpc_reply_t *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->request_id = m->request_id;
    r->code = m->code;
    r->message = strdup(m->message != NULL ? m->message : "");
    if (m->body.len > 0) {
        r->body = malloc(m->body.len);
        if (r->body != NULL)
            memcpy(r->body, m->body.data, m->body.len);
        r->body_len = m->body.len;
    }
    if (r->message == NULL || (m->body.len > 0 && r->body == NULL))
        proto_rpc_reply_destroy(&r);
    return r;
}

/* Reads every reply waiting on one endpoint. Returns the number of calls finished. */
static int rpc_endpoint_drain(proto_rpc_client_t *cli, int e, proto_rpc_done_fn *done, void *arg)
{
    rpc_endpoint_t *ep = &cli->endpoints[e];
    int finished = 0;
    while (ep->sock != NULL) {
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, ep->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&msg);
            break;
        }
        ep->last_rx_mono = ops_time_mono_ms();
        bool more = zmq_msg_more(&msg) != 0;
        Quancun__RpcReply *m = NULL;
        int drc =
            more ? QC_EDECODE : proto_decode_rpc_reply(zmq_msg_data(&msg), zmq_msg_size(&msg), &m);
        zmq_msg_close(&msg);
        if (more)
            rpc_drain(ep->sock);
        if (drc != 0) {
            ops_log(OPS_LOG_WARN, "rpc.reply_malformed", "rpc_service", cli->service, "endpoint",
                    ep->addr, "error", qc_errname(drc), NULL);
            continue;
        }
        int slot = (int)(m->request_id & PROTO_RPC_SLOT_MASK);
        rpc_call_t *c = &cli->calls[slot];
        if (c->state != RPC_CALL_PENDING || c->request_id != m->request_id) {
            ops_counter_add(cli->late, 1);
            quancun__rpc_reply__free_unpacked(m, NULL);
            continue;
        }
        proto_rpc_reply_t *r = rpc_reply_from(m);
        quancun__rpc_reply__free_unpacked(m, NULL);
        if (r == NULL)
            continue; /* out of memory: the call times out or is retried */
        rpc_call_finish(cli, slot, 0, r, done, arg);
        finished++;
    }
    return finished;
}

/* Lazy Pirate: closes and reopens the socket of an endpoint that stayed silent, so whatever
 * libzmq still queued for a dead peer is discarded. The other calls sent there are lost with
 * the socket: idempotent ones are offered again, the others end with QC_ETIMEOUT. */
static int rpc_endpoint_recreate(proto_rpc_client_t *cli, int e, proto_rpc_done_fn *done, void *arg)
{
    rpc_endpoint_t *ep = &cli->endpoints[e];
    int finished = 0;
    ops_log(OPS_LOG_WARN, "rpc.endpoint_silent", "rpc_service", cli->service, "endpoint", ep->addr,
            NULL);
    ops_counter_add(cli->recreated, 1);
    rpc_endpoint_close(ep);
    if (rpc_endpoint_open(cli, ep) != 0)
        ep->used = false;
    for (int s = 0; s < PROTO_RPC_SLOTS; s++) {
        rpc_call_t *c = &cli->calls[s];
        if (c->state != RPC_CALL_PENDING || c->endpoint != e)
            continue;
        if (c->flags & PROTO_RPC_IDEMPOTENT) {
            c->endpoint = -1;
            c->attempt_deadline_mono = 0;
        } else {
            rpc_call_finish(cli, s, QC_ETIMEOUT, NULL, done, arg);
            finished++;
        }
    }
    return finished;
}

/* Reopens every socket that has refused sends (no live connection) for
 * PROTO_RPC_REOPEN_MIN_MS and was opened at least that long ago. libzmq does not reconnect
 * after a handshake that ZAP refused (e.g. before our key was added to the allow-list), so
 * without this such a socket would stay dead for the life of the client. */
static int rpc_endpoints_reopen_stuck(proto_rpc_client_t *cli, uint64_t now,
                                      proto_rpc_done_fn *done, void *arg)
{
    int finished = 0;
    for (int e = 0; e < PROTO_RPC_ENDPOINTS_MAX; e++) {
        rpc_endpoint_t *ep = &cli->endpoints[e];
        /* A reply since the refusals began means the connection lives and the refusals
         * were the high-water mark, not a dead link. */
        if (ep->used && ep->sock != NULL && ep->refused_since != 0 &&
            ep->last_rx_mono < ep->refused_since &&
            now - ep->refused_since >= PROTO_RPC_REOPEN_MIN_MS &&
            now - ep->opened_mono >= PROTO_RPC_REOPEN_MIN_MS)
            finished += rpc_endpoint_recreate(cli, e, done, arg);
    }
    return finished;
}

/* Expires, resends, or re-offers every call whose attempt deadline passed. */
static int rpc_client_tick(proto_rpc_client_t *cli, proto_rpc_done_fn *done, void *arg)
{
    uint64_t now = ops_time_mono_ms();
    int finished = rpc_endpoints_reopen_stuck(cli, now, done, arg);
    for (int s = 0; s < PROTO_RPC_SLOTS; s++) {
        rpc_call_t *c = &cli->calls[s];
        if (c->state != RPC_CALL_PENDING || c->attempt_deadline_mono > now)
            continue;
        if (now >= c->deadline_mono) {
            rpc_call_finish(cli, s, QC_ETIMEOUT, NULL, done, arg);
            finished++;
            continue;
        }
        if (c->endpoint < 0) {
            rpc_call_transmit(cli, c, -1, now); /* never sent: always safe to offer again */
            continue;
        }
        if (!(c->flags & PROTO_RPC_IDEMPOTENT) || c->retries >= PROTO_RPC_RETRIES_MAX) {
            /* No more attempts: wait for a late reply until the call's deadline. */
            c->attempt_deadline_mono = c->deadline_mono;
            continue;
        }
        int e = c->endpoint;
        c->retries++;
        ops_counter_add(cli->retries, 1);
        /* An endpoint that answered anything since this call was sent is alive: keep its
         * socket (and the other calls on it) and only move this call. */
        if (cli->endpoints[e].last_rx_mono < c->sent_mono)
            finished += rpc_endpoint_recreate(cli, e, done, arg);
        if (c->state == RPC_CALL_PENDING)
            rpc_call_transmit(cli, c, e, now);
    }
    return finished;
}

static int rpc_client_deliver_parked(proto_rpc_client_t *cli, proto_rpc_done_fn *done, void *arg)
{
    int finished = 0;
    for (int s = 0; s < PROTO_RPC_SLOTS && cli->parked > 0; s++) {
        rpc_call_t *c = &cli->calls[s];
        if (c->state != RPC_CALL_DONE)
            continue;
        void *tag = c->tag;
        int code = c->code;
        proto_rpc_reply_t *reply = c->reply;
        cli->parked--;
        rpc_call_release(cli, s);
        done(arg, tag, code, reply);
        finished++;
    }
    return finished;
}

static int rpc_client_process(proto_rpc_client_t *cli, proto_rpc_done_fn *done, void *arg)
{
    int finished = rpc_client_reload(cli, done, arg);
    for (int e = 0; e < PROTO_RPC_ENDPOINTS_MAX; e++)
        if (cli->endpoints[e].used)
            finished += rpc_endpoint_drain(cli, e, done, arg);
    finished += rpc_client_tick(cli, done, arg);
    return finished;
}

int proto_rpc_client_process(proto_rpc_client_t *cli, proto_rpc_done_fn *done, void *arg)
{
    assert(cli != NULL && done != NULL);
    int finished = rpc_client_deliver_parked(cli, done, arg);
    return finished + rpc_client_process(cli, done, arg);
}

int proto_rpc_client_call(proto_rpc_client_t *cli, const char *method, const uint8_t *body,
                          size_t body_len, int timeout_ms, int flags, proto_rpc_reply_t **out)
{
    assert(cli != NULL && out != NULL);
    *out = NULL;
    uint64_t id = 0;
    int rc = proto_rpc_client_send(cli, method, body, body_len, timeout_ms, flags, NULL, &id);
    if (rc != 0)
        return rc;
    rpc_call_t *c = &cli->calls[id & PROTO_RPC_SLOT_MASK];
    for (;;) {
        rpc_client_process(cli, NULL, NULL);
        if (c->state == RPC_CALL_DONE && c->request_id == id)
            break;
        assert(c->state == RPC_CALL_PENDING && c->request_id == id);
        zmq_pollitem_t items[PROTO_RPC_ENDPOINTS_MAX];
        int n = proto_rpc_client_pollitems(cli, items, PROTO_RPC_ENDPOINTS_MAX);
        int wait = proto_rpc_client_next_timeout_ms(cli);
        /* Parked calls of other callers make next_timeout 0; wait on our own deadline. */
        uint64_t now = ops_time_mono_ms();
        int own = c->attempt_deadline_mono > now ? (int)(c->attempt_deadline_mono - now) : 0;
        if (cli->parked > 0 || wait < 0 || wait > own)
            wait = own;
        if (zmq_poll(items, n, wait) < 0 && zmq_errno() != EINTR)
            break;
    }
    if (c->state == RPC_CALL_PENDING)
        rpc_call_finish(cli, (int)(id & PROTO_RPC_SLOT_MASK), QC_ETIMEOUT, NULL, NULL, NULL);
    rc = QC_ETIMEOUT;
    if (c->state == RPC_CALL_DONE && c->request_id == id) {
        rc = c->code;
        *out = c->reply;
        cli->parked--;
        rpc_call_release(cli, (int)(id & PROTO_RPC_SLOT_MASK));
    }
    return rc;
}

void proto_rpc_client_destroy(proto_rpc_client_t **cli_p)
{
    assert(cli_p != NULL);
    proto_rpc_client_t *cli = *cli_p;
    if (cli == NULL)
        return;
    for (int e = 0; e < PROTO_RPC_ENDPOINTS_MAX; e++)
        rpc_endpoint_close(&cli->endpoints[e]);
    for (int s = 0; s < PROTO_RPC_SLOTS; s++) {
        free(cli->calls[s].frame);
        proto_rpc_reply_destroy(&cli->calls[s].reply);
    }
    proto_curve_keypair_wipe(&cli->keys);
    free(cli->endpoints_path);
    free(cli);
    *cli_p = NULL;
}
