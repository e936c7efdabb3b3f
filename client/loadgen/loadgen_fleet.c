/* loadgen_fleet.c - simulated devices in memory: device cores with no store, certified by
 * the cluster's dev CA and enrolled through the ledger's admin RPC.
 *
 * Invariants:
 *  1. Every device is a device core (client/device/device_core.h): its phases, its credit
 *     and its counter move only through the core's transitions, the ones qc-wallet drives,
 *     and its allows are judged by the core's check.
 *  2. A device's core has its certificate, the bank's keys and a verified PIN before the
 *     fleet is handed out, so a request is refused only for what the protocol refuses.
 *  3. Keys are wiped (the cores free them) when the fleet is destroyed. */
#include "loadgen_fleet.h"

#include <assert.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <zmq.h>

#include "ledger.pb-c.h"
#include "proto_decode.h"
#include "proto_shard.h"
#include "qc_error.h"

#define LOADGEN_ID_MAX 48  /* "LGA" + tag + "-" + index, well under DEVICE_SERIAL_MAX */
#define LOADGEN_PIN "2468" /* the PIN the simulated user types once per device */
#define LOADGEN_SECONDS_PER_DAY 86400L
#define LOADGEN_CERT_BACKDATE_S 300 /* clocks of the cluster may be a little behind */
#define LOADGEN_PROGRESS_STEPS 10

_Static_assert(LOADGEN_ID_MAX <= DEVICE_SERIAL_MAX, "a device id is a serial");
_Static_assert(LOADGEN_ID_MAX <= DEVICE_ACCOUNT_MAX, "an account id");

typedef struct loadgen_device {
    char id[LOADGEN_ID_MAX];
    char account[LOADGEN_ID_MAX];
    device_core_t *core;
} loadgen_device_t;

struct loadgen_fleet {
    loadgen_device_t *dev;
    size_t count;
    uint32_t gateway_count;
    device_bank_key_t allow; /* the bank's keys, shared by every core */
    device_bank_key_t outcome;
};

/* ------------------------------------------------------------------ certificates */

static int loadgen_ext(X509 *cert, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
    if (ext == NULL)
        return QC_ECRYPTO;
    int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok == 1 ? 0 : QC_ECRYPTO;
}

/* Issues the certificate the dev CA would (ops/devca, [device_cert]) for key, CN id, as DER
 * in *der (OPENSSL_malloc'd). */
static int loadgen_issue(X509 *ca, EVP_PKEY *ca_key, EVP_PKEY *key, const char *id, uint8_t **der,
                         size_t *der_len)
{
    int rc = QC_ECRYPTO;
    X509 *cert = X509_new();
    ASN1_INTEGER *serial = ASN1_INTEGER_new();
    BIGNUM *bn = BN_new();
    if (cert == NULL || serial == NULL || bn == NULL)
        goto out;
    if (BN_rand(bn, 127, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY) != 1 ||
        BN_to_ASN1_INTEGER(bn, serial) == NULL || X509_set_serialNumber(cert, serial) != 1 ||
        X509_set_version(cert, 2) != 1 ||
        X509_set_issuer_name(cert, X509_get_subject_name(ca)) != 1 ||
        X509_gmtime_adj(X509_getm_notBefore(cert), -LOADGEN_CERT_BACKDATE_S) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(cert), LOADGEN_CERT_DAYS * LOADGEN_SECONDS_PER_DAY) ==
            NULL ||
        X509_set_pubkey(cert, key) != 1)
        goto out;
    X509_NAME *name = X509_get_subject_name(cert);
    if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)id, -1, -1,
                                   0) != 1)
        goto out;
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, ca, cert, NULL, NULL, 0);
    if (loadgen_ext(cert, &ctx, NID_basic_constraints, "critical,CA:FALSE") != 0 ||
        loadgen_ext(cert, &ctx, NID_key_usage, "critical,digitalSignature") != 0 ||
        loadgen_ext(cert, &ctx, NID_subject_key_identifier, "hash") != 0 ||
        loadgen_ext(cert, &ctx, NID_authority_key_identifier, "keyid") != 0)
        goto out;
    if (X509_sign(cert, ca_key, EVP_sha256()) <= 0)
        goto out;
    int len = i2d_X509(cert, der);
    if (len <= 0)
        goto out;
    *der_len = (size_t)len;
    rc = 0;
out:
    BN_free(bn);
    ASN1_INTEGER_free(serial);
    X509_free(cert);
    return rc;
}

