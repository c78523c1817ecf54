/* server: the runtime shared by the workers (see server.h) — taking
 * consistent snapshots of config + TLS for new sessions, the accounts in
 * force, building TLS contexts, and SIGHUP reloads (all-or-nothing: a new
 * config, accounts file and certificates are swapped in together, or the
 * old ones stay). */
#include <stdlib.h>
#include <string.h>

#include "abuse/abuse.h"
#include "auth/authcache.h"
#include "core/log.h"
#include "smtp/server.h"

void server_snap_take(struct server *s, size_t listener, struct server_snap *out)
{
    pthread_mutex_lock(&s->lock);
    out->cfg = config_ref(s->cfg);
    out->tls = listener < s->ntls && s->tls[listener] ? tls_server_ref(s->tls[listener]) : NULL;
    pthread_mutex_unlock(&s->lock);
}

void server_snap_release(struct server_snap *snap)
{
    if (snap->tls)
        tls_server_unref(snap->tls);
    if (snap->cfg)
        config_unref(snap->cfg);
    snap->tls = NULL;
    snap->cfg = NULL;
}

struct accounts *server_accounts(struct server *s)
{
    pthread_mutex_lock(&s->lock);
    struct accounts *a = s->acc ? accounts_ref(s->acc) : NULL;
    pthread_mutex_unlock(&s->lock);
    return a;
}

int server_build_tls(const struct config *cfg, struct tls_server ***out, size_t *n, struct errlist *errs)
{
    struct tls_server **v = xcalloc(cfg->nlisteners, sizeof(*v));
    int rc = 0;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct listener_cfg *l = &cfg->listeners[i];
        const struct cert_pair *certs = l->ncerts ? l->certs : cfg->tls.certs;
        size_t nc = l->ncerts ? l->ncerts : cfg->tls.ncerts;
        v[i] = tls_server_new(&cfg->tls, certs, nc, cfg->file, errs);
        if (!v[i])
            rc = -1;
    }
    if (rc != 0) {
        for (size_t i = 0; i < cfg->nlisteners; i++)
            if (v[i])
                tls_server_unref(v[i]);
        free(v);
        return -1;
    }
    *out = v;
    *n = cfg->nlisteners;
    return 0;
}

static int same_listeners(const struct config *a, const struct config *b, struct errlist *errs)
{
    int same = a->nlisteners == b->nlisteners;
    for (size_t i = 0; same && i < a->nlisteners; i++) {
        const struct listener_cfg *x = &a->listeners[i], *y = &b->listeners[i];
        if (strcmp(x->name, y->name) != 0 || x->port != y->port || x->naddrs != y->naddrs || x->mode != y->mode)
            same = 0;
        for (size_t k = 0; same && k < x->naddrs; k++)
            if (strcmp(x->addrs[k], y->addrs[k]) != 0)
                same = 0;
    }
    if (!same)
        errlist_add(errs, b->file, 0, "listener names, addresses, ports or modes changed: a restart is needed");
    return same;
}

int server_reload(struct server *s, struct errlist *errs)
{
    struct config *nc = config_load(s->config_path, errs);
    if (!nc)
        return -1;
    struct accounts *na = NULL;
    struct tls_server **nt = NULL;
    size_t nnt = 0;
    int ok = same_listeners(s->cfg, nc, errs);
    int64_t accounts_read = abuse_now(); /* suspensions written before this are in na */
    if (ok) {
        na = accounts_load(nc->accounts, errs);
        ok = na != NULL;
    }
    if (ok)
        ok = server_build_tls(nc, &nt, &nnt, errs) == 0;
    if (ok && queue_reload(s->queue, nc, errs) != 0)
        ok = 0;
    if (!ok) {
        if (na)
            accounts_unref(na);
        if (nt) {
            for (size_t i = 0; i < nnt; i++)
                tls_server_unref(nt[i]);
            free(nt);
        }
        config_unref(nc);
        return -1;
    }
    pthread_mutex_lock(&s->lock);
    struct config *oc = s->cfg;
    struct accounts *oa = s->acc;
    struct tls_server **ot = s->tls;
    size_t ont = s->ntls;
    s->cfg = nc;
    s->acc = na;
    s->tls = nt;
    s->ntls = nnt;
    pthread_mutex_unlock(&s->lock);
    log_set_level((enum log_level)nc->log_level);
    /* Accounts may have changed: forget every remembered login. */
    authcache_set_ttl(s->authcache, (uint64_t)nc->auth_cache_ttl * 1000u);
    authcache_clear(s->authcache);
    if (s->abuse) {
        abuse_reload(s->abuse, nc);
        abuse_accounts_loaded(s->abuse, accounts_read);
    }
    config_unref(oc);
    accounts_unref(oa);
    for (size_t i = 0; i < ont; i++)
        if (ot[i])
            tls_server_unref(ot[i]);
    free(ot);
    return 0;
}
