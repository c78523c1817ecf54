/* checktls: submitcheck's TLS steps (see check_int.h) — the handshake
 * (STARTTLS or implicit) with a modern client context and, when it fails,
 * a diagnosis with lowered settings; the certificate (own chain
 * verification collecting every error, name match, dates, key,
 * signature); and the probes on extra connections: TLS 1.0/1.1, weak
 * ciphers, and STARTTLS command injection. Uses tls/tlsclient.h contexts
 * and smtp/client.h connections only. */
#include "check/check_int.h"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check/advice.h"
#include "core/util.h"
#include "tls/tls.h"
#include "tls/tlsclient.h"

/* Ciphers a server should refuse: no encryption, no authentication,
 * export grade, single DES, 3DES, RC4, MD5 MACs, IDEA, SEED. What this
 * OpenSSL build cannot offer is silently absent from the probe. */
#define WEAK_CIPHERS "eNULL:aNULL:EXP:LOW:DES:3DES:RC4:MD5:IDEA:SEED:@SECLEVEL=0"
#define NOFS_CIPHERS "kRSA:@SECLEVEL=0"
#define LEGACY_CIPHERS "ALL:@SECLEVEL=0"
#define INJECTED_CMD "XSUBMITCHECK-INJECTED"
#define MAX_VERIFY_ERRORS 8

static const char *version_name(int v)
{
    switch (v) {
    case TLS1_VERSION: return "TLSv1";
    case TLS1_1_VERSION: return "TLSv1.1";
    case TLS1_2_VERSION: return "TLSv1.2";
    case TLS1_3_VERSION: return "TLSv1.3";
    default: return "unknown";
    }
}

/* Keeps the server's certificate and chain from a handshake that worked. */
static void keep_peer(struct port_run *pr, SSL *ssl)
{
    if (pr->peer)
        return;
    pr->peer = SSL_get1_peer_certificate(ssl);
    STACK_OF(X509) *ch = SSL_get_peer_cert_chain(ssl);
    pr->peer_chain = ch ? X509_chain_up_ref(ch) : NULL;
}

void checktls_port_done(struct port_run *pr)
{
    X509_free(pr->peer);
    pr->peer = NULL;
    if (pr->peer_chain)
        sk_X509_pop_free(pr->peer_chain, X509_free);
    pr->peer_chain = NULL;
}

/* ---- probes ------------------------------------------------------------------- */

static SSL_CTX *probe_ctx(struct port_run *pr, int minv, int maxv, const char *ciphers, char *err, size_t n)
{
    struct tls_client_opts to = {.ca_file = pr->cx->o->ca_file, .verify = 0, .min_version = minv,
                                 .max_version = maxv, .ciphers = ciphers, .legacy = 1};
    return tls_client_ctx_new(&to, err, n);
}

enum probe_res { PROBE_ACCEPTED, PROBE_REFUSED, PROBE_ERROR };

/* A new connection up to and through the TLS handshake with ctx. On
 * PROBE_ACCEPTED, *keep (when non-NULL) gets the connection, else it is
 * closed. detail: negotiated "TLSv1 AES256-SHA", or why it failed. */
static enum probe_res probe_tls(struct port_run *pr, SSL_CTX *ctx, struct check_label *l, char *detail, size_t n,
                                struct smtpc **keep)
{
    if (keep)
        *keep = NULL;
    struct smtpc *c = check_open(pr, l, NULL, detail, n);
    if (!c)
        return PROBE_ERROR;
    if (!pr->implicit) {
        struct smtp_reply *r = xmalloc(sizeof(*r));
        int rc = smtpc_exchange(c, r, "STARTTLS");
        if (rc != 0 || r->code != 220) {
            if (rc != 0)
                snprintf(detail, n, "%s", c->errtext);
            else
                reply_summary(r, detail, n);
            free(r);
            smtpc_close(c);
            return PROBE_ERROR;
        }
        free(r);
    }
    if (smtpc_starttls(c, ctx, pr->cx->name) != 0) {
        snprintf(detail, n, "%s", c->errtext);
        enum probe_res res = c->err == SMTPC_TLS ? PROBE_REFUSED : PROBE_ERROR;
        smtpc_close(c);
        return res;
    }
    snprintf(detail, n, "%s %s", SSL_get_version(c->ssl), SSL_get_cipher_name(c->ssl));
    if (keep)
        *keep = c;
    else
        check_quit(c);
    return PROBE_ACCEPTED;
}

/* Skips a probe step when it cannot or should not run; 1 if skipped. */
static int probe_skip(struct port_run *pr, struct step *s)
{
    if (!pr->tls_ok && !pr->legacy_version)
        step_set(s, VERDICT_SKIP, "not run: no TLS session");
    else if (!pr->cx->o->probes)
        step_set(s, VERDICT_SKIP, "not probed (--no-probe)");
    else if (!pr->addrlen)
        step_set(s, VERDICT_SKIP, "not run: no address");
    else
        return 0;
    check_done(pr, s);
    return 1;
}

/* ---- handshake ------------------------------------------------------------------ */

