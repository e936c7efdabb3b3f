/* ledger_main.c - qc-ledger: one shard of the ledger (accounts, load sagas, audit outbox). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ledger_service.h"
#include "ledger_store.h"
#include "ops_config.h"
#include "ops_log.h"
#include "ops_signal.h"
#include "proto_shard.h"
#include "qc_error.h"

#define LEDGER_MIB (1024ull * 1024ull)
#define LEDGER_MAP_MB_MAX (1024ull * 1024ull) /* 1 TiB */
#define LEDGER_HTTP_PORT_MAX 65535

static const ops_config_key_t ledger_keys[] = {
    {"listen", OPS_CONFIG_STRING, "tcp://127.0.0.1:7300", "endpoint the ROUTER socket binds"},
    {"curve_key", OPS_CONFIG_STRING, NULL, "this service's CURVE key pair file"},
    {"allow_keys", OPS_CONFIG_STRING, NULL,
     "file of service client keys (gateways, audit relay): reserve, settle, outbox_*"},
    {"admin_keys", OPS_CONFIG_STRING, NULL,
     "file of operator keys (qcctl): open_account, deposit, freeze, enroll_device, ..."},
    {"data_dir", OPS_CONFIG_STRING, NULL, "directory of this shard's LMDB environment"},
    {"shard", OPS_CONFIG_INT, "0", "this shard's number, 0 .. shard_count-1"},
    {"shard_count", OPS_CONFIG_INT, "1", "number of ledger shards"},
    {"allow_cert", OPS_CONFIG_STRING, NULL,
     "PEM certificate (or public key) of the bank's allow-signing key"},
    {"ca", OPS_CONFIG_STRING, NULL, "PEM CA bundle device certificates must chain to"},
    {"crl", OPS_CONFIG_STRING, NULL, "PEM CRLs for device certificates"},
    {"map_size_mb", OPS_CONFIG_INT, "1024", "LMDB map size in MiB"},
    {"batch_max", OPS_CONFIG_INT, "256", "requests applied per group commit (1..256)"},
    {"batch_wait_us", OPS_CONFIG_INT, "200", "extra wait for a group commit to fill (us)"},
    {"http_port", OPS_CONFIG_INT, "0", "port of /metrics and /healthz on 127.0.0.1 (0 = off)"},
    {"instance", OPS_CONFIG_STRING, "0", "instance name in logs"},
    {"log_level", OPS_CONFIG_STRING, "info", "debug, info, warn or error"},
};

#define LEDGER_USAGE                                                                               \
    "[--config FILE] [options]\n"                                                                  \
    "Serves one shard of the quancun ledger: accounts, devices and load sagas in LMDB,\n"          \
    "group-committed (a reply means durable). Methods and bodies: proto/ledger.proto."

int main(int argc, char **argv)
{
    char err[OPS_CONFIG_ERROR_MAX];
    ops_config_t *cfg = NULL;
    int rc = ops_config_load("qc-ledger", LEDGER_USAGE, ledger_keys,
                             sizeof ledger_keys / sizeof ledger_keys[0], argc, argv, &cfg, err,
                             sizeof err);
    if (rc == 1)
        return 0;
    if (rc != 0) {
        fprintf(stderr, "qc-ledger: %s\n", err);
        return 2;
    }
    int level = ops_log_level_parse(ops_config_str(cfg, "log_level"));
    int64_t shard = ops_config_int(cfg, "shard"), count = ops_config_int(cfg, "shard_count");
    int64_t map_mb = ops_config_int(cfg, "map_size_mb"), batch = ops_config_int(cfg, "batch_max");
    int64_t wait = ops_config_int(cfg, "batch_wait_us"), port = ops_config_int(cfg, "http_port");
    if (ops_config_argc(cfg) != 0 || level < 0 || count < 1 || count > PROTO_SHARD_COUNT_MAX ||
        shard < 0 || shard >= count || map_mb < 1 || (uint64_t)map_mb > LEDGER_MAP_MB_MAX ||
        batch < 1 || batch > LEDGER_BATCH_MAX || wait < 0 || wait > LEDGER_BATCH_WAIT_US_MAX ||
        port < 0 || port > LEDGER_HTTP_PORT_MAX) {
        fprintf(stderr, "qc-ledger: bad arguments or a setting out of range (see --help)\n");
        ops_config_destroy(&cfg);
        return 2;
    }
    ops_log_init("ledger", ops_config_str(cfg, "instance"), (ops_log_level_t)level);
    ops_signal_install();
    ledger_service_config_t scfg = {
        .listen = ops_config_str(cfg, "listen"),
        .curve_key_path = ops_config_str(cfg, "curve_key"),
        .allow_keys = ops_config_str(cfg, "allow_keys"),
        .admin_keys = ops_config_str(cfg, "admin_keys"),
        .data_dir = ops_config_str(cfg, "data_dir"),
        .allow_cert = ops_config_str(cfg, "allow_cert"),
        .ca_path = ops_config_str(cfg, "ca"),
        .crl_path = ops_config_str(cfg, "crl"),
        .shard = (uint32_t)shard,
        .shard_count = (uint32_t)count,
        .map_size = (uint64_t)map_mb * LEDGER_MIB,
        .batch_max = (size_t)batch,
        .batch_wait_us = (uint32_t)wait,
        .http_port = (uint16_t)port,
    };
    ledger_service_t *svc = NULL;
    rc = ledger_service_new(&scfg, &svc);
    if (rc == 0)
        rc = ledger_service_run(svc);
    ledger_service_destroy(&svc);
    ops_config_destroy(&cfg);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "ledger.exit", "error", qc_strerror(rc), NULL);
        return 1;
    }
    ops_log(OPS_LOG_INFO, "ledger.stopped", NULL);
    return 0;
}
