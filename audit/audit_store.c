/* audit_store.c - the audit log's LMDB environment: append-only entries and their indexes.
 *
 * Online growth of the map. Three threads of qc-audit write (intake, relay, checkpoints) and
 * the intake also reads; LMDB lets mdb_env_set_mapsize run only while no transaction of the
 * process is open. So every transaction of a writable store opens and closes inside the
 * growth gate, held shared (gate_enter / gate_leave), and growth holds it exclusive
 * (store_grow): it waits until every open transaction ended, no new one starts meanwhile
 * (the lock prefers the writer, so a stream of readers cannot starve it), and when it lets go
 * every thread goes on in the larger map. Invariants:
 *   1. No transaction of a writable store is open outside the gate held shared.
 *   2. The map is resized only with the gate held exclusive, by a thread holding nothing else.
 *   3. An append that met a full map was aborted whole (nothing of it is in the log), so it is
 *      run again once, after growth; dedupe by (source, source_seq) holds besides.
 *   4. A thread nests read transactions (verify's walk reads entries inside its scan): the
 *      gate is taken once per thread and counted, never twice (it would wait behind a grower
 *      that waits for it).
 * A shared reader in another process (AUDIT_STORE_SHARED, qcctl's restore beside a running
 * qc-audit) meets a map grown past its own as MDB_MAP_RESIZED and adopts the new size under
 * its own gate, then reads on. */
#define _GNU_SOURCE /* pthread_rwlockattr_setkind_np: growth is not starved by readers */
#include "audit_store.h"

#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lmdb.h>
#include <openssl/crypto.h>

#include "ops_bytes.h"
#include "ops_lmdb.h"
#include "ops_log.h"
#include "ops_metrics.h"
#include "ops_storage.h"
#include "ops_store.h"
#include "ops_time.h"
#include "proto_id.h"
#include "proto_merkle.h"
#include "qc_error.h"

#define STORE_DBI_COUNT 6
#define STORE_SEQ_KEY_SIZE 8
#define STORE_DEDUPE_KEY_MAX (1 + AUDIT_SOURCE_MAX + 8)
#define STORE_FILE_MODE 0600
#define STORE_NODE_KEY_SIZE (1 + 8) /* level, be64(index) */
#define STORE_QC_CODE_MIN (-1000)   /* our codes are small negatives, LMDB's MDB_* below -30000 */

enum store_dbi {
    DBI_ENTRIES = 0,
    DBI_BY_TXN,
    DBI_DEDUPE,
    DBI_SOURCES,
    DBI_CHECKPOINTS,
    DBI_NODES,
};

static const char *const store_dbi_names[STORE_DBI_COUNT] = {
    "entries", "by_txn", "dedupe", "sources", "checkpoints", "nodes",
};

struct audit_store {
    MDB_env *env;
    MDB_dbi dbi[STORE_DBI_COUNT];
    bool rdonly;
    bool gated;             /* writable, or a shared reader: its transactions go through the gate */
    ops_storage_t *storage; /* writable stores: full disk and map as states (ops_storage.h) */
    atomic_int last_append_rc;
    pthread_rwlock_t gate;    /* writable stores: shared around each txn, exclusive to grow */
    pthread_mutex_t watch;    /* serializes ops_storage note, poll and grow (three writers) */
    _Atomic uint64_t map_gen; /* growths so far: an append that met a full map grows only
                               * when no other thread grew the map since its txn began */
    ops_histogram_t *m_pause; /* how long growth held every thread */
};

/* The gate this thread holds shared, and how many transactions it has open inside it. */
static _Thread_local const audit_store_t *gate_store;
static _Thread_local unsigned gate_depth;

static void gate_enter(audit_store_t *store)
{
    if (!store->gated)
        return; /* a copy read without a lock never changes */
    if (gate_depth > 0) {
        /* One writable store per thread at a time (invariant 4). */
        assert(gate_store == store);
        gate_depth++;
        return;
    }
    int rc = pthread_rwlock_rdlock(&store->gate);
    assert(rc == 0);
    gate_store = store;
    gate_depth = 1;
}

static void gate_leave(audit_store_t *store)
{
    if (!store->gated)
        return;
    assert(gate_depth > 0);
    assert(gate_store == store);
    if (--gate_depth > 0)
        return;
    gate_store = NULL;
    int rc = pthread_rwlock_unlock(&store->gate);
    assert(rc == 0);
}

static int tree_backfill(audit_store_t *store, MDB_txn *txn);
static int store_rc(const char *what, int rc);

/* Maps an LMDB error to our code space (ops_lmdb.h) and logs the unexpected ones. */
static int store_err(const char *what, int rc)
{
    return ops_lmdb_error("audit.lmdb", what, rc);
}

/* rc of a loop that mixes our codes and LMDB's (errno values and MDB_* codes). */
static int store_rc(const char *what, int rc)
{
    return rc > 0 || rc < STORE_QC_CODE_MIN ? store_err(what, rc) : rc;
}

int audit_store_open(const char *dir, unsigned flags, uint64_t map_size, audit_store_t **out)
{
    return audit_store_open_growing(dir, flags, map_size, 0, out);
}

/* The gate prefers its writer: a grower waits only for the transactions already open. */
static void store_locks_init(audit_store_t *store)
{
    pthread_rwlockattr_t attr;
    int rc = pthread_rwlockattr_init(&attr);
    assert(rc == 0);
    rc = pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    assert(rc == 0);
    rc = pthread_rwlock_init(&store->gate, &attr);
    assert(rc == 0);
    pthread_rwlockattr_destroy(&attr);
    rc = pthread_mutex_init(&store->watch, NULL);
    assert(rc == 0);
}

static void store_free(audit_store_t *store)
{
    pthread_rwlock_destroy(&store->gate);
    pthread_mutex_destroy(&store->watch);
    free(store);
}

