/* wallet_token.c - PKCS#11 access to the wallet's token: module, login, keys, signing.
 *
 * The only file of the wallet that includes the PKCS#11 header (p11-kit's v2.40 pkcs11.h),
 * whose compatibility macros rename common lower-case words. The signer has its own
 * PKCS#11 front end (signer/signer_token.c); services and programs share no code above
 * proto/, and the two differ in what they need (threads and key versions there; token
 * creation, import and a tries object here). */
#include "wallet_token.h"

#include <assert.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/param_build.h>

#include "device_home.h"
#include "device_pki.h"
#include "ops_log.h"
#include "proto_ecdsa.h"

#include <p11-kit/pkcs11.h>

#define TOKEN_SLOTS_MAX 64
#define TOKEN_FIND_MAX 2 /* more than one match is an ambiguity we refuse */
#define TOKEN_EC_POINT_RAW_SIZE 65
#define TOKEN_EC_POINT_MAX 128
#define TOKEN_EC_PARAMS_MAX 64
#define TOKEN_SCALAR_SIZE 32
#define TOKEN_DIR_MODE 0700
#define TOKEN_CONF_MODE 0600
#define TOKEN_CONF_MAX 1024

/* DER of the P-256 OID (1.2.840.10045.3.1.7). */
static const uint8_t token_p256_oid[] = {0x06, 0x08, 0x2a, 0x86, 0x48,
                                         0xce, 0x3d, 0x03, 0x01, 0x07};

struct wallet_token {
    void *dl;
    CK_FUNCTION_LIST_PTR p11;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE session; /* one R/W session for everything */
    bool logged_in;
};

static void token_log_rv(const char *call, CK_RV rv)
{
    char hex[32];
    snprintf(hex, sizeof(hex), "0x%lx", (unsigned long)rv);
    ops_log(OPS_LOG_ERROR, "wallet.pkcs11_error", "call", call, "rv", hex, NULL);
}

static const char *key_label(wallet_token_key_t key)
{
    return key == WALLET_TOKEN_KEY_DEVICE ? WALLET_TOKEN_DEVICE_KEY : WALLET_TOKEN_STATE_KEY;
}

/* ------------------------------------------------------------------ open, create */

static int find_slot(wallet_token_t *tok, const char *label, bool initialized)
{
    CK_SLOT_ID slots[TOKEN_SLOTS_MAX];
    CK_ULONG count = TOKEN_SLOTS_MAX;
    CK_RV rv = tok->p11->C_GetSlotList(CK_TRUE, slots, &count);
    if (rv != CKR_OK) {
        token_log_rv("C_GetSlotList", rv);
        return QC_ECRYPTO;
    }
    uint8_t want[WALLET_TOKEN_LABEL_MAX];
    memset(want, ' ', sizeof(want));
    memcpy(want, label, strlen(label));
    for (CK_ULONG i = 0; i < count; i++) {
        CK_TOKEN_INFO info;
        if (tok->p11->C_GetTokenInfo(slots[i], &info) != CKR_OK)
            continue;
        bool init = (info.flags & CKF_TOKEN_INITIALIZED) != 0;
        if (init != initialized)
            continue;
        if (!initialized || memcmp(info.label, want, sizeof(want)) == 0) {
            tok->slot = slots[i];
            return 0;
        }
    }
    return QC_EUNAVAIL;
}

