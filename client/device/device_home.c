/* device_home.c - files of a device's home directory: atomic replace, bounded reads, the
 * lock, and the write-ahead operation log. */
#include "device_home.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qc_error.h"

#define HOME_TMP_SUFFIX ".tmp"
#define HOME_LOCK_FILE ".lock"
#define HOME_MODE 0700
#define HOME_LOG_SEQ_PREFIX "{\"seq\":"

/* ------------------------------------------------------------------ files */

int device_home_path(const char *home, const char *name, char out[DEVICE_PATH_MAX])
{
    assert(home != NULL);
    assert(name != NULL);
    int n = snprintf(out, DEVICE_PATH_MAX, "%s/%s", home, name);
    if (n < 0 || n >= DEVICE_PATH_MAX)
        return QC_EINVAL;
    return 0;
}

static int write_all(int fd, const uint8_t *bytes, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, bytes, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return QC_EIO;
        bytes += n;
        len -= (size_t)n;
    }
    return 0;
}

static int fsync_dir(const char *home)
{
    int fd = open(home, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return QC_EIO;
    int rc = fsync(fd) == 0 ? 0 : QC_EIO;
    close(fd);
    return rc;
}

int device_home_write(const char *home, const char *name, const uint8_t *bytes, size_t len,
                      mode_t mode)
{
    assert(home != NULL);
    assert(name != NULL);
    assert(bytes != NULL || len == 0);
    char path[DEVICE_PATH_MAX];
    char tmp[DEVICE_PATH_MAX];
    if (device_home_path(home, name, path) != 0)
        return QC_EINVAL;
    int n = snprintf(tmp, sizeof(tmp), "%s%s", path, HOME_TMP_SUFFIX);
    if (n < 0 || (size_t)n >= sizeof(tmp))
        return QC_EINVAL;

    (void)unlink(tmp); /* a leftover of a crash; O_EXCL below must not trip on it */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        return QC_EIO;
    int rc = write_all(fd, bytes, len);
    if (rc == 0 && fchmod(fd, mode) != 0) /* the umask must not widen or narrow it */
        rc = QC_EIO;
    if (rc == 0 && fsync(fd) != 0)
        rc = QC_EIO;
    if (close(fd) != 0 && rc == 0)
        rc = QC_EIO;
    if (rc == 0 && rename(tmp, path) != 0)
        rc = QC_EIO;
    if (rc != 0) {
        (void)unlink(tmp);
        return rc;
    }
    return fsync_dir(home);
}

int device_home_read(const char *home, const char *name, size_t max, uint8_t **out, size_t *len)
{
    assert(home != NULL);
    assert(name != NULL);
    assert(out != NULL);
    assert(len != NULL);
    *out = NULL;
    *len = 0;
    char path[DEVICE_PATH_MAX];
    if (device_home_path(home, name, path) != 0)
        return QC_EINVAL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? QC_ENOTFOUND : QC_EIO;
    int rc = 0;
    struct stat sb;
    uint8_t *buf = NULL;
    if (fstat(fd, &sb) != 0) {
        rc = QC_EIO;
        goto out;
    }
    if (sb.st_size < 0 || (uint64_t)sb.st_size > max) {
        rc = QC_ETOOBIG;
        goto out;
    }
    size_t size = (size_t)sb.st_size;
    buf = malloc(size + 1);
    if (buf == NULL) {
        rc = QC_ENOMEM;
        goto out;
    }
    size_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = QC_EIO;
            goto out;
        }
        got += (size_t)n;
    }
    buf[size] = '\0';
    *out = buf;
    *len = size;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return rc;
}

int device_home_lock(const char *home, int *fd_out)
{
    assert(home != NULL);
    assert(fd_out != NULL);
    char path[DEVICE_PATH_MAX];
    if (device_home_path(home, HOME_LOCK_FILE, path) != 0)
        return QC_EINVAL;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return QC_EIO;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int err = errno;
        close(fd);
        return err == EWOULDBLOCK ? QC_EBUSY : QC_EIO;
    }
    *fd_out = fd;
    return 0;
}

int device_home_claim(const char *home, const char *state_name, bool create, int *fd_out)
{
    assert(home != NULL);
    assert(state_name != NULL);
    assert(fd_out != NULL);
    char path[DEVICE_PATH_MAX];
    if (device_home_path(home, state_name, path) != 0)
        return QC_EINVAL;
    if (create && mkdir(home, HOME_MODE) != 0 && errno != EEXIST)
        return QC_EIO;
    /* No state file, no device: say so without leaving a lock file behind. */
    if (!create && access(path, F_OK) != 0)
        return errno == ENOENT || errno == ENOTDIR ? QC_ENOTFOUND : QC_EIO;
    int fd = -1;
    int rc = device_home_lock(home, &fd);
    if (rc != 0)
        return rc;
    if (create && access(path, F_OK) == 0) {
        close(fd);
        return QC_EEXIST;
    }
    *fd_out = fd;
    return 0;
}

