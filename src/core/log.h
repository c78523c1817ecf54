/* log: the one logging API. Every line is `key=value` pairs: level, event,
 * then the context (session id, client ip, tls, user, queue id) and the
 * event's own fields. Goes to stderr (with a timestamp) or syslog.
 * Secrets are never passed here: callers log logins, never passwords or
 * AUTH payloads. Thread-safe (one write(2) per line). */
#ifndef SUBMITD_LOG_H
#define SUBMITD_LOG_H

#include <stddef.h>

enum log_level { LOG_LVL_ERR = 0, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

/* Context carried by a session or a queue run; any field may be NULL. */
struct log_ctx {
    const char *sid;   /* session id */
    const char *ip;    /* client ip */
    const char *tls;   /* e.g. "TLSv1.3/TLS_AES_256_GCM_SHA384" */
    const char *user;  /* authenticated login */
    const char *qid;   /* queue id */
};

void log_init(const char *ident, int use_syslog, enum log_level level);
void log_set_level(enum log_level level);
int log_enabled(enum log_level level);
/* Parses "error|warn|info|debug"; -1 when unknown. */
int log_level_parse(const char *s);

/* fmt adds the event's own fields, already as `key=value` text; use
 * log_q() for any value that may hold spaces, quotes or control bytes. */
void logkv(enum log_level level, const struct log_ctx *ctx, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Quotes a value for a log line when needed: returns s itself when it is a
 * plain token, else writes a double-quoted, escaped, truncated copy into
 * buf. Control bytes become \xNN. Use the returned pointer, never buf. */
const char *log_q(char *buf, size_t n, const char *s) __attribute__((warn_unused_result));

#define LOGQ_MAX 256

#endif
