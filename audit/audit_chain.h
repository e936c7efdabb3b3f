/* audit_chain.h - the audit log entry, its canonical encoding and the hash chain.
 *
 * An entry is {seq, time_ms, source, source_seq, type, txn_id, payload, prev_hash, hash}.
 * Its hash is
 *
 *     hash = SHA-256(prev_hash || canonical(entry))
 *
 * where canonical(entry) is the following byte string (version 1), every integer
 * big-endian, every variable field preceded by its length, fields in exactly this order:
 *
 *     offset  size  field
 *     0       1     version, always 0x01
 *     1       8     seq            (u64, >= 1)
 *     9       8     time_ms        (u64, Unix ms)
 *     17      8     source_seq     (u64, >= 1)
 *     25      2     source length  (u16, 1..AUDIT_SOURCE_MAX)
 *     27      n     source bytes   (visible ASCII 0x21..0x7e)
 *             2     type length    (u16, 1..AUDIT_TYPE_MAX)
 *             n     type bytes     (visible ASCII 0x21..0x7e)
 *             2     txn_id length  (u16, 0..AUDIT_TXN_ID_MAX)
 *             n     txn_id bytes
 *             4     payload length (u32, 0..AUDIT_PAYLOAD_MAX)
 *             n     payload bytes  (the exact bytes received, signed envelopes untouched)
 *             32    prev_hash      (32 zero bytes for seq 1)
 *
 * time_ms is when the event happened at its source (the ledger's commit time for outbox
 * events), or audit's clock when the source gave none; entries are ordered by seq, not time.
 * It is not a protobuf: no re-serialization can change it. The value stored in LMDB under
 * key be64(seq) is canonical(entry) || hash (32 bytes), so a verifier recomputes every hash
 * from stored bytes alone. The first entry's prev_hash is AUDIT_HASH_SIZE zero bytes. */
#ifndef AUDIT_CHAIN_H
#define AUDIT_CHAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto_limits.h"
#include "qc_error.h"

#define AUDIT_HASH_SIZE 32
#define AUDIT_ENCODING_VERSION 1
#define AUDIT_SOURCE_MAX PROTO_AUDIT_NAME_MAX
#define AUDIT_TYPE_MAX PROTO_AUDIT_NAME_MAX
#define AUDIT_TXN_ID_MAX 32
#define AUDIT_PAYLOAD_MAX (192 * 1024) /* fits an RPC frame with room */
/* Fixed part of the encoding: version, three u64, three u16 and one u32 length, prev_hash. */
#define AUDIT_ENCODING_FIXED (1 + 3 * 8 + 3 * 2 + 4 + AUDIT_HASH_SIZE)
#define AUDIT_RECORD_MAX                                                                           \
    (AUDIT_ENCODING_FIXED + AUDIT_SOURCE_MAX + AUDIT_TYPE_MAX + AUDIT_TXN_ID_MAX +                 \
     AUDIT_PAYLOAD_MAX + AUDIT_HASH_SIZE)

_Static_assert(AUDIT_RECORD_MAX < PROTO_RPC_FRAME_MAX, "an entry travels whole in one RPC frame");
_Static_assert(PROTO_TXN_ID_SIZE <= AUDIT_TXN_ID_MAX, "every load's txn id can be indexed");

/* The source name of audit's own entries (checkpoints) and their type, and the prefix of
 * the sources the relay writes for the ledgers' outboxes (audit_relay.h); no caller may use
 * either. */
#define AUDIT_SOURCE_SELF "audit"
#define AUDIT_SOURCE_RELAY_PREFIX "ledger-"
#define AUDIT_TYPE_CHECKPOINT "audit.checkpoint"

/* One entry. Byte fields are borrowed views (into a stored value, or the caller's data);
 * an entry owns nothing. */
typedef struct audit_entry {
    uint64_t seq;
    uint64_t time_ms;
    const char *source; /* not NUL terminated: source_len bytes */
    size_t source_len;
    uint64_t source_seq;
    const char *type; /* not NUL terminated: type_len bytes */
    size_t type_len;
    const uint8_t *txn_id;
    size_t txn_id_len;
    const uint8_t *payload;
    size_t payload_len;
    uint8_t prev_hash[AUDIT_HASH_SIZE];
    uint8_t hash[AUDIT_HASH_SIZE];
} audit_entry_t;

/* Checks every field of e against the limits above (names, lengths, seq >= 1,
 * source_seq >= 1). Returns 0, QC_EINVAL or QC_ETOOBIG. */
QC_MUST_CHECK int audit_chain_validate(const audit_entry_t *e);

/* Length of canonical(e). e must be valid. */
size_t audit_chain_encoded_len(const audit_entry_t *e);

/* Writes canonical(e) into out (capacity cap). Returns 0 and sets *len, or QC_EINVAL when
 * e is invalid, QC_ETOOBIG when cap is too small. */
QC_MUST_CHECK int audit_chain_encode(const audit_entry_t *e, uint8_t *out, size_t cap, size_t *len);

/* Computes SHA-256(e->prev_hash || canonical(e)) into hash (e->hash is neither read nor
 * written). Returns 0, QC_EINVAL (invalid e), QC_ENOMEM or QC_ECRYPTO. */
QC_MUST_CHECK int audit_chain_hash(const audit_entry_t *e, uint8_t hash[AUDIT_HASH_SIZE]);

/* Builds the stored record canonical(e) || e->hash into a malloc'd buffer the caller frees.
 * Returns 0, QC_EINVAL or QC_ENOMEM (with *out NULL). */
QC_MUST_CHECK int audit_chain_record(const audit_entry_t *e, uint8_t **out, size_t *out_len);

/* Parses a stored record (untrusted bytes: a copy of the files may have been altered) into
 * *e, whose byte fields then point into rec. Checks the size first, then every length
 * against the limits and the remaining bytes, the version, the names, and that nothing
 * trails. Does not check the hash. Returns 0, QC_ETOOBIG, QC_EDECODE or QC_EVERSION. */
QC_MUST_CHECK int audit_chain_parse(const uint8_t *rec, size_t len, audit_entry_t *e);

/* Recomputes e's hash and compares it (CRYPTO_memcmp) with e->hash and e->prev_hash with
 * expected_prev. Returns 0 when both hold, QC_EMISMATCH when prev_hash is not expected_prev,
 * QC_EBADSIG when the hash does not match, or the errors of audit_chain_hash(). */
QC_MUST_CHECK int audit_chain_check(const audit_entry_t *e,
                                    const uint8_t expected_prev[AUDIT_HASH_SIZE]);

/* Parses a stored record into *e (as audit_chain_parse()) and checks it (as
 * audit_chain_check()), hashing the stored bytes themselves: the parse is strict, so they
 * are canonical(e). Returns 0 or the first error of either. */
QC_MUST_CHECK int audit_chain_check_record(const uint8_t *rec, size_t len,
                                           const uint8_t expected_prev[AUDIT_HASH_SIZE],
                                           audit_entry_t *e);

#endif
