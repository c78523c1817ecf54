"""Abuse controls (src/abuse, docs/security.md): every rate limit trips at
its configured count with its documented reply and comes back after its
window while other accounts and addresses go on (clients bind 127.0.0.x
source addresses); a brute-force run from one address is blocked while a
correct login from another address goes through at once, a distributed
one blocks the login for unknown addresses only, exempt networks count
nothing; a burst from one account is held (released with submitctl queue
release) or suspends the account (durably, in the accounts file, until
submitctl user unsuspend); submitctl limits show/reset; two daemons
sharing a real redis-server enforce one limit and block together; with
Redis unreachable the daemon falls back to local counters (logged) and
still accepts mail, or refuses with fail-open no."""

import re
import shutil
import socket
import subprocess
import time

import pytest

from harness import (ALICE, ARGON, BOB, CAROL, DAVE, SLOW, assert_reply, b64, dot_stuff, free_port, make_msg, pw,
                     queued_id, submitctl, wait_until)

WINDOW = 2  # seconds: the short windows the tests use


def ratelimit(*lines, block="ratelimit"):
    return block + " {\n" + "".join(f"    {l}\n" for l in lines) + "}\n"


def session(d, src="127.0.0.1"):
    """A client from source address src, past STARTTLS and EHLO."""
    c = d.client(source=src)
    c.expect_greeting()
    c.ehlo()
    c.starttls()
    c.ehlo()
    return c


def login(d, user, src="127.0.0.1"):
    c = session(d, src)
    c.auth_plain(user, pw(user))
    return c


def auth(c, user, password):
    return c.cmd("AUTH PLAIN " + b64(f"\0{user}\0{password}"))


def send(c, frm, rcpts, subject="abuse"):
    return c.send_mail(frm, rcpts, make_msg(frm, rcpts[0], subject))


def ctl(d, *args, check=True):
    return submitctl(["-c", str(d.conf)] + list(args), check=check)


def refused(r, code, enh, what):
    assert_reply(r, code, enh)
    assert what in r.text, r
    assert re.search(r"(try again|it resets) in \d+ s$", r.text), r
    return r


# --------------------------------------------------------------------------
# Rate limits


def test_messages_per_account(make_daemon):
    d = make_daemon(extra=ratelimit(f"messages 3/{WINDOW}s") +
                    "ratelimit-for bob@example.test {\n    messages 2/2s hard\n}\n")
    with login(d, ALICE) as c, login(d, BOB) as b:
        send(c, ALICE, ["x@dest.test"])
        for _ in range(2):
            c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
            c.check("RSET", 250, "2.0.0")
        r = refused(c.cmd(f"MAIL FROM:<{ALICE}>"), 451, "4.7.1", "messages per account (limit 3/2s)")
        assert r.text.startswith("4.7.1 Rate limit exceeded: ")
        c.check("NOOP", 250, "2.0.0")
        # bob has his own bucket, and his own (hard) limit
        b.check(f"MAIL FROM:<{BOB}>", 250, "2.1.0")
        b.check("RSET", 250, "2.0.0")
        b.check(f"MAIL FROM:<{BOB}>", 250, "2.1.0")
        b.check("RSET", 250, "2.0.0")
        refused(b.cmd(f"MAIL FROM:<{BOB}>"), 550, "5.7.1", "messages per account (limit 2/2s hard)")
        time.sleep(WINDOW + 0.1)
        for _ in range(3):
            c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
            c.check("RSET", 250, "2.0.0")
        assert_reply(c.cmd(f"MAIL FROM:<{ALICE}>"), 451, "4.7.1")
    d.wait_mail(1, "x@dest.test")
    assert d.log_lines(r"event=ratelimit\.exceeded .*limit=messages key=m:alice@example\.test max=3/2s used=3")


