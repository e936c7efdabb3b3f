/* test_ecdsa.c - raw r||s <-> strict DER: known vectors, refusals, and OpenSSL round trips. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "proto_ecdsa.h"
#include "qc_error.h"

#define ROUND_TRIP_KEYS 32
#define ROUND_TRIP_ITERATIONS 2000
#define MSG_MAX 64

/* Encodes raw and checks the exact DER bytes, then decodes them back to raw. */
static void expect_vector(const uint8_t raw[PROTO_SIG_RAW_SIZE], const uint8_t *der, size_t der_len)
{
    uint8_t out[PROTO_SIG_DER_MAX];
    size_t out_len = 0;
    assert_int_equal(proto_ecdsa_raw_to_der(raw, out, sizeof(out), &out_len), 0);
    assert_int_equal(out_len, der_len);
    assert_memory_equal(out, der, der_len);
    uint8_t back[PROTO_SIG_RAW_SIZE];
    assert_int_equal(proto_ecdsa_der_to_raw(der, der_len, back), 0);
    assert_memory_equal(back, raw, PROTO_SIG_RAW_SIZE);
}

static void test_vector_small_values(void **state)
{
    (void)state;
    uint8_t raw[PROTO_SIG_RAW_SIZE] = {0};
    raw[31] = 0x01; /* r = 1 */
    raw[63] = 0x02; /* s = 2 */
    static const uint8_t der[] = {0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02};
    expect_vector(raw, der, sizeof(der));
}

static void test_vector_single_high_byte(void **state)
{
    (void)state;
    uint8_t raw[PROTO_SIG_RAW_SIZE] = {0};
    raw[31] = 0x80; /* r = 128 needs a 0x00 pad */
    raw[63] = 0x7f; /* s = 127 does not */
    static const uint8_t der[] = {0x30, 0x07, 0x02, 0x02, 0x00, 0x80, 0x02, 0x01, 0x7f};
    expect_vector(raw, der, sizeof(der));
}

static void test_vector_full_width_high_bit(void **state)
{
    (void)state;
    uint8_t raw[PROTO_SIG_RAW_SIZE];
    memset(raw, 0xff, 32);      /* r: high bit, 33-byte INTEGER */
    raw[32] = 0x7f;             /* s: no high bit, 32-byte INTEGER */
    memset(raw + 33, 0x01, 31); /* */
    uint8_t der[2 + 2 + 33 + 2 + 32];
    size_t n = 0;
    der[n++] = 0x30;
    der[n++] = 2 + 33 + 2 + 32;
    der[n++] = 0x02;
    der[n++] = 33;
    der[n++] = 0x00;
    memset(der + n, 0xff, 32);
    n += 32;
    der[n++] = 0x02;
    der[n++] = 32;
    der[n++] = 0x7f;
    memset(der + n, 0x01, 31);
    n += 31;
    assert_int_equal(n, sizeof(der));
    assert_int_equal(sizeof(der), 71);
    expect_vector(raw, der, sizeof(der));
}

static void test_vector_both_high_bit_is_max(void **state)
{
    (void)state;
    uint8_t raw[PROTO_SIG_RAW_SIZE];
    memset(raw, 0x80, sizeof(raw));
    uint8_t out[PROTO_SIG_DER_MAX];
    size_t out_len = 0;
    assert_int_equal(proto_ecdsa_raw_to_der(raw, out, sizeof(out), &out_len), 0);
    assert_int_equal(out_len, PROTO_SIG_DER_MAX);
    assert_int_equal(out[1], 70);
    assert_int_equal(out[3], 33);
    assert_int_equal(out[4], 0x00);
    /* A buffer one byte short is refused rather than overrun. */
    assert_int_equal(proto_ecdsa_raw_to_der(raw, out, PROTO_SIG_DER_MAX - 1, &out_len), QC_EINVAL);
}

