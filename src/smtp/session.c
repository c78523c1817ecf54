/* session: one server-side SMTP submission session (RFC 5321, 6409, 3207,
 * 4954, 3030, 2034, 3461, 6531).
 *
 * Owns: the session state machine (enum sstate, changed only through
 * set_state(), which logs `old -> new`), the command table (flags decide
 * 530/503 before a handler runs), the transaction (struct txn, reset by
 * RSET, end of data, STARTTLS and HELO/EHLO), streaming DATA/BDAT content
 * through the pure parsers and the message hooks into a spool writer, and
 * handing blocking work (password verification, spool commit) to job
 * threads. While a job is out the session stops reading so that pipelined
 * commands are answered in order; a session whose client went away while a
 * job was out is freed when the job comes back. The abuse controls
 * (src/abuse) are consulted at connect (before the greeting), AUTH (in the
 * AUTH job: blocks, attempt limits, failures and their delay), MAIL, RCPT
 * and the end of data (in the commit job: bytes, detection, hold); a
 * check that has to ask Redis parks the session in ST_LIMIT_WAIT. A client
 * from a `trusted` network of its listener may use MAIL/RCPT/DATA/BDAT
 * without STARTTLS and AUTH (F_TRUSTED_OK); unauthenticated, it has no
 * account: no auth user in the envelope, any sender, its limits counted by
 * address. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "abuse/abuse.h"
#include "auth/authcache.h"
#include "auth/passwd.h"
#include "auth/sasl.h"
#include "core/io.h"
#include "core/log.h"
#include "smtp/dataparse.h"
#include "smtp/msgstream.h"
#include "smtp/parse.h"
#include "smtp/policy.h"
#include "smtp/server.h"

#define OUT_HIGH_WATER (64 * 1024) /* stop reading commands past this much unsent output */

enum sstate {
    ST_TLS_HANDSHAKE = 0, /* implicit TLS or after STARTTLS */
    ST_GREETED,           /* greeting sent, no EHLO/HELO yet */
    ST_READY,             /* EHLO/HELO done, no transaction */
    ST_AUTH,              /* SASL exchange: next line is a response */
    ST_AUTH_WAIT,         /* password check on a job thread / failure delay */
    ST_MAIL,              /* MAIL accepted, no recipient yet */
    ST_RCPT,              /* at least one recipient */
    ST_DATA,              /* reading DATA content */
    ST_BDAT,              /* reading a BDAT chunk */
    ST_COMMIT,            /* spool commit on a job thread */
    ST_CLOSING,           /* flushing the last reply, then close */
    ST_LIMIT_WAIT         /* an abuse check asking Redis (connect, MAIL, RCPT) */
};

static const char *const state_names[] = {"tls-handshake", "greeted", "ready", "auth", "auth-wait", "mail",
                                          "rcpt", "data", "bdat", "commit", "closing", "limit-wait"};

struct txn {
    struct envelope env;
    struct mail_args mail;
    struct spool_writer *w;
    struct data_parser dp;
    struct bdat_checker bc;
    int used_bdat;
    uint64_t chunk_left;   /* bytes of the current BDAT chunk still to read */
    int chunk_last;
    int chunk_discard;     /* BDAT_BAD_SEQUENCE / BDAT_DROP: read the chunk, drop it */
    uint64_t chunk_size;
    void *hook_state[MSG_HOOKS_MAX];
    int hooks_started;
    int result;            /* commit result (COMMIT_REFUSED: abuse.reply; COMMIT_RETRY: use the job) */
    int result_errno;
    struct abuse_msg abuse; /* end-of-data checks, in the commit job or on the loop */
    int abuse_done;        /* abuse checked on the loop already */
    int held;              /* 1 queued held, -1 holding failed */
    char note[512];        /* the hooks' fields for the `queued` line (msg_note) */
};

enum { COMMIT_REFUSED = -2, COMMIT_RETRY = 1 };

enum { BDAT_BAD_SEQUENCE = 1, BDAT_DROP = 2 };

struct session {
    struct session *next, *prev;
    struct worker *w;
    struct server *srv;
    struct server_snap snap;
    const struct listener_cfg *lcfg;
    size_t listener;
    struct io *io;
    struct sockaddr_storage sa;
    char ip[64];
    char sid[QID_LEN + 1];
    char helo[256];
    char tlsdesc[128];
    char tlslog[96];
    char login[SASL_USER_MAX + 1];
    struct accounts *acc;          /* reference held while authenticated */
    const struct account *account; /* in acc */
    struct log_ctx lc;
    enum sstate state;
    enum sstate bdat_prev_state;   /* to return to after a dropped chunk */
    int tls;
    int ehlo;                      /* 0 none, 1 HELO, 2 EHLO */
    int authed;
    int trusted;                   /* the address is in the listener's `trusted` networks */
    unsigned errors, auth_failures, messages;
    struct line_reader lr;
    struct sasl *sasl;
    struct txn txn;
    int job_pending;
    int dead;                      /* connection gone, waiting for a job */
    int shutdown_requested;
    struct event *timer;           /* AUTH failure delay; deferred close */
    struct abuse_call ab;          /* connect/MAIL/RCPT limit check */
    enum sstate ab_prev;           /* state to return to after ST_LIMIT_WAIT */
    void (*ab_resume)(struct session *s);
    struct rcpt_args ab_rcpt;      /* RCPT waiting for its check */
};

struct cmd_def {
    enum smtp_cmd cmd;
    unsigned flags;
    void (*fn)(struct session *s, const char *args);
};

enum {
    F_NEEDS_TLS = 1,  /* refused with 530 before TLS on a STARTTLS listener */
    F_NEEDS_EHLO = 2, /* 503 before EHLO/HELO */
    F_NEEDS_AUTH = 4, /* 530 before AUTH */
    F_NO_ARGS = 8,    /* 501 when arguments are given */
    F_TRUSTED_OK = 16 /* a trusted client (listener `trusted`) needs neither TLS nor AUTH */
};

static void process(struct session *s);
static void session_free(struct session *s);
static void txn_reset(struct session *s);

/* ---- state and replies ------------------------------------------------ */

static void set_state(struct session *s, enum sstate n)
{
    if (s->state == n)
        return;
    logkv(LOG_LVL_DEBUG, &s->lc, "session.state", "from=%s to=%s transition=\"%s -> %s\"", state_names[s->state],
          state_names[n], state_names[s->state], state_names[n]);
    s->state = n;
}

static void reply(struct session *s, const char *line)
{
    if (s->dead)
        return;
    io_write(s->io, line, strlen(line));
    io_write(s->io, "\r\n", 2);
    if (log_enabled(LOG_LVL_DEBUG))
        logkv(LOG_LVL_DEBUG, &s->lc, "smtp.reply", "reply=%s", log_q((char[LOGQ_MAX]){0}, LOGQ_MAX, line));
}

static void close_after_reply(struct session *s)
{
    if (s->dead)
        return;
    set_state(s, ST_CLOSING);
    io_read_enable(s->io, 0);
    io_set_timeouts(s->io, 0, 10000);
    if (io_output_pending(s->io) == 0) {
        /* nothing to flush: close from the loop, not from under the caller */
        struct timeval zero = {0, 0};
        evtimer_add(s->timer, &zero);
    }
}

