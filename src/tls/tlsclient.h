/* tlsclient: OpenSSL 3 client contexts for the relay transports and
 * submitcheck. Verification against the system CA store or a CA file,
 * hostname check (SSL_set1_host), SNI, minimum protocol version, and
 * reporting of what was negotiated and why verification failed. */
#ifndef SUBMITD_TLSCLIENT_H
#define SUBMITD_TLSCLIENT_H

#include <openssl/ssl.h>
#include <stddef.h>

struct tls_client_opts {
    const char *ca_file;   /* NULL: the system default store */
    int verify;            /* 1: a chain or name failure aborts the handshake */
    int min_version;       /* TLS1_2_VERSION by default (0 = default) */
    int max_version;       /* 0 = highest */
    const char *ciphers;   /* TLS <= 1.2 cipher list; NULL = OpenSSL default at SECLEVEL 2 */
    int legacy;            /* 1: OpenSSL security level 0 (weak keys and ciphers allowed), for
                              submitcheck's probes of legacy servers; 0 (a zeroed struct): the default */
};

/* NULL with errbuf filled on failure (bad CA file...). Refcounted by OpenSSL
 * (SSL_CTX_up_ref/SSL_CTX_free). */
SSL_CTX *tls_client_ctx_new(const struct tls_client_opts *o, char *errbuf, size_t errlen);

/* A new client SSL on a connected socket fd, with SNI and the expected host
 * name set (`host` may be an IP literal: then no SNI, IP check instead).
 * Does not handshake. */
SSL *tls_client_ssl(SSL_CTX *ctx, int fd, const char *host);

/* After a handshake: 0 when the peer chain and name verified, else the
 * X509 verify code; `why` gets a readable reason ("certificate has
 * expired", "hostname mismatch: certificate is for mx.example.com"...). */
long tls_client_verify_result(SSL *ssl, char *why, size_t n);

/* Text of the last OpenSSL error(s) on this thread (then cleared). */
void tls_last_error(char *buf, size_t n);

#endif
