/* ops_config.c - settings from a key = value file (parsed with inih) overridden by flags.
 *
 * Precedence, lowest first: the key table's defaults, the --config file, the flags. Every
 * value is checked against its key's type when it is read, so a service never starts with a
 * setting it would only reject later. */
#include "ops_config.h"

#include "qc_error.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A config file is a handful of lines; anything this big is the wrong file. */
#define OPS_CONFIG_FILE_MAX (256 * 1024)
/* inih reads a line into an INI_MAX_LINE buffer (200 in the system library) and silently
 * splits longer ones, so longer lines are refused up front, naming the line. Room is kept
 * for the newline and the terminating NUL. */
#define OPS_CONFIG_LINE_MAX (INI_MAX_LINE - 2)

struct ops_config {
    const ops_config_key_t *keys; /* borrowed: the caller's table outlives the config */
    size_t key_count;
    char *values[OPS_CONFIG_KEYS_MAX]; /* owned copies, NULL when unset */
    char **args;                       /* owned copies of the positional arguments */
    size_t arg_count;
};

/* Where a value came from, for error messages. */
typedef struct ops_config_origin {
    const char *path; /* NULL for a flag */
    unsigned line;
} ops_config_origin_t;

/* State shared with the inih callback while one file line is parsed. */
typedef struct ops_config_file_ctx {
    ops_config_t *cfg;
    ops_config_origin_t origin;
    bool seen[OPS_CONFIG_KEYS_MAX]; /* a key set twice in one file is a mistake */
    char *err;
    size_t errcap;
    int rc;
} ops_config_file_ctx_t;

static const char *const ops_config_type_names[] = {"string", "int", "bool"};

