/* rpc_common.c - what the modules of proto/rpc share. */
#include "rpc_common.h"

#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <zmq.h>

#include "proto_curve.h"
#include "proto_decode.h"
#include "qc_error.h"

#define PROTO_RPC_METRIC_NAME_MAX 160

ops_counter_t *rpc_counter(const char *name, const char *service, const char *help)
{
    char full[PROTO_RPC_METRIC_NAME_MAX];
    int n = snprintf(full, sizeof full, "%s{service=\"%s\"}", name, service);
    assert(n > 0);
    assert((size_t)n < sizeof full);
    return ops_counter(full, help);
}

int rpc_setsockopt_int(void *sock, int option, int value)
{
    return zmq_setsockopt(sock, option, &value, sizeof value);
}

/* Options every socket of this library shares: no lingering on close, the frame limit, and
 * heartbeats so a dead peer is noticed even when nothing is being sent. */
int rpc_socket_common(void *sock)
{
    int64_t max = PROTO_RPC_FRAME_MAX;
    if (rpc_setsockopt_int(sock, ZMQ_LINGER, 0) != 0 ||
        zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &max, sizeof max) != 0 ||
        rpc_setsockopt_int(sock, ZMQ_HEARTBEAT_IVL, PROTO_RPC_HEARTBEAT_IVL_MS) != 0 ||
        rpc_setsockopt_int(sock, ZMQ_HEARTBEAT_TIMEOUT, PROTO_RPC_HEARTBEAT_TIMEOUT_MS) != 0 ||
        rpc_setsockopt_int(sock, ZMQ_HEARTBEAT_TTL, PROTO_RPC_HEARTBEAT_TIMEOUT_MS) != 0)
        return QC_EIO;
    return 0;
}

bool rpc_z85_key_valid(const char *z85)
{
    uint8_t raw[32];
    if (strlen(z85) != PROTO_CURVE_KEY_Z85_LEN)
        return false;
    return zmq_z85_decode(raw, z85) != NULL;
}

/* A service name goes into metric labels, log lines and ZAP domains: letters, digits, '_',
 * '-' and '.', at most PROTO_RPC_SERVICE_MAX. */
bool rpc_service_valid(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > PROTO_RPC_SERVICE_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-' || c == '.';
        if (!ok)
            return false;
    }
    return true;
}

/* Trims leading and trailing blanks in place; returns the start. */
char *rpc_trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

void rpc_drain(void *sock)
{
    int more = 0;
    size_t len = sizeof more;
    while (zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &len) == 0 && more) {
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        int n = zmq_msg_recv(&msg, sock, ZMQ_DONTWAIT);
        zmq_msg_close(&msg);
        if (n < 0)
            break;
        len = sizeof more;
    }
}
