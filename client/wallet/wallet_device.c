/* wallet_device.c - a device core kept in a home directory: its files, its lock, and the
 * store that writes every new state of the core before the core adopts it.
 *
 * The state machine itself, its invariants and its diagram are client/device/device_core.c.
 * This file adds what makes it a wallet on disk:
 *   1. A home holds one device; the lock on it is held from open to destroy.
 *   2. wallet_store_commit() is the core's store: the state file is replaced atomically
 *      (wallet_state_save()) and only then is the log line appended, so the state file is
 *      authoritative and a lost line is rewritten at the next open
 *      (device_home_log_recover()). */
#include "wallet_device.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <fcntl.h>
#include <sys/stat.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "ops_hex.h"
#include "ops_log.h"
#include "proto_ecdsa.h"
#include "qc_error.h"
#include "wallet_store.h"
#include "wallet_token.h"

#define WALLET_PUBLIC_MODE 0644
#define WALLET_TOKEN_CONF_MAX 2048
#define WALLET_WIPE_CHUNK 4096

struct wallet_device {
    char home[DEVICE_PATH_MAX];
    int lock_fd;
    EVP_PKEY *key; /* the core holds its own reference; this one installs certificates */
    device_core_t *core;
    wallet_token_t *token; /* a token wallet: key is the device key's public half */
    EVP_PKEY *state_key;   /* a token wallet: the public half of the state key */
};

/* ------------------------------------------------------------------ the core's store */

static int wallet_store_commit(void *arg, const device_state_t *st, bool has_line)
{
    const wallet_device_t *dev = arg;
    assert(dev != NULL);
    assert(st != NULL);
    int rc = dev->token != NULL
                 ? wallet_state_save_signed(dev->home, st, wallet_token_sign_state, dev->token)
                 : wallet_state_save(dev->home, st);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "wallet.state_write_failed", "error", qc_strerror(rc), NULL);
        return rc;
    }
    if (has_line) {
        /* The state is durable; a lost log line is rewritten by the next open. */
        int lrc = device_home_log_append(dev->home, st->log_pending);
        if (lrc != 0)
            ops_log(OPS_LOG_WARN, "wallet.oplog_append_failed", "error", qc_strerror(lrc), NULL);
    }
    return 0;
}

/* ------------------------------------------------------------------ certificate, bank */

static int load_cert(wallet_device_t *dev)
{
    uint8_t *der = NULL;
    size_t der_len = 0;
    int rc = device_pki_load_cert(dev->home, WALLET_CERT_FILE, dev->key,
                                  device_core_serial(dev->core), &der, &der_len);
    if (rc == 0 && der != NULL)
        rc = device_core_set_cert(dev->core, der, der_len);
    free(der);
    return rc;
}

/* Reads bank.pem (allow key, then outcome key) into the core; none installed is no error. */
static int load_bank(wallet_device_t *dev)
{
    BIO *bio = NULL;
    int rc = device_pki_pem_read(dev->home, WALLET_BANK_FILE, &bio);
    if (rc == QC_ENOTFOUND)
        return 0; /* not installed yet */
    if (rc != 0)
        return rc;
    device_bank_key_t allow = {0}, outcome = {0};
    rc = device_pki_bank_key_read(bio, &allow);
    if (rc == 0)
        rc = device_pki_bank_key_read(bio, &outcome);
    BIO_free(bio);
    if (rc == 0)
        device_core_set_bank(dev->core, &allow, &outcome);
    device_pki_bank_key_clear(&allow);
    device_pki_bank_key_clear(&outcome);
    return rc;
}

/* ------------------------------------------------------------------ init, open, destroy */

/* A new serial: WALLET_SERIAL_PREFIX and random upper-case hex. */
static int make_serial(char out[DEVICE_SERIAL_MAX + 1])
{
    uint8_t rnd[WALLET_SERIAL_RANDOM_BYTES];
    char hex[2 * WALLET_SERIAL_RANDOM_BYTES + 1];
    if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        return QC_ECRYPTO;
    ops_hex(rnd, sizeof(rnd), hex);
    for (char *p = hex; *p != '\0'; p++)
        *p = (char)(*p >= 'a' ? *p - 'a' + 'A' : *p);
    snprintf(out, DEVICE_SERIAL_MAX + 1, "%s%s", WALLET_SERIAL_PREFIX, hex);
    return 0;
}

