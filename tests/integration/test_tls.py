"""TLS details: TLS 1.3 preferred, the suite order (the server's, with
ChaCha20 for clients that put it first), ECDSA and RSA certificates for one name
(the client gets what it supports), SNI picking another name's certificate,
session resumption with tickets, and the Received: header naming the TLS
version and cipher."""

import socket
import ssl
import subprocess

import pytest

from harness import ALICE, MKCERT, SMTPClient, assert_delivered, make_msg, pw


def handshake(port, ctx, sni="localhost", session=None):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    t = ctx.wrap_socket(s, server_hostname=sni, session=session)
    greeting = t.recv(4096)
    assert greeting.startswith(b"220 "), greeting
    return t


def cert_cn(t):
    der = t.getpeercert(binary_form=True)
    p = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject"], input=der,
                       capture_output=True, timeout=10)
    return p.stdout.decode()


def test_tls13_preferred(srv):
    ctx = ssl.create_default_context(cafile=str(srv.certs["ecdsa_crt"]))
    t = handshake(srv.tls_port, ctx)
    assert t.version() == "TLSv1.3", t.version()
    t.close()


def negotiated_suite(port, suites):
    """The TLS 1.3 suite openssl s_client gets when it offers `suites` in
    that order (implicit TLS)."""
    p = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-brief",
                        "-ciphersuites", suites], input=b"", capture_output=True, timeout=20)
    out = (p.stdout + p.stderr).decode(errors="replace")
    for line in out.splitlines():
        if line.startswith("Ciphersuite:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no Ciphersuite line from s_client:\n" + out)


def test_suite_order_server_first_chacha_for_chacha_clients(srv):
    """The server's order picks the suite: AES-128-GCM even when the client
    lists AES-256-GCM first; a client that lists ChaCha20-Poly1305 first
    (SSL_OP_PRIORITIZE_CHACHA) gets ChaCha20; a client with AES-256 only
    gets AES-256."""
    assert negotiated_suite(srv.tls_port, "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256") == \
        "TLS_AES_128_GCM_SHA256"
    assert negotiated_suite(srv.tls_port, "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256") == \
        "TLS_CHACHA20_POLY1305_SHA256"
    assert negotiated_suite(srv.tls_port, "TLS_AES_256_GCM_SHA384") == "TLS_AES_256_GCM_SHA384"


def test_ecdsa_and_rsa_for_one_name(make_daemon, certs):
    d = make_daemon(cert_pairs=[(certs["ecdsa_crt"], certs["ecdsa_key"]),
                                (certs["rsa_crt"], certs["rsa_key"])])
    for cipher, keytype in (("ECDHE-RSA-AES128-GCM-SHA256", "rsa"),
                            ("ECDHE-ECDSA-AES128-GCM-SHA256", "ecdsa")):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(cipher)
        ctx.load_verify_locations(cafile=str(certs[f"{keytype}_crt"]))
        t = handshake(d.tls_port, ctx)
        assert t.cipher()[0] == cipher, t.cipher()
        assert t.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(
            certs[f"{keytype}_crt"].read_text())
        t.close()


def test_sni_selects_certificate(make_daemon, certs, tmp_path):
    p = subprocess.run(["sh", str(MKCERT), str(tmp_path), "other.test", "ecdsa"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    other_crt, other_key = tmp_path / "other.test-ecdsa.crt", tmp_path / "other.test-ecdsa.key"
    d = make_daemon(cert_pairs=[(certs["ecdsa_crt"], certs["ecdsa_key"]), (other_crt, other_key)])
    ctx = ssl.create_default_context(cafile=str(other_crt))
    t = handshake(d.tls_port, ctx, sni="other.test")
    assert "other.test" in cert_cn(t)
    t.close()
    # the default certificate for an unknown name and for localhost
    ctx = ssl.create_default_context(cafile=str(certs["ecdsa_crt"]))
    ctx.check_hostname = False
    for name in ("localhost", "unknown.test"):
        t = handshake(d.tls_port, ctx, sni=name)
        assert "localhost" in cert_cn(t)
        t.close()
    # STARTTLS honours SNI too
    c = SMTPClient(d.port, certs={"ecdsa_crt": other_crt})
    c.expect_greeting()
    c.ehlo()
    c.check("STARTTLS", 220, "2.0.0")
    c.sock = ssl.create_default_context(cafile=str(other_crt)).wrap_socket(
        c.sock, server_hostname="other.test")
    c.ehlo()
    c.close()


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_session_resumption(srv, version):
    ctx = ssl.create_default_context(cafile=str(srv.certs["ecdsa_crt"]))
    ctx.maximum_version = getattr(ssl.TLSVersion, version)
    t = handshake(srv.tls_port, ctx)
    if version == "TLSv1_3":
        # TLS 1.3 tickets arrive after the handshake: exchange a command
        t.sendall(b"NOOP\r\n")
        assert t.recv(4096).startswith(b"250 ")
    sess = t.session
    assert not t.session_reused
    t.sendall(b"QUIT\r\n")
    t.recv(4096)
    t.close()
    assert sess is not None and sess.has_ticket, "no session ticket issued"
    t2 = handshake(srv.tls_port, ctx, session=sess)
    assert t2.session_reused, "session not resumed"
    t2.close()


def test_received_header_names_tls(srv):
    rcpt = "tlsinfo@dest.test"
    msg = make_msg(ALICE, rcpt, "tls-info")
    with srv.login(ALICE, pw(ALICE), implicit=True) as c:
        qid = c.send_mail(ALICE, [rcpt], msg)
        cipher = c.sock.cipher()[0]
    data = srv.wait_mail(1, rcpt)[0]
    assert_delivered(data, ALICE, rcpt, msg, qid=qid)
    head = data.split(b"\n\n")[0].decode()
    assert f"TLSv1.3 cipher {cipher}" in " ".join(head.split()), head
