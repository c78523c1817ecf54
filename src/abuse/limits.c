/* limits: the abuse checks sessions call (abuse.h): turning the config
 * into ratelimit batches (keys: a prefix per limit + login or address),
 * running them on Redis or the local table with the fallback and its
 * logging, the replies that name the limit and when to retry, the
 * brute-force counting and blocks around AUTH, detection on each message
 * and login with its actions, and suspending accounts (in memory at once,
 * in the accounts file by a job through acctfile.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "abuse/limits_int.h"
#include "auth/acctfile.h"
#include "core/cidr.h"

const struct limdef abuse_limdefs[L__COUNT] = {
    [L_MESSAGES] = {"m:", "messages per account", "messages", 1},
    [L_RECIPIENTS] = {"r:", "recipients per account", "recipients", 1},
    [L_BYTES] = {"b:", "bytes per account", "bytes", 1},
    [L_CONNECTIONS] = {"c:", "connections per client address", "connections", 0},
    [L_AUTH_IP] = {"ai:", "AUTH attempts per client address", "auth", 0},
    [L_AUTH_LOGIN] = {"al:", "AUTH attempts per login", "auth-login", 1},
    [L_FAIL_IP] = {"fi:", "failed logins per client address", "auth-failures-ip", 0},
    [L_FAIL_LOGIN] = {"fl:", "failed logins per login", "auth-failures-login", 1},
    [L_BLOCK_IP] = {"bi:", "blocked client address", "block-time", 0},
    [L_BLOCK_LOGIN] = {"bl:", "blocked login", "block-time", 1},
};

/* Counting failures for the slow-down when auth-failures-ip is none. */
static const struct rate_limit slowdown_only = {1000000, 15 * 60 * 1000, 0, 0};

int64_t abuse_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000 + 1;
}

/* ---- keys and limits -------------------------------------------------------- */

static void addr6_key(unsigned char a[16], char *out, size_t n)
{
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    char buf[INET6_ADDRSTRLEN];
    if (memcmp(a, mapped, sizeof(mapped)) == 0) {
        inet_ntop(AF_INET, a + 12, out, (socklen_t)n);
        return;
    }
    memset(a + 8, 0, 8);
    inet_ntop(AF_INET6, a, buf, sizeof(buf));
    snprintf(out, n, "%s/64", buf);
}

void abuse_addr_key(const struct sockaddr *sa, char *out, size_t n)
{
    unsigned char a[16];
    if (sa && sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)n);
    } else if (sa && sa->sa_family == AF_INET6) {
        memcpy(a, ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr, 16);
        addr6_key(a, out, n);
    } else {
        str_copy(out, "unknown", n);
    }
}

int abuse_addr_text_key(const char *text, char *out, size_t n)
{
    char t[INET6_ADDRSTRLEN + 8];
    struct in_addr a4;
    unsigned char a6[16];
    if (str_copy(t, text, sizeof(t)) >= sizeof(t))
        return -1;
    char *slash = strchr(t, '/');
    if (slash) {
        if (strcmp(slash, "/64") != 0)
            return -1;
        *slash = '\0';
    }
    if (!slash && inet_pton(AF_INET, t, &a4) == 1) {
        inet_ntop(AF_INET, &a4, out, (socklen_t)n);
        return 0;
    }
    if (inet_pton(AF_INET6, t, a6) != 1)
        return -1;
    addr6_key(a6, out, n);
    return 0;
}

void abuse_trusted_subject(const char *addr_key, char *out, size_t n)
{
    size_t pl = str_copy(out, "ip:", n);
    if (pl < n)
        str_copy(out + pl, addr_key, n - pl);
}

/* The subject a MAIL/RCPT/end-of-data check counts against: the login, or
 * for a trusted client without AUTH (login NULL) its address (buf). */
static const char *mail_subject(const char *login, const struct sockaddr *sa, char *buf, size_t n)
{
    if (login)
        return login;
    char addr[RL_KEY_MAX];
    abuse_addr_key(sa, addr, sizeof(addr));
    abuse_trusted_subject(addr, buf, n);
    return buf;
}

void abuse_key(enum lim k, const char *subject, char *out, size_t n)
{
    const struct limdef *d = &abuse_limdefs[k];
    size_t pl = str_copy(out, d->prefix, n);
    if (pl < n)
        str_copy(out + pl, subject, n - pl);
    if (d->per_login)
        str_lower(out);
}

