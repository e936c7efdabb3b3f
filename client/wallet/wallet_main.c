/* wallet_main.c - qc-wallet, the host program of the simulated USB-key e-purse: creates the
 * device, installs what enrollment gives it, and runs loads against the gateway. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <zmq.h>

#include "card_host.h"
#include "ops_config.h"
#include "ops_hex.h"
#include "ops_log.h"
#include "ops_time.h"
#include "proto_cert.h"
#include "proto_rpc.h"
#include "qc_error.h"
#include "device_amount.h"
#include "wallet_device.h"
#include "device_flow.h"
#include "wallet_receipt.h"
#include "wallet_store.h"
#include "wallet_token.h"

#define MAIN_PROGRAM "qc-wallet"
#define MAIN_TRANSPORT_KEY_FILE "transport.key"
#define MAIN_CONFIG_FILE "wallet.conf"
#define MAIN_CARD_CONFIG_FILE "card.conf" /* card_ca, card_trust, reader for the card verbs */
#define MAIN_LINE_MAX 64 /* a typed PIN or answer, with room to spot one too long */
#define MAIN_EXIT_OK 0
#define MAIN_EXIT_FAILED 1 /* the operation ran and did not succeed */
#define MAIN_EXIT_USAGE 2  /* bad command line or bad amount: nothing was done */
#define MAIN_ARGV_MAX 64
#define MAIN_LOG_CHUNK 4096
#define MAIN_TOKEN_LABEL_DEFAULT "qc-wallet"
#define MAIN_SO_PIN_RANDOM_BYTES 16

/* ------------------------------------------------------------------ the option tables */

#define KEY_HOME                                                                                   \
    {                                                                                              \
        "home", OPS_CONFIG_STRING, NULL, "the device's home directory (required)"                  \
    }
#define KEY_LOG_LEVEL                                                                              \
    {                                                                                              \
        "log_level", OPS_CONFIG_STRING, "error", "lowest level of JSON log lines"                  \
    }
#define KEY_PIN_FD                                                                                 \
    {                                                                                              \
        "pin_fd", OPS_CONFIG_INT, "-1",                                                            \
            "read the PIN from this file descriptor (else env QC_WALLET_PIN, else the terminal)"   \
    }

#define KEY_TOKEN_MODULE                                                                           \
    {                                                                                              \
        "token_module", OPS_CONFIG_STRING, NULL,                                                   \
            "PKCS#11 module of the token (default " WALLET_TOKEN_MODULE_DEFAULT ")"                \
    }
#define KEY_TOKEN_LABEL                                                                            \
    {                                                                                              \
        "token_label", OPS_CONFIG_STRING, NULL,                                                    \
            "label of the token that holds the device key (with SoftHSM2: a new token in "         \
            "HOME/token)"                                                                          \
    }
#define KEY_TOKEN_EXISTING                                                                         \
    {                                                                                              \
        "token_existing", OPS_CONFIG_BOOL, "false",                                                \
            "the token is a key its issuer initialized (found by label, PIN = its user PIN), not " \
            "one this wallet creates in HOME/token"                                                \
    }

static const ops_config_key_t init_keys[] = {
    KEY_HOME,
    {"serial", OPS_CONFIG_STRING, NULL, "hardware serial (default: QC + 16 random hex digits)"},
    KEY_PIN_FD,
    KEY_TOKEN_MODULE,
    KEY_TOKEN_LABEL,
    KEY_TOKEN_EXISTING,
    {"pem_key", OPS_CONFIG_BOOL, "false",
     "keep the device key as a PEM file in HOME (no token: tests and tools only)"},
    KEY_LOG_LEVEL,
};
static const ops_config_key_t migrate_keys[] = {
    KEY_HOME, KEY_PIN_FD, KEY_TOKEN_MODULE, KEY_TOKEN_LABEL, KEY_TOKEN_EXISTING, KEY_LOG_LEVEL,
};
static const ops_config_key_t home_keys[] = {KEY_HOME, KEY_LOG_LEVEL};
static const ops_config_key_t bank_keys[] = {
    KEY_HOME,
    {"allow", OPS_CONFIG_STRING, NULL, "PEM certificate or public key that signs allows"},
    {"outcome", OPS_CONFIG_STRING, NULL, "PEM certificate or public key that signs outcomes"},
    {"checkpoint", OPS_CONFIG_STRING, NULL,
     "PEM certificate or public key that signs the audit log's tree heads (receipts)"},
    KEY_LOG_LEVEL,
};
static const ops_config_key_t unlock_keys[] = {
    KEY_HOME,
    KEY_PIN_FD,
    {"admin_reset", OPS_CONFIG_BOOL, "false",
     "reset the PIN retry counter (a real device needs the issuer's signed command)"},
    KEY_LOG_LEVEL,
};
/* load and sync share one table so that one wallet.conf serves both. */
static const ops_config_key_t net_keys[] = {
    KEY_HOME,
    {"account", OPS_CONFIG_STRING, NULL, "load: the bank account to load from"},
    {"currency", OPS_CONFIG_INT, "156", "load: ISO 4217 numeric currency"},
    {"yes", OPS_CONFIG_BOOL, "false", "load: do not ask for confirmation"},
    {"confirm_timeout_s", OPS_CONFIG_INT, "30", "load: seconds to wait for y/N"},
    KEY_PIN_FD,
    {"gateway", OPS_CONFIG_STRING, NULL, "gateway endpoints, comma-separated",
     .check = ops_config_check_endpoints},
    {"gateway_key", OPS_CONFIG_STRING, NULL, "the gateway's CURVE public key (Z85)",
     .check = ops_config_check_curve_key},
    {"timeout_ms", OPS_CONFIG_INT, "5000", "time allowed for one call to the gateway"},
    KEY_LOG_LEVEL,
};
/* receipt: the gateway keys of load and sync (one wallet.conf serves all three), and where to
 * export the receipt. */
static const ops_config_key_t receipt_keys[] = {
    KEY_HOME,
    {"account", OPS_CONFIG_STRING, NULL, "(load's, ignored)"},
    {"currency", OPS_CONFIG_INT, "156", "(load's, ignored)"},
    {"yes", OPS_CONFIG_BOOL, "false", "(load's, ignored)"},
    {"confirm_timeout_s", OPS_CONFIG_INT, "30", "(load's, ignored)"},
    KEY_PIN_FD,
    {"gateway", OPS_CONFIG_STRING, NULL, "gateway endpoints, comma-separated",
     .check = ops_config_check_endpoints},
    {"gateway_key", OPS_CONFIG_STRING, NULL, "the gateway's CURVE public key (Z85)",
     .check = ops_config_check_curve_key},
    {"timeout_ms", OPS_CONFIG_INT, "5000", "time allowed for one call to the gateway"},
    {"export", OPS_CONFIG_STRING, NULL, "also write the verified receipt to this file"},
    KEY_LOG_LEVEL,
};
static const ops_config_key_t verify_receipt_keys[] = {
    {"checkpoint", OPS_CONFIG_STRING, NULL,
     "the bank's audit-checkpoint certificate or public key (PEM)"},
    KEY_LOG_LEVEL,
};
/* card-transfer and card-sync: the card is reached through a PC/SC reader. */
static const ops_config_key_t card_keys[] = {
    KEY_HOME,
    {"reader", OPS_CONFIG_STRING, NULL,
     "the PC/SC reader holding the card (default: the first \"Virtual PCD\" with a card, else "
     "the first reader with one)"},
    {"card_ca", OPS_CONFIG_STRING, NULL, "PEM CA bundle that card certificates must chain to"},
    {"card_trust", OPS_CONFIG_STRING, NULL, "card numbers this wallet accepts, comma-separated"},
    {"yes", OPS_CONFIG_BOOL, "false", "card-transfer: do not ask for confirmation"},
    {"confirm_timeout_s", OPS_CONFIG_INT, "30", "card-transfer: seconds to wait for y/N"},
    KEY_PIN_FD,
    {"card_pin_fd", OPS_CONFIG_INT, "-1",
     "read the card's PIN from this descriptor (else env QC_CARD_PIN, else the terminal)"},
    KEY_LOG_LEVEL,
};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ------------------------------------------------------------------ output */

static void say_error(const char *what, int code, const char *server_message)
{
    if (server_message != NULL && server_message[0] != '\0' &&
        strcmp(server_message, qc_strerror(code)) != 0)
        fprintf(stderr, "%s: %s: %s (%s; %s)\n", MAIN_PROGRAM, what, qc_strerror(code),
                server_message, qc_errname(code));
    else
        fprintf(stderr, "%s: %s: %s (%s)\n", MAIN_PROGRAM, what, qc_strerror(code),
                qc_errname(code));
}

