/* Unit tests for smtp/parse.c: the command-line reader (limits, CR/LF,
 * NUL, discarding over-long lines across calls), the verb splitter, the
 * MAIL FROM / RCPT TO path and parameter parsers (every PE_* outcome,
 * every parameter, UTF-8 rules, lengths, source routes, literals), the
 * bare address helpers and xtext. base64 is tested with base64.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp/parse.h"

/* ---- line reader --------------------------------------------------------- */

/* Calls the reader with exactly len bytes in their own allocation, so that
 * ASan catches any read past len. */
static enum line_res lr_call(struct line_reader *lr, const char *data, size_t len, size_t *ll, size_t *consumed)
{
    char *b = malloc(len ? len : 1);
    memcpy(b, data, len);
    enum line_res r = line_reader_next(lr, b, len, ll, consumed);
    free(b);
    return r;
}

/* Runs input through the reader the way session.c does (at most max+1
 * bytes per call, dropping what is consumed) and records each result as
 * "OK:<line>" or "LONG" separated by '|'. chunk limits how much of the
 * input has "arrived" per round (0 = everything at once). */
static void lr_session(size_t max, const char *in, size_t inlen, size_t chunk, char *log, size_t loglen)
{
    struct line_reader lr;
    line_reader_init(&lr, max);
    size_t pos = 0, arrived = 0;
    log[0] = '\0';
    while (pos < inlen) {
        arrived = chunk ? (arrived + chunk > inlen ? inlen : arrived + chunk) : inlen;
        for (;;) {
            size_t avail = arrived - pos;
            if (avail == 0)
                break;
            size_t want = avail < max + 1 ? avail : max + 1;
            size_t ll = 99999, consumed = 99999;
            enum line_res r = lr_call(&lr, in + pos, want, &ll, &consumed);
            assert_true(consumed <= want);
            pos += consumed;
            if (r == LINE_NEED_MORE) {
                if (consumed == 0)
                    break;
                continue;
            }
            size_t l = strlen(log);
            if (r == LINE_OK) {
                assert_true(ll + 1 <= consumed);
                snprintf(log + l, loglen - l, "OK:%.*s|", (int)ll, in + pos - consumed);
            } else {
                assert_int_equal(r, LINE_TOO_LONG);
                snprintf(log + l, loglen - l, "LONG|");
            }
        }
    }
}

static void test_line_basic(void **state)
{
    (void)state;
    struct line_reader lr;
    size_t ll, c;
    line_reader_init(&lr, 10);
    assert_int_equal(lr_call(&lr, "NOOP\r\nQUIT\r\n", 12, &ll, &c), LINE_OK);
    assert_int_equal(ll, 4);
    assert_int_equal(c, 6);
    /* a lone LF ends a line too */
    assert_int_equal(lr_call(&lr, "NOOP\nX", 6, &ll, &c), LINE_OK);
    assert_int_equal(ll, 4);
    assert_int_equal(c, 5);
    /* only one CR before the LF is stripped; other CRs stay in the line */
    assert_int_equal(lr_call(&lr, "a\rb\r\r\n", 6, &ll, &c), LINE_OK);
    assert_int_equal(ll, 4);
    assert_int_equal(c, 6);
    assert_int_equal(lr_call(&lr, "\r\n", 2, &ll, &c), LINE_OK);
    assert_int_equal(ll, 0);
    assert_int_equal(c, 2);
    assert_int_equal(lr_call(&lr, "\n", 1, &ll, &c), LINE_OK);
    assert_int_equal(ll, 0);
    assert_int_equal(c, 1);
    /* incomplete */
    assert_int_equal(lr_call(&lr, "NOOP\r", 5, &ll, &c), LINE_NEED_MORE);
    assert_int_equal(c, 0);
    assert_int_equal(lr_call(&lr, "", 0, &ll, &c), LINE_NEED_MORE);
    assert_int_equal(c, 0);
    /* NUL inside a line is reported as a line */
    assert_int_equal(lr_call(&lr, "NO\0OP\r\n", 7, &ll, &c), LINE_OK);
    assert_int_equal(ll, 5);
    assert_int_equal(c, 7);
}

static void test_line_limit(void **state)
{
    (void)state;
    struct line_reader lr;
    size_t ll, c;
    /* exactly max octets including CRLF: fine */
    line_reader_init(&lr, 10);
    assert_int_equal(lr_call(&lr, "12345678\r\n", 10, &ll, &c), LINE_OK);
    assert_int_equal(ll, 8);
    assert_int_equal(c, 10);
    /* exactly max with a lone LF */
    assert_int_equal(lr_call(&lr, "123456789\n", 10, &ll, &c), LINE_OK);
    assert_int_equal(ll, 9);
    /* max + 1: the LF is the (max+1)th octet: too long, found in the same call */
    assert_int_equal(lr_call(&lr, "123456789\r\n", 11, &ll, &c), LINE_TOO_LONG);
    assert_int_equal(c, 11);
    assert_int_equal(lr.discarding, 0);
    /* max bytes without LF: discarding starts, all consumed */
    assert_int_equal(lr_call(&lr, "1234567890", 10, &ll, &c), LINE_NEED_MORE);
    assert_int_equal(c, 10);
    assert_int_equal(lr.discarding, 1);
    assert_int_equal(lr_call(&lr, "xyz", 3, &ll, &c), LINE_NEED_MORE);
    assert_int_equal(c, 3);
    assert_int_equal(lr_call(&lr, "ab\r\nNOOP\r\n", 10, &ll, &c), LINE_TOO_LONG);
    assert_int_equal(c, 4);
    assert_int_equal(lr_call(&lr, "NOOP\r\n", 6, &ll, &c), LINE_OK);
    assert_int_equal(ll, 4);
    /* fewer than max bytes and no LF: just wait */
    assert_int_equal(lr_call(&lr, "123456789", 9, &ll, &c), LINE_NEED_MORE);
    assert_int_equal(c, 0);
    /* re-init forgets discarding */
    assert_int_equal(lr_call(&lr, "1234567890AB", 12, &ll, &c), LINE_NEED_MORE);
    assert_int_equal(lr.discarding, 1);
    line_reader_init(&lr, 10);
    assert_int_equal(lr_call(&lr, "NOOP\r\n", 6, &ll, &c), LINE_OK);
}