static const struct ratelimit_for_cfg *find_for(const struct config *c, const char *key)
{
    for (size_t i = 0; key && i < c->nratelimit_for; i++)
        if (str_ieq(c->ratelimit_for[i].key, key))
            return &c->ratelimit_for[i];
    return NULL;
}

/* The login's own ratelimit-for block and its domain's (either may be NULL). */
static void overrides(const struct config *c, const char *login, const struct ratelimit_for_cfg *o[2])
{
    o[0] = find_for(c, login);
    const char *at = login ? strrchr(login, '@') : NULL;
    o[1] = at && at[1] ? find_for(c, at) : NULL;
}

static const struct rate_limit *for_field(const struct ratelimit_for_cfg *o, enum lim k)
{
    if (!o)
        return NULL;
    const struct rate_limit *r = k == L_MESSAGES ? &o->messages : k == L_RECIPIENTS ? &o->recipients : &o->bytes;
    return r->line ? r : NULL;
}

const struct rate_limit *abuse_limit(const struct config *c, enum lim k, const char *login)
{
    const struct ratelimit_cfg *g = &c->ratelimit;
    if (login && (k == L_MESSAGES || k == L_RECIPIENTS || k == L_BYTES)) {
        const struct ratelimit_for_cfg *o[2];
        overrides(c, login, o);
        for (int i = 0; i < 2; i++)
            if (for_field(o[i], k))
                return for_field(o[i], k);
    }
    switch (k) {
    case L_MESSAGES:
        return &g->messages;
    case L_RECIPIENTS:
        return &g->recipients;
    case L_BYTES:
        return &g->bytes;
    case L_CONNECTIONS:
        return &g->connections;
    case L_AUTH_IP:
        return &g->auth_ip;
    case L_AUTH_LOGIN:
        return &g->auth_login;
    case L_FAIL_IP:
        return &g->fail_ip;
    case L_FAIL_LOGIN:
        return &g->fail_login;
    default:
        return NULL;
    }
}

static int detect_for(const struct config *c, const char *login)
{
    const struct ratelimit_for_cfg *o[2];
    overrides(c, login, o);
    for (int i = 0; i < 2; i++)
        if (o[i] && o[i]->detect >= 0)
            return o[i]->detect;
    return c->abuse.detect;
}

static uint64_t kib(uint64_t bytes)
{
    return bytes / 1024 + (bytes % 1024 != 0);
}

int abuse_op(struct rl_op *op, char *keybuf, enum rl_opkind kind, enum lim k, const struct rate_limit *r,
             const char *subject, uint64_t cost)
{
    if (!r || r->count == 0)
        return 0;
    memset(op, 0, sizeof(*op));
    abuse_key(k, subject, keybuf, RL_KEY_MAX);
    op->kind = kind;
    op->key = keybuf;
    op->limit = k == L_BYTES ? (r->count / 1024 ? r->count / 1024 : 1) : r->count;
    op->period_us = r->period_ms * 1000;
    op->cost = k == L_BYTES ? kib(cost) : cost;
    return 1;
}

void abuse_bl_params(const struct config *c, struct bl_params *p)
{
    p->window_us = (uint64_t)c->abuse.window * 1000000;
    p->multiple = c->abuse.multiple;
    p->min_messages = c->abuse.min_messages;
    p->min_recipients = c->abuse.min_recipients;
    p->max_ips = c->abuse.max_ips;
    p->ip_window_us = (uint64_t)c->abuse.ip_window * 1000000;
    p->known_us = (uint64_t)c->ratelimit.known_ip_time * 1000000;
}

/* ---- formatting ------------------------------------------------------------- */

void abuse_fmt_period(uint64_t ms, char *out, size_t n)
{
    static const struct {
        uint64_t ms;
        const char *unit;
    } units[] = {{86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}};
    for (size_t i = 0; i < ARRAY_LEN(units); i++) {
        if (ms >= units[i].ms && ms % units[i].ms == 0) {
            snprintf(out, n, "%llu%s", (unsigned long long)(ms / units[i].ms), units[i].unit);
            return;
        }
    }
    snprintf(out, n, "%llums", (unsigned long long)ms);
}

