/* ledger_store.c - the ledger's LMDB environment, its databases and record encoding. */
#include "ledger_store.h"

#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_bytes.h"
#include "ops_crc32c.h"
#include "ops_hex.h"
#include "ops_lmdb.h"
#include "ops_log.h"
#include "ops_metrics.h"
#include "ops_store.h"
#include "ops_time.h"
#include "qc_error.h"

#include "ledger_store_index.h"

#define STORE_DBI_COUNT 13
#define STORE_DEADLINE_KEY_SIZE (8 + LEDGER_TXN_ID_SIZE)
#define STORE_TRANSFER_KEY_SIZE (LEDGER_TXN_ID_SIZE + 1)
#define STORE_SEQ_KEY_SIZE 8
#define STORE_META_OUTBOX_NEXT "outbox_next_seq"
#define STORE_META_SHARD "shard"
#define STORE_META_SHARD_COUNT "shard_count"
#define STORE_META_APPLIED_INDEX "raft_applied_index"
#define STORE_META_APPLIED_TIME "raft_applied_time_ms"
#define STORE_LOCAL_INDEX_VERSION "loads_index_version"
#define STORE_INDEX_PROGRESS_EVERY 100000 /* loads between two lines of an index build */
#define STORE_FILE_MODE 0600
#define STORE_SUM_SIZE OPS_CRC32C_SIZE
#define STORE_KEY_HEX_MAX 64 /* key bytes named in a corrupt_record log line */

enum store_dbi {
    DBI_ACCOUNTS = 0,
    DBI_DEVICES,
    DBI_LOADS,
    DBI_DEADLINES,
    DBI_TRANSFERS,
    DBI_OUTBOX,
    DBI_META,
    DBI_CERTS,
    /* Not replicated, snapshotted or digested (derived or local state): */
    DBI_LOADS_BY_TIME, /* the indexes of loads, in ledger_index_kind_t order */
    DBI_LOADS_BY_DEVICE,
    DBI_LOADS_BY_ACCOUNT,
    DBI_TRANSFERS_BY_ACCOUNT, /* the movements of each account */
    DBI_LOCAL,                /* this copy's own bookkeeping: the version of its indexes */
};

_Static_assert(DBI_CERTS + 1 == LEDGER_STORE_DB_COUNT,
               "the snapshot format numbers every replicated database");
_Static_assert(DBI_LOADS_BY_DEVICE == DBI_LOADS_BY_TIME + LEDGER_INDEX_DEVICE &&
                   DBI_LOADS_BY_ACCOUNT == DBI_LOADS_BY_TIME + LEDGER_INDEX_ACCOUNT,
               "the index databases are in ledger_index_kind_t order");
_Static_assert(DBI_LOCAL + 1 == STORE_DBI_COUNT, "every database is named");

static const char *const store_dbi_names[STORE_DBI_COUNT] = {
    "accounts",
    "devices",
    "loads",
    "deadlines",
    "transfers",
    "outbox",
    "meta",
    "certs",
    "loads_by_time",
    "loads_by_device",
    "loads_by_account",
    "transfers_by_account",
    "local",
};

static bool store_index_db(enum store_dbi dbi)
{
    return dbi >= DBI_LOADS_BY_TIME && dbi <= DBI_TRANSFERS_BY_ACCOUNT;
}

struct ledger_store {
    MDB_env *env;
    MDB_dbi dbi[STORE_DBI_COUNT];
    atomic_bool corrupt; /* a record failed its checksum: see ledger_store_corrupt() */
    ops_counter_t *m_corrupt;
    ops_counter_t *m_index_bad;
};

static int store_index_build(ledger_store_t *store, MDB_txn *txn, const char *dir);
static int transfer_from_msg(const Qcledger__Transfer *m, ledger_transfer_t *t);
static int store_move_entries(ledger_store_t *store, MDB_txn *txn, const ledger_transfer_t *t,
                              unsigned *missing);

/* The databases whose values carry CRC-32C(key || value) in their last STORE_SUM_SIZE bytes
 * (ledger_store.h). deadlines (empty values), meta (counters) and certs (DER, bound to its
 * device by the fingerprint in the device's summed record) carry none. */
static bool store_summed(enum store_dbi dbi)
{
    return dbi == DBI_ACCOUNTS || dbi == DBI_DEVICES || dbi == DBI_LOADS || dbi == DBI_TRANSFERS ||
           dbi == DBI_OUTBOX;
}

static uint32_t store_sum(const MDB_val *k, const void *val, size_t val_len)
{
    return ops_crc32c(ops_crc32c(0, k->mv_data, k->mv_size), val, val_len);
}

/* Maps an LMDB error to our code space (ops_lmdb.h) and logs the unexpected ones. */
static int store_err(const char *what, int rc)
{
    return ops_lmdb_error("ledger.lmdb", what, rc);
}

int ledger_store_open(const char *dir, uint64_t map_size, ledger_store_t **out)
{
    assert(dir != NULL);
    assert(out != NULL);
    *out = NULL;
    if (map_size < LEDGER_MAP_SIZE_MIN)
        return QC_EINVAL;
    /* Before LMDB maps it: an empty or a truncated file is refused here, never met as SIGBUS
     * (ops_store.h). */
    char why[OPS_STORE_WHY_MAX];
    int frc = ops_store_check_file(dir, true, why, sizeof why);
    if (frc != 0) {
        ops_log(OPS_LOG_ERROR, "ledger.store_refused", "dir", dir, "error", why, NULL);
        return frc;
    }
    ledger_store_t *store = calloc(1, sizeof *store);
    if (store == NULL)
        return QC_ENOMEM;
    atomic_init(&store->corrupt, false);
    store->m_corrupt = ops_counter("qc_ledger_corrupt_records_total",
                                   "Records that failed their checksum when read (writes stop)");
    store->m_index_bad =
        ops_counter("qc_ledger_index_mismatches_total",
                    "Index entries of loads that disagree with the loads (scrub, check --deep)");
    int rc = mdb_env_create(&store->env);
    if (rc != 0) {
        free(store);
        return store_err("env_create", rc);
    }
    MDB_txn *txn = NULL;
    if ((rc = mdb_env_set_mapsize(store->env, (size_t)map_size)) != 0 ||
        (rc = mdb_env_set_maxdbs(store->env, STORE_DBI_COUNT)) != 0 ||
        (rc = mdb_env_set_maxreaders(store->env, LEDGER_READERS_MAX)) != 0) {
        rc = store_err("env_set", rc);
        goto err;
    }
    /* MDB_NOTLS: read txns are tied to our objects, not to threads. No MDB_NOSYNC and no
     * MDB_WRITEMAP (nested transactions need the default mode). */
    if ((rc = mdb_env_open(store->env, dir, MDB_NOTLS, STORE_FILE_MODE)) != 0) {
        ops_log(OPS_LOG_ERROR, "ledger.lmdb_open", "dir", dir, "error", mdb_strerror(rc), NULL);
        rc = QC_EIO;
        goto err;
    }
    int dead = 0;
    if ((rc = mdb_reader_check(store->env, &dead)) != 0) {
        rc = store_err("reader_check", rc);
        goto err;
    }
    if ((rc = mdb_txn_begin(store->env, NULL, 0, &txn)) != 0) {
        rc = store_err("txn_begin", rc);
        goto err;
    }
    for (int i = 0; i < STORE_DBI_COUNT; i++) {
        if ((rc = mdb_dbi_open(txn, store_dbi_names[i], MDB_CREATE, &store->dbi[i])) != 0) {
            rc = store_err("dbi_open", rc);
            goto err;
        }
    }
    /* A store made before the indexes gets them here, once, in this transaction. */
    if ((rc = store_index_build(store, txn, dir)) != 0)
        goto err;
    rc = mdb_txn_commit(txn);
    txn = NULL;
    if (rc != 0) {
        rc = store_err("txn_commit", rc);
        goto err;
    }
    *out = store;
    return 0;
err:
    if (txn != NULL)
        mdb_txn_abort(txn);
    mdb_env_close(store->env);
    free(store);
    return rc;
}

void ledger_store_close(ledger_store_t **store_p)
{
    if (store_p == NULL || *store_p == NULL)
        return;
    mdb_env_close((*store_p)->env);
    free(*store_p);
    *store_p = NULL;
}

int ledger_store_txn_begin(ledger_store_t *store, MDB_txn *parent, bool write, MDB_txn **out)
{
    assert(store != NULL);
    assert(out != NULL);
    assert(parent == NULL || write);
    int rc = mdb_txn_begin(store->env, parent, write ? 0 : MDB_RDONLY, out);
    if (rc != 0) {
        *out = NULL;
        return store_err("txn_begin", rc);
    }
    return 0;
}

int ledger_store_txn_commit(MDB_txn *txn)
{
    assert(txn != NULL);
    int rc = mdb_txn_commit(txn);
    return rc == 0 ? 0 : store_err("txn_commit", rc);
}

void ledger_store_txn_abort(MDB_txn *txn)
{
    if (txn != NULL)
        mdb_txn_abort(txn);
}

/* ------------------------------------------------------------ generic encode/decode */

/* Packs msg straight into LMDB's page (MDB_RESERVE), so nothing is allocated, and appends
 * its checksum. */
static int store_put_msg(ledger_store_t *store, MDB_txn *txn, enum store_dbi dbi, const void *key,
                         size_t key_len, const ProtobufCMessage *msg, unsigned flags)
{
    assert(store_summed(dbi));
    MDB_val k = {.mv_size = key_len, .mv_data = (void *)key};
    size_t len = protobuf_c_message_get_packed_size(msg);
    MDB_val v = {.mv_size = len + STORE_SUM_SIZE, .mv_data = NULL};
    int rc = mdb_put(txn, store->dbi[dbi], &k, &v, flags | MDB_RESERVE);
    if (rc != 0)
        return store_err("put", rc);
    size_t packed = protobuf_c_message_pack(msg, v.mv_data);
    assert(packed == len);
    ops_be_put((uint8_t *)v.mv_data + len, store_sum(&k, v.mv_data, len), STORE_SUM_SIZE);
    return 0;
}

/* Checks the checksum of a record of a summed database and gives the length of its value
 * without it. A mismatch names the record in the log (ledger.corrupt_record: db, key in hex),
 * counts it, and marks the store corrupt: the service stops writing. Returns 0 or
 * QC_ECORRUPT. */