/* When the bank sent its clock with a refusal and ours differs by more than a second,
 * says so: a skewed clock is a cause the user (or vendor) can fix. */
static void say_clock(uint64_t server_time_ms)
{
    if (server_time_ms == 0)
        return;
    uint64_t now = ops_time_wall_ms();
    uint64_t skew = now > server_time_ms ? now - server_time_ms : server_time_ms - now;
    if (skew > 1000)
        fprintf(stderr, "%s: note: this device's clock is %.1f s %s the bank's\n", MAIN_PROGRAM,
                (double)skew / 1000.0, now > server_time_ms ? "ahead of" : "behind");
}

static const char *amount_text(int64_t minor, char buf[DEVICE_AMOUNT_FORMAT_MAX])
{
    return device_amount_format(minor, buf, DEVICE_AMOUNT_FORMAT_MAX);
}

/* ------------------------------------------------------------------ terminal and PIN input */

/* Reads one line from fd into buf (capacity cap), without the newline, waiting at most
 * timeout_ms per byte (-1 = forever). Returns the length, or QC_ETIMEOUT, QC_EIO, QC_EINVAL
 * (line too long). */
static int read_line(int fd, char *buf, size_t cap, int timeout_ms)
{
    size_t n = 0;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, timeout_ms);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr == 0)
            return QC_ETIMEOUT;
        if (pr < 0)
            return QC_EIO;
        char c;
        ssize_t r = read(fd, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return QC_EIO;
        if (r == 0 || c == '\n')
            break;
        if (n + 1 >= cap)
            return QC_EINVAL;
        buf[n++] = c;
    }
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    buf[n] = '\0';
    return (int)n;
}

