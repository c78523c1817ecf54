/* relay: the outbound SMTP side shared by the smarthost and mx transports
 * (docs/relay.md). Four parts:
 *   - options: the transport block's key/values parsed and checked once
 *     (relay_opts_parse, also for `submitd -t`), the credentials file;
 *   - the client transaction driver on a struct smtpc (smtp/client.h):
 *     greeting, EHLO (HELO fallback), STARTTLS policy, AUTH PLAIN/LOGIN,
 *     MAIL/RCPT/DATA with PIPELINING, SIZE, 8BITMIME, SMTPUTF8, DSN; one
 *     result per recipient; RSET to reuse; QUIT;
 *   - the connection pool of a transport instance: idle connections per
 *     destination for reuse, per-destination and global connection limits;
 *   - pure helpers (URL, durations, dot-stuffing, command building, reply
 *     to result mapping), unit-tested in tests/unit/test_relay.c.
 * Everything here runs on the queue's delivery threads and blocks, bounded
 * by the configured timeouts. */
#ifndef SUBMITD_RELAY_H
#define SUBMITD_RELAY_H

#include <openssl/ssl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/config.h"
#include "core/log.h"
#include "queue/transport.h"
#include "relay/dns.h"
#include "smtp/client.h"

/* ---- options ------------------------------------------------------------------- */

enum relay_kind { RELAY_SMARTHOST = 0, RELAY_MX = 1 };

enum tls_policy {
    TLSP_OFF = 0,       /* mx: never STARTTLS */
    TLSP_OPPORTUNISTIC, /* mx default: STARTTLS when offered; a failed handshake retries in plain text once */
    TLSP_REQUIRED,      /* STARTTLS must be offered and succeed (smarthost smtp:// default) */
    TLSP_OPTIONAL,      /* smarthost `starttls optional`: STARTTLS when offered, else plain (logged loudly) */
    TLSP_IMPLICIT,      /* smarthost smtps:// */
};

struct relay_cred {
    char *login;
    char *password;
};

#define RELAY_MAX_CREDS 16

struct relay_opts {
    enum relay_kind kind;
    char name[72];            /* transport name */
    char host[256];           /* smarthost: from the url (no brackets) */
    uint16_t port;            /* smarthost: url port; mx: `port` (25) */
    enum tls_policy tls;
    int tls_verify;           /* smarthost default 1, mx default 0 */
    int chunking;             /* BDAT when the server offers CHUNKING and PIPELINING, default 1 */
    char *ca_file;            /* NULL = system store */
    char *auth_file;          /* smarthost: credentials file, NULL = no AUTH */
    char helo[256];           /* default: gethostname() */
    struct dns_opts dns;
    unsigned connect_timeout_ms; /* default 30 s */
    unsigned command_timeout_ms; /* default 5 min */
    unsigned data_timeout_ms;    /* final reply after the dot, default 10 min */
    unsigned max_conn;           /* instance-wide, default 20 */
    unsigned max_conn_per_dest;  /* per destination address, default 5 */
    unsigned max_msgs_per_conn;  /* reuse limit, default 100 */
    unsigned idle_ms;            /* an idle connection is kept this long, default 10 s (0 = no reuse) */
    unsigned limit_wait_ms;      /* wait for a free connection slot, default 60 s */
    unsigned max_rcpts;          /* per transaction, default 100 */
    unsigned max_addrs;          /* mx: addresses tried per delivery, default 10 */
};

/* Parses and checks cfg->opts for a transport of `kind`. Errors (file:line)
 * go to errs (file may be NULL). 0 or -1. Reads nothing from disk. */
int relay_opts_parse(const struct transport_cfg *cfg, enum relay_kind kind, struct relay_opts *o,
                     const char *file, struct errlist *errs);
/* Checks the files the options name (ca-file readable; auth-file readable,
 * a regular file, not accessible by others nor writable by its group, and
 * well-formed). 0 or -1 with errors at the option's line. */
int relay_opts_check_files(const struct transport_cfg *cfg, const struct relay_opts *o, const char *file,
                           struct errlist *errs);
void relay_opts_free(struct relay_opts *o);

/* "smtp://host[:port]" (port 587) or "smtps://host[:port]" (465); host may
 * be [IPv6]. 0, or -1 with *why. */
int relay_parse_url(const char *url, char *host, size_t hostlen, uint16_t *port, int *implicit_tls,
                    const char **why);
