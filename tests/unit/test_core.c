/* Unit tests for core helpers: util (queue ids, strbuf, errlist), log
 * quoting, the per-IP counter table, the verified-credential cache and the
 * job queue's hand-back to an event loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth/authcache.h"
#include "core/jobq.h"
#include "core/log.h"
#include "core/util.h"
#include "smtp/server.h"

static void test_qid(void **state)
{
    (void)state;
    char a[QID_LEN + 1], b[QID_LEN + 1];
    qid_new(a);
    usleep(2000);
    qid_new(b);
    assert_int_equal(strlen(a), QID_LEN);
    assert_true(qid_valid(a));
    assert_true(qid_valid(b));
    assert_true(strcmp(a, b) < 0); /* time ordered */
    assert_false(qid_valid("0123456789ABCDEI")); /* I is not in the alphabet */
    assert_false(qid_valid("0123"));
    assert_false(qid_valid("0123456789ABCDEFG"));
    assert_false(qid_valid("../../etc/passwd"));
}

static void *idle_thread(void *arg)
{
    char c;
    ssize_t r = read(*(int *)arg, &c, 1); /* alive until the test writes */
    (void)r;
    return NULL;
}

/* thread_background makes a thread SCHED_BATCH. */
static void test_thread_background(void **state)
{
    (void)state;
    int p[2];
    assert_int_equal(pipe(p), 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, idle_thread, &p[0]), 0);
    assert_int_equal(thread_background(t), 0);
    int policy = -1;
    struct sched_param sp;
    assert_int_equal(pthread_getschedparam(t, &policy, &sp), 0);
    assert_int_equal(policy, SCHED_BATCH);
    assert_int_equal(write(p[1], "x", 1), 1);
    pthread_join(t, NULL);
    close(p[0]);
    close(p[1]);
}

/* cpus_in_set lists the set's CPUs in order, bounded by max; cpus_allowed
 * gives at least one. */
static void test_cpus(void **state)
{
    (void)state;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(3, &set);
    CPU_SET(1, &set);
    CPU_SET(40, &set);
    int out[8] = {-1, -1, -1, -1, -1, -1, -1, -1};
    assert_int_equal(cpus_in_set(&set, out, 8), 3);
    assert_int_equal(out[0], 1);
    assert_int_equal(out[1], 3);
    assert_int_equal(out[2], 40);
    assert_int_equal(out[3], -1);
    assert_int_equal(cpus_in_set(&set, out, 2), 2);
    CPU_ZERO(&set);
    assert_int_equal(cpus_in_set(&set, out, 8), 0);
    unsigned n = cpus_allowed(out, 8);
    assert_true(n >= 1 && n <= 8);
    for (unsigned i = 1; i < n; i++)
        assert_true(out[i] > out[i - 1]);
}

static void test_strbuf(void **state)
{
    (void)state;
    struct strbuf b;
    sb_init(&b);
    for (int i = 0; i < 1000; i++)
        sb_printf(&b, "%d,", i);
    assert_int_equal(b.len, strlen(b.s));
    assert_memory_equal(b.s, "0,1,2,", 6);
    sb_append(&b, "\0x", 2);
    assert_int_equal(b.s[b.len - 2], '\0');
    char *s = sb_steal(&b);
    assert_null(b.s);
    free(s);
}

static void test_errlist(void **state)
{
    (void)state;
    struct errlist e;
    errlist_init(&e);
    errlist_add(&e, "a.conf", 12, "bad %s", "key");
    errlist_add(&e, "a.conf", 0, "whole file");
    assert_int_equal(e.n, 2);
    assert_string_equal(e.v[0], "a.conf:12: bad key");
    assert_string_equal(e.v[1], "a.conf: whole file");
    errlist_free(&e);
}

static void test_str(void **state)
{
    (void)state;
    char buf[4];
    assert_int_equal(str_copy(buf, "abcdef", sizeof(buf)), 6);
    assert_string_equal(buf, "abc");
    assert_true(str_ieq("MAIL", "mail"));
    assert_false(str_ieq("MAIL", "mai"));
    assert_true(str_iprefix("STARTTLS", "start"));
    assert_true(mem_eq_ct("abc", "abc", 3));
    assert_false(mem_eq_ct("abc", "abd", 3));
}

static void test_log_q(void **state)
{
    (void)state;
    char b[LOGQ_MAX];
    assert_string_equal(log_q(b, sizeof(b), "plain"), "plain");
    assert_string_equal(log_q(b, sizeof(b), "two words"), "\"two words\"");
    assert_string_equal(log_q(b, sizeof(b), "a\"b\\c"), "\"a\\\"b\\\\c\"");
    assert_string_equal(log_q(b, sizeof(b), "cr\r\nlf"), "\"cr\\x0d\\x0alf\"");
    assert_string_equal(log_q(b, sizeof(b), "k=v"), "\"k=v\"");
    char longs[1000];
    memset(longs, 'x', sizeof(longs) - 1);
    longs[0] = ' ';
    longs[sizeof(longs) - 1] = '\0';
    const char *q = log_q(b, sizeof(b), longs);
    assert_true(strlen(q) < sizeof(b));
}

static struct sockaddr_in v4(const char *ip)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