static void handshake_failed(struct port_run *pr, struct step *s, enum smtpc_err e, const char *errtext)
{
    char err[300];
    str_copy(err, errtext, sizeof(err));
    step_fact_str(s, "error", err);
    check_lost(pr, "the TLS handshake failed");
    if (e == SMTPC_TIMEOUT) {
        step_set(s, VERDICT_FAIL, "TLS handshake timed out: %s", err);
        step_cause(s, "the server did not answer the TLS handshake in time");
        step_fix(s, "look at the server's log; raise --timeout for a slow server");
        return;
    }
    if (e == SMTPC_PROTOCOL) {
        step_set(s, VERDICT_FAIL, "%s", err);
        step_cause(s, "the server sent data after its 220 reply to STARTTLS, before the TLS handshake (a broken or "
                      "intercepting server)");
        step_fix(s, "look for a proxy or antivirus program between client and server");
        return;
    }
    if (e != SMTPC_TLS) {
        step_set(s, VERDICT_FAIL, "TLS handshake failed: %s", err);
        step_cause(s, "the server closed the connection during the handshake");
        step_fix(s, "look at the server's log for TLS errors (missing certificate, no common protocol)");
        return;
    }
    /* Would lowered settings work? That tells an old server from a broken one. */
    char lerr[256] = "", detail[300] = "";
    SSL_CTX *lc = pr->addrlen ? probe_ctx(pr, TLS1_VERSION, 0, LEGACY_CIPHERS, lerr, sizeof(lerr)) : NULL;
    struct check_label l;
    check_label_init(&l, pr->cx->o, pr->port, "legacy");
    struct smtpc *lcx = NULL;
    if (lc && probe_tls(pr, lc, &l, detail, sizeof(detail), &lcx) == PROBE_ACCEPTED) {
        int v = SSL_version(lcx->ssl);
        pr->legacy_version = v;
        keep_peer(pr, lcx->ssl);
        step_fact_str(s, "legacy_protocol", version_name(v));
        step_fact_str(s, "cipher", SSL_get_cipher_name(lcx->ssl));
        if (v < TLS1_2_VERSION) {
            step_set(s, VERDICT_FAIL, "the server speaks only %s (%s): current clients refuse it", version_name(v),
                     SSL_get_cipher_name(lcx->ssl));
            step_cause(s, "TLS 1.2 and 1.3 are not enabled on the server; TLS 1.0 and 1.1 are deprecated (RFC 8996) "
                          "and refused by OpenSSL 3, Windows, Apple and Thunderbird clients");
            step_fix(s, "enable TLS 1.2 and 1.3: Postfix smtpd_tls_protocols = >=TLSv1.2 and "
                        "smtpd_tls_mandatory_protocols = >=TLSv1.2");
            step_fix(s, "an OpenSSL older than 1.0.1 has no TLS 1.2: upgrade the server's system");
        } else {
            step_set(s, VERDICT_FAIL, "the handshake works only with lowered security settings (%s): %s", detail,
                     err);
            step_cause(s, "the server's key, certificate signature or ciphers are too weak for current clients (an "
                          "RSA key under 2048 bits, SHA-1 signatures, or only old ciphers)");
            step_fix(s, "use an RSA key of 2048 bits or more, or ECDSA P-256, signed with SHA-256, and modern "
                        "ciphers");
        }
        check_quit(lcx);
    } else {
        step_set(s, VERDICT_FAIL, "TLS handshake failed: %s", err);
        if (strstr(err, "wrong version number") || strstr(err, "packet length too long") ||
            strstr(err, "record layer failure")) {
            if (pr->implicit) {
                step_cause(s, "the port speaks plain SMTP, not implicit TLS");
                step_fix(s, "run again with --starttls, or make the server speak TLS at once on this port (Postfix: "
                            "-o smtpd_tls_wrappermode=yes on the submissions service)");
            } else {
                step_cause(s, "the server did not start TLS after its 220 reply to STARTTLS");
            }
        } else {
            step_cause(s, "client and server share no TLS version or cipher, or the server's TLS setup is broken");
            step_fix(s, "look at the server's log for TLS errors; compare with: openssl s_client -connect HOST:%d%s",
                     pr->port, pr->implicit ? "" : " -starttls smtp");
        }
    }
    SSL_CTX_free(lc);
}