/* A device with home set and no lock, key or core yet. */
static int device_alloc(const char *home, wallet_device_t **out)
{
    *out = NULL;
    if (strlen(home) >= DEVICE_PATH_MAX)
        return QC_EINVAL;
    wallet_device_t *dev = calloc(1, sizeof(*dev));
    if (dev == NULL)
        return QC_ENOMEM;
    dev->lock_fd = -1;
    memcpy(dev->home, home, strlen(home) + 1);
    *out = dev;
    return 0;
}

/* Makes the core of st (which it takes over) with dev->key, stored in dev's home. */
static int device_attach_core(wallet_device_t *dev, device_state_t *st)
{
    int rc = device_core_new(st, dev->key, &dev->core);
    if (rc != 0)
        return rc;
    device_core_set_store(dev->core, wallet_store_commit, dev);
    if (dev->token != NULL) {
        device_core_set_signer(dev->core, wallet_token_sign_device, dev->token);
        if (wallet_token_logged_in(dev->token))
            device_core_pin_verified(dev->core);
    }
    return 0;
}

/* ------------------------------------------------------------------ the token */

/* Reads HOME/token.conf into place (strings pointing into buf). QC_ENOTFOUND: no file (a
 * PEM wallet); QC_EDECODE: a line we do not know. */
static int token_conf_read(const char *home, char buf[WALLET_TOKEN_CONF_MAX],
                           wallet_token_place_t *place)
{
    memset(place, 0, sizeof(*place));
    uint8_t *text = NULL;
    size_t len = 0;
    int rc = device_home_read(home, WALLET_TOKEN_CONF_FILE, WALLET_TOKEN_CONF_MAX - 1, &text, &len);
    if (rc != 0)
        return rc;
    memcpy(buf, text, len + 1);
    free(text);
    for (char *line = buf; *line != '\0';) {
        char *nl = strchr(line, '\n');
        if (nl == NULL)
            return QC_EDECODE;
        *nl = '\0';
        char *sp = strchr(line, ' ');
        if (line[0] != '#' && sp == NULL)
            return QC_EDECODE;
        if (line[0] != '#') {
            *sp = '\0';
            if (strcmp(line, "module") == 0)
                place->module = sp + 1;
            else if (strcmp(line, "label") == 0)
                place->label = sp + 1;
            else if (strcmp(line, "home_token") == 0)
                place->home_token = strcmp(sp + 1, "1") == 0;
            else
                return QC_EDECODE;
        }
        line = nl + 1;
    }
    return place->module != NULL && place->label != NULL ? 0 : QC_EDECODE;
}

static int token_conf_write(const char *home, const char *module, const wallet_token_place_t *p)
{
    char buf[WALLET_TOKEN_CONF_MAX];
    int n = snprintf(buf, sizeof(buf),
                     "# where this wallet's keys are: a PKCS#11 token (qc-wallet init)\n"
                     "module %s\nlabel %s\nhome_token %d\n",
                     module, p->label, p->home_token ? 1 : 0);
    if (n < 0 || (size_t)n >= sizeof(buf) || strchr(module, '\n') != NULL ||
        strchr(p->label, '\n') != NULL)
        return QC_EINVAL;
    return device_home_write(home, WALLET_TOKEN_CONF_FILE, (const uint8_t *)buf, (size_t)n,
                             WALLET_PUBLIC_MODE);
}

/* Reads the public halves of both keys from dev->token. */
static int token_keys(wallet_device_t *dev)
{
    int rc = wallet_token_public(dev->token, WALLET_TOKEN_KEY_DEVICE, &dev->key);
    if (rc == 0)
        rc = wallet_token_public(dev->token, WALLET_TOKEN_KEY_STATE, &dev->state_key);
    return rc;
}

