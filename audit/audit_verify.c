/* audit_verify.c - recomputes the audit chain offline and checks every checkpoint signature. */
#include "audit_verify.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "audit_chain.h"
#include "audit_store.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "proto_receipt.h"
#include "qc_error.h"

typedef struct verify_walk {
    audit_store_t *store;
    EVP_PKEY *key;
    audit_verify_report_t *report;
    uint64_t expect_seq;
    uint8_t prev[AUDIT_HASH_SIZE];
} verify_walk_t;

static int verify_break(verify_walk_t *w, uint64_t seq, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int verify_break(verify_walk_t *w, uint64_t seq, int code, const char *fmt, ...)
{
    assert(code != 0);
    w->report->break_seq = seq;
    w->report->break_code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->report->why, sizeof w->report->why, fmt, ap);
    va_end(ap);
    return code;
}

int audit_verify_tree_head(const uint8_t *payload, size_t len, EVP_PKEY *key,
                           audit_tree_head_t *head)
{
    assert(key != NULL);
    assert(head != NULL);
    memset(head, 0, sizeof *head);
    proto_tree_head_t h;
    int rc = proto_checkpoint_open(payload, len, key, &h, &head->has_root);
    if (rc != 0)
        return rc;
    head->size = h.size;
    head->time_ms = h.time_ms;
    memcpy(head->chain_hash, h.chain_hash, AUDIT_HASH_SIZE);
    memcpy(head->root, h.root, AUDIT_HASH_SIZE);
    return 0;
}

int audit_verify_checkpoint(const uint8_t *payload, size_t len, EVP_PKEY *key, uint64_t covered_seq,
                            const uint8_t covered_hash[32])
{
    assert(key != NULL);
    assert(covered_hash != NULL);
    audit_tree_head_t head;
    int rc = audit_verify_tree_head(payload, len, key, &head);
    if (rc != 0)
        return rc;
    if (head.size != covered_seq ||
        CRYPTO_memcmp(head.chain_hash, covered_hash, AUDIT_HASH_SIZE) != 0)
        return QC_EMISMATCH;
    return 0;
}

/* The tree head in checkpoint entry e (whose signature and chain hash verified): its root is the
 * root of the first e->source_seq entries, from the stored tree (checked against the entries
 * at the end of the walk, audit_store_check_tree()). */
static int verify_tree_head_entry(verify_walk_t *w, const audit_entry_t *e)
{
    audit_tree_head_t head;
    int rc = audit_verify_tree_head(e->payload, e->payload_len, w->key, &head);
    if (rc != 0)
        return verify_break(w, e->seq, rc, "tree head at seq %" PRIu64 " does not open: %s", e->seq,
                            qc_strerror(rc));
    if (!head.has_root)
        return 0;
    uint8_t root[AUDIT_HASH_SIZE];
    if ((rc = audit_store_tree_root(w->store, head.size, root)) != 0)
        return verify_break(w, e->seq, rc,
                            "tree head at seq %" PRIu64 ": the tree of %" PRIu64
                            " entries cannot be read: %s",
                            e->seq, head.size, qc_strerror(rc));
    if (CRYPTO_memcmp(root, head.root, AUDIT_HASH_SIZE) != 0)
        return verify_break(w, e->seq, QC_EMISMATCH,
                            "tree head at seq %" PRIu64 " signs a Merkle root that is not the root "
                            "of entries 1..%" PRIu64,
                            e->seq, head.size);
    w->report->tree_heads++;
    if (head.size > w->report->tree_size)
        w->report->tree_size = head.size;
    return 0;
}

/* Checks the checkpoint entry e against the entry it covers. */
static int verify_checkpoint_entry(verify_walk_t *w, const audit_entry_t *e)
{
    if (e->source_seq >= e->seq)
        return verify_break(w, e->seq, QC_EMISMATCH,
                            "checkpoint at seq %" PRIu64 " claims to cover seq %" PRIu64
                            ", which is not earlier",
                            e->seq, e->source_seq);
    uint8_t *rec = NULL;
    size_t len = 0;
    int rc = audit_store_get(w->store, e->source_seq, &rec, &len);
    if (rc != 0)
        return verify_break(w, e->seq, rc,
                            "checkpoint at seq %" PRIu64 ": covered seq %" PRIu64 " unreadable: %s",
                            e->seq, e->source_seq, qc_strerror(rc));
    /* The covered entry was already checked by the walk: its stored hash is trusted. */
    const uint8_t *covered_hash = rec + len - AUDIT_HASH_SIZE;
    rc = audit_verify_checkpoint(e->payload, e->payload_len, w->key, e->source_seq, covered_hash);
    free(rec);
    if (rc != 0)
        return verify_break(w, e->seq, rc,
                            "checkpoint at seq %" PRIu64 " (covering seq %" PRIu64
                            ") does not verify: %s",
                            e->seq, e->source_seq, qc_strerror(rc));
    if ((rc = verify_tree_head_entry(w, e)) != 0)
        return rc;
    w->report->checkpoints++;
    if (e->source_seq > w->report->signed_seq)
        w->report->signed_seq = e->source_seq;
    return 0;
}

static bool is_checkpoint(const audit_entry_t *e)
{
    return e->source_len == strlen(AUDIT_SOURCE_SELF) &&
           memcmp(e->source, AUDIT_SOURCE_SELF, e->source_len) == 0 &&
           e->type_len == strlen(AUDIT_TYPE_CHECKPOINT) &&
           memcmp(e->type, AUDIT_TYPE_CHECKPOINT, e->type_len) == 0;
}

