"""SMTP protocol behaviour: pipelining, sequence errors, syntax errors,
VRFY/EXPN/HELP/RSET, BDAT/CHUNKING, DSN and SMTPUTF8 parameters, SMTP
smuggling (bare LF/CR end-of-data tricks) and STARTTLS injection."""

import time

import pytest

from harness import (ALICE, CAROL, HOSTNAME, assert_delivered, assert_reply, dot_stuff,
                     make_msg, pw, queued_id, tls_context)


def test_greeting_ehlo_helo(srv):
    with srv.client() as c:
        r = c.reply()
        assert r.lines == [f"220 {HOSTNAME} ESMTP submitd"], r
        r = c.cmd("EHLO client.test")
        assert r.lines[0] == f"250-{HOSTNAME} Hello [127.0.0.1]", r
        exts = [t.upper() for t in r.texts[1:]]
        for e in ("PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "DSN",
                  "STARTTLS"):
            assert e in exts, (e, r)
        assert any(e.startswith("SIZE ") for e in exts), r
        r = c.cmd("HELO client.test")
        assert r.lines == [f"250 {HOSTNAME}"], r


def test_pipelined_transaction(srv):
    r1, r2 = "pipe1@dest.test", "pipe2@dest.test"
    msg = make_msg(ALICE, r1, "pipelined")
    with srv.login(ALICE, pw(ALICE)) as c:
        c.send(f"MAIL FROM:<{ALICE}>\r\nRCPT TO:<{r1}>\r\nRCPT TO:<{r2}>\r\nDATA\r\n")
        c.expect(250, "2.1.0")
        c.expect(250, "2.1.5")
        c.expect(250, "2.1.5")
        c.expect(354)
        c.send(dot_stuff(msg) + b".\r\n")
        qid = queued_id(c.reply())
        # a whole second transaction and QUIT in one write
        msg2 = make_msg(ALICE, r1, "pipelined-2")
        c.send(f"RSET\r\nMAIL FROM:<{ALICE}>\r\nRCPT TO:<nobody@@bad>\r\nRCPT TO:<{r1}>\r\nDATA\r\n")
        c.expect(250, "2.0.0")
        c.expect(250, "2.1.0")
        c.expect(501, "5.1.3")
        c.expect(250, "2.1.5")
        c.expect(354)
        c.send(dot_stuff(msg2) + b".\r\nQUIT\r\n")
        qid2 = queued_id(c.reply())
        c.expect(221, "2.0.0")
        assert c.is_closed()
    for rcpt in (r1, r2):
        srv.wait_mail(1, rcpt)
    files = srv.wait_mail(2, r1)
    by_qid = {qid: msg, qid2: msg2}
    for f in files:
        q = [k for k in by_qid if f" id {k}".encode() in f]
        assert len(q) == 1
        assert_delivered(f, ALICE, r1, by_qid[q[0]], qid=q[0])
    assert_delivered(srv.wait_mail(1, r2)[0], ALICE, r2, msg, qid=qid)


def test_bad_sequence_503(srv):
    with srv.client(tls_port=True, implicit_tls=True) as c:
        c.expect_greeting()
        c.check(f"MAIL FROM:<{ALICE}>", 503, "5.5.1")  # before EHLO
        c.ehlo()
        c.auth_plain(ALICE, pw(ALICE))
        c.check("RCPT TO:<x@dest.test>", 503, "5.5.1")
        c.check("DATA", 503, "5.5.1")
        c.check("BDAT 0 LAST", 503, "5.5.1")
        c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
        c.check(f"MAIL FROM:<{ALICE}>", 503, "5.5.1")
        c.check("DATA", 503, "5.5.1")  # no RCPT yet
        c.check("STARTTLS", 503, "5.5.1")  # implicit TLS already


