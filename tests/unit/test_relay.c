/* Unit tests for the pure parts of the relay transports (src/relay): the
 * smarthost URL, durations, the resolver option, address literals, MX
 * ordering and null MX, dot-stuffing at every split point, MAIL/RCPT
 * parameters by the EHLO extensions, EHLO keyword parsing, reply ->
 * result mapping, the credentials file, option checks with file:line
 * errors (and the auth-file mode check), and the connection pool's slot
 * accounting, reuse, message limit and eviction. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/config.h"
#include "core/util.h"
#include "relay/dns.h"
#include "relay/relay.h"
#include "smtp/parse.h"
#include "smtp/reply.h"
#include "tls/tlsclient.h"

/* ---- URL, durations, resolver, literals ---------------------------------------------- */

static void test_url(void **state)
{
    char host[256];
    uint16_t port;
    int imp;
    const char *why = NULL;
    assert_int_equal(relay_parse_url("smtp://smtp.example.com", host, sizeof(host), &port, &imp, &why), 0);
    assert_string_equal(host, "smtp.example.com");
    assert_int_equal(port, 587);
    assert_int_equal(imp, 0);
    assert_int_equal(relay_parse_url("smtps://relay.example.net:2465", host, sizeof(host), &port, &imp, &why), 0);
    assert_string_equal(host, "relay.example.net");
    assert_int_equal(port, 2465);
    assert_int_equal(imp, 1);
    assert_int_equal(relay_parse_url("SMTP://127.0.0.1:25/", host, sizeof(host), &port, &imp, &why), 0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 25);
    assert_int_equal(relay_parse_url("smtp://[::1]:2525", host, sizeof(host), &port, &imp, &why), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 2525);
    static const char *const bad[] = {
        "http://x.example",        "smtp://",          "smtp://:25",      "smtp://h:0",
        "smtp://h:65536",          "smtp://h:25x",     "smtp://u:p@h:25", "smtp://h/path",
        "smtp://[not-ip]:25",      "smtp://[::1",      "smtp://a..b",     "smtp://-bad host",
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        why = NULL;
        assert_int_equal(relay_parse_url(bad[i], host, sizeof(host), &port, &imp, &why), -1);
        assert_non_null(why);
    }
}

static void test_duration(void **state)
{
    uint64_t ms;
    assert_int_equal(relay_parse_duration("30", &ms), 0);
    assert_int_equal(ms, 30000);
    assert_int_equal(relay_parse_duration("30s", &ms), 0);
    assert_int_equal(ms, 30000);
    assert_int_equal(relay_parse_duration("250ms", &ms), 0);
    assert_int_equal(ms, 250);
    assert_int_equal(relay_parse_duration("5m", &ms), 0);
    assert_int_equal(ms, 300000);
    assert_int_equal(relay_parse_duration("2h", &ms), 0);
    assert_int_equal(ms, 7200000);
    assert_int_equal(relay_parse_duration("1d", &ms), 0);
    assert_int_equal(ms, 86400000);
    assert_int_equal(relay_parse_duration("", &ms), -1);
    assert_int_equal(relay_parse_duration("s", &ms), -1);
    assert_int_equal(relay_parse_duration("5x", &ms), -1);
    assert_int_equal(relay_parse_duration("-5", &ms), -1);
    assert_int_equal(relay_parse_duration("1.5s", &ms), -1);
    assert_int_equal(relay_parse_duration("9999999999999", &ms), -1);
    assert_int_equal(relay_parse_duration("999999999999d", &ms), -1); /* would overflow */
}

static void test_resolver(void **state)
{
    char out[80];
    const char *why;
    assert_int_equal(dns_parse_server("127.0.0.1", out, sizeof(out), &why), 0);
    assert_string_equal(out, "127.0.0.1:53");
    assert_int_equal(dns_parse_server("127.0.0.1:5353", out, sizeof(out), &why), 0);
    assert_string_equal(out, "127.0.0.1:5353");
    assert_int_equal(dns_parse_server("[::1]:5353", out, sizeof(out), &why), 0);
    assert_string_equal(out, "[::1]:5353");
    assert_int_equal(dns_parse_server("2001:db8::53", out, sizeof(out), &why), 0);
    assert_string_equal(out, "[2001:db8::53]:53");
    assert_int_equal(dns_parse_server("dns.example", out, sizeof(out), &why), -1);
    assert_int_equal(dns_parse_server("127.0.0.1:0", out, sizeof(out), &why), -1);
    assert_int_equal(dns_parse_server("127.0.0.1:70000", out, sizeof(out), &why), -1);
    assert_int_equal(dns_parse_server("[::1]x", out, sizeof(out), &why), -1);
    assert_int_equal(dns_parse_server("", out, sizeof(out), &why), -1);
}

