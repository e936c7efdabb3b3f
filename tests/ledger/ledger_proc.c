/* ledger_proc.c - runs qc-ledger as a real process for tests and the benchmark. */
#include "ledger_proc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <zmq.h>

#include "ledger_testkit.h"
#include "proto_decode.h"
#include "qc_error.h"

#define LP_READY_MS 15000
#define LP_CALL_MS 5000
#define LP_ARGS_MAX 48
#define LP_PORT_FIRST 17300 /* the ledger's test ports: 17300-17499 */
#define LP_PORT_SPAN 200
#define LP_PORT_STEP 7
#define LP_PORT_TRIES 28

static void path_in(const lp_t *lp, const char *name, char *out)
{
    int n = snprintf(out, LP_PATH_MAX, "%.128s/%.64s", lp->dir, name);
    (void)n;
}

static int write_line(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fprintf(f, "%s\n", text);
    return fclose(f) == 0 ? 0 : -1;
}

/* True when nothing listens on 127.0.0.1:port right now. */
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

/* The same test may run in several build trees at once (each engineer runs the whole
 * suite): when the port is taken, step through the ledger's range for a free one. */
static int pick_port(int port)
{
    for (int i = 0; i < LP_PORT_TRIES; i++) {
        int p = LP_PORT_FIRST + (port - LP_PORT_FIRST + i * LP_PORT_STEP) % LP_PORT_SPAN;
        if (port_free(p))
            return p;
    }
    return port;
}

int lp_free_port(int port)
{
    return pick_port(port);
}

int lp_setup(lp_t *lp, const char *bin, int port)
{
    memset(lp, 0, sizeof *lp);
    lp->pid = -1;
    lp->last_status = -1;
    snprintf(lp->dir, sizeof lp->dir, "/tmp/qc-ledger-proc-XXXXXX");
    if (mkdtemp(lp->dir) == NULL)
        return -1;
    snprintf(lp->bin, sizeof lp->bin, "%s", bin);
    lp->port = pick_port(port);
    snprintf(lp->endpoint, sizeof lp->endpoint, "tcp://127.0.0.1:%d", lp->port);
    char p[LP_PATH_MAX];
    path_in(lp, "server.key", p);
    if (proto_curve_keypair_create(p, &lp->server) != 0)
        return -1;
    path_in(lp, "gateway.key", p);
    if (proto_curve_keypair_create(p, &lp->gateway) != 0)
        return -1;
    path_in(lp, "admin.key", p);
    if (proto_curve_keypair_create(p, &lp->admin) != 0)
        return -1;
    path_in(lp, "allow.keys", p);
    if (write_line(p, lp->gateway.public_z85) != 0)
        return -1;
    path_in(lp, "admin.keys", p);
    if (write_line(p, lp->admin.public_z85) != 0)
        return -1;
    lp->bank = tk_key_new();
    path_in(lp, "allow.pem", p);
    tk_write_pub_pem(lp->bank, p);
    path_in(lp, "data", p);
    if (mkdir(p, 0700) != 0)
        return -1;
    lp->zctx = zmq_ctx_new();
    if (lp->zctx == NULL)
        return -1;
    lp->gw = lp_client(lp, &lp->gateway);
    lp->op = lp_client(lp, &lp->admin);
    return lp->gw != NULL && lp->op != NULL ? 0 : -1;
}

proto_rpc_client_t *lp_client(lp_t *lp, const proto_curve_keypair_t *keys)
{
    proto_rpc_client_config_t cfg = {.service = "ledger",
                                     .endpoints = lp->endpoint,
                                     .server_public_z85 = lp->server.public_z85,
                                     .keys = keys};
    proto_rpc_client_t *cli = NULL;
    return proto_rpc_client_new(lp->zctx, &cfg, &cli) == 0 ? cli : NULL;
}

