"""The outbound transports against real software on loopback: aiosmtpd
receivers (STARTTLS, implicit TLS, AUTH) on 127.0.0.x, and a real DNS
server (dnsmasq) serving a test zone for the mx transport. Checks the exact
bytes the receiver got (envelope, ESMTP parameters, Received: prepend +
message, dot-unstuffed), pipelining, connection reuse, credential
rotation, STARTTLS policy, certificate failures deferring, MX preference
order and fallback, null MX, NXDOMAIN, implicit MX, a 5xx RCPT being
final for that recipient, and 451, 451, 250 delivered on the third try."""

import os
import re
import time
import signal
import subprocess

import pytest

import harness
from harness import ALICE, SUBMITD, DnsServer, Receiver, free_port, received_parts, san_env

MXPORT_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.5", "127.0.0.6", "127.0.0.7")
QUEUE = {"retry-initial": "1s", "retry-max": "1s"}


def common_port():
    """A port free on every 127.0.0.x address the MX receivers use."""
    for _ in range(20):
        p = free_port()
        if all(_bindable(h, p) for h in MXPORT_HOSTS):
            return p
    raise AssertionError("no common free port")


def _bindable(host, port):
    import socket
    s = socket.socket()
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


@pytest.fixture(scope="module")
def zone(tmp_path_factory):
    """The test zone:
    two.test     MX 10 mx1.two.test (127.0.0.2), MX 20 mx2.two.test (127.0.0.3)
    down.test    MX 10 mxa.down.test (127.0.0.4, nothing listens), MX 20 mxb.down.test (127.0.0.5)
    amx.test     no MX, A 127.0.0.6 (implicit MX)
    flaky.test   MX 10 mx.flaky.test (127.0.0.7)
    nullmx.test  MX 0 . (RFC 7505)
    nope.test    does not exist (NXDOMAIN)"""
    d = DnsServer(tmp_path_factory.mktemp("dns"), local=["test"], args=[
        "--mx-host=two.test,mx1.two.test,10", "--mx-host=two.test,mx2.two.test,20",
        "--host-record=mx1.two.test,127.0.0.2", "--host-record=mx2.two.test,127.0.0.3",
        "--mx-host=down.test,mxa.down.test,10", "--mx-host=down.test,mxb.down.test,20",
        "--host-record=mxa.down.test,127.0.0.4", "--host-record=mxb.down.test,127.0.0.5",
        "--host-record=amx.test,127.0.0.6",
        "--mx-host=flaky.test,mx.flaky.test,10", "--host-record=mx.flaky.test,127.0.0.7",
        "--mx-host=nullmx.test,.,0",
    ])
    # the zone really is what the tests say (answers from the real server)
    mx = sorted((r.preference, str(r.exchange)) for r in d.resolver.resolve("two.test", "MX"))
    assert mx == [(10, "mx1.two.test."), (20, "mx2.two.test.")]
    assert [str(r.exchange) for r in d.resolver.resolve("nullmx.test", "MX")] == ["."]
    yield d
    d.stop()


@pytest.fixture
def receivers():
    started = []

    def start(*a, **kw):
        r = Receiver(*a, **kw)
        started.append(r)
        return r
    yield start
    for r in started:
        r.stop()


def mx_block(zone, port, extra=()):
    lines = ["transport direct {", "    type mx", f"    resolver 127.0.0.1:{zone.port}", f"    port {port}",
             "    connect-timeout 2s", "    command-timeout 10s"]
    lines += [f"    {e}" for e in extra]
    lines.append("}")
    for dom in ("two.test", "down.test", "amx.test", "flaky.test", "nullmx.test", "nope.test"):
        lines.append(f"route {dom} direct")
    return "\n".join(lines)


def smarthost_block(url, extra=()):
    lines = ["transport out {", "    type smarthost", f"    url {url}", "    helo relay.mx.test",
             "    connect-timeout 2s", "    command-timeout 10s"]
    lines += [f"    {e}" for e in extra]
    lines += ["}", "route relay.test out"]
    return "\n".join(lines)


def submit(d, rcpts, subject="relay", mail_params="", rcpt_params=""):
    return harness.submit(d, ALICE, rcpts, subject, mail_params, {r: rcpt_params for r in rcpts})


