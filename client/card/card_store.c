/* card_store.c - the card's state file: a CardState protobuf and its SHA-256. */
#include "card_store.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "card.pb-c.h"
#include "proto_decode.h"
#include "proto_envelope.h"
#include "qc_error.h"

_Static_assert(CARD_XFER_ID_SIZE == PROTO_TXN_ID_SIZE, "a transfer id is a txn id");

#define CARD_STATE_MODE 0600

static int state_check(const card_state_t *st)
{
    if (!device_pki_id_valid(st->number))
        return QC_EINVAL;
    if (st->max_balance <= 0 || st->max_balance > CARD_BALANCE_MAX_LIMIT || st->balance < 0 ||
        st->balance > st->max_balance)
        return QC_EINVAL;
    if (st->trusted_count > CARD_TRUSTED_MAX || st->transfer_count > CARD_TRANSFERS_MAX)
        return QC_EINVAL;
    for (size_t i = 0; i < st->trusted_count; i++) {
        if (!device_pki_id_valid(st->trusted[i]))
            return QC_EINVAL;
    }
    for (size_t i = 0; i < st->transfer_count; i++) {
        if (!device_pki_id_valid(st->transfers[i].device_id) || st->transfers[i].amount <= 0)
            return QC_EINVAL;
    }
    if (st->pin.tries_left > DEVICE_PIN_TRIES || st->pin.iterations < DEVICE_PIN_ITERATIONS_MIN ||
        st->pin.iterations > DEVICE_PIN_ITERATIONS_MAX)
        return QC_EINVAL;
    if (strnlen(st->log_pending, sizeof(st->log_pending)) > DEVICE_LOG_LINE_MAX)
        return QC_EINVAL;
    return 0;
}

int card_state_save(const char *home, const card_state_t *st)
{
    assert(home != NULL);
    assert(st != NULL);
    int rc = state_check(st);
    if (rc != 0)
        return rc;
    Qccard__CardState cs = QCCARD__CARD_STATE__INIT;
    char *trusted[CARD_TRUSTED_MAX];
    /* Up to CARD_TRANSFERS_MAX records: on the heap rather than ~100 KiB of stack. */
    size_t count = st->transfer_count > 0 ? st->transfer_count : 1;
    Qccard__CardTransferRecord *recs = calloc(count, sizeof(*recs));
    Qccard__CardTransferRecord **rec_ptrs = calloc(count, sizeof(*rec_ptrs));
    uint8_t *buf = NULL;
    if (recs == NULL || rec_ptrs == NULL) {
        rc = QC_ENOMEM;
        goto out;
    }
    cs.version = CARD_STATE_VERSION;
    cs.card_number = (char *)st->number; /* pack only reads */
    cs.balance = st->balance;
    cs.max_balance = st->max_balance;
    cs.counter = st->counter;
    cs.pin_salt.data = (uint8_t *)st->pin.salt;
    cs.pin_salt.len = DEVICE_PIN_SALT_SIZE;
    cs.pin_hash.data = (uint8_t *)st->pin.hash;
    cs.pin_hash.len = DEVICE_PIN_HASH_SIZE;
    cs.pin_iterations = st->pin.iterations;
    cs.pin_tries_left = st->pin.tries_left;
    for (size_t i = 0; i < st->trusted_count; i++)
        trusted[i] = (char *)st->trusted[i];
    cs.n_trusted = st->trusted_count;
    cs.trusted = trusted;
    for (size_t i = 0; i < st->transfer_count; i++) {
        const card_record_t *r = &st->transfers[i];
        qccard__card_transfer_record__init(&recs[i]);
        recs[i].transfer_id.data = (uint8_t *)r->transfer_id;
        recs[i].transfer_id.len = CARD_XFER_ID_SIZE;
        recs[i].device_id = (char *)r->device_id;
        recs[i].amount = r->amount;
        recs[i].counter = r->counter;
        recs[i].balance_after = r->balance_after;
        recs[i].time_ms = r->time_ms;
        rec_ptrs[i] = &recs[i];
    }
    cs.n_transfers = st->transfer_count;
    cs.transfers = rec_ptrs;
    cs.log_seq = st->log_seq;
    cs.log_pending = (char *)st->log_pending;

    size_t len = qccard__card_state__get_packed_size(&cs);
    rc = QC_EINVAL;
    if (len + PROTO_DIGEST_SIZE > DEVICE_STATE_FILE_MAX)
        goto out;
    rc = QC_ENOMEM;
    buf = malloc(len + PROTO_DIGEST_SIZE);
    if (buf == NULL)
        goto out;
    size_t packed = qccard__card_state__pack(&cs, buf);
    assert(packed == len);
    rc = proto_sha256(buf, len, buf + len);
    if (rc == 0)
        rc =
            device_home_write(home, CARD_STATE_FILE, buf, len + PROTO_DIGEST_SIZE, CARD_STATE_MODE);
    OPENSSL_cleanse(buf, len + PROTO_DIGEST_SIZE);
out:
    free(buf);
    free(recs);
    free(rec_ptrs);
    return rc;
}

