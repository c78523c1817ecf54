/* pool: the connections of one relay transport instance (see relay.h).
 * Counts every open connection (busy or idle) per destination address and
 * in total against max-connections-per-host / max-connections; keeps idle
 * connections per destination for reuse until idle-timeout or
 * max-messages-per-connection; a thread that finds no free slot waits on a
 * in a FIFO of waiters up to limit-wait. When the total is full but
 * another destination has idle connections, the oldest of them is closed to
 * make room. Connections are closed (QUIT) outside the lock.
 *
 * Each waiter sleeps on its own condition variable, and a release wakes
 * only the waiter that can use what it frees (the first one for the same
 * destination, else the first one whose destination has room): with 16
 * delivery threads and 5 connections to one smarthost, a broadcast woke
 * eleven threads per message so that one could go on. */
#include "relay/relay.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

struct pdest {
    char key[64];
    unsigned count;          /* open connections, busy + idle */
    struct relay_conn *idle; /* most recently used first */
};

/* A thread waiting in relay_pool_acquire (on its stack, in p->waiters). */
struct pwaiter {
    const char *key;
    pthread_cond_t cv;
    int woken;
    struct pwaiter *next;
};

struct relay_pool {
    pthread_mutex_t mu;
    struct pwaiter *waiters; /* oldest first */
    unsigned max_total, max_dest, max_msgs, idle_ms, wait_ms;
    unsigned total;
    struct pdest *d;
    size_t nd, cap;
};

struct relay_pool *relay_pool_new(const struct relay_opts *o)
{
    struct relay_pool *p = xcalloc(1, sizeof(*p));
    pthread_mutex_init(&p->mu, NULL);
    p->max_total = o->max_conn ? o->max_conn : 1;
    p->max_dest = o->max_conn_per_dest ? o->max_conn_per_dest : 1;
    p->max_msgs = o->max_msgs_per_conn ? o->max_msgs_per_conn : 1;
    p->idle_ms = o->idle_ms;
    p->wait_ms = o->limit_wait_ms;
    return p;
}

static void close_list(struct relay_conn *l)
{
    while (l) {
        struct relay_conn *next = l->next;
        relay_close(l, 1);
        l = next;
    }
}

void relay_pool_free(struct relay_pool *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->nd; i++)
        close_list(p->d[i].idle);
    free(p->d);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

static struct pdest *find(struct relay_pool *p, const char *key)
{
    for (size_t i = 0; i < p->nd; i++)
        if (strcmp(p->d[i].key, key) == 0)
            return &p->d[i];
    return NULL;
}

static struct pdest *find_add(struct relay_pool *p, const char *key)
{
    struct pdest *d = find(p, key);
    if (d)
        return d;
    if (p->nd == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 8;
        p->d = xrealloc(p->d, p->cap * sizeof(*p->d));
    }
    d = &p->d[p->nd++];
    memset(d, 0, sizeof(*d));
    str_copy(d->key, key, sizeof(d->key));
    return d;
}

/* Drops a destination without connections (keeps the array small). */
static void drop_if_empty(struct relay_pool *p, struct pdest *d)
{
    if (d->count || d->idle)
        return;
    size_t i = (size_t)(d - p->d);
    p->d[i] = p->d[--p->nd];
}

/* Moves idle connections past idle-timeout onto *dead. */
static void reap(struct relay_pool *p, uint64_t now, struct relay_conn **dead)
{
    for (size_t i = 0; i < p->nd;) {
        struct pdest *d = &p->d[i];
        struct relay_conn **pp = &d->idle;
        while (*pp) {
            struct relay_conn *c = *pp;
            if (c->idle_since_ms + p->idle_ms <= now) {
                *pp = c->next;
                c->next = *dead;
                *dead = c;
                d->count--;
                p->total--;
            } else {
                pp = &c->next;
            }
        }
        size_t before = p->nd;
        drop_if_empty(p, d);
        if (p->nd == before)
            i++;
    }
}

/* Closes the oldest idle connection of a destination other than `key`
 * onto *dead. 1 when one was found. */
