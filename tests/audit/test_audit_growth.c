/* test_audit_growth.c - the audit log's map grows online under its threads (issue 21).
 *
 * A store opened with a 1 MiB map and a larger map_max is written by three threads at once,
 * as qc-audit's intake, relay and checkpoints write it (the first also polls the store's
 * space, as the intake does), while two threads read it: entries, the Merkle tree, proofs,
 * and the start-up check of the chain, whose walk nests reads. The writes fill the map
 * several times over. Nothing may be lost or doubled (every event holds one entry, the count
 * is what was sent, the chain, the indexes and the tree verify), the map must have grown, the
 * store must stay healthy throughout, and every read must see a whole log. At map_max the
 * store refuses with QC_EFULL and says so. No port, no process: threads on one store. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "audit_chain.h"
#include "audit_store.h"
#include "audit_verify.h"
#include "ledger_testkit.h"
#include "ops_metrics.h"
#include "proto_merkle.h"
#include "qc_error.h"
#include "qctest_fs.h"

#define T_MAP (1ull << 20)      /* the map it starts with */
#define T_MAP_MAX (32ull << 20) /* and the most it may grow to */
#define T_WRITERS 3             /* intake, relay, checkpoints */
#define T_READERS 2
#define T_EVENTS 500          /* per writer: about 3 x 500 x 4.6 KiB = 7 MiB, 7 maps of 1 MiB */
#define T_BATCH_MAX 6         /* events per append call */
#define T_PAYLOAD_MAX 8192    /* payloads of 1..T_PAYLOAD_MAX bytes */
#define T_RESEND_EVERY 7      /* every 7th batch is sent again: duplicates, never new entries */
#define T_ERRORS_MAX 8        /* failures a thread records before it stops */
#define T_FULL_TRIES_MAX 1000 /* events of T_PAYLOAD_MAX before a 1 MiB map must be full */

typedef struct shared {
    audit_store_t *store;
    bool poll;            /* writer 0 polls the store's space, as qc-audit's intake does */
    atomic_bool writing;  /* readers run while this holds */
    atomic_int unhealthy; /* times audit_store_healthy() said no */
    atomic_int errors;    /* failures seen by any thread */
    atomic_uint_fast64_t reads;
    char first_error[1024];
    pthread_mutex_t lock;
} shared_t;

typedef struct writer {
    shared_t *sh;
    int id;
    uint64_t appended; /* new entries acknowledged */
    uint64_t dups;     /* duplicates acknowledged */
} writer_t;

static void record_error(shared_t *sh, const char *what, int rc)
{
    pthread_mutex_lock(&sh->lock);
    if (atomic_fetch_add(&sh->errors, 1) == 0)
        snprintf(sh->first_error, sizeof sh->first_error, "%s: %s (%d)", what, qc_strerror(rc), rc);
    pthread_mutex_unlock(&sh->lock);
}

static void check_health(shared_t *sh)
{
    char why[512];
    if (!audit_store_healthy(sh->store, why, sizeof why)) {
        pthread_mutex_lock(&sh->lock);
        if (atomic_fetch_add(&sh->unhealthy, 1) == 0)
            snprintf(sh->first_error, sizeof sh->first_error, "unhealthy: %s", why);
        pthread_mutex_unlock(&sh->lock);
    }
}

