/* Unit tests for the transport boundary, the Maildir transport and the
 * queue scheduler: transport_stream (CRLF -> LF across read boundaries),
 * the exact Maildir file layout the integration harness expects, path
 * expansion and sanitizing, check() errors, failures as 451 temporary
 * results; end to end through queue_new/start/submit with a hand-built
 * config, retry records, delivery at restart, lifetime expiry, corrupt
 * files quarantined at start, and reload to a new transport path; bounces
 * (DSNs once per batch, after a restart, never for the null sender or
 * against NOTIFY, one delay warning) and the operator actions (hold
 * across a restart, release, flush, delete, list/show); the DONE marks
 * of delivered journal messages made durable when the queue goes idle. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/config.h"
#include "core/log.h"
#include "core/util.h"
#include "tmpdir.h"
#include "queue/journal.h"
#include "queue/queue.h"
#include "queue/spool.h"
#include "queue/transport.h"

/* ---- helpers ---------------------------------------------------------------- */

static char *path_of(const char *a, const char *b)
{
    struct strbuf s;
    sb_init(&s);
    sb_printf(&s, "%s/%s", a, b);
    return sb_steal(&s);
}

/* Regular files in dir (sorted names), count returned; names optional. */
static int count_files(const char *dir, char ***names)
{
    struct dirent **nl;
    int n = scandir(dir, &nl, NULL, alphasort);
    int c = 0;
    if (names)
        *names = xcalloc((size_t)(n > 0 ? n : 1), sizeof(char *));
    for (int i = 0; i < n; i++) {
        if (nl[i]->d_name[0] != '.') {
            if (names)
                (*names)[c] = xstrdup(nl[i]->d_name);
            c++;
        }
        free(nl[i]);
    }
    if (n >= 0)
        free(nl);
    return c;
}

