/* device_amount.h - amounts as the user types them ("12.34") and as the wire carries them.
 *
 * The wire carries signed 64-bit minor units (fen). Every currency the wallet handles has two
 * decimals, so "12.34" is 1234 and "5" is 500. Parsing is strict on purpose: the amount is
 * what the user confirms and the device signs, so anything ambiguous is refused with a
 * sentence the user can act on, before any key is touched. */
#ifndef DEVICE_AMOUNT_H
#define DEVICE_AMOUNT_H

#include <stddef.h>
#include <stdint.h>
#include "qc_error.h"

#define DEVICE_AMOUNT_DECIMALS 2
#define DEVICE_AMOUNT_TEXT_MAX 32   /* longest amount text accepted, without the NUL */
#define DEVICE_AMOUNT_FORMAT_MAX 32 /* buffer that always holds a formatted int64 */

/* Parses text as a strictly positive amount: one or more digits, optionally a '.' and one
 * or two digits. No sign, no spaces, no exponent, no thousands separators.
 * Returns 0 and sets *minor_out; or QC_EAMOUNT with *why set to a static sentence saying
 * what is wrong (negative, zero, too many decimals, not a number, too large, too long);
 * *minor_out is untouched on error. why may be NULL. */
QC_MUST_CHECK int device_amount_parse(const char *text, int64_t *minor_out, const char **why);

/* Writes minor as "12.34" (or "-0.05") into out (capacity cap, DEVICE_AMOUNT_FORMAT_MAX
 * is always enough). Returns out. Asserts cap is large enough for the result. */
char *device_amount_format(int64_t minor, char *out, size_t cap);

#endif