static int store_check(ledger_store_t *store, enum store_dbi dbi, const MDB_val *k,
                       const MDB_val *v, size_t *len)
{
    assert(store_summed(dbi));
    if (v->mv_size >= STORE_SUM_SIZE) {
        size_t n = v->mv_size - STORE_SUM_SIZE;
        uint64_t want = ops_be_get((const uint8_t *)v->mv_data + n, STORE_SUM_SIZE);
        if (store_sum(k, v->mv_data, n) == (uint32_t)want) {
            *len = n;
            return 0;
        }
    }
    char hex[2 * STORE_KEY_HEX_MAX + 1];
    size_t shown = k->mv_size < STORE_KEY_HEX_MAX ? k->mv_size : STORE_KEY_HEX_MAX;
    ops_hex(k->mv_data, shown, hex);
    /* Every read of the record meets it again (the scrub, queries) until a rebuild or a
     * restore: rate limited per record, with the count of what was held back. */
    ops_log_limited(OPS_LOG_ERROR, "ledger.corrupt_record", hex, "db", store_dbi_names[dbi], "key",
                    hex, "error",
                    "checksum mismatch: the record is not what was written; writes stop", NULL);
    ops_counter_add(store->m_corrupt, 1);
    atomic_store(&store->corrupt, true);
    return QC_ECORRUPT;
}

/* Looks key up, checks its checksum and unpacks the value as desc; the caller frees *out. */
static int store_get_msg(ledger_store_t *store, MDB_txn *txn, enum store_dbi dbi, const void *key,
                         size_t key_len, const ProtobufCMessageDescriptor *desc,
                         ProtobufCMessage **out)
{
    MDB_val k = {.mv_size = key_len, .mv_data = (void *)key};
    MDB_val v;
    size_t len = 0;
    *out = NULL;
    int rc = mdb_get(txn, store->dbi[dbi], &k, &v);
    if (rc != 0)
        return store_err("get", rc);
    if ((rc = store_check(store, dbi, &k, &v, &len)) != 0)
        return rc;
    *out = protobuf_c_message_unpack(desc, NULL, len, v.mv_data);
    if (*out == NULL) {
        ops_log_limited(OPS_LOG_ERROR, "ledger.corrupt_record", store_dbi_names[dbi], "db",
                        store_dbi_names[dbi], "error", "the record does not decode", NULL);
        return QC_EDECODE;
    }
    return 0;
}

void ledger_store_corrupt_clear(ledger_store_t *store)
{
    assert(store != NULL);
    atomic_store(&store->corrupt, false);
}

bool ledger_store_corrupt(const ledger_store_t *store)
{
    assert(store != NULL);
    return atomic_load(&((ledger_store_t *)store)->corrupt);
}

/* Copies a string field into a fixed buffer; refuses what does not fit. */
static int copy_str(char *dst, size_t cap, const char *src)
{
    if (src == NULL)
        src = "";
    size_t n = strlen(src);
    if (n >= cap)
        return QC_EDECODE;
    memcpy(dst, src, n + 1);
    return 0;
}

static int copy_bytes(uint8_t *dst, size_t cap, size_t *len, ProtobufCBinaryData src)
{
    if (src.len > cap)
        return QC_EDECODE;
    if (src.len > 0)
        memcpy(dst, src.data, src.len);
    if (len != NULL)
        *len = src.len;
    return 0;
}

static int copy_txn(uint8_t dst[LEDGER_TXN_ID_SIZE], bool *has, ProtobufCBinaryData src)
{
    if (src.len == 0) {
        if (has == NULL)
            return QC_EDECODE;
        *has = false;
        memset(dst, 0, LEDGER_TXN_ID_SIZE);
        return 0;
    }
    if (src.len != LEDGER_TXN_ID_SIZE)
        return QC_EDECODE;
    memcpy(dst, src.data, LEDGER_TXN_ID_SIZE);
    if (has != NULL)
        *has = true;
    return 0;
}

static ProtobufCBinaryData bin(const uint8_t *data, size_t len)
{
    ProtobufCBinaryData b = {.len = len, .data = (uint8_t *)data};
    return b;
}

/* ------------------------------------------------------------ accounts */

void ledger_store_account_view(const ledger_account_t *a, Qcledger__Account *m)
{
    assert(a != NULL);
    assert(m != NULL);
    qcledger__account__init(m);
    m->id = (char *)a->id;
    m->currency = a->currency;
    m->balance = a->balance;
    m->status = a->status;
    m->kind = a->kind;
    m->load_min = a->load_min;
    m->load_max = a->load_max;
    m->daily_max = a->daily_max;
    m->day = a->day;
    m->day_total = a->day_total;
    m->overdrawn = a->overdrawn;
    m->created_ms = a->created_ms;
}

int ledger_store_account_from_msg(const Qcledger__Account *m, ledger_account_t *a)
{
    assert(m != NULL);
    assert(a != NULL);
    memset(a, 0, sizeof *a);
    if (copy_str(a->id, sizeof a->id, m->id) != 0)
        return QC_EDECODE;
    a->currency = m->currency;
    a->balance = m->balance;
    a->status = m->status;
    a->kind = m->kind;
    a->load_min = m->load_min;
    a->load_max = m->load_max;
    a->daily_max = m->daily_max;
    a->day = m->day;
    a->day_total = m->day_total;
    a->overdrawn = m->overdrawn;
    a->created_ms = m->created_ms;
    return 0;
}

int ledger_store_account_get(ledger_store_t *store, MDB_txn *txn, const char *id,
                             ledger_account_t *out)
{
    assert(store != NULL);
    assert(txn != NULL);
    assert(id != NULL);
    assert(out != NULL);
    size_t id_len = strlen(id);
    if (id_len == 0 || id_len > LEDGER_ID_MAX)
        return QC_ENOTFOUND; /* never stored; and LMDB refuses an empty key */
    ProtobufCMessage *msg = NULL;
    int rc = store_get_msg(store, txn, DBI_ACCOUNTS, id, strlen(id), &qcledger__account__descriptor,
                           &msg);
    if (rc != 0)
        return rc;
    rc = ledger_store_account_from_msg((Qcledger__Account *)msg, out);
    protobuf_c_message_free_unpacked(msg, NULL);
    return rc;
}

int ledger_store_account_put(ledger_store_t *store, MDB_txn *txn, const ledger_account_t *acct)
{
    assert(store != NULL);
    assert(txn != NULL);
    assert(acct != NULL);
    assert(acct->id[0] != '\0');
    Qcledger__Account m;
    ledger_store_account_view(acct, &m);
    return store_put_msg(store, txn, DBI_ACCOUNTS, acct->id, strlen(acct->id), &m.base, 0);
}

/* ------------------------------------------------------------ devices */

void ledger_store_device_view(const ledger_device_t *d, Qcledger__Device *m)
{
    assert(d != NULL);
    assert(m != NULL);
    qcledger__device__init(m);
    m->id = (char *)d->id;
    m->account_id = (char *)d->account_id;
    m->cert = bin(d->cert, d->cert_len);
    m->cert_fp = bin(d->cert_fp, sizeof d->cert_fp);
    m->status = d->status;
    m->counter = d->counter;
    m->reserved_txn = bin(d->reserved_txn, d->has_reserved ? LEDGER_TXN_ID_SIZE : 0);
    m->last_txn = bin(d->last_txn, d->has_last ? LEDGER_TXN_ID_SIZE : 0);
    m->wallet_cap = d->wallet_cap;
    m->created_ms = d->created_ms;
}

int ledger_store_device_from_msg(const Qcledger__Device *m, ledger_device_t *d)
{
    assert(m != NULL);
    assert(d != NULL);
    memset(d, 0, sizeof *d);
    if (copy_str(d->id, sizeof d->id, m->id) != 0 ||
        copy_str(d->account_id, sizeof d->account_id, m->account_id) != 0 ||
        copy_bytes(d->cert, sizeof d->cert, &d->cert_len, m->cert) != 0 ||
        m->cert_fp.len != sizeof d->cert_fp ||
        copy_bytes(d->cert_fp, sizeof d->cert_fp, NULL, m->cert_fp) != 0 ||
        copy_txn(d->reserved_txn, &d->has_reserved, m->reserved_txn) != 0 ||
        copy_txn(d->last_txn, &d->has_last, m->last_txn) != 0)
        return QC_EDECODE;
    d->status = m->status;
    d->counter = m->counter;
    d->wallet_cap = m->wallet_cap;
    d->created_ms = m->created_ms;
    return 0;
}

/* The certificate lives in its own database: it never changes after enrollment, while the
 * device record is rewritten by every reserve and settle, so keeping them apart writes a
 * few hundred bytes less per change. */
int ledger_store_device_get(ledger_store_t *store, MDB_txn *txn, const char *id,
                            ledger_device_t *out)
{
    assert(store != NULL);
    assert(txn != NULL);
    assert(id != NULL);
    assert(out != NULL);
    size_t id_len = strlen(id);
    if (id_len == 0 || id_len > LEDGER_DEVICE_ID_MAX)
        return QC_ENOTFOUND; /* never stored; and LMDB refuses an empty key */
    ProtobufCMessage *msg = NULL;
    int rc =
        store_get_msg(store, txn, DBI_DEVICES, id, strlen(id), &qcledger__device__descriptor, &msg);
    if (rc != 0)
        return rc;
    rc = ledger_store_device_from_msg((Qcledger__Device *)msg, out);
    protobuf_c_message_free_unpacked(msg, NULL);
    if (rc != 0 || out->cert_len > 0)
        return rc;
    MDB_val k = {.mv_size = strlen(id), .mv_data = (void *)id}, v;
    rc = mdb_get(txn, store->dbi[DBI_CERTS], &k, &v);
    if (rc != 0)
        return rc == MDB_NOTFOUND ? QC_EDECODE : store_err("cert_get", rc);
    if (v.mv_size == 0 || v.mv_size > sizeof out->cert)
        return QC_EDECODE;
    memcpy(out->cert, v.mv_data, v.mv_size);
    out->cert_len = v.mv_size;
    return 0;
}

