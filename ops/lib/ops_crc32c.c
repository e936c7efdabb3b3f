/* ops_crc32c.c - CRC-32C (Castagnoli), reflected (ops_crc32c.h): the CPU's
 * crc32 instruction where there is one (x86-64 with SSE4.2: 8 bytes an
 * instruction), else one table lookup per byte. Both give the same values
 * (tests/ops/test_ops_crc32c.c checks both). */
#include "ops_crc32c.h"

#include <assert.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#define CRC32C_POLY 0x82F63B78u /* 0x1EDC6F41 reflected */

static uint32_t crc32c_table[256];
static bool crc32c_hw;
static pthread_once_t crc32c_once = PTHREAD_ONCE_INIT;

static void crc32c_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1u) != 0 ? (c >> 1) ^ CRC32C_POLY : c >> 1;
        crc32c_table[i] = c;
    }
#if defined(__x86_64__)
    __builtin_cpu_init();
    crc32c_hw = __builtin_cpu_supports("sse4.2");
#endif
}

uint32_t ops_crc32c_soft(uint32_t crc, const void *data, size_t len)
{
    assert(data != NULL || len == 0);
    pthread_once(&crc32c_once, crc32c_init);
    const uint8_t *p = data;
    crc = ~crc;
    for (size_t i = 0; i < len; i++)
        crc = crc32c_table[(crc ^ p[i]) & 0xFFu] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc, const uint8_t *p,
                                                               size_t len)
{
    uint64_t c = ~crc;
    for (; len >= 8; p += 8, len -= 8) {
        uint64_t v;
        memcpy(&v, p, sizeof v); /* unaligned, little-endian: what the instruction expects */
        c = __builtin_ia32_crc32di(c, v);
    }
    uint32_t c32 = (uint32_t)c;
    for (; len > 0; p++, len--)
        c32 = __builtin_ia32_crc32qi(c32, *p);
    return ~c32;
}
#endif

uint32_t ops_crc32c(uint32_t crc, const void *data, size_t len)
{
    assert(data != NULL || len == 0);
    pthread_once(&crc32c_once, crc32c_init);
#if defined(__x86_64__)
    if (crc32c_hw)
        return len == 0 ? crc : crc32c_sse42(crc, data, len);
#endif
    return ops_crc32c_soft(crc, data, len);
}
