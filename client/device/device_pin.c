/* device_pin.c - PIN hashing (PBKDF2-HMAC-SHA-256), constant-time check, retry counter. */
#include "device_pin.h"

#include <assert.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "qc_error.h"

int device_pin_valid(const char *pin, size_t pin_len)
{
    assert(pin != NULL || pin_len == 0);
    if (pin_len < DEVICE_PIN_LEN_MIN || pin_len > DEVICE_PIN_LEN_MAX)
        return QC_EINVAL;
    for (size_t i = 0; i < pin_len; i++) {
        if (pin[i] < '0' || pin[i] > '9')
            return QC_EINVAL;
    }
    return 0;
}

static int pin_derive(const device_pin_t *rec, const char *pin, size_t pin_len,
                      uint8_t out[DEVICE_PIN_HASH_SIZE])
{
    assert(rec->iterations >= DEVICE_PIN_ITERATIONS_SIMULATED);
    assert(rec->iterations <= DEVICE_PIN_ITERATIONS_MAX);
    if (PKCS5_PBKDF2_HMAC(pin, (int)pin_len, rec->salt, DEVICE_PIN_SALT_SIZE, (int)rec->iterations,
                          EVP_sha256(), DEVICE_PIN_HASH_SIZE, out) != 1) {
        OPENSSL_cleanse(out, DEVICE_PIN_HASH_SIZE);
        return QC_ECRYPTO;
    }
    return 0;
}

int device_pin_set(device_pin_t *rec, const char *pin, size_t pin_len)
{
    return device_pin_set_iterations(rec, pin, pin_len, DEVICE_PIN_ITERATIONS);
}

int device_pin_set_iterations(device_pin_t *rec, const char *pin, size_t pin_len,
                              uint32_t iterations)
{
    assert(rec != NULL);
    int rc = device_pin_valid(pin, pin_len);
    if (rc != 0)
        return rc;
    if (iterations < DEVICE_PIN_ITERATIONS_SIMULATED || iterations > DEVICE_PIN_ITERATIONS_MAX)
        return QC_EINVAL;
    memset(rec, 0, sizeof(*rec));
    rec->iterations = iterations;
    rec->tries_left = DEVICE_PIN_TRIES;
    if (RAND_bytes(rec->salt, DEVICE_PIN_SALT_SIZE) != 1) {
        OPENSSL_cleanse(rec, sizeof(*rec));
        return QC_ECRYPTO;
    }
    rc = pin_derive(rec, pin, pin_len, rec->hash);
    if (rc != 0)
        OPENSSL_cleanse(rec, sizeof(*rec));
    return rc;
}

int device_pin_check(device_pin_t *rec, const char *pin, size_t pin_len)
{
    assert(rec != NULL);
    assert(rec->tries_left <= DEVICE_PIN_TRIES);
    if (rec->tries_left == 0)
        return QC_ELOCKED;
    /* A malformed PIN is still a wrong try: the format must not give a free oracle. */
    uint8_t derived[DEVICE_PIN_HASH_SIZE];
    int ok = 0;
    if (device_pin_valid(pin, pin_len) == 0) {
        int rc = pin_derive(rec, pin, pin_len, derived);
        if (rc != 0)
            return rc;
        ok = CRYPTO_memcmp(derived, rec->hash, DEVICE_PIN_HASH_SIZE) == 0;
        OPENSSL_cleanse(derived, sizeof(derived));
    }
    if (ok) {
        rec->tries_left = DEVICE_PIN_TRIES;
        return 0;
    }
    rec->tries_left--;
    return rec->tries_left == 0 ? QC_ELOCKED : QC_EPIN;
}

void device_pin_admin_reset(device_pin_t *rec)
{
    assert(rec != NULL);
    assert(rec->iterations >= DEVICE_PIN_ITERATIONS_SIMULATED);
    rec->tries_left = DEVICE_PIN_TRIES;
}
