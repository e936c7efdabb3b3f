/* test_signer_token.c - PKCS#11 access against a real SoftHSM2 token: keys, signatures, certs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "proto_ecdsa.h"
#include "proto_envelope.h"
#include "qc_error.h"
#include "signer_cert.h"
#include "signer_test_util.h"
#include "signer_token.h"

/* Enough signatures that one with a short r or s (probability 1/128 each) appears: the
 * chance that none does among 2000 is below 1e-6. */
#define TEST_SIGNATURES 2000

typedef struct fixture {
    signer_test_hsm_t hsm;
    signer_token_t *tok;
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(signer_test_hsm_init(&f->hsm), 0);
    assert_int_equal(signer_token_open(signer_test_module(), SIGNER_TEST_TOKEN, &f->tok), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    signer_token_destroy(&f->tok);
    assert_null(f->tok);
    signer_test_hsm_cleanup(&f->hsm);
    free(f);
    return 0;
}

static void login(fixture_t *f)
{
    assert_int_equal(signer_token_login(f->tok, SIGNER_TEST_PIN, strlen(SIGNER_TEST_PIN)), 0);
}

/* Verifies a raw r||s over digest with pub the way a device does: DER, then OpenSSL. */
static int verify_raw(EVP_PKEY *pub, const uint8_t digest[PROTO_DIGEST_SIZE],
                      const uint8_t raw[PROTO_SIG_RAW_SIZE])
{
    uint8_t der[PROTO_SIG_DER_MAX];
    size_t der_len = 0;
    if (proto_ecdsa_raw_to_der(raw, der, sizeof(der), &der_len) != 0)
        return -1;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pub, NULL);
    int ok = ctx != NULL && EVP_PKEY_verify_init(ctx) == 1 &&
             EVP_PKEY_verify(ctx, der, der_len, digest, PROTO_DIGEST_SIZE) == 1;
    EVP_PKEY_CTX_free(ctx);
    return ok ? 0 : -1;
}

static void test_generate_find_sign_verify(void **state)
{
    fixture_t *f = *state;
    login(f);
    signer_key_t *made = NULL, *found = NULL;
    assert_int_equal(signer_token_generate_key(f->tok, "allow-signing", 1, &made), 0);
    assert_int_equal(signer_token_find_key(f->tok, "allow-signing", 1, &found), 0);
    assert_string_equal(signer_key_label(found), "allow-signing");
    assert_int_equal(signer_key_version(found), 1);
    assert_memory_equal(signer_key_id(made), signer_key_id(found), PROTO_KEY_ID_SIZE);
    uint8_t id[PROTO_KEY_ID_SIZE];
    assert_int_equal(proto_key_id(signer_key_public(found), id), 0);
    assert_memory_equal(id, signer_key_id(found), PROTO_KEY_ID_SIZE);

    signer_session_t *sess = NULL;
    assert_int_equal(signer_session_open(f->tok, &sess), 0);
    int short_scalars = 0;
    for (int i = 0; i < TEST_SIGNATURES; i++) {
        uint8_t digest[PROTO_DIGEST_SIZE], raw[PROTO_SIG_RAW_SIZE];
        assert_int_equal(RAND_bytes(digest, sizeof(digest)), 1);
        assert_int_equal(signer_session_sign(sess, found, digest, raw), 0);
        if (raw[0] == 0 || raw[PROTO_SIG_RAW_SIZE / 2] == 0)
            short_scalars++;
        assert_int_equal(verify_raw(signer_key_public(found), digest, raw), 0);
        /* A flipped digest bit must not verify: the check above can fail. */
        digest[i % PROTO_DIGEST_SIZE] ^= 1;
        assert_int_not_equal(verify_raw(signer_key_public(found), digest, raw), 0);
    }
    assert_true(short_scalars > 0);
    /* SoftHSM2 copies keys: every signature above went through one sealed session copy. */
    assert_int_equal(signer_session_copies(sess), 1);
    signer_session_destroy(&sess);
    assert_null(sess);
    signer_key_destroy(&made);
    signer_key_destroy(&found);
    assert_null(found);
}

