/* qctest_store.c - `init` of a store before a test starts its service (qctest_store.h). */
#include "qctest_store.h"

#include <stdbool.h>
#include <stdio.h>
#include <unistd.h>

#include "ops_store.h"
#include "qc_error.h"
#include "qctest_fs.h"
#include "qctest_proc.h"

#define QCTEST_STORE_ARGS_MAX 64

int qctest_store_init(const char *const *args, const char *data, const char *log)
{
    ops_store_identity_t have;
    char why[OPS_STORE_WHY_MAX];
    int rc = ops_store_identity_read(data, &have, why, sizeof why);
    if (rc != QC_ENOTFOUND)
        return 0; /* initialized already, or damaged: the service says which */
    char mdb[QCTEST_PATH_MAX];
    qctest_path(data, "data.mdb", mdb);
    bool upgrade = access(mdb, F_OK) == 0;
    const char *argv[QCTEST_STORE_ARGS_MAX] = {args[0], "init"};
    int n = 2;
    if (upgrade)
        argv[n++] = "--upgrade";
    for (int i = 1; args[i] != NULL; i++) {
        if (n >= QCTEST_STORE_ARGS_MAX - 1)
            return -1;
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    qctest_cmd_t cmd = {.argv = (char *const *)argv, .out_path = log, .err_path = log};
    if (qctest_run(&cmd) != 0) {
        fprintf(stderr, "%s init failed, see %s\n", args[0], log);
        return -1;
    }
    return 0;
}