int audit_store_open_growing(const char *dir, unsigned flags, uint64_t map_size, uint64_t map_max,
                             audit_store_t **out)
{
    assert(dir != NULL);
    assert(out != NULL);
    *out = NULL;
    bool rdonly = (flags & AUDIT_STORE_RDONLY) != 0;
    if (!rdonly && map_size < AUDIT_STORE_MAP_SIZE_MIN)
        return QC_EINVAL;
    if (!rdonly && map_max > AUDIT_STORE_MAP_SIZE_MAX)
        return QC_EINVAL;
    /* Before LMDB maps it: a missing copy, an empty or a truncated file is refused here, never
     * met as SIGBUS (ops_store.h). */
    char why[OPS_STORE_WHY_MAX];
    int frc = ops_store_check_file(dir, !rdonly, why, sizeof why);
    if (frc != 0) {
        ops_log(OPS_LOG_ERROR, "audit.store_refused", "dir", dir, "error", why, NULL);
        return frc;
    }
    audit_store_t *store = calloc(1, sizeof *store);
    if (store == NULL)
        return QC_ENOMEM;
    store_locks_init(store);
    store->rdonly = rdonly;
    store->gated = !rdonly || (flags & AUDIT_STORE_SHARED) != 0;
    /* A shared reader registers in lock.mdb, so a running qc-audit keeps the pages it reads. */
    bool shared = (flags & AUDIT_STORE_SHARED) != 0;
    unsigned envflags = MDB_NOTLS | (rdonly ? MDB_RDONLY | (shared ? 0 : MDB_NOLOCK) : 0);
    int rc = mdb_env_create(&store->env);
    if (rc != 0) {
        store_free(store);
        return store_err("env_create", rc);
    }
    if ((rc = mdb_env_set_maxdbs(store->env, STORE_DBI_COUNT)) != 0 ||
        (rc = mdb_env_set_maxreaders(store->env, AUDIT_STORE_READERS_MAX)) != 0 ||
        (!rdonly && (rc = mdb_env_set_mapsize(store->env, (size_t)map_size)) != 0) ||
        (rc = mdb_env_open(store->env, dir, envflags, STORE_FILE_MODE)) != 0) {
        ops_log(OPS_LOG_ERROR, "audit.store_open", "dir", dir, "error", mdb_strerror(rc), NULL);
        goto err;
    }
    MDB_txn *txn = NULL;
    if ((rc = mdb_txn_begin(store->env, NULL, rdonly ? MDB_RDONLY : 0, &txn)) != 0) {
        ops_log(OPS_LOG_ERROR, "audit.store_open", "dir", dir, "error", mdb_strerror(rc), NULL);
        goto err;
    }
    for (int i = 0; i < STORE_DBI_COUNT; i++) {
        unsigned dflags = rdonly ? 0 : MDB_CREATE;
        if (i == DBI_BY_TXN)
            dflags |= MDB_DUPSORT | MDB_DUPFIXED;
        if ((rc = mdb_dbi_open(txn, store_dbi_names[i], dflags, &store->dbi[i])) != 0) {
            ops_log(OPS_LOG_ERROR, "audit.store_open", "dir", dir, "db", store_dbi_names[i],
                    "error", mdb_strerror(rc), NULL);
            mdb_txn_abort(txn);
            goto err;
        }
    }
    if (!rdonly && (rc = tree_backfill(store, txn)) != 0) {
        ops_log(OPS_LOG_ERROR, "audit.store_open", "dir", dir, "error", qc_strerror(rc), NULL);
        mdb_txn_abort(txn);
        goto err;
    }
    if ((rc = mdb_txn_commit(txn)) != 0) {
        ops_log(OPS_LOG_ERROR, "audit.store_open", "dir", dir, "error", mdb_strerror(rc), NULL);
        goto err;
    }
    /* The map grows online up to map_max, its threads paused by the gate (top of the file);
     * at map_max a full map asks for a larger map_max_mb and a restart. */
    ops_storage_config_t stc = {.name = "audit",
                                .dir = dir,
                                .env = store->env,
                                .map_max = map_max,
                                .map_max_key = "map_max_mb"};
    if (!rdonly && ops_storage_new(&stc, &store->storage) != 0)
        goto err;
    if (!rdonly)
        store->m_pause = ops_histogram("qc_storage_map_grow_pause_seconds{store=\"audit\"}",
                                       "Time every thread of the store waited for a growth");
    *out = store;
    return 0;
err:
    mdb_env_close(store->env);
    store_free(store);
    return QC_EIO;
}

void audit_store_destroy(audit_store_t **store_p)
{
    if (store_p == NULL || *store_p == NULL)
        return;
    ops_storage_destroy(&(*store_p)->storage);
    mdb_env_close((*store_p)->env);
    store_free(*store_p);
    *store_p = NULL;
}

/* Grows the map with every thread of the store paused (invariant 2). gen is the map_gen the
 * caller saw before its failed append, or UINT64_MAX from the poll: when another thread grew
 * the map since, the caller simply tries again. Returns 0 (grown, or grown by another) or
 * ops_storage_grow()'s code. */
static int store_grow(audit_store_t *store, uint64_t gen)
{
    assert(gate_depth == 0); /* a thread holding the gate would wait for itself */
    uint64_t t0 = ops_time_mono_ns();
    int rc = pthread_rwlock_wrlock(&store->gate);
    assert(rc == 0);
    pthread_mutex_lock(&store->watch);
    if (gen != UINT64_MAX && atomic_load(&store->map_gen) != gen) {
        rc = 0;
    } else if ((rc = ops_storage_grow(store->storage)) == 0) {
        atomic_fetch_add(&store->map_gen, 1);
        QC_IGNORE(ops_storage_poll(store->storage, false)); /* MAP_FULL ends: the map grew */
    }
    pthread_mutex_unlock(&store->watch);
    int urc = pthread_rwlock_unlock(&store->gate);
    assert(urc == 0);
    ops_histogram_observe(store->m_pause, (double)(ops_time_mono_ns() - t0) / 1e9);
    return rc;
}

void audit_store_poll(audit_store_t *store)
{
    assert(store != NULL);
    if (store->storage == NULL)
        return;
    pthread_mutex_lock(&store->watch);
    QC_IGNORE(ops_storage_poll(store->storage, false)); /* its state is read by health */
    bool grow = ops_storage_wants_growth(store->storage);
    pthread_mutex_unlock(&store->watch);
    /* Before it is full: over OPS_STORAGE_GROW_PCT, so appends seldom meet a full map. At
     * map_max or on a full disk the state says so, and nothing is retried here. */
    if (grow)
        QC_IGNORE(store_grow(store, UINT64_MAX));
}

