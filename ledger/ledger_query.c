/* ledger_query.c - the operator queries (check, list_loads, account_statement) on their own
 * thread, each in a read transaction of that thread (see ledger_query.h for why and how).
 *
 * Invariants:
 *   1. Every request handed in gets at most one answer, sent by ledger_query_reply() on the
 *      owner's thread; the query thread never touches the RPC server.
 *   2. in_flight counts the requests queued, running and answered-not-sent; it never exceeds
 *      LEDGER_QUERY_INFLIGHT_MAX, so the two fixed queues never overflow.
 *   3. A query reads only in its own read transaction, begun and aborted on the query thread,
 *      and writes nothing: whatever it finds, the shard is unchanged. */
#include "ledger_query.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "ledger.pb-c.h"
#include "ops_log.h"
#include "proto_decode.h"
#include "proto_limits.h"

/* Internal: a page is full, stop the walk (never returned to a caller). */
#define QUERY_PAGE_FULL QC_ETOOBIG
#define QUERY_METHODS 3

typedef struct query_answer {
    proto_rpc_request_t *req;
    int code;
    char why[LEDGER_WHY_MAX];
    uint8_t *body;
    size_t body_len;
} query_answer_t;

struct ledger_query {
    ledger_store_t *store;
    ledger_saga_t *saga;
    uint32_t shard, shard_count;
    int efd; /* eventfd: readable while answers wait */
    pthread_t thread;
    bool started;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    bool stop;
    size_t in_flight;
    proto_rpc_request_t *todo[LEDGER_QUERY_INFLIGHT_MAX]; /* FIFO ring */
    size_t todo_head, n_todo;
    query_answer_t done[LEDGER_QUERY_INFLIGHT_MAX];
    size_t n_done;
};

typedef void(query_fn)(ledger_query_t *q, MDB_txn *txn, const proto_rpc_request_t *req,
                       query_answer_t *a);

static void refuse(query_answer_t *a, int code, const char *why)
{
    assert(code < 0);
    a->code = code;
    snprintf(a->why, sizeof a->why, "%s", why != NULL ? why : qc_strerror(code));
}

static void pack(query_answer_t *a, const ProtobufCMessage *msg)
{
    int rc = proto_pack(msg, &a->body, &a->body_len);
    if (rc != 0)
        refuse(a, rc, NULL);
}

static uint32_t page_limit(uint32_t asked)
{
    if (asked == 0)
        return LEDGER_LIST_DEFAULT;
    return asked > LEDGER_LIST_PAGE_MAX ? LEDGER_LIST_PAGE_MAX : asked;
}

/* ------------------------------------------------------------ check */

/* check --deep: every record's checksum first (the scrub, on demand, in one pass). Returns
 * false when the answer is made already: an error, or corrupt records (ok false, one problem
 * naming how many; ledger.corrupt_record log lines name each). */
static bool check_deep(ledger_query_t *q, query_answer_t *a, ledger_store_scrub_t *scrub)
{
    bool pass = false;
    int rc = ledger_store_scrub_step(q->store, scrub, SIZE_MAX, &pass);
    if (rc != 0) {
        refuse(a, rc, "the checksum walk could not read the shard");
        return false;
    }
    assert(pass);
    if (scrub->corrupt == 0 && scrub->index_bad == 0)
        return true;
    char problem[2][128];
    char *pp[2];
    size_t n = 0;
    if (scrub->corrupt > 0)
        snprintf(pp[n++] = problem[0], sizeof problem[0],
                 "%" PRIu64 " of %" PRIu64
                 " records failed their checksum (see ledger.corrupt_record)",
                 scrub->corrupt, scrub->checked);
    /* The indexes of loads are derived: a disagreement loses no money, but listings by
     * device, account or time would show what the loads do not hold. */
    if (scrub->index_bad > 0)
        snprintf(pp[n++] = problem[1], sizeof problem[1],
                 "%" PRIu64 " of %" PRIu64
                 " loads and index entries disagree (see ledger.index_mismatch)",
                 scrub->index_bad, scrub->index_checked);
    Qcledger__CheckReply r = QCLEDGER__CHECK_REPLY__INIT;
    r.ok = false;
    r.shard = q->shard;
    r.shard_count = q->shard_count;
    r.problems = pp;
    r.n_problems = n;
    r.checksums_checked = scrub->checked;
    r.checksums_failed = scrub->corrupt;
    pack(a, &r.base);
    return false;
}

