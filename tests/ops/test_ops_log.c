/* test_ops_log.c - the JSON lines ops_log writes on stderr: shape, escaping, truncation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ops_log.h"

#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Everything the tests log fits in a pipe buffer, so writing never blocks the test. */
#define TEST_CAPTURE_MAX (64 * 1024)

typedef struct capture {
    int pipe_fd[2];
    int saved_stderr;
    char text[TEST_CAPTURE_MAX];
    size_t len;
} capture_t;

static void capture_begin(capture_t *c)
{
    assert_int_equal(pipe(c->pipe_fd), 0);
    c->saved_stderr = dup(STDERR_FILENO);
    assert_true(c->saved_stderr >= 0);
    assert_true(dup2(c->pipe_fd[1], STDERR_FILENO) >= 0);
}

/* Restores stderr and reads everything written since capture_begin(). */
static void capture_end(capture_t *c)
{
    assert_true(dup2(c->saved_stderr, STDERR_FILENO) >= 0);
    close(c->saved_stderr);
    close(c->pipe_fd[1]);
    c->len = 0;
    for (;;) {
        ssize_t n = read(c->pipe_fd[0], c->text + c->len, sizeof c->text - 1 - c->len);
        assert_true(n >= 0);
        if (n == 0)
            break;
        c->len += (size_t)n;
    }
    close(c->pipe_fd[0]);
    c->text[c->len] = '\0';
}

/* A strict checker for the flat objects ops_log writes: {"k":"v"|null|true,...}\n with
 * only valid escapes, no raw control characters and valid UTF-8. Returns the number of
 * bytes of the line (newline included), or 0 when it is not such a line. */
static size_t json_utf8_len(const unsigned char *s)
{
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        return (s[1] & 0xc0) == 0x80 ? 2 : 0;
    if (s[0] >= 0xe0 && s[0] <= 0xef)
        return (s[1] & 0xc0) == 0x80 && (s[2] & 0xc0) == 0x80 ? 3 : 0;
    if (s[0] >= 0xf0 && s[0] <= 0xf4)
        return (s[1] & 0xc0) == 0x80 && (s[2] & 0xc0) == 0x80 && (s[3] & 0xc0) == 0x80 ? 4 : 0;
    return 0;
}

static const char *json_string(const char *p)
{
    if (*p++ != '"')
        return NULL;
    for (;;) {
        unsigned char c = (unsigned char)*p;
        if (c == '"')
            return p + 1;
        if (c < 0x20)
            return NULL; /* raw control character, or the end of the text */
        if (c == '\\') {
            p++;
            if (strchr("\"\\/bfnrt", *p) != NULL && *p != '\0') {
                p++;
            } else if (*p == 'u') {
                for (int i = 1; i <= 4; i++) {
                    if (strchr("0123456789abcdefABCDEF", p[i]) == NULL || p[i] == '\0')
                        return NULL;
                }
                p += 5;
            } else {
                return NULL;
            }
        } else if (c >= 0x80) {
            size_t n = json_utf8_len((const unsigned char *)p);
            if (n == 0)
                return NULL;
            p += n;
        } else {
            p++;
        }
    }
}

static size_t json_line_len(const char *line)
{
    const char *p = line;
    if (*p++ != '{')
        return 0;
    for (bool first = true;; first = false) {
        if (*p == '}')
            return first ? 0 : (p[1] == '\n' ? (size_t)(p + 2 - line) : 0);
        if (!first && *p++ != ',')
            return 0;
        if ((p = json_string(p)) == NULL || *p++ != ':')
            return 0;
        if (*p == '"')
            p = json_string(p);
        else if (strncmp(p, "null", 4) == 0)
            p += 4;
        else if (strncmp(p, "true", 4) == 0)
            p += 4;
        else
            return 0;
        if (p == NULL)
            return 0;
    }
}

/* Asserts text is exactly count valid lines. */
static void assert_lines(const char *text, size_t count)
{
    size_t seen = 0;
    while (*text != '\0') {
        size_t n = json_line_len(text);
        if (n == 0)
            fail_msg("not a JSON line: %.200s", text);
        assert_true(n <= OPS_LOG_LINE_MAX);
        text += n;
        seen++;
    }
    assert_int_equal(seen, count);
}

