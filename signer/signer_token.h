/* signer_token.h - the bank's PKCS#11 token: load a module, log in, find or make keys, sign.
 *
 * The private keys live in the token and never leave it: this module only ever holds object
 * handles to them, and reads the public half (CKA_EC_PARAMS + CKA_EC_POINT) out of the token.
 *
 * Key naming (what `qc-signer keygen` creates and what the service looks for): a key pair is
 * the private and the public key object that share
 *   CKA_LABEL = the key's name, e.g. "allow-signing" (ASCII, no padding), and
 *   CKA_ID    = the ASCII string "v" followed by the decimal version, e.g. "v1".
 * So pkcs11-tool shows "label: allow-signing, ID: 7631" for allow-signing version 1. The
 * version is what devices and auditors see as the envelope's key_version.
 *
 * Threads: a token is opened once per process (C_Initialize with CKF_OS_LOCKING_OK). Each
 * thread that signs opens its own session with signer_session_open(); a session is used by
 * one thread at a time. Keys found through the token may be used with any of its sessions
 * (PKCS#11 object handles are shared by all sessions of an application). Opening and
 * closing the token, logging in, finding and generating keys happen on one thread, before
 * and after the signing threads run. */
#ifndef SIGNER_TOKEN_H
#define SIGNER_TOKEN_H

#include <stddef.h>
#include <stdint.h>
#include <openssl/evp.h>

#include "proto_envelope.h"
#include "qc_error.h"

#define SIGNER_MODULE_DEFAULT "/usr/lib/softhsm/libsofthsm2.so"
#define SIGNER_TOKEN_LABEL_MAX 32   /* a PKCS#11 token label is 32 bytes, space padded */
#define SIGNER_KEY_LABEL_MAX 64     /* CKA_LABEL of a key */
#define SIGNER_KEY_VERSION_MAX 9999 /* versions are 1 .. this */
#define SIGNER_PIN_MAX 255          /* bytes of a user PIN */

typedef struct signer_token signer_token_t;
typedef struct signer_session signer_session_t;
typedef struct signer_key signer_key_t;

/* Loads the PKCS#11 module at module_path (dlopen), initializes it for threads
 * (CKF_OS_LOCKING_OK) and finds the slot whose token is labelled token_label.
 * Returns 0 and sets *out; QC_EIO when the module cannot be loaded or is not a PKCS#11
 * module, QC_ENOTFOUND when no token has that label, QC_ECRYPTO when the module fails.
 * Every failure is logged with the reason. On error nothing is left initialized. */
QC_MUST_CHECK int signer_token_open(const char *module_path, const char *token_label,
                                    signer_token_t **out);

/* Logs in as the user with pin (pin_len bytes, not NUL terminated necessarily). The login
 * holds for every session of the token until it is destroyed. The caller wipes its pin.
 * Returns 0, QC_EPIN (wrong PIN), QC_ELOCKED (PIN locked), QC_EINVAL (empty or too long),
 * or QC_ECRYPTO. */
QC_MUST_CHECK int signer_token_login(signer_token_t *tok, const char *pin, size_t pin_len);

/* Finds the key pair named label, version (see the naming above), reads its public key and
 * computes its key id (SHA-256 of the SPKI DER). Exactly one private and one public key
 * object must match; the private key must be an EC P-256 key allowed to sign.
 * Returns 0 and sets *out (freed with signer_key_destroy()); QC_EKEYID when the key is
 * missing, QC_ECONFIG when it is ambiguous or unusable, QC_ECRYPTO. Must be logged in. */
QC_MUST_CHECK int signer_token_find_key(signer_token_t *tok, const char *label, uint32_t version,
                                        signer_key_t **out);

/* Generates a P-256 key pair inside the token under label, version: the private key is
 * CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, not CKA_EXTRACTABLE, CKA_SIGN only. Refuses when a
 * key object with that label and version already exists. Returns 0 and sets *out as
 * signer_token_find_key() does; QC_EEXIST, QC_EINVAL (label or version out of range),
 * QC_ECRYPTO. Must be logged in. */
QC_MUST_CHECK int signer_token_generate_key(signer_token_t *tok, const char *label,
                                            uint32_t version, signer_key_t **out);

/* Finalizes the module and frees tok; nulls *tok_p; accepts NULL. Every session of the token
 * must have been destroyed (asserted). Keys found through it stay valid as plain data
 * (label, version, public key) but may no longer sign. */
void signer_token_destroy(signer_token_t **tok_p);

/* Opens a new session on tok for one thread's signing. Returns 0, QC_EBUSY (the token has no
 * session left), QC_ECRYPTO. */
QC_MUST_CHECK int signer_session_open(signer_token_t *tok, signer_session_t **out);

/* Signs a 32-byte digest with key's private key (CKM_ECDSA, the digest is not hashed again),
 * through this session's copy of it (CKA_TOKEN false, made inside the token at the first
 * signature, sensitive and not extractable as the original) when the token allows copies,
 * and writes the raw r || s the token returns into raw, with s made low (s <= n/2,
 * proto_ecdsa_raw_low_s()): the one form verifiers accept. Returns 0, QC_EUNAVAIL (the token
 * went away: the session is unusable), QC_ECRYPTO. */
QC_MUST_CHECK int signer_session_sign(signer_session_t *sess, const signer_key_t *key,
                                      const uint8_t digest[PROTO_DIGEST_SIZE],
                                      uint8_t raw[PROTO_SIG_RAW_SIZE]);

/* How many keys this session signs with through a session copy (the others, if any, through
 * the token object itself). */
size_t signer_session_copies(const signer_session_t *sess);

/* Closes the session and frees it; nulls *sess_p; accepts NULL. */
void signer_session_destroy(signer_session_t **sess_p);

/* Borrowed views of a key, valid until signer_key_destroy(). */
const char *signer_key_label(const signer_key_t *key);
uint32_t signer_key_version(const signer_key_t *key);
EVP_PKEY *signer_key_public(const signer_key_t *key);
const uint8_t *signer_key_id(const signer_key_t *key); /* PROTO_KEY_ID_SIZE bytes */

/* Frees key and nulls *key_p; accepts NULL. Does not touch the token. */
void signer_key_destroy(signer_key_t **key_p);

#endif