int ledger_store_device_put(ledger_store_t *store, MDB_txn *txn, const ledger_device_t *dev)
{
    assert(store != NULL);
    assert(txn != NULL);
    assert(dev != NULL);
    assert(dev->id[0] != '\0');
    assert(dev->cert_len > 0);
    MDB_val k = {.mv_size = strlen(dev->id), .mv_data = (void *)dev->id}, v;
    int rc = mdb_get(txn, store->dbi[DBI_CERTS], &k, &v);
    if (rc == MDB_NOTFOUND || (rc == 0 && (v.mv_size != dev->cert_len ||
                                           memcmp(v.mv_data, dev->cert, dev->cert_len) != 0))) {
        v.mv_size = dev->cert_len;
        v.mv_data = (void *)dev->cert;
        rc = mdb_put(txn, store->dbi[DBI_CERTS], &k, &v, 0);
    }
    if (rc != 0)
        return store_err("cert_put", rc);
    Qcledger__Device m;
    ledger_store_device_view(dev, &m);
    m.cert.len = 0; /* stored beside it */
    return store_put_msg(store, txn, DBI_DEVICES, dev->id, strlen(dev->id), &m.base, 0);
}

/* ------------------------------------------------------------ loads */

/* What of a load its index entries are made of, pointing into load (or msg). */
static ledger_index_load_t store_index_of(const ledger_load_t *load)
{
    ledger_index_load_t l = {.txn_id = load->txn_id,
                             .device_id = load->device_id,
                             .account_id = load->account_id,
                             .created_ms = load->created_ms};
    return l;
}

static ledger_index_load_t store_index_of_msg(const uint8_t *txn_id, const Qcledger__Load *m)
{
    ledger_index_load_t l = {.txn_id = txn_id,
                             .device_id = m->device_id != NULL ? m->device_id : "",
                             .account_id = m->account_id != NULL ? m->account_id : "",
                             .created_ms = m->created_ms};
    return l;
}

/* A stored load's record (checked, and kept whole: a load is small beside a page) or NULL when
 * there is none. The caller frees *out. Returns 0, QC_ECORRUPT, QC_EDECODE, QC_EIO. */
static int store_load_old(ledger_store_t *store, MDB_txn *txn, const uint8_t *txn_id,
                          Qcledger__Load **out)
{
    ProtobufCMessage *msg = NULL;
    *out = NULL;
    int rc = store_get_msg(store, txn, DBI_LOADS, txn_id, LEDGER_TXN_ID_SIZE,
                           &qcledger__load__descriptor, &msg);
    if (rc == QC_ENOTFOUND)
        return 0;
    if (rc != 0)
        return rc;
    Qcledger__Load *m = (Qcledger__Load *)msg;
    if (m->device_id == NULL || m->device_id[0] == '\0' || m->account_id == NULL ||
        m->account_id[0] == '\0') {
        protobuf_c_message_free_unpacked(msg, NULL);
        return QC_EDECODE; /* the saga stores neither (ledger_store_load_put) */
    }
    *out = m;
    return 0;
}

typedef struct store_index_visit {
    ledger_store_t *store;
    MDB_txn *txn;
    ledger_store_load_fn *fn;
    void *arg;
    ledger_load_t *load;
} store_index_visit_t;

/* An entry of an index walk: its load, read and handed on. An entry whose load is missing is
 * skipped (the scrub and check --deep name it): a listing shows what the loads hold. */
static int store_index_visit(void *arg, const uint8_t txn_id[PROTO_TXN_ID_SIZE])
{
    store_index_visit_t *w = arg;
    int rc = ledger_store_load_get(w->store, w->txn, txn_id, w->load);
    if (rc == QC_ENOTFOUND)
        return 0;
    return rc != 0 ? rc : w->fn(w->arg, w->load);
}

void ledger_store_load_view(const ledger_load_t *l, Qcledger__Load *m)
{
    assert(l != NULL);
    assert(m != NULL);
    qcledger__load__init(m);
    m->txn_id = bin(l->txn_id, LEDGER_TXN_ID_SIZE);
    m->state = l->state;
    m->amount = l->amount;
    m->currency = l->currency;
    m->device_id = (char *)l->device_id;
    m->account_id = (char *)l->account_id;
    m->counter = l->counter;
    m->deadline_ms = l->deadline_ms;
    m->reason = (char *)l->reason;
    m->request = bin(l->request, l->request_len);
    m->allow = bin(l->allow, l->allow_len);
    m->report = bin(l->report, l->report_len);
    m->created_ms = l->created_ms;
    m->updated_ms = l->updated_ms;
    m->flagged = l->flagged;
}

int ledger_store_load_from_msg(const Qcledger__Load *m, ledger_load_t *l)
{
    assert(m != NULL);
    assert(l != NULL);
    /* The three envelope buffers are large: clear only the fixed part. */
    memset(l, 0, offsetof(ledger_load_t, request));
    if (copy_txn(l->txn_id, NULL, m->txn_id) != 0 ||
        copy_str(l->device_id, sizeof l->device_id, m->device_id) != 0 ||
        copy_str(l->account_id, sizeof l->account_id, m->account_id) != 0 ||
        copy_str(l->reason, sizeof l->reason, m->reason) != 0 ||
        copy_bytes(l->request, sizeof l->request, &l->request_len, m->request) != 0 ||
        copy_bytes(l->allow, sizeof l->allow, &l->allow_len, m->allow) != 0 ||
        copy_bytes(l->report, sizeof l->report, &l->report_len, m->report) != 0)
        return QC_EDECODE;
    l->state = m->state;
    l->amount = m->amount;
    l->currency = m->currency;
    l->counter = m->counter;
    l->deadline_ms = m->deadline_ms;
    l->created_ms = m->created_ms;
    l->updated_ms = m->updated_ms;
    l->flagged = m->flagged;
    return 0;
}

int ledger_store_load_get(ledger_store_t *store, MDB_txn *txn,
                          const uint8_t txn_id[LEDGER_TXN_ID_SIZE], ledger_load_t *out)
{
    assert(store != NULL);
    assert(txn != NULL);
    assert(txn_id != NULL);
    assert(out != NULL);
    ProtobufCMessage *msg = NULL;
    int rc = store_get_msg(store, txn, DBI_LOADS, txn_id, LEDGER_TXN_ID_SIZE,
                           &qcledger__load__descriptor, &msg);
    if (rc != 0)
        return rc;
    rc = ledger_store_load_from_msg((Qcledger__Load *)msg, out);
    protobuf_c_message_free_unpacked(msg, NULL);
    return rc;
}

int ledger_store_load_put(ledger_store_t *store, MDB_txn *txn, const ledger_load_t *load)
{
    assert(store != NULL);
    assert(txn != NULL);
    assert(load != NULL);
    /* Only records the saga built are stored: the service asserts the same of what it reads
     * back (ledger_service.c, invariant 6). */
    assert(load->state >= QUANCUN__LOAD_STATE__LOAD_RESERVED);
    assert(load->state <= QUANCUN__LOAD_STATE__LOAD_LATE_CONFIRMED);
    assert(load->amount > 0); /* its reserve transfer moved it */
    assert(load->device_id[0] != '\0');
    assert(load->account_id[0] != '\0');
    assert(load->request_len > 0); /* every load is the answer to its signed request */
    assert(load->request_len <= LEDGER_SIGNED_MAX);
    assert(load->allow_len <= LEDGER_SIGNED_MAX);
    assert(load->report_len <= LEDGER_SIGNED_MAX);
    /* The indexes change in this transaction with the record (ledger_store_index.h): a new
     * load gets its entries; a rewrite that keeps device, account and creation time (every
     * state change) leaves them; one that changes them moves them. A state change is told
     * cheaply, by its entries being there already (three lookups, not a parse of the old
     * record): while the indexes agree with the loads, which the scrub checks, a load's entries
     * exist only for its own device, account and time. Only otherwise is the old record read,
     * to take its entries away (and a load whose entries went missing gets them back). */
    ledger_index_load_t now = store_index_of(load);
    const MDB_dbi *idx = &store->dbi[DBI_LOADS_BY_TIME];
    unsigned missing = 0;
    int rc = ledger_index_missing(txn, idx, &now, &missing);
    if (rc == 0 && missing > 0) {
        Qcledger__Load *old = NULL;
        rc = store_load_old(store, txn, load->txn_id, &old);
        if (rc == 0 && old != NULL) {
            ledger_index_load_t was = store_index_of_msg(load->txn_id, old);
            rc = ledger_index_del(txn, idx, &was);
        }
        qcledger__load__free_unpacked(old, NULL);
    }
    if (rc != 0)
        return rc;
    Qcledger__Load m;
    ledger_store_load_view(load, &m);
    rc = store_put_msg(store, txn, DBI_LOADS, load->txn_id, LEDGER_TXN_ID_SIZE, &m.base, 0);
    if (rc == 0 && missing > 0)
        rc = ledger_index_put(txn, idx, &now);
    return rc;
}

int ledger_store_load_del(ledger_store_t *store, MDB_txn *txn,
                          const uint8_t txn_id[LEDGER_TXN_ID_SIZE])
{
    assert(store != NULL);
    assert(txn != NULL);
    assert(txn_id != NULL);
    Qcledger__Load *old = NULL;
    int rc = store_load_old(store, txn, txn_id, &old);
    if (rc != 0)
        return rc;
    if (old == NULL)
        return QC_ENOTFOUND;
    ledger_index_load_t was = store_index_of_msg(txn_id, old);
    rc = ledger_index_del(txn, &store->dbi[DBI_LOADS_BY_TIME], &was);
    qcledger__load__free_unpacked(old, NULL);
    MDB_val k = {.mv_size = LEDGER_TXN_ID_SIZE, .mv_data = (void *)txn_id};
    if (rc == 0 && (rc = mdb_del(txn, store->dbi[DBI_LOADS], &k, NULL)) != 0)
        rc = store_err("load_del", rc);
    return rc;
}

int ledger_store_each_load_in(ledger_store_t *store, MDB_txn *txn, const ledger_index_range_t *r,
                              ledger_store_load_fn *fn, void *arg)
{
    assert(store != NULL);
    assert(txn != NULL);
    assert(r != NULL);
    assert(fn != NULL);
    store_index_visit_t w = {.store = store, .txn = txn, .fn = fn, .arg = arg};
    w.load = malloc(sizeof *w.load);
    if (w.load == NULL)
        return QC_ENOMEM;
    int rc =
        ledger_index_walk(txn, store->dbi[DBI_LOADS_BY_TIME + r->kind], r, store_index_visit, &w);
    free(w.load);
    return rc;
}

/* ------------------------------------------------------------ index build */

