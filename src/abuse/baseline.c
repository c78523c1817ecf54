/* baseline: the per-account profile table (see baseline.h): a hash table
 * sized for max_profiles with chaining, a least-recently-used list for
 * eviction, fixed windows with an EWMA baseline, a 1024-bit linear-counting
 * map of recipients and small address lists. One mutex. */
#include "abuse/baseline.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "abuse/ratelimit.h"
#include "core/util.h"

#define RCPT_BITS 1024
#define EWMA_DIV 8.0     /* a finished window moves the baseline 1/8 of the way */
#define IDLE_ROLLS_MAX 64 /* idle windows applied at once (the baseline is ~0 after that) */
#define LOGIN_MAX 256

struct slot {
    uint32_t h; /* hash of the address */
    uint32_t t; /* seconds on the table's clock + 1; 0 = empty */
};

struct profile {
    struct profile *hnext, *newer, *older;
    uint64_t h;
    char *login; /* lower-case */
    int64_t win; /* index of the current window */
    unsigned msgs;
    uint8_t bits[RCPT_BITS / 8];
    double base_msgs, base_rcpts;
    int64_t alerted_win; /* window of `alerted` */
    int alerted;         /* BL_TRIP_* reported in that window */
    struct slot ips[BL_IPS_MAX];
    struct slot known[BL_KNOWN_MAX];
};

struct bl_table {
    pthread_mutex_t lock;
    uint8_t key[16];
    struct profile **b;
    size_t mask;
    struct profile *newest, *oldest;
    size_t n, max;
};

/* ---- arithmetic ----------------------------------------------------------- */

/* Natural logarithm for x >= 1 without libm: x = 2^k * y, y in [1, 2),
 * ln y = 2 atanh((y - 1) / (y + 1)) by its series (|t| <= 1/3). */
static double ln_ge1(double x)
{
    int k = 0;
    while (x >= 2.0) {
        x /= 2.0;
        k++;
    }
    double t = (x - 1.0) / (x + 1.0), t2 = t * t, term = t, s = 0.0;
    for (int i = 1; i <= 21; i += 2) {
        s += term / i;
        term *= t2;
    }
    return k * 0.69314718055994530942 + 2.0 * s;
}

unsigned bl_estimate(unsigned zero_bits, unsigned m)
{
    if (m == 0)
        return 0;
    if (zero_bits == 0)
        zero_bits = 1; /* saturated: the largest answer the map can give */
    double est = m * ln_ge1((double)m / zero_bits);
    return (unsigned)(est + 0.5);
}

static unsigned zero_bits(const uint8_t *bits)
{
    unsigned ones = 0;
    for (size_t i = 0; i < RCPT_BITS / 8; i++)
        ones += (unsigned)__builtin_popcount(bits[i]);
    return RCPT_BITS - ones;
}

static uint32_t secs(int64_t now)
{
    return (uint32_t)(now / 1000000) + 1;
}

/* ---- the table ------------------------------------------------------------ */

struct bl_table *bl_new(size_t max_profiles, const uint8_t *key)
{
    struct bl_table *t = xcalloc(1, sizeof(*t));
    pthread_mutex_init(&t->lock, NULL);
    if (key)
        memcpy(t->key, key, sizeof(t->key));
    else if (random_bytes(t->key, sizeof(t->key)) != 0)
        memset(t->key, 0x5a, sizeof(t->key));
    t->max = max_profiles ? max_profiles : 1;
    size_t cap = 16;
    while (cap < t->max)
        cap *= 2;
    t->b = xcalloc(cap, sizeof(*t->b));
    t->mask = cap - 1;
    return t;
}

static void profile_free(struct profile *p)
{
    free(p->login);
    free(p);
}

