/* dns: MX and address lookups for the relay transports on c-ares (see
 * dns.h). One channel per lookup, driven with ares_getsock + poll +
 * ares_process_fd until every query answered or the deadline passed;
 * then ares_cancel. Also the pure helpers: resolver option parsing, MX
 * ordering and the null-MX rule. */
#include "relay/dns.h"

#include <arpa/inet.h>
#include <ares.h>
#include <arpa/nameser.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

#define DNS_MAX_MX 64

const char *dns_status_name(enum dns_status s)
{
    switch (s) {
    case DNS_OK: return "ok";
    case DNS_NODATA: return "nodata";
    case DNS_NXDOMAIN: return "nxdomain";
    case DNS_TEMP: return "temp";
    }
    return "?";
}

/* ---- pure helpers ------------------------------------------------------------ */

static int parse_port(const char *s, unsigned *port)
{
    if (!*s || strlen(s) > 5)
        return -1;
    unsigned v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (unsigned)(*p - '0');
    }
    if (v == 0 || v > 65535)
        return -1;
    *port = v;
    return 0;
}

int dns_parse_server(const char *s, char *out, size_t outlen, const char **why)
{
    char ip[INET6_ADDRSTRLEN + 1];
    unsigned port = 53;
    const char *portp = NULL;
    int v6 = 0;
    if (!s || !*s) {
        *why = "needs an address IP[:PORT]";
        return -1;
    }
    if (s[0] == '[') {
        const char *e = strchr(s, ']');
        if (!e || (size_t)(e - s - 1) >= sizeof(ip)) {
            *why = "bad [IPv6]:PORT";
            return -1;
        }
        memcpy(ip, s + 1, (size_t)(e - s - 1));
        ip[e - s - 1] = '\0';
        if (e[1] == ':')
            portp = e + 2;
        else if (e[1]) {
            *why = "bad [IPv6]:PORT";
            return -1;
        }
        v6 = 1;
    } else if (strchr(s, ':') && strchr(s, ':') != strrchr(s, ':')) {
        if (str_copy(ip, s, sizeof(ip)) >= sizeof(ip)) { /* bare IPv6, default port */
            *why = "address too long";
            return -1;
        }
        v6 = 1;
    } else {
        const char *c = strchr(s, ':');
        size_t l = c ? (size_t)(c - s) : strlen(s);
        if (l >= sizeof(ip)) {
            *why = "address too long";
            return -1;
        }
        memcpy(ip, s, l);
        ip[l] = '\0';
        if (c)
            portp = c + 1;
    }
    unsigned char bin[sizeof(struct in6_addr)];
    if (inet_pton(v6 ? AF_INET6 : AF_INET, ip, bin) != 1) {
        *why = "not an IP address (a resolver is given by address: IP, IP:PORT or [IPv6]:PORT)";
        return -1;
    }
    if (portp && parse_port(portp, &port) != 0) {
        *why = "bad port (1-65535)";
        return -1;
    }
    int w = v6 ? snprintf(out, outlen, "[%s]:%u", ip, port) : snprintf(out, outlen, "%s:%u", ip, port);
    if (w < 0 || (size_t)w >= outlen) {
        *why = "address too long";
        return -1;
    }
    return 0;
}

void dns_mx_order(struct dns_mx *v, size_t n, uint32_t (*rnd)(void *arg), void *arg)
{
    /* insertion sort by preference (n is small, at most DNS_MAX_MX) */
    for (size_t i = 1; i < n; i++) {
        struct dns_mx x = v[i];
        size_t j = i;
        while (j > 0 && v[j - 1].pref > x.pref) {
            v[j] = v[j - 1];
            j--;
        }
        v[j] = x;
    }
    /* Fisher-Yates inside each run of equal preference */
    for (size_t s = 0; s < n;) {
        size_t e = s + 1;
        while (e < n && v[e].pref == v[s].pref)
            e++;
        for (size_t i = e - 1; i > s; i--) {
            size_t j = s + (size_t)(rnd(arg) % (uint32_t)(i - s + 1));
            struct dns_mx t = v[i];
            v[i] = v[j];
            v[j] = t;
        }
        s = e;
    }
}