void abuse_fmt_limit(enum lim k, const struct rate_limit *r, char *out, size_t n)
{
    if (!r || r->count == 0) {
        str_copy(out, "none", n);
        return;
    }
    char per[32], cnt[32];
    abuse_fmt_period(r->period_ms, per, sizeof(per));
    uint64_t c = r->count;
    if (k == L_BYTES && c % (1024 * 1024 * 1024) == 0)
        snprintf(cnt, sizeof(cnt), "%lluG", (unsigned long long)(c >> 30));
    else if (k == L_BYTES && c % (1024 * 1024) == 0)
        snprintf(cnt, sizeof(cnt), "%lluM", (unsigned long long)(c >> 20));
    else if (k == L_BYTES && c % 1024 == 0)
        snprintf(cnt, sizeof(cnt), "%lluK", (unsigned long long)(c >> 10));
    else
        snprintf(cnt, sizeof(cnt), "%llu", (unsigned long long)c);
    snprintf(out, n, "%s/%s%s", cnt, per, r->hard ? " hard" : "");
}

static unsigned long long secs_up(uint64_t us)
{
    unsigned long long s = us / 1000000 + (us % 1000000 != 0);
    return s ? s : 1;
}

/* The reply for limit k refusing op: `code` is "451 4.7.1", "421 4.7.1" or
 * "454 4.7.1"; a hard limit answers 550 5.7.1; a cost larger than the
 * whole limit (a message bigger than the bytes limit) 552 5.3.4.
 * by_addr: a per-account limit counting a trusted client's address. */
static void limit_reply(char *out, size_t n, const char *code, enum lim k, const struct rate_limit *r,
                        const struct rl_op *op, int by_addr)
{
    static const char *const by_addr_what[] = {[L_MESSAGES] = "messages per client address",
                                               [L_RECIPIENTS] = "recipients per client address",
                                               [L_BYTES] = "bytes per client address"};
    char lim[64];
    abuse_fmt_limit(k, r, lim, sizeof(lim));
    const char *what = by_addr && k <= L_BYTES ? by_addr_what[k] : abuse_limdefs[k].what;
    if (op->retry_us == RL_NEVER)
        snprintf(out, n, "552 5.3.4 Message larger than the limit of %s (%s)", what, lim);
    else if (r && r->hard)
        snprintf(out, n, "550 5.7.1 Rate limit exceeded: %s (limit %s); it resets in %llu s", what, lim,
                 secs_up(op->retry_us));
    else
        snprintf(out, n, "%s Rate limit exceeded: %s (limit %s); try again in %llu s", code, what, lim,
                 secs_up(op->retry_us));
}

static void log_exceeded(const struct log_ctx *lc, enum lim k, const struct rate_limit *r, const struct rl_op *op)
{
    char q[LOGQ_MAX], lim[64];
    abuse_fmt_limit(k, r, lim, sizeof(lim));
    logkv(LOG_LVL_WARN, lc, "ratelimit.exceeded", "limit=%s key=%s max=%s used=%llu retry_ms=%lld",
          abuse_limdefs[k].name, log_q(q, sizeof(q), op->key), log_q((char[LOGQ_MAX]){0}, LOGQ_MAX, lim),
          (unsigned long long)op->used, op->retry_us == RL_NEVER ? -1LL : (long long)(op->retry_us / 1000));
}

/* ---- the backend ------------------------------------------------------------ */

int abuse_remote(struct abuse *a)
{
    return atomic_load(&a->use_redis_now) && abuse_now() >= atomic_load(&a->down_until);
}

int abuse_run(struct abuse *a, const struct config *cfg, struct rl_op *ops, size_t n, const struct log_ctx *lc,
              int mail)
{
    if (n == 0)
        return 0;
    if (atomic_load(&a->use_redis_now)) {
        if (abuse_now() >= atomic_load(&a->down_until)) {
            char err[256];
            int denied = 0;
            if (rl_redis_apply(a->redis, ops, n, &denied, err, sizeof(err)) == 0) {
                if (atomic_exchange(&a->down, 0))
                    logkv(LOG_LVL_WARN, NULL, "ratelimit.backend_up", "backend=%s note=\"shared counters again\"",
                          log_q((char[LOGQ_MAX]){0}, LOGQ_MAX, cfg->ratelimit.backend));
                return denied;
            }
            atomic_store(&a->down_until, abuse_now() + (int64_t)cfg->ratelimit.redis_retry * 1000000);
            if (!atomic_exchange(&a->down, 1))
                logkv(LOG_LVL_WARN, lc, "ratelimit.backend_down", "backend=%s error=%s fallback=%s retry_s=%u",
                      log_q((char[LOGQ_MAX]){0}, LOGQ_MAX, cfg->ratelimit.backend),
                      log_q((char[LOGQ_MAX]){0}, LOGQ_MAX, err), cfg->ratelimit.fail_open ? "local" : "refuse",
                      cfg->ratelimit.redis_retry);
        }
        if (mail && !cfg->ratelimit.fail_open)
            return ABUSE_UNAVAILABLE;
    }
    return rl_apply(a->table, ops, n, abuse_now());
}

