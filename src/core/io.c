/* io: the connection layer (see io.h): libevent events on the socket,
 * evbuffers for input and output, OpenSSL directly on the fd for TLS.
 *
 * Why not bufferevents: a socket or OpenSSL bufferevent adds the fd's
 * write interest to epoll when a reply is queued, waits for the loop to
 * report it writable, writes, and removes the interest again: two
 * epoll_ctl calls and one more loop round per reply (about 12 epoll_ctl
 * per message in the benchmark's scenario a). Here a reply is written from
 * the loop's own active queue right after the callback that queued it
 * (several io_write calls in one callback become one write, one TLS
 * record), and write interest is added only when the socket is full.
 * Pausing input (io_read_enable(0), e.g. while a message is committed)
 * keeps the read event registered: what arrives meanwhile is buffered and
 * handed over when input is enabled again. Input the owner has not taken
 * is bounded (IO_INPUT_MAX) either way: a client that floods commands and
 * reads no replies is not read from until the session catches up.
 *
 * Callbacks into the owner (rd, drained, ev) are always the last thing a
 * handler does: the owner may free the io from inside them.
 *
 * STARTTLS waits until every reply queued so far (the "220 Ready to start
 * TLS" included) has reached the socket, reading nothing meanwhile; then
 * any plaintext input already buffered is dropped and OpenSSL takes the fd.
 * Bytes the client sent after STARTTLS and that are still in the kernel are
 * read by OpenSSL as TLS records and make the handshake fail.
 *
 * OpenSSL reads the socket itself (read-ahead on) but writes into io->wire
 * through a BIO of ours that never blocks; the io writes the wire bytes to
 * the socket. So what OpenSSL produces in separate calls leaves together:
 * the TLS 1.3 session ticket written at the end of the handshake goes out
 * with the reply to the command that came with the client's Finished. */
#include "core/io.h"

#include <errno.h>
#include <openssl/err.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"

#define IO_READ_CHUNK 16384
#define IO_WRITE_CHUNK 16384
/* TLS output encrypted ahead of the socket (io->wire) before writing */
#define IO_WIRE_BATCH (4 * IO_WRITE_CHUNK)
/* Input buffered and not yet taken by the owner (paused, or not taking
 * commands while its replies are not being read) before reading stops;
 * it goes on when the owner drains below it. Above the longest line the
 * session accepts (64 KiB), so a session that runs always makes progress. */
#define IO_INPUT_MAX (256 * 1024)

struct io {
    struct event_base *base;
    int fd;
    SSL *ssl;         /* TLS on (handshaking or done) */
    SSL *pending_ssl; /* STARTTLS waiting for output to drain */
    int pending_server;
    int handshaking;
    struct event *rev;  /* EV_READ | EV_PERSIST on fd */
    struct event *wev;  /* EV_WRITE | EV_PERSIST on fd, added while output is blocked */
    struct event *kick; /* not on the fd: runs flushes and deferred input from the active queue */
    struct evbuffer *in, *out;
    struct evbuffer *wire; /* TLS records OpenSSL wrote, not yet on the socket */
    int read_on;     /* the owner wants input */
    int rev_on;      /* rev is added */
    int wev_on;      /* wev is added */
    int kicked;      /* kick is active */
    int input_full;  /* reading stopped at IO_INPUT_MAX */
    int eof;         /* the peer closed, or reading failed */
    int eof_told;    /* ... and the owner was told */
    int eof_input_given; /* input buffered before it was handed over once */
    io_read_cb rd;
    io_drain_cb drained;
    io_event_cb ev;
    void *arg;
    unsigned read_ms, write_ms;
};

static void kick(struct io *io)
{
    if (!io->kicked) {
        io->kicked = 1;
        event_active(io->kick, 0, 0);
    }
}

static void tv_ms(struct timeval *tv, unsigned ms)
{
    tv->tv_sec = (time_t)(ms / 1000);
    tv->tv_usec = (suseconds_t)(ms % 1000) * 1000;
}

