/* card_store.h - the card's durable state and its crash-safe state file.
 *
 * The state file HOME/card.state holds a CardState protobuf (proto/card.proto) followed by
 * its SHA-256, written with the home's atomic replace (device_home_write(): tmp
 * file, fsync, rename, fsync of the directory), so a card killed at any point is found
 * either before or after a change, and a damaged file is refused rather than believed.
 * The card's operation log is HOME/oplog.jsonl, kept by the home's write-ahead log
 * functions (each state write carries its log line; see client/device/device_home.h). */
#ifndef CARD_STORE_H
#define CARD_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "device_pin.h"
#include "device_home.h"
#include "device_pki.h"
#include "qc_error.h"

#define CARD_STATE_FILE "card.state"
#define CARD_STATE_VERSION 1
#define CARD_NUMBER_MAX DEVICE_SERIAL_MAX /* = a certificate's commonName */
#define CARD_TRUSTED_MAX 32               /* device serials a card trusts */
#define CARD_TRANSFERS_MAX 1000           /* credits a card remembers; full, it refuses new ones */
#define CARD_XFER_ID_SIZE 16              /* a transfer id (= PROTO_TXN_ID_SIZE) */
#define CARD_BALANCE_MAX_LIMIT (INT64_C(1) << 53) /* the largest purse maximum accepted */

/* One credit the card applied: its proof for that transfer id. */
typedef struct card_record {
    uint8_t transfer_id[CARD_XFER_ID_SIZE];
    char device_id[CARD_NUMBER_MAX + 1];
    int64_t amount;
    uint64_t counter; /* the card's counter after this credit */
    int64_t balance_after;
    uint64_t time_ms;
} card_record_t;

/* The whole durable state of a card. A plain value record (what the file holds); the card
 * module (card_device.c) owns its invariants. */
typedef struct card_state {
    char number[CARD_NUMBER_MAX + 1];
    int64_t balance; /* minor units, 0..max_balance */
    int64_t max_balance;
    uint64_t counter; /* credits applied */
    device_pin_t pin;
    char trusted[CARD_TRUSTED_MAX][CARD_NUMBER_MAX + 1];
    size_t trusted_count;
    card_record_t transfers[CARD_TRANSFERS_MAX];
    size_t transfer_count;
    uint64_t log_seq;
    char log_pending[DEVICE_LOG_LINE_MAX + 1];
} card_state_t;

/* Atomically replaces HOME/card.state with st. Returns 0, QC_EINVAL (a field out of range),
 * QC_ENOMEM or QC_EIO; on error the old state is intact. */
QC_MUST_CHECK int card_state_save(const char *home, const card_state_t *st);

/* Loads HOME/card.state into st. Returns 0, QC_ENOTFOUND (no card there), QC_ETOOBIG,
 * QC_EDECODE (damaged file: bad checksum, bad field), QC_EIO or QC_ENOMEM; st is wiped on
 * error. */
QC_MUST_CHECK int card_state_load(const char *home, card_state_t *st);

#endif
