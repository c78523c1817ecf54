/* submitcheck: tests any mail submission service (port 587/465, or 25)
 * end to end and explains what is wrong: DNS, TCP, greeting and EHLO,
 * AUTH before TLS, STARTTLS or implicit TLS, the certificate, old TLS
 * versions, weak ciphers, STARTTLS injection, AUTH and an optional test
 * message (the steps are in src/check/). This file owns the command line:
 * option parsing, secrets (password file, SUBMITCHECK_PASSWORD or a no-echo
 * prompt; never argv), the text output printed step by step, --verbose
 * transcripts with AUTH secrets masked, --json, and the exit code:
 * 0 all ok, 1 warnings, 2 failures, 3 usage error. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth/sasl.h"
#include "check/advice.h"
#include "check/check.h"
#include "check/report.h"
#include "core/secret.h"
#include "core/util.h"
#include "relay/dns.h"
#include "smtp/parse.h"

#define DEFAULT_PORT 587
#define DEFAULT_TIMEOUT_MS 10000
#define TOKEN_MAX 16384
#define HOST_MAX 256

struct cli {
    struct check_opts o;
    int json;
    int verbose;
    const char *password_file;
    const char *token_file;
    const char *ports_arg;
    const char *target;
    char host[HOST_MAX];
    char password[SASL_PASS_MAX + 1];
    char token[TOKEN_MAX];
    const struct port_report *last_port; /* text output: the port whose heading was printed */
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: submitcheck [options] HOST[:PORT]\n"
            "Checks a mail submission service end to end and says what to fix.\n"
            "  --ports LIST            ports to check, e.g. 25,465,587 or 2525,2465/tls (default:\n"
            "                          PORT, else 587); PORT/tls or PORT/starttls forces the mode\n"
            "  --starttls | --tls      force STARTTLS / implicit TLS (default: implicit on 465)\n"
            "  -4 | -6                 IPv4 / IPv6 addresses only\n"
            "  --timeout SECONDS       per network operation (default 10)\n"
            "  --ca FILE               trust the CA certificates in FILE instead of the system store\n"
            "  --servername NAME       name for SNI and the certificate check (default HOST)\n"
            "  --resolver IP[:PORT]    ask this DNS server (default: the system resolver)\n"
            "  --ehlo NAME             EHLO name (default: this machine's address as a literal)\n"
            "  --user USER             log in as USER; the password comes from --password-file,\n"
            "                          $SUBMITCHECK_PASSWORD or a prompt, never the command line\n"
            "  --password-file FILE    the first line of FILE is the password\n"
            "  --oauth-token-file FILE an OAuth2 access token for XOAUTH2 / OAUTHBEARER\n"
            "  --mech MECH             PLAIN, LOGIN, XOAUTH2 or OAUTHBEARER (default: the best offered)\n"
            "  --send-to ADDR          send a test message to ADDR\n"
            "  --from ADDR             its sender (default: --user when it is an address)\n"
            "  --no-probe              skip the probes on extra connections (TLS 1.0/1.1, weak\n"
            "                          ciphers, STARTTLS injection)\n"
            "  --expiry-warn DAYS      warn when the certificate expires within DAYS (default 14)\n"
            "  --json                  print the report as JSON (docs/submitcheck.schema.json)\n"
            "  -v, --verbose           print the SMTP dialogue on stderr (AUTH secrets masked)\n"
            "  -h, --help              this text\n"
            "Exit status: 0 all ok, 1 warnings, 2 failures, 3 usage error.\n");
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "submitcheck: ");
    fprintf(stderr, fmt, arg ? arg : "");
    fprintf(stderr, "\nTry submitcheck --help.\n");
    return EXIT_CHECK_USAGE;
}

/* "10", "2.5", "0.3" seconds -> ms; -1 when bad or outside 0.1..600. */
static int parse_seconds(const char *s)
{
    long whole = 0, frac = 0, scale = 1000;
    int digits = 0;
    const char *p = s;
    for (; *p >= '0' && *p <= '9'; p++, digits++) {
        if (whole > 1000)
            return -1;
        whole = whole * 10 + (*p - '0');
    }
    if (*p == '.') {
        for (p++; *p >= '0' && *p <= '9'; p++, digits++) {
            if (scale > 1) {
                scale /= 10;
                frac += (*p - '0') * scale;
            }
        }
    }
    if (*p || !digits)
        return -1;
    long ms = whole * 1000 + frac;
    return ms >= 100 && ms <= 600000 ? (int)ms : -1;
}

