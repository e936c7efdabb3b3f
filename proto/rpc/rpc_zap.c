/* rpc_zap.c - the ZAP handler that admits CURVE clients to the servers of one zmq context.
 *
 * A registry (under rpc_zap_registry_lock) holds one handler per context; each handler holds
 * the domains of its servers (under its own lock, since the handler thread reads them while
 * the servers' threads attach, detach and reload). */
#include "rpc_zap.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "ops_log.h"
#include "qc_error.h"

#define PROTO_RPC_ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define PROTO_RPC_ZAP_POLL_MS 100       /* how often the handler looks at its stop flag */
#define PROTO_RPC_ZAP_SELFCHECK_MS 2000 /* the handler must answer the self-check by then */
#define PROTO_RPC_ZAP_SELFCHECK_ID "qc-selfcheck"
#define PROTO_RPC_ZAP_FIELD_MAX 256 /* any text frame of a ZAP request we keep */

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
            ops_log_limited(OPS_LOG_ERROR, "rpc.zap_send_failed", NULL, "error",
                            zmq_strerror(zmq_errno()), NULL);
            return;
        }
    }
}

/* Decides one request: returns true when the key may connect to domain. */
static bool rpc_zap_admit(rpc_zap_t *zap, const char *domain,
                          const uint8_t key[PROTO_CURVE_KEY_SIZE], char *service,
                          size_t service_cap, ops_counter_t **refused)
{
    bool ok = false;
    pthread_mutex_lock(&zap->lock);
    for (rpc_zap_domain_t *d = zap->domains; d != NULL; d = d->next) {
        if (strcmp(d->name, domain) != 0)
            continue;
        snprintf(service, service_cap, "%s", d->service);
        *refused = d->refused;
        ok = d->allow_any || proto_curve_keylist_contains(&d->allow, key);
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
        /* Per key: a stranger retrying its handshake in a loop is a storm (issue 21). */
        ops_log_limited(OPS_LOG_WARN, "rpc.refused", key_z85[0] != '\0' ? key_z85 : address,
                        "rpc_service", service[0] ? service : domain, "address", address, "key",
                        key_z85, "reason", reason, NULL);
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

int rpc_zap_attach(void *ctx, rpc_zap_domain_t *d, rpc_zap_t **out)
{
    assert(ctx != NULL);
    assert(d != NULL);
    assert(out != NULL);
    pthread_mutex_lock(&rpc_zap_registry_lock);
    int rc = rpc_zap_acquire(ctx, out);
    if (rc == 0)
        rpc_zap_add_domain(*out, d);
    pthread_mutex_unlock(&rpc_zap_registry_lock);
    return rc;
}

void rpc_zap_detach(rpc_zap_t *zap, rpc_zap_domain_t *d)
{
    assert(zap != NULL);
    assert(d != NULL);
    pthread_mutex_lock(&rpc_zap_registry_lock);
    rpc_zap_remove_domain(zap, d);
    rpc_zap_release(zap);
    pthread_mutex_unlock(&rpc_zap_registry_lock);
}

void rpc_zap_swap_allow(rpc_zap_t *zap, rpc_zap_domain_t *d, proto_curve_keylist_t *fresh)
{
    assert(zap != NULL);
    assert(d != NULL);
    assert(fresh != NULL);
    pthread_mutex_lock(&zap->lock);
    proto_curve_keylist_t old = d->allow;
    d->allow = *fresh;
    pthread_mutex_unlock(&zap->lock);
    *fresh = old;
}
