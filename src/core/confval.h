/* confval: the pure syntax of configuration values (config.c): numbers,
 * sizes with K/M/G, durations, booleans, host, user, domain and header
 * field names, dates, and paths made absolute against the config's
 * directory. No parser state, no I/O. */
#ifndef SUBMITD_CONFVAL_H
#define SUBMITD_CONFVAL_H

#include <stddef.h>
#include <stdint.h>

#include "core/util.h"

#define KIB 1024ull
#define MIB (1024ull * 1024)
#define GIB (1024ull * 1024 * 1024)
#define MINUTE 60ull
#define HOUR 3600ull
#define DAY 86400ull
#define FIELD_NAME_MAX 128 /* a header field name in `headers` */

/* Leading decimal digits of s into *v; returns the end or NULL (none, or
 * overflow). */
const char *cv_parse_digits(const char *s, uint64_t *v);
/* 0, or -1 when s is not of the form (or overflows). */
int cv_parse_uint(const char *s, uint64_t *out);
int cv_parse_size(const char *s, uint64_t *out);                       /* 10M, 512K, 1G, 42 */
int cv_parse_duration_ms(const char *s, uint64_t plain_ms, uint64_t *out); /* 5m, 30s, 2h, 1d, 250ms; a plain number times plain_ms */
int cv_parse_bool(const char *s, uint64_t *out);                       /* yes/no/on/off/true/false/1/0 */
int cv_parse_date(const char *s, int64_t *out);                        /* YYYY-MM-DD, midnight UTC */

/* Readable forms for messages (appended to b). */
void cv_fmt_size(struct strbuf *b, uint64_t v);
void cv_fmt_secs(struct strbuf *b, uint64_t v);
void cv_fmt_msecs(struct strbuf *b, uint64_t v);

/* 1 when s is acceptable, else 0. */
int cv_valid_hostname(const char *s);
int cv_valid_token(const char *s, size_t max);
int cv_valid_user(const char *s);
int cv_valid_ttype(const char *s);
int cv_valid_domain(const char *s);
int cv_valid_dns_name(const char *s);
int cv_valid_field_name(const char *s);

/* v made absolute against basedir (NULL: as is); allocated. */
char *cv_abs_path(const char *basedir, const char *v);

#endif
