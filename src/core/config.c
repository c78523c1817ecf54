/* config: owns the configuration file format and the loaded config. Every
 * key is declared once in a static table per block (name, type, field,
 * bounds, default); one generic parser reads `key value...` lines and
 * `name [ARG] {` ... `}` blocks, reports every problem as `file:line:
 * message`, checks the files the config names (certificates, keys, the
 * accounts file, DKIM keys: present, readable, secrets not open to
 * others) and the cross-references (routes -> transports, listeners ->
 * certificates). A loaded config is immutable and reference counted.
 * Split by role: confval.c (the pure syntax of values), config_dkim.c
 * (`dkim` blocks: keys loaded and checked, look-ups by domain and date),
 * config_abuse.c (rate limits, `ratelimit-for`, the Redis URL); what they
 * share with this file is in config_int.h. */
#include "core/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "core/config_int.h"
#include "core/confval.h"
#include "core/log.h"
#include "dkim/dkim.h"
#include "queue/transport.h"

#define CONFIG_MAX_BYTES (1024 * 1024)

/* ---- the tables ------------------------------------------------------------ */


static void key_cert(struct parser *p, void *base, const struct keydef *k, char **av, int line);
static void key_address(struct parser *p, void *base, const struct keydef *k, char **av, int line);
static void key_cidr(struct parser *p, void *base, const struct keydef *k, char **av, int line);
static void key_trusted(struct parser *p, void *base, const struct keydef *k, char **av, int line);
static void key_route(struct parser *p, void *base, const struct keydef *k, char **av, int line);

static const struct enum_val log_enum[] = {{"stderr", 0}, {"syslog", 1}, {NULL, 0}};
static const struct enum_val level_enum[] = {
    {"error", LOG_LVL_ERR}, {"warn", LOG_LVL_WARN}, {"info", LOG_LVL_INFO}, {"debug", LOG_LVL_DEBUG}, {NULL, 0}};
static const struct enum_val mode_enum[] = {
    {"starttls", LISTEN_STARTTLS}, {"implicit-tls", LISTEN_IMPLICIT_TLS}, {NULL, 0}};
static const struct enum_val tlsver_enum[] = {{"1.2", 0x0303}, {"1.3", 0x0304}, {NULL, 0}};

static const struct keydef top_keys[] = {
    {.name = "hostname", .type = V_STR, FIELD(struct config, hostname), .valid = cv_valid_hostname,
     .form = "a host name (letters, digits, `-` and `.`, at most 253 characters)"},
    {.name = "user", .type = V_STR, FIELD(struct config, user), .def = "submitd", .valid = cv_valid_user,
     .form = "a user name (letters, digits, `.`, `_` and `-`, at most 32 characters)"},
    {.name = "workers", .type = V_UINT, FIELD(struct config, workers), .min = 0, .max = 256, .def = "0"},
    {.name = "incoming-cpu", .type = V_BOOL, FIELD(struct config, incoming_cpu), .def = "yes"},
    {.name = "auth-threads", .type = V_UINT, FIELD(struct config, auth_threads), .min = 0, .max = 256, .def = "0"},
    {.name = "commit-threads", .type = V_UINT, FIELD(struct config, commit_threads), .min = 1, .max = 256,
     .def = "8"},
    {.name = "journal-segments", .type = V_UINT, FIELD(struct config, journal_segments), .min = 2, .max = 4096,
     .def = "16"},
    {.name = "spool-dir", .type = V_PATH, FIELD(struct config, spool_dir), .def = "/var/spool/submitd",
     .form = "spool directory"},
    {.name = "accounts", .type = V_PATH, FIELD(struct config, accounts), .flags = K_REQUIRED | K_READ | K_SECRET,
     .form = "accounts file"},
    {.name = "pid-file", .type = V_PATH, FIELD(struct config, pid_file), .form = "pid file"},
    {.name = "control-socket", .type = V_PATH, FIELD(struct config, control_socket), .form = "control socket"},
    {.name = "log", .type = V_ENUM, FIELD(struct config, log_syslog), .enums = log_enum, .def = "stderr"},
    {.name = "log-level", .type = V_ENUM, FIELD(struct config, log_level), .enums = level_enum, .def = "info"},
    {.name = "listen-backlog", .type = V_UINT, FIELD(struct config, listen_backlog), .min = 1, .max = 65535,
     .def = "4096"},
    {.name = "auth-cache-ttl", .type = V_SECS, FIELD(struct config, auth_cache_ttl), .min = 0, .max = DAY,
     .def = "300"},
    {.name = "add-received", .type = V_BOOL, FIELD(struct config, add_received), .def = "yes"},
    {.name = "add-message-id", .type = V_BOOL, FIELD(struct config, add_message_id), .def = "yes"},
    {.name = "add-date", .type = V_BOOL, FIELD(struct config, add_date), .def = "yes"},
    {.name = "check-from-header", .type = V_BOOL, FIELD(struct config, check_from_header), .def = "yes"},
    {.name = "allow-null-sender", .type = V_BOOL, FIELD(struct config, allow_null_sender), .def = "yes"},
    {.name = "route", .type = V_FN, .fn = key_route, .nargs = 2, .flags = K_MULTI, .form = "PATTERN TRANSPORT"},
};

static const struct keydef tls_keys[] = {
    {.name = "certificate", .type = V_FN, ARRAY(struct tls_cfg, certs, ncerts), .fn = key_cert, .nargs = 2,
     .flags = K_MULTI, .form = "CRT KEY"},
    {.name = "min-version", .type = V_ENUM, FIELD(struct tls_cfg, min_version), .enums = tlsver_enum, .def = "1.2"},
    {.name = "ciphers", .type = V_STR, FIELD(struct tls_cfg, ciphers), .def = "ECDHE+AESGCM:ECDHE+CHACHA20",
     .form = "an OpenSSL cipher list"},
    {.name = "ciphersuites", .type = V_STR, FIELD(struct tls_cfg, ciphersuites),
     .def = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",
     .form = "a list of TLS 1.3 suites"},
    {.name = "session-tickets", .type = V_BOOL, FIELD(struct tls_cfg, session_tickets), .def = "yes"},
    {.name = "handshake-timeout", .type = V_SECS, FIELD(struct tls_cfg, handshake_timeout), .min = 1,
     .max = 600, .def = "30s"},
};

static const struct keydef limits_keys[] = {
    {.name = "line-length", .type = V_SIZE, FIELD(struct limits_cfg, line_length), .min = 512, .max = 65536,
     .def = "4096"},
    {.name = "auth-line-length", .type = V_SIZE, FIELD(struct limits_cfg, auth_line_length), .min = 1024,
     .max = 65536, .def = "12288"},
    {.name = "text-line-length", .type = V_SIZE, FIELD(struct limits_cfg, text_line_length), .min = 1000,
     .max = 1000000, .def = "1000"},
    {.name = "message-size", .type = V_SIZE, FIELD(struct limits_cfg, message_size), .min = KIB, .max = 2 * GIB,
     .def = "25M"},
    {.name = "header-size", .type = V_SIZE, FIELD(struct limits_cfg, header_size), .min = 4 * KIB, .max = 64 * MIB,
     .def = "1M"},
    {.name = "recipients", .type = V_UINT, FIELD(struct limits_cfg, recipients), .min = 1, .max = 100000,
     .def = "100"},
    {.name = "messages", .type = V_UINT, FIELD(struct limits_cfg, messages), .min = 1, .max = 1000000,
     .def = "1000"},
    {.name = "errors", .type = V_UINT, FIELD(struct limits_cfg, errors), .min = 1, .max = 1000, .def = "10"},
    {.name = "auth-failures", .type = V_UINT, FIELD(struct limits_cfg, auth_failures), .min = 1, .max = 100,
     .def = "3"},
    {.name = "idle-timeout", .type = V_SECS, FIELD(struct limits_cfg, idle_timeout), .min = 1, .max = HOUR,
     .def = "5m"},
    {.name = "data-timeout", .type = V_SECS, FIELD(struct limits_cfg, data_timeout), .min = 1, .max = HOUR,
     .def = "10m"},
    {.name = "auth-delay", .type = V_MSECS, FIELD(struct limits_cfg, auth_delay_ms), .min = 0, .max = 60000,
     .def = "1000"},
    {.name = "auth-delay-max", .type = V_MSECS, FIELD(struct limits_cfg, auth_delay_max_ms), .min = 0,
     .max = 600000, .def = "30000"},
    {.name = "shutdown-timeout", .type = V_SECS, FIELD(struct limits_cfg, shutdown_timeout), .min = 0,
     .max = HOUR, .def = "30s"},
};

