/* Unit tests for dsn.c: a failure report and a delay warning compared byte
 * for byte (RFC 3464 fields, multipart/report structure, returned content),
 * Status codes from replies, what is returned for RET/BODY/size, NOTIFY,
 * the header-section length, cleaning of hostile values and the SMTPUTF8
 * (RFC 6533) types. Dates are in UTC (TZ set in main). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/util.h"
#include "queue/dsn.h"
#include "smtp/parse.h"

#define B "=_submitd_06H0KAD8JGG7GFXQ"
/* The text every report of base_info() starts with, up to the human part's first line. */
#define TOP(subject)                                                                                               \
    "From: Mail Delivery System <MAILER-DAEMON@mx.test>\r\n"                                                        \
    "To: <alice@example.test>\r\n"                                                                                 \
    "Subject: " subject "\r\n"                                                                                     \
    "Date: Tue, 14 Nov 2023 22:23:20 +0000\r\n"                                                                    \
    "Message-ID: <06H0KAD8JGG7GFXQ.dsn@mx.test>\r\n"                                                               \
    "Auto-Submitted: auto-replied\r\n"                                                                             \
    "MIME-Version: 1.0\r\n"                                                                                        \
    "Content-Type: multipart/report; report-type=delivery-status;\r\n"                                             \
    "\tboundary=\"" B "\"\r\n"                                                                                    \
    "\r\n"                                                                                                        \
    "This is a MIME-encapsulated delivery status notification.\r\n"                                                \
    "\r\n--" B "\r\n"                                                                                             \
    "Content-Description: Notification\r\n"                                                                        \
    "Content-Type: text/plain; charset=us-ascii\r\n"                                                               \
    "\r\n"                                                                                                        \
    "This is the mail system at mx.test.\r\n"
/* The start of the delivery-status part. */
#define REPORT_TOP                                                                                                 \
    "\r\n--" B "\r\n"                                                                                             \
    "Content-Description: Delivery report\r\n"                                                                     \
    "Content-Type: message/delivery-status\r\n"                                                                    \
    "\r\n"                                                                                                        \
    "Reporting-MTA: dns; mx.test\r\n"                                                                              \
    "X-Submitd-Queue-ID: 06H0KAD8JGG7GFXP\r\n"

static char *build(const struct dsn_info *d, const struct dsn_rcpt *r, size_t n, const char *content)
{
    struct strbuf b;
    sb_init(&b);
    dsn_head(d, r, n, &b);
    sb_puts(&b, content);
    dsn_tail(d, &b);
    return sb_steal(&b);
}

static void assert_text(const char *got, const char *want)
{
    if (strcmp(got, want) != 0) {
        size_t i = 0;
        while (got[i] && got[i] == want[i])
            i++;
        fprintf(stderr, "differs at offset %zu:\n got: %.120s\nwant: %.120s\n", i, got + i, want + i);
    }
    assert_string_equal(got, want);
}

static struct dsn_info base_info(enum dsn_action a, enum dsn_content c)
{
    return (struct dsn_info){.action = a, .hostname = "mx.test", .dsn_id = "06H0KAD8JGG7GFXQ",
                             .orig_id = "06H0KAD8JGG7GFXP", .sender = "alice@example.test", .arrival = 1700000000,
                             .now = 1700000600, .content = c};
}

static void test_failure_full(void **state)
{
    (void)state;
    struct dsn_info d = base_info(DSN_ACTION_FAILED, DSN_CONTENT_FULL);
    d.envid = "env-42";
    struct dsn_rcpt r = {.addr = "bob@dest.test", .orcpt = "rfc822;Bob@Dest.test",
                         .reply = "550 5.1.1 <bob@dest.test>: no such user", .remote_mta = "mx.dest.test",
                         .last_attempt = 1700000590, .perm = 1};
    char *got = build(&d, &r, 1, "Subject: hi\r\n\r\nbody\r\n");
    assert_text(got,
                TOP("Undelivered Mail Returned to Sender")
                "\r\n"
                "Your message could not be delivered to the recipients below.\r\n"
                "Your message is attached below.\r\n"
                "\r\n"
                "<bob@dest.test>: host mx.dest.test said: 550 5.1.1 <bob@dest.test>: no such user\r\n"
                REPORT_TOP
                "Original-Envelope-Id: env-42\r\n"
                "Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
                "\r\n"
                "Original-Recipient: rfc822;Bob@Dest.test\r\n"
                "Final-Recipient: rfc822; bob@dest.test\r\n"
                "Action: failed\r\n"
                "Status: 5.1.1\r\n"
                "Remote-MTA: dns; mx.dest.test\r\n"
                "Diagnostic-Code: smtp; 550 5.1.1 <bob@dest.test>: no such user\r\n"
                "Last-Attempt-Date: Tue, 14 Nov 2023 22:23:10 +0000\r\n"
                "\r\n--" B "\r\n"
                "Content-Description: Undelivered message\r\n"
                "Content-Type: message/rfc822\r\n"
                "\r\n"
                "Subject: hi\r\n\r\nbody\r\n"
                "\r\n--" B "--\r\n");
    free(got);
}