/* Prompts on the terminal, with echo off when secret. Returns as read_line(). */
static int tty_prompt(const char *prompt, bool secret, char *buf, size_t cap, int timeout_ms)
{
    int fd = open("/dev/tty", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return QC_EIO;
    struct termios old, quiet;
    bool restore = false;
    if (secret && tcgetattr(fd, &old) == 0) {
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
        restore = tcsetattr(fd, TCSAFLUSH, &quiet) == 0;
    }
    int rc = (int)write(fd, prompt, strlen(prompt)) < 0 ? QC_EIO : 0;
    if (rc == 0)
        rc = read_line(fd, buf, cap, timeout_ms);
    if (restore) {
        (void)tcsetattr(fd, TCSAFLUSH, &old);
        (void)!write(fd, "\n", 1);
    }
    close(fd);
    return rc;
}

/* Gets a PIN from the descriptor of key fd_key, the environment variable env_name or the
 * terminal (prompt). twice asks the terminal twice (init). Returns the length, or a
 * negative code with a message printed. */
static int get_secret(const ops_config_t *cfg, const char *fd_key, const char *env_name,
                      const char *prompt, bool twice, char pin[MAIN_LINE_MAX])
{
    int64_t fd = ops_config_int(cfg, fd_key);
    const char *env = getenv(env_name);
    int rc;
    if (fd >= 0) {
        rc = fd > INT32_MAX ? QC_EINVAL : read_line((int)fd, pin, MAIN_LINE_MAX, -1);
        if (rc < 0)
            fprintf(stderr, "%s: cannot read the PIN from descriptor %" PRId64 ": %s\n",
                    MAIN_PROGRAM, fd, qc_strerror(rc));
        return rc;
    }
    if (env != NULL) {
        size_t n = strnlen(env, MAIN_LINE_MAX);
        if (n >= MAIN_LINE_MAX)
            return QC_EINVAL;
        memcpy(pin, env, n + 1);
        return (int)n;
    }
    rc = tty_prompt(prompt, true, pin, MAIN_LINE_MAX, -1);
    if (rc >= 0 && twice) {
        char again[MAIN_LINE_MAX];
        int rc2 = tty_prompt("PIN again: ", true, again, sizeof(again), -1);
        if (rc2 != rc || CRYPTO_memcmp(pin, again, (size_t)rc) != 0) {
            fprintf(stderr, "%s: the two PINs differ\n", MAIN_PROGRAM);
            rc = QC_EPIN;
        }
        OPENSSL_cleanse(again, sizeof(again));
    }
    if (rc == QC_EIO) {
        char flag[MAIN_LINE_MAX]; /* the key as its flag: pin_fd -> pin-fd */
        snprintf(flag, sizeof(flag), "%s", fd_key);
        for (char *p = flag; *p != '\0'; p++)
            *p = *p == '_' ? '-' : *p;
        fprintf(stderr, "%s: no terminal to ask the PIN on: give --%s N or set %s\n", MAIN_PROGRAM,
                flag, env_name);
    }
    return rc;
}

/* The wallet PIN: --pin-fd, QC_WALLET_PIN or the terminal. */
static int get_pin(const ops_config_t *cfg, bool twice, char pin[MAIN_LINE_MAX])
{
    return get_secret(cfg, "pin_fd", "QC_WALLET_PIN", "PIN: ", twice, pin);
}

/* ------------------------------------------------------------------ device helpers */

/* Set by main for the verbs that sign or change the state: a token wallet logs in to its
 * token as it is opened (the token, not the state file, checks the PIN). */
static bool g_login_at_open;

/* Logs in to a token wallet's token with the PIN. Prints why on failure. */
static int token_login(wallet_device_t *dev, const ops_config_t *cfg)
{
    char pin[MAIN_LINE_MAX];
    int n = get_pin(cfg, false, pin);
    if (n < 0) {
        OPENSSL_cleanse(pin, sizeof(pin));
        return n;
    }
    uint32_t tries = 0;
    int rc = wallet_device_login(dev, pin, (size_t)n, &tries);
    OPENSSL_cleanse(pin, sizeof(pin));
    if (rc == QC_EPIN)
        fprintf(stderr, "%s: wrong PIN (the token refused it), %" PRIu32 " %s left\n", MAIN_PROGRAM,
                tries, tries == 1 ? "try" : "tries");
    else if (rc == QC_ELOCKED)
        fprintf(stderr,
                "%s: the token's PIN is locked after %u wrong PINs; its issuer must unblock it "
                "with the token's SO PIN\n",
                MAIN_PROGRAM, WALLET_TOKEN_TRIES);
    else if (rc != 0)
        say_error("the token refused the login", rc, NULL);
    return rc;
}

static int open_device(const ops_config_t *cfg, wallet_device_t **dev)
{
    const char *home = ops_config_str(cfg, "home");
    int rc = wallet_device_open(home, dev);
    if (rc == QC_EUNAVAIL)
        fprintf(stderr,
                "%s: the token that holds this device's keys is not present (see %s/%s): the "
                "keys never leave it, so a copy of the home without it is not the device; plug "
                "the key in (or restore %s/%s)\n",
                MAIN_PROGRAM, home, WALLET_TOKEN_CONF_FILE, home, WALLET_TOKEN_DIR);
    else if (rc == QC_EBADSIG)
        fprintf(stderr,
                "%s: the state file in %s is not signed by this device's token: it was edited "
                "or replaced; refusing it (QC_EBADSIG)\n",
                MAIN_PROGRAM, home);
    if (rc == 0 && g_login_at_open && wallet_device_has_token(*dev) &&
        token_login(*dev, cfg) != 0) {
        wallet_device_destroy(dev);
        return QC_EPIN;
    }
    if (rc == QC_EUNAVAIL || rc == QC_EBADSIG)
        return rc;
    if (rc == QC_ENOTFOUND)
        fprintf(stderr, "%s: no device in %s: create one with `%s init --home %s`\n", MAIN_PROGRAM,
                home, MAIN_PROGRAM, home);
    else if (rc == QC_EBUSY)
        fprintf(stderr, "%s: the device in %s is in use by another qc-wallet\n", MAIN_PROGRAM,
                home);
    else if (rc != 0)
        say_error("cannot open the device", rc, NULL);
    return rc;
}

static int check_pin(wallet_device_t *dev, const ops_config_t *cfg)
{
    if (wallet_device_has_token(dev))
        return 0; /* the token checked the PIN as the device was opened (g_login_at_open) */
    char pin[MAIN_LINE_MAX];
    int n = get_pin(cfg, false, pin);
    if (n < 0) {
        OPENSSL_cleanse(pin, sizeof(pin));
        return n;
    }
    int rc = device_core_verify_pin(wallet_device_core(dev), pin, (size_t)n);
    OPENSSL_cleanse(pin, sizeof(pin));
    device_status_t s;
    device_core_status(wallet_device_core(dev), &s);
    if (rc == QC_EPIN)
        fprintf(stderr, "%s: wrong PIN, %" PRIu32 " %s left\n", MAIN_PROGRAM, s.pin_tries_left,
                s.pin_tries_left == 1 ? "try" : "tries");
    else if (rc == QC_ELOCKED)
        fprintf(stderr,
                "%s: the device is locked after %u wrong PINs; the issuer must reset it "
                "(`%s unlock --admin-reset`)\n",
                MAIN_PROGRAM, DEVICE_PIN_TRIES, MAIN_PROGRAM);
    else if (rc != 0)
        say_error("PIN check failed", rc, NULL);
    return rc;
}

/* ------------------------------------------------------------------ the network */

typedef struct net {
    void *ctx;
    proto_rpc_client_t *cli;
    int timeout_ms;
} net_t;

static int net_call(void *arg, const char *method, const uint8_t *body, size_t body_len,
                    device_reply_t *out)
{
    net_t *net = arg;
    memset(out, 0, sizeof(*out));
    proto_rpc_reply_t *reply = NULL;
    int rc = proto_rpc_client_call(net->cli, method, body, body_len, net->timeout_ms,
                                   PROTO_RPC_IDEMPOTENT, &reply);
    if (rc != 0)
        return rc;
    out->code = reply->code;
    out->load_state = reply->load_state;
    out->server_time_ms = reply->server_time_ms;
    snprintf(out->message, sizeof(out->message), "%s", reply->message);
    if (reply->body_len > 0) {
        out->body = malloc(reply->body_len);
        if (out->body == NULL) {
            proto_rpc_reply_destroy(&reply);
            return QC_ENOMEM;
        }
        memcpy(out->body, reply->body, reply->body_len);
        out->body_len = reply->body_len;
    }
    proto_rpc_reply_destroy(&reply);
    return 0;
}

static void net_close(net_t *net)
{
    proto_rpc_client_destroy(&net->cli);
    if (net->ctx != NULL)
        zmq_ctx_term(net->ctx);
    net->ctx = NULL;
}

static int net_open(const ops_config_t *cfg, net_t *net)
{
    memset(net, 0, sizeof(*net));
    const char *gateway = ops_config_str(cfg, "gateway");
    const char *gkey = ops_config_str(cfg, "gateway_key");
    int64_t timeout_ms = ops_config_int(cfg, "timeout_ms");
    if (gateway == NULL || gkey == NULL) {
        fprintf(stderr,
                "%s: no gateway configured: give --gateway tcp://HOST:PORT and --gateway-key "
                "Z85, or write them in %s/%s\n",
                MAIN_PROGRAM, ops_config_str(cfg, "home"), MAIN_CONFIG_FILE);
        return QC_ECONFIG;
    }
    if (strlen(gkey) != PROTO_CURVE_KEY_Z85_LEN || timeout_ms <= 0 || timeout_ms > INT32_MAX) {
        fprintf(stderr, "%s: gateway_key must be %d Z85 characters and timeout_ms positive\n",
                MAIN_PROGRAM, PROTO_CURVE_KEY_Z85_LEN);
        return QC_ECONFIG;
    }
    char path[DEVICE_PATH_MAX];
    int rc = device_home_path(ops_config_str(cfg, "home"), MAIN_TRANSPORT_KEY_FILE, path);
    proto_curve_keypair_t kp;
    if (rc == 0)
        rc = proto_curve_keypair_load(path, &kp);
    if (rc != 0) {
        say_error("cannot read the transport key", rc, path);
        return rc;
    }
    net->timeout_ms = (int)timeout_ms;
    net->ctx = zmq_ctx_new();
    if (net->ctx == NULL) {
        proto_curve_keypair_wipe(&kp);
        return QC_ENOMEM;
    }
    proto_rpc_client_config_t cc = {
        .service = "gateway",
        .endpoints = gateway,
        .server_public_z85 = gkey,
        .keys = &kp,
    };
    rc = proto_rpc_client_new(net->ctx, &cc, &net->cli);
    proto_curve_keypair_wipe(&kp);
    if (rc != 0) {
        say_error("cannot set up the connection to the gateway", rc, NULL);
        net_close(net);
    }
    return rc;
}

/* Explains what a flow for amount did, and returns the exit status. */
static int report_flow(wallet_device_t *dev, int rc, int64_t amount,
                       const device_flow_result_t *res)
{
    char a[DEVICE_AMOUNT_FORMAT_MAX], b[DEVICE_AMOUNT_FORMAT_MAX];
    device_status_t s;
    device_core_status(wallet_device_core(dev), &s);
    if (res->judged && res->verdict == 0)
        printf("Credited %s to the wallet.\n", amount_text(amount, a));
    if (res->judged && res->verdict != 0)
        printf("The bank's allow did not verify (%s); nothing was credited and the device "
               "reported it as REJECTED.\n",
               qc_strerror(res->verdict));
    char hex[2 * DEVICE_TXN_SIZE + 1];
    if (res->finished) {
        printf("Bank outcome: %s. Wallet balance: %s (counter %" PRIu64 ").\n",
               proto_load_state_name(res->outcome), amount_text(s.balance, b), s.counter);
        printf("Transaction: %s\n", ops_hex(s.last_txn_id, DEVICE_TXN_SIZE, hex));
        bool ok = (!res->judged || res->verdict == 0) &&
                  res->outcome != QUANCUN__LOAD_STATE__LOAD_COMPENSATED;
        if (!ok)
            printf("The money stays in (or went back to) the bank account.\n");
        return ok ? MAIN_EXIT_OK : MAIN_EXIT_FAILED;
    }
    if (rc == 0)
        return MAIN_EXIT_OK; /* nothing was in progress */
    if (res->abandoned) {
        say_error("the bank refused the load", res->server_code, res->server_message);
        if (res->server_load_state != 0)
            printf("The bank says this load is %s.\n",
                   proto_load_state_name(res->server_load_state));
        say_clock(res->server_time_ms);
        printf("Nothing was debited or credited.\n");
        return MAIN_EXIT_FAILED;
    }
    say_error("the load is not finished", rc, res->server_message);
    say_clock(res->server_time_ms);
    if (s.phase != DEVICE_IDLE)
        printf("Transaction: %s\n", ops_hex(s.txn_id, DEVICE_TXN_SIZE, hex));
    if (s.phase == DEVICE_PENDING)
        printf("The signed request of %s is kept; run `%s sync --home DIR` to finish it.\n",
               amount_text(amount, a), MAIN_PROGRAM);
    else if (s.phase == DEVICE_REPORTED)
        printf("The wallet %s; the bank has not confirmed yet: run `%s sync --home DIR`.\n",
               s.report_status == QUANCUN__REPORT_STATUS__REPORT_APPLIED ? "was credited"
                                                                         : "refused the load",
               MAIN_PROGRAM);
    return MAIN_EXIT_FAILED;
}

/* Finishes a load left in progress before anything new. Returns 0 when IDLE. */
static int settle_previous(wallet_device_t *dev, net_t *net, const char *method)
{
    device_status_t s;
    device_core_status(wallet_device_core(dev), &s);
    if (s.phase == DEVICE_IDLE)
        return 0;
    char a[DEVICE_AMOUNT_FORMAT_MAX];
    printf("Finishing the previous load of %s (%s)...\n", amount_text(s.amount, a),
           device_phase_name(s.phase));
    device_flow_result_t res;
    memset(&res, 0, sizeof(res));
    int rc = device_flow_settle(wallet_device_core(dev), net_call, net, method, &res);
    (void)report_flow(dev, rc, s.amount, &res);
    return rc;
}

/* ------------------------------------------------------------------ verbs */

/* Where init and migrate-to-token put the keys, from the command line. With SoftHSM2 the
 * token is this wallet's own, made in HOME/token; any other module's token is a key its
 * issuer initialized, found by its label. The SO PIN of a token made here is
 * $QC_WALLET_SO_PIN (the issuer's, to unblock the user PIN), else random and forgotten.
 * so_pin has MAIN_LINE_MAX bytes. Returns 0 or QC_EINVAL (message printed). */
static int token_place(const ops_config_t *cfg, wallet_token_place_t *place, char *so_pin)
{
    memset(place, 0, sizeof(*place));
    place->module = ops_config_str(cfg, "token_module");
    if (place->module == NULL)
        place->module = WALLET_TOKEN_MODULE_DEFAULT;
    place->label = ops_config_str(cfg, "token_label");
    if (place->label == NULL)
        place->label = MAIN_TOKEN_LABEL_DEFAULT;
    place->home_token =
        !ops_config_bool(cfg, "token_existing") && strstr(place->module, "softhsm") != NULL;
    if (strlen(place->label) > WALLET_TOKEN_LABEL_MAX) {
        fprintf(stderr, "%s: a token label has at most %d characters\n", MAIN_PROGRAM,
                WALLET_TOKEN_LABEL_MAX);
        return QC_EINVAL;
    }
    const char *env = getenv("QC_WALLET_SO_PIN");
    uint8_t rnd[MAIN_SO_PIN_RANDOM_BYTES];
    if (env != NULL && env[0] != '\0' && strlen(env) < MAIN_LINE_MAX) {
        memcpy(so_pin, env, strlen(env) + 1);
    } else if (RAND_bytes(rnd, sizeof(rnd)) == 1) {
        ops_hex(rnd, sizeof(rnd), so_pin);
        OPENSSL_cleanse(rnd, sizeof(rnd));
    } else {
        return QC_ECRYPTO;
    }
    place->so_pin = so_pin;
    place->so_pin_len = strlen(so_pin);
    return 0;
}

/* init makes a token wallet unless --pem-key; a token flag with --pem-key is a usage error. */
static int init_wants_token(const ops_config_t *cfg, bool *token)
{
    bool flags = ops_config_str(cfg, "token_module") != NULL ||
                 ops_config_str(cfg, "token_label") != NULL ||
                 ops_config_bool(cfg, "token_existing");
    *token = !ops_config_bool(cfg, "pem_key");
    if (!*token && flags) {
        fprintf(stderr, "%s: --pem-key keeps the key in a file: no --token-* with it\n",
                MAIN_PROGRAM);
        return QC_EINVAL;
    }
    return 0;
}

static int cmd_init(const ops_config_t *cfg)
{
    const char *home = ops_config_str(cfg, "home");
    bool token = false;
    if (init_wants_token(cfg, &token) != 0)
        return MAIN_EXIT_USAGE;
    wallet_token_place_t place;
    char so_pin[MAIN_LINE_MAX] = {0};
    if (token && token_place(cfg, &place, so_pin) != 0)
        return MAIN_EXIT_USAGE;
    char pin[MAIN_LINE_MAX];
    int n = get_pin(cfg, true, pin);
    if (n < 0) {
        OPENSSL_cleanse(pin, sizeof(pin));
        OPENSSL_cleanse(so_pin, sizeof(so_pin));
        return MAIN_EXIT_FAILED;
    }
    const char *serial = ops_config_str(cfg, "serial");
    int rc = token ? wallet_device_init_token(home, serial, &place, pin, (size_t)n)
                   : wallet_device_init(home, serial, pin, (size_t)n);
    OPENSSL_cleanse(pin, sizeof(pin));
    OPENSSL_cleanse(so_pin, sizeof(so_pin));
    if (rc == QC_EUNAVAIL || rc == QC_EIO) {
        fprintf(stderr, "%s: no token labelled \"%s\" through %s (%s)\n", MAIN_PROGRAM, place.label,
                place.module, qc_strerror(rc));
        return MAIN_EXIT_FAILED;
    }
    if (rc == QC_EINVAL) {
        fprintf(stderr,
                "%s: the PIN must be %d to %d digits and the serial letters, digits, '-' or "
                "'_'\n",
                MAIN_PROGRAM, DEVICE_PIN_LEN_MIN, DEVICE_PIN_LEN_MAX);
        return MAIN_EXIT_USAGE;
    }
    if (rc == QC_EEXIST) {
        fprintf(stderr, "%s: a device already lives in %s\n", MAIN_PROGRAM, home);
        return MAIN_EXIT_FAILED;
    }
    if (rc != 0) {
        say_error("cannot create the device", rc, NULL);
        return MAIN_EXIT_FAILED;
    }
    char path[DEVICE_PATH_MAX];
    proto_curve_keypair_t kp;
    rc = device_home_path(home, MAIN_TRANSPORT_KEY_FILE, path);
    if (rc == 0)
        rc = proto_curve_keypair_create(path, &kp);
    if (rc != 0) {
        say_error("cannot create the transport key", rc, path);
        return MAIN_EXIT_FAILED;
    }
    wallet_device_t *dev = NULL;
    if (open_device(cfg, &dev) != 0) {
        proto_curve_keypair_wipe(&kp);
        return MAIN_EXIT_FAILED;
    }
    printf("Created device %s in %s\n", device_core_serial(wallet_device_core(dev)), home);
    if (token)
        printf("  keys: inside the PKCS#11 token \"%s\" (%s)%s; no private key in the home\n",
               place.label, place.module,
               place.home_token ? ", kept in HOME/" WALLET_TOKEN_DIR " (the USB key)" : "");
    printf("  certificate request: %s/%s (CN=%s), for the operator's enrollment\n", home,
           WALLET_CSR_FILE, device_core_serial(wallet_device_core(dev)));
    printf("  transport public key: %s\n", kp.public_z85);
    printf("Next: the operator enrolls it, then `%s install-cert --home %s CERT` and\n"
           "`%s install-bank --home %s --allow PEM --outcome PEM`.\n",
           MAIN_PROGRAM, home, MAIN_PROGRAM, home);
    proto_curve_keypair_wipe(&kp);
    wallet_device_destroy(&dev);
    return MAIN_EXIT_OK;
}

static int cmd_migrate(const ops_config_t *cfg)
{
    const char *home = ops_config_str(cfg, "home");
    wallet_token_place_t place;
    char so_pin[MAIN_LINE_MAX] = {0};
    if (token_place(cfg, &place, so_pin) != 0)
        return MAIN_EXIT_USAGE;
    char pin[MAIN_LINE_MAX];
    int n = get_pin(cfg, false, pin);
    int rc = n < 0 ? n : wallet_device_migrate_token(home, &place, pin, (size_t)n);
    OPENSSL_cleanse(pin, sizeof(pin));
    OPENSSL_cleanse(so_pin, sizeof(so_pin));
    if (n < 0)
        return MAIN_EXIT_FAILED;
    if (rc == QC_EEXIST)
        fprintf(stderr, "%s: the device in %s keeps its key in a token already\n", MAIN_PROGRAM,
                home);
    else if (rc == QC_EPIN || rc == QC_ELOCKED)
        fprintf(stderr, "%s: %s; nothing was moved\n", MAIN_PROGRAM,
                rc == QC_EPIN ? "wrong PIN" : "the device is locked");
    else if (rc != 0)
        say_error("cannot move the key into the token", rc, NULL);
    else
        printf("Moved the device key of %s into the token \"%s\"; %s/%s is wiped. The PIN is "
               "the token's now.\n",
               home, place.label, home, WALLET_KEY_FILE);
    return rc == 0 ? MAIN_EXIT_OK : MAIN_EXIT_FAILED;
}

static int cmd_install_cert(const ops_config_t *cfg)
{
    if (ops_config_argc(cfg) != 1) {
        fprintf(stderr, "%s: install-cert takes one certificate file\n", MAIN_PROGRAM);
        return MAIN_EXIT_USAGE;
    }
    wallet_device_t *dev = NULL;
    if (open_device(cfg, &dev) != 0)
        return MAIN_EXIT_FAILED;
    const char *cert = ops_config_arg(cfg, 0);
    int rc = wallet_device_install_cert(dev, cert);
    if (rc == QC_ECERT)
        fprintf(stderr,
                "%s: %s is not this device's certificate (it must hold the device's key and "
                "CN=%s)\n",
                MAIN_PROGRAM, cert, device_core_serial(wallet_device_core(dev)));
    else if (rc != 0)
        say_error("cannot install the certificate", rc, cert);
    else
        printf("Installed the certificate of %s\n", device_core_serial(wallet_device_core(dev)));
    wallet_device_destroy(&dev);
    return rc == 0 ? MAIN_EXIT_OK : MAIN_EXIT_FAILED;
}

static int cmd_install_bank(const ops_config_t *cfg)
{
    const char *allow = ops_config_str(cfg, "allow");
    const char *outcome = ops_config_str(cfg, "outcome");
    if (allow == NULL || outcome == NULL) {
        fprintf(stderr, "%s: install-bank needs --allow PEM and --outcome PEM\n", MAIN_PROGRAM);
        return MAIN_EXIT_USAGE;
    }
    wallet_device_t *dev = NULL;
    if (open_device(cfg, &dev) != 0)
        return MAIN_EXIT_FAILED;
    int rc = wallet_device_install_bank(dev, allow, outcome);
    const char *checkpoint = ops_config_str(cfg, "checkpoint");
    if (rc == 0 && checkpoint != NULL)
        rc = wallet_receipt_install_checkpoint(ops_config_str(cfg, "home"), checkpoint);
    if (rc == QC_ECERT)
        fprintf(stderr, "%s: the bank keys must be PEM certificates or public keys on P-256\n",
                MAIN_PROGRAM);
    else if (rc != 0)
        say_error("cannot install the bank keys", rc, NULL);
    else
        printf("Installed the bank's allow and outcome keys%s\n",
               checkpoint != NULL ? ", and its audit-checkpoint key (receipts)" : "");
    wallet_device_destroy(&dev);
    return rc == 0 ? MAIN_EXIT_OK : MAIN_EXIT_FAILED;
}

static void print_status(const device_status_t *s)
{
    char a[DEVICE_AMOUNT_FORMAT_MAX], hex[2 * DEVICE_TXN_SIZE + 1];
    printf("serial:      %s\n", s->serial);
    printf("balance:     %s\n", amount_text(s->balance, a));
    printf("counter:     %" PRIu64 "\n", s->counter);
    printf("state:       %s", device_phase_name(s->phase));
    if (s->phase == DEVICE_REPORTED)
        printf(" (%s, awaiting the bank's outcome)",
               s->report_status == QUANCUN__REPORT_STATUS__REPORT_APPLIED ? "APPLIED" : "REJECTED");
    printf("\n");
    if (s->phase != DEVICE_IDLE) {
        printf("pending txn: %s\n", ops_hex(s->txn_id, DEVICE_TXN_SIZE, hex));
        printf("  account %s, amount %s, currency %" PRIu32 "\n", s->account_id,
               amount_text(s->amount, a), s->currency);
    }
    if (s->last_outcome != 0)
        printf("last load:   %s %s\n", ops_hex(s->last_txn_id, DEVICE_TXN_SIZE, hex),
               proto_load_state_name(s->last_outcome));
    if (s->card_pending)
        printf("card:        transfer %s of %s to card %s not settled (card-sync)\n",
               ops_hex(s->card_xfer_id, DEVICE_TXN_SIZE, hex), amount_text(s->card_amount, a),
               s->card_number);
    printf("PIN tries:   %" PRIu32 " of %u%s\n", s->pin_tries_left, DEVICE_PIN_TRIES,
           s->pin_tries_left == 0 ? " (locked)" : "");
    printf("certificate: %s\n", s->has_cert ? "installed" : "missing (install-cert)");
    printf("bank keys:   %s\n", s->has_bank ? "installed" : "missing (install-bank)");
}

static int cmd_status(const ops_config_t *cfg)
{
    wallet_device_t *dev = NULL;
    if (open_device(cfg, &dev) != 0)
        return MAIN_EXIT_FAILED;
    device_status_t s;
    device_core_status(wallet_device_core(dev), &s);
    s.pin_tries_left = wallet_device_pin_tries(dev);
    print_status(&s);
    if (wallet_device_has_token(dev))
        printf("keys:        in the PKCS#11 token named in %s (state signed by it)\n",
               WALLET_TOKEN_CONF_FILE);
    wallet_device_destroy(&dev);
    return MAIN_EXIT_OK;
}

static int cmd_log(const ops_config_t *cfg)
{
    /* Opening the device first repairs a log line a crash left unwritten. */
    wallet_device_t *dev = NULL;
    if (open_device(cfg, &dev) != 0)
        return MAIN_EXIT_FAILED;
    char path[DEVICE_PATH_MAX];
    int rc = device_home_path(ops_config_str(cfg, "home"), DEVICE_LOG_FILE, path);
    FILE *f = rc == 0 ? fopen(path, "r") : NULL;
    if (f != NULL) {
        char chunk[MAIN_LOG_CHUNK];
        size_t n;
        while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
            fwrite(chunk, 1, n, stdout);
        fclose(f);
    }
    wallet_device_destroy(&dev);
    return MAIN_EXIT_OK;
}

/* unlock --admin-reset of a token wallet: the issuer's SO PIN ($QC_WALLET_SO_PIN) sets a new
 * user PIN (asked twice) in the token. */
static int unlock_token(const ops_config_t *cfg, wallet_device_t **dev)
{
    const char *so_pin = getenv("QC_WALLET_SO_PIN");
    if (so_pin == NULL || so_pin[0] == '\0') {
        fprintf(stderr,
                "%s: the token's PIN is unblocked by its issuer: set QC_WALLET_SO_PIN to the "
                "token's SO PIN; the new PIN is then asked\n",
                MAIN_PROGRAM);
        wallet_device_destroy(dev);
        return MAIN_EXIT_FAILED;
    }
    char pin[MAIN_LINE_MAX];
    int n = get_pin(cfg, true, pin);
    int rc = n < 0 ? n : wallet_device_unblock(*dev, so_pin, strlen(so_pin), pin, (size_t)n);
    OPENSSL_cleanse(pin, sizeof(pin));
    if (rc == 0)
        printf("The token's PIN is set anew and its retry counter reset to %u\n",
               WALLET_TOKEN_TRIES);
    else if (n >= 0)
        say_error("the token refused the unblock", rc, NULL);
    wallet_device_destroy(dev);
    return rc == 0 ? MAIN_EXIT_OK : MAIN_EXIT_FAILED;
}

static int cmd_unlock(const ops_config_t *cfg)
{
    if (!ops_config_bool(cfg, "admin_reset")) {
        fprintf(stderr, "%s: unlock needs --admin-reset\n", MAIN_PROGRAM);
        return MAIN_EXIT_USAGE;
    }
    wallet_device_t *dev = NULL;
    if (open_device(cfg, &dev) != 0)
        return MAIN_EXIT_FAILED;
    if (wallet_device_has_token(dev))
        return unlock_token(cfg, &dev);
    int rc = device_core_admin_reset(wallet_device_core(dev));
    if (rc == 0)
        printf("PIN retry counter reset to %u\n", DEVICE_PIN_TRIES);
    else
        say_error("cannot reset the PIN counter", rc, NULL);
    wallet_device_destroy(&dev);
    return rc == 0 ? MAIN_EXIT_OK : MAIN_EXIT_FAILED;
}

static int cmd_sync(const ops_config_t *cfg)
{
    wallet_device_t *dev = NULL;
    if (open_device(cfg, &dev) != 0)
        return MAIN_EXIT_FAILED;
    device_status_t s;
    device_core_status(wallet_device_core(dev), &s);
    if (s.phase == DEVICE_IDLE) {
        printf("Nothing to synchronise: no load in progress.\n");
        wallet_device_destroy(&dev);
        return MAIN_EXIT_OK;
    }
    net_t net;
    int status = MAIN_EXIT_FAILED;
    if (net_open(cfg, &net) == 0) {
        device_flow_result_t res;
        memset(&res, 0, sizeof(res));
        int rc =
            device_flow_settle(wallet_device_core(dev), net_call, &net, DEVICE_METHOD_SYNC, &res);
        status = report_flow(dev, rc, s.amount, &res);
        net_close(&net);
    }
    wallet_device_destroy(&dev);
    return status;
}

/* Shows the load and asks y/N on the terminal. Returns 0 when confirmed. */
static int confirm_load(const ops_config_t *cfg, const device_status_t *s, const char *account,
                        int64_t amount, uint32_t currency)
{
    char a[DEVICE_AMOUNT_FORMAT_MAX], b[DEVICE_AMOUNT_FORMAT_MAX], c[DEVICE_AMOUNT_FORMAT_MAX];
    bool overflow = s->balance > INT64_MAX - amount;
    printf("Load from account %s into wallet %s\n", account, s->serial);
    printf("  amount:      %s (currency %" PRIu32 ")\n", amount_text(amount, a), currency);
    printf("  fee:         none\n");
    printf("  balance now: %s\n", amount_text(s->balance, b));
    printf("  new balance: %s\n", overflow ? "(too large)" : amount_text(s->balance + amount, c));
    fflush(stdout);
    if (ops_config_bool(cfg, "yes"))
        return 0;
    int64_t secs = ops_config_int(cfg, "confirm_timeout_s");
    char answer[MAIN_LINE_MAX];
    char prompt[MAIN_LINE_MAX];
    snprintf(prompt, sizeof(prompt), "Confirm? [y/N] (%" PRId64 " s) ", secs);
    int n = tty_prompt(prompt, false, answer, sizeof(answer),
                       secs > 0 && secs < INT32_MAX / 1000 ? (int)(secs * 1000) : -1);
    if (n == QC_EIO) {
        fprintf(stderr, "%s: no terminal to confirm on: add --yes to load without asking\n",
                MAIN_PROGRAM);
        return QC_EIO;
    }
    if (n == QC_ETIMEOUT) {
        fprintf(stderr, "%s: no answer in time; nothing was signed\n", MAIN_PROGRAM);
        return QC_ETIMEOUT;
    }
    if (n > 0 && (answer[0] == 'y' || answer[0] == 'Y'))
        return 0;
    fprintf(stderr, "%s: cancelled; nothing was signed\n", MAIN_PROGRAM);
    return QC_EDENIED;
}

static int cmd_load(const ops_config_t *cfg)
{
    /* Everything the user typed is checked before the device or the network is touched. */
    if (ops_config_argc(cfg) != 1) {
        fprintf(stderr, "%s: load takes one AMOUNT, as 12.34\n", MAIN_PROGRAM);
        return MAIN_EXIT_USAGE;
    }
    int64_t amount = 0;
    const char *why = NULL;
    if (device_amount_parse(ops_config_arg(cfg, 0), &amount, &why) != 0) {
        fprintf(stderr, "%s: \"%s\": %s; nothing was signed\n", MAIN_PROGRAM,
                ops_config_arg(cfg, 0), why);
        return MAIN_EXIT_USAGE;
    }
    const char *account = ops_config_str(cfg, "account");
    if (account == NULL) {
        fprintf(stderr, "%s: load needs --account ID\n", MAIN_PROGRAM);
        return MAIN_EXIT_USAGE;
    }
    if (!device_account_valid(account)) {
        fprintf(stderr,
                "%s: \"%s\" is not an account id (1 to %d printable characters, no spaces or "
                "quotes)\n",
                MAIN_PROGRAM, account, DEVICE_ACCOUNT_MAX);
        return MAIN_EXIT_USAGE;
    }
    int64_t currency = ops_config_int(cfg, "currency");
    if (currency <= 0 || currency > PROTO_CURRENCY_MAX) {
        fprintf(stderr, "%s: --currency must be an ISO 4217 numeric code\n", MAIN_PROGRAM);
        return MAIN_EXIT_USAGE;
    }

    wallet_device_t *dev = NULL;
    if (open_device(cfg, &dev) != 0)
        return MAIN_EXIT_FAILED;
    device_status_t s;
    device_core_status(wallet_device_core(dev), &s);
    if (!s.has_cert || !s.has_bank) {
        fprintf(stderr, "%s: the device is not enrolled yet: %s\n", MAIN_PROGRAM,
                !s.has_cert ? "install its certificate (install-cert)"
                            : "install the bank keys (install-bank)");
        wallet_device_destroy(&dev);
        return MAIN_EXIT_FAILED;
    }
    if (s.card_pending) {
        char a[DEVICE_AMOUNT_FORMAT_MAX];
        fprintf(stderr,
                "%s: a transfer of %s to card %s is not settled yet; settle it first with "
                "`%s card-sync --home DIR ...` (nothing was signed)\n",
                MAIN_PROGRAM, amount_text(s.card_amount, a), s.card_number, MAIN_PROGRAM);
        wallet_device_destroy(&dev);
        return MAIN_EXIT_FAILED;
    }
    net_t net;
    if (net_open(cfg, &net) != 0) {
        wallet_device_destroy(&dev);
        return MAIN_EXIT_FAILED;
    }
    int status = MAIN_EXIT_FAILED;
    if (settle_previous(dev, &net, DEVICE_METHOD_REPORT) != 0)
        goto out;
    if (check_pin(dev, cfg) != 0)
        goto out;
    device_core_status(wallet_device_core(dev), &s);
    if (confirm_load(cfg, &s, account, amount, (uint32_t)currency) != 0)
        goto out;
    device_flow_result_t res;
    int rc = device_flow_load(wallet_device_core(dev), account, amount, (uint32_t)currency,
                              net_call, &net, &res);
    if (rc == QC_ECERT || rc == QC_ECONFIG || rc == QC_EINVAL) {
        say_error("cannot sign the request", rc,
                  rc == QC_ECERT     ? "install the device certificate first"
                  : rc == QC_ECONFIG ? "install the bank keys first"
                                     : "bad account id");
        goto out;
    }
    status = report_flow(dev, rc, amount, &res);
out:
    net_close(&net);
    wallet_device_destroy(&dev);
    return status;
}

/* ------------------------------------------------------------------ card transfers */

/* Everything a contact with a card needs, opened in order and closed by card_close(). */
typedef struct card_ctx {
    wallet_device_t *dev;
    proto_trust_t *trust;
    card_host_t *host;
    card_info_t info;
} card_ctx_t;

static void card_close(card_ctx_t *c)
{
    card_host_destroy(&c->host);
    proto_trust_destroy(&c->trust);
    wallet_device_destroy(&c->dev);
}

/* Opens the device, the card CA, the contact, and authenticates both sides.
 * Prints why on failure. */
static int card_open(const ops_config_t *cfg, card_ctx_t *c)
{
    memset(c, 0, sizeof(*c));
    const char *reader = ops_config_str(cfg, "reader");
    const char *ca = ops_config_str(cfg, "card_ca");
    const char *trust = ops_config_str(cfg, "card_trust");
    if (ca == NULL || trust == NULL) {
        fprintf(stderr,
                "%s: give --card-ca CA.pem and --card-trust NUMBER,... (or write them in "
                "HOME/%s)\n",
                MAIN_PROGRAM, MAIN_CARD_CONFIG_FILE);
        return QC_EINVAL;
    }
    int rc = open_device(cfg, &c->dev);
    if (rc != 0)
        return rc;
    rc = proto_trust_new(ca, NULL, &c->trust);
    if (rc != 0) {
        say_error("cannot read the card CA bundle", rc, ca);
        return rc;
    }
    rc = card_host_connect(reader, &c->host);
    if (rc != 0) {
        fprintf(stderr, "%s: no card to talk to: %s: present the card and try again\n",
                MAIN_PROGRAM, c->host != NULL ? card_host_message(c->host) : qc_strerror(rc));
        return rc;
    }
    rc = card_host_authenticate(c->host, wallet_device_core(c->dev), c->trust, trust, &c->info);
    if (rc != 0)
        fprintf(stderr, "%s: mutual authentication failed: %s (%s); nothing moved\n", MAIN_PROGRAM,
                card_host_message(c->host), qc_errname(rc));
    return rc;
}

/* Settles a transfer an earlier contact left pending. Returns 0 when none is left. */
static int card_settle_pending(card_ctx_t *c)
{
    device_status_t s;
    device_core_status(wallet_device_core(c->dev), &s);
    if (!s.card_pending)
        return 0;
    char a[DEVICE_AMOUNT_FORMAT_MAX], hex[2 * DEVICE_TXN_SIZE + 1];
    printf("Settling the earlier transfer %s of %s to card %s...\n",
           ops_hex(s.card_xfer_id, DEVICE_TXN_SIZE, hex), amount_text(s.card_amount, a),
           s.card_number);
    device_card_result_t result = 0;
    int rc = card_host_settle(c->host, wallet_device_core(c->dev), &result, &c->info);
    if (rc != 0) {
        fprintf(stderr, "%s: the earlier transfer is not settled: %s (%s)\n", MAIN_PROGRAM,
                card_host_message(c->host), qc_errname(rc));
        return rc;
    }
    if (result == DEVICE_CARD_COMPLETED)
        printf("The card had credited it: the transfer is complete.\n");
    else
        printf("The card proved it never credited it: %s went back to the wallet.\n",
               amount_text(s.card_amount, a));
    return 0;
}

static void card_show(const card_ctx_t *c)
{
    char a[DEVICE_AMOUNT_FORMAT_MAX], b[DEVICE_AMOUNT_FORMAT_MAX], w[DEVICE_AMOUNT_FORMAT_MAX];
    device_status_t s;
    device_core_status(wallet_device_core(c->dev), &s);
    printf("Card %s: balance %s (maximum %s). Wallet %s: balance %s.\n", c->info.number,
           amount_text(c->info.balance, a), amount_text(c->info.max_balance, b), s.serial,
           amount_text(s.balance, w));
}

/* Shows the transfer and asks y/N unless --yes. Returns 0 when confirmed. */
static int card_confirm(const ops_config_t *cfg, const card_ctx_t *c, int64_t amount)
{
    char a[DEVICE_AMOUNT_FORMAT_MAX];
    printf("Transfer %s from the wallet to card %s.\n", amount_text(amount, a), c->info.number);
    fflush(stdout);
    if (ops_config_bool(cfg, "yes"))
        return 0;
    int64_t secs = ops_config_int(cfg, "confirm_timeout_s");
    char answer[MAIN_LINE_MAX];
    int n = tty_prompt("Confirm? [y/N] ", false, answer, sizeof(answer),
                       secs > 0 && secs < INT32_MAX / 1000 ? (int)(secs * 1000) : -1);
    if (n > 0 && (answer[0] == 'y' || answer[0] == 'Y'))
        return 0;
    fprintf(stderr, "%s: %s; nothing moved\n", MAIN_PROGRAM,
            n == QC_EIO ? "no terminal to confirm on (add --yes)" : "cancelled");
    return QC_EDENIED;
}

static int card_pin_check(const ops_config_t *cfg, card_ctx_t *c)
{
    char pin[MAIN_LINE_MAX];
    int n = get_secret(cfg, "card_pin_fd", "QC_CARD_PIN", "Card PIN: ", false, pin);
    int rc = n < 0 ? n : card_host_verify_pin(c->host, pin, (size_t)n, &c->info);
    OPENSSL_cleanse(pin, sizeof(pin));
    if (rc != 0 && n >= 0)
        fprintf(stderr, "%s: %s (%s); nothing moved\n", MAIN_PROGRAM, card_host_message(c->host),
                qc_errname(rc));
    return rc;
}

static int cmd_card_transfer(const ops_config_t *cfg)
{
    if (ops_config_argc(cfg) != 1) {
        fprintf(stderr, "%s: card-transfer takes one AMOUNT, as 12.34\n", MAIN_PROGRAM);
        return MAIN_EXIT_USAGE;
    }
    int64_t amount = 0;
    const char *why = NULL;
    if (device_amount_parse(ops_config_arg(cfg, 0), &amount, &why) != 0) {
        fprintf(stderr, "%s: \"%s\": %s; nothing moved\n", MAIN_PROGRAM, ops_config_arg(cfg, 0),
                why);
        return MAIN_EXIT_USAGE;
    }
    card_ctx_t c;
    int status = MAIN_EXIT_FAILED;
    if (card_open(cfg, &c) != 0)
        goto out;
    /* A transfer left pending is settled first: one card transfer at a time. */
    if (card_settle_pending(&c) != 0)
        goto out;
    device_status_t s;
    device_core_status(wallet_device_core(c.dev), &s);
    if (s.phase != DEVICE_IDLE) {
        fprintf(stderr,
                "%s: a load from the bank is in progress (%s); finish it with `%s sync` first; "
                "nothing moved\n",
                MAIN_PROGRAM, device_phase_name(s.phase), MAIN_PROGRAM);
        goto out;
    }
    card_show(&c);
    if (check_pin(c.dev, cfg) != 0 || card_confirm(cfg, &c, amount) != 0 ||
        card_pin_check(cfg, &c) != 0)
        goto out;
    device_card_result_t result = 0;
    int rc = card_host_transfer(c.host, wallet_device_core(c.dev), amount, &result, &c.info);
    char a[DEVICE_AMOUNT_FORMAT_MAX];
    if (rc == 0 && result == DEVICE_CARD_COMPLETED) {
        printf("Transferred %s to card %s.\n", amount_text(amount, a), c.info.number);
        status = MAIN_EXIT_OK;
    } else if (rc == QC_EIO || rc == QC_ETIMEOUT) {
        fprintf(stderr,
                "%s: %s; the transfer is recorded in the wallet and will be settled from the "
                "card's proof at the next contact (`%s card-sync`)\n",
                MAIN_PROGRAM, card_host_message(c.host), MAIN_PROGRAM);
    } else {
        fprintf(stderr, "%s: %s (%s)\n", MAIN_PROGRAM, card_host_message(c.host), qc_errname(rc));
    }
    card_show(&c);
out:
    card_close(&c);
    return status;
}

static int cmd_card_sync(const ops_config_t *cfg)
{
    card_ctx_t c;
    int status = MAIN_EXIT_FAILED;
    if (card_open(cfg, &c) != 0)
        goto out;
    device_status_t s;
    device_core_status(wallet_device_core(c.dev), &s);
    if (!s.card_pending)
        printf("Nothing to settle: no card transfer is pending.\n");
    if (card_settle_pending(&c) != 0)
        goto out;
    card_show(&c);
    status = MAIN_EXIT_OK;
out:
    card_close(&c);
    return status;
}

/* ------------------------------------------------------------------ receipts */

static void print_receipt(const proto_receipt_t *r)
{
    char hex[2 * PROTO_MERKLE_HASH_SIZE + 1];
    time_t t = (time_t)(r->head.time_ms / 1000);
    struct tm tm;
    char when[32] = "?";
    if (gmtime_r(&t, &tm) != NULL)
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    printf("tree head:   %" PRIu64 " entries, signed %s by the bank's audit-checkpoint key\n",
           r->head.size, when);
    printf("root:        %s\n", ops_hex(r->head.root, PROTO_MERKLE_HASH_SIZE, hex));
    for (size_t i = 0; i < r->entries; i++)
        printf("  entry %-8" PRIu64 " %-24s in the log (inclusion proof verified)\n", r->seqs[i],
               r->types[i]);
    if (r->pending > 0)
        printf("  %" PRIu32 " more entr%s after this head: ask again after the next checkpoint\n",
               r->pending, r->pending == 1 ? "y" : "ies");
    if (r->more)
        printf("  (more entries than one receipt holds)\n");
}

static int parse_txn(const char *text, uint8_t txn[PROTO_TXN_ID_SIZE])
{
    if (text == NULL || strlen(text) != 2 * PROTO_TXN_ID_SIZE ||
        ops_unhex(text, txn, PROTO_TXN_ID_SIZE) != 0) {
        fprintf(stderr, "%s: TXN is the load's id, %d hex digits (qc-wallet status shows it)\n",
                MAIN_PROGRAM, 2 * PROTO_TXN_ID_SIZE);
        return QC_EINVAL;
    }
    return 0;
}

static int cmd_receipt(const ops_config_t *cfg)
{
    uint8_t txn[PROTO_TXN_ID_SIZE];
    if (ops_config_argc(cfg) != 1 || parse_txn(ops_config_arg(cfg, 0), txn) != 0)
        return MAIN_EXIT_USAGE;
    const char *home = ops_config_str(cfg, "home");
    wallet_device_t *dev = NULL;
    if (open_device(cfg, &dev) != 0) /* for its lock: one program keeps the tree head */
        return MAIN_EXIT_FAILED;
    net_t net;
    int status = MAIN_EXIT_FAILED;
    if (net_open(cfg, &net) == 0) {
        wallet_receipt_result_t res;
        uint8_t *reply = NULL;
        size_t len = 0;
        char message[DEVICE_MESSAGE_MAX + 1];
        int rc = wallet_receipt_get(home, net_call, &net, txn, &res, &reply, &len, message);
        if (rc == 0) {
            print_receipt(&res.receipt);
            printf("consistency: %s\n",
                   !res.had_head ? "first tree head seen; kept to check the next ones"
                   : res.advanced
                       ? "the log extends the one seen before (consistency proof verified)"
                       : "the log agrees with the one seen before");
            const char *path = ops_config_str(cfg, "export");
            if (path != NULL && (rc = wallet_receipt_export(path, txn, reply, len)) != 0)
                say_error("cannot write the receipt", rc, path);
            else if (path != NULL)
                printf("exported:    %s (check it anywhere: %s verify-receipt %s --checkpoint "
                       "PEM)\n",
                       path, MAIN_PROGRAM, path);
            status = rc == 0 ? MAIN_EXIT_OK : MAIN_EXIT_FAILED;
        } else if (rc == QC_EMISMATCH && res.receipt.entries > 0) {
            fprintf(stderr,
                    "%s: FORK: the bank's audit log shown now does not extend the one shown "
                    "before (tree head of %" PRIu64 " entries against the kept one of %" PRIu64
                    "); the conflicting head is kept in %s/%s as evidence\n",
                    MAIN_PROGRAM, res.receipt.head.size, res.kept_size, home,
                    WALLET_TREE_HEAD_FORK_FILE);
        } else if (rc == QC_EMISSING) {
            fprintf(stderr,
                    "%s: no audit-checkpoint key: install-bank --checkpoint PEM (the bank's "
                    "audit-checkpoint certificate)\n",
                    MAIN_PROGRAM);
        } else {
            say_error(rc == QC_ENOTFOUND ? "no receipt yet (the load's entries are not under a "
                                           "signed tree head; try again in a few seconds)"
                                         : "the receipt does not verify",
                      rc, message);
        }
        free(reply);
        net_close(&net);
    }
    wallet_device_destroy(&dev);
    return status;
}

static int cmd_verify_receipt(const ops_config_t *cfg)
{
    const char *pem = ops_config_str(cfg, "checkpoint");
    if (ops_config_argc(cfg) != 1 || pem == NULL) {
        fprintf(stderr, "%s: verify-receipt takes one FILE and --checkpoint PEM\n", MAIN_PROGRAM);
        return MAIN_EXIT_USAGE;
    }
    EVP_PKEY *key = NULL;
    int rc = proto_key_load_pem(pem, &key);
    if (rc != 0) {
        say_error("cannot load the checkpoint certificate", rc, pem);
        return MAIN_EXIT_USAGE;
    }
    uint8_t txn[PROTO_TXN_ID_SIZE];
    proto_receipt_t *r = calloc(1, sizeof *r);
    rc = r == NULL ? QC_ENOMEM : wallet_receipt_verify_file(ops_config_arg(cfg, 0), key, txn, r);
    EVP_PKEY_free(key);
    char hex[2 * PROTO_TXN_ID_SIZE + 1];
    if (rc == 0) {
        printf("load:        %s\n", ops_hex(txn, PROTO_TXN_ID_SIZE, hex));
        print_receipt(r);
        printf("ok: the receipt verifies under %s\n", pem);
    } else {
        say_error("the receipt does not verify", rc, NULL);
    }
    free(r);
    return rc == 0 ? MAIN_EXIT_OK : MAIN_EXIT_FAILED;
}

/* ------------------------------------------------------------------ main */

typedef struct verb {
    const char *name;
    const char *usage;
    const ops_config_key_t *keys;
    size_t key_count;
    const char *conf_file; /* HOME/conf_file is read when present; NULL: none */
    int (*run)(const ops_config_t *cfg);
} verb_t;

static const verb_t verbs[] = {
    {"init",
     "--home DIR [--serial S] [--pin-fd N] [--token-module M] [--token-label L] [--pem-key]: "
     "create the device (its keys in a PKCS#11 token)",
     init_keys, COUNT(init_keys), NULL, cmd_init},
    {"migrate-to-token",
     "--home DIR [--token-module M] [--token-label L]: move a PEM device key into a token",
     migrate_keys, COUNT(migrate_keys), NULL, cmd_migrate},
    {"install-cert", "--home DIR CERT: install the certificate from enrollment", home_keys,
     COUNT(home_keys), NULL, cmd_install_cert},
    {"install-bank",
     "--home DIR --allow PEM --outcome PEM [--checkpoint PEM]: install the bank's keys", bank_keys,
     COUNT(bank_keys), NULL, cmd_install_bank},
    {"load", "AMOUNT --home DIR --account ID [--yes] [--pin-fd N]: load money", net_keys,
     COUNT(net_keys), MAIN_CONFIG_FILE, cmd_load},
    {"status", "--home DIR: serial, balance, counter, load in progress", home_keys,
     COUNT(home_keys), NULL, cmd_status},
    {"log", "--home DIR: print the operation log (JSON lines)", home_keys, COUNT(home_keys), NULL,
     cmd_log},
    {"sync", "--home DIR: finish a load in progress (re-send request or report)", net_keys,
     COUNT(net_keys), MAIN_CONFIG_FILE, cmd_sync},
    {"receipt",
     "TXN --home DIR [--export FILE]: prove a load is in the bank's audit log, and that the "
     "log extends the one seen before",
     receipt_keys, COUNT(receipt_keys), MAIN_CONFIG_FILE, cmd_receipt},
    {"verify-receipt", "FILE --checkpoint PEM: check an exported receipt, anywhere",
     verify_receipt_keys, COUNT(verify_receipt_keys), NULL, cmd_verify_receipt},
    {"unlock", "--home DIR --admin-reset: reset the PIN retry counter", unlock_keys,
     COUNT(unlock_keys), NULL, cmd_unlock},
    {"card-transfer",
     "AMOUNT --home DIR [--reader NAME] [--card-ca PEM --card-trust N,...] [--yes] "
     "[--pin-fd N] [--card-pin-fd N]: move money to a card",
     card_keys, COUNT(card_keys), MAIN_CARD_CONFIG_FILE, cmd_card_transfer},
    {"card-sync",
     "--home DIR [--reader NAME] [--card-ca PEM --card-trust N,...]: settle an interrupted "
     "card transfer from the card's proof",
     card_keys, COUNT(card_keys), MAIN_CARD_CONFIG_FILE, cmd_card_sync},
};

static void usage(FILE *out)
{
    fprintf(out, "Usage: %s VERB [options]   (%s VERB --help for its options)\n\n", MAIN_PROGRAM,
            MAIN_PROGRAM);
    for (size_t i = 0; i < COUNT(verbs); i++)
        fprintf(out, "  %-14s %s\n", verbs[i].name, verbs[i].usage);
    fprintf(out,
            "\nThe PIN is read from --pin-fd N, else the environment variable QC_WALLET_PIN,\n"
            "else the terminal (echo off); the card's PIN from --card-pin-fd N, else QC_CARD_PIN,\n"
            "else the terminal. load and sync also read HOME/%s, card-transfer and card-sync\n"
            "HOME/%s (key = value, e.g. card_ca = /path/ca.pem, card_trust = CARD1,CARD2).\n"
            "Exit status: 0 done, 1 the operation failed (see the message), 2 bad usage.\n",
            MAIN_CONFIG_FILE, MAIN_CARD_CONFIG_FILE);
}

/* True when verb has key name (verify-receipt has no home: it checks a file anywhere). */
static bool verb_has_key(const verb_t *verb, const char *name)
{
    for (size_t i = 0; i < verb->key_count; i++)
        if (strcmp(verb->keys[i].name, name) == 0)
            return true;
    return false;
}

/* Finds "--home X" / "--home=X" in argv, for the default config file. */
static const char *find_home(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--home") == 0 && i + 1 < argc)
            return argv[i + 1];
        if (strncmp(argv[i], "--home=", 7) == 0)
            return argv[i] + 7;
    }
    return NULL;
}

