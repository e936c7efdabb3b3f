/* test_ledger_list.c - `list_loads` with a device, account or time filter reads the index of
 * loads (ledger/ledger_store_index.h), not the shard: against a real qc-ledger whose shard
 * holds many loads of many devices, a device's page reads exactly the loads it returns
 * (ListLoadsReply.scanned), in creation time order, and paging by the last txn id walks every
 * load of that device once; the same holds for an account and for a time window. A filter no
 * index serves (the state alone) still reads the whole shard, as every filter did before.
 *
 * The loads are written into the stopped ledger's LMDB through the store API (which keeps the
 * indexes as the saga's writes do), so the shard is big in seconds; they carry no transfers,
 * so no check is run on it.
 * Usage: test_ledger_list PATH-TO-qc-ledger [LOADS [PATH-TO-qcctl]]. With LOADS it is a
 * benchmark: it prints the time of one page (and of `qcctl load list --device D --limit 50`
 * when qcctl is given) and asserts nothing of `scanned`, so it runs against a qc-ledger made
 * before the indexes too. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ledger_proc.h"
#include "ledger_store.h"
#include "ledger_testkit.h"
#include "ops_time.h"
#include "qc_error.h"
#include "qctest_lmdb.h"
#include "qctest_port.h"

#define TEST_LOADS 20000        /* loads of the shard in the CTest run */
#define TEST_DEVICES 500        /* devices they are spread over, round robin */
#define TEST_ACCOUNTS 50        /* accounts, round robin */
#define TEST_COMMIT_EVERY 10000 /* loads per write transaction while filling */
#define TEST_PAGE 50            /* loads per page asked */
#define TEST_DEVICE 7           /* the device listed */
#define TEST_T0_MS 1800000000000ull
#define TEST_CALL_MS 60000

static qctest_ports_t ports;
static const char *ledger_bin, *qcctl_bin;
static long loads = TEST_LOADS;
static bool bench;

/* Writes n loads straight into the stopped ledger's LMDB: load i of device i % TEST_DEVICES
 * and account i % TEST_ACCOUNTS, created at TEST_T0_MS + i. */
