/* bounce: the DSNs of a delivery run (see bounce.h): which recipients go
 * into a failure or delay report, reading what is returned of the
 * original from the spool (the whole message or its header section, with
 * an 8-bit check for the part's Content-Transfer-Encoding), writing the
 * DSN through a spool writer and its commit, then the `reported` records
 * and queue_submit. The report text itself is dsn.c's. */
#include "queue/bounce.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "queue/dsn.h"
#include "smtp/parse.h"

#define DSN_HEADERS_MAX (1024 * 1024) /* header section returned in a DSN */
#define READ_CHUNK (64 * 1024)

static int has_high(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] >= 0x80)
            return 1;
    return 0;
}

/* The first min(size, max) stored octets in a new buffer; NULL on error. */
static char *read_prefix(struct spool_msg *m, size_t max, size_t *len)
{
    size_t want = m->env.size < max ? (size_t)m->env.size : max;
    char *buf = xmalloc(want + 1);
    size_t got = 0;
    while (got < want) {
        ssize_t r = spool_msg_pread(m, buf + got, want - got, got);
        if (r <= 0) {
            free(buf);
            if (r == 0)
                errno = EIO;
            return NULL;
        }
        got += (size_t)r;
    }
    *len = got;
    return buf;
}

/* Streams the stored octets through w (w NULL: only looks). Returns 1
 * when an octet >= 0x80 was seen (with w NULL it stops there), 0 when
 * none, -1 on a read error. */
static int pass_stored(struct spool_msg *m, struct spool_writer *w)
{
    char *buf = xmalloc(READ_CHUNK);
    uint64_t off = 0;
    int high = 0;
    while (off < m->env.size && !(high && !w)) {
        ssize_t r = spool_msg_pread(m, buf, READ_CHUNK, off);
        if (r <= 0) {
            free(buf);
            if (r == 0)
                errno = EIO;
            return -1;
        }
        high |= has_high(buf, (size_t)r);
        if (w)
            spool_writer_write(w, buf, (size_t)r);
        off += (uint64_t)r;
    }
    free(buf);
    return high;
}

/* Writes and commits a DSN about recipients idx[0..n) of m; its queue id in
 * dsn_id. 0, or -1 (errno) with nothing left in the spool. */
static int make_dsn(struct spool *s, const struct config *cfg, struct spool_msg *m, const size_t *idx, size_t n,
                    enum dsn_action action, const struct bounce_run *ri, char dsn_id[QID_LEN + 1])
{
    const struct envelope *oe = &m->env;
    size_t plen = oe->prepend ? strlen(oe->prepend) : 0;
    struct dsn_info d = {.action = action, .hostname = cfg->hostname ? cfg->hostname : "localhost",
                         .orig_id = oe->id, .sender = oe->mail_from, .envid = oe->envid, .arrival = oe->received,
                         .now = (int64_t)time(NULL), .utf8 = oe->smtputf8};
    if (action == DSN_ACTION_DELAYED)
        d.retry_until = oe->received + (int64_t)cfg->queue.lifetime;
    d.content = dsn_choose(oe->dsn_ret, oe->body, plen + oe->size, cfg->queue.bounce_size);
    char *hdr = NULL;
    size_t hlen = 0;
    int high = has_high(oe->prepend ? oe->prepend : "", plen);
    if (d.content == DSN_CONTENT_HEADERS) {
        size_t got = 0;
        hdr = read_prefix(m, DSN_HEADERS_MAX, &got);
        if (!hdr)
            return -1;
        hlen = dsn_header_len(hdr, got);
        high |= has_high(hdr, hlen);
    } else if (!high) {
        int h = pass_stored(m, NULL);
        if (h < 0)
            return -1;
        high = h;
    }
    d.content_8bit = high;
    struct dsn_rcpt *rr = xcalloc(n, sizeof(*rr));
    for (size_t k = 0; k < n; k++) {
        size_t i = idx[k];
        const char *reply = m->last_reply[i];
        rr[k] = (struct dsn_rcpt){.addr = oe->rcpts[i].addr, .orcpt = oe->rcpts[i].orcpt, .reply = reply,
                                  .remote_mta = ri->remote[i], .last_attempt = m->last_try[i],
                                  .perm = ri->perm[i] >= 0 ? ri->perm[i] : (reply && reply[0] == '5')};
    }
    struct spool_writer *w = NULL;
    for (int t = 0; t < 3 && !w; t++) {
        qid_new(dsn_id);
        w = spool_writer_new(s, dsn_id);
        if (!w && errno != EEXIST)
            break;
    }
    int rc = -1;
    if (w) {
        d.dsn_id = dsn_id;
        struct strbuf b;
        sb_init(&b);
        dsn_head(&d, rr, n, &b);
        spool_writer_write(w, b.s, b.len);
        if (plen)
            spool_writer_write(w, oe->prepend, plen);
        int ok = 1;
        if (d.content == DSN_CONTENT_HEADERS)
            spool_writer_write(w, hdr, hlen);
        else
            ok = pass_stored(m, w) >= 0;
        sb_reset(&b);
        dsn_tail(&d, &b);
        spool_writer_write(w, b.s, b.len);
        sb_free(&b);
        if (!ok || spool_writer_failed(w)) {
            int e = ok ? spool_writer_failed(w) : errno;
            spool_writer_abort(w);
            errno = e;
        } else {
            struct envelope env;
            envelope_init(&env);
            memcpy(env.id, dsn_id, QID_LEN + 1);
            env.mail_from = xstrdup("");
            env.body = high || oe->smtputf8 ? BODY_8BITMIME : BODY_7BIT;
            env.smtputf8 = oe->smtputf8;
            env.received = d.now;
            envelope_add_rcpt(&env, oe->mail_from, 0, NULL);
            rc = spool_commit(w, &env);
            int e = errno;
            envelope_free(&env);
            errno = e;
        }
    }
    free(rr);
    free(hdr);
    return rc;
}

