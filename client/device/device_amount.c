/* device_amount.c - the device's amounts: the protocol's rules, always strictly positive. */
#include "device_amount.h"

#include <assert.h>

int device_amount_parse(const char *text, int64_t *minor_out, const char **why)
{
    assert(text != NULL);
    assert(minor_out != NULL);
    return proto_amount_parse(text, 0, minor_out, why);
}

char *device_amount_format(int64_t minor, char *out, size_t cap)
{
    assert(out != NULL);
    assert(cap > 0);
    return proto_amount_format(minor, out, cap);
}
