/* audit_proc.c - runs qc-audit as a real process for the tests (see audit_proc.h). */
#include "audit_proc.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <zmq.h>

#include "audit.pb-c.h"
#include "proto_decode.h"
#include "qc_error.h"
#include "qctest_http.h"
#include "qctest_port.h"
#include "qctest_proc.h"
#include "qctest_store.h"

#define AP_READY_MS 15000
#define AP_CALL_MS 5000
#define AP_ARGS_MAX 48

void ap_path(const ap_t *ap, const char *name, char *out)
{
    qctest_path(ap->dir, name, out);
}

/* Steps through the test's range for a free port: the range CTest gave the test
 * (qc_test_ports), or the audit's when it runs by hand. */
int ap_pick_port(int port, int avoid)
{
    qctest_ports_t range = qctest_ports(AP_PORT_FIRST, AP_PORT_LAST - AP_PORT_FIRST + 1);
    return qctest_port_pick(&range, port, avoid);
}

int ap_setup(ap_t *ap, const char *bin, int port)
{
    memset(ap, 0, sizeof *ap);
    ap->pid = -1;
    if (qctest_dir_new("qc-audit-proc", ap->dir) != 0)
        return -1;
    snprintf(ap->bin, sizeof ap->bin, "%s", bin);
    ap->port = ap_pick_port(port, -1);
    ap->http_port = ap_pick_port(port + 1, ap->port);
    qctest_endpoint(ap->port, ap->endpoint);
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
    if (qctest_file_write(p, line) != 0)
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
    if (!ap->no_init && qctest_store_init(args, data, log) != 0)
        return -1;
    char fault_env[AP_PATH_MAX], skip_env[32];
    snprintf(fault_env, sizeof fault_env, "QC_FAULT=%s", fault != NULL ? fault : "");
    snprintf(skip_env, sizeof skip_env, "QC_FAULT_SKIP=%d", skip);
    const char *env[] = {fault != NULL ? fault_env : "QC_FAULT",
                         fault != NULL ? skip_env : "QC_FAULT_SKIP", NULL};
    qctest_cmd_t cmd = {.argv = (char *const *)args, .out_path = log, .err_path = log, .env = env};
    pid_t pid = qctest_spawn(&cmd);
    if (pid < 0)
        return -1;
    ap->pid = pid;
    return 0;
}

int ap_start(ap_t *ap, const char *fault, int skip, const char *const *extra)
{
    if (ap_spawn(ap, fault, skip, extra) != 0)
        return -1;
    pid_t pid = ap->pid;
    for (int waited = 0; waited < AP_READY_MS; waited += 20) {
        if (qctest_http(ap->http_port, "GET", "/healthz", NULL, 0) == 200)
            return 0;
        if (qctest_wait(pid, 0) != QCTEST_STATUS_RUNNING) {
            ap->pid = -1;
            fprintf(stderr, "qc-audit exited during start (log in %s)\n", ap->dir);
            return -1;
        }
        qctest_sleep_ms(20);
    }
    return -1;
}

int ap_wait_exit(ap_t *ap, int timeout_ms)
{
    if (ap->pid <= 0)
        return -1;
    int st = qctest_wait(ap->pid, timeout_ms);
    if (st != QCTEST_STATUS_RUNNING)
        ap->pid = -1;
    return st;
}

int ap_stop(ap_t *ap, int sig)
{
    if (ap->pid <= 0)
        return -1;
    int st = qctest_stop(ap->pid, sig);
    ap->pid = -1;
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
    if (qctest_dir_remove(ap->dir) != 0)
        fprintf(stderr, "could not remove %s\n", ap->dir);
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
    const char *args[AP_ARGS_MAX];
    int n = 0;
    args[n++] = ap->bin;
    for (int i = 1; argv[i] != NULL && n < AP_ARGS_MAX - 1; i++)
        args[n++] = argv[i];
    args[n] = NULL;
    char path[AP_PATH_MAX];
    ap_path(ap, "cli.out", path);
    qctest_cmd_t cmd = {.argv = (char *const *)args, .out_path = path, .truncate = true};
    int rc = qctest_run(&cmd);
    if (cap > 0 && qctest_file_read(path, out, cap) < 0)
        out[0] = '\0';
    return rc;
}
