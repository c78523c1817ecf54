/* iptable: thread-safe counters keyed by client IP address (connection
 * counts per IP, recent AUTH failures per IP). A chained hash table with a
 * fixed bucket count and a bounded number of entries; when full, expired
 * entries are pruned and, failing that, the addition is refused (counted
 * as the maximum so that limits still trip). */
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "smtp/server.h"

#define IPT_BUCKETS 4096

struct ipent {
    struct ipent *next;
    uint8_t key[17]; /* family byte + 16 address bytes */
    unsigned count;
    uint64_t last;
};

struct iptable {
    pthread_mutex_t lock;
    struct ipent *b[IPT_BUCKETS];
    size_t n, max;
};

static void ip_key(const struct sockaddr *sa, uint8_t key[17])
{
    memset(key, 0, 17);
    if (sa->sa_family == AF_INET) {
        key[0] = 4;
        memcpy(key + 1, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        const uint8_t *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(a, mapped, 12) == 0) {
            key[0] = 4;
            memcpy(key + 1, a + 12, 4);
        } else {
            key[0] = 6;
            memcpy(key + 1, a, 16);
        }
    }
}

static size_t ip_hash(const uint8_t key[17])
{
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < 17; i++) {
        h ^= key[i];
        h *= 1099511628211ull;
    }
    return (size_t)(h % IPT_BUCKETS);
}

struct iptable *iptable_new(size_t max_entries)
{
    struct iptable *t = xcalloc(1, sizeof(*t));
    pthread_mutex_init(&t->lock, NULL);
    t->max = max_entries ? max_entries : 100000;
    return t;
}

void iptable_free(struct iptable *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < IPT_BUCKETS; i++) {
        struct ipent *e = t->b[i];
        while (e) {
            struct ipent *n = e->next;
            free(e);
            e = n;
        }
    }
    pthread_mutex_destroy(&t->lock);
    free(t);
}

static int expired(const struct ipent *e, uint64_t now, uint64_t ttl)
{
    return ttl && now - e->last > ttl;
}

static void prune(struct iptable *t, uint64_t now, uint64_t ttl)
{
    if (!ttl)
        return;
    for (size_t i = 0; i < IPT_BUCKETS; i++) {
        struct ipent **pp = &t->b[i];
        while (*pp) {
            struct ipent *e = *pp;
            if (expired(e, now, ttl)) {
                *pp = e->next;
                free(e);
                t->n--;
            } else {
                pp = &e->next;
            }
        }
    }
}

unsigned iptable_add(struct iptable *t, const struct sockaddr *sa, int delta, uint64_t ttl_ms)
{
    uint8_t key[17];
    ip_key(sa, key);
    uint64_t now = now_ms();
    size_t h = ip_hash(key);
    unsigned result;
    pthread_mutex_lock(&t->lock);
    struct ipent **pp = &t->b[h], *e = NULL;
    while (*pp) {
        if (memcmp((*pp)->key, key, 17) == 0) {
            e = *pp;
            break;
        }
        pp = &(*pp)->next;
    }
    if (e && expired(e, now, ttl_ms))
        e->count = 0;
    if (!e) {
        if (delta <= 0) {
            pthread_mutex_unlock(&t->lock);
            return 0;
        }
        if (t->n >= t->max)
            prune(t, now, ttl_ms);
        if (t->n >= t->max) {
            pthread_mutex_unlock(&t->lock);
            return (unsigned)-1;
        }
        e = xcalloc(1, sizeof(*e));
        memcpy(e->key, key, 17);
        e->next = t->b[h];
        t->b[h] = e;
        t->n++;
        pp = &t->b[h];
    }
    long c = (long)e->count + delta;
    e->count = c < 0 ? 0 : (unsigned)c;
    e->last = now;
    result = e->count;
    if (e->count == 0) {
        /* unlink: find again since pp may point at the bucket head */
        struct ipent **q = &t->b[h];
        while (*q != e)
            q = &(*q)->next;
        *q = e->next;
        free(e);
        t->n--;
    }
    pthread_mutex_unlock(&t->lock);
    return result;
}

unsigned iptable_get(struct iptable *t, const struct sockaddr *sa, uint64_t ttl_ms)
{
    uint8_t key[17];
    ip_key(sa, key);
    uint64_t now = now_ms();
    unsigned c = 0;
    pthread_mutex_lock(&t->lock);
    for (struct ipent *e = t->b[ip_hash(key)]; e; e = e->next) {
        if (memcmp(e->key, key, 17) == 0) {
            c = expired(e, now, ttl_ms) ? 0 : e->count;
            break;
        }
    }
    pthread_mutex_unlock(&t->lock);
    return c;
}

void iptable_clear(struct iptable *t, const struct sockaddr *sa)
{
    uint8_t key[17];
    ip_key(sa, key);
    size_t h = ip_hash(key);
    pthread_mutex_lock(&t->lock);
    for (struct ipent **pp = &t->b[h]; *pp; pp = &(*pp)->next) {
        if (memcmp((*pp)->key, key, 17) == 0) {
            struct ipent *e = *pp;
            *pp = e->next;
            free(e);
            t->n--;
            break;
        }
    }
    pthread_mutex_unlock(&t->lock);
}
