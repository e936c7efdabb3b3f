/* signer_test_util.h - helpers for the signer tests: a SoftHSM2 token in a temporary dir. */
#ifndef SIGNER_TEST_UTIL_H
#define SIGNER_TEST_UTIL_H

#include <stddef.h>

#define SIGNER_TEST_DIR_MAX 256
#define SIGNER_TEST_PATH_MAX 512 /* the dir plus a file name */
#define SIGNER_TEST_PIN "123456"
#define SIGNER_TEST_SO_PIN "12345678"
#define SIGNER_TEST_TOKEN "quancun-test"

/* A temporary directory holding softhsm2.conf and tokens/, with one initialised token. */
typedef struct signer_test_hsm {
    char dir[SIGNER_TEST_DIR_MAX];
    char conf[SIGNER_TEST_PATH_MAX];
    char pin_file[SIGNER_TEST_PATH_MAX];
} signer_test_hsm_t;

/* Creates the directory under $TMPDIR (or /tmp), writes softhsm2.conf, initialises a token
 * labelled SIGNER_TEST_TOKEN with SIGNER_TEST_PIN (softhsm2-util), writes the PIN to
 * dir/pin, and sets SOFTHSM2_CONF in this process's environment. Returns 0 or -1. */
int signer_test_hsm_init(signer_test_hsm_t *hsm);

/* Removes the directory tree. */
void signer_test_hsm_cleanup(signer_test_hsm_t *hsm);

/* Runs argv (NULL terminated) and waits for it; returns its exit status, or -1. */
int signer_test_run(char *const argv[]);

/* The module path: $QC_SIGNER_MODULE or the SoftHSM2 default. */
const char *signer_test_module(void);

#endif

/* ---------------------------------------------------------------- child processes */

#include <stdbool.h>
#include <sys/types.h>

#define SIGNER_TEST_ARGS_MAX 48

/* Starts argv (NULL terminated) with stdout and stderr appended to log_path.
 * Returns the pid, or -1. */
pid_t signer_test_spawn(char *const argv[], const char *log_path);

/* Waits up to timeout_ms for pid to exit. Returns its exit status (128 + signal when it was
 * killed), or -1 when it is still running at the deadline. */
int signer_test_wait(pid_t pid, int timeout_ms);

/* Sends sig to pid and reaps it (SIGKILL after 5 s if sig did not end it). Returns the
 * status as signer_test_wait() does. Accepts pid <= 0 (returns -1). */
int signer_test_stop(pid_t pid, int sig);

/* True when the file at path contains needle. */
bool signer_test_file_contains(const char *path, const char *needle);
