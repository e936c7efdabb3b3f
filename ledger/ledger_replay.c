/* ledger_replay.c - replays a shard's audit events onto a restored copy, checking each one. */
#include "ledger_replay.h"

#include <assert.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ledger.pb-c.h"
#include "ledger_saga.h"
#include "ops_bytes.h"
#include "ops_log.h"
#include "ops_time.h"

#define REPLAY_PATH_MAX 1024

typedef struct replay {
    ledger_store_t *store;
    ledger_saga_t *saga;
    uint32_t shard;
    ledger_load_t *load; /* scratch: the event's record */
    ledger_load_t *out;  /* scratch: the saga's */
    char why[LEDGER_WHY_MAX];
} replay_t;

/* Reads one record (be32 length || bytes) into buf. Returns 0, 1 at a clean end of file,
 * QC_EDECODE (cut short, or longer than LEDGER_REPLAY_RECORD_MAX). */
static int read_record(FILE *f, uint8_t *buf, size_t *len)
{
    uint8_t hdr[4];
    size_t n = fread(hdr, 1, sizeof hdr, f);
    if (n == 0 && feof(f))
        return 1;
    if (n != sizeof hdr)
        return QC_EDECODE;
    uint64_t l = ops_be_get(hdr, 4);
    if (l > LEDGER_REPLAY_RECORD_MAX)
        return QC_EDECODE;
    if (fread(buf, 1, (size_t)l, f) != (size_t)l)
        return QC_EDECODE;
    *len = (size_t)l;
    return 0;
}

static bool bytes_eq(ProtobufCBinaryData a, ProtobufCBinaryData b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0);
}

/* The event the replay appended under ev->seq must be ev, byte for byte. */
static int check_appended(replay_t *r, MDB_txn *txn, const Qcledger__OutboxEvent *ev)
{
    Qcledger__OutboxReadReply got = QCLEDGER__OUTBOX_READ_REPLY__INIT;
    int rc = ledger_store_outbox_read(r->store, txn, ev->seq - 1, 1, &got);
    if (rc != 0)
        return rc;
    const Qcledger__OutboxEvent *e = got.n_events == 1 ? got.events[0] : NULL;
    bool same = e != NULL && e->seq == ev->seq && e->shard == ev->shard &&
                strcmp(e->type, ev->type) == 0 && e->time_ms == ev->time_ms &&
                bytes_eq(e->txn_id, ev->txn_id) && bytes_eq(e->payload, ev->payload);
    ledger_store_outbox_read_free(&got);
    if (!same) {
        snprintf(r->why, sizeof r->why, "event %" PRIu64 " (%s) replayed differently from the log",
                 ev->seq, ev->type);
        return QC_EMISMATCH;
    }
    return 0;
}

static int decode_load(replay_t *r, const Qcledger__OutboxEvent *ev)
{
    Qcledger__Load *m = qcledger__load__unpack(NULL, ev->payload.len, ev->payload.data);
    if (m == NULL)
        return QC_EDECODE;
    int rc = ledger_store_load_from_msg(m, r->load);
    qcledger__load__free_unpacked(m, NULL);
    return rc;
}

static int replay_load(replay_t *r, MDB_txn *txn, const Qcledger__OutboxEvent *ev)
{
    int rc = decode_load(r, ev);
    if (rc != 0)
        return rc;
    const ledger_load_t *l = r->load;
    uint64_t now = ev->time_ms;
    if (strcmp(ev->type, "load.reserved") == 0)
        return ledger_saga_reserve(r->saga, txn, now, l->deadline_ms, l->request, l->request_len,
                                   r->out, r->why);
    if (strcmp(ev->type, "load.allowed") == 0)
        return ledger_saga_store_allow(r->saga, txn, now, l->txn_id, l->allow, l->allow_len, r->out,
                                       r->why);
    return ledger_saga_replay_settle(r->saga, txn, now, l, r->out, r->why);
}

