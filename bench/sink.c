/* sink: the benchmark's relay target (make bench). A one-thread libevent SMTP
 * server on one address:port that accepts every command (PIPELINING,
 * CHUNKING, no TLS), reads DATA up to the terminating dot or BDAT's chunks,
 * discards them and answers 250. Like the smarthosts it stands in for
 * (Postfix 3.4 and later, Exim, the large providers), it offers CHUNKING;
 * a client that does not use BDAT sends DATA as before.
 * It counts messages, recipients and connections, and keeps the counts in
 * a small file (-s FILE, rewritten through rename at most every 100 ms and
 * at exit) that the benchmark script reads. SIGTERM/SIGINT stop it.
 *
 *   sink -l 127.0.0.1:PORT -s STATS-FILE
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "core/util.h"

#define MAX_LINE 4096

struct sink {
    struct event_base *base;
    const char *stats_path;
    uint64_t msgs, rcpts, conns, bytes;
    uint64_t written_msgs, written_conns;
    int open;
};

struct sconn {
    struct sink *sk;
    bool in_data;
    bool at_start; /* in DATA, at the start of the data (".\r\n" ends it) */
    uint64_t bdat_left; /* bytes of the current BDAT chunk still to drop */
    bool in_bdat, bdat_last;
};

static void write_stats(struct sink *sk)
{
    char tmp[4200], buf[256];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", sk->stats_path) >= (int)sizeof(tmp))
        return;
    int n = snprintf(buf, sizeof(buf), "msgs=%llu rcpts=%llu conns=%llu bytes=%llu open=%d\n",
                     (unsigned long long)sk->msgs, (unsigned long long)sk->rcpts, (unsigned long long)sk->conns,
                     (unsigned long long)sk->bytes, sk->open);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    fwrite(buf, 1, (size_t)n, f);
    if (fclose(f) == 0)
        rename(tmp, sk->stats_path);
    sk->written_msgs = sk->msgs;
    sk->written_conns = sk->conns;
}

static void conn_free(struct bufferevent *bev, struct sconn *c)
{
    c->sk->open--;
    bufferevent_free(bev);
    free(c);
}

static void reply(struct bufferevent *bev, const char *s)
{
    bufferevent_write(bev, s, strlen(s));
}

/* In DATA: drops bytes up to the end marker; true when it was found. */
static bool eat_data(struct sconn *c, struct evbuffer *in)
{
    size_t len = evbuffer_get_length(in);
    if (c->at_start && len >= 3) {
        char head[3];
        evbuffer_copyout(in, head, 3);
        if (memcmp(head, ".\r\n", 3) == 0) {
            evbuffer_drain(in, 3);
            return true;
        }
    }
    if (c->at_start && len < 3)
        return false;
    struct evbuffer_ptr p = evbuffer_search(in, "\r\n.\r\n", 5, NULL);
    if (p.pos >= 0) {
        c->sk->bytes += (uint64_t)p.pos + 2;
        evbuffer_drain(in, (size_t)p.pos + 5);
        return true;
    }
    if (len > 4) { /* keep 4 bytes: the marker may straddle reads */
        c->sk->bytes += len - 4;
        evbuffer_drain(in, len - 4);
        c->at_start = false;
    }
    return false;
}

