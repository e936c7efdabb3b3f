/* audit_store.h - the audit log in LMDB: entries by seq and the indexes that go with them.
 *
 * Databases of the environment (one directory, data.mdb + lock.mdb):
 *   entries      be64(seq) -> canonical(entry) || hash      (audit_chain.h)
 *   by_txn       txn_id -> be64(seq), sorted duplicates     (every entry of one load)
 *   dedupe       u8 len || source || be64(source_seq) -> be64(seq)
 *   sources      source -> be64(highest source_seq appended)  (the relay resumes after it)
 *   checkpoints  be64(seq of the checkpoint entry) -> be64(seq it covers)
 *   nodes        u8 level || be64(index) -> 32-byte hash    (the Merkle tree, below)
 *
 * The Merkle tree (RFC 9162, proto/proto_merkle.h) has one leaf per entry: leaf seq - 1 is
 * SHA-256(0x00 || canonical(entry)), canonical(entry) being the stored record without its
 * trailing chain hash (audit_chain.h). nodes holds the hash of every complete subtree:
 * level 0 the leaves, level l index i the subtree of leaves [i << l, (i + 1) << l). An
 * append adds its leaf and the subtrees it completes in the same transaction, about two rows
 * per entry; a proof reads O(log n) of them. A log written before the tree existed gets its
 * nodes rebuilt when it is next opened writable.
 *
 * Appends are group commits: one write transaction per call, however many events, so one
 * fsync (LMDB's default durable commit) covers them all. A call returns only after the
 * commit: whatever it reports appended is durable. Threads may share a store: LMDB
 * serializes writers, and read transactions are not tied to threads (MDB_NOTLS). */
#ifndef AUDIT_STORE_H
#define AUDIT_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "audit_chain.h"
#include "proto_merkle.h"
#include "qc_error.h"

#define AUDIT_STORE_MAP_SIZE_DEFAULT (4ull << 30) /* 4 GiB of address space, grown lazily */
#define AUDIT_STORE_MAP_SIZE_MIN (1ull << 20)
#define AUDIT_STORE_MAP_SIZE_MAX (1ull << 40) /* 1 TiB: qc-audit's map_size_mb and map_max_mb */
#define AUDIT_STORE_READERS_MAX 126
#define AUDIT_STORE_BATCH_MAX 4096 /* events in one append call */
/* The record format of the store's identity (ops/lib/ops_store.h). Entries carry their chain
 * hash, which is their checksum: audit_store_get() and the last entry an append chains to are
 * checked on every read (QC_ECORRUPT, logged as audit.corrupt_entry with the seq). */
#define AUDIT_STORE_FORMAT 1

/* Open flags. */
#define AUDIT_STORE_RDONLY                                                                         \
    0x1 /* MDB_RDONLY | MDB_NOLOCK: for a copy of the files; never writes                          \
         */
/* With AUDIT_STORE_RDONLY: read beside a running qc-audit, registered as a reader in its
 * lock.mdb (which must be writable), instead of on a copy without a lock. A map the running
 * qc-audit grew meanwhile is adopted at the next transaction (LMDB's MDB_MAP_RESIZED). */
#define AUDIT_STORE_SHARED 0x2

typedef struct audit_store audit_store_t;

/* One event to append. Borrowed: the store copies what it keeps. */
typedef struct audit_event {
    const char *source; /* NUL terminated */
    uint64_t source_seq;
    const char *type; /* NUL terminated */
    const uint8_t *txn_id;
    size_t txn_id_len;
    const uint8_t *payload;
    size_t payload_len;
    uint64_t time_ms; /* when it happened at the source; 0 = now */
} audit_event_t;

/* What became of one event of an append. */
typedef struct audit_append_result {
    int code;       /* 0, or why this event alone was refused (QC_EINVAL, QC_ETOOBIG) */
    uint64_t seq;   /* the entry holding it (new or, for a duplicate, the earlier one) */
    bool duplicate; /* (source, source_seq) was already in the log */
} audit_append_result_t;

/* Opens (creating when writable) the environment in directory dir with a map of map_size
 * bytes (ignored read-only). Returns 0 and sets *out, or QC_EINVAL (map_size below
 * AUDIT_STORE_MAP_SIZE_MIN), QC_EIO (cannot open; logged), QC_ENOMEM. */
