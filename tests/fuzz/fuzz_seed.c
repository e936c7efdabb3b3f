/* fuzz_seed.c - writes the seed corpora and dictionaries of tests/fuzz, at build time.
 *
 * Usage: fuzz_seed OUTDIR. Makes OUTDIR/ca.pem (the CA of the certificate target),
 * OUTDIR/seeds/<target>/<n> (real messages: envelopes signed with the fixed test keys, state
 * files written by the stores themselves, audit records made by the chain's encoder, config
 * files and flags like the services'), and OUTDIR/dict/<target>.dict (the field tags of every
 * message a target reads, and the words its text formats know). Exits non-zero on failure. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "audit.pb-c.h"
#include "audit_chain.h"
#include "card.pb-c.h"
#include "card_store.h"
#include "device_core.h"
#include "card_apdu.h"
#include "fuzz_common.h"
#include "fuzz_family.h"
#include "fuzz_msgs.h"
#include "ledger.pb-c.h"
#include "proto_decode.h"
#include "proto_merkle.h"
#include "qctest_key.h"
#include "signer.pb-c.h"
#include "wallet_store.h"

static const char *outdir;
static uint8_t *envelopes[PROTO_TYPE_COUNT];
static size_t envelope_lens[PROTO_TYPE_COUNT];
static uint8_t *device_cert;
static size_t device_cert_len;

static void mkdirs(const char *path)
{
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        fuzz_fail(__FILE__, __LINE__, path);
}

static void seed(const char *target, const uint8_t *bytes, size_t len)
{
    static unsigned n;
    char path[FUZZ_PATH_MAX];
    snprintf(path, sizeof path, "%s/seeds/%s", outdir, target);
    mkdirs(path);
    snprintf(path, sizeof path, "%s/seeds/%s/seed-%03u", outdir, target, n++);
    fuzz_write_file(path, bytes, len);
}

static void seed_msg(const char *target, const ProtobufCMessage *m)
{
    uint8_t *bytes = NULL;
    size_t len = 0;
    FUZZ_CHECK(proto_pack(m, &bytes, &len) == 0);
    seed(target, bytes, len);
    free(bytes);
}

/* ------------------------------------------------------------ dictionaries */

static FILE *dict_open(const char *target)
{
    char path[FUZZ_PATH_MAX];
    snprintf(path, sizeof path, "%s/dict/%s.dict", outdir, target);
    FILE *f = fopen(path, "w");
    FUZZ_CHECK(f != NULL);
    fprintf(f, "# %s: written by fuzz_seed\n", target);
    return f;
}

static void dict_bytes(FILE *f, const uint8_t *bytes, size_t len)
{
    fputc('"', f);
    for (size_t i = 0; i < len; i++)
        fprintf(f, "\\x%02x", bytes[i]);
    fputs("\"\n", f);
}

/* A word of a text format (libFuzzer refuses an empty entry: there is none). */
static void dict_word(FILE *f, const char *word)
{
    FUZZ_CHECK(word[0] != '\0');
    dict_bytes(f, (const uint8_t *)word, strlen(word));
}

/* The tag of every field of desc and of the messages it holds (wire type as protobuf-c
 * writes it, and the length-delimited one that packed repeated fields use). */
static void dict_desc(FILE *f, const ProtobufCMessageDescriptor *desc, int depth)
{
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *fd = &desc->fields[i];
        unsigned wire = 0;
        switch (fd->type) {
        case PROTOBUF_C_TYPE_STRING:
        case PROTOBUF_C_TYPE_BYTES:
        case PROTOBUF_C_TYPE_MESSAGE:
            wire = 2;
            break;
        case PROTOBUF_C_TYPE_FIXED64:
        case PROTOBUF_C_TYPE_SFIXED64:
        case PROTOBUF_C_TYPE_DOUBLE:
            wire = 1;
            break;
        case PROTOBUF_C_TYPE_FIXED32:
        case PROTOBUF_C_TYPE_SFIXED32:
        case PROTOBUF_C_TYPE_FLOAT:
            wire = 5;
            break;
        default:
            wire = 0;
        }
        uint32_t key = (fd->id << 3) | wire;
        uint8_t tag[5];
        size_t n = 0;
        do {
            tag[n] = (uint8_t)(key & 0x7f);
            key >>= 7;
            if (key != 0)
                tag[n] |= 0x80;
            n++;
        } while (key != 0);
        dict_bytes(f, tag, n);
        if (fd->type == PROTOBUF_C_TYPE_MESSAGE && depth < 2)
            dict_desc(f, fd->descriptor, depth + 1);
    }
}

