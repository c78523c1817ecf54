/* authcache: see authcache.h. */
#include "auth/authcache.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "auth/accounts.h"
#include "auth/passwd.h"
#include "core/jobq.h"
#include "core/log.h"
#include "core/util.h"

#define STRIPES 64

struct slot {
    uint8_t digest[32];
    uint64_t expires;   /* monotonic ms; 0 = empty */
    uint64_t refreshed; /* == expires: this entry's renewal was handed out */
};

struct authcache {
    uint8_t key[32];
    EVP_MAC *mac;       /* fetched once */
    EVP_MAC_CTX *keyed; /* HMAC-SHA256 with the key absorbed; never updated
                           itself: each call updates a copy (a fresh init
                           would fetch SHA-256 and hash the key again) */
    size_t mask;
    struct slot *slots;
    _Atomic uint64_t ttl_ms;
    pthread_mutex_t locks[STRIPES];
};

struct authcache *authcache_new(size_t slots, uint64_t ttl_ms)
{
    struct authcache *c = xcalloc(1, sizeof(*c));
    size_t n = 1024;
    while (n < slots)
        n <<= 1;
    c->mask = n - 1;
    c->slots = xcalloc(n, sizeof(*c->slots));
    atomic_store(&c->ttl_ms, ttl_ms);
    c->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    c->keyed = c->mac ? EVP_MAC_CTX_new(c->mac) : NULL;
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0), OSSL_PARAM_END};
    if (random_bytes(c->key, sizeof(c->key)) != 0 || !c->keyed ||
        !EVP_MAC_init(c->keyed, c->key, sizeof(c->key), params))
        atomic_store(&c->ttl_ms, 0); /* no good key or no HMAC: never cache */
    for (int i = 0; i < STRIPES; i++)
        pthread_mutex_init(&c->locks[i], NULL);
    return c;
}

void authcache_free(struct authcache *c)
{
    if (!c)
        return;
    mem_wipe(c->key, sizeof(c->key));
    EVP_MAC_CTX_free(c->keyed);
    EVP_MAC_free(c->mac);
    free(c->slots);
    for (int i = 0; i < STRIPES; i++)
        pthread_mutex_destroy(&c->locks[i]);
    free(c);
}

static int digest(const struct authcache *c, const char *login, const char *password, const char *hash,
                  uint8_t out[32])
{
    /* login NUL password NUL hash, fed piecewise (no copy of the secret) */
    EVP_MAC_CTX *ctx = c->keyed ? EVP_MAC_CTX_dup(c->keyed) : NULL;
    size_t len = 0;
    int ok = ctx && EVP_MAC_update(ctx, (const unsigned char *)login, strlen(login) + 1) &&
             EVP_MAC_update(ctx, (const unsigned char *)password, strlen(password) + 1) &&
             EVP_MAC_update(ctx, (const unsigned char *)hash, strlen(hash)) && EVP_MAC_final(ctx, out, &len, 32) &&
             len == 32;
    EVP_MAC_CTX_free(ctx);
    return ok ? 0 : -1;
}

static size_t slot_of(const struct authcache *c, const uint8_t d[32])
{
    uint64_t h;
    memcpy(&h, d, sizeof(h));
    return (size_t)h & c->mask;
}

int authcache_check(struct authcache *c, const char *login, const char *password, const char *hash)
{
    if (!c || atomic_load(&c->ttl_ms) == 0)
        return 0;
    uint8_t d[32];
    if (digest(c, login, password, hash, d) != 0)
        return 0;
    size_t i = slot_of(c, d);
    pthread_mutex_t *l = &c->locks[i % STRIPES];
    uint64_t now = now_ms();
    uint64_t ttl = atomic_load(&c->ttl_ms);
    pthread_mutex_lock(l);
    struct slot *sl = &c->slots[i];
    int r = sl->expires > now && mem_eq_ct(sl->digest, d, 32) ? AUTHCACHE_HIT : AUTHCACHE_MISS;
    if (r == AUTHCACHE_HIT && sl->expires - now < ttl / 4 && sl->refreshed != sl->expires) {
        sl->refreshed = sl->expires; /* one renewal per entry, even if it fails */
        r = AUTHCACHE_REFRESH;
    }
    pthread_mutex_unlock(l);
    mem_wipe(d, sizeof(d));
    return r;
}

void authcache_put(struct authcache *c, const char *login, const char *password, const char *hash)
{
    uint64_t ttl = c ? atomic_load(&c->ttl_ms) : 0;
    if (ttl == 0)
        return;
    uint8_t d[32];
    if (digest(c, login, password, hash, d) != 0)
        return;
    size_t i = slot_of(c, d);
    pthread_mutex_t *l = &c->locks[i % STRIPES];
    pthread_mutex_lock(l);
    memcpy(c->slots[i].digest, d, 32);
    c->slots[i].expires = now_ms() + ttl;
    c->slots[i].refreshed = 0;
    pthread_mutex_unlock(l);
    mem_wipe(d, sizeof(d));
}

struct refresh_job {
    struct authcache *c;
    struct accounts *acc;
    const char *login, *hash; /* in acc */
    char pass[];
};

static void refresh_work(void *arg)
{
    struct refresh_job *j = arg;
    int ok = passwd_verify(j->hash, j->pass) == 1;
    if (ok)
        authcache_put(j->c, j->login, j->pass, j->hash);
    mem_wipe(j->pass, strlen(j->pass));
    if (log_enabled(LOG_LVL_DEBUG)) {
        char q[LOGQ_MAX];
        logkv(LOG_LVL_DEBUG, NULL, "auth.cache_refresh", "login=%s renewed=%s", log_q(q, sizeof(q), j->login),
              ok ? "yes" : "no");
    }
    accounts_unref(j->acc);
    free(j);
}

void authcache_refresh(struct authcache *c, struct jobq *q, struct accounts *acc, const char *login,
                       const char *password, const char *hash)
{
    size_t n = strlen(password);
    struct refresh_job *j = xcalloc(1, sizeof(*j) + n + 1);
    j->c = c;
    j->acc = accounts_ref(acc);
    j->login = login;
    j->hash = hash;
    memcpy(j->pass, password, n + 1);
    jobq_submit(q, NULL, refresh_work, NULL, j); /* no home: nothing to hand back */
}

void authcache_clear(struct authcache *c)
{
    for (int s = 0; s < STRIPES; s++)
        pthread_mutex_lock(&c->locks[s]);
    memset(c->slots, 0, (c->mask + 1) * sizeof(*c->slots));
    for (int s = STRIPES - 1; s >= 0; s--)
        pthread_mutex_unlock(&c->locks[s]);
}

void authcache_set_ttl(struct authcache *c, uint64_t ttl_ms)
{
    atomic_store(&c->ttl_ms, ttl_ms);
}
