/* test_card_env.c - the world of the card tests (see test_card_env.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_card_env.h"

#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <winscard.h>

#include "card_store.h"
#include "qc_error.h"
#include "qctest_fs.h"
#include "qctest_port.h"
#include "qctest_proc.h"
#include "wallet_device.h"

#define TC_READER_WAIT_MS 15000
#define TC_POLL_MS 20
#define TC_STOP_WAIT_MS 15000
#define TC_CURRENCY 156

const char *tc_qc_wallet;
const char *tc_qc_card;

/* The process's private pcscd (ops/pcscd), shared by its tests one after another. */
static pid_t pcscd_pid;
static char pcscd_dir[64];               /* /tmp/qc-pcscd-XXXXXX */
static char pcscd_env[TC_PATH_MAX + 32]; /* PCSCLITE_CSOCK_NAME=... for children */
static char vpcd_endpoint[64];

static void devca_path(char *out, size_t cap)
{
    const char *src = getenv("QC_SOURCE_DIR");
    assert_non_null(src);
    snprintf(out, cap, "%s/ops/devca", src);
}

/* Starts argv with output (stdout and stderr) to path, no stdin, QC_FAULT=fault (NULL: none)
 * and the PINs in the environment; returns the child's pid. */
static pid_t spawn_to(const char *path, const char *fault, const char *card_pin, char *const argv[])
{
    char fault_env[TC_PATH_MAX], card_env[64];
    snprintf(fault_env, sizeof(fault_env), "QC_FAULT=%s", fault != NULL ? fault : "");
    snprintf(card_env, sizeof(card_env), "QC_CARD_PIN=%s",
             card_pin != NULL ? card_pin : TC_CARD_PIN);
    const char *env[] = {fault != NULL ? fault_env : "QC_FAULT", "QC_WALLET_PIN=" TC_WALLET_PIN,
                         card_env, pcscd_env[0] != '\0' ? pcscd_env : "PCSCLITE_CSOCK_NAME", NULL};
    qctest_cmd_t cmd = {.argv = argv,
                        .out_path = path,
                        .err_path = path,
                        .truncate = true,
                        .stdin_null = true,
                        .env = env};
    pid_t pid = qctest_spawn(&cmd);
    assert_true(pid >= 0);
    return pid;
}

/* Runs argv as spawn_to() does; returns the exit status or 128 + signal. */
static int run_to(const char *path, const char *fault, const char *card_pin, char *const argv[])
{
    int status = qctest_wait(spawn_to(path, fault, card_pin, argv), QCTEST_WAIT_FOREVER);
    assert_int_not_equal(status, QCTEST_STATUS_RUNNING);
    return qctest_exit_code(status);
}

static void read_output(tc_env_t *e)
{
    qctest_file_read(e->out, e->output, sizeof(e->output));
}

int tc_run(tc_env_t *e, const char *fault, const char *card_pin, char *const argv[])
{
    int rc = run_to(e->out, fault, card_pin, argv);
    read_output(e);
    return rc;
}

void tc_devca(const char *cmd, const char *dir, const char *a1, const char *a2)
{
    char devca[TC_PATH_MAX];
    devca_path(devca, sizeof(devca));
    char out[TC_PATH_MAX + 16];
    snprintf(out, sizeof(out), "%s.devca.log", dir);
    char *argv[] = {devca, (char *)cmd, (char *)dir, (char *)a1, (char *)a2, NULL};
    int rc = run_to(out, NULL, NULL, argv);
    if (rc != 0)
        fail_msg("ops/devca %s %s failed (%d)", cmd, dir, rc);
}