static int parse_int(const char *s, int lo, int hi)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi)
        return -1;
    return (int)v;
}

/* ---- output ------------------------------------------------------------------ */

static void print_step(void *arg, const struct report *r, const struct port_report *p, const struct step *s)
{
    struct cli *cli = arg;
    if (cli->json)
        return;
    struct strbuf b;
    sb_init(&b);
    if (p && p != cli->last_port) {
        port_heading_text(p, &b);
        cli->last_port = p;
    }
    step_text(s, &b);
    fwrite(b.s, 1, b.len, stdout);
    fflush(stdout);
    sb_free(&b);
}

static void print_transcript(void *arg, const char *label, int sent, const char *line, size_t len)
{
    (void)arg;
    struct strbuf b;
    sb_init(&b);
    sb_printf(&b, "  [%s] %s ", label, sent ? "C:" : "S:");
    for (size_t i = 0; i < len && i < 2000; i++) {
        unsigned char c = (unsigned char)line[i];
        char out = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
        sb_append(&b, &out, 1);
    }
    sb_puts(&b, "\n");
    fwrite(b.s, 1, b.len, stderr);
    sb_free(&b);
}

/* ---- options -------------------------------------------------------------------- */

/* Value of "--name VALUE" or "--name=VALUE"; NULL when argv[i] is not name. */
static const char *opt_value(int argc, char **argv, int *i, const char *name, int *missing)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0)
        return NULL;
    if (argv[*i][n] == '=')
        return argv[*i] + n + 1;
    if (argv[*i][n] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        *missing = 1;
        return NULL;
    }
    return argv[++*i];
}

static int parse_args(struct cli *cli, int argc, char **argv)
{
    struct check_opts *o = &cli->o;
    /* options whose value is kept as it is (checked later in check_args) */
    const struct {
        const char *name;
        const char **dst;
    } plain[] = {{"--servername", &o->servername}, {"--ehlo", &o->ehlo_name}, {"--user", &o->user},
                 {"--password-file", &cli->password_file}, {"--oauth-token-file", &cli->token_file},
                 {"--mech", &o->mech}, {"--send-to", &o->send_to}, {"--from", &o->mail_from}};
    static const char *const with_value[] = {"--ports", "--timeout", "--ca", "--servername", "--resolver",
                                             "--ehlo", "--user", "--password-file", "--oauth-token-file", "--mech",
                                             "--send-to", "--from", "--expiry-warn", "--password"};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            exit(0);
        }
        if (strcmp(a, "--json") == 0) {
            cli->json = 1;
        } else if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
            cli->verbose = 1;
        } else if (strcmp(a, "-4") == 0 || strcmp(a, "-6") == 0) {
            int fam = a[1] == '4' ? AF_INET : AF_INET6;
            if (o->family != AF_UNSPEC && o->family != fam)
                return usage_error("-4 and -6 exclude each other%s", NULL);
            o->family = fam;
        } else if (strcmp(a, "--starttls") == 0 || strcmp(a, "--tls") == 0) {
            enum check_tls_mode m = a[2] == 's' ? CHECK_TLS_STARTTLS : CHECK_TLS_IMPLICIT;
            if (o->tls_mode != CHECK_TLS_AUTO && o->tls_mode != m)
                return usage_error("--starttls and --tls exclude each other%s", NULL);
            o->tls_mode = m;
        } else if (strcmp(a, "--no-probe") == 0) {
            o->probes = 0;
        } else if (a[0] == '-' && a[1] == '-') {
            const char *v = NULL;
            int missing = 0;
            size_t k;
            for (k = 0; k < ARRAY_LEN(with_value); k++) {
                v = opt_value(argc, argv, &i, with_value[k], &missing);
                if (v || missing)
                    break;
            }
            if (missing)
                return usage_error("%s needs a value", with_value[k]);
            if (!v)
                return usage_error("unknown option %s", a);
            const char *name = with_value[k];
            size_t pk;
            for (pk = 0; pk < ARRAY_LEN(plain) && strcmp(plain[pk].name, name) != 0; pk++)
                ;
            if (pk < ARRAY_LEN(plain)) {
                *plain[pk].dst = v;
            } else if (strcmp(name, "--password") == 0) {
                return usage_error("passwords are never taken from the command line%s: use --password-file FILE, "
                                   "$SUBMITCHECK_PASSWORD or the prompt", NULL);
            } else if (strcmp(name, "--ports") == 0) {
                int n = check_parse_ports(v, o->ports, o->port_modes, REPORT_MAX_PORTS);
                if (n < 0)
                    return usage_error("--ports: up to 8 different ports separated by commas, each optionally "
                                       "with /tls or /starttls, got %s", v);
                o->nports = (size_t)n;
                cli->ports_arg = v;
            } else if (strcmp(name, "--timeout") == 0) {
                o->timeout_ms = parse_seconds(v);
                if (o->timeout_ms < 0)
                    return usage_error("--timeout: seconds between 0.1 and 600, got %s", v);
            } else if (strcmp(name, "--ca") == 0) {
                if (access(v, R_OK) != 0)
                    return usage_error("--ca: cannot read %s", v);
                o->ca_file = v;
            } else if (strcmp(name, "--resolver") == 0) {
                char server[80];
                const char *why = "";
                if (dns_parse_server(v, server, sizeof(server), &why) != 0) {
                    fprintf(stderr, "submitcheck: --resolver %s: %s\n", v, why);
                    return EXIT_CHECK_USAGE;
                }
                o->resolver = v;
            } else if (strcmp(name, "--expiry-warn") == 0) {
                o->expiry_warn_days = parse_int(v, 0, 3650);
                if (o->expiry_warn_days < 0)
                    return usage_error("--expiry-warn: days between 0 and 3650, got %s", v);
            }
        } else if (a[0] == '-' && a[1]) {
            return usage_error("unknown option %s", a);
        } else if (cli->target) {
            return usage_error("one HOST[:PORT] only (extra: %s)", a);
        } else {
            cli->target = a;
        }
    }
    return 0;
}

