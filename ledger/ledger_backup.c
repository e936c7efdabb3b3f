/* ledger_backup.c - hot copies of a shard's LMDB in a thread, with a manifest read from the copy.
 *
 * States (one copy at a time; guarded by mu):
 *
 *   IDLE --request(dir)--> RUNNING --thread ends--> DONE or FAILED
 *     ^                                                  |
 *     +----- request(another dir) joins the thread ------+
 *
 * A request for the dir of a DONE copy answers its manifest again; a FAILED copy answers its
 * code once and goes back to IDLE. */
#include "ledger_backup.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "ops_bytes.h"
#include "ops_log.h"
#include "ops_time.h"

#define BACKUP_READ_CHUNK (1u << 20) /* bytes hashed per read */
#define BACKUP_HEX_MAX (2 * 32 + 1)

typedef enum backup_state {
    BACKUP_IDLE,
    BACKUP_RUNNING,
    BACKUP_DONE,
    BACKUP_FAILED,
} backup_state_t;

struct ledger_backup {
    ledger_store_t *store;
    uint32_t shard, shard_count;
    uint64_t map_size;
    pthread_mutex_t mu;
    pthread_t thread;
    bool joinable;
    backup_state_t state; /* under mu */
    int rc;               /* FAILED: why */
    char dir[LEDGER_BACKUP_DIR_MAX];
    char sha256[BACKUP_HEX_MAX];
    Qcledger__BackupReply result; /* DONE: the manifest */
};

int ledger_backup_new(ledger_store_t *store, uint32_t shard, uint32_t shard_count,
                      uint64_t map_size, ledger_backup_t **out)
{
    assert(store != NULL);
    assert(out != NULL);
    assert(shard < shard_count);
    ledger_backup_t *b = calloc(1, sizeof *b);
    if (b == NULL)
        return QC_ENOMEM;
    if (pthread_mutex_init(&b->mu, NULL) != 0) {
        free(b);
        return QC_ENOMEM;
    }
    b->store = store;
    b->shard = shard;
    b->shard_count = shard_count;
    b->map_size = map_size;
    *out = b;
    return 0;
}

static void backup_join(ledger_backup_t *b)
{
    if (b->joinable) {
        pthread_join(b->thread, NULL);
        b->joinable = false;
    }
}

void ledger_backup_destroy(ledger_backup_t **b_p)
{
    if (b_p == NULL || *b_p == NULL)
        return;
    ledger_backup_t *b = *b_p;
    backup_join(b);
    pthread_mutex_destroy(&b->mu);
    free(b);
    *b_p = NULL;
}