def assert_relayed(m, frm, rcpts, msg, qid):
    """The bytes a receiver got: our Received: (with the queue id), then
    the message exactly as submitted (dots unstuffed again by the receiver)."""
    assert m["mail_from"] == frm, m
    assert m["rcpt_tos"] == rcpts, m
    prepend, rest = received_parts(m["data"])
    assert rest == msg, f"relayed body differs:\n got {rest!r}\nwant {msg!r}"
    unfolded = re.sub(rb"\s+", b" ", prepend).decode()
    assert re.match(r"^Received: from client\.test \(\[127\.0\.0\.1\]\) by mx\.test \(submitd\) with ESMTPSA ",
                    unfolded), unfolded
    assert f" id {qid}" in unfolded, unfolded


def creds_file(tmp_path, text, mode=0o600):
    p = tmp_path / "relay-creds"
    p.write_text(text)
    os.chmod(p, mode)
    return p


# ---------------------------------------------------------------------------
# smarthost


def test_smarthost_starttls_auth_bytes_reuse(make_daemon, receivers, certs, tmp_path):
    rx = receivers(certs=certs, tls="starttls", auth={"apikey": "s3cret pass!"})
    creds = creds_file(tmp_path, "# the old key first: refused, then the new one\n"
                                 "oldkey wrong-Pw\napikey s3cret pass!\n")
    d = make_daemon(queue=QUEUE, extra=smarthost_block(
        f"smtp://127.0.0.1:{rx.port}", [f"ca-file {certs['ecdsa_crt']}", f"auth-file {creds}"]))
    qid1, msg1 = submit(d, ["bob@relay.test", "carol@relay.test"], subject="first",
                        mail_params=" RET=HDRS ENVID=env+2B1", rcpt_params=" NOTIFY=SUCCESS,FAILURE")
    m1 = rx.wait_messages(1)[0]
    assert_relayed(m1, ALICE, ["bob@relay.test", "carol@relay.test"], msg1, qid1)
    assert m1["tls"] and m1["auth"] == "apikey" and m1["helo"] == "relay.mx.test", m1
    size = len(m1["data"])
    assert m1["mail_options"] == [f"SIZE={size}", "RET=HDRS", "ENVID=ENV+2B1"], m1["mail_options"]
    assert m1["rcpt_options"] == ["NOTIFY=SUCCESS,FAILURE"] * 2, m1["rcpt_options"]
    assert rx.pipelined(), "MAIL, RCPT and DATA were not sent in one write"
    # credential rotation: the first login refused, the second accepted
    assert [a[1] for a in rx.auth_attempts] == ["oldkey", "apikey"], rx.auth_attempts
    d.wait_log(rf"event=queue\.removed .*qid={qid1}")
    # a second message right after reuses the connection (no new TLS/AUTH)
    # without an RSET round trip: the last transaction ended cleanly and
    # nothing arrived on the idle connection
    qid2, msg2 = submit(d, ["dave@relay.test"], subject="second")
    m2 = rx.wait_messages(2)[1]
    assert_relayed(m2, ALICE, ["dave@relay.test"], msg2, qid2)
    assert rx.connections == 1, f"{rx.connections} connections for 2 messages"
    assert len(rx.auth_attempts) == 2
    d.wait_log(rf"event=queue\.removed .*qid={qid2}")
    assert not any(b"RSET" in c for c in rx.chunks), rx.chunks
    # every recipient accepted: the delivered lines say it all, no relay.sent at info
    assert "event=relay.sent" not in d.log_text()
    # idle for longer than 2 s: RSET checks the connection before reuse
    time.sleep(2.5)
    qid3, msg3 = submit(d, ["erin@relay.test"], subject="third")
    assert_relayed(rx.wait_messages(3)[2], ALICE, ["erin@relay.test"], msg3, qid3)
    assert rx.connections == 1 and sum(c.count(b"RSET\r\n") for c in rx.chunks) == 1, rx.chunks
    log = d.log_text()
    assert re.search(r"event=relay\.tls .*version=TLSv1\.3 .*verified=yes", log), log
    assert re.search(r"event=relay\.auth_failed .*login=oldkey", log), log
    assert re.search(r"event=relay\.auth .*login=apikey mech=PLAIN", log), log
    assert "s3cret" not in log and "wrong-Pw" not in log
    assert d.spool_files("queue") == []


