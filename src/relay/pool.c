/* pool: the connections of one relay transport instance (see relay.h).
 * Counts every open connection (busy or idle) per destination address and
 * in total against max-connections-per-host / max-connections; keeps idle
 * connections per destination for reuse until idle-timeout or
 * max-messages-per-connection; a thread that finds no free slot waits on a
 * condition variable up to limit-wait. When the total is full but another
 * destination has idle connections, the oldest of them is closed to make
 * room. Connections are closed (QUIT) outside the lock. */
#include "relay/relay.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

struct pdest {
    char key[64];
    unsigned count;          /* open connections, busy + idle */
    struct relay_conn *idle; /* most recently used first */
};

struct relay_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned max_total, max_dest, max_msgs, idle_ms, wait_ms;
    unsigned total;
    struct pdest *d;
    size_t nd, cap;
};

struct relay_pool *relay_pool_new(const struct relay_opts *o)
{
    struct relay_pool *p = xcalloc(1, sizeof(*p));
    pthread_mutex_init(&p->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&p->cv, &ca);
    pthread_condattr_destroy(&ca);
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
    pthread_cond_destroy(&p->cv);
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

int relay_pool_acquire(struct relay_pool *p, const char *key, struct relay_conn **conn)
{
    *conn = NULL;
    struct relay_conn *dead = NULL;
    int r = -1;
    pthread_mutex_lock(&p->mu);
    uint64_t deadline = now_ms() + p->wait_ms;
    for (;;) {
        uint64_t now = now_ms();
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
        if (now >= deadline)
            break;
        struct timespec ts = {.tv_sec = (time_t)(deadline / 1000), .tv_nsec = (long)(deadline % 1000) * 1000000L};
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
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
    } else {
        dead = conn;
        quit = reusable;
        if (d) {
            d->count--;
            p->total--;
            drop_if_empty(p, d);
        }
    }
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    if (dead)
        relay_close(dead, quit);
}
