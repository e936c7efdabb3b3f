/* qcctl.c - the operator's command line: accounts, devices, loads, the invariant check and
 * the replicas of each shard, over the same authenticated RPC the services use.
 *
 * Each shard is reached through one client over all its replicas (its ',' list), which
 * follows a follower's QC_ENOTLEADER to the leader (proto_rpc_client.h). `shard status` and
 * `check --replicas` instead ask every replica on its own, through one client per endpoint,
 * because there the point is what each replica says. */
#define _GNU_SOURCE /* strptime, timegm */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <zmq.h>

#include "ledger.pb-c.h"
#include "ops_config.h"
#include "ops_log.h"
#include "ops_hex.h"
#include "proto_amount.h"
#include "proto_decode.h"
#include "proto_rpc.h"
#include "proto_shard.h"
#include "qc_error.h"
#include "qcctl_audit.h"
#include "qcctl_restore.h"

#define QCCTL_SHARDS_MAX PROTO_SHARD_COUNT_MAX
#define QCCTL_ENDPOINTS_MAX 4096 /* bytes of the ledger_endpoints setting */
#define QCCTL_CERT_FILE_MAX (64 * 1024)
#define QCCTL_TXN_SIZE PROTO_TXN_ID_SIZE
#define QCCTL_CURRENCY_DEFAULT "156"
#define QCCTL_TIMEOUT_DEFAULT "5000"
#define QCCTL_REPLICA_TIMEOUT_MS 2000         /* shard status: a replica that is down costs this */
#define QCCTL_CHANGE_TIMEOUT_MS 180000        /* add-replica waits at least this: a catch-up */
#define QCCTL_BACKUP_WAIT_MS (60 * 60 * 1000) /* shard backup: the longest copy waited for */
#define QCCTL_BACKUP_POLL_MS 100              /* shard backup: between two asks */
#define QCCTL_REPLICA_ID_MAX 1000000          /* raft ids of replicas (ops/cluster uses 1..5) */
/* load list / account statement: --limit's default, and its bound (a bulk fetch of a big
 * shard: the chaos checker lists every load of a run). The ledger answers in pages of at most
 * LEDGER_LIST_PAGE_MAX (1000), fetched one after the other. */
#define QCCTL_LIST_DEFAULT "100"
#define QCCTL_LIST_LIMIT_MAX 10000000
#define QCCTL_PAGE_MAX 1000
#define QCCTL_CURSOR_MAX 48 /* "S:" + 32 hex digits */

/* Exit statuses. */
#define QCCTL_EXIT_OK 0
#define QCCTL_EXIT_FAILED 1 /* the ledger refused, or check found a problem */
#define QCCTL_EXIT_USAGE 2
#define QCCTL_EXIT_UNREACHABLE 3

/* A replica link address, HOST:PORT: checked as the tcp endpoint it is, so a bad port is
 * named with its range like every other port setting. */
static bool check_host_port(const char *value, char *why, size_t why_cap)
{
    char ep[QCCTL_ENDPOINTS_MAX];
    if (value[0] == '\0')
        return true;
    if (strchr(value, '/') != NULL || strchr(value, ':') == NULL) {
        snprintf(why, why_cap, "not HOST:PORT");
        return false;
    }
    snprintf(ep, sizeof ep, "tcp://%s", value);
    return ops_config_check_endpoint(ep, why, why_cap);
}

static const ops_config_key_t qcctl_keys[] = {
    {"ledger_endpoints", OPS_CONFIG_STRING, NULL,
     "ledger shards in shard order, ';' between shards, ',' between instances of one shard",
     .check = ops_config_check_endpoints},
    {"ledger_public_key", OPS_CONFIG_STRING, NULL, "the ledger's CURVE public key (Z85)",
     .check = ops_config_check_curve_key},
    {"curve_key", OPS_CONFIG_STRING, NULL, "qcctl's CURVE key pair file (in the admin_keys)"},
    {"json", OPS_CONFIG_BOOL, "false", "print JSON instead of text"},
    {"currency", OPS_CONFIG_INT, QCCTL_CURRENCY_DEFAULT, "account open: ISO 4217 numeric code"},
    {"minor", OPS_CONFIG_BOOL, "false",
     "amounts in minor units (fen) instead of yuan, shown and taken (JSON is always fen)"},
    {"load_min", OPS_CONFIG_STRING, "0", "account open: smallest load, an amount (0 = 0.01)"},
    {"load_max", OPS_CONFIG_STRING, "0", "account open: largest load, an amount (0 = no limit)"},
    {"daily_max", OPS_CONFIG_STRING, "0",
     "account open: sum of loads per UTC day, an amount (0 = no limit)"},
    {"account", OPS_CONFIG_STRING, NULL, "device enroll: the account the device loads from"},
    {"wallet_cap", OPS_CONFIG_STRING, "0", "device enroll: wallet cap, an amount (0 = none)"},
    {"counter", OPS_CONFIG_INT, "0", "device enroll: the device's counter now"},
    {"txn", OPS_CONFIG_STRING, NULL, "account deposit: idempotency key, 32 hex digits"},
    {"state", OPS_CONFIG_STRING, NULL,
     "load list: RESERVED, CONFIRMED, COMPENSATED or LATE_CONFIRMED (default any)"},
    {"device", OPS_CONFIG_STRING, NULL, "load list: only this device's loads"},
    {"since", OPS_CONFIG_STRING, NULL,
     "load list, account statement: from this time, UTC (2026-12-08T01:00:00Z or Unix ms)"},
    {"until", OPS_CONFIG_STRING, NULL, "load list, account statement: before this time"},
    {"limit", OPS_CONFIG_INT, QCCTL_LIST_DEFAULT, "load list, account statement: at most this many",
     1, QCCTL_LIST_LIMIT_MAX},
    {"after", OPS_CONFIG_STRING, NULL, "load list: continue after this cursor (its \"next\")"},
    {"timeout_ms", OPS_CONFIG_INT, QCCTL_TIMEOUT_DEFAULT, "per call, retries included"},
    {"replicas", OPS_CONFIG_BOOL, "false", "check: ask every replica of every shard on its own"},
    {"deep", OPS_CONFIG_BOOL, "false",
     "check: also every record's checksum, each shard's whole store (the scrub, on demand)"},
    {"shard", OPS_CONFIG_INT, "-1", "shard verbs: the shard (status: default every shard)", -1,
     QCCTL_SHARDS_MAX - 1},
    {"id", OPS_CONFIG_INT, "0", "shard add-replica/remove-replica: the replica's raft id", 0,
     QCCTL_REPLICA_ID_MAX},
    {"raft_address", OPS_CONFIG_STRING, NULL, "shard add-replica: its replica link, HOST:PORT",
     .check = check_host_port},
    {"endpoint", OPS_CONFIG_STRING, NULL, "shard add-replica: its client endpoint, tcp://H:P", 0, 0,
     ops_config_check_endpoint},
    {"raft_key", OPS_CONFIG_STRING, NULL, "shard add-replica: its raft CURVE public key (Z85)",
     .check = ops_config_check_curve_key},
    {"to", OPS_CONFIG_STRING, NULL,
     "shard backup: the directory to copy into, on the ledger's host (absent or empty)"},
    {"log_level", OPS_CONFIG_STRING, "warn", "debug, info, warn or error"},
};

