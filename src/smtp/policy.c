/* policy: MAIL/RCPT checks (see policy.h). */
#include "smtp/policy.h"

#include <stdio.h>

typedef int (*policy_fn)(const struct policy_req *req, struct policy_reply *reply);

/* An authenticated account may use only its own addresses in MAIL FROM;
 * a trusted client without AUTH any address. */
static int sender_owned(const struct policy_req *req, struct policy_reply *reply)
{
    if (!req->account && !req->trusted) { /* NEEDS_AUTH stops these before: never relay for them */
        snprintf(reply->text, sizeof(reply->text), "530 5.7.0 Authentication required");
        return 1;
    }
    if (req->addr[0] == '\0') {
        if (req->cfg->allow_null_sender)
            return 0;
        snprintf(reply->text, sizeof(reply->text), "553 5.7.1 Null sender not allowed");
        return 1;
    }
    if (!req->account)
        return 0; /* trusted: there is no account to restrict the sender */
    if (account_may_send_as(req->account, req->addr))
        return 0;
    char q1[LOGQ_MAX], q2[LOGQ_MAX];
    logkv(LOG_LVL_WARN, req->lc, "policy.sender_mismatch", "from=%s login=%s",
          log_q(q1, sizeof(q1), req->addr), log_q(q2, sizeof(q2), req->login));
    snprintf(reply->text, sizeof(reply->text), "553 5.7.1 Sender address <%.320s> not owned by user %.256s",
             req->addr, req->login);
    return 1;
}

static const policy_fn mail_checks[] = {sender_owned};

int policy_check_mail(const struct policy_req *req, struct policy_reply *reply)
{
    for (size_t i = 0; i < sizeof(mail_checks) / sizeof(mail_checks[0]); i++)
        if (mail_checks[i](req, reply))
            return 1;
    return 0;
}

/* Authenticated sessions and trusted clients may send anywhere (relaying
 * for them is the point); other unauthenticated ones never reach RCPT
 * (MAIL needs AUTH). Recipient limits are the abuse module's (see
 * policy.h). */
int policy_check_rcpt(const struct policy_req *req, struct policy_reply *reply)
{
    (void)req;
    (void)reply;
    return 0;
}
