/* test_ledger_replay.c - a shard copied, run on, then restored from the copy and brought forward
 * from its events (ledger_backup, ledger_replay): the result is the lost shard, record for
 * record, through every kind of transition; a changed or missing event stops the replay. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "ledger.pb-c.h"
#include "ledger_replay.h"
#include "ledger_saga.h"
#include "ledger_store.h"
#include "ledger_testkit.h"
#include "ops_bytes.h"
#include "ops_time.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "qc_error.h"
#include "qctest_fs.h"
#include "qctest_key.h"

#define T_MAP_SIZE (64ull << 20)
#define T_DEPOSIT 10000
#define T_AMOUNT 500
#define T_DEADLINE_MS 60000
#define T_EVENTS_MAX 4096

typedef struct tdev {
    char id[16], account[16];
    EVP_PKEY *key;
    uint8_t *cert;
    size_t cert_len;
    uint64_t counter;
} tdev_t;

typedef struct fx {
    char dir[QCTEST_PATH_MAX];  /* the live shard */
    char copy[QCTEST_PATH_MAX]; /* its backup */
    char file[QCTEST_PATH_MAX + 32];
    ledger_store_t *store;
    ledger_saga_t *saga;
    EVP_PKEY *bank;
    tdev_t dev[3];
    uint64_t now;
    uint64_t after_seq; /* the copy's last outbox event */
    ledger_load_t *load;
    char why[LEDGER_WHY_MAX];
} fx_t;

static void open_funded(fx_t *f, const char *id)
{
    ledger_account_t spec = {.currency = TK_CURRENCY}, out;
    snprintf(spec.id, sizeof spec.id, "%s", id);
    assert_int_equal(ledger_saga_open_account(f->saga, NULL, f->now, &spec, &out, f->why), 0);
    uint8_t txn[16];
    tk_txn_id(txn);
    assert_int_equal(ledger_saga_deposit(f->saga, NULL, f->now, id, T_DEPOSIT, txn, &out, f->why),
                     0);
}

static void enroll(fx_t *f, tdev_t *d, unsigned i)
{
    snprintf(d->id, sizeof d->id, "dev-%u", i);
    snprintf(d->account, sizeof d->account, "acct-%u", i);
    d->key = qctest_key_new();
    qctest_cert_self_der(d->key, d->id, &d->cert, &d->cert_len);
    open_funded(f, d->account);
    ledger_device_t *out = malloc(sizeof *out);
    assert_int_equal(ledger_saga_enroll_device(f->saga, NULL, f->now, d->account, d->cert,
                                               d->cert_len, 0, 0, out, f->why),
                     0);
    free(out);
}

/* A load of d at its counter (or counter_override), reserved and allowed as the service
 * does. Returns the reserve's code; *req and *allow are the signed artefacts. */
static int load(fx_t *f, tdev_t *d, int64_t amount, uint64_t counter, uint64_t deadline,
                tk_load_t *l, uint8_t **allow, size_t *allow_len)
{
    *l = (tk_load_t){
        .device_id = d->id, .account_id = d->account, .amount = amount, .counter = counter};
    tk_txn_id(l->txn_id);
    uint8_t *req = NULL;
    size_t req_len = 0;
    tk_request(d->key, l, &req, &req_len);
    int rc =
        ledger_saga_reserve(f->saga, NULL, f->now, deadline ? deadline : f->now + T_DEADLINE_MS,
                            req, req_len, f->load, f->why);
    free(req);
    *allow = NULL;
    *allow_len = 0;
    if (rc != 0)
        return rc;
    uint8_t *body = NULL;
    size_t body_len = 0;
    assert_int_equal(ledger_saga_allow_body(f->load, &body, &body_len), 0);
    assert_int_equal(proto_envelope_sign(PROTO_TYPE_LOAD_ALLOW, body, body_len, f->bank, 1, NULL, 0,
                                         allow, allow_len),
                     0);
    free(body);
    return ledger_saga_store_allow(f->saga, NULL, f->now, l->txn_id, *allow, *allow_len, f->load,
                                   f->why);
}

