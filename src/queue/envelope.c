/* envelope: the envelope struct and the pure codec of the envelope
 * trailer (spool.h, docs/spool-format.md), and the value escaping and
 * field readers it shares with spool.c's status log (spool_int.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue/spool.h"
#include "queue/spool_int.h"

#define ENV_VERSION_LINE "submitd-envelope 1"
#define ENV_RCPTS_MAX 1000000u

/* ---- envelope ------------------------------------------------------------ */

void envelope_init(struct envelope *e)
{
    memset(e, 0, sizeof(*e));
}

void envelope_free(struct envelope *e)
{
    free(e->mail_from);
    free(e->auth_user);
    free(e->client_ip);
    free(e->helo);
    free(e->listener);
    free(e->envid);
    free(e->prepend);
    for (size_t i = 0; i < e->nrcpts; i++) {
        free(e->rcpts[i].addr);
        free(e->rcpts[i].orcpt);
    }
    free(e->rcpts);
    envelope_init(e);
}

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

void envelope_copy(struct envelope *dst, const struct envelope *src)
{
    *dst = *src;
    dst->mail_from = dup_or_null(src->mail_from);
    dst->auth_user = dup_or_null(src->auth_user);
    dst->client_ip = dup_or_null(src->client_ip);
    dst->helo = dup_or_null(src->helo);
    dst->listener = dup_or_null(src->listener);
    dst->envid = dup_or_null(src->envid);
    dst->prepend = dup_or_null(src->prepend);
    dst->rcpts = NULL;
    dst->nrcpts = 0;
    for (size_t i = 0; i < src->nrcpts; i++)
        envelope_add_rcpt(dst, src->rcpts[i].addr, src->rcpts[i].notify, src->rcpts[i].orcpt);
}

void envelope_add_rcpt(struct envelope *e, const char *addr, unsigned notify, const char *orcpt)
{
    size_t n = e->nrcpts;
    /* capacity is max(4, next power of two >= n): grow when n is a power of two */
    if (n == 0 || (n & (n - 1)) == 0)
        e->rcpts = xrealloc(e->rcpts, (n < 2 ? 4 : 2 * n) * sizeof(*e->rcpts));
    e->rcpts[n].addr = xstrdup(addr);
    e->rcpts[n].notify = notify;
    e->rcpts[n].orcpt = orcpt ? xstrdup(orcpt) : NULL;
    e->nrcpts = n + 1;
}

/* ---- value escaping -------------------------------------------------------
 * A string value is "..." with printable ASCII except '"' and '\' as is,
 * and every other byte as \xHH; NULL is written as a lone '-'. */

void spool_put_str(struct strbuf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    if (!s) {
        sb_append(b, "-", 1);
        return;
    }
    sb_append(b, "\"", 1);
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        const unsigned char *run = p;
        while (*p >= 0x20 && *p < 0x7f && *p != '"' && *p != '\\')
            p++;
        if (p > run)
            sb_append(b, run, (size_t)(p - run));
        if (!*p)
            break;
        char esc[4] = {'\\', 'x', hex[*p >> 4], hex[*p & 15]};
        sb_append(b, esc, 4);
        p++;
    }
    sb_append(b, "\"", 1);
}

int spool_hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A cursor over one line [p, end). */
/* Parses a string token at c->p. *out is NULL for '-'. 0 or -1 (reason in why). */
int spool_get_str(struct spool_cur *c, char **out, const char **why)
{
    *out = NULL;
    if (c->p < c->end && *c->p == '-') {
        c->p++;
        return 0;
    }
    if (c->p >= c->end || *c->p != '"') {
        *why = "expected a quoted value or '-'";
        return -1;
    }
    c->p++;
    struct strbuf b;
    sb_init(&b);
    sb_append(&b, "", 0);
    for (;;) {
        if (c->p >= c->end) {
            *why = "unterminated quoted value";
            sb_free(&b);
            return -1;
        }
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '"') {
            c->p++;
            break;
        }
        if (ch == '\\') {
            int h1 = c->end - c->p >= 4 && c->p[1] == 'x' ? spool_hexval((unsigned char)c->p[2]) : -1;
            int h2 = h1 >= 0 ? spool_hexval((unsigned char)c->p[3]) : -1;
            if (h2 < 0) {
                *why = "bad escape";
                sb_free(&b);
                return -1;
            }
            char v = (char)(h1 * 16 + h2);
            if (v == '\0') {
                *why = "NUL byte in value";
                sb_free(&b);
                return -1;
            }
            sb_append(&b, &v, 1);
            c->p += 4;
            continue;
        }
        if (ch < 0x20 || ch >= 0x7f) {
            *why = "raw control or non-ASCII byte in value";
            sb_free(&b);
            return -1;
        }
        /* the run of plain bytes up to the next quote, escape or bad byte, at once */
        const char *run = c->p;
        while (c->p < c->end && *c->p != '"' && *c->p != '\\' && (unsigned char)*c->p >= 0x20 &&
               (unsigned char)*c->p < 0x7f)
            c->p++;
        sb_append(&b, run, (size_t)(c->p - run));
    }
    *out = sb_steal(&b);
    return 0;
}

