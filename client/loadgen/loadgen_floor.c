/* loadgen_floor.c - P-256 verify and HSM sign rates by CPU time, and /proc CPU of services. */
#include "loadgen_floor.h"

#include <assert.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "proto_envelope.h"
#include "qc_error.h"
#include "signer_token.h"

#define LOADGEN_FLOOR_BATCH 64 /* operations between two clock reads */
#define LOADGEN_PIN_MAX 256
#define LOADGEN_STAT_MAX 4096 /* bytes of /proc/PID/stat read */
#define LOADGEN_STAT_UTIME_FIELD 14

static double loadgen_thread_cpu(void)
{
    struct timespec ts;
    int rc = clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    assert(rc == 0);
    (void)rc;
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int loadgen_floor_verify(int ms, double *cpu_s)
{
    assert(ms > 0 && cpu_s != NULL);
    int rc = QC_ECRYPTO;
    uint8_t digest[PROTO_DIGEST_SIZE], sig[PROTO_SIG_DER_MAX];
    size_t sig_len = sizeof sig;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    EVP_PKEY_CTX *sctx = key != NULL ? EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL) : NULL;
    if (sctx == NULL || RAND_bytes(digest, sizeof digest) != 1 || EVP_PKEY_sign_init(sctx) != 1 ||
        EVP_PKEY_sign(sctx, sig, &sig_len, digest, sizeof digest) != 1)
        goto out;
    uint64_t n = 0;
    double start = loadgen_thread_cpu(), now = start;
    while (now - start < ms / 1000.0) {
        for (int i = 0; i < LOADGEN_FLOOR_BATCH; i++, n++) {
            EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
            int ok = ctx != NULL && EVP_PKEY_verify_init(ctx) == 1 &&
                     EVP_PKEY_verify(ctx, sig, sig_len, digest, sizeof digest) == 1;
            EVP_PKEY_CTX_free(ctx);
            if (!ok)
                goto out;
        }
        now = loadgen_thread_cpu();
    }
    *cpu_s = (now - start) / (double)n;
    rc = 0;
out:
    EVP_PKEY_CTX_free(sctx);
    EVP_PKEY_free(key);
    return rc;
}

static int loadgen_read_pin(const char *path, char *pin, size_t cap, size_t *len)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return QC_EIO;
    size_t n = fread(pin, 1, cap - 1, f);
    fclose(f);
    while (n > 0 && (pin[n - 1] == '\n' || pin[n - 1] == '\r'))
        n--;
    pin[n] = '\0';
    *len = n;
    return n > 0 ? 0 : QC_EIO;
}

int loadgen_floor_hsm(const char *module, const char *softhsm_conf, const char *token_label,
                      const char *pin_path, const char *key_label, int ms, double *cpu_s)
{
    assert(module != NULL && softhsm_conf != NULL && token_label != NULL && pin_path != NULL);
    assert(key_label != NULL && ms > 0 && cpu_s != NULL);
    if (setenv("SOFTHSM2_CONF", softhsm_conf, 1) != 0)
        return QC_EIO;
    signer_token_t *tok = NULL;
    signer_key_t *key = NULL;
    signer_session_t *sess = NULL;
    char pin[LOADGEN_PIN_MAX];
    size_t pin_len = 0;
    int rc = loadgen_read_pin(pin_path, pin, sizeof pin, &pin_len);
    if (rc == 0)
        rc = signer_token_open(module, token_label, &tok);
    if (rc == 0)
        rc = signer_token_login(tok, pin, pin_len);
    OPENSSL_cleanse(pin, sizeof pin);
    if (rc == 0)
        rc = signer_token_find_key(tok, key_label, 1, &key);
    if (rc == 0)
        rc = signer_session_open(tok, &sess);
    uint8_t digest[PROTO_DIGEST_SIZE], raw[PROTO_SIG_RAW_SIZE];
    if (rc == 0 && RAND_bytes(digest, sizeof digest) != 1)
        rc = QC_ECRYPTO;
    uint64_t n = 0;
    double start = loadgen_thread_cpu(), now = start;
    while (rc == 0 && now - start < ms / 1000.0) {
        for (int i = 0; rc == 0 && i < LOADGEN_FLOOR_BATCH; i++, n++) {
            rc = signer_session_sign(sess, key, digest, raw);
            digest[n % sizeof digest]++;
        }
        now = loadgen_thread_cpu();
    }
    if (rc == 0)
        *cpu_s = (now - start) / (double)n;
    signer_session_destroy(&sess);
    signer_key_destroy(&key);
    signer_token_destroy(&tok);
    return rc;
}

int loadgen_proc_cpu(int pid, double *cpu_s)
{
    assert(cpu_s != NULL);
    char path[64], buf[LOADGEN_STAT_MAX];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return QC_ENOTFOUND;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name (field 2) may hold spaces: count fields after its closing ')'. */
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return QC_ENOTFOUND;
    int field = 2;
    unsigned long long utime = 0, stime = 0;
    for (char *tok = strtok(p + 1, " "); tok != NULL; tok = strtok(NULL, " ")) {
        field++;
        if (field == LOADGEN_STAT_UTIME_FIELD)
            utime = strtoull(tok, NULL, 10);
        else if (field == LOADGEN_STAT_UTIME_FIELD + 1) {
            stime = strtoull(tok, NULL, 10);
            break;
        }
    }
    long hz = sysconf(_SC_CLK_TCK);
    *cpu_s = (double)(utime + stime) / (double)(hz > 0 ? hz : 100);
    return 0;
}

static int loadgen_proc_cmp(const void *a, const void *b)
{
    return strcmp(((const loadgen_proc_t *)a)->name, ((const loadgen_proc_t *)b)->name);
}

int loadgen_procs_find(const char *pids_dir, loadgen_proc_t *procs, size_t cap, size_t *count)
{
    assert(pids_dir != NULL && procs != NULL && count != NULL);
    *count = 0;
    DIR *d = opendir(pids_dir);
    if (d == NULL)
        return QC_EIO;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && *count < cap) {
        size_t len = strlen(e->d_name);
        if (len <= 4 || len - 4 >= LOADGEN_PROC_NAME_MAX || strcmp(e->d_name + len - 4, ".pid"))
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", pids_dir, e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        int pid = 0;
        int got = fscanf(f, "%d", &pid);
        fclose(f);
        double cpu = 0;
        if (got != 1 || pid <= 0 || loadgen_proc_cpu(pid, &cpu) != 0)
            continue;
        loadgen_proc_t *p = &procs[(*count)++];
        memset(p, 0, sizeof *p);
        memcpy(p->name, e->d_name, len - 4);
        p->pid = pid;
        p->cpu_start_s = p->cpu_end_s = cpu;
    }
    closedir(d);
    qsort(procs, *count, sizeof *procs, loadgen_proc_cmp);
    return 0;
}

double loadgen_self_cpu(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}
