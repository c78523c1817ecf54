/* Unit tests for authentication: the strict base64 codec (RFC 4648
 * vectors, every kind of malformed input), password hashing and
 * verification for the four schemes (one slow argon2id hash only) and the
 * classification/refusal of every other scheme, the accounts file (a good
 * file with every field form, each error with its line number, permission
 * rules, case-insensitive lookup over 100k accounts, the may-send-as
 * matrix), and the SASL PLAIN/LOGIN state machine. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "auth/accounts.h"
#include "auth/passwd.h"
#include "auth/sasl.h"
#include "core/util.h"
#include "smtp/parse.h"

/* Cheap hashes of "secret" (low cost parameters) for the file tests. */
#define H_SHA512                                                                                                   \
    "$6$rounds=1000$saltsaltsaltsalt$cv7no.30n.S75jcCNBQv6o7WVXQ5AaB1EpIeSKwsNupcnQDQ0DsukcAPRNjPumwKIBg2JK5ii9uw5enNnnA4N/"
#define H_SHA512_DEF                                                                                               \
    "$6$shortsalt$6x1XvBTH1CZHBxwOjDv5IzAuCXVa6w2yU1cfYAlcIYiY5s.GdhEFpx3vogqhsaxdWpqFAR3nnFMP9/gspqJa71"
#define H_BCRYPT_2B "$2b$04$abcdefghijklmnopqrstuu2r9OfJnfCsdneAXAGHnS4UpFFP8WIrW"
#define H_BCRYPT_2Y "$2y$04$abcdefghijklmnopqrstuu2r9OfJnfCsdneAXAGHnS4UpFFP8WIrW"
#define H_BCRYPT_2A "$2a$04$abcdefghijklmnopqrstuu2r9OfJnfCsdneAXAGHnS4UpFFP8WIrW"
#define H_YESCRYPT "$y$j75$1EF7qQ2KddrWQqejD1Sw0.$kOuDDz5nSbTy1Dld/Ijt2GdtZSulxksmKCoBxV01F/4"
#define H_ARGON2ID "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$fIbdC2xakJ6cNlONBQKde0ZQtJof49m9l+7mj3O30mA"
#define H_SHA256 "$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA"
#define H_MD5 "$1$saltsalt$9xy1btjgzLYfb7hivXtC//"
#define H_DES "abNANd1rDfiNc"
#define HINT "; use argon2id, yescrypt, bcrypt or sha512-crypt (submitctl user passwd)"

/* ---- helpers --------------------------------------------------------------- */

struct tmpdir {
    char path[64];
};

static int tmp_setup(void **state)
{
    struct tmpdir *t = calloc(1, sizeof(*t));
    strcpy(t->path, "/tmp/test_auth.XXXXXX");
    assert_non_null(mkdtemp(t->path));
    *state = t;
    return 0;
}

static int tmp_teardown(void **state)
{
    struct tmpdir *t = *state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", t->path);
    assert_int_equal(system(cmd), 0);
    free(t);
    return 0;
}

/* Writes `text` to DIR/name with `mode`; the file's path goes to `path`. */
static void write_file(const struct tmpdir *t, const char *name, const char *text, mode_t mode, char *path,
                       size_t plen)
{
    snprintf(path, plen, "%s/%s", t->path, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, mode), 0);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *b64s(const char *s, size_t n, char *out, size_t outlen)
{
    b64_encode((const unsigned char *)s, n, out, outlen);
    return out;
}

/* ---- base64 -------------------------------------------------------------- */

static void test_b64_vectors(void **state)
{
    (void)state;
    static const char *const v[][2] = {{"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},
                                       {"foo", "Zm9v"}, {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="},
                                       {"foobar", "Zm9vYmFy"}};
    for (size_t i = 0; i < ARRAY_LEN(v); i++) {
        char enc[16];
        unsigned char dec[16];
        size_t n = strlen(v[i][0]);
        assert_int_equal(b64_encode((const unsigned char *)v[i][0], n, enc, sizeof(enc)), strlen(v[i][1]));
        assert_string_equal(enc, v[i][1]);
        assert_int_equal(b64_decode(v[i][1], strlen(v[i][1]), dec, sizeof(dec)), (long)n);
        assert_memory_equal(dec, v[i][0], n);
    }
    /* every byte value round-trips */
    unsigned char all[256], back[256];
    char enc[4 * 86 + 1];
    for (int i = 0; i < 256; i++)
        all[i] = (unsigned char)i;
    assert_int_equal(b64_encode(all, 256, enc, sizeof(enc)), 344);
    assert_int_equal(b64_decode(enc, 344, back, sizeof(back)), 256);
    assert_memory_equal(all, back, 256);
    /* encode into a too small buffer: nothing written but the NUL */
    char small[4] = "xyz";
    assert_int_equal(b64_encode((const unsigned char *)"foo", 3, small, sizeof(small)), 4);
    assert_string_equal(small, "");
    /* decode: output exactly fits, and one byte short */
    unsigned char three[3];
    assert_int_equal(b64_decode("Zm9v", 4, three, 3), 3);
    assert_int_equal(b64_decode("Zm9v", 4, three, 2), -1);
}

static void test_b64_strict(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "Zg",       /* missing padding */
        "Zg=",      /* short padding */
        "Zm9",      /* not a multiple of 4 */
        "Zh==",     /* non-zero trailing bits (one byte) */
        "Zm9=",     /* non-zero trailing bits (two bytes) */
        "Zm 9v",    /* space */
        "Zm9v\n",   /* line break */
        " Zm9v",    /* leading space */
        "Zm9v\r\n", /* CRLF */
        "=Zm9",     /* padding first */
        "Zm=v",     /* padding in the middle of a group */
        "Zg==Zg==", /* padding before the end */
        "Z===",     /* three pad characters */
        "====",     /* only padding */
        "Zm9v!!!!", /* bad characters */
        "Zm-_",     /* URL-safe alphabet */
        "Zm9v=",    /* trailing pad after a full group */
        "%%%%",
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        unsigned char out[32];
        if (b64_decode(bad[i], strlen(bad[i]), out, sizeof(out)) != -1)
            fail_msg("accepted bad base64 \"%s\"", bad[i]);
    }
    unsigned char out[4];
    assert_int_equal(b64_decode("", 0, out, 0), 0);
    assert_int_equal(b64_decode("AAAA", 4, out, sizeof(out)), 3);
    assert_memory_equal(out, "\0\0\0", 3);
    assert_int_equal(b64_decode("+/8=", 4, out, sizeof(out)), 2);
    assert_int_equal(out[0], 0xfb);
    assert_int_equal(out[1], 0xff);
}

/* ---- passwd ------------------------------------------------------------- */

static void test_passwd_crypt_schemes(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        enum pw_scheme s;
        const char *start;
    } sch[] = {
        {"yescrypt", PW_YESCRYPT, "$y$"},
        {"bcrypt", PW_BCRYPT, "$2b$12$"},
        {"sha512-crypt", PW_SHA512_CRYPT, "$6$rounds=100000$"},
    };
    for (size_t i = 0; i < ARRAY_LEN(sch); i++) {
        char h[256], h2[256];
        assert_int_equal(passwd_hash(sch[i].name, "correct horse", h, sizeof(h)), 0);
        assert_true(strncmp(h, sch[i].start, strlen(sch[i].start)) == 0);
        const char *bare = NULL;
        char why[256] = "x";
        assert_int_equal(passwd_classify(h, &bare, why, sizeof(why)), sch[i].s);
        assert_ptr_equal(bare, h);
        assert_string_equal(why, "");
        assert_int_equal(passwd_verify(h, "correct horse"), 1);
        assert_int_equal(passwd_verify(h, "correct horsE"), 0);
        assert_int_equal(passwd_verify(h, ""), 0);
        /* a second hash of the same password has a different salt */
        assert_int_equal(passwd_hash(sch[i].name, "correct horse", h2, sizeof(h2)), 0);
        assert_string_not_equal(h, h2);
    }
    char h[256];
    assert_int_equal(passwd_hash("md5", "x", h, sizeof(h)), -1);
    assert_int_equal(passwd_hash("sha512-crypt", "x", h, 20), -1); /* output does not fit */
}