static void test_literal(void **state)
{
    struct sockaddr_storage ss;
    char t[80];
    assert_int_equal(dns_addr_literal("[192.0.2.7]", 25, &ss), 1);
    sockaddr_text((struct sockaddr *)&ss, t, sizeof(t));
    assert_string_equal(t, "192.0.2.7:25");
    assert_int_equal(dns_addr_literal("[IPv6:2001:db8::1]", 2525, &ss), 1);
    sockaddr_text((struct sockaddr *)&ss, t, sizeof(t));
    assert_string_equal(t, "[2001:db8::1]:2525");
    assert_int_equal(dns_addr_literal("example.com", 25, &ss), 0);
    assert_int_equal(dns_addr_literal("[example.com]", 25, &ss), -1);
    assert_int_equal(dns_addr_literal("[2001:db8::1]", 25, &ss), -1); /* needs the IPv6: tag */
    assert_int_equal(dns_addr_literal("[1.2.3.4", 25, &ss), -1);
}

/* ---- MX ordering --------------------------------------------------------------------------- */

static uint32_t rnd_zero(void *arg)
{
    return 0;
}

static uint32_t rnd_seq(void *arg)
{
    uint32_t *s = arg;
    return (*s)++;
}

static void test_mx_order(void **state)
{
    struct dns_mx v[] = {{"c.example", 20}, {"a.example", 10}, {"d.example", 30}, {"b.example", 10},
                         {"e.example", 20}};
    dns_mx_order(v, ARRAY_LEN(v), rnd_zero, NULL);
    /* preferences ascending */
    unsigned want_pref[] = {10, 10, 20, 20, 30};
    for (size_t i = 0; i < ARRAY_LEN(v); i++)
        assert_int_equal(v[i].pref, want_pref[i]);
    /* rnd 0: Fisher-Yates swaps each last element with the first of its run */
    assert_string_equal(v[0].host, "b.example");
    assert_string_equal(v[1].host, "a.example");
    assert_string_equal(v[2].host, "e.example");
    assert_string_equal(v[3].host, "c.example");
    assert_string_equal(v[4].host, "d.example");
    /* different random draws give the other order of an equal pair, never a
     * different preference order */
    int seen_a_first = 0, seen_b_first = 0;
    uint32_t seed = 0;
    for (int k = 0; k < 8; k++) {
        struct dns_mx w[] = {{"a.example", 10}, {"b.example", 10}, {"z.example", 5}};
        dns_mx_order(w, ARRAY_LEN(w), rnd_seq, &seed);
        assert_string_equal(w[0].host, "z.example");
        assert_int_equal(w[1].pref, 10);
        assert_int_equal(w[2].pref, 10);
        if (strcmp(w[1].host, "a.example") == 0)
            seen_a_first++;
        else
            seen_b_first++;
    }
    assert_int_equal(seen_a_first, 4);
    assert_int_equal(seen_b_first, 4);
}

static void test_null_mx(void **state)
{
    struct dns_mx one[] = {{"", 0}};
    assert_int_equal(dns_mx_is_null(one, 1), 1);
    struct dns_mx real[] = {{"mx.example", 0}};
    assert_int_equal(dns_mx_is_null(real, 1), 0);
    struct dns_mx mixed[] = {{"", 0}, {"mx.example", 10}, {"", 20}};
    assert_int_equal(dns_mx_is_null(mixed, 3), 0);
    assert_int_equal(dns_mx_drop_null(mixed, 3), 1);
    assert_string_equal(mixed[0].host, "mx.example");
    assert_int_equal(dns_mx_is_null(NULL, 0), 0);
}

/* ---- dot-stuffing ---------------------------------------------------------------------------- */

