/* test_gateway_certcache.c - the gateway's cache of verified device certificates: a hit answers
 * like the verification it remembers, and never past the certificate's validity, the cache's
 * time to live, or for a certificate that did not verify. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "gateway_certcache.h"
#include "qc_error.h"
#include "qctest_fs.h"
#include "qctest_key.h"

#define DAY_S (24L * 3600L)
#define PATH_LEN 512

typedef struct fixture {
    char dir[PATH_LEN];
    char ca_path[PATH_LEN + 16];
    time_t now;
    EVP_PKEY *ca_key, *other_key, *dev_key;
    X509 *ca, *other_ca;
    proto_trust_t *trust;
    gateway_certcache_t *cache;
} fixture_t;

/* A certificate for key named cn, valid from now+from_s to now+to_s, signed by issuer (itself
 * when NULL, as a CA). */
static X509 *make_cert(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key,
                       time_t now, long from_s, long to_s)
{
    qctest_cert_t spec = {.key = key,
                          .cn = cn,
                          .signer = issuer_key,
                          .issuer = issuer,
                          .serial = (long)(now % 100000) + to_s,
                          .not_before_s = from_s,
                          .not_after_s = to_s,
                          .now = now,
                          .ext = issuer == NULL ? QCTEST_EXT_CA : QCTEST_EXT_LEAF};
    return qctest_cert_new(&spec);
}

static size_t cert_der(X509 *c, uint8_t **der)
{
    *der = NULL;
    int n = i2d_X509(c, der);
    assert_true(n > 0);
    return (size_t)n;
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    if (f == NULL)
        return -1;
    if (qctest_dir_new("qc-certcache", f->dir) != 0)
        return -1;
    f->now = time(NULL);
    f->ca_key = qctest_key_new();
    f->other_key = qctest_key_new();
    f->dev_key = qctest_key_new();
    f->ca = make_cert("test CA", f->ca_key, NULL, f->ca_key, f->now, -DAY_S, 30 * DAY_S);
    f->other_ca = make_cert("test CA", f->other_key, NULL, f->other_key, f->now, -DAY_S, DAY_S);
    snprintf(f->ca_path, sizeof f->ca_path, "%s/ca.pem", f->dir);
    qctest_write_cert(f->ca_path, f->ca);
    if (proto_trust_new(f->ca_path, NULL, &f->trust) != 0 ||
        gateway_certcache_new(f->trust, &f->cache) != 0)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    gateway_certcache_destroy(&f->cache);
    assert_null(f->cache);
    proto_trust_destroy(&f->trust);
    X509_free(f->ca);
    X509_free(f->other_ca);
    EVP_PKEY_free(f->ca_key);
    EVP_PKEY_free(f->other_key);
    EVP_PKEY_free(f->dev_key);
    qctest_dir_remove(f->dir);
    free(f);
    return 0;
}

/* Verifies der at now; returns the code, and checks id and key on success. */
static int check(fixture_t *f, const uint8_t *der, size_t len, time_t now, const char *want_id)
{
    char id[PROTO_DEVICE_ID_MAX + 1] = "";
    EVP_PKEY *pub = NULL;
    int rc = gateway_certcache_verify(f->cache, der, len, now, id, &pub);
    if (rc == 0) {
        assert_string_equal(id, want_id);
        assert_non_null(pub);
        assert_int_equal(EVP_PKEY_eq(pub, f->dev_key), 1);
        EVP_PKEY_free(pub);
    } else {
        assert_null(pub);
    }
    return rc;
}

static void assert_stats(fixture_t *f, uint64_t hits, uint64_t misses)
{
    uint64_t h = 0, m = 0;
    gateway_certcache_stats(f->cache, &h, &m);
    assert_int_equal(h, hits);
    assert_int_equal(m, misses);
}

static void test_hit_answers_like_the_verification(void **state)
{
    fixture_t *f = *state;
    X509 *c = make_cert("QC0001", f->dev_key, f->ca, f->ca_key, f->now, -60, DAY_S);
    uint8_t *der = NULL;
    size_t len = cert_der(c, &der);
    assert_int_equal(check(f, der, len, f->now, "QC0001"), 0);
    assert_stats(f, 0, 1);
    assert_int_equal(check(f, der, len, f->now + 1, "QC0001"), 0);
    assert_int_equal(check(f, der, len, f->now + 2, "QC0001"), 0);
    assert_stats(f, 2, 1);
    OPENSSL_free(der);
    X509_free(c);
}

static void test_refused_certificate_is_not_remembered(void **state)
{
    fixture_t *f = *state;
    X509 *c = make_cert("QC0002", f->dev_key, f->other_ca, f->other_key, f->now, -60, DAY_S);
    uint8_t *der = NULL;
    size_t len = cert_der(c, &der);
    assert_int_not_equal(check(f, der, len, f->now, "QC0002"), 0);
    assert_int_not_equal(check(f, der, len, f->now, "QC0002"), 0);
    assert_stats(f, 0, 2);
    OPENSSL_free(der);
    X509_free(c);
}

static void test_no_hit_past_the_validity_period(void **state)
{
    fixture_t *f = *state;
    X509 *c = make_cert("QC0003", f->dev_key, f->ca, f->ca_key, f->now, -60, 10);
    uint8_t *der = NULL;
    size_t len = cert_der(c, &der);
    assert_int_equal(check(f, der, len, f->now, "QC0003"), 0);
    /* Within the time to live, but the certificate has expired: verified again, refused. */
    assert_int_equal(check(f, der, len, f->now + 30, "QC0003"), QC_ECERTEXPIRED);
    assert_stats(f, 0, 2);
    OPENSSL_free(der);
    X509_free(c);
}

static void test_entry_lives_at_most_the_ttl(void **state)
{
    fixture_t *f = *state;
    X509 *c = make_cert("QC0004", f->dev_key, f->ca, f->ca_key, f->now, -60, DAY_S);
    uint8_t *der = NULL;
    size_t len = cert_der(c, &der);
    assert_int_equal(check(f, der, len, f->now, "QC0004"), 0);
    assert_int_equal(check(f, der, len, f->now + GATEWAY_CERTCACHE_TTL_S - 1, "QC0004"), 0);
    assert_stats(f, 1, 1);
    assert_int_equal(check(f, der, len, f->now + GATEWAY_CERTCACHE_TTL_S, "QC0004"), 0);
    assert_stats(f, 1, 2);
    /* A clock that goes back does not revive an entry either. */
    assert_int_equal(check(f, der, len, f->now - 5, "QC0004"), 0);
    assert_stats(f, 1, 3);
    OPENSSL_free(der);
    X509_free(c);
}

static void test_one_changed_byte_is_another_certificate(void **state)
{
    fixture_t *f = *state;
    X509 *c = make_cert("QC0005", f->dev_key, f->ca, f->ca_key, f->now, -60, DAY_S);
    uint8_t *der = NULL;
    size_t len = cert_der(c, &der);
    assert_int_equal(check(f, der, len, f->now, "QC0005"), 0);
    der[len - 1] ^= 0x01; /* in the signature */
    assert_int_not_equal(check(f, der, len, f->now, "QC0005"), 0);
    assert_stats(f, 0, 2);
    OPENSSL_free(der);
    X509_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hit_answers_like_the_verification, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_certificate_is_not_remembered, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_no_hit_past_the_validity_period, setup, teardown),
        cmocka_unit_test_setup_teardown(test_entry_lives_at_most_the_ttl, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_changed_byte_is_another_certificate, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