static int settle(fx_t *f, tdev_t *d, EVP_PKEY *key, const tk_load_t *l, uint64_t counter_after,
                  Quancun__ReportStatus st, const uint8_t *allow, size_t allow_len)
{
    uint8_t *rep = NULL;
    size_t rep_len = 0;
    tk_report(key, l, counter_after, st, allow, allow_len, &rep, &rep_len);
    int rc = ledger_saga_settle(f->saga, NULL, f->now, l->txn_id, rep, rep_len, f->load, f->why);
    free(rep);
    (void)d;
    return rc;
}

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_int_equal(qctest_dir_new("qc-ledger-replay", f->dir), 0);
    assert_int_equal(qctest_dir_new("qc-ledger-replay-copy", f->copy), 0);
    snprintf(f->file, sizeof f->file, "%s/%s", f->copy, LEDGER_REPLAY_FILE);
    assert_int_equal(ledger_store_open(f->dir, T_MAP_SIZE, &f->store), 0);
    assert_int_equal(ledger_store_bind_shard(f->store, 0, 1), 0);
    f->bank = qctest_key_new();
    ledger_saga_config_t cfg = {.store = f->store, .allow_key = f->bank, .shard_count = 1};
    assert_int_equal(ledger_saga_new(&cfg, &f->saga), 0);
    f->load = malloc(sizeof *f->load);
    f->now = ops_time_wall_ms();
    for (unsigned i = 0; i < 2; i++)
        enroll(f, &f->dev[i], i);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    ledger_saga_destroy(&f->saga);
    ledger_store_close(&f->store);
    EVP_PKEY_free(f->bank);
    for (unsigned i = 0; i < 3; i++) {
        EVP_PKEY_free(f->dev[i].key);
        free(f->dev[i].cert);
    }
    free(f->load);
    assert_int_equal(qctest_dir_remove(f->dir), 0);
    assert_int_equal(qctest_dir_remove(f->copy), 0);
    free(f);
    return 0;
}

static uint64_t outbox_next(ledger_store_t *st)
{
    MDB_txn *txn = NULL;
    uint64_t next = 0;
    assert_int_equal(ledger_store_txn_begin(st, NULL, false, &txn), 0);
    assert_int_equal(ledger_store_outbox_next(st, txn, &next), 0);
    ledger_store_txn_abort(txn);
    return next;
}

static void put_record(FILE *o, const ProtobufCMessage *m)
{
    uint8_t *buf = NULL, hdr[4];
    size_t len = 0;
    assert_int_equal(proto_pack(m, &buf, &len), 0);
    ops_be_put(hdr, len, 4);
    assert_int_equal(fwrite(hdr, 1, 4, o), 4);
    assert_int_equal(fwrite(buf, 1, len, o), len);
    free(buf);
}

/* The live shard's events after the copy into the replay file, as `qcctl shard restore`
 * writes them from the audit log; tamper (when not NULL) edits event k first. */
static void write_replay(fx_t *f, void (*tamper)(Qcledger__OutboxEvent *, size_t k), size_t skip)
{
    MDB_txn *txn = NULL;
    Qcledger__OutboxReadReply r = QCLEDGER__OUTBOX_READ_REPLY__INIT;
    assert_int_equal(ledger_store_txn_begin(f->store, NULL, false, &txn), 0);
    assert_int_equal(ledger_store_outbox_read(f->store, txn, f->after_seq, T_EVENTS_MAX, &r), 0);
    ledger_store_txn_abort(txn);
    assert_true(r.n_events > 20);
    FILE *o = fopen(f->file, "we");
    assert_non_null(o);
    Qcledger__ReplayHeader h = QCLEDGER__REPLAY_HEADER__INIT;
    h.version = LEDGER_REPLAY_VERSION;
    h.shard_count = 1;
    h.after_seq = f->after_seq;
    h.count = r.n_events - (skip != 0);
    assert_int_equal(fwrite(LEDGER_REPLAY_MAGIC, 1, 4, o), 4);
    put_record(o, &h.base);
    for (size_t k = 0; k < r.n_events; k++) {
        if (skip != 0 && k == skip)
            continue;
        if (tamper != NULL)
            tamper(r.events[k], k);
        put_record(o, &r.events[k]->base);
    }
    assert_int_equal(fclose(o), 0);
    ledger_store_outbox_read_free(&r);
}

/* Every record of every database, hashed in order: equal states, equal digests. */
typedef struct dump {
    uint8_t md[32];
    EVP_MD_CTX *ctx;
    uint64_t n;
} dump_t;

static int dump_one(void *arg, unsigned db, const uint8_t *k, size_t kl, const uint8_t *v,
                    size_t vl)
{
    dump_t *d = arg;
    uint8_t hdr[1 + 8 + 8];
    hdr[0] = (uint8_t)db;
    ops_be_put(hdr + 1, kl, 8);
    ops_be_put(hdr + 9, vl, 8);
    EVP_DigestUpdate(d->ctx, hdr, sizeof hdr);
    EVP_DigestUpdate(d->ctx, k, kl);
    EVP_DigestUpdate(d->ctx, v, vl);
    d->n++;
    return 0;
}

