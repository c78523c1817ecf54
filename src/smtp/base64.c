/* base64: the strict RFC 4648 (section 4) codec declared at the end of
 * smtp/parse.h — used for SASL payloads. Decoding accepts only the standard
 * alphabet, no whitespace or line breaks, input in whole 4-character groups
 * with '=' padding only at the very end, and refuses encodings whose unused
 * trailing bits are not zero (so every byte string has exactly one
 * accepted encoding). The rest of parse.h lives in parse.c. */
#include "smtp/parse.h"

static const char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Value of one base64 character, or -1. */
static int b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

long b64_decode(const char *in, size_t inlen, unsigned char *out, size_t outlen)
{
    if (inlen == 0)
        return 0;
    if (!in || inlen % 4 != 0)
        return -1;
    size_t pad = 0;
    if (in[inlen - 1] == '=')
        pad = in[inlen - 2] == '=' ? 2 : 1;
    size_t need = inlen / 4 * 3 - pad;
    if (need > outlen || need > (size_t)0x7fffffff || !out)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < inlen; i += 4) {
        int last = i + 4 == inlen;
        int v[4];
        for (size_t k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)in[i + k];
            if (c == '=' && last && k >= 4 - pad) {
                v[k] = 0;
                continue;
            }
            v[k] = b64_val(c);
            if (v[k] < 0)
                return -1; /* bad character, or '=' before the end */
        }
        /* Unused low bits of the last character must be zero. */
        if (last && pad == 1 && (v[2] & 0x03) != 0)
            return -1;
        if (last && pad == 2 && (v[1] & 0x0f) != 0)
            return -1;
        unsigned long w = ((unsigned long)v[0] << 18) | ((unsigned long)v[1] << 12) | ((unsigned long)v[2] << 6) |
                          (unsigned long)v[3];
        out[o++] = (unsigned char)(w >> 16);
        if (!(last && pad == 2))
            out[o++] = (unsigned char)(w >> 8);
        if (!(last && pad >= 1))
            out[o++] = (unsigned char)w;
    }
    return (long)o;
}

size_t b64_encode(const unsigned char *in, size_t n, char *out, size_t outlen)
{
    size_t need = (n + 2) / 3 * 4;
    if (!out || outlen < need + 1) {
        if (out && outlen > 0)
            out[0] = '\0';
        return need;
    }
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned long w = ((unsigned long)in[i] << 16) | ((unsigned long)in[i + 1] << 8) | in[i + 2];
        out[o++] = b64_alphabet[(w >> 18) & 63];
        out[o++] = b64_alphabet[(w >> 12) & 63];
        out[o++] = b64_alphabet[(w >> 6) & 63];
        out[o++] = b64_alphabet[w & 63];
    }
    if (n - i == 1) {
        unsigned long w = (unsigned long)in[i] << 16;
        out[o++] = b64_alphabet[(w >> 18) & 63];
        out[o++] = b64_alphabet[(w >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (n - i == 2) {
        unsigned long w = ((unsigned long)in[i] << 16) | ((unsigned long)in[i + 1] << 8);
        out[o++] = b64_alphabet[(w >> 18) & 63];
        out[o++] = b64_alphabet[(w >> 12) & 63];
        out[o++] = b64_alphabet[(w >> 6) & 63];
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}