static void free_names(char **names, int n)
{
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

static struct spool *open_spool(const char *dir)
{
    struct errlist errs;
    errlist_init(&errs);
    struct spool *s = spool_open(dir, &errs);
    assert_int_equal(errs.n, 0);
    assert_non_null(s);
    errlist_free(&errs);
    return s;
}

static const char *const PREPEND =
    "Received: from client.test ([127.0.0.1])\r\n\tby mx.test (submitd) with ESMTPSA (TLSv1.3 x)\r\n"
    "\tid QID;\r\n\tThu, 1 Jan 2026 00:00:00 +0000\r\n";

/* Commits msg as a new message to the given recipients. */
static void commit_msg(struct spool *s, char id[QID_LEN + 1], const char *from, const char *const *rcpts,
                       size_t nr, const void *msg, size_t n, int64_t received)
{
    struct envelope e;
    envelope_init(&e);
    qid_new(id);
    memcpy(e.id, id, QID_LEN + 1);
    e.mail_from = xstrdup(from);
    e.client_ip = xstrdup("127.0.0.1");
    e.helo = xstrdup("client.test");
    e.listener = xstrdup("submission");
    e.received = received;
    e.prepend = xstrdup(PREPEND);
    for (size_t i = 0; i < nr; i++)
        envelope_add_rcpt(&e, rcpts[i], 0, NULL);
    struct spool_writer *w = spool_writer_new(s, id);
    assert_non_null(w);
    spool_writer_write(w, msg, n);
    e.size = spool_writer_size(w);
    assert_int_equal(spool_commit(w, &e), 0);
    envelope_free(&e);
}

/* CRLF -> LF the way the harness does it (bytes.replace). */
static char *crlf_to_lf(const char *s, size_t n, size_t *out_n)
{
    char *o = xmalloc(n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n')
            continue;
        o[k++] = s[i];
    }
    *out_n = k;
    return o;
}

/* The exact file the harness's assert_delivered expects. */
static char *expected_file(const char *from, const char *rcpt, const char *msg, size_t n, size_t *len)
{
    struct strbuf b;
    sb_init(&b);
    sb_printf(&b, "Return-Path: <%s>\nDelivered-To: <%s>\n", from, rcpt);
    size_t pl, ml;
    char *p = crlf_to_lf(PREPEND, strlen(PREPEND), &pl);
    char *m = crlf_to_lf(msg, n, &ml);
    sb_append(&b, p, pl);
    sb_append(&b, m, ml);
    free(p);
    free(m);
    *len = b.len;
    return sb_steal(&b);
}

static void assert_file_is(const char *path, const char *want, size_t wlen)
{
    size_t got = 0;
    char *data = read_file_max(path, 64 << 20, &got);
    assert_non_null(data);
    assert_int_equal(got, wlen);
    assert_memory_equal(data, want, wlen);
    free(data);
}

/* A message whose CRLF pairs straddle the 64 KiB read boundaries. */
static char *big_message(size_t *n)
{
    struct strbuf b;
    sb_init(&b);
    sb_puts(&b, "From: alice@example.test\r\nTo: bob@dest.test\r\nSubject: big\r\n\r\n");
    while (b.len < 65535)
        sb_append(&b, "a", 1);
    sb_puts(&b, "\r\n"); /* CR at offset 65535, LF at 65536 */
    assert_int_equal(b.s[65535], '\r');
    while (b.len < 2 * 65536 - 1) {
        if (b.len % 70 == 0 && b.len + 2 <= 2 * 65536 - 1)
            sb_puts(&b, "\r\n");
        else
            sb_append(&b, "b", 1);
    }
    sb_puts(&b, "\r\nlone CR \r here\r\n\r\r\nend.\r\n");
    assert_memory_equal(b.s + 2 * 65536 - 1, "\r\n", 2); /* the second boundary too */
    *n = b.len;
    return sb_steal(&b);
}

struct test_cfg {
    struct config c;
    struct transport_cfg t[2];
    struct route_cfg r[2];
};

static void cfg_init(struct test_cfg *tc, const char *path)
{
    memset(tc, 0, sizeof(*tc));
    tc->c.refs = 1;
    tc->c.file = "test.conf";
    tc->c.hostname = "mx.test";
    tc->t[0].name = "local";
    tc->t[0].type = "maildir";
    tc->t[0].line = 7;
    tc->t[0].path = (char *)path;
    tc->r[0].pattern = "*";
    tc->r[0].transport = "local";
    tc->r[0].line = 11;
    tc->c.transports = tc->t;
    tc->c.ntransports = 1;
    tc->c.routes = tc->r;
    tc->c.nroutes = 1;
    tc->c.queue.retry_initial = 300;
    tc->c.queue.retry_max = 14400;
    tc->c.queue.lifetime = 5 * 86400;
    tc->c.queue.delivery_threads = 2;
    tc->c.queue.bounce_size = 256 * 1024;
}

static int wait_for(int (*cond)(void *), void *arg, int ms)
{
    for (int t = 0; t < ms; t += 10) {
        if (cond(arg))
            return 1;
        usleep(10000);
    }
    return cond(arg);
}

struct count_arg {
    const char *dir;
    int want;
};

static int has_files(void *arg)
{
    struct count_arg *a = arg;
    return count_files(a->dir, NULL) >= a->want;
}

static int has_exactly(void *arg)
{
    struct count_arg *a = arg;
    return count_files(a->dir, NULL) == a->want;
}

/* queue/ holds exactly one message with its status log, and it is not
 * a->id (the journal moves a message there when it needs the log). */
struct other_arg {
    const char *dir;
    const char *id;
};

static int only_other_with_log(void *arg)
{
    struct other_arg *a = arg;
    char **names;
    int n = count_files(a->dir, &names);
    int ok = n == 2 && strncmp(names[0], a->id, QID_LEN) != 0 && strcmp(names[1] + QID_LEN, ".st") == 0;
    free_names(names, n);
    return ok;
}

static int file_gone(void *arg)
{
    struct stat st;
    return stat(arg, &st) != 0 && errno == ENOENT;
}

/* The stored bytes of a message (NUL-terminated). */
static char *msg_text(struct spool_msg *m)
{
    char *t = xmalloc(m->env.size + 1);
    assert_int_equal(spool_msg_pread(m, t, m->env.size, 0), (ssize_t)m->env.size);
    t[m->env.size] = '\0';
    return t;
}

/* A temp dir with a spool, a working Maildir (mail/) and a broken one
 * (blocker/mail, where blocker is a regular file). */
struct qfix {
    char *dir, *sp, *md, *blocker, *badmd, *newd, *qd;
    struct spool *s;
};

static void qfix_init(struct qfix *f)
{
    f->dir = make_tmpdir("test_queue");
    f->sp = path_of(f->dir, "spool");
    f->md = path_of(f->dir, "mail");
    f->blocker = path_of(f->dir, "blocker");
    f->badmd = path_of(f->blocker, "mail");
    f->newd = path_of(f->md, "new");
    f->qd = path_of(f->sp, "queue");
    FILE *fp = fopen(f->blocker, "w");
    assert_non_null(fp);
    fclose(fp);
    f->s = open_spool(f->sp);
}

static void qfix_free(struct qfix *f)
{
    spool_close(f->s);
    rm_rf(f->dir);
    char *v[] = {f->dir, f->sp, f->md, f->blocker, f->badmd, f->newd, f->qd};
    for (size_t i = 0; i < ARRAY_LEN(v); i++)
        free(v[i]);
}

/* ok.test (and the sender's domain) go to a working Maildir, everything
 * else to a broken one. */
static void two_way_cfg(struct test_cfg *tc, const char *badmd, const char *md)
{
    cfg_init(tc, badmd);
    tc->t[1] = (struct transport_cfg){.name = "good", .type = "maildir", .line = 9, .path = (char *)md};
    tc->r[1] = tc->r[0];
    tc->r[0] = (struct route_cfg){.pattern = "ok.test", .transport = "good", .line = 10};
    tc->c.ntransports = 2;
    tc->c.nroutes = 2;
    tc->c.queue.lifetime = 60;
}

/* ---- transport_stream ---------------------------------------------------------- */

struct sink {
    struct strbuf b;
    int calls;
    int fail_after;
};

static int sink_out(void *arg, const void *buf, size_t n)
{
    struct sink *k = arg;
    k->calls++;
    if (k->fail_after && k->calls > k->fail_after)
        return -1;
    sb_append(&k->b, buf, n);
    return 0;
}

static void test_stream(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_queue");
    struct spool *s = open_spool(dir);
    size_t n;
    char *msg = big_message(&n);
    const char *rc[] = {"bob@dest.test"};
    char id[QID_LEN + 1], err[128];
    commit_msg(s, id, "alice@example.test", rc, 1, msg, n, time(NULL));
    struct spool_msg *m;
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), 0);

    struct sink k = {.calls = 0};
    sb_init(&k.b);
    assert_int_equal(transport_stream(m, 0, sink_out, &k), 0);
    assert_int_equal(k.b.len, strlen(PREPEND) + n);
    assert_memory_equal(k.b.s, PREPEND, strlen(PREPEND));
    assert_memory_equal(k.b.s + strlen(PREPEND), msg, n);
    assert_true(k.calls <= 4); /* buffered: 64 KiB pieces, not one call per line */
    sb_free(&k.b);

    struct sink l = {.calls = 0};
    sb_init(&l.b);
    assert_int_equal(transport_stream(m, 1, sink_out, &l), 0);
    size_t pl, ml;
    char *p = crlf_to_lf(PREPEND, strlen(PREPEND), &pl);
    char *ms = crlf_to_lf(msg, n, &ml);
    assert_int_equal(l.b.len, pl + ml);
    assert_memory_equal(l.b.s, p, pl);
    assert_memory_equal(l.b.s + pl, ms, ml);
    assert_non_null(memmem(l.b.s, l.b.len, "lone CR \r here\n\r\nend.\n", 22));
    assert_null(memmem(l.b.s, l.b.len, "a\r\n", 3));
    sb_free(&l.b);
    free(p);
    free(ms);

    /* the output failing is reported */
    struct sink f = {.fail_after = 1};
    sb_init(&f.b);
    assert_int_equal(transport_stream(m, 1, sink_out, &f), -1);
    sb_free(&f.b);
    spool_msg_close(m);

    /* a message ending in a lone CR keeps it */
    commit_msg(s, id, "", rc, 1, "x\r\ny\r", 5, time(NULL));
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), 0);
    free(m->env.prepend);
    m->env.prepend = NULL;
    struct sink c = {.calls = 0};
    sb_init(&c.b);
    assert_int_equal(transport_stream(m, 1, sink_out, &c), 0);
    assert_int_equal(c.b.len, 4);
    assert_memory_equal(c.b.s, "x\ny\r", 4);
    sb_free(&c.b);
    spool_msg_close(m);
    free(msg);
    spool_close(s);
    rm_rf(dir);
    free(dir);
}

/* ---- maildir --------------------------------------------------------------------- */

struct donecount {
    int n;
};

static void job_done(struct delivery_job *job)
{
    ((struct donecount *)job->arg)->n++;
}

