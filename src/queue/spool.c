/* spool: the durable on-disk queue (see spool.h and docs/spool-format.md,
 * format v1). Owns the envelope codec, the directory layout (tmp/, queue/,
 * corrupt/), message writers and their commit (fsync + rename + directory
 * fsync), the checksummed footer that detects torn or foreign files, the
 * append-only per-recipient status log (queue/ID.st), the recycling of
 * removed queue files into new messages and the recovery scan. */
#include "queue/spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "core/log.h"

#define ENV_VERSION_LINE "submitd-envelope 1"
#define FOOTER_MAGIC "SUBMITD-SPOOL v"
#define FOOTER_VERSION 1
/* "SUBMITD-SPOOL v1 " + 16 hex offset + ' ' + 16 hex length + ' ' + 64 hex sha256 + '\n' */
#define FOOTER_LEN 116
#define TRAILER_MAX ((uint64_t)64 << 20)
#define WBUF_SIZE (64 * 1024)
#define ST_LINE_MAX 8192
#define ENV_RCPTS_MAX 1000000u
/* Removed queue files kept (in tmp/, open for writing) for new messages:
 * at most this many, and only files up to this size. */
#define RECYCLE_MAX 64
#define RECYCLE_SIZE_MAX (256 * 1024)
#define TMPNAME_LEN 48

/* Group commit of queue/'s directory entries: every thread that renamed
 * a file into queue/ or unlinked one there needs an fsync of queue/ that
 * started after its change. One fsync covers every change made before it
 * started, so concurrent committers share it instead of each paying one. */
struct dirsync {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t changes;   /* changes registered so far (a counter) */
    uint64_t synced;    /* changes 1..synced are durable */
    uint64_t failed;    /* an fsync covering changes up to this one failed */
    int failed_errno;
    int running;        /* an fsync is in progress */
};

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

struct spool {
    char *dir;
    int dfd;      /* the spool directory */
    int tmpfd;    /* tmp/ */
    int qfd;      /* queue/ */
    int cfd;      /* corrupt/ */
    struct dirsync ds;
    struct recycle rc;
};

static void recycled_drop(struct spool *s, int fd, const char *name);

struct spool_writer {
    struct spool *s;
    char id[QID_LEN + 1];
    char tmpname[TMPNAME_LEN]; /* tmp/ID, or a recycled tmp/free.PID.N */
    int recycled;              /* the file may be longer than what we write */
    int fd;
    int err;
    uint64_t size;
    size_t blen;
    unsigned char *buf;
};

/* The public part first so that a struct spool_msg * is a struct msg_priv *. */
struct msg_priv {
    struct spool_msg pub;
    char id[QID_LEN + 1];
    int stfd; /* queue/ID.st, -1 until opened */
    int ro;   /* spool_msg_peek: never written */
};

/* ---- envelope ------------------------------------------------------------ */

void envelope_init(struct envelope *e)
{
    memset(e, 0, sizeof(*e));
}

void envelope_free(struct envelope *e)
{
    free(e->mail_from);
    free(e->auth_user);
    free(e->client_ip);
    free(e->helo);
    free(e->listener);
    free(e->envid);
    free(e->prepend);
    for (size_t i = 0; i < e->nrcpts; i++) {
        free(e->rcpts[i].addr);
        free(e->rcpts[i].orcpt);
    }
    free(e->rcpts);
    envelope_init(e);
}

void envelope_add_rcpt(struct envelope *e, const char *addr, unsigned notify, const char *orcpt)
{
    size_t n = e->nrcpts;
    /* capacity is max(4, next power of two >= n): grow when n is a power of two */
    if (n == 0 || (n & (n - 1)) == 0)
        e->rcpts = xrealloc(e->rcpts, (n < 2 ? 4 : 2 * n) * sizeof(*e->rcpts));
    e->rcpts[n].addr = xstrdup(addr);
    e->rcpts[n].notify = notify;
    e->rcpts[n].orcpt = orcpt ? xstrdup(orcpt) : NULL;
    e->nrcpts = n + 1;
}

/* ---- value escaping -------------------------------------------------------
 * A string value is "..." with printable ASCII except '"' and '\' as is,
 * and every other byte as \xHH; NULL is written as a lone '-'. */

