/* confval: see confval.h. */
#include "core/confval.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue/transport.h"

/* ---- value syntax ------------------------------------------------------------ */

/* Leading decimal digits of s into *v; returns the end or NULL (none, or
 * overflow). */
const char *cv_parse_digits(const char *s, uint64_t *v)
{
    uint64_t n = 0;
    const char *p = s;
    while (*p >= '0' && *p <= '9') {
        unsigned d = (unsigned)(*p - '0');
        if (n > (UINT64_MAX - d) / 10)
            return NULL;
        n = n * 10 + d;
        p++;
    }
    if (p == s)
        return NULL;
    *v = n;
    return p;
}

static int mul_ok(uint64_t a, uint64_t b, uint64_t *out)
{
    if (b && a > UINT64_MAX / b)
        return -1;
    *out = a * b;
    return 0;
}

int cv_parse_uint(const char *s, uint64_t *out)
{
    const char *e = cv_parse_digits(s, out);
    return e && *e == '\0' ? 0 : -1;
}

int cv_parse_size(const char *s, uint64_t *out)
{
    uint64_t v;
    const char *e = cv_parse_digits(s, &v);
    if (!e)
        return -1;
    uint64_t mult = 1;
    if (*e == 'k' || *e == 'K')
        mult = KIB;
    else if (*e == 'm' || *e == 'M')
        mult = MIB;
    else if (*e == 'g' || *e == 'G')
        mult = GIB;
    else if (*e != '\0')
        return -1;
    if (mult != 1 && e[1] != '\0')
        return -1;
    return mul_ok(v, mult, out);
}

/* A duration in milliseconds; a plain number counts `plain_ms` ms. */
int cv_parse_duration_ms(const char *s, uint64_t plain_ms, uint64_t *out)
{
    uint64_t v;
    const char *e = cv_parse_digits(s, &v);
    if (!e)
        return -1;
    uint64_t mult;
    if (*e == '\0')
        mult = plain_ms;
    else if (strcmp(e, "ms") == 0)
        mult = 1;
    else if (strcmp(e, "s") == 0)
        mult = 1000;
    else if (strcmp(e, "m") == 0)
        mult = MINUTE * 1000;
    else if (strcmp(e, "h") == 0)
        mult = HOUR * 1000;
    else if (strcmp(e, "d") == 0)
        mult = DAY * 1000;
    else
        return -1;
    return mul_ok(v, mult, out);
}

int cv_parse_bool(const char *s, uint64_t *out)
{
    static const char *const yes[] = {"yes", "on", "true", "1"};
    static const char *const no[] = {"no", "off", "false", "0"};
    for (size_t i = 0; i < ARRAY_LEN(yes); i++) {
        if (str_ieq(s, yes[i])) {
            *out = 1;
            return 0;
        }
        if (str_ieq(s, no[i])) {
            *out = 0;
            return 0;
        }
    }
    return -1;
}

void cv_fmt_size(struct strbuf *b, uint64_t v)
{
    if (v >= GIB && v % GIB == 0)
        sb_printf(b, "%lluG", (unsigned long long)(v / GIB));
    else if (v >= MIB && v % MIB == 0)
        sb_printf(b, "%lluM", (unsigned long long)(v / MIB));
    else if (v >= KIB && v % KIB == 0)
        sb_printf(b, "%lluK", (unsigned long long)(v / KIB));
    else
        sb_printf(b, "%llu", (unsigned long long)v);
}

void cv_fmt_secs(struct strbuf *b, uint64_t v)
{
    if (v == 0)
        sb_puts(b, "0");
    else if (v % DAY == 0)
        sb_printf(b, "%llud", (unsigned long long)(v / DAY));
    else if (v % HOUR == 0)
        sb_printf(b, "%lluh", (unsigned long long)(v / HOUR));
    else if (v % MINUTE == 0)
        sb_printf(b, "%llum", (unsigned long long)(v / MINUTE));
    else
        sb_printf(b, "%llus", (unsigned long long)v);
}

