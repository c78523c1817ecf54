/* mx: the transport that delivers straight to each recipient domain's MX
 * hosts (port 25 by default). Groups a job's recipients by domain; per
 * domain: MX lookup (preference order, equal preferences shuffled), the
 * domain's own A/AAAA when it has no MX (implicit MX), null MX (RFC 7505)
 * and a non-existent domain fail permanently at once, other DNS failures
 * are temporary; then the MX hosts in order, each host's addresses in
 * turn, moving on after a connection-level failure (refused, timeout, 4xx
 * greeting, TLS) but not after a reply inside a transaction (a 5xx to RCPT
 * is final for that recipient). At most max-addresses addresses per
 * domain and attempt. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "relay/relay.h"

static int mx_check(const struct transport_cfg *cfg, const char *file, struct errlist *errs)
{
    return relay_inst_check(cfg, RELAY_MX, file, errs);
}

static void *mx_open(const struct transport_cfg *cfg, struct errlist *errs)
{
    return relay_inst_open(cfg, RELAY_MX, errs);
}

static void mx_close(void *inst)
{
    relay_inst_close(inst);
}

/* One recipient of the job with its domain, for grouping. */
struct rdom {
    const char *dom;
    size_t pos; /* index into job->rcpts / job->results */
};

static int rdom_cmp(const void *a, const void *b)
{
    const struct rdom *x = a, *y = b;
    int c = strcasecmp(x->dom, y->dom);
    return c ? c : (x->pos < y->pos ? -1 : x->pos > y->pos);
}

/* A destination host of a domain and its addresses (resolved on first use). */
struct dhost {
    const char *name;
    int resolved;
    enum dns_status st;
    char err[300];
    struct sockaddr_storage *addrs;
    size_t naddrs;
};

struct domain_run {
    struct relay_inst *ri;
    struct spool_msg *m;
    const char *dom;
    int implicit; /* no MX: the domain itself */
    char litname[64]; /* an address literal's IP: the TLS and log name */
    struct dhost *hosts;
    size_t nhosts;
    const struct log_ctx *lc;
};

static void set_all(struct delivery_result *res, size_t n, const struct delivery_result *r)
{
    for (size_t i = 0; i < n; i++)
        res[i] = *r;
}

/* Delivers one batch (rcpts -> res) of a domain over its hosts. */
static void deliver_batch(struct domain_run *d, const size_t *rcpts, size_t n, struct delivery_result *res)
{
    const struct relay_opts *o = &d->ri->o;
    size_t *open = xcalloc(n, sizeof(*open));
    size_t *sub = xcalloc(n, sizeof(*sub));
    struct delivery_result *sres = xcalloc(n, sizeof(*sres));
    size_t nopen = n, used = 0;
    for (size_t i = 0; i < n; i++)
        open[i] = i;
    char qd[LOGQ_MAX], qh[LOGQ_MAX], qe[LOGQ_MAX];
    for (size_t h = 0; h < d->nhosts && nopen > 0 && used < o->max_addrs; h++) {
        struct dhost *hp = &d->hosts[h];
        if (!hp->resolved) {
            hp->resolved = 1;
            if (!hp->addrs)
                hp->st = dns_addrs(&o->dns, hp->name, o->port, o->max_addrs, &hp->addrs, &hp->naddrs, hp->err,
                                   sizeof(hp->err));
            if (hp->st != DNS_OK)
                logkv(LOG_LVL_WARN, d->lc, "relay.dns_failed", "domain=%s host=%s status=%s reason=%s",
                      log_q(qd, sizeof(qd), d->dom), log_q(qh, sizeof(qh), hp->name), dns_status_name(hp->st),
                      log_q(qe, sizeof(qe), hp->err));
        }
        if (hp->st != DNS_OK) {
            struct delivery_result r;
            if (d->implicit && hp->st != DNS_TEMP)
                relay_result_set(&r, DR_PERM, "550 5.1.2", "domain %s has no MX and no address record", d->dom);
            else
                relay_result_set(&r, DR_TEMP, "451 4.4.3", "%s", hp->err);
            for (size_t i = 0; i < nopen; i++)
                res[open[i]] = r;
            continue;
        }
        size_t na = hp->naddrs;
        if (na > o->max_addrs - used)
            na = o->max_addrs - used;
        for (size_t i = 0; i < nopen; i++)
            sub[i] = rcpts[open[i]];
        struct relay_attempt a = {.o = o, .pool = d->ri->pool, .tls_ctx = d->ri->tls_ctx, .host = hp->name,
                                  .lc = d->lc};
        enum relay_tx tx = relay_deliver_addrs(&a, hp->addrs, na, d->m, sub, nopen, sres, &used);
        size_t still = 0;
        for (size_t i = 0; i < nopen; i++) {
            res[open[i]] = sres[i];
            if (tx == TX_BROKEN && sres[i].status == DR_TEMP)
                open[still++] = open[i];
        }
        nopen = tx == TX_BROKEN ? still : 0;
    }
    free(open);
    free(sub);
    free(sres);
}

