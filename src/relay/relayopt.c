/* relayopt: the options of the smarthost and mx transports (the key/values
 * of a `transport NAME { type smarthost|mx ... }` block), their checks for
 * `submitd -t` with file:line errors, the credentials file, and the
 * transport instance both transports share (options, TLS context,
 * credentials, connection pool). Option reference: docs/config.md. */
#include "relay/relay.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/confval.h"
#include "tls/tlsclient.h"

#define CREDS_FILE_MAX (64 * 1024)
#define KIND_SH 1u
#define KIND_MX 2u

enum otype { OT_DUR, OT_UINT, OT_SPECIAL };

struct optdef {
    const char *key;
    unsigned kinds;
    enum otype type;
    size_t off;       /* unsigned field in struct relay_opts (OT_DUR: ms) */
    uint64_t min, max; /* OT_DUR: ms */
    const char *form;
};

#define OFF(f) offsetof(struct relay_opts, f)
#define SEC 1000ull

static const struct optdef optdefs[] = {
    {"url", KIND_SH, OT_SPECIAL, 0, 0, 0, "smtp://HOST[:PORT] or smtps://HOST[:PORT]"},
    {"starttls", KIND_SH | KIND_MX, OT_SPECIAL, 0, 0, 0, NULL},
    {"auth-file", KIND_SH, OT_SPECIAL, 0, 0, 0, "an absolute path"},
    {"ca-file", KIND_SH | KIND_MX, OT_SPECIAL, 0, 0, 0, "an absolute path"},
    {"tls-verify", KIND_SH | KIND_MX, OT_SPECIAL, 0, 0, 0, "yes or no"},
    {"chunking", KIND_SH | KIND_MX, OT_SPECIAL, 0, 0, 0, "yes or no"},
    {"helo", KIND_SH | KIND_MX, OT_SPECIAL, 0, 0, 0, "a host name"},
    {"resolver", KIND_SH | KIND_MX, OT_SPECIAL, 0, 0, 0, "IP, IP:PORT or [IPv6]:PORT"},
    {"port", KIND_MX, OT_SPECIAL, 0, 1, 65535, "a port from 1 to 65535"},
    {"dns-timeout", KIND_SH | KIND_MX, OT_DUR, 0, 1 * SEC, 300 * SEC, "a duration from 1s to 5m"},
    {"connect-timeout", KIND_SH | KIND_MX, OT_DUR, OFF(connect_timeout_ms), 1 * SEC, 600 * SEC,
     "a duration from 1s to 10m"},
    {"command-timeout", KIND_SH | KIND_MX, OT_DUR, OFF(command_timeout_ms), 1 * SEC, 3600 * SEC,
     "a duration from 1s to 1h"},
    {"data-timeout", KIND_SH | KIND_MX, OT_DUR, OFF(data_timeout_ms), 1 * SEC, 3600 * SEC,
     "a duration from 1s to 1h"},
    {"idle-timeout", KIND_SH | KIND_MX, OT_DUR, OFF(idle_ms), 0, 3600 * SEC, "a duration from 0 to 1h"},
    {"limit-wait", KIND_SH | KIND_MX, OT_DUR, OFF(limit_wait_ms), 0, 3600 * SEC, "a duration from 0 to 1h"},
    {"max-connections", KIND_SH | KIND_MX, OT_UINT, OFF(max_conn), 1, 10000, "a number from 1 to 10000"},
    {"max-connections-per-host", KIND_SH | KIND_MX, OT_UINT, OFF(max_conn_per_dest), 1, 1000,
     "a number from 1 to 1000"},
    {"max-messages-per-connection", KIND_SH | KIND_MX, OT_UINT, OFF(max_msgs_per_conn), 1, 1000000,
     "a number from 1 to 1000000"},
    {"max-recipients", KIND_SH | KIND_MX, OT_UINT, OFF(max_rcpts), 1, 10000, "a number from 1 to 10000"},
    {"max-addresses", KIND_MX, OT_UINT, OFF(max_addrs), 1, 100, "a number from 1 to 100"},
};

/* ---- pure parsers -------------------------------------------------------------- */

static int parse_u64(const char *s, size_t n, uint64_t *v)
{
    if (n == 0 || n > 12)
        return -1;
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        x = x * 10 + (uint64_t)(s[i] - '0');
    }
    *v = x;
    return 0;
}

int relay_parse_duration(const char *s, uint64_t *ms)
{
    if (strspn(s, "0123456789") > 12) /* as the other numbers here */
        return -1;
    return cv_parse_duration_ms(s, 1000, ms); /* a plain number is seconds */
}

