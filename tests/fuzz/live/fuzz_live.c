/* fuzz_live.c - qc-fuzz-live: sends mutated valid frames over CURVE to one running service
 * (a gateway, a signer or a ledger) for a bounded time, and counts what came back.
 *
 * It makes its own valid seeds: a LoadRequest and an ExecutionReport signed with a real
 * device's key and certificate (--device-key, --device-cert, --device-id, --account), and the
 * service messages built around them (ReserveRequest, SettleRequest, SignRequest). Each frame
 * is a seed mutated at one layer: the Rpc frame's bytes, the body inside a well-formed Rpc, or
 * the signed body inside a well-formed envelope (the signature kept). A frame that still
 * carries a seed's signed body unchanged with its signature is the device's genuine message,
 * not a bad one: it is never sent to a gateway or a ledger (both turn a genuine request into a
 * debit: the ledger obtains the allow itself), so no money can move except because of a bad
 * frame. The seeds also carry a counter far ahead of the device's, so even a genuine one would
 * be refused.
 *
 * Usage: qc-fuzz-live --endpoint E --server-key Z85 --curve-key FILE --method M
 *          --device-key PEM --device-cert PEM --device-id ID --account ID
 *          [--seconds N] [--frames-max N] [--random-seed N]
 * Prints one line: frames sent, replies by code, frames unanswered. Exit 0, or 1 on a local
 * failure (bad usage, unreadable key), never because of what the service answered. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <zmq.h>

#include "ledger.pb-c.h"
#include "ops_time.h"
#include "proto_cert.h"
#include "proto_curve.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "qc_error.h"
#include "quancun.pb-c.h"
#include "signer.pb-c.h"

#define LIVE_SECONDS_DEFAULT 10
#define LIVE_FRAMES_MAX_DEFAULT 100000
#define LIVE_REPLY_WAIT_MS 100     /* per frame; a dropped frame gets no reply */
#define LIVE_UNANSWERED_RESET 20   /* unanswered frames before a fresh socket (Lazy Pirate) */
#define LIVE_FRAME_MAX (64 * 1024) /* a mutated frame never grows beyond this */
#define LIVE_CODES 128             /* reply codes counted, by -code (every QC_E* fits) */
#define LIVE_CERT_MAX 8192

typedef struct live_opts {
    const char *endpoint, *server_key, *curve_key, *method;
    const char *device_key, *device_cert, *device_id, *account;
    long seconds, frames_max;
    unsigned random_seed;
} live_opts_t;

static uint8_t *request_env, *report_env, *request_body, *report_body;
static size_t request_env_len, report_env_len, request_body_len, report_body_len;

static void die(const char *what)
{
    fprintf(stderr, "qc-fuzz-live: %s\n", what);
    exit(1);
}

/* ------------------------------------------------------------ seeds */

static void pack(const ProtobufCMessage *m, uint8_t **out, size_t *len)
{
    if (proto_pack(m, out, len) != 0)
        die("out of memory");
}

static void make_seeds(const live_opts_t *o)
{
    EVP_PKEY *key = NULL;
    if (proto_key_load_pem(o->device_key, &key) != 0)
        die("cannot load --device-key");
    FILE *f = fopen(o->device_cert, "r");
    X509 *x = f != NULL ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f != NULL)
        fclose(f);
    unsigned char *der = NULL;
    int der_len = x != NULL ? i2d_X509(x, &der) : -1;
    X509_free(x);
    if (der_len <= 0)
        die("cannot load --device-cert");

    uint8_t txn[PROTO_TXN_ID_SIZE], nonce[PROTO_NONCE_SIZE], digest[PROTO_DIGEST_SIZE];
    if (RAND_bytes(txn, sizeof txn) != 1 || RAND_bytes(nonce, sizeof nonce) != 1 ||
        RAND_bytes(digest, sizeof digest) != 1)
        die("no randomness");
    Quancun__LoadRequest r = QUANCUN__LOAD_REQUEST__INIT;
    r.txn_id = (ProtobufCBinaryData){sizeof txn, txn};
    r.device_id = (char *)o->device_id;
    r.account_id = (char *)o->account;
    r.amount = 100;
    r.currency = 156;
    r.balance_before = 0;
    r.counter = 1000000; /* far ahead of the device: even the genuine request is refused */
    r.key_version = 1;
    r.alg = QUANCUN__ALG__ALG_ECDSA_P256_SHA256;
    r.nonce = (ProtobufCBinaryData){sizeof nonce, nonce};
    r.device_time_ms = ops_time_wall_ms();
    pack(&r.base, &request_body, &request_body_len);
    if (proto_envelope_sign(PROTO_TYPE_LOAD_REQUEST, request_body, request_body_len, key, 1, der,
                            (size_t)der_len, &request_env, &request_env_len) != 0)
        die("cannot sign the seed request");

    Quancun__ExecutionReport e = QUANCUN__EXECUTION_REPORT__INIT;
    e.txn_id = r.txn_id;
    e.device_id = r.device_id;
    e.account_id = r.account_id;
    e.counter_after = 1000001;
    e.status = QUANCUN__REPORT_STATUS__REPORT_APPLIED;
    e.balance_after = 100;
    e.allow_digest = (ProtobufCBinaryData){sizeof digest, digest};
    pack(&e.base, &report_body, &report_body_len);
    if (proto_envelope_sign(PROTO_TYPE_EXECUTION_REPORT, report_body, report_body_len, key, 1, der,
                            (size_t)der_len, &report_env, &report_env_len) != 0)
        die("cannot sign the seed report");
    OPENSSL_free(der);
    EVP_PKEY_free(key);
}