static void test_passwd_argon2id_and_dummy(void **state)
{
    (void)state;
    char h[256];
    assert_int_equal(passwd_hash(NULL, "correct horse", h, sizeof(h)), 0);
    assert_true(strncmp(h, "$argon2id$v=19$m=65536,t=3,p=1$", 31) == 0);
    assert_int_equal(passwd_classify(h, NULL, NULL, 0), PW_ARGON2ID);
    double t0 = now_s();
    assert_int_equal(passwd_verify(h, "wrong horse"), 0);
    double real = now_s() - t0;
    assert_int_equal(passwd_verify(h, "correct horse"), 1);
    char pre[300];
    snprintf(pre, sizeof(pre), "{ARGON2ID}%s", h);
    assert_int_equal(passwd_verify(pre, "correct horse"), 1);
    t0 = now_s();
    passwd_verify_dummy("whatever");
    double dummy = now_s() - t0;
    /* the dummy costs about as much as a real verification */
    if (dummy * 3 < real || dummy > real * 3)
        fail_msg("dummy verification %.3fs vs real %.3fs", dummy, real);
    passwd_verify_dummy(NULL);
}

static void test_passwd_fixed_hashes(void **state)
{
    (void)state;
    static const char *const good[] = {H_SHA512, H_SHA512_DEF, H_BCRYPT_2B, H_BCRYPT_2Y, H_BCRYPT_2A, H_YESCRYPT,
                                       H_ARGON2ID, "{SHA512-CRYPT}" H_SHA512, "{blf-crypt}" H_BCRYPT_2B,
                                       "{CRYPT}" H_YESCRYPT, "{Argon2id}" H_ARGON2ID};
    for (size_t i = 0; i < ARRAY_LEN(good); i++) {
        if (passwd_verify(good[i], "secret") != 1)
            fail_msg("%s does not verify", good[i]);
        assert_int_equal(passwd_verify(good[i], "Secret"), 0);
        assert_int_equal(passwd_verify(good[i], "secret "), 0);
    }
    /* unusable hashes */
    assert_int_equal(passwd_verify(H_MD5, "secret"), -1);
    assert_int_equal(passwd_verify(H_SHA256, "secret"), -1);
    assert_int_equal(passwd_verify(H_DES, "secret"), -1);
    assert_int_equal(passwd_verify("{PLAIN}secret", "secret"), -1);
    assert_int_equal(passwd_verify("secret", "secret"), -1);
    assert_int_equal(passwd_verify("", ""), -1);
    assert_int_equal(passwd_verify("*", ""), -1);
    assert_int_equal(passwd_verify("$2b$04$tooshort", "secret"), -1);
    assert_int_equal(passwd_verify(NULL, "secret"), -1);
}

static void expect_refused(const char *stored, const char *why_expected)
{
    char why[512];
    const char *bare = NULL;
    enum pw_scheme s = passwd_classify(stored, &bare, why, sizeof(why));
    if (s != PW_UNKNOWN)
        fail_msg("accepted \"%s\"", stored);
    assert_string_equal(why, why_expected);
}