static void test_vector_leading_zeros(void **state)
{
    (void)state;
    uint8_t raw[PROTO_SIG_RAW_SIZE] = {0};
    /* r = 0x00 0x7f ..: 31 significant bytes, no pad. */
    raw[1] = 0x7f;
    memset(raw + 2, 0xaa, 30);
    /* s = 0x00 0x00 0x80 ..: 30 significant bytes, high bit, so a pad: 31 bytes. */
    raw[34] = 0x80;
    memset(raw + 35, 0x55, 29);
    uint8_t der[2 + 2 + 31 + 2 + 31];
    size_t n = 0;
    der[n++] = 0x30;
    der[n++] = 2 + 31 + 2 + 31;
    der[n++] = 0x02;
    der[n++] = 31;
    der[n++] = 0x7f;
    memset(der + n, 0xaa, 30);
    n += 30;
    der[n++] = 0x02;
    der[n++] = 31;
    der[n++] = 0x00;
    der[n++] = 0x80;
    memset(der + n, 0x55, 29);
    n += 29;
    assert_int_equal(n, sizeof(der));
    expect_vector(raw, der, sizeof(der));
}

static void test_raw_zero_refused(void **state)
{
    (void)state;
    uint8_t raw[PROTO_SIG_RAW_SIZE] = {0};
    uint8_t out[PROTO_SIG_DER_MAX];
    size_t out_len = 0;
    raw[63] = 1; /* r = 0 */
    assert_int_equal(proto_ecdsa_raw_to_der(raw, out, sizeof(out), &out_len), QC_EINVAL);
    raw[63] = 0;
    raw[31] = 1; /* s = 0 */
    assert_int_equal(proto_ecdsa_raw_to_der(raw, out, sizeof(out), &out_len), QC_EINVAL);
}

/* Each of these must be refused, and the output left untouched. */
static void expect_refused(const uint8_t *der, size_t len)
{
    uint8_t raw[PROTO_SIG_RAW_SIZE];
    memset(raw, 0xee, sizeof(raw));
    assert_int_equal(proto_ecdsa_der_to_raw(der, len, raw), QC_EDECODE);
    for (size_t i = 0; i < sizeof(raw); i++)
        assert_int_equal(raw[i], 0xee);
}

static void test_der_strictness(void **state)
{
    (void)state;
    /* The valid baseline, to be sure the refusals below are about the one change. */
    static const uint8_t ok[] = {0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02};
    uint8_t raw[PROTO_SIG_RAW_SIZE];
    assert_int_equal(proto_ecdsa_der_to_raw(ok, sizeof(ok), raw), 0);

    static const uint8_t long_seq_len[] = {0x30, 0x81, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02};
    expect_refused(long_seq_len, sizeof(long_seq_len));
    static const uint8_t long_int_len[] = {0x30, 0x07, 0x02, 0x81, 0x01, 0x01, 0x02, 0x01, 0x02};
    expect_refused(long_int_len, sizeof(long_int_len));
    static const uint8_t negative[] = {0x30, 0x06, 0x02, 0x01, 0x81, 0x02, 0x01, 0x02};
    expect_refused(negative, sizeof(negative));
    static const uint8_t extra_zero[] = {0x30, 0x07, 0x02, 0x02, 0x00, 0x01, 0x02, 0x01, 0x02};
    expect_refused(extra_zero, sizeof(extra_zero));
    static const uint8_t zero_r[] = {0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x02};
    expect_refused(zero_r, sizeof(zero_r));
    static const uint8_t empty_int[] = {0x30, 0x05, 0x02, 0x00, 0x02, 0x01, 0x02};
    expect_refused(empty_int, sizeof(empty_int));
    static const uint8_t trailing_outer[] = {0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02, 0x00};
    expect_refused(trailing_outer, sizeof(trailing_outer));
    static const uint8_t trailing_inner[] = {0x30, 0x08, 0x02, 0x01, 0x01,
                                             0x02, 0x01, 0x02, 0x05, 0x00};
    expect_refused(trailing_inner, sizeof(trailing_inner));
    static const uint8_t wrong_tag[] = {0x31, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02};
    expect_refused(wrong_tag, sizeof(wrong_tag));
    static const uint8_t wrong_int_tag[] = {0x30, 0x06, 0x03, 0x01, 0x01, 0x02, 0x01, 0x02};
    expect_refused(wrong_int_tag, sizeof(wrong_int_tag));
    static const uint8_t one_int[] = {0x30, 0x03, 0x02, 0x01, 0x01};
    expect_refused(one_int, sizeof(one_int));
    static const uint8_t int_overruns[] = {0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x02, 0x02};
    expect_refused(int_overruns, sizeof(int_overruns));
    expect_refused(ok, sizeof(ok) - 1); /* truncated */
    expect_refused(ok, 0);
    expect_refused(NULL, 0);

    /* 33 significant bytes (no pad) is wider than a P-256 scalar. */
    uint8_t wide[2 + 2 + 33 + 3];
    wide[0] = 0x30;
    wide[1] = 2 + 33 + 3;
    wide[2] = 0x02;
    wide[3] = 33;
    memset(wide + 4, 0x01, 33);
    wide[37] = 0x02;
    wide[38] = 0x01;
    wide[39] = 0x01;
    expect_refused(wide, sizeof(wide));
    /* 34 bytes with a pad is too wide as well. */
    uint8_t wide_pad[2 + 2 + 34 + 3];
    wide_pad[0] = 0x30;
    wide_pad[1] = 2 + 34 + 3;
    wide_pad[2] = 0x02;
    wide_pad[3] = 34;
    wide_pad[4] = 0x00;
    memset(wide_pad + 5, 0x81, 33);
    wide_pad[38] = 0x02;
    wide_pad[39] = 0x01;
    wide_pad[40] = 0x01;
    expect_refused(wide_pad, sizeof(wide_pad));
}

