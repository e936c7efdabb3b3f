/* wallet_device.h - the simulated USB-key e-purse: keys, PIN, wallet, counter and the
 * device side of the load protocol (docs/DESIGN.md section 2).
 *
 * The device lives in a home directory:
 *   device.key   its P-256 private key (PEM, mode 0600); it never leaves the device
 *   device.csr   a certificate request, CN = the hardware serial, for the dev CA
 *   device.pem   its certificate, installed by the operator after enrollment
 *   bank.pem     the bank's allow-signing then outcome-signing certificate or public key
 *   state        balance, counter, the load in progress, PIN record (wallet_store.h)
 *   oplog.jsonl  the operation log, one JSON object per line
 *
 * Functions that change the state write it atomically before they return, so a device
 * killed at any point is found, when reopened, either before or after the change.
 * A device is driven by one thread of one process at a time (an advisory lock on the home
 * enforces the process half). */
#ifndef WALLET_DEVICE_H
#define WALLET_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "wallet_store.h"

#define WALLET_KEY_FILE "device.key"
#define WALLET_CSR_FILE "device.csr"
#define WALLET_CERT_FILE "device.pem"
#define WALLET_BANK_FILE "bank.pem"
#define WALLET_SERIAL_PREFIX "QC"
#define WALLET_SERIAL_RANDOM_BYTES 8 /* "QC" + 16 hex digits */
#define WALLET_KEY_VERSION 1
#define WALLET_CURRENCY_DEFAULT 156 /* CNY */
#define WALLET_CURRENCY_MAX 999     /* ISO 4217 numeric codes have three digits */

typedef struct wallet_device wallet_device_t;

/* Creates a new device in home (created with mode 0700 if missing): a serial (serial, or
 * WALLET_SERIAL_PREFIX and random hex when NULL), a P-256 key, a CSR, the PIN record, an
 * empty wallet with counter 0, and the first log line.
 * Returns 0, QC_EEXIST (a device already lives there), QC_EINVAL (bad serial or PIN),
 * QC_EBUSY (home locked), QC_ECRYPTO or QC_EIO. */
int wallet_device_init(const char *home, const char *serial, const char *pin, size_t pin_len);

/* Opens the device of home: takes its lock, loads the state (finishing a log line a crash
 * left unwritten), the key, and the certificate and bank keys when installed.
 * Returns 0 and sets *out, QC_ENOTFOUND (no device there), QC_EBUSY (another program
 * drives it), QC_EDECODE (damaged state), QC_ECRYPTO, QC_EIO or QC_ENOMEM. */
int wallet_device_open(const char *home, wallet_device_t **out);

/* Releases the lock, wipes the keys, frees dev and nulls *dev_p; accepts NULL. */
void wallet_device_destroy(wallet_device_t **dev_p);

/* Installs the device certificate from cert_path (PEM): its public key must be the
 * device's and its commonName the serial. Returns 0, QC_EIO (unreadable), QC_ECERT (not a
 * certificate, another key or another name). */
int wallet_device_install_cert(wallet_device_t *dev, const char *cert_path);

/* Installs the bank's allow-signing and outcome-signing keys, each given as a PEM
 * certificate or PEM public key on P-256. Returns 0, QC_EIO or QC_ECERT. */
int wallet_device_install_bank(wallet_device_t *dev, const char *allow_path,
                               const char *outcome_path);

/* What `qc-wallet status` shows. A plain output record. */
typedef struct wallet_status {
    char serial[WALLET_SERIAL_MAX + 1];
    int64_t balance;
    uint64_t counter;
    wallet_phase_t phase;
    uint8_t txn_id[WALLET_TXN_SIZE]; /* valid unless IDLE */
    char account_id[WALLET_ACCOUNT_MAX + 1];
    int64_t amount;
    uint32_t currency;
    int report_status; /* REPORTED: Quancun__ReportStatus */
    uint8_t last_txn_id[WALLET_TXN_SIZE];
    int last_outcome; /* Quancun__LoadState of the last finished load, 0 = none */
    uint32_t pin_tries_left;
    bool has_cert;
    bool has_bank;
    bool card_pending; /* a card transfer awaits its settlement */
    uint8_t card_xfer_id[WALLET_TXN_SIZE];
    int64_t card_amount;
    char card_number[WALLET_SERIAL_MAX + 1];
} wallet_status_t;

void wallet_device_status(const wallet_device_t *dev, wallet_status_t *out);

/* Returns the name of phase ("IDLE", "PENDING", "REPORTED"). */
const char *wallet_phase_name(wallet_phase_t phase);

