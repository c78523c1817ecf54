/* dkim: DKIM signing (RFC 6376 rsa-sha256, RFC 8463 ed25519-sha256).
 *
 * The pure part (dkim.c, no I/O): header-field splitting and
 * canonicalization (simple / relaxed, RFC 6376 3.4.1-3.4.2), a streaming
 * body canonicalizer that hashes as bytes arrive (3.4.3-3.4.4), header
 * selection (5.4.2, with oversigning), and building + signing the folded
 * DKIM-Signature field (3.5, 3.7).
 *
 * The message-stream hook (dkimhook.c, `dkim_hook`) keeps the header
 * section, finds the From: domain's `dkim` block when the header section
 * ends, hashes the body while it streams in, and at the end signs once per
 * active key, appending the DKIM-Signature fields to the prepend block.
 *
 * The produced field (one signature; b= always starts its own line and is
 * the last tag, so removing its value gives back the signed text exactly):
 *
 *   DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=rsa1;
 *   <TAB>t=1795460542; h=from:from:subject:subject:message-id:received;
 *   <TAB>bh=RHI91NDg1Go8f6isolS2HCe2tXiflhd+gsgHAECfFTU=;
 *   <TAB>b=Colb4jfDaIChPhw/...(the base64 value, filling lines to column 78)
 *   <TAB>...
 *
 * Lines are folded with CRLF TAB at <= 78 columns, only where RFC 6376
 * allows FWS: between tags, after a ':' of h=, inside the b= value. */
#ifndef SUBMITD_DKIM_H
#define SUBMITD_DKIM_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "core/config.h"
#include "core/util.h"
#include "smtp/msgstream.h"

#define DKIM_HASH_LEN 32 /* SHA-256 */
#define DKIM_FOLD_COLS 78

/* ---- header fields ---------------------------------------------------- */

/* One header field inside a caller-owned buffer. */
struct dkim_field {
    const char *text; /* the field's first byte (its name) */
    size_t len;       /* through the value, folding CRLFs included, final CRLF excluded */
    size_t name_len;  /* the name, without WSP before the ':' */
};

struct dkim_fields {
    struct dkim_field *v;
    size_t n, cap;
};

void dkim_fields_init(struct dkim_fields *f);
void dkim_fields_free(struct dkim_fields *f);
/* Splits a header section into fields, appending to f: lines end with CRLF;
 * a line starting with SP/TAB continues the previous field; a blank line
 * (or the end of buf) ends the section. Returns 0, or -1 when a line is
 * neither a field ("name:") nor a continuation (fields before it are kept). */
int dkim_fields_parse(struct dkim_fields *f, const char *buf, size_t len);
/* 1 when the field's name is `name` (ASCII case-insensitive). */
int dkim_field_is(const struct dkim_field *f, const char *name);

/* Appends the canonical form of one whole field (name ":" value, folding
 * included, final CRLF excluded) to out, WITHOUT a trailing CRLF.
 * simple: unchanged. relaxed: lower-case name, WSP around the ':' removed,
 * CRLFs removed (unfolding), WSP runs -> one SP, trailing WSP removed. */
void dkim_canon_header(enum dkim_canon c, const char *field, size_t len, struct strbuf *out);

/* ---- body ------------------------------------------------------------- */

#define DKIM_BODY_BUF 16384

/* Streaming body canonicalizer + SHA-256. Feed any chunking; trailing
 * empty lines are held back (as a count) and dropped at the end. */
struct dkim_body {
    enum dkim_canon canon;
    EVP_MD_CTX *md;
    uint64_t crlf_held; /* line ends not hashed yet (may become trailing) */
    int cr_held;        /* the last chunk ended with a CR */
    int wsp_held;       /* relaxed: a WSP run in the current line, not hashed yet */
    int any;            /* content hashed (relaxed: non-empty body) */
    int failed;         /* an OpenSSL call failed */
    size_t outlen;
    unsigned char out[DKIM_BODY_BUF]; /* canonical bytes waiting for EVP_DigestUpdate */
};

