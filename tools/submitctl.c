/* submitctl: the administration tool. Manages the accounts file (add,
 * change password, delete, list, suspend, set senders), prints password
 * hashes, makes DKIM keys (printing their DNS record and config lines),
 * prints the SPF/DKIM/DMARC records a sending domain should publish, and
 * asks a running submitd to reload (SIGHUP to the pid in the config's
 * pid-file) or, over its control socket, to list and act on its queue
 * (`queue ...`, answers formatted by the daemon). Passwords come from SUBMITD_PASSWORD, a password
 * file or a no-echo prompt on /dev/tty, never from argv. The accounts file
 * is edited under an exclusive lock (FILE.lock), one line at a time with
 * every other byte kept, written to a temporary file in the same directory,
 * checked with accounts_load(), fsynced and renamed over the old file.
 * Exit codes: 0 ok, 1 failure, 2 usage error. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "auth/accounts.h"
#include "auth/acctfile.h"
#include "auth/passwd.h"
#include "auth/sasl.h"
#include "control/control.h"
#include "core/config.h"
#include "core/confval.h"
#include "core/secret.h"
#include "core/util.h"
#include "smtp/parse.h"

#define DEFAULT_CONFIG "/etc/submitd/submitd.conf"
#define EXIT_FAIL 1
#define EXIT_USAGE 2
#define HASH_MAX 512
#define MAX_SENDERS 1000
#define DKIM_GROUP "submitd" /* the daemon's group: may read the keys it re-reads after dropping root */
#define TXT_CHUNK 255        /* longest character-string in a TXT record (RFC 1035 3.3) */

struct ctl {
    const char *config_path; /* -c or the default */
    int config_given;
    const char *accounts_opt; /* -a */
};

/* Options after a subcommand. */
struct opts {
    const char *scheme;
    const char *password_file;
    const char *senders[MAX_SENDERS];
    size_t nsenders;
    const char *pos[MAX_SENDERS]; /* positional arguments */
    size_t npos;
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: submitctl [-c CONFIG] [-a ACCOUNTS] COMMAND ...\n"
            "  user add LOGIN [--sender ADDR]... [--scheme SCHEME] [--password-file FILE]\n"
            "  user passwd LOGIN [--scheme SCHEME] [--password-file FILE]\n"
            "  user del LOGIN\n"
            "  user list\n"
            "  user suspend LOGIN\n"
            "  user unsuspend LOGIN\n"
            "  user senders LOGIN ADDR...       replace the addresses LOGIN may send as\n"
            "  hash [--scheme SCHEME] [--password-file FILE]\n"
            "  reload                           SIGHUP to the pid in the config's pid-file\n"
            "  dkim keygen DOMAIN SELECTOR [--ed25519 | --rsa BITS] [--dir DIR]\n"
            "                                   make a DKIM signing key (default RSA 2048; BITS 2048-4096)\n"
            "                                   as DIR/DOMAIN.SELECTOR.key, print its DNS record and the\n"
            "                                   configuration lines (DIR: dkim/ next to CONFIG)\n"
            "  dns DOMAIN                       print the SPF, DKIM and DMARC records DOMAIN should publish\n"
            "                                   to send through this server\n"
            "  queue list | show ID | flush [ID] | hold ID [REASON] | release ID | delete ID\n"
            "                                   the running submitd's queue (over its control socket)\n"
            "  limits show [user:LOGIN | ip:ADDRESS] | reset user:LOGIN | ip:ADDRESS\n"
            "                                   the running submitd's rate limits, blocks and suspensions\n"
            "\n"
            "  -c CONFIG    configuration file (default " DEFAULT_CONFIG ")\n"
            "  -a ACCOUNTS  the accounts file to edit (instead of the config's `accounts`)\n"
            "  SCHEME       argon2id (default), yescrypt, bcrypt, sha512-crypt\n"
            "  ADDR         an address (user@example.com) or a whole domain (@example.com)\n"
            "\n"
            "Passwords are read from $SUBMITD_PASSWORD, from the first line of --password-file\n"
            "(which must not be readable by others), or asked twice on the terminal.\n");
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "submitctl: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(run submitctl -h for usage)\n");
    va_end(ap);
    return EXIT_USAGE;
}

/* ---- validation ------------------------------------------------------ */

static const char *login_problem(const char *login)
{
    size_t n = strlen(login);
    if (n == 0)
        return "empty login";
    if (n > SASL_USER_MAX)
        return "login longer than 256 bytes";
    if (login[0] == '#')
        return "a login cannot start with '#' (that line would be a comment)";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)login[i];
        if (c <= ' ' || c == 0x7f)
            return "a login cannot contain spaces or control characters";
        if (c == ':')
            return "a login cannot contain ':'";
    }
    return NULL;
}

static const char *sender_problem(const char *e)
{
    const char *at = strchr(e, '@');
    if (!at || strchr(at + 1, '@'))
        return "give one address (user@example.com) or a domain (@example.com)";
    for (const char *p = e; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= ' ' || c == 0x7f || strchr("\"(),:;<>[\\]", c))
            return "no spaces, commas, colons, quotes or brackets allowed";
    }
    const char *d = at + 1;
    if (*d == '\0' || *d == '.' || d[strlen(d) - 1] == '.' || strstr(d, ".."))
        return "bad domain";
    if (at > e && (e[0] == '.' || at[-1] == '.'))
        return "bad local part";
    return NULL;
}