static const struct keydef queue_keys[] = {
    {.name = "retry-initial", .type = V_SECS, FIELD(struct queue_cfg, retry_initial), .min = 1, .max = DAY,
     .def = "5m"},
    {.name = "retry-max", .type = V_SECS, FIELD(struct queue_cfg, retry_max), .min = 1, .max = 7 * DAY,
     .def = "4h"},
    {.name = "lifetime", .type = V_SECS, FIELD(struct queue_cfg, lifetime), .min = 1, .max = 30 * DAY,
     .def = "5d"},
    {.name = "delivery-threads", .type = V_UINT, FIELD(struct queue_cfg, delivery_threads), .min = 1, .max = 64,
     .def = "16"},
    {.name = "delay-warning", .type = V_SECS, FIELD(struct queue_cfg, delay_warning), .min = 0, .max = 30 * DAY,
     .def = "4h"},
    {.name = "bounce-size", .type = V_SIZE, FIELD(struct queue_cfg, bounce_size), .min = 0, .max = 2 * GIB,
     .def = "256K"},
};

static const struct keydef listener_keys[] = {
    {.name = "address", .type = V_FN, ARRAY(struct listener_cfg, addrs, naddrs), .fn = key_address, .nargs = 1,
     .flags = K_MULTI, .form = "ADDRESS"},
    {.name = "port", .type = V_UINT, FIELD(struct listener_cfg, port), .min = 1, .max = 65535,
     .flags = K_REQUIRED},
    {.name = "mode", .type = V_ENUM, FIELD(struct listener_cfg, mode), .enums = mode_enum, .flags = K_REQUIRED},
    {.name = "certificate", .type = V_FN, ARRAY(struct listener_cfg, certs, ncerts), .fn = key_cert, .nargs = 2,
     .flags = K_MULTI, .form = "CRT KEY"},
    {.name = "allow", .type = V_FN, .off = offsetof(struct listener_cfg, allow), .fn = key_cidr, .nargs = 1,
     .flags = K_MULTI, .form = "NETWORK"},
    {.name = "deny", .type = V_FN, .off = offsetof(struct listener_cfg, deny), .fn = key_cidr, .nargs = 1,
     .flags = K_MULTI, .form = "NETWORK"},
    {.name = "trusted", .type = V_FN, .off = offsetof(struct listener_cfg, trusted), .fn = key_trusted, .nargs = 1,
     .flags = K_MULTI, .form = "NETWORK"},
    {.name = "max-connections", .type = V_UINT, FIELD(struct listener_cfg, max_conn), .min = 1, .max = 1000000,
     .def = "1000"},
    {.name = "max-connections-per-ip", .type = V_UINT, FIELD(struct listener_cfg, max_conn_per_ip), .min = 1,
     .max = 1000000, .def = "20"},
};

/* Keys not listed here are kept in transport_cfg.opts for the transport. */
static const struct keydef transport_keys[] = {
    {.name = "type", .type = V_STR, FIELD(struct transport_cfg, type), .flags = K_REQUIRED, .valid = cv_valid_ttype,
     .form = "a transport type known to this build (such as maildir)"},
    {.name = "path", .type = V_PATH, FIELD(struct transport_cfg, path), .form = "transport path"},
};

/* dkim DOMAIN { }: canonicalization defaults to relaxed/relaxed and the
 * header lists to dkim_default_headers / From (set when a block opens or
 * closes, as they are not single values). */
static const struct keydef dkim_keys[] = {
    {.name = "key", .type = V_FN, ARRAY(struct dkim_cfg, keys, nkeys), .fn = cfg_key_dkim_key, .nargs = 2,
     .nargs_max = 4, .flags = K_MULTI, .form = "SELECTOR FILE [not-before YYYY-MM-DD]"},
    {.name = "canonicalization", .type = V_FN, .fn = cfg_key_dkim_canon, .nargs = 1,
     .form = "HEADER/BODY, each relaxed or simple (such as relaxed/relaxed)"},
    {.name = "headers", .type = V_FN, ARRAY(struct dkim_cfg, headers, nheaders), .fn = cfg_key_dkim_names, .nargs = 1,
     .nargs_max = MAX_WORDS - 1, .flags = K_MULTI, .form = "NAME..."},
    {.name = "oversign", .type = V_FN, ARRAY(struct dkim_cfg, oversign, noversign), .fn = cfg_key_dkim_names,
     .nargs = 1, .nargs_max = MAX_WORDS - 1, .flags = K_MULTI, .form = "NAME... (or none)"},
    {.name = "subdomains", .type = V_BOOL, FIELD(struct dkim_cfg, subdomains), .def = "yes"},
    {.name = "required", .type = V_BOOL, FIELD(struct dkim_cfg, required), .def = "no"},
};

const char *const dkim_default_headers[] = {
    "from", "to", "cc", "subject", "date", "message-id", "reply-to", "mime-version", "content-type",
    "content-transfer-encoding", "in-reply-to", "references", "list-id", "list-unsubscribe",
    "list-unsubscribe-post", "list-help", "list-post", "list-subscribe", "list-owner", "list-archive",
};
const size_t dkim_default_headers_count = ARRAY_LEN(dkim_default_headers);

/* ---- abuse control tables (ratelimit, ratelimit-for, abuse; see src/abuse) ---- */
static const struct enum_val action_enum[] = {
    {"alert", ABUSE_ALERT}, {"hold", ABUSE_HOLD}, {"suspend", ABUSE_SUSPEND}, {NULL, 0}};
#define RATE_LIMIT_KEY(n, T, f)                                                                                        \
    {.name = n, .type = V_FN, .off = offsetof(T, f), .fn = cfg_key_rate_limit, .nargs = 1, .nargs_max = 2,               \
     .form = "COUNT/DURATION [hard], or none"}

