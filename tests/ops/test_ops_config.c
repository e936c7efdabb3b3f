/* test_ops_config.c - config file + flag precedence, and every way a config can be wrong. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ops_config.h"
#include "qc_error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TEST_DIR_MAX 256
#define TEST_PATH_MAX 512
#define TEST_HELP_MAX 8192

static const ops_config_key_t test_keys[] = {
    {"listen", OPS_CONFIG_STRING, "tcp://127.0.0.1:5555", "where to listen"},
    {"port", OPS_CONFIG_INT, "10", "HTTP port for /metrics"},
    {"verbose", OPS_CONFIG_BOOL, "false", "log at debug level"},
    {"name", OPS_CONFIG_STRING, NULL, "instance name"},
    {"fsync", OPS_CONFIG_BOOL, "true", "sync every commit"},
    {"pin_file", OPS_CONFIG_STRING, NULL, "where the PIN is"},
};
#define TEST_KEY_COUNT (sizeof test_keys / sizeof test_keys[0])

typedef struct test_dir {
    char path[TEST_DIR_MAX];
    char file[TEST_PATH_MAX];
} test_dir_t;

static int setup_dir(void **state)
{
    test_dir_t *d = calloc(1, sizeof *d);
    if (d == NULL)
        return -1;
    snprintf(d->path, sizeof d->path, "/tmp/test_ops_config.XXXXXX");
    if (mkdtemp(d->path) == NULL) {
        free(d);
        return -1;
    }
    snprintf(d->file, sizeof d->file, "%s/svc.conf", d->path);
    *state = d;
    return 0;
}

static int teardown_dir(void **state)
{
    test_dir_t *d = *state;
    unlink(d->file);
    rmdir(d->path);
    free(d);
    return 0;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

/* Runs ops_config_load on a NULL-terminated argument list (argv[0] is added). */
static int load(ops_config_t **cfg, char *err, size_t errcap, ...)
{
    char *argv[32] = {"prog"};
    int argc = 1;
    va_list ap;
    va_start(ap, errcap);
    char *arg;
    while ((arg = va_arg(ap, char *)) != NULL) {
        assert_true(argc < 31);
        argv[argc++] = arg;
    }
    va_end(ap);
    return ops_config_load("prog", "[options] FILE...", test_keys, TEST_KEY_COUNT, argc, argv, cfg,
                           err, errcap);
}

static void test_defaults(void **state)
{
    (void)state;
    ops_config_t *cfg = NULL;
    char err[OPS_CONFIG_ERROR_MAX];
    assert_int_equal(load(&cfg, err, sizeof err, NULL), 0);
    assert_non_null(cfg);
    assert_string_equal(ops_config_str(cfg, "listen"), "tcp://127.0.0.1:5555");
    assert_int_equal(ops_config_int(cfg, "port"), 10);
    assert_false(ops_config_bool(cfg, "verbose"));
    assert_true(ops_config_bool(cfg, "fsync"));
    assert_null(ops_config_str(cfg, "name"));
    assert_int_equal(ops_config_argc(cfg), 0);
    ops_config_destroy(&cfg);
    assert_null(cfg);
    ops_config_destroy(&cfg); /* idempotent */
}

static void test_file_then_flags(void **state)
{
    test_dir_t *d = *state;
    write_file(d->file, "# a comment\n"
                        "; another\n"
                        "\n"
                        "port = 20\n"
                        "  name = from-file  \n"
                        "verbose = yes\n"
                        "listen=tcp://0.0.0.0:1 ; inline comment\n");
    ops_config_t *cfg = NULL;
    char err[OPS_CONFIG_ERROR_MAX];
    /* --config comes after a flag on purpose: flags win wherever --config sits. */
    int rc = load(&cfg, err, sizeof err, "--port", "30", "--config", d->file, "--name=flag", NULL);
    assert_int_equal(rc, 0);
    assert_int_equal(ops_config_int(cfg, "port"), 30);
    assert_string_equal(ops_config_str(cfg, "name"), "flag");
    assert_true(ops_config_bool(cfg, "verbose"));
    assert_string_equal(ops_config_str(cfg, "listen"), "tcp://0.0.0.0:1");
    assert_true(ops_config_bool(cfg, "fsync")); /* default untouched */
    ops_config_destroy(&cfg);

    /* Without flags the file's values stand. */
    char config_flag[TEST_PATH_MAX + 16];
    snprintf(config_flag, sizeof config_flag, "--config=%s", d->file);
    assert_int_equal(load(&cfg, err, sizeof err, config_flag, NULL), 0);
    assert_int_equal(ops_config_int(cfg, "port"), 20);
    assert_string_equal(ops_config_str(cfg, "name"), "from-file");
    ops_config_destroy(&cfg);
}