static void run_check(ledger_query_t *q, MDB_txn *txn, const proto_rpc_request_t *req,
                      query_answer_t *a)
{
    Qcledger__CheckRequest *cq = qcledger__check_request__unpack(NULL, req->body_len, req->body);
    if (cq == NULL) {
        refuse(a, QC_EDECODE, "request body is not a valid message");
        return;
    }
    bool deep = cq->deep;
    qcledger__check_request__free_unpacked(cq, NULL);
    ledger_store_scrub_t *scrub = calloc(1, sizeof *scrub);
    ledger_check_t *c = malloc(sizeof *c);
    if (c == NULL || scrub == NULL || (deep && !check_deep(q, a, scrub))) {
        if (c == NULL || scrub == NULL)
            refuse(a, QC_ENOMEM, NULL);
        free(c);
        free(scrub);
        return;
    }
    int rc = ledger_saga_check(q->saga, txn, c);
    if (rc != 0) {
        refuse(a, rc, "the check could not read the shard");
        free(c);
        free(scrub);
        return;
    }
    Qcledger__CheckReply r = QCLEDGER__CHECK_REPLY__INIT;
    Qcledger__CurrencyTotals tot[LEDGER_CHECK_CURRENCIES_MAX];
    Qcledger__CurrencyTotals *tp[LEDGER_CHECK_CURRENCIES_MAX];
    char *pp[LEDGER_CHECK_PROBLEMS_MAX];
    assert(c->n_currencies <= LEDGER_CHECK_CURRENCIES_MAX);
    assert(c->n_problems <= LEDGER_CHECK_PROBLEMS_MAX);
    r.ok = c->ok;
    r.shard = q->shard;
    r.shard_count = q->shard_count;
    for (size_t i = 0; i < c->n_currencies; i++) {
        qcledger__currency_totals__init(&tot[i]);
        tot[i].currency = c->currencies[i].currency;
        tot[i].sum = c->currencies[i].sum;
        tot[i].hold = c->currencies[i].hold;
        tot[i].reserved_sum = c->currencies[i].reserved_sum;
        tot[i].float_balance = c->currencies[i].float_balance;
        tp[i] = &tot[i];
    }
    r.n_currencies = c->n_currencies;
    r.currencies = tp;
    for (size_t i = 0; i < c->n_problems; i++)
        pp[i] = c->problems[i];
    r.n_problems = c->n_problems;
    r.problems = pp;
    r.accounts = c->accounts;
    r.devices = c->devices;
    r.loads = c->loads;
    r.reserved = c->reserved;
    r.transfers = c->transfers;
    r.outbox_depth = c->outbox_depth;
    r.checksums_checked = scrub->checked;
    r.checksums_failed = scrub->corrupt;
    pack(a, &r.base);
    if (!c->ok)
        ops_logf(OPS_LOG_ERROR, "ledger.check_failed", "%llu problems, first: %s",
                 (unsigned long long)c->problem_count, c->problems[0]);
    free(c);
    free(scrub);
}

/* ------------------------------------------------------------ list_loads */

/* A load of a page: the record without its signed evidence (a ledger_load_t holds three
 * envelopes, about 25 KiB; this is under 1 KiB). */
typedef struct list_item {
    uint8_t txn_id[LEDGER_TXN_ID_SIZE];
    Quancun__LoadState state;
    int64_t amount;
    uint32_t currency;
    char device_id[LEDGER_DEVICE_ID_MAX + 1];
    char account_id[LEDGER_ID_MAX + 1];
    uint64_t counter, deadline_ms, created_ms, updated_ms;
    char reason[LEDGER_REASON_MAX + 1];
    bool flagged;
} list_item_t;

static void item_copy(list_item_t *it, const ledger_load_t *l)
{
    memcpy(it->txn_id, l->txn_id, LEDGER_TXN_ID_SIZE);
    it->state = l->state;
    it->amount = l->amount;
    it->currency = l->currency;
    memcpy(it->device_id, l->device_id, sizeof it->device_id);
    memcpy(it->account_id, l->account_id, sizeof it->account_id);
    it->counter = l->counter;
    it->deadline_ms = l->deadline_ms;
    it->created_ms = l->created_ms;
    it->updated_ms = l->updated_ms;
    memcpy(it->reason, l->reason, sizeof it->reason);
    it->flagged = l->flagged;
}

