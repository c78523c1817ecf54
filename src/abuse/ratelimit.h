/* ratelimit: the counters behind every abuse limit. Each key (such as
 * "m:alice@example.com", messages of that account) is a GCRA bucket (the
 * generic cell rate algorithm: a token bucket kept as one timestamp, the
 * theoretical arrival time TAT): `limit` events per `period` with a burst
 * of `limit`, one event's worth coming back every period/limit. A block
 * (brute force) is a key whose value is the time it ends. The in-memory
 * table is sharded, bounded (open addressing, 48 bytes per key) and evicts
 * expired keys first, then the key with the least state left; keys are
 * hashed with SipHash under a random per-table key, so clients cannot
 * aim collisions. Times are microseconds on a clock the caller passes in
 * (monotonic in the daemon, anything in tests). The Redis backend
 * (redis.h) runs the same batches with the same arithmetic in Lua. */
#ifndef SUBMITD_RATELIMIT_H
#define SUBMITD_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

#define RL_KEY_MAX 320   /* a key: a short prefix, then a login (<= 256) or an address */
#define RL_NAME_MAX 32   /* the copy of a key kept for listings (truncated) */
#define RL_NEVER UINT64_MAX

enum rl_opkind {
    RL_CONSUME = 1, /* take `cost`; all-or-nothing with the batch's other checks */
    RL_PEEK,        /* would `cost` fit now? nothing is stored */
    RL_BLOCKED,     /* a check: denied while the key is blocked */
    RL_BLOCK,       /* block the key for period_us (always done, after the checks) */
    RL_RESET,       /* forget the key (always done) */
    RL_GET          /* read: used and reset_us (never denies) */
};

struct rl_op {
    enum rl_opkind kind;
    const char *key;
    uint64_t limit;     /* CONSUME/PEEK/GET: events per period; 0 = no limit */
    uint64_t period_us; /* CONSUME/PEEK/GET: the period; BLOCK: the block's length */
    uint64_t cost;      /* CONSUME/PEEK: events this op counts */
    /* results */
    int denied;
    uint64_t retry_us;  /* denied: until the same op would pass (RL_NEVER: cost > limit) */
    uint64_t reset_us;  /* until every token is back / the block ends */
    uint64_t used;      /* tokens in use after the op (a block: 1) */
};

/* One GCRA step at `now` for a key whose stored TAT is `tat` (0, or any
 * value <= now, for an idle key). Fills r's results; *new_tat is what to
 * store when the op is allowed. Returns r->denied. */
int rl_gcra(int64_t tat, int64_t now, const struct rl_op *op, int64_t *new_tat, struct rl_op *r);

struct rl_table;

/* A table for at most max_entries keys (>= 64). */
struct rl_table *rl_table_new(size_t max_entries);
void rl_table_free(struct rl_table *t);

/* Runs a batch atomically at `now` (> 0): first every check (CONSUME,
 * PEEK, BLOCKED); when none is denied the CONSUMEs are stored; then BLOCK
 * and RESET ops are done either way. Returns 1 when a check was denied. */
int rl_apply(struct rl_table *t, struct rl_op *ops, size_t n, int64_t now);

struct rl_stats {
    size_t entries;         /* keys stored (some may be idle) */
    size_t max_entries;
    uint64_t evictions;     /* keys dropped to make room */
    uint64_t evicted_live;  /* ... of which still held state */
};
void rl_stats(struct rl_table *t, struct rl_stats *out);

/* Calls fn for every key whose stored name starts with `prefix` and whose
 * value is still ahead of now (a live bucket or block), at most `max`
 * times. Names are the stored, possibly truncated copies. */
void rl_list(struct rl_table *t, const char *prefix, int64_t now, size_t max,
             void (*fn)(void *arg, const char *name, uint64_t left_us), void *arg);

/* SipHash-2-4 of data under a 16-byte key. */
uint64_t rl_siphash(const uint8_t key[16], const void *data, size_t n);

#endif
