/* log: see log.h. */
#include "core/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static atomic_int g_level = LOG_LVL_INFO;
static int g_syslog;
static char g_ident[32] = "submitd";
static atomic_int g_pid; /* cached: getpid() is a system call per line otherwise */

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_init(const char *ident, int use_syslog, enum log_level level)
{
    snprintf(g_ident, sizeof(g_ident), "%s", ident ? ident : "submitd");
    atomic_store(&g_pid, (int)getpid());
    g_syslog = use_syslog;
    atomic_store(&g_level, (int)level);
    if (use_syslog)
        openlog(g_ident, LOG_PID | LOG_NDELAY, LOG_MAIL);
}

void log_set_level(enum log_level level)
{
    atomic_store(&g_level, (int)level);
}

int log_enabled(enum log_level level)
{
    return (int)level <= atomic_load(&g_level);
}

int log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    if (strcmp(s, "warning") == 0)
        return LOG_LVL_WARN;
    return -1;
}

static int plain_token(const char *s)
{
    if (!*s)
        return 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p <= ' ' || *p == '"' || *p == '\\' || *p == '=' || *p >= 0x7f)
            return 0;
    return 1;
}

const char *log_q(char *buf, size_t n, const char *s)
{
    if (!s)
        return "-";
    if (plain_token(s))
        return s;
    size_t o = 0;
    if (n < 8)
        return "\"\"";
    buf[o++] = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char tmp[5];
        size_t l;
        if (*p == '"' || *p == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)*p;
            l = 2;
        } else if (*p < ' ' || *p == 0x7f) {
            snprintf(tmp, sizeof(tmp), "\\x%02x", *p);
            l = 4;
        } else {
            tmp[0] = (char)*p;
            l = 1;
        }
        if (o + l + 5 > n) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(buf + o, tmp, l);
        o += l;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

static void add(char *line, size_t *o, size_t cap, const char *s)
{
    if (*o + 1 >= cap)
        return;
    size_t room = cap - *o - 1;
    size_t l = strnlen(s, room);
    memcpy(line + *o, s, l);
    *o += l;
}

static void add_kv(char *line, size_t *o, size_t cap, const char *k, const char *v)
{
    char q[LOGQ_MAX];
    if (!v)
        return;
    add(line, o, cap, " ");
    add(line, o, cap, k);
    add(line, o, cap, "=");
    add(line, o, cap, log_q(q, sizeof(q), v));
}

void logkv(enum log_level level, const struct log_ctx *ctx, const char *event, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    char line[2048];
    size_t o = 0;
    const size_t cap = sizeof(line) - 1; /* room for '\n' */
    if (!g_syslog) {
        /* the date and time to the second, formatted once a second per thread */
        static _Thread_local time_t ts_sec = -1;
        static _Thread_local char ts[32];
        struct timeval tv;
        gettimeofday(&tv, NULL);
        if (tv.tv_sec != ts_sec) {
            struct tm tm;
            gmtime_r(&tv.tv_sec, &tm);
            strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
            ts_sec = tv.tv_sec;
        }
        int pid = atomic_load(&g_pid);
        if (!pid) {
            pid = (int)getpid();
            atomic_store(&g_pid, pid);
        }
        int n = snprintf(line, cap, "%s.%03dZ %s[%d]: ", ts, (int)(tv.tv_usec / 1000), g_ident, pid);
        o = n > 0 && (size_t)n < cap ? (size_t)n : 0;
    }
    add(line, &o, cap, "level=");
    add(line, &o, cap, level_names[level]);
    add(line, &o, cap, " event=");
    add(line, &o, cap, event);
    if (ctx) {
        add_kv(line, &o, cap, "sid", ctx->sid);
        add_kv(line, &o, cap, "ip", ctx->ip);
        add_kv(line, &o, cap, "tls", ctx->tls);
        add_kv(line, &o, cap, "user", ctx->user);
        add_kv(line, &o, cap, "qid", ctx->qid);
    }
    if (fmt && *fmt && o + 2 < cap) {
        va_list ap;
        va_start(ap, fmt);
        add(line, &o, cap, " ");
        int n = vsnprintf(line + o, cap - o, fmt, ap);
        va_end(ap);
        if (n > 0)
            o += (size_t)n < cap - o ? (size_t)n : cap - o - 1;
    }
    if (g_syslog) {
        static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
        line[o] = '\0';
        syslog(prio[level], "%s", line);
        return;
    }
    line[o++] = '\n';
    ssize_t w = write(2, line, o);
    (void)w;
}
