/* gateway_verify.c - believes a device-signed envelope only after its certificate and signature. */
#include "gateway_verify.h"

#include <assert.h>
#include <string.h>

#include <openssl/evp.h>

#include "proto_envelope.h"
#include "qc_error.h"

/* Opens bytes as an envelope of type signed by a device: certificate then signature. On success
 * *body points into *env_out (the caller destroys it) and device_id holds the certificate's
 * subject. */
static int gateway_verify_envelope(gateway_certcache_t *certs, const uint8_t *bytes, size_t len,
                                   time_t now, proto_type_t type, proto_envelope_t **env_out,
                                   char device_id[PROTO_DEVICE_ID_MAX + 1])
{
    assert(certs != NULL);
    assert(env_out != NULL);
    *env_out = NULL;
    proto_envelope_t *env = NULL;
    int rc = proto_envelope_open(bytes, len, &env);
    if (rc != 0)
        return rc;
    size_t cert_len = 0;
    const uint8_t *cert = proto_envelope_cert(env, &cert_len);
    if (cert == NULL) {
        proto_envelope_destroy(&env);
        return QC_EMISSING;
    }
    proto_verifier_t *ver = NULL; /* borrowed from the cache */
    rc = gateway_certcache_verifier(certs, cert, cert_len, now, device_id, &ver);
    if (rc == 0)
        rc = proto_envelope_verify_prepared(env, type, ver);
    if (rc != 0) {
        proto_envelope_destroy(&env);
        return rc;
    }
    *env_out = env;
    return 0;
}

int gateway_verify_request(gateway_certcache_t *certs, const uint8_t *bytes, size_t len, time_t now,
                           Quancun__LoadRequest **out, uint8_t digest[PROTO_DIGEST_SIZE])
{
    assert(out != NULL);
    assert(digest != NULL);
    *out = NULL;
    char device_id[PROTO_DEVICE_ID_MAX + 1];
    proto_envelope_t *env = NULL;
    int rc =
        gateway_verify_envelope(certs, bytes, len, now, PROTO_TYPE_LOAD_REQUEST, &env, device_id);
    if (rc != 0)
        return rc;
    size_t body_len = 0;
    const uint8_t *body = proto_envelope_body(env, &body_len);
    Quancun__LoadRequest *req = NULL;
    rc = proto_decode_load_request(body, body_len, &req);
    if (rc == 0 && strcmp(req->device_id, device_id) != 0)
        rc = QC_EDEVICEID;
    if (rc == 0 && req->key_version != proto_envelope_key_version(env))
        rc = QC_EMISMATCH;
    if (rc == 0)
        rc = proto_sha256(body, body_len, digest);
    proto_envelope_destroy(&env);
    if (rc != 0) {
        if (req != NULL)
            quancun__load_request__free_unpacked(req, NULL);
        return rc;
    }
    *out = req;
    return 0;
}

int gateway_verify_report(gateway_certcache_t *certs, const uint8_t *bytes, size_t len, time_t now,
                          Quancun__ExecutionReport **out)
{
    assert(out != NULL);
    *out = NULL;
    char device_id[PROTO_DEVICE_ID_MAX + 1];
    proto_envelope_t *env = NULL;
    int rc = gateway_verify_envelope(certs, bytes, len, now, PROTO_TYPE_EXECUTION_REPORT, &env,
                                     device_id);
    if (rc != 0)
        return rc;
    size_t body_len = 0;
    const uint8_t *body = proto_envelope_body(env, &body_len);
    Quancun__ExecutionReport *rep = NULL;
    rc = proto_decode_execution_report(body, body_len, &rep);
    if (rc == 0 && strcmp(rep->device_id, device_id) != 0)
        rc = QC_EDEVICEID;
    proto_envelope_destroy(&env);
    if (rc != 0) {
        if (rep != NULL)
            quancun__execution_report__free_unpacked(rep, NULL);
        return rc;
    }
    *out = rep;
    return 0;
}
