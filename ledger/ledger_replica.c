/* ledger_replica.c - one replica of a ledger shard's Raft group: libraft over raft_uv.
 *
 * Life of a replica's node, and the function performing each transition:
 *
 *   ledger_replica_new(): peers read, loop, transport, raft_uv, raft_init,
 *                         bootstrap (unless join or state), raft_start
 *   (none) ------------------------------------------------------------> RUNNING
 *   RUNNING --ledger_replica_destroy(): raft_close, wait for its callback--> CLOSED (freed)
 *
 * Invariants:
 *   1. Every libuv and libraft callback runs inside ledger_replica_run() or
 *      ledger_replica_destroy(), on the thread that owns the replica.
 *   2. Bootstrap writes a configuration only into a raft_dir with no state, only when join
 *      is false and the LMDB has applied nothing: a replica never starts a second history
 *      over data that came from the group's. */
#include "ledger_replica.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <raft.h>
#include <raft/uv.h>
#include <uv.h>

#include "ledger_raftnet.h"
#include "ops_config.h"
#include "ops_log.h"
#include "ops_time.h"
#include "qc_error.h"

#define REPLICA_LINE_MAX 1024
#define REPLICA_CLOSE_POLL_MS 10

struct ledger_replica {
    struct raft raft; /* first: libraft's data points back at us */
    struct raft_io io;
    struct raft_uv_transport transport;
    uv_loop_t loop;
    bool loop_ready, transport_ready, io_ready, raft_ready;
    bool closed;
    uint64_t id;
    char replicas_file[LEDGER_REPLICA_ADDRESS_MAX * 4];
    ledger_replica_peer_t peers[LEDGER_REPLICAS_MAX];
    size_t n_peers;
    ledger_fsm_t *fsm;
};

static int replica_links_update(ledger_replica_t *rep);

/* ------------------------------------------------------------ peer table */

int ledger_replica_parse_peer(const char *line, ledger_replica_peer_t *out)
{
    assert(line != NULL);
    assert(out != NULL);
    const char *p = line;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '#' || *p == '\n' || *p == '\r' || *p == '\0')
        return QC_ENOTFOUND;
    char id[32], addr[LEDGER_REPLICA_ADDRESS_MAX], ep[LEDGER_REPLICA_ADDRESS_MAX], key[64];
    char extra[2];
    int n = sscanf(p, "%31s %255s %255s %63s %1s", id, addr, ep, key, extra);
    if (n != 4)
        return QC_EDECODE;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(id, &end, 10);
    if (errno != 0 || end == id || *end != '\0' || v == 0 || id[0] == '-')
        return QC_EDECODE;
    if (strchr(addr, ':') == NULL || strncmp(ep, "tcp://", 6) != 0 ||
        strlen(key) != PROTO_CURVE_KEY_Z85_LEN)
        return QC_EDECODE;
    /* Both ports in 1..65535, as every port setting (a bad one would bind somewhere else). */
    char why[OPS_CONFIG_ERROR_MAX], tcp[LEDGER_REPLICA_ADDRESS_MAX + 8];
    snprintf(tcp, sizeof tcp, "tcp://%s", addr);
    if (!ops_config_check_endpoint(tcp, why, sizeof why) ||
        !ops_config_check_endpoint(ep, why, sizeof why))
        return QC_EDECODE;
    memset(out, 0, sizeof *out);
    out->id = v;
    snprintf(out->address, sizeof out->address, "%s", addr);
    snprintf(out->endpoint, sizeof out->endpoint, "%s", ep);
    memcpy(out->public_z85, key, PROTO_CURVE_KEY_Z85_LEN + 1); /* its length checked above */
    return 0;
}

