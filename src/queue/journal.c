/* journal: the message journal of the spool (see journal.h and
 * docs/spool-format.md). Owns the segment files under journal/, their
 * headers and generations, the record layout and its checksum, the group
 * commit (one leader writes and syncs every waiting request), the lane
 * threads that lead for asynchronous appends, the index of live records
 * (queue id -> segment, offset) and the recovery scan. */
#include "queue/journal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/digest.h"
#include "core/log.h"
#include "queue/spool_int.h"

#define SEG_MAGIC "SDJSEG01"
#define REC_MAGIC "SDJREC01"
#define SEG_HDR_SIZE 4096u /* the segment header's block; records start after it */
#define SEG_HDR_USED 56u   /* magic, generation, size, sha256 of the first 24 bytes */
#define REC_HDR 64u
#define REC_STATE_OFF 40u  /* the 4 bytes rewritten in place: zero while live, "DONE" */
#define REC_SUM_OFF 48u
#define REC_SUM_LEN 16u
#define DONE_MARK "DONE"
#define IOV_CHUNK 512
/* Independent append lanes, each with its own current segment and leader:
 * up to this many fdatasyncs in flight at once (the device overlaps them). */
#define LANES 2
/* DONE marks are made durable by the next batch; a resolving thread runs
 * one itself when this many are waiting or the oldest is this old. */
#define MARKS_MAX 256
#define MARKS_AGE_MS 200
#define ZERO_CHUNK (256u * 1024u)

struct jseg {
    int fd;
    unsigned idx;      /* journal/seg.IDX */
    uint64_t size;     /* file size (preallocated) */
    uint64_t gen;      /* generation of its header; records of another one are stale */
    uint64_t wpos;     /* next append offset, while current */
    size_t live;       /* records not resolved */
    size_t readers;    /* journal_get references */
    int current;       /* the leader appends here */
    int broken;        /* an I/O error: never appended to or reused again */
    int in_free;
    int marks_dirty;   /* DONE marks written since its last sync */
    struct jseg *next_free;
};

struct jent {
    struct jent *next;
    char id[QID_LEN + 1];
    struct jseg *seg;
    uint64_t off;  /* of the record header */
    uint64_t plen;
};

/* An append waiting for the leader: on the stack of a journal_append
 * caller, or allocated by journal_append_async (cb set), then completed
 * by whichever thread ran its batch and freed after cb. */
struct jreq {
    struct jreq *next;
    struct jreq *anext; /* the completed asynchronous appends of a batch */
    void (*cb)(void *arg, int rc, int err);
    void *cbarg;
    const struct iovec *iov;
    int iovcnt;
    uint64_t plen;
    unsigned char hdr[REC_HDR];
    char id[QID_LEN + 1];
    struct jseg *seg;
    uint64_t off;
    int done;
    int rc; /* 0, -1 (err), -2 (no room) */
    int err;
};

struct lane {
    pthread_cond_t cv;   /* its waiters: woken when its leader stops */
    pthread_cond_t wake; /* its thread: requests wait and nobody leads */
    struct journal *j;
    pthread_t th;
    struct jseg *cur;
    struct jreq *pend_head, *pend_tail;
    size_t npend;
    int leader;
};

struct journal {
    pthread_mutex_t mu;
    int dfd;
    char *path;
    uint64_t seg_size;
    size_t max_segs;
    struct jseg **segs;
    size_t nsegs;
    size_t creating;   /* segments being created (outside the lock) */
    unsigned next_idx; /* the next new segment's file number */
    struct lane lanes[LANES];
    unsigned rr;
    struct jseg *free_head;
    uint64_t max_gen;
    struct jent **buckets;
    size_t nbuckets, nlive;
    int marks_pending;     /* some segment has marks_dirty */
    size_t marks_unsynced; /* DONE marks written since the last batch */
    uint64_t marks_since;  /* monotonic ms of the first of them */
    uint64_t syncs, appended;
    int threads;           /* the lane threads run (started by the first asynchronous append) */
    int stopping;
    size_t async_inflight; /* asynchronous appends whose cb has not returned */
    pthread_cond_t idle;   /* async_inflight reached 0 */
};


/* ---- little helpers --------------------------------------------------------- */

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t rec_size(uint64_t plen)
{
    return (REC_HDR + plen + 7) & ~(uint64_t)7;
}

/* sha256 of the header's bytes 16..40 (payload length, id) and the
 * payload (iovcnt < IOV_CHUNK), first REC_SUM_LEN bytes. */
