/* signer_test_util.c - a throwaway SoftHSM2 token per test, so tests never share state. */
#include "signer_test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

int signer_test_run(char *const argv[])
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        execvp(argv[0], argv);
        _exit(127);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

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
    const char *tmp = getenv("TMPDIR");
    snprintf(hsm->dir, sizeof(hsm->dir), "%s/qc-signer-test-XXXXXX", tmp != NULL ? tmp : "/tmp");
    if (mkdtemp(hsm->dir) == NULL)
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
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    FILE *null = fopen("/dev/null", "w");
    if (saved < 0 || null == NULL)
        return -1;
    dup2(fileno(null), STDOUT_FILENO);
    int rc = signer_test_run(argv);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    fclose(null);
    return rc == 0 ? 0 : -1;
}

void signer_test_hsm_cleanup(signer_test_hsm_t *hsm)
{
    if (hsm->dir[0] == '\0')
        return;
    char *argv[] = {"rm", "-rf", hsm->dir, NULL};
    signer_test_run(argv);
    hsm->dir[0] = '\0';
}

/* ---------------------------------------------------------------- child processes */

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <time.h>

#define SIGNER_TEST_POLL_NS 10000000L /* 10 ms between looks at a child */
#define SIGNER_TEST_KILL_GRACE_MS 5000
#define SIGNER_TEST_READ_MAX (4 * 1024 * 1024)

pid_t signer_test_spawn(char *const argv[], const char *log_path)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd < 0)
        _exit(126);
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
    execv(argv[0], argv);
    _exit(127);
}

int signer_test_wait(pid_t pid, int timeout_ms)
{
    if (pid <= 0)
        return -1;
    struct timespec nap = {0, SIGNER_TEST_POLL_NS};
    for (int waited = 0;; waited += 10) {
        int status = 0;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            if (WIFEXITED(status))
                return WEXITSTATUS(status);
            return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
        }
        if (r < 0 && errno != EINTR)
            return -1;
        if (waited >= timeout_ms)
            return -1;
        nanosleep(&nap, NULL);
    }
}

int signer_test_stop(pid_t pid, int sig)
{
    if (pid <= 0)
        return -1;
    kill(pid, sig);
    int status = signer_test_wait(pid, SIGNER_TEST_KILL_GRACE_MS);
    if (status < 0) {
        kill(pid, SIGKILL);
        status = signer_test_wait(pid, SIGNER_TEST_KILL_GRACE_MS);
    }
    return status;
}

bool signer_test_file_contains(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return false;
    char *buf = malloc(SIGNER_TEST_READ_MAX + 1);
    size_t n = buf != NULL ? fread(buf, 1, SIGNER_TEST_READ_MAX, f) : 0;
    fclose(f);
    if (buf == NULL)
        return false;
    buf[n] = '\0';
    bool found = strstr(buf, needle) != NULL;
    free(buf);
    return found;
}
