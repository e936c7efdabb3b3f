/* signer_token.c - PKCS#11 access to the bank's token: module loading, login, keys, signing.
 *
 * This is the only file that includes the PKCS#11 header (p11-kit's v2.40 pkcs11.h): its
 * compatibility macros rename common lower-case words (value, count, parameter ...), so it
 * must not meet other headers' structures in the same translation unit. */
#include "signer_token.h"

#include <assert.h>
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/param_build.h>

#include "ops_log.h"
#include "proto_ecdsa.h"
#include "qc_error.h"

#include <p11-kit/pkcs11.h>

/* Slots a module may report; SoftHSM2 reports one per token plus a free one. */
#define SIGNER_SLOTS_MAX 64
/* SoftHSM2 reads its token directory once, at C_Initialize; a token another process is writing
 * at that moment can be missing from the slot list (seen by tests/chaos: two signers started at
 * once on one token). A start therefore looks again, a bounded number of times. */
#define SIGNER_TOKEN_LOOKS_MAX 10
#define SIGNER_TOKEN_LOOK_PAUSE_MS 200
/* DER of the P-256 OID (1.2.840.10045.3.1.7), the only curve we accept in CKA_EC_PARAMS. */
static const uint8_t signer_p256_oid[] = {0x06, 0x08, 0x2a, 0x86, 0x48,
                                          0xce, 0x3d, 0x03, 0x01, 0x07};
#define SIGNER_EC_POINT_RAW_SIZE 65 /* 0x04 || X || Y */
#define SIGNER_EC_POINT_MAX 128     /* CKA_EC_POINT buffer: the DER OCTET STRING of the point */
#define SIGNER_EC_PARAMS_MAX 64
/* Keys a signing session keeps a session copy of: the three kinds, a few versions each. */
#define SIGNER_SESSION_KEYS_MAX 16
#define SIGNER_KEY_ID_ATTR_MAX 16 /* "v9999" and room to spare */
/* Objects a key search collects: more than one match is an ambiguity we refuse. */
#define SIGNER_FIND_MAX 2

struct signer_token {
    void *dl;
    CK_FUNCTION_LIST_PTR p11;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE admin; /* opened by login; keeps the login alive, used for find/keygen */
    bool logged_in;
    atomic_int sessions; /* signing sessions open, checked at destroy */
};

/* A token key and this session's copy of it (signer_session_sign() says why). */
typedef struct signer_session_key {
    CK_OBJECT_HANDLE token; /* the token object, CKA_TOKEN true */
    CK_OBJECT_HANDLE copy;  /* its session copy; 0: none (the token refused one) */
} signer_session_key_t;

struct signer_session {
    signer_token_t *tok;
    CK_SESSION_HANDLE h;
    signer_session_key_t keys[SIGNER_SESSION_KEYS_MAX];
    size_t key_count;
};

struct signer_key {
    char label[SIGNER_KEY_LABEL_MAX + 1];
    uint32_t version;
    CK_OBJECT_HANDLE priv;
    EVP_PKEY *pub;
    uint8_t key_id[PROTO_KEY_ID_SIZE];
};

/* Names of the CK_RV values an operator is likely to meet; anything else is logged in hex. */
static const char *signer_rv_name(CK_RV rv)
{
    switch (rv) {
    case CKR_OK:
        return "CKR_OK";
    case CKR_PIN_INCORRECT:
        return "CKR_PIN_INCORRECT";
    case CKR_PIN_LOCKED:
        return "CKR_PIN_LOCKED";
    case CKR_USER_NOT_LOGGED_IN:
        return "CKR_USER_NOT_LOGGED_IN";
    case CKR_TOKEN_NOT_PRESENT:
        return "CKR_TOKEN_NOT_PRESENT";
    case CKR_DEVICE_REMOVED:
        return "CKR_DEVICE_REMOVED";
    case CKR_DEVICE_ERROR:
        return "CKR_DEVICE_ERROR";
    case CKR_SESSION_HANDLE_INVALID:
        return "CKR_SESSION_HANDLE_INVALID";
    case CKR_SESSION_COUNT:
        return "CKR_SESSION_COUNT";
    case CKR_KEY_HANDLE_INVALID:
        return "CKR_KEY_HANDLE_INVALID";
    case CKR_GENERAL_ERROR:
        return "CKR_GENERAL_ERROR";
    case CKR_ARGUMENTS_BAD:
        return "CKR_ARGUMENTS_BAD";
    default:
        return NULL;
    }
}