def test_recipients_per_account(make_daemon):
    d = make_daemon(extra=ratelimit(f"recipients 4/{WINDOW}s"))
    rcpts = [f"r{i}@dest.test" for i in range(5)]
    with login(d, ALICE) as c:
        c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
        for r in rcpts[:4]:
            c.check(f"RCPT TO:<{r}>", 250, "2.1.5")
        refused(c.cmd(f"RCPT TO:<{rcpts[4]}>"), 451, "4.7.1", "recipients per account (limit 4/2s)")
        # the transaction goes on with the accepted ones
        c.check("DATA", 354)
        c.send(dot_stuff(make_msg(ALICE, rcpts[0], "four")) + b".\r\n")
        queued_id(c.reply())
        with login(d, BOB) as b:
            send(b, BOB, ["b1@dest.test", "b2@dest.test"])
        time.sleep(WINDOW + 0.1)
        c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
        c.check(f"RCPT TO:<{rcpts[4]}>", 250, "2.1.5")
    for r in rcpts[:4]:
        d.wait_mail(1, r)
    assert d.mails(rcpts[4]) == []


def test_bytes_per_account(make_daemon):
    d = make_daemon(extra=ratelimit(f"bytes 8K/{WINDOW}s"))
    body = ["y" * 76] * 60  # about 4.7 KB: 5 KiB counted
    with login(d, ALICE) as c:
        assert_reply(queued_one(c, body, "first"), 250)
        # the SIZE= parameter is checked at MAIL: 4 KiB more would not fit
        refused(c.cmd(f"MAIL FROM:<{ALICE}> SIZE=4000"), 451, "4.7.1", "bytes per account (limit 8K/2s)")
        c.check(f"MAIL FROM:<{ALICE}> SIZE=3000", 250, "2.1.0")
        c.check("RSET", 250, "2.0.0")
        # the real size at the end of the data
        refused(queued_one(c, body, "second"), 451, "4.7.1", "bytes per account")
        # a message larger than the whole limit can never pass
        r = queued_one(c, ["z" * 76] * 120, "huge")
        assert_reply(r, 552, "5.3.4")
        assert "larger than the limit of bytes per account (8K/2s)" in r.text, r
        time.sleep(WINDOW + 0.1)
        assert_reply(queued_one(c, body, "third"), 250)
    d.wait_mail(2, "big@dest.test")
    time.sleep(0.3)
    assert len(d.mails("big@dest.test")) == 2
    assert d.spool_files("tmp") == []


def queued_one(c, body, subject):
    c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
    c.check("RCPT TO:<big@dest.test>", 250, "2.1.5")
    c.check("DATA", 354)
    c.send(dot_stuff(make_msg(ALICE, "big@dest.test", subject, body=body)) + b".\r\n")
    return c.reply()


def test_connections_per_address(make_daemon):
    d = make_daemon(extra=ratelimit(f"connections 3/{WINDOW}s"))
    for _ in range(3):
        with d.client(source="127.0.0.2") as c:
            c.expect_greeting()
    with d.client(source="127.0.0.2") as c:
        refused(c.reply(), 421, "4.7.1", "connections per client address (limit 3/2s)")
        assert c.is_closed()
    # another address is not affected; nor the implicit-TLS listener's greeting for it
    with d.client(source="127.0.0.3") as c:
        c.expect_greeting()
    with d.client(tls_port=True, implicit_tls=True, source="127.0.0.3") as c:
        c.expect_greeting()
    time.sleep(WINDOW + 0.1)
    with d.client(source="127.0.0.2") as c:
        c.expect_greeting()


def test_auth_attempts_per_address_and_per_login(make_daemon):
    d = make_daemon(limits={"auth-delay": "0", "auth-delay-max": "0", "auth-failures": "10"},
                    extra=ratelimit("auth 3/4s", "auth-login 3/4s"))
    # per address: the fourth attempt from .2 is refused, whatever the password
    with session(d, "127.0.0.2") as c:
        for user in (DAVE, BOB, CAROL):  # three logins: only the address's limit is reached
            assert_reply(auth(c, user, "wrong"), 535, "5.7.8")
        refused(auth(c, CAROL, pw(CAROL)), 454, "4.7.1", "AUTH attempts per client address (limit 3/4s)")
    login(d, CAROL, "127.0.0.3").close()
    # per login, counted from addresses the login never logged in from
    login(d, ALICE, "127.0.0.4").close()  # .4 is now known
    with session(d, "127.0.0.5") as c:
        for i in range(2):
            assert_reply(auth(c, ALICE, f"wrong-{i}"), 535, "5.7.8")
        refused(auth(c, ALICE, pw(ALICE)), 454, "4.7.1", "AUTH attempts per login (limit 3/4s)")
        c.auth_plain(BOB, pw(BOB))  # another login from the same address is fine
    login(d, ALICE, "127.0.0.4").close()  # a known address is not counted
    time.sleep(4.1)
    login(d, CAROL, "127.0.0.2").close()
    login(d, ALICE, "127.0.0.5").close()


