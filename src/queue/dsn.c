/* dsn: builds delivery status notifications (RFC 3464, RFC 6522
 * multipart/report, RFC 6533 for SMTPUTF8) as CRLF text (see dsn.h).
 * Owns the wording of the human-readable part, the delivery-status fields
 * and the choice of Status codes and of what part of the original goes
 * back. Every value taken from an envelope or a reply is cleaned so that
 * it cannot break a header line (no CR, LF or other controls). */
#include "queue/dsn.h"

#include <string.h>
#include <time.h>

#include "smtp/parse.h"

#define REPLY_MAX 900 /* a delivery-status line stays well under 998 octets */

/* Appends s with every octet a header line cannot hold replaced: controls
 * (and, unless utf8, octets >= 0x80) become "+HH" when xtext is set (ENVID,
 * ORCPT: the RFC 3461 spelling) or '?' otherwise; TAB becomes a space. At
 * most max octets of s are used. */
static void put_clean(struct strbuf *out, const char *s, int utf8, int xtext, size_t max)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p && i < max; p++, i++) {
        unsigned char c = *p;
        int ok = (c >= 0x20 && c < 0x7f) || (utf8 && c >= 0x80);
        if (ok) {
            sb_append(out, p, 1);
        } else if (c == '\t') {
            sb_append(out, " ", 1);
        } else if (xtext) {
            char e[3] = {'+', hex[c >> 4], hex[c & 15]};
            sb_append(out, e, 3);
        } else {
            sb_append(out, "?", 1);
        }
    }
}

static int has_8bit(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++)
        if (*p >= 0x80)
            return 1;
    return 0;
}

static void put_date(struct strbuf *out, const char *name, int64_t t)
{
    char d[64];
    rfc5322_date((time_t)t, d, sizeof(d));
    sb_printf(out, "%s: %s\r\n", name, d);
}

/* "ddd " or "ddd-" at the start of a reply: its basic code, else 0. */
static int reply_code(const char *r)
{
    if (!r || r[0] < '2' || r[0] > '5' || r[1] < '0' || r[1] > '9' || r[2] < '0' || r[2] > '9' ||
        (r[3] != ' ' && r[3] != '-' && r[3] != '\0'))
        return 0;
    return (r[0] - '0') * 100 + (r[1] - '0') * 10 + (r[2] - '0');
}

/* The enhanced code after the basic one ("5.1.1"), copied into out; its
 * class digit, or 0 when there is none. */
static int reply_enhanced(const char *r, char *out, size_t outlen)
{
    if (!reply_code(r) || r[3] == '\0')
        return 0;
    const char *p = r + 4;
    if ((p[0] != '2' && p[0] != '4' && p[0] != '5') || p[1] != '.')
        return 0;
    const char *q = p + 2;
    for (int part = 0; part < 2; part++) {
        size_t digits = 0;
        while (q[digits] >= '0' && q[digits] <= '9')
            digits++;
        if (digits < 1 || digits > 3)
            return 0;
        q += digits;
        if (part == 0) {
            if (*q != '.')
                return 0;
            q++;
        }
    }
    if (*q != ' ' && *q != '\0')
        return 0;
    size_t len = (size_t)(q - p);
    if (len + 1 > outlen)
        return 0;
    memcpy(out, p, len);
    out[len] = '\0';
    return p[0] - '0';
}

void dsn_status(const struct dsn_rcpt *r, enum dsn_action a, char *out, size_t outlen)
{
    char code[16];
    int cls = reply_enhanced(r->reply, code, sizeof(code));
    const char *fallback;
    int want;
    if (a == DSN_ACTION_DELAYED) {
        want = 4;
        fallback = "4.0.0";
    } else if (r->perm) {
        want = 5;
        fallback = "5.0.0";
    } else {
        want = 4; /* expired: the code of the actual problem (RFC 3463 X.4.7) */
        fallback = "4.4.7";
    }
    if (cls == want || (a == DSN_ACTION_FAILED && !r->perm && cls == 5))
        str_copy(out, code, outlen);
    else
        str_copy(out, fallback, outlen);
}

