/* audit_proc.c - runs qc-audit as a real process for the audit tests. */
#include "audit_proc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "audit.pb-c.h"
#include "proto_decode.h"
#include "qc_error.h"

#define AP_READY_MS 15000
#define AP_CALL_MS 5000
#define AP_ARGS_MAX 48
#define AP_PORT_STEP 7
#define AP_PORT_TRIES 28
#define AP_HTTP_MAX 65536

void ap_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

void ap_path(const ap_t *ap, const char *name, char *out)
{
    snprintf(out, AP_PATH_MAX, "%.160s/%.64s", ap->dir, name);
}

static bool port_free(int port)
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

/* Several build trees may run the suite at once: step through the range for a free port. */
int ap_pick_port(int port, int avoid)
{
    int span = AP_PORT_LAST - AP_PORT_FIRST + 1;
    for (int i = 0; i < AP_PORT_TRIES; i++) {
        int p = AP_PORT_FIRST + (port - AP_PORT_FIRST + i * AP_PORT_STEP) % span;
        if (p != avoid && port_free(p))
            return p;
    }
    return port;
}

static int write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fputs(text, f);
    return fclose(f) == 0 ? 0 : -1;
}

int ap_setup(ap_t *ap, const char *bin, int port)
{
    memset(ap, 0, sizeof *ap);
    ap->pid = -1;
    const char *tmp = getenv("TMPDIR");
    snprintf(ap->dir, sizeof ap->dir, "%.100s/qc-audit-proc-XXXXXX", tmp != NULL ? tmp : "/tmp");
    if (mkdtemp(ap->dir) == NULL)
        return -1;
    snprintf(ap->bin, sizeof ap->bin, "%s", bin);
    ap->port = ap_pick_port(port, -1);
    ap->http_port = ap_pick_port(port + 1, ap->port);
    snprintf(ap->endpoint, sizeof ap->endpoint, "tcp://127.0.0.1:%d", ap->port);
    char p[AP_PATH_MAX];
    ap_path(ap, "audit.key", p);
    if (proto_curve_keypair_create(p, &ap->server) != 0)
        return -1;
    ap_path(ap, "client.key", p);
    if (proto_curve_keypair_create(p, &ap->client) != 0)
        return -1;
    char line[PROTO_CURVE_KEY_Z85_LEN + 2];
    snprintf(line, sizeof line, "%s\n", ap->client.public_z85);
    ap_path(ap, "allow.keys", p);
    if (write_text(p, line) != 0)
        return -1;
    ap_path(ap, "data", p);
    if (mkdir(p, 0700) != 0)
        return -1;
    ap->zctx = zmq_ctx_new();
    if (ap->zctx == NULL)
        return -1;
    proto_rpc_client_config_t cfg = {.service = "audit",
                                     .endpoints = ap->endpoint,
                                     .server_public_z85 = ap->server.public_z85,
                                     .keys = &ap->client};
    return proto_rpc_client_new(ap->zctx, &cfg, &ap->cli) == 0 ? 0 : -1;
}

int ap_http_get(int port, const char *path, char *buf, size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    char req[256];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    char *resp = malloc(AP_HTTP_MAX);
    size_t got = 0;
    ssize_t r;
    while (resp != NULL && got < AP_HTTP_MAX - 1 &&
           (r = read(fd, resp + got, AP_HTTP_MAX - 1 - got)) > 0)
        got += (size_t)r;
    close(fd);
    if (resp == NULL)
        return -1;
    resp[got] = '\0';
    int status = -1;
    if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1)
        status = -1;
    const char *body = strstr(resp, "\r\n\r\n");
    if (buf != NULL && cap > 0)
        snprintf(buf, cap, "%s", body != NULL ? body + 4 : "");
    free(resp);
    return status;
}

int64_t ap_metric(int port, const char *name)
{
    char *buf = malloc(AP_HTTP_MAX);
    if (buf == NULL || ap_http_get(port, "/metrics", buf, AP_HTTP_MAX) != 200) {
        free(buf);
        return -1;
    }
    int64_t v = -1;
    size_t nl = strlen(name);
    for (char *line = buf; line != NULL && *line != '\0';) {
        char *next = strchr(line, '\n');
        if (strncmp(line, name, nl) == 0 && line[nl] == ' ') {
            v = strtoll(line + nl + 1, NULL, 10);
            break;
        }
        line = next != NULL ? next + 1 : NULL;
    }
    free(buf);
    return v;
}

int ap_spawn(ap_t *ap, const char *fault, int skip, const char *const *extra)
{
    char data[AP_PATH_MAX], key[AP_PATH_MAX], allow[AP_PATH_MAX], log[AP_PATH_MAX], http[16];
    ap_path(ap, "data", data);
    ap_path(ap, "audit.key", key);
    ap_path(ap, "allow.keys", allow);
    ap_path(ap, "audit.log", log);
    snprintf(http, sizeof http, "%d", ap->http_port);
    const char *args[AP_ARGS_MAX] = {ap->bin, "--listen",    ap->endpoint, "--curve-key",
                                     key,     "--allow",     allow,        "--data-dir",
                                     data,    "--http-port", http,         "--map-size-mb",
                                     "256",   "--poll-ms",   "20"};
    int n = 15;
    for (int i = 0; extra != NULL && extra[i] != NULL && n < AP_ARGS_MAX - 1; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, STDERR_FILENO);
            dup2(fd, STDOUT_FILENO);
            close(fd);
        }
        if (fault != NULL) {
            char s[16];
            snprintf(s, sizeof s, "%d", skip);
            setenv("QC_FAULT", fault, 1);
            setenv("QC_FAULT_SKIP", s, 1);
        } else {
            unsetenv("QC_FAULT");
            unsetenv("QC_FAULT_SKIP");
        }
        execv(ap->bin, (char *const *)args);
        _exit(127);
    }
    ap->pid = pid;
    return 0;
}

