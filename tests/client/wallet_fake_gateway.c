/* wallet_fake_gateway.c - a stand-in gateway for the qc-wallet CLI tests: it speaks the real
 * RPC over CURVE and signs allows and outcomes with bank keys from files, idempotently by
 * txn like the ledger, and can lose replies or refuse on demand. It checks the device's
 * signature with the certificate in the envelope but no CA: the real gateway does that. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <zmq.h>

#include "ops_log.h"
#include "ops_signal.h"
#include "ops_time.h"
#include "proto_cert.h"
#include "proto_envelope.h"
#include "proto_rpc.h"
#include "qc_error.h"
#include "quancun.pb-c.h"

#define GW_POLL_MS 200
#define GW_LOADS_MAX 64
#define GW_DEADLINE_MS 60000

typedef struct gw_load {
    uint8_t txn[16];
    uint8_t *allow;
    size_t allow_len;
    EVP_PKEY *device_key;
} gw_load_t;

static gw_load_t loads[GW_LOADS_MAX];
static size_t load_count;
static EVP_PKEY *allow_key, *outcome_key;
static int lose_load_replies;
static const char *lose_while_path; /* replies to load are lost while this file exists */
static int refuse_code;

static void usage(FILE *to)
{
    fprintf(to, "usage: wallet_fake_gateway --endpoint E --keys CURVE_KEYS --allow-key PEM\n"
                "         --outcome-key PEM [--lose-load-replies N] [--lose-load-while FILE]\n"
                "         [--refuse CODE] [--ready FILE]\n");
}

static int sign(proto_type_t type, const ProtobufCMessage *m, EVP_PKEY *key, uint8_t **out,
                size_t *out_len)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *body = malloc(len);
    if (body == NULL)
        return QC_ENOMEM;
    protobuf_c_message_pack(m, body);
    int rc = proto_envelope_sign(type, body, len, key, 1, NULL, 0, out, out_len);
    free(body);
    return rc;
}

static gw_load_t *find(const uint8_t *txn)
{
    for (size_t i = 0; i < load_count; i++) {
        if (memcmp(loads[i].txn, txn, 16) == 0)
            return &loads[i];
    }
    return NULL;
}

/* Verifies a device-signed envelope; for a request, with the certificate it carries. */
static int open_signed(const uint8_t *b, size_t n, proto_type_t type, EVP_PKEY *key,
                       proto_envelope_t **env, EVP_PKEY **cert_key)
{
    int rc = proto_envelope_open(b, n, env);
    if (rc != 0)
        return rc;
    if (key == NULL) {
        size_t cert_len = 0;
        const uint8_t *der = proto_envelope_cert(*env, &cert_len);
        X509 *cert = der != NULL ? d2i_X509(NULL, &der, (long)cert_len) : NULL;
        key = cert != NULL ? X509_get_pubkey(cert) : NULL;
        X509_free(cert);
        if (key == NULL)
            return QC_ECERT;
        *cert_key = key;
    }
    return proto_envelope_verify(*env, type, key);
}

static int handle_load(const proto_rpc_request_t *req, uint8_t **out, size_t *out_len, bool *lose)
{
    proto_envelope_t *env = NULL;
    EVP_PKEY *dkey = NULL;
    int rc = open_signed(req->body, req->body_len, PROTO_TYPE_LOAD_REQUEST, NULL, &env, &dkey);
    size_t body_len = 0;
    const uint8_t *body = rc == 0 ? proto_envelope_body(env, &body_len) : NULL;
    Quancun__LoadRequest *r = rc == 0 ? quancun__load_request__unpack(NULL, body_len, body) : NULL;
    if (rc == 0 && (r == NULL || r->txn_id.len != 16))
        rc = QC_EDECODE;
    if (rc == 0 && refuse_code != 0)
        rc = refuse_code;
    gw_load_t *l = rc == 0 ? find(r->txn_id.data) : NULL;
    if (rc == 0 && l == NULL) {
        if (load_count == GW_LOADS_MAX) {
            rc = QC_EFULL;
            goto out;
        }
        uint8_t digest[32];
        if ((rc = proto_sha256(body, body_len, digest)) != 0)
            goto out;
        Quancun__LoadAllow a = QUANCUN__LOAD_ALLOW__INIT;
        a.txn_id = r->txn_id;
        a.device_id = r->device_id;
        a.amount = r->amount;
        a.currency = r->currency;
        a.counter = r->counter;
        a.request_digest.data = digest;
        a.request_digest.len = sizeof(digest);
        a.host_time_ms = ops_time_wall_ms();
        a.deadline_ms = a.host_time_ms + GW_DEADLINE_MS;
        a.account_id = r->account_id;
        l = &loads[load_count];
        rc = sign(PROTO_TYPE_LOAD_ALLOW, &a.base, allow_key, &l->allow, &l->allow_len);
        if (rc == 0) {
            memcpy(l->txn, r->txn_id.data, 16);
            l->device_key = dkey;
            dkey = NULL;
            load_count++;
        }
    }
    if (rc == 0) {
        *out = malloc(l->allow_len);
        if (*out == NULL) {
            rc = QC_ENOMEM;
            goto out;
        }
        memcpy(*out, l->allow, l->allow_len);
        *out_len = l->allow_len;
        if (lose_load_replies > 0) {
            lose_load_replies--;
            *lose = true;
        }
        if (lose_while_path != NULL && access(lose_while_path, F_OK) == 0)
            *lose = true;
    }
out:
    if (r != NULL)
        quancun__load_request__free_unpacked(r, NULL);
    EVP_PKEY_free(dkey);
    proto_envelope_destroy(&env);
    return rc;
}

