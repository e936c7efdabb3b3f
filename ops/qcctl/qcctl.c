/* qcctl.c - the operator's command line: accounts, devices, loads and the invariant check,
 * over the same authenticated RPC the services use. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <zmq.h>

#include "ledger.pb-c.h"
#include "ops_config.h"
#include "ops_log.h"
#include "ops_hex.h"
#include "proto_decode.h"
#include "proto_rpc.h"
#include "proto_shard.h"
#include "qc_error.h"
#include "qcctl_audit.h"

#define QCCTL_SHARDS_MAX PROTO_SHARD_COUNT_MAX
#define QCCTL_ENDPOINTS_MAX 4096 /* bytes of the ledger_endpoints setting */
#define QCCTL_CERT_FILE_MAX (64 * 1024)
#define QCCTL_TXN_SIZE PROTO_TXN_ID_SIZE
#define QCCTL_CURRENCY_DEFAULT "156"
#define QCCTL_TIMEOUT_DEFAULT "5000"

/* Exit statuses. */
#define QCCTL_EXIT_OK 0
#define QCCTL_EXIT_FAILED 1 /* the ledger refused, or check found a problem */
#define QCCTL_EXIT_USAGE 2
#define QCCTL_EXIT_UNREACHABLE 3

static const ops_config_key_t qcctl_keys[] = {
    {"ledger_endpoints", OPS_CONFIG_STRING, NULL,
     "ledger shards in shard order, ';' between shards, ',' between instances of one shard"},
    {"ledger_public_key", OPS_CONFIG_STRING, NULL, "the ledger's CURVE public key (Z85)"},
    {"curve_key", OPS_CONFIG_STRING, NULL, "qcctl's CURVE key pair file (in the admin_keys)"},
    {"json", OPS_CONFIG_BOOL, "false", "print JSON instead of text"},
    {"currency", OPS_CONFIG_INT, QCCTL_CURRENCY_DEFAULT, "account open: ISO 4217 numeric code"},
    {"load_min", OPS_CONFIG_INT, "0", "account open: smallest load (0 = 1)"},
    {"load_max", OPS_CONFIG_INT, "0", "account open: largest load (0 = no limit)"},
    {"daily_max", OPS_CONFIG_INT, "0", "account open: loads per UTC day (0 = no limit)"},
    {"account", OPS_CONFIG_STRING, NULL, "device enroll: the account the device loads from"},
    {"wallet_cap", OPS_CONFIG_INT, "0", "device enroll: wallet cap (0 = none)"},
    {"counter", OPS_CONFIG_INT, "0", "device enroll: the device's counter now"},
    {"txn", OPS_CONFIG_STRING, NULL, "account deposit: idempotency key, 32 hex digits"},
    {"timeout_ms", OPS_CONFIG_INT, QCCTL_TIMEOUT_DEFAULT, "per call, retries included"},
    {"log_level", OPS_CONFIG_STRING, "warn", "debug, info, warn or error"},
};

#define QCCTL_USAGE                                                                                \
    "[--config FILE] [options] VERB ...\n"                                                         \
    "  account open ID [--currency N] [--load-min N] [--load-max N] [--daily-max N]\n"             \
    "  account deposit ID AMOUNT [--txn HEX32]\n"                                                  \
    "  account show ID | account freeze ID | account unfreeze ID\n"                                \
    "  device enroll CERT_FILE --account ID [--wallet-cap N] [--counter N]\n"                      \
    "  device revoke DEVICE_ID | device show DEVICE_ID\n"                                          \
    "  load show TXN_HEX\n"                                                                        \
    "  check            invariants of every shard; JSON; exit 1 when any fails\n"                  \
    "  audit verify|show|export ...   the audit log, offline (qcctl audit --help)\n"               \
    "Exit: 0 ok, 1 refused or check failed, 2 usage, 3 a shard did not answer."

typedef struct qcctl {
    const ops_config_t *cfg;
    void *zctx;
    proto_rpc_client_t *shards[QCCTL_SHARDS_MAX];
    uint32_t shard_count;
    bool json;
    int timeout_ms;
} qcctl_t;

