/* ops_store.c - init, the owner lock, the file check and the identity of an LMDB store
 * (the contract and the reasons are in ops_store.h). */
#include "ops_store.h"

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
#include <sys/types.h>
#include <unistd.h>

#include <lmdb.h>

#include "ops_config.h"
#include "ops_log.h"
#include "ops_service.h"
#include "ops_time.h"
#include "qc_error.h"

#define STORE_PATH_MAX 4096
#define STORE_IDENTITY_TEXT_MAX 512 /* the identity record, as text lines */
#define STORE_PID_TEXT_MAX 32
#define STORE_MAXDBS 16 /* named databases our handle may open: the identity only */
/* LMDB's meta page on a 64-bit host (mdb.c: MDB_page header, then MDB_meta). The two meta
 * pages are pages 0 and 1; the newer (larger txnid) is the one LMDB uses. */
#define LMDB_PAGE_HEADER 16
#define LMDB_META_MAGIC_OFF 0
#define LMDB_META_VERSION_OFF 4
#define LMDB_META_PSIZE_OFF 24 /* mm_dbs[FREE_DBI].md_pad */
#define LMDB_META_LAST_PG_OFF 120
#define LMDB_META_TXNID_OFF 128
#define LMDB_META_SIZE 136
#define LMDB_MAGIC 0xBEEFC0DEu
#define LMDB_DATA_VERSION 1u
#define LMDB_PSIZE_MIN 512u
#define LMDB_PSIZE_MAX 65536u

_Static_assert(sizeof(size_t) == 8, "the meta page offsets above are those of a 64-bit LMDB");

struct ops_store_lock {
    int fd;
};

static void why_set(char *why, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void why_set(char *why, size_t cap, const char *fmt, ...)
{
    if (why == NULL || cap == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, cap, fmt, ap);
    va_end(ap);
}

static void path_in(const char *dir, const char *name, char out[STORE_PATH_MAX])
{
    snprintf(out, STORE_PATH_MAX, "%s/%s", dir, name);
}

bool ops_store_check_cluster_id(const char *id, char *why, size_t why_cap)
{
    size_t n = id != NULL ? strlen(id) : 0;
    if (n == 0 || n > OPS_STORE_CLUSTER_ID_MAX) {
        why_set(why, why_cap, "a cluster id is 1..%d characters", OPS_STORE_CLUSTER_ID_MAX);
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok) {
            why_set(why, why_cap, "a cluster id is made of A-Z a-z 0-9 . _ -");
            return false;
        }
    }
    return true;
}

/* ------------------------------------------------------------ the owner lock */

int ops_store_lock(const char *dir, ops_store_lock_t **out, char *why, size_t why_cap)
{
    assert(dir != NULL);
    assert(out != NULL);
    *out = NULL;
    char path[STORE_PATH_MAX];
    path_in(dir, OPS_STORE_LOCK_FILE, path);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        why_set(why, why_cap, "cannot open the owner lock %s: %s", path, strerror(errno));
        return QC_EIO;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int err = errno;
        char text[STORE_PID_TEXT_MAX] = "";
        ssize_t n = pread(fd, text, sizeof text - 1, 0);
        text[n > 0 ? n : 0] = '\0';
        text[strcspn(text, "\n")] = '\0';
        close(fd);
        if (err == EWOULDBLOCK) {
            why_set(why, why_cap, "%s is in use by process %s (lock %s): one process per store",
                    dir, text[0] != '\0' ? text : "(pid unknown)", path);
            return QC_EBUSY;
        }
        why_set(why, why_cap, "cannot lock %s: %s", path, strerror(err));
        return QC_EIO;
    }
    char pid[STORE_PID_TEXT_MAX];
    int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    assert(len > 0);
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len) {
        why_set(why, why_cap, "cannot write the owner lock %s: %s", path, strerror(errno));
        close(fd);
        return QC_EIO;
    }
    ops_store_lock_t *lock = malloc(sizeof *lock);
    if (lock == NULL) {
        close(fd);
        return QC_ENOMEM;
    }
    lock->fd = fd;
    *out = lock;
    return 0;
}