static void test_unknown_key_in_file(void **state)
{
    test_dir_t *d = *state;
    write_file(d->file, "port = 1\n# comment\nbogus_key = 1\nname = x\n");
    ops_config_t *cfg = NULL;
    char err[OPS_CONFIG_ERROR_MAX];
    assert_int_equal(load(&cfg, err, sizeof err, "--config", d->file, NULL), QC_ECONFIG);
    assert_null(cfg);
    assert_non_null(strstr(err, "bogus_key"));
    assert_non_null(strstr(err, "line 3"));
    assert_non_null(strstr(err, d->file));
}

static void test_file_syntax_errors(void **state)
{
    test_dir_t *d = *state;
    ops_config_t *cfg = NULL;
    char err[OPS_CONFIG_ERROR_MAX];

    write_file(d->file, "port = 1\n[server]\nname = x\n");
    assert_int_equal(load(&cfg, err, sizeof err, "--config", d->file, NULL), QC_ECONFIG);
    assert_non_null(strstr(err, "line 2"));
    assert_non_null(strstr(err, "section"));

    write_file(d->file, "port = 1\nname = x\njust words\n");
    assert_int_equal(load(&cfg, err, sizeof err, "--config", d->file, NULL), QC_ECONFIG);
    assert_non_null(strstr(err, "line 3"));

    write_file(d->file, "name = a\nport = 2\nname = b\n");
    assert_int_equal(load(&cfg, err, sizeof err, "--config", d->file, NULL), QC_ECONFIG);
    assert_non_null(strstr(err, "name"));
    assert_non_null(strstr(err, "line 3"));

    /* inih would split a long line silently; it must be refused, naming the line. */
    char text[1024];
    int n = snprintf(text, sizeof text, "port = 1\nname = ");
    memset(text + n, 'x', 600);
    text[n + 600] = '\0';
    write_file(d->file, text);
    assert_int_equal(load(&cfg, err, sizeof err, "--config", d->file, NULL), QC_ECONFIG);
    assert_non_null(strstr(err, "line 2"));
    assert_null(cfg);
}

static void test_unknown_flag(void **state)
{
    (void)state;
    ops_config_t *cfg = NULL;
    char err[OPS_CONFIG_ERROR_MAX];
    assert_int_equal(load(&cfg, err, sizeof err, "--port", "1", "--no-such-key", "x", NULL),
                     QC_ECONFIG);
    assert_null(cfg);
    assert_non_null(strstr(err, "--no-such-key"));
    assert_int_equal(load(&cfg, err, sizeof err, "--bogus=1", NULL), QC_ECONFIG);
    assert_non_null(strstr(err, "--bogus"));
    assert_null(strstr(err, "=1"));
}

static void test_bad_int(void **state)
{
    test_dir_t *d = *state;
    ops_config_t *cfg = NULL;
    char err[OPS_CONFIG_ERROR_MAX];
    const char *bad[] = {"12x", "", " 5", "0x10", "99999999999999999999", "-99999999999999999999",
                         "1.5"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char flag[64];
        snprintf(flag, sizeof flag, "--port=%s", bad[i]);
        assert_int_equal(load(&cfg, err, sizeof err, flag, NULL), QC_ECONFIG);
        assert_null(cfg);
        assert_non_null(strstr(err, "port"));
        assert_non_null(strstr(err, bad[i]));
    }
    /* The extremes of int64 are fine. */
    assert_int_equal(load(&cfg, err, sizeof err, "--port", "-9223372036854775808", NULL), 0);
    assert_true(ops_config_int(cfg, "port") == INT64_MIN);
    ops_config_destroy(&cfg);
    assert_int_equal(load(&cfg, err, sizeof err, "--port", "+9223372036854775807", NULL), 0);
    assert_true(ops_config_int(cfg, "port") == INT64_MAX);
    ops_config_destroy(&cfg);

    write_file(d->file, "name = a\nport = ten\n");
    assert_int_equal(load(&cfg, err, sizeof err, "--config", d->file, NULL), QC_ECONFIG);
    assert_non_null(strstr(err, "ten"));
    assert_non_null(strstr(err, "line 2"));
}

