/* tlsclient: OpenSSL 3 client contexts (see tlsclient.h). Owns the client
 * protocol policy (TLS 1.2 minimum unless a diagnostic caller lowers it),
 * CA loading, SNI/host-name checks per connection, and turning
 * verification results into readable reasons. */
#include "tls/tlsclient.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>

#include "tls/tls.h"

void tls_last_error(char *buf, size_t n)
{
    unsigned long e;
    size_t o = 0;
    if (n)
        buf[0] = '\0';
    while ((e = ERR_get_error()) != 0) {
        char one[256];
        ERR_error_string_n(e, one, sizeof(one));
        if (o + 3 < n) {
            int w = snprintf(buf + o, n - o, "%s%s", o ? "; " : "", one);
            if (w > 0)
                o += (size_t)w < n - o ? (size_t)w : n - o - 1;
        }
    }
    if (n && !buf[0])
        snprintf(buf, n, "unknown TLS error");
}

SSL_CTX *tls_client_ctx_new(const struct tls_client_opts *o, char *errbuf, size_t errlen)
{
    tls_init();
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        tls_last_error(errbuf, errlen);
        return NULL;
    }
    if (o->legacy)
        SSL_CTX_set_security_level(ctx, 0);
    int minv = o->min_version ? o->min_version : TLS1_2_VERSION;
    if (!SSL_CTX_set_min_proto_version(ctx, minv) ||
        (o->max_version && !SSL_CTX_set_max_proto_version(ctx, o->max_version))) {
        tls_last_error(errbuf, errlen);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (o->ciphers && !SSL_CTX_set_cipher_list(ctx, o->ciphers)) {
        tls_last_error(errbuf, errlen);
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ctx, SSL_MODE_AUTO_RETRY);
    int ok = o->ca_file ? SSL_CTX_load_verify_locations(ctx, o->ca_file, NULL) : SSL_CTX_set_default_verify_paths(ctx);
    if (!ok) {
        char why[200];
        tls_last_error(why, sizeof(why));
        snprintf(errbuf, errlen, "cannot load CA %s: %s", o->ca_file ? o->ca_file : "(system store)", why);
        SSL_CTX_free(ctx);
        return NULL;
    }
    /* With verify off the handshake still records the result, so callers
     * can report it (submitcheck, opportunistic TLS logging). */
    SSL_CTX_set_verify(ctx, o->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_verify_depth(ctx, 10);
    return ctx;
}

static int is_ip_literal(const char *host)
{
    unsigned char b[16];
    return inet_pton(AF_INET, host, b) == 1 || inet_pton(AF_INET6, host, b) == 1;
}

SSL *tls_client_ssl(SSL_CTX *ctx, int fd, const char *host)
{
    SSL *ssl = SSL_new(ctx);
    if (!ssl)
        return NULL;
    if (!SSL_set_fd(ssl, fd)) {
        SSL_free(ssl);
        return NULL;
    }
    if (host && *host) {
        if (is_ip_literal(host)) {
            X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
            X509_VERIFY_PARAM_set1_ip_asc(vp, host);
        } else {
            SSL_set_tlsext_host_name(ssl, host);
            SSL_set1_host(ssl, host);
            SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        }
    }
    SSL_set_connect_state(ssl);
    return ssl;
}

long tls_client_verify_result(SSL *ssl, char *why, size_t n)
{
    long v = SSL_get_verify_result(ssl);
    X509 *peer = SSL_get1_peer_certificate(ssl);
    if (!peer) {
        /* After a verification failure aborts the handshake, OpenSSL keeps
         * the verify code but not the certificate. */
        const char *want = X509_VERIFY_PARAM_get0_host(SSL_get0_param(ssl), 0);
        if (n && v == X509_V_ERR_HOSTNAME_MISMATCH)
            snprintf(why, n, "hostname mismatch: certificate is not for %s", want ? want : "the host");
        else if (n)
            snprintf(why, n, "%s", v == X509_V_OK ? "the server sent no certificate" : X509_verify_cert_error_string(v));
        return v == X509_V_OK ? X509_V_ERR_UNSPECIFIED : v;
    }
    if (v == X509_V_OK) {
        if (n)
            snprintf(why, n, "ok");
    } else if (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH) {
        char cn[256] = "";
        X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, cn, sizeof(cn));
        const char *want = X509_VERIFY_PARAM_get0_host(SSL_get0_param(ssl), 0);
        if (n)
            snprintf(why, n, "hostname mismatch: certificate is for %s%s%s", cn[0] ? cn : "(no CN)",
                     want ? ", wanted " : "", want ? want : "");
    } else if (n) {
        snprintf(why, n, "%s", X509_verify_cert_error_string(v));
    }
    X509_free(peer);
    return v;
}
