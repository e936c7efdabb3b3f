/* proto_ecdsa.h - ECDSA P-256 signature encodings: raw r||s (PKCS#11) and DER (OpenSSL). */
#ifndef PROTO_ECDSA_H
#define PROTO_ECDSA_H

#include <stddef.h>
#include <stdint.h>

#include "proto_envelope.h"

/* Encodes raw (r || s, 32 bytes each, big-endian) as a DER ECDSA-Sig-Value into der
 * (capacity der_cap, PROTO_SIG_DER_MAX is always enough). Leading zero bytes are stripped
 * and a 0x00 is prepended where the high bit is set, as DER requires.
 * Returns 0 and sets *der_len, or QC_EINVAL (r or s zero, der_cap too small). */
int proto_ecdsa_raw_to_der(const uint8_t raw[PROTO_SIG_RAW_SIZE], uint8_t *der, size_t der_cap,
                           size_t *der_len);

/* Decodes a strict DER ECDSA-Sig-Value into raw r || s, left-padded with zeros.
 * Returns 0, or QC_EDECODE for anything that is not minimal DER of two positive integers
 * of at most 32 significant bytes each; raw is untouched on error. */
int proto_ecdsa_der_to_raw(const uint8_t *der, size_t der_len, uint8_t raw[PROTO_SIG_RAW_SIZE]);

#endif
