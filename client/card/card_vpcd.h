/* card_vpcd.h - the card's end of a vsmartcard vpcd link: how qc-card sits in a PC/SC reader.
 *
 * vpcd (Debian package vsmartcard-vpcd) is a pcsc-lite reader driver that listens on TCP
 * (35963 by default; /etc/reader.conf.d/vpcd) for a virtual card. The card connects to it;
 * being connected is being inserted, closing the connection is removal. Each message, both
 * ways, is a 2-byte big-endian length and that many bytes. From the reader, a 1-byte message
 * is a control command (CARD_VPCD_POWER_OFF, _ON, _RESET: no answer; CARD_VPCD_GET_ATR:
 * answer the ATR); a longer one is a command APDU, answered with one response APDU. */
#ifndef CARD_VPCD_H
#define CARD_VPCD_H

#include <stddef.h>
#include <stdint.h>

#include "qc_error.h"

#define CARD_VPCD_PORT_DEFAULT 35963
#define CARD_VPCD_HEADER_SIZE 2
#define CARD_VPCD_MESSAGE_MAX 65535 /* what a 2-byte length can say */
#define CARD_VPCD_TIMEOUT_MS 10000  /* the rest of a message once its first byte arrived */

#define CARD_VPCD_POWER_OFF 0x00
#define CARD_VPCD_POWER_ON 0x01
#define CARD_VPCD_RESET 0x02
#define CARD_VPCD_GET_ATR 0x04

/* Connects to the reader at host:port. Returns 0 and sets *fd, QC_EUNAVAIL (no reader
 * listening), QC_EINVAL (host does not resolve) or QC_EIO. */
QC_MUST_CHECK int card_vpcd_connect(const char *host, uint16_t port, int *fd);

/* Waits up to wait_ms for a message, then reads it whole into buf (cap bytes).
 * Returns 0 and sets *len; QC_ETIMEOUT (nothing within wait_ms: call again); QC_ENOTFOUND
 * (the reader closed the link); QC_ETOOBIG (longer than cap: the link is then unusable);
 * QC_EIO. */
QC_MUST_CHECK int card_vpcd_recv(int fd, int wait_ms, uint8_t *buf, size_t cap, size_t *len);

/* Sends one message of len (1..CARD_VPCD_MESSAGE_MAX) bytes. Returns 0, QC_EINVAL or
 * QC_EIO. */
QC_MUST_CHECK int card_vpcd_send(int fd, const uint8_t *buf, size_t len);

#endif
