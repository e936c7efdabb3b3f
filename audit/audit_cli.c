/* audit_cli.c - verify, show and export an audit log copy, for operators and disputes. */
#include "audit_cli.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "audit_chain.h"
#include "audit_store.h"
#include "audit_verify.h"
#include "ledger.pb-c.h"
#include "ops_log.h"
#include "proto_cert.h"
#include "ops_hex.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "qc_error.h"

#define CLI_EXIT_OK 0
#define CLI_EXIT_BAD 1
#define CLI_EXIT_USAGE 2
#define CLI_TXN_SEQS_MAX 4096 /* entries shown for one load */
#define CLI_HEX_MAX (2 * AUDIT_PAYLOAD_MAX + 1)
#define CLI_MS_PER_S 1000

typedef struct cli_opts {
    const char *dir;
    const char *cert;
    const char *allow_cert;
    const char *outcome_cert;
    const char *ca;
    uint64_t from;
    const char *arg; /* the one positional argument (show's txn) */
} cli_opts_t;

bool audit_cli_is_verb(const char *name)
{
    return name != NULL && (strcmp(name, "verify") == 0 || strcmp(name, "show") == 0 ||
                            strcmp(name, "export") == 0);
}

static void cli_usage(FILE *f, const char *prog)
{
    fprintf(f,
            "usage: %s verify --dir DATA --cert PEM\n"
            "       %s show --dir DATA [--allow-cert PEM] [--outcome-cert PEM] [--ca PEM] TXN_HEX\n"
            "       %s export --dir DATA [--from SEQ]\n"
            "DATA is a copy of the audit service's data_dir (opened read-only).\n",
            prog, prog, prog);
}

/* Parses argv[1..argc) into o. Returns 0, 1 for --help, or -1 on bad usage. */
static int cli_parse(int argc, char **argv, cli_opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->from = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
            return 1;
        const char **slot = NULL;
        if (strcmp(a, "--dir") == 0)
            slot = &o->dir;
        else if (strcmp(a, "--cert") == 0)
            slot = &o->cert;
        else if (strcmp(a, "--allow-cert") == 0 || strcmp(a, "--allow_cert") == 0)
            slot = &o->allow_cert;
        else if (strcmp(a, "--outcome-cert") == 0 || strcmp(a, "--outcome_cert") == 0)
            slot = &o->outcome_cert;
        else if (strcmp(a, "--ca") == 0)
            slot = &o->ca;
        if (slot != NULL) {
            if (i + 1 >= argc)
                return -1;
            *slot = argv[++i];
        } else if (strcmp(a, "--from") == 0) {
            char *end = NULL;
            if (i + 1 >= argc)
                return -1;
            o->from = strtoull(argv[++i], &end, 10);
            if (end == argv[i] || *end != '\0')
                return -1;
        } else if (a[0] == '-' || o->arg != NULL) {
            return -1;
        } else {
            o->arg = a;
        }
    }
    return o->dir != NULL ? 0 : -1;
}

static int cli_load_key(const char *prog, const char *what, const char *path, EVP_PKEY **out)
{
    *out = NULL;
    if (path == NULL)
        return 0;
    int rc = proto_key_load_pem(path, out);
    if (rc != 0)
        fprintf(stderr, "%s: cannot load %s %s: %s\n", prog, what, path, qc_strerror(rc));
    return rc;
}

/* ------------------------------------------------------------------ verify */

static int cli_verify(const char *prog, const cli_opts_t *o)
{
    if (o->cert == NULL || o->arg != NULL) {
        cli_usage(stderr, prog);
        return CLI_EXIT_USAGE;
    }
    EVP_PKEY *key = NULL;
    if (cli_load_key(prog, "checkpoint certificate", o->cert, &key) != 0)
        return CLI_EXIT_USAGE;
    audit_verify_report_t r;
    int rc = audit_verify_dir(o->dir, key, &r);
    EVP_PKEY_free(key);
    if (rc != 0 && r.break_seq == 0) {
        fprintf(stderr, "%s: %s\n", prog, r.why);
        return CLI_EXIT_USAGE;
    }
    if (rc != 0) {
        printf("BROKEN at seq %" PRIu64 " (%s): %s\n", r.break_seq, qc_errname(r.break_code),
               r.why);
        printf("checked before the break: %" PRIu64 " entries, %" PRIu64 " checkpoints\n",
               r.entries, r.checkpoints);
        return CLI_EXIT_BAD;
    }
    printf("ok: %" PRIu64 " entries chain from seq 1 to %" PRIu64 ", %" PRIu64
           " checkpoints verify, signed up to seq %" PRIu64 " (%" PRIu64
           " entries after the last checkpoint)\n",
           r.entries, r.last_seq, r.checkpoints, r.signed_seq, r.last_seq - r.signed_seq);
    return CLI_EXIT_OK;
}

