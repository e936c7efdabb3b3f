/* loadgen_floor.c - P-256 verify and HSM sign rates by CPU time, and /proc CPU of services.
 *
 * The HSM rate is a benchmark of the token, not of qc-signer: the module is loaded here and
 * driven through the bare PKCS#11 interface (p11-kit's header), one session, one
 * C_SignInit + C_Sign per signature with a session copy of the key (as qc-signer signs),
 * which is the least any signer must do per signature. */
#include "loadgen_floor.h"

#include <assert.h>
#include <dirent.h>
#include <dlfcn.h>
#include <stdbool.h>
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

#include <p11-kit/pkcs11.h>

#include "proto_envelope.h"
#include "qc_error.h"

#define LOADGEN_FLOOR_BATCH 64 /* operations between two clock reads */
#define LOADGEN_PIN_MAX 256
#define LOADGEN_STAT_MAX 4096 /* bytes of /proc/PID/stat read */
#define LOADGEN_STAT_UTIME_FIELD 14
#define LOADGEN_SLOTS_MAX 64        /* token slots looked at */
#define LOADGEN_TOKEN_LABEL_SIZE 32 /* CK_TOKEN_INFO.label, space padded */
#define LOADGEN_KEY_ID "v1"         /* CKA_ID of a key's version 1 (ops/cluster, signer) */
#define LOADGEN_SIG_MAX 132         /* room for any ECDSA signature up to P-521 */

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
    assert(ms > 0);
    assert(cpu_s != NULL);
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

/* The token session of the measurement: module, slot, session and key. */
typedef struct loadgen_p11 {
    CK_FUNCTION_LIST_PTR fn;
    bool initialized; /* by us: we finalize it */
    CK_SESSION_HANDLE session;
    bool open;
    CK_OBJECT_HANDLE key;
} loadgen_p11_t;

/* Loads the module and initializes it. The module is never dlclose()d: a PKCS#11 library
 * may leave threads or atexit handlers behind (qc-signer keeps it loaded for the same
 * reason). */
static int loadgen_p11_load(const char *module, loadgen_p11_t *p)
{
    void *dl = dlopen(module, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL)
        return QC_EIO;
    CK_C_GetFunctionList get_list;
    /* POSIX guarantees that a function pointer survives the round trip through void *. */
    *(void **)&get_list = dlsym(dl, "C_GetFunctionList");
    if (get_list == NULL || get_list(&p->fn) != CKR_OK || p->fn == NULL)
        return QC_EIO;
    CK_C_INITIALIZE_ARGS init = {0};
    init.flags = CKF_OS_LOCKING_OK;
    if (p->fn->C_Initialize(&init) != CKR_OK)
        return QC_ECRYPTO;
    p->initialized = true;
    return 0;
}

/* Opens a session on the token labelled label (space padded to 32 bytes in the token
 * info). */
static int loadgen_p11_open(loadgen_p11_t *p, const char *label)
{
    CK_SLOT_ID slots[LOADGEN_SLOTS_MAX];
    CK_ULONG count = LOADGEN_SLOTS_MAX;
    if (p->fn->C_GetSlotList(CK_TRUE, slots, &count) != CKR_OK)
        return QC_ECRYPTO;
    unsigned char want[LOADGEN_TOKEN_LABEL_SIZE];
    size_t len = strlen(label);
    if (len > sizeof want)
        return QC_EINVAL;
    memset(want, ' ', sizeof want);
    memcpy(want, label, len);
    for (CK_ULONG i = 0; i < count; i++) {
        CK_TOKEN_INFO info;
        if (p->fn->C_GetTokenInfo(slots[i], &info) != CKR_OK ||
            memcmp(info.label, want, sizeof want) != 0)
            continue;
        if (p->fn->C_OpenSession(slots[i], CKF_SERIAL_SESSION, NULL, NULL, &p->session) != CKR_OK)
            return QC_ECRYPTO;
        p->open = true;
        return 0;
    }
    return QC_ENOTFOUND;
}

/* Finds the one private key with CKA_LABEL label and CKA_ID "v1" (how the cluster's tokens
 * name a key's version). */
