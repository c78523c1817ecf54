/* Unit tests for core/config and core/cidr: a full config with every key
 * set, every default, each kind of error at its exact line, several errors
 * at once, file permission checks, routes and their precedence, sizes and
 * durations with their bounds, quoting and comments, relative paths,
 * DKIM blocks (keys made here with OpenSSL: loading, type and size checks,
 * every error at its line, look-ups by domain and by date) and CIDR
 * parsing/matching (IPv4, IPv6, IPv4-mapped, edge prefixes), listeners'
 * `trusted` networks and their refusals (submission ports, /0). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "core/cidr.h"
#include "core/config.h"
#include "core/log.h"
#include "core/util.h"

/* ---- fixture: a temporary directory with certificate, key and accounts files */

struct fx {
    char dir[64];
    char crt[128], key[128], crt2[128], key2[128], acc[128], conf[128];
};

static void write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write_all(fd, text, strlen(text)), 0);
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    strcpy(f->dir, "/tmp/submitd-cfgtest-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    snprintf(f->crt, sizeof(f->crt), "%s/a.crt", f->dir);
    snprintf(f->key, sizeof(f->key), "%s/a.key", f->dir);
    snprintf(f->crt2, sizeof(f->crt2), "%s/b.crt", f->dir);
    snprintf(f->key2, sizeof(f->key2), "%s/b.key", f->dir);
    snprintf(f->acc, sizeof(f->acc), "%s/accounts", f->dir);
    snprintf(f->conf, sizeof(f->conf), "%s/submitd.conf", f->dir);
    write_file(f->crt, "-----BEGIN CERTIFICATE-----\n", 0644);
    write_file(f->key, "-----BEGIN PRIVATE KEY-----\n", 0600);
    write_file(f->crt2, "-----BEGIN CERTIFICATE-----\n", 0644);
    write_file(f->key2, "-----BEGIN PRIVATE KEY-----\n", 0600);
    write_file(f->acc, "alice@example.test:{SHA512-CRYPT}$6$x$y::::::\n", 0600);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    DIR *d = opendir(f->dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            char p[512];
            snprintf(p, sizeof(p), "%s/%s", f->dir, de->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

static struct config *load(const struct fx *f, const char *text, struct errlist *e)
{
    write_file(f->conf, text, 0644);
    return config_load(f->conf, e);
}

/* The base config: 13 lines; text appended starts at line 14. */
static char *base_conf(const struct fx *f, const char *append)
{
    struct strbuf b;
    sb_init(&b);
    sb_printf(&b,
              "accounts %s\n"              /* 1 */
              "tls {\n"                    /* 2 */
              "    certificate %s %s\n"    /* 3 */
              "}\n"                        /* 4 */
              "listener sub {\n"           /* 5 */
              "    port 587\n"             /* 6 */
              "    mode starttls\n"        /* 7 */
              "}\n"                        /* 8 */
              "transport local {\n"        /* 9 */
              "    type maildir\n"         /* 10 */
              "    path /tmp/mail\n"       /* 11 */
              "}\n"                        /* 12 */
              "route * local\n"            /* 13 */
              "%s",
              f->acc, f->crt, f->key, append);
    return sb_steal(&b);
}

static void dump(const struct errlist *e)
{
    for (size_t i = 0; i < e->n; i++)
        print_message("  error[%zu]: %s\n", i, e->v[i]);
}

/* Asserts an error `conf:line: ...needle...` (line 0: `conf: ...`). */
static void expect_error(const struct errlist *e, const char *conf, int line, const char *needle)
{
    char prefix[256];
    if (line > 0)
        snprintf(prefix, sizeof(prefix), "%s:%d: ", conf, line);
    else
        snprintf(prefix, sizeof(prefix), "%s: ", conf);
    for (size_t i = 0; i < e->n; i++)
        if (strncmp(e->v[i], prefix, strlen(prefix)) == 0 && strstr(e->v[i] + strlen(prefix), needle))
            return;
    dump(e);
    fail_msg("no error `%s...%s`", prefix, needle);
}

/* ---- good configs ----------------------------------------------------------- */

static void test_defaults(void **state)
{
    struct fx *f = *state;
    struct errlist e;
    errlist_init(&e);
    char *text = base_conf(f, "");
    struct config *c = load(f, text, &e);
    free(text);
    if (!c)
        dump(&e);
    assert_non_null(c);
    assert_int_equal(e.n, 0);
    assert_int_equal(c->refs, 1);
    assert_string_equal(c->file, f->conf);

    char h[256] = {0};
    gethostname(h, sizeof(h) - 1);
    assert_non_null(c->hostname);
    if (h[0])
        assert_string_equal(c->hostname, h);
    assert_string_equal(c->user, "submitd");
    assert_int_equal(c->workers, 0);
    assert_int_equal(c->auth_threads, 0);
    assert_int_equal(c->commit_threads, 8);
    assert_int_equal(c->journal_segments, 16);
    assert_string_equal(c->spool_dir, "/var/spool/submitd");
    assert_string_equal(c->accounts, f->acc);
    assert_null(c->pid_file);
    assert_string_equal(c->control_socket, "/var/spool/submitd/control.sock");
    assert_int_equal(c->log_syslog, 0);
    assert_int_equal(c->log_level, LOG_LVL_INFO);
    assert_int_equal(c->listen_backlog, 4096);
    assert_int_equal(c->auth_cache_ttl, 300);
    assert_int_equal(c->add_received, 1);
    assert_int_equal(c->add_message_id, 1);
    assert_int_equal(c->add_date, 1);
    assert_int_equal(c->check_from_header, 1);
    assert_int_equal(c->allow_null_sender, 1);

    assert_int_equal(c->tls.ncerts, 1);
    assert_string_equal(c->tls.certs[0].cert, f->crt);
    assert_string_equal(c->tls.certs[0].key, f->key);
    assert_int_equal(c->tls.certs[0].line, 3);
    assert_int_equal(c->tls.min_version, 0x0303);
    assert_string_equal(c->tls.ciphers, "ECDHE+AESGCM:ECDHE+CHACHA20");
    assert_string_equal(c->tls.ciphersuites,
                        "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");
    assert_int_equal(c->tls.session_tickets, 1);
    assert_int_equal(c->tls.handshake_timeout, 30);

    const struct limits_cfg *L = &c->limits;
    assert_int_equal(L->line_length, 4096);
    assert_int_equal(L->auth_line_length, 12288);
    assert_int_equal(L->text_line_length, 1000);
    assert_int_equal(L->message_size, 25 * 1024 * 1024);
    assert_int_equal(L->header_size, 1024 * 1024);
    assert_int_equal(L->recipients, 100);
    assert_int_equal(L->messages, 1000);
    assert_int_equal(L->errors, 10);
    assert_int_equal(L->auth_failures, 3);
    assert_int_equal(L->idle_timeout, 300);
    assert_int_equal(L->data_timeout, 600);
    assert_int_equal(L->auth_delay_ms, 1000);
    assert_int_equal(L->auth_delay_max_ms, 30000);
    assert_int_equal(L->shutdown_timeout, 30);

    assert_int_equal(c->queue.retry_initial, 300);
    assert_int_equal(c->queue.retry_max, 14400);
    assert_int_equal(c->queue.lifetime, 5 * 86400);
    assert_int_equal(c->queue.delivery_threads, 16);
    assert_int_equal(c->queue.delay_warning, 4 * 3600);
    assert_int_equal(c->queue.bounce_size, 256 * 1024);

    assert_int_equal(c->nlisteners, 1);
    const struct listener_cfg *l = &c->listeners[0];
    assert_string_equal(l->name, "sub");
    assert_int_equal(l->line, 5);
    assert_int_equal(l->naddrs, 1);
    assert_string_equal(l->addrs[0], "127.0.0.1");
    assert_int_equal(l->port, 587);
    assert_int_equal(l->mode, LISTEN_STARTTLS);
    assert_int_equal(l->ncerts, 0);
    assert_int_equal(l->allow.n, 0);
    assert_int_equal(l->deny.n, 0);
    assert_int_equal(l->trusted.n, 0); /* nobody is trusted by default */
    assert_int_equal(l->max_conn, 1000);
    assert_int_equal(l->max_conn_per_ip, 20);

    assert_int_equal(c->ntransports, 1);
    assert_string_equal(c->transports[0].name, "local");
    assert_string_equal(c->transports[0].type, "maildir");
    assert_string_equal(c->transports[0].path, "/tmp/mail");
    assert_int_equal(c->transports[0].line, 9);
    assert_int_equal(c->transports[0].nopts, 0);
    assert_int_equal(c->nroutes, 1);
    assert_string_equal(c->routes[0].pattern, "*");
    assert_string_equal(c->routes[0].transport, "local");
    assert_int_equal(c->routes[0].line, 13);

    assert_ptr_equal(config_listener(c, "sub"), l);
    assert_null(config_listener(c, "nope"));
    assert_ptr_equal(config_route(c, "any.where"), &c->transports[0]);

    assert_ptr_equal(config_ref(c), c);
    assert_int_equal(c->refs, 2);
    config_unref(c);
    assert_int_equal(c->refs, 1);
    config_unref(c);
    config_unref(NULL);
    errlist_free(&e);
}

static void test_full_config(void **state)
{
    struct fx *f = *state;
    struct errlist e;
    errlist_init(&e);
    struct strbuf b;
    sb_init(&b);
    sb_printf(&b,
              "# every key, none at its default\n"
              "hostname mx.example.test\n"
              "user mail-user\n"
              "workers 4\n"
              "auth-threads 3\n"
              "commit-threads 16\n"
              "journal-segments 64\n"
              "spool-dir spool\n" /* relative: the config's directory */
              "accounts ./accounts\n"
              "pid-file /run/x.pid\n"
              "log syslog\n"
              "log-level debug\n"
              "listen-backlog 128\n"
              "auth-cache-ttl 1m\n"
              "add-received no\n"
              "add-message-id off\n"
              "add-date false\n"
              "check-from-header 0\n"
              "allow-null-sender NO\n"
              "tls {\n"
              "    certificate a.crt a.key\n"
              "    certificate %s %s\n"
              "    min-version 1.3\n"
              "    ciphers ECDHE+AESGCM\n"
              "    ciphersuites TLS_AES_128_GCM_SHA256\n"
              "    session-tickets no\n"
              "    handshake-timeout 1m\n"
              "}\n"
              "limits {\n"
              "    line-length 1K\n"
              "    auth-line-length 2048\n"
              "    text-line-length 2000\n"
              "    message-size 10M\n"
              "    header-size 64K\n"
              "    recipients 7\n"
              "    messages 8\n"
              "    errors 9\n"
              "    auth-failures 5\n"
              "    idle-timeout 90\n"
              "    data-timeout 2m\n"
              "    auth-delay 250ms\n"
              "    auth-delay-max 2s\n"
              "    shutdown-timeout 0\n"
              "}\n"
              "queue {\n"
              "    retry-initial 30s\n"
              "    retry-max 2h\n"
              "    lifetime 1d\n"
              "    delivery-threads 4\n"
              "}\n"
              "route *.example.org relay   # a transport defined further down\n"
              "listener one {\n"
              "    address 0.0.0.0\n"
              "    address ::\n"
              "    port 2587\n"
              "    mode starttls\n"
              "    certificate b.crt b.key\n"
              "    allow 192.0.2.0/24\n"
              "    allow 2001:db8::/32\n"
              "    deny 192.0.2.128/25\n"
              "    max-connections 50\n"
              "    max-connections-per-ip 5\n"
              "}\n"
              "listener two {\n"
              "    address ::1\n"
              "    port 2465\n"
              "    mode implicit-tls\n"
              "}\n"
              "transport local {\n"
              "    type maildir\n"
              "    path /var/mail/%%d/%%u\n"
              "}\n"
              "transport relay {\n"
              "    type maildir\n"
              "    path mail\n"
              "    host   smtp.example.org    587\n"
              "    note \"a # b\" \"c\\\"d\\\\e\"\n"
              "}\n"
              "route * local\n",
              f->crt2, f->key2);
    struct config *c = load(f, b.s, &e);
    sb_free(&b);
    if (!c)
        dump(&e);
    assert_non_null(c);

    char want[256];
    assert_string_equal(c->hostname, "mx.example.test");
    assert_string_equal(c->user, "mail-user");
    assert_int_equal(c->workers, 4);
    assert_int_equal(c->auth_threads, 3);
    assert_int_equal(c->commit_threads, 16);
    assert_int_equal(c->journal_segments, 64);
    snprintf(want, sizeof(want), "%s/spool", f->dir);
    assert_string_equal(c->spool_dir, want);
    assert_string_equal(c->accounts, f->acc);
    assert_string_equal(c->pid_file, "/run/x.pid");
    assert_int_equal(c->log_syslog, 1);
    assert_int_equal(c->log_level, LOG_LVL_DEBUG);
    assert_int_equal(c->listen_backlog, 128);
    assert_int_equal(c->auth_cache_ttl, 60);
    assert_int_equal(c->add_received, 0);
    assert_int_equal(c->add_message_id, 0);
    assert_int_equal(c->add_date, 0);
    assert_int_equal(c->check_from_header, 0);
    assert_int_equal(c->allow_null_sender, 0);

    assert_int_equal(c->tls.ncerts, 2);
    assert_string_equal(c->tls.certs[0].cert, f->crt);
    assert_string_equal(c->tls.certs[0].key, f->key);
    assert_int_equal(c->tls.certs[0].line, 21);
    assert_string_equal(c->tls.certs[1].cert, f->crt2);
    assert_int_equal(c->tls.certs[1].line, 22);
    assert_int_equal(c->tls.min_version, 0x0304);
    assert_string_equal(c->tls.ciphers, "ECDHE+AESGCM");
    assert_string_equal(c->tls.ciphersuites, "TLS_AES_128_GCM_SHA256");
    assert_int_equal(c->tls.session_tickets, 0);
    assert_int_equal(c->tls.handshake_timeout, 60);

    const struct limits_cfg *L = &c->limits;
    assert_int_equal(L->line_length, 1024);
    assert_int_equal(L->auth_line_length, 2048);
    assert_int_equal(L->text_line_length, 2000);
    assert_int_equal(L->message_size, 10 * 1024 * 1024);
    assert_int_equal(L->header_size, 64 * 1024);
    assert_int_equal(L->recipients, 7);
    assert_int_equal(L->messages, 8);
    assert_int_equal(L->errors, 9);
    assert_int_equal(L->auth_failures, 5);
    assert_int_equal(L->idle_timeout, 90);
    assert_int_equal(L->data_timeout, 120);
    assert_int_equal(L->auth_delay_ms, 250);
    assert_int_equal(L->auth_delay_max_ms, 2000);
    assert_int_equal(L->shutdown_timeout, 0);

    assert_int_equal(c->queue.retry_initial, 30);
    assert_int_equal(c->queue.retry_max, 7200);
    assert_int_equal(c->queue.lifetime, 86400);
    assert_int_equal(c->queue.delivery_threads, 4);

    assert_int_equal(c->nlisteners, 2);
    const struct listener_cfg *l = config_listener(c, "one");
    assert_ptr_equal(l, &c->listeners[0]);
    assert_int_equal(l->line, 52);
    assert_int_equal(l->naddrs, 2);
    assert_string_equal(l->addrs[0], "0.0.0.0");
    assert_string_equal(l->addrs[1], "::");
    assert_int_equal(l->port, 2587);
    assert_int_equal(l->mode, LISTEN_STARTTLS);
    assert_int_equal(l->ncerts, 1);
    assert_string_equal(l->certs[0].cert, f->crt2);
    assert_string_equal(l->certs[0].key, f->key2);
    assert_int_equal(l->certs[0].line, 57);
    assert_int_equal(l->allow.n, 2);
    assert_int_equal(l->allow.v[0].family, AF_INET);
    assert_int_equal(l->allow.v[0].prefix, 24);
    assert_int_equal(l->allow.v[1].family, AF_INET6);
    assert_int_equal(l->allow.v[1].prefix, 32);
    assert_int_equal(l->deny.n, 1);
    assert_int_equal(l->deny.v[0].prefix, 25);
    assert_int_equal(l->max_conn, 50);
    assert_int_equal(l->max_conn_per_ip, 5);
    l = config_listener(c, "two");
    assert_ptr_equal(l, &c->listeners[1]);
    assert_int_equal(l->naddrs, 1);
    assert_string_equal(l->addrs[0], "::1");
    assert_int_equal(l->mode, LISTEN_IMPLICIT_TLS);
    assert_int_equal(l->ncerts, 0);

    assert_int_equal(c->ntransports, 2);
    assert_string_equal(c->transports[0].path, "/var/mail/%d/%u");
    const struct transport_cfg *t = &c->transports[1];
    assert_string_equal(t->name, "relay");
    assert_string_equal(t->type, "maildir");
    snprintf(want, sizeof(want), "%s/mail", f->dir);
    assert_string_equal(t->path, want);
    assert_int_equal(t->nopts, 2);
    assert_string_equal(t->opts[0].key, "host");
    assert_string_equal(t->opts[0].value, "smtp.example.org 587");
    assert_int_equal(t->opts[0].line, 76);
    assert_string_equal(t->opts[1].key, "note");
    assert_string_equal(t->opts[1].value, "a # b c\"d\\e");
    assert_int_equal(t->opts[1].line, 77);

    assert_int_equal(c->nroutes, 2);
    assert_ptr_equal(config_route(c, "mx.example.org"), t);
    assert_ptr_equal(config_route(c, "example.org"), &c->transports[0]);
    config_unref(c);
    errlist_free(&e);
}

/* Routes: exact first, then the longest *.suffix, then *; case-insensitive. */
static void test_routes(void **state)
{
    struct fx *f = *state;
    struct errlist e;
    errlist_init(&e);
    char *text = base_conf(f,
                           "transport exact {\n    type maildir\n}\n"
                           "transport sub {\n    type maildir\n}\n"
                           "transport deep {\n    type maildir\n}\n"
                           "route *.example.com sub\n" /* the shorter first: longest wins, not first */
                           "route *.deep.example.com deep\n"
                           "route Example.COM exact\n");
    struct config *c = load(f, text, &e);
    free(text);
    if (!c)
        dump(&e);
    assert_non_null(c);
    const struct transport_cfg *local = &c->transports[0], *exact = &c->transports[1], *sub = &c->transports[2],
                               *deep = &c->transports[3];
    assert_string_equal(deep->name, "deep");
    assert_ptr_equal(config_route(c, "example.com"), exact);
    assert_ptr_equal(config_route(c, "EXAMPLE.com"), exact);
    assert_ptr_equal(config_route(c, "a.example.com"), sub);
    assert_ptr_equal(config_route(c, "A.B.Example.Com"), sub);
    assert_ptr_equal(config_route(c, "deep.example.com"), sub); /* *.deep.x is not deep.x itself */
    assert_ptr_equal(config_route(c, "x.deep.example.com"), deep);
    assert_ptr_equal(config_route(c, "y.x.DEEP.example.com"), deep);
    assert_ptr_equal(config_route(c, "notexample.com"), local);
    assert_ptr_equal(config_route(c, "example.com.evil"), local);
    assert_ptr_equal(config_route(c, "other.org"), local);
    assert_ptr_equal(config_route(c, ""), local);
    assert_null(config_route(c, NULL));
    assert_null(config_route(NULL, "example.com"));
    config_unref(c);
    errlist_free(&e);
}

/* ---- errors ------------------------------------------------------------------- */

struct err_case {
    const char *append; /* appended at line 14 of base_conf */
    int line;
    const char *needle;
};

static const struct err_case err_cases[] = {
    {"foo 1\n", 14, "unknown key `foo` at top level"},
    {"control-socket /run/submitd.sock\ncontrol-socket /run/x.sock\n", 15,
     "duplicate key `control-socket` (first set at line 14)"},
    {"message-size 1M\n", 14, "unknown key `message-size` at top level (it belongs in the limits block)"},
    {"limits {\n    foo 1\n}\n", 15, "unknown key `foo` in limits block"},
    {"limits {\n    port 1\n}\n", 15, "unknown key `port` in limits block (it belongs in the listener block)"},
    {"limits {\n    workers 1\n}\n", 15, "unknown key `workers` in limits block (it is a top-level key)"},
    {"limits\n", 14, "`limits` is a block"},
    {"workers lots\n", 14, "bad value `lots` for `workers`: expected a whole number from 0 to 256"},
    {"workers 257\n", 14, "bad value `257` for `workers`: expected a whole number from 0 to 256"},
    {"workers -1\n", 14, "bad value `-1` for `workers`"},
    {"workers 99999999999999999999999\n", 14, "bad value `99999999999999999999999` for `workers`"},
    {"commit-threads 0\n", 14, "bad value `0` for `commit-threads`: expected a whole number from 1 to 256"},
    {"journal-segments 1\n", 14, "bad value `1` for `journal-segments`: expected a whole number from 2 to 4096"},
    {"listen-backlog 65536\n", 14, "from 1 to 65535"},
    {"workers 1\nworkers 2\n", 15, "duplicate key `workers` (first set at line 14)"},
    {"accounts /x\n", 14, "duplicate key `accounts` (first set at line 1)"},
    {"workers 1 2\n", 14, "`workers` takes one value, a whole number from 0 to 256, not 2"},
    {"workers\n", 14, "`workers` takes one value"},
    {"add-date maybe\n", 14, "bad value `maybe` for `add-date`: expected yes or no"},
    {"log file\n", 14, "bad value `file` for `log`: expected one of stderr, syslog"},
    {"log-level verbose\n", 14, "expected one of error, warn, info, debug"},
    {"auth-cache-ttl 2d\n", 14, "expected a duration from 0 to 1d in whole seconds"},
    {"hostname \"bad host\"\n", 14, "bad value `bad host` for `hostname`: expected a host name"},
    {"user \"\"\n", 14, "bad value `` for `user`"},
    {"pid-file \"\"\n", 14, "bad value `` for `pid-file`"},
    /* sizes and durations */
    {"limits {\n    message-size 3G\n}\n", 15, "bad value `3G` for `message-size`: expected a size from 1K to 2G"},
    {"limits {\n    message-size 1023\n}\n", 15, "bad value `1023` for `message-size`"},
    {"limits {\n    message-size 10MB\n}\n", 15, "bad value `10MB` for `message-size`"},
    {"limits {\n    message-size 1.5M\n}\n", 15, "bad value `1.5M` for `message-size`"},
    {"limits {\n    header-size 65M\n}\n", 15, "expected a size from 4K to 64M"},
    {"limits {\n    line-length 511\n}\n", 15, "expected a size from 512 to 64K"},
    {"limits {\n    text-line-length 999\n}\n", 15, "expected a size from 1000 to 1000000"},
    {"limits {\n    idle-timeout 2h\n}\n", 15, "bad value `2h` for `idle-timeout`: expected a duration from 1s to 1h"},
    {"limits {\n    idle-timeout 0\n}\n", 15, "bad value `0` for `idle-timeout`"},
    {"limits {\n    idle-timeout 1500ms\n}\n", 15, "in whole seconds"},
    {"limits {\n    idle-timeout 5x\n}\n", 15, "bad value `5x` for `idle-timeout`"},
    {"limits {\n    idle-timeout s\n}\n", 15, "bad value `s` for `idle-timeout`"},
    {"limits {\n    auth-delay 60001\n}\n", 15,
     "bad value `60001` for `auth-delay`: expected a duration from 0ms to 1m (a plain number is milliseconds"},
    {"limits {\n    auth-delay-max 11m\n}\n", 15, "expected a duration from 0ms to 10m"},
    {"limits {\n    auth-delay 2000\n    auth-delay-max 1000\n}\n", 16,
     "auth-delay-max (1000 ms) must not be less than auth-delay (2000 ms)"},
    {"limits {\n    auth-delay 40s\n}\n", 15, "auth-delay-max (30000 ms) must not be less than auth-delay (40000 ms)"},
    {"limits {\n    shutdown-timeout 3601\n}\n", 15, "expected a duration from 0 to 1h"},
    {"queue {\n    retry-initial 1h\n    retry-max 30m\n}\n", 16,
     "retry-max (1800 s) must not be less than retry-initial (3600 s)"},
    {"queue {\n    lifetime 31d\n}\n", 15, "bad value `31d` for `lifetime`: expected a duration from 1s to 30d"},
    {"queue {\n    delivery-threads 65\n}\n", 15, "from 1 to 64"},
    {"tls {\n}\n", 14, "duplicate `tls` block (the first is at line 2)"},
    {"limits {\n}\nlimits {\n}\n", 16, "duplicate `limits` block (the first is at line 14)"},
    /* block syntax */
    {"}\n", 14, "`}` without an open block"},
    {"limits {\n    recipients 5 }\n", 15, "`}` must be on its own line"},
    {"limits {\n} x\n", 15, "`}` must be on its own line"},
    {"limits { recipients 5 }\n", 14, "`{` must end the line"},
    {"limits {\nqueue {\n}\n}\n", 15, "nested blocks are not allowed: `queue` inside the limits block opened at line 14"},
    {"limits {\n    recipients 5\n", 14, "unclosed limits block: missing `}`"},
    {"frobnicate {\n    a b\n}\n", 14, "unknown block `frobnicate`"},
    {"{\n}\n", 14, "`{` without a block name"},
    {"queue x {\n}\n", 14, "the `queue` block takes no name"},
    {"listener {\n}\n", 14, "a `listener` block needs one name"},
    {"listener a b {\n}\n", 14, "a `listener` block needs one name"},
    {"listener \"a b\" {\n}\n", 14, "bad listener name `a b`"},
    /* listeners */
    {"listener sub {\n    port 588\n    mode starttls\n}\n", 14, "duplicate listener name `sub` (the first is at line 5)"},
    {"listener x {\n    mode starttls\n}\n", 14, "missing required key `port` in this listener block"},
    {"listener x {\n    port 588\n}\n", 14, "missing required key `mode` in this listener block"},
    {"listener x {\n    port 70000\n    mode starttls\n}\n", 15, "expected a whole number from 1 to 65535"},
    {"listener x {\n    port 0\n    mode starttls\n}\n", 15, "bad value `0` for `port`"},
    {"listener x {\n    port 588\n    mode tls\n}\n", 16, "expected one of starttls, implicit-tls"},
    {"listener x {\n    address localhost\n    port 588\n    mode starttls\n}\n", 15, "bad address `localhost`"},
    {"listener x {\n    address 127.0.0.1:25\n    port 588\n    mode starttls\n}\n", 15, "bad address"},
    {"listener x {\n    port 587\n    mode implicit-tls\n}\n", 14,
     "listener `x`: 127.0.0.1 port 587 is already used by listener `sub` (line 5)"},
    {"listener x {\n    address ::1\n    address 0:0::1\n    port 588\n    mode starttls\n}\n", 14,
     "listener `x`: address 0:0::1 is given twice"},
    {"listener x {\n    port 588\n    mode starttls\n    allow 10.0.0.0/33\n}\n", 17,
     "bad network `10.0.0.0/33` for `allow`"},
    {"listener x {\n    port 588\n    mode starttls\n    deny example.com\n}\n", 17, "bad network `example.com` for `deny`"},
    {"listener x {\n    port 588\n    mode starttls\n    max-connections 0\n}\n", 17, "from 1 to 1000000"},
    /* trusted: never on a submission port or mode, never every address */
    {"listener x {\n    address 127.0.0.2\n    port 587\n    mode starttls\n    trusted 127.0.0.1\n}\n", 18,
     "`trusted` is not allowed on listener `x`: port 587 is for submission, where MAIL needs TLS and AUTH; add a "
     "separate listener for local applications (for example port 25 or 10025 with address 127.0.0.1)"},
    {"listener x {\n    trusted 127.0.0.1\n    port 465\n    mode starttls\n}\n", 15,
     "`trusted` is not allowed on listener `x`: port 465 is for submission"},
    {"listener x {\n    port 10465\n    mode implicit-tls\n    trusted ::1\n}\n", 17,
     "`trusted` is not allowed on listener `x`: mode implicit-tls is for submission"},
    {"listener x {\n    port 10025\n    mode starttls\n    trusted 127.0.0.1\n    trusted 0.0.0.0/0\n}\n", 18,
     "`trusted 0.0.0.0/0` would trust every client address (an open relay)"},
    {"listener x {\n    port 10025\n    mode starttls\n    trusted ::/0\n}\n", 17,
     "`trusted ::/0` would trust every client address (an open relay)"},
    {"listener x {\n    port 10025\n    mode starttls\n    trusted 10.1.2.3/0\n}\n", 17,
     "`trusted 10.1.2.3/0` would trust every client address"},
    {"listener x {\n    port 10025\n    mode starttls\n    trusted ::ffff:0.0.0.0/96\n}\n", 17,
     "`trusted ::ffff:0.0.0.0/96` would trust every client address"},
    {"listener x {\n    port 10025\n    mode starttls\n    trusted localhost\n}\n", 17,
     "bad network `localhost` for `trusted`"},
    {"listener x {\n    port 10025\n    mode starttls\n    trusted\n}\n", 17, "`trusted` takes one value"},
    {"listener x {\n    port 588\n    mode starttls\n    certificate only-one\n}\n", 17,
     "`certificate` takes 2 values (certificate CRT KEY), not 1"},
    /* relative file names are relative to the config's directory, where a.crt and a.key are */
    {"listener x {\n    port 588\n    mode starttls\n    certificate a.crt /nonexistent.key\n}\n", 17,
     "private key /nonexistent.key does not exist"},
    {"listener x {\n    port 588\n    mode starttls\n    certificate /nonexistent.crt a.key\n}\n", 17,
     "certificate file /nonexistent.crt does not exist"},
    {"listener x {\n    port 588\n    mode starttls\n    certificate /tmp a.key\n}\n", 17,
     "certificate file /tmp is not a regular file"},
    /* transports and routes */
    {"transport t2 {\n    path /x\n}\n", 14, "missing required key `type` in this transport block"},
    {"transport t2 {\n    type nosuch\n}\n", 15, "bad value `nosuch` for `type`: expected a transport type"},
    {"transport local {\n    type maildir\n}\n", 14, "duplicate transport name `local` (the first is at line 9)"},
    {"transport t2 {\n    type maildir\n    path /a\n    path /b\n}\n", 17, "duplicate key `path` (first set at line 16)"},
    {"route example.com nowhere\n", 14,
     "route `example.com`: no transport named `nowhere` (define it with `transport nowhere { ... }`)"},
    {"route * local\n", 14, "duplicate route for `*` (the first is at line 13)"},
    {"route EXAMPLE.com local\nroute example.COM local\n", 15, "duplicate route for `example.COM` (the first is at line 14)"},
    {"route a*b local\n", 14, "bad route pattern `a*b`: expected a domain, *.domain or *"},
    {"route *example.com local\n", 14, "bad route pattern `*example.com`"},
    {"route *. local\n", 14, "bad route pattern `*.`"},
    {"route *.example.com\n", 14, "`route` takes 2 values (route PATTERN TRANSPORT), not 1"},
    /* lexical */
    {"hostname \"unterminated\n", 14, "unterminated quoted string"},
    {"hostname \"a\\qb\"\n", 14, "bad escape in quoted string"},
    {"hostname \"a\"b\n", 14, "text right after a closing `\"`"},
    {"hostname a\"b\"\n", 14, "unexpected `\"` inside a word"},
    {"hostname a\001b\n", 14, "control character 0x01"},
    {"route a b c d e f g h i j k l m n o p q\n", 14, "too many words on one line (at most 16)"},
};

static void test_error_cases(void **state)
{
    struct fx *f = *state;
    for (size_t i = 0; i < sizeof(err_cases) / sizeof(err_cases[0]); i++) {
        const struct err_case *ec = &err_cases[i];
        struct errlist e;
        errlist_init(&e);
        char *text = base_conf(f, ec->append);
        struct config *c = load(f, text, &e);
        free(text);
        if (c || e.n != 1) {
            print_message("case %zu: %s", i, ec->append);
            dump(&e);
        }
        assert_null(c);
        expect_error(&e, f->conf, ec->line, ec->needle);
        /* one problem, one message: no cascades */
        assert_int_equal(e.n, 1);
        errlist_free(&e);
    }
}

/* The bare base config, then one piece missing at a time. */
static void test_missing_pieces(void **state)
{
    struct fx *f = *state;
    struct errlist e;
    errlist_init(&e);
    char buf[2048], want[512];

    /* no `route *` */
    snprintf(buf, sizeof(buf),
             "accounts %s\ntls {\n    certificate %s %s\n}\nlistener sub {\n    port 587\n    mode starttls\n}\n"
             "transport local {\n    type maildir\n}\nroute example.com local\n",
             f->acc, f->crt, f->key);
    assert_null(load(f, buf, &e));
    assert_int_equal(e.n, 1);
    snprintf(want, sizeof(want), "%s: no default route: add `route * TRANSPORT`", f->conf);
    assert_string_equal(e.v[0], want);
    errlist_free(&e);

    /* no accounts */
    errlist_init(&e);
    snprintf(buf, sizeof(buf),
             "tls {\n    certificate %s %s\n}\nlistener sub {\n    port 587\n    mode starttls\n}\n"
             "transport local {\n    type maildir\n}\nroute * local\n",
             f->crt, f->key);
    assert_null(load(f, buf, &e));
    assert_int_equal(e.n, 1);
    snprintf(want, sizeof(want), "%s: missing required key `accounts`", f->conf);
    assert_string_equal(e.v[0], want);
    errlist_free(&e);

    /* no listener */
    errlist_init(&e);
    snprintf(buf, sizeof(buf),
             "accounts %s\ntls {\n    certificate %s %s\n}\ntransport local {\n    type maildir\n}\nroute * local\n",
             f->acc, f->crt, f->key);
    assert_null(load(f, buf, &e));
    assert_int_equal(e.n, 1);
    expect_error(&e, f->conf, 0, "no listener");
    errlist_free(&e);

    /* no certificate anywhere: error at each listener's line */
    errlist_init(&e);
    snprintf(buf, sizeof(buf),
             "accounts %s\nlistener a {\n    port 587\n    mode starttls\n}\n"
             "listener b {\n    port 465\n    mode implicit-tls\n}\n"
             "transport local {\n    type maildir\n}\nroute * local\n",
             f->acc);
    assert_null(load(f, buf, &e));
    assert_int_equal(e.n, 2);
    expect_error(&e, f->conf, 2, "listener `a` has no certificate");
    expect_error(&e, f->conf, 6, "listener `b` has no certificate");
    errlist_free(&e);

    /* a listener's own certificate is enough (no tls block at all) */
    errlist_init(&e);
    snprintf(buf, sizeof(buf),
             "accounts %s\nlistener a {\n    port 587\n    mode starttls\n    certificate %s %s\n}\n"
             "route * local\ntransport local {\n    type maildir\n}\n",
             f->acc, f->crt, f->key);
    struct config *c = load(f, buf, &e);
    if (!c)
        dump(&e);
    assert_non_null(c);
    assert_int_equal(c->tls.ncerts, 0);
    assert_int_equal(c->listeners[0].ncerts, 1);
    config_unref(c);
    errlist_free(&e);

    /* empty file: every whole-file problem, each once */
    errlist_init(&e);
    assert_null(load(f, "# nothing\n\n", &e));
    assert_int_equal(e.n, 3);
    expect_error(&e, f->conf, 0, "no default route");
    expect_error(&e, f->conf, 0, "missing required key `accounts`");
    expect_error(&e, f->conf, 0, "no listener");
    errlist_free(&e);

    /* missing config file */
    errlist_init(&e);
    char missing[128];
    snprintf(missing, sizeof(missing), "%s/none.conf", f->dir);
    assert_null(config_load(missing, &e));
    assert_int_equal(e.n, 1);
    snprintf(want, sizeof(want), "%s: cannot read: No such file or directory", missing);
    assert_string_equal(e.v[0], want);
    errlist_free(&e);

    /* NUL byte */
    errlist_init(&e);
    write_file(f->conf, "", 0644);
    {
        int fd = open(f->conf, O_WRONLY | O_TRUNC);
        assert_true(fd >= 0);
        assert_int_equal(write_all(fd, "workers 1\n\0\n", 12), 0);
        close(fd);
    }
    assert_null(config_load(f->conf, &e));
    assert_int_equal(e.n, 1);
    expect_error(&e, f->conf, 0, "NUL byte");
    errlist_free(&e);
}

/* All problems reported, in file order, each at its line. */
static void test_several_errors(void **state)
{
    struct fx *f = *state;
    struct errlist e;
    errlist_init(&e);
    errlist_add(&e, "earlier", 1, "an error already in the list");
    char buf[2048];
    snprintf(buf, sizeof(buf),
             "workers lots\n"                              /* 1 */
             "accounts %s\n"                               /* 2 */
             "tls {\n"                                     /* 3 */
             "    certificate %s %s\n"                     /* 4 */
             "    min-version 1.1\n"                       /* 5 */
             "}\n"                                         /* 6 */
             "limits {\n"                                  /* 7 */
             "    bogus 1\n"                               /* 8 */
             "    recipients 0\n"                          /* 9 */
             "}\n"                                         /* 10 */
             "listener sub {\n"                            /* 11 */
             "    port 587\n"                              /* 12 */
             "}\n"                                         /* 13 */
             "transport local {\n"                         /* 14 */
             "    type maildir\n"                          /* 15 */
             "}\n"                                         /* 16 */
             "route * nowhere\n"                           /* 17 */
             "this-is-not-a-key 42\n"                      /* 18 */
             "limits {\n",                                 /* 19 */
             f->acc, f->crt, f->key);
    assert_null(load(f, buf, &e));
    if (e.n != 10)
        dump(&e);
    assert_int_equal(e.n, 10);
    assert_string_equal(e.v[0], "earlier:1: an error already in the list");
    char want[256];
    snprintf(want, sizeof(want), "%s:1: bad value `lots` for `workers`: expected a whole number from 0 to 256",
             f->conf);
    assert_string_equal(e.v[1], want);
    expect_error(&e, f->conf, 5, "bad value `1.1` for `min-version`: expected one of 1.2, 1.3");
    expect_error(&e, f->conf, 8, "unknown key `bogus` in limits block");
    expect_error(&e, f->conf, 9, "bad value `0` for `recipients`");
    expect_error(&e, f->conf, 11, "missing required key `mode`");
    expect_error(&e, f->conf, 18, "unknown key `this-is-not-a-key` at top level");
    expect_error(&e, f->conf, 19, "duplicate `limits` block (the first is at line 7)");
    expect_error(&e, f->conf, 19, "unclosed limits block");
    expect_error(&e, f->conf, 17, "no transport named `nowhere`");
    /* errors come in line order, whole-file checks last */
    snprintf(want, sizeof(want), "%s:17: ", f->conf);
    assert_true(strncmp(e.v[9], want, strlen(want)) == 0);
    errlist_free(&e);
}

/* ---- file permissions -------------------------------------------------------- */

static void test_permissions(void **state)
{
    struct fx *f = *state;
    struct errlist e;
    char *text = base_conf(f, "");
    char want[1024];

    /* world-readable key: error at its certificate line, naming the file and the fix */
    chmod(f->key, 0644);
    errlist_init(&e);
    assert_null(load(f, text, &e));
    assert_int_equal(e.n, 1);
    snprintf(want, sizeof(want),
             "%s:3: private key %s has mode 0644: it must not be accessible by others nor writable by its group; "
             "fix it with `chmod 600 %s` (or `chmod 640 %s` to let its group read it)",
             f->conf, f->key, f->key, f->key);
    assert_string_equal(e.v[0], want);
    errlist_free(&e);

    /* other bits one at a time, and group-writable */
    static const mode_t bad[] = {0604, 0602, 0601, 0620, 0660, 0666};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        chmod(f->key, bad[i]);
        errlist_init(&e);
        assert_null(load(f, text, &e));
        assert_int_equal(e.n, 1);
        expect_error(&e, f->conf, 3, "chmod 600");
        errlist_free(&e);
    }

    /* group-readable is fine */
    chmod(f->key, 0640);
    errlist_init(&e);
    struct config *c = load(f, text, &e);
    assert_non_null(c);
    config_unref(c);
    errlist_free(&e);
    chmod(f->key, 0400);
    errlist_init(&e);
    c = load(f, text, &e);
    assert_non_null(c);
    config_unref(c);
    errlist_free(&e);
    chmod(f->key, 0600);

    /* the accounts file */
    chmod(f->acc, 0644);
    errlist_init(&e);
    assert_null(load(f, text, &e));
    assert_int_equal(e.n, 1);
    snprintf(want, sizeof(want), "%s:1: accounts file %s has mode 0644", f->conf, f->acc);
    assert_true(strncmp(e.v[0], want, strlen(want)) == 0);
    expect_error(&e, f->conf, 1, "chmod 600");
    errlist_free(&e);
    chmod(f->acc, 0620);
    errlist_init(&e);
    assert_null(load(f, text, &e));
    expect_error(&e, f->conf, 1, "accounts file");
    errlist_free(&e);
    chmod(f->acc, 0640);
    errlist_init(&e);
    c = load(f, text, &e);
    assert_non_null(c);
    config_unref(c);
    errlist_free(&e);
    chmod(f->acc, 0600);

    /* the certificate itself may be world-readable (it is public) */
    chmod(f->crt, 0666);
    errlist_init(&e);
    c = load(f, text, &e);
    assert_non_null(c);
    config_unref(c);
    errlist_free(&e);
    chmod(f->crt, 0644);

    /* unreadable: only meaningful when not root */
    if (geteuid() != 0) {
        chmod(f->acc, 0000);
        errlist_init(&e);
        assert_null(load(f, text, &e));
        assert_int_equal(e.n, 1);
        snprintf(want, sizeof(want), "%s:1: cannot read accounts file %s: Permission denied", f->conf, f->acc);
        assert_string_equal(e.v[0], want);
        errlist_free(&e);
        chmod(f->acc, 0600);
    }

    /* missing accounts file */
    free(text);
    char acc2[256];
    snprintf(acc2, sizeof(acc2), "%s/no-accounts", f->dir);
    {
        /* the base config with another accounts line (line 1) */
        char *base = base_conf(f, "");
        struct strbuf b;
        sb_init(&b);
        sb_printf(&b, "accounts %s%s", acc2, strchr(base, '\n'));
        free(base);
        text = sb_steal(&b);
    }
    errlist_init(&e);
    assert_null(load(f, text, &e));
    assert_int_equal(e.n, 1);
    snprintf(want, sizeof(want), "%s:1: accounts file %s does not exist", f->conf, acc2);
    assert_string_equal(e.v[0], want);
    errlist_free(&e);
    free(text);
}

/* ---- values ---------------------------------------------------------------------- */

static struct config *with_limits(const struct fx *f, const char *limits, struct errlist *e)
{
    struct strbuf b;
    sb_init(&b);
    sb_printf(&b, "limits {\n%s\n}\n", limits);
    char *text = base_conf(f, b.s);
    sb_free(&b);
    struct config *c = load(f, text, e);
    free(text);
    return c;
}

static void test_sizes_durations(void **state)
{
    struct fx *f = *state;
    struct errlist e;
    errlist_init(&e);
    struct config *c = with_limits(f,
                                   "message-size 2G\nheader-size 4k\nline-length 64K\n"
                                   "idle-timeout 1h\ndata-timeout 1s\nauth-delay 0\nauth-delay-max 10m\n"
                                   "shutdown-timeout 3600",
                                   &e);
    if (!c)
        dump(&e);
    assert_non_null(c);
    assert_int_equal(c->limits.message_size, 2ull * 1024 * 1024 * 1024);
    assert_int_equal(c->limits.header_size, 4096);
    assert_int_equal(c->limits.line_length, 65536);
    assert_int_equal(c->limits.idle_timeout, 3600);
    assert_int_equal(c->limits.data_timeout, 1);
    assert_int_equal(c->limits.auth_delay_ms, 0);
    assert_int_equal(c->limits.auth_delay_max_ms, 600000);
    assert_int_equal(c->limits.shutdown_timeout, 3600);
    config_unref(c);

    c = with_limits(f,
                    "message-size 1024\nheader-size 64M\nidle-timeout 3000ms\ndata-timeout 60m\n"
                    "auth-delay 1s\nauth-delay-max 1500",
                    &e);
    assert_non_null(c);
    assert_int_equal(c->limits.message_size, 1024);
    assert_int_equal(c->limits.header_size, 64 * 1024 * 1024);
    assert_int_equal(c->limits.idle_timeout, 3);
    assert_int_equal(c->limits.data_timeout, 3600);
    assert_int_equal(c->limits.auth_delay_ms, 1000);
    assert_int_equal(c->limits.auth_delay_max_ms, 1500);
    config_unref(c);
    assert_int_equal(e.n, 0);

    /* the values the integration harness writes */
    c = with_limits(f, "auth-delay 50\nauth-delay-max 400\nmessage-size 20K\nidle-timeout 2s\nline-length 512", &e);
    assert_non_null(c);
    assert_int_equal(c->limits.auth_delay_ms, 50);
    assert_int_equal(c->limits.auth_delay_max_ms, 400);
    assert_int_equal(c->limits.message_size, 20480);
    assert_int_equal(c->limits.idle_timeout, 2);
    assert_int_equal(c->limits.line_length, 512);
    config_unref(c);

    /* overflowing multiplications are refused, not wrapped */
    assert_null(with_limits(f, "message-size 18014398509481984G", &e));
    expect_error(&e, f->conf, 15, "bad value `18014398509481984G` for `message-size`");
    assert_null(with_limits(f, "idle-timeout 300000000000000000d", &e));
    assert_null(with_limits(f, "message-size 2049M", &e));
    assert_null(with_limits(f, "message-size \"\"", &e));
    assert_int_equal(e.n, 4);
    errlist_free(&e);

    /* bools, in every spelling */
    static const char *const yes[] = {"yes", "on", "true", "1", "YES", "True"};
    static const char *const no[] = {"no", "off", "false", "0", "No", "OFF"};
    for (size_t i = 0; i < 6; i++) {
        char line[64];
        errlist_init(&e);
        snprintf(line, sizeof(line), "add-date %s\n", yes[i]);
        char *text = base_conf(f, line);
        c = load(f, text, &e);
        free(text);
        assert_non_null(c);
        assert_int_equal(c->add_date, 1);
        config_unref(c);
        snprintf(line, sizeof(line), "add-date %s\n", no[i]);
        text = base_conf(f, line);
        c = load(f, text, &e);
        free(text);
        assert_non_null(c);
        assert_int_equal(c->add_date, 0);
        config_unref(c);
        errlist_free(&e);
    }
}

static void test_quoting_comments(void **state)
{
    struct fx *f = *state;
    struct errlist e;
    errlist_init(&e);
    char *text = base_conf(f,
                           "\n"
                           "   # an indented comment\n"
                           "\t\n"
                           "hostname \"mx.example.test\"   # quoted, then a comment\r\n"
                           "pid-file \"/tmp/with space/#not a comment.pid\"\n"
                           "workers 3# a comment right after a word\n"
                           "# the end\n");
    struct config *c = load(f, text, &e);
    free(text);
    if (!c)
        dump(&e);
    assert_non_null(c);
    assert_string_equal(c->hostname, "mx.example.test");
    assert_string_equal(c->pid_file, "/tmp/with space/#not a comment.pid");
    assert_int_equal(c->workers, 3);
    config_unref(c);
    errlist_free(&e);
}

static void test_quoting_values(void **state)
{
    struct fx *f = *state;
    struct errlist e;
    errlist_init(&e);
    /* `user#comment` is the key `user` with no value: one error */
    char *text = base_conf(f, "user#comment\n");
    assert_null(load(f, text, &e));
    free(text);
    assert_int_equal(e.n, 1);
    expect_error(&e, f->conf, 14, "`user` takes one value");
    errlist_free(&e);

    errlist_init(&e);
    text = base_conf(f,
                     "transport q {\n"
                     "    type \"maildir\"\n"
                     "    say \"\" \"x y\" \"\\\\\" \"\\\"\"#c\n"
                     "    \"path\" /tmp/q\n"
                     "}\n");
    struct config *c = load(f, text, &e);
    free(text);
    if (!c)
        dump(&e);
    assert_non_null(c);
    const struct transport_cfg *t = &c->transports[1];
    assert_string_equal(t->type, "maildir");
    assert_null(t->path); /* a quoted "path" is not the key `path` */
    assert_int_equal(t->nopts, 2);
    assert_string_equal(t->opts[0].key, "say");
    assert_string_equal(t->opts[0].value, " x y \\ \"");
    assert_int_equal(t->opts[0].line, 16);
    assert_string_equal(t->opts[1].key, "path");
    assert_string_equal(t->opts[1].value, "/tmp/q");
    config_unref(c);
    errlist_free(&e);
}

static void test_parse_string_paths(void **state)
{
    struct fx *f = *state;
    struct errlist e;
    errlist_init(&e);
    char buf[1024], cwd[512], want[600];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    snprintf(buf, sizeof(buf),
             "accounts %s\nspool-dir ./var/spool\npid-file run.pid\n"
             "listener a {\n    port 587\n    mode starttls\n    certificate %s %s\n}\n"
             "transport local {\n    type maildir\n    path mail/%%d\n}\nroute * local\n",
             f->acc, f->crt, f->key);
    struct config *c = config_parse_string("test.conf", buf, &e);
    if (!c)
        dump(&e);
    assert_non_null(c);
    assert_string_equal(c->file, "test.conf");
    snprintf(want, sizeof(want), "%s/var/spool", cwd);
    assert_string_equal(c->spool_dir, want);
    snprintf(want, sizeof(want), "%s/run.pid", cwd);
    assert_string_equal(c->pid_file, want);
    snprintf(want, sizeof(want), "%s/mail/%%d", cwd);
    assert_string_equal(c->transports[0].path, want);
    config_unref(c);

    assert_null(config_parse_string("s.conf", "workers x\n", &e));
    assert_string_equal(e.v[0], "s.conf:1: bad value `x` for `workers`: expected a whole number from 0 to 256");
    errlist_free(&e);

    /* a NULL errlist is allowed */
    assert_null(config_parse_string("s.conf", "workers x\n", NULL));
}

/* etc/submitd.conf, the documented example, parses and shows the defaults. */
static void test_example_file(void **state)
{
    struct fx *f = *state;
    size_t len = 0;
    char *ex = read_file_max("etc/submitd.conf", 1 << 20, &len);
    if (!ex) {
        print_message("etc/submitd.conf not found from the current directory\n");
        skip();
    }
    /* its files live in /etc/submitd/: point them at the fixture */
    char dir[96];
    snprintf(dir, sizeof(dir), "%s/", f->dir);
    struct strbuf b;
    sb_init(&b);
    const char *s = ex;
    for (const char *hit; (hit = strstr(s, "/etc/submitd/")) != NULL; s = hit + strlen("/etc/submitd/")) {
        sb_append(&b, s, (size_t)(hit - s));
        sb_puts(&b, dir);
    }
    sb_puts(&b, s);
    free(ex);
    static const char *const files[] = {"ecdsa.crt", "ecdsa.key", "rsa.crt", "rsa.key"};
    for (size_t i = 0; i < 4; i++) {
        char p[256];
        snprintf(p, sizeof(p), "%s%s", dir, files[i]);
        write_file(p, "PEM\n", 0600);
    }

    struct errlist e;
    errlist_init(&e);
    struct config *c = config_parse_string("submitd.conf", b.s, &e);
    sb_free(&b);
    if (!c)
        dump(&e);
    assert_non_null(c);
    char *text = base_conf(f, "");
    struct config *d = load(f, text, &e);
    free(text);
    assert_non_null(d);

    assert_string_equal(c->user, d->user);
    assert_int_equal(c->workers, d->workers);
    assert_int_equal(c->auth_threads, d->auth_threads);
    assert_int_equal(c->commit_threads, d->commit_threads);
    assert_int_equal(c->journal_segments, d->journal_segments);
    assert_string_equal(c->spool_dir, d->spool_dir);
    assert_int_equal(c->log_syslog, d->log_syslog);
    assert_int_equal(c->log_level, d->log_level);
    assert_int_equal(c->listen_backlog, d->listen_backlog);
    assert_int_equal(c->auth_cache_ttl, d->auth_cache_ttl);
    assert_int_equal(c->add_received, d->add_received);
    assert_int_equal(c->add_message_id, d->add_message_id);
    assert_int_equal(c->add_date, d->add_date);
    assert_int_equal(c->check_from_header, d->check_from_header);
    assert_int_equal(c->allow_null_sender, d->allow_null_sender);
    assert_int_equal(c->tls.ncerts, 2);
    assert_int_equal(c->tls.min_version, d->tls.min_version);
    assert_string_equal(c->tls.ciphers, d->tls.ciphers);
    assert_string_equal(c->tls.ciphersuites, d->tls.ciphersuites);
    assert_int_equal(c->tls.session_tickets, d->tls.session_tickets);
    assert_int_equal(c->tls.handshake_timeout, d->tls.handshake_timeout);
    assert_memory_equal(&c->limits, &d->limits, sizeof(c->limits));
    assert_memory_equal(&c->queue, &d->queue, sizeof(c->queue));
    assert_int_equal(c->nlisteners, 2);
    for (size_t i = 0; i < c->nlisteners; i++) {
        assert_int_equal(c->listeners[i].max_conn, d->listeners[0].max_conn);
        assert_int_equal(c->listeners[i].max_conn_per_ip, d->listeners[0].max_conn_per_ip);
    }
    assert_int_equal(c->nroutes, 1);
    assert_non_null(config_route(c, "example.com"));
    config_unref(c);
    config_unref(d);
    errlist_free(&e);
}

/* ---- dkim ------------------------------------------------------------------------- */

/* Writes pk as a PKCS#8 PEM file (encrypted with `pass` when given). */
static void write_pkey(const struct fx *f, const char *name, EVP_PKEY *pk, mode_t mode, const char *pass)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", f->dir, name);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    const EVP_CIPHER *enc = pass ? EVP_aes_256_cbc() : NULL;
    assert_int_equal(PEM_write_PrivateKey(fp, pk, enc, (const unsigned char *)pass, pass ? (int)strlen(pass) : 0,
                                          NULL, NULL),
                     1);
    assert_int_equal(fclose(fp), 0);
    assert_int_equal(chmod(path, mode), 0);
}

/* rsa.key (2048), ed.key (Ed25519), both 0600, in the fixture directory. */
static void make_good_keys(const struct fx *f)
{
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(rsa);
    assert_non_null(ed);
    write_pkey(f, "rsa.key", rsa, 0600, NULL);
    write_pkey(f, "ed.key", ed, 0600, NULL);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ed);
}

