/* check: submitcheck's run (check.h) — the DNS step, the TCP connect to
 * every address, greeting, EHLO, the AUTH-before-TLS probe, AUTH with
 * PLAIN / LOGIN / XOAUTH2 / OAUTHBEARER and the test message; the TLS
 * steps are in checktls.c. The pure target and port-list parsers live
 * here too. Connections go through smtp/client.h, names through the
 * relay's resolver (relay/dns.h). */
#include "check/check_int.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "check/advice.h"
#include "core/util.h"
#include "relay/dns.h"
#include "smtp/parse.h"
#include "tls/tlsclient.h"

#define CHECK_MAX_ADDRS 16
#define QUIT_WAIT_MS 2000

struct addr_list {
    struct sockaddr_storage a[CHECK_MAX_ADDRS];
    socklen_t len[CHECK_MAX_ADDRS];
    size_t n;
};

/* ---- pure parsers ---------------------------------------------------------- */

int check_split_target(const char *arg, char *host, size_t hostlen, int *port)
{
    const char *h = arg, *p = NULL;
    size_t hl;
    *port = 0;
    if (arg[0] == '[') {
        const char *close = strchr(arg, ']');
        if (!close)
            return -1;
        h = arg + 1;
        hl = (size_t)(close - h);
        if (close[1] == ':')
            p = close + 2;
        else if (close[1] != '\0')
            return -1;
    } else {
        const char *colon = strchr(arg, ':');
        if (colon && strchr(colon + 1, ':')) {
            hl = strlen(arg); /* a bare IPv6 literal */
        } else if (colon) {
            hl = (size_t)(colon - arg);
            p = colon + 1;
        } else {
            hl = strlen(arg);
        }
    }
    if (hl == 0 || hl >= hostlen)
        return -1;
    if (p) {
        long v = 0;
        if (!*p)
            return -1;
        for (const char *q = p; *q; q++) {
            if (*q < '0' || *q > '9' || q - p >= 5)
                return -1;
            v = v * 10 + (*q - '0');
        }
        if (v < 1 || v > 65535)
            return -1;
        *port = (int)v;
    }
    memcpy(host, h, hl);
    host[hl] = '\0';
    return 0;
}

int check_parse_ports(const char *s, int *ports, enum check_tls_mode *modes, size_t max)
{
    size_t n = 0;
    const char *p = s;
    if (!*p)
        return -1;
    for (;;) {
        long v = 0;
        const char *start = p;
        while (*p >= '0' && *p <= '9' && p - start < 6)
            v = v * 10 + (*p++ - '0');
        enum check_tls_mode m = CHECK_TLS_AUTO;
        if (strncmp(p, "/tls", 4) == 0 && (p[4] == ',' || !p[4])) {
            m = CHECK_TLS_IMPLICIT;
            p += 4;
        } else if (strncmp(p, "/starttls", 9) == 0 && (p[9] == ',' || !p[9])) {
            m = CHECK_TLS_STARTTLS;
            p += 9;
        }
        if (p == start || v < 1 || v > 65535 || (*p && *p != ','))
            return -1;
        for (size_t i = 0; i < n; i++)
            if (ports[i] == v)
                return -1;
        if (n >= max)
            return -1;
        modes[n] = m;
        ports[n++] = (int)v;
        if (!*p)
            return (int)n;
        p++;
    }
}

/* ---- shared helpers ------------------------------------------------------------ */

static void label_transcript(void *arg, int sent, const char *line, size_t len)
{
    struct check_label *l = arg;
    if (l->o->transcript)
        l->o->transcript(l->o->transcript_arg, l->text, sent, line, len);
}

void check_label_init(struct check_label *l, const struct check_opts *o, int port, const char *what)
{
    l->o = o;
    snprintf(l->text, sizeof(l->text), "%d%s%s", port, what ? " " : "", what ? what : "");
}

void check_attach_transcript(struct smtpc *c, struct check_label *l)
{
    if (l->o->transcript)
        smtpc_set_transcript(c, label_transcript, l);
}

void check_done(struct port_run *pr, struct step *s)
{
    const struct check_opts *o = pr->cx->o;
    if (o->on_step)
        o->on_step(o->on_step_arg, pr->cx->r, pr->p, s);
}

static void done_host(struct check_ctx *cx, struct step *s)
{
    if (cx->o->on_step)
        cx->o->on_step(cx->o->on_step_arg, cx->r, NULL, s);
}

void check_lost(struct port_run *pr, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pr->stop, sizeof(pr->stop), fmt, ap);
    va_end(ap);
    smtpc_close(pr->c);
    pr->c = NULL;
    pr->tls_ok = 0;
}

/* Marks s skipped when the main connection is gone; 1 if so. */
static int skip_if_lost(struct port_run *pr, struct step *s)
{
    if (pr->c)
        return 0;
    step_set(s, VERDICT_SKIP, "not run: %s", pr->stop);
    check_done(pr, s);
    return 1;
}

void check_quit(struct smtpc *c)
{
    if (!c)
        return;
    struct smtp_reply *r = xmalloc(sizeof(*r));
    if (c->timeout_ms > QUIT_WAIT_MS)
        c->timeout_ms = QUIT_WAIT_MS;
    if (smtpc_cmd(c, "QUIT") == 0)
        smtpc_read_reply(c, r);
    free(r);
    smtpc_close(c);
}

/* The first line of a reply's text. */
static void first_line(const struct smtp_reply *r, char *buf, size_t n)
{
    size_t l = strcspn(r->text, "\n");
    if (l >= n)
        l = n - 1;
    memcpy(buf, r->text, l);
    buf[l] = '\0';
}

static void summary(const struct smtp_reply *r, char *buf, size_t n)
{
    reply_summary(r, buf, n);
}

/* Our EHLO name: --ehlo, else our address as a literal ("[192.0.2.1]"). */
static void ehlo_name(const struct port_run *pr, struct smtpc *c, char *buf, size_t n)
{
    if (pr->cx->o->ehlo_name) {
        str_copy(buf, pr->cx->o->ehlo_name, n);
        return;
    }
    struct sockaddr_storage ss;
    socklen_t l = sizeof(ss);
    char ip[INET6_ADDRSTRLEN];
    if (getsockname(c->fd, (struct sockaddr *)&ss, &l) == 0 && ss.ss_family == AF_INET6 &&
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, ip, sizeof(ip)))
        snprintf(buf, n, "[IPv6:%s]", ip);
    else if (getsockname(c->fd, (struct sockaddr *)&ss, &l) == 0 && ss.ss_family == AF_INET &&
             inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, ip, sizeof(ip)))
        snprintf(buf, n, "[%s]", ip);
    else
        str_copy(buf, "submitcheck.invalid", n);
}

