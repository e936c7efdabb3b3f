/* proto_rpc.h - authenticated request/reply over ZeroMQ with CURVE, for services and devices.
 *
 * Servers bind a ROUTER socket; clients connect one DEALER per endpoint. Every message is
 * one frame (after the ROUTER's routing id): a protobuf Rpc on the way in, an RpcReply on
 * the way out. Frames over PROTO_RPC_FRAME_MAX are dropped by libzmq (ZMQ_MAXMSGSIZE)
 * before anything parses them. Every socket sends heartbeats (1 s, 3 s timeout), so a dead
 * peer is noticed even when nothing is being sent.
 *
 * Security: every socket uses CURVE. A server runs a ZAP handler (inproc://zeromq.zap.01,
 * in the server's context) that admits only the client public keys of its allow-list, or
 * any key when the list is "*" (the gateway's device port), and sets ZAP_ENFORCE_DOMAIN so
 * that a missing handler fails closed. The admitted key (Z85) reaches every request as
 * peer_key. Refusals are logged and counted.
 *
 * Deadlines travel as budgets, never as clock readings: each send carries Rpc.timeout_ms,
 * what is left of the call's budget at that moment, and the server adds it to its own
 * monotonic clock on receipt (as gRPC's grpc-timeout). No two machines' clocks are ever
 * compared, so a skewed clock cannot make calls vanish. A legacy absolute deadline_ms is
 * honoured only without a budget, and a call past it is answered QC_EEXPIRED with the
 * server's time, never dropped in silence.
 *
 * Clients: request ids, a per-call deadline, bounded retries of idempotent calls with a
 * fresh socket per retry (the zguide's Lazy Pirate), and failover across the endpoints of
 * the service. The endpoint list is re-read on SIGHUP (see ops_signal.h) so an operator
 * can add or remove an instance without restarting callers.
 *
 * Neither a server nor a client is thread-safe: one thread owns each.
 *
 * This header gathers the library's public parts (qcrpc, proto/rpc/), one module each:
 *   proto_curve.h       CURVE key pair files and key lists (allow-lists)
 *   proto_rpc_server.h  the server; its clients admitted by the ZAP handler (rpc_zap.c)
 *   proto_rpc_client.h  the client: endpoints, retries, failover
 *   proto_audit.h       the at-least-once audit event sender, a client of the audit service
 * Each part's header holds its contract, limits, metrics and log events. */
#ifndef PROTO_RPC_H
#define PROTO_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto_curve.h"
#include "proto_decode.h"
#include "proto_rpc_client.h"
#include "proto_rpc_server.h"

#endif
