/* card_host.h - the wallet device's side of the card protocol: it reaches a card through a
 * PC/SC reader (card_pcsc.h) with the ISO 7816-4 APDUs of client/device/card_apdu.h
 * (docs/CARD.md), authenticates it, presents its PIN, and moves money
 * from the wallet to it with device_core_card_debit() / device_core_card_settle(), or settles a
 * transfer an earlier contact left pending from the card's signed proof.
 *
 * Every refusal, the card's or ours, leaves a sentence for the user in
 * card_host_message(). */
#ifndef CARD_HOST_H
#define CARD_HOST_H

#include <stddef.h>
#include <stdint.h>

#include "proto_cert.h"
#include "device_core.h"
#include "qc_error.h"

#define CARD_HOST_MESSAGE_MAX 512

typedef struct card_host card_host_t;

/* What a card says about itself in every answer. */
typedef struct card_info {
    char number[DEVICE_SERIAL_MAX + 1];
    int64_t balance;
    int64_t max_balance;
    uint64_t counter;
    uint32_t pin_tries_left;
} card_info_t;

/* Connects to the card in reader (NULL: the first virtual reader with a card, else the first
 * reader with one; see card_pcsc_open()) and selects the quancun applet. Returns 0 and sets
 * *out; on failure *out is still set (unless QC_ENOMEM) so card_host_message() can say why,
 * and the caller destroys it: QC_EUNAVAIL (no pcscd), QC_ENOTFOUND (no such reader, or no
 * quancun applet on the card), QC_ETIMEOUT (no card presented), QC_EBUSY, QC_EIO. */
QC_MUST_CHECK int card_host_connect(const char *reader, card_host_t **out);

/* Closes the contact, frees h and nulls *h_p; accepts NULL. */
void card_host_destroy(card_host_t **h_p);

/* The sentence explaining the last refusal ("" when none), borrowed. */
const char *card_host_message(const card_host_t *h);

/* Mutual authentication: sends a fresh challenge and the device certificate, checks the
 * card's certificate against card_ca, its number against trusted_csv ("A,B"), and its
 * signature over our challenge, then answers the card's challenge with the device key.
 * On success *info holds what the card reports (balance, ...).
 * Returns 0; QC_ECERT*, QC_EUNTRUSTED, QC_EBADSIG, QC_EMISMATCH (the card is refused);
 * the card's own refusal code (it refused us); QC_EIO, QC_ETIMEOUT (the contact failed). */
QC_MUST_CHECK int card_host_authenticate(card_host_t *h, device_core_t *dev,
                                         const proto_trust_t *card_ca, const char *trusted_csv,
                                         card_info_t *info);

/* Presents the card's PIN (VERIFY). Returns 0, QC_EPIN (tries left in info; status word
 * 63Cx), QC_ELOCKED (63C0: this try blocked it; 6983: it was blocked), or a contact error. */
QC_MUST_CHECK int card_host_verify_pin(card_host_t *h, const char *pin, size_t pin_len,
                                       card_info_t *info);

/* The status word of the card's last answer (0 before any). */
uint16_t card_host_last_sw(const card_host_t *h);

/* Moves amount from the wallet to the authenticated card: checks the amount against the
 * wallet's balance and the card's room first (QC_EFUNDS, QC_ECARDMAX: nothing moved), then
 * debits the wallet and records the transfer (one atomic write), asks the card to credit
 * and settles from its signed receipt; a refused credit is settled from the card's proof
 * (the wallet is refunded). *result says where the money is; *info holds the card after.
 * Returns 0 when settled (completed or refunded); otherwise the transfer stays pending in
 * the wallet (settle it with card_host_settle() at the next contact) or nothing moved. */
QC_MUST_CHECK int card_host_transfer(card_host_t *h, device_core_t *dev, int64_t amount,
                                     device_card_result_t *result, card_info_t *info);

/* Settles the wallet's pending transfer with the authenticated card from its signed proof:
 * complete when it credited that transfer id, refund when it proves it never did.
 * Returns 0 with *result set, QC_ESTATE (nothing pending), QC_EMISMATCH (this is not the
 * card of the pending transfer), or a verification or contact error (still pending). */
QC_MUST_CHECK int card_host_settle(card_host_t *h, device_core_t *dev, device_card_result_t *result,
                                   card_info_t *info);

#endif
