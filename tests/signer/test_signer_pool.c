/* test_signer_pool.c - the worker pool in-process: every job comes back once, signed and
 * verifiable; a full queue says QC_EBUSY; a passed deadline is not signed; destroy hands
 * back what was never taken. */
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/rand.h>

#include "ops_time.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "qc_error.h"
#include "signer.pb-c.h"
#include "signer_pool.h"
#include "signer_sign.h"
#include "signer_test_util.h"
#include "signer_token.h"

#define TEST_JOBS 300
#define TEST_SUBMIT_TRIES 100000
#define TEST_WAIT_MS 20000

typedef struct fixture {
    signer_test_hsm_t hsm;
    signer_token_t *tok;
    signer_keyring_t *ring;
    uint8_t *req;
    size_t req_len;
    uint8_t *body;
    size_t body_len;
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    *state = f;
    assert_int_equal(signer_test_hsm_init(&f->hsm), 0);
    assert_int_equal(signer_token_open(signer_test_module(), SIGNER_TEST_TOKEN, &f->tok), 0);
    assert_int_equal(signer_token_login(f->tok, SIGNER_TEST_PIN, strlen(SIGNER_TEST_PIN)), 0);
    const uint32_t versions[SIGNER_KIND_COUNT] = {1, 1, 1};
    for (int k = 0; k < SIGNER_KIND_COUNT; k++) {
        signer_key_t *key = NULL;
        assert_int_equal(
            signer_token_generate_key(f->tok, signer_kind_label((signer_kind_t)k), 1, &key), 0);
        signer_key_destroy(&key);
    }
    assert_int_equal(signer_keyring_load(f->tok, versions, &f->ring), 0);

    uint8_t hash[PROTO_DIGEST_SIZE];
    RAND_bytes(hash, sizeof(hash));
    Quancun__AuditCheckpoint cp = QUANCUN__AUDIT_CHECKPOINT__INIT;
    cp.seq = 42;
    cp.hash.data = hash;
    cp.hash.len = sizeof(hash);
    cp.time_ms = ops_time_wall_ms();
    assert_int_equal(proto_pack(&cp.base, &f->body, &f->body_len), 0);
    Quancun__SignRequest r = QUANCUN__SIGN_REQUEST__INIT;
    r.kind = QUANCUN__SIGN_KIND__SIGN_AUDIT_CHECKPOINT;
    r.body.data = f->body;
    r.body.len = f->body_len;
    assert_int_equal(proto_pack(&r.base, &f->req, &f->req_len), 0);
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    free(f->req);
    free(f->body);
    signer_keyring_destroy(&f->ring);
    signer_token_destroy(&f->tok);
    signer_test_hsm_cleanup(&f->hsm);
    free(f);
    return 0;
}

/* Takes finished jobs until pending reaches 0 (or the wait expires); marks seen[tag]. */
static int take_all(signer_pool_t *pool, fixture_t *f, int *seen, int *codes)
{
    int taken = 0;
    uint64_t end = ops_time_mono_ms() + TEST_WAIT_MS;
    while (signer_pool_pending(pool) > 0 && ops_time_mono_ms() < end) {
        struct pollfd pfd = {.fd = signer_pool_fd(pool), .events = POLLIN};
        poll(&pfd, 1, 100);
        void *tag;
        int code;
        uint8_t *reply;
        size_t reply_len;
        char msg[SIGNER_MESSAGE_MAX];
        while (signer_pool_take(pool, &tag, &code, &reply, &reply_len, msg)) {
            int i = (int)(intptr_t)tag;
            seen[i]++;
            codes[i] = code;
            if (code == 0) {
                Quancun__SignReply *sr = quancun__sign_reply__unpack(NULL, reply_len, reply);
                assert_non_null(sr);
                proto_envelope_t *env = NULL;
                assert_int_equal(proto_envelope_open(sr->signed_.data, sr->signed_.len, &env), 0);
                EVP_PKEY *pub =
                    signer_key_public(signer_keyring_key(f->ring, SIGNER_KIND_CHECKPOINT));
                assert_int_equal(proto_envelope_verify(env, PROTO_TYPE_AUDIT_CHECKPOINT, pub), 0);
                proto_envelope_destroy(&env);
                quancun__sign_reply__free_unpacked(sr, NULL);
            } else {
                assert_null(reply);
                assert_true(msg[0] != '\0');
            }
            free(reply);
            taken++;
        }
    }
    return taken;
}

