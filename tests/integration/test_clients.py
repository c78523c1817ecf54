"""Real clients against the real daemon: Python smtplib (STARTTLS, implicit
TLS, AUTH PLAIN and LOGIN), swaks, curl, msmtp and openssl s_client.
Delivered Maildir files are checked byte for byte."""

import re
import smtplib
import subprocess

import pytest

from harness import (ALICE, ARGON, BOB, QUEUED_RE, assert_delivered, pw, tls_context,
                     make_msg)

TIMEOUT = 60


def smtplib_send(s, frm, rcpts, msg):
    """sendmail through smtplib, returning the queue id from the 250 reply."""
    s.mail(frm)
    for r in rcpts:
        code, text = s.rcpt(r)
        assert code == 250 and text.startswith(b"2.1.5"), (code, text)
    code, text = s.data(msg)
    assert code == 250, (code, text)
    m = QUEUED_RE.match(text.decode())
    assert m, text
    return m.group(1)


def test_smtplib_starttls_plain_two_recipients(srv):
    msg = make_msg(ALICE, "r1@dest.test", "smtplib-starttls")
    with smtplib.SMTP("127.0.0.1", srv.port, local_hostname="client.test", timeout=TIMEOUT) as s:
        code, _ = s.ehlo()
        assert code == 250
        assert s.has_extn("starttls")
        assert not s.has_extn("auth"), "AUTH advertised before TLS"
        code, text = s.starttls(context=tls_context(srv.certs))
        assert code == 220 and text.startswith(b"2.0.0"), (code, text)
        s.ehlo()
        assert s.has_extn("auth")
        assert set(s.esmtp_features["auth"].upper().split()) >= {"PLAIN", "LOGIN"}
        for ext in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes",
                    "chunking", "dsn"):
            assert s.has_extn(ext), ext
        assert not s.has_extn("starttls"), "STARTTLS still advertised after TLS"
        code, text = s.login(ALICE, pw(ALICE))
        assert code == 235 and text.startswith(b"2.7.0"), (code, text)
        qid = smtplib_send(s, ALICE, ["r1@dest.test", "r2@dest.test"], msg)
    for rcpt in ("r1@dest.test", "r2@dest.test"):
        files = srv.wait_mail(1, rcpt)
        assert len(files) == 1
        assert_delivered(files[0], ALICE, rcpt, msg, qid=qid, secrets=[pw(ALICE)])
        # one log line per delivered recipient, naming it and the transport
        srv.wait_log(rf"level=info event=delivered qid={qid} rcpt={re.escape(rcpt)} transport=local ")
    srv.wait_log(rf"event=queued .*qid={qid} from=<{re.escape(ALICE)}> nrcpt=2 ")


def test_smtplib_implicit_tls(srv):
    msg = make_msg(ALICE, "implicit@dest.test", "smtplib-implicit")
    with smtplib.SMTP_SSL("127.0.0.1", srv.tls_port, local_hostname="client.test",
                          context=tls_context(srv.certs), timeout=TIMEOUT) as s:
        s.ehlo()
        assert s.has_extn("auth")
        assert not s.has_extn("starttls")
        s.login(ALICE, pw(ALICE))
        qid = smtplib_send(s, ALICE, ["implicit@dest.test"], msg)
    files = srv.wait_mail(1, "implicit@dest.test")
    assert len(files) == 1
    assert_delivered(files[0], ALICE, "implicit@dest.test", msg, qid=qid, secrets=[pw(ALICE)])


def test_smtplib_auth_login_argon2(srv):
    msg = make_msg(ARGON, "login@dest.test", "smtplib-login")
    with smtplib.SMTP("127.0.0.1", srv.port, local_hostname="client.test", timeout=TIMEOUT) as s:
        s.starttls(context=tls_context(srv.certs))
        s.ehlo()
        s.user, s.password = ARGON, pw(ARGON)
        code, text = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        assert code == 235 and text.startswith(b"2.7.0"), (code, text)
        qid = smtplib_send(s, ARGON, ["login@dest.test"], msg)
    files = srv.wait_mail(1, "login@dest.test")
    assert_delivered(files[0], ARGON, "login@dest.test", msg, qid=qid, secrets=[pw(ARGON)])


