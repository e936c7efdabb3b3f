/* test_ops_fault.c - armed fault points SIGKILL the process, unarmed ones do nothing.
 *
 * Each case forks a child that sets QC_FAULT before its first ops_fault_point() (the
 * environment is read once per process), so the parent itself never arms anything. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ops_fault.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TEST_CHILD_TIMEOUT_MS 20000
#define TEST_OUTPUT_MAX 8192
/* The child's exit code when it ran past every point. */
#define TEST_CHILD_SURVIVED 42

typedef struct child_result {
    int status;                   /* from waitpid */
    char passes[TEST_OUTPUT_MAX]; /* one 'p' per point the child got past */
    char log[TEST_OUTPUT_MAX];    /* the child's stderr */
} child_result_t;

/* In the child: arm from fault/skip, then hit point `hits` times, writing 'p' to out after
 * each hit it survives. Never returns. */
static void child_main(const char *fault, const char *skip, const char *point, int hits, int out)
{
    if (fault != NULL)
        setenv("QC_FAULT", fault, 1);
    else
        unsetenv("QC_FAULT");
    if (skip != NULL)
        setenv("QC_FAULT_SKIP", skip, 1);
    else
        unsetenv("QC_FAULT_SKIP");
    ops_fault_point("never.armed.point");
    for (int i = 0; i < hits; i++) {
        ops_fault_point(point);
        if (write(out, "p", 1) != 1)
            _exit(1);
    }
    _exit(TEST_CHILD_SURVIVED);
}

/* Reads everything from fd until EOF or the deadline. */
static void drain(int fd, char *buf, size_t cap, int timeout_ms)
{
    size_t len = 0;
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int rc = poll(&pfd, 1, timeout_ms);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            break;
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        if (len == cap - 1)
            break;
    }
    buf[len] = '\0';
}

static void run_child(const char *fault, const char *skip, const char *point, int hits,
                      child_result_t *r)
{
    int passes[2];
    int log[2];
    assert_int_equal(pipe(passes), 0);
    assert_int_equal(pipe(log), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(passes[0]);
        close(log[0]);
        if (dup2(log[1], STDERR_FILENO) < 0)
            _exit(1);
        child_main(fault, skip, point, hits, passes[1]);
    }
    close(passes[1]);
    close(log[1]);
    /* Both pipes reach EOF when the child dies, however it dies; the poll timeout bounds
     * a child that hangs, and it is killed before the assertions below can fail. */
    drain(passes[0], r->passes, sizeof r->passes, TEST_CHILD_TIMEOUT_MS);
    drain(log[0], r->log, sizeof r->log, TEST_CHILD_TIMEOUT_MS);
    close(passes[0]);
    close(log[0]);
    /* EOF comes as the dying child closes its files, a moment before it can be reaped:
     * poll waitpid, bounded, rather than block forever on a child that hangs. */
    pid_t done = 0;
    for (int waited_ms = 0; waited_ms < TEST_CHILD_TIMEOUT_MS; waited_ms++) {
        done = waitpid(pid, &r->status, WNOHANG);
        if (done != 0)
            break;
        struct timespec one_ms = {.tv_sec = 0, .tv_nsec = 1000000};
        nanosleep(&one_ms, NULL);
    }
    if (done == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &r->status, 0);
        fail_msg("child did not finish in %d ms", TEST_CHILD_TIMEOUT_MS);
    }
    assert_int_equal(done, pid);
}

static bool killed(const child_result_t *r)
{
    return WIFSIGNALED(r->status) && WTERMSIG(r->status) == SIGKILL;
}

static bool survived(const child_result_t *r)
{
    return WIFEXITED(r->status) && WEXITSTATUS(r->status) == TEST_CHILD_SURVIVED;
}

static void test_armed_point_kills(void **state)
{
    (void)state;
    child_result_t r;
    run_child("ledger.after_commit,other.point", NULL, "ledger.after_commit", 3, &r);
    assert_true(killed(&r));
    assert_string_equal(r.passes, ""); /* died on the first hit */
    assert_non_null(strstr(r.log, "\"level\":\"error\""));
    assert_non_null(strstr(r.log, "\"event\":\"fault.fired\",\"point\":\"ledger.after_commit\""));
    assert_null(strstr(r.log, "never.armed.point\",\"hit"));
}

static void test_second_armed_name_kills(void **state)
{
    (void)state;
    child_result_t r;
    run_child("a.first,b.second", NULL, "b.second", 1, &r);
    assert_true(killed(&r));
    assert_non_null(strstr(r.log, "\"event\":\"fault.fired\",\"point\":\"b.second\""));
}

static void test_unarmed_point_does_nothing(void **state)
{
    (void)state;
    child_result_t r;
    /* Armed, but another name; a prefix of an armed name is another name too. */
    run_child("ledger.after_commit", NULL, "ledger.after", 5, &r);
    assert_true(survived(&r));
    assert_string_equal(r.passes, "ppppp");
    assert_null(strstr(r.log, "fault.fired"));

    run_child(NULL, NULL, "ledger.after_commit", 5, &r);
    assert_true(survived(&r));
    assert_string_equal(r.passes, "ppppp");
    assert_string_equal(r.log, "");

    run_child("", NULL, "ledger.after_commit", 2, &r);
    assert_true(survived(&r));
}

static void test_skip_lets_hits_pass(void **state)
{
    (void)state;
    child_result_t r;
    run_child("signer.before_sign", "2", "signer.before_sign", 5, &r);
    assert_true(killed(&r));
    assert_string_equal(r.passes, "pp");
    assert_non_null(strstr(r.log, "\"point\":\"signer.before_sign\",\"hit\":\"3\""));

    run_child("signer.before_sign", "0", "signer.before_sign", 5, &r);
    assert_true(killed(&r));
    assert_string_equal(r.passes, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_armed_point_kills),
        cmocka_unit_test(test_second_armed_name_kills),
        cmocka_unit_test(test_unarmed_point_does_nothing),
        cmocka_unit_test(test_skip_lets_hits_pass),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
