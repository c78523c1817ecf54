/* dataparse: the pure, resumable message-content parsers declared in
 * dataparse.h — DATA dot-unstuffing and end detection (only a real
 * <CRLF>.<CRLF> ends the data; bare CR / bare LF are flagged and never end
 * a line), the BDAT line checker, the streaming header-section scanner and
 * the RFC 5322 address-list parser used on From:. No globals; the DATA and
 * BDAT parsers work on runs (memchr) and hand runs to the sink. */
#include "smtp/dataparse.h"

#include <stdint.h>
#include <string.h>

#include "core/util.h"

/* ---- shared line / size rules -------------------------------------------
 * Octets are counted (p->size, the line length) where the scan meets them,
 * so every flag is raised in stream order whatever the chunking; the sink
 * is fed afterwards in runs, clipped at max_size. */

struct stream {
    size_t *line_len;
    uint64_t *size;
    enum dp_flag *flag;
    size_t max_line;
    uint64_t max_size;
    dp_sink_fn sink;
    void *arg;
    int *failed;
};

static void raise_flag(enum dp_flag *f, enum dp_flag v)
{
    if (*f == DP_FLAG_NONE)
        *f = v;
}

static void line_grow(const struct stream *s, size_t n)
{
    if (n > SIZE_MAX / 2 - *s->line_len)
        *s->line_len = SIZE_MAX / 2; /* saturate; flagged long ago */
    else
        *s->line_len += n;
}

/* n octets of line text. Of the two limits, the one crossed by the earlier
 * octet raises its flag (a tie goes to the size, as when octets come one
 * by one: size first, then line). */
static void text_octets(const struct stream *s, size_t n)
{
    if (n == 0)
        return;
    if (*s->flag == DP_FLAG_NONE) {
        /* 1-based index of the octet crossing each limit, if any */
        uint64_t ks = UINT64_MAX, kl = UINT64_MAX;
        if (*s->size + n > s->max_size)
            ks = *s->size >= s->max_size ? 1 : s->max_size - *s->size + 1;
        if (*s->line_len + n + 2 > s->max_line)
            kl = *s->line_len + 2 >= s->max_line ? 1 : s->max_line - 2 - *s->line_len + 1;
        if (ks != UINT64_MAX || kl != UINT64_MAX)
            *s->flag = ks <= kl ? DP_TOO_BIG : DP_LINE_TOO_LONG;
    }
    *s->size += n;
    line_grow(s, n);
}

/* n message octets that are not line text (CR, LF of a line end). */
static void size_octets(const struct stream *s, size_t n)
{
    if (*s->size + n > s->max_size)
        raise_flag(s->flag, DP_TOO_BIG);
    *s->size += n;
}

/* A CR already counted in the size turned out to be bare: line text. */
static void bare_cr_text(const struct stream *s)
{
    raise_flag(s->flag, DP_BARE_CR);
    line_grow(s, 1);
    if (*s->line_len + 2 > s->max_line)
        raise_flag(s->flag, DP_LINE_TOO_LONG);
}

/* A real CRLF ends the line. */
static void line_end(const struct stream *s)
{
    if (*s->line_len + 2 > s->max_line)
        raise_flag(s->flag, DP_LINE_TOO_LONG);
    *s->line_len = 0;
}

/* Hands n octets, already counted in the size (and the last ones counted),
 * to the sink; octets past max_size are dropped. */
static void flush(const struct stream *s, const char *b, size_t n)
{
    if (n == 0)
        return;
    uint64_t before = *s->size - n;
    size_t m = n;
    if (before >= s->max_size)
        m = 0;
    else if (s->max_size - before < n)
        m = (size_t)(s->max_size - before);
    if (m > 0 && !*s->failed && s->sink && s->sink(s->arg, b, m) != 0)
        *s->failed = 1;
}

/* Next CR or LF at or after i (len when none). Both positions are cached
 * so that a buffer is scanned once however many lines it holds. */
struct eol_cache {
    size_t cr, lf;
    int init;
};