static const char *scheme_prefix(const char *scheme)
{
    if (!scheme || strcmp(scheme, "argon2id") == 0)
        return "{ARGON2ID}";
    if (strcmp(scheme, "yescrypt") == 0)
        return "{CRYPT}";
    if (strcmp(scheme, "bcrypt") == 0)
        return "{BLF-CRYPT}";
    if (strcmp(scheme, "sha512-crypt") == 0)
        return "{SHA512-CRYPT}";
    return NULL;
}

static const char *scheme_name(enum pw_scheme s)
{
    switch (s) {
    case PW_YESCRYPT:
        return "yescrypt";
    case PW_BCRYPT:
        return "bcrypt";
    case PW_SHA512_CRYPT:
        return "sha512-crypt";
    case PW_ARGON2ID:
        return "argon2id";
    default:
        return "INVALID";
    }
}

/* ---- passwords ------------------------------------------------------- */

/* The new password typed twice at a no-echo prompt (core/secret). */
static int prompt_password(const char *what, char *out, size_t outlen)
{
    char prompt[400], err[300];
    char again[SASL_PASS_MAX + 2];
    snprintf(prompt, sizeof(prompt), "New password%s%.300s: ", what ? " for " : "", what ? what : "");
    int rc = -1;
    if (secret_prompt(prompt, out, outlen, err, sizeof(err)) != 0 ||
        secret_prompt("Again: ", again, sizeof(again), err, sizeof(err)) != 0)
        fprintf(stderr, "submitctl: %s; set SUBMITD_PASSWORD or use --password-file FILE; nothing changed\n", err);
    else if (strcmp(out, again) != 0)
        fprintf(stderr, "submitctl: the two passwords differ; nothing changed\n");
    else
        rc = 0;
    mem_wipe(again, sizeof(again));
    if (rc != 0)
        mem_wipe(out, outlen);
    return rc;
}

static int password_from_file(const char *path, char *out, size_t outlen)
{
    char err[400];
    if (secret_from_file(path, out, outlen, err, sizeof(err)) != 0) {
        fprintf(stderr, "submitctl: %s\n", err);
        return -1;
    }
    return 0;
}

/* Gets the new password: --password-file, then SUBMITD_PASSWORD, then the
 * terminal. Checks it can be used with `scheme`. */
static int get_password(const struct opts *o, const char *what, char *out, size_t outlen)
{
    const char *env = getenv("SUBMITD_PASSWORD");
    int rc;
    if (o->password_file) {
        rc = password_from_file(o->password_file, out, outlen);
    } else if (env) {
        rc = 0;
        if (str_copy(out, env, outlen) >= outlen) {
            fprintf(stderr, "submitctl: SUBMITD_PASSWORD is longer than %d bytes\n", SASL_PASS_MAX);
            rc = -1;
        }
    } else {
        rc = prompt_password(what, out, outlen);
    }
    if (rc != 0)
        return -1;
    size_t n = strlen(out);
    const char *bad = NULL;
    if (n == 0)
        bad = "the password is empty";
    else if (n > SASL_PASS_MAX)
        bad = "the password is longer than 1024 bytes (the SASL limit)";
    else if (strpbrk(out, "\r\n"))
        bad = "the password contains a line break";
    else if (n >= 512 && o->scheme && strcmp(o->scheme, "argon2id") != 0)
        bad = "passwords of 512 bytes or more need --scheme argon2id";
    if (bad) {
        fprintf(stderr, "submitctl: %s; nothing changed\n", bad);
        mem_wipe(out, outlen);
        return -1;
    }
    if (n > 72 && o->scheme && strcmp(o->scheme, "bcrypt") == 0)
        fprintf(stderr, "submitctl: warning: bcrypt uses only the first 72 bytes of the password\n");
    return 0;
}

/* Makes "{PREFIX}hash" for the accounts file. */
static int make_hash(const struct opts *o, const char *what, char *out, size_t outlen)
{
    char pw[SASL_PASS_MAX + 2];
    if (get_password(o, what, pw, sizeof(pw)) != 0)
        return -1;
    char h[HASH_MAX];
    int r = passwd_hash(o->scheme, pw, h, sizeof(h));
    mem_wipe(pw, sizeof(pw));
    if (r != 0) {
        fprintf(stderr, "submitctl: could not hash the password with %s\n", o->scheme ? o->scheme : "argon2id");
        return -1;
    }
    const char *pfx = scheme_prefix(o->scheme);
    if ((size_t)snprintf(out, outlen, "%s%s", pfx, h) >= outlen)
        return -1;
    return 0;
}

/* ---- the accounts file: src/auth/acctfile.c ----------------------------- */

/* Prints acctfile's problems (several lines) with the program prefix. */
static void print_err(const struct strbuf *err)
{
    if (err->len)
        fprintf(stderr, "submitctl: %s\n", err->s);
}

/* ---- commands --------------------------------------------------------- */

static char *accounts_path(const struct ctl *c)
{
    if (c->accounts_opt)
        return xstrdup(c->accounts_opt);
    struct errlist errs;
    errlist_init(&errs);
    struct config *cfg = config_load_paths(c->config_path, &errs);
    if (!cfg) {
        fprintf(stderr, "submitctl: cannot use the configuration %s:\n", c->config_path);
        for (size_t i = 0; i < errs.n; i++)
            fprintf(stderr, "  %s\n", errs.v[i]);
        fprintf(stderr, "(fix it, or give the accounts file with -a FILE)\n");
        errlist_free(&errs);
        return NULL;
    }
    errlist_free(&errs);
    char *p = cfg->accounts ? xstrdup(cfg->accounts) : NULL;
    config_unref(cfg);
    if (!p)
        fprintf(stderr, "submitctl: %s has no `accounts` file; give one with -a FILE\n", c->config_path);
    return p;
}

