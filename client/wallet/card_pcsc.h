/* card_pcsc.h - the wallet's card reader: PC/SC through pcsc-lite's libpcsclite
 * (SCardEstablishContext, SCardListReaders, SCardConnect, SCardTransmit), so the virtual card
 * of qc-card behind vpcd and a real reader with a card running the same applet are reached
 * the same way. libpcsclite finds pcscd at its default socket, or at PCSCLITE_CSOCK_NAME. */
#ifndef CARD_PCSC_H
#define CARD_PCSC_H

#include <stddef.h>
#include <stdint.h>

#include "qc_error.h"

#define CARD_PCSC_READER_HINT "Virtual PCD" /* vpcd's readers: preferred without --reader */
#define CARD_PCSC_READER_MAX 128            /* a reader name (pcsc-lite's MAX_READERNAME) */
#define CARD_PCSC_WAIT_MS 3000 /* how long a card may take to be presented (or noticed) */
#define CARD_PCSC_WHY_MAX 160

typedef struct card_pcsc card_pcsc_t;

/* Connects (exclusively) to the card in reader (NULL: the first reader whose name contains
 * CARD_PCSC_READER_HINT and holds a card, else the first reader that holds one), waiting up
 * to CARD_PCSC_WAIT_MS for a card. Returns 0 and sets *out; QC_EUNAVAIL (no pcscd);
 * QC_ENOTFOUND (no such reader, or no reader at all); QC_EBUSY (another program holds the
 * card); QC_ETIMEOUT (no card presented); QC_EIO; QC_ENOMEM. On error, why (why_cap bytes)
 * holds a sentence. */
QC_MUST_CHECK int card_pcsc_open(const char *reader, card_pcsc_t **out, char *why, size_t why_cap);

/* Ends the contact (the card is reset, so its session ends), frees p, nulls *p_p; accepts
 * NULL. */
void card_pcsc_destroy(card_pcsc_t **p_p);

/* The name of the reader in use, borrowed. */
const char *card_pcsc_reader(const card_pcsc_t *p);

/* Sends one command APDU and receives one response APDU into resp (cap bytes).
 * Returns 0 and sets *resp_len; QC_EIO when the card was removed or reset, or the reader
 * failed (card_pcsc_why() says which). */
QC_MUST_CHECK int card_pcsc_transmit(card_pcsc_t *p, const uint8_t *cmd, size_t cmd_len,
                                     uint8_t *resp, size_t cap, size_t *resp_len);

/* The last PC/SC failure as a sentence ("" when none), borrowed. */
const char *card_pcsc_why(const card_pcsc_t *p);

#endif
