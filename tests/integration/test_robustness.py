"""Robustness: lost connections mid-DATA, a client that does not read its
replies, QUIT and a half-close while a message is committed, 200
concurrent TLS sessions, and
garbage of every kind (random bytes, NULs, endless lines, binary DATA,
TLS to the plaintext port, plaintext to the TLS port). The daemon must
never die and must keep serving."""

import os
import random
import re
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from harness import (ALICE, BOB, SLOW, SMTPClient, ConnectionClosed, assert_delivered,
                     assert_reply, dot_stuff, make_msg, pw, wait_until)


def normal_session_works(d, rcpt):
    msg = make_msg(BOB, rcpt, "after-" + rcpt.split("@")[0])
    with d.login(BOB, pw(BOB)) as c:
        qid = c.send_mail(BOB, [rcpt], msg)
    files = d.wait_mail(1, rcpt)
    assert_delivered(files[0], BOB, rcpt, msg, qid=qid)


def test_lost_connection_mid_data(make_daemon):
    d = make_daemon()
    rcpt = "halfway@dest.test"
    for how in ("close", "reset"):
        c = d.login(ALICE, pw(ALICE))
        c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
        c.check(f"RCPT TO:<{rcpt}>", 250, "2.1.5")
        c.check("DATA", 354)
        msg = make_msg(ALICE, rcpt, "half", body=["half a message line %d" % i for i in range(500)])
        c.send(dot_stuff(msg)[: len(msg) // 2])
        time.sleep(0.2)
        if how == "reset":
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()
    wait_until(lambda: d.spool_files("tmp") == [], 5 * SLOW, what="spool tmp/ empty")
    assert d.spool_files("queue") == []
    time.sleep(0.3)
    assert d.mails(rcpt) == []
    d.assert_alive()
    normal_session_works(d, "after-halfway@dest.test")


def test_client_not_reading_replies(make_daemon):
    """A client that pipelines 30,000 NOOPs and reads nothing for a while:
    the replies (about 400 KiB) fill the socket, the server stops taking
    commands until they drain (its memory stays bounded) and then goes on;
    every reply arrives, in order, over TLS, and the session still works."""
    d = make_daemon()
    n = 30000
    c = d.login(ALICE, pw(ALICE))
    sender = threading.Thread(target=c.send, args=(b"NOOP\r\n" * n,), daemon=True)
    sender.start()
    time.sleep(1.0 * SLOW)  # the server blocks on its output meanwhile
    for i in range(n):
        r = c.reply()
        assert r.code == 250, (i, r)
    sender.join(30 * SLOW)
    assert not sender.is_alive()
    rcpt = "noreader@dest.test"
    msg = make_msg(ALICE, rcpt, "after-noops")
    qid = c.send_mail(ALICE, [rcpt], msg)
    c.check("QUIT", 221)
    assert_delivered(d.wait_mail(1, rcpt)[0], ALICE, rcpt, msg, qid=qid)
    d.assert_alive()


def test_quit_and_close_during_commit(make_daemon):
    """The end of DATA, QUIT and the end of the client's sending all in one
    go: input that arrives while the message is being committed waits; the
    client still gets the 250 with the queue id, then the 221."""
    d = make_daemon()
    rcpt = "halfclose@dest.test"
    msg = make_msg(ALICE, rcpt, "half-close")
    c = d.login(ALICE, pw(ALICE))
    c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
    c.check(f"RCPT TO:<{rcpt}>", 250, "2.1.5")
    c.check("DATA", 354)
    c.send(dot_stuff(msg) + b".\r\nQUIT\r\n")
    # half-close the TCP connection under the TLS layer (no close_notify)
    raw = socket.socket(fileno=os.dup(c.sock.fileno()))
    raw.shutdown(socket.SHUT_WR)
    raw.close()
    r = c.reply()
    assert r.code == 250 and "queued as" in r.text, r
    c.expect(221)
    assert_delivered(d.wait_mail(1, rcpt)[0], ALICE, rcpt, msg)
    c.close()
    d.assert_alive()


def test_200_concurrent_sessions(make_daemon):
    d = make_daemon(listener_extra=["max-connections-per-ip 400"])
    n = 200
    results = [None] * n
    barrier = threading.Barrier(n, timeout=60 * SLOW)

    def one(i):
        rcpt = f"conc{i}@dest.test"
        msg = make_msg(ALICE, rcpt, f"concurrent-{i}")
        c = SMTPClient(d.port, certs=d.certs, timeout=60)
        try:
            c.expect_greeting()
            c.ehlo()
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                pass
            c.starttls()
            c.ehlo()
            c.auth_plain(ALICE, pw(ALICE))
            qid = c.send_mail(ALICE, [rcpt], msg)
            c.check("QUIT", 221, "2.0.0")
            results[i] = (qid, msg)
        finally:
            c.close()

    with ThreadPoolExecutor(max_workers=n) as ex:
        futs = [ex.submit(one, i) for i in range(n)]
        errs = []
        for f in futs:
            try:
                f.result(timeout=120 * SLOW)
            except Exception as e:  # collect them all
                errs.append(repr(e))
    assert not errs, f"{len(errs)} sessions failed, first: {errs[:3]}"
    wait_until(lambda: len(d.mail_files()) >= n, 60 * SLOW, interval=0.2,
               what=f"{n} Maildir files")
    files = d.mails()
    assert len(files) == n
    qids = set()
    for i in range(n):
        rcpt = f"conc{i}@dest.test"
        mine = [f for f in files if f"Delivered-To: <{rcpt}>\n".encode() in f]
        assert len(mine) == 1, rcpt
        qid, msg = results[i]
        assert_delivered(mine[0], ALICE, rcpt, msg, qid=qid)
        qids.add(qid)
    assert len(qids) == n, "queue ids not unique"
    d.assert_alive()


# ---------------------------------------------------------------- garbage

def raw_conn(port):
    return socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)


def drain(s, timeout=2.0):
    """Reads until EOF or timeout; returns the bytes."""
    s.settimeout(timeout * SLOW)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except (socket.timeout, TimeoutError, ConnectionResetError, OSError):
        pass
    return out


def send_ignoring_errors(s, data):
    try:
        s.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError, socket.timeout, TimeoutError, OSError):
        return False


