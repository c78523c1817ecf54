/* Unit tests for the spool's journal (queue/journal.c) through the spool
 * API and directly: small messages committed into journal/ and read,
 * removed and recovered from it after a restart; torn records ignored;
 * a message that needs a status log moved into queue/; large messages
 * and a spent journal falling back to files (concurrent commits through
 * the journal: test_spool.c's test_concurrent_commits); segment
 * rotation and reuse under new generations (stale records never come
 * back); records resolved at recovery when queue/ already has them; DONE
 * marks sharing syncs; a failing write retiring its segment; and
 * asynchronous appends and commits (group-committed by the lane threads,
 * "no room" through the callback and the spool's fallback to a file,
 * callbacks all run by journal_drain and journal_close). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"
#include "tmpdir.h"
#include "queue/journal.h"
#include "queue/spool.h"

/* ---- helpers ---------------------------------------------------------------- */

/* Regular files in dir/sub. */
static int count_in(const char *dir, const char *sub)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", dir, sub);
    DIR *d = opendir(p);
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
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

static void commit_body(struct spool *s, char id[QID_LEN + 1], const char *body, size_t n)
{
    struct envelope e;
    envelope_init(&e);
    e.mail_from = xstrdup("alice@example.test");
    e.client_ip = xstrdup("127.0.0.1");
    e.helo = xstrdup("client.test");
    e.listener = xstrdup("submission");
    e.received = 1700000000;
    envelope_add_rcpt(&e, "bob@dest.test", 0, NULL);
    qid_new(id);
    memcpy(e.id, id, QID_LEN + 1);
    struct spool_writer *w = spool_writer_new(s, id);
    assert_non_null(w);
    spool_writer_write(w, body, n);
    e.size = spool_writer_size(w);
    assert_int_equal(spool_commit(w, &e), 0);
    envelope_free(&e);
}

static void commit_msg(struct spool *s, char id[QID_LEN + 1], const char *body)
{
    commit_body(s, id, body, strlen(body));
}

/* The stored bytes of id must be exactly want. */
static void assert_content(struct spool *s, const char *id, const char *want, size_t n)
{
    struct spool_msg *m;
    char err[128] = "";
    assert_int_equal(spool_msg_open(s, id, &m, err, sizeof(err)), 0);
    assert_string_equal(m->env.id, id);
    assert_string_equal(m->env.mail_from, "alice@example.test");
    assert_int_equal(m->env.size, (uint64_t)n);
    char *got = xmalloc(n + 16);
    assert_int_equal(spool_msg_pread(m, got, n + 16, 0), (ssize_t)n);
    assert_memory_equal(got, want, n);
    free(got);
    spool_msg_close(m);
}

struct ids {
    size_t n;
    char v[64][QID_LEN + 1];
};

static void collect(void *arg, const char *id)
{
    struct ids *ids = arg;
    assert_true(ids->n < 64);
    memcpy(ids->v[ids->n++], id, QID_LEN + 1);
}

static struct ids scan(struct spool *s)
{
    struct ids ids = {.n = 0};
    assert_int_equal(spool_scan(s, collect, &ids), 0);
    return ids;
}

/* Where needle first occurs in a journal segment of dir: fills seg (its
 * path) and returns the offset, or -1. */
static long find_in_segments(const char *dir, const char *needle, char seg[512])
{
    size_t nl = strlen(needle);
    for (int k = 0; k < 4; k++) {
        snprintf(seg, 512, "%s/journal/seg.%04d", dir, k);
        FILE *f = fopen(seg, "rb");
        if (!f)
            continue;
        size_t cap = 1 << 20;
        char *buf = xmalloc(cap);
        size_t len = fread(buf, 1, cap, f);
        fclose(f);
        for (size_t i = 0; i + nl <= len; i++)
            if (memcmp(buf + i, needle, nl) == 0) {
                free(buf);
                return (long)i;
            }
        free(buf);
    }
    return -1;
}

