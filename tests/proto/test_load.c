/* test_load.c - the allow-matches-request rule: a matching pair, then each field changed
 * alone gives QC_EMISMATCH and a sentence naming that field. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "proto_load.h"
#include "qc_error.h"

typedef struct pair {
    uint8_t txn[16], other_txn[16], digest[PROTO_DIGEST_SIZE], other_digest[PROTO_DIGEST_SIZE];
    Quancun__LoadRequest req;
    Quancun__LoadAllow allow;
} pair_t;

static void pair_init(pair_t *p)
{
    memset(p->txn, 0x11, sizeof p->txn);
    memset(p->other_txn, 0x11, sizeof p->other_txn);
    p->other_txn[15] = 0x12;
    memset(p->digest, 0xd1, sizeof p->digest);
    memcpy(p->other_digest, p->digest, sizeof p->digest);
    p->other_digest[0] ^= 0x80;
    p->req = (Quancun__LoadRequest)QUANCUN__LOAD_REQUEST__INIT;
    p->req.txn_id = (ProtobufCBinaryData){.len = sizeof p->txn, .data = p->txn};
    p->req.device_id = "QC0001";
    p->req.account_id = "acct-1";
    p->req.amount = 1200;
    p->req.currency = 156;
    p->req.counter = 7;
    p->allow = (Quancun__LoadAllow)QUANCUN__LOAD_ALLOW__INIT;
    p->allow.txn_id = p->req.txn_id;
    p->allow.device_id = "QC0001";
    p->allow.account_id = "acct-1";
    p->allow.amount = 1200;
    p->allow.currency = 156;
    p->allow.counter = 7;
    p->allow.request_digest = (ProtobufCBinaryData){.len = sizeof p->digest, .data = p->digest};
}

static void test_match(void **state)
{
    (void)state;
    pair_t p;
    pair_init(&p);
    const char *why = "unset";
    assert_int_equal(proto_allow_matches_request(&p.allow, &p.req, p.digest, &why), 0);
    assert_null(why);
    assert_int_equal(proto_allow_matches_request(&p.allow, &p.req, p.digest, NULL), 0);
}

static void expect_mismatch(pair_t *p, const uint8_t *digest, const char *word)
{
    const char *why = NULL;
    assert_int_equal(proto_allow_matches_request(&p->allow, &p->req, digest, &why), QC_EMISMATCH);
    assert_non_null(why);
    if (strstr(why, word) == NULL)
        fail_msg("\"%s\" does not name %s", why, word);
    pair_init(p);
}

static void test_each_field(void **state)
{
    (void)state;
    pair_t p;
    pair_init(&p);
    p.allow.txn_id.data = p.other_txn;
    expect_mismatch(&p, p.digest, "transaction");
    p.allow.txn_id.len = 15;
    expect_mismatch(&p, p.digest, "transaction");
    p.allow.device_id = "QC0002";
    expect_mismatch(&p, p.digest, "device");
    p.allow.device_id = NULL;
    expect_mismatch(&p, p.digest, "device");
    p.allow.account_id = "acct-2";
    expect_mismatch(&p, p.digest, "account");
    p.allow.amount = 1201;
    expect_mismatch(&p, p.digest, "amount");
    p.allow.currency = 840;
    expect_mismatch(&p, p.digest, "currency");
    /* Another counter is a mismatch too (one code for every field), not QC_ESTALE. */
    p.allow.counter = 8;
    expect_mismatch(&p, p.digest, "counter");
    expect_mismatch(&p, p.other_digest, "digest");
    p.allow.request_digest.len = 0;
    expect_mismatch(&p, p.digest, "digest");
    /* A request without a txn id matches nothing, not even an allow without one. */
    p.req.txn_id.len = 0;
    p.allow.txn_id.len = 0;
    expect_mismatch(&p, p.digest, "transaction");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_match),
        cmocka_unit_test(test_each_field),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
