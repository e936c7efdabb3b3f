/* wallet_token.h - the wallet's keys inside a PKCS#11 token: the USB key of the e-purse.
 *
 * The token holds two P-256 key pairs, generated inside it (or imported once, by
 * migrate-to-token), private halves CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, not
 * CKA_EXTRACTABLE, CKA_SIGN only:
 *   CKA_LABEL "quancun-device"  the device key: it signs requests, reports and card messages
 *   CKA_LABEL "quancun-state"   the state key: it signs every state file the wallet writes, and
 *                               its public half (read from the token) verifies each load of it
 * and one public CKO_DATA object "quancun-pin-tries" (one byte, the tries left; see
 * wallet_token_login()). Nothing else is asked of the module than standard PKCS#11 v2.40:
 * C_GetFunctionList, CKM_EC_KEY_PAIR_GEN, CKM_ECDSA on a SHA-256 digest, C_CreateObject of an
 * EC private key, C_Login as the user; and, for a token this wallet creates itself,
 * C_InitToken and C_InitPIN (a real key comes initialized by its issuer).
 *
 * SoftHSM2 (the default module) keeps its tokens in files: a wallet's own token lives in
 * HOME/token/ (softhsm2.conf and tokens/), and SOFTHSM2_CONF is pointed there before the
 * module is initialized. That folder is the USB key: a copy of the home without it is no
 * device; a copy with it is the whole device, as a stolen USB key would be.
 *
 * One token is open per process at a time (PKCS#11 C_Initialize is process-wide). */
#ifndef WALLET_TOKEN_H
#define WALLET_TOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "proto_envelope.h"
#include "qc_error.h"

#define WALLET_TOKEN_MODULE_DEFAULT "/usr/lib/softhsm/libsofthsm2.so"
#define WALLET_TOKEN_DIR "token" /* HOME/token: a SoftHSM2 token of this wallet */
#define WALLET_TOKEN_SOFTHSM_CONF "softhsm2.conf"
#define WALLET_TOKEN_LABEL_MAX 32 /* a PKCS#11 token label, space padded */
#define WALLET_TOKEN_PIN_MAX 64   /* bytes of a user or SO PIN */
#define WALLET_TOKEN_TRIES 3u     /* wrong PINs before the wallet counts it locked */
#define WALLET_TOKEN_DEVICE_KEY "quancun-device"
#define WALLET_TOKEN_STATE_KEY "quancun-state"
#define WALLET_TOKEN_TRIES_LABEL "quancun-pin-tries"

typedef struct wallet_token wallet_token_t;

/* Which key of the token signs. */
typedef enum wallet_token_key {
    WALLET_TOKEN_KEY_DEVICE,
    WALLET_TOKEN_KEY_STATE
} wallet_token_key_t;

/* Creates this wallet's own SoftHSM2 token in HOME/token (refused with QC_EEXIST when it
 * exists): writes its softhsm2.conf, initializes a free slot as token label with so_pin and
 * sets the user PIN pin. Then opens it as wallet_token_open() does and logs in.
 * Returns 0 and sets *out; QC_EEXIST, QC_EINVAL (label or PIN length), QC_EIO, QC_ECRYPTO. */
QC_MUST_CHECK int wallet_token_create(const char *home, const char *module, const char *label,
                                      const char *so_pin, size_t so_pin_len, const char *pin,
                                      size_t pin_len, wallet_token_t **out);

/* Opens the token labelled label through module (dlopen, C_GetFunctionList, C_Initialize),
 * with SOFTHSM2_CONF set to HOME/token/softhsm2.conf when home_token. Not logged in.
 * Returns 0 and sets *out; QC_EUNAVAIL when the token is not present (home_token and no
 * HOME/token, or no token with that label), QC_EIO (module missing or not PKCS#11),
 * QC_EINVAL, QC_ECRYPTO. Every failure is logged. */
