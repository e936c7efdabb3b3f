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
 * The core's every new state is written here atomically, with its log line, before the core
 * adopts it, so a device killed at any point is found, when reopened, either before or after
 * the change. A device is driven by one thread of one process at a time (an advisory lock on
 * the home enforces the process half). */
#ifndef WALLET_DEVICE_H
#define WALLET_DEVICE_H

#include <stddef.h>

#include "device_core.h"
#include "qc_error.h"

#define WALLET_KEY_FILE "device.key"
#define WALLET_CSR_FILE "device.csr"
#define WALLET_CERT_FILE "device.pem"
#define WALLET_BANK_FILE "bank.pem"
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

/* Opens the device of home: takes its lock, loads the state (finishing a log line a crash
 * left unwritten), the key, and the certificate and bank keys when installed.
 * Returns 0 and sets *out, QC_ENOTFOUND (no device there), QC_EBUSY (another program
 * drives it), QC_EDECODE (damaged state), QC_ECRYPTO, QC_EIO or QC_ENOMEM. */
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