static void digest_of(ledger_store_t *st, dump_t *d)
{
    MDB_txn *txn = NULL;
    d->ctx = EVP_MD_CTX_new();
    d->n = 0;
    assert_int_equal(EVP_DigestInit_ex(d->ctx, EVP_sha256(), NULL), 1);
    assert_int_equal(ledger_store_txn_begin(st, NULL, false, &txn), 0);
    assert_int_equal(ledger_store_each_record(st, txn, dump_one, d), 0);
    ledger_store_txn_abort(txn);
    unsigned l = 0;
    assert_int_equal(EVP_DigestFinal_ex(d->ctx, d->md, &l), 1);
    EVP_MD_CTX_free(d->ctx);
}

/* After the copy, every kind of event: loads confirmed by report and by the next counter,
 * compensated by report, by deadline and by the counter, late-confirmed, a reconciliation
 * kept while its new load is refused, a bad report, deposits, a freeze, a new account and
 * device, a revocation. */
static void run_after_copy(fx_t *f)
{
    tdev_t *a = &f->dev[0], *b = &f->dev[1];
    tk_load_t l;
    uint8_t *allow = NULL;
    size_t allow_len = 0;
    /* a: confirmed by its report. */
    assert_int_equal(load(f, a, T_AMOUNT, 0, 0, &l, &allow, &allow_len), 0);
    f->now += 7;
    assert_int_equal(
        settle(f, a, a->key, &l, 1, QUANCUN__REPORT_STATUS__REPORT_APPLIED, allow, allow_len), 0);
    free(allow);
    /* a: a bad report (evidence only), then REJECTED: compensated. */
    assert_int_equal(load(f, a, T_AMOUNT, 1, 0, &l, &allow, &allow_len), 0);
    assert_int_equal(
        settle(f, a, b->key, &l, 2, QUANCUN__REPORT_STATUS__REPORT_APPLIED, allow, allow_len),
        QC_EBADSIG);
    f->now += 3;
    assert_int_equal(
        settle(f, a, a->key, &l, 1, QUANCUN__REPORT_STATUS__REPORT_REJECTED, allow, allow_len), 0);
    free(allow);
    /* a: confirmed by the next request's counter. */
    assert_int_equal(load(f, a, T_AMOUNT, 1, 0, &l, &allow, &allow_len), 0);
    free(allow);
    f->now += 5;
    assert_int_equal(load(f, a, T_AMOUNT, 2, 0, &l, &allow, &allow_len), 0);
    free(allow);
    /* ...and that one compensated by a request with the same counter refused for funds: the
     * settlement is kept, the new load is not. */
    f->now += 5;
    assert_int_equal(load(f, a, 10 * T_DEPOSIT, 2, 0, &l, &allow, &allow_len), QC_EFUNDS);
    /* b: compensated by its deadline, then late-confirmed by its report. */
    assert_int_equal(load(f, b, T_AMOUNT, 0, f->now + 50, &l, &allow, &allow_len), 0);
    f->now += 60;
    assert_int_equal(ledger_saga_expire(f->saga, NULL, f->now, 10, NULL, NULL), 0);
    f->now += 1;
    assert_int_equal(
        settle(f, b, b->key, &l, 1, QUANCUN__REPORT_STATUS__REPORT_APPLIED, allow, allow_len), 0);
    free(allow);
    /* b: compensated by the deadline, late-confirmed by a counter whose load is refused. */
    assert_int_equal(load(f, b, T_AMOUNT, 1, f->now + 50, &l, &allow, &allow_len), 0);
    free(allow);
    f->now += 60;
    assert_int_equal(ledger_saga_expire(f->saga, NULL, f->now, 10, NULL, NULL), 0);
    assert_int_equal(load(f, b, 10 * T_DEPOSIT, 2, 0, &l, &allow, &allow_len), QC_EFUNDS);
    /* Admin: a deposit, a freeze and thaw, a new account and device, a revocation. */
    ledger_account_t acct;
    uint8_t txn[16];
    tk_txn_id(txn);
    f->now += 2;
    assert_int_equal(
        ledger_saga_deposit(f->saga, NULL, f->now, a->account, 1234, txn, &acct, f->why), 0);
    assert_int_equal(ledger_saga_set_frozen(f->saga, NULL, f->now, b->account, true, &acct, f->why),
                     0);
    assert_int_equal(
        ledger_saga_set_frozen(f->saga, NULL, f->now, b->account, false, &acct, f->why), 0);
    enroll(f, &f->dev[2], 2);
    assert_int_equal(load(f, &f->dev[2], T_AMOUNT, 0, 0, &l, &allow, &allow_len), 0);
    free(allow);
    ledger_device_t *d = malloc(sizeof *d);
    assert_int_equal(ledger_saga_revoke_device(f->saga, NULL, f->now, f->dev[2].id, d, f->why), 0);
    free(d);
}

