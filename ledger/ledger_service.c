/* ledger_service.c - the ledger's single-threaded RPC loop with group commit.
 *
 * A load, as this loop runs it (docs/DESIGN.md has the whole sequence):
 *   reserve: verify the request, debit, commit (durable) --> ask the signer for the allow
 *            (ledger_signer, asynchronous: the loop goes on serving) --> the signed allow is
 *            stored in a later group commit --> the stored allow is the reply.
 *   settle:  verify the report, settle, commit --> ask the signer for the outcome --> reply.
 * The writer never waits on the signer, and no allow is sent before it is stored.
 *
 * Invariants of the loop, in both modes (one process, or a replica group; asserted where
 * they must hold):
 *   1. A batch holds at most batch_max requests (at most LEDGER_BATCH_MAX), one per slot, in
 *      slots [0, n), each slot empty when a request is put in it (gather(), take_held()).
 *   2. Admission decides each slot once: either it runs (its method set, code 0) or it is
 *      answered already (no method, a QC_E* code) (admit(), serve_batch(), replica_serve()).
 *   3. Every admitted write runs exactly once: in the process's one transaction of the batch
 *      (and when that commit fails, every write slot is refused with the failure and asks for
 *      no signature), or in a replica's admission before it joins the entry proposed
 *      (group_commit(), replica_writes()).
 *   4. A slot asks the signer only after its commit (or its entry applied), with code 0 and a
 *      body to sign; its request then moves to the signing stage (ask_signer()).
 *   5. Every request gets exactly one reply, from finish_slot(): at the end of its batch, once
 *      its entry applied, or from the signing stage once the bank has signed. A finished slot
 *      holds no request, no reply body and no body to sign.
 *   6. A load record replied with is a record the saga keeps: a valid state, a positive
 *      amount, its device, account and request, the txn id it was asked for (assert_load();
 *      ledger_store_load_put() asserts the same before it stores one). */
#include "ledger_service.h"

#include <assert.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>

#include <raft.h>
#include <zmq.h>

#include "ledger.pb-c.h"
#include "ledger_backup.h"
#include "ledger_fsm.h"
#include "ledger_membership.h"
#include "ledger_outbox.h"
#include "ledger_query.h"
#include "ledger_replay.h"
#include "ledger_repair.h"
#include "ledger_replica.h"
#include "ledger_saga.h"
#include "ledger_scrub.h"
#include "ledger_signer.h"
#include "ledger_store.h"
#include "ops_fault.h"
#include "ops_log.h"
#include "ops_metrics.h"
#include "ops_signal.h"
#include "ops_storage.h"
#include "ops_time.h"
#include "proto_cert.h"
#include "proto_trust_watch.h"
#include "proto_rpc.h"
#include "proto_shard.h"
#include "qc_error.h"

#define SVC_NAME "ledger"
#define SVC_KEYS_MAX PROTO_RPC_ALLOW_MAX
#define SVC_PATH_MAX 1024
#define SVC_ZAP_ALLOW_FILE "rpc-allow.keys" /* union of allow_keys and admin_keys, in data_dir */
#define SVC_BATCH_BUCKETS 6
#define SVC_METRIC_NAME_MAX 128
#define SVC_GAUGES_PERIOD_MS 1000 /* replica mode: outbox gauges refreshed at most this often */

/* Which keys may call a method. */
typedef enum svc_role {
    ROLE_SERVICE, /* allow_keys */
    ROLE_ADMIN,   /* admin_keys */
    ROLE_ANY,     /* either */
    ROLE_REPLICA, /* the shard's own key (curve_key): another replica (ledger_repair.h) */
} svc_role_t;

typedef enum svc_kind {
    KIND_WRITE,
    KIND_READ,
    KIND_CHANGE, /* a membership change of the replica group (leader only) */
} svc_kind_t;

typedef struct svc_slot svc_slot_t;
typedef struct ledger_service ledger_service_t;
typedef void(svc_write_fn)(ledger_service_t *svc, MDB_txn *txn, uint64_t now, svc_slot_t *slot);
typedef void(svc_read_fn)(ledger_service_t *svc, MDB_txn *txn, svc_slot_t *slot);
/* Replica mode: adds the verified write of slot to the entry being built (ledger_fsm.h). */
typedef int(svc_propose_fn)(ledger_service_t *svc, svc_slot_t *slot, ledger_fsm_batch_t *b,
                            uint64_t now);

/* A method. In replica mode a write runs three times: write() verifies it against the
 * leader's applied state in a transaction that is aborted (admission), propose() adds it to
 * the entry, and after() builds its reply from the state once the entry applied. */
typedef struct svc_method {
    const char *name;
    svc_role_t role;
    svc_kind_t kind;
    svc_write_fn *write;
    svc_read_fn *read;
    svc_propose_fn *propose;
    svc_read_fn *after;
    bool everywhere; /* answered by every replica, leader or not */
} svc_method_t;

/* One request of the batch and its reply. */
struct svc_slot {
    proto_rpc_request_t *req;
    const svc_method_t *method; /* NULL: answered already (code set) */
    int code;
    char why[LEDGER_WHY_MAX];
    uint8_t *body;
    size_t body_len;
    /* After the commit, the bank signs sign_body (SIGN_NONE: nothing to sign) for txn_id; the
     * reply waits for it in the signing stage. */
    Quancun__SignKind sign_kind;
    uint8_t txn_id[LEDGER_TXN_ID_SIZE];
    uint8_t *sign_body;
    size_t sign_body_len;
    /* Replica mode. */
    int op;                      /* the write's op index in its proposed entry, -1: none */
    int code_after;              /* reply this refusal once the op applied (a bad report) */
    char key[LEDGER_ID_MAX + 1]; /* the account or device the reply reads after apply */
    bool not_leader;             /* reply QC_ENOTLEADER naming leader */
    char leader[LEDGER_REPLICA_ADDRESS_MAX];
};

/* A Raft entry proposed by this leader, and the requests that wait for it to apply. */
typedef struct svc_proposal_allow {
    int handle; /* ledger_signer's */
    int op;
    uint8_t txn_id[LEDGER_TXN_ID_SIZE];
} svc_proposal_allow_t;

typedef struct svc_proposal {
    struct raft_apply req; /* req.data = this */
    ledger_service_t *svc;
    size_t n_slots;
    svc_slot_t *slots;
    size_t n_allows;
    svc_proposal_allow_t *allows;
    bool expire;
    uint64_t t0_ns;
} svc_proposal_t;

typedef struct svc_barrier {
    struct raft_barrier req;
    ledger_service_t *svc;
    uint64_t term;
} svc_barrier_t;

/* The membership change in flight (one at a time, as libraft allows), ticked by
 * replica_housekeeping() until it ends; then its waiter is answered. */
typedef struct svc_change {
    ledger_membership_t *m;
    proto_rpc_request_t *waiter; /* the last request for this change: answered at its end */
    bool add;
} svc_change_t;

struct ledger_service {
    ledger_store_t *store;
    ledger_saga_t *saga;
    ledger_scrub_t *scrub; /* every record's checksum, at scrub_per_second */
    EVP_PKEY *allow_key;
    proto_trust_watch_t *trust; /* CAs and CRL for enrollment, re-read when the CRL changes */
    void *zctx;
    proto_rpc_server_t *srv;
    proto_curve_keylist_t service_keys;
    proto_curve_keylist_t admin_keys;
    uint32_t shard, shard_count;
    size_t batch_max;
    uint32_t batch_wait_us;
    svc_slot_t *slots;
    ledger_load_t *load;     /* scratch for one reply */
    ledger_signer_t *signer; /* the signing stage: allows and outcomes, after the commit */
    ledger_query_t *query;   /* the operator queries' thread */
    ledger_signer_allow_t *signed_allows; /* LEDGER_SIGNER_PENDING_MAX, one group commit's */
    uint64_t deadline_ms;                 /* a load's report deadline after its reserve */
    uint64_t next_deadline_ms;            /* 0 = none known; the earliest RESERVED deadline */
    uint64_t next_reader_check_ms;
    atomic_int last_commit_rc;
    ops_storage_t *storage; /* full disk, full map, growth: one state, one line per change */
    uint64_t next_storage_poll_ms;
    /* Replica mode (replica != NULL): the fsm owns the LMDB (store above is its), the node
     * runs libraft; see "Replica mode" below. */
    ledger_fsm_t *fsm;
    ledger_replica_t *replica;
    uint64_t ready_term;  /* a barrier of this term applied: the leader's state is current */
    bool barrier_pending; /* proposed, not yet applied */
    bool expire_in_flight;
    size_t proposals;           /* entries proposed and not yet applied or failed */
    proto_rpc_request_t **held; /* requests waiting for a new leader's barrier */
    size_t n_held;
    svc_change_t *change;
    uint64_t hup_seen;
    ledger_backup_t *backup;     /* hot copies for `qcctl shard backup` (ledger_backup.h) */
    uint64_t digest_interval_ms; /* replica mode: digest ops (0 = none) */
    uint64_t next_digest_ms;
    uint64_t gauges_due_ms;  /* replica mode: next refresh of the outbox gauges (monotonic) */
    ledger_repair_t *repair; /* replica mode: rebuilds a diverged state, serves snapshots */
    char shard_key_z85[PROTO_CURVE_KEY_Z85_LEN + 1]; /* replica mode: curve_key's public half */
    /* metrics */
    ops_counter_t *m_commits;
    ops_counter_t *m_commit_failures;
    ops_histogram_t *m_commit_seconds;
    ops_counter_t *m_batch_bucket[SVC_BATCH_BUCKETS];
    ops_counter_t *m_batch_count;
    ops_counter_t *m_batch_sum;
    ops_counter_t *m_expired;
    ops_counter_t *m_denied;
    ops_gauge_t *m_outbox_depth;
    ops_gauge_t *m_map_used;
    ledger_outbox_t *outbox; /* the audit consumers (ledger_outbox.h) */
};

static const unsigned svc_batch_le[SVC_BATCH_BUCKETS] = {1, 4, 16, 64, 256, 1u << 30};

/* ------------------------------------------------------------ replies */

static void slot_refuse(svc_slot_t *slot, int code, const char *why)
{
    slot->code = code;
    snprintf(slot->why, sizeof slot->why, "%s", why != NULL ? why : qc_strerror(code));
}

static void slot_pack(svc_slot_t *slot, const ProtobufCMessage *msg)
{
    int rc = proto_pack(msg, &slot->body, &slot->body_len);
    if (rc != 0)
        slot_refuse(slot, rc, NULL);
}

static void reply_load(ledger_service_t *svc, svc_slot_t *slot, bool with_allow)
{
    Qcledger__Load lm;
    ledger_store_load_view(svc->load, &lm);
    if (with_allow) {
        Qcledger__ReserveReply r = QCLEDGER__RESERVE_REPLY__INIT;
        r.load = &lm;
        r.allow = lm.allow;
        slot_pack(slot, &r.base);
    } else {
        Qcledger__LoadReply r = QCLEDGER__LOAD_REPLY__INIT;
        r.load = &lm;
        slot_pack(slot, &r.base);
    }
}

static void reply_account(svc_slot_t *slot, const ledger_account_t *a)
{
    Qcledger__Account am;
    ledger_store_account_view(a, &am);
    Qcledger__AccountReply r = QCLEDGER__ACCOUNT_REPLY__INIT;
    r.account = &am;
    slot_pack(slot, &r.base);
}

static void reply_device(svc_slot_t *slot, const ledger_device_t *d)
{
    Qcledger__Device dm;
    ledger_store_device_view(d, &dm);
    Qcledger__DeviceReply r = QCLEDGER__DEVICE_REPLY__INIT;
    r.device = &dm;
    slot_pack(slot, &r.base);
}

/* A write's record is its reply; a replica also notes whose record it is, to read it again
 * once the entry applied. */
static void account_done(svc_slot_t *slot, const ledger_account_t *a)
{
    snprintf(slot->key, sizeof slot->key, "%s", a->id);
    reply_account(slot, a);
}

static void device_done(svc_slot_t *slot, const ledger_device_t *d)
{
    snprintf(slot->key, sizeof slot->key, "%s", d->id);
    reply_device(slot, d);
}

/* Unpacks the request body as desc, or refuses the slot with QC_EDECODE. */
static ProtobufCMessage *slot_unpack(svc_slot_t *slot, const ProtobufCMessageDescriptor *desc)
{
    ProtobufCMessage *m =
        protobuf_c_message_unpack(desc, NULL, slot->req->body_len, slot->req->body);
    if (m == NULL)
        slot_refuse(slot, QC_EDECODE, "request body is not a valid message");
    return m;
}

static bool txn_id_ok(svc_slot_t *slot, ProtobufCBinaryData id)
{
    if (id.len == LEDGER_TXN_ID_SIZE)
        return true;
    slot_refuse(slot, QC_EDECODE, "txn_id must be 16 bytes");
    return false;
}

static void count_result(const char *method, int code)
{
    char name[SVC_METRIC_NAME_MAX];
    snprintf(name, sizeof name, "qc_ledger_%s_total{result=\"%s\"}", method,
             code == 0 ? "ok" : qc_errname(code));
    ops_counter_add(ops_counter(name, "Ledger operations by result"), 1);
}

/* Invariant 6: what the saga stores is what the service reads back and replies with. txn_id
 * (may be NULL) is the id the caller asked for. */
static void assert_load(const ledger_load_t *l, const uint8_t *txn_id)
{
    assert(l->state >= QUANCUN__LOAD_STATE__LOAD_RESERVED);
    assert(l->state <= QUANCUN__LOAD_STATE__LOAD_LATE_CONFIRMED);
    assert(l->amount > 0);
    assert(l->device_id[0] != '\0');
    assert(l->account_id[0] != '\0');
    assert(l->request_len > 0);
    assert(l->request_len <= LEDGER_SIGNED_MAX);
    assert(l->allow_len <= LEDGER_SIGNED_MAX);
    assert(l->report_len <= LEDGER_SIGNED_MAX);
    assert(txn_id == NULL || memcmp(l->txn_id, txn_id, LEDGER_TXN_ID_SIZE) == 0);
}

