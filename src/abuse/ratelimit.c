/* ratelimit: GCRA arithmetic and the bounded, sharded in-memory table of
 * buckets and blocks (see ratelimit.h). Each shard is an open-addressing
 * array (linear probing, backward-shift deletion, at most 3/4 full) under
 * its own mutex; a batch locks the shards of its keys in ascending order,
 * so batches are atomic and cannot deadlock. A full shard first reclaims
 * idle keys near a rotating hand, then evicts the key with the least state
 * left among the slots next to the new key's home. */
#include "abuse/ratelimit.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

#define RL_BATCH_MAX 16
#define SWEEP_SLOTS 32    /* slots the hand looks at before evicting */
#define EVICT_WINDOW 8    /* slots around the home slot compared for eviction */
#define SHARD_MIN_KEYS 1024
#define SHARDS_MAX 64

struct rl_entry {
    uint64_t h; /* 0 = empty slot */
    int64_t v;  /* TAT of a bucket, or the end of a block */
    char name[RL_NAME_MAX];
};

struct rl_shard {
    pthread_mutex_t lock;
    struct rl_entry *e;
    size_t mask, n, max, hand;
    uint64_t evictions, evicted_live;
} __attribute__((aligned(64)));

struct rl_table {
    uint8_t key[16];
    unsigned nshards;
    unsigned shift; /* shard = h >> shift (nshards > 1) */
    size_t max;
    struct rl_shard *s;
};

/* ---- SipHash-2-4 ------------------------------------------------------------ */

static uint64_t rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void sipround(uint64_t v[4])
{
    v[0] += v[1];
    v[1] = rotl(v[1], 13);
    v[1] ^= v[0];
    v[0] = rotl(v[0], 32);
    v[2] += v[3];
    v[3] = rotl(v[3], 16);
    v[3] ^= v[2];
    v[0] += v[3];
    v[3] = rotl(v[3], 21);
    v[3] ^= v[0];
    v[2] += v[1];
    v[1] = rotl(v[1], 17);
    v[1] ^= v[2];
    v[2] = rotl(v[2], 32);
}

uint64_t rl_siphash(const uint8_t key[16], const void *data, size_t n)
{
    const uint8_t *p = data;
    uint64_t k0 = le64(key), k1 = le64(key + 8);
    uint64_t v[4] = {0x736f6d6570736575ULL ^ k0, 0x646f72616e646f6dULL ^ k1, 0x6c7967656e657261ULL ^ k0,
                     0x7465646279746573ULL ^ k1};
    size_t full = n & ~(size_t)7;
    for (size_t i = 0; i < full; i += 8) {
        uint64_t m = le64(p + i);
        v[3] ^= m;
        sipround(v);
        sipround(v);
        v[0] ^= m;
    }
    uint64_t b = (uint64_t)n << 56;
    for (size_t i = 0; i < (n & 7); i++)
        b |= (uint64_t)p[full + i] << (8 * i);
    v[3] ^= b;
    sipround(v);
    sipround(v);
    v[0] ^= b;
    v[2] ^= 0xff;
    for (int i = 0; i < 4; i++)
        sipround(v);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}

/* ---- GCRA ------------------------------------------------------------------- */

