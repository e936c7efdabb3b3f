/* ledger_membership.h - a membership change of a shard's replica group, run on its leader:
 * a replica added (a standby first, a voter once it caught up) or removed.
 *
 * Why not libraft's raft_assign(RAFT_VOTER) straight after raft_add: libraft promotes a new
 * replica through catch-up rounds and aborts the promotion with RAFT_NOCONNECTION when one
 * round lasts longer than max_catch_up_round_duration (5 s in libraft 0.15) or ten rounds
 * longer than an election timeout. A replica that starts empty gets the whole log (or a
 * snapshot and the log after it) and applies every entry in its own LMDB transaction before
 * it answers; a log of a few thousand entries takes longer than 5 s, and the change failed
 * (docs/DESIGN.md section 3, "Adding a replica"). A standby is replicated to without a
 * deadline and counts in no majority, so the change here is:
 *
 *   raft_add (spare) -> raft_assign(RAFT_STANDBY) -> wait, each tick, until the standby's
 *   match index is within LEDGER_MEMBERSHIP_PROMOTE_LAG of the leader's last index ->
 *   raft_assign(RAFT_VOTER) (libraft's last round is then short) -> done.
 *
 * A promotion libraft aborts goes back to waiting, at most LEDGER_MEMBERSHIP_PROMOTE_TRIES
 * times. A standby whose match index does not move for LEDGER_MEMBERSHIP_STALL_MS, or that is
 * not a voter after LEDGER_MEMBERSHIP_CHANGE_MS, fails the change with a reason that names
 * what to look at; it stays a standby, and the same add again resumes from there.
 *
 * Invariants:
 *   1. At most one libraft request (raft_add, raft_assign, raft_remove) in flight per change;
 *      its callback only records the status, the next tick acts on it.
 *   2. A change ends once (tick returns 0 or a QC_E* code once, then keeps returning it).
 *   3. A change never outlives its leader's term: leadership lost fails it (QC_ENOTLEADER).
 *
 * The caller (ledger_service.c) owns the change and ticks it from its loop, after libraft's
 * turn; libraft must be closed before a change that has a request in flight is destroyed. */
#ifndef LEDGER_MEMBERSHIP_H
#define LEDGER_MEMBERSHIP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <raft.h>

#include "qc_error.h"

#define LEDGER_MEMBERSHIP_PROMOTE_LAG 16   /* entries behind the last index, to promote */
#define LEDGER_MEMBERSHIP_PROMOTE_TRIES 5  /* promotions libraft may abort */
#define LEDGER_MEMBERSHIP_STALL_MS 60000   /* a standby's match index unchanged this long */
#define LEDGER_MEMBERSHIP_CHANGE_MS 900000 /* a whole add, at most (15 min) */
#define LEDGER_MEMBERSHIP_PROGRESS_MS 5000 /* a progress line in the log this often */
#define LEDGER_MEMBERSHIP_WHY_MAX 512
#define LEDGER_MEMBERSHIP_ADDRESS_MAX                                                              \
    256 /* a raft address, HOST:PORT (longer: cut, for messages) */

/* tick()'s answer while the change goes on. */
#define LEDGER_MEMBERSHIP_PENDING 1

typedef struct ledger_membership ledger_membership_t;

/* Starts adding replica id at address (HOST:PORT, its replica link) to rf's configuration on
 * the leader rf; now_ms is the monotonic clock. A replica already in the configuration as a
 * spare or standby resumes at the promotion. Returns 0 and sets *out (the change goes on:
 * tick it), 1 and *out NULL when id is a voter already (nothing to change), or a QC_E* code
 * with *out NULL (QC_ENOTLEADER, QC_EBUSY: another change is not finished, QC_EEXIST: the
 * address is another replica's, QC_ENOMEM, QC_EUNAVAIL). */
QC_MUST_CHECK int ledger_membership_add(struct raft *rf, uint64_t id, const char *address,
                                        uint64_t now_ms, ledger_membership_t **out);

/* Starts removing replica id from rf's configuration. Returns as ledger_membership_add(); 1
 * when id is not a member. */
QC_MUST_CHECK int ledger_membership_remove(struct raft *rf, uint64_t id, uint64_t now_ms,
                                           ledger_membership_t **out);

/* Advances the change (call once per turn of the loop, after libraft's). Returns
 * LEDGER_MEMBERSHIP_PENDING, 0 when the change is committed, or a QC_E* code when it failed
 * (ledger_membership_why() says why). */
int ledger_membership_tick(ledger_membership_t *m, uint64_t now_ms);

/* The reason of a failed change, for the operator; "" while none. Borrowed from m. */
const char *ledger_membership_why(const ledger_membership_t *m);

/* The replica the change is about. */
uint64_t ledger_membership_id(const ledger_membership_t *m);

/* libraft's error code rv as a QC_E* code. */
int ledger_membership_qc(int rv);

/* Frees m, nulls *m_p; accepts NULL. With a libraft request in flight, only after
 * raft_close() (its callback then ran). */
void ledger_membership_destroy(ledger_membership_t **m_p);

#endif
