/* wallet_receipt.h - a load's receipt from the bank's audit log, fetched, checked and kept by
 * the wallet (proto/proto_receipt.h holds the checks; docs/PROTOCOL.md the methods).
 *
 * Files of the home:
 *   checkpoint.pem  the bank's audit-checkpoint certificate or public key (install-bank
 *                   --checkpoint): the only key a receipt is checked under
 *   treehead        the last signed tree head the wallet verified (a Signed AuditCheckpoint,
 *                   as the bank sent it): every new head must extend it
 *   treehead.fork   a head that does not extend it, kept as evidence when a fork is seen
 *
 * A receipt is accepted when its tree head verifies under checkpoint.pem, every entry of the
 * load is proven in it, and that head is consistent with the kept one: same size, same root;
 * larger, with a consistency proof from the kept head (fetched with "tree_consistency"); or
 * smaller, with a proof that it is a prefix of the kept head (the kept one stays). Only then
 * does a larger head replace the kept one. */
#ifndef WALLET_RECEIPT_H
#define WALLET_RECEIPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "device_flow.h"
#include "proto_receipt.h"
#include "qc_error.h"

#define WALLET_CHECKPOINT_FILE "checkpoint.pem"
#define WALLET_TREE_HEAD_FILE "treehead"
#define WALLET_TREE_HEAD_FORK_FILE "treehead.fork"
#define WALLET_RECEIPT_FILE_MAX (PROTO_RECEIPT_REPLY_MAX + 64) /* an exported receipt */

typedef struct wallet_receipt_result {
    proto_receipt_t receipt; /* the verified receipt */
    bool had_head;           /* a head was kept before */
    uint64_t kept_size;      /* its size (the one kept after the call) */
    bool advanced;           /* the receipt's head replaced the kept one */
} wallet_receipt_result_t;

/* Copies the PEM at pem_path into HOME/checkpoint.pem after checking it holds a P-256 key.
 * Returns 0, QC_EIO or QC_ECERT. */
QC_MUST_CHECK int wallet_receipt_install_checkpoint(const char *home, const char *pem_path);

/* Fetches the receipt of txn_id (16 bytes) with call ("receipt", then "tree_consistency" when
 * a head is kept), checks it as above and keeps its head. On success *reply (malloc'd, the
 * caller frees) is the ProveReply as received, for export.
 * Returns 0; QC_EMISSING (no checkpoint.pem installed); QC_EMISMATCH (a fork: the log shown
 * does not extend the one seen before; the new head is kept in treehead.fork), the checks'
 * codes (QC_EKEYID, QC_EBADSIG, QC_EDECODE ...); the server's refusal (QC_ENOTFOUND: nothing
 * about this load under a signed head yet, *server_message says more); the transport's
 * (QC_ETIMEOUT, QC_EUNAVAIL); QC_EIO, QC_ENOMEM. */
QC_MUST_CHECK int wallet_receipt_get(const char *home, device_call_fn *call, void *arg,
                                     const uint8_t *txn_id, wallet_receipt_result_t *out,
                                     uint8_t **reply, size_t *reply_len,
                                     char server_message[DEVICE_MESSAGE_MAX + 1]);

/* Writes a Receipt {txn_id, prove_reply} to path (mode 0644). Returns 0, QC_EIO, QC_ENOMEM. */
QC_MUST_CHECK int wallet_receipt_export(const char *path, const uint8_t *txn_id,
                                        const uint8_t *reply, size_t reply_len);

/* Reads a Receipt from path and verifies it under key (proto_receipt_verify()); txn_id gets
 * the load it is about. Returns 0, QC_EIO, QC_ETOOBIG, QC_EDECODE or the checks' codes. */
QC_MUST_CHECK int wallet_receipt_verify_file(const char *path, EVP_PKEY *key,
                                             uint8_t txn_id[PROTO_TXN_ID_SIZE],
                                             proto_receipt_t *out);

#endif
