/* fuzz_parse: libFuzzer harness for smtp/parse.c — the command-line reader
 * (checked against a reference split of the input, under several arrival
 * patterns), the verb splitter (checked against a reference), the MAIL/RCPT
 * parsers on every line (results cross-checked with smtp_address_valid and
 * smtp_address_domain) and xtext round trips. base64 is not fuzzed here.
 * Any broken invariant abort()s. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "smtp/parse.h"

/* Stops the run (libFuzzer reports it) when an invariant does not hold. */
static void check(int ok, int line)
{
    if (!ok) {
        fprintf(stderr, "fuzz_parse.c:%d: invariant failed\n", line);
        abort();
    }
}

/* ---- line reader ---------------------------------------------------------- */

struct ev {
    int too_long;
    size_t off, len; /* line bytes in the input (OK only) */
};

#define MAX_EVENTS 4096

/* What the reader must report: every LF-terminated line, OK when it fits in
 * max octets (terminator included), TOO_LONG otherwise. */
static size_t lines_reference(const uint8_t *d, size_t n, size_t max, struct ev *ev)
{
    size_t ne = 0, pos = 0;
    while (pos < n && ne < MAX_EVENTS) {
        const uint8_t *nl = memchr(d + pos, '\n', n - pos);
        if (!nl)
            break;
        size_t end = (size_t)(nl - d) + 1;
        if (end - pos <= max) {
            size_t l = end - pos - 1;
            if (l > 0 && d[pos + l - 1] == '\r')
                l--;
            ev[ne++] = (struct ev){0, pos, l};
        } else {
            ev[ne++] = (struct ev){1, 0, 0};
        }
        pos = end;
    }
    return ne;
}

/* Drives the reader the way session.c does: at most max+1 bytes per call,
 * from what has "arrived" (step bytes more per round, 0 = all). */
static size_t lines_actual(const uint8_t *d, size_t n, size_t max, size_t step, struct ev *ev)
{
    struct line_reader lr;
    line_reader_init(&lr, max);
    size_t ne = 0, pos = 0, arrived = 0;
    while (pos < n && ne < MAX_EVENTS) {
        arrived = step ? (arrived + step > n ? n : arrived + step) : n;
        for (;;) {
            size_t avail = arrived - pos;
            if (avail == 0 || ne >= MAX_EVENTS)
                break;
            size_t want = avail < max + 1 ? avail : max + 1;
            /* an exact copy so ASan sees reads past `want` */
            char *b = malloc(want);
            memcpy(b, d + pos, want);
            size_t ll = (size_t)-1, consumed = (size_t)-1;
            enum line_res r = line_reader_next(&lr, b, want, &ll, &consumed);
            free(b);
            check(consumed <= want, __LINE__);
            if (r == LINE_NEED_MORE) {
                check(consumed == 0 || lr.discarding, __LINE__);
                if (consumed > 0)
                    check(memchr(d + pos, '\n', consumed) == NULL, __LINE__);
                pos += consumed;
                if (consumed == 0)
                    break;
                continue;
            }
            check(consumed > 0 && d[pos + consumed - 1] == '\n', __LINE__);
            check(memchr(d + pos, '\n', consumed - 1) == NULL, __LINE__);
            if (r == LINE_OK) {
                check(consumed <= max, __LINE__);
                check(ll + 1 == consumed || (ll + 2 == consumed && d[pos + ll] == '\r'), __LINE__);
                ev[ne++] = (struct ev){0, pos, ll};
            } else {
                check(r == LINE_TOO_LONG, __LINE__);
                check(!lr.discarding, __LINE__);
                ev[ne++] = (struct ev){1, 0, 0};
            }
            pos += consumed;
        }
        if (arrived == n && pos < n) {
            /* nothing more will come: the rest must be an incomplete line */
            check(memchr(d + pos, '\n', n - pos) == NULL, __LINE__);
            break;
        }
    }
    return ne;
}

/* ---- command splitter ------------------------------------------------------- */

static const char *const verbs[CMD__COUNT] = {
    [CMD_HELO] = "HELO", [CMD_EHLO] = "EHLO", [CMD_MAIL] = "MAIL", [CMD_RCPT] = "RCPT",
    [CMD_DATA] = "DATA", [CMD_BDAT] = "BDAT", [CMD_RSET] = "RSET", [CMD_NOOP] = "NOOP",
    [CMD_QUIT] = "QUIT", [CMD_HELP] = "HELP", [CMD_VRFY] = "VRFY", [CMD_EXPN] = "EXPN",
    [CMD_STARTTLS] = "STARTTLS", [CMD_AUTH] = "AUTH",
};

