"""AUTH and TLS-first rules: nothing that matters before STARTTLS, AUTH
replies (535 with a growing per-IP delay, cancel, bad base64, twice,
unknown mechanism, suspended account) and the per-session failure limit."""

import re
import threading
import time

from harness import (ALICE, ARGON, BOB, DAVE, SLOW, assert_reply, b64, pw)


def plain_client(d):
    c = d.client()
    c.expect_greeting()
    c.ehlo()
    return c


def tls_client(d):
    c = plain_client(d)
    c.starttls()
    c.ehlo()
    return c


def test_auth_not_advertised_and_refused_before_starttls(srv):
    with srv.client() as c:
        c.expect_greeting()
        c.ehlo()
        assert "STARTTLS" in c.exts
        assert not any(e.startswith("AUTH") for e in c.exts), c.exts
        c.check("AUTH PLAIN " + b64(f"\0{ALICE}\0{pw(ALICE)}"), 530, "5.7.0")
        c.check("AUTH LOGIN", 530, "5.7.0")
        c.check("NOOP", 250, "2.0.0")


def test_mail_before_tls_refused(srv):
    with plain_client(srv) as c:
        r = c.check(f"MAIL FROM:<{ALICE}>", 530, "5.7.0")
        assert "STARTTLS" in r.text
        c.check("RCPT TO:<x@dest.test>", 530, "5.7.0")
        c.check("DATA", 530, "5.7.0")


def test_mail_before_auth_refused(srv):
    with tls_client(srv) as c:
        assert any(e.startswith("AUTH") for e in c.exts)
        c.check(f"MAIL FROM:<{ALICE}>", 530, "5.7.0")
        c.check("RCPT TO:<x@dest.test>", 530, "5.7.0")
        # and on the implicit-TLS port
    with srv.client(tls_port=True, implicit_tls=True) as c:
        c.expect_greeting()
        c.ehlo()
        c.check(f"MAIL FROM:<{ALICE}>", 530, "5.7.0")


def test_auth_plain_variants(srv):
    # initial response in a second line
    with tls_client(srv) as c:
        assert_reply(c.cmd("AUTH PLAIN"), 334)
        assert_reply(c.cmd(b64(f"\0{ALICE}\0{pw(ALICE)}")), 235, "2.7.0")
        c.check("AUTH PLAIN " + b64(f"\0{ALICE}\0{pw(ALICE)}"), 503, "5.5.1")
        c.check("AUTH LOGIN", 503, "5.5.1")
        c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
    # authzid equal to the login is fine; mechanism names are case-insensitive
    with tls_client(srv) as c:
        c.check("auth plain " + b64(f"{BOB}\0{BOB}\0{pw(BOB)}"), 235, "2.7.0")
    # AUTH LOGIN with the user name as initial response
    with tls_client(srv) as c:
        assert_reply(c.cmd("AUTH LOGIN " + b64(BOB)), 334)
        c.check(b64(pw(BOB)), 235, "2.7.0")


def test_auth_wrong_password(srv):
    with tls_client(srv) as c:
        c.auth_plain(ALICE, "wrong-password", expect=535, enh="5.7.8")
        # the session is still usable: a correct login now succeeds
        c.auth_plain(ALICE, pw(ALICE))
        c.check("QUIT", 221, "2.0.0")
    with tls_client(srv) as c:
        c.auth_login(BOB, "wrong-password-login", expect=535, enh="5.7.8")
    log = srv.log_text()
    assert "wrong-password" not in log
    assert pw(ALICE) not in log
    assert b64(f"\0{ALICE}\0{pw(ALICE)}") not in log
    assert b64("wrong-password-login") not in log


def test_auth_cancel(srv):
    with tls_client(srv) as c:
        assert_reply(c.cmd("AUTH PLAIN"), 334)
        c.check("*", 501, "5.7.0")
        c.check("NOOP", 250, "2.0.0")
    with tls_client(srv) as c:
        assert_reply(c.cmd("AUTH LOGIN"), 334)
        assert_reply(c.cmd(b64(ALICE)), 334)
        c.check("*", 501, "5.7.0")
        c.check("NOOP", 250, "2.0.0")


def test_auth_bad_base64(srv):
    with tls_client(srv) as c:
        c.check("AUTH PLAIN !!!notbase64!!!", 501, "5.5.2")
        c.check("NOOP", 250, "2.0.0")
    with tls_client(srv) as c:
        assert_reply(c.cmd("AUTH PLAIN"), 334)
        c.check("%%%%", 501, "5.5.2")


def test_auth_unknown_mechanism(srv):
    with tls_client(srv) as c:
        c.check("AUTH CRAM-MD5", 504, "5.5.4")
        c.check("AUTH XOAUTH2 dG9rZW4=", 504, "5.5.4")
        c.auth_plain(ALICE, pw(ALICE))


def test_auth_suspended_account(srv):
    with tls_client(srv) as c:
        c.auth_plain(DAVE, pw(DAVE), expect=525, enh="5.7.13")
        c.check(f"MAIL FROM:<{DAVE}>", 530, "5.7.0")