/* Limits without a default here get theirs in cfg_abuse_defaults(). */
static const struct keydef ratelimit_keys[] = {
    {.name = "backend", .type = V_FN, .fn = cfg_key_rl_backend, .nargs = 1, .form = "memory or redis://HOST[:PORT][/DB]"},
    {.name = "redis-timeout", .type = V_MSECS, FIELD(struct ratelimit_cfg, redis_timeout_ms), .min = 10,
     .max = 10000, .def = "250ms"},
    {.name = "redis-retry", .type = V_SECS, FIELD(struct ratelimit_cfg, redis_retry), .min = 1, .max = HOUR,
     .def = "5s"},
    {.name = "redis-threads", .type = V_UINT, FIELD(struct ratelimit_cfg, redis_threads), .min = 1, .max = 64,
     .def = "4"},
    {.name = "fail-open", .type = V_BOOL, FIELD(struct ratelimit_cfg, fail_open), .def = "yes"},
    {.name = "table-size", .type = V_UINT, FIELD(struct ratelimit_cfg, table_size), .min = 1000, .max = 10000000,
     .def = "100000"},
    RATE_LIMIT_KEY("messages", struct ratelimit_cfg, messages),
    RATE_LIMIT_KEY("recipients", struct ratelimit_cfg, recipients),
    RATE_LIMIT_KEY("bytes", struct ratelimit_cfg, bytes),
    RATE_LIMIT_KEY("connections", struct ratelimit_cfg, connections),
    RATE_LIMIT_KEY("auth", struct ratelimit_cfg, auth_ip),
    RATE_LIMIT_KEY("auth-login", struct ratelimit_cfg, auth_login),
    RATE_LIMIT_KEY("auth-failures-ip", struct ratelimit_cfg, fail_ip),
    RATE_LIMIT_KEY("auth-failures-login", struct ratelimit_cfg, fail_login),
    {.name = "block-time", .type = V_SECS, FIELD(struct ratelimit_cfg, block_time), .min = 1, .max = 7 * DAY,
     .def = "15m"},
    {.name = "known-ip-time", .type = V_SECS, FIELD(struct ratelimit_cfg, known_ip_time), .min = 0,
     .max = 365 * DAY, .def = "30d"},
    {.name = "exempt", .type = V_FN, .off = offsetof(struct ratelimit_cfg, exempt), .fn = key_cidr, .nargs = 1,
     .flags = K_MULTI, .form = "NETWORK"},
};

static const struct keydef ratelimit_for_keys[] = {
    RATE_LIMIT_KEY("messages", struct ratelimit_for_cfg, messages),
    RATE_LIMIT_KEY("recipients", struct ratelimit_for_cfg, recipients),
    RATE_LIMIT_KEY("bytes", struct ratelimit_for_cfg, bytes),
    {.name = "detect", .type = V_BOOL, FIELD(struct ratelimit_for_cfg, detect)},
};

static const struct keydef abuse_keys[] = {
    {.name = "detect", .type = V_BOOL, FIELD(struct abuse_cfg, detect), .def = "yes"},
    {.name = "action", .type = V_ENUM, FIELD(struct abuse_cfg, action), .enums = action_enum, .def = "alert"},
    {.name = "window", .type = V_SECS, FIELD(struct abuse_cfg, window), .min = 1, .max = DAY, .def = "1h"},
    {.name = "multiple", .type = V_UINT, FIELD(struct abuse_cfg, multiple), .min = 2, .max = 1000, .def = "10"},
    {.name = "min-messages", .type = V_UINT, FIELD(struct abuse_cfg, min_messages), .min = 1, .max = 1000000,
     .def = "100"},
    {.name = "min-recipients", .type = V_UINT, FIELD(struct abuse_cfg, min_recipients), .min = 1, .max = 10000000,
     .def = "500"},
    {.name = "max-ips", .type = V_UINT, FIELD(struct abuse_cfg, max_ips), .min = 0, .max = 31, .def = "10"},
    {.name = "ip-window", .type = V_SECS, FIELD(struct abuse_cfg, ip_window), .min = 1, .max = 7 * DAY,
     .def = "1h"},
    {.name = "max-accounts", .type = V_UINT, FIELD(struct abuse_cfg, max_accounts), .min = 100, .max = 10000000,
     .def = "100000"},
};
_Static_assert(ARRAY_LEN(ratelimit_keys) <= MAX_KEYS && ARRAY_LEN(abuse_keys) <= MAX_KEYS,
               "an abuse key table is longer than parser.seen[]");
/* ---- end of abuse control tables ---- */

enum bkind { B_TOP, B_TLS, B_LIMITS, B_QUEUE, B_LISTENER, B_TRANSPORT, B_DKIM, B_RATELIMIT, B_RLFOR, B_ABUSE };

struct blockdef {
    const char *name;
    enum bkind kind;
    const char *arg; /* `name ARG {`: what ARG is (NULL: the block takes none) */
    const struct keydef *keys;
    size_t nkeys;
};

static const struct blockdef top_block = {"top level", B_TOP, NULL, top_keys, ARRAY_LEN(top_keys)};
static const struct blockdef blocks[] = {
    {"tls", B_TLS, NULL, tls_keys, ARRAY_LEN(tls_keys)},
    {"limits", B_LIMITS, NULL, limits_keys, ARRAY_LEN(limits_keys)},
    {"queue", B_QUEUE, NULL, queue_keys, ARRAY_LEN(queue_keys)},
    {"listener", B_LISTENER, "NAME", listener_keys, ARRAY_LEN(listener_keys)},
    {"transport", B_TRANSPORT, "NAME", transport_keys, ARRAY_LEN(transport_keys)},
    {"dkim", B_DKIM, "DOMAIN", dkim_keys, ARRAY_LEN(dkim_keys)},
    {"ratelimit", B_RATELIMIT, NULL, ratelimit_keys, ARRAY_LEN(ratelimit_keys)},
    {"ratelimit-for", B_RLFOR, "LOGIN|@DOMAIN", ratelimit_for_keys, ARRAY_LEN(ratelimit_for_keys)},
    {"abuse", B_ABUSE, NULL, abuse_keys, ARRAY_LEN(abuse_keys)},
};

_Static_assert(ARRAY_LEN(top_keys) <= MAX_KEYS && ARRAY_LEN(tls_keys) <= MAX_KEYS &&
                   ARRAY_LEN(limits_keys) <= MAX_KEYS && ARRAY_LEN(queue_keys) <= MAX_KEYS &&
                   ARRAY_LEN(listener_keys) <= MAX_KEYS && ARRAY_LEN(transport_keys) <= MAX_KEYS &&
                   ARRAY_LEN(dkim_keys) <= MAX_KEYS,
               "a key table is longer than parser.seen[]");

/* ---- parser state ------------------------------------------------------------ */


void cfg_perr(struct parser *p, int line, const char *fmt, ...)
{
    struct strbuf b;
    sb_init(&b);
    va_list ap;
    va_start(ap, fmt);
    sb_vprintf(&b, fmt, ap);
    va_end(ap);
    errlist_add(p->errs, p->file, line, "%s", b.s ? b.s : "");
    sb_free(&b);
}

void *cfg_field(void *base, size_t off)
{
    return (char *)base + off;
}

/* What a key expects, for error messages. */
static void describe(struct strbuf *b, const struct keydef *k)
{
    switch (k->type) {
    case V_UINT:
        sb_printf(b, "a whole number from %llu to %llu", (unsigned long long)k->min, (unsigned long long)k->max);
        break;
    case V_SIZE:
        sb_puts(b, "a size from ");
        cv_fmt_size(b, k->min);
        sb_puts(b, " to ");
        cv_fmt_size(b, k->max);
        sb_puts(b, " (bytes, or with a K, M or G suffix)");
        break;
    case V_SECS:
        sb_puts(b, "a duration from ");
        cv_fmt_secs(b, k->min);
        sb_puts(b, " to ");
        cv_fmt_secs(b, k->max);
        sb_puts(b, " in whole seconds (a plain number is seconds; suffixes ms, s, m, h, d)");
        break;
    case V_MSECS:
        sb_puts(b, "a duration from ");
        cv_fmt_msecs(b, k->min);
        sb_puts(b, " to ");
        cv_fmt_msecs(b, k->max);
        sb_puts(b, " (a plain number is milliseconds; suffixes ms, s, m, h, d)");
        break;
    case V_BOOL:
        sb_puts(b, "yes or no (also on/off, true/false, 1/0)");
        break;
    case V_ENUM:
        sb_puts(b, "one of ");
        for (const struct enum_val *e = k->enums; e->name; e++)
            sb_printf(b, "%s%s", e == k->enums ? "" : ", ", e->name);
        break;
    case V_PATH:
        sb_printf(b, "the path of the %s", k->form);
        break;
    case V_STR:
    case V_FN:
        sb_puts(b, k->form ? k->form : "a value");
        break;
    }
}

