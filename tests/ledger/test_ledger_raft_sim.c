/* test_ledger_raft_sim.c - the ledger's Raft state machine (ledger_fsm.h): its entries, its
 * applied index and snapshots through the API, then replica groups of 3 and 5 in libraft's
 * deterministic in-memory fixture (raft/fixture.h), each replica on its own LMDB, driven by a
 * seeded stream of loads and faults, in the spirit of TigerBeetle's VOPR.
 *
 * Each step of a simulation either proposes a batch on the leader (reserves, settlements
 * applied or rejected, lost reports, deadline compensations, outbox acks, freezes) or
 * injects a fault (a one-way link dropping every message, the leader cut off, a replica
 * killed or revived, a replica crashed and rebuilt from its LMDB, a replica whose LMDB is
 * wiped, a replica whose disk is lost for good and replaced by a new empty member), then lets
 * the cluster run for a while. Every run loses one disk for good past its middle. After every step
 * the bank invariants hold on every replica (ledger_saga_check: balances sum to zero per currency,
 * HOLD is the RESERVED loads, each load in one state with exactly its transfers, the deadline
 * index); every few steps, and at the end after healing, replicas at the same applied index hold
 * the same bytes (SHA-256 of their canonical dump), and every load acknowledged to a device is on
 * every replica. A low snapshot threshold makes leaders compact their logs, so lagging, restarted
 * and wiped replicas catch up from snapshots.
 *
 * ctest runs a short seeded campaign. For long ones:
 *   test_ledger_raft_sim --seeds N --steps M [--first-seed S] [--replicas R]
 * (tests/ledger/raft_sim_run wraps it) prints the figures of every seed. QC_SIM_SEED sets
 * the seed of the ctest run. */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <raft.h>
#include <raft/fixture.h>

#include "ledger_fsm.h"
#include "ledger_saga.h"
#include "ledger_store.h"
#include "ledger_testkit.h"
#include "qc_error.h"

#define SIM_SEED_DEFAULT 20261207u
#define SIM_STEPS_CI 300 /* steps of each ctest simulation: a few seconds */
#define SIM_REPLICAS_MAX 5
#define SIM_SERVERS_MAX RAFT_FIXTURE_MAX_SERVERS /* replicas and the ones that replaced them */
#define SIM_DEVICES 8                            /* one account each */
#define SIM_DEPOSIT 5000000                      /* fen per account at start */
#define SIM_AMOUNT_MAX 20000                     /* fen per load, at most */
#define SIM_EPOCH_MS 1765000000000ull            /* the wall time of fixture time 0 */
#define SIM_SKEW_MS 400 /* replicas' clocks differ by up to this, each way */
#define SIM_DEADLINE_MIN_MS 200
#define SIM_DEADLINE_SPAN_MS 4000
#define SIM_SNAPSHOT_THRESHOLD 16 /* entries between snapshots: compaction is frequent */
#define SIM_SNAPSHOT_TRAILING 8   /* entries kept behind a snapshot */
#define SIM_MAP_SIZE (256ull << 20)
#define SIM_DRAIN_MS 1000      /* a crashed replica's in-flight I/O completes within this */
#define SIM_RUN_MS_MAX 400     /* cluster time after a step, at most */
#define SIM_HEAL_MS_MAX 120000 /* cluster time for the final convergence, at most */
#define SIM_DIGEST_EVERY 20    /* steps between cross-replica digest comparisons */
#define SIM_BATCH_MAX 8        /* client ops per proposed batch */
#define SIM_REQ_OPS_MAX (3 * SIM_DEVICES) /* ops of one proposal: the setup is the largest */
#define SIM_ACKED_MAX 8192                /* acknowledged loads remembered for the final check */
#define SIM_DIR_MAX 256
#define SIM_DIGEST_OP_ONE_IN 8 /* of the leader's turns with nothing in flight: a digest op */

/* ------------------------------------------------------------ deterministic randomness */

static uint64_t rng_next(uint64_t *s) /* splitmix64 */
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static unsigned rng_below(uint64_t *s, unsigned n)
{
    assert(n > 0);
    return (unsigned)(rng_next(s) % n);
}

/* ------------------------------------------------------------ the simulated world */

typedef enum dev_state { DEV_IDLE, DEV_RESERVING, DEV_RESERVED, DEV_SETTLING } dev_state_t;

typedef struct sim_device {
    char id[32];
    char account[32];
    EVP_PKEY *key;
    uint8_t *cert;
    size_t cert_len;
    uint64_t counter; /* the device's own: how many loads it applied */
    dev_state_t state;
    bool in_flight; /* its op is proposed and not answered */
    tk_load_t load;
    uint8_t *req, *allow, *report;
    size_t req_len, allow_len, report_len;
    uint64_t deadline; /* of the load being reserved */
} sim_device_t;

typedef struct sim_replica {
    char dir[SIM_DIR_MAX];
    ledger_fsm_t *fsm;
    int64_t skew_ms;
} sim_replica_t;

typedef struct sim_figures {
    uint64_t steps, proposed, acked, unknown, entries_applied, entries_skipped, ops_refused;
    uint64_t snapshots_taken, snapshots_restored, snapshots_kept, install_snapshot_msgs;
    uint64_t invariant_checks, digest_checks, crashes, wipes, kills, partitions, leader_changes;
    uint64_t digest_ops_compared; /* replicas that compared a leader's digest op with theirs */
    uint64_t loads_confirmed, loads_compensated, loads_late, commit_index, replacements;
    uint64_t refused_funds, refused_frozen, refused_expired, refused_other; /* devices' ops */
} sim_figures_t;

typedef struct sim {
    struct raft_fixture f;
    unsigned n;       /* servers in the fixture: members, and the ones a replacement removed */
    unsigned members; /* voting members of the shard */
    bool gone[SIM_SERVERS_MAX]; /* lost its disk and was removed from the group */
    unsigned change_stage;      /* of a replacement: 0 none, 1 add, 2 promote, 3 remove old */
    bool change_pending;
    unsigned change_new, change_old;
    uint64_t rng;
    EVP_PKEY *bank;
    char root[SIM_DIR_MAX / 2];
    sim_replica_t rep[SIM_SERVERS_MAX];
    sim_device_t dev[SIM_DEVICES];
    bool setup_done;
    bool setup_in_flight;
    raft_id last_leader;
    uint8_t acked[SIM_ACKED_MAX][LEDGER_TXN_ID_SIZE];
    size_t n_acked;
    sim_figures_t fig;
    ledger_check_t check; /* scratch */
} sim_t;

/* One proposal: which device each op of the batch answers (-1: none). */
typedef struct sim_req {
    struct raft_apply req; /* first: the callback gets it back */
    sim_t *sim;
    size_t n;
    int dev[SIM_REQ_OPS_MAX];
    bool setup;
} sim_req_t;

/* ------------------------------------------------------------ the fixture's disk, mended
 *
 * libraft 0.15's in-memory raft_io (src/fixture.c) disagrees with itself about where its
 * persisted entries start once a snapshot exists: load() says at the snapshot's index + 1,
 * while truncate() counts from index 1, and a snapshot installed from the leader (trailing
 * 0) empties the entries, after which new ones are stored as if they started at 1. A
 * follower that installed a snapshot and then truncates a conflicting suffix copies past the
 * end of the array (ASan: heap-buffer-overflow in ioMethodTruncate), and a raft instance
 * restarted after a snapshot of its own is handed its entries under the wrong indexes. The
 * production raft_io (uv) has neither problem. We interpose on three methods of each
 * server's io and keep the index of its first persisted entry ourselves. */
typedef struct io_mend {
    struct raft_io *io;
    raft_index first;      /* index of the io's first persisted entry */
    raft_index installing; /* index of a leader's snapshot being stored, 0 when none */
    int (*load)(struct raft_io *, raft_term *, raft_id *, struct raft_snapshot **, raft_index *,
                struct raft_entry **, size_t *);
    int (*truncate)(struct raft_io *, raft_index);
    int (*snapshot_put)(struct raft_io *, unsigned, struct raft_io_snapshot_put *,
                        const struct raft_snapshot *, raft_io_snapshot_put_cb);
} io_mend_t;

static io_mend_t io_mends[RAFT_FIXTURE_MAX_SERVERS]; /* one simulation at a time */

static io_mend_t *mend_of(struct raft_io *io)
{
    for (size_t i = 0; i < RAFT_FIXTURE_MAX_SERVERS; i++)
        if (io_mends[i].io == io)
            return &io_mends[i];
    fail_msg("io not mended");
    return NULL;
}

static int mend_load(struct raft_io *io, raft_term *term, raft_id *voted_for,
                     struct raft_snapshot **snapshot, raft_index *start_index,
                     struct raft_entry **entries, size_t *n_entries)
{
    io_mend_t *m = mend_of(io);
    int rv = m->load(io, term, voted_for, snapshot, start_index, entries, n_entries);
    if (rv == 0)
        *start_index = m->first;
    return rv;
}

