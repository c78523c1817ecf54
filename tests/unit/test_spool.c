/* Unit tests for the spool: the envelope codec (round trips with nasty
 * values, strict decode errors), writer + commit + open + pread, abort and
 * commit failures leaving nothing behind, torn/foreign/corrupt files, the
 * .st status log (replay, torn last record, bad records; hold, release
 * and reported records, read-only peeks), remove,
 * quarantine, scan order and tmp/ clean-up at open, and concurrent commits
 * and removals sharing the group fsync of queue/, and the recycling of
 * removed files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"
#include "tmpdir.h"
#include "queue/spool.h"

/* ---- helpers ---------------------------------------------------------------- */

/* Names in dir/sub, sorted, joined by ','. */
static char *list_dir(const char *dir, const char *sub)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", dir, sub);
    struct dirent **nl;
    int n = scandir(p, &nl, NULL, alphasort);
    struct strbuf b;
    sb_init(&b);
    sb_puts(&b, "");
    for (int i = 0; i < n; i++) {
        if (strcmp(nl[i]->d_name, ".") != 0 && strcmp(nl[i]->d_name, "..") != 0)
            sb_printf(&b, "%s%s", b.len ? "," : "", nl[i]->d_name);
        free(nl[i]);
    }
    if (n >= 0)
        free(nl);
    return sb_steal(&b);
}

static struct spool *open_spool_journal(const char *dir)
{
    struct errlist errs;
    errlist_init(&errs);
    struct spool *s = spool_open(dir, &errs);
    assert_int_equal(errs.n, 0);
    assert_non_null(s);
    errlist_free(&errs);
    return s;
}

/* Most tests here check the queue-file format and its paths: every
 * message gets a file (the journal has its own tests below). */
static struct spool *open_spool(const char *dir)
{
    struct spool *s = open_spool_journal(dir);
    spool_use_journal(s, 0);
    return s;
}

static void fill_env(struct envelope *e, size_t nrcpts)
{
    envelope_init(e);
    e->mail_from = xstrdup("alice@example.test");
    e->auth_user = xstrdup("alice");
    e->client_ip = xstrdup("127.0.0.1");
    e->helo = xstrdup("client.test");
    e->listener = xstrdup("submission");
    e->body = 2;
    e->smtputf8 = 0;
    e->dsn_ret = 1;
    e->received = 1700000000;
    e->prepend = xstrdup("Received: from client.test\r\n\tby mx.test; date\r\n");
    for (size_t i = 0; i < nrcpts; i++) {
        char a[64];
        snprintf(a, sizeof(a), "rcpt%zu@dest.test", i);
        envelope_add_rcpt(e, a, (unsigned)(i % 16), i % 2 ? "rfc822;x@y" : NULL);
    }
}

/* Commits body[0..n) as a new message; id is filled. */
static void commit_msg(struct spool *s, char id[QID_LEN + 1], const void *body, size_t n, size_t nrcpts)
{
    struct envelope e;
    fill_env(&e, nrcpts);
    qid_new(id);
    memcpy(e.id, id, QID_LEN + 1);
    struct spool_writer *w = spool_writer_new(s, id);
    assert_non_null(w);
    spool_writer_write(w, body, n);
    e.size = spool_writer_size(w);
    assert_int_equal(spool_commit(w, &e), 0);
    envelope_free(&e);
}

