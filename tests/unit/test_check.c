/* Unit tests for submitcheck's pure parts (src/check): verdict
 * aggregation and exit codes, the JSON writer's escaping and shape, the
 * report's text and JSON renderings, AUTH reply interpretation
 * (535/534/454/530/538...), certificate expiry classification, key and
 * protocol verdicts, queue-id extraction, connection advice, and the
 * HOST[:PORT] and --ports parsers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/ssl.h>
#include <stdlib.h>
#include <string.h>

#include "check/advice.h"
#include "check/check.h"
#include "check/json.h"
#include "check/report.h"
#include "core/util.h"

/* A report with one host step and two ports with the given verdicts. */
static void make_report(struct report *r, enum verdict host, enum verdict a, enum verdict b)
{
    report_init(r, "mail.example.test", 0);
    step_set(report_add_step(r, NULL, "dns"), host, "dns");
    struct port_report *p1 = report_add_port(r, 587, "starttls");
    struct port_report *p2 = report_add_port(r, 465, "implicit");
    step_set(report_add_step(r, p1, "connect"), VERDICT_OK, "c");
    step_set(report_add_step(r, p1, "tls"), a, "t");
    step_set(report_add_step(r, p2, "connect"), b, "c2");
    report_add_step(r, p2, "send"); /* stays skip */
}

static void test_verdicts(void **state)
{
    (void)state;
    assert_int_equal(verdict_worst(VERDICT_OK, VERDICT_WARN), VERDICT_WARN);
    assert_int_equal(verdict_worst(VERDICT_FAIL, VERDICT_WARN), VERDICT_FAIL);
    assert_int_equal(verdict_worst(VERDICT_SKIP, VERDICT_OK), VERDICT_OK);
    assert_int_equal(verdict_exit_code(VERDICT_SKIP), 0);
    assert_int_equal(verdict_exit_code(VERDICT_OK), 0);
    assert_int_equal(verdict_exit_code(VERDICT_WARN), 1);
    assert_int_equal(verdict_exit_code(VERDICT_FAIL), 2);
    assert_string_equal(verdict_name(VERDICT_SKIP), "skip");
    assert_string_equal(verdict_name(VERDICT_FAIL), "fail");

    struct report r;
    make_report(&r, VERDICT_OK, VERDICT_OK, VERDICT_OK);
    assert_int_equal(report_verdict(&r), VERDICT_OK);
    assert_int_equal(report_exit_code(&r), 0);
    int counts[4];
    report_counts(&r, counts);
    assert_int_equal(counts[VERDICT_OK], 4);
    assert_int_equal(counts[VERDICT_SKIP], 1);
    assert_int_equal(counts[VERDICT_WARN], 0);
    report_free(&r);

    make_report(&r, VERDICT_OK, VERDICT_WARN, VERDICT_OK);
    assert_int_equal(port_verdict(r.ports[0]), VERDICT_WARN);
    assert_int_equal(port_verdict(r.ports[1]), VERDICT_OK);
    assert_int_equal(report_exit_code(&r), 1);
    report_free(&r);

    make_report(&r, VERDICT_OK, VERDICT_WARN, VERDICT_FAIL);
    assert_int_equal(report_exit_code(&r), 2);
    report_counts(&r, counts);
    assert_int_equal(counts[VERDICT_FAIL], 1);
    assert_int_equal(counts[VERDICT_WARN], 1);
    report_free(&r);

    make_report(&r, VERDICT_FAIL, VERDICT_OK, VERDICT_OK); /* a host-level failure counts too */
    assert_int_equal(report_exit_code(&r), 2);
    report_free(&r);
}

static void test_step_model(void **state)
{
    (void)state;
    struct report r;
    report_init(&r, "h", 0);
    struct step *s = report_add_step(&r, NULL, "x");
    assert_int_equal(s->verdict, VERDICT_SKIP);
    assert_int_equal(s->ms, -1);
    step_set(s, VERDICT_OK, "first %d", 1);
    step_worsen(s, VERDICT_WARN, "second");
    assert_string_equal(s->message, "first 1; second");
    assert_int_equal(s->verdict, VERDICT_WARN);
    step_worsen(s, VERDICT_OK, "third"); /* never improves */
    assert_int_equal(s->verdict, VERDICT_WARN);
    step_fix(s, "a");
    step_fix(s, "a"); /* duplicates dropped */
    step_fix(s, "b");
    assert_int_equal(s->nfix, 2);
    step_fact_int(s, "n", 5);
    step_fact_int(s, "n", 6); /* replaced */
    step_fact_list(s, "l", NULL);
    step_fact_list(s, "l", "x");
    step_fact_list(s, "l", "y");
    step_fact_str(s, "gone", NULL); /* not set */
    assert_int_equal(s->nfacts, 2);
    assert_int_equal(step_get_fact(s, "n")->num, 6);
    assert_int_equal(step_get_fact(s, "l")->nlist, 2);
    assert_null(step_get_fact(s, "gone"));
    step_fact_str(s, "n", "now a string"); /* type change replaces */
    assert_int_equal(step_get_fact(s, "n")->type, FACT_STR);
    assert_string_equal(step_get_fact(s, "n")->str, "now a string");
    report_free(&r);
}

