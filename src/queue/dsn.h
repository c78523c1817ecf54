/* dsn: pure construction of delivery status notifications (RFC 3464
 * multipart/report; report-type=delivery-status) for the queue: the
 * top-level header (From: MAILER-DAEMON@host, Auto-Submitted, a fresh
 * Message-ID/Date), the human-readable part, the message/delivery-status
 * part and the head of the part that returns the original (message/rfc822
 * or text/rfc822-headers; message/global* under SMTPUTF8, RFC 6533). The
 * queue streams the returned content between dsn_head() and dsn_tail() into
 * a spool writer. No I/O here: everything is unit-tested byte for byte. */
#ifndef SUBMITD_DSN_H
#define SUBMITD_DSN_H

#include <stddef.h>
#include <stdint.h>

#include "core/util.h"

enum dsn_action { DSN_ACTION_FAILED = 0, DSN_ACTION_DELAYED };
enum dsn_content { DSN_CONTENT_HEADERS = 0, DSN_CONTENT_FULL };

/* One recipient of the report. */
struct dsn_rcpt {
    const char *addr;       /* the RCPT TO address: Final-Recipient */
    const char *orcpt;      /* ORCPT as stored ("rfc822;addr"), or NULL */
    const char *reply;      /* the last reply ("550 5.1.1 no such user"), or NULL */
    const char *remote_mta; /* host that gave the reply (Remote-MTA), or NULL */
    int64_t last_attempt;   /* unix time of the last attempt, 0 = none */
    int perm;               /* failed by a permanent reply (else: lifetime expired) */
};

struct dsn_info {
    enum dsn_action action;
    const char *hostname;   /* Reporting-MTA, MAILER-DAEMON@hostname, Message-ID */
    const char *dsn_id;     /* queue id of the DSN: Message-ID and MIME boundary */
    const char *orig_id;    /* queue id of the original (X-Submitd-Queue-ID) */
    const char *sender;     /* envelope sender of the original: To: */
    const char *envid;      /* ENVID of the original (decoded), or NULL */
    int64_t arrival;        /* when the original was accepted */
    int64_t now;            /* Date: */
    int64_t retry_until;    /* delayed: Will-Retry-Until; 0 = omitted */
    int utf8;               /* the original used SMTPUTF8 */
    enum dsn_content content;
    int content_8bit;       /* the returned content holds octets >= 0x80 */
};

/* Appends everything up to the returned content (which the caller then
 * appends as CRLF text: the message, or its header section). */
void dsn_head(const struct dsn_info *d, const struct dsn_rcpt *r, size_t n, struct strbuf *out);
/* Appends the closing delimiter. */
void dsn_tail(const struct dsn_info *d, struct strbuf *out);

/* The Status: of a recipient: the reply's enhanced code when it has one
 * of the right class; else 5.0.0 (permanent), 4.4.7 (lifetime expired
 * without a code) or 4.0.0 (delayed). out holds at least 16 octets. */
void dsn_status(const struct dsn_rcpt *r, enum dsn_action a, char *out, size_t outlen);
/* What to return: BINARYMIME bodies and RET=HDRS get the header section;
 * RET=FULL the whole message; without RET the whole message up to `cap`
 * octets (prepend + stored bytes), the header section above that. */
enum dsn_content dsn_choose(int ret, int body, uint64_t size, uint64_t cap);
/* Whether a recipient's NOTIFY (dsn_notify bits, 0 = not given) asks for
 * this kind of report. Not given: failures and delays are reported. */
int dsn_requested(unsigned notify, enum dsn_action a);
/* Length of the header section at the start of msg: up to and including
 * the empty line that ends it; without one, up to the last complete line. */
size_t dsn_header_len(const char *msg, size_t n);

#endif