static size_t next_eol(const char *buf, size_t i, size_t len, struct eol_cache *c)
{
    if (!c->init || c->cr < i) {
        const char *q = memchr(buf + i, '\r', len - i);
        c->cr = q ? (size_t)(q - buf) : len;
    }
    if (!c->init || c->lf < i) {
        const char *q = memchr(buf + i, '\n', len - i);
        c->lf = q ? (size_t)(q - buf) : len;
    }
    c->init = 1;
    return c->cr < c->lf ? c->cr : c->lf;
}

/* ---- DATA ----------------------------------------------------------------- */

enum {
    DS_BOL = 0, /* at the start of a line (after a real CRLF, or first) */
    DS_DOT,     /* BOL "." seen (not counted, not emitted) */
    DS_DOT_CR,  /* BOL "." CR seen (neither counted nor emitted yet) */
    DS_TEXT,    /* inside a line */
    DS_CR,      /* inside a line, CR seen (counted, emitted with the run) */
    DS_DONE
};

void data_parser_init(struct data_parser *p, size_t max_line, uint64_t max_size, dp_sink_fn sink, void *arg)
{
    memset(p, 0, sizeof(*p));
    p->max_line = max_line;
    p->max_size = max_size;
    p->sink = sink;
    p->sink_arg = arg;
    p->state = DS_BOL;
    p->flag = DP_FLAG_NONE;
}

enum dp_res data_parser_feed(struct data_parser *p, const char *buf, size_t len, size_t *consumed)
{
    const struct stream s = {&p->line_len, &p->size,     &p->flag,   p->max_line,
                             p->max_size,  p->sink,      p->sink_arg, &p->sink_failed};
    struct eol_cache ec = {0, 0, 0};
    size_t i = 0;
    size_t run = 0; /* buf[run..i) is counted message text not yet flushed */
    *consumed = 0;
    if (p->state == DS_DONE)
        return DP_DONE;
    while (i < len) {
        switch (p->state) {
        case DS_BOL:
            if (buf[i] == '.') {
                flush(&s, buf + run, i - run);
                run = ++i; /* the dot is held back */
                p->state = DS_DOT;
            } else {
                p->state = DS_TEXT;
            }
            break;
        case DS_DOT:
            if (buf[i] == '\r') {
                i++; /* run now points at this CR, held back too */
                p->state = DS_DOT_CR;
            } else {
                p->state = DS_TEXT; /* a stuffed dot: dropped */
            }
            break;
        case DS_DOT_CR:
            if (buf[i] == '\n') {
                /* <CRLF>.<CRLF>: nothing is pending (run is at the CR) */
                p->state = DS_DONE;
                *consumed = i + 1;
                return DP_DONE;
            }
            /* "." CR x: the dot was stuffing and the CR is bare text */
            size_octets(&s, 1);
            bare_cr_text(&s);
            if (i == 0)
                flush(&s, "\r", 1); /* held from the previous buffer */
            /* else the CR is buf[run] and leaves with the run */
            p->state = DS_TEXT;
            break;
        case DS_TEXT: {
            size_t j = next_eol(buf, i, len, &ec);
            text_octets(&s, j - i);
            if (j == len) {
                i = len;
            } else if (buf[j] == '\n') {
                raise_flag(&p->flag, DP_BARE_LF); /* not a line end */
                text_octets(&s, 1);
                i = j + 1;
            } else {
                size_octets(&s, 1);
                i = j + 1;
                p->state = DS_CR;
            }
            break;
        }
        case DS_CR:
            if (buf[i] == '\n') {
                size_octets(&s, 1);
                line_end(&s);
                i++;
                p->state = DS_BOL;
            } else {
                bare_cr_text(&s); /* not a line end */
                p->state = DS_TEXT;
            }
            break;
        default:
            *consumed = i;
            return DP_DONE;
        }
    }
    if (p->state != DS_DOT_CR) /* in DS_DOT_CR the run is just the held CR */
        flush(&s, buf + run, len - run);
    *consumed = len;
    return DP_NEED_MORE;
}

/* ---- BDAT ----------------------------------------------------------------- */

enum { BS_TEXT = 0, BS_CR };