/* The valid body of method: what a real caller of that method sends. */
static void seed_body(const char *method, uint8_t **out, size_t *len)
{
    if (strcmp(method, "load") == 0 || strcmp(method, "report") == 0) {
        bool load = strcmp(method, "load") == 0;
        *len = load ? request_env_len : report_env_len;
        *out = malloc(*len);
        if (*out == NULL)
            die("out of memory");
        memcpy(*out, load ? request_env : report_env, *len);
    } else if (strcmp(method, "reserve") == 0) {
        Qcledger__ReserveRequest m = QCLEDGER__RESERVE_REQUEST__INIT;
        m.request = (ProtobufCBinaryData){request_env_len, request_env};
        pack(&m.base, out, len);
    } else if (strcmp(method, "settle") == 0) {
        Qcledger__SettleRequest m = QCLEDGER__SETTLE_REQUEST__INIT;
        Quancun__ExecutionReport *e =
            quancun__execution_report__unpack(NULL, report_body_len, report_body);
        if (e == NULL)
            die("cannot read the seed report");
        m.txn_id = e->txn_id;
        m.report = (ProtobufCBinaryData){report_env_len, report_env};
        m.verdict = QUANCUN__REPORT_STATUS__REPORT_APPLIED;
        pack(&m.base, out, len);
        quancun__execution_report__free_unpacked(e, NULL);
    } else if (strcmp(method, "sign") == 0) {
        /* An outcome for a load that never was: the signer checks only its shape. */
        Quancun__SignRequest m = QUANCUN__SIGN_REQUEST__INIT;
        m.kind = QUANCUN__SIGN_KIND__SIGN_LOAD_OUTCOME;
        m.body = (ProtobufCBinaryData){report_body_len, report_body}; /* not an outcome */
        pack(&m.base, out, len);
    } else {
        *len = 0;
        *out = malloc(1);
    }
}

/* ------------------------------------------------------------ mutations */

static size_t mutate(uint8_t *b, size_t len, size_t cap)
{
    int rounds = 1 + rand() % 4;
    for (int i = 0; i < rounds; i++) {
        size_t at = len > 0 ? (size_t)rand() % len : 0;
        switch (rand() % 7) {
        case 0: /* flip a bit */
            if (len > 0)
                b[at] ^= (uint8_t)(1u << (rand() % 8));
            break;
        case 1: /* set a byte to an interesting value */
            if (len > 0) {
                static const uint8_t v[] = {0x00, 0x01, 0x7f, 0x80, 0xff, 0x0a, 0x12, 0x08};
                b[at] = v[rand() % (int)sizeof v];
            }
            break;
        case 2: /* truncate */
            len = at;
            break;
        case 3: /* insert random bytes */
        {
            size_t n = 1 + (size_t)(rand() % 16);
            if (len + n <= cap) {
                memmove(b + at + n, b + at, len - at);
                for (size_t k = 0; k < n; k++)
                    b[at + k] = (uint8_t)rand();
                len += n;
            }
            break;
        }
        case 4: /* delete a run */
        {
            size_t n = 1 + (size_t)(rand() % 16);
            if (at + n <= len) {
                memmove(b + at, b + at + n, len - at - n);
                len -= n;
            }
            break;
        }
        case 5: /* duplicate a run (a repeated field) */
        {
            size_t n = 1 + (size_t)(rand() % 64);
            if (at + n <= len && len + n <= cap) {
                memmove(b + at + n, b + at, len - at);
                len += n;
            }
            break;
        }
        default: /* a length or varint byte made huge */
            if (len > 0)
                b[at] |= 0x80;
        }
    }
    return len;
}