static void run_maildir(const char *tmpl, struct spool_msg *m, struct delivery_result *res)
{
    struct transport_cfg tc = {.name = "local", .type = "maildir", .line = 3, .path = (char *)tmpl};
    struct errlist errs;
    errlist_init(&errs);
    const struct transport_ops *ops = transport_find("maildir");
    assert_ptr_equal(ops, &maildir_transport);
    void *inst = ops->open(&tc, &errs);
    assert_non_null(inst);
    assert_int_equal(errs.n, 0);
    size_t *idx = xcalloc(m->env.nrcpts, sizeof(*idx));
    for (size_t i = 0; i < m->env.nrcpts; i++)
        idx[i] = i;
    struct donecount dc = {0};
    struct delivery_job job = {.msg = m, .rcpts = idx, .nrcpts = m->env.nrcpts, .results = res,
                               .done = job_done, .arg = &dc};
    ops->deliver(inst, &job);
    assert_int_equal(dc.n, 1);
    ops->close(inst);
    free(idx);
}

static void test_maildir_layout(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_queue");
    char *sp = path_of(dir, "spool"), *md = path_of(dir, "a/b/mail");
    struct spool *s = open_spool(sp);
    size_t n;
    char *msg = big_message(&n);
    const char *rc[] = {"bob@dest.test", "carol@dest.test"};
    char id[QID_LEN + 1], err[128];
    commit_msg(s, id, "alice@example.test", rc, 2, msg, n, time(NULL));
    struct spool_msg *m;
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), 0);
    struct delivery_result res[2];
    memset(res, 0xff, sizeof(res));
    run_maildir(md, m, res);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(res[i].status, DR_OK);
        assert_string_equal(res[i].text, "250 2.0.0 delivered to maildir");
    }
    char *newd = path_of(md, "new"), *tmpd = path_of(md, "tmp"), *curd = path_of(md, "cur");
    char **names;
    assert_int_equal(count_files(newd, &names), 2);
    assert_int_equal(count_files(tmpd, NULL), 0);
    assert_int_equal(count_files(curd, NULL), 0);
    struct stat st;
    assert_int_equal(stat(md, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    /* <sec>.M<usec>P<pid>Q<qid>R<rcptindex>.<hostname> */
    char host[256] = "";
    gethostname(host, sizeof(host) - 1);
    for (int i = 0; i < 2; i++) {
        char pat[512];
        snprintf(pat, sizeof(pat), "^[0-9]+\\.M[0-9]{6}P%dQ%sR[01]\\.", (int)getpid(), id);
        regex_t re;
        assert_int_equal(regcomp(&re, pat, REG_EXTENDED | REG_NOSUB), 0);
        assert_int_equal(regexec(&re, names[i], 0, NULL, 0), 0);
        regfree(&re);
        assert_string_equal(strchr(strchr(names[i], '.') + 1, '.') + 1, host);
        char *f = path_of(newd, names[i]);
        assert_int_equal(stat(f, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0600);
        size_t got;
        char *data = read_file_max(f, 1 << 20, &got);
        const char *r = strstr(names[i], "R0.") ? rc[0] : rc[1];
        size_t wl;
        char *want = expected_file("alice@example.test", r, msg, n, &wl);
        assert_int_equal(got, wl);
        assert_memory_equal(data, want, wl);
        free(want);
        free(data);
        free(f);
    }
    free_names(names, 2);
    spool_msg_close(m);

    /* null sender: Return-Path: <> */
    const char *one[] = {"dave@dest.test"};
    commit_msg(s, id, "", one, 1, "Subject: n\r\n\r\nnull\r\n", 20, time(NULL));
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), 0);
    run_maildir(md, m, res);
    assert_int_equal(res[0].status, DR_OK);
    assert_int_equal(count_files(newd, &names), 3);
    for (int i = 0; i < 3; i++) {
        if (!strstr(names[i], id))
            continue;
        char *f = path_of(newd, names[i]);
        size_t wl;
        char *want = expected_file("", "dave@dest.test", "Subject: n\r\n\r\nnull\r\n", 20, &wl);
        assert_file_is(f, want, wl);
        free(want);
        free(f);
    }
    free_names(names, 3);
    spool_msg_close(m);
    free(newd);
    free(tmpd);
    free(curd);
    free(msg);
    spool_close(s);
    free(sp);
    free(md);
    rm_rf(dir);
    free(dir);
}

static void test_maildir_expand_and_check(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_queue");
    char *sp = path_of(dir, "spool");
    struct spool *s = open_spool(sp);
    const char *rc[] = {"Jo/e@Ex.AMPLE.test", ".hidden@x.test", "plain@Y.test"};
    char id[QID_LEN + 1], err[128];
    commit_msg(s, id, "a@b.test", rc, 3, "S: x\r\n\r\nb\r\n", 11, time(NULL));
    struct spool_msg *m;
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), 0);
    struct strbuf t;
    sb_init(&t);
    sb_printf(&t, "%s/%%d/%%u/%%a%%%%", dir);
    struct delivery_result res[3];
    run_maildir(t.s, m, res);
    for (int i = 0; i < 3; i++)
        assert_int_equal(res[i].status, DR_OK);
    const char *dirs[] = {"ex.ample.test/Jo_e/Jo_e@Ex.AMPLE.test%", "x.test/_hidden/_hidden@x.test%",
                          "y.test/plain/plain@Y.test%"};
    for (int i = 0; i < 3; i++) {
        char *d = path_of(dir, dirs[i]);
        char *nd = path_of(d, "new");
        assert_int_equal(count_files(nd, NULL), 1);
        free(nd);
        free(d);
    }
    sb_free(&t);
    spool_msg_close(m);

    /* check(): path missing, relative, bad escape, unknown option -> file:line errors */
    struct kv opt = {.key = "frobnicate", .value = "1", .line = 9};
    struct transport_cfg bad[] = {
        {.name = "a", .type = "maildir", .line = 4, .path = NULL},
        {.name = "b", .type = "maildir", .line = 5, .path = "relative/mail"},
        {.name = "c", .type = "maildir", .line = 6, .path = "/var/mail/%x"},
        {.name = "d", .type = "maildir", .line = 8, .path = "/var/mail/%d", .opts = &opt, .nopts = 1},
    };
    const char *want[] = {"x.conf:4: transport a: maildir needs a path",
                          "x.conf:5: transport b: maildir path must be absolute",
                          "x.conf:6: transport c: maildir path: unknown %-escape",
                          "x.conf:9: transport d: unknown option 'frobnicate'"};
    for (int i = 0; i < 4; i++) {
        struct errlist errs;
        errlist_init(&errs);
        assert_int_equal(maildir_transport.check(&bad[i], "x.conf", &errs), -1);
        assert_int_equal(errs.n, 1);
        assert_true(strncmp(errs.v[0], want[i], strlen(want[i])) == 0);
        errlist_free(&errs);
        if (i < 3) {
            errlist_init(&errs);
            assert_null(maildir_transport.open(&bad[i], &errs));
            assert_int_equal(errs.n, 1);
            errlist_free(&errs);
        }
    }
    struct transport_cfg good = {.name = "g", .type = "maildir", .line = 4, .path = "/var/mail/%d/%u"};
    struct errlist errs;
    errlist_init(&errs);
    assert_int_equal(maildir_transport.check(&good, "x.conf", &errs), 0);
    assert_int_equal(errs.n, 0);
    errlist_free(&errs);
    assert_null(transport_find("smoke-signals"));
    assert_null(transport_find(NULL));
    spool_close(s);
    free(sp);
    rm_rf(dir);
    free(dir);
}