/* Overwrites the byte at the first occurrence of needle. */
static void damage(const char *dir, const char *needle)
{
    char seg[512];
    long off = find_in_segments(dir, needle, seg);
    assert_true(off > 4096);
    int fd = open(seg, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, "X", 1, off), 1);
    close(fd);
}

/* ---- through the spool ---------------------------------------------------------- */

static void test_commit_read_remove_restart(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_journal");
    struct spool *s = open_spool(dir);
    char a[QID_LEN + 1], b[QID_LEN + 1], c[QID_LEN + 1];
    const char *ba = "Subject: a\r\n\r\nfirst\r\n", *bb = "Subject: b\r\n\r\nsecond\r\n";
    commit_msg(s, a, ba);
    commit_msg(s, b, bb);
    commit_msg(s, c, "Subject: c\r\n\r\nthird\r\n");
    /* nothing in queue/ or tmp/: the messages are in one journal segment */
    assert_int_equal(count_in(dir, "queue"), 0);
    assert_int_equal(count_in(dir, "tmp"), 0);
    assert_in_range(count_in(dir, "journal"), 1, 2); /* a segment per append lane in use */
    assert_content(s, a, ba, strlen(ba));
    struct ids ids = scan(s);
    assert_int_equal(ids.n, 3);
    assert_int_equal(spool_remove(s, c), 0);
    assert_int_equal(spool_remove(s, c), -1); /* gone from the journal and queue/ */
    assert_int_equal(errno, ENOENT);
    struct spool_msg *m;
    assert_int_equal(spool_msg_open(s, c, &m, NULL, 0), -1);
    assert_int_equal(errno, ENOENT);
    spool_close(s);

    /* a restart finds exactly the two live ones, byte for byte */
    s = open_spool(dir);
    ids = scan(s);
    assert_int_equal(ids.n, 2);
    char first[QID_LEN + 1], second[QID_LEN + 1];
    memcpy(first, strcmp(a, b) < 0 ? a : b, QID_LEN + 1);
    memcpy(second, strcmp(a, b) < 0 ? b : a, QID_LEN + 1);
    assert_string_equal(ids.v[0], first);
    assert_string_equal(ids.v[1], second);
    assert_content(s, a, ba, strlen(ba));
    assert_content(s, b, bb, strlen(bb));
    assert_int_equal(spool_remove(s, a), 0);
    assert_int_equal(spool_remove(s, b), 0);
    spool_close(s);
    s = open_spool(dir);
    assert_int_equal(scan(s).n, 0);
    spool_close(s);
    rm_rf(dir);
    free(dir);
}

/* A record whose bytes do not match its checksum (a write torn by a
 * crash: never acknowledged) ends the segment at recovery. */
static void test_torn_record(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_journal");
    struct spool *s = open_spool(dir);
    char a[QID_LEN + 1], b[QID_LEN + 1];
    commit_msg(s, a, "Subject: a\r\n\r\nALPHA-BODY\r\n");
    commit_msg(s, b, "Subject: b\r\n\r\nBRAVO-BODY\r\n");
    spool_close(s);
    damage(dir, "BRAVO-BODY");
    s = open_spool(dir);
    struct ids ids = scan(s);
    assert_int_equal(ids.n, 1);
    assert_string_equal(ids.v[0], a);
    spool_close(s);
    /* the same damage to the first record hides it too */
    damage(dir, "ALPHA-BODY");
    s = open_spool(dir);
    assert_int_equal(scan(s).n, 0);
    /* and new commits go on working (a fresh generation) */
    char c[QID_LEN + 1];
    commit_msg(s, c, "Subject: c\r\n\r\nc\r\n");
    spool_close(s);
    s = open_spool(dir);
    struct ids after = scan(s);
    assert_int_equal(after.n, 1);
    assert_string_equal(after.v[0], c);
    spool_close(s);
    rm_rf(dir);
    free(dir);
}

/* A status-log record moves the message into queue/ID (+ ID.st); it is
 * listed once, and a restart reads it from the file. */