static void test_line_session(void **state)
{
    (void)state;
    char log[512];
    /* limit and limit+1 through the session's calling pattern */
    const char in1[] = "12345678\r\n123456789\r\nNOOP\r\n";
    lr_session(10, in1, sizeof(in1) - 1, 0, log, sizeof(log));
    assert_string_equal(log, "OK:12345678|LONG|OK:NOOP|");
    /* a long line arriving one byte at a time, and in chunks of 3 and 7 */
    char big[300];
    memset(big, 'A', 250);
    memcpy(big + 250, "\r\nRSET\r\nQUIT\n", 13);
    size_t bl = 263;
    for (size_t chunk = 1; chunk <= 12; chunk++) {
        lr_session(10, big, bl, chunk, log, sizeof(log));
        assert_string_equal(log, "LONG|OK:RSET|OK:QUIT|");
    }
    lr_session(10, big, bl, 0, log, sizeof(log));
    assert_string_equal(log, "LONG|OK:RSET|OK:QUIT|");
    /* a line whose CR is the max-th octet and LF the (max+1)th, at every split */
    const char in2[] = "123456789\r\nA\r\n";
    for (size_t chunk = 1; chunk <= sizeof(in2); chunk++) {
        lr_session(10, in2, sizeof(in2) - 1, chunk, log, sizeof(log));
        assert_string_equal(log, "LONG|OK:A|");
    }
    /* two long lines back to back */
    const char in3[] = "aaaaaaaaaaaaaaaaaaaa\nbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\nok\r\n";
    for (size_t chunk = 1; chunk <= sizeof(in3); chunk++) {
        lr_session(10, in3, sizeof(in3) - 1, chunk, log, sizeof(log));
        assert_string_equal(log, "LONG|LONG|OK:ok|");
    }
}

/* ---- command splitter ----------------------------------------------------- */

static enum smtp_cmd split(const char *line, const char **args)
{
    return smtp_cmd_parse(line, strlen(line), args);
}

static void test_cmd_verbs(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        enum smtp_cmd c;
    } verbs[] = {
        {"HELO", CMD_HELO}, {"EHLO", CMD_EHLO}, {"MAIL", CMD_MAIL}, {"RCPT", CMD_RCPT},
        {"DATA", CMD_DATA}, {"BDAT", CMD_BDAT}, {"RSET", CMD_RSET}, {"NOOP", CMD_NOOP},
        {"QUIT", CMD_QUIT}, {"HELP", CMD_HELP}, {"VRFY", CMD_VRFY}, {"EXPN", CMD_EXPN},
        {"STARTTLS", CMD_STARTTLS}, {"AUTH", CMD_AUTH},
    };
    assert_int_equal(sizeof(verbs) / sizeof(verbs[0]), CMD__COUNT - 1);
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
        char buf[64];
        const char *args = NULL;
        /* upper, lower, mixed case */
        assert_int_equal(split(verbs[i].name, &args), verbs[i].c);
        assert_string_equal(args, "");
        snprintf(buf, sizeof(buf), "%s", verbs[i].name);
        for (char *p = buf; *p; p++)
            *p = (char)(*p - 'A' + 'a');
        assert_int_equal(split(buf, &args), verbs[i].c);
        buf[0] = (char)(buf[0] - 'a' + 'A');
        assert_int_equal(split(buf, &args), verbs[i].c);
        snprintf(buf, sizeof(buf), "%s some args", verbs[i].name);
        assert_int_equal(split(buf, &args), verbs[i].c);
        assert_string_equal(args, "some args");
        assert_string_equal(smtp_cmd_name(verbs[i].c), verbs[i].name);
        /* verb followed by something other than a space: unknown */
        snprintf(buf, sizeof(buf), "%sX", verbs[i].name);
        assert_int_equal(split(buf, &args), CMD_UNKNOWN);
    }
}

static void test_cmd_args_and_errors(void **state)
{
    (void)state;
    const char *args = NULL;
    assert_int_equal(split("MAIL FROM:<a@b.c> SIZE=1", &args), CMD_MAIL);
    assert_string_equal(args, "FROM:<a@b.c> SIZE=1");
    assert_int_equal(split("RCPT TO:<a@b.c>", &args), CMD_RCPT);
    assert_string_equal(args, "TO:<a@b.c>");
    /* only one separating space is eaten */
    assert_int_equal(split("MAIL  FROM:<a@b.c>", &args), CMD_MAIL);
    assert_string_equal(args, " FROM:<a@b.c>");
    assert_int_equal(split("DATA ", &args), CMD_DATA);
    assert_string_equal(args, "");
    assert_int_equal(split("NOOPX", &args), CMD_UNKNOWN);
    assert_int_equal(split("NOO", &args), CMD_UNKNOWN);
    assert_int_equal(split("FOOBAR", &args), CMD_UNKNOWN);
    assert_int_equal(split("", &args), CMD_UNKNOWN);
    assert_int_equal(split(" NOOP", &args), CMD_UNKNOWN);
    assert_int_equal(split("NOOP\tx", &args), CMD_UNKNOWN);
    assert_int_equal(split("STARTTLSX", &args), CMD_UNKNOWN);
    /* TAB and bytes >= 0x80 are allowed in arguments */
    assert_int_equal(split("VRFY a\tb", &args), CMD_VRFY);
    assert_string_equal(args, "a\tb");
    assert_int_equal(split("EHLO \xd0\xb6\xd0\xbe\xd1\x80\xd0\xb0.test", &args), CMD_EHLO);
    assert_string_equal(args, "\xd0\xb6\xd0\xbe\xd1\x80\xd0\xb0.test");
    /* NUL and control characters: invalid, whatever the verb */
    assert_int_equal(smtp_cmd_parse("NOOP\0", 5, &args), CMD_INVALID);
    assert_int_equal(smtp_cmd_parse("EHLO a\0b", 8, &args), CMD_INVALID);
    assert_int_equal(smtp_cmd_parse("\0\0\0", 3, &args), CMD_INVALID);
    assert_int_equal(split("NO\x01OP", &args), CMD_INVALID);
    assert_int_equal(split("NOOP\r", &args), CMD_INVALID);
    assert_int_equal(split("NOOP \x1b[0m", &args), CMD_INVALID);
    assert_int_equal(split("XYZZY \x7f", &args), CMD_INVALID);
    assert_int_equal(split("MAIL FROM:<a\nb@c>", &args), CMD_INVALID);
    assert_int_equal(smtp_cmd_parse("MAIL FROM:<alice@example.test\0>", 31, &args), CMD_INVALID);
    /* names of the non-verbs */
    assert_string_equal(smtp_cmd_name(CMD_UNKNOWN), "UNKNOWN");
    assert_non_null(smtp_cmd_name(CMD_INVALID));
    assert_non_null(smtp_cmd_name(CMD__COUNT));
}

