/* check_int: what check.c (connection, SMTP and AUTH steps) and
 * checktls.c (TLS, certificate and probe steps) share. Internal to
 * src/check. */
#ifndef SUBMITD_CHECK_INT_H
#define SUBMITD_CHECK_INT_H

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>

#include "check/check.h"
#include "smtp/client.h"
#include "smtp/reply.h"

struct check_ctx {
    const struct check_opts *o;
    struct report *r;
    SSL_CTX *tls;          /* a modern client: TLS 1.2+, default ciphers, verify off (results reported) */
    char tls_err[256];     /* why tls is NULL */
    const char *name;      /* SNI / certificate name */
};

/* A transcript label bound to one connection. */
struct check_label {
    const struct check_opts *o;
    char text[48];
};

/* One port's dialogue. */
struct port_run {
    struct check_ctx *cx;
    struct port_report *p;
    int port;
    int implicit;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char addr_text[64];
    struct smtpc *c;            /* the main connection, NULL once lost */
    struct check_label label;
    char stop[256];             /* why the main connection is gone */
    struct smtp_reply *ehlo;    /* the latest EHLO reply (heap: it is large) */
    int have_ehlo;
    int tls_ok;                 /* TLS up on c with the modern context */
    int version;                /* protocol the main handshake negotiated, 0 if none */
    int legacy_version;         /* only an old protocol worked: its version, else 0 */
    X509 *peer;                 /* the server's certificate (own reference) from the handshake that worked */
    STACK_OF(X509) *peer_chain; /* the certificates it sent (own reference) */
    int auth_ok;                /* logged in */
    int auth_tried;
};

/* check.c helpers used by checktls.c */
void check_done(struct port_run *pr, struct step *s);
void check_label_init(struct check_label *l, const struct check_opts *o, int port, const char *what);
void check_attach_transcript(struct smtpc *c, struct check_label *l);
/* A new connection to the port's address that got the greeting and an
 * EHLO reply (put in *ehlo when non-NULL). NULL with why. */
struct smtpc *check_open(struct port_run *pr, struct check_label *l, struct smtp_reply *ehlo, char *why,
                         size_t n);
/* Sends QUIT (no waiting for the reply beyond the timeout) and closes. */
void check_quit(struct smtpc *c);
/* Marks the main connection lost. */
void check_lost(struct port_run *pr, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* checktls.c steps */
void step_tls(struct port_run *pr);
void step_certificate(struct port_run *pr);
void step_tls_versions(struct port_run *pr);
void step_tls_ciphers(struct port_run *pr);
void step_starttls_injection(struct port_run *pr);
/* Frees what checktls.c keeps per port (the certificate source). */
void checktls_port_done(struct port_run *pr);

#endif