enum dsn_content dsn_choose(int ret, int body, uint64_t size, uint64_t cap)
{
    if (body == BODY_BINARYMIME || ret == DSN_RET_HDRS)
        return DSN_CONTENT_HEADERS;
    if (ret == DSN_RET_FULL || size <= cap)
        return DSN_CONTENT_FULL;
    return DSN_CONTENT_HEADERS;
}

int dsn_requested(unsigned notify, enum dsn_action a)
{
    if (notify & DSN_NOTIFY_NEVER)
        return 0;
    if (notify == 0)
        return 1;
    return (notify & (a == DSN_ACTION_FAILED ? DSN_NOTIFY_FAILURE : DSN_NOTIFY_DELAY)) != 0;
}

size_t dsn_header_len(const char *msg, size_t n)
{
    if (n >= 2 && msg[0] == '\r' && msg[1] == '\n')
        return 2;
    for (size_t i = 0; i + 3 < n; i++)
        if (msg[i] == '\r' && msg[i + 1] == '\n' && msg[i + 2] == '\r' && msg[i + 3] == '\n')
            return i + 4;
    size_t last = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (msg[i] == '\r' && msg[i + 1] == '\n')
            last = i + 2;
    return last;
}

static void boundary(const struct dsn_info *d, struct strbuf *out)
{
    sb_printf(out, "=_submitd_%s", d->dsn_id);
}

static void delimiter(const struct dsn_info *d, struct strbuf *out, int close)
{
    sb_puts(out, "\r\n--");
    boundary(d, out);
    sb_puts(out, close ? "--\r\n" : "\r\n");
}

static int any_8bit(const struct dsn_info *d, const struct dsn_rcpt *r, size_t n)
{
    if (!d->utf8)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (has_8bit(r[i].addr) || has_8bit(r[i].reply) || has_8bit(r[i].orcpt))
            return 1;
    return has_8bit(d->sender);
}

static void human_part(const struct dsn_info *d, const struct dsn_rcpt *r, size_t n, int utf8text,
                       struct strbuf *out)
{
    sb_printf(out, "Content-Description: Notification\r\nContent-Type: text/plain; charset=%s\r\n%s\r\n",
              utf8text ? "utf-8" : "us-ascii", utf8text ? "Content-Transfer-Encoding: 8bit\r\n" : "");
    sb_puts(out, "This is the mail system at ");
    put_clean(out, d->hostname, 0, 0, 253);
    sb_puts(out, ".\r\n\r\n");
    const char *what = d->content == DSN_CONTENT_FULL ? "Your message is attached below."
                                                      : "The header section of your message is attached below.";
    if (d->action == DSN_ACTION_DELAYED) {
        sb_puts(out, "THIS IS A WARNING ONLY. YOU DO NOT NEED TO SEND YOUR MESSAGE AGAIN.\r\n\r\n"
                     "Your message could not be delivered yet to the recipients below.\r\n");
        if (d->retry_until) {
            char dt[64];
            rfc5322_date((time_t)d->retry_until, dt, sizeof(dt));
            sb_printf(out, "The mail system will keep trying until %s.\r\n", dt);
        }
        sb_printf(out, "%s\r\n\r\n", what);
    } else {
        sb_printf(out, "Your message could not be delivered to the recipients below.\r\n%s\r\n\r\n", what);
    }
    for (size_t i = 0; i < n; i++) {
        sb_puts(out, "<");
        put_clean(out, r[i].addr, d->utf8, 0, REPLY_MAX);
        sb_puts(out, ">: ");
        if (d->action == DSN_ACTION_FAILED && !r[i].perm)
            sb_puts(out, "gave up after the queue lifetime; the last attempt said: ");
        if (r[i].remote_mta) {
            sb_puts(out, "host ");
            put_clean(out, r[i].remote_mta, 0, 0, 253);
            sb_puts(out, " said: ");
        }
        put_clean(out, r[i].reply ? r[i].reply : "(no reply)", d->utf8, 0, REPLY_MAX);
        sb_puts(out, "\r\n");
    }
}