int lp_call(proto_rpc_client_t *cli, const char *method, const ProtobufCMessage *msg,
            proto_rpc_reply_t **out)
{
    uint8_t *body = NULL;
    size_t len = 0;
    if (msg != NULL && proto_pack(msg, &body, &len) != 0)
        return QC_ENOMEM;
    proto_rpc_reply_t *r = NULL;
    int rc = proto_rpc_client_call(cli, method, body, len, LP_CALL_MS, PROTO_RPC_IDEMPOTENT, &r);
    free(body);
    if (rc != 0)
        return rc;
    rc = r->code;
    if (out != NULL)
        *out = r;
    else
        proto_rpc_reply_destroy(&r);
    return rc;
}

int lp_check(lp_t *lp)
{
    proto_rpc_reply_t *r = NULL;
    Qcledger__CheckRequest req = QCLEDGER__CHECK_REQUEST__INIT;
    if (lp_call(lp->op, "check", &req.base, &r) != 0) {
        proto_rpc_reply_destroy(&r);
        return -1;
    }
    Qcledger__CheckReply *c = qcledger__check_reply__unpack(NULL, r->body_len, r->body);
    proto_rpc_reply_destroy(&r);
    if (c == NULL)
        return -1;
    int ok = c->ok ? 1 : 0;
    for (size_t i = 0; i < c->n_problems; i++)
        fprintf(stderr, "check problem: %s\n", c->problems[i]);
    qcledger__check_reply__free_unpacked(c, NULL);
    return ok;
}

static int lp_start_once(lp_t *lp, const char *fault, int skip, const char *const *extra);

/* True when the log's last lines say the port was taken. */
static bool lost_port_race(const lp_t *lp)
{
    char log[LP_PATH_MAX], line[1024];
    path_in(lp, "ledger.log", log);
    FILE *f = fopen(log, "r");
    bool busy = false;
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        busy = strstr(line, "Address already in use") != NULL || (busy && strstr(line, "ledger."));
    if (f != NULL)
        fclose(f);
    return busy;
}

int lp_start(lp_t *lp, const char *fault, int skip, const char *const *extra)
{
    /* Another build tree running the same test may take our port between the probe and
     * the bind: move to another free port and reconnect the clients. */
    for (int attempt = 0; attempt < LP_PORT_TRIES; attempt++) {
        if (lp_start_once(lp, fault, skip, extra) == 0)
            return 0;
        if (lp->pid > 0 || !lost_port_race(lp))
            return -1;
        lp->port = pick_port(lp->port + 1);
        snprintf(lp->endpoint, sizeof lp->endpoint, "tcp://127.0.0.1:%d", lp->port);
        proto_rpc_client_destroy(&lp->gw);
        proto_rpc_client_destroy(&lp->op);
        lp->gw = lp_client(lp, &lp->gateway);
        lp->op = lp_client(lp, &lp->admin);
        char log[LP_PATH_MAX];
        path_in(lp, "ledger.log", log);
        if (truncate(log, 0) != 0)
            return -1;
    }
    return -1;
}

static int lp_start_once(lp_t *lp, const char *fault, int skip, const char *const *extra)
{
    char data[LP_PATH_MAX], key[LP_PATH_MAX], allow[LP_PATH_MAX], admin[LP_PATH_MAX],
        cert[LP_PATH_MAX], log[LP_PATH_MAX];
    path_in(lp, "data", data);
    path_in(lp, "server.key", key);
    path_in(lp, "allow.keys", allow);
    path_in(lp, "admin.keys", admin);
    path_in(lp, "allow.pem", cert);
    path_in(lp, "ledger.log", log);
    const char *args[LP_ARGS_MAX] = {lp->bin, "--listen",      lp->endpoint, "--curve-key",
                                     key,     "--allow-keys",  allow,        "--admin-keys",
                                     admin,   "--data-dir",    data,         "--allow-cert",
                                     cert,    "--map-size-mb", "256"};
    int n = 15;
    for (int i = 0; extra != NULL && extra[i] != NULL && n < LP_ARGS_MAX - 1; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        FILE *f = freopen(log, "a", stderr);
        (void)f;
        if (fault != NULL) {
            char s[16];
            snprintf(s, sizeof s, "%d", skip);
            setenv("QC_FAULT", fault, 1);
            setenv("QC_FAULT_SKIP", s, 1);
        } else {
            unsetenv("QC_FAULT");
        }
        execv(lp->bin, (char *const *)args);
        _exit(127);
    }
    lp->pid = pid;
    lp->last_status = -1;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            lp->pid = -1;
            fprintf(stderr, "qc-ledger exited at start (status %d), see %s\n", status, log);
            return -1;
        }
        if (lp_check(lp) >= 0)
            return 0;
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) * 1000 > LP_READY_MS)
            return -1;
    }
}

