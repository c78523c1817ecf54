/* relay: the client transaction driver shared by the smarthost and mx
 * transports (see relay.h, docs/relay.md). Opening a connection (greeting,
 * EHLO with HELO fallback, STARTTLS by policy, AUTH PLAIN/LOGIN with
 * credential rotation), one transaction (MAIL/RCPT/DATA, pipelined when
 * offered, the message streamed from the spool with dot-stuffing), the
 * loop over a destination's addresses with connection reuse, and the pure
 * helpers: EHLO keywords, dot-stuffing, MAIL/RCPT parameters, reply ->
 * result mapping. Sockets, TLS and reply parsing are smtp/client.h's. */
#include "relay/relay.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp/parse.h"
#include "tls/tlsclient.h"

#define STREAM_FLUSH (64 * 1024)
#define QUIT_TIMEOUT_MS 1000

/* ---- pure helpers ------------------------------------------------------------------- */

unsigned relay_ehlo_ext(const struct smtp_reply *r, uint64_t *size_max)
{
    static const struct {
        const char *kw;
        unsigned bit;
    } simple[] = {
        {"PIPELINING", EXT_PIPELINING}, {"8BITMIME", EXT_8BITMIME}, {"SMTPUTF8", EXT_SMTPUTF8},
        {"DSN", EXT_DSN},               {"STARTTLS", EXT_STARTTLS}, {"ENHANCEDSTATUSCODES", EXT_ENHANCED},
        {"CHUNKING", EXT_CHUNKING},
    };
    unsigned ext = 0;
    *size_max = 0;
    for (size_t i = 0; i < ARRAY_LEN(simple); i++)
        if (reply_ehlo_has(r, simple[i].kw, NULL, NULL))
            ext |= simple[i].bit;
    const char *p;
    size_t pl;
    if (reply_ehlo_has(r, "SIZE", &p, &pl)) {
        ext |= EXT_SIZE;
        uint64_t v = 0;
        for (size_t i = 0; i < pl && i < 19 && p[i] >= '0' && p[i] <= '9'; i++)
            v = v * 10 + (uint64_t)(p[i] - '0');
        *size_max = v;
    }
    if (reply_ehlo_has(r, "AUTH", &p, &pl)) {
        size_t i = 0;
        while (i < pl) {
            while (i < pl && (p[i] == ' ' || p[i] == '='))
                i++;
            size_t s = i;
            while (i < pl && p[i] != ' ')
                i++;
            if (i - s == 5 && str_iprefix(p + s, "PLAIN"))
                ext |= EXT_AUTH_PLAIN;
            else if (i - s == 5 && str_iprefix(p + s, "LOGIN"))
                ext |= EXT_AUTH_LOGIN;
        }
    }
    return ext;
}

void dotstuff_init(struct dotstuff *d)
{
    d->bol = 1;
    d->empty = 1;
}

void dotstuff_feed(struct dotstuff *d, const char *in, size_t n, struct strbuf *out)
{
    const char *p = in, *end = in + n;
    while (p < end) {
        if (d->bol && *p == '.')
            sb_append(out, ".", 1);
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *seg = nl ? nl + 1 : end;
        sb_append(out, p, (size_t)(seg - p));
        d->bol = nl != NULL;
        p = seg;
    }
    if (n)
        d->empty = 0;
}

void dotstuff_end(struct dotstuff *d, struct strbuf *out)
{
    if (!d->empty && !d->bol)
        sb_append(out, "\r\n", 2);
    sb_append(out, ".\r\n", 3);
    d->bol = 1;
}

int relay_env_needs_utf8(const struct envelope *e)
{
    for (const unsigned char *p = (const unsigned char *)(e->mail_from ? e->mail_from : ""); *p; p++)
        if (*p >= 0x80)
            return 1;
    for (size_t i = 0; i < e->nrcpts; i++)
        for (const unsigned char *p = (const unsigned char *)e->rcpts[i].addr; *p; p++)
            if (*p >= 0x80)
                return 1;
    return 0;
}

static void put_xtext(struct strbuf *out, const char *s)
{
    char buf[3 * SMTP_ORCPT_MAX + 1];
    if (xtext_encode(s, buf, sizeof(buf)) < sizeof(buf))
        sb_puts(out, buf);
}

void relay_mail_cmd(const struct envelope *e, unsigned ext, uint64_t size, struct strbuf *out)
{
    sb_printf(out, "MAIL FROM:<%s>", e->mail_from ? e->mail_from : "");
    if (ext & EXT_SIZE)
        sb_printf(out, " SIZE=%llu", (unsigned long long)size);
    if (e->body == BODY_8BITMIME && (ext & EXT_8BITMIME))
        sb_puts(out, " BODY=8BITMIME");
    if (e->smtputf8 && (ext & EXT_SMTPUTF8))
        sb_puts(out, " SMTPUTF8");
    if (ext & EXT_DSN) {
        if (e->dsn_ret == DSN_RET_FULL)
            sb_puts(out, " RET=FULL");
        else if (e->dsn_ret == DSN_RET_HDRS)
            sb_puts(out, " RET=HDRS");
        if (e->envid && *e->envid) {
            sb_puts(out, " ENVID=");
            put_xtext(out, e->envid);
        }
    }
}