static uint64_t ceil_div(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

int rl_gcra(int64_t tat, int64_t now, const struct rl_op *op, int64_t *new_tat, struct rl_op *r)
{
    uint64_t limit = op->limit, cost = op->cost;
    r->denied = 0;
    r->retry_us = 0;
    r->reset_us = 0;
    r->used = 0;
    *new_tat = tat;
    if (limit == 0)
        return 0; /* no limit */
    uint64_t interval = op->period_us / limit; /* one event's worth of time */
    if (interval == 0)
        interval = 1;
    uint64_t tau = interval * limit; /* a full bucket; <= period */
    uint64_t backlog = tat > now ? (uint64_t)(tat - now) : 0;
    if (cost > limit) {
        r->denied = 1;
        r->retry_us = RL_NEVER;
        r->reset_us = backlog;
        r->used = ceil_div(backlog, interval);
        return 1;
    }
    uint64_t after = backlog + cost * interval;
    if (after > tau) {
        r->denied = 1;
        r->retry_us = after - tau;
        r->reset_us = backlog;
        r->used = ceil_div(backlog, interval);
        return 1;
    }
    *new_tat = now + (int64_t)after;
    r->reset_us = after;
    r->used = ceil_div(after, interval);
    return 0;
}

/* ---- the table -------------------------------------------------------------- */

struct rl_table *rl_table_new(size_t max_entries)
{
    if (max_entries < 64)
        max_entries = 64;
    struct rl_table *t = xcalloc(1, sizeof(*t));
    if (random_bytes(t->key, sizeof(t->key)) != 0) {
        for (size_t i = 0; i < sizeof(t->key); i++) /* no getrandom: still works, just guessable */
            t->key[i] = (uint8_t)(now_ms() >> (i % 8));
    }
    unsigned ns = 1, bits = 0;
    while (ns < SHARDS_MAX && max_entries / (ns * 2) >= SHARD_MIN_KEYS) {
        ns *= 2;
        bits++;
    }
    t->nshards = ns;
    t->shift = 64 - bits;
    t->max = max_entries;
    t->s = aligned_alloc(64, sizeof(*t->s) * ns);
    if (!t->s)
        abort();
    memset(t->s, 0, sizeof(*t->s) * ns);
    size_t per = (max_entries + ns - 1) / ns;
    size_t cap = 16;
    while (cap < per + per / 3 + 1)
        cap *= 2;
    for (unsigned i = 0; i < ns; i++) {
        struct rl_shard *s = &t->s[i];
        pthread_mutex_init(&s->lock, NULL);
        s->e = xcalloc(cap, sizeof(*s->e));
        s->mask = cap - 1;
        s->max = per;
    }
    return t;
}

void rl_table_free(struct rl_table *t)
{
    if (!t)
        return;
    for (unsigned i = 0; i < t->nshards; i++) {
        pthread_mutex_destroy(&t->s[i].lock);
        free(t->s[i].e);
    }
    free(t->s);
    free(t);
}

static uint64_t key_hash(const struct rl_table *t, const char *key)
{
    size_t n = strnlen(key, RL_KEY_MAX);
    uint64_t h = rl_siphash(t->key, key, n);
    return h ? h : 1;
}

static unsigned shard_of(const struct rl_table *t, uint64_t h)
{
    return t->nshards > 1 ? (unsigned)(h >> t->shift) : 0;
}

/* The slot holding h, or the empty slot where it would go. */
static size_t find(const struct rl_shard *s, uint64_t h, int *found)
{
    size_t i = (size_t)h & s->mask;
    for (;;) {
        uint64_t eh = s->e[i].h;
        if (eh == h || eh == 0) {
            *found = eh == h;
            return i;
        }
        i = (i + 1) & s->mask;
    }
}

/* Backward-shift deletion: later entries of the run move up so that no
 * probe sequence is broken. */
static void slot_delete(struct rl_shard *s, size_t i)
{
    size_t j = i;
    for (;;) {
        j = (j + 1) & s->mask;
        if (s->e[j].h == 0)
            break;
        size_t home = (size_t)s->e[j].h & s->mask;
        /* entry j may fill the hole at i unless its home lies in (i, j] */
        int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            s->e[i] = s->e[j];
            i = j;
        }
    }
    memset(&s->e[i], 0, sizeof(s->e[i]));
    s->n--;
}

/* Makes room in a full shard for a key whose home slot is `home`. */
static void make_room(struct rl_shard *s, size_t home, int64_t now)
{
    for (size_t k = 0; k < SWEEP_SLOTS && s->n >= s->max; k++) {
        size_t i = s->hand;
        if (s->e[i].h != 0 && s->e[i].v <= now)
            slot_delete(s, i); /* idle: nothing lost; look at i again next */
        else
            s->hand = (s->hand + 1) & s->mask;
    }
    if (s->n < s->max)
        return;
    size_t victim = SIZE_MAX;
    for (size_t k = 0, i = home; victim == SIZE_MAX || k < EVICT_WINDOW; k++, i = (i + 1) & s->mask) {
        if (s->e[i].h != 0 && (victim == SIZE_MAX || s->e[i].v < s->e[victim].v))
            victim = i;
    }
    s->evictions++;
    if (s->e[victim].v > now)
        s->evicted_live++;
    slot_delete(s, victim);
}

static void put(struct rl_shard *s, uint64_t h, const char *name, int64_t v, int64_t now)
{
    int found;
    size_t i = find(s, h, &found);
    if (found) {
        s->e[i].v = v;
        return;
    }
    if (s->n >= s->max) {
        make_room(s, (size_t)h & s->mask, now);
        i = find(s, h, &found);
    }
    s->e[i].h = h;
    s->e[i].v = v;
    str_copy(s->e[i].name, name, sizeof(s->e[i].name));
    s->n++;
}