int relay_parse_url(const char *url, char *host, size_t hostlen, uint16_t *port, int *implicit_tls,
                    const char **why)
{
    const char *p;
    if (str_iprefix(url, "smtp://")) {
        p = url + 7;
        *implicit_tls = 0;
        *port = 587;
    } else if (str_iprefix(url, "smtps://")) {
        p = url + 8;
        *implicit_tls = 1;
        *port = 465;
    } else {
        *why = "must start with smtp:// (STARTTLS) or smtps:// (implicit TLS)";
        return -1;
    }
    const char *hs = p, *he;
    if (*p == '[') {
        hs = p + 1;
        he = strchr(hs, ']');
        if (!he) {
            *why = "unclosed [ in the host";
            return -1;
        }
        p = he + 1;
    } else {
        he = p;
        while (*he && *he != ':' && *he != '/')
            he++;
        p = he;
    }
    size_t hl = (size_t)(he - hs);
    if (hl == 0 || hl >= hostlen) {
        *why = hl == 0 ? "no host" : "host too long";
        return -1;
    }
    memcpy(host, hs, hl);
    host[hl] = '\0';
    if (hs != url && hs[-1] == '[') {
        struct in6_addr a6;
        if (inet_pton(AF_INET6, host, &a6) != 1) {
            *why = "[...] must hold an IPv6 address";
            return -1;
        }
    } else if (!cv_valid_domain(host)) {
        *why = "bad host name";
        return -1;
    }
    if (*p == ':') {
        p++;
        size_t d = 0;
        while (p[d] >= '0' && p[d] <= '9')
            d++;
        uint64_t v;
        if (parse_u64(p, d, &v) != 0 || v == 0 || v > 65535) {
            *why = "bad port (1-65535)";
            return -1;
        }
        *port = (uint16_t)v;
        p += d;
    }
    if (*p == '/')
        p++;
    if (*p) {
        *why = "unexpected text after HOST:PORT (no user, path or query is allowed; credentials go in auth-file)";
        return -1;
    }
    return 0;
}

/* ---- credentials ------------------------------------------------------------------ */

void relay_creds_free(struct relay_cred *v, size_t n)
{
    for (size_t i = 0; v && i < n; i++) {
        free(v[i].login);
        if (v[i].password) {
            mem_wipe(v[i].password, strlen(v[i].password));
            free(v[i].password);
        }
    }
    free(v);
}

int relay_creds_parse(const char *text, size_t len, struct relay_cred **out, size_t *n, char *err, size_t errlen)
{
    struct relay_cred *v = xcalloc(RELAY_MAX_CREDS, sizeof(*v));
    size_t k = 0;
    int lineno = 0;
    const char *p = text, *end = text + len;
    while (p < end) {
        lineno++;
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        const char *next = nl ? nl + 1 : end;
        if (le > p && le[-1] == '\r')
            le--;
        const char *s = p;
        while (s < le && (*s == ' ' || *s == '\t'))
            s++;
        if (s == le || *s == '#') {
            p = next;
            continue;
        }
        const char *ls = s;
        while (s < le && *s != ' ' && *s != '\t')
            s++;
        const char *lend = s;
        while (s < le && (*s == ' ' || *s == '\t'))
            s++;
        const char *bad = NULL;
        if (s == le)
            bad = "a line must be `login password` (no password found)";
        else if (k == RELAY_MAX_CREDS)
            bad = "too many credentials (at most 16)";
        else if ((size_t)(lend - ls) > 512 || (size_t)(le - s) > 512)
            bad = "login or password longer than 512 octets";
        for (const char *c = ls; !bad && c < le; c++)
            if ((unsigned char)*c < 0x20 && *c != '\t')
                bad = "control character in the line";
        if (!bad && memchr(ls, '\0', (size_t)(le - ls)))
            bad = "NUL in the line";
        if (bad) {
            snprintf(err, errlen, "line %d: %s", lineno, bad);
            relay_creds_free(v, k);
            return -1;
        }
        v[k].login = xstrndup(ls, (size_t)(lend - ls));
        v[k].password = xstrndup(s, (size_t)(le - s));
        k++;
        p = next;
    }
    if (k == 0) {
        snprintf(err, errlen, "no `login password` line");
        relay_creds_free(v, k);
        return -1;
    }
    *out = v;
    *n = k;
    return 0;
}

int relay_creds_load(const char *path, struct relay_cred **out, size_t *n, char *err, size_t errlen)
{
    size_t len;
    char *text = read_file_max(path, CREDS_FILE_MAX, &len);
    if (!text) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    char why[160];
    int r = relay_creds_parse(text, len, out, n, why, sizeof(why));
    if (r != 0)
        snprintf(err, errlen, "%s: %s", path, why);
    mem_wipe(text, len);
    free(text);
    return r;
}