void step_tls(struct port_run *pr)
{
    struct check_ctx *cx = pr->cx;
    struct step *s = report_add_step(cx->r, pr->p, "tls");
    step_fact_str(s, "tls_mode", pr->implicit ? "implicit" : "starttls");
    if (!pr->c) {
        step_set(s, VERDICT_SKIP, "not run: %s", pr->stop);
        check_done(pr, s);
        return;
    }
    if (!cx->tls) {
        step_set(s, VERDICT_FAIL, "cannot set up TLS here: %s", cx->tls_err);
        step_cause(s, "the CA file or this machine's OpenSSL setup is not usable");
        step_fix(s, "check the file given with --ca (PEM certificates)");
        check_done(pr, s);
        return;
    }
    uint64_t t0 = now_ms();
    if (!pr->implicit) {
        if (!reply_ehlo_has(pr->ehlo, "STARTTLS", NULL, NULL)) {
            step_set(s, pr->port == 25 ? VERDICT_WARN : VERDICT_FAIL,
                     "STARTTLS not offered: the connection stays unencrypted");
            if (reply_ehlo_has(pr->ehlo, "XXXXXXXA", NULL, NULL)) {
                step_cause(s, "a firewall rewrites STARTTLS to XXXXXXXA (Cisco ASA/PIX ESMTP inspection)");
                step_fix(s, "turn off SMTP/ESMTP inspection on the firewall");
            } else {
                step_cause(s, "TLS is not configured on this port (no certificate), or disabled");
                step_fix(s, "Postfix: smtpd_tls_chain_files = /etc/ssl/private/mail.pem (or smtpd_tls_cert_file and "
                            "smtpd_tls_key_file), and smtpd_tls_security_level = encrypt on 587 (may on 25)");
                step_fix(s, "or offer implicit TLS on port 465 (check it with --ports 465)");
            }
            check_done(pr, s);
            return;
        }
        struct smtp_reply *r = xmalloc(sizeof(*r));
        int rc = smtpc_exchange(pr->c, r, "STARTTLS");
        if (rc != 0) {
            step_set(s, VERDICT_FAIL, "no answer to STARTTLS: %s", pr->c->errtext);
            step_cause(s, "the server dropped the connection on STARTTLS");
            step_fix(s, "look at the server's log for TLS errors");
            check_lost(pr, "no answer to STARTTLS");
            free(r);
            check_done(pr, s);
            return;
        }
        if (r->code != 220) {
            char sum[512];
            reply_summary(r, sum, sizeof(sum));
            step_set(s, VERDICT_FAIL, "STARTTLS refused: %s", sum);
            step_cause(s, "the server announces STARTTLS but cannot start it: its certificate or key is missing or "
                          "unreadable (Postfix logs 'cannot load certificate')");
            step_fix(s, "look at the server's log; check the certificate and key files and their permissions");
            free(r);
            check_done(pr, s);
            return;
        }
        free(r);
    }
    int rc = smtpc_starttls(pr->c, cx->tls, cx->name);
    s->ms = (long long)(now_ms() - t0);
    if (rc != 0) {
        handshake_failed(pr, s, pr->c->err, pr->c->errtext);
        check_done(pr, s);
        return;
    }
    SSL *ssl = pr->c->ssl;
    pr->tls_ok = 1;
    pr->version = SSL_version(ssl);
    keep_peer(pr, ssl);
    int bits = SSL_get_cipher_bits(ssl, NULL);
    step_fact_str(s, "protocol", SSL_get_version(ssl));
    step_fact_str(s, "cipher", SSL_get_cipher_name(ssl));
    step_fact_int(s, "cipher_bits", bits);
    step_set(s, tls_version_verdict(pr->version), "%s %s (%d bits), handshake in %lld ms", SSL_get_version(ssl),
             SSL_get_cipher_name(ssl), bits, s->ms);
    check_done(pr, s);
}

/* ---- certificate -------------------------------------------------------------------- */

struct verify_errors {
    int code[MAX_VERIFY_ERRORS];
    int depth[MAX_VERIFY_ERRORS];
    int n;
};

static int collect_cb(int ok, X509_STORE_CTX *vc)
{
    if (!ok) {
        struct verify_errors *ve = X509_STORE_CTX_get_app_data(vc);
        int code = X509_STORE_CTX_get_error(vc), depth = X509_STORE_CTX_get_error_depth(vc);
        int dup = 0;
        for (int i = 0; i < ve->n; i++)
            dup |= ve->code[i] == code && ve->depth[i] == depth;
        if (!dup && ve->n < MAX_VERIFY_ERRORS) {
            ve->code[ve->n] = code;
            ve->depth[ve->n] = depth;
            ve->n++;
        }
    }
    return 1; /* go on: report every problem, not only the first */
}

/* Verifies the chain against the context's trust store (no name check). */
static void verify_chain(struct port_run *pr, struct verify_errors *ve)
{
    memset(ve, 0, sizeof(*ve));
    X509_STORE *store = pr->cx->tls ? SSL_CTX_get_cert_store(pr->cx->tls) : NULL;
    X509_STORE_CTX *vc = X509_STORE_CTX_new();
    if (!store || !vc || !X509_STORE_CTX_init(vc, store, pr->peer, pr->peer_chain)) {
        ve->code[0] = X509_V_ERR_UNSPECIFIED;
        ve->n = 1;
        X509_STORE_CTX_free(vc);
        return;
    }
    X509_STORE_CTX_set_purpose(vc, X509_PURPOSE_SSL_SERVER);
    X509_STORE_CTX_set_app_data(vc, ve);
    X509_STORE_CTX_set_verify_cb(vc, collect_cb);
    if (X509_verify_cert(vc) != 1 && ve->n == 0) {
        ve->code[0] = X509_STORE_CTX_get_error(vc);
        ve->n = 1;
    }
    X509_STORE_CTX_free(vc);
    ERR_clear_error();
}