/* A reply for a client error: counted; past the limit the session ends. */
static void reply_err(struct session *s, const char *line)
{
    reply(s, line);
    s->errors++;
    if (s->errors >= s->snap.cfg->limits.errors) {
        logkv(LOG_LVL_WARN, &s->lc, "session.too_many_errors", "errors=%u", s->errors);
        reply(s, "421 4.7.0 Too many errors, closing connection");
        close_after_reply(s);
    }
}

static void replyf(struct session *s, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void replyf(struct session *s, int err, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (err)
        reply_err(s, line);
    else
        reply(s, line);
}

static unsigned idle_ms(const struct session *s)
{
    return s->snap.cfg->limits.idle_timeout * 1000u;
}

/* ---- abuse checks (connect, MAIL, RCPT) ------------------------------------ */

static void limit_done(void *arg)
{
    struct session *s = arg;
    s->job_pending = 0;
    if (s->dead) {
        session_free(s);
        return;
    }
    set_state(s, s->ab_prev);
    s->ab_resume(s);
    if (s->state == ST_CLOSING)
        return;
    io_set_timeouts(s->io, idle_ms(s), idle_ms(s));
    io_read_enable(s->io, 1);
    process(s);
}

/* Runs the abuse check of `stage`; resume(s) answers with s->ab's verdict,
 * now or when the backend has answered (the session waits meanwhile). */
static void limit_check(struct session *s, enum abuse_stage stage, uint64_t size, void (*resume)(struct session *s))
{
    struct abuse_call *c = &s->ab;
    c->cfg = s->snap.cfg;
    c->stage = stage;
    c->sa = (const struct sockaddr *)&s->sa;
    c->login = s->authed ? s->login : NULL; /* NULL: a trusted client, counted by address */
    c->size = size;
    c->lc = &s->lc;
    if (abuse_check(s->srv->abuse, c, s->w->home, limit_done, s) == ABUSE_DONE) {
        resume(s);
        return;
    }
    s->ab_prev = s->state;
    s->ab_resume = resume;
    set_state(s, ST_LIMIT_WAIT);
    io_read_enable(s->io, 0);
    io_set_timeouts(s->io, 0, 0);
    s->job_pending = 1;
}

/* ---- transaction -------------------------------------------------------- */

static void hooks_free(struct session *s)
{
    if (!s->txn.hooks_started)
        return;
    for (size_t i = 0; i < msg_hooks_count; i++) {
        if (s->txn.hook_state[i])
            msg_hooks[i]->free(s->txn.hook_state[i]);
        s->txn.hook_state[i] = NULL;
    }
    s->txn.hooks_started = 0;
}

static void txn_reset(struct session *s)
{
    if (s->txn.w)
        spool_writer_abort(s->txn.w);
    hooks_free(s);
    envelope_free(&s->txn.env);
    memset(&s->txn, 0, sizeof(s->txn));
    envelope_init(&s->txn.env);
    s->lc.qid = NULL;
}

static int txn_active(const struct session *s)
{
    return s->state == ST_MAIL || s->state == ST_RCPT;
}

/* ---- data streaming ------------------------------------------------------ */

static int data_sink(void *arg, const char *buf, size_t n)
{
    struct session *s = arg;
    spool_writer_write(s->txn.w, buf, n);
    for (size_t i = 0; i < msg_hooks_count; i++)
        if (msg_hooks[i]->data)
            msg_hooks[i]->data(s->txn.hook_state[i], buf, n);
    return spool_writer_failed(s->txn.w) ? -1 : 0;
}

static struct msg_view make_view(struct session *s)
{
    struct msg_view v = {.cfg = s->snap.cfg, .account = s->account, .login = s->login, .env = &s->txn.env, .lc = &s->lc,
                         .note = s->txn.note, .note_size = sizeof(s->txn.note)};
    return v;
}

/* Opens the spool file and the hooks. 0, or -1 after a 451 reply. */
static int message_begin(struct session *s)
{
    qid_new(s->txn.env.id);
    s->lc.qid = s->txn.env.id;
    s->txn.w = spool_writer_new(s->srv->spool, s->txn.env.id);
    if (!s->txn.w) {
        logkv(LOG_LVL_ERR, &s->lc, "spool.open_failed", "error=%s", log_q((char[LOGQ_MAX]){0}, LOGQ_MAX, strerror(errno)));
        reply(s, "451 4.3.0 Temporary failure storing the message; try again later");
        s->lc.qid = NULL;
        return -1;
    }
    struct msg_view v = make_view(s);
    for (size_t i = 0; i < msg_hooks_count; i++)
        s->txn.hook_state[i] = msg_hooks[i]->begin ? msg_hooks[i]->begin(&v) : NULL;
    s->txn.hooks_started = 1;
    return 0;
}

static const char *flag_reply(enum dp_flag f, const struct session *s, char *buf, size_t n)
{
    switch (f) {
    case DP_BARE_LF:
        return "554 5.6.0 Message refused: bare <LF> in message data; lines must end with <CR><LF>";
    case DP_BARE_CR:
        return "554 5.6.0 Message refused: bare <CR> in message data; lines must end with <CR><LF>";
    case DP_LINE_TOO_LONG:
        snprintf(buf, n, "554 5.6.0 Message refused: a line is longer than %zu octets (RFC 5321 4.5.3.1.6)",
                 s->snap.cfg->limits.text_line_length);
        return buf;
    case DP_TOO_BIG:
        return "552 5.3.4 Message size exceeds fixed maximum message size";
    default:
        return NULL;
    }
}

static void received_header(struct session *s, struct strbuf *b)
{
    const char *proto;
    if (s->ehlo == 2)
        proto = s->tls ? (s->authed ? "ESMTPSA" : "ESMTPS") : (s->authed ? "ESMTPA" : "ESMTP");
    else
        proto = "SMTP";
    char date[64];
    rfc5322_date(time(NULL), date, sizeof(date));
    sb_printf(b, "Received: from %s ([%s])\r\n\tby %s (submitd) with %s", s->helo, s->ip, s->snap.cfg->hostname, proto);
    if (s->tls)
        sb_printf(b, " (%s)", s->tlsdesc);
    sb_printf(b, " id %s", s->txn.env.id);
    if (s->txn.env.nrcpts == 1)
        sb_printf(b, "\r\n\tfor <%s>", s->txn.env.rcpts[0].addr);
    sb_printf(b, ";\r\n\t%s\r\n", date);
}

/* The end-of-data abuse checks (bytes limit and detection; they may ask
 * Redis, then only from a job thread). */
static void abuse_end(struct session *s)
{
    struct abuse_msg *m = &s->txn.abuse;
    *m = (struct abuse_msg){.cfg = s->snap.cfg, .sa = (const struct sockaddr *)&s->sa,
                            .login = s->authed ? s->login : NULL, .env = &s->txn.env, .size = s->txn.env.size, .lc = &s->lc};
    abuse_message(s->srv->abuse, m);
}

static void commit_work(void *arg)
{
    struct session *s = arg;
    struct spool_writer *w = s->txn.w;
    struct abuse_msg *m = &s->txn.abuse;
    s->txn.w = NULL; /* spool_commit frees it either way */
    if (!s->txn.abuse_done)
        abuse_end(s);
    if (m->refused) {
        spool_writer_abort(w);
        s->txn.result = COMMIT_REFUSED;
        return;
    }
    errno = 0;
    s->txn.result = spool_commit(w, &s->txn.env);
    s->txn.result_errno = errno;
    if (s->txn.result == 0 && m->hold) /* durable before the 250 */
        s->txn.held = queue_submit_held(s->srv->queue, s->txn.env.id, m->reason) == 0 ? 1 : -1;
}

static void commit_done(void *arg)
{
    struct session *s = arg;
    if (s->txn.result == COMMIT_RETRY) { /* the journal had no room: txn.w as a file, on a job thread */
        jobq_submit(s->srv->commit_jobs, s->w->home, commit_work, commit_done, s);
        return;
    }
    s->txn.w = NULL; /* freed by the commit (commit_work has cleared it already) */
    s->job_pending = 0;
    char q[LOGQ_MAX];
    if (s->txn.result == 0) {
        logkv(LOG_LVL_INFO, &s->lc, "queued", "from=<%s> nrcpt=%zu size=%llu%s%s%s",
              log_q(q, sizeof(q), s->txn.env.mail_from), s->txn.env.nrcpts, (unsigned long long)s->txn.env.size,
              s->authed ? "" : " trusted=yes", s->txn.held == 1 ? " held=abuse" : "", s->txn.note);
        if (s->txn.held == -1) /* committed, but the hold could not be recorded: deliver rather than strand it */
            logkv(LOG_LVL_ERR, &s->lc, "abuse.hold_failed", "note=\"delivering it normally\"");
        if (s->txn.held != 1)
            queue_submit(s->srv->queue, s->txn.env.id);
        replyf(s, 0, "250 2.0.0 Ok: queued as %s", s->txn.env.id);
    } else if (s->txn.result == COMMIT_REFUSED) {
        reply(s, s->txn.abuse.reply);
    } else {
        logkv(LOG_LVL_ERR, &s->lc, "spool.commit_failed", "error=%s",
              log_q(q, sizeof(q), strerror(s->txn.result_errno)));
        reply(s, "451 4.3.0 Temporary failure storing the message; try again later");
    }
    s->messages++;
    txn_reset(s);
    if (s->dead) {
        session_free(s);
        return;
    }
    set_state(s, ST_READY);
    io_set_timeouts(s->io, idle_ms(s), idle_ms(s));
    io_read_enable(s->io, 1);
    process(s);
}

/* A journal thread: the asynchronous commit finished. */
static void commit_async_cb(void *arg, int rc, int err)
{
    struct session *s = arg;
    s->txn.result = rc;
    s->txn.result_errno = err;
    jobq_home_post(s->w->home, commit_done, s);
}

/* Starts the commit of the finished message (state ST_COMMIT). Without
 * Redis the abuse checks run here, and a message bound for the journal
 * is appended asynchronously: its lane thread's group commit calls back,
 * and no job thread is woken. Redis, a hold, or a message in a file take
 * the commit job. txn.w stays set meanwhile but is the spool's until
 * commit_done (nothing touches it while job_pending). */
static void commit_start(struct session *s)
{
    if (s->txn.abuse_done && !s->txn.abuse.hold &&
        spool_commit_async(s->txn.w, &s->txn.env, commit_async_cb, s) == 0)
        return;
    jobq_submit(s->srv->commit_jobs, s->w->home, commit_work, commit_done, s);
}

/* End of DATA or BDAT LAST: checks, then the commit (commit_start). */
static void message_end(struct session *s, enum dp_flag flag)
{
    char buf[256];
    const char *fr = flag_reply(flag, s, buf, sizeof(buf));
    if (fr) {
        logkv(LOG_LVL_WARN, &s->lc, "message.refused", "reason=%d", (int)flag);
        reply_err(s, fr);
        txn_reset(s);
        if (s->state != ST_CLOSING)
            set_state(s, ST_READY);
        return;
    }
    if (spool_writer_failed(s->txn.w)) {
        logkv(LOG_LVL_ERR, &s->lc, "spool.write_failed", "error=%s",
              log_q(buf, sizeof(buf), strerror(spool_writer_failed(s->txn.w))));
        reply(s, "451 4.3.0 Temporary failure storing the message; try again later");
        txn_reset(s);
        set_state(s, ST_READY);
        return;
    }
    struct strbuf prepend;
    sb_init(&prepend);
    if (s->snap.cfg->add_received)
        received_header(s, &prepend);
    struct msg_view v = make_view(s);
    char rtext[600];
    for (size_t i = 0; i < msg_hooks_count; i++) {
        if (msg_hooks[i]->end && msg_hooks[i]->end(s->txn.hook_state[i], &v, &prepend, rtext, sizeof(rtext))) {
            sb_free(&prepend);
            reply_err(s, rtext);
            txn_reset(s);
            if (s->state != ST_CLOSING)
                set_state(s, ST_READY);
            return;
        }
    }
    struct envelope *e = &s->txn.env;
    free(e->prepend);
    e->prepend = sb_steal(&prepend);
    e->mail_from = e->mail_from ? e->mail_from : xstrdup("");
    e->auth_user = s->authed ? xstrdup(s->login) : NULL;
    e->client_ip = xstrdup(s->ip);
    e->helo = xstrdup(s->helo);
    e->listener = xstrdup(s->lcfg->name);
    e->body = (int)s->txn.mail.body;
    e->smtputf8 = s->txn.mail.smtputf8;
    e->dsn_ret = (int)s->txn.mail.ret;
    e->envid = s->txn.mail.envid[0] ? xstrdup(s->txn.mail.envid) : NULL;
    e->received = (int64_t)time(NULL);
    e->size = spool_writer_size(s->txn.w);
    hooks_free(s);
    if (!abuse_remote(s->srv->abuse)) {
        abuse_end(s);
        s->txn.abuse_done = 1;
        if (s->txn.abuse.refused) {
            reply(s, s->txn.abuse.reply);
            s->messages++;
            txn_reset(s);
            if (s->state != ST_CLOSING)
                set_state(s, ST_READY);
            return;
        }
    }
    set_state(s, ST_COMMIT);
    io_read_enable(s->io, 0);
    io_set_timeouts(s->io, 0, 0);
    s->job_pending = 1;
    commit_start(s);
}

/* Feeds buffered DATA content to the parser. Returns 1 when the end was
 * reached (and handled), 0 when more input is needed. */
static int feed_data(struct session *s)
{
    struct evbuffer *in = io_input(s->io);
    struct evbuffer_iovec v[16];
    int nv = evbuffer_peek(in, -1, NULL, v, 16);
    size_t used = 0;
    int done = 0;
    for (int i = 0; i < nv && i < 16 && !done; i++) {
        size_t c = 0;
        if (data_parser_feed(&s->txn.dp, v[i].iov_base, v[i].iov_len, &c) == DP_DONE)
            done = 1;
        used += c;
    }
    evbuffer_drain(in, used);
    if (!done)
        return 0;
    enum dp_flag f = s->txn.dp.flag;
    message_end(s, f);
    return 1;
}

static void bdat_chunk_done(struct session *s)
{
    struct txn *t = &s->txn;
    if (t->chunk_discard) {
        int why = t->chunk_discard;
        t->chunk_discard = 0;
        set_state(s, s->bdat_prev_state);
        if (why == BDAT_BAD_SEQUENCE)
            reply_err(s, "503 5.5.1 Need MAIL and RCPT before BDAT");
        /* BDAT_DROP: the 4xx/5xx for this chunk was sent already */
        return;
    }
    enum dp_flag f = t->bc.flag;
    if (t->chunk_last) {
        f = bdat_checker_finish(&t->bc);
        message_end(s, f);
        return;
    }
    /* A problem seen in this chunk ends the transaction now (RFC 3030:
     * the client must not send more chunks after a 4xx/5xx). */
    if (f != DP_FLAG_NONE || spool_writer_failed(t->w)) {
        message_end(s, f);
        return;
    }
    replyf(s, 0, "250 2.0.0 %llu octets received", (unsigned long long)t->chunk_size);
    set_state(s, ST_RCPT);
}

/* Reads buffered BDAT chunk bytes. Returns 1 when the chunk is complete. */
static int feed_bdat(struct session *s)
{
    struct txn *t = &s->txn;
    struct evbuffer *in = io_input(s->io);
    while (t->chunk_left > 0) {
        size_t avail = evbuffer_get_length(in);
        if (avail == 0)
            return 0;
        size_t take = avail < t->chunk_left ? avail : (size_t)t->chunk_left;
        struct evbuffer_iovec v[16];
        int nv = evbuffer_peek(in, (ev_ssize_t)take, NULL, v, 16);
        size_t used = 0;
        for (int i = 0; i < nv && i < 16 && used < take; i++) {
            size_t c = v[i].iov_len < take - used ? v[i].iov_len : take - used;
            if (!t->chunk_discard)
                bdat_checker_feed(&t->bc, v[i].iov_base, c);
            used += c;
        }
        evbuffer_drain(in, used);
        t->chunk_left -= used;
    }
    bdat_chunk_done(s);
    return 1;
}

/* ---- AUTH ---------------------------------------------------------------- */

enum { AUTH_BAD = 0, AUTH_OK = 1, AUTH_SUSPENDED = 2, AUTH_REFUSED = 3 /* abuse: blocked or over a limit */ };

struct auth_job {
    struct session *s;
    struct accounts *acc;
    char login[SASL_USER_MAX + 1];
    char pass[SASL_PASS_MAX + 1];
    const struct account *account;
    struct authcache *cache;
    struct jobq *jobs; /* the auth threads (a cache renewal goes there) */
    struct abuse *abuse;
    struct abuse_auth ab;
    int cache_hit; /* verified from the cache (inline, or on the job thread) */
    int result;
};

/* 1 when the cache vouches for the job's password; a hit near the end of
 * the entry's life also has it verified again in the background. */
static int cache_lookup(struct auth_job *j, const struct account *a)
{
    int r = authcache_check(j->cache, a->login, j->pass, a->hash);
    if (r == AUTHCACHE_REFRESH)
        authcache_refresh(j->cache, j->jobs, j->acc, a->login, j->pass, a->hash);
    return r != AUTHCACHE_MISS;
}

/* The abuse checks around the verification. On an AUTH job thread, or
 * inline for a cache hit when the checks cannot block. */
static void auth_work(void *arg)
{
    struct auth_job *j = arg;
    abuse_auth_begin(j->abuse, &j->ab);
    if (j->ab.refused) {
        mem_wipe(j->pass, sizeof(j->pass));
        j->result = AUTH_REFUSED;
        return;
    }
    const struct account *a = j->acc ? accounts_find(j->acc, j->login) : NULL;
    if (!a) {
        passwd_verify_dummy(j->pass);
        j->result = AUTH_BAD;
    } else {
        /* Look again on the job thread: the logins that queued behind a
         * verification of the same password (a burst of connections as
         * the entry expired, or every login when the abuse checks ask
         * Redis and there is no inline path) find its result here instead
         * of running the slow hash once each. */
        if (!j->cache_hit && !a->suspended)
            j->cache_hit = cache_lookup(j, a);
        int r = j->cache_hit ? 1 : passwd_verify(a->hash, j->pass);
        if (r == 1 && !j->cache_hit)
            authcache_put(j->cache, a->login, j->pass, a->hash);
        j->result = r == 1 ? (a->suspended ? AUTH_SUSPENDED : AUTH_OK) : AUTH_BAD;
        j->account = a;
    }
    mem_wipe(j->pass, sizeof(j->pass));
    abuse_auth_end(j->abuse, &j->ab, j->result != AUTH_BAD);
    if (j->result == AUTH_OK && j->ab.suspended)
        j->result = AUTH_SUSPENDED; /* suspended by the abuse controls */
}

/* After a failed or refused AUTH: the reply, the per-session limit, then
 * reading again (unless called from inside the input loop). */
static void auth_failed_reply(struct session *s, const char *text, int inline_call)
{
    reply(s, text);
    if (s->auth_failures >= s->snap.cfg->limits.auth_failures) {
        logkv(LOG_LVL_WARN, &s->lc, "auth.too_many_failures", "failures=%u", s->auth_failures);
        reply(s, "421 4.7.0 Too many failed authentication attempts, closing connection");
        close_after_reply(s);
        return;
    }
    set_state(s, s->ehlo ? ST_READY : ST_GREETED);
    if (inline_call)
        return;
    io_set_timeouts(s->io, idle_ms(s), idle_ms(s));
    io_read_enable(s->io, 1);
    process(s);
}

/* The failure delay is over. */
static void auth_fail_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    auth_failed_reply(arg, "535 5.7.8 Authentication credentials invalid", 0);
}