/* ---- options --------------------------------------------------------------------------- */

static const char *tname(const struct transport_cfg *cfg)
{
    return cfg->name ? cfg->name : "?";
}

static void set_defaults(struct relay_opts *o, enum relay_kind kind)
{
    memset(o, 0, sizeof(*o));
    o->kind = kind;
    o->tls = kind == RELAY_MX ? TLSP_OPPORTUNISTIC : TLSP_REQUIRED;
    o->tls_verify = kind == RELAY_SMARTHOST;
    o->port = 25;
    o->dns.timeout_ms = 10000;
    o->dns.nosearch = kind == RELAY_MX;
    o->connect_timeout_ms = 30000;
    o->command_timeout_ms = 300000;
    o->data_timeout_ms = 600000;
    o->max_conn = 20;
    o->max_conn_per_dest = 5;
    o->max_msgs_per_conn = 100;
    o->idle_ms = 10000;
    o->limit_wait_ms = 60000;
    o->max_rcpts = 100;
    o->max_addrs = 10;
    o->chunking = 1;
    if (gethostname(o->helo, sizeof(o->helo) - 1) != 0 || !cv_valid_domain(o->helo))
        str_copy(o->helo, "localhost", sizeof(o->helo));
}

/* One special option; 0 or -1 (with the reason in *why). */
static int special_opt(struct relay_opts *o, const struct kv *kv, int *implicit, int *starttls_line, const char **why)
{
    const char *k = kv->key, *v = kv->value;
    if (strcmp(k, "url") == 0)
        return relay_parse_url(v, o->host, sizeof(o->host), &o->port, implicit, why);
    if (strcmp(k, "starttls") == 0) {
        *starttls_line = kv->line;
        if (o->kind == RELAY_SMARTHOST) {
            if (strcmp(v, "required") == 0)
                o->tls = TLSP_REQUIRED;
            else if (strcmp(v, "optional") == 0)
                o->tls = TLSP_OPTIONAL;
            else {
                *why = "expected required or optional";
                return -1;
            }
        } else if (strcmp(v, "opportunistic") == 0) {
            o->tls = TLSP_OPPORTUNISTIC;
        } else if (strcmp(v, "required") == 0) {
            o->tls = TLSP_REQUIRED;
        } else if (strcmp(v, "off") == 0) {
            o->tls = TLSP_OFF;
        } else {
            *why = "expected opportunistic, required or off";
            return -1;
        }
        return 0;
    }
    if (strcmp(k, "auth-file") == 0 || strcmp(k, "ca-file") == 0) {
        if (v[0] != '/') {
            *why = "must be an absolute path";
            return -1;
        }
        char **dst = k[0] == 'a' ? &o->auth_file : &o->ca_file;
        free(*dst);
        *dst = xstrdup(v);
        return 0;
    }
    if (strcmp(k, "tls-verify") == 0 || strcmp(k, "chunking") == 0) {
        if (strcmp(v, "yes") != 0 && strcmp(v, "no") != 0) {
            *why = "expected yes or no";
            return -1;
        }
        *(k[0] == 't' ? &o->tls_verify : &o->chunking) = v[0] == 'y';
        return 0;
    }
    if (strcmp(k, "helo") == 0) {
        if (!cv_valid_domain(v)) {
            *why = "expected a host name (letters, digits, '-' in dot-separated labels)";
            return -1;
        }
        str_copy(o->helo, v, sizeof(o->helo));
        return 0;
    }
    if (strcmp(k, "resolver") == 0)
        return dns_parse_server(v, o->dns.server, sizeof(o->dns.server), why);
    if (strcmp(k, "port") == 0) {
        uint64_t p;
        if (parse_u64(v, strlen(v), &p) != 0 || p == 0 || p > 65535) {
            *why = "expected a port from 1 to 65535";
            return -1;
        }
        o->port = (uint16_t)p;
        return 0;
    }
    *why = "unhandled option";
    return -1;
}

