/* card_pcsc.c - the wallet's card reader over PC/SC (see card_pcsc.h). */
#include "card_pcsc.h"

#include <assert.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <winscard.h>

#include "ops_time.h"

#define CARD_PCSC_RETRY_MS 100 /* between looks for a card while waiting */

struct card_pcsc {
    SCARDCONTEXT ctx;
    SCARDHANDLE card;
    DWORD protocol;
    char reader[CARD_PCSC_READER_MAX + 1];
    char why[CARD_PCSC_WHY_MAX];
};

static int fail(char *why, size_t cap, int code, const char *what, LONG rv)
{
    if (why != NULL && cap > 0)
        snprintf(why, cap, "%s: %s (0x%08lX)", what, pcsc_stringify_error(rv), (unsigned long)rv);
    return code;
}

/* Tries the readers of list in order: the named one, or the hinted ones then the rest.
 * Returns 0 when connected, QC_ETIMEOUT when no candidate holds a card, else an error. */
static int try_readers(card_pcsc_t *p, const char *list, const char *want, char *why, size_t cap)
{
    bool found = false;
    for (int pass = 0; pass < 2; pass++) {
        for (const char *r = list; *r != '\0'; r += strlen(r) + 1) {
            bool hinted = strstr(r, CARD_PCSC_READER_HINT) != NULL;
            if (want != NULL ? strcmp(r, want) != 0 || pass > 0 : hinted != (pass == 0))
                continue;
            found = true;
            LONG rv = SCardConnect(p->ctx, r, SCARD_SHARE_EXCLUSIVE,
                                   SCARD_PROTOCOL_T0 | SCARD_PROTOCOL_T1, &p->card, &p->protocol);
            if (rv == SCARD_S_SUCCESS) {
                snprintf(p->reader, sizeof(p->reader), "%s", r);
                return 0;
            }
            if (rv == SCARD_E_SHARING_VIOLATION)
                return fail(why, cap, QC_EBUSY, "another program holds the card", rv);
            if (rv != SCARD_E_NO_SMARTCARD && rv != SCARD_W_REMOVED_CARD &&
                rv != SCARD_W_UNRESPONSIVE_CARD && rv != SCARD_W_UNPOWERED_CARD &&
                rv != SCARD_E_UNKNOWN_READER && rv != SCARD_E_READER_UNAVAILABLE)
                return fail(why, cap, QC_EIO, "the reader refused the connection", rv);
        }
    }
    if (!found && want == NULL) {
        snprintf(why, cap, "no card reader");
        return QC_ENOTFOUND;
    }
    if (!found) {
        snprintf(why, cap, "no reader named \"%s\"", want);
        return QC_ENOTFOUND;
    }
    snprintf(why, cap, "no card in %s%s", want != NULL ? "reader " : "any reader",
             want != NULL ? want : "");
    return QC_ETIMEOUT;
}

/* Lists the readers (a multi-string the caller frees). */
static int list_readers(card_pcsc_t *p, char **list, char *why, size_t cap)
{
    *list = NULL;
    DWORD len = 0;
    LONG rv = SCardListReaders(p->ctx, NULL, NULL, &len);
    if (rv == SCARD_E_NO_READERS_AVAILABLE)
        return fail(why, cap, QC_ENOTFOUND, "no card reader", rv);
    if (rv != SCARD_S_SUCCESS)
        return fail(why, cap, QC_EIO, "cannot list the card readers", rv);
    *list = calloc(1, (size_t)len + 1);
    if (*list == NULL)
        return QC_ENOMEM;
    rv = SCardListReaders(p->ctx, NULL, *list, &len);
    if (rv != SCARD_S_SUCCESS) {
        free(*list);
        *list = NULL;
        return fail(why, cap, QC_EIO, "cannot list the card readers", rv);
    }
    return 0;
}

int card_pcsc_open(const char *reader, card_pcsc_t **out, char *why, size_t why_cap)
{
    assert(out != NULL);
    assert(why != NULL);
    *out = NULL;
    why[0] = '\0';
    card_pcsc_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return QC_ENOMEM;
    LONG rv = SCardEstablishContext(SCARD_SCOPE_SYSTEM, NULL, NULL, &p->ctx);
    if (rv != SCARD_S_SUCCESS) {
        free(p);
        return fail(why, why_cap, QC_EUNAVAIL, "no PC/SC service (is pcscd running?)", rv);
    }
    uint64_t deadline = ops_time_mono_ms() + CARD_PCSC_WAIT_MS;
    int rc;
    for (;;) {
        char *list = NULL;
        rc = list_readers(p, &list, why, why_cap);
        if (rc == 0) {
            rc = try_readers(p, list, reader, why, why_cap);
            free(list);
        }
        /* A reader appears and a card is noticed by pcscd's polling: wait for both. A card
         * held by another program is waited for too: pcscd releases the hold of a program
         * that died only when it notices. */
        if ((rc != QC_ETIMEOUT && rc != QC_ENOTFOUND && rc != QC_EBUSY) ||
            ops_time_mono_ms() >= deadline)
            break;
        poll(NULL, 0, CARD_PCSC_RETRY_MS);
    }
    if (rc != 0) {
        SCardReleaseContext(p->ctx);
        free(p);
        return rc;
    }
    *out = p;
    return 0;
}

void card_pcsc_destroy(card_pcsc_t **p_p)
{
    if (p_p == NULL || *p_p == NULL)
        return;
    card_pcsc_t *p = *p_p;
    /* Left as it is, not reset: the next contact's SELECT starts a new session on the card
     * (authentication and PIN again). A reset of a card that is gone fails in pcscd 1.9.9,
     * which then, now and then, misses the removal and so the next insertion too (seen with
     * vpcd: the reader stayed empty with a card in it). */
    (void)SCardDisconnect(p->card, SCARD_LEAVE_CARD);
    (void)SCardReleaseContext(p->ctx);
    free(p);
    *p_p = NULL;
}

const char *card_pcsc_reader(const card_pcsc_t *p)
{
    assert(p != NULL);
    return p->reader;
}

const char *card_pcsc_why(const card_pcsc_t *p)
{
    assert(p != NULL);
    return p->why;
}

int card_pcsc_transmit(card_pcsc_t *p, const uint8_t *cmd, size_t cmd_len, uint8_t *resp,
                       size_t cap, size_t *resp_len)
{
    assert(p != NULL);
    assert(cmd != NULL);
    assert(resp != NULL);
    assert(resp_len != NULL);
    *resp_len = 0;
    DWORD len = (DWORD)cap;
    const SCARD_IO_REQUEST *pci = p->protocol == SCARD_PROTOCOL_T0 ? SCARD_PCI_T0 : SCARD_PCI_T1;
    LONG rv = SCardTransmit(p->card, pci, cmd, (DWORD)cmd_len, NULL, resp, &len);
    if (rv != SCARD_S_SUCCESS)
        return fail(p->why, sizeof(p->why), QC_EIO,
                    rv == SCARD_W_REMOVED_CARD || rv == SCARD_E_NO_SMARTCARD
                        ? "the card was removed"
                        : "the reader failed",
                    rv);
    if (len > cap)
        return fail(p->why, sizeof(p->why), QC_EIO, "the reader answered too much",
                    SCARD_E_INSUFFICIENT_BUFFER);
    *resp_len = len;
    return 0;
}
