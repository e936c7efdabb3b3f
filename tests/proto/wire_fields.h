/* wire_fields.h - re-orders the top-level fields of a protobuf encoding, to build input that
 * parses to the same message but is not canonical (tests of proto_decode_canonical()). */
#ifndef WIRE_FIELDS_H
#define WIRE_FIELDS_H

#include <stddef.h>
#include <stdint.h>

#define WIRE_FIELDS_MAX 64 /* top-level fields a test message may have */

/* Writes the top-level fields of the len bytes at in into out (len bytes of room) in
 * reverse order, each field's bytes unchanged, and returns len. Asserts (cmocka) that in is
 * a well-formed encoding of at most WIRE_FIELDS_MAX fields. */
size_t wire_fields_reverse(const uint8_t *in, size_t len, uint8_t *out);

#endif
