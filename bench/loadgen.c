/* loadgen: the benchmark's SMTP submission load client (make bench). Load
 * mode: C concurrent sessions back to back for -t seconds, each: connect,
 * EHLO, STARTTLS | implicit TLS | none, AUTH PLAIN, M messages of S bytes to
 * R recipients (MAIL+RCPT+DATA pipelined with -P, else one command, its
 * reply, the next), QUIT. Every reply code is checked; every TLS handshake
 * is a full one (no session cache, no tickets kept). Prints one JSON line:
 * messages/s, handshakes/s, p50/p99 transaction latency (MAIL sent -> 250
 * after the data), errors, and its own CPU time (getrusage) so that a run
 * where the client was the bottleneck shows. Idle mode (-I N, scenario d):
 * opens N TLS sessions (EHLO, STARTTLS, EHLO), prints a JSON "idle_ready"
 * line, holds them until stdin reaches EOF (or -t seconds), then closes them.
 * It shares a 2-core machine with the server under test, so it is built to
 * cost little CPU per message: one libevent event_base per thread (-j), one
 * persistent read event per socket (write interest only while a write is
 * blocked), OpenSSL straight on the fd (read-ahead, no bufferevent), a fixed
 * read buffer per session with replies parsed in place, command lines made
 * once, each command and each message body sent with one write.
 *
 *   loadgen -p PORT [-H 127.0.0.1] [-m starttls|implicit|plain] [-c 50]
 *           [-n 10] [-s 4096] [-r 1] [-t 10] [-P] [-j THREADS]
 *           [-u USER -w PASSWORD-FILE] [-f FROM] [-T RCPT-DOMAIN] [-I N]
 */
#define OPENSSL_SUPPRESS_DEPRECATED /* the ENGINE calls of legacy_ec_start() */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#if OPENSSL_VERSION_NUMBER >= 0x30000000L && OPENSSL_VERSION_NUMBER < 0x30200000L && !defined(OPENSSL_NO_ENGINE) && \
    !defined(OPENSSL_NO_DEPRECATED_3_0)
#define LEGACY_EC 1
#include <openssl/engine.h>
#endif

#include "core/util.h"

enum mode { MODE_STARTTLS, MODE_IMPLICIT, MODE_PLAIN };

/* PH_CONNECT: waiting for the greeting (or the implicit TLS handshake) */
enum phase { PH_CONNECT, PH_EHLO1, PH_STARTTLS, PH_HANDSHAKE, PH_EHLO2, PH_AUTH, PH_MAIL, PH_RCPT, PH_DATA, PH_BODY,
             PH_QUIT, PH_IDLE };

static const char *const phase_names[] = {"connect", "ehlo", "starttls", "handshake", "ehlo-tls", "auth",
                                          "mail", "rcpt", "data", "body", "quit", "idle"};

#define MAX_REPLY_LINE 2048
#define RBUF_SIZE 4096 /* > MAX_REPLY_LINE + CRLF */
#define MAX_ERRORS_SHOWN 5

struct opts {
    const char *host, *user, *from, *rcpt_domain;
    char pass[512];
    int port, conc, per_session, size, rcpts, seconds, pipeline, threads, idle, stall;
    enum mode mode;
};

/* Read-only after start: shared by all threads. */
struct shared {
    const struct opts *o;
    struct sockaddr_in sa;
    SSL_CTX *ctx;
    char *body; /* message + ".\r\n" */
    size_t body_len;
    char *envelope; /* MAIL + RCPTs + DATA: sent whole with -P, else line by line */
    size_t envelope_len;
    size_t *cmd_off; /* line i of the envelope: [cmd_off[i], cmd_off[i + 1]); MAIL, RCPTs, DATA */
    char auth_line[1600];
    double t_start, t_end;
};

struct stats {
    uint64_t msgs, sessions, handshakes, errors, idle_held;
    uint32_t *lat_us;
    size_t nlat, cap;
};

struct worker;

struct sess {
    struct worker *w;
    int fd;
    SSL *ssl;         /* once TLS started */
    bool handshaking; /* SSL_do_handshake not finished */
    struct event *ev; /* read (persistent), plus write while one is blocked */
    bool want_write;
    unsigned gen; /* bumped by sess_close: callers stop touching the old connection */
    enum phase ph;
    int msg_i, rcpt_i;
    double t0;
    int code; /* code of the reply being read (first line) */
    bool in_reply;
    bool active;
    size_t rest;     /* bytes after the reply line being handled */
    const char *out; /* unsent part of the last command (constant storage) */
    size_t out_len;
    struct event *retry;
    size_t rlen; /* bytes in rbuf: the start of a reply line not complete yet */
    char rbuf[RBUF_SIZE];
};

