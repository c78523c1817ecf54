/* sasl: the server side of SASL PLAIN (RFC 4616) and LOGIN as a pure state
 * machine (see sasl.h). It only decodes: base64 through the strict codec
 * in smtp/parse.h, the PLAIN message "authzid NUL authcid NUL passwd", the
 * LOGIN user name and password lines. Every buffer that held a decoded
 * payload is wiped before returning, and so is the whole state on any
 * failure. */
#include "auth/sasl.h"

#include <string.h>

#include "core/util.h"
#include "smtp/parse.h"

enum { MECH_NONE = 0, MECH_PLAIN, MECH_LOGIN };
enum { STEP_START = 0, STEP_PLAIN_MSG, STEP_LOGIN_USER, STEP_LOGIN_PASS, STEP_DONE };

/* Largest decoded PLAIN message we accept, and its base64 length. */
#define PLAIN_MAX (SASL_USER_MAX + 1 + SASL_USER_MAX + 1 + SASL_PASS_MAX)
#define DECODE_MAX PLAIN_MAX
#define B64_MAX ((DECODE_MAX + 2) / 3 * 4)

static const char chal_username[] = "VXNlcm5hbWU6"; /* "Username:" */
static const char chal_password[] = "UGFzc3dvcmQ6"; /* "Password:" */

/* The result of decoding one client payload. */
struct dec {
    unsigned char buf[DECODE_MAX + 1];
    size_t len;
};

static enum sasl_res decode(const char *text, size_t n, struct dec *d)
{
    d->len = 0;
    if (n > B64_MAX)
        return SASL_BAD_SYNTAX; /* longer than any acceptable payload */
    long r = b64_decode(text, n, d->buf, DECODE_MAX);
    if (r < 0)
        return SASL_BAD_BASE64;
    d->len = (size_t)r;
    d->buf[d->len] = '\0';
    return SASL_CONTINUE;
}

static enum sasl_res set_challenge(char *challenge, size_t clen, const char *text)
{
    if (!challenge || clen <= strlen(text))
        return SASL_BAD_SYNTAX;
    memcpy(challenge, text, strlen(text) + 1);
    return SASL_CONTINUE;
}

/* Ends the exchange on an error: nothing decoded so far survives. */
static enum sasl_res fail(struct sasl *s, struct dec *d, enum sasl_res r)
{
    mem_wipe(d, sizeof(*d));
    sasl_clear(s);
    return r;
}

/* "authzid NUL authcid NUL passwd", exactly two NULs. */
static enum sasl_res plain_message(struct sasl *s, struct dec *d)
{
    const unsigned char *m = d->buf;
    size_t n = d->len;
    const unsigned char *z1 = memchr(m, '\0', n);
    if (!z1)
        return fail(s, d, SASL_BAD_SYNTAX);
    const unsigned char *z2 = memchr(z1 + 1, '\0', n - (size_t)(z1 + 1 - m));
    if (!z2 || memchr(z2 + 1, '\0', n - (size_t)(z2 + 1 - m)))
        return fail(s, d, SASL_BAD_SYNTAX);
    size_t zl = (size_t)(z1 - m);
    size_t ul = (size_t)(z2 - (z1 + 1));
    size_t pl = n - (size_t)(z2 + 1 - m);
    if (zl > SASL_USER_MAX || ul == 0 || ul > SASL_USER_MAX || pl == 0 || pl > SASL_PASS_MAX)
        return fail(s, d, SASL_BAD_SYNTAX);
    memcpy(s->authzid, m, zl);
    s->authzid[zl] = '\0';
    memcpy(s->user, z1 + 1, ul);
    s->user[ul] = '\0';
    memcpy(s->pass, z2 + 1, pl);
    s->pass[pl] = '\0';
    /* We do not let one account act for another. */
    if (zl != 0 && !str_ieq(s->authzid, s->user))
        return fail(s, d, SASL_BAD_SYNTAX);
    mem_wipe(d, sizeof(*d));
    s->step = STEP_DONE;
    return SASL_DONE;
}

