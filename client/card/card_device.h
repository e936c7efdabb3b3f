/* card_device.h - the simulated IC card (contact or contactless purse): its key and
 * certificate, PIN, purse, counter, log, trusted device list, and the card side of the
 * card protocol (proto/card.proto).
 *
 * The card lives in a home directory:
 *   card.key     its P-256 private key (PEM, mode 0600); it never leaves the card
 *   card.csr     a certificate request, CN = the card number, for the issuer CA
 *   card.pem     its certificate, installed at personalisation
 *   ca.pem       the CA bundle that devices' certificates must chain to
 *   card.state   number, purse, maximum, counter, PIN record, trusted serials, credits
 *                (card_store.h)
 *   oplog.jsonl  the card's own log, one JSON object per line
 *
 * A card talks to one reader at a time. Each contact is a session: it starts with mutual
 * authentication (each side signs the other's fresh random challenge; each checks the
 * other's certificate against its CA bundle and the other's identifier against its trusted
 * list), then the PIN, then at most the credits the host asks for. Every change of the
 * card's state is one atomic write that carries its log line. */
#ifndef CARD_DEVICE_H
#define CARD_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "card_store.h"
#include "qc_error.h"

#define CARD_KEY_FILE "card.key"
#define CARD_CSR_FILE "card.csr"
#define CARD_CERT_FILE "card.pem"
#define CARD_CA_FILE "ca.pem"
#define CARD_MESSAGE_MAX 256 /* a refusal sentence sent to the host */

typedef struct card_device card_device_t;

/* Creates a card in home (created 0700 if missing): number, a P-256 key and CSR, an empty
 * purse with maximum max_balance, counter 0, the PIN, and the trusted serials in
 * trusted_csv ("A,B,C", may be NULL or empty), and the first log line.
 * Returns 0, QC_EEXIST, QC_EINVAL (bad number, maximum, PIN or serial; too many serials),
 * QC_EBUSY, QC_ECRYPTO or QC_EIO. */
QC_MUST_CHECK int card_device_init(const char *home, const char *number, int64_t max_balance,
                                   const char *trusted_csv, const char *pin, size_t pin_len);

/* Opens the card of home: takes its lock, loads the state (finishing a log line a crash
 * left unwritten), the key, and the certificate and CA bundle when installed.
 * Returns 0 and sets *out, QC_ENOTFOUND, QC_EBUSY, QC_EDECODE, QC_ECERT, QC_ECRYPTO,
 * QC_EIO or QC_ENOMEM. */
QC_MUST_CHECK int card_device_open(const char *home, card_device_t **out);

/* Wipes and frees the card, releases its lock, nulls *dev_p; accepts NULL. */
void card_device_destroy(card_device_t **dev_p);

/* Installs the card's certificate (PEM; its key must be the card's and its CN the card
 * number) and the CA bundle (PEM) that device certificates must chain to.
 * Returns 0, QC_EIO (unreadable) or QC_ECERT. */
QC_MUST_CHECK int card_device_install_cert(card_device_t *dev, const char *cert_path,
                                           const char *ca_path);

/* A new contact: forgets the authentication, the PIN and the challenges of the last one. */
void card_device_session_reset(card_device_t *dev);

/* Answers one request frame (untrusted bytes) with one response frame (*resp, malloc'd).
 * Refusals are answers (code and sentence in the response), not errors.
 * Returns 0, or QC_ENOMEM / QC_ECRYPTO / QC_EIO when no answer could be made (the state
 * is then as before the request, or after it when only the answer was lost). */
QC_MUST_CHECK int card_device_handle(card_device_t *dev, const uint8_t *req, size_t req_len,
                                     uint8_t **resp, size_t *resp_len);

/* The card's state, borrowed (for `qc-card status`). */
const card_state_t *card_device_state(const card_device_t *dev);
bool card_device_has_cert(const card_device_t *dev);
/* True when the current contact has presented the right PIN. */
bool card_device_pin_verified(const card_device_t *dev);

#endif
