/* gsync: group commit of fsync/fdatasync (see gsync.h). Used for the
 * spool's queue/ directory and for the journal's segments. */
#include "queue/gsync.h"

#include <errno.h>
#include <unistd.h>

void gsync_init(struct gsync *g)
{
    *g = (struct gsync){.changes = 0};
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
}

void gsync_destroy(struct gsync *g)
{
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
}

int gsync_wait(struct gsync *g, int fd, int data_only)
{
    pthread_mutex_lock(&g->mu);
    uint64_t mine = ++g->changes;
    int rc = 0;
    for (;;) {
        if (g->synced >= mine)
            break;
        if (g->failed >= mine) {
            errno = g->failed_errno;
            rc = -1;
            break;
        }
        if (g->running) {
            pthread_cond_wait(&g->cv, &g->mu);
            continue;
        }
        g->running = 1;
        uint64_t covers = g->changes;
        pthread_mutex_unlock(&g->mu);
        int r = data_only ? fdatasync(fd) : fsync(fd);
        int e = errno;
        pthread_mutex_lock(&g->mu);
        g->running = 0;
        g->syncs++;
        if (r == 0) {
            if (covers > g->synced)
                g->synced = covers;
        } else {
            if (covers > g->failed)
                g->failed = covers;
            g->failed_errno = e ? e : EIO;
        }
        pthread_cond_broadcast(&g->cv);
    }
    pthread_mutex_unlock(&g->mu);
    return rc;
}
