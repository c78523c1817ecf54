/* client: the blocking SMTP client connection (see client.h). Owns the
 * socket and its optional TLS layer, the deadline-bounded read/write
 * loops (non-blocking fd + poll), the input buffer split into lines by the
 * shared line reader, replies assembled by the shared reply parser, and
 * the transcript hook. Classifies failures so callers can explain them. */
#include "smtp/client.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "core/util.h"
#include "smtp/parse.h"
#include "tls/tlsclient.h"

#define CLIENT_IN_MAX (REPLY_LINE_MAX * 4)
/* Longest command line sent: an AUTH line may carry 12,288 octets (RFC 4954 4). */
#define CLIENT_CMD_MAX 12288

const char *smtpc_err_name(enum smtpc_err e)
{
    switch (e) {
    case SMTPC_OK: return "ok";
    case SMTPC_REFUSED: return "refused";
    case SMTPC_TIMEOUT: return "timeout";
    case SMTPC_UNREACHABLE: return "unreachable";
    case SMTPC_CLOSED: return "closed";
    case SMTPC_IO: return "io";
    case SMTPC_PROTOCOL: return "protocol";
    case SMTPC_TLS: return "tls";
    }
    return "unknown";
}

static enum smtpc_err classify_errno(int e)
{
    switch (e) {
    case ECONNREFUSED: return SMTPC_REFUSED;
    case ETIMEDOUT: return SMTPC_TIMEOUT;
    case ENETUNREACH:
    case EHOSTUNREACH:
    case EADDRNOTAVAIL:
    case ENETDOWN:
    case EHOSTDOWN: return SMTPC_UNREACHABLE;
    case ECONNRESET:
    case EPIPE: return SMTPC_CLOSED;
    default: return SMTPC_IO;
    }
}

static void set_err(struct smtpc *c, enum smtpc_err e, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(struct smtpc *c, enum smtpc_err e, const char *fmt, ...)
{
    c->err = e;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->errtext, sizeof(c->errtext), fmt, ap);
    va_end(ap);
}

/* Milliseconds left until `deadline` (monotonic ms), at least 0. */
static int left_ms(uint64_t deadline)
{
    uint64_t now = now_ms();
    return now >= deadline ? 0 : (int)(deadline - now);
}

/* Waits for `events` on c->fd until the deadline. 1 ready, 0 timeout, -1 error. */
static int wait_fd(int fd, short events, uint64_t deadline)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, left_ms(deadline));
        if (r > 0)
            return 1;
        if (r == 0)
            return 0;
        if (errno != EINTR)
            return -1;
    }
}

struct smtpc *smtpc_connect(const struct sockaddr *sa, socklen_t salen, int timeout_ms, enum smtpc_err *err,
                            char *errtext, size_t errlen)
{
    char peer[64];
    sockaddr_text(sa, peer, sizeof(peer));
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err = classify_errno(errno);
        if (errtext)
            snprintf(errtext, errlen, "socket: %s", strerror(errno));
        return NULL;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    uint64_t deadline = now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 1);
    int rc = connect(fd, sa, salen);
    int e = rc == 0 ? 0 : errno;
    if (rc != 0 && e == EINPROGRESS) {
        int w = wait_fd(fd, POLLOUT, deadline);
        if (w == 0) {
            close(fd);
            *err = SMTPC_TIMEOUT;
            if (errtext)
                snprintf(errtext, errlen, "connect to %s: no answer within %d ms", peer, timeout_ms);
            return NULL;
        }
        socklen_t l = sizeof(e);
        if (w < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l) != 0)
            e = errno;
    }
    if (e != 0) {
        close(fd);
        *err = classify_errno(e);
        if (errtext)
            snprintf(errtext, errlen, "connect to %s: %s", peer, strerror(e));
        return NULL;
    }
    struct smtpc *c = xcalloc(1, sizeof(*c));
    c->fd = fd;
    c->timeout_ms = timeout_ms;
    memcpy(&c->peer, sa, salen < sizeof(c->peer) ? salen : sizeof(c->peer));
    c->peerlen = salen;
    str_copy(c->peer_text, peer, sizeof(c->peer_text));
    c->incap = CLIENT_IN_MAX;
    c->in = xmalloc(c->incap);
    *err = SMTPC_OK;
    return c;
}

void smtpc_set_transcript(struct smtpc *c, smtpc_transcript_fn fn, void *arg)
{
    c->transcript = fn;
    c->transcript_arg = arg;
}

int smtpc_idle_quiet(struct smtpc *c)
{
    if (c->inlen > 0 || (c->ssl && SSL_pending(c->ssl) > 0))
        return 0;
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    return poll(&p, 1, 0) == 0;
}