# --------------------------------------------------------------------------
# Brute force


BRUTE = dict(limits={"auth-delay": "0", "auth-delay-max": "0", "auth-failures": "100"},
             extra=ratelimit("auth-failures-ip 10/10m", "auth-failures-login 50/10m", "block-time 60s",
                             "auth 100000/1m", "auth-login 100000/1m", "exempt 127.0.0.8/32"))


def test_brute_force_blocks_the_address_not_the_user(make_daemon):
    d = make_daemon(**BRUTE)
    codes = []
    c = session(d, "127.0.0.2")
    for i in range(300):
        r = auth(c, ALICE, f"guess-{i}")
        codes.append((r.code, r.enh))
        if r.code == 454:
            assert r.text.startswith("4.7.0 Too many failed logins from your address; try again in "), r
        if len(codes) % 100 == 0:  # auth-failures per session: 421 and a new session
            assert_reply(c.reply(), 421, "4.7.0")
            c.close()
            c = session(d, "127.0.0.2")
    assert codes[:10] == [(535, "5.7.8")] * 10, codes[:12]
    assert codes[10:] == [(454, "4.7.0")] * 290
    # the right password does not help the blocked address ...
    refused(auth(c, ALICE, pw(ALICE)), 454, "4.7.0", "Too many failed logins")
    c.close()
    # ... while the user logs in from elsewhere at once
    t0 = time.monotonic()
    with login(d, ALICE, "127.0.0.3") as ok:
        send(ok, ALICE, ["after@dest.test"])
    assert time.monotonic() - t0 < 1.0 * SLOW
    d.wait_mail(1, "after@dest.test")
    assert d.log_lines(r"event=auth\.block .*key=bi:127\.0\.0\.2 failures=10 limit=10/10m block_s=60")
    assert not d.log_lines(r"key=bl:")
    # exempt networks are never blocked
    with session(d, "127.0.0.8") as e:
        for i in range(15):
            assert_reply(auth(e, ALICE, f"exempt-{i}"), 535, "5.7.8")
        e.auth_plain(ALICE, pw(ALICE))
    out = ctl(d, "limits", "show", "ip:127.0.0.2").stdout
    assert re.search(r"^blocked yes, \d+ s left$", out, re.M), out
    assert "auth-failures-ip 10 of 10/10m" in out, out
    out = ctl(d, "limits", "show").stdout
    assert re.search(r"^blocked ip:127\.0\.0\.2 \d+ s$", out, re.M), out
    assert "reset ip:127.0.0.2" in ctl(d, "limits", "reset", "ip:127.0.0.2").stdout
    login(d, ALICE, "127.0.0.2").close()


def test_distributed_guessing_blocks_the_login_for_new_addresses(make_daemon):
    d = make_daemon(limits={"auth-delay": "0", "auth-delay-max": "0", "auth-failures": "100"},
                    extra=ratelimit("auth-failures-ip 100/1m", "auth-failures-login 6/1m", "block-time 60s"))
    login(d, ALICE, "127.0.0.3").close()  # .3 is a known address of alice
    for src in ("127.0.0.4", "127.0.0.5", "127.0.0.6"):
        with session(d, src) as c:
            for i in range(2):
                assert_reply(auth(c, ALICE, f"wrong-{i}"), 535, "5.7.8")
    with session(d, "127.0.0.7") as c:
        r = refused(auth(c, ALICE, pw(ALICE)), 454, "4.7.0", "Too many failed logins")
        assert "for this login from new addresses" in r.text, r
        c.auth_plain(BOB, pw(BOB))
    login(d, ALICE, "127.0.0.3").close()
    assert d.log_lines(r"event=auth\.block .*key=bl:alice@example\.test failures=6")
    out = ctl(d, "limits", "show", f"user:{ALICE}").stdout
    assert re.search(r"^blocked yes, \d+ s left$", out, re.M), out


# --------------------------------------------------------------------------
# Compromised accounts