/* A frame of method with body, packed into out (capacity LIVE_FRAME_MAX). */
static size_t rpc_frame(const char *method, uint64_t id, const uint8_t *body, size_t len,
                        uint8_t *out)
{
    Quancun__Rpc m = QUANCUN__RPC__INIT;
    m.request_id = id;
    m.method = (char *)method;
    m.timeout_ms = 5000; /* a budget, as every caller sends (docs/PROTOCOL.md section 1) */
    m.body = (ProtobufCBinaryData){len, (uint8_t *)body};
    size_t n = quancun__rpc__get_packed_size(&m);
    if (n > LIVE_FRAME_MAX)
        return 0;
    return quancun__rpc__pack(&m, out);
}

static bool has_genuine(const uint8_t *hay, size_t hay_len, const uint8_t *needle, size_t n)
{
    for (size_t i = 0; n > 0 && i + n <= hay_len; i++)
        if (memcmp(hay + i, needle, n) == 0)
            return true;
    return false;
}

/* True when frame still carries a seed's signed body next to that seed's signature: the device's
 * genuine message. Checked on the raw bytes, so whatever the layers around it. */
static bool genuine(const uint8_t *frame, size_t len)
{
    return has_genuine(frame, len, request_body, request_body_len) ||
           has_genuine(frame, len, report_body, report_body_len);
}

/* Rebuilds the envelope env with its signed body mutated and the rest kept. */
static size_t mutate_signed_body(const uint8_t *env, size_t env_len, uint8_t *out)
{
    Quancun__Signed *s = quancun__signed__unpack(NULL, env_len, env);
    if (s == NULL)
        return 0;
    uint8_t body[LIVE_FRAME_MAX / 2];
    size_t n = s->body.len < sizeof body ? s->body.len : sizeof body;
    memcpy(body, s->body.data, n);
    n = mutate(body, n, sizeof body);
    ProtobufCBinaryData own = s->body; /* protobuf-c's, freed with s */
    s->body = (ProtobufCBinaryData){n, body};
    size_t len = quancun__signed__get_packed_size(s);
    len = len <= LIVE_FRAME_MAX ? quancun__signed__pack(s, out) : 0;
    s->body = own;
    quancun__signed__free_unpacked(s, NULL);
    return len;
}

/* ------------------------------------------------------------ the socket */

static void *connect_dealer(void *ctx, const live_opts_t *o, const proto_curve_keypair_t *kp)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    if (s == NULL || zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, o->server_key, PROTO_CURVE_KEY_Z85_LEN) != 0 ||
        zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, kp->public_z85, PROTO_CURVE_KEY_Z85_LEN) != 0 ||
        zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, kp->secret_z85, PROTO_CURVE_KEY_Z85_LEN) != 0 ||
        zmq_connect(s, o->endpoint) != 0)
        die("cannot connect");
    return s;
}

static void usage(FILE *to)
{
    fprintf(to,
            "usage: qc-fuzz-live --endpoint E --server-key Z85 --curve-key FILE --method M\n"
            "         --device-key PEM --device-cert PEM --device-id ID --account ID\n"
            "         [--seconds N (default %d)] [--frames-max N (default %d)] [--random-seed N]\n"
            "Sends mutated valid frames of method M (load, report: a gateway; reserve, settle: a\n"
            "ledger; sign: a signer) over CURVE to E for a bounded time and prints one line:\n"
            "frames sent, unanswered, skipped as genuine, and the replies by code.\n",
            LIVE_SECONDS_DEFAULT, LIVE_FRAMES_MAX_DEFAULT);
}

static void parse_args(int argc, char **argv, live_opts_t *o)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            exit(0);
        }
    *o = (live_opts_t){.seconds = LIVE_SECONDS_DEFAULT,
                       .frames_max = LIVE_FRAMES_MAX_DEFAULT,
                       .random_seed = (unsigned)time(NULL)};
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (strcmp(k, "--endpoint") == 0)
            o->endpoint = v;
        else if (strcmp(k, "--server-key") == 0)
            o->server_key = v;
        else if (strcmp(k, "--curve-key") == 0)
            o->curve_key = v;
        else if (strcmp(k, "--method") == 0)
            o->method = v;
        else if (strcmp(k, "--device-key") == 0)
            o->device_key = v;
        else if (strcmp(k, "--device-cert") == 0)
            o->device_cert = v;
        else if (strcmp(k, "--device-id") == 0)
            o->device_id = v;
        else if (strcmp(k, "--account") == 0)
            o->account = v;
        else if (strcmp(k, "--seconds") == 0)
            o->seconds = atol(v);
        else if (strcmp(k, "--frames-max") == 0)
            o->frames_max = atol(v);
        else if (strcmp(k, "--random-seed") == 0)
            o->random_seed = (unsigned)strtoul(v, NULL, 10);
        else
            die("unknown option (see the header of tests/fuzz/live/fuzz_live.c)");
    }
    if (o->endpoint == NULL || o->server_key == NULL || o->curve_key == NULL || o->method == NULL ||
        o->device_key == NULL || o->device_cert == NULL || o->device_id == NULL ||
        o->account == NULL || o->seconds < 1 || o->frames_max < 1 ||
        strlen(o->server_key) != PROTO_CURVE_KEY_Z85_LEN)
        die("usage: --endpoint --server-key --curve-key --method --device-key --device-cert "
            "--device-id --account are needed");
}