/* Loads wallet_minor into the wallet through the in-test bank (a confirmed load). */
static void wallet_fund(wt_bank_t *b, wallet_device_t *dev, int64_t minor)
{
    const uint8_t *req = NULL, *rep = NULL;
    size_t req_len = 0, rep_len = 0;
    uint8_t *allow = NULL, *outcome = NULL;
    size_t allow_len = 0, outcome_len = 0;
    int verdict = -1, state = 0;
    assert_int_equal(device_core_verify_pin(wallet_device_core(dev), WT_PIN, strlen(WT_PIN)), 0);
    assert_int_equal(device_core_request(wallet_device_core(dev), WT_ACCOUNT, minor, TC_CURRENCY,
                                         &req, &req_len),
                     0);
    wt_make_allow(b, req, req_len, NULL, NULL, &allow, &allow_len);
    assert_int_equal(device_core_judge_allow(wallet_device_core(dev), allow, allow_len, &verdict),
                     0);
    assert_int_equal(verdict, 0);
    assert_int_equal(device_core_report(wallet_device_core(dev), &rep, &rep_len), 0);
    wt_make_outcome(b, rep, rep_len, false, QUANCUN__LOAD_STATE__LOAD_CONFIRMED, NULL, &outcome,
                    &outcome_len);
    assert_int_equal(
        device_core_accept_outcome(wallet_device_core(dev), outcome, outcome_len, &state), 0);
    free(allow);
    free(outcome);
}

tc_env_t *tc_env_new(const char *serial, int64_t wallet_minor, const char *number,
                     const char *max_text, const char *card_trusts)
{
    assert_non_null(tc_qc_wallet);
    tc_env_t *e = calloc(1, sizeof(*e));
    assert_non_null(e);
    e->b = wt_bank_new();
    snprintf(e->serial, sizeof(e->serial), "%s", serial);
    snprintf(e->number, sizeof(e->number), "%s", number);
    snprintf(e->trust, sizeof(e->trust), "%s", number);
    snprintf(e->ca, sizeof(e->ca), "%s/ca", e->b->dir);
    snprintf(e->card_ca, sizeof(e->card_ca), "%s/ca/ca.pem", e->b->dir);
    snprintf(e->card, sizeof(e->card), "%s/card", e->b->dir);
    snprintf(e->out, sizeof(e->out), "%s/out.txt", e->b->dir);
    tc_devca("init", e->ca, NULL, NULL);

    /* The wallet: funded by the in-test bank, certified by the dev CA. */
    wallet_device_t *dev = wt_device_ready(e->b, serial);
    if (wallet_minor > 0)
        wallet_fund(e->b, dev, wallet_minor);
    char csr[TC_PATH_MAX + 32], cert[TC_PATH_MAX + 32];
    snprintf(csr, sizeof(csr), "%s/%s", e->b->home, WALLET_CSR_FILE);
    snprintf(cert, sizeof(cert), "%s/wallet-ca.pem", e->b->dir);
    tc_devca("issue", e->ca, csr, cert);
    assert_int_equal(wallet_device_install_cert(dev, cert), 0);
    wallet_device_destroy(&dev);

    /* The card, personalised by the same CA. */
    char *init[] = {(char *)tc_qc_card,
                    "init",
                    "--home",
                    e->card,
                    "--number",
                    (char *)number,
                    "--max",
                    (char *)max_text,
                    "--trust",
                    (char *)(card_trusts != NULL ? card_trusts : serial),
                    NULL};
    if (tc_run(e, NULL, NULL, init) != 0)
        fail_msg("qc-card init failed: %s", e->output);
    snprintf(csr, sizeof(csr), "%s/%s", e->card, "card.csr");
    snprintf(cert, sizeof(cert), "%s/card-cert.pem", e->b->dir);
    tc_devca("issue", e->ca, csr, cert);
    char *inst[] = {(char *)tc_qc_card, "install-cert", "--home", e->card, "--ca",
                    e->card_ca,         cert,           NULL};
    if (tc_run(e, NULL, NULL, inst) != 0)
        fail_msg("qc-card install-cert failed: %s", e->output);
    return e;
}

void tc_env_free(tc_env_t *e)
{
    if (e == NULL)
        return;
    if (e->card_pid > 0)
        tc_card_stop(e, false);
    wt_bank_free(e->b);
    free(e);
}