/* Unsigned decimal without sign or superfluous leading zeros, <= max. */
int spool_get_u64(struct spool_cur *c, uint64_t max, uint64_t *out, const char **why)
{
    const char *s = c->p;
    uint64_t v = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        unsigned d = (unsigned)(*c->p - '0');
        if (v > (UINT64_MAX - d) / 10) {
            *why = "number out of range";
            return -1;
        }
        v = v * 10 + d;
        c->p++;
    }
    size_t len = (size_t)(c->p - s);
    if (len == 0 || (len > 1 && *s == '0')) {
        *why = "bad number";
        return -1;
    }
    if (v > max) {
        *why = "number out of range";
        return -1;
    }
    *out = v;
    return 0;
}

int spool_get_i64(struct spool_cur *c, int64_t *out, const char **why)
{
    int neg = 0;
    if (c->p < c->end && *c->p == '-') {
        neg = 1;
        c->p++;
    }
    uint64_t v;
    if (spool_get_u64(c, neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX, &v, why) != 0)
        return -1;
    if (neg && v == 0) {
        *why = "bad number";
        return -1;
    }
    *out = neg ? (v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v) : (int64_t)v;
    return 0;
}

int spool_get_sp(struct spool_cur *c, const char **why)
{
    if (c->p < c->end && *c->p == ' ') {
        c->p++;
        return 0;
    }
    *why = "expected a space";
    return -1;
}

int spool_get_eol(struct spool_cur *c, const char **why)
{
    if (c->p == c->end)
        return 0;
    *why = "trailing characters";
    return -1;
}

/* ---- envelope codec ------------------------------------------------------ */

void spool_env_encode(const struct envelope *e, struct strbuf *out)
{
    sb_puts(out, ENV_VERSION_LINE "\n");
    sb_printf(out, "id %s\n", e->id);
    sb_puts(out, "mail-from ");
    spool_put_str(out, e->mail_from);
    sb_puts(out, "\nauth-user ");
    spool_put_str(out, e->auth_user);
    sb_puts(out, "\nclient-ip ");
    spool_put_str(out, e->client_ip);
    sb_puts(out, "\nhelo ");
    spool_put_str(out, e->helo);
    sb_puts(out, "\nlistener ");
    spool_put_str(out, e->listener);
    sb_printf(out, "\nbody %d\nsmtputf8 %d\ndsn-ret %d\nenvid ", e->body, e->smtputf8, e->dsn_ret);
    spool_put_str(out, e->envid);
    sb_printf(out, "\nreceived %lld\nsize %llu\nprepend ", (long long)e->received, (unsigned long long)e->size);
    spool_put_str(out, e->prepend);
    sb_printf(out, "\nrcpts %zu\n", e->nrcpts);
    for (size_t i = 0; i < e->nrcpts; i++) {
        sb_puts(out, "rcpt ");
        spool_put_str(out, e->rcpts[i].addr);
        sb_printf(out, " %u ", e->rcpts[i].notify);
        spool_put_str(out, e->rcpts[i].orcpt);
        sb_puts(out, "\n");
    }
    sb_puts(out, "end\n");
}

enum env_key {
    K_ID, K_FROM, K_AUTH, K_IP, K_HELO, K_LISTENER, K_BODY, K_UTF8, K_RET, K_ENVID, K_RECEIVED, K_SIZE,
    K_PREPEND, K_RCPTS, K__COUNT
};

static const char *const env_keys[K__COUNT] = {
    "id", "mail-from", "auth-user", "client-ip", "helo", "listener", "body", "smtputf8", "dsn-ret",
    "envid", "received", "size", "prepend", "rcpts",
};

static int decode_field(enum env_key k, struct spool_cur *c, struct envelope *e, uint64_t *nrcpts, const char **why)
{
    uint64_t u;
    char **sp = NULL;
    switch (k) {
    case K_ID: {
        size_t l = (size_t)(c->end - c->p);
        if (l != QID_LEN) {
            *why = "bad id";
            return -1;
        }
        memcpy(e->id, c->p, QID_LEN);
        e->id[QID_LEN] = '\0';
        c->p = c->end;
        if (!qid_valid(e->id)) {
            *why = "bad id";
            return -1;
        }
        return 0;
    }
    case K_FROM: sp = &e->mail_from; break;
    case K_AUTH: sp = &e->auth_user; break;
    case K_IP: sp = &e->client_ip; break;
    case K_HELO: sp = &e->helo; break;
    case K_LISTENER: sp = &e->listener; break;
    case K_ENVID: sp = &e->envid; break;
    case K_PREPEND: sp = &e->prepend; break;
    case K_BODY:
        if (spool_get_u64(c, 3, &u, why) != 0)
            return -1;
        e->body = (int)u;
        return 0;
    case K_UTF8:
        if (spool_get_u64(c, 1, &u, why) != 0)
            return -1;
        e->smtputf8 = (int)u;
        return 0;
    case K_RET:
        if (spool_get_u64(c, 2, &u, why) != 0)
            return -1;
        e->dsn_ret = (int)u;
        return 0;
    case K_RECEIVED:
        return spool_get_i64(c, &e->received, why);
    case K_SIZE:
        return spool_get_u64(c, UINT64_MAX, &e->size, why);
    case K_RCPTS:
        return spool_get_u64(c, ENV_RCPTS_MAX, nrcpts, why);
    case K__COUNT:
        break;
    }
    if (!sp) {
        *why = "internal";
        return -1;
    }
    return spool_get_str(c, sp, why);
}