/* (Re)adds the read event: with the read timeout while the owner wants
 * input; reading stops only after the end of input, while IO_INPUT_MAX is
 * buffered, or while STARTTLS drains output and input arrives (the event
 * stays registered until then: the swap normally follows at once, and
 * removing and re-adding it would cost two epoll_ctl). Re-adding a pending
 * event only moves its timer (no epoll_ctl). */
static void arm_read(struct io *io)
{
    io->input_full = !io->handshaking && evbuffer_get_length(io->in) >= IO_INPUT_MAX;
    int want = !io->eof && !io->input_full;
    if (!want) {
        if (io->rev_on) {
            event_del(io->rev);
            io->rev_on = 0;
        }
        return;
    }
    struct timeval tv;
    tv_ms(&tv, io->read_ms);
    int timed = io->read_ms && (io->read_on || io->handshaking);
    event_add(io->rev, timed ? &tv : NULL);
    io->rev_on = 1;
}

static void arm_write(struct io *io, int on)
{
    if (!on) {
        if (io->wev_on) {
            event_del(io->wev);
            io->wev_on = 0;
        }
        return;
    }
    struct timeval tv;
    tv_ms(&tv, io->write_ms);
    event_add(io->wev, io->write_ms ? &tv : NULL);
    io->wev_on = 1;
}

static void log_ssl_errors(struct io *io, const char *what)
{
    unsigned long e;
    int n = 0;
    while ((e = ERR_get_error()) != 0) {
        if (n++ >= 4)
            continue; /* drain the rest */
        char buf[256];
        ERR_error_string_n(e, buf, sizeof(buf));
        if (log_enabled(LOG_LVL_DEBUG))
            logkv(LOG_LVL_DEBUG, NULL, "io.tls_error", "fd=%d during=%s error=%s", io->fd, what,
                  log_q((char[LOGQ_MAX]){0}, LOGQ_MAX, buf));
    }
}

/* ---- reading ------------------------------------------------------------------ */

enum rd_res { RD_DATA, RD_NONE, RD_EOF, RD_ERR };

/* One read from the socket (plain) or OpenSSL (as long as it holds
 * decrypted or read-ahead bytes) into io->in. */
static enum rd_res read_some(struct io *io)
{
    enum rd_res res = RD_NONE;
    for (;;) {
        struct evbuffer_iovec v;
        if (evbuffer_reserve_space(io->in, IO_READ_CHUNK, &v, 1) < 1)
            return RD_ERR;
        size_t room = v.iov_len < IO_READ_CHUNK ? v.iov_len : IO_READ_CHUNK;
        if (!io->ssl) {
            ssize_t r = read(io->fd, v.iov_base, room);
            if (r > 0) {
                v.iov_len = (size_t)r;
                evbuffer_commit_space(io->in, &v, 1);
                return RD_DATA; /* level-triggered: more comes as another event */
            }
            evbuffer_commit_space(io->in, &v, 0);
            if (r == 0)
                return RD_EOF;
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return RD_NONE;
            return RD_ERR;
        }
        ERR_clear_error();
        int r = SSL_read(io->ssl, v.iov_base, (int)room);
        if (r > 0) {
            v.iov_len = (size_t)r;
            evbuffer_commit_space(io->in, &v, 1);
            res = RD_DATA;
            if (SSL_has_pending(io->ssl))
                continue;
            return res;
        }
        evbuffer_commit_space(io->in, &v, 0);
        int err = SSL_get_error(io->ssl, r);
        if (evbuffer_get_length(io->wire) > 0)
            kick(io); /* OpenSSL answered something (a key update): it goes out with the next flush */
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
            return res; /* (no WANT_WRITE: the wire BIO never blocks) */
        if (err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0))
            return res == RD_DATA ? res : RD_EOF; /* close_notify, or a close without it (allowed) */
        log_ssl_errors(io, "read");
        return res == RD_DATA ? res : RD_ERR;
    }
}

