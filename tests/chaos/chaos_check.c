/* chaos_check.c - proves the bank invariants of a chaos run from the facts gathered after it.
 *
 * The facts file is what tests/chaos/qc-chaos-check collected from the ledger (qcctl), the
 * devices (qc-wallet status and log), the run's history and the audit log. One fact a line,
 * fields separated by one TAB, the first field naming the fact:
 *
 *   currency SHARD CUR SUM HOLD RESERVED_SUM FLOAT   qcctl check, per shard and currency
 *   shard    SHARD LOADS RESERVED OUTBOX_DEPTH       qcctl check, per shard
 *   problem  SHARD TEXT                              qcctl check: a broken ledger invariant
 *   account  ID CUR BALANCE FUNDING                  qcctl account show; what the run deposited
 *   load     TXN STATE ACCOUNT AMOUNT                qcctl load show (STATE NONE: not on the
 * ledger) wallet   NAME BALANCE COUNTER PHASE              qc-wallet status (amounts in minor
 * units) wlog     NAME SEQ EVENT TXN BALANCE COUNTER AMOUNT OUTCOME qc-wallet log ("-" for an empty
 * field) ack      NAME TXN OUTCOME                        an outcome a call of the run was told
 *   card     NAME BALANCE                            qc-card status (minor units): an IC card
 *   audit    STATUS                                  ok, failed or pending (no audit service)
 *   aentry   SOURCE SOURCE_SEQ TYPE TXN              qc-audit export (TXN "-" when none)
 *   replica  SHARD ENDPOINT OK TOTALS                qcctl check --replicas, one a replica:
 *                                                    OK true|false, TOTALS its counts and
 *                                                    currency sums as one opaque string
 *
 * Lines starting with '#' and empty lines are ignored. Nothing here trusts the run: every
 * property is recomputed from what the ledger, the devices and the audit log hold now. */
#include "chaos_check.h"

#include "qc_error.h"

#include <assert.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHAOS_LINE_MAX 1024
#define CHAOS_FIELDS_MAX 10
#define CHAOS_ID_MAX 64
#define CHAOS_NAME_MAX 32
/* A failed property names at most this many offenders: enough to start debugging. */
#define CHAOS_SHOW_MAX 5

typedef struct {
    long shard;
    long currency;
    int64_t sum, hold, reserved_sum, floats;
} chaos_currency_t;

typedef struct {
    long shard;
    int64_t loads, reserved, outbox_depth;
} chaos_shard_t;

typedef struct {
    char id[CHAOS_ID_MAX];
    long currency;
    int64_t balance, funding;
    int64_t confirmed; /* replayed: sum of CONFIRMED and LATE_CONFIRMED loads */
} chaos_account_t;

typedef struct {
    char txn[CHAOS_ID_MAX];
    char state[CHAOS_NAME_MAX];
    char account[CHAOS_ID_MAX];
    int64_t amount;
    int applied;       /* load.applied lines naming it, over every wallet */
    int audit_seen[4]; /* audit entries: reserved, confirmed, compensated, late_confirmed */
} chaos_load_t;

typedef struct {
    char name[CHAOS_NAME_MAX];
    int64_t balance;
    int64_t counter;
    char phase[CHAOS_NAME_MAX];
} chaos_wallet_t;

typedef struct {
    char name[CHAOS_NAME_MAX];
    int64_t balance;
} chaos_card_t;

typedef struct {
    char wallet[CHAOS_NAME_MAX];
    int64_t seq;
    char event[CHAOS_NAME_MAX];
    char txn[CHAOS_ID_MAX];
    int64_t balance, counter, amount;
    char outcome[CHAOS_NAME_MAX];
} chaos_wlog_t;

typedef struct {
    char wallet[CHAOS_NAME_MAX];
    char txn[CHAOS_ID_MAX];
    char outcome[CHAOS_NAME_MAX];
} chaos_ack_t;

typedef struct {
    long shard;
    char endpoint[CHAOS_ID_MAX];
    bool ok;
    char totals[CHAOS_LINE_MAX];
} chaos_replica_t;

typedef struct {
    char source[CHAOS_NAME_MAX];
    char source_seq[CHAOS_NAME_MAX]; /* decimal text: a uint64 that a double would round */
    char type[CHAOS_NAME_MAX];
    char txn[CHAOS_ID_MAX];
} chaos_aentry_t;

/* A growable array of one kind of fact. */
typedef struct {
    void *items;
    size_t count, cap, size;
} chaos_vec_t;

