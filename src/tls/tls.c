/* tls: OpenSSL 3 server contexts (see tls.h).
 *
 * Owns: loading certificate chains and private keys, grouping them into
 * SSL_CTXs (certificates that cover the same names share one context, so an
 * ECDSA and an RSA certificate for one host are both offered and OpenSSL
 * picks what the client supports; other names get their own context, picked
 * by SNI), the protocol/cipher policy, and the session-ticket keys.
 *
 * Ticket keys are made once per process (tls_init) and installed in every
 * context, so a SIGHUP reload or the other listener still resumes sessions
 * made before. They never leave memory. */
#include "tls/tls.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"

#define TLS_MAX_NAMES 64
#define TICKET_KEYS_LEN 80 /* 16 name + 32 HMAC + 32 AES (SSL_CTRL_SET_TLSEXT_TICKET_KEYS) */

/* One SSL_CTX and the names its certificates cover (lower-case). */
struct tls_group {
    SSL_CTX *ctx;
    char **names;
    size_t nnames;
};

struct tls_server {
    atomic_int refs;
    struct tls_group *groups; /* groups[0] is the default */
    size_t ngroups;
};

struct ticket_keys {
    pthread_once_t once;
    unsigned char keys[TICKET_KEYS_LEN];
    int ok;
};

/* The process's ticket keys: written once under pthread_once, read-only
 * afterwards. */
static struct ticket_keys ticket_keys = {PTHREAD_ONCE_INIT, {0}, 0};

static void make_ticket_keys(void)
{
    ticket_keys.ok = RAND_bytes(ticket_keys.keys, sizeof(ticket_keys.keys)) == 1;
}

void tls_init(void)
{
    OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS, NULL);
    pthread_once(&ticket_keys.once, make_ticket_keys);
}

static const char *ssl_err(char *buf, size_t n)
{
    unsigned long e = ERR_peek_last_error();
    if (!e) {
        str_copy(buf, "unknown error", n);
        return buf;
    }
    ERR_error_string_n(e, buf, n);
    ERR_clear_error();
    return buf;
}

/* ---- certificate names ------------------------------------------------- */

static void add_name(char ***v, size_t *n, const char *name, size_t len)
{
    if (*n >= TLS_MAX_NAMES || len == 0 || len > 253)
        return;
    char *s = xstrndup(name, len);
    str_lower(s);
    for (size_t i = 0; i < *n; i++) {
        if (strcmp((*v)[i], s) == 0) {
            free(s);
            return;
        }
    }
    *v = xrealloc(*v, (*n + 1) * sizeof(**v));
    (*v)[(*n)++] = s;
}

/* DNS names of the subjectAltName, or the subject CN when there are none. */
static void cert_names(X509 *x, char ***v, size_t *n)
{
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    if (gens) {
        for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
            const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
            if (g->type != GEN_DNS)
                continue;
            const unsigned char *d = ASN1_STRING_get0_data(g->d.dNSName);
            int len = ASN1_STRING_length(g->d.dNSName);
            if (d && len > 0 && memchr(d, '\0', (size_t)len) == NULL)
                add_name(v, n, (const char *)d, (size_t)len);
        }
        GENERAL_NAMES_free(gens);
    }
    if (*n)
        return;
    X509_NAME *subj = X509_get_subject_name(x);
    int idx = subj ? X509_NAME_get_index_by_NID(subj, NID_commonName, -1) : -1;
    if (idx < 0)
        return;
    ASN1_STRING *cn = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, idx));
    const unsigned char *d = ASN1_STRING_get0_data(cn);
    int len = ASN1_STRING_length(cn);
    if (d && len > 0 && memchr(d, '\0', (size_t)len) == NULL)
        add_name(v, n, (const char *)d, (size_t)len);
}