/* ------------------------------------------------------------------ export */

static void json_str(FILE *f, const char *s, size_t len)
{
    fputc('"', f);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20 || c > 0x7e)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void hex_out(FILE *f, const uint8_t *b, size_t len)
{
    for (size_t i = 0; i < len; i++)
        fprintf(f, "%02x", b[i]);
}

typedef struct export_walk {
    int bad;
    uint8_t *b64;
} export_walk_t;

static int export_visit(void *arg, uint64_t key_seq, const uint8_t *rec, size_t len)
{
    export_walk_t *w = arg;
    audit_entry_t e;
    int rc = audit_chain_parse(rec, len, &e);
    if (rc != 0) {
        printf("{\"seq\":%" PRIu64 ",\"error\":\"%s\"}\n", key_seq, qc_errname(rc));
        w->bad = 1;
        return 0;
    }
    printf("{\"seq\":%" PRIu64 ",\"time_ms\":%" PRIu64 ",\"source\":", e.seq, e.time_ms);
    json_str(stdout, e.source, e.source_len);
    printf(",\"source_seq\":%" PRIu64 ",\"type\":", e.source_seq);
    json_str(stdout, e.type, e.type_len);
    printf(",\"txn_id\":\"");
    hex_out(stdout, e.txn_id, e.txn_id_len);
    int n = EVP_EncodeBlock(w->b64, e.payload, (int)e.payload_len);
    printf("\",\"payload\":\"%.*s\",\"prev_hash\":\"", n < 0 ? 0 : n, (const char *)w->b64);
    hex_out(stdout, e.prev_hash, AUDIT_HASH_SIZE);
    printf("\",\"hash\":\"");
    hex_out(stdout, e.hash, AUDIT_HASH_SIZE);
    printf("\"}\n");
    return 0;
}

static int cli_export(const char *prog, const cli_opts_t *o)
{
    if (o->arg != NULL) {
        cli_usage(stderr, prog);
        return CLI_EXIT_USAGE;
    }
    audit_store_t *store = NULL;
    int rc = audit_store_open(o->dir, AUDIT_STORE_RDONLY, 0, &store);
    if (rc != 0) {
        fprintf(stderr, "%s: cannot open %s: %s\n", prog, o->dir, qc_strerror(rc));
        return CLI_EXIT_USAGE;
    }
    /* Base64 of the largest payload: 4 bytes per 3, plus the NUL. */
    export_walk_t w = {.b64 = malloc(4 * ((AUDIT_PAYLOAD_MAX + 2) / 3) + 1)};
    if (w.b64 == NULL)
        rc = QC_ENOMEM;
    else
        rc = audit_store_scan(store, o->from, export_visit, &w);
    free(w.b64);
    audit_store_destroy(&store);
    if (fflush(stdout) != 0)
        rc = QC_EIO;
    if (rc != 0) {
        fprintf(stderr, "%s: export failed: %s\n", prog, qc_strerror(rc));
        return CLI_EXIT_USAGE;
    }
    return w.bad ? CLI_EXIT_BAD : CLI_EXIT_OK;
}

/* ------------------------------------------------------------------ show */

typedef struct show_ctx {
    const char *prog;
    EVP_PKEY *allow_key;
    EVP_PKEY *outcome_key;
    proto_trust_t *trust;
    uint8_t *req; /* the txn's signed request, from an earlier entry */
    size_t req_len;
    uint8_t *allow; /* the txn's signed allow, from an earlier entry */
    size_t allow_len;
    int bad; /* something shown did not verify */
} show_ctx_t;

static void show_result(show_ctx_t *c, const char *what, int rc, const char *detail)
{
    if (rc == 0) {
        printf("    %-8s signature ok%s%s\n", what, detail[0] ? ", " : "", detail);
    } else {
        c->bad = 1;
        printf("    %-8s NOT VERIFIED: %s%s%s\n", what, qc_strerror(rc), detail[0] ? ", " : "",
               detail);
    }
}

/* The public key of the device certificate carried by the request envelope, checked
 * against the CA at time t when one is given. Sets detail. */
