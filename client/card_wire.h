/* card_wire.h - the card's contact/RF interface, simulated by a local Unix socket: one
 * frame is a 4-byte big-endian length and that many bytes of a protobuf message
 * (proto/card.proto). The length is checked against CARD_FRAME_MAX before anything is
 * read or parsed, and every read and write has a deadline. */
#ifndef CARD_WIRE_H
#define CARD_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define CARD_FRAME_MAX (40 * 1024) /* a signed envelope (PROTO_ENVELOPE_MAX) and its frame */
#define CARD_FRAME_HEADER 4        /* big-endian length */
#define CARD_IO_TIMEOUT_MS 10000   /* one frame, either direction */
#define CARD_SOCKET_PATH_MAX 107   /* sun_path of Linux, without the NUL */

/* Binds and listens on a Unix socket at path (an old socket file there is replaced).
 * Returns 0 and sets *fd_out, QC_EINVAL (path too long) or QC_EIO. */
int card_wire_listen(const char *path, int *fd_out);

/* Connects to the Unix socket at path. Returns 0 and sets *fd_out, QC_EINVAL (path too
 * long), QC_EUNAVAIL (nobody listens there: no card presented) or QC_EIO. */
int card_wire_connect(const char *path, int *fd_out);

/* Sends one frame of len bytes (1..CARD_FRAME_MAX). Returns 0, QC_EINVAL, QC_ETIMEOUT or
 * QC_EIO (the peer went away). */
int card_wire_send(int fd, const uint8_t *bytes, size_t len, int timeout_ms);

/* Receives one frame into a malloc'd *out (the caller frees it). Returns 0, QC_ENOTFOUND
 * (the peer closed the channel cleanly before a frame), QC_ETOOBIG (length over
 * CARD_FRAME_MAX or zero: nothing more is read), QC_ETIMEOUT, QC_EIO or QC_ENOMEM. */
int card_wire_recv(int fd, int timeout_ms, uint8_t **out, size_t *out_len);

#endif
