/* signer_test_util.h - a SoftHSM2 token in a temporary dir, for the signer tests and the audit
 * checkpoint test (processes, files and keys come from the rest of tests/lib). */
#ifndef SIGNER_TEST_UTIL_H
#define SIGNER_TEST_UTIL_H

#include <stddef.h>

#include "qctest_fs.h"

#define SIGNER_TEST_DIR_MAX QCTEST_PATH_MAX
#define SIGNER_TEST_PATH_MAX (QCTEST_PATH_MAX + 64) /* the dir plus a file name */
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

/* Removes the directory tree (qctest_dir_remove: QC_KEEP_TMP keeps it). */
void signer_test_hsm_cleanup(signer_test_hsm_t *hsm);

/* The module path: $QC_SIGNER_MODULE or the SoftHSM2 default. */
const char *signer_test_module(void);

#endif