static void test_maildir_failure(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_queue");
    char *sp = path_of(dir, "spool"), *blocker = path_of(dir, "blocker");
    char *md = path_of(blocker, "mail");
    struct spool *s = open_spool(sp);
    FILE *f = fopen(blocker, "w");
    assert_non_null(f);
    fputs("a regular file\n", f);
    fclose(f);
    const char *rc[] = {"bob@dest.test"};
    char id[QID_LEN + 1], err[128];
    commit_msg(s, id, "a@b.test", rc, 1, "S: x\r\n\r\nb\r\n", 11, time(NULL));
    struct spool_msg *m;
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), 0);
    struct delivery_result res[1];
    run_maildir(md, m, res);
    assert_int_equal(res[0].status, DR_TEMP);
    char want[600];
    snprintf(want, sizeof(want), "451 4.3.0 maildir %s: Not a directory", md);
    assert_string_equal(res[0].text, want);
    spool_msg_close(m);
    spool_close(s);
    free(sp);
    free(md);
    free(blocker);
    rm_rf(dir);
    free(dir);
}

/* ---- the scheduler ------------------------------------------------------------------ */

static struct queue *start_queue(struct spool *s, struct config *c)
{
    struct errlist errs;
    errlist_init(&errs);
    struct queue *q = queue_new(s, c, &errs);
    assert_non_null(q);
    assert_int_equal(errs.n, 0);
    errlist_free(&errs);
    assert_int_equal(queue_start(q), 0);
    return q;
}

static void test_queue_end_to_end(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_queue");
    char *sp = path_of(dir, "spool"), *md = path_of(dir, "mail");
    char *newd = path_of(md, "new"), *qd = path_of(sp, "queue");
    struct spool *s = open_spool(sp);
    struct test_cfg tc;
    cfg_init(&tc, md);
    struct queue *q = start_queue(s, &tc.c);
    assert_int_equal(tc.c.refs, 2); /* the queue holds its own reference */
    enum { N = 25 };
    char ids[N][QID_LEN + 1];
    char msgs[N][64];
    for (int i = 0; i < N; i++) {
        char r1[64], r2[64];
        snprintf(r1, sizeof(r1), "u%d@dest.test", i);
        snprintf(r2, sizeof(r2), "v%d@OTHER.test", i);
        const char *rc[] = {r1, r2};
        snprintf(msgs[i], sizeof(msgs[i]), "Subject: m%d\r\n\r\nbody %d\r\n", i, i);
        commit_msg(s, ids[i], "alice@example.test", rc, 2, msgs[i], strlen(msgs[i]), time(NULL));
        queue_submit(q, ids[i]);
    }
    queue_submit(q, "not-a-queue-id");
    struct count_arg ca = {newd, 2 * N};
    assert_true(wait_for(has_files, &ca, 10000));
    struct count_arg qa = {qd, 0};
    assert_true(wait_for(has_exactly, &qa, 10000));
    assert_int_equal(count_files(newd, NULL), 2 * N);
    /* one file checked byte for byte */
    char **names;
    int nn = count_files(newd, &names);
    int seen = 0;
    for (int k = 0; k < nn; k++) {
        if (!strstr(names[k], ids[7]) || !strstr(names[k], "R1."))
            continue;
        char *f = path_of(newd, names[k]);
        size_t wl;
        char *want = expected_file("alice@example.test", "v7@OTHER.test", msgs[7], strlen(msgs[7]), &wl);
        assert_file_is(f, want, wl);
        free(want);
        free(f);
        seen++;
    }
    assert_int_equal(seen, 1);
    free_names(names, nn);
    queue_stop(q);
    queue_free(q);
    assert_int_equal(tc.c.refs, 1);
    spool_close(s);
    free(sp);
    free(md);
    free(newd);
    free(qd);
    rm_rf(dir);
    free(dir);
}

struct synced_arg {
    struct spool *s;
    uint64_t syncs_before;
};

/* No live record, no mark waiting, and a sync since syncs_before (the
 * marks are taken off the waiting count when their batch starts, the sync
 * is counted when it is done). */
static int marks_synced(void *arg)
{
    struct synced_arg *a = arg;
    struct journal_stats st;
    spool_journal_stats(a->s, &st);
    return st.live == 0 && st.marks_unsynced == 0 && st.syncs > a->syncs_before;
}

/* Journal messages delivered with no commit after them: their DONE marks
 * ride with no batch, and there are too few for the count trigger, so
 * only the queue's flush when it goes idle makes them durable. */
static void test_queue_idle_flush(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_queue");
    char *sp = path_of(dir, "spool"), *md = path_of(dir, "mail");
    char *newd = path_of(md, "new");
    struct spool *s = open_spool(sp);
    struct test_cfg tc;
    cfg_init(&tc, md);
    char ids[3][QID_LEN + 1];
    const char *rc[] = {"idle@dest.test"};
    const char *msg = "Subject: idle\r\n\r\nflush\r\n";
    for (int i = 0; i < 3; i++)
        commit_msg(s, ids[i], "alice@example.test", rc, 1, msg, strlen(msg), time(NULL));
    struct journal_stats before;
    spool_journal_stats(s, &before);
    assert_int_equal(before.live, 3); /* in the journal, not in files */
    struct queue *q = start_queue(s, &tc.c);
    for (int i = 0; i < 3; i++)
        queue_submit(q, ids[i]);
    struct count_arg ca = {newd, 3};
    assert_true(wait_for(has_files, &ca, 10000));
    struct synced_arg sa = {s, before.syncs};
    assert_true(wait_for(marks_synced, &sa, 5000));
    queue_stop(q);
    queue_free(q);
    spool_close(s);
    free(sp);
    free(md);
    free(newd);
    rm_rf(dir);
    free(dir);
}

static int has_retry_record(void *arg)
{
    size_t len = 0;
    char *t = read_file_max(arg, 1 << 20, &len);
    int ok = t && strncmp(t, "retry 0 ", 8) == 0 && t[len - 1] == '\n';
    free(t);
    return ok;
}

