/* proto_amount.c - strict parsing and formatting of decimal amounts in minor units. */
#include "proto_amount.h"

#include <assert.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "qc_error.h"

_Static_assert(PROTO_AMOUNT_DECIMALS == 2, "proto_amount_format() prints two decimals");

static int refuse(const char **why, const char *sentence)
{
    if (why != NULL)
        *why = sentence;
    return QC_EAMOUNT;
}

/* Adds one decimal digit to *acc, refusing overflow of int64. */
static int push_digit(int64_t *acc, int digit)
{
    assert(digit >= 0);
    assert(digit <= 9);
    if (*acc > (INT64_MAX - digit) / 10)
        return -1;
    *acc = *acc * 10 + digit;
    return 0;
}

int proto_amount_parse(const char *text, unsigned flags, int64_t *minor_out, const char **why)
{
    assert(text != NULL);
    assert(minor_out != NULL);
    assert((flags & ~(PROTO_AMOUNT_ZERO_OK | PROTO_AMOUNT_MINOR)) == 0);
    bool minor_units = (flags & PROTO_AMOUNT_MINOR) != 0;

    size_t len = strnlen(text, PROTO_AMOUNT_TEXT_MAX + 1);
    if (len == 0)
        return refuse(why, minor_units ? "the amount is empty: type it in fen, as 1234"
                                       : "the amount is empty: type it as 12.34");
    if (len > PROTO_AMOUNT_TEXT_MAX)
        return refuse(why, "the amount is too long");
    if (text[0] == '-')
        return refuse(why, "the amount is negative: only positive amounts are accepted");
    if (text[0] == '+')
        return refuse(why, "the amount has a sign: type it without one, as 12.34");

    int64_t minor = 0;
    size_t i = 0;
    size_t int_digits = 0;
    for (; i < len && text[i] >= '0' && text[i] <= '9'; i++, int_digits++) {
        if (push_digit(&minor, text[i] - '0') != 0)
            return refuse(why, "the amount is too large");
    }
    if (int_digits == 0)
        return refuse(why, "the amount is not a number: type it as 12.34");
    if (minor_units) {
        if (i < len && text[i] == '.')
            return refuse(why, "an amount in minor units (fen) is a whole number: no '.'");
        if (i != len)
            return refuse(why, "the amount is not a number: type it in fen, as 1234");
        if (minor == 0 && (flags & PROTO_AMOUNT_ZERO_OK) == 0)
            return refuse(why, "the amount is zero");
        *minor_out = minor;
        return 0;
    }

    size_t frac_digits = 0;
    if (i < len && text[i] == '.') {
        i++;
        for (; i < len && text[i] >= '0' && text[i] <= '9'; i++, frac_digits++) {
            if (frac_digits == PROTO_AMOUNT_DECIMALS)
                return refuse(why, "the amount has more than 2 decimals");
            if (push_digit(&minor, text[i] - '0') != 0)
                return refuse(why, "the amount is too large");
        }
        if (frac_digits == 0)
            return refuse(why, "the amount ends with '.': type it as 12 or 12.00");
    }
    if (i != len)
        return refuse(why, "the amount is not a number: type it as 12.34");
    for (; frac_digits < PROTO_AMOUNT_DECIMALS; frac_digits++) {
        if (push_digit(&minor, 0) != 0)
            return refuse(why, "the amount is too large");
    }
    if (minor == 0 && (flags & PROTO_AMOUNT_ZERO_OK) == 0)
        return refuse(why, "the amount is zero");
    *minor_out = minor;
    return 0;
}

char *proto_amount_format(int64_t minor, char *out, size_t cap)
{
    assert(out != NULL);
    assert(cap > 0);
    /* Work in uint64 so INT64_MIN has a magnitude too. */
    uint64_t mag = minor < 0 ? (uint64_t)0 - (uint64_t)minor : (uint64_t)minor;
    int n = snprintf(out, cap, "%s%" PRIu64 ".%02" PRIu64, minor < 0 ? "-" : "", mag / 100u,
                     mag % 100u);
    assert(n > 0);
    assert((size_t)n < cap);
    (void)n;
    return out;
}