void ops_store_unlock(ops_store_lock_t **lock_p)
{
    if (lock_p == NULL || *lock_p == NULL)
        return;
    /* The pid stays in the file: the lock, not the text, says who owns the store. */
    close((*lock_p)->fd);
    free(*lock_p);
    *lock_p = NULL;
}

/* ------------------------------------------------------------ the file check */

static uint32_t rd32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v); /* LMDB writes its meta in the host's byte order */
    return v;
}

static uint64_t rd64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

typedef struct store_meta {
    bool valid;
    uint32_t psize;
    uint64_t last_pg;
    uint64_t txnid;
} store_meta_t;

/* Reads the meta page at offset off (its MDB_meta after the page header). */
static int meta_read(int fd, off_t off, store_meta_t *m)
{
    uint8_t buf[LMDB_META_SIZE];
    memset(m, 0, sizeof *m);
    ssize_t n = pread(fd, buf, sizeof buf, off + LMDB_PAGE_HEADER);
    if (n < 0)
        return QC_EIO;
    if ((size_t)n < sizeof buf)
        return 0; /* not valid */
    uint32_t psize = rd32(buf + LMDB_META_PSIZE_OFF);
    m->valid = rd32(buf + LMDB_META_MAGIC_OFF) == LMDB_MAGIC &&
               rd32(buf + LMDB_META_VERSION_OFF) == LMDB_DATA_VERSION && psize >= LMDB_PSIZE_MIN &&
               psize <= LMDB_PSIZE_MAX && (psize & (psize - 1)) == 0;
    m->psize = psize;
    m->last_pg = rd64(buf + LMDB_META_LAST_PG_OFF);
    m->txnid = rd64(buf + LMDB_META_TXNID_OFF);
    return 0;
}

int ops_store_check_file(const char *dir, bool may_create, char *why, size_t why_cap)
{
    assert(dir != NULL);
    char path[STORE_PATH_MAX];
    path_in(dir, OPS_STORE_DATA_FILE, path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) {
            why_set(why, why_cap, "%s does not exist: no store was initialized here", path);
            return may_create ? 0 : QC_ENOTFOUND;
        }
        why_set(why, why_cap, "cannot open %s: %s", path, strerror(errno));
        return QC_EIO;
    }
    struct stat st;
    store_meta_t m0, m1;
    int rc = fstat(fd, &st) == 0 ? 0 : QC_EIO;
    if (rc != 0) {
        why_set(why, why_cap, "cannot stat %s: %s", path, strerror(errno));
        goto out;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size == 0) {
        why_set(why, why_cap,
                "%s is 0 bytes: the store was wiped or never written (a new store is made by init, "
                "never by starting on an empty file)",
                path);
        rc = QC_ECORRUPT;
        goto out;
    }
    if ((rc = meta_read(fd, 0, &m0)) != 0) {
        why_set(why, why_cap, "cannot read %s: %s", path, strerror(errno));
        goto out;
    }
    if (!m0.valid) {
        why_set(why, why_cap, "%s (%" PRIu64 " bytes) does not start with an LMDB meta page", path,
                size);
        rc = QC_ECORRUPT;
        goto out;
    }
    if (size < 2ull * m0.psize) {
        why_set(why, why_cap,
                "%s is truncated: %" PRIu64 " bytes, shorter than its two meta pages (%u bytes)",
                path, size, 2u * m0.psize);
        rc = QC_ECORRUPT;
        goto out;
    }
    if ((rc = meta_read(fd, (off_t)m0.psize, &m1)) != 0) {
        why_set(why, why_cap, "cannot read %s: %s", path, strerror(errno));
        goto out;
    }
    const store_meta_t *m = m1.valid && m1.psize == m0.psize && m1.txnid > m0.txnid ? &m1 : &m0;
    uint64_t need = (m->last_pg + 1) * (uint64_t)m->psize;
    if (m->last_pg > (UINT64_MAX / m->psize) - 1 || size < need) {
        why_set(why, why_cap,
                "%s is truncated: %" PRIu64 " bytes, but its meta page (txn %" PRIu64
                ") uses pages up to %" PRIu64 " of %u bytes (%" PRIu64 " bytes)",
                path, size, m->txnid, m->last_pg, m->psize, need);
        rc = QC_ECORRUPT;
        goto out;
    }
    rc = 0;