static void store_int(void *p, size_t size, uint64_t v)
{
    if (size == 1) {
        uint8_t x = (uint8_t)v;
        memcpy(p, &x, 1);
    } else if (size == 2) {
        uint16_t x = (uint16_t)v;
        memcpy(p, &x, 2);
    } else if (size == 4) {
        uint32_t x = (uint32_t)v;
        memcpy(p, &x, 4);
    } else {
        memcpy(p, &v, 8);
    }
}

static void store_str(void *base, const struct keydef *k, char *v)
{
    char **slot = cfg_field(base, k->off);
    free(*slot);
    *slot = v;
}

/* Parses v for a scalar key and stores it into base. -1 when v is not of
 * the key's form or out of its bounds (nothing stored). */
static int set_value(void *base, const struct keydef *k, const char *v, const char *basedir)
{
    uint64_t n = 0;
    switch (k->type) {
    case V_STR:
        if (!*v || (k->valid && !k->valid(v)))
            return -1;
        store_str(base, k, xstrdup(v));
        return 0;
    case V_PATH:
        if (!*v)
            return -1;
        store_str(base, k, cv_abs_path(basedir, v));
        return 0;
    case V_UINT:
        if (cv_parse_uint(v, &n) != 0)
            return -1;
        break;
    case V_SIZE:
        if (cv_parse_size(v, &n) != 0)
            return -1;
        break;
    case V_SECS:
        if (cv_parse_duration_ms(v, 1000, &n) != 0 || n % 1000 != 0)
            return -1;
        n /= 1000;
        break;
    case V_MSECS:
        if (cv_parse_duration_ms(v, 1, &n) != 0)
            return -1;
        break;
    case V_BOOL:
        if (cv_parse_bool(v, &n) != 0)
            return -1;
        store_int(cfg_field(base, k->off), k->size, n);
        return 0;
    case V_ENUM:
        for (const struct enum_val *e = k->enums; e->name; e++) {
            if (strcmp(e->name, v) == 0) {
                store_int(cfg_field(base, k->off), k->size, (uint64_t)(unsigned)e->value);
                return 0;
            }
        }
        return -1;
    case V_FN:
        return -1;
    }
    if (n < k->min || n > k->max)
        return -1;
    store_int(cfg_field(base, k->off), k->size, n);
    return 0;
}

static void apply_defaults(void *base, const struct keydef *keys, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (keys[i].def && set_value(base, &keys[i], keys[i].def, NULL) != 0)
            abort(); /* a broken table: caught by the unit tests */
    }
}

/* ---- files ------------------------------------------------------------------------ */

/* The file must exist, be a readable regular file and, when secret, not be
 * accessible by others nor writable by its group. 0 when it is (or when
 * files are not checked), -1 after reporting. */
int cfg_check_file(struct parser *p, int line, const char *what, const char *path, int secret)
{
    char eb[128];
    if (p->no_file_checks)
        return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT)
            cfg_perr(p, line, "%s %s does not exist", what, path);
        else
            cfg_perr(p, line, "cannot read %s %s: %s", what, path, strerror_r(e, eb, sizeof(eb)));
        return -1;
    }
    struct stat st;
    int r = fstat(fd, &st);
    int e = errno;
    close(fd);
    if (r != 0) {
        cfg_perr(p, line, "cannot stat %s %s: %s", what, path, strerror_r(e, eb, sizeof(eb)));
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        cfg_perr(p, line, "%s %s is not a regular file", what, path);
        return -1;
    }
    if (secret && (st.st_mode & 027)) {
        cfg_perr(p, line,
             "%s %s has mode %04o: it must not be accessible by others nor writable by its group; "
             "fix it with `chmod 600 %s` (or `chmod 640 %s` to let its group read it)",
             what, path, (unsigned)(st.st_mode & 07777), path, path);
        return -1;
    }
    return 0;
}

/* ---- repeatable keys -------------------------------------------------------------- */

static void key_cert(struct parser *p, void *base, const struct keydef *k, char **av, int line)
{
    struct cert_pair **v = cfg_field(base, k->off);
    size_t *n = cfg_field(base, k->off2);
    if (!*av[0] || !*av[1]) {
        cfg_perr(p, line, "`certificate` needs two file names: certificate CRT KEY");
        return;
    }
    struct cert_pair cp = {cv_abs_path(p->basedir, av[0]), cv_abs_path(p->basedir, av[1]), line};
    cfg_check_file(p, line, "certificate file", cp.cert, 0);
    cfg_check_file(p, line, "private key", cp.key, 1);
    *v = xrealloc(*v, (*n + 1) * sizeof(**v));
    (*v)[(*n)++] = cp;
}

static void key_address(struct parser *p, void *base, const struct keydef *k, char **av, int line)
{
    char ***v = cfg_field(base, k->off);
    size_t *n = cfg_field(base, k->off2);
    unsigned char buf[16];
    if (inet_pton(AF_INET, av[0], buf) != 1 && inet_pton(AF_INET6, av[0], buf) != 1) {
        cfg_perr(p, line, "bad address `%s`: expected an IPv4 or IPv6 address such as 127.0.0.1, 0.0.0.0, ::1 or ::",
             av[0]);
        return;
    }
    *v = xrealloc(*v, (*n + 1) * sizeof(**v));
    (*v)[(*n)++] = xstrdup(av[0]);
}

static void key_cidr(struct parser *p, void *base, const struct keydef *k, char **av, int line)
{
    struct cidr c;
    if (cidr_parse(av[0], &c) != 0) {
        cfg_perr(p, line,
             "bad network `%s` for `%s`: expected an address or ADDRESS/PREFIX such as 192.0.2.0/24 or "
             "2001:db8::/32 (prefix 0-32 for IPv4, 0-128 for IPv6)",
             av[0], k->name);
        return;
    }
    cidr_list_add(cfg_field(base, k->off), &c);
}

/* `trusted NETWORK`: a network as for allow/deny, but never one that holds
 * every address (the IPv4-mapped ::ffff:0:0/96 parses as 0.0.0.0/0). */
static void key_trusted(struct parser *p, void *base, const struct keydef *k, char **av, int line)
{
    struct cidr_list *l = cfg_field(base, k->off);
    size_t before = l->n;
    key_cidr(p, base, k, av, line);
    if (l->n > before && l->v[l->n - 1].prefix == 0) {
        cfg_perr(p, line,
             "`trusted %s` would trust every client address (an open relay): list only the networks of your own "
             "applications, such as 127.0.0.1/32 or ::1",
             av[0]);
        l->n--;
    }
}

