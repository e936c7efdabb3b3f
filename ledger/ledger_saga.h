/* ledger_saga.h - the load saga and the double-entry moves behind it, on the ledger store.
 *
 * Every operation runs inside one LMDB write transaction. Give a parent transaction to
 * group many operations into one commit (the service's group commit): each operation then
 * runs in a nested transaction of parent that is committed into it on success and aborted
 * on refusal, so a refused operation changes nothing. Give parent NULL and the operation
 * begins and durably commits its own transaction (tests, tools).
 *
 * Refusals return a negative QC_E* code and, when why is not NULL, a sentence naming the
 * reason in why (capacity LEDGER_WHY_MAX).
 *
 * The saga verifies every signed artefact a device sent itself: the gateway's word is never
 * taken. The bank's allow is asked for by the ledger only after the debit is committed. */
#ifndef LEDGER_SAGA_H
#define LEDGER_SAGA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "ledger_store.h"
#include "proto_cert.h"
#include "qc_error.h"

#define LEDGER_WHY_MAX 256
#define LEDGER_OUTBOX_MAX 1000000   /* events waiting for the relay before growth is refused */
#define LEDGER_EXPIRE_BATCH_MAX 256 /* deadline compensations per call of expire */
#define LEDGER_DAY_MS 86400000ull
#define LEDGER_CHECK_CURRENCIES_MAX 32
#define LEDGER_CHECK_PROBLEMS_MAX 16
#define LEDGER_CHECK_PROBLEM_LEN 200

typedef struct ledger_saga ledger_saga_t;

typedef struct ledger_saga_config {
    ledger_store_t *store;      /* borrowed */
    EVP_PKEY *allow_key;        /* borrowed: the bank's allow key (its key id is checked) */
    const proto_trust_t *trust; /* borrowed; NULL = enrollment does not check the chain */
    uint32_t shard;
    uint32_t shard_count;
    /* A replica applying a Raft log (ledger_fsm.h): growth is not refused for the map's
     * fill, which differs between replicas (page use depends on their history), so every
     * replica takes the same decisions; the leader checks room before it proposes. */
    bool replica;
} ledger_saga_config_t;

/* Creates a saga engine over cfg. Returns 0 and sets *out, or QC_EINVAL, QC_ENOMEM. */
QC_MUST_CHECK int ledger_saga_new(const ledger_saga_config_t *cfg, ledger_saga_t **out);

/* Replaces the trust store enrollment checks with (borrowed; NULL = none), as after the CRL
 * file was re-read (proto_trust_watch.h). Between two calls, never during one. */
void ledger_saga_set_trust(ledger_saga_t *saga, const proto_trust_t *trust);
void ledger_saga_destroy(ledger_saga_t **saga_p);

/* Reserve(signed request): the bank verifies and debits; it does not sign here. Idempotent by
 * txn id: when the txn is known and the request bytes are the stored ones, *out is the stored
 * record (with its allow, once one is stored) and nothing changes; another request under a
 * known txn id is QC_EREPLAY. Otherwise, in this order: sizes, parse, shard, device known,
 * request signature by the device's enrolled key, deadline_ms (absolute, set by the ledger)
 * ahead of now_ms, then the business rules of ledger_saga_reserve_trusted(). On success *out
 * is the new RESERVED record, with no allow: the caller commits, then has the bank sign
 * ledger_saga_allow_body(*out) and stores the result with ledger_saga_store_allow().
 * Refusals: QC_ETOOBIG, QC_EDECODE, QC_EMISSING, QC_EALG, QC_EAMOUNT, QC_ESHARD,
 * QC_EUNKNOWNDEV, QC_EKEYID, QC_EBADSIG, QC_EEXPIRED, QC_EREPLAY, and those of
 * ledger_saga_reserve_trusted(). */
QC_MUST_CHECK int ledger_saga_reserve(ledger_saga_t *saga, MDB_txn *parent, uint64_t now_ms,
                                      uint64_t deadline_ms, const uint8_t *request,
                                      size_t request_len, ledger_load_t *out, char *why);

/* The business half of reserve, for a caller that has verified the request's signature
 * itself (the store-only benchmark): never call it with untrusted input. request is the
 * envelope stored byte for byte. Rules: device active (QC_EREVOKED) and bound to the account
 * (QC_ENOTBOUND), account known (QC_EUNKNOWNACCT), same currency (QC_ECURRENCY), open
 * (QC_EFROZEN); reconciliation of the device's previous load; counter not stale (QC_ESTALE)
 * nor ahead (QC_EMISMATCH); amount within limits (QC_ELIMIT); wallet cap (QC_EWALLETCAP);
 * funds (QC_EFUNDS); room (QC_EFULL). */