static void rec_sum(const unsigned char *hdr, const struct iovec *iov, int iovcnt, unsigned char out[REC_SUM_LEN])
{
    struct iovec all[IOV_CHUNK];
    all[0] = (struct iovec){.iov_base = (void *)(hdr + 16), .iov_len = 24};
    memcpy(all + 1, iov, (size_t)iovcnt * sizeof(*iov));
    unsigned char md[32];
    sha256_iov(all, iovcnt + 1, md); /* zeros if it failed: recovery then drops the record */
    memcpy(out, md, REC_SUM_LEN);
}

static void seg_hdr_sum(const unsigned char *hdr, unsigned char out[32])
{
    struct iovec v = {.iov_base = (void *)hdr, .iov_len = 24};
    sha256_iov(&v, 1, out);
}

/* pwritev until everything is written; iov is modified. */
static int pwritev_all(int fd, struct iovec *iov, int n, uint64_t off)
{
    while (n > 0) {
        ssize_t r = pwritev(fd, iov, n, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        off += (uint64_t)r;
        while (n > 0 && (size_t)r >= iov->iov_len) {
            r -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + r;
            iov->iov_len -= (size_t)r;
        }
    }
    return 0;
}

/* ---- index of live records -------------------------------------------------- */

static size_t id_hash(const char *id)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return (size_t)h;
}

static struct jent **index_slot(struct journal *j, const char *id)
{
    struct jent **pp = &j->buckets[id_hash(id) & (j->nbuckets - 1)];
    while (*pp && strcmp((*pp)->id, id) != 0)
        pp = &(*pp)->next;
    return pp;
}

static void index_grow(struct journal *j)
{
    size_t nb = j->nbuckets * 2;
    struct jent **b = xcalloc(nb, sizeof(*b));
    for (size_t i = 0; i < j->nbuckets; i++) {
        for (struct jent *e = j->buckets[i], *next; e; e = next) {
            next = e->next;
            size_t k = id_hash(e->id) & (nb - 1);
            e->next = b[k];
            b[k] = e;
        }
    }
    free(j->buckets);
    j->buckets = b;
    j->nbuckets = nb;
}

/* 0, or -1 when id is already live. */
static int index_add(struct journal *j, const char *id, struct jseg *seg, uint64_t off, uint64_t plen)
{
    struct jent **pp = index_slot(j, id);
    if (*pp)
        return -1;
    struct jent *e = xcalloc(1, sizeof(*e));
    memcpy(e->id, id, QID_LEN + 1);
    e->seg = seg;
    e->off = off;
    e->plen = plen;
    *pp = e;
    if (++j->nlive > 2 * j->nbuckets)
        index_grow(j);
    return 0;
}

/* ---- segments ------------------------------------------------------------ */

static void seg_name(char *buf, size_t n, unsigned idx)
{
    snprintf(buf, n, "seg.%04u", idx);
}

/* Puts seg on the free list when nothing needs it any more. Lock held. */
static void seg_maybe_free(struct journal *j, struct jseg *seg)
{
    if (seg->current || seg->broken || seg->in_free || seg->live || seg->readers)
        return;
    seg->in_free = 1;
    seg->next_free = j->free_head;
    j->free_head = seg;
}

/* Starts a new generation in seg: writes its header and syncs it. Every
 * record it held is stale from then on. No lock needed: the segment is
 * the leader's alone while it is not current and off the free list. */
static int seg_reset(struct jseg *seg, uint64_t gen)
{
    unsigned char h[SEG_HDR_USED];
    memset(h, 0, sizeof(h));
    memcpy(h, SEG_MAGIC, 8);
    put_le64(h + 8, gen);
    put_le64(h + 16, seg->size);
    seg_hdr_sum(h, h + 24);
    if (pwrite_all(seg->fd, h, sizeof(h), 0) != 0 || fdatasync(seg->fd) != 0)
        return -1;
    seg->gen = gen;
    seg->wpos = SEG_HDR_SIZE;
    return 0;
}

/* Creates journal/seg.IDX, filled with zeros (so that later writes
 * overwrite allocated blocks), and makes its name durable. */
