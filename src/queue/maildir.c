/* maildir: the Maildir transport. Writes one file per recipient into
 * PATH/new/ (PATH may contain %u, %d, %a), through tmp/ with O_EXCL, fsync
 * and rename, so that a reader never sees a partial message. Content:
 * Return-Path:, Delivered-To:, then the message as transport_stream()
 * gives it with LF line endings. Every failure is temporary (451 4.3.0):
 * an operator can fix a path or a full disk and the queue retries. */
#include "queue/transport.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

struct maildir {
    char *name;     /* transport name, for messages */
    char *path;     /* template */
    char host[256]; /* sanitized hostname for unique names */
};

static int check_path(const char *path, const char **why)
{
    if (!path || !*path) {
        *why = "needs a path";
        return -1;
    }
    if (path[0] != '/') {
        *why = "path must be absolute";
        return -1;
    }
    for (const char *p = path; *p; p++) {
        if (*p != '%')
            continue;
        p++;
        if (*p != 'u' && *p != 'd' && *p != 'a' && *p != '%') {
            *why = "path: unknown %-escape (use %u, %d, %a or %%)";
            return -1;
        }
    }
    return 0;
}

static int md_check(const struct transport_cfg *cfg, const char *file, struct errlist *errs)
{
    int bad = 0;
    const char *why;
    if (check_path(cfg->path, &why) != 0) {
        errlist_add(errs, file, cfg->line, "transport %s: maildir %s", cfg->name ? cfg->name : "?", why);
        bad = 1;
    }
    for (size_t i = 0; i < cfg->nopts; i++) {
        errlist_add(errs, file, cfg->opts[i].line, "transport %s: unknown option '%s' for type maildir",
                    cfg->name ? cfg->name : "?", cfg->opts[i].key);
        bad = 1;
    }
    return bad ? -1 : 0;
}

static void *md_open(const struct transport_cfg *cfg, struct errlist *errs)
{
    const char *why;
    if (check_path(cfg->path, &why) != 0) {
        errlist_add(errs, NULL, 0, "transport %s (line %d): maildir %s", cfg->name ? cfg->name : "?", cfg->line,
                    why);
        return NULL;
    }
    struct maildir *md = xcalloc(1, sizeof(*md));
    md->name = xstrdup(cfg->name ? cfg->name : "maildir");
    md->path = xstrdup(cfg->path);
    if (gethostname(md->host, sizeof(md->host) - 1) != 0 || !md->host[0])
        str_copy(md->host, "localhost", sizeof(md->host));
    md->host[sizeof(md->host) - 1] = '\0';
    /* '/' and ':' have meanings in Maildir file names */
    for (char *p = md->host; *p; p++)
        if (*p == '/' || *p == ':' || (unsigned char)*p <= ' ' || *p == 0x7f)
            *p = '_';
    return md;
}

static void md_close(void *inst)
{
    struct maildir *md = inst;
    if (!md)
        return;
    free(md->name);
    free(md->path);
    free(md);
}

/* Appends an expansion: no '/', no leading '.', no control bytes; an empty
 * value becomes "_". */
static void put_safe(struct strbuf *b, const char *s, size_t n, int lower)
{
    if (n == 0) {
        sb_append(b, "_", 1);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '/' || (i == 0 && c == '.') || (unsigned char)c < 0x20 || c == 0x7f)
            c = '_';
        else if (lower && c >= 'A' && c <= 'Z')
            c = (char)(c + 32);
        sb_append(b, &c, 1);
    }
}

static void expand(const char *tmpl, const char *addr, struct strbuf *out)
{
    const char *at = strrchr(addr, '@');
    size_t llen = at ? (size_t)(at - addr) : strlen(addr);
    const char *dom = at ? at + 1 : "";
    for (const char *p = tmpl; *p; p++) {
        if (*p != '%' || !p[1]) {
            sb_append(out, p, 1);
            continue;
        }
        p++;
        switch (*p) {
        case 'u': put_safe(out, addr, llen, 0); break;
        case 'd': put_safe(out, dom, strlen(dom), 1); break;
        case 'a': put_safe(out, addr, strlen(addr), 0); break;
        case '%': sb_append(out, "%", 1); break;
        default: sb_append(out, p - 1, 2); break; /* refused by check() */
        }
    }
}

static int mkdir_p(char *path)
{
    for (char *p = path + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            int r = mkdir(path, 0700);
            int e = errno;
            *p = c;
            if (r != 0 && e != EEXIST) {
                errno = e;
                return -1;
            }
            if (!c)
                break;
        }
    }
    return 0;
}