static void put_str(struct strbuf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    if (!s) {
        sb_append(b, "-", 1);
        return;
    }
    sb_append(b, "\"", 1);
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        const unsigned char *run = p;
        while (*p >= 0x20 && *p < 0x7f && *p != '"' && *p != '\\')
            p++;
        if (p > run)
            sb_append(b, run, (size_t)(p - run));
        if (!*p)
            break;
        char esc[4] = {'\\', 'x', hex[*p >> 4], hex[*p & 15]};
        sb_append(b, esc, 4);
        p++;
    }
    sb_append(b, "\"", 1);
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A cursor over one line [p, end). */
struct cur {
    const char *p;
    const char *end;
};

/* Parses a string token at c->p. *out is NULL for '-'. 0 or -1 (reason in why). */
static int get_str(struct cur *c, char **out, const char **why)
{
    *out = NULL;
    if (c->p < c->end && *c->p == '-') {
        c->p++;
        return 0;
    }
    if (c->p >= c->end || *c->p != '"') {
        *why = "expected a quoted value or '-'";
        return -1;
    }
    c->p++;
    struct strbuf b;
    sb_init(&b);
    sb_append(&b, "", 0);
    for (;;) {
        if (c->p >= c->end) {
            *why = "unterminated quoted value";
            sb_free(&b);
            return -1;
        }
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '"') {
            c->p++;
            break;
        }
        if (ch == '\\') {
            int h1 = c->end - c->p >= 4 && c->p[1] == 'x' ? hexval((unsigned char)c->p[2]) : -1;
            int h2 = h1 >= 0 ? hexval((unsigned char)c->p[3]) : -1;
            if (h2 < 0) {
                *why = "bad escape";
                sb_free(&b);
                return -1;
            }
            char v = (char)(h1 * 16 + h2);
            if (v == '\0') {
                *why = "NUL byte in value";
                sb_free(&b);
                return -1;
            }
            sb_append(&b, &v, 1);
            c->p += 4;
            continue;
        }
        if (ch < 0x20 || ch >= 0x7f) {
            *why = "raw control or non-ASCII byte in value";
            sb_free(&b);
            return -1;
        }
        sb_append(&b, c->p, 1);
        c->p++;
    }
    *out = sb_steal(&b);
    return 0;
}

/* Unsigned decimal without sign or superfluous leading zeros, <= max. */
static int get_u64(struct cur *c, uint64_t max, uint64_t *out, const char **why)
{
    const char *s = c->p;
    uint64_t v = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        unsigned d = (unsigned)(*c->p - '0');
        if (v > (UINT64_MAX - d) / 10) {
            *why = "number out of range";
            return -1;
        }
        v = v * 10 + d;
        c->p++;
    }
    size_t len = (size_t)(c->p - s);
    if (len == 0 || (len > 1 && *s == '0')) {
        *why = "bad number";
        return -1;
    }
    if (v > max) {
        *why = "number out of range";
        return -1;
    }
    *out = v;
    return 0;
}

static int get_i64(struct cur *c, int64_t *out, const char **why)
{
    int neg = 0;
    if (c->p < c->end && *c->p == '-') {
        neg = 1;
        c->p++;
    }
    uint64_t v;
    if (get_u64(c, neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX, &v, why) != 0)
        return -1;
    if (neg && v == 0) {
        *why = "bad number";
        return -1;
    }
    *out = neg ? (v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v) : (int64_t)v;
    return 0;
}

static int get_sp(struct cur *c, const char **why)
{
    if (c->p < c->end && *c->p == ' ') {
        c->p++;
        return 0;
    }
    *why = "expected a space";
    return -1;
}

static int get_eol(struct cur *c, const char **why)
{
    if (c->p == c->end)
        return 0;
    *why = "trailing characters";
    return -1;
}

/* ---- envelope codec ------------------------------------------------------ */

void spool_env_encode(const struct envelope *e, struct strbuf *out)
{
    sb_puts(out, ENV_VERSION_LINE "\n");
    sb_printf(out, "id %s\n", e->id);
    sb_puts(out, "mail-from ");
    put_str(out, e->mail_from);
    sb_puts(out, "\nauth-user ");
    put_str(out, e->auth_user);
    sb_puts(out, "\nclient-ip ");
    put_str(out, e->client_ip);
    sb_puts(out, "\nhelo ");
    put_str(out, e->helo);
    sb_puts(out, "\nlistener ");
    put_str(out, e->listener);
    sb_printf(out, "\nbody %d\nsmtputf8 %d\ndsn-ret %d\nenvid ", e->body, e->smtputf8, e->dsn_ret);
    put_str(out, e->envid);
    sb_printf(out, "\nreceived %lld\nsize %llu\nprepend ", (long long)e->received, (unsigned long long)e->size);
    put_str(out, e->prepend);
    sb_printf(out, "\nrcpts %zu\n", e->nrcpts);
    for (size_t i = 0; i < e->nrcpts; i++) {
        sb_puts(out, "rcpt ");
        put_str(out, e->rcpts[i].addr);
        sb_printf(out, " %u ", e->rcpts[i].notify);
        put_str(out, e->rcpts[i].orcpt);
        sb_puts(out, "\n");
    }
    sb_puts(out, "end\n");
}

