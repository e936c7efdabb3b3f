/* card_main.c - qc-card, the simulated IC card: personalisation (init, install-cert), its
 * contact interface (serve, on a local Unix socket) and what its holder can read (status). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "card_device.h"
#include "device_wire.h"
#include "ops_config.h"
#include "ops_log.h"
#include "ops_signal.h"
#include "qc_error.h"
#include "device_amount.h"
#include "device_home.h"

#define CARD_PROGRAM "qc-card"
#define CARD_EXIT_OK 0
#define CARD_EXIT_FAILED 1
#define CARD_EXIT_USAGE 2
#define CARD_PIN_LINE_MAX 64
#define CARD_ACCEPT_POLL_MS 200 /* how often serve looks at the stop flag */
#define CARD_STATUS_SHOWN 20    /* credits listed by status, newest last */

#define KEY_HOME                                                                                   \
    {                                                                                              \
        "home", OPS_CONFIG_STRING, NULL, "the card's home directory (required)"                    \
    }
#define KEY_LOG_LEVEL                                                                              \
    {                                                                                              \
        "log_level", OPS_CONFIG_STRING, "error", "lowest level of JSON log lines"                  \
    }

static const ops_config_key_t init_keys[] = {
    KEY_HOME,
    {"number", OPS_CONFIG_STRING, NULL, "the card number (1..64 of A-Z a-z 0-9 - _)"},
    {"max", OPS_CONFIG_STRING, NULL, "the purse's maximum balance, as 500.00"},
    {"trust", OPS_CONFIG_STRING, "", "wallet device serials this card accepts, comma-separated"},
    {"pin_fd", OPS_CONFIG_INT, "-1", "read the PIN from this descriptor (else env QC_CARD_PIN)"},
    KEY_LOG_LEVEL,
};
static const ops_config_key_t cert_keys[] = {
    KEY_HOME,
    {"ca", OPS_CONFIG_STRING, NULL, "PEM CA bundle that device certificates must chain to"},
    KEY_LOG_LEVEL,
};
static const ops_config_key_t serve_keys[] = {
    KEY_HOME,
    {"socket", OPS_CONFIG_STRING, NULL, "the Unix socket standing in for the card interface"},
    KEY_LOG_LEVEL,
};
static const ops_config_key_t home_keys[] = {KEY_HOME, KEY_LOG_LEVEL};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static int open_card(const ops_config_t *cfg, card_device_t **dev)
{
    const char *home = ops_config_str(cfg, "home");
    int rc = card_device_open(home, dev);
    if (rc == QC_ENOTFOUND)
        fprintf(stderr, "%s: no card in %s: create one with `%s init --home %s ...`\n",
                CARD_PROGRAM, home, CARD_PROGRAM, home);
    else if (rc == QC_EBUSY)
        fprintf(stderr, "%s: the card in %s is in use (is `%s serve` running?)\n", CARD_PROGRAM,
                home, CARD_PROGRAM);
    else if (rc != 0)
        fprintf(stderr, "%s: cannot open the card in %s: %s\n", CARD_PROGRAM, home,
                qc_strerror(rc));
    return rc;
}

/* The PIN from --pin-fd N (one line) or QC_CARD_PIN. Returns its length or a negative code. */
static int card_pin(const ops_config_t *cfg, char pin[CARD_PIN_LINE_MAX])
{
    int64_t fd = ops_config_int(cfg, "pin_fd");
    if (fd < 0) {
        const char *env = getenv("QC_CARD_PIN");
        if (env == NULL || strlen(env) >= CARD_PIN_LINE_MAX) {
            fprintf(stderr, "%s: give the PIN with --pin-fd N or QC_CARD_PIN\n", CARD_PROGRAM);
            return QC_EINVAL;
        }
        snprintf(pin, CARD_PIN_LINE_MAX, "%s", env);
        return (int)strlen(pin);
    }
    size_t n = 0;
    for (;;) {
        char c;
        ssize_t r = fd > INT32_MAX ? -1 : read((int)fd, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            fprintf(stderr, "%s: cannot read the PIN from descriptor %" PRId64 "\n", CARD_PROGRAM,
                    fd);
            return QC_EIO;
        }
        if (r == 0 || c == '\n')
            break;
        if (n + 1 >= CARD_PIN_LINE_MAX)
            return QC_EINVAL;
        pin[n++] = c;
    }
    pin[n] = '\0';
    return (int)n;
}

