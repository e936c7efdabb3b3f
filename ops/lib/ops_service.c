/* ops_service.c - one start-up for every service: config, log, signals, /metrics and /healthz.
 *
 * The HTTP server starts before the service it reports on exists, so /healthz goes through a
 * phase (starting, ready, stopping) kept under a lock: the service's health check runs only while
 * the lock says ready, and ops_service_stopping() waits for a check in progress to end. */
#include "ops_service.h"

#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_log.h"
#include "ops_signal.h"
#include "qc_error.h"

#define OPS_SERVICE_EVENT_MAX 64 /* "<service>.http_failed" */

typedef enum ops_service_phase {
    OPS_SERVICE_STARTING,
    OPS_SERVICE_READY,
    OPS_SERVICE_STOPPING,
} ops_service_phase_t;

struct ops_service {
    const ops_service_spec_t *spec;             /* borrowed */
    ops_config_key_t keys[OPS_CONFIG_KEYS_MAX]; /* the spec's keys, then the shared ones */
    ops_config_t *cfg;
    ops_http_t *http;
    pthread_mutex_t lock; /* guards phase, health and health_arg against the HTTP thread */
    ops_service_phase_t phase;
    ops_health_fn *health;
    void *health_arg;
};

static const ops_config_key_t ops_service_keys[OPS_SERVICE_KEYS] = {
    {"http_port", OPS_CONFIG_INT, "0", "port of /metrics and /healthz on 127.0.0.1 (0 = off)",
     .min = 0, .max = OPS_CONFIG_PORT_MAX},
    {"instance", OPS_CONFIG_STRING, "0", "instance name in logs"},
    {"log_level", OPS_CONFIG_STRING, "info", "debug, info, warn or error",
     .check = ops_log_level_check},
};

/* /healthz, from the HTTP thread: the phase, and in the ready phase the service's own check. */
static bool ops_service_health(void *arg, char *why, size_t why_cap)
{
    ops_service_t *svc = arg;
    pthread_mutex_lock(&svc->lock);
    bool ok = false;
    if (svc->phase == OPS_SERVICE_STARTING)
        snprintf(why, why_cap, "starting");
    else if (svc->phase == OPS_SERVICE_STOPPING)
        snprintf(why, why_cap, "stopping");
    else
        ok = svc->health == NULL || svc->health(svc->health_arg, why, why_cap);
    pthread_mutex_unlock(&svc->lock);
    return ok;
}

/* Loads the config over the merged key table and checks what ops_config cannot: no positional
 * arguments, and the spec's check across keys. Messages go to stderr: no log runs yet. */
static int ops_service_load(ops_service_t *svc, int argc, char **argv)
{
    const ops_service_spec_t *spec = svc->spec;
    size_t count = spec->key_count + OPS_SERVICE_KEYS;
    char err[OPS_CONFIG_ERROR_MAX] = "";
    int rc = ops_config_load(spec->program, spec->usage, svc->keys, count, argc, argv, &svc->cfg,
                             err, sizeof err);
    if (rc == 1)
        return OPS_SERVICE_HELP;
    if (rc == 0 && ops_config_argc(svc->cfg) != 0) {
        snprintf(err, sizeof err, "unexpected argument %s", ops_config_arg(svc->cfg, 0));
        rc = QC_ECONFIG;
    }
    if (rc == 0 && spec->check != NULL && !spec->check(svc->cfg, err, sizeof err))
        rc = QC_ECONFIG;
    if (rc != 0)
        fprintf(stderr, "%s: %s\n", spec->program, err);
    return rc;
}

int ops_service_start(const ops_service_spec_t *spec, int argc, char **argv, ops_service_t **out)
{
    assert(spec != NULL);
    assert(out != NULL);
    assert(spec->program != NULL);
    assert(spec->service != NULL);
    assert(spec->key_count <= OPS_CONFIG_KEYS_MAX - OPS_SERVICE_KEYS);
    assert(spec->keys != NULL || spec->key_count == 0);
    *out = NULL;
    ops_service_t *svc = calloc(1, sizeof *svc);
    if (svc == NULL) {
        fprintf(stderr, "%s: out of memory\n", spec->program);
        return QC_ENOMEM;
    }
    svc->spec = spec;
    if (spec->key_count > 0)
        memcpy(svc->keys, spec->keys, spec->key_count * sizeof spec->keys[0]);
    memcpy(&svc->keys[spec->key_count], ops_service_keys, sizeof ops_service_keys);
    pthread_mutex_init(&svc->lock, NULL);
    svc->phase = OPS_SERVICE_STARTING;
    int rc = ops_service_load(svc, argc, argv);
    if (rc != 0) {
        ops_service_destroy(&svc);
        return rc;
    }
    const ops_config_t *cfg = svc->cfg;
    int level = ops_log_level_parse(ops_config_str(cfg, "log_level"));
    assert(level >= 0); /* the key's check refused anything else */
    ops_log_init(spec->service, ops_config_str(cfg, "instance"), (ops_log_level_t)level);
    ops_signal_install();
    int64_t port = ops_config_int(cfg, "http_port");
    assert(port >= 0);
    assert(port <= OPS_CONFIG_PORT_MAX);
    if ((rc = ops_http_start((uint16_t)port, ops_service_health, svc, &svc->http)) != 0) {
        char event[OPS_SERVICE_EVENT_MAX];
        snprintf(event, sizeof event, "%s.http_failed", spec->service);
        ops_log(OPS_LOG_ERROR, event, "http_port", ops_config_str(cfg, "http_port"), "error",
                qc_strerror(rc), NULL);
        ops_service_destroy(&svc);
        return rc;
    }
    *out = svc;
    return 0;
}

int ops_service_start_status(int rc)
{
    assert(rc != 0);
    if (rc == OPS_SERVICE_HELP)
        return OPS_SERVICE_EXIT_OK;
    return rc == QC_ECONFIG ? OPS_SERVICE_EXIT_USAGE : OPS_SERVICE_EXIT_FAILED;
}

const ops_config_t *ops_service_config(const ops_service_t *svc)
{
    assert(svc != NULL);
    assert(svc->cfg != NULL);
    return svc->cfg;
}

void ops_service_ready(ops_service_t *svc, ops_health_fn *fn, void *arg)
{
    assert(svc != NULL);
    pthread_mutex_lock(&svc->lock);
    assert(svc->phase == OPS_SERVICE_STARTING);
    svc->health = fn;
    svc->health_arg = arg;
    svc->phase = OPS_SERVICE_READY;
    pthread_mutex_unlock(&svc->lock);
}

void ops_service_stopping(ops_service_t *svc)
{
    assert(svc != NULL);
    pthread_mutex_lock(&svc->lock);
    svc->phase = OPS_SERVICE_STOPPING;
    svc->health = NULL;
    svc->health_arg = NULL;
    pthread_mutex_unlock(&svc->lock);
}

void ops_service_destroy(ops_service_t **svc_p)
{
    assert(svc_p != NULL);
    ops_service_t *svc = *svc_p;
    if (svc == NULL)
        return;
    /* The HTTP thread reads the phase under the lock: stop it before the lock goes. */
    ops_http_stop(&svc->http);
    ops_config_destroy(&svc->cfg);
    pthread_mutex_destroy(&svc->lock);
    free(svc);
    *svc_p = NULL;
}

const ops_config_key_t *ops_service_shared_keys(void)
{
    return ops_service_keys;
}
