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

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "ops_hex.h"
#include "ops_log.h"
#include "qc_error.h"
#include "wallet_store.h"

#define WALLET_PUBLIC_MODE 0644

struct wallet_device {
    char home[DEVICE_PATH_MAX];
    int lock_fd;
    EVP_PKEY *key; /* the core holds its own reference; this one installs certificates */
    device_core_t *core;
};

/* ------------------------------------------------------------------ the core's store */

static int wallet_store_commit(void *arg, const device_state_t *st, bool has_line)
{
    const wallet_device_t *dev = arg;
    assert(dev != NULL);
    assert(st != NULL);
    int rc = wallet_state_save(dev->home, st);
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
    return 0;
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
        rc = wallet_state_load(home, &st);
    if (rc != 0)
        goto err;
    int lrc = device_home_log_recover(home, st.log_seq, st.log_pending);
    if (lrc != 0) /* the state file is authoritative; a damaged log does not stop the device */
        ops_log(OPS_LOG_WARN, "wallet.oplog_inconsistent", "error", qc_strerror(lrc), NULL);
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
