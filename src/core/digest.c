/* digest: SHA-256 with the algorithm fetched from OpenSSL once per
 * process, for the spool's checksums (the v1 trailer, journal records and
 * segment headers) and DKIM's body hash. EVP_sha256() in an EVP_Digest or
 * EVP_DigestInit call makes OpenSSL 3 look the algorithm up in its method
 * store (a lock and a hash lookup) on every call, which cost more than
 * hashing a spool trailer. */
#include <pthread.h>
#include <string.h>

#include <openssl/evp.h>

#include "core/digest.h"

static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
static EVP_MD *fetched; /* lives as long as the process */

static void fetch_sha256(void)
{
    fetched = EVP_MD_fetch(NULL, "SHA256", NULL);
}

const EVP_MD *sha256_md(void)
{
    pthread_once(&sha256_once, fetch_sha256);
    return fetched ? fetched : EVP_sha256();
}

int sha256_iov(const struct iovec *iov, int iovcnt, unsigned char out[32])
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    int ok = c && EVP_DigestInit_ex2(c, sha256_md(), NULL) == 1;
    for (int i = 0; ok && i < iovcnt; i++)
        ok = EVP_DigestUpdate(c, iov[i].iov_base, iov[i].iov_len) == 1;
    unsigned int len = 0;
    ok = ok && EVP_DigestFinal_ex(c, out, &len) == 1 && len == 32;
    EVP_MD_CTX_free(c);
    if (!ok)
        memset(out, 0, 32); /* cannot happen with a working libcrypto; verification then fails */
    return ok ? 0 : -1;
}