/* dlopen, C_GetFunctionList, C_Initialize (single-threaded use: no locking asked for). */
static int token_load(const char *module, wallet_token_t **out)
{
    *out = NULL;
    wallet_token_t *tok = calloc(1, sizeof(*tok));
    if (tok == NULL)
        return QC_ENOMEM;
    tok->session = CK_INVALID_HANDLE;
    tok->dl = dlopen(module, RTLD_NOW | RTLD_LOCAL);
    if (tok->dl == NULL) {
        const char *why = dlerror();
        ops_log(OPS_LOG_ERROR, "wallet.token_module_missing", "module", module, "error",
                why != NULL ? why : "dlopen failed", NULL);
        free(tok);
        return QC_EIO;
    }
    CK_C_GetFunctionList get_list;
    *(void **)&get_list = dlsym(tok->dl, "C_GetFunctionList");
    if (get_list == NULL || get_list(&tok->p11) != CKR_OK || tok->p11 == NULL) {
        ops_log(OPS_LOG_ERROR, "wallet.token_module_invalid", "module", module, NULL);
        free(tok);
        return QC_EIO;
    }
    CK_RV rv = tok->p11->C_Initialize(NULL);
    if (rv != CKR_OK) {
        token_log_rv("C_Initialize", rv);
        free(tok);
        return QC_ECRYPTO;
    }
    *out = tok;
    return 0;
}

static int session_open(wallet_token_t *tok)
{
    CK_RV rv = tok->p11->C_OpenSession(tok->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                                       &tok->session);
    if (rv != CKR_OK) {
        token_log_rv("C_OpenSession", rv);
        return QC_ECRYPTO;
    }
    return 0;
}

/* Points SOFTHSM2_CONF at HOME/token/softhsm2.conf; QC_EUNAVAIL when it is not there. */
static int use_home_conf(const char *home)
{
    char dir[DEVICE_PATH_MAX], conf[DEVICE_PATH_MAX];
    if (device_home_path(home, WALLET_TOKEN_DIR, dir) != 0 ||
        device_home_path(dir, WALLET_TOKEN_SOFTHSM_CONF, conf) != 0)
        return QC_EINVAL;
    if (access(conf, R_OK) != 0) {
        ops_log(OPS_LOG_ERROR, "wallet.token_absent", "path", conf, NULL);
        return QC_EUNAVAIL;
    }
    return setenv("SOFTHSM2_CONF", conf, 1) == 0 ? 0 : QC_ENOMEM;
}

int wallet_token_open(const char *home, bool home_token, const char *module, const char *label,
                      wallet_token_t **out)
{
    assert(home != NULL);
    assert(module != NULL);
    assert(label != NULL);
    assert(out != NULL);
    *out = NULL;
    if (strlen(label) == 0 || strlen(label) > WALLET_TOKEN_LABEL_MAX)
        return QC_EINVAL;
    int rc = home_token ? use_home_conf(home) : 0;
    if (rc != 0)
        return rc;
    wallet_token_t *tok = NULL;
    rc = token_load(module, &tok);
    if (rc != 0)
        return rc;
    rc = find_slot(tok, label, true);
    if (rc == QC_EUNAVAIL)
        ops_log(OPS_LOG_ERROR, "wallet.token_absent", "token_label", label, NULL);
    if (rc == 0)
        rc = session_open(tok);
    if (rc != 0) {
        wallet_token_destroy(&tok);
        return rc;
    }
    *out = tok;
    return 0;
}

/* Writes HOME/token/softhsm2.conf and makes HOME/token/tokens. */
static int make_home_token_dir(const char *home)
{
    char dir[DEVICE_PATH_MAX], tokens[DEVICE_PATH_MAX];
    if (device_home_path(home, WALLET_TOKEN_DIR, dir) != 0 ||
        device_home_path(dir, "tokens", tokens) != 0)
        return QC_EINVAL;
    if (mkdir(dir, TOKEN_DIR_MODE) != 0)
        return errno == EEXIST ? QC_EEXIST : QC_EIO;
    if (mkdir(tokens, TOKEN_DIR_MODE) != 0)
        return QC_EIO;
    char conf[TOKEN_CONF_MAX];
    int n = snprintf(conf, sizeof(conf),
                     "# SoftHSM2 token of one quancun wallet (qc-wallet init): its USB key.\n"
                     "directories.tokendir = %s\n"
                     "objectstore.backend = file\n"
                     "log.level = ERROR\n"
                     "slots.removable = false\n",
                     tokens);
    if (n < 0 || (size_t)n >= sizeof(conf))
        return QC_EINVAL;
    return device_home_write(dir, WALLET_TOKEN_SOFTHSM_CONF, (const uint8_t *)conf, (size_t)n,
                             TOKEN_CONF_MODE);
}

