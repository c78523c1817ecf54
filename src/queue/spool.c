/* spool: the durable on-disk queue (see spool.h and docs/spool-format.md,
 * format v1). Owns the directory layout (tmp/, queue/, corrupt/,
 * journal/), message writers and their commit (fsync + rename + directory
 * fsync), the checksummed footer that detects torn or foreign files, the
 * append-only per-recipient status log (queue/ID.st), the recycling of
 * removed queue files into new messages, the recovery scan, and the use
 * of the journal (journal.c) for small messages: committing into it,
 * reading from it, and moving a message out of it into its own queue file
 * when it needs a status log. */
#include "queue/spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "core/digest.h"
#include "core/log.h"
#include "queue/gsync.h"
#include "queue/journal.h"
#include "queue/spool_int.h"

#define FOOTER_MAGIC "SUBMITD-SPOOL v"
#define FOOTER_VERSION 1
/* "SUBMITD-SPOOL v1 " + 16 hex offset + ' ' + 16 hex length + ' ' + 64 hex sha256 + '\n' */
#define FOOTER_LEN 116
#define TRAILER_MAX ((uint64_t)64 << 20)
#define WBUF_SIZE (64 * 1024)
#define ST_LINE_MAX 8192
/* Removed queue files kept (in tmp/, open for writing) for new messages:
 * at most this many, and only files up to this size. */
#define RECYCLE_MAX 64
#define RECYCLE_SIZE_MAX (256 * 1024)
#define TMPNAME_LEN 48
/* The journal: segments of this size, at most this many (disk it may
 * take: their product); message bytes buffered in memory for it, over
 * all writers, at most JOURNAL_MEM_MAX (beyond, writers use files). */
#define JOURNAL_SEG_SIZE ((uint64_t)8 << 20)
#define JOURNAL_SEGS_DEFAULT 16
#define JOURNAL_MEM_MAX ((size_t)64 << 20)
#define MEMBUF_INITIAL (16 * 1024)

/* Files of removed messages, renamed to tmp/free.PID.N and kept open:
 * a new message overwrites one instead of creating a file, which saves
 * the file system an inode allocation and release (and the release of
 * the data blocks) per message. */
struct recycle {
    pthread_mutex_t mu;
    size_t n;
    uint64_t seq;
    int fds[RECYCLE_MAX];
    char names[RECYCLE_MAX][TMPNAME_LEN];
};

/* Envelopes of messages just committed to the journal, for their first
 * open (the delivery that follows at once): it then need not read the
 * trailer back, check its sum and decode it (about 12% of a delivery
 * thread's time). Direct-mapped by queue id: a collision or a message that
 * is never opened only costs a later open the read from disk. */
#define ENVCACHE_SLOTS 1024

struct envcache_slot {
    char id[QID_LEN + 1]; /* "" = empty */
    struct envelope env;
};

struct envcache {
    pthread_mutex_t mu;
    struct envcache_slot *slots; /* ENVCACHE_SLOTS */
};

struct spool {
    char *dir;
    int dfd;      /* the spool directory */
    int tmpfd;    /* tmp/ */
    int qfd;      /* queue/ */
    int cfd;      /* corrupt/ */
    int jfd;      /* journal/ */
    struct gsync ds; /* group commit of queue/'s fsync */
    struct recycle rc;
    struct journal *jr;  /* NULL: every message gets a file */
    int use_journal;
    atomic_size_t mem_used; /* writers' in-memory buffers (JOURNAL_MEM_MAX) */
    struct envcache ec;
};

static void recycled_drop(struct spool *s, int fd, const char *name);

static struct envcache_slot *envcache_slot(struct spool *s, const char *id)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return &s->ec.slots[h % ENVCACHE_SLOTS];
}

/* Keeps a copy of e (its id set) for the first open of the message. */
static void envcache_put(struct spool *s, const struct envelope *e)
{
    struct envelope copy, old;
    envelope_copy(&copy, e);
    envelope_init(&old);
    pthread_mutex_lock(&s->ec.mu);
    struct envcache_slot *sl = envcache_slot(s, e->id);
    if (sl->id[0])
        old = sl->env;
    memcpy(sl->id, e->id, QID_LEN + 1);
    sl->env = copy;
    pthread_mutex_unlock(&s->ec.mu);
    envelope_free(&old);
}

/* Moves the kept envelope of id into *out. 1, or 0 when there is none. */
static int envcache_take(struct spool *s, const char *id, struct envelope *out)
{
    int hit = 0;
    pthread_mutex_lock(&s->ec.mu);
    struct envcache_slot *sl = envcache_slot(s, id);
    if (sl->id[0] && strcmp(sl->id, id) == 0) {
        *out = sl->env;
        envelope_init(&sl->env);
        sl->id[0] = '\0';
        hit = 1;
    }
    pthread_mutex_unlock(&s->ec.mu);
    return hit;
}

struct spool_writer {
    struct spool *s;
    char id[QID_LEN + 1];
    char tmpname[TMPNAME_LEN]; /* tmp/ID, or a recycled tmp/free.PID.N */
    int recycled;              /* the file may be longer than what we write */
    int fd;                    /* -1 while the message is held in memory for the journal */
    int err;
    uint64_t size;
    size_t blen, bcap;
    size_t mem;                /* bytes of buf counted in spool.mem_used */
    unsigned char *buf;
};

/* The public part first so that a struct spool_msg * is a struct msg_priv *. */
struct msg_priv {
    struct spool_msg pub;
    char id[QID_LEN + 1];
    int stfd; /* queue/ID.st, -1 until opened */
    int ro;   /* spool_msg_peek: never written */
    struct spool *s;
    struct jread jr; /* jr.seg set: read from the journal (pub.fd is the segment's) */
    uint64_t base;   /* where the stored bytes start in pub.fd */
    int spilled;     /* moved out of the journal into queue/ID */
};

/* ---- directories ----------------------------------------------------------- */

static int mkdir_p(const char *path, mode_t mode)
{
    char buf[PATH_MAX];
    if (str_copy(buf, path, sizeof(buf)) >= sizeof(buf)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, mode) != 0 && errno != EEXIST)
                return -1;
            *p = c;
            if (!c)
                break;
        }
    }
    return 0;
}