static void test_delay_headers(void **state)
{
    (void)state;
    struct dsn_info d = base_info(DSN_ACTION_DELAYED, DSN_CONTENT_HEADERS);
    d.retry_until = 1700432000;
    struct dsn_rcpt r[2] = {
        {.addr = "carol@x.test", .reply = "451 4.2.0 mailbox busy", .last_attempt = 1700000590},
        {.addr = "dave@y.test"},
    };
    char *got = build(&d, r, 2, "Subject: hi\r\nFrom: a\r\n\r\n");
    assert_text(got,
                TOP("Delayed Mail (still being retried)")
                "\r\n"
                "THIS IS A WARNING ONLY. YOU DO NOT NEED TO SEND YOUR MESSAGE AGAIN.\r\n"
                "\r\n"
                "Your message could not be delivered yet to the recipients below.\r\n"
                "The mail system will keep trying until Sun, 19 Nov 2023 22:13:20 +0000.\r\n"
                "The header section of your message is attached below.\r\n"
                "\r\n"
                "<carol@x.test>: 451 4.2.0 mailbox busy\r\n"
                "<dave@y.test>: (no reply)\r\n"
                REPORT_TOP
                "Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
                "\r\n"
                "Final-Recipient: rfc822; carol@x.test\r\n"
                "Action: delayed\r\n"
                "Status: 4.2.0\r\n"
                "Diagnostic-Code: smtp; 451 4.2.0 mailbox busy\r\n"
                "Last-Attempt-Date: Tue, 14 Nov 2023 22:23:10 +0000\r\n"
                "Will-Retry-Until: Sun, 19 Nov 2023 22:13:20 +0000\r\n"
                "\r\n"
                "Final-Recipient: rfc822; dave@y.test\r\n"
                "Action: delayed\r\n"
                "Status: 4.0.0\r\n"
                "Will-Retry-Until: Sun, 19 Nov 2023 22:13:20 +0000\r\n"
                "\r\n--" B "\r\n"
                "Content-Description: Delayed message headers\r\n"
                "Content-Type: text/rfc822-headers\r\n"
                "\r\n"
                "Subject: hi\r\nFrom: a\r\n\r\n"
                "\r\n--" B "--\r\n");
    free(got);
}

/* Lifetime expiry: the human part says so, Status is the last code. */
static void test_expired_and_8bit_content(void **state)
{
    (void)state;
    struct dsn_info d = base_info(DSN_ACTION_FAILED, DSN_CONTENT_FULL);
    d.content_8bit = 1;
    struct dsn_rcpt r = {.addr = "bob@dest.test", .reply = "451 4.4.1 connection timed out", .perm = 0};
    char *got = build(&d, &r, 1, "S: \xc3\xa9\r\n\r\n");
    assert_non_null(strstr(got, "\r\n<bob@dest.test>: gave up after the queue lifetime; the last attempt said: "
                                "451 4.4.1 connection timed out\r\n"));
    assert_non_null(strstr(got, "\r\nAction: failed\r\nStatus: 4.4.1\r\n"
                                "Diagnostic-Code: smtp; 451 4.4.1 connection timed out\r\n\r\n--"));
    assert_non_null(strstr(got, "Content-Description: Undelivered message\r\nContent-Type: message/rfc822\r\n"
                                "Content-Transfer-Encoding: 8bit\r\n\r\nS: \xc3\xa9\r\n\r\n\r\n--" B "--\r\n"));
    assert_null(strstr(got, "Remote-MTA"));
    assert_null(strstr(got, "Last-Attempt-Date"));
    assert_null(strstr(got, "Original-Envelope-Id"));
    free(got);
}