static void test_passwd_classify(void **state)
{
    (void)state;
    static const struct {
        const char *stored;
        enum pw_scheme s;
        size_t skip;
    } ok[] = {
        {H_YESCRYPT, PW_YESCRYPT, 0},
        {H_BCRYPT_2B, PW_BCRYPT, 0},
        {H_BCRYPT_2Y, PW_BCRYPT, 0},
        {H_BCRYPT_2A, PW_BCRYPT, 0},
        {H_SHA512, PW_SHA512_CRYPT, 0},
        {H_ARGON2ID, PW_ARGON2ID, 0},
        {"{CRYPT}" H_YESCRYPT, PW_YESCRYPT, 7},
        {"{crypt}" H_SHA512, PW_SHA512_CRYPT, 7},
        {"{CRYPT}" H_BCRYPT_2Y, PW_BCRYPT, 7},
        {"{BLF-CRYPT}" H_BCRYPT_2B, PW_BCRYPT, 11},
        {"{Blf-Crypt}" H_BCRYPT_2A, PW_BCRYPT, 11},
        {"{SHA512-CRYPT}" H_SHA512_DEF, PW_SHA512_CRYPT, 14},
        {"{sha512-crypt}" H_SHA512, PW_SHA512_CRYPT, 14},
        {"{ARGON2ID}" H_ARGON2ID, PW_ARGON2ID, 10},
        {"{argon2id}" H_ARGON2ID, PW_ARGON2ID, 10},
    };
    for (size_t i = 0; i < ARRAY_LEN(ok); i++) {
        const char *bare = NULL;
        char why[256] = "junk";
        if (passwd_classify(ok[i].stored, &bare, why, sizeof(why)) != ok[i].s)
            fail_msg("misclassified %s", ok[i].stored);
        assert_ptr_equal(bare, ok[i].stored + ok[i].skip);
        assert_string_equal(why, "");
    }
    expect_refused("{PLAIN}secret", "plaintext passwords ({PLAIN}) are refused" HINT);
    expect_refused("{plain}secret", "plaintext passwords ({PLAIN}) are refused" HINT);
    expect_refused("{CLEARTEXT}secret", "plaintext passwords ({CLEARTEXT}) are refused" HINT);
    expect_refused("{MD5}" H_MD5, "{MD5} (MD5-crypt) is weak and is refused" HINT);
    expect_refused("{PLAIN-MD5}5ebe2294ecd0e0f08eab7690d2a6ee69",
                   "{PLAIN-MD5} is an unsalted fast hash and is refused" HINT);
    expect_refused("{SHA256-CRYPT}" H_SHA256, "{SHA256-CRYPT} is weaker than the accepted schemes and is refused" HINT);
    expect_refused("{SSHA512}abcd", "password scheme {SSHA512} is not supported" HINT);
    expect_refused("{my secret}", "not a recognised password hash" HINT);
    expect_refused(H_MD5, "MD5-crypt ($1$) is weak and is refused" HINT);
    expect_refused(H_SHA256, "sha256-crypt ($5$) is refused: weaker than the accepted schemes (argon2id and "
                             "yescrypt are memory-hard, bcrypt resists GPUs better, sha512-crypt uses the wider "
                             "hash)" HINT);
    expect_refused(H_DES, "DES crypt is weak (8-character passwords) and is refused" HINT);
    expect_refused("", "empty password hash" HINT);
    expect_refused("{CRYPT}", "empty password hash" HINT);
    expect_refused("*", "locked or disabled password ('*' or '!')" HINT);
    expect_refused("!", "locked or disabled password ('*' or '!')" HINT);
    expect_refused("!" H_SHA512, "locked or disabled password ('*' or '!')" HINT);
    expect_refused("hunter2", "not a recognised password hash (plaintext?)" HINT);
    expect_refused("$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
                   "only the argon2id variant of argon2 is accepted" HINT);
    expect_refused("$2b$04$short", "malformed bcrypt hash" HINT);
    expect_refused("$6$salt$short", "malformed sha512-crypt hash" HINT);
    expect_refused("$y$j75$salt", "malformed yescrypt hash" HINT);
    expect_refused("$argon2id$v=19$m=8,t=1$c2FsdHNhbHRzYWx0c2FsdA$fIbdC2xakJ6c", "malformed argon2id hash" HINT);
    expect_refused("{BLF-CRYPT}" H_SHA512, "the {BLF-CRYPT} prefix does not match the hash that follows it" HINT);
    expect_refused("{SHA512-CRYPT}" H_YESCRYPT,
                   "the {SHA512-CRYPT} prefix does not match the hash that follows it" HINT);
    expect_refused("{ARGON2ID}" H_BCRYPT_2B, "the {ARGON2ID} prefix does not match the hash that follows it" HINT);
    expect_refused("{CRYPT}" H_ARGON2ID, "{CRYPT} holds an argon2id hash: use the {ARGON2ID} prefix" HINT);
    expect_refused("{CRYPT}" H_MD5, "MD5-crypt ($1$) is weak and is refused" HINT);
    /* no why buffer is fine */
    assert_int_equal(passwd_classify("{PLAIN}x", NULL, NULL, 0), PW_UNKNOWN);
    assert_int_equal(passwd_classify(NULL, NULL, NULL, 0), PW_UNKNOWN);
}

/* ---- accounts ------------------------------------------------------------ */

static const char good_file[] =
    "# accounts for the tests\n"
    "\n"
    "alice@example.test:{SHA512-CRYPT}" H_SHA512 "::::::sender=alice@example.test,Alias@Example.TEST\n"
    "bob@example.test:" H_BCRYPT_2B "\n"
    "   \t\n"
    "Carol:{crypt}" H_YESCRYPT ":1000:1000:Carol C:/home/carol:/bin/false:sender=@Carol.test "
    "userdb_quota_rule=*:storage=1G nopassword\n"
    "argon:{ARGON2ID}" H_ARGON2ID ":::\n"
    "# dave is suspended\n"
    "dave@example.test:{BLF-CRYPT}" H_BCRYPT_2Y "::::::suspended=yes sender=dave@example.test\n"
    "erin@example.test:" H_BCRYPT_2A ":::::/bin/sh:suspended=no\r\n"
    "carl:" H_SHA512_DEF "\n"
    "frank@example.test:{CRYPT}" H_SHA512_DEF;

