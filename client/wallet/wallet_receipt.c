/* wallet_receipt.c - fetch a load's receipt, check it and its head's consistency, keep the head. */
#include "wallet_receipt.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "audit.pb-c.h"
#include "device_home.h"
#include "proto_cert.h"
#include "proto_decode.h"

#define RECEIPT_FILE_MODE 0600
#define RECEIPT_EXPORT_MODE 0644

int wallet_receipt_install_checkpoint(const char *home, const char *pem_path)
{
    assert(home != NULL);
    assert(pem_path != NULL);
    EVP_PKEY *key = NULL;
    int rc = proto_key_load_pem(pem_path, &key);
    EVP_PKEY_free(key);
    if (rc != 0)
        return rc == QC_EIO ? QC_EIO : QC_ECERT;
    FILE *f = fopen(pem_path, "rb");
    if (f == NULL)
        return QC_EIO;
    uint8_t *buf = malloc(DEVICE_FILE_MAX);
    size_t n = buf != NULL ? fread(buf, 1, DEVICE_FILE_MAX, f) : 0;
    bool bad = buf == NULL || ferror(f) || !feof(f);
    fclose(f);
    rc = bad ? QC_EIO : device_home_write(home, WALLET_CHECKPOINT_FILE, buf, n, RECEIPT_FILE_MODE);
    free(buf);
    return rc;
}

static int receipt_key(const char *home, EVP_PKEY **key)
{
    char path[DEVICE_PATH_MAX];
    int rc = device_home_path(home, WALLET_CHECKPOINT_FILE, path);
    if (rc != 0)
        return rc;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return errno == ENOENT ? QC_EMISSING : QC_EIO;
    fclose(f);
    return proto_key_load_pem(path, key);
}

/* Calls method with m packed; a refusal's code is returned, its words into message. */
static int receipt_call(device_call_fn *call, void *arg, const char *method,
                        const ProtobufCMessage *m, device_reply_t *out, char *message)
{
    uint8_t *body = NULL;
    size_t len = 0;
    int rc = proto_pack(m, &body, &len);
    if (rc != 0)
        return rc;
    rc = call(arg, method, body, len, out);
    free(body);
    if (rc == 0 && out->code != 0) {
        snprintf(message, DEVICE_MESSAGE_MAX + 1, "%s", out->message);
        rc = out->code;
    }
    if (rc == 0 && out->body_len > PROTO_RECEIPT_REPLY_MAX)
        rc = QC_ETOOBIG;
    return rc;
}

/* Asks for the consistency proof from the head of old_size to that of new_size, checks that
 * the bank's head of new_size is the one given (same root) and the proof. */
static int receipt_consistency(device_call_fn *call, void *arg, EVP_PKEY *key,
                               const proto_tree_head_t *old_head, const proto_tree_head_t *new_head,
                               char *message)
{
    Qcaudit__ConsistencyRequest req = QCAUDIT__CONSISTENCY_REQUEST__INIT;
    req.old_size = old_head->size;
    req.new_size = new_head->size;
    device_reply_t reply;
    memset(&reply, 0, sizeof reply);
    int rc = receipt_call(call, arg, PROTO_METHOD_TREE_CONSISTENCY, &req.base, &reply, message);
    if (rc == 0)
        rc = proto_receipt_check_reply(PROTO_METHOD_TREE_CONSISTENCY, reply.body, reply.body_len);
    Qcaudit__ConsistencyReply *c =
        rc == 0 ? qcaudit__consistency_reply__unpack(NULL, reply.body_len, reply.body) : NULL;
    if (rc == 0 && c == NULL)
        rc = QC_EDECODE;
    proto_tree_head_t shown;
    if (rc == 0)
        rc = proto_tree_head_open(c->tree_head.data, c->tree_head.len, key, &shown);
    /* Two signed heads of one size with different roots are a fork by themselves. */
    if (rc == 0 && (shown.size != new_head->size ||
                    CRYPTO_memcmp(shown.root, new_head->root, PROTO_MERKLE_HASH_SIZE) != 0))
        rc = QC_EMISMATCH;
    proto_merkle_hash_t proof[PROTO_MERKLE_PROOF_MAX];
    for (size_t i = 0; rc == 0 && i < c->n_proof; i++)
        memcpy(proof[i], c->proof[i].data, PROTO_MERKLE_HASH_SIZE); /* shape checked above */
    if (rc == 0)
        rc = proto_tree_head_consistent(old_head, new_head, proof, c->n_proof);
    if (c != NULL)
        qcaudit__consistency_reply__free_unpacked(c, NULL);
    device_reply_clear(&reply);
    return rc;
}