static char *fx_path(const struct fx *f, const char *name)
{
    struct strbuf b;
    sb_init(&b);
    sb_printf(&b, "%s/%s", f->dir, name);
    return sb_steal(&b);
}

static void test_dkim_good(void **state)
{
    struct fx *f = *state;
    make_good_keys(f);
    struct errlist e;
    errlist_init(&e);
    char *text = base_conf(f,
                           "dkim Example.COM {\n"                          /* 14 */
                           "    key rsa1 rsa.key\n"                        /* 15: relative to the config */
                           "    key ed-1 ed.key not-before 2025-03-01\n"   /* 16 */
                           "    canonicalization simple/relaxed\n"         /* 17 */
                           "    headers From To Subject\n"                 /* 18 */
                           "    headers DATE\n"                            /* 19: adds to the list */
                           "    oversign from subject\n"                   /* 20 */
                           "    subdomains no\n"                           /* 21 */
                           "    required yes\n"                            /* 22 */
                           "}\n"                                           /* 23 */
                           "dkim other.test {\n"                           /* 24 */
                           "    key sel.2026 ed.key not-before 2000-02-29\n" /* 25 */
                           "}\n");
    struct config *c = load(f, text, &e);
    free(text);
    if (!c)
        dump(&e);
    assert_non_null(c);
    assert_int_equal(e.n, 0);
    assert_int_equal(c->ndkim, 2);

    const struct dkim_cfg *d = &c->dkim[0];
    assert_string_equal(d->domain, "example.com");
    assert_int_equal(d->line, 14);
    assert_int_equal(d->nkeys, 2);
    char *rsa_path = fx_path(f, "rsa.key"), *ed_path = fx_path(f, "ed.key");
    assert_string_equal(d->keys[0].selector, "rsa1");
    assert_string_equal(d->keys[0].file, rsa_path);
    assert_int_equal(d->keys[0].not_before, 0);
    assert_int_equal(d->keys[0].alg, DKIM_ALG_RSA_SHA256);
    assert_non_null(d->keys[0].pkey);
    assert_int_equal(EVP_PKEY_get_bits(d->keys[0].pkey), 2048);
    assert_true(EVP_PKEY_is_a(d->keys[0].pkey, "RSA"));
    assert_int_equal(d->keys[0].line, 15);
    assert_string_equal(d->keys[1].selector, "ed-1");
    assert_string_equal(d->keys[1].file, ed_path);
    assert_int_equal(d->keys[1].not_before, 1740787200); /* 2025-03-01T00:00:00Z */
    assert_int_equal(d->keys[1].alg, DKIM_ALG_ED25519_SHA256);
    assert_non_null(d->keys[1].pkey);
    assert_true(EVP_PKEY_is_a(d->keys[1].pkey, "ED25519"));
    assert_int_equal(d->keys[1].line, 16);
    assert_int_equal(d->canon_header, DKIM_CANON_SIMPLE);
    assert_int_equal(d->canon_body, DKIM_CANON_RELAXED);
    assert_int_equal(d->nheaders, 4);
    assert_string_equal(d->headers[0], "from");
    assert_string_equal(d->headers[1], "to");
    assert_string_equal(d->headers[2], "subject");
    assert_string_equal(d->headers[3], "date");
    assert_int_equal(d->noversign, 2);
    assert_string_equal(d->oversign[0], "from");
    assert_string_equal(d->oversign[1], "subject");
    assert_int_equal(d->subdomains, 0);
    assert_int_equal(d->required, 1);

    /* the second block: every default */
    d = &c->dkim[1];
    assert_string_equal(d->domain, "other.test");
    assert_int_equal(d->line, 24);
    assert_int_equal(d->nkeys, 1);
    assert_string_equal(d->keys[0].selector, "sel.2026");
    assert_int_equal(d->keys[0].not_before, 951782400); /* 2000-02-29, a leap day */
    assert_int_equal(d->keys[0].alg, DKIM_ALG_ED25519_SHA256);
    assert_int_equal(d->canon_header, DKIM_CANON_RELAXED);
    assert_int_equal(d->canon_body, DKIM_CANON_RELAXED);
    assert_int_equal(d->nheaders, dkim_default_headers_count);
    for (size_t i = 0; i < d->nheaders; i++)
        assert_string_equal(d->headers[i], dkim_default_headers[i]);
    assert_int_equal(d->noversign, 1);
    assert_string_equal(d->oversign[0], "from");
    assert_int_equal(d->subdomains, 1);
    assert_int_equal(d->required, 0);
    config_unref(c);

    /* group-readable keys are fine (the daemon's group re-reads them) */
    chmod(ed_path, 0640);
    text = base_conf(f, "dkim example.com {\n    key s ed.key\n    oversign none\n}\n");
    c = load(f, text, &e);
    free(text);
    assert_non_null(c);
    assert_int_equal(c->dkim[0].noversign, 0); /* `oversign none` */
    config_unref(c);
    free(rsa_path);
    free(ed_path);
    errlist_free(&e);

    /* the default list */
    static const char *const want[] = {
        "from", "to", "cc", "subject", "date", "message-id", "reply-to", "mime-version", "content-type",
        "content-transfer-encoding", "in-reply-to", "references", "list-id", "list-unsubscribe",
        "list-unsubscribe-post", "list-help", "list-post", "list-subscribe", "list-owner", "list-archive"};
    assert_int_equal(dkim_default_headers_count, sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < dkim_default_headers_count; i++)
        assert_string_equal(dkim_default_headers[i], want[i]);
}