static void *writer_main(void *arg)
{
    writer_t *w = arg;
    shared_t *sh = w->sh;
    char source[16];
    snprintf(source, sizeof source, "writer-%d", w->id);
    uint8_t *payload = malloc(T_PAYLOAD_MAX);
    assert_non_null(payload);
    uint8_t txn[T_BATCH_MAX][16];
    audit_event_t ev[T_BATCH_MAX];
    audit_append_result_t res[T_BATCH_MAX];
    unsigned rnd = (unsigned)w->id * 7919u + 1u;
    uint64_t next = 1, batches = 0;
    while (next <= T_EVENTS && atomic_load(&sh->errors) < T_ERRORS_MAX) {
        size_t n = 1 + (size_t)(rand_r(&rnd) % T_BATCH_MAX);
        if (n > T_EVENTS - next + 1)
            n = T_EVENTS - next + 1;
        for (size_t i = 0; i < n; i++) {
            memset(payload, (int)((next + i) & 0xff), T_PAYLOAD_MAX);
            tk_txn_id(txn[i]);
            ev[i] = (audit_event_t){.source = source,
                                    .source_seq = next + i,
                                    .type = "security.test",
                                    .txn_id = txn[i],
                                    .txn_id_len = 16,
                                    .payload = payload,
                                    .payload_len = 1 + (size_t)(rand_r(&rnd) % T_PAYLOAD_MAX)};
        }
        bool resend = ++batches % T_RESEND_EVERY == 0;
        for (int round = 0; round < (resend ? 2 : 1); round++) {
            int rc = audit_store_append(sh->store, ev, n, res);
            if (rc != 0) {
                record_error(sh, "append", rc);
                break;
            }
            for (size_t i = 0; i < n; i++) {
                if (res[i].code != 0)
                    record_error(sh, "append result", res[i].code);
                else if (res[i].duplicate != (round == 1))
                    record_error(sh, "duplicate flag", QC_EMISMATCH);
                else if (round == 1)
                    w->dups++;
                else
                    w->appended++;
            }
        }
        next += n;
        check_health(sh);
        /* qc-audit's intake polls the store's space between its batches: growth there. */
        if (w->id == 0 && sh->poll)
            audit_store_poll(sh->store);
    }
    free(payload);
    return NULL;
}

/* Reads a whole log: the last entry and a random one check against their hashes, the root
 * of the tree and an inclusion proof verify. */
static void read_once(shared_t *sh, unsigned *rnd)
{
    uint64_t last = 0;
    uint8_t hash[AUDIT_HASH_SIZE];
    int rc = audit_store_last(sh->store, &last, hash);
    if (rc != 0) {
        record_error(sh, "last", rc);
        return;
    }
    if (last == 0)
        return;
    uint64_t seq = 1 + (uint64_t)rand_r(rnd) % last;
    uint8_t *rec = NULL;
    size_t len = 0;
    if ((rc = audit_store_get(sh->store, seq, &rec, &len)) != 0) {
        record_error(sh, "get", rc);
        return;
    }
    audit_entry_t e;
    rc = audit_chain_parse(rec, len, &e);
    if (rc == 0 && e.seq != seq)
        rc = QC_EMISMATCH;
    uint8_t root[AUDIT_HASH_SIZE], leaf[PROTO_MERKLE_HASH_SIZE];
    proto_merkle_hash_t path[PROTO_MERKLE_PROOF_MAX];
    size_t path_len = 0;
    if (rc == 0)
        rc = audit_store_tree_root(sh->store, last, root);
    if (rc == 0)
        rc = audit_store_prove_inclusion(sh->store, seq, last, path, &path_len);
    if (rc == 0)
        rc = proto_merkle_leaf_hash(rec, len - AUDIT_HASH_SIZE, leaf);
    if (rc == 0)
        rc = proto_merkle_verify_inclusion(leaf, seq - 1, last, path, path_len, root);
    free(rec);
    if (rc != 0)
        record_error(sh, "read", rc);
    atomic_fetch_add(&sh->reads, 1);
}

static void *reader_main(void *arg)
{
    shared_t *sh = arg;
    unsigned rnd = (unsigned)(uintptr_t)pthread_self();
    uint64_t rounds = 0;
    while (atomic_load(&sh->writing) && atomic_load(&sh->errors) < T_ERRORS_MAX) {
        read_once(sh, &rnd);
        /* Now and then the start-up check: a walk whose visits open reads of their own. */
        if (++rounds % 50 == 0) {
            audit_verify_report_t r;
            int rc = audit_verify_tail(sh->store, &r);
            if (rc != 0)
                record_error(sh, r.why, rc);
        }
        check_health(sh);
    }
    return NULL;
}

static int64_t growths(void)
{
    return (int64_t)ops_counter_value(ops_counter("qc_storage_map_growths_total{store=\"audit\"}",
                                                  "Times the LMDB map was "
                                                  "grown online"));
}

/* With poll, growth comes mostly before the map is full; without, only from appends that met
 * a full map (aborted, grown, run again), three threads racing to grow it. */