/* ------------------------------------------------------------ output */

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static const char *account_status(Qcledger__AccountStatus s)
{
    return s == QCLEDGER__ACCOUNT_STATUS__ACCOUNT_OPEN     ? "open"
           : s == QCLEDGER__ACCOUNT_STATUS__ACCOUNT_FROZEN ? "frozen"
                                                           : "none";
}

static void print_account(const qcctl_t *q, const Qcledger__Account *a)
{
    if (q->json) {
        printf("{\"id\":");
        json_str(stdout, a->id);
        printf(",\"currency\":%u,\"balance\":%" PRId64 ",\"status\":\"%s\",\"load_min\":%" PRId64
               ",\"load_max\":%" PRId64 ",\"daily_max\":%" PRId64 ",\"overdrawn\":%s}\n",
               a->currency, a->balance, account_status(a->status), a->load_min, a->load_max,
               a->daily_max, a->overdrawn ? "true" : "false");
        return;
    }
    printf("account   %s\ncurrency  %u\nbalance   %" PRId64 "\nstatus    %s%s\n"
           "limits    per load %" PRId64 "..%" PRId64 ", per day %" PRId64 " (0 = none)\n",
           a->id, a->currency, a->balance, account_status(a->status),
           a->overdrawn ? " (OVERDRAWN by a late report)" : "", a->load_min, a->load_max,
           a->daily_max);
}

static void print_device(const qcctl_t *q, const Qcledger__Device *d)
{
    char fp[2 * 32 + 1] = "", rsv[2 * QCCTL_TXN_SIZE + 1] = "";
    if (d->cert_fp.len == 32)
        ops_hex(d->cert_fp.data, 32, fp);
    if (d->reserved_txn.len == QCCTL_TXN_SIZE)
        ops_hex(d->reserved_txn.data, QCCTL_TXN_SIZE, rsv);
    const char *status = d->status == QCLEDGER__DEVICE_STATUS__DEVICE_ACTIVE    ? "active"
                         : d->status == QCLEDGER__DEVICE_STATUS__DEVICE_REVOKED ? "revoked"
                                                                                : "none";
    if (q->json) {
        printf("{\"id\":");
        json_str(stdout, d->id);
        printf(",\"account\":");
        json_str(stdout, d->account_id);
        printf(",\"status\":\"%s\",\"counter\":%" PRIu64 ",\"wallet_cap\":%" PRId64
               ",\"cert_sha256\":\"%s\",\"reserved_txn\":\"%s\"}\n",
               status, d->counter, d->wallet_cap, fp, rsv);
        return;
    }
    printf("device    %s\naccount   %s\nstatus    %s\ncounter   %" PRIu64 "\nwallet cap %" PRId64
           "\ncert sha256 %s\nreserved  %s\n",
           d->id, d->account_id, status, d->counter, d->wallet_cap, fp, rsv[0] ? rsv : "-");
}

static void print_load(const qcctl_t *q, const Qcledger__Load *l)
{
    char txn[2 * QCCTL_TXN_SIZE + 1] = "";
    if (l->txn_id.len == QCCTL_TXN_SIZE)
        ops_hex(l->txn_id.data, QCCTL_TXN_SIZE, txn);
    if (q->json) {
        printf("{\"txn_id\":\"%s\",\"state\":\"%s\",\"amount\":%" PRId64 ",\"currency\":%u,"
               "\"device\":",
               txn, proto_load_state_name(l->state), l->amount, l->currency);
        json_str(stdout, l->device_id);
        printf(",\"account\":");
        json_str(stdout, l->account_id);
        printf(",\"counter\":%" PRIu64 ",\"deadline_ms\":%" PRIu64 ",\"reason\":", l->counter,
               l->deadline_ms);
        json_str(stdout, l->reason);
        printf(",\"flagged\":%s,\"request_bytes\":%zu,\"allow_bytes\":%zu,\"report_bytes\":%zu}\n",
               l->flagged ? "true" : "false", l->request.len, l->allow.len, l->report.len);
        return;
    }
    printf("load      %s\nstate     %s%s\namount    %" PRId64 " (currency %u)\ndevice    %s\n"
           "account   %s\ncounter   %" PRIu64 "\ndeadline  %" PRIu64 " ms\nreason    %s\n"
           "evidence  request %zu B, allow %zu B, report %zu B\n",
           txn, proto_load_state_name(l->state), l->flagged ? " (FLAGGED: account overdrawn)" : "",
           l->amount, l->currency, l->device_id, l->account_id, l->counter, l->deadline_ms,
           l->reason[0] ? l->reason : "-", l->request.len, l->allow.len, l->report.len);
}

