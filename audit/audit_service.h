/* audit_service.h - qc-audit's service: the log (audit_store.h) fed by the append intake, the
 * ledger outbox relay and the signed checkpoints, each started from the config.
 *
 * The intake runs on the calling thread (audit_service_run()); the relay and the checkpoints on
 * threads of their own. A reply to append or an outbox ack means the event is durable. */
#ifndef AUDIT_SERVICE_H
#define AUDIT_SERVICE_H

#include <stdbool.h>
#include <stddef.h>

#include "ops_config.h"
#include "qc_error.h"

#define AUDIT_RELAY_STALE_MS 30000 /* /healthz fails when no relay round succeeded since */

typedef struct audit_service audit_service_t;

/* Opens the log in cfg's data_dir, binds the intake, and starts the relay (when a ledger is
 * configured) and the checkpoints (when a signer is). cfg is borrowed and must outlive the
 * service. Returns 0 and sets *out; QC_ECONFIG, QC_EIO, QC_ENOMEM, QC_EINTERNAL (each logged);
 * on error nothing is left running. */
QC_MUST_CHECK int audit_service_new(const ops_config_t *cfg, audit_service_t **out);

/* The service's /healthz check (an ops_health_fn, called from the HTTP thread): false when no
 * ledger shard round of the relay succeeded for AUDIT_RELAY_STALE_MS. */
bool audit_service_healthy(void *svc, char *why, size_t why_cap);

/* Serves append until ops_signal_stop_requested(). Returns 0 or the intake's QC_E* code. */
QC_MUST_CHECK int audit_service_run(audit_service_t *svc);

/* Requests a stop, joins the relay and checkpoint threads, closes the log, frees svc, nulls
 * *svc_p; accepts NULL. */
void audit_service_destroy(audit_service_t **svc_p);

#endif