static void name_text(const X509_NAME *nm, char *buf, size_t n)
{
    buf[0] = '\0';
    BIO *b = BIO_new(BIO_s_mem());
    if (!b)
        return;
    if (X509_NAME_print_ex(b, nm, 0, XN_FLAG_RFC2253) >= 0) {
        int l = BIO_read(b, buf, (int)n - 1);
        buf[l > 0 ? l : 0] = '\0';
    }
    BIO_free(b);
}

static long long asn1_epoch(const ASN1_TIME *t, char *iso, size_t n)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    if (!t || !ASN1_TIME_to_tm(t, &tm)) {
        str_copy(iso, "?", n);
        return 0;
    }
    strftime(iso, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return (long long)timegm(&tm);
}

/* SAN names (DNS and IP) into the list fact and a short text. */
static void san_names(struct step *s, X509 *x, struct strbuf *out)
{
    step_fact_list(s, "names", NULL);
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int n = gens ? sk_GENERAL_NAME_num(gens) : 0;
    for (int i = 0; i < n; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        char one[300] = "";
        if (g->type == GEN_DNS) {
            const unsigned char *d = ASN1_STRING_get0_data(g->d.dNSName);
            int l = ASN1_STRING_length(g->d.dNSName);
            snprintf(one, sizeof(one), "%.*s", l < 255 ? l : 255, (const char *)d);
        } else if (g->type == GEN_IPADD) {
            int l = ASN1_STRING_length(g->d.iPAddress);
            const unsigned char *d = ASN1_STRING_get0_data(g->d.iPAddress);
            if (l == 4 || l == 16)
                inet_ntop(l == 4 ? AF_INET : AF_INET6, d, one, sizeof(one));
        }
        if (!one[0])
            continue;
        for (char *p = one; *p; p++)
            if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
                *p = '?';
        step_fact_list(s, "names", one);
        if (i < 6)
            sb_printf(out, "%s%s", out->len ? " " : "", one);
        else if (i == 6)
            sb_printf(out, " (+%d)", n - 6);
    }
    GENERAL_NAMES_free(gens);
}

static const char *key_type(EVP_PKEY *pk)
{
    switch (EVP_PKEY_get_base_id(pk)) {
    case EVP_PKEY_RSA: return "RSA";
    case EVP_PKEY_RSA_PSS: return "RSA-PSS";
    case EVP_PKEY_EC: return "EC";
    case EVP_PKEY_ED25519: return "ED25519";
    case EVP_PKEY_ED448: return "ED448";
    case EVP_PKEY_DSA: return "DSA";
    default: return "other";
    }
}

/* Cause and fix for a chain that does not verify. */
static void untrusted_advice(struct step *s, int code, int depth, int chain_len)
{
    switch (code) {
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
        step_cause(s, "the certificate is self-signed or from a private CA: clients refuse it unless told to trust "
                      "it");
        step_fix(s, "get a certificate from a public CA, e.g. Let's Encrypt: certbot certonly -d NAME");
        step_fix(s, "if it is your own CA, run submitcheck with --ca CAFILE (and install the CA on every client)");
        break;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
        if (chain_len <= 1) {
            step_cause(s, "the server sends only its own certificate, not the intermediate CA certificate(s)");
            step_fix(s, "configure the full chain: certbot's fullchain.pem, Postfix smtpd_tls_chain_files (key, "
                        "certificate, intermediates), submitd: certificate FULLCHAIN KEY");
        } else {
            step_cause(s, "the chain does not lead to a CA this machine trusts");
            step_fix(s, "use a certificate from a public CA, or give your CA with --ca CAFILE");
        }
        break;
    case X509_V_ERR_CERT_HAS_EXPIRED:
        step_cause(s, "a CA certificate in the chain (depth %d) has expired: the server sends an old chain", depth);
        step_fix(s, "replace the chain file with the CA's current intermediates (certbot: fullchain.pem)");
        break;
    default:
        step_cause(s, "the certificate chain is not valid: %s", X509_verify_cert_error_string(code));
        step_fix(s, "check the chain with: openssl s_client -connect HOST:PORT -showcerts");
        break;
    }
}

