/* proto_amount.h - amounts as people type and read them ("12.34") and as the wire carries them.
 *
 * The wire carries signed 64-bit minor units (fen), never floating point. Every currency the
 * system handles has two decimals, so "12.34" is 1234 and "5" is 500. The device (what the user
 * confirms and signs) and qcctl (what an operator types) parse with these same rules, so an
 * amount reads the same on both sides. Parsing is strict on purpose: anything ambiguous is
 * refused with a sentence the person can act on. */
#ifndef PROTO_AMOUNT_H
#define PROTO_AMOUNT_H

#include <stddef.h>
#include <stdint.h>
#include "qc_error.h"

#define PROTO_AMOUNT_DECIMALS 2
#define PROTO_AMOUNT_TEXT_MAX 32   /* longest amount text accepted, without the NUL */
#define PROTO_AMOUNT_FORMAT_MAX 32 /* buffer that always holds a formatted int64 */

/* Flags of proto_amount_parse(). */
#define PROTO_AMOUNT_ZERO_OK 1u /* 0 is accepted (a limit where 0 means none) */
#define PROTO_AMOUNT_MINOR 2u   /* the text is whole minor units (fen): digits only, no '.' */

/* Parses text as an amount: one or more digits, optionally a '.' and one or two digits (with
 * PROTO_AMOUNT_MINOR: digits only). No sign, no spaces, no exponent, no thousands separators.
 * Strictly positive unless flags has PROTO_AMOUNT_ZERO_OK.
 * Returns 0 and sets *minor_out; or QC_EAMOUNT with *why set to a static sentence saying what
 * is wrong (negative, zero, too many decimals, not a number, too large, too long); *minor_out
 * is untouched on error. why may be NULL. */
QC_MUST_CHECK int proto_amount_parse(const char *text, unsigned flags, int64_t *minor_out,
                                     const char **why);

/* Writes minor as "12.34" (or "-0.05") into out (capacity cap; PROTO_AMOUNT_FORMAT_MAX is
 * always enough). Returns out. Asserts cap is large enough for the result. */
char *proto_amount_format(int64_t minor, char *out, size_t cap);

#endif
