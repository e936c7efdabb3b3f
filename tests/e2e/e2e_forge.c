/* e2e_forge.c - crafts what qc-wallet never sends (replays, altered, misattributed and forged
 * messages), sends it to a real gateway or service over CURVE and prints the reply's code.
 *
 * Commands (each prints one line: the reply code's name, e.g. QC_EBADSIG, or QC_OK followed by
 * key=value details; QC_ETIMEOUT when nothing answered):
 *   request  sign a LoadRequest with --key (attaching --cert) and send it as "load"
 *   report   sign an ExecutionReport with --key (attaching --cert) and send it as "report"
 *   send     send the bytes of --in as --method (a replay)
 *   tamper   change the amount inside the signed request --in, keep its signature, send it
 *   call     call --method with the bytes of --in (or nothing) on any service
 *   sign     ask a signer to sign a body of --kind allow|outcome|checkpoint made up here (an
 *            allow of --amount for --device and --account), as any key may try
 *   mitm     a man in the middle between a device and the gateway that alters every allow
 *            (--tamper amount: keeps the bank's signature; --tamper resign: signs with a key
 *            of its own; --tamper none: alters nothing); it forwards everything else
 *            unchanged, until SIGTERM. With --save FILE it records the last load request.
 * Exit status: 0 when a line was printed, 1 on a local failure, 2 on bad usage. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <zmq.h>

#include "ops_hex.h"
#include "ops_log.h"
#include "ops_signal.h"
#include "ops_time.h"
#include "proto_cert.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "proto_rpc.h"
#include "qc_error.h"
#include "quancun.pb-c.h"
#include "signer.pb-c.h"

#define FORGE_TIMEOUT_MS_DEFAULT 5000
#define FORGE_FILE_MAX (256 * 1024)
#define FORGE_MITM_POLL_MS 200
#define FORGE_KEY_VERSION 1
#define FORGE_CURRENCY_DEFAULT 156
#define FORGE_ALLOW_AMOUNT_DELTA 100 /* what the man in the middle adds to an allow */

static char forge_txn_hex[2 * PROTO_TXN_ID_SIZE + 1]; /* printed after the code when set */

/* Every option of every command; unset strings are NULL. */
typedef struct forge_opts {
    const char *endpoint, *server_key, *curve_keys, *method, *in, *save, *allow_out;
    const char *key, *cert, *device, *account, *txn_hex, *status, *allow, *reason;
    const char *listen, *tamper, *kind;
    long long amount, counter, balance, currency, timeout_ms;
    bool no_send;
} forge_opts_t;

static void usage(FILE *to)
{
    fprintf(to, "usage: e2e_forge COMMAND --endpoint E --server-key Z85 [--curve-keys FILE]\n"
                "                 [--timeout-ms N] options\n"
                "  request --key PEM --cert PEM|- --device ID --account ID --amount N --counter C\n"
                "          [--balance B] [--currency N] [--txn HEX32] [--save FILE]\n"
                "          [--allow-out FILE] [--no-send]\n"
                "  report  --key PEM --cert PEM --device ID --account ID --txn HEX32 --counter C\n"
                "          --balance B --status applied|rejected [--allow FILE] [--reason R]\n"
                "  send    --method M --in FILE\n"
                "  tamper  --in FILE --amount N\n"
                "  call    --method M [--in FILE]\n"
                "  sign    --kind allow|outcome|checkpoint [--device ID] [--account ID]\n"
                "          [--amount N] (against a signer)\n"
                "  mitm    --listen E --curve-keys FILE --tamper amount|resign|none [--save FILE]\n"
                "          (--endpoint and --server-key name the real gateway)\n");
}

static int read_file(const char *path, uint8_t **out, size_t *out_len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return QC_EIO;
    uint8_t *buf = malloc(FORGE_FILE_MAX);
    size_t n = buf != NULL ? fread(buf, 1, FORGE_FILE_MAX, f) : 0;
    fclose(f);
    if (buf == NULL)
        return QC_ENOMEM;
    *out = buf;
    *out_len = n;
    return 0;
}