bool audit_store_healthy(audit_store_t *store, char *why, size_t why_cap)
{
    assert(store != NULL);
    if (store->storage != NULL && !ops_storage_healthy(store->storage, why, why_cap))
        return false;
    int rc = atomic_load(&store->last_append_rc);
    if (rc != 0) {
        snprintf(why, why_cap, "degraded: audit: the last append could not be committed: %s",
                 qc_strerror(rc));
        return false;
    }
    return true;
}

/* A shared reader beside a running qc-audit whose map grew past this process's: LMDB asks
 * for the new size to be adopted (mdb_env_set_mapsize 0) while no transaction of the process
 * is open, which the gate held exclusive guarantees. False when this thread holds the gate
 * (a nested read: the caller gets the error). */
static bool adopt_mapsize(audit_store_t *store)
{
    if (!store->rdonly || gate_depth > 0)
        return false;
    int rc = pthread_rwlock_wrlock(&store->gate);
    assert(rc == 0);
    rc = mdb_env_set_mapsize(store->env, 0);
    int urc = pthread_rwlock_unlock(&store->gate);
    assert(urc == 0);
    return rc == 0;
}

/* A read transaction inside the gate; read_end closes both. */
static int read_begin(audit_store_t *store, MDB_txn **txn)
{
    gate_enter(store);
    int rc = mdb_txn_begin(store->env, NULL, MDB_RDONLY, txn);
    if (rc == 0)
        return 0;
    gate_leave(store);
    if (rc == MDB_MAP_RESIZED && store->gated && adopt_mapsize(store)) {
        gate_enter(store);
        if ((rc = mdb_txn_begin(store->env, NULL, MDB_RDONLY, txn)) == 0)
            return 0;
        gate_leave(store);
    }
    return store_err("txn_begin", rc);
}

static void read_end(audit_store_t *store, MDB_txn *txn)
{
    mdb_txn_abort(txn);
    gate_leave(store);
}

/* Checks the stored record of seq, as every read of one does: it parses, carries seq, and
 * hashes to its stored hash (its chain hash is its checksum: audit_chain.h). A mismatch is
 * logged as audit.corrupt_entry naming the seq. Returns 0 or QC_ECORRUPT. */
static int entry_check(uint64_t seq, const MDB_val *v)
{
    audit_entry_t e;
    int rc = audit_chain_parse(v->mv_data, v->mv_size, &e);
    if (rc == 0 && e.seq != seq)
        rc = QC_EMISMATCH;
    if (rc == 0)
        rc = audit_chain_check(&e, e.prev_hash);
    if (rc == 0)
        return 0;
    char s[24];
    snprintf(s, sizeof s, "%" PRIu64, seq);
    ops_log(OPS_LOG_ERROR, "audit.corrupt_entry", "seq", s, "error",
            "the stored entry does not parse or hash to its stored hash: it is not what was "
            "written",
            NULL);
    return QC_ECORRUPT;
}

/* Seq and hash of the last entry inside txn (0 and zeros when empty). */
static int last_in(audit_store_t *store, MDB_txn *txn, uint64_t *seq, uint8_t hash[AUDIT_HASH_SIZE])
{
    MDB_cursor *cur = NULL;
    int rc = mdb_cursor_open(txn, store->dbi[DBI_ENTRIES], &cur);
    if (rc != 0)
        return store_err("cursor_open", rc);
    MDB_val k, v;
    rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND) {
        *seq = 0;
        memset(hash, 0, AUDIT_HASH_SIZE);
        return 0;
    }
    if (rc != 0)
        return store_err("last", rc);
    if (k.mv_size != STORE_SEQ_KEY_SIZE || v.mv_size < AUDIT_ENCODING_FIXED + AUDIT_HASH_SIZE)
        return QC_EDECODE;
    *seq = ops_be_get(k.mv_data, 8);
    /* The next append chains to this hash: a corrupt last entry is never built upon. */
    if ((rc = entry_check(*seq, &v)) != 0)
        return rc;
    memcpy(hash, (const uint8_t *)v.mv_data + v.mv_size - AUDIT_HASH_SIZE, AUDIT_HASH_SIZE);
    return 0;
}

static size_t dedupe_key(const char *source, size_t source_len, uint64_t source_seq,
                         uint8_t key[STORE_DEDUPE_KEY_MAX])
{
    assert(source_len <= AUDIT_SOURCE_MAX);
    key[0] = (uint8_t)source_len;
    memcpy(key + 1, source, source_len);
    ops_be_put(key + 1 + source_len, source_seq, 8);
    return 1 + source_len + 8;
}

static int get_u64(MDB_txn *txn, MDB_dbi dbi, const void *key, size_t key_len, uint64_t *v)
{
    MDB_val k = {.mv_size = key_len, .mv_data = (void *)key}, d;
    int rc = mdb_get(txn, dbi, &k, &d);
    if (rc != 0)
        return store_err("get", rc);
    if (d.mv_size != 8)
        return QC_EDECODE;
    *v = ops_be_get(d.mv_data, 8);
    return 0;
}

static int put_u64(MDB_txn *txn, MDB_dbi dbi, const void *key, size_t key_len, uint64_t v,
                   unsigned flags)
{
    uint8_t buf[8];
    ops_be_put(buf, v, 8);
    MDB_val k = {.mv_size = key_len, .mv_data = (void *)key};
    MDB_val d = {.mv_size = sizeof buf, .mv_data = buf};
    int rc = mdb_put(txn, dbi, &k, &d, flags);
    return rc == 0 ? 0 : store_err("put", rc);
}

/* ------------------------------------------------------------------ the Merkle tree */

static void node_key(unsigned level, uint64_t index, uint8_t key[STORE_NODE_KEY_SIZE])
{
    assert(level < PROTO_MERKLE_LEVELS_MAX);
    key[0] = (uint8_t)level;
    ops_be_put(key + 1, index, 8);
}

/* The stored hash of complete subtree (level, index) inside txn. A missing node is
 * QC_ENOTFOUND (the tree has fewer leaves), a malformed one QC_EDECODE. */