def test_smtplib_auth_login_initial_response(srv):
    with smtplib.SMTP("127.0.0.1", srv.port, local_hostname="client.test", timeout=TIMEOUT) as s:
        s.starttls(context=tls_context(srv.certs))
        s.ehlo()
        s.user, s.password = BOB, pw(BOB)
        code, text = s.auth("LOGIN", s.auth_login, initial_response_ok=True)
        assert code == 235 and text.startswith(b"2.7.0"), (code, text)


# ---------------------------------------------------------------- swaks

def write_msg(tmp_path, name, msg):
    p = tmp_path / name
    p.write_bytes(msg)
    return p


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_swaks_starttls(srv, tmp_path, mech):
    rcpt = f"swaks-{mech.lower()}@dest.test"
    msg = make_msg(ALICE, rcpt, f"swaks-{mech}")
    # swaks ends the data with its own CRLF
    f = write_msg(tmp_path, "msg.eml", msg[:-2])
    p = subprocess.run(["swaks", "--server", f"127.0.0.1:{srv.port}", "--tls", "--auth", mech,
                        "--auth-user", ALICE, "--auth-password", pw(ALICE), "--helo", "client.test",
                        "--from", ALICE, "--to", rcpt, "--data", "@" + str(f), "--timeout", "30"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"<~\s+235 2\.7\.0", p.stdout), p.stdout
    m = re.search(r"<~\s+250 2\.0\.0 Ok: queued as ([0-9A-Z]{16})", p.stdout)
    assert m, p.stdout
    files = srv.wait_mail(1, rcpt)
    assert len(files) == 1
    assert_delivered(files[0], ALICE, rcpt, msg, qid=m.group(1), secrets=[pw(ALICE)])


def test_swaks_implicit_tls(srv, tmp_path):
    rcpt = "swaks-tlsc@dest.test"
    msg = make_msg(ALICE, rcpt, "swaks-tlsc")
    f = write_msg(tmp_path, "msg.eml", msg[:-2])
    p = subprocess.run(["swaks", "--server", f"127.0.0.1:{srv.tls_port}", "--tlsc", "--auth", "PLAIN",
                        "--auth-user", ALICE, "--auth-password", pw(ALICE), "--helo", "client.test",
                        "--from", ALICE, "--to", rcpt, "--data", "@" + str(f), "--timeout", "30"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stdout + p.stderr
    m = re.search(r"<~\s+250 2\.0\.0 Ok: queued as ([0-9A-Z]{16})", p.stdout)
    assert m, p.stdout
    files = srv.wait_mail(1, rcpt)
    assert_delivered(files[0], ALICE, rcpt, msg, qid=m.group(1), secrets=[pw(ALICE)])


# ---------------------------------------------------------------- curl

@pytest.mark.parametrize("scheme", ["smtp", "smtps"])
def test_curl(srv, tmp_path, scheme):
    rcpt = f"curl-{scheme}@dest.test"
    msg = make_msg(ALICE, rcpt, f"curl-{scheme}")
    f = write_msg(tmp_path, "msg.eml", msg)
    port = srv.port if scheme == "smtp" else srv.tls_port
    p = subprocess.run(["curl", "-sS", "-v", "--ssl-reqd", "--cacert", str(srv.certs["ecdsa_crt"]),
                        f"{scheme}://127.0.0.1:{port}/client.test", "--user", f"{ALICE}:{pw(ALICE)}",
                        "--mail-from", ALICE, "--mail-rcpt", rcpt, "--upload-file", str(f),
                        "--max-time", "30"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stdout + p.stderr
    m = re.search(r"< 250 2\.0\.0 Ok: queued as ([0-9A-Z]{16})", p.stderr)
    assert m, p.stderr
    files = srv.wait_mail(1, rcpt)
    assert len(files) == 1
    assert_delivered(files[0], ALICE, rcpt, msg, qid=m.group(1), secrets=[pw(ALICE)])


# ---------------------------------------------------------------- msmtp

def test_msmtp(srv, tmp_path):
    rcpt = "msmtp@dest.test"
    msg = make_msg(BOB, rcpt, "msmtp")
    rc = tmp_path / "msmtprc"
    rc.write_text("\n".join([
        "defaults",
        "account test",
        "host 127.0.0.1",
        f"port {srv.port}",
        "domain client.test",
        "tls on",
        "tls_starttls on",
        f"tls_trust_file {srv.certs['ecdsa_crt']}",
        "auth on",
        f"user {BOB}",
        f"password {pw(BOB)}",
        f"from {BOB}",
        f"logfile {tmp_path / 'msmtp.log'}",
        "account default : test",
        "",
    ]))
    rc.chmod(0o600)
    p = subprocess.run(["msmtp", "-C", str(rc), "-v", rcpt], input=msg.replace(b"\r\n", b"\n"),
                       capture_output=True, timeout=TIMEOUT)
    out = (p.stdout + p.stderr).decode("utf-8", "replace")
    assert p.returncode == 0, out
    m = re.search(r"<-- 250 2\.0\.0 Ok: queued as ([0-9A-Z]{16})", out)
    assert m, out
    files = srv.wait_mail(1, rcpt)
    assert len(files) == 1
    assert_delivered(files[0], BOB, rcpt, msg, qid=m.group(1), secrets=[pw(BOB)])


# ---------------------------------------------------------------- openssl s_client

def s_client(port, cafile, extra, stdin, timeout=30):
    env = {"PATH": "/usr/bin:/bin", "OPENSSL_CONF": "/dev/null"}
    return subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}",
                           "-quiet", "-crlf", "-CAfile", str(cafile), "-verify_return_error"] + extra,
                          input=stdin, capture_output=True, text=True, timeout=timeout, env=env)


def test_openssl_s_client_starttls_shows_auth(srv):
    p = s_client(srv.port, srv.certs["ecdsa_crt"], ["-servername", "localhost"],
                 "EHLO client.test\nQUIT\n")
    # (the exit code depends on whether the server sends close_notify
    # after 221; the dialogue is what matters)
    lines = p.stdout.splitlines()
    assert "250-mx.test Hello [127.0.0.1]" in lines or any(
        l.startswith("250-mx.test Hello") for l in lines), p.stdout
    assert any(re.match(r"^250[- ]AUTH PLAIN LOGIN$", l) for l in lines), p.stdout
    assert not any("STARTTLS" in l for l in lines), p.stdout
    assert any(re.match(r"^221 2\.0\.0", l) for l in lines), p.stdout


def test_openssl_s_client_tls12_works(srv):
    p = s_client(srv.port, srv.certs["ecdsa_crt"], ["-tls1_2"], "EHLO client.test\nQUIT\n")
    assert "Protocol  : TLSv1.2" in p.stdout or "verify return:1" in p.stderr, p.stdout + p.stderr
    assert any(re.match(r"^221 2\.0\.0", l) for l in p.stdout.splitlines()), p.stdout
    assert any(re.match(r"^250[- ]AUTH PLAIN LOGIN$", l) for l in p.stdout.splitlines()), p.stdout


def test_openssl_s_client_tls11_refused(srv):
    # SECLEVEL=0 and no system openssl.cnf so that the client really offers
    # TLS 1.1: the refusal must come from the server.
    p = s_client(srv.port, srv.certs["ecdsa_crt"], ["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"],
                 "EHLO client.test\nQUIT\n")
    assert p.returncode != 0, p.stdout + p.stderr
    assert "AUTH" not in p.stdout
    assert re.search(r"alert|unsupported protocol|handshake failure|wrong version",
                     p.stderr, re.I), p.stderr
    srv.assert_alive()