static void reload_hint(const struct ctl *c)
{
    if (c->accounts_opt && !c->config_given)
        printf("submitd uses the change after a reload: submitctl -c CONFIG reload (or send SIGHUP to submitd)\n");
    else
        printf("submitd uses the change after a reload: submitctl%s%s reload (or send SIGHUP to submitd)\n",
               c->config_given ? " -c " : "", c->config_given ? c->config_path : "");
}

/* Joins validated, lower-cased, de-duplicated sender entries with ','. */
static char *sender_list(const char *const *v, size_t n)
{
    struct strbuf b;
    sb_init(&b);
    char **seen = xcalloc(n ? n : 1, sizeof(*seen));
    size_t ns = 0;
    for (size_t i = 0; i < n; i++) {
        char *s = xstrdup(v[i]);
        str_lower(s);
        int dup = 0;
        for (size_t k = 0; k < ns; k++)
            dup |= strcmp(seen[k], s) == 0;
        if (dup) {
            free(s);
            continue;
        }
        seen[ns++] = s;
        sb_printf(&b, "%s%s", b.len ? "," : "", s);
    }
    for (size_t k = 0; k < ns; k++)
        free(seen[k]);
    free(seen);
    return sb_steal(&b);
}

static int check_senders(const char *const *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const char *why = sender_problem(v[i]);
        if (why) {
            fprintf(stderr, "submitctl: bad sender \"%s\": %s\n", v[i], why);
            return -1;
        }
    }
    return 0;
}

/* Applies one edit to LOGIN's line (or appends a new line for add). */
static int apply(const char *path, const char *login, int add, const char *newline_text, const struct acct_edit *e)
{
    struct strbuf err;
    sb_init(&err);
    int created = 0;
    int rc = add ? acctfile_add(path, login, newline_text, &created, &err) : acctfile_edit(path, login, e, &err);
    print_err(&err);
    sb_free(&err);
    if (rc == 0 && created)
        printf("created %s (mode 0600); if submitd runs as its own user, let it read the file: "
               "chgrp submitd %s && chmod 640 %s\n", path, path, path);
    return rc;
}

/* Fails early (before asking for a password) when LOGIN's presence is
 * not what the command needs. */
static int precheck(const char *path, const char *login, int want_present)
{
    struct acctfile af;
    struct strbuf err;
    sb_init(&err);
    int r = acctfile_open(&af, path, 0, !want_present, &err);
    print_err(&err);
    sb_free(&err);
    if (r != 0)
        return -1;
    size_t off, len;
    int found = acctfile_find(&af, login, &off, &len);
    acctfile_close(&af);
    if (found && !want_present) {
        fprintf(stderr, "submitctl: %s: %s already exists (logins are case-insensitive)\n", path, login);
        return -1;
    }
    if (!found && want_present) {
        fprintf(stderr, "submitctl: %s: no such login: %s (see `submitctl user list`)\n", path, login);
        return -1;
    }
    return 0;
}

static int parse_opts(int argc, char **argv, int allow_sender, int allow_pw, struct opts *o)
{
    memset(o, 0, sizeof(*o));
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *val = NULL;
        const char *name = a;
        char nbuf[32];
        if (strncmp(a, "--", 2) == 0 && a[2] != '\0') {
            const char *eq = strchr(a, '=');
            if (eq && (size_t)(eq - a) < sizeof(nbuf)) {
                memcpy(nbuf, a, (size_t)(eq - a));
                nbuf[eq - a] = '\0';
                name = nbuf;
                val = eq + 1;
            }
            int known = (allow_sender && strcmp(name, "--sender") == 0) ||
                        (allow_pw && (strcmp(name, "--scheme") == 0 || strcmp(name, "--password-file") == 0));
            if (!known)
                return usage_error("unknown option %s", name);
            if (!val) {
                if (i + 1 >= argc)
                    return usage_error("%s needs a value", name);
                val = argv[++i];
            }
            if (strcmp(name, "--sender") == 0) {
                if (o->nsenders >= MAX_SENDERS)
                    return usage_error("too many --sender options");
                o->senders[o->nsenders++] = val;
            } else if (strcmp(name, "--scheme") == 0) {
                if (!scheme_prefix(val))
                    return usage_error("unknown scheme %s (argon2id, yescrypt, bcrypt, sha512-crypt)", val);
                o->scheme = val;
            } else {
                o->password_file = val;
            }
            continue;
        }
        if (a[0] == '-' && a[1] != '\0')
            return usage_error("unknown option %s", a);
        if (o->npos >= MAX_SENDERS)
            return usage_error("too many arguments");
        o->pos[o->npos++] = a;
    }
    return 0;
}