static int write_file(const char *path, const uint8_t *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return QC_EIO;
    size_t w = fwrite(b, 1, n, f);
    return fclose(f) == 0 && w == n ? 0 : QC_EIO;
}

static int cert_der(const char *path, uint8_t **out, size_t *out_len)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return QC_EIO;
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (x == NULL)
        return QC_ECERT;
    unsigned char *der = NULL;
    int n = i2d_X509(x, &der);
    X509_free(x);
    if (n <= 0)
        return QC_ECRYPTO;
    *out = der;
    *out_len = (size_t)n;
    return 0;
}

/* Signs msg's packed bytes as type with the device key and certificate of opts. */
static int sign_as_device(const forge_opts_t *o, proto_type_t type, const ProtobufCMessage *msg,
                          uint8_t **out, size_t *out_len)
{
    EVP_PKEY *key = NULL;
    uint8_t *body = NULL, *der = NULL;
    size_t body_len = 0, der_len = 0;
    int rc = proto_key_load_pem(o->key, &key);
    if (rc == 0 && strcmp(o->cert, "-") != 0) /* "-": an envelope without a certificate */
        rc = cert_der(o->cert, &der, &der_len);
    if (rc == 0)
        rc = proto_pack(msg, &body, &body_len);
    if (rc == 0)
        rc = proto_envelope_sign(type, body, body_len, key, FORGE_KEY_VERSION, der, der_len, out,
                                 out_len);
    EVP_PKEY_free(key);
    OPENSSL_free(der);
    free(body);
    return rc;
}

/* Our own CURVE identity: a file, or a fresh pair that no allow-list knows. */
static int client_keys(const forge_opts_t *o, proto_curve_keypair_t *kp)
{
    if (o->curve_keys != NULL)
        return proto_curve_keypair_load(o->curve_keys, kp);
    return zmq_curve_keypair(kp->public_z85, kp->secret_z85) == 0 ? 0 : QC_ECRYPTO;
}

/* Describes an outcome or allow body for the printed line (not verified: the tests only want
 * to see what the bank said; the wallet verifies for real). */
static void describe(const char *method, const uint8_t *body, size_t len)
{
    Quancun__Signed *s = quancun__signed__unpack(NULL, len, body);
    if (s == NULL)
        return;
    if (strcmp(method, "load") == 0) {
        Quancun__LoadAllow *a = quancun__load_allow__unpack(NULL, s->body.len, s->body.data);
        if (a != NULL) {
            printf(" amount=%lld counter=%llu", (long long)a->amount,
                   (unsigned long long)a->counter);
            quancun__load_allow__free_unpacked(a, NULL);
        }
    } else if (strcmp(method, "report") == 0 || strcmp(method, "sync") == 0) {
        Quancun__LoadOutcome *oc = quancun__load_outcome__unpack(NULL, s->body.len, s->body.data);
        if (oc != NULL) {
            const ProtobufCEnumValue *v =
                protobuf_c_enum_descriptor_get_value(&quancun__load_state__descriptor, oc->state);
            printf(" state=%s", v != NULL ? v->name : "?");
            quancun__load_outcome__free_unpacked(oc, NULL);
        }
    }
    quancun__signed__free_unpacked(s, NULL);
}

