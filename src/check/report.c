/* report: submitcheck's report model (steps, facts, ports), verdict
 * aggregation and exit code, and the text and JSON renderings (see
 * report.h; the JSON shape is docs/submitcheck.schema.json). */
#include "check/report.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check/json.h"

#define REPORT_SCHEMA_VERSION 1

static const char *const verdict_names[] = {"skip", "ok", "warn", "fail"};

const char *verdict_name(enum verdict v)
{
    if ((int)v < 0 || (size_t)v >= ARRAY_LEN(verdict_names))
        return "fail";
    return verdict_names[v];
}

enum verdict verdict_worst(enum verdict a, enum verdict b)
{
    return a > b ? a : b;
}

int verdict_exit_code(enum verdict v)
{
    switch (v) {
    case VERDICT_WARN:
        return EXIT_CHECK_WARN;
    case VERDICT_FAIL:
        return EXIT_CHECK_FAIL;
    case VERDICT_SKIP:
    case VERDICT_OK:
        break;
    }
    return EXIT_CHECK_OK;
}

/* ---- model -------------------------------------------------------------- */

void report_init(struct report *r, const char *host, long long started_epoch)
{
    memset(r, 0, sizeof(*r));
    r->host = xstrdup(host);
    time_t t = (time_t)started_epoch;
    struct tm tm;
    char buf[32] = "1970-01-01T00:00:00Z";
    if (gmtime_r(&t, &tm))
        strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    r->started = xstrdup(buf);
}

static void fact_clear(struct fact *f)
{
    free(f->key);
    free(f->str);
    for (size_t i = 0; i < f->nlist; i++)
        free(f->list[i]);
    free(f->list);
    memset(f, 0, sizeof(*f));
}

static void step_free(struct step *s)
{
    free(s->id);
    free(s->message);
    free(s->cause);
    for (size_t i = 0; i < s->nfix; i++)
        free(s->fix[i]);
    free(s->fix);
    for (size_t i = 0; i < s->nfacts; i++)
        fact_clear(&s->facts[i]);
    free(s->facts);
    free(s);
}

static void steps_free(struct step **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        step_free(v[i]);
    free(v);
}

void report_free(struct report *r)
{
    steps_free(r->steps, r->nsteps);
    for (size_t i = 0; i < r->nports; i++) {
        steps_free(r->ports[i]->steps, r->ports[i]->nsteps);
        free(r->ports[i]->address);
        free(r->ports[i]);
    }
    free(r->ports);
    free(r->host);
    free(r->started);
    memset(r, 0, sizeof(*r));
}

struct port_report *report_add_port(struct report *r, int port, const char *mode)
{
    if (r->nports >= REPORT_MAX_PORTS)
        return NULL;
    struct port_report *p = xcalloc(1, sizeof(*p));
    p->port = port;
    p->mode = mode;
    r->ports = xrealloc(r->ports, (r->nports + 1) * sizeof(*r->ports));
    r->ports[r->nports++] = p;
    return p;
}

struct step *report_add_step(struct report *r, struct port_report *p, const char *id)
{
    struct step *s = xcalloc(1, sizeof(*s));
    s->id = xstrdup(id);
    s->verdict = VERDICT_SKIP;
    s->message = xstrdup("");
    s->ms = -1;
    struct step ***v = p ? &p->steps : &r->steps;
    size_t *n = p ? &p->nsteps : &r->nsteps;
    *v = xrealloc(*v, (*n + 1) * sizeof(**v));
    (*v)[(*n)++] = s;
    return s;
}

/* A bounded formatted copy. */
static char *vfmt(const char *fmt, va_list ap)
{
    char buf[REPORT_TEXT_MAX];
    vsnprintf(buf, sizeof(buf), fmt, ap);
    return xstrdup(buf);
}

void step_set(struct step *s, enum verdict v, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    free(s->message);
    s->message = vfmt(fmt, ap);
    va_end(ap);
    s->verdict = v;
}