/* Logs a failed PKCS#11 call with its function name and return value. */
static void signer_log_rv(const char *call, CK_RV rv)
{
    char hex[32];
    const char *name = signer_rv_name(rv);
    if (name == NULL) {
        snprintf(hex, sizeof(hex), "0x%lx", (unsigned long)rv);
        name = hex;
    }
    ops_log(OPS_LOG_ERROR, "signer.pkcs11_error", "call", call, "rv", name, NULL);
}

/* ------------------------------------------------------------------ token */

/* Finds the slot whose token label, space padded to 32 bytes, equals label. */
static int signer_find_slot(signer_token_t *tok, const char *label)
{
    CK_SLOT_ID slots[SIGNER_SLOTS_MAX];
    CK_ULONG count = SIGNER_SLOTS_MAX;
    CK_RV rv = tok->p11->C_GetSlotList(CK_TRUE, slots, &count);
    if (rv != CKR_OK) {
        signer_log_rv("C_GetSlotList", rv);
        return QC_ECRYPTO;
    }
    uint8_t want[SIGNER_TOKEN_LABEL_MAX];
    memset(want, ' ', sizeof(want));
    memcpy(want, label, strlen(label));
    for (CK_ULONG i = 0; i < count; i++) {
        CK_TOKEN_INFO info;
        if (tok->p11->C_GetTokenInfo(slots[i], &info) != CKR_OK)
            continue;
        if (!(info.flags & CKF_TOKEN_INITIALIZED))
            continue;
        if (memcmp(info.label, want, sizeof(want)) == 0) {
            tok->slot = slots[i];
            return 0;
        }
    }
    return QC_ENOTFOUND;
}

int signer_token_open(const char *module_path, const char *token_label, signer_token_t **out)
{
    assert(module_path != NULL);
    assert(token_label != NULL);
    assert(out != NULL);
    *out = NULL;
    if (strlen(token_label) == 0 || strlen(token_label) > SIGNER_TOKEN_LABEL_MAX) {
        ops_log(OPS_LOG_ERROR, "signer.token_label_invalid", "token_label", token_label, NULL);
        return QC_EINVAL;
    }
    signer_token_t *tok = calloc(1, sizeof(*tok));
    if (tok == NULL)
        return QC_ENOMEM;
    atomic_init(&tok->sessions, 0);

    int rc = QC_EIO;
    tok->dl = dlopen(module_path, RTLD_NOW | RTLD_LOCAL);
    if (tok->dl == NULL) {
        const char *why = dlerror();
        ops_log(OPS_LOG_ERROR, "signer.module_missing", "module", module_path, "error",
                why != NULL ? why : "dlopen failed", NULL);
        goto err;
    }
    CK_C_GetFunctionList get_list;
    /* POSIX guarantees that a function pointer survives the round trip through void *. */
    *(void **)&get_list = dlsym(tok->dl, "C_GetFunctionList");
    if (get_list == NULL || get_list(&tok->p11) != CKR_OK || tok->p11 == NULL) {
        ops_log(OPS_LOG_ERROR, "signer.module_invalid", "module", module_path, "error",
                "no C_GetFunctionList", NULL);
        goto err;
    }

    for (int look = 1;; look++) {
        CK_C_INITIALIZE_ARGS init = {0};
        init.flags = CKF_OS_LOCKING_OK;
        CK_RV rv = tok->p11->C_Initialize(&init);
        if (rv != CKR_OK) {
            signer_log_rv("C_Initialize", rv);
            rc = QC_ECRYPTO;
            /* A module we did not initialize must not be finalized by us. */
            tok->p11 = NULL;
            goto err;
        }
        rc = signer_find_slot(tok, token_label);
        if (rc != QC_ENOTFOUND || look == SIGNER_TOKEN_LOOKS_MAX)
            break;
        tok->p11->C_Finalize(NULL);
        struct timespec pause = {0, SIGNER_TOKEN_LOOK_PAUSE_MS * 1000000L};
        nanosleep(&pause, NULL);
    }
    if (rc == QC_ENOTFOUND)
        ops_log(OPS_LOG_ERROR, "signer.token_missing", "token_label", token_label, NULL);
    if (rc != 0)
        goto err;
    *out = tok;
    return 0;

err:
    if (tok->p11 != NULL)
        tok->p11->C_Finalize(NULL);
    /* The module is deliberately never dlclose()d: see signer_token_destroy(). */
    free(tok);
    return rc;
}

