/* io: the thin connection layer over libevent events and evbuffers that
 * hides plain vs TLS from the protocol code (the server sessions; the
 * outbound SMTP client uses blocking sockets, src/smtp/client.c). One
 * struct io per connection: read/write buffers, timeouts, and the TLS
 * upgrade.
 *
 * io_starttls() throws away whatever input is already buffered (plaintext
 * pipelined after STARTTLS must never be read as if it came over TLS:
 * CVE-2011-0411 class) before the handshake starts. */
#ifndef SUBMITD_IO_H
#define SUBMITD_IO_H

#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/ssl.h>
#include <stddef.h>

enum io_event {
    IO_EV_EOF = 1,       /* peer closed */
    IO_EV_ERROR = 2,     /* socket or TLS error (details in the log) */
    IO_EV_TIMEOUT = 3,   /* read timeout */
    IO_EV_TLS_READY = 4  /* handshake finished */
};

struct io;
typedef void (*io_read_cb)(struct io *io, void *arg);
typedef void (*io_drain_cb)(struct io *io, void *arg); /* output fully written */
typedef void (*io_event_cb)(struct io *io, enum io_event ev, void *arg);

/* Plain connection on an accepted/connected socket (io owns fd). */
struct io *io_new(struct event_base *base, int fd);
/* Implicit TLS on accept (server = 1) or connect (server = 0); io owns ssl. */
struct io *io_new_tls(struct event_base *base, int fd, SSL *ssl, int server);
/* Upgrades a plain connection; discards buffered input. 0 or -1. */
int io_starttls(struct io *io, SSL *ssl, int server);
void io_set_cbs(struct io *io, io_read_cb rd, io_drain_cb drained, io_event_cb ev, void *arg);
/* Read timeout (no input for ms) and write timeout (output stuck for ms);
 * 0 = none. Fires IO_EV_TIMEOUT. */
void io_set_timeouts(struct io *io, unsigned read_ms, unsigned write_ms);
void io_read_enable(struct io *io, int on);

struct evbuffer *io_input(struct io *io);
void io_write(struct io *io, const void *buf, size_t n);
void io_printf(struct io *io, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
size_t io_output_pending(struct io *io);
SSL *io_ssl(struct io *io); /* NULL when plain */
int io_fd(struct io *io);
/* Closes the connection and frees io (pending output is dropped). */
void io_free(struct io *io);

#endif