QC_MUST_CHECK int audit_store_open(const char *dir, unsigned flags, uint64_t map_size,
                                   audit_store_t **out);

/* Same, and the map of a writable store grows online up to map_max bytes (0, or at most
 * map_size: it never grows, as with audit_store_open). It doubles once it is more than
 * OPS_STORAGE_GROW_PCT used (audit_store_poll) or when an append meets a full map
 * (audit_store_append), never beyond what the disk could hold (ops_storage.h). Growth pauses
 * every thread of the store: it waits until their open transactions end (a long scan delays
 * it) and holds new ones back meanwhile; readers never see a map being changed. Returns as
 * audit_store_open, and QC_EINVAL for map_max over AUDIT_STORE_MAP_SIZE_MAX. */
QC_MUST_CHECK int audit_store_open_growing(const char *dir, unsigned flags, uint64_t map_size,
                                           uint64_t map_max, audit_store_t **out);

/* Closes the environment, frees store, nulls *store_p; accepts NULL. */
void audit_store_destroy(audit_store_t **store_p);

/* A writable store watches its space (ops/lib/ops_storage.h): a full disk or full map is a
 * state, logged once when entered and once when left, with gauges labelled store="audit".
 * poll looks at the free space and the map (call about once a second, from one thread).
 * healthy is false, with the sentence in why, while the disk or map is full or the last
 * append could not be committed (for any reason); thread-safe. */
void audit_store_poll(audit_store_t *store);
bool audit_store_healthy(audit_store_t *store, char *why, size_t why_cap);

/* Appends events[0..n) in order in one durable transaction (1 <= n <= AUDIT_STORE_BATCH_MAX),
 * chaining each to the previous entry; events already in the log by (source, source_seq),
 * including earlier ones of the same call, are not appended again (duplicate, seq of the
 * first). An event with type AUDIT_TYPE_CHECKPOINT from AUDIT_SOURCE_SELF is also recorded
 * as a checkpoint covering source_seq. results[i] says what became of events[i].
 * A transaction that meets a full map is aborted whole; when the map may grow
 * (audit_store_open_growing) it grows and the same append runs once more, so the caller sees
 * one commit or none, never half of one, nor one twice.
 * Returns 0 once committed (results valid), or QC_EFULL (map full, at its map_max),
 * QC_ENOSPACE (disk full, or a full map the disk could not hold any larger), QC_EIO, QC_ENOMEM,
 * QC_EDENIED (read-only store), and then nothing was appended. Never call it inside
 * audit_store_scan()'s fn (growth would wait for it). */
QC_MUST_CHECK int audit_store_append(audit_store_t *store, const audit_event_t *events, size_t n,
                                     audit_append_result_t *results);

/* Seq and hash of the last entry; seq 0 and a zero hash when the log is empty.
 * Returns 0, QC_EIO or QC_EDECODE (the last record does not parse). */
QC_MUST_CHECK int audit_store_last(audit_store_t *store, uint64_t *seq,
                                   uint8_t hash[AUDIT_HASH_SIZE]);

/* Highest source_seq appended from source, 0 when none. Returns 0 or QC_EIO. */
QC_MUST_CHECK int audit_store_hwm(audit_store_t *store, const char *source, uint64_t *hwm);

/* The last checkpoint: seq of its entry and the seq it covers; both 0 when there is none.
 * Returns 0 or QC_EIO. */
QC_MUST_CHECK int audit_store_last_checkpoint(audit_store_t *store, uint64_t *entry_seq,
                                              uint64_t *covered_seq);

/* Number of entries and of checkpoints. Returns 0 or QC_EIO. */
QC_MUST_CHECK int audit_store_count(audit_store_t *store, uint64_t *entries, uint64_t *checkpoints);

/* A copy of the stored record of seq (canonical || hash) in a malloc'd buffer the caller
 * frees. Returns 0, QC_ENOTFOUND, QC_EIO, QC_ENOMEM. */
QC_MUST_CHECK int audit_store_get(audit_store_t *store, uint64_t seq, uint8_t **rec, size_t *len);