static const struct err_case dkim_err_cases[] = {
    {"dkim example.com {\n}\n", 14,
     "the dkim block for example.com has no key: add `key SELECTOR FILE` (make one with `submitctl dkim keygen "
     "example.com SELECTOR`)"},
    {"dkim example.com {\n    key s1 world.key\n}\n", 15,
     "world.key has mode 0644: it must not be accessible by others nor writable by its group"},
    {"dkim example.com {\n    key s1 nonexistent.key\n}\n", 15, "nonexistent.key does not exist"},
    {"dkim example.com {\n    key s1 rsa1024.key\n}\n", 15,
     "rsa1024.key is a 1024-bit RSA key: DKIM needs at least 2048 bits (RFC 8301); make a good one with "
     "`submitctl dkim keygen example.com s1` (RSA 2048) or `submitctl dkim keygen example.com s1 --ed25519`"},
    {"dkim example.com {\n    key s1 ec.key\n}\n", 15,
     "ec.key is an EC key: DKIM signs with RSA (2048 bits or more) or Ed25519 keys only; make a good one with "
     "`submitctl dkim keygen example.com s1`"},
    {"dkim example.com {\n    key s1 garbage.key\n}\n", 15,
     "garbage.key is not a PEM private key; make a good one with `submitctl dkim keygen example.com s1`"},
    {"dkim example.com {\n    key s1 enc.key\n}\n", 15, "enc.key is encrypted with a passphrase"},
    {"dkim example.com {\n    key s1 ed.key not-before 2025-02-30\n}\n", 15,
     "bad date `2025-02-30` for not-before: expected YYYY-MM-DD"},
    {"dkim example.com {\n    key s1 ed.key not-before 2025-1-01\n}\n", 15, "bad date `2025-1-01`"},
    {"dkim example.com {\n    key s1 ed.key not-before 1969-12-31\n}\n", 15, "bad date `1969-12-31`"},
    {"dkim example.com {\n    key s1 ed.key not-before 2025-13-01\n}\n", 15, "bad date `2025-13-01`"},
    {"dkim example.com {\n    key s1 ed.key not-before 2026-02-29\n}\n", 15, "bad date `2026-02-29`"},
    {"dkim example.com {\n    key s1 ed.key after 2025-01-01\n}\n", 15,
     "expected `not-before YYYY-MM-DD` after the file name, not `after 2025-01-01`"},
    {"dkim example.com {\n    key s1 ed.key not-before\n}\n", 15,
     "expected `not-before YYYY-MM-DD` after the file name, not `not-before`"},
    {"dkim example.com {\n    key s1\n}\n", 15,
     "`key` takes 2 to 4 values (key SELECTOR FILE [not-before YYYY-MM-DD]), not 1"},
    {"dkim example.com {\n    key s1 ed.key not-before 2025-01-01 x\n}\n", 15, "`key` takes 2 to 4 values"},
    {"dkim example.com {\n    key s_1 ed.key\n}\n", 15, "bad selector `s_1`"},
    {"dkim example.com {\n    key -s ed.key\n}\n", 15, "bad selector `-s`"},
    {"dkim example.com {\n    key s1 \"\"\n}\n", 15, "`key` needs the file name"},
    {"dkim example.com {\n    key s1 ed.key\n    key S1 rsa.key\n}\n", 16,
     "duplicate selector `S1` in the dkim block for example.com (the first is at line 15)"},
    {"dkim a.test {\n    key s ed.key\n}\ndkim A.Test {\n    key s ed.key\n}\n", 17,
     "duplicate dkim block for a.test (the first is at line 14)"},
    {"dkim -bad.test {\n}\n", 14, "bad dkim domain `-bad.test`: expected a domain name"},
    {"dkim example.com. {\n}\n", 14, "bad dkim domain `example.com.`"},
    {"dkim a..b {\n}\n", 14, "bad dkim domain `a..b`"},
    {"dkim under_score.test {\n}\n", 14, "bad dkim domain"},
    {"dkim {\n}\n", 14, "a `dkim` block needs one domain: `dkim DOMAIN {`"},
    {"dkim example.com\n", 14, "unknown key `dkim` at top level (`dkim` is a block: `dkim DOMAIN {` ... `}`)"},
    {"oversign from\n", 14, "unknown key `oversign` at top level (it belongs in the dkim block)"},
    {"dkim example.com {\n    key s1 ed.key\n    canonicalization relaxed\n}\n", 16,
     "bad value `relaxed` for `canonicalization`: expected HEADER/BODY, each relaxed or simple"},
    {"dkim example.com {\n    key s1 ed.key\n    canonicalization relaxed/strict\n}\n", 16,
     "bad value `relaxed/strict`"},
    {"dkim example.com {\n    key s1 ed.key\n    canonicalization /simple\n}\n", 16, "bad value `/simple`"},
    {"dkim example.com {\n    key s1 ed.key\n    canonicalization simple/simple/x\n}\n", 16,
     "bad value `simple/simple/x`"},
    {"dkim example.com {\n    key s1 ed.key\n    canonicalization simple/simple\n    canonicalization "
     "relaxed/relaxed\n}\n",
     17, "duplicate key `canonicalization` (first set at line 16)"},
    {"dkim example.com {\n    key s1 ed.key\n    headers to subject\n    oversign to\n}\n", 16,
     "`headers` must include from: RFC 6376 (5.4) requires the From field to be signed"},
    {"dkim example.com {\n    key s1 ed.key\n    headers from to\n    headers FROM\n}\n", 17,
     "header field `from` is listed twice in `headers` (to sign one more than present, use `oversign`)"},
    {"dkim example.com {\n    key s1 ed.key\n    headers from a;b\n}\n", 16,
     "bad header field name `a;b` in `headers`"},
    {"dkim example.com {\n    key s1 ed.key\n    headers\n}\n", 16, "`headers` takes at least 1 value (headers NAME...)"},
    {"dkim example.com {\n    key s1 ed.key\n    oversign x-mailer\n}\n", 16,
     "oversign x-mailer: not among the signed header fields (add it to `headers`)"},
    {"dkim example.com {\n    key s1 ed.key\n    oversign none from\n}\n", 16, "`oversign none` must be alone"},
    {"dkim example.com {\n    key s1 ed.key\n    oversign none\n    oversign from\n}\n", 17,
     "`oversign none` must be alone"},
    {"dkim example.com {\n    key s1 ed.key\n    subdomains maybe\n}\n", 16,
     "bad value `maybe` for `subdomains`: expected yes or no"},
    {"dkim example.com {\n    key s1 ed.key\n    required 2\n}\n", 16, "bad value `2` for `required`"},
    {"dkim example.com {\n    key s1 ed.key\n    port 1\n}\n", 16,
     "unknown key `port` in dkim block (it belongs in the listener block)"},
};