void step_certificate(struct port_run *pr)
{
    const struct check_opts *o = pr->cx->o;
    struct step *s = report_add_step(pr->cx->r, pr->p, "certificate");
    if (!pr->peer) {
        if (pr->tls_ok) {
            step_set(s, VERDICT_FAIL, "the server sent no certificate");
            step_cause(s, "the TLS session uses no certificate (an anonymous cipher or a raw public key)");
            step_fix(s, "configure a certificate and disable anonymous ciphers");
        } else {
            step_set(s, VERDICT_SKIP, "not run: no TLS session");
        }
        check_done(pr, s);
        return;
    }
    X509 *x = pr->peer;
    const char *name = pr->cx->name;
    char subject[512], issuer[512], nb_iso[32], na_iso[32];
    name_text(X509_get_subject_name(x), subject, sizeof(subject));
    name_text(X509_get_issuer_name(x), issuer, sizeof(issuer));
    step_fact_str(s, "subject", subject);
    step_fact_str(s, "issuer", issuer);
    struct strbuf names;
    sb_init(&names);
    san_names(s, x, &names);
    long long nb = asn1_epoch(X509_get0_notBefore(x), nb_iso, sizeof(nb_iso));
    long long na = asn1_epoch(X509_get0_notAfter(x), na_iso, sizeof(na_iso));
    step_fact_str(s, "not_before", nb_iso);
    step_fact_str(s, "not_after", na_iso);
    long long days = 0;
    enum cert_time ct = cert_time_classify(nb, na, (long long)time(NULL), o->expiry_warn_days, &days);
    step_fact_int(s, "days_left", days);
    step_fact_str(s, "validity", cert_time_name(ct));
    EVP_PKEY *pk = X509_get0_pubkey(x);
    const char *kt = pk ? key_type(pk) : "none";
    int kbits = pk ? EVP_PKEY_get_bits(pk) : 0;
    char curve[64] = "";
    if (pk && EVP_PKEY_get_base_id(pk) == EVP_PKEY_EC)
        EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, curve, sizeof(curve), NULL);
    step_fact_str(s, "key_type", kt);
    step_fact_int(s, "key_bits", kbits);
    if (curve[0])
        step_fact_str(s, "key_curve", curve);
    int sig_nid = X509_get_signature_nid(x);
    const char *sig = OBJ_nid2ln(sig_nid);
    step_fact_str(s, "signature_algorithm", sig ? sig : "unknown");
    int chain_len = pr->peer_chain ? sk_X509_num(pr->peer_chain) : 1;
    step_fact_int(s, "chain_length", chain_len);
    int self_signed = X509_check_issued(x, x) == X509_V_OK;
    step_fact_bool(s, "self_signed", self_signed);
    step_fact_str(s, "ca", o->ca_file ? o->ca_file : "system");

    struct verify_errors ve;
    verify_chain(pr, &ve);
    int trust_err = -1, trust_depth = 0;
    step_fact_list(s, "verify_errors", NULL);
    for (int i = 0; i < ve.n; i++) {
        char e[300];
        snprintf(e, sizeof(e), "depth %d: %s", ve.depth[i], X509_verify_cert_error_string(ve.code[i]));
        step_fact_list(s, "verify_errors", e);
        int time_err = ve.code[i] == X509_V_ERR_CERT_HAS_EXPIRED || ve.code[i] == X509_V_ERR_CERT_NOT_YET_VALID;
        if (trust_err < 0 && !(time_err && ve.depth[i] == 0)) {
            trust_err = ve.code[i];
            trust_depth = ve.depth[i];
        }
    }
    step_fact_bool(s, "chain_verified", trust_err < 0);
    unsigned char ipbin[16];
    int is_ip = inet_pton(AF_INET, name, ipbin) == 1 || inet_pton(AF_INET6, name, ipbin) == 1;
    int name_ok = is_ip ? X509_check_ip_asc(x, name, 0) == 1
                        : X509_check_host(x, name, 0, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, NULL) == 1;
    step_fact_str(s, "hostname", name);
    step_fact_bool(s, "hostname_match", name_ok);

    /* message: what the certificate is, then each problem */
    struct strbuf m;
    sb_init(&m);
    sb_printf(&m, "%s; names %s; %s %d bits%s%s; valid until %s (%lld days)", subject,
              names.len ? names.s : "(none)", kt, kbits, curve[0] ? " " : "", curve, na_iso, days);
    enum verdict v = VERDICT_OK;
    if (trust_err >= 0) {
        sb_printf(&m, "; NOT TRUSTED (%s)", X509_verify_cert_error_string(trust_err));
        untrusted_advice(s, trust_err, trust_depth, chain_len);
        v = VERDICT_FAIL;
    } else {
        sb_printf(&m, "; chain verified against %s", o->ca_file ? o->ca_file : "the system CA store");
    }
    if (!name_ok) {
        sb_printf(&m, "; NOT VALID FOR %s", name);
        if (v == VERDICT_OK)
            step_cause(s, "the certificate is not valid for %s (it is for %s): clients that check names refuse it",
                       name, names.len ? names.s : subject);
        step_fix(s, "get a certificate that includes %s (e.g. certbot certonly -d %s), or tell users to configure "
                    "one of the names the certificate has", name, name);
        v = VERDICT_FAIL;
    }
    if (ct == CERT_TIME_EXPIRED || ct == CERT_TIME_NOT_YET_VALID) {
        if (ct == CERT_TIME_EXPIRED)
            sb_printf(&m, "; EXPIRED %lld days ago", -days);
        else
            sb_printf(&m, "; NOT YET VALID (from %s)", nb_iso);
        if (v == VERDICT_OK)
            step_cause(s, ct == CERT_TIME_EXPIRED ? "the certificate expired on %s"
                                                  : "the certificate is valid only from %s: a clock is wrong, or it "
                                                    "was installed too early",
                       ct == CERT_TIME_EXPIRED ? na_iso : nb_iso);
        step_fix(s, "renew the certificate (certbot renew) and reload the server so that it reads the new file "
                    "(postfix reload; submitctl reload)");
        v = VERDICT_FAIL;
    }
    enum verdict kv = key_verdict(kt, kbits);
    if (kv != VERDICT_OK) {
        sb_printf(&m, "; WEAK KEY");
        if (v == VERDICT_OK)
            step_cause(s, "a %d-bit %s key is too weak", kbits, kt);
        step_fix(s, "make a new key (RSA 2048 bits or more, or ECDSA P-256) and a new certificate for it");
        v = verdict_worst(v, kv);
    }
    int weak_sig = !self_signed && (sig_nid == NID_sha1WithRSAEncryption || sig_nid == NID_ecdsa_with_SHA1 ||
                                    sig_nid == NID_md5WithRSAEncryption || sig_nid == NID_dsaWithSHA1);
    if (weak_sig) {
        sb_printf(&m, "; WEAK SIGNATURE (%s)", sig ? sig : "?");
        if (v == VERDICT_OK)
            step_cause(s, "the certificate is signed with %s, which current clients refuse", sig ? sig : "?");
        step_fix(s, "have the certificate re-issued with a SHA-256 signature");
        v = verdict_worst(v, VERDICT_WARN);
    }
    if (ct == CERT_TIME_EXPIRING) {
        sb_printf(&m, "; expires in %lld days", days);
        if (v == VERDICT_OK)
            step_cause(s, "the certificate expires in %lld days (%s)", days, na_iso);
        step_fix(s, "renew it now, and check that automatic renewal runs and reloads the server (systemctl list-timers "
                    "certbot.timer)");
        v = verdict_worst(v, VERDICT_WARN);
    }
    step_set(s, v, "%s", m.s);
    sb_free(&m);
    sb_free(&names);
    check_done(pr, s);
}

