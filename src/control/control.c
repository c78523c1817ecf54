/* control: the local administration socket (see control.h). Owns the Unix
 * socket (stale-socket handling, mode 0660, ownership), its thread, which
 * serves one connection at a time (peer checked with SO_PEERCRED, request
 * line bounded, reads and writes under a deadline), the registry of verbs
 * that modules add, the answer framing (status line, dot-stuffed text,
 * "." line) and the client side used by submitctl. Paths longer than
 * sun_path are reached through their directory as /proc/self/fd/N/NAME. */
#include "control/control.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"

#define REQUEST_MAX 1000          /* octets of the request line, without its LF */
#define MAX_WORDS 32
#define MAX_VERBS 16
#define VERB_MAX 32
#define IO_TIMEOUT_MS 5000        /* server side: a client must be quick */
#define ANSWER_MAX (64u << 20)    /* client side */
#define DRAIN_MAX (64u * 1024)     /* input read from a client whose request is too long */

struct verb {
    char name[VERB_MAX];
    control_fn fn;
    void *arg;
};

struct control {
    char *path;
    int fd;
    int wake[2]; /* written to stop the thread */
    uid_t owner;
    struct verb verbs[MAX_VERBS];
    size_t nverbs;
    pthread_t thread;
    int started;
};

/* ---- addresses ---------------------------------------------------------------- */

/* Fills sa for path. A path too long for sun_path is reached through its
 * directory, opened into *dfd (the caller closes it; -1 when not used). */
static int unix_addr(const char *path, struct sockaddr_un *sa, int *dfd)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    *dfd = -1;
    size_t len = strlen(path);
    if (len == 0) {
        errno = EINVAL;
        return -1;
    }
    if (len < sizeof(sa->sun_path)) {
        memcpy(sa->sun_path, path, len + 1);
        return 0;
    }
    const char *slash = strrchr(path, '/');
    if (!slash || strlen(slash + 1) + 32 >= sizeof(sa->sun_path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    char *dir = slash == path ? xstrdup("/") : xstrndup(path, (size_t)(slash - path));
    *dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(dir);
    if (*dfd < 0)
        return -1;
    snprintf(sa->sun_path, sizeof(sa->sun_path), "/proc/self/fd/%d/%s", *dfd, slash + 1);
    return 0;
}

/* Connects a new socket to path (blocking). The fd, or -1 with errno. */
static int connect_path(const char *path)
{
    struct sockaddr_un sa;
    int dfd;
    if (unix_addr(path, &sa, &dfd) != 0)
        return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int rc = fd >= 0 ? connect(fd, (struct sockaddr *)&sa, sizeof(sa)) : -1;
    int e = errno;
    if (dfd >= 0)
        close(dfd);
    if (rc != 0 && fd >= 0)
        close(fd);
    errno = e;
    return rc == 0 ? fd : -1;
}

/* ---- server ----------------------------------------------------------------------- */

struct control *control_new(const char *path, uid_t owner, gid_t group, struct errlist *errs)
{
    if (!path || !*path) {
        errlist_add(errs, "control-socket", 0, "no control socket path");
        return NULL;
    }
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            errlist_add(errs, path, 0, "control socket: the path exists and is not a socket; not removed");
            return NULL;
        }
        int probe = connect_path(path);
        if (probe >= 0) {
            close(probe);
            errlist_add(errs, path, 0, "control socket: in use (is another submitd running on this spool?)");
            return NULL;
        }
        if (unlink(path) != 0 && errno != ENOENT) {
            errlist_add(errs, path, 0, "control socket: cannot remove the stale socket: %s", strerror(errno));
            return NULL;
        }
    }
    struct sockaddr_un sa;
    int dfd;
    if (unix_addr(path, &sa, &dfd) != 0) {
        errlist_add(errs, path, 0, "control socket: %s", strerror(errno));
        return NULL;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const char *step = "socket";
    int ok = fd >= 0;
    if (ok && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        step = "bind";
        ok = 0;
    }
    /* through sa.sun_path: that name also works for a long path */
    if (ok && chmod(sa.sun_path, 0660) != 0) {
        step = "chmod";
        ok = 0;
    }
    if (ok && geteuid() == 0 && chown(sa.sun_path, owner, group) != 0) {
        step = "chown";
        ok = 0;
    }
    if (ok && listen(fd, 16) != 0) {
        step = "listen";
        ok = 0;
    }
    int e = errno;
    if (!ok && fd >= 0 && strcmp(step, "socket") != 0 && strcmp(step, "bind") != 0)
        unlink(sa.sun_path);
    if (dfd >= 0)
        close(dfd);
    if (!ok) {
        if (fd >= 0)
            close(fd);
        errlist_add(errs, path, 0, "control socket: %s: %s", step, strerror(e));
        return NULL;
    }
    struct control *c = xcalloc(1, sizeof(*c));
    c->path = xstrdup(path);
    c->fd = fd;
    c->owner = owner;
    c->wake[0] = c->wake[1] = -1;
    return c;
}

