/* loadgen_floor.h - the crypto floor of this machine and the CPU time of service processes.
 *
 * The floor is what a load cannot do without on the server side: two HSM signatures (the
 * allow and the outcome) and two P-256 verifications (the device's request and report).
 * Each rate is measured on one thread, by CPU time (CLOCK_THREAD_CPUTIME_ID), so the result
 * is CPU seconds per operation whatever else the machine is doing. */
#ifndef LOADGEN_FLOOR_H
#define LOADGEN_FLOOR_H

#include <stddef.h>
#include "qc_error.h"

#define LOADGEN_PROCS_MAX 64
#define LOADGEN_PROC_NAME_MAX 64

/* Verifies a P-256 signature over a SHA-256 digest in a loop for about ms milliseconds, as
 * proto_envelope_verify() does (a fresh EVP_PKEY_CTX per verification). Sets *cpu_s to
 * the CPU seconds of one verification. Returns 0 or QC_ECRYPTO. */
QC_MUST_CHECK int loadgen_floor_verify(int ms, double *cpu_s);

/* Signs a digest with the PKCS#11 token of the cluster in a loop for about ms milliseconds:
 * the module at path module is dlopen()ed and driven directly, one session on the token
 * labelled token_label, the private key labelled key_label with CKA_ID "v1", one
 * C_SignInit + C_Sign (CKM_ECDSA) per signature. softhsm_conf is exported as SOFTHSM2_CONF
 * first; the PIN is read from pin_path and wiped. Sets *cpu_s to the CPU seconds of one
 * signature. Returns 0, QC_EIO (no module or PIN file), QC_ENOTFOUND (no such token),
 * QC_EPIN, QC_EKEYID (no such key, or more than one), QC_ECRYPTO. */
QC_MUST_CHECK int loadgen_floor_hsm(const char *module, const char *softhsm_conf,
                                    const char *token_label, const char *pin_path,
                                    const char *key_label, int ms, double *cpu_s);

/* A service process of the cluster, found by its pid file. */
typedef struct loadgen_proc {
    char name[LOADGEN_PROC_NAME_MAX]; /* the pid file's name without ".pid" */
    int pid;
    double cpu_start_s, cpu_end_s; /* utime + stime */
} loadgen_proc_t;

/* Reads every DIR/NAME.pid of pids_dir whose process is alive into procs (capacity cap),
 * sorted by name. Returns 0 and sets *count, or QC_EIO when the directory is unreadable. */
QC_MUST_CHECK int loadgen_procs_find(const char *pids_dir, loadgen_proc_t *procs, size_t cap,
                                     size_t *count);

/* The CPU seconds (user + system) process pid has used so far, from /proc/PID/stat.
 * Returns 0, or QC_ENOTFOUND when the process is gone. */
QC_MUST_CHECK int loadgen_proc_cpu(int pid, double *cpu_s);

/* CPU seconds (user + system) of the calling process so far. */
double loadgen_self_cpu(void);

#endif
