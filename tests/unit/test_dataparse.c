/* Unit tests for smtp/dataparse.c: the DATA parser (normal messages,
 * dot-unstuffing, empty message, every SMTP-smuggling fake ending at every
 * split point, line limits 1000/1001, size limit, sink failure, end
 * detection with pipelined bytes after it), the BDAT checker (CRLF split
 * across chunks, finish rules), the header scanner (folded / multiple
 * From, missing Date / Message-ID, malformed lines, limit, every split)
 * and the RFC 5322 address-list parser. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp/dataparse.h"

/* ---- a sink collecting what the parser emits -------------------------- */

struct sinkbuf {
    char *b;
    size_t len, cap;
    int calls;
    int fail_at; /* return an error on this call (1-based); 0 never */
};

static int sink(void *arg, const char *buf, size_t n)
{
    struct sinkbuf *s = arg;
    assert_true(n > 0);
    s->calls++;
    if (s->len + n + 1 > s->cap) {
        s->cap = (s->len + n + 1) * 2;
        s->b = realloc(s->b, s->cap);
        assert_non_null(s->b);
    }
    memcpy(s->b + s->len, buf, n);
    s->len += n;
    s->b[s->len] = '\0';
    return s->fail_at && s->calls >= s->fail_at ? -1 : 0;
}

static void sink_reset(struct sinkbuf *s)
{
    free(s->b);
    memset(s, 0, sizeof(*s));
}

/* ---- DATA ------------------------------------------------------------------ */

struct dres {
    int done;
    size_t consumed; /* total, over all pieces */
    enum dp_flag flag;
    uint64_t size;
    int sink_failed;
    struct sinkbuf out;
};

/* Feeds in[0..len) cut at the given offsets (ascending), each piece in its
 * own allocation so ASan sees any read past a piece. Stops at DP_DONE. */
static void data_run(const char *in, size_t len, size_t max_line, uint64_t max_size, const size_t *cuts,
                     size_t ncuts, struct dres *r)
{
    struct data_parser p;
    memset(r, 0, sizeof(*r));
    data_parser_init(&p, max_line, max_size, sink, &r->out);
    size_t at = 0;
    for (size_t k = 0; k <= ncuts && !r->done; k++) {
        size_t end = k < ncuts ? cuts[k] : len;
        size_t n = end - at;
        char *piece = malloc(n ? n : 1);
        memcpy(piece, in + at, n);
        size_t c = 12345;
        enum dp_res res = data_parser_feed(&p, piece, n, &c);
        free(piece);
        if (res == DP_DONE) {
            assert_true(c <= n);
            r->done = 1;
            r->consumed = at + c;
        } else {
            assert_int_equal(res, DP_NEED_MORE);
            assert_int_equal(c, n);
            r->consumed = at + n;
        }
        at = end;
    }
    r->flag = p.flag;
    r->size = p.size;
    r->sink_failed = p.sink_failed;
    assert_int_equal(p.size, r->out.len); /* no size limit hit in these runs */
}

static void dres_same(const struct dres *a, const struct dres *b)
{
    assert_int_equal(a->done, b->done);
    assert_int_equal(a->consumed, b->consumed);
    assert_int_equal(a->flag, b->flag);
    assert_int_equal(a->size, b->size);
    assert_int_equal(a->out.len, b->out.len);
    if (a->out.len)
        assert_memory_equal(a->out.b, b->out.b, a->out.len);
}

/* Runs in whole, cut at every single point, byte by byte and (when short)
 * cut at every pair of points; all must agree with the whole run, which
 * must match the expectation. want_out NULL: don't check the output. */
static void data_check(const char *in, size_t len, int want_done, size_t want_consumed, enum dp_flag want_flag,
                       const char *want_out, size_t want_out_len)
{
    struct dres whole, r;
    data_run(in, len, 1000, 1000000, NULL, 0, &whole);
    assert_int_equal(whole.done, want_done);
    if (want_done)
        assert_int_equal(whole.consumed, want_consumed);
    assert_int_equal(whole.flag, want_flag);
    if (want_out) {
        assert_int_equal(whole.out.len, want_out_len);
        if (want_out_len)
            assert_memory_equal(whole.out.b, want_out, want_out_len);
    }
    for (size_t i = 0; i <= len; i++) {
        data_run(in, len, 1000, 1000000, &i, 1, &r);
        dres_same(&whole, &r);
        sink_reset(&r.out);
    }
    size_t *cuts = calloc(len + 1, sizeof(*cuts));
    for (size_t i = 0; i < len; i++)
        cuts[i] = i + 1;
    data_run(in, len, 1000, 1000000, cuts, len ? len - 1 : 0, &r);
    dres_same(&whole, &r);
    sink_reset(&r.out);
    free(cuts);
    if (len <= 160) {
        for (size_t i = 0; i <= len; i++) {
            for (size_t j = i; j <= len; j++) {
                size_t two[2] = {i, j};
                data_run(in, len, 1000, 1000000, two, 2, &r);
                dres_same(&whole, &r);
                sink_reset(&r.out);
            }
        }
    }
    sink_reset(&whole.out);
}

#define S(lit) lit, sizeof(lit) - 1

