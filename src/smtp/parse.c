/* parse: the pure command-side SMTP parsers declared in parse.h — the
 * resumable command-line reader, the verb splitter, MAIL FROM / RCPT TO
 * paths (RFC 5321 4.1.2, RFC 6531 for UTF-8) with their ESMTP parameters
 * (SIZE, BODY, SMTPUTF8, RET, ENVID, AUTH, NOTIFY, ORCPT) and RFC 3461
 * xtext. base64 lives in base64.c. No allocation, no globals; every input
 * is bounded by its length or its NUL. */
#include "smtp/parse.h"

#include <arpa/inet.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- small character helpers ------------------------------------------- */

static int is_alpha(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* RFC 5322 atext (ASCII part). */
static int is_atext(unsigned char c)
{
    return c != '\0' && (is_alpha(c) || is_digit(c) || strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

static int lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
}

/* Case-insensitive: are the n bytes at s exactly the literal lit? */
static int mem_ieq(const char *s, size_t n, const char *lit)
{
    size_t l = strlen(lit);
    if (n != l)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)s[i]) != lower((unsigned char)lit[i]))
            return 0;
    return 1;
}

/* Length of the well-formed UTF-8 sequence (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF) starting at s, or 0. n > 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    unsigned char lo = 0x80, hi = 0xBF;
    size_t need;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c == 0xE0) {
        need = 3;
        lo = 0xA0;
    } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
        need = 3;
    } else if (c == 0xED) {
        need = 3;
        hi = 0x9F;
    } else if (c == 0xF0) {
        need = 4;
        lo = 0x90;
    } else if (c >= 0xF1 && c <= 0xF3) {
        need = 4;
    } else if (c == 0xF4) {
        need = 4;
        hi = 0x8F;
    } else {
        return 0;
    }
    if (n < need || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < need; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return need;
}

static int utf8_valid(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(u + i, n - i);
        if (k == 0)
            return 0;
        i += k;
    }
    return 1;
}

static int has_non_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return 1;
    return 0;
}

/* ---- command line reader ------------------------------------------------ */

void line_reader_init(struct line_reader *lr, size_t max)
{
    lr->max = max;
    lr->discarding = 0;
}

enum line_res line_reader_next(struct line_reader *lr, const char *buf, size_t len, size_t *line_len,
                               size_t *consumed)
{
    size_t off = 0;
    *line_len = 0;
    *consumed = 0;
    if (!lr->discarding) {
        /* The LF must be within the first max octets: a line counts with
         * its terminator. */
        size_t scan = len < lr->max ? len : lr->max;
        const char *nl = scan ? memchr(buf, '\n', scan) : NULL;
        if (nl) {
            size_t n = (size_t)(nl - buf);
            *consumed = n + 1;
            if (n > 0 && buf[n - 1] == '\r')
                n--;
            *line_len = n;
            return LINE_OK;
        }
        if (len < lr->max)
            return LINE_NEED_MORE;
        lr->discarding = 1;
        off = lr->max;
    }
    const char *nl = len > off ? memchr(buf + off, '\n', len - off) : NULL;
    if (!nl) {
        *consumed = len;
        return LINE_NEED_MORE;
    }
    *consumed = (size_t)(nl - buf) + 1;
    lr->discarding = 0;
    return LINE_TOO_LONG;
}

/* ---- command splitter --------------------------------------------------- */

static const char *const cmd_names[CMD__COUNT] = {
    [CMD_UNKNOWN] = "UNKNOWN", [CMD_HELO] = "HELO", [CMD_EHLO] = "EHLO", [CMD_MAIL] = "MAIL",
    [CMD_RCPT] = "RCPT",       [CMD_DATA] = "DATA", [CMD_BDAT] = "BDAT", [CMD_RSET] = "RSET",
    [CMD_NOOP] = "NOOP",       [CMD_QUIT] = "QUIT", [CMD_HELP] = "HELP", [CMD_VRFY] = "VRFY",
    [CMD_EXPN] = "EXPN",       [CMD_STARTTLS] = "STARTTLS", [CMD_AUTH] = "AUTH",
};