static void test_bad_bool(void **state)
{
    test_dir_t *d = *state;
    ops_config_t *cfg = NULL;
    char err[OPS_CONFIG_ERROR_MAX];
    assert_int_equal(load(&cfg, err, sizeof err, "--verbose=maybe", NULL), QC_ECONFIG);
    assert_null(cfg);
    assert_non_null(strstr(err, "maybe"));
    assert_non_null(strstr(err, "verbose"));

    write_file(d->file, "verbose = TRUE!\n");
    assert_int_equal(load(&cfg, err, sizeof err, "--config", d->file, NULL), QC_ECONFIG);
    assert_non_null(strstr(err, "line 1"));

    /* Every accepted spelling, and a bare flag meaning true. */
    const char *yes[] = {"true", "yes", "1", "on"};
    const char *no[] = {"false", "no", "0", "off"};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(load(&cfg, err, sizeof err, "--verbose", yes[i], "--fsync", no[i], NULL),
                         0);
        assert_true(ops_config_bool(cfg, "verbose"));
        assert_false(ops_config_bool(cfg, "fsync"));
        assert_int_equal(ops_config_argc(cfg), 0);
        ops_config_destroy(&cfg);
    }
    assert_int_equal(load(&cfg, err, sizeof err, "--verbose", NULL), 0);
    assert_true(ops_config_bool(cfg, "verbose"));
    ops_config_destroy(&cfg);
}

static void test_missing_value(void **state)
{
    (void)state;
    ops_config_t *cfg = NULL;
    char err[OPS_CONFIG_ERROR_MAX];
    assert_int_equal(load(&cfg, err, sizeof err, "--port", NULL), QC_ECONFIG);
    assert_non_null(strstr(err, "--port"));
    assert_int_equal(load(&cfg, err, sizeof err, "--name", "--port", "1", NULL), QC_ECONFIG);
    assert_non_null(strstr(err, "--name"));
    assert_int_equal(load(&cfg, err, sizeof err, "--config", NULL), QC_ECONFIG);
    assert_non_null(strstr(err, "--config"));

    static char huge[OPS_CONFIG_VALUE_MAX + 16];
    memset(huge, 'v', sizeof huge - 1);
    assert_int_equal(load(&cfg, err, sizeof err, "--name", huge, NULL), QC_ECONFIG);
    assert_non_null(strstr(err, "name"));
    assert_null(cfg);
}

/* Runs help_fn with stdout sent to a file in d; what it printed lands in text (capacity
 * TEST_HELP_MAX). Returns what help_fn returned. */
static int capture_stdout(test_dir_t *d, int (*help_fn)(void), char *text)
{
    char out_path[TEST_PATH_MAX];
    snprintf(out_path, sizeof out_path, "%s/help.txt", d->path);
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    assert_true(saved >= 0);
    FILE *f = fopen(out_path, "w+");
    assert_non_null(f);
    assert_true(dup2(fileno(f), STDOUT_FILENO) >= 0);
    int rc = help_fn();
    fflush(stdout);
    assert_true(dup2(saved, STDOUT_FILENO) >= 0);
    close(saved);
    rewind(f);
    size_t n = fread(text, 1, TEST_HELP_MAX - 1, f);
    text[n] = '\0';
    fclose(f);
    unlink(out_path);
    return rc;
}

static int load_help_after_bad_flag(void)
{
    ops_config_t *cfg = NULL;
    char err[OPS_CONFIG_ERROR_MAX];
    /* --help wins even over a bad flag before it. */
    int rc = load(&cfg, err, sizeof err, "--bogus", "--help", NULL);
    assert_null(cfg);
    return rc;
}

static void test_help(void **state)
{
    char text[TEST_HELP_MAX];
    assert_int_equal(capture_stdout(*state, load_help_after_bad_flag, text), 1);
    assert_non_null(strstr(text, "prog"));
    assert_non_null(strstr(text, "[options] FILE..."));
    assert_non_null(strstr(text, "--config"));
    for (size_t i = 0; i < TEST_KEY_COUNT; i++) {
        /* Help shows every key as the flag people type: dashes for underscores. */
        char flag[64];
        snprintf(flag, sizeof flag, "--%s", test_keys[i].name);
        for (char *c = flag; *c != '\0'; c++)
            *c = *c == '_' ? '-' : *c;
        assert_non_null(strstr(text, flag));
        assert_non_null(strstr(text, test_keys[i].help));
    }
    assert_non_null(strstr(text, "<int>"));
    assert_non_null(strstr(text, "<bool>"));
    assert_non_null(strstr(text, "<string>"));
    assert_non_null(strstr(text, "default: tcp://127.0.0.1:5555"));
    assert_non_null(strstr(text, "default: 10"));
}