/* Reads path into peers; every id once. Returns 0 or QC_ECONFIG (logged). */
static int peers_read(const char *path, ledger_replica_peer_t *peers, size_t *n_out)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        ops_log(OPS_LOG_ERROR, "ledger.replicas_file_unreadable", "path", path, "error",
                strerror(errno), NULL);
        return QC_ECONFIG;
    }
    char line[REPLICA_LINE_MAX];
    size_t n = 0;
    unsigned lineno = 0;
    int rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f) != NULL) {
        lineno++;
        ledger_replica_peer_t p;
        int prc = ledger_replica_parse_peer(line, &p);
        if (prc == QC_ENOTFOUND)
            continue;
        if (prc != 0 || n == LEDGER_REPLICAS_MAX) {
            ops_logf(OPS_LOG_ERROR, "ledger.replicas_file_invalid", "%s line %u: %s", path, lineno,
                     prc != 0 ? "want <id> <host:port> <tcp://host:port> <Z85 key>"
                              : "too many replicas");
            rc = QC_ECONFIG;
            break;
        }
        for (size_t i = 0; i < n; i++) {
            if (peers[i].id == p.id) {
                ops_logf(OPS_LOG_ERROR, "ledger.replicas_file_invalid",
                         "%s line %u: id %" PRIu64 " twice", path, lineno, p.id);
                rc = QC_ECONFIG;
            }
        }
        if (rc == 0)
            peers[n++] = p;
    }
    fclose(f);
    if (rc == 0 && n == 0) {
        ops_log(OPS_LOG_ERROR, "ledger.replicas_file_invalid", "path", path, "error",
                "no replica listed", NULL);
        rc = QC_ECONFIG;
    }
    if (rc == 0)
        *n_out = n;
    return rc;
}

const ledger_replica_peer_t *ledger_replica_peer(const ledger_replica_t *rep, uint64_t id)
{
    assert(rep != NULL);
    for (size_t i = 0; i < rep->n_peers; i++)
        if (rep->peers[i].id == id)
            return &rep->peers[i];
    return NULL;
}

int ledger_replica_reload(ledger_replica_t *rep)
{
    assert(rep != NULL);
    ledger_replica_peer_t *peers = calloc(LEDGER_REPLICAS_MAX, sizeof *peers);
    if (peers == NULL)
        return QC_ENOMEM;
    size_t n = 0;
    int rc = peers_read(rep->replicas_file, peers, &n);
    if (rc == 0) {
        memcpy(rep->peers, peers, n * sizeof *peers);
        rep->n_peers = n;
        ops_logf(OPS_LOG_INFO, "ledger.replicas_reloaded", "%zu replicas", n);
        rc = replica_links_update(rep);
    }
    free(peers);
    return rc;
}

int ledger_replica_add_peer(ledger_replica_t *rep, const ledger_replica_peer_t *peer)
{
    assert(rep != NULL);
    assert(peer != NULL);
    assert(peer->id > 0);
    bool found = false;
    for (size_t i = 0; i < rep->n_peers && !found; i++) {
        if (rep->peers[i].id == peer->id) {
            rep->peers[i] = *peer;
            found = true;
        }
    }
    if (!found && rep->n_peers == LEDGER_REPLICAS_MAX)
        return QC_EFULL;
    if (!found)
        rep->peers[rep->n_peers++] = *peer;
    return replica_links_update(rep);
}

/* ------------------------------------------------------------ start and stop */

/* The peer table as the replica links want it. */
static size_t raftnet_peers(const ledger_replica_t *rep, ledger_raftnet_peer_t *out)
{
    _Static_assert(LEDGER_RAFTNET_ADDRESS_MAX == LEDGER_REPLICA_ADDRESS_MAX, "one address limit");
    _Static_assert(LEDGER_RAFTNET_PEERS_MAX >= LEDGER_REPLICAS_MAX, "every replica linked");
    for (size_t i = 0; i < rep->n_peers; i++) {
        memset(&out[i], 0, sizeof out[i]);
        out[i].id = rep->peers[i].id;
        memcpy(out[i].address, rep->peers[i].address, sizeof out[i].address);
        memcpy(out[i].public_z85, rep->peers[i].public_z85, sizeof out[i].public_z85);
    }
    return rep->n_peers;
}

