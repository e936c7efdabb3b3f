/* signer_login.c - the user PIN read from a file or the environment, and the token logged in. */
#include "signer_login.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "ops_log.h"
#include "qc_error.h"

#define SIGNER_PIN_ENV "QC_SIGNER_PIN"

/* Reads the PIN from pin_file, or else from $QC_SIGNER_PIN (which is then wiped from the
 * environment), into pin (capacity SIGNER_PIN_MAX + 1). A trailing newline is dropped.
 * Returns the length, or a negative QC_E* code (logged). */
static int signer_read_pin(const char *pin_file, char pin[SIGNER_PIN_MAX + 1])
{
    if (pin_file != NULL && pin_file[0] != '\0') {
        int fd = open(pin_file, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            ops_log(OPS_LOG_ERROR, "signer.pin_missing", "pin_file", pin_file, "error",
                    strerror(errno), NULL);
            return QC_EIO;
        }
        struct stat st;
        if (fstat(fd, &st) == 0 && (st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
            ops_log(OPS_LOG_WARN, "signer.pin_file_mode", "pin_file", pin_file, "error",
                    "readable by group or others; it should be 0600", NULL);
        /* One byte beyond the limit tells "too long" from "exactly the limit". */
        char buf[SIGNER_PIN_MAX + 3];
        ssize_t n = read(fd, buf, sizeof(buf));
        close(fd);
        if (n < 0) {
            OPENSSL_cleanse(buf, sizeof(buf));
            return QC_EIO;
        }
        size_t len = (size_t)n;
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
            len--;
        if (len == 0 || len > SIGNER_PIN_MAX) {
            OPENSSL_cleanse(buf, sizeof(buf));
            ops_log(OPS_LOG_ERROR, "signer.pin_invalid", "pin_file", pin_file, "error",
                    len == 0 ? "empty" : "too long", NULL);
            return QC_ECONFIG;
        }
        memcpy(pin, buf, len);
        pin[len] = '\0';
        OPENSSL_cleanse(buf, sizeof(buf));
        return (int)len;
    }
    char *env = getenv(SIGNER_PIN_ENV);
    if (env == NULL || env[0] == '\0') {
        ops_log(OPS_LOG_ERROR, "signer.pin_missing", "error",
                "no pin_file configured and QC_SIGNER_PIN is not set", NULL);
        return QC_ECONFIG;
    }
    size_t len = strlen(env);
    if (len > SIGNER_PIN_MAX) {
        ops_log(OPS_LOG_ERROR, "signer.pin_invalid", "error", "QC_SIGNER_PIN too long", NULL);
        return QC_ECONFIG;
    }
    memcpy(pin, env, len + 1);
    /* Wipe it where it lives, so neither children nor /proc/<pid>/environ keep it. */
    OPENSSL_cleanse(env, len);
    unsetenv(SIGNER_PIN_ENV);
    return (int)len;
}

/* Opens the token and logs in; the PIN is wiped before returning. */
int signer_login_open(const ops_config_t *cfg, signer_token_t **out)
{
    const char *module = ops_config_str(cfg, "module");
    const char *label = ops_config_str(cfg, "token_label");
    int rc = signer_token_open(module, label, out);
    if (rc != 0)
        return rc;
    char pin[SIGNER_PIN_MAX + 1];
    int pin_len = signer_read_pin(ops_config_str(cfg, "pin_file"), pin);
    if (pin_len < 0) {
        signer_token_destroy(out);
        return pin_len;
    }
    rc = signer_token_login(*out, pin, (size_t)pin_len);
    OPENSSL_cleanse(pin, sizeof(pin));
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "signer.login_failed", "token_label", label, "error",
                qc_strerror(rc), NULL);
        signer_token_destroy(out);
    }
    return rc;
}
