/* device_flow.c - the device's side of a load over an abstract transport, with retries. */
#include "device_flow.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ops_fault.h"
#include "ops_log.h"
#include "qc_error.h"

#define FLOW_STEPS_MAX 4 /* PENDING -> REPORTED -> IDLE takes two; more is a bug */

void device_reply_clear(device_reply_t *reply)
{
    if (reply == NULL)
        return;
    free(reply->body);
    memset(reply, 0, sizeof(*reply));
}

bool device_flow_transient(int code)
{
    switch (code) {
    case QC_ETIMEOUT:
    case QC_EUNAVAIL:
    case QC_EBUSY:
    case QC_EIO:
    case QC_ENOSPACE: /* the bank's disk is full: nothing changed, its operators free space */
    case QC_ENOMEM:
    case QC_EINTERNAL:
    case QC_ECRYPTO:
    case QC_ESHARD:
    case QC_EPENDING:
    case QC_ECRLSTALE: /* the bank's CRL is out of date: its operators must renew it */
        return true;
    default:
        return false;
    }
}

static void note_server(device_flow_result_t *res, const device_reply_t *reply)
{
    res->server_code = reply->code;
    res->server_load_state = reply->load_state;
    res->server_time_ms = reply->server_time_ms;
    snprintf(res->server_message, sizeof(res->server_message), "%s",
             reply->message[0] != '\0' ? reply->message : qc_strerror(reply->code));
}

static void pause_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000u, .tv_nsec = (long)(ms % 1000u) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* PENDING: re-sends the stored request and judges the allow, or abandons on a refusal. */
static int settle_pending(device_core_t *core, device_call_fn *call, void *arg,
                          device_flow_result_t *res)
{
    const uint8_t *req = NULL;
    size_t req_len = 0;
    int rc = device_core_pending_request(core, &req, &req_len);
    assert(rc == 0);
    device_reply_t reply = {0};
    rc = call(arg, DEVICE_METHOD_LOAD, req, req_len, &reply);
    if (rc != 0)
        return rc; /* no answer: stay PENDING, the next sync re-sends the same request */
    if (reply.code != 0) {
        note_server(res, &reply);
        rc = reply.code;
        if (!device_flow_transient(reply.code)) {
            /* A definitive no: nothing was debited for this txn, or it is compensated.
             * Abandoning is safe either way: the unchanged counter proves non-application. */
            int arc = device_core_abandon(core, reply.code, res->server_message);
            if (arc != 0)
                rc = arc;
            else
                res->abandoned = true;
        }
        device_reply_clear(&reply);
        return rc;
    }
    /* A device that dies here holds an allow it never judged: the ledger's deadline
     * compensates the load, and the next sync learns that and abandons it (ops/demo). */
    ops_fault_point("wallet.after_allow_received");
    int verdict = 0;
    rc = device_core_judge_allow(core, reply.body, reply.body_len, &verdict);
    device_reply_clear(&reply);
    if (rc != 0)
        return rc;
    res->judged = true;
    res->verdict = verdict;
    return 0;
}

/* REPORTED: sends the stored report until a verified outcome arrives, a bounded number of
 * times. */
static int settle_reported(device_core_t *core, device_call_fn *call, void *arg, const char *method,
                           device_flow_result_t *res)
{
    int last = QC_ETIMEOUT;
    for (unsigned attempt = 1; attempt <= DEVICE_REPORT_ATTEMPTS_MAX; attempt++) {
        const uint8_t *rep = NULL;
        size_t rep_len = 0;
        int rc = device_core_report(core, &rep, &rep_len);
        assert(rc == 0);
        device_reply_t reply = {0};
        rc = call(arg, method, rep, rep_len, &reply);
        if (rc == 0 && reply.code != 0) {
            note_server(res, &reply);
            rc = reply.code;
            if (!device_flow_transient(rc)) {
                device_reply_clear(&reply);
                return rc; /* the bank refuses the report: keep it for the operator */
            }
        } else if (rc == 0) {
            int state = 0;
            rc = device_core_accept_outcome(core, reply.body, reply.body_len, &state);
            if (rc == 0) {
                res->finished = true;
                res->outcome = state;
                device_reply_clear(&reply);
                return 0;
            }
            ops_log(OPS_LOG_WARN, "wallet.outcome_refused", "error", qc_strerror(rc), NULL);
        }
        device_reply_clear(&reply);
        last = rc;
        if (attempt < DEVICE_REPORT_ATTEMPTS_MAX)
            pause_ms(DEVICE_REPORT_BACKOFF_MS * attempt);
    }
    return last;
}

int device_flow_settle(device_core_t *core, device_call_fn *call, void *arg,
                       const char *report_method, device_flow_result_t *res)
{
    assert(core != NULL);
    assert(call != NULL);
    assert(report_method != NULL);
    assert(res != NULL);
    for (int step = 0; step < FLOW_STEPS_MAX; step++) {
        device_status_t s;
        device_core_status(core, &s);
        int rc = 0;
        switch (s.phase) {
        case DEVICE_IDLE:
            return 0;
        case DEVICE_PENDING:
            rc = settle_pending(core, call, arg, res);
            break;
        case DEVICE_REPORTED:
            rc = settle_reported(core, call, arg, report_method, res);
            break;
        }
        if (rc != 0)
            return rc;
    }
    assert(!"a load did not settle in FLOW_STEPS_MAX steps");
    return QC_EINTERNAL;
}

int device_flow_load(device_core_t *core, const char *account_id, int64_t amount, uint32_t currency,
                     device_call_fn *call, void *arg, device_flow_result_t *res)
{
    assert(core != NULL);
    assert(account_id != NULL);
    assert(call != NULL);
    assert(res != NULL);
    memset(res, 0, sizeof(*res));
    const uint8_t *req = NULL;
    size_t req_len = 0;
    int rc = device_core_request(core, account_id, amount, currency, &req, &req_len);
    if (rc != 0)
        return rc;
    return device_flow_settle(core, call, arg, DEVICE_METHOD_REPORT, res);
}
