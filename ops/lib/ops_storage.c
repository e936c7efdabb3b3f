/* ops_storage.c - one LMDB store's state of space: full disk, full map, growth (see the
 * header for the state diagram). */
#include "ops_storage.h"

#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include "ops_log.h"
#include "ops_metrics.h"

#define OPS_STORAGE_METRIC_MAX 96
#define OPS_STORAGE_DIR_MAX 512
#define OPS_STORAGE_MIB (1024ull * 1024ull)

struct ops_storage {
    char name[OPS_STORAGE_NAME_MAX + 1];
    char dir[OPS_STORAGE_DIR_MAX];
    char map_max_key[OPS_STORAGE_NAME_MAX + 1];
    MDB_env *env;
    uint64_t map_max;
    _Atomic int state;
    pthread_mutex_t lock; /* guards why, against the HTTP thread's health check */
    char why[OPS_STORAGE_WHY_MAX];
    uint64_t free_at_failure; /* bytes free when the disk was found full */
    uint64_t map_at_failure;  /* map size when it was found full */
    bool refuse_high;
    uint64_t used;
    uint64_t map;
    uint64_t free_bytes;
    bool disk_blocks_growth; /* the last growth was refused: the disk could not hold it */
    ops_gauge_t *m_free, *m_used, *m_map, *m_state;
    ops_counter_t *m_growths;
};

static const char *const ops_storage_state_names[] = {"ok", "map_high", "map_full", "disk_full"};

static ops_gauge_t *ops_storage_gauge(const char *fmt, const char *store, const char *help)
{
    char name[OPS_STORAGE_METRIC_MAX];
    int n = snprintf(name, sizeof name, fmt, store);
    assert(n > 0);
    assert((size_t)n < sizeof name);
    return ops_gauge(name, help);
}

/* Reads the map's use and size and the free space; a failure leaves the old figures. */
static void ops_storage_measure(ops_storage_t *st)
{
    MDB_envinfo info;
    MDB_stat ms;
    if (mdb_env_info(st->env, &info) == 0 && mdb_env_stat(st->env, &ms) == 0) {
        st->used = ((uint64_t)info.me_last_pgno + 1) * ms.ms_psize;
        st->map = info.me_mapsize;
    }
    struct statvfs vfs;
    if (statvfs(st->dir, &vfs) == 0)
        st->free_bytes = (uint64_t)vfs.f_bavail * (uint64_t)vfs.f_frsize;
    ops_gauge_set(st->m_free, (int64_t)st->free_bytes);
    ops_gauge_set(st->m_used, (int64_t)st->used);
    ops_gauge_set(st->m_map, (int64_t)st->map);
}

static unsigned ops_storage_pct(const ops_storage_t *st)
{
    return st->map > 0 ? (unsigned)(st->used * 100 / st->map) : 0;
}

/* The sentence of the current state, kept for health and refusals. */
static void ops_storage_describe(ops_storage_t *st, ops_storage_state_t s)
{
    char why[OPS_STORAGE_WHY_MAX];
    switch (s) {
    case OPS_STORAGE_DISK_FULL:
        snprintf(why, sizeof why,
                 "degraded: %s: the disk under %s is full (%" PRIu64
                 " bytes free): writes refused, reads served",
                 st->name, st->dir, st->free_bytes);
        break;
    case OPS_STORAGE_MAP_FULL:
        if (st->map_max > st->map && st->disk_blocks_growth)
            snprintf(why, sizeof why,
                     "degraded: %s: the LMDB map is full (%" PRIu64 " of %" PRIu64
                     " bytes) and may not grow: the disk under %s has %" PRIu64
                     " bytes free; reads served",
                     st->name, st->used, st->map, st->dir, st->free_bytes);
        else if (st->map_max > st->map)
            snprintf(why, sizeof why,
                     "degraded: %s: the LMDB map is full (%" PRIu64 " of %" PRIu64
                     " bytes): writes refused, reads served; it grows when no transaction is open",
                     st->name, st->used, st->map);
        else
            snprintf(why, sizeof why,
                     "degraded: %s: the LMDB map is full (%" PRIu64 " of %" PRIu64
                     " bytes) and may not grow: raise %s and restart; reads served",
                     st->name, st->used, st->map, st->map_max_key);
        break;
    case OPS_STORAGE_MAP_HIGH:
        snprintf(why, sizeof why,
                 "%s%s: the LMDB map is %u%% used (%" PRIu64 " of %" PRIu64 " bytes)%s%s%s",
                 st->refuse_high ? "degraded: " : "", st->name, ops_storage_pct(st), st->used,
                 st->map, st->refuse_high ? ": new writes refused, reads served" : "",
                 st->map_max > st->map ? "" : "; it may not grow: raise ",
                 st->map_max > st->map ? "" : st->map_max_key);
        break;
    case OPS_STORAGE_OK:
        why[0] = '\0';
        break;
    }
    pthread_mutex_lock(&st->lock);
    memcpy(st->why, why, sizeof why);
    pthread_mutex_unlock(&st->lock);
}

