/* test_wallet_cli.c - qc-wallet as a user runs it, against a stand-in gateway over real
 * CURVE sockets on 127.0.0.1:17700-17702: a load, a bad amount, a wrong PIN, a load whose
 * allow is lost and which `sync` finishes, and a refusal shown plainly.
 * Usage: test_wallet_cli QC_WALLET_BINARY FAKE_GATEWAY_BINARY */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proto_rpc.h"
#include "qc_error.h"
#include "qctest_fs.h"
#include "qctest_proc.h"
#include "wallet_device.h"
#include "wallet_test_bank.h"
#include "qctest_port.h"

/* Port i of the test's range (qc_test_ports in CMakeLists.txt). */
static qctest_ports_t ports;
#define T_PORT(i) qctest_port(&ports, (i))
#define PORT_HAPPY T_PORT(0)
#define PORT_LOSSY T_PORT(1)
#define PORT_REFUSE T_PORT(2)
#define RUN_TIMEOUT_MS 30000
#define READY_TIMEOUT_MS 10000
#define WAIT_STEP_MS 10
#define OUT_MAX 16384
#define ARGS_MAX 24
#define SERIAL "QCCLI0001"

static const char *wallet_bin;
static const char *gateway_bin;
/* When set, run() opens this file as descriptor PIN_FD in the child, for --pin-fd. */
static const char *pin_file;
#define PIN_FD 3
#define PIN_FD_TEXT "3"

typedef struct fixture {
    wt_bank_t *b;
    char gw_keys[WT_PATH_MAX + 64];
    char gw_public[PROTO_CURVE_KEY_Z85_LEN + 1];
    pid_t gateway;
    char out[OUT_MAX];
} fixture_t;

/* Waits for pid to exit within timeout_ms; kills it if it does not. Returns the status. */
static int wait_child(pid_t pid, int timeout_ms)
{
    int status = qctest_wait(pid, timeout_ms);
    if (status == QCTEST_STATUS_RUNNING) {
        qctest_stop(pid, SIGKILL);
        fail_msg("process %d did not finish within %d ms", (int)pid, timeout_ms);
    }
    return status;
}

/* Runs qc-wallet with args (NULL-terminated) and pin in QC_WALLET_PIN (NULL: unset), without
 * a terminal. Returns its exit status; its stdout+stderr are in f->out. */
static int run(fixture_t *f, const char *pin, ...)
{
    const char *args[ARGS_MAX];
    int n = 0;
    args[n++] = wallet_bin;
    va_list ap;
    va_start(ap, pin);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && n < ARGS_MAX - 1)
        args[n++] = a;
    va_end(ap);
    args[n] = NULL;
    char out_path[WT_PATH_MAX + 64];
    snprintf(out_path, sizeof(out_path), "%s/out.txt", f->b->dir);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setsid(); /* no controlling terminal: prompts must fail cleanly, not hang */
        int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int null = open("/dev/null", O_RDONLY);
        if (fd < 0 || null < 0)
            _exit(127);
        dup2(null, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        if (pin_file != NULL) {
            int pfd = open(pin_file, O_RDONLY);
            if (pfd < 0 || dup2(pfd, PIN_FD) < 0)
                _exit(127);
        }
        if (pin != NULL)
            setenv("QC_WALLET_PIN", pin, 1);
        else
            unsetenv("QC_WALLET_PIN");
        execv(wallet_bin, (char *const *)args);
        _exit(127);
    }
    int status = wait_child(pid, RUN_TIMEOUT_MS);
    assert_true(qctest_file_read(out_path, f->out, sizeof(f->out)) >= 0);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

/* Runs qc-wallet and fails with its output when the exit status is not want. */
#define RUN_EXPECT(f, want, ...)                                                                   \
    do {                                                                                           \
        int got_ = run((f), __VA_ARGS__, NULL);                                                    \
        if (got_ != (want))                                                                        \
            fail_msg("exit status %d, want %d; output:\n%s", got_, (want), (f)->out);              \
    } while (0)

static void expect_out(const fixture_t *f, const char *needle)
{
    if (strstr(f->out, needle) == NULL)
        fail_msg("output lacks \"%s\":\n%s", needle, f->out);
}

