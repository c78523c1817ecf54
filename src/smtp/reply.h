/* reply: pure, resumable parser for SMTP server replies (RFC 5321 4.2),
 * shared by the relay client and submitcheck. Feed it complete lines (the
 * line reader in parse.h splits them); it gathers a multi-line reply
 * ("250-..." ... "250 ...") into one struct smtp_reply. Bounded: at most
 * REPLY_MAX_LINES lines and REPLY_MAX_TEXT octets of text per reply. */
#ifndef SUBMITD_REPLY_H
#define SUBMITD_REPLY_H

#include <stddef.h>

#define REPLY_MAX_LINES 100
#define REPLY_MAX_TEXT 16384
#define REPLY_LINE_MAX 2048 /* longest reply line accepted, CRLF included */

struct smtp_reply {
    int code;        /* 200..599 */
    char enh[16];    /* enhanced status of the first line ("2.0.0"), or "" */
    size_t nlines;
    /* The text of every line without the "250-"/"250 " prefix (and without
     * the enhanced code when the line starts with it), lines joined by '\n',
     * NUL-terminated. */
    char text[REPLY_MAX_TEXT + 1];
    size_t textlen;
};

enum reply_res { REPLY_NEED_MORE = 0, REPLY_OK = 1, REPLY_ERR = -1 };

struct reply_parser {
    struct smtp_reply r;
    int started;     /* internal: inside a multi-line reply */
};

void reply_parser_init(struct reply_parser *p);
/* Copies a reply: its fields and text up to its NUL (not the whole buffer). */
void reply_copy(struct smtp_reply *dst, const struct smtp_reply *src);
/* Feeds one line without CR/LF. REPLY_OK: p->r holds the complete reply
 * (the next call starts a new one). REPLY_ERR: malformed (no 3-digit
 * code, code outside 200..599, a continuation line with another code,
 * separator neither ' ' nor '-' , too many lines); `err` says why. A
 * line of just the 3 digits is a valid last line. */
enum reply_res reply_feed_line(struct reply_parser *p, const char *line, size_t len, char *err, size_t errlen);

/* Whole-reply helpers. */
/* 1 if any line of an EHLO reply announces `kw` (case-insensitive, first
 * word of the line); *params (optional) points at the rest of that line
 * inside r->text (not NUL-terminated at the line end: use *plen). */
int reply_ehlo_has(const struct smtp_reply *r, const char *kw, const char **params, size_t *plen);
/* One-line summary for logs and DSNs: "550 5.1.1 text of first line" plus
 * the other lines joined with ' '; control bytes replaced by '?'. */
void reply_summary(const struct smtp_reply *r, char *buf, size_t n);

#endif