static void test_data_normal(void **state)
{
    (void)state;
    const char msg[] = "From: <a@x.test>\r\nSubject: s\r\n\r\nbody\r\nmore\r\n.\r\n";
    data_check(S(msg), 1, sizeof(msg) - 1, DP_FLAG_NONE, S("From: <a@x.test>\r\nSubject: s\r\n\r\nbody\r\nmore\r\n"));
    /* dot-unstuffing: only the first dot of a line goes */
    const char st[] = "..a\r\n..\r\n.b\r\n...\r\nx.y\r\n. \r\n.\r\n";
    data_check(S(st), 1, sizeof(st) - 1, DP_FLAG_NONE, S(".a\r\n.\r\nb\r\n..\r\nx.y\r\n \r\n"));
    /* empty message, with and without pipelined commands after it */
    data_check(S(".\r\n"), 1, 3, DP_FLAG_NONE, "", 0);
    data_check(S(".\r\nQUIT\r\n"), 1, 3, DP_FLAG_NONE, "", 0);
    /* a message of one empty line: its CRLF is content */
    data_check(S("\r\n.\r\n"), 1, 5, DP_FLAG_NONE, S("\r\n"));
    /* the end right after a stuffed line, then pipelined commands */
    const char pl[] = "..\r\n.\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n";
    data_check(S(pl), 1, 7, DP_FLAG_NONE, S(".\r\n"));
    /* ".." + CRLF.CRLF inside a line is not an end */
    data_check(S("a.\r\n.a\r\n.\r\n"), 1, 11, DP_FLAG_NONE, S("a.\r\na\r\n"));
    /* no end yet */
    data_check(S("hello\r\n.\r"), 0, 0, DP_FLAG_NONE, S("hello\r\n"));
    data_check(S("hello\r\n."), 0, 0, DP_FLAG_NONE, S("hello\r\n"));
    data_check(S("hello\r\n"), 0, 0, DP_FLAG_NONE, S("hello\r\n"));
    data_check(S(""), 0, 0, DP_FLAG_NONE, "", 0);
    /* ". CR CR LF": a stuffed line with a bare CR; the real end follows */
    data_check(S(".\r\r\n.\r\n"), 1, 7, DP_BARE_CR, S("\r\r\n"));
    /* the first flag is kept */
    data_check(S("a\nb\rc\r\n.\r\n"), 1, 10, DP_BARE_LF, NULL, 0);
    data_check(S("a\rb\nc\r\n.\r\n"), 1, 10, DP_BARE_CR, NULL, 0);
}

static void test_data_smuggling(void **state)
{
    (void)state;
    static const struct {
        const char *end;
        enum dp_flag flag;
    } ends[] = {
        {"\n.\n", DP_BARE_LF},   {"\r\n.\n", DP_BARE_LF}, {"\n.\r\n", DP_BARE_LF},
        {"\r.\r", DP_BARE_CR},   {"\r\n.\r", DP_BARE_CR}, {"\r.\r\n", DP_BARE_CR},
        {"\n.\r", DP_BARE_LF},   {"\r.\n", DP_BARE_CR},   {"\n\r.\r\n", DP_BARE_LF},
        {"\r\r\n.\n", DP_BARE_CR},
    };
    const char head[] = "From: <a@x.test>\r\nSubject: carrier\r\n\r\nhello";
    const char smug[] = "MAIL FROM:<a@x.test>\r\nRCPT TO:<v@d.test>\r\nDATA\r\nsmuggled\r\n";
    const char tail[] = ".\r\nQUIT\r\n";
    for (size_t k = 0; k < sizeof(ends) / sizeof(ends[0]); k++) {
        char in[512];
        int n = snprintf(in, sizeof(in), "%s%s%s%s", head, ends[k].end, smug, tail);
        size_t len = (size_t)n;
        /* the one real end is the ".\r\n" before QUIT */
        size_t want = len - strlen("QUIT\r\n");
        data_check(in, len, 1, want, ends[k].flag, NULL, 0);
        /* without the real end: never done, at any split */
        data_check(in, len - strlen(tail), 0, 0, ends[k].flag, NULL, 0);
        /* the fake end and one more byte, as the whole remaining stream */
        n = snprintf(in, sizeof(in), "%s%sX", head, ends[k].end);
        data_check(in, (size_t)n, 0, 0, ends[k].flag, NULL, 0);
    }
    /* fake ends at the very start of the data */
    data_check(S(".\n"), 0, 0, DP_BARE_LF, NULL, 0);
    data_check(S(".\r"), 0, 0, DP_FLAG_NONE, NULL, 0); /* could still become .CRLF */
    data_check(S(".\rX"), 0, 0, DP_BARE_CR, S("\rX"));
    data_check(S("\n.\n"), 0, 0, DP_BARE_LF, NULL, 0);
    data_check(S("\r.\r\n"), 0, 0, DP_BARE_CR, NULL, 0);
}

