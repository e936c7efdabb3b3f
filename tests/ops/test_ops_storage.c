/* test_ops_storage.c - the space of one LMDB store as a state: a map filled for real until
 * MDB_MAP_FULL, online growth up to its maximum, a full disk, and one log line per change of
 * state however many commits fail. */
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
#include "ops_log.h"
#include "ops_storage.h"
#include "qc_error.h"

#define T_MAP (1024 * 1024)    /* the map the test fills */
#define T_VALUE 4000           /* bytes of one value: about one page */
#define T_FAILURES 1000        /* failed commits noted in a row */
#define T_CAPTURE (256 * 1024) /* stderr kept */

typedef struct fixture {
    char dir[64];
    MDB_env *env;
    MDB_dbi dbi;
    int saved_stderr;
    FILE *log;
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/qc-test-ops-storage-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    assert_int_equal(mdb_env_create(&f->env), 0);
    assert_int_equal(mdb_env_set_mapsize(f->env, T_MAP), 0);
    assert_int_equal(mdb_env_open(f->env, f->dir, 0, 0600), 0);
    MDB_txn *txn = NULL;
    assert_int_equal(mdb_txn_begin(f->env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, NULL, 0, &f->dbi), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    /* The log goes to a file the test reads back. */
    f->log = tmpfile();
    assert_non_null(f->log);
    f->saved_stderr = dup(STDERR_FILENO);
    assert_true(dup2(fileno(f->log), STDERR_FILENO) >= 0);
    ops_log_init("test", "0", OPS_LOG_INFO);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    dup2(f->saved_stderr, STDERR_FILENO);
    close(f->saved_stderr);
    fclose(f->log);
    mdb_env_close(f->env);
    char path[96];
    snprintf(path, sizeof path, "%s/data.mdb", f->dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/lock.mdb", f->dir);
    unlink(path);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* Lines of the log so far holding needle. */
static int log_count(fixture_t *f, const char *needle)
{
    fflush(f->log);
    char *text = calloc(1, T_CAPTURE);
    assert_non_null(text);
    ssize_t n = pread(fileno(f->log), text, T_CAPTURE - 1, 0);
    assert_true(n >= 0);
    int count = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p++)
        count++;
    free(text);
    return count;
}

/* Puts values until LMDB refuses; returns the code of the refusal through ops_lmdb_error. */
static int fill(fixture_t *f, uint32_t *key)
{
    static uint8_t value[T_VALUE];
    for (;;) {
        MDB_txn *txn = NULL;
        assert_int_equal(mdb_txn_begin(f->env, NULL, 0, &txn), 0);
        (*key)++;
        MDB_val k = {.mv_size = sizeof *key, .mv_data = key};
        MDB_val v = {.mv_size = sizeof value, .mv_data = value};
        int rc = mdb_put(txn, f->dbi, &k, &v, 0);
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        if (rc != 0)
            return ops_lmdb_error("test.lmdb", "put", rc);
    }
}

static void test_map_full_then_grows(void **state)
{
    fixture_t *f = *state;
    ops_storage_config_t cfg = {.name = "test",
                                .dir = f->dir,
                                .env = f->env,
                                .map_max = 2 * T_MAP,
                                .map_max_key = "map_max_mb"};
    ops_storage_t *st = NULL;
    assert_int_equal(ops_storage_new(&cfg, &st), 0);
    assert_int_equal(ops_storage_state(st), OPS_STORAGE_OK);
    uint32_t key = 0;
    int rc = fill(f, &key);
    assert_int_equal(rc, QC_EFULL);
    for (int i = 0; i < T_FAILURES; i++)
        ops_storage_note(st, rc);
    assert_int_equal(ops_storage_state(st), OPS_STORAGE_MAP_FULL);
    char why[OPS_STORAGE_WHY_MAX];
    assert_false(ops_storage_healthy(st, why, sizeof why));
    assert_non_null(strstr(why, "degraded"));
    assert_non_null(strstr(why, "map is full"));
    /* One line for a thousand failures. */
    assert_int_equal(log_count(f, "\"storage.map_full\""), 1);
    /* Without permission to grow (a transaction may be open) nothing changes. */
    assert_int_equal(ops_storage_poll(st, false), OPS_STORAGE_MAP_FULL);
    /* Grown online: writes go on, one line says so. */
    ops_storage_state_t s = ops_storage_poll(st, true);
    assert_true(s == OPS_STORAGE_OK || s == OPS_STORAGE_MAP_HIGH);
    assert_int_equal(log_count(f, "\"storage.map_grown\""), 1);
    assert_int_equal(log_count(f, "\"storage.resumed\"") + log_count(f, "\"storage.map_high\""), 1);
    MDB_envinfo info;
    assert_int_equal(mdb_env_info(f->env, &info), 0);
    assert_int_equal(info.me_mapsize, 2 * T_MAP);
    /* Full again at the maximum: the sentence says it cannot grow and what to raise. */
    rc = fill(f, &key);
    assert_int_equal(rc, QC_EFULL);
    ops_storage_note(st, rc);
    assert_int_equal(ops_storage_poll(st, true), OPS_STORAGE_MAP_FULL);
    assert_false(ops_storage_healthy(st, why, sizeof why));
    assert_non_null(strstr(why, "may not grow: raise map_max_mb"));
    assert_int_equal(log_count(f, "\"storage.map_grown\""), 1);
    ops_storage_destroy(&st);
    assert_null(st);
    ops_storage_destroy(&st);
}

static void test_disk_full_one_line(void **state)
{
    fixture_t *f = *state;
    ops_storage_config_t cfg = {.name = "test", .dir = f->dir, .env = f->env};
    ops_storage_t *st = NULL;
    assert_int_equal(ops_storage_new(&cfg, &st), 0);
    for (int i = 0; i < T_FAILURES; i++)
        ops_storage_note(st, QC_ENOSPACE);
    assert_int_equal(ops_storage_state(st), OPS_STORAGE_DISK_FULL);
    char why[OPS_STORAGE_WHY_MAX];
    assert_false(ops_storage_healthy(st, why, sizeof why));
    assert_non_null(strstr(why, "disk under"));
    assert_non_null(strstr(why, "reads served"));
    /* Other failures are not about space: the state stays. */
    ops_storage_note(st, QC_EIO);
    assert_int_equal(ops_storage_state(st), OPS_STORAGE_DISK_FULL);
    /* An I/O error with space left on the disk stays an I/O error; others pass unchanged. */
    assert_int_equal(ops_storage_classify(st, QC_EIO), QC_EIO);
    assert_int_equal(ops_storage_classify(st, QC_EFULL), QC_EFULL);
    assert_int_equal(ops_storage_classify(st, 0), 0);
    /* A commit that went through ends it. */
    ops_storage_note(st, 0);
    assert_true(ops_storage_healthy(st, why, sizeof why));
    assert_int_equal(log_count(f, "\"storage.disk_full\""), 1);
    assert_int_equal(log_count(f, "\"storage.resumed\""), 1);
    ops_storage_destroy(&st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_map_full_then_grows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_full_one_line, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