/* The index entries of one raw record of db (loads or transfers; key, value with its
 * checksum). With mark (a build at open), a record that fails its checksum or does not parse
 * is left out and counted in *bad; without (a snapshot's record, whose body was hashed, so a
 * mismatch is a bad snapshot and not a bad disk, which must not mark this store corrupt) it is
 * QC_EDECODE. */
static int store_index_record(ledger_store_t *store, MDB_txn *txn, enum store_dbi db,
                              const MDB_val *k, const MDB_val *v, bool mark, uint64_t *bad)
{
    assert(db == DBI_LOADS || db == DBI_TRANSFERS);
    size_t len = v->mv_size >= STORE_SUM_SIZE ? v->mv_size - STORE_SUM_SIZE : 0;
    bool sound;
    if (mark)
        sound = store_check(store, db, k, v, &len) == 0;
    else
        sound = v->mv_size >= STORE_SUM_SIZE &&
                store_sum(k, v->mv_data, len) ==
                    (uint32_t)ops_be_get((const uint8_t *)v->mv_data + len, STORE_SUM_SIZE);
    int rc = QC_EDECODE;
    if (sound && db == DBI_LOADS && k->mv_size == LEDGER_TXN_ID_SIZE) {
        Qcledger__Load *m = qcledger__load__unpack(NULL, len, v->mv_data);
        if (m != NULL && m->device_id != NULL && m->device_id[0] != '\0' && m->account_id != NULL &&
            m->account_id[0] != '\0') {
            uint8_t txn_id[LEDGER_TXN_ID_SIZE];
            memcpy(txn_id, k->mv_data, sizeof txn_id); /* the key may move as the indexes grow */
            ledger_index_load_t l = store_index_of_msg(txn_id, m);
            rc = ledger_index_put(txn, &store->dbi[DBI_LOADS_BY_TIME], &l);
        }
        qcledger__load__free_unpacked(m, NULL);
    } else if (sound && db == DBI_TRANSFERS) {
        Qcledger__Transfer *m = qcledger__transfer__unpack(NULL, len, v->mv_data);
        ledger_transfer_t t;
        if (m != NULL && transfer_from_msg(m, &t) == 0 && t.debit[0] != '\0' && t.credit[0] != '\0')
            rc = store_move_entries(store, txn, &t, NULL);
        qcledger__transfer__free_unpacked(m, NULL);
    }
    if (rc == QC_EDECODE && mark) {
        (*bad)++;
        return 0;
    }
    return rc;
}

/* Puts the entries of every record of db (loads or transfers) into the indexes, in txn. */
static int store_index_db_build(ledger_store_t *store, MDB_txn *txn, enum store_dbi db,
                                uint64_t *done, uint64_t *bad, const char *total)
{
    MDB_cursor *cur = NULL;
    int rc = mdb_cursor_open(txn, store->dbi[db], &cur);
    if (rc != 0)
        return store_err("cursor_open", rc);
    int op = MDB_FIRST, qrc = 0;
    MDB_val k, v;
    while ((rc = mdb_cursor_get(cur, &k, &v, op)) == 0) {
        op = MDB_NEXT;
        if ((qrc = store_index_record(store, txn, db, &k, &v, true, bad)) != 0)
            break;
        if (++*done % STORE_INDEX_PROGRESS_EVERY == 0)
            ops_logf(OPS_LOG_INFO, "ledger.index_build", "%llu of %s records indexed",
                     (unsigned long long)*done, total);
    }
    mdb_cursor_close(cur);
    if (qrc != 0)
        return qrc;
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : store_err("index_build", rc);
}

/* Builds the indexes of every load and transfer in txn when the store's index version is not
 * LEDGER_INDEX_VERSION (a store made before them, or by an older layout), and records the
 * version; does nothing otherwise. One line when it starts, one per
 * STORE_INDEX_PROGRESS_EVERY records, one when it is done. */
static int store_index_build(ledger_store_t *store, MDB_txn *txn, const char *dir)
{
    const char *name = STORE_LOCAL_INDEX_VERSION;
    MDB_val k = {.mv_size = strlen(name), .mv_data = (void *)name}, v;
    int rc = mdb_get(txn, store->dbi[DBI_LOCAL], &k, &v);
    if (rc == 0 && v.mv_size == 8 && ops_be_get(v.mv_data, 8) == LEDGER_INDEX_VERSION)
        return 0;
    if (rc != 0 && rc != MDB_NOTFOUND)
        return store_err("local_get", rc);
    MDB_stat sl, st;
    if ((rc = mdb_stat(txn, store->dbi[DBI_LOADS], &sl)) != 0 ||
        (rc = mdb_stat(txn, store->dbi[DBI_TRANSFERS], &st)) != 0)
        return store_err("stat", rc);
    char total[24];
    snprintf(total, sizeof total, "%zu", (size_t)(sl.ms_entries + st.ms_entries));
    bool quiet = sl.ms_entries + st.ms_entries == 0; /* a new store: nothing to tell */
    if (!quiet)
        ops_log(OPS_LOG_INFO, "ledger.index_build", "dir", dir, "records", total, "step", "start",
                NULL);
    uint64_t t0 = ops_time_mono_ms();
    for (int db = DBI_LOADS_BY_TIME; db <= DBI_TRANSFERS_BY_ACCOUNT; db++)
        if ((rc = mdb_drop(txn, store->dbi[db], 0)) != 0)
            return store_err("drop", rc);
    uint64_t done = 0, bad = 0;
    if ((rc = store_index_db_build(store, txn, DBI_LOADS, &done, &bad, total)) != 0 ||
        (rc = store_index_db_build(store, txn, DBI_TRANSFERS, &done, &bad, total)) != 0)
        return rc;
    uint8_t ver[8];
    ops_be_put(ver, LEDGER_INDEX_VERSION, 8);
    MDB_val vv = {.mv_size = sizeof ver, .mv_data = ver};
    if ((rc = mdb_put(txn, store->dbi[DBI_LOCAL], &k, &vv, 0)) != 0)
        return store_err("local_put", rc);
    char n[24], skipped[24], ms[24];
    snprintf(n, sizeof n, "%llu", (unsigned long long)done);
    snprintf(skipped, sizeof skipped, "%llu", (unsigned long long)bad);
    snprintf(ms, sizeof ms, "%llu", (unsigned long long)(ops_time_mono_ms() - t0));
    if (!quiet)
        ops_log(bad > 0 ? OPS_LOG_ERROR : OPS_LOG_INFO, "ledger.index_build", "dir", dir, "records",
                n, "unreadable", skipped, "ms", ms, "step", "done", NULL);
    return 0;
}

/* ------------------------------------------------------------ transfers */

static void transfer_key(const uint8_t *txn_id, Qcledger__TransferKind kind,
                         uint8_t key[STORE_TRANSFER_KEY_SIZE])
{
    memcpy(key, txn_id, LEDGER_TXN_ID_SIZE);
    key[LEDGER_TXN_ID_SIZE] = (uint8_t)kind;
}

static void move_of(const ledger_transfer_t *t, ledger_index_move_t *mv)
{
    mv->time_ms = t->time_ms;
    memcpy(mv->txn_id, t->txn_id, LEDGER_TXN_ID_SIZE);
    mv->kind = (uint8_t)t->kind;
}

/* The entries of t's debit and credit accounts in transfers_by_account: put when missing is
 * NULL, else each absent one counted in *missing. */
static int store_move_entries(ledger_store_t *store, MDB_txn *txn, const ledger_transfer_t *t,
                              unsigned *missing)
{
    ledger_index_move_t mv;
    move_of(t, &mv);
    const char *accounts[2] = {t->debit, t->credit};
    MDB_dbi dbi = store->dbi[DBI_TRANSFERS_BY_ACCOUNT];
    for (int i = 0; i < 2; i++) {
        uint8_t key[LEDGER_INDEX_MOVE_KEY_MAX];
        MDB_val k = {.mv_size = ledger_index_move_key(accounts[i], &mv, key), .mv_data = key};
        MDB_val v = {.mv_size = 0, .mv_data = NULL};
        int rc = missing != NULL ? mdb_get(txn, dbi, &k, &v) : mdb_put(txn, dbi, &k, &v, 0);
        if (rc == MDB_NOTFOUND && missing != NULL)
            (*missing)++;
        else if (rc != 0)
            return store_err("move_index", rc);
    }
    return 0;
}

int ledger_store_transfer_add(ledger_store_t *store, MDB_txn *txn, const ledger_transfer_t *t)
{
    assert(store != NULL);
    assert(txn != NULL);
    assert(t != NULL);
    assert(t->amount > 0);
    uint8_t key[STORE_TRANSFER_KEY_SIZE];
    transfer_key(t->txn_id, t->kind, key);
    Qcledger__Transfer m = QCLEDGER__TRANSFER__INIT;
    m.txn_id = bin(t->txn_id, LEDGER_TXN_ID_SIZE);
    m.kind = t->kind;
    m.debit = (char *)t->debit;
    m.credit = (char *)t->credit;
    m.amount = t->amount;
    m.currency = t->currency;
    m.time_ms = t->time_ms;
    int rc = store_put_msg(store, txn, DBI_TRANSFERS, key, sizeof key, &m.base, MDB_NOOVERWRITE);
    /* The movements of both accounts, in this transaction (ledger_store_index.h). */
    return rc != 0 ? rc : store_move_entries(store, txn, t, NULL);
}

static int transfer_from_msg(const Qcledger__Transfer *m, ledger_transfer_t *t)
{
    memset(t, 0, sizeof *t);
    if (copy_txn(t->txn_id, NULL, m->txn_id) != 0 ||
        copy_str(t->debit, sizeof t->debit, m->debit) != 0 ||
        copy_str(t->credit, sizeof t->credit, m->credit) != 0)
        return QC_EDECODE;
    t->kind = m->kind;
    t->amount = m->amount;
    t->currency = m->currency;
    t->time_ms = m->time_ms;
    return 0;
}

int ledger_store_transfer_get(ledger_store_t *store, MDB_txn *txn,
                              const uint8_t txn_id[LEDGER_TXN_ID_SIZE], Qcledger__TransferKind kind,
                              ledger_transfer_t *out)
{
    assert(store != NULL);
    assert(txn != NULL);
    assert(txn_id != NULL);
    assert(out != NULL);
    uint8_t key[STORE_TRANSFER_KEY_SIZE];
    transfer_key(txn_id, kind, key);
    ProtobufCMessage *msg = NULL;
    int rc = store_get_msg(store, txn, DBI_TRANSFERS, key, sizeof key,
                           &qcledger__transfer__descriptor, &msg);
    if (rc != 0)
        return rc;
    rc = transfer_from_msg((Qcledger__Transfer *)msg, out);
    protobuf_c_message_free_unpacked(msg, NULL);
    return rc;
}

