/* spool: the durable on-disk queue (format: docs/spool-format.md, v1).
 *
 * Layout under the spool directory (mode 0700):
 *   tmp/ID      a message being received (never delivered; removed at start)
 *   tmp/free.*  files of removed messages kept for reuse (no message in them)
 *   queue/ID    a committed message: message bytes, then the envelope
 *               trailer, then a fixed footer pointing at the trailer
 *   queue/ID.st the per-recipient delivery log (append only, fsynced)
 *   corrupt/    files that failed to decode are moved here, never deleted
 *
 *   journal/    segments holding small committed messages (journal.h)
 *
 * Commit = fsync(file) + rename(tmp/ID -> queue/ID) + fsync(queue/), or
 * for a small message one journal record made durable by a shared
 * fdatasync. Only after spool_commit() returns 0 may the server answer 250.
 *
 * The envelope codec (spool_env_encode/decode) is pure and unit-tested.
 * Writers and readers are used from one thread at a time each; commit,
 * scan and status calls block (fsync) and run on job/queue threads. */
#ifndef SUBMITD_SPOOL_H
#define SUBMITD_SPOOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "core/util.h"

struct env_rcpt {
    char *addr;       /* "" never; the RCPT TO path */
    unsigned notify;  /* dsn_notify bits (parse.h); 0 = not given */
    char *orcpt;      /* "rfc822;addr" or NULL */
};

struct envelope {
    char id[QID_LEN + 1];
    char *mail_from;     /* "" = null sender */
    char *auth_user;     /* NULL when not authenticated */
    char *client_ip;
    char *helo;
    char *listener;
    int body;            /* enum body_type */
    int smtputf8;
    int dsn_ret;         /* enum dsn_ret */
    char *envid;         /* NULL when absent */
    struct env_rcpt *rcpts;
    size_t nrcpts;
    int64_t received;    /* unix time the message was accepted */
    uint64_t size;       /* message bytes in the file (before the trailer) */
    /* Header lines, CRLF-terminated, that delivery emits before the stored
     * message bytes: Received:, and Message-ID:/Date: when they were
     * missing; later DKIM-Signature:. NULL or "" when none. */
    char *prepend;
};

void envelope_init(struct envelope *e);
void envelope_free(struct envelope *e);
/* A deep copy of src into dst (uninitialised). */
void envelope_copy(struct envelope *dst, const struct envelope *src);
void envelope_add_rcpt(struct envelope *e, const char *addr, unsigned notify, const char *orcpt);

/* Pure codec for the trailer text. decode returns 0 or -1 with a reason. */
void spool_env_encode(const struct envelope *e, struct strbuf *out);
int spool_env_decode(const char *buf, size_t len, struct envelope *e, char *err, size_t errlen);

struct spool;
/* Creates the directories when missing (0700), checks they are usable,
 * removes leftovers in tmp/. NULL with errs filled on failure. */
struct spool *spool_open(const char *dir, struct errlist *errs);
/* The same with the journal's segment limit (8 MiB each; 0 = the
 * default, 16): the disk it may preallocate. Existing segments beyond it
 * are kept and read; only new ones are not created. */
struct spool *spool_open_opts(const char *dir, size_t journal_segments, struct errlist *errs);
void spool_close(struct spool *s);
const char *spool_dir(const struct spool *s);

/* Small messages (message, trailer and footer up to 256 KiB) are committed
 * into the journal (journal/, see docs/spool-format.md) instead of a file
 * of their own; on by default. Off: every message gets a queue file (for
 * tests of the file path). */
void spool_use_journal(struct spool *s, int on);

/* ---- writing (one per transaction) ---- */
struct spool_writer;
/* Starts a message: held in memory while it may go to the journal, else
 * (or once it grows past that) in tmp/ID, opened with O_CREAT|O_EXCL,
 * 0600, or in a recycled file of a removed message. NULL on error (errno
 * set). */
struct spool_writer *spool_writer_new(struct spool *s, const char *id);
/* Appends message bytes (buffered). A failure is sticky: later writes are
 * ignored and spool_writer_failed() returns the errno. */
void spool_writer_write(struct spool_writer *w, const void *buf, size_t n);
int spool_writer_failed(const struct spool_writer *w);
uint64_t spool_writer_size(const struct spool_writer *w);
/* Writes the trailer and footer, then appends the whole to the journal,
 * or fsyncs the file, renames it into queue/ and fsyncs the directory.
 * Blocking: call from a job thread. 0 on success; -1 (errno)
 * and the tmp file removed on failure. The writer is freed either way. */
int spool_commit(struct spool_writer *w, const struct envelope *e);
/* spool_commit without blocking, for a message that can go to the
 * journal: 0 when started, and then cb(arg, rc, err) runs once on a
 * journal thread (keep it short: hand the result to the caller's loop).
 * rc 0: durable, w freed; -1: failed with errno err, w freed; 1: the
 * journal had no room, w is untouched and still the caller's: commit it
 * with spool_commit from a job thread. Returns 1 at once, without cb,
 * when the message must take the blocking path (it is in a file, too
 * big for a record, or the journal is off or cannot take it). e must
 * stay unchanged until cb. */
