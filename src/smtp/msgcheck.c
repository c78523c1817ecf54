/* msgcheck: the header hook of the message stream (see msgstream.h).
 * Scans the header section as it arrives; at the end refuses a header
 * section longer than limits.header-size (552 5.3.4: fields past it could
 * not be checked), a From: whose addresses are not all the account's own,
 * or that holds more than 16 addresses (553 5.7.1), and adds
 * Message-ID and Date when the message has none (RFC 6409 section 8).
 * Also holds the hook table and msg_note (the hooks' fields for the
 * `queued` log line). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dkim/dkim.h"
#include "smtp/dataparse.h"
#include "smtp/msgstream.h"

#define FROM_ADDRS_MAX 16

struct hdr_state {
    struct header_scan hs;
};

static void *hdr_begin(const struct msg_view *v)
{
    struct hdr_state *st = xcalloc(1, sizeof(*st));
    header_scan_init(&st->hs, v->cfg->limits.header_size);
    return st;
}

static void hdr_data(void *p, const char *buf, size_t n)
{
    struct hdr_state *st = p;
    if (!st->hs.done)
        header_scan_feed(&st->hs, buf, n);
}

static int from_check(struct hdr_state *st, const struct msg_view *v, char *reply, size_t rlen)
{
    char q1[LOGQ_MAX], q2[LOGQ_MAX];
    if (st->hs.too_long) {
        /* fields past the limit would go unchecked */
        snprintf(reply, rlen, "552 5.3.4 Header section exceeds %zu octets", v->cfg->limits.header_size);
        logkv(LOG_LVL_WARN, v->lc, "message.header_too_long", "limit=%zu", v->cfg->limits.header_size);
        return 1;
    }
    if (!v->cfg->check_from_header || !v->account || st->hs.from_count == 0)
        return 0;
    if (st->hs.from_count > 1 || st->hs.from_truncated) {
        snprintf(reply, rlen, "553 5.7.1 Message has more than one From: header");
        logkv(LOG_LVL_WARN, v->lc, "policy.from_header", "reason=multiple login=%s", log_q(q1, sizeof(q1), v->login));
        return 1;
    }
    /* One slot more than accepted: a full array means addresses were left
     * unread, and every address must be checked. */
    char (*addrs)[ADDR_MAX + 1] = xcalloc(FROM_ADDRS_MAX + 1, sizeof(*addrs));
    int n = addrlist_parse(st->hs.from, addrs, FROM_ADDRS_MAX + 1);
    int rc = 0;
    if (n > FROM_ADDRS_MAX) {
        snprintf(reply, rlen, "553 5.7.1 Too many addresses in the From: header (at most %d)", FROM_ADDRS_MAX);
        logkv(LOG_LVL_WARN, v->lc, "policy.from_header", "reason=too_many login=%s", log_q(q1, sizeof(q1), v->login));
        rc = 1;
    } else if (n <= 0) {
        snprintf(reply, rlen, "553 5.7.1 Malformed From: header");
        logkv(LOG_LVL_WARN, v->lc, "policy.from_header", "reason=malformed from=%s login=%s",
              log_q(q1, sizeof(q1), st->hs.from), log_q(q2, sizeof(q2), v->login));
        rc = 1;
    }
    for (int i = 0; i < n && !rc; i++) {
        if (!account_may_send_as(v->account, addrs[i])) {
            snprintf(reply, rlen, "553 5.7.1 From: header address <%.320s> not owned by user %.256s", addrs[i],
                     v->login);
            logkv(LOG_LVL_WARN, v->lc, "policy.from_mismatch", "header_from=%s login=%s",
                  log_q(q1, sizeof(q1), addrs[i]), log_q(q2, sizeof(q2), v->login));
            rc = 1;
        }
    }
    free(addrs);
    return rc;
}

static int hdr_end(void *p, const struct msg_view *v, struct strbuf *prepend, char *reply, size_t rlen)
{
    struct hdr_state *st = p;
    header_scan_finish(&st->hs);
    if (from_check(st, v, reply, rlen))
        return 1;
    if (v->cfg->add_message_id && !st->hs.has_message_id) {
        unsigned char r[8];
        random_bytes(r, sizeof(r));
        sb_printf(prepend, "Message-ID: <%s.%02x%02x%02x%02x%02x%02x%02x%02x@%s>\r\n", v->env->id, r[0], r[1], r[2],
                  r[3], r[4], r[5], r[6], r[7], v->cfg->hostname);
    }
    if (v->cfg->add_date && !st->hs.has_date) {
        char date[64];
        rfc5322_date(time(NULL), date, sizeof(date));
        sb_printf(prepend, "Date: %s\r\n", date);
    }
    return 0;
}

static void hdr_free(void *p)
{
    free(p);
}

static const struct msg_hook header_hook = {
    .name = "headers",
    .begin = hdr_begin,
    .data = hdr_data,
    .end = hdr_end,
    .free = hdr_free,
};

const struct msg_hook *const msg_hooks[] = {&header_hook, &dkim_hook};
const size_t msg_hooks_count = sizeof(msg_hooks) / sizeof(msg_hooks[0]);

void msg_note(const struct msg_view *v, const char *fmt, ...)
{
    if (!v->note || v->note_size == 0)
        return;
    size_t len = strlen(v->note);
    if (len + 2 >= v->note_size)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(v->note + len + 1, v->note_size - len - 1, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < v->note_size - len - 1)
        v->note[len] = ' '; /* it fit: joined on; else note[len] stays the end */
}