void relay_rcpt_cmd(const struct env_rcpt *r, unsigned ext, struct strbuf *out)
{
    sb_printf(out, "RCPT TO:<%s>", r->addr);
    if (!(ext & EXT_DSN))
        return;
    if (r->notify & DSN_NOTIFY_NEVER) {
        sb_puts(out, " NOTIFY=NEVER");
    } else if (r->notify) {
        static const struct {
            unsigned bit;
            const char *name;
        } nb[] = {{DSN_NOTIFY_SUCCESS, "SUCCESS"}, {DSN_NOTIFY_FAILURE, "FAILURE"}, {DSN_NOTIFY_DELAY, "DELAY"}};
        const char *sep = " NOTIFY=";
        for (size_t i = 0; i < ARRAY_LEN(nb); i++) {
            if (r->notify & nb[i].bit) {
                sb_printf(out, "%s%s", sep, nb[i].name);
                sep = ",";
            }
        }
    }
    const char *semi = r->orcpt ? strchr(r->orcpt, ';') : NULL;
    if (semi && semi > r->orcpt && semi[1]) {
        sb_printf(out, " ORCPT=%.*s;", (int)(semi - r->orcpt), r->orcpt);
        put_xtext(out, semi + 1);
    }
}

void relay_result_set(struct delivery_result *res, enum dresult st, const char *code_enh, const char *fmt, ...)
{
    res->status = st;
    res->remote[0] = '\0';
    int w = snprintf(res->text, sizeof(res->text), "%s ", code_enh);
    if (w < 0 || (size_t)w >= sizeof(res->text))
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->text + w, sizeof(res->text) - (size_t)w, fmt, ap);
    va_end(ap);
    for (char *p = res->text; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
}

void relay_result_reply(struct delivery_result *res, const struct smtp_reply *r, const char *host,
                        const char *peer, const char *what)
{
    int cls = r->code / 100;
    res->status = cls == 2 ? DR_OK : cls == 5 ? DR_PERM : DR_TEMP;
    char sum[sizeof(res->text)];
    reply_summary(r, sum, sizeof(sum));
    /* skip "NNN " and "X.Y.Z " that reply_summary put in front */
    const char *t = sum + (strlen(sum) >= 3 ? 3 : strlen(sum));
    if (*t == ' ')
        t++;
    if (r->enh[0] && strncmp(t, r->enh, strlen(r->enh)) == 0) {
        t += strlen(r->enh);
        if (*t == ' ')
            t++;
    }
    char enh[16];
    if (r->enh[0])
        str_copy(enh, r->enh, sizeof(enh));
    else
        snprintf(enh, sizeof(enh), "%d.0.0", cls >= 2 && cls <= 5 ? cls : 4);
    snprintf(res->text, sizeof(res->text), "%03d %s %s (%s[%s], in reply to %s)", r->code, enh, t, host, peer, what);
    str_copy(res->remote, host, sizeof(res->remote));
}

/* ---- connection -------------------------------------------------------------------------- */

static void transcript_log(void *arg, int sent, const char *line, size_t len)
{
    const struct relay_conn *rc = arg;
    char l[REPLY_LINE_MAX + 1], ql[LOGQ_MAX], qh[LOGQ_MAX];
    size_t n = len < REPLY_LINE_MAX ? len : REPLY_LINE_MAX;
    memcpy(l, line, n);
    l[n] = '\0';
    logkv(LOG_LVL_DEBUG, NULL, "relay.transcript", "host=%s peer=%s dir=%s line=%s", log_q(qh, sizeof(qh), rc->host),
          rc->peer, sent ? "out" : "in", log_q(ql, sizeof(ql), l));
}

void relay_close(struct relay_conn *rc, int quit)
{
    if (!rc)
        return;
    if (quit && rc->c) {
        struct smtp_reply r;
        rc->c->timeout_ms = QUIT_TIMEOUT_MS;
        if (smtpc_cmd(rc->c, "QUIT") == 0)
            smtpc_read_reply(rc->c, &r);
    }
    smtpc_close(rc->c);
    free(rc);
}

int relay_rset(struct relay_conn *rc)
{
    struct smtp_reply r;
    return smtpc_exchange(rc->c, &r, "RSET") == 0 && r.code == 250 ? 0 : -1;
}

