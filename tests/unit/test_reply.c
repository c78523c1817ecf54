/* Unit tests for smtp/reply.c (the reply parser and EHLO keyword lookup)
 * and smtp/client.c against a real loopback socket served by a thread:
 * multi-line replies split across reads, enhanced codes, malformed
 * replies, deadlines, refused connects, CR/LF refusal in commands and the
 * STARTTLS injection guard. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "smtp/client.h"
#include "smtp/reply.h"

static enum reply_res feed(struct reply_parser *p, const char *line, char *err)
{
    return reply_feed_line(p, line, strlen(line), err, 128);
}

static void test_single_line(void **st)
{
    (void)st;
    struct reply_parser p;
    char err[128];
    reply_parser_init(&p);
    assert_int_equal(feed(&p, "250 2.1.0 Ok", err), REPLY_OK);
    assert_int_equal(p.r.code, 250);
    assert_string_equal(p.r.enh, "2.1.0");
    assert_string_equal(p.r.text, "Ok");
    assert_int_equal(p.r.nlines, 1);
    /* bare code */
    assert_int_equal(feed(&p, "354", err), REPLY_OK);
    assert_int_equal(p.r.code, 354);
    assert_string_equal(p.r.text, "");
    assert_string_equal(p.r.enh, "");
    /* an enhanced code of another class is text */
    assert_int_equal(feed(&p, "550 4.1.1 odd", err), REPLY_OK);
    assert_string_equal(p.r.enh, "");
    assert_string_equal(p.r.text, "4.1.1 odd");
    /* numbers that are not an enhanced code */
    assert_int_equal(feed(&p, "220 2.0 mail.example ESMTP", err), REPLY_OK);
    assert_string_equal(p.r.enh, "");
    assert_string_equal(p.r.text, "2.0 mail.example ESMTP");
}

static void test_multi_line(void **st)
{
    (void)st;
    struct reply_parser p;
    char err[128];
    reply_parser_init(&p);
    assert_int_equal(feed(&p, "250-mx.example greets you", err), REPLY_NEED_MORE);
    assert_int_equal(feed(&p, "250-PIPELINING", err), REPLY_NEED_MORE);
    assert_int_equal(feed(&p, "250-SIZE 35882577", err), REPLY_NEED_MORE);
    assert_int_equal(feed(&p, "250-AUTH=PLAIN LOGIN", err), REPLY_NEED_MORE);
    assert_int_equal(feed(&p, "250 STARTTLS", err), REPLY_OK);
    assert_int_equal(p.r.nlines, 5);
    assert_string_equal(p.r.text, "mx.example greets you\nPIPELINING\nSIZE 35882577\nAUTH=PLAIN LOGIN\nSTARTTLS");
    const char *pp;
    size_t pl;
    assert_int_equal(reply_ehlo_has(&p.r, "size", &pp, &pl), 1);
    assert_int_equal(pl, 8);
    assert_memory_equal(pp, "35882577", 8);
    assert_int_equal(reply_ehlo_has(&p.r, "AUTH", &pp, &pl), 1);
    assert_int_equal(pl, 11);
    assert_memory_equal(pp, "PLAIN LOGIN", 11);
    assert_int_equal(reply_ehlo_has(&p.r, "starttls", NULL, NULL), 1);
    assert_int_equal(reply_ehlo_has(&p.r, "8BITMIME", NULL, NULL), 0);
    assert_int_equal(reply_ehlo_has(&p.r, "PIPE", NULL, NULL), 0);
    /* the greeting line is not a keyword */
    assert_int_equal(reply_ehlo_has(&p.r, "mx.example", NULL, NULL), 0);
    char sum[64];
    reply_summary(&p.r, sum, sizeof(sum));
    assert_string_equal(sum, "250 mx.example greets you PIPELINING SIZE 35882577 AUTH=PLAIN L");
}

static void test_malformed(void **st)
{
    (void)st;
    struct reply_parser p;
    char err[128];
    reply_parser_init(&p);
    assert_int_equal(feed(&p, "25", err), REPLY_ERR);
    assert_int_equal(feed(&p, "abc hello", err), REPLY_ERR);
    assert_int_equal(feed(&p, "199 too low", err), REPLY_ERR);
    assert_int_equal(feed(&p, "600 too high", err), REPLY_ERR);
    assert_int_equal(feed(&p, "250_x", err), REPLY_ERR);
    assert_int_equal(feed(&p, "250-first", err), REPLY_NEED_MORE);
    assert_int_equal(feed(&p, "251 other code", err), REPLY_ERR);
    assert_string_equal(err, "continuation line with a different reply code");
    /* after an error the parser starts afresh */
    assert_int_equal(feed(&p, "221 2.0.0 Bye", err), REPLY_OK);
    assert_int_equal(p.r.nlines, 1);
    reply_parser_init(&p);
    for (int i = 0; i < REPLY_MAX_LINES; i++)
        assert_int_equal(feed(&p, "250-x", err), REPLY_NEED_MORE);
    assert_int_equal(feed(&p, "250 x", err), REPLY_ERR);
}

static void test_text_bound(void **st)
{
    (void)st;
    struct reply_parser p;
    char err[128];
    char line[1500];
    memset(line, 'a', sizeof(line));
    memcpy(line, "250-", 4);
    line[sizeof(line) - 1] = '\0';
    reply_parser_init(&p);
    for (int i = 0; i < 20; i++)
        assert_int_equal(feed(&p, line, err), REPLY_NEED_MORE);
    assert_int_equal(feed(&p, "250 end", err), REPLY_OK);
    assert_int_equal(p.r.textlen, REPLY_MAX_TEXT);
    assert_int_equal(strlen(p.r.text), REPLY_MAX_TEXT);
    char sum[8];
    reply_summary(&p.r, sum, sizeof(sum));
    assert_string_equal(sum, "250 aaa");
}