int signer_token_login(signer_token_t *tok, const char *pin, size_t pin_len)
{
    assert(tok != NULL);
    assert(pin != NULL);
    assert(!tok->logged_in);
    if (pin_len == 0 || pin_len > SIGNER_PIN_MAX)
        return QC_EINVAL;
    CK_RV rv = tok->p11->C_OpenSession(tok->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                                       &tok->admin);
    if (rv != CKR_OK) {
        signer_log_rv("C_OpenSession", rv);
        return QC_ECRYPTO;
    }
    /* PKCS#11 takes the PIN as a non-const pointer but does not write through it. */
    rv = tok->p11->C_Login(tok->admin, CKU_USER, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)pin_len);
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
        signer_log_rv("C_Login", rv);
        tok->p11->C_CloseSession(tok->admin);
        tok->admin = CK_INVALID_HANDLE;
        if (rv == CKR_PIN_INCORRECT)
            return QC_EPIN;
        if (rv == CKR_PIN_LOCKED)
            return QC_ELOCKED;
        return QC_ECRYPTO;
    }
    tok->logged_in = true;
    return 0;
}

void signer_token_destroy(signer_token_t **tok_p)
{
    if (tok_p == NULL || *tok_p == NULL)
        return;
    signer_token_t *tok = *tok_p;
    assert(atomic_load(&tok->sessions) == 0);
    if (tok->admin != CK_INVALID_HANDLE)
        tok->p11->C_CloseSession(tok->admin);
    tok->p11->C_Finalize(NULL);
    /* The module stays mapped: modules such as SoftHSM2 keep singletons (and threads in
     * some HSM clients) past C_Finalize, and unmapping them under a live reference crashes;
     * a process opens its token once, so nothing accumulates. */
    free(tok);
    *tok_p = NULL;
}

/* ------------------------------------------------------------------ keys */

/* Formats the CKA_ID of version ("v1") into buf; returns its length. */
static size_t signer_version_id(uint32_t version, char buf[SIGNER_KEY_ID_ATTR_MAX])
{
    int n = snprintf(buf, SIGNER_KEY_ID_ATTR_MAX, "v%u", (unsigned)version);
    assert(n > 0);
    assert(n < SIGNER_KEY_ID_ATTR_MAX);
    return (size_t)n;
}

static bool signer_name_ok(const char *label, uint32_t version)
{
    size_t n = strlen(label);
    return n > 0 && n <= SIGNER_KEY_LABEL_MAX && version >= 1 && version <= SIGNER_KEY_VERSION_MAX;
}

/* Collects up to SIGNER_FIND_MAX objects of class cls named label/version into found.
 * Returns 0 and sets *count, or QC_ECRYPTO. */
static int signer_find(signer_token_t *tok, CK_OBJECT_CLASS cls, const char *label,
                       uint32_t version, CK_OBJECT_HANDLE found[SIGNER_FIND_MAX], CK_ULONG *count)
{
    char id[SIGNER_KEY_ID_ATTR_MAX];
    size_t id_len = signer_version_id(version, id);
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_LABEL, (void *)label, strlen(label)},
        {CKA_ID, id, id_len},
    };
    CK_RV rv = tok->p11->C_FindObjectsInit(tok->admin, tmpl, sizeof(tmpl) / sizeof(tmpl[0]));
    if (rv != CKR_OK) {
        signer_log_rv("C_FindObjectsInit", rv);
        return QC_ECRYPTO;
    }
    rv = tok->p11->C_FindObjects(tok->admin, found, SIGNER_FIND_MAX, count);
    CK_RV rv_final = tok->p11->C_FindObjectsFinal(tok->admin);
    if (rv != CKR_OK || rv_final != CKR_OK) {
        signer_log_rv("C_FindObjects", rv != CKR_OK ? rv : rv_final);
        return QC_ECRYPTO;
    }
    return 0;
}