static void test_dkim_errors(void **state)
{
    struct fx *f = *state;
    make_good_keys(f);
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    assert_non_null(k);
    write_pkey(f, "rsa1024.key", k, 0600, NULL);
    EVP_PKEY_free(k);
    k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    assert_non_null(k);
    write_pkey(f, "ec.key", k, 0600, NULL);
    EVP_PKEY_free(k);
    k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(k);
    write_pkey(f, "world.key", k, 0644, NULL);
    write_pkey(f, "enc.key", k, 0600, "secret");
    EVP_PKEY_free(k);
    char *garbage = fx_path(f, "garbage.key");
    write_file(garbage, "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n", 0600);
    free(garbage);

    for (size_t i = 0; i < sizeof(dkim_err_cases) / sizeof(dkim_err_cases[0]); i++) {
        const struct err_case *ec = &dkim_err_cases[i];
        struct errlist e;
        errlist_init(&e);
        char *text = base_conf(f, ec->append);
        struct config *c = load(f, text, &e);
        free(text);
        if (c || e.n != 1) {
            print_message("case %zu: %s", i, ec->append);
            dump(&e);
        }
        assert_null(c);
        expect_error(&e, f->conf, ec->line, ec->needle);
        assert_int_equal(e.n, 1);
        /* a failed key load leaves nothing in OpenSSL's error queue */
        assert_int_equal(ERR_peek_error(), 0);
        errlist_free(&e);
    }

    /* several problems in one block: all reported, in line order */
    struct errlist e;
    errlist_init(&e);
    char *text = base_conf(f,
                           "dkim example.com {\n"                          /* 14 */
                           "    key a rsa1024.key\n"                       /* 15 */
                           "    key b ec.key\n"                            /* 16 */
                           "    key a ed.key\n"                            /* 17 */
                           "    canonicalization loose/simple\n"           /* 18 */
                           "    headers subject\n"                         /* 19 */
                           "}\n");
    assert_null(load(f, text, &e));
    free(text);
    if (e.n != 5)
        dump(&e);
    assert_int_equal(e.n, 5);
    expect_error(&e, f->conf, 15, "1024-bit RSA key");
    expect_error(&e, f->conf, 16, "an EC key");
    expect_error(&e, f->conf, 17, "duplicate selector `a`");
    expect_error(&e, f->conf, 18, "bad value `loose/simple`");
    expect_error(&e, f->conf, 19, "`headers` must include from");
    errlist_free(&e);
}

