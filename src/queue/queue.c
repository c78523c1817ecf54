/* queue: the delivery scheduler (see queue.h). Owns the in-memory schedule
 * (a min-heap of (due time, id) plus a hash of every known id), the
 * delivery threads, the transport instances of the current config (a
 * refcounted "generation" swapped on reload), routing recipients to
 * transports (one job per transport per message), and turning delivery
 * results into status-log records, retries with exponential backoff,
 * failures, bounces (bounce.c) and removal. Also the operator side: durable
 * hold/release, flush, delete, and the `queue` verb of the control socket
 * (list/show). Everything durable lives in the spool; this state is
 * rebuilt by a scan at start. */
#include "queue/queue.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "queue/bounce.h"
#include "queue/transport.h"
#include "smtp/parse.h"

#define NOT_IN_HEAP ((size_t)-1)

/* The transports of one config. refs: 1 while current + 1 per message
 * being delivered with it; the last release closes the instances. */
struct tgen {
    struct config *cfg;
    size_t n;
    const struct transport_ops **ops;
    void **inst;
    unsigned refs;
};

struct qent {
    char id[QID_LEN + 1];
    int64_t due_ms;   /* wall clock */
    uint64_t seq;     /* FIFO among equal due times */
    size_t hidx;      /* position in the heap or NOT_IN_HEAP */
    int busy;         /* a delivery thread has it */
    int again;        /* submitted while busy: run again at once */
    int force;        /* next run tries every pending recipient, ignoring next_try */
    int held;         /* held (durably, or in memory when the record failed): never in the heap */
    int op;           /* enum qop asked while busy: done by the thread that has it when it finishes */
    char *op_reason;  /* for OP_HOLD */
    struct qent *hnext;
};

/* Operator actions on one message. */
enum qop { OP_NONE = 0, OP_HOLD, OP_RELEASE, OP_DELETE };

struct queue {
    struct spool *spool;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct tgen *cur;
    struct qent **heap;
    size_t hlen, hcap;
    struct qent **buckets;
    size_t nbuckets, count;
    uint64_t seq;
    pthread_t *threads;
    unsigned nthreads;
    int stopping;
    int stopped;
};

static int64_t wall_ms(void)
{
    return (int64_t)(wall_us() / 1000u);
}

/* ---- transport generations ----------------------------------------------- */

static void gen_free(struct tgen *g)
{
    if (!g)
        return;
    for (size_t i = 0; i < g->n; i++)
        if (g->inst[i])
            g->ops[i]->close(g->inst[i]);
    free(g->ops);
    free(g->inst);
    config_unref(g->cfg);
    free(g);
}

static struct tgen *gen_new(struct config *cfg, struct errlist *errs)
{
    struct tgen *g = xcalloc(1, sizeof(*g));
    g->cfg = config_ref(cfg);
    g->n = cfg->ntransports;
    g->ops = xcalloc(g->n, sizeof(*g->ops));
    g->inst = xcalloc(g->n, sizeof(*g->inst));
    g->refs = 1;
    int bad = 0;
    for (size_t i = 0; i < g->n; i++) {
        const struct transport_cfg *tc = &cfg->transports[i];
        const struct transport_ops *ops = transport_find(tc->type);
        if (!ops) {
            errlist_add(errs, cfg->file, tc->line, "transport %s: unknown type %s", tc->name ? tc->name : "?",
                        tc->type ? tc->type : "(none)");
            bad = 1;
            continue;
        }
        g->ops[i] = ops;
        /* the same checks as `submitd -t`, with file:line */
        if (ops->check && ops->check(tc, cfg->file, errs) != 0) {
            bad = 1;
            continue;
        }
        g->inst[i] = ops->open(tc, errs);
        if (!g->inst[i])
            bad = 1;
    }
    if (bad) {
        gen_free(g);
        return NULL;
    }
    return g;
}

/* Index of the transport for a lower-cased domain, or -1. */
static long gen_route(const struct tgen *g, const char *domain)
{
    const struct transport_cfg *tc = config_route(g->cfg, domain);
    if (!tc)
        return -1;
    if (tc >= g->cfg->transports && tc < g->cfg->transports + g->n)
        return (long)(tc - g->cfg->transports);
    for (size_t i = 0; i < g->n; i++)
        if (tc->name && g->cfg->transports[i].name && strcmp(tc->name, g->cfg->transports[i].name) == 0)
            return (long)i;
    return -1;
}

/* ---- heap + hash (under q->lock) --------------------------------------------- */

static int ent_before(const struct qent *a, const struct qent *b)
{
    return a->due_ms < b->due_ms || (a->due_ms == b->due_ms && a->seq < b->seq);
}

static void heap_set(struct queue *q, size_t i, struct qent *e)
{
    q->heap[i] = e;
    e->hidx = i;
}

static void heap_up(struct queue *q, size_t i)
{
    struct qent *e = q->heap[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!ent_before(e, q->heap[p]))
            break;
        heap_set(q, i, q->heap[p]);
        i = p;
    }
    heap_set(q, i, e);
}

static void heap_down(struct queue *q, size_t i)
{
    struct qent *e = q->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= q->hlen)
            break;
        if (c + 1 < q->hlen && ent_before(q->heap[c + 1], q->heap[c]))
            c++;
        if (!ent_before(q->heap[c], e))
            break;
        heap_set(q, i, q->heap[c]);
        i = c;
    }
    heap_set(q, i, e);
}

static void heap_push(struct queue *q, struct qent *e)
{
    if (q->hlen == q->hcap) {
        q->hcap = q->hcap ? 2 * q->hcap : 64;
        q->heap = xrealloc(q->heap, q->hcap * sizeof(*q->heap));
    }
    e->seq = q->seq++;
    heap_set(q, q->hlen++, e);
    heap_up(q, e->hidx);
}