static void test_data_line_limit(void **state)
{
    (void)state;
    struct dres r;
    static char in[3000];
    /* 998 + CRLF = 1000: fine */
    memset(in, 'x', 998);
    memcpy(in + 998, "\r\n.\r\n", 5);
    data_run(in, 1003, 1000, 1000000, NULL, 0, &r);
    assert_int_equal(r.done, 1);
    assert_int_equal(r.flag, DP_FLAG_NONE);
    assert_int_equal(r.out.len, 1000);
    sink_reset(&r.out);
    /* 999 + CRLF = 1001: too long, still ends properly */
    memset(in, 'x', 999);
    memcpy(in + 999, "\r\n.\r\n", 5);
    data_run(in, 1004, 1000, 1000000, NULL, 0, &r);
    assert_int_equal(r.done, 1);
    assert_int_equal(r.consumed, 1004);
    assert_int_equal(r.flag, DP_LINE_TOO_LONG);
    sink_reset(&r.out);
    /* the stuffing dot does not count */
    in[0] = '.';
    memset(in + 1, 'x', 998);
    memcpy(in + 999, "\r\n.\r\n", 5);
    data_run(in, 1004, 1000, 1000000, NULL, 0, &r);
    assert_int_equal(r.flag, DP_FLAG_NONE);
    assert_int_equal(r.out.len, 1000);
    sink_reset(&r.out);
    in[0] = '.';
    memset(in + 1, 'x', 999);
    memcpy(in + 1000, "\r\n.\r\n", 5);
    data_run(in, 1005, 1000, 1000000, NULL, 0, &r);
    assert_int_equal(r.flag, DP_LINE_TOO_LONG);
    sink_reset(&r.out);
    /* the limit applies per line: many 998-octet lines are fine, split anywhere */
    size_t len = 0;
    for (int l = 0; l < 2; l++) {
        memset(in + len, 'y', 998);
        memcpy(in + len + 998, "\r\n", 2);
        len += 1000;
    }
    memcpy(in + len, ".\r\n", 3);
    len += 3;
    for (size_t cut = 0; cut <= len; cut++) {
        data_run(in, len, 1000, 1000000, &cut, 1, &r);
        assert_int_equal(r.done, 1);
        assert_int_equal(r.flag, DP_FLAG_NONE);
        sink_reset(&r.out);
    }
    /* 999 in the second line, split anywhere */
    in[1998] = 'y';
    memcpy(in + 1999, "\r\n.\r\n", 5);
    len = 2004;
    for (size_t cut = 0; cut <= len; cut++) {
        data_run(in, len, 1000, 1000000, &cut, 1, &r);
        assert_int_equal(r.done, 1);
        assert_int_equal(r.consumed, len);
        assert_int_equal(r.flag, DP_LINE_TOO_LONG);
        sink_reset(&r.out);
    }
}

static void test_data_size_limit(void **state)
{
    (void)state;
    const char msg[] = "0123456789abc\r\n.\r\nNOOP\r\n";
    for (size_t cut = 0; cut < sizeof(msg); cut++) {
        struct data_parser p;
        struct sinkbuf out = {0};
        data_parser_init(&p, 1000, 10, sink, &out);
        size_t c1 = 0, c2 = 0;
        enum dp_res r1 = data_parser_feed(&p, msg, cut, &c1);
        enum dp_res r2 = r1 == DP_DONE ? DP_DONE : data_parser_feed(&p, msg + cut, sizeof(msg) - 1 - cut, &c2);
        assert_int_equal(r2, DP_DONE);
        assert_int_equal(c1 + c2, 18);
        assert_int_equal(p.flag, DP_TOO_BIG);
        assert_int_equal(p.size, 15);
        assert_int_equal(out.len, 10); /* nothing past max_size reaches the sink */
        assert_memory_equal(out.b, "0123456789", 10);
        sink_reset(&out);
    }
    /* exactly max_size is fine */
    struct data_parser p;
    struct sinkbuf out = {0};
    size_t c = 0;
    data_parser_init(&p, 1000, 5, sink, &out);
    assert_int_equal(data_parser_feed(&p, S("abc\r\n.\r\n"), &c), DP_DONE);
    assert_int_equal(p.flag, DP_FLAG_NONE);
    assert_int_equal(p.size, 5);
    sink_reset(&out);
}

/* The first flag is the one whose cause comes first in the stream, however
 * the stream is cut (size vs bare LF vs line length in one run). */
static void flag_order_check(const char *in, size_t len, size_t max_line, uint64_t max_size, enum dp_flag want)
{
    for (size_t i = 0; i <= len; i++) {
        for (size_t j = i; j <= len; j++) {
            size_t cuts[2] = {i, j};
            struct data_parser p;
            struct sinkbuf out = {0};
            data_parser_init(&p, max_line, max_size, sink, &out);
            size_t at = 0, c = 0;
            for (int k = 0; k < 3; k++) {
                size_t end = k < 2 ? cuts[k] : len;
                if (data_parser_feed(&p, in + at, end - at, &c) == DP_DONE)
                    break;
                at = end;
            }
            assert_int_equal(p.flag, want);
            assert_true(out.len <= max_size);
            sink_reset(&out);
        }
    }
    struct bdat_checker b;
    for (size_t i = 0; i <= len; i++) {
        bdat_checker_init(&b, max_line, max_size, NULL, NULL);
        bdat_checker_feed(&b, in, i);
        bdat_checker_feed(&b, in + i, len - i);
        assert_int_equal(b.flag, want);
    }
}