int relay_opts_parse(const struct transport_cfg *cfg, enum relay_kind kind, struct relay_opts *o,
                     const char *file, struct errlist *errs)
{
    const char *type = kind == RELAY_MX ? "mx" : "smarthost";
    unsigned kbit = kind == RELAY_MX ? KIND_MX : KIND_SH;
    int bad = 0, implicit = 0, url_line = 0, starttls_line = 0;
    set_defaults(o, kind);
    if (cfg->hostname && cv_valid_domain(cfg->hostname))
        str_copy(o->helo, cfg->hostname, sizeof(o->helo)); /* the config's hostname; `helo` overrides */
    str_copy(o->name, tname(cfg), sizeof(o->name));
    if (cfg->path) {
        errlist_add(errs, file, cfg->line, "transport %s: `path` is for maildir transports, not %s", tname(cfg),
                    type);
        bad = 1;
    }
    for (size_t i = 0; i < cfg->nopts; i++) {
        const struct kv *kv = &cfg->opts[i];
        const struct optdef *d = NULL;
        for (size_t j = 0; j < ARRAY_LEN(optdefs); j++)
            if (strcmp(optdefs[j].key, kv->key) == 0)
                d = &optdefs[j];
        if (!d || !(d->kinds & kbit)) {
            errlist_add(errs, file, kv->line, "transport %s: unknown option `%s` for type %s%s", tname(cfg), kv->key,
                        type, d ? (kind == RELAY_MX ? " (it is a smarthost option)" : " (it is an mx option)") : "");
            bad = 1;
            continue;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(cfg->opts[j].key, kv->key) == 0) {
                errlist_add(errs, file, kv->line, "transport %s: duplicate option `%s` (first set at line %d)",
                            tname(cfg), kv->key, cfg->opts[j].line);
                bad = 1;
                d = NULL;
                break;
            }
        }
        if (!d)
            continue;
        if (strcmp(kv->key, "url") == 0)
            url_line = kv->line;
        const char *why = NULL;
        int r = 0;
        if (d->type == OT_SPECIAL) {
            r = special_opt(o, kv, &implicit, &starttls_line, &why);
        } else {
            uint64_t v;
            if (d->type == OT_DUR)
                r = relay_parse_duration(kv->value, &v);
            else
                r = parse_u64(kv->value, strlen(kv->value), &v);
            if (r == 0 && (v < d->min || v > d->max))
                r = -1;
            if (r == 0 && strcmp(kv->key, "dns-timeout") == 0)
                o->dns.timeout_ms = (int)v;
            else if (r == 0)
                *(unsigned *)(void *)((char *)o + d->off) = (unsigned)v;
            why = d->form;
        }
        if (r != 0) {
            errlist_add(errs, file, kv->line, "transport %s: bad value `%s` for `%s`: %s", tname(cfg), kv->value,
                        kv->key, why ? why : "invalid");
            bad = 1;
        }
    }
    if (kind == RELAY_SMARTHOST) {
        if (!url_line) {
            errlist_add(errs, file, cfg->line,
                        "transport %s: smarthost needs `url smtp://HOST:PORT` (STARTTLS) or `url smtps://HOST:PORT`",
                        tname(cfg));
            bad = 1;
        } else if (implicit) {
            if (starttls_line) {
                errlist_add(errs, file, starttls_line,
                            "transport %s: `starttls` is for smtp:// urls; smtps:// always uses TLS", tname(cfg));
                bad = 1;
            }
            o->tls = TLSP_IMPLICIT;
        }
    }
    if (o->max_conn_per_dest > o->max_conn) {
        errlist_add(errs, file, cfg->line,
                    "transport %s: max-connections-per-host (%u) must not exceed max-connections (%u)", tname(cfg),
                    o->max_conn_per_dest, o->max_conn);
        bad = 1;
    }
    if (bad) {
        relay_opts_free(o);
        return -1;
    }
    return 0;
}

void relay_opts_free(struct relay_opts *o)
{
    free(o->ca_file);
    free(o->auth_file);
    o->ca_file = o->auth_file = NULL;
}

static int opt_line(const struct transport_cfg *cfg, const char *key)
{
    for (size_t i = 0; i < cfg->nopts; i++)
        if (strcmp(cfg->opts[i].key, key) == 0)
            return cfg->opts[i].line;
    return cfg->line;
}