#define QCCTL_USAGE                                                                                \
    "[--config FILE] [options] VERB ...\n"                                                         \
    "  account open ID [--currency N] [--load-min N] [--load-max N] [--daily-max N]\n"             \
    "  account deposit ID AMOUNT [--txn HEX32]   AMOUNT in yuan (12.34), fen with --minor\n"       \
    "  account show ID | account freeze ID | account unfreeze ID\n"                                \
    "  device enroll CERT_FILE --account ID [--wallet-cap N] [--counter N]\n"                      \
    "  device revoke DEVICE_ID | device show DEVICE_ID\n"                                          \
    "  load show TXN_HEX\n"                                                                        \
    "  load list [--state S] [--device ID] [--account ID] [--since T] [--until T] [--limit N]\n"   \
    "            [--after CURSOR]   loads of every shard, --limit at most (default 100)\n"         \
    "  account statement ID [--since T] [--until T] [--limit N]   movements, running balance\n"    \
    "  (T: 2026-12-08T01:00:00Z or Unix ms, UTC)\n"                                                \
    "  check [--replicas] [--deep]  invariants of every shard (of every replica with\n"            \
    "                   --replicas; with --deep every record's checksum first);\n"                 \
    "                   JSON; exit 1 when any fails\n"                                             \
    "  shard status [--shard S]   every replica of each shard: role, term, indexes, lag\n"         \
    "  shard add-replica --shard S --id N --raft-address H:P --endpoint E --raft-key Z85\n"        \
    "  shard remove-replica --shard S --id N   (qcctl shard --help)\n"                             \
    "  shard backup --shard S --to DIR [--endpoint E]   a hot copy of the shard\n"                 \
    "  shard restore --from DIR --data-dir DIR [--replay-audit --audit-dir DIR] (offline)\n"       \
    "  audit verify|show|export|prove|consistency ...   the audit log, offline (qcctl audit "      \
    "--help)\n"                                                                                    \
    "Amounts are shown and taken in yuan as the wallet shows them (12.34; at most 2 decimals),\n"  \
    "in fen with --minor; JSON output always carries fen (integers).\n"                            \
    "Exit: 0 ok, 1 refused or check failed, 2 usage, 3 a shard did not answer."