void cv_fmt_msecs(struct strbuf *b, uint64_t v)
{
    if (v != 0 && v % 1000 == 0)
        cv_fmt_secs(b, v / 1000);
    else
        sb_printf(b, "%llums", (unsigned long long)v);
}

char *cv_abs_path(const char *basedir, const char *v)
{
    if (v[0] == '/' || !basedir)
        return xstrdup(v);
    while (v[0] == '.' && v[1] == '/') {
        v += 2;
        while (*v == '/')
            v++;
    }
    struct strbuf b;
    sb_init(&b);
    sb_puts(&b, basedir);
    if (*v) {
        if (b.len == 0 || b.s[b.len - 1] != '/')
            sb_puts(&b, "/");
        sb_puts(&b, v);
    }
    return sb_steal(&b);
}

/* ---- string checks ------------------------------------------------------------- */

int cv_valid_hostname(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253 || s[0] == '.' || s[0] == '-')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
              ch == '.'))
            return 0;
    }
    return 1;
}

/* Letters, digits, `.`, `_`, `-`; 1..max characters; not starting with `-`. */
/* letters, digits, `-`, `.`, `_` */
static int token_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
           ch == '.' || ch == '_';
}

int cv_valid_token(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max || s[0] == '-')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!token_char(s[i]))
            return 0;
    return 1;
}

int cv_valid_user(const char *s)
{
    return cv_valid_token(s, 32);
}

int cv_valid_ttype(const char *s)
{
    return transport_find(s) != NULL;
}

/* A recipient domain: letters, digits, `-`, `_`, `.`; no empty label. */
int cv_valid_domain(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253 || s[0] == '.' || s[n - 1] == '.' || strstr(s, ".."))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!token_char(s[i]))
            return 0;
    return 1;
}

/* A DNS name as DKIM uses it (RFC 6376 3.5 domain-name and selector): dot-
 * separated labels of 1-63 letters, digits and `-`, not starting or
 * ending with `-`; at most 253 characters; no trailing dot. */
int cv_valid_dns_name(const char *s)
{
    size_t n = strlen(s), label = 0;
    if (n == 0 || n > 253)
        return 0;
    for (size_t i = 0; i <= n; i++) {
        char ch = s[i];
        if (ch == '.' || ch == '\0') {
            if (label == 0 || label > 63 || s[i - 1] == '-')
                return 0;
            label = 0;
            continue;
        }
        if (label == 0 && ch == '-')
            return 0;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-'))
            return 0;
        label++;
    }
    return 1;
}

/* A header field name (RFC 5322 ftext: printable ASCII but `:`), without
 * `;` which would break the DKIM-Signature tag list. */
int cv_valid_field_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > FIELD_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 33 || ch > 126 || ch == ':' || ch == ';')
            return 0;
    }
    return 1;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (m 1-12). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

/* YYYY-MM-DD (UTC, 1970-01-01 to 9999-12-31) into unix time at 00:00. */
int cv_parse_date(const char *s, int64_t *out)
{
    static const unsigned mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (strlen(s) != 10 || s[4] != '-' || s[7] != '-')
        return -1;
    unsigned v[3] = {0, 0, 0};
    static const int start[] = {0, 5, 8}, len[] = {4, 2, 2};
    for (int f = 0; f < 3; f++) {
        for (int i = 0; i < len[f]; i++) {
            char ch = s[start[f] + i];
            if (ch < '0' || ch > '9')
                return -1;
            v[f] = v[f] * 10 + (unsigned)(ch - '0');
        }
    }
    unsigned y = v[0], m = v[1], d = v[2];
    if (y < 1970 || m < 1 || m > 12 || d < 1)
        return -1;
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (d > mdays[m - 1] + (m == 2 && leap ? 1u : 0u))
        return -1;
    *out = days_from_civil(y, m, d) * (int64_t)DAY;
    return 0;
}