def detecting(make_daemon, action):
    """A daemon whose accounts trip past 3 messages per hour."""
    return make_daemon(extra=ratelimit(f"action {action}", "min-messages 3", "min-recipients 1000", "max-ips 0",
                                       block="abuse"))


def burst(c, prefix):
    """Three messages within the baseline, then the one that trips it."""
    for i in range(3):
        send(c, ALICE, [f"{prefix}{i}@dest.test"])
    return send(c, ALICE, [f"{prefix}-trip@dest.test"])


def test_burst_is_held_until_released(make_daemon):
    d = detecting(make_daemon, "hold")
    with login(d, ALICE) as c:
        held = burst(c, "ok")
        held2 = send(c, ALICE, ["held2@dest.test"])
    with login(d, BOB) as b:
        send(b, BOB, ["bob@dest.test"])
    for i in range(3):
        d.wait_mail(1, f"ok{i}@dest.test")
    d.wait_mail(1, "bob@dest.test")
    line = d.wait_log(r"event=abuse\.hold .*login=alice@example\.test reason=messages messages=4 limit_messages=3 "
                      r"baseline_messages=0\.00")
    assert f"qid={held}" in line, line
    assert d.log_lines(rf"event=queued .*qid={held2} .*held=abuse")
    time.sleep(0.5)
    assert d.mails("ok-trip@dest.test") == [] and d.mails("held2@dest.test") == []
    assert held in d.spool_files("queue")
    out = ctl(d, "limits", "show", f"user:{ALICE}").stdout
    assert "window messages 5 (limit 3, baseline 0.00)" in out, out
    ctl(d, "queue", "release", held)
    d.wait_mail(1, "ok-trip@dest.test")
    assert d.mails("held2@dest.test") == []


def test_burst_suspends_until_unsuspend(make_daemon):
    d = detecting(make_daemon, "suspend")
    with login(d, ALICE) as c:
        held = burst(c, "s")
        # the account is suspended at once, also in this session
        r = c.cmd(f"MAIL FROM:<{ALICE}>")
        assert_reply(r, 550, "5.7.13")
    d.wait_log(r"event=abuse\.suspend .*login=alice@example\.test reason=messages messages=4 limit_messages=3")
    d.wait_log(r"event=abuse\.suspend_written .*login=alice@example\.test")
    assert re.search(r"^alice@example\.test:.*suspended=yes", d.accounts.read_text(), re.M)
    with session(d) as c:
        assert_reply(auth(c, ALICE, pw(ALICE)), 525, "5.7.13")
        c.auth_plain(BOB, pw(BOB))
    time.sleep(0.3)
    assert d.mails("s-trip@dest.test") == []
    assert held in d.spool_files("queue")
    out = ctl(d, "limits", "show").stdout
    assert "suspended user:alice@example.test (written to the accounts file)" in out, out
    submitctl(["-a", str(d.accounts), "user", "unsuspend", ALICE])
    mark = d.log_size()
    ctl(d, "reload")
    d.wait_log(r"event=reload status=ok", since=mark)
    login(d, ALICE).close()
    assert "suspended user:" not in ctl(d, "limits", "show").stdout


def test_too_many_addresses_alert(make_daemon):
    d = make_daemon(extra=ratelimit("max-ips 2", "ip-window 1h", block="abuse"))
    for src in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        login(d, ALICE, src).close()
    d.wait_log(r"event=abuse\.alert .*login=alice@example\.test reason=addresses .*addresses=3 max_addresses=2")
    login(d, ALICE, "127.0.0.5").close()  # an alert is logged once per window
    assert len(d.log_lines(r"event=abuse\.alert")) == 1
    out = ctl(d, "limits", "reset", f"user:{ALICE}").stdout
    assert f"reset user:{ALICE}" in out, out


# --------------------------------------------------------------------------
# Redis