static int cmd_user_list(const char *path)
{
    struct acctfile af;
    struct strbuf err;
    sb_init(&err);
    int r = acctfile_open(&af, path, 0, 0, &err);
    print_err(&err);
    sb_free(&err);
    if (r != 0)
        return EXIT_FAIL;
    printf("%-32s %-13s %-9s %s\n", "LOGIN", "SCHEME", "SUSPENDED", "SENDERS");
    size_t i = 0;
    while (i < af.len) {
        const char *p = af.text + i;
        const char *nl = memchr(p, '\n', af.len - i);
        size_t n = nl ? (size_t)(nl - p) : af.len - i;
        i += n + (nl ? 1 : 0);
        char *line = xstrndup(p, n);
        size_t ll = strlen(line);
        if (ll > 0 && line[ll - 1] == '\r')
            line[--ll] = '\0';
        if (line[0] == '#' || line[strspn(line, " \t")] == '\0') {
            free(line);
            continue;
        }
        char *f[8] = {0};
        int nf = 1;
        f[0] = line;
        for (char *q = line; nf < 8;) {
            char *c = strchr(q, ':');
            if (!c)
                break;
            *c = '\0';
            q = c + 1;
            f[nf++] = q;
        }
        enum pw_scheme s = nf > 1 ? passwd_classify(f[1], NULL, NULL, 0) : PW_UNKNOWN;
        const char *susp = "no";
        char *senders = NULL;
        if (nf == 8) {
            char *save = NULL;
            for (char *t = strtok_r(f[7], " \t", &save); t; t = strtok_r(NULL, " \t", &save)) {
                if (strncmp(t, "suspended=", 10) == 0 && str_ieq(t + 10, "yes"))
                    susp = "yes";
                else if (strncmp(t, "sender=", 7) == 0)
                    senders = t + 7;
            }
        }
        const char *at = strrchr(f[0], '@');
        const char *self = at && at != f[0] && at[1] ? "(itself only)" : "(none: cannot send)";
        printf("%-32s %-13s %-9s %s\n", f[0], scheme_name(s), susp, senders ? senders : self);
        mem_wipe(line, ll);
        free(line);
    }
    acctfile_close(&af);
    return 0;
}

static int cmd_user_add(const struct ctl *c, const char *path, const char *login, const struct opts *o)
{
    char hash[HASH_MAX + 32];
    if (make_hash(o, login, hash, sizeof(hash)) != 0)
        return EXIT_FAIL;
    char *sl = sender_list(o->senders, o->nsenders);
    struct strbuf nl;
    sb_init(&nl);
    sb_printf(&nl, "%s:%s", login, hash);
    if (sl[0])
        sb_printf(&nl, "::::::sender=%s", sl);
    sb_puts(&nl, "\n");
    int rc = EXIT_FAIL;
    if (apply(path, login, 1, nl.s, NULL) == 0) {
        printf("added %s (%s)\n", login, o->scheme ? o->scheme : "argon2id");
        if (!sl[0] && !strchr(login, '@'))
            printf("note: %s is not an address and has no --sender: it can log in but not send; "
                   "see `submitctl user senders`\n", login);
        reload_hint(c);
        rc = 0;
    }
    mem_wipe(nl.s, nl.len);
    sb_free(&nl);
    mem_wipe(hash, sizeof(hash));
    free(sl);
    return rc;
}

/* passwd, del, suspend, unsuspend, senders: one existing line changes. */
static int cmd_user_edit(const struct ctl *c, const char *path, const char *sub, const struct opts *o)
{
    const char *login = o->pos[0];
    char hash[HASH_MAX + 32] = "";
    struct acct_edit e = {NULL, -1, NULL};
    char *sl = NULL;
    const char *done;
    int del = strcmp(sub, "del") == 0;
    if (strcmp(sub, "passwd") == 0) {
        if (make_hash(o, login, hash, sizeof(hash)) != 0)
            return EXIT_FAIL;
        e.hash = hash;
        done = "changed the password of";
    } else if (del) {
        done = "deleted";
    } else if (strcmp(sub, "suspend") == 0) {
        e.suspend = 1;
        done = "suspended";
    } else if (strcmp(sub, "unsuspend") == 0) {
        e.suspend = 0;
        done = "unsuspended";
    } else {
        sl = sender_list(o->pos + 1, o->npos - 1);
        e.senders = sl;
        done = "set the senders of";
    }
    int rc = EXIT_FAIL;
    if (apply(path, login, 0, NULL, del ? NULL : &e) == 0) {
        printf("%s %s\n", done, login);
        reload_hint(c);
        rc = 0;
    }
    mem_wipe(hash, sizeof(hash));
    free(sl);
    return rc;
}

static int cmd_user(const struct ctl *c, int argc, char **argv)
{
    if (argc < 1)
        return usage_error("user: give add, passwd, del, list, suspend, unsuspend or senders");
    const char *sub = argv[0];
    int is_add = strcmp(sub, "add") == 0, is_passwd = strcmp(sub, "passwd") == 0;
    int is_senders = strcmp(sub, "senders") == 0, is_list = strcmp(sub, "list") == 0;
    int known = is_add || is_passwd || is_senders || is_list || strcmp(sub, "del") == 0 ||
                strcmp(sub, "suspend") == 0 || strcmp(sub, "unsuspend") == 0;
    if (!known)
        return usage_error("unknown user command %s", sub);
    struct opts o;
    int r = parse_opts(argc - 1, argv + 1, is_add, is_add || is_passwd, &o);
    if (r != 0)
        return r;
    if (is_list && o.npos != 0)
        return usage_error("user list takes no arguments");
    if (is_senders && o.npos < 2)
        return usage_error("usage: user senders LOGIN ADDR...");
    if (!is_list && !is_senders && o.npos != 1)
        return usage_error("usage: user %s LOGIN", sub);
    if (is_add) {
        const char *why = login_problem(o.pos[0]);
        if (why) {
            fprintf(stderr, "submitctl: bad login \"%s\": %s\n", o.pos[0], why);
            return EXIT_FAIL;
        }
        if (check_senders(o.senders, o.nsenders) != 0)
            return EXIT_FAIL;
    }
    if (is_senders && check_senders(o.pos + 1, o.npos - 1) != 0)
        return EXIT_FAIL;

    char *path = accounts_path(c);
    if (!path)
        return EXIT_FAIL;
    /* Edit the file a symlink points to, not the link itself. */
    char *real = realpath(path, NULL);
    if (real) {
        free(path);
        path = real;
    }
    int rc;
    if (is_list)
        rc = cmd_user_list(path);
    else if (precheck(path, o.pos[0], !is_add) != 0)
        rc = EXIT_FAIL;
    else if (is_add)
        rc = cmd_user_add(c, path, o.pos[0], &o);
    else
        rc = cmd_user_edit(c, path, sub, &o);
    free(path);
    return rc;
}

