/* fuzz_msgs.h - the real messages the seeds are made of, built the same way in every process.
 *
 * Each body is deterministic (fixed ids, amounts and times), so a target can rebuild the set
 * of bodies fuzz_seed signed and tell a signed body from one the fuzzer made up: the
 * envelope target's "no field believed without its signature". */
#ifndef FUZZ_MSGS_H
#define FUZZ_MSGS_H

#include <stddef.h>
#include <stdint.h>

#include "proto_envelope.h"

#define FUZZ_DEVICE_ID "FUZZ-DEVICE-0001" /* the CN of the seeds' device certificate */
#define FUZZ_CARD_NUMBER "FUZZ-CARD-0001"
#define FUZZ_ACCOUNT_ID "ACC-FUZZ-0001"
#define FUZZ_CA_CN "quancun fuzz CA"
#define FUZZ_CA_FILE "ca.pem"             /* in FUZZ_DATA_DIR, written by fuzz_seed */
#define FUZZ_CERT_VALID_S (3650L * 86400) /* the seeds' certificates: ten years */

/* The body of a message of type (every proto_type_t), packed into a malloc'd *out the caller
 * frees. Aborts on failure. */
void fuzz_body(proto_type_t type, uint8_t **out, size_t *out_len);

#endif