static void dict_common_proto(FILE *f)
{
    static const uint8_t values[][10] = {
        {0x00},
        {0x01},
        {0x02},
        {0x10},
        {0x20},
        {0x7f},
        {0x80, 0x01},
        {0xff, 0xff, 0xff, 0xff, 0x0f},
        {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
    };
    static const size_t lens[] = {1, 1, 1, 1, 1, 1, 2, 5, 10};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++)
        dict_bytes(f, values[i], lens[i]);
    dict_word(f, FUZZ_DEVICE_ID);
    dict_word(f, FUZZ_ACCOUNT_ID);
}

static void dict_proto(const char *target, const ProtobufCMessageDescriptor *const *descs,
                       size_t count)
{
    FILE *f = dict_open(target);
    for (size_t i = 0; i < count; i++)
        dict_desc(f, descs[i], 0);
    dict_common_proto(f);
    FUZZ_CHECK(fclose(f) == 0);
}

static void dict_words(const char *target, const char *const *words)
{
    FILE *f = dict_open(target);
    for (size_t i = 0; words[i] != NULL; i++)
        dict_word(f, words[i]);
    FUZZ_CHECK(fclose(f) == 0);
}

/* ------------------------------------------------------------ signed messages */

static bool from_device(proto_type_t t)
{
    return t == PROTO_TYPE_LOAD_REQUEST || t == PROTO_TYPE_EXECUTION_REPORT ||
           t == PROTO_TYPE_CARD_CHALLENGE || t == PROTO_TYPE_CARD_CREDIT;
}

static void make_pki(void)
{
    qctest_cert_t ca_spec = {.key = fuzz_key_ca(),
                             .cn = FUZZ_CA_CN,
                             .serial = 1,
                             .not_before_s = -3600,
                             .not_after_s = FUZZ_CERT_VALID_S,
                             .ext = QCTEST_EXT_CA};
    X509 *ca = qctest_cert_new(&ca_spec);
    char path[FUZZ_PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", outdir, FUZZ_CA_FILE);
    qctest_write_cert(path, ca);
    qctest_cert_t dev_spec = {.key = fuzz_key_signing(),
                              .cn = FUZZ_DEVICE_ID,
                              .signer = fuzz_key_ca(),
                              .issuer = ca,
                              .serial = 2,
                              .not_before_s = -3600,
                              .not_after_s = FUZZ_CERT_VALID_S,
                              .ext = QCTEST_EXT_LEAF};
    X509 *dev = qctest_cert_new(&dev_spec);
    qctest_cert_der(dev, &device_cert, &device_cert_len);
    seed("cert", device_cert, device_cert_len);
    uint8_t *der = NULL;
    size_t der_len = 0;
    qctest_cert_der(ca, &der, &der_len); /* a CA certificate is no device's */
    seed("cert", der, der_len);
    free(der);
    qctest_cert_self_der(fuzz_key_signing(), FUZZ_DEVICE_ID, &der, &der_len);
    seed("cert", der, der_len);
    free(der);
    X509_free(dev);
    X509_free(ca);
    static const char *const words[] = {"\x30\x82",
                                        "\x06\x03\x55\x04\x03",
                                        "\x06\x03\x55\x1d\x0f",
                                        "\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07",
                                        "\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02",
                                        FUZZ_DEVICE_ID,
                                        FUZZ_CA_CN,
                                        NULL};
    dict_words("cert", words);
}

static void make_signed(void)
{
    static const char *const decoders[PROTO_TYPE_COUNT] = {
        "load_request", "load_allow", "execution_report", "load_outcome", "audit_checkpoint"};
    static const ProtobufCMessageDescriptor *const descs[PROTO_TYPE_COUNT] = {
        &quancun__load_request__descriptor,     &quancun__load_allow__descriptor,
        &quancun__execution_report__descriptor, &quancun__load_outcome__descriptor,
        &quancun__audit_checkpoint__descriptor, &qccard__card_challenge__descriptor,
        &qccard__card_credit__descriptor,       &qccard__card_receipt__descriptor};
    for (int t = 0; t < PROTO_TYPE_COUNT; t++) {
        uint8_t *body = NULL;
        size_t len = 0;
        fuzz_body((proto_type_t)t, &body, &len);
        bool cert = from_device((proto_type_t)t);
        FUZZ_CHECK(proto_envelope_sign((proto_type_t)t, body, len, fuzz_key_signing(), 1,
                                       cert ? device_cert : NULL, cert ? device_cert_len : 0,
                                       &envelopes[t], &envelope_lens[t]) == 0);
        seed("envelope", envelopes[t], envelope_lens[t]);
        if (decoders[t] != NULL) {
            seed(decoders[t], body, len);
            dict_proto(decoders[t], &descs[t], 1);
        }
        free(body);
    }
    const ProtobufCMessageDescriptor *signed_desc = &quancun__signed__descriptor;
    dict_proto("envelope", &signed_desc, 1);
}

/* ------------------------------------------------------------ RPC frames */

static void make_rpc(void)
{
    static const char *const methods[] = {"load", "report", "reserve", "settle", "sign", "append"};
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        Quancun__Rpc m = QUANCUN__RPC__INIT;
        m.request_id = i + 1;
        m.method = (char *)methods[i];
        m.deadline_ms = UINT64_C(1765000030000);
        proto_type_t t = i % 2 == 0 ? PROTO_TYPE_LOAD_REQUEST : PROTO_TYPE_EXECUTION_REPORT;
        m.body = (ProtobufCBinaryData){.len = envelope_lens[t], .data = envelopes[t]};
        seed_msg("rpc", &m.base);
    }
    Quancun__RpcReply ok = QUANCUN__RPC_REPLY__INIT;
    ok.request_id = 1;
    ok.body = (ProtobufCBinaryData){.len = envelope_lens[PROTO_TYPE_LOAD_ALLOW],
                                    .data = envelopes[PROTO_TYPE_LOAD_ALLOW]};
    seed_msg("rpc_reply", &ok.base);
    Quancun__RpcReply refused = QUANCUN__RPC_REPLY__INIT;
    refused.request_id = 2;
    refused.code = -21;
    refused.message = "allow names another counter";
    seed_msg("rpc_reply", &refused.base);
    const ProtobufCMessageDescriptor *d = &quancun__rpc__descriptor;
    dict_proto("rpc", &d, 1);
    d = &quancun__rpc_reply__descriptor;
    dict_proto("rpc_reply", &d, 1);
}