static int replay_account(replay_t *r, MDB_txn *txn, const Qcledger__OutboxEvent *ev)
{
    Qcledger__Account *m = qcledger__account__unpack(NULL, ev->payload.len, ev->payload.data);
    if (m == NULL)
        return QC_EDECODE;
    ledger_account_t after, now_acct;
    int rc = ledger_store_account_from_msg(m, &after);
    qcledger__account__free_unpacked(m, NULL);
    if (rc != 0)
        return rc;
    uint64_t now = ev->time_ms;
    if (strcmp(ev->type, "account.opened") == 0)
        return ledger_saga_open_account(r->saga, txn, now, &after, &now_acct, r->why);
    if (strcmp(ev->type, "account.frozen") == 0 || strcmp(ev->type, "account.unfrozen") == 0)
        return ledger_saga_set_frozen(r->saga, txn, now, after.id,
                                      strcmp(ev->type, "account.frozen") == 0, &now_acct, r->why);
    /* account.deposit: the amount is what the balance gained. */
    if (ev->txn_id.len != LEDGER_TXN_ID_SIZE)
        return QC_EDECODE;
    if ((rc = ledger_store_account_get(r->store, txn, after.id, &now_acct)) != 0)
        return rc;
    int64_t amount = 0;
    if (__builtin_sub_overflow(after.balance, now_acct.balance, &amount) || amount <= 0) {
        snprintf(r->why, sizeof r->why, "deposit to %s leaves %lld after %lld", after.id,
                 (long long)after.balance, (long long)now_acct.balance);
        return QC_EMISMATCH;
    }
    return ledger_saga_deposit(r->saga, txn, now, after.id, amount, ev->txn_id.data, &now_acct,
                               r->why);
}

static int replay_device(replay_t *r, MDB_txn *txn, const Qcledger__OutboxEvent *ev)
{
    Qcledger__Device *m = qcledger__device__unpack(NULL, ev->payload.len, ev->payload.data);
    if (m == NULL)
        return QC_EDECODE;
    ledger_device_t *d = malloc(2 * sizeof *d);
    if (d == NULL) {
        qcledger__device__free_unpacked(m, NULL);
        return QC_ENOMEM;
    }
    int rc = ledger_store_device_from_msg(m, d);
    qcledger__device__free_unpacked(m, NULL);
    if (rc == 0 && strcmp(ev->type, "device.enrolled") == 0)
        rc = ledger_saga_enroll_device(r->saga, txn, ev->time_ms, d->account_id, d->cert,
                                       d->cert_len, d->wallet_cap, d->counter, &d[1], r->why);
    else if (rc == 0)
        rc = ledger_saga_revoke_device(r->saga, txn, ev->time_ms, d->id, &d[1], r->why);
    free(d);
    return rc;
}

/* Runs one event again; it must append itself under ev->seq (checked by the caller). */
static int replay_event(replay_t *r, MDB_txn *txn, const Qcledger__OutboxEvent *ev)
{
    r->why[0] = '\0';
    const char *t = ev->type;
    if (strncmp(t, "load.", 5) == 0 &&
        (strcmp(t, "load.reserved") == 0 || strcmp(t, "load.allowed") == 0 ||
         strcmp(t, "load.confirmed") == 0 || strcmp(t, "load.compensated") == 0 ||
         strcmp(t, "load.late_confirmed") == 0))
        return replay_load(r, txn, ev);
    if (strcmp(t, "account.opened") == 0 || strcmp(t, "account.deposit") == 0 ||
        strcmp(t, "account.frozen") == 0 || strcmp(t, "account.unfrozen") == 0)
        return replay_account(r, txn, ev);
    if (strcmp(t, "device.enrolled") == 0 || strcmp(t, "device.revoked") == 0)
        return replay_device(r, txn, ev);
    if (strcmp(t, "security.bad_report_signature") == 0)
        return ledger_store_outbox_append(r->store, txn, r->shard, t,
                                          ev->txn_id.len > 0 ? ev->txn_id.data : NULL, ev->time_ms,
                                          ev->payload.data, ev->payload.len, NULL);
    snprintf(r->why, sizeof r->why, "unknown event type %s", t);
    return QC_EVERSION;
}

static int read_header(FILE *f, uint8_t *buf, uint32_t shard, uint32_t shard_count,
                       Qcledger__ReplayHeader **out)
{
    char magic[4];
    if (fread(magic, 1, sizeof magic, f) != sizeof magic ||
        memcmp(magic, LEDGER_REPLAY_MAGIC, sizeof magic) != 0)
        return QC_EDECODE;
    size_t len = 0;
    int rc = read_record(f, buf, &len);
    if (rc != 0)
        return QC_EDECODE;
    Qcledger__ReplayHeader *h = qcledger__replay_header__unpack(NULL, len, buf);
    if (h == NULL)
        return QC_EDECODE;
    if (h->version != LEDGER_REPLAY_VERSION) {
        qcledger__replay_header__free_unpacked(h, NULL);
        return QC_EVERSION;
    }
    if (h->shard != shard || h->shard_count != shard_count) {
        qcledger__replay_header__free_unpacked(h, NULL);
        return QC_ESHARD;
    }
    *out = h;
    return 0;
}