/* Takes over the reference `acc`. `inline_call`: called from inside the
 * input loop (cache hit), which then simply goes on; otherwise resume
 * reading. `cached`: verified from the cache (logged). */
static void auth_success(struct session *s, struct accounts *acc, const struct account *a, const char *login,
                         int inline_call, int cached)
{
    char q[LOGQ_MAX];
    s->authed = 1;
    s->acc = acc;
    s->account = a;
    str_copy(s->login, login, sizeof(s->login));
    s->lc.user = s->login;
    logkv(LOG_LVL_INFO, &s->lc, "auth.ok", "login=%s cached=%d", log_q(q, sizeof(q), login), cached);
    reply(s, "235 2.7.0 Authentication successful");
    set_state(s, ST_READY);
    if (inline_call)
        return;
    io_set_timeouts(s->io, idle_ms(s), idle_ms(s));
    io_read_enable(s->io, 1);
    process(s);
}

/* The verdict of auth_work, on the session's loop; `inline_call`: from
 * inside the input loop (cache hit on the fast path). */
static void auth_finish(struct session *s, struct auth_job *j, int inline_call)
{
    if (j->result == AUTH_OK) {
        auth_success(s, j->acc, j->account, j->login, inline_call, j->cache_hit);
        free(j);
        return;
    }
    char q[LOGQ_MAX];
    accounts_unref(j->acc);
    if (j->result == AUTH_SUSPENDED) {
        logkv(LOG_LVL_WARN, &s->lc, "auth.suspended", "login=%s", log_q(q, sizeof(q), j->login));
        free(j);
        reply_err(s, "525 5.7.13 User account disabled");
        if (s->state != ST_CLOSING) {
            set_state(s, ST_READY);
            if (!inline_call) {
                io_set_timeouts(s->io, idle_ms(s), idle_ms(s));
                io_read_enable(s->io, 1);
                process(s);
            }
        }
        return;
    }
    s->auth_failures++;
    if (j->result == AUTH_REFUSED) {
        logkv(LOG_LVL_WARN, &s->lc, "auth.refused", "login=%s reply=%s", log_q(q, sizeof(q), j->login),
              log_q((char[LOGQ_MAX]){0}, LOGQ_MAX, j->ab.reply));
        char text[ABUSE_REPLY_MAX];
        str_copy(text, j->ab.reply, sizeof(text));
        free(j);
        auth_failed_reply(s, text, inline_call);
        return;
    }
    unsigned delay = j->ab.delay_ms;
    logkv(LOG_LVL_WARN, &s->lc, "auth.failed", "login=%s ip_failures=%u delay_ms=%u", log_q(q, sizeof(q), j->login),
          j->ab.failures, delay);
    free(j);
    struct timeval tv = {(time_t)(delay / 1000), (suseconds_t)((delay % 1000) * 1000)};
    evtimer_add(s->timer, &tv);
}