static int decode_rcpt(struct spool_cur *c, struct envelope *e, const char **why)
{
    char *addr = NULL, *orcpt = NULL;
    uint64_t notify;
    int rc = -1;
    if (spool_get_str(c, &addr, why) != 0)
        goto out;
    if (!addr || !*addr) {
        *why = "empty recipient";
        goto out;
    }
    if (spool_get_sp(c, why) != 0 || spool_get_u64(c, 15, &notify, why) != 0 || spool_get_sp(c, why) != 0 ||
        spool_get_str(c, &orcpt, why) != 0)
        goto out;
    envelope_add_rcpt(e, addr, (unsigned)notify, orcpt);
    rc = 0;
out:
    free(addr);
    free(orcpt);
    return rc;
}

static int env_decode(const char *buf, size_t len, struct envelope *e, size_t *lineno, const char **why,
                      const char **missing)
{
    const char *p = buf, *end = buf + len;
    int seen[K__COUNT] = {0};
    uint64_t nrcpts = 0;
    int ended = 0;
    *lineno = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        (*lineno)++;
        if (!nl) {
            *why = "truncated (last line has no newline)";
            return -1;
        }
        if (ended) {
            *why = "data after end";
            return -1;
        }
        struct spool_cur c = {p, nl};
        p = nl + 1;
        if (memchr(c.p, '\0', (size_t)(c.end - c.p))) {
            *why = "NUL byte";
            return -1;
        }
        size_t l = (size_t)(c.end - c.p);
        if (*lineno == 1) {
            if (l != strlen(ENV_VERSION_LINE) || memcmp(c.p, ENV_VERSION_LINE, l) != 0) {
                *why = l > 17 && memcmp(c.p, "submitd-envelope ", 17) == 0 ? "unsupported envelope version"
                                                                         : "not a submitd envelope";
                return -1;
            }
            continue;
        }
        if (l == 3 && memcmp(c.p, "end", 3) == 0) {
            ended = 1;
            continue;
        }
        const char *sp = memchr(c.p, ' ', l);
        if (!sp) {
            *why = "expected `key value`";
            return -1;
        }
        size_t kl = (size_t)(sp - c.p);
        const char *key = c.p;
        c.p = sp + 1;
        if (kl == 4 && memcmp(key, "rcpt", 4) == 0) {
            if (!seen[K_RCPTS]) {
                *why = "rcpt before rcpts";
                return -1;
            }
            if (e->nrcpts >= nrcpts) {
                *why = "more rcpt lines than rcpts";
                return -1;
            }
            if (decode_rcpt(&c, e, why) != 0 || spool_get_eol(&c, why) != 0)
                return -1;
            continue;
        }
        enum env_key k = K__COUNT;
        for (int i = 0; i < K__COUNT; i++)
            if (strlen(env_keys[i]) == kl && memcmp(env_keys[i], key, kl) == 0)
                k = (enum env_key)i;
        if (k == K__COUNT) {
            *why = "unknown key";
            return -1;
        }
        if (seen[k]) {
            *why = "duplicate key";
            return -1;
        }
        seen[k] = 1;
        if (decode_field(k, &c, e, &nrcpts, why) != 0 || spool_get_eol(&c, why) != 0)
            return -1;
    }
    if (*lineno == 0) {
        *why = "empty";
        return -1;
    }
    for (int i = 0; i < K__COUNT; i++) {
        if (!seen[i]) {
            *missing = env_keys[i];
            return -1;
        }
    }
    if (e->nrcpts != nrcpts) {
        *why = "fewer rcpt lines than rcpts";
        return -1;
    }
    if (!ended) {
        *why = "truncated (no end line)";
        return -1;
    }
    return 0;
}

int spool_env_decode(const char *buf, size_t len, struct envelope *e, char *err, size_t errlen)
{
    envelope_init(e);
    size_t lineno = 0;
    const char *why = "invalid", *missing = NULL;
    if (env_decode(buf, len, e, &lineno, &why, &missing) == 0)
        return 0;
    if (err && errlen) {
        if (missing)
            snprintf(err, errlen, "envelope: missing field %s", missing);
        else
            snprintf(err, errlen, "envelope line %zu: %s", lineno, why);
    }
    envelope_free(e);
    return -1;
}