/* Checks combinations and fills the host and ports. */
static int check_args(struct cli *cli)
{
    struct check_opts *o = &cli->o;
    if (!cli->target)
        return usage_error("missing HOST[:PORT]%s", NULL);
    int port = 0;
    if (check_split_target(cli->target, cli->host, sizeof(cli->host), &port) != 0)
        return usage_error("bad HOST[:PORT]: %s (IPv6 with a port: [2001:db8::1]:587)", cli->target);
    for (const char *p = cli->host; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == '/' || *p == '@')
            return usage_error("bad host name %s", cli->host);
    o->host = cli->host;
    if (port && cli->ports_arg)
        return usage_error("give the port either in HOST:PORT or with --ports, not both%s", NULL);
    if (!o->nports) {
        o->ports[0] = port ? port : DEFAULT_PORT;
        o->nports = 1;
    }
    if (cli->password_file && cli->token_file)
        return usage_error("--password-file and --oauth-token-file exclude each other%s", NULL);
    if (cli->password_file && !o->user)
        return usage_error("--password-file needs --user%s", NULL);
    if (o->mech) {
        static const char *const known[] = {"PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"};
        size_t k;
        for (k = 0; k < ARRAY_LEN(known) && !str_ieq(o->mech, known[k]); k++)
            ;
        if (k == ARRAY_LEN(known))
            return usage_error("--mech: PLAIN, LOGIN, XOAUTH2 or OAUTHBEARER, got %s", o->mech);
        if (k >= 2 && !cli->token_file)
            return usage_error("--mech %s needs --oauth-token-file", o->mech);
        if (k < 2 && cli->token_file)
            return usage_error("--mech %s needs a password, not a token", o->mech);
        if (k < 2 && !o->user)
            return usage_error("--mech %s needs --user", o->mech);
    }
    if (o->user && (strlen(o->user) > SASL_USER_MAX || strpbrk(o->user, "\r\n")))
        return usage_error("--user: at most 256 bytes, no line breaks%s", NULL);
    if (o->send_to) {
        if (!smtp_address_valid(o->send_to, 1))
            return usage_error("--send-to: not a valid address: %s", o->send_to);
        const char *from = o->mail_from ? o->mail_from : o->user;
        if (!from || !smtp_address_valid(from, 1))
            return usage_error("--send-to needs a sender: --from ADDR (or a --user that is an address)%s", NULL);
    } else if (o->mail_from) {
        return usage_error("--from is only used with --send-to%s", NULL);
    }
    if (o->ehlo_name && (!*o->ehlo_name || strpbrk(o->ehlo_name, " \t\r\n") || strlen(o->ehlo_name) > 255))
        return usage_error("--ehlo: one word, at most 255 bytes%s", NULL);
    if (o->servername && (!*o->servername || strlen(o->servername) > 255))
        return usage_error("--servername: a host name%s", NULL);
    return 0;
}