static void deliver_domain(struct relay_inst *ri, struct spool_msg *m, const char *dom, const size_t *rcpts,
                           size_t n, struct delivery_result *res, const struct log_ctx *lc)
{
    const struct relay_opts *o = &ri->o;
    struct domain_run d = {.ri = ri, .m = m, .dom = dom, .lc = lc};
    struct dns_mx *mx = NULL;
    size_t nmx = 0;
    struct delivery_result r;
    char err[300], qd[LOGQ_MAX], qe[LOGQ_MAX];
    struct sockaddr_storage lit;
    int isl = dns_addr_literal(dom, o->port, &lit);
    if (isl < 0) {
        relay_result_set(&r, DR_PERM, "550 5.1.2", "malformed address literal %s", dom);
        set_all(res, n, &r);
        return;
    }
    if (isl) {
        d.hosts = xcalloc(1, sizeof(*d.hosts));
        d.nhosts = 1;
        sockaddr_text((const struct sockaddr *)&lit, d.litname, sizeof(d.litname));
        char *colon = strrchr(d.litname, ':'); /* drop ":port" and IPv6 brackets */
        if (colon)
            *colon = '\0';
        if (d.litname[0] == '[') {
            memmove(d.litname, d.litname + 1, strlen(d.litname));
            d.litname[strlen(d.litname) - 1] = '\0';
        }
        d.hosts[0] = (struct dhost){.name = d.litname, .resolved = 1, .st = DNS_OK,
                                    .addrs = xmalloc(sizeof(lit)), .naddrs = 1};
        memcpy(d.hosts[0].addrs, &lit, sizeof(lit));
    } else {
        enum dns_status st = dns_mx(&o->dns, dom, &mx, &nmx, err, sizeof(err));
        if (st == DNS_OK && dns_mx_is_null(mx, nmx)) {
            logkv(LOG_LVL_WARN, lc, "relay.null_mx", "domain=%s", log_q(qd, sizeof(qd), dom));
            relay_result_set(&r, DR_PERM, "556 5.1.10", "domain %s does not accept mail (null MX, RFC 7505)", dom);
            set_all(res, n, &r);
            free(mx);
            return;
        }
        if (st == DNS_OK)
            nmx = dns_mx_drop_null(mx, nmx);
        if (st == DNS_NXDOMAIN || st == DNS_TEMP || (st == DNS_OK && nmx == 0)) {
            logkv(LOG_LVL_WARN, lc, "relay.dns_failed", "domain=%s status=%s reason=%s", log_q(qd, sizeof(qd), dom),
                  dns_status_name(st), log_q(qe, sizeof(qe), err));
            if (st == DNS_NXDOMAIN)
                relay_result_set(&r, DR_PERM, "550 5.1.2", "domain %s does not exist (%s)", dom, err);
            else if (st == DNS_OK)
                relay_result_set(&r, DR_PERM, "556 5.1.10", "domain %s has only null MX records", dom);
            else
                relay_result_set(&r, DR_TEMP, "451 4.4.3", "%s", err);
            set_all(res, n, &r);
            free(mx);
            return;
        }
        if (st == DNS_NODATA) {
            d.implicit = 1;
            d.hosts = xcalloc(1, sizeof(*d.hosts));
            d.nhosts = 1;
            d.hosts[0].name = dom;
        } else {
            d.hosts = xcalloc(nmx, sizeof(*d.hosts));
            d.nhosts = nmx;
            for (size_t i = 0; i < nmx; i++)
                d.hosts[i].name = mx[i].host;
        }
    }
    for (size_t off = 0; off < n; off += o->max_rcpts) {
        size_t cnt = n - off < o->max_rcpts ? n - off : o->max_rcpts;
        deliver_batch(&d, rcpts + off, cnt, res + off);
    }
    for (size_t i = 0; i < d.nhosts; i++)
        free(d.hosts[i].addrs);
    free(d.hosts);
    free(mx);
}

static void mx_deliver(void *inst, struct delivery_job *job)
{
    struct relay_inst *ri = inst;
    struct spool_msg *m = job->msg;
    struct log_ctx lc = {.qid = m->env.id, .user = m->env.auth_user};
    size_t n = job->nrcpts;
    struct rdom *v = xcalloc(n ? n : 1, sizeof(*v));
    for (size_t i = 0; i < n; i++) {
        const char *addr = m->env.rcpts[job->rcpts[i]].addr;
        const char *at = strrchr(addr, '@');
        v[i] = (struct rdom){.dom = at ? at + 1 : "", .pos = i};
    }
    qsort(v, n, sizeof(*v), rdom_cmp);
    size_t *rc = xcalloc(n ? n : 1, sizeof(*rc));
    struct delivery_result *res = xcalloc(n ? n : 1, sizeof(*res));
    for (size_t s = 0; s < n;) {
        size_t e = s + 1;
        while (e < n && strcasecmp(v[e].dom, v[s].dom) == 0)
            e++;
        for (size_t i = s; i < e; i++)
            rc[i - s] = job->rcpts[v[i].pos];
        char dom[DNS_NAME_MAX + 1];
        if (!*v[s].dom || str_copy(dom, v[s].dom, sizeof(dom)) >= sizeof(dom)) {
            struct delivery_result r;
            relay_result_set(&r, DR_PERM, "550 5.1.2", "bad recipient domain");
            set_all(res, e - s, &r);
        } else {
            str_lower(dom);
            deliver_domain(ri, m, dom, rc, e - s, res, &lc);
        }
        for (size_t i = s; i < e; i++)
            job->results[v[i].pos] = res[i - s];
        s = e;
    }
    free(v);
    free(rc);
    free(res);
    job->done(job);
}

const struct transport_ops mx_transport = {
    .type = "mx",
    .check = mx_check,
    .open = mx_open,
    .deliver = mx_deliver,
    .close = mx_close,
};