struct worker {
    const struct shared *sh;
    struct event_base *base;
    const struct timeval *tmo; /* 60 s, as a libevent common timeout */
    struct sess *sess;
    int nsess;
    struct stats st;
    bool stopping;
    int live;  /* sessions with a connection */
    int shown; /* errors printed */
    struct event *stop_ev, *grace_ev;
    pthread_t th;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sess_start(struct sess *s);
static void sess_cb(evutil_socket_t fd, short what, void *arg);

static void sess_close(struct sess *s)
{
    s->gen++;
    ERR_clear_error();
    if (s->ev) {
        event_free(s->ev);
        s->ev = NULL;
    }
    if (s->ssl) {
        SSL_free(s->ssl); /* no close_notify: the connection ends with QUIT */
        s->ssl = NULL;
    }
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    s->out_len = 0;
    s->rlen = 0;
    if (s->active) {
        s->active = false;
        s->w->live--;
        if (s->w->stopping && s->w->live == 0)
            event_base_loopexit(s->w->base, NULL);
    }
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    struct sess *s = arg;
    sess_start(s);
}

/* Ends the session: a failure counts as an error (and is shown for the first
 * few), then a new session starts after a short pause unless stopping. */
static void sess_fail(struct sess *s, const char *why, const char *detail)
{
    struct worker *w = s->w;
    if (!w->stopping || s->ph != PH_QUIT) {
        w->st.errors++;
        if (w->shown < MAX_ERRORS_SHOWN) {
            w->shown++;
            fprintf(stderr, "loadgen: session error in %s: %s%s%s\n", phase_names[s->ph], why, detail ? ": " : "",
                    detail ? detail : "");
        }
    }
    sess_close(s);
    if (!w->stopping && w->sh->o->idle == 0) {
        struct timeval tv = {0, 20000};
        evtimer_add(s->retry, &tv);
    }
}

/* The connection ended or broke (EOF, reset, TLS error, timeout). */
static void sess_lost(struct sess *s, const char *why, const char *detail)
{
    if (s->ph == PH_IDLE && s->w->stopping) {
        sess_close(s);
        return;
    }
    sess_fail(s, why, detail);
}

static void set_want_write(struct sess *s, bool on)
{
    if (s->want_write == on)
        return;
    s->want_write = on;
    event_del(s->ev);
    event_assign(s->ev, s->w->base, s->fd, (short)(EV_READ | EV_PERSIST | (on ? EV_WRITE : 0)), sess_cb, s);
    event_add(s->ev, s->w->sh->o->idle > 0 ? NULL : s->w->tmo);
}

/* After an I/O call (SSL_read/SSL_write/SSL_do_handshake, recv/send) that
 * returned R with errno ERR: 1 it did something, 0 wait for the socket, -1
 * the session ended. */
static int io_result(struct sess *s, ssize_t r, int err, bool reading)
{
    if (r > 0)
        return 1;
    int e;
    if (s->ssl)
        e = SSL_get_error(s->ssl, (int)r);
    else if (r == 0 && reading)
        e = SSL_ERROR_ZERO_RETURN;
    else if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR)
        e = reading ? SSL_ERROR_WANT_READ : SSL_ERROR_WANT_WRITE;
    else
        e = SSL_ERROR_SYSCALL;
    switch (e) {
    case SSL_ERROR_WANT_READ: return 0; /* the read event is always on */
    case SSL_ERROR_WANT_WRITE: set_want_write(s, true); return 0;
    case SSL_ERROR_ZERO_RETURN: sess_lost(s, "connection closed", NULL); return -1;
    default: break;
    }
    char detail[256];
    unsigned long ssl_err = ERR_get_error();
    if (ssl_err)
        ERR_error_string_n(ssl_err, detail, sizeof(detail));
    else
        snprintf(detail, sizeof(detail), "%s", err ? strerror(err) : "end of stream");
    sess_lost(s, "connection error", detail);
    return -1;
}

/* Writes what is left of s->out. -1: the session ended. */
static int flush_out(struct sess *s)
{
    while (s->out_len > 0) {
        size_t len = s->out_len > INT32_MAX ? INT32_MAX : s->out_len;
        ssize_t n = s->ssl ? SSL_write(s->ssl, s->out, (int)len) : send(s->fd, s->out, len, MSG_NOSIGNAL);
        int r = io_result(s, n, errno, false);
        if (r <= 0)
            return r;
        s->out += n;
        s->out_len -= (size_t)n;
    }
    if (s->want_write)
        set_want_write(s, false);
    return 0;
}

/* Sends one command (or the body): STR must outlive the write. Without -P a
 * reply comes after the whole command was sent, so nothing is queued. */