/* Moves to state s: one log line when it changes, none when it stays. */
static void ops_storage_enter(ops_storage_t *st, ops_storage_state_t s)
{
    ops_storage_state_t old = (ops_storage_state_t)atomic_load(&st->state);
    ops_storage_describe(st, s);
    ops_gauge_set(st->m_state, (int64_t)s);
    if (old == s)
        return;
    atomic_store(&st->state, (int)s);
    char used[24], map[24], free_text[24], pct[8];
    snprintf(used, sizeof used, "%" PRIu64, st->used);
    snprintf(map, sizeof map, "%" PRIu64, st->map);
    snprintf(free_text, sizeof free_text, "%" PRIu64, st->free_bytes);
    snprintf(pct, sizeof pct, "%u", ops_storage_pct(st));
    static const char *const events[] = {"storage.resumed", "storage.map_high", "storage.map_full",
                                         "storage.disk_full"};
    ops_log_level_t level = s == OPS_STORAGE_OK         ? OPS_LOG_INFO
                            : s == OPS_STORAGE_MAP_HIGH ? OPS_LOG_WARN
                                                        : OPS_LOG_ERROR;
    pthread_mutex_lock(&st->lock);
    char why[OPS_STORAGE_WHY_MAX];
    memcpy(why, st->why, sizeof why);
    pthread_mutex_unlock(&st->lock);
    ops_log(level, events[s], "store", st->name, "from", ops_storage_state_names[old], "dir",
            st->dir, "map_used_bytes", used, "map_bytes", map, "map_used_pct", pct,
            "disk_free_bytes", free_text, "why", why[0] != '\0' ? why : NULL, NULL);
}

int ops_storage_new(const ops_storage_config_t *cfg, ops_storage_t **out)
{
    assert(cfg != NULL);
    assert(cfg->env != NULL);
    assert(cfg->dir != NULL);
    assert(out != NULL);
    *out = NULL;
    if (cfg->name == NULL || strlen(cfg->name) > OPS_STORAGE_NAME_MAX ||
        strlen(cfg->dir) >= OPS_STORAGE_DIR_MAX)
        return QC_EINVAL;
    ops_storage_t *st = calloc(1, sizeof *st);
    if (st == NULL)
        return QC_ENOMEM;
    snprintf(st->name, sizeof st->name, "%s", cfg->name);
    snprintf(st->dir, sizeof st->dir, "%s", cfg->dir);
    snprintf(st->map_max_key, sizeof st->map_max_key, "%s",
             cfg->map_max_key != NULL ? cfg->map_max_key : "map_size_mb");
    st->env = cfg->env;
    st->map_max = cfg->map_max;
    st->refuse_high = cfg->refuse_high;
    pthread_mutex_init(&st->lock, NULL);
    st->m_free = ops_storage_gauge("qc_storage_disk_free_bytes{store=\"%s\"}", st->name,
                                   "Bytes free on the file system of the store");
    st->m_used = ops_storage_gauge("qc_storage_map_used_bytes{store=\"%s\"}", st->name,
                                   "Bytes of the LMDB map in use");
    st->m_map = ops_storage_gauge("qc_storage_map_size_bytes{store=\"%s\"}", st->name,
                                  "Size of the LMDB map");
    st->m_state = ops_storage_gauge("qc_storage_state{store=\"%s\"}", st->name,
                                    "0 ok, 1 map over 90%, 2 map full, 3 disk full");
    char growths[OPS_STORAGE_METRIC_MAX];
    int n =
        snprintf(growths, sizeof growths, "qc_storage_map_growths_total{store=\"%s\"}", st->name);
    assert(n > 0);
    assert((size_t)n < sizeof growths);
    st->m_growths = ops_counter(growths, "Times the LMDB map was grown online");
    ops_storage_measure(st);
    *out = st;
    return 0;
}

void ops_storage_destroy(ops_storage_t **st_p)
{
    if (st_p == NULL || *st_p == NULL)
        return;
    pthread_mutex_destroy(&(*st_p)->lock);
    free(*st_p);
    *st_p = NULL;
}

/* The state the map's figures call for, outside DISK_FULL. */
static ops_storage_state_t ops_storage_map_state(const ops_storage_t *st)
{
    return ops_storage_pct(st) > OPS_STORAGE_HIGH_PCT ? OPS_STORAGE_MAP_HIGH : OPS_STORAGE_OK;
}

void ops_storage_note(ops_storage_t *st, int rc)
{
    assert(st != NULL);
    assert(rc <= 0);
    ops_storage_state_t s = (ops_storage_state_t)atomic_load(&st->state);
    if (rc == QC_ENOSPACE) {
        ops_storage_measure(st);
        st->free_at_failure = st->free_bytes;
        ops_storage_enter(st, OPS_STORAGE_DISK_FULL);
    } else if (rc == QC_EFULL) {
        ops_storage_measure(st);
        st->map_at_failure = st->map;
        ops_storage_enter(st, OPS_STORAGE_MAP_FULL);
    } else if (rc == 0 && (s == OPS_STORAGE_DISK_FULL || s == OPS_STORAGE_MAP_FULL)) {
        ops_storage_measure(st);
        ops_storage_enter(st, ops_storage_map_state(st));
    }
}