/* ------------------------------------------------------------ calls */

/* Calls method on shard with msg. On success *reply is set (caller destroys) and 0 is
 * returned; a refusal prints the ledger's reason and returns its code; a shard that does
 * not answer returns QC_ETIMEOUT. */
static int call(qcctl_t *q, uint32_t shard, const char *method, const ProtobufCMessage *msg,
                proto_rpc_reply_t **reply, bool quiet)
{
    uint8_t *body = NULL;
    size_t len = 0;
    *reply = NULL;
    if (msg != NULL && proto_pack(msg, &body, &len) != 0)
        return QC_ENOMEM;
    int rc = proto_rpc_client_call(q->shards[shard], method, body, len, q->timeout_ms,
                                   PROTO_RPC_IDEMPOTENT, reply);
    free(body);
    if (rc != 0) {
        fprintf(stderr, "qcctl: shard %u did not answer: %s\n", shard, qc_strerror(rc));
        return rc;
    }
    rc = (*reply)->code;
    if (rc != 0) {
        if (!quiet)
            fprintf(stderr, "qcctl: %s refused (%s): %s\n", method, qc_errname(rc),
                    (*reply)->message);
        proto_rpc_reply_destroy(reply);
    }
    return rc;
}

static int exit_for(int rc)
{
    if (rc == 0)
        return QCCTL_EXIT_OK;
    if (rc == QC_ETIMEOUT || rc == QC_EUNAVAIL)
        return QCCTL_EXIT_UNREACHABLE;
    return QCCTL_EXIT_FAILED;
}

static uint32_t shard_of(const qcctl_t *q, const char *account)
{
    return proto_shard_of(account, q->shard_count);
}

static int show_account_reply(qcctl_t *q, proto_rpc_reply_t *r)
{
    Qcledger__AccountReply *a = qcledger__account_reply__unpack(NULL, r->body_len, r->body);
    proto_rpc_reply_destroy(&r);
    if (a == NULL || a->account == NULL) {
        fprintf(stderr, "qcctl: malformed reply\n");
        if (a != NULL)
            qcledger__account_reply__free_unpacked(a, NULL);
        return QCCTL_EXIT_FAILED;
    }
    print_account(q, a->account);
    qcledger__account_reply__free_unpacked(a, NULL);
    return QCCTL_EXIT_OK;
}

static int show_device_reply(qcctl_t *q, proto_rpc_reply_t *r)
{
    Qcledger__DeviceReply *d = qcledger__device_reply__unpack(NULL, r->body_len, r->body);
    proto_rpc_reply_destroy(&r);
    if (d == NULL || d->device == NULL) {
        fprintf(stderr, "qcctl: malformed reply\n");
        if (d != NULL)
            qcledger__device_reply__free_unpacked(d, NULL);
        return QCCTL_EXIT_FAILED;
    }
    print_device(q, d->device);
    qcledger__device_reply__free_unpacked(d, NULL);
    return QCCTL_EXIT_OK;
}

/* ------------------------------------------------------------ verbs */