static int streq_null(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

static void assert_env_equal(const struct envelope *a, const struct envelope *b)
{
    assert_string_equal(a->id, b->id);
    assert_true(streq_null(a->mail_from, b->mail_from));
    assert_true(streq_null(a->auth_user, b->auth_user));
    assert_true(streq_null(a->client_ip, b->client_ip));
    assert_true(streq_null(a->helo, b->helo));
    assert_true(streq_null(a->listener, b->listener));
    assert_true(streq_null(a->envid, b->envid));
    assert_true(streq_null(a->prepend, b->prepend));
    assert_int_equal(a->body, b->body);
    assert_int_equal(a->smtputf8, b->smtputf8);
    assert_int_equal(a->dsn_ret, b->dsn_ret);
    assert_int_equal(a->received, b->received);
    assert_int_equal(a->size, b->size);
    assert_int_equal(a->nrcpts, b->nrcpts);
    for (size_t i = 0; i < a->nrcpts; i++) {
        assert_string_equal(a->rcpts[i].addr, b->rcpts[i].addr);
        assert_int_equal(a->rcpts[i].notify, b->rcpts[i].notify);
        assert_true(streq_null(a->rcpts[i].orcpt, b->rcpts[i].orcpt));
    }
}

static void roundtrip(const struct envelope *e)
{
    struct strbuf t;
    sb_init(&t);
    spool_env_encode(e, &t);
    /* the trailer is printable ASCII lines only */
    for (size_t i = 0; i < t.len; i++)
        assert_true(t.s[i] == '\n' || (t.s[i] >= 0x20 && t.s[i] < 0x7f));
    struct envelope d;
    char err[128] = "";
    assert_int_equal(spool_env_decode(t.s, t.len, &d, err, sizeof(err)), 0);
    assert_env_equal(e, &d);
    struct strbuf t2;
    sb_init(&t2);
    spool_env_encode(&d, &t2);
    assert_int_equal(t.len, t2.len);
    assert_memory_equal(t.s, t2.s, t.len);
    envelope_free(&d);
    sb_free(&t);
    sb_free(&t2);
}

/* ---- envelope codec -------------------------------------------------------------- */

static void test_env_roundtrip(void **state)
{
    (void)state;
    struct envelope e;
    fill_env(&e, 0);
    qid_new(e.id);
    e.size = 12345678901ull;
    e.received = -5;
    roundtrip(&e); /* 0 recipients */

    free(e.helo);
    e.helo = xstrdup("he\r\nlo \"q\" \\ \x01\x7f caf\xc3\xa9 \xff\xfe end ");
    e.envid = xstrdup("  env id with spaces\ttab  ");
    free(e.prepend);
    e.prepend = xstrdup("Received: from x\r\n\tby y;\r\n\tTue, 1 Jan 2030 00:00:00 +0000\r\nX-Bare: \r \n\r\n");
    free(e.mail_from);
    e.mail_from = xstrdup("");
    free(e.auth_user);
    e.auth_user = NULL;
    e.smtputf8 = 1;
    e.body = 3;
    e.dsn_ret = 2;
    envelope_add_rcpt(&e, "r\xc3\xa9@d\xc3\xa9.test", 15, "utf-8;r\r\n\"x\"@y ");
    envelope_add_rcpt(&e, "\"odd local\"@x.test", 0, "");
    roundtrip(&e);
    for (int i = 0; i < 2000; i++) {
        char a[64];
        snprintf(a, sizeof(a), "many%d@dest-%d.test", i, i % 7);
        envelope_add_rcpt(&e, a, (unsigned)(i & 15), i % 3 ? NULL : a);
    }
    assert_int_equal(e.nrcpts, 2002);
    roundtrip(&e);
    struct envelope c;
    envelope_copy(&c, &e);
    assert_env_equal(&e, &c);
    assert_ptr_not_equal(c.rcpts, e.rcpts);
    envelope_free(&e);
    assert_int_equal(c.nrcpts, 2002); /* independent of the original */
    assert_string_equal(c.rcpts[2001].addr, "many1999@dest-4.test");
    envelope_free(&c);
    assert_null(e.rcpts);
    assert_int_equal(e.nrcpts, 0);
}

static int decode_fails(const char *text, const char *want_reason)
{
    struct envelope d;
    char err[160] = "";
    int rc = spool_env_decode(text, strlen(text), &d, err, sizeof(err));
    if (rc == 0) {
        envelope_free(&d);
        return 0;
    }
    if (want_reason && !strstr(err, want_reason)) {
        fprintf(stderr, "reason '%s' lacks '%s'\n", err, want_reason);
        return 0;
    }
    return rc == -1;
}

/* Replaces the first occurrence of `from` in t with `to`. */
static char *subst(const char *t, const char *from, const char *to)
{
    const char *p = strstr(t, from);
    assert_non_null(p);
    struct strbuf b;
    sb_init(&b);
    sb_append(&b, t, (size_t)(p - t));
    sb_puts(&b, to);
    sb_puts(&b, p + strlen(from));
    return sb_steal(&b);
}

static void test_env_decode_errors(void **state)
{
    (void)state;
    struct envelope e;
    fill_env(&e, 3);
    qid_new(e.id);
    e.envid = xstrdup("E1");
    struct strbuf t;
    sb_init(&t);
    spool_env_encode(&e, &t);
    envelope_free(&e);
    /* every proper prefix (a torn trailer) is refused */
    for (size_t l = 0; l < t.len; l++) {
        struct envelope d;
        char err[128];
        assert_int_equal(spool_env_decode(t.s, l, &d, err, sizeof(err)), -1);
        assert_null(d.mail_from);
    }
    assert_true(decode_fails("", "empty"));
    char *x;
    x = subst(t.s, "submitd-envelope 1", "submitd-envelope 2");
    assert_true(decode_fails(x, "version"));
    free(x);
    x = subst(t.s, "submitd-envelope 1", "hello");
    assert_true(decode_fails(x, "not a submitd envelope"));
    free(x);
    x = subst(t.s, "helo \"client.test\"\n", "");
    assert_true(decode_fails(x, "missing field helo"));
    free(x);
    x = subst(t.s, "body 2", "body x");
    assert_true(decode_fails(x, "bad number"));
    free(x);
    x = subst(t.s, "body 2", "body 02");
    assert_true(decode_fails(x, "bad number"));
    free(x);
    x = subst(t.s, "body 2", "body 4");
    assert_true(decode_fails(x, "out of range"));
    free(x);
    x = subst(t.s, "size ", "size 99999999999999999999999");
    assert_true(decode_fails(x, NULL));
    free(x);
    x = subst(t.s, "client.test", "cli\\x4gent");
    assert_true(decode_fails(x, "bad escape"));
    free(x);
    x = subst(t.s, "client.test", "cli\\qent");
    assert_true(decode_fails(x, "bad escape"));
    free(x);
    x = subst(t.s, "client.test", "cli\\x00ent");
    assert_true(decode_fails(x, "NUL"));
    free(x);
    x = subst(t.s, "client.test", "cli\xc3\xa9nt");
    assert_true(decode_fails(x, "non-ASCII"));
    free(x);
    x = subst(t.s, "\"client.test\"", "\"client.test");
    assert_true(decode_fails(x, "unterminated"));
    free(x);
    x = subst(t.s, "\"client.test\"", "\"client.test\" more");
    assert_true(decode_fails(x, "trailing"));
    free(x);
    x = subst(t.s, "envid \"E1\"", "envid \"E1\"\nfrobnicate 1");
    assert_true(decode_fails(x, "unknown key"));
    free(x);
    x = subst(t.s, "envid \"E1\"", "envid \"E1\"\nenvid \"E2\"");
    assert_true(decode_fails(x, "duplicate"));
    free(x);
    x = subst(t.s, "rcpts 3", "rcpts 4");
    assert_true(decode_fails(x, "fewer rcpt"));
    free(x);
    x = subst(t.s, "rcpts 3", "rcpts 2");
    assert_true(decode_fails(x, "more rcpt"));
    free(x);
    x = subst(t.s, "\"rcpt0@dest.test\"", "\"\"");
    assert_true(decode_fails(x, "empty recipient"));
    free(x);
    x = subst(t.s, "rcpt \"rcpt0@dest.test\" 0 -", "rcpt \"rcpt0@dest.test\"  0 -");
    assert_true(decode_fails(x, NULL));
    free(x);
    x = subst(t.s, "\nend\n", "\nend\nextra 1\n");
    assert_true(decode_fails(x, "after end"));
    free(x);
    x = subst(t.s, "\nend\n", "\n");
    assert_true(decode_fails(x, "no end line"));
    free(x);
    x = subst(t.s, "id ", "id 0123");
    assert_true(decode_fails(x, "bad id"));
    free(x);
    /* and the unmodified text still decodes */
    struct envelope d;
    assert_int_equal(spool_env_decode(t.s, t.len, &d, NULL, 0), 0);
    assert_string_equal(d.envid, "E1");
    assert_int_equal(d.nrcpts, 3);
    assert_int_equal(d.rcpts[1].notify, 1);
    assert_string_equal(d.rcpts[1].orcpt, "rfc822;x@y");
    assert_null(d.rcpts[0].orcpt);
    envelope_free(&d);
    sb_free(&t);
}

/* ---- writer, commit, read -------------------------------------------------------- */

static void test_commit_open_pread(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_spool");
    struct spool *s = open_spool(dir);
    assert_string_equal(spool_dir(s), dir);
    char p[512];
    struct stat st;
    const char *subs[] = {"tmp", "queue", "corrupt"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, subs[i]);
        assert_int_equal(stat(p, &st), 0);
        assert_true(S_ISDIR(st.st_mode));
        assert_int_equal(st.st_mode & 0777, 0700);
    }
    size_t n = 300000;
    unsigned char *body = xmalloc(n);
    for (size_t i = 0; i < n; i++)
        body[i] = (unsigned char)((i * 131u + (i >> 9)) & 0xff);
    char id[QID_LEN + 1];
    qid_new(id);
    struct spool_writer *w = spool_writer_new(s, id);
    assert_non_null(w);
    snprintf(p, sizeof(p), "%s/tmp/%s", dir, id);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    /* a second writer for the same id is refused (O_EXCL) */
    assert_null(spool_writer_new(s, id));
    assert_int_equal(errno, EEXIST);
    size_t chunks[] = {1, 2, 1000, 65535, 65536, 70000, 3};
    size_t off = 0;
    for (size_t i = 0; off < n; i++) {
        size_t c = chunks[i % ARRAY_LEN(chunks)];
        if (c > n - off)
            c = n - off;
        spool_writer_write(w, body + off, c);
        off += c;
    }
    assert_int_equal(spool_writer_failed(w), 0);
    assert_int_equal(spool_writer_size(w), n);
    struct envelope e;
    fill_env(&e, 2);
    memcpy(e.id, id, sizeof(id));
    e.size = n;
    assert_int_equal(spool_commit(w, &e), 0);
    assert_int_equal(stat(p, &st), -1); /* gone from tmp/ */
    snprintf(p, sizeof(p), "%s/queue/%s", dir, id);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_true((uint64_t)st.st_size > n);

    struct spool_msg *m;
    char err[128] = "";
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), 0);
    assert_env_equal(&e, &m->env);
    assert_int_equal(m->state[0], RCPT_PENDING);
    assert_int_equal(m->state[1], RCPT_PENDING);
    assert_int_equal(m->next_try[0], 0);
    assert_int_equal(m->attempts[1], 0);
    assert_false(spool_msg_complete(m));
    unsigned char *back = xmalloc(n + 100);
    size_t got = 0;
    while (got < n) {
        ssize_t r = spool_msg_pread(m, back + got, 50000, got);
        assert_true(r > 0);
        got += (size_t)r;
    }
    assert_memory_equal(back, body, n);
    /* never past the message bytes into the trailer */
    assert_int_equal(spool_msg_pread(m, back, 100, n - 10), 10);
    assert_memory_equal(back, body + n - 10, 10);
    assert_int_equal(spool_msg_pread(m, back, 100, n), 0);
    spool_msg_close(m);
    envelope_free(&e);

    /* an empty message works too */
    char id2[QID_LEN + 1];
    commit_msg(s, id2, "", 0, 1);
    assert_int_equal(spool_msg_open(s, id2, &m, err, sizeof(err)), 0);
    assert_int_equal(m->env.size, 0);
    assert_int_equal(spool_msg_pread(m, back, 10, 0), 0);
    spool_msg_close(m);

    /* ids that are not queue ids never reach a path */
    assert_null(spool_writer_new(s, "../../etc/passwd"));
    assert_int_equal(errno, EINVAL);
    assert_int_equal(spool_msg_open(s, "../queue/x", &m, err, sizeof(err)), -1);
    assert_null(m);
    assert_int_equal(spool_remove(s, "0123"), -1);
    assert_int_equal(spool_quarantine(s, "/etc/passwd"), -1);
    free(body);
    free(back);
    spool_close(s);
    rm_rf(dir);
    free(dir);
}

