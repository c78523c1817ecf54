/* Unit tests for the abuse controls' pure parts: GCRA arithmetic with an
 * injected clock (burst, refill, full reset, rounding, costs larger than
 * the limit, no limit), batches (all-or-nothing, peek, blocks, reset,
 * get), the bounded table (eviction counts, idle keys reclaimed before
 * keys with state, the newest key kept, size bounds, key length bound,
 * listings), SipHash against its reference vector, the account profiles
 * (window, baseline, thresholds, distinct recipients, addresses, known
 * addresses, eviction) and the config keys with their bounds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "abuse/baseline.h"
#include "abuse/ratelimit.h"
#include "core/config.h"
#include "core/util.h"

#define SEC 1000000LL
#define T0 (1000 * SEC) /* the injected clock starts here */

static struct rl_op consume(const char *key, uint64_t limit, uint64_t period_us, uint64_t cost)
{
    struct rl_op op = {.kind = RL_CONSUME, .key = key, .limit = limit, .period_us = period_us, .cost = cost};
    return op;
}

static int take(struct rl_table *t, const char *key, uint64_t limit, uint64_t period_us, int64_t now,
                struct rl_op *out)
{
    struct rl_op op = consume(key, limit, period_us, 1);
    int d = rl_apply(t, &op, 1, now);
    if (out)
        *out = op;
    return d;
}

/* ---- GCRA ------------------------------------------------------------------ */

static void test_gcra_burst_refill_reset(void **state)
{
    (void)state;
    struct rl_table *t = rl_table_new(1000);
    struct rl_op r;
    /* 5 per 10 s: one event's worth comes back every 2 s */
    for (int i = 1; i <= 5; i++) {
        assert_int_equal(take(t, "m:a", 5, 10 * SEC, T0, &r), 0);
        assert_int_equal(r.used, (uint64_t)i);
        assert_int_equal(r.reset_us, (uint64_t)(i * 2 * SEC));
    }
    assert_int_equal(take(t, "m:a", 5, 10 * SEC, T0, &r), 1);
    assert_int_equal(r.denied, 1);
    assert_int_equal(r.retry_us, (uint64_t)(2 * SEC));
    assert_int_equal(r.reset_us, (uint64_t)(10 * SEC));
    assert_int_equal(r.used, 5);
    /* 1 µs too early: still refused, 1 µs left */
    assert_int_equal(take(t, "m:a", 5, 10 * SEC, T0 + 2 * SEC - 1, &r), 1);
    assert_int_equal(r.retry_us, 1);
    /* after 2 s exactly one more */
    assert_int_equal(take(t, "m:a", 5, 10 * SEC, T0 + 2 * SEC, &r), 0);
    assert_int_equal(take(t, "m:a", 5, 10 * SEC, T0 + 2 * SEC, &r), 1);
    /* a whole period after the last one: the full burst again */
    int64_t later = T0 + 2 * SEC + 10 * SEC;
    for (int i = 0; i < 5; i++)
        assert_int_equal(take(t, "m:a", 5, 10 * SEC, later, NULL), 0);
    assert_int_equal(take(t, "m:a", 5, 10 * SEC, later, NULL), 1);
    /* another key is not affected */
    assert_int_equal(take(t, "m:b", 5, 10 * SEC, later, &r), 0);
    assert_int_equal(r.used, 1);
    rl_table_free(t);
}

static void test_gcra_rounding_and_costs(void **state)
{
    (void)state;
    int64_t nt = 0;
    struct rl_op r;
    /* 3 per 10 s: interval 3333333 µs (floored), the bucket 9999999 µs */
    struct rl_op op = consume("k", 3, 10 * SEC, 3);
    assert_int_equal(rl_gcra(0, T0, &op, &nt, &r), 0);
    assert_int_equal(nt, T0 + 9999999);
    assert_int_equal(r.used, 3);
    op.cost = 1;
    assert_int_equal(rl_gcra(nt, T0, &op, &nt, &r), 1);
    assert_int_equal(r.retry_us, 3333333);
    /* a cost larger than the whole limit can never pass */
    op = consume("k", 10, 10 * SEC, 11);
    assert_int_equal(rl_gcra(0, T0, &op, &nt, &r), 1);
    assert_true(r.retry_us == RL_NEVER);
    /* a cost of the whole limit passes on an idle key, then nothing */
    op.cost = 10;
    assert_int_equal(rl_gcra(0, T0, &op, &nt, &r), 0);
    assert_int_equal(nt, T0 + 10 * SEC);
    op.cost = 1;
    assert_int_equal(rl_gcra(nt, T0 + SEC - 1, &op, &nt, &r), 1);
    assert_int_equal(r.retry_us, 1);
    /* no limit */
    op = consume("k", 0, 10 * SEC, 1000);
    assert_int_equal(rl_gcra(T0 + 50 * SEC, T0, &op, &nt, &r), 0);
    assert_int_equal(r.used, 0);
    /* more events than microseconds: the interval is 1 µs */
    op = consume("k", 1000, 10, 1000);
    assert_int_equal(rl_gcra(0, T0, &op, &nt, &r), 0);
    assert_int_equal(nt, T0 + 1000);
    /* a stored TAT in the past counts as an idle key */
    op = consume("k", 2, 2 * SEC, 1);
    assert_int_equal(rl_gcra(T0 - 5 * SEC, T0, &op, &nt, &r), 0);
    assert_int_equal(nt, T0 + SEC);
}

