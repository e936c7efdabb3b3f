/* test_store_start.c - qc-ledger and qc-audit, as real processes, refuse a store that init did
 * not make, one that is empty or truncated, one of another cluster or shard, and one another
 * process owns; each refusal is one log line naming the data directory, and the exit status
 * is 1, never a signal (issue 21: an empty store was served as a new bank, a truncated one
 * ended in SIGBUS, and two ledgers ran on one directory).
 *
 * Usage: test_store_start QC_LEDGER QC_AUDIT. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <lmdb.h>

#include "audit_proc.h"
#include "ledger_proc.h"
#include "qc_error.h"
#include "qctest_fs.h"
#include "qctest_lmdb.h"
#include "qctest_proc.h"

#define T_PORT 17380
#define T_ACCOUNTS 150 /* enough commits to grow data.mdb well past its first pages */
#define T_EXIT_MS 10000

static const char *ledger_bin;
static const char *audit_bin;

/* The processes of the running test, in static storage: a failed assertion leaves the test
 * function at once, and the teardown still finds them (and their stand-in signer threads) to
 * stop. */
static lp_t g_lp[2];
static ap_t g_ap[2];

static int teardown(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof g_lp / sizeof g_lp[0]; i++)
        if (g_lp[i].zctx != NULL)
            lp_teardown(&g_lp[i]);
    for (size_t i = 0; i < sizeof g_ap / sizeof g_ap[0]; i++)
        if (g_ap[i].zctx != NULL)
            ap_teardown(&g_ap[i]);
    return 0;
}

/* The process ended by itself with exit status 1 (a refusal), not by a signal. */
static void assert_refused(int status)
{
    assert_true(status >= 0);
    assert_false(WIFSIGNALED(status));
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 1);
}

static void ledger_log(const lp_t *lp, char *out)
{
    qctest_path(lp->dir, "ledger.log", out);
}

static void ledger_data(const lp_t *lp, const char *name, char *out)
{
    char data[LP_PATH_MAX];
    qctest_path(lp->dir, "data", data);
    qctest_path(data, name, out);
}

/* Starts lp (expected to be refused) and checks the exit and the log line. */
static void ledger_refused(lp_t *lp, const char *const *extra, const char *needle)
{
    char log[LP_PATH_MAX];
    assert_int_equal(lp_start(lp, NULL, 0, extra), -1);
    assert_refused(lp->last_status);
    ledger_log(lp, log);
    assert_true(qctest_file_contains(log, "ledger.store_refused"));
    if (!qctest_file_contains(log, needle))
        fail_msg("%s does not say \"%s\"", log, needle);
}

/* A ledger that served T_ACCOUNTS commits, then stopped: its data.mdb is many pages long. */
static void ledger_filled(lp_t *lp)
{
    assert_int_equal(lp_setup(lp, ledger_bin, T_PORT), 0);
    assert_int_equal(lp_start(lp, NULL, 0, NULL), 0);
    for (int i = 0; i < T_ACCOUNTS; i++) {
        char id[32];
        snprintf(id, sizeof id, "ACCT-%d", i);
        assert_int_equal(lp_open_account(lp, id, 156, 0), 0);
    }
    assert_int_not_equal(lp_stop(lp, SIGTERM), -1);
}

static long file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return (long)st.st_size;
}

/* No init: the service refuses rather than create a new, empty bank. */
static void test_ledger_missing(void **state)
{
    (void)state;
    lp_t *lp = &g_lp[0];
    assert_int_equal(lp_setup(lp, ledger_bin, T_PORT), 0);
    lp->no_init = true;
    ledger_refused(lp, NULL, "does not exist");
    char mdb[LP_PATH_MAX];
    ledger_data(lp, "data.mdb", mdb);
    assert_int_not_equal(access(mdb, F_OK), 0); /* and it created nothing */
    lp_teardown(lp);
}

/* A 0-byte data.mdb (a wiped disk) is refused: LMDB alone would make it a new store. */
static void test_ledger_empty(void **state)
{
    (void)state;
    lp_t *lp = &g_lp[0];
    ledger_filled(lp);
    char mdb[LP_PATH_MAX];
    ledger_data(lp, "data.mdb", mdb);
    assert_int_equal(truncate(mdb, 0), 0);
    ledger_refused(lp, NULL, "is 0 bytes");
    assert_int_equal(file_size(mdb), 0);
    lp_teardown(lp);
}

