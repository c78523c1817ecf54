/* smarthost: the transport that relays every message through one
 * provider or company relay (`url smtp://HOST:PORT` with STARTTLS required
 * by default, or `url smtps://HOST:PORT`), with AUTH from an auth-file.
 * Resolves the host, then hands the recipients, in transactions of at most
 * max-recipients, to relay_deliver_addrs (connection reuse, limits,
 * trying the host's addresses in turn). Every failure short of a 5xx reply
 * from the relay is temporary. */
#include <stdlib.h>
#include <string.h>

#include "relay/relay.h"

#define SMARTHOST_MAX_ADDRS 8

static int sh_check(const struct transport_cfg *cfg, const char *file, struct errlist *errs)
{
    return relay_inst_check(cfg, RELAY_SMARTHOST, file, errs);
}

static void *sh_open(const struct transport_cfg *cfg, struct errlist *errs)
{
    return relay_inst_open(cfg, RELAY_SMARTHOST, errs);
}

static void sh_close(void *inst)
{
    relay_inst_close(inst);
}

static void sh_deliver(void *inst, struct delivery_job *job)
{
    struct relay_inst *ri = inst;
    struct spool_msg *m = job->msg;
    struct log_ctx lc = {.qid = m->env.id, .user = m->env.auth_user};
    struct sockaddr_storage *addrs = NULL;
    size_t naddrs = 0;
    char err[300], qh[LOGQ_MAX], qe[LOGQ_MAX];
    enum dns_status st = dns_addrs(&ri->o.dns, ri->o.host, ri->o.port, SMARTHOST_MAX_ADDRS, &addrs, &naddrs, err,
                                   sizeof(err));
    if (st != DNS_OK) {
        logkv(LOG_LVL_WARN, &lc, "relay.dns_failed", "transport=%s host=%s status=%s reason=%s", ri->o.name,
              log_q(qh, sizeof(qh), ri->o.host), dns_status_name(st), log_q(qe, sizeof(qe), err));
        for (size_t i = 0; i < job->nrcpts; i++)
            relay_result_set(&job->results[i], DR_TEMP, "451 4.4.3", "smarthost %s: %s", ri->o.host, err);
        job->done(job);
        return;
    }
    struct relay_attempt a = {.o = &ri->o, .pool = ri->pool, .tls_ctx = ri->tls_ctx, .creds = ri->creds,
                              .ncreds = ri->ncreds, .host = ri->o.host, .lc = &lc};
    for (size_t off = 0; off < job->nrcpts; off += ri->o.max_rcpts) {
        size_t cnt = job->nrcpts - off;
        if (cnt > ri->o.max_rcpts)
            cnt = ri->o.max_rcpts;
        size_t used = 0;
        relay_deliver_addrs(&a, addrs, naddrs, m, job->rcpts + off, cnt, job->results + off, &used);
    }
    free(addrs);
    job->done(job);
}

const struct transport_ops smarthost_transport = {
    .type = "smarthost",
    .check = sh_check,
    .open = sh_open,
    .deliver = sh_deliver,
    .close = sh_close,
};