static int verify_visit(void *arg, uint64_t key_seq, const uint8_t *rec, size_t len)
{
    verify_walk_t *w = arg;
    if (key_seq != w->expect_seq)
        return verify_break(w, w->expect_seq, QC_ENOTFOUND,
                            "entry %" PRIu64 " is missing (next stored key is %" PRIu64 ")",
                            w->expect_seq, key_seq);
    audit_entry_t e;
    int rc = audit_chain_check_record(rec, len, w->prev, &e);
    if (rc == QC_EMISMATCH)
        return verify_break(w, key_seq, rc,
                            "entry %" PRIu64 " does not chain to entry %" PRIu64
                            " (prev_hash differs)",
                            key_seq, key_seq - 1);
    if (rc == QC_EBADSIG)
        return verify_break(w, key_seq, rc, "entry %" PRIu64 " does not hash to its stored hash",
                            key_seq);
    if (rc != 0)
        return verify_break(w, key_seq, rc, "entry %" PRIu64 " does not parse: %s", key_seq,
                            qc_strerror(rc));
    if (e.seq != key_seq)
        return verify_break(w, key_seq, QC_EMISMATCH,
                            "entry under key %" PRIu64 " says it is seq %" PRIu64, key_seq, e.seq);
    if (is_checkpoint(&e) && w->key != NULL && (rc = verify_checkpoint_entry(w, &e)) != 0)
        return rc;
    memcpy(w->prev, e.hash, AUDIT_HASH_SIZE);
    w->report->entries++;
    w->report->last_seq = key_seq;
    w->expect_seq++;
    return 0;
}

int audit_verify_dir(const char *dir, EVP_PKEY *key, audit_verify_report_t *report)
{
    assert(dir != NULL);
    assert(report != NULL);
    memset(report, 0, sizeof *report);
    audit_store_t *store = NULL;
    int rc = audit_store_open(dir, AUDIT_STORE_RDONLY, 0, &store);
    if (rc != 0) {
        snprintf(report->why, sizeof report->why, "cannot open the log in %s: %s", dir,
                 qc_strerror(rc));
        return rc;
    }
    verify_walk_t w = {.store = store, .key = key, .report = report, .expect_seq = 1};
    rc = audit_store_scan(store, 1, verify_visit, &w);
    if (rc != 0 && report->break_seq == 0)
        snprintf(report->why, sizeof report->why, "reading the log failed: %s", qc_strerror(rc));
    uint64_t bad = 0;
    if (rc == 0 && (rc = audit_store_check_indexes(store, &bad)) != 0) {
        /* The chain is intact but an index lies about it; name the entry it misnames. */
        report->break_seq = bad != 0 ? bad : report->last_seq + 1;
        report->break_code = rc;
        snprintf(report->why, sizeof report->why,
                 bad != 0 ? "an index (dedupe, by_txn or checkpoints) misnames entry %" PRIu64
                          : "the dedupe index does not hold exactly one key per entry (%" PRIu64
                            " entries)",
                 bad != 0 ? bad : report->entries);
    }
    if (rc == 0 && (rc = audit_store_check_tree(store, &bad)) != 0) {
        report->break_seq = bad != 0 ? bad : report->last_seq + 1;
        report->break_code = rc;
        snprintf(report->why, sizeof report->why,
                 "the stored Merkle tree differs from the entries at entry %" PRIu64
                 " (a leaf or subtree hash is wrong, missing or extra)",
                 report->break_seq);
    }
    audit_store_destroy(&store);
    return rc;
}

int audit_verify_tail(audit_store_t *store, audit_verify_report_t *report)
{
    assert(store != NULL);
    assert(report != NULL);
    memset(report, 0, sizeof *report);
    uint64_t entry_seq = 0, from = 0;
    int rc = audit_store_last_checkpoint(store, &entry_seq, &from);
    if (rc != 0) {
        snprintf(report->why, sizeof report->why, "reading the last checkpoint failed: %s",
                 qc_strerror(rc));
        return rc;
    }
    verify_walk_t w = {.store = store, .key = NULL, .report = report, .expect_seq = 1};
    if (from > 1) {
        /* The covered entry links to its predecessor: start there, trusting the link the
         * checkpoint signed (its hash chains over everything before it). */
        uint8_t *rec = NULL;
        size_t len = 0;
        audit_entry_t e;
        if ((rc = audit_store_get(store, from, &rec, &len)) != 0 ||
            (rc = audit_chain_parse(rec, len, &e)) != 0) {
            free(rec);
            report->break_seq = from;
            report->break_code = rc;
            snprintf(report->why, sizeof report->why,
                     "entry %" PRIu64 ", the last checkpoint's, is unreadable: %s", from,
                     qc_strerror(rc));
            return rc;
        }
        memcpy(w.prev, e.prev_hash, AUDIT_HASH_SIZE);
        free(rec);
        w.expect_seq = from;
    }
    rc = audit_store_scan(store, w.expect_seq, verify_visit, &w);
    if (rc != 0 && report->break_seq == 0)
        snprintf(report->why, sizeof report->why, "reading the log failed: %s", qc_strerror(rc));
    return rc;
}