static void test_data_flag_order(void **state)
{
    (void)state;
    flag_order_check(S("abcdef\nx\r\n.\r\n"), 1000, 3, DP_TOO_BIG);
    flag_order_check(S("ab\ncdef\r\n.\r\n"), 1000, 5, DP_BARE_LF);
    flag_order_check(S("ab\rcdef\r\n.\r\n"), 1000, 3, DP_BARE_CR);
    flag_order_check(S("ab\rcdef\r\n.\r\n"), 1000, 2, DP_TOO_BIG);
    flag_order_check(S("abcdefgh\r\n.\r\n"), 6, 5, DP_LINE_TOO_LONG); /* line crossed at 'e' */
    flag_order_check(S("abcdefgh\r\n.\r\n"), 6, 4, DP_TOO_BIG);       /* size crossed at 'e' too: tie */
    flag_order_check(S("abcdefgh\r\n.\r\n"), 6, 3, DP_TOO_BIG);
    flag_order_check(S("abc\r\nde\nfghij\r\n.\r\n"), 6, 1000, DP_BARE_LF);
    flag_order_check(S("abc\r\ndefgh\nij\r\n.\r\n"), 6, 1000, DP_LINE_TOO_LONG);
}

static void test_data_sink_and_runs(void **state)
{
    (void)state;
    struct data_parser p;
    struct sinkbuf out = {0};
    size_t c = 0;
    /* a sink error stops the calls but not the parsing */
    out.fail_at = 1;
    data_parser_init(&p, 1000, 1000000, sink, &out);
    assert_int_equal(data_parser_feed(&p, S("..a\r\n"), &c), DP_NEED_MORE);
    assert_int_equal(p.sink_failed, 1);
    assert_int_equal(out.calls, 1);
    assert_int_equal(data_parser_feed(&p, S("..b\r\nc\r\n"), &c), DP_NEED_MORE);
    assert_int_equal(data_parser_feed(&p, S(".\r\nRSET\r\n"), &c), DP_DONE);
    assert_int_equal(c, 3);
    assert_int_equal(out.calls, 1);
    assert_int_equal(p.size, 11); /* ".a\r\n" ".b\r\n" "c\r\n" */
    assert_int_equal(p.flag, DP_FLAG_NONE);
    /* after the end: nothing more is consumed */
    assert_int_equal(data_parser_feed(&p, S("more\r\n"), &c), DP_DONE);
    assert_int_equal(c, 0);
    sink_reset(&out);
    /* runs: 200 plain lines in one buffer reach the sink in one call */
    char *in = malloc(200 * 20 + 3);
    size_t len = 0;
    for (int i = 0; i < 200; i++)
        len += (size_t)sprintf(in + len, "line number %5d\r\n", i);
    memcpy(in + len, ".\r\n", 3);
    data_parser_init(&p, 1000, 1000000, sink, &out);
    assert_int_equal(data_parser_feed(&p, in, len + 3, &c), DP_DONE);
    assert_int_equal(c, len + 3);
    assert_int_equal(out.calls, 1);
    assert_int_equal(out.len, len);
    sink_reset(&out);
    free(in);
    /* no sink at all is fine */
    data_parser_init(&p, 1000, 1000000, NULL, NULL);
    assert_int_equal(data_parser_feed(&p, S("x\r\n.\r\n"), &c), DP_DONE);
    assert_int_equal(p.size, 3);
}

/* ---- BDAT ------------------------------------------------------------------ */

static enum dp_flag bdat_run(const char *in, size_t len, const size_t *cuts, size_t ncuts, size_t max_line,
                             uint64_t max_size, struct sinkbuf *out, uint64_t *size)
{
    struct bdat_checker c;
    bdat_checker_init(&c, max_line, max_size, sink, out);
    size_t at = 0;
    for (size_t k = 0; k <= ncuts; k++) {
        size_t end = k < ncuts ? cuts[k] : len;
        char *piece = malloc(end - at ? end - at : 1);
        memcpy(piece, in + at, end - at);
        bdat_checker_feed(&c, piece, end - at);
        free(piece);
        at = end;
    }
    enum dp_flag f = bdat_checker_finish(&c);
    assert_int_equal(f, c.flag);
    *size = c.size;
    /* finish is idempotent */
    assert_int_equal(bdat_checker_finish(&c), f);
    assert_int_equal(c.size, *size);
    return f;
}

static void bdat_check(const char *in, size_t len, enum dp_flag want, const char *want_out, size_t want_len)
{
    for (size_t i = 0; i <= len; i++) {
        for (size_t j = i; j <= len; j++) {
            size_t cuts[2] = {i, j};
            struct sinkbuf out = {0};
            uint64_t size = 0;
            assert_int_equal(bdat_run(in, len, cuts, 2, 1000, 1000000, &out, &size), want);
            assert_int_equal(out.len, want_len);
            assert_int_equal(size, want_len);
            if (want_len)
                assert_memory_equal(out.b, want_out, want_len);
            sink_reset(&out);
        }
    }
}