static void auth_done(void *arg)
{
    struct auth_job *j = arg;
    struct session *s = j->s;
    s->job_pending = 0;
    if (s->dead) {
        accounts_unref(j->acc);
        free(j);
        session_free(s);
        return;
    }
    auth_finish(s, j, 0);
}

static void auth_verify(struct session *s)
{
    struct auth_job *j = xcalloc(1, sizeof(*j));
    j->s = s;
    j->acc = server_accounts(s->srv);
    j->cache = s->srv->authcache;
    j->jobs = s->srv->auth_jobs;
    j->abuse = s->srv->abuse;
    str_copy(j->login, s->sasl->user, sizeof(j->login));
    memcpy(j->pass, s->sasl->pass, sizeof(j->pass));
    j->ab = (struct abuse_auth){.cfg = s->snap.cfg, .sa = (const struct sockaddr *)&s->sa, .login = j->login,
                                .lc = &s->lc};
    sasl_clear(s->sasl);
    free(s->sasl);
    s->sasl = NULL;
    set_state(s, ST_AUTH_WAIT);
    /* Fast path: verified recently with this very password and hash, and
     * the abuse checks answer without blocking. */
    const struct account *a = j->acc ? accounts_find(j->acc, j->login) : NULL;
    if (a && !a->suspended && !abuse_remote(j->abuse) && cache_lookup(j, a)) {
        j->cache_hit = 1;
        auth_work(j);
        auth_finish(s, j, 1);
        return;
    }
    io_read_enable(s->io, 0);
    io_set_timeouts(s->io, 0, 0);
    s->job_pending = 1;
    jobq_submit(s->srv->auth_jobs, s->w->home, auth_work, auth_done, j);
}