/* The copy, after replay, is the live shard: record for record. */
static void test_replay_is_exact(void **state)
{
    fx_t *f = *state;
    tk_load_t l;
    uint8_t *allow = NULL;
    size_t allow_len = 0;
    /* Before the copy: a load left RESERVED, which the events after settle. */
    assert_int_equal(load(f, &f->dev[0], T_AMOUNT, 0, 0, &l, &allow, &allow_len), 0);
    free(allow);
    char copy_data[QCTEST_PATH_MAX + 16];
    assert_int_equal(ledger_store_copy(f->store, f->copy), 0);
    snprintf(copy_data, sizeof copy_data, "%s/data.mdb", f->copy);
    struct stat st;
    assert_int_equal(stat(copy_data, &st), 0);
    f->after_seq = outbox_next(f->store) - 1;
    /* The RESERVED load's device starts over at counter 0: its reserve above is the one
     * the next request (counter 0 again) compensates. */
    run_after_copy(f);
    write_replay(f, NULL, 0);

    ledger_store_t *copy = NULL;
    assert_int_equal(ledger_store_open(f->copy, T_MAP_SIZE, &copy), 0);
    ledger_replay_stats_t rs;
    assert_int_equal(ledger_replay_file(copy, f->bank, 0, 1, f->file, &rs), 0);
    assert_true(rs.events > 20);
    assert_int_equal(rs.reserves, 7); /* the two refused for funds are not loads */
    assert_int_equal(rs.first_seq, f->after_seq + 1);
    assert_int_equal(rs.last_seq, outbox_next(f->store) - 1);
    /* The replayed events wait in the outbox for the relay, as the live shard's do. */
    dump_t live, restored;
    digest_of(f->store, &live);
    digest_of(copy, &restored);
    assert_int_equal(live.n, restored.n);
    assert_memory_equal(live.md, restored.md, sizeof live.md);
    ledger_saga_config_t cfg = {.store = copy, .allow_key = f->bank, .shard_count = 1};
    ledger_saga_t *saga = NULL;
    assert_int_equal(ledger_saga_new(&cfg, &saga), 0);
    ledger_check_t c;
    assert_int_equal(ledger_saga_check(saga, NULL, &c), 0);
    assert_true(c.ok);
    ledger_saga_destroy(&saga);
    /* A second run (a restart after it) replays nothing again and changes nothing. */
    assert_int_equal(ledger_replay_file(copy, f->bank, 0, 1, f->file, &rs), 0);
    assert_int_equal(rs.events, 0);
    assert_true(rs.skipped > 20);
    digest_of(copy, &restored);
    assert_memory_equal(live.md, restored.md, sizeof live.md);
    ledger_store_close(&copy);
}

/* Event 2 (the first load's confirmation) claimed as another transition. */
static void change_type(Qcledger__OutboxEvent *ev, size_t k)
{
    if (k == 2) {
        assert_string_equal(ev->type, "load.confirmed");
        free(ev->type); /* the reply's strings are malloc'd (ledger_store_outbox_read_free) */
        ev->type = strdup("load.compensated");
        assert_non_null(ev->type);
    }
}

/* An event that is not what the shard wrote, or a missing one, stops the replay. */
static void test_replay_refuses_a_changed_or_missing_event(void **state)
{
    fx_t *f = *state;
    assert_int_equal(ledger_store_copy(f->store, f->copy), 0);
    f->after_seq = outbox_next(f->store) - 1;
    run_after_copy(f);
    ledger_store_t *copy = NULL;
    assert_int_equal(ledger_store_open(f->copy, T_MAP_SIZE, &copy), 0);
    ledger_replay_stats_t rs;
    write_replay(f, change_type, 0);
    assert_int_equal(ledger_replay_file(copy, f->bank, 0, 1, f->file, &rs), QC_EMISMATCH);
    assert_int_equal(outbox_next(copy), f->after_seq + 1); /* its chunk was not committed */
    write_replay(f, NULL, 7);
    assert_int_equal(ledger_replay_file(copy, f->bank, 0, 1, f->file, &rs), QC_EMISMATCH);
    /* Another shard's file. */
    write_replay(f, NULL, 0);
    assert_int_equal(ledger_replay_file(copy, f->bank, 1, 2, f->file, &rs), QC_ESHARD);
    ledger_store_close(&copy);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_replay_is_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replay_refuses_a_changed_or_missing_event, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
