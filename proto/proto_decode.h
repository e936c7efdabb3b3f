/* proto_decode.h - safe decoding of untrusted protobuf bytes.
 *
 * Each proto_decode_*() refuses input over its named limit before parsing, unpacks it with
 * protobuf-c, then checks that every field the protocol needs is present and well-formed
 * (proto3 has no required fields: a zero amount or an empty txn id is a refusal here).
 * On any error nothing is returned and nothing leaks. A message returned in *out is freed
 * by the caller with the matching quancun__*__free_unpacked(msg, NULL).
 *
 * Input must be canonically encoded, as protobuf-c packs it: the parsed message, packed
 * again, must equal the bytes received, byte for byte (proto_decode_canonical()). That
 * refuses (QC_EDECODE) strings with an embedded NUL, which protobuf-c would silently cut
 * short, repeated fields, fields out of field-number order, fields present with their
 * default value (0, empty) and non-minimal varints. Unknown fields are kept and allowed
 * after all known fields, in the order received. Ids (device, account) and methods must be visible
 * ASCII without spaces (0x21..0x7e); an absent field is QC_EMISSING, a zero or negative
 * amount or balance QC_EAMOUNT, a wrong size or value QC_EDECODE, text over its limit
 * QC_ETOOBIG. */
#ifndef PROTO_DECODE_H
#define PROTO_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "proto_limits.h"
#include "quancun.pb-c.h"
#include "qc_error.h"

#define PROTO_NONCE_SIZE 16

/* Returns 0 when packing msg (parsed from bytes) gives exactly the len bytes at bytes, else
 * QC_EDECODE: the canonical-encoding rule of every message we parse from a peer. */
int proto_decode_canonical(const ProtobufCMessage *msg, const uint8_t *bytes, size_t len);

/* Each returns 0 and sets *out, or QC_ETOOBIG, QC_EDECODE, QC_EMISSING, QC_EALG,
 * QC_EAMOUNT with *out NULL. */
QC_MUST_CHECK int proto_decode_load_request(const uint8_t *bytes, size_t len,
                                            Quancun__LoadRequest **out);
QC_MUST_CHECK int proto_decode_load_allow(const uint8_t *bytes, size_t len,
                                          Quancun__LoadAllow **out);
QC_MUST_CHECK int proto_decode_execution_report(const uint8_t *bytes, size_t len,
                                                Quancun__ExecutionReport **out);
QC_MUST_CHECK int proto_decode_load_outcome(const uint8_t *bytes, size_t len,
                                            Quancun__LoadOutcome **out);
QC_MUST_CHECK int proto_decode_audit_checkpoint(const uint8_t *bytes, size_t len,
                                                Quancun__AuditCheckpoint **out);
QC_MUST_CHECK int proto_decode_rpc(const uint8_t *bytes, size_t len, Quancun__Rpc **out);
QC_MUST_CHECK int proto_decode_rpc_reply(const uint8_t *bytes, size_t len, Quancun__RpcReply **out);

/* The request id of an Rpc frame that proto_decode_rpc() refused, so the refusal can be
 * answered: the id of a lenient parse, else of a leading varint field 1; 0 when there is
 * none (or the frame is over PROTO_RPC_FRAME_MAX). Believed for addressing the answer only. */
uint64_t proto_decode_rpc_request_id(const uint8_t *bytes, size_t len);

/* The name of a load state as operators and devices read it: "RESERVED", "CONFIRMED",
 * "COMPENSATED", "LATE_CONFIRMED", "NONE" for the zero value, "UNKNOWN" for anything else.
 * Never NULL; a static string. */
const char *proto_load_state_name(int state);

/* Serializes any protobuf-c message into a malloc'd buffer the caller frees.
 * Returns 0, or QC_ENOMEM with *out NULL. */
QC_MUST_CHECK int proto_pack(const ProtobufCMessage *msg, uint8_t **out, size_t *out_len);

#endif