void bdat_checker_init(struct bdat_checker *c, size_t max_line, uint64_t max_size, dp_sink_fn sink, void *arg)
{
    memset(c, 0, sizeof(*c));
    c->max_line = max_line;
    c->max_size = max_size;
    c->sink = sink;
    c->sink_arg = arg;
    c->state = BS_TEXT;
    c->flag = DP_FLAG_NONE;
}

void bdat_checker_feed(struct bdat_checker *c, const char *buf, size_t len)
{
    const struct stream s = {&c->line_len, &c->size, &c->flag,   c->max_line,
                             c->max_size,  c->sink,  c->sink_arg, &c->sink_failed};
    struct eol_cache ec = {0, 0, 0};
    size_t i = 0;
    while (i < len) {
        if (c->state == BS_CR) {
            if (buf[i] == '\n') {
                size_octets(&s, 1);
                line_end(&s);
                i++;
            } else {
                bare_cr_text(&s);
            }
            c->state = BS_TEXT;
            continue;
        }
        size_t j = next_eol(buf, i, len, &ec);
        text_octets(&s, j - i);
        if (j == len)
            break;
        if (buf[j] == '\n') {
            raise_flag(&c->flag, DP_BARE_LF);
            text_octets(&s, 1);
        } else {
            size_octets(&s, 1);
            c->state = BS_CR;
        }
        i = j + 1;
    }
    flush(&s, buf, len); /* every octet is content */
}

enum dp_flag bdat_checker_finish(struct bdat_checker *c)
{
    const struct stream s = {&c->line_len, &c->size, &c->flag,   c->max_line,
                             c->max_size,  c->sink,  c->sink_arg, &c->sink_failed};
    if (c->state == BS_CR) {
        bare_cr_text(&s);
        c->state = BS_TEXT;
    }
    if (c->line_len > 0) {
        /* stored messages always end with CRLF */
        size_octets(&s, 2);
        line_end(&s);
        flush(&s, "\r\n", 2);
    }
    return c->flag;
}

/* ---- header scanner --------------------------------------------------------
 * While the scan runs, header_end holds the offset where the current line
 * started (so that a malformed line can end the header section there); it
 * gets its documented meaning when done is set. */

enum {
    HS_BOL = 0,  /* start of a header-section line */
    HS_BLANK_CR, /* a line that started with CR */
    HS_NAME,     /* in the field name */
    HS_NAME_WSP, /* WSP after the name, before ':' (obs-syntax) */
    HS_VALUE,    /* in the field body */
    HS_VALUE_CR  /* CR seen in the field body */
};

enum { F_NONE = 0, F_FROM = 1, F_OTHER = 2 };

void header_scan_init(struct header_scan *h, size_t max_header)
{
    memset(h, 0, sizeof(*h));
    h->max_header = max_header;
    h->state = HS_BOL;
}

static void from_add(struct header_scan *h, unsigned char c)
{
    if (h->from_len == 0 && (c == ' ' || c == '\t'))
        return; /* leading WSP trimmed */
    if (c == '\0')
        c = 0x7F; /* cannot live in a C string; 0x7F makes addrlist_parse fail,
                     so the value is never read as shorter than it is */
    if (h->from_len + 1 >= sizeof(h->from)) {
        h->from_truncated = 1;
        return;
    }
    h->from[h->from_len++] = (char)c;
    h->from[h->from_len] = '\0';
}

/* The current field ends (a new line that is not a continuation). */
static void field_close(struct header_scan *h)
{
    if (h->cur_field == F_FROM) {
        while (h->from_len > 0 && (h->from[h->from_len - 1] == ' ' || h->from[h->from_len - 1] == '\t'))
            h->from_len--;
        h->from[h->from_len] = '\0';
    }
    h->cur_field = F_NONE;
}

static void field_open(struct header_scan *h)
{
    int known = h->name_len < sizeof(h->name);
    h->name[known ? h->name_len : 0] = '\0';
    h->cur_field = F_OTHER;
    if (!known)
        return;
    if (str_ieq(h->name, "From")) {
        if (++h->from_count == 1)
            h->cur_field = F_FROM;
    } else if (str_ieq(h->name, "Message-ID")) {
        h->has_message_id = 1;
    } else if (str_ieq(h->name, "Date")) {
        h->has_date = 1;
    }
}