/* ------------------------------------------------------------ service messages */

static uint8_t SIXTEEN[16] = {0x51, 0x43, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14};
static uint8_t THIRTY_TWO[32] = {0x33, 1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15,
                                 16,   17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31};

/* A bytes field's plausible value, by its name: a signed envelope, a certificate, an id. */
static ProtobufCBinaryData bytes_for(const char *name)
{
    static const struct {
        const char *name;
        proto_type_t type;
    } env[] = {{"request", PROTO_TYPE_LOAD_REQUEST},    {"allow", PROTO_TYPE_LOAD_ALLOW},
               {"report", PROTO_TYPE_EXECUTION_REPORT}, {"signed", PROTO_TYPE_LOAD_OUTCOME},
               {"body", PROTO_TYPE_LOAD_ALLOW},         {"payload", PROTO_TYPE_LOAD_REQUEST}};
    for (size_t i = 0; i < sizeof(env) / sizeof(env[0]); i++)
        if (strcmp(name, env[i].name) == 0)
            return (ProtobufCBinaryData){.len = envelope_lens[env[i].type],
                                         .data = envelopes[env[i].type]};
    if (strcmp(name, "cert") == 0)
        return (ProtobufCBinaryData){.len = device_cert_len, .data = device_cert};
    if (strstr(name, "hash") != NULL || strstr(name, "fp") != NULL ||
        strstr(name, "challenge") != NULL || strstr(name, "session") != NULL ||
        strstr(name, "salt") != NULL)
        return (ProtobufCBinaryData){.len = sizeof(THIRTY_TWO), .data = THIRTY_TWO};
    return (ProtobufCBinaryData){.len = sizeof(SIXTEEN), .data = SIXTEEN};
}

/* Fills every singular field of m (of desc) with a plausible value, nested messages too, up
 * to depth 3. Repeated fields stay empty: the fuzzer grows them from the dictionary's tags.
 * Nested messages come from pool (count slots of size slot_size). */
static void fill(ProtobufCMessage *m, int depth, uint8_t **pool, size_t *pool_left)
{
    const ProtobufCMessageDescriptor *desc = m->descriptor;
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *fd = &desc->fields[i];
        if (fd->label == PROTOBUF_C_LABEL_REPEATED)
            continue;
        void *at = (uint8_t *)m + fd->offset;
        switch (fd->type) {
        case PROTOBUF_C_TYPE_STRING:
            *(const char **)at = strstr(fd->name, "account") != NULL ? FUZZ_ACCOUNT_ID
                                 : strstr(fd->name, "card") != NULL  ? FUZZ_CARD_NUMBER
                                                                     : FUZZ_DEVICE_ID;
            break;
        case PROTOBUF_C_TYPE_BYTES:
            *(ProtobufCBinaryData *)at = bytes_for(fd->name);
            break;
        case PROTOBUF_C_TYPE_BOOL:
            *(protobuf_c_boolean *)at = 1;
            break;
        case PROTOBUF_C_TYPE_ENUM:
        case PROTOBUF_C_TYPE_INT32:
        case PROTOBUF_C_TYPE_SINT32:
        case PROTOBUF_C_TYPE_UINT32:
        case PROTOBUF_C_TYPE_FIXED32:
        case PROTOBUF_C_TYPE_SFIXED32:
            *(int32_t *)at = 1 + (int32_t)(i % 3);
            break;
        case PROTOBUF_C_TYPE_INT64:
        case PROTOBUF_C_TYPE_SINT64:
        case PROTOBUF_C_TYPE_UINT64:
        case PROTOBUF_C_TYPE_FIXED64:
        case PROTOBUF_C_TYPE_SFIXED64:
            *(int64_t *)at = 12345 + (int64_t)i;
            break;
        case PROTOBUF_C_TYPE_MESSAGE: {
            const ProtobufCMessageDescriptor *sub = fd->descriptor;
            if (depth >= 3 || *pool_left < sub->sizeof_message)
                break;
            ProtobufCMessage *child = (ProtobufCMessage *)*pool;
            *pool += (sub->sizeof_message + 15) & ~(size_t)15;
            *pool_left -= (sub->sizeof_message + 15) & ~(size_t)15;
            protobuf_c_message_init(sub, child);
            fill(child, depth + 1, pool, pool_left);
            *(ProtobufCMessage **)at = child;
            break;
        }
        default:
            break;
        }
    }
}