static void test_abort_and_commit_failures(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_spool");
    struct spool *s = open_spool(dir);
    char id[QID_LEN + 1];
    char *l;

    /* abort */
    qid_new(id);
    struct spool_writer *w = spool_writer_new(s, id);
    assert_non_null(w);
    spool_writer_write(w, "hello\r\n", 7);
    spool_writer_abort(w);
    l = list_dir(dir, "tmp");
    assert_string_equal(l, "");
    free(l);

    /* rename onto a directory in the way */
    qid_new(id);
    char p[512];
    snprintf(p, sizeof(p), "%s/queue/%s", dir, id);
    assert_int_equal(mkdir(p, 0700), 0);
    w = spool_writer_new(s, id);
    assert_non_null(w);
    spool_writer_write(w, "hello\r\n", 7);
    struct envelope e;
    fill_env(&e, 1);
    errno = 0;
    assert_int_equal(spool_commit(w, &e), -1);
    assert_true(errno == EEXIST || errno == EISDIR);
    l = list_dir(dir, "tmp");
    assert_string_equal(l, "");
    free(l);
    assert_int_equal(rmdir(p), 0);

    /* a write error (file size limit -> EFBIG) is sticky and surfaces as errno */
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    void (*oldsig)(int) = signal(SIGXFSZ, SIG_IGN);
    lim = old;
    lim.rlim_cur = 100000;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    qid_new(id);
    w = spool_writer_new(s, id);
    assert_non_null(w);
    char *big = xcalloc(1, 70000);
    spool_writer_write(w, big, 70000);
    spool_writer_write(w, big, 70000); /* flushes: over the limit */
    int werr = spool_writer_failed(w);
    spool_writer_write(w, "x", 1); /* ignored */
    assert_int_equal(spool_writer_failed(w), EFBIG);
    assert_int_equal(werr, EFBIG);
    assert_int_equal(spool_writer_size(w), 70000);
    errno = 0;
    assert_int_equal(spool_commit(w, &e), -1);
    assert_int_equal(errno, EFBIG);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, oldsig);
    free(big);
    l = list_dir(dir, "tmp");
    assert_string_equal(l, "");
    free(l);
    l = list_dir(dir, "queue");
    assert_string_equal(l, "");
    free(l);
    envelope_free(&e);
    spool_close(s);
    rm_rf(dir);
    free(dir);
}