/* ------------------------------------------------------------ writes */

static void do_reserve(ledger_service_t *svc, MDB_txn *txn, uint64_t now, svc_slot_t *slot)
{
    Qcledger__ReserveRequest *m =
        (Qcledger__ReserveRequest *)slot_unpack(slot, &qcledger__reserve_request__descriptor);
    if (m == NULL)
        return;
    slot->code = ledger_saga_reserve(svc->saga, txn, now, now + svc->deadline_ms, m->request.data,
                                     m->request.len, svc->load, slot->why);
    qcledger__reserve_request__free_unpacked(m, NULL);
    count_result("reserve", slot->code);
    if (slot->code != 0)
        return;
    assert_load(svc->load, NULL);
    memcpy(slot->txn_id, svc->load->txn_id, LEDGER_TXN_ID_SIZE);
    if (svc->load->state != QUANCUN__LOAD_STATE__LOAD_RESERVED || svc->load->allow_len > 0) {
        reply_load(svc, slot, true); /* a retry: the stored allow, byte for byte, or none */
        return;
    }
    /* Money held and not yet signed for: the bank signs once this commit is durable. */
    assert(svc->load->state == QUANCUN__LOAD_STATE__LOAD_RESERVED);
    assert(svc->load->allow_len == 0);
    int rc = ledger_saga_allow_body(svc->load, &slot->sign_body, &slot->sign_body_len);
    if (rc != 0) {
        slot_refuse(slot, rc, "the allow could not be built");
        return;
    }
    slot->sign_kind = QUANCUN__SIGN_KIND__SIGN_LOAD_ALLOW;
    memcpy(slot->txn_id, svc->load->txn_id, LEDGER_TXN_ID_SIZE);
}

/* The writes of signed allows that arrived since the last commit, inside that commit: each is
 * stored (once per load) and its answer, built from the stored record, waits for the commit. */
static void store_signed_allows(ledger_service_t *svc, MDB_txn *txn, uint64_t now)
{
    size_t n = ledger_signer_take(svc->signer, svc->signed_allows, LEDGER_SIGNER_PENDING_MAX);
    assert(n <= LEDGER_SIGNER_PENDING_MAX);
    for (size_t i = 0; i < n; i++) {
        const ledger_signer_allow_t *a = &svc->signed_allows[i];
        char why[LEDGER_WHY_MAX] = "";
        int rc = ledger_saga_store_allow(svc->saga, txn, now, a->txn_id, a->allow, a->allow_len,
                                         svc->load, why);
        count_result("store_allow", rc);
        if (rc == QC_ESTATE || rc == QC_EEXPIRED) {
            /* The deadline (or the device's next request) settled the load first: it gets the
             * record, and no allow exists for it. */
            rc = 0;
        }
        if (rc != 0) {
            char hex[2 * LEDGER_TXN_ID_SIZE + 1];
            ops_log(OPS_LOG_ERROR, "ledger.allow_not_stored", "txn_id",
                    ops_hex(a->txn_id, LEDGER_TXN_ID_SIZE, hex), "error", qc_errname(rc), "why",
                    why, NULL);
            ledger_signer_answer(svc->signer, a->handle, rc, why, NULL, 0);
            continue;
        }
        /* Stored now, or settled first: either way svc->load is the record of this txn. */
        assert_load(svc->load, a->txn_id);
        svc_slot_t reply = {.code = 0};
        reply_load(svc, &reply, true);
        ledger_signer_answer(svc->signer, a->handle, reply.code, reply.why, reply.body,
                             reply.body_len);
    }
}

static void do_settle(ledger_service_t *svc, MDB_txn *txn, uint64_t now, svc_slot_t *slot)
{
    Qcledger__SettleRequest *m =
        (Qcledger__SettleRequest *)slot_unpack(slot, &qcledger__settle_request__descriptor);
    if (m == NULL)
        return;
    if (txn_id_ok(slot, m->txn_id)) {
        memcpy(slot->txn_id, m->txn_id.data, LEDGER_TXN_ID_SIZE);
        slot->code = ledger_saga_settle(svc->saga, txn, now, m->txn_id.data, m->report.data,
                                        m->report.len, svc->load, slot->why);
        count_result("settle", slot->code);
        if (slot->code == 0) {
            /* A report moves a RESERVED load on; a settled load keeps its state. */
            assert_load(svc->load, m->txn_id.data);
            assert(svc->load->state != QUANCUN__LOAD_STATE__LOAD_RESERVED);
            bool applied = svc->load->state == QUANCUN__LOAD_STATE__LOAD_CONFIRMED ||
                           svc->load->state == QUANCUN__LOAD_STATE__LOAD_LATE_CONFIRMED;
            if (m->verdict != QUANCUN__REPORT_STATUS__REPORT_NONE &&
                applied != (m->verdict == QUANCUN__REPORT_STATUS__REPORT_APPLIED)) {
                char hex[2 * LEDGER_TXN_ID_SIZE + 1];
                ops_log(OPS_LOG_WARN, "ledger.verdict_disagrees", "txn_id",
                        ops_hex(m->txn_id.data, LEDGER_TXN_ID_SIZE, hex), "state",
                        proto_load_state_name(svc->load->state), NULL);
            }
            /* The reply is this record and, appended by the signing stage after the commit, the
             * outcome the bank signs for it. */
            reply_load(svc, slot, false);
            int rc =
                ledger_saga_outcome_body(svc->load, now, &slot->sign_body, &slot->sign_body_len);
            if (rc != 0) {
                free(slot->body);
                slot->body = NULL;
                slot_refuse(slot, rc, "the outcome could not be built");
            } else if (slot->code == 0) {
                slot->sign_kind = QUANCUN__SIGN_KIND__SIGN_LOAD_OUTCOME;
                memcpy(slot->txn_id, svc->load->txn_id, LEDGER_TXN_ID_SIZE);
            }
        }
    }
    qcledger__settle_request__free_unpacked(m, NULL);
}

static void do_open_account(ledger_service_t *svc, MDB_txn *txn, uint64_t now, svc_slot_t *slot)
{
    Qcledger__OpenAccountRequest *m = (Qcledger__OpenAccountRequest *)slot_unpack(
        slot, &qcledger__open_account_request__descriptor);
    if (m == NULL)
        return;
    ledger_account_t spec = {.currency = m->currency,
                             .load_min = m->load_min,
                             .load_max = m->load_max,
                             .daily_max = m->daily_max},
                     out;
    if (strlen(m->account_id) > LEDGER_ID_MAX) {
        slot_refuse(slot, QC_ETOOBIG, "account id too long");
    } else {
        snprintf(spec.id, sizeof spec.id, "%s", m->account_id);
        slot->code = ledger_saga_open_account(svc->saga, txn, now, &spec, &out, slot->why);
        if (slot->code == 0)
            account_done(slot, &out);
    }
    qcledger__open_account_request__free_unpacked(m, NULL);
}

static void do_deposit(ledger_service_t *svc, MDB_txn *txn, uint64_t now, svc_slot_t *slot)
{
    Qcledger__DepositRequest *m =
        (Qcledger__DepositRequest *)slot_unpack(slot, &qcledger__deposit_request__descriptor);
    if (m == NULL)
        return;
    ledger_account_t out;
    if (txn_id_ok(slot, m->txn_id)) {
        slot->code = ledger_saga_deposit(svc->saga, txn, now, m->account_id, m->amount,
                                         m->txn_id.data, &out, slot->why);
        if (slot->code == 0)
            account_done(slot, &out);
    }
    qcledger__deposit_request__free_unpacked(m, NULL);
}

static void do_set_frozen(ledger_service_t *svc, MDB_txn *txn, uint64_t now, svc_slot_t *slot,
                          bool frozen)
{
    Qcledger__FreezeRequest *m =
        (Qcledger__FreezeRequest *)slot_unpack(slot, &qcledger__freeze_request__descriptor);
    if (m == NULL)
        return;
    ledger_account_t out;
    slot->code =
        ledger_saga_set_frozen(svc->saga, txn, now, m->account_id, frozen, &out, slot->why);
    if (slot->code == 0)
        account_done(slot, &out);
    qcledger__freeze_request__free_unpacked(m, NULL);
}

static void do_freeze(ledger_service_t *svc, MDB_txn *txn, uint64_t now, svc_slot_t *slot)
{
    do_set_frozen(svc, txn, now, slot, true);
}

static void do_unfreeze(ledger_service_t *svc, MDB_txn *txn, uint64_t now, svc_slot_t *slot)
{
    do_set_frozen(svc, txn, now, slot, false);
}

static void do_enroll(ledger_service_t *svc, MDB_txn *txn, uint64_t now, svc_slot_t *slot)
{
    Qcledger__EnrollDeviceRequest *m = (Qcledger__EnrollDeviceRequest *)slot_unpack(
        slot, &qcledger__enroll_device_request__descriptor);
    if (m == NULL)
        return;
    ledger_device_t *d = malloc(sizeof *d);
    if (d == NULL) {
        slot_refuse(slot, QC_ENOMEM, NULL);
    } else {
        slot->code =
            ledger_saga_enroll_device(svc->saga, txn, now, m->account_id, m->cert.data, m->cert.len,
                                      m->wallet_cap, m->counter, d, slot->why);
        if (slot->code == 0)
            device_done(slot, d);
    }
    free(d);
    qcledger__enroll_device_request__free_unpacked(m, NULL);
}

static void do_revoke(ledger_service_t *svc, MDB_txn *txn, uint64_t now, svc_slot_t *slot)
{
    Qcledger__RevokeDeviceRequest *m = (Qcledger__RevokeDeviceRequest *)slot_unpack(
        slot, &qcledger__revoke_device_request__descriptor);
    if (m == NULL)
        return;
    ledger_device_t *d = malloc(sizeof *d);
    if (d == NULL) {
        slot_refuse(slot, QC_ENOMEM, NULL);
    } else {
        slot->code = ledger_saga_revoke_device(svc->saga, txn, now, m->device_id, d, slot->why);
        if (slot->code == 0)
            device_done(slot, d);
    }
    free(d);
    qcledger__revoke_device_request__free_unpacked(m, NULL);
}

static void do_outbox_ack(ledger_service_t *svc, MDB_txn *txn, uint64_t now, svc_slot_t *slot)
{
    (void)now;
    Qcledger__OutboxAckRequest *m =
        (Qcledger__OutboxAckRequest *)slot_unpack(slot, &qcledger__outbox_ack_request__descriptor);
    if (m == NULL)
        return;
    MDB_txn *child = NULL;
    Qcledger__OutboxAckReply r = QCLEDGER__OUTBOX_ACK_REPLY__INIT;
    slot->code = ledger_store_txn_begin(svc->store, txn, true, &child);
    if (slot->code == 0) {
        slot->code = ledger_outbox_ack(svc->outbox, svc->store, child, m->consumer, m->upto_seq);
        if (slot->code == 0)
            slot->code = ledger_outbox_reply(svc->outbox, svc->store, child, m->consumer, &r);
        if (slot->code == 0)
            slot->code = ledger_store_txn_commit(child);
        else
            ledger_store_txn_abort(child);
    }
    if (slot->code == QC_EDENIED)
        slot_refuse(slot, QC_EDENIED, "outbox_ack: the consumer is not in audit_consumers");
    if (slot->code == 0)
        slot_pack(slot, &r.base);
    qcledger__outbox_ack_request__free_unpacked(m, NULL);
}

/* ------------------------------------------------------------ reads */

static void do_get_load(ledger_service_t *svc, MDB_txn *txn, svc_slot_t *slot)
{
    Qcledger__GetLoadRequest *m =
        (Qcledger__GetLoadRequest *)slot_unpack(slot, &qcledger__get_load_request__descriptor);
    if (m == NULL)
        return;
    if (txn_id_ok(slot, m->txn_id)) {
        slot->code = ledger_store_load_get(svc->store, txn, m->txn_id.data, svc->load);
        if (slot->code == 0) {
            assert_load(svc->load, m->txn_id.data);
            reply_load(svc, slot, false);
        } else if (slot->code == QC_ENOTFOUND)
            slot_refuse(slot, QC_ENOTFOUND, "no load with this txn id");
    }
    qcledger__get_load_request__free_unpacked(m, NULL);
}

static void do_get_account(ledger_service_t *svc, MDB_txn *txn, svc_slot_t *slot)
{
    Qcledger__GetAccountRequest *m = (Qcledger__GetAccountRequest *)slot_unpack(
        slot, &qcledger__get_account_request__descriptor);
    if (m == NULL)
        return;
    ledger_account_t a;
    slot->code = ledger_store_account_get(svc->store, txn, m->account_id, &a);
    if (slot->code == 0)
        reply_account(slot, &a);
    else if (slot->code == QC_ENOTFOUND)
        slot_refuse(slot, QC_EUNKNOWNACCT, "no such account on this shard");
    qcledger__get_account_request__free_unpacked(m, NULL);
}

static void do_get_device(ledger_service_t *svc, MDB_txn *txn, svc_slot_t *slot)
{
    Qcledger__GetDeviceRequest *m =
        (Qcledger__GetDeviceRequest *)slot_unpack(slot, &qcledger__get_device_request__descriptor);
    if (m == NULL)
        return;
    ledger_device_t *d = malloc(sizeof *d);
    if (d == NULL) {
        slot_refuse(slot, QC_ENOMEM, NULL);
    } else {
        slot->code = ledger_store_device_get(svc->store, txn, m->device_id, d);
        if (slot->code == 0)
            reply_device(slot, d);
        else if (slot->code == QC_ENOTFOUND)
            slot_refuse(slot, QC_EUNKNOWNDEV, "no such device on this shard");
    }
    free(d);
    qcledger__get_device_request__free_unpacked(m, NULL);
}