/* One DSN for recipients idx[0..n): committed, recorded, queued. 0 or -1. */
static int report(struct queue *q, struct spool *s, const struct config *cfg, struct spool_msg *m, const size_t *idx, size_t n,
                  enum dsn_action action, const struct bounce_run *ri)
{
    struct log_ctx lc = {.qid = m->env.id, .user = m->env.auth_user};
    char dsn_id[QID_LEN + 1], qs[LOGQ_MAX], qe[LOGQ_MAX];
    const char *what = action == DSN_ACTION_FAILED ? "failed" : "delayed";
    if (make_dsn(s, cfg, m, idx, n, action, ri, dsn_id) != 0) {
        logkv(LOG_LVL_ERR, &lc, "dsn.failed", "action=%s nrcpt=%zu error=%s note=\"tried again later\"", what, n,
              log_q(qe, sizeof(qe), strerror(errno)));
        return -1;
    }
    logkv(LOG_LVL_INFO, &lc, "dsn.queued", "dsn_id=%s action=%s nrcpt=%zu to=%s", dsn_id, what, n,
          log_q(qs, sizeof(qs), m->env.mail_from));
    unsigned bit = action == DSN_ACTION_FAILED ? SPOOL_REPORTED_FAILED : SPOOL_REPORTED_DELAYED;
    if (spool_mark_reported(s, m, idx, n, bit, dsn_id) != 0)
        logkv(LOG_LVL_ERR, &lc, "queue.status_failed", "dsn_id=%s error=%s note=\"a restart may report again\"",
              dsn_id, log_q(qe, sizeof(qe), strerror(errno)));
    queue_submit(q, dsn_id);
    return 0;
}

static int bounceable(const struct spool_msg *m)
{
    return m->env.mail_from && *m->env.mail_from;
}

int bounce_wanted(const struct spool_msg *m, size_t i)
{
    return bounceable(m) && dsn_requested(m->env.rcpts[i].notify, DSN_ACTION_FAILED);
}

/* Recipient i failed, its NOTIFY asks for failures, and it is not reported. */
static int failure_unreported(const struct spool_msg *m, size_t i)
{
    return m->state[i] == RCPT_FAILED && !(m->reported[i] & SPOOL_REPORTED_FAILED) &&
           dsn_requested(m->env.rcpts[i].notify, DSN_ACTION_FAILED);
}

int bounce_owed(const struct spool_msg *m, size_t i)
{
    return bounceable(m) && failure_unreported(m, i);
}

int bounce_after_run(struct queue *q, struct spool *s, const struct config *cfg, struct spool_msg *m,
                     const struct bounce_run *ri, int64_t now)
{
    size_t n = m->env.nrcpts, nf = 0, nd = 0, suppressed = 0;
    size_t *fl = xcalloc(n ? n : 1, sizeof(*fl)), *dl = xcalloc(n ? n : 1, sizeof(*dl));
    int64_t dw = cfg->queue.delay_warning;
    for (size_t i = 0; i < n; i++) {
        unsigned rep = m->reported[i];
        if (failure_unreported(m, i)) {
            if (bounceable(m))
                fl[nf++] = i;
            else if (ri->perm[i] >= 0)
                suppressed++;
        } else if (m->state[i] == RCPT_PENDING && ri->deferred[i] && bounceable(m) && dw > 0 &&
                   now - m->env.received >= dw && !(rep & (SPOOL_REPORTED_FAILED | SPOOL_REPORTED_DELAYED)) &&
                   dsn_requested(m->env.rcpts[i].notify, DSN_ACTION_DELAYED)) {
            dl[nd++] = i;
        }
    }
    if (suppressed) {
        struct log_ctx lc = {.qid = m->env.id, .user = m->env.auth_user};
        logkv(LOG_LVL_WARN, &lc, "bounce.suppressed", "reason=null_sender nrcpt=%zu note=\"never a bounce for a bounce\"",
              suppressed);
    }
    int rc = 0;
    if (nf && report(q, s, cfg, m, fl, nf, DSN_ACTION_FAILED, ri) != 0)
        rc = -1;
    if (nd)
        report(q, s, cfg, m, dl, nd, DSN_ACTION_DELAYED, ri); /* a lost warning is not worth keeping mail for */
    free(fl);
    free(dl);
    return rc;
}
