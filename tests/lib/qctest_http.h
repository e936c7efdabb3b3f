/* qctest_http.h - a plain HTTP/1.0 client for the services' /metrics and /healthz. */
#ifndef QCTEST_HTTP_H
#define QCTEST_HTTP_H

#include <stddef.h>
#include <stdint.h>

#define QCTEST_HTTP_MAX 65536 /* the most of a response that is read */

/* Sends "METHOD path" to 127.0.0.1:port and reads the whole response (status line, headers,
 * body) into resp (capacity cap, NUL-terminated, "" on failure; resp may be NULL). Returns the HTTP
 * status, or -1 when nothing answered or the answer is not HTTP. */
int qctest_http(int port, const char *method, const char *path, char *resp, size_t cap);

/* The body of a response qctest_http() read ("" when it has none). */
const char *qctest_http_body(const char *resp);

/* The value of the first line of port's /metrics that starts with name followed by a space
 * (labels are part of the name), or -1 when there is none. */
int64_t qctest_metric(int port, const char *name);

#endif
