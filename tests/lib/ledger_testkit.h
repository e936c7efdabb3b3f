/* ledger_testkit.h - signed load messages for the tests of the ledger, the audit log and the
 * benchmarks (keys and certificates come from qctest_key.h). */
#ifndef LEDGER_TESTKIT_H
#define LEDGER_TESTKIT_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "qctest_key.h"
#include "quancun.pb-c.h"

#define TK_CURRENCY 156

/* The fields of a load request a test varies. */
typedef struct tk_load {
    uint8_t txn_id[16];
    const char *device_id;
    const char *account_id;
    int64_t amount;
    uint32_t currency;
    int64_t balance_before;
    uint64_t counter;
} tk_load_t;

/* A random txn id. */
void tk_txn_id(uint8_t txn_id[16]);

/* Signed LoadRequest for l with key (malloc'd envelope). */
void tk_request(EVP_PKEY *key, const tk_load_t *l, uint8_t **out, size_t *out_len);
/* Signed LoadAllow matching the signed request req with the bank key; deadline absolute. */
void tk_allow(EVP_PKEY *bank, const uint8_t *req, size_t req_len, uint64_t deadline_ms,
              uint8_t **out, size_t *out_len);
/* Signed LoadAllow matching req with the host time given: the body the ledger builds for a
 * load reserved at host_time_ms with deadline_ms (ledger_saga_allow_body()). */
void tk_allow_at(EVP_PKEY *bank, const uint8_t *req, size_t req_len, uint64_t host_time_ms,
                 uint64_t deadline_ms, uint8_t **out, size_t *out_len);
/* Signed LoadAllow with fields given explicitly (for mismatch tests). */
void tk_allow_fields(EVP_PKEY *bank, const tk_load_t *l, const uint8_t *req, size_t req_len,
                     uint64_t deadline_ms, uint8_t **out, size_t *out_len);
/* Signed ExecutionReport about allow (its digest) by key. */
void tk_report(EVP_PKEY *key, const tk_load_t *l, uint64_t counter_after,
               Quancun__ReportStatus status, const uint8_t *allow, size_t allow_len, uint8_t **out,
               size_t *out_len);

#endif