/* Copies a decoded CardState into st, refusing anything out of range. */
static int state_from_msg(const Qccard__CardState *cs, card_state_t *st)
{
    if (cs->version != CARD_STATE_VERSION || cs->card_number == NULL ||
        strlen(cs->card_number) > CARD_NUMBER_MAX || cs->pin_salt.len != DEVICE_PIN_SALT_SIZE ||
        cs->pin_hash.len != DEVICE_PIN_HASH_SIZE || cs->n_trusted > CARD_TRUSTED_MAX ||
        cs->n_transfers > CARD_TRANSFERS_MAX || cs->log_pending == NULL ||
        strlen(cs->log_pending) > DEVICE_LOG_LINE_MAX)
        return QC_EDECODE;
    memcpy(st->number, cs->card_number, strlen(cs->card_number) + 1);
    st->balance = cs->balance;
    st->max_balance = cs->max_balance;
    st->counter = cs->counter;
    memcpy(st->pin.salt, cs->pin_salt.data, DEVICE_PIN_SALT_SIZE);
    memcpy(st->pin.hash, cs->pin_hash.data, DEVICE_PIN_HASH_SIZE);
    st->pin.iterations = cs->pin_iterations;
    st->pin.tries_left = cs->pin_tries_left;
    for (size_t i = 0; i < cs->n_trusted; i++) {
        if (strlen(cs->trusted[i]) > CARD_NUMBER_MAX)
            return QC_EDECODE;
        memcpy(st->trusted[i], cs->trusted[i], strlen(cs->trusted[i]) + 1);
    }
    st->trusted_count = cs->n_trusted;
    for (size_t i = 0; i < cs->n_transfers; i++) {
        const Qccard__CardTransferRecord *m = cs->transfers[i];
        card_record_t *r = &st->transfers[i];
        if (m->transfer_id.len != CARD_XFER_ID_SIZE || m->device_id == NULL ||
            strlen(m->device_id) > CARD_NUMBER_MAX)
            return QC_EDECODE;
        memcpy(r->transfer_id, m->transfer_id.data, CARD_XFER_ID_SIZE);
        memcpy(r->device_id, m->device_id, strlen(m->device_id) + 1);
        r->amount = m->amount;
        r->counter = m->counter;
        r->balance_after = m->balance_after;
        r->time_ms = m->time_ms;
    }
    st->transfer_count = cs->n_transfers;
    st->log_seq = cs->log_seq;
    memcpy(st->log_pending, cs->log_pending, strlen(cs->log_pending) + 1);
    return state_check(st) == 0 ? 0 : QC_EDECODE;
}

int card_state_load(const char *home, card_state_t *st)
{
    assert(home != NULL);
    assert(st != NULL);
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = device_home_read(home, CARD_STATE_FILE, DEVICE_STATE_FILE_MAX, &buf, &len);
    if (rc != 0)
        return rc;
    memset(st, 0, sizeof(*st));
    uint8_t digest[PROTO_DIGEST_SIZE];
    Qccard__CardState *cs = NULL;
    rc = QC_EDECODE;
    if (len <= PROTO_DIGEST_SIZE)
        goto out;
    size_t body_len = len - PROTO_DIGEST_SIZE;
    if (proto_sha256(buf, body_len, digest) != 0) {
        rc = QC_ECRYPTO;
        goto out;
    }
    if (CRYPTO_memcmp(digest, buf + body_len, sizeof(digest)) != 0)
        goto out;
    cs = qccard__card_state__unpack(NULL, body_len, buf);
    if (cs == NULL)
        goto out;
    rc = state_from_msg(cs, st);
out:
    if (cs != NULL)
        qccard__card_state__free_unpacked(cs, NULL);
    OPENSSL_cleanse(buf, len);
    free(buf);
    if (rc != 0)
        OPENSSL_cleanse(st, sizeof(*st));
    return rc;
}