/* Tells the replica links the table changed (SIGHUP, add_replica). */
static int replica_links_update(ledger_replica_t *rep)
{
    if (!rep->transport_ready)
        return 0;
    ledger_raftnet_peer_t peers[LEDGER_REPLICAS_MAX];
    size_t n = raftnet_peers(rep, peers);
    int rc = ledger_raftnet_set_peers(&rep->transport, peers, n);
    if (rc != 0)
        ops_log(OPS_LOG_ERROR, "ledger.raft_peers_refused", "error", qc_strerror(rc), NULL);
    return rc;
}

/* The replica links: CURVE over ZeroMQ (ledger_raftnet.h), each replica with its own key,
 * only the replicas of the table admitted. (libraft's stock TCP transport, which neither
 * authenticates nor encrypts, served here until the links existed.) */
static int replica_transport_init(ledger_replica_t *rep, const ledger_replica_config_t *cfg)
{
    if (cfg->raft_key == NULL) {
        ops_log(OPS_LOG_ERROR, "ledger.raft_key_missing", "hint",
                "a replica needs raft_key: its own CURVE key pair for the replica links", NULL);
        return QC_ECONFIG;
    }
    proto_curve_keypair_t keys;
    int rc = proto_curve_keypair_load(cfg->raft_key, &keys);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "ledger.raft_key_invalid", "path", cfg->raft_key, NULL);
        return QC_ECONFIG;
    }
    const ledger_replica_peer_t *self = ledger_replica_peer(rep, rep->id);
    assert(self != NULL);
    if (strcmp(self->public_z85, keys.public_z85) != 0) {
        proto_curve_keypair_wipe(&keys);
        ops_logf(OPS_LOG_ERROR, "ledger.raft_key_mismatch",
                 "raft_key %s is not the key replicas_file lists for replica %" PRIu64,
                 cfg->raft_key, rep->id);
        return QC_ECONFIG;
    }
    ledger_raftnet_peer_t peers[LEDGER_REPLICAS_MAX];
    size_t n = raftnet_peers(rep, peers);
    rc = ledger_raftnet_init(&rep->transport, &rep->loop, &keys, peers, n);
    proto_curve_keypair_wipe(&keys);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "ledger.raft_transport_failed", "error", qc_strerror(rc), NULL);
        return rc == QC_ENOMEM ? QC_ENOMEM : QC_ECONFIG;
    }
    rep->transport_ready = true;
    return 0;
}

/* After raft_close() completed (or when raft never started the transport). */
static void replica_transport_close(ledger_replica_t *rep)
{
    if (rep->transport_ready)
        ledger_raftnet_close(&rep->transport);
    rep->transport_ready = false;
}

/* True when libraft has written its metadata into dir (its state exists). */
static bool raft_state_exists(const char *dir)
{
    static const char *const names[] = {"metadata1", "metadata2"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[LEDGER_REPLICA_ADDRESS_MAX * 4 + 16];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (stat(path, &st) == 0 && st.st_size > 0)
            return true;
    }
    return false;
}

static int replica_bootstrap(ledger_replica_t *rep)
{
    struct raft_configuration conf;
    raft_configuration_init(&conf);
    int rv = 0;
    for (size_t i = 0; rv == 0 && i < rep->n_peers; i++)
        rv = raft_configuration_add(&conf, rep->peers[i].id, rep->peers[i].address, RAFT_VOTER);
    if (rv == 0)
        rv = raft_bootstrap(&rep->raft, &conf);
    raft_configuration_close(&conf);
    if (rv != 0 && rv != RAFT_CANTBOOTSTRAP) {
        ops_log(OPS_LOG_ERROR, "ledger.raft_bootstrap_failed", "error", raft_strerror(rv), "detail",
                raft_errmsg(&rep->raft), NULL);
        return QC_EIO;
    }
    ops_logf(OPS_LOG_INFO, "ledger.raft_bootstrapped", "%zu voters", rep->n_peers);
    return 0;
}

