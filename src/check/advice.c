/* advice: submitcheck's verdicts, likely causes and fixes for connection
 * errors, AUTH and transaction replies, certificate dates, keys and
 * protocol versions; the queue-id finder (see advice.h). Pure. */
#include "check/advice.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/ssl.h>

#include "core/util.h"

/* Case-insensitive substring test (ASCII). */
static int has_word(const char *text, const char *needle)
{
    size_t n = strlen(needle);
    for (const char *p = text; *p; p++)
        if (strncasecmp(p, needle, n) == 0)
            return 1;
    return 0;
}

void advise_firewall(struct step *s, int port)
{
    step_fix(s, "open the port on the server: ufw allow %d/tcp", port);
    step_fix(s, "or: iptables -I INPUT -p tcp --dport %d -j ACCEPT (ip6tables for IPv6; keep it with "
                "netfilter-persistent save)", port);
    step_fix(s, "or: firewall-cmd --permanent --add-port=%d/tcp && firewall-cmd --reload", port);
    step_fix(s, "in a cloud, also allow TCP %d in the instance's security group / network firewall", port);
}

static void listen_fix(struct step *s, int port)
{
    step_fix(s, "on the server, check that something listens: ss -ltnp 'sport = :%d'", port);
    if (port == 587)
        step_fix(s, "Postfix: uncomment the 'submission inet' service in /etc/postfix/master.cf, then postfix "
                    "reload");
    else if (port == 465)
        step_fix(s, "Postfix: uncomment the 'submissions inet' (or 'smtps') service in /etc/postfix/master.cf, "
                    "then postfix reload");
}

static void port25_note(struct step *s, int port)
{
    if (port == 25)
        step_fix(s, "many cloud and home providers block outgoing port 25 but not 587 or 465: compare with "
                    "--ports 25,465,587");
    else
        step_fix(s, "check from another network to tell a block on your side (office or provider firewall) "
                    "from one at the server");
}

void advise_connect(struct step *s, enum smtpc_err e, int port, int timeout_ms)
{
    s->verdict = VERDICT_FAIL;
    switch (e) {
    case SMTPC_REFUSED:
        step_cause(s, "connection refused: nothing listens on port %d there, or a firewall rejects it", port);
        listen_fix(s, port);
        advise_firewall(s, port);
        break;
    case SMTPC_TIMEOUT:
        step_cause(s, "no answer to the connection attempt within %d ms: the port is filtered (a firewall drops "
                      "the packets) or a provider blocks it", timeout_ms);
        advise_firewall(s, port);
        port25_note(s, port);
        break;
    case SMTPC_UNREACHABLE:
        step_cause(s, "no route to the address (network or host unreachable)");
        step_fix(s, "check that DNS gives the right address, and the route to it: traceroute -T -p %d HOST", port);
        step_fix(s, "an IPv6 address without IPv6 connectivity on this side fails like this: try -4");
        break;
    case SMTPC_CLOSED:
    case SMTPC_IO:
        step_cause(s, "the connection was reset or closed at once: a firewall or the server's access rules "
                      "(connection limits, blocklists) turned it away");
        step_fix(s, "look at the server's log for this client address");
        advise_firewall(s, port);
        break;
    case SMTPC_OK:
    case SMTPC_PROTOCOL:
    case SMTPC_TLS:
        step_cause(s, "the connection failed");
        break;
    }
}