/* The operator queries (check, list_loads, account_statement) run on their own thread in a
 * read transaction of theirs, so that a long one does not stop the writes (ledger_query.h):
 * the request moves there, and the loop sends its answer (ledger_query_reply()). */
static void do_query(ledger_service_t *svc, MDB_txn *txn, svc_slot_t *slot)
{
    (void)txn;
    if (ledger_query_submit(svc->query, &slot->req) != 0)
        slot_refuse(slot, QC_EBUSY, "the ledger runs as many queries as it may: try again");
}

static void do_outbox_read(ledger_service_t *svc, MDB_txn *txn, svc_slot_t *slot)
{
    Qcledger__OutboxReadRequest *m = (Qcledger__OutboxReadRequest *)slot_unpack(
        slot, &qcledger__outbox_read_request__descriptor);
    if (m == NULL)
        return;
    size_t max = m->max == 0 || m->max > LEDGER_OUTBOX_READ_MAX ? LEDGER_OUTBOX_READ_MAX : m->max;
    Qcledger__OutboxReadReply r;
    if (m->consumer != NULL && m->consumer[0] != '\0' &&
        !ledger_outbox_known(svc->outbox, m->consumer))
        slot_refuse(slot, QC_EDENIED, "outbox_read: the consumer is not in audit_consumers");
    else
        slot->code = ledger_store_outbox_read(svc->store, txn, m->after_seq, max, &r);
    if (slot->code == 0) {
        slot_pack(slot, &r.base);
        ledger_store_outbox_read_free(&r);
    }
    qcledger__outbox_read_request__free_unpacked(m, NULL);
}

/* ------------------------------------------------------------ replica mode: entries and replies
 *
 * propose_*: the write, verified by its write() on the leader, as an op of the entry.
 * after_*: its reply, read from the state once the entry applied here. */

static int propose_reserve(ledger_service_t *svc, svc_slot_t *slot, ledger_fsm_batch_t *b,
                           uint64_t now)
{
    Qcledger__ReserveRequest *m =
        (Qcledger__ReserveRequest *)slot_unpack(slot, &qcledger__reserve_request__descriptor);
    if (m == NULL)
        return QC_EDECODE;
    /* The deadline the admission checked against (do_reserve), carried in the entry. */
    int rc = ledger_fsm_batch_reserve(b, m->request.data, m->request.len, now + svc->deadline_ms);
    qcledger__reserve_request__free_unpacked(m, NULL);
    return rc;
}

static int propose_settle(ledger_service_t *svc, svc_slot_t *slot, ledger_fsm_batch_t *b,
                          uint64_t now)
{
    (void)svc;
    (void)now;
    Qcledger__SettleRequest *m =
        (Qcledger__SettleRequest *)slot_unpack(slot, &qcledger__settle_request__descriptor);
    if (m == NULL)
        return QC_EDECODE;
    assert(m->txn_id.len == LEDGER_TXN_ID_SIZE); /* admission checked it */
    /* A report that does not verify settles nothing: it is evidence for audit. */
    int rc = slot->code_after != 0
                 ? ledger_fsm_batch_bad_report(b, m->txn_id.data, m->report.data, m->report.len)
                 : ledger_fsm_batch_settle(b, m->txn_id.data, m->report.data, m->report.len);
    qcledger__settle_request__free_unpacked(m, NULL);
    return rc;
}

static int propose_outbox_ack(ledger_service_t *svc, svc_slot_t *slot, ledger_fsm_batch_t *b,
                              uint64_t now)
{
    (void)svc;
    (void)now;
    Qcledger__OutboxAckRequest *m =
        (Qcledger__OutboxAckRequest *)slot_unpack(slot, &qcledger__outbox_ack_request__descriptor);
    if (m == NULL)
        return QC_EDECODE;
    size_t count = 0;
    const char *const *consumers = ledger_outbox_consumers(svc->outbox, &count);
    int rc = ledger_fsm_batch_outbox_ack_by(b, m->upto_seq, m->consumer, consumers, count);
    qcledger__outbox_ack_request__free_unpacked(m, NULL);
    return rc;
}

static int propose_open_account(ledger_service_t *svc, svc_slot_t *slot, ledger_fsm_batch_t *b,
                                uint64_t now)
{
    (void)svc;
    (void)now;
    Qcledger__OpenAccountRequest *m = (Qcledger__OpenAccountRequest *)slot_unpack(
        slot, &qcledger__open_account_request__descriptor);
    if (m == NULL)
        return QC_EDECODE;
    ledger_account_t spec = {.currency = m->currency,
                             .load_min = m->load_min,
                             .load_max = m->load_max,
                             .daily_max = m->daily_max};
    snprintf(spec.id, sizeof spec.id, "%s", m->account_id); /* admission checked its length */
    int rc = ledger_fsm_batch_open_account(b, &spec);
    qcledger__open_account_request__free_unpacked(m, NULL);
    return rc;
}

static int propose_deposit(ledger_service_t *svc, svc_slot_t *slot, ledger_fsm_batch_t *b,
                           uint64_t now)
{
    (void)svc;
    (void)now;
    Qcledger__DepositRequest *m =
        (Qcledger__DepositRequest *)slot_unpack(slot, &qcledger__deposit_request__descriptor);
    if (m == NULL)
        return QC_EDECODE;
    int rc = ledger_fsm_batch_deposit(b, m->account_id, m->amount, m->txn_id.data);
    qcledger__deposit_request__free_unpacked(m, NULL);
    return rc;
}

static int propose_set_frozen(svc_slot_t *slot, ledger_fsm_batch_t *b, bool frozen)
{
    Qcledger__FreezeRequest *m =
        (Qcledger__FreezeRequest *)slot_unpack(slot, &qcledger__freeze_request__descriptor);
    if (m == NULL)
        return QC_EDECODE;
    int rc = ledger_fsm_batch_set_frozen(b, m->account_id, frozen);
    qcledger__freeze_request__free_unpacked(m, NULL);
    return rc;
}

static int propose_freeze(ledger_service_t *svc, svc_slot_t *slot, ledger_fsm_batch_t *b,
                          uint64_t now)
{
    (void)svc;
    (void)now;
    return propose_set_frozen(slot, b, true);
}

static int propose_unfreeze(ledger_service_t *svc, svc_slot_t *slot, ledger_fsm_batch_t *b,
                            uint64_t now)
{
    (void)svc;
    (void)now;
    return propose_set_frozen(slot, b, false);
}

static int propose_enroll(ledger_service_t *svc, svc_slot_t *slot, ledger_fsm_batch_t *b,
                          uint64_t now)
{
    (void)svc;
    (void)now;
    Qcledger__EnrollDeviceRequest *m = (Qcledger__EnrollDeviceRequest *)slot_unpack(
        slot, &qcledger__enroll_device_request__descriptor);
    if (m == NULL)
        return QC_EDECODE;
    int rc = ledger_fsm_batch_enroll(b, m->account_id, m->cert.data, m->cert.len, m->wallet_cap,
                                     m->counter);
    qcledger__enroll_device_request__free_unpacked(m, NULL);
    return rc;
}

static int propose_revoke(ledger_service_t *svc, svc_slot_t *slot, ledger_fsm_batch_t *b,
                          uint64_t now)
{
    (void)svc;
    (void)now;
    Qcledger__RevokeDeviceRequest *m = (Qcledger__RevokeDeviceRequest *)slot_unpack(
        slot, &qcledger__revoke_device_request__descriptor);
    if (m == NULL)
        return QC_EDECODE;
    int rc = ledger_fsm_batch_revoke(b, m->device_id);
    qcledger__revoke_device_request__free_unpacked(m, NULL);
    return rc;
}

/* The load as applied: RESERVED and not yet signed for, the bank signs now (the debit is
 * committed by a majority and applied); otherwise the record, with its stored allow. */
static void after_reserve(ledger_service_t *svc, MDB_txn *txn, svc_slot_t *slot)
{
    slot->code = ledger_store_load_get(svc->store, txn, slot->txn_id, svc->load);
    if (slot->code != 0) {
        slot_refuse(slot, slot->code, "the applied load could not be read");
        return;
    }
    assert_load(svc->load, slot->txn_id);
    if (svc->load->state != QUANCUN__LOAD_STATE__LOAD_RESERVED || svc->load->allow_len > 0) {
        reply_load(svc, slot, true);
        return;
    }
    int rc = ledger_saga_allow_body(svc->load, &slot->sign_body, &slot->sign_body_len);
    if (rc != 0) {
        slot_refuse(slot, rc, "the allow could not be built");
        return;
    }
    slot->sign_kind = QUANCUN__SIGN_KIND__SIGN_LOAD_ALLOW;
}

static void after_settle(ledger_service_t *svc, MDB_txn *txn, svc_slot_t *slot)
{
    slot->code = ledger_store_load_get(svc->store, txn, slot->txn_id, svc->load);
    if (slot->code != 0) {
        slot_refuse(slot, slot->code, "the applied load could not be read");
        return;
    }
    assert_load(svc->load, slot->txn_id);
    reply_load(svc, slot, false);
    if (slot->code != 0)
        return;
    int rc = ledger_saga_outcome_body(svc->load, ops_time_wall_ms(), &slot->sign_body,
                                      &slot->sign_body_len);
    if (rc != 0) {
        free(slot->body);
        slot->body = NULL;
        slot_refuse(slot, rc, "the outcome could not be built");
        return;
    }
    slot->sign_kind = QUANCUN__SIGN_KIND__SIGN_LOAD_OUTCOME;
}

static void after_account(ledger_service_t *svc, MDB_txn *txn, svc_slot_t *slot)
{
    ledger_account_t a;
    slot->code = ledger_store_account_get(svc->store, txn, slot->key, &a);
    if (slot->code == 0)
        reply_account(slot, &a);
    else
        slot_refuse(slot, slot->code, "the applied account could not be read");
}

static void after_device(ledger_service_t *svc, MDB_txn *txn, svc_slot_t *slot)
{
    ledger_device_t *d = malloc(sizeof *d);
    if (d == NULL) {
        slot_refuse(slot, QC_ENOMEM, NULL);
        return;
    }
    slot->code = ledger_store_device_get(svc->store, txn, slot->key, d);
    if (slot->code == 0)
        reply_device(slot, d);
    else
        slot_refuse(slot, slot->code, "the applied device could not be read");
    free(d);
}

static void after_outbox_ack(ledger_service_t *svc, MDB_txn *txn, svc_slot_t *slot)
{
    Qcledger__OutboxAckReply r = QCLEDGER__OUTBOX_ACK_REPLY__INIT;
    Qcledger__OutboxAckRequest *m =
        (Qcledger__OutboxAckRequest *)slot_unpack(slot, &qcledger__outbox_ack_request__descriptor);
    if (m == NULL)
        return;
    slot->code = ledger_outbox_reply(svc->outbox, svc->store, txn, m->consumer, &r);
    qcledger__outbox_ack_request__free_unpacked(m, NULL);
    if (slot->code == 0)
        slot_pack(slot, &r.base);
    else
        slot_refuse(slot, slot->code, NULL);
}

/* ------------------------------------------------------------ shard status */

static Qcledger__ReplicaRole role_of(int raft_state)
{
    switch (raft_state) {
    case RAFT_FOLLOWER:
        return QCLEDGER__REPLICA_ROLE__ROLE_FOLLOWER;
    case RAFT_CANDIDATE:
        return QCLEDGER__REPLICA_ROLE__ROLE_CANDIDATE;
    case RAFT_LEADER:
        return QCLEDGER__REPLICA_ROLE__ROLE_LEADER;
    default:
        return QCLEDGER__REPLICA_ROLE__ROLE_UNAVAILABLE;
    }
}

/* The status of this replica, in r (strings borrowed from libraft and the peer table, valid
 * until the loop runs again). infos has room for LEDGER_REPLICAS_MAX. match_index comes from
 * libraft's public struct raft (leader_state.progress, by configuration position): known on
 * the leader only; this replica's own is its last index. */
static int status_fill(ledger_service_t *svc, MDB_txn *txn, Qcledger__ShardStatusReply *r,
                       Qcledger__ReplicaInfo *infos, Qcledger__ReplicaInfo **ptrs)
{
    qcledger__shard_status_reply__init(r);
    r->shard = svc->shard;
    uint64_t applied = 0, applied_ms = 0;
    int rc = ledger_store_applied_get(svc->store, txn, &applied, &applied_ms);
    if (rc != 0)
        return rc;
    r->applied_index = applied;
    if (svc->replica == NULL) {
        r->role = QCLEDGER__REPLICA_ROLE__ROLE_LEADER; /* one process: it decides alone */
        return 0;
    }
    struct raft *rf = ledger_replica_raft(svc->replica);
    uint64_t self = ledger_replica_id(svc->replica);
    int state = raft_state(rf);
    r->id = self;
    r->role = role_of(state);
    ledger_fsm_stats_t fst;
    ledger_fsm_stats(svc->fsm, &fst);
    /* Entries that change no state (configuration, barriers) never reach the state machine,
     * so the applied index in LMDB stays behind libraft's after them: a healthy replica says
     * libraft's, lest an idle group show a lag that no apply will close. */
    uint64_t raft_applied = raft_last_applied(rf);
    if (!fst.diverged && fst.apply_error == 0 && raft_applied > applied)
        r->applied_index = raft_applied;
    r->diverged = fst.diverged;
    r->diverged_index = fst.diverged_index;
    r->digest_checks = fst.digest_checks;
    r->digest_ok_index = fst.digest_ok_index;
    r->rebuilds = fst.repairs;
    r->term = rf->current_term;
    r->commit_index = rf->commit_index;
    r->last_index = raft_last_index(rf);
    const char *leader_ep = NULL;
    r->leader_id = ledger_replica_leader(svc->replica, &leader_ep);
    if (leader_ep != NULL)
        r->leader_endpoint = (char *)leader_ep;
    size_t n =
        rf->configuration.n < LEDGER_REPLICAS_MAX ? rf->configuration.n : LEDGER_REPLICAS_MAX;
    for (size_t i = 0; i < n; i++) {
        const struct raft_server *s = &rf->configuration.servers[i];
        qcledger__replica_info__init(&infos[i]);
        infos[i].id = s->id;
        infos[i].raft_address = s->address;
        const ledger_replica_peer_t *p = ledger_replica_peer(svc->replica, s->id);
        if (p != NULL)
            infos[i].endpoint = (char *)p->endpoint;
        infos[i].voter = s->role == RAFT_VOTER;
        if (s->id == self)
            infos[i].match_index = r->last_index;
        else if (state == RAFT_LEADER && rf->leader_state.progress != NULL)
            infos[i].match_index = rf->leader_state.progress[i].match_index;
        ptrs[i] = &infos[i];
    }
    r->n_replicas = n;
    r->replicas = ptrs;
    return 0;
}