static int mend_truncate(struct raft_io *io, raft_index index)
{
    io_mend_t *m = mend_of(io);
    if (index == 1 && m->installing != 0) { /* the fixture dropping all for an install */
        m->first = m->installing + 1;
        m->installing = 0;
        return m->truncate(io, 1);
    }
    assert_true(index >= m->first);
    return m->truncate(io, index - m->first + 1);
}

static int mend_snapshot_put(struct raft_io *io, unsigned trailing,
                             struct raft_io_snapshot_put *req, const struct raft_snapshot *snap,
                             raft_io_snapshot_put_cb cb)
{
    io_mend_t *m = mend_of(io);
    if (trailing == 0)
        m->installing = snap->index;
    return m->snapshot_put(io, trailing, req, snap, cb);
}

static void io_mend(unsigned i, struct raft_io *io)
{
    assert_true(i < RAFT_FIXTURE_MAX_SERVERS);
    io_mends[i] = (io_mend_t){.io = io,
                              .first = 1,
                              .load = io->load,
                              .truncate = io->truncate,
                              .snapshot_put = io->snapshot_put};
    io->load = mend_load;
    io->truncate = mend_truncate;
    io->snapshot_put = mend_snapshot_put;
}

static uint64_t leader_now(sim_t *s, unsigned i)
{
    return (uint64_t)((int64_t)(SIM_EPOCH_MS + raft_fixture_time(&s->f)) + s->rep[i].skew_ms);
}

static void fsm_open(sim_t *s, unsigned i)
{
    ledger_fsm_config_t cfg = {.dir = s->rep[i].dir,
                               .map_size = SIM_MAP_SIZE,
                               .allow_key = s->bank,
                               .shard = 0,
                               .shard_count = 1};
    assert_int_equal(ledger_fsm_new(&cfg, &s->rep[i].fsm), 0);
}

/* Adds a dying fsm's counters to the figures. */
static void fsm_retire(sim_t *s, unsigned i)
{
    ledger_fsm_stats_t st;
    ledger_fsm_stats(s->rep[i].fsm, &st);
    s->fig.entries_applied += st.applied;
    s->fig.entries_skipped += st.skipped;
    s->fig.ops_refused += st.ops_refused;
    s->fig.snapshots_taken += st.snapshots_taken;
    s->fig.snapshots_restored += st.snapshots_restored;
    s->fig.snapshots_kept += st.snapshots_kept;
    s->fig.digest_ops_compared += st.digest_checks;
    ledger_fsm_destroy(&s->rep[i].fsm);
}

/* The settings the fixture gives its servers, and our snapshot cadence. */
static void raft_tune(struct raft *r)
{
    raft_set_election_timeout(r, 1000);
    raft_set_heartbeat_timeout(r, 100);
    raft_set_install_snapshot_timeout(r, 30000);
    raft_set_snapshot_threshold(r, SIM_SNAPSHOT_THRESHOLD);
    raft_set_snapshot_trailing(r, SIM_SNAPSHOT_TRAILING);
}

static void rm_env(const char *dir)
{
    char path[SIM_DIR_MAX + 16];
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/lock.mdb", dir);
    unlink(path);
}

/* Where the replicas' environments go: QC_SIM_DIR, else /dev/shm when writable (every
 * apply is a durable LMDB commit, and fsync on tmpfs costs nothing), else TMPDIR or /tmp. */
static const char *sim_base_dir(void)
{
    const char *dir = getenv("QC_SIM_DIR");
    if (dir != NULL && *dir != '\0')
        return dir;
    if (access("/dev/shm", W_OK) == 0)
        return "/dev/shm";
    dir = getenv("TMPDIR");
    return dir != NULL && *dir != '\0' ? dir : "/tmp";
}

static void sim_init(sim_t *s, unsigned n, uint64_t seed)
{
    memset(s, 0, sizeof *s);
    assert_true(n >= 1 && n <= SIM_REPLICAS_MAX);
    s->n = n;
    s->members = n;
    s->rng = seed;
    s->bank = qctest_key_new();
    snprintf(s->root, sizeof s->root, "%s/qc-raft-sim-XXXXXX", sim_base_dir());
    assert_non_null(mkdtemp(s->root));
    assert_int_equal(raft_fixture_initialize(&s->f), 0);
    for (unsigned i = 0; i < n; i++) {
        snprintf(s->rep[i].dir, sizeof s->rep[i].dir, "%s/r%u", s->root, i);
        assert_int_equal(mkdir(s->rep[i].dir, 0700), 0);
        s->rep[i].skew_ms = (int64_t)rng_below(&s->rng, 2 * SIM_SKEW_MS + 1) - SIM_SKEW_MS;
        fsm_open(s, i);
        assert_int_equal(raft_fixture_grow(&s->f, ledger_fsm_raft(s->rep[i].fsm)), 0);
    }
    memset(io_mends, 0, sizeof io_mends);
    for (unsigned i = 0; i < n; i++) {
        struct raft *r = raft_fixture_get(&s->f, i);
        io_mend(i, &s->f.servers[i].io);
        raft_tune(r);
        ledger_fsm_bind(s->rep[i].fsm, r);
    }
    struct raft_configuration conf;
    assert_int_equal(raft_fixture_configuration(&s->f, n, &conf), 0);
    assert_int_equal(raft_fixture_bootstrap(&s->f, &conf), 0);
    raft_configuration_close(&conf);
    assert_int_equal(raft_fixture_start(&s->f), 0);
    for (unsigned d = 0; d < SIM_DEVICES; d++) {
        sim_device_t *dv = &s->dev[d];
        snprintf(dv->id, sizeof dv->id, "dev-%u", d);
        snprintf(dv->account, sizeof dv->account, "acct-%u", d);
        dv->key = qctest_key_new();
        qctest_cert_self_der(dv->key, dv->id, &dv->cert, &dv->cert_len);
    }
}

static void dev_forget(sim_device_t *d)
{
    free(d->req);
    free(d->allow);
    free(d->report);
    d->req = d->allow = d->report = NULL;
    d->req_len = d->allow_len = d->report_len = 0;
}

static void sim_fini(sim_t *s)
{
    raft_fixture_close(&s->f);
    for (unsigned i = 0; i < s->n; i++) {
        fsm_retire(s, i);
        rm_env(s->rep[i].dir);
        rmdir(s->rep[i].dir);
    }
    rmdir(s->root);
    for (unsigned d = 0; d < SIM_DEVICES; d++) {
        dev_forget(&s->dev[d]);
        free(s->dev[d].cert);
        EVP_PKEY_free(s->dev[d].key);
    }
    EVP_PKEY_free(s->bank);
}

/* ------------------------------------------------------------ checks */

static void check_replica(sim_t *s, unsigned i)
{
    ledger_check_t *c = &s->check;
    ledger_fsm_stats_t st;
    ledger_fsm_stats(s->rep[i].fsm, &st);
    if (st.diverged)
        fail_msg("replica %u diverged at index %" PRIu64, i, st.diverged_index);
    assert_int_equal(ledger_saga_check(ledger_fsm_saga(s->rep[i].fsm), NULL, c), 0);
    if (!c->ok) {
        for (size_t k = 0; k < c->n_problems; k++)
            fprintf(stderr, "replica %u: %s\n", i, c->problems[k]);
        fail_msg("bank invariants broken on replica %u", i);
    }
    s->fig.invariant_checks++;
}

/* With QC_SIM_DUMP set, the records of replicas that differ, to compare by eye. */
static int dump_record(void *arg, unsigned db, const uint8_t *key, size_t key_len,
                       const uint8_t *val, size_t val_len)
{
    (void)arg;
    (void)val;
    fprintf(stderr, "  db %u key %zu bytes value %zu bytes:", db, key_len, val_len);
    for (size_t i = 0; i < key_len && i < 24; i++)
        fprintf(stderr, " %02x", key[i]);
    fprintf(stderr, "\n");
    return 0;
}

static void dump_replica(sim_t *s, unsigned i)
{
    ledger_store_t *st = ledger_fsm_store(s->rep[i].fsm);
    MDB_txn *txn = NULL;
    if (getenv("QC_SIM_DUMP") == NULL || ledger_store_txn_begin(st, NULL, false, &txn) != 0)
        return;
    fprintf(stderr, "replica %u:\n", i);
    /* A diagnostic dump on the way to a failure: a failed read only shortens it. */
    QC_IGNORE(ledger_store_each_record(st, txn, dump_record, NULL));
    ledger_store_txn_abort(txn);
}