static void test_checker_rejects_bad_json(void **state)
{
    (void)state;
    /* The checker must be able to fail, or the other tests prove nothing. */
    assert_int_equal(json_line_len("{\"a\":\"b\"}\n"), 10);
    assert_int_equal(json_line_len("{\"a\":\"b\"}"), 0);
    assert_int_equal(json_line_len("{\"a\":\"b\"c\"}\n"), 0);
    assert_int_equal(json_line_len("{\"a\":\"b\nc\"}\n"), 0);
    assert_int_equal(json_line_len("{\"a\":\"b\\x\"}\n"), 0);
    assert_int_equal(json_line_len("{\"a\":\"\xc3\"}\n"), 0);
    assert_int_equal(json_line_len("{\"a\":\"b\\u00\"}\n"), 0);
}

static void test_line_shape(void **state)
{
    (void)state;
    capture_t *c = malloc(sizeof *c);
    assert_non_null(c);
    ops_log_init("ledger", "3", OPS_LOG_INFO);
    capture_begin(c);
    ops_log(OPS_LOG_INFO, "load.reserved", "txn_id", "00ff", "amount", "1200", NULL);
    capture_end(c);
    assert_lines(c->text, 1);
    const char *want = "\",\"level\":\"info\",\"service\":\"ledger\",\"instance\":\"3\","
                       "\"event\":\"load.reserved\",\"txn_id\":\"00ff\",\"amount\":\"1200\"}\n";
    assert_non_null(strstr(c->text, want));
    /* {"time":"2026-11-27T20:30:00.123Z", */
    assert_memory_equal(c->text, "{\"time\":\"", 9);
    const char *t = c->text + 9;
    const char *shape = "dddd-dd-ddTdd:dd:dd.dddZ\"";
    for (size_t i = 0; shape[i] != '\0'; i++) {
        if (shape[i] == 'd')
            assert_true(t[i] >= '0' && t[i] <= '9');
        else
            assert_int_equal(t[i], shape[i]);
    }
    free(c);
}

static void test_escaping(void **state)
{
    (void)state;
    capture_t *c = malloc(sizeof *c);
    assert_non_null(c);
    ops_log_init("svc", "0", OPS_LOG_DEBUG);
    capture_begin(c);
    ops_log(OPS_LOG_WARN, "e", "quote", "say \"hi\"", "slash", "a\\b", "nl", "l1\nl2\r\t", "ctl",
            "\x01\x1f\x7f", "utf8", "\xe5\x9c\x88\xe5\xad\x98", "bad", "a\xff\xc3z", "key\"x", "v",
            "none", NULL, NULL);
    ops_logf(OPS_LOG_ERROR, "f", "%s=%d", "a\"b", 7);
    capture_end(c);
    assert_lines(c->text, 2);
    assert_non_null(strstr(c->text, "\"quote\":\"say \\\"hi\\\"\""));
    assert_non_null(strstr(c->text, "\"slash\":\"a\\\\b\""));
    assert_non_null(strstr(c->text, "\"nl\":\"l1\\nl2\\r\\t\""));
    assert_non_null(strstr(c->text, "\"ctl\":\"\\u0001\\u001f\\u007f\""));
    assert_non_null(strstr(c->text, "\"utf8\":\"\xe5\x9c\x88\xe5\xad\x98\""));
    assert_non_null(strstr(c->text, "\"bad\":\"a\\ufffd\\ufffdz\""));
    assert_non_null(strstr(c->text, "\"key\\\"x\":\"v\""));
    assert_non_null(strstr(c->text, "\"none\":null}"));
    assert_non_null(strstr(c->text, "\"level\":\"error\""));
    assert_non_null(strstr(c->text, "\"msg\":\"a\\\"b=7\""));
    free(c);
}

