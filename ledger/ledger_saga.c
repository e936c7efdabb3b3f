/* ledger_saga.c - the load saga state machine and its double-entry moves.
 *
 * Invariants (checked by ledger_saga_check(), asserted where cheap):
 *   1. Every movement of money is one transfer (debit, credit, amount, txn, kind) and both
 *      balances change in the same transaction, so the balances of a currency sum to 0.
 *   2. HOLD:<cur> equals the sum of the amounts of RESERVED loads of that currency.
 *   3. A txn id carries at most one transfer of each kind: a load is debited by reserve
 *      at most once, whatever is retried.
 *   4. Every load is in exactly one state, and its transfers are exactly those of the
 *      path that led there (RESERVED: reserve; CONFIRMED: + confirm; COMPENSATED:
 *      + compensate; LATE_CONFIRMED: + compensate + late_confirm).
 *   5. The deadline index holds exactly the RESERVED loads.
 *   6. A device has at most one RESERVED load, and device.reserved_txn names it.
 *   7. device.counter only grows; a request below it is stale.
 *   8. Every change appends its audit events to the outbox in the same transaction.
 *   9. A refused operation changes nothing (it runs in its own nested transaction).
 *  10. A load's allow is stored at most once, only while the load is RESERVED (its money held),
 *      and its body is ledger_saga_allow_body() of the record: the stored allow is the only one
 *      the ledger ever releases, so no allow exists for money that was not reserved.
 *
 * States and the function performing each transition:
 *
 *             saga_reserve_apply()             saga_confirm()
 *   (none) ------------------------> RESERVED -----------------------> CONFIRMED
 *                                      |  ^ store_allow_txn(): the allow the bank signed
 *                                      |  | after the commit, stored once (invariant 10)
 *                                      |   settle APPLIED + matching, or a next request
 *                                      |   whose counter is this load's counter + 1
 *                                      |
 *                                      | saga_compensate()
 *                                      |   settle REJECTED or mismatching, deadline
 *                                      |   passed (ledger_saga_expire), or a next request
 *                                      v   with this load's counter
 *                                  COMPENSATED
 *                                      |
 *                                      | saga_late_confirm()
 *                                      |   settle APPLIED + matching, or a next request
 *                                      v   whose counter is this load's counter + 1
 *                                LATE_CONFIRMED
 *
 * Money: reserve account -> HOLD; confirm HOLD -> FLOAT; compensate HOLD -> account;
 * late confirm account -> FLOAT (the account may go below zero: it is flagged). */
#include "ledger_saga.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/x509.h>

#include "ops_log.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "proto_id.h"
#include "proto_load.h"
#include "proto_shard.h"
#include "qc_error.h"

#define SAGA_REASON_APPLIED "REPORT_APPLIED"
#define SAGA_REASON_MISSING "REPORT_MISSING"
#define SAGA_REASON_MISMATCH "REPORT_MISMATCH"
#define SAGA_REASON_REJECTED "REPORT_REJECTED"
#define SAGA_REASON_COUNTER_APPLIED "COUNTER_PROVES_APPLIED"
#define SAGA_REASON_COUNTER_NOT_APPLIED "COUNTER_PROVES_NOT_APPLIED"

/* Device public keys, parsed once from their enrolled certificates: OpenSSL 3 decodes a
 * certificate's key through its provider machinery, which costs more than the signature
 * check itself. Direct-mapped by device id; an entry counts only when the certificate
 * fingerprint matches too, so a re-enrolled device never meets its old key.
 * 8192 slots (at most 8192 keys, about 2 KiB each in OpenSSL 3: 16 MiB): with 1024, the
 * benchmark's 2000 devices missed on about half the verifications and the misses' decoding
 * was 10 % of the ledger's CPU; what matters in production is that a report, which follows
 * its request within seconds, finds its device's key still there (docs/PERFORMANCE.md). */
#define SAGA_KEY_CACHE_SLOTS 8192

typedef struct saga_key_slot {
    char id[LEDGER_DEVICE_ID_MAX + 1];
    uint8_t fp[PROTO_DIGEST_SIZE];
    proto_verifier_t *key; /* NULL = empty; its key id and verify context made once */
} saga_key_slot_t;

struct ledger_saga {
    saga_key_slot_t *keys; /* SAGA_KEY_CACHE_SLOTS */
    ledger_store_t *store;
    EVP_PKEY *allow_key;
    uint8_t allow_key_id[PROTO_KEY_ID_SIZE];
    const proto_trust_t *trust;
    uint32_t shard;
    uint32_t shard_count;
    bool replica;
    ledger_load_t *prev; /* scratch for the previous load of a device */
};

/* Fills why (may be NULL) and returns code, so refusals read as one line. */
static int refuse(char *why, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int refuse(char *why, int code, const char *fmt, ...)
{
    assert(code < 0);
    if (why != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, LEDGER_WHY_MAX, fmt, ap);
        va_end(ap);
    }
    return code;
}

void ledger_system_account_id(Qcledger__AccountKind kind, uint32_t currency, char *out)
{
    const char *name = kind == QCLEDGER__ACCOUNT_KIND__KIND_HOLD      ? "HOLD"
                       : kind == QCLEDGER__ACCOUNT_KIND__KIND_FLOAT   ? "FLOAT"
                       : kind == QCLEDGER__ACCOUNT_KIND__KIND_FUNDING ? "FUNDING"
                                                                      : NULL;
    assert(name != NULL);
    snprintf(out, LEDGER_ID_MAX + 1, "%s:%u", name, currency);
}

int ledger_saga_new(const ledger_saga_config_t *cfg, ledger_saga_t **out)
{
    assert(cfg != NULL);
    assert(out != NULL);
    *out = NULL;
    if (cfg->store == NULL || cfg->allow_key == NULL || cfg->shard_count == 0 ||
        cfg->shard_count > PROTO_SHARD_COUNT_MAX || cfg->shard >= cfg->shard_count)
        return QC_EINVAL;
    ledger_saga_t *s = calloc(1, sizeof *s);
    if (s == NULL)
        return QC_ENOMEM;
    s->prev = malloc(sizeof *s->prev);
    s->keys = calloc(SAGA_KEY_CACHE_SLOTS, sizeof *s->keys);
    if (s->prev == NULL || s->keys == NULL) {
        free(s->prev);
        free(s->keys);
        free(s);
        return QC_ENOMEM;
    }
    s->store = cfg->store;
    s->allow_key = cfg->allow_key;
    if (proto_key_id(cfg->allow_key, s->allow_key_id) != 0) {
        free(s->prev);
        free(s->keys);
        free(s);
        return QC_EINVAL;
    }
    s->trust = cfg->trust;
    s->shard = cfg->shard;
    s->shard_count = cfg->shard_count;
    s->replica = cfg->replica;
    *out = s;
    return 0;
}

void ledger_saga_destroy(ledger_saga_t **saga_p)
{
    if (saga_p == NULL || *saga_p == NULL)
        return;
    for (size_t i = 0; i < SAGA_KEY_CACHE_SLOTS; i++)
        proto_verifier_destroy(&(*saga_p)->keys[i].key);
    free((*saga_p)->keys);
    free((*saga_p)->prev);
    free(*saga_p);
    *saga_p = NULL;
}

/* ------------------------------------------------------------ transactions */

static int saga_begin(ledger_saga_t *s, MDB_txn *parent, MDB_txn **txn)
{
    return ledger_store_txn_begin(s->store, parent, true, txn);
}

/* Commits txn when rc is 0 or keep is set (a refusal that still records a security
 * event), aborts it otherwise. Returns rc, or the commit's error. */
static int saga_finish(MDB_txn *txn, int rc, bool keep)
{
    if (rc == 0 || keep) {
        int crc = ledger_store_txn_commit(txn);
        return crc != 0 ? crc : rc;
    }
    ledger_store_txn_abort(txn);
    return rc;
}

/* ------------------------------------------------------------ outbox */

static int emit(ledger_saga_t *s, MDB_txn *txn, uint64_t now, const char *type,
                const uint8_t *txn_id, const ProtobufCMessage *payload)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    if (payload != NULL) {
        int rc = proto_pack(payload, &buf, &len);
        if (rc != 0)
            return rc;
    }
    int rc = ledger_store_outbox_append(s->store, txn, s->shard, type, txn_id, now, buf, len, NULL);
    free(buf);
    return rc;
}

/* A load event carries the record with the signed artefacts it adds: load.reserved the
 * request, load.allowed the allow the bank signed after the debit, a settlement the report
 * that caused it (if any). The audit log links them by txn id, so nothing is lost and a
 * commit writes each artefact once. */
static int emit_load(ledger_saga_t *s, MDB_txn *txn, uint64_t now, const char *type,
                     const ledger_load_t *l)
{
    Qcledger__Load m;
    ledger_store_load_view(l, &m);
    bool allowed = strcmp(type, "load.allowed") == 0;
    if (l->state != QUANCUN__LOAD_STATE__LOAD_RESERVED || allowed)
        m.request.len = 0;
    if (l->state != QUANCUN__LOAD_STATE__LOAD_RESERVED || !allowed)
        m.allow.len = 0;
    return emit(s, txn, now, type, l->txn_id, &m.base);
}

static int emit_account(ledger_saga_t *s, MDB_txn *txn, uint64_t now, const char *type,
                        const uint8_t *txn_id, const ledger_account_t *a)
{
    Qcledger__Account m;
    ledger_store_account_view(a, &m);
    return emit(s, txn, now, type, txn_id, &m.base);
}

static int emit_device(ledger_saga_t *s, MDB_txn *txn, uint64_t now, const char *type,
                       const ledger_device_t *d)
{
    Qcledger__Device m;
    ledger_store_device_view(d, &m);
    return emit(s, txn, now, type, NULL, &m.base);
}