/* Replicas at the same applied index must hold the same bytes. */
static void check_digests(sim_t *s)
{
    uint8_t d[SIM_SERVERS_MAX][32];
    uint64_t idx[SIM_SERVERS_MAX];
    for (unsigned i = 0; i < s->n; i++)
        assert_int_equal(ledger_fsm_digest(s->rep[i].fsm, d[i], &idx[i]), 0);
    for (unsigned i = 0; i < s->n; i++)
        for (unsigned j = i + 1; j < s->n; j++)
            if (idx[i] == idx[j] && idx[i] != 0) {
                if (memcmp(d[i], d[j], 32) != 0) {
                    dump_replica(s, i);
                    dump_replica(s, j);
                    fail_msg("replicas %u and %u differ at applied index %" PRIu64, i, j, idx[i]);
                }
                s->fig.digest_checks++;
            }
}

/* ------------------------------------------------------------ proposals */

static void remember_acked(sim_t *s, const uint8_t *txn_id)
{
    if (s->n_acked < SIM_ACKED_MAX)
        memcpy(s->acked[s->n_acked++], txn_id, LEDGER_TXN_ID_SIZE);
}

/* The answer to a device's op: code, or unknown (leadership lost before commit). */
static void dev_answer(sim_t *s, sim_device_t *d, bool known, int code)
{
    d->in_flight = false;
    if (!known)
        return; /* it sends the same bytes again: idempotent by txn id */
    s->fig.refused_funds += code == QC_EFUNDS;
    s->fig.refused_frozen += code == QC_EFROZEN;
    s->fig.refused_expired += code == QC_EEXPIRED;
    s->fig.refused_other +=
        code != 0 && code != QC_EFUNDS && code != QC_EFROZEN && code != QC_EEXPIRED;
    if (d->state == DEV_RESERVING) {
        if (code == 0) {
            d->state = DEV_RESERVED;
            remember_acked(s, d->load.txn_id);
        } else {
            d->state = DEV_IDLE;
            dev_forget(d);
        }
    } else if (d->state == DEV_SETTLING) {
        d->state = DEV_IDLE;
        dev_forget(d);
    }
}

static void apply_cb(struct raft_apply *req, int status, void *result)
{
    sim_req_t *r = (sim_req_t *)req;
    sim_t *s = r->sim;
    const ledger_fsm_result_t *res = result;
    bool known = status == 0 && res != NULL && !res->skipped && !res->refused;
    if (known) {
        assert_int_equal(res->n_ops, r->n);
        s->fig.acked++;
    } else {
        s->fig.unknown++;
    }
    if (r->setup) {
        s->setup_in_flight = false;
        if (known)
            for (size_t i = 0; i < r->n; i++)
                assert_int_equal(res->ops[i].code, 0);
        s->setup_done = known;
    }
    for (size_t i = 0; i < r->n; i++)
        if (r->dev[i] >= 0)
            dev_answer(s, &s->dev[r->dev[i]], known, known ? res->ops[i].code : 0);
    free(r);
}

/* Proposes batch b on the leader; devices of r are answered by apply_cb. */
static void propose(sim_t *s, unsigned leader, ledger_fsm_batch_t *b, sim_req_t *r)
{
    struct raft_buffer buf;
    assert_int_equal(ledger_fsm_batch_encode(b, &buf), 0);
    r->sim = s;
    int rv = raft_apply(raft_fixture_get(&s->f, leader), &r->req, &buf, 1, apply_cb);
    if (rv != 0) {
        raft_free(buf.base);
        for (size_t i = 0; i < r->n; i++)
            if (r->dev[i] >= 0)
                s->dev[r->dev[i]].in_flight = false;
        if (r->setup)
            s->setup_in_flight = false;
        free(r);
        return;
    }
    s->fig.proposed++;
}

/* The leader's digest at its applied index, alone in an entry, as the service proposes it
 * when nothing is in flight (it is compared only by replicas applying it right after that
 * index; otherwise every replica skips it). */
static void propose_digest(sim_t *s, unsigned leader)
{
    uint8_t d[32];
    uint64_t idx = 0;
    assert_int_equal(ledger_fsm_digest(s->rep[leader].fsm, d, &idx), 0);
    ledger_fsm_batch_t *b = NULL;
    assert_int_equal(ledger_fsm_batch_new(leader_now(s, leader), &b), 0);
    assert_int_equal(ledger_fsm_batch_digest(b, idx, d), 0);
    sim_req_t *r = calloc(1, sizeof *r);
    assert_non_null(r);
    r->dev[r->n++] = -1;
    propose(s, leader, b, r);
    ledger_fsm_batch_destroy(&b);
}

static void add_setup(sim_t *s, ledger_fsm_batch_t *b, sim_req_t *r)
{
    for (unsigned d = 0; d < SIM_DEVICES; d++) {
        ledger_account_t spec = {.currency = TK_CURRENCY};
        snprintf(spec.id, sizeof spec.id, "%s", s->dev[d].account);
        uint8_t txn[LEDGER_TXN_ID_SIZE] = {0xde, 0xb0, (uint8_t)d};
        assert_int_equal(ledger_fsm_batch_open_account(b, &spec), 0);
        assert_int_equal(ledger_fsm_batch_deposit(b, spec.id, SIM_DEPOSIT, txn), 0);
        assert_int_equal(
            ledger_fsm_batch_enroll(b, spec.id, s->dev[d].cert, s->dev[d].cert_len, 0, 0), 0);
        r->dev[r->n++] = -1;
        r->dev[r->n++] = -1;
        r->dev[r->n++] = -1;
    }
    r->setup = true;
    s->setup_in_flight = true;
}

/* The device's next op into b: a new load (its reserve, then the store of the allow the bank
 * signs for it), its settlement, or a retry of either. Returns how many ops it added: 0 when
 * it has nothing to send; the first is the device's. */
static unsigned dev_op(sim_t *s, unsigned leader, sim_device_t *d, ledger_fsm_batch_t *b)
{
    if (d->in_flight)
        return 0;
    if (d->state == DEV_IDLE) {
        d->load = (tk_load_t){.device_id = d->id,
                              .account_id = d->account,
                              .amount = rng_below(&s->rng, 20) == 0
                                            ? 2 * SIM_DEPOSIT /* refused: QC_EFUNDS */
                                            : 1 + (int64_t)rng_below(&s->rng, SIM_AMOUNT_MAX),
                              .currency = TK_CURRENCY,
                              .counter = d->counter};
        for (size_t k = 0; k < LEDGER_TXN_ID_SIZE; k += 8) {
            uint64_t v = rng_next(&s->rng);
            memcpy(d->load.txn_id + k, &v, 8);
        }
        uint64_t deadline =
            leader_now(s, leader) + SIM_DEADLINE_MIN_MS + rng_below(&s->rng, SIM_DEADLINE_SPAN_MS);
        tk_request(d->key, &d->load, &d->req, &d->req_len);
        /* The allow the bank signs once the reserve applied: its body is the one the ledger
         * builds for a load reserved at the entry's time. A slower new leader's entry applies
         * at the applied time instead: then the body differs, the replicas all refuse to store
         * it, and the device's report of it compensates. */
        tk_allow_at(s->bank, d->req, d->req_len, leader_now(s, leader), deadline, &d->allow,
                    &d->allow_len);
        d->deadline = deadline;
        d->state = DEV_RESERVING;
    } else if (d->state == DEV_RESERVED) {
        /* What the device does with its allow: applies it and reports, rejects it, or
         * applies or not and its report is lost (the deadline and the next request's
         * counter settle it). */
        unsigned what = rng_below(&s->rng, 10);
        bool applied = what < 7 || what == 9;
        uint64_t before = d->counter;
        if (applied)
            d->counter++;
        if (what >= 8) {
            d->state = DEV_IDLE;
            dev_forget(d);
            return 0;
        }
        tk_report(d->key, &d->load, applied ? before + 1 : before,
                  applied ? QUANCUN__REPORT_STATUS__REPORT_APPLIED
                          : QUANCUN__REPORT_STATUS__REPORT_REJECTED,
                  d->allow, d->allow_len, &d->report, &d->report_len);
        d->state = DEV_SETTLING;
    }
    int rc = d->state == DEV_RESERVING
                 ? ledger_fsm_batch_reserve(b, d->req, d->req_len, d->deadline)
                 : ledger_fsm_batch_settle(b, d->load.txn_id, d->report, d->report_len);
    assert_int_equal(rc, 0);
    d->in_flight = true;
    if (d->state != DEV_RESERVING)
        return 1;
    /* In the same entry, after the reserve. */
    assert_int_equal(ledger_fsm_batch_store_allow(b, d->load.txn_id, d->allow, d->allow_len), 0);
    return 2;
}