struct smtpc *check_open(struct port_run *pr, struct check_label *l, struct smtp_reply *ehlo, char *why, size_t n)
{
    enum smtpc_err e;
    struct smtpc *c = smtpc_connect((struct sockaddr *)&pr->addr, pr->addrlen, pr->cx->o->timeout_ms, &e, why, n);
    if (!c)
        return NULL;
    check_attach_transcript(c, l);
    if (pr->implicit)
        return c;
    struct smtp_reply *r = ehlo ? ehlo : xmalloc(sizeof(*r));
    char name[300];
    ehlo_name(pr, c, name, sizeof(name));
    int ok = smtpc_read_reply(c, r) == 0 && r->code == 220 && smtpc_exchange(c, r, "EHLO %s", name) == 0 &&
             r->code == 250;
    if (!ok) {
        if (c->err != SMTPC_OK)
            snprintf(why, n, "%s", c->errtext);
        else
            reply_summary(r, why, n);
        smtpc_close(c);
        c = NULL;
    }
    if (!ehlo)
        free(r);
    return c;
}

/* Each line after the first of an EHLO reply, in turn. */
static const char *ehlo_next(const struct smtp_reply *r, const char *prev, size_t *len)
{
    const char *end = r->text + r->textlen;
    const char *s;
    if (!prev) {
        const char *nl = memchr(r->text, '\n', r->textlen);
        s = nl ? nl + 1 : end;
    } else {
        const char *nl = memchr(prev, '\n', (size_t)(end - prev));
        s = nl ? nl + 1 : end;
    }
    if (s >= end)
        return NULL;
    const char *nl = memchr(s, '\n', (size_t)(end - s));
    *len = (size_t)((nl ? nl : end) - s);
    return s;
}

/* The next space-separated word of s[0..n) from *i: its length (0 at the
 * end) and *start; *i moves past it. */
static size_t next_word(const char *s, size_t n, size_t *i, size_t *start)
{
    while (*i < n && s[*i] == ' ')
        (*i)++;
    *start = *i;
    while (*i < n && s[*i] != ' ')
        (*i)++;
    return *i - *start;
}

/* Adds each word of params[0..plen) to the list fact key. */
static void words_fact(struct step *s, const char *key, const char *params, size_t plen)
{
    step_fact_list(s, key, NULL);
    size_t i = 0, st, wl;
    while ((wl = next_word(params, plen, &i, &st)) > 0) {
        char w[64];
        if (wl > sizeof(w) - 1)
            wl = sizeof(w) - 1;
        memcpy(w, params + st, wl);
        w[wl] = '\0';
        step_fact_list(s, key, w);
    }
}

/* 1 if the space-separated list params[0..plen) has word (case-insensitive). */
static int has_mech(const char *params, size_t plen, const char *word)
{
    size_t len = strlen(word), i = 0, st, wl;
    while ((wl = next_word(params, plen, &i, &st)) > 0)
        if (wl == len && strncasecmp(params + st, word, len) == 0)
            return 1;
    return 0;
}

/* Capability facts of an EHLO reply, and a one-line description in out. */
static void ehlo_facts(struct step *s, const struct smtp_reply *r, struct strbuf *out)
{
    step_fact_list(s, "capabilities", NULL);
    size_t len;
    for (const char *l = ehlo_next(r, NULL, &len); l; l = ehlo_next(r, l, &len)) {
        char line[256];
        size_t ll = len < sizeof(line) - 1 ? len : sizeof(line) - 1;
        memcpy(line, l, ll);
        line[ll] = '\0';
        step_fact_list(s, "capabilities", line);
        if (out) {
            if (out->len)
                sb_puts(out, ", ");
            sb_puts(out, line);
        }
    }
    const char *params;
    size_t plen;
    if (reply_ehlo_has(r, "SIZE", &params, &plen)) {
        long long v = 0;
        for (size_t i = 0; i < plen && params[i] >= '0' && params[i] <= '9' && v < 1000000000000LL; i++)
            v = v * 10 + (params[i] - '0');
        step_fact_int(s, "size", v);
    }
    step_fact_bool(s, "pipelining", reply_ehlo_has(r, "PIPELINING", NULL, NULL));
    step_fact_bool(s, "starttls", reply_ehlo_has(r, "STARTTLS", NULL, NULL));
    if (reply_ehlo_has(r, "AUTH", &params, &plen))
        words_fact(s, "auth_mechanisms", params, plen);
}

/* ---- DNS ---------------------------------------------------------------------- */

static int mx_cmp(const void *a, const void *b)
{
    const struct dns_mx *x = a, *y = b;
    if (x->pref != y->pref)
        return x->pref < y->pref ? -1 : 1;
    return strcmp(x->host, y->host);
}

static void add_literal(struct addr_list *al, const char *host, int family)
{
    struct sockaddr_in s4;
    struct sockaddr_in6 s6;
    memset(&s4, 0, sizeof(s4));
    memset(&s6, 0, sizeof(s6));
    if (inet_pton(AF_INET, host, &s4.sin_addr) == 1 && family != AF_INET6) {
        s4.sin_family = AF_INET;
        memcpy(&al->a[0], &s4, sizeof(s4));
        al->len[0] = sizeof(s4);
        al->n = 1;
    } else if (inet_pton(AF_INET6, host, &s6.sin6_addr) == 1 && family != AF_INET) {
        s6.sin6_family = AF_INET6;
        memcpy(&al->a[0], &s6, sizeof(s6));
        al->len[0] = sizeof(s6);
        al->n = 1;
    }
}

static void ip_text(const struct sockaddr *sa, char *buf, size_t n)
{
    const void *a = sa->sa_family == AF_INET6 ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
                                              : (const void *)&((const struct sockaddr_in *)sa)->sin_addr;
    if (!inet_ntop(sa->sa_family, a, buf, (socklen_t)n))
        str_copy(buf, "?", n);
}