QC_MUST_CHECK int ledger_saga_reserve_trusted(ledger_saga_t *saga, MDB_txn *parent, uint64_t now_ms,
                                              uint64_t deadline_ms, const Quancun__LoadRequest *req,
                                              const uint8_t *request, size_t request_len,
                                              ledger_load_t *out, char *why);

/* The LoadAllow body the bank signs for the reserved load l, packed into *body (malloc'd):
 * txn, device, account, amount, currency, counter and request digest from the stored
 * request, host time = l->created_ms, deadline = l->deadline_ms. A function of the record
 * alone, so every signature ever asked for one load signs the same bytes. Returns 0,
 * QC_EINTERNAL or QC_ENOMEM. */
QC_MUST_CHECK int ledger_saga_allow_body(const ledger_load_t *l, uint8_t **body, size_t *body_len);

/* The LoadOutcome body for the settled (or any) record l at now_ms, packed into *body. */
QC_MUST_CHECK int ledger_saga_outcome_body(const ledger_load_t *l, uint64_t now_ms, uint8_t **body,
                                           size_t *body_len);

/* Stores allow (a signed LoadAllow envelope, as the signer returned it) with the load txn_id,
 * the first time only: one allow per load is ever released, and it is the stored one. The
 * allow must be under the bank's allow key (key id, QC_EKEYID) and its body must be exactly
 * ledger_saga_allow_body() of the record (QC_EMISMATCH); its signature is not re-verified
 * (see docs/DESIGN.md: the ledger chose those bytes, and the device verifies them). A load
 * that already has an allow keeps it: 0, *out shows the stored one. A load that is no longer
 * RESERVED gets none: QC_ESTATE (no allow is released for money that is not held), nor one
 * whose deadline is at or before now_ms: QC_EEXPIRED (its compensation is due). Appends
 * "load.allowed" with the allow to the outbox. QC_ENOTFOUND for an unknown txn. */
QC_MUST_CHECK int ledger_saga_store_allow(ledger_saga_t *saga, MDB_txn *parent, uint64_t now_ms,
                                          const uint8_t txn_id[LEDGER_TXN_ID_SIZE],
                                          const uint8_t *allow, size_t allow_len,
                                          ledger_load_t *out, char *why);

/* Settle(txn id, signed report). The report must verify with the load's device key: when
 * it does not, a security event is written to the outbox (and committed), the saga is
 * unchanged, and QC_EBADSIG is returned. A verified report for another txn or device is
 * QC_EMISMATCH. Otherwise the ledger decides: RESERVED + APPLIED and matching (account,
 * allow digest, counter_after = counter + 1) -> CONFIRMED; RESERVED + REJECTED or not
 * matching -> COMPENSATED; COMPENSATED + APPLIED and matching -> LATE_CONFIRMED; any other
 * combination changes nothing. Idempotent. *out is the record afterwards.
 * QC_ENOTFOUND for an unknown txn. */
QC_MUST_CHECK int ledger_saga_settle(ledger_saga_t *saga, MDB_txn *parent, uint64_t now_ms,
                                     const uint8_t txn_id[LEDGER_TXN_ID_SIZE],
                                     const uint8_t *report, size_t report_len, ledger_load_t *out,
                                     char *why);

/* The decision half of settle, for a caller that verified the report itself. */
QC_MUST_CHECK int ledger_saga_settle_trusted(ledger_saga_t *saga, MDB_txn *parent, uint64_t now_ms,
                                             const uint8_t txn_id[LEDGER_TXN_ID_SIZE],
                                             const Quancun__ExecutionReport *rep,
                                             const uint8_t *report, size_t report_len,
                                             ledger_load_t *out, char *why);

/* Compensates (reason REPORT_MISSING) up to max RESERVED loads whose deadline is at or
 * before now_ms, earliest first. *count (may be NULL) gets how many. *next_deadline_ms
 * (may be NULL) gets the earliest deadline still pending, 0 when none. */
QC_MUST_CHECK int ledger_saga_expire(ledger_saga_t *saga, MDB_txn *parent, uint64_t now_ms,
                                     size_t max, size_t *count, uint64_t *next_deadline_ms);