/* Signs msg with key (ECDSA, SHA-256) into sig. */
static size_t openssl_sign(EVP_PKEY *key, const uint8_t *msg, size_t len, uint8_t *sig)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    assert_non_null(ctx);
    assert_int_equal(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key), 1);
    size_t sig_len = PROTO_SIG_DER_MAX;
    assert_int_equal(EVP_DigestSign(ctx, sig, &sig_len, msg, len), 1);
    EVP_MD_CTX_free(ctx);
    return sig_len;
}

static int openssl_verify(EVP_PKEY *key, const uint8_t *msg, size_t len, const uint8_t *sig,
                          size_t sig_len)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    assert_non_null(ctx);
    assert_int_equal(EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, key), 1);
    int ok = EVP_DigestVerify(ctx, sig, sig_len, msg, len);
    EVP_MD_CTX_free(ctx);
    return ok;
}

/* Independent decode of r and s with OpenSSL's own ECDSA_SIG, to check ours against. */
static void openssl_der_to_raw(const uint8_t *der, size_t len, uint8_t raw[PROTO_SIG_RAW_SIZE])
{
    const unsigned char *p = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)len);
    assert_non_null(sig);
    assert_int_equal(BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw, 32), 32);
    assert_int_equal(BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw + 32, 32), 32);
    ECDSA_SIG_free(sig);
}

