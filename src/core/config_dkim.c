/* config_dkim: the `dkim DOMAIN { ... }` blocks of the configuration (see
 * config.h): loading and checking the private keys (type, size, no
 * passphrase), the canonicalization and header lists, the checks of a
 * closed block, and the look-ups by From: domain and by date. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "core/config_int.h"
#include "core/confval.h"
#include "dkim/dkim.h"

/* PEM_read_bio_PrivateKey must never prompt: an encrypted key fails. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    *(int *)u = 1;
    return -1;
}

/* Loads a DKIM private key (already checked by check_file) into k->pkey
 * and sets k->alg; reports what is wrong with it otherwise. */
static void load_dkim_key(struct parser *p, const struct dkim_cfg *d, struct dkim_key_cfg *k)
{
    char eb[128], fix[512];
    snprintf(fix, sizeof(fix), "make a good one with `submitctl dkim keygen %s %s` (RSA 2048) or "
                               "`submitctl dkim keygen %s %s --ed25519`",
             d->domain, k->selector, d->domain, k->selector);
    size_t len = 0;
    char *pem = read_file_max(k->file, DKIM_KEY_MAX, &len);
    if (!pem) {
        int e = errno;
        if (e == EFBIG)
            cfg_perr(p, k->line, "dkim key %s is larger than %d KiB: not a private key; %s", k->file,
                 DKIM_KEY_MAX / 1024, fix);
        else
            cfg_perr(p, k->line, "cannot read dkim key %s: %s", k->file, strerror_r(e, eb, sizeof(eb)));
        return;
    }
    int asked = 0;
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *pk = bio ? PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, &asked) : NULL;
    BIO_free(bio);
    mem_wipe(pem, len);
    free(pem);
    ERR_clear_error(); /* nothing left behind for the TLS code to trip on */
    if (!pk) {
        if (asked)
            cfg_perr(p, k->line,
                 "dkim key %s is encrypted with a passphrase, which submitd cannot ask for: decrypt it with "
                 "`openssl pkey -in %s -out NEWFILE` or %s",
                 k->file, k->file, fix);
        else
            cfg_perr(p, k->line, "dkim key %s is not a PEM private key; %s", k->file, fix);
        return;
    }
    int bits = EVP_PKEY_get_bits(pk);
    if (EVP_PKEY_is_a(pk, "RSA") && bits >= DKIM_RSA_MIN_BITS && bits <= DKIM_RSA_MAX_BITS) {
        k->alg = DKIM_ALG_RSA_SHA256;
    } else if (EVP_PKEY_is_a(pk, "ED25519")) {
        if (dkim_ed25519_secret(pk, k->ed_sk) == 0)
            k->alg = DKIM_ALG_ED25519_SHA256;
        else
            cfg_perr(p, k->line, "dkim key %s: cannot prepare the Ed25519 key for signing; %s", k->file, fix);
    } else if (EVP_PKEY_is_a(pk, "RSA") && bits < DKIM_RSA_MIN_BITS) {
        cfg_perr(p, k->line, "dkim key %s is a %d-bit RSA key: DKIM needs at least %d bits (RFC 8301); %s", k->file,
             bits, DKIM_RSA_MIN_BITS, fix);
    } else if (EVP_PKEY_is_a(pk, "RSA")) {
        cfg_perr(p, k->line, "dkim key %s is a %d-bit RSA key: at most %d bits are accepted (signing would be slow; "
                         "2048 is enough); %s",
             k->file, bits, DKIM_RSA_MAX_BITS, fix);
    } else {
        const char *type = EVP_PKEY_get0_type_name(pk);
        cfg_perr(p, k->line, "dkim key %s is a%s %s key: DKIM signs with RSA (%d bits or more) or Ed25519 keys only; %s",
             k->file, type && type[0] && strchr("AEFHILMNORSX", type[0]) ? "n" : "", type ? type : "unknown", DKIM_RSA_MIN_BITS,
             fix);
    }
    if (k->alg)
        k->pkey = pk;
    else
        EVP_PKEY_free(pk);
}

/* key SELECTOR FILE [not-before YYYY-MM-DD] */
void cfg_key_dkim_key(struct parser *p, void *base, const struct keydef *k, char **av, int line)
{
    struct dkim_cfg *d = base;
    const char *sel = av[0];
    if (!cv_valid_dns_name(sel)) {
        cfg_perr(p, line, "bad selector `%s`: expected letters, digits and `-` in dot-separated labels (such as 2025a)",
             sel);
        return;
    }
    if (strlen(sel) + strlen("._domainkey.") + strlen(d->domain) > 253) {
        cfg_perr(p, line, "selector `%s` is too long: %s._domainkey.%s would be longer than 253 characters", sel, sel,
             d->domain);
        return;
    }
    int64_t nb = 0;
    if (av[2] && (strcmp(av[2], "not-before") != 0 || !av[3])) {
        cfg_perr(p, line, "expected `not-before YYYY-MM-DD` after the file name, not `%s%s%s`", av[2], av[3] ? " " : "",
             av[3] ? av[3] : "");
        return;
    }
    if (av[2] && cv_parse_date(av[3], &nb) != 0) {
        cfg_perr(p, line, "bad date `%s` for not-before: expected YYYY-MM-DD, a date in UTC from 1970-01-01 on", av[3]);
        return;
    }
    if (!*av[1]) {
        cfg_perr(p, line, "`key` needs the file name of the private key: key SELECTOR FILE");
        return;
    }
    for (size_t i = 0; i < d->nkeys; i++) {
        if (str_ieq(d->keys[i].selector, sel)) {
            cfg_perr(p, line, "duplicate selector `%s` in the dkim block for %s (the first is at line %d)", sel,
                 d->domain, d->keys[i].line);
            return;
        }
    }
    struct dkim_key_cfg kc = {.selector = xstrdup(sel), .file = cv_abs_path(p->basedir, av[1]), .not_before = nb, .line = line};
    if (!p->no_file_checks && cfg_check_file(p, line, "dkim key", kc.file, 1) == 0)
        load_dkim_key(p, d, &kc);
    d->keys = xrealloc(d->keys, (d->nkeys + 1) * sizeof(*d->keys));
    d->keys[d->nkeys++] = kc;
}