void control_register(struct control *c, const char *verb, control_fn fn, void *arg)
{
    if (!c || !verb || !fn || c->started || strlen(verb) >= VERB_MAX) {
        logkv(LOG_LVL_ERR, NULL, "control.register_failed", "verb=%s", verb ? verb : "-");
        return;
    }
    for (size_t i = 0; i < c->nverbs; i++) {
        if (strcmp(c->verbs[i].name, verb) == 0) {
            c->verbs[i].fn = fn;
            c->verbs[i].arg = arg;
            return;
        }
    }
    if (c->nverbs == MAX_VERBS) {
        logkv(LOG_LVL_ERR, NULL, "control.register_failed", "verb=%s error=\"too many verbs\"", verb);
        return;
    }
    struct verb *v = &c->verbs[c->nverbs++];
    str_copy(v->name, verb, sizeof(v->name));
    v->fn = fn;
    v->arg = arg;
}

static int64_t mono_ms(void)
{
    return (int64_t)now_ms();
}

/* Waits for fd to be ready for `events` until the deadline. 0 or -1 (ETIMEDOUT). */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - mono_ms();
        if (left <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, left > 60000 ? 60000 : (int)left);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

static int send_all(int fd, const char *buf, size_t n, int64_t deadline)
{
    while (n) {
        if (wait_fd(fd, POLLOUT, deadline) != 0)
            return -1;
        ssize_t w = send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (w < 0)
            return -1;
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads the request line (without LF) into buf. Its length, or -1
 * (errno: EMSGSIZE too long, ETIMEDOUT, EPROTO closed early). A line too
 * long is still read to its end (up to DRAIN_MAX octets in all), so that
 * the answer is not lost to a reset for unread input. */
static long read_request(int fd, char *buf, size_t cap, int64_t deadline)
{
    size_t n = 0, total = 0;
    int toolong = 0;
    for (;;) {
        if (wait_fd(fd, POLLIN, deadline) != 0)
            return -1;
        char tmp[512];
        ssize_t r = recv(fd, tmp, sizeof(tmp), MSG_DONTWAIT);
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (r < 0)
            return -1;
        if (r == 0) {
            errno = EPROTO;
            return -1;
        }
        char *nl = memchr(tmp, '\n', (size_t)r);
        size_t take = nl ? (size_t)(nl - tmp) : (size_t)r;
        total += (size_t)r;
        if (toolong || n + take > cap) {
            toolong = 1;
            if (nl || total > DRAIN_MAX) {
                errno = EMSGSIZE;
                return -1;
            }
            continue;
        }
        memcpy(buf + n, tmp, take);
        n += take;
        if (nl) {
            if (n && buf[n - 1] == '\r')
                n--;
            return (long)n;
        }
    }
}

/* Splits on single spaces; every word is printable (no controls). argc, or -1. */
static int split_words(char *line, char **argv)
{
    int argc = 0;
    char *p = line;
    if (!*p)
        return -1;
    for (;;) {
        char *sp = strchr(p, ' ');
        if (sp)
            *sp = '\0';
        if (!*p || argc == MAX_WORDS)
            return -1;
        for (const unsigned char *q = (const unsigned char *)p; *q; q++)
            if (*q < 0x21 || *q == 0x7f)
                return -1;
        argv[argc++] = p;
        if (!sp)
            return argc;
        p = sp + 1;
    }
}

/* status line, then text dot-stuffed line by line, then ".". */
static void frame_answer(struct strbuf *ans, int ok, const struct strbuf *text)
{
    const char *p = text->s ? text->s : "";
    const char *end = p + text->len;
    if (ok) {
        sb_puts(ans, "ok\n");
    } else {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
        sb_puts(ans, "error: ");
        if (l)
            sb_append(ans, p, l);
        else
            sb_puts(ans, "failed");
        sb_puts(ans, "\n");
        p = nl ? nl + 1 : end;
    }
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (l && p[0] == '.')
            sb_puts(ans, ".");
        sb_append(ans, p, l);
        sb_puts(ans, "\n");
        p = nl ? nl + 1 : end;
    }
    sb_puts(ans, ".\n");
}

static int peer_allowed(const struct control *c, int fd, uid_t *uid)
{
    struct ucred cr;
    socklen_t len = sizeof(cr);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0)
        return 0;
    *uid = cr.uid;
    return cr.uid == 0 || cr.uid == c->owner || cr.uid == geteuid();
}