static int show_device_key(show_ctx_t *c, const proto_envelope_t *req, time_t t, EVP_PKEY **pub,
                           char *detail, size_t cap)
{
    size_t der_len = 0;
    const uint8_t *der = proto_envelope_cert(req, &der_len);
    if (der == NULL) {
        snprintf(detail, cap, "no device certificate in the request");
        return QC_EMISSING;
    }
    if (c->trust != NULL) {
        char devid[PROTO_DEVICE_ID_MAX + 1];
        int rc = proto_cert_verify(c->trust, der, der_len, t, devid, pub);
        snprintf(detail, cap,
                 rc == 0 ? "device %s, certificate chains to the CA"
                         : "device certificate refused%s",
                 rc == 0 ? devid : "");
        return rc;
    }
    const uint8_t *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)der_len);
    if (x == NULL || p != der + der_len) {
        X509_free(x);
        snprintf(detail, cap, "device certificate does not parse");
        return QC_ECERT;
    }
    *pub = X509_get_pubkey(x);
    X509_free(x);
    snprintf(detail, cap, "device certificate not checked (no --ca)");
    return *pub != NULL ? 0 : QC_ECERT;
}

/* Checks that the signed body of env (a LoadAllow or ExecutionReport) names digest_of's body. */
static int show_digest_link(const proto_envelope_t *env, proto_type_t type,
                            const proto_envelope_t *prev)
{
    size_t blen = 0, plen = 0;
    const uint8_t *body = proto_envelope_body(env, &blen);
    const uint8_t *pbody = proto_envelope_body(prev, &plen);
    uint8_t d[PROTO_DIGEST_SIZE];
    int rc = proto_sha256(pbody, plen, d);
    if (rc != 0)
        return rc;
    const ProtobufCBinaryData *named = NULL;
    Quancun__LoadAllow *a = NULL;
    Quancun__ExecutionReport *r = NULL;
    if (type == PROTO_TYPE_LOAD_ALLOW && (rc = proto_decode_load_allow(body, blen, &a)) == 0)
        named = &a->request_digest;
    if (type == PROTO_TYPE_EXECUTION_REPORT &&
        (rc = proto_decode_execution_report(body, blen, &r)) == 0)
        named = &r->allow_digest;
    if (rc == 0 &&
        (named == NULL || named->len != sizeof d || CRYPTO_memcmp(named->data, d, sizeof d) != 0))
        rc = QC_EMISMATCH;
    if (a != NULL)
        quancun__load_allow__free_unpacked(a, NULL);
    if (r != NULL)
        quancun__execution_report__free_unpacked(r, NULL);
    return rc;
}

/* Keeps a copy of bytes in *keep (the txn's latest request or allow). */
static void show_keep(uint8_t **keep, size_t *keep_len, const ProtobufCBinaryData *b)
{
    uint8_t *copy = malloc(b->len);
    if (copy == NULL)
        return; /* later entries then say the artefact is missing */
    memcpy(copy, b->data, b->len);
    free(*keep);
    *keep = copy;
    *keep_len = b->len;
}

/* Verifies the signed artefacts of a Load record. The ledger writes each artefact once:
 * load.reserved carries the request, load.allowed the allow the bank signed after the debit,
 * a settlement only the report, so the request and allow seen earlier in this txn's history
 * are kept in c to check the report. */