/* Refuses growth when the map or the outbox is nearly full: releases (settle, expiry)
 * must always find room, and they need no more than the reserves that preceded them. A
 * replica looks at the outbox only: its depth is replicated state, the map's fill is not. */
static int check_room(ledger_saga_t *s, MDB_txn *txn, char *why)
{
    uint64_t used = 0, map = 0, depth = 0;
    if (!s->replica && ledger_store_nearly_full(s->store, &used, &map))
        return refuse(why, QC_EFULL,
                      "ledger map %llu of %llu bytes used, over 90%%, and it may not grow "
                      "further (map_max_mb)",
                      (unsigned long long)used, (unsigned long long)map);
    int rc = ledger_store_outbox_depth(s->store, txn, &depth);
    if (rc != 0)
        return rc;
    if (depth >= LEDGER_OUTBOX_MAX)
        return refuse(why, QC_EFULL, "audit outbox full (%llu events not relayed)",
                      (unsigned long long)depth);
    return 0;
}

/* ------------------------------------------------------------ money */

/* Moves amount from debit to credit as one transfer of kind under txn_id. A customer
 * debit below zero is QC_EFUNDS unless may_overdraw (late confirmation), in which case
 * the account is flagged overdrawn. */
static int saga_move(ledger_saga_t *s, MDB_txn *txn, uint64_t now, Qcledger__TransferKind kind,
                     const uint8_t *txn_id, const char *debit, const char *credit, int64_t amount,
                     uint32_t currency, bool may_overdraw, char *why)
{
    assert(amount > 0);
    assert(strcmp(debit, credit) != 0);
    ledger_account_t d, c;
    int rc = ledger_store_account_get(s->store, txn, debit, &d);
    if (rc == 0)
        rc = ledger_store_account_get(s->store, txn, credit, &c);
    if (rc == QC_ENOTFOUND)
        return refuse(why, QC_EUNKNOWNACCT, "account of a %s transfer missing",
                      ledger_transfer_kind_name(kind));
    if (rc != 0)
        return rc;
    if (d.currency != currency || c.currency != currency)
        return refuse(why, QC_ECURRENCY, "transfer in %u between accounts in %u and %u", currency,
                      d.currency, c.currency);
    bool customer = d.kind == QCLEDGER__ACCOUNT_KIND__KIND_CUSTOMER;
    if (customer && !may_overdraw && d.balance < amount)
        return refuse(why, QC_EFUNDS, "balance %lld below %lld", (long long)d.balance,
                      (long long)amount);
    if (__builtin_sub_overflow(d.balance, amount, &d.balance) ||
        __builtin_add_overflow(c.balance, amount, &c.balance))
        return refuse(why, QC_EAMOUNT, "balance would overflow");
    if (customer && d.balance < 0)
        d.overdrawn = true;
    /* HOLD holds exactly the RESERVED loads, so it can never go below zero. */
    assert(d.kind != QCLEDGER__ACCOUNT_KIND__KIND_HOLD || d.balance >= 0);
    ledger_transfer_t t = {.kind = kind, .amount = amount, .currency = currency, .time_ms = now};
    memcpy(t.txn_id, txn_id, LEDGER_TXN_ID_SIZE);
    snprintf(t.debit, sizeof t.debit, "%s", debit);
    snprintf(t.credit, sizeof t.credit, "%s", credit);
    if ((rc = ledger_store_account_put(s->store, txn, &d)) != 0 ||
        (rc = ledger_store_account_put(s->store, txn, &c)) != 0)
        return rc;
    rc = ledger_store_transfer_add(s->store, txn, &t);
    if (rc == QC_EEXIST)
        return refuse(why, QC_EREPLAY, "txn already has a %s transfer",
                      ledger_transfer_kind_name(kind));
    return rc;
}

static int load_move(ledger_saga_t *s, MDB_txn *txn, uint64_t now, const ledger_load_t *l,
                     Qcledger__TransferKind kind, Qcledger__AccountKind from,
                     Qcledger__AccountKind to, char *why)
{
    char from_id[LEDGER_ID_MAX + 1], to_id[LEDGER_ID_MAX + 1];
    if (from == QCLEDGER__ACCOUNT_KIND__KIND_CUSTOMER)
        snprintf(from_id, sizeof from_id, "%s", l->account_id);
    else
        ledger_system_account_id(from, l->currency, from_id);
    if (to == QCLEDGER__ACCOUNT_KIND__KIND_CUSTOMER)
        snprintf(to_id, sizeof to_id, "%s", l->account_id);
    else
        ledger_system_account_id(to, l->currency, to_id);
    bool overdraw = kind == QCLEDGER__TRANSFER_KIND__TRANSFER_LATE_CONFIRM;
    return saga_move(s, txn, now, kind, l->txn_id, from_id, to_id, l->amount, l->currency, overdraw,
                     why);
}

/* ------------------------------------------------------------ transitions */

static void set_report(ledger_load_t *l, const uint8_t *report, size_t report_len)
{
    if (report == NULL)
        return;
    assert(report_len <= sizeof l->report);
    memcpy(l->report, report, report_len);
    l->report_len = report_len;
}

/* The device learns that l was applied (counter + 1) or settled: its counter grows and
 * its reserved slot is freed if it held l. */
static int device_after(ledger_saga_t *s, MDB_txn *txn, const ledger_load_t *l, bool applied)
{
    ledger_device_t *d = malloc(sizeof *d);
    if (d == NULL)
        return QC_ENOMEM;
    int rc = ledger_store_device_get(s->store, txn, l->device_id, d);
    if (rc == 0) {
        if (applied && d->counter < l->counter + 1)
            d->counter = l->counter + 1;
        if (d->has_reserved && memcmp(d->reserved_txn, l->txn_id, LEDGER_TXN_ID_SIZE) == 0)
            d->has_reserved = false;
        rc = ledger_store_device_put(s->store, txn, d);
    }
    free(d);
    return rc == QC_ENOTFOUND ? QC_EINTERNAL : rc;
}

/* RESERVED -> CONFIRMED: HOLD -> FLOAT. */
static int saga_confirm(ledger_saga_t *s, MDB_txn *txn, uint64_t now, ledger_load_t *l,
                        const char *reason, const uint8_t *report, size_t report_len, char *why)
{
    assert(l->state == QUANCUN__LOAD_STATE__LOAD_RESERVED);
    int rc = load_move(s, txn, now, l, QCLEDGER__TRANSFER_KIND__TRANSFER_CONFIRM,
                       QCLEDGER__ACCOUNT_KIND__KIND_HOLD, QCLEDGER__ACCOUNT_KIND__KIND_FLOAT, why);
    if (rc == 0)
        rc = ledger_store_deadline_del(s->store, txn, l->deadline_ms, l->txn_id);
    if (rc != 0)
        return rc;
    l->state = QUANCUN__LOAD_STATE__LOAD_CONFIRMED;
    snprintf(l->reason, sizeof l->reason, "%s", reason);
    set_report(l, report, report_len);
    l->updated_ms = now;
    if ((rc = ledger_store_load_put(s->store, txn, l)) != 0 ||
        (rc = device_after(s, txn, l, true)) != 0)
        return rc;
    return emit_load(s, txn, now, "load.confirmed", l);
}

/* RESERVED -> COMPENSATED: HOLD -> account; the day's total forgets the amount. */
static int saga_compensate(ledger_saga_t *s, MDB_txn *txn, uint64_t now, ledger_load_t *l,
                           const char *reason, const uint8_t *report, size_t report_len, char *why)
{
    assert(l->state == QUANCUN__LOAD_STATE__LOAD_RESERVED);
    int rc =
        load_move(s, txn, now, l, QCLEDGER__TRANSFER_KIND__TRANSFER_COMPENSATE,
                  QCLEDGER__ACCOUNT_KIND__KIND_HOLD, QCLEDGER__ACCOUNT_KIND__KIND_CUSTOMER, why);
    if (rc == 0)
        rc = ledger_store_deadline_del(s->store, txn, l->deadline_ms, l->txn_id);
    if (rc != 0)
        return rc;
    ledger_account_t a;
    if ((rc = ledger_store_account_get(s->store, txn, l->account_id, &a)) != 0)
        return rc;
    if (a.day == l->created_ms / LEDGER_DAY_MS) {
        a.day_total = a.day_total > l->amount ? a.day_total - l->amount : 0;
        if ((rc = ledger_store_account_put(s->store, txn, &a)) != 0)
            return rc;
    }
    l->state = QUANCUN__LOAD_STATE__LOAD_COMPENSATED;
    snprintf(l->reason, sizeof l->reason, "%s", reason);
    set_report(l, report, report_len);
    l->updated_ms = now;
    if ((rc = ledger_store_load_put(s->store, txn, l)) != 0 ||
        (rc = device_after(s, txn, l, false)) != 0)
        return rc;
    return emit_load(s, txn, now, "load.compensated", l);
}

/* COMPENSATED -> LATE_CONFIRMED: account -> FLOAT, which may overdraw the account. */
static int saga_late_confirm(ledger_saga_t *s, MDB_txn *txn, uint64_t now, ledger_load_t *l,
                             const char *reason, const uint8_t *report, size_t report_len,
                             char *why)
{
    assert(l->state == QUANCUN__LOAD_STATE__LOAD_COMPENSATED);
    int rc =
        load_move(s, txn, now, l, QCLEDGER__TRANSFER_KIND__TRANSFER_LATE_CONFIRM,
                  QCLEDGER__ACCOUNT_KIND__KIND_CUSTOMER, QCLEDGER__ACCOUNT_KIND__KIND_FLOAT, why);
    if (rc != 0)
        return rc;
    ledger_account_t a;
    if ((rc = ledger_store_account_get(s->store, txn, l->account_id, &a)) != 0)
        return rc;
    l->state = QUANCUN__LOAD_STATE__LOAD_LATE_CONFIRMED;
    l->flagged = a.balance < 0;
    snprintf(l->reason, sizeof l->reason, "%s", reason);
    set_report(l, report, report_len);
    l->updated_ms = now;
    if ((rc = ledger_store_load_put(s->store, txn, l)) != 0 ||
        (rc = device_after(s, txn, l, true)) != 0)
        return rc;
    if (l->flagged) {
        char txt[2 * LEDGER_TXN_ID_SIZE + 1];
        ops_log(OPS_LOG_WARN, "ledger.overdrawn", "account", l->account_id, "txn_id",
                ops_hex(l->txn_id, LEDGER_TXN_ID_SIZE, txt), NULL);
    }
    return emit_load(s, txn, now, "load.late_confirmed", l);
}

