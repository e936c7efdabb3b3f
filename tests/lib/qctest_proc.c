/* qctest_proc.c - child processes for tests (see qctest_proc.h). */
#include "qctest_proc.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define QCTEST_POLL_MS 10 /* between two looks at a child */
#define QCTEST_ENV_NAME_MAX 128

void qctest_sleep_ms(int ms)
{
    assert(ms >= 0);
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* In the child: fd onto path (opened once when both streams share it). */
static int redirect(const char *path, int fd, bool truncate)
{
    int flags = O_WRONLY | O_CREAT | (truncate ? O_TRUNC : O_APPEND);
    int f = open(path, flags, 0600);
    if (f < 0 || dup2(f, fd) < 0)
        return -1;
    close(f);
    return 0;
}

static void apply_env(const char *const *env)
{
    for (size_t i = 0; env != NULL && env[i] != NULL; i++) {
        const char *eq = strchr(env[i], '=');
        if (eq == NULL) {
            unsetenv(env[i]);
            continue;
        }
        char name[QCTEST_ENV_NAME_MAX];
        snprintf(name, sizeof name, "%.*s", (int)(eq - env[i]), env[i]);
        setenv(name, eq + 1, 1);
    }
}

pid_t qctest_spawn(const qctest_cmd_t *cmd)
{
    assert(cmd != NULL);
    assert(cmd->argv != NULL);
    assert(cmd->argv[0] != NULL);
    fflush(stdout);
    fflush(stderr);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    /* A child never outlives its test: a test that fails or is killed (CTest's timeout) would
     * leave its services running, holding ports and the inherited ports-lock slot. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
        _exit(126);
    if (cmd->new_session)
        setsid();
    if (cmd->out_path != NULL && redirect(cmd->out_path, STDOUT_FILENO, cmd->truncate) != 0)
        _exit(126);
    if (cmd->err_path != NULL) {
        bool shared = cmd->out_path != NULL && strcmp(cmd->err_path, cmd->out_path) == 0;
        if (shared ? dup2(STDOUT_FILENO, STDERR_FILENO) < 0
                   : redirect(cmd->err_path, STDERR_FILENO, cmd->truncate) != 0)
            _exit(126);
    }
    if (cmd->stdin_null) {
        int null = open("/dev/null", O_RDONLY);
        if (null < 0 || dup2(null, STDIN_FILENO) < 0)
            _exit(126);
        close(null);
    }
    apply_env(cmd->env);
    execvp(cmd->argv[0], cmd->argv);
    _exit(127);
}

int qctest_exit_code(int wait_status)
{
    if (wait_status == QCTEST_STATUS_RUNNING)
        return QCTEST_STATUS_RUNNING;
    if (WIFEXITED(wait_status))
        return WEXITSTATUS(wait_status);
    return WIFSIGNALED(wait_status) ? 128 + WTERMSIG(wait_status) : QCTEST_STATUS_RUNNING;
}

int qctest_wait(pid_t pid, int timeout_ms)
{
    if (pid <= 0)
        return QCTEST_STATUS_RUNNING;
    for (int waited = 0;; waited += QCTEST_POLL_MS) {
        int status = 0;
        pid_t r = waitpid(pid, &status, timeout_ms == QCTEST_WAIT_FOREVER ? 0 : WNOHANG);
        if (r == pid)
            return status;
        if (r < 0 && errno != EINTR)
            return QCTEST_STATUS_RUNNING;
        if (timeout_ms != QCTEST_WAIT_FOREVER && waited >= timeout_ms)
            return QCTEST_STATUS_RUNNING;
        if (r == 0)
            qctest_sleep_ms(QCTEST_POLL_MS);
    }
}

int qctest_stop(pid_t pid, int sig)
{
    if (pid <= 0)
        return QCTEST_STATUS_RUNNING;
    kill(pid, sig);
    int status = qctest_wait(pid, QCTEST_STOP_GRACE_MS);
    if (status == QCTEST_STATUS_RUNNING) {
        kill(pid, SIGKILL);
        status = qctest_wait(pid, QCTEST_WAIT_FOREVER);
    }
    return status;
}

int qctest_run(const qctest_cmd_t *cmd)
{
    pid_t pid = qctest_spawn(cmd);
    if (pid < 0)
        return -1;
    return qctest_exit_code(qctest_wait(pid, QCTEST_WAIT_FOREVER));
}

int qctest_run_argv(char *const argv[])
{
    qctest_cmd_t cmd = {.argv = argv};
    return qctest_run(&cmd);
}

long long qctest_cpu_ms(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    unsigned long utime = 0, stime = 0;
    /* After the command: state (field 3) ... utime (14), stime (15). */
    if (p == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2)
        return -1;
    return (long long)(utime + stime) * 1000 / sysconf(_SC_CLK_TCK);
}