static void where(const struct relay_conn *rc, char *buf, size_t n)
{
    snprintf(buf, n, "%s[%s]", rc->host, rc->peer);
}

/* Fills f from the connection's last error. */
static void fail_io(struct relay_fail *f, const struct relay_conn *rc, const char *stage)
{
    char w[400];
    where(rc, w, sizeof(w));
    relay_result_set(&f->res, DR_TEMP, rc->c->err == SMTPC_TLS ? "451 4.7.5" : "451 4.4.2", "%s: %s: %s (%s)", w,
                     stage, rc->c->errtext, smtpc_err_name(rc->c->err));
}

static void fail_reply(struct relay_fail *f, const struct relay_conn *rc, const struct smtp_reply *r,
                       const char *code_enh, const char *stage)
{
    char w[400], sum[300];
    where(rc, w, sizeof(w));
    reply_summary(r, sum, sizeof(sum));
    relay_result_set(&f->res, DR_TEMP, code_enh, "%s %s: %s", w, stage, sum);
    str_copy(f->res.remote, rc->host, sizeof(f->res.remote));
}

static void log_fail(const struct relay_target *t, const struct relay_conn *rc, const char *event,
                     const struct relay_fail *f)
{
    char qh[LOGQ_MAX], qr[LOGQ_MAX];
    logkv(LOG_LVL_WARN, t->lc, event, "host=%s peer=%s reason=%s", log_q(qh, sizeof(qh), rc->host), rc->peer,
          log_q(qr, sizeof(qr), f->res.text));
}

static int ehlo(struct relay_conn *rc, const struct relay_opts *o, struct smtp_reply *r)
{
    if (smtpc_exchange(rc->c, r, "EHLO %s", o->helo) != 0)
        return -1;
    if (r->code == 250) {
        rc->esmtp = 1;
        rc->ext = relay_ehlo_ext(r, &rc->size_max);
        return 0;
    }
    if (r->code < 500)
        return 0; /* the caller reports the 4xx */
    if (smtpc_exchange(rc->c, r, "HELO %s", o->helo) != 0)
        return -1;
    rc->esmtp = 0;
    rc->ext = 0;
    rc->size_max = 0;
    return 0;
}

/* EHLO (HELO fallback) that must end in 250. 0, or -1 with f filled. */
static int greet(struct relay_conn *rc, const struct relay_opts *o, struct relay_fail *f, const char *stage)
{
    struct smtp_reply r;
    if (ehlo(rc, o, &r) != 0) {
        fail_io(f, rc, stage);
        return -1;
    }
    if (r.code != 250) {
        char what[64];
        snprintf(what, sizeof(what), "refused %s:", stage);
        fail_reply(f, rc, &r, "451 4.4.0", what);
        return -1;
    }
    return 0;
}

/* AUTH with one credential: 1 accepted, 0 refused (5xx), -1 other failure
 * (the reply, if any, in *r). */
static int auth_one(struct relay_conn *rc, const struct relay_cred *cr, struct smtp_reply *r)
{
    struct smtpc *c = rc->c;
    size_t ll = strlen(cr->login), pl = strlen(cr->password);
    int rcode;
    if (rc->ext & EXT_AUTH_PLAIN) {
        size_t n = ll + pl + 2;
        unsigned char *raw = xmalloc(n);
        raw[0] = '\0';
        memcpy(raw + 1, cr->login, ll);
        raw[1 + ll] = '\0';
        memcpy(raw + 2 + ll, cr->password, pl);
        size_t bl = 4 * ((n + 2) / 3) + 1;
        char *b = xmalloc(bl);
        b64_encode(raw, n, b, bl);
        rcode = smtpc_cmd_secret(c, "AUTH PLAIN ****", "AUTH PLAIN %s", b);
        mem_wipe(raw, n);
        mem_wipe(b, bl);
        free(raw);
        free(b);
        if (rcode != 0 || smtpc_read_reply(c, r) != 0)
            return -1;
    } else {
        if (smtpc_exchange(c, r, "AUTH LOGIN") != 0)
            return -1;
        for (int step = 0; step < 2 && r->code == 334; step++) {
            const char *v = step == 0 ? cr->login : cr->password;
            size_t vl = step == 0 ? ll : pl;
            size_t bl = 4 * ((vl + 2) / 3) + 1;
            char *b = xmalloc(bl);
            b64_encode((const unsigned char *)v, vl, b, bl);
            rcode = smtpc_cmd_secret(c, "****", "%s", b);
            mem_wipe(b, bl);
            free(b);
            if (rcode != 0 || smtpc_read_reply(c, r) != 0)
                return -1;
        }
    }
    if (r->code == 235)
        return 1;
    return r->code >= 500 ? 0 : -1;
}

