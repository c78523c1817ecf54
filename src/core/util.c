/* util: see util.h. */
#include "core/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

static void oom(void)
{
    static const char msg[] = "submitd: out of memory\n";
    ssize_t r = write(2, msg, sizeof(msg) - 1);
    (void)r;
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom();
    return p;
}

void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p)
        oom();
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom();
    return q;
}

char *xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
    size_t l = strnlen(s, n);
    char *p = xmalloc(l + 1);
    memcpy(p, s, l);
    p[l] = '\0';
    return p;
}

size_t str_copy(char *dst, const char *src, size_t n)
{
    size_t l = strlen(src);
    if (n) {
        size_t c = l < n - 1 ? l : n - 1;
        memcpy(dst, src, c);
        dst[c] = '\0';
    }
    return l;
}

static int lc(int c)
{
    return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

int str_ieq(const char *a, const char *b)
{
    while (*a && *b) {
        if (lc((unsigned char)*a) != lc((unsigned char)*b))
            return 0;
        a++;
        b++;
    }
    return *a == *b;
}

int str_iprefix(const char *s, const char *prefix)
{
    while (*prefix) {
        if (lc((unsigned char)*s) != lc((unsigned char)*prefix))
            return 0;
        s++;
        prefix++;
    }
    return 1;
}

void str_lower(char *s)
{
    for (; *s; s++)
        *s = (char)lc((unsigned char)*s);
}

void mem_wipe(void *p, size_t n)
{
    if (p && n)
        explicit_bzero(p, n);
}

int mem_eq_ct(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a, *y = b;
    unsigned char d = 0;
    for (size_t i = 0; i < n; i++)
        d |= x[i] ^ y[i];
    return d == 0;
}

void sb_init(struct strbuf *b)
{
    b->s = NULL;
    b->len = 0;
    b->cap = 0;
}

void sb_free(struct strbuf *b)
{
    free(b->s);
    sb_init(b);
}

void sb_reset(struct strbuf *b)
{
    b->len = 0;
    if (b->s)
        b->s[0] = '\0';
}

static void sb_grow(struct strbuf *b, size_t extra)
{
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    b->s = xrealloc(b->s, cap);
    b->cap = cap;
}

void sb_append(struct strbuf *b, const void *data, size_t n)
{
    sb_grow(b, n);
    if (n)
        memcpy(b->s + b->len, data, n);
    b->len += n;
    b->s[b->len] = '\0';
}

void sb_puts(struct strbuf *b, const char *s)
{
    sb_append(b, s, strlen(s));
}

void sb_vprintf(struct strbuf *b, const char *fmt, va_list ap)
{
    va_list cp;
    va_copy(cp, ap);
    int n = vsnprintf(NULL, 0, fmt, cp);
    va_end(cp);
    if (n < 0)
        return;
    sb_grow(b, (size_t)n);
    vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
}

void sb_printf(struct strbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sb_vprintf(b, fmt, ap);
    va_end(ap);
}

char *sb_steal(struct strbuf *b)
{
    char *s = b->s ? b->s : xstrdup("");
    sb_init(b);
    return s;
}

void errlist_init(struct errlist *e)
{
    e->v = NULL;
    e->n = 0;
}

void errlist_free(struct errlist *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->v[i]);
    free(e->v);
    errlist_init(e);
}

void errlist_add(struct errlist *e, const char *file, int line, const char *fmt, ...)
{
    struct strbuf b;
    sb_init(&b);
    if (file && line > 0)
        sb_printf(&b, "%s:%d: ", file, line);
    else if (file)
        sb_printf(&b, "%s: ", file);
    va_list ap;
    va_start(ap, fmt);
    sb_vprintf(&b, fmt, ap);
    va_end(ap);
    e->v = xrealloc(e->v, (e->n + 1) * sizeof(*e->v));
    e->v[e->n++] = sb_steal(&b);
}

uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