static void heap_remove(struct queue *q, struct qent *e)
{
    size_t i = e->hidx;
    e->hidx = NOT_IN_HEAP;
    q->hlen--;
    if (i == q->hlen)
        return;
    struct qent *moved = q->heap[q->hlen];
    heap_set(q, i, moved);
    heap_down(q, i);
    heap_up(q, moved->hidx);
}

static size_t hash_id(const char *id, size_t nb)
{
    uint64_t h = 1469598103934665603ull;
    for (const unsigned char *p = (const unsigned char *)id; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    return (size_t)(h & (nb - 1));
}

static struct qent *hash_find(struct queue *q, const char *id)
{
    for (struct qent *e = q->buckets[hash_id(id, q->nbuckets)]; e; e = e->hnext)
        if (strcmp(e->id, id) == 0)
            return e;
    return NULL;
}

static void hash_add(struct queue *q, struct qent *e)
{
    if (q->count >= q->nbuckets) {
        size_t nb = q->nbuckets * 2;
        struct qent **b = xcalloc(nb, sizeof(*b));
        for (size_t i = 0; i < q->nbuckets; i++) {
            for (struct qent *x = q->buckets[i], *next; x; x = next) {
                next = x->hnext;
                size_t h = hash_id(x->id, nb);
                x->hnext = b[h];
                b[h] = x;
            }
        }
        free(q->buckets);
        q->buckets = b;
        q->nbuckets = nb;
    }
    size_t h = hash_id(e->id, q->nbuckets);
    e->hnext = q->buckets[h];
    q->buckets[h] = e;
    q->count++;
}

static void hash_del(struct queue *q, struct qent *e)
{
    struct qent **pp = &q->buckets[hash_id(e->id, q->nbuckets)];
    while (*pp && *pp != e)
        pp = &(*pp)->hnext;
    if (*pp) {
        *pp = e->hnext;
        q->count--;
    }
}

static struct qent *new_ent(struct queue *q, const char *id)
{
    struct qent *e = xcalloc(1, sizeof(*e));
    memcpy(e->id, id, QID_LEN + 1);
    e->hidx = NOT_IN_HEAP;
    hash_add(q, e);
    return e;
}

static void free_ent(struct qent *e)
{
    free(e->op_reason);
    free(e);
}

/* Makes an existing entry due at due_ms (earlier wins); a busy one runs
 * again when its run ends; a held one stays held. 1 when scheduled. */
static int resched_locked(struct queue *q, struct qent *e, int64_t due_ms, int force)
{
    if (e->busy) {
        e->again = 1;
        e->force |= force;
        return 1;
    }
    if (e->held)
        return 0;
    e->force |= force;
    if (e->hidx == NOT_IN_HEAP) {
        e->due_ms = due_ms;
        heap_push(q, e);
    } else if (due_ms < e->due_ms) {
        e->due_ms = due_ms;
        heap_up(q, e->hidx);
    }
    pthread_cond_signal(&q->cond);
    return 1;
}

/* Schedules id at due_ms (see resched_locked), adding it when new. */
static void schedule_locked(struct queue *q, const char *id, int64_t due_ms, int force)
{
    struct qent *e = hash_find(q, id);
    if (!e)
        e = new_ent(q, id);
    resched_locked(q, e, due_ms, force);
}

/* ---- one delivery run for one message ----------------------------------------- */

struct waitgrp {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t left;
};

static void job_done(struct delivery_job *job)
{
    struct waitgrp *wg = job->arg;
    pthread_mutex_lock(&wg->mu);
    wg->left--;
    pthread_cond_signal(&wg->cv);
    pthread_mutex_unlock(&wg->mu);
}

static const char *rcpt_domain(const char *addr, char *buf, size_t n)
{
    const char *at = strrchr(addr, '@');
    str_copy(buf, at ? at + 1 : "", n);
    str_lower(buf);
    return buf;
}

static int64_t backoff(const struct queue_cfg *qc, unsigned attempts)
{
    int64_t b = qc->retry_initial ? qc->retry_initial : 1;
    int64_t max = qc->retry_max > 0 ? qc->retry_max : b;
    for (unsigned k = 1; k < attempts && b < max; k++)
        b *= 2;
    return b < max ? b : max;
}

static int is_retry(const struct config *cfg, const struct spool_msg *m, const struct delivery_result *res,
                    int64_t now)
{
    return res->status == DR_TEMP && now < m->env.received + (int64_t)cfg->queue.lifetime;
}

/* Records and logs the result for recipient r. record == 0: the message is
 * about to be removed, so a final result only updates m (no status-log
 * write + fsync for a file that goes away next). */
static void apply_result(struct queue *q, const struct config *cfg, struct spool_msg *m, size_t r,
                         const char *tname, const struct delivery_result *res, int64_t now, int record)
{
    struct log_ctx lc = {.qid = m->env.id};
    const char *addr = m->env.rcpts[r].addr;
    char qab[LOGQ_MAX], qtb[LOGQ_MAX], qf[LOGQ_MAX], qrm[LOGQ_MAX];
    const char *qa = log_q(qab, sizeof(qab), addr);
    const char *qt = log_q(qtb, sizeof(qtb), res->text);
    const char *qr = log_q(qrm, sizeof(qrm), res->remote[0] ? res->remote : "-");
    int rc = 0;
    if (res->status == DR_OK) {
        if (record)
            rc = spool_mark_done(q->spool, m, r);
        else
            m->state[r] = RCPT_DONE;
        logkv(LOG_LVL_INFO, &lc, "delivered", "rcpt=%s transport=%s remote=%s reply=%s attempts=%u", qa, tname, qr,
              qt, m->attempts[r] + 1);
    } else if (is_retry(cfg, m, res, now)) {
        int64_t next = now + backoff(&cfg->queue, m->attempts[r] + 1);
        rc = spool_mark_retry(q->spool, m, r, next, res->text);
        logkv(LOG_LVL_WARN, &lc, "deferred",
              "rcpt=%s transport=%s remote=%s reply=%s attempts=%u next_retry=%lld delay=%llds", qa, tname, qr, qt,
              m->attempts[r], (long long)next, (long long)(next - now));
    } else {
        const char *why = res->status == DR_TEMP ? "lifetime_expired" : "permanent";
        if (record)
            rc = spool_mark_failed(q->spool, m, r, res->text);
        else
            m->state[r] = RCPT_FAILED;
        logkv(LOG_LVL_WARN, &lc, "failed", "rcpt=%s transport=%s remote=%s reply=%s attempts=%u reason=%s", qa,
              tname, qr, qt, m->attempts[r] + 1, why);
    }
    if (rc != 0)
        logkv(LOG_LVL_ERR, &lc, "queue.status_failed", "rcpt=%s error=%s", qa,
              log_q(qf, sizeof(qf), strerror(errno)));
}

enum run_res { RUN_KEEP, RUN_GONE, RUN_HELD };

/* Delivers what is due of message id with generation g, then sends the
 * DSNs it calls for. RUN_KEEP sets *next_s (unix time of the next attempt). */
static enum run_res run_message(struct queue *q, struct tgen *g, const char *id, int force, int64_t *next_s)
{
    struct log_ctx lc = {.qid = id};
    char err[256], qe[LOGQ_MAX];
    struct spool_msg *m;
    const struct config *cfg = g->cfg;
    int64_t now = (int64_t)time(NULL);
    if (spool_msg_open(q->spool, id, &m, err, sizeof(err)) != 0) {
        int e = errno;
        if (e == ENOENT)
            return RUN_GONE;
        if (e == EBADMSG || e == EINVAL) {
            int qr = spool_quarantine(q->spool, id);
            logkv(LOG_LVL_ERR, &lc, "queue.corrupt", "reason=%s moved_to=%s", log_q(qe, sizeof(qe), err),
                  qr == 0 ? "corrupt/" : "-");
            return RUN_GONE;
        }
        logkv(LOG_LVL_ERR, &lc, "queue.open_failed", "error=%s", log_q(qe, sizeof(qe), err));
        *next_s = now + backoff(&cfg->queue, 1);
        return RUN_KEEP;
    }
    if (m->held) {
        logkv(LOG_LVL_DEBUG, &lc, "queue.skip_held", NULL);
        spool_msg_close(m);
        return RUN_HELD;
    }
    lc.user = m->env.auth_user;
    size_t n = m->env.nrcpts;
    size_t *due = xcalloc(n ? n : 1, sizeof(*due));
    long *tidx = xcalloc(n ? n : 1, sizeof(*tidx));
    size_t ndue = 0;
    for (size_t i = 0; i < n; i++) {
        if (m->state[i] == RCPT_PENDING && (force || m->next_try[i] <= now)) {
            char dom[256];
            due[ndue] = i;
            tidx[ndue] = gen_route(g, rcpt_domain(m->env.rcpts[i].addr, dom, sizeof(dom)));
            ndue++;
        }
    }
    struct delivery_result *res = xcalloc(n ? n : 1, sizeof(*res));
    for (size_t k = 0; k < ndue; k++) {
        res[k].status = DR_TEMP;
        str_copy(res[k].text, tidx[k] < 0 ? "451 4.3.0 no route to a transport for this domain"
                                          : "451 4.3.0 transport gave no result",
                 sizeof(res[k].text));
    }
    /* one job per transport, its recipients and results gathered contiguously */
    struct delivery_job *jobs = xcalloc(g->n ? g->n : 1, sizeof(*jobs));
    size_t *order = xcalloc(n ? n : 1, sizeof(*order));
    struct delivery_result *jres = xcalloc(n ? n : 1, sizeof(*jres));
    size_t *pos = xcalloc(n ? n : 1, sizeof(*pos)); /* index in order[] of due[k] */
    struct waitgrp wg = {.left = 0};
    pthread_mutex_init(&wg.mu, NULL);
    pthread_cond_init(&wg.cv, NULL);
    size_t o = 0, njobs = 0;
    for (size_t t = 0; t < g->n; t++) {
        size_t start = o;
        for (size_t k = 0; k < ndue; k++) {
            if (tidx[k] == (long)t) {
                pos[k] = o;
                order[o] = due[k];
                jres[o] = res[k];
                o++;
            }
        }
        if (o == start)
            continue;
        jobs[t] = (struct delivery_job){.msg = m, .rcpts = order + start, .nrcpts = o - start,
                                        .results = jres + start, .done = job_done, .arg = &wg};
        njobs++;
    }
    wg.left = njobs;
    for (size_t t = 0; t < g->n; t++)
        if (jobs[t].nrcpts)
            g->ops[t]->deliver(g->inst[t], &jobs[t]);
    pthread_mutex_lock(&wg.mu);
    while (wg.left > 0)
        pthread_cond_wait(&wg.cv, &wg.mu);
    pthread_mutex_unlock(&wg.mu);
    pthread_mutex_destroy(&wg.mu);
    pthread_cond_destroy(&wg.cv);
    now = (int64_t)time(NULL);
    struct bounce_run ri = {.remote = xcalloc(n ? n : 1, sizeof(*ri.remote)),
                            .perm = xmalloc(n ? n : 1), .deferred = xcalloc(n ? n : 1, 1)};
    memset(ri.perm, -1, n ? n : 1);
    /* Will every recipient be final after this run, with no DSN to send?
     * Then the removal is the record (see docs/spool-format.md). */
    size_t pending = 0;
    int need_dsn = 0;
    for (size_t i = 0; i < n; i++) {
        pending += m->state[i] == RCPT_PENDING;
        need_dsn |= bounce_owed(m, i);
    }
    int finishing = pending == ndue;
    for (size_t k = 0; k < ndue; k++) {
        const struct delivery_result *r = tidx[k] >= 0 ? &jres[pos[k]] : &res[k];
        size_t i = due[k];
        ri.perm[i] = r->status == DR_PERM;
        ri.remote[i] = r->remote[0] ? r->remote : NULL;
        if (is_retry(cfg, m, r, now)) {
            finishing = 0;
            ri.deferred[i] = 1;
        } else if (r->status != DR_OK && bounce_wanted(m, i)) {
            need_dsn = 1;
        }
    }
    if (need_dsn)
        finishing = 0;
    for (size_t k = 0; k < ndue; k++) {
        const struct delivery_result *r = tidx[k] >= 0 ? &jres[pos[k]] : &res[k];
        const char *tname = tidx[k] >= 0 && cfg->transports[tidx[k]].name ? cfg->transports[tidx[k]].name : "-";
        apply_result(q, cfg, m, due[k], tname, r, now, !finishing);
    }
    int dsn_missing = bounce_after_run(q, q->spool, cfg, m, &ri, now) != 0;
    free(ri.remote);
    free(ri.perm);
    free(ri.deferred);
    free(jobs);
    free(order);
    free(jres);
    free(pos);
    free(res);
    free(due);
    free(tidx);
    enum run_res rr = RUN_KEEP;
    if (spool_msg_complete(m) && !dsn_missing) {
        if (spool_remove(q->spool, id) != 0) {
            logkv(LOG_LVL_ERR, &lc, "queue.remove_failed", "error=%s", log_q(qe, sizeof(qe), strerror(errno)));
            /* it stays on disk: record the results so that a restart does not deliver again */
            for (size_t i = 0; finishing && i < n; i++)
                if ((m->state[i] == RCPT_DONE ? spool_mark_done(q->spool, m, i)
                                              : spool_mark_failed(q->spool, m, i, "final")) != 0)
                    break;
        } else {
            logkv(LOG_LVL_INFO, &lc, "queue.removed", "nrcpt=%zu", n);
        }
        rr = RUN_GONE;
    } else {
        /* a failure DSN that could not be written is tried again soon */
        int64_t next = dsn_missing ? now + backoff(&cfg->queue, 1) : INT64_MAX;
        for (size_t i = 0; i < n; i++)
            if (m->state[i] == RCPT_PENDING && m->next_try[i] < next)
                next = m->next_try[i];
        *next_s = next;
    }
    spool_msg_close(m);
    return rr;
}

/* ---- operator actions ------------------------------------------------------------ */

struct op_out {
    int deferred; /* a delivery had the message: done when it finishes */
    int changed;  /* the hold state changed / the message was deleted */
    int held;     /* held afterwards */
};

static size_t count_state(const struct spool_msg *m, enum rcpt_state st)
{
    size_t c = 0;
    for (size_t i = 0; i < m->env.nrcpts; i++)
        c += m->state[i] == st;
    return c;
}

/* Does op on message id, whose entry the caller has busy. 0, or -1 with
 * errno (ENOENT: no such message). *held: its hold state afterwards (a
 * hold whose record could not be written does not hold). */
static int do_op(struct queue *q, const char *id, enum qop op, const char *reason, int *held, int *changed)
{
    struct log_ctx lc = {.qid = id};
    char err[256], qb[LOGQ_MAX], qr[LOGQ_MAX];
    struct spool_msg *m;
    *changed = 0;
    if (spool_msg_open(q->spool, id, &m, err, sizeof(err)) != 0) {
        int e = errno;
        if (op == OP_DELETE && e != ENOENT && spool_remove(q->spool, id) == 0) {
            logkv(LOG_LVL_WARN, &lc, "queue.deleted", "note=\"unreadable message deleted by the operator\" error=%s",
                  log_q(qb, sizeof(qb), err));
            *changed = 1;
            return 0;
        }
        errno = e;
        return -1;
    }
    int rc = 0;
    *held = m->held;
    const char *from = log_q(qb, sizeof(qb), m->env.mail_from);
    if (op == OP_HOLD) {
        /* a hold that is not durable is no hold: the message goes on */
        if (!m->held && (rc = spool_mark_hold(q->spool, m, reason)) == 0) {
            *changed = 1;
            *held = 1;
            logkv(LOG_LVL_INFO, &lc, "queue.held", "from=%s reason=%s", from,
                  log_q(qr, sizeof(qr), reason ? reason : "-"));
        } else if (rc != 0) {
            int he = errno;
            logkv(LOG_LVL_ERR, &lc, "queue.hold_failed", "error=%s note=\"not held\"",
                  log_q(qr, sizeof(qr), strerror(he)));
            errno = he;
        }
    } else if (op == OP_RELEASE) {
        if (m->held) {
            rc = spool_mark_release(q->spool, m);
            if (rc == 0) {
                *held = 0;
                *changed = 1;
                logkv(LOG_LVL_INFO, &lc, "queue.released", "from=%s", from);
            }
        }
        *held = rc == 0 ? 0 : *held;
    } else if (op == OP_DELETE) {
        rc = spool_remove(q->spool, id);
        if (rc == 0) {
            *changed = 1;
            logkv(LOG_LVL_WARN, &lc, "queue.deleted", "from=%s nrcpt=%zu pending=%zu note=\"by the operator; no bounce\"",
                  from, m->env.nrcpts, count_state(m, RCPT_PENDING));
        }
    }
    int e = errno;
    spool_msg_close(m);
    errno = e;
    return rc;
}

/* e is busy and ours: does the operator actions asked for it (looping, as
 * more may come while the lock is dropped), then puts it where its state
 * says: freed (gone), out of the heap (held), or in the heap at next_ms
 * (now when asked again meanwhile). out (may be NULL) gets the outcome of
 * the first action, which the return value (0 or -1 with errno) is for. */
static int settle_locked(struct queue *q, struct qent *e, enum run_res rr, int64_t next_ms, struct op_out *out)
{
    int rc = 0, first = 1, err = 0;
    while (e->op != OP_NONE && rr != RUN_GONE) {
        enum qop op = (enum qop)e->op;
        char *reason = e->op_reason;
        e->op = OP_NONE;
        e->op_reason = NULL;
        pthread_mutex_unlock(&q->lock);
        int held = rr == RUN_HELD, changed = 0;
        int r = do_op(q, e->id, op, reason, &held, &changed);
        int r_err = errno;
        free(reason);
        pthread_mutex_lock(&q->lock);
        if ((r != 0 && r_err == ENOENT) || (op == OP_DELETE && r == 0)) {
            rr = RUN_GONE;
        } else if (held) {
            rr = RUN_HELD;
        } else if (rr == RUN_HELD || op == OP_RELEASE) {
            rr = RUN_KEEP;
            next_ms = wall_ms();
            e->force = 1;
        }
        if (first) {
            rc = r;
            err = r_err;
            if (out) {
                out->changed = changed;
                out->held = held;
            }
        }
        first = 0;
    }
    e->busy = 0;
    if (rr == RUN_GONE && !e->again) {
        hash_del(q, e);
        free_ent(e);
    } else if (rr == RUN_HELD) {
        e->held = 1;
        e->again = 0;
    } else {
        e->held = 0;
        e->due_ms = e->again || rr == RUN_GONE ? wall_ms() : next_ms;
        e->again = 0;
        heap_push(q, e);
        pthread_cond_signal(&q->cond);
    }
    errno = err;
    return rc;
}

/* An operator action on id: done now when no delivery has the message,
 * else left to the delivery thread (out->deferred). create: add an entry
 * for an id the queue does not know yet (queue_submit_held). 0, or -1 with
 * errno: EINVAL bad id, ENOENT unknown id, else the spool's error. */
static int operate(struct queue *q, const char *id, enum qop op, const char *reason, int create, struct op_out *out)
{
    memset(out, 0, sizeof(*out));
    if (!q || !id || !qid_valid(id)) {
        errno = EINVAL;
        return -1;
    }
    pthread_mutex_lock(&q->lock);
    struct qent *e = hash_find(q, id);
    if (!e && !create) {
        pthread_mutex_unlock(&q->lock);
        errno = ENOENT;
        return -1;
    }
    if (!e)
        e = new_ent(q, id);
    if (e->busy) {
        if (e->op != OP_DELETE) {
            e->op = op;
            free(e->op_reason);
            e->op_reason = reason ? xstrdup(reason) : NULL;
        }
        out->deferred = 1;
        pthread_mutex_unlock(&q->lock);
        return 0;
    }
    enum run_res was = e->held ? RUN_HELD : RUN_KEEP;
    if (e->hidx != NOT_IN_HEAP)
        heap_remove(q, e);
    e->busy = 1;
    e->op = op;
    e->op_reason = reason ? xstrdup(reason) : NULL;
    int rc = settle_locked(q, e, was, e->due_ms, out);
    int err = errno;
    pthread_mutex_unlock(&q->lock);
    errno = err;
    return rc;
}

/* Makes id (or every message when NULL) due now, ignoring backoff; held
 * messages stay held. Returns how many were scheduled, -1 (ENOENT) for an
 * unknown id; *held counts the held ones skipped. */
static long flush(struct queue *q, const char *id, size_t *held)
{
    long n = 0;
    *held = 0;
    pthread_mutex_lock(&q->lock);
    int64_t now = wall_ms();
    if (id) {
        struct qent *e = qid_valid(id) ? hash_find(q, id) : NULL;
        if (!e) {
            pthread_mutex_unlock(&q->lock);
            errno = ENOENT;
            return -1;
        }
        n = resched_locked(q, e, now, 1);
        *held = e->held && !e->busy;
    } else {
        for (size_t b = 0; b < q->nbuckets; b++) {
            for (struct qent *e = q->buckets[b]; e; e = e->hnext) {
                if (resched_locked(q, e, now, 1))
                    n++;
                else
                    (*held)++;
            }
        }
    }
    pthread_mutex_unlock(&q->lock);
    return n;
}

/* ---- threads ----------------------------------------------------------------- */

static void abs_time(int64_t ms, struct timespec *ts)
{
    ts->tv_sec = (time_t)(ms / 1000);
    ts->tv_nsec = (long)(ms % 1000) * 1000000L;
}

static void gen_release_locked(struct tgen *g, struct tgen **to_free)
{
    if (--g->refs == 0)
        *to_free = g;
}

#define IDLE_FLUSH_MS 50

static void *delivery_thread(void *arg)
{
    struct queue *q = arg;
    int ran = 0; /* delivered since the spool was last flushed */
    pthread_mutex_lock(&q->lock);
    while (!q->stopping) {
        if (ran && (q->hlen == 0 || q->heap[0]->due_ms > wall_ms())) {
            /* going idle: the removals of journal messages are made
             * durable by the next commits' sync; if none comes soon (no
             * new work within IDLE_FLUSH_MS), by a flush */
            int64_t until = wall_ms() + IDLE_FLUSH_MS;
            if (q->hlen && q->heap[0]->due_ms < until)
                until = q->heap[0]->due_ms;
            struct timespec ts;
            abs_time(until, &ts);
            if (pthread_cond_timedwait(&q->cond, &q->lock, &ts) == ETIMEDOUT && !q->stopping &&
                (q->hlen == 0 || q->heap[0]->due_ms > wall_ms())) {
                ran = 0;
                pthread_mutex_unlock(&q->lock);
                spool_flush(q->spool);
                pthread_mutex_lock(&q->lock);
            }
            continue;
        }
        if (q->hlen == 0) {
            pthread_cond_wait(&q->cond, &q->lock);
            continue;
        }
        struct qent *e = q->heap[0];
        int64_t now = wall_ms();
        if (e->due_ms > now) {
            struct timespec ts;
            abs_time(e->due_ms, &ts);
            pthread_cond_timedwait(&q->cond, &q->lock, &ts);
            continue;
        }
        heap_remove(q, e);
        e->busy = 1;
        e->again = 0;
        int force = e->force;
        e->force = 0;
        struct tgen *g = q->cur;
        g->refs++;
        char id[QID_LEN + 1];
        memcpy(id, e->id, sizeof(id));
        pthread_mutex_unlock(&q->lock);

        int64_t next_s = 0;
        enum run_res rr = run_message(q, g, id, force, &next_s);
        ran = 1;

        struct tgen *dead = NULL;
        pthread_mutex_lock(&q->lock);
        gen_release_locked(g, &dead);
        settle_locked(q, e, rr, next_s > INT64_MAX / 1000 ? INT64_MAX : next_s * 1000, NULL);
        if (dead) {
            pthread_mutex_unlock(&q->lock);
            gen_free(dead);
            pthread_mutex_lock(&q->lock);
        }
    }
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

/* ---- API ------------------------------------------------------------------------ */

struct queue *queue_new(struct spool *spool, struct config *cfg, struct errlist *errs)
{
    struct tgen *g = gen_new(cfg, errs);
    if (!g)
        return NULL;
    struct queue *q = xcalloc(1, sizeof(*q));
    q->spool = spool;
    q->cur = g;
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->cond, NULL);
    q->nbuckets = 256;
    q->buckets = xcalloc(q->nbuckets, sizeof(*q->buckets));
    return q;
}

static void scan_cb(void *arg, const char *id)
{
    struct queue *q = arg;
    pthread_mutex_lock(&q->lock);
    /* a restart retries at once, every pending recipient */
    schedule_locked(q, id, wall_ms(), 1);
    pthread_mutex_unlock(&q->lock);
}

int queue_start(struct queue *q)
{
    if (q->threads)
        return 0;
    unsigned n = q->cur->cfg->queue.delivery_threads;
    if (n == 0)
        n = 1;
    if (spool_scan(q->spool, scan_cb, q) != 0)
        logkv(LOG_LVL_ERR, NULL, "queue.scan_failed", "error=%s",
              log_q((char[LOGQ_MAX]){0}, LOGQ_MAX, strerror(errno)));
    pthread_mutex_lock(&q->lock);
    size_t found = q->count;
    pthread_mutex_unlock(&q->lock);
    q->threads = xcalloc(n, sizeof(*q->threads));
    for (unsigned i = 0; i < n; i++) {
        if (pthread_create(&q->threads[i], NULL, delivery_thread, q) != 0) {
            logkv(LOG_LVL_ERR, NULL, "queue.thread_failed", "error=%s",
                  log_q((char[LOGQ_MAX]){0}, LOGQ_MAX, strerror(errno)));
            break;
        }
        thread_name(q->threads[i], "deliver");
        thread_background(q->threads[i]);
        q->nthreads++;
    }
    logkv(LOG_LVL_INFO, NULL, "queue.started", "threads=%u queued=%zu", q->nthreads, found);
    return q->nthreads ? 0 : -1;
}

void queue_submit(struct queue *q, const char *id)
{
    if (!q || !id || !qid_valid(id))
        return;
    pthread_mutex_lock(&q->lock);
    schedule_locked(q, id, wall_ms(), 1);
    pthread_mutex_unlock(&q->lock);
}

int queue_submit_held(struct queue *q, const char *id, const char *reason)
{
    struct op_out out;
    return operate(q, id, OP_HOLD, reason ? reason : "held at submission", 1, &out);
}

int queue_hold(struct queue *q, const char *id, const char *reason)
{
    struct op_out out;
    return operate(q, id, OP_HOLD, reason ? reason : "operator", 0, &out);
}

int queue_release(struct queue *q, const char *id)
{
    struct op_out out;
    return operate(q, id, OP_RELEASE, NULL, 0, &out);
}

int queue_delete(struct queue *q, const char *id)
{
    struct op_out out;
    return operate(q, id, OP_DELETE, NULL, 0, &out);
}

int queue_flush(struct queue *q, const char *id)
{
    size_t held;
    if (!q) {
        errno = EINVAL;
        return -1;
    }
    return flush(q, id, &held) < 0 ? -1 : 0;
}

int queue_reload(struct queue *q, struct config *cfg, struct errlist *errs)
{
    struct tgen *g = gen_new(cfg, errs);
    if (!g)
        return -1;
    struct tgen *dead = NULL;
    pthread_mutex_lock(&q->lock);
    struct tgen *old = q->cur;
    q->cur = g;
    gen_release_locked(old, &dead);
    /* routes may have changed: let waiting threads look again */
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
    gen_free(dead);
    return 0;
}

void queue_stop(struct queue *q)
{
    if (!q)
        return;
    pthread_mutex_lock(&q->lock);
    q->stopping = 1;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
    for (unsigned i = 0; i < q->nthreads; i++)
        pthread_join(q->threads[i], NULL);
    q->nthreads = 0;
    q->stopped = 1;
}

void queue_free(struct queue *q)
{
    if (!q)
        return;
    if (!q->stopped)
        queue_stop(q);
    for (size_t i = 0; i < q->nbuckets; i++) {
        for (struct qent *e = q->buckets[i], *next; e; e = next) {
            next = e->hnext;
            free_ent(e);
        }
    }
    free(q->buckets);
    free(q->heap);
    free(q->threads);
    struct tgen *dead = NULL;
    gen_release_locked(q->cur, &dead);
    gen_free(dead);
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->cond);
    free(q);
}

