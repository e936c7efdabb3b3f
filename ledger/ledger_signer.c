/* ledger_signer.c - the ledger's signing stage: allows and outcomes signed after the commit.
 *
 * Every entry of the table moves through these states:
 *
 *   FREE --ask()--> ASKING --signed allow--> SIGNED --take()--> STORING --release()--> FREE
 *                     |  \--signed outcome: sent at once-------------------------------> FREE
 *                     \--signer failed or refused: waiters told------------------------> FREE
 *
 * Invariants:
 *  1. An entry that is not FREE owns between 1 and LEDGER_SIGNER_WAITERS_MAX waiting
 *     requests, and for an allow no other entry has its txn id (one signature in flight).
 *  2. An ASKING entry has exactly one call in flight at the signer, whose tag is the entry.
 *  3. No allow leaves this module except through an answer the service built after storing
 *     it: the bytes the signer returned are never sent to a device themselves. */
#include "ledger_signer.h"

#include <assert.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_fault.h"
#include "ops_hex.h"
#include "ops_log.h"
#include "ops_metrics.h"
#include "ledger.pb-c.h"
#include "ledger_saga.h"
#include "qc_error.h"

typedef enum signer_state {
    SIGNER_FREE = 0,
    SIGNER_ASKING,
    SIGNER_SIGNED,
    SIGNER_STORING,
} signer_state_t;

typedef struct signer_entry {
    signer_state_t state;
    Quancun__SignKind kind;
    uint8_t txn_id[LEDGER_TXN_ID_SIZE];
    proto_rpc_request_t *waiters[LEDGER_SIGNER_WAITERS_MAX];
    int waiter_count;
    uint8_t *prefix; /* outcome: the reply the envelope is appended to */
    size_t prefix_len;
    uint8_t *signed_env; /* allow: what the signer returned, while SIGNED or STORING */
    size_t signed_len;
    int code; /* STORING: the answer */
    char why[LEDGER_WHY_MAX];
    uint8_t *body;
    size_t body_len;
} signer_entry_t;

struct ledger_signer {
    proto_rpc_client_t *client;
    proto_rpc_server_t *server;
    int timeout_ms;
    signer_entry_t *entries; /* LEDGER_SIGNER_PENDING_MAX */
    int used;                /* entries not FREE */
    int signed_count;        /* entries SIGNED */
    ops_counter_t *m_asked, *m_failed, *m_busy;
};

int ledger_signer_new(const ledger_signer_config_t *cfg, ledger_signer_t **out)
{
    assert(cfg != NULL);
    assert(out != NULL);
    *out = NULL;
    if (cfg->zctx == NULL || cfg->server == NULL || cfg->keys == NULL ||
        cfg->server_public_z85 == NULL || cfg->timeout_ms <= 0 ||
        (cfg->endpoints == NULL) == (cfg->endpoints_path == NULL))
        return QC_ECONFIG;
    ledger_signer_t *ls = calloc(1, sizeof *ls);
    if (ls == NULL)
        return QC_ENOMEM;
    ls->entries = calloc(LEDGER_SIGNER_PENDING_MAX, sizeof *ls->entries);
    if (ls->entries == NULL) {
        free(ls);
        return QC_ENOMEM;
    }
    ls->server = cfg->server;
    ls->timeout_ms = cfg->timeout_ms;
    proto_rpc_client_config_t cc = {
        .service = "signer",
        .endpoints = cfg->endpoints,
        .endpoints_path = cfg->endpoints_path,
        .server_public_z85 = cfg->server_public_z85,
        .keys = cfg->keys,
    };
    int rc = proto_rpc_client_new(cfg->zctx, &cc, &ls->client);
    if (rc != 0) {
        ledger_signer_destroy(&ls);
        return rc;
    }
    ls->m_asked = ops_counter("qc_ledger_sign_requests_total", "Signatures asked of the signer");
    ls->m_failed =
        ops_counter("qc_ledger_sign_failures_total", "Signatures the signer did not give");
    ls->m_busy = ops_counter("qc_ledger_sign_busy_total", "Requests refused: signing table full");
    *out = ls;
    return 0;
}