/* Builds an OpenSSL public key from CKA_EC_PARAMS and CKA_EC_POINT. The point is either the
 * DER OCTET STRING PKCS#11 v2.40 specifies (SoftHSM2) or the bare uncompressed point that
 * some modules return. Returns 0, QC_ECONFIG (not P-256 or a bad point), QC_ECRYPTO. */
static int signer_pub_from_attrs(const uint8_t *params, size_t params_len, const uint8_t *point,
                                 size_t point_len, EVP_PKEY **out)
{
    *out = NULL;
    if (params_len != sizeof(signer_p256_oid) ||
        memcmp(params, signer_p256_oid, sizeof(signer_p256_oid)) != 0)
        return QC_ECONFIG;
    if (point_len == SIGNER_EC_POINT_RAW_SIZE + 2 && point[0] == 0x04 &&
        point[1] == SIGNER_EC_POINT_RAW_SIZE) {
        point += 2;
        point_len -= 2;
    }
    if (point_len != SIGNER_EC_POINT_RAW_SIZE || point[0] != 0x04)
        return QC_ECONFIG;

    int rc = QC_ECRYPTO;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *ossl_params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    if (bld == NULL)
        goto done;
    if (OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) != 1 ||
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, point_len) != 1)
        goto done;
    ossl_params = OSSL_PARAM_BLD_to_param(bld);
    if (ossl_params == NULL)
        goto done;
    ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1)
        goto done;
    if (EVP_PKEY_fromdata(ctx, out, EVP_PKEY_PUBLIC_KEY, ossl_params) != 1) {
        rc = QC_ECONFIG; /* not a point on the curve */
        goto done;
    }
    rc = 0;
done:
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(ossl_params);
    OSSL_PARAM_BLD_free(bld);
    return rc;
}

/* Reads the public key object pub_obj into key->pub and computes key->key_id. */
static int signer_read_public(signer_token_t *tok, CK_OBJECT_HANDLE pub_obj, signer_key_t *key)
{
    uint8_t params[SIGNER_EC_PARAMS_MAX];
    uint8_t point[SIGNER_EC_POINT_MAX];
    CK_ATTRIBUTE attrs[] = {
        {CKA_EC_PARAMS, params, sizeof(params)},
        {CKA_EC_POINT, point, sizeof(point)},
    };
    CK_RV rv = tok->p11->C_GetAttributeValue(tok->admin, pub_obj, attrs, 2);
    if (rv != CKR_OK) {
        signer_log_rv("C_GetAttributeValue", rv);
        return QC_ECONFIG;
    }
    int rc =
        signer_pub_from_attrs(params, attrs[0].ulValueLen, point, attrs[1].ulValueLen, &key->pub);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "signer.key_unusable", "label", key->label, "error",
                "public key is not a P-256 point", NULL);
        return rc;
    }
    return proto_key_id(key->pub, key->key_id) == 0 ? 0 : QC_ECRYPTO;
}

/* Checks that the private key may sign and is an EC key. */
static int signer_check_private(signer_token_t *tok, CK_OBJECT_HANDLE priv, const char *label)
{
    CK_KEY_TYPE type = 0;
    CK_BBOOL can_sign = CK_FALSE;
    CK_ATTRIBUTE attrs[] = {
        {CKA_KEY_TYPE, &type, sizeof(type)},
        {CKA_SIGN, &can_sign, sizeof(can_sign)},
    };
    CK_RV rv = tok->p11->C_GetAttributeValue(tok->admin, priv, attrs, 2);
    if (rv != CKR_OK) {
        signer_log_rv("C_GetAttributeValue", rv);
        return QC_ECONFIG;
    }
    if (type != CKK_EC || can_sign != CK_TRUE) {
        ops_log(OPS_LOG_ERROR, "signer.key_unusable", "label", label, "error",
                "private key is not an EC key allowed to sign", NULL);
        return QC_ECONFIG;
    }
    return 0;
}