static void serve(struct control *c, int fd)
{
    int64_t deadline = mono_ms() + IO_TIMEOUT_MS;
    struct strbuf text, ans;
    sb_init(&text);
    sb_init(&ans);
    uid_t uid = (uid_t)-1;
    char line[REQUEST_MAX + 2];
    char *argv[MAX_WORDS];
    int ok = 0;
    const char *verb = "-";
    /* the request is read in any case: unread input would turn our close
     * into a reset that loses the answer */
    long n = read_request(fd, line, REQUEST_MAX, deadline);
    if (!peer_allowed(c, fd, &uid)) {
        logkv(LOG_LVL_WARN, NULL, "control.denied", "uid=%ld", uid == (uid_t)-1 ? -1L : (long)uid);
        sb_puts(&text, "permission denied: only root or the submitd user may use the control socket");
    } else {
        int argc = -1;
        if (n < 0) {
            sb_printf(&text, "%s", errno == EMSGSIZE ? "request too long (at most 1000 octets)" : "no request");
        } else {
            line[n] = '\0';
            if (memchr(line, '\0', (size_t)n) || (argc = split_words(line, argv)) < 0)
                sb_puts(&text, "bad request: words of printable characters separated by single spaces");
        }
        if (argc > 0) {
            verb = argv[0];
            const struct verb *v = NULL;
            for (size_t i = 0; i < c->nverbs; i++)
                if (strcmp(c->verbs[i].name, argv[0]) == 0)
                    v = &c->verbs[i];
            if (!v) {
                sb_puts(&text, "unknown command; known:");
                for (size_t i = 0; i < c->nverbs; i++)
                    sb_printf(&text, " %s", c->verbs[i].name);
                verb = "unknown";
            } else {
                ok = v->fn(v->arg, argc, argv, &text) == 0;
            }
            char qv[LOGQ_MAX], qs[LOGQ_MAX];
            logkv(LOG_LVL_INFO, NULL, "control.request", "uid=%ld verb=%s sub=%s status=%s", (long)uid,
                  log_q(qv, sizeof(qv), verb), argc > 1 ? log_q(qs, sizeof(qs), argv[1]) : "-", ok ? "ok" : "error");
        }
    }
    frame_answer(&ans, ok, &text);
    send_all(fd, ans.s, ans.len, deadline);
    shutdown(fd, SHUT_WR);
    sb_free(&text);
    sb_free(&ans);
}