/* ---- MAIL / RCPT ------------------------------------------------------------ */

static enum path_err mail(const char *args, struct mail_args *m, char *detail)
{
    enum path_err pe = (enum path_err)99;
    char d[128];
    int rc = smtp_parse_mail(args, m, &pe, detail ? detail : d, 128);
    assert_int_equal(rc, pe == PE_OK ? 0 : -1);
    return pe;
}

static enum path_err rcpt(const char *args, int utf8, struct rcpt_args *r, char *detail)
{
    enum path_err pe = (enum path_err)99;
    char d[128];
    int rc = smtp_parse_rcpt(args, utf8, r, &pe, detail ? detail : d, 128);
    assert_int_equal(rc, pe == PE_OK ? 0 : -1);
    return pe;
}

static void test_mail_syntax(void **state)
{
    (void)state;
    struct mail_args m;
    char d[128];
    assert_int_equal(mail("FROM:<alice@example.test>", &m, NULL), PE_OK);
    assert_string_equal(m.path, "alice@example.test");
    assert_int_equal(m.has_size, 0);
    assert_int_equal(m.body, BODY_UNSPEC);
    assert_int_equal(m.smtputf8, 0);
    assert_int_equal(m.ret, DSN_RET_UNSPEC);
    assert_string_equal(m.envid, "");
    assert_string_equal(m.auth, "");
    /* keyword case, spaces after the colon */
    assert_int_equal(mail("from:<alice@example.test>", &m, NULL), PE_OK);
    assert_int_equal(mail("FrOm: <alice@example.test>", &m, NULL), PE_OK);
    assert_int_equal(mail("FROM:   <alice@example.test>", &m, NULL), PE_OK);
    assert_string_equal(m.path, "alice@example.test");
    /* trailing spaces are tolerated */
    assert_int_equal(mail("FROM:<alice@example.test>  ", &m, NULL), PE_OK);
    /* null sender */
    assert_int_equal(mail("FROM:<>", &m, NULL), PE_OK);
    assert_string_equal(m.path, "");
    assert_int_equal(mail("FROM:<> SIZE=5", &m, NULL), PE_OK);
    assert_int_equal(m.size, 5);
    /* syntax errors */
    assert_int_equal(mail("", &m, d), PE_SYNTAX);
    assert_int_equal(mail("TO:<x@dest.test>", &m, NULL), PE_SYNTAX);
    assert_int_equal(mail("FROM <a@b.c>", &m, NULL), PE_SYNTAX);
    assert_int_equal(mail("FROM :<a@b.c>", &m, NULL), PE_SYNTAX);
    assert_int_equal(mail("FROMX:<a@b.c>", &m, NULL), PE_SYNTAX);
    assert_int_equal(mail("FROM:a@b.c", &m, NULL), PE_SYNTAX);
    assert_int_equal(mail("FROM:<a@b.c", &m, NULL), PE_SYNTAX);
    assert_int_equal(mail("FROM:a@b.c>", &m, NULL), PE_SYNTAX);
    assert_int_equal(mail("FROM:<a@b.c>x", &m, NULL), PE_SYNTAX);
    assert_int_equal(mail("FROM:<a@b.c>>", &m, NULL), PE_SYNTAX);
    assert_int_equal(mail("FROM:<a@b.c>\tSIZE=1", &m, NULL), PE_SYNTAX);
    assert_int_equal(mail("FROM:", &m, NULL), PE_SYNTAX);
    assert_int_equal(mail("FROM:<\"a>@b.c", &m, NULL), PE_SYNTAX);
    assert_int_equal(mail("FROM:<\"ab@example.test>", &m, NULL), PE_SYNTAX); /* the quote never closes */
    assert_int_equal(mail("FROM:<a@b.c> =x", &m, NULL), PE_SYNTAX);
    assert_int_equal(mail("FROM:<a@b.c> SI_ZE=1", &m, NULL), PE_SYNTAX);
    assert_int_equal(mail("FROM:<a@b.c> -X=1", &m, NULL), PE_SYNTAX);
    /* the output is cleared on error */
    assert_int_equal(mail("FROM:<alice@example.test> RET=BOGUS", &m, d), PE_PARAM_VALUE);
    assert_string_equal(m.path, "");
    assert_int_equal(m.ret, DSN_RET_UNSPEC);
}