void tc_pcscd_start(void)
{
    if (pcscd_pid > 0)
        return;
    qctest_ports_t ports = qctest_ports(TC_PORT_FIRST, TC_PORT_COUNT);
    int port = qctest_port(&ports, 0);
    const char *src = getenv("QC_SOURCE_DIR");
    assert_non_null(src);
    char tmpl[] = "/tmp/qc-pcscd-XXXXXX";
    assert_non_null(mkdtemp(tmpl));
    snprintf(pcscd_dir, sizeof(pcscd_dir), "%s", tmpl);
    char script[TC_PATH_MAX], port_text[16], log[TC_PATH_MAX + 16];
    snprintf(script, sizeof(script), "%s/ops/pcscd", src);
    snprintf(port_text, sizeof(port_text), "%d", port);
    snprintf(log, sizeof(log), "%s/pcscd.log", pcscd_dir);
    char *argv[] = {script, pcscd_dir, port_text, NULL};
    qctest_cmd_t cmd = {.argv = argv, .out_path = log, .err_path = log, .stdin_null = true};
    pcscd_pid = qctest_spawn(&cmd);
    assert_true(pcscd_pid > 0);
    snprintf(pcscd_env, sizeof(pcscd_env), "PCSCLITE_CSOCK_NAME=%s/run/pcscd.comm", pcscd_dir);
    assert_int_equal(setenv("PCSCLITE_CSOCK_NAME", strchr(pcscd_env, '=') + 1, 1), 0);
    snprintf(vpcd_endpoint, sizeof(vpcd_endpoint), "localhost:%d", port);
    /* Ready when its reader is listed. */
    for (int waited = 0; waited < TC_READER_WAIT_MS; waited += TC_POLL_MS) {
        SCARDCONTEXT ctx;
        if (SCardEstablishContext(SCARD_SCOPE_SYSTEM, NULL, NULL, &ctx) == SCARD_S_SUCCESS) {
            DWORD len = 0;
            LONG rv = SCardListReaders(ctx, NULL, NULL, &len);
            SCardReleaseContext(ctx);
            if (rv == SCARD_S_SUCCESS)
                return;
        }
        if (qctest_wait(pcscd_pid, 0) != QCTEST_STATUS_RUNNING) {
            char out[TC_OUTPUT_MAX];
            qctest_file_read(log, out, sizeof(out));
            fail_msg("ops/pcscd exited early:\n%s", out);
        }
        poll(NULL, 0, TC_POLL_MS);
    }
    fail_msg("pcscd did not list its reader");
}

void tc_pcscd_stop(void)
{
    if (pcscd_pid <= 0)
        return;
    int status = qctest_stop(pcscd_pid, SIGTERM);
    pcscd_pid = 0;
    if (status == QCTEST_STATUS_RUNNING)
        fail_msg("pcscd did not stop");
    if (getenv("QC_PCSCD_LOG") == NULL)          /* else kept for its log */
        QC_IGNORE(qctest_dir_remove(pcscd_dir)); /* a temp dir left behind harms nobody */
    pcscd_env[0] = '\0';
}

const char *tc_vpcd(void)
{
    assert_true(pcscd_pid > 0);
    return vpcd_endpoint;
}

void tc_reader_wait(bool present)
{
    /* A new context each time: libpcsclite answers a context from the states it last heard. */
    LONG rv = 0;
    DWORD state = 0;
    for (int waited = 0; waited < TC_READER_WAIT_MS; waited += TC_POLL_MS) {
        SCARDCONTEXT ctx;
        rv = SCardEstablishContext(SCARD_SCOPE_SYSTEM, NULL, NULL, &ctx);
        if (rv == SCARD_S_SUCCESS) {
            SCARD_READERSTATE rs = {.szReader = TC_READER, .dwCurrentState = SCARD_STATE_UNAWARE};
            rv = SCardGetStatusChange(ctx, 0, &rs, 1);
            state = rs.dwEventState;
            SCardReleaseContext(ctx);
            if (rv == SCARD_S_SUCCESS && ((state & SCARD_STATE_PRESENT) != 0) == present)
                return;
        }
        poll(NULL, 0, TC_POLL_MS);
    }
    fail_msg("the reader never showed the card %s (rv 0x%lx, state 0x%lx)",
             present ? "present" : "gone", (unsigned long)rv, (unsigned long)state);
}

