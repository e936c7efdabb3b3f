/* ops_signal.c - SIGTERM/SIGINT request a clean stop, SIGHUP requests a reload. */
#include "ops_signal.h"

#include <signal.h>
#include <stdatomic.h>
#include <string.h>

static atomic_bool ops_signal_stop;
static atomic_uint_fast64_t ops_signal_hups;
static atomic_bool ops_signal_installed;

static void ops_signal_on_stop(int sig)
{
    (void)sig;
    atomic_store(&ops_signal_stop, true);
}

static void ops_signal_on_hup(int sig)
{
    (void)sig;
    atomic_fetch_add(&ops_signal_hups, 1);
}

void ops_signal_install(void)
{
    if (atomic_exchange(&ops_signal_installed, true))
        return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    /* No SA_RESTART: a blocking zmq_poll() must return EINTR so the loop sees the flag. */
    sa.sa_handler = ops_signal_on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = ops_signal_on_hup;
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}

bool ops_signal_stop_requested(void)
{
    return atomic_load(&ops_signal_stop);
}

void ops_signal_request_stop(void)
{
    atomic_store(&ops_signal_stop, true);
}

uint64_t ops_signal_hup_generation(void)
{
    return atomic_load(&ops_signal_hups);
}