/* ---- writing ------------------------------------------------------------------- */

/* Writes buf (io->out when plain, io->wire with TLS) to the socket.
 * 0 (empty), 1 (blocked: wev added), -1 (error). */
static int send_all(struct io *io, struct evbuffer *buf)
{
    while (evbuffer_get_length(buf) > 0) {
        struct evbuffer_iovec v[8];
        int nv = evbuffer_peek(buf, -1, NULL, v, 8);
        struct msghdr mh = {.msg_iov = (struct iovec *)v, .msg_iovlen = (size_t)(nv < 8 ? nv : 8)};
        ssize_t r = sendmsg(io->fd, &mh, MSG_NOSIGNAL);
        if (r > 0) {
            evbuffer_drain(buf, (size_t)r);
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            arm_write(io, 1);
            return 1;
        }
        return -1;
    }
    return 0;
}

/* Writes what io->out holds until it is empty or the socket is full; with
 * TLS, up to IO_WIRE_BATCH is encrypted into io->wire (after anything
 * OpenSSL wrote there itself) and written in one go.
 * 0 (out empty), 1 (blocked: wev added), -1 (error). */
static int flush_out(struct io *io)
{
    if (io->ssl) {
        for (;;) {
            while (evbuffer_get_length(io->out) > 0 && evbuffer_get_length(io->wire) < IO_WIRE_BATCH) {
                size_t len = evbuffer_get_length(io->out);
                size_t n = len < IO_WRITE_CHUNK ? len : IO_WRITE_CHUNK;
                const void *p = evbuffer_pullup(io->out, (ev_ssize_t)n);
                ERR_clear_error();
                int r = SSL_write(io->ssl, p, (int)n);
                if (r <= 0) { /* the wire BIO takes everything: only a failure gets here */
                    log_ssl_errors(io, "write");
                    return -1;
                }
                evbuffer_drain(io->out, (size_t)r);
            }
            int rc = send_all(io, io->wire);
            if (rc != 0 || evbuffer_get_length(io->out) == 0)
                return rc;
        }
    }
    return send_all(io, io->out);
}

/* ---- the TLS start ----------------------------------------------------------- */

/* OpenSSL's write side: appends to io->wire, never blocks; a flush is a
 * no-op (the io writes the wire when its callback is done). */
static int wire_bio_write(BIO *b, const char *data, int len)
{
    struct io *io = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0)
        return 0;
    return evbuffer_add(io->wire, data, (size_t)len) == 0 ? len : -1;
}

static long wire_bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int wire_bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static BIO_METHOD *wire_bio_method;
static pthread_once_t wire_bio_once = PTHREAD_ONCE_INIT;

static void wire_bio_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "submitd io wire");
    if (m && BIO_meth_set_write(m, wire_bio_write) && BIO_meth_set_ctrl(m, wire_bio_ctrl) &&
        BIO_meth_set_create(m, wire_bio_create)) {
        wire_bio_method = m;
        return;
    }
    BIO_meth_free(m);
}

