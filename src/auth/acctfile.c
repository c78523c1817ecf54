/* acctfile: changing the accounts file on disk under FILE.lock, one line
 * at a time, with an atomic, fsynced replace (see acctfile.h). Moved here
 * from submitctl so that the daemon suspends accounts the same way. */
#include "auth/acctfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <unistd.h>

#include "auth/accounts.h"

#define ACCTFILE_MAX (512u * 1024 * 1024)

/* Locates the line of `login` (case-insensitive): its start and length
 * including the newline. 1 found, 0 not. */
int acctfile_find(const struct acctfile *af, const char *login, size_t *off, size_t *len)
{
    size_t i = 0;
    size_t ll = strlen(login);
    while (i < af->len) {
        const char *p = af->text + i;
        const char *nl = memchr(p, '\n', af->len - i);
        size_t n = nl ? (size_t)(nl - p) + 1 : af->len - i;
        const char *colon = memchr(p, ':', n);
        size_t lw = colon ? (size_t)(colon - p) : (nl ? n - 1 : n);
        if (!colon && lw > 0 && p[lw - 1] == '\r')
            lw--;
        if (p[0] != '#' && lw == ll && strncasecmp(p, login, ll) == 0) {
            *off = i;
            *len = n;
            return 1;
        }
        i += n;
    }
    return 0;
}

void acctfile_close(struct acctfile *af)
{
    if (af->text) {
        mem_wipe(af->text, af->len);
        free(af->text);
    }
    af->text = NULL;
    if (af->lockfd >= 0)
        close(af->lockfd); /* releases the flock */
    af->lockfd = -1;
}

/* Reads the file; with `lock`, first takes the exclusive lock FILE.lock.
 * A missing file is fine when `missing_ok` (it is then empty). */
int acctfile_open(struct acctfile *af, const char *path, int lock, int missing_ok, struct strbuf *err)
{
    memset(af, 0, sizeof(*af));
    af->path = path;
    af->lockfd = -1;
    if (lock) {
        char lp[4096];
        if ((size_t)snprintf(lp, sizeof(lp), "%s.lock", path) >= sizeof(lp)) {
            sb_printf(err, "%s: path too long", path);
            return -1;
        }
        af->lockfd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (af->lockfd < 0) {
            sb_printf(err, "cannot create the lock file %s: %s", lp, strerror(errno));
            return -1;
        }
        while (flock(af->lockfd, LOCK_EX) != 0) {
            if (errno != EINTR) {
                sb_printf(err, "cannot lock %s: %s", lp, strerror(errno));
                acctfile_close(af);
                return -1;
            }
        }
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        if (errno == ENOENT && missing_ok)
            return 0;
        sb_printf(err, "%s: %s", path, strerror(errno));
        acctfile_close(af);
        return -1;
    }
    if (fstat(fd, &af->st) != 0 || !S_ISREG(af->st.st_mode)) {
        sb_printf(err, "%s: not a regular file", path);
        close(fd);
        acctfile_close(af);
        return -1;
    }
    af->exists = 1;
    struct strbuf b;
    sb_init(&b);
    char tmp[65536];
    for (;;) {
        ssize_t r = read(fd, tmp, sizeof(tmp));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0 || b.len + (size_t)r > ACCTFILE_MAX) {
            if (r != 0) {
                sb_printf(err, "%s: %s", path, r < 0 ? strerror(errno) : "file too large");
                close(fd);
                if (b.s)
                    mem_wipe(b.s, b.len);
                sb_free(&b);
                acctfile_close(af);
                return -1;
            }
            break;
        }
        sb_append(&b, tmp, (size_t)r);
    }
    mem_wipe(tmp, sizeof(tmp));
    close(fd);
    af->len = b.len;
    af->text = sb_steal(&b);
    return 0;
}

/* Prints accounts_load's errors with the temporary name replaced. */
static void print_load_errors(const struct errlist *e, const char *tmp, const char *path, struct strbuf *err)
{
    size_t tl = strlen(tmp);
    for (size_t i = 0; i < e->n; i++) {
        const char *m = e->v[i];
        if (strncmp(m, tmp, tl) == 0)
            sb_printf(err, "\n  %s%s", path, m + tl);
        else
            sb_printf(err, "\n  %s", m);
    }
}