#define POOL_SIZE (64 * 1024)

static void make_families(void)
{
    size_t count = 0;
    const fuzz_family_t *families = fuzz_families(&count);
    for (size_t f = 0; f < count; f++) {
        char target[64];
        snprintf(target, sizeof target, "%s_msg", families[f].name);
        for (size_t i = 0; i < families[f].count; i++) {
            const ProtobufCMessageDescriptor *desc = families[f].descs[i];
            _Alignas(16) static uint8_t pool[POOL_SIZE];
            memset(pool, 0, sizeof pool);
            ProtobufCMessage *m = (ProtobufCMessage *)pool;
            uint8_t *next = pool + ((desc->sizeof_message + 15) & ~(size_t)15);
            size_t left = POOL_SIZE - (size_t)(next - pool);
            protobuf_c_message_init(desc, m);
            fill(m, 0, &next, &left);
            size_t len = protobuf_c_message_get_packed_size(m);
            uint8_t *bytes = malloc(len + 1);
            FUZZ_CHECK(bytes != NULL);
            bytes[0] = (uint8_t)i; /* fuzz_service: the first byte picks the message */
            FUZZ_CHECK(protobuf_c_message_pack(m, bytes + 1) == len);
            seed(target, bytes, len + 1);
            free(bytes);
        }
        dict_proto(target, families[f].descs, families[f].count);
    }
}

/* ------------------------------------------------------------ Merkle proofs */

/* The honest tree of fuzz_merkle.c: leaf i is the leaf hash of i's 8 bytes in host order. */
#define SEED_TREE_MAX 300
static uint8_t seed_levels[10][SEED_TREE_MAX][PROTO_MERKLE_HASH_SIZE];

static int seed_node(void *arg, unsigned level, uint64_t index, uint8_t out[PROTO_MERKLE_HASH_SIZE])
{
    (void)arg;
    memcpy(out, seed_levels[level][index], PROTO_MERKLE_HASH_SIZE);
    return 0;
}

/* One input of fuzz_merkle: mode, a and b big-endian, then the hashes. */
static void seed_merkle(uint8_t mode, uint64_t a, uint64_t b, const proto_merkle_hash_t *h,
                        size_t n)
{
    uint8_t buf[1 + 16 + (PROTO_MERKLE_PROOF_MAX + 1) * PROTO_MERKLE_HASH_SIZE];
    buf[0] = mode;
    for (int i = 0; i < 8; i++) {
        buf[1 + i] = (uint8_t)(a >> (56 - 8 * i));
        buf[9 + i] = (uint8_t)(b >> (56 - 8 * i));
    }
    FUZZ_CHECK(n <= PROTO_MERKLE_PROOF_MAX + 1);
    if (n > 0)
        memcpy(buf + 17, h, n * PROTO_MERKLE_HASH_SIZE);
    seed("merkle", buf, 17 + n * PROTO_MERKLE_HASH_SIZE);
}