static void do_shard_status(ledger_service_t *svc, MDB_txn *txn, svc_slot_t *slot)
{
    Qcledger__ShardStatusReply r;
    Qcledger__ReplicaInfo infos[LEDGER_REPLICAS_MAX];
    Qcledger__ReplicaInfo *ptrs[LEDGER_REPLICAS_MAX];
    slot->code = status_fill(svc, txn, &r, infos, ptrs);
    if (slot->code == 0)
        slot_pack(slot, &r.base);
    else
        slot_refuse(slot, slot->code, NULL);
}

/* Membership changes run on the leader only (replica mode): see start_change(). */
static void do_change(ledger_service_t *svc, MDB_txn *txn, uint64_t now, svc_slot_t *slot)
{
    (void)svc;
    (void)txn;
    (void)now;
    slot_refuse(slot, QC_EINVAL, "this ledger runs without replicas (no replica_id)");
}

/* "backup" (any replica, on its own state): starts or polls a hot copy (ledger_backup.h). */
static void do_backup(ledger_service_t *svc, MDB_txn *txn, svc_slot_t *slot)
{
    (void)txn;
    Qcledger__BackupRequest *m =
        (Qcledger__BackupRequest *)slot_unpack(slot, &qcledger__backup_request__descriptor);
    if (m == NULL)
        return;
    Qcledger__BackupReply r;
    int rc = ledger_backup_request(svc->backup, m->dir, &r);
    qcledger__backup_request__free_unpacked(m, NULL);
    if (rc != 0)
        slot_refuse(slot, rc, rc == QC_EEXIST ? "the backup directory is not empty" : NULL);
    else
        slot_pack(slot, &r.base);
}

/* "replica_snapshot" (another replica of the shard): a chunk of this replica's snapshot. */
static void do_replica_snapshot(ledger_service_t *svc, MDB_txn *txn, svc_slot_t *slot)
{
    (void)txn;
    if (svc->repair == NULL) {
        slot_refuse(slot, QC_EINVAL, "this ledger runs without replicas (no replica_id)");
        return;
    }
    Qcledger__ReplicaSnapshotRequest *m = (Qcledger__ReplicaSnapshotRequest *)slot_unpack(
        slot, &qcledger__replica_snapshot_request__descriptor);
    if (m == NULL)
        return;
    Qcledger__ReplicaSnapshotReply r = QCLEDGER__REPLICA_SNAPSHOT_REPLY__INIT;
    char why[LEDGER_REPAIR_WHY_MAX];
    int rc = ledger_repair_serve(svc->repair, m, ops_time_mono_ms(), &r, why, sizeof why);
    qcledger__replica_snapshot_request__free_unpacked(m, NULL);
    if (rc != 0)
        slot_refuse(slot, rc, why);
    else
        slot_pack(slot, &r.base);
}

static const svc_method_t svc_methods[] = {
    {"reserve", ROLE_SERVICE, KIND_WRITE, do_reserve, NULL, propose_reserve, after_reserve, false},
    {"settle", ROLE_SERVICE, KIND_WRITE, do_settle, NULL, propose_settle, after_settle, false},
    {"outbox_ack", ROLE_SERVICE, KIND_WRITE, do_outbox_ack, NULL, propose_outbox_ack,
     after_outbox_ack, false},
    {"outbox_read", ROLE_SERVICE, KIND_READ, NULL, do_outbox_read, NULL, NULL, false},
    {"open_account", ROLE_ADMIN, KIND_WRITE, do_open_account, NULL, propose_open_account,
     after_account, false},
    {"deposit", ROLE_ADMIN, KIND_WRITE, do_deposit, NULL, propose_deposit, after_account, false},
    {"freeze", ROLE_ADMIN, KIND_WRITE, do_freeze, NULL, propose_freeze, after_account, false},
    {"unfreeze", ROLE_ADMIN, KIND_WRITE, do_unfreeze, NULL, propose_unfreeze, after_account, false},
    {"enroll_device", ROLE_ADMIN, KIND_WRITE, do_enroll, NULL, propose_enroll, after_device, false},
    {"revoke_device", ROLE_ADMIN, KIND_WRITE, do_revoke, NULL, propose_revoke, after_device, false},
    {"get_load", ROLE_ANY, KIND_READ, NULL, do_get_load, NULL, NULL, false},
    {"get_account", ROLE_ANY, KIND_READ, NULL, do_get_account, NULL, NULL, false},
    {"get_device", ROLE_ANY, KIND_READ, NULL, do_get_device, NULL, NULL, false},
    {"check", ROLE_ANY, KIND_READ, NULL, do_query, NULL, NULL, true},
    {"list_loads", ROLE_ANY, KIND_READ, NULL, do_query, NULL, NULL, false},
    {"account_statement", ROLE_ANY, KIND_READ, NULL, do_query, NULL, NULL, false},
    {"shard_status", ROLE_ANY, KIND_READ, NULL, do_shard_status, NULL, NULL, true},
    {"backup", ROLE_ADMIN, KIND_READ, NULL, do_backup, NULL, NULL, true},
    {"replica_snapshot", ROLE_REPLICA, KIND_READ, NULL, do_replica_snapshot, NULL, NULL, true},
    {"add_replica", ROLE_ADMIN, KIND_CHANGE, do_change, NULL, NULL, NULL, false},
    {"remove_replica", ROLE_ADMIN, KIND_CHANGE, do_change, NULL, NULL, NULL, false},
};

/* ------------------------------------------------------------ keys */

/* True when key (a peer's Z85 key, as the ZAP handler reports it) is in ks. */
static bool keyset_has(const proto_curve_keylist_t *ks, const char *key)
{
    uint8_t raw[PROTO_CURVE_KEY_SIZE];
    if (strlen(key) != PROTO_CURVE_KEY_Z85_LEN || zmq_z85_decode(raw, key) == NULL)
        return false;
    return proto_curve_keylist_contains(ks, raw);
}

/* Reads a key list with the one key-list parser (proto_curve.h) into ks and appends its keys
 * to union_f. */
static int keyset_load(const char *path, proto_curve_keylist_t *ks, FILE *union_f)
{
    int rc = proto_curve_keylist_load(path, SVC_KEYS_MAX, ks);
    for (size_t i = 0; rc == 0 && i < ks->count; i++) {
        char z85[PROTO_CURVE_KEY_Z85_LEN + 1];
        if (zmq_z85_encode(z85, ks->keys[i], PROTO_CURVE_KEY_SIZE) == NULL)
            rc = QC_EINTERNAL; /* 32 bytes always encode */
        else
            fprintf(union_f, "%s\n", z85);
    }
    return rc;
}

/* Both key sets, and the file of their union that the ZAP handler admits. */
static int load_keys(ledger_service_t *svc, const ledger_service_config_t *cfg, char *union_path,
                     size_t cap)
{
    int n = snprintf(union_path, cap, "%s/%s", cfg->data_dir, SVC_ZAP_ALLOW_FILE);
    if (n < 0 || (size_t)n >= cap)
        return QC_ECONFIG;
    FILE *u = fopen(union_path, "w");
    if (u == NULL)
        return QC_EIO;
    fprintf(u, "# written by qc-ledger at start: allow_keys + admin_keys\n");
    int rc = keyset_load(cfg->allow_keys, &svc->service_keys, u);
    if (rc == 0 && cfg->admin_keys != NULL)
        rc = keyset_load(cfg->admin_keys, &svc->admin_keys, u);
    if (rc == 0 && cfg->replica_id != 0) {
        /* The other replicas of the shard, which hold its key, fetch snapshots for repair. */
        proto_curve_keypair_t own;
        if ((rc = proto_curve_keypair_load(cfg->curve_key_path, &own)) == 0) {
            memcpy(svc->shard_key_z85, own.public_z85, sizeof svc->shard_key_z85);
            fprintf(u, "%s\n", own.public_z85);
        }
        proto_curve_keypair_wipe(&own);
    }
    if (fclose(u) != 0 && rc == 0)
        rc = QC_EIO;
    return rc;
}

/* ------------------------------------------------------------ the loop */

static const svc_method_t *find_method(const char *name)
{
    for (size_t i = 0; i < sizeof svc_methods / sizeof svc_methods[0]; i++)
        if (strcmp(svc_methods[i].name, name) == 0)
            return &svc_methods[i];
    return NULL;
}

/* Decides whether the slot's request may run at all: method, caller, deadline. */
static void admit(ledger_service_t *svc, svc_slot_t *slot)
{
    proto_rpc_request_t *req = slot->req;
    assert(req != NULL);
    const svc_method_t *m = find_method(req->method);
    slot->method = NULL;
    slot->code = 0;
    slot->why[0] = '\0';
    slot->body = NULL;
    slot->body_len = 0;
    slot->sign_kind = QUANCUN__SIGN_KIND__SIGN_NONE;
    slot->sign_body = NULL;
    slot->sign_body_len = 0;
    slot->op = -1;
    slot->code_after = 0;
    slot->key[0] = '\0';
    slot->not_leader = false;
    slot->leader[0] = '\0';
    if (m == NULL) {
        slot_refuse(slot, QC_EMETHOD, NULL);
        return;
    }
    bool svc_key = keyset_has(&svc->service_keys, req->peer_key);
    bool adm_key = keyset_has(&svc->admin_keys, req->peer_key);
    bool replica_key =
        svc->shard_key_z85[0] != '\0' && strcmp(req->peer_key, svc->shard_key_z85) == 0;
    bool ok = m->role == ROLE_SERVICE   ? svc_key
              : m->role == ROLE_ADMIN   ? adm_key
              : m->role == ROLE_REPLICA ? replica_key
                                        : svc_key || adm_key;
    if (!ok) {
        ops_counter_add(svc->m_denied, 1);
        ops_log_limited(OPS_LOG_WARN, "ledger.denied", req->peer_key, "method", req->method, NULL);
        slot_refuse(slot, QC_EDENIED, "this key may not call this method");
        return;
    }
    if (m->kind != KIND_READ && ledger_store_corrupt(svc->store)) {
        /* A record failed its checksum (ledger.corrupt_record names it): nothing more is
         * written on this shard until an operator repairs it; reads go on. */
        slot_refuse(slot, QC_ECORRUPT,
                    "a stored record of this shard failed its checksum: writes are stopped");
        return;
    }
    if (req->deadline_mono_ms != 0 && req->deadline_mono_ms < ops_time_mono_ms()) {
        slot_refuse(slot, QC_ETIMEOUT, "request deadline passed before it was served");
        return;
    }
    slot->method = m;
}

static void observe_batch(ledger_service_t *svc, size_t writes)
{
    for (int i = 0; i < SVC_BATCH_BUCKETS; i++)
        if (writes <= svc_batch_le[i])
            ops_counter_add(svc->m_batch_bucket[i], 1);
    ops_counter_add(svc->m_batch_count, 1);
    ops_counter_add(svc->m_batch_sum, writes);
}

/* Learns the earliest deadline from the deadline index (at start and after each commit). */
static void load_next_deadline(ledger_service_t *svc)
{
    MDB_txn *txn = NULL;
    uint8_t id[LEDGER_TXN_ID_SIZE];
    svc->next_deadline_ms = 0;
    if (ledger_store_txn_begin(svc->store, NULL, false, &txn) != 0)
        return;
    if (ledger_store_deadline_first(svc->store, txn, &svc->next_deadline_ms, id) != 0)
        svc->next_deadline_ms = 0;
    ledger_store_txn_abort(txn);
}

/* Applies the writes of slots[0..n) and due deadline compensations in one transaction and
 * commits it. On a failed commit every write slot gets the failure instead of its result. */
