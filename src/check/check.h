/* check: submitcheck's steps, run against any SMTP submission service
 * through submitd's own client code (smtp/client.h, tls/tlsclient.h) and
 * the relay's resolver (relay/dns.h): DNS, TCP connect to every address,
 * greeting and EHLO, AUTH before TLS, STARTTLS or implicit TLS, the
 * certificate, probes for old TLS versions, weak ciphers and STARTTLS
 * command injection, AUTH, and an optional test message. Every step ends
 * as one report step (report.h) with a verdict, cause and fix. Blocking;
 * every network operation bounded by the timeout. */
#ifndef SUBMITD_CHECK_H
#define SUBMITD_CHECK_H

#include <stddef.h>

#include "check/report.h"

enum check_tls_mode { CHECK_TLS_AUTO = 0, CHECK_TLS_STARTTLS, CHECK_TLS_IMPLICIT };

/* Called when a step is complete (p is NULL for host-level steps). */
typedef void (*check_step_fn)(void *arg, const struct report *r, const struct port_report *p, const struct step *s);
/* The SMTP dialogue: label names the connection ("587", "587 probe tls1.0"). */
typedef void (*check_transcript_fn)(void *arg, const char *label, int sent, const char *line, size_t len);

struct check_opts {
    const char *host;            /* name or IP literal */
    int ports[REPORT_MAX_PORTS];
    enum check_tls_mode port_modes[REPORT_MAX_PORTS]; /* per port; AUTO: tls_mode decides */
    size_t nports;
    enum check_tls_mode tls_mode;    /* AUTO: implicit on 465, STARTTLS elsewhere */
    int family;                  /* AF_UNSPEC, AF_INET, AF_INET6 */
    int timeout_ms;              /* per network operation */
    const char *ca_file;         /* NULL: system store */
    const char *servername;      /* SNI and certificate name; NULL: host */
    const char *resolver;        /* "IP[:PORT]" or NULL: system resolver */
    const char *ehlo_name;       /* NULL: our address as a literal */
    const char *user;            /* NULL: no login */
    const char *password;        /* with user */
    const char *oauth_token;     /* XOAUTH2 / OAUTHBEARER */
    const char *mech;            /* forced mechanism or NULL */
    const char *send_to;         /* test message recipient or NULL */
    const char *mail_from;       /* its sender */
    int probes;                  /* run the extra-connection TLS probes */
    int expiry_warn_days;
    check_step_fn on_step;
    void *on_step_arg;
    check_transcript_fn transcript;
    void *transcript_arg;
};

/* Runs every step; fills r (report_init is done here; report_free after). */
void check_run(const struct check_opts *o, struct report *r);

/* Pure: splits "host", "host:587", "[::1]:587", "[::1]", "::1" (a bare
 * IPv6 literal has no port) into host and port (0 when absent). 0, or -1
 * for an empty host, an unclosed '[', a bad port or a host that does not
 * fit hostlen. */
int check_split_target(const char *arg, char *host, size_t hostlen, int *port);

/* Pure: parses "25,465,587" into ports (1..65535, no duplicates, at most
 * max); an item may end in "/tls" or "/starttls" to force that port's
 * mode ("2525,2465/tls"), else its mode is CHECK_TLS_AUTO. Returns the
 * count or -1. */
int check_parse_ports(const char *s, int *ports, enum check_tls_mode *modes, size_t max);

#endif