static int cmd_account(qcctl_t *q, const char *sub, const char *id, const char *arg)
{
    if (sub == NULL || id == NULL)
        return QCCTL_EXIT_USAGE;
    uint32_t shard = shard_of(q, id);
    proto_rpc_reply_t *r = NULL;
    int rc;
    if (strcmp(sub, "open") == 0) {
        Qcledger__OpenAccountRequest m = QCLEDGER__OPEN_ACCOUNT_REQUEST__INIT;
        m.account_id = (char *)id;
        m.currency = (uint32_t)ops_config_int(q->cfg, "currency");
        m.load_min = ops_config_int(q->cfg, "load_min");
        m.load_max = ops_config_int(q->cfg, "load_max");
        m.daily_max = ops_config_int(q->cfg, "daily_max");
        rc = call(q, shard, "open_account", &m.base, &r, false);
    } else if (strcmp(sub, "deposit") == 0) {
        char *end = NULL;
        long long amount = arg != NULL ? strtoll(arg, &end, 10) : 0;
        if (arg == NULL || *end != '\0' || amount <= 0) {
            fprintf(stderr, "qcctl: account deposit ID AMOUNT (minor units, > 0)\n");
            return QCCTL_EXIT_USAGE;
        }
        uint8_t txn[QCCTL_TXN_SIZE];
        const char *txn_hex = ops_config_str(q->cfg, "txn");
        if (txn_hex != NULL ? ops_unhex(txn_hex, txn, sizeof txn) != 0
                            : RAND_bytes(txn, sizeof txn) != 1) {
            fprintf(stderr, "qcctl: --txn must be 32 hex digits\n");
            return QCCTL_EXIT_USAGE;
        }
        Qcledger__DepositRequest m = QCLEDGER__DEPOSIT_REQUEST__INIT;
        m.account_id = (char *)id;
        m.amount = amount;
        m.txn_id.data = txn;
        m.txn_id.len = sizeof txn;
        rc = call(q, shard, "deposit", &m.base, &r, false);
    } else if (strcmp(sub, "show") == 0 || strcmp(sub, "freeze") == 0 ||
               strcmp(sub, "unfreeze") == 0) {
        Qcledger__FreezeRequest f = QCLEDGER__FREEZE_REQUEST__INIT;
        Qcledger__GetAccountRequest g = QCLEDGER__GET_ACCOUNT_REQUEST__INIT;
        f.account_id = g.account_id = (char *)id;
        rc = strcmp(sub, "show") == 0 ? call(q, shard, "get_account", &g.base, &r, false)
                                      : call(q, shard, sub, &f.base, &r, false);
    } else {
        return QCCTL_EXIT_USAGE;
    }
    return rc != 0 ? exit_for(rc) : show_account_reply(q, r);
}

/* Reads a certificate file, PEM or DER, into DER bytes (malloc'd). */
static int read_cert(const char *path, uint8_t **der, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        return -1;
    }
    uint8_t *buf = malloc(QCCTL_CERT_FILE_MAX);
    size_t n = buf != NULL ? fread(buf, 1, QCCTL_CERT_FILE_MAX, f) : 0;
    fclose(f);
    if (buf == NULL || n == 0 || n == QCCTL_CERT_FILE_MAX) {
        free(buf);
        return -1;
    }
    if (n > 10 && memcmp(buf, "-----BEGIN", 10) == 0) {
        BIO *bio = BIO_new_mem_buf(buf, (int)n);
        X509 *x = bio != NULL ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
        BIO_free(bio);
        free(buf);
        if (x == NULL)
            return -1;
        unsigned char *out = NULL;
        int dn = i2d_X509(x, &out);
        X509_free(x);
        if (dn <= 0)
            return -1;
        *der = malloc((size_t)dn);
        if (*der == NULL) {
            OPENSSL_free(out);
            return -1;
        }
        memcpy(*der, out, (size_t)dn);
        *len = (size_t)dn;
        OPENSSL_free(out);
        return 0;
    }
    *der = buf;
    *len = n;
    return 0;
}

