/* audit_checkpoint.h - signed checkpoints of the audit chain, made by the signer's HSM key.
 *
 * One thread. Every checkpoint_entries entries, or checkpoint_seconds after the last
 * checkpoint when anything was appended since, it asks the signer (method "sign",
 * SignRequest{SIGN_AUDIT_CHECKPOINT, packed AuditCheckpoint{seq, hash, time_ms, root}}) to
 * sign the last entry's seq and chain hash and the Merkle root of entries 1..seq (the log's
 * signed tree head, RFC 9162, audit_store.h), checks the signed envelope against the
 * audit-checkpoint certificate when one is configured (a signer with another key is refused, not
 * stored), and appends it as a checkpoint entry (source "audit", type "audit.checkpoint",
 * source_seq = the covered seq).
 *
 * Metrics: qc_audit_checkpoints_total, qc_audit_checkpoint_errors_total,
 * qc_audit_unsigned_entries (entries after the last checkpoint's seq). */
#ifndef AUDIT_CHECKPOINT_H
#define AUDIT_CHECKPOINT_H

#include <stdint.h>

#include <openssl/evp.h>

#include "audit_store.h"
#include "proto_rpc.h"
#include "qc_error.h"

#define AUDIT_CHECKPOINT_ENTRIES 1000 /* default: entries between checkpoints */
#define AUDIT_CHECKPOINT_SECONDS 10   /* default: longest time an entry waits for one */
#define AUDIT_CHECKPOINT_ENTRIES_MAX 10000000
#define AUDIT_CHECKPOINT_SECONDS_MAX 86400
#define AUDIT_CHECKPOINT_RPC_TIMEOUT_MS 5000
#define AUDIT_CHECKPOINT_TICK_MS 100 /* how often the thread looks at the log */

typedef struct audit_checkpoint audit_checkpoint_t;

typedef struct audit_checkpoint_config {
    void *zctx;                        /* not owned */
    audit_store_t *store;              /* not owned */
    const char *signer;                /* signer endpoints, comma-separated */
    const char *signer_key;            /* the signer's CURVE public key (Z85) */
    const proto_curve_keypair_t *keys; /* audit's own key pair */
    EVP_PKEY *cert_key;                /* audit-checkpoint public key, or NULL; borrowed */
    uint64_t entries;                  /* 1..AUDIT_CHECKPOINT_ENTRIES_MAX */
    uint64_t seconds;                  /* 1..AUDIT_CHECKPOINT_SECONDS_MAX */
} audit_checkpoint_config_t;

/* Creates the signer client. Returns 0 and sets *out, QC_ECONFIG or QC_ENOMEM. */
QC_MUST_CHECK int audit_checkpoint_new(const audit_checkpoint_config_t *cfg,
                                       audit_checkpoint_t **out);

/* Starts the thread. Returns 0 or QC_EINTERNAL. */
QC_MUST_CHECK int audit_checkpoint_start(audit_checkpoint_t *cp);

/* Makes one checkpoint now if anything is unsigned, in the caller's thread (the thread must
 * not be running). Returns 0 (also when there was nothing to sign), or the error of the
 * signer call, the check or the append. */
QC_MUST_CHECK int audit_checkpoint_once(audit_checkpoint_t *cp);

/* Stops and joins the thread, frees cp, nulls *cp_p; accepts NULL. */
void audit_checkpoint_destroy(audit_checkpoint_t **cp_p);

#endif
