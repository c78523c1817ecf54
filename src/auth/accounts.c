/* accounts: loading and checking the accounts file (Dovecot passwd-file
 * format, see accounts.h and docs/accounts.md) into an immutable,
 * reference-counted table with an open-addressing hash index on the
 * lower-cased login (O(1) lookups for files with 100k accounts), and the
 * "may this account send as this address" rule used by MAIL FROM and the
 * From: header check. Nothing here logs: problems go to the caller's
 * errlist as `file:line: message`, and never quote a password hash. */
#include "auth/accounts.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth/passwd.h"
#include "auth/sasl.h"

#define ACCOUNTS_FILE_MAX (512u * 1024 * 1024) /* refuse larger files */
#define LOGIN_MAX SASL_USER_MAX                /* longer logins could never authenticate */
#define SENDERS_MAX 10000                      /* entries in one sender= */

struct accounts {
    atomic_int refs;
    struct account *v;
    size_t n;
    uint32_t *slots; /* index + 1 into v; 0 = empty */
    size_t mask;
};

/* FNV-1a over the ASCII-lower-cased login. */
static uint64_t login_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c - 'A' + 'a');
        h ^= c;
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

static void account_free_fields(struct account *a)
{
    free(a->login);
    if (a->hash) {
        mem_wipe(a->hash, strlen(a->hash));
        free(a->hash);
    }
    for (size_t i = 0; i < a->nsenders; i++)
        free(a->senders[i]);
    free(a->senders);
    memset(a, 0, sizeof(*a));
}

static void accounts_free(struct accounts *a)
{
    for (size_t i = 0; i < a->n; i++)
        account_free_fields(&a->v[i]);
    free(a->v);
    free(a->slots);
    free(a);
}

/* Returns the slot holding `login` or the empty slot where it would go. */
static size_t find_slot(const struct accounts *a, const char *login)
{
    size_t i = (size_t)login_hash(login) & a->mask;
    for (;;) {
        uint32_t k = a->slots[i];
        if (k == 0 || str_ieq(a->v[k - 1].login, login))
            return i;
        i = (i + 1) & a->mask;
    }
}

/* ---- checks -------------------------------------------------------------- */

/* NULL when `login` is acceptable, else why not. */
static const char *login_problem(const char *login)
{
    size_t n = strlen(login);
    if (n == 0)
        return "empty login";
    if (n > LOGIN_MAX)
        return "login longer than 256 bytes";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)login[i];
        if (c <= ' ' || c == 0x7f)
            return "login contains whitespace or control characters";
        if (c == ':')
            return "login contains ':'";
    }
    return NULL;
}

/* A domain: dot-separated non-empty labels of letters, digits, '-', '_'
 * or UTF-8 bytes. */
static int domain_ok(const char *d)
{
    size_t n = strlen(d), label = 0;
    if (n == 0 || n > 255)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)d[i];
        if (c == '.') {
            if (label == 0)
                return 0;
            label = 0;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
              c >= 0x80))
            return 0;
        label++;
    }
    return label > 0;
}

/* NULL when `e` is a valid sender entry ("local@domain" or "@domain"). */
static const char *sender_problem(const char *e)
{
    if (e[0] == '\0')
        return "empty entry";
    const char *at = strchr(e, '@');
    if (!at || strchr(at + 1, '@'))
        return "not an address or @domain";
    for (const char *p = e; p < at; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= ' ' || c == 0x7f || strchr("\"(),:;<>[\\]", c))
            return "bad character in the local part";
    }
    if (at > e && (e[0] == '.' || at[-1] == '.' || memmem(e, (size_t)(at - e), "..", 2)))
        return "bad local part";
    if (!domain_ok(at + 1))
        return "bad domain";
    return NULL;
}

/* ---- parsing ------------------------------------------------------------- */

struct loader {
    const char *path;
    struct errlist *errs;
    size_t nerr;
    struct accounts *a;
};

