/* qcctl_restore.h - `qcctl shard restore`: a shard's backup put back, and the audit log's events
 * since the backup handed to the ledger to replay (docs/OPERATIONS.md, "Back up and restore a
 * shard").
 *
 * Offline, on the ledger's host, with the shard's ledger (or this replica) stopped:
 *   1. checks the backup (MANIFEST of `qcctl shard backup`, data.mdb's size and SHA-256);
 *   2. moves what the data dir holds aside (into lost-<time>/ there; only with --force when it
 *      holds a store), and with --new-group the replica's Raft dir too;
 *   3. copies data.mdb in (temporary file, fsync, rename);
 *   4. with --replay-audit, reads the audit log (--audit-dir, read beside a running qc-audit)
 *      and writes every event of source ledger-<shard> after the backup's outbox_seq into
 *      replay.events, in order and without a gap; qc-ledger replays it when it starts.
 * Exit 0 done, 1 refused (the message says why), 2 usage. */
#ifndef QCCTL_RESTORE_H
#define QCCTL_RESTORE_H

/* argv as main's: "qcctl", then flags and the words "shard" "restore" in any order. */
int qcctl_restore_main(int argc, char **argv);

#endif