static int do_auth(struct relay_conn *rc, const struct relay_target *t, struct relay_fail *f)
{
    char w[400], qh[LOGQ_MAX], ql[LOGQ_MAX], qr[LOGQ_MAX];
    where(rc, w, sizeof(w));
    if (!rc->tls) {
        relay_result_set(&f->res, DR_TEMP, "451 4.7.0",
                         "%s: not sending credentials over a connection without TLS", w);
        return -1;
    }
    if (!(rc->ext & (EXT_AUTH_PLAIN | EXT_AUTH_LOGIN))) {
        relay_result_set(&f->res, DR_TEMP, "451 4.7.0", "%s offers no AUTH PLAIN or LOGIN", w);
        return -1;
    }
    struct smtp_reply r;
    for (size_t i = 0; i < t->ncreds; i++) {
        memset(&r, 0, sizeof(r));
        int a = auth_one(rc, &t->creds[i], &r);
        if (a == 1) {
            logkv(LOG_LVL_INFO, t->lc, "relay.auth", "host=%s peer=%s login=%s mech=%s", log_q(qh, sizeof(qh), rc->host),
                  rc->peer, log_q(ql, sizeof(ql), t->creds[i].login), rc->ext & EXT_AUTH_PLAIN ? "PLAIN" : "LOGIN");
            return 0;
        }
        char sum[300] = "";
        if (r.code)
            reply_summary(&r, sum, sizeof(sum));
        logkv(LOG_LVL_WARN, t->lc, "relay.auth_failed", "host=%s peer=%s login=%s credential=%zu/%zu reply=%s",
              log_q(qh, sizeof(qh), rc->host), rc->peer, log_q(ql, sizeof(ql), t->creds[i].login), i + 1,
              t->ncreds, log_q(qr, sizeof(qr), r.code ? sum : rc->c->errtext));
        if (a < 0) {
            if (r.code)
                fail_reply(f, rc, &r, "451 4.7.0", "AUTH");
            else
                fail_io(f, rc, "AUTH");
            return -1;
        }
    }
    f->auth_failed = 1;
    fail_reply(f, rc, &r, "451 4.7.0", "refused every credential of the auth-file, last");
    return -1;
}

/* STARTTLS (or implicit TLS) handshake + the log line. 0 or -1 (f set). */
static int tls_handshake(struct relay_conn *rc, const struct relay_opts *o, const struct relay_target *t,
                         struct relay_fail *f)
{
    char qh[LOGQ_MAX], qr[LOGQ_MAX];
    if (smtpc_starttls(rc->c, t->tls_ctx, rc->host) != 0) {
        f->tls_failed = 1;
        fail_io(f, rc, "TLS handshake");
        log_fail(t, rc, "relay.tls_failed", f);
        return -1;
    }
    char why[256];
    rc->tls = 1;
    rc->verified = tls_client_verify_result(rc->c->ssl, why, sizeof(why)) == 0;
    logkv(LOG_LVL_INFO, t->lc, "relay.tls", "host=%s peer=%s version=%s cipher=%s verified=%s%s%s",
          log_q(qh, sizeof(qh), rc->host), rc->peer, SSL_get_version(rc->c->ssl), SSL_get_cipher_name(rc->c->ssl),
          rc->verified ? "yes" : "no", rc->verified ? "" : " why=",
          rc->verified ? "" : log_q(qr, sizeof(qr), why));
    return 0;
}

static int want_starttls(const struct relay_conn *rc, const struct relay_opts *o, const struct relay_target *t)
{
    if (t->plain || o->tls == TLSP_OFF || o->tls == TLSP_IMPLICIT)
        return 0;
    return (rc->ext & EXT_STARTTLS) || o->tls == TLSP_REQUIRED;
}

