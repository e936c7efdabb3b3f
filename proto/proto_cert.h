/* proto_cert.h - X.509 device-certificate verification against a CA bundle and a CRL.
 *
 * The device id is the certificate subject's commonName, never a field of a message alone:
 * callers compare the id in a signed body with the one returned here. */
#ifndef PROTO_CERT_H
#define PROTO_CERT_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <openssl/evp.h>

#include "proto_limits.h"
#include "qc_error.h"

/* Trusted CAs and their CRLs. Opaque; read-only after creation, so one may be shared by
 * threads. */
typedef struct proto_trust proto_trust_t;

/* Loads the CA certificates of ca_pem_path (PEM, one or more) and, when crl_pem_path is not
 * NULL, the CRLs in it (PEM); with a CRL file every certificate is checked for revocation.
 * Returns 0 and sets *out, or QC_EIO (file unreadable), QC_ECERT (file not PEM),
 * QC_ENOMEM. */
QC_MUST_CHECK int proto_trust_new(const char *ca_pem_path, const char *crl_pem_path,
                                  proto_trust_t **out);

/* Flags of proto_trust_new_ex(). */
#define PROTO_TRUST_NO_CHECK_TIME                                                                  \
    0x1u /* ignore validity periods: for judging evidence of what                                  \
            a device did while its certificate was valid */

#define PROTO_TRUST_STALE_CRL_OK                                                                   \
    0x2u /* use a CRL past its nextUpdate; without this flag a                                     \
            certificate checked against one is refused with                                        \
            QC_ECRLSTALE (fail closed) */

/* proto_trust_new() with flags (0 or PROTO_TRUST_*). */
QC_MUST_CHECK int proto_trust_new_ex(const char *ca_pem_path, const char *crl_pem_path,
                                     unsigned flags, proto_trust_t **out);

/* Frees trust and nulls *trust_p; accepts NULL. */
void proto_trust_destroy(proto_trust_t **trust_p);

/* Verifies a DER certificate at time now: chain to a trusted CA, validity period,
 * revocation, key usage (a keyUsage extension that includes digitalSignature), a P-256
 * key, exactly one commonName of 1..PROTO_DEVICE_ID_MAX visible ASCII bytes. On success
 * copies the commonName into device_id (NUL terminated, capacity PROTO_DEVICE_ID_MAX + 1)
 * and, when pub is not NULL, sets *pub to a new reference to the certificate's public key
 * (the caller frees it with EVP_PKEY_free). Returns 0, QC_ETOOBIG, QC_EDECODE, QC_ECERTCA,
 * QC_ECERTEXPIRED, QC_ECERTNOTYET, QC_ECERTREVOKED, QC_ECERTUSAGE, QC_ECRLSTALE (the CRL is
 * past its nextUpdate at now, and trust lacks PROTO_TRUST_STALE_CRL_OK), QC_ECERT (anything
 * else). */
QC_MUST_CHECK int proto_cert_verify(const proto_trust_t *trust, const uint8_t *der, size_t der_len,
                                    time_t now, char device_id[PROTO_DEVICE_ID_MAX + 1],
                                    EVP_PKEY **pub);

/* SHA-256 of a certificate's DER bytes: the fingerprint the ledger stores at enrollment. */
QC_MUST_CHECK int proto_cert_fingerprint(const uint8_t *der, size_t der_len, uint8_t fp[32]);

/* Loads a PEM public key, private key or certificate's key from path into *out (the caller
 * frees it). Returns 0, QC_EIO or QC_ECRYPTO. */
QC_MUST_CHECK int proto_key_load_pem(const char *path, EVP_PKEY **out);

#endif