/* Calls method with body on opts' endpoint and prints the result line. */
static int call_and_print(const forge_opts_t *o, const char *method, const uint8_t *body,
                          size_t len)
{
    proto_curve_keypair_t kp;
    int rc = client_keys(o, &kp);
    if (rc != 0) {
        fprintf(stderr, "e2e_forge: cannot load CURVE keys: %s\n", qc_errname(rc));
        return 1;
    }
    void *ctx = zmq_ctx_new();
    proto_rpc_client_config_t cc = {.service = "forge",
                                    .endpoints = o->endpoint,
                                    .server_public_z85 = o->server_key,
                                    .keys = &kp};
    proto_rpc_client_t *cli = NULL;
    rc = proto_rpc_client_new(ctx, &cc, &cli);
    proto_rpc_reply_t *reply = NULL;
    if (rc == 0)
        rc = proto_rpc_client_call(cli, method, body, len, (int)o->timeout_ms, 0, &reply);
    if (rc == 0) {
        printf("%s", qc_errname(reply->code));
        if (forge_txn_hex[0] != '\0')
            printf(" txn=%s", forge_txn_hex);
        if (reply->code == 0) {
            describe(method, reply->body, reply->body_len);
            if (o->allow_out != NULL && write_file(o->allow_out, reply->body, reply->body_len))
                rc = QC_EIO;
        } else {
            printf(" message=\"%s\"", reply->message);
        }
        printf("\n");
    } else {
        printf("%s%s%s\n", qc_errname(rc), forge_txn_hex[0] != '\0' ? " txn=" : "", forge_txn_hex);
        rc = rc == QC_ETIMEOUT ? 0 : rc;
    }
    proto_rpc_reply_destroy(&reply);
    proto_rpc_client_destroy(&cli);
    zmq_ctx_destroy(ctx);
    proto_curve_keypair_wipe(&kp);
    return rc == 0 ? 0 : 1;
}

/* A body of the kind asked for, made up: nothing was reserved or logged for it. */
static int sign_body(const forge_opts_t *o, Quancun__SignKind *kind, uint8_t **body, size_t *len)
{
    uint8_t txn[PROTO_TXN_ID_SIZE], digest[PROTO_DIGEST_SIZE];
    if (RAND_bytes(txn, sizeof txn) != 1 || RAND_bytes(digest, sizeof digest) != 1)
        return 1;
    uint64_t now = ops_time_wall_ms();
    if (strcmp(o->kind, "allow") == 0) {
        Quancun__LoadAllow a = QUANCUN__LOAD_ALLOW__INIT;
        a.txn_id = (ProtobufCBinaryData){.len = sizeof txn, .data = txn};
        a.device_id = (char *)(o->device != NULL ? o->device : "INVENTED-0001");
        a.account_id = (char *)(o->account != NULL ? o->account : "NOBODY-001");
        a.amount = o->amount > 0 ? o->amount : 100000;
        a.currency = (uint32_t)o->currency;
        a.request_digest = (ProtobufCBinaryData){.len = sizeof digest, .data = digest};
        a.host_time_ms = now;
        a.deadline_ms = now + 30000;
        *kind = QUANCUN__SIGN_KIND__SIGN_LOAD_ALLOW;
        return proto_pack(&a.base, body, len) == 0 ? 0 : 1;
    }
    if (strcmp(o->kind, "outcome") == 0) {
        Quancun__LoadOutcome oc = QUANCUN__LOAD_OUTCOME__INIT;
        oc.txn_id = (ProtobufCBinaryData){.len = sizeof txn, .data = txn};
        oc.device_id = (char *)(o->device != NULL ? o->device : "INVENTED-0001");
        oc.state = QUANCUN__LOAD_STATE__LOAD_CONFIRMED;
        oc.amount = o->amount > 0 ? o->amount : 100000;
        oc.currency = (uint32_t)o->currency;
        oc.host_time_ms = now;
        *kind = QUANCUN__SIGN_KIND__SIGN_LOAD_OUTCOME;
        return proto_pack(&oc.base, body, len) == 0 ? 0 : 1;
    }
    if (strcmp(o->kind, "checkpoint") == 0) {
        Quancun__AuditCheckpoint c = QUANCUN__AUDIT_CHECKPOINT__INIT;
        c.seq = 1;
        c.hash = (ProtobufCBinaryData){.len = sizeof digest, .data = digest};
        c.time_ms = now;
        *kind = QUANCUN__SIGN_KIND__SIGN_AUDIT_CHECKPOINT;
        return proto_pack(&c.base, body, len) == 0 ? 0 : 1;
    }
    return 2;
}

