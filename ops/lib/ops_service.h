/* ops_service.h - the start-up every service shares: config, logs, signals, /metrics, exit status.
 *
 * A service's main declares its config keys and calls ops_service_start(), which
 *  1. loads the config file and the flags (ops_config.h) over the service's keys plus the three
 *     every service has, OPS_SERVICE_KEYS: http_port, instance and log_level;
 *  2. refuses positional arguments, and whatever the spec's check across keys refuses;
 *  3. starts the JSON log (ops_log.h) as the spec's service and the configured instance;
 *  4. installs the signal handling (ops_signal.h): SIGTERM/SIGINT stop, SIGHUP reloads;
 *  5. starts /metrics and /healthz on 127.0.0.1:http_port (ops_metrics.h; 0 = off).
 * Then main builds its service, tells /healthz it is ready with ops_service_ready(), runs its
 * loop, says it is stopping with ops_service_stopping() and destroys the service before the
 * start-up (whose config the service borrowed).
 *
 * /healthz answers 503 "starting" until ops_service_ready(), then what the service's health
 * check says, and 503 "stopping" after ops_service_stopping().
 *
 * Exit status of every service: 0 after a clean stop or --help, 1 when it failed once its log
 * was running (the log says why), 2 when the flags or the config are wrong (stderr says which
 * key and why, before anything starts). */
#ifndef OPS_SERVICE_H
#define OPS_SERVICE_H

#include <stdbool.h>
#include <stddef.h>

#include "ops_config.h"
#include "ops_metrics.h"
#include "qc_error.h"

#define OPS_SERVICE_EXIT_OK 0
#define OPS_SERVICE_EXIT_FAILED 1
#define OPS_SERVICE_EXIT_USAGE 2
#define OPS_SERVICE_HELP 1 /* ops_service_start(): --help was printed */
/* Keys the start-up adds to every service's table: http_port, instance, log_level. */
#define OPS_SERVICE_KEYS 3

/* A check across keys, run after each key passed its own bounds (for example "shard lies
 * below shard_count"). Returns true, or false with a message naming the keys in err. */
typedef bool(ops_service_check_fn)(const ops_config_t *cfg, char *err, size_t errcap);

typedef struct ops_service_spec {
    const char *program;          /* "qc-ledger": in --help and in messages on stderr */
    const char *service;          /* "ledger": the "service" field of every log line */
    const char *usage;            /* what follows "Usage: <program>" in --help */
    const ops_config_key_t *keys; /* the service's own keys: a static table */
    size_t key_count;             /* at most OPS_CONFIG_KEYS_MAX - OPS_SERVICE_KEYS */
    ops_service_check_fn *check;  /* NULL, or a check across keys */
} ops_service_spec_t;

typedef struct ops_service ops_service_t;

/* Runs steps 1-5 above for spec (borrowed; it must outlive the start-up) on argv.
 * Returns 0 and sets *out; OPS_SERVICE_HELP when --help was printed on stdout; QC_ECONFIG when
 * the flags, the file or a check refused (a message "<program>: <why>" on stderr; nothing was
 * started); QC_EIO when the HTTP port cannot be bound, QC_ENOMEM (both logged; nothing is left
 * running). ops_service_start_status() turns these into the exit status. */
QC_MUST_CHECK int ops_service_start(const ops_service_spec_t *spec, int argc, char **argv,
                                    ops_service_t **out);

/* The exit status for what ops_service_start() returned when it was not 0: OPS_SERVICE_EXIT_OK
 * after --help, OPS_SERVICE_EXIT_USAGE for QC_ECONFIG, OPS_SERVICE_EXIT_FAILED otherwise. */
int ops_service_start_status(int rc);

/* The loaded config (borrowed: valid until ops_service_destroy()). */
const ops_config_t *ops_service_config(const ops_service_t *svc);

/* The service is up: from now on /healthz answers what fn(arg) says (always 200 when fn is
 * NULL). fn is called from the HTTP thread. */
void ops_service_ready(ops_service_t *svc, ops_health_fn *fn, void *arg);

/* The service is going down: /healthz answers 503 "stopping". When this returns, the health
 * check of ops_service_ready() is not running and will not run again, so its arg may be freed. */
void ops_service_stopping(ops_service_t *svc);

/* Stops the HTTP server, frees the config and svc, nulls *svc_p; accepts NULL. */
void ops_service_destroy(ops_service_t **svc_p);

/* The OPS_SERVICE_KEYS keys the start-up adds to every table (a static table), for a
 * subcommand that reads the service's own config file without starting it (`init`). */
const ops_config_key_t *ops_service_shared_keys(void);

#endif