static void auth_result(struct session *s, enum sasl_res r, const char *challenge)
{
    switch (r) {
    case SASL_CONTINUE:
        replyf(s, 0, "334 %s", challenge);
        set_state(s, ST_AUTH);
        return;
    case SASL_DONE:
        auth_verify(s);
        return;
    default:
        break;
    }
    if (s->sasl) {
        sasl_clear(s->sasl);
        free(s->sasl);
        s->sasl = NULL;
    }
    set_state(s, ST_READY);
    switch (r) {
    case SASL_CANCELLED:
        reply_err(s, "501 5.7.0 Authentication cancelled");
        break;
    case SASL_BAD_BASE64:
        reply_err(s, "501 5.5.2 Invalid base64 data");
        break;
    case SASL_BAD_MECH:
        reply_err(s, "504 5.5.4 Unrecognized authentication type");
        break;
    default:
        reply_err(s, "501 5.5.2 Malformed authentication data");
        break;
    }
}

/* ---- commands ------------------------------------------------------------ */

static void do_ehlo_helo(struct session *s, const char *args, int ehlo)
{
    size_t n = strlen(args);
    if (n == 0 || n > 255 || strpbrk(args, " \t")) {
        replyf(s, 1, "501 5.5.4 Syntax: %s hostname", ehlo ? "EHLO" : "HELO");
        return;
    }
    txn_reset(s);
    str_copy(s->helo, args, sizeof(s->helo));
    s->ehlo = ehlo ? 2 : 1;
    set_state(s, ST_READY);
    const struct config *c = s->snap.cfg;
    if (!ehlo) {
        replyf(s, 0, "250 %s", c->hostname);
        return;
    }
    struct strbuf b;
    sb_init(&b);
    sb_printf(&b, "250-%s Hello [%s]\r\n", c->hostname, s->ip);
    sb_printf(&b, "250-PIPELINING\r\n250-SIZE %llu\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n"
                  "250-CHUNKING\r\n",
              (unsigned long long)c->limits.message_size);
    if (!s->tls && s->lcfg->mode == LISTEN_STARTTLS && s->snap.tls)
        sb_puts(&b, "250-STARTTLS\r\n");
    if (s->tls && !s->authed)
        sb_puts(&b, "250-AUTH PLAIN LOGIN\r\n");
    sb_puts(&b, "250 DSN\r\n");
    io_write(s->io, b.s, b.len);
    sb_free(&b);
}

static void cmd_helo(struct session *s, const char *args)
{
    do_ehlo_helo(s, args, 0);
}

static void cmd_ehlo(struct session *s, const char *args)
{
    do_ehlo_helo(s, args, 1);
}

static void cmd_starttls(struct session *s, const char *args)
{
    if (s->tls || s->lcfg->mode != LISTEN_STARTTLS || !s->snap.tls) {
        reply_err(s, "503 5.5.1 TLS already active");
        return;
    }
    SSL *ssl = tls_server_ssl(s->snap.tls);
    if (!ssl) {
        reply(s, "454 4.7.0 TLS not available due to temporary reason");
        return;
    }
    reply(s, "220 2.0.0 Ready to start TLS");
    /* RFC 3207 4.2: forget everything learnt before TLS. */
    txn_reset(s);
    s->ehlo = 0;
    s->helo[0] = '\0';
    line_reader_init(&s->lr, s->lr.max);
    set_state(s, ST_TLS_HANDSHAKE);
    io_set_timeouts(s->io, s->snap.cfg->tls.handshake_timeout * 1000u, s->snap.cfg->tls.handshake_timeout * 1000u);
    if (io_starttls(s->io, ssl, 1) != 0) {
        logkv(LOG_LVL_ERR, &s->lc, "tls.starttls_failed", NULL);
        close_after_reply(s);
    }
}

static void cmd_auth(struct session *s, const char *args)
{
    if (s->authed) {
        reply_err(s, "503 5.5.1 Already authenticated");
        return;
    }
    if (txn_active(s)) {
        reply_err(s, "503 5.5.1 AUTH not allowed during a mail transaction");
        return;
    }
    char challenge[64];
    s->sasl = xcalloc(1, sizeof(*s->sasl));
    enum sasl_res r = sasl_start(s->sasl, args, challenge, sizeof(challenge));
    auth_result(s, r, challenge);
}

