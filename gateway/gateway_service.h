/* gateway_service.h - qc-gateway's service: its CURVE keys, its zmq context and the flow
 * (gateway_flow.h) built from the config and run until a stop is requested. */
#ifndef GATEWAY_SERVICE_H
#define GATEWAY_SERVICE_H

#include <stdbool.h>
#include <stddef.h>

#include "ops_config.h"
#include "qc_error.h"

typedef struct gateway_service gateway_service_t;

/* Loads the key pair of cfg's curve_key and creates the gateway of cfg's keys (gateway_new():
 * trust store, device port, signer and ledger connections). cfg is borrowed and must outlive
 * the service. Returns 0 and sets *out; QC_ECONFIG, QC_EIO, QC_ECERT or QC_ENOMEM (each
 * logged); on error nothing is left running. */
QC_MUST_CHECK int gateway_service_new(const ops_config_t *cfg, gateway_service_t **out);

/* Runs the flow until ops_signal_stop_requested(). Returns 0 or QC_EIO. */
QC_MUST_CHECK int gateway_service_run(gateway_service_t *svc);

/* /healthz (an ops_health_fn, arg the service): false while the gateway sheds audit events
 * or its queue for audit is full (proto_audit_healthy()). */
bool gateway_service_healthy(void *arg, char *why, size_t why_cap);

/* Destroys the gateway and its zmq context, frees svc, nulls *svc_p; accepts NULL. */
void gateway_service_destroy(gateway_service_t **svc_p);

#endif