const char *smtp_cmd_name(enum smtp_cmd c)
{
    if (c == CMD_INVALID)
        return "INVALID";
    if ((int)c < 0 || c >= CMD__COUNT)
        return "UNKNOWN";
    return cmd_names[c];
}

enum smtp_cmd smtp_cmd_parse(const char *line, size_t len, const char **args)
{
    *args = line + len; /* the caller's terminating NUL */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)line[i];
        if ((c < 0x20 && c != '\t') || c == 0x7F)
            return CMD_INVALID;
    }
    size_t v = 0;
    while (v < len && line[v] != ' ')
        v++;
    for (int c = CMD_HELO; c < CMD__COUNT; c++) {
        if (mem_ieq(line, v, cmd_names[c])) {
            if (v < len)
                *args = line + v + 1;
            return (enum smtp_cmd)c;
        }
    }
    return CMD_UNKNOWN;
}

/* ---- addresses ----------------------------------------------------------- */

/* Address literal contents (between the brackets): IPv4 or "IPv6:" IPv6. */
static int literal_ok(const char *s, size_t n)
{
    char tmp[64];
    int v6 = 0;
    if (n > 5 && mem_ieq(s, 5, "IPv6:")) {
        s += 5;
        n -= 5;
        v6 = 1;
    }
    if (n == 0 || n >= sizeof(tmp))
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(is_digit(c) || c == '.' || (v6 && (c == ':' || (lower(c) >= 'a' && lower(c) <= 'f')))))
            return 0;
    }
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    unsigned char a[16];
    return inet_pton(v6 ? AF_INET6 : AF_INET, tmp, a) == 1;
}

/* A domain name (LDH labels; U-labels when utf8) or, when lit, an address
 * literal. */
static enum path_err check_domain(const char *s, size_t n, int utf8, int lit)
{
    const unsigned char *u = (const unsigned char *)s;
    if (n == 0)
        return PE_ADDRESS;
    if (n > 255)
        return PE_TOO_LONG;
    if (s[0] == '[') {
        if (!lit || n < 2 || s[n - 1] != ']')
            return PE_ADDRESS;
        return literal_ok(s + 1, n - 2) ? PE_OK : PE_ADDRESS;
    }
    size_t i = 0;
    for (;;) {
        size_t start = i;
        while (i < n && s[i] != '.') {
            if (u[i] >= 0x80) {
                size_t k = utf8 ? utf8_seq(u + i, n - i) : 0;
                if (k == 0)
                    return PE_ADDRESS;
                i += k;
            } else if (is_alpha(u[i]) || is_digit(u[i]) || u[i] == '-') {
                i++;
            } else {
                return PE_ADDRESS;
            }
        }
        size_t l = i - start;
        if (l == 0 || l > 63 || s[start] == '-' || s[i - 1] == '-')
            return PE_ADDRESS;
        if (i == n)
            return PE_OK;
        i++; /* the dot; a trailing dot leaves an empty label */
    }
}