static void entry_free(ledger_signer_t *ls, signer_entry_t *e)
{
    assert(e->state != SIGNER_FREE);
    for (int i = 0; i < e->waiter_count; i++)
        proto_rpc_request_destroy(&e->waiters[i]);
    if (e->state == SIGNER_SIGNED)
        ls->signed_count--;
    free(e->prefix);
    free(e->signed_env);
    free(e->body);
    memset(e, 0, sizeof *e);
    ls->used--;
    assert(ls->used >= 0);
    assert(ls->signed_count >= 0);
}

void ledger_signer_destroy(ledger_signer_t **ls_p)
{
    if (ls_p == NULL || *ls_p == NULL)
        return;
    ledger_signer_t *ls = *ls_p;
    for (int i = 0; ls->entries != NULL && i < LEDGER_SIGNER_PENDING_MAX; i++)
        if (ls->entries[i].state != SIGNER_FREE)
            entry_free(ls, &ls->entries[i]);
    proto_rpc_client_destroy(&ls->client);
    free(ls->entries);
    free(ls);
    *ls_p = NULL;
}

/* Sends one reply to every waiter of e. */
static void entry_reply(ledger_signer_t *ls, signer_entry_t *e, int code, const char *why,
                        const uint8_t *body, size_t body_len)
{
    for (int i = 0; i < e->waiter_count; i++) {
        int rc = proto_rpc_server_reply(ls->server, e->waiters[i], code, code != 0 ? why : NULL,
                                        body, body_len);
        if (rc != 0)
            ops_log(OPS_LOG_WARN, "ledger.reply_failed", "error", qc_strerror(rc), NULL);
    }
}

static signer_entry_t *find_allow(ledger_signer_t *ls, const uint8_t *txn_id)
{
    for (int i = 0, seen = 0; i < LEDGER_SIGNER_PENDING_MAX && seen < ls->used; i++) {
        signer_entry_t *e = &ls->entries[i];
        if (e->state == SIGNER_FREE)
            continue;
        seen++;
        if (e->kind == QUANCUN__SIGN_KIND__SIGN_LOAD_ALLOW &&
            memcmp(e->txn_id, txn_id, LEDGER_TXN_ID_SIZE) == 0)
            return e;
    }
    return NULL;
}

static signer_entry_t *find_free(ledger_signer_t *ls)
{
    if (ls->used == LEDGER_SIGNER_PENDING_MAX)
        return NULL;
    for (int i = 0; i < LEDGER_SIGNER_PENDING_MAX; i++)
        if (ls->entries[i].state == SIGNER_FREE)
            return &ls->entries[i];
    assert(!"used count and table disagree");
    return NULL;
}

static void add_waiter(signer_entry_t *e, proto_rpc_request_t **req)
{
    assert(e->waiter_count >= 1);
    if (e->waiter_count == LEDGER_SIGNER_WAITERS_MAX) {
        /* A gateway resends a Reserve it got no answer for; the oldest attempt is abandoned. */
        proto_rpc_request_destroy(&e->waiters[0]);
        memmove(&e->waiters[0], &e->waiters[1],
                (size_t)(e->waiter_count - 1) * sizeof e->waiters[0]);
        e->waiter_count--;
    }
    e->waiters[e->waiter_count++] = *req;
    *req = NULL;
}