static void test_queue_retry_restart_reload(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_queue");
    char *sp = path_of(dir, "spool"), *md = path_of(dir, "mail"), *blocker = path_of(dir, "blocker");
    char *badmd = path_of(blocker, "mail"), *newd = path_of(md, "new"), *qd = path_of(sp, "queue");
    FILE *f = fopen(blocker, "w");
    assert_non_null(f);
    fclose(f);
    struct spool *s = open_spool(sp);
    struct test_cfg bad;
    cfg_init(&bad, badmd);
    struct queue *q = start_queue(s, &bad.c);
    const char *rc[] = {"bob@dest.test"};
    char id[QID_LEN + 1];
    const char *msg = "Subject: r\r\n\r\nretry me\r\n";
    commit_msg(s, id, "alice@example.test", rc, 1, msg, strlen(msg), time(NULL));
    queue_submit(q, id);
    char st[600];
    snprintf(st, sizeof(st), "%s/%s.st", qd, id);
    assert_true(wait_for(has_retry_record, st, 10000));
    queue_stop(q);
    queue_free(q);
    /* nothing delivered, nothing lost; the retry is 5 minutes away */
    assert_int_equal(count_files(newd, NULL), 0);
    assert_int_equal(count_files(qd, NULL), 2);
    struct spool_msg *m;
    char err[128];
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), 0);
    assert_int_equal(m->attempts[0], 1);
    assert_true(m->next_try[0] >= (int64_t)time(NULL) + 290);
    assert_int_equal(m->state[0], RCPT_PENDING);
    spool_msg_close(m);

    /* restart with a good path: delivered at start, without a submit */
    struct test_cfg good;
    cfg_init(&good, md);
    q = start_queue(s, &good.c);
    struct count_arg ca = {newd, 1};
    assert_true(wait_for(has_files, &ca, 10000));
    struct count_arg qa = {qd, 0};
    assert_true(wait_for(has_exactly, &qa, 10000));
    char **names;
    assert_int_equal(count_files(newd, &names), 1);
    char *fp = path_of(newd, names[0]);
    size_t wl;
    char *want = expected_file("alice@example.test", "bob@dest.test", msg, strlen(msg), &wl);
    assert_file_is(fp, want, wl);
    free(want);
    free(fp);
    free_names(names, 1);

    /* reload to another path: new messages go there; the old config is released */
    char *md2 = path_of(dir, "mail2"), *new2 = path_of(md2, "new");
    struct test_cfg other;
    cfg_init(&other, md2);
    struct errlist errs;
    errlist_init(&errs);
    struct test_cfg broken;
    cfg_init(&broken, "relative");
    assert_int_equal(queue_reload(q, &broken.c, &errs), -1); /* refused: the old one stays */
    assert_int_equal(errs.n, 1);
    assert_string_equal(errs.v[0], "test.conf:7: transport local: maildir path must be absolute");
    assert_int_equal(broken.c.refs, 1);
    errlist_free(&errs);
    errlist_init(&errs);
    assert_int_equal(queue_reload(q, &other.c, &errs), 0);
    assert_int_equal(errs.n, 0);
    errlist_free(&errs);
    for (int t = 0; t < 500 && good.c.refs != 1; t++)
        usleep(10000);
    assert_int_equal(good.c.refs, 1);
    assert_int_equal(other.c.refs, 2);
    commit_msg(s, id, "alice@example.test", rc, 1, msg, strlen(msg), time(NULL));
    queue_submit(q, id);
    struct count_arg c2 = {new2, 1};
    assert_true(wait_for(has_files, &c2, 10000));
    assert_true(wait_for(has_exactly, &qa, 10000));
    assert_int_equal(count_files(newd, NULL), 1);
    queue_stop(q);
    queue_free(q);
    assert_int_equal(other.c.refs, 1);
    free(md2);
    free(new2);
    spool_close(s);
    free(sp);
    free(md);
    free(blocker);
    free(badmd);
    free(newd);
    free(qd);
    rm_rf(dir);
    free(dir);
}

static void test_queue_lifetime_and_corrupt(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_queue");
    char *sp = path_of(dir, "spool"), *blocker = path_of(dir, "blocker");
    char *badmd = path_of(blocker, "mail"), *qd = path_of(sp, "queue"), *cd = path_of(sp, "corrupt");
    FILE *f = fopen(blocker, "w");
    assert_non_null(f);
    fclose(f);
    struct spool *s = open_spool(sp);
    /* a foreign file with a queue-id name is in queue/ before the start */
    char junk[QID_LEN + 1];
    qid_new(junk);
    char jp[600];
    snprintf(jp, sizeof(jp), "%s/%s", qd, junk);
    f = fopen(jp, "w");
    assert_non_null(f);
    fputs("not a spool file\n", f);
    fclose(f);

    struct test_cfg tc;
    cfg_init(&tc, badmd);
    tc.c.queue.lifetime = 60;
    struct queue *q = start_queue(s, &tc.c);
    struct count_arg ca = {cd, 1};
    assert_true(wait_for(has_files, &ca, 10000));
    char **names;
    assert_int_equal(count_files(cd, &names), 1);
    assert_string_equal(names[0], junk);
    free_names(names, 1);

    /* accepted 2 minutes ago with a 1-minute lifetime: the temporary
     * failure is final, the message is removed (not quarantined), and one
     * DSN for both recipients takes its place (deferred in turn: the only
     * transport is broken) */
    const char *rc[] = {"bob@dest.test", "carol@dest.test"};
    char id[QID_LEN + 1];
    commit_msg(s, id, "alice@example.test", rc, 2, "S: x\r\n\r\nb\r\n", 11, time(NULL) - 120);
    queue_submit(q, id);
    char *orig = path_of(qd, id);
    struct other_arg oa = {qd, id};
    assert_true(wait_for(only_other_with_log, &oa, 10000));
    assert_true(file_gone(orig));
    assert_int_equal(count_files(cd, NULL), 1);
    queue_stop(q);
    queue_free(q);
    char **qn;
    assert_int_equal(count_files(qd, &qn), 2);
    assert_string_equal(qn[0] + QID_LEN, ""); /* DSNID, DSNID.st */
    assert_string_equal(qn[1] + QID_LEN, ".st");
    struct spool_msg *m;
    char err[128];
    assert_int_equal(spool_msg_open(s, qn[0], &m, err, sizeof(err)), 0);
    assert_string_equal(m->env.mail_from, "");
    assert_int_equal(m->env.nrcpts, 1);
    assert_string_equal(m->env.rcpts[0].addr, "alice@example.test");
    assert_int_equal(m->env.body, 1); /* 7BIT */
    assert_int_equal(m->attempts[0], 1);
    char *text = msg_text(m);
    char want[256];
    snprintf(want, sizeof(want), "\r\nX-Submitd-Queue-ID: %s\r\n", id);
    assert_non_null(strstr(text, want));
    assert_non_null(strstr(text, "\r\nFinal-Recipient: rfc822; bob@dest.test\r\nAction: failed\r\nStatus: 4.3.0\r\n"));
    assert_non_null(strstr(text, "\r\nFinal-Recipient: rfc822; carol@dest.test\r\nAction: failed\r\n"));
    assert_non_null(strstr(text, "Content-Type: message/rfc822\r\n\r\nReceived: from client.test"));
    assert_non_null(strstr(text, "\r\nS: x\r\n\r\nb\r\n\r\n--=_submitd_"));
    free(text);
    spool_msg_close(m);
    free_names(qn, 2);
    free(orig);
    spool_close(s);
    free(sp);
    free(blocker);
    free(badmd);
    free(qd);
    free(cd);
    rm_rf(dir);
    free(dir);
}