void bl_free(struct bl_table *t)
{
    if (!t)
        return;
    struct profile *p = t->newest;
    while (p) {
        struct profile *o = p->older;
        profile_free(p);
        p = o;
    }
    free(t->b);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

static void lru_unlink(struct bl_table *t, struct profile *p)
{
    if (p->newer)
        p->newer->older = p->older;
    else
        t->newest = p->older;
    if (p->older)
        p->older->newer = p->newer;
    else
        t->oldest = p->newer;
    p->newer = p->older = NULL;
}

static void lru_front(struct bl_table *t, struct profile *p)
{
    p->older = t->newest;
    p->newer = NULL;
    if (t->newest)
        t->newest->newer = p;
    t->newest = p;
    if (!t->oldest)
        t->oldest = p;
}

static void unhash(struct bl_table *t, struct profile *p)
{
    struct profile **pp = &t->b[p->h & t->mask];
    while (*pp != p)
        pp = &(*pp)->hnext;
    *pp = p->hnext;
}

/* The profile of `login` (NULL when absent and !create); most recent now. */
static struct profile *get(struct bl_table *t, const char *login, int create, int64_t now, const struct bl_params *par)
{
    char low[LOGIN_MAX + 1];
    str_copy(low, login, sizeof(low));
    str_lower(low);
    uint64_t h = rl_siphash(t->key, low, strlen(low));
    struct profile *p = t->b[h & t->mask];
    while (p && !(p->h == h && strcmp(p->login, low) == 0))
        p = p->hnext;
    if (!p && !create)
        return NULL;
    if (p) {
        lru_unlink(t, p);
        lru_front(t, p);
        return p;
    }
    if (t->n >= t->max && t->oldest) {
        struct profile *victim = t->oldest;
        lru_unlink(t, victim);
        unhash(t, victim);
        profile_free(victim);
        t->n--;
    }
    p = xcalloc(1, sizeof(*p));
    p->h = h;
    p->login = xstrdup(low);
    p->win = par->window_us ? now / (int64_t)par->window_us : 0;
    p->alerted_win = -1;
    p->hnext = t->b[h & t->mask];
    t->b[h & t->mask] = p;
    lru_front(t, p);
    t->n++;
    return p;
}

/* Moves the profile to the window of `now`, folding finished windows into
 * the baseline. */
static void roll(struct profile *p, int64_t now, const struct bl_params *par)
{
    int64_t w = par->window_us ? now / (int64_t)par->window_us : 0;
    if (w <= p->win)
        return;
    double rc = bl_estimate(zero_bits(p->bits), RCPT_BITS);
    p->base_msgs += (p->msgs - p->base_msgs) / EWMA_DIV;
    p->base_rcpts += (rc - p->base_rcpts) / EWMA_DIV;
    for (int64_t k = 1; k < w - p->win && k <= IDLE_ROLLS_MAX; k++) {
        p->base_msgs -= p->base_msgs / EWMA_DIV;
        p->base_rcpts -= p->base_rcpts / EWMA_DIV;
    }
    p->win = w;
    p->msgs = 0;
    memset(p->bits, 0, sizeof(p->bits));
}

static uint32_t addr_hash(const struct bl_table *t, const char *s)
{
    uint64_t h = rl_siphash(t->key, s, strlen(s));
    return (uint32_t)(h ^ (h >> 32)) | 1u;
}

/* Records address h at time s in a slot list (replacing the oldest). */
static void slot_touch(struct slot *v, size_t n, uint32_t h, uint32_t s)
{
    size_t oldest = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i].h == h) {
            v[i].t = s;
            return;
        }
        if (v[i].t < v[oldest].t)
            oldest = i;
    }
    v[oldest].h = h;
    v[oldest].t = s;
}

static unsigned slot_count(const struct slot *v, size_t n, uint32_t s, uint64_t window_us)
{
    uint64_t w = window_us / 1000000;
    unsigned c = 0;
    for (size_t i = 0; i < n; i++)
        c += v[i].t != 0 && (uint64_t)(s - v[i].t) < (w ? w : 1);
    return c;
}

static unsigned limit_of(unsigned min, unsigned multiple, double base)
{
    double l = base * multiple;
    if (l < min)
        return min;
    return l > 4e9 ? 4000000000u : (unsigned)(l + 0.999999);
}

/* Fills f from p; with `mark`, trips seen for the first time in this
 * window are reported in f->fresh and remembered. */
