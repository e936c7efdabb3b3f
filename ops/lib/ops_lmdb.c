/* ops_lmdb.c - LMDB return codes into quancun's error space (the table is in ops_lmdb.h). */
#include "ops_lmdb.h"

#include <assert.h>
#include <errno.h>

#include <lmdb.h>

#include "ops_log.h"
#include "qc_error.h"

int ops_lmdb_error(const char *event, const char *op, int rc)
{
    assert(rc != 0);
    assert(event != NULL);
    assert(op != NULL);
    switch (rc) {
    case MDB_NOTFOUND:
        return QC_ENOTFOUND;
    case MDB_KEYEXIST:
        return QC_EEXIST;
    case MDB_MAP_FULL:
    case MDB_TXN_FULL:
        return QC_EFULL;
    case MDB_READERS_FULL:
        return QC_EBUSY;
    case ENOSPC:
    case EDQUOT:
        return QC_ENOSPACE;
    default:
        /* A failing disk fails every call: one line per burst, with the count held back. */
        ops_log_limited(OPS_LOG_ERROR, event, NULL, "op", op, "error", mdb_strerror(rc), NULL);
        return QC_EIO;
    }
}
