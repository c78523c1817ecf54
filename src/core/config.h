/* config: the daemon's configuration as plain data. The file format (see
 * docs/config.md and etc/submitd.conf) is line based: `key value...`, with
 * `name ARG {` ... `}` blocks; `#` starts a comment; values may be
 * "double quoted". Every key is declared once in a table in config.c with
 * its type, bounds and default; errors come back as `file:line: message`.
 * A loaded config is immutable and reference counted: a reload (SIGHUP)
 * builds a new one and swaps it in, sessions keep the one they started
 * with until they end. */
#ifndef SUBMITD_CONFIG_H
#define SUBMITD_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "core/cidr.h"
#include "core/util.h"

enum listen_mode { LISTEN_STARTTLS = 0, LISTEN_IMPLICIT_TLS = 1 };

struct cert_pair {
    char *cert; /* PEM chain, leaf first */
    char *key;  /* PEM private key; must not be readable by group/others */
    int line;
};

struct listener_cfg {
    char *name;
    int line;
    char **addrs; /* "127.0.0.1", "::1", "0.0.0.0", "::" ... (default 127.0.0.1) */
    size_t naddrs;
    uint16_t port;
    enum listen_mode mode;
    struct cert_pair *certs; /* when empty, the tls block's certificates */
    size_t ncerts;
    struct cidr_list allow; /* empty = everybody (before deny) */
    struct cidr_list deny;  /* checked first: a match is refused */
    struct cidr_list trusted; /* clients that may MAIL without STARTTLS and AUTH (local applications);
                                 refused on ports 587/465 and implicit-tls, and /0 networks */
    unsigned max_conn;        /* default 1000 */
    unsigned max_conn_per_ip; /* default 20 */
};

struct tls_cfg {
    struct cert_pair *certs; /* default certificates; several = SNI / key types */
    size_t ncerts;
    int min_version;      /* 0x0303 (TLS 1.2, default) or 0x0304 (TLS 1.3) */
    char *ciphers;        /* TLS 1.2 cipher list (OpenSSL syntax) */
    char *ciphersuites;   /* TLS 1.3 suites */
    int session_tickets;  /* default 1 */
    unsigned handshake_timeout; /* seconds, default 30 */
};

struct limits_cfg {
    size_t line_length;        /* command line, default 4096 [512..65536] */
    size_t auth_line_length;   /* AUTH lines, default 12288 [1024..65536] */
    size_t text_line_length;   /* DATA text line incl CRLF, default 1000 [1000..1000000] */
    uint64_t message_size;     /* default 25 MiB [1 KiB..2 GiB] */
    size_t header_size;        /* header section kept for checks, default 1 MiB */
    unsigned recipients;       /* per message, default 100 [1..100000] */
    unsigned messages;         /* per session, default 1000 [1..1000000] */
    unsigned errors;           /* per session before 421, default 10 [1..1000] */
    unsigned auth_failures;    /* per session before 421, default 3 [1..100] */
    unsigned idle_timeout;     /* s, waiting for a command, default 300 */
    unsigned data_timeout;     /* s, between DATA/BDAT reads, default 600 */
    unsigned auth_delay_ms;    /* first failure delay, default 1000 [0..60000] */
    unsigned auth_delay_max_ms;/* cap, default 30000 */
    unsigned shutdown_timeout; /* s, SIGTERM grace for transactions in flight, default 30 */
};

/* A delivery transport. `type` picks the implementation (maildir here;
 * smarthost and mx come with the relay work). Options not known to the
 * core are kept as key/values for the transport to check. */
struct kv {
    char *key;
    char *value; /* remaining words joined by single spaces */
    int line;
};

struct transport_cfg {
    char *name;
    char *type;
    int line;
    char *path; /* maildir: may contain %u (local part), %d (domain), %a (address) */
    struct kv *opts;
    size_t nopts;
    const char *hostname; /* the config's `hostname` (network transports' default HELO); owned by the config */
};

/* route PATTERN TRANSPORT: PATTERN is a recipient domain, "*.domain" or
 * "*" (the default). First match wins; exact before wildcard. */
struct route_cfg {
    char *pattern;
    char *transport;
    int line;
};