static bool has_flag(int argc, char **argv, const char *flag)
{
    size_t n = strlen(flag);
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], flag, n) == 0 && (argv[i][n] == '\0' || argv[i][n] == '='))
            return true;
    }
    return false;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? MAIN_EXIT_USAGE : MAIN_EXIT_OK;
    }
    const verb_t *verb = NULL;
    for (size_t i = 0; i < COUNT(verbs); i++) {
        if (strcmp(argv[1], verbs[i].name) == 0)
            verb = &verbs[i];
    }
    if (verb == NULL) {
        fprintf(stderr, "%s: unknown verb \"%s\"\n", MAIN_PROGRAM, argv[1]);
        usage(stderr);
        return MAIN_EXIT_USAGE;
    }

    /* argv for ops_config: the verb as program name, then an implicit --config
     * HOME/wallet.conf (HOME/card.conf for the card verbs) when the operator wrote one and no
     * --config was given. */
    char *args[MAIN_ARGV_MAX + 2];
    char conf[DEVICE_PATH_MAX];
    int n = 0;
    if (argc - 1 > MAIN_ARGV_MAX) {
        fprintf(stderr, "%s: too many arguments\n", MAIN_PROGRAM);
        return MAIN_EXIT_USAGE;
    }
    args[n++] = argv[1];
    const char *home = find_home(argc, argv);
    if (verb->conf_file != NULL && home != NULL && !has_flag(argc, argv, "--config") &&
        device_home_path(home, verb->conf_file, conf) == 0 && access(conf, R_OK) == 0) {
        args[n++] = "--config";
        args[n++] = conf;
    }
    for (int i = 2; i < argc; i++)
        args[n++] = argv[i];
    args[n] = NULL;

    char program[MAIN_LINE_MAX];
    snprintf(program, sizeof(program), "%s %s", MAIN_PROGRAM, verb->name);
    char err[OPS_CONFIG_ERROR_MAX];
    ops_config_t *cfg = NULL;
    int rc = ops_config_load(program, verb->usage, verb->keys, verb->key_count, n, args, &cfg, err,
                             sizeof(err));
    if (rc == 1)
        return MAIN_EXIT_OK;
    if (rc != 0) {
        fprintf(stderr, "%s: %s\n", MAIN_PROGRAM, err);
        return MAIN_EXIT_USAGE;
    }
    /* The verbs that sign or change the state log in to a token wallet's token at open. */
    g_login_at_open = strcmp(verb->name, "load") == 0 || strcmp(verb->name, "sync") == 0 ||
                      strcmp(verb->name, "card-transfer") == 0 ||
                      strcmp(verb->name, "card-sync") == 0;
    int level = ops_log_level_parse(ops_config_str(cfg, "log_level"));
    ops_log_init(MAIN_PROGRAM, verb->name, level < 0 ? OPS_LOG_ERROR : (ops_log_level_t)level);
    int status;
    if (verb_has_key(verb, "home") && ops_config_str(cfg, "home") == NULL) {
        fprintf(stderr, "%s %s: --home DIR is required\n", MAIN_PROGRAM, verb->name);
        status = MAIN_EXIT_USAGE;
    } else {
        status = verb->run(cfg);
    }
    ops_config_destroy(&cfg);
    return status;
}