/* The message of it, pointing into it (valid while it lives). */
static void item_view(const list_item_t *it, Qcledger__Load *m)
{
    qcledger__load__init(m);
    m->txn_id.data = (uint8_t *)it->txn_id;
    m->txn_id.len = LEDGER_TXN_ID_SIZE;
    m->state = it->state;
    m->amount = it->amount;
    m->currency = it->currency;
    m->device_id = (char *)it->device_id;
    m->account_id = (char *)it->account_id;
    m->counter = it->counter;
    m->deadline_ms = it->deadline_ms;
    m->reason = (char *)it->reason;
    m->created_ms = it->created_ms;
    m->updated_ms = it->updated_ms;
    m->flagged = it->flagged;
}

typedef struct list_ctx {
    const Qcledger__ListLoadsRequest *m;
    uint32_t limit;
    list_item_t *items; /* the page */
    size_t n;
    size_t bytes;                     /* packed size of the page's loads */
    uint64_t scanned;                 /* records read */
    uint8_t last[LEDGER_TXN_ID_SIZE]; /* the last record read */
    bool cut;                         /* the walk stopped before the end */
} list_ctx_t;

static bool load_matches(const Qcledger__ListLoadsRequest *m, const ledger_load_t *l)
{
    if (m->state != QUANCUN__LOAD_STATE__LOAD_NONE && l->state != m->state)
        return false;
    if (m->device_id[0] != '\0' && strcmp(l->device_id, m->device_id) != 0)
        return false;
    if (m->account_id[0] != '\0' && strcmp(l->account_id, m->account_id) != 0)
        return false;
    if (m->since_ms != 0 && l->created_ms < m->since_ms)
        return false;
    return m->until_ms == 0 || l->created_ms < m->until_ms;
}

static int list_visit(void *arg, const ledger_load_t *l)
{
    list_ctx_t *c = arg;
    if (c->n == c->limit || c->scanned == LEDGER_LIST_SCAN_MAX) {
        c->cut = true;
        return QUERY_PAGE_FULL;
    }
    c->scanned++;
    if (load_matches(c->m, l)) {
        list_item_t *it = &c->items[c->n];
        item_copy(it, l);
        Qcledger__Load view;
        item_view(it, &view);
        size_t sz = qcledger__load__get_packed_size(&view) + 8; /* tag and length */
        if (c->bytes + sz > LEDGER_LIST_REPLY_MAX) {
            c->scanned--; /* this one starts the next page */
            c->cut = true;
            return QUERY_PAGE_FULL;
        }
        c->bytes += sz;
        c->n++;
    }
    memcpy(c->last, l->txn_id, LEDGER_TXN_ID_SIZE);
    return 0;
}

/* The index a filter reads (ledger_store_index.h): the device's entries when a device is
 * asked, else the account's, else the window's in the time index; with no filter but the state
 * (or none) the whole shard is read in txn id order, as before the indexes. False then. */
static bool list_range(const Qcledger__ListLoadsRequest *m, ledger_index_range_t *r)
{
    memset(r, 0, sizeof *r);
    r->since_ms = m->since_ms;
    r->until_ms = m->until_ms;
    if (m->device_id[0] != '\0') {
        r->kind = LEDGER_INDEX_DEVICE;
        r->id = m->device_id;
    } else if (m->account_id[0] != '\0') {
        r->kind = LEDGER_INDEX_ACCOUNT;
        r->id = m->account_id;
    } else if (m->since_ms != 0 || m->until_ms != 0) {
        r->kind = LEDGER_INDEX_TIME;
    } else {
        return false;
    }
    return true;
}

/* The cursor of an indexed page is still a txn id (the last load of the page before, as qcctl
 * passes it): its place in the index is that load's creation time and txn id. Returns 0,
 * QC_ENOTFOUND (no such load) or what the read returns. */
static int list_cursor(ledger_query_t *q, MDB_txn *txn, const Qcledger__ListLoadsRequest *m,
                       ledger_index_range_t *r)
{
    assert(m->after_txn.len == LEDGER_TXN_ID_SIZE);
    ledger_load_t *l = malloc(sizeof *l);
    if (l == NULL)
        return QC_ENOMEM;
    int rc = ledger_store_load_get(q->store, txn, m->after_txn.data, l);
    if (rc == 0) {
        r->after_txn = m->after_txn.data;
        r->after_ms = l->created_ms;
    }
    free(l);
    return rc;
}

