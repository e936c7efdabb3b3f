/* wallet_device.h - the simulated USB-key e-purse of qc-wallet: a device core
 * (client/device/device_core.h) that lives in a home directory.
 *
 * The device lives in a home directory:
 *   device.key   its P-256 private key (PEM, mode 0600); it never leaves the device
 *   device.csr   a certificate request, CN = the hardware serial, for the dev CA
 *   device.pem   its certificate, installed by the operator after enrollment
 *   bank.pem     the bank's allow-signing then outcome-signing certificate or public key
 *   state        balance, counter, the load in progress, PIN record (wallet_store.h)
 *   oplog.jsonl  the operation log, one JSON object per line
 *
 * A token wallet (wallet_device_init_token()) has no device.key: its keys are in a PKCS#11
 * token (wallet_token.h), named by
 *   token.conf   module PATH, label L, home_token 0|1 (public: it only says where to look)
 *   token/       with home_token, the wallet's own SoftHSM2 token: this folder is the USB key
 * and its state file is signed by the token's state key (wallet_store.h), verified on every
 * open. It opens without the PIN (status); signing and every change of state need
 * wallet_device_login().
 *
 * The core's every new state is written here atomically, with its log line, before the core
 * adopts it, so a device killed at any point is found, when reopened, either before or after
 * the change. A device is driven by one thread of one process at a time (an advisory lock on
 * the home enforces the process half). */
#ifndef WALLET_DEVICE_H
#define WALLET_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "device_core.h"
#include "qc_error.h"

#define WALLET_KEY_FILE "device.key"
#define WALLET_CSR_FILE "device.csr"
#define WALLET_CERT_FILE "device.pem"
#define WALLET_BANK_FILE "bank.pem"
#define WALLET_TOKEN_CONF_FILE "token.conf"
#define WALLET_SERIAL_PREFIX "QC"
#define WALLET_SERIAL_RANDOM_BYTES 8 /* "QC" + 16 hex digits */

typedef struct wallet_device wallet_device_t;

/* Creates a new device in home (created with mode 0700 if missing): a serial (serial, or
 * WALLET_SERIAL_PREFIX and random hex when NULL), a P-256 key, a CSR, the PIN record, an
 * empty wallet with counter 0, and the first log line.
 * Returns 0, QC_EEXIST (a device already lives there), QC_EINVAL (bad serial or PIN),
 * QC_EBUSY (home locked), QC_ECRYPTO or QC_EIO. */
QC_MUST_CHECK int wallet_device_init(const char *home, const char *serial, const char *pin,
                                     size_t pin_len);

/* Where a token wallet's token is: module path, token label, and whether it is the wallet's
 * own SoftHSM2 token in HOME/token (created by init) or a key the issuer initialized. */
typedef struct wallet_token_place {
    const char *module; /* NULL: WALLET_TOKEN_MODULE_DEFAULT */
    const char *label;
    bool home_token;
    const char *so_pin; /* home_token only: the security officer's PIN to set */
    size_t so_pin_len;
} wallet_token_place_t;

/* As wallet_device_init(), with the device key and the state key generated inside the token
 * of place (created in HOME/token when place->home_token; else found by its label and logged
 * in with pin). pin is the token's user PIN. No private key is written to home.
 * Returns as wallet_device_init(), and QC_EUNAVAIL (no such token), QC_EPIN, QC_ELOCKED. */
QC_MUST_CHECK int wallet_device_init_token(const char *home, const char *serial,
                                           const wallet_token_place_t *place, const char *pin,
                                           size_t pin_len);

/* Moves the PEM device key of an existing wallet in home into the token of place: checks pin
 * against the state's PIN record (counting the try), creates or opens the token with pin as
 * its user PIN, imports the key (sensitive, not extractable), generates the state key, signs
 * the state (its PIN record replaced by random bytes: the PIN is the token's now), writes
 * token.conf, and overwrites then unlinks device.key. Returns 0, QC_EEXIST (already a token
 * wallet), QC_EPIN, QC_ELOCKED, QC_ENOTFOUND, QC_EBUSY, QC_EUNAVAIL, QC_ECRYPTO, QC_EIO. */
QC_MUST_CHECK int wallet_device_migrate_token(const char *home, const wallet_token_place_t *place,
                                              const char *pin, size_t pin_len);

/* True when dev keeps its keys in a token. */
bool wallet_device_has_token(const wallet_device_t *dev);

/* A token wallet: logs in to the token with pin (wallet_token_login(): the try is counted in
 * the token) and lets the core sign. Returns 0, QC_EPIN, QC_ELOCKED, QC_EINVAL, QC_ECRYPTO.
 * *tries_left (may be NULL) gets the tries the token has left. */
QC_MUST_CHECK int wallet_device_login(wallet_device_t *dev, const char *pin, size_t pin_len,
                                      uint32_t *tries_left);

/* A token wallet: the issuer's unblock of the token's user PIN (wallet_token_unblock()).
 * Returns its codes. */
QC_MUST_CHECK int wallet_device_unblock(wallet_device_t *dev, const char *so_pin, size_t so_pin_len,
                                        const char *pin, size_t pin_len);

/* The PIN tries left: the token's count for a token wallet, else the state's. */
uint32_t wallet_device_pin_tries(wallet_device_t *dev);

/* Opens the device of home: takes its lock, loads the state (finishing a log line a crash
 * left unwritten), the key, and the certificate and bank keys when installed. A token
 * wallet opens its token (not logged in) and refuses a state whose signature does not verify.
 * Returns 0 and sets *out, QC_ENOTFOUND (no device there), QC_EBUSY (another program
 * drives it), QC_EDECODE (damaged state), QC_EBADSIG (a token wallet's state edited or not
 * signed), QC_EUNAVAIL (its token is not present), QC_ECRYPTO, QC_EIO or QC_ENOMEM. */
QC_MUST_CHECK int wallet_device_open(const char *home, wallet_device_t **out);

/* Releases the lock, wipes the keys, frees dev and nulls *dev_p; accepts NULL. */
void wallet_device_destroy(wallet_device_t **dev_p);

/* The device core, borrowed (valid until wallet_device_destroy()): every transition of the
 * load protocol and of card transfers is the core's (device_core.h, device_flow.h). */
device_core_t *wallet_device_core(wallet_device_t *dev);

/* Installs the device certificate from cert_path (PEM): its public key must be the
 * device's and its commonName the serial. Returns 0, QC_EIO (unreadable), QC_ECERT (not a
 * certificate, another key or another name). */
QC_MUST_CHECK int wallet_device_install_cert(wallet_device_t *dev, const char *cert_path);

/* Installs the bank's allow-signing and outcome-signing keys, each given as a PEM
 * certificate or PEM public key on P-256. Returns 0, QC_EIO or QC_ECERT. */
QC_MUST_CHECK int wallet_device_install_bank(wallet_device_t *dev, const char *allow_path,
                                             const char *outcome_path);

#endif