static int node_get(audit_store_t *store, MDB_txn *txn, unsigned level, uint64_t index,
                    uint8_t out[PROTO_MERKLE_HASH_SIZE])
{
    uint8_t key[STORE_NODE_KEY_SIZE];
    node_key(level, index, key);
    MDB_val k = {.mv_size = sizeof key, .mv_data = key}, v;
    int rc = mdb_get(txn, store->dbi[DBI_NODES], &k, &v);
    if (rc != 0)
        return store_err("get_node", rc);
    if (v.mv_size != PROTO_MERKLE_HASH_SIZE)
        return QC_EDECODE;
    memcpy(out, v.mv_data, PROTO_MERKLE_HASH_SIZE);
    return 0;
}

static int node_put(audit_store_t *store, MDB_txn *txn, unsigned level, uint64_t index,
                    const uint8_t hash[PROTO_MERKLE_HASH_SIZE])
{
    uint8_t key[STORE_NODE_KEY_SIZE];
    node_key(level, index, key);
    MDB_val k = {.mv_size = sizeof key, .mv_data = key};
    MDB_val d = {.mv_size = PROTO_MERKLE_HASH_SIZE, .mv_data = (void *)hash};
    int rc = mdb_put(txn, store->dbi[DBI_NODES], &k, &d, 0);
    return rc == 0 ? 0 : store_err("put_node", rc);
}

/* Adds entry seq as leaf seq - 1 (its hash over canonical, the stored record without its
 * chain hash) and every complete subtree it completes: one per trailing one bit of seq - 1. */
static int tree_append(audit_store_t *store, MDB_txn *txn, uint64_t seq, const uint8_t *canonical,
                       size_t len)
{
    assert(seq >= 1);
    uint64_t index = seq - 1;
    uint8_t h[PROTO_MERKLE_HASH_SIZE], left[PROTO_MERKLE_HASH_SIZE];
    int rc = proto_merkle_leaf_hash(canonical, len, h);
    unsigned level = 0;
    if (rc == 0)
        rc = node_put(store, txn, 0, index, h);
    while (rc == 0 && (index & 1) != 0) {
        if ((rc = node_get(store, txn, level, index - 1, left)) != 0 ||
            (rc = proto_merkle_node_hash(left, h, h)) != 0)
            break;
        level++;
        index >>= 1;
        rc = node_put(store, txn, level, index, h);
    }
    return rc;
}

/* Rebuilds the nodes of a log written before the tree existed (or whose last leaf is
 * missing): drops them all and adds every entry again, in txn. */
static int tree_backfill(audit_store_t *store, MDB_txn *txn)
{
    MDB_cursor *cur = NULL;
    int rc = mdb_cursor_open(txn, store->dbi[DBI_ENTRIES], &cur);
    if (rc != 0)
        return store_err("cursor_open", rc);
    MDB_val k, v;
    rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    if (rc == MDB_NOTFOUND) {
        mdb_cursor_close(cur);
        return 0;
    }
    uint8_t last_leaf[PROTO_MERKLE_HASH_SIZE];
    if (rc != 0 || k.mv_size != STORE_SEQ_KEY_SIZE) {
        mdb_cursor_close(cur);
        return rc != 0 ? store_err("last", rc) : QC_EDECODE;
    }
    uint64_t last = ops_be_get(k.mv_data, 8);
    rc = last >= 1 ? node_get(store, txn, 0, last - 1, last_leaf) : QC_EDECODE;
    if (rc != QC_ENOTFOUND) {
        mdb_cursor_close(cur);
        return rc;
    }
    ops_log(OPS_LOG_WARN, "audit.tree_backfill", "error",
            "the log has entries without Merkle leaves: rebuilding the tree", NULL);
    if ((rc = mdb_drop(txn, store->dbi[DBI_NODES], 0)) != 0) {
        mdb_cursor_close(cur);
        return store_err("drop_nodes", rc);
    }
    uint64_t expect = 1;
    int op = MDB_FIRST;
    while ((rc = mdb_cursor_get(cur, &k, &v, op)) == 0) {
        op = MDB_NEXT;
        if (k.mv_size != STORE_SEQ_KEY_SIZE || ops_be_get(k.mv_data, 8) != expect ||
            v.mv_size < AUDIT_ENCODING_FIXED + AUDIT_HASH_SIZE) {
            rc = QC_EDECODE;
            break;
        }
        if ((rc = tree_append(store, txn, expect, v.mv_data, v.mv_size - AUDIT_HASH_SIZE)) != 0)
            break;
        expect++;
    }
    mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND)
        return 0;
    return store_rc("backfill", rc);
}

/* Appends one new event as entry seq after prev inside txn, with its indexes. */
static int append_one(audit_store_t *store, MDB_txn *txn, const audit_event_t *ev, uint64_t seq,
                      const uint8_t *dkey, size_t dkey_len, uint8_t prev[AUDIT_HASH_SIZE])
{
    audit_entry_t e = {
        .seq = seq,
        .time_ms = ev->time_ms != 0 ? ev->time_ms : ops_time_wall_ms(),
        .source = ev->source,
        .source_len = strlen(ev->source),
        .source_seq = ev->source_seq,
        .type = ev->type,
        .type_len = strlen(ev->type),
        .txn_id = ev->txn_id,
        .txn_id_len = ev->txn_id_len,
        .payload = ev->payload,
        .payload_len = ev->payload_len,
    };
    memcpy(e.prev_hash, prev, AUDIT_HASH_SIZE);
    int rc = audit_chain_hash(&e, e.hash);
    if (rc != 0)
        return rc;
    uint8_t *rec = NULL;
    size_t rec_len = 0;
    if ((rc = audit_chain_record(&e, &rec, &rec_len)) != 0)
        return rc;
    uint8_t key[STORE_SEQ_KEY_SIZE];
    ops_be_put(key, seq, 8);
    MDB_val k = {.mv_size = sizeof key, .mv_data = key};
    MDB_val d = {.mv_size = rec_len, .mv_data = rec};
    rc = mdb_put(txn, store->dbi[DBI_ENTRIES], &k, &d, MDB_APPEND);
    if (rc != 0) {
        free(rec);
        return store_err("put_entry", rc);
    }
    rc = tree_append(store, txn, seq, rec, rec_len - AUDIT_HASH_SIZE);
    free(rec);
    if (rc != 0)
        return rc;
    if (e.txn_id_len > 0 &&
        (rc = put_u64(txn, store->dbi[DBI_BY_TXN], e.txn_id, e.txn_id_len, seq, 0)) != 0)
        return rc;
    if ((rc = put_u64(txn, store->dbi[DBI_DEDUPE], dkey, dkey_len, seq, MDB_NOOVERWRITE)) != 0)
        return rc;
    uint64_t hwm = 0;
    rc = get_u64(txn, store->dbi[DBI_SOURCES], e.source, e.source_len, &hwm);
    if (rc != 0 && rc != QC_ENOTFOUND)
        return rc;
    if ((rc == QC_ENOTFOUND || ev->source_seq > hwm) &&
        (rc = put_u64(txn, store->dbi[DBI_SOURCES], e.source, e.source_len, ev->source_seq, 0)) !=
            0)
        return rc;
    if (strcmp(ev->source, AUDIT_SOURCE_SELF) == 0 &&
        strcmp(ev->type, AUDIT_TYPE_CHECKPOINT) == 0 &&
        (rc = put_u64(txn, store->dbi[DBI_CHECKPOINTS], key, sizeof key, ev->source_seq, 0)) != 0)
        return rc;
    memcpy(prev, e.hash, AUDIT_HASH_SIZE);
    return 0;
}

