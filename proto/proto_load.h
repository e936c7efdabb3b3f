/* proto_load.h - the rules that tie the messages of one load together, written once for
 * every party that checks them: the device (before it credits its wallet), the load generator
 * (which plays a fleet of devices), and the ledger, which builds the allow itself from the
 * stored request after its debit and asserts the rule of the body it has the bank sign.
 *
 * "The allow says what the request says": a LoadAllow belongs to a LoadRequest when it names
 * the same txn_id, device_id, account_id, amount, currency and counter, and carries the
 * SHA-256 of the signed request's body (docs/DESIGN.md, "The load protocol").
 *
 * One code for every differing field, QC_EMISMATCH ("message content does not match the
 * load"): whichever field differs, the allow is not the one for this request, and nobody can
 * act on it differently. The other candidates each mean something else: QC_EDEVICEID is a
 * device id that does not match its certificate, QC_ESTALE a request older than the
 * device's known counter (a ledger refusal of a request, not a property of an allow). The
 * sentence returned names the field, for logs, refusals and the device's report. */
#ifndef PROTO_LOAD_H
#define PROTO_LOAD_H

#include <stdint.h>

#include "proto_envelope.h"
#include "quancun.pb-c.h"
#include "qc_error.h"

/* Checks that allow says what request says, field by field in the order txn_id, device_id,
 * account_id, amount, currency, counter, request digest. request_digest is the SHA-256 of
 * the signed request's body (the caller has it: the ledger from the bytes it received, a
 * device from what it signed). Only those fields of request are read, so a caller may fill a
 * Quancun__LoadRequest with just them. NULL strings compare as differing.
 * Returns 0, or QC_EMISMATCH with *why (if why is not NULL) set to a static sentence naming
 * the first field that differs ("allow names another counter"); *why is NULL on 0. */
QC_MUST_CHECK int proto_allow_matches_request(const Quancun__LoadAllow *allow,
                                              const Quancun__LoadRequest *request,
                                              const uint8_t request_digest[PROTO_DIGEST_SIZE],
                                              const char **why);

#endif