static void test_positional(void **state)
{
    (void)state;
    ops_config_t *cfg = NULL;
    char err[OPS_CONFIG_ERROR_MAX];
    int rc = load(&cfg, err, sizeof err, "first", "--port", "7", "second", "--verbose", "third.txt",
                  "-5", "--", "--port", "last", NULL);
    assert_int_equal(rc, 0);
    assert_int_equal(ops_config_int(cfg, "port"), 7);
    assert_true(ops_config_bool(cfg, "verbose"));
    assert_int_equal(ops_config_argc(cfg), 6);
    assert_string_equal(ops_config_arg(cfg, 0), "first");
    assert_string_equal(ops_config_arg(cfg, 1), "second");
    assert_string_equal(ops_config_arg(cfg, 2), "third.txt");
    assert_string_equal(ops_config_arg(cfg, 3), "-5");
    assert_string_equal(ops_config_arg(cfg, 4), "--port");
    assert_string_equal(ops_config_arg(cfg, 5), "last");
    ops_config_destroy(&cfg);
}

/* Flags are typed with dashes (--pin-file) while keys are snake_case (pin_file): both spell
 * the same key, in a flag and in a file. */
static void test_dash_is_underscore(void **state)
{
    test_dir_t *d = *state;
    ops_config_t *cfg = NULL;
    char err[OPS_CONFIG_ERROR_MAX];
    assert_int_equal(load(&cfg, err, sizeof err, "--pin-file", "/a", NULL), 0);
    assert_string_equal(ops_config_str(cfg, "pin_file"), "/a");
    ops_config_destroy(&cfg);
    assert_int_equal(load(&cfg, err, sizeof err, "--pin_file=/b", NULL), 0);
    assert_string_equal(ops_config_str(cfg, "pin_file"), "/b");
    ops_config_destroy(&cfg);
    write_file(d->file, "pin-file = /c\n");
    assert_int_equal(load(&cfg, err, sizeof err, "--config", d->file, NULL), 0);
    assert_string_equal(ops_config_str(cfg, "pin_file"), "/c");
    ops_config_destroy(&cfg);
    assert_int_equal(load(&cfg, err, sizeof err, "--pin.file", "/d", NULL), QC_ECONFIG);
    assert_null(cfg);
}

static void test_missing_file(void **state)
{
    test_dir_t *d = *state;
    char path[TEST_PATH_MAX];
    snprintf(path, sizeof path, "%s/does-not-exist.conf", d->path);
    ops_config_t *cfg = NULL;
    char err[OPS_CONFIG_ERROR_MAX];
    assert_int_equal(load(&cfg, err, sizeof err, "--config", path, NULL), QC_ECONFIG);
    assert_null(cfg);
    assert_non_null(strstr(err, path));

    write_file(d->file, "port = 1\n");
    assert_int_equal(load(&cfg, err, sizeof err, "--config", d->file, "--config", d->file, NULL),
                     QC_ECONFIG);
    assert_non_null(strstr(err, "twice"));
}

/* ------------------------------------------------------------------ bounds carried by keys */

static const ops_config_key_t bounded_keys[] = {
    {"listen", OPS_CONFIG_STRING, "tcp://127.0.0.1:5555", "where to listen",
     .check = ops_config_check_endpoint},
    {"ledger", OPS_CONFIG_STRING, NULL, "shards", .check = ops_config_check_endpoints},
    {"http_port", OPS_CONFIG_INT, "0", "HTTP port", .min = 0, .max = 65535},
    {"deadline_ms", OPS_CONFIG_INT, "30000", "report deadline", .min = 1000, .max = 86400000},
    {"skew", OPS_CONFIG_INT, "0", "unbounded"},
};
#define BOUNDED_KEY_COUNT (sizeof bounded_keys / sizeof bounded_keys[0])

/* Loads argv (NULL-terminated, argv[0] added) over bounded_keys. */
static int load_bounded(ops_config_t **cfg, char *err, size_t errcap, ...)
{
    char *argv[16] = {"prog"};
    int argc = 1;
    va_list ap;
    va_start(ap, errcap);
    char *arg;
    while ((arg = va_arg(ap, char *)) != NULL) {
        assert_true(argc < 15);
        argv[argc++] = arg;
    }
    va_end(ap);
    return ops_config_load("prog", NULL, bounded_keys, BOUNDED_KEY_COUNT, argc, argv, cfg, err,
                           errcap);
}