static void test_accounts_good(void **state)
{
    struct tmpdir *t = *state;
    char path[128];
    write_file(t, "good", good_file, 0600, path, sizeof(path));
    struct errlist e;
    errlist_init(&e);
    struct accounts *a = accounts_load(path, &e);
    if (!a)
        fail_msg("load failed: %s", e.n ? e.v[0] : "?");
    assert_int_equal(e.n, 0);
    assert_int_equal(accounts_count(a), 8);

    const struct account *x = accounts_find(a, "alice@example.test");
    assert_non_null(x);
    assert_string_equal(x->login, "alice@example.test");
    assert_string_equal(x->hash, H_SHA512);
    assert_int_equal(x->nsenders, 2);
    assert_string_equal(x->senders[0], "alice@example.test");
    assert_string_equal(x->senders[1], "alias@example.test");
    assert_int_equal(x->suspended, 0);
    assert_int_equal(x->line, 3);
    assert_int_equal(passwd_verify(x->hash, "secret"), 1);

    x = accounts_find(a, "BOB@Example.Test");
    assert_non_null(x);
    assert_string_equal(x->login, "bob@example.test");
    assert_string_equal(x->hash, H_BCRYPT_2B);
    assert_int_equal(x->nsenders, 0);
    assert_int_equal(x->line, 4);

    x = accounts_find(a, "carol");
    assert_non_null(x);
    assert_string_equal(x->login, "Carol");
    assert_string_equal(x->hash, H_YESCRYPT);
    assert_int_equal(x->nsenders, 1);
    assert_string_equal(x->senders[0], "@carol.test");
    assert_int_equal(x->line, 6);

    x = accounts_find(a, "ARGON");
    assert_non_null(x);
    assert_string_equal(x->hash, H_ARGON2ID);
    assert_int_equal(passwd_verify(x->hash, "secret"), 1);

    x = accounts_find(a, "dave@example.test");
    assert_non_null(x); /* suspended accounts are found; the session checks */
    assert_int_equal(x->suspended, 1);
    assert_int_equal(x->nsenders, 1);
    assert_int_equal(x->line, 9);

    x = accounts_find(a, "erin@example.test");
    assert_non_null(x);
    assert_string_equal(x->hash, H_BCRYPT_2A); /* CR removed */
    assert_int_equal(x->suspended, 0);

    x = accounts_find(a, "frank@example.test"); /* last line without newline */
    assert_non_null(x);
    assert_string_equal(x->hash, H_SHA512_DEF);
    assert_int_equal(x->line, 12);

    assert_null(accounts_find(a, "nobody"));
    assert_null(accounts_find(a, "alice@example.tes"));
    assert_null(accounts_find(a, ""));
    assert_null(accounts_find(a, NULL));
    assert_null(accounts_find(NULL, "alice@example.test"));

    assert_ptr_equal(accounts_ref(a), a);
    accounts_unref(a);
    assert_non_null(accounts_find(a, "carl")); /* still alive: one reference left */
    accounts_unref(a);
    accounts_unref(NULL);
    errlist_free(&e);

    /* an empty file is a valid file with no accounts */
    write_file(t, "empty", "# nobody yet\n", 0600, path, sizeof(path));
    a = accounts_load(path, &e);
    assert_non_null(a);
    assert_int_equal(accounts_count(a), 0);
    assert_null(accounts_find(a, "x"));
    accounts_unref(a);
    errlist_free(&e);
}

static void test_accounts_errors(void **state)
{
    struct tmpdir *t = *state;
    static const char text[] =
        "# fine\n"                                                              /* 1 */
        "good@example.test:" H_SHA512_DEF "\n"                                  /* 2 */
        "plain@example.test:{PLAIN}hunter2\n"                                   /* 3 */
        "md5@example.test:" H_MD5 "\n"                                          /* 4 */
        "GOOD@example.test:" H_BCRYPT_2B "\n"                                   /* 5 */
        ":" H_SHA512_DEF "\n"                                                   /* 6 */
        "bad login:" H_SHA512_DEF "\n"                                          /* 7 */
        "nocolon\n"                                                             /* 8 */
        "s@example.test:" H_SHA512_DEF "::::::sender=a@b.test,,@c.test\n"       /* 9 */
        "u@example.test:" H_SHA512_DEF "::::::suspended=maybe\n"                /* 10 */
        "sha256@example.test:" H_SHA256 "\n"                                    /* 11 */
        "ctl\001x:" H_SHA512_DEF "\n"                                           /* 12 */
        "des@example.test:" H_DES "\n"                                          /* 13 */
        "empty@example.test:\n"                                                 /* 14 */
        "star@example.test:*\n"                                                 /* 15 */
        "x@example.test:" H_SHA512_DEF "::::::sender=x@sub@example.test\n"      /* 16 */
        "y@example.test:" H_SHA512_DEF "::::::sender=@bad..test sender=a@b.test\n" /* 17 */
        "z@example.test:" H_SHA512_DEF ":::::: sender=\n"                       /* 18 */
        "ok2@example.test:" H_SHA512 "::::::sender=@ok.test unknown=1\n";       /* 19 */
    char path[128];
    write_file(t, "bad", text, 0600, path, sizeof(path));
    struct errlist e;
    errlist_init(&e);
    assert_null(accounts_load(path, &e));
    const char *want[] = {
        "%s:3: login plain@example.test: bad password hash: plaintext passwords ({PLAIN}) are refused" HINT,
        "%s:4: login md5@example.test: bad password hash: MD5-crypt ($1$) is weak and is refused" HINT,
        "%s:5: duplicate login GOOD@example.test (first at line 2; logins are case-insensitive)",
        "%s:6: empty login",
        "%s:7: login contains whitespace or control characters",
        "%s:8: expected login:{SCHEME}hash[:uid:gid:gecos:home:shell:extra fields]",
        "%s:9: sender= entry \"\": empty entry",
        "%s:10: suspended= must be yes or no",
        "%s:11: login sha256@example.test: bad password hash: sha256-crypt ($5$) is refused: weaker than the "
        "accepted schemes (argon2id and yescrypt are memory-hard, bcrypt resists GPUs better, sha512-crypt uses "
        "the wider hash)" HINT,
        "%s:12: login contains whitespace or control characters",
        "%s:13: login des@example.test: bad password hash: DES crypt is weak (8-character passwords) and is "
        "refused" HINT,
        "%s:14: login empty@example.test: bad password hash: empty password hash" HINT,
        "%s:15: login star@example.test: bad password hash: locked or disabled password ('*' or '!')" HINT,
        "%s:16: sender= entry \"x@sub@example.test\": not an address or @domain",
        "%s:17: sender= entry \"@bad..test\": bad domain",
        "%s:17: sender= given twice",
        "%s:18: empty sender= (give addresses and/or @domain entries, comma separated)",
    };
    if (e.n != ARRAY_LEN(want)) {
        for (size_t i = 0; i < e.n; i++)
            printf("  got: %s\n", e.v[i]);
        fail_msg("%zu errors, expected %zu", e.n, ARRAY_LEN(want));
    }
    for (size_t i = 0; i < ARRAY_LEN(want); i++) {
        char exp[1024];
        snprintf(exp, sizeof(exp), want[i], path);
        assert_string_equal(e.v[i], exp);
    }
    for (size_t i = 0; i < e.n; i++)
        assert_null(strstr(e.v[i], "hunter2")); /* never echo a password field */
    errlist_free(&e);

    /* a missing file; and NULL errs is tolerated */
    snprintf(path, sizeof(path), "%s/missing", t->path);
    assert_null(accounts_load(path, &e));
    assert_int_equal(e.n, 1);
    char exp[256];
    snprintf(exp, sizeof(exp), "%s: cannot open: No such file or directory", path);
    assert_string_equal(e.v[0], exp);
    errlist_free(&e);
    assert_null(accounts_load(path, NULL));
}