typedef struct {
    chaos_vec_t currencies, shards, accounts, loads, wallets, cards, wlogs, acks, aentries,
        replicas;
    size_t ledger_problems; /* what the ledger's own check found wrong (a txn debited twice...) */
    char audit_status[CHAOS_NAME_MAX];
    FILE *out;
} chaos_facts_t;

static void *vec_push(chaos_vec_t *v)
{
    assert(v->size > 0);
    if (v->count == v->cap) {
        size_t cap = v->cap == 0 ? 64 : v->cap * 2;
        void *p = realloc(v->items, cap * v->size);
        if (p == NULL)
            return NULL;
        v->items = p;
        v->cap = cap;
    }
    void *item = (char *)v->items + v->count * v->size;
    memset(item, 0, v->size);
    v->count++;
    return item;
}

#define VEC_AT(v, type, i) (&((type *)(v).items)[i])

static void facts_init(chaos_facts_t *f, FILE *out)
{
    memset(f, 0, sizeof(*f));
    f->currencies.size = sizeof(chaos_currency_t);
    f->shards.size = sizeof(chaos_shard_t);
    f->accounts.size = sizeof(chaos_account_t);
    f->loads.size = sizeof(chaos_load_t);
    f->wallets.size = sizeof(chaos_wallet_t);
    f->cards.size = sizeof(chaos_card_t);
    f->wlogs.size = sizeof(chaos_wlog_t);
    f->acks.size = sizeof(chaos_ack_t);
    f->aentries.size = sizeof(chaos_aentry_t);
    f->replicas.size = sizeof(chaos_replica_t);
    snprintf(f->audit_status, sizeof(f->audit_status), "pending");
    f->out = out;
}

static void facts_free(chaos_facts_t *f)
{
    chaos_vec_t *all[] = {&f->currencies, &f->shards, &f->accounts, &f->loads,    &f->wallets,
                          &f->cards,      &f->wlogs,  &f->acks,     &f->aentries, &f->replicas};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        free(all[i]->items);
}

/* ------------------------------------------------------------------ parsing */

static bool parse_i64(const char *s, int64_t *out)
{
    if (s == NULL || s[0] == '\0')
        return false;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (*end != '\0')
        return false;
    *out = (int64_t)v;
    return true;
}

static bool copy_field(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n == 0 || n >= cap)
        return false;
    memcpy(dst, src, n + 1);
    return true;
}

/* Splits line in place at TABs; returns the number of fields. */
static size_t split(char *line, char **fields)
{
    size_t n = 0;
    char *p = line;
    while (n < CHAOS_FIELDS_MAX) {
        fields[n++] = p;
        char *tab = strchr(p, '\t');
        if (tab == NULL)
            break;
        *tab = '\0';
        p = tab + 1;
    }
    return n;
}

