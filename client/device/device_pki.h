/* device_pki.h - what a device (a wallet, or an IC card) keeps of public-key infrastructure:
 * its P-256 key and certificate request, its certificate, and the bank keys it trusts.
 *
 * Files live in the device's home (device_home.h): the private key as PEM with mode 0600 (it
 * never leaves the device), the CSR and certificates as PEM with mode 0644. A certificate is
 * only ever installed when its public key is the device's and its commonName the device's
 * identifier (a serial or a card number, device_pki_id_valid()). */
#ifndef DEVICE_PKI_H
#define DEVICE_PKI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "proto_limits.h"
#include "qc_error.h"

#define DEVICE_SERIAL_MAX PROTO_DEVICE_ID_MAX /* bytes of a serial or card number */

/* True when id can be a device serial or a card number: 1..DEVICE_SERIAL_MAX characters of
 * [A-Za-z0-9_-] (proto_id.h, PROTO_ID_SERIAL: it is a certificate commonName and goes into
 * log lines and trust lists as is). */
bool device_pki_id_valid(const char *id);

/* True when key is an EC key on P-256. */
bool device_pki_is_p256(EVP_PKEY *key);

/* Generates a P-256 key and writes it as a PEM private key to HOME/key_file (mode 0600)
 * and a CSR with CN = cn, signed by it, to HOME/csr_file. Returns 0 and sets *key (the
 * caller frees it), QC_ECRYPTO, QC_ENOMEM or QC_EIO. */
QC_MUST_CHECK int device_pki_create_key(const char *home, const char *key_file,
                                        const char *csr_file, const char *cn, EVP_PKEY **key);

/* Loads the P-256 private key of HOME/name into *out (the caller frees it). Returns 0,
 * QC_EIO (missing or unreadable) or QC_ECRYPTO (not a P-256 private key). */
QC_MUST_CHECK int device_pki_load_key(const char *home, const char *name, EVP_PKEY **out);

/* Loads the certificate HOME/name as DER into a malloc'd *der (NULL with *der_len 0 when
 * there is no such file yet); it must hold key and have commonName cn. Returns 0, QC_ECERT,
 * QC_EIO or QC_ENOMEM. */
QC_MUST_CHECK int device_pki_load_cert(const char *home, const char *name, EVP_PKEY *key,
                                       const char *cn, uint8_t **der, size_t *der_len);

/* Copies the PEM certificate at cert_path to HOME/name after checking that it holds key and
 * has commonName cn. Returns 0, QC_EIO (unreadable) or QC_ECERT. */
QC_MUST_CHECK int device_pki_install_cert(const char *home, const char *name, const char *cert_path,
                                          EVP_PKEY *key, const char *cn);

/* Reads HOME/name (at most DEVICE_FILE_MAX bytes) into a new memory BIO (the caller frees
 * it); the bytes read are wiped. Returns 0, QC_ENOTFOUND, QC_ETOOBIG, QC_EIO or QC_ENOMEM. */
QC_MUST_CHECK int device_pki_pem_read(const char *home, const char *name, BIO **out);

/* Writes the contents of the memory BIO bio to HOME/name atomically with mode. Returns 0,
 * QC_ECRYPTO (an empty BIO), QC_EINVAL or QC_EIO. */
QC_MUST_CHECK int device_pki_pem_write(const char *home, const char *name, BIO *bio, mode_t mode);

/* A bank key as a device holds it: the public key, and the certificate it came in (NULL
 * when it was given as a bare public key), whose validity period the device checks. */
typedef struct device_bank_key {
    EVP_PKEY *key;
    X509 *cert;
} device_bank_key_t;

/* Reads the next PEM block of bio as a bank key: a certificate or a public key, on P-256.
 * Returns 0 and fills *out (free it with device_pki_bank_key_clear()), or QC_ECERT with *out
 * left empty. */
QC_MUST_CHECK int device_pki_bank_key_read(BIO *bio, device_bank_key_t *out);

/* Reads the first PEM block of the file at path as a bank key (device_pki_bank_key_read()).
 * Returns 0, QC_EIO (unreadable) or QC_ECERT. */
QC_MUST_CHECK int device_pki_bank_key_load(const char *path, device_bank_key_t *out);

/* Frees the key and certificate of k and empties it; accepts NULL. */
void device_pki_bank_key_clear(device_bank_key_t *k);

#endif
