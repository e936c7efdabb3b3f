/* audit_checkpoint.c - asks the signer to sign the tree head {seq, hash, time, root} and logs the
 * result in the chain. */
#include "audit_checkpoint.h"

#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "audit_verify.h"
#include "ops_log.h"
#include "ops_metrics.h"
#include "ops_signal.h"
#include "ops_time.h"
#include "proto_decode.h"
#include "qc_error.h"
#include "signer.pb-c.h"

#define CHECKPOINT_MS_PER_S 1000u
#define CHECKPOINT_RETRY_MS 1000u /* wait after a failed checkpoint before the next try */

struct audit_checkpoint {
    audit_store_t *store;
    proto_rpc_client_t *cli;
    EVP_PKEY *cert_key;
    uint64_t entries;
    uint64_t seconds;
    uint64_t last_ms;  /* monotonic time of the last checkpoint (or of the start) */
    uint64_t retry_ms; /* no attempt before this monotonic time (after a failure) */
    pthread_t thread;
    bool started;
    atomic_bool stop;
    ops_counter_t *m_done;
    ops_counter_t *m_errors;
    ops_counter_t *m_appended;
    ops_gauge_t *m_unsigned;
};

int audit_checkpoint_new(const audit_checkpoint_config_t *cfg, audit_checkpoint_t **out)
{
    assert(cfg != NULL);
    assert(cfg->zctx != NULL);
    assert(cfg->store != NULL);
    assert(out != NULL);
    *out = NULL;
    if (cfg->signer == NULL || cfg->signer[0] == '\0' || cfg->signer_key == NULL ||
        cfg->keys == NULL || cfg->entries < 1 || cfg->entries > AUDIT_CHECKPOINT_ENTRIES_MAX ||
        cfg->seconds < 1 || cfg->seconds > AUDIT_CHECKPOINT_SECONDS_MAX)
        return QC_ECONFIG;
    audit_checkpoint_t *cp = calloc(1, sizeof *cp);
    if (cp == NULL)
        return QC_ENOMEM;
    proto_rpc_client_config_t cc = {
        .service = "signer",
        .endpoints = cfg->signer,
        .server_public_z85 = cfg->signer_key,
        .keys = cfg->keys,
    };
    int rc = proto_rpc_client_new(cfg->zctx, &cc, &cp->cli);
    if (rc != 0) {
        free(cp);
        return rc == QC_ENOMEM ? rc : QC_ECONFIG;
    }
    cp->store = cfg->store;
    cp->cert_key = cfg->cert_key;
    cp->entries = cfg->entries;
    cp->seconds = cfg->seconds;
    cp->last_ms = ops_time_mono_ms();
    atomic_init(&cp->stop, false);
    cp->m_done = ops_counter("qc_audit_checkpoints_total", "Signed checkpoints appended");
    cp->m_errors = ops_counter("qc_audit_checkpoint_errors_total", "Checkpoints that failed");
    cp->m_appended = ops_counter("qc_audit_entries_appended_total", "Entries appended to the log");
    cp->m_unsigned = ops_gauge("qc_audit_unsigned_entries", "Entries after the last checkpoint");
    *out = cp;
    return 0;
}

/* Asks the signer to sign {seq, hash, now}; on success *signed_out is the envelope. */
static int checkpoint_sign(audit_checkpoint_t *cp, uint64_t seq, const uint8_t *hash,
                           const uint8_t *root, proto_rpc_reply_t **reply_out,
                           Quancun__SignReply **signed_out)
{
    Quancun__AuditCheckpoint body = QUANCUN__AUDIT_CHECKPOINT__INIT;
    body.seq = seq;
    body.hash.data = (uint8_t *)hash;
    body.hash.len = AUDIT_HASH_SIZE;
    body.root.data = (uint8_t *)root;
    body.root.len = AUDIT_HASH_SIZE;
    body.time_ms = ops_time_wall_ms();
    uint8_t *packed = NULL, *req_bytes = NULL;
    size_t packed_len = 0, req_len = 0;
    int rc = proto_pack(&body.base, &packed, &packed_len);
    if (rc != 0)
        return rc;
    Quancun__SignRequest req = QUANCUN__SIGN_REQUEST__INIT;
    req.kind = QUANCUN__SIGN_KIND__SIGN_AUDIT_CHECKPOINT;
    req.body.data = packed;
    req.body.len = packed_len;
    rc = proto_pack(&req.base, &req_bytes, &req_len);
    free(packed);
    if (rc != 0)
        return rc;
    /* Signing is idempotent: a resent request only makes a second valid signature. */
    rc = proto_rpc_client_call(cp->cli, "sign", req_bytes, req_len, AUDIT_CHECKPOINT_RPC_TIMEOUT_MS,
                               PROTO_RPC_IDEMPOTENT, reply_out);
    free(req_bytes);
    if (rc != 0)
        return rc;
    if ((rc = (*reply_out)->code) != 0) {
        ops_log(OPS_LOG_WARN, "audit.checkpoint_refused", "error", (*reply_out)->message, NULL);
        return rc;
    }
    *signed_out = quancun__sign_reply__unpack(NULL, (*reply_out)->body_len, (*reply_out)->body);
    if (*signed_out == NULL || (*signed_out)->signed_.len == 0)
        return QC_EDECODE;
    return 0;
}