static void test_dkim_lookup(void **state)
{
    struct fx *f = *state;
    struct errlist e;
    errlist_init(&e);
    /* config_load_paths: the key files need not exist yet and are not read */
    char *text = base_conf(f,
                           "dkim example.com {\n    key s nonexistent.key\n}\n"
                           "dkim b.example.com {\n    key s nonexistent.key\n    subdomains no\n}\n"
                           "dkim other.test {\n    key s nonexistent.key\n    subdomains no\n}\n"
                           "dkim deep.a.test {\n    key s nonexistent.key\n}\n");
    write_file(f->conf, text, 0644);
    free(text);
    struct config *c = config_load_paths(f->conf, &e);
    if (!c)
        dump(&e);
    assert_non_null(c);
    assert_int_equal(c->ndkim, 4);
    const struct dkim_cfg *ex = &c->dkim[0], *b = &c->dkim[1], *other = &c->dkim[2], *deep = &c->dkim[3];
    assert_null(ex->keys[0].pkey);
    assert_int_equal(ex->keys[0].alg, 0);

    assert_ptr_equal(config_dkim(c, "example.com"), ex);
    assert_ptr_equal(config_dkim(c, "EXAMPLE.Com"), ex);
    assert_ptr_equal(config_dkim(c, "x.example.com"), ex);
    assert_ptr_equal(config_dkim(c, "y.x.Example.COM"), ex);
    assert_ptr_equal(config_dkim(c, "b.example.com"), b);       /* exact, even with subdomains no */
    assert_ptr_equal(config_dkim(c, "a.b.example.com"), ex);    /* b does not cover subdomains: its parent */
    assert_ptr_equal(config_dkim(c, "c.a.b.example.com"), ex);
    assert_ptr_equal(config_dkim(c, "other.test"), other);
    assert_null(config_dkim(c, "a.other.test"));                /* subdomains no, no parent block */
    assert_ptr_equal(config_dkim(c, "x.deep.a.test"), deep);
    assert_null(config_dkim(c, "a.test"));                      /* a parent is not covered by a child */
    assert_null(config_dkim(c, "notexample.com"));
    assert_null(config_dkim(c, "example.com.evil"));
    assert_null(config_dkim(c, "com"));
    assert_null(config_dkim(c, ""));
    assert_null(config_dkim(c, NULL));
    assert_null(config_dkim(NULL, "example.com"));

    /* keys not loaded: none is active */
    const struct dkim_key_cfg *out[2] = {ex->keys, ex->keys};
    config_dkim_active(ex, INT64_MAX, out);
    assert_null(out[0]);
    assert_null(out[1]);
    config_unref(c);

    /* the same with config_load: the missing files are errors at their lines */
    assert_null(config_load(f->conf, &e));
    assert_int_equal(e.n, 4);
    expect_error(&e, f->conf, 15, "nonexistent.key does not exist");
    expect_error(&e, f->conf, 18, "nonexistent.key does not exist");
    expect_error(&e, f->conf, 26, "nonexistent.key does not exist");
    errlist_free(&e);

    /* existing keys are not read by config_load_paths, bad modes are not checked */
    make_good_keys(f);
    char *ed = fx_path(f, "ed.key");
    chmod(ed, 0644);
    errlist_init(&e);
    text = base_conf(f, "dkim example.com {\n    key s ed.key\n}\n");
    write_file(f->conf, text, 0644);
    free(text);
    c = config_load_paths(f->conf, &e);
    assert_non_null(c);
    assert_null(c->dkim[0].keys[0].pkey);
    assert_int_equal(c->dkim[0].keys[0].alg, 0);
    config_unref(c);
    assert_null(config_load(f->conf, &e));
    expect_error(&e, f->conf, 15, "has mode 0644");
    chmod(ed, 0600);
    free(ed);
    errlist_free(&e);
}