/* OpenSSL reads the fd and writes into io->wire. 0 or -1. */
static int tls_attach(struct io *io, SSL *ssl, int server)
{
    pthread_once(&wire_bio_once, wire_bio_init);
    BIO *wbio = wire_bio_method ? BIO_new(wire_bio_method) : NULL;
    if (!wbio || !SSL_set_rfd(ssl, io->fd)) {
        BIO_free(wbio);
        SSL_free(ssl);
        return -1;
    }
    BIO_set_data(wbio, io);
    SSL_set0_wbio(ssl, wbio);
    io->ssl = ssl;
    io->handshaking = 1;
    SSL_set_read_ahead(ssl, 1); /* one read per socket chunk, not two per record */
    /* a peer that closes without close_notify (many SMTP clients do) is an
     * EOF, not a fatal error: OpenSSL 3 would otherwise send a decode_error
     * alert and refuse to write the replies still owed (SMTP frames its own
     * data, so a cut-off stream cannot pass for a complete message) */
    SSL_set_options(ssl, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (server)
        SSL_set_accept_state(ssl);
    else
        SSL_set_connect_state(ssl);
    return 0;
}

/* Drops buffered plaintext and hands the fd to OpenSSL (out is empty).
 * 0, or -1 (no TLS: the connection is unusable). */
static int swap_to_tls(struct io *io)
{
    SSL *ssl = io->pending_ssl;
    io->pending_ssl = NULL;
    evbuffer_drain(io->in, evbuffer_get_length(io->in));
    if (tls_attach(io, ssl, io->pending_server) != 0) {
        io->eof = 1;
        arm_read(io);
        return -1;
    }
    arm_read(io); /* a server waits for the hello on the read event */
    if (!io->pending_server)
        kick(io); /* a client sends its hello first */
    return 0;
}

/* Runs the handshake. 1 finished, 0 in progress, -1 failed. What OpenSSL
 * wrote goes out now while in progress; when finished (the TLS 1.3 session
 * ticket) it waits for the first reply (on_kick). */
static int handshake(struct io *io)
{
    ERR_clear_error();
    int r = SSL_do_handshake(io->ssl);
    if (r == 1) {
        io->handshaking = 0;
        arm_write(io, 0);
        arm_read(io);
        return 1;
    }
    int err = SSL_get_error(io->ssl, r);
    int rc = send_all(io, io->wire);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        if (rc == 0)
            arm_write(io, 0);
        return rc < 0 ? -1 : 0;
    }
    log_ssl_errors(io, "handshake");
    return -1;
}

/* ---- event handlers (each ends with at most one owner callback) --------------- */

/* The handshake step of any event. 1: the event is handled (done or owner
 * called). */
static int handshake_step(struct io *io)
{
    int h = handshake(io);
    if (h == 0)
        return 1;
    if (h < 0) {
        if (io->ev)
            io->ev(io, IO_EV_ERROR, io->arg);
        return 1;
    }
    /* read-ahead may hold the client's first command already */
    kick(io);
    if (io->ev)
        io->ev(io, IO_EV_TLS_READY, io->arg);
    return 1;
}

/* Input arrived (or was left buffered): read, then tell the owner. */
static void do_input(struct io *io, int from_socket)
{
    enum rd_res r = from_socket ? read_some(io) : RD_NONE;
    if (r == RD_EOF || r == RD_ERR) {
        io->eof = 1; /* nothing more to read: the read event goes */
        arm_read(io);
        if (!io->read_on)
            return; /* paused: the owner hears it when it wants input again */
        io->eof_told = 1;
        if (io->ev)
            io->ev(io, r == RD_EOF ? IO_EV_EOF : IO_EV_ERROR, io->arg);
        return;
    }
    if (evbuffer_get_length(io->in) >= IO_INPUT_MAX)
        arm_read(io); /* full: no more reading until the owner takes some */
    if (!io->read_on)
        return;
    if (evbuffer_get_length(io->in) > 0 && io->rd)
        io->rd(io, io->arg);
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    struct io *io = arg;
    (void)fd;
    if (what & EV_TIMEOUT) {
        /* event_add(NULL) keeps an earlier timeout rather than pay for an
         * event_del: a timer from before a pause or a change is ignored */
        if ((io->read_on || io->handshaking) && io->read_ms && io->ev)
            io->ev(io, IO_EV_TIMEOUT, io->arg);
        return;
    }
    if (io->pending_ssl) { /* input before the STARTTLS swap: not read until then */
        event_del(io->rev);
        io->rev_on = 0;
        return;
    }
    if (io->handshaking) {
        handshake_step(io);
        return;
    }
    do_input(io, 1);
}