static int loadgen_read_ca(const char *cert_path, const char *key_path, X509 **ca, EVP_PKEY **key)
{
    FILE *f = fopen(cert_path, "r");
    if (f == NULL)
        return QC_EIO;
    *ca = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (*ca == NULL)
        return QC_ECRYPTO;
    if ((f = fopen(key_path, "r")) == NULL)
        return QC_EIO;
    *key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    return *key != NULL ? 0 : QC_ECRYPTO;
}

/* Makes the core of d: a key, its certificate, the bank's keys, the PIN verified. */
static int loadgen_device_make(const loadgen_fleet_t *f, X509 *ca, EVP_PKEY *ca_key,
                               loadgen_device_t *d)
{
    device_state_t st = {0};
    uint8_t *der = NULL;
    size_t der_len = 0;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    int rc = key != NULL ? 0 : QC_ECRYPTO;
    if (rc == 0)
        rc = loadgen_issue(ca, ca_key, key, d->id, &der, &der_len);
    /* The PIN of a device that is never stored: one round, not the stored floor. */
    if (rc == 0)
        rc = device_state_init(&st, d->id, LOADGEN_PIN, strlen(LOADGEN_PIN),
                               DEVICE_PIN_ITERATIONS_SIMULATED);
    if (rc == 0)
        rc = device_core_new(&st, key, &d->core);
    if (rc == 0)
        rc = device_core_set_cert(d->core, der, der_len);
    if (rc == 0) {
        device_core_set_bank(d->core, &f->allow, &f->outcome);
        rc = device_core_verify_pin(d->core, LOADGEN_PIN, strlen(LOADGEN_PIN));
    }
    device_state_clear(&st);
    OPENSSL_free(der);
    EVP_PKEY_free(key); /* the core holds its own reference */
    return rc;
}

int loadgen_fleet_new(const loadgen_fleet_config_t *cfg, loadgen_fleet_t **out)
{
    assert(cfg != NULL);
    assert(out != NULL);
    assert(cfg->ca_cert_path != NULL);
    assert(cfg->ca_key_path != NULL);
    *out = NULL;
    if (cfg->count == 0 || cfg->count > LOADGEN_DEVICES_MAX || cfg->tag == NULL ||
        strlen(cfg->tag) == 0 || strlen(cfg->tag) > LOADGEN_TAG_MAX || cfg->gateway_count == 0)
        return QC_EINVAL;
    loadgen_fleet_t *f = calloc(1, sizeof *f);
    if (f == NULL)
        return QC_ENOMEM;
    f->gateway_count = cfg->gateway_count;
    X509 *ca = NULL;
    EVP_PKEY *ca_key = NULL;
    int rc = QC_ENOMEM;
    if ((f->dev = calloc(cfg->count, sizeof *f->dev)) == NULL)
        goto err;
    if ((rc = loadgen_read_ca(cfg->ca_cert_path, cfg->ca_key_path, &ca, &ca_key)) != 0 ||
        (rc = device_pki_bank_key_load(cfg->allow_cert_path, &f->allow)) != 0 ||
        (rc = device_pki_bank_key_load(cfg->outcome_cert_path, &f->outcome)) != 0)
        goto err;
    size_t step = cfg->count / LOADGEN_PROGRESS_STEPS + 1;
    for (size_t i = 0; i < cfg->count; i++, f->count++) {
        loadgen_device_t *d = &f->dev[i];
        snprintf(d->id, sizeof d->id, "LG%s-%zu", cfg->tag, i);
        snprintf(d->account, sizeof d->account, "LGA%s-%zu", cfg->tag, i);
        if ((rc = loadgen_device_make(f, ca, ca_key, d)) != 0)
            goto err;
        if (((i + 1) % step == 0 && isatty(STDERR_FILENO)) || i + 1 == cfg->count)
            fprintf(stderr, "\rloadgen: set-up: %zu/%zu device keys and certificates", i + 1,
                    cfg->count);
    }
    fputc('\n', stderr);
    X509_free(ca);
    EVP_PKEY_free(ca_key);
    *out = f;
    return 0;
err:
    X509_free(ca);
    EVP_PKEY_free(ca_key);
    loadgen_fleet_destroy(&f);
    return rc;
}

void loadgen_fleet_destroy(loadgen_fleet_t **fleet_p)
{
    if (fleet_p == NULL || *fleet_p == NULL)
        return;
    loadgen_fleet_t *f = *fleet_p;
    for (size_t i = 0; f->dev != NULL && i < f->count; i++)
        device_core_destroy(&f->dev[i].core); /* invariant 3 */
    free(f->dev);
    device_pki_bank_key_clear(&f->allow);
    device_pki_bank_key_clear(&f->outcome);
    free(f);
    *fleet_p = NULL;
}