static void grows_under_threads(bool poll)
{
    char dir[QCTEST_PATH_MAX];
    assert_int_equal(qctest_dir_new("qc-audit-growth", dir), 0);
    shared_t sh = {.writing = true, .poll = poll};
    pthread_mutex_init(&sh.lock, NULL);
    assert_int_equal(audit_store_open_growing(dir, 0, T_MAP, T_MAP_MAX, &sh.store), 0);
    int64_t grown_before = growths();
    writer_t w[T_WRITERS];
    pthread_t wt[T_WRITERS], rt[T_READERS];
    for (int i = 0; i < T_READERS; i++)
        assert_int_equal(pthread_create(&rt[i], NULL, reader_main, &sh), 0);
    for (int i = 0; i < T_WRITERS; i++) {
        w[i] = (writer_t){.sh = &sh, .id = i};
        assert_int_equal(pthread_create(&wt[i], NULL, writer_main, &w[i]), 0);
    }
    for (int i = 0; i < T_WRITERS; i++)
        assert_int_equal(pthread_join(wt[i], NULL), 0);
    atomic_store(&sh.writing, false);
    for (int i = 0; i < T_READERS; i++)
        assert_int_equal(pthread_join(rt[i], NULL), 0);
    if (atomic_load(&sh.errors) != 0 || atomic_load(&sh.unhealthy) != 0)
        fail_msg("%d errors, %d unhealthy: %s", atomic_load(&sh.errors), atomic_load(&sh.unhealthy),
                 sh.first_error);
    uint64_t appended = 0, dups = 0;
    for (int i = 0; i < T_WRITERS; i++) {
        appended += w[i].appended;
        dups += w[i].dups;
    }
    print_message("poll %d: appended %llu, resent %llu, reads %llu, growths %lld\n", poll,
                  (unsigned long long)appended, (unsigned long long)dups,
                  (unsigned long long)atomic_load(&sh.reads),
                  (long long)(growths() - grown_before));
    assert_int_equal(appended, (uint64_t)T_WRITERS * T_EVENTS);
    assert_true(dups > 0);
    assert_true(atomic_load(&sh.reads) > 0);
    /* The map grew, more than once: 1 MiB could never hold 7 MiB of entries. */
    assert_true(growths() - grown_before >= 3);
    /* Every event exactly once. */
    uint64_t entries = 0, cps = 0;
    assert_int_equal(audit_store_count(sh.store, &entries, &cps), 0);
    assert_int_equal(entries, (uint64_t)T_WRITERS * T_EVENTS);
    for (int i = 0; i < T_WRITERS; i++) {
        char source[16];
        snprintf(source, sizeof source, "writer-%d", i);
        uint64_t hwm = 0;
        assert_int_equal(audit_store_hwm(sh.store, source, &hwm), 0);
        assert_int_equal(hwm, T_EVENTS);
        for (uint64_t s = 1; s <= T_EVENTS; s++) {
            uint64_t seq = 0;
            assert_int_equal(audit_store_dedupe_get(sh.store, source, s, &seq), 0);
        }
    }
    char why[512];
    assert_true(audit_store_healthy(sh.store, why, sizeof why));
    audit_store_destroy(&sh.store);
    /* The chain, the indexes and the tree, offline. */
    audit_verify_report_t r;
    int rc = audit_verify_dir(dir, NULL, &r);
    if (rc != 0)
        fail_msg("verify: %s", r.why);
    assert_int_equal(r.entries, (uint64_t)T_WRITERS * T_EVENTS);
    pthread_mutex_destroy(&sh.lock);
    assert_int_equal(qctest_dir_remove(dir), 0);
}

static void test_grows_under_threads(void **state)
{
    (void)state;
    grows_under_threads(true);
}

static void test_grows_when_full_under_threads(void **state)
{
    (void)state;
    grows_under_threads(false);
}

/* Appends one event of T_PAYLOAD_MAX bytes from gateway-0. */
static int append_big(audit_store_t *store, const uint8_t *payload, uint64_t source_seq,
                      audit_append_result_t *res)
{
    audit_event_t ev = {.source = "gateway-0",
                        .source_seq = source_seq,
                        .type = "security.test",
                        .payload = payload,
                        .payload_len = T_PAYLOAD_MAX};
    return audit_store_append(store, &ev, 1, res);
}