/* ------------------------------------------------------------ reserve */

/* Settles the device's previous load from the counter of its new request (docs/DESIGN.md section 2,
 * reconciliation), then checks the counter against the device's. */
static int reconcile(ledger_saga_t *s, MDB_txn *txn, uint64_t now, ledger_device_t *dev,
                     uint64_t counter, char *why)
{
    ledger_load_t *p = s->prev;
    int rc;
    if (dev->has_reserved) {
        if ((rc = ledger_store_load_get(s->store, txn, dev->reserved_txn, p)) != 0)
            return rc == QC_ENOTFOUND ? QC_EINTERNAL : rc;
        assert(p->state == QUANCUN__LOAD_STATE__LOAD_RESERVED);
        if (counter == p->counter + 1)
            rc = saga_confirm(s, txn, now, p, SAGA_REASON_COUNTER_APPLIED, NULL, 0, why);
        else if (counter == p->counter)
            rc = saga_compensate(s, txn, now, p, SAGA_REASON_COUNTER_NOT_APPLIED, NULL, 0, why);
        else if (counter < p->counter)
            return refuse(why, QC_ESTALE, "counter %llu below the pending load's %llu",
                          (unsigned long long)counter, (unsigned long long)p->counter);
        else
            return refuse(why, QC_EMISMATCH, "counter %llu jumps past the pending load's %llu",
                          (unsigned long long)counter, (unsigned long long)p->counter);
    } else if (dev->has_last && counter == dev->counter + 1) {
        if ((rc = ledger_store_load_get(s->store, txn, dev->last_txn, p)) != 0)
            return rc == QC_ENOTFOUND ? QC_EINTERNAL : rc;
        if (p->state == QUANCUN__LOAD_STATE__LOAD_COMPENSATED && counter == p->counter + 1)
            rc = saga_late_confirm(s, txn, now, p, SAGA_REASON_COUNTER_APPLIED, NULL, 0, why);
    } else {
        rc = 0;
    }
    if (rc != 0)
        return rc;
    if ((rc = ledger_store_device_get(s->store, txn, dev->id, dev)) != 0)
        return rc;
    assert(!dev->has_reserved);
    if (counter < dev->counter)
        return refuse(why, QC_ESTALE, "counter %llu below the device's %llu",
                      (unsigned long long)counter, (unsigned long long)dev->counter);
    if (counter > dev->counter)
        return refuse(why, QC_EMISMATCH, "counter %llu ahead of the device's %llu",
                      (unsigned long long)counter, (unsigned long long)dev->counter);
    return 0;
}

/* Amount, daily, wallet and funds rules; updates the account's day total in *a. */
static int reserve_limits(const Quancun__LoadRequest *r, const ledger_device_t *dev,
                          ledger_account_t *a, uint64_t now, char *why)
{
    int64_t min = a->load_min > 0 ? a->load_min : 1;
    if (r->amount < min || (a->load_max > 0 && r->amount > a->load_max))
        return refuse(why, QC_ELIMIT, "amount %lld outside %lld..%lld", (long long)r->amount,
                      (long long)min, (long long)a->load_max);
    uint64_t day = now / LEDGER_DAY_MS;
    int64_t today = a->day == day ? a->day_total : 0;
    assert(today >= 0);
    /* A sum past INT64_MAX is over any daily limit; without one it only saturates the day's
     * count, and the refusal, if any, must name the true reason (funds, cap), not a limit
     * that does not exist (found by an independent device with a 2^63-1 amount). */
    int64_t total = 0;
    if (__builtin_add_overflow(today, r->amount, &total))
        total = INT64_MAX;
    if (a->daily_max > 0 && total > a->daily_max)
        return refuse(why, QC_ELIMIT, "daily limit %lld: %lld loaded today, %lld more asked",
                      (long long)a->daily_max, (long long)today, (long long)r->amount);
    int64_t wallet = 0;
    if (__builtin_add_overflow(r->balance_before, r->amount, &wallet))
        return refuse(why, QC_EWALLETCAP, "wallet %lld + %lld would overflow the wallet",
                      (long long)r->balance_before, (long long)r->amount);
    if (dev->wallet_cap > 0 && wallet > dev->wallet_cap)
        return refuse(why, QC_EWALLETCAP, "wallet %lld + %lld over its cap %lld",
                      (long long)r->balance_before, (long long)r->amount,
                      (long long)dev->wallet_cap);
    if (a->balance < r->amount)
        return refuse(why, QC_EFUNDS, "balance %lld below %lld", (long long)a->balance,
                      (long long)r->amount);
    a->day = day;
    a->day_total = total;
    return 0;
}

/* The new load itself, once its device's previous load is settled: limits, funds, the debit,
 * the record. Runs in its own nested txn (see saga_reserve_apply). The record holds no allow:
 * the bank signs one only after this debit is committed (ledger_saga_store_allow). */
static int reserve_new(ledger_saga_t *s, MDB_txn *txn, uint64_t now, const Quancun__LoadRequest *r,
                       uint64_t deadline_ms, ledger_device_t *dev, const uint8_t *req,
                       size_t req_len, ledger_load_t *out, char *why)
{
    assert(deadline_ms > now);
    assert(req_len <= sizeof out->request);
    ledger_account_t a;
    int rc;
    /* Reconciliation may have moved money back into the account: read it again. */
    if ((rc = ledger_store_account_get(s->store, txn, r->account_id, &a)) != 0 ||
        (rc = reserve_limits(r, dev, &a, now, why)) != 0 ||
        (rc = ledger_store_account_put(s->store, txn, &a)) != 0)
        return rc;

    memset(out, 0, offsetof(ledger_load_t, request));
    memcpy(out->txn_id, r->txn_id.data, LEDGER_TXN_ID_SIZE);
    out->state = QUANCUN__LOAD_STATE__LOAD_RESERVED;
    out->amount = r->amount;
    out->currency = r->currency;
    snprintf(out->device_id, sizeof out->device_id, "%s", dev->id);
    snprintf(out->account_id, sizeof out->account_id, "%s", a.id);
    out->counter = r->counter;
    out->deadline_ms = deadline_ms;
    memcpy(out->request, req, req_len);
    out->request_len = req_len;
    out->allow_len = 0;
    out->report_len = 0;
    out->created_ms = now;
    out->updated_ms = now;
    /* The memset above stops at the signed artefacts: out is the caller's scratch, and a
     * flag left there by a late-confirmed load read before must not mark this one. */
    out->flagged = false;
    if ((rc = load_move(s, txn, now, out, QCLEDGER__TRANSFER_KIND__TRANSFER_RESERVE,
                        QCLEDGER__ACCOUNT_KIND__KIND_CUSTOMER, QCLEDGER__ACCOUNT_KIND__KIND_HOLD,
                        why)) != 0 ||
        (rc = ledger_store_load_put(s->store, txn, out)) != 0 ||
        (rc = ledger_store_deadline_add(s->store, txn, out->deadline_ms, out->txn_id)) != 0)
        return rc;
    dev->has_reserved = true;
    memcpy(dev->reserved_txn, out->txn_id, LEDGER_TXN_ID_SIZE);
    dev->has_last = true;
    memcpy(dev->last_txn, out->txn_id, LEDGER_TXN_ID_SIZE);
    dev->counter = r->counter;
    if ((rc = ledger_store_device_put(s->store, txn, dev)) != 0)
        return rc;
    return emit_load(s, txn, now, "load.reserved", out);
}

/* (none) -> RESERVED, inside txn. The device's previous load is settled first from the
 * request's signed counter (reconcile); that settlement is proven whatever becomes of the new
 * load, so *keep is set once it is done and the caller commits txn even when the new load is
 * refused (its funds, its limits): otherwise a refused request would undo the proof and the
 * deadline would refund a load the device holds. */
