/* gateway_conns.h - the gateway's device connections: their bound, and the memory a flood of
 * them leaves behind.
 *
 * libzmq accepts every TCP connection on the device port and tells nothing about them but
 * through a socket monitor. This module reads that monitor (ZMQ_EVENT_ACCEPTED and
 * ZMQ_EVENT_DISCONNECTED, each naming the connection's descriptor) and keeps, per descriptor,
 * whether the connection is within max_connections ("in") or over it ("over"):
 *
 *  - A connection accepted while max_connections are in is over. Its calls are answered
 *    QC_EBUSY ("the gateway is at its connection limit"), and the connection is then closed
 *    by the gateway, so a device gets a clear answer and its resources come back.
 *  - A connection still over GATEWAY_CONNS_OVER_GRACE_MS after it was accepted, and that made
 *    no call, is closed too: floods of idle or half-open connections do not stay.
 *  - A call on an over connection while fewer than max_connections are in moves it in.
 *
 * Closing is shutdown(2) of the descriptor libzmq owns (libzmq then sees the end of the stream
 * and cleans up as for any lost peer). It is done only when the descriptor still is the same
 * connection: the monitor's events were read just before, and its peer address is still the
 * one read when it was accepted.
 *
 * Memory: the measurement behind issue 21 (DESIGN.md section 6, "Device connections") showed
 * that a flood's memory is not leaked but kept by glibc's allocator, as free space inside the
 * arena of libzmq's I/O thread, which glibc does not give back by itself. After a burst of
 * closed connections (GATEWAY_CONNS_TRIM_CLOSED_MIN) followed by GATEWAY_CONNS_TRIM_QUIET_MS
 * without a close (or, when closes never stop, GATEWAY_CONNS_TRIM_IVL_MAX_MS after the last
 * trim), malloc_trim(0) returns it to the system, logged as gateway.memory_trimmed.
 *
 * Every GATEWAY_CONNS_AUDIT_MS the slots are checked against their descriptors (peer address
 * as at accept), so a connection whose DISCONNECTED never came does not hold its place.
 *
 * Metrics: qc_gateway_connections (open device connections), qc_gateway_connections_over
 * (those over the bound), qc_gateway_connections_refused_total (connections accepted over the
 * bound), qc_gateway_memory_trims_total. Log: gateway.connection_limit (rate limited).
 *
 * One thread owns a gateway_conns_t (the gateway's loop). */
#ifndef GATEWAY_CONNS_H
#define GATEWAY_CONNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qc_error.h"

#define GATEWAY_CONNECTIONS_DEFAULT 4096    /* max_connections when not configured */
#define GATEWAY_CONNECTIONS_MAX 1000000     /* highest max_connections accepted */
#define GATEWAY_CONNS_FDS_RESERVE 256       /* descriptors kept beside max_connections */
#define GATEWAY_CONNS_OVER_GRACE_MS 5000    /* an over connection's time to make its call */
#define GATEWAY_CONNS_CLOSE_DELAY_MS 500    /* from a busy answer to the close: it is sent first */
#define GATEWAY_CONNS_TRIM_CLOSED_MIN 256   /* closed connections that make a trim worth it */
#define GATEWAY_CONNS_TRIM_QUIET_MS 1000    /* ... after this long without one closing */
#define GATEWAY_CONNS_TRIM_IVL_MAX_MS 60000 /* ... or this long after the last trim */
#define GATEWAY_CONNS_AUDIT_MS 5000 /* how often slots are checked against their descriptors */

typedef struct gateway_conns gateway_conns_t;

/* What to do with a call from a connection. */
typedef enum gateway_conns_verdict {
    GATEWAY_CONNS_SERVE = 0,
    GATEWAY_CONNS_BUSY = 1, /* answer QC_EBUSY: the connection is over the bound; it is closed */
} gateway_conns_verdict_t;

/* Starts monitoring router (a bound ROUTER socket of ctx) with a bound of max_connections
 * (1..GATEWAY_CONNECTIONS_MAX). Returns 0, QC_EIO (the monitor) or QC_ENOMEM. */
QC_MUST_CHECK int gateway_conns_new(void *ctx, void *router, int64_t max_connections,
                                    gateway_conns_t **out);

/* The monitor's socket, for zmq_poll() (ZMQ_POLLIN). */
void *gateway_conns_socket(gateway_conns_t *gc);

/* Reads every waiting monitor event, closes the over connections that are due, and trims
 * the heap when a burst of connections has closed. Never blocks. Call it before taking the
 * device's calls of a loop turn (an accepted connection is then known before its calls),
 * and at least every gateway_conns_next_timeout_ms(). */
void gateway_conns_process(gateway_conns_t *gc, uint64_t now_ms);

/* Milliseconds until gateway_conns_process() has work due, -1 when nothing is. */
int gateway_conns_next_timeout_ms(const gateway_conns_t *gc, uint64_t now_ms);

/* The verdict for a call from descriptor fd (proto_rpc_request_t.fd; -1 = unknown, served). */
gateway_conns_verdict_t gateway_conns_admit(gateway_conns_t *gc, int fd, uint64_t now_ms);

/* Open device connections, and how many of them are over the bound. */
int64_t gateway_conns_open(const gateway_conns_t *gc);
int64_t gateway_conns_over(const gateway_conns_t *gc);

/* Checks that the process may open max_connections plus GATEWAY_CONNS_FDS_RESERVE
 * descriptors, raising its soft limit up to the hard one if needed. Returns 0, or QC_ECONFIG
 * with why (the numbers) when the hard limit is too low. */
QC_MUST_CHECK int gateway_conns_check_fds(int64_t max_connections, char *why, size_t why_cap);

/* Stops the monitor and frees gc; nulls *gc_p; accepts NULL. */
void gateway_conns_destroy(gateway_conns_t **gc_p);

#endif