/* Checks what the chain cannot: NUL-terminated names within limits. */
static int event_check(const audit_event_t *ev)
{
    if (ev->source == NULL || ev->type == NULL)
        return QC_EINVAL;
    size_t sl = strnlen(ev->source, AUDIT_SOURCE_MAX + 1),
           tl = strnlen(ev->type, AUDIT_TYPE_MAX + 1);
    if (sl > AUDIT_SOURCE_MAX || tl > AUDIT_TYPE_MAX || ev->txn_id_len > AUDIT_TXN_ID_MAX ||
        ev->payload_len > AUDIT_PAYLOAD_MAX)
        return QC_ETOOBIG;
    if (proto_id_check_len(ev->source, sl, AUDIT_SOURCE_MAX, PROTO_ID_VISIBLE) != 0 ||
        proto_id_check_len(ev->type, tl, AUDIT_TYPE_MAX, PROTO_ID_VISIBLE) != 0 ||
        ev->source_seq == 0 || (ev->txn_id_len > 0 && ev->txn_id == NULL) ||
        (ev->payload_len > 0 && ev->payload == NULL))
        return QC_EINVAL;
    return 0;
}

static int append_txn(audit_store_t *store, const audit_event_t *events, size_t n,
                      audit_append_result_t *results);

int audit_store_append(audit_store_t *store, const audit_event_t *events, size_t n,
                       audit_append_result_t *results)
{
    uint64_t gen = atomic_load(&store->map_gen);
    int rc = append_txn(store, events, n, results);
    /* A full map: the txn was aborted whole (invariant 3), so after growth the same append
     * runs once more, and its results are those of the run that committed. A map the disk
     * could not fill any further is a full disk: that is the cause the caller is told. */
    if (rc == QC_EFULL && store->storage != NULL) {
        int grc = store_grow(store, gen);
        if (grc == 0)
            rc = append_txn(store, events, n, results);
        else if (grc == QC_ENOSPACE)
            rc = QC_ENOSPACE;
    }
    if (store->storage != NULL)
        rc = ops_storage_classify(store->storage, rc); /* a disk full mid-commit reads EIO */
    /* Health fails while appends cannot commit, whatever the cause; a full disk or map is
     * also a state of its own, logged once per change (not once per resend). */
    if (!store->rdonly && rc != QC_ENOMEM) {
        atomic_store(&store->last_append_rc, rc);
        pthread_mutex_lock(&store->watch);
        ops_storage_note(store->storage, rc);
        pthread_mutex_unlock(&store->watch);
    }
    return rc;
}

static int append_txn(audit_store_t *store, const audit_event_t *events, size_t n,
                      audit_append_result_t *results)
{
    assert(store != NULL);
    assert(events != NULL);
    assert(results != NULL);
    assert(n >= 1);
    assert(n <= AUDIT_STORE_BATCH_MAX);
    if (store->rdonly)
        return QC_EDENIED;
    gate_enter(store);
    MDB_txn *txn = NULL;
    int rc = mdb_txn_begin(store->env, NULL, 0, &txn);
    if (rc != 0) {
        gate_leave(store);
        return store_err("txn_begin", rc);
    }
    uint64_t seq = 0;
    uint8_t prev[AUDIT_HASH_SIZE];
    if ((rc = last_in(store, txn, &seq, prev)) != 0)
        goto err;
    for (size_t i = 0; i < n; i++) {
        const audit_event_t *ev = &events[i];
        audit_append_result_t *r = &results[i];
        memset(r, 0, sizeof *r);
        if ((r->code = event_check(ev)) != 0)
            continue;
        uint8_t dkey[STORE_DEDUPE_KEY_MAX];
        size_t dkey_len = dedupe_key(ev->source, strlen(ev->source), ev->source_seq, dkey);
        rc = get_u64(txn, store->dbi[DBI_DEDUPE], dkey, dkey_len, &r->seq);
        if (rc == 0) {
            r->duplicate = true;
            continue;
        }
        if (rc != QC_ENOTFOUND)
            goto err;
        if ((rc = append_one(store, txn, ev, seq + 1, dkey, dkey_len, prev)) != 0)
            goto err;
        r->seq = ++seq;
    }
    rc = mdb_txn_commit(txn);
    gate_leave(store);
    return rc == 0 ? 0 : store_err("commit", rc);
err:
    mdb_txn_abort(txn);
    gate_leave(store);
    return rc;
}

int audit_store_last(audit_store_t *store, uint64_t *seq, uint8_t hash[AUDIT_HASH_SIZE])
{
    assert(store != NULL);
    assert(seq != NULL);
    assert(hash != NULL);
    MDB_txn *txn = NULL;
    int rc = read_begin(store, &txn);
    if (rc != 0)
        return rc;
    rc = last_in(store, txn, seq, hash);
    read_end(store, txn);
    return rc;
}

