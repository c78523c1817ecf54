/* accounts: the accounts file — who may log in, with which password hash,
 * and which addresses each account may send as. Format (docs/accounts.md),
 * compatible with Dovecot's passwd-file:
 *
 *   login:{SCHEME}hash:uid:gid:gecos:home:shell:extra fields
 *
 * Only the first two fields and the extra fields matter to submitd; the
 * others may be empty or omitted. Extra fields are space separated
 * key=value pairs; submitd reads `sender=` (comma-separated addresses
 * and/or @domain entries the account may use in MAIL FROM and From:) and
 * `suspended=yes`. Without sender=, a login that is an address may send as
 * itself only. Lines starting with # and blank lines are ignored.
 *
 * Accepted hashes: yescrypt ($y$), bcrypt ($2b$/$2y$/$2a$), sha512-crypt
 * ($6$), argon2id ($argon2id$), optionally prefixed with Dovecot's
 * {CRYPT}, {BLF-CRYPT}, {SHA512-CRYPT}, {ARGON2ID}. Anything else —
 * {PLAIN}, MD5-crypt, DES — is a load error.
 *
 * A loaded table is immutable and reference counted (swapped on SIGHUP). */
#ifndef SUBMITD_ACCOUNTS_H
#define SUBMITD_ACCOUNTS_H

#include <stddef.h>

#include "core/util.h"

struct account {
    char *login;
    char *hash;     /* without the {SCHEME} prefix: "$y$...", "$argon2id$..." */
    char **senders; /* lower-cased; "@domain" or "local@domain" */
    size_t nsenders;
    int suspended;
    int line;
};

struct accounts;

/* Loads and checks the file: refuses a file readable by group/others
 * (0640 with group = the daemon's group is allowed), reports every bad line
 * as `file:line: message`. NULL on any error. */
struct accounts *accounts_load(const char *path, struct errlist *errs);
struct accounts *accounts_ref(struct accounts *a);
void accounts_unref(struct accounts *a);
size_t accounts_count(const struct accounts *a);

/* Case-insensitive lookup of a login. NULL when unknown. */
const struct account *accounts_find(const struct accounts *a, const char *login);

/* 1 when `addr` (no angle brackets) is one of the account's addresses:
 * exact match (case-insensitive) or a "@domain" entry matching the
 * address's domain (case-insensitive). The null sender ("") is decided by
 * the caller (config allow-null-sender). */
int account_may_send_as(const struct account *acc, const char *addr);

#endif