static void make_merkle(void)
{
    proto_merkle_compact_t c = {0};
    for (uint64_t i = 0; i < SEED_TREE_MAX; i++) {
        uint8_t entry[8], leaf[PROTO_MERKLE_HASH_SIZE];
        memcpy(entry, &i, sizeof entry);
        FUZZ_CHECK(proto_merkle_leaf_hash(entry, sizeof entry, leaf) == 0);
        proto_merkle_hash_t done[PROTO_MERKLE_LEVELS_MAX];
        size_t nd = 0;
        FUZZ_CHECK(proto_merkle_compact_append(&c, leaf, done, &nd) == 0);
        for (size_t l = 0; l < nd; l++)
            memcpy(seed_levels[l][i >> l], done[l], PROTO_MERKLE_HASH_SIZE);
    }
    /* Honest proofs (b = size - 1): inclusion of 5 and 98 in 100, consistency 37 -> 100 and
     * 64 -> 299; then the same with a raw size. */
    proto_merkle_hash_t p[PROTO_MERKLE_PROOF_MAX];
    size_t n = 0;
    static const uint64_t incl[][2] = {{5, 100}, {98, 100}, {0, 1}, {255, 299}};
    for (size_t i = 0; i < sizeof incl / sizeof incl[0]; i++) {
        FUZZ_CHECK(proto_merkle_prove_inclusion(seed_node, NULL, incl[i][0], incl[i][1], p, &n) ==
                   0);
        seed_merkle(0, incl[i][0], incl[i][1] - 1, p, n);
        seed_merkle(2, incl[i][0], incl[i][1], p, n);
    }
    static const uint64_t cons[][2] = {{37, 100}, {64, 299}, {1, 2}, {299, 299}};
    for (size_t i = 0; i < sizeof cons / sizeof cons[0]; i++) {
        FUZZ_CHECK(proto_merkle_prove_consistency(seed_node, NULL, cons[i][0], cons[i][1], p, &n) ==
                   0);
        seed_merkle(1, cons[i][0], cons[i][1] - 1, p, n);
        seed_merkle(3, cons[i][0], cons[i][1], p, n);
    }
    /* The dictionary: the mode bytes, and sizes and indexes around powers of two as the
     * big-endian u64s the header holds. */
    FILE *f = dict_open("merkle");
    for (uint8_t mode = 0; mode < 8; mode++)
        dict_bytes(f, &mode, 1);
    for (unsigned k = 0; k < 64; k += 7) {
        uint64_t vals[3] = {(UINT64_C(1) << k) - 1, UINT64_C(1) << k, (UINT64_C(1) << k) + 1};
        for (int v = 0; v < 3; v++) {
            uint8_t be[8];
            for (int i = 0; i < 8; i++)
                be[i] = (uint8_t)(vals[v] >> (56 - 8 * i));
            dict_bytes(f, be, sizeof be);
        }
    }
    FUZZ_CHECK(fclose(f) == 0);
}

/* ------------------------------------------------------------ card APDUs */

/* One seed of the apdu target: the parser's byte, then its input. */
static void seed_apdu(uint8_t parser, const uint8_t *bytes, size_t len)
{
    uint8_t buf[1 + 512];
    FUZZ_CHECK(len < sizeof buf);
    buf[0] = parser;
    memcpy(buf + 1, bytes, len);
    seed("apdu", buf, 1 + len);
}

static void make_apdu(void)
{
    /* Commands of the applet in each ISO 7816-3 case, short and extended (docs/CARD.md). */
    uint8_t data[300];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)i;
    const card_apdu_t cmds[] = {
        {.cla = 0x00,
         .ins = CARD_INS_SELECT,
         .p1 = 0x04,
         .data = card_apdu_aid,
         .nc = CARD_APDU_AID_SIZE,
         .ne = 256},
        {.cla = 0x00, .ins = CARD_INS_GET_DATA, .p1 = 0x01, .p2 = 0x01, .ne = 256},
        {.cla = 0x00, .ins = CARD_INS_VERIFY, .p2 = CARD_P2_VERIFY_PIN, .data = data, .nc = 6},
        {.cla = 0x00, .ins = CARD_INS_VERIFY, .p2 = CARD_P2_VERIFY_PIN},
        {.cla = 0x80, .ins = CARD_INS_CREDIT, .data = data, .nc = 200, .ne = 256},
        {.cla = 0x90, .ins = CARD_INS_CREDIT, .data = data, .nc = 255},
        {.cla = 0x00, .ins = CARD_INS_INTERNAL_AUTH, .data = data, .nc = 300, .ne = 1000},
        {.cla = 0x00, .ins = CARD_INS_GET_RESPONSE, .ne = 70000 - 4464},
    };
    uint8_t buf[512];
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        size_t n = 0;
        FUZZ_CHECK(card_apdu_encode(&cmds[i], buf, sizeof buf, &n) == 0);
        seed_apdu(0, buf, n);
    }
    static const uint8_t responses[][4] = {{0x90, 0x00}, {0x01, 0x02, 0x61, 0x10}, {0x63, 0xC2}};
    seed_apdu(1, responses[0], 2);
    seed_apdu(1, responses[1], 4);
    seed_apdu(1, responses[2], 2);
    card_apdu_purse_t p = {.number = "QC-CARD-0001",
                           .balance = 1234,
                           .max_balance = 100000,
                           .counter = 7,
                           .pin_tries_left = 3};
    uint8_t purse[CARD_APDU_PURSE_MAX];
    size_t n = card_apdu_purse_encode(&p, purse);
    FUZZ_CHECK(n > 0);
    seed_apdu(2, purse, n);
    /* The dictionary: parser bytes, the class and instruction bytes, status words, the AID. */
    FILE *f = dict_open("apdu");
    static const uint8_t words[][3] = {{0x00},
                                       {0x01},
                                       {0x02},
                                       {0x80},
                                       {0x90},
                                       {0x10},
                                       {CARD_INS_SELECT},
                                       {CARD_INS_GET_RESPONSE},
                                       {CARD_INS_GET_DATA},
                                       {CARD_INS_INTERNAL_AUTH},
                                       {CARD_INS_EXTERNAL_AUTH},
                                       {CARD_INS_VERIFY},
                                       {CARD_INS_CREDIT},
                                       {CARD_INS_PROOF},
                                       {0x90, 0x00},
                                       {0x61, 0x00},
                                       {0x63, 0xC2},
                                       {0x69, 0x83},
                                       {0x67, 0x00},
                                       {0x00, 0xFF, 0xFF},
                                       {0x00, 0x00, 0x00},
                                       {0x00, 0x01, 0x00}};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        dict_bytes(f, words[i], i < 14 ? 1 : (i < 19 ? 2 : 3));
    dict_bytes(f, card_apdu_aid, CARD_APDU_AID_SIZE);
    FUZZ_CHECK(fclose(f) == 0);
}