static void status_part(const struct dsn_info *d, const struct dsn_rcpt *r, size_t n, struct strbuf *out)
{
    sb_printf(out, "Content-Description: Delivery report\r\nContent-Type: message/%sdelivery-status\r\n%s\r\n",
              d->utf8 ? "global-" : "", any_8bit(d, r, n) ? "Content-Transfer-Encoding: 8bit\r\n" : "");
    sb_puts(out, "Reporting-MTA: dns; ");
    put_clean(out, d->hostname, 0, 0, 253);
    sb_puts(out, "\r\nX-Submitd-Queue-ID: ");
    put_clean(out, d->orig_id, 0, 0, QID_LEN);
    sb_puts(out, "\r\n");
    if (d->envid) {
        sb_puts(out, "Original-Envelope-Id: ");
        put_clean(out, d->envid, 0, 1, REPLY_MAX);
        sb_puts(out, "\r\n");
    }
    put_date(out, "Arrival-Date", d->arrival);
    for (size_t i = 0; i < n; i++) {
        char status[16];
        dsn_status(&r[i], d->action, status, sizeof(status));
        sb_puts(out, "\r\n");
        if (r[i].orcpt && strchr(r[i].orcpt, ';')) {
            sb_puts(out, "Original-Recipient: ");
            put_clean(out, r[i].orcpt, d->utf8, 1, REPLY_MAX);
            sb_puts(out, "\r\n");
        }
        sb_printf(out, "Final-Recipient: %s; ", has_8bit(r[i].addr) && d->utf8 ? "utf-8" : "rfc822");
        put_clean(out, r[i].addr, d->utf8, 1, REPLY_MAX);
        sb_printf(out, "\r\nAction: %s\r\nStatus: %s\r\n", d->action == DSN_ACTION_FAILED ? "failed" : "delayed",
                  status);
        if (r[i].remote_mta) {
            sb_puts(out, "Remote-MTA: dns; ");
            put_clean(out, r[i].remote_mta, 0, 0, 253);
            sb_puts(out, "\r\n");
        }
        if (r[i].reply) {
            sb_printf(out, "Diagnostic-Code: %s; ", reply_code(r[i].reply) ? "smtp" : "x-submitd");
            put_clean(out, r[i].reply, d->utf8, 0, REPLY_MAX);
            sb_puts(out, "\r\n");
        }
        if (r[i].last_attempt)
            put_date(out, "Last-Attempt-Date", r[i].last_attempt);
        if (d->action == DSN_ACTION_DELAYED && d->retry_until)
            put_date(out, "Will-Retry-Until", d->retry_until);
    }
}

void dsn_head(const struct dsn_info *d, const struct dsn_rcpt *r, size_t n, struct strbuf *out)
{
    int utf8text = any_8bit(d, r, n);
    sb_puts(out, "From: Mail Delivery System <MAILER-DAEMON@");
    put_clean(out, d->hostname, 0, 0, 253);
    sb_puts(out, ">\r\nTo: <");
    put_clean(out, d->sender, d->utf8, 0, REPLY_MAX);
    sb_printf(out, ">\r\nSubject: %s\r\n",
              d->action == DSN_ACTION_FAILED ? "Undelivered Mail Returned to Sender"
                                             : "Delayed Mail (still being retried)");
    put_date(out, "Date", d->now);
    sb_printf(out, "Message-ID: <%s.dsn@", d->dsn_id);
    put_clean(out, d->hostname, 0, 0, 253);
    sb_puts(out, ">\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
                 "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"");
    boundary(d, out);
    sb_puts(out, "\"\r\n\r\nThis is a MIME-encapsulated delivery status notification.\r\n");
    delimiter(d, out, 0);
    human_part(d, r, n, utf8text, out);
    delimiter(d, out, 0);
    status_part(d, r, n, out);
    delimiter(d, out, 0);
    const char *desc = d->action == DSN_ACTION_FAILED ? "Undelivered message" : "Delayed message";
    if (d->content == DSN_CONTENT_FULL)
        sb_printf(out, "Content-Description: %s\r\nContent-Type: message/%s\r\n", desc,
                  d->utf8 ? "global" : "rfc822");
    else
        sb_printf(out, "Content-Description: %s headers\r\nContent-Type: %s\r\n", desc,
                  d->utf8 ? "message/global-headers" : "text/rfc822-headers");
    sb_printf(out, "%s\r\n", d->content_8bit ? "Content-Transfer-Encoding: 8bit\r\n" : "");
}

void dsn_tail(const struct dsn_info *d, struct strbuf *out)
{
    delimiter(d, out, 1);
}