/* MAIL after its abuse check (suspension, messages and bytes per account). */
static void mail_checked(struct session *s)
{
    struct mail_args *m = &s->txn.mail;
    if (s->ab.refused) {
        memset(m, 0, sizeof(*m));
        reply(s, s->ab.reply);
        return;
    }
    free(s->txn.env.mail_from);
    s->txn.env.mail_from = xstrdup(m->path);
    set_state(s, ST_MAIL);
    reply(s, "250 2.1.0 Ok");
}

static void cmd_mail(struct session *s, const char *args)
{
    const struct config *c = s->snap.cfg;
    if (txn_active(s)) {
        reply_err(s, "503 5.5.1 Nested MAIL command");
        return;
    }
    if (s->messages >= c->limits.messages) {
        reply(s, "421 4.7.0 Too many messages in this session; reconnect to send more");
        close_after_reply(s);
        return;
    }
    enum path_err pe;
    char detail[128] = "";
    struct mail_args *m = &s->txn.mail;
    if (smtp_parse_mail(args, m, &pe, detail, sizeof(detail)) != 0) {
        switch (pe) {
        case PE_ADDRESS:
            replyf(s, 1, "501 5.1.7 Bad sender address syntax");
            break;
        case PE_PARAM_UNKNOWN:
            replyf(s, 1, "555 5.5.4 Syntax error: %s", detail);
            break;
        case PE_UTF8_NEEDS_SMTPUTF8:
            replyf(s, 1, "553 5.6.7 Non-ASCII address requires SMTPUTF8");
            break;
        case PE_PARAM_VALUE:
        case PE_PARAM_DUP:
        case PE_TOO_LONG:
            replyf(s, 1, "501 5.5.4 Bad parameter: %s", detail);
            break;
        default:
            replyf(s, 1, "501 5.5.4 Syntax: MAIL FROM:<address>");
            break;
        }
        memset(m, 0, sizeof(*m));
        return;
    }
    if (m->has_size && m->size > c->limits.message_size) {
        memset(m, 0, sizeof(*m));
        reply_err(s, "552 5.3.4 Message size exceeds fixed maximum message size");
        return;
    }
    struct policy_req req = {.cfg = c, .account = s->account, .login = s->login, .trusted = s->trusted && !s->authed,
                             .client_ip = s->ip, .addr = m->path, .lc = &s->lc};
    struct policy_reply pr;
    if (policy_check_mail(&req, &pr)) {
        memset(m, 0, sizeof(*m));
        reply_err(s, pr.text);
        return;
    }
    limit_check(s, ABUSE_MAIL, m->has_size ? m->size : 0, mail_checked);
}

/* RCPT after its abuse check (recipients per account). */
static void rcpt_checked(struct session *s)
{
    const struct rcpt_args *r = &s->ab_rcpt;
    if (s->ab.refused) {
        reply(s, s->ab.reply);
        return;
    }
    envelope_add_rcpt(&s->txn.env, r->path, r->notify, r->orcpt[0] ? r->orcpt : NULL);
    set_state(s, ST_RCPT);
    reply(s, "250 2.1.5 Ok");
}

static void cmd_rcpt(struct session *s, const char *args)
{
    const struct config *c = s->snap.cfg;
    if (!txn_active(s)) {
        reply_err(s, "503 5.5.1 Need MAIL command");
        return;
    }
    if (s->txn.env.nrcpts >= c->limits.recipients) {
        reply(s, "452 4.5.3 Too many recipients");
        return;
    }
    struct rcpt_args r;
    enum path_err pe;
    char detail[128] = "";
    if (smtp_parse_rcpt(args, s->txn.mail.smtputf8, &r, &pe, detail, sizeof(detail)) != 0) {
        switch (pe) {
        case PE_ADDRESS:
            replyf(s, 1, "501 5.1.3 Bad recipient address syntax");
            break;
        case PE_PARAM_UNKNOWN:
            replyf(s, 1, "555 5.5.4 Syntax error: %s", detail);
            break;
        case PE_UTF8_NEEDS_SMTPUTF8:
            replyf(s, 1, "553 5.6.7 Non-ASCII address requires SMTPUTF8");
            break;
        case PE_PARAM_VALUE:
        case PE_PARAM_DUP:
        case PE_TOO_LONG:
            replyf(s, 1, "501 5.5.4 Bad parameter: %s", detail);
            break;
        default:
            replyf(s, 1, "501 5.5.4 Syntax: RCPT TO:<address>");
            break;
        }
        return;
    }
    struct policy_req req = {.cfg = c, .account = s->account, .login = s->login, .trusted = s->trusted && !s->authed,
                             .client_ip = s->ip, .addr = r.path, .nrcpts = (unsigned)s->txn.env.nrcpts, .lc = &s->lc};
    struct policy_reply pr;
    if (policy_check_rcpt(&req, &pr)) {
        reply_err(s, pr.text);
        return;
    }
    s->ab_rcpt = r;
    limit_check(s, ABUSE_RCPT, 0, rcpt_checked);
}