static void write_file(const char *path, const void *data, size_t n, int append)
{
    int fd = open(path, O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC), 0600);
    assert_true(fd >= 0);
    assert_int_equal(write_all(fd, data, n), 0);
    close(fd);
}

static off_t file_size(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return -1;
    return st.st_size;
}

static void test_status_log(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_spool");
    struct spool *s = open_spool(dir);
    char id[QID_LEN + 1], st[512], err[160];
    commit_msg(s, id, "Subject: x\r\n\r\nbody\r\n", 20, 4);
    snprintf(st, sizeof(st), "%s/queue/%s.st", dir, id);
    struct spool_msg *m;
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), 0);
    assert_int_equal(file_size(st), -1); /* created on the first record */
    assert_int_equal(spool_mark_retry(s, m, 0, 1800000000, "451 4.3.0 try \"later\"\r\n"), 0);
    assert_int_equal(m->attempts[0], 1);
    assert_int_equal(m->next_try[0], 1800000000);
    assert_int_equal(spool_mark_done(s, m, 1), 0);
    assert_int_equal(spool_mark_failed(s, m, 2, "550 5.1.1 no such user"), 0);
    assert_int_equal(spool_mark_retry(s, m, 0, 1800000600, "451 again"), 0);
    assert_int_equal(m->attempts[0], 2);
    assert_int_equal(spool_mark_done(s, m, 99), -1);
    assert_int_equal(m->state[1], RCPT_DONE);
    assert_int_equal(m->state[2], RCPT_FAILED);
    spool_msg_close(m);

    /* replay */
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), 0);
    assert_int_equal(m->state[0], RCPT_PENDING);
    assert_int_equal(m->attempts[0], 2);
    assert_int_equal(m->next_try[0], 1800000600);
    assert_int_equal(m->state[1], RCPT_DONE);
    assert_int_equal(m->state[2], RCPT_FAILED);
    assert_int_equal(m->state[3], RCPT_PENDING);
    assert_int_equal(m->next_try[3], 0);
    assert_int_equal(m->attempts[3], 0);
    assert_false(spool_msg_complete(m));
    /* a later record never reopens a final state */
    assert_int_equal(spool_mark_done(s, m, 2), 0);
    spool_msg_close(m);
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), 0);
    assert_int_equal(m->state[2], RCPT_FAILED);
    spool_msg_close(m);

    /* a torn last record (no newline) is ignored and cut off */
    off_t good = file_size(st);
    write_file(st, "done 0 1700000000 1234", 22, 1);
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), 0);
    assert_int_equal(m->state[0], RCPT_PENDING);
    assert_int_equal(m->attempts[0], 2);
    assert_int_equal(file_size(st), good);
    /* the next record starts on its own line and is read back */
    assert_int_equal(spool_mark_done(s, m, 3), 0);
    spool_msg_close(m);
    /* a complete line with a bad checksum is ignored */
    write_file(st, "done 0 1700000000 00000000\n", 27, 1);
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), 0);
    assert_int_equal(m->state[0], RCPT_PENDING);
    assert_int_equal(m->state[3], RCPT_DONE);
    assert_int_equal(spool_mark_done(s, m, 0), 0);
    assert_true(spool_msg_complete(m));
    spool_msg_close(m);
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), 0);
    assert_true(spool_msg_complete(m));
    spool_msg_close(m);

    /* a checksummed record that makes no sense: the message is refused */
    char id2[QID_LEN + 1], st2[512];
    commit_msg(s, id2, "x", 1, 1);
    assert_int_equal(spool_msg_open(s, id2, &m, err, sizeof(err)), 0);
    assert_int_equal(spool_mark_done(s, m, 0), 0);
    spool_msg_close(m);
    snprintf(st2, sizeof(st2), "%s/queue/%s.st", dir, id2);
    char *text = read_file_max(st2, 4096, NULL);
    assert_non_null(text);
    assert_true(strncmp(text, "done 0 ", 7) == 0);
    free(text);
    /* "done 5 0" with its correct CRC-32 (index out of range) */
    {
        char line[64];
        /* CRC-32 of "done 5 0", computed independently of the code under test */
        uint32_t c = 0xFFFFFFFFu;
        const char *pl = "done 5 0";
        for (const char *q = pl; *q; q++) {
            c ^= (unsigned char)*q;
            for (int k = 0; k < 8; k++)
                c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
        }
        snprintf(line, sizeof(line), "%s %08x\n", pl, (unsigned)~c);
        write_file(st2, line, strlen(line), 0);
    }
    errno = 0;
    assert_int_equal(spool_msg_open(s, id2, &m, err, sizeof(err)), -1);
    assert_int_equal(errno, EBADMSG);
    assert_non_null(strstr(err, "status log"));

    /* remove: message and log gone */
    assert_int_equal(spool_remove(s, id), 0);
    assert_int_equal(file_size(st), -1);
    snprintf(st, sizeof(st), "%s/queue/%s", dir, id);
    assert_int_equal(file_size(st), -1);
    assert_int_equal(spool_remove(s, id), -1);
    assert_int_equal(errno, ENOENT);
    /* quarantine: both moved to corrupt/ */
    assert_int_equal(spool_quarantine(s, id2), 0);
    char *l = list_dir(dir, "queue");
    assert_string_equal(l, "");
    free(l);
    l = list_dir(dir, "corrupt");
    char want[64];
    snprintf(want, sizeof(want), "%s,%s.st", id2, id2);
    assert_string_equal(l, want);
    free(l);
    spool_close(s);
    rm_rf(dir);
    free(dir);
}

