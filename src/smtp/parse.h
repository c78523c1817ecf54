/* parse: pure SMTP parsers — no sockets, no allocation unless stated, no
 * globals. The command-line reader, the command splitter, the MAIL/RCPT
 * path + ESMTP parameter parser (SIZE, BODY, SMTPUTF8, RET, ENVID, NOTIFY,
 * ORCPT, AUTH), xtext. Unit-tested (tests/unit/test_parse.c) and fuzzed
 * (tests/fuzz/fuzz_parse.c). */
#ifndef SUBMITD_PARSE_H
#define SUBMITD_PARSE_H

#include <stddef.h>
#include <stdint.h>

enum parse_res { PARSE_NEED_MORE = 0, PARSE_OK = 1, PARSE_ERR = -1 };

/* ---- Command line reader (resumable) ---------------------------------
 * Finds the next command line in buf[0..len). A line ends with LF; a CR
 * right before the LF is stripped. Lines longer than `max` octets
 * (counting the CRLF) are an error: the reader then discards bytes up to
 * and including the next LF (possibly over several calls) and reports
 * LINE_TOO_LONG once that LF is seen, so the caller replies once and
 * resynchronises on the next command.
 * Returns:
 *   LINE_NEED_MORE  - no complete line yet; *consumed bytes may be dropped
 *                     (non-zero only while discarding a long line)
 *   LINE_OK         - *line_len bytes at buf are the line without CR/LF,
 *                     *consumed bytes (line + terminator) to drop
 *   LINE_TOO_LONG   - an over-long line has been fully discarded;
 *                     *consumed bytes to drop
 * A NUL byte inside a line is reported as LINE_OK; callers check with
 * memchr (commands containing NUL are refused by the command parser). */
enum line_res { LINE_NEED_MORE = 0, LINE_OK = 1, LINE_TOO_LONG = 2 };
struct line_reader {
    size_t max;      /* max octets per line including CRLF */
    int discarding;  /* internal: inside an over-long line */
};
void line_reader_init(struct line_reader *lr, size_t max);
enum line_res line_reader_next(struct line_reader *lr, const char *buf, size_t len, size_t *line_len,
                               size_t *consumed);

/* ---- Command splitter --------------------------------------------------
 * Identifies the verb (case-insensitive) of a command line without CRLF.
 * `args` points after the verb and any single separating space (MAIL FROM
 * and RCPT TO keep "FROM:"/"TO:" in args). Unknown verbs give CMD_UNKNOWN.
 * A line with a NUL or other control byte (except TAB) gives CMD_INVALID. */
enum smtp_cmd {
    CMD_INVALID = -1,
    CMD_UNKNOWN = 0,
    CMD_HELO, CMD_EHLO, CMD_MAIL, CMD_RCPT, CMD_DATA, CMD_BDAT, CMD_RSET,
    CMD_NOOP, CMD_QUIT, CMD_HELP, CMD_VRFY, CMD_EXPN, CMD_STARTTLS, CMD_AUTH,
    CMD__COUNT
};
enum smtp_cmd smtp_cmd_parse(const char *line, size_t len, const char **args);
const char *smtp_cmd_name(enum smtp_cmd c);

/* ---- Paths and ESMTP parameters ---------------------------------------- */
#define SMTP_PATH_MAX 320   /* RFC 5321 4.5.3.1.3: 256 for the path; we allow local 64 + @ + 255 */
#define SMTP_ENVID_MAX 100  /* RFC 3461 4.4 */
#define SMTP_ORCPT_MAX 500

enum body_type { BODY_UNSPEC = 0, BODY_7BIT, BODY_8BITMIME, BODY_BINARYMIME };
enum dsn_ret { DSN_RET_UNSPEC = 0, DSN_RET_FULL, DSN_RET_HDRS };
enum dsn_notify { /* bits */
    DSN_NOTIFY_NEVER = 1, DSN_NOTIFY_SUCCESS = 2, DSN_NOTIFY_FAILURE = 4, DSN_NOTIFY_DELAY = 8
};

struct mail_args {
    char path[SMTP_PATH_MAX + 1]; /* without <>; "" = null sender */
    uint64_t size;                /* 0 when SIZE not given */
    int has_size;
    enum body_type body;
    int smtputf8;
    enum dsn_ret ret;
    char envid[SMTP_ENVID_MAX + 1]; /* xtext-decoded; "" when absent */
    char auth[SMTP_PATH_MAX + 1];   /* AUTH= value decoded ("<>" kept), "" when absent */
};

struct rcpt_args {
    char path[SMTP_PATH_MAX + 1];
    unsigned notify;              /* dsn_notify bits; 0 when absent */
    char orcpt[SMTP_ORCPT_MAX + 1]; /* "rfc822;addr" xtext-decoded; "" when absent */
};

/* Error detail for replies: which rule was broken. */
enum path_err {
    PE_OK = 0,
    PE_SYNTAX,         /* 501 5.5.4 "Syntax: MAIL FROM:<address>" / "RCPT TO:<address>" */
    PE_ADDRESS,        /* 501 5.1.7 (sender) / 501 5.1.3 (recipient) bad address */
    PE_PARAM_UNKNOWN,  /* 555 5.5.4 unrecognised parameter */
    PE_PARAM_VALUE,    /* 501 5.5.4 bad parameter value */
    PE_PARAM_DUP,      /* 501 5.5.4 parameter repeated */
    PE_TOO_LONG,       /* 501 5.5.4 path or value too long */
    PE_UTF8_NEEDS_SMTPUTF8 /* 553 5.6.7 non-ASCII address without SMTPUTF8 */
};

/* args: what follows the verb, e.g. "FROM:<a@b> SIZE=10 BODY=8BITMIME".
 * Accepts "FROM:<...>" with optional spaces after the colon (common client
 * behaviour), rejects addresses without angle brackets. Addresses: dot-atom
 * or quoted-string local part, domain name or address literal; source routes
 * (@a,@b:) are accepted and dropped. Non-ASCII (UTF-8) allowed only when
 * SMTPUTF8 is among the parameters (MAIL) / `utf8_ok` (RCPT). Sets *perr and
 * returns 0 on success, -1 on error. `detail` receives a short text for the
 * reply (e.g. "unknown parameter FOO"). */
int smtp_parse_mail(const char *args, struct mail_args *out, enum path_err *perr, char *detail, size_t dlen);
int smtp_parse_rcpt(const char *args, int utf8_ok, struct rcpt_args *out, enum path_err *perr, char *detail,
                    size_t dlen);

/* Validates a bare address (no <>): 1 valid, 0 not. */
int smtp_address_valid(const char *addr, int utf8_ok);
/* Splits an address at its last '@' (outside quotes): returns pointer to the
 * domain (after @) or NULL when there is none. */
const char *smtp_address_domain(const char *addr);

/* RFC 3461 xtext: decode "+XX" hex escapes; -1 on bad encoding or when
 * the output would not fit (out includes the NUL). Encoding for the spool
 * and outbound DSN parameters. */
int xtext_decode(const char *in, size_t inlen, char *out, size_t outlen);
size_t xtext_encode(const char *in, char *out, size_t outlen); /* returns needed length */

/* ---- base64 (RFC 4648, strict: no whitespace, correct padding) --------- */
/* Returns decoded length, or -1 on invalid input or when outlen is too small. */
long b64_decode(const char *in, size_t inlen, unsigned char *out, size_t outlen);
/* Returns the encoded length (without NUL); out must hold 4*((n+2)/3)+1. */
size_t b64_encode(const unsigned char *in, size_t n, char *out, size_t outlen);

#endif