static void test_every_job_comes_back_signed(void **state)
{
    fixture_t *f = *state;
    signer_pool_t *pool = NULL;
    assert_int_equal(signer_pool_new(f->tok, f->ring, 3, SIGNER_QUEUE_MAX, &pool), 0);
    int seen[TEST_JOBS] = {0}, codes[TEST_JOBS] = {0};
    for (int i = 0; i < TEST_JOBS; i++)
        assert_int_equal(signer_pool_submit(pool, (void *)(intptr_t)i, f->req, f->req_len, 0), 0);
    assert_int_equal(take_all(pool, f, seen, codes), TEST_JOBS);
    for (int i = 0; i < TEST_JOBS; i++) {
        assert_int_equal(seen[i], 1);
        assert_int_equal(codes[i], 0);
    }
    assert_true(signer_pool_healthy(pool));
    signer_pool_destroy(&pool, NULL);
    assert_null(pool);
}

static void test_full_queue_is_busy(void **state)
{
    fixture_t *f = *state;
    signer_pool_t *pool = NULL;
    assert_int_equal(signer_pool_new(f->tok, f->ring, 0, 2, &pool), QC_EINVAL);
    assert_int_equal(signer_pool_new(f->tok, f->ring, 1, SIGNER_QUEUE_MAX + 1, &pool), QC_EINVAL);
    assert_int_equal(signer_pool_new(f->tok, f->ring, 1, 2, &pool), 0);
    static int seen[TEST_SUBMIT_TRIES], codes[TEST_SUBMIT_TRIES];
    int submitted = 0, busy = 0;
    /* One worker signing at ~0.1 ms per job cannot keep up with a tight submit loop. */
    for (int i = 0; i < TEST_SUBMIT_TRIES && busy == 0; i++) {
        int rc = signer_pool_submit(pool, (void *)(intptr_t)i, f->req, f->req_len, 0);
        if (rc == QC_EBUSY)
            busy++;
        else if (rc == 0)
            submitted++;
        else
            fail_msg("submit returned %d", rc);
    }
    assert_int_equal(busy, 1);
    assert_int_equal(take_all(pool, f, seen, codes), submitted);
    signer_pool_destroy(&pool, NULL);
}

static void test_deadline_passed_is_not_signed(void **state)
{
    fixture_t *f = *state;
    signer_pool_t *pool = NULL;
    assert_int_equal(signer_pool_new(f->tok, f->ring, 1, 8, &pool), 0);
    int seen[2] = {0}, codes[2] = {0};
    /* Deadlines are on the monotonic clock (the caller's budget converted on receipt). */
    uint64_t past = ops_time_mono_ms() - 1000, future = ops_time_mono_ms() + 60000;
    assert_int_equal(signer_pool_submit(pool, (void *)0, f->req, f->req_len, past), 0);
    assert_int_equal(signer_pool_submit(pool, (void *)1, f->req, f->req_len, future), 0);
    assert_int_equal(take_all(pool, f, seen, codes), 2);
    assert_int_equal(codes[0], QC_EEXPIRED);
    assert_int_equal(codes[1], 0);
    signer_pool_destroy(&pool, NULL);
}

static int freed_tags;
static void count_tag(void *tag)
{
    (void)tag;
    freed_tags++;
}

static void test_destroy_hands_back_untaken_jobs(void **state)
{
    fixture_t *f = *state;
    signer_pool_t *pool = NULL;
    assert_int_equal(signer_pool_new(f->tok, f->ring, 2, 16, &pool), 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(signer_pool_submit(pool, (void *)(intptr_t)i, f->req, f->req_len, 0), 0);
    freed_tags = 0;
    /* Workers finish the queued jobs before they stop; nobody takes them. */
    signer_pool_destroy(&pool, count_tag);
    assert_null(pool);
    assert_int_equal(freed_tags, 5);
    /* And the token's sessions were all closed: destroying it asserts that. */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_every_job_comes_back_signed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_queue_is_busy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadline_passed_is_not_signed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_destroy_hands_back_untaken_jobs, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