static int cmd_init(const ops_config_t *cfg)
{
    const char *number = ops_config_str(cfg, "number");
    const char *max_text = ops_config_str(cfg, "max");
    int64_t max = 0;
    const char *why = NULL;
    if (number == NULL || max_text == NULL) {
        fprintf(stderr, "%s: init needs --number N and --max AMOUNT\n", CARD_PROGRAM);
        return CARD_EXIT_USAGE;
    }
    if (!device_pki_id_valid(number)) {
        fprintf(stderr, "%s: \"%s\" is not a card number (1..%d of A-Z a-z 0-9 - _)\n",
                CARD_PROGRAM, number, CARD_NUMBER_MAX);
        return CARD_EXIT_USAGE;
    }
    if (device_amount_parse(max_text, &max, &why) != 0 || max > CARD_BALANCE_MAX_LIMIT) {
        fprintf(stderr, "%s: --max \"%s\": %s\n", CARD_PROGRAM, max_text,
                why != NULL ? why : "too large");
        return CARD_EXIT_USAGE;
    }
    char pin[CARD_PIN_LINE_MAX];
    int n = card_pin(cfg, pin);
    if (n < 0)
        return CARD_EXIT_USAGE;
    const char *home = ops_config_str(cfg, "home");
    int rc = card_device_init(home, number, max, ops_config_str(cfg, "trust"), pin, (size_t)n);
    OPENSSL_cleanse(pin, sizeof(pin));
    if (rc == QC_EEXIST)
        fprintf(stderr, "%s: a card already lives in %s\n", CARD_PROGRAM, home);
    else if (rc == QC_EINVAL)
        fprintf(stderr,
                "%s: refused: the PIN must be %d to %d digits and --trust at most %d serials "
                "of A-Z a-z 0-9 - _\n",
                CARD_PROGRAM, DEVICE_PIN_LEN_MIN, DEVICE_PIN_LEN_MAX, CARD_TRUSTED_MAX);
    else if (rc != 0)
        fprintf(stderr, "%s: cannot create the card: %s\n", CARD_PROGRAM, qc_strerror(rc));
    if (rc != 0)
        return CARD_EXIT_FAILED;
    printf("Created card %s in %s\nCertificate request: %s/%s (have the issuer CA sign it, then "
           "`%s install-cert --home %s --ca CA.pem CERT`)\n",
           number, home, home, CARD_CSR_FILE, CARD_PROGRAM, home);
    return CARD_EXIT_OK;
}

static int cmd_install_cert(const ops_config_t *cfg)
{
    const char *ca = ops_config_str(cfg, "ca");
    if (ops_config_argc(cfg) != 1 || ca == NULL) {
        fprintf(stderr, "%s: install-cert needs --ca CA.pem and one certificate file\n",
                CARD_PROGRAM);
        return CARD_EXIT_USAGE;
    }
    card_device_t *dev = NULL;
    if (open_card(cfg, &dev) != 0)
        return CARD_EXIT_FAILED;
    int rc = card_device_install_cert(dev, ops_config_arg(cfg, 0), ca);
    if (rc == QC_ECERT)
        fprintf(stderr,
                "%s: refused: the certificate must hold this card's key with CN=%s, and the CA "
                "file must be PEM certificates\n",
                CARD_PROGRAM, card_device_state(dev)->number);
    else if (rc != 0)
        fprintf(stderr, "%s: cannot install the certificate: %s\n", CARD_PROGRAM, qc_strerror(rc));
    else
        printf("Installed the certificate of card %s and the device CA\n",
               card_device_state(dev)->number);
    card_device_destroy(&dev);
    return rc == 0 ? CARD_EXIT_OK : CARD_EXIT_FAILED;
}

