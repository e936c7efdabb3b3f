/* proto_curve.c - CURVE key pairs and lists of public keys, as files. */
#include "proto_curve.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <zmq.h>

#include "ops_log.h"
#include "qc_error.h"
#include "rpc_common.h"

#define PROTO_RPC_KEYFILE_LINE_MAX 256

_Static_assert(PROTO_CURVE_KEY_Z85_LEN == PROTO_CURVE_KEY_SIZE * 5 / 4,
               "Z85 is 5 chars per 4 bytes");

/* ---------------------------------------------------------------- key pairs */

int proto_curve_keypair_load(const char *path, proto_curve_keypair_t *out)
{
    assert(path != NULL);
    assert(out != NULL);
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        ops_log(OPS_LOG_ERROR, "rpc.keys_unreadable", "path", path, "error", strerror(errno), NULL);
        return QC_EIO;
    }
    char line[PROTO_RPC_KEYFILE_LINE_MAX];
    int rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f) != NULL) {
        if (strchr(line, '\n') == NULL && !feof(f)) {
            rc = QC_ECONFIG; /* a truncated line is not a key */
            break;
        }
        char *s = rpc_trim(line);
        if (*s == '\0' || *s == '#')
            continue;
        char *eq = strchr(s, '=');
        if (eq == NULL) {
            rc = QC_ECONFIG;
            break;
        }
        *eq = '\0';
        char *key = rpc_trim(s);
        char *value = rpc_trim(eq + 1);
        char *dst = NULL;
        if (strcmp(key, "public") == 0)
            dst = out->public_z85;
        else if (strcmp(key, "secret") == 0)
            dst = out->secret_z85;
        if (dst == NULL || !rpc_z85_key_valid(value)) {
            rc = QC_ECONFIG;
            break;
        }
        memcpy(dst, value, PROTO_CURVE_KEY_Z85_LEN + 1);
    }
    OPENSSL_cleanse(line, sizeof line);
    if (ferror(f))
        rc = QC_EIO;
    fclose(f);
    if (rc == 0 && (out->public_z85[0] == '\0' || out->secret_z85[0] == '\0'))
        rc = QC_ECONFIG;
    if (rc == 0) {
        /* A public key that does not belong to the secret would make every handshake fail
         * far from the cause; catch it here. */
        char derived[PROTO_CURVE_KEY_Z85_LEN + 1];
        if (zmq_curve_public(derived, out->secret_z85) != 0 ||
            strcmp(derived, out->public_z85) != 0)
            rc = QC_ECONFIG;
    }
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "rpc.keys_invalid", "path", path, "error", qc_errname(rc), NULL);
        proto_curve_keypair_wipe(out);
        memset(out->public_z85, 0, sizeof out->public_z85);
    }
    return rc;
}

static int rpc_write_file(const char *path, mode_t mode, const char *text)
{
    /* O_EXCL: creating a key pair must never silently replace one in use. */
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        return QC_EIO;
    int rc = 0;
    if (fchmod(fd, mode) != 0)
        rc = QC_EIO;
    size_t len = strlen(text);
    size_t done = 0;
    while (rc == 0 && done < len) {
        ssize_t n = write(fd, text + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            rc = QC_EIO;
        else
            done += (size_t)n;
    }
    if (rc == 0 && fsync(fd) != 0)
        rc = QC_EIO;
    if (close(fd) != 0)
        rc = QC_EIO;
    if (rc != 0)
        unlink(path);
    return rc;
}

int proto_curve_keypair_create(const char *path, proto_curve_keypair_t *out)
{
    assert(path != NULL);
    assert(out != NULL);
    memset(out, 0, sizeof *out);
    if (zmq_curve_keypair(out->public_z85, out->secret_z85) != 0)
        return QC_ECRYPTO;
    char text[2 * PROTO_RPC_KEYFILE_LINE_MAX];
    char pub_path[PATH_MAX];
    int n = snprintf(pub_path, sizeof pub_path, "%s.pub", path);
    if (n < 0 || (size_t)n >= sizeof pub_path) {
        proto_curve_keypair_wipe(out);
        return QC_EIO;
    }
    snprintf(text, sizeof text,
             "# quancun CURVE key pair: keep secret, mode 0600\npublic = %s\nsecret = %s\n",
             out->public_z85, out->secret_z85);
    int rc = rpc_write_file(path, S_IRUSR | S_IWUSR, text);
    OPENSSL_cleanse(text, sizeof text);
    if (rc == 0) {
        /* The .pub file is one bare key line so allow-lists can be built by concatenation. */
        snprintf(text, sizeof text, "%s\n", out->public_z85);
        rc = rpc_write_file(pub_path, S_IRUSR | S_IWUSR | S_IRGRP | S_IROTH, text);
        if (rc != 0)
            unlink(path);
    }
    if (rc != 0)
        proto_curve_keypair_wipe(out);
    return rc;
}

void proto_curve_keypair_wipe(proto_curve_keypair_t *kp)
{
    if (kp != NULL)
        OPENSSL_cleanse(kp->secret_z85, sizeof kp->secret_z85);
}

/* ---------------------------------------------------------------- key lists */

int proto_curve_keylist_load(const char *path, size_t count_max, proto_curve_keylist_t *out)
{
    assert(path != NULL);
    assert(out != NULL);
    assert(out->keys == NULL);
    assert(out->count == 0);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        ops_log(OPS_LOG_ERROR, "rpc.allow_unreadable", "path", path, "error", strerror(errno),
                NULL);
        return QC_ECONFIG;
    }
    int rc = 0;
    char line[PROTO_RPC_KEYFILE_LINE_MAX];
    size_t cap = 0;
    int lineno = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        lineno++;
        char *s = rpc_trim(line);
        if (*s == '\0' || *s == '#')
            continue;
        uint8_t key[PROTO_CURVE_KEY_SIZE];
        if (strlen(s) != PROTO_CURVE_KEY_Z85_LEN || zmq_z85_decode(key, s) == NULL) {
            ops_logf(OPS_LOG_ERROR, "rpc.allow_invalid", "%s:%d: not a Z85 CURVE key", path,
                     lineno);
            rc = QC_ECONFIG;
            break;
        }
        if (out->count == count_max) {
            ops_logf(OPS_LOG_ERROR, "rpc.allow_invalid", "%s: more than %zu keys", path, count_max);
            rc = QC_ECONFIG;
            break;
        }
        if (out->count == cap) {
            size_t ncap = cap == 0 ? 16 : cap * 2;
            void *p = realloc(out->keys, ncap * sizeof out->keys[0]);
            if (p == NULL) {
                rc = QC_ENOMEM;
                break;
            }
            out->keys = p;
            cap = ncap;
        }
        memcpy(out->keys[out->count++], key, sizeof key);
    }
    if (rc == 0 && ferror(f))
        rc = QC_ECONFIG;
    fclose(f);
    if (rc != 0)
        proto_curve_keylist_clear(out);
    assert(rc != 0 || out->count <= count_max);
    return rc;
}

bool proto_curve_keylist_contains(const proto_curve_keylist_t *list,
                                  const uint8_t key[PROTO_CURVE_KEY_SIZE])
{
    assert(list != NULL);
    assert(key != NULL);
    bool found = false;
    for (size_t i = 0; !found && i < list->count; i++)
        found = CRYPTO_memcmp(list->keys[i], key, PROTO_CURVE_KEY_SIZE) == 0;
    return found;
}

void proto_curve_keylist_clear(proto_curve_keylist_t *list)
{
    assert(list != NULL);
    free(list->keys);
    list->keys = NULL;
    list->count = 0;
}