static int open_sub(struct spool *s, const char *name, struct errlist *errs)
{
    if (mkdirat(s->dfd, name, 0700) == 0)
        logkv(LOG_LVL_INFO, NULL, "spool.created", "dir=%s/%s", s->dir, name);
    else if (errno != EEXIST) {
        errlist_add(errs, s->dir, 0, "cannot create %s/: %s", name, strerror(errno));
        return -1;
    }
    int fd = openat(s->dfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        errlist_add(errs, s->dir, 0, "cannot open %s/: %s", name, strerror(errno));
        return -1;
    }
    if (faccessat(fd, ".", W_OK | X_OK, AT_EACCESS) != 0) {
        errlist_add(errs, s->dir, 0, "%s/ is not writable: %s", name, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static void clean_tmp(struct spool *s)
{
    int fd = openat(s->tmpfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return;
    }
    struct dirent *de;
    char q[LOGQ_MAX], q2[LOGQ_MAX];
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (strncmp(de->d_name, "free.", 5) == 0) /* a recycled file: no message in it */
            unlinkat(s->tmpfd, de->d_name, 0);
        else if (unlinkat(s->tmpfd, de->d_name, 0) == 0)
            logkv(LOG_LVL_WARN, NULL, "spool.tmp_removed", "file=%s note=\"unfinished message from before a restart\"",
                  log_q(q, sizeof(q), de->d_name));
        else
            logkv(LOG_LVL_WARN, NULL, "spool.tmp_remove_failed", "file=%s error=%s", log_q(q, sizeof(q), de->d_name),
                  log_q(q2, sizeof(q2), strerror(errno)));
    }
    closedir(d);
}

struct spool *spool_open(const char *dir, struct errlist *errs)
{
    return spool_open_opts(dir, 0, errs);
}

struct spool *spool_open_opts(const char *dir, size_t journal_segments, struct errlist *errs)
{
    if (!dir || !*dir) {
        errlist_add(errs, "spool", 0, "no spool directory");
        return NULL;
    }
    if (mkdir_p(dir, 0700) != 0) {
        errlist_add(errs, dir, 0, "cannot create the spool directory: %s", strerror(errno));
        return NULL;
    }
    struct spool *s = xcalloc(1, sizeof(*s));
    gsync_init(&s->ds);
    pthread_mutex_init(&s->rc.mu, NULL);
    pthread_mutex_init(&s->ec.mu, NULL);
    s->ec.slots = xcalloc(ENVCACHE_SLOTS, sizeof(*s->ec.slots));
    atomic_init(&s->mem_used, 0);
    s->dir = xstrdup(dir);
    s->tmpfd = s->qfd = s->cfd = s->jfd = -1;
    s->dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dfd < 0) {
        errlist_add(errs, dir, 0, "cannot open the spool directory: %s", strerror(errno));
        spool_close(s);
        return NULL;
    }
    s->tmpfd = open_sub(s, "tmp", errs);
    s->qfd = s->tmpfd >= 0 ? open_sub(s, "queue", errs) : -1;
    s->cfd = s->qfd >= 0 ? open_sub(s, "corrupt", errs) : -1;
    s->jfd = s->cfd >= 0 ? open_sub(s, "journal", errs) : -1;
    if (s->jfd < 0) {
        spool_close(s);
        return NULL;
    }
    clean_tmp(s);
    char jpath[PATH_MAX];
    snprintf(jpath, sizeof(jpath), "%s/journal", dir);
    s->jr = journal_open(s->jfd, jpath, s->qfd, journal_segments ? journal_segments : JOURNAL_SEGS_DEFAULT,
                         JOURNAL_SEG_SIZE, errs);
    if (!s->jr) {
        spool_close(s);
        return NULL;
    }
    s->use_journal = 1;
    return s;
}

void spool_close(struct spool *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->rc.n; i++) /* only spool_open's tmp/ gives files to the pool */
        recycled_drop(s, s->rc.fds[i], s->rc.names[i]);
    journal_close(s->jr);
    int fds[] = {s->dfd, s->tmpfd, s->qfd, s->cfd, s->jfd};
    for (size_t i = 0; i < ARRAY_LEN(fds); i++)
        if (fds[i] >= 0)
            close(fds[i]);
    pthread_mutex_destroy(&s->rc.mu);
    for (size_t i = 0; i < ENVCACHE_SLOTS; i++)
        envelope_free(&s->ec.slots[i].env);
    free(s->ec.slots);
    pthread_mutex_destroy(&s->ec.mu);
    gsync_destroy(&s->ds);
    free(s->dir);
    free(s);
}

/* Makes every change to queue/ made by this thread so far durable (group
 * commit: see gsync.h). 0, or -1 with errno. */
static int queue_dir_sync(struct spool *s)
{
    return gsync_wait(&s->ds, s->qfd, 0);
}

void spool_use_journal(struct spool *s, int on)
{
    s->use_journal = on && s->jr;
}

const char *spool_dir(const struct spool *s)
{
    return s->dir;
}

/* rename without replacing an existing target (falls back to rename(2)
 * where the filesystem does not support RENAME_NOREPLACE). */
