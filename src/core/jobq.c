/* jobq: thread pools for blocking work, completions returned to the event
 * loop that submitted the job (see jobq.h). A home is a mutex-protected
 * list of finished jobs plus an event that a pool thread makes active;
 * event_active() is thread-safe because libevent threading is enabled
 * (evthread_use_pthreads) before any base is made. */
#include "core/jobq.h"

#include <pthread.h>
#include <stdlib.h>

#include "core/util.h"

struct job {
    struct job *next;
    struct jobq_home *home;
    void (*work)(void *);
    void (*done)(void *);
    void *arg;
};

struct jobq {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct job *head, *tail;
    int stopping;
    unsigned nthreads;
    pthread_t *threads;
};

struct jobq_home {
    pthread_mutex_t lock;
    struct job *head, *tail;
    struct event *ev;
};

static void home_push(struct jobq_home *h, struct job *j)
{
    j->next = NULL;
    pthread_mutex_lock(&h->lock);
    if (h->tail)
        h->tail->next = j;
    else
        h->head = j;
    h->tail = j;
    pthread_mutex_unlock(&h->lock);
    event_active(h->ev, EV_READ, 0);
}

static void *worker_main(void *arg)
{
    struct jobq *q = arg;
    for (;;) {
        pthread_mutex_lock(&q->lock);
        while (!q->head && !q->stopping)
            pthread_cond_wait(&q->cond, &q->lock);
        struct job *j = q->head;
        if (!j) {
            pthread_mutex_unlock(&q->lock);
            return NULL;
        }
        q->head = j->next;
        if (!q->head)
            q->tail = NULL;
        pthread_mutex_unlock(&q->lock);
        j->work(j->arg);
        if (j->home)
            home_push(j->home, j);
        else {
            if (j->done)
                j->done(j->arg);
            free(j);
        }
    }
}

struct jobq *jobq_new(unsigned nthreads, const char *name)
{
    struct jobq *q = xcalloc(1, sizeof(*q));
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->cond, NULL);
    if (nthreads == 0)
        nthreads = 1;
    q->threads = xcalloc(nthreads, sizeof(pthread_t));
    for (unsigned i = 0; i < nthreads; i++) {
        if (pthread_create(&q->threads[i], NULL, worker_main, q) != 0)
            break;
        thread_name(q->threads[i], name);
        thread_background(q->threads[i]); /* auth hashing, commits, Redis: the loops come first */
        q->nthreads++;
    }
    if (q->nthreads == 0) {
        free(q->threads);
        pthread_mutex_destroy(&q->lock);
        pthread_cond_destroy(&q->cond);
        free(q);
        return NULL;
    }
    return q;
}

void jobq_free(struct jobq *q)
{
    if (!q)
        return;
    pthread_mutex_lock(&q->lock);
    q->stopping = 1;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
    for (unsigned i = 0; i < q->nthreads; i++)
        pthread_join(q->threads[i], NULL);
    free(q->threads);
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->cond);
    free(q);
}

static void home_cb(evutil_socket_t fd, short what, void *arg)
{
    struct jobq_home *h = arg;
    (void)fd;
    (void)what;
    pthread_mutex_lock(&h->lock);
    struct job *j = h->head;
    h->head = h->tail = NULL;
    pthread_mutex_unlock(&h->lock);
    while (j) {
        struct job *next = j->next;
        if (j->done)
            j->done(j->arg);
        free(j);
        j = next;
    }
}

struct jobq_home *jobq_home_new(struct event_base *base)
{
    struct jobq_home *h = xcalloc(1, sizeof(*h));
    pthread_mutex_init(&h->lock, NULL);
    h->ev = event_new(base, -1, 0, home_cb, h);
    if (!h->ev) {
        pthread_mutex_destroy(&h->lock);
        free(h);
        return NULL;
    }
    return h;
}

void jobq_home_free(struct jobq_home *h)
{
    if (!h)
        return;
    /* Run completions that arrived but were not dispatched yet. */
    home_cb(-1, 0, h);
    event_free(h->ev);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

void jobq_home_post(struct jobq_home *home, void (*done)(void *), void *arg)
{
    struct job *j = xcalloc(1, sizeof(*j));
    j->home = home;
    j->done = done;
    j->arg = arg;
    home_push(home, j);
}

void jobq_submit(struct jobq *q, struct jobq_home *home, void (*work)(void *), void (*done)(void *), void *arg)
{
    struct job *j = xcalloc(1, sizeof(*j));
    j->home = home;
    j->work = work;
    j->done = done;
    j->arg = arg;
    pthread_mutex_lock(&q->lock);
    if (q->tail)
        q->tail->next = j;
    else
        q->head = j;
    q->tail = j;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
}
