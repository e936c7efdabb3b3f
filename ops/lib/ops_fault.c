/* ops_fault.c - named crash points armed from the environment, for the chaos suite. */
#include "ops_fault.h"

#include "ops_log.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A chaos test arms one or two points at a time; a few more leave room. */
#define OPS_FAULT_POINTS_MAX 16
#define OPS_FAULT_NAME_MAX 64
/* Decimal digits of a uint64 plus the NUL. */
#define OPS_FAULT_NUM_MAX 24

static pthread_once_t ops_fault_once = PTHREAD_ONCE_INIT;
static char ops_fault_names[OPS_FAULT_POINTS_MAX][OPS_FAULT_NAME_MAX];
static size_t ops_fault_count;
static uint64_t ops_fault_skip;
/* Hits of armed points so far, across all of them: QC_FAULT_SKIP counts these. */
static atomic_uint_fast64_t ops_fault_hits;

static void ops_fault_arm(const char *name, size_t len)
{
    if (len == 0)
        return;
    if (len >= OPS_FAULT_NAME_MAX || ops_fault_count == OPS_FAULT_POINTS_MAX) {
        /* A point we cannot arm would make a chaos test pass for the wrong reason. */
        ops_log(OPS_LOG_ERROR, "fault.not_armed", "point", name, "reason",
                len >= OPS_FAULT_NAME_MAX ? "name too long" : "too many points", NULL);
        return;
    }
    memcpy(ops_fault_names[ops_fault_count], name, len);
    ops_fault_names[ops_fault_count][len] = '\0';
    ops_fault_count++;
}

/* Reads QC_FAULT and QC_FAULT_SKIP once; pthread_once makes the first hits from several
 * threads agree on the result. */
static void ops_fault_init(void)
{
    const char *spec = getenv("QC_FAULT");
    if (spec == NULL || spec[0] == '\0')
        return;
    const char *p = spec;
    while (*p != '\0') {
        size_t len = strcspn(p, ",");
        ops_fault_arm(p, len);
        p += len;
        if (*p == ',')
            p++;
    }
    const char *skip = getenv("QC_FAULT_SKIP");
    if (skip != NULL && skip[0] != '\0') {
        char *end = NULL;
        errno = 0;
        unsigned long long v = strtoull(skip, &end, 10);
        if (errno != 0 || *end != '\0' || skip[0] == '-') {
            ops_log(OPS_LOG_ERROR, "fault.bad_skip", "value", skip, NULL);
            v = 0;
        }
        ops_fault_skip = (uint64_t)v;
    }
    for (size_t i = 0; i < ops_fault_count; i++)
        ops_log(OPS_LOG_WARN, "fault.armed", "point", ops_fault_names[i], NULL);
}

static bool ops_fault_armed(const char *name)
{
    for (size_t i = 0; i < ops_fault_count; i++) {
        if (strcmp(ops_fault_names[i], name) == 0)
            return true;
    }
    return false;
}

void ops_fault_point(const char *name)
{
    assert(name != NULL);
    int rc = pthread_once(&ops_fault_once, ops_fault_init);
    assert(rc == 0);
    (void)rc;
    if (ops_fault_count == 0 || !ops_fault_armed(name))
        return;
    uint64_t hit = atomic_fetch_add(&ops_fault_hits, 1);
    if (hit < ops_fault_skip)
        return;
    char hit_text[OPS_FAULT_NUM_MAX];
    snprintf(hit_text, sizeof hit_text, "%" PRIu64, hit + 1);
    /* ops_log is one synchronous write(), so the line is out before the signal lands. */
    ops_log(OPS_LOG_ERROR, "fault.fired", "point", name, "hit", hit_text, NULL);
    kill(getpid(), SIGKILL);
    for (;;)
        pause(); /* SIGKILL cannot be caught: this only waits for delivery */
}