static void test_moved_out_for_status_log(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_journal");
    struct spool *s = open_spool(dir);
    char id[QID_LEN + 1];
    const char *body = "Subject: r\r\n\r\nretry me\r\n";
    commit_msg(s, id, body);
    struct spool_msg *m, *peek;
    assert_int_equal(spool_msg_open(s, id, &m, NULL, 0), 0);
    assert_int_equal(spool_msg_peek(s, id, &peek, NULL, 0), 0);
    assert_int_equal(spool_mark_retry(s, peek, 0, 123, "451 later"), -1); /* read-only */
    assert_int_equal(errno, EROFS);
    assert_int_equal(count_in(dir, "queue"), 0);
    assert_int_equal(spool_mark_retry(s, m, 0, 1700000600, "451 4.4.1 try later"), 0);
    assert_int_equal(count_in(dir, "queue"), 2);
    char p[512];
    struct stat st;
    snprintf(p, sizeof(p), "%s/queue/%s.st", dir, id);
    assert_int_equal(stat(p, &st), 0);
    /* both handles still read the message */
    char got[64];
    assert_int_equal(spool_msg_pread(m, got, sizeof(got), 0), (ssize_t)strlen(body));
    assert_int_equal(spool_msg_pread(peek, got, sizeof(got), 0), (ssize_t)strlen(body));
    spool_msg_close(peek);
    spool_msg_close(m);
    struct ids ids = scan(s);
    assert_int_equal(ids.n, 1);
    assert_string_equal(ids.v[0], id);
    spool_close(s);
    s = open_spool(dir);
    ids = scan(s);
    assert_int_equal(ids.n, 1);
    assert_int_equal(spool_msg_open(s, id, &m, NULL, 0), 0);
    assert_int_equal(m->attempts[0], 1);
    assert_int_equal(m->next_try[0], 1700000600);
    spool_msg_close(m);
    assert_content(s, id, body, strlen(body));
    /* the file path removes it now */
    assert_int_equal(spool_remove(s, id), 0);
    assert_int_equal(count_in(dir, "queue"), 0);
    spool_close(s);
    rm_rf(dir);
    free(dir);
}

/* Messages too big for a record get a queue file; so do all messages
 * when the journal is off. A corrupt record is quarantined as bytes. */
static void test_files_when_big_or_off(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_journal");
    struct spool *s = open_spool(dir);
    size_t n = JOURNAL_PAYLOAD_MAX;
    char *big = xmalloc(n);
    memset(big, 'x', n);
    char id[QID_LEN + 1], small[QID_LEN + 1];
    commit_body(s, id, big, n);
    assert_int_equal(count_in(dir, "queue"), 1);
    assert_content(s, id, big, n);
    spool_use_journal(s, 0);
    commit_msg(s, small, "Subject: s\r\n\r\ns\r\n");
    assert_int_equal(count_in(dir, "queue"), 2);
    spool_use_journal(s, 1);
    char j[QID_LEN + 1];
    commit_msg(s, j, "Subject: j\r\n\r\nj\r\n");
    assert_int_equal(count_in(dir, "queue"), 2);
    assert_int_equal(spool_quarantine(s, j), 0);
    assert_int_equal(count_in(dir, "corrupt"), 1);
    char p[512];
    snprintf(p, sizeof(p), "%s/corrupt/%s", dir, j);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_true(st.st_size > 0);
    assert_int_equal(scan(s).n, 2);
    free(big);
    spool_close(s);
    rm_rf(dir);
    free(dir);
}

/* ---- the journal directly ---------------------------------------------------------- */

struct jdir {
    char *dir;
    int jfd, qfd;
};

static struct jdir jdir_new(void)
{
    struct jdir d = {.dir = make_tmpdir("test_journal")};
    char p[512];
    snprintf(p, sizeof(p), "%s/j", d.dir);
    assert_int_equal(mkdir(p, 0700), 0);
    d.jfd = open(p, O_RDONLY | O_DIRECTORY);
    snprintf(p, sizeof(p), "%s/q", d.dir);
    assert_int_equal(mkdir(p, 0700), 0);
    d.qfd = open(p, O_RDONLY | O_DIRECTORY);
    assert_true(d.jfd >= 0 && d.qfd >= 0);
    return d;
}