/* map_max equal to the map: a full map is refused whole, said so, and the log stays intact. */
static void test_refuses_at_max(void **state)
{
    (void)state;
    char dir[QCTEST_PATH_MAX];
    assert_int_equal(qctest_dir_new("qc-audit-growth", dir), 0);
    audit_store_t *store = NULL;
    assert_int_equal(audit_store_open_growing(dir, 0, T_MAP, T_MAP, &store), 0);
    uint8_t *payload = calloc(1, T_PAYLOAD_MAX);
    assert_non_null(payload);
    uint64_t sent = 0;
    int rc = 0;
    audit_append_result_t res;
    while (rc == 0 && sent < T_FULL_TRIES_MAX) {
        rc = append_big(store, payload, sent + 1, &res);
        sent += rc == 0;
    }
    assert_int_equal(rc, QC_EFULL);
    char why[512];
    audit_store_poll(store);
    assert_false(audit_store_healthy(store, why, sizeof why));
    assert_non_null(strstr(why, "may not grow"));
    assert_non_null(strstr(why, "map_max_mb"));
    uint64_t entries = 0, cps = 0;
    assert_int_equal(audit_store_count(store, &entries, &cps), 0);
    assert_int_equal(entries, sent);
    audit_store_destroy(&store);
    /* Restarted with room to grow, it takes the refused event (as qc-audit with a larger
     * map_max_mb), and the log holds each event once. */
    assert_int_equal(audit_store_open_growing(dir, 0, T_MAP, 4 * T_MAP, &store), 0);
    assert_int_equal(append_big(store, payload, sent + 1, &res), 0);
    assert_false(res.duplicate);
    assert_int_equal(res.seq, sent + 1);
    assert_true(audit_store_healthy(store, why, sizeof why));
    audit_store_destroy(&store);
    free(payload);
    audit_verify_report_t r;
    rc = audit_verify_dir(dir, NULL, &r);
    if (rc != 0)
        fail_msg("verify: %s", r.why);
    assert_int_equal(r.entries, sent + 1);
    assert_int_equal(qctest_dir_remove(dir), 0);
}

/* A reader in another process (AUDIT_STORE_SHARED, as qcctl's restore beside qc-audit) whose
 * map is smaller than the one the writer grew to: it adopts the new size and reads on. */
static void test_shared_reader_adopts_growth(void **state)
{
    (void)state;
    char dir[QCTEST_PATH_MAX];
    assert_int_equal(qctest_dir_new("qc-audit-growth", dir), 0);
    audit_store_t *store = NULL;
    assert_int_equal(audit_store_open_growing(dir, 0, T_MAP, T_MAP_MAX, &store), 0);
    uint8_t *payload = calloc(1, T_PAYLOAD_MAX);
    assert_non_null(payload);
    audit_append_result_t res;
    assert_int_equal(append_big(store, payload, 1, &res), 0);
    int to_child[2], to_parent[2];
    assert_int_equal(pipe(to_child), 0);
    assert_int_equal(pipe(to_parent), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* The child: open while the map is 1 MiB, read, wait, read what lies beyond it. */
        audit_store_t *r = NULL;
        uint64_t hwm = 0, last = 0;
        uint8_t hash[AUDIT_HASH_SIZE], *rec = NULL;
        size_t len = 0;
        char go = 0;
        int ok = audit_store_open(dir, AUDIT_STORE_RDONLY | AUDIT_STORE_SHARED, 0, &r) == 0 &&
                 audit_store_hwm(r, "gateway-0", &hwm) == 0 && hwm == 1;
        ok = ok && write(to_parent[1], "r", 1) == 1 && read(to_child[0], &go, 1) == 1;
        ok = ok && audit_store_last(r, &last, hash) == 0 && last > 1 &&
             audit_store_get(r, last, &rec, &len) == 0;
        free(rec);
        audit_store_destroy(&r);
        _exit(ok ? 0 : 1);
    }
    char c = 0;
    assert_int_equal(read(to_parent[0], &c, 1), 1);
    uint64_t sent = 1;
    while (sent < 4 * T_MAP / T_PAYLOAD_MAX) /* 4 MiB: far beyond the child's map */
        assert_int_equal(append_big(store, payload, ++sent, &res), 0);
    assert_int_equal(write(to_child[1], "g", 1), 1);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    close(to_child[0]);
    close(to_child[1]);
    close(to_parent[0]);
    close(to_parent[1]);
    free(payload);
    audit_store_destroy(&store);
    assert_int_equal(qctest_dir_remove(dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grows_under_threads),
        cmocka_unit_test(test_grows_when_full_under_threads),
        cmocka_unit_test(test_refuses_at_max),
        cmocka_unit_test(test_shared_reader_adopts_growth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