static char *stuff(const char *in, size_t n, size_t split)
{
    struct dotstuff d;
    struct strbuf out;
    sb_init(&out);
    dotstuff_init(&d);
    dotstuff_feed(&d, in, split, &out);
    dotstuff_feed(&d, in + split, n - split, &out);
    dotstuff_end(&d, &out);
    if (!out.s)
        sb_append(&out, "", 0);
    return sb_steal(&out);
}

static void test_dotstuff(void **state)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"", ".\r\n"},
        {"a\r\n", "a\r\n.\r\n"},
        {".\r\n", "..\r\n.\r\n"},
        {"Subject: x\r\n\r\n.hidden\r\n..two\r\nend.\r\n. \r\n",
         "Subject: x\r\n\r\n..hidden\r\n...two\r\nend.\r\n.. \r\n.\r\n"},
        {"no final newline", "no final newline\r\n.\r\n"},
        {"x\r\n.", "x\r\n..\r\n.\r\n"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        size_t n = strlen(cases[i].in);
        for (size_t split = 0; split <= n; split++) {
            char *got = stuff(cases[i].in, n, split);
            assert_string_equal(got, cases[i].out);
            free(got);
        }
    }
}

/* ---- MAIL / RCPT commands ----------------------------------------------------------------------- */

static void test_mail_rcpt_cmd(void **state)
{
    struct envelope e;
    envelope_init(&e);
    e.mail_from = xstrdup("alice@example.test");
    e.body = BODY_8BITMIME;
    e.smtputf8 = 1;
    e.dsn_ret = DSN_RET_HDRS;
    e.envid = xstrdup("id+1=x");
    envelope_add_rcpt(&e, "bob@example.net", DSN_NOTIFY_SUCCESS | DSN_NOTIFY_FAILURE, "rfc822;Bob+X@example.net");
    envelope_add_rcpt(&e, "carol@example.net", DSN_NOTIFY_NEVER, NULL);
    envelope_add_rcpt(&e, "dave@example.net", 0, NULL);
    struct strbuf b;
    sb_init(&b);
    unsigned all = EXT_SIZE | EXT_8BITMIME | EXT_SMTPUTF8 | EXT_DSN | EXT_PIPELINING;
    relay_mail_cmd(&e, all, 1234, &b);
    assert_string_equal(b.s, "MAIL FROM:<alice@example.test> SIZE=1234 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+2B1+3Dx");
    sb_reset(&b);
    relay_mail_cmd(&e, 0, 1234, &b);
    assert_string_equal(b.s, "MAIL FROM:<alice@example.test>");
    sb_reset(&b);
    relay_rcpt_cmd(&e.rcpts[0], all, &b);
    assert_string_equal(b.s, "RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+2BX@example.net");
    sb_reset(&b);
    relay_rcpt_cmd(&e.rcpts[1], all, &b);
    assert_string_equal(b.s, "RCPT TO:<carol@example.net> NOTIFY=NEVER");
    sb_reset(&b);
    relay_rcpt_cmd(&e.rcpts[2], all, &b);
    assert_string_equal(b.s, "RCPT TO:<dave@example.net>");
    sb_reset(&b);
    relay_rcpt_cmd(&e.rcpts[0], EXT_PIPELINING, &b);
    assert_string_equal(b.s, "RCPT TO:<bob@example.net>");
    free(e.mail_from);
    e.mail_from = xstrdup("");
    sb_reset(&b);
    relay_mail_cmd(&e, EXT_SIZE, 9, &b);
    assert_string_equal(b.s, "MAIL FROM:<> SIZE=9");
    assert_int_equal(relay_env_needs_utf8(&e), 0);
    envelope_add_rcpt(&e, "j\xc3\xbcrgen@example.net", 0, NULL);
    assert_int_equal(relay_env_needs_utf8(&e), 1);
    sb_free(&b);
    envelope_free(&e);
}

/* ---- replies ----------------------------------------------------------------------------------------- */

static void parse_reply(const char *const *lines, struct smtp_reply *out)
{
    struct reply_parser p;
    reply_parser_init(&p);
    char err[128];
    enum reply_res r = REPLY_NEED_MORE;
    for (size_t i = 0; lines[i]; i++)
        r = reply_feed_line(&p, lines[i], strlen(lines[i]), err, sizeof(err));
    assert_int_equal(r, REPLY_OK);
    *out = p.r;
}