int signer_token_find_key(signer_token_t *tok, const char *label, uint32_t version,
                          signer_key_t **out)
{
    assert(tok != NULL);
    assert(label != NULL);
    assert(out != NULL);
    assert(tok->logged_in);
    *out = NULL;
    if (!signer_name_ok(label, version))
        return QC_EINVAL;
    char version_text[SIGNER_KEY_ID_ATTR_MAX];
    signer_version_id(version, version_text);

    CK_OBJECT_HANDLE privs[SIGNER_FIND_MAX], pubs[SIGNER_FIND_MAX];
    CK_ULONG priv_count = 0, pub_count = 0;
    int rc = signer_find(tok, CKO_PRIVATE_KEY, label, version, privs, &priv_count);
    if (rc == 0)
        rc = signer_find(tok, CKO_PUBLIC_KEY, label, version, pubs, &pub_count);
    if (rc != 0)
        return rc;
    if (priv_count == 0 || pub_count == 0) {
        ops_log(OPS_LOG_ERROR, "signer.key_missing", "label", label, "version", version_text,
                "error", priv_count == 0 ? "no private key" : "no public key", NULL);
        return QC_EKEYID;
    }
    if (priv_count > 1 || pub_count > 1) {
        ops_log(OPS_LOG_ERROR, "signer.key_ambiguous", "label", label, "version", version_text,
                NULL);
        return QC_ECONFIG;
    }
    rc = signer_check_private(tok, privs[0], label);
    if (rc != 0)
        return rc;

    signer_key_t *key = calloc(1, sizeof(*key));
    if (key == NULL)
        return QC_ENOMEM;
    snprintf(key->label, sizeof(key->label), "%s", label);
    key->version = version;
    key->priv = privs[0];
    rc = signer_read_public(tok, pubs[0], key);
    if (rc != 0) {
        signer_key_destroy(&key);
        return rc;
    }
    *out = key;
    return 0;
}

int signer_token_generate_key(signer_token_t *tok, const char *label, uint32_t version,
                              signer_key_t **out)
{
    assert(tok != NULL);
    assert(label != NULL);
    assert(out != NULL);
    assert(tok->logged_in);
    *out = NULL;
    if (!signer_name_ok(label, version))
        return QC_EINVAL;
    CK_OBJECT_HANDLE found[SIGNER_FIND_MAX];
    CK_ULONG n_priv = 0, n_pub = 0;
    int rc = signer_find(tok, CKO_PRIVATE_KEY, label, version, found, &n_priv);
    if (rc == 0)
        rc = signer_find(tok, CKO_PUBLIC_KEY, label, version, found, &n_pub);
    if (rc != 0)
        return rc;
    if (n_priv > 0 || n_pub > 0)
        return QC_EEXIST;

    char id[SIGNER_KEY_ID_ATTR_MAX];
    size_t id_len = signer_version_id(version, id);
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_KEY_TYPE key_type = CKK_EC;
    CK_OBJECT_CLASS pub_class = CKO_PUBLIC_KEY, priv_class = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE pub_tmpl[] = {
        {CKA_CLASS, &pub_class, sizeof(pub_class)},
        {CKA_KEY_TYPE, &key_type, sizeof(key_type)},
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &no, sizeof(no)},
        {CKA_VERIFY, &yes, sizeof(yes)},
        {CKA_ENCRYPT, &no, sizeof(no)},
        {CKA_WRAP, &no, sizeof(no)},
        {CKA_EC_PARAMS, (void *)signer_p256_oid, sizeof(signer_p256_oid)},
        {CKA_LABEL, (void *)label, strlen(label)},
        {CKA_ID, id, id_len},
    };
    CK_ATTRIBUTE priv_tmpl[] = {
        {CKA_CLASS, &priv_class, sizeof(priv_class)},
        {CKA_KEY_TYPE, &key_type, sizeof(key_type)},
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, &yes, sizeof(yes)},
        {CKA_EXTRACTABLE, &no, sizeof(no)},
        {CKA_SIGN, &yes, sizeof(yes)},
        {CKA_DECRYPT, &no, sizeof(no)},
        {CKA_UNWRAP, &no, sizeof(no)},
        {CKA_DERIVE, &no, sizeof(no)},
        {CKA_LABEL, (void *)label, strlen(label)},
        {CKA_ID, id, id_len},
    };
    CK_MECHANISM mech = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_OBJECT_HANDLE pub_obj, priv_obj;
    CK_RV rv = tok->p11->C_GenerateKeyPair(
        tok->admin, &mech, pub_tmpl, sizeof(pub_tmpl) / sizeof(pub_tmpl[0]), priv_tmpl,
        sizeof(priv_tmpl) / sizeof(priv_tmpl[0]), &pub_obj, &priv_obj);
    if (rv != CKR_OK) {
        signer_log_rv("C_GenerateKeyPair", rv);
        return QC_ECRYPTO;
    }
    return signer_token_find_key(tok, label, version, out);
}

