/* ops_signal.h - SIGTERM/SIGINT request a clean stop, SIGHUP requests a reload. */
#ifndef OPS_SIGNAL_H
#define OPS_SIGNAL_H

#include <stdbool.h>
#include <stdint.h>

/* Installs the handlers (idempotent). SIGPIPE is ignored. */
void ops_signal_install(void);
/* True once SIGTERM or SIGINT arrived (or ops_signal_request_stop() was called). */
bool ops_signal_stop_requested(void);
void ops_signal_request_stop(void);
/* Increments on every SIGHUP; a reader compares it with the value it last saw. */
uint64_t ops_signal_hup_generation(void);

#endif