int audit_store_hwm(audit_store_t *store, const char *source, uint64_t *hwm)
{
    assert(store != NULL);
    assert(source != NULL);
    assert(hwm != NULL);
    MDB_txn *txn = NULL;
    int rc = read_begin(store, &txn);
    if (rc != 0)
        return rc;
    *hwm = 0;
    rc = get_u64(txn, store->dbi[DBI_SOURCES], source, strlen(source), hwm);
    read_end(store, txn);
    if (rc == QC_ENOTFOUND) {
        *hwm = 0;
        rc = 0;
    }
    return rc;
}

int audit_store_last_checkpoint(audit_store_t *store, uint64_t *entry_seq, uint64_t *covered_seq)
{
    /* The newest checkpoint is the one for size 0; none yet is not an error here. */
    int rc = audit_store_checkpoint_for(store, 0, entry_seq, covered_seq);
    return rc == QC_ENOTFOUND ? 0 : rc;
}

int audit_store_count(audit_store_t *store, uint64_t *entries, uint64_t *checkpoints)
{
    assert(store != NULL);
    assert(entries != NULL);
    assert(checkpoints != NULL);
    MDB_txn *txn = NULL;
    int rc = read_begin(store, &txn);
    if (rc != 0)
        return rc;
    MDB_stat a, b;
    if ((rc = mdb_stat(txn, store->dbi[DBI_ENTRIES], &a)) == 0 &&
        (rc = mdb_stat(txn, store->dbi[DBI_CHECKPOINTS], &b)) == 0) {
        *entries = a.ms_entries;
        *checkpoints = b.ms_entries;
    }
    read_end(store, txn);
    return rc == 0 ? 0 : store_err("stat", rc);
}

int audit_store_get(audit_store_t *store, uint64_t seq, uint8_t **rec, size_t *len)
{
    assert(store != NULL);
    assert(rec != NULL);
    assert(len != NULL);
    *rec = NULL;
    MDB_txn *txn = NULL;
    int rc = read_begin(store, &txn);
    if (rc != 0)
        return rc;
    uint8_t key[STORE_SEQ_KEY_SIZE];
    ops_be_put(key, seq, 8);
    MDB_val k = {.mv_size = sizeof key, .mv_data = key}, v;
    rc = mdb_get(txn, store->dbi[DBI_ENTRIES], &k, &v);
    if (rc == 0 && (rc = entry_check(seq, &v)) != 0) {
        read_end(store, txn);
        return rc;
    }
    if (rc == 0) {
        *rec = malloc(v.mv_size > 0 ? v.mv_size : 1);
        if (*rec == NULL) {
            rc = QC_ENOMEM;
        } else {
            memcpy(*rec, v.mv_data, v.mv_size);
            *len = v.mv_size;
        }
    } else {
        rc = store_err("get_entry", rc);
    }
    read_end(store, txn);
    return rc;
}

int audit_store_dedupe_get(audit_store_t *store, const char *source, uint64_t source_seq,
                           uint64_t *seq)
{
    assert(store != NULL);
    assert(source != NULL);
    assert(seq != NULL);
    size_t sl = strlen(source);
    if (sl > AUDIT_SOURCE_MAX)
        return QC_ENOTFOUND;
    uint8_t dkey[STORE_DEDUPE_KEY_MAX];
    size_t dlen = dedupe_key(source, sl, source_seq, dkey);
    MDB_txn *txn = NULL;
    int rc = read_begin(store, &txn);
    if (rc != 0)
        return rc;
    rc = get_u64(txn, store->dbi[DBI_DEDUPE], dkey, dlen, seq);
    read_end(store, txn);
    return rc;
}

int audit_store_scan(audit_store_t *store, uint64_t from_seq, audit_store_visit_fn *fn, void *arg)
{
    assert(store != NULL);
    assert(fn != NULL);
    MDB_txn *txn = NULL;
    int rc = read_begin(store, &txn);
    if (rc != 0)
        return rc;
    MDB_cursor *cur = NULL;
    if ((rc = mdb_cursor_open(txn, store->dbi[DBI_ENTRIES], &cur)) != 0) {
        read_end(store, txn);
        return store_err("cursor_open", rc);
    }
    uint8_t key[STORE_SEQ_KEY_SIZE];
    ops_be_put(key, from_seq, 8);
    MDB_val k = {.mv_size = sizeof key, .mv_data = key}, v;
    int op = MDB_SET_RANGE, stop = 0;
    while ((rc = mdb_cursor_get(cur, &k, &v, op)) == 0) {
        op = MDB_NEXT;
        if (k.mv_size != STORE_SEQ_KEY_SIZE) {
            rc = QC_EDECODE;
            break;
        }
        if ((stop = fn(arg, ops_be_get(k.mv_data, 8), v.mv_data, v.mv_size)) != 0)
            break;
    }
    mdb_cursor_close(cur);
    read_end(store, txn);
    /* fn's value as it is: a positive one is not an LMDB error. */
    if (stop != 0)
        return stop;
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc > 0)
        return store_err("scan", rc);
    return rc;
}

int audit_store_txn_seqs(audit_store_t *store, const uint8_t *txn_id, size_t txn_id_len,
                         uint64_t *seqs, size_t cap, size_t *n)
{
    assert(store != NULL);
    assert(txn_id != NULL);
    assert(n != NULL);
    *n = 0;
    if (txn_id_len == 0 || txn_id_len > AUDIT_TXN_ID_MAX)
        return 0;
    MDB_txn *txn = NULL;
    int rc = read_begin(store, &txn);
    if (rc != 0)
        return rc;
    MDB_cursor *cur = NULL;
    if ((rc = mdb_cursor_open(txn, store->dbi[DBI_BY_TXN], &cur)) != 0) {
        read_end(store, txn);
        return store_err("cursor_open", rc);
    }
    MDB_val k = {.mv_size = txn_id_len, .mv_data = (void *)txn_id}, v;
    int op = MDB_SET_KEY;
    while ((rc = mdb_cursor_get(cur, &k, &v, op)) == 0) {
        op = MDB_NEXT_DUP;
        if (v.mv_size != 8) {
            rc = QC_EDECODE;
            break;
        }
        if (*n < cap)
            seqs[*n] = ops_be_get(v.mv_data, 8);
        (*n)++;
    }
    mdb_cursor_close(cur);
    read_end(store, txn);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc > 0)
        return store_err("txn_seqs", rc);
    return rc;
}

