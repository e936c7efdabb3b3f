/* qctest_fs.c - the files of a test (see qctest_fs.h). */
#include "qctest_fs.h"

#include <assert.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qctest_proc.h"

int qctest_dir_new(const char *prefix, char dir[QCTEST_PATH_MAX])
{
    assert(prefix != NULL);
    assert(strchr(prefix, '/') == NULL);
    const char *tmp = getenv("TMPDIR");
    int n =
        snprintf(dir, QCTEST_PATH_MAX, "%s/%s-XXXXXX", tmp != NULL && *tmp ? tmp : "/tmp", prefix);
    if (n < 0 || n >= QCTEST_PATH_MAX)
        return -1;
    return mkdtemp(dir) != NULL ? 0 : -1;
}

int qctest_dir_remove(const char *dir)
{
    if (dir == NULL || dir[0] == '\0')
        return 0;
    if (getenv("QC_KEEP_TMP") != NULL) {
        fprintf(stderr, "qctest: kept %s (QC_KEEP_TMP)\n", dir);
        return 0;
    }
    char *argv[] = {"rm", "-rf", "--", (char *)dir, NULL};
    return qctest_run_argv(argv) == 0 ? 0 : -1;
}

void qctest_path(const char *dir, const char *name, char out[QCTEST_PATH_MAX])
{
    int n = snprintf(out, QCTEST_PATH_MAX, "%s/%s", dir, name);
    if (n < 0 || n >= QCTEST_PATH_MAX) {
        fprintf(stderr, "qctest: path %s/%s too long\n", dir, name);
        abort();
    }
}

int qctest_file_write(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return -1;
    FILE *f = fdopen(fd, "w");
    if (f == NULL) {
        close(fd);
        return -1;
    }
    int ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok ? 0 : -1;
}

long qctest_file_read(const char *path, char *buf, size_t cap)
{
    assert(cap > 0);
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
    return (long)n;
}

bool qctest_file_contains(const char *path, const char *needle)
{
    char *buf = malloc(QCTEST_FILE_MAX + 1);
    if (buf == NULL)
        return false;
    bool found =
        qctest_file_read(path, buf, QCTEST_FILE_MAX + 1) >= 0 && strstr(buf, needle) != NULL;
    free(buf);
    return found;
}

int qctest_fill_disk(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return -1;
    static char block[64 * 1024];
    while (write(fd, block, sizeof block) > 0)
        ;
    while (write(fd, block, 512) > 0) /* the last partial page as well */
        ;
    close(fd);
    return 0;
}