static int cmd_sign(const forge_opts_t *o)
{
    if (o->kind == NULL)
        return 2;
    Quancun__SignKind kind = QUANCUN__SIGN_KIND__SIGN_NONE;
    uint8_t *body = NULL, *req = NULL;
    size_t body_len = 0, req_len = 0;
    int rc = sign_body(o, &kind, &body, &body_len);
    if (rc != 0)
        return rc;
    Quancun__SignRequest sr = QUANCUN__SIGN_REQUEST__INIT;
    sr.kind = kind;
    sr.body = (ProtobufCBinaryData){.len = body_len, .data = body};
    rc = proto_pack(&sr.base, &req, &req_len) == 0 ? call_and_print(o, "sign", req, req_len) : 1;
    free(body);
    free(req);
    return rc;
}

static int cmd_request(const forge_opts_t *o)
{
    if (o->key == NULL || o->cert == NULL || o->device == NULL || o->account == NULL ||
        o->amount == 0 || o->counter < 0)
        return 2;
    uint8_t txn[PROTO_TXN_ID_SIZE], nonce[PROTO_NONCE_SIZE];
    if (o->txn_hex != NULL ? ops_unhex(o->txn_hex, txn, sizeof txn) != 0
                           : RAND_bytes(txn, sizeof txn) != 1)
        return 2;
    if (RAND_bytes(nonce, sizeof nonce) != 1)
        return 1;
    Quancun__LoadRequest r = QUANCUN__LOAD_REQUEST__INIT;
    r.txn_id.data = txn;
    r.txn_id.len = sizeof txn;
    r.device_id = (char *)o->device;
    r.account_id = (char *)o->account;
    r.amount = o->amount;
    r.currency = (uint32_t)o->currency;
    r.balance_before = o->balance;
    r.counter = (uint64_t)o->counter;
    r.key_version = FORGE_KEY_VERSION;
    r.alg = QUANCUN__ALG__ALG_ECDSA_P256_SHA256;
    r.nonce.data = nonce;
    r.nonce.len = sizeof nonce;
    r.device_time_ms = ops_time_wall_ms();
    uint8_t *signed_req = NULL;
    size_t len = 0;
    int rc = sign_as_device(o, PROTO_TYPE_LOAD_REQUEST, &r.base, &signed_req, &len);
    if (rc != 0) {
        fprintf(stderr, "e2e_forge: cannot sign the request: %s\n", qc_errname(rc));
        return 1;
    }
    ops_hex(txn, sizeof txn, forge_txn_hex);
    if (o->save != NULL && write_file(o->save, signed_req, len) != 0)
        rc = 1;
    if (rc == 0 && !o->no_send)
        rc = call_and_print(o, "load", signed_req, len);
    free(signed_req);
    return rc;
}

static int cmd_report(const forge_opts_t *o)
{
    if (o->key == NULL || o->cert == NULL || o->device == NULL || o->account == NULL ||
        o->status == NULL || o->counter < 0)
        return 2;
    uint8_t txn[PROTO_TXN_ID_SIZE], digest[PROTO_DIGEST_SIZE];
    if (ops_unhex(o->txn_hex, txn, sizeof txn) != 0)
        return 2;
    memset(digest, 0xA5, sizeof digest); /* a digest of no allow at all, unless --allow */
    if (o->allow != NULL) {
        uint8_t *allow = NULL;
        size_t allow_len = 0;
        Quancun__Signed *s = NULL;
        if (read_file(o->allow, &allow, &allow_len) == 0)
            s = quancun__signed__unpack(NULL, allow_len, allow);
        free(allow);
        if (s == NULL)
            return 1;
        int rc = proto_sha256(s->body.data, s->body.len, digest);
        quancun__signed__free_unpacked(s, NULL);
        if (rc != 0)
            return 1;
    }
    Quancun__ExecutionReport e = QUANCUN__EXECUTION_REPORT__INIT;
    e.txn_id.data = txn;
    e.txn_id.len = sizeof txn;
    e.device_id = (char *)o->device;
    e.account_id = (char *)o->account;
    e.counter_after = (uint64_t)o->counter;
    e.status = strcmp(o->status, "applied") == 0 ? QUANCUN__REPORT_STATUS__REPORT_APPLIED
                                                 : QUANCUN__REPORT_STATUS__REPORT_REJECTED;
    e.reason = (char *)(o->reason != NULL ? o->reason : "");
    e.balance_after = o->balance;
    e.allow_digest.data = digest;
    e.allow_digest.len = sizeof digest;
    uint8_t *signed_rep = NULL;
    size_t len = 0;
    int rc = sign_as_device(o, PROTO_TYPE_EXECUTION_REPORT, &e.base, &signed_rep, &len);
    if (rc != 0) {
        fprintf(stderr, "e2e_forge: cannot sign the report: %s\n", qc_errname(rc));
        return 1;
    }
    if (o->save != NULL && write_file(o->save, signed_rep, len) != 0)
        rc = 1;
    if (rc == 0)
        rc = call_and_print(o, "report", signed_rep, len);
    free(signed_rep);
    return rc;
}

