/* ops_bytes.h - big-endian integers in byte strings: LMDB keys that sort by number, and the
 * canonical encodings that are hashed (audit entries). */
#ifndef OPS_BYTES_H
#define OPS_BYTES_H

#include <assert.h>
#include <stdint.h>

/* Writes the low n bytes of v into p[0..n-1], most significant first; returns p + n. */
static inline uint8_t *ops_be_put(uint8_t *p, uint64_t v, int n)
{
    assert(n >= 1);
    assert(n <= 8);
    for (int i = n - 1; i >= 0; i--) {
        p[i] = (uint8_t)(v & 0xff);
        v >>= 8;
    }
    return p + n;
}

/* Reads p[0..n-1] as a big-endian integer. */
static inline uint64_t ops_be_get(const uint8_t *p, int n)
{
    assert(n >= 1);
    assert(n <= 8);
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

#endif