/* ---- the `queue` verb of the control socket ---------------------------------------- */

/* What the schedule says of one message. */
struct qview {
    char id[QID_LEN + 1];
    int64_t due_ms;
    int busy, held;
    int scheduled; /* in the heap */
};

static int cmp_view(const void *a, const void *b)
{
    return strcmp(((const struct qview *)a)->id, ((const struct qview *)b)->id);
}

/* Every known message (or only id), sorted by id = arrival. */
static struct qview *views(struct queue *q, const char *id, size_t *n)
{
    pthread_mutex_lock(&q->lock);
    struct qview *v = xcalloc(q->count ? q->count : 1, sizeof(*v));
    size_t k = 0;
    for (size_t b = 0; b < q->nbuckets; b++) {
        for (struct qent *e = q->buckets[b]; e && k < q->count; e = e->hnext) {
            if (id && strcmp(e->id, id) != 0)
                continue;
            memcpy(v[k].id, e->id, sizeof(v[k].id));
            v[k].due_ms = e->due_ms;
            v[k].busy = e->busy;
            v[k].held = e->held;
            v[k].scheduled = e->hidx != NOT_IN_HEAP;
            k++;
        }
    }
    pthread_mutex_unlock(&q->lock);
    qsort(v, k, sizeof(*v), cmp_view);
    *n = k;
    return v;
}