int wallet_token_create(const char *home, const char *module, const char *label, const char *so_pin,
                        size_t so_pin_len, const char *pin, size_t pin_len, wallet_token_t **out)
{
    assert(home != NULL);
    assert(so_pin != NULL);
    assert(pin != NULL);
    assert(out != NULL);
    *out = NULL;
    if (strlen(label) == 0 || strlen(label) > WALLET_TOKEN_LABEL_MAX || so_pin_len == 0 ||
        so_pin_len > WALLET_TOKEN_PIN_MAX || pin_len == 0 || pin_len > WALLET_TOKEN_PIN_MAX)
        return QC_EINVAL;
    int rc = make_home_token_dir(home);
    if (rc == 0)
        rc = use_home_conf(home);
    wallet_token_t *tok = NULL;
    if (rc == 0)
        rc = token_load(module, &tok);
    if (rc == 0)
        rc = find_slot(tok, label, false);
    if (rc != 0) {
        wallet_token_destroy(&tok);
        return rc;
    }
    CK_UTF8CHAR padded[WALLET_TOKEN_LABEL_MAX];
    memset(padded, ' ', sizeof(padded));
    memcpy(padded, label, strlen(label));
    /* PKCS#11 takes PINs as non-const pointers but does not write through them. */
    CK_RV rv = tok->p11->C_InitToken(tok->slot, (CK_UTF8CHAR_PTR)so_pin, so_pin_len, padded);
    if (rv != CKR_OK) {
        token_log_rv("C_InitToken", rv);
        wallet_token_destroy(&tok);
        return QC_ECRYPTO;
    }
    /* SoftHSM2 gives an initialized token a new slot id: look it up by its label. */
    rc = find_slot(tok, label, true);
    if (rc == 0)
        rc = session_open(tok);
    if (rc == 0) {
        rv = tok->p11->C_Login(tok->session, CKU_SO, (CK_UTF8CHAR_PTR)so_pin, so_pin_len);
        if (rv == CKR_OK)
            rv = tok->p11->C_InitPIN(tok->session, (CK_UTF8CHAR_PTR)pin, pin_len);
        if (rv == CKR_OK)
            rv = tok->p11->C_Logout(tok->session);
        if (rv != CKR_OK) {
            token_log_rv("C_InitPIN", rv);
            rc = QC_ECRYPTO;
        }
    }
    if (rc == 0) {
        rv = tok->p11->C_Login(tok->session, CKU_USER, (CK_UTF8CHAR_PTR)pin, pin_len);
        if (rv != CKR_OK) {
            token_log_rv("C_Login", rv);
            rc = QC_ECRYPTO;
        }
        tok->logged_in = rv == CKR_OK;
    }
    if (rc != 0) {
        wallet_token_destroy(&tok);
        return rc;
    }
    *out = tok;
    return 0;
}

void wallet_token_destroy(wallet_token_t **tok_p)
{
    if (tok_p == NULL || *tok_p == NULL)
        return;
    wallet_token_t *tok = *tok_p;
    if (tok->p11 != NULL) {
        if (tok->logged_in)
            (void)tok->p11->C_Logout(tok->session);
        if (tok->session != CK_INVALID_HANDLE)
            (void)tok->p11->C_CloseSession(tok->session);
        (void)tok->p11->C_Finalize(NULL);
    }
    /* The module stays mapped, as in the signer: SoftHSM2 keeps singletons past C_Finalize. */
    OPENSSL_cleanse(tok, sizeof(*tok));
    free(tok);
    *tok_p = NULL;
}

/* ------------------------------------------------------------------ objects */