static void stop_gateway(fixture_t *f)
{
    if (f->gateway <= 0)
        return;
    kill(f->gateway, SIGTERM);
    (void)wait_child(f->gateway, READY_TIMEOUT_MS);
    f->gateway = 0;
}

/* Starts the stand-in gateway on port with extra flags, points wallet.conf at it, and
 * waits until it has bound its socket. */
static void start_gateway(fixture_t *f, int port, const char *flag, const char *value)
{
    stop_gateway(f);
    char endpoint[64], ready[WT_PATH_MAX + 64], allow[WT_PATH_MAX + 64], outcome[WT_PATH_MAX + 64];
    snprintf(endpoint, sizeof(endpoint), "tcp://127.0.0.1:%d", port);
    snprintf(ready, sizeof(ready), "%s/gw-ready-%d", f->b->dir, port);
    snprintf(allow, sizeof(allow), "%s/allow.key", f->b->dir);
    snprintf(outcome, sizeof(outcome), "%s/outcome.key", f->b->dir);
    unlink(ready);
    const char *args[] = {gateway_bin,   "--endpoint", endpoint,        "--keys", f->gw_keys,
                          "--allow-key", allow,        "--outcome-key", outcome,  "--ready",
                          ready,         flag,         value,           NULL};
    pid_t pid = qctest_spawn(&(qctest_cmd_t){.argv = (char *const *)args});
    assert_true(pid >= 0);
    f->gateway = pid;
    int waited = 0;
    while (access(ready, F_OK) != 0) {
        assert_int_equal(qctest_wait(pid, 0), QCTEST_STATUS_RUNNING); /* still running */
        assert_true(waited < READY_TIMEOUT_MS);
        qctest_sleep_ms(WAIT_STEP_MS);
        waited += WAIT_STEP_MS;
    }

    char conf[WT_PATH_MAX + 64];
    snprintf(conf, sizeof(conf), "%s/wallet.conf", f->b->home);
    FILE *fp = fopen(conf, "w");
    assert_non_null(fp);
    fprintf(fp, "# written by the operator\ngateway = %s\ngateway_key = %s\ntimeout_ms = 1000\n",
            endpoint, f->gw_public);
    assert_int_equal(fclose(fp), 0);
}

static int setup_with(void **state, bool pem)
{
    fixture_t *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return -1;
    f->b = wt_bank_new();
    char path[WT_PATH_MAX + 64];
    snprintf(f->gw_keys, sizeof(f->gw_keys), "%s/gateway.key", f->b->dir);
    proto_curve_keypair_t kp;
    assert_int_equal(proto_curve_keypair_create(f->gw_keys, &kp), 0);
    memcpy(f->gw_public, kp.public_z85, sizeof(f->gw_public));
    proto_curve_keypair_wipe(&kp);
    snprintf(path, sizeof(path), "%s/allow.key", f->b->dir);
    qctest_write_private(path, f->b->allow_key);
    snprintf(path, sizeof(path), "%s/outcome.key", f->b->dir);
    qctest_write_private(path, f->b->outcome_key);

    /* The enrollment, as the operator runs it. */
    /* A PEM wallet counts PIN tries in its state file (test_cli_load); the default, a token
     * wallet, has them counted by its token (test_cli_token). */
    if (pem)
        RUN_EXPECT(f, 0, WT_PIN, "init", "--pem-key", "--home", f->b->home, "--serial", SERIAL);
    else
        RUN_EXPECT(f, 0, WT_PIN, "init", "--home", f->b->home, "--serial", SERIAL);
    expect_out(f, "Created device " SERIAL);
    char cert[WT_PATH_MAX + 64], allow[WT_PATH_MAX + 64], outcome[WT_PATH_MAX + 64];
    snprintf(cert, sizeof(cert), "%s/issued.pem", f->b->dir);
    snprintf(allow, sizeof(allow), "%s/allow.pub", f->b->dir);
    snprintf(outcome, sizeof(outcome), "%s/outcome.pub", f->b->dir);
    wt_issue_cert(f->b, cert);
    qctest_write_pubkey(allow, f->b->allow_key);
    qctest_write_pubkey(outcome, f->b->outcome_key);
    RUN_EXPECT(f, 0, NULL, "install-cert", "--home", f->b->home, cert);
    RUN_EXPECT(f, 0, NULL, "install-bank", "--home", f->b->home, "--allow", allow, "--outcome",
               outcome);
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_with(state, true);
}