/* Locks (or unlocks) the distinct shards of a batch, in ascending order. */
static void lock_shards(struct rl_table *t, const unsigned *idx, size_t n, int lock)
{
    unsigned v[RL_BATCH_MAX];
    memcpy(v, idx, n * sizeof(v[0]));
    for (size_t i = 1; i < n; i++) {
        unsigned x = v[i];
        size_t k = i;
        for (; k > 0 && v[k - 1] > x; k--)
            v[k] = v[k - 1];
        v[k] = x;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (m == 0 || v[m - 1] != v[i])
            v[m++] = v[i];
    for (size_t i = 0; i < m; i++) {
        if (lock)
            pthread_mutex_lock(&t->s[v[i]].lock);
        else
            pthread_mutex_unlock(&t->s[v[m - 1 - i]].lock);
    }
}

int rl_apply(struct rl_table *t, struct rl_op *ops, size_t n, int64_t now)
{
    if (n > RL_BATCH_MAX)
        abort(); /* a programming error: batches are built from fixed tables */
    uint64_t h[RL_BATCH_MAX];
    unsigned sh[RL_BATCH_MAX] = {0};
    int64_t nt[RL_BATCH_MAX];
    for (size_t i = 0; i < n; i++) {
        h[i] = key_hash(t, ops[i].key);
        sh[i] = shard_of(t, h[i]);
    }
    lock_shards(t, sh, n, 1);
    int denied = 0;
    for (size_t i = 0; i < n; i++) {
        struct rl_op *op = &ops[i];
        struct rl_shard *s = &t->s[sh[i]];
        int found;
        size_t slot = find(s, h[i], &found);
        int64_t v = found ? s->e[slot].v : 0;
        nt[i] = v;
        switch (op->kind) {
        case RL_CONSUME:
        case RL_PEEK:
            denied |= rl_gcra(v, now, op, &nt[i], op);
            break;
        case RL_GET: {
            struct rl_op probe = *op;
            probe.cost = 0;
            rl_gcra(v, now, &probe, &nt[i], op);
            break;
        }
        case RL_BLOCKED:
            op->denied = v > now;
            op->retry_us = op->reset_us = v > now ? (uint64_t)(v - now) : 0;
            op->used = v > now;
            denied |= op->denied;
            break;
        case RL_BLOCK:
        case RL_RESET:
            op->denied = 0;
            op->retry_us = op->reset_us = op->used = 0;
            break;
        }
    }
    for (size_t i = 0; i < n; i++) {
        struct rl_op *op = &ops[i];
        struct rl_shard *s = &t->s[sh[i]];
        if (op->kind == RL_CONSUME && !denied && nt[i] > now) {
            put(s, h[i], op->key, nt[i], now);
        } else if (op->kind == RL_BLOCK) {
            put(s, h[i], op->key, now + (int64_t)op->period_us, now);
            op->reset_us = op->period_us;
            op->used = 1;
        } else if (op->kind == RL_RESET) {
            int found;
            size_t slot = find(s, h[i], &found);
            if (found)
                slot_delete(s, slot);
        }
    }
    lock_shards(t, sh, n, 0);
    return denied;
}

void rl_stats(struct rl_table *t, struct rl_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->max_entries = t->max;
    for (unsigned i = 0; i < t->nshards; i++) {
        struct rl_shard *s = &t->s[i];
        pthread_mutex_lock(&s->lock);
        out->entries += s->n;
        out->evictions += s->evictions;
        out->evicted_live += s->evicted_live;
        pthread_mutex_unlock(&s->lock);
    }
}

void rl_list(struct rl_table *t, const char *prefix, int64_t now, size_t max,
             void (*fn)(void *arg, const char *name, uint64_t left_us), void *arg)
{
    size_t pl = strlen(prefix), done = 0;
    for (unsigned i = 0; i < t->nshards && done < max; i++) {
        struct rl_shard *s = &t->s[i];
        pthread_mutex_lock(&s->lock);
        for (size_t k = 0; k <= s->mask && done < max; k++) {
            const struct rl_entry *e = &s->e[k];
            if (e->h != 0 && e->v > now && strncmp(e->name, prefix, pl) == 0) {
                fn(arg, e->name, (uint64_t)(e->v - now));
                done++;
            }
        }
        pthread_mutex_unlock(&s->lock);
    }
}
