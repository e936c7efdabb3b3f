/* device_amount.h - amounts as the user types them ("12.34") and as the wire carries them.
 *
 * The rules are the protocol's (proto/proto_amount.h), shared with qcctl so that an amount
 * reads the same to the user and to the bank's operator. For the device, an amount is always
 * strictly positive: it is what the user confirms and the device signs, so anything ambiguous
 * is refused with a sentence the user can act on, before any key is touched. */
#ifndef DEVICE_AMOUNT_H
#define DEVICE_AMOUNT_H

#include <stddef.h>
#include <stdint.h>
#include "proto_amount.h"
#include "qc_error.h"

#define DEVICE_AMOUNT_DECIMALS PROTO_AMOUNT_DECIMALS
#define DEVICE_AMOUNT_TEXT_MAX PROTO_AMOUNT_TEXT_MAX     /* longest text, without the NUL */
#define DEVICE_AMOUNT_FORMAT_MAX PROTO_AMOUNT_FORMAT_MAX /* always holds a formatted int64 */

/* Parses text as a strictly positive amount: proto_amount_parse() without flags. Returns 0
 * and sets *minor_out; or QC_EAMOUNT with *why set to a static sentence (why may be NULL);
 * *minor_out is untouched on error. */
QC_MUST_CHECK int device_amount_parse(const char *text, int64_t *minor_out, const char **why);

/* Writes minor as "12.34" (or "-0.05") into out: proto_amount_format(). Returns out. */
char *device_amount_format(int64_t minor, char *out, size_t cap);

#endif