void step_worsen(struct step *s, enum verdict v, const char *fmt, ...)
{
    char buf[REPORT_TEXT_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    struct strbuf b;
    sb_init(&b);
    sb_puts(&b, s->message);
    if (b.len > 0 && buf[0])
        sb_puts(&b, "; ");
    sb_puts(&b, buf);
    if (b.len >= REPORT_TEXT_MAX)
        b.s[REPORT_TEXT_MAX - 1] = '\0';
    free(s->message);
    s->message = sb_steal(&b);
    s->verdict = verdict_worst(s->verdict, v);
}

void step_cause(struct step *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    free(s->cause);
    s->cause = vfmt(fmt, ap);
    va_end(ap);
}

void step_fix(struct step *s, const char *fmt, ...)
{
    if (s->nfix >= STEP_MAX_FIX)
        return;
    va_list ap;
    va_start(ap, fmt);
    char *line = vfmt(fmt, ap);
    va_end(ap);
    for (size_t i = 0; i < s->nfix; i++) {
        if (strcmp(s->fix[i], line) == 0) { /* the same advice twice says nothing more */
            free(line);
            return;
        }
    }
    s->fix = xrealloc(s->fix, (s->nfix + 1) * sizeof(*s->fix));
    s->fix[s->nfix++] = line;
}

static struct fact *fact_slot(struct step *s, const char *key, enum fact_type type)
{
    for (size_t i = 0; i < s->nfacts; i++) {
        if (strcmp(s->facts[i].key, key) == 0) {
            if (s->facts[i].type == type && type == FACT_LIST)
                return &s->facts[i];
            fact_clear(&s->facts[i]);
            s->facts[i].key = xstrdup(key);
            s->facts[i].type = type;
            return &s->facts[i];
        }
    }
    if (s->nfacts >= STEP_MAX_FACTS)
        return NULL;
    s->facts = xrealloc(s->facts, (s->nfacts + 1) * sizeof(*s->facts));
    struct fact *f = &s->facts[s->nfacts++];
    memset(f, 0, sizeof(*f));
    f->key = xstrdup(key);
    f->type = type;
    return f;
}

static char *bounded_dup(const char *v)
{
    size_t n = strlen(v);
    return xstrndup(v, n < REPORT_TEXT_MAX ? n : REPORT_TEXT_MAX - 1);
}

void step_fact_str(struct step *s, const char *key, const char *val)
{
    if (!val)
        return;
    struct fact *f = fact_slot(s, key, FACT_STR);
    if (f)
        f->str = bounded_dup(val);
}

void step_fact_int(struct step *s, const char *key, long long val)
{
    struct fact *f = fact_slot(s, key, FACT_INT);
    if (f)
        f->num = val;
}

void step_fact_bool(struct step *s, const char *key, int val)
{
    struct fact *f = fact_slot(s, key, FACT_BOOL);
    if (f)
        f->num = val != 0;
}

void step_fact_list(struct step *s, const char *key, const char *item)
{
    struct fact *f = fact_slot(s, key, FACT_LIST);
    if (!f || !item || f->nlist >= FACT_MAX_LIST)
        return;
    f->list = xrealloc(f->list, (f->nlist + 1) * sizeof(*f->list));
    f->list[f->nlist++] = bounded_dup(item);
}

const struct fact *step_get_fact(const struct step *s, const char *key)
{
    for (size_t i = 0; i < s->nfacts; i++)
        if (strcmp(s->facts[i].key, key) == 0)
            return &s->facts[i];
    return NULL;
}

/* ---- aggregation --------------------------------------------------------- */

static enum verdict steps_verdict(struct step *const *v, size_t n)
{
    enum verdict w = VERDICT_OK;
    for (size_t i = 0; i < n; i++)
        w = verdict_worst(w, v[i]->verdict);
    return w;
}

enum verdict port_verdict(const struct port_report *p)
{
    return steps_verdict(p->steps, p->nsteps);
}

enum verdict report_verdict(const struct report *r)
{
    enum verdict w = steps_verdict(r->steps, r->nsteps);
    for (size_t i = 0; i < r->nports; i++)
        w = verdict_worst(w, port_verdict(r->ports[i]));
    return w;
}

void report_counts(const struct report *r, int counts[4])
{
    memset(counts, 0, 4 * sizeof(int));
    for (size_t i = 0; i < r->nsteps; i++)
        counts[r->steps[i]->verdict]++;
    for (size_t p = 0; p < r->nports; p++)
        for (size_t i = 0; i < r->ports[p]->nsteps; i++)
            counts[r->ports[p]->steps[i]->verdict]++;
}

int report_exit_code(const struct report *r)
{
    return verdict_exit_code(report_verdict(r));
}

/* ---- text ------------------------------------------------------------------ */

/* Appends s with control bytes (server text) shown as '?'. */
static void put_clean(struct strbuf *out, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char c = (*p < 0x20 || *p == 0x7f) ? '?' : (char)*p;
        sb_append(out, &c, 1);
    }
}

void step_text(const struct step *s, struct strbuf *out)
{
    sb_printf(out, "  %-5s %-19s ", verdict_name(s->verdict), s->id);
    put_clean(out, s->message);
    sb_puts(out, "\n");
    if (s->verdict == VERDICT_OK || s->verdict == VERDICT_SKIP)
        return;
    if (s->cause) {
        sb_puts(out, "        cause: ");
        put_clean(out, s->cause);
        sb_puts(out, "\n");
    }
    for (size_t i = 0; i < s->nfix; i++) {
        sb_puts(out, i == 0 ? "        fix:   " : "               ");
        put_clean(out, s->fix[i]);
        sb_puts(out, "\n");
    }
}

void port_heading_text(const struct port_report *p, struct strbuf *out)
{
    sb_printf(out, "port %d (%s)\n", p->port, strcmp(p->mode, "implicit") == 0 ? "implicit TLS" : "STARTTLS");
}