static void check_split(const char *line, size_t len)
{
    const char *args = NULL;
    enum smtp_cmd c = smtp_cmd_parse(line, len, &args);
    int bad = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)line[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            bad = 1;
    }
    check(smtp_cmd_name(c) != NULL, __LINE__);
    if (bad) {
        check(c == CMD_INVALID, __LINE__);
        return;
    }
    size_t v = 0;
    while (v < len && line[v] != ' ')
        v++;
    enum smtp_cmd want = CMD_UNKNOWN;
    for (int k = CMD_HELO; k < CMD__COUNT; k++)
        if (strlen(verbs[k]) == v && strncasecmp(line, verbs[k], v) == 0)
            want = (enum smtp_cmd)k;
    check(c == want, __LINE__);
    check(args >= line && args <= line + len, __LINE__);
    if (c != CMD_UNKNOWN) {
        check(strcmp(smtp_cmd_name(c), verbs[c]) == 0, __LINE__);
        check(args == (v < len ? line + v + 1 : line + len), __LINE__);
    }
}

/* ---- MAIL / RCPT ------------------------------------------------------------ */

static void check_detail(const char *d, size_t dlen, int failed)
{
    check(memchr(d, '\0', dlen) != NULL, __LINE__);
    if (failed)
        check(d[0] != '\0', __LINE__);
}

static void check_mail_rcpt(const char *args)
{
    struct mail_args m;
    struct rcpt_args r;
    enum path_err pe = (enum path_err)77;
    char detail[64];
    int rc = smtp_parse_mail(args, &m, &pe, detail, sizeof(detail));
    check((rc == 0) == (pe == PE_OK), __LINE__);
    check(pe >= PE_OK && pe <= PE_UTF8_NEEDS_SMTPUTF8, __LINE__);
    check_detail(detail, sizeof(detail), rc != 0);
    if (rc == 0) {
        check(memchr(m.path, '\0', sizeof(m.path)) != NULL, __LINE__);
        check(memchr(m.envid, '\0', sizeof(m.envid)) != NULL, __LINE__);
        check(memchr(m.auth, '\0', sizeof(m.auth)) != NULL, __LINE__);
        if (m.path[0]) {
            check(smtp_address_valid(m.path, m.smtputf8), __LINE__);
            check(smtp_address_domain(m.path) != NULL, __LINE__);
        }
        for (const char *p = m.envid; *p; p++)
            check(*p >= 32 && *p < 127, __LINE__);
        check(m.body >= BODY_UNSPEC && m.body <= BODY_BINARYMIME, __LINE__);
        check(m.ret >= DSN_RET_UNSPEC && m.ret <= DSN_RET_HDRS, __LINE__);
        check(m.has_size || m.size == 0, __LINE__);
        /* an accepted path parses again by itself */
        char again[SMTP_PATH_MAX + 32];
        snprintf(again, sizeof(again), "FROM:<%s>%s", m.path, m.smtputf8 ? " SMTPUTF8" : "");
        struct mail_args m2;
        check(smtp_parse_mail(again, &m2, &pe, detail, sizeof(detail)) == 0, __LINE__);
        check(strcmp(m2.path, m.path) == 0, __LINE__);
    } else {
        check(m.path[0] == '\0' && m.has_size == 0 && m.envid[0] == '\0', __LINE__);
    }
    for (int utf8 = 0; utf8 < 2; utf8++) {
        rc = smtp_parse_rcpt(args, utf8, &r, &pe, detail, sizeof(detail));
        check((rc == 0) == (pe == PE_OK), __LINE__);
        check_detail(detail, sizeof(detail), rc != 0);
        if (rc == 0) {
            check(r.path[0] != '\0', __LINE__);
            check(smtp_address_valid(r.path, utf8), __LINE__);
            check(memchr(r.orcpt, '\0', sizeof(r.orcpt)) != NULL, __LINE__);
            check((r.notify & ~15u) == 0, __LINE__);
            check(!(r.notify & DSN_NOTIFY_NEVER) || r.notify == DSN_NOTIFY_NEVER, __LINE__);
            if (r.orcpt[0])
                check(strchr(r.orcpt, ';') != NULL, __LINE__);
        } else {
            check(r.path[0] == '\0' && r.notify == 0 && r.orcpt[0] == '\0', __LINE__);
        }
    }
}

