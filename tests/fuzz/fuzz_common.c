/* fuzz_common.c - fixed test keys, a scratch directory and the failure report of the targets. */
#include "fuzz_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/pem.h>

/* P-256 test keys, made once with `openssl genpkey -algorithm EC -pkeyopt
 * ec_paramgen_curve:P-256`; public here because they protect nothing. */
static const char SIGNING_PEM[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgBWTcku+p/s+tRpiC\n"
    "q+HjUCSuB+ABEGbdMn5AvlOkXxWhRANCAAS0dU2WRK4W5OKo5nAUFC7DWA6W5OA5\n"
    "gZAVQIn008mRsdd0iTwRuH9MLhHqnybLkcECXcxPaAE0trASOBEyCXGj\n"
    "-----END PRIVATE KEY-----\n";
static const char CA_PEM[] = "-----BEGIN PRIVATE KEY-----\n"
                             "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg797i/ixvqMkijIqn\n"
                             "LLzQFONuoaRHZU0W4WfENO0CrW2hRANCAAQvB7TbDQJjblTqGOq9eOz0td0hhtwF\n"
                             "l0EpW5PU/oRG14DDJvXaaBVWl5/RULrdXjpv3xwT4ycvLFhqD4B4DIiU\n"
                             "-----END PRIVATE KEY-----\n";

void fuzz_fail(const char *file, int line, const char *what)
{
    fprintf(stderr, "fuzz: property broken at %s:%d: %s\n", file, line, what);
    abort();
}

static EVP_PKEY *key_from_pem(const char *pem)
{
    BIO *bio = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *key = bio != NULL ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (key == NULL)
        fuzz_fail(__FILE__, __LINE__, "a fixed test key does not load");
    return key;
}

EVP_PKEY *fuzz_key_signing(void)
{
    static EVP_PKEY *key;
    if (key == NULL)
        key = key_from_pem(SIGNING_PEM);
    return key;
}

EVP_PKEY *fuzz_key_ca(void)
{
    static EVP_PKEY *key;
    if (key == NULL)
        key = key_from_pem(CA_PEM);
    return key;
}

static char scratch[FUZZ_PATH_MAX];

static void scratch_remove(void)
{
    char cmd[FUZZ_PATH_MAX + 16];
    if (scratch[0] != '\0' && snprintf(cmd, sizeof cmd, "rm -rf '%s'", scratch) < (int)sizeof cmd)
        (void)system(cmd);
}

const char *fuzz_scratch_dir(void)
{
    if (scratch[0] != '\0')
        return scratch;
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
    if (base == NULL)
        base = "/tmp";
    if (snprintf(scratch, sizeof scratch, "%s/qc-fuzz-XXXXXX", base) >= (int)sizeof scratch ||
        mkdtemp(scratch) == NULL)
        fuzz_fail(__FILE__, __LINE__, "no scratch directory");
    atexit(scratch_remove);
    return scratch;
}

void fuzz_write_file(const char *path, const uint8_t *bytes, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL || (len > 0 && fwrite(bytes, 1, len, f) != len) || fclose(f) != 0)
        fuzz_fail(__FILE__, __LINE__, "cannot write a scratch file");
}

uint8_t *fuzz_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL || fseek(f, 0, SEEK_END) != 0)
        fuzz_fail(__FILE__, __LINE__, "cannot read a scratch file");
    long size = ftell(f);
    rewind(f);
    uint8_t *buf = malloc(size > 0 ? (size_t)size : 1);
    if (size < 0 || buf == NULL || fread(buf, 1, (size_t)size, f) != (size_t)size)
        fuzz_fail(__FILE__, __LINE__, "cannot read a scratch file");
    fclose(f);
    *len = (size_t)size;
    return buf;
}