static void send_buf(struct sess *s, const char *str, size_t len)
{
    if (s->out_len > 0) {
        sess_fail(s, "reply before the previous command was sent", NULL);
        return;
    }
    s->out = str;
    s->out_len = len;
    flush_out(s);
}

static void send_str(struct sess *s, const char *str)
{
    send_buf(s, str, strlen(str));
}

static void send_cmd(struct sess *s, int i)
{
    const struct shared *sh = s->w->sh;
    send_buf(s, sh->envelope + sh->cmd_off[i], sh->cmd_off[i + 1] - sh->cmd_off[i]);
}

static void record_latency(struct worker *w, double sec)
{
    struct stats *st = &w->st;
    if (st->nlat == st->cap) {
        st->cap = st->cap ? st->cap * 2 : 4096;
        st->lat_us = xrealloc(st->lat_us, st->cap * sizeof(uint32_t));
    }
    double us = sec * 1e6;
    st->lat_us[st->nlat++] = us > 4e9 ? 4000000000u : (uint32_t)us;
}

static void start_transaction(struct sess *s)
{
    const struct shared *sh = s->w->sh;
    s->t0 = now_s();
    s->rcpt_i = 0;
    s->ph = PH_MAIL;
    if (sh->o->pipeline)
        send_buf(s, sh->envelope, sh->envelope_len);
    else
        send_cmd(s, 0);
}

static void send_quit(struct sess *s)
{
    s->ph = PH_QUIT;
    send_str(s, "QUIT\r\n");
}

/* After EHLO (on TLS when TLS is used): AUTH, idle, or the first message. */
static void session_ready(struct sess *s)
{
    const struct opts *o = s->w->sh->o;
    if (o->idle > 0) {
        s->ph = PH_IDLE;
        s->w->st.idle_held++;
        return;
    }
    if (s->w->stopping) {
        send_quit(s);
        return;
    }
    if (o->user && s->ph != PH_AUTH) {
        s->ph = PH_AUTH;
        send_str(s, s->w->sh->auth_line);
        return;
    }
    start_transaction(s);
}

/* Drives the TLS handshake; on completion counts it and goes on. */
static void handshake(struct sess *s)
{
    struct worker *w = s->w;
    int r = SSL_do_handshake(s->ssl);
    if (r != 1) {
        io_result(s, r, errno, true);
        return;
    }
    s->handshaking = false;
    ERR_clear_error(); /* SSL_get_error() needs an empty queue */
    if (SSL_session_reused(s->ssl)) {
        sess_fail(s, "TLS session resumed (every handshake must be a full one)", NULL);
        return;
    }
    if (w->sh->o->idle > 0 || now_s() <= w->sh->t_end)
        w->st.handshakes++;
    if (s->ph == PH_HANDSHAKE) {
        s->ph = PH_EHLO2;
        send_str(s, "EHLO loadgen.test\r\n");
    }
}

static int start_tls(struct sess *s)
{
    s->ssl = SSL_new(s->w->sh->ctx);
    if (!s->ssl || SSL_set_fd(s->ssl, s->fd) != 1)
        return -1;
    SSL_set_tlsext_host_name(s->ssl, "localhost");
    SSL_set_connect_state(s->ssl);
    s->handshaking = true;
    handshake(s);
    return 0;
}

static void handle_reply(struct sess *s, int code, const char *line)
{
    struct worker *w = s->w;
    const struct opts *o = w->sh->o;
    /* the reply each phase waits for, by enum phase */
    static const int want[] = {220, 250, 220, -1, 250, 235, 250, 250, 354, 250, 221, -1};
    _Static_assert(sizeof(want) / sizeof(want[0]) == PH_IDLE + 1, "one code per phase");
    if (code != want[s->ph]) {
        sess_fail(s, "unexpected reply", line);
        return;
    }
    switch (s->ph) {
    case PH_CONNECT:
        if (w->stopping && o->idle == 0) {
            send_quit(s);
            return;
        }
        s->ph = PH_EHLO1;
        send_str(s, "EHLO loadgen.test\r\n");
        break;
    case PH_EHLO1:
        if (o->mode == MODE_STARTTLS) {
            s->ph = PH_STARTTLS;
            send_str(s, "STARTTLS\r\n");
        } else {
            session_ready(s);
        }
        break;
    case PH_STARTTLS:
        if (s->rest > 0) {
            sess_fail(s, "data after the 220 to STARTTLS", NULL);
            return;
        }
        s->ph = PH_HANDSHAKE;
        s->rlen = 0;
        if (start_tls(s) != 0)
            sess_fail(s, "cannot start TLS", NULL);
        break;
    case PH_EHLO2:
    case PH_AUTH:
        session_ready(s);
        break;
    case PH_MAIL:
        s->ph = PH_RCPT;
        if (!o->pipeline)
            send_cmd(s, 1);
        break;
    case PH_RCPT:
        s->rcpt_i++;
        if (s->rcpt_i < o->rcpts) {
            if (!o->pipeline)
                send_cmd(s, 1 + s->rcpt_i);
        } else {
            s->ph = PH_DATA;
            if (!o->pipeline)
                send_cmd(s, 1 + o->rcpts);
        }
        break;
    case PH_DATA:
        s->ph = PH_BODY;
        send_buf(s, w->sh->body, w->sh->body_len);
        break;
    case PH_BODY: {
        double t = now_s();
        if (t <= w->sh->t_end) {
            record_latency(w, t - s->t0);
            w->st.msgs++;
        }
        s->msg_i++;
        if (s->msg_i < o->per_session && !w->stopping)
            start_transaction(s);
        else
            send_quit(s);
        break;
    }
    case PH_QUIT:
        if (!w->stopping)
            w->st.sessions++;
        sess_close(s);
        if (!w->stopping)
            sess_start(s);
        break;
    default:
        break;
    }
}