def test_unknown_and_syntax_errors(srv):
    with srv.login(ALICE, pw(ALICE)) as c:
        c.check("FOOBAR", 500, "5.5.2")
        c.check("MAIL", 501, "5.5.4")
        c.check("MAIL TO:<x@dest.test>", 501, "5.5.4")
        c.check("MAIL FROM:<alice@@example.test>", 501, "5.1.7")
        c.check(f"MAIL FROM:<{ALICE}> FOO=bar", 555, "5.5.4")
        c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
        c.check("RCPT TO:<@@>", 501, "5.1.3")
        c.check("RCPT", 501, "5.5.4")


def test_vrfy_expn_help_noop_rset_quit(srv):
    with srv.login(ALICE, pw(ALICE)) as c:
        r = c.check(f"VRFY {ALICE}", 252, "2.5.0")
        assert ALICE not in r.text
        r2 = c.check("VRFY nobody-at-all", 252, "2.5.0")
        assert r2.text == r.text.replace(ALICE, "nobody-at-all") or r2.text == r.text
        c.check("EXPN staff", 502, "5.5.1")
        c.check("HELP", 214, "2.0.0")
        c.check("NOOP", 250, "2.0.0")
        # RSET resets the transaction
        c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
        c.check("RCPT TO:<rset@dest.test>", 250, "2.1.5")
        c.check("RSET", 250, "2.0.0")
        c.check("DATA", 503, "5.5.1")
        c.check("RCPT TO:<rset@dest.test>", 503, "5.5.1")
        c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
        c.check("QUIT", 221, "2.0.0")
        assert c.is_closed()
    time.sleep(0.2)
    assert srv.mails("rset@dest.test") == []


# ---------------------------------------------------------------- BDAT

def bdat_start(c, rcpt):
    c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
    c.check(f"RCPT TO:<{rcpt}>", 250, "2.1.5")


def test_bdat_single_chunk(srv):
    rcpt = "bdat1@dest.test"
    msg = make_msg(ALICE, rcpt, "bdat-single")
    with srv.login(ALICE, pw(ALICE)) as c:
        bdat_start(c, rcpt)
        c.send(f"BDAT {len(msg)} LAST\r\n".encode() + msg)
        qid = queued_id(c.reply())
        c.check("DATA", 503, "5.5.1")  # new transaction has no MAIL
    files = srv.wait_mail(1, rcpt)
    assert len(files) == 1
    # BDAT content is not dot-stuffed: lines starting with a dot arrive as sent
    assert_delivered(files[0], ALICE, rcpt, msg, qid=qid)


def test_bdat_several_chunks_and_zero_last(srv):
    rcpt = "bdat3@dest.test"
    msg = make_msg(ALICE, rcpt, "bdat-chunks", body=["line %d" % i for i in range(50)] + [".dot"])
    # split inside a CRLF pair and inside a line
    cr = msg.index(b"\r\n", 100)
    parts = [msg[:cr + 1], msg[cr + 1:cr + 40], msg[cr + 40:]]
    with srv.login(ALICE, pw(ALICE)) as c:
        bdat_start(c, rcpt)
        for p in parts:
            c.send(f"BDAT {len(p)}\r\n".encode() + p)
            r = c.expect(250, "2.0.0")
            assert r.text == f"2.0.0 {len(p)} octets received", r
        c.check("DATA", 503, "5.5.1")  # DATA after BDAT in the same transaction
        c.send(b"BDAT 0 LAST\r\n")
        qid = queued_id(c.reply())
        # pipelined BDAT chunks of a second message
        msg2 = make_msg(ALICE, rcpt, "bdat-pipelined")
        a, b = msg2[:77], msg2[77:]
        c.send(f"MAIL FROM:<{ALICE}>\r\nRCPT TO:<{rcpt}>\r\nBDAT {len(a)}\r\n".encode() + a
               + f"BDAT {len(b)} LAST\r\n".encode() + b)
        c.expect(250, "2.1.0")
        c.expect(250, "2.1.5")
        c.expect(250, "2.0.0")
        qid2 = queued_id(c.reply())
    files = srv.wait_mail(2, rcpt)
    assert len(files) == 2
    by_qid = {qid: msg, qid2: msg2}
    for f in files:
        q = [k for k in by_qid if f" id {k}".encode() in f]
        assert len(q) == 1
        assert_delivered(f, ALICE, rcpt, by_qid[q[0]], qid=q[0])


