/* qcctl_restore.c - `qcctl shard restore`: a backup put back and the audit events to replay. */
#include "qcctl_restore.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "audit_chain.h"
#include "audit_store.h"
#include "ledger.pb-c.h"
#include "ops_bytes.h"
#include "ops_config.h"
#include "ops_log.h"
#include "ops_time.h"
#include "proto_decode.h"
#include "qc_error.h"

#define RESTORE_EXIT_OK 0
#define RESTORE_EXIT_FAILED 1
#define RESTORE_EXIT_USAGE 2
#define RESTORE_PATH_MAX 1024
#define RESTORE_CHUNK (1u << 20)        /* bytes copied or hashed per read */
#define RESTORE_LINE_MAX 256            /* of a manifest line */
#define RESTORE_SOURCE_PREFIX "ledger-" /* the audit relay's source of a shard's events */
#define RESTORE_FORMAT "qc-ledger-backup 1"
#define RESTORE_REPLAY_FILE "replay.events"
#define RESTORE_REPLAY_MAGIC "QCRP"
#define RESTORE_REPLAY_VERSION 1
#define RESTORE_HEX_MAX 65

#define RESTORE_USAGE                                                                              \
    "shard restore --from BACKUP_DIR --data-dir DIR [--replay-audit --audit-dir AUDIT_DIR]\n"      \
    "              [--new-group --raft-dir DIR] [--force] [--json]\n"                              \
    "  Puts a `qcctl shard backup` back into a stopped ledger's data dir and, with\n"              \
    "  --replay-audit, hands it the audit log's events since the backup: the ledger replays\n"     \
    "  them when it starts, checking each, and devices go on where they were.\n"                   \
    "  --force moves a store the data dir holds aside (lost-<ms>/ in it) instead of refusing.\n"   \
    "  --new-group: for a replica; its Raft dir is moved aside too and the state starts a new\n"   \
    "  group (restore every replica of the shard from the same backup, then start them all).\n"

static const ops_config_key_t restore_keys[] = {
    {"from", OPS_CONFIG_STRING, NULL, "the backup directory (MANIFEST and data.mdb)"},
    {"data_dir", OPS_CONFIG_STRING, NULL, "the stopped ledger's data directory"},
    {"replay_audit", OPS_CONFIG_BOOL, "false", "replay the audit log's events since the backup"},
    {"audit_dir", OPS_CONFIG_STRING, NULL, "the audit service's data directory"},
    {"new_group", OPS_CONFIG_BOOL, "false", "a replica: start a new Raft group from this state"},
    {"raft_dir", OPS_CONFIG_STRING, NULL, "with --new-group: the replica's Raft directory"},
    {"force", OPS_CONFIG_BOOL, "false", "move a store the data dir holds aside"},
    {"json", OPS_CONFIG_BOOL, "false", "print JSON"},
    {"log_level", OPS_CONFIG_STRING, "warn", "debug, info, warn or error"},
};

typedef struct manifest {
    uint32_t shard, shard_count;
    uint64_t applied_index, applied_time_ms, outbox_seq, time_ms, bytes;
    char sha256[RESTORE_HEX_MAX];
    bool has_format, has_shard, has_count, has_seq, has_bytes;
} manifest_t;

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "qcctl: shard restore: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return RESTORE_EXIT_FAILED;
}

static bool parse_u64(const char *s, uint64_t *v)
{
    char *end = NULL;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-')
        return false;
    *v = x;
    return true;
}