/* Opens the token of a token wallet (none for a PEM wallet) and reads its public keys. */
static int token_attach(wallet_device_t *dev)
{
    char buf[WALLET_TOKEN_CONF_MAX];
    wallet_token_place_t place;
    int rc = token_conf_read(dev->home, buf, &place);
    if (rc == QC_ENOTFOUND)
        return 0; /* a PEM wallet */
    if (rc == 0)
        rc = wallet_token_open(dev->home, place.home_token, place.module, place.label, &dev->token);
    if (rc == 0)
        rc = token_keys(dev);
    if (rc == QC_EKEYID)
        rc = QC_EUNAVAIL; /* a token, but not this device's */
    return rc;
}

/* Opens (or, home_token, creates) the token of place and logs in with pin. */
static int token_open_login(wallet_device_t *dev, const wallet_token_place_t *place,
                            const char *pin, size_t pin_len)
{
    const char *module = place->module != NULL ? place->module : WALLET_TOKEN_MODULE_DEFAULT;
    if (place->home_token)
        return wallet_token_create(dev->home, module, place->label, place->so_pin,
                                   place->so_pin_len, pin, pin_len, &dev->token);
    int rc = wallet_token_open(dev->home, false, module, place->label, &dev->token);
    if (rc == 0)
        rc = wallet_token_login(dev->token, pin, pin_len);
    return rc;
}

/* A PIN record that says nothing about the PIN: a token wallet's PIN is the token's, and a
 * hash of it in the home would let whoever copies the home guess it offline. */
static int pin_record_blank(device_pin_t *pin)
{
    if (RAND_bytes(pin->salt, sizeof(pin->salt)) != 1 ||
        RAND_bytes(pin->hash, sizeof(pin->hash)) != 1)
        return QC_ECRYPTO;
    pin->iterations = DEVICE_PIN_ITERATIONS;
    pin->tries_left = DEVICE_PIN_TRIES;
    return 0;
}

/* Writes a CSR for serial with dev->key's public half, signed inside the token. */
static int token_csr(wallet_device_t *dev, const char *serial)
{
    int rc = QC_ECRYPTO;
    X509_REQ *req = X509_REQ_new();
    X509_NAME *name = X509_NAME_new();
    X509_ALGOR *alg = X509_ALGOR_new();
    ASN1_BIT_STRING *sig = ASN1_BIT_STRING_new();
    BIO *bio = BIO_new(BIO_s_mem());
    unsigned char *tbs = NULL;
    if (req == NULL || name == NULL || alg == NULL || sig == NULL || bio == NULL)
        goto out;
    if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)serial, -1, -1,
                                   0) != 1 ||
        X509_REQ_set_version(req, 0) != 1 || X509_REQ_set_subject_name(req, name) != 1 ||
        X509_REQ_set_pubkey(req, dev->key) != 1 ||
        X509_ALGOR_set0(alg, OBJ_nid2obj(NID_ecdsa_with_SHA256), V_ASN1_UNDEF, NULL) != 1 ||
        X509_REQ_set1_signature_algo(req, alg) != 1)
        goto out;
    int tbs_len = i2d_re_X509_REQ_tbs(req, &tbs);
    uint8_t digest[PROTO_DIGEST_SIZE], raw[PROTO_SIG_RAW_SIZE], der[PROTO_SIG_DER_MAX];
    size_t der_len = 0;
    if (tbs_len <= 0 || proto_sha256(tbs, (size_t)tbs_len, digest) != 0)
        goto out;
    rc = wallet_token_sign(dev->token, WALLET_TOKEN_KEY_DEVICE, digest, raw);
    if (rc != 0)
        goto out;
    rc = QC_ECRYPTO;
    if (proto_ecdsa_raw_to_der(raw, der, sizeof(der), &der_len) != 0 ||
        ASN1_BIT_STRING_set(sig, der, (int)der_len) != 1)
        goto out;
    sig->flags &= ~(ASN1_STRING_FLAG_BITS_LEFT | 0x07); /* no unused bits */
    sig->flags |= ASN1_STRING_FLAG_BITS_LEFT;
    X509_REQ_set0_signature(req, sig);
    sig = NULL;
    if (X509_REQ_verify(req, dev->key) != 1 || PEM_write_bio_X509_REQ(bio, req) != 1)
        goto out;
    rc = device_pki_pem_write(dev->home, WALLET_CSR_FILE, bio, WALLET_PUBLIC_MODE);