size_t loadgen_fleet_count(const loadgen_fleet_t *f)
{
    assert(f != NULL);
    return f->count;
}

const char *loadgen_fleet_device_id(const loadgen_fleet_t *f, size_t i)
{
    assert(f != NULL);
    assert(i < f->count);
    return f->dev[i].id;
}

uint32_t loadgen_fleet_gateway(const loadgen_fleet_t *f, size_t i)
{
    assert(f != NULL);
    assert(i < f->count);
    return (uint32_t)(i % f->gateway_count);
}

/* ------------------------------------------------------------------ enrollment */

/* One set-up step over every device: a window of admin calls in flight per shard. */
typedef struct loadgen_admin {
    loadgen_fleet_t *f;
    proto_rpc_client_t *shards[LOADGEN_SHARDS_MAX];
    uint32_t shard_count;
    int first_error;
    size_t done, failed;
} loadgen_admin_t;

static void loadgen_admin_done(void *arg, void *tag, int code, proto_rpc_reply_t *reply)
{
    loadgen_admin_t *a = arg;
    size_t i = (size_t)(uintptr_t)tag;
    assert(i < a->f->count);
    int rc = code != 0 ? code : reply->code;
    a->done++;
    if (rc != 0) {
        a->failed++;
        if (a->first_error == 0) {
            a->first_error = rc;
            fprintf(stderr, "\nloadgen: set-up of %s failed: %s (%s)\n", a->f->dev[i].id,
                    qc_errname(rc), reply != NULL ? reply->message : qc_strerror(rc));
        }
    }
    proto_rpc_reply_destroy(&reply);
}

typedef int(loadgen_admin_body_fn)(const loadgen_device_t *d, const loadgen_admin_config_t *cfg,
                                   uint8_t **body, size_t *body_len);

static int loadgen_body_open(const loadgen_device_t *d, const loadgen_admin_config_t *cfg,
                             uint8_t **body, size_t *body_len)
{
    (void)cfg;
    Qcledger__OpenAccountRequest m = QCLEDGER__OPEN_ACCOUNT_REQUEST__INIT;
    m.account_id = (char *)d->account; /* pack only reads it */
    m.currency = LOADGEN_CURRENCY;
    return proto_pack(&m.base, body, body_len);
}

static int loadgen_body_deposit(const loadgen_device_t *d, const loadgen_admin_config_t *cfg,
                                uint8_t **body, size_t *body_len)
{
    uint8_t txn[PROTO_TXN_ID_SIZE];
    if (RAND_bytes(txn, sizeof txn) != 1)
        return QC_ECRYPTO;
    Qcledger__DepositRequest m = QCLEDGER__DEPOSIT_REQUEST__INIT;
    m.account_id = (char *)d->account;
    m.amount = cfg->deposit;
    m.txn_id.data = txn;
    m.txn_id.len = sizeof txn;
    return proto_pack(&m.base, body, body_len);
}

static int loadgen_body_enroll(const loadgen_device_t *d, const loadgen_admin_config_t *cfg,
                               uint8_t **body, size_t *body_len)
{
    (void)cfg;
    const uint8_t *der = NULL;
    size_t der_len = 0;
    int rc = device_core_cert(d->core, &der, &der_len);
    assert(rc == 0); /* invariant 2 */
    (void)rc;
    Qcledger__EnrollDeviceRequest m = QCLEDGER__ENROLL_DEVICE_REQUEST__INIT;
    m.account_id = (char *)d->account;
    m.cert.data = (uint8_t *)der; /* pack only reads it */
    m.cert.len = der_len;
    return proto_pack(&m.base, body, body_len);
}

/* Polls every shard client once (up to poll_ms) and hands finished calls to done. */
static int loadgen_admin_pump(loadgen_admin_t *a, int poll_ms)
{
    zmq_pollitem_t items[LOADGEN_SHARDS_MAX * PROTO_RPC_ENDPOINTS_MAX];
    int n = 0;
    for (uint32_t s = 0; s < a->shard_count; s++)
        n += proto_rpc_client_pollitems(a->shards[s], &items[n],
                                        (int)(sizeof items / sizeof items[0]) - n);
    if (zmq_poll(items, n, poll_ms) < 0 && zmq_errno() != EINTR)
        return QC_EIO;
    for (uint32_t s = 0; s < a->shard_count; s++)
        proto_rpc_client_process(a->shards[s], loadgen_admin_done, a);
    return 0;
}