/* ------------------------------------------------------------ deadlines */

static void deadline_key(uint64_t deadline_ms, const uint8_t *txn_id,
                         uint8_t key[STORE_DEADLINE_KEY_SIZE])
{
    ops_be_put(key, deadline_ms, 8);
    memcpy(key + 8, txn_id, LEDGER_TXN_ID_SIZE);
}

int ledger_store_deadline_add(ledger_store_t *store, MDB_txn *txn, uint64_t deadline_ms,
                              const uint8_t txn_id[LEDGER_TXN_ID_SIZE])
{
    assert(store != NULL);
    assert(txn != NULL);
    assert(txn_id != NULL);
    uint8_t key[STORE_DEADLINE_KEY_SIZE];
    deadline_key(deadline_ms, txn_id, key);
    MDB_val k = {.mv_size = sizeof key, .mv_data = key};
    MDB_val v = {.mv_size = 0, .mv_data = NULL};
    int rc = mdb_put(txn, store->dbi[DBI_DEADLINES], &k, &v, MDB_NOOVERWRITE);
    return rc == 0 ? 0 : store_err("deadline_put", rc);
}

int ledger_store_deadline_del(ledger_store_t *store, MDB_txn *txn, uint64_t deadline_ms,
                              const uint8_t txn_id[LEDGER_TXN_ID_SIZE])
{
    assert(store != NULL);
    assert(txn != NULL);
    assert(txn_id != NULL);
    uint8_t key[STORE_DEADLINE_KEY_SIZE];
    deadline_key(deadline_ms, txn_id, key);
    MDB_val k = {.mv_size = sizeof key, .mv_data = key};
    int rc = mdb_del(txn, store->dbi[DBI_DEADLINES], &k, NULL);
    return rc == 0 ? 0 : store_err("deadline_del", rc);
}

int ledger_store_deadline_first(ledger_store_t *store, MDB_txn *txn, uint64_t *deadline_ms,
                                uint8_t txn_id[LEDGER_TXN_ID_SIZE])
{
    assert(store != NULL);
    assert(txn != NULL);
    assert(deadline_ms != NULL);
    assert(txn_id != NULL);
    MDB_cursor *cur = NULL;
    int rc = mdb_cursor_open(txn, store->dbi[DBI_DEADLINES], &cur);
    if (rc != 0)
        return store_err("cursor_open", rc);
    MDB_val k, v;
    rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    if (rc == 0) {
        if (k.mv_size != STORE_DEADLINE_KEY_SIZE) {
            rc = QC_EDECODE;
        } else {
            *deadline_ms = ops_be_get(k.mv_data, 8);
            memcpy(txn_id, (uint8_t *)k.mv_data + 8, LEDGER_TXN_ID_SIZE);
        }
    } else {
        rc = store_err("deadline_first", rc);
    }
    mdb_cursor_close(cur);
    return rc;
}

/* ------------------------------------------------------------ outbox and meta */

static int meta_get_u64(ledger_store_t *store, MDB_txn *txn, const char *name, uint64_t *v)
{
    MDB_val k = {.mv_size = strlen(name), .mv_data = (void *)name};
    MDB_val d;
    int rc = mdb_get(txn, store->dbi[DBI_META], &k, &d);
    if (rc != 0)
        return store_err("meta_get", rc);
    if (d.mv_size != 8)
        return QC_EDECODE;
    *v = ops_be_get(d.mv_data, 8);
    return 0;
}

static int meta_put_u64(ledger_store_t *store, MDB_txn *txn, const char *name, uint64_t v)
{
    uint8_t buf[8];
    ops_be_put(buf, v, 8);
    MDB_val k = {.mv_size = strlen(name), .mv_data = (void *)name};
    MDB_val d = {.mv_size = sizeof buf, .mv_data = buf};
    int rc = mdb_put(txn, store->dbi[DBI_META], &k, &d, 0);
    return rc == 0 ? 0 : store_err("meta_put", rc);
}

int ledger_store_bind_shard(ledger_store_t *store, uint32_t shard, uint32_t shard_count)
{
    assert(store != NULL);
    assert(shard < shard_count);
    MDB_txn *txn = NULL;
    int rc = ledger_store_txn_begin(store, NULL, true, &txn);
    if (rc != 0)
        return rc;
    uint64_t s = 0, n = 0;
    rc = meta_get_u64(store, txn, STORE_META_SHARD, &s);
    if (rc == 0)
        rc = meta_get_u64(store, txn, STORE_META_SHARD_COUNT, &n);
    if (rc == 0) {
        ledger_store_txn_abort(txn);
        if (s != shard || n != shard_count) {
            ops_logf(OPS_LOG_ERROR, "ledger.shard_mismatch",
                     "data directory belongs to shard %llu of %llu, not %u of %u",
                     (unsigned long long)s, (unsigned long long)n, shard, shard_count);
            return QC_ECONFIG;
        }
        return 0;
    }
    if (rc != QC_ENOTFOUND) {
        ledger_store_txn_abort(txn);
        return rc;
    }
    if ((rc = meta_put_u64(store, txn, STORE_META_SHARD, shard)) != 0 ||
        (rc = meta_put_u64(store, txn, STORE_META_SHARD_COUNT, shard_count)) != 0) {
        ledger_store_txn_abort(txn);
        return rc;
    }
    return ledger_store_txn_commit(txn);
}

int ledger_store_outbox_append(ledger_store_t *store, MDB_txn *txn, uint32_t shard,
                               const char *type, const uint8_t *txn_id, uint64_t time_ms,
                               const uint8_t *payload, size_t payload_len, uint64_t *seq)
{
    assert(store != NULL);
    assert(txn != NULL);
    assert(type != NULL);
    assert(strlen(type) <= LEDGER_EVENT_TYPE_MAX);
    uint64_t next = 1;
    int rc = ledger_store_outbox_last(store, txn, &next);
    if (rc != 0)
        return rc;
    next++;
    Qcledger__OutboxEvent ev = QCLEDGER__OUTBOX_EVENT__INIT;
    ev.seq = next;
    ev.shard = shard;
    ev.type = (char *)type;
    ev.txn_id = bin(txn_id, txn_id != NULL ? LEDGER_TXN_ID_SIZE : 0);
    ev.time_ms = time_ms;
    ev.payload = bin(payload, payload_len);
    uint8_t key[STORE_SEQ_KEY_SIZE];
    ops_be_put(key, next, 8);
    if ((rc = store_put_msg(store, txn, DBI_OUTBOX, key, sizeof key, &ev.base, MDB_APPEND)) != 0)
        return rc;
    if ((rc = meta_put_u64(store, txn, STORE_META_OUTBOX_NEXT, next + 1)) != 0)
        return rc;
    if (seq != NULL)
        *seq = next;
    return 0;
}

int ledger_store_outbox_depth(ledger_store_t *store, MDB_txn *txn, uint64_t *depth)
{
    assert(store != NULL);
    assert(txn != NULL);
    assert(depth != NULL);
    MDB_stat st;
    int rc = mdb_stat(txn, store->dbi[DBI_OUTBOX], &st);
    if (rc != 0)
        return store_err("stat", rc);
    *depth = st.ms_entries;
    return 0;
}

void ledger_store_outbox_read_free(Qcledger__OutboxReadReply *reply)
{
    if (reply == NULL || reply->events == NULL)
        return;
    for (size_t i = 0; i < reply->n_events; i++)
        protobuf_c_message_free_unpacked(&reply->events[i]->base, NULL);
    free(reply->events);
    reply->events = NULL;
    reply->n_events = 0;
}

int ledger_store_outbox_read(ledger_store_t *store, MDB_txn *txn, uint64_t after_seq, size_t max,
                             Qcledger__OutboxReadReply *reply)
{
    assert(store != NULL);
    assert(txn != NULL);
    assert(reply != NULL);
    qcledger__outbox_read_reply__init(reply);
    if (max == 0)
        return 0;
    reply->events = calloc(max, sizeof *reply->events);
    if (reply->events == NULL)
        return QC_ENOMEM;
    MDB_cursor *cur = NULL;
    int rc = mdb_cursor_open(txn, store->dbi[DBI_OUTBOX], &cur);
    if (rc != 0) {
        free(reply->events);
        reply->events = NULL;
        return store_err("cursor_open", rc);
    }
    uint8_t key[STORE_SEQ_KEY_SIZE];
    ops_be_put(key, after_seq + 1, 8);
    MDB_val k = {.mv_size = sizeof key, .mv_data = key}, v;
    int op = MDB_SET_RANGE;
    while (reply->n_events < max && (rc = mdb_cursor_get(cur, &k, &v, op)) == 0) {
        op = MDB_NEXT;
        size_t len = 0;
        if ((rc = store_check(store, DBI_OUTBOX, &k, &v, &len)) != 0)
            break;
        Qcledger__OutboxEvent *ev = qcledger__outbox_event__unpack(NULL, len, v.mv_data);
        if (ev == NULL) {
            rc = QC_EDECODE;
            break;
        }
        reply->events[reply->n_events++] = ev;
    }
    mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND)
        rc = 0;
    else if (rc > 0)
        rc = store_err("outbox_read", rc);
    if (rc != 0)
        ledger_store_outbox_read_free(reply);
    return rc;
}

int ledger_store_outbox_ack(ledger_store_t *store, MDB_txn *txn, uint64_t upto_seq)
{
    assert(store != NULL);
    assert(txn != NULL);
    MDB_cursor *cur = NULL;
    int rc = mdb_cursor_open(txn, store->dbi[DBI_OUTBOX], &cur);
    if (rc != 0)
        return store_err("cursor_open", rc);
    MDB_val k, v;
    while ((rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)) == 0) {
        if (k.mv_size != STORE_SEQ_KEY_SIZE || ops_be_get(k.mv_data, 8) > upto_seq)
            break;
        if ((rc = mdb_cursor_del(cur, 0)) != 0)
            break;
    }
    mdb_cursor_close(cur);
    if (rc == 0 || rc == MDB_NOTFOUND)
        return 0;
    return store_err("outbox_ack", rc);
}