def test_auth_unknown_user(srv):
    with tls_client(srv) as c:
        c.auth_plain("nobody@example.test", "whatever", expect=535, enh="5.7.8")


def test_auth_delay_grows_and_failure_limit(make_daemon):
    d = make_daemon(limits={"auth-delay": "100", "auth-delay-max": "2000", "auth-failures": "3"})
    times = []
    with tls_client(d) as c:
        for i in range(3):
            t0 = time.monotonic()
            r = c.cmd("AUTH PLAIN " + b64(f"\0{ALICE}\0bad-password-{i}"))
            times.append(time.monotonic() - t0)
            if i < 2:
                assert_reply(r, 535, "5.7.8")
            else:
                # the limit: the 3rd failure is answered 535 then 421, or 421
                if r.code == 535:
                    assert r.enh == "5.7.8", r
                    r = c.reply()
                assert_reply(r, 421, "4.7.0")
        assert c.is_closed(), "connection not closed after auth-failures"
    assert times[0] >= 0.1, times
    assert times[1] >= 0.2, times
    assert times[2] >= 0.3, times
    assert times[0] < times[1] < times[2], times
    # the per-IP delay carries over to a new session from the same address
    with tls_client(d) as c:
        t0 = time.monotonic()
        c.auth_plain(BOB, "again-wrong", expect=535, enh="5.7.8")
        assert time.monotonic() - t0 >= 0.4
        # and a success resets it
        c.auth_plain(BOB, pw(BOB))
    with tls_client(d) as c:
        t0 = time.monotonic()
        c.auth_plain(BOB, "wrong-after-success", expect=535, enh="5.7.8")
        took = time.monotonic() - t0
        assert 0.1 <= took < 0.8, took
    log = d.log_text()
    for s in ("bad-password-0", "again-wrong", "wrong-after-success", pw(BOB)):
        assert s not in log, "password in log"


def test_auth_delay_capped(make_daemon):
    d = make_daemon(limits={"auth-delay": "100", "auth-delay-max": "250", "auth-failures": "10"})
    with tls_client(d) as c:
        times = []
        for i in range(4):
            t0 = time.monotonic()
            c.auth_plain(ALICE, f"bad-{i}", expect=535, enh="5.7.8")
            times.append(time.monotonic() - t0)
        assert times[2] >= 0.25 and times[3] >= 0.25, times
        # capped at 250 ms (+ hashing and scheduling slack)
        assert times[3] < 1.5, times


def test_a_burst_of_logins_runs_the_slow_hash_once(make_daemon):
    """Sessions that log in with the same password while it is being
    verified (a burst of connections at start, or as the cache entry
    expires) take the first verification's result instead of running
    argon2id once each: with one auth thread, one verification per burst."""
    d = make_daemon(top={"auth-threads": "1", "auth-cache-ttl": "2"})
    n = 8

    def burst():
        since = d.log_size()
        clients = [tls_client(d) for _ in range(n)]
        gate = threading.Barrier(n)
        replies = [None] * n

        def one(i):
            gate.wait(10)
            replies[i] = clients[i].cmd("AUTH PLAIN " + b64(f"\0{ARGON}\0{pw(ARGON)}"))
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60 * SLOW)
        for c in clients:
            c.close()
        for r in replies:
            assert_reply(r, 235, "2.7.0")
        oks = d.log_lines(r"event=auth\.ok .*login=" + re.escape(ARGON), since)
        assert len(oks) == n, oks
        return [l for l in oks if "cached=0" in l]

    verified = burst()
    assert len(verified) == 1, verified
    time.sleep(2.5)  # the entry expires
    verified = burst()
    assert len(verified) == 1, verified


def test_a_login_near_the_end_of_the_cache_entry_renews_it(make_daemon):
    """A login in the last quarter of a cached entry's life is answered from
    the cache and has the password verified again on an auth thread, so
    that a credential in steady use does not fall out of the cache (where
    the next burst of logins would wait for argon2id)."""
    d = make_daemon(top={"auth-cache-ttl": "4", "log-level": "debug"})

    def login():
        with tls_client(d) as c:
            c.auth_plain(ARGON, pw(ARGON))
            c.check("QUIT", 221)

    login()  # verified: the entry lives 4 s from about now
    t1 = time.monotonic()
    time.sleep(3.3)
    login()  # from the cache, with less than 1 s left: renewed in the background
    d.wait_log(r"event=auth\.cache_refresh login=" + re.escape(ARGON) + " renewed=yes")
    time.sleep(max(0.0, t1 + 4.6 - time.monotonic()))
    login()  # past the first entry's end: the renewed one answers
    oks = d.log_lines(r"event=auth\.ok .*login=" + re.escape(ARGON))
    assert [l.split("cached=")[1][:1] for l in oks] == ["0", "1", "1"], oks
    assert len(d.log_lines(r"event=auth\.cache_refresh")) == 1
    assert pw(ARGON) not in d.log_text()