static void show_load(show_ctx_t *c, const Qcledger__Load *l, time_t t)
{
    printf("    load     state %s, amount %" PRId64 " (currency %u), device %s, account %s, "
           "counter %" PRIu64 "%s%s\n",
           proto_load_state_name(l->state), l->amount, l->currency, l->device_id, l->account_id,
           l->counter, l->reason[0] ? ", reason: " : "", l->reason);
    if (l->request.len > 0)
        show_keep(&c->req, &c->req_len, &l->request);
    if (l->allow.len > 0)
        show_keep(&c->allow, &c->allow_len, &l->allow);
    proto_envelope_t *req = NULL, *allow = NULL, *rep = NULL;
    EVP_PKEY *dev = NULL;
    char detail[160] = "";
    int rc = c->req != NULL ? proto_envelope_open(c->req, c->req_len, &req) : QC_EMISSING;
    if (rc == 0 && (rc = show_device_key(c, req, t, &dev, detail, sizeof detail)) == 0)
        rc = proto_envelope_verify(req, PROTO_TYPE_LOAD_REQUEST, dev);
    if (l->request.len > 0 || rc != 0)
        show_result(c, "request", rc, detail);
    int arc = c->allow != NULL ? proto_envelope_open(c->allow, c->allow_len, &allow) : QC_EMISSING;
    if (l->allow.len > 0) {
        if (arc == 0 && c->allow_key == NULL) {
            printf("    allow    signature not checked (no --allow-cert)\n");
        } else {
            if (arc == 0)
                arc = proto_envelope_verify(allow, PROTO_TYPE_LOAD_ALLOW, c->allow_key);
            if (arc == 0 && req != NULL)
                arc = show_digest_link(allow, PROTO_TYPE_LOAD_ALLOW, req);
            show_result(c, "allow", arc, arc == 0 ? "names this request" : "");
        }
    }
    if (l->report.len > 0) {
        rc = proto_envelope_open(l->report.data, l->report.len, &rep);
        if (rc == 0)
            rc = dev != NULL ? proto_envelope_verify(rep, PROTO_TYPE_EXECUTION_REPORT, dev)
                             : QC_EKEYID;
        if (rc == 0)
            rc = allow != NULL ? show_digest_link(rep, PROTO_TYPE_EXECUTION_REPORT, allow)
                               : QC_EMISSING;
        show_result(c, "report", rc, rc == 0 ? "by the device, names this allow" : "");
    }
    EVP_PKEY_free(dev);
    proto_envelope_destroy(&req);
    proto_envelope_destroy(&allow);
    proto_envelope_destroy(&rep);
}

/* A payload that is a bare signed envelope (security events, outcomes): checked with the
 * key whose id it names, when that key is known. */
static void show_envelope(show_ctx_t *c, const uint8_t *p, size_t len)
{
    proto_envelope_t *env = NULL;
    if (proto_envelope_open(p, len, &env) != 0) {
        printf("    payload  %zu bytes\n", len);
        return;
    }
    struct {
        EVP_PKEY *key;
        proto_type_t type;
        const char *name;
    } keys[] = {{c->allow_key, PROTO_TYPE_LOAD_ALLOW, "allow"},
                {c->outcome_key, PROTO_TYPE_LOAD_OUTCOME, "outcome"}};
    uint8_t id[PROTO_KEY_ID_SIZE];
    bool shown = false;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0] && !shown; i++) {
        if (keys[i].key == NULL || proto_key_id(keys[i].key, id) != 0 ||
            CRYPTO_memcmp(id, proto_envelope_key_id(env), sizeof id) != 0)
            continue;
        show_result(c, keys[i].name, proto_envelope_verify(env, keys[i].type, keys[i].key), "");
        shown = true;
    }
    if (!shown) {
        char hex[2 * PROTO_KEY_ID_SIZE + 1];
        const uint8_t *kid = proto_envelope_key_id(env);
        for (size_t i = 0; i < PROTO_KEY_ID_SIZE; i++)
            snprintf(hex + 2 * i, 3, "%02x", kid[i]);
        printf("    payload  signed envelope by key %s (key not given: not checked)\n", hex);
    }
    proto_envelope_destroy(&env);
}

static void show_entry(show_ctx_t *c, const audit_entry_t *e, bool hash_ok)
{
    time_t t = (time_t)(e->time_ms / CLI_MS_PER_S);
    struct tm tm;
    char when[32] = "?";
    if (gmtime_r(&t, &tm) != NULL)
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    printf("seq %" PRIu64 "  %s  %.*s#%" PRIu64 "  %.*s  entry hash %s\n", e->seq, when,
           (int)e->source_len, e->source, e->source_seq, (int)e->type_len, e->type,
           hash_ok ? "ok" : "DOES NOT MATCH");
    if (!hash_ok)
        c->bad = 1;
    if (e->type_len > 5 && memcmp(e->type, "load.", 5) == 0) {
        Qcledger__Load *l = qcledger__load__unpack(NULL, e->payload_len, e->payload);
        if (l == NULL) {
            c->bad = 1;
            printf("    payload  is not a Load record (%zu bytes)\n", e->payload_len);
            return;
        }
        show_load(c, l, t);
        qcledger__load__free_unpacked(l, NULL);
        return;
    }
    show_envelope(c, e->payload, e->payload_len);
}

static int hex_parse(const char *s, uint8_t *out, size_t cap, size_t *len)
{
    size_t n = strlen(s);
    if (n == 0 || n % 2 != 0 || n / 2 > cap || ops_unhex(s, out, n / 2) != 0)
        return -1;
    *len = n / 2;
    return 0;
}

