/* ledger_membership.c - a membership change of a replica group on its leader (the state
 * machine and its invariants are in ledger_membership.h).
 *
 *   add:    [ADDING] --raft_add done--> [STANDBY] --raft_assign(STANDBY) done--> [CATCHING_UP]
 *           [CATCHING_UP] --lag <= PROMOTE_LAG--> [PROMOTING] --raft_assign(VOTER) done--> DONE
 *           [PROMOTING] --RAFT_NOCONNECTION, tries left--> [CATCHING_UP]
 *   remove: [REMOVING] --raft_remove done--> DONE
 *   any error, leadership lost, a stall or the deadline --> FAILED
 * Each transition is made by membership_step() (a request's status) or catch_up_step(). */
#include "ledger_membership.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_log.h"

typedef enum {
    ST_ADDING,
    ST_STANDBY,
    ST_CATCHING_UP,
    ST_PROMOTING,
    ST_REMOVING,
    ST_DONE,
    ST_FAILED,
} membership_state_t;

struct ledger_membership {
    struct raft_change req; /* the request in flight; req.data is this change */
    struct raft *rf;
    uint64_t id;
    char address[LEDGER_MEMBERSHIP_ADDRESS_MAX];
    membership_state_t state;
    bool in_flight; /* invariant 1: set by a request, cleared by its callback */
    int status;     /* of the last request, set by its callback */
    int code;       /* 0 or the QC_E* code of the failure */
    unsigned promote_tries;
    uint64_t started_ms;
    uint64_t moved_ms; /* when the standby's match index last moved */
    uint64_t last_match;
    uint64_t progress_ms; /* the last progress line */
    char why[LEDGER_MEMBERSHIP_WHY_MAX];
};

int ledger_membership_qc(int rv)
{
    switch (rv) {
    case 0:
        return 0;
    case RAFT_NOTLEADER:
    case RAFT_LEADERSHIPLOST:
        return QC_ENOTLEADER;
    case RAFT_CANTCHANGE:
        return QC_EBUSY;
    case RAFT_DUPLICATEID:
    case RAFT_DUPLICATEADDRESS:
        return QC_EEXIST;
    case RAFT_BADID:
    case RAFT_BADROLE:
    case RAFT_NOTFOUND:
        return QC_EINVAL;
    case RAFT_NOMEM:
        return QC_ENOMEM;
    default:
        return QC_EUNAVAIL;
    }
}

static void change_cb(struct raft_change *req, int status)
{
    ledger_membership_t *m = req->data;
    assert(m != NULL);
    assert(m->in_flight);
    m->in_flight = false;
    m->status = status;
}

/* Ends the change with code (invariant 2) and a reason, logged. */
static int fail(ledger_membership_t *m, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(ledger_membership_t *m, int code, const char *fmt, ...)
{
    assert(code < 0);
    assert(m->state != ST_DONE);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->why, sizeof m->why, fmt, ap);
    va_end(ap);
    m->state = ST_FAILED;
    m->code = code;
    ops_logf(OPS_LOG_WARN, "ledger.replica_change_failed", "replica %" PRIu64 ": %s", m->id,
             m->why);
    return code;
}

static int server_index(const struct raft *rf, uint64_t id)
{
    for (unsigned i = 0; i < rf->configuration.n; i++)
        if (rf->configuration.servers[i].id == id)
            return (int)i;
    return -1;
}

/* Sends raft_assign(role) for m's replica; the next state on success. */
static int assign(ledger_membership_t *m, int role, membership_state_t next)
{
    m->in_flight = true;
    int rv = raft_assign(m->rf, &m->req, m->id, role, change_cb);
    if (rv != 0) {
        m->in_flight = false;
        return fail(m, ledger_membership_qc(rv), "raft_assign(%s): %s",
                    role == RAFT_VOTER ? "voter" : "standby", raft_strerror(rv));
    }
    m->state = next;
    return LEDGER_MEMBERSHIP_PENDING;
}

static void catching_up(ledger_membership_t *m, uint64_t now_ms)
{
    m->state = ST_CATCHING_UP;
    m->moved_ms = now_ms;
    m->last_match = 0;
}