static int loadgen_admin_step(loadgen_admin_t *a, const char *what, const char *method,
                              loadgen_admin_body_fn *make, const loadgen_admin_config_t *cfg)
{
    loadgen_fleet_t *f = a->f;
    a->done = a->failed = 0;
    size_t sent = 0, step = f->count / LOADGEN_PROGRESS_STEPS + 1;
    while (a->done < f->count && a->first_error == 0) {
        while (sent < f->count) {
            uint32_t s = proto_shard_of(f->dev[sent].account, a->shard_count);
            if (proto_rpc_client_inflight(a->shards[s]) >= LOADGEN_ADMIN_WINDOW)
                break;
            uint8_t *body = NULL;
            size_t body_len = 0;
            uint64_t id = 0;
            int rc = make(&f->dev[sent], cfg, &body, &body_len);
            if (rc == 0)
                rc = proto_rpc_client_send(a->shards[s], method, body, body_len,
                                           LOADGEN_ADMIN_TIMEOUT_MS, 0, (void *)(uintptr_t)sent,
                                           &id);
            free(body);
            if (rc != 0)
                return rc;
            sent++;
        }
        int rc = loadgen_admin_pump(a, 100);
        if (rc != 0)
            return rc;
        if ((a->done % step == 0 && isatty(STDERR_FILENO)) || a->done == f->count)
            fprintf(stderr, "\rloadgen: set-up: %s %zu/%zu   ", what, a->done, f->count);
    }
    /* Let the calls still in flight finish before the clients go away. */
    for (uint32_t s = 0; s < a->shard_count; s++)
        while (proto_rpc_client_inflight(a->shards[s]) > 0)
            if (loadgen_admin_pump(a, 100) != 0)
                break;
    fputc('\n', stderr);
    return a->first_error;
}

int loadgen_fleet_enroll(loadgen_fleet_t *f, void *zctx, const loadgen_admin_config_t *admin)
{
    assert(f != NULL);
    assert(zctx != NULL);
    assert(admin != NULL);
    assert(admin->endpoints != NULL);
    loadgen_admin_t a = {.f = f};
    int rc = 0;
    const char *p = admin->endpoints;
    while (*p != '\0' && rc == 0) {
        const char *end = strchr(p, ';');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        char endpoints[1024];
        if (len == 0 || len >= sizeof endpoints || a.shard_count == LOADGEN_SHARDS_MAX) {
            rc = QC_ECONFIG;
            break;
        }
        memcpy(endpoints, p, len);
        endpoints[len] = '\0';
        proto_rpc_client_config_t cc = {
            .service = "ledger",
            .endpoints = endpoints,
            .server_public_z85 = admin->server_public_z85,
            .keys = admin->keys,
        };
        rc = proto_rpc_client_new(zctx, &cc, &a.shards[a.shard_count]);
        if (rc == 0)
            a.shard_count++;
        p += len;
        if (*p == ';')
            p++;
    }
    if (rc == 0 && a.shard_count == 0)
        rc = QC_ECONFIG;
    if (rc == 0)
        rc = loadgen_admin_step(&a, "accounts opened", "open_account", loadgen_body_open, admin);
    if (rc == 0)
        rc = loadgen_admin_step(&a, "accounts funded", "deposit", loadgen_body_deposit, admin);
    if (rc == 0)
        rc =
            loadgen_admin_step(&a, "devices enrolled", "enroll_device", loadgen_body_enroll, admin);
    for (uint32_t s = 0; s < a.shard_count; s++)
        proto_rpc_client_destroy(&a.shards[s]);
    return rc;
}

/* ------------------------------------------------------------------ protocol */

device_core_t *loadgen_fleet_core(loadgen_fleet_t *f, size_t i)
{
    assert(f != NULL);
    assert(i < f->count);
    assert(f->dev[i].core != NULL);
    return f->dev[i].core;
}

int loadgen_fleet_request(loadgen_fleet_t *f, size_t i, int64_t amount, const uint8_t **out,
                          size_t *out_len)
{
    assert(f != NULL);
    assert(i < f->count);
    assert(out != NULL);
    assert(out_len != NULL);
    assert(amount > 0);
    const loadgen_device_t *d = &f->dev[i];
    return device_core_request(d->core, d->account, amount, LOADGEN_CURRENCY, out, out_len);
}
