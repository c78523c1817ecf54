"""Bounded inputs: SIZE and message-size, command line and DATA text line
lengths, recipients, errors and messages per session, idle timeout."""

import time

import pytest

from harness import (ALICE, Factory, assert_delivered, assert_reply, dot_stuff, make_msg, pw)


@pytest.fixture(scope="module")
def lim(tmp_path_factory, certs, accounts_file):
    f = Factory(tmp_path_factory.mktemp("limits"), certs, accounts_file)
    d = f(limits={"message-size": "10K", "recipients": "3", "messages": "2", "errors": "4",
                  "line-length": "512", "idle-timeout": "2s"})
    yield d
    f.finish()


def test_size_param_too_big(lim):
    with lim.login(ALICE, pw(ALICE)) as c:
        assert "SIZE 10240" in c.exts, c.exts
        c.check(f"MAIL FROM:<{ALICE}> SIZE=10241", 552, "5.3.4")
        c.check(f"MAIL FROM:<{ALICE}> SIZE=10240", 250, "2.1.0")


def test_message_too_big_at_end_of_data(lim):
    rcpt = "big@dest.test"
    with lim.login(ALICE, pw(ALICE)) as c:
        body = ["x" * 70] * 200  # ~14 KB
        msg = make_msg(ALICE, rcpt, "too-big", body=body)
        c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
        c.check(f"RCPT TO:<{rcpt}>", 250, "2.1.5")
        c.check("DATA", 354)
        c.send(dot_stuff(msg) + b".\r\n")
        c.expect(552, "5.3.4")
        c.check("NOOP", 250, "2.0.0")
    time.sleep(0.5)
    assert lim.mails(rcpt) == []
    assert lim.spool_files("tmp") == []


def test_command_line_too_long(lim):
    with lim.login(ALICE, pw(ALICE)) as c:
        c.check("NOOP " + "a" * 600, 500, "5.5.6")
        c.check("NOOP", 250, "2.0.0")
        # the limit includes CRLF: 510 + 2 bytes is still fine
        c.check("NOOP " + "b" * 505, 250, "2.0.0")
        c.check("NOOP " + "b" * 506, 500, "5.5.6")
        c.check("NOOP", 250, "2.0.0")


def test_command_line_huge(lim):
    with lim.login(ALICE, pw(ALICE)) as c:
        c.send(b"MAIL FROM:<" + b"a" * 200000 + b"@dest.test>\r\n")
        c.expect(500, "5.5.6")
        c.check("NOOP", 250, "2.0.0")


def test_data_line_too_long(lim):
    rcpt = "longline@dest.test"
    with lim.login(ALICE, pw(ALICE)) as c:
        msg = make_msg(ALICE, rcpt, "long-line", body=["y" * 999])  # 1001 with CRLF
        c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
        c.check(f"RCPT TO:<{rcpt}>", 250, "2.1.5")
        c.check("DATA", 354)
        c.send(dot_stuff(msg) + b".\r\n")
        c.expect(554, "5.6.0")
        # a 998-octet line (1000 with CRLF) is fine
        ok = make_msg(ALICE, rcpt, "long-line-ok", body=["z" * 998])
        qid = c.send_mail(ALICE, [rcpt], ok)
    files = lim.wait_mail(1, rcpt)
    assert len(files) == 1
    assert_delivered(files[0], ALICE, rcpt, ok, qid=qid)


def test_too_many_recipients(lim):
    with lim.login(ALICE, pw(ALICE)) as c:
        c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
        for i in range(3):
            c.check(f"RCPT TO:<many{i}@dest.test>", 250, "2.1.5")
        c.check("RCPT TO:<many3@dest.test>", 452, "4.5.3")
        c.check("DATA", 354)
        msg = make_msg(ALICE, "many0@dest.test", "many")
        c.send(dot_stuff(msg) + b".\r\n")
        c.expect(250, "2.0.0")
    for i in range(3):
        lim.wait_mail(1, f"many{i}@dest.test")
    time.sleep(0.3)
    assert lim.mails("many3@dest.test") == []


def test_errors_limit(lim):
    with lim.login(ALICE, pw(ALICE)) as c:
        n500 = 0
        for _ in range(10):
            r = c.cmd("XYZZY")
            if r.code == 421:
                break
            assert_reply(r, 500, "5.5.2")
            n500 += 1
        else:
            r = c.reply()
        assert_reply(r, 421, "4.7.0")
        assert n500 == 4, f"{n500} error replies before 421 (errors 4)"
        assert c.is_closed()


def test_messages_per_session(lim):
    with lim.login(ALICE, pw(ALICE)) as c:
        for i in range(2):
            c.send_mail(ALICE, [f"persession{i}@dest.test"],
                        make_msg(ALICE, f"persession{i}@dest.test", f"persession{i}"))
        c.check(f"MAIL FROM:<{ALICE}>", 421, "4.7.0")
        assert c.is_closed()


def vm_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_client_that_never_reads_is_dropped(lim):
    """A client that pipelines commands and never reads a reply: once the
    socket is full the server's output stalls, and it stops reading too
    (the input it has not taken stays bounded: this flood used to grow the
    server by a gigabyte in a few seconds); after the idle timeout (2 s
    here) and the 10 s allowed for the closing reply, the connection is
    closed, and the server goes on serving."""
    import threading
    pid = lim.pid
    rss0 = vm_rss_kib(pid)
    c = lim.login(ALICE, pw(ALICE))
    c.sock.settimeout(60)
    stop = threading.Event()

    def flood():
        try:
            while not stop.is_set():
                c.send(b"NOOP\r\n" * 2000)
        except OSError:
            pass  # closed by the server: what this test waits for
    t = threading.Thread(target=flood, daemon=True)
    t0 = time.monotonic()
    t.start()
    time.sleep(1.5)
    grown = vm_rss_kib(pid) - rss0
    assert grown < 64 * 1024, f"the server grew by {grown} KiB while the client flooded it"
    t.join(40)
    took = time.monotonic() - t0
    stop.set()
    assert not t.is_alive(), "the server never closed the connection"
    assert 1.5 <= took < 30, took
    lim.wait_log(r"event=session\.timeout .*user=alice@example\.test")
    c.close()
    with lim.login(ALICE, pw(ALICE)) as c2:
        c2.check("NOOP", 250)
    lim.assert_alive()


def test_idle_timeout(lim):
    with lim.client() as c:
        c.expect_greeting()
        t0 = time.monotonic()
        r = c.reply()
        took = time.monotonic() - t0
        assert_reply(r, 421, "4.4.2")
        assert "timeout" in r.text.lower()
        assert 1.5 <= took < 6, took
        assert c.is_closed()
    # also after TLS and AUTH
    with lim.login(ALICE, pw(ALICE)) as c:
        c.expect(421, "4.4.2")
        assert c.is_closed()