static void run_list_loads(ledger_query_t *q, MDB_txn *txn, const proto_rpc_request_t *req,
                           query_answer_t *a)
{
    Qcledger__ListLoadsRequest *m =
        qcledger__list_loads_request__unpack(NULL, req->body_len, req->body);
    if (m == NULL) {
        refuse(a, QC_EDECODE, "request body is not a valid message");
        return;
    }
    list_ctx_t c = {.m = m, .limit = page_limit(m->limit)};
    if (m->after_txn.len != 0 && m->after_txn.len != LEDGER_TXN_ID_SIZE) {
        refuse(a, QC_EDECODE, "after_txn must be empty or 16 bytes");
        goto out;
    }
    if (m->until_ms != 0 && m->until_ms <= m->since_ms) {
        refuse(a, QC_EINVAL, "until_ms must be after since_ms");
        goto out;
    }
    c.items = malloc(c.limit * sizeof *c.items);
    if (c.items == NULL) {
        refuse(a, QC_ENOMEM, NULL);
        goto out;
    }
    ledger_index_range_t range;
    int rc;
    if (list_range(m, &range)) {
        if (m->after_txn.len != 0 && (rc = list_cursor(q, txn, m, &range)) != 0) {
            refuse(a, rc == QC_ENOTFOUND ? QC_EINVAL : rc,
                   rc == QC_ENOTFOUND ? "after_txn names no load of this shard" : NULL);
            goto out;
        }
        rc = ledger_store_each_load_in(q->store, txn, &range, list_visit, &c);
    } else {
        rc = ledger_store_each_load_after(
            q->store, txn, m->after_txn.len != 0 ? m->after_txn.data : NULL, list_visit, &c);
    }
    if (rc != 0 && rc != QUERY_PAGE_FULL) {
        refuse(a, rc, "the loads could not be read");
        goto out;
    }
    assert(c.n <= c.limit);
    Qcledger__Load *views = calloc(c.n + 1, sizeof *views);
    Qcledger__Load **ptrs = calloc(c.n + 1, sizeof *ptrs);
    if (views == NULL || ptrs == NULL) {
        refuse(a, QC_ENOMEM, NULL);
    } else {
        for (size_t i = 0; i < c.n; i++) {
            item_view(&c.items[i], &views[i]);
            ptrs[i] = &views[i];
        }
        Qcledger__ListLoadsReply r = QCLEDGER__LIST_LOADS_REPLY__INIT;
        r.n_loads = c.n;
        r.loads = ptrs;
        r.scanned = c.scanned;
        /* A page cut short names the last record read: the next page starts after it. */
        if (c.cut && c.scanned > 0) {
            r.next_after.data = c.last;
            r.next_after.len = LEDGER_TXN_ID_SIZE;
        }
        pack(a, &r.base);
    }
    free(views);
    free(ptrs);
out:
    free(c.items);
    qcledger__list_loads_request__free_unpacked(m, NULL);
}

/* ------------------------------------------------------------ account_statement */

typedef struct stmt_move {
    uint64_t time_ms;
    uint8_t txn_id[LEDGER_TXN_ID_SIZE];
    Qcledger__TransferKind kind;
    int64_t delta; /* > 0 credits the account */
    char other[LEDGER_ID_MAX + 1];
} stmt_move_t;

typedef struct stmt_ctx {
    const Qcledger__StatementRequest *m;
    stmt_move_t cursor;
    stmt_move_t *moves; /* the account's movements after the cursor */
    size_t n, cap;
    bool too_many;
} stmt_ctx_t;

/* Statement order: time, then txn id, then kind (a load's transfers in the order they
 * happen). */
static int move_cmp(const void *pa, const void *pb)
{
    const stmt_move_t *a = pa, *b = pb;
    if (a->time_ms != b->time_ms)
        return a->time_ms < b->time_ms ? -1 : 1;
    int c = memcmp(a->txn_id, b->txn_id, LEDGER_TXN_ID_SIZE);
    if (c != 0)
        return c;
    return (int)a->kind - (int)b->kind;
}