/* Parses the entry seq inside txn into *e (pointing into the map). */
static int entry_in(audit_store_t *store, MDB_txn *txn, uint64_t seq, audit_entry_t *e)
{
    uint8_t key[STORE_SEQ_KEY_SIZE];
    ops_be_put(key, seq, 8);
    MDB_val k = {.mv_size = sizeof key, .mv_data = key}, v;
    int rc = mdb_get(txn, store->dbi[DBI_ENTRIES], &k, &v);
    if (rc == MDB_NOTFOUND)
        return QC_EMISMATCH;
    if (rc != 0)
        return store_err("get_entry", rc);
    return audit_chain_parse(v.mv_data, v.mv_size, e) == 0 ? 0 : QC_EMISMATCH;
}

/* Walks index dbi, checking each row with check(); counts rows into *rows. */
typedef int(index_check_fn)(audit_store_t *store, MDB_txn *txn, const MDB_val *k, const MDB_val *v,
                            uint64_t *bad_seq);

static int walk_index(audit_store_t *store, MDB_txn *txn, int dbi, index_check_fn *check,
                      uint64_t *rows, uint64_t *bad_seq)
{
    MDB_cursor *cur = NULL;
    int rc = mdb_cursor_open(txn, store->dbi[dbi], &cur);
    if (rc != 0)
        return store_err("cursor_open", rc);
    MDB_val k, v;
    *rows = 0;
    int op = MDB_FIRST;
    while ((rc = mdb_cursor_get(cur, &k, &v, op)) == 0) {
        op = MDB_NEXT;
        (*rows)++;
        if ((rc = check(store, txn, &k, &v, bad_seq)) != 0)
            break;
    }
    mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND)
        return 0;
    return rc > 0 ? store_err("walk_index", rc) : rc;
}

static int check_dedupe(audit_store_t *store, MDB_txn *txn, const MDB_val *k, const MDB_val *v,
                        uint64_t *bad_seq)
{
    const uint8_t *kb = k->mv_data;
    if (v->mv_size != 8 || k->mv_size < 1 + 8 || k->mv_size != (size_t)1 + kb[0] + 8)
        return QC_EDECODE;
    *bad_seq = ops_be_get(v->mv_data, 8);
    audit_entry_t e;
    int rc = entry_in(store, txn, *bad_seq, &e);
    if (rc != 0)
        return rc;
    if (e.source_len != kb[0] || memcmp(e.source, kb + 1, kb[0]) != 0 ||
        e.source_seq != ops_be_get(kb + 1 + kb[0], 8))
        return QC_EMISMATCH;
    return 0;
}

static int check_by_txn(audit_store_t *store, MDB_txn *txn, const MDB_val *k, const MDB_val *v,
                        uint64_t *bad_seq)
{
    if (v->mv_size != 8)
        return QC_EDECODE;
    *bad_seq = ops_be_get(v->mv_data, 8);
    audit_entry_t e;
    int rc = entry_in(store, txn, *bad_seq, &e);
    if (rc != 0)
        return rc;
    if (e.txn_id_len != k->mv_size || memcmp(e.txn_id, k->mv_data, k->mv_size) != 0)
        return QC_EMISMATCH;
    return 0;
}

static int check_checkpoint_row(audit_store_t *store, MDB_txn *txn, const MDB_val *k,
                                const MDB_val *v, uint64_t *bad_seq)
{
    if (k->mv_size != STORE_SEQ_KEY_SIZE || v->mv_size != 8)
        return QC_EDECODE;
    *bad_seq = ops_be_get(k->mv_data, 8);
    audit_entry_t e;
    int rc = entry_in(store, txn, *bad_seq, &e);
    if (rc != 0)
        return rc;
    if (e.source_len != strlen(AUDIT_SOURCE_SELF) ||
        memcmp(e.source, AUDIT_SOURCE_SELF, e.source_len) != 0 ||
        e.type_len != strlen(AUDIT_TYPE_CHECKPOINT) ||
        memcmp(e.type, AUDIT_TYPE_CHECKPOINT, e.type_len) != 0 ||
        e.source_seq != ops_be_get(v->mv_data, 8))
        return QC_EMISMATCH;
    return 0;
}

int audit_store_check_indexes(audit_store_t *store, uint64_t *bad_seq)
{
    assert(store != NULL);
    assert(bad_seq != NULL);
    *bad_seq = 0;
    MDB_txn *txn = NULL;
    int rc = read_begin(store, &txn);
    if (rc != 0)
        return rc;
    MDB_stat st;
    uint64_t rows = 0;
    if ((rc = mdb_stat(txn, store->dbi[DBI_ENTRIES], &st)) != 0) {
        read_end(store, txn);
        return store_err("stat", rc);
    }
    rc = walk_index(store, txn, DBI_DEDUPE, check_dedupe, &rows, bad_seq);
    if (rc == 0 && rows != st.ms_entries) {
        *bad_seq = 0;
        rc = QC_EMISMATCH;
    }
    if (rc == 0)
        rc = walk_index(store, txn, DBI_BY_TXN, check_by_txn, &rows, bad_seq);
    if (rc == 0)
        rc = walk_index(store, txn, DBI_CHECKPOINTS, check_checkpoint_row, &rows, bad_seq);
    read_end(store, txn);
    return rc;
}

/* ------------------------------------------------------------------ proofs */

typedef struct node_reader {
    audit_store_t *store;
    MDB_txn *txn;
} node_reader_t;

static int node_read(void *arg, unsigned level, uint64_t index, uint8_t out[PROTO_MERKLE_HASH_SIZE])
{
    node_reader_t *r = arg;
    int rc = node_get(r->store, r->txn, level, index, out);
    /* The proof asked for a node the log's size says exists: the tree is damaged. */
    return rc == QC_ENOTFOUND ? QC_EDECODE : rc;
}

