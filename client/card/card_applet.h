/* card_applet.h - the card's ISO/IEC 7816-4 face: it answers command APDUs
 * (client/device/card_apdu.h, docs/CARD.md) by running the card's operations
 * (card_device_handle()) and turning their answers into response data and status words.
 *
 * The applet adds what APDUs need and the card's operations do not: selection by AID,
 * command chaining (CLA bit 0x10) for data longer than one short command, responses longer
 * than the reader asked for kept for GET RESPONSE (61xx), and the sentence of the last
 * refusal, readable with GET DATA 0102 so the holder learns why, not only a status word.
 * A power-on, reset or power-off of the reader forgets the selection, the chain, the pending
 * response and the card's session (a new contact). */
#ifndef CARD_APPLET_H
#define CARD_APPLET_H

#include <stddef.h>
#include <stdint.h>

#include "card_apdu.h"
#include "card_device.h"
#include "qc_error.h"

/* The data of one chained command, all parts together: a certificate (PROTO_CERT_MAX) and a
 * challenge, or one signed envelope from the host, fit with room to spare. */
#define CARD_APPLET_CHAIN_MAX 16384
/* The longest response data the applet makes (a signed envelope with the card's
 * certificate); longer than a reader asked for, it is read with GET RESPONSE. */
#define CARD_APPLET_RESPONSE_MAX 16384
/* A response APDU the caller must have room for. */
#define CARD_APPLET_RAPDU_MAX (CARD_APPLET_RESPONSE_MAX + CARD_APDU_SW_SIZE)

typedef struct card_applet card_applet_t;

/* The ATR the card answers a reader with (T=1, historical bytes "QCCARD"). */
const uint8_t *card_applet_atr(size_t *len);

/* A new applet over dev (borrowed: it must outlive the applet). Returns 0 and sets *out, or
 * QC_ENOMEM. */
QC_MUST_CHECK int card_applet_new(card_device_t *dev, card_applet_t **out);

/* Frees the applet (not its card), nulls *applet_p; accepts NULL. */
void card_applet_destroy(card_applet_t **applet_p);

/* Power-on, reset or power-off: a new contact (see above). */
void card_applet_reset(card_applet_t *applet);

/* Answers one command APDU (untrusted bytes, any length) with one response APDU written to
 * rapdu (cap >= CARD_APPLET_RAPDU_MAX bytes); *rapdu_len is at least 2 (the status word).
 * Every refusal is an answer: this never fails. */
void card_applet_process(card_applet_t *applet, const uint8_t *cmd, size_t cmd_len, uint8_t *rapdu,
                         size_t cap, size_t *rapdu_len);

#endif
