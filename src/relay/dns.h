/* dns: the relay transports' resolver, on c-ares. Blocking calls for the
 * queue's delivery threads: each lookup runs its own c-ares channel
 * (channels are not shared between threads) driven by poll() until the
 * answers arrive or the deadline passes. The resolver is /etc/resolv.conf
 * or one configured server IP[:PORT] (tests point it at a loopback DNS
 * server). The ordering of MX records and the null-MX rule (RFC 7505) are
 * pure functions, unit-tested. */
#ifndef SUBMITD_RELAY_DNS_H
#define SUBMITD_RELAY_DNS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define DNS_NAME_MAX 255

struct dns_opts {
    char server[80]; /* "" = /etc/resolv.conf; else c-ares csv form "IP:PORT" / "[IPv6]:PORT" */
    int timeout_ms;  /* deadline of one whole lookup (all its queries) */
    int nosearch;    /* names are fully qualified: no resolv.conf search list */
};

enum dns_status {
    DNS_OK = 0,
    DNS_NODATA,   /* the name exists, no record of that type */
    DNS_NXDOMAIN, /* the name does not exist (or is not a valid name) */
    DNS_TEMP,     /* SERVFAIL, refused, timeout, network error */
};
const char *dns_status_name(enum dns_status s); /* "ok", "nodata", "nxdomain", "temp" */

struct dns_mx {
    char host[DNS_NAME_MAX + 1]; /* "" for the root (null MX target ".") */
    unsigned pref;
};

/* Parses a `resolver` option value IP[:PORT] (IPv6 as [IP]:PORT or a bare
 * IPv6 address) into dns_opts.server form. 0, or -1 with *why. */
int dns_parse_server(const char *s, char *out, size_t outlen, const char **why);

/* Sorts by preference (stable for the caller: equal preferences are put in
 * a random order drawn from rnd, so load spreads over equal MX hosts). */
void dns_mx_order(struct dns_mx *v, size_t n, uint32_t (*rnd)(void *arg), void *arg);
/* 1 when the set is a null MX (RFC 7505): exactly one record, target the
 * root. A root target among other records is ignored by dns_mx_drop_null. */
int dns_mx_is_null(const struct dns_mx *v, size_t n);
/* Removes root targets; returns the new count. */
size_t dns_mx_drop_null(struct dns_mx *v, size_t n);

/* MX records of domain. DNS_OK: *out (free()) holds *n >= 1 records in
 * dns_mx_order order (a null MX is returned as it is: check with
 * dns_mx_is_null). Otherwise *out is NULL and err says why. */
enum dns_status dns_mx(const struct dns_opts *o, const char *domain, struct dns_mx **out, size_t *n, char *err,
                       size_t errlen);

/* A and AAAA addresses of host (an IP literal is returned as is), each
 * with `port` set, in the resolver's preferred order (RFC 6724 sorting),
 * at most `max`. DNS_OK: *out (free()) holds *n >= 1 addresses. */
enum dns_status dns_addrs(const struct dns_opts *o, const char *host, uint16_t port, size_t max,
                          struct sockaddr_storage **out, size_t *n, char *err, size_t errlen);

/* An address-literal domain ("[192.0.2.1]", "[IPv6:2001:db8::1]") as a
 * socket address with port. 1 when dom is one, 0 when it is not a
 * literal, -1 when it is a malformed one. */
int dns_addr_literal(const char *dom, uint16_t port, struct sockaddr_storage *out);


#endif