static void test_ehlo_ext(void **state)
{
    static const char *const lines[] = {
        "250-mx.example.net Hello", "250-PIPELINING", "250-SIZE 10240000", "250-8BITMIME",
        "250-AUTH=PLAIN",           "250-AUTH CRAM-MD5 PLAIN", "250-ENHANCEDSTATUSCODES", "250-DSN",
        "250-CHUNKING",             "250 STARTTLS",          NULL,
    };
    struct smtp_reply *r = xmalloc(sizeof(*r));
    parse_reply(lines, r);
    uint64_t size;
    unsigned ext = relay_ehlo_ext(r, &size);
    assert_int_equal(ext, EXT_PIPELINING | EXT_SIZE | EXT_8BITMIME | EXT_AUTH_PLAIN | EXT_ENHANCED | EXT_DSN |
                              EXT_STARTTLS | EXT_CHUNKING);
    assert_int_equal(size, 10240000);
    static const char *const bare[] = {"250-PIPELINING.example Hello", "250-AUTH LOGIN", "250 SMTPUTF8", NULL};
    parse_reply(bare, r);
    ext = relay_ehlo_ext(r, &size);
    /* the greeting line is not a keyword line */
    assert_int_equal(ext, EXT_AUTH_LOGIN | EXT_SMTPUTF8);
    assert_int_equal(size, 0);
    free(r);
}

static void test_result_reply(void **state)
{
    struct smtp_reply *r = xmalloc(sizeof(*r));
    struct delivery_result res;
    static const char *const ok[] = {"250 2.0.0 Ok: queued as 12345", NULL};
    parse_reply(ok, r);
    relay_result_reply(&res, r, "mx1.test", "127.0.0.2:25", "end of data");
    assert_int_equal(res.status, DR_OK);
    assert_string_equal(res.text, "250 2.0.0 Ok: queued as 12345 (mx1.test[127.0.0.2:25], in reply to end of data)");
    assert_string_equal(res.remote, "mx1.test");
    static const char *const temp[] = {"451-try", "451 again later", NULL};
    parse_reply(temp, r);
    relay_result_reply(&res, r, "h", "1.2.3.4:25", "RCPT TO");
    assert_int_equal(res.status, DR_TEMP);
    assert_string_equal(res.text, "451 4.0.0 try again later (h[1.2.3.4:25], in reply to RCPT TO)");
    static const char *const perm[] = {"550 5.1.1 <x@y>: no such user\x01", NULL};
    parse_reply(perm, r);
    relay_result_reply(&res, r, "h", "1.2.3.4:25", "RCPT TO");
    assert_int_equal(res.status, DR_PERM);
    assert_string_equal(res.text, "550 5.1.1 <x@y>: no such user? (h[1.2.3.4:25], in reply to RCPT TO)");
    relay_result_set(&res, DR_PERM, "556 5.1.10", "domain %s does not accept mail", "n.test");
    assert_int_equal(res.status, DR_PERM);
    assert_string_equal(res.text, "556 5.1.10 domain n.test does not accept mail");
    assert_string_equal(res.remote, "");
    free(r);
}

/* ---- credentials -------------------------------------------------------------------------------------- */