#define STORE_META_OUTBOX_ACKED "outbox_acked:"

/* The meta key of consumer's cursor; false when the name does not fit. */
static bool outbox_cursor_key(const char *consumer, char *key, size_t cap)
{
    int n = snprintf(key, cap, STORE_META_OUTBOX_ACKED "%s", consumer);
    return n > 0 && (size_t)n < cap;
}

int ledger_store_outbox_acked(ledger_store_t *store, MDB_txn *txn, const char *consumer,
                              uint64_t *seq)
{
    assert(store != NULL);
    assert(consumer != NULL);
    assert(seq != NULL);
    char key[sizeof STORE_META_OUTBOX_ACKED + LEDGER_OUTBOX_CONSUMER_NAME_MAX];
    *seq = 0;
    if (!outbox_cursor_key(consumer, key, sizeof key))
        return QC_EDENIED;
    int rc = meta_get_u64(store, txn, key, seq);
    return rc == QC_ENOTFOUND ? 0 : rc;
}

int ledger_store_outbox_last(ledger_store_t *store, MDB_txn *txn, uint64_t *seq)
{
    assert(store != NULL);
    assert(seq != NULL);
    uint64_t next = 1;
    int rc = ledger_store_outbox_next(store, txn, &next);
    if (rc != 0)
        return rc;
    assert(next >= 1);
    *seq = next - 1;
    return 0;
}

int ledger_store_outbox_ack_by(ledger_store_t *store, MDB_txn *txn, const char *consumer,
                               uint64_t upto_seq, const char *const *consumers,
                               size_t consumer_count)
{
    assert(store != NULL);
    assert(txn != NULL);
    assert(consumer_count == 0 || consumers != NULL);
    if (consumer_count == 0)
        return ledger_store_outbox_ack(store, txn, upto_seq);
    bool listed = false;
    for (size_t i = 0; consumer != NULL && i < consumer_count; i++)
        listed = listed || strcmp(consumers[i], consumer) == 0;
    char key[sizeof STORE_META_OUTBOX_ACKED + LEDGER_OUTBOX_CONSUMER_NAME_MAX];
    if (!listed || !outbox_cursor_key(consumer, key, sizeof key))
        return QC_EDENIED;
    uint64_t cursor = 0;
    int rc = ledger_store_outbox_acked(store, txn, consumer, &cursor);
    if (rc != 0)
        return rc;
    /* A cursor only moves forward: a witness restored from an older copy acks what it holds,
     * which never takes back what it acknowledged before. */
    if (upto_seq > cursor && (rc = meta_put_u64(store, txn, key, upto_seq)) != 0)
        return rc;
    uint64_t all = UINT64_MAX;
    for (size_t i = 0; i < consumer_count; i++) {
        uint64_t c = 0;
        if ((rc = ledger_store_outbox_acked(store, txn, consumers[i], &c)) != 0)
            return rc;
        all = c < all ? c : all;
    }
    assert(all != UINT64_MAX);
    return all > 0 ? ledger_store_outbox_ack(store, txn, all) : 0;
}

/* ------------------------------------------------------------ iteration */

/* Walks database dbi, calling visit(arg, fn_arg, key, value) for each entry. */
typedef int(store_visit_fn)(void *fn, void *arg, const MDB_val *k, const MDB_val *v);

/* Visits the records of dbi in key order whose key is above after (after_len bytes; 0: from
 * the first record), each value's checksum checked, and stripped unless raw. */
static int store_walk_after(ledger_store_t *store, MDB_txn *txn, enum store_dbi dbi,
                            const uint8_t *after, size_t after_len, bool raw, store_visit_fn *visit,
                            void *fn, void *arg)
{
    MDB_cursor *cur = NULL;
    int rc = mdb_cursor_open(txn, store->dbi[dbi], &cur);
    if (rc != 0)
        return store_err("cursor_open", rc);
    MDB_val k = {.mv_size = after_len, .mv_data = (void *)after}, v;
    int op = after_len > 0 ? MDB_SET_RANGE : MDB_FIRST;
    while ((rc = mdb_cursor_get(cur, &k, &v, op)) == 0) {
        op = MDB_NEXT;
        /* MDB_SET_RANGE lands on the key itself when it exists: that one was visited. */
        if (after_len > 0 && k.mv_size == after_len && memcmp(k.mv_data, after, after_len) == 0)
            continue;
        /* Every record read is checked, the raw walk (snapshots) included: a corrupt record
         * is never handed on, not even to another replica. */
        size_t len = v.mv_size;
        if (store_summed(dbi) && (rc = store_check(store, dbi, &k, &v, &len)) != 0)
            break;
        MDB_val body = {.mv_size = raw ? v.mv_size : len, .mv_data = v.mv_data};
        if ((rc = visit(fn, arg, &k, &body)) != 0)
            break;
    }
    mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc > 0)
        return store_err("walk", rc);
    return rc;
}

/* Walks dbi with each value's checksum checked and stripped. */
static int store_walk(ledger_store_t *store, MDB_txn *txn, enum store_dbi dbi,
                      store_visit_fn *visit, void *fn, void *arg)
{
    return store_walk_after(store, txn, dbi, NULL, 0, false, visit, fn, arg);
}

static int visit_account(void *fn, void *arg, const MDB_val *k, const MDB_val *v)
{
    (void)k;
    Qcledger__Account *m = qcledger__account__unpack(NULL, v->mv_size, v->mv_data);
    if (m == NULL)
        return QC_EDECODE;
    ledger_account_t a;
    int rc = ledger_store_account_from_msg(m, &a);
    qcledger__account__free_unpacked(m, NULL);
    return rc != 0 ? rc : ((ledger_store_account_fn *)fn)(arg, &a);
}

static int visit_device(void *fn, void *arg, const MDB_val *k, const MDB_val *v)
{
    (void)k;
    Qcledger__Device *m = qcledger__device__unpack(NULL, v->mv_size, v->mv_data);
    if (m == NULL)
        return QC_EDECODE;
    ledger_device_t *d = malloc(sizeof *d);
    if (d == NULL) {
        qcledger__device__free_unpacked(m, NULL);
        return QC_ENOMEM;
    }
    int rc = ledger_store_device_from_msg(m, d);
    qcledger__device__free_unpacked(m, NULL);
    if (rc == 0)
        rc = ((ledger_store_device_fn *)fn)(arg, d);
    free(d);
    return rc;
}

static int visit_load(void *fn, void *arg, const MDB_val *k, const MDB_val *v)
{
    (void)k;
    Qcledger__Load *m = qcledger__load__unpack(NULL, v->mv_size, v->mv_data);
    if (m == NULL)
        return QC_EDECODE;
    ledger_load_t *l = malloc(sizeof *l);
    if (l == NULL) {
        qcledger__load__free_unpacked(m, NULL);
        return QC_ENOMEM;
    }
    int rc = ledger_store_load_from_msg(m, l);
    qcledger__load__free_unpacked(m, NULL);
    if (rc == 0)
        rc = ((ledger_store_load_fn *)fn)(arg, l);
    free(l);
    return rc;
}

static int visit_transfer(void *fn, void *arg, const MDB_val *k, const MDB_val *v)
{
    (void)k;
    Qcledger__Transfer *m = qcledger__transfer__unpack(NULL, v->mv_size, v->mv_data);
    if (m == NULL)
        return QC_EDECODE;
    ledger_transfer_t t;
    int rc = transfer_from_msg(m, &t);
    qcledger__transfer__free_unpacked(m, NULL);
    return rc != 0 ? rc : ((ledger_store_transfer_fn *)fn)(arg, &t);
}

static int visit_deadline(void *fn, void *arg, const MDB_val *k, const MDB_val *v)
{
    (void)v;
    if (k->mv_size != STORE_DEADLINE_KEY_SIZE)
        return QC_EDECODE;
    return ((ledger_store_deadline_fn *)fn)(arg, ops_be_get(k->mv_data, 8),
                                            (const uint8_t *)k->mv_data + 8);
}

/* Function pointers travel as void * through store_walk(); POSIX guarantees the round trip. */
int ledger_store_each_account(ledger_store_t *store, MDB_txn *txn, ledger_store_account_fn *fn,
                              void *arg)
{
    return store_walk(store, txn, DBI_ACCOUNTS, visit_account, (void *)fn, arg);
}

int ledger_store_each_device(ledger_store_t *store, MDB_txn *txn, ledger_store_device_fn *fn,
                             void *arg)
{
    return store_walk(store, txn, DBI_DEVICES, visit_device, (void *)fn, arg);
}

int ledger_store_each_load(ledger_store_t *store, MDB_txn *txn, ledger_store_load_fn *fn, void *arg)
{
    return store_walk(store, txn, DBI_LOADS, visit_load, (void *)fn, arg);
}

int ledger_store_each_load_after(ledger_store_t *store, MDB_txn *txn, const uint8_t *after_txn,
                                 ledger_store_load_fn *fn, void *arg)
{
    assert(store != NULL);
    assert(fn != NULL);
    return store_walk_after(store, txn, DBI_LOADS, after_txn,
                            after_txn != NULL ? LEDGER_TXN_ID_SIZE : 0, false, visit_load,
                            (void *)fn, arg);
}

typedef struct store_move_visit {
    ledger_store_t *store;
    MDB_txn *txn;
    ledger_store_transfer_fn *fn;
    void *arg;
} store_move_visit_t;

/* An entry of an account's movements: its transfer, read and handed on; an entry whose
 * transfer is missing is skipped (the scrub names it). */
static int store_move_visit(void *arg, const ledger_index_move_t *mv)
{
    store_move_visit_t *w = arg;
    ledger_transfer_t t;
    int rc = ledger_store_transfer_get(w->store, w->txn, mv->txn_id,
                                       (Qcledger__TransferKind)mv->kind, &t);
    if (rc == QC_ENOTFOUND)
        return 0;
    return rc != 0 ? rc : w->fn(w->arg, &t);
}

int ledger_store_each_move(ledger_store_t *store, MDB_txn *txn, const char *account,
                           uint64_t since_ms, const ledger_index_move_t *after,
                           ledger_store_transfer_fn *fn, void *arg)
{
    assert(store != NULL);
    assert(txn != NULL);
    assert(account != NULL);
    assert(fn != NULL);
    if (account[0] == '\0' || strlen(account) > LEDGER_ID_MAX)
        return 0; /* no account has such an id: it has no movements */
    store_move_visit_t w = {.store = store, .txn = txn, .fn = fn, .arg = arg};
    return ledger_index_move_walk(txn, store->dbi[DBI_TRANSFERS_BY_ACCOUNT], account, since_ms,
                                  after, store_move_visit, &w);
}