class Redis:
    """redis-server on 127.0.0.1:<port> without persistence, stopped by PID."""

    def __init__(self, root, port=None):
        assert shutil.which("redis-server"), "redis-server is missing: scripts/deps.sh test installs it"
        self.port = port or free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", str(root)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, 10 * SLOW, what="redis-server")

    def ping(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def redis(tmp_path):
    r = Redis(tmp_path / "redis")
    yield r
    r.stop()


def test_two_daemons_share_limits_through_redis(make_daemon, redis):
    conf = ratelimit(f"backend redis://127.0.0.1:{redis.port}/3", "messages 3/1m", "auth-failures-ip 3/1m",
                     "block-time 60s")
    d1 = make_daemon(extra=conf)
    d2 = make_daemon(extra=conf)
    with login(d1, ALICE) as c1, login(d2, ALICE) as c2:
        send(c1, ALICE, ["one@dest.test"])
        c1.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
        c1.check("RSET", 250, "2.0.0")
        send(c2, ALICE, ["three@dest.test"])
        refused(c2.cmd(f"MAIL FROM:<{ALICE}>"), 451, "4.7.1", "messages per account (limit 3/1m)")
        refused(c1.cmd(f"MAIL FROM:<{ALICE}>"), 451, "4.7.1", "messages per account")
    with login(d2, BOB) as b:
        send(b, BOB, ["bob@dest.test"])
    d1.wait_mail(1, "one@dest.test")
    d2.wait_mail(1, "three@dest.test")
    out = ctl(d1, "limits", "show", f"user:{ALICE}").stdout
    assert "messages 3 of 3/1m" in out, out
    # a block made through one daemon holds on the other
    with session(d1, "127.0.0.2") as c:
        for i in range(3):
            assert_reply(auth(c, BOB, f"bad-{i}"), 535, "5.7.8")
    with session(d2, "127.0.0.2") as c:
        refused(auth(c, BOB, pw(BOB)), 454, "4.7.0", "Too many failed logins from your address")
    for d in (d1, d2):
        assert not d.log_lines(r"ratelimit\.backend_down")


def test_verified_logins_are_cached_with_redis_counters(make_daemon, redis):
    """With the counters in Redis every login goes through an auth thread;
    the verified-credential cache still spares it the slow hash."""
    d = make_daemon(extra=ratelimit(f"backend redis://127.0.0.1:{redis.port}/4", "messages 100/1m"))
    for _ in range(3):
        with login(d, ARGON):
            pass
    oks = d.log_lines(r"event=auth\.ok .*login=" + re.escape(ARGON))
    assert [l.split("cached=")[1][:1] for l in oks] == ["0", "1", "1"], oks
    with session(d) as c:
        assert_reply(auth(c, ARGON, pw(ARGON) + "x"), 535, "5.7.8")


def test_redis_down_falls_back_to_local_counters(make_daemon, tmp_path):
    port = free_port()
    d = make_daemon(extra=ratelimit(f"backend redis://127.0.0.1:{port}", "redis-retry 1s", "messages 2/1m"))
    with login(d, ALICE) as c:
        send(c, ALICE, ["down@dest.test"])
        c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
        c.check("RSET", 250, "2.0.0")
        refused(c.cmd(f"MAIL FROM:<{ALICE}>"), 451, "4.7.1", "messages per account")  # local counters
    d.wait_mail(1, "down@dest.test")
    line = d.wait_log(r"event=ratelimit\.backend_down .*fallback=local retry_s=1")
    assert "error=" in line, line
    assert len(d.log_lines(r"ratelimit\.backend_down")) == 1, "logged once per outage"
    assert "unreachable: local counters (fail-open)" in ctl(d, "limits", "show").stdout
    # Redis comes up: the shared counters are used again
    r = Redis(tmp_path / "late-redis", port)
    try:
        time.sleep(1.1)
        with login(d, BOB) as b:
            send(b, BOB, ["up@dest.test"])
        d.wait_log(r"event=ratelimit\.backend_up")
    finally:
        r.stop()
    # fail-open no: mail that a limit applies to is refused rather than
    # counted locally (connect and AUTH checks still use the local counters)
    d2 = make_daemon(extra=ratelimit(f"backend redis://127.0.0.1:{free_port()}", "fail-open no", "messages 100/1m"))
    with login(d2, ALICE) as c:
        r = c.cmd(f"MAIL FROM:<{ALICE}>")
        assert_reply(r, 451, "4.7.1")
        assert r.text == "4.7.1 Rate limiter unavailable; try again later", r
    d2.wait_log(r"event=ratelimit\.backend_down .*fallback=refuse")
