/* proto_id.h - the one identifier rule of quancun: what a device id, an account id, a
 * method, an audit source or event type, a card number may be made of.
 *
 * An id is 1..max bytes, each inside one of two alphabets:
 *   PROTO_ID_VISIBLE  visible ASCII without spaces (0x21..0x7e). What the wire accepts in
 *                     bodies (proto_decode), in a device certificate's commonName
 *                     (proto_cert), in the ledger's and audit's keys. protobuf-c hands strings
 *                     over NUL-terminated, so an embedded NUL would silently shorten an id;
 *                     refusing everything outside visible ASCII keeps what the signer meant
 *                     and what we read the same, and refuses NULs, controls and non-ASCII.
 *   PROTO_ID_SERIAL   A-Z a-z 0-9 '-' '_', a subset of the above: device serials and IC card
 *                     numbers, which the device writes in comma-separated trust lists and
 *                     shows to its user, so they carry no punctuation.
 * Limits (max) are the caller's: PROTO_DEVICE_ID_MAX, PROTO_ACCOUNT_ID_MAX, AUDIT_SOURCE_MAX, ...
 */
#ifndef PROTO_ID_H
#define PROTO_ID_H

#include <stddef.h>
#include "qc_error.h"

typedef enum proto_id_alphabet {
    PROTO_ID_VISIBLE = 0,
    PROTO_ID_SERIAL,
} proto_id_alphabet_t;

/* Checks the NUL-terminated id (at most max + 1 bytes of it are read). Returns 0, or
 * QC_EMISSING (NULL or empty), QC_ETOOBIG (longer than max bytes), QC_EDECODE (a byte outside
 * the alphabet). max must be at least 1 (asserted). */
QC_MUST_CHECK int proto_id_check(const char *id, size_t max, proto_id_alphabet_t alphabet);

/* The same rule over exactly len bytes, which need not be NUL-terminated (a certificate's
 * commonName, a name inside an audit record): a NUL among them is outside every alphabet.
 * Returns as proto_id_check() (a NULL id is QC_EMISSING). */
QC_MUST_CHECK int proto_id_check_len(const char *id, size_t len, size_t max,
                                     proto_id_alphabet_t alphabet);

#endif