out:
    close(fd);
    return rc;
}

/* ------------------------------------------------------------ the identity */

static int identity_format(const ops_store_identity_t *id, char *out, size_t cap)
{
    int n =
        snprintf(out, cap,
                 "kind=%s\ncluster=%s\nshard=%" PRId64 "\nshard_count=%" PRIu32
                 "\ncreated_ms=%" PRIu64 "\nformat=%" PRIu32 "\n",
                 id->kind, id->cluster_id, id->shard, id->shard_count, id->created_ms, id->format);
    return n > 0 && (size_t)n < cap ? n : -1;
}

/* Parses the text lines of identity_format(); every field must be there once. */
static int identity_parse(const char *text, size_t len, ops_store_identity_t *out)
{
    char buf[STORE_IDENTITY_TEXT_MAX];
    if (len >= sizeof buf)
        return QC_ECORRUPT;
    memcpy(buf, text, len);
    buf[len] = '\0';
    memset(out, 0, sizeof *out);
    unsigned seen = 0;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        char *eq = strchr(line, '=');
        if (eq == NULL)
            return QC_ECORRUPT;
        *eq = '\0';
        const char *v = eq + 1;
        char *end = NULL;
        errno = 0;
        if (strcmp(line, "kind") == 0 && strlen(v) <= OPS_STORE_KIND_MAX) {
            memcpy(out->kind, v, strlen(v) + 1);
            seen |= 1u;
        } else if (strcmp(line, "cluster") == 0 && ops_store_check_cluster_id(v, NULL, 0)) {
            memcpy(out->cluster_id, v, strlen(v) + 1);
            seen |= 2u;
        } else if (strcmp(line, "shard") == 0) {
            out->shard = strtoll(v, &end, 10);
            seen |= 4u;
        } else if (strcmp(line, "shard_count") == 0) {
            out->shard_count = (uint32_t)strtoul(v, &end, 10);
            seen |= 8u;
        } else if (strcmp(line, "created_ms") == 0) {
            out->created_ms = strtoull(v, &end, 10);
            seen |= 16u;
        } else if (strcmp(line, "format") == 0) {
            out->format = (uint32_t)strtoul(v, &end, 10);
            seen |= 32u;
        } else {
            return QC_ECORRUPT;
        }
        if (end != NULL && (*end != '\0' || end == v || errno != 0))
            return QC_ECORRUPT;
    }
    return seen == 63u ? 0 : QC_ECORRUPT;
}

int ops_store_identity_read(const char *dir, ops_store_identity_t *out, char *why, size_t why_cap)
{
    assert(dir != NULL);
    assert(out != NULL);
    memset(out, 0, sizeof *out);
    int rc = ops_store_check_file(dir, false, why, why_cap);
    if (rc != 0)
        return rc;
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    if ((rc = mdb_env_create(&env)) != 0 || (rc = mdb_env_set_maxdbs(env, STORE_MAXDBS)) != 0 ||
        (rc = mdb_env_open(env, dir, MDB_RDONLY | MDB_NOLOCK | MDB_NOTLS, 0600)) != 0 ||
        (rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn)) != 0) {
        why_set(why, why_cap, "cannot open the store in %s: %s", dir, mdb_strerror(rc));
        rc = QC_EIO;
        goto out;
    }
    rc = mdb_dbi_open(txn, OPS_STORE_IDENTITY_DB, 0, &dbi);
    MDB_val k = {.mv_size = strlen(OPS_STORE_IDENTITY_KEY), .mv_data = OPS_STORE_IDENTITY_KEY};
    MDB_val v;
    if (rc == 0)
        rc = mdb_get(txn, dbi, &k, &v);
    if (rc == MDB_NOTFOUND) {
        why_set(why, why_cap,
                "the store in %s has no identity: it was made before `init` existed (run init "
                "--upgrade once) or it is not ours",
                dir);
        rc = QC_ENOTFOUND;
    } else if (rc != 0) {
        why_set(why, why_cap, "cannot read the identity of the store in %s: %s", dir,
                mdb_strerror(rc));
        rc = QC_EIO;
    } else if (identity_parse(v.mv_data, v.mv_size, out) != 0) {
        why_set(why, why_cap, "the identity record of the store in %s does not parse", dir);
        rc = QC_ECORRUPT;
    }
