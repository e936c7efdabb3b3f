/* device_flow.h - the device's side of a load, end to end, over an abstract transport:
 * sign the request, send it, judge the allow, send the report until an outcome arrives.
 *
 * The transport is a function, so the same flow runs over ZeroMQ in qc-wallet and over an
 * in-process fake bank in the tests. Every step is taken from the device's stored state,
 * so a flow cut short anywhere (timeout, crash) is finished later by device_flow_settle()
 * with the very same signed messages. */
#ifndef DEVICE_FLOW_H
#define DEVICE_FLOW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "device_core.h"
#include "qc_error.h"

#define DEVICE_MESSAGE_MAX 256       /* bytes of a server message kept for the user */
#define DEVICE_REPORT_ATTEMPTS_MAX 5 /* sends of one report before giving up for now */
#define DEVICE_REPORT_BACKOFF_MS 200 /* pause after an attempt, times the attempt number */
#define DEVICE_METHOD_LOAD "load"
#define DEVICE_METHOD_REPORT "report"
#define DEVICE_METHOD_SYNC "sync"

/* One reply of the bank. body is malloc'd; device_reply_clear() frees it. */
typedef struct device_reply {
    int code; /* 0, or the server's QC_E* code */
    char message[DEVICE_MESSAGE_MAX + 1];
    uint8_t *body;
    size_t body_len;
    int load_state;          /* RpcReply.load_state: with QC_ESTATE, the load's state */
    uint64_t server_time_ms; /* RpcReply.server_time_ms: the bank's clock at a refusal */
} device_reply_t;

void device_reply_clear(device_reply_t *reply);

/* Sends body as method and waits for the reply. Returns 0 when a reply arrived (out is
 * filled; its code may be an error), or QC_ETIMEOUT / QC_EUNAVAIL / QC_ENOMEM when none. */
typedef int device_call_fn(void *arg, const char *method, const uint8_t *body, size_t body_len,
                           device_reply_t *out);

/* What happened, for the user. */
typedef struct device_flow_result {
    bool judged;     /* an allow was judged in this flow */
    int verdict;     /* when judged: 0 applied, else why it was refused */
    bool finished;   /* an outcome arrived and the device is IDLE */
    int outcome;     /* when finished: Quancun__LoadState */
    bool abandoned;  /* the bank refused the request; nothing was applied */
    int server_code; /* the last error code the server sent, 0 when none */
    char server_message[DEVICE_MESSAGE_MAX + 1];
    int server_load_state;   /* the state the bank named with server_code, 0 when none */
    uint64_t server_time_ms; /* the bank's clock at that refusal, 0 when not sent */
} device_flow_result_t;

/* True for server codes that mean "try again later" rather than "no". */
bool device_flow_transient(int code);

/* Drives the load in progress, if any, to IDLE: a PENDING request is re-sent as is (the
 * ledger is idempotent by txn and answers with the same allow), the allow judged, and the
 * stored report sent as report_method (DEVICE_METHOD_REPORT or DEVICE_METHOD_SYNC) until a
 * verified outcome arrives. A definitive refusal of the request abandons it.
 * Returns 0 when the device is IDLE (res says what happened); otherwise the code that
 * stopped it (QC_ETIMEOUT, the server's code, a verification error of the outcome), with the
 * device left PENDING or REPORTED for the next try. */
QC_MUST_CHECK int device_flow_settle(device_core_t *core, device_call_fn *call, void *arg,
                                     const char *report_method, device_flow_result_t *res);

/* A new load from IDLE (the PIN verified): signs the request, then settles it as above.
 * Returns 0 when an outcome arrived (res->verdict and res->outcome say whether money moved),
 * or as device_flow_settle(), or the refusal of device_core_request(). */
QC_MUST_CHECK int device_flow_load(device_core_t *core, const char *account_id, int64_t amount,
                                   uint32_t currency, device_call_fn *call, void *arg,
                                   device_flow_result_t *res);

#endif