void smtpc_close(struct smtpc *c)
{
    if (!c)
        return;
    if (c->ssl) {
        SSL_shutdown(c->ssl); /* best effort, non-blocking: no waiting for the peer's */
        SSL_free(c->ssl);
    }
    if (c->fd >= 0)
        close(c->fd);
    free(c->in);
    free(c);
}

size_t smtpc_pending(const struct smtpc *c)
{
    return c->inlen + (c->ssl ? (size_t)SSL_pending(c->ssl) : 0);
}

/* One TLS I/O step's outcome: >0 bytes, 0 retry after waiting on *ev, -1 error set. */
static int ssl_step(struct smtpc *c, int r, short *ev, const char *what)
{
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        *ev = POLLIN;
        return 0;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        *ev = POLLOUT;
        return 0;
    }
    if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && errno == 0)) {
        set_err(c, SMTPC_CLOSED, "%s: %s closed the connection", what, c->peer_text);
        return -1;
    }
    if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
        set_err(c, classify_errno(errno), "%s: %s", what, strerror(errno));
        return -1;
    }
    char buf[200];
    tls_last_error(buf, sizeof(buf));
    set_err(c, SMTPC_TLS, "%s: %s", what, buf);
    return -1;
}

/* Reads some bytes into the input buffer. 0 or -1 (error set). */
static int fill(struct smtpc *c, uint64_t deadline)
{
    if (c->inlen >= c->incap) {
        set_err(c, SMTPC_PROTOCOL, "reply line from %s too long", c->peer_text);
        return -1;
    }
    for (;;) {
        short ev = POLLIN;
        if (c->ssl) {
            ERR_clear_error();
            errno = 0;
            int r = SSL_read(c->ssl, c->in + c->inlen, (int)(c->incap - c->inlen));
            if (r > 0) {
                c->inlen += (size_t)r;
                return 0;
            }
            if (ssl_step(c, r, &ev, "read") < 0)
                return -1;
        } else {
            ssize_t r = read(c->fd, c->in + c->inlen, c->incap - c->inlen);
            if (r > 0) {
                c->inlen += (size_t)r;
                return 0;
            }
            if (r == 0) {
                set_err(c, SMTPC_CLOSED, "%s closed the connection", c->peer_text);
                return -1;
            }
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                set_err(c, classify_errno(errno), "read from %s: %s", c->peer_text, strerror(errno));
                return -1;
            }
        }
        int w = wait_fd(c->fd, ev, deadline);
        if (w == 0) {
            set_err(c, SMTPC_TIMEOUT, "no reply from %s within %d ms", c->peer_text, c->timeout_ms);
            return -1;
        }
        if (w < 0) {
            set_err(c, SMTPC_IO, "poll: %s", strerror(errno));
            return -1;
        }
    }
}

int smtpc_read_reply(struct smtpc *c, struct smtp_reply *r)
{
    uint64_t deadline = now_ms() + (uint64_t)c->timeout_ms;
    struct reply_parser p;
    reply_parser_init(&p);
    struct line_reader lr;
    line_reader_init(&lr, REPLY_LINE_MAX);
    for (;;) {
        size_t ll = 0, used = 0;
        enum line_res lres = c->inlen ? line_reader_next(&lr, c->in, c->inlen, &ll, &used) : LINE_NEED_MORE;
        if (lres == LINE_TOO_LONG) {
            set_err(c, SMTPC_PROTOCOL, "reply line from %s longer than %d octets", c->peer_text, REPLY_LINE_MAX);
            return -1;
        }
        if (lres == LINE_OK) {
            if (c->transcript)
                c->transcript(c->transcript_arg, 0, c->in, ll);
            char why[128];
            enum reply_res rr = reply_feed_line(&p, c->in, ll, why, sizeof(why));
            memmove(c->in, c->in + used, c->inlen - used);
            c->inlen -= used;
            if (rr == REPLY_ERR) {
                set_err(c, SMTPC_PROTOCOL, "bad reply from %s: %s", c->peer_text, why);
                return -1;
            }
            if (rr == REPLY_OK) {
                reply_copy(r, &p.r);
                return 0;
            }
            continue;
        }
        if (used) {
            memmove(c->in, c->in + used, c->inlen - used);
            c->inlen -= used;
        }
        if (fill(c, deadline) != 0)
            return -1;
    }
}

