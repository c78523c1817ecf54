"""Trusted client networks (listener `trusted`, docs/config.md): a client
from a trusted network of the listener it connected to sends without
STARTTLS and AUTH (smtplib in plain text; DATA and BDAT; the null sender;
any sender, any recipient domain), its message is delivered with
`with ESMTP` (ESMTPS after STARTTLS) and no auth user, the queued line says
trusted=yes; with AUTH the account's rules apply again; another listener
of the same daemon, or a client outside the networks, still gets 530; AUTH
still needs TLS; `submitd -t` refuses `trusted` on port 587 and /0
networks at their lines; the per-account rate limits count a trusted
client by its address (exempt networks count nothing), and detection of
compromised accounts does not apply to it."""

import re
import smtplib

from harness import ALICE, SMTPClient, assert_delivered, assert_reply, free_port, make_msg, pw, submitctl
from test_abuse import ratelimit
from test_clients import TIMEOUT, smtplib_send
from test_config import check_config, line_of

APP = "cron@app.test"  # no account owns it


def listener(name, port, *extra, mode="starttls"):
    return {"name": name, "addresses": ["127.0.0.1"], "port": port, "mode": mode, "extra": list(extra)}


def trusted_daemon(make_daemon, extra="", start=True):
    """`local` trusts 127.0.0.0/8 (d.port), `other` only 127.0.0.2."""
    return make_daemon(start=start, extra=extra,
                       listeners=[listener("local", free_port(), "trusted 127.0.0.0/8"),
                                  listener("other", free_port(), "trusted 127.0.0.2/32")])


def connect(d, src="127.0.0.1", port=None):
    """A plain-text client from src to port (default: `local`), past the greeting and EHLO."""
    c = SMTPClient(port or d.port, certs=d.certs, source=src)
    c.expect_greeting()
    c.ehlo()
    return c


def no_user_for(d, qid):
    """Every log line of the message (session, queue, delivery) lacks user=."""
    lines = d.log_lines(rf"qid={qid}")
    assert lines
    assert not [l for l in lines if " user=" in l], lines


def test_plaintext_smtplib_delivers_without_auth_user(make_daemon):
    d = trusted_daemon(make_daemon)
    rcpt = "someone@elsewhere.test"
    msg = make_msg(APP, rcpt, "trusted-plain")
    with smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.test", timeout=TIMEOUT) as s:
        code, _ = s.ehlo()
        assert code == 250
        assert s.has_extn("starttls"), "STARTTLS is still offered"
        assert not s.has_extn("auth"), "AUTH advertised before TLS"
        qid = smtplib_send(s, APP, [rcpt], msg)
    files = d.wait_mail(1, rcpt)
    assert len(files) == 1
    assert_delivered(files[0], APP, rcpt, msg, qid=qid, proto="ESMTP")
    line = d.wait_log(rf"event=queued .*qid={qid} from=<{re.escape(APP)}> nrcpt=1 size=\d+ trusted=yes")
    assert " user=" not in line, line
    d.wait_log(rf"event=delivered qid={qid} rcpt={re.escape(rcpt)} ")
    no_user_for(d, qid)
    assert d.log_lines(r"event=session\.start .*listener=local trusted=yes")


def test_plaintext_raw_null_sender_bdat_and_auth_needs_tls(make_daemon):
    d = trusted_daemon(make_daemon)
    with connect(d) as c:
        assert "STARTTLS" in c.exts and not [e for e in c.exts if e.startswith("AUTH")]
        # AUTH keeps today's rule: only after TLS
        c.check("AUTH PLAIN AGFsaWNlAHg=", 530, "5.7.0")
        # the null sender (allow-null-sender yes) and BDAT
        c.check("MAIL FROM:<>", 250, "2.1.0")
        c.check("RCPT TO:<bdat@dest.test>", 250, "2.1.5")
        body = make_msg("mailer-daemon@app.test", "bdat@dest.test", "trusted-bdat")
        c.send(f"BDAT {len(body)} LAST\r\n".encode() + body)
        r = c.expect(250, "2.0.0")
        qid = r.text.split()[-1]
        # then DATA from any sender, two recipient domains
        rcpts = ["one@a.test", "two@b.test"]
        msg = make_msg("web@shop.test", rcpts[0], "trusted-data")
        qid2 = c.send_mail("web@shop.test", rcpts, msg)
    assert_delivered(d.wait_mail(1, "bdat@dest.test")[0], "", "bdat@dest.test", body, qid=qid, proto="ESMTP")
    for r in rcpts:
        assert_delivered(d.wait_mail(1, r)[0], "web@shop.test", r, msg, qid=qid2, proto="ESMTP")
    no_user_for(d, qid)
    no_user_for(d, qid2)


def test_trusted_with_starttls_and_with_auth(make_daemon):
    d = trusted_daemon(make_daemon)
    with connect(d) as c:
        c.starttls()
        c.ehlo()
        assert [e for e in c.exts if e.startswith("AUTH")]
        msg = make_msg(APP, "tls@dest.test", "trusted-tls")
        qid = c.send_mail(APP, ["tls@dest.test"], msg)
        # AUTH on a trusted connection: the account's rules apply
        c.auth_plain(ALICE, pw(ALICE))
        r = c.cmd(f"MAIL FROM:<{APP}>")
        assert_reply(r, 553, "5.7.1")
        msg2 = make_msg(ALICE, "auth@dest.test", "trusted-auth")
        qid2 = c.send_mail(ALICE, ["auth@dest.test"], msg2)
    assert_delivered(d.wait_mail(1, "tls@dest.test")[0], APP, "tls@dest.test", msg, qid=qid, proto="ESMTPS")
    assert_delivered(d.wait_mail(1, "auth@dest.test")[0], ALICE, "auth@dest.test", msg2, qid=qid2)
    line = d.wait_log(rf"event=queued .*user=alice@example\.test qid={qid2} ")
    assert "trusted=" not in line, line
    assert d.log_lines(rf"event=queued .*qid={qid} .*trusted=yes")


