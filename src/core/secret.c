/* secret: password and token input for the tools (see secret.h): the
 * line reader, the permission-checked file reader and the no-echo
 * /dev/tty prompt. */
#include "core/secret.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "core/util.h"

long secret_read_line(int fd, char *buf, size_t size)
{
    size_t n = 0;
    int too_long = 0;
    for (;;) {
        char c;
        ssize_t r = read(fd, &c, 1);
        if (r < 0)
            return -1;
        if (r == 0) {
            if (n == 0 && !too_long)
                return -1;
            break;
        }
        if (c == '\n')
            break;
        if (n + 1 < size)
            buf[n++] = c;
        else
            too_long = 1;
    }
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    buf[n] = '\0';
    if (too_long) {
        mem_wipe(buf, size);
        return -2;
    }
    return (long)n;
}

int secret_from_file(const char *path, char *out, size_t outlen, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    if (st.st_mode & (S_IROTH | S_IWOTH)) {
        snprintf(err, errlen, "%s: readable by others; chmod 600 it (and consider the secret exposed)", path);
        close(fd);
        return -1;
    }
    long n = secret_read_line(fd, out, outlen);
    close(fd);
    if (n == -2) {
        snprintf(err, errlen, "%s: first line longer than %zu bytes", path, outlen - 1);
        return -1;
    }
    if (n < 0) {
        snprintf(err, errlen, "%s: empty or unreadable", path);
        mem_wipe(out, outlen);
        return -1;
    }
    return 0;
}

static void on_prompt_signal(int sig)
{
    (void)sig; /* only makes read() return EINTR */
}

int secret_prompt(const char *prompt, char *out, size_t outlen, char *err, size_t errlen)
{
    int fd = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "no terminal to ask on (%s)", strerror(errno));
        return -1;
    }
    struct termios old, quiet;
    if (tcgetattr(fd, &old) != 0) {
        snprintf(err, errlen, "/dev/tty: %s", strerror(errno));
        close(fd);
        return -1;
    }
    struct sigaction sa, o_int, o_term, o_hup, o_quit, o_tstp;
    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_prompt_signal; /* no SA_RESTART: read() is interrupted */
    sigaction(SIGINT, &sa, &o_int);
    sigaction(SIGTERM, &sa, &o_term);
    sigaction(SIGHUP, &sa, &o_hup);
    sigaction(SIGQUIT, &sa, &o_quit);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGTSTP, &sa, &o_tstp);
    quiet = old;
    quiet.c_lflag &= (tcflag_t) ~(ECHO | ECHOE | ECHOK);
    quiet.c_lflag |= ECHONL;
    int rc = -1;
    if (tcsetattr(fd, TCSAFLUSH, &quiet) != 0) {
        snprintf(err, errlen, "cannot turn off echo on /dev/tty: %s", strerror(errno));
    } else {
        long n = -1;
        if (write_all(fd, prompt, strlen(prompt)) == 0)
            n = secret_read_line(fd, out, outlen);
        tcsetattr(fd, TCSAFLUSH, &old);
        if (n == -2)
            snprintf(err, errlen, "longer than %zu bytes", outlen - 1);
        else if (n < 0)
            snprintf(err, errlen, "nothing read");
        else
            rc = 0;
    }
    sigaction(SIGINT, &o_int, NULL);
    sigaction(SIGTERM, &o_term, NULL);
    sigaction(SIGHUP, &o_hup, NULL);
    sigaction(SIGQUIT, &o_quit, NULL);
    sigaction(SIGTSTP, &o_tstp, NULL);
    close(fd);
    if (rc != 0)
        mem_wipe(out, outlen);
    return rc;
}
