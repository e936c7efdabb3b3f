/* ops_time.c - clocks in milliseconds. */
#include "ops_time.h"

#include <assert.h>
#include <time.h>

static uint64_t ops_time_read_ns(clockid_t clock)
{
    struct timespec ts;
    int rc = clock_gettime(clock, &ts);
    assert(rc == 0);
    (void)rc;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t ops_time_wall_ms(void)
{
    return ops_time_read_ns(CLOCK_REALTIME) / 1000000u;
}

uint64_t ops_time_mono_ms(void)
{
    return ops_time_read_ns(CLOCK_MONOTONIC) / 1000000u;
}

uint64_t ops_time_mono_ns(void)
{
    return ops_time_read_ns(CLOCK_MONOTONIC);
}
