/* dkimhook: the DKIM message-stream hook (see msgstream.h, dkim.h). Keeps
 * the header section; when it ends, looks up the `dkim` block of the From:
 * domain and, when there is one, hashes the body as it streams in. At the
 * end it signs prepend + header section once per active key (RSA and/or
 * Ed25519) and appends the DKIM-Signature fields to the prepend block.
 * Runs after the header hook, so Message-ID:/Date: added by the server
 * are already in prepend and get signed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dkim/dkim.h"
#include "smtp/dataparse.h"

struct dkim_state {
    const struct config *cfg;
    struct header_scan hs;
    struct strbuf hdr;        /* the header section, blank line included */
    int hdr_done;             /* the header section ended (headers_done ran) */
    const struct dkim_cfg *d; /* the From: domain's block; NULL: no signing */
    const char *fail;         /* set with d: why this message cannot be signed */
    const char *skip;         /* no signing, and why (for the debug log) */
    struct dkim_body *body;   /* the body hash, while d && !fail */
};

static void *dk_begin(const struct msg_view *v)
{
    if (!v->cfg || v->cfg->ndkim == 0)
        return NULL; /* no DKIM configured: the hook costs nothing */
    struct dkim_state *st = xcalloc(1, sizeof(*st));
    st->cfg = v->cfg;
    header_scan_init(&st->hs, v->cfg->limits.header_size);
    sb_init(&st->hdr);
    return st;
}

static void no_signing(struct dkim_state *st, const char *why)
{
    st->skip = why;
    sb_free(&st->hdr);
}

/* The header section is complete (or the limit / a malformed line ended
 * it): find the From: domain and its block. */
static void headers_done(struct dkim_state *st)
{
    st->hdr_done = 1;
    const struct header_scan *hs = &st->hs;
    if (hs->from_count == 0) {
        no_signing(st, "no_from");
        return;
    }
    if (hs->from_count > 1 || hs->from_truncated) {
        no_signing(st, "from_not_single");
        return;
    }
    char addrs[2][ADDR_MAX + 1];
    int n = addrlist_parse(hs->from, addrs, 2);
    if (n != 1) {
        no_signing(st, n < 0 ? "from_malformed" : "from_not_single");
        return;
    }
    const char *at = strrchr(addrs[0], '@');
    if (!at || !at[1]) {
        no_signing(st, "from_no_domain");
        return;
    }
    char domain[ADDR_MAX + 1];
    str_copy(domain, at + 1, sizeof(domain));
    str_lower(domain);
    st->d = config_dkim(st->cfg, domain);
    if (!st->d) {
        no_signing(st, "no_block");
        return;
    }
    if (hs->too_long) {
        st->fail = "header_too_large";
    } else if (hs->malformed) {
        st->fail = "malformed_header";
    } else {
        st->body = xmalloc(sizeof(*st->body));
        if (dkim_body_init(st->body, st->d->canon_body) != 0)
            st->fail = "openssl_init";
    }
    if (st->fail)
        sb_free(&st->hdr);
}

static void dk_data(void *p, const char *buf, size_t n)
{
    struct dkim_state *st = p;
    if (!st)
        return;
    if (!st->hdr_done) {
        uint64_t before = st->hs.offset;
        header_scan_feed(&st->hs, buf, n);
        if (!st->hs.done) {
            sb_append(&st->hdr, buf, n); /* bounded: the scanner stops at header-size */
            return;
        }
        size_t used = n;
        if (!st->hs.too_long && !st->hs.malformed && st->hs.header_end > before &&
            st->hs.header_end - before <= n) {
            used = (size_t)(st->hs.header_end - before);
            sb_append(&st->hdr, buf, used);
        }
        headers_done(st);
        buf += used;
        n -= used;
    }
    if (st->body && !st->fail)
        dkim_body_feed(st->body, buf, n);
}

/* Logs a failure; with `required` refuses the message (451). */
static int failed(const struct dkim_state *st, const struct msg_view *v, const struct dkim_key_cfg *k,
                  const char *reason, char *reply, size_t rlen)
{
    char q1[LOGQ_MAX], q2[LOGQ_MAX], q3[LOGQ_MAX];
    const struct dkim_cfg *d = st->d;
    logkv(d->required ? LOG_LVL_ERR : LOG_LVL_WARN, v->lc, "dkim.failed", "reason=%s d=%s s=%s a=%s required=%s",
          log_q(q1, sizeof(q1), reason), log_q(q2, sizeof(q2), d->domain),
          log_q(q3, sizeof(q3), k ? k->selector : "-"), k ? dkim_alg_name(k->alg) : "-",
          d->required ? "yes" : "no");
    if (!d->required)
        return 0;
    snprintf(reply, rlen, "451 4.7.5 DKIM signing failed; try again later");
    return 1;
}

/* The signed header fields: the block's list (or the default), From
 * always included. Pointers into the config (or static strings). */
static const char **header_names(const struct dkim_cfg *d, size_t *n)
{
    size_t nh = d->nheaders ? d->nheaders : dkim_default_headers_count;
    const char **v = xmalloc((nh + 1) * sizeof(*v));
    size_t k = 0;
    int from = 0;
    for (size_t i = 0; i < nh; i++) {
        v[k] = d->nheaders ? d->headers[i] : dkim_default_headers[i];
        from |= str_ieq(v[k], "from");
        k++;
    }
    if (!from)
        v[k++] = "from"; /* RFC 6376 5.4: From MUST be signed */
    *n = k;
    return v;
}

