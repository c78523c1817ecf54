/* Unit tests for the connection layer (core/io.c) over a socketpair with
 * small buffers, driven without the SMTP session: STARTTLS while the
 * reply before it is still stuck in a full socket. Plaintext that the
 * peer sends in that window is never handed to the owner; the handshake
 * then starts at the first byte after the swap (injected bytes make it
 * fail, a clean client completes it and talks TLS). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/io.h"

/* ---- a throwaway certificate ------------------------------------------------ */

static SSL_CTX *server_ctx(void)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    assert_non_null(key);
    X509 *x = X509_new();
    assert_non_null(x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1, 0);
    X509_set_issuer_name(x, n);
    X509_set_pubkey(x, key);
    assert_true(X509_sign(x, key, EVP_sha256()) > 0);
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_use_certificate(ctx, x), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(ctx, key), 1);
    X509_free(x);
    EVP_PKEY_free(key);
    return ctx;
}

/* ---- the server side: an io and what its callbacks saw ---------------------- */

struct srv {
    struct event_base *base;
    struct io *io;
    size_t got;         /* input bytes handed to the owner */
    char text[256];     /* the first of them */
    int tls_ready, error, eof;
};

static void on_rd(struct io *io, void *arg)
{
    struct srv *s = arg;
    struct evbuffer *in = io_input(io);
    size_t n = evbuffer_get_length(in);
    size_t room = sizeof(s->text) - 1 - (s->got < sizeof(s->text) - 1 ? s->got : sizeof(s->text) - 1);
    if (room)
        evbuffer_copyout(in, s->text + (sizeof(s->text) - 1 - room), n < room ? n : room);
    s->got += n;
    evbuffer_drain(in, n);
}

static void on_ev(struct io *io, enum io_event ev, void *arg)
{
    struct srv *s = arg;
    (void)io;
    if (ev == IO_EV_TLS_READY)
        s->tls_ready = 1;
    else if (ev == IO_EV_EOF)
        s->eof = 1;
    else
        s->error = 1;
}

static void spin(struct srv *s, int rounds)
{
    for (int i = 0; i < rounds; i++)
        event_base_loop(s->base, EVLOOP_NONBLOCK);
}