int dns_mx_is_null(const struct dns_mx *v, size_t n)
{
    return n == 1 && v[0].host[0] == '\0';
}

size_t dns_mx_drop_null(struct dns_mx *v, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++)
        if (v[i].host[0])
            v[o++] = v[i];
    return o;
}

int dns_addr_literal(const char *dom, uint16_t port, struct sockaddr_storage *out)
{
    size_t n = strlen(dom);
    if (n < 2 || dom[0] != '[')
        return 0;
    if (dom[n - 1] != ']' || n - 2 > INET6_ADDRSTRLEN + 5)
        return -1;
    char ip[INET6_ADDRSTRLEN + 6];
    memcpy(ip, dom + 1, n - 2);
    ip[n - 2] = '\0';
    memset(out, 0, sizeof(*out));
    if (str_iprefix(ip, "IPv6:")) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)out;
        if (inet_pton(AF_INET6, ip + 5, &s6->sin6_addr) != 1)
            return -1;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        return 1;
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)out;
    if (inet_pton(AF_INET, ip, &s4->sin_addr) != 1)
        return -1;
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    return 1;
}

/* ---- c-ares plumbing ------------------------------------------------------------ */

static pthread_once_t ares_once = PTHREAD_ONCE_INIT;

static void ares_lib_init(void)
{
    /* does nothing but count on Linux; required by the API contract */
    ares_library_init(ARES_LIB_INIT_ALL);
}

static enum dns_status map_status(int st)
{
    switch (st) {
    case ARES_SUCCESS: return DNS_OK;
    case ARES_ENODATA: return DNS_NODATA;
    case ARES_ENOTFOUND:
    case ARES_EBADNAME: return DNS_NXDOMAIN;
    default: return DNS_TEMP;
    }
}

static void set_err(char *err, size_t errlen, const char *what, const char *name, int st)
{
    if (st == ARES_ECANCELLED)
        snprintf(err, errlen, "%s %s: timed out", what, name);
    else
        snprintf(err, errlen, "%s %s: %s", what, name, ares_strerror(st));
}

static int channel_new(const struct dns_opts *o, ares_channel *ch, char *err, size_t errlen)
{
    pthread_once(&ares_once, ares_lib_init);
    struct ares_options ao;
    memset(&ao, 0, sizeof(ao));
    int mask = ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_FLAGS;
    int per_try = o->timeout_ms > 0 ? o->timeout_ms / 3 : 2000;
    ao.timeout = per_try < 500 ? 500 : per_try;
    ao.tries = 3;
    ao.flags = o->nosearch ? ARES_FLAG_NOSEARCH : 0;
    int st = ares_init_options(ch, &ao, mask);
    if (st != ARES_SUCCESS) {
        snprintf(err, errlen, "resolver init: %s", ares_strerror(st));
        return -1;
    }
    if (o->server[0]) {
        st = ares_set_servers_ports_csv(*ch, o->server);
        if (st != ARES_SUCCESS) {
            snprintf(err, errlen, "resolver %s: %s", o->server, ares_strerror(st));
            ares_destroy(*ch);
            return -1;
        }
    }
    return 0;
}

/* Runs the channel until no query is pending or the deadline passed
 * (then the pending queries are cancelled: their callbacks see
 * ARES_ECANCELLED). */
