/* ledger_signer.h - the ledger's signing stage: it has the bank's signer sign allows and
 * outcomes after the ledger committed the money, without the writer ever waiting for it.
 *
 * The bank debits before it signs. Reserve commits a RESERVED load with no allow; the service
 * then hands the load's allow body and the waiting request to this stage
 * (ledger_signer_ask()), which sends "sign" to the signer asynchronously and goes back to the
 * writer's loop. When the signed allow arrives it waits here until the service's next group
 * commit stores it (ledger_signer_take() inside the write transaction, ledger_signer_answer()
 * per allow, ledger_signer_release() after the commit); only then is the stored allow sent to
 * the requests that wait for it. An outcome is signed after Settle committed and is sent as
 * soon as it arrives: it moves no money and is a function of the committed record.
 *
 * A signer that does not answer within timeout_ms (retries to every signer included) leaves
 * the load RESERVED: its waiters get QC_EUNAVAIL, and the ledger's deadline compensates the
 * load unless a retry gets it signed in time.
 *
 * Limits: LEDGER_SIGNER_PENDING_MAX signatures asked for at once (more: QC_EBUSY);
 * LEDGER_SIGNER_WAITERS_MAX requests waiting for one allow (a gateway's retries of one
 * Reserve; the oldest is dropped unanswered: its caller has moved on to the retry).
 *
 * Fault point: ledger.after_sign_before_store, when a signed allow has arrived and is not
 * stored yet. Not thread-safe: the ledger's one thread owns it. */
#ifndef LEDGER_SIGNER_H
#define LEDGER_SIGNER_H

#include <stddef.h>
#include <stdint.h>

#include "ledger_store.h"
#include "proto_rpc.h"
#include "signer.pb-c.h"
#include "qc_error.h"

#define LEDGER_SIGNER_PENDING_MAX 1024 /* signatures asked for and not yet answered */
#define LEDGER_SIGNER_WAITERS_MAX 4    /* requests waiting for one allow */

typedef struct ledger_signer ledger_signer_t;

typedef struct ledger_signer_config {
    void *zctx;                        /* the ledger's zmq context (not owned) */
    proto_rpc_server_t *server;        /* where the waiting requests are answered (borrowed) */
    const char *endpoints;             /* signer endpoints, comma-separated, or */
    const char *endpoints_path;        /* a file of them, re-read on SIGHUP */
    const char *server_public_z85;     /* the signer's CURVE public key */
    const proto_curve_keypair_t *keys; /* the ledger's key pair: its identity at the signer */
    int timeout_ms;                    /* budget of one signature, retries included */
} ledger_signer_config_t;

/* Connects to the signer. Returns 0 and sets *out, or QC_ECONFIG, QC_ENOMEM. */
QC_MUST_CHECK int ledger_signer_new(const ledger_signer_config_t *cfg, ledger_signer_t **out);

/* Drops every waiting request unanswered, frees ls, nulls *ls_p; accepts NULL. */
void ledger_signer_destroy(ledger_signer_t **ls_p);

/* Asks the signer to sign body (a packed LoadAllow or LoadOutcome, as kind says) for the load
 * txn_id, and parks *req (taken, *req set to NULL) until the answer.
 * - SIGN_LOAD_ALLOW: while a signature for txn_id is being asked for or stored, *req only
 *   joins its waiters (no second signature). The waiters get the service's answer.
 * - SIGN_LOAD_OUTCOME: prefix (taken, *prefix set to NULL) is the packed reply the signed
 *   envelope is appended to, as field 2 of a SettleReply.
 * Returns 0; or QC_EBUSY (table full), QC_EUNAVAIL (no signer configured), QC_ENOMEM, and then
 * *req and *prefix are left to the caller. */
QC_MUST_CHECK int ledger_signer_ask(ledger_signer_t *ls, Quancun__SignKind kind,
                                    const uint8_t txn_id[LEDGER_TXN_ID_SIZE], const uint8_t *body,
                                    size_t body_len, uint8_t **prefix, size_t prefix_len,
                                    proto_rpc_request_t **req);

/* Fills items (zmq_pollitem_t, capacity cap) with the signer client's sockets; returns how
 * many. Refill before every poll. */
int ledger_signer_pollitems(ledger_signer_t *ls, void *items, int cap);

/* Milliseconds until the next retry or deadline of a signature in flight, -1 when none. */
int ledger_signer_next_timeout_ms(const ledger_signer_t *ls);

/* Takes the signer's answers, never blocking: outcomes are sent to their waiters, allows wait
 * to be stored, failures are sent (QC_EUNAVAIL, or the signer's refusal). Returns how many
 * allows wait to be stored. */
int ledger_signer_process(ledger_signer_t *ls);

/* A signed allow that waits to be stored. */
typedef struct ledger_signer_allow {
    int handle; /* for ledger_signer_answer() */
    const uint8_t *txn_id;
    const uint8_t *allow; /* the signed envelope as the signer returned it */
    size_t allow_len;
} ledger_signer_allow_t;

/* Moves up to cap signed allows into the group commit that is being built, filling out.
 * Returns how many. Every one must get ledger_signer_answer(), then ledger_signer_release(). */
size_t ledger_signer_take(ledger_signer_t *ls, ledger_signer_allow_t *out, size_t cap);

/* The reply its waiters get once the commit is durable: code 0 with body (taken, a packed
 * ReserveReply), or a refusal code with why. */
void ledger_signer_answer(ledger_signer_t *ls, int handle, int code, const char *why, uint8_t *body,
                          size_t body_len);

/* After the group commit: commit_rc 0 sends every answer given; otherwise every taken allow's
 * waiters get commit_rc (nothing was stored; a retry asks again). Frees those entries. */
void ledger_signer_release(ledger_signer_t *ls, int commit_rc);

/* For one taken allow, instead of answer + release: a replica stores allows in Raft entries,
 * each applied on its own, so each allow's waiters get their reply (code 0 with body, taken;
 * or a refusal) as soon as the entry that stored it applied or failed. Frees the entry. */
void ledger_signer_finish(ledger_signer_t *ls, int handle, int code, const char *why, uint8_t *body,
                          size_t body_len);

/* Signatures asked for and not yet released. */
int ledger_signer_pending(const ledger_signer_t *ls);

#endif
