/* test_ledger_saga.c - every saga transition and refusal, through the saga API on a temp LMDB. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "ops_time.h"
#include "ledger_saga.h"
#include "ledger_store.h"
#include "ledger_testkit.h"
#include "proto_envelope.h"
#include "proto_shard.h"
#include "qc_error.h"
#include "qctest_fs.h"

#define T_MAP_SIZE (64ull << 20)
#define T_DEPOSIT 10000
#define T_AMOUNT 500
#define T_DEADLINE_MS 60000
#define T_ACCOUNT "alice"
#define T_DEVICE "dev-1"

typedef struct fx {
    char dir[QCTEST_PATH_MAX];
    ledger_store_t *store;
    ledger_saga_t *saga;
    EVP_PKEY *bank;
    EVP_PKEY *dev;
    uint8_t *cert;
    size_t cert_len;
    uint64_t now;
    ledger_load_t *load; /* scratch */
    ledger_load_t *load2;
    char why[LEDGER_WHY_MAX];
} fx_t;

/* What must not change when a request is refused. */
typedef struct snap {
    int64_t acct, hold, flt, funding;
    uint64_t outbox, loads, transfers;
} snap_t;

static int64_t balance(fx_t *f, const char *id)
{
    MDB_txn *txn = NULL;
    ledger_account_t a;
    assert_int_equal(ledger_store_txn_begin(f->store, NULL, false, &txn), 0);
    int rc = ledger_store_account_get(f->store, txn, id, &a);
    ledger_store_txn_abort(txn);
    assert_int_equal(rc, 0);
    return a.balance;
}

static snap_t snap(fx_t *f)
{
    snap_t s;
    s.acct = balance(f, T_ACCOUNT);
    s.hold = balance(f, "HOLD:156");
    s.flt = balance(f, "FLOAT:156");
    s.funding = balance(f, "FUNDING:156");
    ledger_check_t c;
    assert_int_equal(ledger_saga_check(f->saga, NULL, &c), 0);
    if (!c.ok)
        for (size_t i = 0; i < c.n_problems; i++)
            fprintf(stderr, "check: %s\n", c.problems[i]);
    assert_true(c.ok);
    s.outbox = c.outbox_depth;
    s.loads = c.loads;
    s.transfers = c.transfers;
    return s;
}

static void assert_same(snap_t a, snap_t b)
{
    assert_int_equal(a.acct, b.acct);
    assert_int_equal(a.hold, b.hold);
    assert_int_equal(a.flt, b.flt);
    assert_int_equal(a.funding, b.funding);
    assert_int_equal(a.outbox, b.outbox);
    assert_int_equal(a.loads, b.loads);
    assert_int_equal(a.transfers, b.transfers);
}

static void open_account(fx_t *f, const char *id, int64_t load_max, int64_t daily_max)
{
    ledger_account_t spec = {.currency = TK_CURRENCY, .load_max = load_max, .daily_max = daily_max};
    snprintf(spec.id, sizeof spec.id, "%s", id);
    ledger_account_t out;
    assert_int_equal(ledger_saga_open_account(f->saga, NULL, f->now, &spec, &out, f->why), 0);
}

static void deposit(fx_t *f, const char *id, int64_t amount)
{
    uint8_t txn[16];
    tk_txn_id(txn);
    ledger_account_t out;
    assert_int_equal(ledger_saga_deposit(f->saga, NULL, f->now, id, amount, txn, &out, f->why), 0);
}

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);
    assert_int_equal(qctest_dir_new("qc-ledger-saga", f->dir), 0);
    assert_int_equal(ledger_store_open(f->dir, T_MAP_SIZE, &f->store), 0);
    f->bank = qctest_key_new();
    f->dev = qctest_key_new();
    qctest_cert_self_der(f->dev, T_DEVICE, &f->cert, &f->cert_len);
    ledger_saga_config_t cfg = {.store = f->store, .allow_key = f->bank, .shard_count = 1};
    assert_int_equal(ledger_saga_new(&cfg, &f->saga), 0);
    f->now = ops_time_wall_ms();
    f->load = malloc(sizeof *f->load);
    f->load2 = malloc(sizeof *f->load2);
    open_account(f, T_ACCOUNT, 0, 0);
    deposit(f, T_ACCOUNT, T_DEPOSIT);
    ledger_device_t *d = malloc(sizeof *d);
    assert_int_equal(ledger_saga_enroll_device(f->saga, NULL, f->now, T_ACCOUNT, f->cert,
                                               f->cert_len, 0, 0, d, f->why),
                     0);
    free(d);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    ledger_saga_destroy(&f->saga);
    ledger_store_close(&f->store);
    EVP_PKEY_free(f->bank);
    EVP_PKEY_free(f->dev);
    free(f->cert);
    free(f->load);
    free(f->load2);
    assert_int_equal(qctest_dir_remove(f->dir), 0);
    free(f);
    return 0;
}

/* A signed request for the default device, and the allow the bank stored for it (after
 * reserve()). */
typedef struct pair {
    tk_load_t l;
    uint64_t deadline; /* absolute; 0 = f->now + T_DEADLINE_MS */
    uint8_t *req, *allow;
    size_t req_len, allow_len;
} pair_t;

static pair_t make_pair(fx_t *f, int64_t amount, uint64_t counter, uint64_t deadline)
{
    pair_t p = {
        .l = {.device_id = T_DEVICE, .account_id = T_ACCOUNT, .amount = amount, .counter = counter},
        .deadline = deadline};
    tk_txn_id(p.l.txn_id);
    tk_request(f->dev, &p.l, &p.req, &p.req_len);
    return p;
}

static void free_pair(pair_t *p)
{
    free(p->req);
    free(p->allow);
    p->allow = NULL;
}

/* The bank's signature over the allow body the ledger builds for load l, as the signer
 * would return it. */
static void bank_signs(fx_t *f, EVP_PKEY *key, const ledger_load_t *l, uint8_t **out,
                       size_t *out_len)
{
    uint8_t *body = NULL;
    size_t body_len = 0;
    assert_int_equal(ledger_saga_allow_body(l, &body, &body_len), 0);
    assert_int_equal(
        proto_envelope_sign(PROTO_TYPE_LOAD_ALLOW, body, body_len, key, 1, NULL, 0, out, out_len),
        0);
    free(body);
    (void)f;
}

/* Reserve as the service runs it: the debit, then the bank's allow stored with the load. The
 * stored allow becomes p->allow (what the device would get). */
static int reserve_on(fx_t *f, ledger_saga_t *saga, pair_t *p)
{
    uint64_t deadline = p->deadline ? p->deadline : f->now + T_DEADLINE_MS;
    int rc = ledger_saga_reserve(saga, NULL, f->now, deadline, p->req, p->req_len, f->load, f->why);
    if (rc != 0 || f->load->state != QUANCUN__LOAD_STATE__LOAD_RESERVED)
        return rc;
    if (f->load->allow_len == 0) {
        uint8_t *allow = NULL;
        size_t allow_len = 0;
        bank_signs(f, f->bank, f->load, &allow, &allow_len);
        rc = ledger_saga_store_allow(saga, NULL, f->now, p->l.txn_id, allow, allow_len, f->load,
                                     f->why);
        free(allow);
        if (rc != 0)
            return rc;
    }
    if (p->allow == NULL) {
        p->allow = malloc(f->load->allow_len);
        memcpy(p->allow, f->load->allow, f->load->allow_len);
        p->allow_len = f->load->allow_len;
    }
    return 0;
}