/* ---- life cycle ------------------------------------------------------------- */

struct abuse *abuse_new(const struct config *cfg)
{
    struct abuse *a = xcalloc(1, sizeof(*a));
    pthread_mutex_init(&a->lock, NULL);
    a->table = rl_table_new(cfg->ratelimit.table_size);
    a->profiles = bl_new(cfg->abuse.max_accounts, NULL);
    a->redis = rl_redis_new();
    a->jobs = jobq_new(cfg->ratelimit.redis_threads + 1, "abuse");
    if (!a->jobs)
        abort();
    atomic_init(&a->down_until, 0);
    atomic_init(&a->down, 0);
    atomic_init(&a->use_redis_now, 0);
    abuse_reload(a, cfg);
    return a;
}

void abuse_reload(struct abuse *a, const struct config *cfg)
{
    const struct ratelimit_cfg *r = &cfg->ratelimit;
    pthread_mutex_lock(&a->lock);
    struct config *old = a->cfg;
    a->cfg = config_ref((struct config *)cfg);
    rl_redis_configure(a->redis, r->redis_host, r->redis_port, r->redis_db, r->redis_timeout_ms, r->redis_threads);
    int was = atomic_exchange(&a->use_redis_now, r->redis_host != NULL);
    if (!was || !r->redis_host) {
        atomic_store(&a->down_until, 0);
        atomic_store(&a->down, 0);
    }
    pthread_mutex_unlock(&a->lock);
    config_unref(old);
}

void abuse_free(struct abuse *a)
{
    if (!a)
        return;
    jobq_free(a->jobs);
    rl_table_free(a->table);
    bl_free(a->profiles);
    rl_redis_free(a->redis);
    while (a->susp) {
        struct susp *s = a->susp;
        a->susp = s->next;
        free(s->login);
        free(s);
    }
    config_unref(a->cfg);
    pthread_mutex_destroy(&a->lock);
    free(a);
}

/* ---- suspensions ------------------------------------------------------------ */

int abuse_suspended(struct abuse *a, const char *login, int *durable)
{
    int found = 0;
    pthread_mutex_lock(&a->lock);
    for (struct susp *s = a->susp; s && !found; s = s->next) {
        if (str_ieq(s->login, login)) {
            found = 1;
            if (durable)
                *durable = s->durable;
        }
    }
    pthread_mutex_unlock(&a->lock);
    return found;
}

int abuse_unsuspend(struct abuse *a, const char *login)
{
    int found = 0;
    pthread_mutex_lock(&a->lock);
    for (struct susp **pp = &a->susp; *pp; pp = &(*pp)->next) {
        if (str_ieq((*pp)->login, login)) {
            struct susp *s = *pp;
            *pp = s->next;
            free(s->login);
            free(s);
            a->nsusp--;
            found = 1;
            break;
        }
    }
    pthread_mutex_unlock(&a->lock);
    return found;
}

void abuse_accounts_loaded(struct abuse *a, int64_t read_started)
{
    pthread_mutex_lock(&a->lock);
    struct susp **pp = &a->susp;
    while (*pp) {
        struct susp *s = *pp;
        if (s->durable && s->written < read_started) {
            *pp = s->next;
            free(s->login);
            free(s);
            a->nsusp--;
        } else {
            pp = &s->next;
        }
    }
    pthread_mutex_unlock(&a->lock);
}

struct susp_job {
    struct abuse *a;
    char *login;
    char *path;
    char sid[QID_LEN + 1];
};