static struct jseg *seg_create(struct journal *j, unsigned idx)
{
    char name[32];
    seg_name(name, sizeof(name), idx);
    int fd = openat(j->dfd, name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return NULL;
    char *zero = xcalloc(1, ZERO_CHUNK);
    int rc = 0;
    for (uint64_t off = 0; rc == 0 && off < j->seg_size; off += ZERO_CHUNK) {
        uint64_t n = j->seg_size - off < ZERO_CHUNK ? j->seg_size - off : ZERO_CHUNK;
        rc = pwrite_all(fd, zero, (size_t)n, (off_t)off);
    }
    free(zero);
    if (rc != 0 || fsync(fd) != 0 || fsync(j->dfd) != 0) {
        int e = errno;
        close(fd);
        unlinkat(j->dfd, name, 0);
        errno = e;
        return NULL;
    }
    struct jseg *seg = xcalloc(1, sizeof(*seg));
    seg->fd = fd;
    seg->idx = idx;
    seg->size = j->seg_size;
    return seg;
}

static void seg_add(struct journal *j, struct jseg *seg)
{
    j->segs = xrealloc(j->segs, (j->nsegs + 1) * sizeof(*j->segs));
    j->segs[j->nsegs++] = seg;
}

static uint64_t next_gen(struct journal *j)
{
    uint64_t g = wall_us();
    if (g <= j->max_gen)
        g = j->max_gen + 1;
    j->max_gen = g;
    return g;
}

/* Makes a fresh segment current (the leader, lock held; dropped around the
 * I/O). NULL when every segment is pinned and no more may be created. */
static struct jseg *rotate(struct journal *j, struct lane *ln)
{
    struct jseg *old = ln->cur;
    ln->cur = NULL;
    if (old) {
        old->current = 0;
        seg_maybe_free(j, old);
    }
    for (;;) {
        struct jseg *seg = j->free_head;
        unsigned idx = 0;
        if (seg) {
            j->free_head = seg->next_free;
            seg->in_free = 0;
        } else if (j->nsegs + j->creating < j->max_segs) {
            idx = j->next_idx++; /* reserved: another lane may be creating one too */
            j->creating++;
        } else {
            return NULL;
        }
        uint64_t gen = next_gen(j);
        pthread_mutex_unlock(&j->mu);
        int created = !seg;
        if (created)
            seg = seg_create(j, idx);
        int ok = seg && seg_reset(seg, gen) == 0;
        int e = errno;
        pthread_mutex_lock(&j->mu);
        char q[LOGQ_MAX];
        if (created)
            j->creating--;
        if (seg && created)
            seg_add(j, seg);
        if (ok) {
            seg->current = 1;
            ln->cur = seg;
            return seg;
        }
        logkv(LOG_LVL_ERR, NULL, "journal.segment_failed", "segment=%u error=%s", seg ? seg->idx : idx,
              log_q(q, sizeof(q), strerror(e)));
        if (seg)
            seg->broken = 1;
        else
            return NULL; /* cannot create one: the caller falls back to files */
    }
}

/* ---- the leader ------------------------------------------------------------ */

/* pwritev of one contiguous run of records; on failure every append of
 * the run (first .. stop, exclusive) fails. */
static void write_run(struct jseg *seg, struct iovec *iov, int n, uint64_t start, struct jreq *first,
                      struct jreq *stop)
{
    if (pwritev_all(seg->fd, iov, n, start) == 0)
        return;
    int e = errno ? errno : EIO;
    for (struct jreq *f = first; f != stop; f = f->next)
        if (f->rc == 0 && f->seg == seg) {
            f->rc = -1;
            f->err = e;
        }
}

/* Writes the placed appends of batch with as few pwritev calls as their
 * offsets allow. */
static void write_appends(struct jreq *batch)
{
    static const unsigned char pad[8];
    struct iovec iov[IOV_CHUNK];
    struct jreq *first = NULL;
    int n = 0;
    uint64_t start = 0, end = 0;
    for (struct jreq *r = batch; r; r = r->next) {
        if (r->rc != 0)
            continue;
        if (n && (r->seg != first->seg || r->off != end || n + r->iovcnt + 2 > IOV_CHUNK)) {
            write_run(first->seg, iov, n, start, first, r);
            n = 0;
        }
        if (n == 0) {
            first = r;
            start = end = r->off;
        }
        iov[n++] = (struct iovec){.iov_base = r->hdr, .iov_len = REC_HDR};
        for (int i = 0; i < r->iovcnt; i++)
            iov[n++] = r->iov[i];
        uint64_t sz = rec_size(r->plen);
        if (sz > REC_HDR + r->plen)
            iov[n++] = (struct iovec){.iov_base = (void *)pad, .iov_len = (size_t)(sz - REC_HDR - r->plen)};
        end += sz;
    }
    if (n)
        write_run(first->seg, iov, n, start, first, NULL);
}

#define SYNC_SEGS_MAX 64

/* Syncs each segment of segs once (the appends' and those with DONE
 * marks to make durable); a failure fails the appends placed there and
 * sets failed[i]. */
static void sync_segments(struct jreq *batch, struct jseg **segs, size_t n, int *failed)
{
    for (size_t i = 0; i < n; i++) {
        failed[i] = 0;
        int rc = fdatasync(segs[i]->fd);
        int e = errno;
        if (rc == 0)
            continue;
        char q[LOGQ_MAX];
        logkv(LOG_LVL_ERR, NULL, "journal.sync_failed", "segment=%u error=%s", segs[i]->idx,
              log_q(q, sizeof(q), strerror(e)));
        for (struct jreq *f = batch; f; f = f->next)
            if (f->seg == segs[i] && f->rc == 0) {
                f->rc = -1;
                f->err = e ? e : EIO;
            }
        failed[i] = 1;
    }
}

static void add_seg(struct jseg **segs, size_t *n, struct jseg *seg)
{
    for (size_t i = 0; i < *n; i++)
        if (segs[i] == seg)
            return;
    if (*n < SYNC_SEGS_MAX)
        segs[(*n)++] = seg;
}

/* Runs one batch (the leader, no lock held): places the appends, writes
 * them, syncs every segment the batch touched and every segment with
 * DONE marks written since the last batch once, then publishes the
 * results. */
static struct jreq *run_batch(struct journal *j, struct lane *ln, struct jreq *batch)
{
    struct jreq *async = NULL, **atail = &async;
    struct jseg *segs[SYNC_SEGS_MAX];
    size_t nsegs = 0;
    pthread_mutex_lock(&j->mu);
    for (struct jreq *r = batch; r; r = r->next) {
        uint64_t need = rec_size(r->plen);
        struct jseg *seg = ln->cur;
        if (!seg || seg->broken || seg->wpos + need > seg->size)
            seg = rotate(j, ln);
        if (!seg || seg->wpos + need > seg->size) {
            r->rc = -2;
            continue;
        }
        r->seg = seg;
        r->off = seg->wpos;
        seg->wpos += need;
        seg->live++;
        put_le64(r->hdr + 8, seg->gen);
        add_seg(segs, &nsegs, seg);
    }
    /* DONE marks: those in the segments synced anyway ride along; all of
     * them when asked (journal_flush), or when many or old */
    int all = !batch || j->marks_unsynced >= MARKS_MAX ||
              (j->marks_unsynced && now_ms() - j->marks_since >= MARKS_AGE_MS);
    int left = 0;
    for (size_t i = 0; i < j->nsegs; i++) {
        struct jseg *sg = j->segs[i];
        if (!sg->marks_dirty)
            continue;
        size_t k = 0;
        while (k < nsegs && segs[k] != sg)
            k++;
        if (k < nsegs || all) {
            sg->marks_dirty = 0;
            add_seg(segs, &nsegs, sg);
        } else {
            left = 1;
        }
    }
    j->marks_pending = left;
    if (!left)
        j->marks_unsynced = 0;
    pthread_mutex_unlock(&j->mu);

