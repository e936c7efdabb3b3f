/* ledger_fsm.c - a ledger shard replica as a Raft state machine: entries, apply, snapshots.
 *
 * Invariants:
 *   1. Only apply and restore write to the replica's LMDB, each in one write txn.
 *   2. The stored applied index only grows (restore replaces it only by a larger one), and
 *      it is written in the txn of the entry it names: a commit carries both or neither.
 *   3. An entry at or below the applied index changes nothing.
 *   4. Apply reads nothing but the LMDB and the entry: its time is max(entry time, applied
 *      time), the saga runs as a replica (no rule on the map's fill), and nothing is
 *      verified with a key. Two replicas at the same applied index hold the same records.
 *   5. An op refused by a rule changes nothing (the saga undoes its nested txn); a local
 *      failure undoes the whole entry and stops the replica there.
 *   6. A snapshot is the canonical dump of every database read in one read txn, so its body
 *      and digest are a function of the state alone.
 *
 * States of a replica's LMDB and the function performing each transition:
 *
 *      ledger_fsm_new()              ledger_fsm_apply(index > applied)
 *   (dir) --------------> APPLIED(a) ---------------------------------> APPLIED(index)
 *                           |   ^  \  ledger_fsm_apply(index <= applied): unchanged
 *                           |   |
 *                           |   +-- ledger_fsm_restore(snapshot at s > a): APPLIED(s)
 *                           +------ ledger_fsm_restore(snapshot at s <= a): unchanged */
#include "ledger_fsm.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <raft.h>

#include "ops_bytes.h"
#include "ops_log.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "qc_error.h"
#include "replica.pb-c.h"

#define FSM_SNAP_MAGIC "QCLS"
#define FSM_SNAP_INITIAL_CAP (64u * 1024)
#define FSM_RECORD_HEAD_SIZE 3 /* db (1) + key length (2) */
#define FSM_VALUE_LEN_SIZE 4
#define FSM_OP_TAG 0x1a       /* Entry field 3 (ops), wire type 2 (length-delimited) */
#define FSM_VARINT_MAX 10     /* bytes of a 64-bit varint */
#define FSM_ENTRY_HEAD_MAX 32 /* bytes of an Entry's version and time fields, at most */
#define FSM_PAD_TAG 0x22      /* Entry field 4 (padding), wire type 2 */
#define FSM_PAD_ALIGN 8       /* libraft's uv I/O: entry lengths a multiple of 8 */
#define FSM_PAD_MAX 10        /* tag, one-byte length, 1..8 zeros */
#define FSM_BAD_REPORT_EVENT "security.bad_report_signature"

struct ledger_fsm {
    struct raft_fsm raft_fsm; /* first: the callbacks find the fsm through its data */
    struct raft *raft;        /* borrowed, from ledger_fsm_bind() */
    ledger_store_t *store;
    ledger_saga_t *saga;
    uint32_t shard;
    uint32_t shard_count;
    ledger_load_t *load;     /* scratch for the saga's record out-parameters */
    ledger_device_t *device; /* likewise */
    ledger_fsm_result_t *result;
    ledger_fsm_stats_t stats;
};

struct ledger_fsm_batch {
    uint64_t time_ms;
    size_t n_ops;
    uint8_t *ops; /* packed ops, each as an Entry field 3: tag, length, Op */
    size_t len;
    size_t cap;
};