/* On an abuse job thread: suspended=yes into the accounts file. */
static void suspend_work(void *arg)
{
    struct susp_job *j = arg;
    struct log_ctx lc = {.sid = j->sid[0] ? j->sid : NULL, .user = j->login};
    struct strbuf err;
    sb_init(&err);
    char *real = realpath(j->path, NULL);
    struct acct_edit e = {NULL, 1, NULL};
    int rc = acctfile_edit(real ? real : j->path, j->login, &e, &err);
    pthread_mutex_lock(&j->a->lock);
    for (struct susp *s = j->a->susp; s; s = s->next) {
        if (rc == 0 && str_ieq(s->login, j->login)) {
            s->durable = 1;
            s->written = abuse_now();
        }
    }
    pthread_mutex_unlock(&j->a->lock);
    char q[LOGQ_MAX];
    if (rc == 0)
        logkv(LOG_LVL_WARN, &lc, "abuse.suspend_written", "login=%s file=%s%s",
              log_q(q, sizeof(q), j->login), log_q((char[LOGQ_MAX]){0}, LOGQ_MAX, real ? real : j->path),
              err.len ? " note=\"with a warning\"" : "");
    else
        logkv(LOG_LVL_ERR, &lc, "abuse.suspend_not_written",
              "login=%s error=%s note=\"suspended in memory until a restart; make it last with submitctl user "
              "suspend\"",
              log_q(q, sizeof(q), j->login), log_q((char[LOGQ_MAX]){0}, LOGQ_MAX, err.s ? err.s : "?"));
    sb_free(&err);
    free(real);
    free(j->login);
    free(j->path);
    free(j);
}

/* Suspends `login` now (in memory) and in the accounts file (a job). */
static void suspend(struct abuse *a, const struct config *cfg, const char *login, const struct log_ctx *lc,
                    const char *figures)
{
    pthread_mutex_lock(&a->lock);
    int known = 0;
    for (struct susp *s = a->susp; s && !known; s = s->next)
        known = str_ieq(s->login, login);
    if (!known && a->nsusp < SUSPENDED_MAX) {
        struct susp *s = xcalloc(1, sizeof(*s));
        s->login = xstrdup(login);
        str_lower(s->login);
        s->next = a->susp;
        a->susp = s;
        a->nsusp++;
    }
    pthread_mutex_unlock(&a->lock);
    if (known)
        return;
    char q[LOGQ_MAX];
    logkv(LOG_LVL_WARN, lc, "abuse.suspend", "login=%s %s", log_q(q, sizeof(q), login), figures);
    struct susp_job *j = xcalloc(1, sizeof(*j));
    j->a = a;
    j->login = xstrdup(login);
    j->path = xstrdup(cfg->accounts);
    if (lc && lc->sid)
        str_copy(j->sid, lc->sid, sizeof(j->sid));
    jobq_submit(a->jobs, NULL, suspend_work, NULL, j);
}

/* ---- detection -------------------------------------------------------------- */

static void trip_names(int bits, char *out, size_t n)
{
    static const struct {
        int bit;
        const char *name;
    } names[] = {{BL_TRIP_MESSAGES, "messages"}, {BL_TRIP_RECIPIENTS, "recipients"}, {BL_TRIP_IPS, "addresses"}};
    out[0] = '\0';
    for (size_t i = 0; i < ARRAY_LEN(names); i++)
        if (bits & names[i].bit)
            snprintf(out + strlen(out), n - strlen(out), "%s%s", out[0] ? "," : "", names[i].name);
}

static void figures_text(const struct config *c, const struct bl_figures *f, char *out, size_t n)
{
    char why[64];
    trip_names(f->tripped, why, sizeof(why));
    snprintf(out, n,
             "reason=%s messages=%u limit_messages=%u baseline_messages=%.2f recipients=%u limit_recipients=%u "
             "baseline_recipients=%.2f addresses=%u max_addresses=%u window_s=%u ip_window_s=%u multiple=%u",
             why, f->messages, f->limit_messages, f->base_messages, f->recipients, f->limit_recipients,
             f->base_recipients, f->ips, c->abuse.max_ips, c->abuse.window, c->abuse.ip_window, c->abuse.multiple);
}

/* A profile over its thresholds: the configured action. m (a message) is
 * NULL at login. Returns 1 when the account is now suspended. */
