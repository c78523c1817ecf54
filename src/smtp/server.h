/* server: the runtime shared by every worker thread — the current config,
 * accounts and TLS contexts (swapped together on reload), the spool and
 * queue, the job pools, connection counters and the abuse controls (rate
 * limits, brute-force blocks, detection: src/abuse) — and the per-thread
 * worker that owns an event loop, its copies of the listening sockets and
 * its sessions. */
#ifndef SUBMITD_SERVER_H
#define SUBMITD_SERVER_H

#include <event2/event.h>
#include <event2/listener.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "auth/accounts.h"
#include "core/config.h"
#include "core/jobq.h"
#include "queue/queue.h"
#include "queue/spool.h"
#include "tls/tls.h"

struct session;
struct iptable;
struct control;
struct abuse;

/* One listening socket (one per listener address per worker). */
struct lsock {
    struct worker *w;
    int fd;
    size_t listener; /* index into cfg->listeners (same order in every reload) */
};

struct worker {
    struct server *srv;
    unsigned idx;
    int cpu; /* SO_INCOMING_CPU of its listening sockets; -1: none */
    pthread_t thread;
    struct event_base *base;
    struct jobq_home *home;
    struct lsock *socks;
    size_t nsocks;
    struct evconnlistener **lev;
    struct event *ctl;        /* made active by the main thread: stop */
    struct event *stop_timer; /* shutdown grace period */
    struct session *sessions; /* doubly linked through session->next/prev */
    unsigned nsessions;
    int stopping;
};

/* Per-listener connection counts (total and per client IP). */
struct conncount {
    atomic_uint total;
    struct iptable *per_ip;
};

struct server {
    pthread_mutex_t lock; /* guards cfg, acc, tls */
    struct config *cfg;
    struct accounts *acc;
    struct tls_server **tls; /* per listener */
    size_t ntls;
    char *config_path;

    struct spool *spool;
    struct queue *queue;
    struct control *control; /* the admin socket (control/control.h); NULL until bound */
    struct jobq *auth_jobs;
    struct jobq *commit_jobs;

    struct worker *workers;
    unsigned nworkers;
    struct conncount *conns; /* per listener */
    size_t nconns;
    struct abuse *abuse;      /* rate limits, brute force, detection (abuse/abuse.h) */
    struct authcache *authcache; /* recently verified credentials */

    atomic_int stopping;
    atomic_ulong next_sid;
};

/* A consistent view for one session: references to the config and the
 * listener's TLS server as they are now. Release with server_snap_release. */
struct server_snap {
    struct config *cfg;
    struct tls_server *tls; /* may be NULL only when the listener has no certs */
};
void server_snap_take(struct server *s, size_t listener, struct server_snap *out);
void server_snap_release(struct server_snap *snap);
/* The accounts in force now (a reference; accounts_unref when done). */
struct accounts *server_accounts(struct server *s);

/* Loads the TLS servers for every listener of cfg. */
int server_build_tls(const struct config *cfg, struct tls_server ***out, size_t *n, struct errlist *errs);
/* SIGHUP: load config, accounts and certificates; swap them in only when
 * all are good and the listener set is unchanged. 0 ok, -1 refused. */
int server_reload(struct server *s, struct errlist *errs);

/* ---- iptable: small counters keyed by client IP (thread-safe) ---- */
struct iptable *iptable_new(size_t max_entries);
void iptable_free(struct iptable *t);
/* Adds delta (may be negative) and returns the new count; an entry whose
 * count reaches 0 is removed. Entries older than `ttl_ms` since their last
 * change are treated as 0 (ttl_ms 0 = never expire). */
unsigned iptable_add(struct iptable *t, const struct sockaddr *sa, int delta, uint64_t ttl_ms);
unsigned iptable_get(struct iptable *t, const struct sockaddr *sa, uint64_t ttl_ms);
void iptable_clear(struct iptable *t, const struct sockaddr *sa);

/* ---- listener.c ---- */
/* Binds every listener address once per worker (SO_REUSEPORT). */
int listeners_bind(struct server *s, struct errlist *errs);
/* Creates the worker's evconnlisteners on its sockets. */
int listeners_attach(struct worker *w);
/* Stops accepting (shutdown). */
void listeners_detach(struct worker *w);
/* A session ended: release its connection slot. */
void listener_release(struct server *s, size_t listener, const struct sockaddr *sa);

/* ---- session.c ---- */
struct session *session_new(struct worker *w, int fd, const struct sockaddr *sa, socklen_t salen, size_t listener);
/* Shutdown: idle sessions get 421 and close now; busy ones after their
 * transaction. force=1 closes everything (grace period over). */
void session_shutdown(struct session *s, int force);
void session_list_shutdown(struct worker *w, int force);

#endif