static void test_accounts_permissions(void **state)
{
    struct tmpdir *t = *state;
    static const struct {
        mode_t mode;
        const char *err; /* NULL: loads */
    } cases[] = {
        {0600, NULL},
        {0640, NULL},
        {0400, NULL},
        {0644, "readable by others; chmod 600 (or 640 with group submitd)"},
        {0604, "readable by others; chmod 600 (or 640 with group submitd)"},
        {0602, "writable by others; chmod 600 (or 640 with group submitd)"},
        {0601, "accessible by others (o+x); chmod 600 (or 640 with group submitd)"},
        {0660, "writable by group; chmod 600 (or 640 with group submitd)"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char path[128], name[32];
        snprintf(name, sizeof(name), "perm%zu", i);
        write_file(t, name, "a@example.test:" H_SHA512 "\n", cases[i].mode, path, sizeof(path));
        struct errlist e;
        errlist_init(&e);
        struct accounts *a = accounts_load(path, &e);
        if (!cases[i].err) {
            assert_non_null(a);
            assert_int_equal(accounts_count(a), 1);
            assert_int_equal(e.n, 0);
            accounts_unref(a);
        } else {
            assert_null(a);
            assert_int_equal(e.n, 1);
            char exp[256];
            snprintf(exp, sizeof(exp), "%s: %s", path, cases[i].err);
            assert_string_equal(e.v[0], exp);
        }
        errlist_free(&e);
    }
    /* a directory is not an accounts file */
    struct errlist e;
    errlist_init(&e);
    assert_null(accounts_load(t->path, &e));
    char exp[128];
    snprintf(exp, sizeof(exp), "%s: not a regular file", t->path);
    assert_string_equal(e.v[0], exp);
    errlist_free(&e);
}

static void test_accounts_many(void **state)
{
    struct tmpdir *t = *state;
    enum { N = 100000 };
    char path[128];
    snprintf(path, sizeof(path), "%s/many", t->path);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < N; i++)
        fprintf(f, "User%d@Example.test:" H_SHA512 "::::::sender=@d%d.test\n", i, i);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, 0600), 0);
    struct errlist e;
    errlist_init(&e);
    struct accounts *a = accounts_load(path, &e);
    assert_non_null(a);
    assert_int_equal(accounts_count(a), N);
    double t0 = now_s();
    for (int i = 0; i < N; i++) {
        char login[64];
        snprintf(login, sizeof(login), "user%d@EXAMPLE.TEST", i);
        const struct account *x = accounts_find(a, login);
        if (!x || x->line != i + 1)
            fail_msg("lookup of %s failed", login);
        char miss[64];
        snprintf(miss, sizeof(miss), "user%d@example.test.x", i);
        assert_null(accounts_find(a, miss));
    }
    /* 200k lookups: hashed, not a linear scan (which would take minutes) */
    assert_true(now_s() - t0 < 5.0);
    accounts_unref(a);
    errlist_free(&e);
}

