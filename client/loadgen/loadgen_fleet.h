/* loadgen_fleet.h - qc-loadgen's simulated devices, held in memory: keys, certificates,
 * counters and wallets, and the device side of the load protocol with real signatures.
 *
 * A fleet is made in two set-up steps: loadgen_fleet_new() gives every device a P-256 key
 * and a certificate issued in-process by the cluster's dev CA (its key file is read once),
 * and loadgen_fleet_enroll() opens one funded account per device and enrolls the device on
 * it through the ledger's admin RPC (the calls qcctl makes), on the account's shard.
 *
 * Each device then runs the protocol of docs/DESIGN.md section 2, one load at a time:
 *
 *   IDLE --request()--> PENDING --allow()--> REPORTED --outcome()--> IDLE
 *            PENDING or REPORTED --abandon()--> IDLE (the bank refused, or no answer)
 *
 * As the real device does, it verifies the allow with the bank's allow key and checks that
 * it names its txn, counter and request digest before it credits itself, and verifies the
 * outcome with the bank's outcome key. Abandoning a REPORTED load keeps the credit and the
 * counter: the next request (counter c+1) proves to the ledger that it was applied.
 *
 * Not thread-safe: one thread drives a fleet. */
#ifndef LOADGEN_FLEET_H
#define LOADGEN_FLEET_H

#include <stddef.h>
#include <stdint.h>

#include "proto_rpc.h"

#define LOADGEN_DEVICES_MAX 100000
#define LOADGEN_TAG_MAX 16       /* run tag inside device and account ids */
#define LOADGEN_CURRENCY 156     /* CNY */
#define LOADGEN_CERT_DAYS 30     /* lifetime of a simulated device's certificate */
#define LOADGEN_ADMIN_WINDOW 256 /* admin calls in flight per shard during set-up */
#define LOADGEN_ADMIN_TIMEOUT_MS 20000
#define LOADGEN_SHARDS_MAX 64

typedef struct loadgen_fleet loadgen_fleet_t;

typedef struct loadgen_fleet_config {
    size_t count;             /* devices, 1..LOADGEN_DEVICES_MAX */
    const char *tag;          /* makes the ids of this run unique: "LG<tag>-<n>" */
    const char *ca_cert_path; /* the dev CA (PEM certificate and key) */
    const char *ca_key_path;
    const char *allow_cert_path; /* the bank's allow-signing certificate (PEM) */
    const char *outcome_cert_path;
    uint32_t gateway_count; /* devices are spread round-robin over the gateways */
} loadgen_fleet_config_t;

/* Where the ledger's admin RPC is and who we are to it (qcctl's key). */
typedef struct loadgen_admin_config {
    const char *endpoints; /* shards separated by ';', instances by ',' (qcctl.conf) */
    const char *server_public_z85;
    const proto_curve_keypair_t *keys;
    int64_t deposit; /* minor units put on each account */
} loadgen_admin_config_t;

/* Makes the fleet: keys and certificates for cfg->count devices, with a progress line on
 * stderr. Returns 0 and sets *out; QC_EINVAL (count or tag out of range), QC_EIO (a file
 * unreadable), QC_ECRYPTO, QC_ENOMEM. */
int loadgen_fleet_new(const loadgen_fleet_config_t *cfg, loadgen_fleet_t **out);

/* Wipes every key and frees the fleet; nulls *fleet_p; accepts NULL. */
void loadgen_fleet_destroy(loadgen_fleet_t **fleet_p);

/* Opens, funds and enrolls every device's account through the admin RPC in zctx, a window
 * of calls in flight per shard, with a progress line on stderr. Returns 0 when every call
 * succeeded; otherwise the first failure's code (QC_ETIMEOUT, or the ledger's refusal),
 * logged with the device it concerns. */
int loadgen_fleet_enroll(loadgen_fleet_t *f, void *zctx, const loadgen_admin_config_t *admin);

size_t loadgen_fleet_count(const loadgen_fleet_t *f);
const char *loadgen_fleet_device_id(const loadgen_fleet_t *f, size_t i);
uint32_t loadgen_fleet_gateway(const loadgen_fleet_t *f, size_t i);

/* IDLE -> PENDING: signs a LoadRequest for amount with the device's counter and balance and
 * its certificate in the envelope. *out is malloc'd (the caller frees it).
 * Returns 0, QC_ESTATE (a load in progress), QC_ECRYPTO, QC_ENOMEM. */
int loadgen_fleet_request(loadgen_fleet_t *f, size_t i, int64_t amount, uint8_t **out,
                          size_t *out_len);

/* PENDING -> REPORTED: verifies the allow (untrusted bytes) with the bank's allow key and
 * checks that it names this device, txn, counter, amount and request digest; then credits
 * the wallet, increments the counter and signs an APPLIED report into *out (malloc'd).
 * Returns 0; a verification code (QC_EBADSIG, QC_EKEYID, QC_EDECODE, QC_EMISMATCH...) with
 * the device left PENDING; QC_ESTATE; QC_ECRYPTO; QC_ENOMEM. */
int loadgen_fleet_allow(loadgen_fleet_t *f, size_t i, const uint8_t *allow, size_t allow_len,
                        uint8_t **out, size_t *out_len);

/* REPORTED -> IDLE: verifies the outcome (untrusted bytes) with the bank's outcome key, for
 * this device's txn, and stores its state (Quancun__LoadState) in *state.
 * Returns 0, a verification code with the device left REPORTED, or QC_ESTATE. */
int loadgen_fleet_outcome(loadgen_fleet_t *f, size_t i, const uint8_t *outcome, size_t outcome_len,
                          int *state);

/* PENDING or REPORTED -> IDLE without an outcome (see the diagram above). */
void loadgen_fleet_abandon(loadgen_fleet_t *f, size_t i);

#endif
