/* ops_lmdb.h - the one mapping of LMDB's return codes into quancun's error space.
 *
 * Both stores (ledger/ledger_store.c and audit/audit_store.c) use LMDB; services may not share
 * each other's code, so the mapping lives here, on the ground floor, and both read the same
 * answer for the same LMDB condition:
 *
 *   MDB_NOTFOUND                    -> QC_ENOTFOUND  (expected: not logged)
 *   MDB_KEYEXIST                    -> QC_EEXIST     (expected: not logged)
 *   MDB_MAP_FULL, MDB_TXN_FULL      -> QC_EFULL      (an operating limit: not logged here)
 *   MDB_READERS_FULL                -> QC_EBUSY      (try again once a reader ends)
 *   ENOSPC, EDQUOT (a full disk)    -> QC_ENOSPACE   (an operating limit: not logged here;
 *                                                     ops_storage.h logs the change of state)
 *   anything else                   -> QC_EIO, logged at error level with LMDB's words */
#ifndef OPS_LMDB_H
#define OPS_LMDB_H

#include "qc_error.h"
/* Maps rc, a non-zero return of an LMDB call, to a negative QC_E* code. An unexpected rc is
 * logged as event (e.g. "ledger.lmdb") with the fields op (the LMDB call, e.g. "txn_begin")
 * and error (mdb_strerror). Passing rc == 0 is a programming error (asserted). */
QC_MUST_CHECK int ops_lmdb_error(const char *event, const char *op, int rc);

#endif