static int cmd_hash(int argc, char **argv)
{
    struct opts o;
    int r = parse_opts(argc, argv, 0, 1, &o);
    if (r != 0)
        return r;
    if (o.npos != 0)
        return usage_error("hash takes no arguments (the password is never read from the command line)");
    char hash[HASH_MAX + 32];
    if (make_hash(&o, NULL, hash, sizeof(hash)) != 0)
        return EXIT_FAIL;
    printf("%s\n", hash);
    return 0;
}

/* The whole configuration, files and keys checked and loaded as submitd
 * does; NULL after printing its errors and `doing`. */
static struct config *load_config(const struct ctl *c, const char *doing)
{
    struct errlist errs;
    errlist_init(&errs);
    struct config *cfg = config_load(c->config_path, &errs);
    if (!cfg) {
        fprintf(stderr, "submitctl: %s has errors, %s:\n", c->config_path, doing);
        for (size_t i = 0; i < errs.n; i++)
            fprintf(stderr, "  %s\n", errs.v[i]);
    }
    errlist_free(&errs);
    return cfg;
}

static int cmd_reload(const struct ctl *c, int argc)
{
    if (argc != 0)
        return usage_error("reload takes no arguments");
    if (c->accounts_opt && !c->config_given)
        return usage_error("reload needs the configuration (-c CONFIG) to find the pid-file");
    struct config *cfg = load_config(c, "not reloading (submitd would refuse it)");
    if (!cfg)
        return EXIT_FAIL;
    int rc = EXIT_FAIL;
    if (!cfg->pid_file) {
        fprintf(stderr, "submitctl: %s sets no pid-file; send SIGHUP to submitd yourself (e.g. systemctl reload "
                        "submitd)\n", c->config_path);
        config_unref(cfg);
        return EXIT_FAIL;
    }
    size_t n = 0;
    char *txt = read_file_max(cfg->pid_file, 64, &n);
    long pid = 0;
    char *end = NULL;
    if (txt)
        pid = strtol(txt, &end, 10);
    if (!txt) {
        fprintf(stderr, "submitctl: %s: %s; is submitd running?\n", cfg->pid_file, strerror(errno));
    } else if (end == txt || (*end != '\0' && *end != '\n') || pid <= 1) {
        fprintf(stderr, "submitctl: %s: no pid in it\n", cfg->pid_file);
    } else {
        char cp[64], comm[64] = "";
        snprintf(cp, sizeof(cp), "/proc/%ld/comm", pid);
        char *cm = read_file_max(cp, sizeof(comm) - 1, NULL);
        if (cm) {
            str_copy(comm, cm, sizeof(comm));
            comm[strcspn(comm, "\n")] = '\0';
            free(cm);
        }
        if (cm && strncmp(comm, "submitd", 7) != 0) {
            fprintf(stderr, "submitctl: pid %ld from %s is \"%s\", not submitd: stale pid file? not signalled\n",
                    pid, cfg->pid_file, comm);
        } else if (kill((pid_t)pid, SIGHUP) != 0) {
            fprintf(stderr, "submitctl: cannot signal pid %ld (from %s): %s\n", pid, cfg->pid_file,
                    strerror(errno));
        } else {
            printf("sent SIGHUP to submitd (pid %ld); its log says event=reload with status=ok or the errors\n",
                   pid);
            rc = 0;
        }
    }
    free(txt);
    config_unref(cfg);
    return rc;
}

/* ---- DKIM keys and DNS records --------------------------------------- */

/* The p= value of the DKIM key record (RFC 6376 3.6.1) for pk: base64 of
 * the SubjectPublicKeyInfo DER for RSA, of the raw 32-byte public key for
 * Ed25519 (RFC 8463). *k gets the k= value. NULL for other key types. */
static char *dkim_p_value(EVP_PKEY *pk, const char **k)
{
    unsigned char raw[32], *der = NULL;
    const unsigned char *bytes = raw;
    size_t n = sizeof(raw);
    if (EVP_PKEY_is_a(pk, "ED25519")) {
        if (EVP_PKEY_get_raw_public_key(pk, raw, &n) != 1 || n != sizeof(raw))
            return NULL;
        *k = "ed25519";
    } else if (EVP_PKEY_is_a(pk, "RSA")) {
        int len = i2d_PUBKEY(pk, &der);
        if (len <= 0)
            return NULL;
        bytes = der;
        n = (size_t)len;
        *k = "rsa";
    } else {
        return NULL;
    }
    size_t cap = b64_encode(bytes, n, NULL, 0) + 1;
    char *out = xmalloc(cap);
    b64_encode(bytes, n, out, cap);
    OPENSSL_free(der);
    return out;
}