/* Reads the password or token (never from argv). */
static int get_secrets(struct cli *cli)
{
    struct check_opts *o = &cli->o;
    char err[400];
    if (cli->token_file) {
        if (secret_from_file(cli->token_file, cli->token, sizeof(cli->token), err, sizeof(err)) != 0) {
            fprintf(stderr, "submitcheck: --oauth-token-file %s\n", err);
            return EXIT_CHECK_USAGE;
        }
        o->oauth_token = cli->token;
        return 0;
    }
    if (!o->user)
        return 0;
    const char *env = getenv("SUBMITCHECK_PASSWORD");
    if (cli->password_file) {
        if (secret_from_file(cli->password_file, cli->password, sizeof(cli->password), err, sizeof(err)) != 0) {
            fprintf(stderr, "submitcheck: --password-file %s\n", err);
            return EXIT_CHECK_USAGE;
        }
    } else if (env) {
        if (str_copy(cli->password, env, sizeof(cli->password)) >= sizeof(cli->password)) {
            fprintf(stderr, "submitcheck: SUBMITCHECK_PASSWORD is longer than %d bytes\n", SASL_PASS_MAX);
            return EXIT_CHECK_USAGE;
        }
    } else {
        char prompt[400];
        snprintf(prompt, sizeof(prompt), "Password for %.300s: ", o->user);
        if (secret_prompt(prompt, cli->password, sizeof(cli->password), err, sizeof(err)) != 0) {
            fprintf(stderr, "submitcheck: cannot read the password: %s; use --password-file FILE or "
                            "SUBMITCHECK_PASSWORD\n", err);
            return EXIT_CHECK_USAGE;
        }
    }
    if (!cli->password[0]) {
        fprintf(stderr, "submitcheck: the password is empty\n");
        return EXIT_CHECK_USAGE;
    }
    o->password = cli->password;
    return 0;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    struct cli *cli = xcalloc(1, sizeof(*cli));
    cli->o.family = AF_UNSPEC;
    cli->o.timeout_ms = DEFAULT_TIMEOUT_MS;
    cli->o.probes = 1;
    cli->o.expiry_warn_days = EXPIRY_WARN_DAYS;
    int rc = parse_args(cli, argc, argv);
    if (rc == 0)
        rc = check_args(cli);
    if (rc == 0)
        rc = get_secrets(cli);
    if (rc != 0) {
        mem_wipe(cli, sizeof(*cli));
        free(cli);
        return rc;
    }
    cli->o.on_step = print_step;
    cli->o.on_step_arg = cli;
    if (cli->verbose)
        cli->o.transcript = print_transcript;
    if (!cli->json) {
        printf("submitcheck %s, port%s", cli->o.host, cli->o.nports > 1 ? "s" : "");
        for (size_t i = 0; i < cli->o.nports; i++)
            printf("%s%d", i ? "," : " ", cli->o.ports[i]);
        printf("\n");
        fflush(stdout);
    }
    struct report r;
    check_run(&cli->o, &r);
    struct strbuf out;
    sb_init(&out);
    if (cli->json)
        report_json(&r, &out, 1);
    else
        report_summary_text(&r, &out);
    fwrite(out.s, 1, out.len, stdout);
    sb_free(&out);
    rc = report_exit_code(&r);
    report_free(&r);
    mem_wipe(cli, sizeof(*cli));
    free(cli);
    if (fflush(stdout) != 0)
        return EXIT_CHECK_FAIL;
    return rc;
}
