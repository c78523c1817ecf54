/* Unit tests for dkim/dkim.c and dkim/dkimhook.c: header and body
 * canonicalization against RFC 6376 3.4.5 (exact strings), the streaming
 * body canonicalizer fed in every split (1-byte chunks, CRLF split, blank
 * lines across chunks) and against a naive reference on random bodies,
 * empty bodies, header-field splitting, header selection (bottom-up,
 * repeated fields, oversigning), the RFC 8463 appendix A example (its
 * Ed25519 and RSA keys reproduce its b= and bh= exactly), the produced
 * field's layout and folding, RSA and Ed25519 signatures checked with
 * EVP_DigestVerify, and the hook end to end (a whole message in chunks,
 * prepend fields signed, bh= against an independent hash, both
 * signatures verified) plus its failure paths (required or not). Keys
 * are made here with OpenSSL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "core/config.h"
#include "core/log.h"
#include "core/util.h"
#include "dkim/dkim.h"
#include "queue/spool.h"
#include "smtp/msgstream.h"
#include "smtp/parse.h"

#define S(x) x, (sizeof(x) - 1)

/* ---- helpers ------------------------------------------------------------ */

static void b64_of(const unsigned char *d, size_t n, char *out)
{
    EVP_EncodeBlock((unsigned char *)out, d, (int)n);
}

/* base64 SHA-256 of bytes (the independent hash). */
static void sha_b64(const void *p, size_t n, char out[64])
{
    unsigned char d[32];
    unsigned int l = 0;
    assert_int_equal(EVP_Digest(p, n, d, &l, EVP_sha256(), NULL), 1);
    b64_of(d, 32, out);
}

/* The body hash through the canonicalizer, fed in the pieces cut at
 * cuts[0..ncuts) (ascending positions). */
static void body_b64(enum dkim_canon c, const char *in, size_t len, const size_t *cuts, size_t ncuts, char out[64])
{
    struct dkim_body *b = malloc(sizeof(*b));
    assert_non_null(b);
    assert_int_equal(dkim_body_init(b, c), 0);
    size_t at = 0;
    for (size_t i = 0; i < ncuts; i++) {
        dkim_body_feed(b, in + at, cuts[i] - at);
        at = cuts[i];
    }
    dkim_body_feed(b, in + at, len - at);
    unsigned char h[32];
    assert_int_equal(dkim_body_final(b, h), 0);
    dkim_body_free(b);
    free(b);
    b64_of(h, 32, out);
}

static void body_b64_bytes(enum dkim_canon c, const char *in, size_t len, char out[64])
{
    struct dkim_body *b = malloc(sizeof(*b));
    assert_non_null(b);
    assert_int_equal(dkim_body_init(b, c), 0);
    for (size_t i = 0; i < len; i++) {
        dkim_body_feed(b, in + i, 1);
        dkim_body_feed(b, in + i, 0);
    }
    unsigned char h[32];
    assert_int_equal(dkim_body_final(b, h), 0);
    dkim_body_free(b);
    free(b);
    b64_of(h, 32, out);
}

/* Every way to cut `in` into 1, 2 and 3 pieces, and 1-byte pieces: all
 * must hash like the expected canonical form. */
static void check_body_splits(enum dkim_canon c, const char *in, size_t len, const char *want, size_t wlen)
{
    char exp[64], got[64];
    sha_b64(want, wlen, exp);
    body_b64(c, in, len, NULL, 0, got);
    if (strcmp(got, exp) != 0)
        fail_msg("canon %d of \"%.*s\": one piece differs", (int)c, (int)len, in);
    body_b64_bytes(c, in, len, got);
    assert_string_equal(got, exp);
    for (size_t i = 0; i <= len; i++) {
        size_t cut1[1] = {i};
        body_b64(c, in, len, cut1, 1, got);
        if (strcmp(got, exp) != 0)
            fail_msg("canon %d of \"%.*s\": split at %zu differs", (int)c, (int)len, in, i);
        for (size_t j = i; j <= len; j++) {
            size_t cut2[2] = {i, j};
            body_b64(c, in, len, cut2, 2, got);
            if (strcmp(got, exp) != 0)
                fail_msg("canon %d of \"%.*s\": splits at %zu,%zu differ", (int)c, (int)len, in, i, j);
        }
    }
}

/* ---- header canonicalization (RFC 6376 3.4.5) ----------------------------- */

static const char rfc_hdr[] = "A: X\r\n"
                              "B : Y\t\r\n"
                              "\tZ  \r\n"
                              "\r\n";
static const char rfc_body[] = " C \r\n"
                               "D \t E\r\n"
                               "\r\n"
                               "\r\n";

static void canon1(enum dkim_canon c, const char *field, const char *want)
{
    struct strbuf out;
    sb_init(&out);
    dkim_canon_header(c, field, strlen(field), &out);
    assert_non_null(out.s);
    assert_string_equal(out.s, want);
    sb_free(&out);
}

static void test_canon_header_rfc(void **state)
{
    (void)state;
    struct dkim_fields f;
    dkim_fields_init(&f);
    assert_int_equal(dkim_fields_parse(&f, S(rfc_hdr)), 0);
    assert_int_equal(f.n, 2);
    assert_int_equal(f.v[0].len, 4);
    assert_int_equal(f.v[0].name_len, 1);
    assert_int_equal(f.v[1].len, strlen("B : Y\t\r\n\tZ  "));
    assert_int_equal(f.v[1].name_len, 1);

    const char *const names[] = {"a", "b"};
    size_t n;
    struct dkim_hsel *sel = dkim_select(f.v, f.n, names, 2, NULL, 0, &n);
    assert_int_equal(n, 2);
    struct strbuf out;
    sb_init(&out);
    dkim_canon_selected(DKIM_CANON_RELAXED, sel, n, &out);
    assert_string_equal(out.s, "a:X\r\nb:Y Z\r\n");
    sb_reset(&out);
    dkim_canon_selected(DKIM_CANON_SIMPLE, sel, n, &out);
    assert_string_equal(out.s, "A: X\r\nB : Y\t\r\n\tZ  \r\n");
    sb_free(&out);
    free(sel);
    dkim_fields_free(&f);

    /* one field at a time, more shapes */
    canon1(DKIM_CANON_RELAXED, "Subject:   hello \t  world  ", "subject:hello world");
    canon1(DKIM_CANON_RELAXED, "X-Tab:\tv", "x-tab:v");
    canon1(DKIM_CANON_RELAXED, "MIXED-Case :a\r\n b\r\n\tc", "mixed-case:a b c");
    canon1(DKIM_CANON_RELAXED, "Empty:", "empty:");
    canon1(DKIM_CANON_RELAXED, "Empty2:  \r\n ", "empty2:");
    canon1(DKIM_CANON_RELAXED, "To: a@b,\r\n  c@d", "to:a@b, c@d");
    canon1(DKIM_CANON_SIMPLE, "MIXED-Case :a\r\n b  ", "MIXED-Case :a\r\n b  ");
}

