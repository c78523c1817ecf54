/* passwd: classifying stored password hashes (which schemes the accounts
 * file may hold and why the others are refused), verifying a password
 * against a hash in constant time, the dummy verification used for unknown
 * logins, and making new hashes for submitctl. yescrypt, bcrypt and
 * sha512-crypt go through libxcrypt's crypt_rn; argon2id through
 * libargon2. Salts come from getrandom (random_bytes). */
#include "auth/passwd.h"

#include <argon2.h>
#include <crypt.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

#define ARGON2_T_COST 3
#define ARGON2_M_COST 65536 /* KiB */
#define ARGON2_P_COST 1
#define ARGON2_SALT_LEN 16
#define ARGON2_HASH_LEN 32
#define BCRYPT_COST 12
#define SHA512_ROUNDS 100000
#define SALT_BYTES 16

/* An argon2id hash with the default parameters (m=65536, t=3, p=1) of a
 * throw-away password. passwd_verify_dummy() checks against it so that an
 * unknown login costs as much as a known one. */
static const char dummy_hash[] =
    "$argon2id$v=19$m=65536,t=3,p=1$ihNVAv53GcQ9kGGqC+JHXQ$1r02pFsONpKJbpHamaBif8+MlmUi3cUfxJG+kTmLJ40";

struct prefix_rule {
    const char *prefix;  /* Dovecot scheme prefix, compared case-insensitively */
    int accepted;        /* 1: strip and classify what follows */
    enum pw_scheme only; /* PW_UNKNOWN: any crypt scheme; else the one scheme it may hold */
    const char *why;     /* refusal reason when !accepted */
};

static const struct prefix_rule prefix_rules[] = {
    {"{CRYPT}", 1, PW_UNKNOWN, NULL},
    {"{BLF-CRYPT}", 1, PW_BCRYPT, NULL},
    {"{SHA512-CRYPT}", 1, PW_SHA512_CRYPT, NULL},
    {"{ARGON2ID}", 1, PW_ARGON2ID, NULL},
    {"{PLAIN}", 0, PW_UNKNOWN, "plaintext passwords ({PLAIN}) are refused"},
    {"{CLEAR}", 0, PW_UNKNOWN, "plaintext passwords ({CLEAR}) are refused"},
    {"{CLEARTEXT}", 0, PW_UNKNOWN, "plaintext passwords ({CLEARTEXT}) are refused"},
    {"{PLAIN-TRUNC}", 0, PW_UNKNOWN, "plaintext passwords ({PLAIN-TRUNC}) are refused"},
    {"{PLAIN-MD5}", 0, PW_UNKNOWN, "{PLAIN-MD5} is an unsalted fast hash and is refused"},
    {"{MD5}", 0, PW_UNKNOWN, "{MD5} (MD5-crypt) is weak and is refused"},
    {"{MD5-CRYPT}", 0, PW_UNKNOWN, "{MD5-CRYPT} is weak and is refused"},
    {"{SHA256-CRYPT}", 0, PW_UNKNOWN, "{SHA256-CRYPT} is weaker than the accepted schemes and is refused"},
    {"{DES-CRYPT}", 0, PW_UNKNOWN, "{DES-CRYPT} is weak (8-character passwords) and is refused"},
    {"{ARGON2I}", 0, PW_UNKNOWN, "{ARGON2I}: only argon2id is accepted"},
};

static const char accepted_hint[] = "use argon2id, yescrypt, bcrypt or sha512-crypt (submitctl user passwd)";