static int act(struct abuse *a, const struct config *c, const char *login, const struct bl_figures *f,
               const struct log_ctx *lc, struct abuse_msg *m)
{
    char figs[512], q[LOGQ_MAX];
    if (c->abuse.action == ABUSE_ALERT && !f->fresh)
        return 0; /* alerted already in this window: every later message comes here too */
    figures_text(c, f, figs, sizeof(figs));
    switch (c->abuse.action) {
    case ABUSE_ALERT:
        logkv(LOG_LVL_WARN, lc, "abuse.alert", "login=%s %s", log_q(q, sizeof(q), login), figs);
        return 0;
    case ABUSE_HOLD:
        logkv(LOG_LVL_WARN, lc, "abuse.hold", "login=%s %s%s", log_q(q, sizeof(q), login), figs,
              m ? "" : " note=\"its next messages are held\"");
        break;
    case ABUSE_SUSPEND:
        suspend(a, c, login, lc, figs);
        break;
    default:
        return 0;
    }
    if (m) {
        char why[64];
        trip_names(f->tripped, why, sizeof(why));
        m->hold = 1;
        snprintf(m->reason, sizeof(m->reason), "abuse: %s over the account's baseline (%u messages, %u recipients, %u "
                                               "addresses this window)",
                 why, f->messages, f->recipients, f->ips);
    }
    return c->abuse.action == ABUSE_SUSPEND;
}

/* ---- checks from a session -------------------------------------------------- */

static void add_op(struct abuse_call *c, enum rl_opkind kind, enum lim k, const char *subject, uint64_t cost)
{
    const struct rate_limit *r = abuse_limit(c->cfg, k, c->login);
    if (c->nops < ABUSE_OPS_MAX && abuse_op(&c->ops[c->nops], c->keys[c->nops], kind, k, r, subject, cost))
        c->what[c->nops++] = (int)k;
}

static void decide(struct abuse_call *c)
{
    int r = abuse_run(c->a, c->cfg, c->ops, c->nops, c->lc, c->stage != ABUSE_CONNECT);
    const char *code = c->stage == ABUSE_CONNECT ? "421 4.7.1" : "451 4.7.1";
    if (r == ABUSE_UNAVAILABLE) {
        c->refused = 1;
        snprintf(c->reply, sizeof(c->reply), "%s Rate limiter unavailable; try again later", code);
        return;
    }
    for (size_t i = 0; r && i < c->nops; i++) {
        if (!c->ops[i].denied || c->ops[i].kind == RL_GET)
            continue;
        enum lim k = (enum lim)c->what[i];
        const struct rate_limit *lim = abuse_limit(c->cfg, k, c->login);
        c->refused = 1;
        limit_reply(c->reply, sizeof(c->reply), code, k, lim, &c->ops[i], c->login == NULL);
        log_exceeded(c->lc, k, lim, &c->ops[i]);
        return;
    }
}

static void call_work(void *arg)
{
    decide(arg);
}

static void call_done(void *arg)
{
    struct abuse_call *c = arg;
    c->done(c->arg);
}

int abuse_check(struct abuse *a, struct abuse_call *c, struct jobq_home *home, void (*done)(void *), void *arg)
{
    c->a = a;
    c->refused = 0;
    c->reply[0] = '\0';
    c->nops = 0;
    char subject[RL_KEY_MAX];
    if (c->stage == ABUSE_CONNECT) {
        if (cidr_list_match(&c->cfg->ratelimit.exempt, c->sa))
            return ABUSE_DONE;
        abuse_addr_key(c->sa, subject, sizeof(subject));
        add_op(c, RL_CONSUME, L_CONNECTIONS, subject, 1);
    } else {
        if (!c->login && cidr_list_match(&c->cfg->ratelimit.exempt, c->sa))
            return ABUSE_DONE; /* a trusted client from an exempt network */
        if (c->login && abuse_suspended(a, c->login, NULL)) {
            c->refused = 1;
            snprintf(c->reply, sizeof(c->reply), "550 5.7.13 Account suspended; contact the administrator");
            return ABUSE_DONE;
        }
        const char *who = mail_subject(c->login, c->sa, subject, sizeof(subject));
        if (c->stage == ABUSE_MAIL) {
            add_op(c, RL_CONSUME, L_MESSAGES, who, 1);
            if (c->size)
                add_op(c, RL_PEEK, L_BYTES, who, c->size);
        } else {
            add_op(c, RL_CONSUME, L_RECIPIENTS, who, 1);
        }
    }
    if (c->nops == 0)
        return ABUSE_DONE;
    if (home && abuse_remote(a)) {
        c->done = done;
        c->arg = arg;
        jobq_submit(a->jobs, home, call_work, call_done, c);
        return ABUSE_PENDING;
    }
    decide(c);
    return ABUSE_DONE;
}

/* ---- AUTH ------------------------------------------------------------------- */