/* Two transports: ok.test goes to a working Maildir, everything else to a
 * broken one. One message to both: one delivered, one deferred; the status
 * log says exactly that. */
static void test_queue_routes(void **state)
{
    (void)state;
    struct qfix fx;
    qfix_init(&fx);
    struct spool *s = fx.s;
    const char *md = fx.md, *badmd = fx.badmd, *newd = fx.newd, *qd = fx.qd;
    struct test_cfg tc;
    two_way_cfg(&tc, badmd, md);
    tc.c.queue.lifetime = 5 * 86400;
    struct queue *q = start_queue(s, &tc.c);
    const char *rc[] = {"far@elsewhere.test", "Near@OK.Test"};
    char id[QID_LEN + 1];
    const char *msg = "Subject: two\r\n\r\nways\r\n";
    commit_msg(s, id, "alice@example.test", rc, 2, msg, strlen(msg), time(NULL));
    queue_submit(q, id);
    char st[600];
    snprintf(st, sizeof(st), "%s/%s.st", qd, id);
    struct count_arg ca = {newd, 1};
    assert_true(wait_for(has_files, &ca, 10000));
    for (int t = 0; t < 1000; t++) {
        char *x = read_file_max(st, 1 << 20, NULL);
        int ok = x && strstr(x, "retry 0 ") && strstr(x, "done 1 ");
        free(x);
        if (ok)
            break;
        usleep(10000);
    }
    queue_stop(q);
    queue_free(q);
    struct spool_msg *m;
    char err[128];
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), 0);
    assert_int_equal(m->state[0], RCPT_PENDING);
    assert_int_equal(m->attempts[0], 1);
    assert_int_equal(m->state[1], RCPT_DONE);
    spool_msg_close(m);
    char **names;
    assert_int_equal(count_files(newd, &names), 1);
    assert_non_null(strstr(names[0], "R1."));
    char *fp = path_of(newd, names[0]);
    size_t wl;
    char *want = expected_file("alice@example.test", "Near@OK.Test", msg, strlen(msg), &wl);
    assert_file_is(fp, want, wl);
    free(want);
    free(fp);
    free_names(names, 1);
    qfix_free(&fx);
}

/* ---- bounces and operator actions ------------------------------------------------- */


static void commit_notify(struct spool *s, char id[QID_LEN + 1], const char *from, const char *rcpt,
                          unsigned notify, int64_t received)
{
    struct envelope e;
    envelope_init(&e);
    qid_new(id);
    memcpy(e.id, id, QID_LEN + 1);
    e.mail_from = xstrdup(from);
    e.received = received;
    envelope_add_rcpt(&e, rcpt, notify, NULL);
    const char *msg = "Subject: n\r\n\r\nnotify\r\n";
    struct spool_writer *w = spool_writer_new(s, id);
    assert_non_null(w);
    spool_writer_write(w, msg, strlen(msg));
    assert_int_equal(spool_commit(w, &e), 0);
    envelope_free(&e);
}

/* Files in a Maildir's new/ whose text contains needle. */
static int count_with(const char *newd, const char *needle)
{
    char **names;
    int n = count_files(newd, &names), c = 0;
    for (int i = 0; i < n; i++) {
        char *p = path_of(newd, names[i]);
        char *t = read_file_max(p, 1 << 20, NULL);
        c += t && strstr(t, needle) != NULL;
        free(t);
        free(p);
    }
    free_names(names, n);
    return c;
}

static int count_lines_with(const char *path, const char *prefix)
{
    char *t = read_file_max(path, 1 << 20, NULL);
    int c = 0;
    for (char *p = t; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : p + strlen(p))
        c += strncmp(p, prefix, strlen(prefix)) == 0;
    free(t);
    return c;
}

struct lines_arg {
    const char *path, *prefix;
    int want;
};

static int has_lines(void *arg)
{
    struct lines_arg *a = arg;
    return count_lines_with(a->path, a->prefix) >= a->want;
}

/* Splits req at spaces and runs it through the `queue` control verb. */
static int ctl(struct queue *q, const char *req, char **text)
{
    char buf[512];
    str_copy(buf, req, sizeof(buf));
    char *argv[16];
    int argc = 0;
    for (char *save = NULL, *p = strtok_r(buf, " ", &save); p && argc < 16; p = strtok_r(NULL, " ", &save))
        argv[argc++] = p;
    struct strbuf out;
    sb_init(&out);
    int rc = queue_control(q, argc, argv, &out);
    *text = sb_steal(&out);
    return rc;
}

/* Failures and expiry bounce once per message and batch, to the sender,
 * through the routes; a recorded report is not repeated after a restart,
 * a missing one is made up for; never for the null sender or a NOTIFY
 * without FAILURE; a delay warning once. */