/* Admin operations. Each is idempotent: repeating it with the same arguments returns the
 * current record and changes nothing.
 * open_account: spec gives id, currency and limits (load_min, load_max, daily_max); the
 *   id must hash to this shard (QC_ESHARD) and must not contain ':' (system accounts do).
 *   A different account under the same id is QC_EEXIST. Creates the currency's HOLD, FLOAT
 *   and FUNDING accounts on first use.
 * deposit: FUNDING -> account, idempotent by txn_id (16 bytes).
 * set_frozen: freeze or unfreeze.
 * enroll_device: binds the device whose certificate is cert (DER; its subject CN is the
 *   device id; verified against the trust store when one is configured) to account_id.
 * revoke_device: the device's requests are refused from now on; its RESERVED load, if
 *   any, still settles or expires. */
QC_MUST_CHECK int ledger_saga_open_account(ledger_saga_t *saga, MDB_txn *parent, uint64_t now_ms,
                                           const ledger_account_t *spec, ledger_account_t *out,
                                           char *why);
QC_MUST_CHECK int ledger_saga_deposit(ledger_saga_t *saga, MDB_txn *parent, uint64_t now_ms,
                                      const char *account_id, int64_t amount,
                                      const uint8_t txn_id[LEDGER_TXN_ID_SIZE],
                                      ledger_account_t *out, char *why);
QC_MUST_CHECK int ledger_saga_set_frozen(ledger_saga_t *saga, MDB_txn *parent, uint64_t now_ms,
                                         const char *account_id, bool frozen, ledger_account_t *out,
                                         char *why);
QC_MUST_CHECK int ledger_saga_enroll_device(ledger_saga_t *saga, MDB_txn *parent, uint64_t now_ms,
                                            const char *account_id, const uint8_t *cert,
                                            size_t cert_len, int64_t wallet_cap, uint64_t counter,
                                            ledger_device_t *out, char *why);
QC_MUST_CHECK int ledger_saga_revoke_device(ledger_saga_t *saga, MDB_txn *parent, uint64_t now_ms,
                                            const char *device_id, ledger_device_t *out, char *why);

/* Replays one settlement the audit log recorded (an event "load.confirmed",
 * "load.compensated" or "load.late_confirmed" whose payload, decoded, is after): moves the
 * stored load from the state before to after->state by the same transition, at now_ms (the
 * event's time), with after's reason and report (the report is not verified again: the
 * ledger verified it when it settled). It covers every cause of a settlement: a report, a
 * deadline, and the counter of a next request whose own reserve may have been refused.
 * For restores (ledger_replay.h) only. Returns 0, QC_ENOTFOUND, QC_ESTATE (no such
 * transition from the stored state), or the store's errors. */
QC_MUST_CHECK int ledger_saga_replay_settle(ledger_saga_t *saga, MDB_txn *parent, uint64_t now_ms,
                                            const ledger_load_t *after, ledger_load_t *out,
                                            char *why);

/* The result of the invariant check. */
typedef struct ledger_check_totals {
    uint32_t currency;
    int64_t sum;          /* of every balance of the currency: must be 0 */
    int64_t hold;         /* HOLD balance */
    int64_t reserved_sum; /* of RESERVED loads: must equal hold */
    int64_t float_balance;
} ledger_check_totals_t;

typedef struct ledger_check {
    bool ok;
    size_t n_currencies;
    ledger_check_totals_t currencies[LEDGER_CHECK_CURRENCIES_MAX];
    size_t n_problems;      /* kept, at most LEDGER_CHECK_PROBLEMS_MAX */
    uint64_t problem_count; /* found */
    char problems[LEDGER_CHECK_PROBLEMS_MAX][LEDGER_CHECK_PROBLEM_LEN];
    uint64_t accounts, devices, loads, reserved, transfers, outbox_depth;
} ledger_check_t;

/* Checks the invariants of docs/DESIGN.md section 3 in txn (any; NULL = its own read txn): per
 * currency the balances sum to zero and HOLD equals the RESERVED loads; every load is in
 * one valid state with exactly the transfers of that state; the deadline index is exactly
 * the RESERVED loads; replaying every transfer gives every stored balance. out->ok tells.
 * Returns 0 (whatever the verdict), or QC_EIO, QC_EDECODE, QC_ENOMEM when it could not
 * look. It reads saga's store and nothing else of saga, so it may run on another thread than
 * the one writing through saga, in a read txn of that thread (ledger_query.h does). */
QC_MUST_CHECK int ledger_saga_check(ledger_saga_t *saga, MDB_txn *txn, ledger_check_t *out);

/* "HOLD:156" etc. into out (capacity LEDGER_ID_MAX + 1). */
void ledger_system_account_id(Qcledger__AccountKind kind, uint32_t currency, char *out);

#endif