/* Begins a read txn and checks that the log holds at least size entries. */
static int tree_begin(audit_store_t *store, uint64_t size, node_reader_t *r)
{
    r->store = store;
    int rc = read_begin(store, &r->txn);
    if (rc != 0)
        return rc;
    uint64_t last = 0;
    uint8_t hash[AUDIT_HASH_SIZE];
    if ((rc = last_in(store, r->txn, &last, hash)) == 0 && size > last)
        rc = QC_ENOTFOUND;
    if (rc != 0)
        read_end(store, r->txn);
    return rc;
}

int audit_store_tree_root(audit_store_t *store, uint64_t size, uint8_t root[AUDIT_HASH_SIZE])
{
    assert(store != NULL);
    assert(root != NULL);
    node_reader_t r;
    int rc = tree_begin(store, size, &r);
    if (rc != 0)
        return rc;
    rc = proto_merkle_root(node_read, &r, size, root);
    read_end(store, r.txn);
    return rc;
}

int audit_store_prove_inclusion(audit_store_t *store, uint64_t seq, uint64_t size,
                                proto_merkle_hash_t path[PROTO_MERKLE_PROOF_MAX], size_t *path_len)
{
    assert(store != NULL);
    assert(path != NULL);
    assert(path_len != NULL);
    *path_len = 0;
    if (seq == 0 || seq > size)
        return QC_EINVAL;
    node_reader_t r;
    int rc = tree_begin(store, size, &r);
    if (rc != 0)
        return rc;
    rc = proto_merkle_prove_inclusion(node_read, &r, seq - 1, size, path, path_len);
    read_end(store, r.txn);
    return rc;
}

int audit_store_prove_consistency(audit_store_t *store, uint64_t old_size, uint64_t new_size,
                                  proto_merkle_hash_t proof[PROTO_MERKLE_PROOF_MAX],
                                  size_t *proof_len)
{
    assert(store != NULL);
    assert(proof != NULL);
    assert(proof_len != NULL);
    *proof_len = 0;
    if (old_size > new_size)
        return QC_EINVAL;
    node_reader_t r;
    int rc = tree_begin(store, new_size, &r);
    if (rc != 0)
        return rc;
    rc = proto_merkle_prove_consistency(node_read, &r, old_size, new_size, proof, proof_len);
    read_end(store, r.txn);
    return rc;
}

int audit_store_checkpoint_for(audit_store_t *store, uint64_t size, uint64_t *entry_seq,
                               uint64_t *covered_seq)
{
    assert(store != NULL);
    assert(entry_seq != NULL);
    assert(covered_seq != NULL);
    *entry_seq = *covered_seq = 0;
    MDB_txn *txn = NULL;
    int rc = read_begin(store, &txn);
    if (rc != 0)
        return rc;
    MDB_cursor *cur = NULL;
    if ((rc = mdb_cursor_open(txn, store->dbi[DBI_CHECKPOINTS], &cur)) != 0) {
        read_end(store, txn);
        return store_err("cursor_open", rc);
    }
    /* Newest first: heads asked for are recent, and covered seqs grow with the entry seq. */
    MDB_val k, v;
    int op = MDB_LAST;
    while ((rc = mdb_cursor_get(cur, &k, &v, op)) == 0) {
        op = MDB_PREV;
        if (k.mv_size != STORE_SEQ_KEY_SIZE || v.mv_size != 8) {
            rc = QC_EDECODE;
            break;
        }
        uint64_t covered = ops_be_get(v.mv_data, 8);
        if (size == 0 || covered == size) {
            *entry_seq = ops_be_get(k.mv_data, 8);
            *covered_seq = covered;
            break;
        }
        if (covered < size) {
            rc = MDB_NOTFOUND;
            break;
        }
    }
    mdb_cursor_close(cur);
    read_end(store, txn);
    return store_rc("checkpoint_for", rc);
}

int audit_store_check_tree(audit_store_t *store, uint64_t *bad_seq)
{
    assert(store != NULL);
    assert(bad_seq != NULL);
    *bad_seq = 0;
    node_reader_t r;
    int rc = tree_begin(store, 0, &r);
    if (rc != 0)
        return rc;
    MDB_cursor *cur = NULL;
    if ((rc = mdb_cursor_open(r.txn, store->dbi[DBI_ENTRIES], &cur)) != 0) {
        read_end(store, r.txn);
        return store_err("cursor_open", rc);
    }
    proto_merkle_compact_t c = {0};
    uint64_t nodes = 0;
    MDB_val k, v;
    int op = MDB_FIRST;
    while ((rc = mdb_cursor_get(cur, &k, &v, op)) == 0) {
        op = MDB_NEXT;
        *bad_seq = c.size + 1;
        if (k.mv_size != STORE_SEQ_KEY_SIZE || v.mv_size < AUDIT_HASH_SIZE) {
            rc = QC_EDECODE;
            break;
        }
        uint8_t leaf[PROTO_MERKLE_HASH_SIZE], stored[PROTO_MERKLE_HASH_SIZE];
        proto_merkle_hash_t done[PROTO_MERKLE_LEVELS_MAX];
        size_t nd = 0;
        uint64_t index = c.size;
        if ((rc = proto_merkle_leaf_hash(v.mv_data, v.mv_size - AUDIT_HASH_SIZE, leaf)) != 0 ||
            (rc = proto_merkle_compact_append(&c, leaf, done, &nd)) != 0)
            break;
        for (size_t l = 0; l < nd && rc == 0; l++) {
            rc = node_get(store, r.txn, (unsigned)l, index >> l, stored);
            if (rc == QC_ENOTFOUND ||
                (rc == 0 && CRYPTO_memcmp(stored, done[l], PROTO_MERKLE_HASH_SIZE) != 0))
                rc = QC_EMISMATCH;
        }
        if (rc != 0)
            break;
        nodes += nd;
    }
    mdb_cursor_close(cur);
    MDB_stat st;
    if (rc == MDB_NOTFOUND) {
        rc = mdb_stat(r.txn, store->dbi[DBI_NODES], &st);
        if (rc == 0 && st.ms_entries != nodes) {
            /* Nodes beyond the entries: a tree longer than the log. */
            *bad_seq = c.size + 1;
            rc = QC_EMISMATCH;
        } else if (rc == 0) {
            *bad_seq = 0;
        }
    }
    read_end(store, r.txn);
    return store_rc("check_tree", rc);
}
