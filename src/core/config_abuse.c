/* config_abuse: the abuse-control keys of the configuration (see config.h
 * and docs/security.md): rate limits (`N/PERIOD`, `none`, hard limits),
 * the Redis backend URL, `ratelimit-for KEY` blocks, and the defaults of
 * the limits that have one. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config_int.h"
#include "core/confval.h"

/* COUNT/DURATION [hard] or none into *out. NULL, or what is wrong. */
static const char *parse_rate_limit(const char *v, const char *flag, int bytes, int may_hard, struct rate_limit *out)
{
    struct rate_limit r = {0, 0, 0, 0};
    const char *form = bytes ? "expected SIZE/DURATION such as 50M/1d (optionally followed by `hard`), or none"
                             : "expected COUNT/DURATION such as 100/1h (optionally followed by `hard`), or none";
    if (flag && (!may_hard || strcmp(flag, "hard") != 0))
        return may_hard ? form : "expected COUNT/DURATION such as 30/1m, or none (only messages, recipients and "
                                 "bytes take `hard`)";
    if (strcmp(v, "none") == 0) {
        if (flag)
            return "`none` takes no `hard`";
        *out = r;
        return NULL;
    }
    const char *slash = strchr(v, '/');
    char num[32];
    uint64_t n = 0, ms = 0;
    if (!slash || (size_t)(slash - v) >= sizeof(num))
        return form;
    memcpy(num, v, (size_t)(slash - v));
    num[slash - v] = '\0';
    if ((bytes ? cv_parse_size(num, &n) : cv_parse_uint(num, &n)) != 0 || cv_parse_duration_ms(slash + 1, 1000, &ms) != 0)
        return form;
    if (bytes && (n < KIB || n > 1024 * GIB))
        return "the size must be from 1K to 1024G";
    if (!bytes && (n < 1 || n > 1000000000))
        return "the count must be from 1 to 1000000000";
    if (ms < 1000 || ms > 30 * DAY * 1000)
        return "the duration must be from 1s to 30d";
    if ((bytes ? n / KIB : n) > ms * 1000)
        return "more than one per microsecond (bytes: one KiB per microsecond): use a longer duration";
    r.count = n;
    r.period_ms = ms;
    r.hard = flag != NULL;
    *out = r;
    return NULL;
}

void cfg_key_rate_limit(struct parser *p, void *base, const struct keydef *k, char **av, int line)
{
    struct rate_limit *r = cfg_field(base, k->off);
    int bytes = strcmp(k->name, "bytes") == 0;
    int may_hard = bytes || strcmp(k->name, "messages") == 0 || strcmp(k->name, "recipients") == 0;
    const char *why = parse_rate_limit(av[0], av[1], bytes, may_hard, r);
    if (why) {
        cfg_perr(p, line, "bad value `%s%s%s` for `%s`: %s", av[0], av[1] ? " " : "", av[1] ? av[1] : "", k->name, why);
        return;
    }
    r->line = line;
}

/* backend memory | redis://HOST[:PORT][/DB] (HOST: a name, an IPv4
 * address or [IPv6]). */