def check_sane_replies(data):
    for line in data.split(b"\r\n"):
        if line:
            assert len(line) >= 3 and line[:3].isdigit(), f"insane reply line {line[:100]!r}"
            assert line[0:1] in b"2345", line


def test_random_bytes(srv):
    rnd = random.Random(1234)
    for i in range(5):
        s = raw_conn(srv.port)
        junk = bytes(rnd.getrandbits(8) for _ in range(20000))
        send_ignoring_errors(s, junk)
        send_ignoring_errors(s, b"\r\nQUIT\r\n")
        data = drain(s, 1.0)
        s.close()
        assert data.startswith(b"220 "), data[:200]
        check_sane_replies(data)
        srv.assert_alive()
    normal_session_works(srv, "after-random@dest.test")


def test_nul_bytes_in_commands(srv):
    with srv.client() as c:
        c.expect_greeting()
        c.check(b"NOOP\x00", 500, "5.5.2")
        c.check(b"EHLO a\x00b", 500, "5.5.2")
        c.check(b"\x00\x00\x00", 500, "5.5.2")
        c.check(b"NO\x01OP", 500, "5.5.2")
        c.check("NOOP", 250, "2.0.0")
    with srv.login(ALICE, pw(ALICE)) as c:
        c.check(b"MAIL FROM:<alice@example.test\x00>", 500, "5.5.2")
        c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
        c.check(b"RCPT TO:<a\x00@dest.test>", 500, "5.5.2")
    srv.assert_alive()


def test_very_long_line_without_lf(srv):
    s = raw_conn(srv.port)
    assert drain_line(s).startswith(b"220 ")
    chunk = b"A" * 65536
    sent = 0
    t0 = time.monotonic()
    while sent < 8 * 1024 * 1024 and time.monotonic() - t0 < 20 * SLOW:
        if not send_ignoring_errors(s, chunk):
            break
        sent += len(chunk)
    send_ignoring_errors(s, b"\r\nNOOP\r\n")
    data = drain(s, 2.0)
    s.close()
    check_sane_replies(data)
    assert data == b"" or re.search(rb"^(500 5\.5\.6|421 4\.\d\.\d) ", data, re.M), data[:300]
    srv.assert_alive()
    normal_session_works(srv, "after-longline@dest.test")


def test_binary_junk_after_data(srv):
    rnd = random.Random(99)
    rcpt = "binary@dest.test"
    with srv.login(ALICE, pw(ALICE)) as c:
        for i in range(3):
            c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
            c.check(f"RCPT TO:<{rcpt}>", 250, "2.1.5")
            c.check("DATA", 354)
            junk = bytes(rnd.getrandbits(8) for _ in range(50000))
            junk = junk.replace(b"\r\n.\r\n", b"xxxxx")
            c.send(junk + b"\r\n.\r\n")
            r = c.reply()
            # random bytes hold bare LF/CR: refused
            assert_reply(r, 554, "5.6.0")
        c.check("NOOP", 250, "2.0.0")
    time.sleep(0.3)
    assert srv.mails(rcpt) == []
    srv.assert_alive()