int ledger_store_each_transfer(ledger_store_t *store, MDB_txn *txn, ledger_store_transfer_fn *fn,
                               void *arg)
{
    return store_walk(store, txn, DBI_TRANSFERS, visit_transfer, (void *)fn, arg);
}

int ledger_store_each_deadline(ledger_store_t *store, MDB_txn *txn, ledger_store_deadline_fn *fn,
                               void *arg)
{
    return store_walk(store, txn, DBI_DEADLINES, visit_deadline, (void *)fn, arg);
}

/* ------------------------------------------------------------ replication */

int ledger_store_applied_get(ledger_store_t *store, MDB_txn *txn, uint64_t *index,
                             uint64_t *time_ms)
{
    assert(store != NULL);
    assert(txn != NULL);
    assert(index != NULL);
    assert(time_ms != NULL);
    *index = 0;
    *time_ms = 0;
    int rc = meta_get_u64(store, txn, STORE_META_APPLIED_INDEX, index);
    if (rc == 0)
        rc = meta_get_u64(store, txn, STORE_META_APPLIED_TIME, time_ms);
    return rc == QC_ENOTFOUND ? 0 : rc;
}

int ledger_store_applied_put(ledger_store_t *store, MDB_txn *txn, uint64_t index, uint64_t time_ms)
{
    assert(store != NULL);
    assert(txn != NULL);
    assert(index > 0);
    int rc = meta_put_u64(store, txn, STORE_META_APPLIED_INDEX, index);
    return rc != 0 ? rc : meta_put_u64(store, txn, STORE_META_APPLIED_TIME, time_ms);
}

typedef struct store_record_walk {
    unsigned db;
    ledger_store_record_fn *fn;
    void *arg;
} store_record_walk_t;

static int visit_record(void *unused, void *arg, const MDB_val *k, const MDB_val *v)
{
    (void)unused;
    const store_record_walk_t *w = arg;
    return w->fn(w->arg, w->db, k->mv_data, k->mv_size, v->mv_data, v->mv_size);
}