static void dns_mx_part(struct check_ctx *cx, struct step *s, const struct dns_opts *d, struct strbuf *msg,
                        size_t *nmx_out)
{
    const char *host = cx->o->host;
    struct dns_mx *mx = NULL;
    size_t nmx = 0;
    char err[256];
    enum dns_status st = dns_mx(d, host, &mx, &nmx, err, sizeof(err));
    step_fact_str(s, "mx_status", dns_status_name(st));
    step_fact_list(s, "mx", NULL);
    *nmx_out = 0;
    if (st == DNS_OK) {
        qsort(mx, nmx, sizeof(*mx), mx_cmp);
        if (dns_mx_is_null(mx, nmx)) {
            step_fact_list(s, "mx", "0 .");
            sb_puts(msg, "; null MX (the domain receives no mail)");
        } else {
            sb_puts(msg, "; MX:");
            for (size_t i = 0; i < nmx; i++) {
                char one[300];
                snprintf(one, sizeof(one), "%u %s", mx[i].pref, mx[i].host);
                step_fact_list(s, "mx", one);
                if (i < 4)
                    sb_printf(msg, " %s", one);
            }
            if (nmx > 4)
                sb_printf(msg, " (+%zu)", nmx - 4);
            *nmx_out = nmx;
        }
    } else if (st == DNS_NODATA) {
        sb_puts(msg, "; no MX");
    } else if (st == DNS_TEMP) {
        sb_printf(msg, "; MX lookup failed (%s)", err);
        s->verdict = verdict_worst(s->verdict, VERDICT_WARN);
        step_cause(s, "the resolver did not answer the MX query: %s", err);
        step_fix(s, "check the resolver (/etc/resolv.conf) and the domain's name servers");
    }
    if (nmx > 0 && s->verdict == VERDICT_FAIL) {
        step_cause(s, "%s is a mail domain (its mail goes to %s) but has no address itself", host, mx[0].host);
        step_fix(s, "clients submit to a server name, often smtp.%s, mail.%s or the MX host: try submitcheck %s",
                 host, host, mx[0].host);
    }
    free(mx);
}

static void step_dns(struct check_ctx *cx, struct addr_list *al)
{
    const struct check_opts *o = cx->o;
    struct step *s = report_add_step(cx->r, NULL, "dns");
    uint64_t t0 = now_ms();
    memset(al, 0, sizeof(*al));
    unsigned char bin[sizeof(struct in6_addr)];
    int literal = inet_pton(AF_INET, o->host, bin) == 1 || inet_pton(AF_INET6, o->host, bin) == 1;
    step_fact_bool(s, "ip_literal", literal);
    step_fact_list(s, "addresses", NULL);
    if (literal) {
        add_literal(al, o->host, o->family);
        if (al->n == 0) {
            step_set(s, VERDICT_FAIL, "%s is an address of the family excluded by %s", o->host,
                     o->family == AF_INET ? "-4" : "-6");
            step_cause(s, "-4 / -6 contradicts the address given");
            step_fix(s, "drop -4 / -6");
        } else {
            step_fact_list(s, "addresses", o->host);
            step_set(s, VERDICT_OK, "%s is an IP address: no lookup", o->host);
        }
        s->ms = (long long)(now_ms() - t0);
        done_host(cx, s);
        return;
    }
    struct dns_opts d;
    memset(&d, 0, sizeof(d));
    d.timeout_ms = o->timeout_ms;
    if (o->resolver) {
        const char *why = "";
        if (dns_parse_server(o->resolver, d.server, sizeof(d.server), &why) != 0)
            d.server[0] = '\0'; /* the tool refuses a bad --resolver before getting here */
        step_fact_str(s, "resolver", o->resolver);
    }
    struct sockaddr_storage *v = NULL;
    size_t n = 0;
    char err[256] = "";
    enum dns_status st = dns_addrs(&d, o->host, 0, CHECK_MAX_ADDRS, &v, &n, err, sizeof(err));
    step_fact_str(s, "address_status", dns_status_name(st));
    struct strbuf msg;
    sb_init(&msg);
    size_t filtered = 0;
    for (size_t i = 0; i < n; i++) {
        int fam = v[i].ss_family;
        if (o->family != AF_UNSPEC && fam != o->family) {
            filtered++;
            continue;
        }
        if (al->n >= CHECK_MAX_ADDRS)
            continue;
        socklen_t len = fam == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
        memcpy(&al->a[al->n], &v[i], len);
        al->len[al->n] = len;
        char t[INET6_ADDRSTRLEN];
        ip_text((struct sockaddr *)&v[i], t, sizeof(t));
        step_fact_list(s, "addresses", t);
        sb_printf(&msg, "%s%s", al->n ? ", " : "", t);
        al->n++;
    }
    free(v);
    step_fact_int(s, "filtered_addresses", (long long)filtered);
    if (al->n > 0) {
        step_set(s, VERDICT_OK, "%s: %s", o->host, msg.s);
    } else if (filtered > 0) {
        step_set(s, VERDICT_FAIL, "%s has no %s address (only %zu of the other family)", o->host,
                 o->family == AF_INET ? "IPv4 (A)" : "IPv6 (AAAA)", filtered);
        step_cause(s, "%s excludes every address %s has", o->family == AF_INET ? "-4" : "-6", o->host);
        step_fix(s, "drop %s, or publish the missing record", o->family == AF_INET ? "-4" : "-6");
    } else if (st == DNS_NXDOMAIN) {
        step_set(s, VERDICT_FAIL, "%s does not exist in DNS (NXDOMAIN)", o->host);
        step_cause(s, "a typing error in the name, or the record was never published");
        step_fix(s, "check the name; look it up with: dig +short %s A %s AAAA", o->host, o->host);
    } else if (st == DNS_NODATA) {
        step_set(s, VERDICT_FAIL, "%s has no address record (A or AAAA)", o->host);
        step_cause(s, "the name exists but has no A/AAAA record");
        step_fix(s, "publish an A (and AAAA) record for the server, or use the server's own name");
    } else {
        step_set(s, VERDICT_FAIL, "address lookup failed: %s", err);
        step_cause(s, "the resolver did not answer (timeout, SERVFAIL or refused)");
        step_fix(s, "check /etc/resolv.conf and network access to the resolver; try again");
    }
    struct strbuf mxmsg;
    sb_init(&mxmsg);
    size_t nmx = 0;
    dns_mx_part(cx, s, &d, &mxmsg, &nmx);
    if (mxmsg.len)
        step_worsen(s, s->verdict, "%s", mxmsg.s + 2); /* without the leading "; " */
    sb_free(&mxmsg);
    sb_free(&msg);
    s->ms = (long long)(now_ms() - t0);
    done_host(cx, s);
}

