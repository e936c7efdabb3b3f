/* qctest_port.c - the loopback ports of a test (see qctest_port.h). */
#include "qctest_port.h"

#include <arpa/inet.h>
#include <assert.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#define QCTEST_PORT_MAX 65535

static int env_int(const char *name, int fallback)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0')
        return fallback;
    char *end = NULL;
    long n = strtol(v, &end, 10);
    if (*end != '\0' || n < 1 || n > QCTEST_PORT_MAX) {
        fprintf(stderr, "qctest: %s=%s is not a port number\n", name, v);
        abort();
    }
    return (int)n;
}

qctest_ports_t qctest_ports(int first, int count)
{
    qctest_ports_t r = {env_int("QC_TEST_PORT_FIRST", first), env_int("QC_TEST_PORT_COUNT", count)};
    assert(r.count > 0);
    assert(r.first + r.count - 1 <= QCTEST_PORT_MAX);
    return r;
}

int qctest_port(const qctest_ports_t *r, int i)
{
    assert(i >= 0);
    assert(i < r->count);
    return r->first + i;
}

bool qctest_port_free(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    bool ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

int qctest_port_pick(const qctest_ports_t *r, int start, int avoid)
{
    assert(r->count > 0);
    int from = ((start - r->first) % r->count + r->count) % r->count; /* wraps into r */
    for (int i = 0; i < QCTEST_PORT_TRIES; i++) {
        int p = r->first + (from + i * QCTEST_PORT_STEP) % r->count;
        if (p != avoid && qctest_port_free(p))
            return p;
    }
    return r->first + from;
}

void qctest_endpoint(int port, char out[QCTEST_ENDPOINT_MAX])
{
    assert(port > 0);
    assert(port <= QCTEST_PORT_MAX);
    snprintf(out, QCTEST_ENDPOINT_MAX, "tcp://127.0.0.1:%d", port);
}