out:
    if (txn != NULL)
        mdb_txn_abort(txn);
    if (env != NULL)
        mdb_env_close(env);
    return rc;
}

int ops_store_identity_check(const ops_store_identity_t *have, const ops_store_identity_t *want,
                             const char *dir, char *why, size_t why_cap)
{
    assert(have != NULL);
    assert(want != NULL);
    assert(dir != NULL);
    if (strcmp(have->kind, want->kind) != 0) {
        why_set(why, why_cap, "the store in %s is a %s store, not a %s store", dir, have->kind,
                want->kind);
        return QC_ECONFIG;
    }
    if (strcmp(have->cluster_id, want->cluster_id) != 0) {
        why_set(why, why_cap,
                "the store in %s belongs to cluster \"%s\", not to this cluster \"%s\" "
                "(cluster_id)",
                dir, have->cluster_id, want->cluster_id);
        return QC_ECONFIG;
    }
    if (have->shard != want->shard || have->shard_count != want->shard_count) {
        why_set(why, why_cap,
                "the store in %s is shard %" PRId64 " of %" PRIu32 ", not shard %" PRId64
                " of %" PRIu32,
                dir, have->shard, have->shard_count, want->shard, want->shard_count);
        return QC_ECONFIG;
    }
    return 0;
}

/* Writes id into the store of dir (created when missing): the identity database and record
 * (replacing one only when replace). */
static int identity_write(const char *dir, const ops_store_identity_t *id, bool replace, char *why,
                          size_t why_cap)
{
    char text[STORE_IDENTITY_TEXT_MAX];
    int len = identity_format(id, text, sizeof text);
    assert(len > 0);
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    int rc;
    MDB_val k = {.mv_size = strlen(OPS_STORE_IDENTITY_KEY), .mv_data = OPS_STORE_IDENTITY_KEY};
    MDB_val v = {.mv_size = (size_t)len, .mv_data = text};
    if ((rc = mdb_env_create(&env)) != 0 || (rc = mdb_env_set_maxdbs(env, STORE_MAXDBS)) != 0 ||
        (rc = mdb_env_set_mapsize(env, OPS_STORE_MAP_SIZE)) != 0 ||
        (rc = mdb_env_open(env, dir, MDB_NOTLS, 0600)) != 0 ||
        (rc = mdb_txn_begin(env, NULL, 0, &txn)) != 0 ||
        (rc = mdb_dbi_open(txn, OPS_STORE_IDENTITY_DB, MDB_CREATE, &dbi)) != 0 ||
        (rc = mdb_put(txn, dbi, &k, &v, replace ? 0 : MDB_NOOVERWRITE)) != 0) {
        why_set(why, why_cap, "cannot write the identity of the store in %s: %s", dir,
                mdb_strerror(rc));
        rc = rc == MDB_KEYEXIST ? QC_EEXIST : QC_EIO;
        goto out;
    }
    rc = mdb_txn_commit(txn);
    txn = NULL;
    if (rc != 0) {
        why_set(why, why_cap, "cannot commit the identity of the store in %s: %s", dir,
                mdb_strerror(rc));
        rc = QC_EIO;
    }
out:
    if (txn != NULL)
        mdb_txn_abort(txn);
    if (env != NULL)
        mdb_env_close(env);
    return rc;
}

/* The upgrade of the store in dir (locked, data.mdb present and whole) to id's format. */
static int store_upgrade(const char *dir, const ops_store_identity_t *id,
                         ops_store_upgrade_fn *upgrade_fn, void *arg, char *why, size_t why_cap)
{
    ops_store_identity_t have;
    int rc = ops_store_identity_read(dir, &have, why, why_cap);
    if (rc != 0 && rc != QC_ENOTFOUND)
        return rc;
    bool had = rc == 0;
    if (had && have.format >= id->format) {
        why_set(why, why_cap, "the store in %s is current already (format %" PRIu32 ")", dir,
                have.format);
        return QC_EEXIST;
    }
    if (had && (rc = ops_store_identity_check(&have, id, dir, why, why_cap)) != 0)
        return rc;
    if (upgrade_fn != NULL && (rc = upgrade_fn(dir, had ? have.format : 0, arg, why, why_cap)) != 0)
        return rc;
    ops_store_identity_t w = *id;
    w.created_ms = had ? have.created_ms : ops_time_wall_ms();
    return identity_write(dir, &w, had, why, why_cap);
}