/* Bootstrap, or not: see invariant 2. */
static int replica_first_start(ledger_replica_t *rep, const ledger_replica_config_t *cfg,
                               bool state_exists)
{
    if (state_exists)
        return 0;
    uint64_t applied = 0, applied_ms = 0;
    int rc = ledger_fsm_applied(cfg->fsm, &applied, &applied_ms);
    if (rc != 0)
        return rc;
    if (cfg->join) {
        ops_log(OPS_LOG_INFO, "ledger.raft_joining", "hint",
                "empty raft_dir and join = true: waiting for the leader's snapshot and log", NULL);
        return 0;
    }
    if (applied > 0) {
        ops_logf(OPS_LOG_WARN, "ledger.raft_not_bootstrapped",
                 "raft_dir %s is empty but the LMDB applied entries up to %" PRIu64
                 ": joining instead of bootstrapping a new history",
                 cfg->raft_dir, applied);
        return 0;
    }
    return replica_bootstrap(rep);
}

int ledger_replica_new(const ledger_replica_config_t *cfg, ledger_replica_t **out)
{
    assert(cfg != NULL);
    assert(out != NULL);
    *out = NULL;
    if (cfg->id == 0 || cfg->replicas_file == NULL || cfg->raft_dir == NULL || cfg->fsm == NULL ||
        strlen(cfg->replicas_file) >= sizeof((ledger_replica_t *)0)->replicas_file ||
        strlen(cfg->raft_dir) >= LEDGER_REPLICA_ADDRESS_MAX * 4)
        return QC_ECONFIG;
    ledger_replica_t *rep = calloc(1, sizeof *rep);
    if (rep == NULL)
        return QC_ENOMEM;
    rep->id = cfg->id;
    rep->fsm = cfg->fsm;
    snprintf(rep->replicas_file, sizeof rep->replicas_file, "%s", cfg->replicas_file);
    int rc = peers_read(cfg->replicas_file, rep->peers, &rep->n_peers);
    if (rc != 0)
        goto err;
    const ledger_replica_peer_t *self = ledger_replica_peer(rep, cfg->id);
    if (self == NULL) {
        ops_logf(OPS_LOG_ERROR, "ledger.replica_unknown",
                 "replica_id %" PRIu64 " is not listed in %s", cfg->id, cfg->replicas_file);
        rc = QC_ECONFIG;
        goto err;
    }
    if (mkdir(cfg->raft_dir, 0700) != 0 && errno != EEXIST) {
        ops_log(OPS_LOG_ERROR, "ledger.raft_dir_failed", "path", cfg->raft_dir, "error",
                strerror(errno), NULL);
        rc = QC_EIO;
        goto err;
    }
    bool state_exists = raft_state_exists(cfg->raft_dir);
    rc = QC_EIO;
    if (uv_loop_init(&rep->loop) != 0)
        goto err;
    rep->loop_ready = true;
    if ((rc = replica_transport_init(rep, cfg)) != 0)
        goto err;
    int rv = raft_uv_init(&rep->io, &rep->loop, cfg->raft_dir, &rep->transport);
    if (rv != 0) {
        ops_log(OPS_LOG_ERROR, "ledger.raft_io_failed", "path", cfg->raft_dir, "error",
                raft_strerror(rv), NULL);
        rc = QC_EIO;
        goto err;
    }
    rep->io_ready = true;
    rv = raft_init(&rep->raft, &rep->io, ledger_fsm_raft(cfg->fsm), cfg->id, self->address);
    if (rv != 0) {
        ops_log(OPS_LOG_ERROR, "ledger.raft_init_failed", "error", raft_strerror(rv), NULL);
        rc = QC_EIO;
        goto err;
    }
    rep->raft_ready = true;
    rep->raft.data = rep;
    ledger_fsm_bind(cfg->fsm, &rep->raft);
    raft_set_snapshot_threshold(&rep->raft, cfg->snapshot_threshold);
    raft_set_snapshot_trailing(&rep->raft, cfg->snapshot_trailing);
    /* A replica back from a partition or a restart must not depose a working leader. */
    raft_set_pre_vote(&rep->raft, true);
    if ((rc = replica_first_start(rep, cfg, state_exists)) != 0)
        goto err;
    rv = raft_start(&rep->raft);
    if (rv != 0) {
        ops_log(OPS_LOG_ERROR, "ledger.raft_start_failed", "error", raft_strerror(rv), "detail",
                raft_errmsg(&rep->raft), NULL);
        rc = QC_EIO;
        goto err;
    }
    ops_logf(OPS_LOG_INFO, "ledger.replica_started", "replica %" PRIu64 " at %s, %zu in the group",
             cfg->id, self->address, rep->n_peers);
    *out = rep;
    return 0;
err:
    ledger_replica_destroy(&rep);
    return rc;
}