/* Collects up to TOKEN_FIND_MAX objects of class cls labelled label. */
static int find_objects(wallet_token_t *tok, CK_OBJECT_CLASS cls, const char *label,
                        CK_OBJECT_HANDLE found[TOKEN_FIND_MAX], CK_ULONG *count)
{
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_LABEL, (void *)label, strlen(label)},
    };
    *count = 0;
    CK_RV rv = tok->p11->C_FindObjectsInit(tok->session, tmpl, 2);
    if (rv != CKR_OK) {
        token_log_rv("C_FindObjectsInit", rv);
        return QC_ECRYPTO;
    }
    rv = tok->p11->C_FindObjects(tok->session, found, TOKEN_FIND_MAX, count);
    CK_RV rv_final = tok->p11->C_FindObjectsFinal(tok->session);
    if (rv != CKR_OK || rv_final != CKR_OK) {
        token_log_rv("C_FindObjects", rv != CKR_OK ? rv : rv_final);
        return QC_ECRYPTO;
    }
    return 0;
}

/* Finds the one object of class cls labelled label: QC_EKEYID none, QC_ECONFIG several. */
static int find_one(wallet_token_t *tok, CK_OBJECT_CLASS cls, const char *label,
                    CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_HANDLE found[TOKEN_FIND_MAX];
    CK_ULONG count = 0;
    int rc = find_objects(tok, cls, label, found, &count);
    if (rc != 0)
        return rc;
    if (count == 0)
        return QC_EKEYID;
    if (count > 1) {
        ops_log(OPS_LOG_ERROR, "wallet.token_key_ambiguous", "label", label, NULL);
        return QC_ECONFIG;
    }
    *out = found[0];
    return 0;
}

/* Builds an OpenSSL public key from a P-256 point (DER OCTET STRING, as PKCS#11 v2.40 says,
 * or bare, as some modules return it). */
static int pub_from_point(const uint8_t *point, size_t point_len, EVP_PKEY **out)
{
    *out = NULL;
    if (point_len == TOKEN_EC_POINT_RAW_SIZE + 2 && point[0] == 0x04 &&
        point[1] == TOKEN_EC_POINT_RAW_SIZE) {
        point += 2;
        point_len -= 2;
    }
    if (point_len != TOKEN_EC_POINT_RAW_SIZE || point[0] != 0x04)
        return QC_ECONFIG;
    int rc = QC_ECRYPTO;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    if (bld == NULL ||
        OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) != 1 ||
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, point_len) != 1)
        goto done;
    params = OSSL_PARAM_BLD_to_param(bld);
    ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (params == NULL || ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1)
        goto done;
    rc = EVP_PKEY_fromdata(ctx, out, EVP_PKEY_PUBLIC_KEY, params) == 1 ? 0 : QC_ECONFIG;
done:
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    return rc;
}

int wallet_token_public(wallet_token_t *tok, wallet_token_key_t key, EVP_PKEY **out)
{
    assert(tok != NULL);
    assert(out != NULL);
    *out = NULL;
    CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE;
    int rc = find_one(tok, CKO_PUBLIC_KEY, key_label(key), &pub);
    if (rc != 0)
        return rc;
    uint8_t params[TOKEN_EC_PARAMS_MAX], point[TOKEN_EC_POINT_MAX];
    CK_ATTRIBUTE attrs[] = {
        {CKA_EC_PARAMS, params, sizeof(params)},
        {CKA_EC_POINT, point, sizeof(point)},
    };
    CK_RV rv = tok->p11->C_GetAttributeValue(tok->session, pub, attrs, 2);
    if (rv != CKR_OK) {
        token_log_rv("C_GetAttributeValue", rv);
        return QC_ECONFIG;
    }
    if (attrs[0].ulValueLen != sizeof(token_p256_oid) ||
        memcmp(params, token_p256_oid, sizeof(token_p256_oid)) != 0)
        return QC_ECONFIG;
    return pub_from_point(point, attrs[1].ulValueLen, out);
}