/* ---- protocol versions ------------------------------------------------------------------ */

void step_tls_versions(struct port_run *pr)
{
    struct step *s = report_add_step(pr->cx->r, pr->p, "tls-versions");
    if (probe_skip(pr, s))
        return;
    int best = pr->version ? pr->version : pr->legacy_version;
    step_fact_str(s, "best_protocol", version_name(best));
    static const int vers[] = {TLS1_1_VERSION, TLS1_VERSION};
    static const char *const keys[] = {"tls1_1", "tls1_0"};
    int accepted[2] = {0, 0}, errors = 0;
    char err[300] = "";
    uint64_t t0 = now_ms();
    for (size_t i = 0; i < ARRAY_LEN(vers); i++) {
        char cerr[256], detail[300];
        SSL_CTX *ctx = probe_ctx(pr, vers[i], vers[i], LEGACY_CIPHERS, cerr, sizeof(cerr));
        if (!ctx) {
            errors++;
            snprintf(err, sizeof(err), "%s", cerr);
            continue;
        }
        struct check_label l;
        char what[32];
        snprintf(what, sizeof(what), "probe %s", version_name(vers[i]));
        check_label_init(&l, pr->cx->o, pr->port, what);
        enum probe_res res = probe_tls(pr, ctx, &l, detail, sizeof(detail), NULL);
        SSL_CTX_free(ctx);
        accepted[i] = res == PROBE_ACCEPTED;
        if (res == PROBE_ERROR) {
            errors++;
            str_copy(err, detail, sizeof(err));
        }
        step_fact_bool(s, keys[i], accepted[i]);
    }
    s->ms = (long long)(now_ms() - t0);
    if (pr->legacy_version && pr->legacy_version < TLS1_2_VERSION) {
        step_set(s, VERDICT_FAIL, "TLS 1.2 and 1.3 refused; %s%s%s accepted", accepted[0] ? "TLSv1.1" : "",
                 accepted[0] && accepted[1] ? " and " : "", accepted[1] ? "TLSv1" : "");
        step_cause(s, "only deprecated protocol versions are enabled (see the tls step)");
        step_fix(s, "enable TLS 1.2 and 1.3 on the server");
    } else if (accepted[0] || accepted[1]) {
        step_set(s, VERDICT_WARN, "also accepts %s%s%s (deprecated by RFC 8996); best %s", accepted[0] ? "TLSv1.1" : "",
                 accepted[0] && accepted[1] ? " and " : "", accepted[1] ? "TLSv1" : "", version_name(best));
        step_cause(s, "old protocol versions are still enabled: weak ciphers and downgrade risks for old clients");
        step_fix(s, "Postfix: smtpd_tls_protocols = >=TLSv1.2 and smtpd_tls_mandatory_protocols = >=TLSv1.2");
        step_fix(s, "submitd: tls { min-version 1.2 } (the default); Exim: openssl_options = +no_tlsv1 +no_tlsv1_1");
    } else if (errors) {
        step_set(s, VERDICT_WARN, "could not probe TLS 1.0/1.1: %s", err);
        step_cause(s, "the probe connections failed before their TLS handshake (connection limits?)");
        step_fix(s, "run again; --no-probe skips the probes");
    } else {
        step_set(s, VERDICT_OK, "TLSv1 and TLSv1.1 refused; best %s", version_name(best));
    }
    check_done(pr, s);
}