static void test_bdat(void **state)
{
    (void)state;
    /* CRLF split across chunks, dots are plain content */
    bdat_check(S("Subject: x\r\n\r\n.dot\r\n..\r\n.\r\nend\r\n"), DP_FLAG_NONE,
               S("Subject: x\r\n\r\n.dot\r\n..\r\n.\r\nend\r\n"));
    bdat_check(S(""), DP_FLAG_NONE, "", 0);
    bdat_check(S("\r\n"), DP_FLAG_NONE, S("\r\n"));
    /* an unterminated last line gets its CRLF */
    bdat_check(S("abc"), DP_FLAG_NONE, S("abc\r\n"));
    bdat_check(S("a\r\nbc"), DP_FLAG_NONE, S("a\r\nbc\r\n"));
    /* bare CR / LF, also as the very last octet */
    bdat_check(S("abc\r"), DP_BARE_CR, S("abc\r\r\n"));
    bdat_check(S("\r"), DP_BARE_CR, S("\r\r\n"));
    bdat_check(S("a\rb\r\n"), DP_BARE_CR, S("a\rb\r\n"));
    bdat_check(S("a\nb\r\n"), DP_BARE_LF, S("a\nb\r\n"));
    bdat_check(S("bare\nlf\r\n"), DP_BARE_LF, S("bare\nlf\r\n"));
    bdat_check(S("x\r\n\n"), DP_BARE_LF, S("x\r\n\n\r\n"));
    bdat_check(S("a\r\r\n"), DP_BARE_CR, S("a\r\r\n"));
    /* line limit */
    static char in[1100];
    struct sinkbuf out = {0};
    uint64_t size;
    memset(in, 'x', 998);
    memcpy(in + 998, "\r\n", 2);
    assert_int_equal(bdat_run(in, 1000, NULL, 0, 1000, 1000000, &out, &size), DP_FLAG_NONE);
    sink_reset(&out);
    size_t cut = 999; /* between CR and LF */
    assert_int_equal(bdat_run(in, 1000, &cut, 1, 1000, 1000000, &out, &size), DP_FLAG_NONE);
    sink_reset(&out);
    memset(in, 'x', 999);
    memcpy(in + 999, "\r\n", 2);
    assert_int_equal(bdat_run(in, 1001, NULL, 0, 1000, 1000000, &out, &size), DP_LINE_TOO_LONG);
    sink_reset(&out);
    /* 998 unterminated: the added CRLF makes 1000, fine; 999 is not */
    assert_int_equal(bdat_run(in, 998, NULL, 0, 1000, 1000000, &out, &size), DP_FLAG_NONE);
    assert_int_equal(size, 1000);
    sink_reset(&out);
    assert_int_equal(bdat_run(in, 999, NULL, 0, 1000, 1000000, &out, &size), DP_LINE_TOO_LONG);
    sink_reset(&out);
    /* size limit */
    assert_int_equal(bdat_run(S("abcdef\r\n"), NULL, 0, 1000, 5, &out, &size), DP_TOO_BIG);
    assert_int_equal(size, 8);
    assert_int_equal(out.len, 5);
    assert_memory_equal(out.b, "abcde", 5);
    sink_reset(&out);
    assert_int_equal(bdat_run(S("abc\r\n"), NULL, 0, 1000, 5, &out, &size), DP_FLAG_NONE);
    sink_reset(&out);
    /* the CRLF added at the end counts against the size */
    assert_int_equal(bdat_run(S("abcd"), NULL, 0, 1000, 5, &out, &size), DP_TOO_BIG);
    assert_int_equal(size, 6);
    sink_reset(&out);
    /* sink failure */
    struct bdat_checker c;
    out.fail_at = 2;
    bdat_checker_init(&c, 1000, 100, sink, &out);
    bdat_checker_feed(&c, S("ab\r\n"));
    assert_int_equal(c.sink_failed, 0);
    bdat_checker_feed(&c, S("cd\r\n"));
    assert_int_equal(c.sink_failed, 1);
    bdat_checker_feed(&c, S("ef\r\n"));
    assert_int_equal(out.calls, 2);
    assert_int_equal(c.size, 12);
    assert_int_equal(bdat_checker_finish(&c), DP_FLAG_NONE);
    sink_reset(&out);
}

/* ---- header scanner ---------------------------------------------------------- */

static void hs_run(const char *in, size_t len, size_t max_header, const size_t *cuts, size_t ncuts,
                   struct header_scan *h)
{
    header_scan_init(h, max_header);
    size_t at = 0;
    for (size_t k = 0; k <= ncuts; k++) {
        size_t end = k < ncuts ? cuts[k] : len;
        char *piece = malloc(end - at ? end - at : 1);
        memcpy(piece, in + at, end - at);
        header_scan_feed(h, piece, end - at);
        free(piece);
        at = end;
    }
    header_scan_finish(h);
}

static void hs_same(const struct header_scan *a, const struct header_scan *b)
{
    assert_int_equal(a->done, b->done);
    assert_int_equal(a->header_end, b->header_end);
    assert_int_equal(a->has_message_id, b->has_message_id);
    assert_int_equal(a->has_date, b->has_date);
    assert_int_equal(a->from_count, b->from_count);
    assert_string_equal(a->from, b->from);
    assert_int_equal(a->from_truncated, b->from_truncated);
    assert_int_equal(a->malformed, b->malformed);
}