/* Parses one fact into f. Returns 0, QC_EINVAL (malformed) or QC_ENOMEM. */
static int parse_fact(chaos_facts_t *f, char **x, size_t n)
{
    int64_t a, b, c, d, e;
    const char *k = x[0];
    if (strcmp(k, "currency") == 0 && n == 7) {
        chaos_currency_t *it = vec_push(&f->currencies);
        if (it == NULL)
            return QC_ENOMEM;
        if (!parse_i64(x[1], &a) || !parse_i64(x[2], &b) || !parse_i64(x[3], &it->sum) ||
            !parse_i64(x[4], &it->hold) || !parse_i64(x[5], &it->reserved_sum) ||
            !parse_i64(x[6], &it->floats))
            return QC_EINVAL;
        it->shard = (long)a;
        it->currency = (long)b;
        return 0;
    }
    if (strcmp(k, "shard") == 0 && n == 5) {
        chaos_shard_t *it = vec_push(&f->shards);
        if (it == NULL)
            return QC_ENOMEM;
        if (!parse_i64(x[1], &a) || !parse_i64(x[2], &it->loads) ||
            !parse_i64(x[3], &it->reserved) || !parse_i64(x[4], &it->outbox_depth))
            return QC_EINVAL;
        it->shard = (long)a;
        return 0;
    }
    if (strcmp(k, "problem") == 0 && n == 3) {
        if (!parse_i64(x[1], &a))
            return QC_EINVAL;
        fprintf(f->out, "    ledger shard %" PRId64 ": %s\n", a, x[2]);
        f->ledger_problems++;
        return 0;
    }
    if (strcmp(k, "account") == 0 && n == 5) {
        chaos_account_t *it = vec_push(&f->accounts);
        if (it == NULL)
            return QC_ENOMEM;
        if (!copy_field(it->id, sizeof(it->id), x[1]) || !parse_i64(x[2], &a) ||
            !parse_i64(x[3], &it->balance) || !parse_i64(x[4], &it->funding))
            return QC_EINVAL;
        it->currency = (long)a;
        return 0;
    }
    if (strcmp(k, "load") == 0 && n == 5) {
        chaos_load_t *it = vec_push(&f->loads);
        if (it == NULL)
            return QC_ENOMEM;
        if (!copy_field(it->txn, sizeof(it->txn), x[1]) ||
            !copy_field(it->state, sizeof(it->state), x[2]) ||
            !copy_field(it->account, sizeof(it->account), x[3]) || !parse_i64(x[4], &it->amount))
            return QC_EINVAL;
        return 0;
    }
    if (strcmp(k, "wallet") == 0 && n == 5) {
        chaos_wallet_t *it = vec_push(&f->wallets);
        if (it == NULL)
            return QC_ENOMEM;
        if (!copy_field(it->name, sizeof(it->name), x[1]) || !parse_i64(x[2], &it->balance) ||
            !parse_i64(x[3], &it->counter) || !copy_field(it->phase, sizeof(it->phase), x[4]))
            return QC_EINVAL;
        return 0;
    }
    if (strcmp(k, "card") == 0 && n == 3) {
        chaos_card_t *it = vec_push(&f->cards);
        if (it == NULL)
            return QC_ENOMEM;
        if (!copy_field(it->name, sizeof(it->name), x[1]) || !parse_i64(x[2], &it->balance))
            return QC_EINVAL;
        return 0;
    }
    if (strcmp(k, "wlog") == 0 && n == 9) {
        chaos_wlog_t *it = vec_push(&f->wlogs);
        if (it == NULL)
            return QC_ENOMEM;
        if (!copy_field(it->wallet, sizeof(it->wallet), x[1]) || !parse_i64(x[2], &it->seq) ||
            !copy_field(it->event, sizeof(it->event), x[3]) ||
            !copy_field(it->txn, sizeof(it->txn), x[4]) || !parse_i64(x[5], &c) ||
            !parse_i64(x[6], &d) || !copy_field(it->outcome, sizeof(it->outcome), x[8]))
            return QC_EINVAL;
        it->balance = c;
        it->counter = d;
        it->amount = parse_i64(x[7], &e) ? e : 0;
        return 0;
    }
    if (strcmp(k, "ack") == 0 && n == 4) {
        chaos_ack_t *it = vec_push(&f->acks);
        if (it == NULL)
            return QC_ENOMEM;
        if (!copy_field(it->wallet, sizeof(it->wallet), x[1]) ||
            !copy_field(it->txn, sizeof(it->txn), x[2]) ||
            !copy_field(it->outcome, sizeof(it->outcome), x[3]))
            return QC_EINVAL;
        return 0;
    }
    if (strcmp(k, "replica") == 0 && n == 5) {
        chaos_replica_t *it = vec_push(&f->replicas);
        if (it == NULL)
            return QC_ENOMEM;
        if (!parse_i64(x[1], &a) || !copy_field(it->endpoint, sizeof(it->endpoint), x[2]) ||
            (strcmp(x[3], "true") != 0 && strcmp(x[3], "false") != 0) ||
            !copy_field(it->totals, sizeof(it->totals), x[4]))
            return QC_EINVAL;
        it->shard = (long)a;
        it->ok = strcmp(x[3], "true") == 0;
        return 0;
    }
    if (strcmp(k, "audit") == 0 && n == 2) {
        if (strcmp(x[1], "ok") != 0 && strcmp(x[1], "failed") != 0 && strcmp(x[1], "pending") != 0)
            return QC_EINVAL;
        snprintf(f->audit_status, sizeof(f->audit_status), "%s", x[1]);
        return 0;
    }
    if (strcmp(k, "aentry") == 0 && n == 5) {
        chaos_aentry_t *it = vec_push(&f->aentries);
        if (it == NULL)
            return QC_ENOMEM;
        if (!copy_field(it->source, sizeof(it->source), x[1]) ||
            !copy_field(it->source_seq, sizeof(it->source_seq), x[2]) ||
            strspn(x[2], "0123456789") != strlen(x[2]) ||
            !copy_field(it->type, sizeof(it->type), x[3]) ||
            !copy_field(it->txn, sizeof(it->txn), x[4]))
            return QC_EINVAL;
        return 0;
    }
    (void)b;
    return QC_EINVAL;
}

