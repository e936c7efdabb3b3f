/* device_wire.h - the contact between a wallet device and an IC card (proto/card.proto),
 * shared by both ends (qc-wallet's client/wallet/card_host.c, qc-card's client/card/).
 *
 * The card's contact/RF interface is simulated by a local Unix socket: one frame is a 4-byte
 * big-endian length and that many bytes of a protobuf message. The length is checked against
 * DEVICE_WIRE_FRAME_MAX before anything is read or parsed, and every read and write has a
 * deadline. */
#ifndef DEVICE_WIRE_H
#define DEVICE_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "proto_limits.h"
#include "qc_error.h"

#define DEVICE_WIRE_FRAME_MAX                                                                      \
    (40 * 1024)                      /* a signed envelope (PROTO_ENVELOPE_MAX) and its frame       \
                                      */
#define DEVICE_WIRE_HEADER_SIZE 4    /* big-endian length */
#define DEVICE_WIRE_TIMEOUT_MS 10000 /* one frame, either direction */
#define DEVICE_WIRE_PATH_MAX 107     /* sun_path of Linux, without the NUL */

_Static_assert(DEVICE_WIRE_FRAME_MAX >= DEVICE_WIRE_HEADER_SIZE + PROTO_ENVELOPE_MAX + 1024,
               "a card frame holds a signed envelope and its few other fields");
#define DEVICE_CARD_CHALLENGE_SIZE 32 /* each side's fresh random of a contact */

/* Binds and listens on a Unix socket at path (an old socket file there is replaced).
 * Returns 0 and sets *fd_out, QC_EINVAL (path too long) or QC_EIO. */
QC_MUST_CHECK int device_wire_listen(const char *path, int *fd_out);

/* Connects to the Unix socket at path. Returns 0 and sets *fd_out, QC_EINVAL (path too
 * long), QC_EUNAVAIL (nobody listens there: no card presented) or QC_EIO. */
QC_MUST_CHECK int device_wire_connect(const char *path, int *fd_out);

/* Sends one frame of len bytes (1..DEVICE_WIRE_FRAME_MAX). Returns 0, QC_EINVAL, QC_ETIMEOUT or
 * QC_EIO (the peer went away). */
QC_MUST_CHECK int device_wire_send(int fd, const uint8_t *bytes, size_t len, int timeout_ms);

/* Receives one frame into a malloc'd *out (the caller frees it). Returns 0, QC_ENOTFOUND
 * (the peer closed the channel cleanly before a frame), QC_ETOOBIG (length over
 * DEVICE_WIRE_FRAME_MAX or zero: nothing more is read), QC_ETIMEOUT, QC_EIO or QC_ENOMEM. */
QC_MUST_CHECK int device_wire_recv(int fd, int timeout_ms, uint8_t **out, size_t *out_len);

#endif