/* Checks the PIN. The try is counted on disk before the PIN is compared (as a smart card
 * does), so cutting the power cannot buy free guesses. On success the device accepts
 * wallet_device_request() until it is destroyed. Returns 0, QC_EPIN (wrong, tries left),
 * QC_ELOCKED (locked now or already), QC_ECRYPTO or QC_EIO. */
int wallet_device_verify_pin(wallet_device_t *dev, const char *pin, size_t pin_len);

/* The admin reset of the PIN retry counter (see wallet_pin.h). Returns 0 or QC_EIO. */
int wallet_device_admin_reset(wallet_device_t *dev);

/* IDLE -> PENDING: signs a LoadRequest for amount (minor units) of currency from
 * account_id, with a fresh txn id, the current balance and counter, and the device
 * certificate in the envelope, and stores it. *request points to the stored signed request
 * (borrowed, valid until the next state change).
 * Returns 0; QC_EDENIED (PIN not verified), QC_EPENDING (a load is in progress),
 * QC_ECERT (no certificate installed), QC_ECONFIG (no bank keys installed), QC_EAMOUNT,
 * QC_EINVAL (bad account or currency), QC_ECRYPTO, QC_EIO. */
int wallet_device_request(wallet_device_t *dev, const char *account_id, int64_t amount,
                          uint32_t currency, const uint8_t **request, size_t *request_len);

/* The stored signed request of the load in progress (PENDING or REPORTED), borrowed.
 * Returns 0 or QC_ESTATE. */
int wallet_device_pending_request(const wallet_device_t *dev, const uint8_t **request,
                                  size_t *request_len);

/* PENDING -> REPORTED: judges an allow (untrusted bytes). It is applied only if it is
 * signed by the bank's allow key (whose certificate, if any, is valid now) and names this
 * device, the pending txn, counter, amount, currency, account and request digest, with a
 * deadline not yet passed; then the wallet is credited, the counter incremented and an
 * APPLIED report signed and stored, all in one atomic state write. Otherwise nothing is
 * credited and a REJECTED report with the reason is signed and stored instead.
 * *verdict is 0 when applied, else the code of the refusal (QC_EBADSIG, QC_EKEYID,
 * QC_EMISMATCH, QC_ESTALE, QC_EDEVICEID, QC_EEXPIRED, QC_ECERTEXPIRED, QC_EDECODE, ...).
 * Returns 0 when the allow was judged and the report stored; QC_ESTATE (no load pending),
 * QC_EREPLAY (this load was already judged: nothing changes), QC_ECONFIG (no bank key),
 * QC_ECRYPTO or QC_EIO (nothing changed). */
int wallet_device_judge_allow(wallet_device_t *dev, const uint8_t *allow, size_t allow_len,
                              int *verdict);

/* The stored signed report of the load (REPORTED), borrowed, ready to be (re)sent.
 * Returns 0 or QC_ESTATE. */
int wallet_device_report(const wallet_device_t *dev, const uint8_t **report, size_t *report_len);

/* REPORTED -> IDLE: accepts a LoadOutcome (untrusted bytes) signed by the bank's outcome
 * key for this device's load, with a final state, which is stored in *load_state.
 * Returns 0; QC_ESTATE (no report outstanding), QC_EBUSY (the outcome is not final yet),
 * or a verification error (QC_ETOOBIG, QC_EDECODE, QC_EKEYID, QC_EBADSIG, QC_ECERTEXPIRED,
 * QC_EMISMATCH, QC_EDEVICEID) with nothing changed; QC_EIO. */
int wallet_device_accept_outcome(wallet_device_t *dev, const uint8_t *outcome, size_t outcome_len,
                                 int *load_state);

/* PENDING -> IDLE without applying anything: the bank refused the request or no longer
 * knows it (server_code and message are logged). The counter is unchanged, which proves
 * to the ledger that the load was not applied. Returns 0, QC_ESTATE or QC_EIO. */
int wallet_device_abandon(wallet_device_t *dev, int server_code, const char *message);

/* True when account_id can be signed into a request: 1 to WALLET_ACCOUNT_MAX printable
 * ASCII characters, without spaces, quotes or backslashes (it also goes into the log). */
bool wallet_account_valid(const char *account_id);

/* ------------------------------------------------------------------ IC card transfers
 *
 * The wallet moves e-money to a card (proto/card.proto, client/card_host.h). The device
 * debits itself and records the pending transfer in one atomic state write before the card
 * is asked to credit; the card's signed receipt (CardReceipt) then completes it, or, when
 * the card proves it never credited that transfer id, refunds it. One operation at a time:
 * no card transfer starts while a load is in progress, and no load starts while a card
 * transfer is pending (QC_ECARDPENDING), so the balances signed into a load's request and
 * report never see a card debit in between and the money is always on exactly one side. */
