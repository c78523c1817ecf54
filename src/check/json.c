/* json: the streaming JSON writer declared in json.h (escaping with UTF-8
 * validation, objects/arrays with optional two-space indentation). */
#include "check/json.h"

#include <stdio.h>
#include <string.h>

/* Length of the valid UTF-8 sequence at s[0..n), or 0 when invalid. */
static size_t utf8_valid_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1fu;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0fu;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07u;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3fu);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

void json_escape(struct strbuf *out, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        const char *esc = NULL;
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default: break;
        }
        if (esc) {
            sb_puts(out, esc);
            i++;
            continue;
        }
        if (c < 0x20 || c == 0x7f) {
            sb_printf(out, "\\u%04x", c);
            i++;
            continue;
        }
        size_t len = utf8_valid_len(p + i, n - i);
        if (len == 0) {
            sb_puts(out, "\\ufffd");
            i++;
            continue;
        }
        sb_append(out, p + i, len);
        i += len;
    }
}

void json_init(struct json *j, struct strbuf *out, int pretty)
{
    memset(j, 0, sizeof(*j));
    j->out = out;
    j->pretty = pretty;
}

static void newline_indent(struct json *j)
{
    if (!j->pretty)
        return;
    sb_puts(j->out, "\n");
    for (int i = 0; i < j->depth; i++)
        sb_puts(j->out, "  ");
}

/* Separator, indentation and "key": before a value. */
static void member(struct json *j, const char *key)
{
    if (j->count[j->depth] > 0)
        sb_puts(j->out, ",");
    if (j->depth > 0)
        newline_indent(j);
    j->count[j->depth]++;
    if (key) {
        sb_puts(j->out, "\"");
        json_escape(j->out, key, strlen(key));
        sb_puts(j->out, j->pretty ? "\": " : "\":");
    }
}

static void open_level(struct json *j, const char *key, const char *bracket)
{
    member(j, key);
    sb_puts(j->out, bracket);
    if (j->depth < JSON_MAX_DEPTH) {
        j->depth++;
        j->count[j->depth] = 0;
    } else {
        j->overflow++;
    }
}

static void close_level(struct json *j, const char *bracket)
{
    if (j->overflow > 0) {
        j->overflow--;
    } else if (j->depth > 0) {
        int had = j->count[j->depth];
        j->depth--;
        if (had)
            newline_indent(j);
    }
    sb_puts(j->out, bracket);
}

void json_obj_begin(struct json *j, const char *key)
{
    open_level(j, key, "{");
}

void json_obj_end(struct json *j)
{
    close_level(j, "}");
}

void json_arr_begin(struct json *j, const char *key)
{
    open_level(j, key, "[");
}

void json_arr_end(struct json *j)
{
    close_level(j, "]");
}

void json_str(struct json *j, const char *key, const char *val)
{
    member(j, key);
    if (!val) {
        sb_puts(j->out, "null");
        return;
    }
    sb_puts(j->out, "\"");
    json_escape(j->out, val, strlen(val));
    sb_puts(j->out, "\"");
}

void json_int(struct json *j, const char *key, long long val)
{
    member(j, key);
    sb_printf(j->out, "%lld", val);
}

void json_bool(struct json *j, const char *key, int val)
{
    member(j, key);
    sb_puts(j->out, val ? "true" : "false");
}

void json_null(struct json *j, const char *key)
{
    member(j, key);
    sb_puts(j->out, "null");
}