static void lerr(struct loader *L, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void lerr(struct loader *L, int line, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    errlist_add(L->errs, L->path, line, "%s", msg);
    L->nerr++;
}

/* Parses the sender= value into acc (lower-cased). 0 or -1. */
static int parse_senders(struct loader *L, int line, struct account *acc, char *val)
{
    if (*val == '\0') {
        lerr(L, line, "empty sender= (give addresses and/or @domain entries, comma separated)");
        return -1;
    }
    int bad = 0;
    size_t count = 1;
    for (const char *p = val; *p; p++)
        count += *p == ',';
    if (count > SENDERS_MAX) {
        lerr(L, line, "sender= has more than %d entries", SENDERS_MAX);
        return -1;
    }
    acc->senders = xcalloc(count, sizeof(*acc->senders));
    /* strtok_r would skip empty entries; walk by hand. */
    char *p = val;
    for (;;) {
        char *comma = strchr(p, ',');
        if (comma)
            *comma = '\0';
        const char *why = sender_problem(p);
        if (why) {
            lerr(L, line, "sender= entry \"%.100s\": %s", p, why);
            bad = 1;
        } else {
            char *s = xstrdup(p);
            str_lower(s);
            acc->senders[acc->nsenders++] = s;
        }
        if (!comma)
            break;
        p = comma + 1;
    }
    return bad ? -1 : 0;
}

/* Extra fields: space/tab separated key=value (or bare key). */
static int parse_extra(struct loader *L, int line, struct account *acc, char *extra)
{
    int bad = 0, have_sender = 0, have_susp = 0;
    char *save = NULL;
    for (char *tok = strtok_r(extra, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
        char *eq = strchr(tok, '=');
        char *val = eq ? eq + 1 : NULL;
        if (eq)
            *eq = '\0';
        if (strcmp(tok, "sender") == 0) {
            if (have_sender++) {
                lerr(L, line, "sender= given twice");
                bad = 1;
                continue;
            }
            if (parse_senders(L, line, acc, val ? val : (char *)"") != 0)
                bad = 1;
        } else if (strcmp(tok, "suspended") == 0) {
            if (have_susp++) {
                lerr(L, line, "suspended= given twice");
                bad = 1;
                continue;
            }
            if (val && str_ieq(val, "yes"))
                acc->suspended = 1;
            else if (val && str_ieq(val, "no"))
                acc->suspended = 0;
            else {
                lerr(L, line, "suspended= must be yes or no");
                bad = 1;
            }
        }
        /* Other keys (Dovecot has many: userdb_*, nopassword, ...) are
         * ignored; their values are never echoed. */
    }
    return bad ? -1 : 0;
}

/* One non-comment line (NUL-terminated, CR/LF removed). */
static void parse_line(struct loader *L, int line, char *s)
{
    struct accounts *a = L->a;
    char *colon = strchr(s, ':');
    if (!colon) {
        lerr(L, line, "expected login:{SCHEME}hash[:uid:gid:gecos:home:shell:extra fields]");
        return;
    }
    *colon = '\0';
    const char *login = s;
    char *hash = colon + 1;
    char *extra = NULL;
    /* Fields 3..7 (uid gid gecos home shell) are skipped; field 8 on is the
     * extra fields, which may themselves contain ':'. */
    char *p = strchr(hash, ':');
    if (p) {
        *p = '\0';
        char *q = p + 1;
        for (int f = 3; f <= 7 && q; f++) {
            char *c = strchr(q, ':');
            q = c ? c + 1 : NULL;
        }
        extra = q;
    }
    int bad = 0;
    const char *why = login_problem(login);
    if (why) {
        lerr(L, line, "%s", why);
        bad = 1;
    }
    char reason[256];
    const char *bare = NULL;
    if (passwd_classify(hash, &bare, reason, sizeof(reason)) == PW_UNKNOWN) {
        if (why)
            lerr(L, line, "bad password hash: %s", reason);
        else
            lerr(L, line, "login %.256s: bad password hash: %s", login, reason);
        bad = 1;
    }
    struct account acc;
    memset(&acc, 0, sizeof(acc));
    acc.line = line;
    if (extra && parse_extra(L, line, &acc, extra) != 0)
        bad = 1;
    if (!why) {
        size_t slot = find_slot(a, login);
        if (a->slots[slot] != 0) {
            const struct account *o = &a->v[a->slots[slot] - 1];
            lerr(L, line, "duplicate login %.256s (first at line %d; logins are case-insensitive)", login,
                 o->line);
            bad = 1;
        } else if (!bad) {
            acc.login = xstrdup(login);
            acc.hash = xstrdup(bare);
            a->v[a->n] = acc;
            a->slots[slot] = (uint32_t)(a->n + 1);
            a->n++;
            mem_wipe(hash, strlen(hash));
            return;
        }
    }
    mem_wipe(hash, strlen(hash));
    account_free_fields(&acc);
}

static int blank(const char *s)
{
    for (; *s; s++)
        if (*s != ' ' && *s != '\t')
            return 0;
    return 1;
}

/* Opens and reads the file, refusing unsafe permissions. NULL on error. */
static char *read_accounts_file(struct loader *L, size_t *len)
{
    int fd = open(L->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        lerr(L, 0, "cannot open: %s", strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        lerr(L, 0, "cannot stat: %s", strerror(errno));
        close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        lerr(L, 0, "not a regular file");
        close(fd);
        return NULL;
    }
    const char *fix = "chmod 600 (or 640 with group submitd)";
    if (st.st_mode & S_IROTH)
        lerr(L, 0, "readable by others; %s", fix);
    else if (st.st_mode & S_IWOTH)
        lerr(L, 0, "writable by others; %s", fix);
    else if (st.st_mode & S_IXOTH)
        lerr(L, 0, "accessible by others (o+x); %s", fix);
    if (st.st_mode & S_IWGRP)
        lerr(L, 0, "writable by group; %s", fix);
    if (L->nerr) {
        close(fd);
        return NULL;
    }
    if ((uint64_t)st.st_size > ACCOUNTS_FILE_MAX) {
        lerr(L, 0, "larger than %u MiB", ACCOUNTS_FILE_MAX / (1024 * 1024));
        close(fd);
        return NULL;
    }
    struct strbuf b;
    sb_init(&b);
    char tmp[65536];
    for (;;) {
        ssize_t r = read(fd, tmp, sizeof(tmp));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            lerr(L, 0, "read error: %s", strerror(errno));
            break;
        }
        if (r == 0)
            break;
        if (b.len + (size_t)r > ACCOUNTS_FILE_MAX) {
            lerr(L, 0, "larger than %u MiB", ACCOUNTS_FILE_MAX / (1024 * 1024));
            break;
        }
        sb_append(&b, tmp, (size_t)r);
    }
    mem_wipe(tmp, sizeof(tmp));
    close(fd);
    if (L->nerr) {
        if (b.s)
            mem_wipe(b.s, b.len);
        sb_free(&b);
        return NULL;
    }
    *len = b.len;
    return sb_steal(&b);
}

struct accounts *accounts_load(const char *path, struct errlist *errs)
{
    struct errlist local;
    errlist_init(&local);
    struct loader L = {path ? path : "(accounts)", errs ? errs : &local, 0, NULL};
    if (!path) {
        lerr(&L, 0, "no accounts file configured");
        errlist_free(&local);
        return NULL;
    }
    size_t len = 0;
    char *text = read_accounts_file(&L, &len);
    if (!text) {
        errlist_free(&local);
        return NULL;
    }
    size_t lines = 1;
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    struct accounts *a = xcalloc(1, sizeof(*a));
    atomic_init(&a->refs, 1);
    size_t cap = 16;
    while (cap < lines * 2)
        cap <<= 1;
    a->mask = cap - 1;
    a->slots = xcalloc(cap, sizeof(*a->slots));
    a->v = xcalloc(lines, sizeof(*a->v));
    L.a = a;

    int lineno = 0;
    char *p = text, *end = text + len;
    while (p < end) {
        lineno++;
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *le = nl ? nl : end;
        size_t ll = (size_t)(le - p);
        if (ll > 0 && p[ll - 1] == '\r')
            ll--;
        if (memchr(p, '\0', ll)) {
            lerr(&L, lineno, "NUL byte in line");
        } else {
            p[ll] = '\0';
            if (!blank(p) && p[0] != '#')
                parse_line(&L, lineno, p);
        }
        p = nl ? nl + 1 : end;
    }
    mem_wipe(text, len);
    free(text);
    errlist_free(&local);
    if (L.nerr) {
        accounts_free(a);
        return NULL;
    }
    return a;
}

struct accounts *accounts_ref(struct accounts *a)
{
    if (a)
        atomic_fetch_add_explicit(&a->refs, 1, memory_order_relaxed);
    return a;
}

void accounts_unref(struct accounts *a)
{
    if (!a)
        return;
    if (atomic_fetch_sub_explicit(&a->refs, 1, memory_order_acq_rel) == 1)
        accounts_free(a);
}

size_t accounts_count(const struct accounts *a)
{
    return a ? a->n : 0;
}

const struct account *accounts_find(const struct accounts *a, const char *login)
{
    if (!a || !login || a->n == 0)
        return NULL;
    uint32_t k = a->slots[find_slot(a, login)];
    return k ? &a->v[k - 1] : NULL;
}

/* The domain of an address with a non-empty local part, or NULL. */
static const char *addr_domain(const char *addr)
{
    const char *at = strrchr(addr, '@');
    if (!at || at == addr || at[1] == '\0')
        return NULL;
    return at + 1;
}

int account_may_send_as(const struct account *acc, const char *addr)
{
    if (!acc || !addr || !addr[0])
        return 0;
    if (acc->nsenders == 0)
        return addr_domain(acc->login) != NULL && str_ieq(acc->login, addr);
    const char *dom = addr_domain(addr);
    for (size_t i = 0; i < acc->nsenders; i++) {
        const char *e = acc->senders[i];
        if (e[0] == '@') {
            if (dom && str_ieq(e + 1, dom))
                return 1;
        } else if (str_ieq(e, addr)) {
            return 1;
        }
    }
    return 0;
}
