/* ledger_scrub.c - the background scrub of every record's checksum (ledger_scrub.h). */
#include "ledger_scrub.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "ops_log.h"
#include "ops_metrics.h"
#include "qc_error.h"

#define SCRUB_MS_PER_S 1000u

struct ledger_scrub {
    ledger_store_t *store;
    uint32_t per_second;
    uint64_t last_ms; /* monotonic time of the last step; 0 before the first tick */
    ledger_store_scrub_t walk;
    uint64_t pass_corrupt; /* corrupt records at the start of this pass */
    ops_counter_t *m_records;
    ops_counter_t *m_passes;
};

int ledger_scrub_new(ledger_store_t *store, uint32_t per_second, ledger_scrub_t **out)
{
    assert(store != NULL);
    assert(out != NULL);
    assert(per_second <= LEDGER_SCRUB_PER_SECOND_MAX);
    ledger_scrub_t *s = calloc(1, sizeof *s);
    if (s == NULL)
        return QC_ENOMEM;
    s->store = store;
    s->per_second = per_second;
    s->m_records = ops_counter("qc_ledger_scrub_records_total",
                               "Records whose checksum the background scrub checked");
    s->m_passes = ops_counter("qc_ledger_scrub_passes_total",
                              "Whole walks of the store by the background scrub");
    *out = s;
    return 0;
}

void ledger_scrub_tick(ledger_scrub_t *s, uint64_t mono_ms)
{
    assert(s != NULL);
    if (s->per_second == 0)
        return;
    if (s->last_ms == 0) {
        s->last_ms = mono_ms;
        return;
    }
    if (mono_ms < s->last_ms + LEDGER_SCRUB_TICK_MS)
        return;
    uint64_t elapsed = mono_ms - s->last_ms;
    if (elapsed > SCRUB_MS_PER_S)
        elapsed = SCRUB_MS_PER_S; /* a long stall does not turn into a long step */
    s->last_ms = mono_ms;
    size_t max = (size_t)((uint64_t)s->per_second * elapsed / SCRUB_MS_PER_S);
    if (max == 0)
        max = 1;
    uint64_t before = s->walk.checked;
    bool pass_done = false;
    int rc = ledger_store_scrub_step(s->store, &s->walk, max, &pass_done);
    ops_counter_add(s->m_records, s->walk.checked - before);
    if (rc != 0) {
        ops_log(OPS_LOG_WARN, "ledger.scrub_failed", "error", qc_strerror(rc), NULL);
        return;
    }
    if (pass_done) {
        ops_counter_add(s->m_passes, 1);
        char checked[24], corrupt[24];
        snprintf(checked, sizeof checked, "%" PRIu64, s->walk.checked);
        uint64_t this_pass = s->walk.corrupt - s->pass_corrupt;
        snprintf(corrupt, sizeof corrupt, "%" PRIu64, this_pass);
        s->pass_corrupt = s->walk.corrupt;
        /* An error only for a pass that found something: a clean pass after a rebuild
         * (ledger_repair.h) is not one more error line per pass. */
        ops_log(this_pass > 0 ? OPS_LOG_ERROR : OPS_LOG_DEBUG, "ledger.scrub_pass", "checked_total",
                checked, "corrupt_this_pass", corrupt, NULL);
    }
}

void ledger_scrub_destroy(ledger_scrub_t **scrub_p)
{
    if (scrub_p == NULL || *scrub_p == NULL)
        return;
    free(*scrub_p);
    *scrub_p = NULL;
}