struct relay_conn *relay_open(const struct relay_opts *o, const struct relay_target *t, struct relay_fail *f)
{
    memset(f, 0, sizeof(*f));
    struct relay_conn *rc = xcalloc(1, sizeof(*rc));
    rc->clean = 1;
    str_copy(rc->host, t->host, sizeof(rc->host));
    sockaddr_text(t->sa, rc->peer, sizeof(rc->peer));
    str_copy(rc->key, rc->peer, sizeof(rc->key));
    char et[256], w[400];
    enum smtpc_err e;
    rc->c = smtpc_connect(t->sa, t->salen, (int)o->connect_timeout_ms, &e, et, sizeof(et));
    if (!rc->c) {
        where(rc, w, sizeof(w));
        relay_result_set(&f->res, DR_TEMP, "451 4.4.1", "%s: %s (%s)", w, et, smtpc_err_name(e));
        log_fail(t, rc, "relay.connect_failed", f);
        free(rc);
        return NULL;
    }
    rc->c->timeout_ms = (int)o->command_timeout_ms;
    if (log_enabled(LOG_LVL_DEBUG))
        smtpc_set_transcript(rc->c, transcript_log, rc);
    struct smtp_reply r;
    if (o->tls == TLSP_IMPLICIT && tls_handshake(rc, o, t, f) != 0)
        goto fail;
    if (smtpc_read_reply(rc->c, &r) != 0) {
        fail_io(f, rc, "greeting");
        goto fail_log;
    }
    if (r.code != 220) {
        fail_reply(f, rc, &r, "451 4.4.0", "greeted with");
        goto fail_log;
    }
    if (greet(rc, o, f, "EHLO/HELO") != 0)
        goto fail_log;
    where(rc, w, sizeof(w));
    if (want_starttls(rc, o, t)) {
        if (!(rc->ext & EXT_STARTTLS)) {
            relay_result_set(&f->res, DR_TEMP, "451 4.7.4", "%s offers no STARTTLS and this transport requires it",
                             w);
            goto fail_log;
        }
        if (smtpc_exchange(rc->c, &r, "STARTTLS") != 0) {
            fail_io(f, rc, "STARTTLS");
            goto fail_log;
        }
        if (r.code != 220) {
            fail_reply(f, rc, &r, "451 4.7.4", "refused STARTTLS:");
            if (o->tls == TLSP_REQUIRED)
                goto fail_log;
            f->tls_failed = 1; /* opportunistic: a plain retry will skip it */
            goto fail_log;
        }
        if (tls_handshake(rc, o, t, f) != 0)
            goto fail;
        if (greet(rc, o, f, "EHLO after STARTTLS") != 0)
            goto fail_log;
    } else if (!rc->tls && o->tls == TLSP_OPTIONAL) {
        char qh[LOGQ_MAX];
        logkv(LOG_LVL_WARN, t->lc, "relay.plaintext",
              "host=%s peer=%s warning=\"no STARTTLS offered: sending in plain text (starttls optional)\"",
              log_q(qh, sizeof(qh), rc->host), rc->peer);
    }
    if (t->ncreds && do_auth(rc, t, f) != 0)
        goto fail_log;
    return rc;
fail_log:
    log_fail(t, rc, "relay.session_failed", f);
fail:
    relay_close(rc, rc->c->err == SMTPC_OK);
    return NULL;
}

/* ---- transaction ------------------------------------------------------------------------------ */

struct stream_ctx {
    struct smtpc *c;
    struct dotstuff ds;
    struct strbuf buf;
    int write_failed;
};

static int stream_out(void *arg, const void *buf, size_t n)
{
    struct stream_ctx *s = arg;
    dotstuff_feed(&s->ds, buf, n, &s->buf);
    if (s->buf.len < STREAM_FLUSH)
        return 0;
    int r = smtpc_write(s->c, s->buf.s, s->buf.len);
    sb_reset(&s->buf);
    if (r != 0)
        s->write_failed = 1;
    return r;
}

static int collect_out(void *arg, const void *buf, size_t n)
{
    struct strbuf *b = arg;
    if (b->len + n > RELAY_BDAT_MAX + 2) /* the message grew since its size was read: use DATA */
        return -1;
    sb_append(b, buf, n);
    return 0;
}

/* The whole delivered form of a message for one `BDAT n LAST` (no dot-
 * stuffing), ending with CRLF like the DATA path makes it. 0, or -1 (a
 * spool read failed or it is larger than RELAY_BDAT_MAX: use DATA). */
static int load_for_bdat(struct spool_msg *m, struct strbuf *body)
{
    if (transport_stream(m, 0, collect_out, body) != 0)
        return -1;
    if (body->len > 0 && body->s[body->len - 1] != '\n')
        sb_append(body, "\r\n", 2);
    return 0;
}

/* Every recipient i without a final result (done[i] == 0) gets res. */
static void fill_open(struct delivery_result *res, const int *done, size_t n, const struct delivery_result *r)
{
    for (size_t i = 0; i < n; i++)
        if (!done[i])
            res[i] = *r;
}

/* The accepted recipients get the result of r (final for this attempt).
 * 1 when r is a 421: the server is closing the session. */
static int result_accepted(const struct relay_conn *rc, const struct smtp_reply *r, const char *what,
                           struct delivery_result *res, int *done, const int *accepted, size_t n)
{
    struct delivery_result fr;
    relay_result_reply(&fr, r, rc->host, rc->peer, what);
    for (size_t i = 0; i < n; i++) {
        if (accepted[i]) {
            res[i] = fr;
            done[i] = 1;
        }
    }
    return r->code == 421;
}

/* The reply after the end of the message (DATA's final dot or BDAT
 * LAST), waited for with the data timeout. When none comes, the open
 * recipients get a 451 that says the message may have been delivered
 * (fr is set; returns -1). */