static int saga_reserve_apply(ledger_saga_t *s, MDB_txn *txn, uint64_t now,
                              const Quancun__LoadRequest *r, uint64_t deadline_ms,
                              const uint8_t *req, size_t req_len, ledger_load_t *out, char *why,
                              bool *keep)
{
    *keep = false;
    if (req_len > sizeof out->request)
        return refuse(why, QC_ETOOBIG, "signed artefact larger than %d bytes", LEDGER_SIGNED_MAX);
    if (deadline_ms <= now)
        return refuse(why, QC_EEXPIRED, "deadline already passed");
    if (proto_shard_of(r->account_id, s->shard_count) != s->shard)
        return refuse(why, QC_ESHARD, "account %s is not on shard %u", r->account_id, s->shard);
    int rc = check_room(s, txn, why);
    if (rc != 0)
        return rc;
    ledger_device_t *dev = malloc(sizeof *dev);
    if (dev == NULL)
        return QC_ENOMEM;
    ledger_account_t a;
    rc = ledger_store_device_get(s->store, txn, r->device_id, dev);
    if (rc == QC_ENOTFOUND) {
        rc = refuse(why, QC_EUNKNOWNDEV, "device %s is not enrolled", r->device_id);
        goto out;
    }
    if (rc != 0)
        goto out;
    if (dev->status != QCLEDGER__DEVICE_STATUS__DEVICE_ACTIVE) {
        rc = refuse(why, QC_EREVOKED, "device %s is revoked", dev->id);
        goto out;
    }
    if (strcmp(dev->account_id, r->account_id) != 0) {
        rc = refuse(why, QC_ENOTBOUND, "device %s is bound to another account", dev->id);
        goto out;
    }
    rc = ledger_store_account_get(s->store, txn, r->account_id, &a);
    if (rc == QC_ENOTFOUND) {
        rc = refuse(why, QC_EUNKNOWNACCT, "account %s unknown", r->account_id);
        goto out;
    }
    if (rc != 0)
        goto out;
    if (a.currency != r->currency) {
        rc =
            refuse(why, QC_ECURRENCY, "account %s is in %u, not %u", a.id, a.currency, r->currency);
        goto out;
    }
    if (a.status != QCLEDGER__ACCOUNT_STATUS__ACCOUNT_OPEN) {
        rc = refuse(why, QC_EFROZEN, "account %s is frozen", a.id);
        goto out;
    }
    if ((rc = reconcile(s, txn, now, dev, r->counter, why)) != 0)
        goto out;
    *keep = true;
    MDB_txn *child = NULL;
    if ((rc = saga_begin(s, txn, &child)) != 0)
        goto out;
    rc = reserve_new(s, child, now, r, deadline_ms, dev, req, req_len, out, why);
    rc = saga_finish(child, rc, false);
out:
    free(dev);
    return rc;
}

/* A known txn id: the stored record when the request is the stored one. */
static int reserve_known(ledger_saga_t *s, MDB_txn *txn, const uint8_t *txn_id, const uint8_t *req,
                         size_t req_len, ledger_load_t *out, char *why, bool *known)
{
    *known = false;
    int rc = ledger_store_load_get(s->store, txn, txn_id, out);
    if (rc == QC_ENOTFOUND)
        return 0;
    if (rc != 0)
        return rc;
    *known = true;
    if (out->request_len != req_len || memcmp(out->request, req, req_len) != 0)
        return refuse(why, QC_EREPLAY, "txn id already used by another request");
    return 0;
}

int ledger_saga_reserve_trusted(ledger_saga_t *s, MDB_txn *parent, uint64_t now,
                                uint64_t deadline_ms, const Quancun__LoadRequest *r,
                                const uint8_t *req, size_t req_len, ledger_load_t *out, char *why)
{
    assert(s != NULL);
    assert(r != NULL);
    assert(out != NULL);
    assert(r->txn_id.len == LEDGER_TXN_ID_SIZE);
    MDB_txn *txn = NULL;
    int rc = saga_begin(s, parent, &txn);
    if (rc != 0)
        return rc;
    bool known = false, keep = false;
    rc = reserve_known(s, txn, r->txn_id.data, req, req_len, out, why, &known);
    if (rc == 0 && !known)
        rc = saga_reserve_apply(s, txn, now, r, deadline_ms, req, req_len, out, why, &keep);
    return saga_finish(txn, rc, keep);
}

/* The public key of a device from its enrolled certificate, prepared for verifying and
 * borrowed from the cache. */
static int device_key(ledger_saga_t *s, const ledger_device_t *d, proto_verifier_t **key)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const char *c = d->id; *c != '\0'; c++)
        h = (h ^ (uint8_t)*c) * 16777619u;
    saga_key_slot_t *slot = &s->keys[h % SAGA_KEY_CACHE_SLOTS];
    if (slot->key != NULL && strcmp(slot->id, d->id) == 0 &&
        memcmp(slot->fp, d->cert_fp, sizeof slot->fp) == 0) {
        *key = slot->key;
        return 0;
    }
    const unsigned char *p = d->cert;
    X509 *x = d2i_X509(NULL, &p, (long)d->cert_len);
    if (x == NULL)
        return QC_ECERT;
    EVP_PKEY *pub = X509_get_pubkey(x);
    X509_free(x);
    if (pub == NULL)
        return QC_ECERT;
    proto_verifier_t *k = NULL;
    int rc = proto_verifier_new(pub, &k);
    EVP_PKEY_free(pub);
    if (rc != 0)
        return rc;
    proto_verifier_destroy(&slot->key);
    slot->key = k;
    snprintf(slot->id, sizeof slot->id, "%s", d->id);
    memcpy(slot->fp, d->cert_fp, sizeof slot->fp);
    *key = k;
    return 0;
}

/* Verifies env as type signed by device id's enrolled key. */
static int verify_by_device(ledger_saga_t *s, MDB_txn *txn, const char *device_id,
                            const proto_envelope_t *env, proto_type_t type, char *why)
{
    ledger_device_t *d = malloc(sizeof *d);
    if (d == NULL)
        return QC_ENOMEM;
    proto_verifier_t *key = NULL;
    int rc = ledger_store_device_get(s->store, txn, device_id, d);
    if (rc == QC_ENOTFOUND)
        rc = refuse(why, QC_EUNKNOWNDEV, "device %s is not enrolled", device_id);
    else if (rc == 0 && (rc = device_key(s, d, &key)) == 0)
        rc = proto_envelope_verify_prepared(env, type, key);
    if (rc == QC_EKEYID || rc == QC_EBADSIG)
        refuse(why, rc, "%s not signed by device %s's key", proto_type_context(type), device_id);
    free(d);
    return rc;
}

static int reserve_verified(ledger_saga_t *s, MDB_txn *txn, uint64_t now, uint64_t deadline_ms,
                            const uint8_t *req, size_t req_len, ledger_load_t *out, char *why,
                            bool *keep)
{
    proto_envelope_t *renv = NULL;
    Quancun__LoadRequest *r = NULL;
    size_t rbody_len = 0;
    bool known = false;
    int rc;
    if (req_len > LEDGER_SIGNED_MAX)
        return refuse(why, QC_ETOOBIG, "signed artefact larger than %d bytes", LEDGER_SIGNED_MAX);
    if ((rc = proto_envelope_open(req, req_len, &renv)) != 0) {
        refuse(why, rc, "request envelope: %s", qc_strerror(rc));
        goto out;
    }
    const uint8_t *rbody = proto_envelope_body(renv, &rbody_len);
    if ((rc = proto_decode_load_request(rbody, rbody_len, &r)) != 0) {
        refuse(why, rc, "request body: %s", qc_strerror(rc));
        goto out;
    }
    /* A retry carries the very bytes already verified and stored: answer it before any
     * crypto, with the stored record (and its allow, once one is stored). */
    if ((rc = reserve_known(s, txn, r->txn_id.data, req, req_len, out, why, &known)) != 0 || known)
        goto out;
    if (proto_shard_of(r->account_id, s->shard_count) != s->shard) {
        rc = refuse(why, QC_ESHARD, "account %s is not on shard %u", r->account_id, s->shard);
        goto out;
    }
    if ((rc = verify_by_device(s, txn, r->device_id, renv, PROTO_TYPE_LOAD_REQUEST, why)) != 0)
        goto out;
    rc = saga_reserve_apply(s, txn, now, r, deadline_ms, req, req_len, out, why, keep);
out:
    if (r != NULL)
        quancun__load_request__free_unpacked(r, NULL);
    proto_envelope_destroy(&renv);
    return rc;
}

int ledger_saga_reserve(ledger_saga_t *s, MDB_txn *parent, uint64_t now, uint64_t deadline_ms,
                        const uint8_t *req, size_t req_len, ledger_load_t *out, char *why)
{
    assert(s != NULL);
    assert(out != NULL);
    assert(req != NULL || req_len == 0);
    MDB_txn *txn = NULL;
    int rc = saga_begin(s, parent, &txn);
    if (rc != 0)
        return rc;
    bool keep = false;
    rc = reserve_verified(s, txn, now, deadline_ms, req, req_len, out, why, &keep);
    return saga_finish(txn, rc, keep);
}

/* ------------------------------------------------------------ the bank's signed answers */

int ledger_saga_allow_body(const ledger_load_t *l, uint8_t **body, size_t *body_len)
{
    assert(l != NULL);
    assert(body != NULL);
    assert(body_len != NULL);
    assert(l->request_len > 0);
    proto_envelope_t *renv = NULL;
    Quancun__LoadRequest *r = NULL;
    uint8_t digest[PROTO_DIGEST_SIZE];
    int rc = proto_envelope_open(l->request, l->request_len, &renv);
    if (rc != 0)
        return QC_EINTERNAL; /* we stored it after verifying it */
    size_t rbody_len = 0;
    const uint8_t *rbody = proto_envelope_body(renv, &rbody_len);
    if ((rc = proto_sha256(rbody, rbody_len, digest)) != 0)
        goto out;
    if (proto_decode_load_request(rbody, rbody_len, &r) != 0) {
        rc = QC_EINTERNAL;
        goto out;
    }
    Quancun__LoadAllow a = QUANCUN__LOAD_ALLOW__INIT;
    a.txn_id.data = (uint8_t *)l->txn_id;
    a.txn_id.len = LEDGER_TXN_ID_SIZE;
    a.device_id = (char *)l->device_id;
    a.account_id = (char *)l->account_id;
    a.amount = l->amount;
    a.currency = l->currency;
    a.counter = l->counter;
    a.request_digest.data = digest;
    a.request_digest.len = sizeof digest;
    a.host_time_ms = l->created_ms;
    a.deadline_ms = l->deadline_ms;
    /* The record was made from this request: the allow says what it says (proto_load.h), or
     * the record is corrupt. */
    assert(proto_allow_matches_request(&a, r, digest, NULL) == 0);
    assert(a.deadline_ms > a.host_time_ms);
    rc = proto_pack(&a.base, body, body_len);
out:
    if (r != NULL)
        quancun__load_request__free_unpacked(r, NULL);
    proto_envelope_destroy(&renv);
    return rc;
}