/* Fills why (may be NULL) and returns code, so refusals read as one line. */
static int refuse(char *why, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int refuse(char *why, int code, const char *fmt, ...)
{
    assert(code < 0);
    if (why != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, LEDGER_WHY_MAX, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* ------------------------------------------------------------ life cycle */

static int fsm_apply_cb(struct raft_fsm *rf, const struct raft_buffer *buf, void **result);
static int fsm_snapshot_cb(struct raft_fsm *rf, struct raft_buffer *bufs[], unsigned *n_bufs);
static int fsm_restore_cb(struct raft_fsm *rf, struct raft_buffer *buf);

int ledger_fsm_new(const ledger_fsm_config_t *cfg, ledger_fsm_t **out)
{
    assert(cfg != NULL);
    assert(out != NULL);
    *out = NULL;
    if (cfg->dir == NULL || cfg->allow_key == NULL || cfg->shard_count == 0 ||
        cfg->shard >= cfg->shard_count)
        return QC_EINVAL;
    ledger_fsm_t *f = calloc(1, sizeof *f);
    if (f == NULL)
        return QC_ENOMEM;
    int rc = QC_ENOMEM;
    f->load = malloc(sizeof *f->load);
    f->device = malloc(sizeof *f->device);
    f->result = calloc(1, sizeof *f->result);
    if (f->load == NULL || f->device == NULL || f->result == NULL)
        goto err;
    if ((rc = ledger_store_open(cfg->dir, cfg->map_size, &f->store)) != 0 ||
        (rc = ledger_store_bind_shard(f->store, cfg->shard, cfg->shard_count)) != 0)
        goto err;
    ledger_saga_config_t scfg = {.store = f->store,
                                 .allow_key = cfg->allow_key,
                                 .trust = NULL, /* the leader checked every certificate */
                                 .shard = cfg->shard,
                                 .shard_count = cfg->shard_count,
                                 .replica = true};
    if ((rc = ledger_saga_new(&scfg, &f->saga)) != 0)
        goto err;
    f->shard = cfg->shard;
    f->shard_count = cfg->shard_count;
    f->raft_fsm.version = 1;
    f->raft_fsm.data = f;
    f->raft_fsm.apply = fsm_apply_cb;
    f->raft_fsm.snapshot = fsm_snapshot_cb;
    f->raft_fsm.restore = fsm_restore_cb;
    f->raft_fsm.snapshot_finalize = NULL;
    f->raft_fsm.snapshot_async = NULL;
    *out = f;
    return 0;
err:
    ledger_fsm_destroy(&f);
    return rc;
}

void ledger_fsm_destroy(ledger_fsm_t **fsm_p)
{
    if (fsm_p == NULL || *fsm_p == NULL)
        return;
    ledger_fsm_t *f = *fsm_p;
    ledger_saga_destroy(&f->saga);
    ledger_store_close(&f->store);
    free(f->load);
    free(f->device);
    free(f->result);
    free(f);
    *fsm_p = NULL;
}

struct raft_fsm *ledger_fsm_raft(ledger_fsm_t *fsm)
{
    assert(fsm != NULL);
    return &fsm->raft_fsm;
}

void ledger_fsm_bind(ledger_fsm_t *fsm, struct raft *raft)
{
    assert(fsm != NULL);
    assert(raft != NULL);
    fsm->raft = raft;
}

ledger_store_t *ledger_fsm_store(ledger_fsm_t *fsm)
{
    assert(fsm != NULL);
    return fsm->store;
}

ledger_saga_t *ledger_fsm_saga(ledger_fsm_t *fsm)
{
    assert(fsm != NULL);
    return fsm->saga;
}

void ledger_fsm_stats(const ledger_fsm_t *fsm, ledger_fsm_stats_t *out)
{
    assert(fsm != NULL);
    assert(out != NULL);
    *out = fsm->stats;
}

int ledger_fsm_applied(ledger_fsm_t *fsm, uint64_t *index, uint64_t *time_ms)
{
    assert(fsm != NULL);
    assert(index != NULL);
    assert(time_ms != NULL);
    MDB_txn *txn = NULL;
    int rc = ledger_store_txn_begin(fsm->store, NULL, false, &txn);
    if (rc != 0)
        return rc;
    rc = ledger_store_applied_get(fsm->store, txn, index, time_ms);
    ledger_store_txn_abort(txn);
    return rc;
}

/* ------------------------------------------------------------ ops */

/* Opens a signed envelope and returns its body, refusing (deterministically) what does not
 * parse. */
static int open_body(const ProtobufCBinaryData *signed_bytes, const char *what,
                     proto_envelope_t **env, const uint8_t **body, size_t *body_len, char *why)
{
    if (signed_bytes->len > LEDGER_SIGNED_MAX)
        return refuse(why, QC_ETOOBIG, "%s larger than %d bytes", what, LEDGER_SIGNED_MAX);
    int rc = proto_envelope_open(signed_bytes->data, signed_bytes->len, env);
    if (rc != 0)
        return refuse(why, rc, "%s envelope: %s", what, qc_strerror(rc));
    *body = proto_envelope_body(*env, body_len);
    return 0;
}

static int op_reserve(ledger_fsm_t *f, MDB_txn *txn, uint64_t now, const Qcreplica__Reserve *m,
                      char *why)
{
    proto_envelope_t *renv = NULL;
    Quancun__LoadRequest *r = NULL;
    const uint8_t *body = NULL;
    size_t body_len = 0;
    int rc = open_body(&m->request, "request", &renv, &body, &body_len, why);
    if (rc != 0)
        goto out;
    if ((rc = proto_decode_load_request(body, body_len, &r)) != 0) {
        refuse(why, rc, "request body: %s", qc_strerror(rc));
        goto out;
    }
    /* The deadline is judged by the entry's time inside the saga; a retry of a stored load is
     * answered with the stored record whatever the time, as the verifying path does. */
    rc = ledger_saga_reserve_trusted(f->saga, txn, now, m->deadline_ms, r, m->request.data,
                                     m->request.len, f->load, why);
out:
    if (r != NULL)
        quancun__load_request__free_unpacked(r, NULL);
    proto_envelope_destroy(&renv);
    return rc;
}

static int op_store_allow(ledger_fsm_t *f, MDB_txn *txn, uint64_t now,
                          const Qcreplica__StoreAllow *m, char *why)
{
    if (m->txn_id.len != LEDGER_TXN_ID_SIZE)
        return refuse(why, QC_EDECODE, "txn_id must be %d bytes", LEDGER_TXN_ID_SIZE);
    if (m->allow.len > LEDGER_SIGNED_MAX)
        return refuse(why, QC_ETOOBIG, "allow larger than %d bytes", LEDGER_SIGNED_MAX);
    return ledger_saga_store_allow(f->saga, txn, now, m->txn_id.data, m->allow.data, m->allow.len,
                                   f->load, why);
}

static int op_settle(ledger_fsm_t *f, MDB_txn *txn, uint64_t now, const Qcreplica__Settle *m,
                     char *why)
{
    if (m->txn_id.len != LEDGER_TXN_ID_SIZE)
        return refuse(why, QC_EDECODE, "txn_id must be %d bytes", LEDGER_TXN_ID_SIZE);
    proto_envelope_t *env = NULL;
    Quancun__ExecutionReport *rep = NULL;
    const uint8_t *body = NULL;
    size_t body_len = 0;
    int rc = open_body(&m->report, "report", &env, &body, &body_len, why);
    if (rc == 0 && (rc = proto_decode_execution_report(body, body_len, &rep)) != 0)
        refuse(why, rc, "report body: %s", qc_strerror(rc));
    if (rc == 0)
        rc = ledger_saga_settle_trusted(f->saga, txn, now, m->txn_id.data, rep, m->report.data,
                                        m->report.len, f->load, why);
    if (rep != NULL)
        quancun__execution_report__free_unpacked(rep, NULL);
    proto_envelope_destroy(&env);
    return rc;
}

static int op_bad_report(ledger_fsm_t *f, MDB_txn *txn, uint64_t now, const Qcreplica__BadReport *m,
                         char *why)
{
    if (m->txn_id.len != LEDGER_TXN_ID_SIZE)
        return refuse(why, QC_EDECODE, "txn_id must be %d bytes", LEDGER_TXN_ID_SIZE);
    if (m->report.len > LEDGER_SIGNED_MAX)
        return refuse(why, QC_ETOOBIG, "report larger than %d bytes", LEDGER_SIGNED_MAX);
    return ledger_store_outbox_append(f->store, txn, f->shard, FSM_BAD_REPORT_EVENT, m->txn_id.data,
                                      now, m->report.data, m->report.len, NULL);
}

static int op_expire(ledger_fsm_t *f, MDB_txn *txn, uint64_t now, const Qcreplica__Expire *m,
                     size_t *expired)
{
    uint64_t upto = m->upto_ms < now ? m->upto_ms : now;
    size_t max = m->max == 0 || m->max > LEDGER_EXPIRE_BATCH_MAX ? LEDGER_EXPIRE_BATCH_MAX : m->max;
    size_t count = 0;
    int rc = ledger_saga_expire(f->saga, txn, upto, max, &count, NULL);
    if (rc == 0)
        *expired += count;
    return rc;
}

static int op_open_account(ledger_fsm_t *f, MDB_txn *txn, uint64_t now,
                           const Qcledger__OpenAccountRequest *m, char *why)
{
    if (strlen(m->account_id) > LEDGER_ID_MAX)
        return refuse(why, QC_ETOOBIG, "account id over %d bytes", LEDGER_ID_MAX);
    ledger_account_t spec = {.currency = m->currency,
                             .load_min = m->load_min,
                             .load_max = m->load_max,
                             .daily_max = m->daily_max},
                     out;
    snprintf(spec.id, sizeof spec.id, "%s", m->account_id);
    return ledger_saga_open_account(f->saga, txn, now, &spec, &out, why);
}

static int op_deposit(ledger_fsm_t *f, MDB_txn *txn, uint64_t now,
                      const Qcledger__DepositRequest *m, char *why)
{
    if (m->txn_id.len != LEDGER_TXN_ID_SIZE)
        return refuse(why, QC_EDECODE, "txn_id must be %d bytes", LEDGER_TXN_ID_SIZE);
    ledger_account_t out;
    return ledger_saga_deposit(f->saga, txn, now, m->account_id, m->amount, m->txn_id.data, &out,
                               why);
}

/* Runs one op inside txn. Returns 0 when the op applied or was refused by a rule (the
 * refusal is in *res), or the local failure that must undo the whole entry. */
static int apply_op(ledger_fsm_t *f, MDB_txn *txn, uint64_t now, const Qcreplica__Op *op,
                    ledger_fsm_op_result_t *res, size_t *expired)
{
    char *why = res->why;
    ledger_account_t acct;
    int rc;
    why[0] = '\0';
    switch (op->op_case) {
    case QCREPLICA__OP__OP_RESERVE:
        rc = op_reserve(f, txn, now, op->reserve, why);
        break;
    case QCREPLICA__OP__OP_SETTLE:
        rc = op_settle(f, txn, now, op->settle, why);
        break;
    case QCREPLICA__OP__OP_STORE_ALLOW:
        rc = op_store_allow(f, txn, now, op->store_allow, why);
        break;
    case QCREPLICA__OP__OP_EXPIRE:
        rc = op_expire(f, txn, now, op->expire, expired);
        break;
    case QCREPLICA__OP__OP_BAD_REPORT:
        rc = op_bad_report(f, txn, now, op->bad_report, why);
        break;
    case QCREPLICA__OP__OP_OPEN_ACCOUNT:
        rc = op_open_account(f, txn, now, op->open_account, why);
        break;
    case QCREPLICA__OP__OP_DEPOSIT:
        rc = op_deposit(f, txn, now, op->deposit, why);
        break;
    case QCREPLICA__OP__OP_SET_FROZEN:
        rc = ledger_saga_set_frozen(f->saga, txn, now, op->set_frozen->account_id,
                                    op->set_frozen->frozen, &acct, why);
        break;
    case QCREPLICA__OP__OP_ENROLL_DEVICE:
        rc = ledger_saga_enroll_device(f->saga, txn, now, op->enroll_device->account_id,
                                       op->enroll_device->cert.data, op->enroll_device->cert.len,
                                       op->enroll_device->wallet_cap, op->enroll_device->counter,
                                       f->device, why);
        break;
    case QCREPLICA__OP__OP_REVOKE_DEVICE:
        rc = ledger_saga_revoke_device(f->saga, txn, now, op->revoke_device->device_id, f->device,
                                       why);
        break;
    case QCREPLICA__OP__OP_OUTBOX_ACK:
        if (op->outbox_ack->n_consumers > LEDGER_OUTBOX_CONSUMERS_MAX)
            rc = refuse(why, QC_EDECODE, "outbox ack lists %zu consumers",
                        op->outbox_ack->n_consumers);
        else if ((rc = ledger_store_outbox_ack_by(f->store, txn, op->outbox_ack->consumer,
                                                  op->outbox_ack->upto_seq,
                                                  (const char *const *)op->outbox_ack->consumers,
                                                  op->outbox_ack->n_consumers)) == QC_EDENIED)
            rc = refuse(why, rc, "outbox ack by \"%.32s\", not a configured consumer",
                        op->outbox_ack->consumer != NULL ? op->outbox_ack->consumer : "");
        break;
    case QCREPLICA__OP__OP_DIGEST:
        rc = 0; /* compared before the entry applied (digest_check) */
        break;
    default:
        rc = refuse(why, QC_EDECODE, "op of unknown kind %d", (int)op->op_case);
        break;
    }
    res->code = rc;
    if (rc == 0)
        return 0;
    assert(rc < 0);
    /* The saga names the reason of every refusal and of nothing else: a failure without a
     * sentence, or one of these codes, is this replica's own (its disk, its memory). */
    bool local =
        rc == QC_EIO || rc == QC_ENOMEM || rc == QC_EINTERNAL || rc == QC_EBUSY || why[0] == '\0';
    if (local)
        return rc;
    f->stats.ops_refused++;
    return 0;
}

/* ------------------------------------------------------------ apply */

/* Parses an entry: 0, QC_EVERSION (a version this replica does not know), or QC_EDECODE. */
static int entry_decode(const uint8_t *entry, size_t len, Qcreplica__Entry **out)
{
    *out = NULL;
    if (len == 0 || len > LEDGER_FSM_ENTRY_MAX)
        return QC_EDECODE;
    Qcreplica__Entry *e = qcreplica__entry__unpack(NULL, len, entry);
    if (e == NULL)
        return QC_EDECODE;
    int rc = 0;
    if (e->version == QCREPLICA__ENTRY_VERSION__ENTRY_VERSION_NONE)
        rc = QC_EDECODE;
    else if (e->version != QCREPLICA__ENTRY_VERSION__ENTRY_VERSION_1)
        rc = QC_EVERSION;
    else if (e->n_ops > LEDGER_FSM_OPS_MAX || qcreplica__entry__get_packed_size(e) != len)
        rc = QC_EDECODE;
    if (rc != 0) {
        qcreplica__entry__free_unpacked(e, NULL);
        return rc;
    }
    *out = e;
    return 0;
}

/* A digest op first in e: this replica's state at applied must be the proposer's. A replica
 * that applies it at another index (an entry came in between) skips it, as every replica
 * does. Returns 0, or QC_EMISMATCH once diverged (and for every entry after). */
static int digest_check(ledger_fsm_t *f, uint64_t applied, const Qcreplica__Entry *e)
{
    if (f->stats.diverged)
        return QC_EMISMATCH;
    if (e->n_ops == 0 || e->ops[0]->op_case != QCREPLICA__OP__OP_DIGEST)
        return 0;
    const Qcreplica__Digest *d = e->ops[0]->digest;
    if (d->index != applied || d->digest.len != PROTO_DIGEST_SIZE)
        return 0;
    uint8_t mine[PROTO_DIGEST_SIZE];
    uint64_t at = 0;
    int rc = ledger_fsm_digest(f, mine, &at);
    if (rc != 0)
        return rc;
    assert(at == applied);
    f->stats.digest_checks++;
    if (CRYPTO_memcmp(mine, d->digest.data, PROTO_DIGEST_SIZE) == 0) {
        f->stats.digest_ok_index = applied;
        return 0;
    }
    f->stats.digest_mismatches++;
    f->stats.diverged = true;
    f->stats.diverged_index = applied;
    ops_logf(OPS_LOG_ERROR, "ledger.fsm_diverged",
             "state at index %llu differs from the leader's: stopping until it is rebuilt from a "
             "healthy replica's snapshot",
             (unsigned long long)applied);
    return QC_EMISMATCH;
}

int ledger_fsm_apply(ledger_fsm_t *f, uint64_t index, const uint8_t *entry, size_t len,
                     const ledger_fsm_result_t **result)
{
    assert(f != NULL);
    assert(index > 0);
    assert(entry != NULL || len == 0);
    ledger_fsm_result_t *res = f->result;
    memset(res, 0, offsetof(ledger_fsm_result_t, ops));
    res->index = index;
    if (result != NULL)
        *result = res;
    MDB_txn *txn = NULL;
    uint64_t applied = 0, applied_ms = 0;
    int rc = ledger_store_txn_begin(f->store, NULL, true, &txn);
    if (rc != 0)
        return rc;
    if ((rc = ledger_store_applied_get(f->store, txn, &applied, &applied_ms)) != 0) {
        ledger_store_txn_abort(txn);
        return rc;
    }
    if (index <= applied) {
        ledger_store_txn_abort(txn);
        res->skipped = true;
        res->time_ms = applied_ms;
        f->stats.skipped++;
        return 0;
    }
    Qcreplica__Entry *e = NULL;
    int drc = entry_decode(entry, len, &e);
    if (drc == QC_EVERSION) {
        ledger_store_txn_abort(txn);
        ops_logf(OPS_LOG_ERROR, "ledger.fsm_entry_version",
                 "entry %llu is of a version this replica does not know: stopping",
                 (unsigned long long)index);
        return QC_EVERSION;
    }
    if (drc == 0 && (rc = digest_check(f, applied, e)) != 0) {
        qcreplica__entry__free_unpacked(e, NULL);
        ledger_store_txn_abort(txn);
        return rc;
    }
    uint64_t now = applied_ms;
    if (drc == 0 && e->time_ms > now)
        now = e->time_ms;
    res->time_ms = now;
    if (drc != 0) {
        res->refused = true;
        ops_logf(OPS_LOG_WARN, "ledger.fsm_entry_refused", "entry %llu does not parse",
                 (unsigned long long)index);
    }
    for (size_t i = 0; drc == 0 && i < e->n_ops; i++) {
        rc = apply_op(f, txn, now, e->ops[i], &res->ops[i], &res->expired);
        if (rc != 0) {
            ops_logf(OPS_LOG_ERROR, "ledger.fsm_apply_failed", "entry %llu op %zu: %s",
                     (unsigned long long)index, i, qc_strerror(rc));
            qcreplica__entry__free_unpacked(e, NULL);
            ledger_store_txn_abort(txn);
            return rc;
        }
        res->n_ops = i + 1;
    }
    if (e != NULL)
        qcreplica__entry__free_unpacked(e, NULL);
    if ((rc = ledger_store_applied_put(f->store, txn, index, now)) != 0) {
        ledger_store_txn_abort(txn);
        return rc;
    }
    if ((rc = ledger_store_txn_commit(txn)) != 0)
        return rc;
    f->stats.applied++;
    return 0;
}

/* ------------------------------------------------------------ snapshots */

/* Writes records into a growing raft_malloc'd buffer (when buf is wanted) and hashes them. */
typedef struct snap_writer {
    bool keep;
    uint8_t *buf;
    size_t len;
    size_t cap;
    EVP_MD_CTX *md;
    uint64_t count;
} snap_writer_t;

static int snap_put(snap_writer_t *w, const void *bytes, size_t n)
{
    if (EVP_DigestUpdate(w->md, bytes, n) != 1)
        return QC_ECRYPTO;
    if (!w->keep)
        return 0;
    if (w->len + n > w->cap) {
        size_t cap = w->cap;
        while (w->len + n > cap)
            cap *= 2;
        if (cap > LEDGER_FSM_SNAP_MAX)
            return QC_EFULL;
        uint8_t *p = raft_realloc(w->buf, cap);
        if (p == NULL)
            return QC_ENOMEM;
        w->buf = p;
        w->cap = cap;
    }
    memcpy(w->buf + w->len, bytes, n);
    w->len += n;
    return 0;
}

static int snap_record(void *arg, unsigned db, const uint8_t *key, size_t key_len,
                       const uint8_t *val, size_t val_len)
{
    snap_writer_t *w = arg;
    assert(db < LEDGER_STORE_DB_COUNT);
    /* LMDB keeps keys within LEDGER_STORE_KEY_MAX; our records are far below the value limit. */
    assert(key_len > 0);
    assert(key_len <= LEDGER_STORE_KEY_MAX);
    if (val_len > LEDGER_FSM_VALUE_MAX)
        return QC_EINTERNAL;
    uint8_t head[FSM_RECORD_HEAD_SIZE], vlen[FSM_VALUE_LEN_SIZE];
    head[0] = (uint8_t)db;
    ops_be_put(head + 1, key_len, 2);
    ops_be_put(vlen, val_len, FSM_VALUE_LEN_SIZE);
    int rc;
    if ((rc = snap_put(w, head, sizeof head)) != 0 || (rc = snap_put(w, key, key_len)) != 0 ||
        (rc = snap_put(w, vlen, sizeof vlen)) != 0 || (rc = snap_put(w, val, val_len)) != 0)
        return rc;
    w->count++;
    return 0;
}

/* Dumps every record in one read txn: the body (when w->keep, after the room left for the
 * header), its digest, and the applied index and time it is at. */
static int snap_dump(ledger_fsm_t *f, snap_writer_t *w, uint8_t digest[PROTO_DIGEST_SIZE],
                     uint64_t *index, uint64_t *time_ms)
{
    MDB_txn *txn = NULL;
    int rc = ledger_store_txn_begin(f->store, NULL, false, &txn);
    if (rc != 0)
        return rc;
    w->md = EVP_MD_CTX_new();
    if (w->md == NULL || EVP_DigestInit_ex(w->md, EVP_sha256(), NULL) != 1)
        rc = QC_ECRYPTO;
    if (rc == 0)
        rc = ledger_store_applied_get(f->store, txn, index, time_ms);
    if (rc == 0)
        rc = ledger_store_each_record(f->store, txn, snap_record, w);
    unsigned dlen = 0;
    if (rc == 0 && (EVP_DigestFinal_ex(w->md, digest, &dlen) != 1 || dlen != PROTO_DIGEST_SIZE))
        rc = QC_ECRYPTO;
    EVP_MD_CTX_free(w->md);
    w->md = NULL;
    ledger_store_txn_abort(txn);
    return rc;
}

int ledger_fsm_snapshot(ledger_fsm_t *f, uint8_t **out, size_t *out_len)
{
    assert(f != NULL);
    assert(out != NULL);
    assert(out_len != NULL);
    *out = NULL;
    *out_len = 0;
    snap_writer_t w = {.keep = true, .cap = FSM_SNAP_INITIAL_CAP};
    w.buf = raft_malloc(w.cap);
    if (w.buf == NULL)
        return QC_ENOMEM;
    w.len = LEDGER_FSM_SNAP_HEADER_SIZE;
    uint8_t digest[PROTO_DIGEST_SIZE];
    uint64_t index = 0, time_ms = 0;
    int rc = snap_dump(f, &w, digest, &index, &time_ms);
    if (rc != 0) {
        raft_free(w.buf);
        return rc;
    }
    uint8_t *p = w.buf;
    memcpy(p, FSM_SNAP_MAGIC, 4);
    p = ops_be_put(p + 4, LEDGER_FSM_SNAP_VERSION, 4);
    p = ops_be_put(p, f->shard, 4);
    p = ops_be_put(p, f->shard_count, 4);
    p = ops_be_put(p, index, 8);
    p = ops_be_put(p, time_ms, 8);
    p = ops_be_put(p, w.count, 8);
    p = ops_be_put(p, w.len - LEDGER_FSM_SNAP_HEADER_SIZE, 8);
    memcpy(p, digest, sizeof digest);
    assert(p + sizeof digest == w.buf + LEDGER_FSM_SNAP_HEADER_SIZE);
    *out = w.buf;
    *out_len = w.len;
    f->stats.snapshots_taken++;
    return 0;
}

int ledger_fsm_digest(ledger_fsm_t *f, uint8_t digest[PROTO_DIGEST_SIZE], uint64_t *index)
{
    assert(f != NULL);
    assert(digest != NULL);
    assert(index != NULL);
    snap_writer_t w = {.keep = false};
    uint64_t time_ms = 0;
    return snap_dump(f, &w, digest, index, &time_ms);
}

/* The header of a snapshot, checked against this replica. */
typedef struct snap_header {
    uint64_t index;
    uint64_t time_ms;
    uint64_t count;
} snap_header_t;

static int snap_header_check(const ledger_fsm_t *f, const uint8_t *snap, size_t len,
                             snap_header_t *h)
{
    if (len < LEDGER_FSM_SNAP_HEADER_SIZE || len > LEDGER_FSM_SNAP_MAX)
        return QC_EDECODE;
    if (memcmp(snap, FSM_SNAP_MAGIC, 4) != 0)
        return QC_EDECODE;
    if (ops_be_get(snap + 4, 4) != LEDGER_FSM_SNAP_VERSION)
        return QC_EVERSION;
    if (ops_be_get(snap + 8, 4) != f->shard || ops_be_get(snap + 12, 4) != f->shard_count)
        return QC_ECONFIG;
    h->index = ops_be_get(snap + 16, 8);
    h->time_ms = ops_be_get(snap + 24, 8);
    h->count = ops_be_get(snap + 32, 8);
    if (ops_be_get(snap + 40, 8) != len - LEDGER_FSM_SNAP_HEADER_SIZE)
        return QC_EDECODE;
    uint8_t digest[PROTO_DIGEST_SIZE];
    int rc =
        proto_sha256(snap + LEDGER_FSM_SNAP_HEADER_SIZE, len - LEDGER_FSM_SNAP_HEADER_SIZE, digest);
    if (rc != 0)
        return rc;
    if (CRYPTO_memcmp(digest, snap + 48, sizeof digest) != 0)
        return QC_EDECODE;
    return 0;
}

/* Loads the records of body into the (wiped) databases, in txn. */
static int snap_load(ledger_fsm_t *f, MDB_txn *txn, const uint8_t *body, size_t len, uint64_t count)
{
    size_t pos = 0;
    uint64_t n = 0;
    while (pos < len) {
        if (len - pos < FSM_RECORD_HEAD_SIZE)
            return QC_EDECODE;
        unsigned db = body[pos];
        size_t klen = (size_t)ops_be_get(body + pos + 1, 2);
        pos += FSM_RECORD_HEAD_SIZE;
        if (len - pos < klen + FSM_VALUE_LEN_SIZE)
            return QC_EDECODE;
        const uint8_t *key = body + pos;
        pos += klen;
        size_t vlen = (size_t)ops_be_get(body + pos, FSM_VALUE_LEN_SIZE);
        pos += FSM_VALUE_LEN_SIZE;
        if (vlen > LEDGER_FSM_VALUE_MAX || len - pos < vlen)
            return QC_EDECODE;
        int rc = ledger_store_record_append(f->store, txn, db, key, klen, body + pos, vlen);
        if (rc != 0)
            return rc;
        pos += vlen;
        n++;
    }
    return n == count ? 0 : QC_EDECODE;
}

static int restore(ledger_fsm_t *f, const uint8_t *snap, size_t len, bool *replaced, bool repair);

int ledger_fsm_restore(ledger_fsm_t *f, const uint8_t *snap, size_t len, bool *replaced)
{
    return restore(f, snap, len, replaced, false);
}

int ledger_fsm_repair(ledger_fsm_t *f, const uint8_t *snap, size_t len)
{
    assert(f != NULL);
    if (!f->stats.diverged)
        return QC_ESTATE;
    snap_header_t h;
    int rc = snap_header_check(f, snap, len, &h);
    if (rc != 0)
        return rc;
    if (h.index < f->stats.diverged_index)
        return QC_ESTALE;
    /* Entries this follower passed unapplied past the snapshot's index must apply after it:
     * libraft's applied index goes back to the snapshot's, and it applies them again from its
     * own log (they are in it: no libraft snapshot is taken while diverged, so nothing after
     * the diverged index was compacted; checked against the log's first index). */
    bool rewind = f->raft != NULL && h.index < raft_last_applied(f->raft);
    if (rewind && (h.index < f->raft->log.offset || h.index > f->raft->commit_index))
        return QC_ESTALE;
    bool replaced = false;
    if ((rc = restore(f, snap, len, &replaced, true)) != 0)
        return rc;
    assert(replaced);
    if (rewind) {
        ops_logf(OPS_LOG_INFO, "ledger.fsm_rewound",
                 "entries %llu..%llu passed while diverged apply again from the log",
                 (unsigned long long)h.index + 1, (unsigned long long)raft_last_applied(f->raft));
        f->raft->last_applied = h.index;
    }
    f->stats.diverged = false;
    f->stats.diverged_passed = 0;
    f->stats.apply_error = 0; /* the reason apply failed is gone: the next entry applies */
    f->stats.repairs++;
    ops_logf(OPS_LOG_INFO, "ledger.fsm_repaired", "state rebuilt from a snapshot at index %llu",
             (unsigned long long)h.index);
    return 0;
}

int ledger_fsm_diverge(ledger_fsm_t *f, const char *why)
{
    assert(f != NULL);
    assert(why != NULL);
    if (f->stats.diverged)
        return 0;
    uint64_t applied = 0, applied_ms = 0;
    int rc = ledger_fsm_applied(f, &applied, &applied_ms);
    if (rc != 0)
        return rc;
    f->stats.diverged = true;
    f->stats.diverged_index = applied;
    ops_logf(OPS_LOG_ERROR, "ledger.fsm_diverged",
             "state at index %llu cannot be trusted (%s): stopping until it is rebuilt from a "
             "healthy replica's snapshot",
             (unsigned long long)applied, why);
    return 0;
}

static int restore(ledger_fsm_t *f, const uint8_t *snap, size_t len, bool *replaced, bool repair)
{
    assert(f != NULL);
    assert(snap != NULL || len == 0);
    if (replaced != NULL)
        *replaced = false;
    snap_header_t h;
    int rc = snap_header_check(f, snap, len, &h);
    if (rc != 0) {
        ops_logf(OPS_LOG_ERROR, "ledger.fsm_snapshot_refused", "snapshot of %zu bytes: %s", len,
                 qc_strerror(rc));
        return rc;
    }
    MDB_txn *txn = NULL;
    uint64_t applied = 0, applied_ms = 0;
    if ((rc = ledger_store_txn_begin(f->store, NULL, true, &txn)) != 0)
        return rc;
    if ((rc = ledger_store_applied_get(f->store, txn, &applied, &applied_ms)) != 0)
        goto abort;
    uint64_t old_applied = applied;
    if (h.index <= applied && !repair) {
        /* Both are prefixes of the one committed log, and ours is the longer. */
        ledger_store_txn_abort(txn);
        f->stats.snapshots_kept++;
        return 0;
    }
    if ((rc = ledger_store_wipe(f->store, txn)) != 0 ||
        (rc = snap_load(f, txn, snap + LEDGER_FSM_SNAP_HEADER_SIZE,
                        len - LEDGER_FSM_SNAP_HEADER_SIZE, h.count)) != 0 ||
        (rc = ledger_store_applied_get(f->store, txn, &applied, &applied_ms)) != 0)
        goto abort;
    if (applied != h.index || applied_ms != h.time_ms) {
        rc = QC_EDECODE; /* the body's applied index is not the header's */
        goto abort;
    }
    if ((rc = ledger_store_txn_commit(txn)) != 0)
        return rc;
    f->stats.snapshots_restored++;
    /* Rare and worth seeing: a replica that lost its data (or fell far behind) took its whole
     * state from the leader's snapshot. */
    ops_logf(OPS_LOG_INFO, "ledger.fsm_snapshot_restored",
             "snapshot at %llu: %llu records, %zu bytes, replacing state at %llu",
             (unsigned long long)h.index, (unsigned long long)h.count, len,
             (unsigned long long)old_applied);
    /* A leader's snapshot past the index that diverged is a repair too. */
    if (f->stats.diverged && h.index >= f->stats.diverged_index &&
        h.index >= f->stats.diverged_passed) {
        f->stats.diverged = false;
        f->stats.diverged_passed = 0;
    }
    if (replaced != NULL)
        *replaced = true;
    return 0;
abort:
    ledger_store_txn_abort(txn);
    ops_logf(OPS_LOG_ERROR, "ledger.fsm_restore_failed", "snapshot at %llu: %s",
             (unsigned long long)h.index, qc_strerror(rc));
    return rc;
}

/* ------------------------------------------------------------ libraft callbacks */

static int raft_code(int rc)
{
    return rc == QC_ENOMEM ? RAFT_NOMEM : rc == QC_EFULL ? RAFT_NOSPACE : RAFT_IOERR;
}

static int fsm_apply_cb(struct raft_fsm *rf, const struct raft_buffer *buf, void **result)
{
    ledger_fsm_t *f = rf->data;
    assert(f != NULL);
    assert(f->raft != NULL); /* ledger_fsm_bind() before raft_start() */
    /* libraft applies index last_applied + 1 and advances last_applied after we return. */
    uint64_t index = raft_last_applied(f->raft) + 1;
    const ledger_fsm_result_t *res = NULL;
    int rc = ledger_fsm_apply(f, index, buf->base, buf->len, &res);
    f->stats.apply_error = rc;
    bool follower = raft_state(f->raft) == RAFT_FOLLOWER;
    if (rc == QC_ECORRUPT && follower) /* on failure it stays undiverged: the apply fails */
        QC_IGNORE(ledger_fsm_diverge(f, "a stored record failed its checksum"));
    if (rc != 0 && f->stats.diverged && follower) {
        /* A diverged follower passes the entry without applying it (its state is to be
         * replaced whole), rather than fail: libraft makes a follower whose apply fails on a
         * heartbeat unavailable for the process's life, and this one's log and votes are
         * sound. The rebuild applies again, from the log, every entry passed after its
         * snapshot's index (ledger_fsm_repair), so none is lost; /healthz says why it does
         * not apply meanwhile. */
        f->stats.diverged_passed = index;
        f->result->skipped = true;
        *result = f->result;
        return 0;
    }
    if (rc != 0) {
        f->stats.apply_failures++;
        return raft_code(rc);
    }
    *result = (void *)res;
    return 0;
}

static int fsm_snapshot_cb(struct raft_fsm *rf, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    ledger_fsm_t *f = rf->data;
    assert(f != NULL);
    if (f->stats.diverged)
        return RAFT_BUSY; /* never a snapshot of a state known wrong (libraft retries later) */
    uint8_t *snap = NULL;
    size_t len = 0;
    int rc = ledger_fsm_snapshot(f, &snap, &len);
    if (rc != 0)
        return raft_code(rc);
    *bufs = raft_malloc(sizeof **bufs);
    if (*bufs == NULL) {
        raft_free(snap);
        return RAFT_NOMEM;
    }
    (*bufs)[0].base = snap;
    (*bufs)[0].len = len;
    *n_bufs = 1;
    return 0;
}

/* On success the buffer is ours to free (libraft's contract); on error libraft frees it. */
static int fsm_restore_cb(struct raft_fsm *rf, struct raft_buffer *buf)
{
    ledger_fsm_t *f = rf->data;
    assert(f != NULL);
    int rc = ledger_fsm_restore(f, buf->base, buf->len, NULL);
    if (rc != 0)
        return rc == QC_EDECODE || rc == QC_EVERSION || rc == QC_ECONFIG ? RAFT_CORRUPT
                                                                         : raft_code(rc);
    raft_free(buf->base);
    return 0;
}

/* ------------------------------------------------------------ building an entry */

int ledger_fsm_batch_new(uint64_t time_ms, ledger_fsm_batch_t **out)
{
    assert(out != NULL);
    *out = calloc(1, sizeof **out);
    if (*out == NULL)
        return QC_ENOMEM;
    (*out)->time_ms = time_ms;
    return 0;
}

void ledger_fsm_batch_destroy(ledger_fsm_batch_t **batch_p)
{
    if (batch_p == NULL || *batch_p == NULL)
        return;
    free((*batch_p)->ops);
    free(*batch_p);
    *batch_p = NULL;
}

size_t ledger_fsm_batch_count(const ledger_fsm_batch_t *b)
{
    assert(b != NULL);
    return b->n_ops;
}

static size_t varint_put(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    do {
        uint8_t byte = v & 0x7f;
        v >>= 7;
        p[n++] = byte | (v != 0 ? 0x80 : 0);
    } while (v != 0);
    assert(n <= FSM_VARINT_MAX);
    return n;
}

/* Packs op at the end of the batch as one more Entry.ops field. */
static int batch_add(ledger_fsm_batch_t *b, const Qcreplica__Op *op)
{
    assert(b != NULL);
    assert(op != NULL);
    size_t size = qcreplica__op__get_packed_size(op);
    size_t need = 1 + FSM_VARINT_MAX + size;
    if (b->n_ops >= LEDGER_FSM_OPS_MAX ||
        FSM_ENTRY_HEAD_MAX + b->len + need + FSM_PAD_MAX > LEDGER_FSM_ENTRY_MAX)
        return QC_EFULL;
    if (b->len + need > b->cap) {
        size_t cap = b->cap == 0 ? FSM_SNAP_INITIAL_CAP : b->cap;
        while (b->len + need > cap)
            cap *= 2;
        uint8_t *p = realloc(b->ops, cap);
        if (p == NULL)
            return QC_ENOMEM;
        b->ops = p;
        b->cap = cap;
    }
    uint8_t *p = b->ops + b->len;
    *p++ = FSM_OP_TAG;
    p += varint_put(p, size);
    size_t packed = qcreplica__op__pack(op, p);
    assert(packed == size);
    b->len = (size_t)(p + packed - b->ops);
    b->n_ops++;
    return 0;
}

static ProtobufCBinaryData bin(const uint8_t *data, size_t len)
{
    ProtobufCBinaryData d = {.len = len, .data = (uint8_t *)data};
    return d;
}

static bool artefact_ok(const uint8_t *bytes, size_t len)
{
    return (bytes != NULL || len == 0) && len <= LEDGER_SIGNED_MAX;
}

int ledger_fsm_batch_reserve(ledger_fsm_batch_t *b, const uint8_t *request, size_t request_len,
                             uint64_t deadline_ms)
{
    if (!artefact_ok(request, request_len))
        return QC_EINVAL;
    Qcreplica__Reserve m = QCREPLICA__RESERVE__INIT;
    m.request = bin(request, request_len);
    m.deadline_ms = deadline_ms;
    Qcreplica__Op op = QCREPLICA__OP__INIT;
    op.op_case = QCREPLICA__OP__OP_RESERVE;
    op.reserve = &m;
    return batch_add(b, &op);
}

int ledger_fsm_batch_store_allow(ledger_fsm_batch_t *b, const uint8_t txn_id[LEDGER_TXN_ID_SIZE],
                                 const uint8_t *allow, size_t allow_len)
{
    if (txn_id == NULL || !artefact_ok(allow, allow_len))
        return QC_EINVAL;
    Qcreplica__StoreAllow m = QCREPLICA__STORE_ALLOW__INIT;
    m.txn_id = bin(txn_id, LEDGER_TXN_ID_SIZE);
    m.allow = bin(allow, allow_len);
    Qcreplica__Op op = QCREPLICA__OP__INIT;
    op.op_case = QCREPLICA__OP__OP_STORE_ALLOW;
    op.store_allow = &m;
    return batch_add(b, &op);
}

int ledger_fsm_batch_settle(ledger_fsm_batch_t *b, const uint8_t txn_id[LEDGER_TXN_ID_SIZE],
                            const uint8_t *report, size_t report_len)
{
    if (txn_id == NULL || !artefact_ok(report, report_len))
        return QC_EINVAL;
    Qcreplica__Settle m = QCREPLICA__SETTLE__INIT;
    m.txn_id = bin(txn_id, LEDGER_TXN_ID_SIZE);
    m.report = bin(report, report_len);
    Qcreplica__Op op = QCREPLICA__OP__INIT;
    op.op_case = QCREPLICA__OP__OP_SETTLE;
    op.settle = &m;
    return batch_add(b, &op);
}

int ledger_fsm_batch_bad_report(ledger_fsm_batch_t *b, const uint8_t txn_id[LEDGER_TXN_ID_SIZE],
                                const uint8_t *report, size_t report_len)
{
    if (txn_id == NULL || !artefact_ok(report, report_len))
        return QC_EINVAL;
    Qcreplica__BadReport m = QCREPLICA__BAD_REPORT__INIT;
    m.txn_id = bin(txn_id, LEDGER_TXN_ID_SIZE);
    m.report = bin(report, report_len);
    Qcreplica__Op op = QCREPLICA__OP__INIT;
    op.op_case = QCREPLICA__OP__OP_BAD_REPORT;
    op.bad_report = &m;
    return batch_add(b, &op);
}

int ledger_fsm_batch_expire(ledger_fsm_batch_t *b, uint64_t upto_ms, uint32_t max)
{
    Qcreplica__Expire m = QCREPLICA__EXPIRE__INIT;
    m.upto_ms = upto_ms;
    m.max = max;
    Qcreplica__Op op = QCREPLICA__OP__INIT;
    op.op_case = QCREPLICA__OP__OP_EXPIRE;
    op.expire = &m;
    return batch_add(b, &op);
}

int ledger_fsm_batch_open_account(ledger_fsm_batch_t *b, const ledger_account_t *spec)
{
    assert(spec != NULL);
    Qcledger__OpenAccountRequest m = QCLEDGER__OPEN_ACCOUNT_REQUEST__INIT;
    m.account_id = (char *)spec->id;
    m.currency = spec->currency;
    m.load_min = spec->load_min;
    m.load_max = spec->load_max;
    m.daily_max = spec->daily_max;
    Qcreplica__Op op = QCREPLICA__OP__INIT;
    op.op_case = QCREPLICA__OP__OP_OPEN_ACCOUNT;
    op.open_account = &m;
    return batch_add(b, &op);
}

int ledger_fsm_batch_deposit(ledger_fsm_batch_t *b, const char *account_id, int64_t amount,
                             const uint8_t txn_id[LEDGER_TXN_ID_SIZE])
{
    if (account_id == NULL || txn_id == NULL)
        return QC_EINVAL;
    Qcledger__DepositRequest m = QCLEDGER__DEPOSIT_REQUEST__INIT;
    m.account_id = (char *)account_id;
    m.amount = amount;
    m.txn_id = bin(txn_id, LEDGER_TXN_ID_SIZE);
    Qcreplica__Op op = QCREPLICA__OP__INIT;
    op.op_case = QCREPLICA__OP__OP_DEPOSIT;
    op.deposit = &m;
    return batch_add(b, &op);
}

int ledger_fsm_batch_set_frozen(ledger_fsm_batch_t *b, const char *account_id, bool frozen)
{
    if (account_id == NULL)
        return QC_EINVAL;
    Qcreplica__SetFrozen m = QCREPLICA__SET_FROZEN__INIT;
    m.account_id = (char *)account_id;
    m.frozen = frozen;
    Qcreplica__Op op = QCREPLICA__OP__INIT;
    op.op_case = QCREPLICA__OP__OP_SET_FROZEN;
    op.set_frozen = &m;
    return batch_add(b, &op);
}

int ledger_fsm_batch_enroll(ledger_fsm_batch_t *b, const char *account_id, const uint8_t *cert,
                            size_t cert_len, int64_t wallet_cap, uint64_t counter)
{
    if (account_id == NULL || cert == NULL || cert_len == 0 || cert_len > LEDGER_CERT_MAX)
        return QC_EINVAL;
    Qcledger__EnrollDeviceRequest m = QCLEDGER__ENROLL_DEVICE_REQUEST__INIT;
    m.account_id = (char *)account_id;
    m.cert = bin(cert, cert_len);
    m.wallet_cap = wallet_cap;
    m.counter = counter;
    Qcreplica__Op op = QCREPLICA__OP__INIT;
    op.op_case = QCREPLICA__OP__OP_ENROLL_DEVICE;
    op.enroll_device = &m;
    return batch_add(b, &op);
}

int ledger_fsm_batch_revoke(ledger_fsm_batch_t *b, const char *device_id)
{
    if (device_id == NULL)
        return QC_EINVAL;
    Qcledger__RevokeDeviceRequest m = QCLEDGER__REVOKE_DEVICE_REQUEST__INIT;
    m.device_id = (char *)device_id;
    Qcreplica__Op op = QCREPLICA__OP__INIT;
    op.op_case = QCREPLICA__OP__OP_REVOKE_DEVICE;
    op.revoke_device = &m;
    return batch_add(b, &op);
}

int ledger_fsm_batch_outbox_ack(ledger_fsm_batch_t *b, uint64_t upto_seq)
{
    return ledger_fsm_batch_outbox_ack_by(b, upto_seq, NULL, NULL, 0);
}

int ledger_fsm_batch_outbox_ack_by(ledger_fsm_batch_t *b, uint64_t upto_seq, const char *consumer,
                                   const char *const *consumers, size_t consumer_count)
{
    assert(consumer_count == 0 || consumers != NULL);
    assert(consumer_count <= LEDGER_OUTBOX_CONSUMERS_MAX);
    Qcledger__OutboxAckRequest m = QCLEDGER__OUTBOX_ACK_REQUEST__INIT;
    m.upto_seq = upto_seq;
    if (consumer != NULL)
        m.consumer = (char *)consumer;
    m.consumers = (char **)consumers;
    m.n_consumers = consumer_count;
    Qcreplica__Op op = QCREPLICA__OP__INIT;
    op.op_case = QCREPLICA__OP__OP_OUTBOX_ACK;
    op.outbox_ack = &m;
    return batch_add(b, &op);
}

int ledger_fsm_batch_digest(ledger_fsm_batch_t *b, uint64_t index, const uint8_t digest[32])
{
    assert(b != NULL);
    assert(digest != NULL);
    Qcreplica__Digest m = QCREPLICA__DIGEST__INIT;
    m.index = index;
    m.digest = bin(digest, PROTO_DIGEST_SIZE);
    Qcreplica__Op op = QCREPLICA__OP__INIT;
    op.op_case = QCREPLICA__OP__OP_DIGEST;
    op.digest = &m;
    return batch_add(b, &op);
}

int ledger_fsm_batch_encode(const ledger_fsm_batch_t *b, struct raft_buffer *out)
{
    assert(b != NULL);
    assert(out != NULL);
    /* protobuf-c packs fields in number order: version and time, then the ops, which is
     * exactly the head packed alone followed by the ops packed one by one. */
    Qcreplica__Entry head = QCREPLICA__ENTRY__INIT;
    head.version = QCREPLICA__ENTRY_VERSION__ENTRY_VERSION_1;
    head.time_ms = b->time_ms;
    size_t head_len = qcreplica__entry__get_packed_size(&head);
    assert(head_len <= FSM_ENTRY_HEAD_MAX);
    /* Then the padding field (tag, length, zeros) when the length is not a multiple of 8. */
    size_t len = head_len + b->len, zeros = 0;
    if (len % FSM_PAD_ALIGN != 0) {
        zeros = (FSM_PAD_ALIGN - (len + 2) % FSM_PAD_ALIGN) % FSM_PAD_ALIGN;
        if (zeros == 0)
            zeros = FSM_PAD_ALIGN; /* an empty bytes field is not packed */
    }
    out->len = len + (zeros > 0 ? 2 + zeros : 0);
    assert(out->len % FSM_PAD_ALIGN == 0);
    assert(out->len - len <= FSM_PAD_MAX);
    out->base = raft_malloc(out->len);
    if (out->base == NULL) {
        out->len = 0;
        return QC_ENOMEM;
    }
    uint8_t *p = out->base;
    size_t packed = qcreplica__entry__pack(&head, p);
    assert(packed == head_len);
    if (b->len > 0)
        memcpy(p + head_len, b->ops, b->len);
    if (zeros > 0) {
        p[len] = FSM_PAD_TAG;
        p[len + 1] = (uint8_t)zeros;
        memset(p + len + 2, 0, zeros);
    }
    return 0;
}
