/* redis: the shared-counter backend (`ratelimit { backend redis://... }`).
 * A batch of ratelimit ops (ratelimit.h) runs as one Lua script in Redis,
 * so it is atomic across every submitd node that shares the server, and
 * its times come from the Redis server's clock (TIME), so the nodes' clocks
 * need not agree. Keys are "submitd:" + the op's key and expire when their
 * bucket is full again (or their block ends). Calls block (up to the
 * configured timeout): they run on job threads and on the control thread,
 * never on an event loop. A small pool keeps one connection per thread. */
#ifndef SUBMITD_REDIS_H
#define SUBMITD_REDIS_H

#include <stddef.h>

#include "abuse/ratelimit.h"

#define RL_REDIS_PREFIX "submitd:"

struct rl_redis;

struct rl_redis *rl_redis_new(void);
void rl_redis_free(struct rl_redis *r);
/* Where to connect; a change drops the pooled connections (each is closed
 * when it is next returned). */
void rl_redis_configure(struct rl_redis *r, const char *host, unsigned port, unsigned db, unsigned timeout_ms,
                        unsigned max_idle);
/* Runs the batch like rl_apply (results in ops). Returns 0 with *denied
 * set, or -1 when Redis could not be asked (err says why). */
int rl_redis_apply(struct rl_redis *r, struct rl_op *ops, size_t n, int *denied, char *err, size_t errlen);

#endif