static int handle_report(const proto_rpc_request_t *req, uint8_t **out, size_t *out_len)
{
    proto_envelope_t *env = NULL;
    int rc = proto_envelope_open(req->body, req->body_len, &env);
    if (rc != 0)
        return rc;
    size_t body_len = 0;
    const uint8_t *body = proto_envelope_body(env, &body_len);
    Quancun__ExecutionReport *er = quancun__execution_report__unpack(NULL, body_len, body);
    gw_load_t *l = er != NULL && er->txn_id.len == 16 ? find(er->txn_id.data) : NULL;
    if (l == NULL)
        rc = er == NULL ? QC_EDECODE : QC_ENOTFOUND;
    if (rc == 0)
        rc = proto_envelope_verify(env, PROTO_TYPE_EXECUTION_REPORT, l->device_key);
    if (rc == 0) {
        Quancun__LoadOutcome o = QUANCUN__LOAD_OUTCOME__INIT;
        o.txn_id = er->txn_id;
        o.device_id = er->device_id;
        o.state = er->status == QUANCUN__REPORT_STATUS__REPORT_APPLIED
                      ? QUANCUN__LOAD_STATE__LOAD_CONFIRMED
                      : QUANCUN__LOAD_STATE__LOAD_COMPENSATED;
        o.host_time_ms = ops_time_wall_ms();
        rc = sign(PROTO_TYPE_LOAD_OUTCOME, &o.base, outcome_key, out, out_len);
    }
    if (er != NULL)
        quancun__execution_report__free_unpacked(er, NULL);
    proto_envelope_destroy(&env);
    return rc;
}

static EVP_PKEY *load_private(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    return k;
}

int main(int argc, char **argv)
{
    proto_rpc_server_config_t cfg = {.service = "gateway", .allow_any = true};
    const char *keys_path = NULL, *allow_path = NULL, *outcome_path = NULL, *ready = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (v == NULL) {
            usage(stderr);
            return 2;
        } else if (strcmp(a, "--endpoint") == 0) {
            cfg.endpoint = v;
        } else if (strcmp(a, "--keys") == 0) {
            keys_path = v;
        } else if (strcmp(a, "--allow-key") == 0) {
            allow_path = v;
        } else if (strcmp(a, "--outcome-key") == 0) {
            outcome_path = v;
        } else if (strcmp(a, "--lose-load-replies") == 0) {
            lose_load_replies = atoi(v);
        } else if (strcmp(a, "--lose-load-while") == 0) {
            lose_while_path = v;
        } else if (strcmp(a, "--refuse") == 0) {
            refuse_code = atoi(v);
        } else if (strcmp(a, "--ready") == 0) {
            ready = v;
        } else {
            usage(stderr);
            return 2;
        }
        i++;
    }
    if (cfg.endpoint == NULL || keys_path == NULL || allow_path == NULL || outcome_path == NULL) {
        usage(stderr);
        return 2;
    }
    ops_log_init("fake-gateway", "0", OPS_LOG_WARN);
    ops_signal_install();
    allow_key = load_private(allow_path);
    outcome_key = load_private(outcome_path);
    proto_curve_keypair_t keys;
    if (allow_key == NULL || outcome_key == NULL || proto_curve_keypair_load(keys_path, &keys) != 0)
        return 1;
    cfg.keys = &keys;
    void *ctx = zmq_ctx_new();
    proto_rpc_server_t *srv = NULL;
    int rc = proto_rpc_server_new(ctx, &cfg, &srv);
    proto_curve_keypair_wipe(&keys);
    if (rc != 0)
        return 1;
    if (ready != NULL) {
        FILE *f = fopen(ready, "w");
        if (f != NULL)
            fclose(f);
    }
    while (!ops_signal_stop_requested()) {
        proto_rpc_request_t *req = NULL;
        rc = proto_rpc_server_recv(srv, GW_POLL_MS, &req);
        if (rc == QC_ETIMEOUT)
            continue;
        if (rc != 0)
            break;
        uint8_t *out = NULL;
        size_t out_len = 0;
        bool lose = false;
        if (strcmp(req->method, "load") == 0)
            rc = handle_load(req, &out, &out_len, &lose);
        else if (strcmp(req->method, "report") == 0 || strcmp(req->method, "sync") == 0)
            rc = handle_report(req, &out, &out_len);
        else
            rc = QC_EMETHOD;
        if (!lose) {
            const char *msg = rc == QC_EFUNDS ? "account acct-cli holds 0.00" : NULL;
            if (proto_rpc_server_reply(srv, req, rc, msg, out, out_len) != 0)
                fprintf(stderr, "wallet_fake_gateway: a reply could not be sent\n");
        }
        free(out);
        proto_rpc_request_destroy(&req);
    }
    proto_rpc_server_destroy(&srv);
    zmq_ctx_term(ctx);
    for (size_t i = 0; i < load_count; i++) {
        free(loads[i].allow);
        EVP_PKEY_free(loads[i].device_key);
    }
    EVP_PKEY_free(allow_key);
    EVP_PKEY_free(outcome_key);
    return 0;
}
