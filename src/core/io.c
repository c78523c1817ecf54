/* io: the connection layer over libevent bufferevents (see io.h).
 *
 * A plain connection is a socket bufferevent that does not own the fd; the
 * fd is closed by io_free. STARTTLS waits until every reply queued so far
 * (the "220 Ready to start TLS" included) has reached the socket, then
 * frees the plain bufferevent — and with it any plaintext input already
 * buffered — and puts an OpenSSL bufferevent on the same fd. Bytes the
 * client sent before the handshake and that are still in the kernel are
 * read by OpenSSL as TLS records and make the handshake fail. */
#include "core/io.h"

#include <errno.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"

struct io {
    struct event_base *base;
    struct bufferevent *bev;
    int fd;
    SSL *ssl;          /* owned by bev once TLS is on */
    SSL *pending_ssl;  /* STARTTLS waiting for output to drain */
    int pending_server;
    io_read_cb rd;
    io_drain_cb drained;
    io_event_cb ev;
    void *arg;
    unsigned read_ms, write_ms;
};

static void apply_timeouts(struct io *io)
{
    struct timeval r = {io->read_ms / 1000, (io->read_ms % 1000) * 1000};
    struct timeval w = {io->write_ms / 1000, (io->write_ms % 1000) * 1000};
    bufferevent_set_timeouts(io->bev, io->read_ms ? &r : NULL, io->write_ms ? &w : NULL);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct io *io = arg;
    (void)bev;
    if (io->rd)
        io->rd(io, io->arg);
}

static int swap_to_tls(struct io *io);

static void on_write(struct bufferevent *bev, void *arg)
{
    struct io *io = arg;
    (void)bev;
    if (io->pending_ssl) {
        if (swap_to_tls(io) != 0 && io->ev)
            io->ev(io, IO_EV_ERROR, io->arg);
        return;
    }
    if (io->drained)
        io->drained(io, io->arg);
}

static void log_ssl_errors(struct io *io)
{
    unsigned long e;
    int n = 0;
    while ((e = bufferevent_get_openssl_error(io->bev)) != 0 && n++ < 4) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof(buf));
        logkv(LOG_LVL_DEBUG, NULL, "io.tls_error", "fd=%d error=%s", io->fd, log_q((char[LOGQ_MAX]){0}, LOGQ_MAX, buf));
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct io *io = arg;
    (void)bev;
    enum io_event ev;
    if (what & BEV_EVENT_CONNECTED) {
        ev = IO_EV_TLS_READY;
    } else if (what & BEV_EVENT_TIMEOUT) {
        ev = IO_EV_TIMEOUT;
    } else if (what & BEV_EVENT_EOF) {
        ev = IO_EV_EOF;
    } else {
        if (io->ssl)
            log_ssl_errors(io);
        ev = IO_EV_ERROR;
    }
    if (io->ev)
        io->ev(io, ev, io->arg);
}

static void install(struct io *io)
{
    bufferevent_setcb(io->bev, on_read, on_write, on_event, io);
    bufferevent_setwatermark(io->bev, EV_WRITE, 0, 0);
    apply_timeouts(io);
    bufferevent_enable(io->bev, EV_READ | EV_WRITE);
}

struct io *io_new(struct event_base *base, int fd)
{
    struct io *io = xcalloc(1, sizeof(*io));
    io->base = base;
    io->fd = fd;
    io->bev = bufferevent_socket_new(base, fd, 0);
    if (!io->bev) {
        free(io);
        return NULL;
    }
    install(io);
    return io;
}

static struct bufferevent *tls_bev(struct event_base *base, int fd, SSL *ssl, int server)
{
    struct bufferevent *b = bufferevent_openssl_socket_new(
        base, fd, ssl, server ? BUFFEREVENT_SSL_ACCEPTING : BUFFEREVENT_SSL_CONNECTING, 0);
    if (b)
        bufferevent_openssl_set_allow_dirty_shutdown(b, 1);
    return b;
}

struct io *io_new_tls(struct event_base *base, int fd, SSL *ssl, int server)
{
    struct io *io = xcalloc(1, sizeof(*io));
    io->base = base;
    io->fd = fd;
    io->bev = tls_bev(base, fd, ssl, server);
    if (!io->bev) {
        SSL_free(ssl);
        free(io);
        return NULL;
    }
    io->ssl = ssl;
    install(io);
    return io;
}

static int swap_to_tls(struct io *io)
{
    SSL *ssl = io->pending_ssl;
    io->pending_ssl = NULL;
    /* Everything still buffered on the plaintext side goes away here. */
    evbuffer_drain(bufferevent_get_input(io->bev), evbuffer_get_length(bufferevent_get_input(io->bev)));
    bufferevent_free(io->bev);
    io->bev = tls_bev(io->base, io->fd, ssl, io->pending_server);
    if (!io->bev) {
        SSL_free(ssl);
        io->bev = bufferevent_socket_new(io->base, io->fd, 0);
        if (io->bev)
            install(io);
        return -1;
    }
    io->ssl = ssl;
    install(io);
    return 0;
}

int io_starttls(struct io *io, SSL *ssl, int server)
{
    if (io->ssl || io->pending_ssl) {
        SSL_free(ssl);
        return -1;
    }
    io->pending_ssl = ssl;
    io->pending_server = server;
    struct evbuffer *in = bufferevent_get_input(io->bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    bufferevent_disable(io->bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_output(io->bev)) == 0)
        return swap_to_tls(io);
    return 0; /* swapped in on_write once the output has drained */
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
    apply_timeouts(io);
}

void io_read_enable(struct io *io, int on)
{
    if (io->pending_ssl)
        return;
    if (on)
        bufferevent_enable(io->bev, EV_READ);
    else
        bufferevent_disable(io->bev, EV_READ);
}

struct evbuffer *io_input(struct io *io)
{
    return bufferevent_get_input(io->bev);
}

void io_write(struct io *io, const void *buf, size_t n)
{
    bufferevent_write(io->bev, buf, n);
}

void io_printf(struct io *io, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    evbuffer_add_vprintf(bufferevent_get_output(io->bev), fmt, ap);
    va_end(ap);
}

size_t io_output_pending(struct io *io)
{
    return evbuffer_get_length(bufferevent_get_output(io->bev));
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
    if (io->pending_ssl)
        SSL_free(io->pending_ssl);
    if (io->bev) {
        if (io->ssl) {
            /* Free the SSL with the bufferevent (BEV_OPT_CLOSE_ON_FREE is
             * not set, so do it by hand after a quiet shutdown). */
            SSL_set_quiet_shutdown(io->ssl, 1);
        }
        bufferevent_free(io->bev);
    }
    if (io->ssl)
        SSL_free(io->ssl);
    if (io->fd >= 0)
        close(io->fd);
    free(io);
}