/* The attributes of a private key the wallet keeps: inside, for signing only. */
#define PRIVATE_KEY_ATTRS(label, yes, no)                                                          \
    {CKA_TOKEN, &(yes), sizeof(yes)}, {CKA_PRIVATE, &(yes), sizeof(yes)},                          \
        {CKA_SENSITIVE, &(yes), sizeof(yes)}, {CKA_EXTRACTABLE, &(no), sizeof(no)},                \
        {CKA_SIGN, &(yes), sizeof(yes)}, {CKA_DECRYPT, &(no), sizeof(no)},                         \
        {CKA_UNWRAP, &(no), sizeof(no)}, {CKA_DERIVE, &(no), sizeof(no)},                          \
    {                                                                                              \
        CKA_LABEL, (void *)(label), strlen(label)                                                  \
    }

static int no_key_named(wallet_token_t *tok, const char *label)
{
    CK_OBJECT_HANDLE found[TOKEN_FIND_MAX];
    CK_ULONG n_priv = 0, n_pub = 0;
    int rc = find_objects(tok, CKO_PRIVATE_KEY, label, found, &n_priv);
    if (rc == 0)
        rc = find_objects(tok, CKO_PUBLIC_KEY, label, found, &n_pub);
    if (rc == 0 && (n_priv > 0 || n_pub > 0))
        rc = QC_EEXIST;
    return rc;
}

static int generate_pair(wallet_token_t *tok, const char *label)
{
    int rc = no_key_named(tok, label);
    if (rc != 0)
        return rc;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_KEY_TYPE type = CKK_EC;
    CK_OBJECT_CLASS pub_class = CKO_PUBLIC_KEY, priv_class = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE pub_tmpl[] = {
        {CKA_CLASS, &pub_class, sizeof(pub_class)},
        {CKA_KEY_TYPE, &type, sizeof(type)},
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &no, sizeof(no)},
        {CKA_VERIFY, &yes, sizeof(yes)},
        {CKA_ENCRYPT, &no, sizeof(no)},
        {CKA_WRAP, &no, sizeof(no)},
        {CKA_EC_PARAMS, (void *)token_p256_oid, sizeof(token_p256_oid)},
        {CKA_LABEL, (void *)label, strlen(label)},
    };
    CK_ATTRIBUTE priv_tmpl[] = {
        {CKA_CLASS, &priv_class, sizeof(priv_class)},
        {CKA_KEY_TYPE, &type, sizeof(type)},
        PRIVATE_KEY_ATTRS(label, yes, no),
    };
    CK_MECHANISM mech = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_OBJECT_HANDLE pub, priv;
    CK_RV rv = tok->p11->C_GenerateKeyPair(tok->session, &mech, pub_tmpl,
                                           sizeof(pub_tmpl) / sizeof(pub_tmpl[0]), priv_tmpl,
                                           sizeof(priv_tmpl) / sizeof(priv_tmpl[0]), &pub, &priv);
    if (rv != CKR_OK) {
        token_log_rv("C_GenerateKeyPair", rv);
        return QC_ECRYPTO;
    }
    return 0;
}

/* Creates a public tries object holding tries; *out (may be NULL) gets its handle. */
static int create_tries(wallet_token_t *tok, CK_BYTE tries, CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    const char *label = WALLET_TOKEN_TRIES_LABEL;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},     {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &no, sizeof(no)},     {CKA_LABEL, (void *)label, strlen(label)},
        {CKA_VALUE, &tries, sizeof(tries)},
    };
    CK_OBJECT_HANDLE h;
    CK_RV rv = tok->p11->C_CreateObject(tok->session, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), &h);
    if (rv != CKR_OK) {
        token_log_rv("C_CreateObject", rv);
        return QC_ECRYPTO;
    }
    if (out != NULL)
        *out = h;
    return 0;
}

/* Creates the tries object with WALLET_TOKEN_TRIES, unless there is one. */
static int make_tries(wallet_token_t *tok)
{
    CK_OBJECT_HANDLE found[TOKEN_FIND_MAX];
    CK_ULONG count = 0;
    int rc = find_objects(tok, CKO_DATA, WALLET_TOKEN_TRIES_LABEL, found, &count);
    if (rc != 0 || count > 0)
        return rc;
    return create_tries(tok, WALLET_TOKEN_TRIES, NULL);
}

