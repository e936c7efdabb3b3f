/* gateway_trust.c - the gateway's device trust store, re-read when the CRL changes or on SIGHUP. */
#include "gateway_trust.h"

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ops_log.h"
#include "proto_cert.h"
#include "qc_error.h"

struct gateway_trust {
    const char *ca_path;  /* borrowed */
    const char *crl_path; /* borrowed; NULL for none */
    unsigned flags;       /* proto_trust_new_ex() flags */
    proto_trust_t *store;
    gateway_certcache_t *certs; /* over store */
    struct stat crl_seen;       /* the CRL file as last read (or tried) */
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

/* Builds a store and its cache from the files; on error nothing is kept. */
static int trust_load(const gateway_trust_t *t, proto_trust_t **store, gateway_certcache_t **certs)
{
    *store = NULL;
    *certs = NULL;
    int rc = proto_trust_new_ex(t->ca_path, t->crl_path, t->flags, store);
    if (rc == 0)
        rc = gateway_certcache_new(*store, certs);
    if (rc != 0)
        proto_trust_destroy(store);
    return rc;
}

/* Notes the CRL file's identity; a missing file reads as "changed" next time. */
static void trust_stat(gateway_trust_t *t)
{
    t->crl_seen_valid = t->crl_path != NULL && stat(t->crl_path, &t->crl_seen) == 0;
}

int gateway_trust_new(const char *ca_path, const char *crl_path, unsigned flags,
                      uint64_t hup_generation, gateway_trust_t **out)
{
    assert(ca_path != NULL);
    assert(out != NULL);
    *out = NULL;
    gateway_trust_t *t = calloc(1, sizeof *t);
    if (t == NULL)
        return QC_ENOMEM;
    t->ca_path = ca_path;
    t->crl_path = crl_path;
    t->flags = flags;
    t->hup_seen = hup_generation;
    /* Stat before reading: a change made while reading is then seen at the next poll. */
    trust_stat(t);
    int rc = trust_load(t, &t->store, &t->certs);
    if (rc != 0) {
        free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void gateway_trust_destroy(gateway_trust_t **trust_p)
{
    if (trust_p == NULL || *trust_p == NULL)
        return;
    gateway_trust_t *t = *trust_p;
    gateway_certcache_destroy(&t->certs);
    proto_trust_destroy(&t->store);
    free(t);
    *trust_p = NULL;
}

int gateway_trust_poll(gateway_trust_t *t, uint64_t now_ms, uint64_t hup_generation)
{
    assert(t != NULL);
    assert(t->store != NULL);
    assert(t->certs != NULL);
    bool hup = hup_generation != t->hup_seen;
    if (!hup && (t->crl_path == NULL || now_ms - t->polled_ms < GATEWAY_TRUST_POLL_MS))
        return 0;
    t->hup_seen = hup_generation;
    t->polled_ms = now_ms;
    const char *why = "sighup";
    if (!hup) {
        struct stat now_st;
        if (stat(t->crl_path, &now_st) != 0) {
            /* A CRL replaced by rename is absent for no time; a removed one keeps the old. */
            if (t->crl_seen_valid)
                ops_log(OPS_LOG_WARN, "gateway.crl_missing", "path", t->crl_path, "error",
                        strerror(errno), NULL);
            t->crl_seen_valid = false;
            return 0;
        }
        if (t->crl_seen_valid && same_file(&now_st, &t->crl_seen))
            return 0;
        why = "file_changed";
    }
    trust_stat(t);
    proto_trust_t *store = NULL;
    gateway_certcache_t *certs = NULL;
    int rc = trust_load(t, &store, &certs);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "gateway.crl_reload_failed", "path",
                t->crl_path != NULL ? t->crl_path : t->ca_path, "error", qc_errname(rc), "hint",
                "the previous CA bundle and CRL stay in use", NULL);
        return rc;
    }
    gateway_certcache_destroy(&t->certs);
    proto_trust_destroy(&t->store);
    t->store = store;
    t->certs = certs;
    ops_log(OPS_LOG_INFO, "gateway.crl_reloaded", "why", why, "path",
            t->crl_path != NULL ? t->crl_path : "(none)", NULL);
    return 1;
}

gateway_certcache_t *gateway_trust_certs(gateway_trust_t *t)
{
    assert(t != NULL);
    assert(t->certs != NULL);
    return t->certs;
}