/* The highest outbox sequence the leader holds, 0 when none. */
static uint64_t outbox_last(sim_t *s, unsigned leader)
{
    ledger_store_t *st = ledger_fsm_store(s->rep[leader].fsm);
    MDB_txn *txn = NULL;
    assert_int_equal(ledger_store_txn_begin(st, NULL, false, &txn), 0);
    Qcledger__OutboxReadReply reply;
    uint64_t last = 0;
    if (ledger_store_outbox_read(st, txn, 0, 64, &reply) == 0) {
        if (reply.n_events > 0)
            last = reply.events[reply.n_events - 1]->seq;
        ledger_store_outbox_read_free(&reply);
    }
    ledger_store_txn_abort(txn);
    return last;
}

static void step_propose(sim_t *s, unsigned leader)
{
    struct raft *lr = raft_fixture_get(&s->f, leader);
    if (s->setup_done && raft_last_applied(lr) == raft_last_index(lr) &&
        rng_below(&s->rng, SIM_DIGEST_OP_ONE_IN) == 0) {
        propose_digest(s, leader);
        return;
    }
    ledger_fsm_batch_t *b = NULL;
    assert_int_equal(ledger_fsm_batch_new(leader_now(s, leader), &b), 0);
    sim_req_t *r = calloc(1, sizeof *r);
    assert_non_null(r);
    if (!s->setup_done) {
        if (!s->setup_in_flight)
            add_setup(s, b, r);
    } else {
        /* Deadlines first, as the single-node writer does. */
        if (rng_below(&s->rng, 3) == 0) {
            assert_int_equal(ledger_fsm_batch_expire(b, leader_now(s, leader), 0), 0);
            r->dev[r->n++] = -1;
        }
        unsigned want = 1 + rng_below(&s->rng, SIM_BATCH_MAX);
        for (unsigned k = 0; k < want; k++) {
            unsigned d = rng_below(&s->rng, SIM_DEVICES);
            unsigned added = dev_op(s, leader, &s->dev[d], b);
            for (unsigned op = 0; op < added; op++)
                r->dev[r->n++] = op == 0 ? (int)d : -1;
        }
        if (rng_below(&s->rng, 8) == 0) {
            assert_int_equal(ledger_fsm_batch_outbox_ack(b, outbox_last(s, leader)), 0);
            r->dev[r->n++] = -1;
        }
        if (rng_below(&s->rng, 16) == 0) { /* an account frozen (1 in 4) or thawed: QC_EFROZEN */
            const char *acct = s->dev[rng_below(&s->rng, SIM_DEVICES)].account;
            assert_int_equal(ledger_fsm_batch_set_frozen(b, acct, rng_below(&s->rng, 4) == 0), 0);
            r->dev[r->n++] = -1;
        }
    }
    if (r->n > 0)
        propose(s, leader, b, r);
    else
        free(r);
    ledger_fsm_batch_destroy(&b);
}

/* ------------------------------------------------------------ faults */

/* Crashes replica i and brings it back from what it had on disk: its LMDB (wiped first when
 * wipe) and the log and snapshot its raft instance persisted in the fixture. */
static void crash_restart(sim_t *s, unsigned i, bool wipe)
{
    if (raft_fixture_alive(&s->f, i))
        raft_fixture_kill(&s->f, i);
    /* Its disk writes and sends in flight complete or drop, so none finds the new instance. */
    raft_fixture_step_until_elapsed(&s->f, SIM_DRAIN_MS);
    struct raft *r = raft_fixture_get(&s->f, i);
    raft_close(r, NULL);
    fsm_retire(s, i);
    if (wipe)
        rm_env(s->rep[i].dir);
    fsm_open(s, i);
    struct raft_fixture_server *srv = &s->f.servers[i];
    assert_int_equal(raft_init(r, &srv->io, ledger_fsm_raft(s->rep[i].fsm), srv->id, srv->address),
                     0);
    raft_tune(r);
    ledger_fsm_bind(s->rep[i].fsm, r);
    assert_int_equal(raft_start(r), 0);
    raft_fixture_revive(&s->f, i);
}

/* A replica still in the group, at random. */
static unsigned pick_member(sim_t *s)
{
    for (;;) {
        unsigned i = rng_below(&s->rng, s->n);
        if (!s->gone[i])
            return i;
    }
}

/* ------------------------------------------------------------ a lost disk: replacement
 *
 * A replica whose disk is lost has lost its Raft term and vote too, so it may not come back
 * under its old id (it could vote twice in a term). It is replaced: a new server with an
 * empty LMDB and an empty log joins (raft_add), catches up from the leader's snapshot and log
 * and becomes a voter (raft_assign), and the old one is removed (raft_remove), one
 * configuration change at a time, each retried on whoever leads. */
typedef struct sim_change {
    struct raft_change req; /* first: the callback gets it back */
    sim_t *sim;
} sim_change_t;

static void change_advance(sim_t *s)
{
    if (++s->change_stage == 4) {
        s->change_stage = 0;
        s->fig.replacements++;
    }
}

static void change_cb(struct raft_change *req, int status)
{
    sim_change_t *c = (sim_change_t *)req;
    c->sim->change_pending = false;
    if (status == 0)
        change_advance(c->sim);
    free(c);
}

/* Submits the replacement's next configuration change on the leader, if any is due. */
static void change_drive(sim_t *s)
{
    unsigned leader = raft_fixture_leader_index(&s->f);
    if (s->change_stage == 0 || s->change_pending || leader >= s->n)
        return;
    struct raft *r = raft_fixture_get(&s->f, leader);
    const struct raft_fixture_server *nw = &s->f.servers[s->change_new];
    raft_id old_id = s->f.servers[s->change_old].id;
    sim_change_t *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->sim = s;
    int rv = 0;
    if (s->change_stage == 1) {
        rv = raft_add(r, &c->req, nw->id, nw->address, change_cb);
        if (rv == RAFT_DUPLICATEID) /* an earlier attempt went through */
            change_advance(s);
    } else if (s->change_stage == 2) {
        rv = raft_assign(r, &c->req, nw->id, RAFT_VOTER, change_cb);
        if (rv == RAFT_BADROLE) /* already a voter */
            change_advance(s);
        else if (rv == RAFT_NOTFOUND) /* the add was lost with its leader */
            s->change_stage = 1;
    } else {
        rv = raft_remove(r, &c->req, old_id, change_cb);
        if (rv == RAFT_BADID) /* already removed */
            change_advance(s);
    }
    if (rv == 0)
        s->change_pending = true;
    else
        free(c); /* RAFT_CANTCHANGE and the like: again at the next step */
}

/* Replica i loses its disk for good; a new server starts empty to take its place. */
static void replace(sim_t *s, unsigned i)
{
    unsigned k = s->n;
    assert_true(k < SIM_SERVERS_MAX);
    if (raft_fixture_alive(&s->f, i))
        raft_fixture_kill(&s->f, i);
    s->gone[i] = true;
    snprintf(s->rep[k].dir, sizeof s->rep[k].dir, "%s/r%u", s->root, k);
    assert_int_equal(mkdir(s->rep[k].dir, 0700), 0);
    s->rep[k].skew_ms = (int64_t)rng_below(&s->rng, 2 * SIM_SKEW_MS + 1) - SIM_SKEW_MS;
    fsm_open(s, k);
    assert_int_equal(raft_fixture_grow(&s->f, ledger_fsm_raft(s->rep[k].fsm)), 0);
    s->n++;
    struct raft *r = raft_fixture_get(&s->f, k);
    io_mend(k, &s->f.servers[k].io);
    raft_tune(r);
    ledger_fsm_bind(s->rep[k].fsm, r);
    /* The fixture connects a new server to everyone: the dead must stay silent to it. */
    for (unsigned m = 0; m < k; m++)
        if (!raft_fixture_alive(&s->f, m)) {
            raft_fixture_saturate(&s->f, k, m);
            raft_fixture_saturate(&s->f, m, k);
        }
    assert_int_equal(raft_start(r), 0);
    s->change_new = k;
    s->change_old = i;
    s->change_stage = 1;
}

/* Replacements a run may make. The fixture holds 8 servers, and it judges a leader stable only
 * when followers that acknowledge it are half of the servers that list themselves in their own
 * configuration, which a removed server that never learnt of its removal still does: with 3
 * replicas, a second replacement under way would leave one acknowledging follower for four
 * such servers, and the fixture would see no leader ever again (raft itself would be fine). */
static unsigned replacements_max(const sim_t *s)
{
    return s->members == 3 ? 1 : s->members == 5 ? 3 : 0;
}

/* Replaces replica i when a replacement may start: none under way, a leader that is not i,
 * room in the fixture. Returns whether it started one. */
static bool try_replace(sim_t *s, unsigned i)
{
    unsigned leader = raft_fixture_leader_index(&s->f);
    if (s->change_stage != 0 || leader >= s->n || i == leader || s->gone[i] ||
        s->n - s->members >= replacements_max(s) || s->n >= SIM_SERVERS_MAX)
        return false;
    replace(s, i);
    return true;
}