static ledger_membership_t *membership_new(struct raft *rf, uint64_t id, uint64_t now_ms)
{
    ledger_membership_t *m = calloc(1, sizeof *m);
    if (m == NULL)
        return NULL;
    m->rf = rf;
    m->id = id;
    m->req.data = m;
    m->started_ms = now_ms;
    m->progress_ms = now_ms;
    return m;
}

int ledger_membership_add(struct raft *rf, uint64_t id, const char *address, uint64_t now_ms,
                          ledger_membership_t **out)
{
    assert(rf != NULL);
    assert(id > 0);
    assert(address != NULL);
    assert(out != NULL);
    *out = NULL;
    if (raft_state(rf) != RAFT_LEADER)
        return QC_ENOTLEADER;
    int at = server_index(rf, id);
    if (at >= 0 && rf->configuration.servers[at].role == RAFT_VOTER)
        return 1;
    ledger_membership_t *m = membership_new(rf, id, now_ms);
    if (m == NULL)
        return QC_ENOMEM;
    snprintf(m->address, sizeof m->address, "%s", address);
    int rc = 0;
    if (at < 0) {
        m->in_flight = true;
        int rv = raft_add(rf, &m->req, id, address, change_cb);
        m->in_flight = rv == 0;
        m->state = ST_ADDING;
        rc = ledger_membership_qc(rv);
    } else if (rf->configuration.servers[at].role == RAFT_SPARE) {
        rc = assign(m, RAFT_STANDBY, ST_STANDBY) < 0 ? m->code : 0;
    } else {
        catching_up(m, now_ms); /* a standby already: an earlier add that did not finish */
    }
    if (rc != 0) {
        free(m);
        return rc;
    }
    ops_logf(OPS_LOG_INFO, "ledger.replica_change", "replica %" PRIu64 " at %s: adding", id,
             address);
    *out = m;
    return 0;
}

int ledger_membership_remove(struct raft *rf, uint64_t id, uint64_t now_ms,
                             ledger_membership_t **out)
{
    assert(rf != NULL);
    assert(id > 0);
    assert(out != NULL);
    *out = NULL;
    if (raft_state(rf) != RAFT_LEADER)
        return QC_ENOTLEADER;
    if (server_index(rf, id) < 0)
        return 1;
    ledger_membership_t *m = membership_new(rf, id, now_ms);
    if (m == NULL)
        return QC_ENOMEM;
    m->in_flight = true;
    int rv = raft_remove(rf, &m->req, id, change_cb);
    if (rv != 0) {
        free(m);
        return ledger_membership_qc(rv);
    }
    m->state = ST_REMOVING;
    ops_logf(OPS_LOG_INFO, "ledger.replica_change", "replica %" PRIu64 ": removing", id);
    *out = m;
    return 0;
}

/* The last request finished with m->status: the next step. */
static int membership_step(ledger_membership_t *m, uint64_t now_ms)
{
    int st = m->status;
    switch (m->state) {
    case ST_ADDING:
        if (st != 0)
            return fail(m, ledger_membership_qc(st), "raft_add: %s", raft_strerror(st));
        return assign(m, RAFT_STANDBY, ST_STANDBY);
    case ST_STANDBY:
        if (st != 0)
            return fail(m, ledger_membership_qc(st), "raft_assign(standby): %s", raft_strerror(st));
        ops_logf(OPS_LOG_INFO, "ledger.replica_change",
                 "replica %" PRIu64 ": a standby, catching up before it votes", m->id);
        catching_up(m, now_ms);
        return LEDGER_MEMBERSHIP_PENDING;
    case ST_PROMOTING:
        if (st == 0)
            break;
        if (st != RAFT_NOCONNECTION)
            return fail(m, ledger_membership_qc(st), "raft_assign(voter): %s", raft_strerror(st));
        /* libraft gave up a catch-up round (longer than its bounds): wait and try again. */
        if (++m->promote_tries >= LEDGER_MEMBERSHIP_PROMOTE_TRIES)
            return fail(m, QC_EUNAVAIL,
                        "libraft aborted its promotion %u times (a catch-up round longer than "
                        "its bounds): it stays a standby; is it applying slowly?",
                        m->promote_tries);
        ops_logf(OPS_LOG_INFO, "ledger.replica_change",
                 "replica %" PRIu64 ": promotion aborted by libraft (%u of %d), catching up", m->id,
                 m->promote_tries, LEDGER_MEMBERSHIP_PROMOTE_TRIES);
        catching_up(m, now_ms);
        return LEDGER_MEMBERSHIP_PENDING;
    case ST_REMOVING:
        if (st != 0)
            return fail(m, ledger_membership_qc(st), "raft_remove: %s", raft_strerror(st));
        break;
    default:
        assert(0);
    }
    m->state = ST_DONE;
    ops_logf(OPS_LOG_INFO, "ledger.replica_change", "replica %" PRIu64 ": done in %" PRIu64 " ms",
             m->id, now_ms - m->started_ms);
    return 0;
}