static void test_queue_bounces(void **state)
{
    (void)state;
    struct qfix fx;
    qfix_init(&fx);
    struct spool *s = fx.s;
    const char *md = fx.md, *badmd = fx.badmd, *newd = fx.newd, *qd = fx.qd;
    int64_t now = (int64_t)time(NULL);
    char a[QID_LEN + 1], b[QID_LEN + 1], c[QID_LEN + 1], d[QID_LEN + 1], e[QID_LEN + 1], fd[QID_LEN + 1];
    /* A: expired -> one DSN */
    commit_notify(s, a, "alice@ok.test", "x@far.test", 0, now - 120);
    /* B, C: a failure recorded before a crash; B's report recorded too */
    const char *rc2[] = {"y@far.test", "z@ok.test"};
    const char *msg = "Subject: bc\r\n\r\nbody\r\n";
    commit_msg(s, b, "alice@ok.test", rc2, 2, msg, strlen(msg), now);
    commit_msg(s, c, "alice@ok.test", rc2, 2, msg, strlen(msg), now);
    for (int k = 0; k < 2; k++) {
        struct spool_msg *m;
        char err[128];
        assert_int_equal(spool_msg_open(s, k ? c : b, &m, err, sizeof(err)), 0);
        assert_int_equal(spool_mark_failed(s, m, 0, "550 5.1.1 gone"), 0);
        size_t zero = 0;
        if (k == 0)
            assert_int_equal(spool_mark_reported(s, m, &zero, 1, SPOOL_REPORTED_FAILED, a), 0);
        spool_msg_close(m);
    }
    /* D: null sender; E: NOTIFY=SUCCESS,DELAY; both expired: no DSN */
    commit_notify(s, d, "", "x@far.test", 0, now - 120);
    commit_notify(s, e, "alice@ok.test", "x@far.test", 2 | 8, now - 120);
    /* F: deferred for 10 s already, delay-warning 1 s: one warning */
    commit_notify(s, fd, "alice@ok.test", "w@far.test", 0, now - 10);

    struct test_cfg tc;
    two_way_cfg(&tc, badmd, md);
    tc.c.queue.delay_warning = 1;
    struct queue *q = start_queue(s, &tc.c); /* the scan finds all six */
    struct count_arg ma = {newd, 5}, qa = {qd, 2};
    assert_true(wait_for(has_files, &ma, 10000));
    assert_true(wait_for(has_exactly, &qa, 10000)); /* only F and F.st left */
    char *fst = path_of(qd, fd);
    char fstst[600];
    snprintf(fstst, sizeof(fstst), "%s.st", fst);
    struct lines_arg la = {fstst, "reported 0 ", 1};
    assert_true(wait_for(has_lines, &la, 10000));
    /* F again: deferred again, but warned only once */
    char *t;
    char req[64];
    snprintf(req, sizeof(req), "queue flush %s", fd);
    assert_int_equal(ctl(q, req, &t), 0);
    assert_string_equal(t, "flushed 1 message\n");
    free(t);
    struct lines_arg lr = {fstst, "retry 0 ", 2};
    assert_true(wait_for(has_lines, &lr, 10000));
    queue_stop(q);
    queue_free(q);
    assert_int_equal(count_files(qd, NULL), 2);
    assert_int_equal(count_files(newd, NULL), 5);
    assert_int_equal(count_lines_with(fstst, "reported 0 "), 1);

    /* A's, C's and F's DSNs (to the sender, from the null sender) and B's
     * and C's z@ok.test copies */
    assert_int_equal(count_with(newd, "Return-Path: <>\nDelivered-To: <alice@ok.test>\n"), 3);
    assert_int_equal(count_with(newd, "Delivered-To: <z@ok.test>\n"), 2);
    char want[128];
    snprintf(want, sizeof(want), "\nX-Submitd-Queue-ID: %s\n", a);
    assert_int_equal(count_with(newd, want), 1);
    snprintf(want, sizeof(want), "\nX-Submitd-Queue-ID: %s\n", c);
    assert_int_equal(count_with(newd, want), 1);
    snprintf(want, sizeof(want), "\nX-Submitd-Queue-ID: %s\n", fd);
    assert_int_equal(count_with(newd, want), 1);
    assert_int_equal(count_with(newd, "\nSubject: Undelivered Mail Returned to Sender\n"), 2);
    assert_int_equal(count_with(newd, "\nSubject: Delayed Mail (still being retried)\n"), 1);
    assert_int_equal(count_with(newd, "\nAuto-Submitted: auto-replied\n"), 3);
    assert_int_equal(count_with(newd, "\nFrom: Mail Delivery System <MAILER-DAEMON@mx.test>\n"), 3);
    /* C's report comes from the status log: the recorded reply, permanent */
    assert_int_equal(count_with(newd, "\nFinal-Recipient: rfc822; y@far.test\nAction: failed\nStatus: 5.1.1\n"
                                      "Diagnostic-Code: smtp; 550 5.1.1 gone\n"),
                     1);
    assert_int_equal(count_with(newd, "\nFinal-Recipient: rfc822; w@far.test\nAction: delayed\nStatus: 4.3.0\n"), 1);
    assert_int_equal(count_with(newd, "\nFinal-Recipient: rfc822; x@far.test\nAction: failed\nStatus: 4.3.0\n"), 1);
    free(fst);
    qfix_free(&fx);
}

struct ctl_arg {
    struct queue *q;
    const char *req, *want;
};

static int ctl_says(void *arg)
{
    struct ctl_arg *a = arg;
    char *t;
    ctl(a->q, a->req, &t);
    int ok = strstr(t, a->want) != NULL;
    free(t);
    return ok;
}

/* hold (durable across a restart), show, list, release, flush, delete,
 * queue_submit_held, and the control verb's errors. */