static size_t auth_op(const struct config *c, struct rl_op *ops, char (*keys)[RL_KEY_MAX], int *what, size_t n,
                      enum rl_opkind kind, enum lim k, const char *subject, uint64_t cost)
{
    if (kind == RL_BLOCKED) {
        memset(&ops[n], 0, sizeof(ops[n]));
        abuse_key(k, subject, keys[n], RL_KEY_MAX);
        ops[n].kind = kind;
        ops[n].key = keys[n];
        what[n] = (int)k;
        return n + 1;
    }
    if (!abuse_op(&ops[n], keys[n], kind, k, abuse_limit(c, k, NULL), subject, cost))
        return n;
    what[n] = (int)k;
    return n + 1;
}

void abuse_auth_begin(struct abuse *a, struct abuse_auth *x)
{
    const struct config *c = x->cfg;
    x->refused = 0;
    x->reply[0] = '\0';
    x->exempt = cidr_list_match(&c->ratelimit.exempt, x->sa);
    x->known = 0;
    if (x->exempt)
        return;
    char ip[RL_KEY_MAX];
    abuse_addr_key(x->sa, ip, sizeof(ip));
    struct bl_params bp;
    abuse_bl_params(c, &bp);
    x->known = bl_known(a->profiles, x->login, ip, abuse_now(), &bp);
    struct rl_op ops[4];
    char keys[4][RL_KEY_MAX];
    int what[4];
    size_t n = 0;
    n = auth_op(c, ops, keys, what, n, RL_BLOCKED, L_BLOCK_IP, ip, 0);
    n = auth_op(c, ops, keys, what, n, RL_CONSUME, L_AUTH_IP, ip, 1);
    if (!x->known) {
        n = auth_op(c, ops, keys, what, n, RL_BLOCKED, L_BLOCK_LOGIN, x->login, 0);
        n = auth_op(c, ops, keys, what, n, RL_CONSUME, L_AUTH_LOGIN, x->login, 1);
    }
    int r = abuse_run(a, c, ops, n, x->lc, 0);
    for (size_t i = 0; r && i < n; i++) {
        if (!ops[i].denied)
            continue;
        enum lim k = (enum lim)what[i];
        char q[LOGQ_MAX];
        x->refused = 1;
        if (k == L_BLOCK_IP || k == L_BLOCK_LOGIN) {
            snprintf(x->reply, sizeof(x->reply), "454 4.7.0 Too many failed logins %s; try again in %llu s",
                     k == L_BLOCK_IP ? "from your address" : "for this login from new addresses",
                     secs_up(ops[i].retry_us));
            logkv(LOG_LVL_INFO, x->lc, "auth.blocked", "login=%s key=%s left_s=%llu",
                  log_q(q, sizeof(q), x->login), log_q((char[LOGQ_MAX]){0}, LOGQ_MAX, ops[i].key),
                  secs_up(ops[i].retry_us));
        } else {
            const struct rate_limit *lim = abuse_limit(c, k, NULL);
            limit_reply(x->reply, sizeof(x->reply), "454 4.7.1", k, lim, &ops[i], 0);
            log_exceeded(x->lc, k, lim, &ops[i]);
        }
        return;
    }
}

/* Counts one failure against limit k for subject; blocks it (bk) once the
 * failures reach the limit. Returns the failures counted now. */
static uint64_t count_failure(struct abuse *a, const struct config *c, enum lim k, enum lim bk, const char *subject,
                              const struct log_ctx *lc)
{
    const struct rate_limit *r = abuse_limit(c, k, NULL);
    const struct rate_limit *count = r->count ? r : &slowdown_only;
    struct rl_op op[1];
    char key[1][RL_KEY_MAX];
    if (!abuse_op(op, key[0], RL_CONSUME, k, count, subject, 1))
        return 0;
    int d = abuse_run(a, c, op, 1, lc, 0);
    uint64_t used = d ? op[0].limit : op[0].used;
    if (!r->count || used < r->count)
        return used;
    struct rl_op blk = {.kind = RL_BLOCK, .period_us = (uint64_t)c->ratelimit.block_time * 1000000};
    char bkey[RL_KEY_MAX];
    abuse_key(bk, subject, bkey, sizeof(bkey));
    blk.key = bkey;
    abuse_run(a, c, &blk, 1, lc, 0);
    char q[LOGQ_MAX], lim[64];
    abuse_fmt_limit(k, r, lim, sizeof(lim));
    logkv(LOG_LVL_WARN, lc, "auth.block", "key=%s failures=%llu limit=%s block_s=%u", log_q(q, sizeof(q), bkey),
          (unsigned long long)used, log_q((char[LOGQ_MAX]){0}, LOGQ_MAX, lim), c->ratelimit.block_time);
    return used;
}