static int setup_token(void **state)
{
    return setup_with(state, false);
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    if (f->gateway > 0)
        qctest_stop(f->gateway, SIGKILL);
    wt_bank_free(f->b);
    free(f);
    return 0;
}

static int64_t balance_of(fixture_t *f, device_phase_t *phase)
{
    wallet_device_t *dev = NULL;
    assert_int_equal(wallet_device_open(f->b->home, &dev), 0);
    device_status_t s;
    device_core_status(wallet_device_core(dev), &s);
    wallet_device_destroy(&dev);
    if (phase != NULL)
        *phase = s.phase;
    return s.balance;
}

static void test_cli_load(void **state)
{
    fixture_t *f = *state;
    start_gateway(f, PORT_HAPPY, "--lose-load-replies", "0");
    const char *h = f->b->home;

    RUN_EXPECT(f, 0, WT_PIN, "load", "12.34", "--home", h, "--account", WT_ACCOUNT, "--yes");
    expect_out(f, "amount:      12.34");
    expect_out(f, "fee:         none");
    expect_out(f, "new balance: 12.34");
    expect_out(f, "CONFIRMED");
    assert_int_equal(balance_of(f, NULL), 1234);

    /* A bad amount is refused before anything is signed. */
    RUN_EXPECT(f, 2, WT_PIN, "load", "1.234", "--home", h, "--account", WT_ACCOUNT, "--yes");
    expect_out(f, "more than 2 decimals");
    RUN_EXPECT(f, 2, WT_PIN, "load", "-5", "--home", h, "--account", WT_ACCOUNT);
    expect_out(f, "negative");
    RUN_EXPECT(f, 2, WT_PIN, "load", "1", "--home", h, "--account", "two words", "--yes");
    expect_out(f, "not an account id");
    /* Without --yes and without a terminal, nothing is signed either. */
    RUN_EXPECT(f, 1, WT_PIN, "load", "1", "--home", h, "--account", WT_ACCOUNT);
    expect_out(f, "--yes");
    assert_int_equal(wt_log_count(f->b, "\"load.requested\""), 1);

    /* The PIN from a descriptor, as scripts give it. */
    char pin_path[WT_PATH_MAX + 64];
    snprintf(pin_path, sizeof(pin_path), "%s/pin.txt", f->b->dir);
    FILE *pf = fopen(pin_path, "w");
    assert_non_null(pf);
    fprintf(pf, "%s\n", WT_PIN);
    assert_int_equal(fclose(pf), 0);
    pin_file = pin_path;
    RUN_EXPECT(f, 0, NULL, "load", "0.66", "--home", h, "--account", WT_ACCOUNT, "--yes",
               "--pin-fd", PIN_FD_TEXT);
    pin_file = NULL;
    expect_out(f, "new balance: 13.00");
    assert_int_equal(balance_of(f, NULL), 1300);

    /* A wrong PIN is counted and said. */
    RUN_EXPECT(f, 1, "9999", "load", "1", "--home", h, "--account", WT_ACCOUNT, "--yes");
    expect_out(f, "wrong PIN, 2 tries left");

    RUN_EXPECT(f, 0, NULL, "status", "--home", h);
    expect_out(f, "serial:      " SERIAL);
    expect_out(f, "balance:     13.00");
    expect_out(f, "counter:     2");
    expect_out(f, "state:       IDLE");
    expect_out(f, "CONFIRMED");
    RUN_EXPECT(f, 0, NULL, "log", "--home", h);
    expect_out(f, "\"event\":\"load.applied\"");
    RUN_EXPECT(f, 0, NULL, "--help");
    expect_out(f, "install-bank");
    RUN_EXPECT(f, 0, NULL, "sync", "--help");
    expect_out(f, "--gateway-key");
    RUN_EXPECT(f, 2, NULL, "unlock", "--home", h);
    RUN_EXPECT(f, 0, NULL, "unlock", "--home", h, "--admin-reset");
    RUN_EXPECT(f, 2, NULL, "frobnicate");
}

/* The default wallet keeps its keys in a SoftHSM2 token in HOME/token: the same load, the
 * PIN checked and counted by the token, no private key in the home. */
