/* msgstream: hooks that see a message as it streams in during DATA/BDAT
 * (after dot-unstuffing) and decide at its end. A hook may refuse the
 * message with a reply, or add header lines that delivery will emit in
 * front of it (the spool's prepend block). The header check (From: owned
 * by the account, Message-ID/Date added when missing) is the first hook;
 * DKIM body hashing plugs in here too. */
#ifndef SUBMITD_MSGSTREAM_H
#define SUBMITD_MSGSTREAM_H

#include <stddef.h>

#include "auth/accounts.h"
#include "core/config.h"
#include "core/log.h"
#include "core/util.h"
#include "queue/spool.h"

struct msg_view {
    const struct config *cfg;
    const struct account *account;
    const char *login;
    const struct envelope *env; /* id, from, rcpts known at begin */
    const struct log_ctx *lc;
    /* Fields a hook adds to the message's `queued` log line (" key=value",
     * already quoted); NUL-terminated, bounded by note_size. */
    char *note;
    size_t note_size;
};

/* Appends " " and the formatted field to v->note (dropped when it does
 * not fit whole). */
void msg_note(const struct msg_view *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

struct msg_hook {
    const char *name;
    void *(*begin)(const struct msg_view *v);
    void (*data)(void *st, const char *buf, size_t n);
    /* 0: accept (may append CRLF-terminated header lines to prepend);
     * non-zero: refuse with `reply` (a full reply line without CRLF). */
    int (*end)(void *st, const struct msg_view *v, struct strbuf *prepend, char *reply, size_t rlen);
    void (*free)(void *st);
};

#define MSG_HOOKS_MAX 8
extern const struct msg_hook *const msg_hooks[];
extern const size_t msg_hooks_count;

#endif