/* local-part "@" domain (RFC 5321 Mailbox; RFC 6531 when utf8). */
static enum path_err check_mailbox(const char *s, size_t n, int utf8)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    if (n == 0)
        return PE_ADDRESS;
    if (s[0] == '"') {
        i = 1;
        for (;;) {
            if (i >= n)
                return PE_ADDRESS;
            unsigned char c = u[i];
            if (c == '"') {
                i++;
                break;
            }
            if (c == '\\') {
                if (i + 1 >= n || u[i + 1] < 32 || u[i + 1] > 126)
                    return PE_ADDRESS;
                i += 2;
            } else if (c >= 0x80) {
                size_t k = utf8 ? utf8_seq(u + i, n - i) : 0;
                if (k == 0)
                    return PE_ADDRESS;
                i += k;
            } else if (c < 32 || c > 126) {
                return PE_ADDRESS;
            } else {
                i++;
            }
        }
    } else {
        int need_atom = 1;
        while (i < n && s[i] != '@') {
            unsigned char c = u[i];
            if (c == '.') {
                if (need_atom)
                    return PE_ADDRESS;
                need_atom = 1;
                i++;
                continue;
            }
            if (c >= 0x80) {
                size_t k = utf8 ? utf8_seq(u + i, n - i) : 0;
                if (k == 0)
                    return PE_ADDRESS;
                i += k;
            } else if (is_atext(c)) {
                i++;
            } else {
                return PE_ADDRESS;
            }
            need_atom = 0;
        }
        if (need_atom)
            return PE_ADDRESS; /* empty, or ends with a dot */
    }
    if (i >= n || s[i] != '@')
        return PE_ADDRESS;
    if (i > 64)
        return PE_TOO_LONG;
    return check_domain(s + i + 1, n - i - 1, utf8, 1);
}

int smtp_address_valid(const char *addr, int utf8_ok)
{
    if (!addr)
        return 0;
    size_t n = strlen(addr);
    if (n == 0 || n > SMTP_PATH_MAX)
        return 0;
    if (has_non_ascii(addr, n) && !utf8_ok)
        return 0;
    return check_mailbox(addr, n, utf8_ok) == PE_OK;
}

const char *smtp_address_domain(const char *addr)
{
    const char *at = NULL;
    int inq = 0;
    if (!addr)
        return NULL;
    for (const char *p = addr; *p; p++) {
        if (inq) {
            if (*p == '\\' && p[1])
                p++;
            else if (*p == '"')
                inq = 0;
        } else if (*p == '"') {
            inq = 1;
        } else if (*p == '@') {
            at = p;
        }
    }
    return at ? at + 1 : NULL;
}

/* ---- xtext --------------------------------------------------------------- */

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1; /* RFC 3461: upper-case hex only */
}

/* Decodes into out (NUL-terminated). Returns the length, -1 on a bad
 * encoding (also a decoded NUL, which a C string cannot hold), -2 when the
 * result does not fit. Bad encoding wins over too long. */
static long xtext_decode_ex(const char *in, size_t inlen, char *out, size_t outlen)
{
    size_t o = 0;
    int overflow = outlen == 0;
    for (size_t i = 0; i < inlen;) {
        unsigned char c = (unsigned char)in[i];
        unsigned char v;
        if (c == '+') {
            if (inlen - i < 3)
                return -1;
            int h = hexval((unsigned char)in[i + 1]), l = hexval((unsigned char)in[i + 2]);
            if (h < 0 || l < 0 || (h == 0 && l == 0))
                return -1;
            v = (unsigned char)(h * 16 + l);
            i += 3;
        } else if (c < 33 || c > 126 || c == '=') {
            return -1;
        } else {
            v = c;
            i++;
        }
        if (!overflow && o + 1 < outlen)
            out[o++] = (char)v;
        else
            overflow = 1;
    }
    if (overflow || o > INT_MAX)
        return -2;
    out[o] = '\0';
    return (long)o;
}

int xtext_decode(const char *in, size_t inlen, char *out, size_t outlen)
{
    long r = xtext_decode_ex(in, inlen, out, outlen);
    return r < 0 ? -1 : (int)r;
}

size_t xtext_encode(const char *in, char *out, size_t outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t need = 0, wrote = 0;
    int full = outlen == 0;
    for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
        char unit[3];
        size_t ul;
        if (*p < 33 || *p > 126 || *p == '+' || *p == '=') {
            unit[0] = '+';
            unit[1] = hex[*p >> 4];
            unit[2] = hex[*p & 15];
            ul = 3;
        } else {
            unit[0] = (char)*p;
            ul = 1;
        }
        /* only whole units are written, so a truncated result never ends
         * in half an escape */
        if (!full && wrote + ul < outlen) {
            memcpy(out + wrote, unit, ul);
            wrote += ul;
        } else {
            full = 1;
        }
        need += ul;
    }
    if (outlen > 0)
        out[wrote] = '\0';
    return need;
}