static int read_manifest(const char *dir, manifest_t *m)
{
    char path[RESTORE_PATH_MAX], line[RESTORE_LINE_MAX];
    snprintf(path, sizeof path, "%s/MANIFEST", dir);
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return fail("%s: %s (not a finished backup)", path, strerror(errno));
    memset(m, 0, sizeof *m);
    int rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        char *eq = strstr(line, " = ");
        if (eq == NULL) {
            rc = fail("%s: a line without \" = \": %s", path, line);
            break;
        }
        *eq = '\0';
        const char *k = line, *v = eq + 3;
        uint64_t x = 0;
        bool num = parse_u64(v, &x);
        if (strcmp(k, "format") == 0)
            m->has_format = strcmp(v, RESTORE_FORMAT) == 0;
        else if (strcmp(k, "shard") == 0 && num && x < UINT32_MAX)
            m->shard = (uint32_t)x, m->has_shard = true;
        else if (strcmp(k, "shard_count") == 0 && num && x > 0 && x <= UINT32_MAX)
            m->shard_count = (uint32_t)x, m->has_count = true;
        else if (strcmp(k, "applied_index") == 0 && num)
            m->applied_index = x;
        else if (strcmp(k, "applied_time_ms") == 0 && num)
            m->applied_time_ms = x;
        else if (strcmp(k, "outbox_seq") == 0 && num)
            m->outbox_seq = x, m->has_seq = true;
        else if (strcmp(k, "time_ms") == 0 && num)
            m->time_ms = x;
        else if (strcmp(k, "bytes") == 0 && num)
            m->bytes = x, m->has_bytes = true;
        else if (strcmp(k, "sha256") == 0 && strlen(v) == RESTORE_HEX_MAX - 1)
            snprintf(m->sha256, sizeof m->sha256, "%s", v);
    }
    fclose(f);
    if (rc == 0 && (!m->has_format || !m->has_shard || !m->has_count || !m->has_seq ||
                    !m->has_bytes || m->sha256[0] == '\0' || m->shard >= m->shard_count))
        rc = fail("%s: not a %s manifest (format, shard, shard_count, outbox_seq, bytes, "
                  "sha256 needed)",
                  path, RESTORE_FORMAT);
    return rc;
}

/* Copies src to dst (when dst is not NULL) and hashes it; dst is fsynced. */
static int copy_hash(const char *src, const char *dst, char hex[RESTORE_HEX_MAX], uint64_t *bytes)
{
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return fail("%s: %s", src, strerror(errno));
    int out = dst == NULL ? -1 : open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    uint8_t *buf = malloc(RESTORE_CHUNK);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int rc = 0;
    if ((dst != NULL && out < 0) || buf == NULL || md == NULL ||
        EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
        rc = fail("%s: cannot copy or hash: %s", dst != NULL ? dst : src, strerror(errno));
    *bytes = 0;
    while (rc == 0) {
        ssize_t n = read(in, buf, RESTORE_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            rc = fail("%s: %s", src, strerror(errno));
        if (n <= 0)
            break;
        *bytes += (uint64_t)n;
        if (EVP_DigestUpdate(md, buf, (size_t)n) != 1 ||
            (out >= 0 && write(out, buf, (size_t)n) != n))
            rc = fail("%s: write failed: %s", dst != NULL ? dst : src, strerror(errno));
    }
    uint8_t d[32];
    unsigned dl = 0;
    if (rc == 0 && (EVP_DigestFinal_ex(md, d, &dl) != 1 || dl != sizeof d))
        rc = fail("SHA-256 failed");
    if (rc == 0)
        ops_hex(d, sizeof d, hex);
    if (out >= 0 && rc == 0 && fsync(out) != 0)
        rc = fail("%s: fsync: %s", dst, strerror(errno));
    if (out >= 0)
        close(out);
    close(in);
    EVP_MD_CTX_free(md);
    free(buf);
    return rc;
}

static void fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        if (fsync(fd) != 0)
            fprintf(stderr, "qcctl: shard restore: fsync %s: %s\n", dir, strerror(errno));
        close(fd);
    }
}

/* Moves name (in data_dir) into lost (created on first use). */
static int move_aside(const char *data_dir, const char *name, const char *lost)
{
    char from[RESTORE_PATH_MAX], to[RESTORE_PATH_MAX * 2];
    snprintf(from, sizeof from, "%s/%s", data_dir, name);
    if (access(from, F_OK) != 0)
        return 0;
    if (mkdir(lost, 0700) != 0 && errno != EEXIST)
        return fail("%s: %s", lost, strerror(errno));
    snprintf(to, sizeof to, "%s/%s", lost, name);
    if (rename(from, to) != 0)
        return fail("cannot move %s to %s: %s", from, to, strerror(errno));
    return 0;
}

