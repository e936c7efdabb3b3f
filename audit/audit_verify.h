/* audit_verify.h - offline verification of an audit log: the whole chain and every checkpoint.
 *
 * Works on a copy of the LMDB files (or those of a stopped service): the environment is
 * opened MDB_RDONLY | MDB_NOLOCK, so verification never writes, not even a lock file.
 * It checks, in seq order, the invariants of audit_chain.c: keys 1, 2, 3 ... without a
 * gap, each record parses strictly, carries the seq of its key, chains to the previous
 * hash and hashes to its stored hash; every checkpoint entry carries a Signed
 * AuditCheckpoint that verifies under the audit-checkpoint key, names an earlier entry
 * (the seq in its source_seq) and that entry's hash. The first break stops the walk.
 * Then the indexes are checked against the entries (audit_store_check_indexes()): a forged
 * dedupe key would otherwise let audit call an event a duplicate and never keep it.
 *
 * Checkpoints are also the log's signed tree heads (RFC 9162): a checkpoint with a Merkle
 * root must carry the root of entries 1..seq it covers, recomputed from the stored tree; and
 * the stored tree is recomputed from the entries, every leaf and complete subtree
 * (audit_store_check_tree()). A checkpoint without a root (made before the tree existed) is
 * checked as a chain checkpoint only and not counted as a tree head. */
#ifndef AUDIT_VERIFY_H
#define AUDIT_VERIFY_H

#include <stdbool.h>
#include <stdint.h>

#include <openssl/evp.h>
#include "audit_chain.h"
#include "audit_store.h"
#include "qc_error.h"

#define AUDIT_VERIFY_WHY_MAX 256

typedef struct audit_verify_report {
    uint64_t entries;               /* entries checked (up to and excluding the break) */
    uint64_t checkpoints;           /* checkpoint entries whose signature verified */
    uint64_t last_seq;              /* last entry checked */
    uint64_t signed_seq;            /* highest seq covered by a verified checkpoint */
    uint64_t tree_heads;            /* checkpoints whose Merkle root verified too */
    uint64_t tree_size;             /* largest tree size of a verified tree head */
    uint64_t break_seq;             /* seq of the first break, 0 when the log is intact */
    int break_code;                 /* QC_E* code of the break, 0 when intact */
    char why[AUDIT_VERIFY_WHY_MAX]; /* one sentence naming the break */
} audit_verify_report_t;

/* Verifies the log in directory dir; checkpoint signatures against key (the public key of
 * the audit-checkpoint certificate, borrowed). Fills *report in every case.
 * Returns 0 when the log is intact, the break's code (QC_EBADSIG: a hash or a checkpoint
 * signature does not verify, QC_EMISMATCH: a link, a seq or a checkpoint's hash differs,
 * QC_EKEYID: a checkpoint by another key, QC_EDECODE/QC_ETOOBIG/QC_EVERSION: a record that
 * does not parse, QC_ENOTFOUND: a gap; QC_EMISMATCH also for an index that misnames an
 * entry, with break_seq that entry, or last_seq + 1 when only a count differs) with
 * report->break_seq set, or QC_EIO / QC_ENOMEM
 * when the files could not be read (break_seq 0). */
QC_MUST_CHECK int audit_verify_dir(const char *dir, EVP_PKEY *key, audit_verify_report_t *report);

/* What qc-audit checks when it starts, on its open store: the chain since the last checkpoint
 * (from the entry it covers to the last entry: keys without a gap, each record parses, carries
 * its key's seq, links to the previous and hashes to its stored hash). Signatures are not
 * checked (the offline verify does that). Fills *report; returns 0 or the break's code with
 * report->break_seq and why set (as audit_verify_dir()). */
QC_MUST_CHECK int audit_verify_tail(audit_store_t *store, audit_verify_report_t *report);

/* Checks one checkpoint payload (a Signed AuditCheckpoint) under key: signature, then that
 * it covers covered_seq with covered_hash. Returns 0, the envelope's errors (QC_EKEYID,
 * QC_EBADSIG, QC_EDECODE ...) or QC_EMISMATCH. */
QC_MUST_CHECK int audit_verify_checkpoint(const uint8_t *payload, size_t len, EVP_PKEY *key,
                                          uint64_t covered_seq, const uint8_t covered_hash[32]);

/* A signed tree head, opened: the fields of the AuditCheckpoint it signs. */
typedef struct audit_tree_head {
    uint64_t size;    /* tree size = the last entry's seq covered */
    uint64_t time_ms; /* when it was signed */
    bool has_root;    /* false for a checkpoint made before the tree existed */
    uint8_t chain_hash[AUDIT_HASH_SIZE];
    uint8_t root[AUDIT_HASH_SIZE];
} audit_tree_head_t;

/* Opens a Signed AuditCheckpoint under key (signature first, then the body's decoding) into
 * *head. Returns 0, QC_EMISSING (no payload), the envelope's errors (QC_EKEYID, QC_EBADSIG,
 * QC_EDECODE ...) or the decoder's. */
QC_MUST_CHECK int audit_verify_tree_head(const uint8_t *payload, size_t len, EVP_PKEY *key,
                                         audit_tree_head_t *head);

#endif