def test_bdat_without_rcpt_drops_chunk(srv):
    with srv.login(ALICE, pw(ALICE)) as c:
        c.send(b"BDAT 10\r\nMAIL FROM:")
        c.expect(503, "5.5.1")
        c.check("NOOP", 250, "2.0.0")
        c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
        chunk = b"RCPT TO:<x>\r\n"
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        c.expect(503, "5.5.1")
        c.check("NOOP", 250, "2.0.0")


def test_bdat_bare_lf_refused(srv):
    rcpt = "bdatlf@dest.test"
    with srv.login(ALICE, pw(ALICE)) as c:
        bdat_start(c, rcpt)
        body = b"Subject: x\r\n\r\nbare\nlf\r\n"
        c.send(f"BDAT {len(body)} LAST\r\n".encode() + body)
        c.expect(554, "5.6.0")
        c.check("NOOP", 250, "2.0.0")
    time.sleep(0.3)
    assert srv.mails(rcpt) == []


# ---------------------------------------------------------------- DSN / SMTPUTF8

def test_dsn_parameters(srv):
    rcpt = "dsn@dest.test"
    msg = make_msg(ALICE, rcpt, "dsn")
    with srv.login(ALICE, pw(ALICE)) as c:
        c.check(f"MAIL FROM:<{ALICE}> RET=HDRS ENVID=x BODY=8BITMIME", 250, "2.1.0")
        c.check(f"RCPT TO:<{rcpt}> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@b", 250, "2.1.5")
        c.check("DATA", 354)
        c.send(dot_stuff(msg) + b".\r\n")
        qid = queued_id(c.reply())
        c.check(f"MAIL FROM:<{ALICE}> RET=FULL ENVID=abc+2Bdef", 250, "2.1.0")
        c.check(f"RCPT TO:<{rcpt}> NOTIFY=NEVER", 250, "2.1.5")
        c.check("RSET", 250, "2.0.0")
        c.check(f"MAIL FROM:<{ALICE}> RET=BOGUS", 501, "5.5.4")
    files = srv.wait_mail(1, rcpt)
    assert_delivered(files[0], ALICE, rcpt, msg, qid=qid)


def test_smtputf8(srv):
    sender = "жора@carol.test"
    rcpt = "пользователь@dest.test"
    msg = ("From: Жора <%s>\r\nTo: <%s>\r\nSubject: привет\r\n"
           "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <utf8.%d@client.test>\r\n"
           "\r\nПривет, мир!\r\n" % (sender, rcpt, time.time_ns())).encode("utf-8")
    with srv.login(CAROL, pw(CAROL)) as c:
        c.check(f"MAIL FROM:<{sender}>", 553, "5.6.7")
        c.check("MAIL FROM:<plain@carol.test>", 250, "2.1.0")
        c.check(f"RCPT TO:<{rcpt}>", 553, "5.6.7")
        c.check("RSET", 250, "2.0.0")
        c.check(f"MAIL FROM:<{sender}> SMTPUTF8", 250, "2.1.0")
        c.check(f"RCPT TO:<{rcpt}>", 250, "2.1.5")
        c.check("DATA", 354)
        c.send(dot_stuff(msg) + b".\r\n")
        qid = queued_id(c.reply())
    files = srv.wait_mail(1, rcpt)
    assert_delivered(files[0], sender, rcpt, msg, qid=qid)


# ---------------------------------------------------------------- smuggling