/* ------------------------------------------------------------ the replay file */

typedef struct replay_out {
    FILE *f;
    char source[AUDIT_SOURCE_MAX + 1];
    uint32_t shard;
    uint64_t next;    /* the source_seq expected next */
    uint64_t last;    /* the audit log's highest for the source */
    uint64_t written; /* events */
    int rc;
} replay_out_t;

static int put_record(FILE *f, const ProtobufCMessage *m)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    if (proto_pack(m, &buf, &len) != 0)
        return QC_ENOMEM;
    uint8_t hdr[4];
    ops_be_put(hdr, len, 4);
    int rc = fwrite(hdr, 1, 4, f) == 4 && fwrite(buf, 1, len, f) == len ? 0 : QC_EIO;
    free(buf);
    return rc;
}

static int replay_visit(void *arg, uint64_t key_seq, const uint8_t *rec, size_t len)
{
    replay_out_t *o = arg;
    audit_entry_t e;
    int rc = audit_chain_parse(rec, len, &e);
    if (rc != 0) {
        o->rc = fail("audit entry %" PRIu64 " does not parse: %s", key_seq, qc_strerror(rc));
        return 1;
    }
    if (e.source_len != strlen(o->source) || memcmp(e.source, o->source, e.source_len) != 0 ||
        e.source_seq < o->next)
        return 0;
    if (e.source_seq != o->next) {
        o->rc = fail("the audit log misses event %" PRIu64 " of %s (entry %" PRIu64
                     " holds %" PRIu64 "): it cannot bring the shard forward past it",
                     o->next, o->source, e.seq, e.source_seq);
        return 1;
    }
    char type[AUDIT_TYPE_MAX + 1];
    snprintf(type, sizeof type, "%.*s", (int)e.type_len, e.type);
    Qcledger__OutboxEvent ev = QCLEDGER__OUTBOX_EVENT__INIT;
    ev.seq = e.source_seq;
    ev.shard = o->shard;
    ev.type = type;
    ev.txn_id.data = (uint8_t *)e.txn_id;
    ev.txn_id.len = e.txn_id_len;
    ev.time_ms = e.time_ms;
    ev.payload.data = (uint8_t *)e.payload;
    ev.payload.len = e.payload_len;
    if (put_record(o->f, &ev.base) != 0) {
        o->rc = fail("cannot write the replay file: %s", strerror(errno));
        return 1;
    }
    o->written++;
    o->next++;
    return o->next > o->last ? 1 : 0; /* the last one: no need to read further */
}

/* Writes data_dir/replay.events: the shard's events after m->outbox_seq from the audit log
 * in audit_dir (replay) or none (new_group alone). *count gets how many. */