const char *signer_key_label(const signer_key_t *key)
{
    assert(key != NULL);
    return key->label;
}

uint32_t signer_key_version(const signer_key_t *key)
{
    assert(key != NULL);
    return key->version;
}

EVP_PKEY *signer_key_public(const signer_key_t *key)
{
    assert(key != NULL);
    assert(key->pub != NULL);
    return key->pub;
}

const uint8_t *signer_key_id(const signer_key_t *key)
{
    assert(key != NULL);
    return key->key_id;
}

void signer_key_destroy(signer_key_t **key_p)
{
    if (key_p == NULL || *key_p == NULL)
        return;
    EVP_PKEY_free((*key_p)->pub);
    free(*key_p);
    *key_p = NULL;
}

/* ------------------------------------------------------------------ sessions */

int signer_session_open(signer_token_t *tok, signer_session_t **out)
{
    assert(tok != NULL);
    assert(out != NULL);
    assert(tok->logged_in);
    *out = NULL;
    signer_session_t *sess = calloc(1, sizeof(*sess));
    if (sess == NULL)
        return QC_ENOMEM;
    CK_RV rv = tok->p11->C_OpenSession(tok->slot, CKF_SERIAL_SESSION, NULL, NULL, &sess->h);
    if (rv != CKR_OK) {
        signer_log_rv("C_OpenSession", rv);
        free(sess);
        return rv == CKR_SESSION_COUNT ? QC_EBUSY : QC_ECRYPTO;
    }
    sess->tok = tok;
    atomic_fetch_add(&tok->sessions, 1);
    *out = sess;
    return 0;
}

/* True when the object may not leave the token: sensitive and not extractable. */
static bool signer_object_sealed(signer_session_t *sess, CK_OBJECT_HANDLE obj)
{
    CK_BBOOL sensitive = CK_FALSE, extractable = CK_TRUE, token = CK_TRUE;
    CK_ATTRIBUTE attrs[] = {
        {CKA_SENSITIVE, &sensitive, sizeof(sensitive)},
        {CKA_EXTRACTABLE, &extractable, sizeof(extractable)},
        {CKA_TOKEN, &token, sizeof(token)},
    };
    return sess->tok->p11->C_GetAttributeValue(sess->h, obj, attrs, 3) == CKR_OK &&
           sensitive == CK_TRUE && extractable == CK_FALSE && token == CK_FALSE;
}

/* The object this session signs with for the token key priv: a session copy made the first
 * time (C_CopyObject with CKA_TOKEN false), or priv itself when the token refuses to copy it
 * (CKA_COPYABLE false, as many hardware tokens set it) or the copy is not sealed.
 *
 * Why a copy: SoftHSM2 (the default module) keeps token objects in files and, on every
 * C_SignInit with one, opens, locks and re-reads the object's file to see whether another
 * process changed it; a session object lives in the module's memory. Measured on the 2-core
 * test machine: C_SignInit + C_Sign fell from 125 to 63 us of CPU (docs/PERFORMANCE.md). The
 * copy is made inside the token, inherits CKA_SENSITIVE and not CKA_EXTRACTABLE (checked),
 * never leaves it, and is destroyed with the session (C_CloseSession). */
