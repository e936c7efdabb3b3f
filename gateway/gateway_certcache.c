/* gateway_certcache.c - device certificates verified recently, looked up by fingerprint. */
#include "gateway_certcache.h"

#include <assert.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/asn1.h>
#include <openssl/crypto.h>
#include <openssl/x509.h>

#include "proto_envelope.h"
#include "qc_error.h"

typedef struct gateway_certcache_entry {
    bool used;
    uint8_t fp[PROTO_DIGEST_SIZE];
    char device_id[PROTO_DEVICE_ID_MAX + 1];
    proto_verifier_t *ver;        /* the certificate's key, prepared */
    time_t not_before, not_after; /* of the certificate */
    time_t verified_at;
} gateway_certcache_entry_t;

struct gateway_certcache {
    const proto_trust_t *trust;
    gateway_certcache_entry_t *slots;
    /* A verified key that could not be remembered: lent until the next call. */
    proto_verifier_t *uncached;
    uint64_t hits, misses;
};

int gateway_certcache_new(const proto_trust_t *trust, gateway_certcache_t **out)
{
    assert(trust != NULL);
    assert(out != NULL);
    _Static_assert((GATEWAY_CERTCACHE_SLOTS & (GATEWAY_CERTCACHE_SLOTS - 1)) == 0,
                   "slots must be a power of two");
    *out = NULL;
    gateway_certcache_t *c = calloc(1, sizeof *c);
    if (c == NULL)
        return QC_ENOMEM;
    c->slots = calloc(GATEWAY_CERTCACHE_SLOTS, sizeof *c->slots);
    if (c->slots == NULL) {
        free(c);
        return QC_ENOMEM;
    }
    c->trust = trust;
    *out = c;
    return 0;
}

void gateway_certcache_rebind(gateway_certcache_t *c, const proto_trust_t *trust)
{
    assert(c != NULL);
    assert(trust != NULL);
    for (size_t i = 0; i < GATEWAY_CERTCACHE_SLOTS; i++) {
        proto_verifier_destroy(&c->slots[i].ver);
        memset(&c->slots[i], 0, sizeof c->slots[i]);
    }
    proto_verifier_destroy(&c->uncached);
    c->trust = trust;
}

void gateway_certcache_destroy(gateway_certcache_t **cache_p)
{
    if (cache_p == NULL || *cache_p == NULL)
        return;
    gateway_certcache_t *c = *cache_p;
    for (size_t i = 0; i < GATEWAY_CERTCACHE_SLOTS; i++)
        proto_verifier_destroy(&c->slots[i].ver);
    proto_verifier_destroy(&c->uncached);
    free(c->slots);
    free(c);
    *cache_p = NULL;
}

void gateway_certcache_stats(const gateway_certcache_t *c, uint64_t *hits, uint64_t *misses)
{
    assert(c != NULL);
    assert(hits != NULL);
    assert(misses != NULL);
    *hits = c->hits;
    *misses = c->misses;
}

/* Reads the validity period of a certificate proto_cert_verify() accepted. */
static int gateway_certcache_validity(const uint8_t *der, size_t der_len, time_t *not_before,
                                      time_t *not_after)
{
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)der_len);
    if (x == NULL)
        return QC_EDECODE;
    struct tm nb, na;
    int ok = ASN1_TIME_to_tm(X509_get0_notBefore(x), &nb) == 1 &&
             ASN1_TIME_to_tm(X509_get0_notAfter(x), &na) == 1;
    X509_free(x);
    if (!ok)
        return QC_EDECODE;
    *not_before = timegm(&nb);
    *not_after = timegm(&na);
    return 0;
}

static bool gateway_certcache_fresh(const gateway_certcache_entry_t *e, time_t now)
{
    return now >= e->verified_at && now - e->verified_at < GATEWAY_CERTCACHE_TTL_S &&
           now >= e->not_before && now <= e->not_after;
}

int gateway_certcache_verifier(gateway_certcache_t *c, const uint8_t *der, size_t der_len,
                               time_t now, char device_id[PROTO_DEVICE_ID_MAX + 1],
                               proto_verifier_t **ver)
{
    assert(c != NULL);
    assert(device_id != NULL);
    assert(ver != NULL);
    *ver = NULL;
    proto_verifier_destroy(&c->uncached);
    uint8_t fp[PROTO_DIGEST_SIZE];
    EVP_PKEY *pub = NULL;
    gateway_certcache_entry_t *e = NULL;
    int rc;
    if (der != NULL && der_len > 0 && der_len <= PROTO_CERT_MAX) {
        if ((rc = proto_sha256(der, der_len, fp)) != 0)
            return rc;
        uint32_t slot = ((uint32_t)fp[0] | (uint32_t)fp[1] << 8 | (uint32_t)fp[2] << 16) &
                        (GATEWAY_CERTCACHE_SLOTS - 1);
        e = &c->slots[slot];
        if (e->used && CRYPTO_memcmp(e->fp, fp, sizeof fp) == 0 &&
            gateway_certcache_fresh(e, now)) {
            assert(e->ver != NULL);
            c->hits++;
            memcpy(device_id, e->device_id, sizeof e->device_id);
            *ver = e->ver;
            return 0;
        }
        c->misses++;
    }
    if ((rc = proto_cert_verify(c->trust, der, der_len, now, device_id, &pub)) != 0)
        return rc;
    proto_verifier_t *v = NULL;
    rc = proto_verifier_new(pub, &v);
    EVP_PKEY_free(pub);
    if (rc != 0)
        return rc;
    time_t nb = 0, na = 0;
    if (e == NULL || gateway_certcache_validity(der, der_len, &nb, &na) != 0) {
        c->uncached = v; /* verified; just not remembered */
        *ver = v;
        return 0;
    }
    proto_verifier_destroy(&e->ver);
    e->used = true;
    memcpy(e->fp, fp, sizeof fp);
    memcpy(e->device_id, device_id, sizeof e->device_id);
    e->ver = v;
    e->not_before = nb;
    e->not_after = na;
    e->verified_at = now;
    *ver = v;
    return 0;
}

int gateway_certcache_verify(gateway_certcache_t *c, const uint8_t *der, size_t der_len, time_t now,
                             char device_id[PROTO_DEVICE_ID_MAX + 1], EVP_PKEY **pub)
{
    assert(pub != NULL);
    *pub = NULL;
    proto_verifier_t *v = NULL;
    int rc = gateway_certcache_verifier(c, der, der_len, now, device_id, &v);
    if (rc != 0)
        return rc;
    EVP_PKEY *key = proto_verifier_key(v);
    if (EVP_PKEY_up_ref(key) != 1)
        return QC_ECRYPTO;
    *pub = key;
    return 0;
}
