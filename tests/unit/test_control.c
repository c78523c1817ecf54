/* Unit tests for the control socket: a request/answer round trip through
 * registered verbs (dot-stuffing both ways, error reasons), unknown verbs
 * and malformed requests, the 1000-octet request bound (checked by the
 * server on a raw connection), stale and busy sockets, a path longer than
 * sun_path, removal at free, and (as root) a peer with another uid being
 * refused by SO_PEERCRED. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "control/control.h"
#include "core/log.h"
#include "core/util.h"
#include "tmpdir.h"

/* echo: the words after the verb, one per line. */
static int echo_fn(void *arg, int argc, char **argv, struct strbuf *out)
{
    int *calls = arg;
    (*calls)++;
    for (int i = 1; i < argc; i++)
        sb_printf(out, "%s\n", argv[i]);
    return 0;
}

static int fail_fn(void *arg, int argc, char **argv, struct strbuf *out)
{
    (void)arg;
    (void)argc;
    (void)argv;
    sb_puts(out, "it broke\n.detail line\nlast");
    return -1;
}

static struct control *start(const char *path, int *calls)
{
    struct errlist errs;
    errlist_init(&errs);
    struct control *c = control_new(path, geteuid(), getegid(), &errs);
    assert_non_null(c);
    assert_int_equal(errs.n, 0);
    errlist_free(&errs);
    control_register(c, "echo", echo_fn, calls);
    control_register(c, "fail", fail_fn, NULL);
    assert_int_equal(control_start(c), 0);
    return c;
}

static int ask(const char *path, const char *req, char **text)
{
    struct strbuf out;
    sb_init(&out);
    int rc = control_request(path, req, &out, 5000);
    *text = sb_steal(&out);
    return rc;
}

/* Sends raw bytes and returns everything the server answers. */
static char *raw(const char *path, const char *data, size_t n)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    str_copy(sa.sun_path, path, sizeof(sa.sun_path));
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(write_all(fd, data, n), 0);
    shutdown(fd, SHUT_WR);
    struct strbuf b;
    sb_init(&b);
    char buf[4096];
    ssize_t r;
    while ((r = read(fd, buf, sizeof(buf))) > 0)
        sb_append(&b, buf, (size_t)r);
    close(fd);
    return sb_steal(&b);
}

static void test_round_trip(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_control");
    char path[256];
    snprintf(path, sizeof(path), "%s/control.sock", dir);
    int calls = 0;
    struct control *c = start(path, &calls);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0660);

    char *t;
    assert_int_equal(ask(path, "echo a .b ..c", &t), 0);
    assert_string_equal(t, "a\n.b\n..c\n");
    free(t);
    assert_int_equal(calls, 1);
    /* on the wire: status line, stuffed data, "." */
    char *w = raw(path, "echo .x y\r\n", 11);
    assert_string_equal(w, "ok\n..x\ny\n.\n");
    free(w);

    assert_int_equal(ask(path, "fail now", &t), -1);
    assert_string_equal(t, "it broke\n.detail line\nlast\n");
    free(t);
    w = raw(path, "fail\n", 5);
    assert_string_equal(w, "error: it broke\n..detail line\nlast\n.\n");
    free(w);

    assert_int_equal(ask(path, "nope x", &t), -1);
    assert_string_equal(t, "unknown command; known: echo fail\n");
    free(t);
    assert_int_equal(ask(path, "echo  double", &t), -1);
    assert_string_equal(t, "bad request: words of printable characters separated by single spaces\n");
    free(t);
    assert_int_equal(ask(path, "echo tab\tinside", &t), -1);
    assert_string_equal(t, "bad request: words of printable characters separated by single spaces\n");
    free(t);
    assert_int_equal(ask(path, "echo trailing ", &t), -1);
    free(t);
    assert_int_equal(calls, 2); /* the two echo requests above */

    /* 1000 octets is the most a request may have */
    char big[1200];
    memset(big, 'x', sizeof(big));
    memcpy(big, "echo ", 5);
    big[1000] = '\0';
    assert_int_equal(ask(path, big, &t), 0);
    assert_int_equal(strlen(t), 996);
    free(t);
    big[1000] = 'x';
    big[1001] = '\0';
    assert_int_equal(ask(path, big, &t), -1); /* refused by the client already */
    assert_string_equal(t, "bad request (one line of at most 1000 octets)");
    free(t);
    big[1001] = '\n';
    w = raw(path, big, 1002); /* the server refuses it too */
    assert_string_equal(w, "error: request too long (at most 1000 octets)\n.\n");
    free(w);
    w = raw(path, "echo no newline", 15); /* closed before the line ended */
    assert_string_equal(w, "error: no request\n.\n");
    free(w);
    assert_int_equal(calls, 3);

    /* a second daemon on the same socket is refused */
    struct errlist errs;
    errlist_init(&errs);
    assert_null(control_new(path, geteuid(), getegid(), &errs));
    assert_int_equal(errs.n, 1);
    assert_non_null(strstr(errs.v[0], "control socket: in use"));
    errlist_free(&errs);

    control_free(c);
    assert_int_equal(stat(path, &st), -1);
    assert_int_equal(errno, ENOENT);
    assert_int_equal(ask(path, "echo x", &t), -1);
    assert_non_null(strstr(t, "cannot connect to"));
    free(t);
    rm_rf(dir);
    free(dir);
}