static void free_names(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static int same_names(char **a, size_t na, char **b, size_t nb)
{
    if (na != nb)
        return 0;
    for (size_t i = 0; i < na; i++) {
        int found = 0;
        for (size_t k = 0; k < nb && !found; k++)
            found = strcmp(a[i], b[k]) == 0;
        if (!found)
            return 0;
    }
    return 1;
}

/* ---- loading one pair -------------------------------------------------------- */

struct loaded_pair {
    X509 *leaf;
    STACK_OF(X509) *chain;
    EVP_PKEY *key;
    char **names;
    size_t nnames;
};

static void loaded_pair_free(struct loaded_pair *p)
{
    X509_free(p->leaf);
    sk_X509_pop_free(p->chain, X509_free);
    EVP_PKEY_free(p->key);
    free_names(p->names, p->nnames);
    memset(p, 0, sizeof(*p));
}

static int load_pair(const struct cert_pair *cp, const char *cfgfile, struct errlist *errs, struct loaded_pair *out)
{
    char e[256];
    memset(out, 0, sizeof(*out));
    FILE *f = fopen(cp->cert, "r");
    if (!f) {
        errlist_add(errs, cfgfile, cp->line, "certificate %s: cannot open: %s", cp->cert, strerror(errno));
        return -1;
    }
    out->leaf = PEM_read_X509(f, NULL, NULL, NULL);
    if (!out->leaf) {
        fclose(f);
        errlist_add(errs, cfgfile, cp->line, "certificate %s: no PEM certificate found (%s)", cp->cert,
                    ssl_err(e, sizeof(e)));
        return -1;
    }
    out->chain = sk_X509_new_null();
    X509 *x;
    while ((x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL)
        sk_X509_push(out->chain, x);
    ERR_clear_error(); /* the end of file ends the loop with an error queued */
    fclose(f);

    f = fopen(cp->key, "r");
    if (!f) {
        errlist_add(errs, cfgfile, cp->line, "private key %s: cannot open: %s", cp->key, strerror(errno));
        loaded_pair_free(out);
        return -1;
    }
    out->key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (!out->key) {
        errlist_add(errs, cfgfile, cp->line, "private key %s: no usable PEM private key (%s)", cp->key,
                    ssl_err(e, sizeof(e)));
        loaded_pair_free(out);
        return -1;
    }
    if (X509_check_private_key(out->leaf, out->key) != 1) {
        ERR_clear_error();
        errlist_add(errs, cfgfile, cp->line, "private key %s does not match certificate %s", cp->key, cp->cert);
        loaded_pair_free(out);
        return -1;
    }
    int id = EVP_PKEY_get_base_id(out->key);
    if (id == EVP_PKEY_RSA && EVP_PKEY_get_bits(out->key) < 2048) {
        errlist_add(errs, cfgfile, cp->line, "private key %s: RSA keys need at least 2048 bits (this one has %d)",
                    cp->key, EVP_PKEY_get_bits(out->key));
        loaded_pair_free(out);
        return -1;
    }
    cert_names(out->leaf, &out->names, &out->nnames);
    if (X509_cmp_current_time(X509_get0_notAfter(out->leaf)) <= 0) {
        char q[LOGQ_MAX];
        logkv(LOG_LVL_WARN, NULL, "tls.certificate_expired", "file=%s note=\"clients that verify will refuse it\"",
              log_q(q, sizeof(q), cp->cert));
    }
    return 0;
}

/* ---- contexts ------------------------------------------------------------------ */

static int servername_cb(SSL *ssl, int *alert, void *arg);

static SSL_CTX *new_ctx(const struct tls_cfg *tc, const char *cfgfile, struct errlist *errs)
{
    char e[256];
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        errlist_add(errs, cfgfile, 0, "TLS: cannot create a context: %s", ssl_err(e, sizeof(e)));
        return NULL;
    }
    int minv = tc->min_version == 0x0304 ? TLS1_3_VERSION : TLS1_2_VERSION;
    SSL_CTX_set_min_proto_version(ctx, minv);
    SSL_CTX_set_max_proto_version(ctx, 0);
    /* the server's order (AES-128-GCM first: its SHA-256 key schedule costs
     * less than SHA-384's), except that a client putting ChaCha20 first (no
     * AES instructions, phones) gets it */
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_PRIORITIZE_CHACHA);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    const char *ciphers = tc->ciphers ? tc->ciphers : "ECDHE+AESGCM:ECDHE+CHACHA20";
    const char *suites =
        tc->ciphersuites ? tc->ciphersuites : "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
    if (SSL_CTX_set_cipher_list(ctx, ciphers) != 1) {
        errlist_add(errs, cfgfile, 0, "tls ciphers `%s`: no usable cipher (%s)", ciphers, ssl_err(e, sizeof(e)));
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_set_ciphersuites(ctx, suites) != 1) {
        errlist_add(errs, cfgfile, 0, "tls ciphersuites `%s`: no usable suite (%s)", suites, ssl_err(e, sizeof(e)));
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_set1_groups_list(ctx, "X25519:P-256:P-384") != 1)
        ERR_clear_error();
    static const unsigned char sid_ctx[] = "submitd";
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_sess_set_cache_size(ctx, 20000);
    SSL_CTX_set_timeout(ctx, 7200);
    if (tc->session_tickets && ticket_keys.ok) {
        SSL_CTX_set_tlsext_ticket_keys(ctx, ticket_keys.keys, sizeof(ticket_keys.keys));
        SSL_CTX_set_num_tickets(ctx, 1);
    } else {
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
        SSL_CTX_set_num_tickets(ctx, 0);
    }
    return ctx;
}

static int ctx_add_pair(SSL_CTX *ctx, struct loaded_pair *p, const struct cert_pair *cp, const char *cfgfile,
                        struct errlist *errs)
{
    char e[256];
    if (SSL_CTX_use_cert_and_key(ctx, p->leaf, p->key, p->chain, 1) != 1) {
        errlist_add(errs, cfgfile, cp->line, "certificate %s: cannot use it with key %s: %s", cp->cert, cp->key,
                    ssl_err(e, sizeof(e)));
        return -1;
    }
    return 0;
}

static void server_free(struct tls_server *t)
{
    for (size_t i = 0; i < t->ngroups; i++) {
        SSL_CTX_free(t->groups[i].ctx);
        free_names(t->groups[i].names, t->groups[i].nnames);
    }
    free(t->groups);
    free(t);
}