int ap_start(ap_t *ap, const char *fault, int skip, const char *const *extra)
{
    if (ap_spawn(ap, fault, skip, extra) != 0)
        return -1;
    pid_t pid = ap->pid;
    for (int waited = 0; waited < AP_READY_MS; waited += 20) {
        if (ap_http_get(ap->http_port, "/healthz", NULL, 0) == 200)
            return 0;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            ap->pid = -1;
            fprintf(stderr, "qc-audit exited during start (log in %s)\n", ap->dir);
            return -1;
        }
        ap_sleep_ms(20);
    }
    return -1;
}

int ap_wait_exit(ap_t *ap, int timeout_ms)
{
    if (ap->pid <= 0)
        return -1;
    for (int waited = 0; waited <= timeout_ms; waited += 10) {
        int st;
        if (waitpid(ap->pid, &st, WNOHANG) == ap->pid) {
            ap->pid = -1;
            return st;
        }
        ap_sleep_ms(10);
    }
    return -1;
}

int ap_stop(ap_t *ap, int sig)
{
    if (ap->pid <= 0)
        return -1;
    kill(ap->pid, sig);
    int st = ap_wait_exit(ap, 10000);
    if (st == -1 && ap->pid > 0) {
        kill(ap->pid, SIGKILL);
        waitpid(ap->pid, &st, 0);
        ap->pid = -1;
    }
    return st;
}

void ap_teardown(ap_t *ap)
{
    if (ap->pid > 0)
        ap_stop(ap, SIGKILL);
    proto_rpc_client_destroy(&ap->cli);
    if (ap->zctx != NULL)
        zmq_ctx_term(ap->zctx);
    ap->zctx = NULL;
    proto_curve_keypair_wipe(&ap->server);
    proto_curve_keypair_wipe(&ap->client);
    if (ap->dir[0] != '\0' && getenv("QC_KEEP_TMP") == NULL) {
        char cmd[AP_PATH_MAX + 16];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", ap->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", ap->dir);
    }
}

int ap_append(ap_t *ap, const char *source, uint64_t source_seq, const char *type,
              const uint8_t *txn_id, size_t txn_len, const uint8_t *payload, size_t payload_len,
              uint64_t *seq, bool *dup)
{
    Qcaudit__AppendRequest m = QCAUDIT__APPEND_REQUEST__INIT;
    m.source = (char *)source;
    m.source_seq = source_seq;
    m.type = (char *)type;
    m.txn_id.data = (uint8_t *)txn_id;
    m.txn_id.len = txn_len;
    m.payload.data = (uint8_t *)payload;
    m.payload.len = payload_len;
    uint8_t *body = NULL;
    size_t len = 0;
    if (proto_pack(&m.base, &body, &len) != 0)
        return QC_ENOMEM;
    proto_rpc_reply_t *r = NULL;
    int rc =
        proto_rpc_client_call(ap->cli, "append", body, len, AP_CALL_MS, PROTO_RPC_IDEMPOTENT, &r);
    free(body);
    if (rc != 0)
        return rc;
    rc = r->code;
    if (rc == 0) {
        Qcaudit__AppendReply *rep = qcaudit__append_reply__unpack(NULL, r->body_len, r->body);
        if (rep == NULL) {
            rc = QC_EDECODE;
        } else {
            if (seq != NULL)
                *seq = rep->seq;
            if (dup != NULL)
                *dup = rep->duplicate;
            qcaudit__append_reply__free_unpacked(rep, NULL);
        }
    }
    proto_rpc_reply_destroy(&r);
    return rc;
}

int ap_run_cli(const ap_t *ap, const char *const *argv, char *out, size_t cap)
{
    int pipefd[2];
    if (pipe(pipefd) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(pipefd[1], STDOUT_FILENO);
        close(pipefd[0]);
        close(pipefd[1]);
        const char *args[AP_ARGS_MAX];
        int n = 0;
        args[n++] = ap->bin;
        for (int i = 1; argv[i] != NULL && n < AP_ARGS_MAX - 1; i++)
            args[n++] = argv[i];
        args[n] = NULL;
        execv(ap->bin, (char *const *)args);
        _exit(127);
    }
    close(pipefd[1]);
    size_t got = 0;
    ssize_t r;
    char sink[4096];
    while ((r = read(pipefd[0], got + 1 < cap ? out + got : sink,
                     got + 1 < cap ? cap - 1 - got : sizeof sink)) > 0)
        if (got + 1 < cap)
            got += (size_t)r;
    close(pipefd[0]);
    if (cap > 0)
        out[got] = '\0';
    int st;
    if (waitpid(pid, &st, 0) != pid)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}
