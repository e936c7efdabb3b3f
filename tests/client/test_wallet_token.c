/* test_wallet_token.c - the wallet's keys in a PKCS#11 token (SoftHSM2, one token per wallet
 * in HOME/token): no private key in the home, signing through C_Sign, the token's PIN and its
 * lockout, the state file signed by the token, migration of a PEM home, and a copy of the
 * home without the token being no device. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "ops_hex.h"
#include "proto_envelope.h"
#include "qc_error.h"
#include "wallet_device.h"
#include "wallet_store.h"
#include "wallet_test_bank.h"
#include "wallet_token.h"

#define TT_LABEL "qc-test-wallet"
#define TT_SO_PIN "so-secret-1"
#define TT_AMOUNT 1234
#define TT_CURRENCY 156

static wallet_token_place_t place(void)
{
    wallet_token_place_t p = {
        .module = WALLET_TOKEN_MODULE_DEFAULT,
        .label = TT_LABEL,
        .home_token = true,
        .so_pin = TT_SO_PIN,
        .so_pin_len = strlen(TT_SO_PIN),
    };
    return p;
}

static bool exists(const char *dir, const char *name)
{
    char path[WT_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

static void read_file(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = '\0';
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

/* Installs the certificate and the bank keys on an opened token device. */
static void enroll(wt_bank_t *b, wallet_device_t *dev)
{
    char cert[WT_PATH_MAX + 64], allow[WT_PATH_MAX + 64], outcome[WT_PATH_MAX + 64];
    snprintf(cert, sizeof(cert), "%s/issued.pem", b->dir);
    snprintf(allow, sizeof(allow), "%s/allow.pub", b->dir);
    snprintf(outcome, sizeof(outcome), "%s/outcome.pub", b->dir);
    wt_issue_cert(b, cert); /* from the CSR the token signed */
    qctest_write_pubkey(allow, b->allow_key);
    qctest_write_pubkey(outcome, b->outcome_key);
    assert_int_equal(wallet_device_install_cert(dev, cert), 0);
    assert_int_equal(wallet_device_install_bank(dev, allow, outcome), 0);
}

/* A token device in b->home, enrolled, opened and logged in. */
static wallet_device_t *token_ready(wt_bank_t *b, const char *serial)
{
    wallet_token_place_t p = place();
    assert_int_equal(wallet_device_init_token(b->home, serial, &p, WT_PIN, strlen(WT_PIN)), 0);
    wallet_device_t *dev = NULL;
    assert_int_equal(wallet_device_open(b->home, &dev), 0);
    assert_true(wallet_device_has_token(dev));
    enroll(b, dev);
    assert_int_equal(wallet_device_login(dev, WT_PIN, strlen(WT_PIN), NULL), 0);
    return dev;
}

/* One whole load: request signed in the token, the bank's allow, the report, the outcome.
 * The request and the report are verified with the certificate's public key. */
static void load_once(wt_bank_t *b, wallet_device_t *dev)
{
    device_core_t *c = wallet_device_core(dev);
    const uint8_t *req = NULL;
    size_t req_len = 0;
    assert_int_equal(device_core_request(c, WT_ACCOUNT, TT_AMOUNT, TT_CURRENCY, &req, &req_len), 0);
    Quancun__LoadRequest *r = wt_open_request(b, req, req_len); /* asserts the signature */
    assert_string_equal(r->account_id, WT_ACCOUNT);
    quancun__load_request__free_unpacked(r, NULL);
    uint8_t *allow = NULL;
    size_t allow_len = 0;
    wt_make_allow(b, req, req_len, NULL, NULL, &allow, &allow_len);
    int verdict = -1;
    assert_int_equal(device_core_judge_allow(c, allow, allow_len, &verdict), 0);
    assert_int_equal(verdict, 0);
    const uint8_t *rep = NULL;
    size_t rep_len = 0;
    assert_int_equal(device_core_report(c, &rep, &rep_len), 0);
    Quancun__ExecutionReport *er = wt_open_report(b, rep, rep_len);
    quancun__execution_report__free_unpacked(er, NULL);
    uint8_t *oc = NULL;
    size_t oc_len = 0;
    wt_make_outcome(b, rep, rep_len, false, QUANCUN__LOAD_STATE__LOAD_CONFIRMED, NULL, &oc,
                    &oc_len);
    int ls = 0;
    assert_int_equal(device_core_accept_outcome(c, oc, oc_len, &ls), 0);
    free(allow);
    free(oc);
}

static int64_t balance(wallet_device_t *dev)
{
    device_status_t s;
    device_core_status(wallet_device_core(dev), &s);
    return s.balance;
}

/* Rewrites the state file with every "balance " line set to value and a checksum that
 * matches, as someone who read wallet_store.c would. */
