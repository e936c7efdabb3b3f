/* device_wire.c - length-prefixed frames over a Unix socket with deadlines. */
#include "device_wire.h"

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ops_time.h"
#include "qc_error.h"

#define DEVICE_WIRE_BACKLOG 4

static int make_addr(const char *path, struct sockaddr_un *addr)
{
    size_t n = strlen(path);
    if (n == 0 || n > DEVICE_WIRE_PATH_MAX || n >= sizeof(addr->sun_path))
        return QC_EINVAL;
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    memcpy(addr->sun_path, path, n + 1);
    return 0;
}

int device_wire_listen(const char *path, int *fd_out)
{
    assert(path != NULL);
    assert(fd_out != NULL);
    struct sockaddr_un addr;
    if (make_addr(path, &addr) != 0)
        return QC_EINVAL;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return QC_EIO;
    (void)unlink(path); /* a socket file left by a card that was killed */
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
        listen(fd, DEVICE_WIRE_BACKLOG) != 0) {
        close(fd);
        return QC_EIO;
    }
    *fd_out = fd;
    return 0;
}

int device_wire_connect(const char *path, int *fd_out)
{
    assert(path != NULL);
    assert(fd_out != NULL);
    struct sockaddr_un addr;
    if (make_addr(path, &addr) != 0)
        return QC_EINVAL;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return QC_EIO;
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        int err = errno;
        close(fd);
        return err == ENOENT || err == ECONNREFUSED ? QC_EUNAVAIL : QC_EIO;
    }
    *fd_out = fd;
    return 0;
}

/* Waits until fd is ready for events or the deadline (monotonic ms) passes. */
static int wait_fd(int fd, short events, uint64_t deadline_ms)
{
    for (;;) {
        uint64_t now = ops_time_mono_ms();
        if (now >= deadline_ms)
            return QC_ETIMEOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int pr = poll(&p, 1, (int)(deadline_ms - now));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr < 0)
            return QC_EIO;
        if (pr > 0)
            return 0;
    }
}

static int write_full(int fd, const uint8_t *p, size_t len, uint64_t deadline_ms)
{
    while (len > 0) {
        int rc = wait_fd(fd, POLLOUT, deadline_ms);
        if (rc != 0)
            return rc;
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0)
            return QC_EIO;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Reads exactly len bytes; *got counts what arrived, so a clean close is told apart. */
static int read_full(int fd, uint8_t *p, size_t len, uint64_t deadline_ms, size_t *got)
{
    *got = 0;
    while (*got < len) {
        int rc = wait_fd(fd, POLLIN, deadline_ms);
        if (rc != 0)
            return rc;
        ssize_t n = recv(fd, p + *got, len - *got, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0)
            return QC_EIO;
        *got += (size_t)n;
    }
    return 0;
}

int device_wire_send(int fd, const uint8_t *bytes, size_t len, int timeout_ms)
{
    assert(fd >= 0);
    assert(timeout_ms > 0);
    if (bytes == NULL || len == 0 || len > DEVICE_WIRE_FRAME_MAX)
        return QC_EINVAL;
    uint64_t deadline = ops_time_mono_ms() + (uint64_t)timeout_ms;
    uint8_t hdr[DEVICE_WIRE_HEADER_SIZE] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16),
                                            (uint8_t)(len >> 8), (uint8_t)len};
    int rc = write_full(fd, hdr, sizeof(hdr), deadline);
    if (rc == 0)
        rc = write_full(fd, bytes, len, deadline);
    return rc;
}

int device_wire_recv(int fd, int timeout_ms, uint8_t **out, size_t *out_len)
{
    assert(fd >= 0);
    assert(timeout_ms > 0);
    assert(out != NULL);
    assert(out_len != NULL);
    *out = NULL;
    *out_len = 0;
    uint64_t deadline = ops_time_mono_ms() + (uint64_t)timeout_ms;
    uint8_t hdr[DEVICE_WIRE_HEADER_SIZE];
    size_t got = 0;
    int rc = read_full(fd, hdr, sizeof(hdr), deadline, &got);
    if (rc == QC_EIO && got == 0)
        return QC_ENOTFOUND;
    if (rc != 0)
        return rc;
    uint32_t len =
        (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | (uint32_t)hdr[3];
    if (len == 0 || len > DEVICE_WIRE_FRAME_MAX)
        return QC_ETOOBIG; /* checked before a byte of the body is read or parsed */
    uint8_t *buf = malloc(len);
    if (buf == NULL)
        return QC_ENOMEM;
    rc = read_full(fd, buf, len, deadline, &got);
    if (rc != 0) {
        free(buf);
        return rc;
    }
    *out = buf;
    *out_len = len;
    return 0;
}