static int read_end_reply(struct smtpc *c, const struct relay_opts *o, const char *w, struct smtp_reply *r,
                          struct delivery_result *fr, struct delivery_result *res, const int *done, size_t n)
{
    c->timeout_ms = (int)o->data_timeout_ms;
    int rr = smtpc_read_reply(c, r);
    c->timeout_ms = (int)o->command_timeout_ms;
    if (rr == 0)
        return 0;
    relay_result_set(fr, DR_TEMP, "451 4.4.2",
                     "%s: no reply after the end of the message: %s (%s); it may have been delivered", w, c->errtext,
                     smtpc_err_name(c->err));
    fill_open(res, done, n, fr);
    return -1;
}

enum relay_tx relay_transaction(struct relay_conn *rc, const struct relay_opts *o, struct spool_msg *m,
                                const size_t *rcpts, size_t n, struct delivery_result *res,
                                const struct log_ctx *lc)
{
    struct smtpc *c = rc->c;
    const struct envelope *e = &m->env;
    char w[400], qh[LOGQ_MAX], qr[LOGQ_MAX], qs[LOGQ_MAX];
    where(rc, w, sizeof(w));
    c->timeout_ms = (int)o->command_timeout_ms;
    struct delivery_result fr;
    if (relay_env_needs_utf8(e) && !(rc->ext & EXT_SMTPUTF8)) {
        relay_result_set(&fr, DR_PERM, "553 5.6.7",
                         "%s does not support SMTPUTF8, which the non-ASCII addresses of this message need", w);
        for (size_t i = 0; i < n; i++)
            res[i] = fr;
        return TX_DONE;
    }
    uint64_t size = (e->prepend ? strlen(e->prepend) : 0) + e->size;
    if ((rc->ext & EXT_SIZE) && rc->size_max && size > rc->size_max) {
        relay_result_set(&fr, DR_PERM, "552 5.3.4", "message of %llu bytes exceeds the size limit of %s (%llu)",
                         (unsigned long long)size, w, (unsigned long long)rc->size_max);
        for (size_t i = 0; i < n; i++)
            res[i] = fr;
        return TX_DONE;
    }
    int *done = xcalloc(n ? n : 1, sizeof(*done));     /* result final for this attempt */
    int *accepted = xcalloc(n ? n : 1, sizeof(*accepted));
    size_t naccepted = 0;
    enum relay_tx tx = TX_DONE;
    struct strbuf cmd;
    sb_init(&cmd);
    struct smtp_reply r;
    int pipelining = (rc->ext & EXT_PIPELINING) != 0;
    const char *stage = "MAIL FROM";
    struct strbuf body;
    sb_init(&body);
    int bdat = o->chunking && pipelining && (rc->ext & EXT_CHUNKING) && size <= RELAY_BDAT_MAX &&
               load_for_bdat(m, &body) == 0;

    relay_mail_cmd(e, rc->ext, size, &cmd);
    sb_append(&cmd, "\r\n", 2);
    rc->clean = 0; /* until a final reply ends the transaction */
    if (pipelining) {
        for (size_t i = 0; i < n; i++) {
            relay_rcpt_cmd(&e->rcpts[rcpts[i]], rc->ext, &cmd);
            sb_append(&cmd, "\r\n", 2);
        }
        if (bdat) {
            sb_printf(&cmd, "BDAT %zu LAST\r\n", body.len);
            sb_append(&cmd, body.s ? body.s : "", body.len);
        } else {
            sb_puts(&cmd, "DATA\r\n");
        }
    }
    if (smtpc_write(c, cmd.s, cmd.len) != 0 || smtpc_read_reply(c, &r) != 0)
        goto broken;
    int mail_ok = r.code / 100 == 2;
    if (!mail_ok) {
        relay_result_reply(&fr, &r, rc->host, rc->peer, "MAIL FROM");
        for (size_t i = 0; i < n; i++) {
            res[i] = fr;
            done[i] = 1;
        }
        if (r.code == 421)
            goto broken;
    }
    stage = "RCPT TO";
    for (size_t i = 0; i < n && (pipelining || mail_ok); i++) {
        if (!pipelining) {
            sb_reset(&cmd);
            relay_rcpt_cmd(&e->rcpts[rcpts[i]], rc->ext, &cmd);
            sb_append(&cmd, "\r\n", 2);
            if (smtpc_write(c, cmd.s, cmd.len) != 0)
                goto broken;
        }
        if (smtpc_read_reply(c, &r) != 0)
            goto broken;
        if (!mail_ok)
            continue;
        if (r.code / 100 == 2) {
            accepted[i] = 1;
            naccepted++;
        } else {
            relay_result_reply(&res[i], &r, rc->host, rc->peer, "RCPT TO");
            done[i] = 1;
            if (r.code == 421)
                goto broken;
        }
    }
    if (bdat) {
        /* the reply to BDAT LAST is the end-of-data reply; with MAIL or
         * every RCPT refused it is an error that ends nothing */
        stage = "BDAT";
        if (naccepted > 0 && read_end_reply(c, o, w, &r, &fr, res, done, n) != 0) {
            tx = TX_UNCERTAIN;
            goto out_close;
        }
        if (naccepted == 0 && smtpc_read_reply(c, &r) != 0)
            goto broken;
        if (naccepted > 0 && result_accepted(rc, &r, "end of data", res, done, accepted, n))
            goto broken;
        if (r.code == 421)
            goto broken;
        /* RFC 3030 2: after a refused chunk the state of the transaction is
         * the server's guess; only a 2xx surely ended it (else RSET first
         * when the connection is used again) */
        if (r.code / 100 == 2)
            rc->clean = 1;
        naccepted = 0; /* sent: the DATA path below has nothing to do */
    }
    stage = "DATA";
    if (!bdat && (pipelining || naccepted > 0)) {
        if (!pipelining && smtpc_cmd(c, "DATA") != 0)
            goto broken;
        if (smtpc_read_reply(c, &r) != 0)
            goto broken;
        if (r.code == 354 && naccepted == 0) {
            /* RFC 2920 3.1: every RCPT failed yet DATA was accepted: send an empty message, ignore the reply */
            if (smtpc_write(c, ".\r\n", 3) != 0 || smtpc_read_reply(c, &r) != 0)
                goto broken;
            rc->clean = 1;
        } else if (naccepted > 0 && r.code != 354) {
            if (result_accepted(rc, &r, "DATA", res, done, accepted, n))
                goto broken;
            naccepted = 0;
        }
    }
    if (naccepted > 0) {
        stage = "the message";
        struct stream_ctx s = {.c = c};
        dotstuff_init(&s.ds);
        sb_init(&s.buf);
        int sr = transport_stream(m, 0, stream_out, &s);
        if (sr == 0) {
            dotstuff_end(&s.ds, &s.buf);
            if (smtpc_write(c, s.buf.s, s.buf.len) != 0)
                s.write_failed = 1;
        }
        sb_free(&s.buf);
        if (sr != 0 && !s.write_failed) {
            /* the spool could not be read: the message cannot be ended; drop the connection */
            relay_result_set(&fr, DR_TEMP, "451 4.3.0", "reading the queued message failed; not sent to %s", w);
            fill_open(res, done, n, &fr);
            tx = TX_BROKEN;
            goto out_close;
        }
        if (s.write_failed)
            goto broken;
        if (read_end_reply(c, o, w, &r, &fr, res, done, n) != 0) {
            tx = TX_UNCERTAIN;
            goto out_close;
        }
        if (result_accepted(rc, &r, "end of data", res, done, accepted, n))
            goto broken;
        rc->clean = 1; /* RFC 5321 4.1.1.4: the reply to the end of data ends the transaction */
    }
    if (!mail_ok)
        rc->clean = 1; /* MAIL refused: no transaction was opened */
    rc->nmsgs++;
    size_t ok = 0;
    for (size_t i = 0; i < n; i++)
        ok += res[i].status == DR_OK;
    /* the queue logs each recipient's result (delivered/failed/deferred,
     * with the reply); this summary adds to it only when a recipient was
     * refused */
    enum log_level lvl = ok == n ? LOG_LVL_DEBUG : LOG_LVL_INFO;
    if (log_enabled(lvl))
        logkv(lvl, lc, "relay.sent", "host=%s peer=%s tls=%s accepted=%zu rcpts=%zu reply=%s",
              log_q(qh, sizeof(qh), rc->host), rc->peer, rc->tls ? SSL_get_version(c->ssl) : "no", ok, n,
              log_q(qr, sizeof(qr), n ? res[0].text : "-"));
    goto out;
broken:
    if (c->err != SMTPC_OK)
        relay_result_set(&fr, DR_TEMP, "451 4.4.2", "%s: connection failed during %s: %s (%s)", w, stage, c->errtext,
                         smtpc_err_name(c->err));
    else
        relay_result_set(&fr, DR_TEMP, "451 4.4.2", "%s closed the session during %s (421)", w, stage);
    for (size_t i = 0; i < n; i++)
        if (!done[i] || res[i].status != DR_PERM)
            res[i] = fr;
    tx = TX_BROKEN;
out_close:
    logkv(LOG_LVL_WARN, lc, "relay.broken", "host=%s peer=%s stage=%s reason=%s", log_q(qh, sizeof(qh), rc->host),
          rc->peer, log_q(qs, sizeof(qs), stage), log_q(qr, sizeof(qr), fr.text));
out:
    sb_free(&cmd);
    sb_free(&body);
    free(done);
    free(accepted);
    return tx;
}

