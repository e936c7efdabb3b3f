/* gateway_trust.c - the gateway's device trust store (proto_trust_watch.h) and the
 * certificate cache over it, built again whenever the store is. */
#include "gateway_trust.h"

#include <assert.h>
#include <stdlib.h>

#include "proto_trust_watch.h"
#include "qc_error.h"

struct gateway_trust {
    proto_trust_watch_t *watch;
    gateway_certcache_t *certs; /* over the watch's current store */
};

int gateway_trust_new(const char *ca_path, const char *crl_path, unsigned flags,
                      uint64_t hup_generation, gateway_trust_t **out)
{
    assert(ca_path != NULL);
    assert(out != NULL);
    *out = NULL;
    gateway_trust_t *t = calloc(1, sizeof *t);
    if (t == NULL)
        return QC_ENOMEM;
    int rc = proto_trust_watch_new("gateway", ca_path, crl_path, flags, hup_generation, &t->watch);
    if (rc == 0)
        rc = gateway_certcache_new(proto_trust_watch_store(t->watch), &t->certs);
    if (rc != 0) {
        gateway_trust_destroy(&t);
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
    proto_trust_watch_destroy(&t->watch);
    free(t);
    *trust_p = NULL;
}

int gateway_trust_poll(gateway_trust_t *t, uint64_t now_ms, uint64_t hup_generation)
{
    assert(t != NULL);
    assert(t->watch != NULL);
    assert(t->certs != NULL);
    int rc = proto_trust_watch_poll(t->watch, now_ms, hup_generation);
    if (rc != 1)
        return rc;
    /* A new store: the cache is emptied, so nothing verified under the old CRL is answered
     * from memory. */
    gateway_certcache_rebind(t->certs, proto_trust_watch_store(t->watch));
    return 1;
}

gateway_certcache_t *gateway_trust_certs(gateway_trust_t *t)
{
    assert(t != NULL);
    assert(t->certs != NULL);
    return t->certs;
}