bool lp_alive(lp_t *lp)
{
    if (lp->pid <= 0)
        return false;
    int status;
    if (waitpid(lp->pid, &status, WNOHANG) == lp->pid) {
        lp->pid = -1;
        lp->last_status = status;
        return false;
    }
    return true;
}

int lp_wait_exit(lp_t *lp, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 10) {
        if (!lp_alive(lp))
            return lp->last_status;
        usleep(10000);
    }
    return -1;
}

int lp_stop(lp_t *lp, int sig)
{
    if (lp->pid <= 0)
        return -1;
    int status = 0;
    kill(lp->pid, sig);
    waitpid(lp->pid, &status, 0);
    lp->pid = -1;
    return status;
}

void lp_teardown(lp_t *lp)
{
    if (lp->pid > 0)
        lp_stop(lp, SIGKILL);
    proto_rpc_client_destroy(&lp->gw);
    proto_rpc_client_destroy(&lp->op);
    if (lp->zctx != NULL)
        zmq_ctx_term(lp->zctx);
    lp->zctx = NULL;
    EVP_PKEY_free(lp->bank);
    lp->bank = NULL;
    proto_curve_keypair_wipe(&lp->server);
    proto_curve_keypair_wipe(&lp->gateway);
    proto_curve_keypair_wipe(&lp->admin);
    if (getenv("QC_KEEP_TMP") == NULL && lp->dir[0] != '\0') {
        char cmd[LP_PATH_MAX + 16];
        snprintf(cmd, sizeof cmd, "rm -rf %s", lp->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", lp->dir);
    }
}

int lp_open_account(lp_t *lp, const char *id, uint32_t currency, int64_t load_max)
{
    Qcledger__OpenAccountRequest m = QCLEDGER__OPEN_ACCOUNT_REQUEST__INIT;
    m.account_id = (char *)id;
    m.currency = currency;
    m.load_max = load_max;
    return lp_call(lp->op, "open_account", &m.base, NULL);
}

int lp_deposit(lp_t *lp, const char *id, int64_t amount)
{
    uint8_t txn[16];
    tk_txn_id(txn);
    Qcledger__DepositRequest m = QCLEDGER__DEPOSIT_REQUEST__INIT;
    m.account_id = (char *)id;
    m.amount = amount;
    m.txn_id.data = txn;
    m.txn_id.len = sizeof txn;
    return lp_call(lp->op, "deposit", &m.base, NULL);
}

int lp_enroll(lp_t *lp, const char *account, const uint8_t *cert, size_t cert_len)
{
    Qcledger__EnrollDeviceRequest m = QCLEDGER__ENROLL_DEVICE_REQUEST__INIT;
    m.account_id = (char *)account;
    m.cert.data = (uint8_t *)cert;
    m.cert.len = cert_len;
    return lp_call(lp->op, "enroll_device", &m.base, NULL);
}

int64_t lp_balance(lp_t *lp, const char *id, bool *ok)
{
    Qcledger__GetAccountRequest m = QCLEDGER__GET_ACCOUNT_REQUEST__INIT;
    m.account_id = (char *)id;
    proto_rpc_reply_t *r = NULL;
    *ok = false;
    if (lp_call(lp->op, "get_account", &m.base, &r) != 0) {
        proto_rpc_reply_destroy(&r);
        return 0;
    }
    Qcledger__AccountReply *a = qcledger__account_reply__unpack(NULL, r->body_len, r->body);
    proto_rpc_reply_destroy(&r);
    if (a == NULL || a->account == NULL) {
        if (a != NULL)
            qcledger__account_reply__free_unpacked(a, NULL);
        return 0;
    }
    int64_t b = a->account->balance;
    qcledger__account_reply__free_unpacked(a, NULL);
    *ok = true;
    return b;
}