static void test_creds(void **state)
{
    const char *text = "# rotation: new key first\n\nuser1 pass word one\r\n\t  user2\tsecond-Pw\n";
    struct relay_cred *c;
    size_t n;
    char err[200];
    assert_int_equal(relay_creds_parse(text, strlen(text), &c, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 2);
    assert_string_equal(c[0].login, "user1");
    assert_string_equal(c[0].password, "pass word one");
    assert_string_equal(c[1].login, "user2");
    assert_string_equal(c[1].password, "second-Pw");
    relay_creds_free(c, n);

    const char *nopw = "user1 pw1\nonly-login-SECRET\n";
    assert_int_equal(relay_creds_parse(nopw, strlen(nopw), &c, &n, err, sizeof(err)), -1);
    assert_string_equal(err, "line 2: a line must be `login password` (no password found)");
    const char *ctl = "user1 pw\x01SECRET\n";
    assert_int_equal(relay_creds_parse(ctl, strlen(ctl), &c, &n, err, sizeof(err)), -1);
    assert_string_equal(err, "line 1: control character in the line");
    assert_null(strstr(err, "SECRET"));
    assert_int_equal(relay_creds_parse("# nothing\n", 10, &c, &n, err, sizeof(err)), -1);
    assert_string_equal(err, "no `login password` line");
    struct strbuf many;
    sb_init(&many);
    for (int i = 0; i < RELAY_MAX_CREDS + 1; i++)
        sb_printf(&many, "u%d p%d\n", i, i);
    assert_int_equal(relay_creds_parse(many.s, many.len, &c, &n, err, sizeof(err)), -1);
    assert_string_equal(err, "line 17: too many credentials (at most 16)");
    sb_free(&many);
}

/* ---- options ---------------------------------------------------------------------------------------------- */

static struct transport_cfg *tcfg(const char *type, const char *const *kv)
{
    struct transport_cfg *t = xcalloc(1, sizeof(*t));
    t->name = xstrdup("out");
    t->type = xstrdup(type);
    t->line = 10;
    for (size_t i = 0; kv[i]; i += 2) {
        t->opts = xrealloc(t->opts, (t->nopts + 1) * sizeof(*t->opts));
        t->opts[t->nopts] = (struct kv){xstrdup(kv[i]), xstrdup(kv[i + 1]), 11 + (int)t->nopts};
        t->nopts++;
    }
    return t;
}

static void tcfg_free(struct transport_cfg *t)
{
    for (size_t i = 0; i < t->nopts; i++) {
        free(t->opts[i].key);
        free(t->opts[i].value);
    }
    free(t->opts);
    free(t->name);
    free(t->type);
    free(t);
}

static void test_opts_smarthost(void **state)
{
    static const char *const kv[] = {"url", "smtp://relay.example.com:2587", "starttls", "optional",
                                     "helo", "out.example.com", "connect-timeout", "5s",
                                     "max-connections", "4", "max-connections-per-host", "2",
                                     "resolver", "127.0.0.1:5353", "chunking", "no", NULL};
    struct transport_cfg *t = tcfg("smarthost", kv);
    struct relay_opts o;
    struct errlist errs;
    errlist_init(&errs);
    assert_int_equal(relay_opts_parse(t, RELAY_SMARTHOST, &o, "c.conf", &errs), 0);
    assert_int_equal(errs.n, 0);
    assert_string_equal(o.host, "relay.example.com");
    assert_int_equal(o.port, 2587);
    assert_int_equal(o.tls, TLSP_OPTIONAL);
    assert_int_equal(o.tls_verify, 1);
    assert_string_equal(o.helo, "out.example.com");
    assert_int_equal(o.connect_timeout_ms, 5000);
    assert_int_equal(o.command_timeout_ms, 300000);
    assert_int_equal(o.max_conn, 4);
    assert_int_equal(o.max_conn_per_dest, 2);
    assert_string_equal(o.dns.server, "127.0.0.1:5353");
    assert_int_equal(o.chunking, 0);
    assert_null(o.auth_file);
    relay_opts_free(&o);
    tcfg_free(t);

    static const char *const imp[] = {"url", "smtps://relay.example.com", NULL};
    t = tcfg("smarthost", imp);
    assert_int_equal(relay_opts_parse(t, RELAY_SMARTHOST, &o, "c.conf", &errs), 0);
    assert_int_equal(o.tls, TLSP_IMPLICIT);
    assert_int_equal(o.port, 465);
    assert_int_equal(o.chunking, 1);
    relay_opts_free(&o);
    tcfg_free(t);
    errlist_free(&errs);
}

static void test_opts_errors(void **state)
{
    static const char *const kv[] = {"url", "smtps://h.example", "starttls", "required", "port", "25",
                                     "auth-file", "relative/creds", "tls-verify", "maybe", "bogus", "1",
                                     "idle-timeout", "2h", "helo", "bad name", "url", "smtp://other",
                                     "chunking", "sometimes", NULL};
    struct transport_cfg *t = tcfg("smarthost", kv);
    struct relay_opts o;
    struct errlist errs;
    errlist_init(&errs);
    assert_int_equal(relay_opts_parse(t, RELAY_SMARTHOST, &o, "c.conf", &errs), -1);
    static const char *const want[] = {
        "c.conf:13: transport out: unknown option `port` for type smarthost (it is an mx option)",
        "c.conf:14: transport out: bad value `relative/creds` for `auth-file`: must be an absolute path",
        "c.conf:15: transport out: bad value `maybe` for `tls-verify`: expected yes or no",
        "c.conf:16: transport out: unknown option `bogus` for type smarthost",
        "c.conf:17: transport out: bad value `2h` for `idle-timeout`: a duration from 0 to 1h",
        "c.conf:18: transport out: bad value `bad name` for `helo`: expected a host name (letters, digits, '-' in dot-separated labels)",
        "c.conf:19: transport out: duplicate option `url` (first set at line 11)",
        "c.conf:20: transport out: bad value `sometimes` for `chunking`: expected yes or no",
        "c.conf:12: transport out: `starttls` is for smtp:// urls; smtps:// always uses TLS",
    };
    assert_int_equal(errs.n, ARRAY_LEN(want));
    for (size_t i = 0; i < ARRAY_LEN(want); i++)
        assert_string_equal(errs.v[i], want[i]);
    tcfg_free(t);
    errlist_free(&errs);

    errlist_init(&errs);
    static const char *const none[] = {"starttls", "opportunistic", NULL};
    t = tcfg("smarthost", none);
    assert_int_equal(relay_opts_parse(t, RELAY_SMARTHOST, &o, "c.conf", &errs), -1);
    assert_int_equal(errs.n, 2);
    assert_string_equal(errs.v[0], "c.conf:11: transport out: bad value `opportunistic` for `starttls`: expected "
                                   "required or optional");
    assert_string_equal(errs.v[1], "c.conf:10: transport out: smarthost needs `url smtp://HOST:PORT` (STARTTLS) or "
                                   "`url smtps://HOST:PORT`");
    tcfg_free(t);
    errlist_free(&errs);
}

/* A zeroed tls_client_opts is the safe default: OpenSSL's security level
 * (weak keys and ciphers refused), TLS 1.2 at least; security level 0 only
 * when asked for (submitcheck's legacy probes). */
static void test_client_ctx_defaults(void **state)
{
    struct tls_client_opts o;
    memset(&o, 0, sizeof(o));
    char err[256];
    SSL_CTX *ctx = tls_client_ctx_new(&o, err, sizeof(err));
    assert_non_null(ctx);
    assert_true(SSL_CTX_get_security_level(ctx) >= 1);
    assert_int_equal(SSL_CTX_get_min_proto_version(ctx), TLS1_2_VERSION);
    SSL_CTX_free(ctx);
    o.legacy = 1;
    ctx = tls_client_ctx_new(&o, err, sizeof(err));
    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_get_security_level(ctx), 0);
    SSL_CTX_free(ctx);
}

