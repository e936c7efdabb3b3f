/* ledger_outbox.c - the outbox's consumers: the configured audit witnesses and their lag. */
#include "ledger_outbox.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_log.h"
#include "ops_metrics.h"
#include "proto_id.h"

#define OUTBOX_METRIC_NAME_MAX 96

struct ledger_outbox {
    size_t count;
    char names[LEDGER_OUTBOX_CONSUMERS_MAX][LEDGER_OUTBOX_CONSUMER_NAME_MAX + 1];
    const char *ptrs[LEDGER_OUTBOX_CONSUMERS_MAX];
    ops_gauge_t *m_lag[LEDGER_OUTBOX_CONSUMERS_MAX];
};

/* Adds the name of len bytes at p to ob; false (logged) when it may not be added. */
static bool outbox_add(ledger_outbox_t *ob, const char *p, size_t len)
{
    char shown[LEDGER_OUTBOX_CONSUMER_NAME_MAX + 1];
    snprintf(shown, sizeof shown, "%.*s", (int)(len < sizeof shown ? len : sizeof shown - 1), p);
    const char *why = NULL;
    if (len == 0 ||
        proto_id_check_len(p, len, LEDGER_OUTBOX_CONSUMER_NAME_MAX, PROTO_ID_SERIAL) != 0)
        why = "a consumer is 1..32 characters of A-Z a-z 0-9 _ -";
    else if (ob->count == LEDGER_OUTBOX_CONSUMERS_MAX)
        why = "more consumers than LEDGER_OUTBOX_CONSUMERS_MAX (8)";
    for (size_t i = 0; why == NULL && i < ob->count; i++)
        if (strcmp(ob->names[i], shown) == 0)
            why = "named twice";
    if (why != NULL) {
        ops_log(OPS_LOG_ERROR, "ledger.config", "setting", "audit_consumers", "value", shown,
                "error", why, NULL);
        return false;
    }
    memcpy(ob->names[ob->count], p, len);
    ob->names[ob->count][len] = '\0';
    ob->ptrs[ob->count] = ob->names[ob->count];
    char metric[OUTBOX_METRIC_NAME_MAX];
    snprintf(metric, sizeof metric, "qc_ledger_outbox_lag{consumer=\"%s\"}", ob->names[ob->count]);
    ob->m_lag[ob->count] = ops_gauge(metric, "Outbox events this audit consumer has not acked");
    ob->count++;
    return true;
}

int ledger_outbox_new(const char *list, ledger_outbox_t **out)
{
    assert(out != NULL);
    *out = NULL;
    ledger_outbox_t *ob = calloc(1, sizeof *ob);
    if (ob == NULL)
        return QC_ENOMEM;
    for (const char *p = list; p != NULL && p[0] != '\0';) {
        const char *comma = strchr(p, ',');
        size_t len = comma != NULL ? (size_t)(comma - p) : strlen(p);
        if (!outbox_add(ob, p, len)) {
            free(ob);
            return QC_ECONFIG;
        }
        p = comma != NULL ? comma + 1 : NULL;
    }
    assert(ob->count <= LEDGER_OUTBOX_CONSUMERS_MAX);
    *out = ob;
    return 0;
}

void ledger_outbox_destroy(ledger_outbox_t **outbox_p)
{
    if (outbox_p == NULL || *outbox_p == NULL)
        return;
    free(*outbox_p);
    *outbox_p = NULL;
}

const char *const *ledger_outbox_consumers(const ledger_outbox_t *ob, size_t *count)
{
    assert(ob != NULL);
    assert(count != NULL);
    *count = ob->count;
    return ob->ptrs;
}

bool ledger_outbox_known(const ledger_outbox_t *ob, const char *consumer)
{
    assert(ob != NULL);
    if (ob->count == 0)
        return true;
    for (size_t i = 0; consumer != NULL && i < ob->count; i++)
        if (strcmp(ob->names[i], consumer) == 0)
            return true;
    return false;
}

int ledger_outbox_ack(const ledger_outbox_t *ob, ledger_store_t *store, MDB_txn *txn,
                      const char *consumer, uint64_t upto_seq)
{
    assert(ob != NULL);
    assert(txn != NULL);
    return ledger_store_outbox_ack_by(store, txn, consumer, upto_seq, ob->ptrs, ob->count);
}

int ledger_outbox_reply(const ledger_outbox_t *ob, ledger_store_t *store, MDB_txn *txn,
                        const char *consumer, Qcledger__OutboxAckReply *reply)
{
    assert(ob != NULL);
    assert(reply != NULL);
    int rc = ledger_store_outbox_depth(store, txn, &reply->depth);
    if (rc != 0 || ob->count == 0 || !ledger_outbox_known(ob, consumer)) {
        reply->lag = reply->depth;
        return rc;
    }
    uint64_t last = 0, acked = 0;
    if ((rc = ledger_store_outbox_last(store, txn, &last)) != 0 ||
        (rc = ledger_store_outbox_acked(store, txn, consumer, &acked)) != 0)
        return rc;
    reply->lag = last > acked ? last - acked : 0;
    return 0;
}

void ledger_outbox_gauges(ledger_outbox_t *ob, ledger_store_t *store, MDB_txn *txn)
{
    assert(ob != NULL);
    assert(txn != NULL);
    uint64_t last = 0;
    if (ob->count == 0 || ledger_store_outbox_last(store, txn, &last) != 0)
        return;
    for (size_t i = 0; i < ob->count; i++) {
        uint64_t acked = 0;
        if (ledger_store_outbox_acked(store, txn, ob->names[i], &acked) == 0)
            ops_gauge_set(ob->m_lag[i], (int64_t)(last > acked ? last - acked : 0));
    }
}
