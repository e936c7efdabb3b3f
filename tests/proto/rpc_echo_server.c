/* rpc_echo_server.c - a proto_rpc server for the RPC tests: echoes, names itself, stalls,
 * or plays a replica that is not its shard's leader. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zmq.h>

#include "ops_log.h"
#include "ops_time.h"
#include "ops_metrics.h"
#include "ops_signal.h"
#include "proto_rpc.h"
#include "qc_error.h"

#define ECHO_POLL_MS 200
#define ECHO_STATS_MAX 256
#define ECHO_SLOW_MAX_MS 3000 /* the longest "slow" sleep */

static void usage(FILE *to)
{
    fprintf(to, "usage: rpc_echo_server --endpoint E --keys PATH (--allow PATH | --allow-any)\n"
                "                       [--service NAME] [--name INSTANCE] [--stall]\n"
                "                       [--not-leader LEADER-ENDPOINT | --no-quorum]\n"
                "Methods: echo (body back), peer (the caller's CURVE key), whoami (--name),\n"
                "stats (the server's drop counters), stall (no reply when --stall),\n"
                "slow (sleeps body milliseconds, at most 3000, then echoes),\n"
                "budget (the caller's budget left on this server's clock, or \"none\").\n"
                "--not-leader: every method but whoami and stats is answered QC_ENOTLEADER\n"
                "naming LEADER-ENDPOINT (\"\" = leader unknown), as a follower replica does.\n"
                "--no-quorum: the same methods are answered QC_ENOQUORUM, as a replica that\n"
                "knows no leader does (a candidate cut off from the others).\n");
}

static uint64_t counter_value(const char *name, const char *service)
{
    char full[OPS_METRICS_NAME_MAX];
    snprintf(full, sizeof full, "%s{service=\"%s\"}", name, service);
    return ops_counter_value(ops_counter(full, ""));
}

int main(int argc, char **argv)
{
    proto_rpc_server_config_t cfg = {.service = "echo"};
    const char *keys_path = NULL;
    const char *name = "0";
    bool stall = false;
    const char *not_leader = NULL;
    bool no_quorum = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--allow-any") == 0) {
            cfg.allow_any = true;
        } else if (strcmp(a, "--no-quorum") == 0) {
            no_quorum = true;
        } else if (strcmp(a, "--stall") == 0) {
            stall = true;
        } else if (v != NULL && strcmp(a, "--endpoint") == 0) {
            cfg.endpoint = v, i++;
        } else if (v != NULL && strcmp(a, "--keys") == 0) {
            keys_path = v, i++;
        } else if (v != NULL && strcmp(a, "--allow") == 0) {
            cfg.allow_path = v, i++;
        } else if (v != NULL && strcmp(a, "--service") == 0) {
            cfg.service = v, i++;
        } else if (v != NULL && strcmp(a, "--name") == 0) {
            name = v, i++;
        } else if (v != NULL && strcmp(a, "--not-leader") == 0) {
            not_leader = v, i++;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (cfg.endpoint == NULL || keys_path == NULL) {
        usage(stderr);
        return 2;
    }
    ops_log_init(cfg.service, name, OPS_LOG_INFO);
    ops_signal_install();
    proto_curve_keypair_t keys;
    if (proto_curve_keypair_load(keys_path, &keys) != 0)
        return 1;
    cfg.keys = &keys;
    void *ctx = zmq_ctx_new();
    proto_rpc_server_t *srv = NULL;
    int rc = proto_rpc_server_new(ctx, &cfg, &srv);
    proto_curve_keypair_wipe(&keys);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "echo.start_failed", "error", qc_errname(rc), NULL);
        zmq_ctx_term(ctx);
        return 1;
    }
    while (!ops_signal_stop_requested()) {
        proto_rpc_request_t *req = NULL;
        rc = proto_rpc_server_recv(srv, ECHO_POLL_MS, &req);
        if (rc == QC_ETIMEOUT)
            continue;
        if (rc != 0)
            break;
        bool answers = strcmp(req->method, "whoami") == 0 || strcmp(req->method, "stats") == 0;
        if (no_quorum && !answers) {
            rc = proto_rpc_server_reply(srv, req, QC_ENOQUORUM, "no leader is known", NULL, 0);
        } else if (not_leader != NULL && !answers) {
            rc = proto_rpc_server_reply_not_leader(srv, req, not_leader);
        } else if (strcmp(req->method, "echo") == 0) {
            rc = proto_rpc_server_reply(srv, req, 0, "ok", req->body, req->body_len);
        } else if (strcmp(req->method, "peer") == 0) {
            rc = proto_rpc_server_reply(srv, req, 0, "ok", (const uint8_t *)req->peer_key,
                                        strlen(req->peer_key));
        } else if (strcmp(req->method, "whoami") == 0) {
            rc = proto_rpc_server_reply(srv, req, 0, "ok", (const uint8_t *)name, strlen(name));
        } else if (strcmp(req->method, "stall") == 0) {
            rc = stall ? 0 : proto_rpc_server_reply(srv, req, 0, "ok", req->body, req->body_len);
        } else if (strcmp(req->method, "slow") == 0) {
            char ms[16] = "";
            memcpy(ms, req->body, req->body_len < sizeof ms - 1 ? req->body_len : sizeof ms - 1);
            long wait = strtol(ms, NULL, 10);
            if (wait > 0 && wait <= ECHO_SLOW_MAX_MS)
                usleep((useconds_t)wait * 1000);
            rc = proto_rpc_server_reply(srv, req, 0, "ok", req->body, req->body_len);
        } else if (strcmp(req->method, "budget") == 0) {
            /* What is left of the caller's budget on this server's clock, "none" without. */
            char text[32] = "none";
            uint64_t now = ops_time_mono_ms();
            if (req->deadline_mono_ms != 0)
                snprintf(text, sizeof text, "%llu",
                         (unsigned long long)(req->deadline_mono_ms > now
                                                  ? req->deadline_mono_ms - now
                                                  : 0));
            rc = proto_rpc_server_reply(srv, req, 0, "ok", (const uint8_t *)text, strlen(text));
        } else if (strcmp(req->method, "stats") == 0) {
            char text[ECHO_STATS_MAX];
            int n =
                snprintf(text, sizeof text, "malformed=%llu expired=%llu refused=%llu",
                         (unsigned long long)counter_value("qc_rpc_malformed_total", cfg.service),
                         (unsigned long long)counter_value("qc_rpc_expired_total", cfg.service),
                         (unsigned long long)counter_value("qc_rpc_refused_total", cfg.service));
            rc = proto_rpc_server_reply(srv, req, 0, "ok", (const uint8_t *)text, (size_t)n);
        } else {
            rc = proto_rpc_server_reply(srv, req, QC_EMETHOD, NULL, NULL, 0);
        }
        proto_rpc_request_destroy(&req);
        if (rc != 0)
            ops_log(OPS_LOG_ERROR, "echo.reply_failed", "error", qc_errname(rc), NULL);
    }
    proto_rpc_server_destroy(&srv);
    zmq_ctx_term(ctx);
    return 0;
}