int relay_opts_check_files(const struct transport_cfg *cfg, const struct relay_opts *o, const char *file,
                           struct errlist *errs)
{
    int bad = 0;
    const char *paths[2] = {o->ca_file, o->auth_file};
    const char *keys[2] = {"ca-file", "auth-file"};
    for (int i = 0; i < 2; i++) {
        if (!paths[i])
            continue;
        int line = opt_line(cfg, keys[i]);
        struct stat st;
        int fd = open(paths[i], O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0 || fstat(fd, &st) != 0) {
            errlist_add(errs, file, line, "transport %s: cannot read %s %s: %s", tname(cfg), keys[i], paths[i],
                        strerror(errno));
            if (fd >= 0)
                close(fd);
            bad = 1;
            continue;
        }
        close(fd);
        if (!S_ISREG(st.st_mode)) {
            errlist_add(errs, file, line, "transport %s: %s %s is not a regular file", tname(cfg), keys[i], paths[i]);
            bad = 1;
            continue;
        }
        if (i == 1 && (st.st_mode & 027)) {
            errlist_add(errs, file, line,
                        "transport %s: auth-file %s has mode %04o: it must not be accessible by others nor "
                        "writable by its group; fix it with `chmod 600 %s` (or `chmod 640 %s` to let its group "
                        "read it)",
                        tname(cfg), paths[i], (unsigned)(st.st_mode & 07777), paths[i], paths[i]);
            bad = 1;
            continue;
        }
        if (i == 1) {
            struct relay_cred *c;
            size_t n;
            char err[512];
            if (relay_creds_load(paths[i], &c, &n, err, sizeof(err)) != 0) {
                errlist_add(errs, file, line, "transport %s: auth-file %s", tname(cfg), err);
                bad = 1;
            } else {
                relay_creds_free(c, n);
            }
        }
    }
    return bad ? -1 : 0;
}

/* ---- the instance ------------------------------------------------------------------------ */

static SSL_CTX *make_ctx(const struct relay_opts *o, char *err, size_t errlen)
{
    struct tls_client_opts to = {.ca_file = o->ca_file, .verify = o->tls_verify};
    return tls_client_ctx_new(&to, err, errlen);
}

int relay_inst_check(const struct transport_cfg *cfg, enum relay_kind kind, const char *file, struct errlist *errs)
{
    struct relay_opts o;
    if (relay_opts_parse(cfg, kind, &o, file, errs) != 0)
        return -1;
    int r = relay_opts_check_files(cfg, &o, file, errs);
    if (r == 0 && o.tls != TLSP_OFF) {
        char err[256];
        SSL_CTX *ctx = make_ctx(&o, err, sizeof(err));
        if (!ctx) {
            errlist_add(errs, file, opt_line(cfg, "ca-file"), "transport %s: TLS client setup: %s", tname(cfg), err);
            r = -1;
        }
        SSL_CTX_free(ctx);
    }
    relay_opts_free(&o);
    return r;
}

struct relay_inst *relay_inst_open(const struct transport_cfg *cfg, enum relay_kind kind, struct errlist *errs)
{
    struct relay_inst *ri = xcalloc(1, sizeof(*ri));
    if (relay_opts_parse(cfg, kind, &ri->o, NULL, errs) != 0) {
        free(ri);
        return NULL;
    }
    char err[512];
    if (ri->o.auth_file && relay_creds_load(ri->o.auth_file, &ri->creds, &ri->ncreds, err, sizeof(err)) != 0) {
        errlist_add(errs, NULL, 0, "transport %s (line %d): auth-file %s", tname(cfg), cfg->line, err);
        relay_inst_close(ri);
        return NULL;
    }
    if (ri->o.tls != TLSP_OFF) {
        ri->tls_ctx = make_ctx(&ri->o, err, sizeof(err));
        if (!ri->tls_ctx) {
            errlist_add(errs, NULL, 0, "transport %s (line %d): TLS client setup: %s", tname(cfg), cfg->line, err);
            relay_inst_close(ri);
            return NULL;
        }
    }
    ri->pool = relay_pool_new(&ri->o);
    char qn[LOGQ_MAX], qh[LOGQ_MAX];
    if (kind == RELAY_SMARTHOST && ri->o.tls == TLSP_OPTIONAL)
        logkv(LOG_LVL_WARN, NULL, "relay.config",
              "transport=%s host=%s warning=\"starttls optional: messages and the envelope may travel in plain "
              "text when the server offers no STARTTLS\"",
              log_q(qn, sizeof(qn), ri->o.name), log_q(qh, sizeof(qh), ri->o.host));
    if (kind == RELAY_SMARTHOST && !ri->o.tls_verify)
        logkv(LOG_LVL_WARN, NULL, "relay.config",
              "transport=%s host=%s warning=\"tls-verify no: the server certificate is not checked\"",
              log_q(qn, sizeof(qn), ri->o.name), log_q(qh, sizeof(qh), ri->o.host));
    return ri;
}

void relay_inst_close(struct relay_inst *ri)
{
    if (!ri)
        return;
    relay_pool_free(ri->pool);
    SSL_CTX_free(ri->tls_ctx);
    relay_creds_free(ri->creds, ri->ncreds);
    relay_opts_free(&ri->o);
    free(ri);
}