static void test_opts_mx(void **state)
{
    static const char *const kv[] = {"resolver", "127.0.0.1:5353", "port", "2525", "starttls", "required",
                                     "max-addresses", "3", NULL};
    struct transport_cfg *t = tcfg("mx", kv);
    struct relay_opts o;
    struct errlist errs;
    errlist_init(&errs);
    assert_int_equal(relay_opts_parse(t, RELAY_MX, &o, "c.conf", &errs), 0);
    assert_int_equal(o.port, 2525);
    assert_int_equal(o.tls, TLSP_REQUIRED);
    assert_int_equal(o.tls_verify, 0);
    assert_int_equal(o.max_addrs, 3);
    assert_int_equal(o.dns.nosearch, 1);
    relay_opts_free(&o);
    tcfg_free(t);
    static const char *const bad[] = {"url", "smtp://x.example", "starttls", "optional", "max-connections", "2",
                                      "max-connections-per-host", "3", NULL};
    t = tcfg("mx", bad);
    assert_int_equal(relay_opts_parse(t, RELAY_MX, &o, "c.conf", &errs), -1);
    assert_int_equal(errs.n, 3);
    assert_string_equal(errs.v[0], "c.conf:11: transport out: unknown option `url` for type mx (it is a smarthost "
                                   "option)");
    assert_string_equal(errs.v[1], "c.conf:12: transport out: bad value `optional` for `starttls`: expected "
                                   "opportunistic, required or off");
    assert_string_equal(errs.v[2], "c.conf:10: transport out: max-connections-per-host (3) must not exceed "
                                   "max-connections (2)");
    tcfg_free(t);
    errlist_free(&errs);
}

