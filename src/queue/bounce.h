/* bounce: the queue's side of DSNs. After a delivery run it collects the
 * recipients that failed (and were not reported yet) into one failure DSN
 * per message, and the recipients deferred past queue.delay-warning into
 * one delay DSN, honouring NOTIFY, RET, ENVID and ORCPT; builds them with
 * dsn.c around the original (or its header section) read from the spool;
 * commits each as a message of its own (null sender, to the original
 * sender), records `reported` in the status log and queues it. Never a
 * DSN for the null sender. Runs on a delivery thread. */
#ifndef SUBMITD_BOUNCE_H
#define SUBMITD_BOUNCE_H

#include <stdint.h>

#include "core/config.h"
#include "queue/queue.h"
#include "queue/spool.h"

/* What one delivery run learned, per recipient index of the message. */
struct bounce_run {
    const char **remote;     /* Remote-MTA of this run's result, or NULL */
    signed char *perm;       /* 1 permanent, 0 temporary, -1 not tried in this run */
    unsigned char *deferred; /* got a retry record in this run */
};

/* Recipient i's failure, if it fails, is to be reported: the sender is
 * not null and its NOTIFY asks for failures (or is not given). */
int bounce_wanted(const struct spool_msg *m, size_t i);
/* Recipient i failed, is to be reported, and is not reported yet. */
int bounce_owed(const struct spool_msg *m, size_t i);
/* Sends the DSNs a run calls for (see above). 0, or -1 when a failure
 * DSN could not be written: the message must then stay in the spool and
 * the run be repeated later. */
int bounce_after_run(struct queue *q, struct spool *s, const struct config *cfg, struct spool_msg *m,
                     const struct bounce_run *ri, int64_t now);

#endif
