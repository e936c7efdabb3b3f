/* device_pin.h - the device PIN: a salted slow hash, a retry counter and a lock.
 *
 * The PIN itself is never stored: only PBKDF2-HMAC-SHA-256 of it under a random salt, with
 * DEVICE_PIN_ITERATIONS rounds so that a stolen state file does not give the PIN away
 * cheaply. DEVICE_PIN_TRIES wrong PINs in a row lock the device; only an admin reset
 * unlocks it. In a real device that reset is a command signed by the issuer's key and
 * checked by the chip; the simulator's `qc-wallet unlock --admin-reset` stands in for it.
 *
 * A device_pin_t is a plain record that the device stores in its state file; these
 * functions only compute, the caller persists. */
#ifndef DEVICE_PIN_H
#define DEVICE_PIN_H

#include <stddef.h>
#include <stdint.h>
#include "qc_error.h"

#define DEVICE_PIN_LEN_MIN 4
#define DEVICE_PIN_LEN_MAX 12
#define DEVICE_PIN_SALT_SIZE 16
#define DEVICE_PIN_HASH_SIZE 32
#define DEVICE_PIN_ITERATIONS 100000u
#define DEVICE_PIN_ITERATIONS_MIN 100000u  /* a state file asking for fewer is refused */
#define DEVICE_PIN_ITERATIONS_SIMULATED 1u /* in-memory devices whose PIN is never stored */
#define DEVICE_PIN_ITERATIONS_MAX 10000000u
#define DEVICE_PIN_TRIES 3u

/* The stored form of a PIN. A plain record (not opaque) because it is a value the state
 * file carries field by field. tries_left == 0 means locked. */
typedef struct device_pin {
    uint8_t salt[DEVICE_PIN_SALT_SIZE];
    uint8_t hash[DEVICE_PIN_HASH_SIZE];
    uint32_t iterations;
    uint32_t tries_left;
} device_pin_t;

/* Checks that pin (pin_len bytes, not NUL terminated) is DEVICE_PIN_LEN_MIN to
 * DEVICE_PIN_LEN_MAX decimal digits. Returns 0 or QC_EINVAL. */
QC_MUST_CHECK int device_pin_valid(const char *pin, size_t pin_len);

/* Sets rec to a fresh salt and the hash of pin, with DEVICE_PIN_TRIES tries.
 * Returns 0, QC_EINVAL (pin not valid) or QC_ECRYPTO; rec is wiped on error. */
QC_MUST_CHECK int device_pin_set(device_pin_t *rec, const char *pin, size_t pin_len);

/* As device_pin_set(), with iterations rounds (DEVICE_PIN_ITERATIONS_SIMULATED to
 * DEVICE_PIN_ITERATIONS_MAX). Fewer than DEVICE_PIN_ITERATIONS_MIN is only for a device that
 * lives in memory and is never stored (qc-loadgen's simulated devices): the stores refuse
 * such a record. Returns 0, QC_EINVAL (pin or iterations) or QC_ECRYPTO. */
QC_MUST_CHECK int device_pin_set_iterations(device_pin_t *rec, const char *pin, size_t pin_len,
                                            uint32_t iterations);

/* Checks pin against rec and counts the try. The caller must persist rec after every call
 * whatever the result, because the counter has changed.
 *   - locked (tries_left 0): QC_ELOCKED, nothing computed;
 *   - right PIN: tries_left = DEVICE_PIN_TRIES, returns 0;
 *   - wrong PIN: tries_left - 1, returns QC_EPIN, or QC_ELOCKED if that was the last try.
 * Returns QC_ECRYPTO when the hash could not be computed (no try is counted). The
 * comparison is constant-time and the derived key is wiped. */
QC_MUST_CHECK int device_pin_check(device_pin_t *rec, const char *pin, size_t pin_len);

/* The admin reset: tries_left = DEVICE_PIN_TRIES. The PIN itself is kept. */
void device_pin_admin_reset(device_pin_t *rec);

#endif