def test_tls_client_hello_to_plaintext_port(srv):
    s = raw_conn(srv.port)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.wrap_socket(s, server_hostname="localhost")
        raise AssertionError("TLS handshake succeeded on a plaintext port")
    except (ssl.SSLError, OSError):
        pass
    s.close()
    # the same, but read what the server says to a ClientHello after the greeting
    s = raw_conn(srv.port)
    assert drain_line(s).startswith(b"220 ")
    inb, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inb, outb, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outb.read()
    assert hello[:1] == b"\x16"
    send_ignoring_errors(s, hello)
    send_ignoring_errors(s, b"\r\nQUIT\r\n")
    data = drain(s, 2.0)
    s.close()
    check_sane_replies(data)
    srv.assert_alive()
    normal_session_works(srv, "after-clienthello@dest.test")


def test_plaintext_to_implicit_tls_port(srv):
    s = raw_conn(srv.tls_port)
    send_ignoring_errors(s, b"EHLO client.test\r\nMAIL FROM:<x@y>\r\n" + b"Z" * 100000 + b"\r\n")
    data = drain(s, 3.0)
    s.close()
    assert b"220 " not in data and b"250" not in data, data[:200]
    # random bytes too
    s = raw_conn(srv.tls_port)
    send_ignoring_errors(s, os.urandom(30000))
    drain(s, 2.0)
    s.close()
    # a TCP connect that sends nothing and closes
    s = raw_conn(srv.tls_port)
    s.close()
    srv.assert_alive()
    with srv.login(ALICE, pw(ALICE), implicit=True) as c:
        c.check("NOOP", 250, "2.0.0")


def test_tls_garbage_after_handshake(srv):
    with srv.login(ALICE, pw(ALICE), implicit=True) as c:
        c.send(os.urandom(5000).replace(b"\n", b"") + b"\r\n")
        try:
            r = c.reply()
            assert r.code in (500, 421), r
        except ConnectionClosed:
            pass
    srv.assert_alive()
    normal_session_works(srv, "after-tlsgarbage@dest.test")


def drain_line(s):
    s.settimeout(10 * SLOW)
    out = b""
    while b"\r\n" not in out:
        chunk = s.recv(4096)
        if not chunk:
            break
        out += chunk
    return out


def test_many_abrupt_connections(srv):
    for i in range(50):
        s = raw_conn(srv.port if i % 2 else srv.tls_port)
        if i % 3 == 0:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    time.sleep(0.3)
    srv.assert_alive()
    normal_session_works(srv, "after-abrupt@dest.test")


# ---------------------------------------------------------------- full disk

def tmpfs_mount(path, size):
    """Mounts a small tmpfs at path (root only); None when not possible."""
    import subprocess
    if os.geteuid() != 0:
        return None
    path.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                       capture_output=True, text=True, timeout=30)
    return path if p.returncode == 0 else None


def test_disk_full_gives_451(make_daemon, tmp_path):
    import subprocess
    import pytest
    spool = tmpfs_mount(tmp_path / "smallfs", "256k")
    if spool is None:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        d = make_daemon(start=False)
        d.spool = spool / "spool"
        d.write_config()
        d.start()
        rcpt = "diskfull@dest.test"
        with d.login(ALICE, pw(ALICE)) as c:
            big = make_msg(ALICE, rcpt, "too-big-for-disk", body=["z" * 76] * 8000)  # ~620 KB
            c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
            c.check(f"RCPT TO:<{rcpt}>", 250, "2.1.5")
            c.check("DATA", 354)
            c.send(dot_stuff(big) + b".\r\n")
            c.expect(451, "4.3.0")
            # the session goes on, nothing half-written stays behind, and a
            # message that fits is accepted
            c.check("NOOP", 250, "2.0.0")
            assert d.spool_files("tmp") == []
            small = make_msg(ALICE, rcpt, "fits")
            qid = c.send_mail(ALICE, [rcpt], small)
        files = d.wait_mail(1, rcpt)
        assert len(files) == 1
        assert_delivered(files[0], ALICE, rcpt, small, qid=qid)
        assert d.log_lines(r"level=error event=spool\.\w+_failed .*No space left")
        d.assert_alive()
        d.stop()
    finally:
        subprocess.run(["umount", "-l", str(spool)], capture_output=True, timeout=30)
