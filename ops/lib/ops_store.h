/* ops_store.h - what every LMDB store of ours checks before it is served: it was initialized on
 * purpose, its file is whole, it belongs to this cluster (and shard), and one process owns it.
 *
 * Both stores (the ledger's, ledger/ledger_store.h, and the audit log's, audit/audit_store.h)
 * keep their state in one LMDB environment in one directory. LMDB alone turns three faults
 * into silent or violent failures, which this module turns into refusals of one sentence:
 *   - a data.mdb that is missing or 0 bytes is a new, empty environment to LMDB: a wiped disk
 *     was served as a new bank. Only `init` creates a store; a service refuses both.
 *   - a data.mdb shorter than its own meta pages say (cut by a bad copy or a full disk) is
 *     mapped anyway, and the first read past its end is SIGBUS. ops_store_check_file() reads
 *     both meta pages with pread(), takes the newer one as LMDB does, and refuses a file
 *     shorter than (last page + 1) * page size before anything maps it.
 *   - two processes on one directory both write: LMDB's own lock allows it. The owner lock is
 *     flock() on OPS_STORE_LOCK_FILE, held for the owner's life, with its pid in the file.
 *
 * The identity is one record, OPS_STORE_IDENTITY_KEY in the named database
 * OPS_STORE_IDENTITY_DB, kept outside the databases a store replicates or snapshots, as text
 * lines ("kind=ledger\ncluster=...\nshard=0\nshard_count=2\ncreated_ms=...\nformat=2\n") so that
 * mdb_dump shows it. A store without it was made before `init` existed: the service refuses it
 * and `init --upgrade` gives it one (docs/OPERATIONS.md). */
#ifndef OPS_STORE_H
#define OPS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ops_config.h"
#include "ops_service.h"
#include "qc_error.h"

#define OPS_STORE_DATA_FILE "data.mdb"
#define OPS_STORE_LOCK_FILE "owner.lock"
#define OPS_STORE_IDENTITY_DB "identity"
#define OPS_STORE_IDENTITY_KEY "identity"
#define OPS_STORE_WHY_MAX 512           /* one refusal sentence, paths included */
#define OPS_STORE_CLUSTER_ID_MAX 64     /* bytes of a cluster id: [A-Za-z0-9._-] */
#define OPS_STORE_KIND_MAX 16           /* "ledger", "audit" */
#define OPS_STORE_NO_SHARD (-1)         /* the shard of a store that has none (audit) */
#define OPS_STORE_MAP_SIZE (1ull << 20) /* init's map: the store grows it on its first open */

typedef struct ops_store_identity {
    char kind[OPS_STORE_KIND_MAX + 1];
    char cluster_id[OPS_STORE_CLUSTER_ID_MAX + 1];
    int64_t shard;        /* OPS_STORE_NO_SHARD, or 0 .. shard_count - 1 */
    uint32_t shard_count; /* 0 when there is no shard */
    uint64_t created_ms;  /* wall clock at init (informative: never compared) */
    uint32_t format;      /* the kind's record format (ledger_store.h: 2 = checksums) */
} ops_store_identity_t;

typedef struct ops_store_lock ops_store_lock_t;

/* True when id is a usable cluster id: 1..OPS_STORE_CLUSTER_ID_MAX characters of
 * [A-Za-z0-9._-]. As an ops_config_key_t check (why names what is wrong). */
bool ops_store_check_cluster_id(const char *id, char *why, size_t why_cap);

/* Takes the owner lock of dir (flock on dir/OPS_STORE_LOCK_FILE, created 0600, close-on-exec)
 * and writes this process's pid into it. Returns 0 and sets *out (held until
 * ops_store_unlock()); QC_EBUSY when another process holds it (why names its pid, read from
 * the file); QC_EIO when the file cannot be opened (why says so). */
QC_MUST_CHECK int ops_store_lock(const char *dir, ops_store_lock_t **out, char *why,
                                 size_t why_cap);

/* Releases the lock, frees it, nulls *lock_p; accepts NULL. */
void ops_store_unlock(ops_store_lock_t **lock_p);