/* The seq dedupe holds for (source, source_seq). Returns 0, QC_ENOTFOUND or QC_EIO. */
QC_MUST_CHECK int audit_store_dedupe_get(audit_store_t *store, const char *source,
                                         uint64_t source_seq, uint64_t *seq);

/* Calls fn for every record from from_seq on, in key order, inside one read transaction;
 * key_seq is the LMDB key (a verifier compares it with the seq inside the record), rec is
 * valid only during the call. A non-zero return of fn stops the walk and is returned.
 * Returns 0 at the end, fn's value, QC_EDECODE (a key that is not 8 bytes) or QC_EIO. */
typedef int(audit_store_visit_fn)(void *arg, uint64_t key_seq, const uint8_t *rec, size_t len);
QC_MUST_CHECK int audit_store_scan(audit_store_t *store, uint64_t from_seq,
                                   audit_store_visit_fn *fn, void *arg);

/* The seqs of every entry about txn_id, ascending, into seqs (capacity cap); *n is the total
 * found (it may exceed cap: then only cap were written). Returns 0 or QC_EIO. */
QC_MUST_CHECK int audit_store_txn_seqs(audit_store_t *store, const uint8_t *txn_id,
                                       size_t txn_id_len, uint64_t *seqs, size_t cap, size_t *n);

/* Checks the indexes against the entries, in one read transaction: every dedupe key
 * (source, source_seq) names an entry with that source and source_seq, every by_txn pair
 * names an entry about that txn, every checkpoints row an entry of type audit.checkpoint
 * covering that seq, and dedupe holds exactly one key per entry. A forged dedupe key would
 * make audit answer "duplicate" for an event it never kept, so verify runs this too.
 * Returns 0; QC_EMISMATCH with *bad_seq set (the entry an index misnames, or 0 for a count
 * that differs); QC_EDECODE for a malformed index row; QC_EIO. */
QC_MUST_CHECK int audit_store_check_indexes(audit_store_t *store, uint64_t *bad_seq);

/* MTH of the first size entries (size 0: the empty tree). Returns 0, QC_ENOTFOUND (the log
 * has fewer entries), QC_EDECODE (a node is missing or malformed), QC_EIO. */
QC_MUST_CHECK int audit_store_tree_root(audit_store_t *store, uint64_t size,
                                        uint8_t root[AUDIT_HASH_SIZE]);

/* The inclusion proof of entry seq (leaf seq - 1) in the tree of the first size entries.
 * Returns 0, QC_EINVAL (seq 0 or above size), QC_ENOTFOUND (fewer than size entries),
 * QC_EDECODE, QC_EIO. */
QC_MUST_CHECK int audit_store_prove_inclusion(audit_store_t *store, uint64_t seq, uint64_t size,
                                              proto_merkle_hash_t path[PROTO_MERKLE_PROOF_MAX],
                                              size_t *path_len);

/* The consistency proof from the tree of old_size entries to that of new_size. Returns 0,
 * QC_EINVAL (old_size > new_size), QC_ENOTFOUND (fewer than new_size entries), QC_EDECODE,
 * QC_EIO. */
QC_MUST_CHECK int audit_store_prove_consistency(audit_store_t *store, uint64_t old_size,
                                                uint64_t new_size,
                                                proto_merkle_hash_t proof[PROTO_MERKLE_PROOF_MAX],
                                                size_t *proof_len);

/* The checkpoint (signed tree head) of tree size size, or the latest when size is 0: the seq
 * of its entry and the size it covers. Returns 0, QC_ENOTFOUND (no checkpoint covers exactly
 * size, or none at all), QC_EDECODE, QC_EIO. */
QC_MUST_CHECK int audit_store_checkpoint_for(audit_store_t *store, uint64_t size,
                                             uint64_t *entry_seq, uint64_t *covered_seq);

/* Recomputes the tree from the stored entries, in one read transaction, and compares every
 * stored node: each leaf and each complete subtree, and that nodes holds nothing else.
 * Returns 0; QC_EMISMATCH with *bad_seq the entry whose leaf or completed subtree differs or
 * is missing (the entry after the last for surplus nodes); QC_EDECODE; QC_EIO. */
QC_MUST_CHECK int audit_store_check_tree(audit_store_t *store, uint64_t *bad_seq);

#endif
