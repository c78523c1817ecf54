"""Smoke tests of the benchmark tools (bench/loadgen, bench/sink; make bench):
a 2-second loadgen run against the daemon over STARTTLS + AUTH PLAIN with
zero errors and every counted message in the Maildir, the same over implicit
TLS pipelined, the same against the sink without TLS (its counter matches),
the sink's BDAT (chunks split across writes, a malformed one),
idle mode holding TLS sessions, a rejected AUTH counted as errors, and
loadgen's reply parser against a scripted server that splits its replies
(and one whose reply line is too long).
Built into SUBMITD_BUILD/bench/ by the Makefile's integration target."""

import json
import os
import socket
import subprocess
import threading
import time

import pytest

from harness import ALICE, BUILD, LOADGEN, SINK, SLOW, loadgen, pw, running_sink, wait_until

pytestmark = pytest.mark.skipif(not os.access(LOADGEN, os.X_OK) or not os.access(SINK, os.X_OK),
                                reason=f"bench tools not built in {BUILD}/bench (make bench-build)")


def test_loadgen_against_submitd(make_daemon, tmp_path):
    d = make_daemon()
    passfile = tmp_path / "pass"
    passfile.write_text(pw(ALICE) + "\n")
    rc, r, err = loadgen(["-p", str(d.port), "-m", "starttls", "-c", "4", "-n", "3", "-s", "2000", "-r", "2",
                          "-t", "2", "-u", ALICE, "-w", str(passfile), "-f", ALICE, "-T", "example.net"])
    assert rc == 0 and r["errors"] == 0, err
    assert r["mode"] == "starttls" and r["conc"] == 4 and r["rcpts"] == 2 and r["seconds"] == 2
    assert r["msgs"] > 0 and r["handshakes"] > 0
    assert r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
    # every message counted was accepted: 2 Maildir files each (one per recipient)
    d.wait_mail(2 * r["msgs"])
    sample = d.mails()[0]
    assert b"Subject: loadgen 2000 bytes" in sample
    assert b"The quick brown fox" in sample


def test_loadgen_against_sink_plain(tmp_path):
    with running_sink(tmp_path) as (port, stats):
        rc, r, err = loadgen(["-p", str(port), "-m", "plain", "-c", "3", "-n", "4", "-s", "5000", "-t", "2",
                              "-P"])
        assert rc == 0 and r["errors"] == 0, err
        assert r["msgs"] > 0 and r["handshakes"] == 0 and r["pipeline"] == 1

        def counted():
            t = stats.read_text()
            n = int(t.split("msgs=")[1].split()[0])
            return n if n >= r["msgs"] else None
        wait_until(counted, 5 * SLOW, what="the sink to count the messages")
    final = dict(kv.split("=") for kv in stats.read_text().split())
    assert int(final["msgs"]) >= r["msgs"] and int(final["rcpts"]) == int(final["msgs"])
    assert int(final["open"]) == 0