/* Writes the new contents next to the file, checks that they load, then
 * renames over the old file and fsyncs the directory. */
static int commit(struct acctfile *af, const char *text, size_t len, struct strbuf *err)
{
    char dir[4096], tmp[4200];
    path_dir(af->path, dir, sizeof(dir));
    const char *base = strrchr(af->path, '/');
    base = base ? base + 1 : af->path;
    int fd = -1;
    for (int tries = 0; tries < 10 && fd < 0; tries++) {
        unsigned char rnd[6];
        if (random_bytes(rnd, sizeof(rnd)) != 0) {
            sb_printf(err, "no random bytes: %s", strerror(errno));
            return -1;
        }
        snprintf(tmp, sizeof(tmp), "%s/.%s.tmp.%02x%02x%02x%02x%02x%02x", dir, base, rnd[0], rnd[1], rnd[2],
                 rnd[3], rnd[4], rnd[5]);
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0 && errno != EEXIST) {
            sb_printf(err, "cannot create %s: %s", tmp, strerror(errno));
            return -1;
        }
    }
    if (fd < 0) {
        sb_printf(err, "cannot create a temporary file in %s", dir);
        return -1;
    }
    const char *step = NULL;
    if (af->exists) {
        struct stat ts;
        if (fstat(fd, &ts) != 0)
            step = "stat";
        else if ((ts.st_uid != af->st.st_uid || ts.st_gid != af->st.st_gid) &&
                 fchown(fd, af->st.st_uid, af->st.st_gid) != 0)
            step = "give it the owner and group of the old file (run as root or as the file's owner)";
        else if (fchmod(fd, af->st.st_mode & 07777) != 0)
            step = "give it the mode of the old file";
    }
    if (!step && write_all(fd, text, len) != 0)
        step = "write";
    if (!step && fsync(fd) != 0)
        step = "fsync";
    if (close(fd) != 0 && !step)
        step = "close";
    if (step) {
        sb_printf(err, "%s: cannot %s: %s; nothing changed", tmp, step, strerror(errno));
        unlink(tmp);
        return -1;
    }
    struct errlist errs;
    errlist_init(&errs);
    struct accounts *a = accounts_load(tmp, &errs);
    if (!a) {
        sb_printf(err, "%s: the result would not load, nothing changed:", af->path);
        print_load_errors(&errs, tmp, af->path, err);
        errlist_free(&errs);
        unlink(tmp);
        return -1;
    }
    accounts_unref(a);
    errlist_free(&errs);
    if (rename(tmp, af->path) != 0) {
        sb_printf(err, "cannot rename %s to %s: %s; nothing changed", tmp, af->path,
                strerror(errno));
        unlink(tmp);
        return -1;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) {
        sb_printf(err, "warning: cannot fsync %s: %s", dir, strerror(errno));
    }
    if (dfd >= 0)
        close(dfd);
    return 0;
}

/* ---- editing one line ------------------------------------------------ */

static int key_is(const char *tok, const char *key)
{
    size_t n = strlen(key);
    return strncmp(tok, key, n) == 0 && (tok[n] == '=' || tok[n] == '\0');
}

/* Rewrites the extra fields: replaces (in place) or appends/removes the
 * keys the edit touches; other tokens are kept in order. */
static char *edit_extra(const char *extra, const struct acct_edit *e)
{
    struct strbuf b;
    sb_init(&b);
    char *copy = xstrdup(extra);
    char *save = NULL;
    int done_s = 0, done_u = 0;
    for (char *t = strtok_r(copy, " \t", &save); t; t = strtok_r(NULL, " \t", &save)) {
        const char *out = t;
        char buf[64];
        if (e->senders && key_is(t, "sender")) {
            if (done_s++)
                continue;
            sb_printf(&b, "%ssender=%s", b.len ? " " : "", e->senders);
            continue;
        }
        if (e->suspend >= 0 && key_is(t, "suspended")) {
            if (done_u++ || e->suspend == 0)
                continue;
            snprintf(buf, sizeof(buf), "suspended=yes");
            out = buf;
        }
        sb_printf(&b, "%s%s", b.len ? " " : "", out);
    }
    free(copy);
    if (e->senders && !done_s)
        sb_printf(&b, "%ssender=%s", b.len ? " " : "", e->senders);
    if (e->suspend == 1 && !done_u)
        sb_printf(&b, "%ssuspended=yes", b.len ? " " : "");
    return sb_steal(&b);
}