/* Handles the complete reply lines in rbuf (an EOL is LF or CRLF), in place.
 * False when the session moved on (closed, restarted, or started TLS). */
static bool parse_replies(struct sess *s)
{
    unsigned gen = s->gen;
    bool plain = s->ssl == NULL;
    char *p = s->rbuf, *end = s->rbuf + s->rlen, *nl;
    while ((nl = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        size_t len = (size_t)(nl - p);
        if (len > 0 && p[len - 1] == '\r')
            len--;
        if (len > MAX_REPLY_LINE) {
            sess_fail(s, "reply line too long", NULL);
            return false;
        }
        char *line = p;
        line[len] = '\0';
        p = nl + 1;
        if (len < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '9' || line[2] < '0' ||
            line[2] > '9' || (len > 3 && line[3] != ' ' && line[3] != '-')) {
            sess_fail(s, "malformed reply", line);
            return false;
        }
        int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
        if (s->in_reply && code != s->code) {
            sess_fail(s, "reply lines with different codes", line);
            return false;
        }
        if (len > 3 && line[3] == '-') {
            s->in_reply = true;
            s->code = code;
            continue;
        }
        s->in_reply = false;
        s->rest = (size_t)(end - p);
        handle_reply(s, code, line);
        if (s->gen != gen || plain != (s->ssl == NULL))
            return false;
    }
    size_t left = (size_t)(end - p);
    if (left > MAX_REPLY_LINE + 1) {
        sess_fail(s, "reply line too long", NULL);
        return false;
    }
    if (left > 0 && p != s->rbuf)
        memmove(s->rbuf, p, left);
    s->rlen = left;
    return true;
}

/* Reads what the socket (or the TLS record buffer) holds and handles the
 * replies. Level-triggered: stops once a read did not fill the buffer. */
static void read_replies(struct sess *s)
{
    for (;;) {
        size_t room = sizeof(s->rbuf) - s->rlen;
        ssize_t n = s->ssl ? SSL_read(s->ssl, s->rbuf + s->rlen, (int)room) : recv(s->fd, s->rbuf + s->rlen, room, 0);
        if (io_result(s, n, errno, true) <= 0)
            return;
        s->rlen += (size_t)n;
        if (!parse_replies(s))
            return;
        if (s->ssl ? !SSL_has_pending(s->ssl) : (size_t)n < room)
            return;
    }
}

static void sess_cb(evutil_socket_t fd, short what, void *arg)
{
    struct sess *s = arg;
    unsigned gen = s->gen;
    if (what & EV_TIMEOUT) {
        sess_lost(s, "timeout", NULL);
        return;
    }
    if ((what & EV_WRITE) && s->out_len == 0)
        set_want_write(s, false); /* a handshake step or SSL_read wanted to write: retried below */
    if (s->out_len > 0 && (flush_out(s) != 0 || s->gen != gen))
        return;
    if (s->handshaking) {
        handshake(s);
        if (s->gen != gen || s->handshaking)
            return;
    }
    read_replies(s);
}

static void sess_start(struct sess *s)
{
    struct worker *w = s->w;
    const struct shared *sh = w->sh;
    if (w->stopping)
        return;
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        sess_fail(s, "socket", strerror(errno));
        return;
    }
    s->active = true;
    w->live++;
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    s->ph = PH_CONNECT;
    s->msg_i = 0;
    s->in_reply = false;
    s->want_write = false;
    s->handshaking = false;
    if (connect(s->fd, (const struct sockaddr *)&sh->sa, sizeof(sh->sa)) != 0 && errno != EINPROGRESS) {
        sess_fail(s, "connect", strerror(errno));
        return;
    }
    s->ev = event_new(w->base, s->fd, EV_READ | EV_PERSIST, sess_cb, s);
    if (!s->ev) {
        sess_fail(s, "event_new", NULL);
        return;
    }
    event_add(s->ev, sh->o->idle > 0 ? NULL : w->tmo);
    if (sh->o->mode == MODE_IMPLICIT && start_tls(s) != 0)
        sess_fail(s, "SSL_new", NULL);
}