static void test_fields_parse(void **state)
{
    (void)state;
    struct dkim_fields f;
    dkim_fields_init(&f);
    /* continuation, obs WSP before ':', stop at the blank line */
    const char h[] = "From: a@b\r\nSubject: x\r\n y\r\nX-Obs \t: v\r\n\r\nBody: not a field\r\n";
    assert_int_equal(dkim_fields_parse(&f, S(h)), 0);
    assert_int_equal(f.n, 3);
    assert_true(dkim_field_is(&f.v[0], "FROM"));
    assert_true(dkim_field_is(&f.v[1], "subject"));
    assert_int_equal(f.v[1].len, strlen("Subject: x\r\n y"));
    assert_true(dkim_field_is(&f.v[2], "x-obs"));
    assert_false(dkim_field_is(&f.v[2], "x-ob"));
    /* appending a second section (prepend + message) */
    assert_int_equal(dkim_fields_parse(&f, S("Date: now\r\n")), 0);
    assert_int_equal(f.n, 4);
    /* no final CRLF */
    assert_int_equal(dkim_fields_parse(&f, S("To: c@d")), 0);
    assert_int_equal(f.n, 5);
    assert_int_equal(f.v[4].len, 7);
    dkim_fields_free(&f);

    dkim_fields_init(&f);
    assert_int_equal(dkim_fields_parse(&f, S(" leading continuation\r\n")), -1);
    assert_int_equal(dkim_fields_parse(&f, S("From: a\r\nno colon here\r\nTo: b\r\n")), -1);
    assert_int_equal(f.n, 1);
    assert_int_equal(dkim_fields_parse(&f, S(": empty name\r\n")), -1);
    assert_int_equal(dkim_fields_parse(&f, S("Two words: x\r\n")), -1);
    dkim_fields_free(&f);
}

/* ---- body canonicalization ------------------------------------------------ */

static void test_canon_body_rfc(void **state)
{
    (void)state;
    char exp[64], got[64];
    sha_b64(S(" C\r\nD E\r\n"), exp);
    body_b64(DKIM_CANON_RELAXED, S(rfc_body), NULL, 0, got);
    assert_string_equal(got, exp);
    sha_b64(S(" C \r\nD \t E\r\n"), exp);
    body_b64(DKIM_CANON_SIMPLE, S(rfc_body), NULL, 0, got);
    assert_string_equal(got, exp);
    check_body_splits(DKIM_CANON_RELAXED, S(rfc_body), S(" C\r\nD E\r\n"));
    check_body_splits(DKIM_CANON_SIMPLE, S(rfc_body), S(" C \r\nD \t E\r\n"));
}

