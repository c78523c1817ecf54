"""Sender policy (an account sends only as its own addresses, in MAIL FROM
and in From:) and no open relay: without AUTH no RCPT is ever accepted."""

import time

from harness import (ALICE, BOB, CAROL, assert_delivered, assert_reply, dot_stuff, make_msg, pw)


def test_mail_from_foreign_address_refused(srv):
    mark = srv.log_size()
    with srv.login(ALICE, pw(ALICE)) as c:
        c.check(f"MAIL FROM:<{BOB}>", 553, "5.7.1")
        # the transaction did not start
        c.check("RCPT TO:<x@dest.test>", 503, "5.5.1")
        # own address and the alias are fine, case-insensitively
        c.check("MAIL FROM:<Alias@Example.TEST>", 250, "2.1.0")
        c.check("RSET", 250, "2.0.0")
        c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
    lines = [l for l in srv.log_lines(r"bob@example\.test", since=mark)
             if "alice@example.test" in l]
    assert lines, "no log line naming both identities:\n" + srv.log_text(mark)


def test_domain_entry_allows_any_address_in_domain(srv):
    with srv.login(CAROL, pw(CAROL)) as c:
        c.check("MAIL FROM:<anyone@carol.test>", 250, "2.1.0")
        c.check("RSET", 250, "2.0.0")
        c.check("MAIL FROM:<Other.Person@CAROL.test>", 250, "2.1.0")
        c.check("RSET", 250, "2.0.0")
        c.check("MAIL FROM:<x@sub.carol.test>", 553, "5.7.1")
        c.check("MAIL FROM:<x@carol.test.evil>", 553, "5.7.1")
        c.check("MAIL FROM:<carol@example.test>", 553, "5.7.1")
        msg = make_msg("someone@carol.test", "carol-rcpt@dest.test", "domain-entry")
        qid = c.send_mail("someone@carol.test", ["carol-rcpt@dest.test"], msg)
    files = srv.wait_mail(1, "carol-rcpt@dest.test")
    assert_delivered(files[0], "someone@carol.test", "carol-rcpt@dest.test", msg, qid=qid)


def test_from_header_foreign_refused_at_end_of_data(srv):
    rcpt = "fromhdr@dest.test"
    with srv.login(ALICE, pw(ALICE)) as c:
        msg = make_msg(BOB, rcpt, "forged-from")  # From: <bob@...>
        c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
        c.check(f"RCPT TO:<{rcpt}>", 250, "2.1.5")
        c.check("DATA", 354)
        c.send(dot_stuff(msg) + b".\r\n")
        c.expect(553, "5.7.1")
        # a From: with a display name and a list with one foreign address
        for frm in (f'"Alice" <{BOB}>', f"{ALICE}, {BOB}"):
            c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
            c.check(f"RCPT TO:<{rcpt}>", 250, "2.1.5")
            c.check("DATA", 354)
            m = msg.replace(f"From: <{BOB}>".encode(), f"From: {frm}".encode())
            c.send(dot_stuff(m) + b".\r\n")
            c.expect(553, "5.7.1")
        # the session continues: a proper message goes through
        ok_rcpt = "fromhdr-ok@dest.test"
        good = make_msg("alias@example.test", ok_rcpt, "good-from")
        good = good.replace(b"From: <alias@example.test>", b'From: "Alice A." <alias@example.test>')
        qid = c.send_mail(ALICE, [ok_rcpt], good)
    files = srv.wait_mail(1, ok_rcpt)
    assert_delivered(files[0], ALICE, ok_rcpt, good, qid=qid)
    time.sleep(0.3)
    assert srv.mails(rcpt) == [], "a refused message was delivered"


def test_null_sender_allowed(srv):
    rcpt = "nullsender@dest.test"
    with srv.login(ALICE, pw(ALICE)) as c:
        msg = make_msg(ALICE, rcpt, "null-sender")
        qid = c.send_mail("", [rcpt], msg)
    files = srv.wait_mail(1, rcpt)
    assert_delivered(files[0], "", rcpt, msg, qid=qid)


# ---------------------------------------------------------------- no open relay

def test_unauthenticated_never_gets_rcpt(srv):
    # plaintext, before STARTTLS
    with srv.client() as c:
        c.expect_greeting()
        c.ehlo()
        for frm in (ALICE, "", "x@dest.test"):
            c.check(f"MAIL FROM:<{frm}>", 530, "5.7.0")
            r = c.cmd("RCPT TO:<victim@dest.test>")
            assert r.code in (503, 530), r
        r = c.cmd("DATA")
        assert r.code in (503, 530), r
    # after TLS, without AUTH
    with srv.client() as c:
        c.expect_greeting()
        c.ehlo()
        c.starttls()
        c.ehlo()
        for frm in (ALICE, "", "x@dest.test"):
            c.check(f"MAIL FROM:<{frm}>", 530, "5.7.0")
            r = c.cmd("RCPT TO:<victim@dest.test>")
            assert r.code in (503, 530), r
            assert r.code != 250
    # implicit TLS without AUTH, pipelined
    with srv.client(tls_port=True, implicit_tls=True) as c:
        c.expect_greeting()
        c.ehlo()
        c.send("MAIL FROM:<>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\n")
        assert_reply(c.reply(), 530, "5.7.0")
        for _ in range(2):
            r = c.reply()
            assert r.code in (503, 530), r
        # a failed AUTH does not open anything either
        c.auth_plain(ALICE, "not-the-password", expect=535, enh="5.7.8")
        c.check(f"MAIL FROM:<{ALICE}>", 530, "5.7.0")
    time.sleep(0.2)
    assert srv.mails("victim@dest.test") == []


def test_from_header_foreign_address_after_sixteen_own(srv):
    """Every From: address is checked: a foreign one hidden after many own
    addresses is not overlooked."""
    rcpt = "many-from@dest.test"
    own = ", ".join([ALICE] * 16)
    with srv.login(ALICE, pw(ALICE)) as c:
        for frm, code, enh in ((own + f", {BOB}", 553, "5.7.1"), (own, 250, "2.0.0")):
            msg = make_msg(ALICE, rcpt, "many-from").replace(f"From: <{ALICE}>".encode(),
                                                             f"From: {frm}".encode())
            c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
            c.check(f"RCPT TO:<{rcpt}>", 250, "2.1.5")
            c.check("DATA", 354)
            c.send(dot_stuff(msg) + b".\r\n")
            c.expect(code, enh)
    assert len(srv.wait_mail(1, rcpt)) == 1
    time.sleep(0.3)
    assert len(srv.mails(rcpt)) == 1


def test_header_section_over_limit_refused(make_daemon):
    """A From: beyond limits.header-size could not be checked: refused."""
    d = make_daemon(limits={"header-size": "4K"})
    rcpt = "bighdr@dest.test"
    filler = [f"X-Filler-{i}: " + "f" * 60 for i in range(80)]  # ~6 KB of header
    with d.login(ALICE, pw(ALICE)) as c:
        msg = make_msg(ALICE, rcpt, "big-header", extra_headers=filler + [f"From: <{BOB}>"])
        c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
        c.check(f"RCPT TO:<{rcpt}>", 250, "2.1.5")
        c.check("DATA", 354)
        c.send(dot_stuff(msg) + b".\r\n")
        c.expect(552, "5.3.4")
        ok = make_msg(ALICE, rcpt, "small-header", extra_headers=filler[:20])
        qid = c.send_mail(ALICE, [rcpt], ok)
    files = d.wait_mail(1, rcpt)
    assert_delivered(files[0], ALICE, rcpt, ok, qid=qid)
