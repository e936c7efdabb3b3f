/* wallet_flow.h - the device's side of a load, end to end, over an abstract transport:
 * sign the request, send it, judge the allow, send the report until an outcome arrives.
 *
 * The transport is a function, so the same flow runs over ZeroMQ in qc-wallet and over an
 * in-process fake bank in the tests. Every step is taken from the device's stored state,
 * so a flow cut short anywhere (timeout, crash) is finished later by wallet_flow_settle()
 * with the very same signed messages. */
#ifndef WALLET_FLOW_H
#define WALLET_FLOW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wallet_device.h"

#define WALLET_MESSAGE_MAX 256       /* bytes of a server message kept for the user */
#define WALLET_REPORT_ATTEMPTS_MAX 5 /* sends of one report before giving up for now */
#define WALLET_REPORT_BACKOFF_MS 200 /* pause after an attempt, times the attempt number */
#define WALLET_METHOD_LOAD "load"
#define WALLET_METHOD_REPORT "report"
#define WALLET_METHOD_SYNC "sync"

/* One reply of the bank. body is malloc'd; wallet_reply_clear() frees it. */
typedef struct wallet_reply {
    int code; /* 0, or the server's QC_E* code */
    char message[WALLET_MESSAGE_MAX + 1];
    uint8_t *body;
    size_t body_len;
} wallet_reply_t;

void wallet_reply_clear(wallet_reply_t *reply);

/* Sends body as method and waits for the reply. Returns 0 when a reply arrived (out is
 * filled; its code may be an error), or QC_ETIMEOUT / QC_EUNAVAIL / QC_ENOMEM when none. */
typedef int wallet_call_fn(void *arg, const char *method, const uint8_t *body, size_t body_len,
                           wallet_reply_t *out);

/* What happened, for the user. */
typedef struct wallet_flow_result {
    bool judged;     /* an allow was judged in this flow */
    int verdict;     /* when judged: 0 applied, else why it was refused */
    bool finished;   /* an outcome arrived and the device is IDLE */
    int outcome;     /* when finished: Quancun__LoadState */
    bool abandoned;  /* the bank refused the request; nothing was applied */
    int server_code; /* the last error code the server sent, 0 when none */
    char server_message[WALLET_MESSAGE_MAX + 1];
} wallet_flow_result_t;

/* True for server codes that mean "try again later" rather than "no". */
bool wallet_flow_transient(int code);

/* Drives the load in progress, if any, to IDLE: a PENDING request is re-sent as is (the
 * ledger is idempotent by txn and answers with the same allow), the allow judged, and the
 * stored report sent as report_method (WALLET_METHOD_REPORT or WALLET_METHOD_SYNC) until a
 * verified outcome arrives. A definitive refusal of the request abandons it.
 * Returns 0 when the device is IDLE (res says what happened); otherwise the code that
 * stopped it (QC_ETIMEOUT, the server's code, a verification error of the outcome), with the
 * device left PENDING or REPORTED for the next try. */
int wallet_flow_settle(wallet_device_t *dev, wallet_call_fn *call, void *arg,
                       const char *report_method, wallet_flow_result_t *res);

/* A new load from IDLE (the PIN verified): signs the request, then settles it as above.
 * Returns 0 when an outcome arrived (res->verdict and res->outcome say whether money moved),
 * or as wallet_flow_settle(), or the refusal of wallet_device_request(). */
int wallet_flow_load(wallet_device_t *dev, const char *account_id, int64_t amount,
                     uint32_t currency, wallet_call_fn *call, void *arg, wallet_flow_result_t *res);

#endif
