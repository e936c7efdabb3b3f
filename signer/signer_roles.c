/* signer_roles.c - which caller may have which kind signed, from two key lists. */
#include "signer_roles.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "ops_log.h"
#include "ops_signal.h"
#include "proto_curve.h"
#include "qc_error.h"

struct signer_roles {
    char *ledger_path;
    char *audit_path;
    proto_curve_keylist_t ledger; /* SIGN_LOAD_ALLOW, SIGN_LOAD_OUTCOME */
    proto_curve_keylist_t audit;  /* SIGN_AUDIT_CHECKPOINT */
    uint64_t hup_seen;
};

/* Both lists, or neither: fresh lists replace the current ones only when both loaded. */
static int roles_load(signer_roles_t *r)
{
    proto_curve_keylist_t ledger = {0}, audit = {0};
    int rc = proto_curve_keylist_load(r->ledger_path, SIGNER_ROLE_KEYS_MAX, &ledger);
    if (rc == 0)
        rc = proto_curve_keylist_load(r->audit_path, SIGNER_ROLE_KEYS_MAX, &audit);
    if (rc != 0) {
        proto_curve_keylist_clear(&ledger);
        proto_curve_keylist_clear(&audit);
        return rc;
    }
    proto_curve_keylist_clear(&r->ledger);
    proto_curve_keylist_clear(&r->audit);
    r->ledger = ledger;
    r->audit = audit;
    return 0;
}

int signer_roles_new(const char *ledger_keys_path, const char *audit_keys_path,
                     signer_roles_t **out)
{
    assert(out != NULL);
    *out = NULL;
    if (ledger_keys_path == NULL || ledger_keys_path[0] == '\0' || audit_keys_path == NULL ||
        audit_keys_path[0] == '\0') {
        ops_log(OPS_LOG_ERROR, "signer.config_invalid", "error",
                "ledger_keys and audit_keys are required: a signer without roles signs nothing",
                NULL);
        return QC_ECONFIG;
    }
    signer_roles_t *r = calloc(1, sizeof *r);
    if (r == NULL)
        return QC_ENOMEM;
    r->ledger_path = strdup(ledger_keys_path);
    r->audit_path = strdup(audit_keys_path);
    int rc = r->ledger_path != NULL && r->audit_path != NULL ? roles_load(r) : QC_ENOMEM;
    if (rc != 0) {
        signer_roles_destroy(&r);
        return rc;
    }
    r->hup_seen = ops_signal_hup_generation();
    *out = r;
    return 0;
}

int signer_roles_refresh(signer_roles_t *r)
{
    assert(r != NULL);
    uint64_t gen = ops_signal_hup_generation();
    if (gen == r->hup_seen)
        return 0;
    r->hup_seen = gen;
    int rc = roles_load(r);
    if (rc != 0) {
        ops_log(OPS_LOG_ERROR, "signer.roles_reload_failed", "error", qc_strerror(rc), "hint",
                "the roles in force are kept", NULL);
        return rc;
    }
    ops_logf(OPS_LOG_INFO, "signer.roles_reloaded", "%zu ledger keys, %zu audit keys",
             r->ledger.count, r->audit.count);
    return 0;
}

const char *signer_roles_role_of(Quancun__SignKind kind)
{
    switch (kind) {
    case QUANCUN__SIGN_KIND__SIGN_LOAD_ALLOW:
    case QUANCUN__SIGN_KIND__SIGN_LOAD_OUTCOME:
        return "ledger";
    case QUANCUN__SIGN_KIND__SIGN_AUDIT_CHECKPOINT:
        return "audit";
    default:
        return NULL;
    }
}

int signer_roles_check(const signer_roles_t *r, Quancun__SignKind kind, const char *peer_z85)
{
    assert(r != NULL);
    assert(peer_z85 != NULL);
    uint8_t key[PROTO_CURVE_KEY_SIZE];
    if (strlen(peer_z85) != PROTO_CURVE_KEY_Z85_LEN || zmq_z85_decode(key, peer_z85) == NULL)
        return QC_EINVAL;
    const char *role = signer_roles_role_of(kind);
    if (role == NULL)
        return QC_EROLE;
    const proto_curve_keylist_t *list = strcmp(role, "ledger") == 0 ? &r->ledger : &r->audit;
    return proto_curve_keylist_contains(list, key) ? 0 : QC_EROLE;
}

void signer_roles_destroy(signer_roles_t **roles_p)
{
    if (roles_p == NULL || *roles_p == NULL)
        return;
    signer_roles_t *r = *roles_p;
    proto_curve_keylist_clear(&r->ledger);
    proto_curve_keylist_clear(&r->audit);
    free(r->ledger_path);
    free(r->audit_path);
    free(r);
    *roles_p = NULL;
}
