/* wallet_store.h - the wallet device's state file, HOME/state.
 *
 * Every change of the state file is an atomic replacement (device_home_write(): "state.tmp",
 * fsync, rename, fsync of the directory), so a reader sees the old state or the new one,
 * never a mix, whenever the process or the machine dies. The file ends with a SHA-256
 * checksum line so that a damaged file is refused rather than believed. The state carries
 * the operation log's pending line (client/device/device_home.h), which makes the log part of
 * the same atomic step. */
#ifndef WALLET_STORE_H
#define WALLET_STORE_H

#include <openssl/evp.h>

#include "device_core.h"
#include "qc_error.h"

#define WALLET_STATE_FILE "state"
/* A token wallet's state file ends with "state_sig HEX" (raw r || s) before its checksum: an
 * ECDSA P-256 signature by the token's state key over SHA-256(context || 0x00 || every byte
 * before that line), so that the file cannot be edited without the token and its PIN. */
#define WALLET_STATE_SIG_CONTEXT "quancun/v1/WalletState"

/* Signs a state digest inside a token (wallet_token_sign_state()); raw gets r || s. */
typedef int wallet_state_sign_fn(void *arg, const uint8_t digest[PROTO_DIGEST_SIZE],
                                 uint8_t raw[PROTO_SIG_RAW_SIZE]);

/* Atomically replaces HOME/state with st (write state.tmp, fsync, rename, fsync HOME).
 * Returns 0, QC_EINVAL (a field out of range) or QC_EIO; on error the old state is intact. */
QC_MUST_CHECK int wallet_state_save(const char *home, const device_state_t *st);

/* As wallet_state_save(), the file signed by sign (see WALLET_STATE_SIG_CONTEXT). Also
 * returns sign's error (QC_EDENIED: the token is not logged in). */
QC_MUST_CHECK int wallet_state_save_signed(const char *home, const device_state_t *st,
                                           wallet_state_sign_fn *sign, void *arg);

/* As wallet_state_load(), for a token wallet: the file must carry a state signature that
 * verifies with state_key (the public half of the token's state key). Returns QC_EBADSIG for
 * a file without it or whose signature does not verify (edited), and the errors of
 * wallet_state_load(). */
QC_MUST_CHECK int wallet_state_load_signed(const char *home, device_state_t *st,
                                           EVP_PKEY *state_key);

/* Loads HOME/state into st (which must be zeroed or cleared). Returns 0, QC_ENOTFOUND (no
 * device there), QC_ETOOBIG, QC_EDECODE (damaged or tampered file: wrong checksum, unknown
 * key, value out of range), QC_EIO or QC_ENOMEM; st is cleared on error. */
QC_MUST_CHECK int wallet_state_load(const char *home, device_state_t *st);

#endif