int ledger_saga_outcome_body(const ledger_load_t *l, uint64_t now_ms, uint8_t **body,
                             size_t *body_len)
{
    assert(l != NULL);
    assert(body != NULL);
    assert(body_len != NULL);
    assert(l->state != QUANCUN__LOAD_STATE__LOAD_NONE);
    Quancun__LoadOutcome o = QUANCUN__LOAD_OUTCOME__INIT;
    o.txn_id.data = (uint8_t *)l->txn_id;
    o.txn_id.len = LEDGER_TXN_ID_SIZE;
    o.device_id = (char *)l->device_id;
    o.state = l->state;
    o.amount = l->amount;
    o.currency = l->currency;
    o.reason = (char *)l->reason;
    o.host_time_ms = now_ms;
    return proto_pack(&o.base, body, body_len);
}

/* The signer's answer must be the allow of this very record, under the bank's allow key. */
static int allow_is_ours(ledger_saga_t *s, const ledger_load_t *l, const uint8_t *allow,
                         size_t allow_len, char *why)
{
    proto_envelope_t *env = NULL;
    uint8_t *want = NULL;
    size_t want_len = 0;
    int rc = proto_envelope_open(allow, allow_len, &env);
    if (rc != 0) {
        refuse(why, rc, "allow envelope: %s", qc_strerror(rc));
        goto out;
    }
    if (CRYPTO_memcmp(proto_envelope_key_id(env), s->allow_key_id, PROTO_KEY_ID_SIZE) != 0) {
        rc = refuse(why, QC_EKEYID, "allow not under the bank's allow key");
        goto out;
    }
    if ((rc = ledger_saga_allow_body(l, &want, &want_len)) != 0)
        goto out;
    size_t body_len = 0;
    const uint8_t *body = proto_envelope_body(env, &body_len);
    if (body_len != want_len || CRYPTO_memcmp(body, want, want_len) != 0)
        rc = refuse(why, QC_EMISMATCH, "allow body is not the one the ledger asked for");
out:
    free(want);
    proto_envelope_destroy(&env);
    return rc;
}

static int store_allow_txn(ledger_saga_t *s, MDB_txn *txn, uint64_t now, const uint8_t *txn_id,
                           const uint8_t *allow, size_t allow_len, ledger_load_t *out, char *why)
{
    int rc = ledger_store_load_get(s->store, txn, txn_id, out);
    if (rc == QC_ENOTFOUND)
        return refuse(why, rc, "no load with this txn id");
    if (rc != 0)
        return rc;
    if (out->allow_len > 0)
        return 0; /* one allow per load, ever: the first one stored is the one released */
    if (out->state != QUANCUN__LOAD_STATE__LOAD_RESERVED)
        return refuse(why, QC_ESTATE, "load is %s: no allow is released for it",
                      proto_load_state_name(out->state));
    if (out->deadline_ms <= now) /* its compensation is due: the money is on its way back */
        return refuse(why, QC_EEXPIRED, "the load's deadline passed: no allow is released");
    if (allow_len > sizeof out->allow)
        return refuse(why, QC_ETOOBIG, "allow larger than %d bytes", LEDGER_SIGNED_MAX);
    if ((rc = allow_is_ours(s, out, allow, allow_len, why)) != 0)
        return rc;
    memcpy(out->allow, allow, allow_len);
    out->allow_len = allow_len;
    out->updated_ms = now;
    if ((rc = ledger_store_load_put(s->store, txn, out)) != 0)
        return rc;
    return emit_load(s, txn, now, "load.allowed", out);
}

int ledger_saga_store_allow(ledger_saga_t *s, MDB_txn *parent, uint64_t now,
                            const uint8_t txn_id[LEDGER_TXN_ID_SIZE], const uint8_t *allow,
                            size_t allow_len, ledger_load_t *out, char *why)
{
    assert(s != NULL);
    assert(txn_id != NULL);
    assert(out != NULL);
    assert(allow != NULL || allow_len == 0);
    MDB_txn *txn = NULL;
    int rc = saga_begin(s, parent, &txn);
    if (rc != 0)
        return rc;
    rc = store_allow_txn(s, txn, now, txn_id, allow, allow_len, out, why);
    return saga_finish(txn, rc, false);
}

/* ------------------------------------------------------------ settle */

/* SHA-256 of the stored allow's body, or QC_EMISSING when the load has none. */
static int allow_digest(const ledger_load_t *l, uint8_t digest[PROTO_DIGEST_SIZE])
{
    if (l->allow_len == 0)
        return QC_EMISSING;
    proto_envelope_t *aenv = NULL;
    if (proto_envelope_open(l->allow, l->allow_len, &aenv) != 0)
        return QC_EINTERNAL; /* we stored it after checking it */
    size_t abody_len = 0;
    const uint8_t *abody = proto_envelope_body(aenv, &abody_len);
    int rc = proto_sha256(abody, abody_len, digest);
    proto_envelope_destroy(&aenv);
    return rc;
}

static int settle_apply(ledger_saga_t *s, MDB_txn *txn, uint64_t now, ledger_load_t *l,
                        const Quancun__ExecutionReport *rep, const uint8_t *report,
                        size_t report_len, char *why)
{
    if (rep->txn_id.len != LEDGER_TXN_ID_SIZE ||
        memcmp(rep->txn_id.data, l->txn_id, LEDGER_TXN_ID_SIZE) != 0)
        return refuse(why, QC_EMISMATCH, "report is about another txn");
    if (strcmp(rep->device_id, l->device_id) != 0)
        return refuse(why, QC_EMISMATCH, "report is from another device");
    if (report_len > sizeof l->report)
        return refuse(why, QC_ETOOBIG, "report larger than %d bytes", LEDGER_SIGNED_MAX);
    /* No allow stored means none was ever released: no report can name it. */
    uint8_t digest[PROTO_DIGEST_SIZE];
    int rc = allow_digest(l, digest);
    if (rc != 0 && rc != QC_EMISSING)
        return rc;
    bool matching = rc == 0 && strcmp(rep->account_id, l->account_id) == 0 &&
                    rep->allow_digest.len == sizeof digest &&
                    CRYPTO_memcmp(rep->allow_digest.data, digest, sizeof digest) == 0 &&
                    rep->counter_after == l->counter + 1;
    bool applied = rep->status == QUANCUN__REPORT_STATUS__REPORT_APPLIED && matching;
    char reason[LEDGER_REASON_MAX + 1];
    if (rep->status == QUANCUN__REPORT_STATUS__REPORT_REJECTED)
        snprintf(reason, sizeof reason, "%s: %.*s", SAGA_REASON_REJECTED, PROTO_REASON_MAX,
                 rep->reason != NULL ? rep->reason : "");
    else
        snprintf(reason, sizeof reason, "%s", applied ? SAGA_REASON_APPLIED : SAGA_REASON_MISMATCH);
    switch (l->state) {
    case QUANCUN__LOAD_STATE__LOAD_RESERVED:
        if (applied)
            return saga_confirm(s, txn, now, l, reason, report, report_len, why);
        return saga_compensate(s, txn, now, l, reason, report, report_len, why);
    case QUANCUN__LOAD_STATE__LOAD_COMPENSATED:
        if (applied)
            return saga_late_confirm(s, txn, now, l, reason, report, report_len, why);
        return 0;
    case QUANCUN__LOAD_STATE__LOAD_CONFIRMED:
    case QUANCUN__LOAD_STATE__LOAD_LATE_CONFIRMED:
        return 0; /* final: the record tells the outcome */
    default:
        assert(!"load in no state");
        return QC_EINTERNAL;
    }
}

int ledger_saga_settle_trusted(ledger_saga_t *s, MDB_txn *parent, uint64_t now,
                               const uint8_t txn_id[LEDGER_TXN_ID_SIZE],
                               const Quancun__ExecutionReport *rep, const uint8_t *report,
                               size_t report_len, ledger_load_t *out, char *why)
{
    assert(s != NULL);
    assert(txn_id != NULL);
    assert(rep != NULL);
    assert(out != NULL);
    MDB_txn *txn = NULL;
    int rc = saga_begin(s, parent, &txn);
    if (rc != 0)
        return rc;
    rc = ledger_store_load_get(s->store, txn, txn_id, out);
    if (rc == QC_ENOTFOUND)
        refuse(why, rc, "no load with this txn id");
    if (rc == 0)
        rc = settle_apply(s, txn, now, out, rep, report, report_len, why);
    return saga_finish(txn, rc, false);
}