static void nonblock(int fd)
{
    assert_int_equal(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
}

#define BLOB (512 * 1024)
#define REPLY "220 2.0.0 Ready to start TLS\r\n"

/* The server has BLOB bytes of earlier replies and the 220 queued and
 * STARTTLS requested; the socket is full. Fills fds[0] (the server's) and
 * fds[1] (the client's). */
static void blocked_starttls(struct srv *s, SSL_CTX *ctx, int fds[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    int small = 4096;
    setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    setsockopt(fds[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    nonblock(fds[0]);
    nonblock(fds[1]);
    memset(s, 0, sizeof(*s));
    s->base = event_base_new();
    assert_non_null(s->base);
    s->io = io_new(s->base, fds[0]);
    assert_non_null(s->io);
    io_set_cbs(s->io, on_rd, NULL, on_ev, s);
    io_read_enable(s->io, 1);
    char *blob = malloc(BLOB);
    assert_non_null(blob);
    memset(blob, 'x', BLOB);
    io_write(s->io, blob, BLOB);
    free(blob);
    io_write(s->io, REPLY, strlen(REPLY));
    SSL *ssl = SSL_new(ctx);
    assert_non_null(ssl);
    assert_int_equal(io_starttls(s->io, ssl, 1), 0);
    spin(s, 5);
    assert_true(io_output_pending(s->io) > 0); /* the 220 is stuck behind the blob */
}

/* Reads everything the server sends until the 220 has arrived. */
static void drain_to_reply(struct srv *s, int fd)
{
    static char buf[65536];
    size_t total = 0;
    char tail[64] = "";
    for (int i = 0; i < 100000 && total < BLOB + strlen(REPLY); i++) {
        spin(s, 1);
        ssize_t r = read(fd, buf, sizeof(buf));
        if (r > 0) {
            total += (size_t)r;
            size_t keep = (size_t)r < sizeof(tail) - 1 ? (size_t)r : sizeof(tail) - 1;
            memcpy(tail, buf + r - (ssize_t)keep, keep);
            tail[keep] = '\0';
        } else {
            assert_true(r < 0 && errno == EAGAIN);
        }
    }
    assert_int_equal(total, BLOB + strlen(REPLY));
    size_t rl = strlen(REPLY);
    assert_true(strlen(tail) >= rl);
    assert_string_equal(tail + strlen(tail) - rl, REPLY);
}

/* A TLS client on the client's end of the pair (set in *cctx). */
static SSL *tls_client_on(int fd, SSL_CTX **cctx)
{
    *cctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(*cctx);
    SSL *c = SSL_new(*cctx);
    assert_non_null(c);
    SSL_set_fd(c, fd);
    return c;
}

/* Frees what blocked_starttls and tls_client_on made. */
static void blocked_done(struct srv *s, SSL_CTX *ctx, int client_fd, SSL *c, SSL_CTX *cctx)
{
    SSL_free(c);
    SSL_CTX_free(cctx);
    io_free(s->io);
    close(client_fd);
    event_base_free(s->base);
    SSL_CTX_free(ctx);
}

/* Plaintext sent after STARTTLS while the 220 cannot leave: never read as
 * a command, and the handshake that follows sees it first (it fails). */
static void test_starttls_blocked_injection(void **state)
{
    (void)state;
    SSL_CTX *ctx = server_ctx();
    struct srv s;
    int fds[2];
    blocked_starttls(&s, ctx, fds);
    const char *inj = "NOOP\r\nMAIL FROM:<evil@example.test>\r\n";
    assert_int_equal(write(fds[1], inj, strlen(inj)), (ssize_t)strlen(inj));
    spin(&s, 10);
    assert_int_equal(s.got, 0);
    drain_to_reply(&s, fds[1]);
    /* a client hello after the injected text: TLS sees the text first */
    SSL_CTX *cctx;
    SSL *c = tls_client_on(fds[1], &cctx);
    for (int i = 0; i < 2000 && !s.error && !s.tls_ready; i++) {
        ERR_clear_error();
        (void)SSL_connect(c);
        spin(&s, 1);
    }
    assert_int_equal(s.got, 0);
    assert_int_equal(s.tls_ready, 0);
    assert_int_equal(s.error, 1);
    blocked_done(&s, ctx, fds[1], c, cctx);
}

/* The same blocked 220 and a well-behaved client: the swap happens once
 * the output has gone, the handshake completes, and what the client then
 * sends over TLS reaches the owner. */
static void test_starttls_blocked_clean(void **state)
{
    (void)state;
    SSL_CTX *ctx = server_ctx();
    struct srv s;
    int fds[2];
    blocked_starttls(&s, ctx, fds);
    spin(&s, 10);
    drain_to_reply(&s, fds[1]);
    SSL_CTX *cctx;
    SSL *c = tls_client_on(fds[1], &cctx);
    int done = 0;
    for (int i = 0; i < 2000 && !s.error && !(done && s.tls_ready); i++) {
        ERR_clear_error();
        if (!done)
            done = SSL_connect(c) == 1;
        spin(&s, 1);
    }
    assert_int_equal(done, 1);
    assert_int_equal(s.tls_ready, 1);
    assert_int_equal(s.error, 0);
    const char *cmd = "EHLO client.test\r\n";
    assert_int_equal(SSL_write(c, cmd, (int)strlen(cmd)), (int)strlen(cmd));
    for (int i = 0; i < 2000 && s.got < strlen(cmd); i++)
        spin(&s, 1);
    assert_int_equal(s.got, strlen(cmd));
    assert_string_equal(s.text, cmd);
    blocked_done(&s, ctx, fds[1], c, cctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_starttls_blocked_injection),
        cmocka_unit_test(test_starttls_blocked_clean),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