/* ---- connect, greeting, EHLO ------------------------------------------------ */

static void step_connect(struct port_run *pr, const struct addr_list *al)
{
    const struct check_opts *o = pr->cx->o;
    struct step *s = report_add_step(pr->cx->r, pr->p, "connect");
    if (al->n == 0) {
        step_set(s, VERDICT_SKIP, "not run: no address to connect to");
        check_lost(pr, "no address to connect to");
        check_done(pr, s);
        return;
    }
    size_t failed = 0;
    enum smtpc_err first_err = SMTPC_OK;
    char first_fail[320] = "";
    long long ms = 0;
    step_fact_list(s, "tried", NULL);
    for (size_t i = 0; i < al->n; i++) {
        struct sockaddr_storage sa = al->a[i];
        if (sa.ss_family == AF_INET)
            ((struct sockaddr_in *)&sa)->sin_port = htons((uint16_t)pr->port);
        else
            ((struct sockaddr_in6 *)&sa)->sin6_port = htons((uint16_t)pr->port);
        char ip[INET6_ADDRSTRLEN], line[400], why[256] = "";
        ip_text((struct sockaddr *)&sa, ip, sizeof(ip));
        uint64_t t0 = now_ms();
        enum smtpc_err e = SMTPC_OK;
        struct smtpc *c = smtpc_connect((struct sockaddr *)&sa, al->len[i], o->timeout_ms, &e, why, sizeof(why));
        long long took = (long long)(now_ms() - t0);
        if (c) {
            snprintf(line, sizeof(line), "%s: connected in %lld ms", c->peer_text, took);
            if (!pr->c) {
                pr->c = c;
                pr->addr = sa;
                pr->addrlen = al->len[i];
                str_copy(pr->addr_text, c->peer_text, sizeof(pr->addr_text));
                free(pr->p->address);
                pr->p->address = xstrdup(ip);
                check_attach_transcript(c, &pr->label);
                ms = took;
            } else {
                smtpc_close(c);
            }
        } else {
            snprintf(line, sizeof(line), "%s port %d: %s (%s)", ip, pr->port, smtpc_err_name(e), why);
            if (!failed) {
                first_err = e;
                snprintf(first_fail, sizeof(first_fail), "%s port %d %s", ip, pr->port, smtpc_err_name(e));
                if (!pr->addrlen) { /* the probes need an address even when nothing answered */
                    pr->addr = sa;
                    pr->addrlen = al->len[i];
                }
            }
            failed++;
        }
        step_fact_list(s, "tried", line);
    }
    step_fact_int(s, "reachable", (long long)(al->n - failed));
    step_fact_int(s, "unreachable", (long long)failed);
    if (!pr->c) {
        step_fact_str(s, "error", smtpc_err_name(first_err));
        advise_connect(s, first_err, pr->port, o->timeout_ms);
        if (al->n > 1)
            step_set(s, VERDICT_FAIL, "cannot connect to any of %zu addresses (first: %s)", al->n, first_fail);
        else
            step_set(s, VERDICT_FAIL, "cannot connect: %s", first_fail);
        check_lost(pr, "no connection");
        pr->addrlen = 0; /* nothing to probe either */
    } else {
        s->ms = ms;
        step_fact_str(s, "address", pr->addr_text);
        if (failed) {
            advise_connect(s, first_err, pr->port, o->timeout_ms);
            step_set(s, VERDICT_WARN, "connected to %s in %lld ms, but %zu of %zu addresses failed (%s)",
                     pr->addr_text, ms, failed, al->n, first_fail);
            char cause[REPORT_TEXT_MAX];
            snprintf(cause, sizeof(cause), "clients that try a failing address first (often IPv6) fail or wait: %s",
                     s->cause ? s->cause : "");
            step_cause(s, "%s", cause);
        } else if (al->n > 1) {
            step_set(s, VERDICT_OK, "connected to %s in %lld ms (all %zu addresses reachable)", pr->addr_text, ms,
                     al->n);
        } else {
            step_set(s, VERDICT_OK, "connected to %s in %lld ms", pr->addr_text, ms);
        }
    }
    check_done(pr, s);
}

static void step_greeting(struct port_run *pr)
{
    const struct check_opts *o = pr->cx->o;
    struct step *s = report_add_step(pr->cx->r, pr->p, "greeting");
    if (skip_if_lost(pr, s))
        return;
    struct smtp_reply *r = xmalloc(sizeof(*r));
    uint64_t t0 = now_ms();
    int rc = smtpc_read_reply(pr->c, r);
    s->ms = (long long)(now_ms() - t0);
    if (rc != 0) {
        step_fact_str(s, "error", smtpc_err_name(pr->c->err));
        advise_no_greeting(s, pr->c->err, pr->port, pr->implicit, o->timeout_ms);
        step_set(s, VERDICT_FAIL, "no greeting: %s", pr->c->errtext);
        check_lost(pr, "no greeting");
    } else {
        char line[REPLY_LINE_MAX], sum[512];
        first_line(r, line, sizeof(line));
        summary(r, sum, sizeof(sum));
        step_fact_int(s, "code", r->code);
        step_fact_str(s, "banner", line);
        if (r->code == 220) {
            step_set(s, VERDICT_OK, "%s", sum);
        } else {
            step_set(s, VERDICT_FAIL, "refused at greeting: %s", sum);
            if (r->code == 554) {
                step_cause(s, "the server refuses this client: its access rules or a blocklist name this address");
                step_fix(s, "look at the server's log; check this client's public address against blocklists");
            } else if (r->code == 421) {
                step_cause(s, "the server is temporarily unavailable (too many connections, or shutting down)");
                step_fix(s, "try again later; check the server's connection limits");
            } else {
                step_cause(s, "the greeting is not 220: this client may not use the service");
            }
            check_lost(pr, "refused at greeting");
        }
    }
    free(r);
    check_done(pr, s);
}