/* CRC-32 (IEEE) computed here, independently of the code under test. */
static void crc_line(const char *payload, char *out, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (const char *q = payload; *q; q++) {
        c ^= (unsigned char)*q;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
    }
    snprintf(out, n, "%s %08x\n", payload, (unsigned)~c);
}

/* The records added by issue 3: hold/release, reported; the replayed
 * last reply and time per recipient; read-only peeks. */
static void test_status_log_hold_and_reports(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_spool");
    struct spool *s = open_spool(dir);
    char id[QID_LEN + 1], dsn[QID_LEN + 1], st[512], err[160];
    commit_msg(s, id, "Subject: x\r\n\r\nbody\r\n", 20, 3);
    qid_new(dsn);
    snprintf(st, sizeof(st), "%s/queue/%s.st", dir, id);
    struct spool_msg *m;
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), 0);
    assert_int_equal(m->held, 0);
    assert_null(m->hold_reason);
    assert_int_equal(spool_mark_retry(s, m, 0, 1800000000, "451 4.2.0 busy"), 0);
    assert_int_equal(spool_mark_failed(s, m, 1, "550 5.1.1 no"), 0);
    assert_string_equal(m->last_reply[1], "550 5.1.1 no");
    assert_true(m->last_try[1] >= (int64_t)time(NULL) - 5);
    assert_int_equal(spool_mark_hold(s, m, "abuse \"x\"\n"), 0);
    assert_int_equal(m->held, 1);
    assert_string_equal(m->hold_reason, "abuse \"x\"\n");
    size_t idx[2] = {1, 0};
    assert_int_equal(spool_mark_reported(s, m, idx, 2, SPOOL_REPORTED_FAILED, dsn), 0);
    assert_int_equal(spool_mark_reported(s, m, idx, 1, SPOOL_REPORTED_DELAYED, NULL), 0);
    assert_int_equal(m->reported[0], SPOOL_REPORTED_FAILED);
    assert_int_equal(m->reported[1], SPOOL_REPORTED_FAILED | SPOOL_REPORTED_DELAYED);
    errno = 0;
    assert_int_equal(spool_mark_reported(s, m, idx, 1, 4, NULL), -1);
    assert_int_equal(errno, EINVAL);
    size_t bad = 7;
    assert_int_equal(spool_mark_reported(s, m, &bad, 1, SPOOL_REPORTED_FAILED, NULL), -1);
    assert_int_equal(spool_mark_reported(s, m, idx, 1, SPOOL_REPORTED_FAILED, "not-an-id"), -1);
    spool_msg_close(m);

    /* the records as written: one line each, strings escaped */
    char *text = read_file_max(st, 1 << 16, NULL);
    assert_non_null(text);
    char want[256];
    assert_non_null(strstr(text, "\nhold "));
    assert_non_null(strstr(text, " \"abuse \\x22x\\x22\\x0a\" "));
    snprintf(want, sizeof(want), " failed \"%s\" ", dsn);
    assert_non_null(strstr(text, "\nreported 1 "));
    assert_non_null(strstr(text, "\nreported 0 "));
    assert_non_null(strstr(text, want));
    assert_non_null(strstr(text, " delayed - "));
    int lines = 0;
    for (char *p = text; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 6);
    free(text);

    /* replay */
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), 0);
    assert_int_equal(m->held, 1);
    assert_string_equal(m->hold_reason, "abuse \"x\"\n");
    assert_int_equal(m->reported[0], SPOOL_REPORTED_FAILED);
    assert_int_equal(m->reported[1], SPOOL_REPORTED_FAILED | SPOOL_REPORTED_DELAYED);
    assert_int_equal(m->reported[2], 0);
    assert_string_equal(m->last_reply[0], "451 4.2.0 busy");
    assert_string_equal(m->last_reply[1], "550 5.1.1 no");
    assert_null(m->last_reply[2]);
    assert_true(m->last_try[0] > 0);
    assert_int_equal(m->last_try[2], 0);
    assert_int_equal(m->state[1], RCPT_FAILED);
    assert_int_equal(spool_mark_release(s, m), 0);
    assert_int_equal(m->held, 0);
    spool_msg_close(m);
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), 0);
    assert_int_equal(m->held, 0);
    spool_msg_close(m);

    /* a peek skips a torn last record without cutting it, and never writes */
    off_t good = file_size(st);
    write_file(st, "done 2 17", 9, 1);
    assert_int_equal(spool_msg_peek(s, id, &m, err, sizeof(err)), 0);
    assert_int_equal(m->state[2], RCPT_PENDING);
    assert_int_equal(m->reported[1], SPOOL_REPORTED_FAILED | SPOOL_REPORTED_DELAYED);
    errno = 0;
    assert_int_equal(spool_mark_done(s, m, 2), -1);
    assert_int_equal(errno, EROFS);
    assert_int_equal(spool_mark_hold(s, m, "x"), -1);
    spool_msg_close(m);
    assert_int_equal(file_size(st), good + 9);
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), 0); /* a writer cuts it */
    spool_msg_close(m);
    assert_int_equal(file_size(st), good);

    /* checksummed but unknown `reported` kind: not ours */
    char line[128];
    crc_line("reported 0 17 bounced -", line, sizeof(line));
    write_file(st, line, strlen(line), 1);
    errno = 0;
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), -1);
    assert_int_equal(errno, EBADMSG);
    assert_int_equal(spool_msg_peek(s, id, &m, err, sizeof(err)), -1);
    spool_close(s);
    rm_rf(dir);
    free(dir);
}