static int cmd_send(const forge_opts_t *o, bool required)
{
    if (o->method == NULL || (required && o->in == NULL))
        return 2;
    uint8_t *b = NULL;
    size_t n = 0;
    if (o->in != NULL && read_file(o->in, &b, &n) != 0)
        return 1;
    int rc = call_and_print(o, o->method, b, n);
    free(b);
    return rc;
}

/* Re-packs the envelope in bytes with its LoadRequest or LoadAllow body's amount changed to
 * amount, keeping the signature (resign_key NULL) or signing anew with resign_key. */
static int alter_amount(const uint8_t *bytes, size_t len, bool is_allow, long long amount,
                        EVP_PKEY *resign_key, uint8_t **out, size_t *out_len)
{
    Quancun__Signed *s = quancun__signed__unpack(NULL, len, bytes);
    if (s == NULL)
        return QC_EDECODE;
    ProtobufCMessage *m =
        is_allow
            ? (ProtobufCMessage *)quancun__load_allow__unpack(NULL, s->body.len, s->body.data)
            : (ProtobufCMessage *)quancun__load_request__unpack(NULL, s->body.len, s->body.data);
    int rc = m != NULL ? 0 : QC_EDECODE;
    uint8_t *body = NULL;
    size_t body_len = 0;
    if (rc == 0) {
        if (is_allow)
            ((Quancun__LoadAllow *)m)->amount = amount;
        else
            ((Quancun__LoadRequest *)m)->amount = amount;
        rc = proto_pack(m, &body, &body_len);
        protobuf_c_message_free_unpacked(m, NULL);
    }
    if (rc == 0 && resign_key != NULL) {
        rc = proto_envelope_sign(is_allow ? PROTO_TYPE_LOAD_ALLOW : PROTO_TYPE_LOAD_REQUEST, body,
                                 body_len, resign_key, s->key_version, s->cert.data, s->cert.len,
                                 out, out_len);
    } else if (rc == 0) {
        ProtobufCBinaryData original = s->body; /* the new body is borrowed for the pack */
        s->body.data = body;
        s->body.len = body_len;
        rc = proto_pack(&s->base, out, out_len);
        s->body = original;
    }
    free(body);
    quancun__signed__free_unpacked(s, NULL);
    return rc;
}

static int cmd_tamper(const forge_opts_t *o)
{
    if (o->in == NULL || o->amount == 0)
        return 2;
    uint8_t *b = NULL, *alt = NULL;
    size_t n = 0, alt_len = 0;
    if (read_file(o->in, &b, &n) != 0)
        return 1;
    int rc = alter_amount(b, n, false, o->amount, NULL, &alt, &alt_len);
    free(b);
    if (rc != 0) {
        fprintf(stderr, "e2e_forge: cannot alter %s: %s\n", o->in, qc_errname(rc));
        return 1;
    }
    rc = call_and_print(o, "load", alt, alt_len);
    free(alt);
    return rc;
}