/* ---- MAIL / RCPT ---------------------------------------------------------- */

/* The first error wins; later ones are ignored. */
struct perr_ctx {
    enum path_err pe;
    char *detail;
    size_t dlen;
};

__attribute__((format(printf, 3, 4))) static void fail(struct perr_ctx *e, enum path_err pe, const char *fmt, ...)
{
    if (e->pe != PE_OK)
        return;
    e->pe = pe;
    if (e->detail && e->dlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->detail, e->dlen, fmt, ap);
        va_end(ap);
    }
}

/* args must start with kw (case-insensitive, e.g. "FROM:"), then optional
 * spaces, then "<path>", then nothing or spaces and parameters. On success
 * *path (*plen bytes) is the text between the brackets and *params what follows. */
static int split_args(const char *args, const char *kw, const char **path, size_t *plen, const char **params)
{
    size_t kl = strlen(kw);
    if (!args || strlen(args) < kl || !mem_ieq(args, kl, kw))
        return -1;
    const char *p = args + kl;
    while (*p == ' ')
        p++;
    if (*p != '<')
        return -1;
    const char *start = ++p;
    int inq = 0;
    for (;; p++) {
        if (*p == '\0')
            return -1;
        if (inq) {
            if (*p == '\\') {
                if (p[1] == '\0')
                    return -1;
                p++;
            } else if (*p == '"') {
                inq = 0;
            }
        } else if (*p == '"') {
            inq = 1;
        } else if (*p == '>') {
            break;
        }
    }
    *path = start;
    *plen = (size_t)(p - start);
    p++;
    if (*p != '\0' && *p != ' ')
        return -1; /* junk right after '>' */
    *params = p;
    return 0;
}

/* Validates the path between the brackets, drops a source route and
 * copies the mailbox to out. An empty path is the null path. */
static enum path_err parse_path(const char *s, size_t n, char *out, int *nonascii)
{
    *nonascii = 0;
    out[0] = '\0';
    if (n > SMTP_PATH_MAX)
        return PE_TOO_LONG;
    if (n == 0)
        return PE_OK;
    size_t m = 0;
    if (s[0] == '@') {
        /* A-d-l: "@" Domain *( "," "@" Domain ) ":" */
        for (;;) {
            if (m >= n || s[m] != '@')
                return PE_ADDRESS;
            size_t d = ++m;
            while (m < n && s[m] != ',' && s[m] != ':')
                m++;
            enum path_err r = check_domain(s + d, m - d, 1, 0);
            if (r != PE_OK)
                return r;
            if (m >= n)
                return PE_ADDRESS;
            if (s[m++] == ':')
                break;
        }
    }
    enum path_err r = check_mailbox(s + m, n - m, 1);
    if (r != PE_OK)
        return r;
    *nonascii = has_non_ascii(s, n);
    memcpy(out, s + m, n - m);
    out[n - m] = '\0';
    return PE_OK;
}

/* One parameter token split at its first '='. */
struct param {
    const char *kw;
    size_t klen;
    const char *val; /* NULL when there is no '=' */
    size_t vlen;
};

/* Splits the next space-separated token; 0 at the end. */
static int next_param(const char **pp, struct param *pr)
{
    const char *p = *pp;
    while (*p == ' ')
        p++;
    if (*p == '\0') {
        *pp = p;
        return 0;
    }
    const char *t = p;
    while (*p && *p != ' ')
        p++;
    size_t tl = (size_t)(p - t);
    const char *eq = memchr(t, '=', tl);
    pr->kw = t;
    pr->klen = eq ? (size_t)(eq - t) : tl;
    pr->val = eq ? eq + 1 : NULL;
    pr->vlen = eq ? tl - pr->klen - 1 : 0;
    *pp = p;
    return 1;
}

/* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
static int keyword_ok(const struct param *pr)
{
    if (pr->klen == 0 || pr->klen > 64 || pr->kw[0] == '-')
        return 0;
    for (size_t i = 0; i < pr->klen; i++) {
        unsigned char c = (unsigned char)pr->kw[i];
        if (!is_alpha(c) && !is_digit(c) && c != '-')
            return 0;
    }
    return 1;
}

/* Bit set for "each parameter at most once"; 1 when it was already there. */
static int seen_before(unsigned *seen, unsigned bit)
{
    int r = (*seen & bit) != 0;
    *seen |= bit;
    return r;
}

/* Decoded xtext: no control bytes; printable ASCII only when !utf8,
 * well-formed UTF-8 otherwise. */
static int decoded_ok(const char *s, size_t n, int utf8)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 32 || c == 127 || (c >= 0x80 && !utf8))
            return 0;
    }
    return utf8_valid(s, n);
}

/* xtext value into out; reports into e under the parameter's name. */
static void xtext_param(struct perr_ctx *e, const char *name, const struct param *pr, char *out, size_t outlen,
                        int utf8)
{
    if (!pr->val || pr->vlen == 0) {
        fail(e, PE_PARAM_VALUE, "%s needs a value", name);
        return;
    }
    long r = xtext_decode_ex(pr->val, pr->vlen, out, outlen);
    if (r == -2)
        fail(e, PE_TOO_LONG, "%s value too long", name);
    else if (r < 0 || !decoded_ok(out, (size_t)r, utf8))
        fail(e, PE_PARAM_VALUE, "%s must be xtext", name);
    if (r < 0 || e->pe != PE_OK)
        out[0] = '\0';
}

enum { P_SIZE = 1, P_BODY = 2, P_SMTPUTF8 = 4, P_RET = 8, P_ENVID = 16, P_AUTH = 32, P_NOTIFY = 64, P_ORCPT = 128 };

static void mail_param(struct perr_ctx *e, const struct param *pr, struct mail_args *out, unsigned *seen)
{
    if (mem_ieq(pr->kw, pr->klen, "SIZE")) {
        if (seen_before(seen, P_SIZE)) {
            fail(e, PE_PARAM_DUP, "SIZE given twice");
            return;
        }
        uint64_t v = 0;
        int ok = pr->val && pr->vlen > 0 && pr->vlen <= 20;
        for (size_t i = 0; ok && i < pr->vlen; i++) {
            unsigned d = (unsigned)((unsigned char)pr->val[i] - '0');
            if (d > 9 || v > (UINT64_MAX - d) / 10)
                ok = 0;
            else
                v = v * 10 + d;
        }
        if (!ok) {
            fail(e, PE_PARAM_VALUE, "SIZE must be a number");
            return;
        }
        out->size = v;
        out->has_size = 1;
    } else if (mem_ieq(pr->kw, pr->klen, "BODY")) {
        if (seen_before(seen, P_BODY)) {
            fail(e, PE_PARAM_DUP, "BODY given twice");
            return;
        }
        if (pr->val && mem_ieq(pr->val, pr->vlen, "7BIT"))
            out->body = BODY_7BIT;
        else if (pr->val && mem_ieq(pr->val, pr->vlen, "8BITMIME"))
            out->body = BODY_8BITMIME;
        else if (pr->val && mem_ieq(pr->val, pr->vlen, "BINARYMIME"))
            out->body = BODY_BINARYMIME;
        else
            fail(e, PE_PARAM_VALUE, "BODY must be 7BIT, 8BITMIME or BINARYMIME");
    } else if (mem_ieq(pr->kw, pr->klen, "SMTPUTF8")) {
        if (seen_before(seen, P_SMTPUTF8)) {
            fail(e, PE_PARAM_DUP, "SMTPUTF8 given twice");
            return;
        }
        if (pr->val)
            fail(e, PE_PARAM_VALUE, "SMTPUTF8 takes no value");
        else
            out->smtputf8 = 1;
    } else if (mem_ieq(pr->kw, pr->klen, "RET")) {
        if (seen_before(seen, P_RET)) {
            fail(e, PE_PARAM_DUP, "RET given twice");
            return;
        }
        if (pr->val && mem_ieq(pr->val, pr->vlen, "FULL"))
            out->ret = DSN_RET_FULL;
        else if (pr->val && mem_ieq(pr->val, pr->vlen, "HDRS"))
            out->ret = DSN_RET_HDRS;
        else
            fail(e, PE_PARAM_VALUE, "RET must be FULL or HDRS");
    } else if (mem_ieq(pr->kw, pr->klen, "ENVID")) {
        if (seen_before(seen, P_ENVID)) {
            fail(e, PE_PARAM_DUP, "ENVID given twice");
            return;
        }
        xtext_param(e, "ENVID", pr, out->envid, sizeof(out->envid), 0);
    } else if (mem_ieq(pr->kw, pr->klen, "AUTH")) {
        if (seen_before(seen, P_AUTH)) {
            fail(e, PE_PARAM_DUP, "AUTH given twice");
            return;
        }
        if (pr->val && pr->vlen == 2 && memcmp(pr->val, "<>", 2) == 0)
            memcpy(out->auth, "<>", 3);
        else
            xtext_param(e, "AUTH", pr, out->auth, sizeof(out->auth), 1);
    } else {
        fail(e, PE_PARAM_UNKNOWN, "unknown parameter %.*s", (int)pr->klen, pr->kw);
    }
}

