/* audit_proc.h - runs qc-audit as a real process for the audit tests and the audit benchmark
 * (ports: the test's range, 18000-18199 by hand). */
#ifndef AUDIT_PROC_H
#define AUDIT_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "proto_rpc.h"
#include "qctest_fs.h"

#define AP_PATH_MAX QCTEST_PATH_MAX
#define AP_PORT_FIRST 18000
#define AP_PORT_LAST 18199

typedef struct ap {
    char dir[AP_PATH_MAX];
    char bin[AP_PATH_MAX];
    char endpoint[64];
    int port;
    int http_port;
    pid_t pid;
    /* false (ap_setup's default): ap_spawn runs `qc-audit init` with the same flags first when
     * the data dir holds no store with an identity; true: it starts on the dir as it is. */
    bool no_init;
    proto_curve_keypair_t server; /* audit's keys (file dir/audit.key) */
    proto_curve_keypair_t client; /* a caller on the allow-list (gateway, signer) */
    void *zctx;
    proto_rpc_client_t *cli; /* with the client key */
} ap_t;

/* Makes a temp dir with keys, allow-list and data dir; picks two free ports in the audit
 * range starting the search at port. Returns 0 or -1. */
int ap_setup(ap_t *ap, const char *bin, int port);
/* A free port of the test's range (qctest_ports: the audit's by hand), searched from start,
 * other than avoid; start if none. */
int ap_pick_port(int start, int avoid);
/* Path of name inside the temp dir, into out (capacity AP_PATH_MAX). */
void ap_path(const ap_t *ap, const char *name, char *out);
/* Starts qc-audit with QC_FAULT=fault (NULL = none) and QC_FAULT_SKIP=skip plus extra flags
 * (NULL-terminated, may be NULL), stderr appended to dir/audit.log, and waits for /healthz.
 * Returns 0 or -1. */
int ap_start(ap_t *ap, const char *fault, int skip, const char *const *extra);
/* Same, without waiting for /healthz (for a process that may die at a fault point before
 * it answers). Returns 0 or -1. */
int ap_spawn(ap_t *ap, const char *fault, int skip, const char *const *extra);
/* Sends sig and reaps; returns the wait status (or -1 when not running). */
int ap_stop(ap_t *ap, int sig);
/* Waits up to timeout_ms for the process to exit; returns its wait status or -1. */
int ap_wait_exit(ap_t *ap, int timeout_ms);
/* Kills the process if running, frees everything, removes the temp dir. */
void ap_teardown(ap_t *ap);

/* Calls append; returns the reply code (or transport error) and, on 0, *seq and *dup. */
int ap_append(ap_t *ap, const char *source, uint64_t source_seq, const char *type,
              const uint8_t *txn_id, size_t txn_len, const uint8_t *payload, size_t payload_len,
              uint64_t *seq, bool *dup);

/* Runs qc-audit with argv (NULL-terminated, argv[0] ignored), stdout into out (capacity cap,
 * NUL terminated). Returns its exit status or -1. */
int ap_run_cli(const ap_t *ap, const char *const *argv, char *out, size_t cap);

#endif