static void check_truncated(capture_t *c, const char *value)
{
    capture_begin(c);
    ops_log(OPS_LOG_INFO, "big", "value", value, "after", "dropped", NULL);
    capture_end(c);
    assert_lines(c->text, 1);
    assert_true(c->len <= OPS_LOG_LINE_MAX);
    assert_true(c->len > OPS_LOG_LINE_MAX / 2);
    assert_string_equal(c->text + c->len - 2, "}\n");
    assert_non_null(strstr(c->text, "\"truncated\":true}\n"));
    assert_null(strstr(c->text, "dropped"));
}

static void test_truncation(void **state)
{
    (void)state;
    capture_t *c = malloc(sizeof *c);
    assert_non_null(c);
    const size_t huge = 3 * OPS_LOG_LINE_MAX;
    char *value = malloc(huge + 1);
    assert_non_null(value);
    ops_log_init("svc", "0", OPS_LOG_INFO);

    memset(value, 'x', huge);
    value[huge] = '\0';
    check_truncated(c, value);

    /* Values whose escapes are longer than one byte must not be cut inside an escape... */
    memset(value, '"', huge);
    check_truncated(c, value);
    memset(value, '\x01', huge);
    check_truncated(c, value);
    /* ...nor inside a multi-byte UTF-8 character, whatever the alignment. */
    for (size_t shift = 0; shift < 3; shift++) {
        memset(value, 'a', shift);
        for (size_t i = shift; i + 3 <= huge; i += 3)
            memcpy(value + i, "\xe5\x9c\x88", 3);
        value[huge - (huge - shift) % 3] = '\0';
        check_truncated(c, value);
    }

    /* A huge printf message is cut the same way. */
    memset(value, 'm', huge);
    value[huge] = '\0';
    capture_begin(c);
    ops_logf(OPS_LOG_INFO, "big", "%s", value);
    capture_end(c);
    assert_lines(c->text, 1);
    assert_non_null(strstr(c->text, "\"truncated\":true}\n"));
    free(value);
    free(c);
}

static void test_levels(void **state)
{
    (void)state;
    capture_t *c = malloc(sizeof *c);
    assert_non_null(c);
    assert_int_equal(ops_log_level_parse("debug"), OPS_LOG_DEBUG);
    assert_int_equal(ops_log_level_parse("info"), OPS_LOG_INFO);
    assert_int_equal(ops_log_level_parse("warn"), OPS_LOG_WARN);
    assert_int_equal(ops_log_level_parse("error"), OPS_LOG_ERROR);
    assert_int_equal(ops_log_level_parse("INFO"), -1);
    assert_int_equal(ops_log_level_parse(""), -1);
    assert_int_equal(ops_log_level_parse(NULL), -1);

    ops_log_init("svc", "0", OPS_LOG_WARN);
    capture_begin(c);
    ops_log(OPS_LOG_DEBUG, "hidden.debug", NULL);
    ops_log(OPS_LOG_INFO, "hidden.info", NULL);
    ops_logf(OPS_LOG_INFO, "hidden.infof", "%d", 1);
    ops_log(OPS_LOG_WARN, "shown.warn", NULL);
    ops_log(OPS_LOG_ERROR, "shown.error", NULL);
    capture_end(c);
    assert_lines(c->text, 2);
    assert_null(strstr(c->text, "hidden"));
    assert_non_null(strstr(c->text, "shown.warn"));
    assert_non_null(strstr(c->text, "shown.error"));
    ops_log_init("svc", "0", OPS_LOG_INFO);
    free(c);
}

static void test_hex(void **state)
{
    (void)state;
    const uint8_t bytes[] = {0x00, 0x01, 0xab, 0xff, 0x7f};
    char out[2 * sizeof bytes + 1];
    memset(out, '#', sizeof out);
    assert_ptr_equal(ops_hex(bytes, sizeof bytes, out), out);
    assert_string_equal(out, "0001abff7f");
    assert_string_equal(ops_hex(bytes, 0, out), "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checker_rejects_bad_json),
        cmocka_unit_test(test_line_shape),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_truncation),
        cmocka_unit_test(test_levels),
        cmocka_unit_test(test_hex),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
