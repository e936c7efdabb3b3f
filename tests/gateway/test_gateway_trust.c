/* test_gateway_trust.c - the gateway's trust store follows its CRL file: a device revoked while
 * the gateway runs is refused at the next poll, a broken CRL file keeps the previous store,
 * SIGHUP re-reads at once, and a CRL past its nextUpdate fails closed unless configured. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "gateway_trust.h"
#include "proto_cert.h"
#include "qc_error.h"
#include "qctest_fs.h"
#include "qctest_key.h"

#define DEVICE_SERIAL 4242L
#define OTHER_SERIAL 999L
#define DAY_S (24L * 3600L)
#define T0_MS 100000u /* a monotonic time well past the first poll interval */

typedef struct fixture {
    char dir[QCTEST_PATH_MAX];
    char ca_path[QCTEST_PATH_MAX];
    char crl_path[QCTEST_PATH_MAX];
    EVP_PKEY *ca_key, *dev_key;
    X509 *ca;
    uint8_t *der; /* the device's certificate */
    size_t der_len;
} fixture_t;

static void write_crl(fixture_t *f, const long *serials, int n, long next_update_s)
{
    qctest_write_crl(f->crl_path, f->ca_key, f->ca, serials, n, next_update_s);
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    if (f == NULL || qctest_dir_new("qc-test-gwtrust", f->dir) != 0)
        return -1;
    qctest_path(f->dir, "ca.pem", f->ca_path);
    qctest_path(f->dir, "crl.pem", f->crl_path);
    qctest_ca_new(&f->ca_key, &f->ca);
    qctest_write_cert(f->ca_path, f->ca);
    f->dev_key = qctest_key_new();
    qctest_cert_t spec = {.key = f->dev_key,
                          .cn = "QC-DEV-TRUST",
                          .signer = f->ca_key,
                          .issuer = f->ca,
                          .serial = DEVICE_SERIAL,
                          .not_before_s = -3600,
                          .not_after_s = 30 * DAY_S,
                          .ext = QCTEST_EXT_LEAF};
    X509 *dev = qctest_cert_new(&spec);
    qctest_cert_der(dev, &f->der, &f->der_len);
    X509_free(dev);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    qctest_dir_remove(f->dir);
    EVP_PKEY_free(f->ca_key);
    EVP_PKEY_free(f->dev_key);
    X509_free(f->ca);
    free(f->der);
    free(f);
    return 0;
}

/* The device certificate through the store's current cache. */
static int verify(fixture_t *f, gateway_trust_t *t)
{
    char id[PROTO_DEVICE_ID_MAX + 1];
    EVP_PKEY *pub = NULL;
    int rc =
        gateway_certcache_verify(gateway_trust_certs(t), f->der, f->der_len, time(NULL), id, &pub);
    EVP_PKEY_free(pub);
    return rc;
}

static void test_revoked_while_running(void **state)
{
    fixture_t *f = *state;
    const long other[] = {OTHER_SERIAL};
    const long both[] = {OTHER_SERIAL, DEVICE_SERIAL};
    write_crl(f, other, 1, 7 * DAY_S);
    gateway_trust_t *t = NULL;
    assert_int_equal(gateway_trust_new(f->ca_path, f->crl_path, 0, 0, &t), 0);
    assert_int_equal(verify(f, t), 0);
    assert_int_equal(verify(f, t), 0); /* now from the cache */
    assert_int_equal(gateway_trust_poll(t, T0_MS, 0), 0);

    /* The CA revokes the device: seen at the next poll, not from the cache. */
    write_crl(f, both, 2, 7 * DAY_S);
    assert_int_equal(gateway_trust_poll(t, T0_MS + GATEWAY_TRUST_POLL_MS / 2, 0), 0);
    assert_int_equal(verify(f, t), 0); /* not looked at yet: the poll interval */
    assert_int_equal(gateway_trust_poll(t, T0_MS + GATEWAY_TRUST_POLL_MS, 0), 1);
    assert_int_equal(verify(f, t), QC_ECERTREVOKED);
    assert_int_equal(gateway_trust_poll(t, T0_MS + 2 * GATEWAY_TRUST_POLL_MS, 0), 0);

    /* A broken CRL file (half written, say) keeps the previous store: still revoked. */
    assert_int_equal(qctest_file_write(f->crl_path, "-----BEGIN X509 CRL-----\ngarbage\n"), 0);
    assert_true(gateway_trust_poll(t, T0_MS + 3 * GATEWAY_TRUST_POLL_MS, 0) < 0);
    assert_int_equal(verify(f, t), QC_ECERTREVOKED);

    /* SIGHUP re-reads at once, without waiting for the interval. */
    write_crl(f, other, 1, 7 * DAY_S);
    assert_int_equal(gateway_trust_poll(t, T0_MS + 3 * GATEWAY_TRUST_POLL_MS + 1, 1), 1);
    assert_int_equal(verify(f, t), 0);
    gateway_trust_destroy(&t);
    assert_null(t);
}

static void test_stale_crl_policy(void **state)
{
    fixture_t *f = *state;
    const long other[] = {OTHER_SERIAL};
    write_crl(f, other, 1, -60); /* nextUpdate a minute ago */
    gateway_trust_t *closed = NULL, *open = NULL;
    assert_int_equal(gateway_trust_new(f->ca_path, f->crl_path, 0, 0, &closed), 0);
    assert_int_equal(verify(f, closed), QC_ECRLSTALE);
    assert_int_equal(gateway_trust_new(f->ca_path, f->crl_path, PROTO_TRUST_STALE_CRL_OK, 0, &open),
                     0);
    assert_int_equal(verify(f, open), 0);
    /* A fresh CRL, once written, is picked up and the devices are served again. */
    write_crl(f, other, 1, 7 * DAY_S);
    assert_int_equal(gateway_trust_poll(closed, T0_MS, 0), 1);
    assert_int_equal(verify(f, closed), 0);
    gateway_trust_destroy(&closed);
    gateway_trust_destroy(&open);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_revoked_while_running, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_crl_policy, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