static void fill(lp_t *lp, long n)
{
    char path[LP_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/data", lp->dir);
    ledger_store_t *store = NULL;
    assert_int_equal(ledger_store_open(path, 1024ull << 20, &store), 0);
    ledger_load_t *l = calloc(1, sizeof *l);
    assert_non_null(l);
    l->state = QUANCUN__LOAD_STATE__LOAD_CONFIRMED;
    l->amount = 100;
    l->currency = TK_CURRENCY;
    l->request_len = 64; /* the size of nothing in particular: no one verifies it here */
    MDB_txn *txn = NULL;
    for (long i = 0; i < n; i++) {
        if (i % TEST_COMMIT_EVERY == 0)
            assert_int_equal(ledger_store_txn_begin(store, NULL, true, &txn), 0);
        tk_txn_id(l->txn_id);
        snprintf(l->device_id, sizeof l->device_id, "dev-%ld", i % TEST_DEVICES);
        snprintf(l->account_id, sizeof l->account_id, "acct-%ld", i % TEST_ACCOUNTS);
        l->created_ms = l->updated_ms = TEST_T0_MS + (uint64_t)i;
        l->counter = (uint64_t)(i / TEST_DEVICES);
        assert_int_equal(ledger_store_load_put(store, txn, l), 0);
        if (i % TEST_COMMIT_EVERY == TEST_COMMIT_EVERY - 1 || i == n - 1)
            assert_int_equal(ledger_store_txn_commit(txn), 0);
    }
    free(l);
    ledger_store_close(&store);
}

/* One page: *reply is the caller's. Returns the reply code. */
static int list_page(lp_t *lp, Qcledger__ListLoadsRequest *m, Qcledger__ListLoadsReply **reply,
                     uint64_t *ms)
{
    uint64_t t0 = ops_time_mono_ms();
    proto_rpc_reply_t *r = NULL;
    int rc = lp_call(lp->op, "list_loads", &m->base, &r);
    *ms = ops_time_mono_ms() - t0;
    *reply = NULL;
    if (rc == 0) {
        *reply = qcledger__list_loads_reply__unpack(NULL, r->body_len, r->body);
        assert_non_null(*reply);
    }
    proto_rpc_reply_destroy(&r);
    return rc;
}

typedef struct want {
    const char *device, *account; /* NULL: any */
    uint64_t since_ms, until_ms;
    long expect; /* loads the filter matches */
} want_t;

static bool matches(const want_t *w, const Qcledger__Load *l)
{
    return (w->device == NULL || strcmp(l->device_id, w->device) == 0) &&
           (w->account == NULL || strcmp(l->account_id, w->account) == 0) &&
           l->created_ms >= w->since_ms && (w->until_ms == 0 || l->created_ms < w->until_ms);
}

/* Pages through the filter w with TEST_PAGE loads a page: every load matches, in creation time
 * order, each page read exactly what it returns, and together they are w->expect loads. */
static void list_all(lp_t *lp, const want_t *w)
{
    Qcledger__ListLoadsRequest m = QCLEDGER__LIST_LOADS_REQUEST__INIT;
    m.device_id = (char *)(w->device != NULL ? w->device : "");
    m.account_id = (char *)(w->account != NULL ? w->account : "");
    m.since_ms = w->since_ms;
    m.until_ms = w->until_ms;
    m.limit = TEST_PAGE;
    uint8_t cursor[LEDGER_TXN_ID_SIZE];
    long seen = 0, pages = 0;
    uint64_t last_ms = 0;
    for (;;) {
        Qcledger__ListLoadsReply *r = NULL;
        uint64_t ms = 0;
        assert_int_equal(list_page(lp, &m, &r, &ms), 0);
        assert_true(r->n_loads <= TEST_PAGE);
        assert_int_equal(r->scanned, r->n_loads); /* the index: no load read for nothing */
        for (size_t i = 0; i < r->n_loads; i++) {
            assert_true(matches(w, r->loads[i]));
            assert_true(r->loads[i]->created_ms > last_ms);
            last_ms = r->loads[i]->created_ms;
        }
        seen += (long)r->n_loads;
        pages++;
        bool more = r->next_after.len == LEDGER_TXN_ID_SIZE;
        if (more)
            memcpy(cursor, r->next_after.data, sizeof cursor);
        qcledger__list_loads_reply__free_unpacked(r, NULL);
        if (!more)
            break;
        m.after_txn.data = cursor;
        m.after_txn.len = sizeof cursor;
        assert_true(pages <= w->expect / TEST_PAGE + 1);
    }
    assert_int_equal(seen, w->expect);
}

#define TEST_QCCTL_RUNS 5 /* qcctl runs per figure: the median is printed */

static int ms_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The median time of TEST_QCCTL_RUNS runs of `qcctl load list --device device --limit
 * TEST_PAGE`. */
static uint64_t qcctl_ms(lp_t *lp, const char *device)
{
    char path[LP_PATH_MAX + 32], cmd[3 * LP_PATH_MAX + 256];
    snprintf(path, sizeof path, "%s/qcctl.conf", lp->dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "ledger_endpoints = %s\nledger_public_key = %s\ncurve_key = %s/admin.key\n",
            lp->endpoint, lp->server.public_z85, lp->dir);
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s --config %s load list --device %s --limit %d > %s/qcctl.out",
             qcctl_bin, path, device, TEST_PAGE, lp->dir);
    uint64_t ms[TEST_QCCTL_RUNS];
    for (int i = 0; i < TEST_QCCTL_RUNS; i++) {
        uint64_t t0 = ops_time_mono_ms();
        assert_int_equal(system(cmd), 0);
        ms[i] = ops_time_mono_ms() - t0;
    }
    qsort(ms, TEST_QCCTL_RUNS, sizeof ms[0], ms_cmp);
    return ms[TEST_QCCTL_RUNS / 2];
}

/* The time of one page of device, and of qcctl's listing when given: the figures of
 * docs/DESIGN.md section 3, "Queries". */