static void step_ehlo(struct port_run *pr)
{
    struct step *s = report_add_step(pr->cx->r, pr->p, "ehlo");
    if (skip_if_lost(pr, s))
        return;
    char name[300];
    ehlo_name(pr, pr->c, name, sizeof(name));
    step_fact_str(s, "ehlo_name", name);
    uint64_t t0 = now_ms();
    int rc = smtpc_exchange(pr->c, pr->ehlo, "EHLO %s", name);
    s->ms = (long long)(now_ms() - t0);
    if (rc != 0) {
        step_set(s, VERDICT_FAIL, "no answer to EHLO: %s", pr->c->errtext);
        step_cause(s, "the server dropped or ignored the EHLO command");
        step_fix(s, "run with --verbose to see the dialogue; look at the server's log");
        check_lost(pr, "no answer to EHLO");
        check_done(pr, s);
        return;
    }
    step_fact_int(s, "code", pr->ehlo->code);
    if (pr->ehlo->code != 250) {
        char sum[512];
        summary(pr->ehlo, sum, sizeof(sum));
        step_set(s, VERDICT_FAIL, "EHLO refused: %s", sum);
        step_cause(s, "the server does not speak ESMTP here, or refuses the EHLO name %s", name);
        step_fix(s, "give this machine's host name with --ehlo NAME");
        check_lost(pr, "EHLO refused");
        check_done(pr, s);
        return;
    }
    pr->have_ehlo = 1;
    struct strbuf caps;
    sb_init(&caps);
    ehlo_facts(s, pr->ehlo, &caps);
    char line[300];
    first_line(pr->ehlo, line, sizeof(line));
    step_set(s, VERDICT_OK, "%s; %s", line, caps.len ? caps.s : "no extensions");
    sb_free(&caps);
    check_done(pr, s);
}

/* ---- AUTH before TLS ------------------------------------------------------------- */

/* Reconnects the main connection after a probe broke it (greeting + EHLO). */
static void reopen(struct port_run *pr)
{
    char why[256];
    smtpc_close(pr->c);
    pr->c = check_open(pr, &pr->label, pr->ehlo, why, sizeof(why));
    if (!pr->c)
        check_lost(pr, "reconnecting failed: %s", why);
}

static void step_auth_before_tls(struct port_run *pr)
{
    struct step *s = report_add_step(pr->cx->r, pr->p, "auth-before-tls");
    if (skip_if_lost(pr, s))
        return;
    const char *params = "";
    size_t plen = 0;
    int offered = reply_ehlo_has(pr->ehlo, "AUTH", &params, &plen);
    step_fact_bool(s, "offered", offered);
    char mechs[256] = "";
    if (offered) {
        words_fact(s, "auth_mechanisms", params, plen);
        snprintf(mechs, sizeof(mechs), "%.*s", (int)(plen < 200 ? plen : 200), params);
    }
    /* Probe with a mechanism that starts with a 334 and no secret. */
    const char *mech = "PLAIN";
    if (offered && !has_mech(params, plen, "PLAIN") && has_mech(params, plen, "LOGIN"))
        mech = "LOGIN";
    step_fact_str(s, "probe_mechanism", mech);
    struct smtp_reply *r = xmalloc(sizeof(*r));
    uint64_t t0 = now_ms();
    int rc = smtpc_exchange(pr->c, r, "AUTH %s", mech);
    s->ms = (long long)(now_ms() - t0);
    if (rc != 0) {
        step_set(s, VERDICT_WARN, "no answer to AUTH before TLS: %s", pr->c->errtext);
        step_cause(s, "the server dropped the connection on AUTH before TLS (harsh, but safe)");
        reopen(pr);
        free(r);
        check_done(pr, s);
        return;
    }
    char sum[512];
    summary(r, sum, sizeof(sum));
    step_fact_str(s, "probe_reply", sum);
    int accepted = r->code == 334 || (r->code >= 200 && r->code < 300);
    step_fact_bool(s, "accepted", accepted);
    if (r->code == 334) {
        /* cancel the exchange (RFC 4954: "*"), nothing secret was sent */
        if (smtpc_exchange(pr->c, r, "*") != 0)
            reopen(pr);
    }
    if (accepted) {
        step_set(s, VERDICT_FAIL, "the server accepts AUTH %s before TLS (%s): passwords can cross the network in "
                                  "plaintext", mech, sum);
        step_cause(s, "authentication is allowed on the unencrypted connection: a client, or an attacker who strips "
                      "STARTTLS, sends the password in the clear");
        step_fix(s, "Postfix: smtpd_tls_auth_only = yes (or -o smtpd_tls_security_level=encrypt on the submission "
                    "service)");
        step_fix(s, "Exim: auth_advertise_hosts = ${if eq{$tls_in_cipher}{}{}{*}}; Dovecot: "
                    "disable_plaintext_auth = yes");
        step_fix(s, "in general: offer and accept AUTH only after STARTTLS, or use implicit TLS (port 465)");
    } else if (offered) {
        step_set(s, VERDICT_WARN, "AUTH offered before TLS (%s) but refused when tried (%s)", mechs, sum);
        step_cause(s, "the server announces AUTH on the plaintext connection: clients that believe it may send the "
                      "password before STARTTLS");
        step_fix(s, "announce AUTH only after STARTTLS (Postfix: smtpd_tls_auth_only = yes)");
    } else {
        step_set(s, VERDICT_OK, "AUTH neither offered nor accepted before TLS (%s)", sum);
    }
    free(r);
    check_done(pr, s);
}

/* ---- AUTH ----------------------------------------------------------------------------- */

static char *b64_of(const char *data, size_t n)
{
    size_t cap = 4 * ((n + 2) / 3) + 1;
    char *out = xmalloc(cap);
    b64_encode((const unsigned char *)data, n, out, cap);
    return out;
}

/* Sends "prefix payload\r\n" with the transcript showing `shown` (lines
 * longer than the client's command limit, e.g. OAuth tokens). */