static int rename_noreplace(int ofd, const char *old, int nfd, const char *new)
{
    if (renameat2(ofd, old, nfd, new, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -1;
    return renameat(ofd, old, nfd, new);
}

/* ---- recycled files ------------------------------------------------------------ */

/* Gives up a recycled file: removes tmp/name and closes fd. */
static void recycled_drop(struct spool *s, int fd, const char *name)
{
    unlinkat(s->tmpfd, name, 0);
    close(fd);
}

/* A recycled file (open for writing, at offset 0) and its name in tmp/,
 * or -1 when there is none. */
static int recycled_take(struct spool *s, char name[TMPNAME_LEN])
{
    for (;;) {
        int fd = -1;
        pthread_mutex_lock(&s->rc.mu);
        if (s->rc.n > 0) {
            s->rc.n--;
            fd = s->rc.fds[s->rc.n];
            memcpy(name, s->rc.names[s->rc.n], TMPNAME_LEN);
        }
        pthread_mutex_unlock(&s->rc.mu);
        if (fd < 0 || lseek(fd, 0, SEEK_SET) == 0)
            return fd;
        recycled_drop(s, fd, name);
    }
}

/* Keeps fd (tmp/name) for a later message; removes it when the pool is full. */
static void recycled_put(struct spool *s, int fd, const char *name)
{
    pthread_mutex_lock(&s->rc.mu);
    int kept = s->rc.n < RECYCLE_MAX;
    if (kept) {
        s->rc.fds[s->rc.n] = fd;
        str_copy(s->rc.names[s->rc.n], name, TMPNAME_LEN);
        s->rc.n++;
    }
    pthread_mutex_unlock(&s->rc.mu);
    if (!kept)
        recycled_drop(s, fd, name);
}

/* Moves queue/id out of the queue: to tmp/ for recycling when it is small
 * and the pool has room (*fd, name filled), else unlinks it (*fd = -1). */
static int queue_file_release(struct spool *s, const char *id, int *fd, char name[TMPNAME_LEN])
{
    *fd = -1;
    pthread_mutex_lock(&s->rc.mu);
    int room = s->rc.n < RECYCLE_MAX;
    uint64_t seq = ++s->rc.seq;
    pthread_mutex_unlock(&s->rc.mu);
    if (room) {
        struct stat st;
        int wfd = openat(s->qfd, id, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
        if (wfd >= 0 && fstat(wfd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size <= RECYCLE_SIZE_MAX) {
            snprintf(name, TMPNAME_LEN, "free.%ld.%llu", (long)getpid(), (unsigned long long)seq);
            if (renameat(s->qfd, id, s->tmpfd, name) == 0) {
                *fd = wfd;
                return 0;
            }
        }
        if (wfd >= 0)
            close(wfd);
    }
    return unlinkat(s->qfd, id, 0);
}

/* ---- writer ------------------------------------------------------------------ */

/* Takes n bytes of the in-memory budget: 1, or 0 when it is spent. */
static int mem_take(struct spool *s, size_t n)
{
    size_t cur = atomic_load(&s->mem_used);
    do {
        if (cur + n > JOURNAL_MEM_MAX)
            return 0;
    } while (!atomic_compare_exchange_weak(&s->mem_used, &cur, cur + n));
    return 1;
}

static void mem_release(struct spool_writer *w)
{
    if (w->mem)
        atomic_fetch_sub(&w->s->mem_used, w->mem);
    w->mem = 0;
}

/* Gives the writer its file: a recycled one or tmp/ID. */
static int writer_open_file(struct spool_writer *w)
{
    w->fd = recycled_take(w->s, w->tmpname);
    w->recycled = w->fd >= 0;
    if (w->fd < 0) {
        memcpy(w->tmpname, w->id, QID_LEN + 1);
        w->fd = openat(w->s->tmpfd, w->id, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (w->fd < 0)
            return -1;
    }
    return 0;
}

/* An in-memory message becomes a file (too big for the journal, or the
 * memory budget is spent): what is buffered is written to it. */
static int writer_to_file(struct spool_writer *w)
{
    if (writer_open_file(w) != 0)
        return -1;
    if (write_all(w->fd, w->buf, w->blen) != 0)
        return -1;
    w->blen = 0;
    mem_release(w);
    if (w->bcap != WBUF_SIZE) {
        w->buf = xrealloc(w->buf, WBUF_SIZE);
        w->bcap = WBUF_SIZE;
    }
    return 0;
}

struct spool_writer *spool_writer_new(struct spool *s, const char *id)
{
    if (!qid_valid(id)) {
        errno = EINVAL;
        return NULL;
    }
    struct spool_writer *w = xcalloc(1, sizeof(*w));
    w->s = s;
    memcpy(w->id, id, QID_LEN + 1);
    w->fd = -1;
    if (s->use_journal && mem_take(s, MEMBUF_INITIAL)) {
        w->mem = w->bcap = MEMBUF_INITIAL;
    } else {
        if (writer_open_file(w) != 0) {
            free(w);
            return NULL;
        }
        w->bcap = WBUF_SIZE;
    }
    w->buf = xmalloc(w->bcap);
    return w;
}

static void writer_flush(struct spool_writer *w)
{
    if (w->err || w->blen == 0 || w->fd < 0)
        return;
    if (write_all(w->fd, w->buf, w->blen) != 0)
        w->err = errno ? errno : EIO;
    w->blen = 0;
}

/* In memory: grows the buffer within the journal's limits, or moves the
 * message to a file. 0, or -1 (w->err set). */
static int writer_room(struct spool_writer *w, size_t n)
{
    if (w->blen + n <= w->bcap)
        return 0;
    size_t want = w->bcap;
    while (want < w->blen + n)
        want *= 2;
    if (w->blen + n <= JOURNAL_PAYLOAD_MAX && mem_take(w->s, want - w->bcap)) {
        w->mem += want - w->bcap;
        w->buf = xrealloc(w->buf, want);
        w->bcap = want;
        return 0;
    }
    if (writer_to_file(w) != 0) {
        w->err = errno ? errno : EIO;
        return -1;
    }
    return 0;
}

static void writer_put(struct spool_writer *w, const void *buf, size_t n)
{
    if (w->err)
        return;
    if (w->fd < 0) {
        if (writer_room(w, n) != 0)
            return;
        if (w->fd < 0) {
            memcpy(w->buf + w->blen, buf, n);
            w->blen += n;
            return;
        }
    }
    if (w->blen + n > w->bcap) {
        writer_flush(w);
        if (w->err)
            return;
    }
    if (n >= w->bcap) {
        if (write_all(w->fd, buf, n) != 0)
            w->err = errno ? errno : EIO;
        return;
    }
    memcpy(w->buf + w->blen, buf, n);
    w->blen += n;
}

void spool_writer_write(struct spool_writer *w, const void *buf, size_t n)
{
    if (w->err)
        return;
    writer_put(w, buf, n);
    if (!w->err)
        w->size += n;
}

int spool_writer_failed(const struct spool_writer *w)
{
    return w->err;
}

uint64_t spool_writer_size(const struct spool_writer *w)
{
    return w->size;
}

static void writer_free(struct spool_writer *w)
{
    if (w->fd >= 0)
        close(w->fd);
    mem_release(w);
    free(w->buf);
    free(w);
}

void spool_writer_abort(struct spool_writer *w)
{
    if (!w)
        return;
    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
        unlinkat(w->s->tmpfd, w->tmpname, 0);
    }
    writer_free(w);
}

static void sha256_hex(const void *data, size_t n, char out[65])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[32];
    struct iovec v = {.iov_base = (void *)data, .iov_len = n};
    sha256_iov(&v, 1, md);
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
}

/* The trailer (encoded envelope) and footer of w's message; copy is a
 * shallow copy of e with the writer's id and size (authoritative). */
static void make_trailer(struct spool_writer *w, const struct envelope *e, struct envelope *copy, struct strbuf *t,
                         char footer[FOOTER_LEN + 1])
{
    *copy = *e;
    memcpy(copy->id, w->id, QID_LEN + 1);
    copy->size = w->size;
    sb_init(t);
    spool_env_encode(copy, t);
    char sum[65];
    sha256_hex(t->s, t->len, sum);
    snprintf(footer, FOOTER_LEN + 1, FOOTER_MAGIC "%d %016llx %016llx %s\n", FOOTER_VERSION,
             (unsigned long long)w->size, (unsigned long long)t->len, sum);
}

/* An asynchronous commit in flight (spool_commit_async). */
struct commit_op {
    struct spool_writer *w;
    struct envelope copy; /* shallow: points into the caller's envelope */
    struct strbuf t;
    char footer[FOOTER_LEN + 1];
    struct iovec iov[3];
    void (*cb)(void *arg, int rc, int err);
    void *arg;
};

static void commit_op_done(void *arg, int rc, int err)
{
    struct commit_op *op = arg;
    if (rc == 0)
        envcache_put(op->w->s, &op->copy);
    sb_free(&op->t);
    if (rc == -2) { /* no room: the caller commits w as a file */
        op->cb(op->arg, 1, 0);
    } else {
        writer_free(op->w);
        op->cb(op->arg, rc == 0 ? 0 : -1, rc == 0 ? 0 : (err ? err : EIO));
    }
    free(op);
}

int spool_commit_async(struct spool_writer *w, const struct envelope *e, void (*cb)(void *arg, int rc, int err),
                       void *arg)
{
    struct spool *s = w->s;
    if (w->fd >= 0 || w->err) /* a file already: fsync and rename */
        return 1;
    struct commit_op *op = xcalloc(1, sizeof(*op));
    make_trailer(w, e, &op->copy, &op->t, op->footer);
    op->w = w;
    op->cb = cb;
    op->arg = arg;
    op->iov[0] = (struct iovec){.iov_base = w->buf, .iov_len = w->blen};
    op->iov[1] = (struct iovec){.iov_base = op->t.s, .iov_len = op->t.len};
    op->iov[2] = (struct iovec){.iov_base = op->footer, .iov_len = FOOTER_LEN};
    if (journal_append_async(s->jr, w->id, op->iov, 3, commit_op_done, op) != 0) { /* -2: too big for a record */
        sb_free(&op->t);
        free(op);
        return 1;
    }
    return 0;
}

void spool_drain(struct spool *s)
{
    if (s && s->jr)
        journal_drain(s->jr);
}

int spool_commit(struct spool_writer *w, const struct envelope *e)
{
    struct spool *s = w->s;
    struct envelope copy;
    struct strbuf t;
    char footer[FOOTER_LEN + 1];
    make_trailer(w, e, &copy, &t, footer);
    off_t total = (off_t)(w->size + t.len + FOOTER_LEN);
    if (w->fd < 0 && !w->err && (uint64_t)total <= JOURNAL_PAYLOAD_MAX) {
        struct iovec iov[3] = {{.iov_base = w->buf, .iov_len = w->blen},
                               {.iov_base = t.s, .iov_len = t.len},
                               {.iov_base = footer, .iov_len = FOOTER_LEN}};
        int rc = journal_append(s->jr, w->id, iov, 3);
        if (rc == 0)
            envcache_put(s, &copy);
        if (rc != -2) {
            int jerr = errno;
            sb_free(&t);
            writer_free(w);
            errno = rc == 0 ? 0 : jerr;
            return rc == 0 ? 0 : -1;
        }
    }
    if (w->fd < 0 && !w->err && writer_to_file(w) != 0)
        w->err = errno ? errno : EIO;
    writer_put(w, t.s, t.len);
    writer_put(w, footer, FOOTER_LEN);
    sb_free(&t);
    writer_flush(w);
    int err = w->err;
    /* a recycled file keeps what it held beyond our bytes until cut here */
    if (!err && w->recycled && ftruncate(w->fd, total) != 0)
        err = errno;
    if (!err && fsync(w->fd) != 0)
        err = errno;
    if (w->fd >= 0 && close(w->fd) != 0 && !err)
        err = errno;
    w->fd = -1;
    if (!err && rename_noreplace(s->tmpfd, w->tmpname, s->qfd, w->id) != 0)
        err = errno;
    if (err) {
        if (w->tmpname[0])
            unlinkat(s->tmpfd, w->tmpname, 0);
    } else if (queue_dir_sync(s) != 0) {
        err = errno;
        /* not durable: the client is told 451 and sends again, so this
         * copy must not be delivered as well */
        unlinkat(s->qfd, w->id, 0);
    }
    writer_free(w);
    errno = err;
    return err ? -1 : 0;
}

/* Fills err and returns -1 with errno e (EBADMSG: the file is invalid). */
static int fail(char *err, size_t errlen, int e, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    errno = e;
    return -1;
}

/* ---- status log ------------------------------------------------------------ */

static uint32_t crc32_buf(const void *data, size_t n)
{
    const unsigned char *p = data;
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return ~c;
}

/* Record kinds of the status log (docs/spool-format.md). The first three
 * are per recipient results; hold/release/reported came with issue 3. */
enum st_kind { ST_DONE, ST_FAILED, ST_RETRY, ST_HOLD, ST_RELEASE, ST_REPORTED, ST__COUNT };
static const char *const st_names[ST__COUNT] = {"done", "failed", "retry", "hold", "release", "reported"};
static const char *const reported_names[] = {"failed", "delayed"}; /* SPOOL_REPORTED_FAILED, _DELAYED */

static void set_reply(struct spool_msg *m, size_t idx, char *text)
{
    free(m->last_reply[idx]);
    m->last_reply[idx] = text;
}

/* Parses the fields after "KIND " of a checksummed record and applies it.
 * 1 = applied, -1 = invalid content. */
static int st_apply_kind(struct spool_msg *m, enum st_kind kind, struct spool_cur *c)
{
    const char *why = NULL;
    uint64_t idx = 0, attempts = 0;
    int64_t when, next = 0;
    char *text = NULL;
    unsigned what = 0;
    int per_rcpt = kind != ST_HOLD && kind != ST_RELEASE;
    if (per_rcpt && (spool_get_u64(c, UINT64_MAX, &idx, &why) != 0 || spool_get_sp(c, &why) != 0))
        return -1;
    if (spool_get_i64(c, &when, &why) != 0)
        return -1;
    if (kind == ST_RETRY && (spool_get_sp(c, &why) != 0 || spool_get_i64(c, &next, &why) != 0 || spool_get_sp(c, &why) != 0 ||
                             spool_get_u64(c, UINT_MAX, &attempts, &why) != 0))
        return -1;
    if (kind == ST_REPORTED) {
        if (spool_get_sp(c, &why) != 0)
            return -1;
        for (size_t i = 0; i < ARRAY_LEN(reported_names) && !what; i++) {
            size_t l = strlen(reported_names[i]);
            if (c->end - c->p > (ptrdiff_t)l && memcmp(c->p, reported_names[i], l) == 0 && c->p[l] == ' ') {
                what = 1u << i;
                c->p += l;
            }
        }
        if (!what)
            return -1;
    }
    if ((kind == ST_FAILED || kind == ST_RETRY || kind == ST_HOLD || kind == ST_REPORTED) &&
        (spool_get_sp(c, &why) != 0 || spool_get_str(c, &text, &why) != 0))
        return -1;
    if (spool_get_eol(c, &why) != 0 || (per_rcpt && idx >= m->env.nrcpts) ||
        (kind == ST_REPORTED && text && !qid_valid(text))) {
        free(text);
        return -1;
    }
    switch (kind) {
    case ST_HOLD:
        m->held = 1;
        free(m->hold_reason);
        m->hold_reason = text;
        return 1;
    case ST_RELEASE:
        m->held = 0;
        return 1;
    case ST_REPORTED:
        m->reported[idx] |= what;
        free(text);
        return 1;
    default:
        break;
    }
    if (m->state[idx] != RCPT_PENDING) {
        free(text); /* final states stay final */
        return 1;
    }
    m->last_try[idx] = when;
    if (kind == ST_DONE) {
        m->state[idx] = RCPT_DONE;
    } else {
        if (kind == ST_FAILED)
            m->state[idx] = RCPT_FAILED;
        else {
            m->next_try[idx] = next;
            m->attempts[idx] = (unsigned)attempts;
        }
        set_reply(m, idx, text);
        text = NULL;
    }
    free(text);
    return 1;
}

/* One complete .st line without its '\n'. 1 = applied, 0 = bad checksum
 * (ignored), -1 = checksummed but invalid. */
static int st_apply(struct spool_msg *m, const char *line, size_t len)
{
    if (len < 10 || line[len - 9] != ' ')
        return 0;
    uint32_t want = 0;
    for (size_t i = len - 8; i < len; i++) {
        int h = spool_hexval((unsigned char)line[i]);
        if (h < 0 || (line[i] >= 'A' && line[i] <= 'F'))
            return 0;
        want = want << 4 | (uint32_t)h;
    }
    if (crc32_buf(line, len - 9) != want)
        return 0;
    struct spool_cur c = {line, line + len - 9};
    for (int k = 0; k < ST__COUNT; k++) {
        size_t kl = strlen(st_names[k]);
        if ((size_t)(c.end - c.p) > kl && memcmp(c.p, st_names[k], kl) == 0 && c.p[kl] == ' ') {
            c.p += kl + 1;
            return st_apply_kind(m, (enum st_kind)k, &c);
        }
    }
    return -1;
}

/* Replays queue/ID.st (fd) into m; cuts a torn last line off unless
 * read-only (then it is only skipped). */
static int st_replay(struct spool_msg *m, int fd, int ro, char *err, size_t errlen)
{
    char *line = xmalloc(ST_LINE_MAX);
    char *buf = xmalloc(WBUF_SIZE);
    size_t ll = 0, bad = 0;
    int toolong = 0, rc = 0;
    off_t off = 0, good = 0;
    for (;;) {
        ssize_t r = pread(fd, buf, WBUF_SIZE, off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = fail(err, errlen, errno, "status log: %s", strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        for (ssize_t i = 0; i < r; i++) {
            if (buf[i] != '\n') {
                if (ll < ST_LINE_MAX)
                    line[ll++] = buf[i];
                else
                    toolong = 1;
                continue;
            }
            int a = toolong ? 0 : st_apply(m, line, ll);
            if (a < 0) {
                rc = fail(err, errlen, EBADMSG, "status log: invalid record at offset %lld", (long long)good);
                goto out;
            }
            if (a == 0)
                bad++;
            good = off + i + 1;
            ll = 0;
            toolong = 0;
        }
        off += r;
    }
    if (bad && !ro)
        logkv(LOG_LVL_WARN, NULL, "spool.st_bad_records", "file=%.16s.st count=%zu note=\"ignored\"", m->env.id, bad);
    if (off > good && !ro) {
        /* a torn last record (crash mid-append): ignore it and cut it off so
         * that the next record starts on a line of its own */
        logkv(LOG_LVL_WARN, NULL, "spool.st_torn", "file=%.16s.st bytes=%lld note=\"ignored\"", m->env.id,
              (long long)(off - good));
        if (ftruncate(fd, good) != 0 || fdatasync(fd) != 0)
            rc = fail(err, errlen, errno, "status log: cannot cut torn record: %s", strerror(errno));
    }
out:
    free(line);
    free(buf);
    return rc;
}

/* ---- moving messages out of the journal ---------------------------------- */

/* Copies the stored bytes of a journal record (len bytes at off of fd)
 * into a new file named dst in directory dstfd, durably (tmp/ID, fsync,
 * rename, directory fsync). 0, or -1 with errno. */
static int journal_copy_out(struct spool *s, const char *id, int fd, uint64_t off, uint64_t len, int dstfd,
                            const char *dst)
{
    int out = openat(s->tmpfd, id, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (out < 0)
        return -1;
    char *buf = xmalloc(WBUF_SIZE);
    int rc = 0;
    for (uint64_t k = 0; rc == 0 && k < len; k += WBUF_SIZE) {
        size_t n = len - k < WBUF_SIZE ? (size_t)(len - k) : WBUF_SIZE;
        rc = pread_full(fd, buf, n, (off_t)(off + k)) != 0 || write_all(out, buf, n) != 0 ? -1 : 0;
    }
    free(buf);
    if (rc == 0 && fsync(out) != 0)
        rc = -1;
    int e = errno;
    if (close(out) != 0 && rc == 0) {
        rc = -1;
        e = errno;
    }
    if (rc == 0 && rename_noreplace(s->tmpfd, id, dstfd, dst) != 0) {
        rc = -1;
        e = errno;
    }
    if (rc != 0) {
        unlinkat(s->tmpfd, id, 0);
        errno = e;
        return -1;
    }
    if ((dstfd == s->qfd ? queue_dir_sync(s) : fsync(dstfd)) != 0) {
        e = errno;
        unlinkat(dstfd, dst, 0);
        errno = e;
        return -1;
    }
    return 0;
}

/* The message needs a status log: it moves from the journal into
 * queue/ID first (its reads keep using the journal's copy until closed;
 * the record stays pinned until then). */
static int msg_spill(struct spool *s, struct msg_priv *p)
{
    if (journal_copy_out(s, p->id, p->jr.fd, p->jr.off, p->jr.len, s->qfd, p->id) != 0)
        return -1;
    p->spilled = 1;
    char q[LOGQ_MAX];
    /* a crash before this is durable leaves both copies: the recovery
     * keeps queue/ID and resolves the record */
    if (journal_done(s->jr, p->id) != 0 && errno != ENOENT)
        logkv(LOG_LVL_WARN, NULL, "journal.resolve_failed", "id=%s error=%s", p->id,
              log_q(q, sizeof(q), strerror(errno)));
    logkv(LOG_LVL_DEBUG, NULL, "journal.moved_out", "id=%s", p->id);
    return 0;
}

/* Appends "payload CRC\n" to out. */
static void st_line(struct strbuf *out, const char *payload, size_t n)
{
    sb_append(out, payload, n);
    sb_printf(out, " %08x\n", (unsigned)crc32_buf(payload, n));
}

/* Writes complete records (st_line output) to queue/ID.st with one write
 * and one fdatasync, creating the file (and fsyncing queue/) the first time. */
static int st_write(struct spool *s, struct msg_priv *p, const char *buf, size_t n)
{
    if (p->ro) {
        errno = EROFS;
        return -1;
    }
    if (p->jr.seg && !p->spilled && msg_spill(s, p) != 0)
        return -1;
    if (p->stfd < 0) {
        char name[QID_LEN + 4];
        snprintf(name, sizeof(name), "%s.st", p->id);
        p->stfd = openat(s->qfd, name, O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (p->stfd < 0 && errno == EEXIST)
            p->stfd = openat(s->qfd, name, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
        else if (p->stfd >= 0 && queue_dir_sync(s) != 0) /* the new name must be durable too */
            return -1;
        if (p->stfd < 0)
            return -1;
    }
    int rc = write_all(p->stfd, buf, n);
    if (rc == 0)
        rc = fdatasync(p->stfd);
    return rc;
}

static int st_append(struct spool *s, struct msg_priv *p, const struct strbuf *payload)
{
    struct strbuf b;
    sb_init(&b);
    st_line(&b, payload->s, payload->len);
    int rc = st_write(s, p, b.s, b.len);
    sb_free(&b);
    return rc;
}

/* Appends ` TEXT` (a reply line for logs and DSNs, bounded) to b; returns
 * the text as written (a copy the caller frees). */
static char *put_text(struct strbuf *b, const char *text)
{
    char cut[600];
    if (text && strlen(text) >= sizeof(cut)) {
        str_copy(cut, text, sizeof(cut));
        text = cut;
    }
    sb_puts(b, " ");
    spool_put_str(b, text);
    return text ? xstrdup(text) : NULL;
}

static int mark(struct spool *s, struct spool_msg *m, size_t rcpt, enum st_kind kind, int64_t next, const char *text)
{
    struct msg_priv *p = (struct msg_priv *)m;
    if (rcpt >= m->env.nrcpts || p->ro) {
        errno = p->ro ? EROFS : EINVAL;
        return -1;
    }
    int64_t now = (int64_t)time(NULL);
    struct strbuf b;
    sb_init(&b);
    sb_printf(&b, "%s %zu %lld", st_names[kind], rcpt, (long long)now);
    if (kind == ST_RETRY) {
        m->attempts[rcpt]++;
        m->next_try[rcpt] = next;
        sb_printf(&b, " %lld %u", (long long)next, m->attempts[rcpt]);
    }
    if (kind != ST_DONE)
        set_reply(m, rcpt, put_text(&b, text));
    if (kind == ST_DONE)
        m->state[rcpt] = RCPT_DONE;
    else if (kind == ST_FAILED)
        m->state[rcpt] = RCPT_FAILED;
    m->last_try[rcpt] = now;
    int rc = st_append(s, p, &b);
    sb_free(&b);
    return rc;
}

int spool_mark_done(struct spool *s, struct spool_msg *m, size_t rcpt)
{
    return mark(s, m, rcpt, ST_DONE, 0, NULL);
}

int spool_mark_failed(struct spool *s, struct spool_msg *m, size_t rcpt, const char *text)
{
    return mark(s, m, rcpt, ST_FAILED, 0, text);
}

int spool_mark_retry(struct spool *s, struct spool_msg *m, size_t rcpt, int64_t next, const char *text)
{
    return mark(s, m, rcpt, ST_RETRY, next, text);
}

int spool_mark_hold(struct spool *s, struct spool_msg *m, const char *reason)
{
    struct strbuf b;
    sb_init(&b);
    sb_printf(&b, "hold %lld", (long long)time(NULL));
    char *r = put_text(&b, reason);
    int rc = st_append(s, (struct msg_priv *)m, &b);
    sb_free(&b);
    if (rc == 0) {
        m->held = 1;
        free(m->hold_reason);
        m->hold_reason = r;
    } else {
        free(r);
    }
    return rc;
}

int spool_mark_release(struct spool *s, struct spool_msg *m)
{
    struct strbuf b;
    sb_init(&b);
    sb_printf(&b, "release %lld", (long long)time(NULL));
    int rc = st_append(s, (struct msg_priv *)m, &b);
    sb_free(&b);
    if (rc == 0)
        m->held = 0;
    return rc;
}

int spool_mark_reported(struct spool *s, struct spool_msg *m, const size_t *rcpts, size_t n, unsigned what,
                        const char *dsn_id)
{
    int which = what == SPOOL_REPORTED_FAILED ? 0 : what == SPOOL_REPORTED_DELAYED ? 1 : -1;
    if (which < 0 || (dsn_id && !qid_valid(dsn_id))) {
        errno = EINVAL;
        return -1;
    }
    struct strbuf lines, rec;
    sb_init(&lines);
    sb_init(&rec);
    long long now = (long long)time(NULL);
    for (size_t i = 0; i < n; i++) {
        if (rcpts[i] >= m->env.nrcpts) {
            sb_free(&lines);
            sb_free(&rec);
            errno = EINVAL;
            return -1;
        }
        sb_reset(&rec);
        sb_printf(&rec, "reported %zu %lld %s ", rcpts[i], now, reported_names[which]);
        spool_put_str(&rec, dsn_id);
        st_line(&lines, rec.s, rec.len);
    }
    int rc = n ? st_write(s, (struct msg_priv *)m, lines.s, lines.len) : 0;
    for (size_t i = 0; rc == 0 && i < n; i++)
        m->reported[rcpts[i]] |= what;
    sb_free(&lines);
    sb_free(&rec);
    return rc;
}

int spool_msg_complete(const struct spool_msg *m)
{
    for (size_t i = 0; i < m->env.nrcpts; i++)
        if (m->state[i] == RCPT_PENDING)
            return 0;
    return 1;
}

/* ---- reading ---------------------------------------------------------------- */

static int parse_hex16(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        int h = spool_hexval((unsigned char)s[i]);
        if (h < 0 || (s[i] >= 'A' && s[i] <= 'F'))
            return -1;
        v = v << 4 | (uint64_t)h;
    }
    *out = v;
    return 0;
}

/* Checks the footer and reads + verifies + decodes the trailer of the
 * stored message at [base, base + size) of fd (a queue file: base 0 and
 * the file's size; a journal record: its payload). */
static int read_trailer(int fd, uint64_t base, uint64_t size, struct envelope *env, char *err, size_t errlen)
{
    if (size < FOOTER_LEN)
        return fail(err, errlen, EBADMSG, "not a spool file (too short)");
    char f[FOOTER_LEN + 1];
    if (pread_full(fd, f, FOOTER_LEN, (off_t)(base + size - FOOTER_LEN)) != 0)
        return fail(err, errlen, errno, "footer: %s", strerror(errno));
    f[FOOTER_LEN] = '\0';
    size_t ml = strlen(FOOTER_MAGIC);
    if (memcmp(f, FOOTER_MAGIC, ml) != 0)
        return fail(err, errlen, EBADMSG, "no spool footer (torn or foreign file)");
    if (f[ml] != '0' + FOOTER_VERSION || f[ml + 1] != ' ')
        return fail(err, errlen, EBADMSG, "unsupported spool format version");
    uint64_t off, tlen;
    if (parse_hex16(f + ml + 2, &off) != 0 || f[ml + 18] != ' ' || parse_hex16(f + ml + 19, &tlen) != 0 ||
        f[ml + 35] != ' ' || f[FOOTER_LEN - 1] != '\n')
        return fail(err, errlen, EBADMSG, "bad spool footer");
    if (tlen > TRAILER_MAX || off > size || tlen > size - off || off + tlen + FOOTER_LEN != size)
        return fail(err, errlen, EBADMSG, "spool footer does not match the file size");
    char *t = xmalloc(tlen + 1);
    if (pread_full(fd, t, tlen, (off_t)(base + off)) != 0) {
        int e = errno;
        free(t);
        return fail(err, errlen, e, "trailer: %s", strerror(e));
    }
    char sum[65];
    sha256_hex(t, tlen, sum);
    if (memcmp(sum, f + ml + 36, 64) != 0) {
        free(t);
        return fail(err, errlen, EBADMSG, "trailer checksum mismatch");
    }
    int rc = spool_env_decode(t, tlen, env, err, errlen);
    free(t);
    if (rc != 0) {
        errno = EBADMSG;
        return -1;
    }
    if (env->size != off) {
        envelope_free(env);
        return fail(err, errlen, EBADMSG, "envelope size does not match the footer");
    }
    return 0;
}

static int msg_open(struct spool *s, const char *id, int ro, struct spool_msg **out, char *err, size_t errlen)
{
    char dummy[8];
    if (!err || !errlen) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    *out = NULL;
    if (!qid_valid(id)) {
        snprintf(err, errlen, "invalid queue id");
        errno = EINVAL;
        return -1;
    }
    struct msg_priv *p = xcalloc(1, sizeof(*p));
    struct spool_msg *m = &p->pub;
    memcpy(p->id, id, QID_LEN + 1);
    p->stfd = -1;
    p->ro = ro;
    p->s = s;
    uint64_t size = 0;
    if (s->jr && journal_get(s->jr, id, &p->jr) == 0) {
        m->fd = p->jr.fd;
        p->base = p->jr.off;
        size = p->jr.len;
    } else {
        struct stat st;
        m->fd = openat(s->qfd, id, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (m->fd < 0 || fstat(m->fd, &st) != 0) {
            int e = errno;
            snprintf(err, errlen, "open: %s", strerror(e));
            if (m->fd >= 0)
                close(m->fd);
            free(p);
            errno = e;
            return -1;
        }
        if (!S_ISREG(st.st_mode)) {
            close(m->fd);
            free(p);
            return fail(err, errlen, EBADMSG, "not a spool file (not a regular file)");
        }
        size = (uint64_t)st.st_size;
    }
    /* just committed to the journal: its envelope is still in memory */
    int cached = p->jr.seg && !ro && envcache_take(s, id, &m->env);
    if (!cached && read_trailer(m->fd, p->base, size, &m->env, err, errlen) != 0) {
        int e = errno;
        if (p->jr.seg)
            journal_put(s->jr, &p->jr);
        else
            close(m->fd);
        free(p);
        errno = e;
        return -1;
    }
    size_t n = m->env.nrcpts;
    m->state = xcalloc(n, sizeof(*m->state));
    m->next_try = xcalloc(n, sizeof(*m->next_try));
    m->attempts = xcalloc(n, sizeof(*m->attempts));
    m->reported = xcalloc(n, sizeof(*m->reported));
    m->last_try = xcalloc(n, sizeof(*m->last_try));
    m->last_reply = xcalloc(n, sizeof(*m->last_reply));
    if (strcmp(m->env.id, id) != 0) {
        snprintf(err, errlen, "envelope id %s does not match the file name", m->env.id);
        spool_msg_close(m);
        errno = EBADMSG;
        return -1;
    }
    char name[QID_LEN + 4];
    snprintf(name, sizeof(name), "%s.st", id);
    /* a message in the journal has no status log (the first record moves it out) */
    p->stfd = p->jr.seg ? -1 : openat(s->qfd, name, (ro ? O_RDONLY : O_RDWR | O_APPEND) | O_CLOEXEC | O_NOFOLLOW);
    if (p->stfd < 0 && !p->jr.seg && errno != ENOENT) {
        int e = errno;
        snprintf(err, errlen, "status log: %s", strerror(e));
        spool_msg_close(m);
        errno = e;
        return -1;
    }
    if (p->stfd >= 0 && st_replay(m, p->stfd, ro, err, errlen) != 0) {
        int e = errno;
        spool_msg_close(m);
        errno = e;
        return -1;
    }
    if (ro && p->stfd >= 0) {
        close(p->stfd);
        p->stfd = -1;
    }
    *out = m;
    return 0;
}

int spool_msg_open(struct spool *s, const char *id, struct spool_msg **out, char *err, size_t errlen)
{
    return msg_open(s, id, 0, out, err, errlen);
}

int spool_msg_peek(struct spool *s, const char *id, struct spool_msg **out, char *err, size_t errlen)
{
    return msg_open(s, id, 1, out, err, errlen);
}

void spool_msg_close(struct spool_msg *m)
{
    if (!m)
        return;
    struct msg_priv *p = (struct msg_priv *)m;
    if (p->jr.seg)
        journal_put(p->s->jr, &p->jr);
    else if (m->fd >= 0)
        close(m->fd);
    if (p->stfd >= 0)
        close(p->stfd);
    for (size_t i = 0; m->last_reply && i < m->env.nrcpts; i++)
        free(m->last_reply[i]);
    envelope_free(&m->env);
    free(m->state);
    free(m->next_try);
    free(m->attempts);
    free(m->reported);
    free(m->last_try);
    free(m->last_reply);
    free(m->hold_reason);
    free(p);
}

ssize_t spool_msg_pread(struct spool_msg *m, void *buf, size_t n, uint64_t off)
{
    if (off >= m->env.size)
        return 0;
    if (n > m->env.size - off)
        n = (size_t)(m->env.size - off);
    if (n > SSIZE_MAX)
        n = SSIZE_MAX;
    uint64_t base = ((struct msg_priv *)m)->base;
    for (;;) {
        ssize_t r = pread(m->fd, buf, n, (off_t)(base + off));
        if (r < 0 && errno == EINTR)
            continue;
        return r;
    }
}

/* ---- removal, quarantine, scan ---------------------------------------------- */

int spool_remove(struct spool *s, const char *id)
{
    if (!qid_valid(id)) {
        errno = EINVAL;
        return -1;
    }
    if (s->jr && journal_done(s->jr, id) == 0)
        return 0;
    if (s->jr && errno != ENOENT)
        return -1;
    char name[QID_LEN + 4], freename[TMPNAME_LEN];
    int fd;
    snprintf(name, sizeof(name), "%s.st", id);
    if (queue_file_release(s, id, &fd, freename) != 0)
        return -1;
    int e = 0;
    if (unlinkat(s->qfd, name, 0) != 0 && errno != ENOENT)
        e = errno;
    if (queue_dir_sync(s) != 0 && !e)
        e = errno;
    /* reused only once queue/ID is durably gone: a crash must never find
     * the old name pointing at a new message's bytes */
    if (fd >= 0 && e)
        recycled_drop(s, fd, freename);
    else if (fd >= 0)
        recycled_put(s, fd, freename);
    errno = e;
    return e ? -1 : 0;
}

void spool_flush(struct spool *s)
{
    if (s->jr)
        journal_flush(s->jr);
}

void spool_journal_stats(struct spool *s, struct journal_stats *st)
{
    if (s->jr)
        journal_get_stats(s->jr, st);
    else
        *st = (struct journal_stats){0};
}

int spool_quarantine(struct spool *s, const char *id)
{
    if (!qid_valid(id)) {
        errno = EINVAL;
        return -1;
    }
    /* never overwrite an earlier quarantined file: add a suffix when taken */
    char dst[64], st[QID_LEN + 4], dstst[80];
    snprintf(dst, sizeof(dst), "%s", id);
    snprintf(st, sizeof(st), "%s.st", id);
    struct jread jr;
    if (s->jr && journal_get(s->jr, id, &jr) == 0) { /* a record that does not decode: its bytes go to corrupt/ */
        if (faccessat(s->cfd, dst, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
            snprintf(dst, sizeof(dst), "%s.%llu", id, (unsigned long long)wall_us());
        int rc = journal_copy_out(s, id, jr.fd, jr.off, jr.len, s->cfd, dst);
        int e = errno;
        journal_put(s->jr, &jr);
        if (rc == 0 && journal_done(s->jr, id) != 0)
            e = errno;
        else if (rc == 0)
            e = 0;
        errno = e;
        return e ? -1 : 0;
    }
    int rc = rename_noreplace(s->qfd, id, s->cfd, dst);
    if (rc != 0 && errno == EEXIST) {
        snprintf(dst, sizeof(dst), "%s.%llu", id, (unsigned long long)wall_us());
        rc = rename_noreplace(s->qfd, id, s->cfd, dst);
    }
    int e = rc != 0 ? errno : 0;
    if (e && e != ENOENT)
        return -1;
    /* the status log goes along even when the message itself is gone */
    snprintf(dstst, sizeof(dstst), "%s.st", dst);
    if (rename_noreplace(s->qfd, st, s->cfd, dstst) != 0 && errno != ENOENT && !e)
        e = errno;
    if ((fsync(s->cfd) != 0 || queue_dir_sync(s) != 0) && !e)
        e = errno;
    errno = e;
    return e ? -1 : 0;
}

struct idlist {
    char (*ids)[QID_LEN + 1];
    size_t n, cap;
};

static void idlist_add(void *arg, const char *id)
{
    struct idlist *l = arg;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->ids = xrealloc(l->ids, l->cap * sizeof(*l->ids));
    }
    memcpy(l->ids[l->n++], id, QID_LEN + 1);
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

int spool_scan(struct spool *s, void (*cb)(void *arg, const char *id), void *arg)
{
    int fd = openat(s->qfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        errno = e;
        return -1;
    }
    struct idlist all = {.ids = NULL};
    struct dirent *de;
    char q[LOGQ_MAX];
    while ((de = readdir(d)) != NULL) {
        const char *name = de->d_name;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
            continue;
        size_t l = strlen(name);
        if (l == QID_LEN + 3 && strcmp(name + QID_LEN, ".st") == 0) {
            char id[QID_LEN + 1];
            memcpy(id, name, QID_LEN);
            id[QID_LEN] = '\0';
            struct stat st;
            if (qid_valid(id) && fstatat(s->qfd, id, &st, AT_SYMLINK_NOFOLLOW) != 0 && errno == ENOENT) {
                /* left by a crash between the two unlinks of spool_remove */
                if (unlinkat(s->qfd, name, 0) == 0)
                    logkv(LOG_LVL_INFO, NULL, "spool.orphan_removed", "file=%s", name);
            }
            continue;
        }
        if (!qid_valid(name)) {
            logkv(LOG_LVL_WARN, NULL, "spool.junk", "file=%s note=\"not a queue file; ignored\"",
                  log_q(q, sizeof(q), name));
            continue;
        }
        idlist_add(&all, name);
    }
    closedir(d);
    if (s->jr)
        journal_ids(s->jr, idlist_add, &all);
    if (all.n)
        qsort(all.ids, all.n, sizeof(*all.ids), cmp_id);
    for (size_t i = 0; i < all.n; i++)
        if (i == 0 || strcmp(all.ids[i], all.ids[i - 1]) != 0) /* in queue/ and the journal while moving out */
            cb(arg, all.ids[i]);
    free(all.ids);
    return 0;
}
