/* fuzz_cert.c - libFuzzer target over the certificate path: proto_cert_verify() of a device
 * certificate (DER) against the CA fuzz_seed made with the fixed CA key, and a CRL.
 *
 * Properties, beyond "no crash, no leak, no undefined behaviour":
 * - no identity believed without the CA's signature: a certificate that verifies carries a
 *   signature OpenSSL, asked directly, accepts under the CA's key;
 * - the device id it yields is its one commonName, 1..PROTO_DEVICE_ID_MAX visible ASCII
 *   bytes, and its key is a P-256 key. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/x509.h>

#include "fuzz_common.h"
#include "fuzz_msgs.h"
#include "proto_cert.h"
#include "proto_envelope.h"

#ifndef FUZZ_DATA_DIR
#error "FUZZ_DATA_DIR is where fuzz_seed wrote the CA"
#endif

static proto_trust_t *trust;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    FUZZ_CHECK(proto_trust_new(FUZZ_DATA_DIR "/" FUZZ_CA_FILE, NULL, &trust) == 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char id[PROTO_DEVICE_ID_MAX + 1];
    EVP_PKEY *pub = NULL;
    if (proto_cert_verify(trust, data, size, time(NULL), id, &pub) != 0) {
        FUZZ_CHECK(pub == NULL);
        return 0;
    }
    FUZZ_CHECK(pub != NULL);
    size_t n = strlen(id);
    FUZZ_CHECK(n >= 1 && n <= PROTO_DEVICE_ID_MAX);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(id[i] >= 0x21 && id[i] <= 0x7e);
    FUZZ_CHECK(EVP_PKEY_get_bits(pub) == 256 && EVP_PKEY_get_base_id(pub) == EVP_PKEY_EC);

    const unsigned char *p = data;
    X509 *x = d2i_X509(NULL, &p, (long)size);
    FUZZ_CHECK(x != NULL);
    FUZZ_CHECK(X509_verify(x, fuzz_key_ca()) == 1);
    char cn[PROTO_DEVICE_ID_MAX + 2];
    FUZZ_CHECK(X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof cn) ==
               (int)n);
    FUZZ_CHECK(strcmp(cn, id) == 0);
    X509_free(x);
    EVP_PKEY_free(pub);
    return 0;
}
