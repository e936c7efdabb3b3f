/* fuzz_common.h - what the libFuzzer targets of tests/fuzz share: fixed test keys, a scratch
 * directory, and the check that turns a broken property into a crash libFuzzer records.
 *
 * The keys are fixed (PEM in fuzz_common.c) so that the seeds fuzz_seed writes at build time
 * verify in every target process: a seed signed with a key the target does not know would
 * only exercise the refusal path. They are test keys and sign nothing real. */
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#define FUZZ_PATH_MAX 512

/* A broken property: prints what and where, then aborts, so libFuzzer saves the input. */
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond))                                                                               \
            fuzz_fail(__FILE__, __LINE__, #cond);                                                  \
    } while (0)

_Noreturn void fuzz_fail(const char *file, int line, const char *what);

/* The signing key of every signed seed (a device's or the bank's: one key plays both), and
 * the key of the CA that issues the seeds' device certificates. Borrowed, made once. */
EVP_PKEY *fuzz_key_signing(void);
EVP_PKEY *fuzz_key_ca(void);

/* A scratch directory made once per process under /dev/shm (or $TMPDIR, /tmp) and removed at
 * exit: where the file-parsing targets write their input. Never NULL. */
const char *fuzz_scratch_dir(void);

/* Writes len bytes to path (replaced); aborts on failure, which is not the input's fault. */
void fuzz_write_file(const char *path, const uint8_t *bytes, size_t len);

/* Reads path into a malloc'd buffer (the caller frees it); aborts on failure. */
uint8_t *fuzz_read_file(const char *path, size_t *len);

#endif
