/* ledger_testkit.h - keys, certificates and signed load messages for the ledger's tests. */
#ifndef LEDGER_TESTKIT_H
#define LEDGER_TESTKIT_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "quancun.pb-c.h"

#define TK_CURRENCY 156

/* A fresh P-256 key; aborts on failure (tests only). */
EVP_PKEY *tk_key_new(void);
/* A self-signed certificate for key with subject CN cn, DER in *der (malloc'd). */
void tk_cert_new(EVP_PKEY *key, const char *cn, uint8_t **der, size_t *der_len);
/* Writes key's public half (PEM) to path. */
void tk_write_pub_pem(EVP_PKEY *key, const char *path);
/* Writes key's certificate (PEM) for cn to path. */
void tk_write_cert_pem(EVP_PKEY *key, const char *cn, const char *path);

/* A CA (key and self-signed certificate, written as PEM to pem_path) and a device
 * certificate it issues (keyUsage digitalSignature), DER in *der (malloc'd). */
void tk_ca_new(const char *pem_path, EVP_PKEY **ca_key, X509 **ca_cert);
void tk_cert_issued(EVP_PKEY *key, const char *cn, EVP_PKEY *ca_key, X509 *ca_cert, uint8_t **der,
                    size_t *der_len);

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
/* Signed LoadAllow with fields given explicitly (for mismatch tests). */
void tk_allow_fields(EVP_PKEY *bank, const tk_load_t *l, const uint8_t *req, size_t req_len,
                     uint64_t deadline_ms, uint8_t **out, size_t *out_len);
/* Signed ExecutionReport about allow (its digest) by key. */
void tk_report(EVP_PKEY *key, const tk_load_t *l, uint64_t counter_after,
               Quancun__ReportStatus status, const uint8_t *allow, size_t allow_len, uint8_t **out,
               size_t *out_len);

/* Wall clock, ms. */
uint64_t tk_now_ms(void);

#endif