static void group_commit(ledger_service_t *svc, svc_slot_t *slots, size_t n, uint64_t wall,
                         size_t writes, int signed_count)
{
    assert(n <= svc->batch_max);
    assert(writes <= n);
    assert(signed_count >= 0);
    /* A corrupt store (a checksum failed) writes nothing more, compensations included. */
    bool due = svc->next_deadline_ms != 0 && svc->next_deadline_ms <= wall &&
               !ledger_store_corrupt(svc->store);
    if (writes == 0 && !due && signed_count == 0)
        return;
    uint64_t t0 = ops_time_mono_ns();
    MDB_txn *txn = NULL;
    int rc = ledger_store_txn_begin(svc->store, NULL, true, &txn);
    size_t expired = 0;
    if (rc == 0) {
        /* Deadlines first: a report that arrives after its deadline finds the load
         * compensated and takes the late-confirmation path, as docs/DESIGN.md section 2 says. */
        rc = ledger_saga_expire(svc->saga, txn, wall, LEDGER_EXPIRE_BATCH_MAX, &expired,
                                &svc->next_deadline_ms);
        if (rc != 0)
            ops_log_limited(OPS_LOG_ERROR, "ledger.expire_failed", NULL, "error", qc_strerror(rc),
                            NULL);
        /* Then the allows signed since the last commit: after the deadlines, so that an allow
         * for a load its deadline just compensated is never stored nor sent. */
        store_signed_allows(svc, txn, wall);
        rc = 0;
        size_t done = 0;
        for (size_t i = 0; i < n; i++) {
            if (slots[i].method == NULL || slots[i].method->kind != KIND_WRITE)
                continue;
            slots[i].method->write(svc, txn, wall, &slots[i]);
            /* A write answers with a code, and asks for a signature only when it succeeded. */
            assert(slots[i].code <= 0);
            assert(slots[i].sign_kind == QUANCUN__SIGN_KIND__SIGN_NONE || slots[i].code == 0);
            assert(slots[i].sign_kind == QUANCUN__SIGN_KIND__SIGN_NONE ||
                   slots[i].sign_body != NULL);
            /* The chaos suite kills us here: half a batch applied, nothing committed. */
            if (++done == (writes + 1) / 2)
                ops_fault_point("ledger.mid_group_commit");
        }
        assert(done == writes); /* invariant 3: each admitted write ran, once */
        /* A disk full in the middle of a commit comes back from LMDB as EIO. */
        rc = ops_storage_classify(svc->storage, ledger_store_txn_commit(txn));
    }
    ledger_signer_release(svc->signer, rc);
    /* A full disk or map is a state with one line per change (ops_storage.h), not a line per
     * failed commit; other failures are limited as any repeated error. A sweep that found
     * nothing to do wrote nothing: its commit proves nothing about the disk. */
    if (rc != 0 || writes > 0 || expired > 0 || signed_count > 0) {
        atomic_store(&svc->last_commit_rc, rc);
        ops_storage_note(svc->storage, rc);
    }
    if (rc != 0) {
        ops_counter_add(svc->m_commit_failures, 1);
        if (rc != QC_ENOSPACE && rc != QC_EFULL)
            ops_log_limited(OPS_LOG_ERROR, "ledger.commit_failed", NULL, "error", qc_strerror(rc),
                            NULL);
        for (size_t i = 0; i < n; i++) {
            if (slots[i].method == NULL || slots[i].method->kind != KIND_WRITE)
                continue;
            free(slots[i].body);
            slots[i].body = NULL;
            slots[i].body_len = 0;
            slots[i].sign_kind = QUANCUN__SIGN_KIND__SIGN_NONE;
            slot_refuse(&slots[i], rc, "the batch could not be committed; nothing was applied");
            assert(slots[i].code < 0);
        }
        /* Look again, after a pause: a failed commit retried at once spun a core. */
        svc->next_deadline_ms = wall + LEDGER_COMMIT_RETRY_MS;
        return;
    }
    /* New reserves may have brought an earlier deadline. */
    load_next_deadline(svc);
    ops_counter_add(svc->m_commits, 1);
    ops_counter_add(svc->m_expired, expired);
    ops_histogram_observe(svc->m_commit_seconds, (double)(ops_time_mono_ns() - t0) / 1e9);
    if (writes > 0)
        observe_batch(svc, writes);
    ops_fault_point("ledger.after_commit_before_reply");
}

/* After the commit: a slot whose load the bank must sign now waits in the signing stage (its
 * request moves there); when the stage cannot take it, the load stays as committed and the
 * caller is told to try again. */
static void ask_signer(ledger_service_t *svc, svc_slot_t *slot)
{
    assert(slot->code == 0);
    assert(slot->req != NULL);
    assert(slot->sign_body != NULL);
    assert(slot->sign_body_len > 0);
    if (slot->sign_kind == QUANCUN__SIGN_KIND__SIGN_LOAD_ALLOW) {
        /* Chaos: the money is held and durable, and no allow has been asked for. */
        ops_fault_point("ledger.after_reserve_before_sign");
    }
    int rc = ledger_signer_ask(
        svc->signer, slot->sign_kind, slot->txn_id, slot->sign_body, slot->sign_body_len,
        slot->sign_kind == QUANCUN__SIGN_KIND__SIGN_LOAD_OUTCOME ? &slot->body : NULL,
        slot->body_len, &slot->req);
    if (rc == 0) {
        /* The request and the reply's prefix moved to the signing stage, which replies. */
        assert(slot->req == NULL);
        assert(slot->body == NULL);
    } else {
        free(slot->body);
        slot->body = NULL;
        slot->body_len = 0;
        slot_refuse(slot, rc == QC_EBUSY ? QC_EBUSY : QC_EUNAVAIL,
                    "the bank's signer cannot be asked now: try again");
    }
}

/* Sends the slot's reply, unless its request moved to the signing stage (which answers it
 * once the bank signed), and frees what the slot held. */
static void finish_slot(ledger_service_t *svc, svc_slot_t *slot)
{
    if (slot->code == 0 && slot->sign_kind != QUANCUN__SIGN_KIND__SIGN_NONE)
        ask_signer(svc, slot);
    free(slot->sign_body);
    slot->sign_body = NULL;
    if (slot->req == NULL) {
        /* Its request moved on (signing stage, entry, held, change) and took its reply along. */
        assert(slot->body == NULL);
        return;
    }
    int rrc = slot->not_leader
                  ? proto_rpc_server_reply_not_leader(svc->srv, slot->req, slot->leader)
                  : proto_rpc_server_reply(svc->srv, slot->req, slot->code,
                                           slot->code != 0 ? slot->why : NULL, slot->body,
                                           slot->body_len);
    if (rrc != 0)
        ops_log(OPS_LOG_WARN, "ledger.reply_failed", "error", qc_strerror(rrc), NULL);
    free(slot->body);
    slot->body = NULL;
    proto_rpc_request_destroy(&slot->req);
    assert(slot->req == NULL); /* invariant 5: replied once, and never again from this slot */
}

/* The outbox's depth and each audit consumer's lag, from the state in rtxn. */
static void outbox_gauges(ledger_service_t *svc, MDB_txn *rtxn)
{
    uint64_t depth = 0;
    if (ledger_store_outbox_depth(svc->store, rtxn, &depth) == 0)
        ops_gauge_set(svc->m_outbox_depth, (int64_t)depth);
    ledger_outbox_gauges(svc->outbox, svc->store, rtxn);
}

static void serve_batch(ledger_service_t *svc, size_t n, int signed_count)
{
    assert(n <= svc->batch_max);
    uint64_t wall = ops_time_wall_ms();
    size_t writes = 0, reads = 0;
    for (size_t i = 0; i < n; i++) {
        admit(svc, &svc->slots[i]);
        /* Invariant 2: the slot runs (method, code 0) or is answered already (a code). */
        assert(svc->slots[i].method != NULL || svc->slots[i].code < 0);
        assert(svc->slots[i].method == NULL || svc->slots[i].code == 0);
        if (svc->slots[i].method != NULL && svc->slots[i].method->kind == KIND_CHANGE) {
            svc->slots[i].method->write(svc, NULL, wall, &svc->slots[i]);
            svc->slots[i].method = NULL;
        }
        if (svc->slots[i].method != NULL) {
            if (svc->slots[i].method->kind == KIND_WRITE)
                writes++;
            else
                reads++;
        }
    }
    assert(writes + reads <= n);
    group_commit(svc, svc->slots, n, wall, writes, signed_count);
    MDB_txn *rtxn = NULL;
    int rc = ledger_store_txn_begin(svc->store, NULL, false, &rtxn);
    if (rc == 0)
        outbox_gauges(svc, rtxn);
    size_t read_count = 0;
    for (size_t i = 0; reads > 0 && i < n; i++) {
        svc_slot_t *slot = &svc->slots[i];
        if (slot->method == NULL || slot->method->kind != KIND_READ)
            continue;
        if (rc != 0)
            slot_refuse(slot, rc, NULL);
        else
            slot->method->read(svc, rtxn, slot);
        assert(slot->code <= 0);
        read_count++;
    }
    assert(read_count == reads); /* each admitted read ran, once */
    ledger_store_txn_abort(rtxn);
    for (size_t i = 0; i < n; i++) {
        /* One process: every request is still in its slot until finish_slot() answers it,
         * but for a query, which moved to the query thread. */
        assert(svc->slots[i].req != NULL || svc->slots[i].method->read == do_query);
        finish_slot(svc, &svc->slots[i]);
    }
}

/* ------------------------------------------------------------ replica mode
 *
 * The leader admits a batch as the single process does (method, key, deadline, then each
 * write's own checks: every signature, certificate and rule, in a write transaction over its
 * applied state that is aborted), and proposes the writes that passed as one Raft entry,
 * together with the deadline compensation that is due and the allows signed since the last
 * entry. Replies wait for the entry to be committed by a majority and applied here
 * (proposal_applied): each write's op result, and its record read from the applied state.
 * A reserve's allow is asked for after its entry applied and stored by a later entry.
 * Followers answer check and shard_status themselves, and refuse everything else with
 * QC_ENOTLEADER naming the leader (QC_ENOQUORUM when none is known). A new leader first has
 * a barrier of its term applied, so that it serves from a state holding every entry
 * committed before it; requests wait in the meantime (held). */

/* Raft's refusal of a proposal or change, as a code. */
static int raft_to_qc(int rv)
{
    return ledger_membership_qc(rv);
}

/* The refusal of a replica that is not the leader: nothing was changed. */
static void refuse_not_leader(ledger_service_t *svc, svc_slot_t *slot)
{
    const char *ep = NULL;
    uint64_t id = ledger_replica_leader(svc->replica, &ep);
    if (id != 0 && id != ledger_replica_id(svc->replica)) {
        slot->code = QC_ENOTLEADER;
        slot->not_leader = true;
        snprintf(slot->leader, sizeof slot->leader, "%s", ep != NULL ? ep : "");
        return;
    }
    slot_refuse(slot, QC_ENOQUORUM,
                "no leader is known in this shard's replica group: nothing changed, try again");
}

static void proposal_free(svc_proposal_t *p)
{
    free(p->slots);
    free(p->allows);
    free(p);
}

/* Every request of p learns that its entry is not known to be committed. */
static void proposal_fail(ledger_service_t *svc, svc_proposal_t *p, int code, const char *why)
{
    for (size_t i = 0; i < p->n_allows; i++)
        ledger_signer_finish(svc->signer, p->allows[i].handle, QC_EUNAVAIL,
                             "the allow could not be stored: try again", NULL, 0);
    for (size_t i = 0; i < p->n_slots; i++) {
        svc_slot_t *slot = &p->slots[i];
        free(slot->body);
        slot->body = NULL;
        slot->body_len = 0;
        slot->sign_kind = QUANCUN__SIGN_KIND__SIGN_NONE;
        if (code == QC_ENOTLEADER)
            refuse_not_leader(svc, slot);
        else
            slot_refuse(slot, code, why);
        finish_slot(svc, slot);
    }
}

/* The reply of each signed allow the entry stored: the record as applied, with its allow; a
 * load that the deadline (or its device's next request) settled first gets its record and no
 * allow, as in the single process. */
static void allows_applied(ledger_service_t *svc, svc_proposal_t *p, MDB_txn *rtxn,
                           const ledger_fsm_result_t *res)
{
    for (size_t i = 0; i < p->n_allows; i++) {
        const svc_proposal_allow_t *a = &p->allows[i];
        assert(a->op >= 0);
        assert((size_t)a->op < res->n_ops);
        int rc = res->ops[a->op].code;
        const char *why = res->ops[a->op].why;
        if (rc == QC_ESTATE || rc == QC_EEXPIRED)
            rc = 0;
        if (rc == 0 && (rc = ledger_store_load_get(svc->store, rtxn, a->txn_id, svc->load)) != 0)
            why = "the load could not be read";
        if (rc != 0) {
            char hex[2 * LEDGER_TXN_ID_SIZE + 1];
            ops_log(OPS_LOG_ERROR, "ledger.allow_not_stored", "txn_id",
                    ops_hex(a->txn_id, LEDGER_TXN_ID_SIZE, hex), "error", qc_errname(rc), "why",
                    why, NULL);
            ledger_signer_finish(svc->signer, a->handle, rc, why, NULL, 0);
            continue;
        }
        assert_load(svc->load, a->txn_id);
        svc_slot_t reply = {.code = 0};
        reply_load(svc, &reply, true);
        ledger_signer_finish(svc->signer, a->handle, reply.code, reply.why, reply.body,
                             reply.body_len);
    }
}

/* libraft: the entry applied here after a majority committed it (status 0, result the
 * fsm's), or it is not known to be (leadership lost, closing). */
static void proposal_applied(struct raft_apply *req, int status, void *result)
{
    svc_proposal_t *p = req->data;
    ledger_service_t *svc = p->svc;
    const ledger_fsm_result_t *res = result;
    assert(svc->proposals > 0);
    svc->proposals--;
    if (p->expire)
        svc->expire_in_flight = false;
    if (status != 0 || res == NULL || res->skipped || res->refused) {
        ops_log(OPS_LOG_WARN, "ledger.proposal_failed", "error",
                status != 0 ? raft_strerror(status) : "entry not applied as proposed", NULL);
        proposal_fail(svc, p, QC_EUNAVAIL,
                      "proposed but not known to be committed (the leader changed): "
                      "retry with the same txn id");
        proposal_free(p);
        return;
    }
    ops_counter_add(svc->m_commits, 1);
    ops_counter_add(svc->m_expired, res->expired);
    ops_histogram_observe(svc->m_commit_seconds, (double)(ops_time_mono_ns() - p->t0_ns) / 1e9);
    if (p->n_slots > 0)
        observe_batch(svc, p->n_slots);
    MDB_txn *rtxn = NULL;
    int rc = ledger_store_txn_begin(svc->store, NULL, false, &rtxn);
    if (rc != 0) {
        proposal_fail(svc, p, rc, "applied, but the state could not be read: ask again");
        proposal_free(p);
        return;
    }
    allows_applied(svc, p, rtxn, res);
    outbox_gauges(svc, rtxn); /* on the leader, after each of its entries */
    for (size_t i = 0; i < p->n_slots; i++) {
        svc_slot_t *slot = &p->slots[i];
        assert(slot->op >= 0);
        assert((size_t)slot->op < res->n_ops);
        const ledger_fsm_op_result_t *op = &res->ops[slot->op];
        if (op->code != 0)
            slot_refuse(slot, op->code, op->why);
        else if (slot->code_after != 0)
            slot->code = slot->code_after; /* its why is admission's */
        else
            slot->method->after(svc, rtxn, slot);
    }
    ledger_store_txn_abort(rtxn);
    for (size_t i = 0; i < p->n_slots; i++)
        finish_slot(svc, &p->slots[i]);
    ops_fault_point("ledger.after_commit_before_reply");
    proposal_free(p);
}