static void test_cli_token(void **state)
{
    fixture_t *f = *state;
    start_gateway(f, PORT_HAPPY, "--lose-load-replies", "0");
    const char *h = f->b->home;
    char key[WT_PATH_MAX + 64];
    snprintf(key, sizeof(key), "%s/%s", h, WALLET_KEY_FILE);
    assert_int_not_equal(access(key, F_OK), 0);

    RUN_EXPECT(f, 0, WT_PIN, "load", "12.34", "--home", h, "--account", WT_ACCOUNT, "--yes");
    expect_out(f, "CONFIRMED");
    assert_int_equal(balance_of(f, NULL), 1234);
    RUN_EXPECT(f, 1, "9999", "load", "1", "--home", h, "--account", WT_ACCOUNT, "--yes");
    expect_out(f, "wrong PIN (the token refused it), 2 tries left");
    RUN_EXPECT(f, 0, NULL, "status", "--home", h); /* reading needs no PIN */
    expect_out(f, "balance:     12.34");
    expect_out(f, "PIN tries:   2 of 3");
    expect_out(f, "keys:        in the PKCS#11 token");
    RUN_EXPECT(f, 1, WT_PIN, "migrate-to-token", "--home", h);
    expect_out(f, "in a token already");
    assert_int_equal(balance_of(f, NULL), 1234);
}

/* Every reply to load is lost while a switch file exists, however often the client retries:
 * the device keeps PENDING; once replies flow again, sync re-sends the same request and the
 * gateway (idempotent by txn) answers with the same allow. */
static void test_cli_lost_allow_then_sync(void **state)
{
    fixture_t *f = *state;
    char lose[WT_PATH_MAX + 64];
    snprintf(lose, sizeof(lose), "%s/lose-load-replies", f->b->dir);
    FILE *sw = fopen(lose, "w");
    assert_non_null(sw);
    assert_int_equal(fclose(sw), 0);
    start_gateway(f, PORT_LOSSY, "--lose-load-while", lose);
    const char *h = f->b->home;
    RUN_EXPECT(f, 1, WT_PIN, "load", "5", "--home", h, "--account", WT_ACCOUNT, "--yes");
    expect_out(f, "sync");
    device_phase_t phase;
    assert_int_equal(balance_of(f, &phase), 0);
    assert_int_equal(phase, DEVICE_PENDING);
    RUN_EXPECT(f, 0, NULL, "status", "--home", h);
    expect_out(f, "state:       PENDING");
    /* Still lost: sync keeps it PENDING too. */
    RUN_EXPECT(f, 1, NULL, "sync", "--home", h);
    expect_out(f, "sync");
    assert_int_equal(unlink(lose), 0);

    RUN_EXPECT(f, 0, NULL, "sync", "--home", h);
    expect_out(f, "CONFIRMED");
    assert_int_equal(balance_of(f, &phase), 500);
    assert_int_equal(phase, DEVICE_IDLE);
    RUN_EXPECT(f, 0, NULL, "sync", "--home", h);
    expect_out(f, "Nothing to synchronise");
    assert_int_equal(wt_log_count(f->b, "\"load.applied\""), 1);
}

static void test_cli_refused(void **state)
{
    fixture_t *f = *state;
    char code[16];
    snprintf(code, sizeof(code), "%d", QC_EFUNDS);
    start_gateway(f, PORT_REFUSE, "--refuse", code);
    RUN_EXPECT(f, 1, WT_PIN, "load", "7.00", "--home", f->b->home, "--account", WT_ACCOUNT,
               "--yes");
    expect_out(f, "insufficient funds");
    expect_out(f, "account acct-cli holds 0.00");
    expect_out(f, "Nothing was debited or credited");
    device_phase_t phase;
    assert_int_equal(balance_of(f, &phase), 0);
    assert_int_equal(phase, DEVICE_IDLE);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s QC_WALLET_BINARY FAKE_GATEWAY_BINARY\n", argv[0]);
        return 2;
    }
    wallet_bin = argv[1];
    ports = qctest_ports(17700, 3);
    gateway_bin = argv[2];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cli_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cli_token, setup_token, teardown),
        cmocka_unit_test_setup_teardown(test_cli_lost_allow_then_sync, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cli_refused, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