static void headers_end(struct header_scan *h, uint64_t at)
{
    field_close(h);
    h->header_end = at;
    h->done = 1;
}

static void malformed_line(struct header_scan *h)
{
    h->malformed = 1;
    headers_end(h, h->header_end); /* the start of this line */
}

static int name_char(unsigned char c)
{
    return c >= 33 && c <= 126 && c != ':';
}

/* One octet; h->offset already counts it. */
static void hs_byte(struct header_scan *h, unsigned char c)
{
    switch (h->state) {
    case HS_BOL:
        if (c == '\r') {
            h->state = HS_BLANK_CR;
        } else if (c == '\n') {
            headers_end(h, h->offset); /* a blank line with a bare LF */
        } else if (c == ' ' || c == '\t') {
            if (h->cur_field == F_NONE) {
                malformed_line(h); /* a continuation with nothing to continue */
                return;
            }
            if (h->cur_field == F_FROM)
                from_add(h, c); /* unfolding keeps the WSP */
            h->state = HS_VALUE;
        } else if (name_char(c)) {
            field_close(h);
            h->name[0] = (char)c;
            h->name_len = 1;
            h->state = HS_NAME;
        } else {
            malformed_line(h);
        }
        break;
    case HS_BLANK_CR:
        if (c == '\n')
            headers_end(h, h->offset);
        else
            malformed_line(h);
        break;
    case HS_NAME:
        if (c == ':') {
            field_open(h);
            h->state = HS_VALUE;
        } else if (c == ' ' || c == '\t') {
            h->state = HS_NAME_WSP;
        } else if (name_char(c)) {
            if (h->name_len + 1 < sizeof(h->name))
                h->name[h->name_len++] = (char)c;
            else
                h->name_len = sizeof(h->name); /* too long to be one we know */
        } else {
            malformed_line(h);
        }
        break;
    case HS_NAME_WSP:
        if (c == ':') {
            field_open(h);
            h->state = HS_VALUE;
        } else if (c != ' ' && c != '\t') {
            malformed_line(h);
        }
        break;
    case HS_VALUE_CR:
        if (c == '\n') {
            h->header_end = h->offset;
            h->state = HS_BOL;
            break;
        }
        if (h->cur_field == F_FROM)
            from_add(h, '\r'); /* a bare CR is field text */
        h->state = HS_VALUE;
        hs_byte(h, c);
        break;
    case HS_VALUE:
    default:
        if (c == '\r') {
            h->state = HS_VALUE_CR;
        } else if (c == '\n') {
            h->header_end = h->offset;
            h->state = HS_BOL;
        } else if (h->cur_field == F_FROM) {
            from_add(h, c);
        }
        break;
    }
}

/* max_header reached: stop. A From: value being read (or one whose
 * continuation lines may still follow) is incomplete. */
static void limit_reached(struct header_scan *h)
{
    if (h->cur_field == F_FROM)
        h->from_truncated = 1;
    h->too_long = 1;
    headers_end(h, h->offset);
}

void header_scan_feed(struct header_scan *h, const char *buf, size_t len)
{
    size_t i = 0;
    if (!h->done && h->offset >= h->max_header)
        limit_reached(h);
    while (i < len && !h->done) {
        h->offset++;
        hs_byte(h, (unsigned char)buf[i++]);
        if (!h->done && h->offset >= h->max_header)
            limit_reached(h);
    }
    h->offset += len - i;
}

void header_scan_finish(struct header_scan *h)
{
    if (h->done)
        return;
    headers_end(h, h->offset);
}

/* ---- RFC 5322 address lists ------------------------------------------------ */

enum tk_type { TK_END, TK_ATOM, TK_QSTR, TK_DLIT, TK_SPECIAL, TK_ERR };

struct tok {
    enum tk_type t;
    char c; /* for TK_SPECIAL */
    size_t start, len;
};

struct alp {
    const unsigned char *s;
    size_t pos;
    char (*out)[ADDR_MAX + 1];
    int max;
    int n;
};

