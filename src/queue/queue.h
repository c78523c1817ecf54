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
/* New config (routes/transports); the old one is released once idle. */
int queue_reload(struct queue *q, struct config *cfg, struct errlist *errs);
/* Stops the threads, waiting for deliveries in progress. */
void queue_stop(struct queue *q);
void queue_free(struct queue *q);

#endif