/* Prints SELECTOR._domainkey.DOMAIN. IN TXT ( "v=DKIM1; k=..; p=.." ) on
 * one line, the value cut into strings of at most 255 characters. */
static int print_dkim_record(const char *selector, const char *domain, EVP_PKEY *pk)
{
    const char *k = NULL;
    char *p = pk ? dkim_p_value(pk, &k) : NULL;
    if (!p) {
        fprintf(stderr, "submitctl: the key of selector %s is neither RSA nor Ed25519\n", selector);
        return -1;
    }
    struct strbuf v;
    sb_init(&v);
    sb_printf(&v, "v=DKIM1; k=%s; p=%s", k, p);
    printf("%s._domainkey.%s. IN TXT (", selector, domain);
    for (size_t off = 0; off < v.len; off += TXT_CHUNK) {
        size_t n = v.len - off < TXT_CHUNK ? v.len - off : TXT_CHUNK;
        printf(" \"%.*s\"", (int)n, v.s + off);
    }
    printf(" )\n");
    sb_free(&v);
    free(p);
    return 0;
}

/* Checks DOMAIN and SELECTOR; lower-cases the domain into dom. */
static int check_domain_selector(const char *domain, const char *selector, char *dom, size_t n)
{
    if (!cv_valid_dns_name(domain) || str_copy(dom, domain, n) >= n) {
        fprintf(stderr, "submitctl: bad domain \"%s\": expected a domain name such as example.com\n", domain);
        return -1;
    }
    str_lower(dom);
    if (selector && !cv_valid_dns_name(selector)) {
        fprintf(stderr, "submitctl: bad selector \"%s\": use letters, digits and '-' (dots between labels), "
                        "e.g. 2025a\n", selector);
        return -1;
    }
    if (selector && strlen(selector) + strlen("._domainkey.") + strlen(dom) > 253) {
        fprintf(stderr, "submitctl: %s._domainkey.%s is longer than 253 characters\n", selector, dom);
        return -1;
    }
    return 0;
}

/* Makes DIR (mode 0750, group gid when >= 0) when it does not exist. */
static int make_key_dir(const char *dir, long gid)
{
    struct stat st;
    if (mkdir(dir, 0750) == 0) {
        if (chmod(dir, 0750) != 0 || (gid >= 0 && chown(dir, (uid_t)-1, (gid_t)gid) != 0)) {
            fprintf(stderr, "submitctl: %s: %s\n", dir, strerror(errno));
            return -1;
        }
        printf("created the directory %s (mode 0750%s)\n", dir, gid >= 0 ? ", group " DKIM_GROUP : "");
        return 0;
    }
    if (errno != EEXIST) {
        fprintf(stderr, "submitctl: cannot create the directory %s: %s\n", dir, strerror(errno));
        return -1;
    }
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "submitctl: %s is not a directory\n", dir);
        return -1;
    }
    return 0;
}

/* Writes the PEM (PKCS#8) of pk to a new file: never overwrites. */
static int write_key_file(const char *path, EVP_PKEY *pk, long gid)
{
    BIO *mem = BIO_new(BIO_s_mem());
    char *pem = NULL;
    long len = 0;
    if (!mem || PEM_write_bio_PKCS8PrivateKey(mem, pk, NULL, NULL, 0, NULL, NULL) != 1 ||
        (len = BIO_get_mem_data(mem, &pem)) <= 0) {
        fprintf(stderr, "submitctl: cannot encode the key\n");
        BIO_free(mem);
        return -1;
    }
    int rc = -1;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 && errno == EEXIST) {
        fprintf(stderr, "submitctl: %s exists: not overwriting it. A new key needs a new selector (rotation adds "
                        "a selector; see docs/dkim.md), or remove the old file first\n", path);
    } else if (fd < 0) {
        fprintf(stderr, "submitctl: cannot create %s: %s\n", path, strerror(errno));
    } else {
        const char *step = NULL;
        if (fchmod(fd, 0600) != 0)
            step = "chmod";
        else if (gid >= 0 && (fchown(fd, (uid_t)-1, (gid_t)gid) != 0 || fchmod(fd, 0640) != 0))
            step = "give it to the group " DKIM_GROUP;
        else if (write_all(fd, pem, (size_t)len) != 0)
            step = "write";
        else if (fsync(fd) != 0)
            step = "fsync";
        if (close(fd) != 0 && !step)
            step = "close";
        if (step) {
            fprintf(stderr, "submitctl: %s: cannot %s: %s\n", path, step, strerror(errno));
            unlink(path);
        } else {
            rc = 0;
        }
    }
    mem_wipe(pem, (size_t)len);
    BIO_free(mem);
    return rc;
}

