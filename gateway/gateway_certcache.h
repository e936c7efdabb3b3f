/* gateway_certcache.h - device certificates the gateway verified recently, by fingerprint.
 *
 * Every device message carries its certificate, and verifying it (DER parse, chain, CRL,
 * key usage, public key decode) costs more CPU than the message's own signature check: it was
 * the larger half of the gateway's CPU per load. A device sends the same bytes for every
 * request and report, so the gateway keeps, for each certificate it verified, the outcome
 * (device id and public key) under SHA-256 of its DER bytes, and answers from it while
 *   - the entry is younger than GATEWAY_CERTCACHE_TTL_S (so a CRL that expires is seen
 *     within that time; a new CRL file gets a new, empty cache: gateway_trust.h), and
 *   - now is still inside the certificate's validity period (checked on every hit).
 * Only successful verifications are kept; a refused certificate is verified again each time.
 * The cache is direct-mapped (a newer certificate evicts the one in its slot) and bounded by
 * GATEWAY_CERTCACHE_SLOTS. One thread uses it. */
#ifndef GATEWAY_CERTCACHE_H
#define GATEWAY_CERTCACHE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/evp.h>

#include "proto_cert.h"
#include "proto_envelope.h"
#include "qc_error.h"

#define GATEWAY_CERTCACHE_SLOTS 16384 /* power of two */
#define GATEWAY_CERTCACHE_TTL_S 60

typedef struct gateway_certcache gateway_certcache_t;

/* Creates an empty cache over trust (borrowed: it must outlive the cache). Returns 0 and sets
 * *out, or QC_ENOMEM. */
QC_MUST_CHECK int gateway_certcache_new(const proto_trust_t *trust, gateway_certcache_t **out);

/* Empties the cache and binds it to trust (borrowed), allocating nothing: after a new trust
 * store, nothing verified under the old one is answered from memory. */
void gateway_certcache_rebind(gateway_certcache_t *c, const proto_trust_t *trust);

/* Frees every entry and the cache; nulls *cache_p; accepts NULL. */
void gateway_certcache_destroy(gateway_certcache_t **cache_p);

/* Same contract as proto_cert_verify() with pub required: *pub is a new reference the caller
 * frees. Answers from the cache under the rules above, else verifies with proto_cert_verify()
 * and remembers a success. */
QC_MUST_CHECK int gateway_certcache_verify(gateway_certcache_t *c, const uint8_t *der,
                                           size_t der_len, time_t now,
                                           char device_id[PROTO_DEVICE_ID_MAX + 1], EVP_PKEY **pub);

/* The same check, answering with the certificate's key prepared for verifying signatures
 * (proto_envelope_verify_prepared()), borrowed: valid until the next call on c. This is what
 * the gateway uses per message: the key id and OpenSSL's verify context are made once per
 * cached certificate, not once per signature. */
QC_MUST_CHECK int gateway_certcache_verifier(gateway_certcache_t *c, const uint8_t *der,
                                             size_t der_len, time_t now,
                                             char device_id[PROTO_DEVICE_ID_MAX + 1],
                                             proto_verifier_t **ver);

/* Hits and misses so far, for /metrics and the benchmark. */
void gateway_certcache_stats(const gateway_certcache_t *c, uint64_t *hits, uint64_t *misses);

#endif