/* "45s", "12m", "3h05m", "2d04h" */
static void put_dur(struct strbuf *b, int64_t s)
{
    if (s < 0)
        s = 0;
    if (s < 60)
        sb_printf(b, "%llds", (long long)s);
    else if (s < 3600)
        sb_printf(b, "%lldm", (long long)(s / 60));
    else if (s < 86400)
        sb_printf(b, "%lldh%02lldm", (long long)(s / 3600), (long long)(s % 3600 / 60));
    else
        sb_printf(b, "%lldd%02lldh", (long long)(s / 86400), (long long)(s % 86400 / 3600));
}

/* A value from a message or a remote server, made safe for a terminal. */
static void put_safe(struct strbuf *b, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)(s ? s : "-"); *p; p++) {
        char c = *p >= 0x20 && *p != 0x7f ? (char)*p : '?';
        sb_append(b, &c, 1);
    }
}

static const char *view_state(const struct qview *v, const struct spool_msg *m)
{
    if (v->busy)
        return "running";
    if (v->held || m->held)
        return "held";
    return "queued";
}

static void put_next(struct strbuf *b, const struct qview *v, const struct spool_msg *m, int64_t now_ms)
{
    if (v->busy || v->held || m->held || !v->scheduled || v->due_ms == INT64_MAX) {
        sb_puts(b, "-");
    } else if (v->due_ms <= now_ms) {
        sb_puts(b, "now");
    } else {
        sb_puts(b, "in ");
        put_dur(b, (v->due_ms - now_ms + 999) / 1000);
    }
}

