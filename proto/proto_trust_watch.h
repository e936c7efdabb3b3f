/* proto_trust_watch.h - a device trust store (proto_cert.h) kept current from its files.
 *
 * A device revoked in the CA's CRL must stop loading money without a restart of any service
 * that checks device certificates (the gateway and the ledger). A watch owns a proto_trust_t
 * and builds it again from the files:
 *   - when the CRL file changed (inode, size or modification time), looked at no more often
 *     than every PROTO_TRUST_WATCH_POLL_MS, and
 *   - when SIGHUP arrived (the caller passes ops_signal_hup_generation()), which also re-reads
 *     the CA bundle.
 * A file that cannot be read or parsed leaves the current store in use (a half-written CRL
 * must not open the door) and is logged as <service>.crl_reload_failed; it is tried again
 * when the file changes again or on the next SIGHUP. A CRL file that disappears keeps the
 * current store (<service>.crl_missing, once).
 *
 * A CRL past its nextUpdate refuses every certificate with QC_ECRLSTALE (fail closed) unless
 * the watch was made with PROTO_TRUST_STALE_CRL_OK. One thread uses a watch. */
#ifndef PROTO_TRUST_WATCH_H
#define PROTO_TRUST_WATCH_H

#include <stdint.h>

#include "proto_cert.h"
#include "qc_error.h"

#define PROTO_TRUST_WATCH_POLL_MS 1000 /* how often the CRL file is looked at (one stat) */
#define PROTO_TRUST_WATCH_SERVICE_MAX 32

typedef struct proto_trust_watch proto_trust_watch_t;

/* Loads ca_path and crl_path (NULL: no CRL, nothing to re-read but the CAs on SIGHUP) with
 * proto_trust_new_ex() flags. service names the log events ("gateway" logs
 * gateway.crl_reloaded); hup_generation is the SIGHUP count now. Returns 0 and sets *out, or
 * QC_EINVAL (a service name over PROTO_TRUST_WATCH_SERVICE_MAX), proto_trust_new_ex()'s
 * codes (QC_EIO, QC_ECERT, QC_ENOMEM). The paths are borrowed and must outlive the watch. */
QC_MUST_CHECK int proto_trust_watch_new(const char *service, const char *ca_path,
                                        const char *crl_path, unsigned flags,
                                        uint64_t hup_generation, proto_trust_watch_t **out);

/* Frees the watch and its store; nulls *w_p; accepts NULL. */
void proto_trust_watch_destroy(proto_trust_watch_t **w_p);

/* Re-reads the files when due (see above). now_ms is a monotonic time. Returns 1 when a new
 * store is in use (the previous one is freed: drop every pointer to it), 0 when nothing
 * changed, or a negative code when re-reading failed (the current store stays in use). */
QC_MUST_CHECK int proto_trust_watch_poll(proto_trust_watch_t *w, uint64_t now_ms,
                                         uint64_t hup_generation);

/* The current store: valid until proto_trust_watch_poll() returns 1. */
const proto_trust_t *proto_trust_watch_store(const proto_trust_watch_t *w);

#endif
