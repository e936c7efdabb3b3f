/* card_main.c - qc-card, the simulated IC card: personalisation (init, install-cert), its
 * contact interface (serve: an ISO 7816-4 applet inserted into a PC/SC reader through the
 * vsmartcard vpcd driver) and what its holder can read (status). */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "card_applet.h"
#include "card_device.h"
#include "card_vpcd.h"
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
#define CARD_POLL_MS 200     /* how often serve looks at the stop flag */
#define CARD_HOST_MAX 256    /* the reader's host name in --vpcd HOST:PORT */
#define CARD_STATUS_SHOWN 20 /* credits listed by status, newest last */

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
    {"vpcd", OPS_CONFIG_STRING, "localhost:35963",
     "the vpcd reader to insert the card into, HOST:PORT (see /etc/reader.conf.d/vpcd)"},
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

/* One message from the reader: a control command or a command APDU. Returns 0 when it was
 * answered (or needed no answer), else the link's error. */
static int serve_message(card_applet_t *applet, int fd, const uint8_t *msg, size_t len,
                         uint8_t *rapdu)
{
    if (len == 1) {
        size_t atr_len = 0;
        const uint8_t *atr = card_applet_atr(&atr_len);
        switch (msg[0]) {
        case CARD_VPCD_POWER_OFF:
        case CARD_VPCD_POWER_ON:
        case CARD_VPCD_RESET:
            card_applet_reset(applet); /* a new contact */
            return 0;
        case CARD_VPCD_GET_ATR:
            return card_vpcd_send(fd, atr, atr_len);
        default:
            ops_log(OPS_LOG_WARN, "card.unknown_control", NULL);
            return 0;
        }
    }
    size_t rlen = 0;
    card_applet_process(applet, msg, len, rapdu, CARD_APPLET_RAPDU_MAX, &rlen);
    return card_vpcd_send(fd, rapdu, rlen);
}

/* Serves the reader on fd until it closes the link or a stop is asked. */
static void serve_reader(card_applet_t *applet, int fd, uint8_t *msg, uint8_t *rapdu)
{
    card_applet_reset(applet);
    while (!ops_signal_stop_requested()) {
        size_t len = 0;
        int rc = card_vpcd_recv(fd, CARD_POLL_MS, msg, CARD_VPCD_MESSAGE_MAX, &len);
        if (rc == QC_ETIMEOUT)
            continue;
        if (rc == 0 && len == 0)
            continue; /* an empty message says nothing */
        if (rc == 0)
            rc = serve_message(applet, fd, msg, len, rapdu);
        OPENSSL_cleanse(msg, len); /* a VERIFY carries the PIN */
        if (rc != 0) {
            if (rc != QC_ENOTFOUND)
                ops_log(OPS_LOG_WARN, "card.reader_lost", "error", qc_strerror(rc), NULL);
            break;
        }
    }
    card_applet_reset(applet);
}

/* Splits HOST:PORT. Returns 0 or QC_EINVAL. */
static int parse_vpcd(const char *text, char host[CARD_HOST_MAX], uint16_t *port)
{
    const char *colon = strrchr(text, ':');
    if (colon == NULL || colon == text || (size_t)(colon - text) >= CARD_HOST_MAX)
        return QC_EINVAL;
    char *end = NULL;
    long p = strtol(colon + 1, &end, 10);
    if (*(colon + 1) == '\0' || *end != '\0' || p <= 0 || p > UINT16_MAX)
        return QC_EINVAL;
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    *port = (uint16_t)p;
    return 0;
}

static int cmd_serve(const ops_config_t *cfg)
{
    char host[CARD_HOST_MAX];
    uint16_t port = 0;
    const char *vpcd = ops_config_str(cfg, "vpcd");
    if (parse_vpcd(vpcd, host, &port) != 0) {
        fprintf(stderr, "%s: --vpcd \"%s\": give HOST:PORT, as localhost:%d\n", CARD_PROGRAM, vpcd,
                CARD_VPCD_PORT_DEFAULT);
        return CARD_EXIT_USAGE;
    }
    card_device_t *dev = NULL;
    if (open_card(cfg, &dev) != 0)
        return CARD_EXIT_FAILED;
    if (!card_device_has_cert(dev))
        fprintf(stderr, "%s: warning: no certificate installed; every authentication fails\n",
                CARD_PROGRAM);
    card_applet_t *applet = NULL;
    uint8_t *msg = malloc(CARD_VPCD_MESSAGE_MAX);
    uint8_t *rapdu = malloc(CARD_APPLET_RAPDU_MAX);
    int status = CARD_EXIT_FAILED;
    if (msg == NULL || rapdu == NULL || card_applet_new(dev, &applet) != 0)
        goto out;
    ops_signal_install();
    bool waiting_logged = false;
    /* Inserted while connected; a reader that goes away is waited for again. */
    while (!ops_signal_stop_requested()) {
        int fd = -1;
        int rc = card_vpcd_connect(host, port, &fd);
        if (rc != 0) {
            if (rc != QC_EUNAVAIL) {
                fprintf(stderr, "%s: cannot reach the reader at %s: %s\n", CARD_PROGRAM, vpcd,
                        qc_strerror(rc));
                goto out;
            }
            if (!waiting_logged)
                ops_log(OPS_LOG_INFO, "card.waiting_for_reader", "vpcd", vpcd, NULL);
            waiting_logged = true;
            poll(NULL, 0, CARD_POLL_MS);
            continue;
        }
        waiting_logged = false;
        ops_log(OPS_LOG_INFO, "card.inserted", "vpcd", vpcd, NULL);
        serve_reader(applet, fd, msg, rapdu);
        close(fd);
        ops_log(OPS_LOG_INFO, "card.removed", "vpcd", vpcd, NULL);
    }
    status = CARD_EXIT_OK;
out:
    card_applet_destroy(&applet);
    free(msg);
    free(rapdu);
    card_device_destroy(&dev);
    return status;
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
    {"serve", "--home DIR [--vpcd HOST:PORT]: sit in a PC/SC (vpcd) reader until SIGTERM",
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