static int send_secret_line(struct smtpc *c, const char *shown, const char *prefix, const char *payload)
{
    struct strbuf b;
    sb_init(&b);
    sb_puts(&b, prefix);
    sb_puts(&b, payload);
    sb_puts(&b, "\r\n");
    if (c->transcript)
        c->transcript(c->transcript_arg, 1, shown, strlen(shown));
    int rc = smtpc_write(c, b.s, b.len);
    mem_wipe(b.s, b.len);
    sb_free(&b);
    return rc;
}

static void wipe_free(char *p)
{
    if (p) {
        mem_wipe(p, strlen(p));
        free(p);
    }
}

/* Runs one AUTH exchange; the final reply in r. 0, or -1 on a connection error. */
static int do_auth(struct port_run *pr, const char *mech, struct smtp_reply *r, struct step *s)
{
    const struct check_opts *o = pr->cx->o;
    struct smtpc *c = pr->c;
    const char *user = o->user ? o->user : "";
    int rc = -1;
    struct strbuf raw;
    sb_init(&raw);
    char *b64 = NULL;
    if (strcmp(mech, "PLAIN") == 0) {
        sb_append(&raw, "", 1);
        sb_puts(&raw, user);
        sb_append(&raw, "", 1);
        sb_puts(&raw, o->password);
        b64 = b64_of(raw.s, raw.len);
        rc = send_secret_line(c, "AUTH PLAIN ****", "AUTH PLAIN ", b64);
        if (rc == 0)
            rc = smtpc_read_reply(c, r);
        if (rc == 0 && r->code == 334) { /* a server that wants the response on its own line */
            rc = send_secret_line(c, "****", "", b64);
            if (rc == 0)
                rc = smtpc_read_reply(c, r);
        }
    } else if (strcmp(mech, "LOGIN") == 0) {
        rc = smtpc_exchange(c, r, "AUTH LOGIN");
        if (rc == 0 && r->code == 334) {
            b64 = b64_of(user, strlen(user));
            rc = send_secret_line(c, "**** (user name)", "", b64);
            if (rc == 0)
                rc = smtpc_read_reply(c, r);
        }
        if (rc == 0 && r->code == 334) {
            wipe_free(b64);
            b64 = b64_of(o->password, strlen(o->password));
            rc = send_secret_line(c, "**** (password)", "", b64);
            if (rc == 0)
                rc = smtpc_read_reply(c, r);
        }
    } else { /* XOAUTH2, OAUTHBEARER */
        int xo = strcmp(mech, "XOAUTH2") == 0;
        if (xo)
            sb_printf(&raw, "user=%s\001auth=Bearer %s\001\001", user, o->oauth_token);
        else if (*user)
            sb_printf(&raw, "n,a=%s,\001host=%s\001port=%d\001auth=Bearer %s\001\001", user, pr->cx->name, pr->port,
                      o->oauth_token);
        else
            sb_printf(&raw, "n,,\001host=%s\001port=%d\001auth=Bearer %s\001\001", pr->cx->name, pr->port,
                      o->oauth_token);
        b64 = b64_of(raw.s, raw.len);
        char prefix[32];
        snprintf(prefix, sizeof(prefix), "AUTH %s ", mech);
        char shown[48];
        snprintf(shown, sizeof(shown), "AUTH %s ****", mech);
        rc = send_secret_line(c, shown, prefix, b64);
        if (rc == 0)
            rc = smtpc_read_reply(c, r);
        if (rc == 0 && r->code == 334) {
            /* an error report (JSON in base64); acknowledge it to get the final reply */
            unsigned char dec[1024];
            long dl = b64_decode(r->text, strcspn(r->text, "\n"), dec, sizeof(dec) - 1);
            if (dl > 0) {
                for (long i = 0; i < dl; i++)
                    if (dec[i] < 0x20 || dec[i] > 0x7e)
                        dec[i] = '?';
                dec[dl] = '\0';
                step_fact_str(s, "oauth_error", (const char *)dec);
            }
            rc = xo ? smtpc_cmd(c, "%s", "") : smtpc_cmd(c, "AQ==");
            if (rc == 0)
                rc = smtpc_read_reply(c, r);
        }
    }
    wipe_free(b64);
    if (raw.s)
        mem_wipe(raw.s, raw.len);
    sb_free(&raw);
    return rc;
}

/* Picks the mechanism to log in with, or NULL with the step failed. */
static const char *pick_mech(struct port_run *pr, struct step *s, const char *params, size_t plen)
{
    const struct check_opts *o = pr->cx->o;
    static const char *const oauth[] = {"XOAUTH2", "OAUTHBEARER"};
    static const char *const pw[] = {"PLAIN", "LOGIN"};
    static const char *const all[] = {"PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"};
    if (o->mech) {
        for (size_t i = 0; i < ARRAY_LEN(all); i++)
            if (strcasecmp(o->mech, all[i]) == 0 && has_mech(params, plen, all[i]))
                return all[i];
        step_set(s, VERDICT_FAIL, "the server does not offer %s (it offers %.*s)", o->mech, (int)plen, params);
        step_cause(s, "--mech names a mechanism this server does not announce after TLS");
        step_fix(s, "drop --mech to let submitcheck pick one");
        return NULL;
    }
    const char *const *want = o->oauth_token ? oauth : pw;
    for (size_t i = 0; i < 2; i++)
        if (has_mech(params, plen, want[i]))
            return want[i];
    if (o->oauth_token) {
        step_set(s, VERDICT_FAIL, "the server offers no OAuth2 mechanism (it offers %.*s)", (int)plen, params);
        step_cause(s, "this server does not take OAuth2 access tokens");
        step_fix(s, "log in with a password or app password: --password-file FILE");
    } else {
        step_set(s, VERDICT_FAIL, "the server offers only %.*s: submitcheck logs in with PLAIN, LOGIN, XOAUTH2 or "
                                  "OAUTHBEARER", (int)plen, params);
        step_cause(s, "no password mechanism submitcheck knows is offered after TLS");
        step_fix(s, "enable PLAIN and LOGIN after TLS on the server (they are safe inside TLS)");
    }
    return NULL;
}