static void forge_state(const char *home, const char *from, const char *to, bool drop_sig)
{
    char path[WT_PATH_MAX + 64], text[16384], out[16384];
    snprintf(path, sizeof(path), "%s/%s", home, WALLET_STATE_FILE);
    read_file(path, text, sizeof(text));
    char *sum = strstr(text, "\nchecksum ");
    assert_non_null(sum);
    sum[1] = '\0';
    if (drop_sig) {
        char *sig = strstr(text, "\nstate_sig ");
        assert_non_null(sig);
        sig[1] = '\0';
    }
    char *at = strstr(text, from);
    assert_non_null(at);
    size_t head = (size_t)(at - text);
    snprintf(out, sizeof(out), "%.*s%s%s", (int)head, text, to, at + strlen(from));
    uint8_t digest[32];
    unsigned int len = 0;
    assert_int_equal(EVP_Digest(out, strlen(out), digest, &len, EVP_sha256(), NULL), 1);
    char hex[65];
    size_t n = strlen(out);
    snprintf(out + n, sizeof(out) - n, "checksum %s\n", ops_hex(digest, sizeof(digest), hex));
    write_file(path, out);
}

static void test_init_keeps_no_private_key(void **state)
{
    (void)state;
    wt_bank_t *b = wt_bank_new();
    wallet_device_t *dev = token_ready(b, "QCTOKEN1");
    wallet_device_destroy(&dev);

    assert_false(exists(b->home, WALLET_KEY_FILE));
    assert_true(exists(b->home, WALLET_TOKEN_CONF_FILE));
    assert_true(exists(b->home, WALLET_TOKEN_DIR "/" WALLET_TOKEN_SOFTHSM_CONF));
    /* No file directly in the home holds a private key in PEM. */
    const char *names[] = {WALLET_CSR_FILE, WALLET_CERT_FILE, WALLET_BANK_FILE, WALLET_STATE_FILE,
                           WALLET_TOKEN_CONF_FILE};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char path[WT_PATH_MAX + 64], text[16384];
        snprintf(path, sizeof(path), "%s/%s", b->home, names[i]);
        read_file(path, text, sizeof(text));
        assert_null(strstr(text, "PRIVATE KEY"));
    }
    /* The state is signed by the token's state key. */
    char path[WT_PATH_MAX + 64], text[16384];
    snprintf(path, sizeof(path), "%s/%s", b->home, WALLET_STATE_FILE);
    read_file(path, text, sizeof(text));
    assert_non_null(strstr(text, "\nstate_sig "));
    /* A second init in the same home is refused. */
    wallet_token_place_t p = place();
    assert_int_equal(wallet_device_init_token(b->home, "QCTOKEN1", &p, WT_PIN, strlen(WT_PIN)),
                     QC_EEXIST);
    wt_bank_free(b);
}

static void test_load_signs_in_token(void **state)
{
    (void)state;
    wt_bank_t *b = wt_bank_new();
    wallet_device_t *dev = token_ready(b, "QCTOKEN2");
    load_once(b, dev);
    assert_int_equal(balance(dev), TT_AMOUNT);
    wallet_device_destroy(&dev);

    /* Reopened: the signed state verifies; nothing is signed before the token's PIN. */
    assert_int_equal(wallet_device_open(b->home, &dev), 0);
    assert_int_equal(balance(dev), TT_AMOUNT);
    const uint8_t *req = NULL;
    size_t req_len = 0;
    assert_int_equal(device_core_request(wallet_device_core(dev), WT_ACCOUNT, TT_AMOUNT,
                                         TT_CURRENCY, &req, &req_len),
                     QC_EDENIED);
    /* The state's own PIN check is not the PIN any more: the token's is. */
    assert_int_equal(device_core_verify_pin(wallet_device_core(dev), WT_PIN, strlen(WT_PIN)),
                     QC_EDENIED);
    assert_int_equal(wallet_device_login(dev, WT_PIN, strlen(WT_PIN), NULL), 0);
    load_once(b, dev);
    assert_int_equal(balance(dev), 2 * TT_AMOUNT);
    wallet_device_destroy(&dev);
    wt_bank_free(b);
}