void advise_no_greeting(struct step *s, enum smtpc_err e, int port, int implicit, int timeout_ms)
{
    s->verdict = VERDICT_FAIL;
    if (e == SMTPC_TIMEOUT) {
        step_cause(s, "the server accepted the connection but sent no greeting within %d ms: it speaks another "
                      "protocol on this port, is overloaded or stuck, or a proxy holds the connection",
                   timeout_ms);
        if (!implicit)
            step_fix(s, "if this port expects TLS at once (like 465), run again with --tls");
        step_fix(s, "look at the server's log for this connection, and at its load");
        if (port == 25)
            step_fix(s, "a server with a greeting delay (Postfix postscreen) answers late: raise --timeout");
        step_fix(s, "some antivirus programs and provider proxies intercept SMTP: try from another network");
    } else if (e == SMTPC_PROTOCOL) {
        step_cause(s, "the server sent something that is not an SMTP reply");
        if (!implicit)
            step_fix(s, "if this port expects TLS at once (like 465), run again with --tls");
        step_fix(s, "check which program listens on port %d: ss -ltnp 'sport = :%d'", port, port);
    } else {
        step_cause(s, "the server closed the connection before greeting: its access rules (client address, "
                      "connection limits, blocklists) refuse this client");
        step_fix(s, "look at the server's log for this client address");
    }
}

/* ---- AUTH ------------------------------------------------------------------ */

static const char *const auth_names[] = {"ok", "bad-credentials", "web-login-required", "temporary-failure",
                                         "tls-required", "authentication-required", "mechanism-refused",
                                         "no-auth", "syntax", "other"};

const char *auth_result_name(enum auth_result a)
{
    if ((int)a < 0 || (size_t)a >= ARRAY_LEN(auth_names))
        return "other";
    return auth_names[a];
}

enum auth_result auth_classify(int code, const char *enh, const char *text)
{
    if (!enh)
        enh = "";
    if (!text)
        text = "";
    if (code == 235)
        return AUTH_RES_OK;
    if (code == 534 || strcmp(enh, "5.7.9") == 0 || strcmp(enh, "5.7.14") == 0)
        return AUTH_RES_WEB_LOGIN;
    if (code == 535)
        return AUTH_RES_BAD_CREDENTIALS;
    if (code == 538 || (code == 530 && (has_word(text, "TLS") || has_word(text, "encrypt"))))
        return AUTH_RES_TLS_REQUIRED;
    if (code == 530)
        return AUTH_RES_AUTH_REQUIRED;
    if (code >= 400 && code < 500)
        return AUTH_RES_TEMPORARY;
    if (code == 504)
        return AUTH_RES_MECH_REFUSED;
    if (code == 500 || code == 502 || code == 503)
        return AUTH_RES_NO_AUTH;
    if (code == 501)
        return AUTH_RES_SYNTAX;
    return AUTH_RES_OTHER;
}

