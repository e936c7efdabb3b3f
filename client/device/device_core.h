/* device_core.h - the e-purse itself, in memory: its state, its PIN gate, and the device side
 * of the load protocol (docs/DESIGN.md section 2) and of card transfers.
 *
 * The core does no I/O. It holds the device key, the certificate and the bank's keys that
 * its owner gives it, and hands every new state to a store function before it adopts it
 * (device_core_set_store()), so that the owner decides what "durable" means:
 *   - qc-wallet (client/wallet/wallet_device.h) writes the state file and the operation log
 *     of a home directory, atomically, before the core moves on;
 *   - qc-loadgen (client/loadgen/loadgen_fleet.h) keeps thousands of devices in memory with
 *     no store at all, and drives the very same transitions and checks.
 * Every transition either returns 0 with the new state adopted, or an error with the state
 * exactly as before.
 *
 * A core is driven by one thread at a time. */
#ifndef DEVICE_CORE_H
#define DEVICE_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "device_home.h"
#include "device_pin.h"
#include "device_pki.h"
#include "device_wire.h"
#include "proto_envelope.h"
#include "qc_error.h"

/* The device's limits are the wire's (proto_limits.h), under the device's names. */
#define DEVICE_ACCOUNT_MAX PROTO_ACCOUNT_ID_MAX /* bytes of an account id */
#define DEVICE_TXN_SIZE PROTO_TXN_ID_SIZE
#define DEVICE_DIGEST_SIZE PROTO_DIGEST_SIZE
#define DEVICE_BLOB_MAX PROTO_ENVELOPE_MAX /* a stored signed message */
#define DEVICE_KEY_VERSION 1
#define DEVICE_CURRENCY_DEFAULT 156 /* CNY */

/* Where the device is in its load protocol (docs/DESIGN.md section 2; the diagram is in
 * device_core.c). */
typedef enum device_phase {
    DEVICE_IDLE = 0, /* no load in progress */
    DEVICE_PENDING,  /* a request is signed and stored; no allow judged yet */
    DEVICE_REPORTED, /* an allow was judged (applied or rejected); the report awaits its outcome */
} device_phase_t;

/* The whole durable state of a device. A plain value record rather than an opaque type: it is
 * what a state file holds field by field (client/wallet/wallet_store.h), and device_core.c
 * owns its invariants. request and report are malloc'd and owned by the record. */
typedef struct device_state {
    char serial[DEVICE_SERIAL_MAX + 1];
    int64_t balance;  /* minor units */
    uint64_t counter; /* loads applied */
    device_phase_t phase;

    /* The load in progress (PENDING and REPORTED). */
    uint8_t txn_id[DEVICE_TXN_SIZE];
    char account_id[DEVICE_ACCOUNT_MAX + 1];
    int64_t amount;
    uint32_t currency;
    uint8_t request_digest[DEVICE_DIGEST_SIZE]; /* SHA-256 of the signed request body */
    uint8_t *request;                           /* the signed LoadRequest envelope */
    size_t request_len;

    /* REPORTED only: the judgement and the signed report that carries it. */
    int report_status;                        /* Quancun__ReportStatus */
    uint8_t allow_digest[DEVICE_DIGEST_SIZE]; /* of the allow judged */
    uint8_t *report;                          /* the signed ExecutionReport envelope */
    size_t report_len;

    /* The last load that reached an outcome, for `status`. */
    uint8_t last_txn_id[DEVICE_TXN_SIZE];
    int last_outcome; /* Quancun__LoadState, 0 when none yet */

    device_pin_t pin;

    /* A card transfer in progress (device_core_card_debit()): the wallet is already
     * debited; the card's proof settles it (complete, or refund). */
    bool card_pending;
    uint8_t card_xfer_id[DEVICE_TXN_SIZE];
    int64_t card_amount;
    char card_number[DEVICE_SERIAL_MAX + 1];

    uint64_t log_seq;                          /* sequence number of the last log line */
    char log_pending[DEVICE_LOG_LINE_MAX + 1]; /* line number log_seq, "" when none */
} device_state_t;

/* Frees the blobs of st and wipes it; st may then be reused. Accepts NULL. */
void device_state_clear(device_state_t *st);

/* Sets *blob_p to a malloc'd copy of bytes (len in 1..DEVICE_BLOB_MAX), freeing the old one.
 * Returns 0, QC_EINVAL or QC_ENOMEM (the old blob is kept on error). */