static void step_auth(struct port_run *pr)
{
    const struct check_opts *o = pr->cx->o;
    struct step *s = report_add_step(pr->cx->r, pr->p, "auth");
    int creds = o->user && (o->password || o->oauth_token);
    if (!creds && o->oauth_token)
        creds = 1; /* OAUTHBEARER works without a user name */
    if (skip_if_lost(pr, s))
        return;
    if (!pr->tls_ok) {
        step_set(s, VERDICT_SKIP, "not tried without TLS%s", creds ? ": the credentials would cross in plaintext" : "");
        check_done(pr, s);
        return;
    }
    uint64_t t0 = now_ms();
    if (!pr->implicit) {
        char name[300];
        ehlo_name(pr, pr->c, name, sizeof(name));
        if (smtpc_exchange(pr->c, pr->ehlo, "EHLO %s", name) != 0 || pr->ehlo->code != 250) {
            char sum[512];
            if (pr->c->err != SMTPC_OK)
                str_copy(sum, pr->c->errtext, sizeof(sum));
            else
                summary(pr->ehlo, sum, sizeof(sum));
            step_set(s, VERDICT_FAIL, "EHLO after STARTTLS failed: %s", sum);
            step_cause(s, "the server does not answer EHLO inside TLS");
            check_lost(pr, "EHLO after STARTTLS failed");
            check_done(pr, s);
            return;
        }
    }
    ehlo_facts(s, pr->ehlo, NULL);
    const char *params = "";
    size_t plen = 0;
    int offered = reply_ehlo_has(pr->ehlo, "AUTH", &params, &plen);
    if (!offered) {
        if (pr->port == 25 && !creds) {
            step_set(s, VERDICT_OK, "AUTH not offered after TLS (normal for a server receiving mail on port 25)");
        } else {
            step_set(s, creds ? VERDICT_FAIL : VERDICT_WARN, "AUTH not offered after TLS: clients cannot log in on "
                                                             "this port");
            step_cause(s, "authentication (SASL) is not enabled for this service");
            step_fix(s, "Postfix: add -o smtpd_sasl_auth_enable=yes (with smtpd_sasl_type dovecot and "
                        "smtpd_sasl_path private/auth) to the submission service in master.cf");
            step_fix(s, "port 25 is for server-to-server mail: clients submit on 587 or 465");
        }
        check_done(pr, s);
        return;
    }
    if (!creds) {
        step_set(s, VERDICT_OK, "offers %.*s; no credentials given, login not tried (--user and --password-file to "
                                "test it)", (int)(plen < 200 ? plen : 200), params);
        check_done(pr, s);
        return;
    }
    const char *mech = pick_mech(pr, s, params, plen);
    if (!mech) {
        check_done(pr, s);
        return;
    }
    step_fact_str(s, "mechanism", mech);
    step_fact_str(s, "user", o->user);
    struct smtp_reply *r = xmalloc(sizeof(*r));
    int rc = do_auth(pr, mech, r, s);
    s->ms = (long long)(now_ms() - t0);
    pr->auth_tried = 1;
    if (rc != 0) {
        step_set(s, VERDICT_FAIL, "connection lost during AUTH %s: %s", mech, pr->c->errtext);
        step_cause(s, "the server dropped the connection while checking the login");
        step_fix(s, "look at the server's log; run with --verbose to see the dialogue");
        check_lost(pr, "connection lost during AUTH");
    } else {
        char sum[512];
        summary(r, sum, sizeof(sum));
        step_fact_str(s, "reply", sum);
        step_fact_str(s, "result", auth_result_name(auth_classify(r->code, r->enh, r->text)));
        advise_auth(s, r->code, r->enh, r->text, mech, o->oauth_token != NULL);
        if (s->verdict == VERDICT_OK)
            step_set(s, VERDICT_OK, "logged in as %s with %s (%s)", o->user ? o->user : "(token)", mech, sum);
        pr->auth_ok = r->code == 235;
    }
    free(r);
    check_done(pr, s);
}

/* ---- test message ------------------------------------------------------------------ */

static void build_message(struct port_run *pr, const char *from, const char *to, const char *msgid, struct strbuf *m)
{
    const struct check_opts *o = pr->cx->o;
    char date[64];
    rfc5322_date(time(NULL), date, sizeof(date));
    sb_printf(m, "Date: %s\r\n", date);
    sb_printf(m, "From: <%s>\r\n", from);
    sb_printf(m, "To: <%s>\r\n", to);
    sb_printf(m, "Subject: submitcheck test message via %s port %d\r\n", o->host, pr->port);
    sb_printf(m, "Message-ID: %s\r\n", msgid);
    sb_puts(m, "MIME-Version: 1.0\r\n");
    sb_puts(m, "Content-Type: text/plain; charset=us-ascii\r\n");
    sb_puts(m, "Auto-Submitted: auto-generated\r\n");
    sb_puts(m, "X-Mailer: submitcheck\r\n");
    sb_puts(m, "\r\n");
    sb_printf(m, "This is a test message sent by submitcheck to check the mail submission\r\n"
                 "service %s port %d (%s, %s).\r\n",
              o->host, pr->port, pr->addr_text, pr->implicit ? "implicit TLS" : "STARTTLS");
    sb_printf(m, "Sent: %s\r\n", date);
    sb_puts(m, "No reply is needed.\r\n");
}

/* One command line of the transaction; returns the reply code, or -1 (lost). */
static int txn_cmd(struct port_run *pr, struct smtp_reply *r, long long *ms, const char *line)
{
    uint64_t t0 = now_ms();
    int rc = smtpc_exchange(pr->c, r, "%s", line);
    *ms = (long long)(now_ms() - t0);
    return rc == 0 ? r->code : -1;
}

static void txn_refused(struct port_run *pr, struct step *s, const char *what, const struct smtp_reply *r)
{
    char sum[512];
    summary(r, sum, sizeof(sum));
    step_fact_str(s, "reply", sum);
    advise_transaction(s, what, r->code, r->enh, r->text);
    step_set(s, VERDICT_FAIL, "%s refused: %s", what, sum);
    struct smtp_reply *tmp = xmalloc(sizeof(*tmp));
    if (smtpc_exchange(pr->c, tmp, "RSET") != 0)
        check_lost(pr, "connection lost after RSET");
    free(tmp);
}

