/* limitsctl: the "limits" verb of the control socket (submitctl limits
 * show [KEY], submitctl limits reset KEY). KEY is user:LOGIN or
 * ip:ADDRESS (an IPv6 address stands for its /64, as the limits count
 * it; an address also covers the counters of a trusted client without
 * AUTH, keyed ip:ADDRESS). Answers are formatted here, as text lines; the
 * counters are read from wherever they live (Redis or the local table),
 * on the control thread. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "abuse/limits_int.h"

#define SHOW_BLOCKS_MAX 100

static const char usage[] = "usage: limits show [user:LOGIN | ip:ADDRESS] | limits reset user:LOGIN | ip:ADDRESS";

static const enum lim user_lims[] = {L_MESSAGES, L_RECIPIENTS, L_BYTES, L_AUTH_LOGIN, L_FAIL_LOGIN};
static const enum lim ip_lims[] = {L_CONNECTIONS, L_AUTH_IP, L_FAIL_IP};
/* the per-account limits of a trusted client without AUTH, counted by address */
static const enum lim trusted_lims[] = {L_MESSAGES, L_RECIPIENTS, L_BYTES};

static struct config *current(struct abuse *a)
{
    pthread_mutex_lock(&a->lock);
    struct config *c = config_ref(a->cfg);
    pthread_mutex_unlock(&a->lock);
    return c;
}

static void print_block(void *arg, const char *name, uint64_t left_us)
{
    struct strbuf *out = arg;
    sb_printf(out, "blocked %s%s %llu s\n", name[1] == 'i' ? "ip:" : "user:", name + 3,
              (unsigned long long)(left_us / 1000000 + 1));
}

static void show_summary(struct abuse *a, const struct config *c, struct strbuf *out)
{
    const struct ratelimit_cfg *r = &c->ratelimit;
    int redis = atomic_load(&a->use_redis_now);
    if (!redis) {
        sb_puts(out, "backend memory\n");
    } else {
        int64_t wait = atomic_load(&a->down_until) - abuse_now();
        if (atomic_load(&a->down))
            sb_printf(out, "backend %s unreachable: %s; next try in %lld s\n", r->backend,
                      r->fail_open ? "local counters (fail-open)" : "refusing mail (fail-open no)",
                      wait > 0 ? (long long)(wait / 1000000 + 1) : 0LL);
        else
            sb_printf(out, "backend %s\n", r->backend);
    }
    struct rl_stats st;
    rl_stats(a->table, &st);
    sb_printf(out, "table %zu keys of %zu, evicted %llu (%llu with state)\n", st.entries, st.max_entries,
              (unsigned long long)st.evictions, (unsigned long long)st.evicted_live);
    sb_printf(out, "profiles %zu\n", bl_count(a->profiles));
    for (int k = 0; k <= L_FAIL_LOGIN; k++) {
        char lim[64];
        abuse_fmt_limit((enum lim)k, abuse_limit(c, (enum lim)k, NULL), lim, sizeof(lim));
        sb_printf(out, "limit %s %s\n", abuse_limdefs[k].name, lim);
    }
    char per[32], ipw[32];
    abuse_fmt_period((uint64_t)r->block_time * 1000, per, sizeof(per));
    sb_printf(out, "block-time %s\n", per);
    sb_printf(out, "exempt-networks %zu\n", r->exempt.n);
    sb_printf(out, "overrides %zu\n", c->nratelimit_for);
    static const char *const actions[] = {"alert", "hold", "suspend"};
    const struct abuse_cfg *ab = &c->abuse;
    abuse_fmt_period((uint64_t)ab->window * 1000, per, sizeof(per));
    abuse_fmt_period((uint64_t)ab->ip_window * 1000, ipw, sizeof(ipw));
    sb_printf(out, "detect %s action %s window %s multiple %u min-messages %u min-recipients %u max-ips %u ip-window "
                   "%s\n",
              ab->detect ? "yes" : "no", actions[ab->action % 3], per, ab->multiple, ab->min_messages,
              ab->min_recipients, ab->max_ips, ipw);
    if (redis)
        sb_puts(out, "blocked (kept in Redis: ask for one key, limits show ip:ADDRESS or user:LOGIN)\n");
    rl_list(a->table, "bi:", abuse_now(), SHOW_BLOCKS_MAX, print_block, out);
    rl_list(a->table, "bl:", abuse_now(), SHOW_BLOCKS_MAX, print_block, out);
    pthread_mutex_lock(&a->lock);
    for (struct susp *s = a->susp; s; s = s->next)
        sb_printf(out, "suspended user:%s %s\n", s->login,
                  s->durable ? "(written to the accounts file)" : "(in memory; not written to the accounts file)");
    pthread_mutex_unlock(&a->lock);
}