static void counts_text(const int counts[4], struct strbuf *out)
{
    sb_printf(out, "%d failure%s, %d warning%s, %d ok, %d skipped", counts[VERDICT_FAIL],
              counts[VERDICT_FAIL] == 1 ? "" : "s", counts[VERDICT_WARN], counts[VERDICT_WARN] == 1 ? "" : "s",
              counts[VERDICT_OK], counts[VERDICT_SKIP]);
}

/* The first step of a port with the given verdict (for the comparison). */
static const struct step *first_with(const struct port_report *p, enum verdict v)
{
    for (size_t i = 0; i < p->nsteps; i++)
        if (p->steps[i]->verdict == v)
            return p->steps[i];
    return NULL;
}

void report_summary_text(const struct report *r, struct strbuf *out)
{
    if (r->nports > 1) {
        sb_puts(out, "comparison\n");
        for (size_t i = 0; i < r->nports; i++) {
            const struct port_report *p = r->ports[i];
            enum verdict v = port_verdict(p);
            const char *mode = strcmp(p->mode, "implicit") == 0 ? "implicit TLS" : "STARTTLS";
            const struct step *worst = v == VERDICT_OK ? NULL : first_with(p, v);
            sb_printf(out, "  %-5s port %-5d ", verdict_name(v), p->port);
            if (worst) {
                sb_printf(out, "%-12s %s: ", mode, worst->id);
                put_clean(out, worst->message);
            } else {
                sb_puts(out, mode);
            }
            sb_puts(out, "\n");
        }
    }
    int counts[4];
    report_counts(r, counts);
    enum verdict v = report_verdict(r);
    sb_printf(out, "result: %s (", v == VERDICT_FAIL ? "FAIL" : v == VERDICT_WARN ? "WARN" : "OK");
    counts_text(counts, out);
    sb_printf(out, ") in %lld ms\n", r->duration_ms);
}

/* ---- JSON ------------------------------------------------------------------ */

static void json_step(struct json *j, const struct step *s)
{
    json_obj_begin(j, NULL);
    json_str(j, "id", s->id);
    json_str(j, "verdict", verdict_name(s->verdict));
    json_str(j, "message", s->message);
    json_str(j, "cause", s->cause);
    json_arr_begin(j, "fix");
    for (size_t i = 0; i < s->nfix; i++)
        json_str(j, NULL, s->fix[i]);
    json_arr_end(j);
    if (s->ms >= 0)
        json_int(j, "duration_ms", s->ms);
    else
        json_null(j, "duration_ms");
    json_obj_begin(j, "facts");
    for (size_t i = 0; i < s->nfacts; i++) {
        const struct fact *f = &s->facts[i];
        switch (f->type) {
        case FACT_STR:
            json_str(j, f->key, f->str);
            break;
        case FACT_INT:
            json_int(j, f->key, f->num);
            break;
        case FACT_BOOL:
            json_bool(j, f->key, (int)f->num);
            break;
        case FACT_LIST:
            json_arr_begin(j, f->key);
            for (size_t k = 0; k < f->nlist; k++)
                json_str(j, NULL, f->list[k]);
            json_arr_end(j);
            break;
        }
    }
    json_obj_end(j);
    json_obj_end(j);
}

static void json_steps(struct json *j, struct step *const *v, size_t n)
{
    json_arr_begin(j, "steps");
    for (size_t i = 0; i < n; i++)
        json_step(j, v[i]);
    json_arr_end(j);
}

static void json_counts(struct json *j, const int counts[4])
{
    json_obj_begin(j, "counts");
    for (int v = VERDICT_SKIP; v <= VERDICT_FAIL; v++)
        json_int(j, verdict_name((enum verdict)v), counts[v]);
    json_obj_end(j);
}

void report_json(const struct report *r, struct strbuf *out, int pretty)
{
    struct json j;
    json_init(&j, out, pretty);
    int counts[4];
    report_counts(r, counts);
    enum verdict v = report_verdict(r);
    json_obj_begin(&j, NULL);
    json_int(&j, "schema_version", REPORT_SCHEMA_VERSION);
    json_str(&j, "tool", "submitcheck");
    json_str(&j, "host", r->host);
    json_str(&j, "started", r->started);
    json_int(&j, "duration_ms", r->duration_ms);
    json_str(&j, "verdict", verdict_name(v == VERDICT_SKIP ? VERDICT_OK : v));
    json_int(&j, "exit_code", verdict_exit_code(v));
    json_counts(&j, counts);
    json_steps(&j, r->steps, r->nsteps);
    json_arr_begin(&j, "ports");
    for (size_t i = 0; i < r->nports; i++) {
        const struct port_report *p = r->ports[i];
        json_obj_begin(&j, NULL);
        json_int(&j, "port", p->port);
        json_str(&j, "tls_mode", p->mode);
        json_str(&j, "address", p->address);
        enum verdict pv = port_verdict(p);
        json_str(&j, "verdict", verdict_name(pv == VERDICT_SKIP ? VERDICT_OK : pv));
        json_steps(&j, p->steps, p->nsteps);
        json_obj_end(&j);
    }
    json_arr_end(&j);
    json_obj_end(&j);
    sb_puts(out, "\n");
}