/* SHA-256 of the file at path, in hex, and its size. */
static int file_sha256(const char *path, char hex[BACKUP_HEX_MAX], uint64_t *bytes)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return QC_EIO;
    uint8_t *buf = malloc(BACKUP_READ_CHUNK);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int rc = buf == NULL || md == NULL ? QC_ENOMEM : 0;
    if (rc == 0 && EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
        rc = QC_ECRYPTO;
    *bytes = 0;
    while (rc == 0) {
        ssize_t n = read(fd, buf, BACKUP_READ_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            rc = QC_EIO;
        if (n <= 0)
            break;
        *bytes += (uint64_t)n;
        if (EVP_DigestUpdate(md, buf, (size_t)n) != 1)
            rc = QC_ECRYPTO;
    }
    uint8_t d[32];
    unsigned dl = 0;
    if (rc == 0 && (EVP_DigestFinal_ex(md, d, &dl) != 1 || dl != sizeof d))
        rc = QC_ECRYPTO;
    if (rc == 0)
        ops_hex(d, sizeof d, hex);
    EVP_MD_CTX_free(md);
    free(buf);
    close(fd);
    return rc;
}

static int fsync_path(const char *path, bool dir)
{
    int fd = open(path, (dir ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
    if (fd < 0)
        return QC_EIO;
    int rc = fsync(fd) == 0 ? 0 : QC_EIO;
    close(fd);
    return rc;
}

/* Reads what the copy in dir holds: shard, applied index and time, last outbox event. */
static int read_copy(ledger_backup_t *b, Qcledger__BackupReply *r)
{
    ledger_store_t *copy = NULL;
    MDB_txn *txn = NULL;
    int rc = ledger_store_open(b->dir, b->map_size, &copy);
    if (rc == 0)
        rc = ledger_store_bind_shard(copy, b->shard, b->shard_count);
    if (rc == 0)
        rc = ledger_store_txn_begin(copy, NULL, false, &txn);
    uint64_t next = 1;
    if (rc == 0)
        rc = ledger_store_applied_get(copy, txn, &r->applied_index, &r->applied_time_ms);
    if (rc == 0)
        rc = ledger_store_outbox_next(copy, txn, &next);
    if (txn != NULL)
        ledger_store_txn_abort(txn);
    ledger_store_close(&copy);
    assert(next >= 1);
    r->outbox_seq = next - 1;
    /* Opening the copy made a lock file: it is not part of the copy. */
    char lock[LEDGER_BACKUP_DIR_MAX + 16];
    snprintf(lock, sizeof lock, "%s/lock.mdb", b->dir);
    unlink(lock);
    return rc;
}

static int write_manifest(const ledger_backup_t *b, const Qcledger__BackupReply *r)
{
    char path[LEDGER_BACKUP_DIR_MAX + 32], tmp[LEDGER_BACKUP_DIR_MAX + 32];
    snprintf(path, sizeof path, "%s/%s", b->dir, LEDGER_BACKUP_MANIFEST);
    snprintf(tmp, sizeof tmp, "%s/%s.tmp", b->dir, LEDGER_BACKUP_MANIFEST);
    FILE *f = fopen(tmp, "we");
    if (f == NULL)
        return QC_EIO;
    fprintf(f,
            "format = %s\nshard = %" PRIu32 "\nshard_count = %" PRIu32 "\napplied_index = %" PRIu64
            "\napplied_time_ms = %" PRIu64 "\noutbox_seq = %" PRIu64 "\ntime_ms = %" PRIu64
            "\nbytes = %" PRIu64 "\ncopy_ms = %" PRIu64 "\nsha256 = %s\n",
            LEDGER_BACKUP_FORMAT, r->shard, r->shard_count, r->applied_index, r->applied_time_ms,
            r->outbox_seq, r->time_ms, r->bytes, r->copy_ms, r->sha256);
    int rc = fflush(f) == 0 && fsync(fileno(f)) == 0 ? 0 : QC_EIO;
    if (fclose(f) != 0)
        rc = QC_EIO;
    if (rc == 0 && rename(tmp, path) != 0)
        rc = QC_EIO;
    if (rc == 0)
        rc = fsync_path(b->dir, true);
    return rc;
}

static void *backup_main(void *arg)
{
    ledger_backup_t *b = arg;
    Qcledger__BackupReply r = QCLEDGER__BACKUP_REPLY__INIT;
    uint64_t t0 = ops_time_mono_ms();
    char data[LEDGER_BACKUP_DIR_MAX + 16];
    snprintf(data, sizeof data, "%s/data.mdb", b->dir);
    int rc = ledger_store_copy(b->store, b->dir);
    if (rc == 0)
        rc = fsync_path(data, false);
    uint64_t copy_ms = ops_time_mono_ms() - t0;
    if (rc == 0)
        rc = read_copy(b, &r);
    if (rc == 0)
        rc = file_sha256(data, b->sha256, &r.bytes);
    r.done = true;
    r.dir = b->dir;
    r.shard = b->shard;
    r.shard_count = b->shard_count;
    r.time_ms = ops_time_wall_ms();
    r.copy_ms = copy_ms;
    r.sha256 = b->sha256;
    if (rc == 0)
        rc = write_manifest(b, &r);
    char idx[24], seq[24], ms[24];
    snprintf(idx, sizeof idx, "%" PRIu64, r.applied_index);
    snprintf(seq, sizeof seq, "%" PRIu64, r.outbox_seq);
    snprintf(ms, sizeof ms, "%" PRIu64, copy_ms);
    if (rc == 0)
        ops_log(OPS_LOG_INFO, "ledger.backup_done", "dir", b->dir, "applied_index", idx,
                "outbox_seq", seq, "copy_ms", ms, NULL);
    else
        ops_log(OPS_LOG_ERROR, "ledger.backup_failed", "dir", b->dir, "error", qc_strerror(rc),
                NULL);
    pthread_mutex_lock(&b->mu);
    b->result = r;
    b->rc = rc;
    b->state = rc == 0 ? BACKUP_DONE : BACKUP_FAILED;
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

/* dir is absent (created here) or an empty directory. */
static int prepare_dir(const char *dir)
{
    if (mkdir(dir, 0700) == 0)
        return 0;
    if (errno != EEXIST)
        return QC_EINVAL;
    DIR *d = opendir(dir);
    if (d == NULL)
        return QC_EINVAL;
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            rc = QC_EEXIST;
    closedir(d);
    return rc;
}

int ledger_backup_request(ledger_backup_t *b, const char *dir, Qcledger__BackupReply *reply)
{
    assert(b != NULL);
    assert(reply != NULL);
    qcledger__backup_reply__init(reply);
    if (dir == NULL || dir[0] != '/' || strlen(dir) >= LEDGER_BACKUP_DIR_MAX)
        return QC_EINVAL;
    pthread_mutex_lock(&b->mu);
    backup_state_t st = b->state;
    bool same = strcmp(b->dir, dir) == 0;
    int rc = 0;
    if (st == BACKUP_RUNNING) {
        rc = same ? 0 : QC_EBUSY;
        reply->done = false;
        reply->dir = b->dir;
    } else if (st == BACKUP_DONE && same) {
        *reply = b->result;
    } else if (st == BACKUP_FAILED && same) {
        rc = b->rc;
        b->state = BACKUP_IDLE;
        b->dir[0] = '\0';
    }
    pthread_mutex_unlock(&b->mu);
    if (st == BACKUP_RUNNING || (same && st != BACKUP_IDLE))
        return rc;
    /* IDLE, or DONE / FAILED for another dir: the thread has ended. */
    backup_join(b);
    if ((rc = prepare_dir(dir)) != 0)
        return rc;
    pthread_mutex_lock(&b->mu);
    snprintf(b->dir, sizeof b->dir, "%s", dir);
    b->state = BACKUP_RUNNING;
    b->rc = 0;
    pthread_mutex_unlock(&b->mu);
    if (pthread_create(&b->thread, NULL, backup_main, b) != 0) {
        pthread_mutex_lock(&b->mu);
        b->state = BACKUP_IDLE;
        b->dir[0] = '\0';
        pthread_mutex_unlock(&b->mu);
        return QC_ENOMEM;
    }
    b->joinable = true;
    ops_log(OPS_LOG_INFO, "ledger.backup_started", "dir", dir, NULL);
    reply->done = false;
    reply->dir = b->dir;
    return 0;
}