int ops_store_init(const char *dir, const ops_store_identity_t *id, bool upgrade,
                   ops_store_upgrade_fn *upgrade_fn, void *arg, char *why, size_t why_cap)
{
    assert(dir != NULL);
    assert(id != NULL);
    assert(id->kind[0] != '\0');
    if (!ops_store_check_cluster_id(id->cluster_id, NULL, 0)) {
        why_set(why, why_cap, "cluster_id \"%s\" is not a cluster id (A-Z a-z 0-9 . _ -)",
                id->cluster_id);
        return QC_ECONFIG;
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        why_set(why, why_cap, "cannot create %s: %s", dir, strerror(errno));
        return QC_EIO;
    }
    ops_store_lock_t *lock = NULL;
    int rc = ops_store_lock(dir, &lock, why, why_cap);
    if (rc != 0)
        return rc;
    char path[STORE_PATH_MAX];
    path_in(dir, OPS_STORE_DATA_FILE, path);
    struct stat st;
    bool exists = stat(path, &st) == 0;
    if (!upgrade && exists) {
        why_set(why, why_cap,
                "%s exists already: init makes new stores only (an old store without identity "
                "takes init --upgrade)",
                path);
        rc = QC_EEXIST;
    } else if (upgrade && !exists) {
        why_set(why, why_cap, "%s does not exist: nothing to upgrade (init without --upgrade)",
                path);
        rc = QC_ENOTFOUND;
    } else if (upgrade) {
        rc = ops_store_check_file(dir, false, why, why_cap);
        if (rc == 0)
            rc = store_upgrade(dir, id, upgrade_fn, arg, why, why_cap);
    } else {
        ops_store_identity_t w = *id;
        w.created_ms = ops_time_wall_ms();
        rc = identity_write(dir, &w, false, why, why_cap);
    }
    ops_store_unlock(&lock);
    return rc;
}

static int store_claim(const char *dir, const ops_store_identity_t *want, ops_store_lock_t **lock,
                       char *why, size_t why_cap)
{
    struct stat st;
    if (dir == NULL || dir[0] == '\0') {
        why_set(why, why_cap, "data_dir is not set");
        return QC_ECONFIG;
    }
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        why_set(why, why_cap, "data_dir %s does not exist: no store was initialized there (init)",
                dir);
        return QC_ENOTFOUND;
    }
    int rc = ops_store_lock(dir, lock, why, why_cap);
    if (rc != 0)
        return rc;
    ops_store_identity_t have;
    if ((rc = ops_store_identity_read(dir, &have, why, why_cap)) == 0)
        rc = ops_store_identity_check(&have, want, dir, why, why_cap);
    if (rc == 0 && have.format < want->format) {
        why_set(why, why_cap,
                "the store in %s is of format %" PRIu32 ", older than this release's %" PRIu32
                " (records without checksums): stop, run init --upgrade once, start",
                dir, have.format, want->format);
        rc = QC_EVERSION;
    }
    if (rc == 0 && have.format > want->format) {
        why_set(why, why_cap,
                "the store in %s is of format %" PRIu32 ", newer than this release's %" PRIu32
                ": run the release that wrote it",
                dir, have.format, want->format);
        rc = QC_EVERSION;
    }
    if (rc != 0)
        ops_store_unlock(lock);
    return rc;
}

int ops_store_claim(const char *dir, const ops_store_identity_t *want, ops_store_lock_t **lock,
                    char *why, size_t why_cap)
{
    assert(want != NULL);
    assert(lock != NULL);
    assert(why != NULL);
    *lock = NULL;
    int rc = store_claim(dir, want, lock, why, why_cap);
    if (rc != 0) {
        char event[OPS_STORE_KIND_MAX + 32];
        snprintf(event, sizeof event, "%s.store_refused", want->kind);
        ops_log(OPS_LOG_ERROR, event, "data_dir", dir != NULL ? dir : "", "error", why, NULL);
    }
    return rc;
}