int ledger_saga_settle(ledger_saga_t *s, MDB_txn *parent, uint64_t now,
                       const uint8_t txn_id[LEDGER_TXN_ID_SIZE], const uint8_t *report,
                       size_t report_len, ledger_load_t *out, char *why)
{
    assert(s != NULL);
    assert(txn_id != NULL);
    assert(out != NULL);
    MDB_txn *txn = NULL;
    proto_envelope_t *env = NULL;
    Quancun__ExecutionReport *rep = NULL;
    bool keep = false;
    int rc = saga_begin(s, parent, &txn);
    if (rc != 0)
        return rc;
    if (report_len > LEDGER_SIGNED_MAX) {
        rc = refuse(why, QC_ETOOBIG, "report larger than %d bytes", LEDGER_SIGNED_MAX);
        goto out;
    }
    rc = ledger_store_load_get(s->store, txn, txn_id, out);
    if (rc == QC_ENOTFOUND)
        refuse(why, rc, "no load with this txn id");
    if (rc != 0)
        goto out;
    if ((rc = proto_envelope_open(report, report_len, &env)) != 0) {
        refuse(why, rc, "report envelope: %s", qc_strerror(rc));
        goto out;
    }
    rc = verify_by_device(s, txn, out->device_id, env, PROTO_TYPE_EXECUTION_REPORT, why);
    if (rc == QC_EKEYID || rc == QC_EBADSIG) {
        /* Not the device speaking: evidence for audit, and the saga waits for its deadline. */
        char hex[2 * LEDGER_TXN_ID_SIZE + 1];
        ops_log_limited(OPS_LOG_WARN, "ledger.bad_report_signature", out->device_id, "txn_id",
                        ops_hex(txn_id, LEDGER_TXN_ID_SIZE, hex), "device", out->device_id, NULL);
        rc = ledger_store_outbox_append(s->store, txn, s->shard, "security.bad_report_signature",
                                        txn_id, now, report, report_len, NULL);
        keep = rc == 0;
        if (rc == 0)
            rc = refuse(why, QC_EBADSIG, "report not signed by device %s", out->device_id);
        goto out;
    }
    if (rc != 0)
        goto out;
    size_t body_len = 0;
    const uint8_t *body = proto_envelope_body(env, &body_len);
    if ((rc = proto_decode_execution_report(body, body_len, &rep)) != 0) {
        refuse(why, rc, "report body: %s", qc_strerror(rc));
        goto out;
    }
    rc = settle_apply(s, txn, now, out, rep, report, report_len, why);
out:
    if (rep != NULL)
        quancun__execution_report__free_unpacked(rep, NULL);
    proto_envelope_destroy(&env);
    rc = saga_finish(txn, rc, keep);
    /* On refusal (even a kept one) *out must show the record as it stands. */
    return rc;
}

/* ------------------------------------------------------------ deadlines */

int ledger_saga_expire(ledger_saga_t *s, MDB_txn *parent, uint64_t now, size_t max, size_t *count,
                       uint64_t *next_deadline_ms)
{
    assert(s != NULL);
    size_t done = 0;
    uint64_t next = 0;
    MDB_txn *txn = NULL;
    int rc = saga_begin(s, parent, &txn);
    if (rc != 0)
        return rc;
    ledger_load_t *l = s->prev;
    while (true) {
        uint64_t deadline = 0;
        uint8_t txn_id[LEDGER_TXN_ID_SIZE];
        rc = ledger_store_deadline_first(s->store, txn, &deadline, txn_id);
        if (rc == QC_ENOTFOUND) {
            rc = 0;
            break;
        }
        if (rc != 0)
            break;
        if (deadline > now || done >= max) {
            next = deadline;
            break;
        }
        if ((rc = ledger_store_load_get(s->store, txn, txn_id, l)) != 0)
            break;
        assert(l->state == QUANCUN__LOAD_STATE__LOAD_RESERVED);
        assert(l->deadline_ms == deadline);
        if ((rc = saga_compensate(s, txn, now, l, SAGA_REASON_MISSING, NULL, 0, NULL)) != 0)
            break;
        done++;
    }
    rc = saga_finish(txn, rc, false);
    if (count != NULL)
        *count = rc == 0 ? done : 0;
    if (next_deadline_ms != NULL)
        *next_deadline_ms = next;
    return rc;
}

/* ------------------------------------------------------------ admin */

/* An account id follows the one id rule (proto_id.h) and has no ':', which only the system
 * accounts carry ("HOLD:156"), so no customer account can take a system account's name. */
static bool valid_account_id(const char *id)
{
    return proto_id_check(id, LEDGER_ID_MAX, PROTO_ID_VISIBLE) == 0 && strchr(id, ':') == NULL;
}

static int ensure_system_accounts(ledger_saga_t *s, MDB_txn *txn, uint64_t now, uint32_t currency)
{
    static const Qcledger__AccountKind kinds[] = {QCLEDGER__ACCOUNT_KIND__KIND_HOLD,
                                                  QCLEDGER__ACCOUNT_KIND__KIND_FLOAT,
                                                  QCLEDGER__ACCOUNT_KIND__KIND_FUNDING};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        ledger_account_t a = {0};
        ledger_system_account_id(kinds[i], currency, a.id);
        int rc = ledger_store_account_get(s->store, txn, a.id, &a);
        if (rc == 0)
            continue;
        if (rc != QC_ENOTFOUND)
            return rc;
        a.currency = currency;
        a.kind = kinds[i];
        a.status = QCLEDGER__ACCOUNT_STATUS__ACCOUNT_OPEN;
        a.created_ms = now;
        if ((rc = ledger_store_account_put(s->store, txn, &a)) != 0)
            return rc;
    }
    return 0;
}

static int open_account_txn(ledger_saga_t *s, MDB_txn *txn, uint64_t now,
                            const ledger_account_t *spec, ledger_account_t *out, char *why)
{
    if (!valid_account_id(spec->id))
        return refuse(why, QC_EINVAL, "account id must be 1..%d printable characters without ':'",
                      LEDGER_ID_MAX);
    if (spec->currency == 0 || spec->currency > PROTO_CURRENCY_MAX)
        return refuse(why, QC_ECURRENCY, "currency %u is not an ISO 4217 numeric code",
                      spec->currency);
    if (spec->load_min < 0 || spec->load_max < 0 || spec->daily_max < 0 ||
        (spec->load_max > 0 && spec->load_min > spec->load_max))
        return refuse(why, QC_ELIMIT, "limits must be >= 0 and load_min <= load_max");
    if (proto_shard_of(spec->id, s->shard_count) != s->shard)
        return refuse(why, QC_ESHARD, "account %s is not on shard %u", spec->id, s->shard);
    int rc = ledger_store_account_get(s->store, txn, spec->id, out);
    if (rc == 0) {
        if (out->currency != spec->currency || out->load_min != spec->load_min ||
            out->load_max != spec->load_max || out->daily_max != spec->daily_max)
            return refuse(why, QC_EEXIST, "account %s exists with other terms", spec->id);
        return 0;
    }
    if (rc != QC_ENOTFOUND)
        return rc;
    if ((rc = check_room(s, txn, why)) != 0)
        return rc;
    memset(out, 0, sizeof *out);
    snprintf(out->id, sizeof out->id, "%s", spec->id);
    out->currency = spec->currency;
    out->status = QCLEDGER__ACCOUNT_STATUS__ACCOUNT_OPEN;
    out->kind = QCLEDGER__ACCOUNT_KIND__KIND_CUSTOMER;
    out->load_min = spec->load_min;
    out->load_max = spec->load_max;
    out->daily_max = spec->daily_max;
    out->created_ms = now;
    if ((rc = ensure_system_accounts(s, txn, now, spec->currency)) != 0 ||
        (rc = ledger_store_account_put(s->store, txn, out)) != 0)
        return rc;
    return emit_account(s, txn, now, "account.opened", NULL, out);
}

int ledger_saga_open_account(ledger_saga_t *s, MDB_txn *parent, uint64_t now,
                             const ledger_account_t *spec, ledger_account_t *out, char *why)
{
    assert(s != NULL);
    assert(spec != NULL);
    assert(out != NULL);
    MDB_txn *txn = NULL;
    int rc = saga_begin(s, parent, &txn);
    if (rc != 0)
        return rc;
    return saga_finish(txn, open_account_txn(s, txn, now, spec, out, why), false);
}

/* A customer account by id, or the refusal naming it. */
static int customer_get(ledger_saga_t *s, MDB_txn *txn, const char *id, ledger_account_t *out,
                        char *why)
{
    int rc = ledger_store_account_get(s->store, txn, id, out);
    if (rc == QC_ENOTFOUND || (rc == 0 && out->kind != QCLEDGER__ACCOUNT_KIND__KIND_CUSTOMER))
        return refuse(why, QC_EUNKNOWNACCT, "account %s unknown", id);
    return rc;
}

static int deposit_txn(ledger_saga_t *s, MDB_txn *txn, uint64_t now, const char *id, int64_t amount,
                       const uint8_t *txn_id, ledger_account_t *out, char *why)
{
    if (amount <= 0)
        return refuse(why, QC_EAMOUNT, "deposit amount must be > 0");
    int rc = customer_get(s, txn, id, out, why);
    if (rc != 0)
        return rc;
    ledger_transfer_t t;
    rc = ledger_store_transfer_get(s->store, txn, txn_id, QCLEDGER__TRANSFER_KIND__TRANSFER_DEPOSIT,
                                   &t);
    if (rc == 0) {
        if (strcmp(t.credit, id) != 0 || t.amount != amount)
            return refuse(why, QC_EREPLAY, "deposit txn id already used for another deposit");
        return 0;
    }
    if (rc != QC_ENOTFOUND)
        return rc;
    if (out->status != QCLEDGER__ACCOUNT_STATUS__ACCOUNT_OPEN)
        return refuse(why, QC_EFROZEN, "account %s is frozen", id);
    if ((rc = check_room(s, txn, why)) != 0)
        return rc;
    char funding[LEDGER_ID_MAX + 1];
    ledger_system_account_id(QCLEDGER__ACCOUNT_KIND__KIND_FUNDING, out->currency, funding);
    if ((rc = saga_move(s, txn, now, QCLEDGER__TRANSFER_KIND__TRANSFER_DEPOSIT, txn_id, funding, id,
                        amount, out->currency, false, why)) != 0 ||
        (rc = ledger_store_account_get(s->store, txn, id, out)) != 0)
        return rc;
    return emit_account(s, txn, now, "account.deposit", txn_id, out);
}

int ledger_saga_deposit(ledger_saga_t *s, MDB_txn *parent, uint64_t now, const char *account_id,
                        int64_t amount, const uint8_t txn_id[LEDGER_TXN_ID_SIZE],
                        ledger_account_t *out, char *why)
{
    assert(s != NULL);
    assert(account_id != NULL);
    assert(txn_id != NULL);
    assert(out != NULL);
    MDB_txn *txn = NULL;
    int rc = saga_begin(s, parent, &txn);
    if (rc != 0)
        return rc;
    return saga_finish(txn, deposit_txn(s, txn, now, account_id, amount, txn_id, out, why), false);
}