/* ---- client against a scripted loopback server -------------------------- */

struct script {
    int lfd;
    const char *const *chunks; /* written with a short pause between */
    size_t n;
    char got[512];             /* what the client sent */
};

static void *server_main(void *arg)
{
    struct script *s = arg;
    int fd = accept(s->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    for (size_t i = 0; i < s->n; i++) {
        if (s->chunks[i][0] == '<') { /* read a client line */
            size_t o = strlen(s->got);
            while (o + 1 < sizeof(s->got)) {
                ssize_t r = read(fd, s->got + o, 1);
                if (r <= 0 || s->got[o++] == '\n')
                    break;
            }
            s->got[o] = '\0';
            continue;
        }
        if (write(fd, s->chunks[i], strlen(s->chunks[i])) < 0)
            break;
        usleep(20000);
    }
    usleep(300000);
    close(fd);
    return NULL;
}

static int listen_any(struct sockaddr_in *sa)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(l, (struct sockaddr *)sa, sizeof(*sa)), 0);
    socklen_t sl = sizeof(*sa);
    getsockname(l, (struct sockaddr *)sa, &sl);
    listen(l, 4);
    return l;
}

static void test_client_dialogue(void **st)
{
    (void)st;
    static const char *const chunks[] = {"220 mx ESMTP\r\n", "<", "250-mx\r\n250-PIPE", "LINING\r\n", "250 8BITMIME\r\n",
                                         "<", "421 4.3.2 going away\r\n"};
    struct script s = {.chunks = chunks, .n = sizeof(chunks) / sizeof(chunks[0])};
    struct sockaddr_in sa;
    s.lfd = listen_any(&sa);
    pthread_t th;
    pthread_create(&th, NULL, server_main, &s);
    enum smtpc_err e;
    char et[128];
    struct smtpc *c = smtpc_connect((struct sockaddr *)&sa, sizeof(sa), 2000, &e, et, sizeof(et));
    assert_non_null(c);
    struct smtp_reply r;
    assert_int_equal(smtpc_read_reply(c, &r), 0);
    assert_int_equal(r.code, 220);
    assert_int_equal(smtpc_exchange(c, &r, "EHLO %s", "client.test"), 0);
    assert_int_equal(r.code, 250);
    assert_int_equal(r.nlines, 3);
    assert_int_equal(reply_ehlo_has(&r, "PIPELINING", NULL, NULL), 1);
    assert_int_equal(smtpc_cmd(c, "MAIL FROM:<a@b>\r\nRSET"), -1); /* CR/LF refused */
    assert_int_equal(c->err, SMTPC_PROTOCOL);
    assert_int_equal(smtpc_exchange(c, &r, "MAIL FROM:<%s>", "a@b.test"), 0);
    assert_int_equal(r.code, 421);
    assert_string_equal(r.enh, "4.3.2");
    /* the server closes after its script */
    assert_int_equal(smtpc_read_reply(c, &r), -1);
    assert_int_equal(c->err, SMTPC_CLOSED);
    smtpc_close(c);
    pthread_join(th, NULL);
    close(s.lfd);
    assert_string_equal(s.got, "EHLO client.test\r\nMAIL FROM:<a@b.test>\r\n");
}

static void test_client_timeout_and_injection(void **st)
{
    (void)st;
    /* the greeting, then two replies in one write before any TLS */
    static const char *const chunks[] = {"220 mx\r\n", "<", "220 go ahead\r\n250 injected\r\n"};
    struct script s = {.chunks = chunks, .n = 3};
    struct sockaddr_in sa;
    s.lfd = listen_any(&sa);
    pthread_t th;
    pthread_create(&th, NULL, server_main, &s);
    enum smtpc_err e;
    struct smtpc *c = smtpc_connect((struct sockaddr *)&sa, sizeof(sa), 150, &e, NULL, 0);
    assert_non_null(c);
    struct smtp_reply r;
    assert_int_equal(smtpc_read_reply(c, &r), 0);
    /* nothing more comes until we send: a deadline, not a hang */
    assert_int_equal(smtpc_read_reply(c, &r), -1);
    assert_int_equal(c->err, SMTPC_TIMEOUT);
    c->timeout_ms = 2000;
    assert_int_equal(smtpc_exchange(c, &r, "STARTTLS"), 0);
    assert_int_equal(r.code, 220);
    usleep(50000);
    assert_true(smtpc_pending(c) > 0);
    assert_int_equal(smtpc_starttls(c, NULL, "mx"), -1);
    assert_int_equal(c->err, SMTPC_PROTOCOL);
    smtpc_close(c);
    pthread_join(th, NULL);
    close(s.lfd);
}

static void test_client_refused(void **st)
{
    (void)st;
    struct sockaddr_in sa;
    int l = listen_any(&sa);
    close(l); /* nothing listens there now */
    enum smtpc_err e = SMTPC_OK;
    char et[128];
    assert_null(smtpc_connect((struct sockaddr *)&sa, sizeof(sa), 1000, &e, et, sizeof(et)));
    assert_int_equal(e, SMTPC_REFUSED);
    assert_string_equal(smtpc_err_name(e), "refused");
    assert_non_null(strstr(et, "refused"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single_line),
        cmocka_unit_test(test_multi_line),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_text_bound),
        cmocka_unit_test(test_client_dialogue),
        cmocka_unit_test(test_client_timeout_and_injection),
        cmocka_unit_test(test_client_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