void advise_auth(struct step *s, int code, const char *enh, const char *text, const char *mech, int oauth)
{
    enum auth_result a = auth_classify(code, enh, text);
    if (a == AUTH_RES_OK) {
        step_set(s, VERDICT_OK, "logged in with %s", mech);
        return;
    }
    step_set(s, VERDICT_FAIL, "%s refused: %d %s%s%s", mech, code, enh && *enh ? enh : "", enh && *enh ? " " : "",
             text ? text : "");
    switch (a) {
    case AUTH_RES_BAD_CREDENTIALS:
        if (oauth) {
            step_cause(s, "the server refused the OAuth token (expired, wrong scope, or for another account)");
            step_fix(s, "get a fresh access token with the mail scope (Google: https://mail.google.com/, "
                        "Microsoft: https://outlook.office.com/SMTP.Send) for this user");
        } else {
            step_cause(s, "the server refused the user name or password");
            step_fix(s, "check the user name: many servers want the full address (user@example.com)");
            step_fix(s, "check the password (the first line of --password-file, without trailing spaces)");
            step_fix(s, "with two-factor authentication (Gmail, iCloud, Yahoo, Microsoft) use an app password");
            step_fix(s, "Microsoft 365: SMTP AUTH must be enabled for the mailbox (Set-CASMailbox -Identity USER "
                        "-SmtpClientAuthenticationDisabled $false)");
        }
        break;
    case AUTH_RES_WEB_LOGIN:
        step_cause(s, "the server wants a stronger login than this password: an app password, a login in the "
                      "web browser first, or OAuth2");
        step_fix(s, "create an app password in the account's security settings and use it instead");
        step_fix(s, "or log in with OAuth2: --oauth-token-file FILE (XOAUTH2 / OAUTHBEARER)");
        step_fix(s, "Gmail: open https://accounts.google.com/DisplayUnlockCaptcha, or follow the link in the "
                    "reply text");
        break;
    case AUTH_RES_TEMPORARY:
        step_cause(s, "temporary authentication failure: the server could not check the credentials (its "
                      "password backend is down or slow, or it is rate-limiting this client)");
        step_fix(s, "try again in a few minutes");
        step_fix(s, "on the server: is the SASL backend running? Postfix logs 'SASL authentication failure'; "
                    "check smtpd_sasl_path and the Dovecot auth socket or saslauthd");
        break;
    case AUTH_RES_TLS_REQUIRED:
        step_cause(s, "the server wants TLS before this mechanism, and does not consider this connection "
                      "encrypted");
        step_fix(s, "use STARTTLS (port 587) or implicit TLS (port 465); check that the server's TLS setup "
                    "works (Postfix: smtpd_tls_security_level, smtpd_tls_auth_only)");
        break;
    case AUTH_RES_AUTH_REQUIRED:
        step_cause(s, "530: the server wants authentication of another kind first (or the account may not "
                      "use SMTP)");
        step_fix(s, "check that SMTP submission is enabled for the account at the provider");
        break;
    case AUTH_RES_MECH_REFUSED:
        step_cause(s, "the server does not accept the %s mechanism although it may announce it", mech);
        step_fix(s, "try another mechanism with --mech (see the mechanisms listed in this step)");
        break;
    case AUTH_RES_NO_AUTH:
        step_cause(s, "the server has no AUTH command in this state: authentication is disabled on this port");
        step_fix(s, "Postfix: set -o smtpd_sasl_auth_enable=yes on the submission service in master.cf");
        break;
    case AUTH_RES_SYNTAX:
        step_cause(s, "the server could not decode the authentication data, or the exchange was cancelled");
        step_fix(s, "run with --verbose to see the exchange; passwords with unusual characters may need "
                    "another mechanism (--mech LOGIN)");
        break;
    case AUTH_RES_OK:
    case AUTH_RES_OTHER:
        step_cause(s, "the server refused the login");
        step_fix(s, "read the reply text; the server's log says more");
        break;
    }
}

/* ---- certificates, keys, protocols ----------------------------------------- */

static const char *const cert_time_names[] = {"valid", "expiring", "expired", "not-yet-valid"};

const char *cert_time_name(enum cert_time t)
{
    if ((int)t < 0 || (size_t)t >= ARRAY_LEN(cert_time_names))
        return "expired";
    return cert_time_names[t];
}

enum cert_time cert_time_classify(long long not_before, long long not_after, long long now, int warn_days,
                                  long long *days_left)
{
    long long left = not_after - now;
    /* whole days, rounding towards minus infinity: 1 second past is day -1 */
    long long days = left >= 0 ? left / 86400 : -((-left + 86399) / 86400);
    if (days_left)
        *days_left = days;
    if (now > not_after)
        return CERT_TIME_EXPIRED;
    if (now < not_before)
        return CERT_TIME_NOT_YET_VALID;
    if (left < (long long)warn_days * 86400)
        return CERT_TIME_EXPIRING;
    return CERT_TIME_OK;
}

enum verdict key_verdict(const char *type, int bits)
{
    if (!type)
        return VERDICT_WARN;
    if (strcmp(type, "RSA") == 0 || strcmp(type, "RSA-PSS") == 0 || strcmp(type, "DSA") == 0 ||
        strcmp(type, "DH") == 0)
        return bits >= 2048 ? VERDICT_OK : VERDICT_FAIL;
    if (strcmp(type, "EC") == 0)
        return bits >= 224 ? VERDICT_OK : VERDICT_FAIL;
    if (strcmp(type, "ED25519") == 0 || strcmp(type, "ED448") == 0)
        return VERDICT_OK;
    return VERDICT_WARN;
}