static void test_batch_all_or_nothing(void **state)
{
    (void)state;
    struct rl_table *t = rl_table_new(1000);
    assert_int_equal(take(t, "r:full", 1, 60 * SEC, T0, NULL), 0);
    struct rl_op ops[2] = {consume("m:x", 1, 60 * SEC, 1), consume("r:full", 1, 60 * SEC, 1)};
    assert_int_equal(rl_apply(t, ops, 2, T0), 1);
    assert_int_equal(ops[0].denied, 0);
    assert_int_equal(ops[1].denied, 1);
    /* m:x was not taken: it is still available */
    assert_int_equal(take(t, "m:x", 1, 60 * SEC, T0, NULL), 0);
    assert_int_equal(take(t, "m:x", 1, 60 * SEC, T0, NULL), 1);
    /* peek never stores */
    struct rl_op peek = {.kind = RL_PEEK, .key = "b:y", .limit = 10, .period_us = 10 * SEC, .cost = 10};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(rl_apply(t, &peek, 1, T0), 0);
        assert_int_equal(peek.used, 10);
    }
    struct rl_op get = {.kind = RL_GET, .key = "b:y", .limit = 10, .period_us = 10 * SEC};
    assert_int_equal(rl_apply(t, &get, 1, T0), 0);
    assert_int_equal(get.used, 0);
    get.key = "m:x";
    get.limit = 1;
    get.period_us = 60 * SEC;
    assert_int_equal(rl_apply(t, &get, 1, T0 + 30 * SEC), 0);
    assert_int_equal(get.used, 1);
    assert_int_equal(get.reset_us, (uint64_t)(30 * SEC));
    rl_table_free(t);
}

static void test_blocks_and_reset(void **state)
{
    (void)state;
    struct rl_table *t = rl_table_new(1000);
    struct rl_op chk = {.kind = RL_BLOCKED, .key = "bi:192.0.2.1"};
    assert_int_equal(rl_apply(t, &chk, 1, T0), 0);
    struct rl_op blk = {.kind = RL_BLOCK, .key = "bi:192.0.2.1", .period_us = 900 * SEC};
    assert_int_equal(rl_apply(t, &blk, 1, T0), 0);
    /* a block and a consume in one batch: the block denies, nothing is taken */
    struct rl_op ops[2] = {{.kind = RL_BLOCKED, .key = "bi:192.0.2.1"}, consume("ai:192.0.2.1", 5, 60 * SEC, 1)};
    assert_int_equal(rl_apply(t, ops, 2, T0 + 100 * SEC), 1);
    assert_int_equal(ops[0].retry_us, (uint64_t)(800 * SEC));
    struct rl_op get = {.kind = RL_GET, .key = "ai:192.0.2.1", .limit = 5, .period_us = 60 * SEC};
    rl_apply(t, &get, 1, T0 + 100 * SEC);
    assert_int_equal(get.used, 0);
    /* over at its end */
    chk.key = "bi:192.0.2.1";
    assert_int_equal(rl_apply(t, &chk, 1, T0 + 900 * SEC - 1), 1);
    assert_int_equal(rl_apply(t, &chk, 1, T0 + 900 * SEC), 0);
    /* reset forgets a bucket */
    assert_int_equal(take(t, "fi:x", 1, 60 * SEC, T0, NULL), 0);
    assert_int_equal(take(t, "fi:x", 1, 60 * SEC, T0, NULL), 1);
    struct rl_op rst = {.kind = RL_RESET, .key = "fi:x"};
    rl_apply(t, &rst, 1, T0);
    assert_int_equal(take(t, "fi:x", 1, 60 * SEC, T0, NULL), 0);
    rl_table_free(t);
}