static void put_size(struct strbuf *b, uint64_t n)
{
    if (n < 10000)
        sb_printf(b, "%llu", (unsigned long long)n);
    else if (n < 10000ull * 1024)
        sb_printf(b, "%lluK", (unsigned long long)((n + 1023) / 1024));
    else
        sb_printf(b, "%lluM", (unsigned long long)((n + (1u << 20) - 1) >> 20));
}

static void put_col(struct strbuf *out, struct strbuf *cell, int width)
{
    sb_printf(out, "%-*s ", width, cell->s ? cell->s : "");
    sb_reset(cell);
}

static int ctl_list(struct queue *q, struct strbuf *out)
{
    size_t n, shown = 0, held = 0;
    struct qview *v = views(q, NULL, &n);
    int64_t now_ms = wall_ms();
    struct strbuf cell;
    sb_init(&cell);
    sb_puts(out, "ID               AGE    SIZE   PEND DONE FAIL STATE   NEXT     SENDER\n");
    for (size_t i = 0; i < n; i++) {
        struct spool_msg *m;
        char err[256];
        if (spool_msg_peek(q->spool, v[i].id, &m, err, sizeof(err)) != 0) {
            if (errno != ENOENT) {
                sb_printf(out, "%s (unreadable: ", v[i].id);
                put_safe(out, err);
                sb_puts(out, ")\n");
            }
            continue;
        }
        shown++;
        const char *st = view_state(&v[i], m);
        held += strcmp(st, "held") == 0;
        sb_printf(out, "%s ", v[i].id);
        put_dur(&cell, now_ms / 1000 - m->env.received);
        put_col(out, &cell, 6);
        put_size(&cell, m->env.size);
        put_col(out, &cell, 6);
        sb_printf(out, "%-4zu %-4zu %-4zu %-7s ", count_state(m, RCPT_PENDING), count_state(m, RCPT_DONE),
                  count_state(m, RCPT_FAILED), st);
        put_next(&cell, &v[i], m, now_ms);
        put_col(out, &cell, 8);
        sb_puts(out, "<");
        put_safe(out, m->env.mail_from);
        sb_puts(out, ">\n");
        spool_msg_close(m);
    }
    sb_printf(out, "%zu message%s, %zu held\n", shown, shown == 1 ? "" : "s", held);
    sb_free(&cell);
    free(v);
    return 0;
}