out:
    OPENSSL_free(tbs);
    BIO_free(bio);
    ASN1_BIT_STRING_free(sig);
    X509_ALGOR_free(alg);
    X509_NAME_free(name);
    X509_REQ_free(req);
    return rc;
}

/* Overwrites HOME/name with zeros, syncs, and unlinks it. A file system that copies on
 * write or a flash translation layer may keep the old blocks: the overwrite is a best effort,
 * the unlink is what the next open sees. */
static int wipe_file(const char *home, const char *name)
{
    char path[DEVICE_PATH_MAX];
    if (device_home_path(home, name, path) != 0)
        return QC_EINVAL;
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return QC_EIO;
    struct stat st;
    int rc = fstat(fd, &st) == 0 ? 0 : QC_EIO;
    uint8_t zeros[WALLET_WIPE_CHUNK] = {0};
    for (off_t done = 0; rc == 0 && done < st.st_size;) {
        size_t n = (size_t)(st.st_size - done) < sizeof(zeros) ? (size_t)(st.st_size - done)
                                                               : sizeof(zeros);
        ssize_t w = write(fd, zeros, n);
        if (w <= 0)
            rc = QC_EIO;
        else
            done += w;
    }
    if (rc == 0 && fsync(fd) != 0)
        rc = QC_EIO;
    close(fd);
    if (rc == 0 && unlink(path) != 0)
        rc = QC_EIO;
    return rc;
}

bool wallet_device_has_token(const wallet_device_t *dev)
{
    assert(dev != NULL);
    return dev->token != NULL;
}

int wallet_device_unblock(wallet_device_t *dev, const char *so_pin, size_t so_pin_len,
                          const char *pin, size_t pin_len)
{
    assert(dev != NULL);
    assert(dev->token != NULL);
    if (device_pin_valid(pin, pin_len) != 0)
        return QC_EINVAL;
    return wallet_token_unblock(dev->token, so_pin, so_pin_len, pin, pin_len);
}

uint32_t wallet_device_pin_tries(wallet_device_t *dev)
{
    assert(dev != NULL);
    if (dev->token != NULL)
        return wallet_token_tries_left(dev->token);
    device_status_t s;
    device_core_status(dev->core, &s);
    return s.pin_tries_left;
}

int wallet_device_login(wallet_device_t *dev, const char *pin, size_t pin_len, uint32_t *tries_left)
{
    assert(dev != NULL);
    assert(dev->token != NULL);
    assert(pin != NULL);
    int rc = wallet_token_logged_in(dev->token) ? 0 : wallet_token_login(dev->token, pin, pin_len);
    if (tries_left != NULL)
        *tries_left = wallet_token_tries_left(dev->token);
    if (rc == 0)
        device_core_pin_verified(dev->core);
    return rc;
}

int wallet_device_init(const char *home, const char *serial, const char *pin, size_t pin_len)
{
    assert(home != NULL);
    assert(pin != NULL || pin_len == 0);
    char made[DEVICE_SERIAL_MAX + 1];
    if (serial == NULL) {
        int src = make_serial(made);
        if (src != 0)
            return src;
        serial = made;
    }
    if (!device_pki_id_valid(serial) || device_pin_valid(pin, pin_len) != 0)
        return QC_EINVAL;

    wallet_device_t *dev = NULL;
    device_state_t st = {0};
    int rc = device_alloc(home, &dev);
    if (rc == 0)
        rc = device_home_claim(home, WALLET_STATE_FILE, true, &dev->lock_fd);
    if (rc == 0)
        rc = device_pki_create_key(home, WALLET_KEY_FILE, WALLET_CSR_FILE, serial, &dev->key);
    if (rc == 0)
        rc = device_state_init(&st, serial, pin, pin_len, DEVICE_PIN_ITERATIONS);
    if (rc == 0)
        rc = device_attach_core(dev, &st);
    if (rc == 0) {
        /* The state file is written last: its presence is what makes the device exist. */
        char detail[DEVICE_SERIAL_MAX + 16];
        snprintf(detail, sizeof(detail), "serial %s", serial);
        rc = device_core_note(dev->core, "device.created", detail);
    }
    device_state_clear(&st);
    wallet_device_destroy(&dev);
    return rc;
}