/* Expects one flag to be refused with a message holding want. */
static void expect_refused(const char *flag, const char *value, const char *want)
{
    ops_config_t *cfg = NULL;
    char err[OPS_CONFIG_ERROR_MAX] = "";
    assert_int_equal(load_bounded(&cfg, err, sizeof err, (char *)flag, (char *)value, NULL),
                     QC_ECONFIG);
    assert_null(cfg);
    if (strstr(err, want) == NULL)
        print_error("error '%s' lacks '%s'\n", err, want);
    assert_non_null(strstr(err, want));
}

/* Expects one flag to be accepted and read back as given. */
static void expect_accepted(const char *flag, const char *value, const char *key)
{
    ops_config_t *cfg = NULL;
    char err[OPS_CONFIG_ERROR_MAX] = "";
    int rc = load_bounded(&cfg, err, sizeof err, (char *)flag, (char *)value, NULL);
    if (rc != 0)
        print_error("%s %s refused: %s\n", flag, value, err);
    assert_int_equal(rc, 0);
    assert_string_equal(ops_config_str(cfg, key), value);
    ops_config_destroy(&cfg);
}

static void test_int_bounds_name_the_key(void **state)
{
    (void)state;
    expect_refused("--http-port", "70000", "http_port: 70000 is out of range 0..65535");
    expect_refused("--http-port", "-1", "http_port: -1 is out of range 0..65535");
    expect_refused("--deadline-ms", "0", "deadline_ms: 0 is out of range 1000..86400000");
    expect_refused("--deadline-ms", "86400001", "deadline_ms: 86400001 is out of range");
    /* The origin follows: the flag as typed. */
    expect_refused("--http-port", "70000", "(flag --http-port)");
    /* The bounds themselves are inside. */
    expect_accepted("--http-port", "0", "http_port");
    expect_accepted("--http-port", "65535", "http_port");
    expect_accepted("--deadline-ms", "1000", "deadline_ms");
    expect_accepted("--deadline-ms", "86400000", "deadline_ms");
    /* A key without bounds takes any int. */
    expect_accepted("--skew", "-9223372036854775808", "skew");
    /* A bad int is still a bad int, not a range error. */
    expect_refused("--http-port", "80x", "bad int value '80x' for key 'http_port'");
}

static void test_int_bounds_in_file(void **state)
{
    test_dir_t *d = *state;
    write_file(d->file, "listen = tcp://127.0.0.1:7000\nhttp_port = 70000\n");
    ops_config_t *cfg = NULL;
    char err[OPS_CONFIG_ERROR_MAX] = "";
    assert_int_equal(load_bounded(&cfg, err, sizeof err, "--config", d->file, NULL), QC_ECONFIG);
    assert_null(cfg);
    assert_non_null(strstr(err, "http_port: 70000 is out of range 0..65535"));
    assert_non_null(strstr(err, "line 2"));
    /* A flag inside the bounds overrides nothing wrong: the file is refused first. */
    write_file(d->file, "deadline_ms = 999\n");
    assert_int_equal(
        load_bounded(&cfg, err, sizeof err, "--config", d->file, "--deadline-ms", "5000", NULL),
        QC_ECONFIG);
    assert_non_null(strstr(err, "deadline_ms: 999 is out of range 1000..86400000"));
}