/* Entries not yet covered by a checkpoint, and the seq and hash a new one would cover. */
static int checkpoint_pending(audit_checkpoint_t *cp, uint64_t *pending, uint64_t *seq,
                              uint8_t hash[AUDIT_HASH_SIZE])
{
    uint64_t cp_entry = 0, covered = 0;
    int rc = audit_store_last(cp->store, seq, hash);
    if (rc == 0)
        rc = audit_store_last_checkpoint(cp->store, &cp_entry, &covered);
    if (rc != 0)
        return rc;
    /* The last checkpoint's own entry needs no checkpoint of its own unless entries were
     * appended between the seq it covers and itself. */
    *pending = *seq - covered - (*seq == cp_entry && cp_entry != 0 ? 1 : 0);
    ops_gauge_set(cp->m_unsigned, (int64_t)*pending);
    return 0;
}

/* The signed head says what was asked: seq, chain hash and root, under the checkpoint key. */
static int checkpoint_check(const audit_checkpoint_t *cp, const Quancun__SignReply *sr,
                            uint64_t seq, const uint8_t *hash, const uint8_t *root)
{
    audit_tree_head_t head;
    int rc = audit_verify_tree_head(sr->signed_.data, sr->signed_.len, cp->cert_key, &head);
    if (rc != 0)
        return rc;
    if (head.size != seq || !head.has_root ||
        CRYPTO_memcmp(head.chain_hash, hash, AUDIT_HASH_SIZE) != 0 ||
        CRYPTO_memcmp(head.root, root, AUDIT_HASH_SIZE) != 0)
        return QC_EMISMATCH;
    return 0;
}

int audit_checkpoint_once(audit_checkpoint_t *cp)
{
    assert(cp != NULL);
    uint64_t pending = 0, seq = 0;
    uint8_t hash[AUDIT_HASH_SIZE];
    int rc = checkpoint_pending(cp, &pending, &seq, hash);
    if (rc != 0 || pending == 0)
        return rc;
    proto_rpc_reply_t *reply = NULL;
    Quancun__SignReply *sr = NULL;
    /* The tree head: the Merkle root of the same entries 1..seq the chain hash covers. */
    uint8_t root[AUDIT_HASH_SIZE];
    rc = audit_store_tree_root(cp->store, seq, root);
    if (rc == 0)
        rc = checkpoint_sign(cp, seq, hash, root, &reply, &sr);
    if (rc == 0 && cp->cert_key != NULL)
        rc = checkpoint_check(cp, sr, seq, hash, root);
    if (rc == 0) {
        audit_event_t ev = {
            .source = AUDIT_SOURCE_SELF,
            .source_seq = seq,
            .type = AUDIT_TYPE_CHECKPOINT,
            .payload = sr->signed_.data,
            .payload_len = sr->signed_.len,
        };
        audit_append_result_t res;
        rc = audit_store_append(cp->store, &ev, 1, &res);
        if (rc == 0 && res.code != 0)
            rc = res.code;
        if (rc == 0 && !res.duplicate) {
            ops_counter_add(cp->m_done, 1);
            ops_counter_add(cp->m_appended, 1);
            char s[24], at[24];
            snprintf(s, sizeof s, "%" PRIu64, seq);
            snprintf(at, sizeof at, "%" PRIu64, res.seq);
            ops_log(OPS_LOG_INFO, "audit.checkpoint", "covers", s, "seq", at, NULL);
        }
    }
    if (sr != NULL)
        quancun__sign_reply__free_unpacked(sr, NULL);
    proto_rpc_reply_destroy(&reply);
    if (rc != 0) {
        ops_counter_add(cp->m_errors, 1);
        ops_log(OPS_LOG_WARN, "audit.checkpoint_failed", "error", qc_strerror(rc), NULL);
    }
    return rc;
}

static bool checkpoint_stopping(const audit_checkpoint_t *cp)
{
    return atomic_load(&cp->stop) || ops_signal_stop_requested();
}

static void *checkpoint_main(void *arg)
{
    audit_checkpoint_t *cp = arg;
    while (!checkpoint_stopping(cp)) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = AUDIT_CHECKPOINT_TICK_MS * 1000000L};
        nanosleep(&ts, NULL);
        uint64_t pending = 0, seq = 0;
        uint8_t hash[AUDIT_HASH_SIZE];
        if (checkpoint_pending(cp, &pending, &seq, hash) != 0 || pending == 0)
            continue;
        uint64_t now = ops_time_mono_ms();
        if (now < cp->retry_ms ||
            (pending < cp->entries && now - cp->last_ms < cp->seconds * CHECKPOINT_MS_PER_S))
            continue;
        /* After a failure, wait a little rather than hammer a signer that is down. */
        if (audit_checkpoint_once(cp) == 0)
            cp->last_ms = ops_time_mono_ms();
        else
            cp->retry_ms = ops_time_mono_ms() + CHECKPOINT_RETRY_MS;
    }
    return NULL;
}

int audit_checkpoint_start(audit_checkpoint_t *cp)
{
    assert(cp != NULL);
    assert(!cp->started);
    cp->last_ms = ops_time_mono_ms();
    if (pthread_create(&cp->thread, NULL, checkpoint_main, cp) != 0)
        return QC_EINTERNAL;
    cp->started = true;
    return 0;
}

void audit_checkpoint_destroy(audit_checkpoint_t **cp_p)
{
    if (cp_p == NULL || *cp_p == NULL)
        return;
    audit_checkpoint_t *cp = *cp_p;
    if (cp->started) {
        atomic_store(&cp->stop, true);
        pthread_join(cp->thread, NULL);
    }
    proto_rpc_client_destroy(&cp->cli);
    free(cp);
    *cp_p = NULL;
}