static void put_time(struct strbuf *b, int64_t t)
{
    char d[64];
    rfc5322_date((time_t)t, d, sizeof(d));
    sb_puts(b, d);
}

static int ctl_show(struct queue *q, const char *id, struct strbuf *out)
{
    size_t n;
    struct qview *v = qid_valid(id) ? views(q, id, &n) : NULL;
    struct spool_msg *m = NULL;
    char err[256];
    if (!v || n == 0 || spool_msg_peek(q->spool, id, &m, err, sizeof(err)) != 0) {
        sb_puts(out, "unknown queue id ");
        put_safe(out, id);
        if (v && n)
            sb_printf(out, " (%s)", errno == ENOENT ? "just removed" : "unreadable");
        sb_puts(out, "\n");
        free(v);
        return -1;
    }
    int64_t now_ms = wall_ms();
    const struct envelope *e = &m->env;
    sb_printf(out, "id: %s\nstate: %s\n", id, view_state(v, m));
    if (m->held) {
        sb_puts(out, "hold-reason: ");
        put_safe(out, m->hold_reason);
        sb_puts(out, "\n");
    }
    sb_puts(out, "next-try: ");
    put_next(out, v, m, now_ms);
    sb_puts(out, "\narrival: ");
    put_time(out, e->received);
    sb_puts(out, " (");
    put_dur(out, now_ms / 1000 - e->received);
    sb_printf(out, " ago)\nsize: %llu", (unsigned long long)e->size);
    static const char *const rets[] = {"-", "full", "hdrs"};
    const struct {
        const char *label, *value;
    } fields[] = {
        {"\nsender: <", e->mail_from}, {">\nauth-user: ", e->auth_user}, {"\nclient: ", e->client_ip},
        {" helo=", e->helo}, {" listener=", e->listener},
        {"\ndsn: ret=", rets[e->dsn_ret >= 0 && e->dsn_ret <= 2 ? e->dsn_ret : 0]}, {" envid=", e->envid},
    };
    for (size_t i = 0; i < ARRAY_LEN(fields); i++) {
        sb_puts(out, fields[i].label);
        put_safe(out, fields[i].value);
    }
    sb_printf(out, "\nrecipients: %zu (pending %zu, done %zu, failed %zu)\n", e->nrcpts, count_state(m, RCPT_PENDING),
              count_state(m, RCPT_DONE), count_state(m, RCPT_FAILED));
    static const char *const states[] = {"pending", "done", "failed"};
    for (size_t i = 0; i < e->nrcpts; i++) {
        sb_printf(out, "rcpt %zu <", i);
        put_safe(out, e->rcpts[i].addr);
        sb_printf(out, "> %s attempts=%u", states[m->state[i]], m->attempts[i]);
        if (m->state[i] == RCPT_PENDING && m->next_try[i] > 0) {
            sb_puts(out, " next-try=");
            put_time(out, m->next_try[i]);
        }
        if (m->last_try[i]) {
            sb_puts(out, " last-try=");
            put_time(out, m->last_try[i]);
        }
        unsigned rep = m->reported[i];
        if (rep)
            sb_printf(out, " reported=%s%s%s", rep & SPOOL_REPORTED_DELAYED ? "delayed" : "",
                      rep == (SPOOL_REPORTED_DELAYED | SPOOL_REPORTED_FAILED) ? "," : "",
                      rep & SPOOL_REPORTED_FAILED ? "failed" : "");
        if (e->rcpts[i].orcpt) {
            sb_puts(out, " orcpt=");
            put_safe(out, e->rcpts[i].orcpt);
        }
        sb_puts(out, "\n");
        if (m->last_reply[i]) {
            sb_puts(out, "  last-reply: ");
            put_safe(out, m->last_reply[i]);
            sb_puts(out, "\n");
        }
    }
    spool_msg_close(m);
    free(v);
    return 0;
}

