/* proto_limits.h - the limits that more than one module must agree on, each defined once,
 * and the relations between them checked by the compiler.
 *
 * A limit only one module reads stays beside the code it bounds (docs/DESIGN.md, "Limits").
 * A limit of the protocol, which the device, the gateway, the ledger, the signer and audit
 * all read, is defined here; a module that wants its own name for one (LEDGER_ID_MAX,
 * DEVICE_SERIAL_MAX, AUDIT_SOURCE_MAX) defines that name as the limit here, never as a
 * second number. Changing a value here changes the wire: bodies, envelopes and frames
 * that were accepted may be refused, so every party must be rebuilt together. */
#ifndef PROTO_LIMITS_H
#define PROTO_LIMITS_H

/* Identifiers and codes inside bodies. */
#define PROTO_TXN_ID_SIZE 16    /* bytes of a txn id, the saga's idempotency key */
#define PROTO_DEVICE_ID_MAX 64  /* bytes of a device id (a certificate's CN), without the NUL */
#define PROTO_ACCOUNT_ID_MAX 64 /* bytes of an account id, without the NUL */
#define PROTO_METHOD_MAX 32     /* bytes of an RPC method name */
#define PROTO_REASON_MAX 256    /* bytes of a report's or a refusal's reason */
#define PROTO_CURRENCY_MAX 999  /* ISO 4217 numeric codes are three digits */
#define PROTO_AUDIT_NAME_MAX 64 /* bytes of an audit source ("ledger-0") or event type */

/* Messages, from the inside out: a body is signed into an envelope, which travels in a frame. */
#define PROTO_BODY_MAX 4096              /* any signed body */
#define PROTO_CERT_MAX 4096              /* a certificate an envelope may carry */
#define PROTO_ENVELOPE_FIXED_MAX 1024    /* the rest of an envelope: signature, key id, tags */
#define PROTO_ENVELOPE_MAX (32 * 1024)   /* any signed envelope */
#define PROTO_RPC_MESSAGE_MAX 1024       /* RpcReply.message: words, not payload */
#define PROTO_RPC_FRAME_MAX (256 * 1024) /* any Rpc or RpcReply frame (also ZMQ_MAXMSGSIZE) */
#define PROTO_RPC_LEADER_MAX 256         /* RpcReply.leader: a client endpoint */
#define PROTO_RPC_TIMEOUT_MAX 86400000u  /* Rpc.timeout_ms: a call's budget, 24 h at most */

/* Sharding and the outbox. */
#define PROTO_SHARD_COUNT_MAX 256 /* ledger shards of one deployment */
/* Events in one outbox_read, asked by audit, served by the ledger. */
#define PROTO_OUTBOX_READ_MAX 1024

_Static_assert(PROTO_CURRENCY_MAX == 999, "ISO 4217 numeric codes have three digits");
_Static_assert(PROTO_DEVICE_ID_MAX + PROTO_ACCOUNT_ID_MAX + PROTO_REASON_MAX < PROTO_BODY_MAX,
               "a body holds both ids and a reason");
_Static_assert(PROTO_BODY_MAX + PROTO_CERT_MAX + PROTO_ENVELOPE_FIXED_MAX <= PROTO_ENVELOPE_MAX,
               "an envelope holds the largest body and the largest certificate");
_Static_assert(PROTO_ENVELOPE_MAX + PROTO_RPC_MESSAGE_MAX < PROTO_RPC_FRAME_MAX,
               "a reply frame holds an envelope and a message");
_Static_assert(PROTO_METHOD_MAX < PROTO_RPC_MESSAGE_MAX, "a method name fits a message");

#endif
