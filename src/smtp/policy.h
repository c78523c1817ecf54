/* policy: the checks that run before a MAIL or RCPT reply is sent. Each
 * stage has a table of check functions; the first one that refuses sets
 * the reply. The sender-ownership rule lives here; a trusted client
 * without AUTH (listener `trusted`) has no account, so any sender is
 * accepted from it (the null sender as allow-null-sender says). The abuse limits
 * (src/abuse: messages and recipients per account) run right after these
 * checks, from session.c, because with a Redis backend they answer
 * asynchronously while these are synchronous. */
#ifndef SUBMITD_POLICY_H
#define SUBMITD_POLICY_H

#include <stddef.h>

#include "auth/accounts.h"
#include "core/config.h"
#include "core/log.h"

struct policy_req {
    const struct config *cfg;
    const struct account *account; /* NULL when not authenticated */
    const char *login;             /* "" when not authenticated */
    int trusted;                   /* not authenticated, from a `trusted` network of its listener */
    const char *client_ip;
    const char *addr;              /* MAIL or RCPT path ("" = null sender) */
    unsigned nrcpts;               /* recipients accepted so far */
    const struct log_ctx *lc;
};

struct policy_reply {
    char text[768]; /* full reply line without CRLF, e.g. "553 5.7.1 ..." */
};

/* 0: accepted; non-zero: refused, reply->text set. */
int policy_check_mail(const struct policy_req *req, struct policy_reply *reply);
int policy_check_rcpt(const struct policy_req *req, struct policy_reply *reply);

#endif