/* ------------------------------------------------------------ `<program> init` */

#define STORE_INIT_EXTRA 1
static const ops_config_key_t store_init_keys[STORE_INIT_EXTRA] = {
    {"upgrade", OPS_CONFIG_BOOL, "false",
     "give an existing store made before init existed its identity (nothing else changes)"},
};

int ops_store_init_main(const ops_service_spec_t *spec, ops_store_identity_fn *fn,
                        ops_store_upgrade_fn *upgrade_fn, int argc, char **argv)
{
    assert(spec != NULL);
    assert(fn != NULL);
    /* The table must outlive the config, which lives until this function returns. */
    ops_config_key_t keys[OPS_CONFIG_KEYS_MAX];
    size_t n = spec->key_count;
    assert(n + OPS_SERVICE_KEYS + STORE_INIT_EXTRA <= OPS_CONFIG_KEYS_MAX);
    memcpy(keys, spec->keys, n * sizeof keys[0]);
    memcpy(&keys[n], ops_service_shared_keys(), OPS_SERVICE_KEYS * sizeof keys[0]);
    n += OPS_SERVICE_KEYS;
    memcpy(&keys[n], store_init_keys, sizeof store_init_keys);
    n += STORE_INIT_EXTRA;
    char program[OPS_CONFIG_VALUE_MAX], usage[OPS_CONFIG_VALUE_MAX];
    snprintf(program, sizeof program, "%s init", spec->program);
    snprintf(usage, sizeof usage,
             "[--upgrade] [--config FILE] [options]\n"
             "Creates the %s store of data_dir with its identity (cluster_id%s, creation time),\n"
             "from the same config file the service starts with. A service refuses a store\n"
             "that was not made by init: missing, empty, truncated, or of another cluster.",
             spec->service, strcmp(spec->service, "ledger") == 0 ? ", shard, shard_count" : "");
    ops_config_t *cfg = NULL;
    char err[OPS_CONFIG_ERROR_MAX] = "";
    int rc = ops_config_load(program, usage, keys, n, argc, argv, &cfg, err, sizeof err);
    if (rc == 1)
        return OPS_SERVICE_EXIT_OK;
    if (rc == 0 && ops_config_argc(cfg) != 0) {
        snprintf(err, sizeof err, "unexpected argument %s", ops_config_arg(cfg, 0));
        rc = QC_ECONFIG;
    }
    if (rc == 0 && spec->check != NULL && !spec->check(cfg, err, sizeof err))
        rc = QC_ECONFIG;
    const char *dir = rc == 0 ? ops_config_str(cfg, "data_dir") : NULL;
    if (rc == 0 && (dir == NULL || dir[0] == '\0')) {
        snprintf(err, sizeof err, "data_dir: required");
        rc = QC_ECONFIG;
    }
    if (rc != 0) {
        fprintf(stderr, "%s: %s\n", program, err);
        ops_config_destroy(&cfg);
        return OPS_SERVICE_EXIT_USAGE;
    }
    ops_store_identity_t want;
    memset(&want, 0, sizeof want);
    fn(cfg, &want);
    char why[OPS_STORE_WHY_MAX] = "";
    bool upgrade = ops_config_bool(cfg, "upgrade");
    rc = ops_store_init(dir, &want, upgrade, upgrade_fn, cfg, why, sizeof why);
    char shard[64] = "";
    if (want.shard != OPS_STORE_NO_SHARD)
        snprintf(shard, sizeof shard, ", shard %" PRId64 " of %" PRIu32, want.shard,
                 want.shard_count);
    if (rc == 0)
        printf("%s: %s the %s store in %s (cluster %s%s)\n", program,
               upgrade ? "upgraded" : "created", want.kind, dir, want.cluster_id, shard);
    else
        fprintf(stderr, "%s: refused: %s\n", program, why);
    ops_config_destroy(&cfg);
    if (rc == QC_ECONFIG)
        return OPS_SERVICE_EXIT_USAGE;
    return rc == 0 ? OPS_SERVICE_EXIT_OK : OPS_SERVICE_EXIT_FAILED;
}
