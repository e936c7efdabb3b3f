/* qctest_fs.h - the files of a test: its temporary directory, paths in it, small text files.
 *
 * Each test works in a fresh directory under $TMPDIR (or /tmp) and removes it at the end,
 * unless QC_KEEP_TMP is set (to look at what a failed test left: logs, data, keys). */
#ifndef QCTEST_FS_H
#define QCTEST_FS_H

#include <stdbool.h>
#include <stddef.h>

#define QCTEST_PATH_MAX 512
#define QCTEST_FILE_MAX (4 * 1024 * 1024) /* the most qctest_file_* reads of a file */

/* Makes a fresh directory $TMPDIR/<prefix>-XXXXXX (or under /tmp) into dir (capacity
 * QCTEST_PATH_MAX). Returns 0 or -1. */
int qctest_dir_new(const char *prefix, char dir[QCTEST_PATH_MAX]);

/* Removes the directory tree at dir unless QC_KEEP_TMP is set (then it names it on stderr);
 * an empty dir is a no-op, so a fixture that failed early may call it. Returns 0 or -1. */
int qctest_dir_remove(const char *dir);

/* dir/name into out (capacity QCTEST_PATH_MAX); aborts if it does not fit. */
void qctest_path(const char *dir, const char *name, char out[QCTEST_PATH_MAX]);

/* Writes text to path (created 0600, replaced). Returns 0 or -1. */
int qctest_file_write(const char *path, const char *text);

/* Reads at most cap - 1 bytes of path into buf, NUL-terminated (empty when it cannot be
 * read). Returns the bytes read, or -1 when the file cannot be opened. */
long qctest_file_read(const char *path, char *buf, size_t cap);

/* True when the file at path (its first QCTEST_FILE_MAX bytes) contains needle. */
bool qctest_file_contains(const char *path, const char *needle);

/* Writes zeros to path (created or truncated) until its file system is full, the last
 * partial block too: a full disk for a test (on a small tmpfs). Returns 0, or -1 when path
 * cannot be opened. */
int qctest_fill_disk(const char *path);

#endif