SMUGGLE_ENDS = {
    "lf-dot-lf": b"\n.\n",
    "crlf-dot-lf": b"\r\n.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "cr-dot-cr": b"\r.\r",
    "crlf-dot-cr": b"\r\n.\r",
    "cr-dot-crlf": b"\r.\r\n",
}


@pytest.mark.parametrize("name", list(SMUGGLE_ENDS))
def test_smuggling_refused(srv, name):
    victim = f"victim-{name}@dest.test"
    clean = f"clean-{name}@dest.test"
    with srv.login(ALICE, pw(ALICE)) as c:
        c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
        c.check(f"RCPT TO:<{clean}>", 250, "2.1.5")
        c.check("DATA", 354)
        payload = (f"From: <{ALICE}>\r\nTo: <{clean}>\r\nSubject: carrier\r\n\r\nhello".encode()
                   + SMUGGLE_ENDS[name]
                   + f"MAIL FROM:<{ALICE}>\r\nRCPT TO:<{victim}>\r\nDATA\r\n"
                     f"From: <{ALICE}>\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n.\r\n".encode())
        c.send(payload)
        c.expect(554, "5.6.0")
        assert c.pending(0.5) == b"", f"extra replies after 554: {c.buf!r}"
        # exactly one reply: the next one answers this NOOP
        c.check("NOOP", 250, "2.0.0")
        # a clean message afterwards on the same session works
        msg = make_msg(ALICE, clean, f"clean-after-{name}")
        qid = c.send_mail(ALICE, [clean], msg)
    files = srv.wait_mail(1, clean)
    time.sleep(0.3)
    files = srv.mails(clean)
    assert len(files) == 1, f"{len(files)} files for {clean}"
    assert_delivered(files[0], ALICE, clean, msg, qid=qid)
    assert srv.mails(victim) == []
    assert not any(b"smuggled" in m for m in srv.mails()), "smuggled content delivered"


# ---------------------------------------------------------------- STARTTLS

def test_starttls_injection_discarded(srv):
    with srv.client() as c:
        c.expect_greeting()
        c.ehlo()
        c.send("STARTTLS\r\nNOOP\r\n")
        c.expect(220, "2.0.0")
        assert c.pending(0.3) == b"", f"plaintext reply after 220: {c.buf!r}"
        c.buf = b""
        c.sock = tls_context(c.certs).wrap_socket(c.sock, server_hostname="localhost")
        # state was reset: MAIL before EHLO is a sequence error ...
        r = c.cmd(f"MAIL FROM:<{ALICE}>")
        assert_reply(r, 503, "5.5.1")
        r = c.cmd("EHLO client.test")
        # ... and the NOOP sent before the handshake was never answered
        assert r.code == 250 and r.texts[0].startswith(f"{HOSTNAME} Hello"), r
        assert any(t.upper().startswith("AUTH") for t in r.texts), r
        c.check("STARTTLS", 503, "5.5.1")


def test_starttls_injection_first_reply_is_ehlo(srv):
    with srv.client() as c:
        c.expect_greeting()
        c.ehlo()
        c.send("STARTTLS\r\nNOOP\r\nNOOP\r\n")
        c.expect(220, "2.0.0")
        c.buf = b""
        c.sock = tls_context(c.certs).wrap_socket(c.sock, server_hostname="localhost")
        r = c.cmd("EHLO client.test")
        assert r.code == 250 and r.texts[0].startswith(f"{HOSTNAME} Hello"), \
            f"first reply after the handshake is not the EHLO reply: {r!r}"
        assert c.pending(0.5) == b"", f"unexpected replies: {c.buf!r}"


def test_starttls_arguments_and_twice(srv):
    with srv.client() as c:
        c.expect_greeting()
        c.ehlo()
        c.check("STARTTLS now", 501, "5.5.4")
        c.starttls()
        c.ehlo()
        c.check("STARTTLS", 503, "5.5.1")
        c.auth_plain(ALICE, pw(ALICE))
        c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
