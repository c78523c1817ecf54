/* dataparse: the pure, resumable DATA and BDAT content parsers and the
 * streaming header-section scanner.
 *
 * The DATA parser turns the dot-stuffed wire stream into message bytes
 * (CRLF line endings kept, leading dot removed) and finds the one true
 * end: <CRLF>.<CRLF>. A bare LF or a bare CR anywhere in the stream is a
 * smuggling attempt or a broken client (CVE-2023-51764 class): the parser
 * marks the transaction bad (DP_BARE_LF / DP_BARE_CR) and keeps scanning
 * for the real <CRLF>.<CRLF> only — "\n.\n", "\r.\r", "\n.\r\n" and
 * friends never end the data. Lines longer than the text-line limit are
 * flagged DP_LINE_TOO_LONG; bytes past the size limit are counted but not
 * emitted (DP_TOO_BIG). The first flag raised is kept.
 *
 * The BDAT checker applies the same line rules to chunk content (no dot
 * handling).
 *
 * The header scanner sees the message bytes as they are emitted and
 * records where the header section ends, whether Message-ID and Date are
 * present, and the raw (unfolded) value of the From: field(s). */
#ifndef SUBMITD_DATAPARSE_H
#define SUBMITD_DATAPARSE_H

#include <stddef.h>
#include <stdint.h>

enum dp_flag {
    DP_FLAG_NONE = 0,
    DP_BARE_LF,
    DP_BARE_CR,
    DP_LINE_TOO_LONG,
    DP_TOO_BIG
};

/* Output sink: called with runs of message bytes (never for bytes past
 * max_size). Returns 0 to continue, non-zero to record a write error
 * (the parser then stops calling it but still looks for the end). */
typedef int (*dp_sink_fn)(void *arg, const char *buf, size_t len);

struct data_parser {
    /* settings */
    size_t max_line;     /* text line limit incl. CRLF (1000) */
    uint64_t max_size;   /* bytes of message content accepted */
    dp_sink_fn sink;
    void *sink_arg;
    /* state (internal) */
    int state;
    size_t line_len;
    uint64_t size;       /* message bytes seen (after unstuffing) */
    enum dp_flag flag;   /* first problem seen */
    int sink_failed;
};

enum dp_res { DP_NEED_MORE = 0, DP_DONE = 1 };

void data_parser_init(struct data_parser *p, size_t max_line, uint64_t max_size, dp_sink_fn sink, void *arg);
/* Consumes input; *consumed is how much of buf was used (all of it on
 * DP_NEED_MORE; up to and including the final ".\r\n" on DP_DONE). */
enum dp_res data_parser_feed(struct data_parser *p, const char *buf, size_t len, size_t *consumed);

/* BDAT: same line checks and size limit; every byte belongs to the message. */
struct bdat_checker {
    size_t max_line;
    uint64_t max_size;
    dp_sink_fn sink;
    void *sink_arg;
    int state;
    size_t line_len;
    uint64_t size;
    enum dp_flag flag;
    int sink_failed;
};
void bdat_checker_init(struct bdat_checker *c, size_t max_line, uint64_t max_size, dp_sink_fn sink, void *arg);
void bdat_checker_feed(struct bdat_checker *c, const char *buf, size_t len);
/* At BDAT LAST: a message must end with CRLF (or be empty); a trailing bare
 * CR is flagged DP_BARE_CR. Returns the final flag. */
enum dp_flag bdat_checker_finish(struct bdat_checker *c);

/* ---- Header scanner -------------------------------------------------- */
#define HS_FROM_MAX 4096
struct header_scan {
    size_t max_header;      /* stop collecting after this many bytes */
    uint64_t offset;        /* bytes seen */
    int done;               /* end of header section seen (or limit hit) */
    uint64_t header_end;    /* offset just after the blank line (or of EOF) */
    int has_message_id;
    int has_date;
    int from_count;         /* number of From: fields */
    char from[HS_FROM_MAX]; /* first From: field's value, unfolded, trimmed */
    int from_truncated;
    int malformed;          /* a line in the header section that is neither a
                               field nor a continuation (we then treat the
                               rest as body, like RFC 5322 readers do) */
    int too_long;           /* the header section did not end within max_header */
    /* internal */
    int state;
    char name[80];
    size_t name_len;
    int cur_field;          /* 0 none, 1 From, 2 other */
    size_t from_len;
};
void header_scan_init(struct header_scan *h, size_t max_header);
void header_scan_feed(struct header_scan *h, const char *buf, size_t len);
/* Called at end of message (handles a message with no body/blank line). */
void header_scan_finish(struct header_scan *h);

/* ---- RFC 5322 address-list extraction -------------------------------
 * Parses a From:-style value (mailbox-list / address-list: display names,
 * quoted strings, comments, angle addresses, groups) and returns the
 * addr-specs found, lower-cased domain kept as written. Encoded words in
 * display names are skipped, not decoded. Returns the number of addresses
 * written (max `max`), or -1 on a syntax error. */
#define ADDR_MAX 320
int addrlist_parse(const char *value, char (*out)[ADDR_MAX + 1], int max);

#endif