/* canonicalization HEADER/BODY */
void cfg_key_dkim_canon(struct parser *p, void *base, const struct keydef *k, char **av, int line)
{
    struct dkim_cfg *d = base;
    const char *slash = strchr(av[0], '/');
    int v[2] = {-1, -1};
    for (int half = 0; slash && half < 2; half++) {
        const char *s = half ? slash + 1 : av[0];
        size_t n = half ? strlen(s) : (size_t)(slash - av[0]);
        if (n == strlen("relaxed") && strncmp(s, "relaxed", n) == 0)
            v[half] = DKIM_CANON_RELAXED;
        else if (n == strlen("simple") && strncmp(s, "simple", n) == 0)
            v[half] = DKIM_CANON_SIMPLE;
    }
    if (v[0] < 0 || v[1] < 0) {
        cfg_perr(p, line, "bad value `%s` for `canonicalization`: expected %s", av[0], k->form);
        return;
    }
    d->canon_header = (enum dkim_canon)v[0];
    d->canon_body = (enum dkim_canon)v[1];
}

static int name_listed(char *const *v, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], name) == 0)
            return 1;
    return 0;
}

/* headers NAME... / oversign NAME... (or `oversign none`): repeatable, each
 * line adds to the list; names are lower-cased. */
void cfg_key_dkim_names(struct parser *p, void *base, const struct keydef *k, char **av, int line)
{
    char ***v = cfg_field(base, k->off);
    size_t *n = cfg_field(base, k->off2);
    int over = strcmp(k->name, "oversign") == 0;
    int first = p->names_line[over];
    if (!first)
        p->names_line[over] = line;
    if (over && strcmp(av[0], "none") == 0 && !av[1] && !first) {
        p->oversign_none = line;
        return;
    }
    int has_none = 0;
    for (size_t i = 0; av[i]; i++)
        has_none |= strcmp(av[i], "none") == 0;
    if (over && (p->oversign_none || has_none)) {
        cfg_perr(p, line, "`oversign none` must be alone: the only oversign line, without names");
        return;
    }
    for (size_t i = 0; av[i]; i++) {
        char *name = xstrdup(av[i]);
        str_lower(name);
        if (!cv_valid_field_name(name)) {
            cfg_perr(p, line, "bad header field name `%s` in `%s`: expected printable characters but `:` and `;`", av[i],
                 k->name);
            free(name);
        } else if (name_listed(*v, *n, name)) {
            cfg_perr(p, line, "header field `%s` is listed twice in `%s`%s", name, k->name,
                 over ? "" : " (to sign one more than present, use `oversign`)");
            free(name);
        } else {
            *v = xrealloc(*v, (*n + 1) * sizeof(**v));
            (*v)[(*n)++] = name;
        }
    }
}

static char **str_array(const char *const *v, size_t n)
{
    char **out = xcalloc(n ? n : 1, sizeof(*out));
    for (size_t i = 0; i < n; i++)
        out[i] = xstrdup(v[i]);
    return out;
}

void cfg_check_dkim(struct parser *p, struct dkim_cfg *d, int have_key)
{
    if (!have_key)
        cfg_perr(p, d->line,
             "the dkim block for %s has no key: add `key SELECTOR FILE` (make one with `submitctl dkim keygen %s "
             "SELECTOR`)",
             d->domain, d->domain);
    if (!p->names_line[0]) {
        d->headers = str_array(dkim_default_headers, dkim_default_headers_count);
        d->nheaders = dkim_default_headers_count;
    } else if (!name_listed(d->headers, d->nheaders, "from")) {
        cfg_perr(p, p->names_line[0], "`headers` must include from: RFC 6376 (5.4) requires the From field to be signed");
    }
    if (!p->names_line[1]) {
        static const char *const from[] = {"from"};
        d->oversign = str_array(from, 1);
        d->noversign = 1;
    }
    for (size_t i = 0; p->names_line[1] && i < d->noversign; i++) /* the default, From: checked above */
        if (!name_listed(d->headers, d->nheaders, d->oversign[i]))
            cfg_perr(p, p->names_line[1], "oversign %s: not among the signed header fields (add it to `headers`)",
                 d->oversign[i]);
}

const struct dkim_cfg *config_dkim(const struct config *c, const char *domain)
{
    if (!c || !domain)
        return NULL;
    for (const char *s = domain; s && *s;) {
        for (size_t i = 0; i < c->ndkim; i++)
            if (str_ieq(c->dkim[i].domain, s) && (s == domain || c->dkim[i].subdomains))
                return &c->dkim[i];
        s = strchr(s, '.');
        if (s)
            s++;
    }
    return NULL;
}

void config_dkim_active(const struct dkim_cfg *d, int64_t now, const struct dkim_key_cfg *out[2])
{
    out[0] = out[1] = NULL;
    for (size_t i = 0; d && i < d->nkeys; i++) {
        const struct dkim_key_cfg *k = &d->keys[i];
        int slot = k->alg == DKIM_ALG_RSA_SHA256 ? 0 : k->alg == DKIM_ALG_ED25519_SHA256 ? 1 : -1;
        if (slot < 0 || k->not_before > now)
            continue;
        if (!out[slot] || k->not_before >= out[slot]->not_before)
            out[slot] = k;
    }
}
