/* signer_sign.h - one "sign" request: check the body's type, sign its digest in the token, seal.
 *
 * The signer signs only what parses as the message its kind names (docs/DESIGN.md section 5):
 *   SIGN_LOAD_ALLOW       -> LoadAllow,       key "allow-signing",    context .../LoadAllow
 *   SIGN_LOAD_OUTCOME     -> LoadOutcome,     key "outcome-signing",  context .../LoadOutcome
 *   SIGN_AUDIT_CHECKPOINT -> AuditCheckpoint, key "audit-checkpoint", context .../AuditCheckpoint
 * Every signature made is counted in metrics (qc_signer_signatures_total{kind=...}) and
 * reported as an audit event. */
#ifndef SIGNER_SIGN_H
#define SIGNER_SIGN_H

#include <stddef.h>
#include <stdint.h>

#include "signer_token.h"
#include "qc_error.h"

#define SIGNER_REQUEST_MAX (PROTO_BODY_MAX + 64) /* a SignRequest: kind plus one body */
#define SIGNER_MESSAGE_MAX 160                   /* an error message for the caller */

typedef enum signer_kind {
    SIGNER_KIND_ALLOW = 0,
    SIGNER_KIND_OUTCOME,
    SIGNER_KIND_CHECKPOINT,
    SIGNER_KIND_COUNT
} signer_kind_t;

/* The token key label of kind ("allow-signing", "outcome-signing", "audit-checkpoint"). */
const char *signer_kind_label(signer_kind_t kind);
/* The short name of kind used in metrics and logs ("load_allow", ...). */
const char *signer_kind_name(signer_kind_t kind);

/* The bank's three keys, one per kind. Read-only once loaded: shared by the workers. */
typedef struct signer_keyring signer_keyring_t;

/* Finds the key of every kind in tok at versions[kind] (each must exist: a missing key is
 * logged by name and version). Returns 0 and sets *out, or the first error of
 * signer_token_find_key() (QC_EKEYID when a key is missing). */
QC_MUST_CHECK int signer_keyring_load(signer_token_t *tok,
                                      const uint32_t versions[SIGNER_KIND_COUNT],
                                      signer_keyring_t **out);

/* The key of kind, borrowed. */
const signer_key_t *signer_keyring_key(const signer_keyring_t *ring, signer_kind_t kind);

/* Frees ring and its keys, nulls *ring_p; accepts NULL. */
void signer_keyring_destroy(signer_keyring_t **ring_p);

/* Handles the body of one "sign" request (a serialized SignRequest) with sess:
 * size, parse, kind, then the body must decode as the kind's message; then the digest
 * proto_envelope_digest(type, body) is signed with the kind's key (CKM_ECDSA) and sealed
 * into a Signed envelope with the key's id and version. On success *reply is a malloc'd
 * serialized SignReply the caller frees. On error *reply is NULL and msg (capacity
 * SIGNER_MESSAGE_MAX) says why, for the caller. Returns 0; QC_ETOOBIG, QC_EDECODE (not a
 * SignRequest, an unknown kind, or a body that is not the kind's message); QC_EUNAVAIL or
 * QC_ECRYPTO from the token; QC_ENOMEM. */
QC_MUST_CHECK int signer_sign_request(signer_session_t *sess, const signer_keyring_t *ring,
                                      const uint8_t *req, size_t req_len, uint8_t **reply,
                                      size_t *reply_len, char msg[SIGNER_MESSAGE_MAX]);

#endif