typedef struct qcctl {
    const ops_config_t *cfg;
    void *zctx;
    proto_rpc_client_t *shards[QCCTL_SHARDS_MAX];
    char *shard_endpoints[QCCTL_SHARDS_MAX]; /* each shard's replica list, as configured */
    uint32_t shard_count;
    const proto_curve_keypair_t *keys;
    const char *ledger_key;
    bool json;
    bool minor; /* amounts in fen, not yuan */
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

/* An amount as the operator reads it: yuan ("12.34"), or fen with --minor. */
static const char *money(const qcctl_t *q, int64_t minor, char out[PROTO_AMOUNT_FORMAT_MAX])
{
    if (q->minor) {
        snprintf(out, PROTO_AMOUNT_FORMAT_MAX, "%" PRId64, minor);
        return out;
    }
    return proto_amount_format(minor, out, PROTO_AMOUNT_FORMAT_MAX);
}

/* Parses an amount the operator typed (yuan, or fen with --minor) into minor units; what is
 * named in the message (an option or an argument). flags as proto_amount_parse(). False, said
 * on stderr, when it is not an amount. */
static bool amount_arg(const qcctl_t *q, const char *what, const char *text, unsigned flags,
                       int64_t *minor)
{
    const char *why = NULL;
    if (text != NULL &&
        proto_amount_parse(text, flags | (q->minor ? PROTO_AMOUNT_MINOR : 0), minor, &why) == 0)
        return true;
    fprintf(stderr, "qcctl: %s %s: %s (%s)\n", what, text != NULL ? text : "(missing)",
            why != NULL ? why : "an amount is required",
            q->minor ? "fen, with --minor" : "yuan, as 12.34; --minor for fen");
    return false;
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
    char bal[PROTO_AMOUNT_FORMAT_MAX], lo[PROTO_AMOUNT_FORMAT_MAX], hi[PROTO_AMOUNT_FORMAT_MAX],
        day[PROTO_AMOUNT_FORMAT_MAX];
    printf("account   %s\ncurrency  %u\nbalance   %s%s\nstatus    %s%s\n"
           "limits    per load %s..%s, per day %s (0 = none)\n",
           a->id, a->currency, money(q, a->balance, bal), q->minor ? " fen" : "",
           account_status(a->status), a->overdrawn ? " (OVERDRAWN by a late report)" : "",
           money(q, a->load_min, lo), money(q, a->load_max, hi), money(q, a->daily_max, day));
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
    char cap[PROTO_AMOUNT_FORMAT_MAX];
    printf("device    %s\naccount   %s\nstatus    %s\ncounter   %" PRIu64 "\nwallet cap %s%s"
           "\ncert sha256 %s\nreserved  %s\n",
           d->id, d->account_id, status, d->counter, money(q, d->wallet_cap, cap),
           d->wallet_cap == 0 ? " (none)" : "", fp, rsv[0] ? rsv : "-");
}

/* A load as one JSON object, without a newline. */
static void print_load_json(const Qcledger__Load *l)
{
    char txn[2 * QCCTL_TXN_SIZE + 1] = "";
    if (l->txn_id.len == QCCTL_TXN_SIZE)
        ops_hex(l->txn_id.data, QCCTL_TXN_SIZE, txn);
    printf("{\"txn_id\":\"%s\",\"state\":\"%s\",\"amount\":%" PRId64 ",\"currency\":%u,"
           "\"device\":",
           txn, proto_load_state_name(l->state), l->amount, l->currency);
    json_str(stdout, l->device_id);
    printf(",\"account\":");
    json_str(stdout, l->account_id);
    printf(",\"counter\":%" PRIu64 ",\"deadline_ms\":%" PRIu64 ",\"created_ms\":%" PRIu64
           ",\"updated_ms\":%" PRIu64 ",\"reason\":",
           l->counter, l->deadline_ms, l->created_ms, l->updated_ms);
    json_str(stdout, l->reason);
    printf(",\"flagged\":%s,\"request_bytes\":%zu,\"allow_bytes\":%zu,\"report_bytes\":%zu}",
           l->flagged ? "true" : "false", l->request.len, l->allow.len, l->report.len);
}

static void print_load(const qcctl_t *q, const Qcledger__Load *l)
{
    char txn[2 * QCCTL_TXN_SIZE + 1] = "";
    if (l->txn_id.len == QCCTL_TXN_SIZE)
        ops_hex(l->txn_id.data, QCCTL_TXN_SIZE, txn);
    if (q->json) {
        print_load_json(l);
        printf("\n");
        return;
    }
    char amt[PROTO_AMOUNT_FORMAT_MAX];
    printf("load      %s\nstate     %s%s\namount    %s%s (currency %u)\ndevice    %s\n"
           "account   %s\ncounter   %" PRIu64 "\ndeadline  %" PRIu64 " ms\nreason    %s\n"
           "evidence  request %zu B, allow %zu B, report %zu B\n",
           txn, proto_load_state_name(l->state), l->flagged ? " (FLAGGED: account overdrawn)" : "",
           money(q, l->amount, amt), q->minor ? " fen" : "", l->currency, l->device_id,
           l->account_id, l->counter, l->deadline_ms, l->reason[0] ? l->reason : "-",
           l->request.len, l->allow.len, l->report.len);
}

/* ------------------------------------------------------------ calls */

/* Calls method on shard with msg. On success *reply is set (caller destroys) and 0 is
 * returned; a refusal prints the ledger's reason and returns its code; a shard that does
 * not answer returns QC_ETIMEOUT. */
static int call_on(proto_rpc_client_t *cli, const char *who, const char *method,
                   const ProtobufCMessage *msg, int timeout_ms, int flags,
                   proto_rpc_reply_t **reply, bool quiet)
{
    uint8_t *body = NULL;
    size_t len = 0;
    *reply = NULL;
    if (msg != NULL && proto_pack(msg, &body, &len) != 0)
        return QC_ENOMEM;
    int rc = proto_rpc_client_call(cli, method, body, len, timeout_ms, flags, reply);
    free(body);
    if (rc != 0) {
        fprintf(stderr, "qcctl: %s did not answer: %s\n", who, qc_strerror(rc));
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

static int call(qcctl_t *q, uint32_t shard, const char *method, const ProtobufCMessage *msg,
                proto_rpc_reply_t **reply, bool quiet)
{
    char who[32];
    snprintf(who, sizeof who, "shard %u", shard);
    return call_on(q->shards[shard], who, method, msg, q->timeout_ms, PROTO_RPC_IDEMPOTENT, reply,
                   quiet);
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

static int cmd_statement(qcctl_t *q, const char *id);

static int cmd_account(qcctl_t *q, const char *sub, const char *id, const char *arg)
{
    if (sub == NULL || id == NULL)
        return QCCTL_EXIT_USAGE;
    if (strcmp(sub, "statement") == 0)
        return cmd_statement(q, id);
    uint32_t shard = shard_of(q, id);
    proto_rpc_reply_t *r = NULL;
    int rc;
    if (strcmp(sub, "open") == 0) {
        Qcledger__OpenAccountRequest m = QCLEDGER__OPEN_ACCOUNT_REQUEST__INIT;
        m.account_id = (char *)id;
        m.currency = (uint32_t)ops_config_int(q->cfg, "currency");
        if (!amount_arg(q, "--load-min", ops_config_str(q->cfg, "load_min"), PROTO_AMOUNT_ZERO_OK,
                        &m.load_min) ||
            !amount_arg(q, "--load-max", ops_config_str(q->cfg, "load_max"), PROTO_AMOUNT_ZERO_OK,
                        &m.load_max) ||
            !amount_arg(q, "--daily-max", ops_config_str(q->cfg, "daily_max"), PROTO_AMOUNT_ZERO_OK,
                        &m.daily_max))
            return QCCTL_EXIT_USAGE;
        rc = call(q, shard, "open_account", &m.base, &r, false);
    } else if (strcmp(sub, "deposit") == 0) {
        int64_t amount = 0;
        if (!amount_arg(q, "account deposit: AMOUNT", arg, 0, &amount))
            return QCCTL_EXIT_USAGE;
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
        int64_t wallet_cap = 0;
        if (account == NULL) {
            fprintf(stderr, "qcctl: device enroll CERT_FILE --account ID\n");
            return QCCTL_EXIT_USAGE;
        }
        if (!amount_arg(q, "--wallet-cap", ops_config_str(q->cfg, "wallet_cap"),
                        PROTO_AMOUNT_ZERO_OK, &wallet_cap))
            return QCCTL_EXIT_USAGE;
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
        m.counter = (uint64_t)ops_config_int(q->cfg, "counter");
        m.wallet_cap = wallet_cap;
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

static int cmd_load_list(qcctl_t *q);

static int cmd_load(qcctl_t *q, const char *sub, const char *arg)
{
    uint8_t txn[QCCTL_TXN_SIZE];
    if (sub != NULL && strcmp(sub, "list") == 0)
        return cmd_load_list(q);
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

/* ------------------------------------------------------------ load list, account statement */

/* A time given to --since / --until: Unix ms, or UTC as 2026-12-08T01:00:00Z (or without
 * the seconds, or a date alone). 0 when not given. False, said on stderr, when it does not
 * parse. */
static bool time_option(const qcctl_t *q, const char *key, uint64_t *ms)
{
    const char *text = ops_config_str(q->cfg, key);
    *ms = 0;
    if (text == NULL)
        return true;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno == 0 && end != text && *end == '\0' && text[0] != '-') {
        *ms = v;
        return true;
    }
    static const char *const formats[] = {"%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%MZ", "%Y-%m-%d"};
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++) {
        struct tm tm = {0};
        const char *rest = strptime(text, formats[i], &tm);
        if (rest != NULL && *rest == '\0') {
            time_t t = timegm(&tm);
            if (t >= 0) {
                *ms = (uint64_t)t * 1000u;
                return true;
            }
        }
    }
    fprintf(stderr, "qcctl: --%s %s: not a time (2026-12-08T01:00:00Z, UTC, or Unix ms)\n", key,
            text);
    return false;
}

/* UTC text of a time in ms: 2026-12-08T01:02:03.456Z. */
static const char *utc_text(uint64_t ms, char out[32])
{
    time_t t = (time_t)(ms / 1000u);
    struct tm tm;
    if (gmtime_r(&t, &tm) == NULL) {
        snprintf(out, 32, "%" PRIu64, ms);
        return out;
    }
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03uZ", (unsigned)(ms % 1000u));
    return out;
}

static bool state_option(const qcctl_t *q, Quancun__LoadState *state)
{
    const char *text = ops_config_str(q->cfg, "state");
    *state = QUANCUN__LOAD_STATE__LOAD_NONE;
    if (text == NULL)
        return true;
    for (int s = QUANCUN__LOAD_STATE__LOAD_RESERVED; s <= QUANCUN__LOAD_STATE__LOAD_LATE_CONFIRMED;
         s++) {
        if (strcasecmp(text, proto_load_state_name((Quancun__LoadState)s)) == 0) {
            *state = (Quancun__LoadState)s;
            return true;
        }
    }
    fprintf(stderr, "qcctl: --state %s: not RESERVED, CONFIRMED, COMPENSATED or LATE_CONFIRMED\n",
            text);
    return false;
}

/* --after S:HEX32 into the shard and the txn id to start after. */
static bool cursor_option(const qcctl_t *q, uint32_t *shard, uint8_t txn[QCCTL_TXN_SIZE],
                          bool *has_txn)
{
    const char *text = ops_config_str(q->cfg, "after");
    *shard = 0;
    *has_txn = false;
    if (text == NULL)
        return true;
    char *end = NULL;
    unsigned long s = strtoul(text, &end, 10);
    if (end != text && *end == ':' && s < q->shard_count &&
        ops_unhex(end + 1, txn, QCCTL_TXN_SIZE) == 0) {
        *shard = (uint32_t)s;
        *has_txn = true;
        return true;
    }
    fprintf(stderr, "qcctl: --after %s: not a cursor of load list (SHARD:TXN_HEX)\n", text);
    return false;
}

typedef struct list_state {
    int64_t limit, printed;
    uint32_t shard; /* of the last load printed */
    uint8_t last[QCCTL_TXN_SIZE];
} list_state_t;

static void print_list_row(const qcctl_t *q, list_state_t *st, const Qcledger__Load *l)
{
    if (q->json) {
        printf("%s", st->printed > 0 ? "," : "");
        print_load_json(l);
        return;
    }
    char txn[2 * QCCTL_TXN_SIZE + 1] = "", amt[PROTO_AMOUNT_FORMAT_MAX], when[32];
    if (l->txn_id.len == QCCTL_TXN_SIZE)
        ops_hex(l->txn_id.data, QCCTL_TXN_SIZE, txn);
    printf("%-32s %-14s %14s %-24s %-20s %s\n", txn, proto_load_state_name(l->state),
           money(q, l->amount, amt), utc_text(l->created_ms, when), l->device_id, l->account_id);
}

/* Pages through shard s from after (NULL: its first load), printing until st->limit.
 * Returns 0 when the shard was listed to its end, 1 when the limit stopped it, or a QC_E*
 * code. */
static int list_shard(qcctl_t *q, uint32_t s, const uint8_t *after, Qcledger__ListLoadsRequest *m,
                      list_state_t *st)
{
    uint8_t cursor[QCCTL_TXN_SIZE];
    bool has_cursor = after != NULL;
    if (has_cursor)
        memcpy(cursor, after, QCCTL_TXN_SIZE);
    for (;;) {
        int64_t want = st->limit - st->printed;
        m->limit = (uint32_t)(want < QCCTL_PAGE_MAX ? want : QCCTL_PAGE_MAX);
        m->after_txn.data = has_cursor ? cursor : NULL;
        m->after_txn.len = has_cursor ? QCCTL_TXN_SIZE : 0;
        proto_rpc_reply_t *r = NULL;
        int rc = call(q, s, "list_loads", &m->base, &r, false);
        if (rc != 0)
            return rc;
        Qcledger__ListLoadsReply *page =
            qcledger__list_loads_reply__unpack(NULL, r->body_len, r->body);
        proto_rpc_reply_destroy(&r);
        if (page == NULL || page->n_loads > m->limit ||
            (page->next_after.len != 0 && page->next_after.len != QCCTL_TXN_SIZE)) {
            fprintf(stderr, "qcctl: shard %u: malformed list_loads reply\n", s);
            if (page != NULL)
                qcledger__list_loads_reply__free_unpacked(page, NULL);
            return QC_EDECODE;
        }
        for (size_t i = 0; i < page->n_loads; i++) {
            const Qcledger__Load *l = page->loads[i];
            print_list_row(q, st, l);
            st->printed++;
            st->shard = s;
            if (l->txn_id.len == QCCTL_TXN_SIZE)
                memcpy(st->last, l->txn_id.data, QCCTL_TXN_SIZE);
        }
        bool more = page->next_after.len == QCCTL_TXN_SIZE;
        if (more)
            memcpy(cursor, page->next_after.data, QCCTL_TXN_SIZE);
        has_cursor = more;
        qcledger__list_loads_reply__free_unpacked(page, NULL);
        if (st->printed == st->limit)
            return 1;
        if (!more)
            return 0;
    }
}

/* load list: every shard in order, filtered; each shard in creation time order when a device,
 * an account or a time bound is given (the ledger reads its index of loads), in txn id order
 * otherwise; at most --limit loads.
 * When the limit stopped the listing, the cursor to continue with (--after) is printed. */
static int cmd_load_list(qcctl_t *q)
{
    Qcledger__ListLoadsRequest m = QCLEDGER__LIST_LOADS_REQUEST__INIT;
    uint32_t from = 0;
    uint8_t after[QCCTL_TXN_SIZE];
    bool has_after = false;
    if (!state_option(q, &m.state) || !time_option(q, "since", &m.since_ms) ||
        !time_option(q, "until", &m.until_ms) || !cursor_option(q, &from, after, &has_after))
        return QCCTL_EXIT_USAGE;
    if (m.until_ms != 0 && m.until_ms <= m.since_ms) {
        fprintf(stderr, "qcctl: --until must be after --since\n");
        return QCCTL_EXIT_USAGE;
    }
    const char *device = ops_config_str(q->cfg, "device");
    const char *account = ops_config_str(q->cfg, "account");
    m.device_id = (char *)(device != NULL ? device : "");
    m.account_id = (char *)(account != NULL ? account : "");
    list_state_t st = {.limit = ops_config_int(q->cfg, "limit")};
    if (q->json)
        printf("{\"loads\":[");
    else
        printf("%-32s %-14s %14s %-24s %-20s %s\n", "TXN", "STATE",
               q->minor ? "AMOUNT (fen)" : "AMOUNT", "CREATED (UTC)", "DEVICE", "ACCOUNT");
    int rc = 0;
    uint32_t s = from;
    /* An account lives on one shard: only that one is asked. */
    uint32_t only = account != NULL ? shard_of(q, account) : UINT32_MAX;
    for (; s < q->shard_count && rc == 0; s++) {
        if (only != UINT32_MAX && s != only)
            continue;
        rc = list_shard(q, s, has_after && s == from ? after : NULL, &m, &st);
    }
    bool stopped = rc == 1;
    char next[QCCTL_CURSOR_MAX] = "";
    if (stopped) {
        char hex[2 * QCCTL_TXN_SIZE + 1];
        snprintf(next, sizeof next, "%u:%s", st.shard, ops_hex(st.last, QCCTL_TXN_SIZE, hex));
    }
    if (q->json) {
        printf("],\"count\":%" PRId64 ",\"next\":", st.printed);
        if (stopped)
            printf("\"%s\"", next);
        else
            printf("null");
        printf("}\n");
    } else {
        printf("(%" PRId64 " load%s)\n", st.printed, st.printed == 1 ? "" : "s");
        if (stopped)
            printf("more: qcctl load list ... --after %s\n", next);
    }
    if (rc < 0)
        return exit_for(rc);
    return QCCTL_EXIT_OK;
}

static const char *transfer_kind(Qcledger__TransferKind k)
{
    switch (k) {
    case QCLEDGER__TRANSFER_KIND__TRANSFER_DEPOSIT:
        return "DEPOSIT";
    case QCLEDGER__TRANSFER_KIND__TRANSFER_RESERVE:
        return "RESERVE";
    case QCLEDGER__TRANSFER_KIND__TRANSFER_CONFIRM:
        return "CONFIRM";
    case QCLEDGER__TRANSFER_KIND__TRANSFER_COMPENSATE:
        return "COMPENSATE";
    case QCLEDGER__TRANSFER_KIND__TRANSFER_LATE_CONFIRM:
        return "LATE_CONFIRM";
    default:
        return "NONE";
    }
}

static void print_statement_line(const qcctl_t *q, const Qcledger__StatementLine *ln, bool first)
{
    char txn[2 * QCCTL_TXN_SIZE + 1] = "", amt[PROTO_AMOUNT_FORMAT_MAX],
                                  bal[PROTO_AMOUNT_FORMAT_MAX], when[32];
    if (ln->txn_id.len == QCCTL_TXN_SIZE)
        ops_hex(ln->txn_id.data, QCCTL_TXN_SIZE, txn);
    if (q->json) {
        printf("%s{\"time_ms\":%" PRIu64 ",\"kind\":\"%s\",\"amount\":%" PRId64
               ",\"balance\":%" PRId64 ",\"txn_id\":\"%s\",\"counterparty\":",
               first ? "" : ",", ln->time_ms, transfer_kind(ln->kind), ln->amount, ln->balance,
               txn);
        json_str(stdout, ln->counterparty);
        printf("}");
        return;
    }
    char signed_amt[PROTO_AMOUNT_FORMAT_MAX + 1];
    snprintf(signed_amt, sizeof signed_amt, "%s%s", ln->amount > 0 ? "+" : "",
             money(q, ln->amount, amt));
    printf("%-24s %-13s %15s %14s %s %s\n", utc_text(ln->time_ms, when), transfer_kind(ln->kind),
           signed_amt, money(q, ln->balance, bal), txn, ln->counterparty);
}

/* account statement ID: the account's movements in time order with the running balance,
 * fetched a page at a time from its shard. */
static int cmd_statement(qcctl_t *q, const char *id)
{
    Qcledger__StatementRequest m = QCLEDGER__STATEMENT_REQUEST__INIT;
    if (!time_option(q, "since", &m.since_ms) || !time_option(q, "until", &m.until_ms))
        return QCCTL_EXIT_USAGE;
    if (m.until_ms != 0 && m.until_ms <= m.since_ms) {
        fprintf(stderr, "qcctl: --until must be after --since\n");
        return QCCTL_EXIT_USAGE;
    }
    m.account_id = (char *)id;
    int64_t limit = ops_config_int(q->cfg, "limit"), printed = 0;
    uint8_t cursor_txn[QCCTL_TXN_SIZE];
    int64_t opening = 0, closing = 0;
    bool more = true, header = false;
    while (more && printed < limit) {
        int64_t want = limit - printed;
        m.limit = (uint32_t)(want < QCCTL_PAGE_MAX ? want : QCCTL_PAGE_MAX);
        proto_rpc_reply_t *r = NULL;
        int rc = call(q, shard_of(q, id), "account_statement", &m.base, &r, false);
        if (rc != 0) {
            if (header && q->json)
                printf("]}\n");
            return exit_for(rc);
        }
        Qcledger__StatementReply *p = qcledger__statement_reply__unpack(NULL, r->body_len, r->body);
        proto_rpc_reply_destroy(&r);
        if (p == NULL || p->account == NULL || p->n_lines > m.limit) {
            fprintf(stderr, "qcctl: malformed account_statement reply\n");
            if (p != NULL)
                qcledger__statement_reply__free_unpacked(p, NULL);
            if (header && q->json)
                printf("]}\n");
            return QCCTL_EXIT_FAILED;
        }
        if (!header) {
            header = true;
            opening = closing = p->opening_balance;
            char bal[PROTO_AMOUNT_FORMAT_MAX], open_[PROTO_AMOUNT_FORMAT_MAX];
            if (q->json) {
                printf("{\"account\":");
                json_str(stdout, p->account->id);
                printf(",\"currency\":%u,\"balance\":%" PRId64 ",\"opening_balance\":%" PRId64
                       ",\"lines\":[",
                       p->account->currency, p->account->balance, opening);
            } else {
                printf("account %s (currency %u), balance now %s%s\nopening balance %s\n",
                       p->account->id, p->account->currency, money(q, p->account->balance, bal),
                       q->minor ? " fen" : "", money(q, opening, open_));
                printf("%-24s %-13s %15s %14s %-32s %s\n", "TIME (UTC)", "KIND",
                       q->minor ? "AMOUNT (fen)" : "AMOUNT", "BALANCE", "TXN", "COUNTERPARTY");
            }
        }
        for (size_t i = 0; i < p->n_lines; i++) {
            const Qcledger__StatementLine *ln = p->lines[i];
            print_statement_line(q, ln, printed == 0);
            printed++;
            closing = ln->balance;
            m.after_time_ms = ln->time_ms;
            m.after_kind = ln->kind;
            if (ln->txn_id.len == QCCTL_TXN_SIZE)
                memcpy(cursor_txn, ln->txn_id.data, QCCTL_TXN_SIZE);
            m.after_txn.data = cursor_txn;
            m.after_txn.len = QCCTL_TXN_SIZE;
        }
        more = p->more;
        qcledger__statement_reply__free_unpacked(p, NULL);
    }
    char bal[PROTO_AMOUNT_FORMAT_MAX];
    if (q->json)
        printf("],\"closing_balance\":%" PRId64 ",\"count\":%" PRId64 ",\"more\":%s}\n", closing,
               printed, more ? "true" : "false");
    else
        printf("closing balance %s (%" PRId64 " movement%s%s)\n", money(q, closing, bal), printed,
               printed == 1 ? "" : "s", more ? "; more after them: raise --limit" : "");
    return QCCTL_EXIT_OK;
}

/* ------------------------------------------------------------ replicas */

/* Splits a shard's replica list (',' between replicas) into trimmed endpoints; returns how
 * many, at most cap. text is modified. */
static int split_replicas(char *text, char *eps[], int cap)
{
    int n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(text, ",", &save); tok != NULL && n < cap;
         tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ' || *tok == '\t')
            tok++;
        size_t len = strlen(tok);
        while (len > 0 && (tok[len - 1] == ' ' || tok[len - 1] == '\t'))
            tok[--len] = '\0';
        if (len > 0)
            eps[n++] = tok;
    }
    return n;
}

/* A client of one replica alone (no failover, no following): NULL when the endpoint is
 * malformed. */
static proto_rpc_client_t *replica_client(const qcctl_t *q, const char *endpoint)
{
    proto_rpc_client_config_t cc = {.service = "ledger",
                                    .endpoints = endpoint,
                                    .server_public_z85 = q->ledger_key,
                                    .keys = q->keys};
    proto_rpc_client_t *cli = NULL;
    if (proto_rpc_client_new(q->zctx, &cc, &cli) != 0)
        fprintf(stderr, "qcctl: bad replica endpoint %s\n", endpoint);
    return cli;
}

/* ------------------------------------------------------------ check */

/* Prints one element of check's "shards" array: shard s as cli answers for it (endpoint set
 * when cli is one replica alone). Clears *all_ok on a problem, sets *unreachable on silence. */
static void check_one(qcctl_t *q, uint32_t s, proto_rpc_client_t *cli, const char *endpoint,
                      bool *all_ok, bool *unreachable)
{
    Qcledger__CheckRequest m = QCLEDGER__CHECK_REQUEST__INIT;
    m.deep = ops_config_bool(q->cfg, "deep");
    proto_rpc_reply_t *r = NULL;
    printf("{\"shard\":%u,", s);
    if (endpoint != NULL) {
        printf("\"endpoint\":");
        json_str(stdout, endpoint);
        printf(",");
    }
    char who[64];
    snprintf(who, sizeof who, "shard %u", s);
    int rc = cli != NULL ? call_on(cli, endpoint != NULL ? endpoint : who, "check", &m.base,
                                   q->timeout_ms, PROTO_RPC_IDEMPOTENT, &r, false)
                         : QC_ECONFIG;
    Qcledger__CheckReply *c =
        rc == 0 ? qcledger__check_reply__unpack(NULL, r->body_len, r->body) : NULL;
    proto_rpc_reply_destroy(&r);
    if (c == NULL) {
        *all_ok = false;
        *unreachable |= rc == QC_ETIMEOUT || rc == QC_EUNAVAIL;
        printf("\"ok\":false,\"error\":");
        json_str(stdout, rc != 0 ? qc_strerror(rc) : "malformed reply");
        printf("}");
        return;
    }
    if (c->shard != s || c->shard_count != q->shard_count) {
        c->ok = false;
        fprintf(stderr, "qcctl: endpoint %u serves shard %u of %u\n", s, c->shard, c->shard_count);
    }
    *all_ok &= c->ok;
    printf("\"ok\":%s,\"accounts\":%" PRIu64 ",\"devices\":%" PRIu64 ",\"loads\":%" PRIu64
           ",\"reserved\":%" PRIu64 ",\"transfers\":%" PRIu64 ",\"outbox_depth\":%" PRIu64,
           c->ok ? "true" : "false", c->accounts, c->devices, c->loads, c->reserved, c->transfers,
           c->outbox_depth);
    if (m.deep)
        printf(",\"checksums_checked\":%" PRIu64 ",\"checksums_failed\":%" PRIu64,
               c->checksums_checked, c->checksums_failed);
    printf(",\"currencies\":[");
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

/* The invariant check of every shard, as one JSON document (whatever --json says: it is
 * meant for scripts and for the operator's eyes alike). With --replicas, one element per
 * replica of each shard, each with its "endpoint": every replica checks its own LMDB. */
static int cmd_check(qcctl_t *q)
{
    bool all_ok = true, unreachable = false;
    bool each = ops_config_bool(q->cfg, "replicas");
    int printed = 0;
    printf("{\"shards\":[");
    for (uint32_t s = 0; s < q->shard_count; s++) {
        if (!each) {
            printf("%s", printed++ ? "," : "");
            check_one(q, s, q->shards[s], NULL, &all_ok, &unreachable);
            continue;
        }
        char list[QCCTL_ENDPOINTS_MAX];
        char *eps[PROTO_RPC_ENDPOINTS_MAX];
        snprintf(list, sizeof list, "%s", q->shard_endpoints[s]);
        int n = split_replicas(list, eps, PROTO_RPC_ENDPOINTS_MAX);
        for (int i = 0; i < n; i++) {
            proto_rpc_client_t *cli = replica_client(q, eps[i]);
            printf("%s", printed++ ? "," : "");
            check_one(q, s, cli, eps[i], &all_ok, &unreachable);
            proto_rpc_client_destroy(&cli);
        }
    }
    printf("],\"ok\":%s}\n", all_ok ? "true" : "false");
    if (unreachable)
        return QCCTL_EXIT_UNREACHABLE;
    return all_ok ? QCCTL_EXIT_OK : QCCTL_EXIT_FAILED;
}

/* ------------------------------------------------------------ shard */

#define QCCTL_SHARD_HELP                                                                           \
    "qcctl shard: the replicas of a ledger shard (a shard's replicas are its ',' list in\n"        \
    "ledger_endpoints).\n\n"                                                                       \
    "  qcctl shard status [--shard S] [--json]\n"                                                  \
    "      asks every replica of the shard (every shard without --shard) on its own and\n"         \
    "      prints per replica: id, role, term, commit index, applied index, lag (the leader's\n"   \
    "      commit index minus the replica's applied index; without a leader, the highest\n"        \
    "      commit index seen), endpoint. A replica that does not answer is shown unreachable.\n"   \
    "      Exit 0 when every replica answered and every shard has a leader, 1 when a shard\n"      \
    "      has none, 3 when a replica did not answer.\n\n"                                         \
    "  qcctl shard add-replica --shard S --id N --raft-address HOST:PORT \\\n"                     \
    "                          --endpoint tcp://HOST:PORT --raft-key Z85 [--json]\n"               \
    "      adds replica N to shard S, on the shard's leader: its replica link address, its\n"      \
    "      client endpoint and the public CURVE key of its raft_key (the 40 characters of\n"       \
    "      its .pub file). Start the new replica (join = true, empty data) first: it joins as\n"   \
    "      a standby, catches up from a snapshot and the log, and is promoted to voter; the\n"     \
    "      answer waits for that (at least 180 s, or --timeout-ms if longer). Then add its\n"      \
    "      endpoint to the clients' lists.\n\n"                                                    \
    "  qcctl shard remove-replica --shard S --id N [--json]\n"                                     \
    "      removes replica N from shard S's configuration, on the leader.\n\n"                     \
    "Both changes are committed by a majority of the shard before the answer; they go to the\n"    \
    "leader through the shard's whole list (a follower's QC_ENOTLEADER is followed).\n\n"          \
    "  qcctl shard backup --shard S --to DIR [--endpoint E] [--json]\n"                            \
    "      a hot, consistent copy of the shard's store into DIR (absent or empty) on the\n"        \
    "      ledger's host, by the replica E (default: the first of the shard's list); writes go\n"  \
    "      on while it runs. DIR gets data.mdb and MANIFEST (applied index, last outbox event,\n"  \
    "      time, SHA-256).\n\n"                                                                    \
    "  qcctl shard restore --from DIR --data-dir DIR [--replay-audit --audit-dir DIR]\n"           \
    "                      [--new-group --raft-dir DIR] [--force] [--json]\n"                      \
    "      offline, with the ledger stopped: puts the backup back and, with --replay-audit,\n"     \
    "      the audit log's events since it, which the ledger replays when it starts\n"             \
    "      (docs/OPERATIONS.md, \"Back up and restore a shard\").\n"

static const char *role_name(Qcledger__ReplicaRole r)
{
    switch (r) {
    case QCLEDGER__REPLICA_ROLE__ROLE_FOLLOWER:
        return "follower";
    case QCLEDGER__REPLICA_ROLE__ROLE_CANDIDATE:
        return "candidate";
    case QCLEDGER__REPLICA_ROLE__ROLE_LEADER:
        return "leader";
    case QCLEDGER__REPLICA_ROLE__ROLE_UNAVAILABLE:
        return "unavailable";
    default:
        return "none";
    }
}

typedef struct replica_view {
    const char *endpoint;
    int rc;                         /* 0 when the replica answered */
    Qcledger__ShardStatusReply *st; /* when rc == 0 */
} replica_view_t;

/* The configuration a replica knows (the leader's is the one that counts), as JSON. */
static void print_configuration_json(const Qcledger__ShardStatusReply *st)
{
    printf("[");
    for (size_t i = 0; i < st->n_replicas; i++) {
        const Qcledger__ReplicaInfo *ri = st->replicas[i];
        printf("%s{\"id\":%" PRIu64 ",\"raft_address\":", i ? "," : "", ri->id);
        json_str(stdout, ri->raft_address);
        printf(",\"endpoint\":");
        json_str(stdout, ri->endpoint);
        printf(",\"voter\":%s,\"match_index\":%" PRIu64 "}", ri->voter ? "true" : "false",
               ri->match_index);
    }
    printf("]");
}

static void print_configuration_text(const Qcledger__ShardStatusReply *st)
{
    printf("  configuration (as replica %" PRIu64 " knows it):\n", st->id);
    for (size_t i = 0; i < st->n_replicas; i++) {
        const Qcledger__ReplicaInfo *ri = st->replicas[i];
        printf("    %-4" PRIu64 " %-9s raft %-22s %s\n", ri->id, ri->voter ? "voter" : "non-voter",
               ri->raft_address, ri->endpoint);
    }
}

/* The replica's fields of a status reply, as the inside of a JSON object. */
static void print_status_fields_json(const Qcledger__ShardStatusReply *st, uint64_t lag)
{
    printf("\"id\":%" PRIu64 ",\"role\":\"%s\",\"term\":%" PRIu64 ",\"commit_index\":%" PRIu64
           ",\"applied_index\":%" PRIu64 ",\"last_index\":%" PRIu64 ",\"lag\":%" PRIu64
           ",\"diverged\":%s,\"digest_checks\":%" PRIu64 ",\"leader_id\":%" PRIu64
           ",\"leader_endpoint\":",
           st->id, role_name(st->role), st->term, st->commit_index, st->applied_index,
           st->last_index, lag, st->diverged ? "true" : "false", st->digest_checks, st->leader_id);
    json_str(stdout, st->leader_endpoint);
}

/* Asks one replica for its status; fills v (v->st owned by the caller on success). */
static void replica_status(qcctl_t *q, uint32_t shard, replica_view_t *v)
{
    v->st = NULL;
    proto_rpc_client_t *cli = replica_client(q, v->endpoint);
    if (cli == NULL) {
        v->rc = QC_ECONFIG;
        return;
    }
    Qcledger__ShardStatusRequest m = QCLEDGER__SHARD_STATUS_REQUEST__INIT;
    proto_rpc_reply_t *r = NULL;
    int timeout =
        q->timeout_ms < QCCTL_REPLICA_TIMEOUT_MS ? q->timeout_ms : QCCTL_REPLICA_TIMEOUT_MS;
    v->rc = call_on(cli, v->endpoint, "shard_status", &m.base, timeout, PROTO_RPC_IDEMPOTENT, &r,
                    false);
    proto_rpc_client_destroy(&cli);
    if (v->rc != 0)
        return;
    v->st = qcledger__shard_status_reply__unpack(NULL, r->body_len, r->body);
    proto_rpc_reply_destroy(&r);
    if (v->st == NULL) {
        fprintf(stderr, "qcctl: %s: malformed shard_status reply\n", v->endpoint);
        v->rc = QC_EDECODE;
    } else if (v->st->shard != shard) {
        fprintf(stderr, "qcctl: %s serves shard %u, listed under shard %u\n", v->endpoint,
                v->st->shard, shard);
        v->rc = QC_ECONFIG;
        qcledger__shard_status_reply__free_unpacked(v->st, NULL);
        v->st = NULL;
    }
}

/* Status of every replica of shard s, printed; returns its exit status. */
static int shard_status_one(qcctl_t *q, uint32_t s, bool first)
{
    char list[QCCTL_ENDPOINTS_MAX];
    char *eps[PROTO_RPC_ENDPOINTS_MAX];
    snprintf(list, sizeof list, "%s", q->shard_endpoints[s]);
    int n = split_replicas(list, eps, PROTO_RPC_ENDPOINTS_MAX);
    replica_view_t v[PROTO_RPC_ENDPOINTS_MAX];
    const Qcledger__ShardStatusReply *leader = NULL;
    uint64_t top_commit = 0;
    bool unreachable = false;
    for (int i = 0; i < n; i++) {
        v[i].endpoint = eps[i];
        replica_status(q, s, &v[i]);
        unreachable |= v[i].rc != 0;
        if (v[i].st == NULL)
            continue;
        if (v[i].st->commit_index > top_commit)
            top_commit = v[i].st->commit_index;
        /* Two replicas claiming leadership: the higher term is the real one. */
        if (v[i].st->role == QCLEDGER__REPLICA_ROLE__ROLE_LEADER &&
            (leader == NULL || v[i].st->term > leader->term))
            leader = v[i].st;
    }
    uint64_t ref = leader != NULL ? leader->commit_index : top_commit;
    if (q->json) {
        printf("%s{\"shard\":%u,\"leader_id\":", first ? "" : ",", s);
        if (leader != NULL)
            printf("%" PRIu64, leader->id);
        else
            printf("null");
        printf(",\"replicas\":[");
    } else {
        printf("%sshard %u: ", first ? "" : "\n", s);
        if (leader != NULL)
            printf("leader %" PRIu64 ", term %" PRIu64 "\n", leader->id, leader->term);
        else
            printf("NO LEADER reachable\n");
        printf("  %-4s %-11s %-6s %-10s %-10s %-8s %s\n", "ID", "ROLE", "TERM", "COMMIT", "APPLIED",
               "LAG", "ENDPOINT");
    }
    for (int i = 0; i < n; i++) {
        const Qcledger__ShardStatusReply *st = v[i].st;
        uint64_t lag = st != NULL && ref > st->applied_index ? ref - st->applied_index : 0;
        if (q->json) {
            printf("%s{\"endpoint\":", i ? "," : "");
            json_str(stdout, v[i].endpoint);
            if (st == NULL) {
                printf(",\"reachable\":false,\"error\":");
                json_str(stdout, qc_strerror(v[i].rc));
                printf("}");
                continue;
            }
            printf(",\"reachable\":true,");
            print_status_fields_json(st, lag);
            printf("}");
        } else if (st == NULL) {
            printf("  %-4s %-11s %-6s %-10s %-10s %-8s %s (%s)\n", "-", "unreachable", "-", "-",
                   "-", "-", v[i].endpoint, qc_strerror(v[i].rc));
        } else {
            printf("  %-4" PRIu64 " %-11s %-6" PRIu64 " %-10" PRIu64 " %-10" PRIu64 " %-8" PRIu64
                   " %s%s\n",
                   st->id, role_name(st->role), st->term, st->commit_index, st->applied_index, lag,
                   v[i].endpoint,
                   st->diverged ? "  DIVERGED: its state differs from the leader's, rebuild it"
                                : "");
        }
    }
    if (q->json) {
        printf("],\"configuration\":");
        if (leader != NULL)
            print_configuration_json(leader);
        else
            printf("null");
        printf("}");
    } else if (leader != NULL) {
        print_configuration_text(leader);
    }
    for (int i = 0; i < n; i++)
        if (v[i].st != NULL)
            qcledger__shard_status_reply__free_unpacked(v[i].st, NULL);
    if (unreachable)
        return QCCTL_EXIT_UNREACHABLE;
    return leader != NULL ? QCCTL_EXIT_OK : QCCTL_EXIT_FAILED;
}

/* --shard, or -1 when not given; false (said on stderr) when the configuration has no such
 * shard. */
static bool shard_option(const qcctl_t *q, int64_t *shard)
{
    *shard = ops_config_int(q->cfg, "shard");
    if (*shard < (int64_t)q->shard_count)
        return true;
    fprintf(stderr, "qcctl: --shard %" PRId64 ": ledger_endpoints lists %u shard(s)\n", *shard,
            q->shard_count);
    return false;
}

static int cmd_shard_status(qcctl_t *q)
{
    int64_t only = -1;
    if (!shard_option(q, &only))
        return QCCTL_EXIT_USAGE;
    int worst = QCCTL_EXIT_OK;
    bool first = true;
    if (q->json)
        printf("{\"shards\":[");
    for (uint32_t s = 0; s < q->shard_count; s++) {
        if (only >= 0 && (uint32_t)only != s)
            continue;
        int rc = shard_status_one(q, s, first);
        first = false;
        /* Unreachable (3) outranks no leader (1): it is the likelier cause. */
        if (rc > worst)
            worst = rc;
    }
    if (q->json)
        printf("],\"ok\":%s}\n", worst == QCCTL_EXIT_OK ? "true" : "false");
    return worst;
}

/* add-replica / remove-replica on the leader of --shard, through the following client. */
static int cmd_shard_change(qcctl_t *q, bool add)
{
    const char *verb = add ? "add-replica" : "remove-replica";
    int64_t shard = -1;
    int64_t id = ops_config_int(q->cfg, "id");
    if (!shard_option(q, &shard))
        return QCCTL_EXIT_USAGE;
    if (shard < 0 || id < 1) {
        fprintf(stderr, "qcctl: shard %s needs --shard S and --id N (N >= 1)\n", verb);
        return QCCTL_EXIT_USAGE;
    }
    Qcledger__AddReplicaRequest a = QCLEDGER__ADD_REPLICA_REQUEST__INIT;
    Qcledger__RemoveReplicaRequest rm = QCLEDGER__REMOVE_REPLICA_REQUEST__INIT;
    const ProtobufCMessage *msg = &rm.base;
    rm.id = (uint64_t)id;
    if (add) {
        const char *addr = ops_config_str(q->cfg, "raft_address");
        const char *ep = ops_config_str(q->cfg, "endpoint");
        const char *key = ops_config_str(q->cfg, "raft_key");
        if (addr == NULL || ep == NULL || key == NULL) {
            fprintf(stderr, "qcctl: shard add-replica needs --raft-address HOST:PORT, --endpoint "
                            "tcp://HOST:PORT and --raft-key Z85\n");
            return QCCTL_EXIT_USAGE;
        }
        const char *colon = strrchr(addr, ':');
        if (colon == NULL || colon == addr || colon[1] == '\0' || strchr(addr, '/') != NULL) {
            fprintf(stderr, "qcctl: --raft-address %s is not HOST:PORT\n", addr);
            return QCCTL_EXIT_USAGE;
        }
        uint8_t raw[32];
        if (strlen(key) != PROTO_CURVE_KEY_Z85_LEN || zmq_z85_decode(raw, key) == NULL) {
            fprintf(stderr, "qcctl: --raft-key must be a Z85 CURVE public key (%d characters)\n",
                    PROTO_CURVE_KEY_Z85_LEN);
            return QCCTL_EXIT_USAGE;
        }
        a.id = (uint64_t)id;
        a.raft_address = (char *)addr;
        a.endpoint = (char *)ep;
        a.raft_public_key = (char *)key;
        msg = &a.base;
    }
    char who[32];
    snprintf(who, sizeof who, "shard %" PRId64, shard);
    proto_rpc_reply_t *r = NULL;
    /* Not idempotent: a resend after a lost answer would be refused as already done. The
     * answer to an add comes once the new replica caught up and votes: it waits longer. */
    int timeout =
        add && q->timeout_ms < QCCTL_CHANGE_TIMEOUT_MS ? QCCTL_CHANGE_TIMEOUT_MS : q->timeout_ms;
    int rc = call_on(q->shards[shard], who, add ? "add_replica" : "remove_replica", msg, timeout, 0,
                     &r, false);
    if (rc == QC_ETIMEOUT && add)
        fprintf(stderr, "qcctl: the change may still go on at the leader: `qcctl shard status "
                        "--json` shows the replica in the configuration, \"voter\":false until "
                        "it caught up; the same add-replica again waits for it\n");
    if (rc != 0)
        return exit_for(rc);
    Qcledger__ReplicaChangeReply *c =
        qcledger__replica_change_reply__unpack(NULL, r->body_len, r->body);
    proto_rpc_reply_destroy(&r);
    if (c == NULL) {
        fprintf(stderr, "qcctl: malformed %s reply\n", verb);
        return QCCTL_EXIT_FAILED;
    }
    if (q->json) {
        printf("{\"shard\":%" PRId64 ",\"%s\":%" PRId64 ",\"status\":", shard,
               add ? "added" : "removed", id);
        if (c->status != NULL) {
            printf("{");
            print_status_fields_json(c->status, 0);
            printf(",\"configuration\":");
            print_configuration_json(c->status);
            printf("}");
        } else {
            printf("null");
        }
        printf("}\n");
    } else {
        printf("shard %" PRId64 ": replica %" PRId64 " %s\n", shard, id, add ? "added" : "removed");
        if (c->status != NULL)
            print_configuration_text(c->status);
    }
    qcledger__replica_change_reply__free_unpacked(c, NULL);
    return QCCTL_EXIT_OK;
}

/* backup: starts a hot copy on one replica of --shard and asks until it is done. */
static int cmd_shard_backup(qcctl_t *q)
{
    int64_t shard = -1;
    const char *to = ops_config_str(q->cfg, "to");
    if (!shard_option(q, &shard))
        return QCCTL_EXIT_USAGE;
    if (shard < 0 || to == NULL) {
        fprintf(stderr, "qcctl: shard backup needs --shard S and --to DIR\n");
        return QCCTL_EXIT_USAGE;
    }
    /* The ledger creates DIR on its host: a relative path is taken from here. */
    char dir[QCCTL_ENDPOINTS_MAX], cwd[QCCTL_ENDPOINTS_MAX / 2];
    if (to[0] == '/')
        snprintf(dir, sizeof dir, "%s", to);
    else if (getcwd(cwd, sizeof cwd) != NULL)
        snprintf(dir, sizeof dir, "%s/%s", cwd, to);
    else
        return QCCTL_EXIT_USAGE;
    /* Every poll must reach the replica that copies: one client on one endpoint. */
    char list[QCCTL_ENDPOINTS_MAX];
    char *eps[PROTO_RPC_ENDPOINTS_MAX];
    snprintf(list, sizeof list, "%s", q->shard_endpoints[shard]);
    const char *ep = ops_config_str(q->cfg, "endpoint");
    if (ep == NULL && split_replicas(list, eps, PROTO_RPC_ENDPOINTS_MAX) > 0)
        ep = eps[0];
    proto_rpc_client_t *cli = ep != NULL ? replica_client(q, ep) : NULL;
    if (cli == NULL)
        return QCCTL_EXIT_USAGE;
    Qcledger__BackupRequest m = QCLEDGER__BACKUP_REQUEST__INIT;
    m.dir = dir;
    Qcledger__BackupReply *b = NULL;
    int rc = 0;
    for (int waited = 0; rc == 0 && waited <= QCCTL_BACKUP_WAIT_MS;
         waited += QCCTL_BACKUP_POLL_MS) {
        proto_rpc_reply_t *r = NULL;
        rc = call_on(cli, ep, "backup", &m.base, q->timeout_ms, PROTO_RPC_IDEMPOTENT, &r, false);
        if (rc != 0)
            break;
        b = qcledger__backup_reply__unpack(NULL, r->body_len, r->body);
        proto_rpc_reply_destroy(&r);
        if (b == NULL) {
            fprintf(stderr, "qcctl: malformed backup reply\n");
            rc = QC_EDECODE;
        } else if (b->done) {
            break;
        } else {
            qcledger__backup_reply__free_unpacked(b, NULL);
            b = NULL;
            struct timespec ts = {.tv_nsec = QCCTL_BACKUP_POLL_MS * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    proto_rpc_client_destroy(&cli);
    if (rc == 0 && b == NULL) {
        fprintf(stderr, "qcctl: shard backup: not done after %d s\n", QCCTL_BACKUP_WAIT_MS / 1000);
        rc = QC_ETIMEOUT;
    }
    if (rc != 0)
        return exit_for(rc);
    if (q->json)
        printf("{\"shard\":%u,\"dir\":\"%s\",\"applied_index\":%" PRIu64 ",\"outbox_seq\":%" PRIu64
               ",\"time_ms\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"copy_ms\":%" PRIu64
               ",\"sha256\":\"%s\"}\n",
               b->shard, b->dir, b->applied_index, b->outbox_seq, b->time_ms, b->bytes, b->copy_ms,
               b->sha256);
    else
        printf("shard %u copied to %s: applied index %" PRIu64 ", outbox event %" PRIu64
               ", %" PRIu64 " bytes in %" PRIu64 " ms\n",
               b->shard, b->dir, b->applied_index, b->outbox_seq, b->bytes, b->copy_ms);
    qcledger__backup_reply__free_unpacked(b, NULL);
    return QCCTL_EXIT_OK;
}

static int cmd_shard(qcctl_t *q, const char *sub)
{
    if (sub != NULL && strcmp(sub, "status") == 0)
        return cmd_shard_status(q);
    if (sub != NULL && strcmp(sub, "add-replica") == 0)
        return cmd_shard_change(q, true);
    if (sub != NULL && strcmp(sub, "remove-replica") == 0)
        return cmd_shard_change(q, false);
    if (sub != NULL && strcmp(sub, "backup") == 0)
        return cmd_shard_backup(q);
    fprintf(stderr, "%s", QCCTL_SHARD_HELP);
    return QCCTL_EXIT_USAGE;
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
        q->shard_endpoints[q->shard_count] = strdup(tok);
        if (q->shard_endpoints[q->shard_count++] == NULL)
            return -1;
    }
    if (q->shard_count == 0) {
        fprintf(stderr, "qcctl: no ledger endpoints\n");
        return -1;
    }
    q->keys = keys;
    q->ledger_key = pub;
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
    else if (strcmp(verb, "shard") == 0)
        return cmd_shard(q, a1);
    if (rc == QCCTL_EXIT_USAGE)
        fprintf(stderr, "qcctl: usage: qcctl %s\n", QCCTL_USAGE);
    return rc;
}

int main(int argc, char **argv)
{
    /* The audit verbs work offline on a data directory and have flags of their own. */
    if (argc >= 2 && strcmp(argv[1], "audit") == 0)
        return qcctl_audit_main(argc - 1, argv + 1);
    /* `qcctl shard restore` works offline, on a data directory, with flags of its own. */
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "shard") == 0 && strcmp(argv[i + 1], "restore") == 0)
            return qcctl_restore_main(argc, argv);
    /* `qcctl shard ... --help`: the shard verbs' own page, not the whole option list. */
    bool shard = false, help = false;
    for (int i = 1; i < argc; i++) {
        shard |= strcmp(argv[i], "shard") == 0;
        help |= strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0;
    }
    if (shard && help) {
        printf("%s", QCCTL_SHARD_HELP);
        return QCCTL_EXIT_OK;
    }
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
    qcctl_t q = {
        .cfg = cfg, .json = ops_config_bool(cfg, "json"), .minor = ops_config_bool(cfg, "minor")};
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
    for (uint32_t s = 0; s < q.shard_count; s++) {
        proto_rpc_client_destroy(&q.shards[s]);
        free(q.shard_endpoints[s]);
    }
    if (q.zctx != NULL)
        zmq_ctx_term(q.zctx);
    ops_config_destroy(&cfg);
    return status;
}