static int show_entries(show_ctx_t *c, audit_store_t *store, const uint8_t *txn, size_t txn_len)
{
    uint64_t *seqs = calloc(CLI_TXN_SEQS_MAX, sizeof *seqs);
    size_t n = 0;
    int rc = seqs == NULL ? QC_ENOMEM
                          : audit_store_txn_seqs(store, txn, txn_len, seqs, CLI_TXN_SEQS_MAX, &n);
    if (rc == 0 && n == 0)
        rc = QC_ENOTFOUND;
    for (size_t i = 0; rc == 0 && i < n && i < CLI_TXN_SEQS_MAX; i++) {
        uint8_t *rec = NULL;
        size_t len = 0;
        audit_entry_t e;
        if ((rc = audit_store_get(store, seqs[i], &rec, &len)) != 0)
            break;
        if ((rc = audit_chain_parse(rec, len, &e)) == 0) {
            /* The entry against its own stored prev_hash: the chain is verify's job. */
            show_entry(c, &e, audit_chain_check(&e, e.prev_hash) == 0);
        } else {
            c->bad = 1;
            printf("seq %" PRIu64 "  does not parse: %s\n", seqs[i], qc_strerror(rc));
            rc = 0;
        }
        free(rec);
    }
    if (n > CLI_TXN_SEQS_MAX)
        printf("(%zu more entries not shown)\n", n - CLI_TXN_SEQS_MAX);
    free(seqs);
    return rc;
}

static int cli_show(const char *prog, const cli_opts_t *o)
{
    uint8_t txn[AUDIT_TXN_ID_MAX];
    size_t txn_len = 0;
    if (o->arg == NULL || hex_parse(o->arg, txn, sizeof txn, &txn_len) != 0) {
        cli_usage(stderr, prog);
        return CLI_EXIT_USAGE;
    }
    show_ctx_t c = {.prog = prog};
    int exit_code = CLI_EXIT_USAGE;
    audit_store_t *store = NULL;
    int rc = 0;
    if (cli_load_key(prog, "allow certificate", o->allow_cert, &c.allow_key) != 0 ||
        cli_load_key(prog, "outcome certificate", o->outcome_cert, &c.outcome_key) != 0)
        goto out;
    if (o->ca != NULL && (rc = proto_trust_new(o->ca, NULL, &c.trust)) != 0) {
        fprintf(stderr, "%s: cannot load CA %s: %s\n", prog, o->ca, qc_strerror(rc));
        goto out;
    }
    if ((rc = audit_store_open(o->dir, AUDIT_STORE_RDONLY, 0, &store)) != 0) {
        fprintf(stderr, "%s: cannot open %s: %s\n", prog, o->dir, qc_strerror(rc));
        goto out;
    }
    rc = show_entries(&c, store, txn, txn_len);
    if (rc == QC_ENOTFOUND) {
        printf("no entry about txn %s\n", o->arg);
        exit_code = CLI_EXIT_BAD;
    } else if (rc != 0) {
        fprintf(stderr, "%s: %s\n", prog, qc_strerror(rc));
    } else {
        exit_code = c.bad ? CLI_EXIT_BAD : CLI_EXIT_OK;
    }
out:
    audit_store_destroy(&store);
    proto_trust_destroy(&c.trust);
    EVP_PKEY_free(c.allow_key);
    EVP_PKEY_free(c.outcome_key);
    free(c.req);
    free(c.allow);
    return exit_code;
}

int audit_cli_main(const char *prog, int argc, char **argv)
{
    assert(prog != NULL);
    assert(argc >= 1);
    assert(argv != NULL);
    /* Library errors (an unreadable file) are logged as JSON lines on stderr. */
    ops_log_init("audit-cli", "0", OPS_LOG_WARN);
    cli_opts_t o;
    int rc = cli_parse(argc, argv, &o);
    if (rc == 1) {
        cli_usage(stdout, prog);
        return CLI_EXIT_OK;
    }
    if (rc != 0 || !audit_cli_is_verb(argv[0])) {
        cli_usage(stderr, prog);
        return CLI_EXIT_USAGE;
    }
    if (strcmp(argv[0], "verify") == 0)
        return cli_verify(prog, &o);
    if (strcmp(argv[0], "export") == 0)
        return cli_export(prog, &o);
    return cli_show(prog, &o);
}
