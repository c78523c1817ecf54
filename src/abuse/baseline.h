/* baseline: per-account profiles for compromised-account detection and
 * for the brute-force defence's "known addresses". A profile holds, for
 * one login: the messages and distinct recipients of the current window
 * (abuse.window, "per hour"), the baseline of earlier windows (an
 * exponentially weighted average: each finished window moves it 1/8 of
 * the way to that window's count; idle windows count as 0), the client
 * addresses that sent or logged in recently (at most 32), and the
 * addresses that logged in successfully (the 8 most recent). Distinct
 * recipients are estimated with linear counting over a 1024-bit map
 * (exact enough up to a few thousand). The table is bounded (least
 * recently used profiles go first) and thread-safe; times are
 * microseconds on the caller's clock. Pure apart from its mutex: the
 * decisions built on it live in limits.c. */
#ifndef SUBMITD_BASELINE_H
#define SUBMITD_BASELINE_H

#include <stddef.h>
#include <stdint.h>

#define BL_IPS_MAX 32
#define BL_KNOWN_MAX 8

struct bl_params {
    uint64_t window_us;
    unsigned multiple;
    unsigned min_messages, min_recipients;
    unsigned max_ips; /* 0 = not checked */
    uint64_t ip_window_us;
    uint64_t known_us; /* how long a successful login keeps its address known */
};

enum { BL_TRIP_MESSAGES = 1, BL_TRIP_RECIPIENTS = 2, BL_TRIP_IPS = 4 };

/* The figures behind a decision (what the logs show). */
struct bl_figures {
    unsigned messages;        /* this window */
    unsigned recipients;      /* distinct, this window (estimate) */
    double base_messages;     /* baseline per window */
    double base_recipients;
    unsigned limit_messages;  /* max(min-messages, multiple x baseline) */
    unsigned limit_recipients;
    unsigned ips;             /* distinct client addresses within ip-window */
    unsigned known;           /* known addresses (successful logins within known_us) */
    int tripped;              /* BL_TRIP_* bits: over a limit now */
    int fresh;                /* BL_TRIP_* bits tripped for the first time in this window */
};

struct bl_table;

/* key: the 16-byte hashing key (NULL: random, as the daemon uses it). */
struct bl_table *bl_new(size_t max_profiles, const uint8_t *key);
void bl_free(struct bl_table *t);

/* A message of `login` from address `ip` with its recipients: counts it,
 * then fills f. */
void bl_message(struct bl_table *t, const char *login, const char *ip, const char *const *rcpts, size_t nrcpts,
                int64_t now, const struct bl_params *p, struct bl_figures *f);
/* A successful login: the address becomes known and counts as seen. */
void bl_login(struct bl_table *t, const char *login, const char *ip, int64_t now, const struct bl_params *p,
              struct bl_figures *f);
/* 1 when `ip` logged in successfully as `login` within p->known_us. */
int bl_known(struct bl_table *t, const char *login, const char *ip, int64_t now, const struct bl_params *p);
/* The figures without counting anything; 0 when there is no profile. */
int bl_peek(struct bl_table *t, const char *login, int64_t now, const struct bl_params *p, struct bl_figures *f);
/* Forgets the current window's counts and addresses (keeps the baseline). 1 if there was a profile. */
int bl_reset(struct bl_table *t, const char *login);
size_t bl_count(struct bl_table *t);

/* Linear-counting estimate of distinct items from the zero bits left in
 * an m-bit map (exposed for the unit tests). */
unsigned bl_estimate(unsigned zero_bits, unsigned m);

#endif
