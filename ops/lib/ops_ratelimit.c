/* ops_ratelimit.c - per-event and per-peer counting of repeated log lines (see the header). */
#include "ops_ratelimit.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Slots looked at for one key: the table is an open-addressed hash, and a key not found within
 * this many slots from its hash evicts the least recently seen of them. */
#define OPS_RATELIMIT_PROBES 16

typedef struct ops_ratelimit_slot {
    bool used;
    bool aggregate; /* the event's own count over all its peers */
    bool has_peer;
    char event[OPS_RATELIMIT_NAME_MAX + 1];
    char peer[OPS_RATELIMIT_NAME_MAX + 1];
    uint64_t window_start_ms;
    uint64_t last_ms;
    uint32_t lines; /* written in this window */
    uint64_t suppressed;
} ops_ratelimit_slot_t;

struct ops_ratelimit {
    ops_ratelimit_summary_fn *fn;
    void *arg;
    ops_ratelimit_slot_t slots[OPS_RATELIMIT_SLOTS];
};

_Static_assert(OPS_RATELIMIT_PROBES <= OPS_RATELIMIT_SLOTS, "probes stay inside the table");
_Static_assert(OPS_RATELIMIT_BURST <= OPS_RATELIMIT_EVENT_BURST,
               "one peer alone may reach its own burst");

ops_ratelimit_t *ops_ratelimit_new(ops_ratelimit_summary_fn *fn, void *arg)
{
    assert(fn != NULL);
    ops_ratelimit_t *rl = calloc(1, sizeof *rl);
    if (rl == NULL)
        return NULL;
    rl->fn = fn;
    rl->arg = arg;
    return rl;
}

void ops_ratelimit_destroy(ops_ratelimit_t **rl_p)
{
    if (rl_p == NULL || *rl_p == NULL)
        return;
    free(*rl_p);
    *rl_p = NULL;
}

/* FNV-1a over the key's parts; the aggregate flag keeps (event, NULL) of a peer-less event and
 * an event's total over its peers apart. */
static size_t ops_ratelimit_hash(const char *event, const char *peer, bool aggregate)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *p = event; *p != '\0'; p++)
        h = (h ^ (uint8_t)*p) * 1099511628211ull;
    h = (h ^ (aggregate ? 1u : 2u)) * 1099511628211ull;
    for (const char *p = peer != NULL ? peer : ""; *p != '\0'; p++)
        h = (h ^ (uint8_t)*p) * 1099511628211ull;
    return (size_t)(h % OPS_RATELIMIT_SLOTS);
}

static bool ops_ratelimit_match(const ops_ratelimit_slot_t *s, const char *event, const char *peer,
                                bool aggregate)
{
    if (!s->used || s->aggregate != aggregate || s->has_peer != (peer != NULL))
        return false;
    if (strncmp(s->event, event, OPS_RATELIMIT_NAME_MAX) != 0)
        return false;
    return peer == NULL || strncmp(s->peer, peer, OPS_RATELIMIT_NAME_MAX) == 0;
}

/* Gives the slot's held-back count to the callback and clears it. */
static void ops_ratelimit_summarize(ops_ratelimit_t *rl, ops_ratelimit_slot_t *s)
{
    assert(s->used);
    if (s->suppressed == 0)
        return;
    ops_ratelimit_summary_t sum = {
        .event = s->event, .peer = s->has_peer ? s->peer : NULL, .suppressed = s->suppressed};
    s->suppressed = 0;
    rl->fn(rl->arg, &sum);
}

/* The slot of the key, made when absent (evicting the least recently seen of its probes). */
static ops_ratelimit_slot_t *ops_ratelimit_slot(ops_ratelimit_t *rl, const char *event,
                                                const char *peer, bool aggregate, uint64_t now_ms)
{
    size_t h = ops_ratelimit_hash(event, peer, aggregate);
    ops_ratelimit_slot_t *free_slot = NULL;
    ops_ratelimit_slot_t *oldest = NULL;
    for (size_t i = 0; i < OPS_RATELIMIT_PROBES; i++) {
        ops_ratelimit_slot_t *s = &rl->slots[(h + i) % OPS_RATELIMIT_SLOTS];
        if (ops_ratelimit_match(s, event, peer, aggregate))
            return s;
        if (!s->used && free_slot == NULL)
            free_slot = s;
        if (s->used && (oldest == NULL || s->last_ms < oldest->last_ms))
            oldest = s;
    }
    ops_ratelimit_slot_t *s = free_slot;
    if (s == NULL) {
        assert(oldest != NULL);
        ops_ratelimit_summarize(rl, oldest);
        s = oldest;
    }
    memset(s, 0, sizeof *s);
    s->used = true;
    s->aggregate = aggregate;
    s->has_peer = peer != NULL;
    snprintf(s->event, sizeof s->event, "%s", event);
    if (peer != NULL)
        snprintf(s->peer, sizeof s->peer, "%s", peer);
    s->window_start_ms = now_ms;
    return s;
}

static void ops_ratelimit_roll(ops_ratelimit_slot_t *s, uint64_t now_ms)
{
    s->last_ms = now_ms;
    if (now_ms - s->window_start_ms >= OPS_RATELIMIT_WINDOW_MS || now_ms < s->window_start_ms) {
        s->window_start_ms = now_ms;
        s->lines = 0;
    }
}

bool ops_ratelimit_allow(ops_ratelimit_t *rl, const char *event, const char *peer, uint64_t now_ms,
                         uint64_t *suppressed)
{
    assert(rl != NULL);
    assert(event != NULL);
    assert(suppressed != NULL);
    *suppressed = 0;
    ops_ratelimit_slot_t *key = ops_ratelimit_slot(rl, event, peer, false, now_ms);
    ops_ratelimit_roll(key, now_ms);
    ops_ratelimit_slot_t *all = NULL;
    if (peer != NULL) {
        all = ops_ratelimit_slot(rl, event, NULL, true, now_ms);
        ops_ratelimit_roll(all, now_ms);
        assert(all != key);
    }
    if (key->lines >= OPS_RATELIMIT_BURST) {
        key->suppressed++;
        return false;
    }
    if (all != NULL && all->lines >= OPS_RATELIMIT_EVENT_BURST) {
        all->suppressed++;
        return false;
    }
    key->lines++;
    if (all != NULL)
        all->lines++;
    *suppressed = key->suppressed;
    key->suppressed = 0;
    return true;
}

size_t ops_ratelimit_flush(ops_ratelimit_t *rl, uint64_t now_ms)
{
    assert(rl != NULL);
    size_t given = 0;
    for (size_t i = 0; i < OPS_RATELIMIT_SLOTS; i++) {
        ops_ratelimit_slot_t *s = &rl->slots[i];
        if (!s->used || now_ms - s->window_start_ms < OPS_RATELIMIT_WINDOW_MS)
            continue;
        if (s->suppressed > 0) {
            ops_ratelimit_summarize(rl, s);
            given++;
        } else if (now_ms - s->last_ms >= 2 * (uint64_t)OPS_RATELIMIT_WINDOW_MS) {
            memset(s, 0, sizeof *s);
        }
    }
    return given;
}
