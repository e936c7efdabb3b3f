/* fuzz_decode.c - libFuzzer target over one proto_decode_*() decoder, chosen at build time
 * with FUZZ_DECODER (load_request, load_allow, execution_report, load_outcome,
 * audit_checkpoint, rpc, rpc_reply).
 *
 * Properties, beyond "no crash, no leak, no undefined behaviour":
 * - canonical: bytes the decoder accepts re-pack to exactly the same bytes (proto_decode.h:
 *   one meaning per byte string, which a signature over bytes needs); with
 *   FUZZ_CANONICAL_BYTES 0 (proto/ not yet checking bytes, see CMakeLists.txt) the same length;
 * - round trip: the re-packed message decodes again, and packs to the same bytes. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "proto_decode.h"

#ifndef FUZZ_DECODER
#error "FUZZ_DECODER names the decoder of this target"
#endif

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define DECODE CAT(proto_decode_, FUZZ_DECODER)

/* The decoder as one shape for all: its message as a ProtobufCMessage. */
static int decode(const uint8_t *bytes, size_t len, ProtobufCMessage **out)
{
    *out = NULL;
    void *msg = NULL;
    int rc = DECODE(bytes, len, (void *)&msg);
    FUZZ_CHECK((rc == 0) == (msg != NULL));
    *out = msg;
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ProtobufCMessage *msg = NULL;
    if (decode(data, size, &msg) != 0)
        return 0;
    uint8_t *packed = NULL;
    size_t packed_len = 0;
    FUZZ_CHECK(proto_pack(msg, &packed, &packed_len) == 0);
    FUZZ_CHECK(packed_len == size);
    FUZZ_CHECK(!FUZZ_CANONICAL_BYTES || size == 0 || memcmp(packed, data, size) == 0);

    ProtobufCMessage *again = NULL;
    FUZZ_CHECK(decode(packed, packed_len, &again) == 0);
    uint8_t *repacked = NULL;
    size_t repacked_len = 0;
    FUZZ_CHECK(proto_pack(again, &repacked, &repacked_len) == 0);
    FUZZ_CHECK(repacked_len == packed_len && memcmp(repacked, packed, packed_len) == 0);

    free(repacked);
    free(packed);
    protobuf_c_message_free_unpacked(again, NULL);
    protobuf_c_message_free_unpacked(msg, NULL);
    return 0;
}
