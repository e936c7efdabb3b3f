/* signer_pool.c - worker threads that sign, each with its own PKCS#11 session.
 *
 * Invariants:
 *  1. A job is on exactly one of: the wait queue, a worker's hands, the done list, or back
 *     with the owner (after signer_pool_take()); pending counts all but the last.
 *  2. Everything shared (queue, done list, stopping) is guarded by mu. The eventfd is
 *     written when the done list goes from empty to non-empty; the owner drains it only
 *     when it found the list empty, and then looks again before it reports "none", so a
 *     finished job is never left without a wakeup. */
#include "signer_pool.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "ops_log.h"
#include "ops_metrics.h"
#include "ops_time.h"
#include "qc_error.h"

#define SIGNER_WORKER_BATCH_MAX 8 /* jobs a worker takes at once: ~0.5 ms of SoftHSM signing */

typedef struct signer_job {
    struct signer_job *next;
    void *tag;
    const uint8_t *body;
    size_t body_len;
    uint64_t deadline_mono_ms;
    int code;
    uint8_t *reply;
    size_t reply_len;
    char msg[SIGNER_MESSAGE_MAX];
} signer_job_t;

/* A FIFO of jobs. */
typedef struct signer_list {
    signer_job_t *head, *tail;
    size_t count;
} signer_list_t;

typedef struct signer_worker {
    signer_pool_t *pool;
    signer_session_t *sess;
    pthread_t thread;
    bool started;
} signer_worker_t;

struct signer_pool {
    const signer_keyring_t *ring;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    signer_list_t queue;
    signer_list_t done;
    bool stopping;
    size_t queue_max;
    size_t pending; /* owner thread only */
    int efd;
    atomic_bool healthy;
    ops_gauge_t *queue_depth;
    size_t worker_count;
    signer_worker_t workers[SIGNER_WORKERS_MAX];
};

static void signer_list_push(signer_list_t *l, signer_job_t *job)
{
    job->next = NULL;
    if (l->tail != NULL)
        l->tail->next = job;
    else
        l->head = job;
    l->tail = job;
    l->count++;
}

static signer_job_t *signer_list_pop(signer_list_t *l)
{
    signer_job_t *job = l->head;
    if (job == NULL)
        return NULL;
    l->head = job->next;
    if (l->head == NULL)
        l->tail = NULL;
    l->count--;
    job->next = NULL;
    return job;
}

static void signer_wake(signer_pool_t *pool)
{
    uint64_t one = 1;
    /* The counter cannot overflow in practice; EAGAIN would mean it is already readable. */
    ssize_t n = write(pool->efd, &one, sizeof(one));
    (void)n;
}

static void signer_work(signer_pool_t *pool, signer_session_t *sess, signer_job_t *job)
{
    if (job->deadline_mono_ms != 0 && ops_time_mono_ms() > job->deadline_mono_ms) {
        job->code = QC_EEXPIRED;
        snprintf(job->msg, sizeof(job->msg), "request deadline passed before signing");
        return;
    }
    job->code = signer_sign_request(sess, pool->ring, job->body, job->body_len, &job->reply,
                                    &job->reply_len, job->msg);
    if (job->code == QC_EUNAVAIL && atomic_exchange(&pool->healthy, false))
        ops_log(OPS_LOG_ERROR, "signer.token_unavailable", NULL);
}

/* Moves up to max jobs from the front of src to the back of dst. */
static void signer_list_move(signer_list_t *dst, signer_list_t *src, size_t max)
{
    for (size_t i = 0; i < max; i++) {
        signer_job_t *job = signer_list_pop(src);
        if (job == NULL)
            break;
        signer_list_push(dst, job);
    }
}

/* Appends all of src to dst and empties src. */
static void signer_list_splice(signer_list_t *dst, signer_list_t *src)
{
    if (src->head == NULL)
        return;
    if (dst->tail != NULL)
        dst->tail->next = src->head;
    else
        dst->head = src->head;
    dst->tail = src->tail;
    dst->count += src->count;
    src->head = src->tail = NULL;
    src->count = 0;
}

/* A worker takes a batch of jobs per lock and hands the batch back with one wakeup, which
 * saves a lock round and an eventfd write per signature under load. The batch is the
 * worker's share of the queue, so an idle worker is never starved by a greedy one, and at
 * most SIGNER_WORKER_BATCH_MAX, which bounds the latency a batch adds. */
static void *signer_worker_main(void *arg)
{
    signer_worker_t *w = arg;
    signer_pool_t *pool = w->pool;
    for (;;) {
        signer_list_t batch = {0};
        pthread_mutex_lock(&pool->mu);
        while (pool->queue.count == 0 && !pool->stopping)
            pthread_cond_wait(&pool->cv, &pool->mu);
        size_t share = pool->queue.count / pool->worker_count;
        share = share < 1 ? 1 : share > SIGNER_WORKER_BATCH_MAX ? SIGNER_WORKER_BATCH_MAX : share;
        signer_list_move(&batch, &pool->queue, share);
        pthread_mutex_unlock(&pool->mu);
        if (batch.count == 0)
            break; /* stopping and nothing left */
        for (signer_job_t *job = batch.head; job != NULL; job = job->next)
            signer_work(pool, w->sess, job);
        pthread_mutex_lock(&pool->mu);
        bool was_empty = pool->done.count == 0;
        signer_list_splice(&pool->done, &batch);
        pthread_mutex_unlock(&pool->mu);
        if (was_empty)
            signer_wake(pool);
    }
    return NULL;
}

