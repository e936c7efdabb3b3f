/* proto_ecdsa.c - converts ECDSA P-256 signatures between raw r||s and strict DER. */
#include "proto_ecdsa.h"

#include <assert.h>
#include <string.h>

#include "qc_error.h"

#define ECDSA_SCALAR_SIZE (PROTO_SIG_RAW_SIZE / 2) /* 32 bytes each for r and s */
#define DER_TAG_SEQUENCE 0x30
#define DER_TAG_INTEGER 0x02
#define DER_SHORT_LEN_MAX 0x7f /* longest content with a one-byte length */
#define DER_LONG_LEN_1 0x81    /* length in the next byte */
#define DER_INT_MAX (ECDSA_SCALAR_SIZE + 1)

/* Writes one 32-byte big-endian scalar as a DER INTEGER at out; returns bytes written.
 * The caller has checked the scalar is not zero and out has DER_INT_MAX + 2 bytes. */
static size_t der_put_int(const uint8_t scalar[ECDSA_SCALAR_SIZE], uint8_t *out)
{
    size_t skip = 0;
    while (skip < ECDSA_SCALAR_SIZE && scalar[skip] == 0)
        skip++;
    assert(skip < ECDSA_SCALAR_SIZE);
    size_t sig_len = ECDSA_SCALAR_SIZE - skip;
    int pad = (scalar[skip] & 0x80) != 0;
    size_t n = 0;
    out[n++] = DER_TAG_INTEGER;
    out[n++] = (uint8_t)(sig_len + (size_t)pad);
    if (pad)
        out[n++] = 0x00;
    memcpy(out + n, scalar + skip, sig_len);
    return n + sig_len;
}

static int is_zero(const uint8_t *p, size_t len)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < len; i++)
        acc |= p[i];
    return acc == 0;
}

int proto_ecdsa_raw_to_der(const uint8_t raw[PROTO_SIG_RAW_SIZE], uint8_t *der, size_t der_cap,
                           size_t *der_len)
{
    assert(raw != NULL);
    assert(der != NULL);
    assert(der_len != NULL);
    if (is_zero(raw, ECDSA_SCALAR_SIZE) || is_zero(raw + ECDSA_SCALAR_SIZE, ECDSA_SCALAR_SIZE))
        return QC_EINVAL;

    /* Build into a local buffer first so der_cap only needs to fit the real length. */
    uint8_t body[2 * (DER_INT_MAX + 2)];
    size_t body_len = der_put_int(raw, body);
    body_len += der_put_int(raw + ECDSA_SCALAR_SIZE, body + body_len);
    assert(body_len <= DER_SHORT_LEN_MAX); /* 70 at most: the short length form always fits */

    size_t total = 2 + body_len;
    assert(total <= PROTO_SIG_DER_MAX);
    if (der_cap < total)
        return QC_EINVAL;
    der[0] = DER_TAG_SEQUENCE;
    der[1] = (uint8_t)body_len;
    memcpy(der + 2, body, body_len);
    *der_len = total;
    return 0;
}

/* Parses one strict DER INTEGER at *p (len bytes left) into a left-padded 32-byte scalar and
 * advances *p. Refuses long or non-minimal lengths, negative values, zero and anything over
 * 32 significant bytes. */
static int der_get_int(const uint8_t **p, size_t *left, uint8_t scalar[ECDSA_SCALAR_SIZE])
{
    const uint8_t *q = *p;
    if (*left < 2 || q[0] != DER_TAG_INTEGER)
        return QC_EDECODE;
    size_t len = q[1];
    /* Lengths of ECDSA P-256 integers never need the long form, which DER forbids for
     * lengths below 128 anyway. */
    if (len == 0 || len > DER_INT_MAX || len > *left - 2)
        return QC_EDECODE;
    const uint8_t *v = q + 2;
    if (v[0] & 0x80)
        return QC_EDECODE; /* negative */
    if (v[0] == 0x00) {
        /* A leading zero is only allowed, and then required, before a high bit. */
        if (len == 1 || !(v[1] & 0x80))
            return QC_EDECODE;
        v++;
        len--;
    }
    if (len > ECDSA_SCALAR_SIZE)
        return QC_EDECODE;
    memset(scalar, 0, ECDSA_SCALAR_SIZE);
    memcpy(scalar + ECDSA_SCALAR_SIZE - len, v, len);
    size_t used = (size_t)(v + len - q);
    *p = q + used;
    *left -= used;
    return 0;
}

int proto_ecdsa_der_to_raw(const uint8_t *der, size_t der_len, uint8_t raw[PROTO_SIG_RAW_SIZE])
{
    assert(raw != NULL);
    if (der == NULL || der_len < 2 || der_len > PROTO_SIG_DER_MAX)
        return QC_EDECODE;
    if (der[0] != DER_TAG_SEQUENCE)
        return QC_EDECODE;
    /* Only the short length form is valid: the content is at most 70 bytes. */
    size_t body_len = der[1];
    if (body_len > DER_SHORT_LEN_MAX || body_len != der_len - 2)
        return QC_EDECODE;

    uint8_t tmp[PROTO_SIG_RAW_SIZE];
    const uint8_t *p = der + 2;
    size_t left = body_len;
    if (der_get_int(&p, &left, tmp) != 0)
        return QC_EDECODE;
    if (der_get_int(&p, &left, tmp + ECDSA_SCALAR_SIZE) != 0)
        return QC_EDECODE;
    if (left != 0)
        return QC_EDECODE; /* trailing bytes inside the SEQUENCE */
    if (is_zero(tmp, ECDSA_SCALAR_SIZE) || is_zero(tmp + ECDSA_SCALAR_SIZE, ECDSA_SCALAR_SIZE))
        return QC_EDECODE;
    memcpy(raw, tmp, PROTO_SIG_RAW_SIZE);
    return 0;
}

/* The order n of P-256 and floor(n / 2), big-endian. */
static const uint8_t ecdsa_p256_order[ECDSA_SCALAR_SIZE] = {
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
};
static const uint8_t ecdsa_p256_half_order[ECDSA_SCALAR_SIZE] = {
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
};

int proto_ecdsa_raw_is_low_s(const uint8_t raw[PROTO_SIG_RAW_SIZE])
{
    assert(raw != NULL);
    /* Both are big-endian of the same width, so byte order is numeric order. */
    return memcmp(raw + ECDSA_SCALAR_SIZE, ecdsa_p256_half_order, ECDSA_SCALAR_SIZE) <= 0;
}

int proto_ecdsa_raw_low_s(uint8_t raw[PROTO_SIG_RAW_SIZE])
{
    assert(raw != NULL);
    if (proto_ecdsa_raw_is_low_s(raw))
        return 0;
    uint8_t *s = raw + ECDSA_SCALAR_SIZE;
    /* s >= n is no signature at all (a broken token): n - s would wrap. */
    if (memcmp(s, ecdsa_p256_order, ECDSA_SCALAR_SIZE) >= 0)
        return QC_EINVAL;
    unsigned borrow = 0;
    for (int i = ECDSA_SCALAR_SIZE - 1; i >= 0; i--) {
        unsigned d = (unsigned)ecdsa_p256_order[i] - s[i] - borrow;
        s[i] = (uint8_t)d;
        borrow = (d >> 8) & 1u;
    }
    assert(borrow == 0);
    assert(proto_ecdsa_raw_is_low_s(raw));
    return 1;
}