QC_MUST_CHECK int device_state_set_blob(uint8_t **blob_p, size_t *len_p, const uint8_t *bytes,
                                        size_t len);

/* Fills st (cleared first) as a new device: serial, the PIN record of pin hashed with
 * pin_iterations rounds (DEVICE_PIN_ITERATIONS for a device whose state is stored), balance
 * and counter 0, IDLE. Returns 0, QC_EINVAL (bad serial, PIN or iteration count) or
 * QC_ECRYPTO; st is cleared on error. */
QC_MUST_CHECK int device_state_init(device_state_t *st, const char *serial, const char *pin,
                                    size_t pin_len, uint32_t pin_iterations);

/* Returns the name of phase ("IDLE", "PENDING", "REPORTED"). */
const char *device_phase_name(device_phase_t phase);

/* True when account_id can be signed into a request: 1 to DEVICE_ACCOUNT_MAX printable
 * ASCII characters, without spaces, quotes or backslashes (it also goes into the log). */
bool device_account_valid(const char *account_id);

typedef struct device_core device_core_t;

/* Makes a core of the state *st, which it takes over (its blobs included; *st is left
 * zeroed), and of key, the device's P-256 private key (the core takes its own reference).
 * No store, no certificate and no bank keys yet. The state must hold its invariants (a state
 * loaded from a file was checked by its loader). Returns 0 and sets *out, or QC_ENOMEM with
 * *st untouched. */
QC_MUST_CHECK int device_core_new(device_state_t *st, EVP_PKEY *key, device_core_t **out);

/* Wipes the state and drops the keys, frees the core and nulls *core_p; accepts NULL. */
void device_core_destroy(device_core_t **core_p);

/* Makes st durable, as the state of the device from now on. has_line says that st->log_pending
 * is a new log line (number st->log_seq) to append after the state. Returns 0, or a QC_E*
 * code when st could not be stored (the core then keeps its previous state). */
typedef int device_store_fn(void *arg, const device_state_t *st, bool has_line);

/* Every state the core moves to is given to store first (NULL: the state lives in memory
 * only, as qc-loadgen's devices do). */
void device_core_set_store(device_core_t *c, device_store_fn *store, void *arg);

/* Signs a 32-byte digest with the device key held outside the process (a PKCS#11 token,
 * client/wallet/wallet_token.h) and writes the raw r || s (any S: the core makes it low).
 * Returns 0 or a QC_E* code. */
typedef int device_sign_fn(void *arg, const uint8_t digest[PROTO_DIGEST_SIZE],
                           uint8_t raw[PROTO_SIG_RAW_SIZE]);

/* From now on the core signs through sign (the key given to device_core_new() is then only
 * the public half, used for the key id and the certificate), and the PIN is the signer's:
 * the state's PIN record is not used, device_core_verify_pin() refuses (QC_EDENIED), and the
 * owner, having had the PIN accepted by the signer, calls device_core_pin_verified(). */
void device_core_set_signer(device_core_t *c, device_sign_fn *sign, void *arg);

/* Tells a core with a signer (device_core_set_signer()) that the signer accepted the PIN; the
 * core then accepts device_core_request() until it is destroyed. */
void device_core_pin_verified(device_core_t *c);

/* Installs a copy of the device certificate (DER), which the caller checked holds the
 * device's key and serial; der NULL removes it. Returns 0, QC_EINVAL (too long) or
 * QC_ENOMEM. */
QC_MUST_CHECK int device_core_set_cert(device_core_t *c, const uint8_t *der, size_t der_len);

/* Installs the bank's allow-signing and outcome-signing keys (the core takes its own
 * references); NULL keys remove them. */
void device_core_set_bank(device_core_t *c, const device_bank_key_t *allow,
                          const device_bank_key_t *outcome);

/* Commits a log line (event, with detail when not NULL) that changes nothing else, such as
 * the birth of a device. Returns 0 or the store's error. */
QC_MUST_CHECK int device_core_note(device_core_t *c, const char *event, const char *detail);

/* The device's serial, borrowed. */
const char *device_core_serial(const device_core_t *c);