static void figure(lp_t *lp, const char *device)
{
    Qcledger__ListLoadsRequest m = QCLEDGER__LIST_LOADS_REQUEST__INIT;
    m.device_id = (char *)device;
    m.limit = TEST_PAGE;
    Qcledger__ListLoadsReply *r = NULL;
    uint64_t ms = 0;
    assert_int_equal(list_page(lp, &m, &r, &ms), 0);
    print_message("shard of %ld loads: list_loads device %s limit %d: %zu loads, %llu records "
                  "read, %llu ms",
                  loads, device, TEST_PAGE, r->n_loads, (unsigned long long)r->scanned,
                  (unsigned long long)ms);
    qcledger__list_loads_reply__free_unpacked(r, NULL);
    if (qcctl_bin != NULL)
        print_message("; qcctl load list --device %s --limit %d: %llu ms (median of %d)", device,
                      TEST_PAGE, (unsigned long long)qcctl_ms(lp, device), TEST_QCCTL_RUNS);
    print_message("\n");
}

/* A filter no index serves (no load is COMPENSATED: the whole shard is read). */
static void figure_scan(lp_t *lp)
{
    Qcledger__ListLoadsRequest m = QCLEDGER__LIST_LOADS_REQUEST__INIT;
    m.state = QUANCUN__LOAD_STATE__LOAD_COMPENSATED;
    m.limit = TEST_PAGE;
    Qcledger__ListLoadsReply *r = NULL;
    uint64_t ms = 0;
    assert_int_equal(list_page(lp, &m, &r, &ms), 0);
    print_message("shard of %ld loads: list_loads state COMPENSATED (no index): %llu records "
                  "read, %llu ms\n",
                  loads, (unsigned long long)r->scanned, (unsigned long long)ms);
    qcledger__list_loads_reply__free_unpacked(r, NULL);
}

/* Keeps the first load of a walk and stops it. */
static int first_load(void *arg, const ledger_load_t *load)
{
    memcpy(arg, load, sizeof *load);
    return QC_ETOOBIG;
}

/* Deletes the device entry of load *arg (a ledger_index_load_t) from loads_by_device. */
static int del_device_entry(MDB_txn *txn, void *arg)
{
    MDB_dbi dbi;
    uint8_t key[LEDGER_INDEX_KEY_MAX];
    MDB_val k = {.mv_size = ledger_index_key(LEDGER_INDEX_DEVICE, arg, key), .mv_data = key};
    int rc = mdb_dbi_open(txn, "loads_by_device", 0, &dbi);
    return rc != 0 ? rc : mdb_del(txn, dbi, &k, NULL);
}

/* Deletes the device entry of the first load of dev-TEST_DEVICE from the stopped ledger's LMDB
 * (what a lost write or a flipped key would leave): the load lacks an entry. */
static void drop_one_entry(lp_t *lp)
{
    char path[LP_PATH_MAX + 32], device[32];
    snprintf(path, sizeof path, "%s/data", lp->dir);
    snprintf(device, sizeof device, "dev-%d", TEST_DEVICE);
    ledger_store_t *store = NULL;
    assert_int_equal(ledger_store_open(path, 1024ull << 20, &store), 0);
    MDB_txn *txn = NULL;
    assert_int_equal(ledger_store_txn_begin(store, NULL, false, &txn), 0);
    ledger_index_range_t r = {.kind = LEDGER_INDEX_DEVICE, .id = device};
    ledger_load_t *l = calloc(1, sizeof *l);
    assert_non_null(l);
    assert_int_equal(ledger_store_each_load_in(store, txn, &r, first_load, l), QC_ETOOBIG);
    ledger_store_txn_abort(txn);
    ledger_store_close(&store);
    ledger_index_load_t il = {.txn_id = l->txn_id,
                              .device_id = l->device_id,
                              .account_id = l->account_id,
                              .created_ms = l->created_ms};
    assert_int_equal(qctest_lmdb_edit(path, del_device_entry, &il), 0);
    free(l);
}

/* check --deep names indexes that disagree with the loads (ledger.index_mismatch): one load
 * lacks its device entry. (Only the index problem is reported: the deep walk answers before
 * the invariants, which these loads without transfers would fail.) */