    write_appends(batch);
    int failed[SYNC_SEGS_MAX];
    sync_segments(batch, segs, nsegs, failed);

    /* an append that failed may still reach the disk: mark it resolved */
    for (struct jreq *r = batch; r; r = r->next)
        if (r->rc == -1 && r->seg)
            (void)pwrite_all(r->seg->fd, DONE_MARK, 4, (off_t)(r->off + REC_STATE_OFF));

    pthread_mutex_lock(&j->mu);
    j->syncs += nsegs;
    for (size_t i = 0; i < nsegs; i++)
        if (failed[i])
            segs[i]->broken = 1; /* an I/O error: never appended to or reused again */
    for (struct jreq *r = batch; r; r = r->next) {
        if (r->seg) {
            if (r->rc == 0 && index_add(j, r->id, r->seg, r->off, r->plen) == 0) {
                j->appended++;
            } else {
                if (r->rc == 0) { /* the id is live already: a caller's bug, never deliver twice */
                    r->rc = -1;
                    r->err = EEXIST;
                    (void)pwrite_all(r->seg->fd, DONE_MARK, 4, (off_t)(r->off + REC_STATE_OFF));
                }
                if (r->rc == -1)
                    r->seg->broken = 1;
                r->seg->live--;
                seg_maybe_free(j, r->seg);
            }
        }
        if (r->cb) {
            *atail = r;
            atail = &r->anext;
        }
        r->done = 1; /* a synchronous caller may return once the lock is dropped */
    }
    pthread_mutex_unlock(&j->mu);
    return async;
}

/* Becomes the leader of lane ln (lock held, no leader there) and runs
 * one batch: the lane's waiting requests, and the DONE marks written
 * since the last batch of any lane. The asynchronous appends of the batch
 * are completed after the lane is handed on (their callbacks run without
 * the lock while the next batch may already be writing). */
static void lead(struct journal *j, struct lane *ln)
{
    ln->leader = 1;
    struct jreq *batch = ln->pend_head;
    ln->pend_head = ln->pend_tail = NULL;
    ln->npend = 0;
    pthread_mutex_unlock(&j->mu);
    struct jreq *async = run_batch(j, ln, batch);
    pthread_mutex_lock(&j->mu);
    ln->leader = 0;
    pthread_cond_broadcast(&ln->cv);
    if (ln->pend_head && j->threads)
        pthread_cond_signal(&ln->wake); /* left for the lane thread unless a waiter leads first */
    if (!async)
        return;
    pthread_mutex_unlock(&j->mu);
    size_t n = 0;
    while (async) {
        struct jreq *next = async->anext;
        async->cb(async->cbarg, async->rc, async->err);
        free(async);
        async = next;
        n++;
    }
    pthread_mutex_lock(&j->mu);
    j->async_inflight -= n;
    if (j->async_inflight == 0)
        pthread_cond_broadcast(&j->idle);
}

/* A lane's thread: leads whenever requests wait on its lane and nobody
 * else does. Synchronous callers still lead their own batches; this
 * thread is what runs the batches of asynchronous appends. */
static void *lane_main(void *arg)
{
    struct lane *ln = arg;
    struct journal *j = ln->j;
    pthread_mutex_lock(&j->mu);
    for (;;) {
        if (ln->pend_head && !ln->leader)
            lead(j, ln);
        else if (j->stopping && !ln->pend_head)
            break;
        else
            pthread_cond_wait(&ln->wake, &j->mu);
    }
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

/* Starts the lane threads (lock held): 0, or -1 when one could not be. */
static int start_threads(struct journal *j)
{
    if (j->threads)
        return 0;
    for (unsigned k = 0; k < LANES; k++) {
        if (pthread_create(&j->lanes[k].th, NULL, lane_main, &j->lanes[k]) != 0) {
            j->stopping = 1;
            for (unsigned i = 0; i < k; i++)
                pthread_cond_signal(&j->lanes[i].wake);
            pthread_mutex_unlock(&j->mu);
            for (unsigned i = 0; i < k; i++)
                pthread_join(j->lanes[i].th, NULL);
            pthread_mutex_lock(&j->mu);
            j->stopping = 0;
            return -1;
        }
        thread_name(j->lanes[k].th, "journal");
        /* not preempting the loop that queued the record: under load the
         * lane starts a moment later with more records (fewer syncs) */
        thread_background(j->lanes[k].th);
    }
    j->threads = 1;
    return 0;
}

/* A lane without a leader (the caller leads at once), else the one with
 * the fewest requests waiting (they share its next sync). Lock held. */
static struct lane *pick_lane(struct journal *j)
{
    struct lane *best = NULL;
    for (unsigned k = 0; k < LANES; k++) {
        struct lane *ln = &j->lanes[(j->rr + k) % LANES];
        if (!ln->leader) {
            best = ln;
            break;
        }
        if (!best || ln->npend < best->npend)
            best = ln;
    }
    j->rr++;
    return best;
}

/* Queues r on the lane pick_lane chooses (lock held); returns it. */
static struct lane *enqueue(struct journal *j, struct jreq *r)
{
    struct lane *ln = pick_lane(j);
    if (ln->pend_tail)
        ln->pend_tail->next = r;
    else
        ln->pend_head = r;
    ln->pend_tail = r;
    ln->npend++;
    return ln;
}

/* Queues r on a lane and waits until a leader (this thread or another)
 * ran it. */
static void submit_wait(struct journal *j, struct jreq *r)
{
    pthread_mutex_lock(&j->mu);
    struct lane *ln = enqueue(j, r);
    while (!r->done) {
        if (ln->leader)
            pthread_cond_wait(&ln->cv, &j->mu);
        else
            lead(j, ln);
    }
    pthread_mutex_unlock(&j->mu);
}

static int any_leader(const struct journal *j)
{
    for (unsigned k = 0; k < LANES; k++)
        if (j->lanes[k].leader)
            return 1;
    return 0;
}

/* ---- the API --------------------------------------------------------------- */

/* Fills a request (header and checksum included): 0, -2 (too big for a
 * record) or -1 (EINVAL: not a queue id). */
static int req_init(struct jreq *r, const char *id, const struct iovec *iov, int iovcnt)
{
    uint64_t plen = 0;
    for (int i = 0; i < iovcnt; i++)
        plen += iov[i].iov_len;
    if (plen > JOURNAL_PAYLOAD_MAX || iovcnt > IOV_CHUNK - 2)
        return -2;
    if (!qid_valid(id)) {
        errno = EINVAL;
        return -1;
    }
    r->iov = iov;
    r->iovcnt = iovcnt;
    r->plen = plen;
    memcpy(r->id, id, QID_LEN + 1);
    memcpy(r->hdr, REC_MAGIC, 8);
    put_le64(r->hdr + 16, plen);
    memcpy(r->hdr + 24, id, QID_LEN);
    rec_sum(r->hdr, iov, iovcnt, r->hdr + REC_SUM_OFF);
    return 0;
}

int journal_append(struct journal *j, const char *id, const struct iovec *iov, int iovcnt)
{
    struct jreq r = {0};
    int rc = req_init(&r, id, iov, iovcnt);
    if (rc != 0)
        return rc;
    submit_wait(j, &r);
    if (r.rc == -1)
        errno = r.err ? r.err : EIO;
    return r.rc;
}

int journal_append_async(struct journal *j, const char *id, const struct iovec *iov, int iovcnt,
                         void (*cb)(void *arg, int rc, int err), void *arg)
{
    struct jreq *r = xcalloc(1, sizeof(*r));
    int rc = req_init(r, id, iov, iovcnt);
    if (rc != 0) {
        free(r);
        return rc;
    }
    r->cb = cb;
    r->cbarg = arg;
    pthread_mutex_lock(&j->mu);
    if (j->stopping || start_threads(j) != 0) {
        pthread_mutex_unlock(&j->mu);
        free(r);
        errno = EAGAIN;
        return -1;
    }
    j->async_inflight++;
    struct lane *ln = enqueue(j, r);
    if (!ln->leader) /* else its leader hands the lane to its thread when done */
        pthread_cond_signal(&ln->wake);
    pthread_mutex_unlock(&j->mu);
    return 0;
}

void journal_drain(struct journal *j)
{
    pthread_mutex_lock(&j->mu);
    while (j->async_inflight)
        pthread_cond_wait(&j->idle, &j->mu);
    pthread_mutex_unlock(&j->mu);
}

int journal_get(struct journal *j, const char *id, struct jread *out)
{
    pthread_mutex_lock(&j->mu);
    struct jent *e = *index_slot(j, id);
    if (e) {
        e->seg->readers++;
        *out = (struct jread){.seg = e->seg, .fd = e->seg->fd, .off = e->off + REC_HDR, .len = e->plen};
    }
    pthread_mutex_unlock(&j->mu);
    if (!e)
        errno = ENOENT;
    return e ? 0 : -1;
}

void journal_put(struct journal *j, struct jread *r)
{
    if (!r->seg)
        return;
    pthread_mutex_lock(&j->mu);
    r->seg->readers--;
    seg_maybe_free(j, r->seg);
    pthread_mutex_unlock(&j->mu);
    r->seg = NULL;
}

int journal_done(struct journal *j, const char *id)
{
    pthread_mutex_lock(&j->mu);
    struct jent **pp = index_slot(j, id);
    struct jent *e = *pp;
    if (e) {
        *pp = e->next;
        j->nlive--;
    }
    pthread_mutex_unlock(&j->mu);
    if (!e) {
        errno = ENOENT;
        return -1;
    }
    struct jseg *seg = e->seg;
    /* the mark is written while the record still pins its segment: the
     * segment cannot be reused under it */
    int rc = pwrite_all(seg->fd, DONE_MARK, 4, (off_t)(e->off + REC_STATE_OFF));
    int err = errno;
    free(e);
    pthread_mutex_lock(&j->mu);
    seg->live--;
    seg_maybe_free(j, seg);
    if (rc == 0) {
        seg->marks_dirty = 1;
        j->marks_pending = 1;
        if (j->marks_unsynced++ == 0)
            j->marks_since = now_ms();
        /* the next commit's batch syncs it; without commits, this thread
         * does once the marks are many or old (journal_flush when idle) */
        if ((j->marks_unsynced >= MARKS_MAX || now_ms() - j->marks_since >= MARKS_AGE_MS) && !any_leader(j))
            lead(j, &j->lanes[0]);
    }
    pthread_mutex_unlock(&j->mu);
    errno = err;
    return rc;
}

void journal_flush(struct journal *j)
{
    pthread_mutex_lock(&j->mu);
    while (j->marks_pending) {
        struct lane *ln = NULL;
        for (unsigned k = 0; k < LANES && !ln; k++)
            if (!j->lanes[k].leader)
                ln = &j->lanes[k];
        if (ln) {
            lead(j, ln);
        } else { /* both lanes busy: the marks ride along; wait for one */
            pthread_cond_wait(&j->lanes[0].cv, &j->mu);
        }
    }
    pthread_mutex_unlock(&j->mu);
}

void journal_ids(struct journal *j, void (*cb)(void *arg, const char *id), void *arg)
{
    pthread_mutex_lock(&j->mu);
    for (size_t i = 0; i < j->nbuckets; i++)
        for (struct jent *e = j->buckets[i]; e; e = e->next)
            cb(arg, e->id);
    pthread_mutex_unlock(&j->mu);
}

void journal_get_stats(struct journal *j, struct journal_stats *st)
{
    pthread_mutex_lock(&j->mu);
    *st = (struct journal_stats){.segments = j->nsegs, .live = j->nlive, .syncs = j->syncs, .appended = j->appended,
                                 .marks_unsynced = j->marks_pending ? j->marks_unsynced : 0};
    for (struct jseg *s = j->free_head; s; s = s->next_free)
        st->free++;
    pthread_mutex_unlock(&j->mu);
}

/* ---- opening and recovery ---------------------------------------------------- */

/* Reads and checks seg's header: 0 with seg->gen set, -1 when it is not a
 * valid one (a torn reset, a foreign file). */
static int seg_read_header(struct jseg *seg)
{
    unsigned char h[SEG_HDR_USED], sum[32];
    if (seg->size < SEG_HDR_SIZE + REC_HDR || pread_full(seg->fd, h, sizeof(h), 0) != 0)
        return -1;
    seg_hdr_sum(h, sum);
    if (memcmp(h, SEG_MAGIC, 8) != 0 || memcmp(sum, h + 24, 32) != 0 || get_le64(h + 16) != seg->size)
        return -1;
    seg->gen = get_le64(h + 8);
    return 0;
}

/* Walks seg's records of its generation, indexing the live ones; stops at
 * the first record that is not complete and valid (the end). Returns how
 * many records it marked resolved (moved to queue/ before a crash). */
static size_t seg_recover(struct journal *j, struct jseg *seg, int qfd)
{
    size_t marked = 0;
    uint64_t off = SEG_HDR_SIZE;
    unsigned char h[REC_HDR];
    char *buf = NULL;
    while (off + REC_HDR <= seg->size && pread_full(seg->fd, h, REC_HDR, (off_t)off) == 0) {
        uint64_t plen = get_le64(h + 16);
        if (memcmp(h, REC_MAGIC, 8) != 0 || get_le64(h + 8) != seg->gen || plen > JOURNAL_PAYLOAD_MAX ||
            plen > seg->size - off - REC_HDR)
            break;
        int resolved = memcmp(h + REC_STATE_OFF, DONE_MARK, 4) == 0;
        if (!resolved) {
            buf = xrealloc(buf, plen ? plen : 1);
            if (pread_full(seg->fd, buf, (size_t)plen, (off_t)(off + REC_HDR)) != 0)
                break;
            unsigned char sum[REC_SUM_LEN];
            struct iovec v = {.iov_base = buf, .iov_len = (size_t)plen};
            rec_sum(h, &v, 1, sum);
            if (memcmp(sum, h + REC_SUM_OFF, REC_SUM_LEN) != 0)
                break; /* torn: never acknowledged */
            char id[QID_LEN + 1];
            memcpy(id, h + 24, QID_LEN);
            id[QID_LEN] = '\0';
            struct stat st;
            char q[LOGQ_MAX];
            if (!qid_valid(id) || fstatat(qfd, id, &st, AT_SYMLINK_NOFOLLOW) == 0 ||
                index_add(j, id, seg, off, plen) != 0) {
                /* already a queue file (moved before a crash), or a duplicate */
                logkv(LOG_LVL_INFO, NULL, "journal.recovered_resolved", "segment=%u id=%s", seg->idx,
                      log_q(q, sizeof(q), id));
                (void)pwrite_all(seg->fd, DONE_MARK, 4, (off_t)(off + REC_STATE_OFF));
                marked++;
            } else {
                seg->live++;
            }
        }
        off += rec_size(plen);
    }
    free(buf);
    seg->wpos = off;
    return marked;
}

static int seg_open_existing(struct journal *j, const char *name, int qfd, struct errlist *errs)
{
    unsigned idx = 0;
    char tail = 0;
    if (sscanf(name, "seg.%u%c", &idx, &tail) != 1) {
        char q[LOGQ_MAX];
        logkv(LOG_LVL_WARN, NULL, "journal.junk", "file=%s note=\"not a journal segment; ignored\"",
              log_q(q, sizeof(q), name));
        return 0;
    }
    int fd = openat(j->dfd, name, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        errlist_add(errs, j->path, 0, "cannot open journal segment %s: %s", name,
                    fd < 0 ? strerror(errno) : "not a regular file");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    struct jseg *seg = xcalloc(1, sizeof(*seg));
    seg->fd = fd;
    seg->idx = idx;
    seg->size = (uint64_t)st.st_size;
    seg_add(j, seg);
    if (idx >= j->next_idx)
        j->next_idx = idx + 1;
    if (seg_read_header(seg) != 0) {
        /* a reset torn by a crash (its records were all resolved), or a
         * file of the wrong size: reused under a new generation */
        if (seg->size != j->seg_size)
            seg->broken = 1;
        return 0;
    }
    if (seg->gen > j->max_gen)
        j->max_gen = seg->gen;
    if (seg_recover(j, seg, qfd) > 0)
        (void)fdatasync(seg->fd);
    return 0;
}

struct journal *journal_open(int dfd, const char *path, int qfd, size_t max_segments, uint64_t seg_size,
                             struct errlist *errs)
{
    struct journal *j = xcalloc(1, sizeof(*j));
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->idle, NULL);
    for (unsigned k = 0; k < LANES; k++) {
        pthread_cond_init(&j->lanes[k].cv, NULL);
        pthread_cond_init(&j->lanes[k].wake, NULL);
        j->lanes[k].j = j;
    }
    j->dfd = dfd;
    j->path = xstrdup(path);
    j->seg_size = seg_size;
    j->max_segs = max_segments ? max_segments : 1;
    j->nbuckets = 256;
    j->buckets = xcalloc(j->nbuckets, sizeof(*j->buckets));
    int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        errlist_add(errs, path, 0, "cannot read the journal directory: %s", strerror(errno));
        if (fd >= 0)
            close(fd);
        journal_close(j);
        return NULL;
    }
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            rc = seg_open_existing(j, de->d_name, qfd, errs);
    closedir(d);
    if (rc != 0) {
        journal_close(j);
        return NULL;
    }
    for (size_t i = 0; i < j->nsegs; i++)
        seg_maybe_free(j, j->segs[i]);
    if (j->nlive) {
        logkv(LOG_LVL_INFO, NULL, "journal.recovered", "messages=%zu segments=%zu", j->nlive, j->nsegs);
    }
    return j;
}

void journal_close(struct journal *j)
{
    if (!j)
        return;
    pthread_mutex_lock(&j->mu);
    j->stopping = 1; /* the lane threads run what waits, then stop */
    for (unsigned k = 0; k < LANES; k++)
        pthread_cond_signal(&j->lanes[k].wake);
    int threads = j->threads;
    pthread_mutex_unlock(&j->mu);
    for (unsigned k = 0; threads && k < LANES; k++)
        pthread_join(j->lanes[k].th, NULL);
    for (size_t i = 0; i < j->nsegs; i++) /* no thread uses it any more: sync the last marks */
        if (j->segs[i]->marks_dirty)
            (void)fdatasync(j->segs[i]->fd);
    if (j->appended)
        logkv(LOG_LVL_INFO, NULL, "journal.closed", "appended=%llu syncs=%llu live=%zu segments=%zu",
              (unsigned long long)j->appended, (unsigned long long)j->syncs, j->nlive, j->nsegs);
    for (size_t i = 0; i < j->nsegs; i++) {
        close(j->segs[i]->fd);
        free(j->segs[i]);
    }
    free(j->segs);
    for (size_t i = 0; i < j->nbuckets; i++)
        for (struct jent *e = j->buckets[i], *next; e; e = next) {
            next = e->next;
            free(e);
        }
    free(j->buckets);
    free(j->path);
    pthread_mutex_destroy(&j->mu);
    for (unsigned k = 0; k < LANES; k++) {
        pthread_cond_destroy(&j->lanes[k].cv);
        pthread_cond_destroy(&j->lanes[k].wake);
    }
    pthread_cond_destroy(&j->idle);
    free(j);
}
