/* ratelimit_bench: the cost of one rate-limit check of the in-memory
 * limiter (src/abuse/ratelimit.c) as the number of keys grows: 1k, 100k
 * and 1M keys (make bench-limiter). For each size: a table sized for the
 * keys is filled, then timed over CHECKS checks on random existing keys
 * (the steady state: lookup + GCRA + store), then over CHECKS checks on
 * keys never seen before (the churn state: every check inserts and evicts
 * a key). One thread, the injected clock advancing 1 µs per check, timed
 * in thread CPU time. Prints
 * one line per size and state, then one JSON line. Not a test: the figures
 * are for docs/performance.md and for spotting a regression by eye. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "abuse/ratelimit.h"

#define CHECKS 2000000
#define KEY_LEN 48

/* This thread's CPU time: time the scheduler gave to other processes (a
 * loaded machine, CI) does not count. */
static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* xorshift64*: reproducible key choice without libc rand's lock. */
static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ULL;
}

/* prefix + decimal i + "@example.com", without snprintf's cost. */
static void key_of(char *buf, const char *prefix, uint64_t i)
{
    char digits[24];
    size_t nd = 0;
    do {
        digits[nd++] = (char)('0' + i % 10);
        i /= 10;
    } while (i);
    size_t pl = strlen(prefix);
    memcpy(buf, prefix, pl);
    for (size_t k = 0; k < nd; k++)
        buf[pl + k] = digits[nd - 1 - k];
    memcpy(buf + pl + nd, "@example.com", sizeof("@example.com"));
}

/* ns per check over CHECKS checks on random keys among the n filled ones
 * ("m:userN"), or (`fresh`) on keys never seen before ("n:N"). The key is
 * built in the loop either way, so both states pay the same for it. */
static double run(struct rl_table *t, size_t n, int64_t *clock, int fresh)
{
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    char key[KEY_LEN];
    unsigned long long denied = 0;
    double t0 = now_ns();
    for (uint64_t i = 0; i < CHECKS; i++) {
        uint64_t r = next_rand(&seed) % n;
        if (fresh)
            key_of(key, "n:", i + (uint64_t)*clock);
        else
            key_of(key, "m:user", r);
        struct rl_op op = {.kind = RL_CONSUME, .key = key, .limit = 100, .period_us = 3600000000ULL, .cost = 1};
        denied += (unsigned long long)rl_apply(t, &op, 1, (*clock)++);
    }
    double ns = (now_ns() - t0) / CHECKS;
    if (denied == CHECKS + 1) /* keeps the loop's result alive */
        puts("");
    return ns;
}

int main(void)
{
    static const size_t sizes[] = {1000, 100000, 1000000};
    double steady[3], churn[3];
    int64_t clock = 1000000;
    for (size_t s = 0; s < 3; s++) {
        size_t n = sizes[s];
        char key[KEY_LEN];
        struct rl_table *t = rl_table_new(n);
        for (size_t i = 0; i < n; i++) {
            key_of(key, "m:user", i);
            struct rl_op op = {.kind = RL_CONSUME, .key = key, .limit = 100, .period_us = 3600000000ULL, .cost = 1};
            rl_apply(t, &op, 1, clock++);
        }
        steady[s] = run(t, n, &clock, 0);
        churn[s] = run(t, n, &clock, 1);
        struct rl_stats st;
        rl_stats(t, &st);
        printf("limiter keys=%zu steady_ns_per_check=%.1f churn_ns_per_check=%.1f entries=%zu evictions=%llu\n", n,
               steady[s], churn[s], st.entries, (unsigned long long)st.evictions);
        rl_table_free(t);
    }
    printf("{\"bench\":\"limiter\",\"checks\":%d,\"keys\":[1000,100000,1000000],\"steady_ns\":[%.1f,%.1f,%.1f],"
           "\"churn_ns\":[%.1f,%.1f,%.1f]}\n",
           CHECKS, steady[0], steady[1], steady[2], churn[0], churn[1], churn[2]);
    return 0;
}