QC_MUST_CHECK int wallet_token_open(const char *home, bool home_token, const char *module,
                                    const char *label, wallet_token_t **out);

/* Logs in as the user. The try is counted in the token's tries object before C_Login, so
 * cutting the power buys no guesses; a right PIN sets it back to WALLET_TOKEN_TRIES. A token
 * that locks itself answers CKR_PIN_LOCKED first, whatever the object says. Returns 0,
 * QC_EPIN (wrong; wallet_token_tries_left() says how many are left), QC_ELOCKED, QC_EINVAL,
 * QC_ECRYPTO. The caller wipes its PIN. */
QC_MUST_CHECK int wallet_token_login(wallet_token_t *tok, const char *pin, size_t pin_len);

/* The issuer's unblock: logs in as the security officer with so_pin, sets the user PIN to
 * pin (C_InitPIN) and the tries object back to WALLET_TOKEN_TRIES. Returns 0, QC_EPIN (wrong
 * SO PIN), QC_ELOCKED (SO PIN locked), QC_EINVAL, QC_ECRYPTO. */
QC_MUST_CHECK int wallet_token_unblock(wallet_token_t *tok, const char *so_pin, size_t so_pin_len,
                                       const char *pin, size_t pin_len);

/* Tries left as the tries object holds them (WALLET_TOKEN_TRIES when there is none). */
uint32_t wallet_token_tries_left(wallet_token_t *tok);

/* True after a successful wallet_token_login(). */
bool wallet_token_logged_in(const wallet_token_t *tok);

/* Generates the device and state key pairs inside the token (logged in), and the tries
 * object. Returns 0, QC_EEXIST (a key with one of the labels exists), QC_ECRYPTO. */
QC_MUST_CHECK int wallet_token_generate(wallet_token_t *tok);

/* Imports priv, a P-256 private key, as the device key (C_CreateObject, sensitive, not
 * extractable, its public half beside it), then generates the state key and the tries
 * object as wallet_token_generate() does. The scalar is wiped from memory. Returns 0,
 * QC_EEXIST, QC_EINVAL (not P-256), QC_ECRYPTO. */
QC_MUST_CHECK int wallet_token_import(wallet_token_t *tok, EVP_PKEY *priv);

/* Reads the public half of key from the token into *out (the caller frees it): exactly one
 * public and one private key object must carry its label. Works without login. Returns 0,
 * QC_EKEYID (missing), QC_ECONFIG (ambiguous or not P-256), QC_ECRYPTO. */
QC_MUST_CHECK int wallet_token_public(wallet_token_t *tok, wallet_token_key_t key, EVP_PKEY **out);

/* Signs a SHA-256 digest with key (CKM_ECDSA: the token does not hash again) and writes the
 * raw r || s with a low S. Must be logged in. Returns 0, QC_EDENIED (not logged in),
 * QC_EKEYID, QC_EUNAVAIL (the token went away), QC_ECRYPTO. */
QC_MUST_CHECK int wallet_token_sign(wallet_token_t *tok, wallet_token_key_t key,
                                    const uint8_t digest[PROTO_DIGEST_SIZE],
                                    uint8_t raw[PROTO_SIG_RAW_SIZE]);

/* wallet_token_sign() with the device key, in the shape of device_sign_fn (arg: the token). */
int wallet_token_sign_device(void *tok, const uint8_t digest[PROTO_DIGEST_SIZE],
                             uint8_t raw[PROTO_SIG_RAW_SIZE]);

/* wallet_token_sign() with the state key, in the shape of wallet_state_sign_fn. */
int wallet_token_sign_state(void *tok, const uint8_t digest[PROTO_DIGEST_SIZE],
                            uint8_t raw[PROTO_SIG_RAW_SIZE]);

/* Logs out, finalizes the module, frees tok and nulls *tok_p; accepts NULL. */
void wallet_token_destroy(wallet_token_t **tok_p);

#endif
