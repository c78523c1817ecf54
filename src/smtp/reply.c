/* reply: the pure SMTP reply parser (see reply.h). Gathers the lines of
 * one reply, checks that every line carries the same 3-digit code and a
 * ' ' or '-' separator, strips the enhanced status code (RFC 3463) from
 * each line's text, and bounds lines and text. No sockets, no allocation. */
#include "smtp/reply.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* Clears the reply's fields but not its text buffer (16 KiB): the text is
 * NUL-terminated at textlen, nothing reads beyond it. */
static void reply_clear(struct smtp_reply *r)
{
    r->code = 0;
    r->enh[0] = '\0';
    r->nlines = 0;
    r->textlen = 0;
    r->text[0] = '\0';
}

void reply_parser_init(struct reply_parser *p)
{
    reply_clear(&p->r);
    p->started = 0;
}

void reply_copy(struct smtp_reply *dst, const struct smtp_reply *src)
{
    dst->code = src->code;
    memcpy(dst->enh, src->enh, sizeof(dst->enh));
    dst->nlines = src->nlines;
    dst->textlen = src->textlen;
    memcpy(dst->text, src->text, src->textlen + 1);
}

/* Length of an enhanced status code "c.ddd.ddd" at s (followed by a space
 * or the end), or 0. The class must match the reply code's first digit. */
static size_t enh_len(const char *s, size_t n, int cls)
{
    if (n < 5 || s[0] != (char)('0' + cls) || s[1] != '.')
        return 0;
    size_t i = 2;
    for (int part = 0; part < 2; part++) {
        size_t start = i;
        while (i < n && i - start < 3 && isdigit((unsigned char)s[i]))
            i++;
        if (i == start)
            return 0;
        if (part == 0) {
            if (i >= n || s[i] != '.')
                return 0;
            i++;
        }
    }
    if (i < n && s[i] != ' ')
        return 0;
    return i;
}

static void append_text(struct smtp_reply *r, const char *s, size_t n)
{
    if (r->nlines > 1 && r->textlen < REPLY_MAX_TEXT)
        r->text[r->textlen++] = '\n';
    size_t room = REPLY_MAX_TEXT - r->textlen;
    if (n > room)
        n = room;
    memcpy(r->text + r->textlen, s, n);
    r->textlen += n;
    r->text[r->textlen] = '\0';
}

static enum reply_res fail(struct reply_parser *p, char *err, size_t errlen, const char *why)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", why);
    reply_parser_init(p);
    return REPLY_ERR;
}

enum reply_res reply_feed_line(struct reply_parser *p, const char *line, size_t len, char *err, size_t errlen)
{
    if (!p->started)
        reply_parser_init(p);
    if (len < 3 || !isdigit((unsigned char)line[0]) || !isdigit((unsigned char)line[1]) ||
        !isdigit((unsigned char)line[2]))
        return fail(p, err, errlen, "reply line does not start with a 3-digit code");
    int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    if (code < 200 || code > 599)
        return fail(p, err, errlen, "reply code outside 200..599");
    if (len > 3 && line[3] != ' ' && line[3] != '-')
        return fail(p, err, errlen, "reply code not followed by space or hyphen");
    if (p->started && code != p->r.code)
        return fail(p, err, errlen, "continuation line with a different reply code");
    if (p->r.nlines >= REPLY_MAX_LINES)
        return fail(p, err, errlen, "too many reply lines");
    struct smtp_reply *r = &p->r;
    r->code = code;
    r->nlines++;
    int last = len == 3 || line[3] == ' ';
    const char *t = len > 4 ? line + 4 : line + len;
    size_t tn = len > 4 ? len - 4 : 0;
    size_t el = enh_len(t, tn, code / 100);
    if (el) {
        if (r->nlines == 1) {
            size_t c = el < sizeof(r->enh) - 1 ? el : sizeof(r->enh) - 1;
            memcpy(r->enh, t, c);
            r->enh[c] = '\0';
        }
        t += el;
        tn -= el;
        if (tn && *t == ' ') {
            t++;
            tn--;
        }
    }
    append_text(r, t, tn);
    if (last) {
        p->started = 0;
        return REPLY_OK;
    }
    p->started = 1;
    return REPLY_NEED_MORE;
}

int reply_ehlo_has(const struct smtp_reply *r, const char *kw, const char **params, size_t *plen)
{
    size_t kl = strlen(kw);
    const char *s = r->text, *end = r->text + r->textlen;
    int first = 1;
    while (s < end) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        const char *le = nl ? nl : end;
        /* the first line of an EHLO reply is the greeting, not a keyword */
        if (!first && (size_t)(le - s) >= kl && strncasecmp(s, kw, kl) == 0 &&
            (s + kl == le || s[kl] == ' ' || s[kl] == '=')) {
            const char *pp = s + kl;
            while (pp < le && (*pp == ' ' || *pp == '='))
                pp++;
            if (params)
                *params = pp;
            if (plen)
                *plen = (size_t)(le - pp);
            return 1;
        }
        first = 0;
        s = nl ? nl + 1 : end;
    }
    return 0;
}

void reply_summary(const struct smtp_reply *r, char *buf, size_t n)
{
    if (!n)
        return;
    int w = snprintf(buf, n, "%03d%s%s%s", r->code, r->enh[0] ? " " : "", r->enh, r->textlen ? " " : "");
    size_t o = w < 0 ? 0 : (size_t)w;
    for (size_t i = 0; i < r->textlen && o + 1 < n; i++) {
        unsigned char c = (unsigned char)r->text[i];
        buf[o++] = c == '\n' ? ' ' : (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (o >= n)
        o = n - 1;
    buf[o] = '\0';
}
