/* test_ops_lmdb.c - the one LMDB-to-QC_E* mapping both stores use: every row of its table,
 * and a real LMDB condition (a duplicate key under MDB_NOOVERWRITE) read through it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <lmdb.h>

#include "ops_lmdb.h"
#include "qc_error.h"

static void test_table(void **state)
{
    (void)state;
    assert_int_equal(ops_lmdb_error("test.lmdb", "get", MDB_NOTFOUND), QC_ENOTFOUND);
    assert_int_equal(ops_lmdb_error("test.lmdb", "put", MDB_KEYEXIST), QC_EEXIST);
    assert_int_equal(ops_lmdb_error("test.lmdb", "put", MDB_MAP_FULL), QC_EFULL);
    assert_int_equal(ops_lmdb_error("test.lmdb", "put", MDB_TXN_FULL), QC_EFULL);
    assert_int_equal(ops_lmdb_error("test.lmdb", "txn_begin", MDB_READERS_FULL), QC_EBUSY);
    /* A full disk is its own condition, not an I/O error (issue 21). */
    assert_int_equal(ops_lmdb_error("test.lmdb", "commit", 28 /* ENOSPC */), QC_ENOSPACE);
    assert_int_equal(ops_lmdb_error("test.lmdb", "commit", 122 /* EDQUOT */), QC_ENOSPACE);
    /* The rest is an I/O failure to the caller, whatever LMDB called it. */
    assert_int_equal(ops_lmdb_error("test.lmdb", "get", MDB_CORRUPTED), QC_EIO);
    assert_int_equal(ops_lmdb_error("test.lmdb", "open", MDB_INVALID), QC_EIO);
    assert_int_equal(ops_lmdb_error("test.lmdb", "open", 13 /* EACCES */), QC_EIO);
}

static void test_real_duplicate(void **state)
{
    (void)state;
    char dir[] = "/tmp/qc-test-ops-lmdb-XXXXXX";
    assert_non_null(mkdtemp(dir));
    MDB_env *env = NULL;
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_open(env, dir, 0, 0600), 0);
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
    MDB_val k = {.mv_size = 3, .mv_data = "key"}, v = {.mv_size = 1, .mv_data = "v"}, got;
    assert_int_equal(mdb_put(txn, dbi, &k, &v, MDB_NOOVERWRITE), 0);
    int rc = mdb_put(txn, dbi, &k, &v, MDB_NOOVERWRITE);
    assert_int_equal(ops_lmdb_error("test.lmdb", "put", rc), QC_EEXIST);
    MDB_val missing = {.mv_size = 4, .mv_data = "none"};
    rc = mdb_get(txn, dbi, &missing, &got);
    assert_int_equal(ops_lmdb_error("test.lmdb", "get", rc), QC_ENOTFOUND);
    mdb_txn_abort(txn);
    mdb_env_close(env);
    char path[sizeof dir + 16];
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/lock.mdb", dir);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_real_duplicate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
