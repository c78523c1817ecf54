/* redis: ratelimit batches as a Lua script over hiredis (see redis.h):
 * the connection pool (a generation number retires connections made
 * before a reconfiguration), connecting with timeouts, SELECT, loading the
 * script (EVALSHA, reloaded after NOSCRIPT) and decoding its answer. The
 * script's arithmetic is rl_gcra()'s, in microseconds of Redis time. */
#include "abuse/redis.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "core/util.h"

#define BATCH_MAX 16
#define NUM_LEN 24

/* ARGV per op: kind, limit, period (µs), cost. Returns {denied, {{d, retry,
 * reset, used}, ...}}; retry -1 = never. Kinds as enum rl_opkind. */
static const char script[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local out, nt, denied = {}, {}, 0\n"
    "for i = 1, #KEYS do\n"
    "  local kind, limit = tonumber(ARGV[4*i-3]), tonumber(ARGV[4*i-2])\n"
    "  local period, cost = tonumber(ARGV[4*i-1]), tonumber(ARGV[4*i])\n"
    "  local v = tonumber(redis.call('GET', KEYS[i]) or '0') or 0\n"
    "  local d, retry, reset, used = 0, 0, 0, 0\n"
    "  if kind == 1 or kind == 2 or kind == 6 then\n"
    "    if kind == 6 then cost = 0 end\n"
    "    if limit > 0 then\n"
    "      local iv = math.floor(period / limit)\n"
    "      if iv < 1 then iv = 1 end\n"
    "      local backlog = 0\n"
    "      if v > now then backlog = v - now end\n"
    "      local after = backlog + cost * iv\n"
    "      if cost > limit then\n"
    "        d, retry, reset, used = 1, -1, backlog, math.ceil(backlog / iv)\n"
    "      elseif after > iv * limit then\n"
    "        d, retry, reset, used = 1, after - iv * limit, backlog, math.ceil(backlog / iv)\n"
    "      else\n"
    "        nt[i], reset, used = now + after, after, math.ceil(after / iv)\n"
    "      end\n"
    "    end\n"
    "    if kind == 6 then d = 0 end\n"
    "  elseif kind == 3 and v > now then\n"
    "    d, retry, reset, used = 1, v - now, v - now, 1\n"
    "  end\n"
    "  if d == 1 then denied = 1 end\n"
    "  out[i] = {d, retry, reset, used}\n"
    "end\n"
    "for i = 1, #KEYS do\n"
    "  local kind, period = tonumber(ARGV[4*i-3]), tonumber(ARGV[4*i-1])\n"
    "  if kind == 1 and denied == 0 and nt[i] and nt[i] > now then\n"
    "    redis.call('SET', KEYS[i], string.format('%d', nt[i]), 'PX', math.ceil((nt[i] - now) / 1000) + 1)\n"
    "  elseif kind == 4 then\n"
    "    redis.call('SET', KEYS[i], string.format('%d', now + period), 'PX', math.ceil(period / 1000) + 1)\n"
    "    out[i] = {0, 0, period, 1}\n"
    "  elseif kind == 5 then\n"
    "    redis.call('DEL', KEYS[i])\n"
    "  end\n"
    "end\n"
    "return {denied, out}\n";

struct conn {
    redisContext *c;
    unsigned gen;
    char sha[64];
};

struct rl_redis {
    pthread_mutex_t lock;
    char *host;
    unsigned port, db, timeout_ms, max_idle;
    unsigned gen;
    struct conn *idle;
    size_t nidle;
};

struct rl_redis *rl_redis_new(void)
{
    struct rl_redis *r = xcalloc(1, sizeof(*r));
    pthread_mutex_init(&r->lock, NULL);
    r->idle = xcalloc(64, sizeof(*r->idle));
    return r;
}

static void conn_close(struct conn *c)
{
    if (c->c)
        redisFree(c->c);
    c->c = NULL;
}

void rl_redis_free(struct rl_redis *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->nidle; i++)
        conn_close(&r->idle[i]);
    free(r->idle);
    free(r->host);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

void rl_redis_configure(struct rl_redis *r, const char *host, unsigned port, unsigned db, unsigned timeout_ms,
                        unsigned max_idle)
{
    pthread_mutex_lock(&r->lock);
    int same = r->host && host && strcmp(r->host, host) == 0 && r->port == port && r->db == db &&
               r->timeout_ms == timeout_ms;
    if (!same) {
        free(r->host);
        r->host = host ? xstrdup(host) : NULL;
        r->port = port;
        r->db = db;
        r->timeout_ms = timeout_ms;
        r->gen++;
    }
    r->max_idle = max_idle < 64 ? max_idle : 64;
    pthread_mutex_unlock(&r->lock);
}

static int reply_error(redisReply *rep, const char *what, char *err, size_t errlen)
{
    if (!rep) {
        snprintf(err, errlen, "%s: no reply", what);
        return -1;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "%s: %.*s", what, (int)(rep->len < 200 ? rep->len : 200), rep->str);
        return -1;
    }
    return 0;
}

static int load_script(struct conn *c, char *err, size_t errlen)
{
    redisReply *rep = redisCommand(c->c, "SCRIPT LOAD %s", script);
    int rc = reply_error(rep, "SCRIPT LOAD", err, errlen);
    if (rc == 0 && (rep->type != REDIS_REPLY_STRING || rep->len >= sizeof(c->sha))) {
        snprintf(err, errlen, "SCRIPT LOAD: unexpected reply");
        rc = -1;
    }
    if (rc == 0)
        memcpy(c->sha, rep->str, rep->len + 1);
    if (rep)
        freeReplyObject(rep);
    return rc;
}