/* Admission of one write on the leader: write() runs it against the applied state (inside
 * txn, which the caller aborts) with every check of the single process. What passed becomes
 * an op of b; what did not is answered now. Returns true when slot moved into the entry. */
static bool admit_write(ledger_service_t *svc, MDB_txn *txn, svc_slot_t *slot,
                        ledger_fsm_batch_t *b, uint64_t wall)
{
    assert(slot->req != NULL);
    assert(slot->code == 0);
    slot->method->write(svc, txn, wall, slot);
    /* Only the verdict counts: the reply is read again from the applied state. */
    free(slot->body);
    slot->body = NULL;
    slot->body_len = 0;
    free(slot->sign_body);
    slot->sign_body = NULL;
    slot->sign_kind = QUANCUN__SIGN_KIND__SIGN_NONE;
    if (slot->method->propose == propose_settle &&
        (slot->code == QC_EBADSIG || slot->code == QC_EKEYID)) {
        /* Not the device speaking: the report goes to audit through the log. */
        slot->code_after = slot->code;
        slot->code = 0;
    }
    if (slot->code != 0)
        return false;
    size_t before = ledger_fsm_batch_count(b);
    int rc = slot->method->propose(svc, slot, b, wall);
    if (rc != 0) {
        slot_refuse(slot, rc == QC_EFULL ? QC_EBUSY : rc, "the entry could not take this write");
        return false;
    }
    assert(ledger_fsm_batch_count(b) == before + 1);
    slot->op = (int)before;
    return true;
}

/* The deadline compensation, due on the leader from the replicated state (a new leader takes
 * the timers over from it): at most one such entry in flight. */
static bool expire_due(ledger_service_t *svc, uint64_t wall)
{
    if (svc->expire_in_flight)
        return false;
    load_next_deadline(svc);
    return svc->next_deadline_ms != 0 && svc->next_deadline_ms <= wall;
}

/* The allows signed since the last entry, as store_allow ops of b. */
static void propose_allows(ledger_service_t *svc, svc_proposal_t *p, ledger_fsm_batch_t *b)
{
    size_t cap = LEDGER_FSM_OPS_MAX - svc->batch_max - 1; /* room for the writes and expire */
    size_t n = ledger_signer_take(svc->signer, svc->signed_allows, cap);
    for (size_t i = 0; i < n; i++) {
        const ledger_signer_allow_t *a = &svc->signed_allows[i];
        size_t before = ledger_fsm_batch_count(b);
        int rc = ledger_fsm_batch_store_allow(b, a->txn_id, a->allow, a->allow_len);
        if (rc != 0) {
            ledger_signer_finish(svc->signer, a->handle, rc, "the allow could not be proposed",
                                 NULL, 0);
            continue;
        }
        svc_proposal_allow_t *pa = &p->allows[p->n_allows++];
        pa->handle = a->handle;
        pa->op = (int)before;
        memcpy(pa->txn_id, a->txn_id, LEDGER_TXN_ID_SIZE);
    }
}

/* Hands b to libraft as one entry; on refusal every request of p is answered. */
static void propose(ledger_service_t *svc, svc_proposal_t *p, ledger_fsm_batch_t *b)
{
    struct raft_buffer buf = {0};
    int rc = ledger_fsm_batch_encode(b, &buf);
    if (rc != 0) {
        proposal_fail(svc, p, rc, "the entry could not be encoded");
        proposal_free(p);
        return;
    }
    p->req.data = p;
    int rv = raft_apply(ledger_replica_raft(svc->replica), &p->req, &buf, 1, proposal_applied);
    if (rv != 0) {
        raft_free(buf.base);
        ops_log(OPS_LOG_WARN, "ledger.propose_failed", "error", raft_strerror(rv), NULL);
        /* Not appended: nothing can change, so a moved leader is named. */
        proposal_fail(svc, p, raft_to_qc(rv) == QC_ENOTLEADER ? QC_ENOTLEADER : QC_EUNAVAIL,
                      "the entry could not be proposed: try again");
        proposal_free(p);
        return;
    }
    svc->proposals++;
    if (p->expire)
        svc->expire_in_flight = true;
}

/* The writes of slots[0..n) that pass admission, the due compensation and the signed allows:
 * one entry. */
static void replica_writes(ledger_service_t *svc, size_t n, size_t writes, int signed_count,
                           uint64_t wall)
{
    bool expire = expire_due(svc, wall);
    if (writes == 0 && !expire && signed_count == 0)
        return;
    if (svc->proposals >= LEDGER_PROPOSALS_MAX) {
        for (size_t i = 0; i < n; i++)
            if (svc->slots[i].method != NULL && svc->slots[i].method->kind == KIND_WRITE)
                slot_refuse(&svc->slots[i], QC_EBUSY, "too many entries in flight: try again");
        return;
    }
    ledger_fsm_batch_t *b = NULL;
    svc_proposal_t *p = calloc(1, sizeof *p);
    int rc = p == NULL ? QC_ENOMEM : ledger_fsm_batch_new(wall, &b);
    if (rc == 0) {
        p->svc = svc;
        p->t0_ns = ops_time_mono_ns();
        p->slots = calloc(writes > 0 ? writes : 1, sizeof *p->slots);
        p->allows = calloc(LEDGER_FSM_OPS_MAX, sizeof *p->allows);
        if (p->slots == NULL || p->allows == NULL)
            rc = QC_ENOMEM;
    }
    if (rc == 0 && expire) {
        rc = ledger_fsm_batch_expire(b, wall, LEDGER_EXPIRE_BATCH_MAX);
        p->expire = rc == 0;
    }
    MDB_txn *txn = NULL;
    if (rc == 0)
        rc = ledger_store_txn_begin(svc->store, NULL, true, &txn);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "ledger.admission_failed", "error", qc_strerror(rc), NULL);
        for (size_t i = 0; i < n; i++)
            if (svc->slots[i].method != NULL && svc->slots[i].method->kind == KIND_WRITE)
                slot_refuse(&svc->slots[i], rc, "the write could not be admitted");
        ledger_fsm_batch_destroy(&b);
        if (p != NULL)
            proposal_free(p);
        return;
    }
    propose_allows(svc, p, b);
    size_t done = 0;
    for (size_t i = 0; i < n; i++) {
        svc_slot_t *slot = &svc->slots[i];
        if (slot->method == NULL || slot->method->kind != KIND_WRITE)
            continue;
        done++;
        if (admit_write(svc, txn, slot, b, wall)) {
            p->slots[p->n_slots++] = *slot; /* its request moves to the proposal */
            slot->req = NULL;
        } else {
            assert(slot->code < 0); /* refused: answered at the end of the batch */
        }
    }
    assert(done == writes); /* invariant 3: each admitted write ran its admission, once */
    assert(p->n_slots <= writes);
    ledger_store_txn_abort(txn);
    if (ledger_fsm_batch_count(b) == 0) {
        assert(p->n_slots == 0);
        assert(p->n_allows == 0);
        proposal_free(p);
    } else {
        propose(svc, p, b);
    }
    ledger_fsm_batch_destroy(&b);
}

/* Replica repair (docs/DESIGN.md): every digest_interval_ms, when nothing is in flight, the
 * leader proposes its state digest at its applied index alone in an entry; each replica
 * applying it right after that index compares its own, and one that differs stops
 * (ledger_fsm.h). The entry answers nobody. */
static void propose_digest(ledger_service_t *svc, uint64_t wall)
{
    struct raft *rf = ledger_replica_raft(svc->replica);
    if (svc->digest_interval_ms == 0 || wall < svc->next_digest_ms || svc->proposals > 0 ||
        raft_last_applied(rf) != raft_last_index(rf))
        return;
    svc->next_digest_ms = wall + svc->digest_interval_ms;
    uint8_t d[PROTO_DIGEST_SIZE];
    uint64_t idx = 0;
    ledger_fsm_batch_t *b = NULL;
    svc_proposal_t *p = calloc(1, sizeof *p);
    int rc = p == NULL ? QC_ENOMEM : ledger_fsm_digest(svc->fsm, d, &idx);
    if (rc == 0)
        rc = ledger_fsm_batch_new(wall, &b);
    if (rc == 0)
        rc = ledger_fsm_batch_digest(b, idx, d);
    if (rc != 0) {
        ops_log(OPS_LOG_WARN, "ledger.digest_failed", "error", qc_strerror(rc), NULL);
        free(p);
        ledger_fsm_batch_destroy(&b);
        return;
    }
    p->svc = svc;
    p->t0_ns = ops_time_mono_ns();
    propose(svc, p, b);
    ledger_fsm_batch_destroy(&b);
}

static void barrier_applied(struct raft_barrier *req, int status)
{
    svc_barrier_t *b = req->data;
    ledger_service_t *svc = b->svc;
    svc->barrier_pending = false;
    struct raft *rf = ledger_replica_raft(svc->replica);
    if (status == 0 && raft_state(rf) == RAFT_LEADER && rf->current_term == b->term) {
        svc->ready_term = b->term;
        ops_logf(OPS_LOG_INFO, "ledger.leader_ready",
                 "leader of term %" PRIu64 ", applied %" PRIu64, b->term,
                 (uint64_t)raft_last_applied(rf));
    }
    free(b);
}

/* A new leader proposes a barrier of its term; it serves once that applied. */
static void leader_barrier(ledger_service_t *svc)
{
    if (svc->barrier_pending)
        return;
    struct raft *rf = ledger_replica_raft(svc->replica);
    svc_barrier_t *b = calloc(1, sizeof *b);
    if (b == NULL)
        return;
    b->svc = svc;
    b->term = rf->current_term;
    b->req.data = b;
    int rv = raft_barrier(rf, &b->req, barrier_applied);
    if (rv != 0) {
        ops_log(OPS_LOG_WARN, "ledger.barrier_failed", "error", raft_strerror(rv), NULL);
        free(b);
        return;
    }
    svc->barrier_pending = true;
}

/* Keeps the request of slot until the leader is ready. */
static void hold(ledger_service_t *svc, svc_slot_t *slot)
{
    if (svc->n_held == LEDGER_HELD_MAX) {
        slot_refuse(slot, QC_EBUSY, "the new leader is not serving yet: try again");
        return;
    }
    svc->held[svc->n_held++] = slot->req;
    slot->req = NULL;
}

/* Moves held requests into the batch once they can be served (or refused). */
static size_t take_held(ledger_service_t *svc)
{
    struct raft *rf = ledger_replica_raft(svc->replica);
    bool leader = raft_state(rf) == RAFT_LEADER;
    if (svc->n_held == 0 || (leader && svc->ready_term != rf->current_term))
        return 0;
    size_t k = svc->n_held < svc->batch_max ? svc->n_held : svc->batch_max;
    for (size_t i = 0; i < k; i++) {
        assert(svc->slots[i].req == NULL); /* invariant 1: the last batch left it empty */
        svc->slots[i].req = svc->held[i];
    }
    memmove(svc->held, svc->held + k, (svc->n_held - k) * sizeof *svc->held);
    svc->n_held -= k;
    return k;
}

static void change_reply(ledger_service_t *svc, proto_rpc_request_t **waiter, int code,
                         const char *why)
{
    svc_slot_t reply = {.code = code, .req = *waiter};
    if (code != 0) {
        slot_refuse(&reply, code, why);
    } else {
        Qcledger__ShardStatusReply st;
        Qcledger__ReplicaInfo infos[LEDGER_REPLICAS_MAX];
        Qcledger__ReplicaInfo *ptrs[LEDGER_REPLICAS_MAX];
        /* The status reads the applied index: a read txn of its own (the change ends in
         * libraft's callback, outside any batch). */
        MDB_txn *rtxn = NULL;
        int rc = ledger_store_txn_begin(svc->store, NULL, false, &rtxn);
        if (rc == 0)
            rc = status_fill(svc, rtxn, &st, infos, ptrs);
        if (rc != 0) {
            slot_refuse(&reply, rc, NULL);
        } else {
            Qcledger__ReplicaChangeReply r = QCLEDGER__REPLICA_CHANGE_REPLY__INIT;
            r.status = &st;
            slot_pack(&reply, &r.base);
        }
        if (rtxn != NULL)
            ledger_store_txn_abort(rtxn);
    }
    *waiter = NULL;
    finish_slot(svc, &reply);
}

/* The change in flight, once per turn: answered when it ended (ledger_membership.h). */
static void change_tick(ledger_service_t *svc)
{
    svc_change_t *c = svc->change;
    if (c == NULL)
        return;
    int rc = ledger_membership_tick(c->m, ops_time_mono_ms());
    if (rc == LEDGER_MEMBERSHIP_PENDING)
        return;
    char why[LEDGER_MEMBERSHIP_WHY_MAX + 32];
    snprintf(why, sizeof why, "replica %" PRIu64 ": %s", ledger_membership_id(c->m),
             ledger_membership_why(c->m));
    change_reply(svc, &c->waiter, rc, rc == 0 ? NULL : why);
    ledger_membership_destroy(&c->m);
    svc->change = NULL;
    free(c);
}