/* ------------------------------------------------------------------ operation log */

int device_home_log_append(const char *home, const char *line)
{
    assert(home != NULL);
    assert(line != NULL);
    size_t n = strnlen(line, DEVICE_LOG_LINE_MAX + 1);
    if (n == 0 || n > DEVICE_LOG_LINE_MAX || memchr(line, '\n', n) != NULL)
        return QC_EINVAL;
    char path[DEVICE_PATH_MAX];
    if (device_home_path(home, DEVICE_LOG_FILE, path) != 0)
        return QC_EINVAL;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return QC_EIO;
    char buf[DEVICE_LOG_LINE_MAX + 1];
    memcpy(buf, line, n);
    buf[n] = '\n';
    int rc = write_all(fd, (const uint8_t *)buf, n + 1);
    if (rc == 0 && fsync(fd) != 0)
        rc = QC_EIO;
    if (close(fd) != 0 && rc == 0)
        rc = QC_EIO;
    return rc;
}

/* One pass of oplog_last_seq(): reads the tail of the log; a torn last line (the process
 * died inside a write) is cut off and *again set so that the caller reads once more. */
static int oplog_tail(int fd, uint64_t *seq_out, bool *again)
{
    /* Room for a longest line, its newline and the newline before it. */
    char tail[DEVICE_LOG_LINE_MAX + 3];
    struct stat sb;
    *again = false;
    *seq_out = 0;
    if (fstat(fd, &sb) != 0 || sb.st_size < 0)
        return QC_EIO;
    off_t size = sb.st_size;
    off_t want = size < (off_t)sizeof(tail) - 1 ? size : (off_t)sizeof(tail) - 1;
    if (want == 0)
        return 0;
    ssize_t got = pread(fd, tail, (size_t)want, size - want);
    if (got != (ssize_t)want)
        return QC_EIO;
    tail[got] = '\0';
    if (memchr(tail, '\0', (size_t)got) != NULL)
        return QC_EDECODE;
    char *last_nl = strrchr(tail, '\n');
    if (tail[got - 1] != '\n') {
        if (last_nl == NULL && size > want)
            return QC_EDECODE; /* a line longer than any we write */
        off_t keep = last_nl == NULL ? 0 : size - want + (last_nl - tail) + 1;
        if (ftruncate(fd, keep) != 0 || fsync(fd) != 0)
            return QC_EIO;
        *again = true;
        return 0;
    }
    tail[got - 1] = '\0';
    char *start = strrchr(tail, '\n');
    if (start == NULL && size > want)
        return QC_EDECODE;
    start = start == NULL ? tail : start + 1;
    if (strncmp(start, HOME_LOG_SEQ_PREFIX, strlen(HOME_LOG_SEQ_PREFIX)) != 0)
        return QC_EDECODE;
    char *num_end = NULL;
    errno = 0;
    unsigned long long seq = strtoull(start + strlen(HOME_LOG_SEQ_PREFIX), &num_end, 10);
    if (errno != 0 || *num_end != ',')
        return QC_EDECODE;
    *seq_out = (uint64_t)seq;
    return 0;
}

/* Reads the sequence number of the log's last complete line (0 for an empty or missing
 * log), cutting a torn tail off first. */
static int oplog_last_seq(const char *path, uint64_t *seq_out)
{
    *seq_out = 0;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : QC_EIO;
    bool again = false;
    int rc = oplog_tail(fd, seq_out, &again);
    if (rc == 0 && again)
        rc = oplog_tail(fd, seq_out, &again);
    close(fd);
    return rc;
}

int device_home_log_recover(const char *home, uint64_t log_seq, const char *log_pending)
{
    assert(home != NULL);
    assert(log_pending != NULL);
    char path[DEVICE_PATH_MAX];
    if (device_home_path(home, DEVICE_LOG_FILE, path) != 0)
        return QC_EINVAL;
    uint64_t last = 0;
    int rc = oplog_last_seq(path, &last);
    if (rc != 0)
        return rc;
    if (last == log_seq)
        return 0;
    if (log_seq > 0 && last == log_seq - 1 && log_pending[0] != '\0')
        return device_home_log_append(home, log_pending);
    return QC_EDECODE;
}
