/* config_int: what the configuration parser's files share (config.c: the
 * tables, the generic parser, life cycle; config_dkim.c: `dkim` blocks and
 * keys; config_abuse.c: rate limits, `ratelimit-for`, the Redis URL). Not
 * for other modules: they use config.h. */
#ifndef SUBMITD_CONFIG_INT_H
#define SUBMITD_CONFIG_INT_H

#include <stddef.h>
#include <stdint.h>

#include "core/config.h"

#define MAX_KEYS 24 /* per block table */
#define MAX_WORDS 16 /* per line */
#define NAME_MAX_LEN 64
#define DKIM_KEY_MAX (64 * 1024)   /* bytes of a PEM private key file */
#define DKIM_RSA_MIN_BITS 2048     /* RFC 8301 */
#define DKIM_RSA_MAX_BITS 8192

enum vtype {
    V_STR,   /* one word, optionally checked by keydef.valid */
    V_PATH,  /* one word, made absolute against the config's directory */
    V_UINT,  /* decimal number */
    V_SIZE,  /* bytes; K/M/G suffixes (1024-based) */
    V_SECS,  /* duration stored in seconds; a plain number is seconds */
    V_MSECS, /* duration stored in milliseconds; a plain number is ms */
    V_BOOL,  /* yes/no/on/off/true/false/1/0 */
    V_ENUM,  /* one of keydef.enums */
    V_FN     /* keydef.fn handles keydef.nargs words (repeatable keys) */
};

enum {
    K_MULTI = 1,    /* may be given several times */
    K_REQUIRED = 2, /* must be given */
    K_READ = 4,     /* V_PATH: the file must exist and be readable */
    K_SECRET = 8,   /* V_PATH: ... and not open to others (mode & 027 == 0) */
};

struct enum_val {
    const char *name;
    int value;
};

struct parser;
struct keydef;
typedef void (*key_fn)(struct parser *p, void *base, const struct keydef *k, char **av, int line);

struct keydef {
    const char *name;
    enum vtype type;
    size_t off;  /* the field inside the block's struct */
    size_t size; /* its size (integers are stored by size) */
    uint64_t min, max; /* V_UINT/V_SIZE: value; V_SECS: s; V_MSECS: ms */
    const char *def;   /* default, written as in the file; NULL = none */
    unsigned flags;
    const struct enum_val *enums;  /* V_ENUM, NULL-terminated */
    int (*valid)(const char *s);   /* V_STR: extra check */
    const char *form;  /* V_STR: what is expected; V_PATH: what the file is; V_FN: the arguments */
    key_fn fn;         /* V_FN */
    unsigned nargs;    /* V_FN: number of words after the key */
    unsigned nargs_max; /* V_FN: when set, nargs..nargs_max words (av[] ends with NULL) */
    size_t off2;       /* V_FN: the count field of an array, when there is one */
};

#define FIELD(T, f) .off = offsetof(T, f), .size = sizeof(((T *)0)->f)
#define ARRAY(T, f, n) .off = offsetof(T, f), .off2 = offsetof(T, n)

struct blockdef;

struct parser {
    const char *file;
    const char *basedir; /* relative paths are made absolute against it */
    struct errlist *errs;
    struct config *c;
    int seen_top[MAX_KEYS]; /* line where each top-level key was set */
    int seen[MAX_KEYS];     /* the same for the open block */
    int open;               /* a block is open */
    const struct blockdef *blk; /* the open block (NULL: unknown, ignored) */
    int blk_line;
    char blk_name[NAME_MAX_LEN + 1];
    int ignore;         /* the open block's contents are skipped */
    int nested;         /* depth of (refused) blocks opened inside it */
    size_t idx;         /* listener/transport/dkim index */
    int names_line[2];  /* dkim: first `headers` / `oversign` line of the open block */
    int oversign_none;  /* dkim: line of `oversign none` in the open block */
    int single_line[16]; /* blocks without ARG (by kind - B_TLS): line of the block, 0 = not yet */
    int no_file_checks; /* config_load_paths: files need not exist yet */
};

/* Reports `file:line: message` (every problem is collected, not just the first). */
void cfg_perr(struct parser *p, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The field at off inside a block's struct. */
void *cfg_field(void *base, size_t off);
/* The file must exist, be a readable regular file and, when secret, not be
 * open to others; 0, or -1 after reporting (0 when files are not checked). */
int cfg_check_file(struct parser *p, int line, const char *what, const char *path, int secret);

/* config_dkim.c */
void cfg_key_dkim_key(struct parser *p, void *base, const struct keydef *k, char **av, int line);
void cfg_key_dkim_canon(struct parser *p, void *base, const struct keydef *k, char **av, int line);
void cfg_key_dkim_names(struct parser *p, void *base, const struct keydef *k, char **av, int line);
/* A closed dkim block: a key, the default lists, From signed, the
 * oversigned fields among the signed ones. */
void cfg_check_dkim(struct parser *p, struct dkim_cfg *d, int have_key);

/* config_abuse.c */
void cfg_key_rate_limit(struct parser *p, void *base, const struct keydef *k, char **av, int line);
void cfg_key_rl_backend(struct parser *p, void *base, const struct keydef *k, char **av, int line);
/* Opens `ratelimit-for KEY {`: 0, or -1 after reporting. */
int cfg_open_ratelimit_for(struct parser *p, const char *key, int line);
void cfg_abuse_defaults(struct config *c);
void cfg_free_abuse(struct config *c);

#endif
