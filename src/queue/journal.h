/* journal: the spool's message journal (docs/spool-format.md, "The
 * journal"). Small messages are committed by appending one record (the
 * bytes a v1 queue file would hold) to a preallocated segment file under
 * journal/; a single writer at a time ("the leader") writes every record
 * waiting at that moment with one pwritev and makes them durable with one
 * fdatasync, so concurrent commits share the sync. A record is resolved
 * (delivered, moved into its own queue file, or deleted) by marking it
 * DONE in place; a segment whose records are all resolved is reused under
 * a new generation number, which invalidates everything it held.
 *
 * Thread-safe. Internal to the spool (spool.c is its only user). */
#ifndef SUBMITD_JOURNAL_H
#define SUBMITD_JOURNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "core/util.h"

/* Records hold at most this many payload bytes; larger messages get files. */
#define JOURNAL_PAYLOAD_MAX (256u * 1024u)

struct journal;
struct jseg;

/* A live record opened for reading (journal_get .. journal_put). */
struct jread {
    struct jseg *seg;
    int fd;        /* the segment's descriptor (owned by the journal) */
    uint64_t off;  /* where the payload starts in it */
    uint64_t len;  /* payload bytes */
};

struct journal_stats {
    size_t segments;   /* segment files open */
    size_t free;       /* segments with nothing live, ready for reuse */
    size_t live;       /* live (unresolved) records */
    uint64_t syncs;    /* fdatasync calls made by leaders */
    uint64_t appended; /* records appended since open */
    size_t marks_unsynced; /* DONE marks written and not yet made durable */
};

/* Opens (creating) dir/ (the journal directory, an fd on it: dfd), scans
 * every segment and indexes the live records. A live record whose queue
 * id exists as a file in qfd (queue/) was moved there before a crash: it
 * is marked resolved. max_segments bounds the disk it may take
 * (max_segments x seg_size). NULL with errs filled on failure. */
struct journal *journal_open(int dfd, const char *path, int qfd, size_t max_segments, uint64_t seg_size,
                             struct errlist *errs);
void journal_close(struct journal *j);

/* Appends a record for queue id with the payload in iov (at most
 * JOURNAL_PAYLOAD_MAX bytes) and returns once it is durable: 0. -1 with
 * errno on an I/O error (the record is then never delivered); -2 when the
 * journal has no room (every segment is pinned by live records): the
 * caller writes a file instead. */
int journal_append(struct journal *j, const char *id, const struct iovec *iov, int iovcnt);

/* The same append without waiting: 0 when queued, and then cb(arg, rc,
 * err) is called exactly once, from a journal thread, with journal_append's
 * result (0 durable, -1 and err, -2 no room); iov must stay valid until
 * then. Returns -2 (too big) or -1 (errno; EAGAIN when the journal's
 * threads cannot start or it is closing) without calling cb. The lane
 * threads start with the first call and stop in journal_close. */
int journal_append_async(struct journal *j, const char *id, const struct iovec *iov, int iovcnt,
                         void (*cb)(void *arg, int rc, int err), void *arg);
/* Waits until the cb of every asynchronous append has returned. */
void journal_drain(struct journal *j);

/* Opens the live record of id for reading: 0, or -1 (ENOENT) when the
 * journal has no live record of it. The segment stays valid until
 * journal_put, even if the record is resolved meanwhile. */
int journal_get(struct journal *j, const char *id, struct jread *out);
void journal_put(struct journal *j, struct jread *r);

/* Resolves id's record (marks it DONE in place): 0; -1 with ENOENT when
 * there is no live record of id, or another errno when the mark could not
 * be written (the record is resolved in memory either way). The mark
 * becomes durable with the next batch's sync (commits flowing), or when
 * 256 marks wait or the oldest is 200 ms old (this call runs a sync), or
 * at journal_flush. A crash before that delivers the message again. */
int journal_done(struct journal *j, const char *id);
/* Makes every DONE mark written so far durable (call when going idle). */
void journal_flush(struct journal *j);

/* Calls cb with the id of every live record (unordered). */
void journal_ids(struct journal *j, void (*cb)(void *arg, const char *id), void *arg);

void journal_get_stats(struct journal *j, struct journal_stats *st);

#endif