/* Relays a reply to the device; one that cannot be sent is said on stderr (the device's
 * retry is what the test then sees). */
static void mitm_reply(proto_rpc_server_t *srv, proto_rpc_request_t *req, int code,
                       const char *message, const uint8_t *body, size_t len)
{
    int rc = proto_rpc_server_reply(srv, req, code, message, body, len);
    if (rc != 0)
        fprintf(stderr, "e2e_forge: mitm could not reply (%s)\n", qc_errname(rc));
}

/* Forwards one device call upstream and replies with what came back, altering an allow. */
static void mitm_forward(proto_rpc_server_t *srv, proto_rpc_client_t *up, proto_rpc_request_t *req,
                         const forge_opts_t *o, EVP_PKEY *own_key)
{
    if (o->save != NULL && strcmp(req->method, "load") == 0 &&
        write_file(o->save, req->body, req->body_len) != 0)
        fprintf(stderr, "e2e_forge: mitm could not record the request in %s\n", o->save);
    proto_rpc_reply_t *reply = NULL;
    int rc = proto_rpc_client_call(up, req->method, req->body, req->body_len, (int)o->timeout_ms, 0,
                                   &reply);
    if (rc != 0) {
        mitm_reply(srv, req, rc, NULL, NULL, 0);
        return;
    }
    uint8_t *alt = NULL;
    size_t alt_len = 0;
    if (reply->code == 0 && strcmp(req->method, "load") == 0 && strcmp(o->tamper, "none") != 0) {
        Quancun__Signed *s = quancun__signed__unpack(NULL, reply->body_len, reply->body);
        Quancun__LoadAllow *a =
            s != NULL ? quancun__load_allow__unpack(NULL, s->body.len, s->body.data) : NULL;
        long long amount = a != NULL ? (long long)a->amount + FORGE_ALLOW_AMOUNT_DELTA : 1;
        if (a != NULL)
            quancun__load_allow__free_unpacked(a, NULL);
        if (s != NULL)
            quancun__signed__free_unpacked(s, NULL);
        rc = alter_amount(reply->body, reply->body_len, true, amount, own_key, &alt, &alt_len);
        fprintf(stderr, "e2e_forge: mitm altered an allow (%s)\n", qc_errname(rc));
    }
    if (alt != NULL)
        mitm_reply(srv, req, 0, NULL, alt, alt_len);
    else
        mitm_reply(srv, req, reply->code, reply->message, reply->body, reply->body_len);
    free(alt);
    proto_rpc_reply_destroy(&reply);
}

static int cmd_mitm(const forge_opts_t *o)
{
    if (o->listen == NULL || o->curve_keys == NULL || o->tamper == NULL)
        return 2;
    bool resign = strcmp(o->tamper, "resign") == 0;
    if (!resign && strcmp(o->tamper, "amount") != 0 && strcmp(o->tamper, "none") != 0)
        return 2;
    proto_curve_keypair_t server_kp, client_kp;
    if (proto_curve_keypair_load(o->curve_keys, &server_kp) != 0 ||
        zmq_curve_keypair(client_kp.public_z85, client_kp.secret_z85) != 0)
        return 1;
    EVP_PKEY *own_key = resign ? EVP_EC_gen("P-256") : NULL;
    void *ctx = zmq_ctx_new();
    proto_rpc_server_config_t sc = {
        .service = "mitm", .endpoint = o->listen, .keys = &server_kp, .allow_any = true};
    proto_rpc_client_config_t cc = {.service = "gateway",
                                    .endpoints = o->endpoint,
                                    .server_public_z85 = o->server_key,
                                    .keys = &client_kp};
    proto_rpc_server_t *srv = NULL;
    proto_rpc_client_t *up = NULL;
    int rc = proto_rpc_server_new(ctx, &sc, &srv);
    if (rc == 0)
        rc = proto_rpc_client_new(ctx, &cc, &up);
    while (rc == 0 && !ops_signal_stop_requested()) {
        proto_rpc_request_t *req = NULL;
        int r = proto_rpc_server_recv(srv, FORGE_MITM_POLL_MS, &req);
        if (r == QC_ETIMEOUT)
            continue;
        if (r != 0)
            break;
        mitm_forward(srv, up, req, o, own_key);
        proto_rpc_request_destroy(&req);
    }
    proto_rpc_client_destroy(&up);
    proto_rpc_server_destroy(&srv);
    zmq_ctx_destroy(ctx);
    EVP_PKEY_free(own_key);
    proto_curve_keypair_wipe(&server_kp);
    proto_curve_keypair_wipe(&client_kp);
    return rc == 0 ? 0 : 1;
}