/* Writes the reason, then "; " and what to use instead. */
static void set_why(char *why, size_t whylen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_why(char *why, size_t whylen, const char *fmt, ...)
{
    if (!why || whylen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < whylen)
        snprintf(why + n, whylen - (size_t)n, "; %s", accepted_hint);
}

/* Characters of the crypt alphabet ./0-9A-Za-z. */
static int is_crypt64(char c)
{
    return c == '.' || c == '/' || (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static int all_crypt64(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!is_crypt64(s[i]))
            return 0;
    return 1;
}

/* Characters of unpadded standard base64 (argon2's encoding). */
static int all_b64(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!(c == '+' || c == '/' || (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')))
            return 0;
    }
    return 1;
}

/* Parses a decimal number of 1..10 digits at *p that fits in 32 bits. */
static int parse_u32(const char **p, uint32_t *out)
{
    const char *s = *p;
    uint64_t v = 0;
    size_t n = 0;
    while (s[n] >= '0' && s[n] <= '9' && n < 11) {
        v = v * 10 + (uint64_t)(s[n] - '0');
        n++;
    }
    if (n == 0 || n > 10 || v > UINT32_MAX)
        return -1;
    *out = (uint32_t)v;
    *p = s + n;
    return 0;
}

/* Structure checks, cheap enough for 100k lines at load time. */
static int bcrypt_ok(const char *h)
{
    /* $2b$NN$ + 22 salt + 31 hash = 60 */
    return strlen(h) == 60 && h[4] >= '0' && h[4] <= '3' && h[5] >= '0' && h[5] <= '9' && h[6] == '$' &&
           (h[4] - '0') * 10 + (h[5] - '0') >= 4 && (h[4] - '0') * 10 + (h[5] - '0') <= 31 &&
           all_crypt64(h + 7, 53);
}

static int sha512_ok(const char *h)
{
    const char *p = h + 3;
    if (strncmp(p, "rounds=", 7) == 0) {
        p += 7;
        uint32_t r;
        if (parse_u32(&p, &r) != 0 || *p != '$')
            return 0;
        p++;
    }
    const char *d = strchr(p, '$');
    if (!d || d - p > 16 || !all_crypt64(p, (size_t)(d - p)))
        return 0;
    return strlen(d + 1) == 86 && all_crypt64(d + 1, 86);
}

static int yescrypt_ok(const char *h)
{
    /* $y$PARAMS$SALT$HASH, hash 43 characters */
    const char *p = h + 3;
    const char *d1 = strchr(p, '$');
    if (!d1 || d1 == p || !all_crypt64(p, (size_t)(d1 - p)))
        return 0;
    const char *d2 = strchr(d1 + 1, '$');
    if (!d2 || !all_crypt64(d1 + 1, (size_t)(d2 - d1 - 1)))
        return 0;
    return strlen(d2 + 1) == 43 && all_crypt64(d2 + 1, 43);
}

static int argon2id_ok(const char *h)
{
    /* $argon2id$v=19$m=N,t=N,p=N$SALT$HASH (unpadded base64) */
    const char *p = h + 10;
    uint32_t v, m, t, par;
    if (strncmp(p, "v=", 2) == 0) {
        p += 2;
        if (parse_u32(&p, &v) != 0 || *p != '$')
            return 0;
        p++;
    }
    if (strncmp(p, "m=", 2) != 0)
        return 0;
    p += 2;
    if (parse_u32(&p, &m) != 0 || strncmp(p, ",t=", 3) != 0)
        return 0;
    p += 3;
    if (parse_u32(&p, &t) != 0 || strncmp(p, ",p=", 3) != 0)
        return 0;
    p += 3;
    if (parse_u32(&p, &par) != 0 || *p != '$')
        return 0;
    if (t < 1 || par < 1 || m < 8 * par)
        return 0;
    p++;
    const char *d = strchr(p, '$');
    if (!d || d - p < 11 || !all_b64(p, (size_t)(d - p)))
        return 0;
    size_t hl = strlen(d + 1);
    return hl >= 6 && all_b64(d + 1, hl);
}

/* Classifies a hash without any prefix. */
static enum pw_scheme classify_bare(const char *h, char *why, size_t whylen)
{
    if (h[0] == '\0') {
        set_why(why, whylen, "empty password hash");
        return PW_UNKNOWN;
    }
    if (h[0] == '*' || h[0] == '!') {
        set_why(why, whylen, "locked or disabled password ('*' or '!')");
        return PW_UNKNOWN;
    }
    if (strncmp(h, "$y$", 3) == 0) {
        if (yescrypt_ok(h))
            return PW_YESCRYPT;
        set_why(why, whylen, "malformed yescrypt hash");
        return PW_UNKNOWN;
    }
    if (strncmp(h, "$2b$", 4) == 0 || strncmp(h, "$2y$", 4) == 0 || strncmp(h, "$2a$", 4) == 0) {
        if (bcrypt_ok(h))
            return PW_BCRYPT;
        set_why(why, whylen, "malformed bcrypt hash");
        return PW_UNKNOWN;
    }
    if (strncmp(h, "$6$", 3) == 0) {
        if (sha512_ok(h))
            return PW_SHA512_CRYPT;
        set_why(why, whylen, "malformed sha512-crypt hash");
        return PW_UNKNOWN;
    }
    if (strncmp(h, "$argon2id$", 10) == 0) {
        if (argon2id_ok(h))
            return PW_ARGON2ID;
        set_why(why, whylen, "malformed argon2id hash");
        return PW_UNKNOWN;
    }
    if (strncmp(h, "$1$", 3) == 0) {
        set_why(why, whylen, "MD5-crypt ($1$) is weak and is refused");
        return PW_UNKNOWN;
    }
    if (strncmp(h, "$5$", 3) == 0) {
        set_why(why, whylen,
                "sha256-crypt ($5$) is refused: weaker than the accepted schemes (argon2id and yescrypt "
                "are memory-hard, bcrypt resists GPUs better, sha512-crypt uses the wider hash)");
        return PW_UNKNOWN;
    }
    if (strncmp(h, "$argon2i$", 9) == 0 || strncmp(h, "$argon2d$", 9) == 0) {
        set_why(why, whylen, "only the argon2id variant of argon2 is accepted");
        return PW_UNKNOWN;
    }
    if (strlen(h) == 13 && all_crypt64(h, 13)) {
        set_why(why, whylen, "DES crypt is weak (8-character passwords) and is refused");
        return PW_UNKNOWN;
    }
    if (h[0] == '_' && strlen(h) == 20) {
        set_why(why, whylen, "BSDi extended DES crypt is weak and is refused");
        return PW_UNKNOWN;
    }
    /* Never quote the value: it may be a plaintext password. */
    set_why(why, whylen, "not a recognised password hash (plaintext?)");
    return PW_UNKNOWN;
}

enum pw_scheme passwd_classify(const char *stored, const char **hash_out, char *why, size_t whylen)
{
    if (why && whylen)
        why[0] = '\0';
    if (hash_out)
        *hash_out = stored;
    if (!stored) {
        set_why(why, whylen, "no password hash");
        return PW_UNKNOWN;
    }
    const char *h = stored;
    enum pw_scheme only = PW_UNKNOWN;
    const char *pname = NULL;
    if (h[0] == '{') {
        const struct prefix_rule *r = NULL;
        for (size_t i = 0; i < ARRAY_LEN(prefix_rules); i++) {
            if (str_iprefix(h, prefix_rules[i].prefix)) {
                r = &prefix_rules[i];
                break;
            }
        }
        if (!r) {
            /* Name the scheme only when it looks like one (upper case,
             * digits, '-'): the field could be a plaintext password. */
            size_t n = 1;
            while (n <= 32 && ((h[n] >= 'A' && h[n] <= 'Z') || (h[n] >= '0' && h[n] <= '9') || h[n] == '-'))
                n++;
            const char *end = h[n] == '}' && n > 1 ? h + n : NULL;
            if (end) {
                char name[40];
                memcpy(name, h, (size_t)(end - h + 1));
                name[end - h + 1] = '\0';
                set_why(why, whylen, "password scheme %s is not supported", name);
            } else {
                set_why(why, whylen, "not a recognised password hash");
            }
            return PW_UNKNOWN;
        }
        if (!r->accepted) {
            set_why(why, whylen, "%s", r->why);
            return PW_UNKNOWN;
        }
        h += strlen(r->prefix);
        only = r->only;
        pname = r->prefix;
        if (hash_out)
            *hash_out = h;
    }
    enum pw_scheme s = classify_bare(h, why, whylen);
    if (s == PW_UNKNOWN)
        return s;
    if (pname && only == PW_UNKNOWN && s == PW_ARGON2ID) {
        set_why(why, whylen, "%s holds an argon2id hash: use the {ARGON2ID} prefix", pname);
        return PW_UNKNOWN;
    }
    if (pname && only != PW_UNKNOWN && s != only) {
        set_why(why, whylen, "the %s prefix does not match the hash that follows it", pname);
        return PW_UNKNOWN;
    }
    return s;
}

/* crypt_rn against `hash` and a constant-time compare of the output. */
static int verify_crypt(const char *hash, const char *password)
{
    if (strlen(password) >= CRYPT_MAX_PASSPHRASE_SIZE)
        return 0; /* could never have been set through crypt */
    struct crypt_data *cd = xcalloc(1, sizeof(*cd));
    int res = -1;
    const char *out = crypt_rn(password, hash, cd, (int)sizeof(*cd));
    if (out && out[0] != '*') {
        size_t hl = strlen(hash), ol = strlen(out);
        res = hl == ol && mem_eq_ct(out, hash, hl) ? 1 : 0;
    }
    mem_wipe(cd, sizeof(*cd));
    free(cd);
    return res;
}

int passwd_verify(const char *hash, const char *password)
{
    if (!hash || !password)
        return -1;
    const char *h = NULL;
    enum pw_scheme s = passwd_classify(hash, &h, NULL, 0);
    switch (s) {
    case PW_YESCRYPT:
    case PW_BCRYPT:
    case PW_SHA512_CRYPT:
        return verify_crypt(h, password);
    case PW_ARGON2ID: {
        int r = argon2id_verify(h, password, strlen(password));
        if (r == ARGON2_OK)
            return 1;
        if (r == ARGON2_VERIFY_MISMATCH)
            return 0;
        return -1;
    }
    default:
        return -1;
    }
}

void passwd_verify_dummy(const char *password)
{
    const char *p = password ? password : "";
    (void)argon2id_verify(dummy_hash, p, strlen(p));
}

static int hash_argon2id(const char *password, char *out, size_t outlen)
{
    unsigned char salt[ARGON2_SALT_LEN];
    if (random_bytes(salt, sizeof(salt)) != 0)
        return -1;
    size_t need = argon2_encodedlen(ARGON2_T_COST, ARGON2_M_COST, ARGON2_P_COST, ARGON2_SALT_LEN,
                                    ARGON2_HASH_LEN, Argon2_id);
    if (outlen < need)
        return -1;
    int r = argon2id_hash_encoded(ARGON2_T_COST, ARGON2_M_COST, ARGON2_P_COST, password, strlen(password), salt,
                                  sizeof(salt), ARGON2_HASH_LEN, out, outlen);
    mem_wipe(salt, sizeof(salt));
    return r == ARGON2_OK ? 0 : -1;
}

static int hash_crypt(const char *prefix, unsigned long count, const char *password, char *out, size_t outlen)
{
    if (strlen(password) >= CRYPT_MAX_PASSPHRASE_SIZE)
        return -1;
    char rb[SALT_BYTES];
    char setting[CRYPT_GENSALT_OUTPUT_SIZE];
    if (random_bytes(rb, sizeof(rb)) != 0)
        return -1;
    int res = -1;
    if (crypt_gensalt_rn(prefix, count, rb, (int)sizeof(rb), setting, (int)sizeof(setting))) {
        struct crypt_data *cd = xcalloc(1, sizeof(*cd));
        const char *h = crypt_rn(password, setting, cd, (int)sizeof(*cd));
        if (h && h[0] != '*' && str_copy(out, h, outlen) < outlen)
            res = 0;
        mem_wipe(cd, sizeof(*cd));
        free(cd);
    }
    mem_wipe(rb, sizeof(rb));
    if (res != 0 && outlen)
        out[0] = '\0';
    return res;
}

int passwd_hash(const char *scheme, const char *password, char *out, size_t outlen)
{
    if (!password || !out || outlen == 0)
        return -1;
    out[0] = '\0';
    if (!scheme || str_ieq(scheme, "argon2id"))
        return hash_argon2id(password, out, outlen);
    if (str_ieq(scheme, "yescrypt"))
        return hash_crypt("$y$", 0, password, out, outlen);
    if (str_ieq(scheme, "bcrypt"))
        return hash_crypt("$2b$", BCRYPT_COST, password, out, outlen);
    if (str_ieq(scheme, "sha512-crypt"))
        return hash_crypt("$6$", SHA512_ROUNDS, password, out, outlen);
    return -1;
}