enum env_key {
    K_ID, K_FROM, K_AUTH, K_IP, K_HELO, K_LISTENER, K_BODY, K_UTF8, K_RET, K_ENVID, K_RECEIVED, K_SIZE,
    K_PREPEND, K_RCPTS, K__COUNT
};

static const char *const env_keys[K__COUNT] = {
    "id", "mail-from", "auth-user", "client-ip", "helo", "listener", "body", "smtputf8", "dsn-ret",
    "envid", "received", "size", "prepend", "rcpts",
};

static int decode_field(enum env_key k, struct cur *c, struct envelope *e, uint64_t *nrcpts, const char **why)
{
    uint64_t u;
    char **sp = NULL;
    switch (k) {
    case K_ID: {
        size_t l = (size_t)(c->end - c->p);
        if (l != QID_LEN) {
            *why = "bad id";
            return -1;
        }
        memcpy(e->id, c->p, QID_LEN);
        e->id[QID_LEN] = '\0';
        c->p = c->end;
        if (!qid_valid(e->id)) {
            *why = "bad id";
            return -1;
        }
        return 0;
    }
    case K_FROM: sp = &e->mail_from; break;
    case K_AUTH: sp = &e->auth_user; break;
    case K_IP: sp = &e->client_ip; break;
    case K_HELO: sp = &e->helo; break;
    case K_LISTENER: sp = &e->listener; break;
    case K_ENVID: sp = &e->envid; break;
    case K_PREPEND: sp = &e->prepend; break;
    case K_BODY:
        if (get_u64(c, 3, &u, why) != 0)
            return -1;
        e->body = (int)u;
        return 0;
    case K_UTF8:
        if (get_u64(c, 1, &u, why) != 0)
            return -1;
        e->smtputf8 = (int)u;
        return 0;
    case K_RET:
        if (get_u64(c, 2, &u, why) != 0)
            return -1;
        e->dsn_ret = (int)u;
        return 0;
    case K_RECEIVED:
        return get_i64(c, &e->received, why);
    case K_SIZE:
        return get_u64(c, UINT64_MAX, &e->size, why);
    case K_RCPTS:
        return get_u64(c, ENV_RCPTS_MAX, nrcpts, why);
    case K__COUNT:
        break;
    }
    if (!sp) {
        *why = "internal";
        return -1;
    }
    return get_str(c, sp, why);
}

static int decode_rcpt(struct cur *c, struct envelope *e, const char **why)
{
    char *addr = NULL, *orcpt = NULL;
    uint64_t notify;
    int rc = -1;
    if (get_str(c, &addr, why) != 0)
        goto out;
    if (!addr || !*addr) {
        *why = "empty recipient";
        goto out;
    }
    if (get_sp(c, why) != 0 || get_u64(c, 15, &notify, why) != 0 || get_sp(c, why) != 0 ||
        get_str(c, &orcpt, why) != 0)
        goto out;
    envelope_add_rcpt(e, addr, (unsigned)notify, orcpt);
    rc = 0;
out:
    free(addr);
    free(orcpt);
    return rc;
}

