/* proto_ecdsa.h - ECDSA P-256 signature encodings: raw r||s (PKCS#11) and DER (OpenSSL). */
#ifndef PROTO_ECDSA_H
#define PROTO_ECDSA_H

#include <stddef.h>
#include <stdint.h>

#include "proto_envelope.h"
#include "qc_error.h"

/* Encodes raw (r || s, 32 bytes each, big-endian) as a DER ECDSA-Sig-Value into der
 * (capacity der_cap, PROTO_SIG_DER_MAX is always enough). Leading zero bytes are stripped
 * and a 0x00 is prepended where the high bit is set, as DER requires.
 * Returns 0 and sets *der_len, or QC_EINVAL (r or s zero, der_cap too small). */
QC_MUST_CHECK int proto_ecdsa_raw_to_der(const uint8_t raw[PROTO_SIG_RAW_SIZE], uint8_t *der,
                                         size_t der_cap, size_t *der_len);

/* Decodes a strict DER ECDSA-Sig-Value into raw r || s, left-padded with zeros.
 * Returns 0, or QC_EDECODE for anything that is not minimal DER of two positive integers
 * of at most 32 significant bytes each; raw is untouched on error. */
QC_MUST_CHECK int proto_ecdsa_der_to_raw(const uint8_t *der, size_t der_len,
                                         uint8_t raw[PROTO_SIG_RAW_SIZE]);

/* Every ECDSA signature (r, s) has a twin, (r, n - s), that verifies as well; quancun
 * accepts only the low form, s <= n/2 (n the order of P-256), so each signature has one
 * encoding (the rule of BIP 62 and of libsecp256k1). */

/* Replaces s by n - s when s > n/2, in place. Returns 1 when s was changed, 0 when it was
 * already low, QC_EINVAL (raw untouched) when s >= n, which no signer may return. Signers
 * call it after C_Sign or EVP_PKEY_sign. */
int proto_ecdsa_raw_low_s(uint8_t raw[PROTO_SIG_RAW_SIZE]);

/* Returns 1 when raw's s is at most n/2, 0 otherwise. */
int proto_ecdsa_raw_is_low_s(const uint8_t raw[PROTO_SIG_RAW_SIZE]);

#endif