static int evict_other(struct relay_pool *p, const char *key, struct relay_conn **dead)
{
    struct pdest *best = NULL;
    struct relay_conn **bestpp = NULL;
    for (size_t i = 0; i < p->nd; i++) {
        struct pdest *d = &p->d[i];
        if (strcmp(d->key, key) == 0)
            continue;
        for (struct relay_conn **pp = &d->idle; *pp; pp = &(*pp)->next)
            if (!bestpp || (*pp)->idle_since_ms < (*bestpp)->idle_since_ms) {
                best = d;
                bestpp = pp;
            }
    }
    if (!bestpp)
        return 0;
    struct relay_conn *c = *bestpp;
    *bestpp = c->next;
    c->next = *dead;
    *dead = c;
    best->count--;
    p->total--;
    drop_if_empty(p, best);
    return 1;
}

/* Wakes the first waiter for `key` (an idle connection or a slot of that
 * destination was freed); with any_room also, failing that, the first
 * waiter whose destination is below max-connections-per-host (a slot of
 * the total was freed). Under the lock. */
static void wake_one(struct relay_pool *p, const char *key, int any_room)
{
    struct pwaiter *pick = NULL;
    for (struct pwaiter *w = p->waiters; w && !pick; w = w->next)
        if (!w->woken && key && strcmp(w->key, key) == 0)
            pick = w;
    for (struct pwaiter *w = p->waiters; w && !pick && any_room; w = w->next) {
        const struct pdest *d = find(p, w->key);
        if (!w->woken && (!d || d->count < p->max_dest || d->idle))
            pick = w;
    }
    if (pick) {
        pick->woken = 1;
        pthread_cond_signal(&pick->cv);
    }
}

int relay_pool_acquire(struct relay_pool *p, const char *key, struct relay_conn **conn)
{
    *conn = NULL;
    struct relay_conn *dead = NULL;
    int r = -1;
    pthread_mutex_lock(&p->mu);
    uint64_t deadline = now_ms() + p->wait_ms;
    struct pwaiter me = {.key = key};
    int queued = 0;
    for (;;) {
        uint64_t now = now_ms();
        unsigned before = p->total;
        reap(p, now, &dead);
        struct pdest *d = find(p, key);
        if (d && d->idle) {
            *conn = d->idle;
            d->idle = (*conn)->next;
            (*conn)->next = NULL;
            r = 1;
            break;
        }
        if (!d || d->count < p->max_dest) {
            if (p->total < p->max_total) {
                d = find_add(p, key);
                d->count++;
                p->total++;
                r = 0;
                break;
            }
            if (evict_other(p, key, &dead))
                continue;
        }
        if (p->total < before)
            wake_one(p, NULL, 1); /* reaping freed room another waiter may use */
        if (now >= deadline)
            break;
        if (!queued) {
            pthread_condattr_t ca;
            pthread_condattr_init(&ca);
            pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
            pthread_cond_init(&me.cv, &ca);
            pthread_condattr_destroy(&ca);
            struct pwaiter **pp = &p->waiters;
            while (*pp)
                pp = &(*pp)->next;
            *pp = &me;
            queued = 1;
        }
        me.woken = 0;
        struct timespec ts = {.tv_sec = (time_t)(deadline / 1000), .tv_nsec = (long)(deadline % 1000) * 1000000L};
        pthread_cond_timedwait(&me.cv, &p->mu, &ts);
    }
    if (queued) {
        struct pwaiter **pp = &p->waiters;
        while (*pp != &me)
            pp = &(*pp)->next;
        *pp = me.next;
        /* a wake-up meant for us that we did not use goes to the next one */
        if (me.woken && r < 0)
            wake_one(p, key, 1);
        pthread_cond_destroy(&me.cv);
    }
    pthread_mutex_unlock(&p->mu);
    close_list(dead);
    return r;
}

void relay_pool_release(struct relay_pool *p, const char *key, struct relay_conn *conn, int reusable)
{
    struct relay_conn *dead = NULL;
    int quit = 0;
    pthread_mutex_lock(&p->mu);
    struct pdest *d = find(p, key);
    if (conn && reusable && p->idle_ms > 0 && conn->nmsgs < p->max_msgs && d) {
        conn->idle_since_ms = now_ms();
        conn->next = d->idle;
        d->idle = conn;
        wake_one(p, key, 1); /* or a waiter that will evict it for room */
    } else {
        dead = conn;
        quit = reusable;
        if (d) {
            d->count--;
            p->total--;
            drop_if_empty(p, d);
        }
        wake_one(p, key, 1);
    }
    pthread_mutex_unlock(&p->mu);
    if (dead)
        relay_close(dead, quit);
}