static int env_decode(const char *buf, size_t len, struct envelope *e, size_t *lineno, const char **why,
                      const char **missing)
{
    const char *p = buf, *end = buf + len;
    int seen[K__COUNT] = {0};
    uint64_t nrcpts = 0;
    int ended = 0;
    *lineno = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        (*lineno)++;
        if (!nl) {
            *why = "truncated (last line has no newline)";
            return -1;
        }
        if (ended) {
            *why = "data after end";
            return -1;
        }
        struct cur c = {p, nl};
        p = nl + 1;
        if (memchr(c.p, '\0', (size_t)(c.end - c.p))) {
            *why = "NUL byte";
            return -1;
        }
        size_t l = (size_t)(c.end - c.p);
        if (*lineno == 1) {
            if (l != strlen(ENV_VERSION_LINE) || memcmp(c.p, ENV_VERSION_LINE, l) != 0) {
                *why = l > 17 && memcmp(c.p, "submitd-envelope ", 17) == 0 ? "unsupported envelope version"
                                                                         : "not a submitd envelope";
                return -1;
            }
            continue;
        }
        if (l == 3 && memcmp(c.p, "end", 3) == 0) {
            ended = 1;
            continue;
        }
        const char *sp = memchr(c.p, ' ', l);
        if (!sp) {
            *why = "expected `key value`";
            return -1;
        }
        size_t kl = (size_t)(sp - c.p);
        const char *key = c.p;
        c.p = sp + 1;
        if (kl == 4 && memcmp(key, "rcpt", 4) == 0) {
            if (!seen[K_RCPTS]) {
                *why = "rcpt before rcpts";
                return -1;
            }
            if (e->nrcpts >= nrcpts) {
                *why = "more rcpt lines than rcpts";
                return -1;
            }
            if (decode_rcpt(&c, e, why) != 0 || get_eol(&c, why) != 0)
                return -1;
            continue;
        }
        enum env_key k = K__COUNT;
        for (int i = 0; i < K__COUNT; i++)
            if (strlen(env_keys[i]) == kl && memcmp(env_keys[i], key, kl) == 0)
                k = (enum env_key)i;
        if (k == K__COUNT) {
            *why = "unknown key";
            return -1;
        }
        if (seen[k]) {
            *why = "duplicate key";
            return -1;
        }
        seen[k] = 1;
        if (decode_field(k, &c, e, &nrcpts, why) != 0 || get_eol(&c, why) != 0)
            return -1;
    }
    if (*lineno == 0) {
        *why = "empty";
        return -1;
    }
    for (int i = 0; i < K__COUNT; i++) {
        if (!seen[i]) {
            *missing = env_keys[i];
            return -1;
        }
    }
    if (e->nrcpts != nrcpts) {
        *why = "fewer rcpt lines than rcpts";
        return -1;
    }
    if (!ended) {
        *why = "truncated (no end line)";
        return -1;
    }
    return 0;
}

int spool_env_decode(const char *buf, size_t len, struct envelope *e, char *err, size_t errlen)
{
    envelope_init(e);
    size_t lineno = 0;
    const char *why = "invalid", *missing = NULL;
    if (env_decode(buf, len, e, &lineno, &why, &missing) == 0)
        return 0;
    if (err && errlen) {
        if (missing)
            snprintf(err, errlen, "envelope: missing field %s", missing);
        else
            snprintf(err, errlen, "envelope line %zu: %s", lineno, why);
    }
    envelope_free(e);
    return -1;
}

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
    if (!dir || !*dir) {
        errlist_add(errs, "spool", 0, "no spool directory");
        return NULL;
    }
    if (mkdir_p(dir, 0700) != 0) {
        errlist_add(errs, dir, 0, "cannot create the spool directory: %s", strerror(errno));
        return NULL;
    }
    struct spool *s = xcalloc(1, sizeof(*s));
    pthread_mutex_init(&s->ds.mu, NULL);
    pthread_cond_init(&s->ds.cv, NULL);
    pthread_mutex_init(&s->rc.mu, NULL);
    s->dir = xstrdup(dir);
    s->tmpfd = s->qfd = s->cfd = -1;
    s->dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dfd < 0) {
        errlist_add(errs, dir, 0, "cannot open the spool directory: %s", strerror(errno));
        spool_close(s);
        return NULL;
    }
    s->tmpfd = open_sub(s, "tmp", errs);
    s->qfd = s->tmpfd >= 0 ? open_sub(s, "queue", errs) : -1;
    s->cfd = s->qfd >= 0 ? open_sub(s, "corrupt", errs) : -1;
    if (s->cfd < 0) {
        spool_close(s);
        return NULL;
    }
    clean_tmp(s);
    return s;
}

void spool_close(struct spool *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->rc.n; i++) /* only spool_open's tmp/ gives files to the pool */
        recycled_drop(s, s->rc.fds[i], s->rc.names[i]);
    int fds[] = {s->dfd, s->tmpfd, s->qfd, s->cfd};
    for (size_t i = 0; i < ARRAY_LEN(fds); i++)
        if (fds[i] >= 0)
            close(fds[i]);
    pthread_mutex_destroy(&s->rc.mu);
    pthread_mutex_destroy(&s->ds.mu);
    pthread_cond_destroy(&s->ds.cv);
    free(s->dir);
    free(s);
}