int ledger_store_each_record(ledger_store_t *store, MDB_txn *txn, ledger_store_record_fn *fn,
                             void *arg)
{
    assert(store != NULL);
    assert(txn != NULL);
    assert(fn != NULL);
    store_record_walk_t w = {.fn = fn, .arg = arg};
    /* The replicated databases only: the indexes are derived from loads, and the local
     * database is this copy's own (a replica's digest covers what every replica must agree
     * on, whichever release made its indexes). */
    for (w.db = 0; w.db < LEDGER_STORE_DB_COUNT; w.db++) {
        int rc = store_walk_after(store, txn, (enum store_dbi)w.db, NULL, 0, true, visit_record,
                                  NULL, &w);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int ledger_store_wipe(ledger_store_t *store, MDB_txn *txn)
{
    assert(store != NULL);
    assert(txn != NULL);
    /* Every database but the local one: the index version stays true, since whatever loads
     * are appended next bring their entries (ledger_store_record_append()). */
    for (int db = 0; db < STORE_DBI_COUNT; db++) {
        if (db == DBI_LOCAL)
            continue;
        int rc = mdb_drop(txn, store->dbi[db], 0);
        if (rc != 0)
            return store_err("drop", rc);
    }
    return 0;
}

int ledger_store_record_append(ledger_store_t *store, MDB_txn *txn, unsigned db, const uint8_t *key,
                               size_t key_len, const uint8_t *val, size_t val_len)
{
    assert(store != NULL);
    assert(txn != NULL);
    assert(key != NULL || key_len == 0);
    if (db >= LEDGER_STORE_DB_COUNT || key_len == 0 || key_len > LEDGER_STORE_KEY_MAX)
        return QC_EDECODE;
    MDB_val k = {.mv_size = key_len, .mv_data = (void *)key};
    MDB_val v = {.mv_size = val_len, .mv_data = (void *)val};
    int rc = mdb_put(txn, store->dbi[db], &k, &v, MDB_APPEND);
    if (rc == MDB_KEYEXIST)
        return QC_EDECODE; /* out of key order */
    if (rc != 0)
        return store_err("record_append", rc);
    /* A load or a transfer brings its index entries, in the same transaction (a snapshot
     * restore). */
    uint64_t bad = 0;
    if (db == DBI_LOADS || db == DBI_TRANSFERS)
        return store_index_record(store, txn, (enum store_dbi)db, &k, &v, false, &bad);
    return 0;
}

/* ------------------------------------------------------------ scrub */

/* One line and one count for an index entry that disagrees with the loads. */
static void scrub_index_bad(ledger_store_t *store, ledger_store_scrub_t *s, enum store_dbi dbi,
                            const MDB_val *k, const char *why)
{
    char hex[2 * STORE_KEY_HEX_MAX + 1];
    size_t shown = k->mv_size < STORE_KEY_HEX_MAX ? k->mv_size : STORE_KEY_HEX_MAX;
    ops_hex(k->mv_data, shown, hex);
    ops_log(OPS_LOG_ERROR, "ledger.index_mismatch", "db", store_dbi_names[dbi], "key", hex, "error",
            why, NULL);
    ops_counter_add(store->m_index_bad, 1);
    s->index_bad++;
}

/* A load (key, value without its checksum) has its three index entries. */
static int scrub_load_entries(ledger_store_t *store, MDB_txn *txn, ledger_store_scrub_t *s,
                              const MDB_val *k, const MDB_val *body)
{
    Qcledger__Load *m = qcledger__load__unpack(NULL, body->mv_size, body->mv_data);
    if (m == NULL || k->mv_size != LEDGER_TXN_ID_SIZE || m->device_id == NULL ||
        m->account_id == NULL) {
        qcledger__load__free_unpacked(m, NULL);
        scrub_index_bad(store, s, DBI_LOADS, k, "the load does not parse: it has no index entries");
        return 0;
    }
    ledger_index_load_t l = store_index_of_msg(k->mv_data, m);
    unsigned missing = 0;
    int rc = ledger_index_missing(txn, &store->dbi[DBI_LOADS_BY_TIME], &l, &missing);
    qcledger__load__free_unpacked(m, NULL);
    s->index_checked++;
    if (rc == 0 && missing > 0)
        scrub_index_bad(store, s, DBI_LOADS, k,
                        "the load lacks index entries (time, device or "
                        "account)");
    return rc;
}

/* An index entry names a load that exists and has the entry's device or account and time. */
static int scrub_index_entry(ledger_store_t *store, MDB_txn *txn, ledger_store_scrub_t *s,
                             enum store_dbi dbi, const MDB_val *k)
{
    ledger_index_kind_t kind = (ledger_index_kind_t)(dbi - DBI_LOADS_BY_TIME);
    char id[PROTO_ACCOUNT_ID_MAX + 2];
    uint64_t created = 0;
    uint8_t txn_id[LEDGER_TXN_ID_SIZE];
    s->index_checked++;
    if (ledger_index_parse(kind, k->mv_data, k->mv_size, id, &created, txn_id) != 0) {
        scrub_index_bad(store, s, dbi, k, "the entry's key is not an index key");
        return 0;
    }
    Qcledger__Load *m = NULL;
    int rc = store_load_old(store, txn, txn_id, &m);
    if (rc == QC_ECORRUPT || rc == QC_EDECODE)
        return 0; /* the load itself is counted by its own check */
    if (rc != 0)
        return rc;
    const char *why = NULL;
    if (m == NULL)
        why = "the entry names no load (dangling)";
    else if (m->created_ms != created)
        why = "the entry's time is not the load's";
    else if ((kind == LEDGER_INDEX_DEVICE && strcmp(id, m->device_id) != 0) ||
             (kind == LEDGER_INDEX_ACCOUNT && strcmp(id, m->account_id) != 0))
        why = "the entry's device or account is not the load's";
    qcledger__load__free_unpacked(m, NULL);
    if (why != NULL)
        scrub_index_bad(store, s, dbi, k, why);
    return 0;
}

/* A transfer (key, value without its checksum) has the entries of its two accounts. */
static int scrub_transfer_entries(ledger_store_t *store, MDB_txn *txn, ledger_store_scrub_t *s,
                                  const MDB_val *k, const MDB_val *body)
{
    Qcledger__Transfer *m = qcledger__transfer__unpack(NULL, body->mv_size, body->mv_data);
    ledger_transfer_t t;
    bool parsed =
        m != NULL && transfer_from_msg(m, &t) == 0 && t.debit[0] != '\0' && t.credit[0] != '\0';
    qcledger__transfer__free_unpacked(m, NULL);
    s->index_checked++;
    if (!parsed) {
        scrub_index_bad(store, s, DBI_TRANSFERS, k,
                        "the transfer does not parse: it has no index entries");
        return 0;
    }
    unsigned missing = 0;
    int rc = store_move_entries(store, txn, &t, &missing);
    if (rc == 0 && missing > 0)
        scrub_index_bad(store, s, DBI_TRANSFERS, k,
                        "the transfer lacks the movement entry of its debit or credit account");
    return rc;
}

/* A movement entry names a transfer that exists, moves that account and has that time. */
static int scrub_move_entry(ledger_store_t *store, MDB_txn *txn, ledger_store_scrub_t *s,
                            const MDB_val *k)
{
    char account[PROTO_ACCOUNT_ID_MAX + 2];
    ledger_index_move_t mv;
    s->index_checked++;
    if (ledger_index_move_parse(k->mv_data, k->mv_size, account, &mv) != 0) {
        scrub_index_bad(store, s, DBI_TRANSFERS_BY_ACCOUNT, k,
                        "the entry's key is not an index key");
        return 0;
    }
    ledger_transfer_t t;
    int rc = ledger_store_transfer_get(store, txn, mv.txn_id, (Qcledger__TransferKind)mv.kind, &t);
    if (rc == QC_ECORRUPT || rc == QC_EDECODE)
        return 0; /* the transfer itself is counted by its own check */
    const char *why = NULL;
    if (rc == QC_ENOTFOUND)
        why = "the entry names no transfer (dangling)";
    else if (rc != 0)
        return rc;
    else if (t.time_ms != mv.time_ms)
        why = "the entry's time is not the transfer's";
    else if (strcmp(t.debit, account) != 0 && strcmp(t.credit, account) != 0)
        why = "the transfer does not move the entry's account";
    if (why != NULL)
        scrub_index_bad(store, s, DBI_TRANSFERS_BY_ACCOUNT, k, why);
    return 0;
}

/* Checks the records of db from s's position on, at most max - *done of them; *end true when
 * db has no more. */
static int scrub_db(ledger_store_t *store, MDB_txn *txn, ledger_store_scrub_t *s, size_t max,
                    size_t *done, bool *end)
{
    MDB_cursor *cur = NULL;
    int rc = mdb_cursor_open(txn, store->dbi[s->db], &cur);
    if (rc != 0)
        return store_err("cursor_open", rc);
    MDB_val k = {.mv_size = s->key_len, .mv_data = s->key}, v;
    int qrc = 0;
    rc = mdb_cursor_get(cur, &k, &v, s->key_len > 0 ? MDB_SET_RANGE : MDB_FIRST);
    if (rc == 0 && s->key_len > 0 && k.mv_size == s->key_len &&
        memcmp(k.mv_data, s->key, s->key_len) == 0)
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT); /* checked by the last step */
    while (rc == 0 && *done < max) {
        enum store_dbi dbi = (enum store_dbi)s->db;
        if (dbi == DBI_TRANSFERS_BY_ACCOUNT) {
            qrc = scrub_move_entry(store, txn, s, &k);
        } else if (store_index_db(dbi)) {
            qrc = scrub_index_entry(store, txn, s, dbi, &k);
        } else {
            MDB_val body = {.mv_size = 0, .mv_data = v.mv_data};
            if (store_check(store, dbi, &k, &v, &body.mv_size) != 0)
                s->corrupt++;
            else if (dbi == DBI_LOADS)
                qrc = scrub_load_entries(store, txn, s, &k, &body);
            else if (dbi == DBI_TRANSFERS)
                qrc = scrub_transfer_entries(store, txn, s, &k, &body);
            s->checked++;
        }
        if (qrc != 0)
            break;
        (*done)++;
        assert(k.mv_size <= sizeof s->key);
        memcpy(s->key, k.mv_data, k.mv_size);
        s->key_len = k.mv_size;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    if (qrc != 0)
        return qrc; /* an index check could not read (QC_E*) */
    *end = rc == MDB_NOTFOUND;
    if (rc == 0 || rc == MDB_NOTFOUND)
        return 0;
    return store_err("scrub", rc);
}

int ledger_store_scrub_step(ledger_store_t *store, ledger_store_scrub_t *s, size_t max,
                            bool *pass_done)
{
    assert(store != NULL);
    assert(s != NULL);
    assert(s->db < STORE_DBI_COUNT);
    *pass_done = false;
    MDB_txn *txn = NULL;
    int rc = ledger_store_txn_begin(store, NULL, false, &txn);
    if (rc != 0)
        return rc;
    size_t done = 0;
    /* At most one lap of the databases per step, however few records there are. */
    for (int moves = 0; rc == 0 && done < max && moves <= STORE_DBI_COUNT; moves++) {
        bool end = true;
        if (store_summed((enum store_dbi)s->db) || store_index_db((enum store_dbi)s->db))
            rc = scrub_db(store, txn, s, max, &done, &end);
        if (rc != 0 || !end)
            break;
        s->key_len = 0;
        if (++s->db == STORE_DBI_COUNT) {
            s->db = 0;
            s->passes++;
            *pass_done = true;
            break;
        }
    }
    ledger_store_txn_abort(txn);
    return rc;
}

/* ------------------------------------------------------------ format upgrade */

/* Appends the checksum to every value of one summed database that lacks it, in txn. */
static int upgrade_db(ledger_store_t *store, MDB_txn *txn, enum store_dbi dbi, uint64_t *count)
{
    MDB_cursor *cur = NULL;
    int rc = mdb_cursor_open(txn, store->dbi[dbi], &cur);
    if (rc != 0)
        return store_err("cursor_open", rc);
    MDB_val k, v;
    int op = MDB_FIRST;
    while ((rc = mdb_cursor_get(cur, &k, &v, op)) == 0) {
        op = MDB_NEXT;
        /* A record that already ends in its own checksum keeps it (a store written by this
         * release's store API, e.g. a test's, that has no identity yet): the upgrade can run
         * twice. A record without one passes that test by chance once in 2^32. */
        size_t n = v.mv_size >= STORE_SUM_SIZE ? v.mv_size - STORE_SUM_SIZE : 0;
        if (v.mv_size >= STORE_SUM_SIZE &&
            store_sum(&k, v.mv_data, n) ==
                (uint32_t)ops_be_get((const uint8_t *)v.mv_data + n, STORE_SUM_SIZE))
            continue;
        /* The key and value point into the page the put rewrites (a larger value is a delete
         * and an insert): both are copied first. */
        assert(k.mv_size <= LEDGER_STORE_KEY_MAX);
        uint8_t key[LEDGER_STORE_KEY_MAX];
        memcpy(key, k.mv_data, k.mv_size);
        MDB_val kc = {.mv_size = k.mv_size, .mv_data = key};
        uint8_t *buf = malloc(v.mv_size + STORE_SUM_SIZE);
        if (buf == NULL) {
            rc = QC_ENOMEM;
            break;
        }
        memcpy(buf, v.mv_data, v.mv_size);
        ops_be_put(buf + v.mv_size, store_sum(&kc, buf, v.mv_size), STORE_SUM_SIZE);
        MDB_val nv = {.mv_size = v.mv_size + STORE_SUM_SIZE, .mv_data = buf};
        rc = mdb_cursor_put(cur, &kc, &nv, MDB_CURRENT);
        free(buf);
        if (rc != 0)
            break;
        (*count)++;
    }
    mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND)
        return 0;
    return rc > 0 ? store_err("upgrade", rc) : rc;
}

int ledger_store_add_checksums(const char *dir, uint64_t map_size, uint64_t *count)
{
    assert(dir != NULL);
    assert(count != NULL);
    *count = 0;
    ledger_store_t *store = NULL;
    int rc = ledger_store_open(dir, map_size, &store);
    if (rc != 0)
        return rc;
    MDB_txn *txn = NULL;
    if ((rc = ledger_store_txn_begin(store, NULL, true, &txn)) == 0) {
        for (int db = 0; rc == 0 && db < STORE_DBI_COUNT; db++)
            if (store_summed((enum store_dbi)db))
                rc = upgrade_db(store, txn, (enum store_dbi)db, count);
        if (rc == 0)
            rc = ledger_store_txn_commit(txn);
        else
            ledger_store_txn_abort(txn);
    }
    ledger_store_close(&store);
    return rc;
}

/* ------------------------------------------------------------ hygiene */

bool ledger_store_nearly_full(ledger_store_t *store, uint64_t *used_bytes, uint64_t *map_bytes)
{
    assert(store != NULL);
    MDB_envinfo info;
    MDB_stat st;
    if (mdb_env_info(store->env, &info) != 0 || mdb_env_stat(store->env, &st) != 0)
        return true; /* cannot tell: be safe */
    uint64_t used = ((uint64_t)info.me_last_pgno + 1) * st.ms_psize;
    uint64_t map = info.me_mapsize;
    if (used_bytes != NULL)
        *used_bytes = used;
    if (map_bytes != NULL)
        *map_bytes = map;
    return used * 100 > map * LEDGER_MAP_USED_PCT_MAX;
}

int ledger_store_reader_check(ledger_store_t *store, int *dead)
{
    assert(store != NULL);
    int n = 0;
    int rc = mdb_reader_check(store->env, &n);
    if (rc != 0)
        return store_err("reader_check", rc);
    if (n > 0)
        ops_logf(OPS_LOG_WARN, "ledger.stale_readers", "cleared %d reader slots", n);
    if (dead != NULL)
        *dead = n;
    return 0;
}

/* ------------------------------------------------------------ names */

const char *ledger_transfer_kind_name(Qcledger__TransferKind kind)
{
    switch (kind) {
    case QCLEDGER__TRANSFER_KIND__TRANSFER_DEPOSIT:
        return "deposit";
    case QCLEDGER__TRANSFER_KIND__TRANSFER_RESERVE:
        return "reserve";
    case QCLEDGER__TRANSFER_KIND__TRANSFER_CONFIRM:
        return "confirm";
    case QCLEDGER__TRANSFER_KIND__TRANSFER_COMPENSATE:
        return "compensate";
    case QCLEDGER__TRANSFER_KIND__TRANSFER_LATE_CONFIRM:
        return "late_confirm";
    default:
        return "none";
    }
}

/* ------------------------------------------------------------ backup and restore */

int ledger_store_copy(ledger_store_t *store, const char *dir)
{
    assert(store != NULL);
    assert(dir != NULL);
    /* mdb_env_copy2 reads in one read txn of its own: writers go on, and the copy is the
     * state of one commit. Compaction leaves the free pages out. */
    int rc = mdb_env_copy2(store->env, dir, MDB_CP_COMPACT);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "ledger.copy_failed", "dir", dir, "error", mdb_strerror(rc), NULL);
        return rc == ENOSPC ? QC_ENOSPACE : QC_EIO;
    }
    return 0;
}

int ledger_store_outbox_next(ledger_store_t *store, MDB_txn *txn, uint64_t *next)
{
    assert(store != NULL);
    assert(next != NULL);
    *next = 1;
    int rc = meta_get_u64(store, txn, STORE_META_OUTBOX_NEXT, next);
    if (rc == QC_ENOTFOUND) {
        *next = 1;
        return 0;
    }
    return rc;
}

int ledger_store_applied_clear(ledger_store_t *store, MDB_txn *txn)
{
    assert(store != NULL);
    assert(txn != NULL);
    const char *names[] = {STORE_META_APPLIED_INDEX, STORE_META_APPLIED_TIME};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        MDB_val k = {.mv_size = strlen(names[i]), .mv_data = (void *)names[i]};
        int rc = mdb_del(txn, store->dbi[DBI_META], &k, NULL);
        if (rc != 0 && rc != MDB_NOTFOUND)
            return store_err("meta_del", rc);
    }
    return 0;
}

MDB_env *ledger_store_env(ledger_store_t *store)
{
    assert(store != NULL);
    assert(store->env != NULL);
    return store->env;
}