static void check_status(const char *reply, int perm, enum dsn_action a, const char *want)
{
    struct dsn_rcpt r = {.addr = "x@y", .reply = reply, .perm = perm};
    char out[16];
    dsn_status(&r, a, out, sizeof(out));
    assert_string_equal(out, want);
}

static void test_status(void **state)
{
    (void)state;
    check_status("550 5.1.1 no such user", 1, DSN_ACTION_FAILED, "5.1.1");
    check_status("550-5.7.1 policy", 1, DSN_ACTION_FAILED, "5.7.1");
    check_status("550 no enhanced code", 1, DSN_ACTION_FAILED, "5.0.0");
    check_status("550 5.1 short", 1, DSN_ACTION_FAILED, "5.0.0");
    check_status("550 5.1.1234 long", 1, DSN_ACTION_FAILED, "5.0.0");
    check_status("550 5.1.1x", 1, DSN_ACTION_FAILED, "5.0.0");
    check_status("451 4.3.0 a temporary code", 1, DSN_ACTION_FAILED, "5.0.0");
    check_status(NULL, 1, DSN_ACTION_FAILED, "5.0.0");
    check_status("554 5.7.1 refused at the end", 0, DSN_ACTION_FAILED, "5.7.1");
    check_status("451 4.4.1 timeout", 0, DSN_ACTION_FAILED, "4.4.1");
    check_status("451 timeout", 0, DSN_ACTION_FAILED, "4.4.7");
    check_status(NULL, 0, DSN_ACTION_FAILED, "4.4.7");
    check_status("connection refused", 0, DSN_ACTION_FAILED, "4.4.7");
    check_status("421 4.7.0 try later", 0, DSN_ACTION_DELAYED, "4.7.0");
    check_status("550 5.1.1 no", 0, DSN_ACTION_DELAYED, "4.0.0");
    check_status("250 2.0.0 ok", 0, DSN_ACTION_DELAYED, "4.0.0");
    check_status("451 4.123.456 big", 0, DSN_ACTION_DELAYED, "4.123.456");
}

static void test_choose_and_requested(void **state)
{
    (void)state;
    assert_int_equal(dsn_choose(DSN_RET_UNSPEC, BODY_UNSPEC, 1000, 1000), DSN_CONTENT_FULL);
    assert_int_equal(dsn_choose(DSN_RET_UNSPEC, BODY_8BITMIME, 1001, 1000), DSN_CONTENT_HEADERS);
    assert_int_equal(dsn_choose(DSN_RET_FULL, BODY_7BIT, 50000000, 1000), DSN_CONTENT_FULL);
    assert_int_equal(dsn_choose(DSN_RET_HDRS, BODY_7BIT, 10, 1000), DSN_CONTENT_HEADERS);
    assert_int_equal(dsn_choose(DSN_RET_FULL, BODY_BINARYMIME, 10, 1000), DSN_CONTENT_HEADERS);
    assert_int_equal(dsn_choose(DSN_RET_UNSPEC, BODY_UNSPEC, 10, 0), DSN_CONTENT_HEADERS);

    assert_int_equal(dsn_requested(0, DSN_ACTION_FAILED), 1);
    assert_int_equal(dsn_requested(0, DSN_ACTION_DELAYED), 1);
    assert_int_equal(dsn_requested(DSN_NOTIFY_NEVER, DSN_ACTION_FAILED), 0);
    assert_int_equal(dsn_requested(DSN_NOTIFY_NEVER, DSN_ACTION_DELAYED), 0);
    assert_int_equal(dsn_requested(DSN_NOTIFY_SUCCESS, DSN_ACTION_FAILED), 0);
    assert_int_equal(dsn_requested(DSN_NOTIFY_SUCCESS | DSN_NOTIFY_DELAY, DSN_ACTION_FAILED), 0);
    assert_int_equal(dsn_requested(DSN_NOTIFY_SUCCESS | DSN_NOTIFY_DELAY, DSN_ACTION_DELAYED), 1);
    assert_int_equal(dsn_requested(DSN_NOTIFY_FAILURE, DSN_ACTION_FAILED), 1);
    assert_int_equal(dsn_requested(DSN_NOTIFY_FAILURE, DSN_ACTION_DELAYED), 0);
}

