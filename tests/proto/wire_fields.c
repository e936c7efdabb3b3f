/* wire_fields.c - re-orders the top-level fields of a protobuf encoding (tests only). */
#include "wire_fields.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#define WIRE_VARINT 0
#define WIRE_FIXED64 1
#define WIRE_LEN 2
#define WIRE_FIXED32 5

/* Reads a varint at *at (below len), advances *at. */
static uint64_t read_varint(const uint8_t *in, size_t len, size_t *at)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        assert_true(*at < len);
        uint8_t b = in[(*at)++];
        v |= (uint64_t)(b & 0x7f) << shift;
        if ((b & 0x80) == 0)
            return v;
    }
    fail_msg("varint longer than 10 bytes");
    return 0;
}

size_t wire_fields_reverse(const uint8_t *in, size_t len, uint8_t *out)
{
    size_t start[WIRE_FIELDS_MAX];
    size_t end[WIRE_FIELDS_MAX];
    size_t count = 0;
    size_t at = 0;
    while (at < len) {
        assert_true(count < WIRE_FIELDS_MAX);
        start[count] = at;
        uint64_t tag = read_varint(in, len, &at);
        switch (tag & 7) {
        case WIRE_VARINT:
            (void)read_varint(in, len, &at);
            break;
        case WIRE_FIXED64:
            at += 8;
            break;
        case WIRE_LEN: {
            uint64_t n = read_varint(in, len, &at);
            assert_true(n <= len - at);
            at += (size_t)n;
            break;
        }
        case WIRE_FIXED32:
            at += 4;
            break;
        default:
            fail_msg("wire type %u", (unsigned)(tag & 7));
        }
        assert_true(at <= len);
        end[count++] = at;
    }
    size_t w = 0;
    for (size_t i = count; i-- > 0;) {
        memcpy(out + w, in + start[i], end[i] - start[i]);
        w += end[i] - start[i];
    }
    assert_int_equal(w, len);
    return w;
}