/* The end of the measured window: sessions finish the transaction they are
 * in, then QUIT; after a grace period the rest are dropped. */
static void grace_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < w->nsess; i++)
        if (w->sess[i].active)
            sess_close(&w->sess[i]);
    event_base_loopexit(w->base, NULL);
}

static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    w->stopping = true;
    for (int i = 0; i < w->nsess; i++)
        evtimer_del(w->sess[i].retry);
    if (w->live == 0) {
        event_base_loopexit(w->base, NULL);
        return;
    }
    struct timeval tv = {5, 0};
    evtimer_add(w->grace_ev, &tv);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < w->nsess; i++)
        sess_start(&w->sess[i]);
    event_base_dispatch(w->base);
    return NULL;
}

static void worker_init(struct worker *w, const struct shared *sh, int nsess)
{
    memset(w, 0, sizeof(*w));
    w->sh = sh;
    w->base = event_base_new();
    if (!w->base) {
        fprintf(stderr, "loadgen: event_base_new failed\n");
        exit(2);
    }
    struct timeval tmo = {60, 0};
    w->tmo = event_base_init_common_timeout(w->base, &tmo);
    w->nsess = nsess;
    w->sess = xcalloc((size_t)nsess, sizeof(struct sess));
    for (int i = 0; i < nsess; i++) {
        w->sess[i].w = w;
        w->sess[i].fd = -1;
        w->sess[i].retry = evtimer_new(w->base, retry_cb, &w->sess[i]);
    }
    w->stop_ev = evtimer_new(w->base, stop_cb, w);
    w->grace_ev = evtimer_new(w->base, grace_cb, w);
}

static void worker_free(struct worker *w)
{
    for (int i = 0; i < w->nsess; i++) {
        sess_close(&w->sess[i]);
        event_free(w->sess[i].retry);
    }
    event_free(w->stop_ev);
    event_free(w->grace_ev);
    event_base_free(w->base);
    free(w->sess);
    free(w->st.lat_us);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void make_message(struct shared *sh, const struct opts *o)
{
    struct strbuf b;
    sb_init(&b);
    sb_printf(&b,
              "From: <%s>\r\nTo: <r0@%s>\r\nSubject: loadgen %d bytes\r\nMessage-ID: <loadgen.%ld@loadgen.test>\r\n"
              "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n",
              o->from, o->rcpt_domain, o->size, (long)getpid());
    static const char text[] = "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.\r\n";
    while (b.len + sizeof(text) - 1 <= (size_t)o->size)
        sb_append(&b, text, sizeof(text) - 1);
    while (b.len + 2 < (size_t)o->size)
        sb_append(&b, "x", 1);
    sb_append(&b, "\r\n.\r\n", 5);
    sh->body_len = b.len;
    sh->body = sb_steal(&b);

    sh->cmd_off = xcalloc((size_t)o->rcpts + 3, sizeof(size_t));
    sb_printf(&b, "MAIL FROM:<%s>\r\n", o->from);
    for (int r = 0; r < o->rcpts; r++) {
        sh->cmd_off[1 + r] = b.len;
        sb_printf(&b, "RCPT TO:<r%d@%s>\r\n", r, o->rcpt_domain);
    }
    sh->cmd_off[1 + o->rcpts] = b.len;
    sb_puts(&b, "DATA\r\n");
    sh->cmd_off[2 + o->rcpts] = b.len;
    sh->envelope_len = b.len;
    sh->envelope = sb_steal(&b);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen -p PORT [-H HOST] [-m starttls|implicit|plain] [-c CONC] [-n MSGS/SESSION]\n"
            "               [-s SIZE] [-r RCPTS] [-t SECONDS] [-P] [-j THREADS] [-u USER -w PASSFILE]\n"
            "               [-f FROM] [-T RCPT-DOMAIN] [-I IDLE-SESSIONS [-S STALL-SECONDS]]\n");
    exit(2);
}