/* A LOGIN user name or password: no NUL, not empty, bounded. */
static enum sasl_res login_field(struct sasl *s, struct dec *d, char *dst, size_t max)
{
    if (d->len == 0 || d->len > max || memchr(d->buf, '\0', d->len))
        return fail(s, d, SASL_BAD_SYNTAX);
    memcpy(dst, d->buf, d->len);
    dst[d->len] = '\0';
    mem_wipe(d, sizeof(*d));
    return SASL_CONTINUE;
}

enum sasl_res sasl_start(struct sasl *s, const char *args, char *challenge, size_t clen)
{
    sasl_clear(s);
    if (challenge && clen)
        challenge[0] = '\0';
    if (!args)
        return SASL_BAD_SYNTAX;
    /* "MECH" or "MECH SP initial-response"; trailing blanks tolerated. */
    size_t n = strlen(args);
    while (n > 0 && (args[n - 1] == ' ' || args[n - 1] == '\t'))
        n--;
    const char *sp = memchr(args, ' ', n);
    size_t mlen = sp ? (size_t)(sp - args) : n;
    const char *ir = sp ? sp + 1 : NULL;
    size_t irlen = sp ? n - mlen - 1 : 0;
    if (mlen == 0 || (ir && (irlen == 0 || memchr(ir, ' ', irlen))))
        return SASL_BAD_SYNTAX;
    char mech[21];
    if (mlen >= sizeof(mech))
        return SASL_BAD_MECH;
    memcpy(mech, args, mlen);
    mech[mlen] = '\0';
    if (str_ieq(mech, "PLAIN"))
        s->mech = MECH_PLAIN;
    else if (str_ieq(mech, "LOGIN"))
        s->mech = MECH_LOGIN;
    else
        return SASL_BAD_MECH;

    struct dec d;
    if (!ir) {
        s->step = s->mech == MECH_PLAIN ? STEP_PLAIN_MSG : STEP_LOGIN_USER;
        enum sasl_res r = set_challenge(challenge, clen, s->mech == MECH_PLAIN ? "" : chal_username);
        if (r != SASL_CONTINUE)
            sasl_clear(s);
        return r;
    }
    /* RFC 4954: "=" is an empty initial response. */
    enum sasl_res r = SASL_CONTINUE;
    d.len = 0;
    d.buf[0] = '\0';
    if (!(irlen == 1 && ir[0] == '='))
        r = decode(ir, irlen, &d);
    if (r != SASL_CONTINUE)
        return fail(s, &d, r);
    if (s->mech == MECH_PLAIN)
        return plain_message(s, &d);
    r = login_field(s, &d, s->user, SASL_USER_MAX);
    if (r != SASL_CONTINUE)
        return r;
    s->step = STEP_LOGIN_PASS;
    r = set_challenge(challenge, clen, chal_password);
    if (r != SASL_CONTINUE)
        sasl_clear(s);
    return r;
}

enum sasl_res sasl_step(struct sasl *s, const char *line, char *challenge, size_t clen)
{
    if (challenge && clen)
        challenge[0] = '\0';
    struct dec d;
    d.len = 0;
    if (!line || s->mech == MECH_NONE || s->step == STEP_START || s->step == STEP_DONE)
        return fail(s, &d, SASL_BAD_SYNTAX);
    if (strcmp(line, "*") == 0)
        return fail(s, &d, SASL_CANCELLED);
    enum sasl_res r = decode(line, strlen(line), &d);
    if (r != SASL_CONTINUE)
        return fail(s, &d, r);
    switch (s->step) {
    case STEP_PLAIN_MSG:
        return plain_message(s, &d);
    case STEP_LOGIN_USER:
        r = login_field(s, &d, s->user, SASL_USER_MAX);
        if (r != SASL_CONTINUE)
            return r;
        s->step = STEP_LOGIN_PASS;
        r = set_challenge(challenge, clen, chal_password);
        if (r != SASL_CONTINUE)
            sasl_clear(s);
        return r;
    case STEP_LOGIN_PASS:
        r = login_field(s, &d, s->pass, SASL_PASS_MAX);
        if (r != SASL_CONTINUE)
            return r;
        s->step = STEP_DONE;
        return SASL_DONE;
    default:
        return fail(s, &d, SASL_BAD_SYNTAX);
    }
}

void sasl_clear(struct sasl *s)
{
    if (s)
        mem_wipe(s, sizeof(*s));
}