static int set_frozen_txn(ledger_saga_t *s, MDB_txn *txn, uint64_t now, const char *id, bool frozen,
                          ledger_account_t *out, char *why)
{
    int rc = customer_get(s, txn, id, out, why);
    if (rc != 0)
        return rc;
    Qcledger__AccountStatus want =
        frozen ? QCLEDGER__ACCOUNT_STATUS__ACCOUNT_FROZEN : QCLEDGER__ACCOUNT_STATUS__ACCOUNT_OPEN;
    if (out->status == want)
        return 0;
    out->status = want;
    if ((rc = ledger_store_account_put(s->store, txn, out)) != 0)
        return rc;
    return emit_account(s, txn, now, frozen ? "account.frozen" : "account.unfrozen", NULL, out);
}

int ledger_saga_set_frozen(ledger_saga_t *s, MDB_txn *parent, uint64_t now, const char *account_id,
                           bool frozen, ledger_account_t *out, char *why)
{
    assert(s != NULL);
    assert(account_id != NULL);
    assert(out != NULL);
    MDB_txn *txn = NULL;
    int rc = saga_begin(s, parent, &txn);
    if (rc != 0)
        return rc;
    return saga_finish(txn, set_frozen_txn(s, txn, now, account_id, frozen, out, why), false);
}

void ledger_saga_set_trust(ledger_saga_t *s, const proto_trust_t *trust)
{
    assert(s != NULL);
    s->trust = trust;
}

/* The device id (subject CN) and key of a certificate, checked against the trust store
 * when there is one. */
static int cert_identity(ledger_saga_t *s, uint64_t now, const uint8_t *cert, size_t len,
                         char id[PROTO_DEVICE_ID_MAX + 1], char *why)
{
    if (len == 0 || len > LEDGER_CERT_MAX)
        return refuse(why, QC_ECERT, "certificate missing or over %d bytes", LEDGER_CERT_MAX);
    if (s->trust != NULL) {
        int rc = proto_cert_verify(s->trust, cert, len, (time_t)(now / 1000), id, NULL);
        if (rc != 0)
            return refuse(why, rc, "device certificate: %s", qc_strerror(rc));
        return 0;
    }
    const unsigned char *p = cert;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    if (x == NULL || p != cert + len) {
        X509_free(x);
        return refuse(why, QC_ECERT, "device certificate is not DER X.509");
    }
    int n = X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, id,
                                      PROTO_DEVICE_ID_MAX + 1);
    EVP_PKEY *key = X509_get0_pubkey(x);
    bool ok = n > 0 &&
              proto_id_check_len(id, (size_t)n, PROTO_DEVICE_ID_MAX, PROTO_ID_VISIBLE) == 0 &&
              key != NULL && EVP_PKEY_get_id(key) == EVP_PKEY_EC;
    X509_free(x);
    if (!ok)
        return refuse(why, QC_ECERT, "device certificate needs a CN and an EC key");
    return 0;
}

static int enroll_txn(ledger_saga_t *s, MDB_txn *txn, uint64_t now, const char *account_id,
                      const uint8_t *cert, size_t cert_len, int64_t wallet_cap, uint64_t counter,
                      ledger_device_t *out, char *why)
{
    char id[PROTO_DEVICE_ID_MAX + 1];
    uint8_t fp[PROTO_DIGEST_SIZE];
    int rc = cert_identity(s, now, cert, cert_len, id, why);
    if (rc != 0)
        return rc;
    if (wallet_cap < 0)
        return refuse(why, QC_EINVAL, "wallet cap must be >= 0");
    if (proto_shard_of(account_id, s->shard_count) != s->shard)
        return refuse(why, QC_ESHARD, "account %s is not on shard %u", account_id, s->shard);
    ledger_account_t a;
    if ((rc = customer_get(s, txn, account_id, &a, why)) != 0)
        return rc;
    if ((rc = proto_cert_fingerprint(cert, cert_len, fp)) != 0)
        return rc;
    rc = ledger_store_device_get(s->store, txn, id, out);
    if (rc == 0) {
        if (strcmp(out->account_id, account_id) != 0 || memcmp(out->cert_fp, fp, sizeof fp) != 0)
            return refuse(why, QC_EEXIST, "device %s already enrolled otherwise", id);
        return 0;
    }
    if (rc != QC_ENOTFOUND)
        return rc;
    if ((rc = check_room(s, txn, why)) != 0)
        return rc;
    memset(out, 0, sizeof *out);
    snprintf(out->id, sizeof out->id, "%s", id);
    snprintf(out->account_id, sizeof out->account_id, "%s", account_id);
    memcpy(out->cert, cert, cert_len);
    out->cert_len = cert_len;
    memcpy(out->cert_fp, fp, sizeof fp);
    out->status = QCLEDGER__DEVICE_STATUS__DEVICE_ACTIVE;
    out->counter = counter;
    out->wallet_cap = wallet_cap;
    out->created_ms = now;
    if ((rc = ledger_store_device_put(s->store, txn, out)) != 0)
        return rc;
    return emit_device(s, txn, now, "device.enrolled", out);
}

int ledger_saga_enroll_device(ledger_saga_t *s, MDB_txn *parent, uint64_t now,
                              const char *account_id, const uint8_t *cert, size_t cert_len,
                              int64_t wallet_cap, uint64_t counter, ledger_device_t *out, char *why)
{
    assert(s != NULL);
    assert(account_id != NULL);
    assert(out != NULL);
    MDB_txn *txn = NULL;
    int rc = saga_begin(s, parent, &txn);
    if (rc != 0)
        return rc;
    rc = enroll_txn(s, txn, now, account_id, cert, cert_len, wallet_cap, counter, out, why);
    return saga_finish(txn, rc, false);
}

static int revoke_txn(ledger_saga_t *s, MDB_txn *txn, uint64_t now, const char *device_id,
                      ledger_device_t *out, char *why)
{
    int rc = ledger_store_device_get(s->store, txn, device_id, out);
    if (rc == QC_ENOTFOUND)
        return refuse(why, QC_EUNKNOWNDEV, "device %s is not enrolled", device_id);
    if (rc != 0)
        return rc;
    if (out->status == QCLEDGER__DEVICE_STATUS__DEVICE_REVOKED)
        return 0;
    out->status = QCLEDGER__DEVICE_STATUS__DEVICE_REVOKED;
    if ((rc = ledger_store_device_put(s->store, txn, out)) != 0)
        return rc;
    return emit_device(s, txn, now, "device.revoked", out);
}

int ledger_saga_revoke_device(ledger_saga_t *s, MDB_txn *parent, uint64_t now,
                              const char *device_id, ledger_device_t *out, char *why)
{
    assert(s != NULL);
    assert(device_id != NULL);
    assert(out != NULL);
    MDB_txn *txn = NULL;
    int rc = saga_begin(s, parent, &txn);
    if (rc != 0)
        return rc;
    return saga_finish(txn, revoke_txn(s, txn, now, device_id, out, why), false);
}

/* ------------------------------------------------------------ invariant check */

/* One account's stored and replayed balances, kept sorted by id (LMDB's key order). */
typedef struct check_acct {
    char id[LEDGER_ID_MAX + 1];
    uint32_t currency;
    Qcledger__AccountKind kind;
    int64_t balance;
    int64_t replayed;
} check_acct_t;

typedef struct check_ctx {
    ledger_saga_t *s;
    MDB_txn *txn;
    ledger_check_t *out;
    check_acct_t *accts;
    size_t n_accts, cap_accts;
    uint64_t n_deadlines;
    ledger_load_t *scratch; /* the check's own: the saga's scratch belongs to its writer */
} check_ctx_t;

static void problem(ledger_check_t *out, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void problem(ledger_check_t *out, const char *fmt, ...)
{
    out->ok = false;
    out->problem_count++;
    if (out->n_problems >= LEDGER_CHECK_PROBLEMS_MAX)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->problems[out->n_problems++], LEDGER_CHECK_PROBLEM_LEN, fmt, ap);
    va_end(ap);
}

static ledger_check_totals_t *totals_of(ledger_check_t *out, uint32_t currency)
{
    for (size_t i = 0; i < out->n_currencies; i++)
        if (out->currencies[i].currency == currency)
            return &out->currencies[i];
    if (out->n_currencies >= LEDGER_CHECK_CURRENCIES_MAX)
        return NULL;
    ledger_check_totals_t *t = &out->currencies[out->n_currencies++];
    memset(t, 0, sizeof *t);
    t->currency = currency;
    return t;
}

static int cmp_acct(const void *key, const void *elem)
{
    return strcmp((const char *)key, ((const check_acct_t *)elem)->id);
}

static check_acct_t *find_acct(check_ctx_t *c, const char *id)
{
    return bsearch(id, c->accts, c->n_accts, sizeof *c->accts, cmp_acct);
}

static int check_account(void *arg, const ledger_account_t *a)
{
    check_ctx_t *c = arg;
    c->out->accounts++;
    ledger_check_totals_t *t = totals_of(c->out, a->currency);
    if (t == NULL) {
        problem(c->out, "more than %d currencies", LEDGER_CHECK_CURRENCIES_MAX);
        return 0;
    }
    if (__builtin_add_overflow(t->sum, a->balance, &t->sum))
        problem(c->out, "currency %u: sum of balances overflows", a->currency);
    if (a->kind == QCLEDGER__ACCOUNT_KIND__KIND_HOLD)
        t->hold = a->balance;
    if (a->kind == QCLEDGER__ACCOUNT_KIND__KIND_FLOAT)
        t->float_balance = a->balance;
    if (c->n_accts == c->cap_accts) {
        size_t cap = c->cap_accts ? 2 * c->cap_accts : 64;
        check_acct_t *n = realloc(c->accts, cap * sizeof *n);
        if (n == NULL)
            return QC_ENOMEM;
        c->accts = n;
        c->cap_accts = cap;
    }
    check_acct_t *e = &c->accts[c->n_accts++];
    memcpy(e->id, a->id, sizeof e->id);
    e->currency = a->currency;
    e->kind = a->kind;
    e->balance = a->balance;
    e->replayed = 0;
    /* LMDB walks keys in memcmp order, which is strcmp order for NUL-free ids: the
     * array stays sorted for bsearch(). */
    assert(c->n_accts < 2 || strcmp(c->accts[c->n_accts - 2].id, e->id) < 0);
    return 0;
}

