/* ledger_query.h - the ledger's operator queries on a thread of their own: the invariant check
 * ("check"), a shard's loads by filter and page ("list_loads") and an account's statement
 * ("account_statement"), each in a read transaction of that thread.
 *
 * Why a thread: the service's loop is the shard's only writer (ledger_service.c), and a query
 * that reads the whole shard (the check replays every transfer) would stop every write for as
 * long as it reads. LMDB readers never block the writer and the environment is opened with
 * MDB_NOTLS (ledger_store.c), so a read transaction may live on any thread; the query thread's
 * transaction sees the last commit before it began. In replica mode the store is the fsm's,
 * and a replica's check reads its own applied state the same way while it keeps applying.
 *
 * Contract with the service's loop (the thread that owns the RPC server):
 *   1. ledger_query_submit() takes a request; from then on the query owns it.
 *   2. The query thread answers it into a queue and makes ledger_query_fd() readable.
 *   3. The loop polls that descriptor and calls ledger_query_reply(), which sends the answers
 *      through the server on the loop's thread (a ZeroMQ socket has one owner).
 * At most LEDGER_QUERY_INFLIGHT_MAX requests are queued, running or answered-not-sent at once;
 * another is refused with QC_EBUSY (nothing was read: the caller retries). */
#ifndef LEDGER_QUERY_H
#define LEDGER_QUERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ledger_saga.h"
#include "ledger_store.h"
#include "proto_rpc.h"
#include "qc_error.h"

#define LEDGER_QUERY_INFLIGHT_MAX 16 /* queries queued, running or waiting to be sent */
#define LEDGER_LIST_DEFAULT 100      /* loads or statement lines per page when none is asked */
#define LEDGER_LIST_PAGE_MAX 1000    /* loads or lines in one page, at most */
#define LEDGER_LIST_SCAN_MAX 100000  /* load records read for one page: bounds a page's time */
/* A list_loads with a device, an account or a time bound walks the index of loads
 * (ledger_store_index.h) and reads only the loads in its range, in creation time order; one
 * with the state alone (or nothing) walks the loads in txn id order. */
/* Bytes of a page's records: room under PROTO_RPC_FRAME_MAX for the RpcReply around them. */
#define LEDGER_LIST_REPLY_MAX (PROTO_RPC_FRAME_MAX / 2)
/* Movements of one account from a statement's start (the later of its cursor and its window's
 * start; read in order from the index transfers_by_account) that it holds (each about 100 bytes in
 * memory); an account with more refuses the statement with QC_ELIMIT: page with a window. */
#define LEDGER_STATEMENT_MOVES_MAX 200000

typedef struct ledger_query ledger_query_t;

/* True when method is one of the queries answered here ("check", "list_loads",
 * "account_statement"). */
bool ledger_query_serves(const char *method);

/* Starts the query thread over store (not owned; it outlives the query). saga (not owned)
 * is used for ledger_saga_check() only, which reads nothing of it but its store. shard and
 * shard_count are stated in the check's reply. Returns 0 and sets *out, or QC_ENOMEM, QC_EIO
 * (no thread or eventfd). */
QC_MUST_CHECK int ledger_query_new(ledger_store_t *store, ledger_saga_t *saga, uint32_t shard,
                                   uint32_t shard_count, ledger_query_t **out);

/* Hands *req (a request whose method ledger_query_serves()) to the query thread: on 0 the
 * query owns it and *req is NULL; QC_EBUSY when LEDGER_QUERY_INFLIGHT_MAX are in flight
 * (*req untouched: the caller answers it). */
QC_MUST_CHECK int ledger_query_submit(ledger_query_t *q, proto_rpc_request_t **req);

/* A descriptor that is readable while answers wait to be sent, for zmq_poll(). */
int ledger_query_fd(const ledger_query_t *q);

/* Sends every answer ready through srv (on the caller's thread, which owns srv) and frees the
 * requests. Returns how many were sent (a failed send is logged and counts too). */
size_t ledger_query_reply(ledger_query_t *q, proto_rpc_server_t *srv);

/* Stops the thread after the query it is running, drops every request not answered (their
 * callers time out and retry), frees q and nulls *q_p. Accepts NULL. */
void ledger_query_destroy(ledger_query_t **q_p);

#endif