void tc_card_start(tc_env_t *e, const char *fault)
{
    assert_int_equal(e->card_pid, 0);
    tc_pcscd_start();
    char log[TC_PATH_MAX + 16];
    snprintf(log, sizeof(log), "%s/card.log", e->b->dir);
    char fault_env[TC_PATH_MAX];
    snprintf(fault_env, sizeof(fault_env), "QC_FAULT=%s", fault != NULL ? fault : "");
    const char *env[] = {fault != NULL ? fault_env : "QC_FAULT", NULL};
    char *argv[] = {(char *)tc_qc_card, "serve",           "--home", e->card,
                    "--vpcd",           (char *)tc_vpcd(), NULL};
    qctest_cmd_t cmd = {.argv = argv, .out_path = log, .err_path = log, .env = env};
    pid_t pid = qctest_spawn(&cmd);
    assert_true(pid >= 0);
    e->card_pid = pid;
    tc_reader_wait(true);
    if (qctest_wait(pid, 0) != QCTEST_STATUS_RUNNING) {
        e->card_pid = 0;
        fail_msg("qc-card serve exited early");
    }
}

void tc_card_stop(tc_env_t *e, bool expect_killed)
{
    assert_true(e->card_pid > 0);
    pid_t pid = e->card_pid;
    e->card_pid = 0;
    if (!expect_killed)
        kill(pid, SIGTERM);
    int status = qctest_wait(pid, TC_STOP_WAIT_MS);
    if (status == QCTEST_STATUS_RUNNING) {
        qctest_stop(pid, SIGKILL);
        fail_msg("the card did not stop in time");
    }
    if (expect_killed && !(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL))
        fail_msg("the card did not die at its fault point (status 0x%x)", status);
    if (!expect_killed && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        fail_msg("the card did not stop cleanly (status 0x%x)", status);
    tc_reader_wait(false);
}

/* The argv of qc-wallet card-transfer AMOUNT against the card (out has 13 slots). */
static void transfer_argv(tc_env_t *e, const char *amount, char *out[13])
{
    char *argv[] = {(char *)tc_qc_wallet,
                    "card-transfer",
                    (char *)amount,
                    "--home",
                    e->b->home,
                    "--reader",
                    TC_READER,
                    "--card-ca",
                    e->card_ca,
                    "--card-trust",
                    e->trust,
                    "--yes",
                    NULL};
    memcpy(out, argv, sizeof(argv));
}

int tc_transfer(tc_env_t *e, const char *amount, const char *fault, const char *card_pin)
{
    char *argv[13];
    transfer_argv(e, amount, argv);
    return tc_run(e, fault, card_pin, argv);
}

pid_t tc_transfer_start(tc_env_t *e, const char *amount)
{
    char *argv[13];
    transfer_argv(e, amount, argv);
    return spawn_to(e->out, NULL, NULL, argv);
}

int tc_sync(tc_env_t *e, const char *fault)
{
    char *argv[] = {(char *)tc_qc_wallet, "card-sync", "--home",    e->b->home,
                    "--reader",           TC_READER,   "--card-ca", e->card_ca,
                    "--card-trust",       e->trust,    NULL};
    return tc_run(e, fault, NULL, argv);
}

int64_t tc_wallet_balance(tc_env_t *e, bool *card_pending)
{
    wallet_device_t *dev = NULL;
    assert_int_equal(wallet_device_open(e->b->home, &dev), 0);
    device_status_t s;
    device_core_status(wallet_device_core(dev), &s);
    wallet_device_destroy(&dev);
    if (card_pending != NULL)
        *card_pending = s.card_pending;
    return s.balance;
}

int64_t tc_card_balance(tc_env_t *e)
{
    card_state_t *st = calloc(1, sizeof(*st));
    assert_non_null(st);
    assert_int_equal(card_state_load(e->card, st), 0);
    int64_t balance = st->balance;
    free(st);
    return balance;
}

bool tc_said(tc_env_t *e, const char *needle)
{
    if (strstr(e->output, needle) != NULL)
        return true;
    print_message("expected \"%s\" in:\n%s\n", needle, e->output);
    return false;
}
