/* spool_int: what spool.c and envelope.c share inside the spool module
 * (the value escaping and the cursor-based field readers of the
 * envelope and status-log formats, docs/spool-format.md). */
#ifndef SUBMITD_SPOOL_INT_H
#define SUBMITD_SPOOL_INT_H

#include <stdint.h>

#include "core/util.h"

/* A string value: "..." with printable ASCII except '"' and '\\' as is,
 * every other byte as \xHH; NULL as a lone '-'. */
void spool_put_str(struct strbuf *b, const char *s);
int spool_hexval(int c);

/* Readers of one field at c->p (advanced past it); 0, or -1 with *why. */
struct spool_cur {
    const char *p;
    const char *end;
};
int spool_get_str(struct spool_cur *c, char **out, const char **why);
int spool_get_u64(struct spool_cur *c, uint64_t max, uint64_t *out, const char **why);
int spool_get_i64(struct spool_cur *c, int64_t *out, const char **why);
int spool_get_sp(struct spool_cur *c, const char **why);
int spool_get_eol(struct spool_cur *c, const char **why);

#endif