/* ---- ciphers --------------------------------------------------------------------------- */

void step_tls_ciphers(struct port_run *pr)
{
    struct step *s = report_add_step(pr->cx->r, pr->p, "tls-ciphers");
    if (probe_skip(pr, s))
        return;
    uint64_t t0 = now_ms();
    char cerr[256], detail[300];
    struct check_label l;
    check_label_init(&l, pr->cx->o, pr->port, "probe weak-ciphers");
    SSL_CTX *ctx = probe_ctx(pr, TLS1_VERSION, TLS1_2_VERSION, WEAK_CIPHERS, cerr, sizeof(cerr));
    enum probe_res weak = PROBE_REFUSED;
    char weak_cipher[128] = "";
    int no_encryption = 0, anonymous = 0;
    if (ctx) {
        struct smtpc *c = NULL;
        weak = probe_tls(pr, ctx, &l, detail, sizeof(detail), &c);
        if (c) {
            const SSL_CIPHER *ci = SSL_get_current_cipher(c->ssl);
            str_copy(weak_cipher, SSL_CIPHER_get_name(ci), sizeof(weak_cipher));
            no_encryption = SSL_CIPHER_get_cipher_nid(ci) == NID_undef;
            anonymous = SSL_CIPHER_get_auth_nid(ci) == NID_auth_null;
            check_quit(c);
        }
        SSL_CTX_free(ctx);
    }
    step_fact_bool(s, "weak_probe_run", ctx != NULL);
    if (weak_cipher[0])
        step_fact_str(s, "weak_cipher", weak_cipher);
    check_label_init(&l, pr->cx->o, pr->port, "probe rsa-kx");
    ctx = probe_ctx(pr, TLS1_VERSION, TLS1_2_VERSION, NOFS_CIPHERS, cerr, sizeof(cerr));
    enum probe_res nofs = PROBE_REFUSED;
    char nofs_cipher[128] = "";
    if (ctx) {
        struct smtpc *c = NULL;
        nofs = probe_tls(pr, ctx, &l, detail, sizeof(detail), &c);
        if (c) {
            str_copy(nofs_cipher, SSL_get_cipher_name(c->ssl), sizeof(nofs_cipher));
            check_quit(c);
        }
        SSL_CTX_free(ctx);
    }
    step_fact_bool(s, "forward_secrecy_only", nofs != PROBE_ACCEPTED);
    s->ms = (long long)(now_ms() - t0);
    char note[200] = "";
    if (nofs == PROBE_ACCEPTED)
        snprintf(note, sizeof(note), "; accepts RSA key exchange without forward secrecy (%s)", nofs_cipher);
    if (weak == PROBE_ACCEPTED) {
        if (no_encryption) {
            step_set(s, VERDICT_FAIL, "accepts the cipher %s, which does not encrypt%s", weak_cipher, note);
            step_cause(s, "NULL cipher suites are enabled: a client that offers them (or an attacker who forces it) "
                          "sends everything in the clear");
        } else if (anonymous) {
            step_set(s, VERDICT_WARN, "accepts the anonymous cipher %s (no server certificate)%s", weak_cipher, note);
            step_cause(s, "anonymous cipher suites are enabled: a client that offers them cannot tell the server from "
                          "a man in the middle (mainstream clients never offer them; Postfix enables them by default)");
        } else {
            step_set(s, VERDICT_WARN, "accepts the weak cipher %s%s", weak_cipher, note);
            step_cause(s, "weak cipher suites (3DES, RC4, DES, EXPORT, MD5...) are enabled: a client that offers "
                          "them gets little protection");
        }
        step_fix(s, "Postfix: smtpd_tls_exclude_ciphers = aNULL, eNULL, EXPORT, DES, 3DES, RC4, MD5, IDEA, SEED and "
                    "smtpd_tls_mandatory_ciphers = high");
        step_fix(s, "submitd offers only AEAD ciphers; in general allow ECDHE with AES-GCM or ChaCha20-Poly1305");
    } else if (weak == PROBE_ERROR || nofs == PROBE_ERROR) {
        step_set(s, VERDICT_WARN, "could not probe the ciphers: %s", detail);
        step_cause(s, "the probe connections failed before their TLS handshake (connection limits?)");
        step_fix(s, "run again; --no-probe skips the probes");
    } else {
        step_set(s, VERDICT_OK, "no weak cipher accepted%s%s", s->nfacts && !step_get_fact(s, "weak_cipher") &&
                                                                 step_get_fact(s, "weak_probe_run")->num
                                                             ? " (probed NULL, anonymous, EXPORT, DES, 3DES, RC4, MD5)"
                                                             : " (this OpenSSL cannot offer them)",
                 note);
    }
    check_done(pr, s);
}