static void key_route(struct parser *p, void *base, const struct keydef *k, char **av, int line)
{
    struct config *c = base;
    const char *pat = av[0];
    int ok = strcmp(pat, "*") == 0 || (pat[0] == '*' && pat[1] == '.' && cv_valid_domain(pat + 2)) ||
             (pat[0] != '*' && cv_valid_domain(pat));
    if (!ok) {
        cfg_perr(p, line, "bad route pattern `%s`: expected a domain, *.domain or *", pat);
        return;
    }
    if (!cv_valid_token(av[1], NAME_MAX_LEN)) {
        cfg_perr(p, line, "bad transport name `%s` in route", av[1]);
        return;
    }
    for (size_t i = 0; i < c->nroutes; i++) {
        if (str_ieq(c->routes[i].pattern, pat)) {
            cfg_perr(p, line, "duplicate route for `%s` (the first is at line %d)", pat, c->routes[i].line);
            return;
        }
    }
    c->routes = xrealloc(c->routes, (c->nroutes + 1) * sizeof(*c->routes));
    c->routes[c->nroutes++] = (struct route_cfg){xstrdup(pat), xstrdup(av[1]), line};
}

/* ---- blocks ----------------------------------------------------------------------- */

static void *block_base(struct parser *p)
{
    struct config *c = p->c;
    if (!p->open)
        return c;
    switch (p->blk->kind) {
    case B_TLS:
        return &c->tls;
    case B_LIMITS:
        return &c->limits;
    case B_QUEUE:
        return &c->queue;
    case B_LISTENER:
        return &c->listeners[p->idx];
    case B_TRANSPORT:
        return &c->transports[p->idx];
    case B_DKIM:
        return &c->dkim[p->idx];
    case B_RATELIMIT:
        return &c->ratelimit;
    case B_RLFOR:
        return &c->ratelimit_for[p->idx];
    case B_ABUSE:
        return &c->abuse;
    case B_TOP:
        break;
    }
    return c;
}

static const struct blockdef *find_block(const char *name)
{
    for (size_t i = 0; i < ARRAY_LEN(blocks); i++)
        if (strcmp(blocks[i].name, name) == 0)
            return &blocks[i];
    return NULL;
}

static const struct keydef *find_key(const struct blockdef *b, const char *name, size_t *idx)
{
    for (size_t i = 0; i < b->nkeys; i++) {
        if (strcmp(b->keys[i].name, name) == 0) {
            if (idx)
                *idx = i;
            return &b->keys[i];
        }
    }
    return NULL;
}

static void open_ignored(struct parser *p, const char *name, int line)
{
    p->open = 1;
    p->blk = NULL;
    p->ignore = 1;
    p->nested = 0;
    p->blk_line = line;
    str_copy(p->blk_name, name, sizeof(p->blk_name));
}

static void open_block(struct parser *p, char **w, size_t n, int line)
{
    /* w[n-1] is "{" */
    if (n == 1) {
        cfg_perr(p, line, "`{` without a block name");
        open_ignored(p, "{", line);
        return;
    }
    const struct blockdef *b = find_block(w[0]);
    if (!b) {
        if (find_key(&top_block, w[0], NULL)) {
            cfg_perr(p, line, "`%s` is a key, not a block", w[0]);
        } else {
            struct strbuf m;
            sb_init(&m);
            for (size_t i = 0; i < ARRAY_LEN(blocks); i++)
                sb_printf(&m, "%s%s%s%s", i ? ", " : "", blocks[i].name, blocks[i].arg ? " " : "",
                          blocks[i].arg ? blocks[i].arg : "");
            cfg_perr(p, line, "unknown block `%s` (blocks: %s)", w[0], m.s);
            sb_free(&m);
        }
        open_ignored(p, w[0], line);
        return;
    }
    size_t nargs = n - 2;
    if (b->arg && nargs != 1) {
        if (b->kind == B_DKIM)
            cfg_perr(p, line, "a `dkim` block needs one domain: `dkim DOMAIN {`");
        else
            cfg_perr(p, line, "a `%s` block needs one name: `%s %s {`", b->name, b->name, b->arg);
        open_ignored(p, b->name, line);
        return;
    }
    if (!b->arg && nargs != 0) {
        cfg_perr(p, line, "the `%s` block takes no name: `%s {`", b->name, b->name);
        open_ignored(p, b->name, line);
        return;
    }
    if (b->kind == B_DKIM && !cv_valid_dns_name(w[1])) {
        cfg_perr(p, line,
             "bad dkim domain `%s`: expected a domain name such as example.com (letters, digits and `-` in "
             "dot-separated labels, no trailing dot)",
             w[1]);
        open_ignored(p, b->name, line);
        return;
    }
    if (b->kind == B_RLFOR && cfg_open_ratelimit_for(p, w[1], line) != 0) { /* abuse controls */
        open_ignored(p, b->name, line);
        return;
    }
    if (b->arg && b->kind != B_DKIM && b->kind != B_RLFOR && !cv_valid_token(w[1], NAME_MAX_LEN)) {
        cfg_perr(p, line, "bad %s name `%s`: use letters, digits, `.`, `_` and `-` (at most %d characters)", b->name,
             w[1], NAME_MAX_LEN);
        open_ignored(p, b->name, line);
        return;
    }
    struct config *c = p->c;
    if (b->kind == B_RLFOR) {
        /* made by cfg_open_ratelimit_for() */
    } else if (!b->arg) {
        int *first = &p->single_line[b->kind - B_TLS];
        if (*first) {
            cfg_perr(p, line, "duplicate `%s` block (the first is at line %d)", b->name, *first);
            open_ignored(p, b->name, line);
            return;
        }
        *first = line;
    } else if (b->kind == B_LISTENER) {
        for (size_t i = 0; i < c->nlisteners; i++)
            if (strcmp(c->listeners[i].name, w[1]) == 0)
                cfg_perr(p, line, "duplicate listener name `%s` (the first is at line %d)", w[1], c->listeners[i].line);
        c->listeners = xrealloc(c->listeners, (c->nlisteners + 1) * sizeof(*c->listeners));
        struct listener_cfg *l = &c->listeners[c->nlisteners];
        memset(l, 0, sizeof(*l));
        l->name = xstrdup(w[1]);
        l->line = line;
        apply_defaults(l, listener_keys, ARRAY_LEN(listener_keys));
        p->idx = c->nlisteners++;
    } else if (b->kind == B_DKIM) {
        char *dom = xstrdup(w[1]);
        str_lower(dom);
        for (size_t i = 0; i < c->ndkim; i++)
            if (strcmp(c->dkim[i].domain, dom) == 0)
                cfg_perr(p, line, "duplicate dkim block for %s (the first is at line %d)", dom, c->dkim[i].line);
        c->dkim = xrealloc(c->dkim, (c->ndkim + 1) * sizeof(*c->dkim));
        struct dkim_cfg *d = &c->dkim[c->ndkim];
        memset(d, 0, sizeof(*d));
        d->domain = dom;
        d->line = line;
        d->canon_header = DKIM_CANON_RELAXED;
        d->canon_body = DKIM_CANON_RELAXED;
        apply_defaults(d, dkim_keys, ARRAY_LEN(dkim_keys));
        p->idx = c->ndkim++;
        memset(p->names_line, 0, sizeof(p->names_line));
        p->oversign_none = 0;
    } else {
        for (size_t i = 0; i < c->ntransports; i++)
            if (strcmp(c->transports[i].name, w[1]) == 0)
                cfg_perr(p, line, "duplicate transport name `%s` (the first is at line %d)", w[1],
                     c->transports[i].line);
        c->transports = xrealloc(c->transports, (c->ntransports + 1) * sizeof(*c->transports));
        struct transport_cfg *t = &c->transports[c->ntransports];
        memset(t, 0, sizeof(*t));
        t->name = xstrdup(w[1]);
        t->line = line;
        apply_defaults(t, transport_keys, ARRAY_LEN(transport_keys));
        p->idx = c->ntransports++;
    }
    p->open = 1;
    p->blk = b;
    p->ignore = 0;
    p->nested = 0;
    p->blk_line = line;
    str_copy(p->blk_name, b->name, sizeof(p->blk_name));
    memset(p->seen, 0, sizeof(p->seen));
}