static const char *escaped(struct strbuf *b, const char *s, size_t n)
{
    sb_reset(b);
    json_escape(b, s, n);
    sb_append(b, "", 0);
    return b->s ? b->s : "";
}

static void test_json_escape(void **state)
{
    (void)state;
    struct strbuf b;
    sb_init(&b);
    assert_string_equal(escaped(&b, "plain", 5), "plain");
    assert_string_equal(escaped(&b, "a\"b\\c/", 6), "a\\\"b\\\\c/");
    assert_string_equal(escaped(&b, "\n\r\t\b\f", 5), "\\n\\r\\t\\b\\f");
    assert_string_equal(escaped(&b, "\x01\x1f\x7f", 3), "\\u0001\\u001f\\u007f");
    assert_string_equal(escaped(&b, "nul\0x", 5), "nul\\u0000x");
    /* valid UTF-8 is kept as it is: é, €, U+1F600 */
    assert_string_equal(escaped(&b, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9), "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    /* invalid: a lone continuation byte, 0xff, an overlong '/', a surrogate, a truncated sequence, > U+10FFFF */
    assert_string_equal(escaped(&b, "\x80", 1), "\\ufffd");
    assert_string_equal(escaped(&b, "a\xffz", 3), "a\\ufffdz");
    assert_string_equal(escaped(&b, "\xc0\xaf", 2), "\\ufffd\\ufffd");
    assert_string_equal(escaped(&b, "\xed\xa0\x80", 3), "\\ufffd\\ufffd\\ufffd");
    assert_string_equal(escaped(&b, "\xe2\x82", 2), "\\ufffd\\ufffd");
    assert_string_equal(escaped(&b, "\xf4\x90\x80\x80", 4), "\\ufffd\\ufffd\\ufffd\\ufffd");
    sb_free(&b);
}

static void test_json_writer(void **state)
{
    (void)state;
    struct strbuf b;
    sb_init(&b);
    struct json j;
    json_init(&j, &b, 0);
    json_obj_begin(&j, NULL);
    json_str(&j, "s", "v\"");
    json_int(&j, "i", -42);
    json_bool(&j, "t", 1);
    json_null(&j, "n");
    json_str(&j, "z", NULL);
    json_arr_begin(&j, "a");
    json_int(&j, NULL, 1);
    json_obj_begin(&j, NULL);
    json_obj_end(&j);
    json_arr_begin(&j, NULL);
    json_arr_end(&j);
    json_arr_end(&j);
    json_obj_end(&j);
    assert_string_equal(b.s, "{\"s\":\"v\\\"\",\"i\":-42,\"t\":true,\"n\":null,\"z\":null,\"a\":[1,{},[]]}");

    sb_reset(&b);
    json_init(&j, &b, 1);
    json_obj_begin(&j, NULL);
    json_arr_begin(&j, "a");
    json_str(&j, NULL, "x");
    json_arr_end(&j);
    json_obj_begin(&j, "o");
    json_obj_end(&j);
    json_obj_end(&j);
    assert_string_equal(b.s, "{\n  \"a\": [\n    \"x\"\n  ],\n  \"o\": {}\n}");
    sb_free(&b);
}

static void test_report_json(void **state)
{
    (void)state;
    struct report r;
    report_init(&r, "h\x01", 86400);
    struct step *s = report_add_step(&r, NULL, "dns");
    step_set(s, VERDICT_OK, "ok");
    s->ms = 3;
    struct port_report *p = report_add_port(&r, 587, "starttls");
    p->address = xstrdup("127.0.0.1");
    s = report_add_step(&r, p, "tls");
    step_set(s, VERDICT_WARN, "w");
    step_cause(s, "c");
    step_fix(s, "f1");
    step_fact_bool(s, "b", 0);
    step_fact_list(s, "l", "x");
    r.duration_ms = 9;
    struct strbuf b;
    sb_init(&b);
    report_json(&r, &b, 0);
    assert_string_equal(b.s,
                        "{\"schema_version\":1,\"tool\":\"submitcheck\",\"host\":\"h\\u0001\","
                        "\"started\":\"1970-01-02T00:00:00Z\",\"duration_ms\":9,\"verdict\":\"warn\",\"exit_code\":1,"
                        "\"counts\":{\"skip\":0,\"ok\":1,\"warn\":1,\"fail\":0},"
                        "\"steps\":[{\"id\":\"dns\",\"verdict\":\"ok\",\"message\":\"ok\",\"cause\":null,\"fix\":[],"
                        "\"duration_ms\":3,\"facts\":{}}],"
                        "\"ports\":[{\"port\":587,\"tls_mode\":\"starttls\",\"address\":\"127.0.0.1\",\"verdict\":\"warn\","
                        "\"steps\":[{\"id\":\"tls\",\"verdict\":\"warn\",\"message\":\"w\",\"cause\":\"c\","
                        "\"fix\":[\"f1\"],\"duration_ms\":null,\"facts\":{\"b\":false,\"l\":[\"x\"]}}]}]}\n");
    sb_free(&b);
    report_free(&r);
}

static void test_report_text(void **state)
{
    (void)state;
    struct report r;
    report_init(&r, "h", 0);
    struct port_report *p = report_add_port(&r, 465, "implicit");
    struct step *s = report_add_step(&r, p, "connect");
    step_set(s, VERDICT_FAIL, "refused\r\n by peer");
    step_cause(s, "nothing listens");
    step_fix(s, "one");
    step_fix(s, "two");
    struct strbuf b;
    sb_init(&b);
    port_heading_text(p, &b);
    step_text(s, &b);
    assert_string_equal(b.s, "port 465 (implicit TLS)\n"
                             "  fail  connect             refused?? by peer\n"
                             "        cause: nothing listens\n"
                             "        fix:   one\n"
                             "               two\n");
    sb_reset(&b);
    step_set(s, VERDICT_OK, "fine");
    step_text(s, &b); /* no cause or fix on ok */
    assert_string_equal(b.s, "  ok    connect             fine\n");
    sb_reset(&b);
    report_summary_text(&r, &b);
    assert_string_equal(b.s, "result: OK (0 failures, 0 warnings, 1 ok, 0 skipped) in 0 ms\n");
    sb_free(&b);
    report_free(&r);
}

static void test_auth_classify(void **state)
{
    (void)state;
    assert_int_equal(auth_classify(235, "2.7.0", "Authentication successful"), AUTH_RES_OK);
    assert_int_equal(auth_classify(535, "5.7.8", "Authentication credentials invalid"), AUTH_RES_BAD_CREDENTIALS);
    assert_int_equal(auth_classify(534, "5.7.9", "Application-specific password required"), AUTH_RES_WEB_LOGIN);
    assert_int_equal(auth_classify(534, "5.7.14", "Please log in via your web browser"), AUTH_RES_WEB_LOGIN);
    assert_int_equal(auth_classify(454, "4.7.0", "Temporary authentication failure"), AUTH_RES_TEMPORARY);
    assert_int_equal(auth_classify(421, "4.7.0", "Try again later"), AUTH_RES_TEMPORARY);
    assert_int_equal(auth_classify(530, "5.7.0", "Must issue a STARTTLS command first"), AUTH_RES_TLS_REQUIRED);
    assert_int_equal(auth_classify(530, "5.7.0", "Authentication required"), AUTH_RES_AUTH_REQUIRED);
    assert_int_equal(auth_classify(538, "5.7.11", "Encryption required for requested authentication mechanism"),
                     AUTH_RES_TLS_REQUIRED);
    assert_int_equal(auth_classify(504, "5.5.4", "Unrecognized authentication type"), AUTH_RES_MECH_REFUSED);
    assert_int_equal(auth_classify(503, "5.5.1", "Error: authentication not enabled"), AUTH_RES_NO_AUTH);
    assert_int_equal(auth_classify(502, "", "Command not implemented"), AUTH_RES_NO_AUTH);
    assert_int_equal(auth_classify(501, "5.5.2", "Cannot decode response"), AUTH_RES_SYNTAX);
    assert_int_equal(auth_classify(554, "5.7.1", "no"), AUTH_RES_OTHER);
    assert_int_equal(auth_classify(535, NULL, NULL), AUTH_RES_BAD_CREDENTIALS);
    assert_string_equal(auth_result_name(AUTH_RES_WEB_LOGIN), "web-login-required");

    struct report r;
    report_init(&r, "h", 0);
    struct step *s = report_add_step(&r, NULL, "auth");
    advise_auth(s, 235, "2.7.0", "ok", "PLAIN", 0);
    assert_int_equal(s->verdict, VERDICT_OK);
    assert_null(s->cause);
    s = report_add_step(&r, NULL, "auth");
    advise_auth(s, 535, "5.7.8", "Authentication credentials invalid", "PLAIN", 0);
    assert_int_equal(s->verdict, VERDICT_FAIL);
    assert_string_equal(s->message, "PLAIN refused: 535 5.7.8 Authentication credentials invalid");
    assert_string_equal(s->cause, "the server refused the user name or password");
    assert_true(s->nfix >= 3);
    s = report_add_step(&r, NULL, "auth");
    advise_auth(s, 535, "5.7.8", "bad token", "XOAUTH2", 1);
    assert_non_null(strstr(s->cause, "OAuth token"));
    s = report_add_step(&r, NULL, "auth");
    advise_auth(s, 534, "5.7.9", "Application-specific password required", "LOGIN", 0);
    assert_non_null(strstr(s->cause, "app password"));
    s = report_add_step(&r, NULL, "auth");
    advise_auth(s, 454, "4.7.0", "Temporary authentication failure", "PLAIN", 0);
    assert_int_equal(s->verdict, VERDICT_FAIL);
    assert_non_null(strstr(s->cause, "temporary authentication failure"));
    s = report_add_step(&r, NULL, "auth");
    advise_auth(s, 530, "5.7.0", "Must issue a STARTTLS command first", "PLAIN", 0);
    assert_non_null(strstr(s->cause, "wants TLS"));
    report_free(&r);
}

static void test_cert_time(void **state)
{
    (void)state;
    const long long day = 86400, now = 1700000000;
    long long days = 0;
    assert_int_equal(cert_time_classify(now - day, now + 90 * day, now, 14, &days), CERT_TIME_OK);
    assert_int_equal(days, 90);
    assert_int_equal(cert_time_classify(now - day, now + 13 * day, now, 14, &days), CERT_TIME_EXPIRING);
    assert_int_equal(days, 13);
    /* exactly 14 days left is not yet "under 14 days" */
    assert_int_equal(cert_time_classify(now - day, now + 14 * day, now, 14, &days), CERT_TIME_OK);
    assert_int_equal(cert_time_classify(now - day, now + 14 * day - 1, now, 14, &days), CERT_TIME_EXPIRING);
    assert_int_equal(days, 13);
    assert_int_equal(cert_time_classify(now - 10 * day, now, now, 14, &days), CERT_TIME_EXPIRING); /* last second */
    assert_int_equal(days, 0);
    assert_int_equal(cert_time_classify(now - 10 * day, now - 1, now, 14, &days), CERT_TIME_EXPIRED);
    assert_int_equal(days, -1);
    assert_int_equal(cert_time_classify(now - 10 * day, now - 3 * day, now, 14, &days), CERT_TIME_EXPIRED);
    assert_int_equal(days, -3);
    assert_int_equal(cert_time_classify(now + day, now + 90 * day, now, 14, NULL), CERT_TIME_NOT_YET_VALID);
    assert_int_equal(cert_time_classify(now - day, now + 5 * day, now, 0, &days), CERT_TIME_OK); /* warning off */
    assert_string_equal(cert_time_name(CERT_TIME_EXPIRING), "expiring");
    assert_string_equal(cert_time_name(CERT_TIME_NOT_YET_VALID), "not-yet-valid");
}

static void test_key_and_version(void **state)
{
    (void)state;
    assert_int_equal(key_verdict("RSA", 1024), VERDICT_FAIL);
    assert_int_equal(key_verdict("RSA", 2048), VERDICT_OK);
    assert_int_equal(key_verdict("RSA", 4096), VERDICT_OK);
    assert_int_equal(key_verdict("DSA", 1024), VERDICT_FAIL);
    assert_int_equal(key_verdict("EC", 256), VERDICT_OK);
    assert_int_equal(key_verdict("EC", 160), VERDICT_FAIL);
    assert_int_equal(key_verdict("ED25519", 253), VERDICT_OK);
    assert_int_equal(key_verdict("other", 0), VERDICT_WARN);
    assert_int_equal(tls_version_verdict(TLS1_3_VERSION), VERDICT_OK);
    assert_int_equal(tls_version_verdict(TLS1_2_VERSION), VERDICT_OK);
    assert_int_equal(tls_version_verdict(TLS1_1_VERSION), VERDICT_FAIL);
    assert_int_equal(tls_version_verdict(TLS1_VERSION), VERDICT_FAIL);
}

static void test_queue_id(void **state)
{
    (void)state;
    char id[64];
    assert_int_equal(queue_id_from_reply("Ok: queued as 0123456789ABCDEF", id, sizeof(id)), 0);
    assert_string_equal(id, "0123456789ABCDEF");
    assert_int_equal(queue_id_from_reply("Ok: queued as 4XyZ12.", id, sizeof(id)), 0);
    assert_string_equal(id, "4XyZ12");
    assert_int_equal(queue_id_from_reply("OK id=1rABCd-000Xyz-9Q", id, sizeof(id)), 0);
    assert_string_equal(id, "1rABCd-000Xyz-9Q");
    assert_int_equal(queue_id_from_reply("OK  1700000000 d12-20020a170902.5-gsmtp", id, sizeof(id)), 0);
    assert_string_equal(id, "d12-20020a170902.5-gsmtp");
    assert_int_equal(queue_id_from_reply("Ok", id, sizeof(id)), -1);
    assert_int_equal(queue_id_from_reply("Message accepted for delivery", id, sizeof(id)), -1);
    assert_int_equal(queue_id_from_reply("", id, sizeof(id)), -1);
    assert_int_equal(queue_id_from_reply("queued as 0123456789ABCDEF", id, 8), -1); /* does not fit */
}

static void test_connect_advice(void **state)
{
    (void)state;
    struct report r;
    report_init(&r, "h", 0);
    struct step *s = report_add_step(&r, NULL, "connect");
    advise_connect(s, SMTPC_REFUSED, 587, 10000);
    assert_int_equal(s->verdict, VERDICT_FAIL);
    assert_non_null(strstr(s->cause, "refused"));
    int ufw = 0, fwd = 0, ipt = 0;
    for (size_t i = 0; i < s->nfix; i++) {
        ufw |= strcmp(s->fix[i], "open the port on the server: ufw allow 587/tcp") == 0;
        fwd |= strstr(s->fix[i], "firewall-cmd --permanent --add-port=587/tcp") != NULL;
        ipt |= strstr(s->fix[i], "iptables -I INPUT -p tcp --dport 587 -j ACCEPT") != NULL;
    }
    assert_true(ufw && fwd && ipt);
    s = report_add_step(&r, NULL, "connect");
    advise_connect(s, SMTPC_TIMEOUT, 25, 3000);
    assert_non_null(strstr(s->cause, "3000 ms"));
    int note25 = 0;
    for (size_t i = 0; i < s->nfix; i++)
        note25 |= strstr(s->fix[i], "block outgoing port 25 but not 587") != NULL;
    assert_true(note25);
    s = report_add_step(&r, NULL, "greeting");
    advise_no_greeting(s, SMTPC_TIMEOUT, 587, 0, 2000);
    assert_non_null(strstr(s->cause, "sent no greeting within 2000 ms"));
    assert_string_equal(s->fix[0], "if this port expects TLS at once (like 465), run again with --tls");
    report_free(&r);
}

static void test_transaction_advice(void **state)
{
    (void)state;
    struct report r;
    report_init(&r, "h", 0);
    struct step *s = report_add_step(&r, NULL, "send");
    advise_transaction(s, "MAIL", 553, "5.7.1", "Sender address rejected: not owned by user");
    assert_non_null(strstr(s->cause, "send as this sender"));
    s = report_add_step(&r, NULL, "send");
    advise_transaction(s, "RCPT", 554, "5.7.1", "Relay access denied");
    assert_non_null(strstr(s->cause, "relaying denied"));
    s = report_add_step(&r, NULL, "send");
    advise_transaction(s, "MAIL", 530, "5.7.0", "Authentication required");
    assert_non_null(strstr(s->cause, "wants a login"));
    s = report_add_step(&r, NULL, "send");
    advise_transaction(s, "RCPT", 450, "4.2.0", "Greylisted");
    assert_non_null(strstr(s->cause, "temporary failure at RCPT"));
    report_free(&r);
}

static void test_target(void **state)
{
    (void)state;
    char h[64];
    int port = -1;
    assert_int_equal(check_split_target("mail.example.com", h, sizeof(h), &port), 0);
    assert_string_equal(h, "mail.example.com");
    assert_int_equal(port, 0);
    assert_int_equal(check_split_target("mail.example.com:465", h, sizeof(h), &port), 0);
    assert_string_equal(h, "mail.example.com");
    assert_int_equal(port, 465);
    assert_int_equal(check_split_target("[2001:db8::1]:587", h, sizeof(h), &port), 0);
    assert_string_equal(h, "2001:db8::1");
    assert_int_equal(port, 587);
    assert_int_equal(check_split_target("[::1]", h, sizeof(h), &port), 0);
    assert_string_equal(h, "::1");
    assert_int_equal(port, 0);
    assert_int_equal(check_split_target("::1", h, sizeof(h), &port), 0);
    assert_string_equal(h, "::1");
    assert_int_equal(port, 0);
    assert_int_equal(check_split_target("", h, sizeof(h), &port), -1);
    assert_int_equal(check_split_target(":25", h, sizeof(h), &port), -1);
    assert_int_equal(check_split_target("h:", h, sizeof(h), &port), -1);
    assert_int_equal(check_split_target("h:0", h, sizeof(h), &port), -1);
    assert_int_equal(check_split_target("h:65536", h, sizeof(h), &port), -1);
    assert_int_equal(check_split_target("h:123456", h, sizeof(h), &port), -1);
    assert_int_equal(check_split_target("h:2x", h, sizeof(h), &port), -1);
    assert_int_equal(check_split_target("[::1", h, sizeof(h), &port), -1);
    assert_int_equal(check_split_target("[::1]x", h, sizeof(h), &port), -1);
    assert_int_equal(check_split_target("a-very-long-name-that-does-not-fit.example", h, 8, &port), -1);
}

static void test_ports(void **state)
{
    (void)state;
    int p[8];
    enum check_tls_mode m[8];
    assert_int_equal(check_parse_ports("25,465,587", p, m, 8), 3);
    assert_int_equal(p[0], 25);
    assert_int_equal(p[1], 465);
    assert_int_equal(p[2], 587);
    assert_int_equal(m[0], CHECK_TLS_AUTO);
    assert_int_equal(m[2], CHECK_TLS_AUTO);
    assert_int_equal(check_parse_ports("2587/starttls,2465/tls,25", p, m, 8), 3);
    assert_int_equal(p[0], 2587);
    assert_int_equal(m[0], CHECK_TLS_STARTTLS);
    assert_int_equal(p[1], 2465);
    assert_int_equal(m[1], CHECK_TLS_IMPLICIT);
    assert_int_equal(m[2], CHECK_TLS_AUTO);
    assert_int_equal(check_parse_ports("25,25", p, m, 8), -1);
    assert_int_equal(check_parse_ports("25,25/tls", p, m, 8), -1);
    assert_int_equal(check_parse_ports("", p, m, 8), -1);
    assert_int_equal(check_parse_ports("0", p, m, 8), -1);
    assert_int_equal(check_parse_ports("65536", p, m, 8), -1);
    assert_int_equal(check_parse_ports("25,", p, m, 8), -1);
    assert_int_equal(check_parse_ports(",25", p, m, 8), -1);
    assert_int_equal(check_parse_ports("25 ,465", p, m, 8), -1);
    assert_int_equal(check_parse_ports("25/ssl", p, m, 8), -1);
    assert_int_equal(check_parse_ports("/tls", p, m, 8), -1);
    assert_int_equal(check_parse_ports("25/tlsx", p, m, 8), -1);
    assert_int_equal(check_parse_ports("1,2,3", p, m, 2), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verdicts),
        cmocka_unit_test(test_step_model),
        cmocka_unit_test(test_json_escape),
        cmocka_unit_test(test_json_writer),
        cmocka_unit_test(test_report_json),
        cmocka_unit_test(test_report_text),
        cmocka_unit_test(test_auth_classify),
        cmocka_unit_test(test_cert_time),
        cmocka_unit_test(test_key_and_version),
        cmocka_unit_test(test_queue_id),
        cmocka_unit_test(test_connect_advice),
        cmocka_unit_test(test_transaction_advice),
        cmocka_unit_test(test_target),
        cmocka_unit_test(test_ports),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