static void jdir_free(struct jdir *d)
{
    close(d->jfd);
    close(d->qfd);
    rm_rf(d->dir);
    free(d->dir);
}

static struct journal *jopen(struct jdir *d, size_t segs, uint64_t size)
{
    struct errlist errs;
    errlist_init(&errs);
    struct journal *j = journal_open(d->jfd, d->dir, d->qfd, segs, size, &errs);
    assert_int_equal(errs.n, 0);
    assert_non_null(j);
    errlist_free(&errs);
    return j;
}

static int jappend(struct journal *j, char id[QID_LEN + 1], size_t len, char fill)
{
    char *buf = xmalloc(len);
    memset(buf, fill, len);
    qid_new(id);
    struct iovec v = {.iov_base = buf, .iov_len = len};
    int rc = journal_append(j, id, &v, 1);
    free(buf);
    return rc;
}

static void count_id(void *arg, const char *id)
{
    (void)id;
    (*(size_t *)arg)++;
}

static size_t live_ids(struct journal *j)
{
    size_t n = 0;
    journal_ids(j, count_id, &n);
    return n;
}

/* Small segments: records fill them, rotation reuses the resolved ones
 * under a new generation, and a restart never brings back a record of an
 * older generation; with every segment pinned, appends say "no room".
 * Appends alternate between the journal's two lanes (each has a current
 * segment). */