int wallet_token_generate(wallet_token_t *tok)
{
    assert(tok != NULL);
    assert(tok->logged_in);
    int rc = generate_pair(tok, WALLET_TOKEN_DEVICE_KEY);
    if (rc == 0)
        rc = generate_pair(tok, WALLET_TOKEN_STATE_KEY);
    if (rc == 0)
        rc = make_tries(tok);
    return rc;
}

int wallet_token_import(wallet_token_t *tok, EVP_PKEY *priv)
{
    assert(tok != NULL);
    assert(priv != NULL);
    assert(tok->logged_in);
    if (!device_pki_is_p256(priv))
        return QC_EINVAL;
    int rc = no_key_named(tok, WALLET_TOKEN_DEVICE_KEY);
    if (rc != 0)
        return rc;
    uint8_t scalar[TOKEN_SCALAR_SIZE];
    uint8_t point_der[TOKEN_EC_POINT_RAW_SIZE + 2];
    size_t point_len = 0;
    BIGNUM *d = NULL;
    if (EVP_PKEY_get_bn_param(priv, OSSL_PKEY_PARAM_PRIV_KEY, &d) != 1 ||
        BN_bn2binpad(d, scalar, sizeof(scalar)) != (int)sizeof(scalar) ||
        EVP_PKEY_get_octet_string_param(priv, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point_der + 2,
                                        TOKEN_EC_POINT_RAW_SIZE, &point_len) != 1 ||
        point_len != TOKEN_EC_POINT_RAW_SIZE) {
        BN_clear_free(d);
        OPENSSL_cleanse(scalar, sizeof(scalar));
        return QC_ECRYPTO;
    }
    BN_clear_free(d);
    point_der[0] = 0x04; /* the DER OCTET STRING around the point, as CKA_EC_POINT holds it */
    point_der[1] = TOKEN_EC_POINT_RAW_SIZE;

    const char *label = WALLET_TOKEN_DEVICE_KEY;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_KEY_TYPE type = CKK_EC;
    CK_OBJECT_CLASS pub_class = CKO_PUBLIC_KEY, priv_class = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE priv_tmpl[] = {
        {CKA_CLASS, &priv_class, sizeof(priv_class)},
        {CKA_KEY_TYPE, &type, sizeof(type)},
        {CKA_EC_PARAMS, (void *)token_p256_oid, sizeof(token_p256_oid)},
        {CKA_VALUE, scalar, sizeof(scalar)},
        PRIVATE_KEY_ATTRS(label, yes, no),
    };
    CK_ATTRIBUTE pub_tmpl[] = {
        {CKA_CLASS, &pub_class, sizeof(pub_class)},
        {CKA_KEY_TYPE, &type, sizeof(type)},
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &no, sizeof(no)},
        {CKA_VERIFY, &yes, sizeof(yes)},
        {CKA_ENCRYPT, &no, sizeof(no)},
        {CKA_WRAP, &no, sizeof(no)},
        {CKA_EC_PARAMS, (void *)token_p256_oid, sizeof(token_p256_oid)},
        {CKA_EC_POINT, point_der, sizeof(point_der)},
        {CKA_LABEL, (void *)label, strlen(label)},
    };
    CK_OBJECT_HANDLE h;
    CK_RV rv = tok->p11->C_CreateObject(tok->session, priv_tmpl,
                                        sizeof(priv_tmpl) / sizeof(priv_tmpl[0]), &h);
    OPENSSL_cleanse(scalar, sizeof(scalar));
    if (rv == CKR_OK)
        rv = tok->p11->C_CreateObject(tok->session, pub_tmpl,
                                      sizeof(pub_tmpl) / sizeof(pub_tmpl[0]), &h);
    if (rv != CKR_OK) {
        token_log_rv("C_CreateObject", rv);
        return QC_ECRYPTO;
    }
    rc = generate_pair(tok, WALLET_TOKEN_STATE_KEY);
    if (rc == 0)
        rc = make_tries(tok);
    return rc;
}