/* Scans whole (result in *h), then at every split and byte by byte. */
static void hs_check(const char *in, size_t len, size_t max_header, struct header_scan *h)
{
    struct header_scan r;
    hs_run(in, len, max_header, NULL, 0, h);
    assert_int_equal(h->done, 1);
    for (size_t i = 0; i <= len; i++) {
        hs_run(in, len, max_header, &i, 1, &r);
        hs_same(h, &r);
    }
    size_t *cuts = calloc(len + 1, sizeof(*cuts));
    for (size_t i = 0; i < len; i++)
        cuts[i] = i + 1;
    hs_run(in, len, max_header, cuts, len ? len - 1 : 0, &r);
    hs_same(h, &r);
    free(cuts);
}

static void test_headers_basic(void **state)
{
    (void)state;
    struct header_scan h;
    const char m1[] = "From: Alice <a@x.test>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                      "Message-ID: <1@x.test>\r\n\r\nFrom: body@x.test\r\n";
    hs_check(S(m1), 65536, &h);
    assert_int_equal(h.header_end, strstr(m1, "\r\n\r\n") - m1 + 4);
    assert_int_equal(h.from_count, 1);
    assert_string_equal(h.from, "Alice <a@x.test>");
    assert_int_equal(h.has_date, 1);
    assert_int_equal(h.has_message_id, 1);
    assert_int_equal(h.malformed, 0);
    assert_int_equal(h.from_truncated, 0);
    /* done as soon as the blank line is seen, before finish */
    header_scan_init(&h, 65536);
    header_scan_feed(&h, m1, strstr(m1, "\r\n\r\n") - m1 + 4);
    assert_int_equal(h.done, 1);
    /* missing Date and Message-ID; case-insensitive names; Resent-From is not From */
    const char m2[] = "Resent-From: r@x.test\r\nfrom:   b@x.test  \r\nSUBJECT: hi\r\nmessage-id:<x@y>\r\n\r\n";
    hs_check(S(m2), 65536, &h);
    assert_int_equal(h.from_count, 1);
    assert_string_equal(h.from, "b@x.test");
    assert_int_equal(h.has_date, 0);
    assert_int_equal(h.has_message_id, 1);
    const char m3[] = "Subject: nothing\r\n\r\n";
    hs_check(S(m3), 65536, &h);
    assert_int_equal(h.from_count, 0);
    assert_string_equal(h.from, "");
    assert_int_equal(h.has_date, 0);
    assert_int_equal(h.has_message_id, 0);
    /* a message starting with CRLF has an empty header section */
    hs_check(S("\r\nFrom: a@x\r\n"), 65536, &h);
    assert_int_equal(h.header_end, 2);
    assert_int_equal(h.from_count, 0);
    /* no blank line at all: the header section is the whole message */
    hs_check(S("From: a@x.test\r\nDate: x\r\n"), 65536, &h);
    assert_int_equal(h.header_end, 25);
    assert_string_equal(h.from, "a@x.test");
    assert_int_equal(h.has_date, 1);
    hs_check(S("From: a@x.test"), 65536, &h);
    assert_int_equal(h.header_end, 14);
    assert_string_equal(h.from, "a@x.test");
    hs_check(S(""), 65536, &h);
    assert_int_equal(h.header_end, 0);
    /* obs-syntax: WSP between name and colon */
    hs_check(S("From : a@x.test\r\nDate\t: d\r\n\r\n"), 65536, &h);
    assert_int_equal(h.from_count, 1);
    assert_string_equal(h.from, "a@x.test");
    assert_int_equal(h.has_date, 1);
    /* an empty From: value */
    hs_check(S("From:\r\n\r\n"), 65536, &h);
    assert_int_equal(h.from_count, 1);
    assert_string_equal(h.from, "");
}

static void test_headers_from(void **state)
{
    (void)state;
    struct header_scan h;
    /* folded From: CRLF removed, the continuation's WSP kept, trimmed */
    hs_check(S("Subject: s\r\nFrom: \"Alice\r\n A.\"\r\n\t<a@x.test>  \r\nDate: d\r\n\r\n"), 65536, &h);
    assert_string_equal(h.from, "\"Alice A.\"\t<a@x.test>");
    assert_int_equal(h.from_count, 1);
    hs_check(S("From:\r\n   <a@x.test>\r\n\r\n"), 65536, &h);
    assert_string_equal(h.from, "<a@x.test>");
    /* several From: fields: counted, the first one kept */
    hs_check(S("From: <a@x.test>\r\nSubject: s\r\nFrom: <b@y.test>\r\n continued\r\n\r\n"), 65536, &h);
    assert_int_equal(h.from_count, 2);
    assert_string_equal(h.from, "<a@x.test>");
    /* a From: that does not fit */
    size_t n = HS_FROM_MAX + 100;
    char *big = malloc(n + 20);
    memcpy(big, "From: ", 6);
    memset(big + 6, 'f', n);
    memcpy(big + 6 + n, "\r\n\r\n", 4);
    hs_run(big, n + 10, 1 << 20, NULL, 0, &h);
    assert_int_equal(h.from_truncated, 1);
    assert_int_equal(strlen(h.from), HS_FROM_MAX - 1);
    assert_int_equal(h.header_end, n + 10);
    /* exactly fitting */
    memcpy(big + 6 + HS_FROM_MAX - 1, "\r\n\r\n", 4);
    hs_run(big, 6 + HS_FROM_MAX - 1 + 4, 1 << 20, NULL, 0, &h);
    assert_int_equal(h.from_truncated, 0);
    assert_int_equal(strlen(h.from), HS_FROM_MAX - 1);
    free(big);
    /* a NUL in From: never shortens the value */
    hs_run(S("From: <a@x.test>\0<b@y.test>\r\n\r\n"), 65536, NULL, 0, &h);
    assert_int_equal(strlen(h.from), 21);
    assert_int_equal(h.from[10], 0x7f);
}

