/* main: submitd's entry point. Parses the command line, checks a config
 * (-t), or starts the server: loads config, accounts and certificates,
 * binds the listeners and the control socket (as root), writes the pid
 * file, drops privileges, opens the spool, starts the queue, the control
 * thread (submitctl queue ...), the job pools and one event-loop
 * thread per worker, then handles signals on the main thread: SIGTERM and
 * SIGINT shut down gracefully, SIGHUP reloads. */
#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "abuse/abuse.h"
#include "auth/accounts.h"
#include "auth/authcache.h"
#include "control/control.h"
#include "core/config.h"
#include "core/log.h"
#include "queue/queue.h"
#include "queue/spool.h"
#include "queue/transport.h"
#include "smtp/server.h"
#include "tls/tls.h"

#define SUBMITD_VERSION "0.1.0"
#define DEFAULT_CONFIG "/etc/submitd/submitd.conf"

static void usage(FILE *f)
{
    fprintf(f, "usage: submitd [-c CONFIG] [-t] [-d] [-V]\n"
               "  -c FILE  configuration file (default " DEFAULT_CONFIG ")\n"
               "  -t       check the configuration (and its certificates and accounts) and exit\n"
               "  -d       log at debug level\n"
               "  -V       print the version\n");
}

static void print_errs(const struct errlist *e)
{
    for (size_t i = 0; i < e->n; i++)
        fprintf(stderr, "%s\n", e->v[i]);
}

static int check_config(const char *path)
{
    struct errlist errs;
    errlist_init(&errs);
    struct config *c = config_load(path, &errs);
    if (c) {
        tls_check_config(c, &errs);
        struct accounts *a = accounts_load(c->accounts, &errs);
        if (a)
            accounts_unref(a);
        for (size_t i = 0; i < c->ntransports; i++) {
            const struct transport_ops *ops = transport_find(c->transports[i].type);
            if (ops && ops->check)
                ops->check(&c->transports[i], c->file, &errs);
        }
        config_unref(c);
    }
    int bad = errs.n > 0;
    print_errs(&errs);
    errlist_free(&errs);
    if (!bad)
        printf("%s: configuration ok\n", path);
    return bad ? 1 : 0;
}

/* ---- privileges ---------------------------------------------------------- */

static void chown_tree(const char *dir, uid_t uid, gid_t gid)
{
    static const char *const subs[] = {"", "/tmp", "/queue", "/corrupt", "/journal"};
    for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
        char p[4096];
        snprintf(p, sizeof(p), "%s%s", dir, subs[i]);
        if (chown(p, uid, gid) != 0 && errno != ENOENT)
            logkv(LOG_LVL_WARN, NULL, "startup.chown_failed", "path=%s error=%s",
                  log_q((char[LOGQ_MAX]){0}, LOGQ_MAX, p), log_q((char[LOGQ_MAX]){0}, LOGQ_MAX, strerror(errno)));
    }
}

/* Returns 0 when nothing to do or dropped, -1 on failure. */
static int drop_privileges(const struct config *c)
{
    if (geteuid() != 0) {
        logkv(LOG_LVL_INFO, NULL, "startup.user", "note=\"not started as root; keeping the current user\"");
        return 0;
    }
    const char *user = c->user ? c->user : "submitd";
    if (strcmp(user, "root") == 0) {
        logkv(LOG_LVL_WARN, NULL, "startup.user", "note=\"running as root (user root in the config)\"");
        return 0;
    }
    struct passwd *pw = getpwnam(user);
    if (!pw) {
        logkv(LOG_LVL_ERR, NULL, "startup.user", "error=\"no such user\" user=%s hint=\"create it with useradd --system %s\"",
              user, user);
        return -1;
    }
    chown_tree(c->spool_dir, pw->pw_uid, pw->pw_gid);
    if (initgroups(user, pw->pw_gid) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0) {
        logkv(LOG_LVL_ERR, NULL, "startup.user", "error=%s", log_q((char[LOGQ_MAX]){0}, LOGQ_MAX, strerror(errno)));
        return -1;
    }
    if (setuid(0) == 0) {
        logkv(LOG_LVL_ERR, NULL, "startup.user", "error=\"could regain root\"");
        return -1;
    }
    logkv(LOG_LVL_INFO, NULL, "startup.user", "user=%s uid=%u", user, (unsigned)pw->pw_uid);
    return 0;
}