static void test_iptable(void **state)
{
    (void)state;
    struct iptable *t = iptable_new(3);
    struct sockaddr_in a = v4("192.0.2.1"), b = v4("192.0.2.2"), c = v4("192.0.2.3"), d = v4("192.0.2.4");
    assert_int_equal(iptable_add(t, (struct sockaddr *)&a, 1, 0), 1);
    assert_int_equal(iptable_add(t, (struct sockaddr *)&a, 1, 0), 2);
    assert_int_equal(iptable_get(t, (struct sockaddr *)&a, 0), 2);
    assert_int_equal(iptable_get(t, (struct sockaddr *)&b, 0), 0);
    /* IPv4-mapped IPv6 is the same client */
    struct sockaddr_in6 m;
    memset(&m, 0, sizeof(m));
    m.sin6_family = AF_INET6;
    inet_pton(AF_INET6, "::ffff:192.0.2.1", &m.sin6_addr);
    assert_int_equal(iptable_get(t, (struct sockaddr *)&m, 0), 2);
    assert_int_equal(iptable_add(t, (struct sockaddr *)&a, -2, 0), 0);
    assert_int_equal(iptable_get(t, (struct sockaddr *)&a, 0), 0);
    /* bounded: a 4th distinct key is refused as "at the maximum" */
    iptable_add(t, (struct sockaddr *)&a, 1, 0);
    iptable_add(t, (struct sockaddr *)&b, 1, 0);
    iptable_add(t, (struct sockaddr *)&c, 1, 0);
    assert_int_equal(iptable_add(t, (struct sockaddr *)&d, 1, 0), (unsigned)-1);
    /* expiry */
    iptable_clear(t, (struct sockaddr *)&a);
    assert_int_equal(iptable_get(t, (struct sockaddr *)&a, 0), 0);
    iptable_add(t, (struct sockaddr *)&a, 5, 50);
    assert_int_equal(iptable_get(t, (struct sockaddr *)&a, 50), 5);
    usleep(80000);
    assert_int_equal(iptable_get(t, (struct sockaddr *)&a, 50), 0);
    assert_int_equal(iptable_add(t, (struct sockaddr *)&a, 1, 50), 1);
    iptable_free(t);
}

static void test_authcache(void **state)
{
    (void)state;
    struct authcache *c = authcache_new(16, 60000);
    assert_false(authcache_check(c, "u", "pw", "$y$hash1"));
    authcache_put(c, "u", "pw", "$y$hash1");
    assert_true(authcache_check(c, "u", "pw", "$y$hash1"));
    assert_false(authcache_check(c, "u", "pw2", "$y$hash1"));   /* other password */
    assert_false(authcache_check(c, "v", "pw", "$y$hash1"));    /* other login */
    assert_false(authcache_check(c, "u", "pw", "$y$hash2"));    /* password changed */
    /* login/password boundary cannot be shifted: "ab"+"c" != "a"+"bc" */
    authcache_put(c, "ab", "c", "h");
    assert_false(authcache_check(c, "a", "bc", "h"));
    authcache_clear(c);
    assert_false(authcache_check(c, "u", "pw", "$y$hash1"));
    authcache_set_ttl(c, 30);
    authcache_put(c, "u", "pw", "$y$hash1");
    assert_true(authcache_check(c, "u", "pw", "$y$hash1"));
    usleep(60000);
    assert_false(authcache_check(c, "u", "pw", "$y$hash1")); /* expired */
    /* the last quarter of an entry's life: the first hit there is asked
     * to renew it, once; a new put starts a new life */
    authcache_set_ttl(c, 1000);
    authcache_put(c, "u", "pw", "$y$hash1");
    assert_int_equal(authcache_check(c, "u", "pw", "$y$hash1"), AUTHCACHE_HIT);
    usleep(850000);
    assert_int_equal(authcache_check(c, "u", "pw2", "$y$hash1"), AUTHCACHE_MISS);
    assert_int_equal(authcache_check(c, "u", "pw", "$y$hash1"), AUTHCACHE_REFRESH);
    assert_int_equal(authcache_check(c, "u", "pw", "$y$hash1"), AUTHCACHE_HIT);
    authcache_put(c, "u", "pw", "$y$hash1");
    assert_int_equal(authcache_check(c, "u", "pw", "$y$hash1"), AUTHCACHE_HIT);
    authcache_set_ttl(c, 0);
    authcache_put(c, "u", "pw", "$y$hash1");
    assert_false(authcache_check(c, "u", "pw", "$y$hash1")); /* disabled */
    authcache_free(c);
}

struct jt {
    pthread_t worker_thread;
    pthread_t loop_thread;
    int done;
    struct event_base *base;
};

static void jt_work(void *arg)
{
    struct jt *j = arg;
    j->worker_thread = pthread_self();
}

static void jt_done(void *arg)
{
    struct jt *j = arg;
    j->loop_thread = pthread_self();
    j->done++;
    event_base_loopbreak(j->base);
}

static void keep_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

static void test_jobq(void **state)
{
    (void)state;
    evthread_use_pthreads();
    struct event_base *base = event_base_new();
    struct jobq_home *home = jobq_home_new(base);
    struct jobq *q = jobq_new(2, "test");
    struct jt j = {.base = base};
    jobq_submit(q, home, jt_work, jt_done, &j);
    /* keep the loop alive until the completion arrives */
    struct event *keep = evtimer_new(base, keep_cb, base);
    struct timeval tv = {5, 0};
    evtimer_add(keep, &tv);
    event_base_dispatch(base);
    assert_int_equal(j.done, 1);
    assert_true(pthread_equal(j.loop_thread, pthread_self()));
    assert_false(pthread_equal(j.worker_thread, pthread_self()));
    event_free(keep);
    jobq_free(q);
    jobq_home_free(home);
    event_base_free(base);
}

int main(void)
{
    log_init("test", 0, LOG_LVL_ERR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qid),      cmocka_unit_test(test_strbuf),    cmocka_unit_test(test_errlist),
        cmocka_unit_test(test_str),      cmocka_unit_test(test_log_q),     cmocka_unit_test(test_iptable),
        cmocka_unit_test(test_authcache), cmocka_unit_test(test_jobq), cmocka_unit_test(test_cpus), cmocka_unit_test(test_thread_background),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