static void test_mail_addresses(void **state)
{
    (void)state;
    struct mail_args m;
    static const char *const bad[] = {
        "FROM:<alice@@example.test>", "FROM:<@@>", "FROM:<nobody@@bad>", "FROM:<alice>",
        "FROM:<@example.test>", "FROM:<alice@>", "FROM:<.alice@example.test>", "FROM:<alice.@example.test>",
        "FROM:<al..ice@example.test>", "FROM:<al ice@example.test>", "FROM:<alice@-example.test>",
        "FROM:<alice@example-.test>", "FROM:<alice@exa_mple.test>", "FROM:<alice@example..test>",
        "FROM:<alice@example.test.>", "FROM:<alice@.example.test>", "FROM:<a(b)@example.test>",
        "FROM:<a,b@example.test>", "FROM:<a\"b\"@example.test>",
        "FROM:<alice@[192.0.2.256]>", "FROM:<alice@[192.0.2]>", "FROM:<alice@[IPv6:2001:db8::g]>",
        "FROM:<alice@[example.test]>", "FROM:<alice@[1.2.3.4>", "FROM:<alice@[tag:foo]>",
        "FROM:<alice@ex ample.test>", "FROM:<@a:>", "FROM:<@a,b:alice@example.test>",
        "FROM:<@a:@b:alice@example.test>", "FROM:<@-a:alice@example.test>", "FROM:<@[1.2.3.4]:a@b.c>",
        "FROM:<\"a\\\x80\"@b.c>", "FROM:<a@b.c@d.e>",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char d[128];
        enum path_err pe = mail(bad[i], &m, d);
        if (pe != PE_ADDRESS)
            fail_msg("%s: got %d, want PE_ADDRESS", bad[i], (int)pe);
        assert_string_equal(d, "bad sender address");
    }
    static const struct {
        const char *args, *path;
    } good[] = {
        {"FROM:<a@b>", "a@b"},
        {"FROM:<first.last+tag@sub.example.test>", "first.last+tag@sub.example.test"},
        {"FROM:<!#$%&'*+-/=?^_`{|}~@example.test>", "!#$%&'*+-/=?^_`{|}~@example.test"},
        {"FROM:<\"john doe\"@example.test>", "\"john doe\"@example.test"},
        {"FROM:<\"a>b\"@example.test>", "\"a>b\"@example.test"},
        {"FROM:<\"a\\\"b\"@example.test>", "\"a\\\"b\"@example.test"},
        {"FROM:<\"\"@example.test>", "\"\"@example.test"},
        {"FROM:<alice@[192.0.2.1]>", "alice@[192.0.2.1]"},
        {"FROM:<alice@[IPv6:2001:db8::1]>", "alice@[IPv6:2001:db8::1]"},
        {"FROM:<alice@[ipv6:::1]>", "alice@[ipv6:::1]"},
        {"FROM:<@a,@b:user@d.test>", "user@d.test"},
        {"FROM:<@relay.test:user@d.test>", "user@d.test"},
        {"FROM:<a-b@x-1.y2.test>", "a-b@x-1.y2.test"},
        {"FROM:<Alice@Example.TEST>", "Alice@Example.TEST"},
        {"FROM:<1@2.3>", "1@2.3"},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        enum path_err pe = mail(good[i].args, &m, NULL);
        if (pe != PE_OK)
            fail_msg("%s: got %d, want PE_OK", good[i].args, (int)pe);
        assert_string_equal(m.path, good[i].path);
    }
}

static void test_mail_lengths(void **state)
{
    (void)state;
    struct mail_args m;
    char args[2048], d[128];
    char l64[65], l65[66], label63[64], label64[65];
    memset(l64, 'l', 64), l64[64] = '\0';
    memset(l65, 'l', 65), l65[65] = '\0';
    memset(label63, 'd', 63), label63[63] = '\0';
    memset(label64, 'd', 64), label64[64] = '\0';
    snprintf(args, sizeof(args), "FROM:<%s@example.test>", l64);
    assert_int_equal(mail(args, &m, NULL), PE_OK);
    snprintf(args, sizeof(args), "FROM:<%s@example.test>", l65);
    assert_int_equal(mail(args, &m, d), PE_TOO_LONG);
    assert_string_equal(d, "sender address too long");
    /* quoted local part: 64 octets including the quotes */
    snprintf(args, sizeof(args), "FROM:<\"%.62s\"@example.test>", l64);
    assert_int_equal(mail(args, &m, NULL), PE_OK);
    snprintf(args, sizeof(args), "FROM:<\"%.63s\"@example.test>", l64);
    assert_int_equal(mail(args, &m, NULL), PE_TOO_LONG);
    /* labels up to 63 */
    snprintf(args, sizeof(args), "FROM:<a@%s.test>", label63);
    assert_int_equal(mail(args, &m, NULL), PE_OK);
    snprintf(args, sizeof(args), "FROM:<a@%s.test>", label64);
    assert_int_equal(mail(args, &m, NULL), PE_ADDRESS);
    /* domain of 255 octets is fine, 256 is too long */
    char dom[300];
    snprintf(dom, sizeof(dom), "%s.%s.%s.%s", label63, label63, label63, label63); /* 255 */
    assert_int_equal(strlen(dom), 255);
    snprintf(args, sizeof(args), "FROM:<a@%s>", dom);
    assert_int_equal(mail(args, &m, NULL), PE_OK);
    assert_int_equal(strlen(m.path), 257);
    snprintf(args, sizeof(args), "FROM:<ab@x%s>", dom); /* 256 */
    assert_int_equal(mail(args, &m, NULL), PE_TOO_LONG);
    /* longest mailbox: 64 + 1 + 255 = 320 = SMTP_PATH_MAX */
    snprintf(args, sizeof(args), "FROM:<%s@%s>", l64, dom);
    assert_int_equal(mail(args, &m, NULL), PE_OK);
    assert_int_equal(strlen(m.path), SMTP_PATH_MAX);
    /* the whole path (with a route) longer than SMTP_PATH_MAX */
    snprintf(args, sizeof(args), "FROM:<@relay.test:%s@%s>", l64, dom);
    assert_int_equal(mail(args, &m, NULL), PE_TOO_LONG);
    char huge[1200];
    memset(huge, 'a', sizeof(huge));
    snprintf(args, sizeof(args), "FROM:<%.*s@example.test>", 1000, huge);
    assert_int_equal(mail(args, &m, NULL), PE_TOO_LONG);
}