/* What `qc-wallet status` shows. A plain output record. */
typedef struct device_status {
    char serial[DEVICE_SERIAL_MAX + 1];
    int64_t balance;
    uint64_t counter;
    device_phase_t phase;
    uint8_t txn_id[DEVICE_TXN_SIZE]; /* valid unless IDLE */
    char account_id[DEVICE_ACCOUNT_MAX + 1];
    int64_t amount;
    uint32_t currency;
    int report_status; /* REPORTED: Quancun__ReportStatus */
    uint8_t last_txn_id[DEVICE_TXN_SIZE];
    int last_outcome; /* Quancun__LoadState of the last finished load, 0 = none */
    uint32_t pin_tries_left;
    bool has_cert;
    bool has_bank;
    bool card_pending; /* a card transfer awaits its settlement */
    uint8_t card_xfer_id[DEVICE_TXN_SIZE];
    int64_t card_amount;
    char card_number[DEVICE_SERIAL_MAX + 1];
} device_status_t;

void device_core_status(const device_core_t *c, device_status_t *out);

/* Checks the PIN. The try is counted and stored before the PIN is compared (as a smart card
 * does), so cutting the power cannot buy free guesses. On success the core accepts
 * device_core_request() until it is destroyed. Returns 0, QC_EPIN (wrong, tries left),
 * QC_ELOCKED (locked now or already), QC_ECRYPTO or the store's error. */
QC_MUST_CHECK int device_core_verify_pin(device_core_t *c, const char *pin, size_t pin_len);

/* The admin reset of the PIN retry counter (see device_pin.h). Returns 0 or the store's
 * error. */
QC_MUST_CHECK int device_core_admin_reset(device_core_t *c);

/* IDLE -> PENDING: signs a LoadRequest for amount (minor units) of currency from
 * account_id, with a fresh txn id, the current balance and counter, and the device
 * certificate in the envelope, and stores it. *request points to the stored signed request
 * (borrowed, valid until the next state change).
 * Returns 0; QC_EDENIED (PIN not verified), QC_EPENDING (a load is in progress),
 * QC_ECARDPENDING (a card transfer is pending), QC_ECERT (no certificate installed),
 * QC_ECONFIG (no bank keys installed), QC_EAMOUNT, QC_EINVAL (bad account or currency),
 * QC_ECRYPTO, or the store's error. */
QC_MUST_CHECK int device_core_request(device_core_t *c, const char *account_id, int64_t amount,
                                      uint32_t currency, const uint8_t **request,
                                      size_t *request_len);

/* The stored signed request of the load in progress (PENDING or REPORTED), borrowed.
 * Returns 0 or QC_ESTATE. */
QC_MUST_CHECK int device_core_pending_request(const device_core_t *c, const uint8_t **request,
                                              size_t *request_len);

/* PENDING -> REPORTED: judges an allow (untrusted bytes). It is applied only if it is
 * signed by the bank's allow key (whose certificate, if any, is valid now) and names this
 * device, the pending txn, counter, amount, currency, account and request digest, with a
 * deadline not yet passed; then the wallet is credited, the counter incremented and an
 * APPLIED report signed and stored, all in one state change. Otherwise nothing is credited
 * and a REJECTED report with the reason is signed and stored instead.
 * *verdict is 0 when applied, else the code of the refusal (QC_EBADSIG, QC_EKEYID,
 * QC_EMISMATCH, QC_ESTALE, QC_EDEVICEID, QC_EEXPIRED, QC_ECERTEXPIRED, QC_EDECODE, ...).
 * Returns 0 when the allow was judged and the report stored; QC_ESTATE (no load pending),
 * QC_EREPLAY (this load was already judged: nothing changes), QC_ECONFIG (no bank key),
 * QC_ECRYPTO, QC_ENOMEM or the store's error (nothing changed). */
QC_MUST_CHECK int device_core_judge_allow(device_core_t *c, const uint8_t *allow, size_t allow_len,
                                          int *verdict);

/* The stored signed report of the load (REPORTED), borrowed, ready to be (re)sent.
 * Returns 0 or QC_ESTATE. */
QC_MUST_CHECK int device_core_report(const device_core_t *c, const uint8_t **report,
                                     size_t *report_len);

/* REPORTED -> IDLE: accepts a LoadOutcome (untrusted bytes) signed by the bank's outcome
 * key for this device's load, with a final state, which is stored in *load_state.
 * Returns 0; QC_ESTATE (no report outstanding), QC_EBUSY (the outcome is not final yet),
 * or a verification error (QC_ETOOBIG, QC_EDECODE, QC_EKEYID, QC_EBADSIG, QC_ECERTEXPIRED,
 * QC_EMISMATCH, QC_EDEVICEID) with nothing changed; the store's error. */