/* Finds on which shard a device or load lives: asks every shard. */
static int find_everywhere(qcctl_t *q, const char *method, const ProtobufCMessage *msg,
                           proto_rpc_reply_t **reply)
{
    int last = QC_ENOTFOUND;
    for (uint32_t s = 0; s < q->shard_count; s++) {
        int rc = call(q, s, method, msg, reply, true);
        if (rc == 0)
            return 0;
        if (rc == QC_ETIMEOUT || rc == QC_EUNAVAIL)
            last = rc; /* it may be on the shard that did not answer */
    }
    if (last == QC_ENOTFOUND)
        fprintf(stderr, "qcctl: not found on any shard\n");
    return last;
}

static int cmd_device(qcctl_t *q, const char *sub, const char *arg)
{
    if (sub == NULL || arg == NULL)
        return QCCTL_EXIT_USAGE;
    proto_rpc_reply_t *r = NULL;
    int rc;
    if (strcmp(sub, "enroll") == 0) {
        const char *account = ops_config_str(q->cfg, "account");
        if (account == NULL) {
            fprintf(stderr, "qcctl: device enroll CERT_FILE --account ID\n");
            return QCCTL_EXIT_USAGE;
        }
        uint8_t *der = NULL;
        size_t len = 0;
        if (read_cert(arg, &der, &len) != 0) {
            fprintf(stderr, "qcctl: %s is not a PEM or DER certificate\n", arg);
            return QCCTL_EXIT_USAGE;
        }
        Qcledger__EnrollDeviceRequest m = QCLEDGER__ENROLL_DEVICE_REQUEST__INIT;
        m.account_id = (char *)account;
        m.cert.data = der;
        m.cert.len = len;
        m.wallet_cap = ops_config_int(q->cfg, "wallet_cap");
        m.counter = (uint64_t)ops_config_int(q->cfg, "counter");
        rc = call(q, shard_of(q, account), "enroll_device", &m.base, &r, false);
        free(der);
    } else if (strcmp(sub, "show") == 0) {
        Qcledger__GetDeviceRequest m = QCLEDGER__GET_DEVICE_REQUEST__INIT;
        m.device_id = (char *)arg;
        rc = find_everywhere(q, "get_device", &m.base, &r);
    } else if (strcmp(sub, "revoke") == 0) {
        /* The device lives on its account's shard: find it there, then revoke it there. */
        Qcledger__GetDeviceRequest g = QCLEDGER__GET_DEVICE_REQUEST__INIT;
        g.device_id = (char *)arg;
        rc = QC_ENOTFOUND;
        for (uint32_t s = 0; s < q->shard_count && rc != 0; s++) {
            if (call(q, s, "get_device", &g.base, &r, true) != 0)
                continue;
            proto_rpc_reply_destroy(&r);
            Qcledger__RevokeDeviceRequest m = QCLEDGER__REVOKE_DEVICE_REQUEST__INIT;
            m.device_id = (char *)arg;
            rc = call(q, s, "revoke_device", &m.base, &r, false);
            if (rc != 0)
                return exit_for(rc);
        }
        if (rc != 0)
            fprintf(stderr, "qcctl: device %s not found on any shard\n", arg);
    } else {
        return QCCTL_EXIT_USAGE;
    }
    return rc != 0 ? exit_for(rc) : show_device_reply(q, r);
}

static int cmd_load(qcctl_t *q, const char *sub, const char *arg)
{
    uint8_t txn[QCCTL_TXN_SIZE];
    if (sub == NULL || strcmp(sub, "show") != 0 || ops_unhex(arg, txn, sizeof txn) != 0) {
        fprintf(stderr, "qcctl: load show TXN (32 hex digits)\n");
        return QCCTL_EXIT_USAGE;
    }
    Qcledger__GetLoadRequest m = QCLEDGER__GET_LOAD_REQUEST__INIT;
    m.txn_id.data = txn;
    m.txn_id.len = sizeof txn;
    proto_rpc_reply_t *r = NULL;
    int rc = find_everywhere(q, "get_load", &m.base, &r);
    if (rc != 0)
        return exit_for(rc);
    Qcledger__LoadReply *l = qcledger__load_reply__unpack(NULL, r->body_len, r->body);
    proto_rpc_reply_destroy(&r);
    if (l == NULL || l->load == NULL) {
        if (l != NULL)
            qcledger__load_reply__free_unpacked(l, NULL);
        return QCCTL_EXIT_FAILED;
    }
    print_load(q, l->load);
    qcledger__load_reply__free_unpacked(l, NULL);
    return QCCTL_EXIT_OK;
}

