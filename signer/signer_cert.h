/* signer_cert.h - certificates and CSRs for a token key, signed inside the token.
 *
 * Devices are provisioned with "the bank's signing certificate". The key never leaves the
 * token, so OpenSSL cannot sign with it: these functions build the to-be-signed part with
 * OpenSSL, sign its SHA-256 digest with the token (CKM_ECDSA), and assemble the DER. */
#ifndef SIGNER_CERT_H
#define SIGNER_CERT_H

#include <stdint.h>
#include <openssl/x509.h>

#include "signer_token.h"
#include "qc_error.h"

#define SIGNER_CERT_DAYS_DEFAULT 3650
#define SIGNER_CERT_DAYS_MAX 36500
#define SIGNER_CERT_CN_MAX 64

/* Builds a self-signed X.509 v3 certificate for key: subject and issuer CN=common_name,
 * O=quancun, valid from now for days days, a random 128-bit serial, basicConstraints
 * CA:FALSE, keyUsage digitalSignature (critical), subject key identifier. Signed
 * (ecdsa-with-SHA256) by the token through sess, then checked against key's public key.
 * Returns 0 and sets *out (the caller frees it with X509_free); QC_EINVAL (bad days or
 * name), QC_ECRYPTO, or the signing error of signer_session_sign(). */
QC_MUST_CHECK int signer_cert_self_signed(signer_session_t *sess, const signer_key_t *key,
                                          const char *common_name, int days, X509 **out);

/* Builds a PKCS#10 certificate signing request for key, subject CN=common_name, O=quancun,
 * signed by the token through sess and checked. Returns as signer_cert_self_signed();
 * the caller frees *out with X509_REQ_free. */
QC_MUST_CHECK int signer_cert_request(signer_session_t *sess, const signer_key_t *key,
                                      const char *common_name, X509_REQ **out);

#endif