static int loadgen_p11_find(loadgen_p11_t *p, const char *label)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof cls},
        {CKA_LABEL, (void *)label, strlen(label)},
        {CKA_ID, (void *)LOADGEN_KEY_ID, strlen(LOADGEN_KEY_ID)},
    };
    CK_OBJECT_HANDLE found[2];
    CK_ULONG n = 0;
    if (p->fn->C_FindObjectsInit(p->session, tmpl, sizeof tmpl / sizeof tmpl[0]) != CKR_OK)
        return QC_ECRYPTO;
    CK_RV rv = p->fn->C_FindObjects(p->session, found, 2, &n);
    p->fn->C_FindObjectsFinal(p->session);
    if (rv != CKR_OK)
        return QC_ECRYPTO;
    if (n != 1)
        return QC_EKEYID;
    p->key = found[0];
    /* Sign with a session copy of the key when the token makes one, as qc-signer does
     * (signer_token.c says why: SoftHSM2 re-reads a token object's file at each C_SignInit),
     * so that the floor is the least a signer must do with this token. */
    CK_BBOOL no = CK_FALSE;
    CK_ATTRIBUTE copy_tmpl[] = {{CKA_TOKEN, &no, sizeof no}};
    CK_OBJECT_HANDLE copy = 0;
    if (p->fn->C_CopyObject(p->session, found[0], copy_tmpl, 1, &copy) == CKR_OK)
        p->key = copy;
    return 0;
}

static void loadgen_p11_close(loadgen_p11_t *p)
{
    if (p->open) {
        p->fn->C_Logout(p->session);
        p->fn->C_CloseSession(p->session);
    }
    if (p->initialized)
        p->fn->C_Finalize(NULL);
    memset(p, 0, sizeof *p);
}

/* One C_SignInit + C_Sign of a P-256 digest with CKM_ECDSA, as a signer does per request. */
static int loadgen_p11_sign(loadgen_p11_t *p, uint8_t digest[PROTO_DIGEST_SIZE])
{
    CK_MECHANISM mech = {CKM_ECDSA, NULL, 0};
    uint8_t sig[LOADGEN_SIG_MAX];
    CK_ULONG len = sizeof sig;
    if (p->fn->C_SignInit(p->session, &mech, p->key) != CKR_OK ||
        p->fn->C_Sign(p->session, digest, PROTO_DIGEST_SIZE, sig, &len) != CKR_OK ||
        len != PROTO_SIG_RAW_SIZE)
        return QC_ECRYPTO;
    return 0;
}

int loadgen_floor_hsm(const char *module, const char *softhsm_conf, const char *token_label,
                      const char *pin_path, const char *key_label, int ms, double *cpu_s)
{
    assert(module != NULL);
    assert(softhsm_conf != NULL);
    assert(token_label != NULL);
    assert(pin_path != NULL);
    assert(key_label != NULL);
    assert(ms > 0);
    assert(cpu_s != NULL);
    if (setenv("SOFTHSM2_CONF", softhsm_conf, 1) != 0)
        return QC_EIO;
    loadgen_p11_t p = {0};
    char pin[LOADGEN_PIN_MAX];
    size_t pin_len = 0;
    int rc = loadgen_read_pin(pin_path, pin, sizeof pin, &pin_len);
    if (rc == 0)
        rc = loadgen_p11_load(module, &p);
    if (rc == 0)
        rc = loadgen_p11_open(&p, token_label);
    if (rc == 0) {
        CK_RV rv = p.fn->C_Login(p.session, CKU_USER, (CK_UTF8CHAR_PTR)pin, pin_len);
        rc = rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN ? 0 : QC_EPIN;
    }
    OPENSSL_cleanse(pin, sizeof pin);
    if (rc == 0)
        rc = loadgen_p11_find(&p, key_label);
    uint8_t digest[PROTO_DIGEST_SIZE];
    if (rc == 0 && RAND_bytes(digest, sizeof digest) != 1)
        rc = QC_ECRYPTO;
    uint64_t n = 0;
    double start = loadgen_thread_cpu(), now = start;
    while (rc == 0 && now - start < ms / 1000.0) {
        for (int i = 0; rc == 0 && i < LOADGEN_FLOOR_BATCH; i++, n++) {
            rc = loadgen_p11_sign(&p, digest);
            digest[n % sizeof digest]++;
        }
        now = loadgen_thread_cpu();
    }
    if (rc == 0)
        *cpu_s = (now - start) / (double)n;
    loadgen_p11_close(&p);
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
    assert(pids_dir != NULL);
    assert(procs != NULL);
    assert(count != NULL);
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
