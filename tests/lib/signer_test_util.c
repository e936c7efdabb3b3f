/* signer_test_util.c - a throwaway SoftHSM2 token per test, so tests never share state. */
#include "signer_test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qctest_fs.h"
#include "qctest_proc.h"

const char *signer_test_module(void)
{
    const char *m = getenv("QC_SIGNER_MODULE");
    return m != NULL ? m : "/usr/lib/softhsm/libsofthsm2.so";
}

static int write_file(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    int ok = fputs(text, f) >= 0;
    ok = (fclose(f) == 0) && ok;
    return ok && chmod(path, mode) == 0 ? 0 : -1;
}

int signer_test_hsm_init(signer_test_hsm_t *hsm)
{
    if (qctest_dir_new("qc-signer-test", hsm->dir) != 0)
        return -1;
    char tokens[SIGNER_TEST_PATH_MAX];
    snprintf(tokens, sizeof(tokens), "%s/tokens", hsm->dir);
    if (mkdir(tokens, 0700) != 0)
        return -1;
    snprintf(hsm->conf, sizeof(hsm->conf), "%s/softhsm2.conf", hsm->dir);
    char conf[2 * SIGNER_TEST_PATH_MAX];
    snprintf(conf, sizeof(conf),
             "directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n"
             "slots.removable = false\n",
             tokens);
    if (write_file(hsm->conf, conf, 0600) != 0)
        return -1;
    snprintf(hsm->pin_file, sizeof(hsm->pin_file), "%s/pin", hsm->dir);
    if (write_file(hsm->pin_file, SIGNER_TEST_PIN "\n", 0600) != 0)
        return -1;
    if (setenv("SOFTHSM2_CONF", hsm->conf, 1) != 0)
        return -1;
    char *argv[] = {
        "softhsm2-util", "--init-token",  "--free",   "--label",          SIGNER_TEST_TOKEN,
        "--pin",         SIGNER_TEST_PIN, "--so-pin", SIGNER_TEST_SO_PIN, NULL};
    /* softhsm2-util prints the slot it chose on stdout; keep the test output clean. */
    qctest_cmd_t cmd = {.argv = argv, .out_path = "/dev/null"};
    return qctest_run(&cmd) == 0 ? 0 : -1;
}

void signer_test_hsm_cleanup(signer_test_hsm_t *hsm)
{
    if (hsm->dir[0] == '\0')
        return;
    qctest_dir_remove(hsm->dir);
    hsm->dir[0] = '\0';
}