/* One chunk: up to LEDGER_REPLAY_CHUNK_MAX events from f, replayed, checked, acknowledged
 * and committed. *n gets how many were read (0 at the end). */
static int replay_chunk(replay_t *r, FILE *f, uint8_t *buf, uint64_t *next,
                        ledger_replay_stats_t *st, size_t *n)
{
    MDB_txn *txn = NULL;
    int rc = ledger_store_txn_begin(r->store, NULL, true, &txn);
    if (rc != 0)
        return rc;
    *n = 0;
    while (rc == 0 && *n < LEDGER_REPLAY_CHUNK_MAX) {
        size_t len = 0;
        rc = read_record(f, buf, &len);
        if (rc == 1) {
            rc = 0;
            break;
        }
        if (rc != 0)
            break;
        Qcledger__OutboxEvent *ev = qcledger__outbox_event__unpack(NULL, len, buf);
        if (ev == NULL) {
            rc = QC_EDECODE;
            break;
        }
        (*n)++;
        if (ev->seq < *next) {
            st->skipped++; /* replayed by a run that was cut short */
        } else if (ev->seq != *next || ev->shard != r->shard) {
            snprintf(r->why, sizeof r->why, "event %" PRIu64 " of shard %u where %" PRIu64 " of %u",
                     ev->seq, ev->shard, *next, r->shard);
            rc = QC_EMISMATCH;
        } else if ((rc = replay_event(r, txn, ev)) == 0 && (rc = check_appended(r, txn, ev)) == 0) {
            (*next)++;
            st->events++;
            st->reserves += strcmp(ev->type, "load.reserved") == 0;
            if (st->first_seq == 0)
                st->first_seq = ev->seq;
            st->last_seq = ev->seq;
        }
        if (rc != 0) {
            char seq[24];
            snprintf(seq, sizeof seq, "%" PRIu64, ev->seq);
            ops_log(OPS_LOG_ERROR, "ledger.replay_refused", "seq", seq, "type", ev->type, "error",
                    qc_strerror(rc), "why", r->why, NULL);
        }
        qcledger__outbox_event__free_unpacked(ev, NULL);
    }
    /* The replayed events stay in the outbox, as they were before the loss: the audit log
     * holds them (it keeps one of each (source, seq)), and each consumer (the relay, every
     * witness) acknowledges them from its own cursor as before. */
    if (rc != 0) {
        ledger_store_txn_abort(txn);
        return rc;
    }
    return ledger_store_txn_commit(txn);
}

static int replay_all(replay_t *r, FILE *f, uint8_t *buf, const Qcledger__ReplayHeader *h,
                      ledger_replay_stats_t *st)
{
    MDB_txn *txn = NULL;
    uint64_t next = 1;
    int rc = ledger_store_txn_begin(r->store, NULL, false, &txn);
    if (rc != 0)
        return rc;
    rc = ledger_store_outbox_next(r->store, txn, &next);
    ledger_store_txn_abort(txn);
    if (rc != 0)
        return rc;
    /* The store is the copy (next = after + 1), or a replay of this file went part way. */
    if (next < h->after_seq + 1 || next > h->after_seq + h->count + 1) {
        snprintf(r->why, sizeof r->why,
                 "the store's next outbox event is %" PRIu64 ", the events follow %" PRIu64, next,
                 h->after_seq);
        ops_log(OPS_LOG_ERROR, "ledger.replay_refused", "why", r->why, NULL);
        return QC_EMISMATCH;
    }
    size_t n = 0;
    do {
        rc = replay_chunk(r, f, buf, &next, st, &n);
    } while (rc == 0 && n > 0);
    if (rc == 0 && st->events + st->skipped != h->count) {
        snprintf(r->why, sizeof r->why, "%" PRIu64 " events in a file that announces %" PRIu64,
                 st->events + st->skipped, h->count);
        ops_log(OPS_LOG_ERROR, "ledger.replay_refused", "why", r->why, NULL);
        rc = QC_EDECODE;
    }
    if (rc == 0 && h->new_group) {
        /* A new Raft group starts at index 1: the copy's old index would skip its entries. */
        if ((rc = ledger_store_txn_begin(r->store, NULL, true, &txn)) != 0)
            return rc;
        rc = ledger_store_applied_clear(r->store, txn);
        if (rc == 0)
            rc = ledger_store_txn_commit(txn);
        else
            ledger_store_txn_abort(txn);
    }
    return rc;
}