/* ---- STARTTLS command injection ------------------------------------------------------------- */

void step_starttls_injection(struct port_run *pr)
{
    struct check_ctx *cx = pr->cx;
    struct step *s = report_add_step(cx->r, pr->p, "starttls-injection");
    if (pr->implicit) {
        step_set(s, VERDICT_SKIP, "not applicable: implicit TLS has no plaintext phase");
        check_done(pr, s);
        return;
    }
    if (probe_skip(pr, s))
        return;
    uint64_t t0 = now_ms();
    char why[300], lerr[256];
    struct check_label l;
    check_label_init(&l, cx->o, pr->port, "probe injection");
    SSL_CTX *ctx = pr->tls_ok ? cx->tls : probe_ctx(pr, TLS1_VERSION, 0, LEGACY_CIPHERS, lerr, sizeof(lerr));
    struct smtpc *c = ctx ? check_open(pr, &l, NULL, why, sizeof(why)) : NULL;
    if (!ctx)
        str_copy(why, lerr, sizeof(why));
    struct smtp_reply *r = xmalloc(sizeof(*r));
    const char *result = "inconclusive";
    enum verdict v = VERDICT_WARN;
    char msg[1024];
    snprintf(msg, sizeof(msg), "could not probe: %s", why);
    if (c) {
        static const char probe[] = "STARTTLS\r\n" INJECTED_CMD "\r\n";
        if (c->transcript) {
            c->transcript(c->transcript_arg, 1, "STARTTLS", 8);
            c->transcript(c->transcript_arg, 1, INJECTED_CMD " (same packet)", strlen(INJECTED_CMD) + 14);
        }
        int rc = smtpc_write(c, probe, sizeof(probe) - 1);
        if (rc == 0)
            rc = smtpc_read_reply(c, r);
        if (rc != 0 && c->err == SMTPC_CLOSED) {
            /* the STARTTLS of the main connection worked: this refusal is about the pipelining */
            result = "not-vulnerable";
            v = VERDICT_OK;
            snprintf(msg, sizeof(msg), "the server drops a connection that pipelines a command after STARTTLS");
        } else if (rc != 0) {
            snprintf(msg, sizeof(msg), "could not probe: %s", c->errtext);
        } else if (r->code != 220) {
            char sum[512];
            reply_summary(r, sum, sizeof(sum));
            step_fact_str(s, "reply", sum);
            result = "not-vulnerable";
            v = VERDICT_OK;
            snprintf(msg, sizeof(msg), "the server refuses a command pipelined after STARTTLS (%s)", sum);
        } else if (smtpc_starttls(c, ctx, cx->name) != 0) {
            if (c->err == SMTPC_PROTOCOL) {
                result = "plaintext-reply";
                snprintf(msg, sizeof(msg), "the server answered a command pipelined after STARTTLS in plaintext, "
                                           "before TLS");
            } else {
                snprintf(msg, sizeof(msg), "TLS handshake failed after a pipelined command: %s", c->errtext);
            }
        } else if (smtpc_exchange(c, r, "NOOP") != 0) {
            snprintf(msg, sizeof(msg), "no answer inside TLS: %s", c->errtext);
        } else {
            char sum[512];
            reply_summary(r, sum, sizeof(sum));
            step_fact_str(s, "reply", sum);
            if (r->code == 250) {
                result = "not-vulnerable";
                v = VERDICT_OK;
                snprintf(msg, sizeof(msg), "input pipelined after STARTTLS is discarded, not run inside TLS");
            } else {
                result = "vulnerable";
                v = VERDICT_FAIL;
                snprintf(msg, sizeof(msg), "vulnerable to STARTTLS command injection: a command sent in plaintext "
                                           "before the handshake ran inside TLS (%s)", sum);
            }
        }
        check_quit(c);
    }
    if (ctx && ctx != cx->tls)
        SSL_CTX_free(ctx);
    free(r);
    s->ms = (long long)(now_ms() - t0);
    step_fact_str(s, "result", result);
    step_set(s, v, "%s", msg);
    if (strcmp(result, "vulnerable") == 0) {
        step_cause(s, "the server keeps input received before STARTTLS and executes it after the handshake "
                      "(CVE-2011-0411 class): an attacker on the path can inject commands into the encrypted "
                      "session");
        step_fix(s, "update the server software: it must discard buffered input when TLS starts (Postfix fixed "
                    "this in 2.8.4, 2.7.3, 2.6.9 and 2.5.13)");
    } else if (strcmp(result, "plaintext-reply") == 0) {
        step_cause(s, "the server does not discard input pipelined after STARTTLS (RFC 3207 section 4.2); not an "
                      "injection into TLS, but a sign of a sloppy implementation");
        step_fix(s, "update the server software");
    } else if (v != VERDICT_OK) {
        step_cause(s, "the probe connection did not get far enough to tell");
        step_fix(s, "run again with --verbose to see the probe's dialogue");
    }
    check_done(pr, s);
}