void cfg_key_rl_backend(struct parser *p, void *base, const struct keydef *k, char **av, int line)
{
    struct ratelimit_cfg *r = base;
    const char *v = av[0];
    free(r->backend);
    free(r->redis_host);
    r->backend = NULL;
    r->redis_host = NULL;
    if (strcmp(v, "memory") == 0) {
        r->backend = xstrdup(v);
        return;
    }
    const char *h = strncmp(v, "redis://", 8) == 0 ? v + 8 : NULL;
    char host[256] = "";
    const char *e = NULL;
    unsigned char a6[16];
    if (h && h[0] == '[') {
        const char *close = strchr(h, ']');
        if (close && (size_t)(close - h - 1) < sizeof(host)) {
            memcpy(host, h + 1, (size_t)(close - h - 1));
            host[close - h - 1] = '\0';
            e = inet_pton(AF_INET6, host, a6) == 1 ? close + 1 : NULL;
        }
    } else if (h) {
        size_t n = strcspn(h, ":/");
        if (n > 0 && n < sizeof(host)) {
            memcpy(host, h, n);
            host[n] = '\0';
            e = cv_valid_hostname(host) ? h + n : NULL;
        }
    }
    uint64_t port = 6379, db = 0;
    if (e && *e == ':') {
        const char *d = cv_parse_digits(e + 1, &port);
        e = d && port >= 1 && port <= 65535 ? d : NULL;
    }
    if (e && *e == '/') {
        const char *d = cv_parse_digits(e + 1, &db);
        e = d && db <= 255 ? d : NULL;
    }
    if (!e || *e != '\0') {
        cfg_perr(p, line, "bad value `%s` for `backend`: expected %s (port 1-65535, database 0-255), such as "
                      "redis://127.0.0.1:6379/0",
             v, k->form);
        return;
    }
    r->backend = xstrdup(v);
    r->redis_host = xstrdup(host);
    r->redis_port = (unsigned)port;
    r->redis_db = (unsigned)db;
}

/* `ratelimit-for KEY {`: KEY is a login or @domain. 0, or -1 after an error. */
int cfg_open_ratelimit_for(struct parser *p, const char *key, int line)
{
    struct config *c = p->c;
    size_t n = strlen(key);
    int ok = n > 0 && n <= 256 && (key[0] != '@' || cv_valid_domain(key + 1));
    for (size_t i = 0; ok && i < n; i++)
        ok = (unsigned char)key[i] > ' ' && key[i] != ':' && key[i] != 0x7f;
    if (!ok) {
        cfg_perr(p, line, "bad ratelimit-for key `%s`: expected a login (no spaces, control characters or `:`, at most "
                      "256 bytes) or @domain",
             key);
        return -1;
    }
    char *k = xstrdup(key);
    str_lower(k);
    for (size_t i = 0; i < c->nratelimit_for; i++) {
        if (strcmp(c->ratelimit_for[i].key, k) == 0) {
            cfg_perr(p, line, "duplicate ratelimit-for block for %s (the first is at line %d)", k,
                 c->ratelimit_for[i].line);
            free(k);
            return -1;
        }
    }
    c->ratelimit_for = xrealloc(c->ratelimit_for, (c->nratelimit_for + 1) * sizeof(*c->ratelimit_for));
    struct ratelimit_for_cfg *r = &c->ratelimit_for[c->nratelimit_for];
    memset(r, 0, sizeof(*r));
    r->key = k;
    r->line = line;
    r->detect = -1;
    p->idx = c->nratelimit_for++;
    return 0;
}

static void limit_default(struct rate_limit *r, const char *text, int bytes)
{
    char buf[64];
    str_copy(buf, text, sizeof(buf));
    char *hard = strchr(buf, ' ');
    if (hard)
        *hard++ = '\0';
    if (parse_rate_limit(buf, hard, bytes, 1, r) != NULL)
        abort(); /* a broken default: caught by the unit tests */
}

void cfg_abuse_defaults(struct config *c)
{
    struct ratelimit_cfg *r = &c->ratelimit;
    /* Volume limits depend on the site (one NAT address may carry a whole
     * office, one account a mailing list): off until configured. The
     * brute-force limits only count failures: on. */
    limit_default(&r->messages, "none", 0);
    limit_default(&r->recipients, "none", 0);
    limit_default(&r->bytes, "none", 1);
    limit_default(&r->connections, "none", 0);
    limit_default(&r->auth_ip, "none", 0);
    limit_default(&r->auth_login, "none", 0);
    limit_default(&r->fail_ip, "20/15m", 0);
    limit_default(&r->fail_login, "50/15m", 0);
}

void cfg_free_abuse(struct config *c)
{
    free(c->ratelimit.backend);
    free(c->ratelimit.redis_host);
    cidr_list_free(&c->ratelimit.exempt);
    for (size_t i = 0; i < c->nratelimit_for; i++)
        free(c->ratelimit_for[i].key);
    free(c->ratelimit_for);
}