static double tv_s(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return tv_s(ru.ru_utime) + tv_s(ru.ru_stime);
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
    const char *passfile = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "H:p:m:c:n:s:r:t:Pj:u:w:f:T:I:S:")) != -1) {
        switch (opt) {
        case 'H': o->host = optarg; break;
        case 'p': o->port = atoi(optarg); break;
        case 'm':
            if (!strcmp(optarg, "starttls"))
                o->mode = MODE_STARTTLS;
            else if (!strcmp(optarg, "implicit"))
                o->mode = MODE_IMPLICIT;
            else if (!strcmp(optarg, "plain"))
                o->mode = MODE_PLAIN;
            else
                usage();
            break;
        case 'c': o->conc = atoi(optarg); break;
        case 'n': o->per_session = atoi(optarg); break;
        case 's': o->size = atoi(optarg); break;
        case 'r': o->rcpts = atoi(optarg); break;
        case 't': o->seconds = atoi(optarg); break;
        case 'P': o->pipeline = 1; break;
        case 'j': o->threads = atoi(optarg); break;
        case 'u': o->user = optarg; break;
        case 'w': passfile = optarg; break;
        case 'f': o->from = optarg; break;
        case 'T': o->rcpt_domain = optarg; break;
        case 'I': o->idle = atoi(optarg); break;
        case 'S': o->stall = atoi(optarg); break;
        default: usage();
        }
    }
    if (optind != argc || o->port <= 0 || o->port > 65535 || o->conc <= 0 || o->conc > 100000 ||
        o->per_session <= 0 || o->size < 200 || o->size > 64 * 1024 * 1024 || o->rcpts <= 0 || o->rcpts > 100 ||
        o->seconds <= 0 || o->threads <= 0 || o->threads > 64 || o->idle < 0 || o->idle > 100000 || o->stall <= 0 ||
        (o->user && !passfile) || strlen(o->from) > 256 || strlen(o->rcpt_domain) > 256 ||
        (o->user && strlen(o->user) > 256))
        usage();
    if (passfile) {
        FILE *f = fopen(passfile, "r");
        if (!f || !fgets(o->pass, sizeof(o->pass), f)) {
            fprintf(stderr, "loadgen: cannot read %s\n", passfile);
            if (f)
                fclose(f);
            return -1;
        }
        fclose(f);
        o->pass[strcspn(o->pass, "\r\n")] = '\0';
    }
    return 0;
}

static void make_auth_line(struct shared *sh, const struct opts *o)
{
    unsigned char raw[1100];
    size_t ul = strlen(o->user), pl = strlen(o->pass);
    raw[0] = '\0';
    memcpy(raw + 1, o->user, ul);
    raw[1 + ul] = '\0';
    memcpy(raw + 2 + ul, o->pass, pl);
    char b64[1500];
    EVP_EncodeBlock((unsigned char *)b64, raw, (int)(2 + ul + pl));
    snprintf(sh->auth_line, sizeof(sh->auth_line), "AUTH PLAIN %s\r\n", b64);
}

/* Idle mode (scenario d): a 10 ms tick keeps at most -c sessions opening at
 * once until all -I are idle after EHLO on TLS, or none got there for -S
 * seconds; then the "idle_ready" line is printed and the sessions are held
 * until stdin reaches EOF or -t seconds pass. */
struct idle_ctx {
    struct worker *w;
    int next;
    bool ready;
    uint64_t last_done, held;
    double t0, last_progress, open_s;
    struct event *tick, *in, *hold;
};

static void idle_report(struct idle_ctx *ic)
{
    struct worker *w = ic->w;
    const struct opts *o = w->sh->o;
    ic->ready = true;
    ic->open_s = now_s() - ic->t0;
    for (int i = 0; i < w->nsess; i++) {
        if (w->sess[i].active && w->sess[i].ph == PH_IDLE)
            ic->held++;
        else if (w->sess[i].active)
            sess_close(&w->sess[i]); /* did not get through: not held */
    }
    ic->last_done = w->st.errors;
    printf("{\"event\":\"idle_ready\",\"wanted\":%d,\"held\":%llu,\"errors\":%llu,\"open_s\":%.2f,"
           "\"handshakes_per_s\":%.1f}\n",
           o->idle, (unsigned long long)ic->held, (unsigned long long)w->st.errors, ic->open_s,
           ic->open_s > 0 ? (double)w->st.handshakes / ic->open_s : 0.0);
    fflush(stdout);
    struct timeval tv = {o->seconds, 0};
    evtimer_add(ic->hold, &tv);
    event_add(ic->in, NULL);
}

static void idle_tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct idle_ctx *ic = arg;
    struct worker *w = ic->w;
    const struct opts *o = w->sh->o;
    if (ic->ready)
        return;
    int pending = 0;
    for (int i = 0; i < ic->next; i++)
        if (w->sess[i].active && w->sess[i].ph != PH_IDLE)
            pending++;
    while (pending < o->conc && ic->next < o->idle) {
        sess_start(&w->sess[ic->next++]);
        pending++;
    }
    double t = now_s();
    uint64_t done = w->st.idle_held + w->st.errors;
    if (done != ic->last_done) {
        ic->last_done = done;
        ic->last_progress = t;
    }
    if ((ic->next == o->idle && pending == 0) || t - ic->last_progress > o->stall || t - ic->t0 > o->seconds)
        idle_report(ic);
}