static int check_transfer(void *arg, const ledger_transfer_t *t)
{
    check_ctx_t *c = arg;
    c->out->transfers++;
    char hex[2 * LEDGER_TXN_ID_SIZE + 1];
    check_acct_t *d = find_acct(c, t->debit), *k = find_acct(c, t->credit);
    if (d == NULL || k == NULL || t->amount <= 0) {
        problem(c->out, "transfer %s/%s names an unknown account or a bad amount",
                ops_hex(t->txn_id, LEDGER_TXN_ID_SIZE, hex), ledger_transfer_kind_name(t->kind));
        return 0;
    }
    if (__builtin_sub_overflow(d->replayed, t->amount, &d->replayed) ||
        __builtin_add_overflow(k->replayed, t->amount, &k->replayed))
        problem(c->out, "replayed balance overflows");
    return 0;
}

/* The transfer kinds each state must have, as a bit set of 1 << kind. */
static unsigned state_transfers(Quancun__LoadState state)
{
    unsigned r = 1u << QCLEDGER__TRANSFER_KIND__TRANSFER_RESERVE;
    switch (state) {
    case QUANCUN__LOAD_STATE__LOAD_RESERVED:
        return r;
    case QUANCUN__LOAD_STATE__LOAD_CONFIRMED:
        return r | 1u << QCLEDGER__TRANSFER_KIND__TRANSFER_CONFIRM;
    case QUANCUN__LOAD_STATE__LOAD_COMPENSATED:
        return r | 1u << QCLEDGER__TRANSFER_KIND__TRANSFER_COMPENSATE;
    case QUANCUN__LOAD_STATE__LOAD_LATE_CONFIRMED:
        return r | 1u << QCLEDGER__TRANSFER_KIND__TRANSFER_COMPENSATE |
               1u << QCLEDGER__TRANSFER_KIND__TRANSFER_LATE_CONFIRM;
    default:
        return 0;
    }
}

static int check_load(void *arg, const ledger_load_t *l)
{
    check_ctx_t *c = arg;
    c->out->loads++;
    char hex[2 * LEDGER_TXN_ID_SIZE + 1];
    ops_hex(l->txn_id, LEDGER_TXN_ID_SIZE, hex);
    unsigned want = state_transfers(l->state);
    if (want == 0) {
        problem(c->out, "load %s is in no valid state (%d)", hex, (int)l->state);
        return 0;
    }
    for (int k = QCLEDGER__TRANSFER_KIND__TRANSFER_RESERVE;
         k <= QCLEDGER__TRANSFER_KIND__TRANSFER_LATE_CONFIRM; k++) {
        ledger_transfer_t t;
        int rc = ledger_store_transfer_get(c->s->store, c->txn, l->txn_id,
                                           (Qcledger__TransferKind)k, &t);
        if (rc != 0 && rc != QC_ENOTFOUND)
            return rc;
        bool has = rc == 0, should = (want & (1u << k)) != 0;
        if (has != should)
            problem(c->out, "load %s %s: %s transfer %s", hex, proto_load_state_name(l->state),
                    ledger_transfer_kind_name((Qcledger__TransferKind)k),
                    has ? "present" : "missing");
        else if (has && t.amount != l->amount)
            problem(c->out, "load %s: %s transfer amount differs", hex,
                    ledger_transfer_kind_name((Qcledger__TransferKind)k));
    }
    if (l->state == QUANCUN__LOAD_STATE__LOAD_RESERVED) {
        c->out->reserved++;
        ledger_check_totals_t *t = totals_of(c->out, l->currency);
        if (t != NULL && __builtin_add_overflow(t->reserved_sum, l->amount, &t->reserved_sum))
            problem(c->out, "currency %u: reserved sum overflows", l->currency);
    }
    return 0;
}

static int check_deadline(void *arg, uint64_t deadline_ms, const uint8_t *txn_id)
{
    check_ctx_t *c = arg;
    c->n_deadlines++;
    ledger_load_t *l = c->scratch;
    char hex[2 * LEDGER_TXN_ID_SIZE + 1];
    int rc = ledger_store_load_get(c->s->store, c->txn, txn_id, l);
    if (rc != 0 && rc != QC_ENOTFOUND)
        return rc;
    if (rc != 0 || l->state != QUANCUN__LOAD_STATE__LOAD_RESERVED || l->deadline_ms != deadline_ms)
        problem(c->out, "deadline entry %s does not name a RESERVED load",
                ops_hex(txn_id, LEDGER_TXN_ID_SIZE, hex));
    return 0;
}

static int check_device(void *arg, const ledger_device_t *d)
{
    check_ctx_t *c = arg;
    c->out->devices++;
    if (!d->has_reserved)
        return 0;
    ledger_load_t *l = c->scratch;
    int rc = ledger_store_load_get(c->s->store, c->txn, d->reserved_txn, l);
    if (rc != 0 && rc != QC_ENOTFOUND)
        return rc;
    if (rc != 0 || l->state != QUANCUN__LOAD_STATE__LOAD_RESERVED || strcmp(l->device_id, d->id))
        problem(c->out, "device %s names a reserved load that is not RESERVED", d->id);
    return 0;
}

int ledger_saga_check(ledger_saga_t *s, MDB_txn *txn, ledger_check_t *out)
{
    assert(s != NULL);
    assert(out != NULL);
    memset(out, 0, sizeof *out);
    out->ok = true;
    MDB_txn *own = NULL;
    int rc;
    if (txn == NULL) {
        if ((rc = ledger_store_txn_begin(s->store, NULL, false, &own)) != 0)
            return rc;
        txn = own;
    }
    check_ctx_t c = {.s = s, .txn = txn, .out = out, .scratch = malloc(sizeof(ledger_load_t))};
    if (c.scratch == NULL) {
        rc = QC_ENOMEM;
        goto done;
    }
    if ((rc = ledger_store_each_account(s->store, txn, check_account, &c)) != 0 ||
        (rc = ledger_store_each_transfer(s->store, txn, check_transfer, &c)) != 0 ||
        (rc = ledger_store_each_load(s->store, txn, check_load, &c)) != 0 ||
        (rc = ledger_store_each_deadline(s->store, txn, check_deadline, &c)) != 0 ||
        (rc = ledger_store_each_device(s->store, txn, check_device, &c)) != 0 ||
        (rc = ledger_store_outbox_depth(s->store, txn, &out->outbox_depth)) != 0)
        goto done;
    for (size_t i = 0; i < c.n_accts; i++)
        if (c.accts[i].balance != c.accts[i].replayed)
            problem(out, "account %s: balance %lld but its transfers give %lld", c.accts[i].id,
                    (long long)c.accts[i].balance, (long long)c.accts[i].replayed);
    for (size_t i = 0; i < out->n_currencies; i++) {
        const ledger_check_totals_t *t = &out->currencies[i];
        if (t->sum != 0)
            problem(out, "currency %u: balances sum to %lld, not 0", t->currency,
                    (long long)t->sum);
        if (t->hold != t->reserved_sum)
            problem(out, "currency %u: HOLD %lld but RESERVED loads sum to %lld", t->currency,
                    (long long)t->hold, (long long)t->reserved_sum);
    }
    if (c.n_deadlines != out->reserved)
        problem(out, "%llu deadline entries for %llu RESERVED loads",
                (unsigned long long)c.n_deadlines, (unsigned long long)out->reserved);
done:
    free(c.scratch);
    free(c.accts);
    ledger_store_txn_abort(own);
    return rc;
}

/* ------------------------------------------------------------ replay */

int ledger_saga_replay_settle(ledger_saga_t *s, MDB_txn *parent, uint64_t now,
                              const ledger_load_t *after, ledger_load_t *out, char *why)
{
    assert(s != NULL);
    assert(after != NULL);
    assert(out != NULL);
    MDB_txn *txn = NULL;
    int rc = saga_begin(s, parent, &txn);
    if (rc != 0)
        return rc;
    rc = ledger_store_load_get(s->store, txn, after->txn_id, out);
    if (rc == QC_ENOTFOUND)
        refuse(why, rc, "no load with this txn id");
    if (rc != 0)
        return saga_finish(txn, rc, false);
    const uint8_t *report = after->report_len > 0 ? after->report : NULL;
    Quancun__LoadState from = out->state, to = after->state;
    if (from == QUANCUN__LOAD_STATE__LOAD_RESERVED && to == QUANCUN__LOAD_STATE__LOAD_CONFIRMED)
        rc = saga_confirm(s, txn, now, out, after->reason, report, after->report_len, why);
    else if (from == QUANCUN__LOAD_STATE__LOAD_RESERVED &&
             to == QUANCUN__LOAD_STATE__LOAD_COMPENSATED)
        rc = saga_compensate(s, txn, now, out, after->reason, report, after->report_len, why);
    else if (from == QUANCUN__LOAD_STATE__LOAD_COMPENSATED &&
             to == QUANCUN__LOAD_STATE__LOAD_LATE_CONFIRMED)
        rc = saga_late_confirm(s, txn, now, out, after->reason, report, after->report_len, why);
    else
        rc = refuse(why, QC_ESTATE, "no transition from state %d to %d", (int)from, (int)to);
    return saga_finish(txn, rc, false);
}