def test_smarthost_implicit_tls(make_daemon, receivers, certs, tmp_path):
    rx = receivers(certs=certs, tls="implicit", auth={"u1": "pw-one"}, auth_exclude=["PLAIN"], pipelining=False,
                   dsn=False)
    creds = creds_file(tmp_path, "u1 pw-one\n", 0o640)
    d = make_daemon(queue=QUEUE, extra=smarthost_block(
        f"smtps://127.0.0.1:{rx.port}", [f"ca-file {certs['ecdsa_crt']}", f"auth-file {creds}"]))
    qid, msg = submit(d, ["x@relay.test"], mail_params=" RET=FULL", rcpt_params=" NOTIFY=NEVER")
    m = rx.wait_messages(1)[0]
    assert_relayed(m, ALICE, ["x@relay.test"], msg, qid)
    # no DSN offered: no DSN parameters sent; no PIPELINING: one command per write
    assert m["mail_options"] == [f"SIZE={len(m['data'])}"] and m["rcpt_options"] == [], m
    assert m["tls"] and m["auth"] == "u1"
    assert rx.auth_attempts == [("LOGIN", "u1")], rx.auth_attempts  # no PLAIN offered: LOGIN
    assert not rx.pipelined()
    assert "pw-one" not in d.log_text()


@pytest.mark.parametrize("case", ["untrusted", "wrong-name"])
def test_smarthost_certificate_failure_defers(make_daemon, receivers, certs, case):
    # untrusted: the self-signed certificate is not in the system store;
    # wrong-name: trusted via ca-file, but it is for localhost/127.0.0.1, not 127.0.0.3
    host = "127.0.0.1" if case == "untrusted" else "127.0.0.3"
    rx = receivers(host=host, certs=certs, tls="starttls")
    extra = [] if case == "untrusted" else [f"ca-file {certs['ecdsa_crt']}"]
    d = make_daemon(queue=QUEUE, extra=smarthost_block(f"smtp://{host}:{rx.port}", extra))
    qid, _ = submit(d, ["y@relay.test"])
    line = d.wait_log(rf"event=deferred qid={qid} ")
    assert "4.7.5" in line and "certificate verification failed" in line, line
    tls_line = d.wait_log(r"event=relay\.tls_failed ")
    assert f"qid={qid}" in tls_line and f"peer={host}:{rx.port}" in tls_line, tls_line
    # still queued, retried later, never handed over
    d.wait_log(rf"event=deferred qid={qid} .*attempts=2")
    assert qid in d.spool_files("queue")
    assert rx.messages == [] and rx.data_calls == 0


def test_smarthost_without_starttls_refused_unless_optional(make_daemon, receivers, certs):
    rx = receivers()  # plain text only
    d = make_daemon(queue=QUEUE, extra=smarthost_block(f"smtp://127.0.0.1:{rx.port}",
                                                       [f"ca-file {certs['ecdsa_crt']}"]))
    qid, msg = submit(d, ["z@relay.test"])
    line = d.wait_log(rf"event=deferred qid={qid} ")
    assert "451 4.7.4" in line and "offers no STARTTLS" in line, line
    assert rx.messages == [] and not any(b"MAIL FROM" in c for c in rx.chunks)
    assert qid in d.spool_files("queue")
    # the operator allows plain text: SIGHUP, and the queued message goes out on its next try
    mark = d.log_size()
    d.extra = smarthost_block(f"smtp://127.0.0.1:{rx.port}", ["starttls optional"])
    d.write_config()
    d.signal(signal.SIGHUP)
    m = rx.wait_messages(1, timeout=20)[0]
    assert_relayed(m, ALICE, ["z@relay.test"], msg, qid)
    assert not m["tls"]
    d.wait_log(r"event=relay\.config .*starttls optional", since=mark)
    d.wait_log(rf"event=relay\.plaintext .*qid={qid} ", since=mark)
    d.wait_log(rf"event=delivered qid={qid} ", since=mark)


