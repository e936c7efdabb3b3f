/* wallet_store.h - the wallet device's state file, HOME/state.
 *
 * Every change of the state file is an atomic replacement (device_home_write(): "state.tmp",
 * fsync, rename, fsync of the directory), so a reader sees the old state or the new one,
 * never a mix, whenever the process or the machine dies. The file ends with a SHA-256
 * checksum line so that a damaged file is refused rather than believed. The state carries
 * the operation log's pending line (client/device/device_home.h), which makes the log part of
 * the same atomic step. */
#ifndef WALLET_STORE_H
#define WALLET_STORE_H

#include "device_core.h"
#include "qc_error.h"

#define WALLET_STATE_FILE "state"

/* Atomically replaces HOME/state with st (write state.tmp, fsync, rename, fsync HOME).
 * Returns 0, QC_EINVAL (a field out of range) or QC_EIO; on error the old state is intact. */
QC_MUST_CHECK int wallet_state_save(const char *home, const device_state_t *st);

/* Loads HOME/state into st (which must be zeroed or cleared). Returns 0, QC_ENOTFOUND (no
 * device there), QC_ETOOBIG, QC_EDECODE (damaged or tampered file: wrong checksum, unknown
 * key, value out of range), QC_EIO or QC_ENOMEM; st is cleared on error. */
QC_MUST_CHECK int wallet_state_load(const char *home, device_state_t *st);

#endif
