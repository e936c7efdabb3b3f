/* ops_hex.h - lower-case hex, for txn ids and fingerprints in logs, CLIs and files. */
#ifndef OPS_HEX_H
#define OPS_HEX_H

#include <stddef.h>
#include <stdint.h>
#include "qc_error.h"

/* Lower-case hex of bytes into out (capacity 2*len+1, NUL-terminated). Returns out. */
char *ops_hex(const uint8_t *bytes, size_t len, char *out);

/* Decodes text, which must be exactly 2*out_len hex digits (either case, nothing else: no
 * blanks, signs or prefix), into out. Returns 0, or QC_EDECODE with out untouched. */
QC_MUST_CHECK int ops_unhex(const char *text, uint8_t *out, size_t out_len);

#endif