static void test_body_empty(void **state)
{
    (void)state;
    char got[64];
    body_b64(DKIM_CANON_SIMPLE, "", 0, NULL, 0, got);
    assert_string_equal(got, "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY=");
    body_b64(DKIM_CANON_RELAXED, "", 0, NULL, 0, got);
    assert_string_equal(got, "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
    /* only empty lines: the same */
    body_b64(DKIM_CANON_SIMPLE, S("\r\n\r\n\r\n"), NULL, 0, got);
    assert_string_equal(got, "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY=");
    body_b64(DKIM_CANON_RELAXED, S("\r\n\r\n\r\n"), NULL, 0, got);
    assert_string_equal(got, "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
    /* relaxed: lines of WSP are empty lines too */
    body_b64(DKIM_CANON_RELAXED, S(" \t \r\n  \r\n\t"), NULL, 0, got);
    assert_string_equal(got, "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
}

struct body_case {
    const char *in;
    const char *simple;
    const char *relaxed;
};

static void test_body_splits(void **state)
{
    (void)state;
    static const struct body_case cases[] = {
        {"", "\r\n", ""},
        {"\r\n", "\r\n", ""},
        {"\r\n\r\n\r\n", "\r\n", ""},
        {"abc", "abc\r\n", "abc\r\n"},
        {"abc  ", "abc  \r\n", "abc\r\n"},
        {"a\r\n\r\nb\r\n\r\n", "a\r\n\r\nb\r\n", "a\r\n\r\nb\r\n"},
        {" \t \r\n \r\n", " \t \r\n \r\n", ""},
        {"x \r\n  \r\n\r\ny\t\r\n", "x \r\n  \r\n\r\ny\t\r\n", "x\r\n\r\n\r\ny\r\n"},
        {"a\rb\r\n\r\n", "a\rb\r\n", "a\rb\r\n"},
        {"a \r b\r\n", "a \r b\r\n", "a \r b\r\n"},
        {"abc\r", "abc\r\r\n", "abc\r\r\n"},
        {"abc\r\n\r", "abc\r\n\r\r\n", "abc\r\n\r\r\n"},
        {"\r\n\r\nx", "\r\n\r\nx\r\n", "\r\n\r\nx\r\n"},
        {"a  b\t\tc d \r\n", "a  b\t\tc d \r\n", "a b c d\r\n"},
        {"\r\r\n", "\r\r\n", "\r\r\n"},
        {"a\n", "a\n\r\n", "a\n\r\n"},
        {"one two  three\r\n\r\n \r\nfour\r\n\r\n\r\n", "one two  three\r\n\r\n \r\nfour\r\n",
         "one two three\r\n\r\n\r\nfour\r\n"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        check_body_splits(DKIM_CANON_SIMPLE, cases[i].in, strlen(cases[i].in), cases[i].simple,
                          strlen(cases[i].simple));
        check_body_splits(DKIM_CANON_RELAXED, cases[i].in, strlen(cases[i].in), cases[i].relaxed,
                          strlen(cases[i].relaxed));
    }
}

/* A naive reference canonicalizer, straight from RFC 6376 3.4.3/3.4.4. */
static void ref_body(enum dkim_canon c, const char *in, size_t len, struct strbuf *out)
{
    if (c == DKIM_CANON_SIMPLE) {
        while (len >= 2 && in[len - 2] == '\r' && in[len - 1] == '\n')
            len -= 2;
        sb_append(out, in, len);
        sb_append(out, "\r\n", 2);
        return;
    }
    /* relaxed: per line, WSP runs -> SP, trailing WSP removed; then the
     * trailing empty lines removed. */
    struct strbuf lines;
    sb_init(&lines);
    size_t nonempty_end = 0; /* lines.len after the last non-empty line */
    size_t i = 0;
    while (i < len) {
        size_t e = i;
        while (e < len && !(in[e] == '\r' && e + 1 < len && in[e + 1] == '\n'))
            e++;
        size_t start = lines.len;
        for (size_t k = i; k < e; k++) {
            if (in[k] == ' ' || in[k] == '\t') {
                if (lines.len == start || lines.s[lines.len - 1] != ' ')
                    sb_append(&lines, " ", 1);
            } else {
                sb_append(&lines, in + k, 1);
            }
        }
        while (lines.len > start && lines.s[lines.len - 1] == ' ')
            lines.len--;
        int empty = lines.len == start;
        sb_append(&lines, "\r\n", 2);
        if (!empty)
            nonempty_end = lines.len;
        i = e < len ? e + 2 : len;
    }
    sb_append(out, lines.s ? lines.s : "", nonempty_end);
    sb_free(&lines);
}

static void test_body_random(void **state)
{
    (void)state;
    /* short bodies dense in WSP/CR/LF, then longer ones that look more
     * like text (long runs, mostly single spaces) */
    static const char dense[] = {'a', 'b', ' ', '\t', '\r', '\n', '\r', '\n'};
    static const char text[] = "abcdefghijklmnopqrstuvwxyz        \t\r\n";
    uint32_t seed = 12345;
    char in[700];
    for (int round = 0; round < 4000; round++) {
        int big = round >= 3000;
        const char *alpha = big ? text : dense;
        size_t na = big ? sizeof(text) - 1 : sizeof(dense);
        seed = seed * 1103515245u + 12345u;
        size_t len = (seed >> 16) % (big ? sizeof(in) : 48);
        for (size_t i = 0; i < len; i++) {
            seed = seed * 1103515245u + 12345u;
            in[i] = alpha[(seed >> 16) % na];
            if (big && in[i] == '\r' && i + 1 < len)
                in[++i] = '\n';
        }
        for (int c = 0; c < 2; c++) {
            struct strbuf want;
            sb_init(&want);
            ref_body((enum dkim_canon)c, in, len, &want);
            char exp[64], got[64];
            sha_b64(want.s ? want.s : "", want.len, exp);
            seed = seed * 1103515245u + 12345u;
            size_t cuts[3];
            size_t nc = 0, at = 0;
            for (int k = 0; k < 3 && len > 0; k++) {
                at += (seed >> (8 * k)) % (len - at + 1);
                cuts[nc++] = at;
            }
            body_b64((enum dkim_canon)c, in, len, cuts, nc, got);
            if (strcmp(got, exp) != 0)
                fail_msg("round %d canon %d len %zu: mismatch", round, c, len);
            body_b64_bytes((enum dkim_canon)c, in, len, got);
            assert_string_equal(got, exp);
            sb_free(&want);
        }
    }
}

/* Larger than the internal buffer; more held blank lines than one block. */
static void test_body_large(void **state)
{
    (void)state;
    struct strbuf in, rel, sim;
    sb_init(&in);
    sb_init(&rel);
    sb_init(&sim);
    for (int i = 0; i < 3000; i++) {
        sb_printf(&in, "Line %04d  with\t\tspaces  \r\n", i);
        sb_printf(&rel, "Line %04d with spaces\r\n", i);
    }
    for (int i = 0; i < 300; i++) {
        sb_puts(&in, "\r\n");
        sb_puts(&rel, "\r\n");
    }
    sb_puts(&in, "end\r\n");
    sb_puts(&rel, "end\r\n");
    sb_append(&sim, in.s, in.len);
    for (int i = 0; i < 500; i++)
        sb_puts(&in, "\r\n");
    /* one 40 KiB run of content in a single line (direct update path) */
    char exp[64], got[64];
    sha_b64(rel.s, rel.len, exp);
    body_b64(DKIM_CANON_RELAXED, in.s, in.len, NULL, 0, got);
    assert_string_equal(got, exp);
    size_t cuts[3] = {1, in.len / 2 + 1, in.len - 3};
    body_b64(DKIM_CANON_RELAXED, in.s, in.len, cuts, 3, got);
    assert_string_equal(got, exp);
    sha_b64(sim.s, sim.len, exp);
    body_b64(DKIM_CANON_SIMPLE, in.s, in.len, NULL, 0, got);
    assert_string_equal(got, exp);
    body_b64(DKIM_CANON_SIMPLE, in.s, in.len, cuts, 3, got);
    assert_string_equal(got, exp);
    body_b64_bytes(DKIM_CANON_SIMPLE, in.s, in.len, got);
    assert_string_equal(got, exp);

    sb_reset(&in);
    for (int i = 0; i < 40000; i++)
        sb_append(&in, "x", 1);
    sb_puts(&in, "\r\n");
    sha_b64(in.s, in.len, exp);
    body_b64(DKIM_CANON_RELAXED, in.s, in.len, NULL, 0, got);
    assert_string_equal(got, exp);
    body_b64(DKIM_CANON_SIMPLE, in.s, in.len, NULL, 0, got);
    assert_string_equal(got, exp);
    sb_free(&in);
    sb_free(&rel);
    sb_free(&sim);
}

/* ---- header selection ----------------------------------------------------- */

static void test_select(void **state)
{
    (void)state;
    const char h[] = "Received: top\r\n"
                     "Received: bottom\r\n"
                     "FROM: a@b\r\n"
                     "To: one\r\n"
                     "Subject: s\r\n"
                     "to: two\r\n"
                     "X-Other: o\r\n";
    struct dkim_fields f;
    dkim_fields_init(&f);
    assert_int_equal(dkim_fields_parse(&f, S(h)), 0);
    assert_int_equal(f.n, 7);
    const char *const names[] = {"from", "to", "subject", "received", "cc", "To"};
    const char *const over[] = {"from", "subject", "x-extra", "from"};
    size_t n;
    struct dkim_hsel *sel = dkim_select(f.v, f.n, names, ARRAY_LEN(names), over, ARRAY_LEN(over), &n);
    /* from, from(null), to(two), to(one), subject, subject(null),
     * received(bottom), received(top), x-extra(null); cc absent */
    assert_int_equal(n, 9);
    const char *want_name[] = {"from", "from", "to", "to", "subject", "subject", "received", "received", "x-extra"};
    const struct dkim_field *want_field[] = {&f.v[2], NULL, &f.v[5], &f.v[3], &f.v[4],
                                             NULL,    &f.v[1], &f.v[0], NULL};
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(sel[i].name, want_name[i]);
        assert_ptr_equal(sel[i].field, want_field[i]);
    }
    struct strbuf out;
    sb_init(&out);
    dkim_canon_selected(DKIM_CANON_RELAXED, sel, n, &out);
    assert_string_equal(out.s, "from:a@b\r\nto:two\r\nto:one\r\nsubject:s\r\nreceived:bottom\r\nreceived:top\r\n");
    sb_free(&out);
    free(sel);

    /* without oversigning, nothing for absent names */
    sel = dkim_select(f.v, f.n, names, 3, NULL, 0, &n);
    assert_int_equal(n, 4);
    free(sel);
    dkim_fields_free(&f);
}

/* ---- RFC 8463 appendix A --------------------------------------------------- */

static const char rfc8463_msg[] = "From: Joe SixPack <joe@football.example.com>\r\n"
                                  "To: Suzie Q <suzie@shopping.example.net>\r\n"
                                  "Subject: Is dinner ready?\r\n"
                                  "Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
                                  "Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
                                  "\r\n"
                                  "Hi.\r\n"
                                  "\r\n"
                                  "We lost the game.  Are you hungry yet?\r\n"
                                  "\r\n"
                                  "Joe.\r\n";

/* The RFC's DKIM-Signature fields with the b= value removed. */
static const char rfc8463_ed_tmpl[] = "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n"
                                      " d=football.example.com; i=@football.example.com;\r\n"
                                      " q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n"
                                      " subject : date : message-id : from : subject : date;\r\n"
                                      " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
                                      " b=";
static const char rfc8463_ed_b[] =
    "/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11BusFa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==";
static const char rfc8463_rsa_tmpl[] = "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;\r\n"
                                       " d=football.example.com; i=@football.example.com;\r\n"
                                       " q=dns/txt; s=test; t=1528637909; h=from : to : subject :\r\n"
                                       " date : message-id : from : subject : date;\r\n"
                                       " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
                                       " b=";
static const char rfc8463_rsa_b[] = "F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3"
                                    "DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz"
                                    "dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=";
static const char rfc8463_rsa_key[] = "-----BEGIN RSA PRIVATE KEY-----\n"
                                      "MIICXQIBAAKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQi\n"
                                      "Y/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqM\n"
                                      "KrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB\n"
                                      "AoGAH0cxOhFZDgzXWhDhnAJDw5s4roOXN4OhjiXa8W7Y3rhX3FJqmJSPuC8N9vQm\n"
                                      "6SVbaLAE4SG5mLMueHlh4KXffEpuLEiNp9Ss3O4YfLiQpbRqE7Tm5SxKjvvQoZZe\n"
                                      "zHorimOaChRL2it47iuWxzxSiRMv4c+j70GiWdxXnxe4UoECQQDzJB/0U58W7RZy\n"
                                      "6enGVj2kWF732CoWFZWzi1FicudrBFoy63QwcowpoCazKtvZGMNlPWnC7x/6o8Gc\n"
                                      "uSe0ga2xAkEA8C7PipPm1/1fTRQvj1o/dDmZp243044ZNyxjg+/OPN0oWCbXIGxy\n"
                                      "WvmZbXriOWoSALJTjExEgraHEgnXssuk7QJBALl5ICsYMu6hMxO73gnfNayNgPxd\n"
                                      "WFV6Z7ULnKyV7HSVYF0hgYOHjeYe9gaMtiJYoo0zGN+L3AAtNP9huqkWlzECQE1a\n"
                                      "licIeVlo1e+qJ6Mgqr0Q7Aa7falZ448ccbSFYEPD6oFxiOl9Y9se9iYHZKKfIcst\n"
                                      "o7DUw1/hz2Ck4N5JrgUCQQCyKveNvjzkkd8HjYs0SwM0fPjK16//5qDZ2UiDGnOe\n"
                                      "uEzxBDAr518Z8VFbR41in3W4Y3yCDgQlLlcETrS+zYcL\n"
                                      "-----END RSA PRIVATE KEY-----\n";

static void rfc8463_check(EVP_PKEY *key, enum dkim_alg alg, const char *tmpl, const char *want_canon,
                          const char *want_b)
{
    const char *body = strstr(rfc8463_msg, "\r\n\r\n") + 4;
    struct dkim_fields f;
    dkim_fields_init(&f);
    assert_int_equal(dkim_fields_parse(&f, rfc8463_msg, (size_t)(body - rfc8463_msg)), 0);
    assert_int_equal(f.n, 5);
    const char *const names[] = {"from", "to", "subject", "date", "message-id"};
    const char *const over[] = {"from", "subject", "date"};
    size_t n;
    struct dkim_hsel *sel = dkim_select(f.v, f.n, names, 5, over, 3, &n);
    assert_int_equal(n, 8);
    struct strbuf hdrs, sig, b64;
    sb_init(&hdrs);
    sb_init(&sig);
    sb_init(&b64);
    dkim_canon_selected(DKIM_CANON_RELAXED, sel, n, &hdrs);
    dkim_canon_header(DKIM_CANON_RELAXED, tmpl, strlen(tmpl), &sig);
    assert_string_equal(sig.s, want_canon);
    char err[256];
    /* Ed25519 with the key prepared once (as config_load does) */
    unsigned char sk[DKIM_ED25519_SK_LEN];
    const unsigned char *ed_sk = NULL;
    if (alg == DKIM_ALG_ED25519_SHA256) {
        assert_int_equal(dkim_ed25519_secret(key, sk), 0);
        ed_sk = sk;
    }
    assert_int_equal(dkim_sig_compute(key, ed_sk, alg, hdrs.s, hdrs.len, sig.s, sig.len, &b64, err, sizeof(err)), 0);
    assert_string_equal(b64.s, want_b);

    char got[64];
    body_b64(DKIM_CANON_RELAXED, body, strlen(body), NULL, 0, got);
    assert_string_equal(got, "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=");
    body_b64_bytes(DKIM_CANON_RELAXED, body, strlen(body), got);
    assert_string_equal(got, "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=");
    sb_free(&hdrs);
    sb_free(&sig);
    sb_free(&b64);
    free(sel);
    dkim_fields_free(&f);
}

static void test_rfc8463_ed25519(void **state)
{
    (void)state;
    /* RFC 8463 A.2: the private key (seed) and its public key */
    unsigned char seed[64];
    assert_int_equal(EVP_DecodeBlock(seed, (const unsigned char *)"nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=", 44),
                     33);
    EVP_PKEY *k = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, 32);
    assert_non_null(k);
    unsigned char pub[32];
    size_t publen = sizeof(pub);
    assert_int_equal(EVP_PKEY_get_raw_public_key(k, pub, &publen), 1);
    char pb[64];
    b64_of(pub, 32, pb);
    assert_string_equal(pb, "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=");
    rfc8463_check(k, DKIM_ALG_ED25519_SHA256, rfc8463_ed_tmpl,
                  "dkim-signature:v=1; a=ed25519-sha256; c=relaxed/relaxed; d=football.example.com; "
                  "i=@football.example.com; q=dns/txt; s=brisbane; t=1528637909; h=from : to : subject : date : "
                  "message-id : from : subject : date; bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=; b=",
                  rfc8463_ed_b);
    EVP_PKEY_free(k);
}

/* RSASSA-PKCS1-v1_5 is deterministic too: the RFC's RSA key (A.1, 1024
 * bits, fine for this check) gives its b= exactly. */
static void test_rfc8463_rsa(void **state)
{
    (void)state;
    BIO *bio = BIO_new_mem_buf(rfc8463_rsa_key, -1);
    EVP_PKEY *k = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    assert_non_null(k);
    rfc8463_check(k, DKIM_ALG_RSA_SHA256, rfc8463_rsa_tmpl,
                  "dkim-signature:v=1; a=rsa-sha256; c=relaxed/relaxed; d=football.example.com; "
                  "i=@football.example.com; q=dns/txt; s=test; t=1528637909; h=from : to : subject : date : "
                  "message-id : from : subject : date; bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=; b=",
                  rfc8463_rsa_b);
    EVP_PKEY_free(k);
}

/* ---- the field: layout, folding, signatures ------------------------------- */

struct keys {
    EVP_PKEY *rsa;
    EVP_PKEY *ed;
    EVP_PKEY *rsa_pub; /* public half only: cannot sign */
};

static EVP_PKEY *public_only(EVP_PKEY *k)
{
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(k, &der);
    assert_true(n > 0);
    const unsigned char *p = der;
    EVP_PKEY *pub = d2i_PUBKEY(NULL, &p, n);
    OPENSSL_free(der);
    assert_non_null(pub);
    return pub;
}

static int group_setup(void **state)
{
    struct keys *k = calloc(1, sizeof(*k));
    if (!k)
        return -1;
    k->rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    k->ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    if (!k->rsa || !k->ed)
        return -1;
    k->rsa_pub = public_only(k->rsa);
    log_set_level(LOG_LVL_DEBUG);
    *state = k;
    return 0;
}

static int group_teardown(void **state)
{
    struct keys *k = *state;
    EVP_PKEY_free(k->rsa);
    EVP_PKEY_free(k->ed);
    EVP_PKEY_free(k->rsa_pub);
    free(k);
    return 0;
}

/* Every line of a CRLF-terminated field: <= 78 columns, continuation
 * lines start with TAB, ends with exactly one CRLF. */
static void check_folding(const char *field, size_t len)
{
    assert_true(len >= 2);
    assert_memory_equal(field + len - 2, "\r\n", 2);
    size_t start = 0, lines = 0;
    for (size_t i = 0; i + 1 < len; i++) {
        if (field[i] == '\r') {
            assert_int_equal(field[i + 1], '\n');
            assert_true(i - start <= 78);
            lines++;
            start = i + 2;
            if (start < len)
                assert_int_equal(field[start], '\t');
            i++;
        } else {
            assert_int_not_equal(field[i], '\n');
        }
    }
    assert_true(lines >= 1);
}

/* The value of tag `name` in an unfolded field (whitespace removed). */
static char *tag_value(const char *field, size_t len, const char *name)
{
    struct strbuf u;
    sb_init(&u);
    const char *colon = memchr(field, ':', len);
    assert_non_null(colon);
    for (const char *p = colon + 1; p < field + len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
            sb_append(&u, p, 1);
    char *res = NULL;
    size_t nl = strlen(name);
    for (char *t = u.s; t && *t;) {
        char *semi = strchr(t, ';');
        size_t tl = semi ? (size_t)(semi - t) : strlen(t);
        if (tl > nl && strncmp(t, name, nl) == 0 && t[nl] == '=') {
            res = strndup(t + nl + 1, tl - nl - 1);
            break;
        }
        t = semi ? semi + 1 : t + tl;
    }
    sb_free(&u);
    return res;
}

/* The field (CRLF-terminated) with its b= value removed and no final CRLF:
 * the text a verifier hashes (RFC 6376 3.7). */
static void strip_b(const char *field, size_t len, struct strbuf *out)
{
    len -= 2;
    const char *b = NULL;
    for (size_t i = 1; i + 1 < len; i++)
        if (field[i] == 'b' && field[i + 1] == '=' &&
            (field[i - 1] == ';' || field[i - 1] == ' ' || field[i - 1] == '\t'))
            b = field + i + 2;
    assert_non_null(b);
    const char *end = memchr(b, ';', len - (size_t)(b - field));
    sb_append(out, field, (size_t)(b - field));
    if (end)
        sb_append(out, end, len - (size_t)(end - field));
}

/* Verifies a produced field over hdrs (canonical selected fields). */
static int verify(EVP_PKEY *key, enum dkim_alg alg, enum dkim_canon ch, const char *hdrs, size_t hlen,
                  const char *field, size_t flen)
{
    struct strbuf data, t, c;
    sb_init(&data);
    sb_init(&t);
    sb_init(&c);
    strip_b(field, flen, &t);
    dkim_canon_header(ch, t.s, t.len, &c);
    sb_append(&data, hdrs, hlen);
    sb_append(&data, c.s, c.len);
    char *b = tag_value(field, flen, "b");
    assert_non_null(b);
    unsigned char sig[1024];
    int siglen = EVP_DecodeBlock(sig, (unsigned char *)b, (int)strlen(b));
    assert_true(siglen > 0);
    size_t pad = strlen(b) >= 2 && b[strlen(b) - 2] == '=' ? 2 : (b[strlen(b) - 1] == '=' ? 1 : 0);
    siglen -= (int)pad;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok;
    if (alg == DKIM_ALG_RSA_SHA256) {
        ok = EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, key) == 1 &&
             EVP_DigestVerify(ctx, sig, (size_t)siglen, (unsigned char *)data.s, data.len) == 1;
    } else {
        unsigned char d[32];
        unsigned int dl = 0;
        ok = EVP_Digest(data.s, data.len, d, &dl, EVP_sha256(), NULL) == 1 &&
             EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, key) == 1 &&
             EVP_DigestVerify(ctx, sig, (size_t)siglen, d, dl) == 1;
    }
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    free(b);
    sb_free(&data);
    sb_free(&t);
    sb_free(&c);
    return ok;
}

static void test_template_layout(void **state)
{
    (void)state;
    struct dkim_field from = {"From: a@example.com", 19, 4};
    struct dkim_hsel h[] = {{"from", &from}, {"from", NULL}, {"to", NULL},         {"subject", NULL},
                            {"date", NULL},  {"message-id", NULL}};
    unsigned char bh[32];
    unsigned int l;
    EVP_Digest("", 0, bh, &l, EVP_sha256(), NULL);
    struct dkim_sig_params p = {.alg = DKIM_ALG_RSA_SHA256,
                                .canon_header = DKIM_CANON_RELAXED,
                                .canon_body = DKIM_CANON_RELAXED,
                                .domain = "example.com",
                                .selector = "sel1",
                                .timestamp = 1700000000,
                                .h = h,
                                .nh = 6,
                                .bh = bh};
    struct strbuf t;
    sb_init(&t);
    dkim_sig_template(&p, &t);
    assert_string_equal(t.s, "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=sel1;\r\n"
                             "\tt=1700000000; h=from:from:to:subject:date:message-id;\r\n"
                             "\tbh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
                             "\tb=");
    /* b= fills each line to column 78 */
    char b64[345];
    for (int i = 0; i < 344; i++)
        b64[i] = (char)('A' + i % 26);
    b64[344] = '\0';
    dkim_sig_add_b(&t, b64);
    check_folding(t.s, t.len);
    const char *bl = strstr(t.s, "\tb=");
    assert_non_null(bl);
    assert_memory_equal(bl + 3, b64, 75);
    assert_memory_equal(bl + 78, "\r\n\t", 3);
    assert_memory_equal(bl + 81, b64 + 75, 77);
    char *bv = tag_value(t.s, t.len, "b");
    assert_string_equal(bv, b64);
    free(bv);

    /* a long h= list folds after a ':', ed25519 and simple/simple */
    static const char *const many[] = {"from", "to", "cc", "subject", "date", "message-id", "reply-to",
                                       "mime-version", "content-type", "content-transfer-encoding",
                                       "in-reply-to", "references", "list-id", "list-unsubscribe"};
    struct dkim_hsel hm[ARRAY_LEN(many)];
    for (size_t i = 0; i < ARRAY_LEN(many); i++)
        hm[i] = (struct dkim_hsel){many[i], NULL};
    p.h = hm;
    p.nh = ARRAY_LEN(many);
    p.alg = DKIM_ALG_ED25519_SHA256;
    p.canon_header = p.canon_body = DKIM_CANON_SIMPLE;
    sb_reset(&t);
    dkim_sig_template(&p, &t);
    assert_string_equal(t.s, "DKIM-Signature: v=1; a=ed25519-sha256; c=simple/simple; d=example.com; s=sel1;\r\n"
                             "\tt=1700000000; h=from:to:cc:subject:date:message-id:reply-to:mime-version:\r\n"
                             "\tcontent-type:content-transfer-encoding:in-reply-to:references:list-id:\r\n"
                             "\tlist-unsubscribe; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
                             "\tb=");
    sb_puts(&t, "x\r\n");
    check_folding(t.s, t.len);
    t.len -= 3;
    t.s[t.len] = '\0';
    char *hv = tag_value(t.s, t.len, "h");
    assert_string_equal(hv, "from:to:cc:subject:date:message-id:reply-to:mime-version:content-type:"
                            "content-transfer-encoding:in-reply-to:references:list-id:list-unsubscribe");
    free(hv);
    sb_free(&t);
}

static void sign_and_verify(EVP_PKEY *key, enum dkim_alg alg, enum dkim_canon ch)
{
    const char h[] = "From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject:  Hi \r\n\tthere\r\n";
    struct dkim_fields f;
    dkim_fields_init(&f);
    assert_int_equal(dkim_fields_parse(&f, S(h)), 0);
    const char *const names[] = {"from", "to", "subject", "date"};
    const char *const over[] = {"from"};
    size_t n;
    struct dkim_hsel *sel = dkim_select(f.v, f.n, names, 4, over, 1, &n);
    struct strbuf hdrs, out;
    sb_init(&hdrs);
    sb_init(&out);
    dkim_canon_selected(ch, sel, n, &hdrs);
    if (ch == DKIM_CANON_RELAXED)
        assert_string_equal(hdrs.s, "from:Alice <alice@example.com>\r\nto:bob@example.net\r\nsubject:Hi there\r\n");
    else
        assert_string_equal(hdrs.s, h);
    unsigned char bh[32] = {1, 2, 3};
    struct dkim_sig_params p = {.alg = alg,
                                .canon_header = ch,
                                .canon_body = DKIM_CANON_RELAXED,
                                .domain = "example.com",
                                .selector = "s2024",
                                .timestamp = 1712345678,
                                .h = sel,
                                .nh = n,
                                .bh = bh};
    char err[256];
    sb_puts(&out, "X-Before: kept\r\n");
    assert_int_equal(dkim_sign(&p, key, NULL, hdrs.s, hdrs.len, &out, err, sizeof(err)), 0);
    const char *field = out.s + strlen("X-Before: kept\r\n");
    size_t flen = out.len - strlen("X-Before: kept\r\n");
    check_folding(field, flen);
    char *v;
    assert_string_equal(v = tag_value(field, flen, "h"), "from:from:to:subject");
    free(v);
    assert_string_equal(v = tag_value(field, flen, "a"), alg == DKIM_ALG_RSA_SHA256 ? "rsa-sha256" : "ed25519-sha256");
    free(v);
    assert_string_equal(v = tag_value(field, flen, "t"), "1712345678");
    free(v);
    assert_true(verify(key, alg, ch, hdrs.s, hdrs.len, field, flen));
    /* a changed header breaks it */
    hdrs.s[10] ^= 1;
    assert_false(verify(key, alg, ch, hdrs.s, hdrs.len, field, flen));
    sb_free(&hdrs);
    sb_free(&out);
    free(sel);
    dkim_fields_free(&f);
}

static void test_sign_verify(void **state)
{
    struct keys *k = *state;
    sign_and_verify(k->rsa, DKIM_ALG_RSA_SHA256, DKIM_CANON_RELAXED);
    sign_and_verify(k->rsa, DKIM_ALG_RSA_SHA256, DKIM_CANON_SIMPLE);
    sign_and_verify(k->ed, DKIM_ALG_ED25519_SHA256, DKIM_CANON_RELAXED);
    sign_and_verify(k->ed, DKIM_ALG_ED25519_SHA256, DKIM_CANON_SIMPLE);

    /* keys that cannot sign */
    struct strbuf b64;
    sb_init(&b64);
    char err[256];
    assert_int_equal(dkim_sig_compute(k->rsa_pub, NULL, DKIM_ALG_RSA_SHA256, "a", 1, "b", 1, &b64, err, sizeof(err)), -1);
    assert_true(strncmp(err, "sign_failed", 11) == 0);
    assert_int_equal(ERR_peek_error(), 0);
    assert_int_equal(dkim_sig_compute(k->ed, NULL, DKIM_ALG_RSA_SHA256, "a", 1, "b", 1, &b64, err, sizeof(err)), -1);
    assert_string_equal(err, "key_type");
    assert_int_equal(dkim_sig_compute(NULL, NULL, DKIM_ALG_RSA_SHA256, "a", 1, "b", 1, &b64, err, sizeof(err)), -1);
    assert_string_equal(err, "no_key");
    assert_int_equal(b64.len, 0);
    sb_free(&b64);
}

/* libsodium signs Ed25519 (dkim_sig_compute): the same bytes as OpenSSL's
 * EVP_DigestSign over the SHA-256 of the data, with the prepared key, with
 * the key derived per call, and with the prepared key alone. */
static void test_ed25519_libsodium(void **state)
{
    struct keys *k = *state;
    unsigned char sk[DKIM_ED25519_SK_LEN];
    assert_int_equal(dkim_ed25519_secret(k->ed, sk), 0);
    unsigned char bad[DKIM_ED25519_SK_LEN];
    memset(bad, 0xa5, sizeof(bad));
    assert_int_equal(dkim_ed25519_secret(k->rsa, bad), -1);
    for (size_t i = 0; i < sizeof(bad); i++)
        assert_int_equal(bad[i], 0); /* wiped on failure */
    EVP_PKEY *edpub = public_only(k->ed);
    assert_int_equal(dkim_ed25519_secret(edpub, bad), -1);
    EVP_PKEY_free(edpub);
    assert_int_equal(ERR_peek_error(), 0);

    char hdrs[300], sigf[200];
    for (int round = 0; round < 32; round++) {
        size_t hlen = (size_t)(round * 9) % sizeof(hdrs), slen = (size_t)(round * 5) % sizeof(sigf);
        for (size_t i = 0; i < hlen; i++)
            hdrs[i] = (char)(' ' + (i * 7 + (size_t)round) % 90);
        for (size_t i = 0; i < slen; i++)
            sigf[i] = (char)(' ' + (i * 3 + (size_t)round * 11) % 90);
        unsigned char d[32], want[64];
        unsigned int dlen = 0;
        size_t wlen = sizeof(want);
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        assert_non_null(ctx);
        assert_int_equal(EVP_DigestInit_ex(ctx, EVP_sha256(), NULL), 1);
        assert_int_equal(EVP_DigestUpdate(ctx, hdrs, hlen), 1);
        assert_int_equal(EVP_DigestUpdate(ctx, sigf, slen), 1);
        assert_int_equal(EVP_DigestFinal_ex(ctx, d, &dlen), 1);
        assert_int_equal(EVP_MD_CTX_reset(ctx), 1);
        assert_int_equal(EVP_DigestSignInit(ctx, NULL, NULL, NULL, k->ed), 1);
        assert_int_equal(EVP_DigestSign(ctx, want, &wlen, d, dlen), 1);
        EVP_MD_CTX_free(ctx);
        char wantb[100];
        b64_encode(want, wlen, wantb, sizeof(wantb));

        char err[256];
        EVP_PKEY *keys[3] = {k->ed, k->ed, NULL};
        const unsigned char *sks[3] = {sk, NULL, sk};
        for (int j = 0; j < 3; j++) {
            struct strbuf b64;
            sb_init(&b64);
            assert_int_equal(dkim_sig_compute(keys[j], sks[j], DKIM_ALG_ED25519_SHA256, hdrs, hlen, sigf, slen, &b64,
                                              err, sizeof(err)),
                             0);
            assert_string_equal(b64.s, wantb);
            sb_free(&b64);
        }
    }
    /* neither key form: no key */
    struct strbuf b64;
    sb_init(&b64);
    char err[256];
    assert_int_equal(dkim_sig_compute(NULL, NULL, DKIM_ALG_ED25519_SHA256, "a", 1, "b", 1, &b64, err, sizeof(err)), -1);
    assert_string_equal(err, "no_key");
    sb_free(&b64);
}

/* ---- the hook ------------------------------------------------------------- */

struct hookfx {
    struct config cfg;
    struct dkim_cfg d;
    struct dkim_key_cfg keys[2];
    char *headers[8];
    char *oversign[2];
    struct envelope env;
    struct log_ctx lc;
    struct msg_view v;
};

static void hookfx_init(struct hookfx *x, EVP_PKEY *rsa, EVP_PKEY *ed, enum dkim_canon c, int required)
{
    memset(x, 0, sizeof(*x));
    x->cfg.limits.header_size = 65536;
    x->cfg.hostname = "mx.example.com";
    x->keys[0] = (struct dkim_key_cfg){.selector = "rsa1", .alg = DKIM_ALG_RSA_SHA256, .pkey = rsa};
    x->keys[1] = (struct dkim_key_cfg){.selector = "ed1", .alg = DKIM_ALG_ED25519_SHA256, .pkey = ed};
    if (ed) /* as config_load prepares it */
        assert_int_equal(dkim_ed25519_secret(ed, x->keys[1].ed_sk), 0);
    static const char *const names[] = {"from", "to", "subject", "date", "message-id", "received"};
    for (size_t i = 0; i < ARRAY_LEN(names); i++)
        x->headers[i] = (char *)names[i];
    x->oversign[0] = "from";
    x->d = (struct dkim_cfg){.domain = "example.com",
                             .keys = x->keys,
                             .nkeys = 2,
                             .canon_header = c,
                             .canon_body = c,
                             .headers = x->headers,
                             .nheaders = ARRAY_LEN(names),
                             .oversign = x->oversign,
                             .noversign = 1,
                             .subdomains = 1,
                             .required = required};
    x->cfg.dkim = &x->d;
    x->cfg.ndkim = 1;
    strcpy(x->env.id, "0123456789ABCDEF");
    x->lc.qid = x->env.id;
    x->v = (struct msg_view){.cfg = &x->cfg, .login = "alice", .env = &x->env, .lc = &x->lc};
}

static const char prepend0[] = "Received: from client ([192.0.2.1])\r\n"
                               "\tby mx.example.com (submitd) with ESMTPSA id 0123456789ABCDEF;\r\n"
                               "\tMon, 1 Jan 2024 00:00:00 +0000\r\n"
                               "Message-ID: <0123456789ABCDEF.1@mx.example.com>\r\n";

static const char msg1[] = "From: Alice <alice@mail.example.com>\r\n"
                           "To:   bob@example.net\r\n"
                           "Subject: Hello\r\n"
                           " there\r\n"
                           "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                           "\r\n"
                           "Hello  Bob, \r\n"
                           "\r\n"
                           "bye\r\n"
                           "\r\n"
                           "\r\n";

/* Runs the hook over msg in chunks of `chunk` bytes. Returns end()'s
 * result; prepend starts as prepend0. */
static int run_hook(struct hookfx *x, const char *msg, size_t len, size_t chunk, struct strbuf *prepend, char *reply,
                    size_t rlen)
{
    sb_init(prepend);
    sb_puts(prepend, prepend0);
    void *st = dkim_hook.begin(&x->v);
    for (size_t i = 0; i < len; i += chunk)
        dkim_hook.data(st, msg + i, len - i < chunk ? len - i : chunk);
    reply[0] = '\0';
    int rc = dkim_hook.end(st, &x->v, prepend, reply, rlen);
    if (st)
        dkim_hook.free(st);
    return rc;
}

/* The n-th DKIM-Signature field in prepend (CRLF-terminated). */
static const char *nth_sig(const struct strbuf *p, int n, size_t *len)
{
    const char *s = p->s;
    for (int i = 0; s; i++) {
        s = strstr(s, "DKIM-Signature:");
        if (!s)
            return NULL;
        const char *e = s;
        for (;;) {
            e = strstr(e, "\r\n");
            assert_non_null(e);
            e += 2;
            if (*e != ' ' && *e != '\t')
                break;
        }
        if (i == n) {
            *len = (size_t)(e - s);
            return s;
        }
        s = e;
    }
    return NULL;
}

static void test_hook_end_to_end(void **state)
{
    struct keys *k = *state;
    for (int canon = 0; canon < 2; canon++) {
        for (size_t chunk = 1; chunk <= 300; chunk = chunk * 3 + 1) {
            struct hookfx x;
            hookfx_init(&x, k->rsa, k->ed, (enum dkim_canon)canon, 1);
            struct strbuf pre;
            char reply[600];
            assert_int_equal(run_hook(&x, S(msg1), chunk, &pre, reply, sizeof(reply)), 0);
            assert_string_equal(reply, "");
            /* prepend kept, the two fields appended after it */
            assert_memory_equal(pre.s, prepend0, strlen(prepend0));
            size_t l0 = 0, l1 = 0, l2 = 0;
            const char *s0 = nth_sig(&pre, 0, &l0), *s1 = nth_sig(&pre, 1, &l1);
            assert_non_null(s0);
            assert_non_null(s1);
            assert_null(nth_sig(&pre, 2, &l2));
            assert_ptr_equal(s0, pre.s + strlen(prepend0));
            assert_ptr_equal(s1 + l1, pre.s + pre.len);
            check_folding(s0, l0);
            check_folding(s1, l1);

            /* bh= against an independent hash of the canonical body */
            const char *canon_body = canon ? "Hello Bob,\r\n\r\nbye\r\n" : "Hello  Bob, \r\n\r\nbye\r\n";
            char exp[64];
            sha_b64(canon_body, strlen(canon_body), exp);
            const char *want_c = canon ? "relaxed/relaxed" : "simple/simple";
            const char *want_a[2] = {"rsa-sha256", "ed25519-sha256"};
            const char *want_s[2] = {"rsa1", "ed1"};
            const char *sig[2] = {s0, s1};
            size_t sl[2] = {l0, l1};
            /* the signed fields, written out by hand: From (x2), To,
             * Subject, Date from the message; Message-ID, Received from
             * the prepend */
            const char *hdrs = canon ? "from:Alice <alice@mail.example.com>\r\n"
                                       "to:bob@example.net\r\n"
                                       "subject:Hello there\r\n"
                                       "date:Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                                       "message-id:<0123456789ABCDEF.1@mx.example.com>\r\n"
                                       "received:from client ([192.0.2.1]) by mx.example.com (submitd) with "
                                       "ESMTPSA id 0123456789ABCDEF; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                                     : "From: Alice <alice@mail.example.com>\r\n"
                                       "To:   bob@example.net\r\n"
                                       "Subject: Hello\r\n"
                                       " there\r\n"
                                       "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                                       "Message-ID: <0123456789ABCDEF.1@mx.example.com>\r\n"
                                       "Received: from client ([192.0.2.1])\r\n"
                                       "\tby mx.example.com (submitd) with ESMTPSA id 0123456789ABCDEF;\r\n"
                                       "\tMon, 1 Jan 2024 00:00:00 +0000\r\n";
            EVP_PKEY *keys[2] = {k->rsa, k->ed};
            for (int i = 0; i < 2; i++) {
                char *v;
                assert_string_equal(v = tag_value(sig[i], sl[i], "bh"), exp);
                free(v);
                assert_string_equal(v = tag_value(sig[i], sl[i], "d"), "example.com");
                free(v);
                assert_string_equal(v = tag_value(sig[i], sl[i], "s"), want_s[i]);
                free(v);
                assert_string_equal(v = tag_value(sig[i], sl[i], "a"), want_a[i]);
                free(v);
                assert_string_equal(v = tag_value(sig[i], sl[i], "c"), want_c);
                free(v);
                assert_string_equal(v = tag_value(sig[i], sl[i], "h"), "from:from:to:subject:date:message-id:received");
                free(v);
                assert_string_equal(v = tag_value(sig[i], sl[i], "v"), "1");
                free(v);
                v = tag_value(sig[i], sl[i], "t");
                long long t = atoll(v);
                free(v);
                assert_true(t > 1700000000 && t <= (long long)time(NULL));
                assert_true(verify(keys[i], (enum dkim_alg)(i + 1), (enum dkim_canon)canon, hdrs, strlen(hdrs),
                                   sig[i], sl[i]));
            }
            sb_free(&pre);
        }
    }
}

/* A message that is all header (no blank line): body empty; and a From:
 * of a domain without a block, or with two addresses: nothing. */
static void test_hook_shapes(void **state)
{
    struct keys *k = *state;
    struct hookfx x;
    struct strbuf pre;
    char reply[600];
    size_t l = 0;

    hookfx_init(&x, NULL, k->ed, DKIM_CANON_SIMPLE, 1);
    x.d.nkeys = 2;
    x.keys[0].not_before = (int64_t)time(NULL) + 86400; /* RSA not active yet */
    assert_int_equal(run_hook(&x, S("From: a@example.com\r\nSubject: x\r\n"), 5, &pre, reply, sizeof(reply)), 0);
    const char *s = nth_sig(&pre, 0, &l);
    assert_non_null(s);
    assert_null(nth_sig(&pre, 1, &l));
    char *v = tag_value(s, l, "bh");
    assert_string_equal(v, "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY=");
    free(v);
    assert_string_equal(v = tag_value(s, l, "a"), "ed25519-sha256");
    free(v);
    sb_free(&pre);

    static const char *const nothing[] = {
        "From: a@other.example\r\n\r\nbody\r\n",
        "From: a@example.com, b@example.com\r\n\r\nbody\r\n",
        "From: a@example.com\r\nFrom: b@example.com\r\n\r\nbody\r\n",
        "Subject: no from\r\n\r\nbody\r\n",
        "From: a@notexample.com\r\n\r\nbody\r\n",
    };
    for (size_t i = 0; i < ARRAY_LEN(nothing); i++) {
        hookfx_init(&x, k->rsa, k->ed, DKIM_CANON_RELAXED, 1);
        assert_int_equal(run_hook(&x, nothing[i], strlen(nothing[i]), 7, &pre, reply, sizeof(reply)), 0);
        assert_string_equal(pre.s, prepend0);
        sb_free(&pre);
    }
    /* subdomains no: mail.example.com is not signed */
    hookfx_init(&x, k->rsa, k->ed, DKIM_CANON_RELAXED, 1);
    x.d.subdomains = 0;
    assert_int_equal(run_hook(&x, S(msg1), 64, &pre, reply, sizeof(reply)), 0);
    assert_string_equal(pre.s, prepend0);
    sb_free(&pre);
    /* no dkim configured: begin() keeps no state */
    hookfx_init(&x, k->rsa, k->ed, DKIM_CANON_RELAXED, 1);
    x.cfg.ndkim = 0;
    assert_null(dkim_hook.begin(&x.v));
    assert_int_equal(run_hook(&x, S(msg1), 64, &pre, reply, sizeof(reply)), 0);
    assert_string_equal(pre.s, prepend0);
    sb_free(&pre);
}

static void test_hook_failures(void **state)
{
    struct keys *k = *state;
    struct hookfx x;
    struct strbuf pre;
    char reply[600];
    size_t l = 0;
    const char *want = "451 4.7.5 DKIM signing failed; try again later";

    /* an RSA key that cannot sign: required -> 451, nothing added */
    hookfx_init(&x, k->rsa_pub, k->ed, DKIM_CANON_RELAXED, 1);
    assert_int_equal(run_hook(&x, S(msg1), 100, &pre, reply, sizeof(reply)), 1);
    assert_string_equal(reply, want);
    assert_string_equal(pre.s, prepend0);
    sb_free(&pre);
    assert_int_equal(ERR_peek_error(), 0);

    /* not required: sent with the signature that worked */
    hookfx_init(&x, k->rsa_pub, k->ed, DKIM_CANON_RELAXED, 0);
    assert_int_equal(run_hook(&x, S(msg1), 100, &pre, reply, sizeof(reply)), 0);
    const char *s = nth_sig(&pre, 0, &l);
    assert_non_null(s);
    assert_null(nth_sig(&pre, 1, &l));
    char *v = tag_value(s, l, "a");
    assert_string_equal(v, "ed25519-sha256");
    free(v);
    sb_free(&pre);

    /* not required, the only key fails: unsigned */
    hookfx_init(&x, k->rsa_pub, NULL, DKIM_CANON_RELAXED, 0);
    x.d.nkeys = 1;
    assert_int_equal(run_hook(&x, S(msg1), 100, &pre, reply, sizeof(reply)), 0);
    assert_string_equal(pre.s, prepend0);
    sb_free(&pre);

    /* a key of the wrong type, a key not loaded */
    hookfx_init(&x, k->ed, NULL, DKIM_CANON_RELAXED, 1);
    x.d.nkeys = 1;
    assert_int_equal(run_hook(&x, S(msg1), 100, &pre, reply, sizeof(reply)), 1);
    assert_string_equal(reply, want);
    sb_free(&pre);
    hookfx_init(&x, NULL, NULL, DKIM_CANON_RELAXED, 1);
    assert_int_equal(run_hook(&x, S(msg1), 100, &pre, reply, sizeof(reply)), 1);
    assert_string_equal(reply, want);
    sb_free(&pre);

    /* no key active yet */
    hookfx_init(&x, k->rsa, k->ed, DKIM_CANON_RELAXED, 1);
    x.keys[0].not_before = x.keys[1].not_before = (int64_t)time(NULL) + 3600;
    assert_int_equal(run_hook(&x, S(msg1), 100, &pre, reply, sizeof(reply)), 1);
    assert_string_equal(reply, want);
    sb_free(&pre);
    x.d.required = 0;
    assert_int_equal(run_hook(&x, S(msg1), 100, &pre, reply, sizeof(reply)), 0);
    assert_string_equal(pre.s, prepend0);
    sb_free(&pre);

    /* a malformed header section, a header section over the limit */
    static const char bad[] = "From: a@example.com\r\nnot a field\r\nTo: b@x\r\n\r\nbody\r\n";
    hookfx_init(&x, k->rsa, k->ed, DKIM_CANON_RELAXED, 1);
    assert_int_equal(run_hook(&x, S(bad), 3, &pre, reply, sizeof(reply)), 1);
    assert_string_equal(reply, want);
    sb_free(&pre);
    x.d.required = 0;
    assert_int_equal(run_hook(&x, S(bad), 3, &pre, reply, sizeof(reply)), 0);
    assert_string_equal(pre.s, prepend0);
    sb_free(&pre);
    hookfx_init(&x, k->rsa, k->ed, DKIM_CANON_RELAXED, 1);
    x.cfg.limits.header_size = 60;
    static const char big[] = "From: a@example.com\r\nSubject: a subject long enough to pass the limit\r\n\r\nb\r\n";
    assert_int_equal(run_hook(&x, S(big), 10, &pre, reply, sizeof(reply)), 1);
    assert_string_equal(reply, want);
    sb_free(&pre);
}

/* msg_note appends " field" while it fits whole, and drops what does not. */
static void test_msg_note(void **state)
{
    (void)state;
    char note[16] = "";
    struct msg_view v = {.note = note, .note_size = sizeof(note)};
    msg_note(&v, "a=%d", 1);
    assert_string_equal(note, " a=1");
    msg_note(&v, "dkim=%s", "too-long-for-it");
    assert_string_equal(note, " a=1");
    msg_note(&v, "b=%s", "xyz");
    assert_string_equal(note, " a=1 b=xyz");
    struct msg_view none = {0};
    msg_note(&none, "c=1"); /* no buffer: nothing happens */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_canon_header_rfc),
        cmocka_unit_test(test_fields_parse),
        cmocka_unit_test(test_canon_body_rfc),
        cmocka_unit_test(test_body_empty),
        cmocka_unit_test(test_body_splits),
        cmocka_unit_test(test_body_random),
        cmocka_unit_test(test_body_large),
        cmocka_unit_test(test_select),
        cmocka_unit_test(test_rfc8463_ed25519),
        cmocka_unit_test(test_rfc8463_rsa),
        cmocka_unit_test(test_template_layout),
        cmocka_unit_test(test_sign_verify),
        cmocka_unit_test(test_ed25519_libsodium),
        cmocka_unit_test(test_hook_end_to_end),
        cmocka_unit_test(test_hook_shapes),
        cmocka_unit_test(test_hook_failures),
        cmocka_unit_test(test_msg_note),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