/* The invariant check of every shard, as one JSON document (whatever --json says: it is
 * meant for scripts and for the operator's eyes alike). */
static int cmd_check(qcctl_t *q)
{
    bool all_ok = true, unreachable = false;
    printf("{\"shards\":[");
    for (uint32_t s = 0; s < q->shard_count; s++) {
        Qcledger__CheckRequest m = QCLEDGER__CHECK_REQUEST__INIT;
        proto_rpc_reply_t *r = NULL;
        printf("%s{\"shard\":%u,", s ? "," : "", s);
        int rc = call(q, s, "check", &m.base, &r, false);
        Qcledger__CheckReply *c =
            rc == 0 ? qcledger__check_reply__unpack(NULL, r->body_len, r->body) : NULL;
        proto_rpc_reply_destroy(&r);
        if (c == NULL) {
            all_ok = false;
            unreachable |= rc == QC_ETIMEOUT || rc == QC_EUNAVAIL;
            printf("\"ok\":false,\"error\":");
            json_str(stdout, rc != 0 ? qc_strerror(rc) : "malformed reply");
            printf("}");
            continue;
        }
        if (c->shard != s || c->shard_count != q->shard_count) {
            c->ok = false;
            fprintf(stderr, "qcctl: endpoint %u serves shard %u of %u\n", s, c->shard,
                    c->shard_count);
        }
        all_ok &= c->ok;
        printf("\"ok\":%s,\"accounts\":%" PRIu64 ",\"devices\":%" PRIu64 ",\"loads\":%" PRIu64
               ",\"reserved\":%" PRIu64 ",\"transfers\":%" PRIu64 ",\"outbox_depth\":%" PRIu64
               ",\"currencies\":[",
               c->ok ? "true" : "false", c->accounts, c->devices, c->loads, c->reserved,
               c->transfers, c->outbox_depth);
        for (size_t i = 0; i < c->n_currencies; i++) {
            const Qcledger__CurrencyTotals *t = c->currencies[i];
            printf("%s{\"currency\":%u,\"sum\":%" PRId64 ",\"hold\":%" PRId64
                   ",\"reserved_sum\":%" PRId64 ",\"float\":%" PRId64 "}",
                   i ? "," : "", t->currency, t->sum, t->hold, t->reserved_sum, t->float_balance);
        }
        printf("],\"problems\":[");
        for (size_t i = 0; i < c->n_problems; i++) {
            if (i)
                printf(",");
            json_str(stdout, c->problems[i]);
        }
        printf("]}");
        qcledger__check_reply__free_unpacked(c, NULL);
    }
    printf("],\"ok\":%s}\n", all_ok ? "true" : "false");
    if (unreachable)
        return QCCTL_EXIT_UNREACHABLE;
    return all_ok ? QCCTL_EXIT_OK : QCCTL_EXIT_FAILED;
}

/* ------------------------------------------------------------ set-up */

static int connect_shards(qcctl_t *q, const proto_curve_keypair_t *keys)
{
    const char *eps = ops_config_str(q->cfg, "ledger_endpoints");
    const char *pub = ops_config_str(q->cfg, "ledger_public_key");
    if (eps == NULL || pub == NULL || strlen(eps) >= QCCTL_ENDPOINTS_MAX) {
        fprintf(stderr, "qcctl: ledger_endpoints and ledger_public_key are required\n");
        return -1;
    }
    char buf[QCCTL_ENDPOINTS_MAX];
    snprintf(buf, sizeof buf, "%s", eps);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ";", &save); tok != NULL; tok = strtok_r(NULL, ";", &save)) {
        while (*tok == ' ')
            tok++;
        if (*tok == '\0')
            continue;
        if (q->shard_count == QCCTL_SHARDS_MAX) {
            fprintf(stderr, "qcctl: more than %d shards\n", QCCTL_SHARDS_MAX);
            return -1;
        }
        proto_rpc_client_config_t cc = {
            .service = "ledger", .endpoints = tok, .server_public_z85 = pub, .keys = keys};
        if (proto_rpc_client_new(q->zctx, &cc, &q->shards[q->shard_count]) != 0) {
            fprintf(stderr, "qcctl: bad ledger endpoint or key: %s\n", tok);
            return -1;
        }
        q->shard_count++;
    }
    if (q->shard_count == 0) {
        fprintf(stderr, "qcctl: no ledger endpoints\n");
        return -1;
    }
    return 0;
}