static int stmt_visit(void *arg, const ledger_transfer_t *t)
{
    stmt_ctx_t *c = arg;
    bool debit = strcmp(t->debit, c->m->account_id) == 0;
    bool credit = strcmp(t->credit, c->m->account_id) == 0;
    if (!debit && !credit)
        return 0;
    stmt_move_t mv = {
        .time_ms = t->time_ms, .kind = t->kind, .delta = debit ? -t->amount : t->amount};
    memcpy(mv.txn_id, t->txn_id, LEDGER_TXN_ID_SIZE);
    snprintf(mv.other, sizeof mv.other, "%s", debit ? t->credit : t->debit);
    if (move_cmp(&mv, &c->cursor) <= 0)
        return 0;
    if (c->n == LEDGER_STATEMENT_MOVES_MAX) {
        c->too_many = true;
        return QUERY_PAGE_FULL;
    }
    /* The index hands them in statement order (ledger_store_each_move()). */
    assert(c->n == 0 || move_cmp(&c->moves[c->n - 1], &mv) < 0);
    if (c->n == c->cap) {
        size_t cap = c->cap != 0 ? 2 * c->cap : 256;
        stmt_move_t *n = realloc(c->moves, cap * sizeof *n);
        if (n == NULL)
            return QC_ENOMEM;
        c->moves = n;
        c->cap = cap;
    }
    c->moves[c->n++] = mv;
    return 0;
}

static bool in_window(const Qcledger__StatementRequest *m, uint64_t time_ms)
{
    return time_ms >= m->since_ms && (m->until_ms == 0 || time_ms < m->until_ms);
}

/* The page of c's sorted movements: balance is the account's balance now, from which the
 * balance before the first movement after the cursor follows (every transfer of the account
 * is in its balance: invariant 1 of ledger_saga.c, which the check replays). */
static void stmt_page(stmt_ctx_t *c, const ledger_account_t *acct, query_answer_t *a)
{
    uint32_t limit = page_limit(c->m->limit);
    int64_t running = acct->balance;
    for (size_t i = 0; i < c->n; i++)
        running -= c->moves[i].delta;
    Qcledger__StatementLine *lines = calloc(limit, sizeof *lines);
    Qcledger__StatementLine **ptrs = calloc(limit, sizeof *ptrs);
    if (lines == NULL || ptrs == NULL) {
        free(lines);
        free(ptrs);
        refuse(a, QC_ENOMEM, NULL);
        return;
    }
    Qcledger__StatementReply r = QCLEDGER__STATEMENT_REPLY__INIT;
    Qcledger__Account am;
    ledger_store_account_view(acct, &am);
    r.account = &am;
    size_t n = 0;
    bool opened = false;
    for (size_t i = 0; i < c->n; i++) {
        const stmt_move_t *mv = &c->moves[i];
        bool shown = in_window(c->m, mv->time_ms);
        if (shown && n == limit) {
            r.more = true;
            break;
        }
        if (!opened && mv->time_ms >= c->m->since_ms) {
            r.opening_balance = running; /* the balance where the window starts */
            opened = true;
        }
        running += mv->delta;
        if (!shown)
            continue;
        Qcledger__StatementLine *ln = &lines[n];
        qcledger__statement_line__init(ln);
        ln->txn_id.data = (uint8_t *)mv->txn_id;
        ln->txn_id.len = LEDGER_TXN_ID_SIZE;
        ln->kind = mv->kind;
        ln->amount = mv->delta;
        ln->balance = running;
        ln->time_ms = mv->time_ms;
        ln->counterparty = (char *)mv->other;
        ptrs[n++] = ln;
    }
    if (!opened)
        r.opening_balance = running; /* every movement is before the window */
    r.n_lines = n;
    r.lines = ptrs;
    pack(a, &r.base);
    free(lines);
    free(ptrs);
}