static void test_rotation_and_generations(void **state)
{
    (void)state;
    struct jdir d = jdir_new();
    uint64_t seg = 64 * 1024; /* 4 KiB header + 60 KiB of records */
    struct journal *j = jopen(&d, 3, seg);
    char ids[200][QID_LEN + 1];
    /* 100 records of 6 KiB, each resolved right away: 10 per segment */
    for (int i = 0; i < 100; i++) {
        assert_int_equal(jappend(j, ids[i], 6000, (char)('a' + i % 26)), 0);
        assert_int_equal(journal_done(j, ids[i]), 0);
    }
    struct journal_stats st;
    journal_get_stats(j, &st);
    assert_int_equal(st.appended, 100);
    assert_int_equal(st.live, 0);
    assert_true(st.segments >= 2 && st.segments <= 3);
    /* three live records survive a restart, readable */
    char keep[3][QID_LEN + 1];
    for (int i = 0; i < 3; i++)
        assert_int_equal(jappend(j, keep[i], 5000, (char)('K' + i)), 0);
    journal_close(j);
    j = jopen(&d, 3, seg);
    assert_int_equal(live_ids(j), 3);
    for (int i = 0; i < 3; i++) {
        struct jread r;
        assert_int_equal(journal_get(j, keep[i], &r), 0);
        assert_int_equal(r.len, 5000);
        char c = 0;
        assert_int_equal(pread(r.fd, &c, 1, (off_t)(r.off + 4999)), 1);
        assert_int_equal(c, 'K' + i);
        journal_put(j, &r);
    }
    for (int i = 0; i < 100; i++) {
        struct jread r;
        assert_int_equal(journal_get(j, ids[i], &r), -1);
    }
    /* pin every segment with live records: then there is no room */
    int rc = 0, n = 0;
    while (n < 200 && (rc = jappend(j, ids[n], 6000, 'p')) == 0)
        n++;
    assert_int_equal(rc, -2);
    assert_true(n >= 1 && n < 40); /* a lane whose segment is full finds none free */
    journal_get_stats(j, &st);
    assert_int_equal(st.segments, 3);
    assert_int_equal(st.free, 0);
    /* resolving one segment's records makes room again */
    for (int i = 0; i < n; i++)
        assert_int_equal(journal_done(j, ids[i]), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(journal_done(j, keep[i]), 0);
    assert_int_equal(jappend(j, ids[0], 6000, 'z'), 0);
    journal_close(j);
    j = jopen(&d, 3, seg);
    assert_int_equal(live_ids(j), 1);
    struct jread r;
    assert_int_equal(journal_get(j, ids[0], &r), 0);
    journal_put(j, &r);
    /* an oversized payload is refused (the caller uses a file) */
    assert_int_equal(jappend(j, ids[1], JOURNAL_PAYLOAD_MAX + 1, 'o'), -2);
    journal_close(j);
    jdir_free(&d);
}

/* A record whose id already has a file in queue/ was moved there before
 * a crash: the recovery resolves it instead of delivering it twice. A
 * segment a reader holds is not reused under it. */
static void test_recovery_prefers_queue_file(void **state)
{
    (void)state;
    struct jdir d = jdir_new();
    struct journal *j = jopen(&d, 4, 64 * 1024);
    char a[QID_LEN + 1], b[QID_LEN + 1];
    assert_int_equal(jappend(j, a, 100, 'a'), 0);
    assert_int_equal(jappend(j, b, 100, 'b'), 0);
    struct jread held;
    assert_int_equal(journal_get(j, a, &held), 0);
    assert_int_equal(journal_done(j, a), 0);
    assert_int_equal(journal_get(j, a, &(struct jread){0}), -1);
    /* the held reader still sees a's bytes while others fill the journal */
    char more[QID_LEN + 1];
    for (int i = 0; i < 30; i++) {
        assert_int_equal(jappend(j, more, 6000, 'm'), 0);
        assert_int_equal(journal_done(j, more), 0);
    }
    char c = 0;
    assert_int_equal(pread(held.fd, &c, 1, (off_t)held.off), 1);
    assert_int_equal(c, 'a');
    journal_put(j, &held);
    journal_close(j);
    int fd = openat(d.qfd, b, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    j = jopen(&d, 4, 64 * 1024);
    assert_int_equal(live_ids(j), 0);
    journal_close(j);
    /* and the resolution was written: it stays resolved without the file */
    assert_int_equal(unlinkat(d.qfd, b, 0), 0);
    j = jopen(&d, 4, 64 * 1024);
    assert_int_equal(live_ids(j), 0);
    journal_close(j);
    jdir_free(&d);
}

/* DONE marks do not cost a sync each: they ride with the next batch, and
 * journal_flush makes them durable when nothing else would. */
static void test_done_marks_share_syncs(void **state)
{
    (void)state;
    struct jdir d = jdir_new();
    struct journal *j = jopen(&d, 4, 1 << 20);
    char ids[10][QID_LEN + 1];
    for (int i = 0; i < 10; i++)
        assert_int_equal(jappend(j, ids[i], 1000, 'd'), 0);
    struct journal_stats a, b, c, e;
    journal_get_stats(j, &a);
    for (int i = 0; i < 10; i++)
        assert_int_equal(journal_done(j, ids[i]), 0);
    journal_get_stats(j, &b);
    assert_in_range(b.syncs - a.syncs, 0, 2); /* at most an age-triggered one, never one per mark */
    assert_int_equal(b.live, 0);
    journal_flush(j);
    journal_get_stats(j, &c);
    journal_flush(j); /* nothing pending: no sync */
    journal_get_stats(j, &e);
    assert_int_equal(e.syncs, c.syncs);
    /* commits after marks carry them (their segment is synced anyway; the
     * two commits go to the two lanes, one of which holds the marked
     * record) */
    assert_int_equal(jappend(j, ids[0], 1000, 'd'), 0);
    assert_int_equal(journal_done(j, ids[0]), 0);
    assert_int_equal(jappend(j, ids[1], 1000, 'd'), 0);
    assert_int_equal(jappend(j, ids[2], 1000, 'd'), 0);
    journal_get_stats(j, &a);
    journal_flush(j);
    journal_get_stats(j, &b);
    assert_int_equal(b.syncs, a.syncs);
    journal_close(j);
    j = jopen(&d, 4, 1 << 20);
    assert_int_equal(live_ids(j), 2);
    journal_close(j);
    jdir_free(&d);
}

/* Makes every open descriptor of a journal segment under dir read-only
 * (dup2 of a read-only open of the same file): the next write there fails
 * as a failing disk would. Returns how many it replaced. */
static int break_segments(const char *dir)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    struct dirent *de;
    size_t dl = strlen(dir);
    while ((de = readdir(d)) != NULL) {
        char link[300], target[512];
        snprintf(link, sizeof(link), "/proc/self/fd/%s", de->d_name);
        ssize_t l = readlink(link, target, sizeof(target) - 1);
        if (l <= 0)
            continue;
        target[l] = '\0';
        if (strncmp(target, dir, dl) != 0 || !strstr(target, "/j/seg."))
            continue;
        int fd = atoi(de->d_name);
        int ro = open(target, O_RDONLY);
        assert_true(ro >= 0);
        assert_int_equal(dup2(ro, fd), fd);
        close(ro);
        n++;
    }
    closedir(d);
    return n;
}

/* A write that fails (a failing disk) fails the commits it carried, which
 * are never delivered; the segment is retired and later commits go on in
 * fresh segments. */
static void test_write_failure_retires_segment(void **state)
{
    (void)state;
    struct jdir d = jdir_new();
    struct journal *j = jopen(&d, 8, 64 * 1024);
    char ok_ids[16][QID_LEN + 1], id[QID_LEN + 1];
    int nok = 0;
    for (int i = 0; i < 2; i++) /* one record in each lane's segment */
        assert_int_equal(jappend(j, ok_ids[nok++], 500, 'o'), 0);
    struct journal_stats st;
    journal_get_stats(j, &st);
    assert_int_equal(st.segments, 2);
    assert_int_equal(break_segments(d.dir), 2);
    int failed = 0;
    for (int i = 0; i < 8; i++) {
        errno = 0;
        int rc = jappend(j, id, 500, 'x');
        if (rc == 0) {
            memcpy(ok_ids[nok++], id, QID_LEN + 1);
        } else {
            assert_int_equal(rc, -1);
            assert_int_equal(errno, EBADF);
            failed++;
            struct jread r;
            assert_int_equal(journal_get(j, id, &r), -1); /* never delivered */
        }
    }
    assert_int_equal(failed, 2); /* the first append in each lane's broken segment */
    journal_get_stats(j, &st);
    assert_int_equal(st.segments, 4);
    assert_int_equal(st.live, (size_t)nok);
    journal_close(j);
    j = jopen(&d, 8, 64 * 1024);
    assert_int_equal(live_ids(j), (size_t)nok);
    for (int i = 0; i < nok; i++) {
        struct jread r;
        assert_int_equal(journal_get(j, ok_ids[i], &r), 0);
        journal_put(j, &r);
    }
    journal_close(j);
    jdir_free(&d);
}

/* ---- asynchronous appends and commits ---------------------------------------- */

#define ASYNC_MAX 64

/* Completions counted by the callbacks (a journal thread). */
struct acount {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n, ok, noroom, failed;
    int rc[ASYNC_MAX];
};

static void acount_init(struct acount *a)
{
    memset(a, 0, sizeof(*a));
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    for (int i = 0; i < ASYNC_MAX; i++)
        a->rc[i] = 99;
}

static void acount_free(struct acount *a)
{
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->cv);
}

