/* gateway_verify.h - believes a device-signed envelope only after its certificate and signature.
 *
 * The order is fixed (OpenBSD signify style): size, parse, certificate (chain, validity, CRL,
 * key usage), signature over the exact body bytes, then the body is decoded and its device id
 * compared with the certificate's subject. Nothing of the body is looked at before the
 * signature verified. The certificate check is answered from certs (gateway_certcache.h) when
 * these exact certificate bytes verified recently. */
#ifndef GATEWAY_VERIFY_H
#define GATEWAY_VERIFY_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "gateway_certcache.h"
#include "proto_cert.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "qc_error.h"

/* Verifies a signed LoadRequest from a device. On success *out is the decoded body (free with
 * quancun__load_request__free_unpacked) and digest the SHA-256 of its body bytes.
 * Returns 0, or the code of the first check that failed: QC_ETOOBIG, QC_EDECODE, QC_EMISSING,
 * QC_EALG, QC_ECERT* (including QC_EMISSING when no certificate travels with it),
 * QC_EKEYID, QC_EBADSIG, QC_EAMOUNT, QC_EDEVICEID. *out is NULL on error. */
QC_MUST_CHECK int gateway_verify_request(gateway_certcache_t *certs, const uint8_t *bytes,
                                         size_t len, time_t now, Quancun__LoadRequest **out,
                                         uint8_t digest[PROTO_DIGEST_SIZE]);

/* Same for a signed ExecutionReport. */
QC_MUST_CHECK int gateway_verify_report(gateway_certcache_t *certs, const uint8_t *bytes,
                                        size_t len, time_t now, Quancun__ExecutionReport **out);

#endif