static int run(qcctl_t *q)
{
    size_t argc = ops_config_argc(q->cfg);
    const char *verb = argc > 0 ? ops_config_arg(q->cfg, 0) : NULL;
    const char *a1 = argc > 1 ? ops_config_arg(q->cfg, 1) : NULL;
    const char *a2 = argc > 2 ? ops_config_arg(q->cfg, 2) : NULL;
    const char *a3 = argc > 3 ? ops_config_arg(q->cfg, 3) : NULL;
    int rc = QCCTL_EXIT_USAGE;
    if (verb == NULL)
        rc = QCCTL_EXIT_USAGE;
    else if (strcmp(verb, "account") == 0)
        rc = cmd_account(q, a1, a2, a3);
    else if (strcmp(verb, "device") == 0)
        rc = cmd_device(q, a1, a2);
    else if (strcmp(verb, "load") == 0)
        rc = cmd_load(q, a1, a2);
    else if (strcmp(verb, "check") == 0)
        rc = cmd_check(q);
    if (rc == QCCTL_EXIT_USAGE)
        fprintf(stderr, "qcctl: usage: qcctl %s\n", QCCTL_USAGE);
    return rc;
}

int main(int argc, char **argv)
{
    /* The audit verbs work offline on a data directory and have flags of their own. */
    if (argc >= 2 && strcmp(argv[1], "audit") == 0)
        return qcctl_audit_main(argc - 1, argv + 1);
    char err[OPS_CONFIG_ERROR_MAX];
    ops_config_t *cfg = NULL;
    int rc =
        ops_config_load("qcctl", QCCTL_USAGE, qcctl_keys, sizeof qcctl_keys / sizeof qcctl_keys[0],
                        argc, argv, &cfg, err, sizeof err);
    if (rc == 1)
        return QCCTL_EXIT_OK;
    if (rc != 0) {
        fprintf(stderr, "qcctl: %s\n", err);
        return QCCTL_EXIT_USAGE;
    }
    int level = ops_log_level_parse(ops_config_str(cfg, "log_level"));
    ops_log_init("qcctl", "0", level < 0 ? OPS_LOG_WARN : (ops_log_level_t)level);
    qcctl_t q = {.cfg = cfg, .json = ops_config_bool(cfg, "json")};
    int64_t timeout = ops_config_int(cfg, "timeout_ms");
    q.timeout_ms = timeout < 1 || timeout > INT32_MAX ? 5000 : (int)timeout;
    proto_curve_keypair_t keys;
    const char *key_path = ops_config_str(cfg, "curve_key");
    if (key_path == NULL || proto_curve_keypair_load(key_path, &keys) != 0) {
        fprintf(stderr, "qcctl: --curve-key FILE (a key pair listed in the ledger's admin_keys)\n");
        ops_config_destroy(&cfg);
        return QCCTL_EXIT_USAGE;
    }
    q.zctx = zmq_ctx_new();
    int status = QCCTL_EXIT_USAGE;
    if (q.zctx != NULL && connect_shards(&q, &keys) == 0)
        status = run(&q);
    proto_curve_keypair_wipe(&keys);
    for (uint32_t s = 0; s < q.shard_count; s++)
        proto_rpc_client_destroy(&q.shards[s]);
    if (q.zctx != NULL)
        zmq_ctx_term(q.zctx);
    ops_config_destroy(&cfg);
    return status;
}
