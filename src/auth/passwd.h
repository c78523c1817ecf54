/* passwd: password hashing and verification. yescrypt, bcrypt and
 * sha512-crypt through libcrypt (crypt_rn), argon2id through libargon2.
 * Comparison is constant time. These calls are slow by design (tens of
 * ms): the daemon runs them on its job threads, never on an event loop. */
#ifndef SUBMITD_PASSWD_H
#define SUBMITD_PASSWD_H

#include <stddef.h>

enum pw_scheme { PW_UNKNOWN = 0, PW_YESCRYPT, PW_BCRYPT, PW_SHA512_CRYPT, PW_ARGON2ID };

/* Strips a Dovecot {SCHEME} prefix and classifies the hash. Returns
 * PW_UNKNOWN for unsupported/weak/plaintext schemes, and then writes why
 * into `why`. *hash_out points into `stored` after the prefix. */
enum pw_scheme passwd_classify(const char *stored, const char **hash_out, char *why, size_t whylen);

/* 1 password matches, 0 does not, -1 the hash is unusable. */
int passwd_verify(const char *hash, const char *password);

/* Spends about as long as a real verification: used for unknown logins so
 * that timing does not reveal which logins exist. */
void passwd_verify_dummy(const char *password);

/* Makes a new hash with a random salt. scheme: "argon2id" (default when
 * NULL; m=65536 KiB, t=3, p=1), "yescrypt", "bcrypt" (cost 12),
 * "sha512-crypt" (rounds 100000). 0 on success, -1 on error. */
int passwd_hash(const char *scheme, const char *password, char *out, size_t outlen);

#endif