/* Serves one contact until the reader goes away. */
static void serve_contact(card_device_t *dev, int fd)
{
    card_device_session_reset(dev);
    while (!ops_signal_stop_requested()) {
        uint8_t *req = NULL, *resp = NULL;
        size_t req_len = 0, resp_len = 0;
        int rc = device_wire_recv(fd, DEVICE_WIRE_TIMEOUT_MS, &req, &req_len);
        if (rc != 0) {
            if (rc != QC_ENOTFOUND)
                ops_log(OPS_LOG_WARN, "card.contact_lost", "error", qc_strerror(rc), NULL);
            break;
        }
        rc = card_device_handle(dev, req, req_len, &resp, &resp_len);
        OPENSSL_cleanse(req, req_len);
        free(req);
        if (rc == 0)
            rc = device_wire_send(fd, resp, resp_len, DEVICE_WIRE_TIMEOUT_MS);
        free(resp);
        if (rc != 0) {
            ops_log(OPS_LOG_WARN, "card.answer_failed", "error", qc_strerror(rc), NULL);
            break;
        }
    }
    card_device_session_reset(dev);
}

static int cmd_serve(const ops_config_t *cfg)
{
    const char *path = ops_config_str(cfg, "socket");
    if (path == NULL) {
        fprintf(stderr, "%s: serve needs --socket PATH\n", CARD_PROGRAM);
        return CARD_EXIT_USAGE;
    }
    card_device_t *dev = NULL;
    if (open_card(cfg, &dev) != 0)
        return CARD_EXIT_FAILED;
    if (!card_device_has_cert(dev))
        fprintf(stderr, "%s: warning: no certificate installed; every authentication fails\n",
                CARD_PROGRAM);
    int lfd = -1;
    int rc = device_wire_listen(path, &lfd);
    if (rc != 0) {
        fprintf(stderr, "%s: cannot listen on %s: %s (at most %d bytes)\n", CARD_PROGRAM, path,
                qc_strerror(rc), DEVICE_WIRE_PATH_MAX);
        card_device_destroy(&dev);
        return CARD_EXIT_FAILED;
    }
    ops_signal_install();
    ops_log(OPS_LOG_INFO, "card.serving", "socket", path, NULL);
    while (!ops_signal_stop_requested()) {
        struct pollfd p = {.fd = lfd, .events = POLLIN};
        int pr = poll(&p, 1, CARD_ACCEPT_POLL_MS);
        if (pr <= 0)
            continue; /* timeout or EINTR: look at the stop flag again */
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            continue;
        (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
        serve_contact(dev, fd);
        close(fd);
    }
    close(lfd);
    (void)unlink(path);
    card_device_destroy(&dev);
    return CARD_EXIT_OK;
}

static int cmd_status(const ops_config_t *cfg)
{
    /* Read-only and without the lock, so it works while `serve` runs: the state file is
     * replaced atomically, so it is always one consistent state. */
    card_state_t *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return CARD_EXIT_FAILED;
    const char *home = ops_config_str(cfg, "home");
    int rc = card_state_load(home, st);
    if (rc != 0) {
        fprintf(stderr, "%s: cannot read the card in %s: %s\n", CARD_PROGRAM, home,
                qc_strerror(rc));
        free(st);
        return CARD_EXIT_FAILED;
    }
    char a[DEVICE_AMOUNT_FORMAT_MAX], b[DEVICE_AMOUNT_FORMAT_MAX];
    char hex[2 * CARD_XFER_ID_SIZE + 1];
    printf("card:        %s\n", st->number);
    printf("balance:     %s\n", device_amount_format(st->balance, a, sizeof(a)));
    printf("maximum:     %s\n", device_amount_format(st->max_balance, b, sizeof(b)));
    printf("counter:     %" PRIu64 "\n", st->counter);
    printf("PIN tries:   %" PRIu32 " of %u%s\n", st->pin.tries_left, DEVICE_PIN_TRIES,
           st->pin.tries_left == 0 ? " (locked)" : "");
    printf("trusted:     ");
    for (size_t i = 0; i < st->trusted_count; i++)
        printf("%s%s", i > 0 ? "," : "", st->trusted[i]);
    printf("%s\n", st->trusted_count == 0 ? "(none)" : "");
    printf("credits:     %zu\n", st->transfer_count);
    size_t first =
        st->transfer_count > CARD_STATUS_SHOWN ? st->transfer_count - CARD_STATUS_SHOWN : 0;
    for (size_t i = first; i < st->transfer_count; i++) {
        const card_record_t *r = &st->transfers[i];
        printf("  #%" PRIu64 " transfer %s from %s: +%s, balance %s\n", r->counter,
               ops_hex(r->transfer_id, CARD_XFER_ID_SIZE, hex), r->device_id,
               device_amount_format(r->amount, a, sizeof(a)),
               device_amount_format(r->balance_after, b, sizeof(b)));
    }
    OPENSSL_cleanse(st, sizeof(*st));
    free(st);
    return CARD_EXIT_OK;
}

typedef struct verb {
    const char *name;
    const char *usage;
    const ops_config_key_t *keys;
    size_t key_count;
    int (*run)(const ops_config_t *cfg);
} verb_t;

static const verb_t verbs[] = {
    {"init", "--home DIR --number N --max AMOUNT [--trust SERIAL,...] [--pin-fd N]: create",
     init_keys, COUNT(init_keys), cmd_init},
    {"install-cert", "--home DIR --ca CA.pem CERT: install the card's certificate and device CA",
     cert_keys, COUNT(cert_keys), cmd_install_cert},
    {"serve", "--home DIR --socket PATH: answer readers on a local socket until SIGTERM",
     serve_keys, COUNT(serve_keys), cmd_serve},
    {"status", "--home DIR: number, balance, maximum, counter, PIN tries, credits", home_keys,
     COUNT(home_keys), cmd_status},
};

static void usage(FILE *out)
{
    fprintf(out, "Usage: %s VERB [options]   (%s VERB --help for its options)\n\n", CARD_PROGRAM,
            CARD_PROGRAM);
    for (size_t i = 0; i < COUNT(verbs); i++)
        fprintf(out, "  %-13s %s\n", verbs[i].name, verbs[i].usage);
    fprintf(out,
            "\nA simulated IC card (purse with a maximum, PIN with %u tries, signed "
            "receipts).\nExit status: 0 done, 1 the operation failed, 2 bad usage.\n",
            DEVICE_PIN_TRIES);
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? CARD_EXIT_USAGE : CARD_EXIT_OK;
    }
    const verb_t *verb = NULL;
    for (size_t i = 0; i < COUNT(verbs); i++) {
        if (strcmp(argv[1], verbs[i].name) == 0)
            verb = &verbs[i];
    }
    if (verb == NULL) {
        fprintf(stderr, "%s: unknown verb \"%s\"\n", CARD_PROGRAM, argv[1]);
        usage(stderr);
        return CARD_EXIT_USAGE;
    }
    char program[CARD_PIN_LINE_MAX];
    snprintf(program, sizeof(program), "%s %s", CARD_PROGRAM, verb->name);
    char err[OPS_CONFIG_ERROR_MAX];
    ops_config_t *cfg = NULL;
    int rc = ops_config_load(program, verb->usage, verb->keys, verb->key_count, argc - 1, argv + 1,
                             &cfg, err, sizeof(err));
    if (rc == 1)
        return CARD_EXIT_OK;
    if (rc != 0) {
        fprintf(stderr, "%s: %s\n", CARD_PROGRAM, err);
        return CARD_EXIT_USAGE;
    }
    int level = ops_log_level_parse(ops_config_str(cfg, "log_level"));
    ops_log_init(CARD_PROGRAM, verb->name, level < 0 ? OPS_LOG_ERROR : (ops_log_level_t)level);
    int status;
    if (ops_config_str(cfg, "home") == NULL) {
        fprintf(stderr, "%s %s: --home DIR is required\n", CARD_PROGRAM, verb->name);
        status = CARD_EXIT_USAGE;
    } else {
        status = verb->run(cfg);
    }
    ops_config_destroy(&cfg);
    return status;
}