static void check_deep_names_the_index(lp_t *lp)
{
    assert_int_equal(lp_stop(lp, SIGTERM), 0);
    drop_one_entry(lp);
    assert_int_equal(lp_start(lp, NULL, 0, NULL), 0);
    Qcledger__CheckRequest m = QCLEDGER__CHECK_REQUEST__INIT;
    m.deep = true;
    proto_rpc_reply_t *r = NULL;
    assert_int_equal(lp_call(lp->op, "check", &m.base, &r), 0);
    Qcledger__CheckReply *cr = qcledger__check_reply__unpack(NULL, r->body_len, r->body);
    assert_non_null(cr);
    assert_false(cr->ok);
    assert_int_equal(cr->checksums_failed, 0);
    assert_int_equal(cr->n_problems, 1);
    assert_non_null(strstr(cr->problems[0], "1 of "));
    assert_non_null(strstr(cr->problems[0], "index entries disagree"));
    qcledger__check_reply__free_unpacked(cr, NULL);
    proto_rpc_reply_destroy(&r);
}

static void test_list_by_index(void **state)
{
    (void)state;
    lp_t *lp = calloc(1, sizeof *lp);
    assert_non_null(lp);
    assert_int_equal(lp_setup(lp, ledger_bin, qctest_port(&ports, 0)), 0);
    assert_int_equal(lp_start(lp, NULL, 0, NULL), 0);
    assert_int_equal(lp_stop(lp, SIGTERM), 0);
    uint64_t t0 = ops_time_mono_ms();
    fill(lp, loads);
    print_message("filled the shard with %ld loads in %llu ms\n", loads,
                  (unsigned long long)(ops_time_mono_ms() - t0));
    assert_int_equal(lp_start(lp, NULL, 0, NULL), 0);
    char device[32];
    snprintf(device, sizeof device, "dev-%d", TEST_DEVICE);
    figure(lp, device);
    figure(lp, "dev-none"); /* a device with no load: before the index, the whole shard */
    figure_scan(lp);
    if (!bench) {
        long per_device = loads / TEST_DEVICES + (TEST_DEVICE < loads % TEST_DEVICES);
        want_t by_device = {.device = device, .expect = per_device};
        list_all(lp, &by_device);
        want_t by_account = {.account = "acct-3",
                             .since_ms = TEST_T0_MS + 1000,
                             .until_ms = TEST_T0_MS + 6000,
                             .expect = 5000 / TEST_ACCOUNTS};
        list_all(lp, &by_account);
        want_t by_time = {
            .since_ms = TEST_T0_MS + 100, .until_ms = TEST_T0_MS + 333, .expect = 233};
        list_all(lp, &by_time);
        /* A device and a window: the device's entries of that window only. */
        want_t both = {.device = device,
                       .since_ms = TEST_T0_MS + TEST_DEVICES * 3,
                       .until_ms = TEST_T0_MS + TEST_DEVICES * 5,
                       .expect = 2};
        list_all(lp, &both);
        /* A cursor that names no load is refused, not read as "from the start". */
        Qcledger__ListLoadsRequest m = QCLEDGER__LIST_LOADS_REQUEST__INIT;
        uint8_t ghost[LEDGER_TXN_ID_SIZE] = {0};
        m.device_id = device;
        m.after_txn.data = ghost;
        m.after_txn.len = sizeof ghost;
        Qcledger__ListLoadsReply *r = NULL;
        uint64_t ms = 0;
        assert_int_equal(list_page(lp, &m, &r, &ms), QC_EINVAL);
        check_deep_names_the_index(lp);
    }
    lp_teardown(lp);
    free(lp);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PATH-TO-qc-ledger [LOADS [PATH-TO-qcctl]]\n", argv[0]);
        return 2;
    }
    ledger_bin = argv[1];
    if (argc > 2) {
        loads = strtol(argv[2], NULL, 10);
        bench = true;
    }
    if (argc > 3)
        qcctl_bin = argv[3];
    if (loads < TEST_DEVICES)
        loads = TEST_LOADS;
    ports = qctest_ports(17580, 4);
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_list_by_index),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
