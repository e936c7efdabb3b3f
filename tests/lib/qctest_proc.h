/* qctest_proc.h - child processes for tests: start a program with its output in a file, wait
 * for it with a bound, stop it, run it to the end.
 *
 * Every test that starts a service, a CLI or a helper program goes through these four calls,
 * so that each child is reaped (no zombie outlives its test) and each wait has a deadline.
 * qctest_wait and qctest_stop give the wait status (read it with WIFEXITED, WTERMSIG...);
 * qctest_run gives the exit code as the shell says it: the code, or 128 + the signal. */
#ifndef QCTEST_PROC_H
#define QCTEST_PROC_H

#include <stdbool.h>
#include <sys/types.h>

#define QCTEST_ARGS_MAX 48         /* arguments of one command line, program included */
#define QCTEST_STOP_GRACE_MS 5000  /* after the stop signal, before SIGKILL */
#define QCTEST_WAIT_FOREVER (-1)   /* qctest_wait's timeout: no deadline */
#define QCTEST_STATUS_RUNNING (-1) /* qctest_wait: still running (no wait status is < 0) */

/* What to start and where its output goes. Unset fields keep the test's own. */
typedef struct qctest_cmd {
    char *const *argv;      /* NULL-terminated; argv[0] a path, or a name looked up in PATH */
    const char *out_path;   /* stdout into this file, NULL: the test's */
    const char *err_path;   /* stderr into this file (the same path as out_path shares it) */
    bool truncate;          /* start the files empty rather than append */
    bool stdin_null;        /* stdin from /dev/null */
    bool new_session;       /* setsid(): no controlling terminal, so prompts fail, not hang */
    const char *const *env; /* NULL-terminated: "NAME=VALUE" sets, "NAME" unsets (or NULL) */
} qctest_cmd_t;

/* Starts cmd. Returns the child's pid, or -1 when fork failed. A child that cannot open its
 * files exits 126, one that cannot exec exits 127. */
pid_t qctest_spawn(const qctest_cmd_t *cmd);

/* Waits up to timeout_ms (0: a look, QCTEST_WAIT_FOREVER: no bound) for pid to exit and reaps
 * it. Returns its wait status, or QCTEST_STATUS_RUNNING when it still runs at the deadline (or
 * pid <= 0, or it is not our child). */
int qctest_wait(pid_t pid, int timeout_ms);

/* Sends sig to pid, waits up to QCTEST_STOP_GRACE_MS, then SIGKILLs and reaps it. Returns its
 * wait status; pid <= 0 is accepted (returns QCTEST_STATUS_RUNNING). */
int qctest_stop(pid_t pid, int sig);

/* A wait status as the shell says it: the exit code, or 128 + the signal that ended the
 * process; QCTEST_STATUS_RUNNING stays as it is. */
int qctest_exit_code(int wait_status);

/* Starts cmd and waits for it without a bound. Returns its exit code (qctest_exit_code), or
 * -1 when it could not be started. */
int qctest_run(const qctest_cmd_t *cmd);

/* Runs argv with the test's own stdin, stdout and stderr. Returns as qctest_run(). */
int qctest_run_argv(char *const argv[]);

/* Sleeps ms milliseconds (for polling loops with a bound, never as synchronisation). */
void qctest_sleep_ms(int ms);

/* CPU time (user + system) pid has used, in ms, from /proc/PID/stat; -1 when it cannot be
 * read. What a test measures of a service left idle on a fault (issue 21: no spinning). */
long long qctest_cpu_ms(pid_t pid);

#endif