static void test_corrupt_files(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_spool");
    struct spool *s = open_spool(dir);
    char id[QID_LEN + 1], p[512], err[160];
    struct spool_msg *m;

    /* torn: the last byte missing */
    commit_msg(s, id, "Subject: t\r\n\r\nx\r\n", 17, 1);
    snprintf(p, sizeof(p), "%s/queue/%s", dir, id);
    assert_int_equal(truncate(p, file_size(p) - 1), 0);
    errno = 0;
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), -1);
    assert_int_equal(errno, EBADMSG);
    assert_null(m);

    /* torn: only the message bytes made it */
    commit_msg(s, id, "Subject: t\r\n\r\nx\r\n", 17, 1);
    snprintf(p, sizeof(p), "%s/queue/%s", dir, id);
    assert_int_equal(truncate(p, 17), 0);
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), -1);
    assert_int_equal(errno, EBADMSG);

    /* foreign */
    qid_new(id);
    snprintf(p, sizeof(p), "%s/queue/%s", dir, id);
    char junk[300];
    memset(junk, 'j', sizeof(junk));
    write_file(p, junk, sizeof(junk), 0);
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), -1);
    assert_int_equal(errno, EBADMSG);
    assert_non_null(strstr(err, "footer"));

    /* a flipped byte in the trailer: checksum */
    commit_msg(s, id, "Subject: t\r\n\r\nx\r\n", 17, 1);
    snprintf(p, sizeof(p), "%s/queue/%s", dir, id);
    char *text = read_file_max(p, 1 << 20, NULL);
    char *h = strstr(text, "client.test");
    assert_non_null(h);
    int fd = open(p, O_WRONLY);
    assert_int_equal(pwrite(fd, "C", 1, h - text), 1);
    close(fd);
    free(text);
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), -1);
    assert_int_equal(errno, EBADMSG);
    assert_non_null(strstr(err, "checksum"));

    /* a footer from a future format version */
    commit_msg(s, id, "x", 1, 1);
    snprintf(p, sizeof(p), "%s/queue/%s", dir, id);
    fd = open(p, O_WRONLY);
    char *f = read_file_max(p, 1 << 20, NULL);
    char *v = strstr(f, "SUBMITD-SPOOL v1");
    assert_non_null(v);
    assert_int_equal(pwrite(fd, "9", 1, v - f + 15), 1);
    close(fd);
    free(f);
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "version"));

    /* missing file: ENOENT, not corruption */
    qid_new(id);
    errno = 0;
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), -1);
    assert_int_equal(errno, ENOENT);
    spool_close(s);
    rm_rf(dir);
    free(dir);
}

/* Flips a byte of the envelope of message id in its journal record (the
 * "client.test" of its helo). */
static void corrupt_journal_trailer(const char *dir, const char *id)
{
    char jdir[512], key[QID_LEN + 8];
    snprintf(jdir, sizeof(jdir), "%s/journal", dir);
    snprintf(key, sizeof(key), "id %s\n", id);
    DIR *d = opendir(jdir);
    assert_non_null(d);
    struct dirent *de;
    int done = 0;
    while (!done && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char p[1024];
        snprintf(p, sizeof(p), "%s/%s", jdir, de->d_name);
        size_t len = 0;
        char *text = read_file_max(p, 64u << 20, &len);
        char *at = text ? memmem(text, len, key, strlen(key)) : NULL;
        char *h = at ? memmem(at, len - (size_t)(at - text), "client.test", 11) : NULL;
        if (h) {
            int fd = open(p, O_WRONLY);
            assert_true(fd >= 0);
            assert_int_equal(pwrite(fd, "C", 1, h - text), 1);
            close(fd);
            done = 1;
        }
        free(text);
    }
    closedir(d);
    assert_true(done);
}

/* The first open of a message just committed to the journal takes its
 * envelope from memory (no read, sum or decode); later opens and peeks
 * read the record: a trailer corrupted on disk in between shows there. */
static void test_envelope_kept_for_first_open(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_spool");
    struct spool *s = open_spool_journal(dir);
    char id[QID_LEN + 1], err[160];
    struct spool_msg *m;
    commit_msg(s, id, "Subject: t\r\n\r\nx\r\n", 17, 3);
    corrupt_journal_trailer(dir, id);
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), 0);
    struct envelope want;
    fill_env(&want, 3);
    memcpy(want.id, id, QID_LEN + 1);
    want.size = 17;
    assert_env_equal(&want, &m->env);
    spool_msg_close(m);
    errno = 0;
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), -1);
    assert_int_equal(errno, EBADMSG);
    assert_non_null(strstr(err, "checksum"));

    /* a peek reads the record and leaves the kept envelope to the open */
    char id2[QID_LEN + 1];
    commit_msg(s, id2, "Subject: u\r\n\r\ny\r\n", 17, 3);
    corrupt_journal_trailer(dir, id2);
    assert_int_equal(spool_msg_peek(s, id2, &m, err, sizeof(err)), -1);
    assert_int_equal(errno, EBADMSG);
    assert_int_equal(spool_msg_open(s, id2, &m, err, sizeof(err)), 0);
    memcpy(want.id, id2, QID_LEN + 1);
    assert_env_equal(&want, &m->env);
    spool_msg_close(m);
    envelope_free(&want);
    spool_close(s); /* frees envelopes kept and never opened too (ASan) */
    rm_rf(dir);
    free(dir);
}