/* ---- one destination's addresses --------------------------------------------------------- */

/* An idle connection is reused without an RSET round trip when its last
 * transaction ended cleanly, it was used this recently and nothing arrived
 * on it meanwhile (see smtpc_idle_quiet); otherwise RSET checks it. */
#define REUSE_QUIET_MS 2000

/* Gets a usable connection for address sa: an idle one that is quiet or
 * answers RSET, else a new one (with the plain-text retry of
 * opportunistic TLS). NULL with f filled (the pool slot released) when
 * none. */
static struct relay_conn *get_conn(const struct relay_attempt *a, const struct sockaddr_storage *sa, const char *key,
                                   struct relay_fail *f)
{
    const struct relay_opts *o = a->o;
    struct relay_conn *rc = NULL;
    int got = relay_pool_acquire(a->pool, key, &rc);
    if (got < 0) {
        memset(f, 0, sizeof(*f));
        relay_result_set(&f->res, DR_TEMP, "451 4.4.5",
                         "%s[%s]: connection limit reached (max-connections %u, per host %u); waited %u ms", a->host,
                         key, o->max_conn, o->max_conn_per_dest, o->limit_wait_ms);
        return NULL;
    }
    if (rc) {
        int quiet = rc->clean && now_ms() - rc->idle_since_ms < REUSE_QUIET_MS && smtpc_idle_quiet(rc->c);
        if (quiet || relay_rset(rc) == 0) {
            char qh[LOGQ_MAX];
            if (log_enabled(LOG_LVL_DEBUG))
                logkv(LOG_LVL_DEBUG, a->lc, "relay.reuse", "host=%s peer=%s messages=%u",
                      log_q(qh, sizeof(qh), rc->host), rc->peer, rc->nmsgs);
            return rc;
        }
        relay_close(rc, 0); /* stale: keep the slot, connect anew */
    }
    struct relay_target t = {.sa = (const struct sockaddr *)sa,
                             .salen = sa->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                                : sizeof(struct sockaddr_in),
                             .host = a->host, .tls_ctx = a->tls_ctx, .creds = a->creds, .ncreds = a->ncreds,
                             .lc = a->lc};
    rc = relay_open(o, &t, f);
    if (!rc && f->tls_failed && o->tls == TLSP_OPPORTUNISTIC) {
        char qh[LOGQ_MAX];
        logkv(LOG_LVL_WARN, a->lc, "relay.tls_fallback", "host=%s peer=%s action=\"retrying in plain text\"",
              log_q(qh, sizeof(qh), a->host), key);
        t.plain = 1;
        rc = relay_open(o, &t, f);
    }
    if (!rc)
        relay_pool_release(a->pool, key, NULL, 0);
    return rc;
}

