/* transport: the boundary between the queue and the ways a message leaves
 * it. The queue hands a transport one message and a set of recipients that
 * route to it; the transport reports one result per recipient. Transports
 * are found by their config `type` (maildir here; smarthost and mx later).
 *
 * deliver() may finish synchronously (maildir) or later from another
 * thread (network transports): either way it calls job->done(job) exactly
 * once, after filling job->results. */
#ifndef SUBMITD_TRANSPORT_H
#define SUBMITD_TRANSPORT_H

#include <stddef.h>

#include "core/config.h"
#include "queue/spool.h"

enum dresult { DR_OK = 0, DR_TEMP, DR_PERM };

struct delivery_result {
    enum dresult status;
    char text[512]; /* e.g. "250 2.0.0 delivered to maildir" or the remote reply */
    /* optional: the host that gave `text` (a remote MTA's name), for the
     * Remote-MTA field of a DSN; "" when none (local delivery) */
    char remote[256];
};

struct delivery_job {
    struct spool_msg *msg;
    const size_t *rcpts;            /* indexes into msg->env.rcpts */
    size_t nrcpts;
    struct delivery_result *results; /* nrcpts entries, filled by the transport */
    void (*done)(struct delivery_job *job);
    void *arg;                       /* queue's own */
};

struct transport_ops {
    const char *type;
    /* Checks a transport block for `submitd -t`; reports file:line errors. */
    int (*check)(const struct transport_cfg *cfg, const char *file, struct errlist *errs);
    /* Creates the transport instance; NULL with errs on failure. */
    void *(*open)(const struct transport_cfg *cfg, struct errlist *errs);
    void (*deliver)(void *inst, struct delivery_job *job);
    void (*close)(void *inst);
};

const struct transport_ops *transport_find(const char *type);

/* Writes the delivered form of a message — env.prepend, then the stored
 * bytes — through `out`, converting CRLF to LF when `lf` is set (Maildir).
 * Returns 0 or -1 when out failed or reading the spool failed. */
int transport_stream(struct spool_msg *m, int lf, int (*out)(void *arg, const void *buf, size_t n), void *arg);

extern const struct transport_ops maildir_transport;
extern const struct transport_ops smarthost_transport; /* src/relay/smarthost.c */
extern const struct transport_ops mx_transport;        /* src/relay/mx.c */

#endif