static void test_generate_refuses_duplicate(void **state)
{
    fixture_t *f = *state;
    login(f);
    signer_key_t *k = NULL;
    assert_int_equal(signer_token_generate_key(f->tok, "outcome-signing", 1, &k), 0);
    signer_key_destroy(&k);
    assert_int_equal(signer_token_generate_key(f->tok, "outcome-signing", 1, &k), QC_EEXIST);
    assert_null(k);
    /* Another version of the same name is a different key. */
    assert_int_equal(signer_token_generate_key(f->tok, "outcome-signing", 2, &k), 0);
    signer_key_destroy(&k);
    assert_int_equal(signer_token_generate_key(f->tok, "outcome-signing", 0, &k), QC_EINVAL);
}

static void test_missing_key(void **state)
{
    fixture_t *f = *state;
    login(f);
    signer_key_t *k = NULL;
    assert_int_equal(signer_token_generate_key(f->tok, "audit-checkpoint", 1, &k), 0);
    signer_key_destroy(&k);
    assert_int_equal(signer_token_find_key(f->tok, "audit-checkpoint", 2, &k), QC_EKEYID);
    assert_int_equal(signer_token_find_key(f->tok, "allow-signing", 1, &k), QC_EKEYID);
    assert_null(k);
}

static void test_wrong_pin(void **state)
{
    fixture_t *f = *state;
    assert_int_equal(signer_token_login(f->tok, "999999", 6), QC_EPIN);
    assert_int_equal(signer_token_login(f->tok, "", 0), QC_EINVAL);
    login(f);
}

static void test_missing_token_and_module(void **state)
{
    (void)state;
    signer_test_hsm_t hsm = {0};
    assert_int_equal(signer_test_hsm_init(&hsm), 0);
    signer_token_t *tok = NULL;
    assert_int_equal(signer_token_open(signer_test_module(), "no-such-token", &tok), QC_ENOTFOUND);
    assert_null(tok);
    assert_int_equal(signer_token_open("/nonexistent/libpkcs11.so", SIGNER_TEST_TOKEN, &tok),
                     QC_EIO);
    assert_null(tok);
    /* And it still opens properly after those failures. */
    assert_int_equal(signer_token_open(signer_test_module(), SIGNER_TEST_TOKEN, &tok), 0);
    signer_token_destroy(&tok);
    signer_test_hsm_cleanup(&hsm);
}

static void test_certificate_and_request(void **state)
{
    fixture_t *f = *state;
    login(f);
    signer_key_t *k = NULL;
    assert_int_equal(signer_token_generate_key(f->tok, "allow-signing", 3, &k), 0);
    signer_session_t *sess = NULL;
    assert_int_equal(signer_session_open(f->tok, &sess), 0);

    X509 *cert = NULL;
    assert_int_equal(signer_cert_self_signed(sess, k, "quancun allow-signing v3", 30, &cert), 0);
    EVP_PKEY *cert_key = X509_get0_pubkey(cert);
    assert_non_null(cert_key);
    assert_int_equal(X509_verify(cert, signer_key_public(k)), 1);
    uint8_t id[PROTO_KEY_ID_SIZE];
    assert_int_equal(proto_key_id(cert_key, id), 0);
    assert_memory_equal(id, signer_key_id(k), PROTO_KEY_ID_SIZE);
    /* Another key must not verify it. */
    EVP_PKEY *other = EVP_EC_gen("P-256");
    assert_non_null(other);
    assert_int_not_equal(X509_verify(cert, other), 1);
    X509_free(cert);

    X509_REQ *req = NULL;
    assert_int_equal(signer_cert_request(sess, k, "quancun allow-signing v3", &req), 0);
    assert_int_equal(X509_REQ_verify(req, signer_key_public(k)), 1);
    assert_int_not_equal(X509_REQ_verify(req, other), 1);
    X509_REQ_free(req);
    EVP_PKEY_free(other);

    assert_int_equal(signer_cert_self_signed(sess, k, "x", 0, &cert), QC_EINVAL);
    signer_session_destroy(&sess);
    signer_key_destroy(&k);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_generate_find_sign_verify, setup, teardown),
        cmocka_unit_test_setup_teardown(test_generate_refuses_duplicate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_pin, setup, teardown),
        cmocka_unit_test(test_missing_token_and_module),
        cmocka_unit_test_setup_teardown(test_certificate_and_request, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
