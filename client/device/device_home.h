/* device_home.h - the files of a device's home directory (a wallet's or an IC card's):
 * atomic replacement, bounded reads, the lock that keeps two programs off one device, and
 * the append-only operation log.
 *
 * Every replacement is atomic: the new bytes are written to "NAME.tmp", fsync'ed, renamed over
 * NAME, and the directory is fsync'ed. A reader therefore sees the old file or the new one,
 * never a mix, whenever the process or the machine dies.
 *
 * The operation log ("oplog.jsonl", JSON lines, each starting {"seq":N,) is made part of a
 * state file's atomic step by write-ahead: each state write that logs something carries that
 * line and its sequence number; the line is appended to the log after the rename, and
 * device_home_log_recover() appends it again at the next open if the process died in
 * between. The state files themselves belong to their programs (client/wallet/wallet_store.h,
 * client/card/card_store.h). */
#ifndef DEVICE_HOME_H
#define DEVICE_HOME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "qc_error.h"

#define DEVICE_STATE_FILE_MAX (256 * 1024) /* a state file larger than this is refused */
#define DEVICE_LOG_LINE_MAX 1024           /* one operation-log line, without the newline */
#define DEVICE_LOG_FILE_MAX (64 * 1024 * 1024)
#define DEVICE_FILE_MAX (64 * 1024) /* certificates, keys and config files of the home */
#define DEVICE_PATH_MAX 4096

#define DEVICE_LOG_FILE "oplog.jsonl"

/* Builds "HOME/name" into out (capacity DEVICE_PATH_MAX). Returns 0 or QC_EINVAL when the
 * path does not fit. */
QC_MUST_CHECK int device_home_path(const char *home, const char *name, char out[DEVICE_PATH_MAX]);

/* Atomically writes HOME/name with mode (tmp file, fsync, rename, fsync dir); an existing
 * file is replaced. Returns 0, QC_EINVAL or QC_EIO. */
QC_MUST_CHECK int device_home_write(const char *home, const char *name, const uint8_t *bytes,
                                    size_t len, mode_t mode);

/* Reads HOME/name (at most max bytes) into a malloc'd buffer, NUL terminated for
 * convenience (the NUL is not counted in *len). Returns 0, QC_ENOTFOUND, QC_ETOOBIG, QC_EIO
 * or QC_ENOMEM. */
QC_MUST_CHECK int device_home_read(const char *home, const char *name, size_t max, uint8_t **out,
                                   size_t *len);

/* Takes an exclusive advisory lock on HOME/.lock so that two programs never drive one
 * device at once. Returns 0 and sets *fd_out (close it to release), QC_EBUSY when another
 * process holds it, QC_EIO. */
QC_MUST_CHECK int device_home_lock(const char *home, int *fd_out);

/* Claims HOME for one device (or card) whose existence is the file HOME/state_name, and
 * locks it (device_home_lock()). With create, HOME is made (mode 0700) when missing and a
 * state file already there is refused (QC_EEXIST); without, a HOME without the state file is
 * refused (QC_ENOTFOUND) before any lock file is made there. Returns 0 and sets *fd_out;
 * QC_EEXIST, QC_ENOTFOUND, QC_EBUSY, QC_EINVAL (path too long) or QC_EIO, with no lock held. */
QC_MUST_CHECK int device_home_claim(const char *home, const char *state_name, bool create,
                                    int *fd_out);

/* Appends line (no newline; the function adds it) to the operation log and fsyncs.
 * Returns 0, QC_EINVAL (line too long or contains a newline) or QC_EIO. */
QC_MUST_CHECK int device_home_log_append(const char *home, const char *line);

/* Makes the log agree with a state file after a crash: drops a torn last line (no newline),
 * and appends log_pending (line number log_seq, which the state carries) if the log's last
 * sequence number is log_seq - 1.
 * Returns 0; QC_EDECODE when the log is neither at log_seq nor one behind (it was edited or
 * lost: the state file stays authoritative); QC_EIO. */
QC_MUST_CHECK int device_home_log_recover(const char *home, uint64_t log_seq,
                                          const char *log_pending);

#endif