static void rcpt_param(struct perr_ctx *e, const struct param *pr, struct rcpt_args *out, unsigned *seen)
{
    if (mem_ieq(pr->kw, pr->klen, "NOTIFY")) {
        if (seen_before(seen, P_NOTIFY)) {
            fail(e, PE_PARAM_DUP, "NOTIFY given twice");
            return;
        }
        unsigned bits = 0;
        int ok = pr->val != NULL && pr->vlen > 0;
        size_t i = 0;
        while (ok && i <= pr->vlen) {
            size_t s = i;
            while (i < pr->vlen && pr->val[i] != ',')
                i++;
            const char *it = pr->val + s;
            size_t il = i - s;
            unsigned b = mem_ieq(it, il, "NEVER")     ? DSN_NOTIFY_NEVER
                         : mem_ieq(it, il, "SUCCESS") ? DSN_NOTIFY_SUCCESS
                         : mem_ieq(it, il, "FAILURE") ? DSN_NOTIFY_FAILURE
                         : mem_ieq(it, il, "DELAY")   ? DSN_NOTIFY_DELAY
                                                      : 0;
            if (b == 0 || (bits & b))
                ok = 0;
            bits |= b;
            i++; /* past the comma (or the end) */
        }
        if (ok && (bits & DSN_NOTIFY_NEVER) && bits != DSN_NOTIFY_NEVER)
            ok = 0;
        if (!ok) {
            fail(e, PE_PARAM_VALUE, "NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY");
            return;
        }
        out->notify = bits;
    } else if (mem_ieq(pr->kw, pr->klen, "ORCPT")) {
        if (seen_before(seen, P_ORCPT)) {
            fail(e, PE_PARAM_DUP, "ORCPT given twice");
            return;
        }
        /* addr-type ";" xtext, addr-type an atom */
        size_t t = 0;
        while (pr->val && t < pr->vlen && is_atext((unsigned char)pr->val[t]))
            t++;
        if (!pr->val || t == 0 || t >= pr->vlen || pr->val[t] != ';' || t + 1 == pr->vlen) {
            fail(e, PE_PARAM_VALUE, "ORCPT must be addr-type;xtext");
            return;
        }
        if (t + 1 > SMTP_ORCPT_MAX) {
            fail(e, PE_TOO_LONG, "ORCPT value too long");
            return;
        }
        memcpy(out->orcpt, pr->val, t + 1);
        struct param x = {.kw = pr->kw, .klen = pr->klen, .val = pr->val + t + 1, .vlen = pr->vlen - t - 1};
        xtext_param(e, "ORCPT", &x, out->orcpt + t + 1, sizeof(out->orcpt) - t - 1, 1);
        if (e->pe != PE_OK)
            out->orcpt[0] = '\0';
    } else {
        fail(e, PE_PARAM_UNKNOWN, "unknown parameter %.*s", (int)pr->klen, pr->kw);
    }
}