static void test_pin_is_the_tokens(void **state)
{
    (void)state;
    wt_bank_t *b = wt_bank_new();
    wallet_device_t *dev = token_ready(b, "QCTOKEN3");
    wallet_device_destroy(&dev);

    /* Each wrong PIN is counted in the token, across opens (restarts). */
    uint32_t tries = 99;
    for (uint32_t i = 1; i < WALLET_TOKEN_TRIES; i++) {
        assert_int_equal(wallet_device_open(b->home, &dev), 0);
        assert_int_equal(wallet_device_login(dev, "0000", 4, &tries), QC_EPIN);
        assert_int_equal(tries, WALLET_TOKEN_TRIES - i);
        assert_int_equal(wallet_device_pin_tries(dev), WALLET_TOKEN_TRIES - i);
        wallet_device_destroy(&dev);
    }
    /* A right PIN resets the count. */
    assert_int_equal(wallet_device_open(b->home, &dev), 0);
    assert_int_equal(wallet_device_login(dev, WT_PIN, strlen(WT_PIN), &tries), 0);
    assert_int_equal(tries, WALLET_TOKEN_TRIES);
    wallet_device_destroy(&dev);
    /* WALLET_TOKEN_TRIES wrong ones lock it; then the right one is refused too. */
    for (uint32_t i = 1; i <= WALLET_TOKEN_TRIES; i++) {
        assert_int_equal(wallet_device_open(b->home, &dev), 0);
        assert_int_equal(wallet_device_login(dev, "1111", 4, &tries),
                         i < WALLET_TOKEN_TRIES ? QC_EPIN : QC_ELOCKED);
        wallet_device_destroy(&dev);
    }
    assert_int_equal(wallet_device_open(b->home, &dev), 0);
    assert_int_equal(wallet_device_login(dev, WT_PIN, strlen(WT_PIN), &tries), QC_ELOCKED);
    assert_int_equal(tries, 0);
    /* The issuer unblocks it with the SO PIN (a wrong SO PIN does not), setting a new PIN. */
    assert_int_equal(wallet_device_unblock(dev, "wrong-so", 8, "1357", 4), QC_EPIN);
    assert_int_equal(wallet_device_unblock(dev, TT_SO_PIN, strlen(TT_SO_PIN), "1357", 4), 0);
    wallet_device_destroy(&dev);
    assert_int_equal(wallet_device_open(b->home, &dev), 0);
    assert_int_equal(wallet_device_login(dev, WT_PIN, strlen(WT_PIN), &tries), QC_EPIN);
    wallet_device_destroy(&dev);
    assert_int_equal(wallet_device_open(b->home, &dev), 0);
    assert_int_equal(wallet_device_login(dev, "1357", 4, &tries), 0);
    wallet_device_destroy(&dev);
    wt_bank_free(b);
}

static void test_state_edit_refused(void **state)
{
    (void)state;
    wt_bank_t *b = wt_bank_new();
    wallet_device_t *dev = token_ready(b, "QCTOKEN4");
    load_once(b, dev);
    wallet_device_destroy(&dev);

    /* The balance raised, with a checksum that matches: the token's signature does not. */
    char path[WT_PATH_MAX + 64], saved[16384];
    snprintf(path, sizeof(path), "%s/%s", b->home, WALLET_STATE_FILE);
    read_file(path, saved, sizeof(saved));
    forge_state(b->home, "\nbalance 1234\n", "\nbalance 999999\n", false);
    assert_int_equal(wallet_device_open(b->home, &dev), QC_EBADSIG);
    assert_null(dev);
    /* The counter rolled back: refused as well. */
    write_file(path, saved);
    forge_state(b->home, "\ncounter 1\n", "\ncounter 0\n", false);
    assert_int_equal(wallet_device_open(b->home, &dev), QC_EBADSIG);
    /* The signature line removed: refused (a token wallet's state is always signed). */
    write_file(path, saved);
    forge_state(b->home, "\nbalance 1234\n", "\nbalance 999999\n", true);
    assert_int_equal(wallet_device_open(b->home, &dev), QC_EBADSIG);
    /* And the file as the wallet wrote it opens. */
    write_file(path, saved);
    assert_int_equal(wallet_device_open(b->home, &dev), 0);
    assert_int_equal(balance(dev), TT_AMOUNT);
    wallet_device_destroy(&dev);
    wt_bank_free(b);
}

