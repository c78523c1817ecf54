"""Durability under kill -9: a load client (several threads, smtplib over
STARTTLS + AUTH, one connection each, reconnecting) sends 1,000 messages;
submitd is killed with SIGKILL in the middle of the flow and restarted on
the same spool while the clients keep going. Once the queue has drained,
every message acknowledged with 250 must be at the sink. Duplicates are
counted and printed: they are allowed only for a crash between the sink's
acceptance and our own record of it, so there can be at most one per
delivery in progress at the kill. Two sinks: the Maildir transport, and
the smarthost transport to a loopback aiosmtpd receiver."""

import re
import smtplib
import ssl
import threading
import time
from collections import Counter

import pytest

from harness import ALICE, SLOW, pw, wait_until

N = 1000
CLIENTS = 8
KILL_AT = 400          # acknowledged messages before the kill
DELIVERY_THREADS = 16  # the default: at most this many deliveries in flight at the kill
MSGID_RE = re.compile(rb"^Message-ID: (<crash-[^>]+>)\r?$", re.M | re.I)


class Load:
    """The load client: CLIENTS threads share the message numbers; each
    message is sent once (a message whose DATA got no answer is not sent
    again: its fate is unknown, so a copy of it is not a duplicate)."""

    def __init__(self, port, certs, rcpt, run):
        self.port = port
        self.rcpt = rcpt
        self.run = run
        self.ctx = ssl.create_default_context(cafile=str(certs["ecdsa_crt"]))
        self.ctx.check_hostname = False  # the certificate is for localhost, we dial 127.0.0.1
        self.lock = threading.Lock()
        self.next = 0
        self.acked = set()
        self.unknown = set()   # DATA sent, no 250 seen (connection died)
        self.refused = set()   # a 4xx/5xx reply
        self.deadline = time.monotonic() + 60 * SLOW
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(CLIENTS)]

    def msgid(self, i):
        return f"<crash-{self.run}-{i}@client.test>"

    def message(self, i):
        return (f"From: <{ALICE}>\r\nTo: <{self.rcpt}>\r\nSubject: crash {i}\r\n"
                f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: {self.msgid(i)}\r\n\r\n"
                f"message {i}\r\n" + "x" * (i % 700) + "\r\n").encode()

    def connect(self):
        c = smtplib.SMTP("127.0.0.1", self.port, timeout=10 * SLOW)
        c.ehlo("load.test")
        c.starttls(context=self.ctx)
        c.ehlo("load.test")
        c.login(ALICE, pw(ALICE))
        return c

    def take(self):
        with self.lock:
            if self.next >= N:
                return None
            self.next += 1
            return self.next - 1

    def client(self):
        conn = None
        i = self.take()
        while i is not None and time.monotonic() < self.deadline:
            try:
                if conn is None:
                    conn = self.connect()
                code, _ = conn.mail(ALICE)
                if code == 250:
                    code, _ = conn.rcpt(self.rcpt)
                if code != 250:
                    raise smtplib.SMTPException(f"refused before DATA: {code}")
            except (OSError, smtplib.SMTPException):
                # nothing of the message was sent yet: safe to try again
                conn = None
                time.sleep(0.02)
                continue
            try:
                code, _ = conn.data(self.message(i))
            except (OSError, smtplib.SMTPException):
                code = None
                conn = None
            with self.lock:
                (self.acked if code == 250 else self.unknown if code is None else self.refused).add(self.msgid(i))
            i = self.take()

    def start(self):
        for t in self.threads:
            t.start()

    def join(self):
        for t in self.threads:
            t.join(70 * SLOW)
        assert not any(t.is_alive() for t in self.threads), "load client threads did not finish"

    def nacked(self):
        with self.lock:
            return len(self.acked)


def msgids(datas):
    """The Message-IDs of the load client's messages among these byte strings."""
    out = []
    for data in datas:
        m = MSGID_RE.search(data)
        if m:
            out.append(m.group(1).decode())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sink", ["maildir", "smarthost"])
def test_kill9_while_1000_messages_flow(make_daemon, receivers, dnsserver, certs, capsys, tmp_path, sink):
    if sink == "smarthost":
        rx = receivers(certs=certs, tls="starttls")
        # the relay looks even an address literal up in DNS: give it a
        # resolver that answers (the machine's may not), and a name
        dns = dnsserver(tmp_path / "dns", args=["--host-record=localhost,127.0.0.1"])
        extra = "\n".join(["transport out {", "    type smarthost", f"    url smtp://localhost:{rx.port}",
                           f"    resolver 127.0.0.1:{dns.port}", f"    ca-file {certs['ecdsa_crt']}",
                           "    connect-timeout 2s", "    command-timeout 10s", "}", "route relay.test out"])
        rcpt = "sink@relay.test"
    else:
        extra = ""
        rcpt = "sink@dest.test"
    d = make_daemon(queue={"retry-initial": "1s", "retry-max": "1s"}, extra=extra,
                    limits={"messages": "100000"})
    if sink == "smarthost":
        def ids():
            return msgids(m["data"] for m in rx.accepted())
    else:
        def ids():
            return msgids(d.mails())
    load = Load(d.port, certs, rcpt, f"{sink}-{time.time_ns()}")
    t0 = time.monotonic()
    load.start()
    wait_until(lambda: load.nacked() >= KILL_AT, 30 * SLOW, what=f"{KILL_AT} acknowledged messages")
    d.kill9()
    at_kill = load.nacked()
    d.start()
    load.join()
    acked = set(load.acked)
    assert at_kill < N and len(acked) > at_kill, "the kill did not fall in the middle of the flow"

    def drained():
        return d.spool_files("queue") == [] and acked <= set(ids())
    try:
        wait_until(drained, 30 * SLOW, interval=0.2, what="the queue to drain")
    except AssertionError:
        pass  # reported below with the details
    got = Counter(ids())
    missing = sorted(acked - set(got))
    dups = sorted(m for m, n in got.items() if n > 1)
    unknown_delivered = len(load.unknown & set(got))
    with capsys.disabled():
        print(f"\n[crash/{sink}] sent {len(acked) + len(load.unknown) + len(load.refused)}, acknowledged "
              f"{len(acked)} ({at_kill} before the kill), unanswered {len(load.unknown)} (of which delivered "
              f"{unknown_delivered}), refused {len(load.refused)}; at the sink {sum(got.values())} copies of "
              f"{len(got)} messages; lost {len(missing)}; duplicates {len(dups)}"
              + (": " + " ".join(f"{m}x{got[m]}" for m in dups) if dups else "")
              + f"; {time.monotonic() - t0:.1f}s")
    assert not missing, f"{len(missing)} acknowledged messages never arrived: {missing[:20]}\n" + d.log_tail()
    assert d.spool_files("queue") == [], d.spool_files("queue")
    assert len(dups) <= DELIVERY_THREADS, f"more duplicates than deliveries in flight: {dups}"
    assert all(got[m] == 2 for m in dups), {m: got[m] for m in dups}
    assert not set(got) - acked - load.unknown, "the sink has messages nobody sent"
    log = d.log_text()
    assert "event=queue.corrupt" not in log, log