int ledger_replay_file(ledger_store_t *store, EVP_PKEY *allow_key, uint32_t shard,
                       uint32_t shard_count, const char *path, ledger_replay_stats_t *stats)
{
    assert(store != NULL);
    assert(allow_key != NULL);
    assert(path != NULL);
    ledger_replay_stats_t st;
    memset(&st, 0, sizeof st);
    uint64_t t0 = ops_time_mono_ms();
    replay_t r = {.store = store, .shard = shard};
    Qcledger__ReplayHeader *h = NULL;
    uint8_t *buf = malloc(LEDGER_REPLAY_RECORD_MAX);
    r.load = malloc(sizeof *r.load);
    r.out = malloc(sizeof *r.out);
    FILE *f = fopen(path, "rbe");
    int rc = buf == NULL || r.load == NULL || r.out == NULL ? QC_ENOMEM : f == NULL ? QC_EIO : 0;
    ledger_saga_config_t scfg = {.store = store,
                                 .allow_key = allow_key,
                                 .trust = NULL, /* enrollments were checked when they were made */
                                 .shard = shard,
                                 .shard_count = shard_count,
                                 .replica = true}; /* nothing depends on this map's fill */
    if (rc == 0)
        rc = read_header(f, buf, shard, shard_count, &h);
    if (rc == 0)
        rc = ledger_saga_new(&scfg, &r.saga);
    if (rc == 0)
        rc = replay_all(&r, f, buf, h, &st);
    st.elapsed_ms = ops_time_mono_ms() - t0;
    if (stats != NULL)
        *stats = st;
    ledger_saga_destroy(&r.saga);
    if (h != NULL)
        qcledger__replay_header__free_unpacked(h, NULL);
    if (f != NULL)
        fclose(f);
    free(r.out);
    free(r.load);
    free(buf);
    return rc;
}

int ledger_replay_pending(ledger_store_t *store, EVP_PKEY *allow_key, uint32_t shard,
                          uint32_t shard_count, const char *data_dir)
{
    assert(data_dir != NULL);
    char path[REPLAY_PATH_MAX], done[REPLAY_PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", data_dir, LEDGER_REPLAY_FILE);
    snprintf(done, sizeof done, "%s/%s", data_dir, LEDGER_REPLAY_DONE);
    if (access(path, F_OK) != 0)
        return 0;
    ledger_replay_stats_t st;
    ops_log(OPS_LOG_INFO, "ledger.replay_started", "file", path, NULL);
    int rc = ledger_replay_file(store, allow_key, shard, shard_count, path, &st);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "ledger.replay_failed", "file", path, "error", qc_strerror(rc),
                "hint", "the ledger does not start on a restore it could not bring forward", NULL);
        return rc;
    }
    if (rename(path, done) != 0) {
        ops_log(OPS_LOG_ERROR, "ledger.replay_failed", "file", path, "error", "rename", NULL);
        return QC_EIO;
    }
    int fd = open(data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        QC_IGNORE(fsync(fd)); /* the rename only spares a second, harmless run */
        close(fd);
    }
    char ev[24], sk[24], res[24], first[24], last[24], ms[24];
    snprintf(ev, sizeof ev, "%" PRIu64, st.events);
    snprintf(sk, sizeof sk, "%" PRIu64, st.skipped);
    snprintf(res, sizeof res, "%" PRIu64, st.reserves);
    snprintf(first, sizeof first, "%" PRIu64, st.first_seq);
    snprintf(last, sizeof last, "%" PRIu64, st.last_seq);
    snprintf(ms, sizeof ms, "%" PRIu64, st.elapsed_ms);
    ops_log(OPS_LOG_INFO, "ledger.replay_done", "events", ev, "skipped", sk, "reserves", res,
            "first_seq", first, "last_seq", last, "elapsed_ms", ms, NULL);
    return 0;
}