static void test_openssl_round_trips(void **state)
{
    (void)state;
    EVP_PKEY *keys[ROUND_TRIP_KEYS];
    for (int i = 0; i < ROUND_TRIP_KEYS; i++) {
        keys[i] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        assert_non_null(keys[i]);
    }
    int leading_zero = 0; /* r or s below 2^248 */
    int high_bit = 0;     /* r or s needing the 0x00 pad */
    int short_der = 0;    /* DER shorter than 70 bytes */
    int high_s = 0;       /* s > n/2: OpenSSL makes either form, about half each */
    for (int it = 0; it < ROUND_TRIP_ITERATIONS; it++) {
        EVP_PKEY *key = keys[it % ROUND_TRIP_KEYS];
        uint8_t msg[MSG_MAX];
        size_t msg_len = 1 + (size_t)(it % MSG_MAX);
        assert_int_equal(RAND_bytes(msg, (int)msg_len), 1);
        uint8_t sig[PROTO_SIG_DER_MAX];
        size_t sig_len = openssl_sign(key, msg, msg_len, sig);

        uint8_t raw[PROTO_SIG_RAW_SIZE];
        assert_int_equal(proto_ecdsa_der_to_raw(sig, sig_len, raw), 0);
        uint8_t expect[PROTO_SIG_RAW_SIZE];
        openssl_der_to_raw(sig, sig_len, expect);
        assert_memory_equal(raw, expect, PROTO_SIG_RAW_SIZE);

        uint8_t der[PROTO_SIG_DER_MAX];
        size_t der_len = 0;
        assert_int_equal(proto_ecdsa_raw_to_der(raw, der, sizeof(der), &der_len), 0);
        assert_int_equal(der_len, sig_len);
        assert_memory_equal(der, sig, sig_len);
        assert_int_equal(openssl_verify(key, msg, msg_len, der, der_len), 1);

        /* The low-S twin: same r, s <= n/2, and OpenSSL accepts both forms, so refusing the
         * high one is our rule (proto_envelope_verify), not the library's. */
        uint8_t low[PROTO_SIG_RAW_SIZE];
        memcpy(low, raw, sizeof low);
        int changed = proto_ecdsa_raw_low_s(low);
        assert_int_equal(changed, !proto_ecdsa_raw_is_low_s(raw));
        assert_true(proto_ecdsa_raw_is_low_s(low));
        assert_memory_equal(low, raw, PROTO_SIG_RAW_SIZE / 2);
        if (changed == 1) {
            high_s++;
            size_t low_len = 0;
            assert_int_equal(proto_ecdsa_raw_to_der(low, der, sizeof(der), &low_len), 0);
            assert_int_equal(openssl_verify(key, msg, msg_len, der, low_len), 1);
        }

        if (raw[0] == 0 || raw[32] == 0)
            leading_zero++;
        if ((raw[0] & 0x80) || (raw[32] & 0x80))
            high_bit++;
        if (sig_len < 70)
            short_der++;
    }
    print_message("round trips: %d, leading zero: %d, high bit: %d, short DER: %d\n",
                  ROUND_TRIP_ITERATIONS, leading_zero, high_bit, short_der);
    for (int i = 0; i < ROUND_TRIP_KEYS; i++)
        EVP_PKEY_free(keys[i]);
    /* With 2000 signatures a leading zero byte in r or s is expected about 16 times
     * (P(none) < 1e-6); none at all would mean the loop missed the case it exists for.
     * A DER shorter than 70 bytes is rarer (about 2 in 1000) and only reported. */
    assert_true(leading_zero > 0);
    assert_true(high_bit > 0);
    assert_true(high_s > ROUND_TRIP_ITERATIONS / 4 && high_s < ROUND_TRIP_ITERATIONS * 3 / 4);
    (void)short_der;
}

/* s at the edges of n/2 and n (P-256's order), normalized by hand-checked values. */
static void test_low_s_edges(void **state)
{
    (void)state;
    static const uint8_t n[32] = {
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17,
        0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
    };
    static const uint8_t half[32] = {
        0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b,
        0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
    };
    uint8_t raw[PROTO_SIG_RAW_SIZE];
    memset(raw, 0x11, 32);

    /* s = floor(n/2) is low and stays. */
    memcpy(raw + 32, half, 32);
    assert_true(proto_ecdsa_raw_is_low_s(raw));
    assert_int_equal(proto_ecdsa_raw_low_s(raw), 0);
    assert_memory_equal(raw + 32, half, 32);

    /* s = floor(n/2) + 1 is high; n - s = floor(n/2) since n is odd. */
    memcpy(raw + 32, half, 32);
    raw[63]++;
    assert_false(proto_ecdsa_raw_is_low_s(raw));
    assert_int_equal(proto_ecdsa_raw_low_s(raw), 1);
    assert_memory_equal(raw + 32, half, 32);

    /* s = n - 1 becomes 1. */
    memcpy(raw + 32, n, 32);
    raw[63]--;
    assert_int_equal(proto_ecdsa_raw_low_s(raw), 1);
    uint8_t one[32] = {0};
    one[31] = 1;
    assert_memory_equal(raw + 32, one, 32);

    /* s = n is no signature: refused, untouched. */
    memcpy(raw + 32, n, 32);
    assert_int_equal(proto_ecdsa_raw_low_s(raw), QC_EINVAL);
    assert_memory_equal(raw + 32, n, 32);
    uint8_t r[32];
    memset(r, 0x11, sizeof r);
    assert_memory_equal(raw, r, 32); /* r is never touched */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vector_small_values),
        cmocka_unit_test(test_vector_single_high_byte),
        cmocka_unit_test(test_vector_full_width_high_bit),
        cmocka_unit_test(test_vector_both_high_bit_is_max),
        cmocka_unit_test(test_vector_leading_zeros),
        cmocka_unit_test(test_raw_zero_refused),
        cmocka_unit_test(test_der_strictness),
        cmocka_unit_test(test_openssl_round_trips),
        cmocka_unit_test(test_low_s_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
