"""submitcheck (tools/submitcheck.c, src/check/) end to end: against
submitd itself (all green, login, test message delivered, wrong password,
masked --verbose, password sources, --ports comparison), a private
Debian Postfix configured for submission (stock: old TLS versions and
anonymous ciphers flagged; hardened: all green), an aiosmtpd server that
accepts AUTH before TLS, fake servers with an expired / soon expiring /
wrongly named certificate, TLS 1.0 only (STARTTLS and implicit), the
STARTTLS command injection bug, chosen AUTH replies (535/534/454/530), a
closed port, a filtered port, a port that never greets, DNS through a
loopback dnsmasq (--resolver, MX), and usage errors. Every --json report
is validated against docs/submitcheck.schema.json and its exit_code
checked against the process exit status."""

import datetime
import json
import os
import re
import ssl
import subprocess
import time

import jsonschema
import pytest

import privpostfix
from fakesmtp import FakeSMTP, FilteredPort, SilentPort, closed_port, server_tls_context
from harness import (ALICE, BOB, BUILD, REPO, SAN, SAN_PATTERNS, SLOW, DnsServer, Receiver, free_port, pw,
                     san_env)

SUBMITCHECK = BUILD / "submitcheck"
SCHEMA = json.loads((REPO / "docs" / "submitcheck.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
PORT_STEPS = ["connect", "greeting", "ehlo", "auth-before-tls", "tls", "certificate", "tls-versions", "tls-ciphers",
              "starttls-injection", "auth", "send"]
IMPLICIT_STEPS = ["connect", "tls", "greeting", "ehlo", "certificate", "tls-versions", "tls-ciphers",
                  "starttls-injection", "auth", "send"]


def run(args, env=None, timeout=30, json_out=True):
    """Runs submitcheck; returns (process, report). The report is validated
    against the schema and its exit_code must be the exit status."""
    assert os.access(SUBMITCHECK, os.X_OK), f"not built: {SUBMITCHECK}"
    e = san_env()
    e.pop("SUBMITCHECK_PASSWORD", None)
    e.update(env or {})
    cmd = [str(SUBMITCHECK)] + [str(a) for a in args] + (["--json"] if json_out else [])
    # no controlling terminal: a password prompt cannot block the test
    p = subprocess.run(cmd, capture_output=True, text=True, env=e, stdin=subprocess.DEVNULL,
                       timeout=timeout * SLOW, start_new_session=True)
    if SAN:
        bad = [l for l in p.stderr.splitlines() if any(x in l for x in SAN_PATTERNS)]
        assert not bad, "sanitizer report:\n" + p.stderr
    report = None
    if json_out and p.returncode != 3:
        assert p.stdout, f"no output, rc {p.returncode}, stderr:\n{p.stderr}"
        report = json.loads(p.stdout)
        errors = sorted(VALIDATOR.iter_errors(report), key=lambda x: list(x.path))
        assert not errors, "schema: " + "; ".join(f"{list(x.path)}: {x.message}" for x in errors[:5])
        assert report["exit_code"] == p.returncode, (p.returncode, p.stdout)
    return p, report


def steps(report, i=0):
    return {s["id"]: s for s in report["ports"][i]["steps"]}


def verdicts(report, i=0):
    return {s["id"]: s["verdict"] for s in report["ports"][i]["steps"]}


def expect(report, i=0, default="ok", **want):
    """Asserts every step's verdict: `default` unless named (ids with '_'
    for '-'), e.g. expect(r, tls="fail", send="skip")."""
    got = verdicts(report, i)
    exp = {k: want.get(k.replace("-", "_"), default) for k in got}
    assert got == exp, json.dumps(report["ports"][i]["steps"], indent=1)[:6000]


def secret_file(tmp_path, name, text):
    f = tmp_path / name
    f.write_text(text + "\n")
    os.chmod(f, 0o600)
    return f


# ---- certificates ---------------------------------------------------------------------------


def make_cert(d, name, cn, dns=(), ips=(), days_from=-1, days_to=365, issuer=None, ca=True):
    """An ECDSA P-256 certificate (python3-cryptography) valid from
    now+days_from to now+days_to, self-signed unless issuer=(crt, key)
    paths of the CA that signs it. Returns (crt, key) paths."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    sign_key, issuer_name = key, subject
    if issuer:
        icert = x509.load_pem_x509_certificate(issuer[0].read_bytes())
        sign_key = serialization.load_pem_private_key(issuer[1].read_bytes(), None)
        issuer_name = icert.subject
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    sans = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now + datetime.timedelta(days=days_from))
         .not_valid_after(now + datetime.timedelta(days=days_to))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = b.sign(sign_key, hashes.SHA256())
    crt, k = d / f"{name}.crt", d / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    os.chmod(k, 0o600)
    return crt, k


@pytest.fixture(scope="module")
def tlsfiles(tmp_path_factory):
    d = tmp_path_factory.mktemp("sc-certs")
    files = {
        "expired": make_cert(d, "expired", "localhost", ["localhost"], ["127.0.0.1"], -30, -2),
        "expiring": make_cert(d, "expiring", "localhost", ["localhost"], ["127.0.0.1"], -30, 5),
        "othername": make_cert(d, "othername", "other.example", ["other.example"]),
    }
    root = make_cert(d, "root", "Test Root CA")
    inter = make_cert(d, "inter", "Test Intermediate CA", issuer=root)
    leaf = make_cert(d, "leaf", "localhost", ["localhost"], ["127.0.0.1"], issuer=inter, ca=False)
    full = d / "fullchain.crt"
    full.write_bytes(leaf[0].read_bytes() + inter[0].read_bytes())
    files.update({"root": root, "leaf": leaf, "fullchain": (full, leaf[1])})
    return files


def fake(certs, **kw):
    crt, key = kw.pop("cert", (certs["ecdsa_crt"], certs["ecdsa_key"]))
    ctx = server_tls_context(crt, key, kw.pop("min_version", None), kw.pop("max_version", None),
                             kw.pop("ciphers", None))
    return FakeSMTP(ctx, **kw)


# ---- submitd ------------------------------------------------------------------------------------


def test_submitd_all_green(srv, certs):
    p, r = run([f"127.0.0.1:{srv.port}", "--ca", certs["ecdsa_crt"]])
    assert p.returncode == 0, p.stdout
    assert r["verdict"] == "ok" and r["host"] == "127.0.0.1"
    assert [s["id"] for s in r["steps"]] == ["dns"]
    assert [s["id"] for s in r["ports"][0]["steps"]] == PORT_STEPS
    expect(r, send="skip")
    st = steps(r)
    assert st["tls"]["facts"]["protocol"] == "TLSv1.3"
    assert st["certificate"]["facts"]["chain_verified"] is True
    assert st["certificate"]["facts"]["hostname_match"] is True
    assert st["certificate"]["facts"]["key_type"] == "EC"
    assert st["tls-versions"]["facts"] == {"best_protocol": "TLSv1.3", "tls1_1": False, "tls1_0": False}
    assert st["tls-ciphers"]["facts"]["weak_probe_run"] is True
    assert "weak_cipher" not in st["tls-ciphers"]["facts"]
    assert st["starttls-injection"]["facts"]["result"] == "not-vulnerable"
    assert st["auth-before-tls"]["facts"]["offered"] is False
    assert st["auth-before-tls"]["facts"]["accepted"] is False
    assert st["auth"]["facts"]["auth_mechanisms"] == ["PLAIN", "LOGIN"]
    assert st["ehlo"]["facts"]["starttls"] is True and st["ehlo"]["facts"]["pipelining"] is True
    assert r["counts"] == {"skip": 1, "ok": 11, "warn": 0, "fail": 0}

    # the same as text: one line per step, then the result
    p, _ = run([f"127.0.0.1:{srv.port}", "--ca", certs["ecdsa_crt"]], json_out=False)
    assert p.returncode == 0
    lines = p.stdout.splitlines()
    assert lines[0] == f"submitcheck 127.0.0.1, port {srv.port}"
    assert lines[1].startswith("  ok    dns ")
    assert lines[2] == f"port {srv.port} (STARTTLS)"
    assert [l.split()[1] for l in lines[3:14]] == PORT_STEPS
    assert re.match(r"^result: OK \(0 failures, 0 warnings, 11 ok, 1 skipped\) in \d+ ms$", lines[-1])


def test_submitd_self_signed_without_ca(srv):
    """Without --ca the test certificate is what it is: self-signed."""
    p, r = run([f"127.0.0.1:{srv.port}", "--no-probe"])
    assert p.returncode == 2
    expect(r, certificate="fail", tls_versions="skip", tls_ciphers="skip", starttls_injection="skip",
           send="skip")
    c = steps(r)["certificate"]
    assert c["facts"]["chain_verified"] is False and c["facts"]["self_signed"] is True
    assert "self-signed" in c["cause"]
    assert any("--ca" in f for f in c["fix"])


def test_submitd_login_and_message(srv, certs, tmp_path):
    pwf = secret_file(tmp_path, "pw", pw(ALICE))
    p, r = run([f"127.0.0.1:{srv.tls_port}", "--tls", "--ca", certs["ecdsa_crt"], "--user", ALICE,
                "--password-file", pwf, "--send-to", BOB])
    assert p.returncode == 0, p.stdout
    assert [s["id"] for s in r["ports"][0]["steps"]] == IMPLICIT_STEPS
    expect(r, starttls_injection="skip")
    st = steps(r)
    assert st["auth"]["facts"]["mechanism"] == "PLAIN" and st["auth"]["facts"]["result"] == "ok"
    send = st["send"]["facts"]
    assert re.fullmatch(r"[0-9A-Z]{16}", send["queue_id"]), send
    assert send["from"] == ALICE and send["to"] == BOB
    for k in ("mail_ms", "rcpt_ms", "data_ms", "end_ms"):
        assert send[k] >= 0
    mails = srv.wait_mail(1, rcpt=BOB)
    mine = [m for m in mails if send["message_id"].encode() in m]
    assert len(mine) == 1, "the test message was not delivered"
    assert f" id {send['queue_id']}".encode() in mine[0]
    assert b"Subject: submitcheck test message via 127.0.0.1 port" in mine[0]


def test_submitd_bad_password_and_sources(srv, certs, tmp_path):
    args = [f"127.0.0.1:{srv.port}", "--ca", certs["ecdsa_crt"], "--no-probe", "--user", ALICE]
    p, r = run(args, env={"SUBMITCHECK_PASSWORD": "wrong-password"})
    assert p.returncode == 2
    a = steps(r)["auth"]
    assert a["verdict"] == "fail" and a["facts"]["result"] == "bad-credentials"
    assert a["facts"]["reply"] == "535 5.7.8 Authentication credentials invalid"
    assert a["cause"] == "the server refused the user name or password"
    # the environment variable with the right password
    p, r = run(args, env={"SUBMITCHECK_PASSWORD": pw(ALICE)})
    assert p.returncode == 0 and steps(r)["auth"]["facts"]["result"] == "ok"
    # never on the command line; no terminal to prompt on; a file others can read
    p, _ = run(args + ["--password", pw(ALICE)])
    assert p.returncode == 3 and "never taken from the command line" in p.stderr
    p, _ = run(args)
    assert p.returncode == 3 and "cannot read the password" in p.stderr
    open_file = tmp_path / "open"
    open_file.write_text(pw(ALICE) + "\n")
    os.chmod(open_file, 0o644)
    p, _ = run(args + ["--password-file", open_file])
    assert p.returncode == 3 and "readable by others" in p.stderr


def test_verbose_masks_secrets(srv, certs, tmp_path):
    pwf = secret_file(tmp_path, "pw", pw(ALICE))
    p, _ = run([f"127.0.0.1:{srv.port}", "--ca", certs["ecdsa_crt"], "--no-probe", "--user", ALICE,
                "--password-file", pwf, "-v", "--mech", "LOGIN"], json_out=False)
    assert p.returncode == 0, p.stdout + p.stderr
    err = p.stderr
    assert f"[{srv.port}] C: STARTTLS" in err and f"[{srv.port}] S: 220 2.0.0" in err
    assert f"[{srv.port}] C: AUTH LOGIN" in err
    assert "C: **** (user name)" in err and "C: **** (password)" in err
    import base64
    for secret in (pw(ALICE), base64.b64encode(pw(ALICE).encode()).decode()):
        assert secret not in err and secret not in p.stdout


def test_ports_comparison(srv, certs):
    closed = closed_port()
    p, r = run(["127.0.0.1", "--ports", f"{srv.port},{srv.tls_port}/tls,{closed}", "--ca", certs["ecdsa_crt"],
                "--no-probe"])
    assert p.returncode == 2
    assert [(x["port"], x["tls_mode"], x["verdict"]) for x in r["ports"]] == [
        (srv.port, "starttls", "ok"), (srv.tls_port, "implicit", "ok"), (closed, "starttls", "fail")]
    p, _ = run(["127.0.0.1", "--ports", f"{srv.port},{srv.tls_port}/tls,{closed}", "--ca", certs["ecdsa_crt"],
                "--no-probe"], json_out=False)
    cmp = p.stdout[p.stdout.index("comparison\n"):].splitlines()
    assert cmp[1].split() == ["ok", "port", str(srv.port), "STARTTLS"]
    assert cmp[2].split() == ["ok", "port", str(srv.tls_port), "implicit", "TLS"]
    assert cmp[3].startswith(f"  fail  port {closed}") and "connect: cannot connect" in cmp[3]


# ---- network failures ------------------------------------------------------------------------------


def test_closed_port():
    port = closed_port()
    p, r = run([f"127.0.0.1:{port}"])
    assert p.returncode == 2
    expect(r, default="skip", connect="fail", send="skip")
    c = steps(r)["connect"]
    assert c["facts"]["error"] == "refused"
    assert c["message"] == f"cannot connect: 127.0.0.1 port {port} refused"
    assert f"open the port on the server: ufw allow {port}/tcp" in c["fix"]
    assert any("firewall-cmd --permanent" in f for f in c["fix"])
    assert any(f.startswith("or: iptables -I INPUT -p tcp --dport") for f in c["fix"])


def test_filtered_port():
    with FilteredPort() as fp:
        t0 = time.monotonic()
        p, r = run([f"127.0.0.1:{fp.port}", "--timeout", "1"])
        took = time.monotonic() - t0
    assert p.returncode == 2
    c = steps(r)["connect"]
    assert c["verdict"] == "fail" and c["facts"]["error"] == "timeout", c
    assert "filtered" in c["cause"]
    assert took < 10 * SLOW


def test_silent_port():
    with SilentPort() as sp:
        p, r = run([f"127.0.0.1:{sp.port}", "--timeout", "1"])
        p2, _ = run([f"127.0.0.1:{sp.port}", "--timeout", "1.5"], json_out=False)
    assert p.returncode == 2
    expect(r, default="skip", connect="ok", greeting="fail")
    g = steps(r)["greeting"]
    assert g["facts"]["error"] == "timeout"
    assert g["message"] == f"no greeting: no reply from 127.0.0.1:{sp.port} within 1000 ms"
    assert "sent no greeting within 1000 ms" in g["cause"]
    assert "run again with --tls" in g["fix"][0]
    assert p2.returncode == 2 and "  fail  greeting            no greeting" in p2.stdout
    assert "        cause: the server accepted the connection but sent no greeting within 1500 ms" in p2.stdout


# ---- AUTH before TLS, injection, AUTH replies ----------------------------------------------------------------


def test_auth_before_tls_accepted(certs):
    rx = Receiver(certs=certs, tls="starttls", auth={"u@x.test": "p"}, auth_require_tls=False)
    try:
        p, r = run([f"127.0.0.1:{rx.port}", "--ca", certs["ecdsa_crt"], "--no-probe"])
    finally:
        rx.stop()
    assert p.returncode == 2
    a = steps(r)["auth-before-tls"]
    assert a["verdict"] == "fail", a
    assert a["facts"]["offered"] is True and a["facts"]["accepted"] is True
    assert a["facts"]["probe_reply"].startswith("334")
    assert "plaintext" in a["message"] and any("smtpd_tls_auth_only = yes" in f for f in a["fix"])
    assert rx.auth_attempts == []  # the probe cancelled: no credentials were sent


def test_auth_offered_before_tls_but_refused(certs):
    """Announcing AUTH before TLS but refusing it there is a warning."""
    with fake(certs, auth_before_tls="offer") as f:
        p, r = run([f"127.0.0.1:{f.port}", "--ca", certs["ecdsa_crt"], "--no-probe"])
    assert p.returncode == 1, p.stdout
    a = steps(r)["auth-before-tls"]
    assert a["verdict"] == "warn" and a["facts"]["offered"] is True and a["facts"]["accepted"] is False, a
    assert a["facts"]["auth_mechanisms"] == ["PLAIN", "LOGIN"]
    assert a["message"] == ("AUTH offered before TLS (PLAIN LOGIN) but refused when tried (530 5.7.0 Must issue a "
                            "STARTTLS command first)")


def test_starttls_injection(certs):
    with fake(certs, inject=True) as bad, fake(certs) as good:
        p, r = run([f"127.0.0.1:{bad.port}", "--ca", certs["ecdsa_crt"]])
        p2, r2 = run([f"127.0.0.1:{good.port}", "--ca", certs["ecdsa_crt"]])
    assert p.returncode == 2
    i = steps(r)["starttls-injection"]
    assert i["verdict"] == "fail" and i["facts"]["result"] == "vulnerable", i
    assert i["facts"]["reply"].startswith("500")
    assert "CVE-2011-0411" in i["cause"]
    expect(r, starttls_injection="fail", send="skip")
    assert steps(r2)["starttls-injection"]["facts"]["result"] == "not-vulnerable"
    assert p2.returncode == 0


def test_starttls_injection_strict_server(certs):
    """A server that refuses pipelining after STARTTLS outright is safe."""
    with fake(certs, strict=True) as f:
        p, r = run([f"127.0.0.1:{f.port}", "--ca", certs["ecdsa_crt"]])
    i = steps(r)["starttls-injection"]
    assert p.returncode == 0 and i["facts"]["result"] == "not-vulnerable", i
    assert i["message"] == ("the server refuses a command pipelined after STARTTLS (554 5.5.0 Error: SMTP protocol "
                            "synchronization)")


@pytest.mark.parametrize("reply,result,words", [
    ("535 5.7.8 Authentication credentials invalid", "bad-credentials", "user name or password"),
    ("534 5.7.9 Application-specific password required", "web-login-required", "app password"),
    ("454 4.7.0 Temporary authentication failure", "temporary-failure", "temporary authentication failure"),
    ("530 5.7.0 Must issue a STARTTLS command first", "tls-required", "wants TLS"),
])
def test_auth_replies(certs, tmp_path, reply, result, words):
    pwf = secret_file(tmp_path, "pw", "secret-pw")
    with fake(certs, auth_reply=reply) as f:
        p, r = run([f"127.0.0.1:{f.port}", "--ca", certs["ecdsa_crt"], "--no-probe", "--user", "u@x.test",
                    "--password-file", pwf, "--send-to", "rcpt@x.test"])
    assert p.returncode == 2
    a = steps(r)["auth"]
    assert a["verdict"] == "fail" and a["facts"]["result"] == result and a["facts"]["reply"] == reply
    assert words in a["cause"], a
    assert steps(r)["send"]["message"] == "not tried: the login failed"


def test_oauth_token(certs, tmp_path):
    """XOAUTH2 is chosen for a token; the server here only knows PLAIN/LOGIN."""
    tok = secret_file(tmp_path, "tok", "ya29.token")
    with fake(certs) as f:
        p, r = run([f"127.0.0.1:{f.port}", "--ca", certs["ecdsa_crt"], "--no-probe", "--user", "u@x.test",
                    "--oauth-token-file", tok])
    a = steps(r)["auth"]
    assert p.returncode == 2 and a["verdict"] == "fail"
    assert a["message"].startswith("the server offers no OAuth2 mechanism")


# ---- certificates -------------------------------------------------------------------------------------------


def test_expired_certificate(certs, tlsfiles):
    crt, key = tlsfiles["expired"]
    with fake(certs, cert=(crt, key)) as f:
        p, r = run([f"127.0.0.1:{f.port}", "--ca", crt])
    assert p.returncode == 2
    expect(r, certificate="fail", send="skip")
    c = steps(r)["certificate"]["facts"]
    assert c["validity"] == "expired" and c["days_left"] <= -1
    assert c["chain_verified"] is True and c["hostname_match"] is True
    assert "EXPIRED" in steps(r)["certificate"]["message"]
    assert steps(r)["certificate"]["cause"].startswith("the certificate expired on ")


def test_expiring_certificate_warns(certs, tlsfiles):
    crt, key = tlsfiles["expiring"]
    with fake(certs, cert=(crt, key)) as f:
        p, r = run([f"127.0.0.1:{f.port}", "--ca", crt, "--no-probe"])
        p2, r2 = run([f"127.0.0.1:{f.port}", "--ca", crt, "--no-probe", "--expiry-warn", "3"])
    assert p.returncode == 1
    c = steps(r)["certificate"]
    assert c["verdict"] == "warn" and c["facts"]["validity"] == "expiring" and c["facts"]["days_left"] in (4, 5)
    assert p2.returncode == 0 and steps(r2)["certificate"]["verdict"] == "ok"


def test_wrong_hostname(certs, tlsfiles):
    crt, key = tlsfiles["othername"]
    with fake(certs, cert=(crt, key)) as f:
        p, r = run([f"127.0.0.1:{f.port}", "--ca", crt, "--no-probe"])
        p2, r2 = run([f"127.0.0.1:{f.port}", "--ca", crt, "--no-probe", "--servername", "other.example"])
    assert p.returncode == 2
    c = steps(r)["certificate"]
    assert c["verdict"] == "fail"
    assert c["facts"]["hostname_match"] is False and c["facts"]["chain_verified"] is True
    assert c["facts"]["hostname"] == "127.0.0.1" and c["facts"]["names"] == ["other.example"]
    assert "NOT VALID FOR 127.0.0.1" in c["message"]
    assert c["cause"] == ("the certificate is not valid for 127.0.0.1 (it is for other.example): clients that "
                          "check names refuse it")
    c2 = steps(r2)["certificate"]
    assert c2["verdict"] == "ok" and c2["facts"]["hostname_match"] is True, c2


def test_missing_intermediate(certs, tlsfiles):
    root = tlsfiles["root"][0]
    with fake(certs, cert=tlsfiles["leaf"]) as f, fake(certs, cert=tlsfiles["fullchain"]) as full:
        p, r = run([f"127.0.0.1:{f.port}", "--ca", root, "--no-probe"])
        p2, r2 = run([f"127.0.0.1:{full.port}", "--ca", root, "--no-probe"])
    c = steps(r)["certificate"]
    assert p.returncode == 2 and c["verdict"] == "fail"
    assert c["facts"]["chain_length"] == 1 and c["facts"]["chain_verified"] is False
    assert c["facts"]["verify_errors"] == ["depth 0: unable to get local issuer certificate",
                                           "depth 0: unable to verify the first certificate"]
    assert c["cause"] == "the server sends only its own certificate, not the intermediate CA certificate(s)"
    c2 = steps(r2)["certificate"]
    assert p2.returncode == 0 and c2["verdict"] == "ok" and c2["facts"]["chain_length"] == 2, c2


# ---- old TLS --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_tls10_only(certs, mode):
    with fake(certs, mode=mode, min_version=ssl.TLSVersion.TLSv1, max_version=ssl.TLSVersion.TLSv1,
              ciphers="ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0") as f:
        args = [f"127.0.0.1:{f.port}", "--ca", certs["ecdsa_crt"]] + (["--tls"] if mode == "implicit" else [])
        p, r = run(args)
    assert p.returncode == 2
    st = steps(r)
    t = st["tls"]
    assert t["verdict"] == "fail" and t["facts"]["legacy_protocol"] == "TLSv1", t
    assert t["message"].startswith("the server speaks only TLSv1 ")
    assert st["tls-versions"]["verdict"] == "fail"
    assert st["tls-versions"]["facts"] == {"best_protocol": "TLSv1", "tls1_1": False, "tls1_0": True}
    assert st["certificate"]["verdict"] == "ok"  # analysed from the legacy handshake
    assert st["auth"]["verdict"] == "skip"


# ---- DNS -----------------------------------------------------------------------------------------------------


def test_dns_and_mx_via_resolver(srv, certs, tmp_path):
    dnsd = DnsServer(tmp_path / "dns", local=["sc.test"], args=[
        "--host-record=smtp.sc.test,127.0.0.1", "--mx-host=sc.test,mx1.sc.test,10",
        "--mx-host=sc.test,mx2.sc.test,20"])
    try:
        p, r = run([f"smtp.sc.test:{srv.port}", "--resolver", f"127.0.0.1:{dnsd.port}", "--ca",
                    certs["ecdsa_crt"], "--servername", "localhost", "--no-probe", "--timeout", "3"])
        p2, r2 = run([f"sc.test:{srv.port}", "--resolver", f"127.0.0.1:{dnsd.port}", "--timeout", "3"])
        p3, r3 = run([f"nx.sc.test:{srv.port}", "--resolver", f"127.0.0.1:{dnsd.port}", "--timeout", "3"])
    finally:
        dnsd.stop()
    assert p.returncode == 0, p.stdout
    d = r["steps"][0]
    assert d["verdict"] == "ok" and d["facts"]["addresses"] == ["127.0.0.1"], d
    assert d["facts"]["mx_status"] == "nodata"
    assert r["ports"][0]["address"] == "127.0.0.1"
    # a mail domain without an address of its own: the MX hosts are named in the advice
    d2 = r2["steps"][0]
    assert p2.returncode == 2 and d2["verdict"] == "fail"
    assert d2["facts"]["mx"] == ["10 mx1.sc.test", "20 mx2.sc.test"]
    assert "MX: 10 mx1.sc.test 20 mx2.sc.test" in d2["message"]
    assert "mail domain" in d2["cause"] and any("submitcheck mx1.sc.test" in f for f in d2["fix"])
    assert verdicts(r2)["connect"] == "skip"
    d3 = r3["steps"][0]
    assert d3["verdict"] == "fail" and d3["facts"]["address_status"] == "nxdomain", d3


def test_family_filter():
    p, r = run(["127.0.0.1:25", "-6"])
    assert p.returncode == 2 and r["steps"][0]["verdict"] == "fail"


# ---- usage -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,words", [
    ([], "missing HOST"),
    (["h:0"], "bad HOST[:PORT]"),
    (["h", "--bogus"], "unknown option"),
    (["h", "--ports", "25,25"], "--ports"),
    (["h:25", "--ports", "587"], "not both"),
    (["h", "--timeout", "0"], "--timeout"),
    (["h", "-4", "-6"], "exclude each other"),
    (["h", "--send-to", "x@y.test"], "needs a sender"),
    (["h", "--password-file", "/nonexistent"], "needs --user"),
    (["h", "--mech", "CRAM-MD5"], "--mech"),
    (["h", "--resolver", "dns.example"], "--resolver"),
    (["h", "--ca", "/nonexistent/ca.pem"], "--ca"),
])
def test_usage_errors(args, words):
    p, _ = run(args)
    assert p.returncode == 3, (p.stdout, p.stderr)
    assert words in p.stderr, p.stderr
    assert p.stdout == ""


# ---- Postfix ---------------------------------------------------------------------------------------------------


SUBMISSION_OPTS = ["-o", "smtpd_tls_security_level=encrypt", "-o", "smtpd_sasl_auth_enable=yes",
                   "-o", "smtpd_tls_auth_only=yes", "-o", "smtpd_client_restrictions=permit_sasl_authenticated,reject",
                   "-o", "smtpd_relay_restrictions=permit_sasl_authenticated,reject"]
HARDENED_OPTS = SUBMISSION_OPTS + ["-o", "smtpd_tls_protocols=>=TLSv1.2", "-o", "smtpd_tls_mandatory_protocols=>=TLSv1.2",
                                   "-o", "smtpd_tls_exclude_ciphers=aNULL,eNULL,EXPORT,DES,3DES,RC4,MD5,IDEA,SEED",
                                   "-o", "smtpd_tls_mandatory_ciphers=high"]


def test_postfix_submission(certs, tmp_path):
    why = privpostfix.unavailable()
    if why:
        pytest.skip(why)
    stock, hardened = free_port(), free_port()
    # master.cf's "-o" values must not contain spaces: one option per line
    services = {"submission": (stock, [" ".join(SUBMISSION_OPTS[i:i + 2]) for i in range(0, len(SUBMISSION_OPTS), 2)]),
                "hardened": (hardened, [" ".join(HARDENED_OPTS[i:i + 2]) for i in range(0, len(HARDENED_OPTS), 2)])}
    pf = privpostfix.PrivatePostfix(certs["ecdsa_crt"], certs["ecdsa_key"], services,
                                    {"carol@postfix.test": "carol-Pw-9"})
    pwf = secret_file(tmp_path, "pw", "carol-Pw-9")
    try:
        pf.start()
        assert pf.daemons(), "no postfix daemon carries MAIL_CONFIG"
        login = ["--user", "carol@postfix.test", "--password-file", pwf, "--send-to", "someone@elsewhere.test"]
        p, r = run([f"127.0.0.1:{stock}", "--ca", certs["ecdsa_crt"]] + login)
        p2, r2 = run([f"127.0.0.1:{hardened}", "--ca", certs["ecdsa_crt"]] + login)
        p3, r3 = run([f"127.0.0.1:{hardened}", "--ca", certs["ecdsa_crt"], "--no-probe", "--user",
                      "carol@postfix.test"], env={"SUBMITCHECK_PASSWORD": "wrong"})
        log = pf.log_text()
    finally:
        left = pf.stop()
    assert left == [], f"postfix processes left behind: {left}"
    # Debian's defaults: TLS 1.0/1.1 and anonymous ciphers are still accepted
    assert p.returncode == 1, p.stdout
    expect(r, tls_versions="warn", tls_ciphers="warn")
    st = steps(r)
    assert st["greeting"]["facts"]["banner"] == "postfix.test ESMTP Postfix"
    assert st["tls-versions"]["facts"]["tls1_0"] is True
    assert st["tls-ciphers"]["message"].startswith("accepts the anonymous cipher ")
    assert st["auth-before-tls"]["facts"]["probe_reply"].startswith("530 5.7.0")
    qid = st["send"]["facts"]["queue_id"]
    assert re.fullmatch(r"[0-9A-F]{6,}", qid), st["send"]
    assert f"{qid}: client=localhost[127.0.0.1], sasl_method=PLAIN, sasl_username=carol@postfix.test" in log
    # the fixes submitcheck suggests make it green
    assert p2.returncode == 0, p2.stdout
    expect(r2)
    assert steps(r2)["starttls-injection"]["facts"]["result"] == "not-vulnerable"
    assert p3.returncode == 2 and steps(r3)["auth"]["facts"]["result"] == "bad-credentials"