/* ---- the table ------------------------------------------------------------- */

static void test_eviction_bounds(void **state)
{
    (void)state;
    struct rl_table *t = rl_table_new(1000);
    struct rl_stats st;
    char key[64];
    for (int i = 0; i < 2000; i++) {
        snprintf(key, sizeof(key), "m:user%d", i);
        assert_int_equal(take(t, key, 10, 3600 * SEC, T0, NULL), 0);
        rl_stats(t, &st);
        assert_true(st.entries <= 1000);
    }
    rl_stats(t, &st);
    assert_int_equal(st.entries, 1000);
    assert_int_equal(st.max_entries, 1000);
    assert_int_equal(st.evictions, 1000);
    assert_int_equal(st.evicted_live, 1000);
    /* the newest key kept its state */
    struct rl_op get = {.kind = RL_GET, .key = "m:user1999", .limit = 10, .period_us = 3600 * SEC};
    rl_apply(t, &get, 1, T0);
    assert_int_equal(get.used, 1);
    rl_table_free(t);
}

static void test_idle_keys_go_first(void **state)
{
    (void)state;
    struct rl_table *t = rl_table_new(1000);
    char key[64];
    /* 1000 keys whose buckets are full again one second later */
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "c:old%d", i);
        take(t, key, 60, 60 * SEC, T0, NULL);
    }
    int64_t later = T0 + 10 * SEC;
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "c:new%d", i);
        assert_int_equal(take(t, key, 2, 3600 * SEC, later, NULL), 0);
    }
    struct rl_stats st;
    rl_stats(t, &st);
    assert_int_equal(st.entries, 1000);
    assert_int_equal(st.evicted_live, 0);
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "c:new%d", i);
        struct rl_op get = {.kind = RL_GET, .key = key, .limit = 2, .period_us = 3600 * SEC};
        rl_apply(t, &get, 1, later);
        assert_int_equal(get.used, 1);
    }
    rl_table_free(t);
}

static void count_cb(void *arg, const char *name, uint64_t left_us)
{
    int *n = arg;
    assert_true(strlen(name) < RL_NAME_MAX);
    assert_true(left_us > 0);
    (*n)++;
}

static void test_size_and_key_bounds(void **state)
{
    (void)state;
    struct rl_table *t = rl_table_new(10); /* raised to the minimum */
    struct rl_stats st;
    rl_stats(t, &st);
    assert_int_equal(st.max_entries, 64);
    /* keys are hashed up to RL_KEY_MAX bytes: longer ones share a bucket */
    char a[RL_KEY_MAX + 20], b[RL_KEY_MAX + 20];
    memset(a, 'x', sizeof(a) - 1);
    a[sizeof(a) - 1] = '\0';
    memcpy(b, a, sizeof(b));
    b[RL_KEY_MAX + 5] = 'y';
    assert_int_equal(take(t, a, 1, 60 * SEC, T0, NULL), 0);
    assert_int_equal(take(t, b, 1, 60 * SEC, T0, NULL), 1);
    /* listings see live entries with the prefix, names truncated */
    struct rl_op blk = {.kind = RL_BLOCK, .key = "bi:2001:db8:1234:5678::/64-and-more-text", .period_us = SEC};
    rl_apply(t, &blk, 1, T0);
    int n = 0;
    rl_list(t, "bi:", T0, 100, count_cb, &n);
    assert_int_equal(n, 1);
    n = 0;
    rl_list(t, "bi:", T0 + SEC, 100, count_cb, &n);
    assert_int_equal(n, 0);
    rl_table_free(t);
}

static void test_siphash_vector(void **state)
{
    (void)state;
    /* SipHash-2-4 reference: key 00..0f, message 00..0e */
    uint8_t key[16], msg[15];
    for (int i = 0; i < 16; i++)
        key[i] = (uint8_t)i;
    for (int i = 0; i < 15; i++)
        msg[i] = (uint8_t)i;
    assert_int_equal(rl_siphash(key, msg, 15), 0xa129ca6149be45e5ULL);
    assert_int_equal(rl_siphash(key, msg, 0), 0x726fdb47dd0e0e31ULL);
}