int ops_storage_classify(ops_storage_t *st, int rc)
{
    assert(st != NULL);
    if (rc != QC_EIO)
        return rc;
    struct statvfs vfs;
    if (statvfs(st->dir, &vfs) != 0)
        return rc;
    uint64_t free_bytes = (uint64_t)vfs.f_bavail * (uint64_t)vfs.f_frsize;
    return free_bytes < OPS_STORAGE_FREE_MIN ? QC_ENOSPACE : rc;
}

/* The size the map may grow to: double, at most map_max, and no larger than the file could
 * become on this disk (what it uses plus the space free), in whole MiB; 0 when at map_max. */
static uint64_t ops_storage_grow_to(const ops_storage_t *st)
{
    if (st->map_max <= st->map)
        return 0;
    uint64_t to = st->map * 2 < st->map_max ? st->map * 2 : st->map_max;
    uint64_t room = st->used + st->free_bytes;
    if (to > room)
        to = room / OPS_STORAGE_MIB * OPS_STORAGE_MIB;
    return to;
}

int ops_storage_grow(ops_storage_t *st)
{
    assert(st != NULL);
    assert(st->env != NULL);
    ops_storage_measure(st);
    uint64_t to = ops_storage_grow_to(st);
    if (to == 0)
        return QC_EFULL;
    if (to <= st->map) {
        /* A larger map the disk could never fill: the state's sentence says so, once. */
        st->disk_blocks_growth = true;
        return QC_ENOSPACE;
    }
    st->disk_blocks_growth = false;
    int rc = mdb_env_set_mapsize(st->env, (size_t)to);
    char from_text[24], to_text[24];
    snprintf(from_text, sizeof from_text, "%" PRIu64, st->map);
    snprintf(to_text, sizeof to_text, "%" PRIu64, to);
    if (rc != 0) {
        ops_log_limited(OPS_LOG_ERROR, "storage.grow_failed", st->name, "from_bytes", from_text,
                        "to_bytes", to_text, "error", mdb_strerror(rc), NULL);
        return QC_EIO;
    }
    ops_log(OPS_LOG_INFO, "storage.map_grown", "store", st->name, "from_bytes", from_text,
            "to_bytes", to_text, NULL);
    ops_counter_add(st->m_growths, 1);
    ops_storage_measure(st);
    assert(st->map >= to);
    return 0;
}

bool ops_storage_wants_growth(const ops_storage_t *st)
{
    assert(st != NULL);
    if (st->map_max <= st->map)
        return false;
    return ops_storage_pct(st) > OPS_STORAGE_GROW_PCT ||
           ops_storage_state(st) == OPS_STORAGE_MAP_FULL;
}

ops_storage_state_t ops_storage_poll(ops_storage_t *st, bool may_grow)
{
    assert(st != NULL);
    ops_storage_measure(st);
    if (may_grow && ops_storage_pct(st) > OPS_STORAGE_GROW_PCT)
        QC_IGNORE(ops_storage_grow(st)); /* at the max or on a full disk the state says so */
    ops_storage_state_t s = (ops_storage_state_t)atomic_load(&st->state);
    switch (s) {
    case OPS_STORAGE_DISK_FULL:
        /* Space came back (an operator freed some): writes are tried again; a commit that
         * still fails comes back here with one more line, not a storm. */
        if (st->free_bytes > st->free_at_failure)
            ops_storage_enter(st, ops_storage_map_state(st));
        else
            ops_storage_describe(st, s);
        break;
    case OPS_STORAGE_MAP_FULL:
        /* A commit that hit MDB_MAP_FULL left the map's figures as they were: it has room
         * again once it grew (or a commit succeeds, ops_storage_note). */
        if (st->map > st->map_at_failure)
            ops_storage_enter(st, ops_storage_map_state(st));
        else
            ops_storage_describe(st, s);
        break;
    case OPS_STORAGE_OK:
    case OPS_STORAGE_MAP_HIGH:
        ops_storage_enter(st, ops_storage_map_state(st));
        break;
    }
    return (ops_storage_state_t)atomic_load(&st->state);
}

ops_storage_state_t ops_storage_state(const ops_storage_t *st)
{
    assert(st != NULL);
    return (ops_storage_state_t)atomic_load(&((ops_storage_t *)st)->state);
}

void ops_storage_why(const ops_storage_t *st, char *out, size_t cap)
{
    assert(st != NULL);
    assert(out != NULL);
    assert(cap > 0);
    ops_storage_t *m = (ops_storage_t *)st; /* the lock is not part of the value */
    ops_storage_state_t s = ops_storage_state(st);
    if (s == OPS_STORAGE_OK || (s == OPS_STORAGE_MAP_HIGH && !st->refuse_high)) {
        out[0] = '\0';
        return;
    }
    pthread_mutex_lock(&m->lock);
    snprintf(out, cap, "%s", m->why);
    pthread_mutex_unlock(&m->lock);
}

bool ops_storage_healthy(const ops_storage_t *st, char *why, size_t why_cap)
{
    ops_storage_why(st, why, why_cap);
    return why[0] == '\0';
}