struct ids {
    char v[16][QID_LEN + 1];
    int n;
};

static void collect(void *arg, const char *id)
{
    struct ids *ids = arg;
    assert_true(ids->n < 16);
    memcpy(ids->v[ids->n++], id, QID_LEN + 1);
}

static void test_scan_and_open_cleanup(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_spool");
    char sub[512];
    snprintf(sub, sizeof(sub), "%s/deeper/spool", dir);
    struct spool *s = open_spool(sub);
    char ids[3][QID_LEN + 1];
    for (int i = 0; i < 3; i++) {
        commit_msg(s, ids[i], "m", 1, 1);
        usleep(3000);
    }
    /* newest first on disk does not matter: the scan sorts */
    char p[600];
    snprintf(p, sizeof(p), "%s/queue/README", sub);
    write_file(p, "x", 1, 0);
    char orphan[QID_LEN + 1];
    qid_new(orphan);
    snprintf(p, sizeof(p), "%s/queue/%s.st", sub, orphan);
    write_file(p, "done 0 0 00000000\n", 18, 0);
    struct spool_msg *m;
    char err[128];
    assert_int_equal(spool_msg_open(s, ids[1], &m, err, sizeof(err)), 0);
    assert_int_equal(spool_mark_retry(s, m, 0, 1, "451 x"), 0);
    spool_msg_close(m);
    struct ids got = {.n = 0};
    assert_int_equal(spool_scan(s, collect, &got), 0);
    assert_int_equal(got.n, 3);
    for (int i = 0; i < 3; i++)
        assert_string_equal(got.v[i], ids[i]);
    assert_int_equal(file_size(p), -1); /* the orphan status log went away */
    spool_close(s);
    /* leftovers in tmp/ (a crash mid-transaction) are removed by the next open */
    snprintf(p, sizeof(p), "%s/tmp/%s", sub, orphan);
    write_file(p, "half a message", 14, 0);
    snprintf(p, sizeof(p), "%s/tmp/stray", sub);
    write_file(p, "x", 1, 0);
    char *l = list_dir(sub, "tmp");
    assert_int_equal(strlen(l), QID_LEN + 6);
    free(l);
    s = open_spool(sub);
    l = list_dir(sub, "tmp");
    assert_string_equal(l, "");
    free(l);
    l = list_dir(sub, "queue");
    assert_int_equal(strlen(l), 3 * QID_LEN + 2 + QID_LEN + 4 + 7); /* 3 ids, one .st, README */
    free(l);
    spool_close(s);
    /* a spool directory that cannot be created */
    struct errlist errs;
    errlist_init(&errs);
    snprintf(p, sizeof(p), "%s/queue/README/spool", sub);
    assert_null(spool_open(p, &errs));
    assert_int_equal(errs.n, 1);
    assert_non_null(strstr(errs.v[0], "Not a directory"));
    errlist_free(&errs);
    rm_rf(dir);
    free(dir);
}

/* Threads committing and removing at once share the fsyncs of queue/
 * (queue_dir_sync): every commit still returns only when its file is in
 * queue/, every message reads back whole, every removal is gone. */
#define CC_THREADS 8
#define CC_PER 40

static void count_one(void *arg, const char *id)
{
    (void)id;
    (*(size_t *)arg)++;
}

struct cc_arg {
    struct spool *s;
    int t;
    char ids[CC_PER][QID_LEN + 1];
    int bad; /* no cmocka asserts off the main thread */
};

static void *cc_thread(void *arg)
{
    struct cc_arg *a = arg;
    char body[600];
    for (int i = 0; i < CC_PER; i++) {
        int n = snprintf(body, sizeof(body), "Subject: t%d m%d\r\n\r\nbody %d/%d\r\n", a->t, i, a->t, i);
        struct envelope e;
        fill_env(&e, 1);
        qid_new(a->ids[i]);
        memcpy(e.id, a->ids[i], QID_LEN + 1);
        struct spool_writer *w = spool_writer_new(a->s, a->ids[i]);
        if (!w) {
            a->bad++;
            envelope_free(&e);
            continue;
        }
        spool_writer_write(w, body, (size_t)n);
        e.size = spool_writer_size(w);
        if (spool_commit(w, &e) != 0)
            a->bad++;
        envelope_free(&e);
        /* every other message is delivered (removed) while others commit */
        if (i % 2 == 1 && spool_remove(a->s, a->ids[i - 1]) != 0)
            a->bad++;
    }
    return NULL;
}