/* ------------------------------------------------------------------ login */

static int tries_value(wallet_token_t *tok, CK_OBJECT_HANDLE h, CK_BYTE *tries)
{
    CK_ATTRIBUTE a = {CKA_VALUE, tries, sizeof(*tries)};
    CK_RV rv = tok->p11->C_GetAttributeValue(tok->session, h, &a, 1);
    if (rv != CKR_OK || a.ulValueLen != sizeof(*tries)) {
        token_log_rv("C_GetAttributeValue", rv);
        return QC_ECRYPTO;
    }
    return 0;
}

/* Reads the tries object into *h, *tries. Its value is not modifiable in every module
 * (SoftHSM2 answers CKR_ATTRIBUTE_READ_ONLY), so a new count is a new object made before the
 * old one is destroyed (tries_write()); a crash in between leaves two, of which the lower
 * count holds and the other is destroyed here. None: QC_EKEYID. */
static int tries_read(wallet_token_t *tok, CK_OBJECT_HANDLE *h, CK_BYTE *tries)
{
    CK_OBJECT_HANDLE found[TOKEN_FIND_MAX];
    CK_ULONG count = 0;
    int rc = find_objects(tok, CKO_DATA, WALLET_TOKEN_TRIES_LABEL, found, &count);
    if (rc != 0)
        return rc;
    if (count == 0)
        return QC_EKEYID;
    rc = tries_value(tok, found[0], tries);
    *h = found[0];
    if (rc == 0 && count > 1) {
        CK_BYTE other = 0;
        rc = tries_value(tok, found[1], &other);
        CK_OBJECT_HANDLE drop = found[1];
        if (rc == 0 && other < *tries) {
            drop = found[0];
            *h = found[1];
            *tries = other;
        }
        if (rc == 0)
            (void)tok->p11->C_DestroyObject(tok->session, drop);
    }
    return rc;
}

/* Replaces the tries object *h by one holding tries; *h becomes the new one. */
static int tries_write(wallet_token_t *tok, CK_OBJECT_HANDLE *h, CK_BYTE tries)
{
    CK_OBJECT_HANDLE old = *h;
    int rc = create_tries(tok, tries, h);
    if (rc != 0)
        return rc;
    CK_RV rv = tok->p11->C_DestroyObject(tok->session, old);
    if (rv != CKR_OK) {
        token_log_rv("C_DestroyObject", rv);
        return QC_ECRYPTO;
    }
    return 0;
}

uint32_t wallet_token_tries_left(wallet_token_t *tok)
{
    assert(tok != NULL);
    CK_OBJECT_HANDLE h;
    CK_BYTE tries = WALLET_TOKEN_TRIES;
    if (tries_read(tok, &h, &tries) != 0)
        return WALLET_TOKEN_TRIES;
    return tries;
}

bool wallet_token_logged_in(const wallet_token_t *tok)
{
    assert(tok != NULL);
    return tok->logged_in;
}

int wallet_token_login(wallet_token_t *tok, const char *pin, size_t pin_len)
{
    assert(tok != NULL);
    assert(pin != NULL);
    assert(!tok->logged_in);
    if (pin_len == 0 || pin_len > WALLET_TOKEN_PIN_MAX)
        return QC_EINVAL;
    /* SoftHSM2 counts no wrong PINs (2.6.1: eleven wrong, then the right one, logs in), so
     * the tries are also counted in the token itself, before the PIN is tried. */
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_BYTE tries = 0;
    int rc = tries_read(tok, &h, &tries);
    bool counted = rc == 0;
    if (rc != 0 && rc != QC_EKEYID)
        return rc;
    if (counted && tries == 0)
        return QC_ELOCKED;
    if (counted && (rc = tries_write(tok, &h, (CK_BYTE)(tries - 1))) != 0)
        return rc;
    CK_RV rv = tok->p11->C_Login(tok->session, CKU_USER, (CK_UTF8CHAR_PTR)pin, pin_len);
    if (rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN) {
        tok->logged_in = true;
        return counted ? tries_write(tok, &h, WALLET_TOKEN_TRIES) : 0;
    }
    if (rv == CKR_PIN_LOCKED)
        return QC_ELOCKED;
    if (rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LEN_RANGE)
        return counted && tries == 1 ? QC_ELOCKED : QC_EPIN;
    token_log_rv("C_Login", rv);
    return QC_ECRYPTO;
}