int wallet_device_init_token(const char *home, const char *serial,
                             const wallet_token_place_t *place, const char *pin, size_t pin_len)
{
    assert(home != NULL);
    assert(place != NULL);
    assert(pin != NULL || pin_len == 0);
    char made[DEVICE_SERIAL_MAX + 1];
    if (serial == NULL) {
        int src = make_serial(made);
        if (src != 0)
            return src;
        serial = made;
    }
    if (!device_pki_id_valid(serial) || device_pin_valid(pin, pin_len) != 0 || place->label == NULL)
        return QC_EINVAL;
    const char *module = place->module != NULL ? place->module : WALLET_TOKEN_MODULE_DEFAULT;
    wallet_device_t *dev = NULL;
    device_state_t st = {0};
    int rc = device_alloc(home, &dev);
    if (rc == 0)
        rc = device_home_claim(home, WALLET_STATE_FILE, true, &dev->lock_fd);
    if (rc == 0)
        rc = token_open_login(dev, place, pin, pin_len);
    if (rc == 0)
        rc = wallet_token_generate(dev->token);
    if (rc == 0)
        rc = token_keys(dev);
    if (rc == 0)
        rc = token_csr(dev, serial);
    if (rc == 0)
        rc = device_state_init(&st, serial, pin, pin_len, DEVICE_PIN_ITERATIONS);
    if (rc == 0)
        rc = pin_record_blank(&st.pin);
    if (rc == 0)
        rc = token_conf_write(home, module, place);
    if (rc == 0)
        rc = device_attach_core(dev, &st);
    if (rc == 0) {
        /* The state file is written last: its presence is what makes the device exist. */
        char detail[DEVICE_SERIAL_MAX + 64];
        snprintf(detail, sizeof(detail), "serial %s, key in token %s", serial, place->label);
        rc = device_core_note(dev->core, "device.created", detail);
    }
    device_state_clear(&st);
    wallet_device_destroy(&dev);
    return rc;
}

int wallet_device_migrate_token(const char *home, const wallet_token_place_t *place,
                                const char *pin, size_t pin_len)
{
    assert(home != NULL);
    assert(place != NULL);
    assert(pin != NULL || pin_len == 0);
    if (place->label == NULL)
        return QC_EINVAL;
    const char *module = place->module != NULL ? place->module : WALLET_TOKEN_MODULE_DEFAULT;
    wallet_device_t *dev = NULL;
    int rc = wallet_device_open(home, &dev);
    if (rc != 0)
        return rc;
    EVP_PKEY *pem = NULL;
    device_state_t st = {0};
    if (dev->token != NULL) {
        rc = QC_EEXIST;
        goto out;
    }
    rc = device_core_verify_pin(dev->core, pin, pin_len);
    if (rc != 0)
        goto out;
    pem = dev->key;
    dev->key = NULL;
    rc = token_open_login(dev, place, pin, pin_len);
    if (rc == 0)
        rc = wallet_token_import(dev->token, pem);
    if (rc == 0)
        rc = token_keys(dev);
    if (rc == 0 && EVP_PKEY_eq(pem, dev->key) != 1)
        rc = QC_ECRYPTO; /* the token does not hold the key we gave it */
    if (rc != 0)
        goto out;
    /* From here the device is the token's: a new core over the stored state, whose PIN
     * record is blanked and which is signed by the token from its next write on. */
    device_core_destroy(&dev->core);
    rc = wallet_state_load(home, &st);
    if (rc == 0)
        rc = pin_record_blank(&st.pin);
    if (rc == 0)
        rc = token_conf_write(home, module, place);
    if (rc == 0)
        rc = device_attach_core(dev, &st);
    if (rc == 0)
        rc = device_core_note(dev->core, "device.migrated", place->label);
    if (rc == 0)
        rc = wipe_file(home, WALLET_KEY_FILE);
out:
    device_state_clear(&st);
    EVP_PKEY_free(pem);
    wallet_device_destroy(&dev);
    return rc;
}

