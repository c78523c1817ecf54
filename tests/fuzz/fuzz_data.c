/* fuzz_data: libFuzzer harness for smtp/dataparse.c. The DATA parser and
 * the BDAT checker are fed the input at pseudo-random split points (and
 * whole, and byte by byte) and every run must agree exactly with a simple
 * reference model written independently below: same end (never before a
 * real <CRLF>.<CRLF>), same first flag, same size, same emitted bytes (the
 * unstuffed input, clipped at the size limit). The header scanner must give
 * the same result for every split, and addrlist_parse must return
 * well-formed addresses that parse back to themselves. Any broken
 * invariant abort()s. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp/dataparse.h"

static void check(int ok, int line)
{
    if (!ok) {
        fprintf(stderr, "fuzz_data.c:%d: invariant failed\n", line);
        abort();
    }
}

/* ---- helpers ------------------------------------------------------------- */

struct buf {
    char *b;
    size_t len, cap;
    int calls;
    int fail_on; /* the sink fails from this call on (1-based); 0 never */
};

static void buf_add(struct buf *o, const char *p, size_t n)
{
    if (o->len + n + 1 > o->cap) {
        o->cap = (o->len + n + 1) * 2;
        o->b = realloc(o->b, o->cap);
        if (!o->b)
            abort();
    }
    memcpy(o->b + o->len, p, n);
    o->len += n;
    o->b[o->len] = '\0';
}