static void test_may_send_as(void **state)
{
    struct tmpdir *t = *state;
    static const char text[] = "alice@example.test:" H_SHA512 "::::::sender=alice@example.test,Alias@Example.TEST\n"
                               "carol:" H_SHA512 "::::::sender=@Carol.test\n"
                               "bob@example.test:" H_SHA512 "\n"
                               "carl:" H_SHA512 "\n"
                               "mixed:" H_SHA512 "::::::sender=@one.test,two@two.test\n"
                               "dave@example.test:" H_SHA512 "::::::suspended=yes\n";
    char path[128];
    write_file(t, "send", text, 0600, path, sizeof(path));
    struct errlist e;
    errlist_init(&e);
    struct accounts *a = accounts_load(path, &e);
    assert_non_null(a);
    static const struct {
        const char *login, *addr;
        int ok;
    } m[] = {
        {"alice@example.test", "alice@example.test", 1},
        {"alice@example.test", "ALICE@EXAMPLE.TEST", 1},
        {"alice@example.test", "alias@example.test", 1},
        {"alice@example.test", "Alias@Example.TEST", 1},
        {"alice@example.test", "bob@example.test", 0},
        {"alice@example.test", "alice@example.test.evil", 0},
        {"alice@example.test", "xalice@example.test", 0},
        {"alice@example.test", "alice@sub.example.test", 0},
        {"alice@example.test", "other@example.test", 0}, /* no @example.test entry */
        {"alice@example.test", "", 0},
        {"carol", "x@carol.test", 1},
        {"carol", "X@CAROL.TEST", 1},
        {"carol", "carol@Carol.Test", 1},
        {"carol", "x@sub.carol.test", 0},
        {"carol", "x@carol.test.evil", 0},
        {"carol", "x@evilcarol.test", 0},
        {"carol", "carol.test", 0},
        {"carol", "@carol.test", 0},
        {"carol", "carol", 0},
        {"bob@example.test", "bob@example.test", 1}, /* no sender=: itself */
        {"bob@example.test", "BOB@Example.Test", 1},
        {"bob@example.test", "other@example.test", 0},
        {"bob@example.test", "bob@example.test.evil", 0},
        {"carl", "carl", 0}, /* not an address, no sender=: nothing */
        {"carl", "carl@example.test", 0},
        {"mixed", "a@one.test", 1},
        {"mixed", "two@two.test", 1},
        {"mixed", "one@two.test", 0},
        {"mixed", "mixed", 0},
        {"dave@example.test", "dave@example.test", 1},
    };
    for (size_t i = 0; i < ARRAY_LEN(m); i++) {
        const struct account *x = accounts_find(a, m[i].login);
        assert_non_null(x);
        if (account_may_send_as(x, m[i].addr) != m[i].ok)
            fail_msg("%s as <%s>: expected %d", m[i].login, m[i].addr, m[i].ok);
    }
    assert_int_equal(account_may_send_as(NULL, "a@b.test"), 0);
    assert_int_equal(account_may_send_as(accounts_find(a, "carol"), NULL), 0);
    assert_int_equal(accounts_find(a, "dave@example.test")->suspended, 1);
    accounts_unref(a);
    errlist_free(&e);
}

/* ---- sasl ---------------------------------------------------------------- */

/* "AUTH" arguments: MECH + " " + base64(raw[0..n)). */
static const char *auth_args(const char *mech, const char *raw, size_t n, char *buf, size_t len)
{
    char enc[2200];
    b64s(raw, n, enc, sizeof(enc));
    int r = snprintf(buf, len, "%s %s", mech, enc);
    assert_true(r > 0 && (size_t)r < len);
    return buf;
}

static int all_zero(const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        if (c[i])
            return 0;
    return 1;
}

static void test_sasl_plain(void **state)
{
    (void)state;
    struct sasl s;
    char ch[64], args[2400], line[2400];
    memset(&s, 0x55, sizeof(s));

    /* initial response */
    assert_int_equal(sasl_start(&s, auth_args("PLAIN", "\0alice\0pw 1", 11, args, sizeof(args)), ch, sizeof(ch)),
                     SASL_DONE);
    assert_string_equal(s.user, "alice");
    assert_string_equal(s.pass, "pw 1");
    assert_string_equal(s.authzid, "");
    /* after DONE, more lines are a protocol error */
    assert_int_equal(sasl_step(&s, "AAAA", ch, sizeof(ch)), SASL_BAD_SYNTAX);

    /* mechanism names are case-insensitive; trailing blanks ignored */
    assert_int_equal(sasl_start(&s, auth_args("plain", "\0bob\0x", 6, args, sizeof(args)), ch, sizeof(ch)), SASL_DONE);
    assert_string_equal(s.user, "bob");
    strcat(args, "  ");
    assert_int_equal(sasl_start(&s, args, ch, sizeof(ch)), SASL_DONE);

    /* no initial response: empty challenge, then the message */
    strcpy(ch, "junk");
    assert_int_equal(sasl_start(&s, "PLAIN", ch, sizeof(ch)), SASL_CONTINUE);
    assert_string_equal(ch, "");
    b64s("\0carol\0pw", 9, line, sizeof(line));
    assert_int_equal(sasl_step(&s, line, ch, sizeof(ch)), SASL_DONE);
    assert_string_equal(s.user, "carol");
    assert_string_equal(s.pass, "pw");

    /* "=" is an empty initial response: an empty PLAIN message is malformed */
    assert_int_equal(sasl_start(&s, "PLAIN =", ch, sizeof(ch)), SASL_BAD_SYNTAX);
    /* an empty line after the challenge, likewise */
    assert_int_equal(sasl_start(&s, "PLAIN", ch, sizeof(ch)), SASL_CONTINUE);
    assert_int_equal(sasl_step(&s, "", ch, sizeof(ch)), SASL_BAD_SYNTAX);

    /* authzid: empty or the same login (case-insensitive), nothing else */
    assert_int_equal(sasl_start(&s, auth_args("PLAIN", "bob\0bob\0pw", 10, args, sizeof(args)), ch, sizeof(ch)),
                     SASL_DONE);
    assert_string_equal(s.authzid, "bob");
    assert_string_equal(s.user, "bob");
    assert_int_equal(sasl_start(&s, auth_args("PLAIN", "Bob\0bob\0pw", 10, args, sizeof(args)), ch, sizeof(ch)),
                     SASL_DONE);
    assert_int_equal(sasl_start(&s, auth_args("PLAIN", "root\0bob\0pw", 11, args, sizeof(args)), ch, sizeof(ch)),
                     SASL_BAD_SYNTAX);
    assert_true(all_zero(&s, sizeof(s))); /* the failure wiped what was decoded */

    /* exactly two NULs, non-empty login and password */
    static const struct {
        const char *raw;
        size_t n;
    } bad[] = {
        {"alice\0pw", 8}, {"alicepw", 7}, {"\0a\0b\0c", 6}, {"\0\0pw", 4}, {"\0alice\0", 7}, {"\0\0", 2},
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        if (sasl_start(&s, auth_args("PLAIN", bad[i].raw, bad[i].n, args, sizeof(args)), ch, sizeof(ch)) !=
            SASL_BAD_SYNTAX)
            fail_msg("bad PLAIN message %zu accepted", i);
    }

    /* limits: user 256, password 1024, authzid 256 */
    char raw[1700];
    memset(raw, 'u', sizeof(raw));
    raw[0] = '\0';
    raw[1 + SASL_USER_MAX] = '\0';
    assert_int_equal(sasl_start(&s, auth_args("PLAIN", raw, 2 + SASL_USER_MAX + SASL_PASS_MAX, args, sizeof(args)),
                                ch, sizeof(ch)),
                     SASL_DONE);
    assert_int_equal(strlen(s.user), SASL_USER_MAX);
    assert_int_equal(strlen(s.pass), SASL_PASS_MAX);
    assert_int_equal(sasl_start(&s, auth_args("PLAIN", raw, 3 + SASL_USER_MAX + SASL_PASS_MAX, args, sizeof(args)),
                                ch, sizeof(ch)),
                     SASL_BAD_SYNTAX); /* password 1025 */
    memset(raw, 'u', sizeof(raw));
    raw[0] = '\0';
    raw[2 + SASL_USER_MAX] = '\0';
    assert_int_equal(sasl_start(&s, auth_args("PLAIN", raw, 3 + SASL_USER_MAX + 5, args, sizeof(args)), ch,
                                sizeof(ch)),
                     SASL_BAD_SYNTAX); /* user 257 */
    memset(raw, 'u', sizeof(raw));
    raw[SASL_USER_MAX + 1] = '\0';
    raw[SASL_USER_MAX + 2] = 'u';
    raw[SASL_USER_MAX + 3] = '\0';
    assert_int_equal(sasl_start(&s, auth_args("PLAIN", raw, SASL_USER_MAX + 6, args, sizeof(args)), ch, sizeof(ch)),
                     SASL_BAD_SYNTAX); /* authzid 257 */
    /* a base64 payload longer than any acceptable message */
    char longb64[2400];
    memset(longb64, 'A', 2100);
    longb64[2100] = '\0';
    assert_int_equal(sasl_start(&s, "PLAIN", ch, sizeof(ch)), SASL_CONTINUE);
    assert_int_equal(sasl_step(&s, longb64, ch, sizeof(ch)), SASL_BAD_SYNTAX);

    /* more than mechanism and one response */
    assert_int_equal(sasl_start(&s, "PLAIN AAAA AAAA", ch, sizeof(ch)), SASL_BAD_SYNTAX);
    assert_int_equal(sasl_start(&s, "", ch, sizeof(ch)), SASL_BAD_SYNTAX);
    assert_int_equal(sasl_start(&s, " PLAIN", ch, sizeof(ch)), SASL_BAD_SYNTAX);
    sasl_clear(&s);
}