static int cmd_dkim_keygen(const struct ctl *c, int argc, char **argv)
{
    const char *pos[2] = {NULL, NULL}, *dir = NULL;
    size_t npos = 0;
    int ed25519 = 0;
    long bits = 0;
    static const char use[] = "usage: dkim keygen DOMAIN SELECTOR [--ed25519 | --rsa BITS] [--dir DIR]";
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        char name[16];
        if (strncmp(a, "--", 2) == 0) {
            size_t nl = strcspn(a, "=");
            if (nl >= sizeof(name))
                return usage_error("unknown option %s", a);
            memcpy(name, a, nl);
            name[nl] = '\0';
            val = a[nl] == '=' ? a + nl + 1 : NULL;
            if (strcmp(name, "--ed25519") == 0 && !val) {
                ed25519 = 1;
                continue;
            }
            if (strcmp(name, "--rsa") != 0 && strcmp(name, "--dir") != 0)
                return usage_error("unknown option %s", a);
            if (!val && i + 1 >= argc)
                return usage_error("%s needs a value", name);
            val = val ? val : argv[++i];
            if (name[2] == 'd') {
                dir = val;
                continue;
            }
            char *end = NULL;
            bits = strtol(val, &end, 10);
            if (!*val || *end || bits < 2048 || bits > 4096)
                return usage_error("--rsa takes a number of bits from 2048 to 4096, not %s", val);
            continue;
        }
        if (a[0] == '-' && a[1])
            return usage_error("unknown option %s", a);
        if (npos == 2)
            return usage_error("%s", use);
        pos[npos++] = a;
    }
    if (npos != 2)
        return usage_error("%s", use);
    if (ed25519 && bits)
        return usage_error("give --ed25519 or --rsa BITS, not both");
    char dom[256];
    if (check_domain_selector(pos[0], pos[1], dom, sizeof(dom)) != 0)
        return EXIT_FAIL;
    const char *sel = pos[1];

    char dbuf[PATH_MAX];
    if (!dir) {
        char cdir[PATH_MAX];
        path_dir(c->config_path, cdir, sizeof(cdir));
        if ((size_t)snprintf(dbuf, sizeof(dbuf), "%s/dkim", cdir) >= sizeof(dbuf))
            return usage_error("configuration path too long");
        dir = dbuf;
    }
    long gid = -1;
    if (geteuid() == 0) {
        const struct group *g = getgrnam(DKIM_GROUP);
        gid = g ? (long)g->gr_gid : -1;
    }
    if (make_key_dir(dir, gid) != 0)
        return EXIT_FAIL;
    char *absdir = realpath(dir, NULL);
    if (!absdir) {
        fprintf(stderr, "submitctl: %s: %s\n", dir, strerror(errno));
        return EXIT_FAIL;
    }
    struct strbuf path;
    sb_init(&path);
    sb_printf(&path, "%s%s%s.%s.key", absdir, strcmp(absdir, "/") == 0 ? "" : "/", dom, sel);
    free(absdir);

    EVP_PKEY *pk = ed25519 ? EVP_PKEY_Q_keygen(NULL, NULL, "ED25519")
                           : EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)(bits ? bits : 2048));
    int rc = EXIT_FAIL;
    if (!pk) {
        fprintf(stderr, "submitctl: key generation failed\n");
    } else if (write_key_file(path.s, pk, gid) == 0) {
        if (ed25519)
            printf("wrote %s (Ed25519", path.s);
        else
            printf("wrote %s (RSA %ld bits", path.s, bits ? bits : 2048);
        if (gid >= 0)
            printf(", mode 0640, group " DKIM_GROUP ": submitd can re-read it on reload after dropping root)\n");
        else
            printf(", mode 0600)\n");
        printf("\n; publish this DNS record (the value may be split into several quoted strings)\n");
        if (print_dkim_record(sel, dom, pk) == 0) {
            printf("\n# then add to the configuration (or just the key line to an existing dkim %s block)\n"
                   "# and reload once the record is visible in DNS:\n"
                   "dkim %s {\n    key %s %s\n}\n",
                   dom, dom, sel, path.s);
            if (ed25519)
                printf("# note: Ed25519 signatures are not checked by every receiver yet; sign with an RSA key "
                       "too (a second key line)\n");
            rc = 0;
        }
    }
    EVP_PKEY_free(pk);
    ERR_clear_error();
    sb_free(&path);
    return rc;
}

static int cmd_dkim(const struct ctl *c, int argc, char **argv)
{
    if (argc < 1)
        return usage_error("dkim: give keygen");
    if (strcmp(argv[0], "keygen") != 0)
        return usage_error("unknown dkim command %s", argv[0]);
    return cmd_dkim_keygen(c, argc - 1, argv + 1);
}

/* `queue ...`: the words go to the running daemon's control socket as one
 * request; the daemon formats the answer, printed as it comes. */
static int cmd_control(const struct ctl *c, const char *verb, int argc, char **argv)
{
    if (argc < 1)
        return usage_error("%s: give a subcommand (see submitctl -h)", verb);
    struct errlist errs;
    errlist_init(&errs);
    struct config *cfg = config_load_paths(c->config_path, &errs);
    for (size_t i = 0; !cfg && i < errs.n; i++)
        fprintf(stderr, "submitctl: %s\n", errs.v[i]);
    errlist_free(&errs);
    if (!cfg)
        return EXIT_FAIL;
    struct strbuf req, out;
    sb_init(&req);
    sb_init(&out);
    sb_puts(&req, verb);
    for (int i = 0; i < argc; i++) /* words: runs of blanks become one space */
        for (const char *p = argv[i]; *p; p++)
            if (*p != ' ' && *p != '\t')
                sb_printf(&req, "%s%c", p == argv[i] || p[-1] == ' ' || p[-1] == '\t' ? " " : "", *p);
    int rc = control_request(cfg->control_socket, req.s, &out, 60000);
    if (out.len && out.s[out.len - 1] != '\n')
        sb_puts(&out, "\n");
    if (rc == 0)
        fputs(out.s ? out.s : "", stdout);
    else
        fprintf(stderr, "submitctl: %s", out.s);
    sb_free(&req);
    sb_free(&out);
    config_unref(cfg);
    return rc == 0 ? 0 : EXIT_FAIL;
}

