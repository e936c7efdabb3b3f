/* fuzz_state.c - libFuzzer target over a device's state file: with FUZZ_STATE_WALLET the
 * wallet's HOME/state (client/wallet/wallet_store.h, text lines), otherwise the card's
 * HOME/card.state (client/card/card_store.h, a CardState protobuf).
 *
 * Both files end with a SHA-256 of what precedes it, which a mutation would almost never
 * match: the target appends the right checksum to its input, so the parser behind the
 * checksum is what gets fuzzed (a file damaged on disk is the refusal the unit tests cover).
 *
 * Properties, beyond "no crash, no leak, no undefined behaviour":
 * - a state that loads saves (it is within every range save checks);
 * - round trip: saved, loaded again and saved again, it writes the same bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_common.h"
#include "proto_envelope.h"

#ifdef FUZZ_STATE_WALLET
#include "device_core.h"
#include "wallet_store.h"
#define STATE_FILE WALLET_STATE_FILE
typedef device_state_t state_t;
#else
#include "card_store.h"
#define STATE_FILE CARD_STATE_FILE
typedef card_state_t state_t;
#endif

static char home[FUZZ_PATH_MAX], file[FUZZ_PATH_MAX];
static state_t *st;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(home, sizeof home, "%s/home", fuzz_scratch_dir());
    FUZZ_CHECK(mkdir(home, 0700) == 0);
    snprintf(file, sizeof file, "%s/%s", home, STATE_FILE);
    st = calloc(1, sizeof(*st)); /* a card's state is ~100 KiB: not on the stack */
    FUZZ_CHECK(st != NULL);
    return 0;
}

/* The input with its checksum appended, as the store writes it. */
static uint8_t *with_checksum(const uint8_t *data, size_t size, size_t *len)
{
    uint8_t digest[PROTO_DIGEST_SIZE];
    FUZZ_CHECK(proto_sha256(data, size, digest) == 0);
#ifdef FUZZ_STATE_WALLET
    size_t tail = strlen("checksum ") + 2 * PROTO_DIGEST_SIZE + 1;
#else
    size_t tail = PROTO_DIGEST_SIZE;
#endif
    uint8_t *buf = malloc(size + tail + 1);
    FUZZ_CHECK(buf != NULL);
    memcpy(buf, data, size);
#ifdef FUZZ_STATE_WALLET
    char *p = (char *)buf + size;
    p += sprintf(p, "checksum ");
    for (size_t i = 0; i < PROTO_DIGEST_SIZE; i++)
        p += snprintf(p, 3, "%02x", digest[i]);
    *p = '\n';
#else
    memcpy(buf + size, digest, PROTO_DIGEST_SIZE);
#endif
    *len = size + tail;
    return buf;
}

static int load(void)
{
#ifdef FUZZ_STATE_WALLET
    device_state_clear(st);
    return wallet_state_load(home, st);
#else
    return card_state_load(home, st);
#endif
}

static int save(void)
{
#ifdef FUZZ_STATE_WALLET
    return wallet_state_save(home, st);
#else
    return card_state_save(home, st);
#endif
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t len = 0;
    uint8_t *bytes = with_checksum(data, size, &len);
    fuzz_write_file(file, bytes, len);
    free(bytes);
    if (load() != 0)
        return 0;
    FUZZ_CHECK(save() == 0);
    size_t first_len = 0;
    uint8_t *first = fuzz_read_file(file, &first_len);
    FUZZ_CHECK(load() == 0);
    FUZZ_CHECK(save() == 0);
    size_t second_len = 0;
    uint8_t *second = fuzz_read_file(file, &second_len);
    FUZZ_CHECK(first_len == second_len && memcmp(first, second, first_len) == 0);
    free(first);
    free(second);
#ifdef FUZZ_STATE_WALLET
    device_state_clear(st);
#endif
    return 0;
}