void abuse_auth_end(struct abuse *a, struct abuse_auth *x, int ok)
{
    const struct config *c = x->cfg;
    char ip[RL_KEY_MAX];
    abuse_addr_key(x->sa, ip, sizeof(ip));
    x->delay_ms = 0;
    x->failures = 0;
    x->suspended = 0;
    if (ok) {
        if (!x->exempt) {
            struct rl_op op = {.kind = RL_RESET};
            char key[RL_KEY_MAX];
            abuse_key(L_FAIL_IP, ip, key, sizeof(key));
            op.key = key;
            abuse_run(a, c, &op, 1, x->lc, 0);
        }
        struct bl_params bp;
        struct bl_figures f;
        abuse_bl_params(c, &bp);
        bl_login(a->profiles, x->login, ip, abuse_now(), &bp, &f);
        if ((f.tripped & BL_TRIP_IPS) && detect_for(c, x->login))
            x->suspended = act(a, c, x->login, &f, x->lc, NULL);
        if (abuse_suspended(a, x->login, NULL))
            x->suspended = 1;
        return;
    }
    uint64_t n = 1;
    if (!x->exempt) {
        n = count_failure(a, c, L_FAIL_IP, L_BLOCK_IP, ip, x->lc);
        if (!x->known && c->ratelimit.fail_login.count)
            count_failure(a, c, L_FAIL_LOGIN, L_BLOCK_LOGIN, x->login, x->lc);
    }
    const struct limits_cfg *L = &c->limits;
    uint64_t delay = L->auth_delay_ms;
    for (uint64_t i = 1; i < n && delay < L->auth_delay_max_ms; i++)
        delay *= 2;
    if (delay > L->auth_delay_max_ms)
        delay = L->auth_delay_max_ms;
    x->delay_ms = (unsigned)delay;
    x->failures = n > UINT32_MAX ? UINT32_MAX : (unsigned)n;
}

/* ---- end of a message ------------------------------------------------------- */

void abuse_message(struct abuse *a, struct abuse_msg *m)
{
    const struct config *c = m->cfg;
    m->refused = 0;
    m->hold = 0;
    m->reply[0] = m->reason[0] = '\0';
    if (!m->login && cidr_list_match(&c->ratelimit.exempt, m->sa))
        return; /* a trusted client from an exempt network */
    if (m->login && abuse_suspended(a, m->login, NULL)) {
        m->refused = 1;
        snprintf(m->reply, sizeof(m->reply), "550 5.7.13 Account suspended; contact the administrator");
        return;
    }
    struct rl_op op;
    char key[RL_KEY_MAX], subject[RL_KEY_MAX];
    const struct rate_limit *r = abuse_limit(c, L_BYTES, m->login);
    const char *who = mail_subject(m->login, m->sa, subject, sizeof(subject));
    if (abuse_op(&op, key, RL_CONSUME, L_BYTES, r, who, m->size)) {
        int d = abuse_run(a, c, &op, 1, m->lc, 1);
        if (d == ABUSE_UNAVAILABLE) {
            m->refused = 1;
            snprintf(m->reply, sizeof(m->reply), "451 4.7.1 Rate limiter unavailable; try again later");
            return;
        }
        if (d) {
            m->refused = 1;
            limit_reply(m->reply, sizeof(m->reply), "451 4.7.1", L_BYTES, r, &op, m->login == NULL);
            log_exceeded(m->lc, L_BYTES, r, &op);
            return;
        }
    }
    if (!m->login || !detect_for(c, m->login))
        return; /* detection follows accounts: a trusted client has none */
    char ip[RL_KEY_MAX];
    abuse_addr_key(m->sa, ip, sizeof(ip));
    size_t n = m->env->nrcpts;
    const char **rcpts = xcalloc(n ? n : 1, sizeof(*rcpts));
    for (size_t i = 0; i < n; i++)
        rcpts[i] = m->env->rcpts[i].addr;
    struct bl_params bp;
    struct bl_figures f;
    abuse_bl_params(c, &bp);
    bl_message(a->profiles, m->login, ip, rcpts, n, abuse_now(), &bp, &f);
    free(rcpts);
    if (f.tripped)
        act(a, c, m->login, &f, m->lc, m);
}
