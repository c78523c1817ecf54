/* abuse: the abuse controls as the daemon uses them (docs/security.md).
 *
 *  - Rate limits (config `ratelimit { }`, `ratelimit-for KEY { }`): new
 *    connections and AUTH attempts per client address, AUTH attempts per
 *    login from addresses it never logged in from, messages, recipients
 *    and bytes per account. Over a limit: 451 4.7.1 (550 5.7.1 for a limit
 *    marked `hard`; 421 4.7.1 at connect, 454 4.7.1 at AUTH) naming the
 *    limit and when to try again.
 *  - Brute force: failed logins per address slow the next answer down
 *    (limits.auth-delay, doubling) and, at auth-failures-ip, block the
 *    address for block-time; failures against one login from addresses it
 *    does not know block that login from unknown addresses. A success
 *    resets its address's failures. Exempt networks count nothing.
 *  - Compromised accounts (config `abuse { }`): each message and login
 *    feeds the account's profile (baseline.h); past the thresholds the
 *    configured action runs: alert (log), hold (the message is committed,
 *    then queued held), suspend (held, and the account is suspended in
 *    memory at once and in the accounts file by a background job, like
 *    `submitctl user suspend`).
 *
 * Counters live in memory (ratelimit.h) or in Redis (redis.h). With Redis,
 * checks block for a round trip: abuse_check() then runs on the module's
 * own threads and calls back on the session's loop; AUTH and end-of-data
 * checks run inside the jobs the session already uses. When Redis cannot
 * be reached, the local counters answer (logged once per outage, retried
 * after redis-retry), or with fail-open no the checks refuse (451 4.7.1).
 * Bounces and DSNs the server makes never pass through sessions and are
 * never counted. A trusted client without AUTH (listener `trusted`) has no
 * account: `login` NULL; its messages, recipients and bytes count against
 * its address (keys m:ip:ADDRESS ..., nothing for ratelimit.exempt
 * networks), and suspension and detection do not apply to it.
 * Thread-safe; one `struct abuse` per daemon. */
#ifndef SUBMITD_ABUSE_H
#define SUBMITD_ABUSE_H

#include <stdint.h>
#include <sys/socket.h>

#include "abuse/ratelimit.h"
#include "core/config.h"
#include "core/jobq.h"
#include "core/log.h"
#include "queue/spool.h"

#define ABUSE_REPLY_MAX 300
#define ABUSE_OPS_MAX 4

struct abuse;

struct abuse *abuse_new(const struct config *cfg);
/* Waits for its jobs (Redis calls, accounts-file writes) to finish. */
void abuse_free(struct abuse *a);
/* A new config: backend, Redis settings and everything read per check. */
void abuse_reload(struct abuse *a, const struct config *cfg);
/* A reload read the accounts file starting at `read_started`
 * (abuse_now()): suspensions written before that are in the new table (or
 * were lifted with submitctl user unsuspend) and are forgotten here. */
void abuse_accounts_loaded(struct abuse *a, int64_t read_started);
/* The clock of the local counters: CLOCK_MONOTONIC in microseconds. */
int64_t abuse_now(void);
/* 1 when checks may block now (Redis is the backend and is not known to
 * be down): call the blocking functions from a job thread then. */
int abuse_remote(struct abuse *a);

/* The control verb "limits": `limits show [KEY]`, `limits reset KEY` with
 * KEY user:LOGIN or ip:ADDRESS. For control_register(). */
int abuse_control(void *arg, int argc, char **argv, struct strbuf *out);

/* ---- checks from a session ---- */

enum abuse_stage { ABUSE_CONNECT, ABUSE_MAIL, ABUSE_RCPT };
enum { ABUSE_DONE = 0, ABUSE_PENDING = 1 };

struct abuse_call {
    /* in */
    const struct config *cfg;
    enum abuse_stage stage;
    const struct sockaddr *sa;
    const char *login;   /* MAIL, RCPT; NULL: a trusted client without AUTH (counted by address) */
    uint64_t size;       /* MAIL: the SIZE= parameter, 0 when absent */
    const struct log_ctx *lc;
    /* out */
    int refused;
    char reply[ABUSE_REPLY_MAX]; /* the reply line when refused */
    /* private */
    struct abuse *a;
    struct rl_op ops[ABUSE_OPS_MAX];
    char keys[ABUSE_OPS_MAX][RL_KEY_MAX];
    int what[ABUSE_OPS_MAX];
    size_t nops;
    void (*done)(void *arg);
    void *arg;
};

/* Connect: connections per address. MAIL: the account is not suspended,
 * messages per account, and bytes per account for SIZE=. RCPT: recipients
 * per account. ABUSE_DONE: decided, the verdict is in c. ABUSE_PENDING:
 * done(arg) runs on home's loop when it is; c must stay in place. */
int abuse_check(struct abuse *a, struct abuse_call *c, struct jobq_home *home, void (*done)(void *), void *arg);

/* AUTH: call begin before verifying the password and end after. They may
 * block when abuse_remote(): call them from the AUTH job then. */
struct abuse_auth {
    /* in */
    const struct config *cfg;
    const struct sockaddr *sa;
    const char *login;
    const struct log_ctx *lc;
    /* out */
    int refused;        /* begin: blocked or over a limit: reply, no verification */
    char reply[ABUSE_REPLY_MAX];
    unsigned delay_ms;  /* end, failure: wait this long before 535 */
    unsigned failures;  /* end, failure: recent failures from the address */
    int suspended;      /* end, success: the account is suspended (525 5.7.13) */
    /* private */
    int exempt, known;
};
void abuse_auth_begin(struct abuse *a, struct abuse_auth *x);
void abuse_auth_end(struct abuse *a, struct abuse_auth *x, int ok);

/* End of a message's data, before its commit (may block: commit job).
 * Counts its bytes and feeds detection. refused: reply and drop it; hold:
 * commit it, then queue_submit_held(reason). */
struct abuse_msg {
    /* in */
    const struct config *cfg;
    const struct sockaddr *sa;
    const char *login;   /* NULL: a trusted client without AUTH (counted by address) */
    const struct envelope *env;
    uint64_t size;
    const struct log_ctx *lc;
    /* out */
    int refused;
    char reply[ABUSE_REPLY_MAX];
    int hold;
    char reason[200];
};
void abuse_message(struct abuse *a, struct abuse_msg *m);

#endif