enum verdict tls_version_verdict(int version)
{
    return version == TLS1_2_VERSION || version == TLS1_3_VERSION ? VERDICT_OK : VERDICT_FAIL;
}

/* ---- transactions ------------------------------------------------------------ */

static int id_char(char c)
{
    return isalnum((unsigned char)c) || c == '-' || c == '.' || c == '_' || c == '@';
}

/* Copies the id-like token at p into out (0), or -1 when there is none. */
static int take_token(const char *p, char *out, size_t n)
{
    size_t len = 0;
    while (p[len] && id_char(p[len]))
        len++;
    while (len > 0 && (p[len - 1] == '.' || p[len - 1] == '-'))
        len--; /* "queued as ABC." */
    if (len == 0 || len >= n)
        return -1;
    memcpy(out, p, len);
    out[len] = '\0';
    return 0;
}

int queue_id_from_reply(const char *text, char *out, size_t n)
{
    static const char *const markers[] = {"queued as ", "id="};
    for (size_t m = 0; m < ARRAY_LEN(markers); m++) {
        size_t ml = strlen(markers[m]);
        for (const char *p = text; *p && *p != '\n'; p++)
            if (strncasecmp(p, markers[m], ml) == 0 && take_token(p + ml, out, n) == 0)
                return 0;
    }
    /* the last word of the first line */
    const char *end = strchr(text, '\n');
    if (!end)
        end = text + strlen(text);
    while (end > text && end[-1] == ' ')
        end--;
    const char *start = end;
    while (start > text && start[-1] != ' ')
        start--;
    size_t len = (size_t)(end - start);
    if (len < 6 || len >= n)
        return -1;
    int digits = 0;
    for (const char *p = start; p < end; p++) {
        if (!id_char(*p))
            return -1;
        if (isdigit((unsigned char)*p))
            digits = 1;
    }
    if (!digits) /* "Ok", "accepted", "delivery" are words, not ids */
        return -1;
    memcpy(out, start, len);
    out[len] = '\0';
    return 0;
}

void advise_transaction(struct step *s, const char *what, int code, const char *enh, const char *text)
{
    if (!enh)
        enh = "";
    if (!text)
        text = "";
    s->verdict = VERDICT_FAIL;
    if (code == 530 || strcmp(enh, "5.7.0") == 0 || has_word(text, "authentication required")) {
        step_cause(s, "the server wants a login before %s", what);
        step_fix(s, "give credentials: --user USER --password-file FILE");
    } else if (strcmp(what, "MAIL") == 0 && (strcmp(enh, "5.7.1") == 0 || code == 553)) {
        step_cause(s, "the server does not let this login send as this sender address");
        step_fix(s, "use --from with an address the account owns (or ask the administrator to allow it)");
    } else if (strcmp(what, "RCPT") == 0 && (has_word(text, "relay") || strcmp(enh, "5.7.1") == 0)) {
        step_cause(s, "relaying denied: the server does not accept this recipient from this (unauthenticated?) "
                      "client");
        step_fix(s, "log in first (--user, --password-file); on port 25 only local recipients are accepted");
    } else if (strcmp(what, "RCPT") == 0 && (code == 550 || code == 551) && strncmp(enh, "5.1.", 4) == 0) {
        step_cause(s, "the recipient address is unknown or refused");
        step_fix(s, "check the --send-to address");
    } else if (code == 552 || strcmp(enh, "5.3.4") == 0) {
        step_cause(s, "the message is too big for the server");
    } else if (code >= 400 && code < 500) {
        step_cause(s, "temporary failure at %s: the server asks to try again later (greylisting, load, rate "
                      "limits, or a full disk)", what);
        step_fix(s, "try again in a few minutes; the server's log says why");
    } else {
        step_cause(s, "the server refused %s", what);
        step_fix(s, "read the reply text; the server's log says more");
    }
}