/* Checks the receipt's head against the kept one and keeps the newer (see the header). */
static int receipt_keep_head(const char *home, device_call_fn *call, void *arg, EVP_PKEY *key,
                             const uint8_t *head_bytes, size_t head_len,
                             wallet_receipt_result_t *out, char *message)
{
    const proto_tree_head_t *cur = &out->receipt.head;
    uint8_t *kept_bytes = NULL;
    size_t kept_len = 0;
    int rc =
        device_home_read(home, WALLET_TREE_HEAD_FILE, PROTO_ENVELOPE_MAX, &kept_bytes, &kept_len);
    proto_tree_head_t kept;
    if (rc == QC_ENOTFOUND) {
        rc = 0;
    } else if (rc == 0) {
        /* The kept head is checked again: a file is not trusted because it is ours. */
        rc = proto_tree_head_open(kept_bytes, kept_len, key, &kept);
        out->had_head = rc == 0;
        out->kept_size = rc == 0 ? kept.size : 0;
    }
    if (rc == 0 && out->had_head) {
        if (kept.size == cur->size)
            rc =
                CRYPTO_memcmp(kept.root, cur->root, PROTO_MERKLE_HASH_SIZE) == 0 ? 0 : QC_EMISMATCH;
        else if (kept.size < cur->size)
            rc = receipt_consistency(call, arg, key, &kept, cur, message);
        else
            rc = receipt_consistency(call, arg, key, cur, &kept, message);
        if (rc == QC_EMISMATCH)
            QC_IGNORE(device_home_write(home, WALLET_TREE_HEAD_FORK_FILE, head_bytes, head_len,
                                        RECEIPT_FILE_MODE));
    }
    if (rc == 0 && (!out->had_head || cur->size > kept.size)) {
        rc =
            device_home_write(home, WALLET_TREE_HEAD_FILE, head_bytes, head_len, RECEIPT_FILE_MODE);
        out->advanced = rc == 0;
        if (rc == 0)
            out->kept_size = cur->size;
    }
    free(kept_bytes);
    return rc;
}

int wallet_receipt_get(const char *home, device_call_fn *call, void *arg, const uint8_t *txn_id,
                       wallet_receipt_result_t *out, uint8_t **reply_out, size_t *reply_len,
                       char server_message[DEVICE_MESSAGE_MAX + 1])
{
    assert(home != NULL);
    assert(call != NULL);
    assert(txn_id != NULL);
    assert(out != NULL);
    assert(reply_out != NULL);
    assert(reply_len != NULL);
    memset(out, 0, sizeof *out);
    *reply_out = NULL;
    *reply_len = 0;
    server_message[0] = '\0';
    EVP_PKEY *key = NULL;
    int rc = receipt_key(home, &key);
    if (rc != 0)
        return rc;
    Qcaudit__ProveRequest req = QCAUDIT__PROVE_REQUEST__INIT;
    req.txn_id.data = (uint8_t *)txn_id;
    req.txn_id.len = PROTO_TXN_ID_SIZE;
    device_reply_t reply;
    memset(&reply, 0, sizeof reply);
    rc = receipt_call(call, arg, PROTO_METHOD_RECEIPT, &req.base, &reply, server_message);
    if (rc == 0)
        rc = proto_receipt_verify(reply.body, reply.body_len, key, txn_id, &out->receipt);
    Qcaudit__ProveReply *r =
        rc == 0 ? qcaudit__prove_reply__unpack(NULL, reply.body_len, reply.body) : NULL;
    if (rc == 0 && r == NULL)
        rc = QC_EDECODE;
    if (rc == 0)
        rc = receipt_keep_head(home, call, arg, key, r->tree_head.data, r->tree_head.len, out,
                               server_message);
    if (r != NULL)
        qcaudit__prove_reply__free_unpacked(r, NULL);
    if (rc == 0) {
        *reply_out = reply.body;
        *reply_len = reply.body_len;
        reply.body = NULL;
    }
    device_reply_clear(&reply);
    EVP_PKEY_free(key);
    return rc;
}

int wallet_receipt_export(const char *path, const uint8_t *txn_id, const uint8_t *reply,
                          size_t reply_len)
{
    assert(path != NULL);
    assert(txn_id != NULL);
    assert(reply != NULL);
    Qcaudit__Receipt m = QCAUDIT__RECEIPT__INIT;
    m.txn_id.data = (uint8_t *)txn_id;
    m.txn_id.len = PROTO_TXN_ID_SIZE;
    m.prove_reply.data = (uint8_t *)reply;
    m.prove_reply.len = reply_len;
    uint8_t *bytes = NULL;
    size_t len = 0;
    int rc = proto_pack(&m.base, &bytes, &len);
    if (rc != 0)
        return rc;
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        free(bytes);
        return QC_EIO;
    }
    bool ok = fwrite(bytes, 1, len, f) == len;
    ok = fclose(f) == 0 && ok;
    free(bytes);
    return ok ? 0 : QC_EIO;
}

int wallet_receipt_verify_file(const char *path, EVP_PKEY *key, uint8_t txn_id[PROTO_TXN_ID_SIZE],
                               proto_receipt_t *out)
{
    assert(path != NULL);
    assert(key != NULL);
    assert(out != NULL);
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return QC_EIO;
    uint8_t *buf = malloc(WALLET_RECEIPT_FILE_MAX + 1);
    size_t n = buf != NULL ? fread(buf, 1, WALLET_RECEIPT_FILE_MAX + 1, f) : 0;
    bool bad = buf == NULL || ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return buf == NULL ? QC_ENOMEM : QC_EIO;
    }
    if (n > WALLET_RECEIPT_FILE_MAX) {
        free(buf);
        return QC_ETOOBIG;
    }
    Qcaudit__Receipt *m = qcaudit__receipt__unpack(NULL, n, buf);
    int rc = m == NULL ? QC_EDECODE : 0;
    if (rc == 0 &&
        (qcaudit__receipt__get_packed_size(m) != n || m->txn_id.len != PROTO_TXN_ID_SIZE))
        rc = QC_EDECODE;
    if (rc == 0) {
        memcpy(txn_id, m->txn_id.data, PROTO_TXN_ID_SIZE);
        rc = proto_receipt_verify(m->prove_reply.data, m->prove_reply.len, key, txn_id, out);
    }
    if (m != NULL)
        qcaudit__receipt__free_unpacked(m, NULL);
    free(buf);
    return rc;
}
