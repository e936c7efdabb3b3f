/* ops_storage.h - the health of one LMDB store: a full disk, a full map, online growth.
 *
 * Both stores (the ledger's and the audit log's) meet the same two conditions: the disk under
 * the data directory fills (a commit fails with ENOSPC: QC_ENOSPACE), or the LMDB map fills
 * (MDB_MAP_FULL: QC_EFULL). Neither is an I/O error, and neither may turn into a storm: before
 * this module a ledger on a full disk retried its failed commit in a loop, at 89% of a core and
 * 14,930 log lines a second. Here each store keeps one state:
 *
 *   OK ------ commit ENOSPC ------> DISK_FULL   writes refused QC_ENOSPACE, reads served
 *   OK ------ map full ------------> MAP_FULL    writes refused QC_EFULL, reads served
 *   OK ------ map over 90% --------> MAP_HIGH    a warning; writes go on (a store with
 *                                                refuse_high refuses new growth: degraded)
 *   MAP_HIGH - use back under 90%, or the map grew -> OK               (ops_storage_poll)
 *   DISK_FULL - free space grew, or a commit succeeded -> OK        (ops_storage_poll / _note)
 *   MAP_FULL -- the map grew, or a commit succeeded -> OK
 *
 * and writes exactly one log line per change of state (storage.disk_full, storage.map_full,
 * storage.map_high, storage.resumed, storage.map_grown), never one per attempt. The gauges,
 * labelled store="<name>": qc_storage_disk_free_bytes, qc_storage_map_used_bytes,
 * qc_storage_map_size_bytes, qc_storage_state (0 OK, 1 MAP_HIGH, 2 MAP_FULL, 3 DISK_FULL).
 *
 * Growth: ops_storage_poll() with may_grow, or ops_storage_grow() (the caller promises that
 * no transaction of this process is open, LMDB's condition for mdb_env_set_mapsize), doubles
 * the map, up to map_max and to no more than the disk could hold (the map's use plus the free
 * space, statvfs), once its use passes OPS_STORAGE_GROW_PCT; a store whose map is at map_max,
 * or whose disk could not hold a larger one, says so in ops_storage_why(). Each growth is one
 * storage.map_grown line and one count of qc_storage_map_growths_total{store}. The state may
 * be read from any thread; note, poll and grow from one thread at a time (the owner
 * serializes them). */
#ifndef OPS_STORAGE_H
#define OPS_STORAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lmdb.h>

#include "qc_error.h"

#define OPS_STORAGE_HIGH_PCT 90 /* the warning, and the ledger's refusal of growth */
#define OPS_STORAGE_GROW_PCT 75 /* growth starts here, so the warning is the last resort */
#define OPS_STORAGE_FREE_MIN (1024 * 1024) /* below it an I/O error is a full disk */
#define OPS_STORAGE_NAME_MAX 31
#define OPS_STORAGE_WHY_MAX 1024

typedef enum ops_storage_state {
    OPS_STORAGE_OK = 0,
    OPS_STORAGE_MAP_HIGH = 1,
    OPS_STORAGE_MAP_FULL = 2,
    OPS_STORAGE_DISK_FULL = 3,
} ops_storage_state_t;

typedef struct ops_storage_config {
    const char *name; /* "ledger", "audit": the gauges' label and the log lines' store field */
    const char *dir;  /* the data directory: its file system's free space is watched */
    MDB_env *env;     /* borrowed: must outlive the watcher */
    uint64_t map_max; /* growth up to this many bytes; 0 or at most the map: no growth */
    const char *map_max_key; /* the config key that raises map_max, named when at the max */
    bool refuse_high; /* the owner refuses growth writes in MAP_HIGH (the ledger): degraded */
} ops_storage_config_t;

typedef struct ops_storage ops_storage_t;

/* Returns 0 and sets *out, QC_EINVAL (a name over OPS_STORAGE_NAME_MAX), QC_ENOMEM. Reads
 * the map's use and the free space once. */
QC_MUST_CHECK int ops_storage_new(const ops_storage_config_t *cfg, ops_storage_t **out);
void ops_storage_destroy(ops_storage_t **st_p);

/* The code a failed write commit means: LMDB reports a write the disk took only in part as
 * EIO (QC_EIO), not ENOSPC, so QC_EIO while the file system of the store has less than
 * OPS_STORAGE_FREE_MIN bytes free is QC_ENOSPACE; any other rc is returned as it is. */
QC_MUST_CHECK int ops_storage_classify(ops_storage_t *st, int rc);

/* What a write commit returned: 0 ends DISK_FULL and MAP_FULL; QC_ENOSPACE enters DISK_FULL,
 * QC_EFULL MAP_FULL; any other code is not about space and changes nothing. */
void ops_storage_note(ops_storage_t *st, int rc);

/* Looks at the map's use and the free space (call about once a second): updates the gauges,
 * grows the map when may_grow and its use passed OPS_STORAGE_GROW_PCT, leaves DISK_FULL once
 * the free space grew since the failure, leaves MAP_FULL once the map has room, enters
 * MAP_HIGH over OPS_STORAGE_HIGH_PCT. Returns the state after. */
ops_storage_state_t ops_storage_poll(ops_storage_t *st, bool may_grow);

/* Grows the map now, whatever its use: doubles it, up to map_max and to what the disk could
 * hold. The caller guarantees that no transaction of this process is open (the audit log
 * pauses its threads for it: audit_store.c). Returns 0 when it grew; QC_EFULL when the map is
 * at map_max; QC_ENOSPACE when the disk could not hold a larger map; QC_EIO when LMDB refused
 * (logged, rate-limited). The state is left as it is: ops_storage_poll() or a commit
 * (ops_storage_note) leaves MAP_FULL. */
QC_MUST_CHECK int ops_storage_grow(ops_storage_t *st);

/* True when growth is due: the map is below map_max and either over OPS_STORAGE_GROW_PCT
 * used (as of the last poll or note) or full. */
bool ops_storage_wants_growth(const ops_storage_t *st);

/* The state, from any thread. */
ops_storage_state_t ops_storage_state(const ops_storage_t *st);

/* True when writes are taken (OK, or MAP_HIGH without refuse_high); else false and a sentence in
 * why, such as "degraded: disk full under /var/lib/qc (0 bytes free): writes refused, reads
 * served". Thread-safe. */
bool ops_storage_healthy(const ops_storage_t *st, char *why, size_t why_cap);

/* The sentence a refused write carries ("the map is at its maximum: raise map_max_mb"), for
 * the current state; "" when writes are taken. Copied into out; thread-safe. */
void ops_storage_why(const ops_storage_t *st, char *out, size_t cap);

#endif
