/* signer_service.h - the signer's loop: "sign" requests in, a worker pool signing, replies out.
 *
 * The main thread owns the ROUTER socket: it receives "sign" requests, hands them to the
 * worker pool (signer_pool.h) and sends the replies the workers hand back. It never signs.
 * Every signature is reported to the audit log at least once. Start-up fails loudly (a log
 * line naming what is missing) when the module, the token, the PIN or any configured key is
 * missing: there is no software-key fallback. */
#ifndef SIGNER_SERVICE_H
#define SIGNER_SERVICE_H

#include <stdbool.h>
#include <stddef.h>

#include "ops_config.h"
#include "qc_error.h"

typedef struct signer_service signer_service_t;

/* Opens the token, loads the keys of the versions cfg names, starts the workers, binds the
 * socket and connects to the audit log. cfg is borrowed and must outlive the
 * service. Returns 0 and sets *out; QC_ECONFIG, QC_EIO, QC_ENOMEM or the token's QC_E* code
 * (each logged); on error nothing is left running. */
QC_MUST_CHECK int signer_service_new(const ops_config_t *cfg, signer_service_t **out);

/* The signer's /healthz check (an ops_health_fn, called from the HTTP thread): false while
 * the token is unavailable to the workers. */
bool signer_service_healthy(void *svc, char *why, size_t why_cap);

/* Serves until ops_signal_stop_requested(), then gives the jobs in flight a bounded time to
 * finish. Returns 0, or QC_EIO when the socket fails. */
QC_MUST_CHECK int signer_service_run(signer_service_t *svc);

/* Stops the workers, closes the socket and the token, frees svc, nulls *svc_p; accepts NULL. */
void signer_service_destroy(signer_service_t **svc_p);

#endif
