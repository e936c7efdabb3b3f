/* proto_trust_watch.c - a device trust store re-read when the CRL changes or on SIGHUP. */
#include "proto_trust_watch.h"

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ops_log.h"

struct proto_trust_watch {
    char service[PROTO_TRUST_WATCH_SERVICE_MAX + 1];
    const char *ca_path;  /* borrowed */
    const char *crl_path; /* borrowed; NULL for none */
    unsigned flags;       /* proto_trust_new_ex() flags */
    proto_trust_t *store;
    struct stat crl_seen; /* the CRL file as last read (or tried) */
    bool crl_seen_valid;
    uint64_t polled_ms;
    uint64_t hup_seen;
};

/* True when a and b describe the same file contents as far as stat can tell. */
static bool same_file(const struct stat *a, const struct stat *b)
{
    return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* Notes the CRL file's identity; a missing file reads as "changed" next time. */
static void watch_stat(proto_trust_watch_t *w)
{
    w->crl_seen_valid = w->crl_path != NULL && stat(w->crl_path, &w->crl_seen) == 0;
}

static void watch_log(const proto_trust_watch_t *w, ops_log_level_t level, const char *what,
                      const char *k1, const char *v1, const char *k2, const char *v2)
{
    char event[PROTO_TRUST_WATCH_SERVICE_MAX + 32];
    snprintf(event, sizeof event, "%s.%s", w->service, what);
    ops_log(level, event, k1, v1, k2, v2, NULL);
}

int proto_trust_watch_new(const char *service, const char *ca_path, const char *crl_path,
                          unsigned flags, uint64_t hup_generation, proto_trust_watch_t **out)
{
    assert(service != NULL);
    assert(ca_path != NULL);
    assert(out != NULL);
    *out = NULL;
    if (strlen(service) > PROTO_TRUST_WATCH_SERVICE_MAX)
        return QC_EINVAL;
    proto_trust_watch_t *w = calloc(1, sizeof *w);
    if (w == NULL)
        return QC_ENOMEM;
    snprintf(w->service, sizeof w->service, "%s", service);
    w->ca_path = ca_path;
    w->crl_path = crl_path;
    w->flags = flags;
    w->hup_seen = hup_generation;
    /* Stat before reading: a change made while reading is then seen at the next poll. */
    watch_stat(w);
    int rc = proto_trust_new_ex(ca_path, crl_path, flags, &w->store);
    if (rc != 0) {
        free(w);
        return rc;
    }
    *out = w;
    return 0;
}

void proto_trust_watch_destroy(proto_trust_watch_t **w_p)
{
    assert(w_p != NULL);
    if (*w_p == NULL)
        return;
    proto_trust_destroy(&(*w_p)->store);
    free(*w_p);
    *w_p = NULL;
}

int proto_trust_watch_poll(proto_trust_watch_t *w, uint64_t now_ms, uint64_t hup_generation)
{
    assert(w != NULL);
    assert(w->store != NULL);
    bool hup = hup_generation != w->hup_seen;
    if (!hup && (w->crl_path == NULL || now_ms - w->polled_ms < PROTO_TRUST_WATCH_POLL_MS))
        return 0;
    w->hup_seen = hup_generation;
    w->polled_ms = now_ms;
    const char *why = "sighup";
    if (!hup) {
        struct stat now_st;
        if (stat(w->crl_path, &now_st) != 0) {
            /* A CRL replaced by rename is absent for no time; a removed one keeps the old. */
            if (w->crl_seen_valid)
                watch_log(w, OPS_LOG_WARN, "crl_missing", "path", w->crl_path, "error",
                          strerror(errno));
            w->crl_seen_valid = false;
            return 0;
        }
        if (w->crl_seen_valid && same_file(&now_st, &w->crl_seen))
            return 0;
        why = "file_changed";
    }
    watch_stat(w);
    proto_trust_t *store = NULL;
    int rc = proto_trust_new_ex(w->ca_path, w->crl_path, w->flags, &store);
    if (rc != 0) {
        watch_log(w, OPS_LOG_ERROR, "crl_reload_failed", "path",
                  w->crl_path != NULL ? w->crl_path : w->ca_path, "error", qc_errname(rc));
        return rc;
    }
    proto_trust_destroy(&w->store);
    w->store = store;
    watch_log(w, OPS_LOG_INFO, "crl_reloaded", "why", why, "path",
              w->crl_path != NULL ? w->crl_path : "(none)");
    return 1;
}

const proto_trust_t *proto_trust_watch_store(const proto_trust_watch_t *w)
{
    assert(w != NULL);
    assert(w->store != NULL);
    return w->store;
}
