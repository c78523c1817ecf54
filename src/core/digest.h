/* digest: SHA-256 with the algorithm fetched once (see digest.c). */
#ifndef SUBMITD_DIGEST_H
#define SUBMITD_DIGEST_H

#include <sys/uio.h>

#include <openssl/evp.h>

/* The fetched SHA-256 (EVP_sha256() if the fetch failed), for
 * EVP_DigestInit_ex2 and hashing in several steps. */
const EVP_MD *sha256_md(void);

/* SHA-256 of the concatenated pieces. 0, or -1 with out zeroed (a broken
 * libcrypto: a checksum made with it then never verifies). */
int sha256_iov(const struct iovec *iov, int iovcnt, unsigned char out[32]);

#endif
