/* control: the local administration socket (config `control-socket`,
 * default <spool-dir>/control.sock). A Unix stream socket, mode 0660; a
 * connecting peer is accepted only when SO_PEERCRED says uid 0 or the
 * daemon's own uid. One request per connection:
 *
 *   request:  one line, words separated by single spaces, max 1000 octets,
 *             e.g. "queue list", "queue hold 0123ABCD", "limits show user:bob"
 *   answer:   "ok" or "error: reason" on the first line, then any number of
 *             text lines, then a line "." (a data line starting with "."
 *             gets one more "." in front, like SMTP dot-stuffing).
 *
 * Modules register verbs ("queue", "limits"); the handler runs on the
 * control thread (so it must lock what it touches) and writes its answer
 * text (without the status line) into `out`. */
#ifndef SUBMITD_CONTROL_H
#define SUBMITD_CONTROL_H

#include <sys/types.h>

#include "core/util.h"

struct control;

/* Returns 0 (ok) or -1 (error: the first line of `out` is the reason). */
typedef int (*control_fn)(void *arg, int argc, char **argv, struct strbuf *out);

/* Binds the socket (removing a stale one) while still root, owned by
 * `owner` (the daemon's user after the privilege drop). NULL with errs. */
struct control *control_new(const char *path, uid_t owner, gid_t group, struct errlist *errs);
/* verb = argv[0]; at most 16 verbs. Register before control_start. */
void control_register(struct control *c, const char *verb, control_fn fn, void *arg);
/* Starts the control thread. 0 or -1. */
int control_start(struct control *c);
/* Stops the thread, closes and unlinks the socket. */
void control_free(struct control *c);

/* Client side (submitctl): sends one request, returns the status (0 ok,
 * -1 error or no connection) and the answer text un-stuffed in `out`
 * (the error reason on -1). */
int control_request(const char *path, const char *request, struct strbuf *out, int timeout_ms);

#endif