/* Output went out: drained callback, or the STARTTLS swap. */
static void after_flush(struct io *io, int rc)
{
    if (rc < 0) {
        if (io->ev)
            io->ev(io, IO_EV_ERROR, io->arg);
        return;
    }
    if (rc > 0)
        return;
    arm_write(io, 0);
    if (io->eof && !io->eof_told && io->read_on)
        kick(io); /* an EOF seen while paused, not yet told */
    if (io->pending_ssl) {
        if (swap_to_tls(io) != 0 && io->ev)
            io->ev(io, IO_EV_ERROR, io->arg);
        return;
    }
    if (io->drained)
        io->drained(io, io->arg);
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    struct io *io = arg;
    (void)fd;
    if (what & EV_TIMEOUT) {
        if (io->write_ms && io->ev) /* (an earlier timeout, as in on_read, is ignored) */
            io->ev(io, IO_EV_TIMEOUT, io->arg);
        return;
    }
    if (io->handshaking) { /* the handshake's flight went out in part */
        int rc = send_all(io, io->wire);
        if (rc == 0)
            arm_write(io, 0); /* the handshake goes on when the peer answers */
        else if (rc < 0 && io->ev)
            io->ev(io, IO_EV_ERROR, io->arg);
        return;
    }
    after_flush(io, flush_out(io));
}

/* From the active queue: the handshake's first step, queued output, or
 * input buffered while paused (or left in OpenSSL's read-ahead). */
static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    struct io *io = arg;
    (void)fd;
    (void)what;
    io->kicked = 0;
    if (io->handshaking) {
        handshake_step(io);
        return;
    }
    int input_waiting = io->read_on && !io->eof && !io->pending_ssl &&
                        (evbuffer_get_length(io->in) > 0 || (io->ssl && SSL_has_pending(io->ssl)));
    if (evbuffer_get_length(io->out) == 0 && evbuffer_get_length(io->wire) > 0 && input_waiting &&
        !io->wev_on) {
        /* only what OpenSSL wrote itself (the session ticket): it leaves
         * with the reply to the input waiting, next round */
        kick(io);
        do_input(io, io->ssl && SSL_has_pending(io->ssl));
        return;
    }
    if ((evbuffer_get_length(io->out) > 0 || evbuffer_get_length(io->wire) > 0) && !io->wev_on) {
        int rc = flush_out(io);
        if (rc == 0 && !io->pending_ssl && io->read_on &&
            (evbuffer_get_length(io->in) > 0 || (io->ssl && SSL_has_pending(io->ssl))))
            kick(io); /* input too: next round, after the drained callback (an EOF: after_flush) */
        after_flush(io, rc);
        return;
    }
    if (!io->read_on)
        return;
    if (io->eof) {
        if (io->eof_told)
            return;
        if (evbuffer_get_length(io->in) > 0 && io->rd && !io->eof_input_given) {
            io->eof_input_given = 1;
            kick(io); /* the EOF after the owner has seen the input */
            io->rd(io, io->arg);
            return;
        }
        io->eof_told = 1;
        if (io->ev)
            io->ev(io, IO_EV_EOF, io->arg);
        return;
    }
    do_input(io, io->ssl && SSL_has_pending(io->ssl));
}

/* The owner took input: reading goes on once below IO_INPUT_MAX. */
static void on_input_drained(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct io *io = arg;
    if (io->input_full && info->n_deleted > 0 && evbuffer_get_length(buf) < IO_INPUT_MAX)
        arm_read(io);
}

/* ---- API ----------------------------------------------------------------------- */

static struct io *io_alloc(struct event_base *base, int fd)
{
    struct io *io = xcalloc(1, sizeof(*io));
    io->base = base;
    io->fd = fd;
    io->in = evbuffer_new();
    io->out = evbuffer_new();
    io->wire = evbuffer_new();
    io->rev = event_new(base, fd, EV_READ | EV_PERSIST, on_read, io);
    io->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, on_write, io);
    io->kick = event_new(base, -1, 0, on_kick, io);
    io->read_on = 1;
    if (io->in)
        evbuffer_add_cb(io->in, on_input_drained, io);
    if (!io->in || !io->out || !io->wire || !io->rev || !io->wev || !io->kick) {
        io->fd = -1; /* the caller still owns it */
        io_free(io);
        return NULL;
    }
    return io;
}