#define CYR "\xd0\xb6\xd0\xbe\xd1\x80\xd0\xb0" /* "жора" */

static void test_mail_utf8(void **state)
{
    (void)state;
    struct mail_args m;
    char d[128];
    assert_int_equal(mail("FROM:<" CYR "@carol.test>", &m, d), PE_UTF8_NEEDS_SMTPUTF8);
    assert_string_equal(m.path, "");
    assert_int_equal(mail("FROM:<" CYR "@carol.test> SMTPUTF8", &m, NULL), PE_OK);
    assert_string_equal(m.path, CYR "@carol.test");
    assert_int_equal(m.smtputf8, 1);
    /* the parameter may come anywhere in the list, in any case */
    assert_int_equal(mail("FROM:<" CYR "@carol.test> BODY=8BITMIME smtputf8", &m, NULL), PE_OK);
    /* U-labels in the domain */
    assert_int_equal(mail("FROM:<a@" CYR ".test> SMTPUTF8", &m, NULL), PE_OK);
    assert_int_equal(mail("FROM:<a@" CYR ".test>", &m, NULL), PE_UTF8_NEEDS_SMTPUTF8);
    assert_int_equal(mail("FROM:<\"" CYR " x\"@b.test> SMTPUTF8", &m, NULL), PE_OK);
    /* malformed UTF-8 is a bad address either way */
    assert_int_equal(mail("FROM:<\xd0@b.test> SMTPUTF8", &m, NULL), PE_ADDRESS);
    assert_int_equal(mail("FROM:<\xd0@b.test>", &m, NULL), PE_ADDRESS);
    assert_int_equal(mail("FROM:<\xc0\xaf@b.test> SMTPUTF8", &m, NULL), PE_ADDRESS);         /* overlong */
    assert_int_equal(mail("FROM:<\xed\xa0\x80@b.test> SMTPUTF8", &m, NULL), PE_ADDRESS);     /* surrogate */
    assert_int_equal(mail("FROM:<\xf4\x90\x80\x80@b.test> SMTPUTF8", &m, NULL), PE_ADDRESS); /* > U+10FFFF */
    assert_int_equal(mail("FROM:<a@b\xff.test> SMTPUTF8", &m, NULL), PE_ADDRESS);
    assert_int_equal(mail("FROM:<\xf0\x9f\x98\x80@b.test> SMTPUTF8", &m, NULL), PE_OK); /* 4-byte */
    /* an address that is bad for other reasons stays PE_ADDRESS */
    assert_int_equal(mail("FROM:<" CYR "@@b.test>", &m, NULL), PE_ADDRESS);
}