/* Signs with each key; appends the fields to sigs. Returns 1 when the
 * message must be refused. */
static int sign_all(struct dkim_state *st, const struct msg_view *v, const struct strbuf *prepend,
                    const struct dkim_key_cfg *keys[2], struct strbuf *sigs, char *reply, size_t rlen)
{
    const struct dkim_cfg *d = st->d;
    unsigned char bh[DKIM_HASH_LEN];
    if (dkim_body_final(st->body, bh) != 0)
        return failed(st, v, NULL, "body_hash", reply, rlen);

    /* The delivered header: prepend (Received:, Message-ID:, Date:), then
     * the message's own header section. */
    struct dkim_fields f;
    dkim_fields_init(&f);
    if (dkim_fields_parse(&f, prepend->s ? prepend->s : "", prepend->len) != 0 ||
        dkim_fields_parse(&f, st->hdr.s ? st->hdr.s : "", st->hdr.len) != 0) {
        dkim_fields_free(&f);
        return failed(st, v, NULL, "malformed_header", reply, rlen);
    }
    size_t nnames, nsel;
    const char **names = header_names(d, &nnames);
    struct dkim_hsel *sel = dkim_select(f.v, f.n, names, nnames, (const char *const *)d->oversign, d->noversign, &nsel);

    struct strbuf hdrs;
    sb_init(&hdrs);
    dkim_canon_selected(d->canon_header, sel, nsel, &hdrs);
    int64_t now = (int64_t)time(NULL);
    int rc = 0;
    char signed_by[600] = ""; /* d/s/a of each signature, for the queued line */
    for (int i = 0; i < 2 && !rc; i++) {
        const struct dkim_key_cfg *k = keys[i];
        if (!k)
            continue;
        struct dkim_sig_params p = {
            .alg = k->alg,
            .canon_header = d->canon_header,
            .canon_body = d->canon_body,
            .domain = d->domain,
            .selector = k->selector,
            .timestamp = now,
            .h = sel,
            .nh = nsel,
            .bh = bh,
        };
        char err[256];
        if (dkim_sign(&p, (EVP_PKEY *)k->pkey, k->alg == DKIM_ALG_ED25519_SHA256 ? k->ed_sk : NULL, hdrs.s ? hdrs.s : "", hdrs.len, sigs, err, sizeof(err)) != 0) {
            rc = failed(st, v, k, err, reply, rlen);
            continue;
        }
        if (log_enabled(LOG_LVL_DEBUG)) { /* log_q per signature, not for nothing */
            char q1[LOGQ_MAX], q2[LOGQ_MAX];
            logkv(LOG_LVL_DEBUG, v->lc, "dkim.signed", "d=%s s=%s a=%s", log_q(q1, sizeof(q1), d->domain),
                  log_q(q2, sizeof(q2), k->selector), dkim_alg_name(k->alg));
        }
        size_t used = strlen(signed_by);
        snprintf(signed_by + used, sizeof(signed_by) - used, "%s%s/%s/%s", used ? "," : "", d->domain, k->selector,
                 dkim_alg_name(k->alg));
    }
    if (!rc && signed_by[0]) { /* one field on the `queued` line rather than a line per signature */
        char q[LOGQ_MAX];
        msg_note(v, "dkim=%s", log_q(q, sizeof(q), signed_by));
    }
    sb_free(&hdrs);
    free(sel);
    free(names);
    dkim_fields_free(&f);
    return rc;
}

static int dk_end(void *p, const struct msg_view *v, struct strbuf *prepend, char *reply, size_t rlen)
{
    struct dkim_state *st = p;
    if (!st)
        return 0;
    if (!st->hdr_done) {
        header_scan_finish(&st->hs); /* no blank line: the message is all header */
        headers_done(st);
    }
    if (!st->d) {
        logkv(LOG_LVL_DEBUG, v->lc, "dkim.skipped", "reason=%s", st->skip ? st->skip : "-");
        return 0;
    }
    if (st->fail)
        return failed(st, v, NULL, st->fail, reply, rlen);
    const struct dkim_key_cfg *keys[2] = {NULL, NULL};
    config_dkim_active(st->d, (int64_t)time(NULL), keys);
    if (!keys[0] && !keys[1])
        return failed(st, v, NULL, "no_active_key", reply, rlen);
    struct strbuf sigs;
    sb_init(&sigs);
    int rc = sign_all(st, v, prepend, keys, &sigs, reply, rlen);
    if (!rc && sigs.len > 0)
        sb_append(prepend, sigs.s, sigs.len);
    sb_free(&sigs);
    return rc;
}

static void dk_free(void *p)
{
    struct dkim_state *st = p;
    if (!st)
        return;
    if (st->body) {
        dkim_body_free(st->body);
        free(st->body);
    }
    sb_free(&st->hdr);
    free(st);
}

const struct msg_hook dkim_hook = {
    .name = "dkim",
    .begin = dk_begin,
    .data = dk_data,
    .end = dk_end,
    .free = dk_free,
};
