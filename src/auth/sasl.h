/* sasl: the server side of SASL PLAIN (RFC 4616) and LOGIN, as a pure
 * state machine over base64 lines: no I/O, no account lookup. The session
 * feeds it the AUTH arguments and each client line; it answers with the
 * next challenge or the decoded credentials. Buffers holding secrets are
 * wiped by sasl_clear(). */
#ifndef SUBMITD_SASL_H
#define SUBMITD_SASL_H

#include <stddef.h>

#define SASL_USER_MAX 256
#define SASL_PASS_MAX 1024

enum sasl_res {
    SASL_CONTINUE = 0,  /* send "334 " + challenge (base64, may be empty) */
    SASL_DONE,          /* credentials in user/authzid/pass */
    SASL_CANCELLED,     /* client sent "*": 501 5.7.0 */
    SASL_BAD_BASE64,    /* 501 5.5.2 */
    SASL_BAD_SYNTAX,    /* 501 5.5.2 malformed PLAIN message, too long, NUL in LOGIN, ... */
    SASL_BAD_MECH       /* 504 5.5.4 unknown mechanism */
};

struct sasl {
    int mech;  /* internal */
    int step;  /* internal */
    char authzid[SASL_USER_MAX + 1];
    char user[SASL_USER_MAX + 1];
    char pass[SASL_PASS_MAX + 1];
};

/* args: the text after "AUTH ", e.g. "PLAIN dGVzdAB0ZXN0AHRlc3Q=" or
 * "LOGIN". An initial response of "=" means empty. On SASL_CONTINUE,
 * `challenge` holds the base64 text to send after "334 ". */
enum sasl_res sasl_start(struct sasl *s, const char *args, char *challenge, size_t clen);
/* One client line (without CRLF). */
enum sasl_res sasl_step(struct sasl *s, const char *line, char *challenge, size_t clen);
void sasl_clear(struct sasl *s);

#endif
