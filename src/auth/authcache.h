/* authcache: a short-lived cache of successful password verifications, so
 * that a client that logs in again and again (one message per connection)
 * does not pay an argon2id/yescrypt verification each time.
 *
 * What is stored is never the password: an entry is HMAC-SHA256 under a
 * random key made at start (never written anywhere) of
 * login NUL password NUL stored-hash, plus an expiry time. A password
 * change changes the stored hash and so misses the cache; a reload clears
 * it; entries expire after `ttl_ms`, unless a hit near the end had the
 * password verified again (authcache_refresh). Only successes are cached.
 * Lookups compare digests in constant time. Thread-safe (striped locks). */
#ifndef SUBMITD_AUTHCACHE_H
#define SUBMITD_AUTHCACHE_H

#include <stddef.h>
#include <stdint.h>

struct authcache;

/* slots: table size (rounded up to a power of two); ttl_ms 0 = disabled. */
struct authcache *authcache_new(size_t slots, uint64_t ttl_ms);
void authcache_free(struct authcache *c);
enum { AUTHCACHE_MISS = 0, AUTHCACHE_HIT = 1, AUTHCACHE_REFRESH = 2 };
/* AUTHCACHE_HIT (or _REFRESH) when (login, password, hash) was verified
 * within the ttl. AUTHCACHE_REFRESH: a hit in the last quarter of the
 * entry's life, and this caller is the one (per entry) that should renew
 * it with authcache_refresh(), so that a credential in steady use never
 * expires under a burst of logins. */
int authcache_check(struct authcache *c, const char *login, const char *password, const char *hash);
void authcache_put(struct authcache *c, const char *login, const char *password, const char *hash);
/* Verifies password against hash again on a thread of q (never on the
 * caller's) and, when it still matches, puts a fresh entry. Takes its own
 * reference to acc, which holds login and hash; copies the password and
 * wipes the copy. Logs auth.cache_refresh at debug level. */
struct accounts;
struct jobq;
void authcache_refresh(struct authcache *c, struct jobq *q, struct accounts *acc, const char *login,
                       const char *password, const char *hash);
void authcache_clear(struct authcache *c);
void authcache_set_ttl(struct authcache *c, uint64_t ttl_ms);

#endif