/* add_replica / remove_replica on the leader: starts the change; the reply waits for it. */
static void start_change(ledger_service_t *svc, svc_slot_t *slot)
{
    struct raft *rf = ledger_replica_raft(svc->replica);
    bool add = strcmp(slot->method->name, "add_replica") == 0;
    ledger_replica_peer_t peer;
    memset(&peer, 0, sizeof peer);
    if (add) {
        Qcledger__AddReplicaRequest *m = (Qcledger__AddReplicaRequest *)slot_unpack(
            slot, &qcledger__add_replica_request__descriptor);
        if (m == NULL)
            return;
        char line[4 * LEDGER_REPLICA_ADDRESS_MAX];
        snprintf(line, sizeof line, "%" PRIu64 " %s %s %s", m->id, m->raft_address, m->endpoint,
                 m->raft_public_key);
        int rc = ledger_replica_parse_peer(line, &peer);
        qcledger__add_replica_request__free_unpacked(m, NULL);
        if (rc != 0) {
            slot_refuse(slot, QC_EINVAL,
                        "want id >= 1, raft_address host:port, endpoint tcp://host:port and a "
                        "40-character Z85 key");
            return;
        }
    } else {
        Qcledger__RemoveReplicaRequest *m = (Qcledger__RemoveReplicaRequest *)slot_unpack(
            slot, &qcledger__remove_replica_request__descriptor);
        if (m == NULL)
            return;
        peer.id = m->id;
        qcledger__remove_replica_request__free_unpacked(m, NULL);
        if (peer.id == 0 || peer.id == ledger_replica_id(svc->replica)) {
            slot_refuse(slot, QC_EINVAL, "a leader does not remove itself (nor replica 0)");
            return;
        }
    }
    if (svc->change != NULL) {
        svc_change_t *c = svc->change;
        /* The same add again (its first qcctl gave up waiting): it waits instead. */
        if (add && c->add && ledger_membership_id(c->m) == peer.id) {
            if (c->waiter != NULL)
                change_reply(svc, &c->waiter, QC_EBUSY, "a later add of the same replica waits");
            c->waiter = slot->req;
            slot->req = NULL;
            return;
        }
        slot_refuse(slot, QC_EBUSY, "a membership change is in progress: try again");
        return;
    }
    svc_change_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        slot_refuse(slot, QC_ENOMEM, NULL);
        return;
    }
    /* The links learn the new replica's address and key before libraft sends it anything. */
    if (add && ledger_replica_add_peer(svc->replica, &peer) != 0) {
        free(c);
        slot_refuse(slot, QC_EFULL, "the peer table is full");
        return;
    }
    uint64_t now = ops_time_mono_ms();
    int rc = add ? ledger_membership_add(rf, peer.id, peer.address, now, &c->m)
                 : ledger_membership_remove(rf, peer.id, now, &c->m);
    if (rc != 0) {
        free(c);
        if (rc < 0)
            slot_refuse(slot, rc, NULL);
        else
            change_reply(svc, &slot->req, 0, NULL); /* nothing to change */
        return;
    }
    c->add = add;
    c->waiter = slot->req;
    slot->req = NULL;
    svc->change = c;
}

/* One batch in replica mode. */
static void replica_serve(ledger_service_t *svc, size_t n, int signed_count)
{
    uint64_t wall = ops_time_wall_ms();
    struct raft *rf = ledger_replica_raft(svc->replica);
    bool leader = raft_state(rf) == RAFT_LEADER;
    if (!leader) {
        svc->ready_term = 0;
        svc->next_deadline_ms = 0;
    } else if (svc->ready_term != rf->current_term) {
        leader_barrier(svc);
    }
    bool ready = leader && svc->ready_term == rf->current_term;
    size_t writes = 0, reads = 0;
    for (size_t i = 0; i < n; i++) {
        svc_slot_t *slot = &svc->slots[i];
        admit(svc, slot);
        assert(slot->method != NULL || slot->code < 0); /* invariant 2 */
        assert(slot->method == NULL || slot->code == 0);
        if (slot->method == NULL)
            continue;
        if (slot->method->everywhere) {
            reads++;
            continue;
        }
        if (!leader)
            refuse_not_leader(svc, slot);
        else if (!ready)
            hold(svc, slot);
        else if (slot->method->kind == KIND_CHANGE)
            start_change(svc, slot);
        else if (slot->method->kind == KIND_WRITE)
            writes++;
        else
            reads++;
        if (slot->req == NULL || slot->code != 0 || slot->method->kind == KIND_CHANGE)
            slot->method = NULL; /* answered, held or waiting for its change */
    }
    if (ready) {
        replica_writes(svc, n, writes, signed_count, wall);
        propose_digest(svc, wall);
    }
    MDB_txn *rtxn = NULL;
    int rc = reads > 0 ? ledger_store_txn_begin(svc->store, NULL, false, &rtxn) : 0;
    for (size_t i = 0; reads > 0 && i < n; i++) {
        svc_slot_t *slot = &svc->slots[i];
        if (slot->method == NULL || slot->method->kind != KIND_READ || slot->req == NULL)
            continue;
        if (rc != 0)
            slot_refuse(slot, rc, NULL);
        else
            slot->method->read(svc, rtxn, slot);
    }
    if (rtxn != NULL)
        ledger_store_txn_abort(rtxn);
    for (size_t i = 0; i < n; i++)
        finish_slot(svc, &svc->slots[i]);
}

/* After each turn of the loop: health from the fsm, the peer table after SIGHUP, and at most
 * every SVC_GAUGES_PERIOD_MS the outbox gauges from the applied state (the leader also sets
 * them after each of its entries; a follower only here). */
static void replica_housekeeping(ledger_service_t *svc)
{
    ledger_fsm_stats_t st;
    ledger_fsm_stats(svc->fsm, &st);
    atomic_store(&svc->last_commit_rc, st.apply_error);
    uint64_t now = ops_time_mono_ms();
    if (now >= svc->gauges_due_ms) {
        svc->gauges_due_ms = now + SVC_GAUGES_PERIOD_MS;
        MDB_txn *rtxn = NULL;
        if (ledger_store_txn_begin(svc->store, NULL, false, &rtxn) == 0) {
            outbox_gauges(svc, rtxn);
            ledger_store_txn_abort(rtxn);
        }
    }
    ledger_repair_tick(svc->repair, now);
    uint64_t hup = ops_signal_hup_generation();
    if (hup != svc->hup_seen) {
        svc->hup_seen = hup;
        /* A table that does not parse, or links that refuse it, are logged by the reload and
         * keep the old table: the replica serves on, and the next SIGHUP tries again. */
        QC_IGNORE(ledger_replica_reload(svc->replica));
    }
    change_tick(svc);
}

/* Waits at most wait_ns for the socket to signal activity. zmq_poll() counts in
 * milliseconds, five times the default batch wait, so this waits on the socket's
 * notification descriptor with pselect() instead: the descriptor only says "look again",
 * and the caller always looks (recv without waiting) before and after. */
static bool wait_readable(void *sock, uint64_t wait_ns)
{
    int fd = -1;
    size_t len = sizeof fd;
    if (zmq_getsockopt(sock, ZMQ_FD, &fd, &len) != 0 || fd < 0 || fd >= FD_SETSIZE)
        return false;
    fd_set set;
    FD_ZERO(&set);
    FD_SET(fd, &set);
    struct timespec ts = {.tv_sec = (time_t)(wait_ns / 1000000000ull),
                          .tv_nsec = (long)(wait_ns % 1000000000ull)};
    return pselect(fd + 1, &set, NULL, NULL, &ts, NULL) > 0;
}

/* Waits at most wait_ms for a request or an answer of the signer. Returns 0, or QC_EIO when
 * the context is gone. */
static int wait_any(ledger_service_t *svc, int wait_ms)
{
    zmq_pollitem_t items[3 + PROTO_RPC_ENDPOINTS_MAX];
    items[0] = (zmq_pollitem_t){.socket = proto_rpc_server_socket(svc->srv), .events = ZMQ_POLLIN};
    int n = 1 + ledger_signer_pollitems(svc->signer, &items[1], PROTO_RPC_ENDPOINTS_MAX);
    items[n++] = (zmq_pollitem_t){.fd = ledger_query_fd(svc->query), .events = ZMQ_POLLIN};
    int t = ledger_signer_next_timeout_ms(svc->signer);
    if (t >= 0 && t < wait_ms)
        wait_ms = t;
    if (svc->replica != NULL) {
        /* libraft's loop: its backend descriptor is readable when any of its sockets, files
         * or wake-ups is, and its next timer bounds the wait. */
        items[n++] = (zmq_pollitem_t){.fd = ledger_replica_fd(svc->replica), .events = ZMQ_POLLIN};
        t = ledger_replica_timeout_ms(svc->replica);
        if (t >= 0 && t < wait_ms)
            wait_ms = t;
    }
    if (zmq_poll(items, n, wait_ms) < 0 && errno != EINTR)
        return errno == ETERM ? QC_EIO : 0;
    return 0;
}

/* Takes up to batch_max requests after the first n already in the batch: those waiting now,
 * plus those arriving within batch_wait_us. Returns how many in all, or a negative code when
 * the socket failed. */
static int gather(ledger_service_t *svc, int first_wait_ms, size_t n)
{
    assert(n <= svc->batch_max);
    int rc = wait_any(svc, first_wait_ms);
    if (rc != 0)
        return rc;
    int wait_ms = 0;
    bool waited_extra = false;
    uint64_t extra_end_ns = 0;
    while (n < svc->batch_max) {
        proto_rpc_request_t *req = NULL;
        rc = proto_rpc_server_recv(svc->srv, wait_ms, &req);
        if (rc == 0) {
            assert(req != NULL);
            assert(svc->slots[n].req == NULL); /* invariant 1: the last batch left it empty */
            svc->slots[n++].req = req;
            wait_ms = 0;
            continue;
        }
        if (rc != QC_ETIMEOUT)
            return n > 0 ? (int)n : rc;
        if (n == 0 || svc->batch_wait_us == 0)
            break;
        /* Nothing more right now: give stragglers a bounded moment to join the batch. */
        uint64_t now_ns = ops_time_mono_ns();
        if (!waited_extra) {
            waited_extra = true;
            extra_end_ns = now_ns + (uint64_t)svc->batch_wait_us * 1000;
        }
        if (now_ns >= extra_end_ns)
            break;
        if (!wait_readable(proto_rpc_server_socket(svc->srv), extra_end_ns - now_ns))
            break;
        wait_ms = 0;
    }
    assert(n <= svc->batch_max);
    return (int)n;
}

int ledger_service_run(ledger_service_t *svc)
{
    assert(svc != NULL);
    load_next_deadline(svc);
    while (!ops_signal_stop_requested()) {
        uint64_t wall = ops_time_wall_ms();
        int wait_ms = LEDGER_POLL_MS;
        if (svc->next_deadline_ms != 0) {
            uint64_t left = svc->next_deadline_ms > wall ? svc->next_deadline_ms - wall : 0;
            if (left < (uint64_t)wait_ms)
                wait_ms = (int)left;
        }
        size_t held = svc->replica != NULL ? take_held(svc) : 0;
        int n = gather(svc, held > 0 ? 0 : wait_ms, held);
        if (n < 0) {
            if (ops_signal_stop_requested())
                break;
            ops_log(OPS_LOG_ERROR, "ledger.socket_failed", "error", qc_strerror(n), NULL);
            return QC_EIO;
        }
        ledger_query_reply(svc->query, svc->srv); /* the answers of finished queries */
        /* A device revoked in the CRL is refused enrollment from the next batch on. */
        if (svc->trust != NULL && proto_trust_watch_poll(svc->trust, ops_time_mono_ms(),
                                                         ops_signal_hup_generation()) == 1)
            ledger_saga_set_trust(svc->saga, proto_trust_watch_store(svc->trust));
        /* libraft's turn: messages, disk, timers; committed entries apply and their requests
         * are answered (proposal_applied). */
        if (svc->replica != NULL)
            ledger_replica_run(svc->replica);
        /* The signer's answers: outcomes go out now, allows are stored by this batch. */
        int signed_count = ledger_signer_process(svc->signer);
        if (svc->replica != NULL) {
            replica_serve(svc, (size_t)n, signed_count);
            replica_housekeeping(svc);
        } else {
            serve_batch(svc, (size_t)n, signed_count);
        }
        uint64_t mono = ops_time_mono_ms();
        ledger_scrub_tick(svc->scrub, mono);
        if (mono >= svc->next_reader_check_ms) {
            svc->next_reader_check_ms = mono + LEDGER_READER_CHECK_MS;
            /* A failure is logged by the store; clearing stale readers is housekeeping the
             * next check retries, never a reason to stop serving. */
            QC_IGNORE(ledger_store_reader_check(svc->store, NULL));
            uint64_t used = 0;
            ledger_store_nearly_full(svc->store, &used, NULL);
            ops_gauge_set(svc->m_map_used, (int64_t)used);
        }
        if (mono >= svc->next_storage_poll_ms) {
            svc->next_storage_poll_ms = mono + LEDGER_STORAGE_POLL_MS;
            /* Between turns no transaction of ours is open: the map may grow here. */
            ops_storage_state_t st = ops_storage_poll(svc->storage, true);
            int last = atomic_load(&svc->last_commit_rc);
            /* Space came back: the next write will tell; until then health says ok. */
            if ((st == OPS_STORAGE_OK || st == OPS_STORAGE_MAP_HIGH) &&
                (last == QC_ENOSPACE || last == QC_EFULL) && svc->replica == NULL)
                atomic_store(&svc->last_commit_rc, 0);
        }
    }
    ops_log(OPS_LOG_INFO, "ledger.stopping", NULL);
    return 0;
}

/* ------------------------------------------------------------ start and stop */