static bool parse_opts(int argc, char **argv, forge_opts_t *o)
{
    struct {
        const char *name;
        const char **str;
        long long *num;
    } table[] = {
        {"--endpoint", &o->endpoint, NULL},
        {"--server-key", &o->server_key, NULL},
        {"--curve-keys", &o->curve_keys, NULL},
        {"--method", &o->method, NULL},
        {"--in", &o->in, NULL},
        {"--save", &o->save, NULL},
        {"--allow-out", &o->allow_out, NULL},
        {"--key", &o->key, NULL},
        {"--cert", &o->cert, NULL},
        {"--device", &o->device, NULL},
        {"--account", &o->account, NULL},
        {"--txn", &o->txn_hex, NULL},
        {"--status", &o->status, NULL},
        {"--allow", &o->allow, NULL},
        {"--reason", &o->reason, NULL},
        {"--listen", &o->listen, NULL},
        {"--tamper", &o->tamper, NULL},
        {"--kind", &o->kind, NULL},
        {"--amount", NULL, &o->amount},
        {"--counter", NULL, &o->counter},
        {"--balance", NULL, &o->balance},
        {"--currency", NULL, &o->currency},
        {"--timeout-ms", NULL, &o->timeout_ms},
    };
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--no-send") == 0) {
            o->no_send = true;
            continue;
        }
        bool found = false;
        for (size_t t = 0; t < sizeof table / sizeof table[0] && !found; t++) {
            if (strcmp(argv[i], table[t].name) != 0)
                continue;
            if (i + 1 >= argc)
                return false;
            found = true;
            i++;
            if (table[t].str != NULL) {
                *table[t].str = argv[i];
            } else {
                char *end = NULL;
                *table[t].num = strtoll(argv[i], &end, 10);
                if (*end != '\0')
                    return false;
            }
        }
        if (!found)
            return false;
    }
    return true;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "--help") == 0) {
        usage(stdout);
        return 0;
    }
    forge_opts_t o = {
        .counter = -1, .currency = FORGE_CURRENCY_DEFAULT, .timeout_ms = FORGE_TIMEOUT_MS_DEFAULT};
    if (argc < 2 || !parse_opts(argc, argv, &o) || o.endpoint == NULL || o.server_key == NULL) {
        usage(stderr);
        return 2;
    }
    ops_log_init("e2e_forge", "0", OPS_LOG_WARN);
    ops_signal_install();
    const char *cmd = argv[1];
    int rc = 2;
    if (strcmp(cmd, "request") == 0)
        rc = cmd_request(&o);
    else if (strcmp(cmd, "report") == 0)
        rc = cmd_report(&o);
    else if (strcmp(cmd, "send") == 0)
        rc = cmd_send(&o, true);
    else if (strcmp(cmd, "call") == 0)
        rc = cmd_send(&o, false);
    else if (strcmp(cmd, "sign") == 0)
        rc = cmd_sign(&o);
    else if (strcmp(cmd, "tamper") == 0)
        rc = cmd_tamper(&o);
    else if (strcmp(cmd, "mitm") == 0)
        rc = cmd_mitm(&o);
    if (rc == 2)
        usage(stderr);
    return rc;
}
