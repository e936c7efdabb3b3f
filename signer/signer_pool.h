/* signer_pool.h - signing worker threads, one PKCS#11 session each, fed by a bounded queue.
 *
 * The thread that owns the RPC socket submits request bodies and takes finished replies;
 * it never signs. Workers never touch a zmq socket: they take jobs from a mutex+condvar
 * queue, sign with their own session, put the reply on a done list and wake the owner
 * through an eventfd it polls beside its socket. Only the owner thread may call
 * submit/take/pending/destroy. */
#ifndef SIGNER_POOL_H
#define SIGNER_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "signer_sign.h"
#include "signer_token.h"
#include "qc_error.h"

#define SIGNER_WORKERS_MAX 64
#define SIGNER_QUEUE_MAX 4096 /* jobs waiting for a worker; beyond it callers get QC_EBUSY */

typedef struct signer_pool signer_pool_t;

/* Opens one session per worker on tok (on the calling thread) and starts workers threads
 * that sign with ring (both borrowed: they must outlive the pool). queue_max bounds the
 * jobs waiting (1 .. SIGNER_QUEUE_MAX). Returns 0 and sets *out; QC_EINVAL (counts out of
 * range), QC_EBUSY (the token has fewer sessions), QC_ECRYPTO, QC_ENOMEM, QC_EIO. */
QC_MUST_CHECK int signer_pool_new(signer_token_t *tok, const signer_keyring_t *ring, size_t workers,
                                  size_t queue_max, signer_pool_t **out);

/* Queues the SignRequest bytes body (borrowed until the job is taken back) for a worker;
 * tag is handed back by signer_pool_take(). A job whose deadline_mono_ms (ops_time_mono_ms(), 0 =
 * none) has passed when a worker gets to it is not signed (QC_EEXPIRED). Returns 0, or QC_EBUSY
 * when queue_max jobs are already waiting (nothing is queued). */
QC_MUST_CHECK int signer_pool_submit(signer_pool_t *pool, void *tag, const uint8_t *body,
                                     size_t body_len, uint64_t deadline_mono_ms);

/* A file descriptor that becomes readable when finished jobs wait, for poll(). */
int signer_pool_fd(const signer_pool_t *pool);

/* Takes one finished job, if any: returns true and sets *tag, *code (0 or QC_E*), *reply
 * (a malloc'd SignReply on success, the caller frees it; NULL on error) and copies the
 * error message into msg. Returns false when none is finished. Clears the fd's readiness
 * once the done list is empty. */
bool signer_pool_take(signer_pool_t *pool, void **tag, int *code, uint8_t **reply,
                      size_t *reply_len, char msg[SIGNER_MESSAGE_MAX]);

/* Jobs submitted and not yet taken back. */
size_t signer_pool_pending(const signer_pool_t *pool);

/* True while no worker has seen the token go away (QC_EUNAVAIL), for /healthz. Any thread. */
bool signer_pool_healthy(const signer_pool_t *pool);

/* Lets the workers finish the queued jobs, joins them, closes their sessions and frees the
 * pool; jobs not taken back are handed to free_tag (may be NULL) and dropped. Nulls *pool_p;
 * accepts NULL. */
void signer_pool_destroy(signer_pool_t **pool_p, void (*free_tag)(void *tag));

#endif
