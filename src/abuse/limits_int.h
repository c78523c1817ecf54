/* limits_int: what limits.c (the checks) and limitsctl.c (the "limits"
 * control verb) share inside the abuse module: the module's state, the
 * table of limits and their key prefixes, key building and the batch
 * runner that picks Redis or the local table. Not for other modules. */
#ifndef SUBMITD_LIMITS_INT_H
#define SUBMITD_LIMITS_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "abuse/abuse.h"
#include "abuse/baseline.h"
#include "abuse/ratelimit.h"
#include "abuse/redis.h"

#define ABUSE_UNAVAILABLE 2 /* abuse_run: Redis down and fail-open no */
#define SUSPENDED_MAX 10000

/* An account this daemon suspended (until the accounts file says so). */
struct susp {
    struct susp *next;
    char *login;    /* lower-case */
    int durable;    /* written to the accounts file */
    int64_t written; /* abuse_now() when it was */
};

struct abuse {
    pthread_mutex_t lock; /* cfg, susp, backend description */
    struct config *cfg;   /* the config in force (a reference) */
    struct rl_table *table;
    struct bl_table *profiles;
    struct rl_redis *redis; /* always made; used when cfg has a redis backend */
    atomic_int use_redis_now; /* cfg has a redis backend */
    struct jobq *jobs;      /* Redis checks for sessions, accounts-file writes */
    atomic_llong down_until; /* Redis: local counters until then */
    atomic_int down;         /* an outage was logged and not yet its end */
    struct susp *susp;
    size_t nsusp;
};

/* The limits, in the order of their key prefixes. */
enum lim {
    L_MESSAGES, L_RECIPIENTS, L_BYTES, L_CONNECTIONS, L_AUTH_IP, L_AUTH_LOGIN, L_FAIL_IP, L_FAIL_LOGIN,
    L_BLOCK_IP, L_BLOCK_LOGIN, L__COUNT
};

struct limdef {
    const char *prefix; /* of its keys: prefix + login or address */
    const char *what;   /* in replies and logs */
    const char *name;   /* its config key */
    int per_login;      /* keyed by login (else by address) */
};
extern const struct limdef abuse_limdefs[L__COUNT];

/* The key text of a client address: IPv4 dotted, IPv6 its /64. */
void abuse_addr_key(const struct sockaddr *sa, char *out, size_t n);
/* The same from text ("192.0.2.1", "2001:db8::1"); 0 or -1. */
int abuse_addr_text_key(const char *text, char *out, size_t n);
/* The subject of a trusted client's per-account limits: "ip:" + its
 * address key (logins cannot contain ':', so it never names an account). */
void abuse_trusted_subject(const char *addr_key, char *out, size_t n);
/* "prefix" + login lower-cased (or + address key). */
void abuse_key(enum lim k, const char *subject, char *out, size_t n);
/* The limit for k: the login's ratelimit-for block, its domain's, else
 * the global one. */
const struct rate_limit *abuse_limit(const struct config *c, enum lim k, const char *login);
/* Fills op for limit k (CONSUME/PEEK/GET) with the key in keybuf; 0 when
 * the limit is `none` (no op needed). */
int abuse_op(struct rl_op *op, char *keybuf, enum rl_opkind kind, enum lim k, const struct rate_limit *r,
             const char *subject, uint64_t cost);
/* Runs a batch on Redis or, when Redis cannot be reached, locally: 0
 * allowed, 1 denied; ABUSE_UNAVAILABLE instead of the local answer when
 * `mail` (a MAIL/RCPT/end-of-data check) and fail-open is no. */
int abuse_run(struct abuse *a, const struct config *cfg, struct rl_op *ops, size_t n, const struct log_ctx *lc,
              int mail);
void abuse_bl_params(const struct config *c, struct bl_params *p);
/* Suspended by this daemon (in memory). durable may be NULL. */
int abuse_suspended(struct abuse *a, const char *login, int *durable);
/* Forgets an in-memory suspension. 1 if there was one. */
int abuse_unsuspend(struct abuse *a, const char *login);
/* "1h", "90s", "1500ms" */
void abuse_fmt_period(uint64_t ms, char *out, size_t n);
/* A limit as in the config: "100/1h", "10M/1d hard", "none". */
void abuse_fmt_limit(enum lim k, const struct rate_limit *r, char *out, size_t n);

#endif