static void test_sasl_login(void **state)
{
    (void)state;
    struct sasl s;
    memset(&s, 0, sizeof(s));
    char ch[64], line[2400], args[400];

    assert_int_equal(sasl_start(&s, "LOGIN", ch, sizeof(ch)), SASL_CONTINUE);
    assert_string_equal(ch, "VXNlcm5hbWU6"); /* Username: */
    assert_int_equal(sasl_step(&s, b64s("alice@example.test", 18, line, sizeof(line)), ch, sizeof(ch)),
                     SASL_CONTINUE);
    assert_string_equal(ch, "UGFzc3dvcmQ6"); /* Password: */
    assert_int_equal(sasl_step(&s, b64s("p:w d", 5, line, sizeof(line)), ch, sizeof(ch)), SASL_DONE);
    assert_string_equal(s.user, "alice@example.test");
    assert_string_equal(s.pass, "p:w d");
    assert_string_equal(s.authzid, "");

    /* the initial response is the user name */
    assert_int_equal(sasl_start(&s, auth_args("login", "bob", 3, args, sizeof(args)), ch, sizeof(ch)), SASL_CONTINUE);
    assert_string_equal(ch, "UGFzc3dvcmQ6");
    assert_string_equal(s.user, "bob");
    assert_int_equal(sasl_step(&s, b64s("pw", 2, line, sizeof(line)), ch, sizeof(ch)), SASL_DONE);
    assert_string_equal(s.pass, "pw");

    /* empty user ("=" initial response or empty line) */
    assert_int_equal(sasl_start(&s, "LOGIN =", ch, sizeof(ch)), SASL_BAD_SYNTAX);
    assert_int_equal(sasl_start(&s, "LOGIN", ch, sizeof(ch)), SASL_CONTINUE);
    assert_int_equal(sasl_step(&s, "", ch, sizeof(ch)), SASL_BAD_SYNTAX);
    /* "=" is not a continuation line's empty value */
    assert_int_equal(sasl_start(&s, "LOGIN", ch, sizeof(ch)), SASL_CONTINUE);
    assert_int_equal(sasl_step(&s, "=", ch, sizeof(ch)), SASL_BAD_BASE64);

    /* NUL inside the user name or the password */
    assert_int_equal(sasl_start(&s, auth_args("LOGIN", "a\0b", 3, args, sizeof(args)), ch, sizeof(ch)),
                     SASL_BAD_SYNTAX);
    assert_int_equal(sasl_start(&s, "LOGIN", ch, sizeof(ch)), SASL_CONTINUE);
    assert_int_equal(sasl_step(&s, b64s("bob", 3, line, sizeof(line)), ch, sizeof(ch)), SASL_CONTINUE);
    assert_int_equal(sasl_step(&s, b64s("p\0w", 3, line, sizeof(line)), ch, sizeof(ch)), SASL_BAD_SYNTAX);
    assert_true(all_zero(&s, sizeof(s)));

    /* lengths */
    char big[SASL_PASS_MAX + 2];
    memset(big, 'x', sizeof(big));
    assert_int_equal(sasl_start(&s, "LOGIN", ch, sizeof(ch)), SASL_CONTINUE);
    assert_int_equal(sasl_step(&s, b64s(big, SASL_USER_MAX, line, sizeof(line)), ch, sizeof(ch)), SASL_CONTINUE);
    assert_int_equal(sasl_step(&s, b64s(big, SASL_PASS_MAX, line, sizeof(line)), ch, sizeof(ch)), SASL_DONE);
    assert_int_equal(sasl_start(&s, "LOGIN", ch, sizeof(ch)), SASL_CONTINUE);
    assert_int_equal(sasl_step(&s, b64s(big, SASL_USER_MAX + 1, line, sizeof(line)), ch, sizeof(ch)),
                     SASL_BAD_SYNTAX);
    assert_int_equal(sasl_start(&s, "LOGIN", ch, sizeof(ch)), SASL_CONTINUE);
    assert_int_equal(sasl_step(&s, b64s("u", 1, line, sizeof(line)), ch, sizeof(ch)), SASL_CONTINUE);
    assert_int_equal(sasl_step(&s, b64s(big, SASL_PASS_MAX + 1, line, sizeof(line)), ch, sizeof(ch)),
                     SASL_BAD_SYNTAX);

    /* a challenge buffer too small for "Username:" is refused, not overrun */
    char tiny[8];
    assert_int_equal(sasl_start(&s, "LOGIN", tiny, sizeof(tiny)), SASL_BAD_SYNTAX);
    sasl_clear(&s);
}