static int addr_key(const char *s, unsigned char out[17])
{
    memset(out, 0, 17);
    if (inet_pton(AF_INET, s, out + 1) == 1) {
        out[0] = 4;
        return 0;
    }
    if (inet_pton(AF_INET6, s, out + 1) == 1) {
        out[0] = 6;
        return 0;
    }
    return -1;
}

static void check_listener(struct parser *p, struct listener_cfg *l, int port_set)
{
    struct config *c = p->c;
    if (l->naddrs == 0) {
        l->addrs = xmalloc(sizeof(*l->addrs));
        l->addrs[0] = xstrdup("127.0.0.1");
        l->naddrs = 1;
    }
    size_t self = (size_t)(l - c->listeners);
    for (size_t i = 0; i < l->naddrs; i++) {
        unsigned char a[17], b[17];
        if (addr_key(l->addrs[i], a) != 0)
            continue;
        for (size_t j = 0; j < i; j++) {
            if (addr_key(l->addrs[j], b) == 0 && memcmp(a, b, sizeof(a)) == 0) {
                cfg_perr(p, l->line, "listener `%s`: address %s is given twice", l->name, l->addrs[i]);
                break;
            }
        }
        for (size_t o = 0; port_set && o < self; o++) {
            const struct listener_cfg *x = &c->listeners[o];
            if (x->port != l->port)
                continue;
            for (size_t j = 0; j < x->naddrs; j++) {
                if (addr_key(x->addrs[j], b) == 0 && memcmp(a, b, sizeof(a)) == 0)
                    cfg_perr(p, l->line, "listener `%s`: %s port %u is already used by listener `%s` (line %d)",
                         l->name, l->addrs[i], (unsigned)l->port, x->name, x->line);
            }
        }
    }
}

/* `trusted` (last given at line tline, 0 = not given) only on a listener
 * that is not a submission port: there MAIL needs TLS and AUTH. */
static void check_trusted(struct parser *p, const struct listener_cfg *l, int tline)
{
    if (!tline)
        return;
    const char *why = l->mode == LISTEN_IMPLICIT_TLS ? "mode implicit-tls is"
                      : l->port == 587                ? "port 587 is"
                      : l->port == 465                ? "port 465 is"
                                                      : NULL;
    if (why)
        cfg_perr(p, tline,
             "`trusted` is not allowed on listener `%s`: %s for submission, where MAIL needs TLS and AUTH; add a "
             "separate listener for local applications (for example port 25 or 10025 with address 127.0.0.1) and "
             "put `trusted` there",
             l->name, why);
}

/* Required keys and cross-checks of a block that was closed. */
static void finish_block(struct parser *p)
{
    const struct blockdef *b = p->blk;
    void *base = block_base(p);
    for (size_t i = 0; i < b->nkeys; i++)
        if ((b->keys[i].flags & K_REQUIRED) && !p->seen[i])
            cfg_perr(p, p->blk_line, "missing required key `%s` in this %s block", b->keys[i].name, b->name);
    size_t i1 = 0, i2 = 0;
    switch (b->kind) {
    case B_LIMITS: {
        struct limits_cfg *L = base;
        find_key(b, "auth-delay", &i1);
        find_key(b, "auth-delay-max", &i2);
        if (L->auth_delay_max_ms < L->auth_delay_ms)
            cfg_perr(p, p->seen[i2] ? p->seen[i2] : p->seen[i1],
                 "auth-delay-max (%u ms) must not be less than auth-delay (%u ms)", L->auth_delay_max_ms,
                 L->auth_delay_ms);
        break;
    }
    case B_QUEUE: {
        struct queue_cfg *q = base;
        find_key(b, "retry-initial", &i1);
        find_key(b, "retry-max", &i2);
        if (q->retry_max < q->retry_initial)
            cfg_perr(p, p->seen[i2] ? p->seen[i2] : p->seen[i1],
                 "retry-max (%u s) must not be less than retry-initial (%u s)", q->retry_max, q->retry_initial);
        break;
    }
    case B_LISTENER:
        find_key(b, "port", &i1);
        find_key(b, "trusted", &i2);
        check_listener(p, base, p->seen[i1] != 0);
        check_trusted(p, base, p->seen[i2]);
        break;
    case B_DKIM:
        find_key(b, "key", &i1);
        cfg_check_dkim(p, base, p->seen[i1] != 0);
        break;
    case B_TOP:
    case B_TLS:
    case B_TRANSPORT:
    case B_RATELIMIT:
    case B_RLFOR:
    case B_ABUSE:
        break;
    }
}

static void close_block(struct parser *p)
{
    if (!p->ignore && p->blk)
        finish_block(p);
    p->open = 0;
    p->blk = NULL;
    p->ignore = 0;
    p->nested = 0;
}

/* ---- lines ------------------------------------------------------------------------ */

struct words {
    char *w[MAX_WORDS + 1]; /* + a NULL after the last word for V_FN keys */
    int quoted[MAX_WORDS];
    size_t n;
};

static int is_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r';
}

static int is_ctl(unsigned char ch)
{
    return (ch < 0x20 && ch != '\t' && ch != '\r') || ch == 0x7f;
}

/* Splits a line in place into words: bare words end at a space or `#`;
 * "quoted" words take \" and \\ escapes. -1 after reporting an error. */
static int tokenize(struct parser *p, char *s, int line, struct words *out)
{
    out->n = 0;
    char *r = s;
    for (;;) {
        while (is_space(*r))
            r++;
        if (*r == '\0' || *r == '#')
            return 0;
        if (out->n == MAX_WORDS) {
            cfg_perr(p, line, "too many words on one line (at most %d)", MAX_WORDS);
            return -1;
        }
        char *w = r, *o = r;
        int quoted = *r == '"';
        if (quoted) {
            r++;
            for (;;) {
                unsigned char ch = (unsigned char)*r;
                if (ch == '\0') {
                    cfg_perr(p, line, "unterminated quoted string (missing closing `\"`)");
                    return -1;
                }
                if (ch == '"') {
                    r++;
                    break;
                }
                if (ch == '\\') {
                    if (r[1] != '"' && r[1] != '\\') {
                        cfg_perr(p, line, "bad escape in quoted string: only \\\" and \\\\ are allowed");
                        return -1;
                    }
                    *o++ = r[1];
                    r += 2;
                    continue;
                }
                if (is_ctl(ch)) {
                    cfg_perr(p, line, "control character 0x%02x in quoted string", ch);
                    return -1;
                }
                *o++ = (char)ch;
                r++;
            }
            if (*r != '\0' && *r != '#' && !is_space(*r)) {
                cfg_perr(p, line, "text right after a closing `\"` (separate words with a space)");
                return -1;
            }
        } else {
            while (*r != '\0' && *r != '#' && !is_space(*r)) {
                if (*r == '"') {
                    cfg_perr(p, line, "unexpected `\"` inside a word (quote the whole value)");
                    return -1;
                }
                if (is_ctl((unsigned char)*r)) {
                    cfg_perr(p, line, "control character 0x%02x", (unsigned char)*r);
                    return -1;
                }
                o++;
                r++;
            }
        }
        char term = *r;
        *o = '\0';
        out->w[out->n] = w;
        out->quoted[out->n] = quoted;
        out->n++;
        if (term == '\0' || term == '#')
            return 0;
        r++;
    }
}

static int is_bare(const struct words *w, size_t i, const char *s)
{
    return !w->quoted[i] && strcmp(w->w[i], s) == 0;
}

