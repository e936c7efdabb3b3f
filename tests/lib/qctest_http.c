/* qctest_http.c - a plain HTTP/1.0 client for tests (see qctest_http.h). */
#include "qctest_http.h"

#include <arpa/inet.h>
#include <assert.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define QCTEST_HTTP_REQUEST_MAX 256

int qctest_http(int port, const char *method, const char *path, char *resp, size_t cap)
{
    assert(method != NULL);
    assert(path != NULL);
    assert(resp == NULL || cap > 0);
    if (resp != NULL)
        resp[0] = '\0';
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char req[QCTEST_HTTP_REQUEST_MAX];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", method, path);
    if (n <= 0 || n >= (int)sizeof req || connect(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    char *buf = malloc(QCTEST_HTTP_MAX);
    size_t got = 0;
    ssize_t r;
    while (buf != NULL && got < QCTEST_HTTP_MAX - 1 &&
           (r = read(fd, buf + got, QCTEST_HTTP_MAX - 1 - got)) > 0)
        got += (size_t)r;
    close(fd);
    if (buf == NULL)
        return -1;
    buf[got] = '\0';
    int status = -1;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
        status = -1;
    if (resp != NULL)
        snprintf(resp, cap, "%s", buf);
    free(buf);
    return status;
}

const char *qctest_http_body(const char *resp)
{
    const char *body = strstr(resp, "\r\n\r\n");
    return body != NULL ? body + 4 : "";
}

int64_t qctest_metric(int port, const char *name)
{
    char *buf = malloc(QCTEST_HTTP_MAX);
    if (buf == NULL || qctest_http(port, "GET", "/metrics", buf, QCTEST_HTTP_MAX) != 200) {
        free(buf);
        return -1;
    }
    int64_t v = -1;
    size_t nl = strlen(name);
    for (const char *line = qctest_http_body(buf); line != NULL && *line != '\0';) {
        const char *next = strchr(line, '\n');
        if (strncmp(line, name, nl) == 0 && line[nl] == ' ') {
            v = strtoll(line + nl + 1, NULL, 10);
            break;
        }
        line = next != NULL ? next + 1 : NULL;
    }
    free(buf);
    return v;
}