/* ------------------------------------------------------------ audit records */

static void make_audit(void)
{
    uint8_t prev[AUDIT_HASH_SIZE] = {0};
    for (uint64_t seq = 1; seq <= 3; seq++) {
        audit_entry_t e = {
            .seq = seq,
            .time_ms = UINT64_C(1765000000000) + seq,
            .source = seq == 3 ? AUDIT_SOURCE_SELF : "gateway-0",
            .source_len = seq == 3 ? strlen(AUDIT_SOURCE_SELF) : 9,
            .source_seq = seq,
            .type = seq == 3 ? AUDIT_TYPE_CHECKPOINT : "security.bad_signature",
            .type_len = seq == 3 ? strlen(AUDIT_TYPE_CHECKPOINT) : 22,
            .txn_id = seq == 3 ? NULL : SIXTEEN,
            .txn_id_len = seq == 3 ? 0 : sizeof(SIXTEEN),
            .payload = envelopes[seq == 3 ? PROTO_TYPE_AUDIT_CHECKPOINT : PROTO_TYPE_LOAD_REQUEST],
            .payload_len =
                envelope_lens[seq == 3 ? PROTO_TYPE_AUDIT_CHECKPOINT : PROTO_TYPE_LOAD_REQUEST]};
        memcpy(e.prev_hash, prev, sizeof prev);
        FUZZ_CHECK(audit_chain_hash(&e, e.hash) == 0);
        uint8_t *rec = NULL;
        size_t len = 0;
        FUZZ_CHECK(audit_chain_record(&e, &rec, &len) == 0);
        seed("audit_entry", rec, len);
        free(rec);
        memcpy(prev, e.hash, sizeof prev);
    }
    static const char *const words[] = {"gateway-0", AUDIT_SOURCE_SELF, AUDIT_TYPE_CHECKPOINT,
                                        "\xff\xff", NULL};
    dict_words("audit_entry", words);
    /* Lengths and counters, big-endian as the encoding has them. */
    static const uint8_t one64[8] = {0, 0, 0, 0, 0, 0, 0, 1}, len16[2] = {0, 16},
                         len64[2] = {0, 64}, zero32[4] = {0};
    char path[FUZZ_PATH_MAX];
    snprintf(path, sizeof path, "%s/dict/audit_entry.dict", outdir);
    FILE *f = fopen(path, "a");
    FUZZ_CHECK(f != NULL);
    dict_bytes(f, one64, sizeof one64);
    dict_bytes(f, len16, sizeof len16);
    dict_bytes(f, len64, sizeof len64);
    dict_bytes(f, zero32, sizeof zero32);
    FUZZ_CHECK(fclose(f) == 0);
}

/* ------------------------------------------------------------ audit frames */

/* One event of the frames below, as a signer or a gateway raises it (proto_audit). */
static void audit_frame_event(Qcaudit__AppendRequest *m, const char *source, uint64_t seq,
                              const char *type, bool txn, proto_type_t payload)
{
    qcaudit__append_request__init(m);
    m->source = (char *)source;
    m->source_seq = seq;
    m->type = (char *)type;
    m->txn_id.data = txn ? SIXTEEN : NULL;
    m->txn_id.len = txn ? sizeof(SIXTEEN) : 0;
    m->time_ms = UINT64_C(1765000000000) + seq;
    m->payload.data = envelopes[payload];
    m->payload.len = envelope_lens[payload];
}

static void seed_audit_frame(Qcaudit__AppendRequest *events, size_t n)
{
    Qcaudit__AppendRequest *ptrs[8];
    FUZZ_CHECK(n <= sizeof ptrs / sizeof ptrs[0]);
    for (size_t i = 0; i < n; i++)
        ptrs[i] = &events[i];
    Qcaudit__AppendBatchRequest b = QCAUDIT__APPEND_BATCH_REQUEST__INIT;
    b.n_events = n;
    b.events = ptrs;
    seed_msg("audit_frame", &b.base);
}