/* Truncated to 8 KiB (the two meta pages) and to half: refused before the map, never SIGBUS. */
static void test_ledger_truncated(void **state)
{
    (void)state;
    long sizes[2] = {8192, 0};
    for (int i = 0; i < 2; i++) {
        lp_t *lp = &g_lp[0];
        ledger_filled(lp);
        char mdb[LP_PATH_MAX];
        ledger_data(lp, "data.mdb", mdb);
        long full = file_size(mdb);
        assert_true(full > 4 * 8192);
        long to = sizes[i] != 0 ? sizes[i] : full / 2;
        assert_int_equal(truncate(mdb, to), 0);
        ledger_refused(lp, NULL, "is truncated");
        lp_teardown(lp);
    }
}

/* Another cluster's store, or another shard's, is refused with both identities named. */
static void test_ledger_foreign(void **state)
{
    (void)state;
    lp_t *lp = &g_lp[0];
    assert_int_equal(lp_setup(lp, ledger_bin, T_PORT), 0);
    const char *a[] = {"--cluster-id", "bank-a", NULL};
    assert_int_equal(lp_start(lp, NULL, 0, a), 0);
    assert_int_not_equal(lp_stop(lp, SIGTERM), -1);
    const char *b[] = {"--cluster-id", "bank-b", NULL};
    ledger_refused(lp, b, "belongs to cluster \\\"bank-a\\\", not to this cluster \\\"bank-b\\\"");
    const char *shard[] = {"--cluster-id", "bank-a", "--shard", "1", "--shard-count", "2", NULL};
    ledger_refused(lp, shard, "is shard 0 of 1, not shard 1 of 2");
    assert_int_equal(lp_start(lp, NULL, 0, a), 0); /* its own identity still starts */
    lp_teardown(lp);
}

/* Two ledgers on one data directory: the second refuses and names the first one's pid. */
static void test_ledger_two_owners(void **state)
{
    (void)state;
    lp_t *first = &g_lp[0], *second = &g_lp[1];
    assert_int_equal(lp_setup(first, ledger_bin, T_PORT), 0);
    assert_int_equal(lp_start(first, NULL, 0, NULL), 0);
    assert_int_equal(lp_setup_like(second, ledger_bin, first->port + 1, first), 0);
    second->no_init = true;
    char data[LP_PATH_MAX], needle[64];
    qctest_path(first->dir, "data", data);
    const char *extra[] = {"--data-dir", data, NULL};
    snprintf(needle, sizeof needle, "is in use by process %d", (int)first->pid);
    ledger_refused(second, extra, needle);
    assert_true(lp_alive(first));
    assert_int_equal(lp_check(first), 1);
    /* Once the first is gone, its lock went with it: the directory starts again. */
    assert_int_not_equal(lp_stop(first, SIGKILL), -1);
    assert_int_equal(lp_start(second, NULL, 0, extra), 0);
    lp_teardown(second);
    lp_teardown(first);
}

/* What a store made before `init` and the checksums holds: no identity, and no record with
 * its 4-byte checksum. */
static int make_old(MDB_txn *txn, void *arg)
{
    (void)arg;
    MDB_dbi dbi;
    int rc = mdb_dbi_open(txn, "identity", 0, &dbi);
    if (rc != 0 || (rc = mdb_drop(txn, dbi, 1)) != 0)
        return rc;
    const char *summed[] = {"accounts", "devices", "loads", "transfers", "outbox"};
    for (size_t d = 0; d < sizeof summed / sizeof summed[0]; d++)
        if ((rc = qctest_lmdb_strip_tail(txn, summed[d], 4)) != 0)
            return rc;
    return 0;
}

/* A store of the release before init and checksums: no identity, records without their
 * checksum. Refused until init --upgrade, which gives it both; then it serves what it held. */
static void test_ledger_upgrade(void **state)
{
    (void)state;
    lp_t *lp = &g_lp[0];
    assert_int_equal(lp_setup(lp, ledger_bin, T_PORT), 0);
    assert_int_equal(lp_start(lp, NULL, 0, NULL), 0);
    assert_int_equal(lp_open_account(lp, "ACCT-OLD", 156, 0), 0);
    assert_int_equal(lp_deposit(lp, "ACCT-OLD", 777), 0);
    assert_int_not_equal(lp_stop(lp, SIGTERM), -1);
    /* Make it old: drop the identity, strip each record's 4-byte checksum. */
    char data[LP_PATH_MAX];
    qctest_path(lp->dir, "data", data);
    assert_int_equal(qctest_lmdb_edit(data, make_old, NULL), 0);
    lp->no_init = true;
    ledger_refused(lp, NULL, "has no identity");
    lp->no_init = false; /* the helper runs init --upgrade, as the operator would */
    assert_int_equal(lp_start(lp, NULL, 0, NULL), 0);
    assert_int_equal(lp_check(lp), 1);
    bool ok = false;
    assert_int_equal(lp_balance(lp, "ACCT-OLD", &ok), 777);
    assert_true(ok);
    assert_int_equal(lp_deposit(lp, "ACCT-OLD", 1), 0);
    lp_teardown(lp);
}