/* "30s", "5m", "2h", "1d", "250ms"; a plain number is seconds. 0 or -1. */
int relay_parse_duration(const char *s, uint64_t *ms);

/* The credentials file: `login password` lines (the password is the rest
 * of the line after the first run of spaces/tabs), `#` comments and blank
 * lines ignored, at most RELAY_MAX_CREDS. 0, or -1 with err (never
 * containing a password). */
int relay_creds_parse(const char *text, size_t len, struct relay_cred **out, size_t *n, char *err, size_t errlen);
int relay_creds_load(const char *path, struct relay_cred **out, size_t *n, char *err, size_t errlen);
void relay_creds_free(struct relay_cred *v, size_t n); /* wipes the passwords */

/* ---- pure protocol helpers --------------------------------------------------------- */

enum {
    EXT_PIPELINING = 1 << 0,
    EXT_SIZE = 1 << 1,
    EXT_8BITMIME = 1 << 2,
    EXT_SMTPUTF8 = 1 << 3,
    EXT_DSN = 1 << 4,
    EXT_STARTTLS = 1 << 5,
    EXT_AUTH_PLAIN = 1 << 6,
    EXT_AUTH_LOGIN = 1 << 7,
    EXT_ENHANCED = 1 << 8,
    EXT_CHUNKING = 1 << 9,
};

/* Messages up to this size (the delivered form) go with BDAT when the
 * server offers CHUNKING and PIPELINING: MAIL, RCPT, `BDAT n LAST` and the
 * message in one write, one round trip (RFC 3030). Larger ones use DATA,
 * streamed, rather than being held in memory whole. */
#define RELAY_BDAT_MAX (256 * 1024)

/* Extension bits of an EHLO reply; *size_max = the SIZE value (0 = none). */
unsigned relay_ehlo_ext(const struct smtp_reply *r, uint64_t *size_max);

/* Dot-stuffing of a CRLF message stream for DATA: a '.' at the start of a
 * line gets another '.' in front; dotstuff_end adds CRLF when the data did
 * not end with one, then ".\r\n". */
struct dotstuff {
    int bol;   /* the next byte starts a line */
    int empty; /* nothing fed yet */
};
void dotstuff_init(struct dotstuff *d);
void dotstuff_feed(struct dotstuff *d, const char *in, size_t n, struct strbuf *out);
void dotstuff_end(struct dotstuff *d, struct strbuf *out);

/* "MAIL FROM:<a> [SIZE=n] [BODY=8BITMIME] [SMTPUTF8] [RET=..] [ENVID=..]"
 * with only the parameters `ext` allows (no CRLF). size = bytes sent. */
void relay_mail_cmd(const struct envelope *e, unsigned ext, uint64_t size, struct strbuf *out);
/* "RCPT TO:<a> [NOTIFY=..] [ORCPT=rfc822;xtext]" (NOTIFY/ORCPT when DSN). */
void relay_rcpt_cmd(const struct env_rcpt *r, unsigned ext, struct strbuf *out);
/* 1 when the envelope needs SMTPUTF8 (a non-ASCII address). */
int relay_env_needs_utf8(const struct envelope *e);

/* Result of a reply: 2xx DR_OK, 4xx DR_TEMP, 5xx DR_PERM; text
 * "CODE ENH text (HOST[PEER], in reply to WHAT)", an enhanced code
 * synthesized (X.0.0) when the server gave none; remote = HOST. */
void relay_result_reply(struct delivery_result *res, const struct smtp_reply *r, const char *host,
                        const char *peer, const char *what);