/* Frames as proto_audit sends them: a signer's two events per load, a gateway's refusal
 * event, and frames where one event is refused alone (a reserved source, a short txn_id, no
 * source_seq) among good ones; the lone "append" body too. */
static void make_audit_frame(void)
{
    Qcaudit__AppendRequest ev[6];
    audit_frame_event(&ev[0], "signer-0", 1, "sign.load_allow", true, PROTO_TYPE_LOAD_ALLOW);
    seed_msg("audit_frame", &ev[0].base);
    seed_audit_frame(ev, 1);
    audit_frame_event(&ev[1], "signer-0", 2, "sign.load_outcome", true, PROTO_TYPE_LOAD_OUTCOME);
    seed_audit_frame(ev, 2);
    audit_frame_event(&ev[2], "gateway-0", 7, "security.bad_device_signature", false,
                      PROTO_TYPE_LOAD_REQUEST);
    audit_frame_event(&ev[3], AUDIT_SOURCE_SELF, 3, "sign.load_allow", true, PROTO_TYPE_LOAD_ALLOW);
    seed_audit_frame(ev, 4);
    audit_frame_event(&ev[4], "ledger-0", 4, "sign.load_allow", false, PROTO_TYPE_LOAD_ALLOW);
    ev[4].txn_id.data = SIXTEEN;
    ev[4].txn_id.len = 8;
    audit_frame_event(&ev[5], "signer-1", 0, "sign.unknown", false, PROTO_TYPE_LOAD_OUTCOME);
    seed_audit_frame(&ev[2], 4);

    const ProtobufCMessageDescriptor *descs[] = {&qcaudit__append_batch_request__descriptor};
    dict_proto("audit_frame", descs, 1);
    char path[FUZZ_PATH_MAX];
    snprintf(path, sizeof path, "%s/dict/audit_frame.dict", outdir);
    FILE *f = fopen(path, "a");
    FUZZ_CHECK(f != NULL);
    static const char *const words[] = {"signer-0",        "gateway-0",
                                        AUDIT_SOURCE_SELF, AUDIT_SOURCE_RELAY_PREFIX,
                                        "sign.load_allow", "security.sign_refused"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        dict_word(f, words[i]);
    FUZZ_CHECK(fclose(f) == 0);
}

/* ------------------------------------------------------------ config */

static void make_config(void)
{
    static const char file[] = "# a service's config\n"
                               "listen = tcp://127.0.0.1:7101\n"
                               "shard_count = 8\n"
                               "; a comment\n"
                               "verbose = yes\n"
                               "deadline_ms: 2500\n"
                               "name = gateway-1 ; inline comment\n";
    seed("config_file", (const uint8_t *)file, sizeof file - 1);
    static const char file2[] = "fsync=off\nname=ledger-0\n";
    seed("config_file", (const uint8_t *)file2, sizeof file2 - 1);
    static const char flags[] = "--listen\0tcp://127.0.0.1:7000\0--shard_count=3\0--verbose\0"
                                "no\0positional\0--\0--name";
    seed("config_flags", (const uint8_t *)flags, sizeof flags - 1);
    static const char flags2[] = "--fsync\0--deadline_ms\0-5\0-h";
    seed("config_flags", (const uint8_t *)flags2, sizeof flags2 - 1);
    static const char *const file_words[] = {
        "listen", "shard_count", "deadline_ms", "verbose", "fsync",
        "name",   "=",           ":",           " ;",      "#",
        "[s]",    "\n",          "yes",         "off",     "-9223372036854775808",
        NULL};
    dict_words("config_file", file_words);
    static const char *const flag_words[] = {"--listen",
                                             "--shard_count",
                                             "--deadline_ms",
                                             "--verbose",
                                             "--fsync",
                                             "--name",
                                             "--",
                                             "--help",
                                             "=",
                                             "yes",
                                             "0",
                                             "-1",
                                             NULL};
    FILE *f = dict_open("config_flags");
    for (size_t i = 0; flag_words[i] != NULL; i++)
        dict_word(f, flag_words[i]);
    dict_bytes(f, (const uint8_t *)"\0", 1);
    FUZZ_CHECK(fclose(f) == 0);
}

/* ------------------------------------------------------------ state files */

static uint8_t *home_file(const char *home, const char *name, size_t *len)
{
    char path[FUZZ_PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", home, name);
    return fuzz_read_file(path, len);
}

static void make_states(void)
{
    char home[FUZZ_PATH_MAX];
    snprintf(home, sizeof home, "%s/home", fuzz_scratch_dir());
    mkdirs(home);

    device_state_t st = {0};
    snprintf(st.serial, sizeof st.serial, "%s", FUZZ_DEVICE_ID);
    st.balance = 500;
    st.counter = 7;
    st.pin.iterations = 100000;
    st.pin.tries_left = 3;
    memcpy(st.pin.salt, THIRTY_TWO, sizeof st.pin.salt);
    for (int phase = DEVICE_IDLE; phase <= DEVICE_REPORTED; phase++) {
        st.phase = (device_phase_t)phase;
        if (phase != DEVICE_IDLE) {
            snprintf(st.account_id, sizeof st.account_id, "%s", FUZZ_ACCOUNT_ID);
            st.amount = 12345;
            st.currency = 156;
            st.request = envelopes[PROTO_TYPE_LOAD_REQUEST];
            st.request_len = envelope_lens[PROTO_TYPE_LOAD_REQUEST];
        }
        if (phase == DEVICE_REPORTED) {
            st.report_status = 1;
            st.report = envelopes[PROTO_TYPE_EXECUTION_REPORT];
            st.report_len = envelope_lens[PROTO_TYPE_EXECUTION_REPORT];
            st.card_pending = true;
            st.card_amount = 200;
            snprintf(st.card_number, sizeof st.card_number, "%s", FUZZ_CARD_NUMBER);
            st.log_seq = 9;
            snprintf(st.log_pending, sizeof st.log_pending, "{\"seq\":9,\"op\":\"load\"}");
        }
        FUZZ_CHECK(wallet_state_save(home, &st) == 0);
        size_t len = 0;
        uint8_t *text = home_file(home, WALLET_STATE_FILE, &len);
        /* Without its checksum line: fuzz_state appends the right one. */
        size_t tail = strlen("checksum ") + 2 * PROTO_DIGEST_SIZE + 1;
        FUZZ_CHECK(len > tail);
        seed("wallet_state", text, len - tail);
        free(text);
    }
    static const char *const wallet_words[] = {"version ",
                                               "serial ",
                                               "balance ",
                                               "counter ",
                                               "phase ",
                                               "txn_id ",
                                               "account_id ",
                                               "amount ",
                                               "currency ",
                                               "request_digest ",
                                               "request ",
                                               "report_status ",
                                               "allow_digest ",
                                               "report ",
                                               "last_txn_id ",
                                               "last_outcome ",
                                               "pin_salt ",
                                               "pin_hash ",
                                               "pin_iterations ",
                                               "pin_tries_left ",
                                               "card_xfer_id ",
                                               "card_amount ",
                                               "card_number ",
                                               "log_seq ",
                                               "log_pending ",
                                               "checksum ",
                                               "\n",
                                               "#",
                                               "-1",
                                               "18446744073709551615",
                                               NULL};
    dict_words("wallet_state", wallet_words);

    card_state_t *cs = calloc(1, sizeof(*cs));
    FUZZ_CHECK(cs != NULL);
    snprintf(cs->number, sizeof cs->number, "%s", FUZZ_CARD_NUMBER);
    cs->max_balance = 100000;
    cs->pin.iterations = 100000;
    cs->pin.tries_left = 3;
    for (size_t n = 0; n <= 2; n++) {
        cs->transfer_count = n;
        cs->trusted_count = n;
        for (size_t i = 0; i < n; i++) {
            snprintf(cs->trusted[i], sizeof cs->trusted[i], "%s", FUZZ_DEVICE_ID);
            card_record_t *r = &cs->transfers[i];
            memcpy(r->transfer_id, SIXTEEN, sizeof r->transfer_id);
            r->transfer_id[0] = (uint8_t)i;
            snprintf(r->device_id, sizeof r->device_id, "%s", FUZZ_DEVICE_ID);
            r->amount = 2000;
            r->counter = i + 1;
            r->balance_after = 2000 * (int64_t)(i + 1);
            r->time_ms = UINT64_C(1765000000000);
        }
        cs->balance = 2000 * (int64_t)n;
        cs->counter = n;
        FUZZ_CHECK(card_state_save(home, cs) == 0);
        size_t len = 0;
        uint8_t *bytes = home_file(home, CARD_STATE_FILE, &len);
        FUZZ_CHECK(len > PROTO_DIGEST_SIZE);
        seed("card_state", bytes, len - PROTO_DIGEST_SIZE);
        free(bytes);
    }
    free(cs);
    const ProtobufCMessageDescriptor *d = &qccard__card_state__descriptor;
    dict_proto("card_state", &d, 1);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: fuzz_seed OUTDIR\n");
        return 2;
    }
    outdir = argv[1];
    char path[FUZZ_PATH_MAX];
    mkdirs(outdir);
    snprintf(path, sizeof path, "%s/seeds", outdir);
    mkdirs(path);
    snprintf(path, sizeof path, "%s/dict", outdir);
    mkdirs(path);
    make_pki();
    make_signed();
    make_rpc();
    make_families();
    make_audit();
    make_audit_frame();
    make_merkle();
    make_apdu();
    make_config();
    make_states();
    for (int t = 0; t < PROTO_TYPE_COUNT; t++)
        free(envelopes[t]);
    free(device_cert);
    return 0;
}
