/* advice: submitcheck's pure interpretation layer. Given what happened
 * (a connect error, an AUTH or transaction reply, certificate dates, a
 * key, a protocol version), it decides the verdict and writes the likely
 * cause and the fix into a report step. No I/O; unit-tested in
 * tests/unit/test_check.c. The texts are documented in
 * docs/submitcheck.md. */
#ifndef SUBMITD_CHECK_ADVICE_H
#define SUBMITD_CHECK_ADVICE_H

#include <stddef.h>

#include "check/report.h"
#include "smtp/client.h"

#define EXPIRY_WARN_DAYS 14

/* Connection failures (connect, or the greeting never coming). Sets the
 * verdict to fail with cause and fix; port decides the firewall lines and
 * the port-25 note; timeout_ms is quoted in the cause. */
void advise_connect(struct step *s, enum smtpc_err e, int port, int timeout_ms);
/* The firewall lines alone (ufw, iptables, firewalld). */
void advise_firewall(struct step *s, int port);
/* No greeting (timeout or close right after connect). implicit: the
 * dialogue expected implicit TLS on this port. */
void advise_no_greeting(struct step *s, enum smtpc_err e, int port, int implicit, int timeout_ms);

/* AUTH outcome classes, from the final reply to AUTH. */
enum auth_result {
    AUTH_RES_OK = 0,          /* 235 */
    AUTH_RES_BAD_CREDENTIALS, /* 535 (5.7.8) */
    AUTH_RES_WEB_LOGIN,       /* 534 (5.7.9 / 5.7.14): app password, web login or OAuth needed */
    AUTH_RES_TEMPORARY,       /* 454 (4.7.0) and other 4xx: the server's auth backend failed */
    AUTH_RES_TLS_REQUIRED,    /* 530 / 538 mentioning TLS or encryption */
    AUTH_RES_AUTH_REQUIRED,   /* 530 without a TLS hint */
    AUTH_RES_MECH_REFUSED,    /* 504: mechanism not supported */
    AUTH_RES_NO_AUTH,         /* 500 / 502 / 503: no AUTH command here */
    AUTH_RES_SYNTAX,          /* 501: our encoding refused or exchange cancelled */
    AUTH_RES_OTHER,
};
enum auth_result auth_classify(int code, const char *enh, const char *text);
const char *auth_result_name(enum auth_result a); /* "ok", "bad-credentials", ... (JSON facts) */
/* Sets verdict (ok for 235, else fail), message, cause and fix for the
 * final AUTH reply. oauth: a token was used (XOAUTH2/OAUTHBEARER). */
void advise_auth(struct step *s, int code, const char *enh, const char *text, const char *mech, int oauth);

/* Certificate validity relative to now. days_left (may be NULL) gets the
 * whole days until notAfter (negative once expired). */
enum cert_time { CERT_TIME_OK = 0, CERT_TIME_EXPIRING, CERT_TIME_EXPIRED, CERT_TIME_NOT_YET_VALID };
enum cert_time cert_time_classify(long long not_before, long long not_after, long long now, int warn_days,
                                  long long *days_left);
const char *cert_time_name(enum cert_time t); /* "valid", "expiring", "expired", "not-yet-valid" */

/* Key strength: fail for RSA/DSA/DH under 2048 bits and EC under 224,
 * ok otherwise (Ed25519/Ed448 always ok). type: "RSA", "EC", "ED25519"... */
enum verdict key_verdict(const char *type, int bits);

/* Negotiated protocol (TLS1_VERSION ... TLS1_3_VERSION): ok for 1.2 and
 * 1.3, fail below. */
enum verdict tls_version_verdict(int version);

/* Finds the queue id in the reply to the end of DATA: "queued as ID"
 * (Postfix, submitd), "id=ID" (Exim), else the last word of the first
 * line when it looks like an id (letters, digits, '-', '.', '_', '@'; at
 * least 6 characters, not purely a word like "accepted"). 0 with out
 * filled, -1 when none. */
int queue_id_from_reply(const char *text, char *out, size_t n);

/* Advice for a refused MAIL / RCPT / DATA step (code and text of the
 * reply), filling cause and fix; verdict fail. what: "MAIL", "RCPT",
 * "DATA" or "end of data". */
void advise_transaction(struct step *s, const char *what, int code, const char *enh, const char *text);

#endif