def test_sink_bdat(tmp_path):
    """The sink offers CHUNKING: chunks split across writes are counted to
    the byte, BDAT LAST ends the message, a malformed BDAT closes."""
    with running_sink(tmp_path) as (port, stats):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            f = s.makefile("rb")

            def reply():
                lines = []
                while True:
                    line = f.readline()
                    assert line, "the sink closed the connection"
                    lines.append(line)
                    if line[3:4] == b" ":
                        return b"".join(lines)
            assert reply().startswith(b"220")
            s.sendall(b"EHLO t\r\n")
            assert b"250-CHUNKING\r\n" in reply()
            s.sendall(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 10\r\n01234")
            assert reply().startswith(b"250") and reply().startswith(b"250")
            time.sleep(0.1)
            s.sendall(b"56789BDAT 8 LAST\r\nBDAT")  # a chunk that looks like a command, split
            assert reply() == b"250 2.0.0 Ok: chunk\r\n"
            s.sendall(b" 9\r\n")
            assert reply() == b"250 2.0.0 Ok: discarded\r\n"
            s.sendall(b"BDAT nine\r\n")
            assert reply().startswith(b"501 5.5.4")
            assert f.readline() == b""  # closed: the rest of the stream cannot be followed

        def counted():
            t = dict(kv.split("=") for kv in stats.read_text().split())
            return t if int(t["msgs"]) == 1 and int(t["open"]) == 0 else None
        final = wait_until(counted, 5 * SLOW, what="the sink to count the message")
        assert int(final["bytes"]) == 18 and int(final["rcpts"]) == 1, final


def test_loadgen_idle_sessions(make_daemon):
    d = make_daemon()
    p = subprocess.Popen([str(LOADGEN), "-p", str(d.port), "-m", "starttls", "-I", "10", "-c", "5", "-t", "30"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(p.stdout.readline())
        assert ready["event"] == "idle_ready"
        assert ready["held"] == 10 and ready["wanted"] == 10 and ready["errors"] == 0
        time.sleep(0.2)
        p.stdin.close()
        done = json.loads(p.stdout.readline())
        assert done == {"event": "idle_done", "held": 10, "dropped_while_held": 0,
                        "client_cpu_s": done["client_cpu_s"]}
        assert p.wait(10 * SLOW) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    # the daemon saw 10 TLS sessions
    assert len(d.log_lines(r"event=tls\.established")) >= 10


def test_loadgen_implicit_tls_pipelined(make_daemon, tmp_path):
    d = make_daemon()
    passfile = tmp_path / "pass"
    passfile.write_text(pw(ALICE) + "\n")
    rc, r, err = loadgen(["-p", str(d.tls_port), "-m", "implicit", "-P", "-c", "3", "-n", "2", "-s", "3000",
                          "-r", "2", "-t", "2", "-u", ALICE, "-w", str(passfile), "-f", ALICE, "-T", "example.net"])
    assert rc == 0 and r["errors"] == 0, err
    assert r["mode"] == "implicit" and r["pipeline"] == 1 and r["msgs"] > 0 and r["handshakes"] > 0
    d.wait_mail(2 * r["msgs"])


def test_loadgen_counts_rejected_auth(make_daemon, tmp_path):
    d = make_daemon()
    passfile = tmp_path / "pass"
    passfile.write_text("not-the-password\n")
    rc, r, err = loadgen(["-p", str(d.port), "-m", "starttls", "-c", "1", "-n", "1", "-t", "1", "-u", ALICE,
                          "-w", str(passfile), "-f", ALICE, "-T", "example.net"])
    assert rc == 1 and r["errors"] > 0 and r["msgs"] == 0
    assert "loadgen: session error in auth: unexpected reply: 535" in err


class ScriptedSMTP(threading.Thread):
    """A plain SMTP server on loopback that writes its replies in awkward
    pieces: the greeting in three writes, an EHLO line ending in a bare LF, a
    reply split inside its code. long_line: instead, an EHLO reply line of
    that many characters."""

    def __init__(self, long_line=0):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.long_line = long_line
        self.accepted = 0
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()
        self.sock.close()

    def serve(self, c):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = c.makefile("rb")

        def say(*parts):
            for i, part in enumerate(parts):
                if i:
                    time.sleep(0.002)
                c.sendall(part)
        try:
            say(b"220-scripted", b" greeting\r\n220 ", b"ready\r\n")
            while True:
                verb = f.readline()[:4].upper()
                if verb == b"EHLO" and self.long_line:
                    say(b"250-" + b"x" * self.long_line + b"\r\n250 OK\r\n")
                elif verb == b"EHLO":
                    say(b"250-scripted\n250-PIPELINING\r\n", b"250 8BITMIME\r\n")
                elif verb in (b"MAIL", b"RCPT"):
                    say(b"25", b"0 ok\r\n")
                elif verb == b"DATA":
                    say(b"354 go\r\n")
                    while f.readline() not in (b".\r\n", b""):
                        pass
                    self.accepted += 1
                    say(b"250 queued\r\n")
                else:
                    if verb == b"QUIT":
                        say(b"221 bye\r\n")
                    return
        except OSError:
            pass
        finally:
            f.close()
            c.close()


@pytest.mark.parametrize("pipeline", [False, True])
def test_loadgen_reply_parsing(pipeline):
    srv = ScriptedSMTP()
    srv.start()
    try:
        rc, r, err = loadgen(["-p", str(srv.port), "-m", "plain", "-c", "2", "-n", "3", "-s", "1000", "-r", "2",
                              "-t", "1"] + (["-P"] if pipeline else []))
    finally:
        srv.done.set()
        srv.join(5)
    assert rc == 0 and r["errors"] == 0, err
    assert 0 < r["msgs"] <= srv.accepted and r["sessions"] > 0


def test_loadgen_reply_line_too_long():
    srv = ScriptedSMTP(long_line=3000)
    srv.start()
    try:
        rc, r, err = loadgen(["-p", str(srv.port), "-m", "plain", "-c", "1", "-n", "1", "-t", "1"])
    finally:
        srv.done.set()
        srv.join(5)
    assert rc == 1 and r["errors"] > 0 and r["msgs"] == 0
    assert "loadgen: session error in ehlo: reply line too long" in err
