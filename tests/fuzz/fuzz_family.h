/* fuzz_family.h - the service messages of tests/fuzz, by family: the ledger's (requests,
 * replies, stored records, the replicated log's entries), the signer's, the audit service's and
 * the card's. fuzz_service fuzzes one family; fuzz_seed writes its seeds and dictionary. */
#ifndef FUZZ_FAMILY_H
#define FUZZ_FAMILY_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

#define FUZZ_FAMILY_MAX 40 /* messages of the largest family */

typedef struct fuzz_family {
    const char *name; /* "ledger", "signer", "audit", "card" */
    const ProtobufCMessageDescriptor *descs[FUZZ_FAMILY_MAX];
    size_t count;
} fuzz_family_t;

/* The family named name, or NULL. */
const fuzz_family_t *fuzz_family(const char *name);

/* Every family, for the seed tool: *count of them. */
const fuzz_family_t *fuzz_families(size_t *count);

#endif
