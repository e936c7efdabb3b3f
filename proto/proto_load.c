/* proto_load.c - the allow-matches-request rule (proto_load.h). */
#include "proto_load.h"

#include <assert.h>
#include <stdbool.h>
#include <string.h>

#include <openssl/crypto.h>

#include "qc_error.h"

static bool bytes_same(ProtobufCBinaryData a, const uint8_t *b, size_t b_len)
{
    return a.len == b_len && a.data != NULL && CRYPTO_memcmp(a.data, b, b_len) == 0;
}

static bool text_same(const char *a, const char *b)
{
    return a != NULL && b != NULL && strcmp(a, b) == 0;
}

int proto_allow_matches_request(const Quancun__LoadAllow *allow,
                                const Quancun__LoadRequest *request,
                                const uint8_t request_digest[PROTO_DIGEST_SIZE], const char **why)
{
    assert(allow != NULL);
    assert(request != NULL);
    assert(request_digest != NULL);
    const char *sentence = NULL;
    if (request->txn_id.len == 0 ||
        !bytes_same(allow->txn_id, request->txn_id.data, request->txn_id.len))
        sentence = "allow names another transaction";
    else if (!text_same(allow->device_id, request->device_id))
        sentence = "allow names another device";
    else if (!text_same(allow->account_id, request->account_id))
        sentence = "allow names another account";
    else if (allow->amount != request->amount)
        sentence = "allow amount differs from the request";
    else if (allow->currency != request->currency)
        sentence = "allow currency differs from the request";
    else if (allow->counter != request->counter)
        sentence = "allow names another counter";
    else if (!bytes_same(allow->request_digest, request_digest, PROTO_DIGEST_SIZE))
        sentence = "allow request digest does not match the signed request";
    if (why != NULL)
        *why = sentence;
    return sentence == NULL ? 0 : QC_EMISMATCH;
}