static int al_atext(unsigned char c)
{
    return c >= 0x80 || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

static int al_wsp(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Skips white space and (nested) comments. -1 on an unclosed comment or a
 * control character inside one. */
static int skip_cfws(struct alp *a)
{
    for (;;) {
        unsigned char c = a->s[a->pos];
        if (al_wsp(c)) {
            a->pos++;
            continue;
        }
        if (c != '(')
            return 0;
        size_t depth = 1;
        a->pos++;
        while (depth > 0) {
            c = a->s[a->pos];
            if (c == '\0')
                return -1;
            if (c == '\\') {
                if (a->s[a->pos + 1] == '\0')
                    return -1;
                a->pos += 2;
                continue;
            }
            if ((c < 32 && !al_wsp(c)) || c == 127)
                return -1;
            if (c == '(')
                depth++;
            else if (c == ')')
                depth--;
            a->pos++;
        }
    }
}

/* Reads the next token after any CFWS. */
static void next_tok(struct alp *a, struct tok *t)
{
    t->c = 0;
    t->len = 0;
    if (skip_cfws(a) != 0) {
        t->t = TK_ERR;
        return;
    }
    t->start = a->pos;
    unsigned char c = a->s[a->pos];
    if (c == '\0') {
        t->t = TK_END;
        return;
    }
    if (c == '"' || c == '[') {
        unsigned char close = c == '"' ? '"' : ']';
        a->pos++;
        for (;;) {
            c = a->s[a->pos];
            if (c == '\0' || (c < 32 && c != ' ' && c != '\t') || c == 127 || (close == ']' && c == '[')) {
                t->t = TK_ERR;
                return;
            }
            if (c == '\\') {
                unsigned char d = a->s[a->pos + 1];
                if (d == '\0' || (d < 32 && d != ' ' && d != '\t') || d == 127) {
                    t->t = TK_ERR;
                    return;
                }
                a->pos += 2;
                continue;
            }
            a->pos++;
            if (c == close)
                break;
        }
        t->t = close == '"' ? TK_QSTR : TK_DLIT;
    } else if (al_atext(c)) {
        while (al_atext(a->s[a->pos]))
            a->pos++;
        t->t = TK_ATOM;
    } else if (strchr("<>@,;:.", c) != NULL) {
        a->pos++;
        t->t = TK_SPECIAL;
        t->c = (char)c;
    } else {
        t->t = TK_ERR; /* ) ] \ or a control character */
        return;
    }
    t->len = a->pos - t->start;
}

static void peek_tok(struct alp *a, struct tok *t)
{
    size_t save = a->pos;
    next_tok(a, t);
    a->pos = save;
}

static int is_special(const struct tok *t, char c)
{
    return t->t == TK_SPECIAL && t->c == c;
}

static int buf_add(char *buf, size_t *len, const unsigned char *s, size_t n)
{
    if (*len + n > ADDR_MAX)
        return -1; /* never truncated: a cut address could be someone else's */
    memcpy(buf + *len, s, n);
    *len += n;
    buf[*len] = '\0';
    return 0;
}

/* domain = dot-atom / domain-literal (CFWS between tokens allowed and
 * dropped), appended to buf when buf is not NULL. */
static int parse_domain(struct alp *a, char *buf, size_t *len)
{
    struct tok t;
    next_tok(a, &t);
    if (t.t == TK_DLIT)
        return buf ? buf_add(buf, len, a->s + t.start, t.len) : 0;
    for (;;) {
        if (t.t != TK_ATOM)
            return -1;
        if (buf && buf_add(buf, len, a->s + t.start, t.len) != 0)
            return -1;
        peek_tok(a, &t);
        if (!is_special(&t, '.'))
            return 0;
        next_tok(a, &t);
        if (buf && buf_add(buf, len, (const unsigned char *)".", 1) != 0)
            return -1;
        next_tok(a, &t);
    }
}

/* addr-spec = local-part "@" domain; local-part = word *("." word). */
static int parse_addr_spec(struct alp *a)
{
    char buf[ADDR_MAX + 1];
    size_t len = 0;
    struct tok t;
    buf[0] = '\0';
    for (;;) {
        next_tok(a, &t);
        if (t.t != TK_ATOM && t.t != TK_QSTR)
            return -1;
        if (buf_add(buf, &len, a->s + t.start, t.len) != 0)
            return -1;
        next_tok(a, &t);
        if (is_special(&t, '@'))
            break;
        if (!is_special(&t, '.') || buf_add(buf, &len, (const unsigned char *)".", 1) != 0)
            return -1;
    }
    if (buf_add(buf, &len, (const unsigned char *)"@", 1) != 0 || parse_domain(a, buf, &len) != 0)
        return -1;
    if (a->n < a->max)
        memcpy(a->out[a->n++], buf, len + 1);
    return 0;
}

/* display-name: a phrase, first token a word, then words, dots (obs-phrase). */
static int parse_phrase(struct alp *a, char stop)
{
    struct tok t;
    int first = 1;
    for (;;) {
        peek_tok(a, &t);
        if (is_special(&t, stop))
            return first ? -1 : 0;
        if (t.t == TK_ATOM || t.t == TK_QSTR || (!first && is_special(&t, '.'))) {
            next_tok(a, &t);
            first = 0;
            continue;
        }
        return -1;
    }
}

/* angle-addr = "<" [obs-route] addr-spec ">" */
static int parse_angle(struct alp *a)
{
    struct tok t;
    next_tok(a, &t);
    if (!is_special(&t, '<'))
        return -1;
    peek_tok(a, &t);
    if (is_special(&t, '@') || is_special(&t, ',')) {
        /* obs-route = obs-domain-list ":" ; obs-domain-list =
         * *(CFWS / ",") "@" domain *("," [CFWS] ["@" domain]) */
        int domains = 0;
        for (;;) {
            next_tok(a, &t);
            if (is_special(&t, ','))
                continue;
            if (is_special(&t, ':') && domains > 0)
                break;
            if (!is_special(&t, '@') || parse_domain(a, NULL, NULL) != 0)
                return -1;
            domains++;
        }
    }
    if (parse_addr_spec(a) != 0)
        return -1;
    next_tok(a, &t);
    return is_special(&t, '>') ? 0 : -1;
}

/* mailbox = name-addr / addr-spec; with groups when allowed. */
static int parse_address(struct alp *a, int allow_group)
{
    struct tok t;
    size_t save = a->pos;
    /* look past the leading words to see what this is */
    do
        next_tok(a, &t);
    while (t.t == TK_ATOM || t.t == TK_QSTR || is_special(&t, '.'));
    a->pos = save;
    if (is_special(&t, '<')) {
        peek_tok(a, &t);
        if (!is_special(&t, '<') && parse_phrase(a, '<') != 0)
            return -1;
        return parse_angle(a);
    }
    if (is_special(&t, '@'))
        return parse_addr_spec(a);
    if (!is_special(&t, ':') || !allow_group)
        return -1;
    /* group = display-name ":" [group-list] ";" */
    if (parse_phrase(a, ':') != 0)
        return -1;
    next_tok(a, &t); /* ':' */
    for (;;) {
        next_tok(a, &t);
        if (is_special(&t, ';'))
            return 0;
        if (is_special(&t, ','))
            continue;
        if (t.t != TK_ATOM && t.t != TK_QSTR && !is_special(&t, '<'))
            return -1;
        a->pos = t.start;
        if (parse_address(a, 0) != 0)
            return -1;
        next_tok(a, &t);
        if (is_special(&t, ';'))
            return 0;
        if (!is_special(&t, ','))
            return -1;
    }
}

int addrlist_parse(const char *value, char (*out)[ADDR_MAX + 1], int max)
{
    if (!value)
        return -1;
    struct alp a = {(const unsigned char *)value, 0, out, out ? max : 0, 0};
    struct tok t;
    /* obs-addr-list: empty elements between commas are allowed */
    for (;;) {
        peek_tok(&a, &t);
        if (t.t == TK_END)
            return a.n;
        if (is_special(&t, ',')) {
            next_tok(&a, &t);
            continue;
        }
        if (parse_address(&a, 1) != 0)
            return -1;
        next_tok(&a, &t);
        if (t.t == TK_END)
            return a.n;
        if (!is_special(&t, ','))
            return -1;
    }
}
