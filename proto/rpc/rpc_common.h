/* rpc_common.h - what the modules of proto/rpc share: socket options, name and key checks,
 * per-service counters. Internal to qcrpc, but for the ledger's replica links
 * (ledger/ledger_raftnet.c), which use rpc_zap.h and give their sockets the same options. */
#ifndef RPC_COMMON_H
#define RPC_COMMON_H

#include <stdbool.h>

#include "ops_metrics.h"
#include "qc_error.h"

#define PROTO_RPC_HEARTBEAT_IVL_MS 1000
#define PROTO_RPC_HEARTBEAT_TIMEOUT_MS 3000
#define PROTO_RPC_SERVICE_MAX 64 /* service names in logs, metrics, ZAP domains */

/* The counter name{service="service"}; the metric name must fit PROTO_RPC_METRIC_NAME_MAX
 * (asserted). */
ops_counter_t *rpc_counter(const char *name, const char *service, const char *help);

/* zmq_setsockopt() of an int option; returns its result. */
QC_MUST_CHECK int rpc_setsockopt_int(void *sock, int option, int value);

/* Options every socket of this library shares: no lingering on close, the frame limit
 * (PROTO_RPC_FRAME_MAX), and heartbeats. Returns 0 or QC_EIO. */
QC_MUST_CHECK int rpc_socket_common(void *sock);

/* Reads the rest of a multipart message so the next recv starts on a boundary. */
void rpc_drain(void *sock);

/* True when z85 is a well-formed Z85 CURVE key (PROTO_CURVE_KEY_Z85_LEN characters). */
bool rpc_z85_key_valid(const char *z85);

/* A service name goes into metric labels, log lines and ZAP domains: letters, digits, '_',
 * '-' and '.', at most PROTO_RPC_SERVICE_MAX. */
bool rpc_service_valid(const char *name);

/* Trims leading and trailing blanks (and a line end) in place; returns the start. */
char *rpc_trim(char *s);

#endif