static void transport_opt(struct parser *p, struct transport_cfg *t, struct words *w, int line)
{
    struct strbuf b;
    sb_init(&b);
    for (size_t i = 1; i < w->n; i++) {
        if (i > 1)
            sb_puts(&b, " ");
        sb_puts(&b, w->w[i]);
    }
    t->opts = xrealloc(t->opts, (t->nopts + 1) * sizeof(*t->opts));
    t->opts[t->nopts++] = (struct kv){xstrdup(w->w[0]), b.s ? sb_steal(&b) : xstrdup(""), line};
}

static void unknown_key(struct parser *p, const struct blockdef *b, const char *key, int line)
{
    const char *home = NULL;
    if (b->kind != B_TOP && find_key(&top_block, key, NULL))
        home = "top level";
    for (size_t i = 0; !home && i < ARRAY_LEN(blocks); i++)
        if (&blocks[i] != b && find_key(&blocks[i], key, NULL))
            home = blocks[i].name;
    struct strbuf m;
    sb_init(&m);
    if (b->kind == B_TOP)
        sb_printf(&m, "unknown key `%s` at top level", key);
    else
        sb_printf(&m, "unknown key `%s` in %s block", key, b->name);
    if (home && strcmp(home, "top level") == 0)
        sb_puts(&m, " (it is a top-level key)");
    else if (home)
        sb_printf(&m, " (it belongs in the %s block)", home);
    else if (b->kind == B_TOP && find_block(key))
        sb_printf(&m, " (`%s` is a block: `%s%s%s {` ... `}`)", key, key, find_block(key)->arg ? " " : "",
                  find_block(key)->arg ? find_block(key)->arg : "");
    cfg_perr(p, line, "%s", m.s);
    sb_free(&m);
}

static void do_key(struct parser *p, struct words *w, int line)
{
    const struct blockdef *b = p->open ? p->blk : &top_block;
    void *base = block_base(p);
    int *seen = p->open ? p->seen : p->seen_top;
    size_t ki;
    const struct keydef *k = find_key(b, w->w[0], &ki);
    if (!k || w->quoted[0]) {
        if (b->kind == B_TRANSPORT)
            transport_opt(p, base, w, line);
        else
            unknown_key(p, b, w->w[0], line);
        return;
    }
    if (!(k->flags & K_MULTI) && seen[ki]) {
        cfg_perr(p, line, "duplicate key `%s` (first set at line %d)", k->name, seen[ki]);
        return;
    }
    seen[ki] = line;
    size_t want = k->type == V_FN ? k->nargs : 1;
    size_t want_max = k->type == V_FN && k->nargs_max ? k->nargs_max : want;
    if (w->n - 1 < want || w->n - 1 > want_max) {
        struct strbuf d;
        sb_init(&d);
        describe(&d, k);
        if (want_max == MAX_WORDS - 1)
            cfg_perr(p, line, "`%s` takes at least %zu value%s (%s %s)", k->name, want, want == 1 ? "" : "s", k->name,
                 d.s);
        else if (want != want_max)
            cfg_perr(p, line, "`%s` takes %zu to %zu values (%s %s), not %zu", k->name, want, want_max, k->name, d.s,
                 w->n - 1);
        else if (want == 1)
            cfg_perr(p, line, "`%s` takes one value, %s, not %zu", k->name, d.s, w->n - 1);
        else
            cfg_perr(p, line, "`%s` takes %zu values (%s %s), not %zu", k->name, want, k->name, d.s, w->n - 1);
        sb_free(&d);
        return;
    }
    if (k->type == V_FN) {
        w->w[w->n] = NULL;
        k->fn(p, base, k, &w->w[1], line);
        return;
    }
    if (set_value(base, k, w->w[1], p->basedir) != 0) {
        struct strbuf d;
        sb_init(&d);
        describe(&d, k);
        cfg_perr(p, line, "bad value `%s` for `%s`: expected %s", w->w[1], k->name, d.s);
        sb_free(&d);
        return;
    }
    if (k->type == V_PATH && (k->flags & K_READ))
        cfg_check_file(p, line, k->form, *(char **)cfg_field(base, k->off), (k->flags & K_SECRET) != 0);
}

static void do_line(struct parser *p, char *s, int line)
{
    struct words w;
    if (tokenize(p, s, line, &w) != 0 || w.n == 0)
        return;
    int opens = is_bare(&w, w.n - 1, "{");
    int closes = is_bare(&w, 0, "}");
    for (size_t i = 0; i < w.n; i++) {
        if (i + 1 < w.n && is_bare(&w, i, "{")) {
            cfg_perr(p, line, "`{` must end the line (one key per line, `}` on its own line)");
            return;
        }
        if ((i > 0 || w.n > 1) && is_bare(&w, i, "}")) {
            cfg_perr(p, line, "`}` must be on its own line");
            closes = 1;
            break;
        }
    }
    if (closes) {
        if (p->open && p->nested > 0)
            p->nested--;
        else if (p->open)
            close_block(p);
        else
            cfg_perr(p, line, "`}` without an open block");
        return;
    }
    if (opens) {
        if (!p->open) {
            open_block(p, w.w, w.n, line);
            return;
        }
        if (!p->ignore && p->nested == 0)
            cfg_perr(p, line, "nested blocks are not allowed: `%s` inside the %s block opened at line %d (close it with "
                          "`}` first)",
                 w.w[0], p->blk_name, p->blk_line);
        p->nested++;
        return;
    }
    if (p->open && (p->ignore || p->nested > 0))
        return;
    do_key(p, &w, line);
}

/* ---- whole-file checks --------------------------------------------------------- */

static const struct transport_cfg *find_transport(const struct config *c, const char *name)
{
    for (size_t i = 0; i < c->ntransports; i++)
        if (strcmp(c->transports[i].name, name) == 0)
            return &c->transports[i];
    return NULL;
}

static void finish(struct parser *p)
{
    struct config *c = p->c;
    if (p->open)
        cfg_perr(p, p->blk_line, "unclosed %s block: missing `}`", p->blk_name);

    int have_default = 0;
    for (size_t i = 0; i < c->nroutes; i++) {
        const struct route_cfg *r = &c->routes[i];
        if (strcmp(r->pattern, "*") == 0)
            have_default = 1;
        if (!find_transport(c, r->transport))
            cfg_perr(p, r->line, "route `%s`: no transport named `%s` (define it with `transport %s { ... }`)",
                 r->pattern, r->transport, r->transport);
    }
    if (!have_default)
        cfg_perr(p, 0, "no default route: add `route * TRANSPORT`");

    for (size_t i = 0; i < ARRAY_LEN(top_keys); i++)
        if ((top_keys[i].flags & K_REQUIRED) && !p->seen_top[i])
            cfg_perr(p, 0, "missing required key `%s`", top_keys[i].name);

    if (c->nlisteners == 0)
        cfg_perr(p, 0, "no listener: add a `listener NAME { port ...; mode ... }` block");
    for (size_t i = 0; i < c->nlisteners; i++) {
        const struct listener_cfg *l = &c->listeners[i];
        if (l->ncerts == 0 && c->tls.ncerts == 0)
            cfg_perr(p, l->line,
                 "listener `%s` has no certificate: add `certificate CRT KEY` to the tls block or to this listener",
                 l->name);
    }

    if (!c->hostname) {
        char h[256];
        memset(h, 0, sizeof(h));
        int ok = gethostname(h, sizeof(h) - 1) == 0 && cv_valid_hostname(h);
        c->hostname = xstrdup(ok ? h : "localhost");
    }
    for (size_t i = 0; i < c->ntransports; i++)
        c->transports[i].hostname = c->hostname;
    if (!c->control_socket && c->spool_dir) { /* submitctl queue ...: default <spool-dir>/control.sock */
        struct strbuf cs;
        sb_init(&cs);
        sb_printf(&cs, "%s/control.sock", c->spool_dir);
        c->control_socket = sb_steal(&cs);
    }
}