/* A local/connection-level result: "CODE ENH text", remote "". */
void relay_result_set(struct delivery_result *res, enum dresult st, const char *code_enh, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- connections and transactions --------------------------------------------------- */

struct relay_conn {
    struct smtpc *c;
    char host[256];   /* the name we connected to (TLS name, logs) */
    char peer[64];    /* "ip:port" */
    char key[96];     /* pool destination key */
    unsigned ext;
    uint64_t size_max;
    int esmtp;
    int tls;          /* TLS active */
    int verified;     /* peer certificate and name verified */
    unsigned nmsgs;   /* transactions done */
    int clean;        /* no transaction open on the server (fresh, or ended by its final reply) */
    uint64_t idle_since_ms;
    struct relay_conn *next; /* pool idle list */
};

/* Why opening a connection failed. */
struct relay_fail {
    struct delivery_result res; /* DR_TEMP (or DR_PERM) with the text for recipients */
    int tls_failed;             /* the TLS handshake (or verification) failed */
    int auth_failed;            /* every credential was refused */
};

/* What relay_open needs beyond the options. */
struct relay_target {
    const struct sockaddr *sa;
    socklen_t salen;
    const char *host;      /* name for TLS (SNI, verification) and logs */
    int plain;             /* 1: do not STARTTLS (opportunistic retry) */
    SSL_CTX *tls_ctx;
    const struct relay_cred *creds;
    size_t ncreds;
    const struct log_ctx *lc;
};

/* Connects, reads the greeting, EHLO/HELO, STARTTLS by the policy, AUTH.
 * NULL with *f filled when it failed. */
struct relay_conn *relay_open(const struct relay_opts *o, const struct relay_target *t, struct relay_fail *f);
/* RSET on a reused connection: 0 when it answered 250. */
int relay_rset(struct relay_conn *rc);
/* QUIT (best effort, short wait), close, free. NULL is fine. */
void relay_close(struct relay_conn *rc, int quit);

enum relay_tx {
    TX_DONE = 0,   /* every result came from the server; the connection is usable */
    TX_BROKEN,     /* the connection failed before the message was sent: results DR_TEMP, try elsewhere */
    TX_UNCERTAIN,  /* it failed after the final dot: the server may have the message; results DR_TEMP */
};
/* One transaction for rcpts (indexes into m->env.rcpts) → res[0..n). */
enum relay_tx relay_transaction(struct relay_conn *rc, const struct relay_opts *o, struct spool_msg *m,
                                const size_t *rcpts, size_t n, struct delivery_result *res,
                                const struct log_ctx *lc);

/* ---- pool --------------------------------------------------------------------------- */

struct relay_pool;
struct relay_pool *relay_pool_new(const struct relay_opts *o);
/* Closes every idle connection (QUIT) and frees. No connection may be out. */
void relay_pool_free(struct relay_pool *p);
/* Gets a slot for destination `key`: 1 with *conn = an idle connection to
 * reuse (RSET is the caller's), 0 with a slot reserved for a new
 * connection (*conn NULL), -1 when no slot became free within
 * limit-wait. */
int relay_pool_acquire(struct relay_pool *p, const char *key, struct relay_conn **conn);
/* Gives a slot back: conn (may be NULL when the connection failed or was
 * closed) is kept idle when `reusable` and it has not reached the message
 * limit, else closed. */
void relay_pool_release(struct relay_pool *p, const char *key, struct relay_conn *conn, int reusable);

/* Delivers m to rcpts over connections from pool to one of the addresses
 * (tried in order until one takes the transaction). The smarthost's and
 * mx's common loop: reuse an idle connection of each address, else
 * connect; an opportunistic TLS failure retries the same address in
 * plain text. *tried_any = a server answered the transaction. Results for
 * every recipient in res. */
struct relay_attempt {
    const struct relay_opts *o;
    struct relay_pool *pool;
    SSL_CTX *tls_ctx;
    const struct relay_cred *creds;
    size_t ncreds;
    const char *host;           /* name of the destination host */
    const struct log_ctx *lc;
};
enum relay_tx relay_deliver_addrs(const struct relay_attempt *a, const struct sockaddr_storage *addrs, size_t naddrs,
                                  struct spool_msg *m, const size_t *rcpts, size_t n, struct delivery_result *res,
                                  size_t *addrs_used);

/* The instance state shared by smarthost and mx. */
struct relay_inst {
    struct relay_opts o;
    struct relay_pool *pool;
    SSL_CTX *tls_ctx;
    struct relay_cred *creds;
    size_t ncreds;
};
/* Parses (the same checks as check()), loads credentials, builds the TLS
 * context and the pool. NULL with errs. */
struct relay_inst *relay_inst_open(const struct transport_cfg *cfg, enum relay_kind kind, struct errlist *errs);
void relay_inst_close(struct relay_inst *ri);
/* check(): options and files. */
int relay_inst_check(const struct transport_cfg *cfg, enum relay_kind kind, const char *file, struct errlist *errs);

extern const struct transport_ops smarthost_transport;
extern const struct transport_ops mx_transport;

#endif
