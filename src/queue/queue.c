/* queue: the delivery scheduler (see queue.h). Owns the in-memory schedule
 * (a min-heap of (due time, id) plus a hash of every known id), the
 * delivery threads, the transport instances of the current config (a
 * refcounted "generation" swapped on reload), routing recipients to
 * transports, and turning delivery results into status-log records,
 * retries with exponential backoff, failures and removal. Everything
 * durable lives in the spool; this state is rebuilt by a scan at start. */
#include "queue/queue.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
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
    struct qent *hnext;
};

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

/* Schedules id at due_ms (earlier wins when already scheduled). */
static void schedule_locked(struct queue *q, const char *id, int64_t due_ms, int force)
{
    struct qent *e = hash_find(q, id);
    if (!e) {
        e = xcalloc(1, sizeof(*e));
        memcpy(e->id, id, QID_LEN + 1);
        e->hidx = NOT_IN_HEAP;
        e->due_ms = due_ms;
        e->force = force;
        hash_add(q, e);
        heap_push(q, e);
    } else if (e->busy) {
        e->again = 1;
        e->force |= force;
    } else {
        e->force |= force;
        if (due_ms < e->due_ms) {
            e->due_ms = due_ms;
            heap_up(q, e->hidx);
        }
    }
    pthread_cond_signal(&q->cond);
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
    char qab[LOGQ_MAX], qtb[LOGQ_MAX], qf[LOGQ_MAX];
    const char *qa = log_q(qab, sizeof(qab), addr);
    const char *qt = log_q(qtb, sizeof(qtb), res->text);
    int rc = 0;
    if (res->status == DR_OK) {
        if (record)
            rc = spool_mark_done(q->spool, m, r);
        else
            m->state[r] = RCPT_DONE;
        logkv(LOG_LVL_INFO, &lc, "delivered", "rcpt=%s transport=%s reply=%s attempts=%u", qa, tname, qt,
              m->attempts[r] + 1);
    } else if (is_retry(cfg, m, res, now)) {
        int64_t next = now + backoff(&cfg->queue, m->attempts[r] + 1);
        rc = spool_mark_retry(q->spool, m, r, next, res->text);
        logkv(LOG_LVL_WARN, &lc, "deferred", "rcpt=%s transport=%s reply=%s attempts=%u next_retry=%lld delay=%llds",
              qa, tname, qt, m->attempts[r], (long long)next, (long long)(next - now));
    } else {
        const char *why = res->status == DR_TEMP ? "lifetime_expired" : "permanent";
        if (record)
            rc = spool_mark_failed(q->spool, m, r, res->text);
        else
            m->state[r] = RCPT_FAILED;
        logkv(LOG_LVL_WARN, &lc, "failed", "rcpt=%s transport=%s reply=%s attempts=%u reason=%s", qa, tname, qt,
              m->attempts[r] + 1, why);
        /* DSNs are not generated yet; never for the null sender or NOTIFY=NEVER */
        if (m->env.mail_from && *m->env.mail_from && !(m->env.rcpts[r].notify & DSN_NOTIFY_NEVER))
            logkv(LOG_LVL_WARN, &lc, "bounce.needed", "from=%s rcpt=%s reply=%s note=\"not generated yet\"",
                  log_q(qf, sizeof(qf), m->env.mail_from), qa, qt);
    }
    if (rc != 0)
        logkv(LOG_LVL_ERR, &lc, "queue.status_failed", "rcpt=%s error=%s", qa,
              log_q(qf, sizeof(qf), strerror(errno)));
}

enum run_res { RUN_KEEP, RUN_GONE };

/* Delivers what is due of message id with generation g. RUN_KEEP sets
 * *next_s (unix time of the next attempt). */
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
    lc.user = m->env.auth_user;
    size_t n = m->env.nrcpts;
    size_t *due = xcalloc(n, sizeof(*due));
    long *tidx = xcalloc(n, sizeof(*tidx));
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
    /* will every recipient be final after this run? */
    size_t pending = 0;
    for (size_t i = 0; i < n; i++)
        pending += m->state[i] == RCPT_PENDING;
    int finishing = pending == ndue;
    for (size_t k = 0; k < ndue && finishing; k++)
        if (is_retry(cfg, m, tidx[k] >= 0 ? &jres[pos[k]] : &res[k], now))
            finishing = 0;
    for (size_t k = 0; k < ndue; k++) {
        const struct delivery_result *r = tidx[k] >= 0 ? &jres[pos[k]] : &res[k];
        const char *tname = tidx[k] >= 0 && cfg->transports[tidx[k]].name ? cfg->transports[tidx[k]].name : "-";
        apply_result(q, cfg, m, due[k], tname, r, now, !finishing);
    }
    free(jobs);
    free(order);
    free(jres);
    free(pos);
    free(res);
    free(due);
    free(tidx);
    enum run_res rr = RUN_KEEP;
    if (spool_msg_complete(m)) {
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
        int64_t next = INT64_MAX;
        for (size_t i = 0; i < n; i++)
            if (m->state[i] == RCPT_PENDING && m->next_try[i] < next)
                next = m->next_try[i];
        *next_s = next;
    }
    spool_msg_close(m);
    return rr;
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

static void *delivery_thread(void *arg)
{
    struct queue *q = arg;
    pthread_mutex_lock(&q->lock);
    while (!q->stopping) {
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

        struct tgen *dead = NULL;
        pthread_mutex_lock(&q->lock);
        gen_release_locked(g, &dead);
        e->busy = 0;
        if (rr == RUN_GONE && !e->again) {
            hash_del(q, e);
            free(e);
        } else {
            now = wall_ms();
            if (e->again || rr == RUN_GONE)
                e->due_ms = now;
            else
                e->due_ms = next_s > INT64_MAX / 1000 ? INT64_MAX : next_s * 1000;
            e->again = 0;
            heap_push(q, e);
        }
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
            free(e);
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
