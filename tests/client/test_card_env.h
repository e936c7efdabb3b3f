/* test_card_env.h - the world of the card tests: a dev CA (ops/devca), a wallet device with
 * a balance loaded through the in-test bank, a card personalised by that CA, a private pcscd
 * with a vpcd reader (ops/pcscd) for the card to sit in, and helpers that run the real
 * qc-wallet and qc-card binaries (fork/exec) and read both balances. */
#ifndef TEST_CARD_ENV_H
#define TEST_CARD_ENV_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "wallet_test_bank.h"

#define TC_WALLET_PIN WT_PIN
#define TC_CARD_PIN "1357"
#define TC_PATH_MAX 600
#define TC_OUTPUT_MAX 16384
#define TC_READER "Virtual PCD 00 00" /* vpcd's first slot: the port the card connects to */
#define TC_PORT_FIRST 17710           /* tests/client/CMakeLists.txt: qc_test_ports */
#define TC_PORT_COUNT 2               /* vpcd listens on the port and the next one */

typedef struct tc_env {
    wt_bank_t *b;           /* b->dir: the temp dir; b->home: the wallet home */
    char ca[TC_PATH_MAX];   /* the dev CA directory (ops/devca init) */
    char card[TC_PATH_MAX]; /* the card home */
    char out[TC_PATH_MAX];  /* where the last command's output went */
    char serial[64];
    char number[64];
    char trust[256];           /* what qc-wallet is told to trust (--card-trust) */
    char card_ca[TC_PATH_MAX]; /* what qc-wallet is told the card CA is */
    pid_t card_pid;            /* 0 when the card is not serving */
    char output[TC_OUTPUT_MAX];
} tc_env_t;

/* The binaries, from argv (set once by main). */
extern const char *tc_qc_wallet;
extern const char *tc_qc_card;

/* Starts the process's private pcscd (ops/pcscd) on the test's port, once, and points this
 * process's and its children's libpcsclite at it (PCSCLITE_CSOCK_NAME). Asserts on failure.
 * tc_pcscd_stop() ends it. */
void tc_pcscd_start(void);
void tc_pcscd_stop(void);

/* "localhost:PORT", where the card connects to the reader. */
const char *tc_vpcd(void);

/* Waits until the test reader holds a card (present) or not; fails the test after 15 s. */
void tc_reader_wait(bool present);

/* Creates the world: CA, wallet serial with wallet_minor on it, card number with maximum
 * max_text ("100.00") trusting card_trusts (NULL = the wallet serial). Asserts on failure. */
tc_env_t *tc_env_new(const char *serial, int64_t wallet_minor, const char *number,
                     const char *max_text, const char *card_trusts);

/* Stops the card and removes the temp dir. */
void tc_env_free(tc_env_t *e);

/* Runs ops/devca with args (a shell-free argv, NULL terminated after the command). */
void tc_devca(const char *cmd, const char *dir, const char *a1, const char *a2);

/* Runs argv (NULL terminated) with QC_FAULT=fault (NULL: none) and the PINs in the
 * environment; output (stdout and stderr) is in e->output. Returns the exit status, or
 * 128 + signal. */
int tc_run(tc_env_t *e, const char *fault, const char *card_pin, char *const argv[]);

/* Starts `qc-card serve` (QC_FAULT=fault) and waits until the reader holds it. */
void tc_card_start(tc_env_t *e, const char *fault);
/* Reaps a card killed at its fault point (expect_killed) or stops it with SIGTERM, and
 * waits until the reader has noticed it is gone. */
void tc_card_stop(tc_env_t *e, bool expect_killed);

/* Starts qc-wallet card-transfer AMOUNT without waiting (output to e->out); the caller
 * kills and reaps it. */
pid_t tc_transfer_start(tc_env_t *e, const char *amount);

/* qc-wallet card-transfer AMOUNT / card-sync against the card. */
int tc_transfer(tc_env_t *e, const char *amount, const char *fault, const char *card_pin);
int tc_sync(tc_env_t *e, const char *fault);

/* Both balances, read from the state files (the processes must not hold the wallet). */
int64_t tc_wallet_balance(tc_env_t *e, bool *card_pending);
int64_t tc_card_balance(tc_env_t *e);

/* True when e->output contains needle; prints the output when not. */
bool tc_said(tc_env_t *e, const char *needle);

#endif