static void step_send(struct port_run *pr)
{
    const struct check_opts *o = pr->cx->o;
    struct step *s = report_add_step(pr->cx->r, pr->p, "send");
    if (!o->send_to) {
        step_set(s, VERDICT_SKIP, "no test message (--send-to ADDR sends one)");
        check_done(pr, s);
        return;
    }
    if (skip_if_lost(pr, s))
        return;
    int creds = (o->user && o->password) || o->oauth_token;
    if (!pr->tls_ok) {
        step_set(s, VERDICT_SKIP, "not tried without TLS");
        check_done(pr, s);
        return;
    }
    if (creds && !pr->auth_ok) {
        step_set(s, VERDICT_SKIP, "not tried: the login failed");
        check_done(pr, s);
        return;
    }
    const char *from = o->mail_from ? o->mail_from : o->user;
    const char *dom = smtp_address_domain(from);
    char qid[QID_LEN + 1], msgid[400];
    qid_new(qid);
    snprintf(msgid, sizeof(msgid), "<submitcheck.%s@%s>", qid, dom && *dom ? dom : "submitcheck.invalid");
    struct strbuf m;
    sb_init(&m);
    build_message(pr, from, o->send_to, msgid, &m);
    step_fact_str(s, "from", from);
    step_fact_str(s, "to", o->send_to);
    step_fact_str(s, "message_id", msgid);
    char size[40] = "";
    if (reply_ehlo_has(pr->ehlo, "SIZE", NULL, NULL))
        snprintf(size, sizeof(size), " SIZE=%zu", m.len);
    struct smtp_reply *r = xmalloc(sizeof(*r));
    long long mail_ms = 0, rcpt_ms = 0, data_ms = 0, end_ms = 0;
    char line[SMTP_PATH_MAX + 64];
    snprintf(line, sizeof(line), "MAIL FROM:<%s>%s", from, size);
    int code = txn_cmd(pr, r, &mail_ms, line);
    step_fact_int(s, "mail_ms", mail_ms);
    if (code == 250) {
        snprintf(line, sizeof(line), "RCPT TO:<%s>", o->send_to);
        code = txn_cmd(pr, r, &rcpt_ms, line);
        step_fact_int(s, "rcpt_ms", rcpt_ms);
        if (code == 250 || code == 251) {
            code = txn_cmd(pr, r, &data_ms, "DATA");
            step_fact_int(s, "data_ms", data_ms);
            if (code == 354) {
                uint64_t t0 = now_ms();
                sb_puts(&m, ".\r\n"); /* no line of the message starts with a dot */
                code = smtpc_write(pr->c, m.s, m.len) == 0 && smtpc_read_reply(pr->c, r) == 0 ? r->code : -1;
                end_ms = (long long)(now_ms() - t0);
                step_fact_int(s, "end_ms", end_ms);
                if (code == 250) {
                    char sum[512], id[128];
                    summary(r, sum, sizeof(sum));
                    step_fact_str(s, "reply", sum);
                    int has_id = queue_id_from_reply(r->text, id, sizeof(id)) == 0;
                    if (has_id)
                        step_fact_str(s, "queue_id", id);
                    s->ms = mail_ms + rcpt_ms + data_ms + end_ms;
                    step_set(s, VERDICT_OK, "accepted for %s%s%s (MAIL %lld ms, RCPT %lld ms, DATA %lld ms, end of "
                                            "data %lld ms)", o->send_to, has_id ? ": queued as " : "",
                             has_id ? id : "", mail_ms, rcpt_ms, data_ms, end_ms);
                } else if (code > 0) {
                    txn_refused(pr, s, "end of data", r);
                }
            } else if (code > 0) {
                txn_refused(pr, s, "DATA", r);
            }
        } else if (code > 0) {
            txn_refused(pr, s, "RCPT", r);
        }
    } else if (code > 0) {
        txn_refused(pr, s, "MAIL", r);
    }
    if (code < 0 && pr->c) {
        step_set(s, VERDICT_FAIL, "connection lost during the transaction: %s", pr->c->errtext);
        step_cause(s, "the server dropped the connection or did not answer in time");
        step_fix(s, "look at the server's log; raise --timeout if the server is slow at the end of data");
        check_lost(pr, "connection lost during the transaction");
    }
    free(r);
    sb_free(&m);
    check_done(pr, s);
}

/* ---- the run ------------------------------------------------------------------------ */

static void run_port(struct check_ctx *cx, const struct addr_list *al, int port, enum check_tls_mode mode)
{
    const struct check_opts *o = cx->o;
    struct port_run pr;
    memset(&pr, 0, sizeof(pr));
    pr.cx = cx;
    pr.port = port;
    if (mode == CHECK_TLS_AUTO)
        mode = o->tls_mode;
    pr.implicit = mode == CHECK_TLS_IMPLICIT || (mode == CHECK_TLS_AUTO && port == 465);
    pr.p = report_add_port(cx->r, port, pr.implicit ? "implicit" : "starttls");
    if (!pr.p)
        return;
    pr.ehlo = xcalloc(1, sizeof(*pr.ehlo));
    check_label_init(&pr.label, o, port, NULL);
    str_copy(pr.stop, "no connection", sizeof(pr.stop));
    step_connect(&pr, al);
    if (pr.implicit)
        step_tls(&pr);
    step_greeting(&pr);
    step_ehlo(&pr);
    if (!pr.implicit) {
        step_auth_before_tls(&pr);
        step_tls(&pr);
    }
    step_certificate(&pr);
    step_tls_versions(&pr);
    step_tls_ciphers(&pr);
    step_starttls_injection(&pr);
    step_auth(&pr);
    step_send(&pr);
    check_quit(pr.c);
    pr.c = NULL;
    checktls_port_done(&pr);
    free(pr.ehlo);
}

void check_run(const struct check_opts *o, struct report *r)
{
    uint64_t t0 = now_ms();
    report_init(r, o->host, (long long)time(NULL));
    struct check_ctx cx;
    memset(&cx, 0, sizeof(cx));
    cx.o = o;
    cx.r = r;
    cx.name = o->servername ? o->servername : o->host;
    struct tls_client_opts to = {.ca_file = o->ca_file, .verify = 0};
    cx.tls = tls_client_ctx_new(&to, cx.tls_err, sizeof(cx.tls_err));
    struct addr_list *al = xmalloc(sizeof(*al));
    step_dns(&cx, al);
    for (size_t i = 0; i < o->nports; i++)
        run_port(&cx, al, o->ports[i], o->port_modes[i]);
    free(al);
    SSL_CTX_free(cx.tls);
    r->duration_ms = (long long)(now_ms() - t0);
}