int spool_commit_async(struct spool_writer *w, const struct envelope *e, void (*cb)(void *arg, int rc, int err),
                       void *arg);
/* Waits until the cb of every spool_commit_async has returned (shutdown:
 * before the loops' completions are flushed). */
void spool_drain(struct spool *s);
/* Drops an unfinished message: closes and unlinks tmp/ID, frees w. */
void spool_writer_abort(struct spool_writer *w);

/* ---- reading (queue side) ---- */
enum rcpt_state { RCPT_PENDING = 0, RCPT_DONE, RCPT_FAILED };

/* spool_msg.reported bits: a DSN for this recipient is committed. */
enum { SPOOL_REPORTED_FAILED = 1, SPOOL_REPORTED_DELAYED = 2 };

struct spool_msg {
    struct envelope env;
    enum rcpt_state *state;   /* per recipient, from the .st log */
    int64_t *next_try;        /* per recipient: unix time of next attempt (0 = now) */
    unsigned *attempts;       /* per recipient */
    int fd;                   /* open on queue/ID */
    /* from the status-log records added by issue 3 (hold, release, reported) */
    int held;                 /* a `hold` record not followed by `release` */
    char *hold_reason;        /* of the last `hold` (NULL when none) */
    unsigned *reported;       /* per recipient: SPOOL_REPORTED_* bits */
    int64_t *last_try;        /* per recipient: time of its last done/failed/retry record (0 = none) */
    char **last_reply;        /* per recipient: TEXT of its last failed/retry record, or NULL */
};

/* Opens and decodes queue/ID and its .st log. 0, or -1 with err filled
 * (the caller then moves it aside with spool_quarantine). */
int spool_msg_open(struct spool *s, const char *id, struct spool_msg **out, char *err, size_t errlen);
void spool_msg_close(struct spool_msg *m);
/* The same, read-only, for looking at a message that a delivery thread may
 * have open (submitctl queue list/show): never writes or truncates the
 * status log (a torn last record is only skipped); the spool_mark_* calls
 * fail with EROFS on it. */
int spool_msg_peek(struct spool *s, const char *id, struct spool_msg **out, char *err, size_t errlen);
/* Reads message bytes [off, off+n) of the stored content (not the prepend). */
ssize_t spool_msg_pread(struct spool_msg *m, void *buf, size_t n, uint64_t off);

/* Appends one record to queue/ID.st and fsyncs it; updates m's arrays. A
 * message still in the journal is first moved into queue/ID.
 *   spool_mark_done:   the recipient was delivered (or handed on)
 *   spool_mark_failed: permanent failure (text: the reply, for DSNs)
 *   spool_mark_retry:  temporary failure; next attempt at unix time `next` */
int spool_mark_done(struct spool *s, struct spool_msg *m, size_t rcpt);
int spool_mark_failed(struct spool *s, struct spool_msg *m, size_t rcpt, const char *text);
int spool_mark_retry(struct spool *s, struct spool_msg *m, size_t rcpt, int64_t next, const char *text);
/* Message-level records (one fsync each): an operator or abuse hold (the
 * reason is kept for `queue show`), and its release. */
int spool_mark_hold(struct spool *s, struct spool_msg *m, const char *reason);
int spool_mark_release(struct spool *s, struct spool_msg *m);
/* A DSN (queue id dsn_id) reporting `what` (SPOOL_REPORTED_FAILED or
 * _DELAYED) for these recipients was committed: one record each, written
 * with a single write + fsync, so that a restart does not report again. */
int spool_mark_reported(struct spool *s, struct spool_msg *m, const size_t *rcpts, size_t n, unsigned what,
                        const char *dsn_id);
/* 1 when no recipient is pending. */
int spool_msg_complete(const struct spool_msg *m);
/* Removes queue/ID and queue/ID.st (message first), durably; or resolves
 * the journal record of ID (durable soon after: see spool_flush). */
int spool_remove(struct spool *s, const char *id);
/* Makes the removals of journal messages done so far durable (they are
 * otherwise made durable with the next commits' sync, or after 200 ms).
 * Blocking; the queue calls it when a delivery thread goes idle. */
void spool_flush(struct spool *s);
/* The journal's counters (journal.h), for tests and diagnostics. */
struct journal_stats;
void spool_journal_stats(struct spool *s, struct journal_stats *st);
/* Moves queue/ID (and .st) to corrupt/. */
int spool_quarantine(struct spool *s, const char *id);

/* Calls cb for every committed message id in queue/ (sorted, oldest first). */
int spool_scan(struct spool *s, void (*cb)(void *arg, const char *id), void *arg);

#endif
