/* device_pki.c - a device's key, CSR and certificate files, and the bank keys it trusts. */
#include "device_pki.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>

#include "device_home.h"
#include "proto_cert.h"
#include "proto_envelope.h"
#include "proto_id.h"
#include "qc_error.h"

#define PKI_GROUP_NAME "P-256"
#define PKI_GROUP_NAME_MAX 64
#define PKI_PUBLIC_MODE 0644
#define PKI_SECRET_MODE 0600

bool device_pki_id_valid(const char *id)
{
    assert(id != NULL);
    return proto_id_check(id, DEVICE_SERIAL_MAX, PROTO_ID_SERIAL) == 0;
}

bool device_pki_is_p256(EVP_PKEY *key)
{
    char group[PKI_GROUP_NAME_MAX];
    size_t len = 0;
    if (key == NULL || !EVP_PKEY_is_a(key, "EC"))
        return false;
    if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                       &len) != 1)
        return false;
    return strcmp(group, "prime256v1") == 0 || strcmp(group, PKI_GROUP_NAME) == 0;
}

/* ------------------------------------------------------------------ PEM files */

int device_pki_pem_read(const char *home, const char *name, BIO **out)
{
    assert(home != NULL);
    assert(name != NULL);
    assert(out != NULL);
    uint8_t *text = NULL;
    size_t len = 0;
    int rc = device_home_read(home, name, DEVICE_FILE_MAX, &text, &len);
    if (rc != 0)
        return rc;
    BIO *bio = BIO_new(BIO_s_mem());
    if (bio == NULL || BIO_write(bio, text, (int)len) != (int)len) {
        BIO_free(bio);
        OPENSSL_cleanse(text, len);
        free(text);
        return QC_ENOMEM;
    }
    OPENSSL_cleanse(text, len);
    free(text);
    *out = bio;
    return 0;
}

int device_pki_pem_write(const char *home, const char *name, BIO *bio, mode_t mode)
{
    assert(home != NULL);
    assert(name != NULL);
    assert(bio != NULL);
    char *data = NULL;
    long len = BIO_get_mem_data(bio, &data);
    if (len <= 0 || data == NULL)
        return QC_ECRYPTO;
    return device_home_write(home, name, (const uint8_t *)data, (size_t)len, mode);
}

int device_pki_load_key(const char *home, const char *name, EVP_PKEY **out)
{
    assert(home != NULL);
    assert(name != NULL);
    assert(out != NULL);
    BIO *bio = NULL;
    *out = NULL;
    int rc = device_pki_pem_read(home, name, &bio);
    if (rc != 0)
        return rc == QC_ENOTFOUND ? QC_EIO : rc;
    EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (key == NULL || !device_pki_is_p256(key)) {
        EVP_PKEY_free(key);
        return QC_ECRYPTO;
    }
    *out = key;
    return 0;
}

/* Checks that cert belongs to the holder of key named cn: its key and its commonName. */
static int cert_matches(X509 *cert, EVP_PKEY *key, const char *cn_want)
{
    EVP_PKEY *pub = X509_get0_pubkey(cert);
    if (pub == NULL || EVP_PKEY_eq(pub, key) != 1)
        return QC_ECERT;
    char cn[DEVICE_SERIAL_MAX + 2];
    int n =
        X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, (int)sizeof(cn));
    if (n <= 0 || n > DEVICE_SERIAL_MAX || strcmp(cn, cn_want) != 0)
        return QC_ECERT;
    return 0;
}

int device_pki_load_cert(const char *home, const char *name, EVP_PKEY *key, const char *cn,
                         uint8_t **der_out, size_t *der_len_out)
{
    assert(home != NULL);
    assert(name != NULL);
    assert(key != NULL);
    assert(cn != NULL);
    assert(der_out != NULL);
    assert(der_len_out != NULL);
    *der_out = NULL;
    *der_len_out = 0;
    BIO *bio = NULL;
    int rc = device_pki_pem_read(home, name, &bio);
    if (rc == QC_ENOTFOUND)
        return 0; /* not enrolled yet */
    if (rc != 0)
        return rc;
    X509 *cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (cert == NULL)
        return QC_ECERT;
    rc = cert_matches(cert, key, cn);
    unsigned char *der = NULL;
    int der_len = rc == 0 ? i2d_X509(cert, &der) : 0;
    X509_free(cert);
    if (rc != 0)
        return rc;
    if (der_len <= 0 || (size_t)der_len > PROTO_CERT_MAX) {
        OPENSSL_free(der);
        return QC_ECERT;
    }
    uint8_t *copy = malloc((size_t)der_len);
    if (copy == NULL) {
        OPENSSL_free(der);
        return QC_ENOMEM;
    }
    memcpy(copy, der, (size_t)der_len);
    OPENSSL_free(der);
    *der_out = copy;
    *der_len_out = (size_t)der_len;
    return 0;
}

