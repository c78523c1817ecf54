/* client: the SMTP client connection, shared by the relay transports
 * (running on queue delivery threads) and submitcheck. Blocking sockets
 * with poll() deadlines — every call is bounded by the timeout given at
 * connect (or set later) — plain or TLS behind one read/write path,
 * replies read with the line reader (parse.h) and reply parser (reply.h).
 *
 * It knows connections, not transactions: the relay and submitcheck drive
 * EHLO/STARTTLS/AUTH/MAIL/RCPT/DATA themselves with these calls.
 *
 * An optional transcript callback sees every line sent and received
 * (submitcheck --verbose, debug logs); smtpc_send_secret() marks a line
 * that must be masked there. */
#ifndef SUBMITD_CLIENT_H
#define SUBMITD_CLIENT_H

#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stddef.h>
#include <sys/socket.h>

#include "smtp/reply.h"

/* Why a connect or an exchange failed (for retries, logs and submitcheck's
 * advice). */
enum smtpc_err {
    SMTPC_OK = 0,
    SMTPC_REFUSED,      /* ECONNREFUSED: nothing listens */
    SMTPC_TIMEOUT,      /* no answer within the deadline (filtered port, silent server) */
    SMTPC_UNREACHABLE,  /* ENETUNREACH / EHOSTUNREACH / EADDRNOTAVAIL */
    SMTPC_CLOSED,       /* the peer closed the connection */
    SMTPC_IO,           /* other socket error */
    SMTPC_PROTOCOL,     /* malformed reply, over-long line */
    SMTPC_TLS,          /* handshake failed (includes verification when enforced) */
};
const char *smtpc_err_name(enum smtpc_err e); /* "refused", "timeout", ... */

typedef void (*smtpc_transcript_fn)(void *arg, int sent, const char *line, size_t len);

struct smtpc {
    int fd;
    SSL *ssl;                 /* non-NULL after a successful TLS handshake */
    int timeout_ms;           /* per operation */
    enum smtpc_err err;       /* last error */
    char errtext[256];        /* readable detail of the last error */
    struct sockaddr_storage peer;
    socklen_t peerlen;
    char peer_text[64];       /* "192.0.2.1:587" / "[::1]:25" */
    smtpc_transcript_fn transcript;
    void *transcript_arg;
    /* internal input buffer */
    char *in;
    size_t inlen, incap;
};

/* Connects to one address with a deadline. TCP_NODELAY on. Returns a new
 * connection, or NULL with *err (and errtext when non-NULL) set. */
struct smtpc *smtpc_connect(const struct sockaddr *sa, socklen_t salen, int timeout_ms, enum smtpc_err *err,
                            char *errtext, size_t errlen);
void smtpc_set_transcript(struct smtpc *c, smtpc_transcript_fn fn, void *arg);
/* Closes (TLS close_notify best effort) and frees. NULL is fine. */
void smtpc_close(struct smtpc *c);

/* 1 when an idle connection looks usable without a round trip: nothing
 * buffered (ours or TLS's) and nothing readable on the socket (no reply
 * such as a 421 timeout, no close by the server). 0 otherwise. */
int smtpc_idle_quiet(struct smtpc *c);
/* Reads one complete reply. 0, or -1 with c->err/errtext set. */
int smtpc_read_reply(struct smtpc *c, struct smtp_reply *r);
/* Sends bytes as they are (caller adds CRLF). 0 or -1. */
int smtpc_write(struct smtpc *c, const void *buf, size_t n);
/* Sends "fmt\r\n" (formatted), then nothing else: pair with smtpc_read_reply.
 * The line must not contain CR or LF. */
int smtpc_cmd(struct smtpc *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Like smtpc_cmd, but the transcript shows only `shown` (e.g. "AUTH PLAIN ****"). */
int smtpc_cmd_secret(struct smtpc *c, const char *shown, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* smtpc_cmd + smtpc_read_reply. */
int smtpc_exchange(struct smtpc *c, struct smtp_reply *r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Runs a TLS client handshake on the connection (after a 220 to STARTTLS,
 * or at once for implicit TLS). Any bytes buffered before the handshake
 * are an error (STARTTLS response injection): -1 with SMTPC_PROTOCOL.
 * `host` for SNI and name checks (see tls_client_ssl). 0 or -1 with
 * SMTPC_TLS and errtext = the OpenSSL / verification reason. */
int smtpc_starttls(struct smtpc *c, SSL_CTX *ctx, const char *host);
/* Bytes received but not yet consumed (submitcheck's injection probe). */
size_t smtpc_pending(const struct smtpc *c);

#endif