static int read_facts(chaos_facts_t *f, FILE *in)
{
    char line[CHAOS_LINE_MAX];
    long lineno = 0;
    while (fgets(line, sizeof(line), in) != NULL) {
        lineno++;
        size_t len = strlen(line);
        if (len > 0 && line[len - 1] == '\n')
            line[--len] = '\0';
        else if (!feof(in)) {
            fprintf(f->out, "facts: line %ld is longer than %d bytes\n", lineno,
                    CHAOS_LINE_MAX - 2);
            return QC_EINVAL;
        }
        if (len == 0 || line[0] == '#')
            continue;
        char *fields[CHAOS_FIELDS_MAX] = {NULL}; /* split() fills the first n */
        size_t n = split(line, fields);
        int rc = parse_fact(f, fields, n);
        if (rc != 0) {
            fprintf(f->out, "facts: line %ld: %s (kind '%s', %zu fields)\n", lineno,
                    qc_strerror(rc), fields[0], n);
            return rc;
        }
    }
    return ferror(in) ? QC_EIO : 0;
}

/* ------------------------------------------------------------------ lookups */

static int cmp_load(const void *a, const void *b)
{
    return strcmp(((const chaos_load_t *)a)->txn, ((const chaos_load_t *)b)->txn);
}

static int cmp_account(const void *a, const void *b)
{
    return strcmp(((const chaos_account_t *)a)->id, ((const chaos_account_t *)b)->id);
}