static void test_mail_params(void **state)
{
    (void)state;
    struct mail_args m;
    char d[128];
    assert_int_equal(mail("FROM:<a@b.c> SIZE=10240 BODY=8BITMIME RET=HDRS ENVID=x AUTH=<>", &m, NULL), PE_OK);
    assert_int_equal(m.has_size, 1);
    assert_int_equal(m.size, 10240);
    assert_int_equal(m.body, BODY_8BITMIME);
    assert_int_equal(m.ret, DSN_RET_HDRS);
    assert_string_equal(m.envid, "x");
    assert_string_equal(m.auth, "<>");
    /* several spaces between parameters, case-insensitive keywords and values */
    assert_int_equal(mail("FROM:<a@b.c>   size=0    body=7bit  ret=full", &m, NULL), PE_OK);
    assert_int_equal(m.has_size, 1);
    assert_int_equal(m.size, 0);
    assert_int_equal(m.body, BODY_7BIT);
    assert_int_equal(m.ret, DSN_RET_FULL);
    assert_int_equal(mail("FROM:<a@b.c> BODY=BINARYMIME", &m, NULL), PE_OK);
    assert_int_equal(m.body, BODY_BINARYMIME);
    /* SIZE */
    assert_int_equal(mail("FROM:<a@b.c> SIZE=18446744073709551615", &m, NULL), PE_OK);
    assert_true(m.size == UINT64_MAX);
    assert_int_equal(mail("FROM:<a@b.c> SIZE=18446744073709551616", &m, d), PE_PARAM_VALUE);
    assert_string_equal(d, "SIZE must be a number");
    assert_int_equal(mail("FROM:<a@b.c> SIZE=00000000000000000001", &m, NULL), PE_OK);
    assert_int_equal(m.size, 1);
    assert_int_equal(mail("FROM:<a@b.c> SIZE=000000000000000000001", &m, NULL), PE_PARAM_VALUE); /* 21 digits */
    assert_int_equal(mail("FROM:<a@b.c> SIZE=", &m, NULL), PE_PARAM_VALUE);
    assert_int_equal(mail("FROM:<a@b.c> SIZE", &m, NULL), PE_PARAM_VALUE);
    assert_int_equal(mail("FROM:<a@b.c> SIZE=12k", &m, NULL), PE_PARAM_VALUE);
    assert_int_equal(mail("FROM:<a@b.c> SIZE=-1", &m, NULL), PE_PARAM_VALUE);
    /* BODY / RET / SMTPUTF8 values */
    assert_int_equal(mail("FROM:<a@b.c> BODY=8BIT", &m, d), PE_PARAM_VALUE);
    assert_string_equal(d, "BODY must be 7BIT, 8BITMIME or BINARYMIME");
    assert_int_equal(mail("FROM:<a@b.c> BODY", &m, NULL), PE_PARAM_VALUE);
    assert_int_equal(mail("FROM:<a@b.c> RET=BOGUS", &m, d), PE_PARAM_VALUE);
    assert_string_equal(d, "RET must be FULL or HDRS");
    assert_int_equal(mail("FROM:<a@b.c> RET", &m, NULL), PE_PARAM_VALUE);
    assert_int_equal(mail("FROM:<a@b.c> SMTPUTF8=yes", &m, d), PE_PARAM_VALUE);
    assert_string_equal(d, "SMTPUTF8 takes no value");
    /* ENVID: xtext decoded */
    assert_int_equal(mail("FROM:<a@b.c> ENVID=abc+2Bdef", &m, NULL), PE_OK);
    assert_string_equal(m.envid, "abc+def");
    assert_int_equal(mail("FROM:<a@b.c> ENVID=a+3Db+20c", &m, NULL), PE_OK);
    assert_string_equal(m.envid, "a=b c");
    assert_int_equal(mail("FROM:<a@b.c> ENVID=abc+2bdef", &m, d), PE_PARAM_VALUE); /* lower-case hex */
    assert_string_equal(d, "ENVID must be xtext");
    assert_int_equal(mail("FROM:<a@b.c> ENVID=abc+2", &m, NULL), PE_PARAM_VALUE);
    assert_int_equal(mail("FROM:<a@b.c> ENVID=a=b", &m, NULL), PE_PARAM_VALUE);
    assert_int_equal(mail("FROM:<a@b.c> ENVID=", &m, NULL), PE_PARAM_VALUE);
    assert_int_equal(mail("FROM:<a@b.c> ENVID=a+00", &m, NULL), PE_PARAM_VALUE); /* NUL */
    assert_int_equal(mail("FROM:<a@b.c> ENVID=a+0A", &m, NULL), PE_PARAM_VALUE); /* control */
    assert_int_equal(mail("FROM:<a@b.c> ENVID=a+C3+A9", &m, NULL), PE_PARAM_VALUE); /* non-ASCII */
    assert_int_equal(mail("FROM:<a@b.c> ENVID=\xc3\xa9", &m, NULL), PE_PARAM_VALUE);
    char args[512], v[300];
    memset(v, 'e', SMTP_ENVID_MAX);
    v[SMTP_ENVID_MAX] = '\0';
    snprintf(args, sizeof(args), "FROM:<a@b.c> ENVID=%s", v);
    assert_int_equal(mail(args, &m, NULL), PE_OK);
    assert_int_equal(strlen(m.envid), SMTP_ENVID_MAX);
    snprintf(args, sizeof(args), "FROM:<a@b.c> ENVID=%se", v);
    assert_int_equal(mail(args, &m, d), PE_TOO_LONG);
    assert_string_equal(d, "ENVID value too long");
    /* 99 chars + one escape decoding to 100: fine */
    snprintf(args, sizeof(args), "FROM:<a@b.c> ENVID=%.99s+2B", v);
    assert_int_equal(mail(args, &m, NULL), PE_OK);
    assert_int_equal(strlen(m.envid), SMTP_ENVID_MAX);
    /* AUTH */
    assert_int_equal(mail("FROM:<a@b.c> AUTH=alice+2Bx@example.test", &m, NULL), PE_OK);
    assert_string_equal(m.auth, "alice+x@example.test");
    assert_int_equal(mail("FROM:<a@b.c> AUTH=", &m, NULL), PE_PARAM_VALUE);
    assert_int_equal(mail("FROM:<a@b.c> AUTH=a+zz", &m, NULL), PE_PARAM_VALUE);
    /* duplicates */
    assert_int_equal(mail("FROM:<a@b.c> SIZE=1 SIZE=1", &m, d), PE_PARAM_DUP);
    assert_string_equal(d, "SIZE given twice");
    assert_int_equal(mail("FROM:<a@b.c> body=7BIT BODY=7BIT", &m, NULL), PE_PARAM_DUP);
    assert_int_equal(mail("FROM:<a@b.c> SMTPUTF8 SMTPUTF8", &m, NULL), PE_PARAM_DUP);
    assert_int_equal(mail("FROM:<a@b.c> RET=FULL RET=HDRS", &m, NULL), PE_PARAM_DUP);
    assert_int_equal(mail("FROM:<a@b.c> ENVID=a ENVID=b", &m, NULL), PE_PARAM_DUP);
    assert_int_equal(mail("FROM:<a@b.c> AUTH=<> AUTH=<>", &m, NULL), PE_PARAM_DUP);
    /* unknown parameters, and RCPT-only ones */
    assert_int_equal(mail("FROM:<a@b.c> FOO=bar", &m, d), PE_PARAM_UNKNOWN);
    assert_string_equal(d, "unknown parameter FOO");
    assert_int_equal(mail("FROM:<a@b.c> X-Thing", &m, d), PE_PARAM_UNKNOWN);
    assert_string_equal(d, "unknown parameter X-Thing");
    assert_int_equal(mail("FROM:<a@b.c> NOTIFY=NEVER", &m, NULL), PE_PARAM_UNKNOWN);
    /* the first parameter error is reported */
    assert_int_equal(mail("FROM:<a@b.c> RET=X FOO=bar", &m, d), PE_PARAM_VALUE);
    assert_string_equal(d, "RET must be FULL or HDRS");
    /* an address error wins over a parameter error */
    assert_int_equal(mail("FROM:<a@@b.c> FOO=bar", &m, NULL), PE_ADDRESS);
}