static void put_op_result(struct strbuf *out, const char *id, const char *done, const char *unchanged,
                          const struct op_out *o)
{
    if (o->deferred)
        sb_printf(out, "%s: %s when the delivery in progress ends\n", id, done);
    else
        sb_printf(out, "%s: %s\n", id, o->changed ? done : unchanged);
}

static const char ctl_usage[] =
    "usage: queue list | show ID | flush [ID] | hold ID [REASON...] | release ID | delete ID\n";

int queue_control(void *arg, int argc, char **argv, struct strbuf *out)
{
    struct queue *q = arg;
    const char *sub = argc >= 2 ? argv[1] : "";
    const char *id = argc >= 3 ? argv[2] : NULL;
    struct op_out o;
    int rc;
    if (strcmp(sub, "list") == 0 && argc == 2)
        return ctl_list(q, out);
    if (strcmp(sub, "show") == 0 && argc == 3)
        return ctl_show(q, id, out);
    if (strcmp(sub, "flush") == 0 && argc <= 3) {
        size_t held;
        long nf = flush(q, id, &held);
        if (nf < 0) {
            sb_puts(out, "unknown queue id ");
            put_safe(out, id);
            sb_puts(out, "\n");
            return -1;
        }
        logkv(LOG_LVL_INFO, &(struct log_ctx){.qid = id}, "queue.flushed", "messages=%ld held_skipped=%zu", nf, held);
        if (id && held)
            sb_printf(out, "%s: held; release it to deliver it\n", id);
        else
            sb_printf(out, "flushed %ld message%s%s", nf, nf == 1 ? "" : "s", held ? "" : "\n");
        if (!id && held)
            sb_printf(out, " (%zu held left alone)\n", held);
        return 0;
    }
    enum qop op = strcmp(sub, "hold") == 0 && argc >= 3      ? OP_HOLD
                  : strcmp(sub, "release") == 0 && argc == 3 ? OP_RELEASE
                  : strcmp(sub, "delete") == 0 && argc == 3  ? OP_DELETE
                                                             : OP_NONE;
    if (op == OP_NONE) {
        sb_puts(out, ctl_usage);
        return -1;
    }
    struct strbuf reason;
    sb_init(&reason);
    for (int i = 3; i < argc; i++)
        sb_printf(&reason, "%s%s", i > 3 ? " " : "", argv[i]);
    rc = operate(q, id, op, reason.len ? reason.s : "operator", 0, &o);
    sb_free(&reason);
    if (rc != 0) {
        int e = errno;
        sb_puts(out, e == ENOENT || e == EINVAL ? "unknown queue id " : "cannot change ");
        put_safe(out, id);
        if (e != ENOENT && e != EINVAL)
            sb_printf(out, ": %s", strerror(e));
        sb_puts(out, "\n");
        return -1;
    }
    if (op == OP_HOLD)
        put_op_result(out, id, "held", "was already held", &o);
    else if (op == OP_RELEASE)
        put_op_result(out, id, "released", "was not held; due now", &o);
    else
        put_op_result(out, id, "deleted (no bounce)", "deleted", &o);
    return 0;
}
