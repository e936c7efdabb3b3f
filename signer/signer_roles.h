/* signer_roles.h - which caller may have which kind signed: the signer's authorization.
 *
 * The allow-list (config `allow`) decides who may connect at all. The roles decide what a
 * connected caller may have signed, by kind:
 *
 *   kind                    role      config key     who holds it
 *   SIGN_LOAD_ALLOW         ledger    ledger_keys    ledger shards: they reserve, then ask
 *   SIGN_LOAD_OUTCOME       ledger    ledger_keys    ledger shards: they settle, then ask
 *   SIGN_AUDIT_CHECKPOINT   audit     audit_keys     the audit service
 *
 * Each key file holds one Z85 CURVE public key per line ('#' comments). Both are required: a
 * signer without roles signs nothing. They are re-read on SIGHUP (ops_signal.h); a file that
 * no longer loads keeps the roles in force (logged as signer.roles_reload_failed). Any other
 * peer, or a peer asking for another role's kind, is refused with QC_EROLE before anything is
 * signed: the service counts it, logs it and sends it to the audit log as a security event. */
#ifndef SIGNER_ROLES_H
#define SIGNER_ROLES_H

#include <stdbool.h>

#include "signer.pb-c.h"
#include "qc_error.h"

#define SIGNER_ROLE_KEYS_MAX 1024 /* keys in one role's file */

typedef struct signer_roles signer_roles_t;

/* Loads both role files. Returns 0 and sets *out, or QC_ECONFIG (a path missing, a file
 * unreadable or not a key list; logged with the path) or QC_ENOMEM. */
QC_MUST_CHECK int signer_roles_new(const char *ledger_keys_path, const char *audit_keys_path,
                                   signer_roles_t **out);

/* Re-reads both files when a SIGHUP came since the last look; keeps the current roles when
 * either fails to load. Returns 0, or the load's error (the roles did not change). */
QC_MUST_CHECK int signer_roles_refresh(signer_roles_t *roles);

/* The name of the role that may have kind signed ("ledger", "audit"), NULL for none. */
const char *signer_roles_role_of(Quancun__SignKind kind);

/* 0 when the caller with CURVE public key peer_z85 may have kind signed; QC_EROLE when it
 * holds no role for it (an unknown kind included); QC_EINVAL for a key that is not Z85. */
QC_MUST_CHECK int signer_roles_check(const signer_roles_t *roles, Quancun__SignKind kind,
                                     const char *peer_z85);

/* Frees roles and nulls *roles_p; accepts NULL. */
void signer_roles_destroy(signer_roles_t **roles_p);

#endif
