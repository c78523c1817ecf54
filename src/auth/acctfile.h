/* acctfile: changing the accounts file on disk (accounts.h reads it). Used
 * by submitctl (user add/passwd/del/suspend/unsuspend/senders) and by the
 * daemon (abuse controls suspending an account). Every change takes an
 * exclusive flock on FILE.lock, re-reads the file, changes one line and
 * keeps every other byte, writes a temporary file in the same directory
 * (same owner and mode), checks that it loads (accounts_load), fsyncs it,
 * renames it over the file and fsyncs the directory. A running submitd
 * sees the change at its next reload; a reload reads either the old or the
 * new file, never a mix. Problems are appended to `err` as text lines
 * (no trailing newline, no program prefix). */
#ifndef SUBMITD_ACCTFILE_H
#define SUBMITD_ACCTFILE_H

#include <stddef.h>
#include <sys/stat.h>

#include "core/util.h"

/* What to change in a line: fields left NULL / -1 are kept. */
struct acct_edit {
    const char *hash;    /* new "{PREFIX}hash" */
    int suspend;         /* -1 keep, 0 remove suspended=, 1 suspended=yes */
    const char *senders; /* new sender= value */
};

/* Applies e to LOGIN's line (case-insensitive); e NULL deletes the line.
 * 0, or -1 with err set (no such login, lock/write/load failures). */
int acctfile_edit(const char *path, const char *login, const struct acct_edit *e, struct strbuf *err);
/* Appends `line` (a whole line with its newline) for a new LOGIN, creating
 * the file (0600) when missing (*created set). 0 or -1 (LOGIN exists, ...). */
int acctfile_add(const char *path, const char *login, const char *line, int *created, struct strbuf *err);

/* Reading without changing (submitctl user list and its pre-checks). */
struct acctfile {
    const char *path;
    int lockfd;
    int exists;
    struct stat st;
    char *text;
    size_t len;
};
/* Reads the file; with `lock`, first takes the exclusive lock FILE.lock.
 * A missing file is fine when `missing_ok` (it is then empty). 0 or -1. */
int acctfile_open(struct acctfile *af, const char *path, int lock, int missing_ok, struct strbuf *err);
/* The line of `login`: its offset and length including the newline. 1 found, 0 not. */
int acctfile_find(const struct acctfile *af, const char *login, size_t *off, size_t *len);
/* Wipes the text and releases the lock. */
void acctfile_close(struct acctfile *af);

#endif