static void idle_end_cb(evutil_socket_t fd, short what, void *arg)
{
    struct idle_ctx *ic = arg;
    if (what & EV_READ) {
        char buf[256];
        ssize_t r = read(0, buf, sizeof(buf));
        if (r > 0 || (r < 0 && (errno == EAGAIN || errno == EINTR)))
            return;
    }
    event_base_loopexit(ic->w->base, NULL);
}

static int run_idle(struct shared *sh, const struct opts *o)
{
    struct worker w;
    worker_init(&w, sh, o->idle);
    struct idle_ctx ic = {.w = &w, .t0 = now_s()};
    ic.last_progress = ic.t0;
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    ic.tick = event_new(w.base, -1, EV_PERSIST, idle_tick_cb, &ic);
    ic.in = event_new(w.base, 0, EV_READ | EV_PERSIST, idle_end_cb, &ic);
    ic.hold = evtimer_new(w.base, idle_end_cb, &ic);
    struct timeval tv = {0, 10000};
    event_add(ic.tick, &tv);
    idle_tick_cb(-1, 0, &ic);
    event_base_dispatch(w.base);
    w.stopping = true;
    uint64_t dropped = w.st.errors - ic.last_done;
    printf("{\"event\":\"idle_done\",\"held\":%llu,\"dropped_while_held\":%llu,\"client_cpu_s\":%.2f}\n",
           (unsigned long long)ic.held, (unsigned long long)dropped, cpu_s());
    event_free(ic.tick);
    event_free(ic.in);
    event_free(ic.hold);
    worker_free(&w);
    return ic.held == (uint64_t)o->idle && dropped == 0 ? 0 : 1;
}

static int accept_any_cert(X509_STORE_CTX *store, void *arg)
{
    return 1;
}

#ifdef LEGACY_EC
/* OpenSSL 3.0 and 3.1 decode the server certificate's public key in every
 * handshake with a decoder context built from scratch (openssl issue 17950;
 * 3.2 caches it): a quarter of this client's CPU in scenario (b). With an
 * engine offering OpenSSL's own built-in EC key method, d2i_X509 takes the
 * legacy EC decoder instead, and that same built-in code checks the server's
 * signature. Only this process's CPU changes: not the wire, not the server. */
static int ec_pkey_meths(ENGINE *e, EVP_PKEY_METHOD **pmeth, const int **nids, int nid)
{
    static const int ec_nids[] = {EVP_PKEY_EC};
    if (!pmeth) {
        *nids = ec_nids;
        return 1;
    }
    *pmeth = nid == EVP_PKEY_EC ? (EVP_PKEY_METHOD *)EVP_PKEY_meth_find(EVP_PKEY_EC) : NULL;
    return *pmeth != NULL;
}

static ENGINE *legacy_ec_start(void)
{
    ENGINE *e = ENGINE_new();
    if (e && ENGINE_set_id(e, "loadgen-ec") && ENGINE_set_name(e, "built-in EC key method") &&
        ENGINE_set_pkey_meths(e, ec_pkey_meths) && ENGINE_init(e)) {
        if (ENGINE_register_pkey_meths(e))
            return e;
        ENGINE_finish(e);
    }
    ENGINE_free(e); /* not fatal: the provider decoders do the same, slower */
    ERR_clear_error();
    return NULL;
}

static void legacy_ec_stop(ENGINE *e)
{
    if (e) {
        ENGINE_unregister_pkey_meths(e);
        ENGINE_finish(e);
        ENGINE_free(e);
    }
}
#endif