static void test_endpoint_checks_name_the_key(void **state)
{
    (void)state;
    expect_refused("--listen", "tcp://127.0.0.1:99999",
                   "listen: tcp://127.0.0.1:99999: port 99999 is out of range 1..65535");
    expect_refused("--listen", "tcp://127.0.0.1:0", "listen: tcp://127.0.0.1:0: port 0");
    expect_refused("--listen", "tcp://127.0.0.1:", "port  is out of range");
    expect_refused("--listen", "tcp://127.0.0.1:80a", "port 80a is out of range");
    expect_refused("--listen", "tcp://127.0.0.1", "has no port");
    expect_refused("--listen", "127.0.0.1:5555", "is not an endpoint");
    expect_refused("--listen", "", "listen: : an endpoint is empty");
    expect_refused("--listen", "tcp://a:1,tcp://b:2", "one endpoint is expected");
    expect_accepted("--listen", "tcp://*:7001", "listen");
    expect_accepted("--listen", "tcp://127.0.0.1:*", "listen");
    expect_accepted("--listen", "tcp://[::1]:65535", "listen");
    expect_accepted("--listen", "ipc:///tmp/qc.sock", "listen");
    /* Lists: shards by ';', instances by ','; every item is checked. */
    expect_accepted("--ledger", "tcp://127.0.0.1:1;tcp://127.0.0.1:2,tcp://127.0.0.1:3", "ledger");
    expect_accepted("--ledger", "", "ledger");
    expect_refused("--ledger", "tcp://127.0.0.1:1;tcp://127.0.0.1:70000",
                   "ledger: tcp://127.0.0.1:1;tcp://127.0.0.1:70000: port 70000 is out of range");
    expect_refused("--ledger", "tcp://127.0.0.1:1,,tcp://127.0.0.1:2", "an endpoint is empty");
    expect_refused("--ledger", "tcp://127.0.0.1:1;", "an endpoint is empty");
    /* The checks on their own, as services call them. */
    char why[OPS_CONFIG_ERROR_MAX];
    assert_true(ops_config_check_endpoint("tcp://10.0.0.1:7300", why, sizeof why));
    assert_false(ops_config_check_endpoint("tcp://10.0.0.1:65536", why, sizeof why));
    assert_string_equal(why, "port 65536 is out of range 1..65535");
    assert_true(ops_config_check_endpoints("tcp://10.0.0.1:7300", why, sizeof why));
}

/* A CURVE public key is refused unless it is 40 Z85 characters, the error saying which way it
 * is wrong (a path given for the key, as operators do, is named as such); empty is no key. */
static void test_curve_key_check(void **state)
{
    (void)state;
    char why[OPS_CONFIG_ERROR_MAX] = "";
    const char *good = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
    assert_int_equal(strlen(good), OPS_CONFIG_Z85_KEY_LEN);
    assert_true(ops_config_check_curve_key(good, why, sizeof why));
    assert_true(ops_config_check_curve_key("", why, sizeof why));
    assert_false(ops_config_check_curve_key("/etc/quancun/keys/ledger.key.pub", why, sizeof why));
    assert_string_equal(why, "a CURVE public key is 40 Z85 characters, not 32 (the line of the "
                             "key's .pub file, not its path)");
    char bad[OPS_CONFIG_Z85_KEY_LEN + 1];
    memcpy(bad, good, sizeof bad);
    bad[7] = '~'; /* not in the Z85 alphabet */
    assert_false(ops_config_check_curve_key(bad, why, sizeof why));
    assert_string_equal(why, "character 8 ('~') is not in the Z85 alphabet");
    bad[7] = ' ';
    assert_false(ops_config_check_curve_key(bad, why, sizeof why));
    assert_false(
        ops_config_check_curve_key("rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf", why, sizeof why));
}

static int load_bounded_help(void)
{
    ops_config_t *cfg = NULL;
    char err[OPS_CONFIG_ERROR_MAX];
    int rc = load_bounded(&cfg, err, sizeof err, "--help", NULL);
    assert_null(cfg);
    return rc;
}

static void test_help_shows_bounds(void **state)
{
    char text[TEST_HELP_MAX];
    assert_int_equal(capture_stdout(*state, load_bounded_help, text), 1);
    assert_non_null(strstr(text, "(default: 0; 0..65535)"));
    assert_non_null(strstr(text, "(default: 30000; 1000..86400000)"));
    /* No range shown for a key without one. */
    assert_non_null(strstr(text, "unbounded (default: 0)"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test_setup_teardown(test_file_then_flags, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_unknown_key_in_file, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_file_syntax_errors, setup_dir, teardown_dir),
        cmocka_unit_test(test_unknown_flag),
        cmocka_unit_test_setup_teardown(test_bad_int, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_bad_bool, setup_dir, teardown_dir),
        cmocka_unit_test(test_missing_value),
        cmocka_unit_test_setup_teardown(test_help, setup_dir, teardown_dir),
        cmocka_unit_test(test_positional),
        cmocka_unit_test_setup_teardown(test_missing_file, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_dash_is_underscore, setup_dir, teardown_dir),
        cmocka_unit_test(test_int_bounds_name_the_key),
        cmocka_unit_test_setup_teardown(test_int_bounds_in_file, setup_dir, teardown_dir),
        cmocka_unit_test(test_endpoint_checks_name_the_key),
        cmocka_unit_test(test_curve_key_check),
        cmocka_unit_test_setup_teardown(test_help_shows_bounds, setup_dir, teardown_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
