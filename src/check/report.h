/* report: submitcheck's report model and its two renderings. A report
 * holds host-level steps (dns) and, per checked port, an ordered list of
 * steps; each step has an id, a verdict (ok / warn / fail / skip), a
 * one-line message, on anything but ok the likely cause and the fix
 * lines, a duration, and typed facts (string, integer, boolean, list of
 * strings) for --json. Rendering: one text line per step (plus cause and
 * fix lines), or the whole report as JSON following
 * docs/submitcheck.schema.json. Verdict aggregation and the exit code
 * (0 ok, 1 warnings, 2 failures) live here too. No I/O except through
 * the strbuf given. */
#ifndef SUBMITD_REPORT_H
#define SUBMITD_REPORT_H

#include <stddef.h>

#include "core/util.h"

/* Ordered by severity: the worst verdict of a report decides its exit code. */
enum verdict { VERDICT_SKIP = 0, VERDICT_OK, VERDICT_WARN, VERDICT_FAIL };

#define EXIT_CHECK_OK 0
#define EXIT_CHECK_WARN 1
#define EXIT_CHECK_FAIL 2
#define EXIT_CHECK_USAGE 3

/* Bounds on what server data can grow (extra items are dropped). The
 * number of steps is fixed by the code, not by input. */
#define REPORT_MAX_PORTS 8
#define STEP_MAX_FACTS 40
#define STEP_MAX_FIX 12
#define FACT_MAX_LIST 200
#define REPORT_TEXT_MAX 2048  /* longest message / cause / fix line / fact value */

const char *verdict_name(enum verdict v);            /* "ok", "warn", "fail", "skip" */
enum verdict verdict_worst(enum verdict a, enum verdict b);
int verdict_exit_code(enum verdict v);               /* skip and ok 0, warn 1, fail 2 */

enum fact_type { FACT_STR, FACT_INT, FACT_BOOL, FACT_LIST };

struct fact {
    char *key;
    enum fact_type type;
    char *str;      /* FACT_STR */
    long long num;  /* FACT_INT, FACT_BOOL */
    char **list;    /* FACT_LIST */
    size_t nlist;
};

struct step {
    char *id;
    enum verdict verdict;
    char *message;
    char *cause;      /* NULL when none */
    char **fix;
    size_t nfix;
    long long ms;     /* duration, -1 when not timed */
    struct fact *facts;
    size_t nfacts;
};

struct port_report {
    int port;
    const char *mode;   /* "starttls" or "implicit" (static string) */
    char *address;      /* where the dialogue ran ("127.0.0.1"), NULL if nowhere */
    struct step **steps;
    size_t nsteps;
};

struct report {
    char *host;
    char *started;           /* RFC 3339 UTC time the run began */
    long long duration_ms;
    struct step **steps;     /* host-level steps (dns) */
    size_t nsteps;
    struct port_report **ports;
    size_t nports;
};

void report_init(struct report *r, const char *host, long long started_epoch);
void report_free(struct report *r);
/* Adds a port section (NULL when REPORT_MAX_PORTS are used). */
struct port_report *report_add_port(struct report *r, int port, const char *mode);
/* Adds a step with verdict skip and an empty message to the port (or the
 * host level when p is NULL); report_free frees it. */
struct step *report_add_step(struct report *r, struct port_report *p, const char *id);

/* Sets verdict and message (replacing both). */
void step_set(struct step *s, enum verdict v, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void step_cause(struct step *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void step_fix(struct step *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Raises the verdict to v when v is worse; appends "; text" to the message. */
void step_worsen(struct step *s, enum verdict v, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Facts: setting a key again replaces it (a list fact is appended to). */
void step_fact_str(struct step *s, const char *key, const char *val); /* NULL val: not set */
void step_fact_int(struct step *s, const char *key, long long val);
void step_fact_bool(struct step *s, const char *key, int val);
void step_fact_list(struct step *s, const char *key, const char *item); /* item NULL: empty list */
const struct fact *step_get_fact(const struct step *s, const char *key);

/* Worst verdict of one port / the whole report. */
enum verdict port_verdict(const struct port_report *p);
enum verdict report_verdict(const struct report *r);
/* counts[VERDICT_SKIP..VERDICT_FAIL] over every step. */
void report_counts(const struct report *r, int counts[4]);
int report_exit_code(const struct report *r);

/* Text: one line "  ok    id           message" per step, then "        cause: ..."
 * and "        fix:   ..." lines. Control bytes in server text appear as '?'. */
void step_text(const struct step *s, struct strbuf *out);
void port_heading_text(const struct port_report *p, struct strbuf *out);
/* The closing summary line(s) with the overall verdict and, with several
 * ports, a one-line-per-port comparison. */
void report_summary_text(const struct report *r, struct strbuf *out);
/* The whole report as JSON (pretty when pretty != 0), newline-terminated. */
void report_json(const struct report *r, struct strbuf *out, int pretty);

#endif