struct aslot {
    struct acount *a;
    int idx;
};

static void acount_cb(void *arg, int rc, int err)
{
    struct aslot *sl = arg;
    struct acount *a = sl->a;
    (void)err;
    pthread_mutex_lock(&a->mu);
    assert_int_equal(a->rc[sl->idx], 99); /* called once */
    a->rc[sl->idx] = rc;
    a->n++;
    a->ok += rc == 0;
    a->noroom += rc == -2;
    a->failed += rc == -1;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

/* Many appends queued without waiting: every callback runs once with 0,
 * the lane threads share syncs among them, a synchronous append made
 * meanwhile works, and a restart finds them all. */
static void test_async_appends(void **state)
{
    (void)state;
    struct jdir d = jdir_new();
    struct journal *j = jopen(&d, 4, 1 << 20);
    struct acount a;
    acount_init(&a);
    struct aslot slots[50];
    char ids[50][QID_LEN + 1];
    char buf[1000];
    memset(buf, 'a', sizeof(buf));
    struct iovec v = {.iov_base = buf, .iov_len = sizeof(buf)};
    for (int i = 0; i < 50; i++) {
        slots[i] = (struct aslot){&a, i};
        qid_new(ids[i]);
        assert_int_equal(journal_append_async(j, ids[i], &v, 1, acount_cb, &slots[i]), 0);
    }
    char sync_id[QID_LEN + 1];
    assert_int_equal(jappend(j, sync_id, 500, 's'), 0);
    journal_drain(j);
    assert_int_equal(a.n, 50);
    assert_int_equal(a.ok, 50);
    struct journal_stats st;
    journal_get_stats(j, &st);
    assert_int_equal(st.appended, 51);
    assert_int_equal(st.live, 51);
    assert_true(st.syncs < 50); /* group commit: batches, not one sync per append */
    /* not a queue id: refused at once, no callback */
    assert_int_equal(journal_append_async(j, "nope", &v, 1, acount_cb, &slots[0]), -1);
    assert_int_equal(errno, EINVAL);
    journal_close(j);
    j = jopen(&d, 4, 1 << 20);
    assert_int_equal(live_ids(j), 51);
    struct jread r;
    assert_int_equal(journal_get(j, ids[49], &r), 0);
    assert_int_equal(r.len, sizeof(buf));
    journal_put(j, &r);
    journal_close(j);
    acount_free(&a);
    jdir_free(&d);
}

/* Two 64 KiB segments (one per lane) hold ten 6 KiB records each: of 40
 * asynchronous appends at least one lane's ten and at most twenty succeed,
 * and the others get "no room" through their callbacks; a record too big
 * for the journal is refused at once. journal_close with appends still
 * queued runs them (and their callbacks) before it returns. */
static void test_async_no_room_and_close(void **state)
{
    (void)state;
    struct jdir d = jdir_new();
    struct journal *j = jopen(&d, 2, 64 * 1024);
    struct acount a;
    acount_init(&a);
    struct aslot slots[40];
    char ids[40][QID_LEN + 1];
    char *buf = xmalloc(JOURNAL_PAYLOAD_MAX + 1);
    memset(buf, 'n', JOURNAL_PAYLOAD_MAX + 1);
    struct iovec v = {.iov_base = buf, .iov_len = 6000};
    for (int i = 0; i < 40; i++) {
        slots[i] = (struct aslot){&a, i};
        qid_new(ids[i]);
        assert_int_equal(journal_append_async(j, ids[i], &v, 1, acount_cb, &slots[i]), 0);
    }
    journal_drain(j);
    assert_int_equal(a.n, 40);
    assert_in_range(a.ok, 10, 20);
    assert_int_equal(a.noroom, 40 - a.ok);
    assert_int_equal(live_ids(j), (size_t)a.ok);
    struct iovec big = {.iov_base = buf, .iov_len = JOURNAL_PAYLOAD_MAX + 1};
    char bid[QID_LEN + 1];
    qid_new(bid);
    assert_int_equal(journal_append_async(j, bid, &big, 1, acount_cb, &slots[0]), -2);
    journal_close(j);

    /* queued, then closed at once: every callback has run when close returns */
    j = jopen(&d, 2, 64 * 1024);
    for (int i = 0; i < 40; i++) /* room again */
        if (a.rc[i] == 0)
            assert_int_equal(journal_done(j, ids[i]), 0);
    struct acount b;
    acount_init(&b);
    for (int i = 0; i < 5; i++) {
        slots[i] = (struct aslot){&b, i};
        qid_new(ids[i]);
        assert_int_equal(journal_append_async(j, ids[i], &v, 1, acount_cb, &slots[i]), 0);
    }
    journal_close(j);
    assert_int_equal(b.n, 5);
    assert_int_equal(b.ok, 5);
    j = jopen(&d, 2, 64 * 1024);
    assert_int_equal(live_ids(j), 5);
    journal_close(j);
    free(buf);
    acount_free(&a);
    acount_free(&b);
    jdir_free(&d);
}

static struct spool_writer *writer_with(struct spool *s, struct envelope *e, const char *body, size_t n)
{
    envelope_init(e);
    e->mail_from = xstrdup("alice@example.test");
    e->client_ip = xstrdup("127.0.0.1");
    e->helo = xstrdup("client.test");
    e->listener = xstrdup("submission");
    e->received = 1700000000;
    envelope_add_rcpt(e, "bob@dest.test", 0, NULL);
    qid_new(e->id);
    struct spool_writer *w = spool_writer_new(s, e->id);
    assert_non_null(w);
    spool_writer_write(w, body, n);
    e->size = spool_writer_size(w);
    return w;
}

/* Waits for the one callback of slot 0 and returns its rc. */
static int await_one(struct acount *a)
{
    pthread_mutex_lock(&a->mu);
    while (a->n == 0)
        pthread_cond_wait(&a->cv, &a->mu);
    int rc = a->rc[0];
    a->n = 0;
    a->rc[0] = 99;
    pthread_mutex_unlock(&a->mu);
    return rc;
}

/* spool_commit_async: a small message is committed through the journal
 * and reads back (envelope included) like a synchronous commit's; a
 * message in a file or too big for a record is left to spool_commit (1
 * at once, no callback); with the journal full the callback says 1 and
 * hands the writer back, and spool_commit then stores it as a file. */
static void test_commit_async(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_journal");
    struct spool *s = open_spool(dir);
    struct acount a;
    acount_init(&a);
    struct aslot slot = {&a, 0};
    const char *body = "Subject: async\r\n\r\nhello\r\n";
    struct envelope e;
    struct spool_writer *w = writer_with(s, &e, body, strlen(body));
    assert_int_equal(spool_commit_async(w, &e, acount_cb, &slot), 0);
    assert_int_equal(await_one(&a), 0);
    assert_content(s, e.id, body, strlen(body));
    assert_int_equal(count_in(dir, "queue"), 0);
    assert_int_equal(scan(s).n, 1);
    envelope_free(&e);

    size_t big = JOURNAL_PAYLOAD_MAX;
    char *bbody = xmalloc(big);
    memset(bbody, 'b', big);
    w = writer_with(s, &e, bbody, big); /* with its trailer, too big for a record */
    assert_int_equal(spool_commit_async(w, &e, acount_cb, &slot), 1);
    assert_int_equal(spool_commit(w, &e), 0);
    assert_int_equal(count_in(dir, "queue"), 1);
    envelope_free(&e);

    /* fill the journal (16 segments of 8 MiB) with live records of 240 KiB */
    size_t fill = 240 * 1024;
    int n = 0;
    for (;;) {
        w = writer_with(s, &e, bbody, fill);
        int rc = spool_commit_async(w, &e, acount_cb, &slot);
        assert_int_equal(rc, 0);
        rc = await_one(&a);
        if (rc == 1) /* no room: the writer is ours again */
            break;
        assert_int_equal(rc, 0);
        envelope_free(&e);
        n++;
        assert_true(n < 1000);
    }
    assert_true(n >= 16 * 30);
    assert_int_equal(count_in(dir, "queue"), 1);
    assert_int_equal(spool_commit(w, &e), 0);
    assert_int_equal(count_in(dir, "queue"), 2);
    assert_content(s, e.id, bbody, fill);
    envelope_free(&e);
    free(bbody);
    acount_free(&a);
    spool_close(s);
    rm_rf(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commit_read_remove_restart),
        cmocka_unit_test(test_torn_record),
        cmocka_unit_test(test_moved_out_for_status_log),
        cmocka_unit_test(test_files_when_big_or_off),
        cmocka_unit_test(test_rotation_and_generations),
        cmocka_unit_test(test_recovery_prefers_queue_file),
        cmocka_unit_test(test_done_marks_share_syncs),
        cmocka_unit_test(test_write_failure_retires_segment),
        cmocka_unit_test(test_async_appends),
        cmocka_unit_test(test_async_no_room_and_close),
        cmocka_unit_test(test_commit_async),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