/* Checks dir/data.mdb before LMDB maps it. Missing: 0 when may_create (LMDB will create it),
 * else QC_ENOTFOUND. 0 bytes, shorter than its two meta pages, meta pages that are not LMDB's,
 * or shorter than its newer meta page's last page: QC_ECORRUPT. QC_EIO when it cannot be read.
 * why gets one sentence naming the file and the sizes. */
QC_MUST_CHECK int ops_store_check_file(const char *dir, bool may_create, char *why, size_t why_cap);

/* Reads the identity of the store in dir without the owner lock, read-only (MDB_NOLOCK, so a
 * copy on read-only media works). Runs ops_store_check_file() first. Returns 0; QC_ENOTFOUND
 * (no data.mdb, or a store without identity), QC_ECORRUPT (the file, or the record does not
 * parse), QC_EIO; why says which. */
QC_MUST_CHECK int ops_store_identity_read(const char *dir, ops_store_identity_t *out, char *why,
                                          size_t why_cap);

/* Compares have (read from dir) with want: kind, cluster id, shard and shard count must be
 * equal. Returns 0 or QC_ECONFIG with why naming dir and both values. */
QC_MUST_CHECK int ops_store_identity_check(const ops_store_identity_t *have,
                                           const ops_store_identity_t *want, const char *dir,
                                           char *why, size_t why_cap);

/* Brings the records of the store in dir from format from (0: a store without identity) to
 * the current one, under the owner lock, before the new identity is written. arg is
 * ops_store_init()'s. Returns 0 or a QC_E* code with why filled in. */
typedef int(ops_store_upgrade_fn)(const char *dir, uint32_t from, void *arg, char *why,
                                  size_t why_cap);

/* Creates the store of dir with identity id (created_ms is filled in here): mkdir dir (0700)
 * when missing, the owner lock, then data.mdb must be missing. With upgrade, data.mdb must
 * instead exist and pass ops_store_check_file(), and have no identity or one of an older
 * format of the same cluster and shard: upgrade_fn (may be NULL) brings its records to id's
 * format, then the identity is (re)written. Returns 0; QC_EEXIST (a store is there already,
 * or is current), QC_ENOTFOUND (upgrade of nothing), QC_EBUSY (a process owns dir),
 * QC_ECONFIG (another cluster's or shard's), QC_ECORRUPT, QC_EIO; why says which. */
QC_MUST_CHECK int ops_store_init(const char *dir, const ops_store_identity_t *id, bool upgrade,
                                 ops_store_upgrade_fn *upgrade_fn, void *arg, char *why,
                                 size_t why_cap);

/* What a service does before it opens its store: the owner lock, the file check (must exist),
 * the identity read and compared with want (a format other than want's is QC_EVERSION: an
 * older store must be upgraded first). Returns 0 and sets *lock (the caller keeps it for
 * the process's life), or the code of the first refusal with why (one sentence naming dir),
 * which is also logged as "<want->kind>.store_refused" (fields data_dir, error). dir NULL or
 * empty is refused too (QC_ECONFIG). */
QC_MUST_CHECK int ops_store_claim(const char *dir, const ops_store_identity_t *want,
                                  ops_store_lock_t **lock, char *why, size_t why_cap);

/* Fills want's identity from a service's config: kind, cluster id, shard and count, format. */
typedef void(ops_store_identity_fn)(const ops_config_t *cfg, ops_store_identity_t *want);

/* `<program> init [--upgrade] [--config FILE] [flags]` for a service: loads the service's config
 * (the same file and flags it starts with, plus --upgrade), builds the identity with fn, and
 * runs ops_store_init() on the config's data_dir with upgrade_fn (may be NULL; its arg is the
 * loaded config). Prints one line on stdout (done) or stderr (why not). Returns the exit
 * status: OPS_SERVICE_EXIT_OK, _FAILED or _USAGE. */
int ops_store_init_main(const ops_service_spec_t *spec, ops_store_identity_fn *fn,
                        ops_store_upgrade_fn *upgrade_fn, int argc, char **argv);

#endif