static EVP_PKEY *read_pem_key(const char *home)
{
    char path[WT_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%s", home, WALLET_KEY_FILE);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(k);
    return k;
}

static void test_migrate_pem_home(void **state)
{
    (void)state;
    wt_bank_t *b = wt_bank_new();
    wallet_device_t *dev = wt_device_ready(b, "QCMIGRATE");
    assert_false(wallet_device_has_token(dev));
    assert_int_equal(device_core_verify_pin(wallet_device_core(dev), WT_PIN, strlen(WT_PIN)), 0);
    load_once(b, dev);
    wallet_device_destroy(&dev);
    EVP_PKEY *pem = read_pem_key(b->home);

    char path[WT_PATH_MAX + 64], before[16384], after[16384];
    snprintf(path, sizeof(path), "%s/%s", b->home, WALLET_STATE_FILE);
    read_file(path, before, sizeof(before));
    char *pin_hash = strstr(before, "\npin_hash ");
    assert_non_null(pin_hash);
    pin_hash[1 + strlen("pin_hash ") + 64] = '\0';

    /* A wrong PIN moves nothing. */
    wallet_token_place_t p = place();
    assert_int_equal(wallet_device_migrate_token(b->home, &p, "0000", 4), QC_EPIN);
    assert_true(exists(b->home, WALLET_KEY_FILE));
    assert_false(exists(b->home, WALLET_TOKEN_CONF_FILE));

    assert_int_equal(wallet_device_migrate_token(b->home, &p, WT_PIN, strlen(WT_PIN)), 0);
    assert_false(exists(b->home, WALLET_KEY_FILE));
    assert_int_equal(wallet_device_migrate_token(b->home, &p, WT_PIN, strlen(WT_PIN)), QC_EEXIST);

    /* The same device: same balance, same certificate, its key now signs inside the token. */
    assert_int_equal(wallet_device_open(b->home, &dev), 0);
    assert_true(wallet_device_has_token(dev));
    assert_int_equal(balance(dev), TT_AMOUNT);
    device_status_t s;
    device_core_status(wallet_device_core(dev), &s);
    assert_true(s.has_cert);
    assert_int_equal(s.counter, 1);
    assert_int_equal(wallet_device_login(dev, WT_PIN, strlen(WT_PIN), NULL), 0);
    const uint8_t *req = NULL;
    size_t req_len = 0;
    assert_int_equal(device_core_request(wallet_device_core(dev), WT_ACCOUNT, TT_AMOUNT,
                                         TT_CURRENCY, &req, &req_len),
                     0);
    proto_envelope_t *env = NULL;
    assert_int_equal(proto_envelope_open(req, req_len, &env), 0);
    assert_int_equal(proto_envelope_verify(env, PROTO_TYPE_LOAD_REQUEST, pem), 0);
    proto_envelope_destroy(&env);
    wallet_device_destroy(&dev);
    EVP_PKEY_free(pem);
    /* Its PIN hash is gone from the state file with the key. */
    read_file(path, after, sizeof(after));
    assert_null(strstr(after, pin_hash));
    wt_bank_free(b);
}

static void copy_home(const char *from, const char *to, bool with_token)
{
    char cmd[8 * WT_PATH_MAX];
    int n = snprintf(cmd, sizeof(cmd), "cp -a '%s' '%s' && rm -f '%s/.lock'%s%s%s", from, to, to,
                     with_token ? "" : " && rm -rf '", with_token ? "" : to,
                     with_token ? "" : "/" WALLET_TOKEN_DIR "'");
    assert_true(n > 0);
    assert_true((size_t)n < sizeof(cmd));
    assert_int_equal(system(cmd), 0);
}

static void test_copied_home_is_not_the_device(void **state)
{
    (void)state;
    wt_bank_t *b = wt_bank_new();
    wallet_device_t *dev = token_ready(b, "QCTOKEN5");
    load_once(b, dev);
    wallet_device_destroy(&dev);

    /* Another machine gets the home but not the USB key (HOME/token): no device. */
    char copy[WT_PATH_MAX + 32];
    snprintf(copy, sizeof(copy), "%s/copy", b->dir);
    copy_home(b->home, copy, false);
    assert_int_equal(wallet_device_open(copy, &dev), QC_EUNAVAIL);
    assert_null(dev);
    /* Nor does a PEM key put into the copy make one: the state is bound to the token. */
    char cmd[4 * WT_PATH_MAX];
    int n = snprintf(cmd, sizeof(cmd), "rm -f '%s/%s'", copy, WALLET_TOKEN_CONF_FILE);
    assert_true(n > 0);
    assert_true((size_t)n < sizeof(cmd));
    assert_int_equal(system(cmd), 0);
    assert_int_equal(wallet_device_open(copy, &dev), QC_EDECODE);

    /* The token folder is the USB key itself: copied with it, the whole device is copied,
     * as a stolen key would be (its PIN still guards it). */
    char whole[WT_PATH_MAX + 32];
    snprintf(whole, sizeof(whole), "%s/whole", b->dir);
    copy_home(b->home, whole, true);
    assert_int_equal(wallet_device_open(whole, &dev), 0);
    assert_int_equal(balance(dev), TT_AMOUNT);
    wallet_device_destroy(&dev);
    wt_bank_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_keeps_no_private_key),
        cmocka_unit_test(test_load_signs_in_token),
        cmocka_unit_test(test_pin_is_the_tokens),
        cmocka_unit_test(test_state_edit_refused),
        cmocka_unit_test(test_migrate_pem_home),
        cmocka_unit_test(test_copied_home_is_not_the_device),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
