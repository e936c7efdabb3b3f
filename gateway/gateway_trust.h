/* gateway_trust.h - the device trust store the gateway checks requests with, kept current.
 *
 * A device revoked in the CA's CRL must stop loading money without a gateway restart. This
 * module owns a proto_trust_watch (proto_trust_watch.h: the CA bundle and CRL, re-read when
 * the CRL file changes and on SIGHUP, a bad file keeping the current store, a stale CRL
 * failing closed unless crl_stale = accept; events gateway.crl_reloaded,
 * gateway.crl_reload_failed, gateway.crl_missing) and the certificate cache over it
 * (gateway_certcache.h), which is emptied whenever the store is re-read, so no certificate
 * verified under the old CRL is answered from memory. One thread uses it. */
#ifndef GATEWAY_TRUST_H
#define GATEWAY_TRUST_H

#include <stdint.h>

#include "gateway_certcache.h"
#include "proto_trust_watch.h"
#include "qc_error.h"

#define GATEWAY_TRUST_POLL_MS PROTO_TRUST_WATCH_POLL_MS /* how often the CRL file is looked at */

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