static void test_stale_long_and_not_socket(void **state)
{
    (void)state;
    char *dir = make_tmpdir("test_control");
    char path[700];
    /* a stale socket (nobody listening) is replaced */
    snprintf(path, sizeof(path), "%s/stale.sock", dir);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    str_copy(sa.sun_path, path, sizeof(sa.sun_path));
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
    int calls = 0;
    struct control *c = start(path, &calls);
    char *t;
    assert_int_equal(ask(path, "echo ok", &t), 0);
    assert_string_equal(t, "ok\n");
    free(t);
    control_free(c);

    /* a regular file is never removed */
    snprintf(path, sizeof(path), "%s/file", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
    struct errlist errs;
    errlist_init(&errs);
    assert_null(control_new(path, geteuid(), getegid(), &errs));
    assert_int_equal(errs.n, 1);
    char want[800];
    snprintf(want, sizeof(want), "%s: control socket: the path exists and is not a socket; not removed", path);
    assert_string_equal(errs.v[0], want);
    errlist_free(&errs);

    /* longer than sun_path (108): reached through the directory */
    char deep[512];
    snprintf(deep, sizeof(deep), "%s/%0120d", dir, 7);
    assert_int_equal(mkdir(deep, 0700), 0);
    snprintf(path, sizeof(path), "%s/control.sock", deep);
    assert_true(strlen(path) > 108);
    c = start(path, &calls);
    assert_int_equal(ask(path, "echo long path", &t), 0);
    assert_string_equal(t, "long\npath\n");
    free(t);
    control_free(c);
    struct stat st;
    assert_int_equal(stat(path, &st), -1);
    rm_rf(dir);
    free(dir);
}

/* As root: a peer with another uid reaches the socket (mode opened up for
 * the test) and is refused by SO_PEERCRED; the verb never runs. */
static void test_peer_refused(void **state)
{
    (void)state;
    if (geteuid() != 0) {
        skip();
        return;
    }
    char *dir = make_tmpdir("test_control");
    assert_int_equal(chmod(dir, 0755), 0);
    char path[256];
    snprintf(path, sizeof(path), "%s/control.sock", dir);
    int calls = 0;
    struct control *c = start(path, &calls);
    assert_int_equal(chmod(path, 0666), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (setgid(65534) != 0 || setuid(65534) != 0)
            _exit(3);
        struct strbuf out;
        sb_init(&out);
        int rc = control_request(path, "echo secret", &out, 5000);
        int good = rc == -1 && out.s &&
                   strcmp(out.s, "permission denied: only root or the submitd user may use the control socket\n") == 0;
        _exit(good ? 0 : 1);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(calls, 0);
    control_free(c);
    rm_rf(dir);
    free(dir);
}

int main(void)
{
    log_init("test_control", 0, LOG_LVL_ERR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_stale_long_and_not_socket),
        cmocka_unit_test(test_peer_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