static int write_replay(const char *data_dir, const char *audit_dir, const manifest_t *m,
                        bool new_group, uint64_t *count)
{
    char path[RESTORE_PATH_MAX], tmp[RESTORE_PATH_MAX + 8];
    snprintf(path, sizeof path, "%s/%s", data_dir, RESTORE_REPLAY_FILE);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    replay_out_t o = {.shard = m->shard, .next = m->outbox_seq + 1};
    snprintf(o.source, sizeof o.source, "%s%" PRIu32, RESTORE_SOURCE_PREFIX, m->shard);
    audit_store_t *as = NULL;
    uint64_t start = 0;
    int rc = 0;
    if (audit_dir != NULL) {
        if (audit_store_open(audit_dir, AUDIT_STORE_RDONLY | AUDIT_STORE_SHARED, 0, &as) != 0)
            return fail("cannot open the audit log in %s", audit_dir);
        if (audit_store_hwm(as, o.source, &o.last) != 0)
            rc = fail("cannot read the audit log's high-water mark of %s", o.source);
        else if (o.last > m->outbox_seq &&
                 audit_store_dedupe_get(as, o.source, o.next, &start) != 0)
            rc = fail("the audit log holds %s up to %" PRIu64 " but not %" PRIu64
                      ", the first event after the backup",
                      o.source, o.last, o.next);
    }
    uint64_t count_expected = o.last > m->outbox_seq ? o.last - m->outbox_seq : 0;
    if (rc == 0 && (o.f = fopen(tmp, "we")) == NULL)
        rc = fail("%s: %s", tmp, strerror(errno));
    Qcledger__ReplayHeader h = QCLEDGER__REPLAY_HEADER__INIT;
    h.version = RESTORE_REPLAY_VERSION;
    h.shard = m->shard;
    h.shard_count = m->shard_count;
    h.after_seq = m->outbox_seq;
    h.count = count_expected;
    h.new_group = new_group;
    h.time_ms = ops_time_wall_ms();
    if (rc == 0 && (fwrite(RESTORE_REPLAY_MAGIC, 1, 4, o.f) != 4 || put_record(o.f, &h.base) != 0))
        rc = fail("cannot write %s", tmp);
    if (rc == 0 && count_expected > 0) {
        int src = audit_store_scan(as, start, replay_visit, &o);
        rc = o.rc != 0 ? o.rc : src < 0 ? fail("reading the audit log: %s", qc_strerror(src)) : 0;
        if (rc == 0 && o.written != count_expected)
            rc = fail("found %" PRIu64 " of the %" PRIu64 " events of %s after %" PRIu64, o.written,
                      count_expected, o.source, m->outbox_seq);
    }
    audit_store_destroy(&as);
    if (o.f != NULL) {
        if (fflush(o.f) != 0 || fsync(fileno(o.f)) != 0)
            rc = rc != 0 ? rc : fail("%s: %s", tmp, strerror(errno));
        fclose(o.f);
    }
    if (rc == 0 && rename(tmp, path) != 0)
        rc = fail("%s: %s", path, strerror(errno));
    if (rc != 0)
        unlink(tmp);
    *count = o.written;
    return rc;
}

/* ------------------------------------------------------------ the verb */