static void test_queue_operator(void **state)
{
    (void)state;
    struct qfix fx;
    qfix_init(&fx);
    struct spool *s = fx.s;
    const char *md = fx.md, *badmd = fx.badmd, *newd = fx.newd, *qd = fx.qd;
    struct test_cfg tc;
    two_way_cfg(&tc, badmd, md);
    tc.c.queue.lifetime = 3600;
    struct queue *q = start_queue(s, &tc.c);
    char *t, req[128];

    /* held at submission: never delivered, the hold is in the status log */
    const char *ok1[] = {"u@ok.test"};
    char h[QID_LEN + 1];
    commit_msg(s, h, "alice@example.test", ok1, 1, "S: h\r\n\r\nh\r\n", 12, time(NULL));
    assert_int_equal(queue_submit_held(q, h, "abuse: 500 messages in 1m"), 0);
    char *hst = path_of(qd, h);
    char hstst[600];
    snprintf(hstst, sizeof(hstst), "%s.st", hst);
    assert_int_equal(count_lines_with(hstst, "hold "), 1);
    snprintf(req, sizeof(req), "queue show %s", h);
    assert_int_equal(ctl(q, req, &t), 0);
    assert_non_null(strstr(t, "\nstate: held\nhold-reason: abuse: 500 messages in 1m\nnext-try: -\n"));
    assert_non_null(strstr(t, "\nsender: <alice@example.test>\n"));
    assert_non_null(strstr(t, "\nrcpt 0 <u@ok.test> pending attempts=0\n"));
    free(t);
    assert_int_equal(ctl(q, "queue list", &t), 0);
    assert_true(strncmp(t, "ID               AGE    SIZE   PEND DONE FAIL STATE   NEXT     SENDER\n", 70) == 0);
    /* AGE: 0s, or a few seconds on a loaded machine (the clock ticked) */
    int age_ok = 0;
    for (int age = 0; age <= 5 && !age_ok; age++) {
        snprintf(req, sizeof(req), "\n%s %ds     12     1    0    0    held    -        <alice@example.test>\n", h,
                 age);
        age_ok = strstr(t, req) != NULL;
    }
    assert_true(age_ok);
    assert_non_null(strstr(t, "\n1 message, 1 held\n"));
    free(t);

    /* a restart: still held (found by the scan, skipped by its run) */
    queue_stop(q);
    queue_free(q);
    q = start_queue(s, &tc.c);
    snprintf(req, sizeof(req), "queue flush %s", h);
    struct ctl_arg held_arg = {q, req, "held; release it to deliver it"};
    assert_true(wait_for(ctl_says, &held_arg, 10000));
    assert_int_equal(count_files(newd, NULL), 0);
    snprintf(req, sizeof(req), "queue hold %s again", h);
    assert_int_equal(ctl(q, req, &t), 0);
    snprintf(req, sizeof(req), "%s: was already held\n", h);
    assert_string_equal(t, req);
    free(t);
    assert_int_equal(queue_release(q, h), 0);
    struct count_arg one = {newd, 1};
    assert_true(wait_for(has_files, &one, 10000));
    assert_true(wait_for(file_gone, hst, 10000));
    snprintf(req, sizeof(req), "queue show %s", h);
    char gone[64];
    snprintf(gone, sizeof(gone), "unknown queue id %s\n", h); /* not "(just removed)": its run has ended */
    struct ctl_arg gone_arg = {q, req, gone};
    assert_true(wait_for(ctl_says, &gone_arg, 10000));
    assert_int_equal(queue_hold(q, h, "gone"), -1);
    assert_int_equal(errno, ENOENT);

    /* deferred to a broken route: flush after fixing the route delivers at once */
    const char *far[] = {"v@far.test"};
    char r[QID_LEN + 1];
    commit_msg(s, r, "alice@example.test", far, 1, "S: r\r\n\r\nr\r\n", 12, time(NULL));
    queue_submit(q, r);
    char rst[600];
    snprintf(rst, sizeof(rst), "%s/%s.st", qd, r);
    struct lines_arg lr = {rst, "retry 0 ", 1};
    assert_true(wait_for(has_lines, &lr, 10000));
    snprintf(req, sizeof(req), "queue show %s", r);
    struct ctl_arg show_arg = {q, req, "\nstate: queued\nnext-try: in "};
    assert_true(wait_for(ctl_says, &show_arg, 10000));
    assert_int_equal(ctl(q, req, &t), 0);
    /* the first retry is 5m after the failure; a slow machine (sanitizers, a
     * slow fsync) may take over a second between that and this show: 4m */
    assert_true(strstr(t, "\nnext-try: in 5m\n") || strstr(t, "\nnext-try: in 4m\n"));
    assert_non_null(strstr(t, "\nrcpt 0 <v@far.test> pending attempts=1 next-try="));
    assert_non_null(strstr(t, "\n  last-reply: 451 4.3.0 maildir "));
    free(t);
    struct test_cfg fixed;
    cfg_init(&fixed, md);
    struct errlist errs;
    errlist_init(&errs);
    assert_int_equal(queue_reload(q, &fixed.c, &errs), 0);
    errlist_free(&errs);
    assert_int_equal(ctl(q, "queue flush", &t), 0);
    assert_string_equal(t, "flushed 1 message\n");
    free(t);
    struct count_arg two = {newd, 2};
    assert_true(wait_for(has_files, &two, 10000));

    /* delete: gone without a bounce */
    struct errlist errs2;
    errlist_init(&errs2);
    assert_int_equal(queue_reload(q, &tc.c, &errs2), 0);
    errlist_free(&errs2);
    char x[QID_LEN + 1];
    commit_msg(s, x, "alice@ok.test", far, 1, "S: x\r\n\r\nx\r\n", 12, time(NULL));
    queue_submit(q, x);
    snprintf(rst, sizeof(rst), "%s/%s.st", qd, x);
    assert_true(wait_for(has_lines, &lr, 10000));
    snprintf(req, sizeof(req), "queue delete %s", x);
    assert_int_equal(ctl(q, req, &t), 0);
    assert_true(strstr(t, ": deleted (no bounce)\n") || strstr(t, "when the delivery in progress ends"));
    free(t);
    struct count_arg none = {qd, 0};
    assert_true(wait_for(has_exactly, &none, 10000));
    assert_int_equal(ctl(q, "queue list", &t), 0);
    assert_non_null(strstr(t, "\n0 messages, 0 held\n"));
    free(t);

    /* errors */
    assert_int_equal(ctl(q, "queue show 0123456789ABCDEF", &t), -1);
    assert_string_equal(t, "unknown queue id 0123456789ABCDEF\n");
    free(t);
    assert_int_equal(ctl(q, "queue release nope", &t), -1);
    assert_string_equal(t, "unknown queue id nope\n");
    free(t);
    assert_int_equal(ctl(q, "queue flush 0123456789ABCDEF", &t), -1);
    free(t);
    assert_int_equal(ctl(q, "queue bogus", &t), -1);
    assert_string_equal(t, "usage: queue list | show ID | flush [ID] | hold ID [REASON...] | release ID | delete ID\n");
    free(t);
    assert_int_equal(ctl(q, "queue hold", &t), -1);
    free(t);
    assert_int_equal(ctl(q, "queue", &t), -1);
    free(t);
    queue_stop(q);
    queue_free(q);
    assert_int_equal(count_files(newd, NULL), 2);
    free(hst);
    qfix_free(&fx);
}

static void test_queue_new_errors(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_queue");
    struct spool *s = open_spool(dir);
    struct test_cfg tc;
    cfg_init(&tc, "/x/%d");
    tc.t[0].type = "carrier-pigeon";
    struct errlist errs;
    errlist_init(&errs);
    assert_null(queue_new(s, &tc.c, &errs));
    assert_int_equal(errs.n, 1);
    assert_string_equal(errs.v[0], "test.conf:7: transport local: unknown type carrier-pigeon");
    assert_int_equal(tc.c.refs, 1);
    errlist_free(&errs);
    spool_close(s);
    rm_rf(dir);
    free(dir);
}

int main(void)
{
    log_init("test_queue", 0, LOG_LVL_ERR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream),
        cmocka_unit_test(test_maildir_layout),
        cmocka_unit_test(test_maildir_expand_and_check),
        cmocka_unit_test(test_maildir_failure),
        cmocka_unit_test(test_queue_end_to_end),
        cmocka_unit_test(test_queue_idle_flush),
        cmocka_unit_test(test_queue_retry_restart_reload),
        cmocka_unit_test(test_queue_lifetime_and_corrupt),
        cmocka_unit_test(test_queue_routes),
        cmocka_unit_test(test_queue_new_errors),
        cmocka_unit_test(test_queue_bounces),
        cmocka_unit_test(test_queue_operator),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