static unsigned alive_count(sim_t *s)
{
    unsigned n = 0;
    for (unsigned i = 0; i < s->n; i++)
        n += raft_fixture_alive(&s->f, i);
    return n;
}

static void heal_links(sim_t *s)
{
    for (unsigned i = 0; i < s->n; i++)
        for (unsigned j = 0; j < s->n; j++)
            if (i != j && raft_fixture_alive(&s->f, i) && raft_fixture_alive(&s->f, j) &&
                raft_fixture_saturated(&s->f, i, j))
                raft_fixture_desaturate(&s->f, i, j);
}

static void step_fault(sim_t *s, unsigned what)
{
    unsigned i = pick_member(s), j = pick_member(s);
    unsigned leader = raft_fixture_leader_index(&s->f);
    bool alive_i = raft_fixture_alive(&s->f, i);
    switch (what) {
    case 0: /* a one-way link drops everything */
        if (i != j && alive_i && raft_fixture_alive(&s->f, j)) {
            raft_fixture_saturate(&s->f, i, j);
            s->fig.partitions++;
        }
        break;
    case 1: /* the leader cut off from everyone */
        if (leader < s->n) {
            for (unsigned k = 0; k < s->n; k++)
                if (k != leader && raft_fixture_alive(&s->f, k)) {
                    raft_fixture_saturate(&s->f, leader, k);
                    raft_fixture_saturate(&s->f, k, leader);
                }
            s->fig.partitions++;
        }
        break;
    case 2:
        heal_links(s);
        break;
    case 3: /* killed, but its memory kept (a long pause) */
        if (alive_i && alive_count(s) > 1) {
            raft_fixture_kill(&s->f, i);
            s->fig.kills++;
        }
        break;
    case 4:
        if (!alive_i)
            raft_fixture_revive(&s->f, i);
        break;
    case 5:
        crash_restart(s, i, false);
        s->fig.crashes++;
        break;
    case 6:
        crash_restart(s, i, true);
        s->fig.wipes++;
        break;
    case 7: /* a disk lost for good */
        try_replace(s, i);
        break;
    default:
        break;
    }
}

/* ------------------------------------------------------------ the run */

static void sim_step(sim_t *s)
{
    change_drive(s);
    unsigned roll = rng_below(&s->rng, 1000);
    unsigned leader = raft_fixture_leader_index(&s->f);
    if (roll < 700) {
        if (leader < s->n)
            step_propose(s, leader);
    } else if (roll < 760) {
        step_fault(s, 0);
    } else if (roll < 780) {
        step_fault(s, 1);
    } else if (roll < 850) {
        step_fault(s, 2);
    } else if (roll < 880) {
        step_fault(s, 3);
    } else if (roll < 930) {
        step_fault(s, 4);
    } else if (roll < 960) {
        step_fault(s, 5);
    } else if (roll < 980) {
        step_fault(s, 6);
    } else if (roll < 985) {
        step_fault(s, 7);
    }
    raft_fixture_step_until_elapsed(&s->f, 1 + rng_below(&s->rng, SIM_RUN_MS_MAX));
    if (s->f.leader_id != 0 && s->f.leader_id != s->last_leader) {
        s->fig.leader_changes++;
        s->last_leader = s->f.leader_id;
    }
    for (unsigned i = 0; i < s->n; i++)
        check_replica(s, i);
    s->fig.steps++;
}

static bool all_applied(struct raft_fixture *f, void *arg)
{
    const sim_t *s = arg;
    unsigned l = raft_fixture_leader_index(f);
    if (l >= raft_fixture_n(f))
        return false;
    raft_index last = raft_last_index(raft_fixture_get(f, l));
    for (unsigned i = 0; i < raft_fixture_n(f); i++)
        if (!s->gone[i] && raft_last_applied(raft_fixture_get(f, i)) < last)
            return false;
    return true;
}

static bool change_done(struct raft_fixture *f, void *arg)
{
    sim_t *s = arg;
    (void)f;
    change_drive(s);
    return s->change_stage == 0;
}

/* Heals everything, lets every replica apply the leader's whole log, and checks that they
 * agree byte for byte and that every acknowledged load is on each. */
static void sim_converge(sim_t *s)
{
    for (unsigned i = 0; i < s->n; i++)
        if (!s->gone[i] && !raft_fixture_alive(&s->f, i))
            raft_fixture_revive(&s->f, i);
    heal_links(s);
    assert_true(raft_fixture_step_until_has_leader(&s->f, SIM_HEAL_MS_MAX));
    assert_true(raft_fixture_step_until(&s->f, change_done, s, SIM_HEAL_MS_MAX));
    /* A barrier of the new term commits everything before it. */
    unsigned leader = raft_fixture_leader_index(&s->f);
    ledger_fsm_batch_t *b = NULL;
    assert_int_equal(ledger_fsm_batch_new(leader_now(s, leader), &b), 0);
    assert_int_equal(ledger_fsm_batch_expire(b, 0, 0), 0);
    sim_req_t *r = calloc(1, sizeof *r);
    assert_non_null(r);
    r->dev[r->n++] = -1;
    propose(s, leader, b, r);
    ledger_fsm_batch_destroy(&b);
    assert_true(raft_fixture_step_until(&s->f, all_applied, s, SIM_HEAL_MS_MAX));
    uint8_t d0[32], d[32];
    uint64_t i0 = 0, idx = 0;
    unsigned first = pick_member(s), members = 0;
    assert_int_equal(ledger_fsm_digest(s->rep[first].fsm, d0, &i0), 0);
    for (unsigned i = 0; i < s->n; i++) {
        if (s->gone[i])
            continue;
        members++;
        check_replica(s, i);
        assert_int_equal(ledger_fsm_digest(s->rep[i].fsm, d, &idx), 0);
        assert_int_equal(idx, i0);
        assert_memory_equal(d, d0, sizeof d);
        s->fig.digest_checks++;
        ledger_store_t *st = ledger_fsm_store(s->rep[i].fsm);
        MDB_txn *txn = NULL;
        assert_int_equal(ledger_store_txn_begin(st, NULL, false, &txn), 0);
        for (size_t k = 0; k < s->n_acked; k++) {
            ledger_load_t *l = malloc(sizeof *l);
            assert_non_null(l);
            assert_int_equal(ledger_store_load_get(st, txn, s->acked[k], l), 0);
            if (i == first) {
                s->fig.loads_confirmed += l->state == QUANCUN__LOAD_STATE__LOAD_CONFIRMED;
                s->fig.loads_compensated += l->state == QUANCUN__LOAD_STATE__LOAD_COMPENSATED;
                s->fig.loads_late += l->state == QUANCUN__LOAD_STATE__LOAD_LATE_CONFIRMED;
            }
            free(l);
        }
        ledger_store_txn_abort(txn);
        /* The indexes of loads and transfers (not in the digest: derived) agree with the
         * records on every replica, whether it applied entries, restored a snapshot or
         * rebuilt from its disk. */
        ledger_store_scrub_t scrub;
        memset(&scrub, 0, sizeof scrub);
        bool pass = false;
        assert_int_equal(ledger_store_scrub_step(st, &scrub, SIZE_MAX, &pass), 0);
        assert_true(pass);
        assert_int_equal(scrub.index_bad, 0);
        assert_int_equal(scrub.corrupt, 0);
        assert_true(scrub.index_checked >= 4 * s->n_acked); /* a load and its three entries */
    }
    assert_int_equal(members, s->members);
    s->fig.commit_index = i0;
    for (unsigned i = 0; i < s->n; i++)
        s->fig.install_snapshot_msgs += raft_fixture_n_recv(&s->f, i, RAFT_IO_INSTALL_SNAPSHOT);
}

static void sim_run(unsigned n, uint64_t seed, unsigned steps, sim_figures_t *out)
{
    sim_t *s = calloc(1, sizeof *s);
    assert_non_null(s);
    sim_init(s, n, seed);
    bool replaced = false;
    for (unsigned k = 0; k < steps; k++) {
        /* Every run past its middle loses one disk for good, if chance did not already. */
        if (k >= steps / 2 && !replaced)
            replaced = s->n > s->members || try_replace(s, pick_member(s));
        sim_step(s);
        if (k % SIM_DIGEST_EVERY == 0)
            check_digests(s);
    }
    sim_converge(s);
    assert_true(s->setup_done);
    sim_fini(s);
    *out = s->fig;
    free(s);
}