static void channel_run(ares_channel ch, const int *pending, uint64_t deadline_ms)
{
    while (*pending > 0) {
        uint64_t now = now_ms();
        if (now >= deadline_ms) {
            ares_cancel(ch);
            return;
        }
        ares_socket_t socks[ARES_GETSOCK_MAXNUM];
        int bits = ares_getsock(ch, socks, ARES_GETSOCK_MAXNUM);
        struct pollfd pfd[ARES_GETSOCK_MAXNUM];
        nfds_t np = 0;
        for (int i = 0; i < ARES_GETSOCK_MAXNUM; i++) {
            /* the ARES_GETSOCK_* macros shift a signed 1 into bit 31 (UB) */
            short ev = 0;
            if (((unsigned)bits >> i) & 1u)
                ev |= POLLIN;
            if (((unsigned)bits >> (i + ARES_GETSOCK_MAXNUM)) & 1u)
                ev |= POLLOUT;
            if (ev)
                pfd[np++] = (struct pollfd){.fd = socks[i], .events = ev};
        }
        struct timeval maxtv = {.tv_sec = (time_t)((deadline_ms - now) / 1000),
                                .tv_usec = (suseconds_t)((deadline_ms - now) % 1000) * 1000};
        struct timeval tv;
        struct timeval *t = ares_timeout(ch, &maxtv, &tv);
        int wait = (int)(t->tv_sec * 1000 + t->tv_usec / 1000);
        if (wait < 1)
            wait = 1;
        int r = poll(pfd, np, wait);
        if (r < 0 && errno != EINTR) {
            ares_cancel(ch);
            return;
        }
        if (r <= 0) {
            ares_process_fd(ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD); /* timeouts, retries */
            continue;
        }
        for (nfds_t i = 0; i < np; i++) {
            if (!pfd[i].revents)
                continue;
            ares_socket_t rd = pfd[i].revents & (POLLIN | POLLERR | POLLHUP) ? pfd[i].fd : ARES_SOCKET_BAD;
            ares_socket_t wr = pfd[i].revents & (POLLOUT | POLLERR | POLLHUP) ? pfd[i].fd : ARES_SOCKET_BAD;
            ares_process_fd(ch, rd, wr);
        }
    }
}

/* ---- MX ---------------------------------------------------------------------------- */

struct mx_state {
    int pending;
    int status;
    struct dns_mx *v;
    size_t n;
};

static void mx_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    struct mx_state *s = arg;
    s->pending--;
    s->status = status;
    if (status != ARES_SUCCESS)
        return;
    struct ares_mx_reply *mx = NULL;
    int st = ares_parse_mx_reply(abuf, alen, &mx);
    if (st != ARES_SUCCESS) {
        s->status = st;
        return;
    }
    size_t n = 0;
    for (struct ares_mx_reply *p = mx; p; p = p->next)
        n++;
    if (n > DNS_MAX_MX)
        n = DNS_MAX_MX;
    s->v = xcalloc(n ? n : 1, sizeof(*s->v));
    for (struct ares_mx_reply *p = mx; p && s->n < n; p = p->next) {
        struct dns_mx *d = &s->v[s->n];
        const char *h = p->host ? p->host : "";
        if (strcmp(h, ".") == 0)
            h = "";
        if (str_copy(d->host, h, sizeof(d->host)) >= sizeof(d->host))
            continue; /* an over-long name cannot be connected to */
        size_t hl = strlen(d->host);
        if (hl && d->host[hl - 1] == '.')
            d->host[hl - 1] = '\0';
        d->pref = p->priority;
        s->n++;
    }
    ares_free_data(mx);
    if (s->n == 0)
        s->status = ARES_ENODATA;
}

static uint32_t rnd32(void *arg)
{
    uint32_t r = 0;
    if (random_bytes(&r, sizeof(r)) != 0)
        r = (uint32_t)now_ms();
    return r;
}