static void test_sasl_cancel_and_errors(void **state)
{
    (void)state;
    struct sasl s;
    memset(&s, 0, sizeof(s));
    char ch[64], line[200];

    /* cancel at each step */
    assert_int_equal(sasl_start(&s, "PLAIN", ch, sizeof(ch)), SASL_CONTINUE);
    assert_int_equal(sasl_step(&s, "*", ch, sizeof(ch)), SASL_CANCELLED);
    assert_int_equal(sasl_start(&s, "LOGIN", ch, sizeof(ch)), SASL_CONTINUE);
    assert_int_equal(sasl_step(&s, "*", ch, sizeof(ch)), SASL_CANCELLED);
    assert_int_equal(sasl_start(&s, "LOGIN", ch, sizeof(ch)), SASL_CONTINUE);
    assert_int_equal(sasl_step(&s, b64s("alice", 5, line, sizeof(line)), ch, sizeof(ch)), SASL_CONTINUE);
    assert_int_equal(sasl_step(&s, "*", ch, sizeof(ch)), SASL_CANCELLED);
    assert_true(all_zero(&s, sizeof(s))); /* the user name is gone too */

    /* bad base64 in the initial response and in a continuation */
    assert_int_equal(sasl_start(&s, "PLAIN !!!notbase64!!!", ch, sizeof(ch)), SASL_BAD_BASE64);
    assert_int_equal(sasl_start(&s, "PLAIN AGFsaWNlAHB3", ch, sizeof(ch)), SASL_DONE); /* sanity: valid */
    assert_int_equal(sasl_start(&s, "PLAIN AGFsaWNlAHB3=", ch, sizeof(ch)), SASL_BAD_BASE64);
    assert_int_equal(sasl_start(&s, "PLAIN", ch, sizeof(ch)), SASL_CONTINUE);
    assert_int_equal(sasl_step(&s, "%%%%", ch, sizeof(ch)), SASL_BAD_BASE64);
    assert_int_equal(sasl_start(&s, "LOGIN", ch, sizeof(ch)), SASL_CONTINUE);
    assert_int_equal(sasl_step(&s, "YWxpY2U", ch, sizeof(ch)), SASL_BAD_BASE64); /* no padding */
    assert_int_equal(sasl_start(&s, "LOGIN", ch, sizeof(ch)), SASL_CONTINUE);
    assert_int_equal(sasl_step(&s, "YWxp Y2U=", ch, sizeof(ch)), SASL_BAD_BASE64);

    /* unknown mechanisms */
    static const char *const mechs[] = {"CRAM-MD5", "XOAUTH2 dG9rZW4=", "GARBAGE", "DIGEST-MD5", "SCRAM-SHA-256",
                                        "PLAINX", "PLAI", "A-VERY-LONG-MECHANISM-NAME-INDEED"};
    for (size_t i = 0; i < ARRAY_LEN(mechs); i++)
        assert_int_equal(sasl_start(&s, mechs[i], ch, sizeof(ch)), SASL_BAD_MECH);

    /* a step without a start */
    memset(&s, 0, sizeof(s));
    assert_int_equal(sasl_step(&s, "AAAA", ch, sizeof(ch)), SASL_BAD_SYNTAX);
}

static void test_sasl_clear_wipes(void **state)
{
    (void)state;
    struct sasl s;
    char ch[64], args[200];
    assert_int_equal(sasl_start(&s, auth_args("PLAIN", "zid\0zid\0topsecret", 17, args, sizeof(args)), ch,
                                sizeof(ch)),
                     SASL_DONE);
    assert_string_equal(s.pass, "topsecret");
    sasl_clear(&s);
    assert_true(all_zero(&s, sizeof(s)));
    sasl_clear(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64_vectors),
        cmocka_unit_test(test_b64_strict),
        cmocka_unit_test(test_passwd_crypt_schemes),
        cmocka_unit_test(test_passwd_argon2id_and_dummy),
        cmocka_unit_test(test_passwd_fixed_hashes),
        cmocka_unit_test(test_passwd_classify),
        cmocka_unit_test_setup_teardown(test_accounts_good, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_accounts_errors, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_accounts_permissions, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_accounts_many, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_may_send_as, tmp_setup, tmp_teardown),
        cmocka_unit_test(test_sasl_plain),
        cmocka_unit_test(test_sasl_login),
        cmocka_unit_test(test_sasl_cancel_and_errors),
        cmocka_unit_test(test_sasl_clear_wipes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