static void test_headers_malformed_and_limit(void **state)
{
    (void)state;
    struct header_scan h;
    const char m1[] = "From: a@x.test\r\nthis is not a header\r\nDate: d\r\n\r\n";
    hs_check(S(m1), 65536, &h);
    assert_int_equal(h.malformed, 1);
    assert_int_equal(h.header_end, 16); /* the start of the bad line */
    assert_int_equal(h.has_date, 0);
    assert_string_equal(h.from, "a@x.test");
    /* a continuation with nothing before it */
    hs_check(S(" x\r\nFrom: a@x\r\n\r\n"), 65536, &h);
    assert_int_equal(h.malformed, 1);
    assert_int_equal(h.header_end, 0);
    assert_int_equal(h.from_count, 0);
    /* other broken lines */
    static const char *const bad[] = {
        "A: b\r\n:x\r\n\r\n", "A: b\r\n\xd0\xb6: x\r\n\r\n", "A: b\r\nNo colon\r\n\r\n", "A: b\r\nName\r\n\r\n",
        "A: b\r\nNa\x01me: x\r\n\r\n", "A: b\r\n\rX\r\n\r\n", "A: b\r\nA b: c\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        hs_check(bad[i], strlen(bad[i]), 65536, &h);
        assert_int_equal(h.malformed, 1);
        assert_int_equal(h.header_end, 6);
    }
    /* the limit */
    const char m2[] = "Subject: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\nFrom: a@x.test\r\nDate: d\r\n\r\n";
    hs_check(S(m2), 20, &h);
    assert_int_equal(h.done, 1);
    assert_int_equal(h.header_end, 20);
    assert_int_equal(h.from_count, 0);
    assert_int_equal(h.malformed, 0);
    /* a From: cut by the limit is marked truncated */
    size_t from_at = (size_t)(strstr(m2, "From:") - m2);
    hs_check(S(m2), from_at + 8, &h);
    assert_int_equal(h.from_count, 1);
    assert_int_equal(h.from_truncated, 1);
    assert_int_equal(h.header_end, from_at + 8);
    /* ... also when only a continuation could still follow */
    hs_check(S(m2), from_at + 16, &h);
    assert_int_equal(h.from_truncated, 1);
    assert_string_equal(h.from, "a@x.test");
    /* a limit right at the start of the From: line */
    hs_check(S(m2), from_at, &h);
    assert_int_equal(h.from_count, 0);
    assert_int_equal(h.from_truncated, 0);
    /* the blank line ending exactly at the limit is seen */
    hs_check(S(m2), sizeof(m2) - 1, &h);
    assert_int_equal(h.header_end, sizeof(m2) - 1);
    assert_int_equal(h.has_date, 1);
    assert_int_equal(h.from_truncated, 0);
    assert_string_equal(h.from, "a@x.test");
    /* feeding after done only counts */
    header_scan_init(&h, 65536);
    header_scan_feed(&h, S("A: b\r\n\r\nFrom: x\r\n"));
    assert_int_equal(h.offset, 17);
    assert_int_equal(h.from_count, 0);
    header_scan_feed(&h, S("From: y\r\n"));
    assert_int_equal(h.offset, 26);
    assert_int_equal(h.header_end, 8);
}

/* ---- address lists ---------------------------------------------------------- */

/* Returns the addresses joined with '|', or "ERR". */
static const char *al(const char *v, int max)
{
    static char res[4096];
    char (*out)[ADDR_MAX + 1] = calloc(16, sizeof(*out));
    int n = addrlist_parse(v, out, max);
    if (n < 0) {
        snprintf(res, sizeof(res), "ERR");
    } else {
        res[0] = '\0';
        for (int i = 0; i < n; i++) {
            size_t l = strlen(res);
            snprintf(res + l, sizeof(res) - l, "%s%s", i ? "|" : "", out[i]);
        }
    }
    free(out);
    return res;
}