static void test_dkim_active(void **state)
{
    struct fx *f = *state;
    make_good_keys(f);
    struct errlist e;
    errlist_init(&e);
    char *text = base_conf(f,
                           "dkim example.com {\n"                                /* 14 */
                           "    key r0 rsa.key\n"                                /* 15: always */
                           "    key r2025 rsa.key not-before 2025-01-01\n"       /* 16 */
                           "    key r2026 rsa.key not-before 2026-06-01\n"       /* 17 */
                           "    key e1 ed.key not-before 2025-01-01\n"           /* 18 */
                           "    key e2 ed.key not-before 2025-01-01\n"           /* 19: a tie, listed last */
                           "    key r2020 rsa.key not-before 2020-01-01\n"       /* 20: last, but older */
                           "}\n"
                           "dkim ed.test {\n"
                           "    key e ed.key not-before 2030-01-01\n"
                           "}\n");
    struct config *c = load(f, text, &e);
    free(text);
    if (!c)
        dump(&e);
    assert_non_null(c);
    const struct dkim_cfg *d = &c->dkim[0];
    const struct dkim_key_cfg *r0 = &d->keys[0], *r2025 = &d->keys[1], *r2026 = &d->keys[2], *e2 = &d->keys[4],
                              *r2020 = &d->keys[5];
    const struct dkim_key_cfg *out[2];
    const int64_t y2025 = 1735689600, jun2026 = 1780272000, y2020 = 1577836800;

    config_dkim_active(d, 0, out);
    assert_ptr_equal(out[0], r0);
    assert_null(out[1]);
    config_dkim_active(d, y2020 - 1, out);
    assert_ptr_equal(out[0], r0);
    config_dkim_active(d, y2020, out);
    assert_ptr_equal(out[0], r2020);
    config_dkim_active(d, y2025 - 1, out); /* the 2025 keys are not active yet */
    assert_ptr_equal(out[0], r2020);
    assert_null(out[1]);
    config_dkim_active(d, y2025, out); /* newest active wins; a tie goes to the last listed */
    assert_ptr_equal(out[0], r2025);
    assert_ptr_equal(out[1], e2);
    config_dkim_active(d, jun2026 - 1, out);
    assert_ptr_equal(out[0], r2025);
    config_dkim_active(d, jun2026, out);
    assert_ptr_equal(out[0], r2026);
    assert_ptr_equal(out[1], e2);
    assert_int_equal(out[0]->alg, DKIM_ALG_RSA_SHA256);
    assert_int_equal(out[1]->alg, DKIM_ALG_ED25519_SHA256);
    assert_string_equal(out[0]->selector, "r2026");

    /* a block with only a future Ed25519 key */
    const struct dkim_cfg *ed = config_dkim(c, "mail.ed.test");
    assert_ptr_equal(ed, &c->dkim[1]);
    config_dkim_active(ed, jun2026, out);
    assert_null(out[0]);
    assert_null(out[1]);
    config_dkim_active(ed, 1893456000, out); /* 2030-01-01 */
    assert_null(out[0]);
    assert_ptr_equal(out[1], &ed->keys[0]);

    config_dkim_active(NULL, jun2026, out);
    assert_null(out[0]);
    assert_null(out[1]);
    config_unref(c);
    errlist_free(&e);
}