/* ---- life cycle --------------------------------------------------------------------- */

static void free_certs(struct cert_pair *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].cert);
        free(v[i].key);
    }
    free(v);
}

static void config_free(struct config *c)
{
    free(c->file);
    free(c->hostname);
    free(c->user);
    free(c->spool_dir);
    free(c->accounts);
    free(c->pid_file);
    free(c->control_socket);
    free_certs(c->tls.certs, c->tls.ncerts);
    free(c->tls.ciphers);
    free(c->tls.ciphersuites);
    for (size_t i = 0; i < c->nlisteners; i++) {
        struct listener_cfg *l = &c->listeners[i];
        free(l->name);
        for (size_t k = 0; k < l->naddrs; k++)
            free(l->addrs[k]);
        free(l->addrs);
        free_certs(l->certs, l->ncerts);
        cidr_list_free(&l->allow);
        cidr_list_free(&l->deny);
        cidr_list_free(&l->trusted);
    }
    free(c->listeners);
    for (size_t i = 0; i < c->ntransports; i++) {
        struct transport_cfg *t = &c->transports[i];
        free(t->name);
        free(t->type);
        free(t->path);
        for (size_t k = 0; k < t->nopts; k++) {
            free(t->opts[k].key);
            free(t->opts[k].value);
        }
        free(t->opts);
    }
    free(c->transports);
    for (size_t i = 0; i < c->nroutes; i++) {
        free(c->routes[i].pattern);
        free(c->routes[i].transport);
    }
    free(c->routes);
    for (size_t i = 0; i < c->ndkim; i++) {
        struct dkim_cfg *d = &c->dkim[i];
        free(d->domain);
        for (size_t k = 0; k < d->nkeys; k++) {
            free(d->keys[k].selector);
            free(d->keys[k].file);
            EVP_PKEY_free(d->keys[k].pkey);
            mem_wipe(d->keys[k].ed_sk, sizeof(d->keys[k].ed_sk));
        }
        free(d->keys);
        for (size_t k = 0; k < d->nheaders; k++)
            free(d->headers[k]);
        free(d->headers);
        for (size_t k = 0; k < d->noversign; k++)
            free(d->oversign[k]);
        free(d->oversign);
    }
    free(c->dkim);
    cfg_free_abuse(c);
    free(c);
}

static struct config *parse_text(const char *name, const char *basedir, char *text, size_t len, int file_checks,
                                 struct errlist *errs)
{
    struct errlist local;
    errlist_init(&local);
    struct errlist *e = errs ? errs : &local;
    size_t before = e->n;

    struct config *c = xcalloc(1, sizeof(*c));
    c->refs = 1;
    c->file = xstrdup(name);
    apply_defaults(c, top_keys, ARRAY_LEN(top_keys));
    apply_defaults(&c->tls, tls_keys, ARRAY_LEN(tls_keys));
    apply_defaults(&c->limits, limits_keys, ARRAY_LEN(limits_keys));
    apply_defaults(&c->queue, queue_keys, ARRAY_LEN(queue_keys));
    apply_defaults(&c->ratelimit, ratelimit_keys, ARRAY_LEN(ratelimit_keys));
    apply_defaults(&c->abuse, abuse_keys, ARRAY_LEN(abuse_keys));
    cfg_abuse_defaults(c);

    struct parser p;
    memset(&p, 0, sizeof(p));
    p.file = c->file;
    p.basedir = basedir;
    p.errs = e;
    p.c = c;
    p.no_file_checks = !file_checks;

    if (strlen(text) != len) {
        cfg_perr(&p, 0, "contains a NUL byte: not a text file");
    } else {
        int line = 0;
        char *s = text, *end = text + len;
        while (s < end) {
            char *nl = memchr(s, '\n', (size_t)(end - s));
            char *eol = nl ? nl : end;
            *eol = '\0';
            do_line(&p, s, ++line);
            s = eol + 1;
        }
        finish(&p);
    }
    int bad = e->n > before;
    errlist_free(&local);
    if (bad) {
        config_free(c);
        return NULL;
    }
    return c;
}

/* The directory of path, absolute. */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? (slash == path ? xstrdup("/") : xstrndup(path, (size_t)(slash - path))) : xstrdup(".");
    if (dir[0] == '/')
        return dir;
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof(cwd)))
        return dir;
    char *abs = strcmp(dir, ".") == 0 ? xstrdup(cwd) : cv_abs_path(cwd, dir);
    free(dir);
    return abs;
}

static struct config *load(const char *path, int file_checks, struct errlist *errs)
{
    size_t len = 0;
    char *text = read_file_max(path, CONFIG_MAX_BYTES, &len);
    if (!text) {
        char eb[128];
        int e = errno;
        if (errs) {
            if (e == EFBIG)
                errlist_add(errs, path, 0, "cannot read: larger than %d bytes", CONFIG_MAX_BYTES);
            else
                errlist_add(errs, path, 0, "cannot read: %s", strerror_r(e, eb, sizeof(eb)));
        }
        return NULL;
    }
    char *dir = dir_of(path);
    struct config *c = parse_text(path, dir, text, len, file_checks, errs);
    free(dir);
    free(text);
    return c;
}

struct config *config_load(const char *path, struct errlist *errs)
{
    return load(path, 1, errs);
}

struct config *config_load_paths(const char *path, struct errlist *errs)
{
    return load(path, 0, errs);
}

struct config *config_parse_string(const char *name, const char *text, struct errlist *errs)
{
    char cwd[PATH_MAX];
    const char *dir = getcwd(cwd, sizeof(cwd)) ? cwd : NULL;
    size_t len = strlen(text);
    char *copy = xstrndup(text, len);
    struct config *c = parse_text(name, dir, copy, len, 1, errs);
    free(copy);
    return c;
}

struct config *config_ref(struct config *c)
{
    if (c)
        __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
    return c;
}

void config_unref(struct config *c)
{
    if (c && __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0)
        config_free(c);
}

/* ---- look-ups ----------------------------------------------------------------------- */

const struct transport_cfg *config_route(const struct config *c, const char *domain)
{
    if (!c || !domain)
        return NULL;
    size_t dl = strlen(domain);
    const struct route_cfg *best = NULL, *dflt = NULL;
    size_t best_len = 0;
    for (size_t i = 0; i < c->nroutes; i++) {
        const struct route_cfg *r = &c->routes[i];
        const char *pat = r->pattern;
        if (strcmp(pat, "*") == 0) {
            dflt = r;
        } else if (pat[0] == '*' && pat[1] == '.') {
            size_t sl = strlen(pat + 1); /* ".suffix" */
            if (dl > sl && sl > best_len && str_ieq(domain + dl - sl, pat + 1)) {
                best = r;
                best_len = sl;
            }
        } else if (str_ieq(pat, domain)) {
            return find_transport(c, r->transport);
        }
    }
    if (best)
        return find_transport(c, best->transport);
    return dflt ? find_transport(c, dflt->transport) : NULL;
}

const struct listener_cfg *config_listener(const struct config *c, const char *name)
{
    if (!c || !name)
        return NULL;
    for (size_t i = 0; i < c->nlisteners; i++)
        if (strcmp(c->listeners[i].name, name) == 0)
            return &c->listeners[i];
    return NULL;
}