int ledger_signer_ask(ledger_signer_t *ls, Quancun__SignKind kind,
                      const uint8_t txn_id[LEDGER_TXN_ID_SIZE], const uint8_t *body,
                      size_t body_len, uint8_t **prefix, size_t prefix_len,
                      proto_rpc_request_t **req)
{
    assert(ls != NULL);
    assert(txn_id != NULL);
    assert(body != NULL);
    assert(req != NULL);
    assert(*req != NULL);
    assert(kind == QUANCUN__SIGN_KIND__SIGN_LOAD_ALLOW ||
           kind == QUANCUN__SIGN_KIND__SIGN_LOAD_OUTCOME);
    assert((kind == QUANCUN__SIGN_KIND__SIGN_LOAD_OUTCOME) == (prefix != NULL));
    if (kind == QUANCUN__SIGN_KIND__SIGN_LOAD_ALLOW) {
        signer_entry_t *e = find_allow(ls, txn_id);
        if (e != NULL) {
            add_waiter(e, req);
            return 0;
        }
    }
    signer_entry_t *e = find_free(ls);
    if (e == NULL) {
        ops_counter_add(ls->m_busy, 1);
        return QC_EBUSY;
    }
    Quancun__SignRequest sr = QUANCUN__SIGN_REQUEST__INIT;
    sr.kind = kind;
    sr.body.data = (uint8_t *)body;
    sr.body.len = body_len;
    uint8_t *packed = NULL;
    size_t packed_len = 0;
    int rc = proto_pack(&sr.base, &packed, &packed_len);
    if (rc != 0)
        return rc;
    uint64_t request_id = 0;
    /* Signing has no effect but a signature: a resend is harmless, and the ledger stores one
     * allow whatever the signer returned twice. */
    rc = proto_rpc_client_send(ls->client, "sign", packed, packed_len, ls->timeout_ms,
                               PROTO_RPC_IDEMPOTENT, e, &request_id);
    free(packed);
    if (rc != 0) {
        ops_counter_add(ls->m_failed, 1);
        return rc == QC_EBUSY ? QC_EBUSY : QC_EUNAVAIL;
    }
    ops_counter_add(ls->m_asked, 1);
    e->state = SIGNER_ASKING;
    e->kind = kind;
    memcpy(e->txn_id, txn_id, LEDGER_TXN_ID_SIZE);
    e->waiters[0] = *req;
    e->waiter_count = 1;
    *req = NULL;
    if (prefix != NULL) {
        e->prefix = *prefix;
        e->prefix_len = prefix_len;
        *prefix = NULL;
    }
    ls->used++;
    return 0;
}

int ledger_signer_pollitems(ledger_signer_t *ls, void *items, int cap)
{
    assert(ls != NULL);
    return proto_rpc_client_pollitems(ls->client, items, cap);
}

int ledger_signer_next_timeout_ms(const ledger_signer_t *ls)
{
    assert(ls != NULL);
    return proto_rpc_client_next_timeout_ms(ls->client);
}

/* The outcome's envelope goes out at once, appended to its prefix as SettleReply.outcome:
 * two packed messages concatenated parse as their merge. */
static void outcome_signed(ledger_signer_t *ls, signer_entry_t *e, const ProtobufCBinaryData *env)
{
    Qcledger__SettleReply tail = QCLEDGER__SETTLE_REPLY__INIT;
    tail.outcome = *env;
    size_t tail_len = protobuf_c_message_get_packed_size(&tail.base);
    uint8_t *reply = malloc(e->prefix_len + tail_len);
    if (reply == NULL) {
        entry_reply(ls, e, QC_ENOMEM, "out of memory", NULL, 0);
        return;
    }
    memcpy(reply, e->prefix, e->prefix_len);
    size_t n = protobuf_c_message_pack(&tail.base, reply + e->prefix_len);
    assert(n == tail_len);
    entry_reply(ls, e, 0, NULL, reply, e->prefix_len + n);
    free(reply);
}