static int cmp_wlog(const void *a, const void *b)
{
    const chaos_wlog_t *x = a, *y = b;
    int c = strcmp(x->wallet, y->wallet);
    if (c != 0)
        return c;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static int cmp_aentry(const void *a, const void *b)
{
    const chaos_aentry_t *x = a, *y = b;
    int c = strcmp(x->source, y->source);
    if (c != 0)
        return c;
    /* Decimal numbers without leading zeros: the shorter is the smaller. */
    size_t lx = strlen(x->source_seq), ly = strlen(y->source_seq);
    if (lx != ly)
        return lx < ly ? -1 : 1;
    return strcmp(x->source_seq, y->source_seq);
}

static chaos_load_t *find_load(chaos_facts_t *f, const char *txn)
{
    chaos_load_t key;
    snprintf(key.txn, sizeof(key.txn), "%s", txn);
    return bsearch(&key, f->loads.items, f->loads.count, sizeof(chaos_load_t), cmp_load);
}

static chaos_account_t *find_account(chaos_facts_t *f, const char *id)
{
    chaos_account_t key;
    snprintf(key.id, sizeof(key.id), "%s", id);
    return bsearch(&key, f->accounts.items, f->accounts.count, sizeof(chaos_account_t),
                   cmp_account);
}

static bool is_final(const char *state)
{
    return strcmp(state, "CONFIRMED") == 0 || strcmp(state, "COMPENSATED") == 0 ||
           strcmp(state, "LATE_CONFIRMED") == 0;
}

static bool is_confirmed(const char *state)
{
    return strcmp(state, "CONFIRMED") == 0 || strcmp(state, "LATE_CONFIRMED") == 0;
}

/* ------------------------------------------------------------------ the properties */

static chaos_verdict_t verdict(bool ok)
{
    return ok ? CHAOS_VERDICT_PASS : CHAOS_VERDICT_FAIL;
}

static const char *verdict_name(chaos_verdict_t v)
{
    return v == CHAOS_VERDICT_PASS ? "PASS" : v == CHAOS_VERDICT_FAIL ? "FAIL" : "PENDING";
}

/* 1. Per currency, the sum of all balances is zero on every shard. */
static chaos_verdict_t check_sum_zero(chaos_facts_t *f)
{
    size_t bad = 0;
    for (size_t i = 0; i < f->currencies.count; i++) {
        chaos_currency_t *c = VEC_AT(f->currencies, chaos_currency_t, i);
        if (c->sum != 0 && bad++ < CHAOS_SHOW_MAX)
            fprintf(f->out, "    shard %ld currency %ld: sum %" PRId64 "\n", c->shard, c->currency,
                    c->sum);
    }
    chaos_verdict_t v = verdict(bad == 0 && f->shards.count > 0);
    fprintf(f->out,
            "%s 1. sum of balances is zero: %zu shard-currencies, %zu nonzero, %zu shards\n",
            verdict_name(v), f->currencies.count, bad, f->shards.count);
    return v;
}

/* 2. HOLD is zero, no load RESERVED, every load on the ledger is final. */
static chaos_verdict_t check_hold_zero(chaos_facts_t *f)
{
    int64_t hold = 0, reserved = 0;
    size_t bad = 0, finals = 0;
    for (size_t i = 0; i < f->currencies.count; i++) {
        chaos_currency_t *c = VEC_AT(f->currencies, chaos_currency_t, i);
        hold += c->hold < 0 ? -c->hold : c->hold;
        reserved += c->reserved_sum;
    }
    for (size_t i = 0; i < f->shards.count; i++)
        reserved += VEC_AT(f->shards, chaos_shard_t, i)->reserved;
    for (size_t i = 0; i < f->loads.count; i++) {
        chaos_load_t *l = VEC_AT(f->loads, chaos_load_t, i);
        if (strcmp(l->state, "NONE") == 0)
            continue;
        if (is_final(l->state))
            finals++;
        else if (bad++ < CHAOS_SHOW_MAX)
            fprintf(f->out, "    load %s is %s\n", l->txn, l->state);
    }
    chaos_verdict_t v = verdict(hold == 0 && reserved == 0 && bad == 0);
    fprintf(f->out,
            "%s 2. HOLD is zero: |HOLD| %" PRId64 ", reserved %" PRId64
            ", %zu loads final, %zu not final\n",
            verdict_name(v), hold, reserved, finals, bad);
    return v;
}

/* 3. FLOAT equals the e-money the devices hold: every wallet and every IC card (money moved
 * from a wallet onto a card is still e-money the bank issued). */
static chaos_verdict_t check_float(chaos_facts_t *f)
{
    int64_t floats = 0, wallets = 0, cards = 0;
    for (size_t i = 0; i < f->cards.count; i++)
        cards += VEC_AT(f->cards, chaos_card_t, i)->balance;
    for (size_t i = 0; i < f->currencies.count; i++)
        floats += VEC_AT(f->currencies, chaos_currency_t, i)->floats;
    size_t busy = 0;
    for (size_t i = 0; i < f->wallets.count; i++) {
        chaos_wallet_t *w = VEC_AT(f->wallets, chaos_wallet_t, i);
        wallets += w->balance;
        if (strcmp(w->phase, "IDLE") != 0 && busy++ < CHAOS_SHOW_MAX)
            fprintf(f->out, "    wallet %s is %s, not IDLE\n", w->name, w->phase);
    }
    chaos_verdict_t v = verdict(floats == wallets + cards && busy == 0 && f->wallets.count > 0);
    fprintf(f->out,
            "%s 3. FLOAT equals the wallets and cards: FLOAT %" PRId64
            ", sum of %zu wallets %" PRId64 " + %zu cards %" PRId64 ", %zu not IDLE\n",
            verdict_name(v), floats, f->wallets.count, wallets, f->cards.count, cards, busy);
    return v;
}

/* 4. Each account's balance is its funding minus its confirmed loads, and the ledger holds no
 * load that no device asked for. */
static chaos_verdict_t check_accounts(chaos_facts_t *f)
{
    size_t bad = 0, known = 0, orphan = 0;
    for (size_t i = 0; i < f->loads.count; i++) {
        chaos_load_t *l = VEC_AT(f->loads, chaos_load_t, i);
        if (strcmp(l->state, "NONE") == 0)
            continue;
        known++;
        chaos_account_t *a = find_account(f, l->account);
        if (a == NULL) {
            if (orphan++ < CHAOS_SHOW_MAX)
                fprintf(f->out, "    load %s debits account %s the run never opened\n", l->txn,
                        l->account);
            continue;
        }
        if (is_confirmed(l->state))
            a->confirmed += l->amount;
    }
    int64_t funding = 0, confirmed = 0;
    for (size_t i = 0; i < f->accounts.count; i++) {
        chaos_account_t *a = VEC_AT(f->accounts, chaos_account_t, i);
        funding += a->funding;
        confirmed += a->confirmed;
        if (a->balance != a->funding - a->confirmed && bad++ < CHAOS_SHOW_MAX)
            fprintf(f->out,
                    "    account %s: balance %" PRId64 ", funding %" PRId64 " - confirmed %" PRId64
                    " = %" PRId64 "\n",
                    a->id, a->balance, a->funding, a->confirmed, a->funding - a->confirmed);
    }
    int64_t on_ledger = 0;
    for (size_t i = 0; i < f->shards.count; i++)
        on_ledger += VEC_AT(f->shards, chaos_shard_t, i)->loads;
    if (on_ledger != (int64_t)known)
        fprintf(f->out, "    the shards hold %" PRId64 " loads, the devices know %zu\n", on_ledger,
                known);
    chaos_verdict_t v =
        verdict(bad == 0 && orphan == 0 && on_ledger == (int64_t)known && f->accounts.count > 0);
    fprintf(f->out,
            "%s 4. accounts = funding - confirmed loads: %zu accounts, funding %" PRId64
            ", confirmed %" PRId64 ", %zu wrong; %" PRId64 " loads on the ledger, %zu known\n",
            verdict_name(v), f->accounts.count, funding, confirmed, bad, on_ledger, known);
    return v;
}

/* 5. No txn applied twice by any device, each applied load confirmed on the ledger and each
 * confirmed load applied by a device; every device's counter only grew, by one per applied
 * load, and its balance moved by exactly the applied amounts. */
static chaos_verdict_t check_once(chaos_facts_t *f)
{
    size_t twice = 0, unconfirmed = 0, unapplied = 0, counter_bad = 0, balance_bad = 0;
    size_t applied = 0;
    for (size_t i = 0; i < f->wlogs.count; i++) {
        chaos_wlog_t *w = VEC_AT(f->wlogs, chaos_wlog_t, i);
        bool first =
            i == 0 || strcmp(w->wallet, VEC_AT(f->wlogs, chaos_wlog_t, i - 1)->wallet) != 0;
        chaos_wlog_t *p = first ? NULL : VEC_AT(f->wlogs, chaos_wlog_t, i - 1);
        if (p != NULL && w->counter < p->counter && counter_bad++ < CHAOS_SHOW_MAX)
            fprintf(f->out,
                    "    wallet %s: counter went from %" PRId64 " to %" PRId64
                    " at log seq %" PRId64 "\n",
                    w->wallet, p->counter, w->counter, w->seq);
        if (strcmp(w->event, "load.applied") != 0) {
            if (p != NULL && w->balance != p->balance && balance_bad++ < CHAOS_SHOW_MAX)
                fprintf(f->out, "    wallet %s: balance moved on %s at log seq %" PRId64 "\n",
                        w->wallet, w->event, w->seq);
            continue;
        }
        applied++;
        int64_t before_c = p != NULL ? p->counter : 0, before_b = p != NULL ? p->balance : 0;
        if (w->counter != before_c + 1 && counter_bad++ < CHAOS_SHOW_MAX)
            fprintf(f->out,
                    "    wallet %s: applied %s with counter %" PRId64 " after %" PRId64 "\n",
                    w->wallet, w->txn, w->counter, before_c);
        if (w->balance != before_b + w->amount && balance_bad++ < CHAOS_SHOW_MAX)
            fprintf(f->out,
                    "    wallet %s: applied %s: balance %" PRId64 " after %" PRId64 " + %" PRId64
                    "\n",
                    w->wallet, w->txn, w->balance, before_b, w->amount);
        chaos_load_t *l = find_load(f, w->txn);
        if (l == NULL || !is_confirmed(l->state)) {
            if (unconfirmed++ < CHAOS_SHOW_MAX)
                fprintf(f->out, "    wallet %s applied %s, which the ledger holds as %s\n",
                        w->wallet, w->txn, l == NULL ? "(unknown)" : l->state);
        }
        if (l != NULL && ++l->applied == 2 && twice++ < CHAOS_SHOW_MAX)
            fprintf(f->out, "    txn %s applied twice (again by wallet %s)\n", w->txn, w->wallet);
    }
    for (size_t i = 0; i < f->loads.count; i++) {
        chaos_load_t *l = VEC_AT(f->loads, chaos_load_t, i);
        if (is_confirmed(l->state) && l->applied == 0 && unapplied++ < CHAOS_SHOW_MAX)
            fprintf(f->out, "    load %s is %s but no device applied it\n", l->txn, l->state);
    }
    /* The device's state now is the end of its log. */
    size_t mismatch = 0;
    for (size_t i = 0; i < f->wallets.count; i++) {
        chaos_wallet_t *w = VEC_AT(f->wallets, chaos_wallet_t, i);
        const chaos_wlog_t *last = NULL;
        for (size_t j = 0; j < f->wlogs.count; j++) {
            chaos_wlog_t *l = VEC_AT(f->wlogs, chaos_wlog_t, j);
            if (strcmp(l->wallet, w->name) == 0)
                last = l;
        }
        if ((last == NULL || last->balance != w->balance || last->counter != w->counter) &&
            mismatch++ < CHAOS_SHOW_MAX)
            fprintf(f->out,
                    "    wallet %s: status %" PRId64 "/%" PRId64
                    " differs from the end of its log\n",
                    w->name, w->balance, w->counter);
    }
    chaos_verdict_t v =
        verdict(twice == 0 && unconfirmed == 0 && unapplied == 0 && counter_bad == 0 &&
                balance_bad == 0 && mismatch == 0 && f->ledger_problems == 0);
    fprintf(f->out,
            "%s 5. applied once, counters grew: %zu applied, %zu twice, %zu applied but not "
            "confirmed, %zu confirmed but not applied, %zu counter and %zu balance steps wrong, "
            "%zu status/log mismatches, %zu problems in the ledger's own check\n",
            verdict_name(v), applied, twice, unconfirmed, unapplied, counter_bad, balance_bad,
            mismatch, f->ledger_problems);
    return v;
}

/* 6. Every outcome a device or a call was told is the ledger's final state of that load. */
static chaos_verdict_t check_acks(chaos_facts_t *f)
{
    size_t told = 0, wrong = 0;
    for (size_t i = 0; i < f->acks.count; i++) {
        chaos_ack_t *a = VEC_AT(f->acks, chaos_ack_t, i);
        told++;
        chaos_load_t *l = find_load(f, a->txn);
        const char *state = l == NULL ? "NONE" : l->state;
        if (strcmp(state, a->outcome) != 0 && wrong++ < CHAOS_SHOW_MAX)
            fprintf(f->out, "    %s was told %s for %s, the ledger holds %s\n", a->wallet,
                    a->outcome, a->txn, state);
    }
    for (size_t i = 0; i < f->wlogs.count; i++) {
        chaos_wlog_t *w = VEC_AT(f->wlogs, chaos_wlog_t, i);
        bool outcome = strcmp(w->event, "load.outcome") == 0;
        bool abandoned = strcmp(w->event, "load.abandoned") == 0;
        if (!outcome && !abandoned)
            continue;
        told++;
        chaos_load_t *l = find_load(f, w->txn);
        const char *state = l == NULL ? "NONE" : l->state;
        /* A load the bank refused ("nothing was debited") is not on the ledger, or was given
         * back; one it named as settled is in that state. */
        bool ok = abandoned && strcmp(w->outcome, "-") == 0
                      ? strcmp(state, "NONE") == 0 || strcmp(state, "COMPENSATED") == 0
                      : strcmp(state, w->outcome) == 0;
        if (!ok && wrong++ < CHAOS_SHOW_MAX)
            fprintf(f->out, "    wallet %s logged %s %s for %s, the ledger holds %s\n", w->wallet,
                    w->event, w->outcome, w->txn, state);
    }
    chaos_verdict_t v = verdict(wrong == 0);
    fprintf(f->out,
            "%s 6. acknowledged outcomes match the ledger: %zu acknowledged (%zu by calls, the "
            "rest in device logs), %zu differ\n",
            verdict_name(v), told, f->acks.count, wrong);
    return v;
}

/* 7. The audit chain verifies, no event was appended twice, and each ledger transition of each
 * load has its entry. */
static chaos_verdict_t check_audit(chaos_facts_t *f)
{
    if (strcmp(f->audit_status, "pending") == 0) {
        fprintf(f->out, "PENDING 7. audit chain: no audit service in this run; not checked\n");
        return CHAOS_VERDICT_PENDING;
    }
    static const char *types[4] = {"load.reserved", "load.confirmed", "load.compensated",
                                   "load.late_confirmed"};
    size_t dup = 0, missing = 0, foreign = 0;
    for (size_t i = 0; i < f->aentries.count; i++) {
        chaos_aentry_t *e = VEC_AT(f->aentries, chaos_aentry_t, i);
        if (i > 0 && cmp_aentry(e, VEC_AT(f->aentries, chaos_aentry_t, i - 1)) == 0 &&
            dup++ < CHAOS_SHOW_MAX)
            fprintf(f->out, "    %s event %s appended twice\n", e->source, e->source_seq);
        for (int t = 0; t < 4; t++) {
            if (strcmp(e->type, types[t]) != 0)
                continue;
            chaos_load_t *l = find_load(f, e->txn);
            if (l == NULL || strcmp(l->state, "NONE") == 0) {
                if (foreign++ < CHAOS_SHOW_MAX)
                    fprintf(f->out, "    audit has %s for %s, unknown to the ledger\n", e->type,
                            e->txn);
            } else {
                l->audit_seen[t]++;
            }
        }
    }
    for (size_t i = 0; i < f->loads.count; i++) {
        chaos_load_t *l = VEC_AT(f->loads, chaos_load_t, i);
        if (strcmp(l->state, "NONE") == 0)
            continue;
        bool need[4] = {true, strcmp(l->state, "CONFIRMED") == 0,
                        strcmp(l->state, "COMPENSATED") == 0 ||
                            strcmp(l->state, "LATE_CONFIRMED") == 0,
                        strcmp(l->state, "LATE_CONFIRMED") == 0};
        for (int t = 0; t < 4; t++) {
            if ((need[t] ? l->audit_seen[t] != 1 : l->audit_seen[t] != 0) &&
                missing++ < CHAOS_SHOW_MAX)
                fprintf(f->out, "    load %s (%s): %d %s entries\n", l->txn, l->state,
                        l->audit_seen[t], types[t]);
        }
    }
    int64_t outbox = 0;
    for (size_t i = 0; i < f->shards.count; i++)
        outbox += VEC_AT(f->shards, chaos_shard_t, i)->outbox_depth;
    bool verified = strcmp(f->audit_status, "ok") == 0;
    chaos_verdict_t v =
        verdict(verified && dup == 0 && missing == 0 && foreign == 0 && outbox == 0);
    fprintf(f->out,
            "%s 7. audit chain: verify %s, %zu entries, %zu appended twice, %zu load transitions "
            "without exactly one entry, %zu entries of unknown loads, %" PRId64
            " events still in outboxes\n",
            verdict_name(v), verified ? "ok" : "FAILED", f->aentries.count, dup, missing, foreign,
            outbox);
    return v;
}

/* 8. Every replica of every shard checks ok on its own LMDB, and the replicas of a shard hold
 * the same totals (a replica that lost its disk and caught up included). */
static chaos_verdict_t check_replicas(chaos_facts_t *f)
{
    if (f->replicas.count == 0) {
        fprintf(f->out, "PENDING 8. replicas agree: no replica facts; not checked\n");
        return CHAOS_VERDICT_PENDING;
    }
    size_t bad = 0, differ = 0;
    for (size_t i = 0; i < f->replicas.count; i++) {
        const chaos_replica_t *r = VEC_AT(f->replicas, chaos_replica_t, i);
        if (!r->ok && bad++ < CHAOS_SHOW_MAX)
            fprintf(f->out, "    replica %s of shard %ld: check not ok\n", r->endpoint, r->shard);
        /* The first replica listed for its shard is the reference. */
        const chaos_replica_t *ref = NULL;
        for (size_t j = 0; j < i && ref == NULL; j++)
            if (VEC_AT(f->replicas, chaos_replica_t, j)->shard == r->shard)
                ref = VEC_AT(f->replicas, chaos_replica_t, j);
        if (ref != NULL && strcmp(ref->totals, r->totals) != 0 && differ++ < CHAOS_SHOW_MAX)
            fprintf(f->out, "    replica %s of shard %ld: %s, but %s has %s\n", r->endpoint,
                    r->shard, r->totals, ref->endpoint, ref->totals);
    }
    chaos_verdict_t v = verdict(bad == 0 && differ == 0);
    fprintf(f->out,
            "%s 8. replicas agree: %zu replicas, %zu not ok, %zu differing from their shard\n",
            verdict_name(v), f->replicas.count, bad, differ);
    return v;
}

int chaos_check_run(FILE *facts, FILE *out, chaos_check_result_t *result)
{
    assert(facts != NULL);
    assert(out != NULL);
    assert(result != NULL);
    chaos_facts_t f;
    facts_init(&f, out);
    int rc = read_facts(&f, facts);
    if (rc != 0) {
        facts_free(&f);
        return rc;
    }
    qsort(f.loads.items, f.loads.count, sizeof(chaos_load_t), cmp_load);
    qsort(f.accounts.items, f.accounts.count, sizeof(chaos_account_t), cmp_account);
    qsort(f.wlogs.items, f.wlogs.count, sizeof(chaos_wlog_t), cmp_wlog);
    qsort(f.aentries.items, f.aentries.count, sizeof(chaos_aentry_t), cmp_aentry);
    /* A txn named twice by the ledger facts would make every lookup ambiguous. */
    for (size_t i = 1; i < f.loads.count; i++) {
        if (cmp_load(VEC_AT(f.loads, chaos_load_t, i), VEC_AT(f.loads, chaos_load_t, i - 1)) == 0) {
            fprintf(out, "facts: load %s listed twice\n", VEC_AT(f.loads, chaos_load_t, i)->txn);
            facts_free(&f);
            return QC_EINVAL;
        }
    }
    memset(result, 0, sizeof(*result));
    chaos_verdict_t (*checks[CHAOS_CHECK_COUNT + 1])(chaos_facts_t *) = {
        NULL,       check_sum_zero, check_hold_zero, check_float,   check_accounts,
        check_once, check_acks,     check_audit,     check_replicas};
    for (int i = 1; i <= CHAOS_CHECK_COUNT; i++) {
        result->verdicts[i] = checks[i](&f);
        result->failed += result->verdicts[i] == CHAOS_VERDICT_FAIL;
        result->pending += result->verdicts[i] == CHAOS_VERDICT_PENDING;
    }
    facts_free(&f);
    return 0;
}
