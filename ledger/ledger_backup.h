/* ledger_backup.h - hot, consistent copies of a shard's LMDB, for restores to the minute.
 *
 * A copy is made by the method "backup" (proto/ledger.proto) in a thread of its own, so the
 * service's loop, and with it every write, goes on while it runs: LMDB copies in one read
 * transaction (mdb_env_copy2, compacted), which writers never wait for. The copy is the state
 * of one commit. Its manifest is read from the copy itself, never from the live store, so it
 * describes exactly what was copied: shard, applied index and time, and the last outbox
 * sequence, after which `qcctl shard restore --replay-audit` replays the audit log
 * (ledger_replay.h).
 *
 * A backup directory, once done:
 *   data.mdb   the compacted copy
 *   MANIFEST   "key = value" lines: format, shard, shard_count, applied_index,
 *              applied_time_ms, outbox_seq, time_ms, bytes, copy_ms, sha256 (of data.mdb)
 * The manifest is written last (temporary file, fsync, rename, fsync of the directory), so a
 * directory with a MANIFEST holds a whole copy. */
#ifndef LEDGER_BACKUP_H
#define LEDGER_BACKUP_H

#include <stdint.h>

#include "ledger.pb-c.h"
#include "ledger_store.h"
#include "qc_error.h"

#define LEDGER_BACKUP_DIR_MAX 1024 /* bytes of a backup directory's path */
#define LEDGER_BACKUP_MANIFEST "MANIFEST"
#define LEDGER_BACKUP_FORMAT "qc-ledger-backup 1"

typedef struct ledger_backup ledger_backup_t;

/* A backup engine over store (borrowed; it must outlive the engine), whose copies are
 * opened with a map of map_size bytes to read their manifest. Returns 0 and sets *out,
 * QC_ENOMEM. */
QC_MUST_CHECK int ledger_backup_new(ledger_store_t *store, uint32_t shard, uint32_t shard_count,
                                    uint64_t map_size, ledger_backup_t **out);

/* Waits for a copy that runs, frees b, nulls *b_p; accepts NULL. */
void ledger_backup_destroy(ledger_backup_t **b_p);

/* Starts a copy into dir, or tells how the copy into dir stands. dir must be absolute, at
 * most LEDGER_BACKUP_DIR_MAX - 1 bytes, and absent (it is created, its parent must exist)
 * or empty. *reply gets done false while the copy runs, and every field once it is done;
 * its strings are borrowed from b until the next call. Returns 0; QC_EINVAL (a bad dir);
 * QC_EEXIST (dir is not empty); QC_EBUSY (a copy into another dir runs); the copy's own
 * failure (QC_EIO, QC_EFULL, QC_ECONFIG), once, for the call that learns it. */
QC_MUST_CHECK int ledger_backup_request(ledger_backup_t *b, const char *dir,
                                        Qcledger__BackupReply *reply);

#endif