/* ------------------------------------------------------------------ signing */

int wallet_token_sign(wallet_token_t *tok, wallet_token_key_t key,
                      const uint8_t digest[PROTO_DIGEST_SIZE], uint8_t raw[PROTO_SIG_RAW_SIZE])
{
    assert(tok != NULL);
    assert(digest != NULL);
    assert(raw != NULL);
    if (!tok->logged_in)
        return QC_EDENIED;
    CK_OBJECT_HANDLE priv = CK_INVALID_HANDLE;
    int rc = find_one(tok, CKO_PRIVATE_KEY, key_label(key), &priv);
    if (rc != 0)
        return rc;
    CK_MECHANISM mech = {CKM_ECDSA, NULL, 0};
    CK_RV rv = tok->p11->C_SignInit(tok->session, &mech, priv);
    CK_ULONG len = PROTO_SIG_RAW_SIZE;
    if (rv == CKR_OK)
        rv = tok->p11->C_Sign(tok->session, (CK_BYTE_PTR)digest, PROTO_DIGEST_SIZE, raw, &len);
    if (rv != CKR_OK) {
        token_log_rv("C_Sign", rv);
        return rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT ? QC_EUNAVAIL : QC_ECRYPTO;
    }
    if (len != PROTO_SIG_RAW_SIZE || proto_ecdsa_raw_low_s(raw) < 0)
        return QC_ECRYPTO;
    return 0;
}

int wallet_token_sign_device(void *tok, const uint8_t digest[PROTO_DIGEST_SIZE],
                             uint8_t raw[PROTO_SIG_RAW_SIZE])
{
    return wallet_token_sign(tok, WALLET_TOKEN_KEY_DEVICE, digest, raw);
}

int wallet_token_sign_state(void *tok, const uint8_t digest[PROTO_DIGEST_SIZE],
                            uint8_t raw[PROTO_SIG_RAW_SIZE])
{
    return wallet_token_sign(tok, WALLET_TOKEN_KEY_STATE, digest, raw);
}

int wallet_token_unblock(wallet_token_t *tok, const char *so_pin, size_t so_pin_len,
                         const char *pin, size_t pin_len)
{
    assert(tok != NULL);
    assert(so_pin != NULL);
    assert(pin != NULL);
    assert(!tok->logged_in);
    if (so_pin_len == 0 || so_pin_len > WALLET_TOKEN_PIN_MAX || pin_len == 0 ||
        pin_len > WALLET_TOKEN_PIN_MAX)
        return QC_EINVAL;
    CK_RV rv = tok->p11->C_Login(tok->session, CKU_SO, (CK_UTF8CHAR_PTR)so_pin, so_pin_len);
    if (rv == CKR_PIN_INCORRECT)
        return QC_EPIN;
    if (rv == CKR_PIN_LOCKED)
        return QC_ELOCKED;
    if (rv == CKR_OK)
        rv = tok->p11->C_InitPIN(tok->session, (CK_UTF8CHAR_PTR)pin, pin_len);
    CK_RV rv_out = tok->p11->C_Logout(tok->session);
    if (rv != CKR_OK || rv_out != CKR_OK) {
        token_log_rv("C_InitPIN", rv != CKR_OK ? rv : rv_out);
        return QC_ECRYPTO;
    }
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_BYTE tries = 0;
    int rc = tries_read(tok, &h, &tries);
    if (rc == QC_EKEYID)
        return 0;
    return rc != 0 ? rc : tries_write(tok, &h, WALLET_TOKEN_TRIES);
}