/* Returns the edited line (with the same line ending as `line`). */
static char *edit_line(const char *line, size_t len, const struct acct_edit *e)
{
    int nl = len > 0 && line[len - 1] == '\n';
    size_t n = len - (size_t)nl;
    int cr = n > 0 && line[n - 1] == '\r';
    n -= (size_t)cr;
    char *copy = xstrndup(line, n);
    const char *part[8];
    int np = 1;
    part[0] = copy;
    char *p = copy;
    while (np < 8) {
        char *c = strchr(p, ':');
        if (!c)
            break;
        *c = '\0';
        p = c + 1;
        part[np++] = p;
    }
    if (e->hash) {
        if (np < 2)
            np = 2;
        part[1] = e->hash;
    }
    char *extra = NULL;
    if (e->senders || e->suspend >= 0) {
        extra = edit_extra(np == 8 ? part[7] : "", e);
        if (extra[0]) {
            while (np < 7)
                part[np++] = "";
            part[7] = extra;
            np = 8;
        } else {
            if (np == 8)
                np = 7;
            while (np > 2 && part[np - 1][0] == '\0')
                np--;
        }
    }
    struct strbuf b;
    sb_init(&b);
    for (int i = 0; i < np; i++)
        sb_printf(&b, "%s%s", i ? ":" : "", part[i]);
    if (cr)
        sb_puts(&b, "\r");
    if (nl)
        sb_puts(&b, "\n");
    mem_wipe(copy, n);
    free(copy);
    free(extra);
    return sb_steal(&b);
}

/* Adds (add) or edits/deletes one line under the lock. */
static int change(const char *path, const char *login, int add, const char *newline_text, const struct acct_edit *e,
                  int *created, struct strbuf *err)
{
    struct acctfile af;
    if (acctfile_open(&af, path, 1, add, err) != 0)
        return -1;
    size_t off = 0, len = 0;
    int found = acctfile_find(&af, login, &off, &len);
    if (add && found) {
        sb_printf(err, "%s: %s already exists (logins are case-insensitive); use `user passwd` or `user senders` to "
                       "change it",
                  path, login);
        acctfile_close(&af);
        return -1;
    }
    if (!add && !found) {
        sb_printf(err, "%s: no such login: %s (see `submitctl user list`)", path, login);
        acctfile_close(&af);
        return -1;
    }
    struct strbuf b;
    sb_init(&b);
    if (add) {
        sb_append(&b, af.text ? af.text : "", af.len);
        if (af.len > 0 && af.text[af.len - 1] != '\n')
            sb_puts(&b, "\n");
        sb_puts(&b, newline_text);
    } else {
        sb_append(&b, af.text, off);
        if (e) {
            char *l = edit_line(af.text + off, len, e);
            sb_puts(&b, l);
            mem_wipe(l, strlen(l));
            free(l);
        }
        sb_append(&b, af.text + off + len, af.len - off - len);
    }
    if (created)
        *created = !af.exists;
    int rc = commit(&af, b.s ? b.s : "", b.len, err);
    if (b.s)
        mem_wipe(b.s, b.len);
    sb_free(&b);
    acctfile_close(&af);
    return rc;
}

int acctfile_edit(const char *path, const char *login, const struct acct_edit *e, struct strbuf *err)
{
    return change(path, login, 0, NULL, e, NULL, err);
}

int acctfile_add(const char *path, const char *login, const char *line, int *created, struct strbuf *err)
{
    return change(path, login, 1, line, NULL, created, err);
}