def test_untrusted_listener_and_address_still_need_tls_and_auth(make_daemon):
    d = trusted_daemon(make_daemon)
    other = d.listeners[1]["port"]
    with connect(d, port=other) as c:  # 127.0.0.1 is not in `other`'s 127.0.0.2/32
        c.check(f"MAIL FROM:<{APP}>", 530, "5.7.0")
        assert c.cmd("DATA").text == "5.7.0 Must issue a STARTTLS command first"
        c.starttls()
        c.ehlo()
        r = c.check(f"MAIL FROM:<{APP}>", 530, "5.7.0")
        assert r.text == "5.7.0 Authentication required", r
        c.check("RCPT TO:<x@dest.test>", 530, "5.7.0")
    with connect(d, src="127.0.0.2", port=other) as c:  # the one address `other` trusts
        c.check(f"MAIL FROM:<{APP}>", 250, "2.1.0")
    starts = d.log_lines(r"event=session\.start .*listener=other")
    assert len(starts) == 2 and len([l for l in starts if "trusted=yes" in l]) == 1, starts


def test_check_refuses_trusted_on_587_and_open_networks(make_daemon):
    d = make_daemon(start=False, listeners=[listener("sub", 587, "trusted 127.0.0.1/32"),
                                            listener("local", free_port(), "trusted 10.0.0.0/8",
                                                     "trusted 0.0.0.0/0", "trusted ::/0")])
    text = d.conf.read_text()
    p = check_config(d.conf)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    want = {line_of(text, "trusted 127.0.0.1/32"): "`trusted` is not allowed on listener `sub`: port 587 is for "
                                                    "submission, where MAIL needs TLS and AUTH; add a separate "
                                                    "listener for local applications (for example port 25 or 10025 "
                                                    "with address 127.0.0.1)",
            line_of(text, "trusted 0.0.0.0/0"): "`trusted 0.0.0.0/0` would trust every client address (an open "
                                                "relay)",
            line_of(text, "trusted ::/0"): "`trusted ::/0` would trust every client address (an open relay)"}
    lines = out.splitlines()
    for n, msg in want.items():
        assert any(l.startswith(f"{d.conf}:{n}: {msg}") for l in lines), (n, msg, out)
    assert len([l for l in lines if l.startswith(f"{d.conf}:")]) == 3, out


def test_rate_limits_count_trusted_clients_by_address(make_daemon):
    d = trusted_daemon(make_daemon, extra=ratelimit("messages 3/1m", "recipients 4/1m", "exempt 127.0.0.4/32"))
    with connect(d) as c:
        c.send_mail(APP, ["r1@dest.test"], make_msg(APP, "r1@dest.test", "rl"))
        c.check(f"MAIL FROM:<{APP}>", 250, "2.1.0")
        for i in range(2, 5):
            c.check(f"RCPT TO:<r{i}@dest.test>", 250, "2.1.5")
        r = c.cmd("RCPT TO:<r5@dest.test>")
        assert_reply(r, 451, "4.7.1")
        assert r.text.startswith("4.7.1 Rate limit exceeded: recipients per client address (limit 4/1m); try "
                                 "again in "), r
        c.check("RSET", 250, "2.0.0")
        c.check(f"MAIL FROM:<{APP}>", 250, "2.1.0")
        c.check("RSET", 250, "2.0.0")
        r = c.cmd(f"MAIL FROM:<{APP}>")
        assert_reply(r, 451, "4.7.1")
        assert "messages per client address (limit 3/1m)" in r.text, r
    d.wait_log(r"event=ratelimit\.exceeded .*limit=messages key=m:ip:127\.0\.0\.1 max=3/1m used=3")
    d.wait_log(r"event=ratelimit\.exceeded .*limit=recipients key=r:ip:127\.0\.0\.1 max=4/1m used=4")
    # another address has its own count; an account its own; an exempt network none
    with connect(d, src="127.0.0.3") as c:
        c.check(f"MAIL FROM:<{APP}>", 250, "2.1.0")
    with connect(d) as c:
        c.starttls()
        c.ehlo()
        c.auth_plain(ALICE, pw(ALICE))
        c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
    with connect(d, src="127.0.0.4") as c:
        for _ in range(5):
            c.check(f"MAIL FROM:<{APP}>", 250, "2.1.0")
            c.check("RSET", 250, "2.0.0")
    out = submitctl(["-c", str(d.conf), "limits", "show", "ip:127.0.0.1"]).stdout
    assert "as a trusted client without AUTH (listener `trusted`):" in out, out
    assert re.search(r"^messages 3 of 3/1m, all back in \d+ s$", out, re.M), out
    assert "reset ip:127.0.0.1" in submitctl(["-c", str(d.conf), "limits", "reset", "ip:127.0.0.1"]).stdout
    with connect(d) as c:
        c.check(f"MAIL FROM:<{APP}>", 250, "2.1.0")


def test_detection_does_not_apply_to_trusted_clients(make_daemon):
    d = trusted_daemon(make_daemon, extra=ratelimit("action suspend", "min-messages 3", "min-recipients 1000",
                                                    "max-ips 0", block="abuse"))
    with connect(d) as c:
        for i in range(5):
            c.send_mail(APP, [f"burst{i}@dest.test"], make_msg(APP, f"burst{i}@dest.test", "burst"))
    for i in range(5):
        d.wait_mail(1, f"burst{i}@dest.test")
    assert not d.log_lines(r"event=abuse\."), d.log_lines(r"event=abuse\.")
