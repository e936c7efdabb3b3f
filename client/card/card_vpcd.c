/* card_vpcd.c - the card's end of a vpcd link (see card_vpcd.h). */
#include "card_vpcd.h"

#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

int card_vpcd_connect(const char *host, uint16_t port, int *fd)
{
    assert(host != NULL);
    assert(fd != NULL);
    *fd = -1;
    char service[8];
    snprintf(service, sizeof(service), "%u", (unsigned)port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host, service, &hints, &res) != 0)
        return QC_EINVAL;
    int rc = QC_EUNAVAIL;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        int s = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (s < 0) {
            rc = QC_EIO;
            continue;
        }
        if (connect(s, ai->ai_addr, ai->ai_addrlen) == 0) {
            int one = 1;
            (void)setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            struct timeval tv = {.tv_sec = CARD_VPCD_TIMEOUT_MS / 1000,
                                 .tv_usec = (CARD_VPCD_TIMEOUT_MS % 1000) * 1000};
            (void)setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
            (void)setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
            *fd = s;
            rc = 0;
            break;
        }
        rc = errno == ECONNREFUSED || errno == ENETUNREACH ? QC_EUNAVAIL : QC_EIO;
        close(s);
    }
    freeaddrinfo(res);
    return rc;
}

/* Reads exactly len bytes. */
static int read_all(int fd, uint8_t *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = recv(fd, buf + got, len - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0)
            return QC_ENOTFOUND;
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? QC_ETIMEOUT : QC_EIO;
        got += (size_t)n;
    }
    return 0;
}

int card_vpcd_recv(int fd, int wait_ms, uint8_t *buf, size_t cap, size_t *len)
{
    assert(fd >= 0);
    assert(buf != NULL);
    assert(len != NULL);
    *len = 0;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int pr = poll(&p, 1, wait_ms);
    if (pr == 0 || (pr < 0 && errno == EINTR))
        return QC_ETIMEOUT;
    if (pr < 0)
        return QC_EIO;
    uint8_t head[CARD_VPCD_HEADER_SIZE];
    int rc = read_all(fd, head, sizeof(head));
    if (rc != 0)
        return rc == QC_ETIMEOUT ? QC_EIO : rc;
    size_t n = ((size_t)head[0] << 8) | head[1];
    if (n > cap)
        return QC_ETOOBIG;
    rc = read_all(fd, buf, n);
    if (rc != 0)
        return rc == QC_ENOTFOUND || rc == QC_ETIMEOUT ? QC_EIO : rc;
    *len = n;
    return 0;
}

int card_vpcd_send(int fd, const uint8_t *buf, size_t len)
{
    assert(fd >= 0);
    assert(buf != NULL);
    if (len == 0 || len > CARD_VPCD_MESSAGE_MAX)
        return QC_EINVAL;
    uint8_t head[CARD_VPCD_HEADER_SIZE] = {(uint8_t)(len >> 8), (uint8_t)len};
    struct iovec iov[2] = {{.iov_base = head, .iov_len = sizeof(head)},
                           {.iov_base = (void *)buf, .iov_len = len}};
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2};
    size_t want = sizeof(head) + len, sent = 0;
    while (sent < want) {
        ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return QC_EIO;
        sent += (size_t)n;
        /* Move the iovecs past what went out. */
        size_t skip = (size_t)n;
        while (msg.msg_iovlen > 0 && skip >= msg.msg_iov[0].iov_len) {
            skip -= msg.msg_iov[0].iov_len;
            msg.msg_iov++;
            msg.msg_iovlen--;
        }
        if (msg.msg_iovlen > 0) {
            msg.msg_iov[0].iov_base = (uint8_t *)msg.msg_iov[0].iov_base + skip;
            msg.msg_iov[0].iov_len -= skip;
        }
    }
    return 0;
}