int main(int argc, char **argv)
{
    struct opts o = {.host = "127.0.0.1", .from = "bench@example.test", .rcpt_domain = "sink.test", .conc = 50,
                     .per_session = 10, .size = 4096, .rcpts = 1, .seconds = 10, .threads = 1, .stall = 5,
                     .mode = MODE_STARTTLS};
    if (parse_opts(argc, argv, &o) != 0)
        return 2;
    if (o.idle > 0 && o.mode == MODE_PLAIN)
        usage();
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();

    struct shared sh;
    memset(&sh, 0, sizeof(sh));
    sh.o = &o;
    sh.sa.sin_family = AF_INET;
    sh.sa.sin_port = htons((uint16_t)o.port);
    if (inet_pton(AF_INET, o.host, &sh.sa.sin_addr) != 1) {
        fprintf(stderr, "loadgen: -H takes an IPv4 address\n");
        return 2;
    }
    make_message(&sh, &o);
    if (o.user)
        make_auth_line(&sh, &o);
#ifdef LEGACY_EC
    ENGINE *legacy_ec = legacy_ec_start();
#endif
    sh.ctx = SSL_CTX_new(TLS_client_method());
    if (!sh.ctx)
        return 2;
    /* Loopback benchmark against our own test certificate: no verification.
     * No session resumption: every handshake is a full one. */
    SSL_CTX_set_verify(sh.ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(sh.ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(sh.ctx, SSL_OP_NO_TICKET | SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* Local settings only (the ClientHello is unchanged): read whole records
     * with one read(2), writes that may complete in parts, no buffer release
     * between records, and no X509 chain verification (SSL_VERIFY_NONE would
     * run it and ignore the result). */
    SSL_CTX_set_read_ahead(sh.ctx, 1);
    SSL_CTX_set_mode(sh.ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (o.idle > 0) /* many sessions that do nothing: their buffers can go */
        SSL_CTX_set_mode(sh.ctx, SSL_MODE_RELEASE_BUFFERS);
    else
        SSL_CTX_clear_mode(sh.ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_cert_verify_callback(sh.ctx, accept_any_cert, NULL);

    int rc;
    if (o.idle > 0) {
        rc = run_idle(&sh, &o);
    } else {
        if (o.threads > o.conc)
            o.threads = o.conc;
        struct worker *ws = xcalloc((size_t)o.threads, sizeof(struct worker));
        for (int i = 0; i < o.threads; i++)
            worker_init(&ws[i], &sh, o.conc / o.threads + (i < o.conc % o.threads));
        double cpu0 = cpu_s();
        sh.t_start = now_s();
        sh.t_end = sh.t_start + o.seconds;
        for (int i = 0; i < o.threads; i++) {
            struct timeval tv = {o.seconds, 0};
            evtimer_add(ws[i].stop_ev, &tv);
            pthread_create(&ws[i].th, NULL, worker_main, &ws[i]);
        }
        struct stats tot = {0};
        for (int i = 0; i < o.threads; i++) {
            pthread_join(ws[i].th, NULL);
            tot.msgs += ws[i].st.msgs;
            tot.sessions += ws[i].st.sessions;
            tot.handshakes += ws[i].st.handshakes;
            tot.errors += ws[i].st.errors;
            tot.nlat += ws[i].st.nlat;
        }
        double cpu = cpu_s() - cpu0;
        double el = (double)o.seconds;
        uint32_t *lat = xmalloc((tot.nlat ? tot.nlat : 1) * sizeof(uint32_t));
        size_t k = 0;
        for (int i = 0; i < o.threads; i++) {
            if (ws[i].st.nlat)
                memcpy(lat + k, ws[i].st.lat_us, ws[i].st.nlat * sizeof(uint32_t));
            k += ws[i].st.nlat;
        }
        qsort(lat, tot.nlat, sizeof(uint32_t), cmp_u32);
        double p50 = tot.nlat ? lat[tot.nlat / 2] / 1000.0 : 0;
        double p99 = tot.nlat ? lat[(tot.nlat * 99) / 100] / 1000.0 : 0;
        double pmax = tot.nlat ? lat[tot.nlat - 1] / 1000.0 : 0;
        static const char *const mode_names[] = {"starttls", "implicit", "plain"};
        printf("{\"mode\":\"%s\",\"conc\":%d,\"per_session\":%d,\"size\":%d,\"rcpts\":%d,\"pipeline\":%d,"
               "\"threads\":%d,\"seconds\":%d,\"msgs\":%llu,\"msgs_per_s\":%.1f,\"sessions\":%llu,"
               "\"handshakes\":%llu,\"handshakes_per_s\":%.1f,\"p50_ms\":%.2f,\"p99_ms\":%.2f,\"max_ms\":%.2f,"
               "\"errors\":%llu,\"client_cpu_s\":%.2f,\"client_cpu_pct\":%.1f}\n",
               mode_names[o.mode], o.conc, o.per_session, o.size, o.rcpts, o.pipeline, o.threads, o.seconds,
               (unsigned long long)tot.msgs, (double)tot.msgs / el, (unsigned long long)tot.sessions,
               (unsigned long long)tot.handshakes, (double)tot.handshakes / el, p50, p99, pmax,
               (unsigned long long)tot.errors, cpu, 100.0 * cpu / el);
        free(lat);
        for (int i = 0; i < o.threads; i++)
            worker_free(&ws[i]);
        free(ws);
        rc = tot.errors ? 1 : 0;
    }
    SSL_CTX_free(sh.ctx);
#ifdef LEGACY_EC
    legacy_ec_stop(legacy_ec);
#endif
    free(sh.body);
    free(sh.envelope);
    free(sh.cmd_off);
    return rc;
}