bool ledger_service_healthy(void *arg, char *why, size_t why_cap)
{
    ledger_service_t *svc = arg;
    if (ledger_store_corrupt(svc->store)) {
        snprintf(why, why_cap, "a stored record failed its checksum: writes are stopped");
        return false;
    }
    /* A full disk or map first: it says what is refused, what is served and what to do. */
    if (!ops_storage_healthy(svc->storage, why, why_cap))
        return false;
    int rc = atomic_load(&svc->last_commit_rc);
    if (rc != 0) {
        snprintf(why, why_cap, "%s: %s",
                 svc->replica != NULL ? "this replica cannot apply the log" : "last commit failed",
                 qc_strerror(rc));
        return false;
    }
    return true;
}

static void init_metrics(ledger_service_t *svc)
{
    svc->m_commits = ops_counter("qc_ledger_commits_total", "Group commits (fsynced)");
    svc->m_commit_failures =
        ops_counter("qc_ledger_commit_failures_total", "Group commits that failed");
    svc->m_commit_seconds =
        ops_histogram("qc_ledger_commit_seconds", "Apply and commit time of a group commit");
    for (int i = 0; i < SVC_BATCH_BUCKETS; i++) {
        char name[SVC_METRIC_NAME_MAX];
        if (svc_batch_le[i] > LEDGER_BATCH_MAX)
            snprintf(name, sizeof name, "qc_ledger_batch_size_bucket{le=\"+Inf\"}");
        else
            snprintf(name, sizeof name, "qc_ledger_batch_size_bucket{le=\"%u\"}", svc_batch_le[i]);
        svc->m_batch_bucket[i] = ops_counter(name, "Writes per group commit");
    }
    svc->m_batch_count = ops_counter("qc_ledger_batch_size_count", "Group commits with writes");
    svc->m_batch_sum = ops_counter("qc_ledger_batch_size_sum", "Writes in group commits");
    svc->m_expired = ops_counter("qc_ledger_expired_total", "Loads compensated at their deadline");
    svc->m_denied = ops_counter("qc_ledger_denied_total", "Requests from keys not allowed");
    svc->m_outbox_depth = ops_gauge("qc_ledger_outbox_depth", "Audit events not yet relayed");
    svc->m_map_used = ops_gauge("qc_ledger_map_used_bytes", "LMDB map bytes in use");
}

/* Replica mode's node, once the server and the signing stage exist (its callbacks answer
 * through them). */
static int replica_start(ledger_service_t *svc, const ledger_service_config_t *cfg)
{
    char raft_dir[SVC_PATH_MAX];
    int n = cfg->raft_dir != NULL ? snprintf(raft_dir, sizeof raft_dir, "%s", cfg->raft_dir)
                                  : snprintf(raft_dir, sizeof raft_dir, "%s/raft", cfg->data_dir);
    if (n < 0 || (size_t)n >= sizeof raft_dir)
        return QC_ECONFIG;
    ledger_replica_config_t rcfg = {.id = cfg->replica_id,
                                    .replicas_file = cfg->replicas_file,
                                    .raft_dir = raft_dir,
                                    .raft_key = cfg->raft_key,
                                    .join = cfg->join,
                                    .snapshot_threshold = cfg->snapshot_threshold,
                                    .snapshot_trailing = cfg->snapshot_trailing,
                                    .fsm = svc->fsm};
    svc->hup_seen = ops_signal_hup_generation();
    int rc = ledger_replica_new(&rcfg, &svc->replica);
    if (rc != 0)
        return rc;
    ledger_repair_config_t pcfg = {.zctx = svc->zctx,
                                   .curve_key_path = cfg->curve_key_path,
                                   .fsm = svc->fsm,
                                   .replica = svc->replica,
                                   .enabled = cfg->repair};
    return ledger_repair_new(&pcfg, &svc->repair);
}

int ledger_service_new(const ledger_service_config_t *cfg, ledger_service_t **out)
{
    assert(cfg != NULL);
    assert(out != NULL);
    *out = NULL;
    if (cfg->listen == NULL || cfg->curve_key_path == NULL || cfg->allow_keys == NULL ||
        cfg->data_dir == NULL || cfg->allow_cert == NULL || cfg->batch_max == 0 ||
        cfg->batch_max > LEDGER_BATCH_MAX || cfg->batch_wait_us > LEDGER_BATCH_WAIT_US_MAX ||
        cfg->shard_count == 0 || cfg->shard_count > PROTO_SHARD_COUNT_MAX ||
        cfg->shard >= cfg->shard_count || cfg->deadline_ms < LEDGER_DEADLINE_MIN_MS ||
        cfg->deadline_ms > LEDGER_DEADLINE_MAX_MS || cfg->signer_timeout_ms <= 0 ||
        cfg->signer_key == NULL || (cfg->signer == NULL) == (cfg->signer_file == NULL) ||
        (cfg->replica_id != 0 && (cfg->replicas_file == NULL || cfg->raft_key == NULL ||
                                  cfg->snapshot_threshold < LEDGER_SNAPSHOT_THRESHOLD_MIN ||
                                  cfg->snapshot_threshold > LEDGER_SNAPSHOT_THRESHOLD_MAX ||
                                  cfg->snapshot_trailing > LEDGER_SNAPSHOT_TRAILING_MAX))) {
        ops_log(OPS_LOG_ERROR, "ledger.config_invalid", "error",
                "listen, curve_key, allow_keys, data_dir, allow_cert, signer (or signer_file) "
                "and signer_key are required (and replicas_file, raft_key with replica_id); "
                "batch, shard, deadline and snapshot settings must be in range",
                NULL);
        return QC_ECONFIG;
    }
    ledger_service_t *svc = calloc(1, sizeof *svc);
    if (svc == NULL)
        return QC_ENOMEM;
    svc->shard = cfg->shard;
    svc->shard_count = cfg->shard_count;
    svc->batch_max = cfg->batch_max;
    svc->batch_wait_us = cfg->batch_wait_us;
    svc->deadline_ms = cfg->deadline_ms;
    svc->digest_interval_ms = cfg->digest_interval_ms;
    svc->next_digest_ms = ops_time_wall_ms() + cfg->digest_interval_ms;
    init_metrics(svc);
    proto_curve_keypair_t keys;
    memset(&keys, 0, sizeof keys);
    char union_path[SVC_PATH_MAX];
    int rc;
    svc->slots = calloc(cfg->batch_max, sizeof *svc->slots);
    svc->load = malloc(sizeof *svc->load);
    svc->signed_allows = calloc(LEDGER_SIGNER_PENDING_MAX, sizeof *svc->signed_allows);
    if (svc->slots == NULL || svc->load == NULL || svc->signed_allows == NULL) {
        rc = QC_ENOMEM;
        goto err;
    }
    if ((rc = ledger_outbox_new(cfg->audit_consumers, &svc->outbox)) != 0)
        goto err;
    if ((rc = proto_key_load_pem(cfg->allow_cert, &svc->allow_key)) != 0) {
        ops_log(OPS_LOG_ERROR, "ledger.allow_cert_invalid", "path", cfg->allow_cert, NULL);
        rc = QC_ECONFIG;
        goto err;
    }
    if (cfg->replica_id != 0) {
        /* Replica mode: the fsm owns the LMDB; the service reads it and admits against it. */
        ledger_fsm_config_t fcfg = {.dir = cfg->data_dir,
                                    .map_size = cfg->map_size,
                                    .allow_key = svc->allow_key,
                                    .shard = cfg->shard,
                                    .shard_count = cfg->shard_count};
        if ((rc = ledger_fsm_new(&fcfg, &svc->fsm)) != 0)
            goto err;
        svc->store = ledger_fsm_store(svc->fsm);
        svc->held = calloc(LEDGER_HELD_MAX, sizeof *svc->held);
        if (svc->held == NULL) {
            rc = QC_ENOMEM;
            goto err;
        }
    } else if ((rc = ledger_store_open(cfg->data_dir, cfg->map_size, &svc->store)) != 0 ||
               (rc = ledger_store_bind_shard(svc->store, cfg->shard, cfg->shard_count)) != 0) {
        goto err;
    }
    /* A restored copy is brought forward from the audit log before anything is served. */
    if ((rc = ledger_replay_pending(svc->store, svc->allow_key, cfg->shard, cfg->shard_count,
                                    cfg->data_dir)) != 0 ||
        (rc = ledger_backup_new(svc->store, cfg->shard, cfg->shard_count, cfg->map_size,
                                &svc->backup)) != 0)
        goto err;
    ops_storage_config_t stc = {.name = "ledger",
                                .dir = cfg->data_dir,
                                .env = ledger_store_env(svc->store),
                                .map_max = cfg->map_max,
                                .map_max_key = "map_max_mb",
                                .refuse_high = cfg->replica_id == 0};
    if ((rc = ops_storage_new(&stc, &svc->storage)) != 0)
        goto err;
    if (cfg->ca_path != NULL &&
        (rc = proto_trust_watch_new("ledger", cfg->ca_path, cfg->crl_path, 0,
                                    ops_signal_hup_generation(), &svc->trust)) != 0) {
        ops_log(OPS_LOG_ERROR, "ledger.ca_invalid", "path", cfg->ca_path, NULL);
        rc = QC_ECONFIG;
        goto err;
    }
    ledger_saga_config_t scfg = {.store = svc->store,
                                 .allow_key = svc->allow_key,
                                 .trust = svc->trust != NULL ? proto_trust_watch_store(svc->trust)
                                                             : NULL,
                                 .shard = cfg->shard,
                                 .shard_count = cfg->shard_count};
    if ((rc = ledger_saga_new(&scfg, &svc->saga)) != 0 ||
        (rc = ledger_query_new(svc->store, svc->saga, cfg->shard, cfg->shard_count, &svc->query)) !=
            0 ||
        (rc = ledger_scrub_new(svc->store, cfg->scrub_per_second, &svc->scrub)) != 0)
        goto err;
    if ((rc = load_keys(svc, cfg, union_path, sizeof union_path)) != 0)
        goto err;
    if ((rc = proto_curve_keypair_load(cfg->curve_key_path, &keys)) != 0) {
        ops_log(OPS_LOG_ERROR, "ledger.curve_key_invalid", "path", cfg->curve_key_path, NULL);
        goto err;
    }
    svc->zctx = zmq_ctx_new();
    if (svc->zctx == NULL) {
        rc = QC_ENOMEM;
        goto err;
    }
    proto_rpc_server_config_t rcfg = {.service = SVC_NAME,
                                      .endpoint = cfg->listen,
                                      .keys = &keys,
                                      .allow_path = union_path,
                                      .allow_any = false};
    if ((rc = proto_rpc_server_new(svc->zctx, &rcfg, &svc->srv)) != 0) {
        ops_log(OPS_LOG_ERROR, "ledger.listen_failed", "endpoint", cfg->listen, "error",
                qc_strerror(rc), NULL);
        goto err;
    }
    /* The ledger asks the signer under its own CURVE identity: the signer signs allows and
     * outcomes only for the keys of its ledger_keys. */
    ledger_signer_config_t sgc = {.zctx = svc->zctx,
                                  .server = svc->srv,
                                  .endpoints = cfg->signer,
                                  .endpoints_path = cfg->signer_file,
                                  .server_public_z85 = cfg->signer_key,
                                  .keys = &keys,
                                  .timeout_ms = cfg->signer_timeout_ms};
    if ((rc = ledger_signer_new(&sgc, &svc->signer)) != 0) {
        ops_log(OPS_LOG_ERROR, "ledger.signer_invalid", "error", qc_strerror(rc), "hint",
                "signer (or signer_file) and signer_key are required", NULL);
        goto err;
    }
    proto_curve_keypair_wipe(&keys);
    if (cfg->replica_id != 0 && (rc = replica_start(svc, cfg)) != 0)
        goto err;
    char shard[32];
    snprintf(shard, sizeof shard, "%u/%u", cfg->shard, cfg->shard_count);
    ops_log(OPS_LOG_INFO, "ledger.started", "listen", cfg->listen, "shard", shard, "data_dir",
            cfg->data_dir, NULL);
    *out = svc;
    return 0;
err:
    proto_curve_keypair_wipe(&keys);
    ledger_service_destroy(&svc);
    return rc;
}

void ledger_service_destroy(ledger_service_t **svc_p)
{
    if (svc_p == NULL || *svc_p == NULL)
        return;
    ledger_service_t *svc = *svc_p;
    /* First libraft: closing it answers the requests waiting for its entries. */
    ledger_replica_destroy(&svc->replica);
    ledger_repair_destroy(&svc->repair); /* after libraft: a leadership transfer calls back */
    if (svc->change != NULL) {
        proto_rpc_request_destroy(&svc->change->waiter);
        ledger_membership_destroy(&svc->change->m);
        free(svc->change);
        svc->change = NULL;
    }
    for (size_t i = 0; i < svc->n_held; i++)
        proto_rpc_request_destroy(&svc->held[i]);
    free(svc->held);
    ledger_signer_destroy(&svc->signer); /* before the server its waiting requests came from */
    ledger_query_destroy(&svc->query);   /* before the store its thread reads */
    proto_rpc_server_destroy(&svc->srv);
    if (svc->zctx != NULL)
        zmq_ctx_term(svc->zctx);
    ledger_saga_destroy(&svc->saga);
    ledger_backup_destroy(&svc->backup); /* waits for a copy that runs: it reads the store */
    ledger_scrub_destroy(&svc->scrub);
    ops_storage_destroy(&svc->storage);
    if (svc->fsm != NULL)
        ledger_fsm_destroy(&svc->fsm); /* it owns the store */
    else
        ledger_store_close(&svc->store);
    proto_trust_watch_destroy(&svc->trust);
    EVP_PKEY_free(svc->allow_key);
    proto_curve_keylist_clear(&svc->service_keys);
    proto_curve_keylist_clear(&svc->admin_keys);
    free(svc->slots);
    free(svc->load);
    free(svc->signed_allows);
    ledger_outbox_destroy(&svc->outbox);
    free(svc);
    *svc_p = NULL;
}
