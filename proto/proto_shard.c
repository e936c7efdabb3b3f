/* proto_shard.c - maps an account id to its ledger shard with a stable hash. */
#include "proto_shard.h"

#include <assert.h>
#include <string.h>

#include <openssl/sha.h>

#define SHARD_HASH_PREFIX 8 /* bytes of the digest read as a big-endian integer */

uint32_t proto_shard_of(const char *account_id, uint32_t shard_count)
{
    assert(account_id != NULL);
    assert(shard_count >= 1);
    assert(shard_count <= PROTO_SHARD_COUNT_MAX);
    uint8_t digest[SHA256_DIGEST_LENGTH];
    /* One-shot SHA256() cannot fail on a valid pointer, so there is no error to return. */
    unsigned char *p = SHA256((const unsigned char *)account_id, strlen(account_id), digest);
    assert(p == digest);
    (void)p;
    uint64_t v = 0;
    for (int i = 0; i < SHARD_HASH_PREFIX; i++)
        v = (v << 8) | digest[i];
    return (uint32_t)(v % shard_count);
}