static void write_cb(struct bufferevent *bev, void *arg)
{
    conn_free(bev, arg);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
        conn_free(bev, arg);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    struct sconn *c = arg;
    struct sink *sk = c->sk;
    struct evbuffer *in = bufferevent_get_input(bev);
    for (;;) {
        if (c->in_bdat) {
            size_t len = evbuffer_get_length(in);
            size_t take = len < c->bdat_left ? len : (size_t)c->bdat_left;
            evbuffer_drain(in, take);
            c->bdat_left -= take;
            sk->bytes += take;
            if (c->bdat_left > 0)
                return;
            c->in_bdat = false;
            if (c->bdat_last) {
                sk->msgs++;
                reply(bev, "250 2.0.0 Ok: discarded\r\n");
            } else {
                reply(bev, "250 2.0.0 Ok: chunk\r\n");
            }
            continue;
        }
        if (c->in_data) {
            if (!eat_data(c, in))
                return;
            c->in_data = false;
            sk->msgs++;
            reply(bev, "250 2.0.0 Ok: discarded\r\n");
            continue;
        }
        size_t eol = 0;
        struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol, EVBUFFER_EOL_CRLF);
        if (p.pos < 0) {
            if (evbuffer_get_length(in) > MAX_LINE) {
                conn_free(bev, c);
                return;
            }
            return;
        }
        char line[MAX_LINE + 1];
        if ((size_t)p.pos > MAX_LINE) {
            conn_free(bev, c);
            return;
        }
        evbuffer_remove(in, line, (size_t)p.pos);
        evbuffer_drain(in, eol);
        line[p.pos] = '\0';
        if (str_iprefix(line, "EHLO")) {
            reply(bev, "250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n"
                       "250-CHUNKING\r\n250 SIZE 209715200\r\n");
        } else if (str_iprefix(line, "HELO") || str_iprefix(line, "LHLO")) {
            reply(bev, "250 sink.test\r\n");
        } else if (str_iprefix(line, "MAIL") || str_iprefix(line, "RSET") || str_iprefix(line, "NOOP")) {
            reply(bev, "250 2.0.0 Ok\r\n");
        } else if (str_iprefix(line, "RCPT")) {
            sk->rcpts++;
            reply(bev, "250 2.1.5 Ok\r\n");
        } else if (str_iprefix(line, "DATA")) {
            c->in_data = true;
            c->at_start = true;
            reply(bev, "354 End data with <CR><LF>.<CR><LF>\r\n");
        } else if (str_iprefix(line, "BDAT ")) {
            char *end = NULL;
            errno = 0;
            unsigned long long n = strtoull(line + 5, &end, 10);
            if (errno || end == line + 5 || (*end && !str_ieq(end, " LAST"))) {
                /* the chunk's length is unknown: the stream cannot be
                 * followed; close once the reply is written */
                reply(bev, "501 5.5.4 Syntax: BDAT size [LAST]\r\n");
                bufferevent_disable(bev, EV_READ);
                bufferevent_setcb(bev, NULL, write_cb, event_cb, c);
                return;
            }
            c->in_bdat = true;
            c->bdat_left = n;
            c->bdat_last = *end != '\0';
        } else if (str_iprefix(line, "QUIT")) {
            reply(bev, "221 2.0.0 Bye\r\n");
            /* close once the reply is written (write_cb) */
            bufferevent_disable(bev, EV_READ);
            bufferevent_setcb(bev, NULL, write_cb, event_cb, c);
            return;
        } else {
            reply(bev, "502 5.5.2 Not implemented\r\n");
        }
    }
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    struct sink *sk = arg;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct bufferevent *bev = bufferevent_socket_new(sk->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        close(fd);
        return;
    }
    struct sconn *c = xcalloc(1, sizeof(*c));
    c->sk = sk;
    sk->conns++;
    sk->open++;
    struct timeval tmo = {300, 0};
    bufferevent_set_timeouts(bev, &tmo, &tmo);
    bufferevent_setcb(bev, read_cb, NULL, event_cb, c);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    reply(bev, "220 sink.test ESMTP sink\r\n");
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct sink *sk = arg;
    if (sk->msgs != sk->written_msgs || sk->conns != sk->written_conns)
        write_stats(sk);
}

static void stop_cb(evutil_socket_t sig, short what, void *arg)
{
    struct sink *sk = arg;
    event_base_loopexit(sk->base, NULL);
}

int main(int argc, char **argv)
{
    struct sink sk = {0};
    const char *listen_on = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "l:s:")) != -1) {
        switch (opt) {
        case 'l': listen_on = optarg; break;
        case 's': sk.stats_path = optarg; break;
        default: listen_on = NULL; optind = argc + 1; break;
        }
    }
    if (!listen_on || !sk.stats_path || optind != argc) {
        fprintf(stderr, "usage: sink -l ADDRESS:PORT -s STATS-FILE\n");
        return 2;
    }
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    if (evutil_parse_sockaddr_port(listen_on, (struct sockaddr *)&ss, &sslen) != 0) {
        fprintf(stderr, "sink: bad address %s\n", listen_on);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    sk.base = event_base_new();
    if (!sk.base)
        return 1;
    struct evconnlistener *l =
        evconnlistener_new_bind(sk.base, accept_cb, &sk, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 4096,
                                (struct sockaddr *)&ss, sslen);
    if (!l) {
        fprintf(stderr, "sink: cannot listen on %s: %s\n", listen_on, strerror(errno));
        return 1;
    }
    write_stats(&sk);
    struct event *tick = event_new(sk.base, -1, EV_PERSIST, tick_cb, &sk);
    struct timeval tv = {0, 100000};
    event_add(tick, &tv);
    struct event *term = evsignal_new(sk.base, SIGTERM, stop_cb, &sk);
    struct event *intr = evsignal_new(sk.base, SIGINT, stop_cb, &sk);
    event_add(term, NULL);
    event_add(intr, NULL);
    event_base_dispatch(sk.base);
    write_stats(&sk);
    evconnlistener_free(l);
    event_free(tick);
    event_free(term);
    event_free(intr);
    event_base_free(sk.base);
    return 0;
}
