/* secret: reading passwords and tokens without putting them on the
 * command line — the first line of a file that others cannot read, or a
 * line typed at a no-echo prompt on /dev/tty (SIGINT/SIGTERM interrupt it
 * and the terminal is restored). Used by the tools (submitcheck; submitctl
 * has the same rules). Buffers are wiped on failure. */
#ifndef SUBMITD_SECRET_H
#define SUBMITD_SECRET_H

#include <stddef.h>

/* Reads one line from fd into buf (without the newline or a CR before
 * it). Returns its length, -1 on error, interruption or end of input
 * before any byte, -2 when longer than size-1 (the rest of the line is
 * read and dropped). */
long secret_read_line(int fd, char *buf, size_t size);

/* The first line of path: a regular file, not readable or writable by
 * others. 0, or -1 with a reason in err ("FILE: ..."). */
int secret_from_file(const char *path, char *out, size_t outlen, char *err, size_t errlen);

/* Shows prompt on /dev/tty and reads a line with echo off. 0, or -1 with
 * a reason in err (no terminal, interrupted, too long). */
int secret_prompt(const char *prompt, char *out, size_t outlen, char *err, size_t errlen);

#endif
