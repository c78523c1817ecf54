/* listener: the listening sockets and the accept path. Every listener
 * address is bound once per worker with SO_REUSEPORT, so the kernel spreads
 * new connections over the workers' own accept queues; with incoming-cpu
 * (SO_INCOMING_CPU), to the worker of the CPU that handled the SYN. On
 * accept: the deny and allow networks (554 5.7.1 on a STARTTLS listener;
 * implicit-TLS listeners just close, there is no TLS yet to talk over), then
 * the total and per-IP connection limits (421 4.7.0), then a session on this
 * worker. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "smtp/server.h"

static int bind_one(const char *addr, uint16_t port, int backlog, int cpu, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, addr, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        sl = sizeof(*s4);
    } else if (inet_pton(AF_INET6, addr, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        sl = sizeof(*s6);
    } else {
        snprintf(err, errlen, "bad address %s", addr);
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, backlog) != 0) {
        snprintf(err, errlen, "cannot listen on %s port %u: %s", addr, (unsigned)port, strerror(errno));
        close(fd);
        return -1;
    }
    /* A hint (kernels before 6.1 ignore it in a SO_REUSEPORT group): the
     * group's socket whose CPU handled the SYN takes the connection. */
    if (cpu >= 0 && setsockopt(fd, SOL_SOCKET, SO_INCOMING_CPU, &cpu, sizeof(cpu)) != 0)
        logkv(LOG_LVL_DEBUG, NULL, "listener.incoming_cpu", "cpu=%d error=%s", cpu, strerror(errno));
    return fd;
}

int listeners_bind(struct server *s, struct errlist *errs)
{
    const struct config *c = s->cfg;
    int rc = 0;
    for (unsigned wi = 0; wi < s->nworkers; wi++) {
        struct worker *w = &s->workers[wi];
        for (size_t li = 0; li < c->nlisteners; li++) {
            const struct listener_cfg *l = &c->listeners[li];
            for (size_t ai = 0; ai < l->naddrs; ai++) {
                char err[256];
                int fd = bind_one(l->addrs[ai], l->port, c->listen_backlog, w->cpu, err, sizeof(err));
                if (fd < 0) {
                    if (wi == 0)
                        errlist_add(errs, c->file, l->line, "listener %s: %s", l->name, err);
                    rc = -1;
                    continue;
                }
                w->socks = xrealloc(w->socks, (w->nsocks + 1) * sizeof(*w->socks));
                w->socks[w->nsocks].fd = fd;
                w->socks[w->nsocks].listener = li;
                w->nsocks++;
            }
        }
    }
    return rc;
}

static void refuse(int fd, const char *line)
{
    if (line) {
        ssize_t r = send(fd, line, strlen(line), MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)r;
    }
    shutdown(fd, SHUT_WR);
    close(fd);
}

static void on_accept(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    struct lsock *ls = arg;
    struct server *srv = ls->w->srv;
    size_t li = ls->listener;
    (void)lev;
    struct server_snap snap;
    server_snap_take(srv, li, &snap);
    const struct listener_cfg *l = &snap.cfg->listeners[li];
    char ip[64];
    sockaddr_ip(sa, ip, sizeof(ip));
    struct log_ctx lc = {.ip = ip};
    int starttls = l->mode == LISTEN_STARTTLS;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    if (cidr_list_match(&l->deny, sa) || (l->allow.n && !cidr_list_match(&l->allow, sa))) {
        logkv(LOG_LVL_WARN, &lc, "connection.denied", "listener=%s", l->name);
        refuse(fd, starttls ? "554 5.7.1 Access denied\r\n" : NULL);
        server_snap_release(&snap);
        return;
    }
    struct conncount *cc = &srv->conns[li];
    unsigned total = atomic_fetch_add(&cc->total, 1) + 1;
    unsigned per_ip = iptable_add(cc->per_ip, sa, 1, 0);
    if (total > l->max_conn || per_ip > l->max_conn_per_ip) {
        int ipl = total <= l->max_conn;
        logkv(LOG_LVL_WARN, &lc, "connection.limit", "listener=%s total=%u per_ip=%u", l->name, total, per_ip);
        listener_release(srv, li, sa);
        refuse(fd, !starttls ? NULL
                   : ipl     ? "421 4.7.0 Too many connections from your address\r\n"
                             : "421 4.7.0 Too many connections\r\n");
        server_snap_release(&snap);
        return;
    }
    server_snap_release(&snap);
    session_new(ls->w, fd, sa, (socklen_t)salen, li);
}

static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    int e = EVUTIL_SOCKET_ERROR();
    logkv(LOG_LVL_ERR, NULL, "listener.accept_error", "error=%s",
          log_q((char[LOGQ_MAX]){0}, LOGQ_MAX, evutil_socket_error_to_string(e)));
    (void)lev;
    (void)arg;
}

int listeners_attach(struct worker *w)
{
    w->lev = xcalloc(w->nsocks, sizeof(*w->lev));
    for (size_t i = 0; i < w->nsocks; i++) {
        w->socks[i].w = w;
        w->lev[i] = evconnlistener_new(w->base, on_accept, &w->socks[i], LEV_OPT_CLOSE_ON_FREE, -1, w->socks[i].fd);
        if (!w->lev[i])
            return -1;
        evconnlistener_set_error_cb(w->lev[i], on_accept_error);
    }
    return 0;
}

void listeners_detach(struct worker *w)
{
    if (!w->lev)
        return;
    for (size_t i = 0; i < w->nsocks; i++) {
        if (w->lev[i]) {
            evconnlistener_free(w->lev[i]); /* closes the socket */
            w->lev[i] = NULL;
            w->socks[i].fd = -1;
        }
    }
    free(w->lev);
    w->lev = NULL;
}

void listener_release(struct server *s, size_t listener, const struct sockaddr *sa)
{
    struct conncount *cc = &s->conns[listener];
    atomic_fetch_sub(&cc->total, 1);
    iptable_add(cc->per_ip, sa, -1, 0);
}