/* Makes every change to queue/ made by this thread so far durable: waits
 * for an fsync of queue/ that started after the call, running it if no
 * other thread is. 0, or -1 with errno if the fsync that covers this
 * thread's change failed. */
static int queue_dir_sync(struct spool *s)
{
    struct dirsync *d = &s->ds;
    pthread_mutex_lock(&d->mu);
    uint64_t mine = ++d->changes;
    int rc = 0;
    for (;;) {
        if (d->synced >= mine)
            break;
        if (d->failed >= mine) {
            errno = d->failed_errno;
            rc = -1;
            break;
        }
        if (d->running) {
            pthread_cond_wait(&d->cv, &d->mu);
            continue;
        }
        d->running = 1;
        uint64_t covers = d->changes;
        pthread_mutex_unlock(&d->mu);
        int r = fsync(s->qfd);
        int e = errno;
        pthread_mutex_lock(&d->mu);
        d->running = 0;
        if (r == 0) {
            if (covers > d->synced)
                d->synced = covers;
        } else {
            if (covers > d->failed)
                d->failed = covers;
            d->failed_errno = e ? e : EIO;
        }
        pthread_cond_broadcast(&d->cv);
    }
    pthread_mutex_unlock(&d->mu);
    return rc;
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

struct spool_writer *spool_writer_new(struct spool *s, const char *id)
{
    if (!qid_valid(id)) {
        errno = EINVAL;
        return NULL;
    }
    struct spool_writer *w = xcalloc(1, sizeof(*w));
    w->fd = recycled_take(s, w->tmpname);
    w->recycled = w->fd >= 0;
    if (w->fd < 0) {
        memcpy(w->tmpname, id, QID_LEN + 1);
        w->fd = openat(s->tmpfd, id, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (w->fd < 0) {
            free(w);
            return NULL;
        }
    }
    w->s = s;
    memcpy(w->id, id, QID_LEN + 1);
    w->buf = xmalloc(WBUF_SIZE);
    return w;
}

static void writer_flush(struct spool_writer *w)
{
    if (w->err || w->blen == 0)
        return;
    if (write_all(w->fd, w->buf, w->blen) != 0)
        w->err = errno ? errno : EIO;
    w->blen = 0;
}

static void writer_put(struct spool_writer *w, const void *buf, size_t n)
{
    if (w->err)
        return;
    if (w->blen + n > WBUF_SIZE) {
        writer_flush(w);
        if (w->err)
            return;
    }
    if (n >= WBUF_SIZE) {
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
    free(w->buf);
    free(w);
}

void spool_writer_abort(struct spool_writer *w)
{
    if (!w)
        return;
    close(w->fd);
    w->fd = -1;
    unlinkat(w->s->tmpfd, w->tmpname, 0);
    writer_free(w);
}

static void sha256_hex(const void *data, size_t n, char out[65])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(data, n, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
        memset(md, 0, 32); /* cannot happen with a working libcrypto; verify then fails */
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
}

int spool_commit(struct spool_writer *w, const struct envelope *e)
{
    struct spool *s = w->s;
    struct envelope copy = *e; /* shallow: the file name and byte count are authoritative */
    memcpy(copy.id, w->id, QID_LEN + 1);
    copy.size = w->size;
    struct strbuf t;
    sb_init(&t);
    spool_env_encode(&copy, &t);
    char sum[65], footer[FOOTER_LEN + 1];
    sha256_hex(t.s, t.len, sum);
    snprintf(footer, sizeof(footer), FOOTER_MAGIC "%d %016llx %016llx %s\n", FOOTER_VERSION,
             (unsigned long long)w->size, (unsigned long long)t.len, sum);
    writer_put(w, t.s, t.len);
    writer_put(w, footer, FOOTER_LEN);
    off_t total = (off_t)(w->size + t.len + FOOTER_LEN);
    sb_free(&t);
    writer_flush(w);
    int err = w->err;
    /* a recycled file keeps what it held beyond our bytes until cut here */
    if (!err && w->recycled && ftruncate(w->fd, total) != 0)
        err = errno;
    if (!err && fsync(w->fd) != 0)
        err = errno;
    if (close(w->fd) != 0 && !err)
        err = errno;
    w->fd = -1;
    if (!err && rename_noreplace(s->tmpfd, w->tmpname, s->qfd, w->id) != 0)
        err = errno;
    if (err) {
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
static int st_apply_kind(struct spool_msg *m, enum st_kind kind, struct cur *c)
{
    const char *why = NULL;
    uint64_t idx = 0, attempts = 0;
    int64_t when, next = 0;
    char *text = NULL;
    unsigned what = 0;
    int per_rcpt = kind != ST_HOLD && kind != ST_RELEASE;
    if (per_rcpt && (get_u64(c, UINT64_MAX, &idx, &why) != 0 || get_sp(c, &why) != 0))
        return -1;
    if (get_i64(c, &when, &why) != 0)
        return -1;
    if (kind == ST_RETRY && (get_sp(c, &why) != 0 || get_i64(c, &next, &why) != 0 || get_sp(c, &why) != 0 ||
                             get_u64(c, UINT_MAX, &attempts, &why) != 0))
        return -1;
    if (kind == ST_REPORTED) {
        if (get_sp(c, &why) != 0)
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
        (get_sp(c, &why) != 0 || get_str(c, &text, &why) != 0))
        return -1;
    if (get_eol(c, &why) != 0 || (per_rcpt && idx >= m->env.nrcpts) ||
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
        int h = hexval((unsigned char)line[i]);
        if (h < 0 || (line[i] >= 'A' && line[i] <= 'F'))
            return 0;
        want = want << 4 | (uint32_t)h;
    }
    if (crc32_buf(line, len - 9) != want)
        return 0;
    struct cur c = {line, line + len - 9};
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
    put_str(b, text);
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
        put_str(&rec, dsn_id);
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

static int pread_full(int fd, void *buf, size_t n, off_t off)
{
    char *p = buf;
    while (n) {
        ssize_t r = pread(fd, p, n, off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0) {
            errno = EBADMSG;
            return -1;
        }
        p += r;
        n -= (size_t)r;
        off += r;
    }
    return 0;
}

static int parse_hex16(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        int h = hexval((unsigned char)s[i]);
        if (h < 0 || (s[i] >= 'A' && s[i] <= 'F'))
            return -1;
        v = v << 4 | (uint64_t)h;
    }
    *out = v;
    return 0;
}

/* Checks the footer and reads + verifies + decodes the trailer. */
static int read_trailer(int fd, struct envelope *env, char *err, size_t errlen)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return fail(err, errlen, errno, "stat: %s", strerror(errno));
    if (!S_ISREG(st.st_mode) || st.st_size < FOOTER_LEN)
        return fail(err, errlen, EBADMSG, "not a spool file (too short)");
    char f[FOOTER_LEN + 1];
    if (pread_full(fd, f, FOOTER_LEN, st.st_size - FOOTER_LEN) != 0)
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
    if (tlen > TRAILER_MAX || off > (uint64_t)st.st_size || tlen > (uint64_t)st.st_size - off ||
        off + tlen + FOOTER_LEN != (uint64_t)st.st_size)
        return fail(err, errlen, EBADMSG, "spool footer does not match the file size");
    char *t = xmalloc(tlen + 1);
    if (pread_full(fd, t, tlen, (off_t)off) != 0) {
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
    m->fd = openat(s->qfd, id, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (m->fd < 0) {
        int e = errno;
        snprintf(err, errlen, "open: %s", strerror(e));
        free(p);
        errno = e;
        return -1;
    }
    if (read_trailer(m->fd, &m->env, err, errlen) != 0) {
        int e = errno;
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
    p->stfd = openat(s->qfd, name, (ro ? O_RDONLY : O_RDWR | O_APPEND) | O_CLOEXEC | O_NOFOLLOW);
    if (p->stfd < 0 && errno != ENOENT) {
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
    if (m->fd >= 0)
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
    for (;;) {
        ssize_t r = pread(m->fd, buf, n, (off_t)off);
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
    char (*ids)[QID_LEN + 1] = NULL;
    size_t n = 0, cap = 0;
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
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            ids = xrealloc(ids, cap * sizeof(*ids));
        }
        memcpy(ids[n++], name, QID_LEN + 1);
    }
    closedir(d);
    if (n)
        qsort(ids, n, sizeof(*ids), cmp_id);
    for (size_t i = 0; i < n; i++)
        cb(arg, ids[i]);
    free(ids);
    return 0;
}