static int cmd_dns(const struct ctl *c, int argc, char **argv)
{
    if (argc != 1)
        return usage_error("usage: dns DOMAIN");
    char dom[256];
    if (check_domain_selector(argv[0], NULL, dom, sizeof(dom)) != 0)
        return EXIT_FAIL;
    struct config *cfg = load_config(c, "fix them first (the DKIM keys are read from it)");
    if (!cfg)
        return EXIT_FAIL;
    const char *host = cfg->hostname;
    printf("; DNS records for %s to send mail through %s (submitd, %s)\n", dom, host, c->config_path);
    printf("\n; SPF: the hosts that may send mail for %s. a:%s covers the addresses %s resolves to;\n"
           "; if this server sends from other addresses (NAT, several IPs), add ip4:/ip6: terms for them, and\n"
           "; include: the SPF record of any other service that sends mail for %s, before ~all.\n",
           dom, host, host, dom);
    if (!strchr(host, '.'))
        printf("; warning: the hostname \"%s\" is not a public DNS name: set `hostname` in %s\n", host,
               c->config_path);
    printf("%s. IN TXT \"v=spf1 a:%s ~all\"\n", dom, host);

    int rc = 0;
    const struct dkim_cfg *d = config_dkim(cfg, dom);
    if (!d) {
        printf("\n; DKIM: no dkim block in %s covers %s, so its mail is not signed. Make a key with\n"
               ";   submitctl%s%s dkim keygen %s SELECTOR\n"
               "; which prints the record to publish and the configuration lines to add.\n",
               c->config_path, dom, c->config_given ? " -c " : "", c->config_given ? c->config_path : "", dom);
    } else {
        printf("\n; DKIM: the dkim block for %s (line %d of %s)", d->domain, d->line, c->config_path);
        if (strcmp(d->domain, dom) != 0)
            printf(" signs mail from %s with d=%s: the records go under %s", dom, d->domain, d->domain);
        printf("\n");
        time_t now = time(NULL);
        const struct dkim_key_cfg *active[2];
        config_dkim_active(d, (int64_t)now, active);
        for (size_t i = 0; i < d->nkeys; i++) {
            const struct dkim_key_cfg *k = &d->keys[i];
            const char *alg = k->alg == DKIM_ALG_ED25519_SHA256 ? "ed25519-sha256" : "rsa-sha256";
            char day[32] = "";
            struct tm tm;
            time_t nb = (time_t)k->not_before;
            if (gmtime_r(&nb, &tm))
                strftime(day, sizeof(day), "%Y-%m-%d", &tm);
            if (k == active[0] || k == active[1])
                printf("; selector %s (%s): signs now\n", k->selector, alg);
            else if (k->not_before > (int64_t)now)
                printf("; selector %s (%s): NOT ACTIVE YET, signs from %s (UTC); publish it now so that it is "
                       "in DNS by then\n", k->selector, alg, day);
            else
                printf("; selector %s (%s): replaced by a newer %s key; keep this record for a few days after "
                       "the switch, then remove it and its key line\n", k->selector, alg, alg);
            if (print_dkim_record(k->selector, d->domain, k->pkey) != 0)
                rc = EXIT_FAIL;
        }
    }
    printf("\n; DMARC: what receivers do with mail from %s that passes neither aligned SPF nor DKIM\n"
           "; (start with p=none to only collect the aggregate reports sent to rua, then tighten).\n",
           dom);
    printf("_dmarc.%s. IN TXT \"v=DMARC1; p=quarantine; adkim=r; aspf=r; rua=mailto:postmaster@%s\"\n", dom, dom);
    config_unref(cfg);
    return rc;
}

int main(int argc, char **argv)
{
    struct ctl c = {DEFAULT_CONFIG, 0, NULL};
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (strcmp(a, "-c") == 0 || strcmp(a, "-a") == 0) {
            if (i + 1 >= argc)
                return usage_error("%s needs a file name", a);
            if (a[1] == 'c') {
                c.config_path = argv[++i];
                c.config_given = 1;
            } else {
                c.accounts_opt = argv[++i];
            }
            continue;
        }
        if (a[0] == '-')
            return usage_error("unknown option %s", a);
        break;
    }
    if (i >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[i++];
    if (strcmp(cmd, "user") == 0)
        return cmd_user(&c, argc - i, argv + i);
    if (strcmp(cmd, "hash") == 0)
        return cmd_hash(argc - i, argv + i);
    if (strcmp(cmd, "reload") == 0)
        return cmd_reload(&c, argc - i);
    if (strcmp(cmd, "queue") == 0 || strcmp(cmd, "limits") == 0)
        return cmd_control(&c, cmd, argc - i, argv + i);
    if (strcmp(cmd, "dkim") == 0)
        return cmd_dkim(&c, argc - i, argv + i);
    if (strcmp(cmd, "dns") == 0)
        return cmd_dns(&c, argc - i, argv + i);
    if (strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    return usage_error("unknown command %s", cmd);
}