static void test_auth_file_mode(void **state)
{
    char dir[] = "/tmp/test_relay.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[300];
    snprintf(path, sizeof(path), "%s/creds", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("apikey s3cret-value\n", f);
    fclose(f);
    assert_int_equal(chmod(path, 0644), 0);
    static const char *const kv0[] = {"url", "smtp://relay.example.com", "auth-file", NULL, NULL};
    const char *kv[5];
    memcpy(kv, kv0, sizeof(kv));
    kv[3] = path;
    struct transport_cfg *t = tcfg("smarthost", kv);
    struct relay_opts o;
    struct errlist errs;
    errlist_init(&errs);
    assert_int_equal(relay_opts_parse(t, RELAY_SMARTHOST, &o, "c.conf", &errs), 0);
    assert_int_equal(relay_opts_check_files(t, &o, "c.conf", &errs), -1);
    assert_int_equal(errs.n, 1);
    char want[2048];
    snprintf(want, sizeof(want),
             "c.conf:12: transport out: auth-file %s has mode 0644: it must not be accessible by others nor "
             "writable by its group; fix it with `chmod 600 %s` (or `chmod 640 %s` to let its group read it)",
             path, path, path);
    assert_string_equal(errs.v[0], want);
    errlist_free(&errs);
    errlist_init(&errs);
    assert_int_equal(chmod(path, 0640), 0);
    assert_int_equal(relay_opts_check_files(t, &o, "c.conf", &errs), 0);
    assert_int_equal(errs.n, 0);
    f = fopen(path, "w");
    fputs("login-without-password\n", f);
    fclose(f);
    assert_int_equal(relay_opts_check_files(t, &o, "c.conf", &errs), -1);
    assert_int_equal(errs.n, 1);
    assert_non_null(strstr(errs.v[0], "line 1: a line must be `login password`"));
    errlist_free(&errs);
    relay_opts_free(&o);
    tcfg_free(t);
    unlink(path);
    rmdir(dir);
}

/* ---- pool ------------------------------------------------------------------------------------------------- */

static struct relay_conn *fake_conn(const char *key)
{
    struct relay_conn *c = xcalloc(1, sizeof(*c)); /* c->c NULL: relay_close just frees */
    str_copy(c->key, key, sizeof(c->key));
    return c;
}

static void test_pool(void **state)
{
    struct relay_opts o = {.max_conn = 2, .max_conn_per_dest = 1, .max_msgs_per_conn = 2, .idle_ms = 3600000,
                           .limit_wait_ms = 0};
    struct relay_pool *p = relay_pool_new(&o);
    struct relay_conn *c;
    /* a slot for A, then A is full */
    assert_int_equal(relay_pool_acquire(p, "A", &c), 0);
    assert_null(c);
    assert_int_equal(relay_pool_acquire(p, "A", &c), -1);
    /* B gets the second slot; the total is full */
    assert_int_equal(relay_pool_acquire(p, "B", &c), 0);
    assert_int_equal(relay_pool_acquire(p, "C", &c), -1);
    /* A's connection goes idle and is reused */
    struct relay_conn *a = fake_conn("A");
    a->nmsgs = 1;
    relay_pool_release(p, "A", a, 1);
    assert_int_equal(relay_pool_acquire(p, "A", &c), 1);
    assert_ptr_equal(c, a);
    /* at the message limit it is closed instead, and the slot is free */
    a->nmsgs = 2;
    relay_pool_release(p, "A", a, 1);
    assert_int_equal(relay_pool_acquire(p, "A", &c), 0);
    assert_null(c);
    /* an idle connection of A is evicted to make room for C */
    relay_pool_release(p, "A", fake_conn("A"), 1);
    assert_int_equal(relay_pool_acquire(p, "C", &c), 0);
    assert_null(c);
    assert_int_equal(relay_pool_acquire(p, "A", &c), -1);
    /* a broken connection (not reusable) frees its slot */
    relay_pool_release(p, "C", NULL, 0);
    assert_int_equal(relay_pool_acquire(p, "A", &c), 0);
    relay_pool_release(p, "A", fake_conn("A"), 1);
    relay_pool_release(p, "B", fake_conn("B"), 1);
    relay_pool_free(p); /* frees the idle ones (ASan checks) */

    /* idle-timeout 0: nothing is kept */
    o.idle_ms = 0;
    p = relay_pool_new(&o);
    assert_int_equal(relay_pool_acquire(p, "A", &c), 0);
    relay_pool_release(p, "A", fake_conn("A"), 1);
    assert_int_equal(relay_pool_acquire(p, "A", &c), 0);
    assert_null(c);
    relay_pool_release(p, "A", NULL, 0);
    relay_pool_free(p);
}

/* Threads blocked in relay_pool_acquire: each release wakes one that can
 * use it (limit-wait is 10 s: a wake-up that went missing shows as a
 * timeout, -1, or as a run of several seconds). */
struct pool_waiter {
    struct relay_pool *p;
    const char *key;
    int rc;
    struct relay_conn *got;
    int release_after; /* put the connection back (idle) when done */
};

static void *pool_waiter_main(void *arg)
{
    struct pool_waiter *w = arg;
    w->rc = relay_pool_acquire(w->p, w->key, &w->got);
    if (w->release_after && w->rc >= 0) {
        usleep(2000);
        struct relay_conn *c = w->got ? w->got : fake_conn(w->key);
        c->nmsgs = 0;
        relay_pool_release(w->p, w->key, c, 1);
        w->got = c;
    }
    return NULL;
}

static void test_pool_waiters(void **state)
{
    struct relay_opts o = {.max_conn = 2, .max_conn_per_dest = 1, .max_msgs_per_conn = 1000, .idle_ms = 3600000,
                           .limit_wait_ms = 10000};
    struct relay_pool *p = relay_pool_new(&o);
    struct relay_conn *c;
    uint64_t t0 = now_ms();
    /* A is full: eight threads queue for it and take turns with the one
     * connection, each putting it back idle for the next */
    assert_int_equal(relay_pool_acquire(p, "A", &c), 0);
    struct pool_waiter w[8];
    pthread_t th[8];
    for (int i = 0; i < 8; i++) {
        w[i] = (struct pool_waiter){.p = p, .key = "A", .release_after = 1};
        assert_int_equal(pthread_create(&th[i], NULL, pool_waiter_main, &w[i]), 0);
    }
    usleep(20000);
    struct relay_conn *a = fake_conn("A");
    relay_pool_release(p, "A", a, 1);
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].rc, 1); /* the idle connection, handed on */
        assert_ptr_equal(w[i].got, a);
    }
    /* the total is full (A and B busy): a waiter for C is woken when A's
     * connection goes idle, and evicts it for room; a waiter for D is woken
     * when B's slot frees */
    assert_int_equal(relay_pool_acquire(p, "B", &c), 0);
    struct pool_waiter wc = {.p = p, .key = "C"};
    pthread_t tc;
    assert_int_equal(relay_pool_acquire(p, "A", &c), 1); /* A busy again */
    assert_int_equal(pthread_create(&tc, NULL, pool_waiter_main, &wc), 0);
    usleep(20000);
    relay_pool_release(p, "A", c, 1); /* idle A: C evicts it */
    pthread_join(tc, NULL);
    assert_int_equal(wc.rc, 0);
    struct pool_waiter wd = {.p = p, .key = "D"};
    pthread_t td;
    assert_int_equal(pthread_create(&td, NULL, pool_waiter_main, &wd), 0);
    usleep(20000);
    relay_pool_release(p, "B", NULL, 0); /* B's slot frees: D takes it */
    pthread_join(td, NULL);
    assert_int_equal(wd.rc, 0);
    assert_true(now_ms() - t0 < 5000);
    relay_pool_release(p, "C", fake_conn("C"), 1);
    relay_pool_release(p, "D", fake_conn("D"), 1);
    relay_pool_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url),          cmocka_unit_test(test_duration),
        cmocka_unit_test(test_resolver),     cmocka_unit_test(test_literal),
        cmocka_unit_test(test_mx_order),     cmocka_unit_test(test_null_mx),
        cmocka_unit_test(test_dotstuff),     cmocka_unit_test(test_mail_rcpt_cmd),
        cmocka_unit_test(test_ehlo_ext),     cmocka_unit_test(test_result_reply),
        cmocka_unit_test(test_creds),        cmocka_unit_test(test_opts_smarthost),
        cmocka_unit_test(test_opts_errors),  cmocka_unit_test(test_opts_mx),
        cmocka_unit_test(test_auth_file_mode), cmocka_unit_test(test_pool),
        cmocka_unit_test(test_pool_waiters), cmocka_unit_test(test_client_ctx_defaults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
