/* ops_time.h - clocks in milliseconds. */
#ifndef OPS_TIME_H
#define OPS_TIME_H

#include <stdint.h>

/* Wall clock, Unix ms (for deadlines that cross processes). */
uint64_t ops_time_wall_ms(void);
/* Monotonic clock, ms (for timeouts inside one process). */
uint64_t ops_time_mono_ms(void);
/* Monotonic clock, ns (for latency measurements). */
uint64_t ops_time_mono_ns(void);

#endif