static void ops_config_error(char *err, size_t errcap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void ops_config_error(char *err, size_t errcap, const char *fmt, ...)
{
    if (err == NULL || errcap == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errcap, fmt, ap);
    va_end(ap);
}

/* True when name (name_len bytes) spells key, where '-' and '_' are the same letter: flags
 * read naturally as --pin-file while keys stay snake_case (pin_file). */
static bool ops_config_name_equal(const char *key, const char *name, size_t name_len)
{
    if (strlen(key) != name_len)
        return false;
    for (size_t i = 0; i < name_len; i++) {
        char a = key[i] == '-' ? '_' : key[i];
        char b = name[i] == '-' ? '_' : name[i];
        if (a != b)
            return false;
    }
    return true;
}

/* Index of key name in the table, or -1. */
static int ops_config_find(const ops_config_key_t *keys, size_t key_count, const char *name,
                           size_t name_len)
{
    for (size_t i = 0; i < key_count; i++) {
        if (ops_config_name_equal(keys[i].name, name, name_len))
            return (int)i;
    }
    return -1;
}

static bool ops_config_parse_int(const char *text, int64_t *out)
{
    /* strtoll alone would accept leading blanks, trailing junk and silently clamp. */
    if (text[0] == '\0' || text[0] == ' ' || text[0] == '\t')
        return false;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0')
        return false;
    *out = (int64_t)v;
    return true;
}

static bool ops_config_parse_bool(const char *text, bool *out)
{
    static const char *const yes[] = {"true", "yes", "1", "on"};
    static const char *const no[] = {"false", "no", "0", "off"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcmp(text, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcmp(text, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

/* True when an INT key carries bounds (see ops_config_key_t). */
static bool ops_config_bounded(const ops_config_key_t *key)
{
    return key->type == OPS_CONFIG_INT && (key->min != 0 || key->max != 0);
}

/* True when value (already of the key's type) lies within the key's bounds; otherwise false
 * with the bound that refuses it in why. */
static bool ops_config_within_bounds(const ops_config_key_t *key, const char *value, char *why,
                                     size_t why_cap)
{
    if (key->type == OPS_CONFIG_STRING && key->check != NULL)
        return key->check(value, why, why_cap);
    int64_t v = 0;
    if (!ops_config_bounded(key) || !ops_config_parse_int(value, &v))
        return true;
    if (v >= key->min && v <= key->max)
        return true;
    snprintf(why, why_cap, "is out of range %" PRId64 "..%" PRId64, key->min, key->max);
    return false;
}

static void ops_config_describe_origin(const ops_config_origin_t *origin, const char *name,
                                       char *out, size_t cap)
{
    if (origin->path != NULL)
        snprintf(out, cap, "%s line %u", origin->path, origin->line);
    else
        snprintf(out, cap, "flag --%s", name);
    /* A flag is named as people type it, with dashes (as --help shows it). */
    for (char *c = out; origin->path == NULL && *c != '\0'; c++)
        *c = *c == '_' ? '-' : *c;
}

/* Checks value against the key's type and stores a copy. */
static int ops_config_set(ops_config_t *cfg, size_t index, const char *value,
                          const ops_config_origin_t *origin, char *err, size_t errcap)
{
    const ops_config_key_t *key = &cfg->keys[index];
    char where[OPS_CONFIG_ERROR_MAX];
    ops_config_describe_origin(origin, key->name, where, sizeof where);
    if (strlen(value) >= OPS_CONFIG_VALUE_MAX) {
        ops_config_error(err, errcap, "value for key '%s' is longer than %d bytes (%s)", key->name,
                         OPS_CONFIG_VALUE_MAX - 1, where);
        return QC_ECONFIG;
    }
    int64_t i;
    bool b;
    if (key->type == OPS_CONFIG_INT && !ops_config_parse_int(value, &i)) {
        ops_config_error(err, errcap, "bad int value '%s' for key '%s' (%s)", value, key->name,
                         where);
        return QC_ECONFIG;
    }
    if (key->type == OPS_CONFIG_BOOL && !ops_config_parse_bool(value, &b)) {
        ops_config_error(err, errcap,
                         "bad bool value '%s' for key '%s' (%s): use true/false, yes/no, "
                         "on/off or 1/0",
                         value, key->name, where);
        return QC_ECONFIG;
    }
    char why[OPS_CONFIG_ERROR_MAX] = "";
    if (!ops_config_within_bounds(key, value, why, sizeof why)) {
        /* The key first: "http_port: 70000 is out of range 0..65535 (flag --http-port)". */
        ops_config_error(err, errcap, "%s: %s%s%s (%s)", key->name, value,
                         key->type == OPS_CONFIG_STRING ? ": " : " ", why, where);
        return QC_ECONFIG;
    }
    char *copy = strdup(value);
    if (copy == NULL) {
        ops_config_error(err, errcap, "out of memory");
        return QC_ENOMEM;
    }
    free(cfg->values[index]);
    cfg->values[index] = copy;
    return 0;
}

/* inih callback: one key = value from the current line. Returns 0 (inih's "error") to make
 * ini_parse_string() report the line; the message is already in ctx. */
static int ops_config_on_pair(void *user, const char *section, const char *name, const char *value)
{
    ops_config_file_ctx_t *ctx = user;
    assert(section != NULL);
    assert(section[0] == '\0'); /* sections are refused before inih */
    (void)section;
    int index = ops_config_find(ctx->cfg->keys, ctx->cfg->key_count, name, strlen(name));
    if (index < 0) {
        ops_config_error(ctx->err, ctx->errcap, "unknown key '%s' in %s line %u", name,
                         ctx->origin.path, ctx->origin.line);
        ctx->rc = QC_ECONFIG;
        return 0;
    }
    if (ctx->seen[index]) {
        ops_config_error(ctx->err, ctx->errcap, "key '%s' set twice in %s (again on line %u)", name,
                         ctx->origin.path, ctx->origin.line);
        ctx->rc = QC_ECONFIG;
        return 0;
    }
    ctx->seen[index] = true;
    ctx->rc = ops_config_set(ctx->cfg, (size_t)index, value, &ctx->origin, ctx->err, ctx->errcap);
    return ctx->rc == 0;
}

/* Reads the whole file (bounded) into a NUL-terminated malloc'd buffer. */
static int ops_config_read_file(const char *path, char **out, char *err, size_t errcap)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        ops_config_error(err, errcap, "cannot open config file '%s': %s", path, strerror(errno));
        return QC_ECONFIG;
    }
    char *text = malloc(OPS_CONFIG_FILE_MAX + 1);
    if (text == NULL) {
        fclose(f);
        ops_config_error(err, errcap, "out of memory");
        return QC_ENOMEM;
    }
    size_t len = fread(text, 1, OPS_CONFIG_FILE_MAX + 1, f);
    bool failed = ferror(f) != 0;
    fclose(f);
    if (failed || len > OPS_CONFIG_FILE_MAX || memchr(text, '\0', len) != NULL) {
        ops_config_error(err, errcap, "cannot read config file '%s': %s", path,
                         failed                      ? "read error"
                         : len > OPS_CONFIG_FILE_MAX ? "larger than the limit"
                                                     : "contains a NUL byte");
        free(text);
        return QC_ECONFIG;
    }
    text[len] = '\0';
    *out = text;
    return 0;
}

/* Parses one line (without its newline) of the file. The file is fed to inih one line at a
 * time so every error names its line, and inih's multi-line continuation (an indented line
 * appending to the previous value) cannot silently swallow a line. */
static int ops_config_file_line(ops_config_file_ctx_t *ctx, const char *line, size_t len)
{
    const char *path = ctx->origin.path;
    unsigned lineno = ctx->origin.line;
    if (len > OPS_CONFIG_LINE_MAX) {
        ops_config_error(ctx->err, ctx->errcap, "%s line %u is longer than %d bytes", path, lineno,
                         OPS_CONFIG_LINE_MAX);
        return QC_ECONFIG;
    }
    char buf[OPS_CONFIG_LINE_MAX + 1];
    memcpy(buf, line, len);
    buf[len] = '\0';
    size_t skip = 0;
    while (isspace((unsigned char)buf[skip]))
        skip++;
    if (buf[skip] == '[') {
        ops_config_error(ctx->err, ctx->errcap,
                         "%s line %u: section headers are not used, write bare key = value", path,
                         lineno);
        return QC_ECONFIG;
    }
    ctx->rc = 0;
    int rc = ini_parse_string(buf, ops_config_on_pair, ctx);
    if (rc == 0)
        return 0;
    if (ctx->rc == 0) {
        ops_config_error(ctx->err, ctx->errcap, "%s line %u: expected key = value", path, lineno);
        return QC_ECONFIG;
    }
    return ctx->rc;
}

static int ops_config_load_file(ops_config_t *cfg, const char *path, char *err, size_t errcap)
{
    char *text = NULL;
    int rc = ops_config_read_file(path, &text, err, errcap);
    if (rc != 0)
        return rc;
    ops_config_file_ctx_t ctx = {
        .cfg = cfg, .origin = {.path = path, .line = 0}, .err = err, .errcap = errcap};
    const char *p = text;
    while (*p != '\0' && rc == 0) {
        const char *nl = strchr(p, '\n');
        size_t len = nl != NULL ? (size_t)(nl - p) : strlen(p);
        ctx.origin.line++;
        rc = ops_config_file_line(&ctx, p, len);
        p += len + (nl != NULL ? 1 : 0);
    }
    free(text);
    return rc;
}

static void ops_config_print_help(const char *program, const char *usage,
                                  const ops_config_key_t *keys, size_t key_count)
{
    printf(
        "Usage: %s %s\n\nOptions (flags override the config file, whose keys are the same names\n"
        "with '_' for '-'):\n",
        program, usage != NULL ? usage : "[options]");
    printf("  --%-24s %s\n", "config FILE", "read bare key = value lines from FILE");
    printf("  --%-24s %s\n", "help", "print this help and exit");
    for (size_t i = 0; i < key_count; i++) {
        char flag[OPS_CONFIG_ERROR_MAX];
        snprintf(flag, sizeof flag, "%s <%s>", keys[i].name, ops_config_type_names[keys[i].type]);
        /* Flags are shown with dashes, as people type them; the file takes either spelling. */
        for (char *c = flag; *c != '\0' && *c != ' '; c++)
            *c = *c == '_' ? '-' : *c;
        printf("  --%-24s %s", flag, keys[i].help != NULL ? keys[i].help : "");
        if (keys[i].default_value != NULL)
            printf(" (default: %s", keys[i].default_value);
        else
            printf(" (no default");
        if (ops_config_bounded(&keys[i]))
            printf("; %" PRId64 "..%" PRId64, keys[i].min, keys[i].max);
        printf(")\n");
    }
    fflush(stdout);
}

/* Asserts the key table is well formed: it is code, not input. */
static void ops_config_check_keys(const ops_config_key_t *keys, size_t key_count)
{
    (void)keys;
    assert(key_count <= OPS_CONFIG_KEYS_MAX);
    assert(keys != NULL || key_count == 0);
    for (size_t i = 0; i < key_count; i++) {
        assert(keys[i].name != NULL);
        assert(keys[i].name[0] != '\0');
        assert(strchr(keys[i].name, '=') == NULL);
        assert(strcmp(keys[i].name, "config") != 0);
        assert(strcmp(keys[i].name, "help") != 0);
        assert((unsigned)keys[i].type <= OPS_CONFIG_BOOL);
        assert(ops_config_find(keys, i, keys[i].name, strlen(keys[i].name)) < 0);
        /* Initialised: (void)bv reads it, and reading an indeterminate bool is undefined
         * (clang's -fsanitize=bool, in the fuzz build, stops there). */
        int64_t iv = 0;
        bool bv = false;
        (void)iv;
        (void)bv;
        assert(keys[i].default_value == NULL || keys[i].type != OPS_CONFIG_INT ||
               ops_config_parse_int(keys[i].default_value, &iv));
        assert(keys[i].default_value == NULL || keys[i].type != OPS_CONFIG_BOOL ||
               ops_config_parse_bool(keys[i].default_value, &bv));
        /* Bounds belong to their type, make sense, and hold for the default. */
        assert(keys[i].type == OPS_CONFIG_INT || keys[i].min == 0);
        assert(keys[i].type == OPS_CONFIG_INT || keys[i].max == 0);
        assert(keys[i].type == OPS_CONFIG_STRING || keys[i].check == NULL);
        assert(keys[i].min <= keys[i].max);
        char why[OPS_CONFIG_ERROR_MAX] = "";
        (void)why;
        assert(keys[i].default_value == NULL ||
               ops_config_within_bounds(&keys[i], keys[i].default_value, why, sizeof why));
    }
}

static bool ops_config_is_flag(const char *arg)
{
    return arg[0] == '-' && arg[1] == '-' && arg[2] != '\0';
}

/* First pass over argv: --help, and the --config path (which must be loaded before the
 * other flags are applied on top of it). Returns 1 for help, 0, or QC_ECONFIG. */
static int ops_config_scan(int argc, char **argv, const char **config_path, char *err,
                           size_t errcap)
{
    *config_path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--") == 0)
            break;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0)
            return 1;
        const char *path = NULL;
        if (strncmp(arg, "--config=", 9) == 0) {
            path = arg + 9;
        } else if (strcmp(arg, "--config") == 0) {
            if (i + 1 >= argc || ops_config_is_flag(argv[i + 1])) {
                ops_config_error(err, errcap, "missing value for --config");
                return QC_ECONFIG;
            }
            path = argv[++i];
        } else {
            continue;
        }
        if (*config_path != NULL) {
            ops_config_error(err, errcap, "--config given twice");
            return QC_ECONFIG;
        }
        *config_path = path;
    }
    return 0;
}

static int ops_config_add_arg(ops_config_t *cfg, const char *arg, char *err, size_t errcap)
{
    char *copy = strdup(arg);
    if (copy == NULL) {
        ops_config_error(err, errcap, "out of memory");
        return QC_ENOMEM;
    }
    cfg->args[cfg->arg_count++] = copy;
    return 0;
}

/* Applies one flag at argv[*i], consuming its value argument when it has one. */
static int ops_config_apply_flag(ops_config_t *cfg, int argc, char **argv, int *i, char *err,
                                 size_t errcap)
{
    const char *name = argv[*i] + 2;
    const char *eq = strchr(name, '=');
    size_t name_len = eq != NULL ? (size_t)(eq - name) : strlen(name);
    if (name_len == 6 && memcmp(name, "config", 6) == 0) {
        *i += eq == NULL ? 1 : 0; /* already loaded by the first pass */
        return 0;
    }
    int index = ops_config_find(cfg->keys, cfg->key_count, name, name_len);
    if (index < 0) {
        ops_config_error(err, errcap, "unknown flag --%.*s", (int)name_len, name);
        return QC_ECONFIG;
    }
    const ops_config_key_t *key = &cfg->keys[index];
    const ops_config_origin_t origin = {.path = NULL, .line = 0};
    if (eq != NULL)
        return ops_config_set(cfg, (size_t)index, eq + 1, &origin, err, errcap);
    const char *next = *i + 1 < argc ? argv[*i + 1] : NULL;
    if (key->type == OPS_CONFIG_BOOL) {
        /* A bare --flag is true; it takes the next argument only if that is a bool word,
         * so "--verbose file.txt" keeps file.txt as a positional argument. */
        bool b;
        if (next == NULL || !ops_config_parse_bool(next, &b))
            return ops_config_set(cfg, (size_t)index, "true", &origin, err, errcap);
        (*i)++;
        return ops_config_set(cfg, (size_t)index, next, &origin, err, errcap);
    }
    if (next == NULL || ops_config_is_flag(next)) {
        ops_config_error(err, errcap, "missing value for --%s", key->name);
        return QC_ECONFIG;
    }
    (*i)++;
    return ops_config_set(cfg, (size_t)index, next, &origin, err, errcap);
}

static int ops_config_apply_argv(ops_config_t *cfg, int argc, char **argv, char *err, size_t errcap)
{
    bool flags_done = false;
    for (int i = 1; i < argc; i++) {
        int rc;
        if (!flags_done && strcmp(argv[i], "--") == 0) {
            flags_done = true;
            continue;
        }
        if (!flags_done && ops_config_is_flag(argv[i]))
            rc = ops_config_apply_flag(cfg, argc, argv, &i, err, errcap);
        else
            rc = ops_config_add_arg(cfg, argv[i], err, errcap);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int ops_config_load(const char *program, const char *usage, const ops_config_key_t *keys,
                    size_t key_count, int argc, char **argv, ops_config_t **out, char *err,
                    size_t errcap)
{
    assert(program != NULL);
    assert(out != NULL);
    assert(argc >= 0);
    assert(argv != NULL || argc == 0);
    ops_config_check_keys(keys, key_count);
    *out = NULL;
    if (err != NULL && errcap > 0)
        err[0] = '\0';
    const char *config_path = NULL;
    int rc = ops_config_scan(argc, argv, &config_path, err, errcap);
    if (rc == 1) {
        ops_config_print_help(program, usage, keys, key_count);
        return 1;
    }
    if (rc != 0)
        return rc;
    ops_config_t *cfg = calloc(1, sizeof *cfg);
    if (cfg == NULL)
        goto nomem;
    cfg->keys = keys;
    cfg->key_count = key_count;
    cfg->args = calloc((size_t)(argc > 0 ? argc : 1), sizeof *cfg->args);
    if (cfg->args == NULL)
        goto nomem;
    for (size_t i = 0; i < key_count; i++) {
        if (keys[i].default_value != NULL &&
            (cfg->values[i] = strdup(keys[i].default_value)) == NULL)
            goto nomem;
    }
    if (config_path != NULL && (rc = ops_config_load_file(cfg, config_path, err, errcap)) != 0)
        goto err;
    if ((rc = ops_config_apply_argv(cfg, argc, argv, err, errcap)) != 0)
        goto err;
    *out = cfg;
    return 0;
nomem:
    ops_config_error(err, errcap, "out of memory");
    rc = QC_ENOMEM;
err:
    ops_config_destroy(&cfg);
    return rc;
}

static size_t ops_config_index(const ops_config_t *cfg, const char *name)
{
    assert(cfg != NULL);
    assert(name != NULL);
    int index = ops_config_find(cfg->keys, cfg->key_count, name, strlen(name));
    assert(index >= 0); /* asking for an undeclared key is a programming error */
    if (index < 0)
        abort(); /* even with NDEBUG: the index would be out of bounds */
    return (size_t)index;
}

const char *ops_config_str(const ops_config_t *cfg, const char *name)
{
    return cfg->values[ops_config_index(cfg, name)];
}

int64_t ops_config_int(const ops_config_t *cfg, const char *name)
{
    size_t index = ops_config_index(cfg, name);
    assert(cfg->keys[index].type == OPS_CONFIG_INT);
    assert(cfg->values[index] != NULL);
    int64_t v = 0;
    bool ok = ops_config_parse_int(cfg->values[index], &v);
    assert(ok); /* checked when it was set */
    (void)ok;
    return v;
}

bool ops_config_bool(const ops_config_t *cfg, const char *name)
{
    size_t index = ops_config_index(cfg, name);
    assert(cfg->keys[index].type == OPS_CONFIG_BOOL);
    assert(cfg->values[index] != NULL);
    bool v = false;
    bool ok = ops_config_parse_bool(cfg->values[index], &v);
    assert(ok);
    (void)ok;
    return v;
}

size_t ops_config_argc(const ops_config_t *cfg)
{
    assert(cfg != NULL);
    return cfg->arg_count;
}

const char *ops_config_arg(const ops_config_t *cfg, size_t i)
{
    assert(cfg != NULL);
    assert(i < cfg->arg_count);
    return cfg->args[i];
}

void ops_config_destroy(ops_config_t **cfg_p)
{
    assert(cfg_p != NULL);
    ops_config_t *cfg = *cfg_p;
    if (cfg == NULL)
        return;
    for (size_t i = 0; i < cfg->key_count; i++)
        free(cfg->values[i]);
    if (cfg->args != NULL) {
        for (size_t i = 0; i < cfg->arg_count; i++)
            free(cfg->args[i]);
        free(cfg->args);
    }
    free(cfg);
    *cfg_p = NULL;
}

/* Checks one endpoint, item_len bytes of text (a list's item is not NUL-terminated). */
static bool ops_config_check_one_endpoint(const char *text, size_t item_len, char *why,
                                          size_t why_cap)
{
    static const char tcp[] = "tcp://";
    if (item_len == 0) {
        snprintf(why, why_cap, "an endpoint is empty");
        return false;
    }
    const char *sep = NULL;
    for (size_t i = 0; sep == NULL && i + 3 <= item_len; i++)
        sep = memcmp(text + i, "://", 3) == 0 ? text + i : NULL;
    if (sep == NULL || sep == text || (size_t)(sep - text) + 3 >= item_len) {
        snprintf(why, why_cap, "'%.*s' is not an endpoint (transport://address)", (int)item_len,
                 text);
        return false;
    }
    if (item_len < sizeof tcp - 1 || memcmp(text, tcp, sizeof tcp - 1) != 0)
        return true; /* ipc://, inproc://: ZeroMQ checks the address when it binds */
    const char *end = text + item_len;
    const char *colon = end;
    while (colon > sep + 3 && colon[-1] != ':')
        colon--;
    if (colon == sep + 3) {
        snprintf(why, why_cap, "'%.*s' has no port (tcp://HOST:PORT)", (int)item_len, text);
        return false;
    }
    size_t port_len = (size_t)(end - colon);
    if (port_len == 1 && colon[0] == '*')
        return true;
    int64_t port = -1;
    char digits[8] = "";
    if (port_len > 0 && port_len < sizeof digits) {
        memcpy(digits, colon, port_len);
        digits[port_len] = '\0';
        if (!isdigit((unsigned char)digits[0]) || !ops_config_parse_int(digits, &port))
            port = -1;
    }
    if (port < 1 || port > OPS_CONFIG_PORT_MAX) {
        snprintf(why, why_cap, "port %.*s is out of range 1..%d", (int)port_len, colon,
                 OPS_CONFIG_PORT_MAX);
        return false;
    }
    return true;
}

bool ops_config_check_endpoint(const char *value, char *why, size_t why_cap)
{
    assert(value != NULL);
    if (strpbrk(value, ",;") != NULL) {
        snprintf(why, why_cap, "one endpoint is expected, not a list");
        return false;
    }
    return ops_config_check_one_endpoint(value, strlen(value), why, why_cap);
}

bool ops_config_check_endpoints(const char *value, char *why, size_t why_cap)
{
    assert(value != NULL);
    if (value[0] == '\0')
        return true;
    const char *p = value;
    for (;;) {
        size_t len = strcspn(p, ",;");
        if (!ops_config_check_one_endpoint(p, len, why, why_cap))
            return false;
        if (p[len] == '\0')
            return true;
        p += len + 1;
    }
}

bool ops_config_check_curve_key(const char *value, char *why, size_t why_cap)
{
    /* The Z85 alphabet of ZeroMQ's RFC 32. */
    static const char z85[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                              ".-:+=^!/*?&<>()[]{}@%$#";
    assert(value != NULL);
    size_t len = strlen(value);
    if (len == 0)
        return true;
    if (len != OPS_CONFIG_Z85_KEY_LEN) {
        snprintf(why, why_cap,
                 "a CURVE public key is %d Z85 characters, not %zu (the line of the key's .pub "
                 "file, not its path)",
                 OPS_CONFIG_Z85_KEY_LEN, len);
        return false;
    }
    size_t bad = strspn(value, z85);
    if (bad != len) {
        snprintf(why, why_cap, "character %zu ('%c') is not in the Z85 alphabet", bad + 1,
                 value[bad]);
        return false;
    }
    return true;
}