enum relay_tx relay_deliver_addrs(const struct relay_attempt *a, const struct sockaddr_storage *addrs, size_t naddrs,
                                  struct spool_msg *m, const size_t *rcpts, size_t n, struct delivery_result *res,
                                  size_t *addrs_used)
{
    /* the recipients still open: positions in rcpts/res */
    size_t *open = xcalloc(n ? n : 1, sizeof(*open));
    size_t *sub = xcalloc(n ? n : 1, sizeof(*sub));
    struct delivery_result *sres = xcalloc(n ? n : 1, sizeof(*sres));
    size_t nopen = n;
    for (size_t i = 0; i < n; i++)
        open[i] = i;
    enum relay_tx tx = TX_BROKEN;
    for (size_t i = 0; i < n && naddrs == 0; i++)
        relay_result_set(&res[i], DR_TEMP, "451 4.4.4", "%s: no address to try", a->host);
    for (size_t k = 0; k < naddrs && nopen > 0; k++) {
        char key[64];
        sockaddr_text((const struct sockaddr *)&addrs[k], key, sizeof(key));
        (*addrs_used)++;
        struct relay_fail f;
        struct relay_conn *rc = get_conn(a, &addrs[k], key, &f);
        if (!rc) {
            for (size_t i = 0; i < nopen; i++)
                res[open[i]] = f.res;
            continue;
        }
        for (size_t i = 0; i < nopen; i++)
            sub[i] = rcpts[open[i]];
        tx = relay_transaction(rc, a->o, m, sub, nopen, sres, a->lc);
        relay_pool_release(a->pool, key, rc, tx == TX_DONE);
        size_t still = 0;
        for (size_t i = 0; i < nopen; i++) {
            res[open[i]] = sres[i];
            /* a broken session: what the server did not finally answer goes to the next address */
            if (tx == TX_BROKEN && sres[i].status == DR_TEMP)
                open[still++] = open[i];
        }
        if (tx != TX_BROKEN)
            break;
        nopen = still;
        tx = nopen ? TX_BROKEN : TX_DONE;
    }
    free(open);
    free(sub);
    free(sres);
    return tx;
}
