/* authcache: a short-lived cache of successful password verifications, so
 * that a client that logs in again and again (one message per connection)
 * does not pay an argon2id/yescrypt verification each time.
 *
 * What is stored is never the password: an entry is HMAC-SHA256 under a
 * random key made at start (never written anywhere) of
 * login NUL password NUL stored-hash, plus an expiry time. A password
 * change changes the stored hash and so misses the cache; a reload clears
 * it; entries expire after `ttl_ms`. Only successes are cached. Lookups
 * compare digests in constant time. Thread-safe (striped locks). */
#ifndef SUBMITD_AUTHCACHE_H
#define SUBMITD_AUTHCACHE_H

#include <stddef.h>
#include <stdint.h>

struct authcache;

/* slots: table size (rounded up to a power of two); ttl_ms 0 = disabled. */
struct authcache *authcache_new(size_t slots, uint64_t ttl_ms);
void authcache_free(struct authcache *c);
/* 1 when (login, password, hash) was verified within the ttl. */
int authcache_check(struct authcache *c, const char *login, const char *password, const char *hash);
void authcache_put(struct authcache *c, const char *login, const char *password, const char *hash);
void authcache_clear(struct authcache *c);
void authcache_set_ttl(struct authcache *c, uint64_t ttl_ms);

#endif
