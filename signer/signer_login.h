/* signer_login.h - the token opened and logged in with the user PIN, for the service and keygen.
 *
 * The PIN comes from the file named by pin_file, or else from $QC_SIGNER_PIN, which is then wiped
 * from the environment. It is wiped from memory as soon as the token has it. */
#ifndef SIGNER_LOGIN_H
#define SIGNER_LOGIN_H

#include "ops_config.h"
#include "signer_token.h"
#include "qc_error.h"

/* Opens the token of cfg's "module" and "token_label" keys and logs in with the PIN of its
 * "pin_file" key (or $QC_SIGNER_PIN). Returns 0 and sets *out (freed with
 * signer_token_destroy()), or the QC_E* code of signer_token_open(), QC_EIO / QC_ECONFIG (PIN
 * file unreadable, empty or too long; no PIN at all) or of signer_token_login(); every failure
 * is logged. */
QC_MUST_CHECK int signer_login_open(const ops_config_t *cfg, signer_token_t **out);

#endif
