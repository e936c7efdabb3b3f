/* proto_curve.h - CURVE key pairs and lists of public keys, as files.
 *
 * A key pair file holds two lines, "public = Z85" and "secret = Z85" ('#' comments), mode
 * 0600; its public half is also written alone to path + ".pub". A key list (a server's
 * allow-list) holds one Z85 public key per line, blank lines and '#' comments ignored, so it
 * can be built by concatenating .pub files. Keys are 32 bytes, 40 characters in Z85. */
#ifndef PROTO_CURVE_H
#define PROTO_CURVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "qc_error.h"

#define PROTO_CURVE_KEY_Z85_LEN 40 /* a Z85 CURVE key, without the NUL */
#define PROTO_CURVE_KEY_SIZE 32    /* a raw CURVE key */

/* A CURVE key pair in Z85 text. */
typedef struct proto_curve_keypair {
    char public_z85[PROTO_CURVE_KEY_Z85_LEN + 1];
    char secret_z85[PROTO_CURVE_KEY_Z85_LEN + 1];
} proto_curve_keypair_t;

/* Reads a key pair file: two lines "public = Z85" and "secret = Z85" ('#' comments).
 * Returns 0, QC_EIO or QC_ECONFIG. */
QC_MUST_CHECK int proto_curve_keypair_load(const char *path, proto_curve_keypair_t *out);

/* Creates a new key pair and writes it to path with mode 0600 (the public key also to
 * path + ".pub", as one bare Z85 line so allow-lists can be concatenated from .pub files).
 * Never overwrites: an existing path (or path.pub) gives QC_EIO. Returns 0, QC_EIO or
 * QC_ECRYPTO; on error nothing is left on disk and *out holds no secret. */
QC_MUST_CHECK int proto_curve_keypair_create(const char *path, proto_curve_keypair_t *out);

/* Wipes the secret half. */
void proto_curve_keypair_wipe(proto_curve_keypair_t *kp);

/* A list of raw CURVE public keys, owned by whoever loaded it. */
typedef struct proto_curve_keylist {
    uint8_t (*keys)[PROTO_CURVE_KEY_SIZE];
    size_t count;
} proto_curve_keylist_t;

/* Reads a key list file (one Z85 key per line, blank lines and '#' comments ignored) of at
 * most count_max keys into *out, which must be empty. Returns 0, QC_ECONFIG (unreadable, a
 * line that is not a Z85 CURVE key, more than count_max keys; logged as rpc.allow_unreadable
 * or rpc.allow_invalid with the path and line) or QC_ENOMEM; on error *out is left empty. */
QC_MUST_CHECK int proto_curve_keylist_load(const char *path, size_t count_max,
                                           proto_curve_keylist_t *out);

/* True when key is in list; compares in constant time per key. */
bool proto_curve_keylist_contains(const proto_curve_keylist_t *list,
                                  const uint8_t key[PROTO_CURVE_KEY_SIZE]);

/* Frees the keys and empties the list; accepts an empty list. */
void proto_curve_keylist_clear(proto_curve_keylist_t *list);

#endif
