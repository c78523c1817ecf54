/* cidr: IPv4/IPv6 network parsing and matching for allow/deny lists.
 * IPv4-mapped IPv6 client addresses (::ffff:a.b.c.d) match IPv4 networks. */
#ifndef SUBMITD_CIDR_H
#define SUBMITD_CIDR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct cidr {
    int family;        /* AF_INET or AF_INET6 */
    uint8_t addr[16];  /* network bytes, host bits cleared */
    unsigned prefix;   /* 0..32 or 0..128 */
};

struct cidr_list {
    struct cidr *v;
    size_t n;
};

/* "192.0.2.0/24", "2001:db8::/32", or a bare address (full prefix).
 * 0 on success, -1 on syntax error (host bits set is allowed and cleared). */
int cidr_parse(const char *s, struct cidr *out);
void cidr_list_add(struct cidr_list *l, const struct cidr *c);
void cidr_list_free(struct cidr_list *l);
int cidr_match(const struct cidr *c, const struct sockaddr *sa);
int cidr_list_match(const struct cidr_list *l, const struct sockaddr *sa);
/* Formats a client address as text without port ("192.0.2.1", "2001:db8::1");
 * IPv4-mapped addresses print as IPv4. */
void sockaddr_ip(const struct sockaddr *sa, char *buf, size_t n);

#endif