/* journal: the messages go to the journal (queue/ stays empty) */
static void concurrent_commits(int journal)
{
    char *dir = make_tmpdir("test_spool");
    struct spool *s = journal ? open_spool_journal(dir) : open_spool(dir);
    static struct cc_arg args[CC_THREADS];
    pthread_t th[CC_THREADS];
    for (int t = 0; t < CC_THREADS; t++) {
        args[t] = (struct cc_arg){.s = s, .t = t};
        assert_int_equal(pthread_create(&th[t], NULL, cc_thread, &args[t]), 0);
    }
    for (int t = 0; t < CC_THREADS; t++)
        assert_int_equal(pthread_join(th[t], NULL), 0);
    for (int t = 0; t < CC_THREADS; t++) {
        assert_int_equal(args[t].bad, 0);
        for (int i = 0; i < CC_PER; i++) {
            struct spool_msg *m;
            char err[128] = "", want[128], got[128];
            int rc = spool_msg_open(s, args[t].ids[i], &m, err, sizeof(err));
            if (i % 2 == 0) {
                assert_int_equal(rc, -1);
                assert_int_equal(errno, ENOENT);
                continue;
            }
            assert_int_equal(rc, 0);
            int n = snprintf(want, sizeof(want), "Subject: t%d m%d\r\n\r\nbody %d/%d\r\n", t, i, t, i);
            assert_int_equal(m->env.size, (uint64_t)n);
            assert_int_equal(spool_msg_pread(m, got, sizeof(got), 0), n);
            assert_memory_equal(got, want, (size_t)n);
            spool_msg_close(m);
        }
    }
    char *q = list_dir(dir, "queue");
    assert_int_equal(strlen(q), journal ? 0 : (size_t)(CC_THREADS * CC_PER / 2) * (QID_LEN + 1) - 1);
    free(q);
    spool_close(s);
    if (journal) { /* and a restart finds exactly the live half */
        s = open_spool_journal(dir);
        size_t live = 0;
        assert_int_equal(spool_scan(s, count_one, &live), 0);
        assert_int_equal(live, (size_t)(CC_THREADS * CC_PER / 2));
        spool_close(s);
    }
    char *tmp = list_dir(dir, "tmp"); /* recycled files go with the spool */
    assert_string_equal(tmp, "");
    free(tmp);
    rm_rf(dir);
    free(dir);
}

static void test_concurrent_commits(void **state)
{
    (void)state;
    concurrent_commits(0);
    concurrent_commits(1);
}

static ino_t inode_of(const char *dir, const char *sub, const char *name)
{
    char p[512];
    struct stat st;
    snprintf(p, sizeof(p), "%s/%s/%s", dir, sub, name);
    assert_int_equal(stat(p, &st), 0);
    return st.st_ino;
}

/* A removed message's file is reused by the next message: same inode,
 * exactly the new bytes (a longer old file is cut), and a file left in
 * tmp/free.* by a crash is removed quietly at the next open. */
static void test_recycled_files(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_spool");
    struct spool *s = open_spool(dir);
    size_t big = 100000;
    char *body = xmalloc(big);
    memset(body, 'x', big);
    char a[QID_LEN + 1], b[QID_LEN + 1], c[QID_LEN + 1];
    commit_msg(s, a, body, big, 3);
    ino_t ia = inode_of(dir, "queue", a);
    assert_int_equal(spool_remove(s, a), 0);
    char *tmp = list_dir(dir, "tmp");
    assert_int_equal(strncmp(tmp, "free.", 5), 0);
    assert_null(strchr(tmp, ','));
    free(tmp);
    commit_msg(s, b, "short\r\n", 7, 1);
    assert_int_equal(inode_of(dir, "queue", b), ia);
    tmp = list_dir(dir, "tmp");
    assert_string_equal(tmp, "");
    free(tmp);
    struct spool_msg *m;
    char err[128] = "", got[64];
    assert_int_equal(spool_msg_open(s, b, &m, err, sizeof(err)), 0);
    assert_int_equal(m->env.size, 7);
    assert_int_equal(m->env.nrcpts, 1);
    assert_int_equal(spool_msg_pread(m, got, sizeof(got), 0), 7);
    assert_memory_equal(got, "short\r\n", 7);
    spool_msg_close(m);
    char p[512];
    struct stat st;
    snprintf(p, sizeof(p), "%s/queue/%s", dir, b);
    assert_int_equal(stat(p, &st), 0);
    assert_true(st.st_size < 1000); /* the 100 KB of the old message are gone */
    /* an aborted writer on a recycled file removes it */
    assert_int_equal(spool_remove(s, b), 0);
    qid_new(c);
    struct spool_writer *w = spool_writer_new(s, c);
    assert_non_null(w);
    spool_writer_write(w, "abc", 3);
    spool_writer_abort(w);
    tmp = list_dir(dir, "tmp");
    assert_string_equal(tmp, "");
    free(tmp);
    /* a big message is not kept for recycling */
    size_t huge = 300 * 1024;
    char *hb = xmalloc(huge);
    memset(hb, 'y', huge);
    commit_msg(s, c, hb, huge, 1);
    assert_int_equal(spool_remove(s, c), 0);
    tmp = list_dir(dir, "tmp");
    assert_string_equal(tmp, "");
    free(tmp);
    free(hb);
    /* a crash leaves recycled files in tmp/: the next open removes them */
    commit_msg(s, a, body, 10, 1);
    assert_int_equal(spool_remove(s, a), 0);
    snprintf(p, sizeof(p), "%s/tmp/free.1.1", dir);
    int fd = open(p, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    struct spool *s2 = open_spool(dir);
    tmp = list_dir(dir, "tmp");
    assert_string_equal(tmp, "");
    free(tmp);
    spool_close(s2);
    spool_close(s);
    free(body);
    rm_rf(dir);
    free(dir);
}

int main(void)
{
    log_init("test_spool", 0, LOG_LVL_ERR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_env_roundtrip),
        cmocka_unit_test(test_env_decode_errors),
        cmocka_unit_test(test_commit_open_pread),
        cmocka_unit_test(test_abort_and_commit_failures),
        cmocka_unit_test(test_status_log),
        cmocka_unit_test(test_status_log_hold_and_reports),
        cmocka_unit_test(test_corrupt_files),
        cmocka_unit_test(test_envelope_kept_for_first_open),
        cmocka_unit_test(test_scan_and_open_cleanup),
        cmocka_unit_test(test_concurrent_commits),
        cmocka_unit_test(test_recycled_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