static void print_figures(FILE *o, unsigned n, uint64_t seed, const sim_figures_t *g)
{
    fprintf(o,
            "seed %" PRIu64 " replicas %u: steps %" PRIu64 " commit_index %" PRIu64
            " proposed %" PRIu64 " acked %" PRIu64 " unknown %" PRIu64 " entries_applied %" PRIu64
            " entries_skipped %" PRIu64 " ops_refused %" PRIu64 " snapshots_taken %" PRIu64
            " snapshots_installed %" PRIu64 " snapshots_kept %" PRIu64
            " install_snapshot_msgs %" PRIu64 " invariant_checks %" PRIu64 " digest_checks %" PRIu64
            " crashes %" PRIu64 " wipes %" PRIu64 " kills %" PRIu64 " partitions %" PRIu64
            " leader_changes %" PRIu64 " loads_acked %" PRIu64 " confirmed %" PRIu64
            " compensated %" PRIu64 " late_confirmed %" PRIu64 " replacements %" PRIu64
            " refused_funds %" PRIu64 " refused_frozen %" PRIu64 " refused_expired %" PRIu64
            " refused_other %" PRIu64 " digest_ops_compared %" PRIu64 "\n",
            seed, n, g->steps, g->commit_index, g->proposed, g->acked, g->unknown,
            g->entries_applied, g->entries_skipped, g->ops_refused, g->snapshots_taken,
            g->snapshots_restored, g->snapshots_kept, g->install_snapshot_msgs, g->invariant_checks,
            g->digest_checks, g->crashes, g->wipes, g->kills, g->partitions, g->leader_changes,
            g->loads_confirmed + g->loads_compensated + g->loads_late, g->loads_confirmed,
            g->loads_compensated, g->loads_late, g->replacements, g->refused_funds,
            g->refused_frozen, g->refused_expired, g->refused_other, g->digest_ops_compared);
}

static uint64_t ci_seed(void)
{
    const char *e = getenv("QC_SIM_SEED");
    return e != NULL && *e != '\0' ? strtoull(e, NULL, 10) : SIM_SEED_DEFAULT;
}

/* ------------------------------------------------------------ ctest: the simulations */

static void test_sim_3_replicas(void **state)
{
    (void)state;
    sim_figures_t g;
    sim_run(3, ci_seed(), SIM_STEPS_CI, &g);
    print_figures(stderr, 3, ci_seed(), &g);
    /* The run must have exercised what it claims to. */
    assert_true(g.acked > 0);
    assert_true(g.snapshots_taken > 0);
    assert_true(g.snapshots_restored > 0);
    assert_true(g.replacements > 0);
    assert_true(g.invariant_checks >= 3 * SIM_STEPS_CI);
    assert_true(g.digest_ops_compared > 0); /* and no replica diverged (check_replica) */
}

static void test_sim_5_replicas(void **state)
{
    (void)state;
    sim_figures_t g;
    sim_run(5, ci_seed() + 1, SIM_STEPS_CI, &g);
    print_figures(stderr, 5, ci_seed() + 1, &g);
    assert_true(g.acked > 0);
    assert_true(g.snapshots_taken > 0);
    assert_true(g.replacements > 0);
}

/* ------------------------------------------------------------ replica repair */

/* A fault LMDB cannot see: one bit of an account's balance flipped in replica i's store. */
static void flip_balance(sim_t *s, unsigned i, const char *account)
{
    ledger_store_t *st = ledger_fsm_store(s->rep[i].fsm);
    MDB_txn *txn = NULL;
    ledger_account_t a;
    assert_int_equal(ledger_store_txn_begin(st, NULL, true, &txn), 0);
    assert_int_equal(ledger_store_account_get(st, txn, account, &a), 0);
    a.balance ^= 64;
    assert_int_equal(ledger_store_account_put(st, txn, &a), 0);
    assert_int_equal(ledger_store_txn_commit(txn), 0);
}

static bool replica_diverged(struct raft_fixture *f, void *arg)
{
    (void)f;
    ledger_fsm_stats_t st;
    ledger_fsm_stats(arg, &st);
    return st.diverged;
}

static uint64_t digest_checks_of(sim_t *s, unsigned i)
{
    ledger_fsm_stats_t st;
    ledger_fsm_stats(s->rep[i].fsm, &st);
    return st.digest_checks;
}

/* What the service does for a diverged replica: its raft instance stops (the apply error
 * made it unavailable), its state is replaced by a healthy replica's snapshot, and it starts
 * again under its own id with its own Raft log and vote. */
static void repair_from(sim_t *s, unsigned bad, unsigned healthy)
{
    uint8_t *snap = NULL;
    size_t len = 0;
    assert_int_equal(ledger_fsm_snapshot(s->rep[healthy].fsm, &snap, &len), 0);
    if (raft_fixture_alive(&s->f, bad))
        raft_fixture_kill(&s->f, bad);
    raft_fixture_step_until_elapsed(&s->f, SIM_DRAIN_MS);
    struct raft *r = raft_fixture_get(&s->f, bad);
    raft_close(r, NULL);
    assert_int_equal(ledger_fsm_repair(s->rep[bad].fsm, snap, len), 0);
    raft_free(snap);
    struct raft_fixture_server *srv = &s->f.servers[bad];
    assert_int_equal(
        raft_init(r, &srv->io, ledger_fsm_raft(s->rep[bad].fsm), srv->id, srv->address), 0);
    raft_tune(r);
    ledger_fsm_bind(s->rep[bad].fsm, r);
    assert_int_equal(raft_start(r), 0);
    raft_fixture_revive(&s->f, bad);
}

/* Issue 21: a follower whose balance was flipped on disk is found by the leader's digest op
 * (and only it: the others agree with the leader), stops applying, is rebuilt from the
 * leader's snapshot without losing its Raft log or vote, and then agrees byte for byte. */
static void test_sim_repair(void **state)
{
    (void)state;
    sim_t *s = calloc(1, sizeof *s);
    assert_non_null(s);
    sim_init(s, 3, ci_seed() + 2);
    for (unsigned k = 0; k < 40 || !s->setup_done; k++) {
        assert_true(k < 400);
        unsigned leader = raft_fixture_leader_index(&s->f);
        if (leader < s->n)
            step_propose(s, leader);
        raft_fixture_step_until_elapsed(&s->f, 50);
    }
    sim_converge(s);
    unsigned leader = raft_fixture_leader_index(&s->f);
    unsigned bad = (leader + 1) % 3, other = (leader + 2) % 3;
    uint64_t checks_other = digest_checks_of(s, other);
    flip_balance(s, bad, s->dev[0].account);
    propose_digest(s, leader);
    assert_true(raft_fixture_step_until(&s->f, replica_diverged, s->rep[bad].fsm, 10000));
    ledger_fsm_stats_t st;
    for (unsigned i = 0; i < 3; i++) {
        ledger_fsm_stats(s->rep[i].fsm, &st);
        assert_int_equal(st.diverged, i == bad);
    }
    raft_fixture_step_until_elapsed(&s->f, 2000);
    assert_true(digest_checks_of(s, other) > checks_other); /* the healthy follower compared */
    /* The diverged replica applies nothing more on its wrong state. */
    ledger_fsm_stats(s->rep[bad].fsm, &st);
    uint64_t stuck = 0, t = 0;
    assert_int_equal(ledger_fsm_applied(s->rep[bad].fsm, &stuck, &t), 0);
    assert_int_equal(stuck, st.diverged_index);

    unsigned healthy = leader;
    repair_from(s, bad, healthy);
    ledger_fsm_stats(s->rep[bad].fsm, &st);
    assert_false(st.diverged);
    check_replica(s, bad);
    /* The group goes on, the repaired replica with it, and every replica agrees. */
    for (unsigned k = 0; k < 40; k++) {
        leader = raft_fixture_leader_index(&s->f);
        if (leader < s->n)
            step_propose(s, leader);
        raft_fixture_step_until_elapsed(&s->f, 50);
        for (unsigned i = 0; i < 3; i++)
            check_replica(s, i);
    }
    sim_converge(s);
    uint64_t checks_bad = digest_checks_of(s, bad);
    propose_digest(s, raft_fixture_leader_index(&s->f));
    raft_fixture_step_until_elapsed(&s->f, 2000);
    assert_true(digest_checks_of(s, bad) > checks_bad);
    for (unsigned i = 0; i < 3; i++)
        check_replica(s, i);
    fprintf(stderr, "repair: replica %u diverged at index %" PRIu64 ", rebuilt from replica %u\n",
            bad, stuck, healthy);
    sim_fini(s);
    free(s);
}

/* ------------------------------------------------------------ the campaign */

typedef struct campaign_seed {
    unsigned replicas;
    uint64_t seed;
    unsigned steps;
} campaign_seed_t;

static void test_campaign_seed(void **state)
{
    const campaign_seed_t *c = *state;
    sim_figures_t g;
    sim_run(c->replicas, c->seed, c->steps, &g);
    print_figures(stdout, c->replicas, c->seed, &g);
    fflush(stdout);
}