static void run_statement(ledger_query_t *q, MDB_txn *txn, const proto_rpc_request_t *req,
                          query_answer_t *a)
{
    Qcledger__StatementRequest *m =
        qcledger__statement_request__unpack(NULL, req->body_len, req->body);
    if (m == NULL) {
        refuse(a, QC_EDECODE, "request body is not a valid message");
        return;
    }
    stmt_ctx_t c = {.m = m, .cursor = {.time_ms = m->after_time_ms, .kind = m->after_kind}};
    ledger_account_t acct;
    int rc;
    if (m->after_txn.len != 0 && m->after_txn.len != LEDGER_TXN_ID_SIZE) {
        refuse(a, QC_EDECODE, "after_txn must be empty or 16 bytes");
        goto out;
    }
    if (m->until_ms != 0 && m->until_ms <= m->since_ms) {
        refuse(a, QC_EINVAL, "until_ms must be after since_ms");
        goto out;
    }
    if (m->after_txn.len != 0)
        memcpy(c.cursor.txn_id, m->after_txn.data, LEDGER_TXN_ID_SIZE);
    if ((rc = ledger_store_account_get(q->store, txn, m->account_id, &acct)) != 0) {
        refuse(a, rc == QC_ENOTFOUND ? QC_EUNKNOWNACCT : rc,
               rc == QC_ENOTFOUND ? "no such account on this shard" : NULL);
        goto out;
    }
    /* The account's movements from the later of the window's start and the cursor: the balance
     * before the first of them follows from the balance now, so none before is read. */
    ledger_index_move_t after = {.time_ms = c.cursor.time_ms, .kind = (uint8_t)c.cursor.kind};
    memcpy(after.txn_id, c.cursor.txn_id, LEDGER_TXN_ID_SIZE);
    bool cursor = m->after_time_ms != 0 || m->after_txn.len != 0 || m->after_kind != 0;
    rc = ledger_store_each_move(q->store, txn, m->account_id, m->since_ms, cursor ? &after : NULL,
                                stmt_visit, &c);
    if (c.too_many) {
        char why[LEDGER_WHY_MAX];
        snprintf(why, sizeof why,
                 "more than %d movements after the cursor: ask for a window (since, until)",
                 LEDGER_STATEMENT_MOVES_MAX);
        refuse(a, QC_ELIMIT, why);
        goto out;
    }
    if (rc != 0) {
        refuse(a, rc, "the transfers could not be read");
        goto out;
    }
    stmt_page(&c, &acct, a);
out:
    free(c.moves);
    qcledger__statement_request__free_unpacked(m, NULL);
}

/* ------------------------------------------------------------ the thread */

static const struct {
    const char *method;
    query_fn *run;
} query_methods[QUERY_METHODS] = {
    {"check", run_check},
    {"list_loads", run_list_loads},
    {"account_statement", run_statement},
};

bool ledger_query_serves(const char *method)
{
    assert(method != NULL);
    for (size_t i = 0; i < QUERY_METHODS; i++)
        if (strcmp(query_methods[i].method, method) == 0)
            return true;
    return false;
}

/* Runs one request in a read transaction of this thread (invariant 3). */
static void run_one(ledger_query_t *q, proto_rpc_request_t *req, query_answer_t *a)
{
    memset(a, 0, sizeof *a);
    a->req = req;
    MDB_txn *txn = NULL;
    int rc = ledger_store_txn_begin(q->store, NULL, false, &txn);
    if (rc != 0) {
        refuse(a, rc, "no read transaction");
        return;
    }
    bool ran = false;
    for (size_t i = 0; i < QUERY_METHODS && !ran; i++) {
        if (strcmp(query_methods[i].method, req->method) == 0) {
            query_methods[i].run(q, txn, req, a);
            ran = true;
        }
    }
    ledger_store_txn_abort(txn);
    assert(ran); /* submit() takes only what ledger_query_serves() */
    assert(a->code <= 0);
    assert(a->code != 0 || a->body != NULL || a->body_len == 0);
}

static void *query_thread(void *arg)
{
    ledger_query_t *q = arg;
    pthread_mutex_lock(&q->lock);
    for (;;) {
        while (!q->stop && q->n_todo == 0)
            pthread_cond_wait(&q->wake, &q->lock);
        if (q->stop)
            break;
        proto_rpc_request_t *req = q->todo[q->todo_head];
        q->todo[q->todo_head] = NULL;
        q->todo_head = (q->todo_head + 1) % LEDGER_QUERY_INFLIGHT_MAX;
        q->n_todo--;
        pthread_mutex_unlock(&q->lock);
        query_answer_t a;
        run_one(q, req, &a);
        pthread_mutex_lock(&q->lock);
        assert(q->n_done < LEDGER_QUERY_INFLIGHT_MAX); /* invariant 2 */
        q->done[q->n_done++] = a;
        uint64_t one = 1;
        if (write(q->efd, &one, sizeof one) != (ssize_t)sizeof one)
            ops_log(OPS_LOG_ERROR, "ledger.query_wake_failed", "error", strerror(errno), NULL);
    }
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

int ledger_query_new(ledger_store_t *store, ledger_saga_t *saga, uint32_t shard,
                     uint32_t shard_count, ledger_query_t **out)
{
    assert(store != NULL);
    assert(saga != NULL);
    assert(out != NULL);
    *out = NULL;
    ledger_query_t *q = calloc(1, sizeof *q);
    if (q == NULL)
        return QC_ENOMEM;
    q->store = store;
    q->saga = saga;
    q->shard = shard;
    q->shard_count = shard_count;
    q->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->wake, NULL);
    if (q->efd < 0 || pthread_create(&q->thread, NULL, query_thread, q) != 0) {
        ops_log(OPS_LOG_ERROR, "ledger.query_thread_failed", "error", strerror(errno), NULL);
        ledger_query_destroy(&q);
        return QC_EIO;
    }
    q->started = true;
    *out = q;
    return 0;
}

