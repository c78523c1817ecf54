/* cidr: owns the parsing of allow/deny networks ("192.0.2.0/24",
 * "2001:db8::/32", bare addresses), matching client socket addresses
 * against them (IPv4-mapped IPv6 clients match IPv4 networks) and the
 * text form of a client address used in logs and replies. */
#include "core/cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

static const uint8_t v4mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* Keeps the first `prefix` bits of addr (len bytes), clears the rest. */
static void clear_host_bits(uint8_t *addr, size_t len, unsigned prefix)
{
    for (size_t i = 0; i < len; i++) {
        unsigned bit = (unsigned)i * 8;
        if (bit >= prefix)
            addr[i] = 0;
        else if (prefix - bit < 8)
            addr[i] &= (uint8_t)(0xff00u >> (prefix - bit));
    }
}

/* 1 when the first `prefix` bits of a and b are equal. */
static int prefix_eq(const uint8_t *a, const uint8_t *b, unsigned prefix)
{
    size_t whole = prefix / 8;
    if (memcmp(a, b, whole) != 0)
        return 0;
    unsigned rest = prefix % 8;
    if (rest == 0)
        return 1;
    uint8_t mask = (uint8_t)(0xff00u >> rest);
    return (a[whole] & mask) == (b[whole] & mask);
}

/* Parses a decimal prefix length of 1..3 digits; -1 when malformed. */
static int parse_prefix(const char *s, unsigned max)
{
    size_t n = strlen(s);
    if (n == 0 || n > 3)
        return -1;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (n > 1 && s[0] == '0')
        return -1;
    return v <= max ? (int)v : -1;
}

int cidr_parse(const char *s, struct cidr *out)
{
    if (!s || !out)
        return -1;
    char addr[INET6_ADDRSTRLEN + 1];
    const char *slash = strchr(s, '/');
    size_t alen = slash ? (size_t)(slash - s) : strlen(s);
    if (alen == 0 || alen >= sizeof(addr))
        return -1;
    memcpy(addr, s, alen);
    addr[alen] = '\0';

    struct cidr c;
    memset(&c, 0, sizeof(c));
    unsigned max;
    if (inet_pton(AF_INET, addr, c.addr) == 1) {
        c.family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, addr, c.addr) == 1) {
        c.family = AF_INET6;
        max = 128;
    } else {
        return -1;
    }
    if (slash) {
        int p = parse_prefix(slash + 1, max);
        if (p < 0)
            return -1;
        c.prefix = (unsigned)p;
    } else {
        c.prefix = max;
    }
    /* ::ffff:a.b.c.d/96+ is an IPv4 network written in IPv6 form. */
    if (c.family == AF_INET6 && c.prefix >= 96 && memcmp(c.addr, v4mapped_prefix, 12) == 0) {
        memmove(c.addr, c.addr + 12, 4);
        memset(c.addr + 4, 0, 12);
        c.family = AF_INET;
        c.prefix -= 96;
    }
    clear_host_bits(c.addr, c.family == AF_INET ? 4 : 16, c.prefix);
    *out = c;
    return 0;
}

void cidr_list_add(struct cidr_list *l, const struct cidr *c)
{
    l->v = xrealloc(l->v, (l->n + 1) * sizeof(*l->v));
    l->v[l->n++] = *c;
}

void cidr_list_free(struct cidr_list *l)
{
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

/* The client's address bytes and family; IPv4-mapped IPv6 becomes IPv4.
 * 0 on success, -1 for other families. */
static int client_addr(const struct sockaddr *sa, int *family, uint8_t out[16])
{
    if (!sa)
        return -1;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        memcpy(out, &s4->sin_addr, 4);
        *family = AF_INET;
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        const uint8_t *b = s6->sin6_addr.s6_addr;
        if (memcmp(b, v4mapped_prefix, 12) == 0) {
            memcpy(out, b + 12, 4);
            *family = AF_INET;
        } else {
            memcpy(out, b, 16);
            *family = AF_INET6;
        }
        return 0;
    }
    return -1;
}

int cidr_match(const struct cidr *c, const struct sockaddr *sa)
{
    int family;
    uint8_t a[16];
    if (!c || client_addr(sa, &family, a) != 0 || family != c->family)
        return 0;
    return prefix_eq(a, c->addr, c->prefix);
}

int cidr_list_match(const struct cidr_list *l, const struct sockaddr *sa)
{
    if (!l)
        return 0;
    for (size_t i = 0; i < l->n; i++)
        if (cidr_match(&l->v[i], sa))
            return 1;
    return 0;
}

void sockaddr_ip(const struct sockaddr *sa, char *buf, size_t n)
{
    if (!buf || n == 0)
        return;
    char tmp[INET6_ADDRSTRLEN];
    int family;
    uint8_t a[16];
    if (client_addr(sa, &family, a) != 0 || !inet_ntop(family, a, tmp, sizeof(tmp)))
        str_copy(tmp, "unknown", sizeof(tmp));
    str_copy(buf, tmp, n);
}