static void cmd_data(struct session *s, const char *args)
{
    if (s->state == ST_MAIL) {
        reply_err(s, "503 5.5.1 Need RCPT command");
        return;
    }
    if (s->state != ST_RCPT) {
        reply_err(s, "503 5.5.1 Need MAIL command");
        return;
    }
    if (s->txn.used_bdat) {
        reply_err(s, "503 5.5.1 DATA after BDAT not allowed; send RSET");
        return;
    }
    if (message_begin(s) != 0)
        return;
    const struct limits_cfg *L = &s->snap.cfg->limits;
    data_parser_init(&s->txn.dp, L->text_line_length, L->message_size, data_sink, s);
    set_state(s, ST_DATA);
    io_set_timeouts(s->io, L->data_timeout * 1000u, L->data_timeout * 1000u);
    reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

static void cmd_bdat(struct session *s, const char *args)
{
    /* BDAT <size> [LAST] */
    const char *p = args;
    uint64_t n = 0;
    int digits = 0;
    while (*p >= '0' && *p <= '9' && digits < 19) {
        n = n * 10 + (uint64_t)(*p - '0');
        p++;
        digits++;
    }
    int last = 0;
    if (digits > 0 && *p == ' ' && str_ieq(p + 1, "LAST"))
        last = 1;
    else if (digits == 0 || *p != '\0') {
        /* The chunk size is unknown: the stream cannot be resynchronised. */
        reply(s, "501 5.5.4 Syntax: BDAT size [LAST]; closing connection");
        close_after_reply(s);
        return;
    }
    struct txn *t = &s->txn;
    t->chunk_left = n;
    t->chunk_size = n;
    t->chunk_last = last;
    t->chunk_discard = 0;
    s->bdat_prev_state = s->state;
    if (s->state != ST_RCPT) {
        t->chunk_discard = BDAT_BAD_SEQUENCE;
    } else if (!t->used_bdat) {
        if (message_begin(s) != 0) {
            t->chunk_discard = BDAT_DROP; /* 451 sent: read the chunk and drop it */
        } else {
            const struct limits_cfg *L = &s->snap.cfg->limits;
            bdat_checker_init(&t->bc, L->text_line_length, L->message_size, data_sink, s);
            t->used_bdat = 1;
        }
    }
    set_state(s, ST_BDAT);
    const struct limits_cfg *L = &s->snap.cfg->limits;
    io_set_timeouts(s->io, L->data_timeout * 1000u, L->data_timeout * 1000u);
}

static void cmd_rset(struct session *s, const char *args)
{
    txn_reset(s);
    set_state(s, s->ehlo ? ST_READY : ST_GREETED);
    reply(s, "250 2.0.0 Ok");
}

static void cmd_noop(struct session *s, const char *args)
{
    reply(s, "250 2.0.0 Ok");
}

static void cmd_quit(struct session *s, const char *args)
{
    reply(s, "221 2.0.0 Bye");
    close_after_reply(s);
}

static void cmd_help(struct session *s, const char *args)
{
    reply(s, "214 2.0.0 Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY; see RFC 5321");
}

static void cmd_vrfy(struct session *s, const char *args)
{
    reply(s, "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery");
}

static void cmd_expn(struct session *s, const char *args)
{
    reply_err(s, "502 5.5.1 EXPN not supported");
}

static const struct cmd_def commands[CMD__COUNT] = {
    [CMD_HELO] = {CMD_HELO, 0, cmd_helo},
    [CMD_EHLO] = {CMD_EHLO, 0, cmd_ehlo},
    [CMD_STARTTLS] = {CMD_STARTTLS, F_NO_ARGS, cmd_starttls},
    [CMD_AUTH] = {CMD_AUTH, F_NEEDS_TLS | F_NEEDS_EHLO, cmd_auth},
    [CMD_MAIL] = {CMD_MAIL, F_NEEDS_TLS | F_NEEDS_EHLO | F_NEEDS_AUTH | F_TRUSTED_OK, cmd_mail},
    [CMD_RCPT] = {CMD_RCPT, F_NEEDS_TLS | F_NEEDS_EHLO | F_NEEDS_AUTH | F_TRUSTED_OK, cmd_rcpt},
    [CMD_DATA] = {CMD_DATA, F_NEEDS_TLS | F_NEEDS_EHLO | F_NEEDS_AUTH | F_NO_ARGS | F_TRUSTED_OK, cmd_data},
    [CMD_BDAT] = {CMD_BDAT, 0, cmd_bdat}, /* checks its sequence itself: it must read the chunk */
    [CMD_RSET] = {CMD_RSET, F_NO_ARGS, cmd_rset},
    [CMD_NOOP] = {CMD_NOOP, 0, cmd_noop},
    [CMD_QUIT] = {CMD_QUIT, 0, cmd_quit},
    [CMD_HELP] = {CMD_HELP, 0, cmd_help},
    [CMD_VRFY] = {CMD_VRFY, 0, cmd_vrfy},
    [CMD_EXPN] = {CMD_EXPN, 0, cmd_expn},
};

static void handle_command(struct session *s, const char *line, size_t len)
{
    const char *args = "";
    enum smtp_cmd c = smtp_cmd_parse(line, len, &args);
    char q[LOGQ_MAX];
    if (c == CMD_AUTH)
        logkv(LOG_LVL_DEBUG, &s->lc, "smtp.command", "cmd=AUTH"); /* never log AUTH payloads */
    else if (log_enabled(LOG_LVL_DEBUG)) /* log_q quotes the whole line: not for nothing */
        logkv(LOG_LVL_DEBUG, &s->lc, "smtp.command", "line=%s", log_q(q, sizeof(q), line));
    if (c == CMD_INVALID) {
        reply_err(s, "500 5.5.2 Error: invalid characters in command");
        return;
    }
    if (c == CMD_UNKNOWN) {
        reply_err(s, "500 5.5.2 Error: command not recognized");
        return;
    }
    if (c != CMD_AUTH && len + 2 > s->snap.cfg->limits.line_length) {
        reply_err(s, "500 5.5.6 Line too long");
        return;
    }
    const struct cmd_def *d = &commands[c];
    int trust = (d->flags & F_TRUSTED_OK) && s->trusted;
    if ((d->flags & F_NEEDS_TLS) && !trust && !s->tls && s->lcfg->mode == LISTEN_STARTTLS) {
        reply_err(s, "530 5.7.0 Must issue a STARTTLS command first");
        return;
    }
    if ((d->flags & F_NEEDS_EHLO) && !s->ehlo) {
        reply_err(s, "503 5.5.1 Error: send EHLO/HELO first");
        return;
    }
    if ((d->flags & F_NEEDS_AUTH) && !trust && !s->authed) {
        reply_err(s, "530 5.7.0 Authentication required");
        return;
    }
    if ((d->flags & F_NO_ARGS) && *args) {
        replyf(s, 1, "501 5.5.4 Syntax: %s takes no arguments", smtp_cmd_name(c));
        return;
    }
    d->fn(s, args);
}

/* ---- input loop ---------------------------------------------------------- */

static int waiting(const struct session *s)
{
    return s->dead || s->state == ST_TLS_HANDSHAKE || s->state == ST_AUTH_WAIT || s->state == ST_COMMIT ||
           s->state == ST_CLOSING || s->state == ST_LIMIT_WAIT;
}

static void process(struct session *s)
{
    while (!waiting(s)) {
        if (s->state == ST_DATA) {
            if (!feed_data(s))
                return;
            continue;
        }
        if (s->state == ST_BDAT) {
            if (!feed_bdat(s))
                return;
            continue;
        }
        if (s->shutdown_requested && !txn_active(s) && s->state != ST_AUTH) {
            reply(s, "421 4.3.2 Server shutting down");
            close_after_reply(s);
            return;
        }
        if (io_output_pending(s->io) > OUT_HIGH_WATER)
            return; /* resumed by the drained callback */
        struct evbuffer *in = io_input(s->io);
        size_t len = evbuffer_get_length(in);
        if (len == 0)
            return;
        size_t want = len < s->lr.max + 1 ? len : s->lr.max + 1;
        const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)want);
        size_t ll = 0, consumed = 0;
        enum line_res r = line_reader_next(&s->lr, p, want, &ll, &consumed);
        if (r == LINE_NEED_MORE) {
            evbuffer_drain(in, consumed);
            if (consumed == 0)
                return;
            continue;
        }
        if (r == LINE_TOO_LONG) {
            evbuffer_drain(in, consumed);
            if (s->state == ST_AUTH) {
                auth_result(s, SASL_BAD_SYNTAX, NULL);
                continue;
            }
            reply_err(s, "500 5.5.6 Line too long");
            continue;
        }
        char *line = xmalloc(ll + 1);
        memcpy(line, p, ll);
        line[ll] = '\0';
        evbuffer_drain(in, consumed);
        if (s->state == ST_AUTH) {
            char challenge[64];
            /* a NUL would cut the response short: refuse it whole */
            enum sasl_res sr = memchr(line, '\0', ll) ? SASL_BAD_SYNTAX
                                                      : sasl_step(s->sasl, line, challenge, sizeof(challenge));
            mem_wipe(line, ll);
            free(line);
            auth_result(s, sr, challenge);
            continue;
        }
        handle_command(s, line, ll);
        free(line);
    }
}