int wallet_device_open(const char *home, wallet_device_t **out)
{
    assert(home != NULL);
    assert(out != NULL);
    *out = NULL;
    wallet_device_t *dev = NULL;
    device_state_t st = {0};
    int rc = device_alloc(home, &dev);
    if (rc == 0)
        rc = device_home_claim(home, WALLET_STATE_FILE, false, &dev->lock_fd);
    if (rc == 0)
        rc = token_attach(dev);
    if (rc == 0)
        rc = wallet_state_load_signed(home, &st, dev->state_key);
    if (rc != 0)
        goto err;
    int lrc = device_home_log_recover(home, st.log_seq, st.log_pending);
    if (lrc != 0) /* the state file is authoritative; a damaged log does not stop the device */
        ops_log(OPS_LOG_WARN, "wallet.oplog_inconsistent", "error", qc_strerror(lrc), NULL);
    if (dev->token == NULL)
        rc = device_pki_load_key(home, WALLET_KEY_FILE, &dev->key);
    if (rc == 0)
        rc = device_attach_core(dev, &st);
    if (rc == 0)
        rc = load_cert(dev);
    if (rc == 0)
        rc = load_bank(dev);
    if (rc != 0)
        goto err;
    *out = dev;
    return 0;
err:
    device_state_clear(&st);
    wallet_device_destroy(&dev);
    return rc;
}

void wallet_device_destroy(wallet_device_t **dev_p)
{
    if (dev_p == NULL || *dev_p == NULL)
        return;
    wallet_device_t *dev = *dev_p;
    device_core_destroy(&dev->core);
    wallet_token_destroy(&dev->token);
    EVP_PKEY_free(dev->state_key);
    EVP_PKEY_free(dev->key); /* OpenSSL wipes the private key as it frees it */
    if (dev->lock_fd >= 0)
        close(dev->lock_fd);
    OPENSSL_cleanse(dev, sizeof(*dev));
    free(dev);
    *dev_p = NULL;
}

device_core_t *wallet_device_core(wallet_device_t *dev)
{
    assert(dev != NULL);
    assert(dev->core != NULL);
    return dev->core;
}

/* ------------------------------------------------------------------ enrollment */

int wallet_device_install_cert(wallet_device_t *dev, const char *cert_path)
{
    assert(dev != NULL);
    assert(cert_path != NULL);
    int rc = device_pki_install_cert(dev->home, WALLET_CERT_FILE, cert_path, dev->key,
                                     device_core_serial(dev->core));
    if (rc != 0)
        return rc;
    return load_cert(dev);
}

/* Reads one bank key file and appends it, re-encoded, to out under a label. */
static int bank_append(const char *path, const char *label, BIO *out)
{
    device_bank_key_t k = {0};
    int rc = device_pki_bank_key_load(path, &k);
    if (rc != 0)
        return rc;
    if (BIO_printf(out, "# %s\n", label) <= 0)
        rc = QC_ENOMEM;
    else if (k.cert != NULL ? PEM_write_bio_X509(out, k.cert) != 1
                            : PEM_write_bio_PUBKEY(out, k.key) != 1)
        rc = QC_ECRYPTO;
    device_pki_bank_key_clear(&k);
    return rc;
}

int wallet_device_install_bank(wallet_device_t *dev, const char *allow_path,
                               const char *outcome_path)
{
    assert(dev != NULL);
    assert(allow_path != NULL);
    assert(outcome_path != NULL);
    BIO *out = BIO_new(BIO_s_mem());
    if (out == NULL)
        return QC_ENOMEM;
    /* Order matters: load_bank() reads the allow key first, then the outcome key. */
    int rc = bank_append(allow_path, "bank allow-signing key", out);
    if (rc == 0)
        rc = bank_append(outcome_path, "bank outcome-signing key", out);
    if (rc == 0)
        rc = device_pki_pem_write(dev->home, WALLET_BANK_FILE, out, WALLET_PUBLIC_MODE);
    BIO_free(out);
    if (rc != 0)
        return rc;
    return load_bank(dev);
}
