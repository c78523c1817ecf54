/* transport: the queue/transport boundary — the table of transport
 * implementations looked up by config `type`, and transport_stream(), which
 * produces the delivered form of a message (prepend block, then the stored
 * bytes) with optional CRLF -> LF conversion. */
#include "queue/transport.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define STREAM_CHUNK (64 * 1024)

static const struct transport_ops *const transports[] = {
    &maildir_transport,
    &smarthost_transport,
    &mx_transport,
};

const struct transport_ops *transport_find(const char *type)
{
    if (!type)
        return NULL;
    for (size_t i = 0; i < ARRAY_LEN(transports); i++)
        if (strcmp(transports[i]->type, type) == 0)
            return transports[i];
    return NULL;
}

/* Output side of the stream: buffers, and when lf is set turns CRLF into
 * LF, also when the CR and the LF arrive in different pieces. */
struct sink {
    int lf;
    int pending_cr; /* the last byte seen was a CR not yet written */
    int failed;
    int (*out)(void *arg, const void *buf, size_t n);
    void *arg;
    char *buf;
    size_t len;
};

static void sink_flush(struct sink *k)
{
    if (k->failed || k->len == 0)
        return;
    if (k->out(k->arg, k->buf, k->len) != 0)
        k->failed = 1;
    k->len = 0;
}

static void sink_put(struct sink *k, const char *p, size_t n)
{
    while (n && !k->failed) {
        if (k->len == STREAM_CHUNK)
            sink_flush(k);
        size_t c = STREAM_CHUNK - k->len;
        if (c > n)
            c = n;
        memcpy(k->buf + k->len, p, c);
        k->len += c;
        p += c;
        n -= c;
    }
}

static void sink_write(struct sink *k, const char *p, size_t n)
{
    if (!k->lf) {
        sink_put(k, p, n);
        return;
    }
    const char *end = p + n;
    if (p < end && k->pending_cr) {
        k->pending_cr = 0;
        if (*p != '\n')
            sink_put(k, "\r", 1); /* a lone CR stays */
    }
    while (p < end) {
        const char *cr = memchr(p, '\r', (size_t)(end - p));
        if (!cr) {
            sink_put(k, p, (size_t)(end - p));
            break;
        }
        sink_put(k, p, (size_t)(cr - p));
        if (cr + 1 == end) {
            k->pending_cr = 1; /* decided by the next piece */
            break;
        }
        if (cr[1] != '\n')
            sink_put(k, "\r", 1);
        p = cr + 1;
    }
}

int transport_stream(struct spool_msg *m, int lf, int (*out)(void *arg, const void *buf, size_t n), void *arg)
{
    struct sink k = {.lf = lf, .out = out, .arg = arg, .buf = xmalloc(STREAM_CHUNK)};
    char *in = xmalloc(STREAM_CHUNK);
    int rc = 0;
    if (m->env.prepend)
        sink_write(&k, m->env.prepend, strlen(m->env.prepend));
    uint64_t off = 0;
    while (off < m->env.size && !k.failed) {
        ssize_t r = spool_msg_pread(m, in, STREAM_CHUNK, off);
        if (r <= 0) {
            if (r == 0)
                errno = EIO; /* the file is shorter than its envelope says */
            rc = -1;
            break;
        }
        sink_write(&k, in, (size_t)r);
        off += (uint64_t)r;
    }
    if (k.pending_cr)
        sink_put(&k, "\r", 1);
    sink_flush(&k);
    if (k.failed)
        rc = -1;
    free(k.buf);
    free(in);
    return rc;
}
