/* proto_shard.h - which ledger shard owns an account: every caller must agree. */
#ifndef PROTO_SHARD_H
#define PROTO_SHARD_H

#include <stdint.h>

#include "proto_limits.h"

/* Returns the shard (0 .. shard_count-1) of account_id: the first 8 bytes of
 * SHA-256(account_id), big-endian, modulo shard_count. Stable across builds and machines.
 * Asserts 1 <= shard_count <= PROTO_SHARD_COUNT_MAX. */
uint32_t proto_shard_of(const char *account_id, uint32_t shard_count);

#endif