static int write_key_and_csr(const char *home, const char *key_file, const char *csr_file,
                             const char *serial, EVP_PKEY *key)
{
    assert(home != NULL);
    assert(key_file != NULL);
    assert(csr_file != NULL);
    assert(serial != NULL);
    assert(key != NULL);
    int rc = QC_ECRYPTO;
    BIO *kbio = BIO_new(BIO_s_mem());
    BIO *cbio = BIO_new(BIO_s_mem());
    X509_REQ *req = X509_REQ_new();
    X509_NAME *name = X509_NAME_new();
    if (kbio == NULL || cbio == NULL || req == NULL || name == NULL) {
        rc = QC_ENOMEM;
        goto out;
    }
    if (PEM_write_bio_PrivateKey(kbio, key, NULL, NULL, 0, NULL, NULL) != 1)
        goto out;
    if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)serial, -1, -1,
                                   0) != 1)
        goto out;
    if (X509_REQ_set_version(req, 0) != 1 || X509_REQ_set_subject_name(req, name) != 1 ||
        X509_REQ_set_pubkey(req, key) != 1 || X509_REQ_sign(req, key, EVP_sha256()) <= 0)
        goto out;
    if (PEM_write_bio_X509_REQ(cbio, req) != 1)
        goto out;
    rc = device_pki_pem_write(home, key_file, kbio, PKI_SECRET_MODE);
    if (rc == 0)
        rc = device_pki_pem_write(home, csr_file, cbio, PKI_PUBLIC_MODE);
out:
    if (kbio != NULL) {
        char *data = NULL;
        long len = BIO_get_mem_data(kbio, &data);
        if (len > 0 && data != NULL)
            OPENSSL_cleanse(data, (size_t)len);
    }
    BIO_free(kbio);
    BIO_free(cbio);
    X509_REQ_free(req);
    X509_NAME_free(name);
    return rc;
}

int device_pki_create_key(const char *home, const char *key_file, const char *csr_file,
                          const char *cn, EVP_PKEY **key)
{
    assert(home != NULL);
    assert(cn != NULL);
    assert(key != NULL);
    *key = EVP_EC_gen(PKI_GROUP_NAME);
    if (*key == NULL)
        return QC_ECRYPTO;
    int rc = write_key_and_csr(home, key_file, csr_file, cn, *key);
    if (rc != 0) {
        EVP_PKEY_free(*key);
        *key = NULL;
    }
    return rc;
}

int device_pki_install_cert(const char *home, const char *name, const char *cert_path,
                            EVP_PKEY *key, const char *cn)
{
    assert(home != NULL);
    assert(name != NULL);
    assert(cert_path != NULL);
    assert(key != NULL);
    assert(cn != NULL);
    BIO *in = BIO_new_file(cert_path, "r");
    if (in == NULL)
        return QC_EIO;
    X509 *cert = PEM_read_bio_X509(in, NULL, NULL, NULL);
    BIO_free(in);
    if (cert == NULL)
        return QC_ECERT;
    int rc = cert_matches(cert, key, cn);
    BIO *out = rc == 0 ? BIO_new(BIO_s_mem()) : NULL;
    if (rc == 0 && (out == NULL || PEM_write_bio_X509(out, cert) != 1))
        rc = QC_ECRYPTO;
    if (rc == 0)
        rc = device_pki_pem_write(home, name, out, PKI_PUBLIC_MODE);
    BIO_free(out);
    X509_free(cert);
    return rc;
}

/* ------------------------------------------------------------------ bank keys */

int device_pki_bank_key_read(BIO *bio, device_bank_key_t *out)
{
    assert(bio != NULL);
    assert(out != NULL);
    assert(out->key == NULL);
    assert(out->cert == NULL);
    char *name = NULL, *header = NULL;
    unsigned char *data = NULL;
    long len = 0;
    if (PEM_read_bio(bio, &name, &header, &data, &len) != 1)
        return QC_ECERT;
    int rc = QC_ECERT;
    const unsigned char *p = data;
    if (strcmp(name, PEM_STRING_X509) == 0) {
        out->cert = d2i_X509(NULL, &p, len);
        if (out->cert != NULL && p == data + len)
            out->key = X509_get_pubkey(out->cert);
    } else if (strcmp(name, PEM_STRING_PUBLIC) == 0) {
        out->key = d2i_PUBKEY(NULL, &p, len);
        if (p != data + len) {
            EVP_PKEY_free(out->key);
            out->key = NULL;
        }
    }
    if (out->key != NULL && device_pki_is_p256(out->key))
        rc = 0;
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(data);
    if (rc != 0) {
        EVP_PKEY_free(out->key);
        X509_free(out->cert);
        out->key = NULL;
        out->cert = NULL;
    }
    return rc;
}

void device_pki_bank_key_clear(device_bank_key_t *k)
{
    if (k == NULL)
        return;
    EVP_PKEY_free(k->key);
    X509_free(k->cert);
    k->key = NULL;
    k->cert = NULL;
}

int device_pki_bank_key_load(const char *path, device_bank_key_t *out)
{
    assert(path != NULL);
    assert(out != NULL);
    BIO *in = BIO_new_file(path, "r");
    if (in == NULL)
        return QC_EIO;
    int rc = device_pki_bank_key_read(in, out);
    BIO_free(in);
    return rc;
}