struct tls_server *tls_server_new(const struct tls_cfg *tc, const struct cert_pair *certs, size_t n, const char *cfgfile,
                                  struct errlist *errs)
{
    tls_init();
    if (n == 0)
        return NULL;
    struct tls_server *t = xcalloc(1, sizeof(*t));
    atomic_init(&t->refs, 1);
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        struct loaded_pair p;
        if (load_pair(&certs[i], cfgfile, errs, &p) != 0) {
            bad = 1;
            continue;
        }
        struct tls_group *g = NULL;
        for (size_t k = 0; k < t->ngroups && !g; k++)
            if (same_names(t->groups[k].names, t->groups[k].nnames, p.names, p.nnames))
                g = &t->groups[k];
        if (!g) {
            SSL_CTX *ctx = new_ctx(tc, cfgfile, errs);
            if (!ctx) {
                loaded_pair_free(&p);
                bad = 1;
                continue;
            }
            t->groups = xrealloc(t->groups, (t->ngroups + 1) * sizeof(*t->groups));
            g = &t->groups[t->ngroups++];
            g->ctx = ctx;
            g->names = p.names;
            g->nnames = p.nnames;
            p.names = NULL;
            p.nnames = 0;
        }
        if (ctx_add_pair(g->ctx, &p, &certs[i], cfgfile, errs) != 0)
            bad = 1;
        loaded_pair_free(&p);
    }
    if (bad || t->ngroups == 0) {
        server_free(t);
        return NULL;
    }
    SSL_CTX_set_tlsext_servername_callback(t->groups[0].ctx, servername_cb);
    SSL_CTX_set_tlsext_servername_arg(t->groups[0].ctx, t);
    return t;
}

struct tls_server *tls_server_ref(struct tls_server *t)
{
    atomic_fetch_add(&t->refs, 1);
    return t;
}

void tls_server_unref(struct tls_server *t)
{
    if (t && atomic_fetch_sub(&t->refs, 1) == 1)
        server_free(t);
}

SSL *tls_server_ssl(struct tls_server *t)
{
    SSL *ssl = SSL_new(t->groups[0].ctx);
    if (!ssl)
        ERR_clear_error();
    return ssl;
}

/* 1 when a certificate name (maybe "*.example.com") covers host. */
static int name_matches(const char *pattern, const char *host)
{
    if (strcmp(pattern, host) == 0)
        return 1;
    if (pattern[0] != '*' || pattern[1] != '.')
        return 0;
    const char *dot = strchr(host, '.');
    return dot && dot != host && strcmp(dot, pattern + 1) == 0;
}

static int servername_cb(SSL *ssl, int *alert, void *arg)
{
    struct tls_server *t = arg;
    (void)alert;
    const char *sn = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!sn || t->ngroups < 2)
        return SSL_TLSEXT_ERR_OK;
    char host[256];
    if (str_copy(host, sn, sizeof(host)) >= sizeof(host))
        return SSL_TLSEXT_ERR_OK;
    str_lower(host);
    /* exact names first, then wildcards */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < t->ngroups; i++) {
            const struct tls_group *g = &t->groups[i];
            for (size_t k = 0; k < g->nnames; k++) {
                int hit = pass == 0 ? strcmp(g->names[k], host) == 0 : name_matches(g->names[k], host);
                if (hit) {
                    if (i != 0)
                        SSL_set_SSL_CTX(ssl, g->ctx);
                    return SSL_TLSEXT_ERR_OK;
                }
            }
        }
    }
    return SSL_TLSEXT_ERR_OK; /* unknown name: the default certificate */
}

int tls_check_config(const struct config *c, struct errlist *errs)
{
    size_t before = errs->n;
    if (c->tls.ncerts) {
        struct tls_server *t = tls_server_new(&c->tls, c->tls.certs, c->tls.ncerts, c->file, errs);
        if (t)
            tls_server_unref(t);
    }
    for (size_t i = 0; i < c->nlisteners; i++) {
        const struct listener_cfg *l = &c->listeners[i];
        if (!l->ncerts)
            continue;
        struct tls_server *t = tls_server_new(&c->tls, l->certs, l->ncerts, c->file, errs);
        if (t)
            tls_server_unref(t);
    }
    return (int)(errs->n - before);
}

/* ---- descriptions ------------------------------------------------------------------ */

const char *tls_version(SSL *ssl)
{
    return ssl ? SSL_get_version(ssl) : "none";
}

const char *tls_cipher(SSL *ssl)
{
    const char *c = ssl ? SSL_get_cipher_name(ssl) : NULL;
    return c ? c : "none";
}

void tls_describe(SSL *ssl, char *buf, size_t n)
{
    int bits = 0;
    const SSL_CIPHER *c = ssl ? SSL_get_current_cipher(ssl) : NULL;
    if (c)
        SSL_CIPHER_get_bits(c, &bits);
    snprintf(buf, n, "%s cipher %s %d bits%s", tls_version(ssl), tls_cipher(ssl), bits,
             ssl && SSL_session_reused(ssl) ? " resumed" : "");
}