/* A valid address is accepted in a MAIL path, unchanged. */
static void check_address(const char *s)
{
    for (int utf8 = 0; utf8 < 2; utf8++) {
        if (!smtp_address_valid(s, utf8))
            continue;
        check(smtp_address_domain(s) != NULL, __LINE__);
        char args[SMTP_PATH_MAX + 32];
        snprintf(args, sizeof(args), "FROM:<%s>%s", s, utf8 ? " SMTPUTF8" : "");
        struct mail_args m;
        enum path_err pe;
        char d[64];
        check(smtp_parse_mail(args, &m, &pe, d, sizeof(d)) == 0, __LINE__);
        check(strcmp(m.path, s) == 0, __LINE__);
    }
}

/* ---- xtext ------------------------------------------------------------------- */

static void check_xtext(const uint8_t *d, size_t n)
{
    char dec[512], enc[1600], dec2[512];
    int r = xtext_decode((const char *)d, n, dec, sizeof(dec));
    if (r >= 0) {
        check((size_t)r == strlen(dec), __LINE__);
        check((size_t)r <= n, __LINE__);
        size_t e = xtext_encode(dec, enc, sizeof(enc));
        check(e == strlen(enc), __LINE__);
        check(xtext_decode(enc, e, dec2, sizeof(dec2)) == r, __LINE__);
        check(strcmp(dec, dec2) == 0, __LINE__);
    }
    /* any NUL-free string survives encode + decode; truncated encodes are
     * prefixes made of whole units */
    size_t m = n < 500 ? n : 500;
    char raw[501];
    memcpy(raw, d, m);
    raw[m] = '\0';
    size_t need = xtext_encode(raw, enc, sizeof(enc));
    check(need == strlen(enc), __LINE__);
    r = xtext_decode(enc, need, dec, sizeof(dec));
    check(r == (int)strlen(raw), __LINE__);
    check(strcmp(dec, raw) == 0, __LINE__);
    size_t cap = n % 17;
    char small[17];
    check(xtext_encode(raw, small, cap) == need, __LINE__);
    if (cap > 0) {
        size_t sl = strlen(small);
        check(sl < cap && memcmp(small, enc, sl) == 0, __LINE__);
        check(sl == need || enc[sl] != '\0', __LINE__);
        check(xtext_decode(small, sl, dec, sizeof(dec)) >= 0, __LINE__); /* no half escape */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t sel = data[0];
    const uint8_t *d = data + 1;
    size_t n = size - 1;

    /* line reader, small limits so the discarding paths are reached */
    static struct ev want[MAX_EVENTS], got[MAX_EVENTS];
    size_t max = 1 + (sel & 31);
    size_t nw = lines_reference(d, n, max, want);
    static const size_t steps[] = {0, 1, 2, 3, 7, 64};
    for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
        size_t ng = lines_actual(d, n, max, steps[k], got);
        check(ng == nw, __LINE__);
        for (size_t i = 0; i < ng; i++) {
            check(got[i].too_long == want[i].too_long, __LINE__);
            check(got[i].off == want[i].off && got[i].len == want[i].len, __LINE__);
        }
    }

    /* every line (with a generous limit) through the splitter and parsers */
    nw = lines_reference(d, n, 4096, want);
    for (size_t i = 0; i < nw; i++) {
        if (want[i].too_long)
            continue;
        char *line = malloc(want[i].len + 1);
        memcpy(line, d + want[i].off, want[i].len);
        line[want[i].len] = '\0';
        check_split(line, want[i].len);
        if (!memchr(line, '\0', want[i].len)) {
            const char *args = NULL;
            enum smtp_cmd c = smtp_cmd_parse(line, want[i].len, &args);
            check_mail_rcpt(c == CMD_MAIL || c == CMD_RCPT ? args : line);
            check_address(line);
        }
        free(line);
    }
    /* the whole input as one line too */
    char *all = malloc(n + 1);
    memcpy(all, d, n);
    all[n] = '\0';
    check_split(all, n);
    check_mail_rcpt(all);
    check_address(all);
    free(all);

    check_xtext(d, n);
    return 0;
}