/* DKIM signing for one domain (block `dkim DOMAIN { ... }`).
 *   key SELECTOR FILE [not-before YYYY-MM-DD]   (repeatable; the algorithm
 *        comes from the key: RSA >= 2048 bits -> rsa-sha256, Ed25519 ->
 *        ed25519-sha256)
 *   canonicalization HEADER/BODY   relaxed|simple, default relaxed/relaxed
 *   headers NAME...                signed header fields (replaces the default)
 *   oversign NAME...               fields signed once more than present
 *                                  (default From)
 *   subdomains yes|no              also sign mail From: subdomains, with
 *                                  d= this domain (default yes)
 *   required yes|no                a signing failure defers the message
 *                                  (451 4.7.5) instead of sending unsigned
 *                                  (default no) */
enum dkim_alg { DKIM_ALG_RSA_SHA256 = 1, DKIM_ALG_ED25519_SHA256 = 2 };
enum dkim_canon { DKIM_CANON_SIMPLE = 0, DKIM_CANON_RELAXED = 1 };

struct dkim_key_cfg {
    char *selector;
    char *file;
    int64_t not_before; /* unix time from which this key signs; 0 = always */
    enum dkim_alg alg;  /* from the key's type */
    void *pkey;         /* EVP_PKEY *, loaded and checked by config_load
                           (NULL after config_load_paths) */
    unsigned char ed_sk[64]; /* Ed25519: libsodium's secret key (seed || public
                                key), from pkey (dkim_ed25519_secret) */
    int line;
};

struct dkim_cfg {
    char *domain; /* lower-case */
    int line;
    struct dkim_key_cfg *keys;
    size_t nkeys;
    enum dkim_canon canon_header, canon_body;
    char **headers; /* lower-case field names */
    size_t nheaders;
    char **oversign;
    size_t noversign;
    int subdomains;
    int required;
};

/* The default list of signed header fields. */
extern const char *const dkim_default_headers[];
extern const size_t dkim_default_headers_count;

struct queue_cfg {
    unsigned retry_initial; /* s, default 300 */
    unsigned retry_max;     /* s, default 14400 */
    unsigned lifetime;      /* s, default 5 days */
    unsigned delivery_threads; /* default 16 */
    unsigned delay_warning; /* s after arrival for a "delayed" DSN, default 4h; 0 = never */
    uint64_t bounce_size;   /* a DSN returns the whole message up to this size (without RET), default 256K */
};

/* ---- abuse controls (src/abuse; docs/config.md `ratelimit`, `ratelimit-for`, `abuse`) ---- */
/* A rate limit: `count` events per `period_ms` (for `bytes`: bytes, counted
 * in KiB); count 0 = no limit. */
struct rate_limit {
    uint64_t count;
    uint64_t period_ms;
    int hard; /* past it: 550 5.7.1 instead of 451 4.7.1 (messages, recipients, bytes) */
    int line; /* where it was set; 0 = default (in ratelimit-for: inherited) */
};

struct ratelimit_cfg {
    char *backend;             /* "memory" (default) or "redis://host[:port][/db]" */
    char *redis_host;          /* parsed from backend; NULL = memory */
    unsigned redis_port;       /* default 6379 */
    unsigned redis_db;         /* default 0 */
    unsigned redis_timeout_ms; /* connect and command timeout, default 250 */
    unsigned redis_retry;      /* s before trying Redis again after a failure, default 5 */
    unsigned redis_threads;    /* threads (and connections) asking Redis, default 4 */
    int fail_open;             /* Redis unreachable: 1 local counters (default), 0 refuse (451) */
    unsigned table_size;       /* keys kept in memory, default 100000 */
    struct rate_limit messages, recipients, bytes; /* per account */
    struct rate_limit connections, auth_ip;        /* per client address (IPv6: per /64) */
    struct rate_limit auth_login;                  /* AUTH attempts per login from unknown addresses */
    struct rate_limit fail_ip, fail_login;         /* brute force: this many failures block */
    unsigned block_time;       /* s a brute-force block lasts, default 15m */
    unsigned known_ip_time;    /* s a successful login keeps its address known, default 30d */
    struct cidr_list exempt;   /* client networks without per-address limits or blocks */
};

/* ratelimit-for KEY { }: limits for one login, or for every login of
 * "@domain" (a login's own block wins over its domain's). */
struct ratelimit_for_cfg {
    char *key; /* lower-case login or "@domain" */
    int line;
    struct rate_limit messages, recipients, bytes;
    int detect; /* -1 inherit from the abuse block, 0 no, 1 yes */
};

enum abuse_action { ABUSE_ALERT = 0, ABUSE_HOLD = 1, ABUSE_SUSPEND = 2 };