/* 0, or -1 when OpenSSL fails (b is then safe to free). */
int dkim_body_init(struct dkim_body *b, enum dkim_canon c);
void dkim_body_feed(struct dkim_body *b, const char *buf, size_t n);
/* Ends the body and writes its hash. 0, or -1 (OpenSSL failure). */
int dkim_body_final(struct dkim_body *b, unsigned char hash[DKIM_HASH_LEN]);
void dkim_body_free(struct dkim_body *b);

/* ---- header selection (RFC 6376 5.4.2) --------------------------------- */

struct dkim_hsel {
    const char *name;               /* as listed in h= */
    const struct dkim_field *field; /* NULL: an oversigned name's extra entry */
};

/* For each distinct name of `names` then of `oversign` (first occurrence,
 * case-insensitive), every instance in f taken bottom-up; names listed in
 * `oversign` get one more entry with field NULL, so that a field added
 * later breaks the signature. Names absent and not oversigned are left out.
 * Returns an xmalloc'd array (free it) and its length in *n. */
struct dkim_hsel *dkim_select(const struct dkim_field *f, size_t nf, const char *const *names, size_t nnames,
                              const char *const *oversign, size_t noversign, size_t *n);

/* Appends canon(field) CRLF for every selected entry with a field. */
void dkim_canon_selected(enum dkim_canon c, const struct dkim_hsel *h, size_t nh, struct strbuf *out);

/* ---- the signature ----------------------------------------------------- */

struct dkim_sig_params {
    enum dkim_alg alg;
    enum dkim_canon canon_header, canon_body;
    const char *domain;   /* d= */
    const char *selector; /* s= */
    int64_t timestamp;    /* t= */
    const struct dkim_hsel *h;
    size_t nh;
    const unsigned char *bh; /* DKIM_HASH_LEN bytes */
};

const char *dkim_alg_name(enum dkim_alg a);     /* "rsa-sha256", "ed25519-sha256" */
const char *dkim_canon_name(enum dkim_canon c); /* "simple", "relaxed" */

/* Appends the folded DKIM-Signature field up to and including its empty
 * "b=" (last tag, no trailing CRLF): the text that is signed. */
void dkim_sig_template(const struct dkim_sig_params *p, struct strbuf *out);

/* The Ed25519 secret key in libsodium's form (seed || public key) from
 * an OpenSSL Ed25519 key: computed once per key (config_load) so that
 * signing does not derive it per message. 0, or -1 (not an Ed25519
 * private key; sk wiped). */
#define DKIM_ED25519_SK_LEN 64
int dkim_ed25519_secret(EVP_PKEY *key, unsigned char sk[DKIM_ED25519_SK_LEN]);

/* Signs hdrs (the canonical selected fields) followed by sigfield (the
 * canonical DKIM-Signature field with an empty b=): rsa-sha256 with
 * EVP_DigestSign/SHA-256; ed25519-sha256 signs the SHA-256 of the data
 * (RFC 8463) with libsodium, using ed_sk (from dkim_ed25519_secret) or,
 * when it is NULL, deriving it from key. The key's type must match alg.
 * Appends the signature in base64 to b64. 0, or -1 with a reason token
 * in err (OpenSSL's error queue is cleared either way). */
int dkim_sig_compute(EVP_PKEY *key, const unsigned char *ed_sk, enum dkim_alg alg, const char *hdrs, size_t hlen,
                     const char *sigfield, size_t slen, struct strbuf *b64, char *err, size_t errlen);

/* Appends b64 after a template's final "b=", folded, then CRLF. */
void dkim_sig_add_b(struct strbuf *field, const char *b64);

/* All of the above: appends the complete CRLF-terminated field to out.
 * hdrs is the canonical selected header data (dkim_canon_selected with
 * p->canon_header). 0, or -1 with a reason in err (out unchanged). */
int dkim_sign(const struct dkim_sig_params *p, EVP_PKEY *key, const unsigned char *ed_sk, const char *hdrs,
              size_t hlen, struct strbuf *out, char *err, size_t errlen);

/* ---- the message-stream hook (dkimhook.c) ------------------------------ */

extern const struct msg_hook dkim_hook;

#endif