static int reserve(fx_t *f, pair_t *p)
{
    return reserve_on(f, f->saga, p);
}

static int settle(fx_t *f, const pair_t *p, EVP_PKEY *key, uint64_t counter_after,
                  Quancun__ReportStatus status)
{
    uint8_t *rep = NULL;
    size_t rep_len = 0;
    /* A pair never reserved has no allow: its report names the request's body instead. */
    tk_report(key, &p->l, counter_after, status, p->allow != NULL ? p->allow : p->req,
              p->allow != NULL ? p->allow_len : p->req_len, &rep, &rep_len);
    int rc = ledger_saga_settle(f->saga, NULL, f->now, p->l.txn_id, rep, rep_len, f->load, f->why);
    free(rep);
    return rc;
}

static Quancun__LoadState state_of(fx_t *f, const uint8_t *txn_id)
{
    MDB_txn *txn = NULL;
    assert_int_equal(ledger_store_txn_begin(f->store, NULL, false, &txn), 0);
    int rc = ledger_store_load_get(f->store, txn, txn_id, f->load2);
    ledger_store_txn_abort(txn);
    return rc == 0 ? f->load2->state : QUANCUN__LOAD_STATE__LOAD_NONE;
}

/* ------------------------------------------------------------ transitions */

static void test_reserve_then_confirm(void **state)
{
    fx_t *f = *state;
    pair_t p = make_pair(f, T_AMOUNT, 0, 0);
    assert_int_equal(reserve(f, &p), 0);
    assert_int_equal(f->load->state, QUANCUN__LOAD_STATE__LOAD_RESERVED);
    assert_memory_equal(f->load->allow, p.allow, p.allow_len);
    snap_t s = snap(f);
    assert_int_equal(s.acct, T_DEPOSIT - T_AMOUNT);
    assert_int_equal(s.hold, T_AMOUNT);
    assert_int_equal(settle(f, &p, f->dev, 1, QUANCUN__REPORT_STATUS__REPORT_APPLIED), 0);
    assert_int_equal(f->load->state, QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
    s = snap(f);
    assert_int_equal(s.acct, T_DEPOSIT - T_AMOUNT);
    assert_int_equal(s.hold, 0);
    assert_int_equal(s.flt, T_AMOUNT);
    assert_int_equal(s.funding, -T_DEPOSIT);
    free_pair(&p);
}

/* A new load is never born flagged, whatever the caller's scratch record held: the saga
 * used to zero the record only up to its signed artefacts, so the flag of a late-confirmed
 * load read before into the same scratch was stored with the new one (and replicas, whose
 * scratch differs, diverged: the Raft simulation found it). */
static void test_reserve_clears_scratch_flag(void **state)
{
    fx_t *f = *state;
    pair_t p = make_pair(f, T_AMOUNT, 0, 0);
    f->load->flagged = true;
    assert_int_equal(reserve(f, &p), 0);
    assert_false(f->load->flagged);
    MDB_txn *txn = NULL;
    assert_int_equal(ledger_store_txn_begin(f->store, NULL, false, &txn), 0);
    assert_int_equal(ledger_store_load_get(f->store, txn, p.l.txn_id, f->load2), 0);
    ledger_store_txn_abort(txn);
    assert_false(f->load2->flagged);
    free_pair(&p);
}

static void test_settle_rejected_compensates(void **state)
{
    fx_t *f = *state;
    pair_t p = make_pair(f, T_AMOUNT, 0, 0);
    assert_int_equal(reserve(f, &p), 0);
    assert_int_equal(settle(f, &p, f->dev, 0, QUANCUN__REPORT_STATUS__REPORT_REJECTED), 0);
    assert_int_equal(f->load->state, QUANCUN__LOAD_STATE__LOAD_COMPENSATED);
    assert_non_null(strstr(f->load->reason, "REPORT_REJECTED"));
    snap_t s = snap(f);
    assert_int_equal(s.acct, T_DEPOSIT);
    assert_int_equal(s.hold, 0);
    assert_int_equal(s.flt, 0);
    /* The same report again changes nothing. */
    assert_int_equal(settle(f, &p, f->dev, 0, QUANCUN__REPORT_STATUS__REPORT_REJECTED), 0);
    assert_same(s, snap(f));
    free_pair(&p);
}

static void test_settle_mismatch_compensates(void **state)
{
    fx_t *f = *state;
    pair_t p = make_pair(f, T_AMOUNT, 0, 0);
    assert_int_equal(reserve(f, &p), 0);
    /* APPLIED but counter_after is not counter + 1: not this allow applied. */
    assert_int_equal(settle(f, &p, f->dev, 5, QUANCUN__REPORT_STATUS__REPORT_APPLIED), 0);
    assert_int_equal(f->load->state, QUANCUN__LOAD_STATE__LOAD_COMPENSATED);
    assert_string_equal(f->load->reason, "REPORT_MISMATCH");
    assert_int_equal(snap(f).acct, T_DEPOSIT);
    free_pair(&p);
}

static void test_deadline_compensates(void **state)
{
    fx_t *f = *state;
    pair_t p = make_pair(f, T_AMOUNT, 0, f->now + 50);
    assert_int_equal(reserve(f, &p), 0);
    size_t n = 99;
    uint64_t next = 0;
    assert_int_equal(ledger_saga_expire(f->saga, NULL, f->now, LEDGER_EXPIRE_BATCH_MAX, &n, &next),
                     0);
    assert_int_equal(n, 0);
    assert_int_equal(next, f->now + 50);
    assert_int_equal(state_of(f, p.l.txn_id), QUANCUN__LOAD_STATE__LOAD_RESERVED);
    assert_int_equal(
        ledger_saga_expire(f->saga, NULL, f->now + 51, LEDGER_EXPIRE_BATCH_MAX, &n, &next), 0);
    assert_int_equal(n, 1);
    assert_int_equal(next, 0);
    assert_int_equal(state_of(f, p.l.txn_id), QUANCUN__LOAD_STATE__LOAD_COMPENSATED);
    assert_string_equal(f->load2->reason, "REPORT_MISSING");
    snap_t s = snap(f);
    assert_int_equal(s.acct, T_DEPOSIT);
    assert_int_equal(s.hold, 0);
    /* Nothing left to expire. */
    assert_int_equal(
        ledger_saga_expire(f->saga, NULL, f->now + 100, LEDGER_EXPIRE_BATCH_MAX, &n, NULL), 0);
    assert_int_equal(n, 0);
    free_pair(&p);
}

static void test_late_confirm_by_report_overdraws(void **state)
{
    fx_t *f = *state;
    pair_t p = make_pair(f, T_DEPOSIT, 0, f->now + 50);
    assert_int_equal(reserve(f, &p), 0);
    assert_int_equal(ledger_saga_expire(f->saga, NULL, f->now + 60, 10, NULL, NULL), 0);
    assert_int_equal(state_of(f, p.l.txn_id), QUANCUN__LOAD_STATE__LOAD_COMPENSATED);
    /* A second device on the account spends the money back in the meantime. */
    EVP_PKEY *k2 = qctest_key_new();
    uint8_t *cert2 = NULL;
    size_t cert2_len = 0;
    qctest_cert_self_der(k2, "dev-2", &cert2, &cert2_len);
    ledger_device_t *d = malloc(sizeof *d);
    assert_int_equal(ledger_saga_enroll_device(f->saga, NULL, f->now, T_ACCOUNT, cert2, cert2_len,
                                               0, 0, d, f->why),
                     0);
    pair_t q = {.l = {.device_id = "dev-2", .account_id = T_ACCOUNT, .amount = T_DEPOSIT}};
    tk_txn_id(q.l.txn_id);
    tk_request(k2, &q.l, &q.req, &q.req_len);
    assert_int_equal(reserve(f, &q), 0);
    assert_int_equal(balance(f, T_ACCOUNT), 0);
    /* The first device's APPLIED report arrives late: LATE_CONFIRMED, account below 0. */
    assert_int_equal(settle(f, &p, f->dev, 1, QUANCUN__REPORT_STATUS__REPORT_APPLIED), 0);
    assert_int_equal(f->load->state, QUANCUN__LOAD_STATE__LOAD_LATE_CONFIRMED);
    assert_true(f->load->flagged);
    snap_t s = snap(f);
    assert_int_equal(s.acct, -T_DEPOSIT);
    assert_int_equal(s.flt, T_DEPOSIT);
    assert_int_equal(s.hold, T_DEPOSIT);
    MDB_txn *txn = NULL;
    ledger_account_t a;
    assert_int_equal(ledger_store_txn_begin(f->store, NULL, false, &txn), 0);
    assert_int_equal(ledger_store_account_get(f->store, txn, T_ACCOUNT, &a), 0);
    ledger_store_txn_abort(txn);
    assert_true(a.overdrawn);
    /* Idempotent: the same late report changes nothing more. */
    assert_int_equal(settle(f, &p, f->dev, 1, QUANCUN__REPORT_STATUS__REPORT_APPLIED), 0);
    assert_same(s, snap(f));
    free_pair(&p);
    free_pair(&q);
    free(d);
    free(cert2);
    EVP_PKEY_free(k2);
}

/* ------------------------------------------------------------ reconciliation */

static void test_reconcile_counter_proves_applied(void **state)
{
    fx_t *f = *state;
    pair_t p1 = make_pair(f, T_AMOUNT, 0, 0);
    assert_int_equal(reserve(f, &p1), 0);
    pair_t p2 = make_pair(f, T_AMOUNT, 1, 0);
    assert_int_equal(reserve(f, &p2), 0);
    assert_int_equal(state_of(f, p1.l.txn_id), QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
    assert_string_equal(f->load2->reason, "COUNTER_PROVES_APPLIED");
    assert_int_equal(state_of(f, p2.l.txn_id), QUANCUN__LOAD_STATE__LOAD_RESERVED);
    snap_t s = snap(f);
    assert_int_equal(s.acct, T_DEPOSIT - 2 * T_AMOUNT);
    assert_int_equal(s.hold, T_AMOUNT);
    assert_int_equal(s.flt, T_AMOUNT);
    free_pair(&p1);
    free_pair(&p2);
}

static void test_reconcile_counter_proves_not_applied(void **state)
{
    fx_t *f = *state;
    pair_t p1 = make_pair(f, T_AMOUNT, 0, 0);
    assert_int_equal(reserve(f, &p1), 0);
    pair_t p2 = make_pair(f, T_AMOUNT, 0, 0);
    assert_int_equal(reserve(f, &p2), 0);
    assert_int_equal(state_of(f, p1.l.txn_id), QUANCUN__LOAD_STATE__LOAD_COMPENSATED);
    assert_string_equal(f->load2->reason, "COUNTER_PROVES_NOT_APPLIED");
    snap_t s = snap(f);
    assert_int_equal(s.acct, T_DEPOSIT - T_AMOUNT);
    assert_int_equal(s.hold, T_AMOUNT);
    assert_int_equal(s.flt, 0);
    free_pair(&p1);
    free_pair(&p2);
}

static void test_reconcile_late_confirm_by_counter(void **state)
{
    fx_t *f = *state;
    pair_t p1 = make_pair(f, T_AMOUNT, 0, f->now + 50);
    assert_int_equal(reserve(f, &p1), 0);
    assert_int_equal(ledger_saga_expire(f->saga, NULL, f->now + 60, 10, NULL, NULL), 0);
    pair_t p2 = make_pair(f, T_AMOUNT, 1, 0);
    assert_int_equal(reserve(f, &p2), 0);
    assert_int_equal(state_of(f, p1.l.txn_id), QUANCUN__LOAD_STATE__LOAD_LATE_CONFIRMED);
    snap_t s = snap(f);
    assert_int_equal(s.acct, T_DEPOSIT - 2 * T_AMOUNT);
    assert_int_equal(s.flt, T_AMOUNT);
    assert_int_equal(s.hold, T_AMOUNT);
    free_pair(&p1);
    free_pair(&p2);
}

/* The proof in a request's counter stands even when the request itself is refused: a refused
 * new load must not undo the settlement of the previous one, or the deadline would refund a
 * load the device holds (found by tests/e2e). Both directions, and a late confirmation whose
 * own debit the account can no longer afford. */
static void test_reconcile_kept_when_new_load_refused(void **state)
{
    fx_t *f = *state;
    pair_t p1 = make_pair(f, T_AMOUNT, 0, 0);
    assert_int_equal(reserve(f, &p1), 0);
    pair_t big = make_pair(f, T_DEPOSIT, 1, 0); /* more than is left */
    assert_int_equal(reserve(f, &big), QC_EFUNDS);
    assert_int_equal(state_of(f, p1.l.txn_id), QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
    assert_int_equal(state_of(f, big.l.txn_id), QUANCUN__LOAD_STATE__LOAD_NONE);
    snap_t s = snap(f);
    assert_int_equal(s.acct, T_DEPOSIT - T_AMOUNT);
    assert_int_equal(s.hold, 0);
    assert_int_equal(s.flt, T_AMOUNT);

    pair_t p2 = make_pair(f, T_AMOUNT, 1, 0);
    assert_int_equal(reserve(f, &p2), 0);
    pair_t big2 = make_pair(f, 2 * T_DEPOSIT, 1, 0); /* counter 1 again: p2 not applied */
    assert_int_equal(reserve(f, &big2), QC_EFUNDS);
    assert_int_equal(state_of(f, p2.l.txn_id), QUANCUN__LOAD_STATE__LOAD_COMPENSATED);
    s = snap(f);
    assert_int_equal(s.acct, T_DEPOSIT - T_AMOUNT);
    assert_int_equal(s.hold, 0);

    /* p3 compensated by its deadline, then a request whose counter proves p3 applied:
     * LATE_CONFIRMED, though the new load itself is refused for funds. */
    pair_t p3 = make_pair(f, T_AMOUNT, 1, f->now + 50);
    assert_int_equal(reserve(f, &p3), 0);
    assert_int_equal(ledger_saga_expire(f->saga, NULL, f->now + 60, 10, NULL, NULL), 0);
    assert_int_equal(state_of(f, p3.l.txn_id), QUANCUN__LOAD_STATE__LOAD_COMPENSATED);
    pair_t p4 = make_pair(f, T_DEPOSIT, 2, 0);
    assert_int_equal(reserve(f, &p4), QC_EFUNDS);
    assert_int_equal(state_of(f, p3.l.txn_id), QUANCUN__LOAD_STATE__LOAD_LATE_CONFIRMED);
    s = snap(f);
    assert_int_equal(s.acct, T_DEPOSIT - 2 * T_AMOUNT);
    assert_int_equal(s.flt, 2 * T_AMOUNT);
    assert_int_equal(s.hold, 0);
    free_pair(&p1);
    free_pair(&big);
    free_pair(&p2);
    free_pair(&big2);
    free_pair(&p3);
    free_pair(&p4);
}

/* ------------------------------------------------------------ idempotency */

static void test_reserve_idempotent(void **state)
{
    fx_t *f = *state;
    pair_t p = make_pair(f, T_AMOUNT, 0, 0);
    assert_int_equal(reserve(f, &p), 0);
    snap_t s = snap(f);
    /* The gateway retries, and the signer signs the same body again (another signature): the
     * stored allow comes back, byte for byte, and the second signature is never stored. */
    uint8_t *allow2 = NULL;
    size_t allow2_len = 0;
    bank_signs(f, f->bank, f->load, &allow2, &allow2_len);
    assert_false(allow2_len == p.allow_len && memcmp(allow2, p.allow, p.allow_len) == 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(ledger_saga_reserve(f->saga, NULL, f->now, f->now + T_DEADLINE_MS + i,
                                             p.req, p.req_len, f->load, f->why),
                         0);
        assert_int_equal(f->load->state, QUANCUN__LOAD_STATE__LOAD_RESERVED);
        assert_int_equal(f->load->allow_len, p.allow_len);
        assert_memory_equal(f->load->allow, p.allow, p.allow_len);
        assert_int_equal(ledger_saga_store_allow(f->saga, NULL, f->now, p.l.txn_id, allow2,
                                                 allow2_len, f->load, f->why),
                         0);
        assert_int_equal(f->load->allow_len, p.allow_len);
        assert_memory_equal(f->load->allow, p.allow, p.allow_len);
    }
    assert_same(s, snap(f));
    /* Another request under the same txn id is a replay. */
    pair_t q = p;
    q.l.amount = T_AMOUNT + 1;
    tk_request(f->dev, &q.l, &q.req, &q.req_len);
    assert_int_equal(ledger_saga_reserve(f->saga, NULL, f->now, f->now + T_DEADLINE_MS, q.req,
                                         q.req_len, f->load, f->why),
                     QC_EREPLAY);
    assert_same(s, snap(f));
    /* Settle twice: confirmed once. */
    assert_int_equal(settle(f, &p, f->dev, 1, QUANCUN__REPORT_STATUS__REPORT_APPLIED), 0);
    s = snap(f);
    assert_int_equal(settle(f, &p, f->dev, 1, QUANCUN__REPORT_STATUS__REPORT_APPLIED), 0);
    assert_int_equal(f->load->state, QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
    /* A later REJECTED report does not undo a confirmation. */
    assert_int_equal(settle(f, &p, f->dev, 0, QUANCUN__REPORT_STATUS__REPORT_REJECTED), 0);
    assert_int_equal(f->load->state, QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
    assert_same(s, snap(f));
    /* And the reserve retry after settlement still returns the record, unchanged. */
    assert_int_equal(reserve(f, &p), 0);
    assert_int_equal(f->load->state, QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
    assert_same(s, snap(f));
    free(q.req);
    free(allow2);
    free_pair(&p);
}

static void test_admin_idempotent(void **state)
{
    fx_t *f = *state;
    snap_t s = snap(f);
    ledger_account_t spec = {.id = T_ACCOUNT, .currency = TK_CURRENCY}, a;
    assert_int_equal(ledger_saga_open_account(f->saga, NULL, f->now, &spec, &a, f->why), 0);
    assert_int_equal(a.balance, T_DEPOSIT);
    spec.load_max = 7;
    assert_int_equal(ledger_saga_open_account(f->saga, NULL, f->now, &spec, &a, f->why), QC_EEXIST);
    uint8_t txn[16];
    tk_txn_id(txn);
    assert_int_equal(ledger_saga_deposit(f->saga, NULL, f->now, T_ACCOUNT, 100, txn, &a, f->why),
                     0);
    assert_int_equal(ledger_saga_deposit(f->saga, NULL, f->now, T_ACCOUNT, 100, txn, &a, f->why),
                     0);
    assert_int_equal(a.balance, T_DEPOSIT + 100);
    assert_int_equal(ledger_saga_deposit(f->saga, NULL, f->now, T_ACCOUNT, 101, txn, &a, f->why),
                     QC_EREPLAY);
    snap_t s2 = snap(f);
    assert_int_equal(s2.outbox, s.outbox + 1);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(ledger_saga_set_frozen(f->saga, NULL, f->now, T_ACCOUNT, true, &a, f->why),
                         0);
        assert_int_equal(a.status, QCLEDGER__ACCOUNT_STATUS__ACCOUNT_FROZEN);
    }
    assert_int_equal(snap(f).outbox, s2.outbox + 1);
    assert_int_equal(ledger_saga_set_frozen(f->saga, NULL, f->now, T_ACCOUNT, false, &a, f->why),
                     0);
    ledger_device_t *d = malloc(sizeof *d);
    assert_int_equal(ledger_saga_enroll_device(f->saga, NULL, f->now, T_ACCOUNT, f->cert,
                                               f->cert_len, 0, 0, d, f->why),
                     0);
    s2 = snap(f);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(ledger_saga_revoke_device(f->saga, NULL, f->now, T_DEVICE, d, f->why), 0);
        assert_int_equal(d->status, QCLEDGER__DEVICE_STATUS__DEVICE_REVOKED);
    }
    assert_int_equal(snap(f).outbox, s2.outbox + 1);
    assert_int_equal(ledger_saga_revoke_device(f->saga, NULL, f->now, "nobody", d, f->why),
                     QC_EUNKNOWNDEV);
    /* Empty ids reach the store as refusals, not as LMDB errors. */
    assert_int_equal(ledger_saga_revoke_device(f->saga, NULL, f->now, "", d, f->why),
                     QC_EUNKNOWNDEV);
    assert_int_equal(ledger_saga_deposit(f->saga, NULL, f->now, "", 100, txn, &a, f->why),
                     QC_EUNKNOWNACCT);
    assert_int_equal(ledger_saga_set_frozen(f->saga, NULL, f->now, "", true, &a, f->why),
                     QC_EUNKNOWNACCT);
    free(d);
}

/* ------------------------------------------------------------ refusals */

/* Reserves p and expects code, with nothing changed. */
static void expect_refused(fx_t *f, pair_t *p, int code)
{
    snap_t before = snap(f);
    f->why[0] = '\0';
    int rc = reserve(f, p);
    if (rc != code)
        fprintf(stderr, "expected %s, got %s (%s)\n", qc_errname(code), qc_errname(rc), f->why);
    assert_int_equal(rc, code);
    assert_true(f->why[0] != '\0');
    assert_same(before, snap(f));
    assert_int_equal(state_of(f, p->l.txn_id), QUANCUN__LOAD_STATE__LOAD_NONE);
}

static void test_refusals_change_nothing(void **state)
{
    fx_t *f = *state;
    ledger_device_t *d = malloc(sizeof *d);
    ledger_account_t a;

    pair_t p = make_pair(f, T_DEPOSIT + 1, 0, 0);
    expect_refused(f, &p, QC_EFUNDS);
    free_pair(&p);

    p = make_pair(f, T_AMOUNT, 0, f->now - 1);
    expect_refused(f, &p, QC_EEXPIRED);
    free_pair(&p);

    /* Request signed by a key that is not the device's. */
    EVP_PKEY *other = qctest_key_new();
    p = make_pair(f, T_AMOUNT, 0, 0);
    free(p.req);
    tk_request(other, &p.l, &p.req, &p.req_len);
    expect_refused(f, &p, QC_EKEYID);
    free_pair(&p);

    /* Unknown device. */
    p.l = (tk_load_t){.device_id = "ghost", .account_id = T_ACCOUNT, .amount = T_AMOUNT};
    tk_txn_id(p.l.txn_id);
    tk_request(other, &p.l, &p.req, &p.req_len);
    expect_refused(f, &p, QC_EUNKNOWNDEV);
    free_pair(&p);

    /* Counter ahead of what the ledger knows. */
    p = make_pair(f, T_AMOUNT, 3, 0);
    expect_refused(f, &p, QC_EMISMATCH);
    free_pair(&p);

    /* Wrong currency. */
    p.l = (tk_load_t){
        .device_id = T_DEVICE, .account_id = T_ACCOUNT, .amount = T_AMOUNT, .currency = 840};
    tk_txn_id(p.l.txn_id);
    tk_request(f->dev, &p.l, &p.req, &p.req_len);
    expect_refused(f, &p, QC_ECURRENCY);
    free_pair(&p);

    /* Device bound to another account. */
    open_account(f, "bob", 0, 0);
    deposit(f, "bob", T_DEPOSIT);
    p.l = (tk_load_t){.device_id = T_DEVICE, .account_id = "bob", .amount = T_AMOUNT};
    tk_txn_id(p.l.txn_id);
    tk_request(f->dev, &p.l, &p.req, &p.req_len);
    expect_refused(f, &p, QC_ENOTBOUND);
    free_pair(&p);

    /* Frozen account. */
    assert_int_equal(ledger_saga_set_frozen(f->saga, NULL, f->now, T_ACCOUNT, true, &a, f->why), 0);
    p = make_pair(f, T_AMOUNT, 0, 0);
    expect_refused(f, &p, QC_EFROZEN);
    free_pair(&p);
    assert_int_equal(ledger_saga_set_frozen(f->saga, NULL, f->now, T_ACCOUNT, false, &a, f->why),
                     0);

    /* Stale counter: after one confirmed load the device is at 1. */
    p = make_pair(f, T_AMOUNT, 0, 0);
    assert_int_equal(reserve(f, &p), 0);
    assert_int_equal(settle(f, &p, f->dev, 1, QUANCUN__REPORT_STATUS__REPORT_APPLIED), 0);
    free_pair(&p);
    p = make_pair(f, T_AMOUNT, 0, 0);
    expect_refused(f, &p, QC_ESTALE);
    free_pair(&p);

    /* A pending load and a counter below it: stale too, and the pending one stays. */
    pair_t pend = make_pair(f, T_AMOUNT, 1, 0);
    assert_int_equal(reserve(f, &pend), 0);
    p = make_pair(f, T_AMOUNT, 0, 0);
    expect_refused(f, &p, QC_ESTALE);
    free_pair(&p);
    /* ... and a counter that jumps past it. */
    p = make_pair(f, T_AMOUNT, 3, 0);
    expect_refused(f, &p, QC_EMISMATCH);
    free_pair(&p);
    assert_int_equal(state_of(f, pend.l.txn_id), QUANCUN__LOAD_STATE__LOAD_RESERVED);
    /* A request refused for its own funds still carries the counter that proves the pending
     * load applied: that settlement stands (test_reconcile_kept_when_new_load_refused), and
     * only the new load is refused. */
    p = make_pair(f, T_DEPOSIT * 10, 2, 0);
    assert_int_equal(reserve(f, &p), QC_EFUNDS);
    assert_int_equal(state_of(f, p.l.txn_id), QUANCUN__LOAD_STATE__LOAD_NONE);
    free_pair(&p);
    assert_int_equal(state_of(f, pend.l.txn_id), QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
    free_pair(&pend);

    /* Revoked device. */
    EVP_PKEY *k3 = qctest_key_new();
    uint8_t *c3 = NULL;
    size_t c3_len = 0;
    qctest_cert_self_der(k3, "dev-3", &c3, &c3_len);
    assert_int_equal(
        ledger_saga_enroll_device(f->saga, NULL, f->now, T_ACCOUNT, c3, c3_len, 1000, 0, d, f->why),
        0);
    /* Wallet cap: 900 in the wallet + 200 > 1000. */
    p.l = (tk_load_t){
        .device_id = "dev-3", .account_id = T_ACCOUNT, .amount = 200, .balance_before = 900};
    tk_txn_id(p.l.txn_id);
    tk_request(k3, &p.l, &p.req, &p.req_len);
    expect_refused(f, &p, QC_EWALLETCAP);
    free_pair(&p);
    assert_int_equal(ledger_saga_revoke_device(f->saga, NULL, f->now, "dev-3", d, f->why), 0);
    p.l = (tk_load_t){.device_id = "dev-3", .account_id = T_ACCOUNT, .amount = 10};
    tk_txn_id(p.l.txn_id);
    tk_request(k3, &p.l, &p.req, &p.req_len);
    expect_refused(f, &p, QC_EREVOKED);
    free_pair(&p);

    EVP_PKEY_free(k3);
    free(c3);
    EVP_PKEY_free(other);
    free(d);
}

/* The bank debits before it signs: reserve stores no allow, and the one allow a load ever gets
 * is the first the signer returned for exactly the body the ledger built, stored while the
 * money is held. */
static void test_store_allow_only_ours_only_once(void **state)
{
    fx_t *f = *state;
    pair_t p = make_pair(f, T_AMOUNT, 0, 0);
    assert_int_equal(ledger_saga_reserve(f->saga, NULL, f->now, f->now + T_DEADLINE_MS, p.req,
                                         p.req_len, f->load, f->why),
                     0);
    assert_int_equal(f->load->state, QUANCUN__LOAD_STATE__LOAD_RESERVED);
    assert_int_equal(f->load->allow_len, 0);
    assert_int_equal(f->load->deadline_ms, f->now + T_DEADLINE_MS);
    snap_t s = snap(f);
    assert_int_equal(s.hold, T_AMOUNT); /* debited before any signature */

    /* The body is a function of the record: its fields, the request digest, the ledger's times. */
    uint8_t *body = NULL;
    size_t body_len = 0;
    assert_int_equal(ledger_saga_allow_body(f->load, &body, &body_len), 0);
    Quancun__LoadAllow *a = quancun__load_allow__unpack(NULL, body_len, body);
    assert_non_null(a);
    assert_int_equal(a->amount, T_AMOUNT);
    assert_int_equal(a->counter, 0);
    assert_string_equal(a->device_id, T_DEVICE);
    assert_string_equal(a->account_id, T_ACCOUNT);
    assert_int_equal(a->host_time_ms, f->now);
    assert_int_equal(a->deadline_ms, f->now + T_DEADLINE_MS);
    quancun__load_allow__free_unpacked(a, NULL);
    uint8_t *again = NULL;
    size_t again_len = 0;
    assert_int_equal(ledger_saga_allow_body(f->load, &again, &again_len), 0);
    assert_int_equal(again_len, body_len);
    assert_memory_equal(again, body, body_len);
    free(again);
    free(body);

    /* Not the bank's allow key: refused, nothing stored. */
    EVP_PKEY *other = qctest_key_new();
    uint8_t *bad = NULL;
    size_t bad_len = 0;
    bank_signs(f, other, f->load, &bad, &bad_len);
    assert_int_equal(
        ledger_saga_store_allow(f->saga, NULL, f->now, p.l.txn_id, bad, bad_len, f->load, f->why),
        QC_EKEYID);
    free(bad);
    /* The bank's key over another body (another amount): refused. */
    tk_load_t l2 = p.l;
    l2.amount = T_AMOUNT * 2;
    tk_allow_fields(f->bank, &l2, p.req, p.req_len, f->now + T_DEADLINE_MS, &bad, &bad_len);
    assert_int_equal(
        ledger_saga_store_allow(f->saga, NULL, f->now, p.l.txn_id, bad, bad_len, f->load, f->why),
        QC_EMISMATCH);
    free(bad);
    /* Not an envelope at all. */
    uint8_t junk[40];
    memset(junk, 0x5a, sizeof junk);
    assert_int_equal(ledger_saga_store_allow(f->saga, NULL, f->now, p.l.txn_id, junk, sizeof junk,
                                             f->load, f->why),
                     QC_EDECODE);
    assert_same(s, snap(f));
    assert_int_equal(ledger_saga_reserve(f->saga, NULL, f->now, f->now + T_DEADLINE_MS, p.req,
                                         p.req_len, f->load, f->why),
                     0);
    assert_int_equal(f->load->allow_len, 0);

    /* The bank's allow for this body: stored, with its audit event. */
    uint8_t *first = NULL, *second = NULL;
    size_t first_len = 0, second_len = 0;
    bank_signs(f, f->bank, f->load, &first, &first_len);
    bank_signs(f, f->bank, f->load, &second, &second_len);
    assert_int_equal(ledger_saga_store_allow(f->saga, NULL, f->now, p.l.txn_id, first, first_len,
                                             f->load, f->why),
                     0);
    assert_int_equal(f->load->allow_len, first_len);
    assert_memory_equal(f->load->allow, first, first_len);
    snap_t s2 = snap(f);
    assert_int_equal(s2.outbox, s.outbox + 1); /* load.allowed */
    s2.outbox = s.outbox;
    assert_same(s, s2);
    /* A second signature of the same body (a retry's): the first stays, nothing changes. */
    s = snap(f);
    assert_int_equal(ledger_saga_store_allow(f->saga, NULL, f->now, p.l.txn_id, second, second_len,
                                             f->load, f->why),
                     0);
    assert_memory_equal(f->load->allow, first, first_len);
    assert_same(s, snap(f));
    free(second);
    free(first);

    /* A load its deadline compensated before the signature came: no allow, ever. */
    pair_t q = make_pair(f, T_AMOUNT, 1, f->now + 50);
    assert_int_equal(
        settle(f, &(pair_t){.l = p.l, .allow = f->load->allow, .allow_len = f->load->allow_len},
               f->dev, 1, QUANCUN__REPORT_STATUS__REPORT_APPLIED),
        0);
    assert_int_equal(f->load->state, QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
    assert_int_equal(
        ledger_saga_reserve(f->saga, NULL, f->now, q.deadline, q.req, q.req_len, f->load, f->why),
        0);
    assert_int_equal(ledger_saga_expire(f->saga, NULL, f->now + 60, 10, NULL, NULL), 0);
    assert_int_equal(state_of(f, q.l.txn_id), QUANCUN__LOAD_STATE__LOAD_COMPENSATED);
    bank_signs(f, f->bank, f->load2, &bad, &bad_len);
    s = snap(f);
    assert_int_equal(ledger_saga_store_allow(f->saga, NULL, f->now + 60, q.l.txn_id, bad, bad_len,
                                             f->load, f->why),
                     QC_ESTATE);
    assert_int_equal(f->load->allow_len, 0);
    assert_same(s, snap(f));
    /* A report naming that never-released allow confirms nothing. */
    q.allow = bad;
    q.allow_len = bad_len;
    assert_int_equal(settle(f, &q, f->dev, 2, QUANCUN__REPORT_STATUS__REPORT_APPLIED), 0);
    assert_int_equal(f->load->state, QUANCUN__LOAD_STATE__LOAD_COMPENSATED);
    assert_same(s, snap(f));
    free_pair(&q);
    EVP_PKEY_free(other);
    free(p.req);
}

/* A report about a RESERVED load whose allow was never stored (the signer was down): the
 * device cannot have applied it, so the saga compensates. */
static void test_settle_without_allow_compensates(void **state)
{
    fx_t *f = *state;
    pair_t p = make_pair(f, T_AMOUNT, 0, 0);
    assert_int_equal(ledger_saga_reserve(f->saga, NULL, f->now, f->now + T_DEADLINE_MS, p.req,
                                         p.req_len, f->load, f->why),
                     0);
    bank_signs(f, f->bank, f->load, &p.allow, &p.allow_len); /* signed, never stored */
    assert_int_equal(settle(f, &p, f->dev, 1, QUANCUN__REPORT_STATUS__REPORT_APPLIED), 0);
    assert_int_equal(f->load->state, QUANCUN__LOAD_STATE__LOAD_COMPENSATED);
    assert_string_equal(f->load->reason, "REPORT_MISMATCH");
    snap_t s = snap(f);
    assert_int_equal(s.acct, T_DEPOSIT);
    assert_int_equal(s.hold, 0);
    assert_int_equal(s.flt, 0);
    free_pair(&p);
}

static void test_limits(void **state)
{
    fx_t *f = *state;
    /* A second account with a per-load maximum and a daily maximum. */
    open_account(f, "carol", 300, 500);
    deposit(f, "carol", T_DEPOSIT);
    EVP_PKEY *k = qctest_key_new();
    uint8_t *c = NULL;
    size_t c_len = 0;
    qctest_cert_self_der(k, "dev-c", &c, &c_len);
    ledger_device_t *d = malloc(sizeof *d);
    assert_int_equal(
        ledger_saga_enroll_device(f->saga, NULL, f->now, "carol", c, c_len, 0, 0, d, f->why), 0);
    pair_t p = {.l = {.device_id = "dev-c", .account_id = "carol", .amount = 301}};
    tk_txn_id(p.l.txn_id);
    tk_request(k, &p.l, &p.req, &p.req_len);
    int64_t before = balance(f, "carol");
    assert_int_equal(reserve(f, &p), QC_ELIMIT);
    assert_int_equal(balance(f, "carol"), before);
    free_pair(&p);
    /* 300 then 300 again: the second passes the per-load limit but not the daily one. */
    p.l.amount = 300;
    tk_txn_id(p.l.txn_id);
    tk_request(k, &p.l, &p.req, &p.req_len);
    assert_int_equal(reserve(f, &p), 0);
    free_pair(&p);
    p.l.counter = 1;
    tk_txn_id(p.l.txn_id);
    tk_request(k, &p.l, &p.req, &p.req_len);
    before = balance(f, "carol");
    assert_int_equal(reserve(f, &p), QC_ELIMIT);
    assert_int_equal(balance(f, "carol"), before);
    free_pair(&p);
    free(d);
    free(c);
    EVP_PKEY_free(k);
}

/* Found by an independent device: on an account without a daily limit, a 2^63-1 load after
 * a first one overflowed the day's total and was refused as "daily limit 0 reached". The
 * refusal must name the true reason: the funds. */
static void test_limit_overflow_names_true_reason(void **state)
{
    fx_t *f = *state;
    pair_t p = make_pair(f, 100, 0, 0);
    assert_int_equal(reserve(f, &p), 0);
    free_pair(&p);
    p = make_pair(f, INT64_MAX, 1, 0);
    int64_t before = balance(f, T_ACCOUNT);
    assert_int_equal(reserve(f, &p), QC_EFUNDS);
    assert_null(strstr(f->why, "daily limit"));
    assert_int_equal(balance(f, T_ACCOUNT), before);
    free_pair(&p);
}

static void test_bad_report_signature(void **state)
{
    fx_t *f = *state;
    pair_t p = make_pair(f, T_AMOUNT, 0, 0);
    assert_int_equal(reserve(f, &p), 0);
    snap_t s = snap(f);
    EVP_PKEY *other = qctest_key_new();
    assert_int_equal(settle(f, &p, other, 1, QUANCUN__REPORT_STATUS__REPORT_APPLIED), QC_EBADSIG);
    EVP_PKEY_free(other);
    snap_t s2 = snap(f);
    assert_int_equal(s2.outbox, s.outbox + 1); /* the security event */
    s2.outbox = s.outbox;
    assert_same(s, s2);
    assert_int_equal(state_of(f, p.l.txn_id), QUANCUN__LOAD_STATE__LOAD_RESERVED);
    /* The event is in the outbox with the offending bytes. */
    MDB_txn *txn = NULL;
    Qcledger__OutboxReadReply r;
    assert_int_equal(ledger_store_txn_begin(f->store, NULL, false, &txn), 0);
    assert_int_equal(ledger_store_outbox_read(f->store, txn, s.outbox, 10, &r), 0);
    ledger_store_txn_abort(txn);
    assert_int_equal(r.n_events, 1);
    assert_string_equal(r.events[0]->type, "security.bad_report_signature");
    ledger_store_outbox_read_free(&r);
    /* Unknown txn. */
    pair_t q = make_pair(f, T_AMOUNT, 0, 0);
    assert_int_equal(settle(f, &q, f->dev, 1, QUANCUN__REPORT_STATUS__REPORT_APPLIED),
                     QC_ENOTFOUND);
    free_pair(&q);
    free_pair(&p);
}

static void test_shard_refusal(void **state)
{
    fx_t *f = *state;
    ledger_saga_t *s2 = NULL;
    ledger_saga_config_t cfg = {
        .store = f->store, .allow_key = f->bank, .shard = 0, .shard_count = 2};
    assert_int_equal(ledger_saga_new(&cfg, &s2), 0);
    char id[32];
    int i = 0;
    do
        snprintf(id, sizeof id, "acct-%d", i++);
    while (proto_shard_of(id, 2) == 0);
    ledger_account_t spec = {.currency = TK_CURRENCY}, a;
    snprintf(spec.id, sizeof spec.id, "%s", id);
    assert_int_equal(ledger_saga_open_account(s2, NULL, f->now, &spec, &a, f->why), QC_ESHARD);
    ledger_saga_destroy(&s2);
}

/* Requests in one group commit are isolated: a refused one leaves the others intact. */
static void test_group_isolation(void **state)
{
    fx_t *f = *state;
    MDB_txn *parent = NULL;
    assert_int_equal(ledger_store_txn_begin(f->store, NULL, true, &parent), 0);
    pair_t ok = make_pair(f, T_AMOUNT, 0, 0);
    pair_t bad = make_pair(f, T_DEPOSIT * 2, 0, 0);
    uint64_t deadline = f->now + T_DEADLINE_MS;
    assert_int_equal(ledger_saga_reserve(f->saga, parent, f->now, deadline, bad.req, bad.req_len,
                                         f->load, f->why),
                     QC_EFUNDS);
    assert_int_equal(
        ledger_saga_reserve(f->saga, parent, f->now, deadline, ok.req, ok.req_len, f->load, f->why),
        0);
    assert_int_equal(ledger_store_txn_commit(parent), 0);
    assert_int_equal(state_of(f, ok.l.txn_id), QUANCUN__LOAD_STATE__LOAD_RESERVED);
    assert_int_equal(state_of(f, bad.l.txn_id), QUANCUN__LOAD_STATE__LOAD_NONE);
    assert_int_equal(snap(f).acct, T_DEPOSIT - T_AMOUNT);
    free_pair(&ok);
    free_pair(&bad);
}

static void test_check_catches_corruption(void **state)
{
    fx_t *f = *state;
    pair_t p = make_pair(f, T_AMOUNT, 0, 0);
    assert_int_equal(reserve(f, &p), 0);
    snap(f); /* asserts ok */
    /* Write a bad balance straight into LMDB. */
    MDB_txn *txn = NULL;
    ledger_account_t a;
    assert_int_equal(ledger_store_txn_begin(f->store, NULL, true, &txn), 0);
    assert_int_equal(ledger_store_account_get(f->store, txn, T_ACCOUNT, &a), 0);
    a.balance += 1;
    assert_int_equal(ledger_store_account_put(f->store, txn, &a), 0);
    assert_int_equal(ledger_store_txn_commit(txn), 0);
    ledger_check_t c;
    assert_int_equal(ledger_saga_check(f->saga, NULL, &c), 0);
    assert_false(c.ok);
    assert_true(c.problem_count >= 2); /* the sum and the replay both disagree */
    bool sum = false, replay = false;
    for (size_t i = 0; i < c.n_problems; i++) {
        sum |= strstr(c.problems[i], "sum to 1") != NULL;
        replay |= strstr(c.problems[i], "account alice") != NULL;
    }
    assert_true(sum && replay);
    /* And a HOLD that no longer matches the reserved loads. */
    assert_int_equal(ledger_store_txn_begin(f->store, NULL, true, &txn), 0);
    assert_int_equal(ledger_store_account_get(f->store, txn, T_ACCOUNT, &a), 0);
    a.balance -= 1;
    assert_int_equal(ledger_store_account_put(f->store, txn, &a), 0);
    assert_int_equal(ledger_store_account_get(f->store, txn, "HOLD:156", &a), 0);
    a.balance -= 1;
    assert_int_equal(ledger_store_account_put(f->store, txn, &a), 0);
    assert_int_equal(ledger_store_txn_commit(txn), 0);
    assert_int_equal(ledger_saga_check(f->saga, NULL, &c), 0);
    assert_false(c.ok);
    bool hold = false;
    for (size_t i = 0; i < c.n_problems; i++)
        hold |= strstr(c.problems[i], "HOLD") != NULL;
    assert_true(hold);
    free_pair(&p);
}

static void test_store_reopen_and_shard_binding(void **state)
{
    fx_t *f = *state;
    assert_int_equal(ledger_store_bind_shard(f->store, 0, 1), 0);
    assert_int_equal(ledger_store_bind_shard(f->store, 0, 1), 0);
    assert_int_equal(ledger_store_bind_shard(f->store, 1, 2), QC_ECONFIG);
    int dead = -1;
    assert_int_equal(ledger_store_reader_check(f->store, &dead), 0);
    assert_int_equal(dead, 0);
    uint64_t used = 0, map = 0;
    assert_false(ledger_store_nearly_full(f->store, &used, &map));
    assert_true(used > 0 && map == T_MAP_SIZE);
}

/* Malformed input, another shard, and a report about another load: refused, nothing moves. */
static void test_more_refusals(void **state)
{
    fx_t *f = *state;
    snap_t before = snap(f);
    uint8_t junk[64];
    memset(junk, 0x5a, sizeof junk);
    pair_t p = make_pair(f, T_AMOUNT, 0, 0);
    uint64_t deadline = f->now + T_DEADLINE_MS;
    assert_int_equal(
        ledger_saga_reserve(f->saga, NULL, f->now, deadline, junk, sizeof junk, f->load, f->why),
        QC_EDECODE);
    uint8_t *big = calloc(1, LEDGER_SIGNED_MAX + 1);
    assert_int_equal(ledger_saga_reserve(f->saga, NULL, f->now, deadline, big,
                                         LEDGER_SIGNED_MAX + 1, f->load, f->why),
                     QC_ETOOBIG);
    free(big);
    assert_same(before, snap(f));
    /* The same request on a ledger that is the other shard of two. */
    ledger_saga_t *s2 = NULL;
    ledger_saga_config_t cfg = {.store = f->store,
                                .allow_key = f->bank,
                                .shard = 1 - proto_shard_of(T_ACCOUNT, 2),
                                .shard_count = 2};
    assert_int_equal(ledger_saga_new(&cfg, &s2), 0);
    assert_int_equal(
        ledger_saga_reserve(s2, NULL, f->now, deadline, p.req, p.req_len, f->load, f->why),
        QC_ESHARD);
    ledger_saga_destroy(&s2);
    assert_same(before, snap(f));
    /* A genuine report about load B offered to settle load A. */
    assert_int_equal(reserve(f, &p), 0);
    before = snap(f);
    pair_t q = p;
    tk_txn_id(q.l.txn_id);
    uint8_t *rep = NULL;
    size_t rep_len = 0;
    tk_report(f->dev, &q.l, 1, QUANCUN__REPORT_STATUS__REPORT_APPLIED, p.allow, p.allow_len, &rep,
              &rep_len);
    assert_int_equal(
        ledger_saga_settle(f->saga, NULL, f->now, p.l.txn_id, rep, rep_len, f->load, f->why),
        QC_EMISMATCH);
    assert_same(before, snap(f));
    assert_int_equal(
        ledger_saga_settle(f->saga, NULL, f->now, p.l.txn_id, junk, sizeof junk, f->load, f->why),
        QC_EDECODE);
    assert_same(before, snap(f));
    assert_int_equal(state_of(f, p.l.txn_id), QUANCUN__LOAD_STATE__LOAD_RESERVED);
    free(rep);
    free_pair(&p);
}

/* With a trust store, enrollment takes only certificates of the CA, and the device id is
 * the certificate's CN. */
static void test_enroll_checks_the_ca(void **state)
{
    fx_t *f = *state;
    char ca_path[QCTEST_PATH_MAX + 16];
    snprintf(ca_path, sizeof ca_path, "%s/ca.pem", f->dir);
    EVP_PKEY *ca_key = NULL;
    X509 *ca = NULL;
    qctest_ca_new(&ca_key, &ca);
    qctest_write_cert(ca_path, ca);
    proto_trust_t *trust = NULL;
    assert_int_equal(proto_trust_new(ca_path, NULL, &trust), 0);
    ledger_saga_t *s2 = NULL;
    ledger_saga_config_t cfg = {
        .store = f->store, .allow_key = f->bank, .trust = trust, .shard_count = 1};
    assert_int_equal(ledger_saga_new(&cfg, &s2), 0);
    EVP_PKEY *k = qctest_key_new();
    uint8_t *good = NULL;
    size_t good_len = 0;
    qctest_cert_issued_der(k, "QC-DEV-CA-1", ca_key, ca, &good, &good_len);
    ledger_device_t *d = malloc(sizeof *d);
    snap_t before = snap(f);
    /* Self-signed: refused, nothing written. */
    assert_int_equal(ledger_saga_enroll_device(s2, NULL, f->now, T_ACCOUNT, f->cert, f->cert_len, 0,
                                               0, d, f->why),
                     QC_ECERTCA);
    assert_same(before, snap(f));
    assert_int_equal(
        ledger_saga_enroll_device(s2, NULL, f->now, T_ACCOUNT, good, good_len, 0, 0, d, f->why), 0);
    assert_string_equal(d->id, "QC-DEV-CA-1");
    assert_int_equal(d->status, QCLEDGER__DEVICE_STATUS__DEVICE_ACTIVE);
    free(d);
    free(good);
    EVP_PKEY_free(k);
    ledger_saga_destroy(&s2);
    proto_trust_destroy(&trust);
    X509_free(ca);
    EVP_PKEY_free(ca_key);
}

/* A small map refuses growth with QC_EFULL before LMDB itself runs out, and a release
 * (settle) still fits afterwards. */
static void test_map_nearly_full_refuses_growth(void **state)
{
    fx_t *f = *state;
    char dir[QCTEST_PATH_MAX];
    assert_int_equal(qctest_dir_new("qc-ledger-full", dir), 0);
    ledger_store_t *store = NULL;
    assert_int_equal(ledger_store_open(dir, LEDGER_MAP_SIZE_MIN, &store), 0);
    ledger_saga_t *saga = NULL;
    ledger_saga_config_t cfg = {.store = store, .allow_key = f->bank, .shard_count = 1};
    assert_int_equal(ledger_saga_new(&cfg, &saga), 0);
    ledger_account_t spec = {.id = T_ACCOUNT, .currency = TK_CURRENCY}, a;
    assert_int_equal(ledger_saga_open_account(saga, NULL, f->now, &spec, &a, f->why), 0);
    uint8_t txn[16];
    tk_txn_id(txn);
    assert_int_equal(ledger_saga_deposit(saga, NULL, f->now, T_ACCOUNT, T_DEPOSIT, txn, &a, f->why),
                     0);
    ledger_device_t *d = malloc(sizeof *d);
    assert_int_equal(ledger_saga_enroll_device(saga, NULL, f->now, T_ACCOUNT, f->cert, f->cert_len,
                                               0, 0, d, f->why),
                     0);
    free(d);
    pair_t p = make_pair(f, T_AMOUNT, 0, 0);
    assert_int_equal(reserve_on(f, saga, &p), 0);
    /* Fill with accounts, a few hundred per commit, until growth is refused. */
    int rc = 0, n = 0;
    while (rc == 0 && n < 100000) {
        MDB_txn *t = NULL;
        assert_int_equal(ledger_store_txn_begin(store, NULL, true, &t), 0);
        for (int i = 0; i < 200 && rc == 0; i++, n++) {
            snprintf(spec.id, sizeof spec.id, "filler-%d", n);
            rc = ledger_saga_open_account(saga, t, f->now, &spec, &a, f->why);
        }
        assert_int_equal(ledger_store_txn_commit(t), 0);
    }
    assert_int_equal(rc, QC_EFULL);
    assert_non_null(strstr(f->why, "map"));
    /* The refusal came before LMDB's own limit: the release still fits. */
    uint8_t *rep = NULL;
    size_t rep_len = 0;
    tk_report(f->dev, &p.l, 1, QUANCUN__REPORT_STATUS__REPORT_APPLIED, p.allow, p.allow_len, &rep,
              &rep_len);
    assert_int_equal(
        ledger_saga_settle(saga, NULL, f->now, p.l.txn_id, rep, rep_len, f->load, f->why), 0);
    assert_int_equal(f->load->state, QUANCUN__LOAD_STATE__LOAD_CONFIRMED);
    ledger_check_t c;
    assert_int_equal(ledger_saga_check(saga, NULL, &c), 0);
    assert_true(c.ok);
    free(rep);
    free_pair(&p);
    ledger_saga_destroy(&saga);
    ledger_store_close(&store);
    assert_int_equal(qctest_dir_remove(dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reserve_then_confirm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reserve_clears_scratch_flag, setup, teardown),
        cmocka_unit_test_setup_teardown(test_settle_rejected_compensates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_settle_mismatch_compensates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadline_compensates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_late_confirm_by_report_overdraws, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconcile_counter_proves_applied, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconcile_counter_proves_not_applied, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconcile_late_confirm_by_counter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconcile_kept_when_new_load_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reserve_idempotent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_idempotent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusals_change_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limit_overflow_names_true_reason, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_allow_only_ours_only_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_settle_without_allow_compensates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_report_signature, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shard_refusal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_isolation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check_catches_corruption, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_reopen_and_shard_binding, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_nearly_full_refuses_growth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_enroll_checks_the_ca, setup, teardown),
        cmocka_unit_test_setup_teardown(test_more_refusals, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