static void on_signed(void *arg, void *tag, int code, proto_rpc_reply_t *reply)
{
    ledger_signer_t *ls = arg;
    signer_entry_t *e = tag;
    assert(e >= ls->entries);
    assert(e < ls->entries + LEDGER_SIGNER_PENDING_MAX);
    assert(e->state == SIGNER_ASKING);
    Quancun__SignReply *sr = NULL;
    if (code == 0 && reply->code != 0)
        code = reply->code;
    if (code == 0) {
        sr = quancun__sign_reply__unpack(NULL, reply->body_len, reply->body);
        if (sr == NULL || sr->signed_.len == 0)
            code = QC_EDECODE;
    }
    if (code != 0) {
        char hex[2 * LEDGER_TXN_ID_SIZE + 1];
        ops_counter_add(ls->m_failed, 1);
        ops_log(OPS_LOG_WARN, "ledger.sign_failed", "txn_id",
                ops_hex(e->txn_id, LEDGER_TXN_ID_SIZE, hex), "error", qc_errname(code), "message",
                reply != NULL ? reply->message : "no answer", NULL);
        /* The load stays as committed: RESERVED, with no allow, until a retry or its deadline. */
        entry_reply(ls, e, QC_EUNAVAIL, "the bank's signer did not sign: try again", NULL, 0);
        entry_free(ls, e);
    } else if (e->kind == QUANCUN__SIGN_KIND__SIGN_LOAD_OUTCOME) {
        outcome_signed(ls, e, &sr->signed_);
        entry_free(ls, e);
    } else {
        /* Chaos: the bank has signed an allow the ledger has not stored: it is never sent. */
        ops_fault_point("ledger.after_sign_before_store");
        e->signed_env = malloc(sr->signed_.len);
        if (e->signed_env == NULL) {
            entry_reply(ls, e, QC_ENOMEM, "out of memory", NULL, 0);
            entry_free(ls, e);
        } else {
            memcpy(e->signed_env, sr->signed_.data, sr->signed_.len);
            e->signed_len = sr->signed_.len;
            e->state = SIGNER_SIGNED;
            ls->signed_count++;
        }
    }
    if (sr != NULL)
        quancun__sign_reply__free_unpacked(sr, NULL);
    proto_rpc_reply_destroy(&reply);
}

int ledger_signer_process(ledger_signer_t *ls)
{
    assert(ls != NULL);
    proto_rpc_client_process(ls->client, on_signed, ls);
    return ls->signed_count;
}

size_t ledger_signer_take(ledger_signer_t *ls, ledger_signer_allow_t *out, size_t cap)
{
    assert(ls != NULL);
    assert(out != NULL || cap == 0);
    size_t n = 0;
    for (int i = 0; i < LEDGER_SIGNER_PENDING_MAX && n < cap && ls->signed_count > 0; i++) {
        signer_entry_t *e = &ls->entries[i];
        if (e->state != SIGNER_SIGNED)
            continue;
        e->state = SIGNER_STORING;
        e->code = QC_EINTERNAL; /* until answered */
        snprintf(e->why, sizeof e->why, "no answer was recorded");
        ls->signed_count--;
        out[n++] = (ledger_signer_allow_t){
            .handle = i, .txn_id = e->txn_id, .allow = e->signed_env, .allow_len = e->signed_len};
    }
    return n;
}

void ledger_signer_answer(ledger_signer_t *ls, int handle, int code, const char *why, uint8_t *body,
                          size_t body_len)
{
    assert(ls != NULL);
    assert(handle >= 0);
    assert(handle < LEDGER_SIGNER_PENDING_MAX);
    signer_entry_t *e = &ls->entries[handle];
    assert(e->state == SIGNER_STORING);
    assert(e->body == NULL);
    assert(code != 0 || body != NULL);
    e->code = code;
    snprintf(e->why, sizeof e->why, "%s", why != NULL ? why : qc_strerror(code));
    e->body = body;
    e->body_len = body_len;
}

void ledger_signer_release(ledger_signer_t *ls, int commit_rc)
{
    assert(ls != NULL);
    for (int i = 0; i < LEDGER_SIGNER_PENDING_MAX; i++) {
        signer_entry_t *e = &ls->entries[i];
        if (e->state != SIGNER_STORING)
            continue;
        if (commit_rc != 0)
            entry_reply(ls, e, commit_rc, "the allow could not be stored: try again", NULL, 0);
        else
            entry_reply(ls, e, e->code, e->why, e->body, e->body_len);
        entry_free(ls, e);
    }
}

void ledger_signer_finish(ledger_signer_t *ls, int handle, int code, const char *why, uint8_t *body,
                          size_t body_len)
{
    assert(ls != NULL);
    assert(handle >= 0);
    assert(handle < LEDGER_SIGNER_PENDING_MAX);
    signer_entry_t *e = &ls->entries[handle];
    assert(e->state == SIGNER_STORING);
    ledger_signer_answer(ls, handle, code, why, body, body_len);
    entry_reply(ls, e, e->code, e->why, e->body, e->body_len);
    entry_free(ls, e);
}

int ledger_signer_pending(const ledger_signer_t *ls)
{
    assert(ls != NULL);
    return ls->used;
}