/* The commented dkim block of etc/submitd.conf, uncommented, loads. */
static void test_dkim_example(void **state)
{
    struct fx *f = *state;
    char *ex = read_file_max("etc/submitd.conf", 1 << 20, NULL);
    if (!ex) {
        print_message("etc/submitd.conf not found from the current directory\n");
        skip();
    }
    const char *start = strstr(ex, "\n# dkim example.com {\n");
    assert_non_null(start);
    const char *end = strstr(start, "\n# }\n");
    assert_non_null(end);
    /* drop "# " from each line; keys in /etc/submitd/dkim/ go to the fixture */
    struct strbuf b;
    sb_init(&b);
    for (const char *l = start + 1; l <= end + 1;) {
        const char *nl = strchr(l, '\n');
        assert_true(strncmp(l, "# ", 2) == 0);
        l += 2;
        const char *dir = strstr(l, "/etc/submitd/dkim/");
        if (dir && dir < nl) {
            sb_append(&b, l, (size_t)(dir - l));
            sb_printf(&b, "%s/", f->dir);
            l = dir + strlen("/etc/submitd/dkim/");
        }
        sb_append(&b, l, (size_t)(nl - l) + 1);
        l = nl + 1;
    }
    free(ex);
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    write_pkey(f, "example.com.2025a.key", rsa, 0640, NULL);
    write_pkey(f, "example.com.ed2025.key", ed, 0600, NULL);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ed);

    struct errlist e;
    errlist_init(&e);
    char *text = base_conf(f, b.s);
    sb_free(&b);
    struct config *c = load(f, text, &e);
    free(text);
    if (!c)
        dump(&e);
    assert_non_null(c);
    assert_int_equal(c->ndkim, 1);
    const struct dkim_cfg *d = config_dkim(c, "news.example.com");
    assert_ptr_equal(d, &c->dkim[0]);
    assert_int_equal(d->nkeys, 2);
    const struct dkim_key_cfg *out[2];
    config_dkim_active(d, 1735689600, out);
    assert_ptr_equal(out[0], &d->keys[0]);
    assert_ptr_equal(out[1], &d->keys[1]);
    assert_int_equal(d->nheaders, dkim_default_headers_count);
    assert_int_equal(d->noversign, 1);
    assert_int_equal(d->required, 0);
    config_unref(c);
    errlist_free(&e);
}

/* ---- cidr -------------------------------------------------------------------------- */

static struct sockaddr_in sin4(const char *ip)
{
    struct sockaddr_in s;
    memset(&s, 0, sizeof(s));
    s.sin_family = AF_INET;
    s.sin_port = htons(12345);
    assert_int_equal(inet_pton(AF_INET, ip, &s.sin_addr), 1);
    return s;
}

static struct sockaddr_in6 sin6(const char *ip)
{
    struct sockaddr_in6 s;
    memset(&s, 0, sizeof(s));
    s.sin6_family = AF_INET6;
    s.sin6_port = htons(12345);
    assert_int_equal(inet_pton(AF_INET6, ip, &s.sin6_addr), 1);
    return s;
}

static int m4(const struct cidr *c, const char *ip)
{
    struct sockaddr_in s = sin4(ip);
    return cidr_match(c, (struct sockaddr *)&s);
}

static int m6(const struct cidr *c, const char *ip)
{
    struct sockaddr_in6 s = sin6(ip);
    return cidr_match(c, (struct sockaddr *)&s);
}