static void test_addrlist(void **state)
{
    (void)state;
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"<bob@x.test>", "bob@x.test"},
        {"bob@x.test", "bob@x.test"},
        {"\"Alice\" <bob@x.test>", "bob@x.test"},
        {"Alice <bob@x.test>", "bob@x.test"},
        {"Alice A. <a@x.test>", "a@x.test"},
        {"\"Alice A.\" <alias@example.test>", "alias@example.test"},
        {"alice@x.test, bob@y.test", "alice@x.test|bob@y.test"},
        {"alice@x.test,bob@y.test ,  <c@z.test>", "alice@x.test|bob@y.test|c@z.test"},
        {"a@x.test (Alice)", "a@x.test"},
        {"(c1) Alice (c2) <(c3) a (c4) @ (c5) x.test (c6)> (c7)", "a@x.test"},
        {"a@x.test (nested (comment (deep)) \\) \\( quoted)", "a@x.test"},
        {"\"Team\" : a@x.test, \"B\" <b@y.test>;", "a@x.test|b@y.test"},
        {"Team: a@x.test, b@y.test;", "a@x.test|b@y.test"},
        {"undisclosed-recipients:;", ""},
        {"Team:;, c@z.test", "c@z.test"},
        {"Team: (nobody) ;", ""},
        {"\"john doe\"@x.test", "\"john doe\"@x.test"},
        {"<\"a\\\"b\"@x.test>", "\"a\\\"b\"@x.test"},
        {"a@[192.0.2.1]", "a@[192.0.2.1]"},
        {"Lit <a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]"},
        {"\xd0\x96\xd0\xbe\xd1\x80\xd0\xb0 <\xd0\xb6\xd0\xbe\xd1\x80\xd0\xb0@carol.test>",
         "\xd0\xb6\xd0\xbe\xd1\x80\xd0\xb0@carol.test"},
        {"=?utf-8?B?0JbQvtGA0LA=?= <a@x.test>", "a@x.test"},
        {"a . b @ x . test", "a.b@x.test"},
        {"\"a\".b@x.test", "\"a\".b@x.test"},
        {"<@r1.test,@r2.test:a@x.test>", "a@x.test"},
        {", a@x.test,, b@y.test,", "a@x.test|b@y.test"},
        {"  <A@Example.TEST>  ", "A@Example.TEST"},
        {"", ""},
        {"   ", ""},
        {"Al\\ice <a@x.test>", "ERR"},
        {"<a@x.test", "ERR"},
        {"a@x.test>", "ERR"},
        {"a@", "ERR"},
        {"@x.test", "ERR"},
        {"<@x.test>", "ERR"},
        {"<>", "ERR"},
        {"bob", "ERR"},
        {"Bob Smith", "ERR"},
        {"Bob <bob>", "ERR"},
        {"\"Alice <a@x.test>", "ERR"},
        {"Alice\" <a@x.test>", "ERR"},
        {"(Alice <a@x.test>", "ERR"},
        {"Alice) <a@x.test>", "ERR"},
        {"a@x.test (unclosed", "ERR"},
        {"a@@x.test", "ERR"},
        {"a@x..test", "ERR"},
        {"a@x.test.", "ERR"},
        {".a@x.test", "ERR"},
        {"a.@x.test", "ERR"},
        {"a@x.test b@y.test", "ERR"},
        {"<a@x.test> <b@y.test>", "ERR"},
        {"Team: a@x.test", "ERR"},
        {"Team: Inner: a@x.test;;", "ERR"},
        {": a@x.test;", "ERR"},
        {". Alice <a@x.test>", "ERR"},
        {"Alice <a@x.test>;", "ERR"},
        {"a@[1.2.3.4", "ERR"},
        {"a@[1.2[3].4]", "ERR"},
        {"Al\x01ice <a@x.test>", "ERR"},
        {"Muller, Jorg <j@x.test>", "ERR"},
        {"\x7f<a@x.test>", "ERR"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *got = al(cases[i].in, 16);
        if (strcmp(got, cases[i].want) != 0)
            fail_msg("addrlist_parse(%s) = %s, want %s", cases[i].in, got, cases[i].want);
    }
    /* at most max written, the rest still checked */
    assert_string_equal(al("a@x.test, b@x.test, c@x.test", 2), "a@x.test|b@x.test");
    assert_string_equal(al("a@x.test, b@x.test, c@", 2), "ERR");
    assert_string_equal(al("a@x.test", 0), "");
    assert_int_equal(addrlist_parse("a@x.test, b@y.test", NULL, 0), 0);
    assert_int_equal(addrlist_parse("a@", NULL, 0), -1);
    assert_int_equal(addrlist_parse(NULL, NULL, 0), -1);
    /* addresses longer than ADDR_MAX are an error, never cut */
    char v[ADDR_MAX + 40];
    memset(v, 'a', ADDR_MAX - 7);
    memcpy(v + ADDR_MAX - 7, "@x.test", 8);
    assert_int_equal(strlen(v), ADDR_MAX);
    assert_int_equal(strlen(al(v, 16)), ADDR_MAX);
    memcpy(v + ADDR_MAX - 7, "@x.test2", 9);
    assert_string_equal(al(v, 16), "ERR");
}

/* The header scanner's From: value goes through addrlist_parse. */
static void test_from_pipeline(void **state)
{
    (void)state;
    struct header_scan h;
    hs_check(S("From: \"Alice\r\n A.\" (work)\r\n <alice@example.test>\r\n\r\n"), 65536, &h);
    assert_string_equal(al(h.from, 16), "alice@example.test");
    hs_run(S("From: <a@x.test>\0<b@y.test>\r\n\r\n"), 65536, NULL, 0, &h);
    assert_string_equal(al(h.from, 16), "ERR");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_data_normal),
        cmocka_unit_test(test_data_smuggling),
        cmocka_unit_test(test_data_line_limit),
        cmocka_unit_test(test_data_size_limit),
        cmocka_unit_test(test_data_flag_order),
        cmocka_unit_test(test_data_sink_and_runs),
        cmocka_unit_test(test_bdat),
        cmocka_unit_test(test_headers_basic),
        cmocka_unit_test(test_headers_from),
        cmocka_unit_test(test_headers_malformed_and_limit),
        cmocka_unit_test(test_addrlist),
        cmocka_unit_test(test_from_pipeline),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