static void test_rcpt(void **state)
{
    (void)state;
    struct rcpt_args r;
    char d[128];
    assert_int_equal(rcpt("TO:<bob@dest.test>", 0, &r, NULL), PE_OK);
    assert_string_equal(r.path, "bob@dest.test");
    assert_int_equal(r.notify, 0);
    assert_string_equal(r.orcpt, "");
    assert_int_equal(rcpt("to: <bob@dest.test>", 0, &r, NULL), PE_OK);
    assert_int_equal(rcpt("TO:<@a.test,@b.test:bob@dest.test>", 0, &r, NULL), PE_OK);
    assert_string_equal(r.path, "bob@dest.test");
    assert_int_equal(rcpt("TO:<bob@[192.0.2.1]>", 0, &r, NULL), PE_OK);
    /* syntax and address errors */
    assert_int_equal(rcpt("", 0, &r, d), PE_SYNTAX);
    assert_int_equal(rcpt("FROM:<bob@dest.test>", 0, &r, NULL), PE_SYNTAX);
    assert_int_equal(rcpt("TO:bob@dest.test", 0, &r, NULL), PE_SYNTAX);
    assert_int_equal(rcpt("TO:<bob@dest.test> junk=", 0, &r, NULL), PE_PARAM_UNKNOWN);
    assert_int_equal(rcpt("TO:<bob@dest.test>junk", 0, &r, NULL), PE_SYNTAX);
    assert_int_equal(rcpt("TO:<>", 0, &r, d), PE_ADDRESS);
    assert_string_equal(d, "bad recipient address");
    assert_int_equal(rcpt("TO:<@@>", 0, &r, NULL), PE_ADDRESS);
    assert_int_equal(rcpt("TO:<nobody@@bad>", 0, &r, NULL), PE_ADDRESS);
    assert_int_equal(rcpt("TO:<postmaster>", 0, &r, NULL), PE_ADDRESS);
    /* UTF-8 only when the transaction has SMTPUTF8 */
    assert_int_equal(rcpt("TO:<" CYR "@dest.test>", 0, &r, d), PE_UTF8_NEEDS_SMTPUTF8);
    assert_int_equal(rcpt("TO:<" CYR "@dest.test>", 1, &r, NULL), PE_OK);
    assert_string_equal(r.path, CYR "@dest.test");
    assert_int_equal(rcpt("TO:<\xd0\xd0@dest.test>", 1, &r, NULL), PE_ADDRESS);
    /* NOTIFY */
    assert_int_equal(rcpt("TO:<b@d.t> NOTIFY=SUCCESS,FAILURE", 0, &r, NULL), PE_OK);
    assert_int_equal(r.notify, DSN_NOTIFY_SUCCESS | DSN_NOTIFY_FAILURE);
    assert_int_equal(rcpt("TO:<b@d.t> notify=delay,success,failure", 0, &r, NULL), PE_OK);
    assert_int_equal(r.notify, DSN_NOTIFY_SUCCESS | DSN_NOTIFY_FAILURE | DSN_NOTIFY_DELAY);
    assert_int_equal(rcpt("TO:<b@d.t> NOTIFY=NEVER", 0, &r, NULL), PE_OK);
    assert_int_equal(r.notify, DSN_NOTIFY_NEVER);
    static const char *const bad_notify[] = {
        "NOTIFY=NEVER,SUCCESS", "NOTIFY=SUCCESS,NEVER", "NOTIFY=SUCCESS,SUCCESS", "NOTIFY=", "NOTIFY",
        "NOTIFY=SUCCESS,", "NOTIFY=,SUCCESS", "NOTIFY=SUCCESS,,FAILURE", "NOTIFY=ALWAYS", "NOTIFY=NEVER,NEVER",
    };
    for (size_t i = 0; i < sizeof(bad_notify) / sizeof(bad_notify[0]); i++) {
        char args[128];
        snprintf(args, sizeof(args), "TO:<b@d.t> %s", bad_notify[i]);
        enum path_err pe = rcpt(args, 0, &r, d);
        if (pe != PE_PARAM_VALUE)
            fail_msg("%s: got %d", args, (int)pe);
        assert_int_equal(r.notify, 0);
    }
    /* ORCPT */
    assert_int_equal(rcpt("TO:<b@d.t> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@b", 0, &r, NULL), PE_OK);
    assert_string_equal(r.orcpt, "rfc822;a@b");
    assert_int_equal(rcpt("TO:<b@d.t> ORCPT=rfc822;a+2Bb@c+3Dd", 0, &r, NULL), PE_OK);
    assert_string_equal(r.orcpt, "rfc822;a+b@c=d");
    assert_int_equal(rcpt("TO:<b@d.t> ORCPT=RFC822;a+D0+B6@b", 0, &r, NULL), PE_OK);
    assert_string_equal(r.orcpt, "RFC822;a\xd0\xb6@b");
    static const char *const bad_orcpt[] = {
        "ORCPT=", "ORCPT", "ORCPT=rfc822", "ORCPT=rfc822;", "ORCPT=;a@b", "ORCPT=rfc(822;a@b",
        "ORCPT=rfc822;a+2b", "ORCPT=rfc822;a+00", "ORCPT=rfc822;a+0D+0A", "ORCPT=rfc822;a=b", "ORCPT=rfc822;+D0",
    };
    for (size_t i = 0; i < sizeof(bad_orcpt) / sizeof(bad_orcpt[0]); i++) {
        char args[128];
        snprintf(args, sizeof(args), "TO:<b@d.t> %s", bad_orcpt[i]);
        enum path_err pe = rcpt(args, 0, &r, d);
        if (pe != PE_PARAM_VALUE)
            fail_msg("%s: got %d", args, (int)pe);
    }
    char args[1200], v[600];
    memset(v, 'o', sizeof(v));
    snprintf(args, sizeof(args), "TO:<b@d.t> ORCPT=rfc822;%.*s", SMTP_ORCPT_MAX - 7, v);
    assert_int_equal(rcpt(args, 0, &r, NULL), PE_OK);
    assert_int_equal(strlen(r.orcpt), SMTP_ORCPT_MAX);
    snprintf(args, sizeof(args), "TO:<b@d.t> ORCPT=rfc822;%.*s", SMTP_ORCPT_MAX - 6, v);
    assert_int_equal(rcpt(args, 0, &r, d), PE_TOO_LONG);
    assert_string_equal(d, "ORCPT value too long");
    /* duplicates, unknown, MAIL-only */
    assert_int_equal(rcpt("TO:<b@d.t> NOTIFY=NEVER NOTIFY=NEVER", 0, &r, d), PE_PARAM_DUP);
    assert_string_equal(d, "NOTIFY given twice");
    assert_int_equal(rcpt("TO:<b@d.t> ORCPT=rfc822;a@b ORCPT=rfc822;a@b", 0, &r, NULL), PE_PARAM_DUP);
    assert_int_equal(rcpt("TO:<b@d.t> FOO=bar", 0, &r, d), PE_PARAM_UNKNOWN);
    assert_string_equal(d, "unknown parameter FOO");
    assert_int_equal(rcpt("TO:<b@d.t> SIZE=10", 0, &r, NULL), PE_PARAM_UNKNOWN);
    /* lengths */
    char l65[66];
    memset(l65, 'l', 65), l65[65] = '\0';
    snprintf(args, sizeof(args), "TO:<%s@d.t>", l65);
    assert_int_equal(rcpt(args, 0, &r, d), PE_TOO_LONG);
    assert_string_equal(d, "recipient address too long");
}