static void *control_thread(void *arg)
{
    struct control *c = arg;
    for (;;) {
        struct pollfd p[2] = {{.fd = c->fd, .events = POLLIN}, {.fd = c->wake[0], .events = POLLIN}};
        int r = poll(p, 2, -1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 || p[1].revents)
            break;
        if (!(p[0].revents & POLLIN))
            continue;
        int fd = accept4(c->fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        serve(c, fd);
        close(fd);
    }
    return NULL;
}

int control_start(struct control *c)
{
    if (!c || c->started)
        return c ? 0 : -1;
    if (pipe2(c->wake, O_CLOEXEC) != 0)
        return -1;
    if (pthread_create(&c->thread, NULL, control_thread, c) != 0) {
        close(c->wake[0]);
        close(c->wake[1]);
        c->wake[0] = c->wake[1] = -1;
        return -1;
    }
    thread_name(c->thread, "control");
    c->started = 1;
    char q[LOGQ_MAX];
    logkv(LOG_LVL_INFO, NULL, "control.started", "socket=%s verbs=%zu", log_q(q, sizeof(q), c->path), c->nverbs);
    return 0;
}

void control_free(struct control *c)
{
    if (!c)
        return;
    if (c->started) {
        ssize_t w;
        do
            w = write(c->wake[1], "x", 1);
        while (w < 0 && errno == EINTR);
        pthread_join(c->thread, NULL);
    }
    for (int i = 0; i < 2; i++)
        if (c->wake[i] >= 0)
            close(c->wake[i]);
    close(c->fd);
    /* remove the name only when it is still ours (not a newer daemon's) */
    struct stat st, mine;
    struct sockaddr_un sa;
    int dfd;
    if (lstat(c->path, &st) == 0 && S_ISSOCK(st.st_mode) && unix_addr(c->path, &sa, &dfd) == 0) {
        if (stat(sa.sun_path, &mine) == 0 && mine.st_ino == st.st_ino)
            unlink(sa.sun_path);
        if (dfd >= 0)
            close(dfd);
    }
    free(c->path);
    free(c);
}

/* ---- client ----------------------------------------------------------------------- */

/* Parses a complete answer (ending in "\n.\n"): the status and the text. */
static int parse_answer(const char *a, size_t n, struct strbuf *out)
{
    const char *end = a + n, *nl = memchr(a, '\n', n);
    size_t l = nl ? (size_t)(nl - a) : 0;
    int ok = l == 2 && memcmp(a, "ok", 2) == 0;
    if (!ok && !(l >= 7 && memcmp(a, "error: ", 7) == 0)) {
        sb_puts(out, "malformed answer from the control socket");
        return -1;
    }
    if (!ok) {
        sb_append(out, a + 7, l - 7);
        sb_puts(out, "\n");
    }
    const char *p = nl + 1;
    while (p < end) {
        const char *e = memchr(p, '\n', (size_t)(end - p));
        size_t ll = e ? (size_t)(e - p) : (size_t)(end - p);
        if (ll == 1 && p[0] == '.')
            break;
        if (ll && p[0] == '.') {
            p++;
            ll--;
        }
        sb_append(out, p, ll);
        sb_puts(out, "\n");
        p += ll + 1;
    }
    return ok ? 0 : -1;
}

/* The answer ends with the "." line (which only the terminator can be,
 * as data lines starting with "." are stuffed) after the status line. */
static int answer_complete(const struct strbuf *b)
{
    return b->len >= 5 && memcmp(b->s + b->len - 3, "\n.\n", 3) == 0;
}

int control_request(const char *path, const char *request, struct strbuf *out, int timeout_ms)
{
    size_t rl = request ? strlen(request) : 0;
    if (rl == 0 || rl > REQUEST_MAX || strchr(request, '\n')) {
        sb_puts(out, "bad request (one line of at most 1000 octets)");
        return -1;
    }
    int fd = connect_path(path);
    if (fd < 0) {
        sb_printf(out, "cannot connect to %s: %s%s", path, strerror(errno),
                  errno == ENOENT || errno == ECONNREFUSED ? " (is submitd running?)" : "");
        return -1;
    }
    int64_t deadline = mono_ms() + (timeout_ms > 0 ? timeout_ms : 30000);
    struct strbuf req, ans;
    sb_init(&req);
    sb_init(&ans);
    sb_printf(&req, "%s\n", request);
    int rc = -1;
    if (send_all(fd, req.s, req.len, deadline) != 0) {
        sb_printf(out, "cannot send the request: %s", strerror(errno));
        goto done;
    }
    for (;;) {
        if (answer_complete(&ans))
            break;
        if (ans.len > ANSWER_MAX || wait_fd(fd, POLLIN, deadline) != 0) {
            sb_printf(out, "no complete answer from %s: %s", path, ans.len > ANSWER_MAX ? "too long" : strerror(errno));
            goto done;
        }
        char buf[16384];
        ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (r <= 0) {
            sb_printf(out, "the control socket closed before the answer ended");
            goto done;
        }
        sb_append(&ans, buf, (size_t)r);
    }
    rc = parse_answer(ans.s, ans.len, out);
done:
    close(fd);
    sb_free(&req);
    sb_free(&ans);
    return rc;
}