QC_MUST_CHECK int device_core_accept_outcome(device_core_t *c, const uint8_t *outcome,
                                             size_t outcome_len, int *load_state);

/* PENDING -> IDLE without applying anything: the bank refused the request or no longer
 * knows it, or no answer came (server_code and message are logged). The counter is
 * unchanged, which proves to the ledger that the load was not applied. Returns 0, QC_ESTATE
 * or the store's error. */
QC_MUST_CHECK int device_core_abandon(device_core_t *c, int server_code, const char *message);

/* ------------------------------------------------------------------ IC card transfers
 *
 * The wallet moves e-money to a card (proto/card.proto, client/wallet/card_host.h). The
 * device debits itself and records the pending transfer in one state change before the card
 * is asked to credit; the card's signed receipt (CardReceipt) then completes it, or, when
 * the card proves it never credited that transfer id, refunds it. One operation at a time:
 * no card transfer starts while a load is in progress, and no load starts while a card
 * transfer is pending (QC_ECARDPENDING), so the balances signed into a load's request and
 * report never see a card debit in between and the money is always on exactly one side. */

typedef enum device_card_result {
    DEVICE_CARD_COMPLETED = 1, /* the card has the money */
    DEVICE_CARD_REFUNDED = 2,  /* the card never credited it: the wallet has it back */
} device_card_result_t;

/* The device certificate (DER), borrowed. Returns 0, or QC_ECERT when none is installed. */
QC_MUST_CHECK int device_core_cert(const device_core_t *c, const uint8_t **der, size_t *der_len);

/* Signs the device's answer to a card's challenge: a CardChallenge {serial, card_number,
 * card_challenge, host_challenge} with the device certificate in the envelope. *out is
 * malloc'd (the caller frees it). Returns 0, QC_ECERT (no certificate installed),
 * QC_EINVAL (bad card number), QC_ECRYPTO or QC_ENOMEM. */
QC_MUST_CHECK int device_core_card_auth(device_core_t *c, const char *card_number,
                                        const uint8_t card_challenge[DEVICE_CARD_CHALLENGE_SIZE],
                                        const uint8_t host_challenge[DEVICE_CARD_CHALLENGE_SIZE],
                                        uint8_t **out, size_t *out_len);

/* Starts a card transfer: draws a transfer id, signs a CardCredit of amount for
 * card_number bound to the card's session challenge, and then debits the wallet and records
 * the pending transfer in one state change (log "card.debited"). *credit is malloc'd.
 * Returns 0; QC_EDENIED (PIN not verified), QC_EPENDING (a load is in progress),
 * QC_ECARDPENDING (a card transfer is pending), QC_EAMOUNT (not positive),
 * QC_EFUNDS (more than the balance), QC_EINVAL, QC_ECERT, QC_ECRYPTO, the store's error;
 * nothing is debited on error. */
QC_MUST_CHECK int device_core_card_debit(device_core_t *c, const char *card_number, int64_t amount,
                                         const uint8_t session[DEVICE_CARD_CHALLENGE_SIZE],
                                         uint8_t **credit, size_t *credit_len);

/* Settles the pending card transfer from a receipt (untrusted bytes) signed by card_key,
 * the key of the card's certificate, which the caller verified against the card CA for
 * the card number of the pending transfer. CREDITED for the pending id, device, card and
 * amount completes it (log "card.completed"); NOT_CREDITED is believed only when its
 * session is host_challenge, this session's fresh random, and refunds the amount (log
 * "card.refunded"). Returns 0 with *result set; QC_ESTATE (nothing pending); QC_ETOOBIG,
 * QC_EDECODE, QC_EKEYID, QC_EBADSIG, QC_EMISMATCH (another transfer, card, device or
 * amount), QC_EREPLAY (a NOT_CREDITED of another session) with nothing changed; the store's
 * error. */
QC_MUST_CHECK int device_core_card_settle(device_core_t *c, EVP_PKEY *card_key,
                                          const uint8_t host_challenge[DEVICE_CARD_CHALLENGE_SIZE],
                                          const uint8_t *receipt, size_t receipt_len,
                                          device_card_result_t *result);

#endif
