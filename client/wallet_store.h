/* wallet_store.h - the device's crash-safe storage: the state file, files of its home
 * directory, and the append-only operation log.
 *
 * Every change of the state file is atomic: the new state is written to "state.tmp",
 * fsync'ed, renamed over "state", and the directory is fsync'ed. A reader therefore sees the
 * old state or the new one, never a mix, whenever the process or the machine dies. The file
 * ends with a SHA-256 checksum line so that a damaged file is refused rather than believed.
 *
 * The operation log ("oplog.jsonl", JSON lines) is made part of the same atomic step by
 * write-ahead: each state write that logs something carries that line and its sequence
 * number; the line is appended to the log after the rename, and wallet_oplog_recover()
 * appends it again at the next open if the process died in between. */
#ifndef WALLET_STORE_H
#define WALLET_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ops_hex.h"
#include "wallet_pin.h"

#define WALLET_SERIAL_MAX 64  /* bytes of a hardware serial (= PROTO_DEVICE_ID_MAX) */
#define WALLET_ACCOUNT_MAX 64 /* bytes of an account id (= PROTO_ACCOUNT_ID_MAX) */
#define WALLET_TXN_SIZE 16
#define WALLET_DIGEST_SIZE 32
#define WALLET_BLOB_MAX (32 * 1024)        /* a stored signed message (= PROTO_ENVELOPE_MAX) */
#define WALLET_STATE_FILE_MAX (256 * 1024) /* a state file larger than this is refused */
#define WALLET_LOG_LINE_MAX 1024           /* one operation-log line, without the newline */
#define WALLET_LOG_FILE_MAX (64 * 1024 * 1024)
#define WALLET_FILE_MAX (64 * 1024) /* certificates, keys and config files of the home */
#define WALLET_PATH_MAX 4096

#define WALLET_STATE_FILE "state"
#define WALLET_LOG_FILE "oplog.jsonl"

/* Where the device is in its load protocol (docs/DESIGN.md section 2; wallet_device.c). */
typedef enum wallet_phase {
    WALLET_IDLE = 0, /* no load in progress */
    WALLET_PENDING,  /* a request is signed and stored; no allow judged yet */
    WALLET_REPORTED, /* an allow was judged (applied or rejected); the report awaits its outcome */
} wallet_phase_t;

/* The whole durable state of a device. A plain value record rather than an opaque type:
 * it is what the state file holds field by field, and wallet_device.c owns its invariants.
 * request and report are malloc'd and owned by the record. */
typedef struct wallet_state {
    char serial[WALLET_SERIAL_MAX + 1];
    int64_t balance;  /* minor units */
    uint64_t counter; /* loads applied */
    wallet_phase_t phase;

    /* The load in progress (PENDING and REPORTED). */
    uint8_t txn_id[WALLET_TXN_SIZE];
    char account_id[WALLET_ACCOUNT_MAX + 1];
    int64_t amount;
    uint32_t currency;
    uint8_t request_digest[WALLET_DIGEST_SIZE]; /* SHA-256 of the signed request body */
    uint8_t *request;                           /* the signed LoadRequest envelope */
    size_t request_len;

    /* REPORTED only: the judgement and the signed report that carries it. */
    int report_status;                        /* Quancun__ReportStatus */
    uint8_t allow_digest[WALLET_DIGEST_SIZE]; /* of the allow judged */
    uint8_t *report;                          /* the signed ExecutionReport envelope */
    size_t report_len;

    /* The last load that reached an outcome, for `status`. */
    uint8_t last_txn_id[WALLET_TXN_SIZE];
    int last_outcome; /* Quancun__LoadState, 0 when none yet */

    wallet_pin_t pin;

    /* A card transfer in progress (wallet_device_card_debit()): the wallet is already
     * debited; the card's proof settles it (complete, or refund). */
    bool card_pending;
    uint8_t card_xfer_id[WALLET_TXN_SIZE];
    int64_t card_amount;
    char card_number[WALLET_SERIAL_MAX + 1];

    uint64_t log_seq;                          /* sequence number of the last log line */
    char log_pending[WALLET_LOG_LINE_MAX + 1]; /* line number log_seq, "" when none */
} wallet_state_t;

/* Frees the blobs of st and wipes it; st may then be reused. Accepts NULL. */
void wallet_state_clear(wallet_state_t *st);

/* Sets *blob_p to a malloc'd copy of bytes (len in 1..WALLET_BLOB_MAX), freeing the old one.
 * Returns 0, QC_EINVAL or QC_ENOMEM (the old blob is kept on error). */
int wallet_state_set_blob(uint8_t **blob_p, size_t *len_p, const uint8_t *bytes, size_t len);

/* Atomically replaces HOME/state with st (write state.tmp, fsync, rename, fsync HOME).
 * Returns 0, QC_EINVAL (a field out of range) or QC_EIO; on error the old state is intact. */
int wallet_state_save(const char *home, const wallet_state_t *st);

/* Loads HOME/state into st (which must be zeroed or cleared). Returns 0, QC_ENOTFOUND (no
 * device there), QC_ETOOBIG, QC_EDECODE (damaged or tampered file: wrong checksum, unknown
 * key, value out of range), QC_EIO or QC_ENOMEM; st is cleared on error. */
int wallet_state_load(const char *home, wallet_state_t *st);

/* Builds "HOME/name" into out (capacity WALLET_PATH_MAX). Returns 0 or QC_EINVAL when the
 * path does not fit. */
int wallet_store_path(const char *home, const char *name, char out[WALLET_PATH_MAX]);

/* Atomically writes HOME/name with mode (tmp file, fsync, rename, fsync dir); an existing
 * file is replaced. Returns 0, QC_EINVAL or QC_EIO. */
int wallet_store_write(const char *home, const char *name, const uint8_t *bytes, size_t len,
                       mode_t mode);

/* Reads HOME/name (at most max bytes) into a malloc'd buffer, NUL terminated for
 * convenience (the NUL is not counted in *len). Returns 0, QC_ENOTFOUND, QC_ETOOBIG, QC_EIO
 * or QC_ENOMEM. */
int wallet_store_read(const char *home, const char *name, size_t max, uint8_t **out, size_t *len);

/* Takes an exclusive advisory lock on HOME/.lock so that two programs never drive one
 * device at once. Returns 0 and sets *fd_out (close it to release), QC_EBUSY when another
 * process holds it, QC_EIO. */
int wallet_store_lock(const char *home, int *fd_out);

/* Claims HOME for one device (or card) whose existence is the file HOME/state_name, and
 * locks it (wallet_store_lock()). With create, HOME is made (mode 0700) when missing and a
 * state file already there is refused (QC_EEXIST); without, a HOME without the state file is
 * refused (QC_ENOTFOUND) before any lock file is made there. Returns 0 and sets *fd_out;
 * QC_EEXIST, QC_ENOTFOUND, QC_EBUSY, QC_EINVAL (path too long) or QC_EIO, with no lock held. */
int wallet_store_claim(const char *home, const char *state_name, bool create, int *fd_out);

/* Appends line (no newline; the function adds it) to the operation log and fsyncs.
 * Returns 0, QC_EINVAL (line too long or contains a newline) or QC_EIO. */
int wallet_oplog_append(const char *home, const char *line);

/* Makes the log agree with st after a crash: drops a torn last line (no newline), and
 * appends st->log_pending if the log's last sequence number is st->log_seq - 1.
 * Returns 0; QC_EDECODE when the log is neither at st->log_seq nor one behind (it was
 * edited or lost: the state file stays authoritative); QC_EIO. */
int wallet_oplog_recover(const char *home, const wallet_state_t *st);

#endif