static void on_read(struct io *io, void *arg)
{
    (void)io;
    process(arg);
}

static void on_drained(struct io *io, void *arg)
{
    struct session *s = arg;
    (void)io;
    if (s->state == ST_CLOSING) {
        session_free(s);
        return;
    }
    process(s);
}

static void greet(struct session *s)
{
    replyf(s, 0, "220 %s ESMTP submitd", s->snap.cfg->hostname);
}

/* The greeting after the connection-rate check (421 4.7.1 and close over it). */
static void greet_checked(struct session *s)
{
    if (s->ab.refused) {
        reply(s, s->ab.reply);
        close_after_reply(s);
        return;
    }
    greet(s);
}

static void start_greeting(struct session *s)
{
    limit_check(s, ABUSE_CONNECT, 0, greet_checked);
}

static void on_event(struct io *io, enum io_event ev, void *arg)
{
    struct session *s = arg;
    (void)io;
    if (ev == IO_EV_TLS_READY) {
        SSL *ssl = io_ssl(s->io);
        s->tls = 1;
        tls_describe(ssl, s->tlsdesc, sizeof(s->tlsdesc));
        snprintf(s->tlslog, sizeof(s->tlslog), "%s/%s", tls_version(ssl), tls_cipher(ssl));
        s->lc.tls = s->tlslog;
        logkv(LOG_LVL_INFO, &s->lc, "tls.established", "listener=%s", s->lcfg->name);
        int implicit = s->lcfg->mode == LISTEN_IMPLICIT_TLS;
        set_state(s, ST_GREETED);
        io_set_timeouts(s->io, idle_ms(s), idle_ms(s));
        if (implicit)
            start_greeting(s);
        process(s);
        return;
    }
    if (ev == IO_EV_TIMEOUT) {
        logkv(LOG_LVL_INFO, &s->lc, "session.timeout", "state=%s", state_names[s->state]);
        if (s->state != ST_CLOSING && s->state != ST_TLS_HANDSHAKE) {
            replyf(s, 0, "421 4.4.2 %s Error: timeout exceeded", s->snap.cfg->hostname);
            close_after_reply(s);
            return;
        }
        session_free(s);
        return;
    }
    if (s->state == ST_TLS_HANDSHAKE)
        logkv(LOG_LVL_INFO, &s->lc, "tls.failed", "reason=%s", ev == IO_EV_EOF ? "eof" : "handshake_error");
    else if (s->state == ST_DATA || s->state == ST_BDAT)
        logkv(LOG_LVL_INFO, &s->lc, "session.lost", "state=%s bytes=%llu", state_names[s->state],
              (unsigned long long)(s->txn.w ? spool_writer_size(s->txn.w) : 0));
    session_free(s);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    if (s->state == ST_CLOSING)
        session_free(s);
    else if (s->state == ST_AUTH_WAIT)
        auth_fail_timer(fd, what, arg);
}

/* ---- lifecycle ------------------------------------------------------------ */

struct session *session_new(struct worker *w, int fd, const struct sockaddr *sa, socklen_t salen, size_t listener)
{
    struct server *srv = w->srv;
    struct session *s = xcalloc(1, sizeof(*s));
    s->w = w;
    s->srv = srv;
    s->listener = listener;
    server_snap_take(srv, listener, &s->snap);
    s->lcfg = &s->snap.cfg->listeners[listener];
    memcpy(&s->sa, sa, salen < sizeof(s->sa) ? salen : sizeof(s->sa));
    sockaddr_ip(sa, s->ip, sizeof(s->ip));
    s->trusted = cidr_list_match(&s->lcfg->trusted, sa);
    qid_new(s->sid);
    s->lc.sid = s->sid;
    s->lc.ip = s->ip;
    envelope_init(&s->txn.env);
    const struct limits_cfg *L = &s->snap.cfg->limits;
    line_reader_init(&s->lr, L->line_length > L->auth_line_length ? L->line_length : L->auth_line_length);
    s->timer = evtimer_new(w->base, on_timer, s);
    s->state = ST_GREETED;

    int implicit = s->lcfg->mode == LISTEN_IMPLICIT_TLS;
    if (implicit) {
        SSL *ssl = s->snap.tls ? tls_server_ssl(s->snap.tls) : NULL;
        s->io = ssl ? io_new_tls(w->base, fd, ssl, 1) : NULL;
        s->state = ST_TLS_HANDSHAKE;
    } else {
        s->io = io_new(w->base, fd);
    }
    /* link first so that session_free can unlink */
    s->next = w->sessions;
    if (w->sessions)
        w->sessions->prev = s;
    w->sessions = s;
    w->nsessions++;
    if (!s->io) {
        logkv(LOG_LVL_ERR, &s->lc, "session.io_failed", NULL);
        close(fd);
        s->dead = 1;
        session_free(s);
        return NULL;
    }
    io_set_cbs(s->io, on_read, on_drained, on_event, s);
    logkv(LOG_LVL_INFO, &s->lc, "session.start", "listener=%s%s worker=%u", s->lcfg->name,
          s->trusted ? " trusted=yes" : "", w->idx);
    if (implicit) {
        unsigned hs = s->snap.cfg->tls.handshake_timeout * 1000u;
        io_set_timeouts(s->io, hs, hs);
    } else {
        io_set_timeouts(s->io, idle_ms(s), idle_ms(s));
        start_greeting(s);
    }
    if (w->stopping)
        session_shutdown(s, 0);
    return s;
}

static void session_free(struct session *s)
{
    if (!s->dead) {
        s->dead = 1;
        if (s->io) {
            io_free(s->io);
            s->io = NULL;
        }
        if (s->timer)
            evtimer_del(s->timer);
    }
    if (s->job_pending)
        return; /* freed when the job comes back */
    struct worker *w = s->w;
    logkv(LOG_LVL_INFO, &s->lc, "session.end", "messages=%u errors=%u", s->messages, s->errors);
    txn_reset(s);
    envelope_free(&s->txn.env);
    if (s->sasl) {
        sasl_clear(s->sasl);
        free(s->sasl);
    }
    if (s->timer)
        event_free(s->timer);
    if (s->acc)
        accounts_unref(s->acc);
    listener_release(s->srv, s->listener, (struct sockaddr *)&s->sa);
    server_snap_release(&s->snap);
    if (s->prev)
        s->prev->next = s->next;
    else
        w->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    w->nsessions--;
    free(s);
    if (w->stopping && w->nsessions == 0)
        event_base_loopexit(w->base, NULL);
}

void session_shutdown(struct session *s, int force)
{
    if (s->dead)
        return;
    if (force) {
        if (s->state != ST_CLOSING)
            reply(s, "421 4.3.2 Server shutting down");
        if (s->job_pending) {
            session_free(s); /* closes now, frees when the job returns */
            return;
        }
        session_free(s);
        return;
    }
    s->shutdown_requested = 1;
    if ((s->state == ST_GREETED || s->state == ST_READY) && !s->job_pending) {
        reply(s, "421 4.3.2 Server shutting down");
        close_after_reply(s);
    }
}

void session_list_shutdown(struct worker *w, int force)
{
    struct session *s = w->sessions;
    while (s) {
        struct session *next = s->next;
        session_shutdown(s, force);
        s = next;
    }
}
