/* gsync: group commit of fsync/fdatasync calls on one file descriptor.
 * Every thread that changed a file (or directory) needs a sync that
 * started after its change; one sync covers every change made before it
 * started, so concurrent callers share it instead of each paying one. */
#ifndef SUBMITD_GSYNC_H
#define SUBMITD_GSYNC_H

#include <pthread.h>
#include <stdint.h>

struct gsync {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t changes;   /* changes registered so far (a counter) */
    uint64_t synced;    /* changes 1..synced are durable */
    uint64_t failed;    /* a sync covering changes up to this one failed */
    int failed_errno;
    int running;        /* a sync is in progress */
    uint64_t syncs;     /* syncs run (for tests and statistics) */
};

void gsync_init(struct gsync *g);
void gsync_destroy(struct gsync *g);
/* Makes every change to fd made by the calling thread so far durable:
 * waits for a sync of fd that started after the call, running it if no
 * other thread is (fdatasync when data_only, else fsync). 0, or -1 with
 * errno if the sync that covers this caller's change failed. */
int gsync_wait(struct gsync *g, int fd, int data_only);

#endif
