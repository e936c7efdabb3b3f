/* ledger_proc.h - runs qc-ledger as a real process for tests and the benchmark. */
#ifndef LEDGER_PROC_H
#define LEDGER_PROC_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/evp.h>

#include "ledger.pb-c.h"
#include "proto_rpc.h"
#include "qctest_fs.h"

#define LP_PATH_MAX QCTEST_PATH_MAX

typedef struct lp {
    char dir[LP_PATH_MAX];
    char bin[LP_PATH_MAX];
    char endpoint[64];
    int port;
    pid_t pid;
    int last_status; /* wait status of the last exit seen, -1 when none */
    /* false (lp_setup's default): lp_start runs `qc-ledger init` (or `init --upgrade` on a
     * store made without one) with the same flags first, as an operator does once; true: it
     * starts on the data dir as it is (tests of the refusals). */
    bool no_init;
    proto_curve_keypair_t server, gateway, admin;
    EVP_PKEY *bank; /* allow-signing key; its public half is the ledger's allow_cert */
    /* A stand-in for qc-signer, in a thread of the test: it serves "sign" to the ledger's key
     * only, with bank, for allows and outcomes alike. */
    proto_curve_keypair_t signer_keys;
    char signer_endpoint[64];
    pthread_t signer_thread;
    bool signer_running;
    atomic_bool signer_stop;
    atomic_bool signer_down;  /* true: requests are read and never answered */
    atomic_int signed_allows; /* LoadAllow signatures made */
    atomic_int signed_outcomes;
    void *zctx;
    proto_rpc_client_t *gw; /* a client with the gateway key */
    proto_rpc_client_t *op; /* a client with the admin key */
} lp_t;

/* Makes a temp dir, CURVE keys, key files and the bank key, and starts the stand-in signer
 * the ledger is pointed at. Returns 0 or -1. */
int lp_setup(lp_t *lp, const char *bin, int port);
/* As lp_setup(), for another replica of like's shard: the same service, gateway and operator
 * keys and the same bank key (its own dir, port and stand-in signer). */
int lp_setup_like(lp_t *lp, const char *bin, int port, const lp_t *like);
/* Starts qc-ledger (extra "--key value" flags in extra, NULL-terminated, may be NULL) with
 * QC_FAULT=fault (NULL = none) and QC_FAULT_SKIP=skip, and waits until it answers "check".
 * Returns 0 or -1. */
int lp_start(lp_t *lp, const char *fault, int skip, const char *const *extra);
/* Sends sig and reaps the process; returns the wait status. */
int lp_stop(lp_t *lp, int sig);
/* Waits up to timeout_ms for the process to exit by itself; returns its wait status or -1. */
int lp_wait_exit(lp_t *lp, int timeout_ms);
/* True while the process runs; reaps it (keeping its status) once it died. */
bool lp_alive(lp_t *lp);
/* Kills the process if running, frees everything, removes the temp dir. */
void lp_teardown(lp_t *lp);

/* Makes the stand-in signer silent (down) or answering again. */
void lp_signer_down(lp_t *lp, bool down);

/* A free TCP port near port in the test's range (qctest_ports: 17300-17499 by hand). */
int lp_free_port(int port);

/* A new client with keys (the gateway's or the admin's). */
proto_rpc_client_t *lp_client(lp_t *lp, const proto_curve_keypair_t *keys);

/* Calls method with msg; returns the reply code (or the transport error), the reply in
 * *out when out is not NULL (caller destroys). */
int lp_call(proto_rpc_client_t *cli, const char *method, const ProtobufCMessage *msg,
            proto_rpc_reply_t **out);

/* Reserves the signed request req with the gateway key; *allow gets the allow the ledger
 * stored (malloc'd; NULL when none). Returns the reply code. */
int lp_reserve(lp_t *lp, const uint8_t *req, size_t req_len, uint8_t **allow, size_t *allow_len);

/* Admin helpers; each returns the reply code. */
int lp_open_account(lp_t *lp, const char *id, uint32_t currency, int64_t load_max);
int lp_deposit(lp_t *lp, const char *id, int64_t amount);
int lp_enroll(lp_t *lp, const char *account, const uint8_t *cert, size_t cert_len);
/* Balance of an account via get_account; *ok false on failure. */
int64_t lp_balance(lp_t *lp, const char *id, bool *ok);
/* Runs "check"; returns 1 when ok, 0 when not, -1 when it could not. */
int lp_check(lp_t *lp);

#endif