/* The control socket, owned by the user the daemon runs as. */
static struct control *open_control(const struct config *c, struct errlist *errs)
{
    uid_t uid = geteuid();
    gid_t gid = getegid();
    if (uid == 0 && c->user && strcmp(c->user, "root") != 0) {
        struct passwd *pw = getpwnam(c->user);
        if (pw) {
            uid = pw->pw_uid;
            gid = pw->pw_gid;
        }
    }
    return control_new(c->control_socket, uid, gid, errs);
}

/* ---- workers --------------------------------------------------------------- */

static void stop_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    (void)fd;
    (void)what;
    logkv(LOG_LVL_WARN, NULL, "shutdown.forced", "worker=%u sessions=%u", w->idx, w->nsessions);
    session_list_shutdown(w, 1);
    if (w->nsessions == 0)
        event_base_loopexit(w->base, NULL);
}

static void worker_ctl_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    (void)fd;
    (void)what;
    if (!atomic_load(&w->srv->stopping) || w->stopping)
        return;
    w->stopping = 1;
    listeners_detach(w);
    session_list_shutdown(w, 0);
    if (w->nsessions == 0) {
        event_base_loopexit(w->base, NULL);
        return;
    }
    struct config *c = w->srv->cfg; /* main thread does not swap it during shutdown */
    struct timeval tv = {(time_t)c->limits.shutdown_timeout, 0};
    w->stop_timer = evtimer_new(w->base, stop_timer_cb, w);
    evtimer_add(w->stop_timer, &tv);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    event_base_dispatch(w->base);
    return NULL;
}

/* ---- signals ---------------------------------------------------------------- */

struct main_ctx {
    struct server *srv;
    struct event_base *base;
};

static void on_term(evutil_socket_t sig, short what, void *arg)
{
    struct main_ctx *m = arg;
    (void)what;
    logkv(LOG_LVL_INFO, NULL, "shutdown", "signal=%d", (int)sig);
    atomic_store(&m->srv->stopping, 1);
    for (unsigned i = 0; i < m->srv->nworkers; i++)
        event_active(m->srv->workers[i].ctl, EV_READ, 0);
    event_base_loopexit(m->base, NULL);
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    struct main_ctx *m = arg;
    (void)sig;
    (void)what;
    struct errlist errs;
    errlist_init(&errs);
    if (server_reload(m->srv, &errs) == 0) {
        logkv(LOG_LVL_INFO, NULL, "reload", "status=ok accounts=%zu", accounts_count(m->srv->acc));
    } else {
        for (size_t i = 0; i < errs.n; i++)
            logkv(LOG_LVL_ERR, NULL, "reload.error", "error=%s", log_q((char[LOGQ_MAX]){0}, LOGQ_MAX, errs.v[i]));
        logkv(LOG_LVL_ERR, NULL, "reload", "status=refused errors=%zu note=\"the previous configuration stays in force\"",
              errs.n);
    }
    errlist_free(&errs);
}

static int write_pid_file(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "%d\n", (int)getpid());
    return fclose(f);
}