/* ---- address helpers and xtext -------------------------------------------- */

static void test_address_helpers(void **state)
{
    (void)state;
    assert_true(smtp_address_valid("alice@example.test", 0));
    assert_true(smtp_address_valid("\"a b\"@example.test", 0));
    assert_true(smtp_address_valid("a@[192.0.2.1]", 0));
    assert_false(smtp_address_valid("", 0));
    assert_false(smtp_address_valid("alice", 0));
    assert_false(smtp_address_valid("<alice@example.test>", 0));
    assert_false(smtp_address_valid("@a:alice@example.test", 0));
    assert_false(smtp_address_valid("alice@@example.test", 0));
    assert_false(smtp_address_valid(CYR "@example.test", 0));
    assert_true(smtp_address_valid(CYR "@example.test", 1));
    assert_false(smtp_address_valid("\xff@example.test", 1));
    assert_false(smtp_address_valid(NULL, 1));

    assert_string_equal(smtp_address_domain("alice@example.test"), "example.test");
    assert_string_equal(smtp_address_domain("\"a@b\"@example.test"), "example.test");
    assert_string_equal(smtp_address_domain("\"a\\\"@b\"@c.test"), "c.test");
    assert_string_equal(smtp_address_domain("a@[192.0.2.1]"), "[192.0.2.1]");
    assert_null(smtp_address_domain("alice"));
    assert_null(smtp_address_domain("\"a@b\""));
    assert_null(smtp_address_domain(""));
    assert_null(smtp_address_domain(NULL));
}

static void test_xtext(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(xtext_decode("abc+2Bdef", 9, out, sizeof(out)), 7);
    assert_string_equal(out, "abc+def");
    assert_int_equal(xtext_decode("", 0, out, sizeof(out)), 0);
    assert_string_equal(out, "");
    assert_int_equal(xtext_decode("+2b", 3, out, sizeof(out)), -1);
    assert_int_equal(xtext_decode("+2", 2, out, sizeof(out)), -1);
    assert_int_equal(xtext_decode("+", 1, out, sizeof(out)), -1);
    assert_int_equal(xtext_decode("+GG", 3, out, sizeof(out)), -1);
    assert_int_equal(xtext_decode("a=b", 3, out, sizeof(out)), -1);
    assert_int_equal(xtext_decode("a b", 3, out, sizeof(out)), -1);
    assert_int_equal(xtext_decode("a\x7f", 2, out, sizeof(out)), -1);
    assert_int_equal(xtext_decode("\xc3\xa9", 2, out, sizeof(out)), -1);
    assert_int_equal(xtext_decode("+00", 3, out, sizeof(out)), -1);
    /* inlen bounds the input */
    assert_int_equal(xtext_decode("abcdef", 3, out, sizeof(out)), 3);
    assert_string_equal(out, "abc");
    /* out must hold the NUL */
    assert_int_equal(xtext_decode("abc", 3, out, 4), 3);
    assert_int_equal(xtext_decode("abc", 3, out, 3), -1);
    assert_int_equal(xtext_decode("", 0, out, 0), -1);

    /* encode: '+', '=', and bytes outside 33..126 */
    assert_int_equal(xtext_encode("a+b=c d\x01\xff~!", out, sizeof(out)), 21);
    assert_string_equal(out, "a+2Bb+3Dc+20d+01+FF~!");
    assert_int_equal(xtext_encode("", out, sizeof(out)), 0);
    assert_string_equal(out, "");
    /* truncation keeps whole units and returns the needed length */
    assert_int_equal(xtext_encode("ab+cd", out, 4), 7);
    assert_string_equal(out, "ab");
    assert_int_equal(xtext_encode("ab+cd", out, 6), 7);
    assert_string_equal(out, "ab+2B");
    assert_int_equal(xtext_encode("ab+cd", NULL, 0), 7);

    /* round trips over every byte value but NUL */
    char raw[256], enc[800], dec[256];
    for (int i = 1; i < 256; i++)
        raw[i - 1] = (char)i;
    raw[255] = '\0';
    size_t n = xtext_encode(raw, enc, sizeof(enc));
    assert_int_equal(n, strlen(enc));
    assert_int_equal(xtext_decode(enc, n, dec, sizeof(dec)), 255);
    assert_memory_equal(dec, raw, 256);
    const char *samples[] = {"rfc822;alice@example.test", "a+b=c", "+++===", " x ", "\xd0\xb6@x"};
    for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
        n = xtext_encode(samples[i], enc, sizeof(enc));
        assert_int_equal(xtext_decode(enc, n, dec, sizeof(dec)), (int)strlen(samples[i]));
        assert_string_equal(dec, samples[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_line_basic),
        cmocka_unit_test(test_line_limit),
        cmocka_unit_test(test_line_session),
        cmocka_unit_test(test_cmd_verbs),
        cmocka_unit_test(test_cmd_args_and_errors),
        cmocka_unit_test(test_mail_syntax),
        cmocka_unit_test(test_mail_addresses),
        cmocka_unit_test(test_mail_lengths),
        cmocka_unit_test(test_mail_utf8),
        cmocka_unit_test(test_mail_params),
        cmocka_unit_test(test_rcpt),
        cmocka_unit_test(test_address_helpers),
        cmocka_unit_test(test_xtext),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