/* ---- profiles -------------------------------------------------------------- */

static const uint8_t test_key[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

static struct bl_params params(void)
{
    struct bl_params p = {.window_us = 3600 * SEC, .multiple = 10, .min_messages = 3, .min_recipients = 5,
                          .max_ips = 2, .ip_window_us = 3600 * SEC, .known_us = 30 * 86400 * SEC};
    return p;
}

static void test_profile_thresholds(void **state)
{
    (void)state;
    struct bl_table *t = bl_new(100, test_key);
    struct bl_params p = params();
    struct bl_figures f;
    const char *r1[] = {"a@x.test"};
    int64_t now = 7200 * SEC; /* the start of a window */
    for (int i = 1; i <= 3; i++) {
        bl_message(t, "Alice@Example.test", "192.0.2.1", r1, 1, now, &p, &f);
        assert_int_equal(f.messages, (unsigned)i);
        assert_int_equal(f.recipients, 1);
        assert_int_equal(f.limit_messages, 3);
        assert_int_equal(f.tripped, 0);
    }
    bl_message(t, "alice@example.test", "192.0.2.1", r1, 1, now, &p, &f);
    assert_int_equal(f.messages, 4);
    assert_int_equal(f.tripped, BL_TRIP_MESSAGES);
    assert_int_equal(f.fresh, BL_TRIP_MESSAGES);
    bl_message(t, "alice@example.test", "192.0.2.1", r1, 1, now, &p, &f);
    assert_int_equal(f.tripped, BL_TRIP_MESSAGES);
    assert_int_equal(f.fresh, 0); /* reported once per window */
    /* next window: the baseline moved 1/8 of the way to 5 */
    bl_message(t, "alice@example.test", "192.0.2.1", r1, 1, now + 3600 * SEC, &p, &f);
    assert_int_equal(f.messages, 1);
    assert_true(f.base_messages > 0.624 && f.base_messages < 0.626);
    assert_int_equal(f.limit_messages, 7); /* ceil(10 x 0.625) */
    assert_int_equal(f.tripped, 0);
    /* distinct recipients, case-insensitively */
    const char *many[] = {"a@x.test", "b@x.test", "c@x.test", "d@x.test", "e@x.test", "A@X.TEST", "f@x.test"};
    bl_message(t, "bob", "192.0.2.9", many, 5, now, &p, &f);
    assert_int_equal(f.recipients, 5);
    assert_int_equal(f.tripped, 0);
    bl_message(t, "bob", "192.0.2.9", many + 5, 2, now, &p, &f);
    assert_int_equal(f.recipients, 6);
    assert_int_equal(f.tripped, BL_TRIP_RECIPIENTS);
    bl_free(t);
}

static void test_profile_addresses(void **state)
{
    (void)state;
    struct bl_table *t = bl_new(100, test_key);
    struct bl_params p = params();
    struct bl_figures f;
    int64_t now = 7200 * SEC;
    assert_int_equal(bl_known(t, "carol", "192.0.2.1", now, &p), 0);
    bl_login(t, "carol", "192.0.2.1", now, &p, &f);
    assert_int_equal(f.ips, 1);
    assert_int_equal(f.known, 1);
    assert_int_equal(bl_known(t, "CAROL", "192.0.2.1", now, &p), 1);
    assert_int_equal(bl_known(t, "carol", "192.0.2.2", now, &p), 0);
    bl_login(t, "carol", "192.0.2.2", now + SEC, &p, &f);
    assert_int_equal(f.tripped, 0);
    bl_login(t, "carol", "192.0.2.3", now + 2 * SEC, &p, &f);
    assert_int_equal(f.ips, 3);
    assert_int_equal(f.tripped, BL_TRIP_IPS);
    /* outside the ip-window the old addresses no longer count */
    bl_login(t, "carol", "192.0.2.4", now + 3700 * SEC, &p, &f);
    assert_int_equal(f.ips, 1);
    assert_int_equal(f.tripped, 0);
    /* known addresses expire after known_us */
    p.known_us = 10 * SEC;
    assert_int_equal(bl_known(t, "carol", "192.0.2.1", now + 11 * SEC, &p), 0);
    /* reset forgets the window and the addresses, keeps the profile */
    assert_int_equal(bl_reset(t, "carol"), 1);
    assert_int_equal(bl_peek(t, "carol", now + 3700 * SEC, &p, &f), 1);
    assert_int_equal(f.ips, 0);
    assert_int_equal(bl_reset(t, "nobody"), 0);
    bl_free(t);
}

static void test_profile_eviction_and_estimate(void **state)
{
    (void)state;
    struct bl_table *t = bl_new(10, test_key);
    struct bl_params p = params();
    struct bl_figures f;
    char login[32];
    for (int i = 0; i < 25; i++) {
        snprintf(login, sizeof(login), "user%d", i);
        bl_login(t, login, "192.0.2.1", 7200 * SEC, &p, &f);
    }
    assert_int_equal(bl_count(t), 10);
    assert_int_equal(bl_peek(t, "user24", 7200 * SEC, &p, &f), 1);
    assert_int_equal(bl_peek(t, "user0", 7200 * SEC, &p, &f), 0);
    bl_free(t);
    /* linear counting: exact for a few items, close for many */
    assert_int_equal(bl_estimate(1024, 1024), 0);
    assert_int_equal(bl_estimate(1019, 1024), 5);
    unsigned e = bl_estimate(376, 1024); /* expected for 1024 items */
    assert_true(e > 1010 && e < 1040);
}

/* ---- config ---------------------------------------------------------------- */

static const char base_conf[] = "accounts /nonexistent/accounts\n"
                                "tls {\n    certificate /x.crt /x.key\n}\n"
                                "listener a {\n    port 2587\n    mode starttls\n}\n"
                                "transport t {\n    type maildir\n    path /tmp/m\n}\n"
                                "route * t\n";

/* Loads base_conf + extra; NULL with errs on errors. */
static struct config *load(const char *extra, struct errlist *errs)
{
    char path[] = "/tmp/submitd-rltest-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write_all(fd, base_conf, strlen(base_conf)), 0);
    assert_int_equal(write_all(fd, extra, strlen(extra)), 0);
    close(fd);
    struct config *c = config_load_paths(path, errs);
    unlink(path);
    return c;
}

static void expect_err(const char *extra, int line, const char *needle)
{
    struct errlist e;
    errlist_init(&e);
    struct config *c = load(extra, &e);
    assert_null(c);
    int found = 0;
    char at[32];
    snprintf(at, sizeof(at), ":%d: ", line);
    for (size_t i = 0; i < e.n; i++)
        found |= strstr(e.v[i], at) && strstr(e.v[i], needle);
    if (!found)
        for (size_t i = 0; i < e.n; i++)
            fprintf(stderr, "got: %s\n", e.v[i]);
    assert_true(found);
    errlist_free(&e);
}

static void test_config_defaults_and_values(void **state)
{
    (void)state;
    struct errlist e;
    errlist_init(&e);
    struct config *c = load("", &e);
    assert_non_null(c);
    const struct ratelimit_cfg *r = &c->ratelimit;
    assert_null(r->redis_host);
    assert_int_equal(r->messages.count, 0); /* volume limits: off by default */
    assert_int_equal(r->connections.count, 0);
    assert_int_equal(r->auth_login.count, 0);
    assert_int_equal(r->bytes.count, 0);
    assert_int_equal(r->fail_ip.count, 20);
    assert_int_equal(r->fail_ip.period_ms, 900000);
    assert_int_equal(r->block_time, 900);
    assert_int_equal(r->fail_open, 1);
    assert_int_equal(r->table_size, 100000);
    assert_int_equal(c->abuse.action, ABUSE_ALERT);
    assert_int_equal(c->abuse.multiple, 10);
    assert_int_equal(c->nratelimit_for, 0);
    config_unref(c);
    c = load("ratelimit {\n    backend redis://127.0.0.1:6390/2\n    messages 5/2s hard\n    bytes 10M/1d\n"
             "    exempt 10.0.0.0/8\n    fail-open no\n}\n"
             "ratelimit-for @Example.COM {\n    messages 50/1h\n    detect no\n}\n"
             "ratelimit-for bob@example.com {\n    recipients none\n}\n"
             "abuse {\n    action suspend\n    max-ips 31\n}\n",
             &e);
    assert_non_null(c);
    r = &c->ratelimit;
    assert_string_equal(r->redis_host, "127.0.0.1");
    assert_int_equal(r->redis_port, 6390);
    assert_int_equal(r->redis_db, 2);
    assert_int_equal(r->messages.count, 5);
    assert_int_equal(r->messages.period_ms, 2000);
    assert_int_equal(r->messages.hard, 1);
    assert_int_equal(r->bytes.count, 10 * 1024 * 1024);
    assert_int_equal(r->exempt.n, 1);
    assert_int_equal(r->fail_open, 0);
    assert_int_equal(c->nratelimit_for, 2);
    assert_string_equal(c->ratelimit_for[0].key, "@example.com");
    assert_int_equal(c->ratelimit_for[0].messages.count, 50);
    assert_int_equal(c->ratelimit_for[0].detect, 0);
    assert_int_equal(c->ratelimit_for[1].recipients.count, 0);
    assert_true(c->ratelimit_for[1].recipients.line > 0);
    assert_int_equal(c->ratelimit_for[1].messages.line, 0); /* inherited */
    assert_int_equal(c->ratelimit_for[1].detect, -1);
    assert_int_equal(c->abuse.action, ABUSE_SUSPEND);
    config_unref(c);
    c = load("ratelimit {\n    backend redis://[::1]\n}\n", &e);
    assert_non_null(c);
    assert_string_equal(c->ratelimit.redis_host, "::1");
    assert_int_equal(c->ratelimit.redis_port, 6379);
    config_unref(c);
    assert_int_equal(e.n, 0);
    errlist_free(&e);
}

static void test_config_errors(void **state)
{
    (void)state;
    /* base_conf has 13 lines; the extra text starts at line 14 */
    expect_err("ratelimit {\n    messages 0/1h\n}\n", 15, "the count must be from 1 to 1000000000");
    expect_err("ratelimit {\n    messages 5/500ms\n}\n", 15, "the duration must be from 1s to 30d");
    expect_err("ratelimit {\n    messages 5/31d\n}\n", 15, "the duration must be from 1s to 30d");
    expect_err("ratelimit {\n    messages five/1h\n}\n", 15, "expected COUNT/DURATION such as 100/1h");
    expect_err("ratelimit {\n    bytes 512/1h\n}\n", 15, "the size must be from 1K to 1024G");
    expect_err("ratelimit {\n    bytes 2G/1s\n}\n", 15, "more than one per microsecond");
    expect_err("ratelimit {\n    auth 5/1m hard\n}\n", 15, "only messages, recipients and bytes take `hard`");
    expect_err("ratelimit {\n    messages none hard\n}\n", 15, "`none` takes no `hard`");
    expect_err("ratelimit {\n    backend redis://h:99999\n}\n", 15, "bad value `redis://h:99999` for `backend`");
    expect_err("ratelimit {\n    backend redis://h/256\n}\n", 15, "database 0-255");
    expect_err("ratelimit {\n    backend http://h\n}\n", 15, "expected memory or redis://HOST[:PORT][/DB]");
    expect_err("ratelimit {\n    table-size 999\n}\n", 15, "expected a whole number from 1000 to 10000000");
    expect_err("ratelimit {\n    exempt 10.0.0.0/33\n}\n", 15, "bad network `10.0.0.0/33`");
    expect_err("abuse {\n    max-ips 32\n}\n", 15, "expected a whole number from 0 to 31");
    expect_err("abuse {\n    action block\n}\n", 15, "expected one of alert, hold, suspend");
    expect_err("ratelimit-for bad:login {\n}\n", 14, "bad ratelimit-for key `bad:login`");
    expect_err("ratelimit-for @-bad..domain {\n}\n", 14, "bad ratelimit-for key");
    expect_err("ratelimit-for a@b.test {\n}\nratelimit-for A@B.test {\n}\n", 16, "duplicate ratelimit-for block");
    expect_err("ratelimit-for a@b.test {\n    auth 5/1m\n}\n", 15, "unknown key `auth` in ratelimit-for block");
    expect_err("ratelimit {\n}\nratelimit {\n}\n", 16, "duplicate `ratelimit` block");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gcra_burst_refill_reset),
        cmocka_unit_test(test_gcra_rounding_and_costs),
        cmocka_unit_test(test_batch_all_or_nothing),
        cmocka_unit_test(test_blocks_and_reset),
        cmocka_unit_test(test_eviction_bounds),
        cmocka_unit_test(test_idle_keys_go_first),
        cmocka_unit_test(test_size_and_key_bounds),
        cmocka_unit_test(test_siphash_vector),
        cmocka_unit_test(test_profile_thresholds),
        cmocka_unit_test(test_profile_addresses),
        cmocka_unit_test(test_profile_eviction_and_estimate),
        cmocka_unit_test(test_config_defaults_and_values),
        cmocka_unit_test(test_config_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
