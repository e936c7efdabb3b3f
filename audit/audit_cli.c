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

#include "audit.pb-c.h"
#include "audit_chain.h"
#include "audit_proof.h"
#include "audit_store.h"
#include "audit_verify.h"
#include "ledger.pb-c.h"
#include "ops_log.h"
#include "proto_cert.h"
#include "ops_hex.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "proto_merkle.h"
#include "proto_receipt.h"
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
    uint64_t size;    /* --size: the tree head to prove against, 0 = the latest */
    bool json;        /* --json: one JSON object on stdout */
    const char *arg;  /* the first positional argument (show's and prove's txn, OLD) */
    const char *arg2; /* the second (consistency's NEW) */
} cli_opts_t;

bool audit_cli_is_verb(const char *name)
{
    return name != NULL && (strcmp(name, "verify") == 0 || strcmp(name, "show") == 0 ||
                            strcmp(name, "export") == 0 || strcmp(name, "prove") == 0 ||
                            strcmp(name, "consistency") == 0);
}

static void cli_usage(FILE *f, const char *prog)
{
    fprintf(f,
            "usage: %s verify --dir DATA --cert PEM [--json]\n"
            "       %s show --dir DATA [--allow-cert PEM] [--outcome-cert PEM] [--ca PEM] TXN_HEX\n"
            "       %s export --dir DATA [--from SEQ]\n"
            "       %s prove --dir DATA --cert PEM [--size N] [--json] TXN_HEX\n"
            "       %s consistency --dir DATA --cert PEM [--json] OLD NEW\n"
            "DATA is a copy of the audit service's data_dir (opened read-only); PEM the\n"
            "audit-checkpoint certificate. prove: every entry of the load with its Merkle\n"
            "inclusion proof against the latest signed tree head (or the head of size N),\n"
            "verified. consistency: the proof that the signed tree head of size NEW (0: the\n"
            "latest) extends that of size OLD, verified.\n",
            prog, prog, prog, prog, prog);
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
        } else if (strcmp(a, "--from") == 0 || strcmp(a, "--size") == 0) {
            char *end = NULL;
            if (i + 1 >= argc)
                return -1;
            uint64_t v = strtoull(argv[++i], &end, 10);
            if (end == argv[i] || *end != '\0' || argv[i][0] == '-')
                return -1;
            *(strcmp(a, "--from") == 0 ? &o->from : &o->size) = v;
        } else if (strcmp(a, "--json") == 0) {
            o->json = true;
        } else if (a[0] == '-' || o->arg2 != NULL) {
            return -1;
        } else {
            *(o->arg == NULL ? &o->arg : &o->arg2) = a;
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

static void json_str(FILE *f, const char *s, size_t len);
static void hex_out(FILE *f, const uint8_t *b, size_t len);

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
    if (o->json) {
        printf("{\"ok\":%s,\"entries\":%" PRIu64 ",\"last_seq\":%" PRIu64
               ",\"checkpoints\":%" PRIu64 ",\"signed_seq\":%" PRIu64 ",\"tree_heads\":%" PRIu64
               ",\"tree_size\":%" PRIu64,
               rc == 0 ? "true" : "false", r.entries, r.last_seq, r.checkpoints, r.signed_seq,
               r.tree_heads, r.tree_size);
        if (rc != 0) {
            printf(",\"break_seq\":%" PRIu64 ",\"error\":\"%s\",\"why\":", r.break_seq,
                   qc_errname(r.break_code));
            json_str(stdout, r.why, strlen(r.why));
        }
        printf("}\n");
        return rc != 0 ? CLI_EXIT_BAD : CLI_EXIT_OK;
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
    printf("ok: %" PRIu64 " signed tree heads carry the Merkle root of the entries they cover, "
           "the largest of %" PRIu64 " entries; every stored tree node matches the entries\n",
           r.tree_heads, r.tree_size);
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
    if (o->arg == NULL || o->arg2 != NULL || hex_parse(o->arg, txn, sizeof txn, &txn_len) != 0) {
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

/* ------------------------------------------------------------------ prove, consistency */

static void time_out(FILE *f, uint64_t ms)
{
    time_t t = (time_t)(ms / CLI_MS_PER_S);
    struct tm tm;
    char when[32] = "?";
    if (gmtime_r(&t, &tm) != NULL)
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    fputs(when, f);
}

static void b64_out(FILE *f, const uint8_t *b, size_t len)
{
    uint8_t *out = malloc(4 * ((len + 2) / 3) + 1);
    if (out == NULL) {
        fputs("?", f);
        return;
    }
    int n = EVP_EncodeBlock(out, b, (int)len);
    fprintf(f, "%.*s", n < 0 ? 0 : n, (const char *)out);
    free(out);
}

static void head_json(const proto_tree_head_t *h)
{
    printf("{\"size\":%" PRIu64 ",\"time_ms\":%" PRIu64 ",\"root\":\"", h->size, h->time_ms);
    hex_out(stdout, h->root, sizeof h->root);
    printf("\"}");
}

static void head_text(const char *what, const proto_tree_head_t *h)
{
    printf("%s: size %" PRIu64 ", signed ", what, h->size);
    time_out(stdout, h->time_ms);
    printf(", root ");
    hex_out(stdout, h->root, sizeof h->root);
    printf(" (signature verified)\n");
}

static void hashes_json(const ProtobufCBinaryData *h, size_t n)
{
    putchar('[');
    for (size_t i = 0; i < n; i++) {
        printf("%s\"", i > 0 ? "," : "");
        hex_out(stdout, h[i].data, h[i].len);
        putchar('"');
    }
    putchar(']');
}

/* Asks the store (as the service would be asked) and returns the reply body. */
static int cli_ask(audit_store_t *store, const char *method, const ProtobufCMessage *req,
                   uint8_t **reply, size_t *len)
{
    uint8_t *body = NULL;
    size_t body_len = 0;
    int rc = proto_pack(req, &body, &body_len);
    if (rc == 0)
        rc = audit_proof_answer(store, method, body, body_len, reply, len);
    free(body);
    return rc;
}

typedef struct prove_walk {
    const cli_opts_t *o;
    size_t shown; /* entries printed so far */
    bool head_shown;
} prove_walk_t;

/* Prints one verified page of a ProveReply (text or the entries of the JSON object). */
static void prove_print(prove_walk_t *w, const Qcaudit__ProveReply *r, const proto_receipt_t *rc)
{
    if (!w->head_shown) {
        if (w->o->json) {
            printf("{\"txn\":\"%s\",\"tree_head\":", w->o->arg);
            head_json(&rc->head);
            printf(",\"signed_tree_head\":\"");
            b64_out(stdout, r->tree_head.data, r->tree_head.len);
            printf("\",\"entries\":[");
        } else {
            head_text("tree head", &rc->head);
        }
        w->head_shown = true;
    }
    for (size_t i = 0; i < r->n_proofs; i++) {
        const Qcaudit__InclusionProof *p = r->proofs[i];
        uint8_t leaf[PROTO_MERKLE_HASH_SIZE];
        if (proto_merkle_leaf_hash(p->entry.data, p->entry.len, leaf) != 0)
            memset(leaf, 0, sizeof leaf);
        if (w->o->json) {
            printf("%s{\"seq\":%" PRIu64 ",\"leaf_index\":%" PRIu64 ",\"type\":\"%s\","
                   "\"leaf_hash\":\"",
                   w->shown > 0 ? "," : "", p->seq, p->seq - 1, rc->types[i]);
            hex_out(stdout, leaf, sizeof leaf);
            printf("\",\"entry\":\"");
            b64_out(stdout, p->entry.data, p->entry.len);
            printf("\",\"path\":");
            hashes_json(p->path, p->n_path);
            putchar('}');
        } else {
            printf("seq %" PRIu64 " (leaf %" PRIu64 ")  %s  leaf ", p->seq, p->seq - 1,
                   rc->types[i]);
            hex_out(stdout, leaf, sizeof leaf);
            printf("\n    inclusion verified with %zu hashes:", p->n_path);
            for (size_t j = 0; j < p->n_path; j++) {
                printf("%s", j % 2 == 0 ? "\n      " : " ");
                hex_out(stdout, p->path[j].data, p->path[j].len);
            }
            putchar('\n');
        }
        w->shown++;
    }
}

/* One page: asks, verifies, prints. Returns 0 (with *more) or the first failure. */
static int prove_page(prove_walk_t *w, audit_store_t *store, EVP_PKEY *key, const uint8_t *txn,
                      uint64_t *size, uint64_t *from, bool *more, uint32_t *pending)
{
    Qcaudit__ProveRequest req = QCAUDIT__PROVE_REQUEST__INIT;
    req.txn_id.data = (uint8_t *)txn;
    req.txn_id.len = PROTO_TXN_ID_SIZE;
    req.tree_size = *size;
    req.from_seq = *from;
    uint8_t *reply = NULL;
    size_t len = 0;
    int rc = cli_ask(store, AUDIT_PROOF_METHOD_PROVE, &req.base, &reply, &len);
    proto_receipt_t *rcpt = calloc(1, sizeof *rcpt);
    if (rc == 0 && rcpt == NULL)
        rc = QC_ENOMEM;
    if (rc == 0)
        rc = proto_receipt_verify(reply, len, key, txn, rcpt);
    Qcaudit__ProveReply *r = rc == 0 ? qcaudit__prove_reply__unpack(NULL, len, reply) : NULL;
    if (rc == 0 && r == NULL)
        rc = QC_EDECODE;
    if (rc == 0) {
        prove_print(w, r, rcpt);
        *more = r->more;
        *pending = r->pending;
        *size = rcpt->head.size;
        *from = rcpt->seqs[rcpt->entries - 1];
    } else if (rcpt != NULL) {
        *pending = rcpt->pending;
    }
    if (r != NULL)
        qcaudit__prove_reply__free_unpacked(r, NULL);
    free(rcpt);
    free(reply);
    return rc;
}

static int cli_prove(const char *prog, const cli_opts_t *o)
{
    uint8_t txn[AUDIT_TXN_ID_MAX];
    size_t txn_len = 0;
    if (o->cert == NULL || o->arg == NULL || o->arg2 != NULL ||
        hex_parse(o->arg, txn, sizeof txn, &txn_len) != 0 || txn_len != PROTO_TXN_ID_SIZE) {
        cli_usage(stderr, prog);
        return CLI_EXIT_USAGE;
    }
    EVP_PKEY *key = NULL;
    audit_store_t *store = NULL;
    if (cli_load_key(prog, "checkpoint certificate", o->cert, &key) != 0)
        return CLI_EXIT_USAGE;
    int rc = audit_store_open(o->dir, AUDIT_STORE_RDONLY, 0, &store);
    if (rc != 0) {
        fprintf(stderr, "%s: cannot open %s: %s\n", prog, o->dir, qc_strerror(rc));
        EVP_PKEY_free(key);
        return CLI_EXIT_USAGE;
    }
    prove_walk_t w = {.o = o};
    uint64_t size = o->size, from = 0;
    uint32_t pending = 0;
    bool more = true;
    for (size_t page = 0; rc == 0 && more && page < CLI_TXN_SEQS_MAX; page++)
        rc = prove_page(&w, store, key, txn, &size, &from, &more, &pending);
    audit_store_destroy(&store);
    EVP_PKEY_free(key);
    if (o->json) {
        if (!w.head_shown)
            printf("{\"txn\":\"%s\",\"entries\":[", o->arg);
        printf("],\"pending\":%" PRIu32 ",\"verified\":%s", pending, rc == 0 ? "true" : "false");
        if (rc != 0)
            printf(",\"error\":\"%s\"", qc_errname(rc));
        printf("}\n");
    } else if (rc == QC_ENOTFOUND && w.shown == 0) {
        printf("no proof: %s\n", pending > 0 ? "the load's entries are not yet under a signed "
                                               "tree head (ask again after the next checkpoint)"
                                             : "no signed tree head, or no entry about this load");
    } else if (rc != 0) {
        printf("NOT VERIFIED: %s (%s)\n", qc_strerror(rc), qc_errname(rc));
    } else {
        printf("ok: %zu entries of the load are in the log under the signed tree head", w.shown);
        if (pending > 0)
            printf("; %" PRIu32 " more after it (ask again after the next checkpoint)", pending);
        printf("\n");
    }
    return rc == 0 ? CLI_EXIT_OK : CLI_EXIT_BAD;
}

static int parse_size(const char *s, uint64_t *v)
{
    char *end = NULL;
    if (s == NULL || s[0] == '-' || s[0] == '\0')
        return -1;
    *v = strtoull(s, &end, 10);
    return *end == '\0' ? 0 : -1;
}

/* Opens and checks the heads and proof of a ConsistencyReply; prints them. */
static int consistency_check(const cli_opts_t *o, const Qcaudit__ConsistencyReply *c, EVP_PKEY *key,
                             uint64_t old_size)
{
    proto_tree_head_t old = {0}, cur;
    int rc = proto_tree_head_open(c->tree_head.data, c->tree_head.len, key, &cur);
    if (rc == 0 && old_size > 0)
        rc = c->old_tree_head.len > 0
                 ? proto_tree_head_open(c->old_tree_head.data, c->old_tree_head.len, key, &old)
                 : QC_ENOTFOUND;
    if (rc == 0 && old.size != old_size)
        rc = QC_EMISMATCH;
    proto_merkle_hash_t proof[PROTO_MERKLE_PROOF_MAX];
    if (rc == 0 && c->n_proof > PROTO_MERKLE_PROOF_MAX)
        rc = QC_ETOOBIG;
    for (size_t i = 0; rc == 0 && i < c->n_proof; i++) {
        if (c->proof[i].len != PROTO_MERKLE_HASH_SIZE)
            rc = QC_EDECODE;
        else
            memcpy(proof[i], c->proof[i].data, PROTO_MERKLE_HASH_SIZE);
    }
    if (rc == 0)
        rc = proto_tree_head_consistent(&old, &cur, proof, c->n_proof);
    if (o->json) {
        printf("{\"old\":");
        head_json(&old);
        printf(",\"new\":");
        head_json(&cur);
        printf(",\"proof\":");
        hashes_json(c->proof, c->n_proof);
        printf(",\"consistent\":%s", rc == 0 ? "true" : "false");
        if (rc != 0)
            printf(",\"error\":\"%s\"", qc_errname(rc));
        printf("}\n");
        return rc;
    }
    if (rc == QC_ENOTFOUND) {
        printf("no proof: no signed tree head of size %" PRIu64 " (a head a device kept is always "
               "one the log signed)\n",
               old_size);
        return rc;
    }
    if (old_size > 0 && old.size == old_size)
        head_text("old tree head", &old);
    if (cur.size > 0)
        head_text("new tree head", &cur);
    printf("consistency proof: %zu hashes", c->n_proof);
    for (size_t i = 0; i < c->n_proof; i++) {
        printf("%s", i % 2 == 0 ? "\n  " : " ");
        hex_out(stdout, c->proof[i].data, c->proof[i].len);
    }
    if (rc == 0)
        printf("\nok: the log of %" PRIu64 " entries extends the log of %" PRIu64 "\n", cur.size,
               old.size);
    else
        printf("\nNOT CONSISTENT: %s (%s)%s\n", qc_strerror(rc), qc_errname(rc),
               rc == QC_EMISMATCH ? ": the log was rewritten or forked" : "");
    return rc;
}

static int cli_consistency(const char *prog, const cli_opts_t *o)
{
    uint64_t old_size = 0, new_size = 0;
    if (o->cert == NULL || parse_size(o->arg, &old_size) != 0 ||
        parse_size(o->arg2, &new_size) != 0) {
        cli_usage(stderr, prog);
        return CLI_EXIT_USAGE;
    }
    EVP_PKEY *key = NULL;
    audit_store_t *store = NULL;
    if (cli_load_key(prog, "checkpoint certificate", o->cert, &key) != 0)
        return CLI_EXIT_USAGE;
    int rc = audit_store_open(o->dir, AUDIT_STORE_RDONLY, 0, &store);
    if (rc != 0) {
        fprintf(stderr, "%s: cannot open %s: %s\n", prog, o->dir, qc_strerror(rc));
        EVP_PKEY_free(key);
        return CLI_EXIT_USAGE;
    }
    Qcaudit__ConsistencyRequest req = QCAUDIT__CONSISTENCY_REQUEST__INIT;
    req.old_size = old_size;
    req.new_size = new_size;
    uint8_t *reply = NULL;
    size_t len = 0;
    rc = cli_ask(store, AUDIT_PROOF_METHOD_CONSISTENCY, &req.base, &reply, &len);
    Qcaudit__ConsistencyReply *c =
        rc == 0 ? qcaudit__consistency_reply__unpack(NULL, len, reply) : NULL;
    if (rc == 0 && c == NULL)
        rc = QC_EDECODE;
    if (rc == 0) {
        rc = consistency_check(o, c, key, old_size);
    } else if (o->json) {
        printf("{\"consistent\":false,\"error\":\"%s\"}\n", qc_errname(rc));
    } else {
        printf("no proof: %s (%s): no signed tree head of that size, or OLD is above NEW\n",
               qc_strerror(rc), qc_errname(rc));
    }
    if (c != NULL)
        qcaudit__consistency_reply__free_unpacked(c, NULL);
    free(reply);
    audit_store_destroy(&store);
    EVP_PKEY_free(key);
    return rc == 0 ? CLI_EXIT_OK : CLI_EXIT_BAD;
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
    if (strcmp(argv[0], "prove") == 0)
        return cli_prove(prog, &o);
    if (strcmp(argv[0], "consistency") == 0)
        return cli_consistency(prog, &o);
    return cli_show(prog, &o);
}