void qid_new(char out[QID_LEN + 1])
{
    uint64_t ms = wall_us() / 1000u;
    uint32_t rnd = 0;
    if (random_bytes(&rnd, sizeof(rnd)) != 0)
        rnd = (uint32_t)(wall_us() ^ (uint64_t)getpid());
    /* 80 bits: 48 bits time, 32 bits random -> 16 base32 chars. */
    uint64_t hi = ms & 0xFFFFFFFFFFFFull; /* 48 bits */
    for (int i = 0; i < 16; i++) {
        unsigned v;
        int bit = 75 - 5 * i; /* position of the top bit of this group in 80 */
        /* Compose 5 bits from the 80-bit big-endian value hi:rnd. */
        v = 0;
        for (int k = 0; k < 5; k++) {
            int pos = bit + 4 - k; /* bit index from the LSB of the 80-bit value */
            unsigned b;
            if (pos >= 32)
                b = (unsigned)((hi >> (pos - 32)) & 1u);
            else
                b = (rnd >> pos) & 1u;
            v = (v << 1) | b;
        }
        out[i] = b32[v & 31];
    }
    out[QID_LEN] = '\0';
}

int qid_valid(const char *s)
{
    size_t i;
    for (i = 0; s[i]; i++) {
        if (i >= QID_LEN || !strchr(b32, s[i]))
            return 0;
    }
    return i == QID_LEN;
}

int random_bytes(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

void rfc5322_date(time_t t, char *buf, size_t n)
{
    struct tm tm;
    localtime_r(&t, &tm);
    if (strftime(buf, n, "%a, %d %b %Y %H:%M:%S %z", &tm) == 0 && n)
        buf[0] = '\0';
}

int write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int pwrite_all(int fd, const void *buf, size_t n, off_t off)
{
    const char *p = buf;
    while (n) {
        ssize_t w = pwrite(fd, p, n, off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
        off += w;
    }
    return 0;
}

int pread_full(int fd, void *buf, size_t n, off_t off)
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

char *read_file_max(const char *path, size_t max, size_t *len_out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct strbuf b;
    sb_init(&b);
    char tmp[8192];
    for (;;) {
        ssize_t r = read(fd, tmp, sizeof(tmp));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            close(fd);
            sb_free(&b);
            errno = e;
            return NULL;
        }
        if (r == 0)
            break;
        if (b.len + (size_t)r > max) {
            close(fd);
            sb_free(&b);
            errno = EFBIG;
            return NULL;
        }
        sb_append(&b, tmp, (size_t)r);
    }
    close(fd);
    if (len_out)
        *len_out = b.len;
    return sb_steal(&b);
}

void path_dir(const char *path, char *dir, size_t n)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        str_copy(dir, ".", n);
    else if (slash == path)
        str_copy(dir, "/", n);
    else
        snprintf(dir, n, "%.*s", (int)(slash - path), path);
}

void sockaddr_text(const struct sockaddr *sa, char *buf, size_t n)
{
    char ip[INET6_ADDRSTRLEN];
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
        snprintf(buf, n, "[%s]:%u", ip, (unsigned)ntohs(s6->sin6_port));
    } else if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
        snprintf(buf, n, "%s:%u", ip, (unsigned)ntohs(s4->sin_port));
    } else {
        str_copy(buf, "?", n);
    }
}

void thread_name(pthread_t t, const char *role)
{
    char name[16];
    snprintf(name, sizeof(name), "submitd-%s", role ? role : "thread");
    (void)pthread_setname_np(t, name); /* best effort: only diagnostics */
}

int thread_background(pthread_t t)
{
    struct sched_param sp = {.sched_priority = 0};
    return pthread_setschedparam(t, SCHED_BATCH, &sp) == 0 ? 0 : -1;
}

unsigned cpus_in_set(const cpu_set_t *set, int *out, unsigned max)
{
    unsigned n = 0;
    for (int c = 0; c < CPU_SETSIZE && n < max; c++)
        if (CPU_ISSET(c, set))
            out[n++] = c;
    return n;
}

unsigned cpus_allowed(int *out, unsigned max)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    unsigned n = 0;
    if (max == 0)
        return 0;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        n = cpus_in_set(&set, out, max);
    if (n == 0) {
        out[0] = 0;
        n = 1;
    }
    return n;
}