int smtpc_write(struct smtpc *c, const void *buf, size_t n)
{
    uint64_t deadline = now_ms() + (uint64_t)c->timeout_ms;
    const char *p = buf;
    while (n > 0) {
        short ev = POLLOUT;
        if (c->ssl) {
            ERR_clear_error();
            errno = 0;
            size_t chunk = n > (1u << 30) ? (1u << 30) : n;
            int r = SSL_write(c->ssl, p, (int)chunk);
            if (r > 0) {
                p += r;
                n -= (size_t)r;
                continue;
            }
            if (ssl_step(c, r, &ev, "write") < 0)
                return -1;
        } else {
            ssize_t r = send(c->fd, p, n, MSG_NOSIGNAL);
            if (r > 0) {
                p += r;
                n -= (size_t)r;
                continue;
            }
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                set_err(c, classify_errno(errno), "write to %s: %s", c->peer_text, strerror(errno));
                return -1;
            }
        }
        int w = wait_fd(c->fd, ev, deadline);
        if (w == 0) {
            set_err(c, SMTPC_TIMEOUT, "write to %s: timed out after %d ms", c->peer_text, c->timeout_ms);
            return -1;
        }
        if (w < 0) {
            set_err(c, SMTPC_IO, "poll: %s", strerror(errno));
            return -1;
        }
    }
    return 0;
}

/* Formats one command line, checks it has no CR/LF, sends it with CRLF. */
static int send_line(struct smtpc *c, const char *shown, const char *fmt, va_list ap)
{
    struct strbuf b;
    sb_init(&b);
    sb_vprintf(&b, fmt, ap);
    if (!b.s)
        sb_append(&b, "", 0);
    if (memchr(b.s, '\r', b.len) || memchr(b.s, '\n', b.len) || b.len > CLIENT_CMD_MAX) {
        set_err(c, SMTPC_PROTOCOL, "refusing to send a command with CR/LF or over-long");
        mem_wipe(b.s, b.len);
        sb_free(&b);
        return -1;
    }
    if (c->transcript)
        c->transcript(c->transcript_arg, 1, shown ? shown : b.s, shown ? strlen(shown) : b.len);
    sb_append(&b, "\r\n", 2);
    int r = smtpc_write(c, b.s, b.len);
    mem_wipe(b.s, b.len);
    sb_free(&b);
    return r;
}

int smtpc_cmd(struct smtpc *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = send_line(c, NULL, fmt, ap);
    va_end(ap);
    return r;
}

int smtpc_cmd_secret(struct smtpc *c, const char *shown, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = send_line(c, shown, fmt, ap);
    va_end(ap);
    return r;
}

int smtpc_exchange(struct smtpc *c, struct smtp_reply *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = send_line(c, NULL, fmt, ap);
    va_end(ap);
    if (rc != 0)
        return -1;
    return smtpc_read_reply(c, r);
}

int smtpc_starttls(struct smtpc *c, SSL_CTX *ctx, const char *host)
{
    if (c->ssl) {
        set_err(c, SMTPC_PROTOCOL, "TLS is already active");
        return -1;
    }
    if (c->inlen) {
        set_err(c, SMTPC_PROTOCOL, "%s sent %zu bytes before the TLS handshake (response injection?)",
                c->peer_text, c->inlen);
        return -1;
    }
    ERR_clear_error();
    SSL *ssl = tls_client_ssl(ctx, c->fd, host);
    if (!ssl) {
        char buf[200];
        tls_last_error(buf, sizeof(buf));
        set_err(c, SMTPC_TLS, "TLS setup: %s", buf);
        return -1;
    }
    c->ssl = ssl;
    uint64_t deadline = now_ms() + (uint64_t)c->timeout_ms;
    for (;;) {
        ERR_clear_error();
        errno = 0;
        int r = SSL_connect(ssl);
        if (r == 1)
            return 0;
        short ev = POLLIN;
        if (ssl_step(c, r, &ev, "TLS handshake") < 0) {
            if (c->err == SMTPC_TLS || c->err == SMTPC_CLOSED) {
                long v = SSL_get_verify_result(ssl);
                if (v != X509_V_OK) {
                    char why[200];
                    tls_client_verify_result(ssl, why, sizeof(why));
                    set_err(c, SMTPC_TLS, "TLS handshake with %s: certificate verification failed: %s",
                            c->peer_text, why);
                } else if (c->err == SMTPC_CLOSED) {
                    c->err = SMTPC_TLS;
                }
            }
            goto fail;
        }
        int w = wait_fd(c->fd, ev, deadline);
        if (w <= 0) {
            set_err(c, w == 0 ? SMTPC_TIMEOUT : SMTPC_IO, "TLS handshake with %s: %s", c->peer_text,
                    w == 0 ? "timed out" : strerror(errno));
            goto fail;
        }
    }
fail:
    SSL_free(ssl);
    c->ssl = NULL;
    return -1;
}