/* A standby catching up: promote it once close to the leader's last index. */
static int catch_up_step(ledger_membership_t *m, uint64_t now_ms)
{
    struct raft *rf = m->rf;
    int at = server_index(rf, m->id);
    if (at < 0)
        return fail(m, QC_EUNAVAIL, "it left the configuration during the change");
    assert(rf->leader_state.progress != NULL);
    uint64_t match = rf->leader_state.progress[at].match_index;
    uint64_t last = raft_last_index(rf);
    if (match != m->last_match) {
        m->last_match = match;
        m->moved_ms = now_ms;
    }
    if (match + LEDGER_MEMBERSHIP_PROMOTE_LAG >= last)
        return assign(m, RAFT_VOTER, ST_PROMOTING);
    if (now_ms - m->moved_ms > LEDGER_MEMBERSHIP_STALL_MS)
        return fail(m, QC_EUNAVAIL,
                    "not catching up: it holds the log up to %" PRIu64 " of %" PRIu64
                    ", unchanged for %d s; is it running with join = true, reachable at %s, "
                    "and does its replicas_file list this leader? It stays a standby",
                    match, last, LEDGER_MEMBERSHIP_STALL_MS / 1000, m->address);
    if (now_ms - m->started_ms > LEDGER_MEMBERSHIP_CHANGE_MS)
        return fail(m, QC_ETIMEOUT,
                    "not caught up within %d s: it holds the log up to %" PRIu64 " of %" PRIu64
                    "; it stays a standby",
                    LEDGER_MEMBERSHIP_CHANGE_MS / 1000, match, last);
    if (now_ms - m->progress_ms >= LEDGER_MEMBERSHIP_PROGRESS_MS) {
        m->progress_ms = now_ms;
        ops_logf(OPS_LOG_INFO, "ledger.replica_catching_up",
                 "replica %" PRIu64 ": a standby holding the log up to %" PRIu64 " of %" PRIu64,
                 m->id, match, last);
    }
    return LEDGER_MEMBERSHIP_PENDING;
}

int ledger_membership_tick(ledger_membership_t *m, uint64_t now_ms)
{
    assert(m != NULL);
    if (m->state == ST_DONE)
        return 0;
    if (m->state == ST_FAILED)
        return m->code;
    if (m->in_flight)
        return LEDGER_MEMBERSHIP_PENDING; /* libraft calls back, leadership lost included */
    if (m->state != ST_CATCHING_UP)
        return membership_step(m, now_ms);
    if (raft_state(m->rf) != RAFT_LEADER)
        return fail(m, QC_ENOTLEADER,
                    "this replica stopped leading during the change: it stays a standby; run "
                    "the same add-replica again (it goes to the new leader)");
    return catch_up_step(m, now_ms);
}

const char *ledger_membership_why(const ledger_membership_t *m)
{
    assert(m != NULL);
    return m->why;
}

uint64_t ledger_membership_id(const ledger_membership_t *m)
{
    assert(m != NULL);
    return m->id;
}

void ledger_membership_destroy(ledger_membership_t **m_p)
{
    if (m_p == NULL || *m_p == NULL)
        return;
    ledger_membership_t *m = *m_p;
    assert(!m->in_flight); /* libraft closed first: its callback ran */
    free(m);
    *m_p = NULL;
}