int main(int argc, char **argv)
{
    const char *path = DEFAULT_CONFIG;
    int test = 0, debug = 0, opt;
    while ((opt = getopt(argc, argv, "c:tdVh")) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 't':
            test = 1;
            break;
        case 'd':
            debug = 1;
            break;
        case 'V':
            printf("submitd %s\n", SUBMITD_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    tls_init();
    log_init("submitd", 0, LOG_LVL_INFO);
    if (test)
        return check_config(path);

    signal(SIGPIPE, SIG_IGN);
    struct errlist errs;
    errlist_init(&errs);
    struct server srv;
    memset(&srv, 0, sizeof(srv));
    pthread_mutex_init(&srv.lock, NULL);
    srv.config_path = xstrdup(path);
    srv.cfg = config_load(path, &errs);
    if (srv.cfg) {
        log_init("submitd", srv.cfg->log_syslog, debug ? LOG_LVL_DEBUG : (enum log_level)srv.cfg->log_level);
        srv.acc = accounts_load(srv.cfg->accounts, &errs);
        server_build_tls(srv.cfg, &srv.tls, &srv.ntls, &errs);
    }
    if (errs.n) {
        print_errs(&errs);
        fprintf(stderr, "submitd: not started: fix the configuration (check it with submitd -t -c %s)\n", path);
        return 1;
    }
    if (evthread_use_pthreads() != 0) {
        fprintf(stderr, "submitd: libevent threading unavailable\n");
        return 1;
    }
    static int cpus[CPU_SETSIZE];
    unsigned ncpu = cpus_allowed(cpus, CPU_SETSIZE);
    struct config *cfg = srv.cfg;
    srv.nworkers = cfg->workers ? cfg->workers : ncpu;
    srv.workers = xcalloc(srv.nworkers, sizeof(*srv.workers));
    srv.nconns = cfg->nlisteners;
    srv.conns = xcalloc(srv.nconns, sizeof(*srv.conns));
    for (size_t i = 0; i < srv.nconns; i++)
        srv.conns[i].per_ip = iptable_new(1000000);
    srv.abuse = abuse_new(cfg);
    srv.authcache = authcache_new(65536, (uint64_t)cfg->auth_cache_ttl * 1000u);
    for (unsigned i = 0; i < srv.nworkers; i++) {
        srv.workers[i].srv = &srv;
        srv.workers[i].idx = i;
        /* worker i takes the connections whose packets the kernel handles
         * on the i-th allowed CPU: the session runs where its packets are */
        srv.workers[i].cpu = cfg->incoming_cpu && srv.nworkers > 1 ? cpus[i % ncpu] : -1;
    }
    if (listeners_bind(&srv, &errs) != 0) {
        print_errs(&errs);
        return 1;
    }
    if (cfg->pid_file && write_pid_file(cfg->pid_file) != 0)
        logkv(LOG_LVL_WARN, NULL, "startup.pid_file", "error=%s", log_q((char[LOGQ_MAX]){0}, LOGQ_MAX, strerror(errno)));
    {
        /* create the spool (as root, so that it can be handed to the user)
         * and bind the control socket in it before the privilege drop */
        struct spool *tmp = spool_open_opts(cfg->spool_dir, cfg->journal_segments, &errs);
        if (tmp)
            spool_close(tmp);
        errlist_free(&errs);
        errlist_init(&errs);
        srv.control = tmp ? open_control(cfg, &errs) : NULL;
        if (tmp && !srv.control) {
            print_errs(&errs);
            return 1;
        }
    }
    if (drop_privileges(cfg) != 0)
        return 1;
    srv.spool = spool_open_opts(cfg->spool_dir, cfg->journal_segments, &errs);
    if (srv.spool)
        srv.queue = queue_new(srv.spool, cfg, &errs);
    if (errs.n || !srv.queue) {
        print_errs(&errs);
        return 1;
    }
    srv.auth_jobs = jobq_new(cfg->auth_threads ? cfg->auth_threads : ncpu, "auth");
    srv.commit_jobs = jobq_new(cfg->commit_threads ? cfg->commit_threads : 8, "commit");
    if (!srv.auth_jobs || !srv.commit_jobs || queue_start(srv.queue) != 0) {
        fprintf(stderr, "submitd: cannot start threads\n");
        return 1;
    }
    /* control socket verbs (submitctl): register before control_start */
    control_register(srv.control, "queue", queue_control, srv.queue);
    control_register(srv.control, "limits", abuse_control, srv.abuse);
    if (control_start(srv.control) != 0) {
        fprintf(stderr, "submitd: cannot start the control thread\n");
        return 1;
    }
    for (unsigned i = 0; i < srv.nworkers; i++) {
        struct worker *w = &srv.workers[i];
        w->base = event_base_new();
        w->home = w->base ? jobq_home_new(w->base) : NULL;
        w->ctl = w->base ? event_new(w->base, -1, 0, worker_ctl_cb, w) : NULL;
        if (!w->home || !w->ctl || listeners_attach(w) != 0) {
            fprintf(stderr, "submitd: cannot set up worker %u\n", i);
            return 1;
        }
    }
    for (unsigned i = 0; i < srv.nworkers; i++)
        if (pthread_create(&srv.workers[i].thread, NULL, worker_main, &srv.workers[i]) == 0)
            thread_name(srv.workers[i].thread, "loop");

    struct main_ctx m = {.srv = &srv, .base = event_base_new()};
    struct event *sigterm = evsignal_new(m.base, SIGTERM, on_term, &m);
    struct event *sigint = evsignal_new(m.base, SIGINT, on_term, &m);
    struct event *sighup = evsignal_new(m.base, SIGHUP, on_hup, &m);
    event_add(sigterm, NULL);
    event_add(sigint, NULL);
    event_add(sighup, NULL);
    {
        struct strbuf b;
        sb_init(&b);
        for (size_t i = 0; i < cfg->nlisteners; i++)
            for (size_t k = 0; k < cfg->listeners[i].naddrs; k++)
                sb_printf(&b, "%s%s:%s:%u", b.len ? "," : "", cfg->listeners[i].name, cfg->listeners[i].addrs[k],
                          (unsigned)cfg->listeners[i].port);
        logkv(LOG_LVL_INFO, NULL, "ready", "version=%s workers=%u listeners=%s accounts=%zu", SUBMITD_VERSION,
              srv.nworkers, b.s, accounts_count(srv.acc));
        sb_free(&b);
    }
    event_base_dispatch(m.base);
    control_free(srv.control); /* no operator request runs during the shutdown */
    srv.control = NULL;

    for (unsigned i = 0; i < srv.nworkers; i++)
        pthread_join(srv.workers[i].thread, NULL);
    /* Job threads finish what they hold; completions already ran or are
     * flushed by jobq_home_free below. */
    jobq_free(srv.auth_jobs);
    jobq_free(srv.commit_jobs);
    spool_drain(srv.spool); /* asynchronous commits: their callbacks post to the homes freed below */
    queue_stop(srv.queue);
    for (unsigned i = 0; i < srv.nworkers; i++) {
        struct worker *w = &srv.workers[i];
        jobq_home_free(w->home);
        listeners_detach(w);
        if (w->stop_timer)
            event_free(w->stop_timer);
        event_free(w->ctl);
        event_base_free(w->base);
        free(w->socks);
    }
    queue_free(srv.queue);
    spool_close(srv.spool);
    event_free(sigterm);
    event_free(sigint);
    event_free(sighup);
    event_base_free(m.base);
    for (size_t i = 0; i < srv.ntls; i++)
        if (srv.tls[i])
            tls_server_unref(srv.tls[i]);
    free(srv.tls);
    accounts_unref(srv.acc);
    for (size_t i = 0; i < srv.nconns; i++)
        iptable_free(srv.conns[i].per_ip);
    free(srv.conns);
    abuse_free(srv.abuse); /* after the workers: no check is in flight */
    authcache_free(srv.authcache);
    if (srv.cfg->pid_file)
        unlink(srv.cfg->pid_file);
    logkv(LOG_LVL_INFO, NULL, "stopped", NULL);
    config_unref(srv.cfg);
    free(srv.workers);
    free(srv.config_path);
    pthread_mutex_destroy(&srv.lock);
    libevent_global_shutdown();
    return 0;
}