static int sink(void *arg, const char *p, size_t n)
{
    struct buf *o = arg;
    check(n > 0, __LINE__);
    o->calls++;
    check(o->fail_on == 0 || o->calls <= o->fail_on, __LINE__); /* not called after failing */
    buf_add(o, p, n);
    return o->fail_on && o->calls >= o->fail_on ? -1 : 0;
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Split points: mode 0 whole, 1 byte by byte, else random chunks. */
static size_t make_cuts(size_t n, int mode, uint64_t *rng, size_t *cuts)
{
    size_t k = 0;
    if (mode == 0)
        return 0;
    for (size_t at = 0;;) {
        size_t step = mode == 1 ? 1 : 1 + (size_t)(rng_next(rng) % (mode == 2 ? 4 : 64));
        at += step;
        if (at >= n)
            break;
        cuts[k++] = at;
    }
    return k;
}

/* ---- reference model (byte at a time, full lookahead) ----------------------- */

struct model {
    int done;
    size_t consumed;
    enum dp_flag flag;
    uint64_t size;
    size_t line_len;
    size_t max_line;
    uint64_t max_size;
    struct buf content; /* all message octets, not clipped */
};

static void m_flag(struct model *m, enum dp_flag f)
{
    if (m->flag == DP_FLAG_NONE)
        m->flag = f;
}

/* One octet of line text: size limit first, then line limit. */
static void m_text(struct model *m, char c)
{
    m->size++;
    if (m->size > m->max_size)
        m_flag(m, DP_TOO_BIG);
    m->line_len++;
    if (m->line_len + 2 > m->max_line)
        m_flag(m, DP_LINE_TOO_LONG);
    buf_add(&m->content, &c, 1);
}

static void m_octet(struct model *m, char c) /* counted, not line text */
{
    m->size++;
    if (m->size > m->max_size)
        m_flag(m, DP_TOO_BIG);
    buf_add(&m->content, &c, 1);
}

/* The body of a line after its BOL handling: CR, LF and text. Returns the
 * new position; *bol set when a real CRLF ended the line. */
static size_t m_step(struct model *m, const uint8_t *d, size_t n, size_t i, int *bol)
{
    char c = (char)d[i];
    if (c == '\r') {
        m_octet(m, '\r');
        if (i + 1 >= n)
            return i + 1; /* undecided */
        if (d[i + 1] == '\n') {
            m_octet(m, '\n');
            if (m->line_len + 2 > m->max_line)
                m_flag(m, DP_LINE_TOO_LONG);
            m->line_len = 0;
            *bol = 1;
            return i + 2;
        }
        m_flag(m, DP_BARE_CR);
        m->line_len++;
        if (m->line_len + 2 > m->max_line)
            m_flag(m, DP_LINE_TOO_LONG);
        return i + 1;
    }
    if (c == '\n') {
        m_flag(m, DP_BARE_LF);
        m_text(m, c);
        return i + 1;
    }
    m_text(m, c);
    return i + 1;
}

static void model_data(struct model *m, const uint8_t *d, size_t n)
{
    size_t i = 0;
    int bol = 1;
    while (i < n) {
        if (bol && d[i] == '.') {
            if (i + 1 >= n || (d[i + 1] == '\r' && i + 2 >= n))
                return; /* undecided: held back, not counted */
            if (d[i + 1] == '\r' && d[i + 2] == '\n') {
                m->done = 1;
                m->consumed = i + 3;
                return;
            }
            i++; /* stuffing */
        }
        bol = 0;
        i = m_step(m, d, n, i, &bol);
    }
}

static void model_bdat(struct model *m, const uint8_t *d, size_t n)
{
    int bol = 0;
    for (size_t i = 0; i < n;)
        i = m_step(m, d, n, i, &bol);
    /* finish */
    if (n > 0 && d[n - 1] == '\r') {
        m_flag(m, DP_BARE_CR);
        m->line_len++;
        if (m->line_len + 2 > m->max_line)
            m_flag(m, DP_LINE_TOO_LONG);
    }
    if (m->line_len > 0) {
        m->size += 2;
        if (m->size > m->max_size)
            m_flag(m, DP_TOO_BIG);
        if (m->line_len + 2 > m->max_line)
            m_flag(m, DP_LINE_TOO_LONG);
        buf_add(&m->content, "\r\n", 2);
    }
}

/* For input whose CR and LF only come as CRLF pairs: the end is the first
 * "\r\n.\r\n" of "\r\n" + input, and the message its lines unstuffed.
 * -1: not such input; 0: no end; 1: end found. */
static int clean_oracle(const uint8_t *d, size_t n, size_t *end, struct buf *out)
{
    for (size_t i = 0; i < n; i++) {
        if (d[i] == '\r' && (i + 1 >= n || d[i + 1] != '\n'))
            return -1;
        if (d[i] == '\n' && (i == 0 || d[i - 1] != '\r'))
            return -1;
    }
    char *s = malloc(n + 3);
    memcpy(s, "\r\n", 2);
    memcpy(s + 2, d, n);
    s[n + 2] = '\0';
    const char *t = memmem(s, n + 2, "\r\n.\r\n", 5);
    size_t at = t ? (size_t)(t - s) : 0;
    free(s);
    if (!t)
        return 0;
    *end = at + 3;
    /* the lines before the "." line */
    for (size_t i = 0; i < *end;) {
        const uint8_t *nl = memchr(d + i, '\n', *end - i);
        size_t e = (size_t)(nl - d) + 1;
        if (e == *end)
            break;
        size_t st = d[i] == '.' ? i + 1 : i;
        buf_add(out, (const char *)d + st, e - st);
        i = e;
    }
    return 1;
}

/* ---- DATA ------------------------------------------------------------------ */

static void fuzz_data_parser(const uint8_t *d, size_t n, size_t max_line, uint64_t max_size, uint64_t seed)
{
    struct model m = {0};
    m.max_line = max_line;
    m.max_size = max_size;
    model_data(&m, d, n);
    size_t want_out = m.content.len < max_size ? m.content.len : (size_t)max_size;

    size_t *cuts = malloc((n + 1) * sizeof(*cuts));
    uint64_t rng = seed | 1;
    for (int mode = 0; mode < 6; mode++) {
        /* mode 5: random chunks and a sink that fails on its second call */
        size_t nc = make_cuts(n, mode == 5 ? 3 : mode, &rng, cuts);
        struct data_parser p;
        struct buf out = {0};
        out.fail_on = mode == 5 ? 2 : 0;
        data_parser_init(&p, max_line, max_size, sink, &out);
        size_t at = 0, total = 0;
        int done = 0;
        for (size_t k = 0; k <= nc && !done; k++) {
            size_t end = k < nc ? cuts[k] : n;
            char *piece = malloc(end - at + 1); /* exact size for ASan */
            memcpy(piece, d + at, end - at);
            size_t c = (size_t)-1;
            enum dp_res r = data_parser_feed(&p, piece, end - at, &c);
            free(piece);
            check(c <= end - at, __LINE__);
            if (r == DP_DONE) {
                done = 1;
                total = at + c;
            } else {
                check(r == DP_NEED_MORE && c == end - at, __LINE__);
                total = end;
            }
            at = end;
        }
        check(done == m.done, __LINE__);
        if (done) {
            check(total == m.consumed, __LINE__);
            /* the end is a real "." CRLF line after a real CRLF (or first) */
            check(total >= 3 && memcmp(d + total - 3, ".\r\n", 3) == 0, __LINE__);
            check(total == 3 || memcmp(d + total - 5, "\r\n", 2) == 0, __LINE__);
            size_t c = 1;
            check(data_parser_feed(&p, "x", 1, &c) == DP_DONE && c == 0, __LINE__);
        }
        check(p.flag == m.flag, __LINE__);
        check(p.size == m.size, __LINE__);
        check(p.sink_failed == (out.calls >= 2 && mode == 5), __LINE__);
        if (p.sink_failed)
            check(out.len <= want_out, __LINE__); /* a prefix, then nothing */
        else
            check(out.len == want_out, __LINE__);
        check(out.len == 0 || memcmp(out.b, m.content.b, out.len) == 0, __LINE__);
        if (mode == 0 && n > 0)
            check(out.calls <= 2 + (int)(n / 3), __LINE__); /* runs, not octets: one per dot line */
        free(out.b);
    }
    free(cuts);

    size_t end;
    struct buf clean = {0};
    int co = clean_oracle(d, n, &end, &clean);
    if (co == 0)
        check(!m.done, __LINE__);
    if (co == 1) {
        check(m.done && m.consumed == end, __LINE__);
        check(clean.len == m.content.len, __LINE__);
        check(clean.len == 0 || memcmp(clean.b, m.content.b, clean.len) == 0, __LINE__);
        check(m.flag != DP_BARE_CR && m.flag != DP_BARE_LF, __LINE__);
    }
    free(clean.b);
    free(m.content.b);
}

/* ---- BDAT ------------------------------------------------------------------ */

static void fuzz_bdat(const uint8_t *d, size_t n, size_t max_line, uint64_t max_size, uint64_t seed)
{
    struct model m = {0};
    m.max_line = max_line;
    m.max_size = max_size;
    model_bdat(&m, d, n);
    size_t want_out = m.content.len < max_size ? m.content.len : (size_t)max_size;
    size_t *cuts = malloc((n + 1) * sizeof(*cuts));
    uint64_t rng = seed * 7 + 3;
    for (int mode = 0; mode < 4; mode++) {
        size_t nc = make_cuts(n, mode, &rng, cuts);
        struct bdat_checker c;
        struct buf out = {0};
        bdat_checker_init(&c, max_line, max_size, sink, &out);
        size_t at = 0;
        for (size_t k = 0; k <= nc; k++) {
            size_t end = k < nc ? cuts[k] : n;
            char *piece = malloc(end - at + 1);
            memcpy(piece, d + at, end - at);
            bdat_checker_feed(&c, piece, end - at);
            free(piece);
            at = end;
        }
        enum dp_flag f = bdat_checker_finish(&c);
        check(f == m.flag && c.flag == f, __LINE__);
        check(c.size == m.size, __LINE__);
        check(out.len == want_out, __LINE__);
        check(want_out == 0 || memcmp(out.b, m.content.b, want_out) == 0, __LINE__);
        if (f == DP_FLAG_NONE)
            check(out.len == 0 || (out.len >= 2 && memcmp(out.b + out.len - 2, "\r\n", 2) == 0), __LINE__);
        free(out.b);
    }
    free(cuts);
    free(m.content.b);
}

/* ---- addresses ---------------------------------------------------------------- */

static void fuzz_addrlist(const char *v)
{
    static char out[16][ADDR_MAX + 1];
    static char one[1][ADDR_MAX + 1];
    static char again[2][ADDR_MAX + 1];
    memset(out, 0x55, sizeof(out));
    int n = addrlist_parse(v, out, 16);
    check(n >= -1 && n <= 16, __LINE__);
    check(addrlist_parse(v, NULL, 0) == (n < 0 ? -1 : 0), __LINE__);
    int n1 = addrlist_parse(v, one, 1);
    check(n1 == (n < 0 ? -1 : (n > 0 ? 1 : 0)), __LINE__);
    for (int i = 0; i < n; i++) {
        size_t l = strnlen(out[i], ADDR_MAX + 1);
        check(l <= ADDR_MAX && l >= 3, __LINE__);
        check(strchr(out[i], '@') != NULL, __LINE__);
        if (i == 0)
            check(strcmp(one[0], out[0]) == 0, __LINE__);
        /* an address found parses back to itself */
        check(addrlist_parse(out[i], again, 2) == 1, __LINE__);
        check(strcmp(again[0], out[i]) == 0, __LINE__);
    }
}

/* ---- header scanner ------------------------------------------------------------- */

static void fuzz_headers(const uint8_t *d, size_t n, size_t max_header, uint64_t seed)
{
    static struct header_scan first, h;
    size_t *cuts = malloc((n + 1) * sizeof(*cuts));
    uint64_t rng = seed * 13 + 5;
    for (int mode = 0; mode < 4; mode++) {
        struct header_scan *cur = mode == 0 ? &first : &h;
        size_t nc = make_cuts(n, mode, &rng, cuts);
        header_scan_init(cur, max_header);
        size_t at = 0;
        for (size_t k = 0; k <= nc; k++) {
            size_t end = k < nc ? cuts[k] : n;
            char *piece = malloc(end - at + 1);
            memcpy(piece, d + at, end - at);
            header_scan_feed(cur, piece, end - at);
            free(piece);
            at = end;
        }
        header_scan_finish(cur);
        check(cur->done == 1, __LINE__);
        check(cur->offset == n, __LINE__);
        check(cur->header_end <= n, __LINE__);
        check(cur->header_end <= max_header, __LINE__);
        check(memchr(cur->from, '\0', sizeof(cur->from)) != NULL, __LINE__);
        check(cur->from_count > 0 || cur->from[0] == '\0', __LINE__);
        check(!cur->from_truncated || cur->from_count > 0, __LINE__);
        size_t fl = strlen(cur->from);
        check(fl == 0 || (cur->from[0] != ' ' && cur->from[0] != '\t'), __LINE__);
        check(fl == 0 || (cur->from[fl - 1] != ' ' && cur->from[fl - 1] != '\t'), __LINE__);
        if (mode > 0) {
            check(h.header_end == first.header_end, __LINE__);
            check(h.has_message_id == first.has_message_id && h.has_date == first.has_date, __LINE__);
            check(h.from_count == first.from_count && h.from_truncated == first.from_truncated, __LINE__);
            check(h.malformed == first.malformed, __LINE__);
            check(strcmp(h.from, first.from) == 0, __LINE__);
        }
    }
    free(cuts);
    if (first.from_count > 0)
        fuzz_addrlist(first.from);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    /* settings from the first four octets */
    size_t max_line = (data[0] & 0x80) ? 1000 : (size_t)(data[0] & 0x1f);
    uint64_t max_size = (data[1] & 0x80) ? UINT64_MAX / 2 : (uint64_t)(data[1] & 0x7f) * 3;
    uint64_t seed = (uint64_t)data[2] << 8 | data[3];
    const uint8_t *d = data + 4;
    size_t n = size - 4;

    fuzz_data_parser(d, n, max_line, max_size, seed + 1);
    fuzz_bdat(d, n, max_line, max_size, seed + 2);
    fuzz_headers(d, n, (data[0] & 0x40) ? 1u << 20 : (size_t)data[1] * 4, seed + 3);

    /* the input as a header value */
    char *v = malloc(n + 1);
    memcpy(v, d, n);
    v[n] = '\0';
    fuzz_addrlist(v);
    free(v);
    return 0;
}