def test_smarthost_bdat(make_daemon, receivers, certs):
    """A server offering CHUNKING and PIPELINING gets MAIL, RCPT, `BDAT n
    LAST` and the message (not dot-stuffed) in one write; the reply to BDAT
    is the end-of-data reply: 250 delivers, 4xx defers (then the retry is
    delivered); a refused RCPT stays refused; every RCPT refused leaves the
    BDAT error meaningless; the connection stays in use throughout."""
    rx = receivers(certs=certs, tls="starttls", chunking=True,
                   rcpt_replies={"nobody@relay.test": "550 5.1.1 no such user",
                                 "gone@relay.test": "550 5.1.1 gone"},
                   data_replies=["250 2.0.0 first", "452 4.3.1 full, try later"])
    d = make_daemon(queue=QUEUE, extra=smarthost_block(f"smtp://127.0.0.1:{rx.port}",
                                                       [f"ca-file {certs['ecdsa_crt']}"]))
    qid1, msg1 = submit(d, ["bob@relay.test", "nobody@relay.test"], subject="chunked")
    m1 = rx.wait_messages(1)[0]
    assert_relayed(m1, ALICE, ["bob@relay.test"], msg1, qid1)
    assert b"\r\n.a line starting with a dot\r\n" in m1["data"]
    assert rx.bdat_commands == [f"{len(m1['data'])} LAST"], rx.bdat_commands
    one = [c for c in rx.chunks if b"MAIL FROM:" in c]
    assert len(one) == 1 and b"RCPT TO:<nobody@relay.test>" in one[0] and \
        one[0].endswith(b"BDAT %d LAST\r\n" % len(m1["data"]) + m1["data"]), one
    assert not any(b"DATA\r\n" in c for c in rx.chunks), rx.chunks
    failed = d.wait_log(rf"event=failed qid={qid1} rcpt=nobody@relay.test ")
    assert "550 5.1.1" in failed and "reason=permanent" in failed, failed
    d.wait_log(rf"event=delivered qid={qid1} rcpt=bob@relay.test .*250 2\.0\.0 first")
    d.wait_log(rf"event=queue\.removed .*qid={qid1}")

    # every recipient refused: the BDAT's 503 ends nothing (the receiver
    # keeps its MAIL FROM), so the next message on the connection starts
    # with RSET
    qid2, _ = submit(d, ["gone@relay.test"], subject="nobody")
    line = d.wait_log(rf"event=failed qid={qid2} rcpt=gone@relay.test ")
    assert "550 5.1.1 gone" in line, line
    assert len(rx.bdat_commands) == 2 and rx.data_calls == 1
    assert not any(b"RSET" in c for c in rx.chunks)

    # 452 to BDAT LAST: deferred, and the retry (a second BDAT) is delivered
    qid3, msg3 = submit(d, ["carol@relay.test"], subject="later")
    deferred = d.wait_log(rf"event=deferred qid={qid3} rcpt=carol@relay.test ")
    assert "452 4.3.1 full, try later" in deferred, deferred
    d.wait_log(rf"event=delivered qid={qid3} rcpt=carol@relay.test .*attempts=2", timeout=30)
    assert_relayed(rx.accepted()[1], ALICE, ["carol@relay.test"], msg3, qid3)
    assert rx.data_calls == 3 and len(rx.bdat_commands) == 4, rx.bdat_commands
    assert rx.connections == 1, f"{rx.connections} connections"
    # RSET after the refused BDAT and after the 452 (a failed chunk), not after a 250
    assert sum(c.count(b"RSET\r\n") for c in rx.chunks) == 2, rx.chunks
    d.wait_log(rf"event=queue\.removed .*qid={qid3}")


def test_smarthost_chunking_off(make_daemon, receivers, certs):
    """`chunking no`: a server offering CHUNKING and PIPELINING still gets
    DATA (pipelined MAIL and RCPT), never BDAT."""
    rx = receivers(certs=certs, tls="starttls", chunking=True)
    d = make_daemon(queue=QUEUE, extra=smarthost_block(f"smtp://127.0.0.1:{rx.port}",
                                                       [f"ca-file {certs['ecdsa_crt']}", "chunking no"]))
    qid, msg = submit(d, ["bob@relay.test"], subject="no chunks")
    assert_relayed(rx.wait_messages(1)[0], ALICE, ["bob@relay.test"], msg, qid)
    assert rx.bdat_commands == [] and rx.data_calls == 1, (rx.bdat_commands, rx.data_calls)
    d.wait_log(rf"event=queue\.removed .*qid={qid}")


def test_check_reports_option_errors(tmp_path, make_daemon, certs):
    creds = creds_file(tmp_path, "k v\n", 0o644)
    d = make_daemon(start=False, extra=smarthost_block("smtp://relay.example.com", [f"auth-file {creds}"]) + "\n" +
                    "transport direct {\n    type mx\n    starttls sometimes\n    url smtp://x\n}\n"
                    "route mx.example direct")
    p = subprocess.run([str(SUBMITD), "-t", "-c", str(d.conf)], capture_output=True, text=True, env=san_env(),
                       timeout=30)
    assert p.returncode == 1, p
    lines = d.conf.read_text().splitlines()
    auth_line = 1 + next(i for i, l in enumerate(lines) if "auth-file" in l)
    st_line = 1 + next(i for i, l in enumerate(lines) if "starttls sometimes" in l)
    assert (f"{d.conf}:{auth_line}: transport out: auth-file {creds} has mode 0644: it must not be accessible "
            "by others") in p.stderr, p.stderr
    assert (f"{d.conf}:{st_line}: transport direct: bad value `sometimes` for `starttls`: expected "
            "opportunistic, required or off") in p.stderr, p.stderr
    assert (f"{d.conf}:{st_line + 1}: transport direct: unknown option `url` for type mx (it is a smarthost "
            "option)") in p.stderr, p.stderr