/* mkdir -p DIR, DIR/tmp, DIR/new, DIR/cur. */
static int make_maildir(const char *dir)
{
    static const char *const subs[] = {"", "/tmp", "/new", "/cur"};
    char p[PATH_MAX];
    for (size_t i = 0; i < ARRAY_LEN(subs); i++) {
        if ((size_t)snprintf(p, sizeof(p), "%s%s", dir, subs[i]) >= sizeof(p)) {
            errno = ENAMETOOLONG;
            return -1;
        }
        /* usually one EEXIST each; the whole chain only the first time */
        if (mkdir(p, 0700) != 0 && errno != EEXIST && (errno != ENOENT || mkdir_p(p) != 0))
            return -1;
    }
    /* EEXIST above may hide a regular file; catch it now */
    struct stat st;
    if (stat(p, &st) != 0)
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

static int fd_out(void *arg, const void *buf, size_t n)
{
    return write_all(*(int *)arg, buf, n);
}

/* Strips CR/LF from an address before it goes into a header line. */
static void header_addr(struct strbuf *b, const char *name, const char *addr)
{
    sb_printf(b, "%s: <", name);
    for (const char *p = addr ? addr : ""; *p; p++)
        if (*p != '\r' && *p != '\n')
            sb_append(b, p, 1);
    sb_puts(b, ">\n");
}

/* Delivers to one recipient. 0, or -1 with errno. */
static int deliver_one(struct maildir *md, struct spool_msg *m, size_t r, const char *dir)
{
    if (make_maildir(dir) != 0)
        return -1;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    char name[512], tmp[PATH_MAX], dst[PATH_MAX], newdir[PATH_MAX];
    snprintf(name, sizeof(name), "%lld.M%06ldP%ldQ%sR%zu.%s", (long long)tv.tv_sec, (long)tv.tv_usec,
             (long)getpid(), m->env.id, r, md->host);
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s/tmp/%s", dir, name) >= sizeof(tmp) ||
        (size_t)snprintf(dst, sizeof(dst), "%s/new/%s", dir, name) >= sizeof(dst) ||
        (size_t)snprintf(newdir, sizeof(newdir), "%s/new", dir) >= sizeof(newdir)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = open(tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -1;
    struct strbuf h;
    sb_init(&h);
    header_addr(&h, "Return-Path", m->env.mail_from);
    header_addr(&h, "Delivered-To", m->env.rcpts[r].addr);
    int rc = write_all(fd, h.s, h.len);
    sb_free(&h);
    if (rc == 0) {
        errno = 0;
        rc = transport_stream(m, 1, fd_out, &fd);
        if (rc != 0 && errno == 0)
            errno = EIO;
    }
    if (rc == 0 && fsync(fd) != 0)
        rc = -1;
    int e = errno;
    if (close(fd) != 0 && rc == 0) {
        rc = -1;
        e = errno;
    }
    if (rc == 0 && rename(tmp, dst) != 0) {
        rc = -1;
        e = errno;
    }
    if (rc != 0) {
        unlink(tmp);
        errno = e;
        return -1;
    }
    int dfd = open(newdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) {
        e = errno;
        if (dfd >= 0)
            close(dfd);
        /* the file is in new/ but not durably: report a temporary failure
         * (a later retry may deliver a second copy; never lose one) */
        errno = e;
        return -1;
    }
    close(dfd);
    return 0;
}

static void md_deliver(void *inst, struct delivery_job *job)
{
    struct maildir *md = inst;
    struct spool_msg *m = job->msg;
    struct strbuf dir;
    sb_init(&dir);
    for (size_t i = 0; i < job->nrcpts; i++) {
        size_t r = job->rcpts[i];
        struct delivery_result *res = &job->results[i];
        sb_reset(&dir);
        expand(md->path, m->env.rcpts[r].addr, &dir);
        if (deliver_one(md, m, r, dir.s) == 0) {
            res->status = DR_OK;
            str_copy(res->text, "250 2.0.0 delivered to maildir", sizeof(res->text));
        } else {
            res->status = DR_TEMP;
            snprintf(res->text, sizeof(res->text), "451 4.3.0 maildir %s: %s", dir.s, strerror(errno));
        }
    }
    sb_free(&dir);
    job->done(job);
}

const struct transport_ops maildir_transport = {
    .type = "maildir",
    .check = md_check,
    .open = md_open,
    .deliver = md_deliver,
    .close = md_close,
};