static void path_fail(struct perr_ctx *e, enum path_err r, const char *what)
{
    if (r == PE_TOO_LONG)
        fail(e, PE_TOO_LONG, "%s address too long", what);
    else
        fail(e, r, "bad %s address", what);
}

int smtp_parse_mail(const char *args, struct mail_args *out, enum path_err *perr, char *detail, size_t dlen)
{
    struct perr_ctx e = {PE_OK, detail, dlen};
    const char *path, *params;
    size_t plen;
    memset(out, 0, sizeof(*out));
    if (detail && dlen)
        detail[0] = '\0';
    if (split_args(args, "FROM:", &path, &plen, &params) != 0) {
        fail(&e, PE_SYNTAX, "syntax: MAIL FROM:<address>");
    } else {
        /* all parameters first: SMTPUTF8 decides whether UTF-8 is allowed */
        struct perr_ctx pe = {PE_OK, NULL, 0};
        char pdetail[128] = "";
        pe.detail = pdetail;
        pe.dlen = sizeof(pdetail);
        unsigned seen = 0;
        struct param pr;
        while (next_param(&params, &pr)) {
            if (!keyword_ok(&pr))
                fail(&pe, PE_SYNTAX, "bad parameter syntax");
            else
                mail_param(&pe, &pr, out, &seen);
        }
        int nonascii = 0;
        enum path_err r = parse_path(path, plen, out->path, &nonascii);
        if (r != PE_OK)
            path_fail(&e, r, "sender");
        else if (nonascii && !out->smtputf8)
            fail(&e, PE_UTF8_NEEDS_SMTPUTF8, "non-ASCII address requires SMTPUTF8");
        else if (pe.pe != PE_OK)
            fail(&e, pe.pe, "%s", pdetail);
    }
    *perr = e.pe;
    if (e.pe != PE_OK) {
        memset(out, 0, sizeof(*out));
        return -1;
    }
    return 0;
}

int smtp_parse_rcpt(const char *args, int utf8_ok, struct rcpt_args *out, enum path_err *perr, char *detail,
                    size_t dlen)
{
    struct perr_ctx e = {PE_OK, detail, dlen};
    const char *path, *params;
    size_t plen;
    memset(out, 0, sizeof(*out));
    if (detail && dlen)
        detail[0] = '\0';
    if (split_args(args, "TO:", &path, &plen, &params) != 0) {
        fail(&e, PE_SYNTAX, "syntax: RCPT TO:<address>");
    } else {
        int nonascii = 0;
        enum path_err r = parse_path(path, plen, out->path, &nonascii);
        if (r == PE_OK && out->path[0] == '\0')
            r = PE_ADDRESS; /* RCPT TO:<> */
        if (r != PE_OK)
            path_fail(&e, r, "recipient");
        else if (nonascii && !utf8_ok)
            fail(&e, PE_UTF8_NEEDS_SMTPUTF8, "non-ASCII address requires SMTPUTF8");
        unsigned seen = 0;
        struct param pr;
        while (e.pe == PE_OK && next_param(&params, &pr)) {
            if (!keyword_ok(&pr))
                fail(&e, PE_SYNTAX, "bad parameter syntax");
            else
                rcpt_param(&e, &pr, out, &seen);
        }
    }
    *perr = e.pe;
    if (e.pe != PE_OK) {
        memset(out, 0, sizeof(*out));
        return -1;
    }
    return 0;
}