/* A flipped bit in an account's balance: the ledger still starts and serves reads, refuses
 * that record with QC_ECORRUPT and names it in its log, then refuses every write of the shard.
 * On the old code it served the wrong balance and went on writing. */
static void test_ledger_flipped_balance(void **state)
{
    (void)state;
    lp_t *lp = &g_lp[0];
    assert_int_equal(lp_setup(lp, ledger_bin, T_PORT), 0);
    assert_int_equal(lp_start(lp, NULL, 0, NULL), 0);
    assert_int_equal(lp_open_account(lp, "ACCT-A", 156, 0), 0);
    assert_int_equal(lp_open_account(lp, "ACCT-B", 156, 0), 0);
    assert_int_equal(lp_deposit(lp, "ACCT-A", 1000), 0);
    assert_int_equal(lp_deposit(lp, "ACCT-B", 2000), 0);
    assert_int_not_equal(lp_stop(lp, SIGTERM), -1);
    char data[LP_PATH_MAX];
    qctest_path(lp->dir, "data", data);
    /* An Account starts id (field 1: 0a 06 "ACCT-A"), currency (field 2: 10 9c 01), balance
     * (field 3: 18, then its varint at byte 12). */
    assert_int_equal(qctest_lmdb_flip(data, "accounts", "ACCT-A", 6, 12, 0x01), 0);
    const char *no_scrub[] = {"--scrub-per-second", "0", NULL};
    assert_int_equal(lp_start(lp, NULL, 0, no_scrub), 0);
    /* check --deep finds it before anything read it. */
    Qcledger__CheckRequest creq = QCLEDGER__CHECK_REQUEST__INIT;
    creq.deep = true;
    proto_rpc_reply_t *r = NULL;
    assert_int_equal(lp_call(lp->op, "check", &creq.base, &r), 0);
    Qcledger__CheckReply *c = qcledger__check_reply__unpack(NULL, r->body_len, r->body);
    proto_rpc_reply_destroy(&r);
    assert_non_null(c);
    assert_false(c->ok);
    assert_int_equal(c->checksums_failed, 1);
    assert_true(c->checksums_checked >= 4);
    qcledger__check_reply__free_unpacked(c, NULL);
    bool ok = false;
    assert_int_equal(lp_balance(lp, "ACCT-B", &ok), 2000);
    assert_true(ok);
    (void)lp_balance(lp, "ACCT-A", &ok);
    assert_false(ok);
    assert_int_equal(lp_deposit(lp, "ACCT-B", 5), QC_ECORRUPT);
    assert_int_equal(lp_balance(lp, "ACCT-B", &ok), 2000);
    assert_true(ok);
    char log[LP_PATH_MAX];
    ledger_log(lp, log);
    assert_true(qctest_file_contains(
        log, "\"event\":\"ledger.corrupt_record\",\"peer\":\"414343542d41\",\"db\":\"accounts\","
             "\"key\":\"414343542d41\""));
    /* Restarted with the background scrub on (its default rate) and nothing reading ACCT-A:
     * the scrub finds the record by itself and writes stop. */
    assert_int_not_equal(lp_stop(lp, SIGTERM), -1);
    assert_int_equal(lp_start(lp, NULL, 0, NULL), 0);
    qctest_sleep_ms(1500);
    assert_int_equal(lp_deposit(lp, "ACCT-B", 5), QC_ECORRUPT);
    assert_true(qctest_file_contains(log, "ledger.scrub_pass"));
    lp_teardown(lp);
}

static void audit_refused(ap_t *ap, const char *needle)
{
    char log[AP_PATH_MAX];
    assert_int_equal(ap_spawn(ap, NULL, 0, NULL), 0);
    int status = ap_wait_exit(ap, T_EXIT_MS);
    assert_refused(status);
    ap_path(ap, "audit.log", log);
    assert_true(qctest_file_contains(log, "audit.store_refused"));
    if (!qctest_file_contains(log, needle))
        fail_msg("%s does not say \"%s\"", log, needle);
}