int signer_pool_new(signer_token_t *tok, const signer_keyring_t *ring, size_t workers,
                    size_t queue_max, signer_pool_t **out)
{
    assert(tok != NULL);
    assert(ring != NULL);
    assert(out != NULL);
    *out = NULL;
    if (workers < 1 || workers > SIGNER_WORKERS_MAX || queue_max < 1 ||
        queue_max > SIGNER_QUEUE_MAX)
        return QC_EINVAL;
    signer_pool_t *pool = calloc(1, sizeof(*pool));
    if (pool == NULL)
        return QC_ENOMEM;
    pool->ring = ring;
    pool->queue_max = queue_max;
    atomic_init(&pool->healthy, true);
    pool->queue_depth = ops_gauge("qc_signer_queue_depth", "Sign jobs waiting for a worker");
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->cv, NULL);
    pool->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (pool->efd < 0) {
        pthread_cond_destroy(&pool->cv);
        pthread_mutex_destroy(&pool->mu);
        free(pool);
        return QC_EIO;
    }
    int rc = 0;
    for (size_t i = 0; i < workers && rc == 0; i++) {
        signer_worker_t *w = &pool->workers[i];
        w->pool = pool;
        rc = signer_session_open(tok, &w->sess);
        if (rc != 0)
            break;
        pool->worker_count = i + 1;
        if (pthread_create(&w->thread, NULL, signer_worker_main, w) != 0)
            rc = QC_ENOMEM;
        else
            w->started = true;
    }
    if (rc != 0) {
        signer_pool_destroy(&pool, NULL);
        return rc;
    }
    *out = pool;
    return 0;
}

int signer_pool_submit(signer_pool_t *pool, void *tag, const uint8_t *body, size_t body_len,
                       uint64_t deadline_mono_ms)
{
    assert(pool != NULL);
    assert(body != NULL || body_len == 0);
    signer_job_t *job = calloc(1, sizeof(*job));
    if (job == NULL)
        return QC_ENOMEM;
    job->tag = tag;
    job->body = body;
    job->body_len = body_len;
    job->deadline_mono_ms = deadline_mono_ms;
    pthread_mutex_lock(&pool->mu);
    assert(!pool->stopping);
    if (pool->queue.count >= pool->queue_max) {
        pthread_mutex_unlock(&pool->mu);
        free(job);
        return QC_EBUSY;
    }
    signer_list_push(&pool->queue, job);
    size_t depth = pool->queue.count;
    pthread_cond_signal(&pool->cv);
    pthread_mutex_unlock(&pool->mu);
    pool->pending++;
    ops_gauge_set(pool->queue_depth, (int64_t)depth);
    return 0;
}

int signer_pool_fd(const signer_pool_t *pool)
{
    assert(pool != NULL);
    return pool->efd;
}

bool signer_pool_take(signer_pool_t *pool, void **tag, int *code, uint8_t **reply,
                      size_t *reply_len, char msg[SIGNER_MESSAGE_MAX])
{
    assert(pool != NULL);
    assert(tag != NULL);
    assert(code != NULL);
    assert(reply != NULL);
    assert(reply_len != NULL);
    assert(msg != NULL);
    pthread_mutex_lock(&pool->mu);
    signer_job_t *job = signer_list_pop(&pool->done);
    pthread_mutex_unlock(&pool->mu);
    if (job == NULL) {
        /* Drain the eventfd, then look once more (invariant 2): a job pushed before the
         * drain is found now, one pushed after it writes the eventfd again. */
        uint64_t counter;
        ssize_t n = read(pool->efd, &counter, sizeof(counter));
        (void)n;
        pthread_mutex_lock(&pool->mu);
        job = signer_list_pop(&pool->done);
        pthread_mutex_unlock(&pool->mu);
        if (job == NULL)
            return false;
    }
    *tag = job->tag;
    *code = job->code;
    *reply = job->reply;
    *reply_len = job->reply_len;
    memcpy(msg, job->msg, SIGNER_MESSAGE_MAX);
    free(job);
    assert(pool->pending > 0);
    pool->pending--;
    return true;
}

size_t signer_pool_pending(const signer_pool_t *pool)
{
    assert(pool != NULL);
    return pool->pending;
}

bool signer_pool_healthy(const signer_pool_t *pool)
{
    assert(pool != NULL);
    return atomic_load(&pool->healthy);
}

void signer_pool_destroy(signer_pool_t **pool_p, void (*free_tag)(void *tag))
{
    if (pool_p == NULL || *pool_p == NULL)
        return;
    signer_pool_t *pool = *pool_p;
    pthread_mutex_lock(&pool->mu);
    pool->stopping = true;
    pthread_cond_broadcast(&pool->cv);
    pthread_mutex_unlock(&pool->mu);
    for (size_t i = 0; i < pool->worker_count; i++) {
        if (pool->workers[i].started)
            pthread_join(pool->workers[i].thread, NULL);
        signer_session_destroy(&pool->workers[i].sess);
    }
    /* Workers drain the queue before they exit, so only the done list can hold jobs. */
    assert(pool->queue.count == 0);
    signer_job_t *job;
    while ((job = signer_list_pop(&pool->done)) != NULL) {
        if (free_tag != NULL)
            free_tag(job->tag);
        free(job->reply);
        free(job);
    }
    close(pool->efd);
    pthread_cond_destroy(&pool->cv);
    pthread_mutex_destroy(&pool->mu);
    free(pool);
    *pool_p = NULL;
}