# ---------------------------------------------------------------------------
# mx


@pytest.fixture
def mxport():
    return common_port()


def test_mx_preference_order_and_rcpt_5xx(make_daemon, receivers, zone, mxport, certs):
    rx1 = receivers("127.0.0.2", mxport, certs=certs, tls="starttls",
                    rcpt_replies={"nobody@two.test": "550 5.1.1 <nobody@two.test>: no such user"})
    rx2 = receivers("127.0.0.3", mxport)
    d = make_daemon(queue=QUEUE, extra=mx_block(zone, mxport))
    qid, msg = submit(d, ["u1@two.test", "nobody@two.test", "u2@two.test"])
    m = rx1.wait_messages(1)[0]
    assert_relayed(m, ALICE, ["u1@two.test", "u2@two.test"], msg, qid)
    assert m["tls"], "opportunistic STARTTLS was not used"
    assert m["helo"] == "mx.test", "the default HELO is the config's hostname"
    failed = d.wait_log(rf"event=failed qid={qid} rcpt=nobody@two.test ")
    assert "550 5.1.1" in failed and "reason=permanent" in failed and "attempts=1" in failed, failed
    d.wait_log(rf"event=delivered qid={qid} rcpt=u1@two.test ")
    d.wait_log(rf"event=queue\.removed .*qid={qid}")
    # a recipient refused: the transaction's summary is logged at info
    assert re.search(rf"level=info event=relay\.sent .*qid={qid} .*accepted=2 rcpts=3", d.log_text())
    # the preferred MX took it; the backup saw nothing at all
    assert rx2.connections == 0 and rx2.messages == []
    assert re.search(r"event=relay\.tls .*host=mx1\.two\.test .*verified=no", d.log_text())


def test_mx_fallback_when_first_is_down(make_daemon, receivers, zone, mxport):
    rxb = receivers("127.0.0.5", mxport)  # mxa.down.test (127.0.0.4) has no listener
    d = make_daemon(queue=QUEUE, extra=mx_block(zone, mxport))
    qid, msg = submit(d, ["v@down.test"])
    m = rxb.wait_messages(1)[0]
    assert_relayed(m, ALICE, ["v@down.test"], msg, qid)
    assert not m["tls"]
    line = d.wait_log(rf"event=relay\.connect_failed .*qid={qid} ")
    assert f"host=mxa.down.test peer=127.0.0.4:{mxport}" in line and "refused" in line, line
    d.wait_log(rf"event=delivered qid={qid} rcpt=v@down.test .*attempts=1")


def test_mx_implicit_a_record(make_daemon, receivers, zone, mxport):
    rx = receivers("127.0.0.6", mxport)
    d = make_daemon(queue=QUEUE, extra=mx_block(zone, mxport))
    qid, msg = submit(d, ["w@amx.test"])
    assert_relayed(rx.wait_messages(1)[0], ALICE, ["w@amx.test"], msg, qid)


@pytest.mark.parametrize("rcpt,status", [("a@nullmx.test", "556 5.1.10"), ("b@nope.test", "550 5.1.2")])
def test_mx_null_mx_and_nxdomain_fail_at_once(make_daemon, zone, mxport, rcpt, status):
    d = make_daemon(queue=QUEUE, extra=mx_block(zone, mxport))
    qid, _ = submit(d, [rcpt])
    line = d.wait_log(rf"event=failed qid={qid} rcpt={re.escape(rcpt)} ")
    assert status in line and "reason=permanent" in line and "attempts=1" in line, line
    assert not d.log_lines(rf"event=deferred qid={qid} ")
    d.wait_log(rf"event=queue\.removed .*qid={qid}")


def test_451_twice_then_delivered(make_daemon, receivers, zone, mxport):
    rx = receivers("127.0.0.7", mxport, data_replies=["451 4.3.0 try again later", "451 4.3.0 still busy"])
    d = make_daemon(queue=QUEUE, extra=mx_block(zone, mxport))
    qid, msg = submit(d, ["t@flaky.test"])
    line = d.wait_log(rf"event=delivered qid={qid} rcpt=t@flaky.test .*attempts=3", timeout=30)
    assert "250 2.0.0 accepted" in line, line
    deferred = d.log_lines(rf"event=deferred qid={qid} ")
    assert len(deferred) == 2 and "451 4.3.0 try again later" in deferred[0] and "still busy" in deferred[1], \
        deferred
    assert rx.data_calls == 3
    assert_relayed(rx.accepted()[0], ALICE, ["t@flaky.test"], msg, qid)
    d.wait_log(rf"event=queue\.removed .*qid={qid}")