/* Reads the buckets of `lims` and the block `bk` (L__COUNT: none) for subject. */
static int show_counters(struct abuse *a, const struct config *c, const enum lim *lims, size_t nl, enum lim bk,
                         const char *subject, const char *login, struct strbuf *out)
{
    struct rl_op ops[8];
    char keys[8][RL_KEY_MAX];
    int what[8];
    size_t n = 0;
    for (size_t i = 0; i < nl; i++) {
        const struct rate_limit *r = abuse_limit(c, lims[i], login);
        if (abuse_op(&ops[n], keys[n], RL_GET, lims[i], r, subject, 0))
            what[n++] = (int)lims[i];
        else
            sb_printf(out, "%s none\n", abuse_limdefs[lims[i]].name);
    }
    if (bk != L__COUNT) {
        memset(&ops[n], 0, sizeof(ops[n]));
        abuse_key(bk, subject, keys[n], RL_KEY_MAX);
        ops[n].kind = RL_BLOCKED;
        ops[n].key = keys[n];
        what[n++] = (int)bk;
    }
    abuse_run(a, c, ops, n, NULL, 0);
    for (size_t i = 0; i < n; i++) {
        enum lim k = (enum lim)what[i];
        if (k == bk) {
            if (ops[i].denied)
                sb_printf(out, "blocked yes, %llu s left\n", (unsigned long long)(ops[i].retry_us / 1000000 + 1));
            else
                sb_puts(out, "blocked no\n");
            continue;
        }
        char lim[64];
        abuse_fmt_limit(k, abuse_limit(c, k, login), lim, sizeof(lim));
        sb_printf(out, "%s %llu%s of %s, all back in %llu s\n", abuse_limdefs[k].name,
                  (unsigned long long)ops[i].used, k == L_BYTES ? "K" : "", lim,
                  (unsigned long long)((ops[i].reset_us + 999999) / 1000000));
    }
    return 0;
}

static int show_user(struct abuse *a, const struct config *c, const char *login, struct strbuf *out)
{
    sb_printf(out, "user %s\n", login);
    int rc = show_counters(a, c, user_lims, ARRAY_LEN(user_lims), L_BLOCK_LOGIN, login, login, out);
    struct bl_params bp;
    struct bl_figures f;
    abuse_bl_params(c, &bp);
    if (bl_peek(a->profiles, login, abuse_now(), &bp, &f)) {
        char per[32];
        abuse_fmt_period((uint64_t)c->abuse.ip_window * 1000, per, sizeof(per));
        sb_printf(out, "window messages %u (limit %u, baseline %.2f)\n", f.messages, f.limit_messages,
                  f.base_messages);
        sb_printf(out, "window recipients %u (limit %u, baseline %.2f)\n", f.recipients, f.limit_recipients,
                  f.base_recipients);
        sb_printf(out, "addresses %u in %s (max %u), %u known\n", f.ips, per, c->abuse.max_ips, f.known);
    } else {
        sb_puts(out, "profile none (no login or message seen)\n");
    }
    int durable = 0;
    if (abuse_suspended(a, login, &durable))
        sb_printf(out, "suspended yes %s\n",
                  durable ? "(written to the accounts file)" : "(in memory; not written to the accounts file)");
    else
        sb_puts(out, "suspended no (by this daemon; see submitctl user list for the accounts file)\n");
    return rc;
}

