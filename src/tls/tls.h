/* tls: OpenSSL 3 contexts for the server side (and, later, the client
 * side used by relay and submitcheck). TLS 1.2 minimum (configurable up to
 * 1.3), TLS 1.3 preferred, a modern AEAD-only cipher list with server
 * preference, session tickets (keys kept across reloads), no compression,
 * no renegotiation, SSL_MODE_RELEASE_BUFFERS to keep idle sessions small.
 *
 * Several certificates: certificates for the same names with different
 * key types (ECDSA + RSA) share one SSL_CTX and OpenSSL picks by what the
 * client supports; certificates for other names get their own SSL_CTX,
 * chosen by SNI (exact name, then *.wildcard, else the first). */
#ifndef SUBMITD_TLS_H
#define SUBMITD_TLS_H

#include <openssl/ssl.h>
#include <stddef.h>

#include "core/config.h"
#include "core/util.h"

struct tls_server;

/* Builds the contexts for one listener's certificate set (certs/n) with
 * the global tls settings. Errors (unreadable file, bad PEM, key does not
 * match certificate, key readable by group/others, expired certificate is
 * only a warning) are reported as `file:line:` of the config's
 * certificate line. NULL on error. Reference counted. */
struct tls_server *tls_server_new(const struct tls_cfg *tc, const struct cert_pair *certs, size_t n,
                                  const char *cfgfile, struct errlist *errs);
struct tls_server *tls_server_ref(struct tls_server *t);
void tls_server_unref(struct tls_server *t);
/* A new server-side SSL for one connection (SNI callback installed). */
SSL *tls_server_ssl(struct tls_server *t);

/* Checks every certificate of a config (global and per listener) as
 * tls_server_new would, for `submitd -t`. Returns the number of errors. */
int tls_check_config(const struct config *c, struct errlist *errs);

/* Text for logs and Received:, e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384 256". */
void tls_describe(SSL *ssl, char *buf, size_t n);
/* "TLSv1.3" */
const char *tls_version(SSL *ssl);
const char *tls_cipher(SSL *ssl);

/* Global OpenSSL init (idempotent). */
void tls_init(void);

#endif
