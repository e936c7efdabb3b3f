/* ops_hex.c - lower-case hex, for txn ids and fingerprints in logs, CLIs and files. */
#include "ops_hex.h"

#include <assert.h>
#include <string.h>

#include "qc_error.h"

#define OPS_HEX_BYTES_MAX 4096 /* the longest value anyone decodes: a fingerprint is 32 */

char *ops_hex(const uint8_t *bytes, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    assert(out != NULL);
    assert(bytes != NULL || len == 0);
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 0x0f];
    }
    out[2 * len] = '\0';
    return out;
}

static int ops_hex_nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int ops_unhex(const char *text, uint8_t *out, size_t out_len)
{
    assert(out != NULL);
    assert(out_len <= OPS_HEX_BYTES_MAX);
    if (text == NULL || strlen(text) != 2 * out_len)
        return QC_EDECODE;
    uint8_t tmp[OPS_HEX_BYTES_MAX];
    for (size_t i = 0; i < out_len; i++) {
        int hi = ops_hex_nibble(text[2 * i]);
        int lo = ops_hex_nibble(text[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return QC_EDECODE;
        tmp[i] = (uint8_t)(hi << 4 | lo);
    }
    memcpy(out, tmp, out_len);
    return 0;
}
