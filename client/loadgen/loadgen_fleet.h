/* loadgen_fleet.h - qc-loadgen's simulated devices, held in memory: each is a device core
 * (client/device/device_core.h), the state machine qc-wallet drives, with no store.
 *
 * A fleet is made in two set-up steps: loadgen_fleet_new() gives every device a P-256 key,
 * a certificate issued in-process by the cluster's dev CA (its key file is read once), the
 * bank's allow and outcome keys, and a verified PIN; loadgen_fleet_enroll() opens one funded
 * account per device and enrolls the device on it through the ledger's admin RPC (the calls
 * qcctl makes), on the account's shard.
 *
 * Each device then runs the load protocol (docs/DESIGN.md section 2) through its core, one
 * load at a time:
 * loadgen_fleet_request(), then device_core_judge_allow(), device_core_report() and
 * device_core_accept_outcome() on loadgen_fleet_core(); device_core_abandon() when the
 * request gets no allow. The core verifies every allow and outcome and judges the allow
 * against its request exactly as a wallet does, so a device that gets a bad allow signs a
 * REJECTED report and credits nothing.
 *
 * Not thread-safe: one thread drives a fleet. */
#ifndef LOADGEN_FLEET_H
#define LOADGEN_FLEET_H

#include <stddef.h>
#include <stdint.h>

#include "device_core.h"
#include "proto_rpc.h"
#include "qc_error.h"

#define LOADGEN_DEVICES_MAX 100000
#define LOADGEN_TAG_MAX 16 /* run tag inside device and account ids */
#define LOADGEN_CURRENCY DEVICE_CURRENCY_DEFAULT
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
QC_MUST_CHECK int loadgen_fleet_new(const loadgen_fleet_config_t *cfg, loadgen_fleet_t **out);

/* Wipes every key and frees the fleet; nulls *fleet_p; accepts NULL. */
void loadgen_fleet_destroy(loadgen_fleet_t **fleet_p);

/* Opens, funds and enrolls every device's account through the admin RPC in zctx, a window
 * of calls in flight per shard, with a progress line on stderr. Returns 0 when every call
 * succeeded; otherwise the first failure's code (QC_ETIMEOUT, or the ledger's refusal),
 * logged with the device it concerns. */
QC_MUST_CHECK int loadgen_fleet_enroll(loadgen_fleet_t *f, void *zctx,
                                       const loadgen_admin_config_t *admin);

size_t loadgen_fleet_count(const loadgen_fleet_t *f);
const char *loadgen_fleet_device_id(const loadgen_fleet_t *f, size_t i);
uint32_t loadgen_fleet_gateway(const loadgen_fleet_t *f, size_t i);

/* The core of device i, borrowed (valid until the fleet is destroyed). */
device_core_t *loadgen_fleet_core(loadgen_fleet_t *f, size_t i);

/* IDLE -> PENDING: device i signs a request for amount from its account
 * (device_core_request()); *out is the core's stored request, borrowed until its next
 * state change. Returns 0 or the core's refusal. */
QC_MUST_CHECK int loadgen_fleet_request(loadgen_fleet_t *f, size_t i, int64_t amount,
                                        const uint8_t **out, size_t *out_len);

#endif