/* qc-audit: no init, an empty and a truncated log, a second owner; and `qc-audit verify` on a
 * truncated copy refuses with a sentence instead of SIGBUS. */
static void test_audit(void **state)
{
    (void)state;
    ap_t *ap = &g_ap[0];
    assert_int_equal(ap_setup(ap, audit_bin, T_PORT + 10), 0);
    ap->no_init = true;
    audit_refused(ap, "does not exist");
    ap->no_init = false;
    assert_int_equal(ap_start(ap, NULL, 0, NULL), 0);
    for (uint64_t i = 1; i <= 200; i++) {
        uint64_t seq = 0;
        bool dup = false;
        uint8_t payload[256];
        memset(payload, (int)i, sizeof payload);
        assert_int_equal(ap_append(ap, "gateway-0", i, "security.test", NULL, 0, payload,
                                   sizeof payload, &seq, &dup),
                         0);
    }
    /* A second qc-audit on the same directory. */
    ap_t *second = &g_ap[1];
    assert_int_equal(ap_setup(second, audit_bin, T_PORT + 14), 0);
    second->no_init = true;
    char data[AP_PATH_MAX], data2[AP_PATH_MAX], needle[64];
    ap_path(ap, "data", data);
    ap_path(second, "data", data2);
    assert_int_equal(rmdir(data2), 0);
    assert_int_equal(symlink(data, data2), 0);
    snprintf(needle, sizeof needle, "is in use by process %d", (int)ap->pid);
    audit_refused(second, needle);
    assert_int_equal(unlink(data2), 0);
    assert_int_equal(mkdir(data2, 0700), 0);
    ap_teardown(second);
    assert_int_not_equal(ap_stop(ap, SIGTERM), -1);

    char mdb[AP_PATH_MAX], copy[AP_PATH_MAX], cmdb[AP_PATH_MAX], err[AP_PATH_MAX];
    qctest_path(data, "data.mdb", mdb);
    ap_path(ap, "copy", copy);
    assert_int_equal(mkdir(copy, 0700), 0);
    qctest_path(copy, "data.mdb", cmdb);
    char *const cp[] = {"cp", mdb, cmdb, NULL};
    assert_int_equal(qctest_run_argv(cp), 0);
    assert_int_equal(truncate(cmdb, file_size(cmdb) / 2), 0);
    ap_path(ap, "verify.err", err);
    char cert[AP_PATH_MAX];
    ap_path(ap, "checkpoint.pem", cert);
    char *const keygen[] = {"sh", "-c",
                            "openssl ecparam -name prime256v1 -genkey | openssl ec -pubout -out "
                            "\"$0\" 2>/dev/null",
                            cert, NULL};
    assert_int_equal(qctest_run_argv(keygen), 0);
    const char *verify[] = {audit_bin, "verify", "--dir", copy, "--cert", cert, NULL};
    qctest_cmd_t cmd = {.argv = (char *const *)verify, .out_path = "/dev/null", .err_path = err};
    int code = qctest_run(&cmd);
    assert_true(code > 0);
    assert_true(code < 128); /* not a signal */
    if (!qctest_file_contains(err, "is truncated"))
        fail_msg("%s does not say the copy is truncated", err);

    /* A flipped bit inside entry 100: qc-audit checks its chain since the last checkpoint (none
     * here: all of it) at start and refuses to append after it. */
    uint8_t key[8] = {0, 0, 0, 0, 0, 0, 0, 100};
    assert_int_equal(qctest_lmdb_flip(data, "entries", key, sizeof key, 60, 0x01), 0);
    audit_refused(ap, "\"event\":\"audit.chain_broken\",\"seq\":\"100\"");

    assert_int_equal(truncate(mdb, 8192), 0);
    audit_refused(ap, "is truncated");
    assert_int_equal(truncate(mdb, 0), 0);
    audit_refused(ap, "is 0 bytes");
    ap_teardown(ap);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s QC_LEDGER QC_AUDIT\n", argv[0]);
        return 2;
    }
    ledger_bin = argv[1];
    audit_bin = argv[2];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_ledger_missing, teardown),
        cmocka_unit_test_teardown(test_ledger_empty, teardown),
        cmocka_unit_test_teardown(test_ledger_truncated, teardown),
        cmocka_unit_test_teardown(test_ledger_foreign, teardown),
        cmocka_unit_test_teardown(test_ledger_two_owners, teardown),
        cmocka_unit_test_teardown(test_ledger_upgrade, teardown),
        cmocka_unit_test_teardown(test_ledger_flipped_balance, teardown),
        cmocka_unit_test_teardown(test_audit, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
