/* jobq: a pool of threads for blocking work (password hashing, spool
 * fsync) whose completions are handed back to the event loop that asked.
 * Each event loop owns a jobq_home; done() runs on that loop's thread. */
#ifndef SUBMITD_JOBQ_H
#define SUBMITD_JOBQ_H

#include <event2/event.h>

struct jobq;
struct jobq_home;

struct jobq *jobq_new(unsigned nthreads, const char *name);
/* Finishes the queued jobs, then joins the threads. */
void jobq_free(struct jobq *q);

struct jobq_home *jobq_home_new(struct event_base *base);
void jobq_home_free(struct jobq_home *h);

/* work(arg) runs on a pool thread, then done(arg) on home's loop. */
void jobq_submit(struct jobq *q, struct jobq_home *home, void (*work)(void *), void (*done)(void *), void *arg);
/* From any thread: done(arg) runs on home's loop (work finished elsewhere,
 * e.g. a journal thread's asynchronous commit). */
void jobq_home_post(struct jobq_home *home, void (*done)(void *), void *arg);

#endif