static void replica_closed(struct raft *raft)
{
    ledger_replica_t *rep = raft->data;
    assert(rep != NULL);
    rep->closed = true;
}

/* Runs the loop until done() or ms passed. */
static void replica_spin(ledger_replica_t *rep, bool (*done)(ledger_replica_t *), uint64_t ms)
{
    uint64_t end = ops_time_mono_ms() + ms;
    while (!done(rep) && ops_time_mono_ms() < end) {
        struct pollfd p = {.fd = uv_backend_fd(&rep->loop), .events = POLLIN};
        (void)poll(&p, 1, REPLICA_CLOSE_POLL_MS);
        uv_run(&rep->loop, UV_RUN_NOWAIT);
    }
}

static bool is_closed(ledger_replica_t *rep)
{
    return rep->closed;
}

static bool loop_idle(ledger_replica_t *rep)
{
    return !uv_loop_alive(&rep->loop);
}

void ledger_replica_destroy(ledger_replica_t **rep_p)
{
    if (rep_p == NULL || *rep_p == NULL)
        return;
    ledger_replica_t *rep = *rep_p;
    if (rep->raft_ready) {
        rep->raft.data = rep;
        raft_close(&rep->raft, replica_closed);
        replica_spin(rep, is_closed, LEDGER_REPLICA_CLOSE_MS);
        if (!rep->closed)
            ops_log(OPS_LOG_WARN, "ledger.raft_close_slow", NULL);
    }
    if (rep->io_ready)
        raft_uv_close(&rep->io);
    replica_transport_close(rep);
    if (rep->loop_ready) {
        replica_spin(rep, loop_idle, LEDGER_REPLICA_CLOSE_MS);
        if (uv_loop_close(&rep->loop) != 0) {
            /* Handles still open: freeing the loop under them would be worse than the leak. */
            ops_log(OPS_LOG_WARN, "ledger.raft_loop_busy", NULL);
            *rep_p = NULL;
            return;
        }
    }
    free(rep);
    *rep_p = NULL;
}

/* ------------------------------------------------------------ running */

struct raft *ledger_replica_raft(ledger_replica_t *rep)
{
    assert(rep != NULL);
    return &rep->raft;
}

int ledger_replica_fd(const ledger_replica_t *rep)
{
    assert(rep != NULL);
    return uv_backend_fd(&rep->loop);
}

int ledger_replica_timeout_ms(const ledger_replica_t *rep)
{
    assert(rep != NULL);
    return uv_backend_timeout(&rep->loop);
}

void ledger_replica_run(ledger_replica_t *rep)
{
    assert(rep != NULL);
    uv_run(&rep->loop, UV_RUN_NOWAIT);
}

uint64_t ledger_replica_id(const ledger_replica_t *rep)
{
    assert(rep != NULL);
    return rep->id;
}

uint64_t ledger_replica_leader(ledger_replica_t *rep, const char **endpoint)
{
    assert(rep != NULL);
    assert(endpoint != NULL);
    raft_id id = 0;
    const char *address = NULL;
    raft_leader(&rep->raft, &id, &address);
    const ledger_replica_peer_t *p = id != 0 ? ledger_replica_peer(rep, id) : NULL;
    *endpoint = p != NULL ? p->endpoint : NULL;
    return id;
}