#define WALLET_CARD_CHALLENGE_SIZE 32

typedef enum wallet_card_result {
    WALLET_CARD_COMPLETED = 1, /* the card has the money */
    WALLET_CARD_REFUNDED = 2,  /* the card never credited it: the wallet has it back */
} wallet_card_result_t;

/* The device certificate (DER), borrowed. Returns 0, or QC_ECERT when none is installed. */
int wallet_device_cert(const wallet_device_t *dev, const uint8_t **der, size_t *der_len);

/* Signs the device's answer to a card's challenge: a CardChallenge {serial, card_number,
 * card_challenge, host_challenge} with the device certificate in the envelope. *out is
 * malloc'd (the caller frees it). Returns 0, QC_ECERT (no certificate installed),
 * QC_EINVAL (bad card number), QC_ECRYPTO or QC_ENOMEM. */
int wallet_device_card_auth(wallet_device_t *dev, const char *card_number,
                            const uint8_t card_challenge[WALLET_CARD_CHALLENGE_SIZE],
                            const uint8_t host_challenge[WALLET_CARD_CHALLENGE_SIZE], uint8_t **out,
                            size_t *out_len);

/* Starts a card transfer: draws a transfer id, signs a CardCredit of amount for
 * card_number bound to the card's session challenge, and then debits the wallet and records
 * the pending transfer in one atomic state write (log "card.debited"). *credit is malloc'd.
 * Returns 0; QC_EDENIED (PIN not verified), QC_EPENDING (a load is in progress),
 * QC_ECARDPENDING (a card transfer is pending), QC_EAMOUNT (not positive),
 * QC_EFUNDS (more than the balance), QC_EINVAL, QC_ECERT, QC_ECRYPTO, QC_EIO; nothing is
 * debited on error. */
int wallet_device_card_debit(wallet_device_t *dev, const char *card_number, int64_t amount,
                             const uint8_t session[WALLET_CARD_CHALLENGE_SIZE], uint8_t **credit,
                             size_t *credit_len);

/* Settles the pending card transfer from a receipt (untrusted bytes) signed by card_key,
 * the key of the card's certificate, which the caller verified against the card CA for
 * the card number of the pending transfer. CREDITED for the pending id, device, card and
 * amount completes it (log "card.completed"); NOT_CREDITED is believed only when its
 * session is host_challenge, this session's fresh random, and refunds the amount (log
 * "card.refunded"). Returns 0 with *result set; QC_ESTATE (nothing pending); QC_ETOOBIG,
 * QC_EDECODE, QC_EKEYID, QC_EBADSIG, QC_EMISMATCH (another transfer, card, device or
 * amount), QC_EREPLAY (a NOT_CREDITED of another session) with nothing changed; QC_EIO. */
int wallet_device_card_settle(wallet_device_t *dev, EVP_PKEY *card_key,
                              const uint8_t host_challenge[WALLET_CARD_CHALLENGE_SIZE],
                              const uint8_t *receipt, size_t receipt_len,
                              wallet_card_result_t *result);

/* ------------------------------------------------------------------ key files
 * Shared with the card (client/card_device.c), which keeps its key the same way. */

/* Generates a P-256 key and writes it as a PEM private key to HOME/key_file (mode 0600)
 * and a CSR with CN = cn, signed by it, to HOME/csr_file. Returns 0 and sets *key (the
 * caller frees it), QC_ECRYPTO, QC_ENOMEM or QC_EIO. */
int wallet_pki_create_key(const char *home, const char *key_file, const char *csr_file,
                          const char *cn, EVP_PKEY **key);

/* Loads the P-256 private key of HOME/name into *out (the caller frees it). Returns 0,
 * QC_EIO (missing or unreadable) or QC_ECRYPTO (not a P-256 private key). */
int wallet_pki_load_key(const char *home, const char *name, EVP_PKEY **out);

/* Loads the certificate HOME/name as DER into a malloc'd *der (NULL with *der_len 0 when
 * there is no such file yet); it must hold key and have commonName cn. Returns 0, QC_ECERT,
 * QC_EIO or QC_ENOMEM. */
int wallet_pki_load_cert(const char *home, const char *name, EVP_PKEY *key, const char *cn,
                         uint8_t **der, size_t *der_len);

/* Copies the PEM certificate at cert_path to HOME/name after checking that it holds key and
 * has commonName cn. Returns 0, QC_EIO (unreadable) or QC_ECERT. */
int wallet_pki_install_cert(const char *home, const char *name, const char *cert_path,
                            EVP_PKEY *key, const char *cn);

/* The device's serial, borrowed. */
const char *wallet_device_serial(const wallet_device_t *dev);

#endif