struct io *io_new(struct event_base *base, int fd)
{
    struct io *io = io_alloc(base, fd);
    if (io)
        arm_read(io);
    return io;
}

struct io *io_new_tls(struct event_base *base, int fd, SSL *ssl, int server)
{
    struct io *io = io_alloc(base, fd);
    if (!io) {
        SSL_free(ssl);
        return NULL;
    }
    if (tls_attach(io, ssl, server) != 0) {
        io->fd = -1; /* the caller still owns it */
        io_free(io);
        return NULL;
    }
    arm_read(io);
    if (!server)
        kick(io); /* a client speaks first */
    return io;
}

int io_starttls(struct io *io, SSL *ssl, int server)
{
    if (io->ssl || io->pending_ssl) {
        SSL_free(ssl);
        return -1;
    }
    io->pending_ssl = ssl;
    io->pending_server = server;
    evbuffer_drain(io->in, evbuffer_get_length(io->in));
    arm_read(io); /* the event stays; input arriving before the swap removes it (on_read) */
    if (evbuffer_get_length(io->out) == 0 && !io->wev_on)
        return swap_to_tls(io);
    else
        kick(io); /* swapped once the output has drained */
    return 0;
}

void io_set_cbs(struct io *io, io_read_cb rd, io_drain_cb drained, io_event_cb ev, void *arg)
{
    io->rd = rd;
    io->drained = drained;
    io->ev = ev;
    io->arg = arg;
}

void io_set_timeouts(struct io *io, unsigned read_ms, unsigned write_ms)
{
    io->read_ms = read_ms;
    io->write_ms = write_ms;
    if (io->rev_on)
        arm_read(io);
    if (io->wev_on)
        arm_write(io, 1);
}

void io_read_enable(struct io *io, int on)
{
    on = on != 0;
    if (io->read_on == on)
        return;
    io->read_on = on;
    arm_read(io);
    if (on && (io->eof || evbuffer_get_length(io->in) > 0))
        kick(io);
}

struct evbuffer *io_input(struct io *io)
{
    return io->in;
}

void io_write(struct io *io, const void *buf, size_t n)
{
    evbuffer_add(io->out, buf, n);
    if (!io->wev_on && !io->handshaking)
        kick(io);
}

void io_printf(struct io *io, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    evbuffer_add_vprintf(io->out, fmt, ap);
    va_end(ap);
    if (!io->wev_on && !io->handshaking)
        kick(io);
}

size_t io_output_pending(struct io *io)
{
    return evbuffer_get_length(io->out) + evbuffer_get_length(io->wire);
}

SSL *io_ssl(struct io *io)
{
    return io->pending_ssl ? NULL : io->ssl;
}

int io_fd(struct io *io)
{
    return io->fd;
}

void io_free(struct io *io)
{
    if (!io)
        return;
    if (io->in)
        evbuffer_remove_cb(io->in, on_input_drained, io);
    if (io->rev)
        event_free(io->rev);
    if (io->wev)
        event_free(io->wev);
    if (io->kick)
        event_free(io->kick);
    if (io->in)
        evbuffer_free(io->in);
    if (io->out)
        evbuffer_free(io->out);
    if (io->pending_ssl)
        SSL_free(io->pending_ssl);
    if (io->ssl) {
        SSL_set_quiet_shutdown(io->ssl, 1); /* no close_notify: the connection is being dropped */
        SSL_free(io->ssl);
    }
    if (io->wire)
        evbuffer_free(io->wire);
    if (io->fd >= 0)
        close(io->fd);
    free(io);
}