static CK_OBJECT_HANDLE signer_session_handle(signer_session_t *sess, CK_OBJECT_HANDLE priv)
{
    for (size_t i = 0; i < sess->key_count; i++) {
        if (sess->keys[i].token == priv) {
            assert(sess->keys[i].copy != priv);
            return sess->keys[i].copy != 0 ? sess->keys[i].copy : priv;
        }
    }
    if (sess->key_count == SIGNER_SESSION_KEYS_MAX)
        return priv; /* more keys than expected: sign with the token object */
    CK_BBOOL no = CK_FALSE;
    CK_ATTRIBUTE tmpl[] = {{CKA_TOKEN, &no, sizeof(no)}};
    CK_OBJECT_HANDLE copy = 0;
    CK_RV rv = sess->tok->p11->C_CopyObject(sess->h, priv, tmpl, 1, &copy);
    if (rv == CKR_OK && !signer_object_sealed(sess, copy)) {
        QC_IGNORE(sess->tok->p11->C_DestroyObject(sess->h, copy)); /* unused either way */
        copy = 0;
    } else if (rv != CKR_OK) {
        char hex[32];
        snprintf(hex, sizeof(hex), "0x%lx", (unsigned long)rv);
        copy = 0;
        ops_log(OPS_LOG_INFO, "signer.session_copy_refused", "rv",
                signer_rv_name(rv) != NULL ? signer_rv_name(rv) : hex, NULL);
    }
    sess->keys[sess->key_count].token = priv;
    sess->keys[sess->key_count].copy = copy;
    sess->key_count++;
    return copy != 0 ? copy : priv;
}

int signer_session_sign(signer_session_t *sess, const signer_key_t *key,
                        const uint8_t digest[PROTO_DIGEST_SIZE], uint8_t raw[PROTO_SIG_RAW_SIZE])
{
    assert(sess != NULL);
    assert(key != NULL);
    assert(digest != NULL);
    assert(raw != NULL);
    CK_FUNCTION_LIST_PTR p11 = sess->tok->p11;
    CK_MECHANISM mech = {CKM_ECDSA, NULL, 0};
    CK_RV rv = p11->C_SignInit(sess->h, &mech, signer_session_handle(sess, key->priv));
    if (rv == CKR_OK) {
        CK_ULONG len = PROTO_SIG_RAW_SIZE;
        /* C_Sign takes the data as non-const but only reads it. */
        rv = p11->C_Sign(sess->h, (CK_BYTE_PTR)digest, PROTO_DIGEST_SIZE, raw, &len);
        if (rv == CKR_OK && len != PROTO_SIG_RAW_SIZE) {
            ops_log(OPS_LOG_ERROR, "signer.pkcs11_error", "call", "C_Sign", "error",
                    "signature is not 64 bytes", NULL);
            return QC_ECRYPTO;
        }
    }
    if (rv == CKR_OK) {
        /* A token returns either of the two valid forms of s; the bank emits only the low
         * one, so every signature it makes has one encoding and verifiers may refuse the
         * other (docs/PROTOCOL.md). */
        if (proto_ecdsa_raw_low_s(raw) >= 0)
            return 0;
        ops_log(OPS_LOG_ERROR, "signer.pkcs11_error", "call", "C_Sign", "error",
                "s is not below the group order", NULL);
        return QC_ECRYPTO;
    }
    signer_log_rv("C_Sign", rv);
    if (rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT ||
        rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED)
        return QC_EUNAVAIL;
    return QC_ECRYPTO;
}

size_t signer_session_copies(const signer_session_t *sess)
{
    assert(sess != NULL);
    assert(sess->key_count <= SIGNER_SESSION_KEYS_MAX);
    size_t n = 0;
    for (size_t i = 0; i < sess->key_count; i++)
        n += sess->keys[i].copy != 0;
    return n;
}

void signer_session_destroy(signer_session_t **sess_p)
{
    if (sess_p == NULL || *sess_p == NULL)
        return;
    signer_session_t *sess = *sess_p;
    sess->tok->p11->C_CloseSession(sess->h);
    atomic_fetch_sub(&sess->tok->sessions, 1);
    OPENSSL_cleanse(sess, sizeof(*sess));
    free(sess);
    *sess_p = NULL;
}