static void test_cidr_parse(void **state)
{
    (void)state;
    struct cidr c;
    static const uint8_t net24[4] = {192, 0, 2, 0};
    assert_int_equal(cidr_parse("192.0.2.77/24", &c), 0); /* host bits cleared */
    assert_int_equal(c.family, AF_INET);
    assert_int_equal(c.prefix, 24);
    assert_memory_equal(c.addr, net24, 4);
    assert_int_equal(cidr_parse("192.0.2.1", &c), 0);
    assert_int_equal(c.prefix, 32);
    assert_int_equal(c.addr[3], 1);
    assert_int_equal(cidr_parse("10.255.255.255/9", &c), 0);
    assert_int_equal(c.addr[0], 10);
    assert_int_equal(c.addr[1], 128);
    assert_int_equal(c.addr[2], 0);
    assert_int_equal(cidr_parse("0.0.0.0/0", &c), 0);
    assert_int_equal(c.prefix, 0);
    assert_int_equal(cidr_parse("1.2.3.4/0", &c), 0);
    assert_int_equal(c.addr[0], 0);
    assert_int_equal(cidr_parse("2001:db8::1/32", &c), 0);
    assert_int_equal(c.family, AF_INET6);
    assert_int_equal(c.prefix, 32);
    static const uint8_t db8[16] = {0x20, 0x01, 0x0d, 0xb8};
    assert_memory_equal(c.addr, db8, 16);
    assert_int_equal(cidr_parse("::1", &c), 0);
    assert_int_equal(c.prefix, 128);
    assert_int_equal(cidr_parse("::/0", &c), 0);
    assert_int_equal(cidr_parse("2001:db8::ff/127", &c), 0);
    assert_int_equal(c.addr[15], 0xfe);
    /* an IPv4 network written as mapped IPv6 becomes IPv4 */
    assert_int_equal(cidr_parse("::ffff:192.0.2.9/120", &c), 0);
    assert_int_equal(c.family, AF_INET);
    assert_int_equal(c.prefix, 24);
    assert_memory_equal(c.addr, net24, 4);

    static const char *const bad[] = {"",          "/24",        "1.2.3.4/",     "1.2.3.4/33",   "::/129",
                                      "1.2.3",     "1.2.3.4/-1", "1.2.3.4/+8",   "1.2.3.4/08",   "foo",
                                      "1.2.3.4/24/1", "1.2.3.4 /24", "2001:db8::/64x", "1.2.3.4/1000",
                                      "256.1.1.1", "1.2.3.4/ 8", "2001:db8:::1",
                                      "1111:2222:3333:4444:5555:6666:7777:8888:9999:aaaa:bbbb/24"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        c.prefix = 77;
        if (cidr_parse(bad[i], &c) != -1)
            fail_msg("cidr_parse accepted `%s`", bad[i]);
        assert_int_equal(c.prefix, 77); /* untouched */
    }
    assert_int_equal(cidr_parse(NULL, &c), -1);
}

static void test_cidr_match(void **state)
{
    (void)state;
    struct cidr c;
    assert_int_equal(cidr_parse("192.0.2.0/24", &c), 0);
    assert_true(m4(&c, "192.0.2.0"));
    assert_true(m4(&c, "192.0.2.255"));
    assert_false(m4(&c, "192.0.3.0"));
    assert_false(m4(&c, "192.0.1.255"));
    assert_true(m6(&c, "::ffff:192.0.2.7")); /* mapped client */
    assert_false(m6(&c, "::ffff:192.0.3.7"));
    assert_false(m6(&c, "::192.0.2.7"));     /* compatible, not mapped */
    assert_false(m6(&c, "2001:db8::1"));

    assert_int_equal(cidr_parse("192.0.2.1/32", &c), 0);
    assert_true(m4(&c, "192.0.2.1"));
    assert_false(m4(&c, "192.0.2.2"));
    assert_int_equal(cidr_parse("0.0.0.0/0", &c), 0);
    assert_true(m4(&c, "203.0.113.9"));
    assert_true(m6(&c, "::ffff:203.0.113.9"));
    assert_false(m6(&c, "::1"));
    assert_int_equal(cidr_parse("192.0.2.0/23", &c), 0);
    assert_true(m4(&c, "192.0.3.200"));
    assert_false(m4(&c, "192.0.4.0"));

    assert_int_equal(cidr_parse("2001:db8::/32", &c), 0);
    assert_true(m6(&c, "2001:db8:ffff::1"));
    assert_false(m6(&c, "2001:db9::1"));
    assert_false(m4(&c, "32.1.13.184")); /* the same leading bytes, but IPv4 */
    assert_int_equal(cidr_parse("::/0", &c), 0);
    assert_true(m6(&c, "fe80::1"));
    assert_false(m4(&c, "127.0.0.1")); /* an IPv6 network never matches IPv4 */
    assert_false(m6(&c, "::ffff:127.0.0.1"));
    assert_int_equal(cidr_parse("2001:db8::1", &c), 0);
    assert_true(m6(&c, "2001:db8::1"));
    assert_false(m6(&c, "2001:db8::2"));
    assert_int_equal(cidr_parse("2001:db8::/127", &c), 0);
    assert_true(m6(&c, "2001:db8::1"));
    assert_false(m6(&c, "2001:db8::2"));
    assert_int_equal(cidr_parse("2001:db8:8000::/33", &c), 0);
    assert_true(m6(&c, "2001:db8:ffff::"));
    assert_false(m6(&c, "2001:db8:7fff::"));

    /* other families and NULLs never match */
    struct sockaddr un = {.sa_family = AF_UNIX};
    assert_false(cidr_match(&c, &un));
    assert_false(cidr_match(&c, NULL));
    assert_false(cidr_match(NULL, &un));

    struct cidr_list l = {NULL, 0};
    struct sockaddr_in a = sin4("10.1.2.3");
    assert_false(cidr_list_match(&l, (struct sockaddr *)&a));
    assert_int_equal(cidr_parse("2001:db8::/32", &c), 0);
    cidr_list_add(&l, &c);
    assert_false(cidr_list_match(&l, (struct sockaddr *)&a));
    assert_int_equal(cidr_parse("10.0.0.0/8", &c), 0);
    cidr_list_add(&l, &c);
    assert_int_equal(l.n, 2);
    assert_true(cidr_list_match(&l, (struct sockaddr *)&a));
    struct sockaddr_in6 b = sin6("::ffff:10.9.9.9");
    assert_true(cidr_list_match(&l, (struct sockaddr *)&b));
    cidr_list_free(&l);
    assert_null(l.v);
    assert_int_equal(l.n, 0);
    assert_false(cidr_list_match(NULL, (struct sockaddr *)&a));
}

/* `trusted` on a local listener: its networks, nothing on the others. */
static void test_trusted(void **state)
{
    struct fx *f = *state;
    struct errlist e;
    errlist_init(&e);
    char *text = base_conf(f, "listener local {\n"
                              "    address 127.0.0.1\n"
                              "    address ::1\n"
                              "    port 10025\n"
                              "    mode starttls\n"
                              "    trusted 127.0.0.0/8\n"
                              "    trusted ::1\n"
                              "    trusted 192.0.2.77/24\n"
                              "}\n");
    struct config *c = load(f, text, &e);
    free(text);
    if (!c)
        dump(&e);
    assert_non_null(c);
    assert_int_equal(e.n, 0);
    assert_int_equal(c->nlisteners, 2);
    assert_int_equal(c->listeners[0].trusted.n, 0);
    const struct listener_cfg *l = config_listener(c, "local");
    assert_non_null(l);
    assert_int_equal(l->port, 10025);
    assert_int_equal(l->trusted.n, 3);
    assert_int_equal(l->trusted.v[0].family, AF_INET);
    assert_int_equal(l->trusted.v[0].prefix, 8);
    assert_int_equal(l->trusted.v[1].family, AF_INET6);
    assert_int_equal(l->trusted.v[1].prefix, 128);
    assert_int_equal(l->trusted.v[2].prefix, 24);
    struct sockaddr_in a = sin4("127.3.4.5"), b = sin4("10.0.0.1"), d = sin4("192.0.2.1");
    struct sockaddr_in6 a6 = sin6("::1"), b6 = sin6("::2"), m6a = sin6("::ffff:127.0.0.9");
    assert_int_equal(cidr_list_match(&l->trusted, (struct sockaddr *)&a), 1);
    assert_int_equal(cidr_list_match(&l->trusted, (struct sockaddr *)&b), 0);
    assert_int_equal(cidr_list_match(&l->trusted, (struct sockaddr *)&d), 1); /* host bits cleared */
    assert_int_equal(cidr_list_match(&l->trusted, (struct sockaddr *)&a6), 1);
    assert_int_equal(cidr_list_match(&l->trusted, (struct sockaddr *)&b6), 0);
    assert_int_equal(cidr_list_match(&l->trusted, (struct sockaddr *)&m6a), 1);
    assert_int_equal(cidr_list_match(&c->listeners[0].trusted, (struct sockaddr *)&a), 0);
    config_unref(c);
    errlist_free(&e);

    /* every refusal at once: one message each, at its line */
    errlist_init(&e);
    text = base_conf(f, "listener a {\n"               /* 14 */
                        "    address 127.0.0.2\n"       /* 15 */
                        "    port 587\n"                /* 16 */
                        "    mode starttls\n"           /* 17 */
                        "    trusted 127.0.0.1\n"       /* 18 */
                        "}\n"                           /* 19 */
                        "listener b {\n"               /* 20 */
                        "    port 465\n"                /* 21 */
                        "    mode implicit-tls\n"       /* 22 */
                        "    trusted 127.0.0.1\n"       /* 23 */
                        "}\n"                           /* 24 */
                        "listener c {\n"               /* 25 */
                        "    port 25\n"                 /* 26 */
                        "    mode starttls\n"           /* 27 */
                        "    trusted 0.0.0.0/0\n"       /* 28 */
                        "    trusted ::/0\n"            /* 29 */
                        "}\n");                         /* 30 */
    c = load(f, text, &e);
    free(text);
    assert_null(c);
    expect_error(&e, f->conf, 18, "not allowed on listener `a`: port 587 is for submission");
    expect_error(&e, f->conf, 23, "not allowed on listener `b`: mode implicit-tls is for submission");
    expect_error(&e, f->conf, 28, "`trusted 0.0.0.0/0` would trust every client address");
    expect_error(&e, f->conf, 29, "`trusted ::/0` would trust every client address");
    if (e.n != 4)
        dump(&e);
    assert_int_equal(e.n, 4);
    errlist_free(&e);
}

static void test_sockaddr_ip(void **state)
{
    (void)state;
    char buf[64];
    struct sockaddr_in a = sin4("192.0.2.1");
    sockaddr_ip((struct sockaddr *)&a, buf, sizeof(buf));
    assert_string_equal(buf, "192.0.2.1");
    struct sockaddr_in6 b = sin6("2001:DB8:0:0::1");
    sockaddr_ip((struct sockaddr *)&b, buf, sizeof(buf));
    assert_string_equal(buf, "2001:db8::1");
    b = sin6("::ffff:198.51.100.7");
    sockaddr_ip((struct sockaddr *)&b, buf, sizeof(buf));
    assert_string_equal(buf, "198.51.100.7");
    b = sin6("::1");
    sockaddr_ip((struct sockaddr *)&b, buf, sizeof(buf));
    assert_string_equal(buf, "::1");
    struct sockaddr un = {.sa_family = AF_UNIX};
    sockaddr_ip(&un, buf, sizeof(buf));
    assert_string_equal(buf, "unknown");
    /* truncated, always terminated */
    char small[5];
    sockaddr_ip((struct sockaddr *)&a, small, sizeof(small));
    assert_string_equal(small, "192.");
    sockaddr_ip((struct sockaddr *)&a, small, 0); /* no write at all */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_routes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_cases, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_pieces, setup, teardown),
        cmocka_unit_test_setup_teardown(test_several_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_permissions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sizes_durations, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quoting_comments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quoting_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parse_string_paths, setup, teardown),
        cmocka_unit_test_setup_teardown(test_example_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dkim_good, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dkim_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dkim_lookup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dkim_active, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dkim_example, setup, teardown),
        cmocka_unit_test(test_cidr_parse),
        cmocka_unit_test(test_cidr_match),
        cmocka_unit_test_setup_teardown(test_trusted, setup, teardown),
        cmocka_unit_test(test_sockaddr_ip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