int main(int argc, char **argv)
{
    live_opts_t o;
    parse_args(argc, argv, &o);
    proto_curve_keypair_t kp;
    if (proto_curve_keypair_load(o.curve_key, &kp) != 0)
        die("cannot load --curve-key");
    make_seeds(&o);
    srand(o.random_seed);
    uint8_t *body = NULL;
    size_t body_len = 0;
    seed_body(o.method, &body, &body_len);

    void *ctx = zmq_ctx_new();
    void *sock = connect_dealer(ctx, &o, &kp);
    static uint8_t frame[LIVE_FRAME_MAX], inner[LIVE_FRAME_MAX];
    /* A gateway or a ledger turns a device's genuine request or report into money: such
     * frames are not bad ones, and are not sent. */
    bool moves_money = strcmp(o.method, "load") == 0 || strcmp(o.method, "report") == 0 ||
                       strcmp(o.method, "reserve") == 0 || strcmp(o.method, "settle") == 0;
    long codes[LIVE_CODES] = {0}, sent = 0, unanswered = 0, skipped = 0, streak = 0, odd = 0;
    uint64_t end_ms = ops_time_mono_ms() + (uint64_t)o.seconds * 1000;
    for (uint64_t id = 1; sent < o.frames_max && ops_time_mono_ms() < end_ms; id++) {
        size_t len = 0;
        switch (rand() % 3) {
        case 0: /* the Rpc frame's bytes */
            len = rpc_frame(o.method, id, body, body_len, frame);
            len = mutate(frame, len, sizeof frame);
            break;
        case 1: /* the body inside a well-formed frame */
        {
            size_t n = body_len <= sizeof inner ? body_len : 0;
            memcpy(inner, body, n);
            n = mutate(inner, n, sizeof inner / 2);
            len = rpc_frame(o.method, id, inner, n, frame);
            break;
        }
        default: /* the signed body inside a well-formed envelope (gateway methods) */
        {
            bool load = strcmp(o.method, "report") != 0;
            size_t n = mutate_signed_body(load ? request_env : report_env,
                                          load ? request_env_len : report_env_len, inner);
            len = rpc_frame(o.method, id, inner, n, frame);
        }
        }
        if (moves_money && genuine(frame, len)) {
            skipped++;
            continue;
        }
        if (zmq_send(sock, frame, len, ZMQ_DONTWAIT) < 0)
            continue;
        sent++;
        zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, LIVE_REPLY_WAIT_MS) == 1) {
            uint8_t reply[LIVE_FRAME_MAX];
            int n = zmq_recv(sock, reply, sizeof reply, 0);
            Quancun__RpcReply *r =
                n > 0 ? quancun__rpc_reply__unpack(NULL, (size_t)n, reply) : NULL;
            if (r != NULL) {
                if (r->code <= 0 && -r->code < LIVE_CODES)
                    codes[-r->code]++;
                else
                    odd++; /* a code outside the QC_E* space: reported, never counted as ok */
                quancun__rpc_reply__free_unpacked(r, NULL);
            }
            streak = 0;
        } else {
            unanswered++;
            if (++streak >= LIVE_UNANSWERED_RESET) {
                zmq_close(sock);
                sock = connect_dealer(ctx, &o, &kp);
                streak = 0;
            }
        }
    }
    printf("method=%s sent=%ld unanswered=%ld genuine_skipped=%ld odd_codes=%ld", o.method, sent,
           unanswered, skipped, odd);
    for (int c = 0; c < LIVE_CODES; c++)
        if (codes[c] > 0)
            printf(" %s=%ld", c == 0 ? "QC_OK" : qc_errname(-c), codes[c]);
    printf("\n");
    zmq_close(sock);
    zmq_ctx_term(ctx);
    free(body);
    free(request_env);
    free(report_env);
    free(request_body);
    free(report_body);
    return 0;
}