enum dns_status dns_mx(const struct dns_opts *o, const char *domain, struct dns_mx **out, size_t *n, char *err,
                       size_t errlen)
{
    *out = NULL;
    *n = 0;
    ares_channel ch;
    if (channel_new(o, &ch, err, errlen) != 0)
        return DNS_TEMP;
    struct mx_state s = {.pending = 1};
    ares_query(ch, domain, ns_c_in, ns_t_mx, mx_cb, &s);
    channel_run(ch, &s.pending, now_ms() + (uint64_t)(o->timeout_ms > 0 ? o->timeout_ms : 10000));
    ares_destroy(ch); /* cancelled queries call back here at the latest */
    enum dns_status r = map_status(s.status);
    if (r != DNS_OK) {
        free(s.v);
        set_err(err, errlen, "MX lookup for", domain, s.status);
        return r;
    }
    dns_mx_order(s.v, s.n, rnd32, NULL);
    *out = s.v;
    *n = s.n;
    return DNS_OK;
}

/* ---- addresses --------------------------------------------------------------------- */

struct ai_state {
    int pending;
    int status;
    struct ares_addrinfo *ai;
};

static void ai_cb(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
    struct ai_state *s = arg;
    s->pending--;
    s->status = status;
    s->ai = res;
}

enum dns_status dns_addrs(const struct dns_opts *o, const char *host, uint16_t port, size_t max,
                          struct sockaddr_storage **out, size_t *n, char *err, size_t errlen)
{
    *out = NULL;
    *n = 0;
    /* An IP literal needs no resolver at all (smarthost url smtp://127.0.0.1:...). */
    struct sockaddr_storage lit;
    memset(&lit, 0, sizeof(lit));
    struct sockaddr_in *l4 = (struct sockaddr_in *)&lit;
    struct sockaddr_in6 *l6 = (struct sockaddr_in6 *)&lit;
    if (inet_pton(AF_INET, host, &l4->sin_addr) == 1) {
        l4->sin_family = AF_INET;
        l4->sin_port = htons(port);
    } else if (inet_pton(AF_INET6, host, &l6->sin6_addr) == 1) {
        l6->sin6_family = AF_INET6;
        l6->sin6_port = htons(port);
    }
    if (lit.ss_family != 0 && max > 0) {
        *out = xmalloc(sizeof(lit));
        memcpy(*out, &lit, sizeof(lit));
        *n = 1;
        return DNS_OK;
    }
    ares_channel ch;
    if (channel_new(o, &ch, err, errlen) != 0)
        return DNS_TEMP;
    struct ai_state s = {.pending = 1};
    struct ares_addrinfo_hints hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    ares_getaddrinfo(ch, host, NULL, &hints, ai_cb, &s);
    channel_run(ch, &s.pending, now_ms() + (uint64_t)(o->timeout_ms > 0 ? o->timeout_ms : 10000));
    ares_destroy(ch);
    enum dns_status r = map_status(s.status);
    size_t cnt = 0;
    if (r == DNS_OK && s.ai) {
        for (struct ares_addrinfo_node *p = s.ai->nodes; p; p = p->ai_next)
            cnt++;
        if (cnt > max)
            cnt = max;
        struct sockaddr_storage *v = xcalloc(cnt ? cnt : 1, sizeof(*v));
        size_t k = 0;
        for (struct ares_addrinfo_node *p = s.ai->nodes; p && k < cnt; p = p->ai_next) {
            if ((p->ai_family != AF_INET && p->ai_family != AF_INET6) || p->ai_addrlen > sizeof(*v))
                continue;
            memcpy(&v[k], p->ai_addr, p->ai_addrlen);
            if (p->ai_family == AF_INET)
                ((struct sockaddr_in *)&v[k])->sin_port = htons(port);
            else
                ((struct sockaddr_in6 *)&v[k])->sin6_port = htons(port);
            k++;
        }
        *out = v;
        *n = k;
        if (k == 0) {
            free(v);
            *out = NULL;
            r = DNS_NODATA;
            s.status = ARES_ENODATA;
        }
    } else if (r == DNS_OK) {
        r = DNS_NODATA;
        s.status = ARES_ENODATA;
    }
    if (s.ai)
        ares_freeaddrinfo(s.ai);
    if (r != DNS_OK)
        set_err(err, errlen, "address lookup for", host, s.status);
    return r;
}
