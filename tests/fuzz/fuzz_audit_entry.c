/* fuzz_audit_entry.c - libFuzzer target over the audit log's stored record:
 * audit_chain_parse() and audit_chain_check_record() (audit/audit_chain.h), which read bytes a
 * copy of the log's files may have altered.
 *
 * Properties, beyond "no crash, no leak, no undefined behaviour":
 * - canonical: a record that parses is rebuilt, byte for byte, by audit_chain_record() from
 *   the parsed entry, and its fields pass audit_chain_validate();
 * - the chain: check_record() accepts a record exactly when its stored hash is the hash of
 *   its bytes and its prev_hash the expected one (the record's own prev_hash here). */
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "audit_chain.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    audit_entry_t e;
    if (audit_chain_parse(data, size, &e) != 0)
        return 0;
    FUZZ_CHECK(audit_chain_validate(&e) == 0);
    FUZZ_CHECK(audit_chain_encoded_len(&e) + AUDIT_HASH_SIZE == size);
    uint8_t *rec = NULL;
    size_t rec_len = 0;
    FUZZ_CHECK(audit_chain_record(&e, &rec, &rec_len) == 0);
    FUZZ_CHECK(rec_len == size && memcmp(rec, data, size) == 0);
    free(rec);

    uint8_t hash[AUDIT_HASH_SIZE];
    FUZZ_CHECK(audit_chain_hash(&e, hash) == 0);
    bool hash_ok = CRYPTO_memcmp(hash, e.hash, AUDIT_HASH_SIZE) == 0;
    uint8_t prev[AUDIT_HASH_SIZE];
    memcpy(prev, e.prev_hash, AUDIT_HASH_SIZE);
    audit_entry_t checked;
    int rc = audit_chain_check_record(data, size, prev, &checked);
    FUZZ_CHECK((rc == 0) == hash_ok);
    prev[0] ^= 1;
    FUZZ_CHECK(audit_chain_check_record(data, size, prev, &checked) != 0);
    return 0;
}
