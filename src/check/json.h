/* json: a small streaming JSON writer into a strbuf, for submitcheck's
 * --json report. Strings are escaped per RFC 8259: '"' and '\' escaped,
 * control bytes as \b \f \n \r \t or \u00XX, DEL as \u007f, and any byte
 * sequence that is not valid UTF-8 (overlong forms, surrogates, code points
 * above U+10FFFF, truncated sequences) replaced by U+FFFD, so the output
 * is always valid UTF-8 JSON whatever a server sent. Nesting is bounded
 * (JSON_MAX_DEPTH); pretty output indents by two spaces. */
#ifndef SUBMITD_JSON_H
#define SUBMITD_JSON_H

#include <stddef.h>

#include "core/util.h"

#define JSON_MAX_DEPTH 16

struct json {
    struct strbuf *out;
    int pretty;
    int depth;
    int count[JSON_MAX_DEPTH + 1]; /* members written at each level */
    int overflow;                  /* nesting deeper than JSON_MAX_DEPTH was attempted */
};

/* Appends the escaped form of s[0..n) (without the surrounding quotes). */
void json_escape(struct strbuf *out, const char *s, size_t n);

void json_init(struct json *j, struct strbuf *out, int pretty);
/* `key` is the member name inside an object, NULL inside an array or at
 * the top level. */
void json_obj_begin(struct json *j, const char *key);
void json_obj_end(struct json *j);
void json_arr_begin(struct json *j, const char *key);
void json_arr_end(struct json *j);
void json_str(struct json *j, const char *key, const char *val); /* NULL val writes null */
void json_int(struct json *j, const char *key, long long val);
void json_bool(struct json *j, const char *key, int val);
void json_null(struct json *j, const char *key);

#endif
