/* proto_id.c - the one identifier rule (alphabets and limits in proto_id.h). */
#include "proto_id.h"

#include <assert.h>
#include <stdbool.h>
#include <string.h>

#include "qc_error.h"

#define ID_VISIBLE_FIRST 0x21 /* '!' : ids carry no spaces */
#define ID_VISIBLE_LAST 0x7e  /* '~' */

static bool id_byte_ok(unsigned char c, proto_id_alphabet_t alphabet)
{
    if (alphabet == PROTO_ID_VISIBLE)
        return c >= ID_VISIBLE_FIRST && c <= ID_VISIBLE_LAST;
    assert(alphabet == PROTO_ID_SERIAL);
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

int proto_id_check_len(const char *id, size_t len, size_t max, proto_id_alphabet_t alphabet)
{
    assert(max >= 1);
    assert(alphabet == PROTO_ID_VISIBLE || alphabet == PROTO_ID_SERIAL);
    if (id == NULL || len == 0)
        return QC_EMISSING;
    if (len > max)
        return QC_ETOOBIG;
    for (size_t i = 0; i < len; i++) {
        if (!id_byte_ok((unsigned char)id[i], alphabet))
            return QC_EDECODE;
    }
    return 0;
}

int proto_id_check(const char *id, size_t max, proto_id_alphabet_t alphabet)
{
    assert(max >= 1);
    if (id == NULL)
        return QC_EMISSING;
    return proto_id_check_len(id, strnlen(id, max + 1), max, alphabet);
}
