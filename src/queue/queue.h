/* queue: the delivery scheduler. Holds the ids of committed messages,
 * routes each pending recipient to a transport (config routes), records
 * results in the spool's status log, retries temporary failures with
 * exponential backoff (queue.retry-initial doubling up to retry-max, until
 * queue.lifetime), and removes a message once no recipient is pending.
 * Runs on its own thread(s); safe to call from any thread. At start it
 * scans the spool so that everything queued before a crash or restart is
 * delivered. */
#ifndef SUBMITD_QUEUE_H
#define SUBMITD_QUEUE_H

#include "core/config.h"
#include "queue/spool.h"

struct queue;

struct queue *queue_new(struct spool *spool, struct config *cfg, struct errlist *errs);
/* Starts the delivery threads and the initial spool scan. */
int queue_start(struct queue *q);
/* A message was committed: deliver it now. */
void queue_submit(struct queue *q, const char *id);
/* A committed message that must wait for an operator (abuse hold): its
 * .st log records the hold durably; nothing is delivered until
 * queue_release. 0 or -1. */
int queue_submit_held(struct queue *q, const char *id, const char *reason);
/* Operator actions (submitctl queue ... over the control socket). Each
 * returns 0, or -1 when the id is unknown (or the spool write failed).
 * hold: stop delivering (a delivery in progress finishes); release: make
 * it due now; flush: every pending recipient of id (or of all messages
 * when id is NULL) due now, ignoring backoff; delete: remove it from the
 * spool without a bounce (logged). */
int queue_hold(struct queue *q, const char *id, const char *reason);
int queue_release(struct queue *q, const char *id);
int queue_flush(struct queue *q, const char *id);
int queue_delete(struct queue *q, const char *id);
/* The `queue` verb of the control socket (a control_fn, arg = the queue):
 * list | show ID | flush [ID] | hold ID [REASON...] | release ID | delete ID.
 * Answers are formatted here; submitctl prints them as they come. */
int queue_control(void *arg, int argc, char **argv, struct strbuf *out);
/* New config (routes/transports); the old one is released once idle. */
int queue_reload(struct queue *q, struct config *cfg, struct errlist *errs);
/* Stops the threads, waiting for deliveries in progress. */
void queue_stop(struct queue *q);
void queue_free(struct queue *q);

#endif
