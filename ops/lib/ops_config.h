/* ops_config.h - one config file (key = value, inih) plus flags that override every key.
 *
 * A program declares its keys in a table; ops_config_load() reads "--config FILE" (if given)
 * then applies "--key value" / "--key=value" flags on top. Unknown keys, in the file or as
 * flags, are an error naming the key (and the line). "--help" prints the usage built from
 * the table. Arguments that are not flags are kept, in order, as positional arguments.
 *
 * Details a caller may meet:
 * - The file is bare "key = value" lines (":" works too); "#" and ";" start comment lines and
 *   " ;" starts an inline comment. A "[section]" line, a key set twice, a line without "=" and
 *   a line longer than INI_MAX_LINE - 2 bytes (198 with the system inih; inih would split it
 *   silently) are errors naming the line. The file may be at most 256 KiB.
 * - "--" ends the flags: everything after it is positional. "-x" and "-5" are positional;
 *   "-h" is the same as "--help". "--config" given twice is an error.
 * - A bare BOOL flag takes the next argument as its value only when that is a bool word
 *   ("--verbose no"); otherwise it means true and the next argument is left alone.
 * - A non-BOOL flag whose next argument starts with "--" is missing its value.
 * - Flags given twice: the last one wins. */
#ifndef OPS_CONFIG_H
#define OPS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define OPS_CONFIG_KEYS_MAX 128
#define OPS_CONFIG_VALUE_MAX 1024
#define OPS_CONFIG_ERROR_MAX 256

typedef enum ops_config_type {
    OPS_CONFIG_STRING,
    OPS_CONFIG_INT,  /* signed 64-bit decimal */
    OPS_CONFIG_BOOL, /* true/false/yes/no/1/0/on/off; a bare "--flag" means true */
} ops_config_type_t;

typedef struct ops_config_key {
    const char *name; /* "listen", "shard_count" ... */
    ops_config_type_t type;
    const char *default_value; /* NULL = no default: ops_config_str() returns NULL */
    const char *help;          /* one line */
} ops_config_key_t;

typedef struct ops_config ops_config_t;

/* Loads config for program (its name in --help) from keys[0..key_count) and argv (argv[0] is
 * the program path and is skipped). keys is borrowed and must outlive the config (a static
 * table); a malformed table (duplicate or reserved names, a default that does not parse as
 * its type) is a programming error and is asserted.
 * Returns 0 and sets *out; 1 when --help was printed to stdout (the caller exits 0);
 * QC_ECONFIG with a message in err (capacity errcap) naming the key, value and line
 * (unknown key, bad int, bad bool, missing value, unreadable file). */
int ops_config_load(const char *program, const char *usage, const ops_config_key_t *keys,
                    size_t key_count, int argc, char **argv, ops_config_t **out, char *err,
                    size_t errcap);

/* Value of key name as a string (borrowed), or NULL when unset. Asserts name is declared. */
const char *ops_config_str(const ops_config_t *cfg, const char *name);
/* Value of an OPS_CONFIG_INT key. Asserts it is declared as INT and set. */
int64_t ops_config_int(const ops_config_t *cfg, const char *name);
/* Value of an OPS_CONFIG_BOOL key. Asserts it is declared as BOOL and set. */
bool ops_config_bool(const ops_config_t *cfg, const char *name);

/* Positional arguments (not flags), in order. */
size_t ops_config_argc(const ops_config_t *cfg);
const char *ops_config_arg(const ops_config_t *cfg, size_t i);

void ops_config_destroy(ops_config_t **cfg_p);

#endif
