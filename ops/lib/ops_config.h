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
 * - Flags given twice: the last one wins.
 * - A key may carry its bounds: an INT key its min..max, a STRING key a check function. A value
 *   outside them is refused when it is read, and the error names the key, the value and the
 *   bound ("http_port: 70000 is out of range 0..65535 (flag --http-port)"), so a service never
 *   starts with a setting it would only reject later, nor rejects one without saying which. */
#ifndef OPS_CONFIG_H
#define OPS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qc_error.h"

#define OPS_CONFIG_KEYS_MAX 128
#define OPS_CONFIG_VALUE_MAX 1024
#define OPS_CONFIG_ERROR_MAX 256
#define OPS_CONFIG_PORT_MAX 65535 /* a TCP port, as in an endpoint or http_port */
#define OPS_CONFIG_Z85_KEY_LEN 40 /* a 32-byte CURVE key in Z85 */

typedef enum ops_config_type {
    OPS_CONFIG_STRING,
    OPS_CONFIG_INT,  /* signed 64-bit decimal */
    OPS_CONFIG_BOOL, /* true/false/yes/no/1/0/on/off; a bare "--flag" means true */
} ops_config_type_t;

/* A check of a STRING value: true when value is acceptable; otherwise false, with why filled in
 * (capacity why_cap) by one phrase saying what is wrong ("port 99999 is out of range 1..65535"),
 * which the error message puts after the key and the value. Must not keep value. */
typedef bool ops_config_check_fn(const char *value, char *why, size_t why_cap);

typedef struct ops_config_key {
    const char *name; /* "listen", "shard_count" ... */
    ops_config_type_t type;
    const char *default_value; /* NULL = no default: ops_config_str() returns NULL */
    const char *help;          /* one line */
    /* INT keys: every value lies in min..max (inclusive); --help shows the range. Both 0 (left
     * out of the initializer) leave the key unbounded. */
    int64_t min;
    int64_t max;
    /* STRING keys: NULL, or a check every value must pass. The default must pass it too. */
    ops_config_check_fn *check;
} ops_config_key_t;

/* Checks for ops_config_key_t.check that services share.
 * ops_config_check_endpoint: one ZeroMQ endpoint, "transport://address"; for tcp the address
 * ends in ":PORT" with PORT in 1..OPS_CONFIG_PORT_MAX or "*" (any port, when binding).
 * ops_config_check_endpoints: a list of them separated by ',' or ';' (the ledger's shards);
 * an empty list is accepted (no endpoint configured), an empty item is not. */
bool ops_config_check_endpoint(const char *value, char *why, size_t why_cap);
bool ops_config_check_endpoints(const char *value, char *why, size_t why_cap);
/* ops_config_check_curve_key: a CURVE public key written in Z85, OPS_CONFIG_Z85_KEY_LEN
 * characters of the Z85 alphabet (as qc-curve-keygen writes PATH.pub); an empty value is
 * accepted (no key configured), so an optional key may carry the check. */
bool ops_config_check_curve_key(const char *value, char *why, size_t why_cap);

typedef struct ops_config ops_config_t;

/* Loads config for program (its name in --help) from keys[0..key_count) and argv (argv[0] is
 * the program path and is skipped). keys is borrowed and must outlive the config (a static
 * table); a malformed table (duplicate or reserved names, a default that does not parse as
 * its type) is a programming error and is asserted.
 * Returns 0 and sets *out; 1 when --help was printed to stdout (the caller exits 0);
 * QC_ECONFIG with a message in err (capacity errcap) naming the key, value and line
 * (unknown key, bad int, bad bool, a value outside its key's bounds, missing value, unreadable
 * file). */
QC_MUST_CHECK int ops_config_load(const char *program, const char *usage,
                                  const ops_config_key_t *keys, size_t key_count, int argc,
                                  char **argv, ops_config_t **out, char *err, size_t errcap);

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