static void figures(struct profile *p, int64_t now, const struct bl_params *par, int mark, struct bl_figures *f)
{
    memset(f, 0, sizeof(*f));
    uint32_t s = secs(now);
    f->messages = p->msgs;
    f->recipients = bl_estimate(zero_bits(p->bits), RCPT_BITS);
    f->base_messages = p->base_msgs;
    f->base_recipients = p->base_rcpts;
    f->limit_messages = limit_of(par->min_messages, par->multiple, p->base_msgs);
    f->limit_recipients = limit_of(par->min_recipients, par->multiple, p->base_rcpts);
    f->ips = slot_count(p->ips, BL_IPS_MAX, s, par->ip_window_us);
    f->known = slot_count(p->known, BL_KNOWN_MAX, s, par->known_us);
    if (f->messages > f->limit_messages)
        f->tripped |= BL_TRIP_MESSAGES;
    if (f->recipients > f->limit_recipients)
        f->tripped |= BL_TRIP_RECIPIENTS;
    if (par->max_ips && f->ips > par->max_ips)
        f->tripped |= BL_TRIP_IPS;
    if (!mark)
        return;
    if (p->alerted_win != p->win) {
        p->alerted_win = p->win;
        p->alerted = 0;
    }
    f->fresh = f->tripped & ~p->alerted;
    p->alerted |= f->tripped;
}

void bl_message(struct bl_table *t, const char *login, const char *ip, const char *const *rcpts, size_t nrcpts,
                int64_t now, const struct bl_params *par, struct bl_figures *f)
{
    pthread_mutex_lock(&t->lock);
    struct profile *p = get(t, login, 1, now, par);
    roll(p, now, par);
    if (p->msgs < UINT32_MAX)
        p->msgs++;
    for (size_t i = 0; i < nrcpts; i++) {
        char low[LOGIN_MAX + 64];
        str_copy(low, rcpts[i], sizeof(low));
        str_lower(low);
        uint64_t h = rl_siphash(t->key, low, strlen(low));
        p->bits[(h % RCPT_BITS) / 8] |= (uint8_t)(1u << (h % 8));
    }
    if (ip && *ip)
        slot_touch(p->ips, BL_IPS_MAX, addr_hash(t, ip), secs(now));
    figures(p, now, par, 1, f);
    pthread_mutex_unlock(&t->lock);
}

void bl_login(struct bl_table *t, const char *login, const char *ip, int64_t now, const struct bl_params *par,
              struct bl_figures *f)
{
    pthread_mutex_lock(&t->lock);
    struct profile *p = get(t, login, 1, now, par);
    roll(p, now, par);
    uint32_t h = addr_hash(t, ip), s = secs(now);
    slot_touch(p->ips, BL_IPS_MAX, h, s);
    slot_touch(p->known, BL_KNOWN_MAX, h, s);
    figures(p, now, par, 1, f);
    pthread_mutex_unlock(&t->lock);
}

int bl_known(struct bl_table *t, const char *login, const char *ip, int64_t now, const struct bl_params *par)
{
    pthread_mutex_lock(&t->lock);
    struct profile *p = get(t, login, 0, now, par);
    int known = 0;
    if (p && par->known_us) {
        uint32_t h = addr_hash(t, ip), s = secs(now);
        uint64_t w = par->known_us / 1000000;
        for (size_t i = 0; i < BL_KNOWN_MAX && !known; i++)
            known = p->known[i].h == h && p->known[i].t != 0 && (uint64_t)(s - p->known[i].t) < (w ? w : 1);
    }
    pthread_mutex_unlock(&t->lock);
    return known;
}

int bl_peek(struct bl_table *t, const char *login, int64_t now, const struct bl_params *par, struct bl_figures *f)
{
    pthread_mutex_lock(&t->lock);
    struct profile *p = get(t, login, 0, now, par);
    if (p) {
        roll(p, now, par);
        figures(p, now, par, 0, f);
    }
    pthread_mutex_unlock(&t->lock);
    return p != NULL;
}

int bl_reset(struct bl_table *t, const char *login)
{
    struct bl_params none;
    memset(&none, 0, sizeof(none));
    pthread_mutex_lock(&t->lock);
    struct profile *p = get(t, login, 0, 0, &none);
    if (p) {
        p->msgs = 0;
        memset(p->bits, 0, sizeof(p->bits));
        memset(p->ips, 0, sizeof(p->ips));
        p->alerted = 0;
    }
    pthread_mutex_unlock(&t->lock);
    return p != NULL;
}

size_t bl_count(struct bl_table *t)
{
    pthread_mutex_lock(&t->lock);
    size_t n = t->n;
    pthread_mutex_unlock(&t->lock);
    return n;
}
