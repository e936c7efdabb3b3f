/* fuzz_config.c - libFuzzer target over ops_config_load() (ops/lib/ops_config.h): with
 * FUZZ_CONFIG_FILE the input is a config file, otherwise it is the flags (arguments separated by
 * NUL bytes), both against a table of keys like a service's.
 *
 * Properties, beyond "no crash, no leak, no undefined behaviour":
 * - every accepted INT and BOOL value reads back (ops_config_int/bool assert it parses);
 * - round trip: the accepted values, written again as "key=value" lines (file) or
 *   "--key=value" flags and the positional arguments after "--" (flags), load to the same
 *   values and arguments. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "ops_config.h"

#define ARGS_MAX 24 /* flags of one input; more are cut off */

static const ops_config_key_t KEYS[] = {
    {"listen", OPS_CONFIG_STRING, "tcp://127.0.0.1:7000", "where to listen"},
    {"shard_count", OPS_CONFIG_INT, "4", "ledger shards"},
    {"deadline_ms", OPS_CONFIG_INT, NULL, "per-call deadline"},
    {"verbose", OPS_CONFIG_BOOL, "no", "log more"},
    {"fsync", OPS_CONFIG_BOOL, NULL, "sync every commit"},
    {"name", OPS_CONFIG_STRING, NULL, "instance name"},
};
#define KEY_COUNT (sizeof(KEYS) / sizeof(KEYS[0]))

static int load(int argc, char **argv, ops_config_t **out)
{
    char err[OPS_CONFIG_ERROR_MAX];
    int rc =
        ops_config_load("qc-fuzz", "[options]", KEYS, KEY_COUNT, argc, argv, out, err, sizeof err);
    FUZZ_CHECK((rc == 0) == (*out != NULL));
    FUZZ_CHECK(rc == 0 || rc == 1 || err[0] != '\0'); /* a refusal says why */
    return rc;
}

/* Reads every key as its type: each set INT and BOOL must parse (the getters assert it). */
static void read_all(const ops_config_t *cfg)
{
    for (size_t i = 0; i < KEY_COUNT; i++) {
        const char *v = ops_config_str(cfg, KEYS[i].name);
        if (v == NULL)
            continue;
        FUZZ_CHECK(strlen(v) <= OPS_CONFIG_VALUE_MAX);
        if (KEYS[i].type == OPS_CONFIG_INT)
            (void)ops_config_int(cfg, KEYS[i].name);
        if (KEYS[i].type == OPS_CONFIG_BOOL)
            (void)ops_config_bool(cfg, KEYS[i].name);
    }
}

static void same_values(const ops_config_t *a, const ops_config_t *b)
{
    for (size_t i = 0; i < KEY_COUNT; i++) {
        const char *va = ops_config_str(a, KEYS[i].name), *vb = ops_config_str(b, KEYS[i].name);
        FUZZ_CHECK((va == NULL) == (vb == NULL));
        FUZZ_CHECK(va == NULL || strcmp(va, vb) == 0);
    }
    FUZZ_CHECK(ops_config_argc(a) == ops_config_argc(b));
    for (size_t i = 0; i < ops_config_argc(a); i++)
        FUZZ_CHECK(strcmp(ops_config_arg(a, i), ops_config_arg(b, i)) == 0);
}

#ifdef FUZZ_CONFIG_FILE

static char path[FUZZ_PATH_MAX], path2[FUZZ_PATH_MAX];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(path, sizeof path, "%s/fuzz.conf", fuzz_scratch_dir());
    snprintf(path2, sizeof path2, "%s/again.conf", fuzz_scratch_dir());
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_write_file(path, data, size);
    char *argv[] = {"qc-fuzz", "--config", path, NULL};
    ops_config_t *cfg = NULL;
    if (load(3, argv, &cfg) != 0)
        return 0;
    read_all(cfg);

    FILE *f = fopen(path2, "w");
    FUZZ_CHECK(f != NULL);
    for (size_t i = 0; i < KEY_COUNT; i++) {
        const char *v = ops_config_str(cfg, KEYS[i].name);
        if (v != NULL)
            fprintf(f, "%s=%s\n", KEYS[i].name, v);
    }
    FUZZ_CHECK(fclose(f) == 0);
    char *argv2[] = {"qc-fuzz", "--config", path2, NULL};
    ops_config_t *again = NULL;
    FUZZ_CHECK(load(3, argv2, &again) == 0);
    same_values(cfg, again);
    ops_config_destroy(&again);
    ops_config_destroy(&cfg);
    FUZZ_CHECK(cfg == NULL);
    return 0;
}

#else

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The input as NUL-separated arguments, in one NUL-terminated copy. */
    char *text = malloc(size + 1);
    FUZZ_CHECK(text != NULL);
    memcpy(text, data, size);
    text[size] = '\0';
    char *argv[ARGS_MAX + 2] = {"qc-fuzz"};
    int argc = 1;
    for (size_t at = 0; at <= size && argc <= ARGS_MAX; at += strlen(text + at) + 1)
        argv[argc++] = text + at;
    /* A file named by the fuzzer could be anything on this machine (a FIFO that never ends):
     * the file parser has its own target. */
    for (int i = 1; i < argc; i++)
        if (strstr(argv[i], "config") != NULL) {
            free(text);
            return 0;
        }
    ops_config_t *cfg = NULL;
    if (load(argc, argv, &cfg) != 0) {
        free(text);
        return 0;
    }
    read_all(cfg);

    /* Every set key as --key=value, then "--" and the positional arguments. */
    char *argv2[KEY_COUNT + ARGS_MAX + 3] = {"qc-fuzz"};
    char *owned[KEY_COUNT] = {0};
    int argc2 = 1;
    for (size_t i = 0; i < KEY_COUNT; i++) {
        const char *v = ops_config_str(cfg, KEYS[i].name);
        if (v == NULL)
            continue;
        size_t n = strlen(KEYS[i].name) + strlen(v) + 4;
        owned[i] = malloc(n);
        FUZZ_CHECK(owned[i] != NULL);
        snprintf(owned[i], n, "--%s=%s", KEYS[i].name, v);
        argv2[argc2++] = owned[i];
    }
    argv2[argc2++] = "--";
    for (size_t i = 0; i < ops_config_argc(cfg); i++)
        argv2[argc2++] = (char *)ops_config_arg(cfg, i);
    ops_config_t *again = NULL;
    FUZZ_CHECK(load(argc2, argv2, &again) == 0);
    same_values(cfg, again);
    ops_config_destroy(&again);
    ops_config_destroy(&cfg);
    for (size_t i = 0; i < KEY_COUNT; i++)
        free(owned[i]);
    free(text);
    return 0;
}

#endif