struct abuse_cfg {
    int detect;              /* compromised-account detection, default yes */
    int action;              /* enum abuse_action, default alert */
    unsigned window;         /* s: the baseline's unit ("per hour"), default 1h */
    unsigned multiple;       /* trips past multiple x baseline, default 10 */
    unsigned min_messages;   /* ... and never below this many per window, default 100 */
    unsigned min_recipients; /* distinct recipients per window, default 500 */
    unsigned max_ips;        /* client addresses per ip-window, default 10; 0 = not checked */
    unsigned ip_window;      /* s, default 1h */
    unsigned max_accounts;   /* account profiles kept in memory, default 100000 */
};
/* ---- end of abuse controls ---- */

struct config {
    int refs;          /* atomic via config_ref/unref */
    char *file;

    char *hostname;    /* default: gethostname() */
    char *user;        /* drop to this user when started as root; default "submitd" */
    unsigned workers;  /* event loop threads; 0 = one per core (default) */
    int incoming_cpu;  /* worker i's listeners take the connections the kernel
                          handles on the i-th CPU (SO_INCOMING_CPU); default 1 */
    char *spool_dir;   /* default /var/spool/submitd */
    char *accounts;    /* accounts file (passwd-file format) */
    char *pid_file;    /* optional */
    char *control_socket; /* submitctl queue ...; default <spool-dir>/control.sock */
    int log_syslog;    /* log stderr|syslog */
    int log_level;     /* enum log_level */
    int listen_backlog;/* default 4096 */
    unsigned auth_threads; /* password-hash threads; 0 = cores (default) */
    unsigned auth_cache_ttl; /* s a verified login+password is remembered (keyed hash); default 300, 0 = off */
    unsigned commit_threads; /* spool fsync threads, default 8 */
    unsigned journal_segments; /* journal segment files (8 MiB) at most, default 16 */
    int add_received;   /* default 1 */
    int add_message_id; /* default 1 */
    int add_date;       /* default 1 */
    int check_from_header; /* default 1: From: must be one of the account's addresses */
    int allow_null_sender; /* default 1: MAIL FROM:<> allowed for authenticated users */

    struct tls_cfg tls;
    struct limits_cfg limits;
    struct queue_cfg queue;
    struct ratelimit_cfg ratelimit; /* abuse controls (src/abuse) */
    struct abuse_cfg abuse;
    struct ratelimit_for_cfg *ratelimit_for;
    size_t nratelimit_for;

    struct listener_cfg *listeners;
    size_t nlisteners;
    struct transport_cfg *transports;
    size_t ntransports;
    struct route_cfg *routes;
    size_t nroutes;
    struct dkim_cfg *dkim;
    size_t ndkim;
};

/* Parses and checks the file. On any error returns NULL and fills errs
 * with `file:line: message` entries (all of them, not just the first).
 * Checks done here: syntax, unknown keys, types and bounds, duplicates,
 * required keys, certificate/key/accounts files exist and are readable,
 * private keys and the accounts file not readable by group or others,
 * every route names a defined transport, a `route *` exists, transports'
 * types are known. Certificates are parsed by tls_check_config(). */
struct config *config_load(const char *path, struct errlist *errs);
/* The same checks except that files (certificates, keys, accounts) need
 * not exist: for tools that only want the paths, e.g. submitctl adding
 * the first account. */
struct config *config_load_paths(const char *path, struct errlist *errs);
/* Same, from a string (for tests); `name` is used in messages. */
struct config *config_parse_string(const char *name, const char *text, struct errlist *errs);

struct config *config_ref(struct config *c);
void config_unref(struct config *c);

/* Looks up the transport for a recipient domain by the route table
 * (NULL when no route matches). */
const struct transport_cfg *config_route(const struct config *c, const char *domain);
const struct listener_cfg *config_listener(const struct config *c, const char *name);
/* The DKIM block for a From: domain: the exact domain, else the nearest
 * parent whose block has `subdomains yes`. NULL when none. */
const struct dkim_cfg *config_dkim(const struct config *c, const char *domain);
/* The key of each algorithm that signs at time `now`: for each algorithm,
 * among the keys whose not_before <= now, the one with the latest
 * not_before (the last listed wins a tie). out[0] RSA, out[1] Ed25519;
 * NULL where none. */
void config_dkim_active(const struct dkim_cfg *d, int64_t now, const struct dkim_key_cfg *out[2]);

#endif