static int show_ip(struct abuse *a, const struct config *c, const char *ip, struct strbuf *out)
{
    sb_printf(out, "ip %s\n", ip);
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        sb_printf(out, "exempt %s\n", cidr_list_match(&c->ratelimit.exempt, (struct sockaddr *)&ss) ? "yes" : "no");
    }
    int rc = show_counters(a, c, ip_lims, ARRAY_LEN(ip_lims), L_BLOCK_IP, ip, NULL, out);
    char ts[RL_KEY_MAX];
    abuse_trusted_subject(ip, ts, sizeof(ts));
    sb_puts(out, "as a trusted client without AUTH (listener `trusted`):\n");
    if (show_counters(a, c, trusted_lims, ARRAY_LEN(trusted_lims), L__COUNT, ts, NULL, out) != 0)
        rc = -1;
    return rc;
}

/* Resets the buckets of `lims` and the block `bk` (L__COUNT: none) of subject. */
static int reset_key(struct abuse *a, const struct config *c, const enum lim *lims, size_t nl, enum lim bk,
                     const char *subject)
{
    struct rl_op ops[8];
    char keys[8][RL_KEY_MAX];
    size_t n = 0;
    for (size_t i = 0; i < nl + (bk != L__COUNT); i++) { /* bk L__COUNT: no block */
        memset(&ops[n], 0, sizeof(ops[n]));
        abuse_key(i < nl ? lims[i] : bk, subject, keys[n], RL_KEY_MAX);
        ops[n].kind = RL_RESET;
        ops[n].key = keys[n];
        n++;
    }
    abuse_run(a, c, ops, n, NULL, 0);
    return atomic_load(&a->use_redis_now) && atomic_load(&a->down) ? -1 : 0;
}

/* KEY into its kind (1 user, 2 ip) and subject. 0 on a bad key. */
static int parse_key(const char *key, char *subject, size_t n)
{
    if (strncmp(key, "user:", 5) == 0 && key[5] && strlen(key + 5) <= 256) {
        str_copy(subject, key + 5, n);
        return 1;
    }
    if (strncmp(key, "ip:", 3) == 0 && abuse_addr_text_key(key + 3, subject, n) == 0)
        return 2;
    return 0;
}

int abuse_control(void *arg, int argc, char **argv, struct strbuf *out)
{
    struct abuse *a = arg;
    int show = argc >= 2 && strcmp(argv[1], "show") == 0;
    int reset = argc == 3 && strcmp(argv[1], "reset") == 0;
    if (!(show && argc <= 3) && !reset) {
        sb_puts(out, usage);
        return -1;
    }
    struct config *c = current(a);
    char subject[RL_KEY_MAX];
    int kind = argc == 3 ? parse_key(argv[2], subject, sizeof(subject)) : 0;
    int rc = 0;
    if (argc == 3 && kind == 0) {
        sb_printf(out, "bad key %s: expected user:LOGIN or ip:ADDRESS", argv[2]);
        rc = -1;
    } else if (show && argc == 2) {
        show_summary(a, c, out);
    } else if (show) {
        rc = kind == 1 ? show_user(a, c, subject, out) : show_ip(a, c, subject, out);
    } else if (kind == 1) {
        rc = reset_key(a, c, user_lims, ARRAY_LEN(user_lims), L_BLOCK_LOGIN, subject);
        bl_reset(a->profiles, subject);
        int durable = 0;
        int was = abuse_suspended(a, subject, &durable);
        abuse_unsuspend(a, subject);
        sb_printf(out, "reset user:%s: counters, block and this window's profile%s\n", subject,
                  was ? "; suspension lifted in memory" : "");
        if (rc != 0)
            sb_puts(out, "note: Redis is unreachable: only this daemon's local counters were reset\n");
        rc = 0;
        if (was && durable)
            sb_printf(out, "the accounts file still suspends it: submitctl user unsuspend %s, then submitctl reload\n",
                      subject);
    } else {
        rc = reset_key(a, c, ip_lims, ARRAY_LEN(ip_lims), L_BLOCK_IP, subject);
        char ts[RL_KEY_MAX];
        abuse_trusted_subject(subject, ts, sizeof(ts));
        if (reset_key(a, c, trusted_lims, ARRAY_LEN(trusted_lims), L__COUNT, ts) != 0)
            rc = -1;
        sb_printf(out, "reset ip:%s: counters and block\n", subject);
        if (rc != 0)
            sb_puts(out, "note: Redis is unreachable: only this daemon's local counters were reset\n");
        rc = 0;
    }
    config_unref(c);
    return rc;
}