static void test_header_len(void **state)
{
    (void)state;
    const char *m1 = "A: b\r\n\r\nbody\r\n";
    assert_int_equal(dsn_header_len(m1, strlen(m1)), 8);
    const char *m2 = "\r\nbody only\r\n";
    assert_int_equal(dsn_header_len(m2, strlen(m2)), 2);
    const char *m3 = "A: b\r\nB: c\r\n";
    assert_int_equal(dsn_header_len(m3, strlen(m3)), 12);
    const char *m4 = "A: b\r\nB: c";
    assert_int_equal(dsn_header_len(m4, strlen(m4)), 6);
    assert_int_equal(dsn_header_len("", 0), 0);
    assert_int_equal(dsn_header_len("A: b\n\nbody", 10), 0);
    /* the limit is the buffer, not a NUL */
    assert_int_equal(dsn_header_len("A: b\r\n\r\n", 7), 6);
}

/* Values from envelopes and remote servers cannot break the structure. */
static void test_hostile_values(void **state)
{
    (void)state;
    struct dsn_info d = base_info(DSN_ACTION_FAILED, DSN_CONTENT_HEADERS);
    d.sender = "eve\r\nBcc: x@y@example.test";
    d.envid = "a b\r\n+c\x01";
    struct dsn_rcpt r = {.addr = "bob@dest.test", .orcpt = "rfc822;bob\r\nX-Evil: 1",
                         .reply = "550 5.1.1 bad\r\nX-Injected: yes\t\xff", .remote_mta = "mx\n.test", .perm = 1};
    char *got = build(&d, &r, 1, "");
    assert_non_null(strstr(got, "\r\nTo: <eve??Bcc: x@y@example.test>\r\n"));
    assert_non_null(strstr(got, "\r\nOriginal-Envelope-Id: a b+0D+0A+c+01\r\n"));
    assert_non_null(strstr(got, "\r\nOriginal-Recipient: rfc822;bob+0D+0AX-Evil: 1\r\n"));
    assert_non_null(strstr(got, "\r\nDiagnostic-Code: smtp; 550 5.1.1 bad??X-Injected: yes ?\r\n"));
    assert_non_null(strstr(got, "\r\nRemote-MTA: dns; mx?.test\r\n"));
    assert_null(strstr(got, "\r\nX-Evil"));
    assert_null(strstr(got, "\r\nX-Injected"));
    assert_null(strstr(got, "\r\nBcc"));
    /* every line ends in CRLF: no bare CR or LF anywhere */
    for (const char *p = got; *p; p++) {
        if (*p == '\r')
            assert_int_equal(p[1], '\n');
        if (*p == '\n')
            assert_true(p > got && p[-1] == '\r');
    }
    free(got);
}

static void test_smtputf8(void **state)
{
    (void)state;
    struct dsn_info d = base_info(DSN_ACTION_FAILED, DSN_CONTENT_FULL);
    d.utf8 = 1;
    d.sender = "j\xc3\xb8rn@example.test";
    struct dsn_rcpt r = {.addr = "b\xc3\xb8@dest.test", .reply = "550 5.1.1 nope", .perm = 1};
    char *got = build(&d, &r, 1, "S: x\r\n\r\n");
    assert_non_null(strstr(got, "\r\nTo: <j\xc3\xb8rn@example.test>\r\n"));
    assert_non_null(strstr(got, "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"));
    assert_non_null(strstr(got, "Content-Type: message/global-delivery-status\r\n"
                                "Content-Transfer-Encoding: 8bit\r\n"));
    assert_non_null(strstr(got, "\r\nFinal-Recipient: utf-8; b\xc3\xb8@dest.test\r\n"));
    assert_non_null(strstr(got, "Content-Type: message/global\r\n\r\nS: x\r\n"));
    free(got);
    d.content = DSN_CONTENT_HEADERS;
    r.addr = "bob@dest.test";
    got = build(&d, &r, 1, "S: x\r\n\r\n");
    assert_non_null(strstr(got, "\r\nFinal-Recipient: rfc822; bob@dest.test\r\n"));
    assert_non_null(strstr(got, "Content-Type: message/global-headers\r\n\r\nS: x\r\n"));
    free(got);
}

int main(void)
{
    setenv("TZ", "UTC", 1);
    tzset();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failure_full),
        cmocka_unit_test(test_delay_headers),
        cmocka_unit_test(test_expired_and_8bit_content),
        cmocka_unit_test(test_status),
        cmocka_unit_test(test_choose_and_requested),
        cmocka_unit_test(test_header_len),
        cmocka_unit_test(test_hostile_values),
        cmocka_unit_test(test_smtputf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