/* A pooled connection, or a new one. 0 or -1. */
static int take(struct rl_redis *r, struct conn *out, char *err, size_t errlen)
{
    pthread_mutex_lock(&r->lock);
    while (r->nidle > 0) {
        struct conn c = r->idle[--r->nidle];
        if (c.gen == r->gen) {
            pthread_mutex_unlock(&r->lock);
            *out = c;
            return 0;
        }
        conn_close(&c);
    }
    char *host = r->host ? xstrdup(r->host) : NULL;
    unsigned port = r->port, db = r->db, ms = r->timeout_ms, gen = r->gen;
    pthread_mutex_unlock(&r->lock);
    memset(out, 0, sizeof(*out));
    if (!host) {
        snprintf(err, errlen, "no redis backend configured");
        return -1;
    }
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    out->c = redisConnectWithTimeout(host, (int)port, tv);
    out->gen = gen;
    if (!out->c || out->c->err) {
        snprintf(err, errlen, "connect %s:%u: %s", host, port, out->c ? out->c->errstr : "out of memory");
        free(host);
        conn_close(out);
        return -1;
    }
    free(host);
    int rc = redisSetTimeout(out->c, tv) == REDIS_OK ? 0 : -1;
    if (rc != 0)
        snprintf(err, errlen, "cannot set the timeout");
    if (rc == 0 && db) {
        redisReply *rep = redisCommand(out->c, "SELECT %u", db);
        rc = reply_error(rep, "SELECT", err, errlen);
        if (rep)
            freeReplyObject(rep);
    }
    if (rc == 0)
        rc = load_script(out, err, errlen);
    if (rc != 0)
        conn_close(out);
    return rc;
}

static void give_back(struct rl_redis *r, struct conn *c)
{
    pthread_mutex_lock(&r->lock);
    if (c->c && !c->c->err && c->gen == r->gen && r->nidle < r->max_idle) {
        r->idle[r->nidle++] = *c;
        c->c = NULL;
    }
    pthread_mutex_unlock(&r->lock);
    conn_close(c);
}

static long long int_at(const redisReply *a, size_t i)
{
    return i < a->elements && a->element[i]->type == REDIS_REPLY_INTEGER ? a->element[i]->integer : 0;
}

/* Decodes {denied, {{d, retry, reset, used}...}} into ops. 0 or -1. */
static int decode(const redisReply *rep, struct rl_op *ops, size_t n, int *denied)
{
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 || rep->element[1]->type != REDIS_REPLY_ARRAY ||
        rep->element[1]->elements != n)
        return -1;
    *denied = int_at(rep, 0) != 0;
    for (size_t i = 0; i < n; i++) {
        const redisReply *o = rep->element[1]->element[i];
        if (o->type != REDIS_REPLY_ARRAY || o->elements != 4)
            return -1;
        long long retry = int_at(o, 1), reset = int_at(o, 2), used = int_at(o, 3);
        ops[i].denied = int_at(o, 0) != 0;
        ops[i].retry_us = retry < 0 ? RL_NEVER : (uint64_t)retry;
        ops[i].reset_us = reset < 0 ? 0 : (uint64_t)reset;
        ops[i].used = used < 0 ? 0 : (uint64_t)used;
    }
    return 0;
}

int rl_redis_apply(struct rl_redis *r, struct rl_op *ops, size_t n, int *denied, char *err, size_t errlen)
{
    if (n == 0 || n > BATCH_MAX) {
        snprintf(err, errlen, "bad batch size");
        return -1;
    }
    struct conn c;
    if (take(r, &c, err, errlen) != 0)
        return -1;
    const char *argv[3 + BATCH_MAX * 5];
    size_t argl[3 + BATCH_MAX * 5];
    char keys[BATCH_MAX][RL_KEY_MAX + sizeof(RL_REDIS_PREFIX)];
    char nums[BATCH_MAX * 4][NUM_LEN];
    char nk[NUM_LEN];
    snprintf(nk, sizeof(nk), "%zu", n);
    size_t ac = 0;
    argv[ac++] = "EVALSHA";
    argv[ac++] = c.sha;
    argv[ac++] = nk;
    for (size_t i = 0; i < n; i++) {
        snprintf(keys[i], sizeof(keys[i]), "%s%s", RL_REDIS_PREFIX, ops[i].key);
        argv[ac++] = keys[i];
    }
    for (size_t i = 0; i < n; i++) {
        const unsigned long long v[4] = {(unsigned long long)ops[i].kind, (unsigned long long)ops[i].limit,
                                         (unsigned long long)ops[i].period_us, (unsigned long long)ops[i].cost};
        for (int k = 0; k < 4; k++) {
            snprintf(nums[i * 4 + (size_t)k], NUM_LEN, "%llu", v[k]);
            argv[ac++] = nums[i * 4 + (size_t)k];
        }
    }
    for (size_t i = 0; i < ac; i++)
        argl[i] = strlen(argv[i]);
    int rc = -1;
    for (int attempt = 0; attempt < 2 && rc != 0; attempt++) {
        redisReply *rep = redisCommandArgv(c.c, (int)ac, argv, argl);
        if (!rep) {
            snprintf(err, errlen, "%s", c.c->errstr[0] ? c.c->errstr : "no reply");
            break;
        }
        int noscript = rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0;
        if (noscript && attempt == 0 && load_script(&c, err, errlen) == 0) {
            freeReplyObject(rep);
            argv[1] = c.sha;
            argl[1] = strlen(c.sha);
            continue;
        }
        if (reply_error(rep, "EVALSHA", err, errlen) == 0) {
            rc = decode(rep, ops, n, denied);
            if (rc != 0)
                snprintf(err, errlen, "EVALSHA: unexpected reply");
        }
        freeReplyObject(rep);
        break;
    }
    give_back(r, &c);
    return rc;
}
