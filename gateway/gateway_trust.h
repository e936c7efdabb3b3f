/* gateway_trust.h - the device trust store the gateway checks requests with, kept current.
 *
 * A device revoked in the CA's CRL must stop loading money without a gateway restart. This
 * module owns the trust store (CA bundle and CRL, proto_cert.h) and the certificate cache over
 * it (gateway_certcache.h), and builds both again, from the files:
 *   - when the CRL file changed (inode, size or modification time), looked at no more often
 *     than every GATEWAY_TRUST_POLL_MS, and
 *   - when SIGHUP arrived (the caller passes ops_signal_hup_generation()), which also re-reads
 *     the CA bundle.
 * The new cache starts empty, so no certificate verified under the old CRL is answered from
 * memory. A file that cannot be read or parsed leaves the current store in use (a half-written
 * CRL must not open the door) and is logged as gateway.crl_reload_failed; it is tried again
 * when the file changes again or on the next SIGHUP.
 *
 * A CRL past its nextUpdate refuses every certificate with QC_ECRLSTALE (fail closed) unless
 * the store was made with PROTO_TRUST_STALE_CRL_OK (the gateway's crl_stale = accept). One
 * thread uses it. */
#ifndef GATEWAY_TRUST_H
#define GATEWAY_TRUST_H

#include <stdint.h>

#include "gateway_certcache.h"
#include "qc_error.h"

#define GATEWAY_TRUST_POLL_MS 1000 /* how often the CRL file is looked at (one stat) */

typedef struct gateway_trust gateway_trust_t;

/* Loads ca_path and crl_path (NULL: no CRL, nothing to re-read but the CAs on SIGHUP) with
 * proto_trust_new_ex() flags. hup_generation is the SIGHUP count now. Returns 0 and sets *out,
 * or proto_trust_new_ex()'s codes (QC_EIO, QC_ECERT, QC_ENOMEM). The paths are borrowed and
 * must outlive the store. */
QC_MUST_CHECK int gateway_trust_new(const char *ca_path, const char *crl_path, unsigned flags,
                                    uint64_t hup_generation, gateway_trust_t **out);

/* Frees the store and its cache; nulls *trust_p; accepts NULL. */
void gateway_trust_destroy(gateway_trust_t **trust_p);

/* Re-reads the files when due (see above). now_ms is a monotonic time. Returns 1 when a new
 * store is in use, 0 when nothing changed, or a negative code when re-reading failed (the
 * current store stays in use). */
QC_MUST_CHECK int gateway_trust_poll(gateway_trust_t *t, uint64_t now_ms, uint64_t hup_generation);

/* The certificate cache over the current store: valid until the next gateway_trust_poll(). */
gateway_certcache_t *gateway_trust_certs(gateway_trust_t *t);

#endif