static int campaign(int argc, char **argv)
{
    uint64_t first = SIM_SEED_DEFAULT;
    unsigned seeds = 10, steps = 1000, replicas = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--seeds") == 0)
            seeds = (unsigned)strtoul(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--steps") == 0)
            steps = (unsigned)strtoul(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--first-seed") == 0)
            first = strtoull(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--replicas") == 0)
            replicas = (unsigned)strtoul(argv[i + 1], NULL, 10);
        else {
            fprintf(stderr, "usage: %s --seeds N --steps M [--first-seed S] [--replicas R]\n",
                    argv[0]);
            return 2;
        }
    }
    if (replicas < 1 || replicas > SIM_REPLICAS_MAX) {
        fprintf(stderr, "replicas must be 1..%d\n", SIM_REPLICAS_MAX);
        return 2;
    }
    /* Each seed runs as a cmocka test of its own, so a failed check says what and where. */
    for (unsigned k = 0; k < seeds; k++) {
        campaign_seed_t c = {.replicas = replicas, .seed = first + k, .steps = steps};
        const struct CMUnitTest one[] = {cmocka_unit_test_prestate(test_campaign_seed, &c)};
        if (cmocka_run_group_tests_name("raft_sim_seed", one, NULL, NULL) != 0) {
            fprintf(stderr, "raft_sim: seed %" PRIu64 " failed (replicas %u, steps %u)\n", c.seed,
                    replicas, steps);
            return 1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ the fsm through its API */

typedef struct fx {
    char root[SIM_DIR_MAX / 2];
    char dir[2][SIM_DIR_MAX];
    EVP_PKEY *bank;
    EVP_PKEY *dev;
    uint8_t *cert;
    size_t cert_len;
    ledger_fsm_t *fsm[2];
} fx_t;

static int fx_setup(void **state)
{
    fx_t *x = calloc(1, sizeof *x);
    assert_non_null(x);
    snprintf(x->root, sizeof x->root, "%s/qc-fsm-XXXXXX", sim_base_dir());
    assert_non_null(mkdtemp(x->root));
    x->bank = qctest_key_new();
    x->dev = qctest_key_new();
    qctest_cert_self_der(x->dev, "dev-a", &x->cert, &x->cert_len);
    for (int i = 0; i < 2; i++) {
        snprintf(x->dir[i], sizeof x->dir[i], "%s/r%d", x->root, i);
        assert_int_equal(mkdir(x->dir[i], 0700), 0);
        ledger_fsm_config_t cfg = {
            .dir = x->dir[i], .map_size = SIM_MAP_SIZE, .allow_key = x->bank, .shard_count = 1};
        assert_int_equal(ledger_fsm_new(&cfg, &x->fsm[i]), 0);
    }
    *state = x;
    return 0;
}

static int fx_teardown(void **state)
{
    fx_t *x = *state;
    for (int i = 0; i < 2; i++) {
        ledger_fsm_destroy(&x->fsm[i]);
        rm_env(x->dir[i]);
        rmdir(x->dir[i]);
    }
    rmdir(x->root);
    free(x->cert);
    EVP_PKEY_free(x->dev);
    EVP_PKEY_free(x->bank);
    free(x);
    return 0;
}

/* Encodes b into a malloc-free raft buffer the caller frees with raft_free(). */
static struct raft_buffer encode(ledger_fsm_batch_t *b)
{
    struct raft_buffer buf;
    assert_int_equal(ledger_fsm_batch_encode(b, &buf), 0);
    ledger_fsm_batch_destroy(&b);
    return buf;
}

static const ledger_fsm_result_t *apply_ok(ledger_fsm_t *f, uint64_t index, struct raft_buffer buf)
{
    const ledger_fsm_result_t *res = NULL;
    assert_int_equal(ledger_fsm_apply(f, index, buf.base, buf.len, &res), 0);
    return res;
}

static struct raft_buffer setup_entry(fx_t *x, uint64_t now)
{
    ledger_fsm_batch_t *b = NULL;
    assert_int_equal(ledger_fsm_batch_new(now, &b), 0);
    ledger_account_t spec = {.id = "alice", .currency = TK_CURRENCY};
    uint8_t txn[LEDGER_TXN_ID_SIZE] = {1};
    assert_int_equal(ledger_fsm_batch_open_account(b, &spec), 0);
    assert_int_equal(ledger_fsm_batch_deposit(b, "alice", 10000, txn), 0);
    assert_int_equal(ledger_fsm_batch_enroll(b, "alice", x->cert, x->cert_len, 0, 0), 0);
    return encode(b);
}

static struct raft_buffer reserve_entry(fx_t *x, uint64_t now, uint64_t deadline, int64_t amount,
                                        tk_load_t *l, uint8_t **allow, size_t *allow_len)
{
    uint8_t *req = NULL;
    size_t req_len = 0;
    tk_txn_id(l->txn_id);
    l->device_id = "dev-a";
    l->account_id = "alice";
    l->amount = amount;
    l->currency = TK_CURRENCY;
    tk_request(x->dev, l, &req, &req_len);
    tk_allow_at(x->bank, req, req_len, now, deadline, allow, allow_len);
    ledger_fsm_batch_t *b = NULL;
    assert_int_equal(ledger_fsm_batch_new(now, &b), 0);
    assert_int_equal(ledger_fsm_batch_reserve(b, req, req_len, deadline), 0);
    assert_int_equal(ledger_fsm_batch_store_allow(b, l->txn_id, *allow, *allow_len), 0);
    free(req);
    return encode(b);
}

static int64_t balance(ledger_fsm_t *f, const char *id)
{
    ledger_store_t *st = ledger_fsm_store(f);
    MDB_txn *txn = NULL;
    ledger_account_t a;
    assert_int_equal(ledger_store_txn_begin(st, NULL, false, &txn), 0);
    int rc = ledger_store_account_get(st, txn, id, &a);
    ledger_store_txn_abort(txn);
    assert_int_equal(rc, 0);
    return a.balance;
}

/* Entries apply in order, once: the same index again changes nothing, even across a
 * reopen of the environment; refusals are results, not failures. */
static void test_fsm_apply_once(void **state)
{
    fx_t *x = *state;
    uint64_t now = SIM_EPOCH_MS;
    struct raft_buffer setup = setup_entry(x, now);
    const ledger_fsm_result_t *res = apply_ok(x->fsm[0], 2, setup);
    assert_false(res->skipped);
    assert_int_equal(res->n_ops, 3);
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(res->ops[i].code, 0);
    tk_load_t l = {0};
    uint8_t *allow = NULL;
    size_t allow_len = 0;
    struct raft_buffer rsv = reserve_entry(x, now + 10, now + 5000, 700, &l, &allow, &allow_len);
    res = apply_ok(x->fsm[0], 3, rsv);
    assert_int_equal(res->ops[0].code, 0);
    assert_int_equal(res->ops[1].code, 0); /* the bank's allow, stored after the debit */
    assert_int_equal(balance(x->fsm[0], "alice"), 10000 - 700);

    /* Handed the same entries again (a restart replays the log): skipped. */
    res = apply_ok(x->fsm[0], 3, rsv);
    assert_true(res->skipped);
    res = apply_ok(x->fsm[0], 2, setup);
    assert_true(res->skipped);
    ledger_fsm_destroy(&x->fsm[0]);
    ledger_fsm_config_t cfg = {
        .dir = x->dir[0], .map_size = SIM_MAP_SIZE, .allow_key = x->bank, .shard_count = 1};
    assert_int_equal(ledger_fsm_new(&cfg, &x->fsm[0]), 0);
    res = apply_ok(x->fsm[0], 3, rsv);
    assert_true(res->skipped);
    assert_int_equal(balance(x->fsm[0], "alice"), 10000 - 700);
    uint64_t idx = 0, t = 0;
    assert_int_equal(ledger_fsm_applied(x->fsm[0], &idx, &t), 0);
    assert_int_equal(idx, 3);
    assert_int_equal(t, now + 10);

    /* The same request under a new index is the idempotent retry: no second debit. A new
     * load above the funds is refused, and the entry still applies. */
    res = apply_ok(x->fsm[0], 4, rsv);
    assert_false(res->skipped);
    assert_int_equal(res->ops[0].code, 0);
    assert_int_equal(res->ops[1].code, 0); /* the stored allow stays */
    assert_int_equal(balance(x->fsm[0], "alice"), 10000 - 700);
    tk_load_t l2 = {.counter = 0};
    uint8_t *allow2 = NULL;
    size_t allow2_len = 0;
    struct raft_buffer big =
        reserve_entry(x, now + 20, now + 5000, 1000000, &l2, &allow2, &allow2_len);
    res = apply_ok(x->fsm[0], 5, big);
    assert_int_equal(res->ops[0].code, QC_EFUNDS);
    assert_int_equal(res->ops[1].code, QC_ENOTFOUND); /* no allow for money never held */
    assert_true(strlen(res->ops[0].why) > 0);
    assert_int_equal(ledger_fsm_applied(x->fsm[0], &idx, &t), 0);
    assert_int_equal(idx, 5);

    /* The refused request still proved, by its counter, that the device never applied the
     * first load: reconciliation compensated it, and that stands. */
    assert_int_equal(balance(x->fsm[0], "alice"), 10000);

    /* A leader with a slower clock does not take time back; the deadline compensation is
     * an entry: expire up to a time past the deadline. */
    tk_load_t l3 = {.counter = 0};
    uint8_t *allow3 = NULL;
    size_t allow3_len = 0;
    struct raft_buffer rsv3 =
        reserve_entry(x, now + 20, now + 5000, 300, &l3, &allow3, &allow3_len);
    res = apply_ok(x->fsm[0], 6, rsv3);
    assert_int_equal(res->ops[0].code, 0);
    assert_int_equal(balance(x->fsm[0], "alice"), 10000 - 300);
    ledger_fsm_batch_t *b = NULL;
    assert_int_equal(ledger_fsm_batch_new(now + 1, &b), 0);
    assert_int_equal(ledger_fsm_batch_expire(b, now + 6000, 0), 0);
    struct raft_buffer exp1 = encode(b);
    res = apply_ok(x->fsm[0], 7, exp1);
    assert_int_equal(res->time_ms, now + 20);
    assert_int_equal(res->expired, 0); /* up to the entry's time, not beyond */
    assert_int_equal(ledger_fsm_batch_new(now + 6000, &b), 0);
    assert_int_equal(ledger_fsm_batch_expire(b, now + 6000, 0), 0);
    struct raft_buffer exp2 = encode(b);
    res = apply_ok(x->fsm[0], 8, exp2);
    assert_int_equal(res->expired, 1);
    assert_int_equal(balance(x->fsm[0], "alice"), 10000);
    ledger_check_t c;
    assert_int_equal(ledger_saga_check(ledger_fsm_saga(x->fsm[0]), NULL, &c), 0);
    assert_true(c.ok);

    raft_free(setup.base);
    raft_free(rsv.base);
    raft_free(big.base);
    raft_free(exp1.base);
    raft_free(exp2.base);
    raft_free(rsv3.base);
    free(allow);
    free(allow2);
    free(allow3);
}

/* What does not parse is refused whole and identically; a version from the future stops
 * the replica without changing anything. */
static void test_fsm_bad_entries(void **state)
{
    fx_t *x = *state;
    uint8_t junk[] = {0xff, 0xff, 0xff};
    const ledger_fsm_result_t *res = NULL;
    assert_int_equal(ledger_fsm_apply(x->fsm[0], 2, junk, sizeof junk, &res), 0);
    assert_true(res->refused);
    uint64_t idx = 0, t = 0;
    assert_int_equal(ledger_fsm_applied(x->fsm[0], &idx, &t), 0);
    assert_int_equal(idx, 2);
    /* version 2: field 1 = 2, field 2 = 5 */
    uint8_t future[] = {0x08, 0x02, 0x10, 0x05};
    assert_int_equal(ledger_fsm_apply(x->fsm[0], 3, future, sizeof future, &res), QC_EVERSION);
    assert_int_equal(ledger_fsm_applied(x->fsm[0], &idx, &t), 0);
    assert_int_equal(idx, 2);
    /* A reserve whose request is not an envelope is refused; the rest of the entry applies. */
    struct raft_buffer setup = setup_entry(x, SIM_EPOCH_MS);
    ledger_fsm_batch_t *b = NULL;
    assert_int_equal(ledger_fsm_batch_new(SIM_EPOCH_MS, &b), 0);
    assert_int_equal(ledger_fsm_batch_reserve(b, junk, sizeof junk, SIM_EPOCH_MS + 5000), 0);
    assert_int_equal(ledger_fsm_batch_set_frozen(b, "alice", true), 0);
    struct raft_buffer mixed = encode(b);
    apply_ok(x->fsm[0], 3, setup);
    res = apply_ok(x->fsm[0], 4, mixed);
    assert_int_equal(res->n_ops, 2);
    assert_true(res->ops[0].code < 0);
    assert_int_equal(res->ops[1].code, 0);
    raft_free(setup.base);
    raft_free(mixed.base);
}

/* A snapshot carries the whole state and its applied index; it restores into an empty
 * replica byte for byte, is not applied over a replica that went further, and a damaged one
 * is refused with nothing changed. */
static void test_fsm_snapshot_restore(void **state)
{
    fx_t *x = *state;
    uint64_t now = SIM_EPOCH_MS;
    struct raft_buffer setup = setup_entry(x, now);
    tk_load_t l = {0};
    uint8_t *allow = NULL;
    size_t allow_len = 0;
    struct raft_buffer rsv = reserve_entry(x, now + 10, now + 5000, 700, &l, &allow, &allow_len);
    apply_ok(x->fsm[0], 2, setup);
    uint8_t *snap_old = NULL, *snap = NULL;
    size_t snap_old_len = 0, snap_len = 0;
    assert_int_equal(ledger_fsm_snapshot(x->fsm[0], &snap_old, &snap_old_len), 0);
    apply_ok(x->fsm[0], 5, rsv);
    assert_int_equal(ledger_fsm_snapshot(x->fsm[0], &snap, &snap_len), 0);

    bool replaced = false;
    assert_int_equal(ledger_fsm_restore(x->fsm[1], snap, snap_len, &replaced), 0);
    assert_true(replaced);
    uint8_t d0[32], d1[32];
    uint64_t i0 = 0, i1 = 0;
    assert_int_equal(ledger_fsm_digest(x->fsm[0], d0, &i0), 0);
    assert_int_equal(ledger_fsm_digest(x->fsm[1], d1, &i1), 0);
    assert_int_equal(i0, 5);
    assert_int_equal(i1, 5);
    assert_memory_equal(d0, d1, sizeof d0);
    assert_memory_equal(d0, snap + 48, sizeof d0); /* the header's digest is the state's */
    ledger_check_t c;
    assert_int_equal(ledger_saga_check(ledger_fsm_saga(x->fsm[1]), NULL, &c), 0);
    assert_true(c.ok);
    assert_int_equal(c.reserved, 1);

    /* The older snapshot is not applied over the newer state, and the replica applies no
     * entry twice after it. */
    assert_int_equal(ledger_fsm_restore(x->fsm[1], snap_old, snap_old_len, &replaced), 0);
    assert_false(replaced);
    assert_int_equal(ledger_fsm_digest(x->fsm[1], d1, &i1), 0);
    assert_memory_equal(d0, d1, sizeof d0);
    assert_true(apply_ok(x->fsm[1], 5, rsv)->skipped);

    /* One flipped byte in the body, or a truncation: refused, state unchanged. */
    snap[snap_len - 1] ^= 1;
    assert_int_equal(ledger_fsm_restore(x->fsm[1], snap, snap_len, &replaced), QC_EDECODE);
    snap[snap_len - 1] ^= 1;
    assert_int_equal(ledger_fsm_restore(x->fsm[1], snap, snap_len - 1, &replaced), QC_EDECODE);
    assert_int_equal(ledger_fsm_restore(x->fsm[1], snap, 10, &replaced), QC_EDECODE);
    assert_int_equal(ledger_fsm_digest(x->fsm[1], d1, &i1), 0);
    assert_memory_equal(d0, d1, sizeof d0);

    raft_free(snap);
    raft_free(snap_old);
    raft_free(setup.base);
    raft_free(rsv.base);
    free(allow);
}

/* A batch refuses what it cannot carry. */
static void test_fsm_batch_limits(void **state)
{
    (void)state;
    ledger_fsm_batch_t *b = NULL;
    assert_int_equal(ledger_fsm_batch_new(1, &b), 0);
    for (size_t i = 0; i < LEDGER_FSM_OPS_MAX; i++)
        assert_int_equal(ledger_fsm_batch_outbox_ack(b, i), 0);
    assert_int_equal(ledger_fsm_batch_outbox_ack(b, 1), QC_EFULL);
    assert_int_equal(ledger_fsm_batch_count(b), LEDGER_FSM_OPS_MAX);
    static uint8_t huge[LEDGER_SIGNED_MAX + 1];
    assert_int_equal(ledger_fsm_batch_reserve(b, huge, sizeof huge, 1), QC_EINVAL);
    uint8_t txn[LEDGER_TXN_ID_SIZE] = {0};
    assert_int_equal(ledger_fsm_batch_store_allow(b, txn, huge, sizeof huge), QC_EINVAL);
    ledger_fsm_batch_destroy(&b);
    assert_null(b);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        return campaign(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fsm_apply_once, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_fsm_bad_entries, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_fsm_snapshot_restore, fx_setup, fx_teardown),
        cmocka_unit_test(test_fsm_batch_limits),
        cmocka_unit_test(test_sim_3_replicas),
        cmocka_unit_test(test_sim_5_replicas),
        cmocka_unit_test(test_sim_repair),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