int ledger_query_submit(ledger_query_t *q, proto_rpc_request_t **req)
{
    assert(q != NULL);
    assert(req != NULL);
    assert(*req != NULL);
    assert(ledger_query_serves((*req)->method));
    pthread_mutex_lock(&q->lock);
    if (q->in_flight == LEDGER_QUERY_INFLIGHT_MAX) {
        pthread_mutex_unlock(&q->lock);
        return QC_EBUSY;
    }
    assert(q->n_todo < LEDGER_QUERY_INFLIGHT_MAX); /* invariant 2 */
    q->todo[(q->todo_head + q->n_todo) % LEDGER_QUERY_INFLIGHT_MAX] = *req;
    q->n_todo++;
    q->in_flight++;
    *req = NULL;
    pthread_cond_signal(&q->wake);
    pthread_mutex_unlock(&q->lock);
    return 0;
}

int ledger_query_fd(const ledger_query_t *q)
{
    assert(q != NULL);
    return q->efd;
}

size_t ledger_query_reply(ledger_query_t *q, proto_rpc_server_t *srv)
{
    assert(q != NULL);
    assert(srv != NULL);
    query_answer_t ready[LEDGER_QUERY_INFLIGHT_MAX];
    uint64_t count = 0;
    /* Drained before the queue is read: an answer queued after this read wakes us again. */
    if (read(q->efd, &count, sizeof count) < 0 && errno != EAGAIN)
        ops_log(OPS_LOG_WARN, "ledger.query_wake_failed", "error", strerror(errno), NULL);
    pthread_mutex_lock(&q->lock);
    size_t n = q->n_done;
    memcpy(ready, q->done, n * sizeof *ready);
    q->n_done = 0;
    pthread_mutex_unlock(&q->lock);
    for (size_t i = 0; i < n; i++) {
        query_answer_t *a = &ready[i];
        int rc = proto_rpc_server_reply(srv, a->req, a->code, a->code != 0 ? a->why : NULL, a->body,
                                        a->body_len);
        if (rc != 0)
            ops_log(OPS_LOG_WARN, "ledger.reply_failed", "method", a->req->method, "error",
                    qc_strerror(rc), NULL);
        free(a->body);
        proto_rpc_request_destroy(&a->req);
    }
    pthread_mutex_lock(&q->lock);
    assert(q->in_flight >= n);
    q->in_flight -= n; /* invariant 1: answered once, and gone */
    pthread_mutex_unlock(&q->lock);
    return n;
}

void ledger_query_destroy(ledger_query_t **q_p)
{
    if (q_p == NULL || *q_p == NULL)
        return;
    ledger_query_t *q = *q_p;
    if (q->started) {
        pthread_mutex_lock(&q->lock);
        q->stop = true;
        pthread_cond_signal(&q->wake);
        pthread_mutex_unlock(&q->lock);
        pthread_join(q->thread, NULL);
    }
    for (size_t i = 0; i < q->n_todo; i++)
        proto_rpc_request_destroy(&q->todo[(q->todo_head + i) % LEDGER_QUERY_INFLIGHT_MAX]);
    for (size_t i = 0; i < q->n_done; i++) {
        free(q->done[i].body);
        proto_rpc_request_destroy(&q->done[i].req);
    }
    if (q->efd >= 0)
        close(q->efd);
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->wake);
    free(q);
    *q_p = NULL;
}
