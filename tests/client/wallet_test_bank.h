/* wallet_test_bank.h - an in-test bank for the wallet tests: a dev CA that certifies the
 * device, allow and outcome keys that sign like the HSM would, and helpers that turn a
 * device's signed request into an allow and its report into an outcome. */
#ifndef WALLET_TEST_BANK_H
#define WALLET_TEST_BANK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "qctest_fs.h"
#include "qctest_key.h"
#include "quancun.pb-c.h"
#include "wallet_device.h"

#define WT_PIN "2468"
#define WT_ACCOUNT "acct-0001"
#define WT_PATH_MAX QCTEST_PATH_MAX

typedef struct wt_bank {
    char dir[WT_PATH_MAX]; /* a fresh temp dir; the device home is dir/home */
    char home[WT_PATH_MAX + 16];
    EVP_PKEY *ca;
    EVP_PKEY *allow_key;
    EVP_PKEY *outcome_key;
    EVP_PKEY *other_key; /* a key the device does not know */
} wt_bank_t;

/* Creates the temp dir and the bank keys; no device yet. */
wt_bank_t *wt_bank_new(void);
/* Removes the temp dir and frees the keys. */
void wt_bank_free(wt_bank_t *b);

/* Creates a device in b->home with WT_PIN and the given serial, issues and installs its
 * certificate and the bank keys, and returns it opened. */
wallet_device_t *wt_device_ready(wt_bank_t *b, const char *serial);

/* Changes an allow's fields before signing. */
typedef void wt_allow_tweak_fn(Quancun__LoadAllow *allow);

/* Makes a signed allow for a signed request: same txn, device, amount, currency, counter,
 * account, the request's digest, a deadline one minute ahead. tweak (may be NULL) edits the
 * body; key (NULL = the bank's allow key) signs it. *out is malloc'd. */
void wt_make_allow(wt_bank_t *b, const uint8_t *req, size_t req_len, wt_allow_tweak_fn *tweak,
                   EVP_PKEY *key, uint8_t **out, size_t *out_len);

/* Makes a signed outcome of state for the load of a signed report (or request, is_request).
 * key NULL = the bank's outcome key. */
void wt_make_outcome(wt_bank_t *b, const uint8_t *report, size_t report_len, bool is_request,
                     Quancun__LoadState state, EVP_PKEY *key, uint8_t **out, size_t *out_len);

/* Verifies a device report with the device's certificate key and decodes it (the caller
 * frees it with quancun__execution_report__free_unpacked). Asserts on failure. */
Quancun__ExecutionReport *wt_open_report(wt_bank_t *b, const uint8_t *report, size_t len);
/* Decodes a signed request after verifying it with the device key. */
Quancun__LoadRequest *wt_open_request(wt_bank_t *b, const uint8_t *req, size_t len);

/* Issues a certificate for the CSR in b->home, signed by the test CA, into out_path (PEM).
 * Keys and certificates of other shapes: qctest_key.h. */
void wt_issue_cert(wt_bank_t *b, const char *out_path);
/* Counts the lines of the operation log of b->home that contain needle. */
int wt_log_count(wt_bank_t *b, const char *needle);

#endif