static int restore(const ops_config_t *cfg)
{
    const char *from = ops_config_str(cfg, "from");
    const char *data_dir = ops_config_str(cfg, "data_dir");
    const char *audit_dir = ops_config_str(cfg, "audit_dir");
    const char *raft_dir = ops_config_str(cfg, "raft_dir");
    bool replay = ops_config_bool(cfg, "replay_audit");
    bool new_group = ops_config_bool(cfg, "new_group");
    bool force = ops_config_bool(cfg, "force");
    if (from == NULL || data_dir == NULL || (replay && audit_dir == NULL) ||
        (new_group && raft_dir == NULL)) {
        fprintf(stderr, "qcctl: usage: qcctl %s", RESTORE_USAGE);
        return RESTORE_EXIT_USAGE;
    }
    uint64_t t0 = ops_time_mono_ms();
    manifest_t m;
    int rc = read_manifest(from, &m);
    if (rc != 0)
        return rc;
    char src[RESTORE_PATH_MAX], dst[RESTORE_PATH_MAX], tmp[RESTORE_PATH_MAX + 8];
    char lost[RESTORE_PATH_MAX], hex[RESTORE_HEX_MAX];
    uint64_t bytes = 0;
    snprintf(src, sizeof src, "%s/data.mdb", from);
    if ((rc = copy_hash(src, NULL, hex, &bytes)) != 0)
        return rc;
    if (bytes != m.bytes || strcmp(hex, m.sha256) != 0)
        return fail("%s is not the copy its MANIFEST describes (%" PRIu64 " bytes, SHA-256 %s)",
                    src, bytes, hex);
    if (mkdir(data_dir, 0700) != 0 && errno != EEXIST)
        return fail("%s: %s", data_dir, strerror(errno));
    snprintf(dst, sizeof dst, "%s/data.mdb", data_dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", dst);
    snprintf(lost, sizeof lost, "%s/lost-%" PRIu64, data_dir, ops_time_wall_ms());
    if (access(dst, F_OK) == 0 && !force)
        return fail("%s holds a store: stop its ledger, then --force moves it aside", data_dir);
    static const char *const aside[] = {"data.mdb", "lock.mdb", "replay.events",
                                        "replay.events.done"};
    for (size_t i = 0; i < sizeof aside / sizeof aside[0]; i++)
        if ((rc = move_aside(data_dir, aside[i], lost)) != 0)
            return rc;
    if (new_group) {
        /* The group starts again from this state: its old Raft log and vote go aside. */
        if (access(raft_dir, F_OK) == 0 && (mkdir(lost, 0700) == 0 || errno == EEXIST)) {
            char to[RESTORE_PATH_MAX + 8];
            snprintf(to, sizeof to, "%s/raft", lost);
            if (rename(raft_dir, to) != 0)
                return fail("cannot move %s aside: %s", raft_dir, strerror(errno));
        }
        if (mkdir(raft_dir, 0700) != 0)
            return fail("%s: %s", raft_dir, strerror(errno));
    }
    uint64_t copied = 0;
    if ((rc = copy_hash(src, tmp, hex, &copied)) != 0)
        return rc;
    if (strcmp(hex, m.sha256) != 0) {
        unlink(tmp);
        return fail("the copy of %s differs from it", src);
    }
    if (rename(tmp, dst) != 0)
        return fail("%s: %s", dst, strerror(errno));
    fsync_dir(data_dir);
    uint64_t events = 0;
    if ((replay || new_group) &&
        (rc = write_replay(data_dir, replay ? audit_dir : NULL, &m, new_group, &events)) != 0)
        return rc;
    fsync_dir(data_dir);
    uint64_t ms = ops_time_mono_ms() - t0;
    if (ops_config_bool(cfg, "json"))
        printf("{\"shard\":%" PRIu32 ",\"backup_time_ms\":%" PRIu64 ",\"outbox_seq\":%" PRIu64
               ",\"applied_index\":%" PRIu64 ",\"events_to_replay\":%" PRIu64
               ",\"new_group\":%s,\"elapsed_ms\":%" PRIu64 "}\n",
               m.shard, m.time_ms, m.outbox_seq, m.applied_index, events,
               new_group ? "true" : "false", ms);
    else
        printf("shard %" PRIu32 " restored into %s from the backup of %" PRIu64
               " ms (outbox event %" PRIu64 "); %" PRIu64
               " audit events written for the ledger to replay when it starts%s (%" PRIu64 " ms)\n",
               m.shard, data_dir, m.time_ms, m.outbox_seq, events,
               new_group ? "; a new Raft group" : "", ms);
    if (!replay)
        fprintf(stderr,
                "qcctl: shard restore: WARNING: without --replay-audit the shard is back at its "
                "backup, and its next outbox events reuse sequences the audit log already "
                "holds\n");
    return RESTORE_EXIT_OK;
}

int qcctl_restore_main(int argc, char **argv)
{
    char err[OPS_CONFIG_ERROR_MAX];
    ops_config_t *cfg = NULL;
    int rc = ops_config_load("qcctl", RESTORE_USAGE, restore_keys,
                             sizeof restore_keys / sizeof restore_keys[0], argc, argv, &cfg, err,
                             sizeof err);
    if (rc == 1)
        return RESTORE_EXIT_OK;
    if (rc != 0) {
        fprintf(stderr, "qcctl: %s\n", err);
        return RESTORE_EXIT_USAGE;
    }
    int level = ops_log_level_parse(ops_config_str(cfg, "log_level"));
    ops_log_init("qcctl", "0", level < 0 ? OPS_LOG_WARN : (ops_log_level_t)level);
    int status = RESTORE_EXIT_USAGE;
    if (ops_config_argc(cfg) == 2 && strcmp(ops_config_arg(cfg, 0), "shard") == 0 &&
        strcmp(ops_config_arg(cfg, 1), "restore") == 0)
        status = restore(cfg);
    else
        fprintf(stderr, "qcctl: usage: qcctl %s", RESTORE_USAGE);
    ops_config_destroy(&cfg);
    return status;
}
