"""The delivery scheduler seen from outside: bounces (RFC 3464 DSNs) for a
550 from a real SMTP receiver (aiosmtpd behind the smarthost transport) and
for queue lifetime expiry, parsed with Python's email package and checked
part by part and field by field; RET=HDRS, NOTIFY=NEVER and the null
sender; a delay warning; and every `submitctl queue` command over the
control socket (list, show, hold surviving a restart, release, flush,
delete, errors, the socket's owner and mode)."""

import email
import email.policy
import os
import pwd
import re
import stat
import subprocess

import pytest

from harness import ALICE, HOSTNAME, SLOW, SUBMITCTL, relocate_for_user, san_env, submit, wait_until

FAST = {"retry-initial": "1s", "retry-max": "1s"}


def smarthost(rx, certs):
    return "\n".join(["transport out {", "    type smarthost", f"    url smtp://127.0.0.1:{rx.port}",
                      f"    ca-file {certs['ecdsa_crt']}", "    helo relay.mx.test", "    connect-timeout 2s",
                      "    command-timeout 10s", "}", "route relay.test out"])


def blocked_maildirs(root):
    """A transport for *.box.test whose Maildir is root/boxes/DOMAIN/USER:
    creating a regular file root/boxes/DOMAIN blocks that domain (every
    attempt fails with 451, retried), removing it unblocks it."""
    return "\n".join(["transport boxes {", "    type maildir", f"    path {root}/boxes/%d/%u", "}",
                      "route *.box.test boxes"])


def block(root, domain):
    (root / "boxes").mkdir(exist_ok=True)
    (root / "boxes" / domain).write_text("blocked\n")


def unblock(root, domain):
    (root / "boxes" / domain).unlink()


def bounces(d, n, timeout=15):
    """The first n bounces in the sender's Maildir (ALICE's copies with the
    null Return-Path), parsed."""
    def found():
        got = [m for m in d.mails(ALICE) if m.startswith(b"Return-Path: <>\n")]
        return got if len(got) >= n else None
    got = wait_until(found, timeout * SLOW, what=f"{n} bounce(s) for {ALICE}")
    # the Maildir copy has LF line ends: back to CRLF for the parser
    return [email.message_from_bytes(m.replace(b"\n", b"\r\n"), policy=email.policy.compat32) for m in got]


def status_blocks(report):
    """The per-message and per-recipient field blocks of a message/delivery-status part."""
    blocks = report.get_payload()
    assert isinstance(blocks, list) and len(blocks) >= 2, blocks
    return blocks[0], blocks[1:]


def check_envelope_headers(b, subject):
    assert b["From"] == f"Mail Delivery System <MAILER-DAEMON@{HOSTNAME}>"
    assert b["To"] == f"<{ALICE}>"
    assert b["Subject"] == subject
    assert b["Auto-Submitted"] == "auto-replied"
    assert re.fullmatch(rf"<[0-9A-Z]{{16}}\.dsn@{re.escape(HOSTNAME)}>", b["Message-ID"]), b["Message-ID"]
    assert email.utils.parsedate_to_datetime(b["Date"]) is not None
    assert b["MIME-Version"] == "1.0"
    assert b.get_content_type() == "multipart/report"
    assert b.get_param("report-type") == "delivery-status"
    assert b.is_multipart()


def test_bounce_for_550_is_a_multipart_report(make_daemon, receivers, certs):
    rx = receivers(certs=certs, tls="starttls",
                   rcpt_replies={"nobody@relay.test": "550 5.1.1 <nobody@relay.test>: no such user"})
    d = make_daemon(queue=FAST, extra=smarthost(rx, certs))
    qid, msg = submit(d, ALICE, ["nobody@relay.test", "ok@relay.test"], "to a 550",
                      mail_params=" ENVID=env-7",
                      rcpt_params={"nobody@relay.test": " ORCPT=rfc822;Nobody@relay.test"})
    assert rx.wait_messages(1)[0]["rcpt_tos"] == ["ok@relay.test"]
    (b,) = bounces(d, 1)
    d.wait_log(rf"event=queue\.removed .*qid={qid}")
    check_envelope_headers(b, "Undelivered Mail Returned to Sender")
    parts = b.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "message/rfc822"]
    human = parts[0].get_payload()
    assert "could not be delivered" in human
    assert "<nobody@relay.test>: host 127.0.0.1 said: 550 5.1.1 <nobody@relay.test>: no such user" in human
    assert "ok@relay.test" not in human
    per_msg, per_rcpt = status_blocks(parts[1])
    assert per_msg["Reporting-MTA"] == f"dns; {HOSTNAME}"
    assert per_msg["X-Submitd-Queue-ID"] == qid
    assert per_msg["Original-Envelope-Id"] == "env-7"
    assert email.utils.parsedate_to_datetime(per_msg["Arrival-Date"]) is not None
    assert len(per_rcpt) == 1, [dict(r) for r in per_rcpt]
    r = per_rcpt[0]
    assert r["Original-Recipient"] == "rfc822;Nobody@relay.test"
    assert r["Final-Recipient"] == "rfc822; nobody@relay.test"
    assert r["Action"] == "failed"
    assert r["Status"] == "5.1.1"
    assert r["Remote-MTA"] == "dns; 127.0.0.1"
    # the relay adds where the reply came from
    assert r["Diagnostic-Code"].startswith("smtp; 550 5.1.1 <nobody@relay.test>: no such user"), r["Diagnostic-Code"]
    assert email.utils.parsedate_to_datetime(r["Last-Attempt-Date"]) is not None
    # the whole original comes back, as it was queued (our Received: first)
    (orig,) = parts[2].get_payload()
    assert orig["Subject"] == "to a 550"
    assert orig["Received"].startswith("from client.test ([127.0.0.1])")
    assert orig.get_payload().replace("\r\n", "\n") == msg.split(b"\r\n\r\n", 1)[1].decode().replace("\r\n", "\n")
    assert re.search(rf"event=dsn\.queued .*qid={qid}.*action=failed nrcpt=1 to={re.escape(ALICE)}", d.log_text())
    assert d.spool_files("queue") == []


def test_bounce_headers_only_notify_never_null_sender(make_daemon, receivers, certs):
    rx = receivers(certs=certs, tls="starttls", rcpt_replies={
        "gone@relay.test": "550 5.1.1 gone", "never@relay.test": "550 5.1.1 gone too",
        "other@relay.test": "553 5.7.1 refused"})
    d = make_daemon(queue=FAST, extra=smarthost(rx, certs))
    q1, msg1 = submit(d, ALICE, ["gone@relay.test"], "headers only", mail_params=" RET=HDRS")
    q2, _ = submit(d, ALICE, ["never@relay.test"], "never", rcpt_params={"never@relay.test": " NOTIFY=NEVER"})
    q3, _ = submit(d, ALICE, ["never@relay.test"], "success only",
                   rcpt_params={"never@relay.test": " NOTIFY=SUCCESS,DELAY"})
    q4, _ = submit(d, "", ["other@relay.test"], "from the null sender")
    for q in (q1, q2, q3, q4):
        d.wait_log(rf"event=queue\.removed .*qid={q}")
    (b,) = bounces(d, 1)
    check_envelope_headers(b, "Undelivered Mail Returned to Sender")
    parts = b.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status",
                                                     "text/rfc822-headers"]
    headers = parts[2].get_payload()
    assert "Subject: headers only" in headers and "Hello, this is message" not in headers
    _, (r,) = status_blocks(parts[1])
    assert r["Final-Recipient"] == "rfc822; gone@relay.test" and r["Status"] == "5.1.1"
    log = d.log_text()
    assert re.search(rf"event=dsn\.queued .*qid={q1}", log)
    for q in (q2, q3, q4):
        assert not re.search(rf"event=dsn\.queued .*qid={q}", log), log
        assert re.search(rf"event=failed .*qid={q} ", log), log
    assert re.search(rf"event=bounce\.suppressed .*qid={q4} .*reason=null_sender nrcpt=1", log), log
    # the one bounce was the only thing delivered to the sender
    assert len(d.mails(ALICE)) == 1


def test_lifetime_expiry_bounces_after_a_delay_warning(make_daemon, tmp_path):
    root = tmp_path / "d0"
    d = make_daemon(start=False, queue={"retry-initial": "1s", "retry-max": "1s", "lifetime": "3s",
                                        "delay-warning": "1s"},
                    extra=blocked_maildirs(root))
    block(root, "slow.box.test")
    d.start()
    qid, _ = submit(d, ALICE, ["x@slow.box.test"], "expires")
    warn, fail = bounces(d, 2, timeout=20)
    if warn["Subject"] != "Delayed Mail (still being retried)":
        warn, fail = fail, warn
    check_envelope_headers(warn, "Delayed Mail (still being retried)")
    check_envelope_headers(fail, "Undelivered Mail Returned to Sender")
    assert "THIS IS A WARNING ONLY" in warn.get_payload()[0].get_payload()
    _, (w,) = status_blocks(warn.get_payload()[1])
    assert w["Action"] == "delayed" and w["Status"] == "4.3.0"
    assert w["Diagnostic-Code"].startswith("smtp; 451 4.3.0 maildir ")
    assert email.utils.parsedate_to_datetime(w["Will-Retry-Until"]) is not None
    human = fail.get_payload()[0].get_payload()
    assert "<x@slow.box.test>: gave up after the queue lifetime; the last attempt said: 451 4.3.0 maildir" in human
    _, (f,) = status_blocks(fail.get_payload()[1])
    assert f["Action"] == "failed" and f["Status"] == "4.3.0" and f["Final-Recipient"] == "rfc822; x@slow.box.test"
    assert "Remote-MTA" not in f
    d.wait_log(rf"event=queue\.removed .*qid={qid}")
    log = d.log_text()
    assert len(re.findall(rf"event=dsn\.queued .*qid={qid} .*action=delayed", log)) == 1, log
    assert len(re.findall(rf"event=dsn\.queued .*qid={qid} .*action=failed", log)) == 1, log


def ctl(d, *args, check=True):
    p = subprocess.run([str(SUBMITCTL), "-c", str(d.conf), "queue", *args], env=san_env(),
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30 * SLOW)
    if check:
        assert p.returncode == 0, f"submitctl queue {args} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def settled(d, qid):
    """Waits until qid's delivery run has ended (its state is no longer running)."""
    wait_until(lambda: "\nstate: queued\n" in ctl(d, "show", qid).stdout, 10 * SLOW, what=f"{qid} queued")


def test_submitctl_queue_commands(make_daemon, tmp_path):
    root = tmp_path / "d0"
    d = make_daemon(start=False, queue={"retry-initial": "1h"}, extra=blocked_maildirs(root))
    for dom in ("held.box.test", "flush.box.test", "del.box.test"):
        block(root, dom)
    d.start()
    a, _ = submit(d, ALICE, ["x@held.box.test"], "held")
    d.wait_log(rf"event=deferred .*qid={a} ")
    settled(d, a)

    out = ctl(d, "list").stdout
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "AGE", "SIZE", "PEND", "DONE", "FAIL", "STATE", "NEXT", "SENDER"]
    row = [l for l in lines if l.startswith(a)]
    assert len(row) == 1, out
    assert re.fullmatch(rf"{a} \d+s +\d+ +1 +0 +0 +queued +in (59m|1h00m) +<{re.escape(ALICE)}>", row[0]), row
    assert lines[-1] == "1 message, 0 held"

    out = ctl(d, "show", a).stdout
    assert f"id: {a}\nstate: queued\nnext-try: in " in out
    assert f"\nsender: <{ALICE}>\nauth-user: {ALICE}\nclient: 127.0.0.1 helo=client.test listener=submission\n" in out
    assert "\nrecipients: 1 (pending 1, done 0, failed 0)\n" in out
    assert re.search(r"\nrcpt 0 <x@held\.box\.test> pending attempts=1 next-try=.* last-try=.*\n"
                     r"  last-reply: 451 4\.3\.0 maildir .*held\.box\.test/x: Not a directory\n", out), out

    assert ctl(d, "hold", a, "looks", "odd").stdout == f"{a}: held\n"
    st = (d.spool / "queue" / f"{a}.st").read_text()
    assert re.search(r'^hold \d+ "looks odd" [0-9a-f]{8}$', st, re.M), st
    assert "  held  " in [l for l in ctl(d, "list").stdout.splitlines() if l.startswith(a)][0]
    unblock(root, "held.box.test")
    assert ctl(d, "flush", a).stdout == f"{a}: held; release it to deliver it\n"

    # the hold is durable: a restart does not deliver it
    d.stop()
    d.start()
    wait_until(lambda: ctl(d, "flush", a).stdout == f"{a}: held; release it to deliver it\n", 10 * SLOW,
               what="the held message seen by the queue after the restart")
    out = ctl(d, "show", a).stdout
    assert "\nstate: held\nhold-reason: looks odd\nnext-try: -\n" in out
    assert not (root / "boxes" / "held.box.test" / "x" / "new").exists()
    assert ctl(d, "release", a).stdout == f"{a}: released\n"
    d.wait_log(rf"event=delivered .*qid={a} ")
    assert len(list((root / "boxes" / "held.box.test" / "x" / "new").iterdir())) == 1

    # flush: due now, whatever the backoff said
    b, _ = submit(d, ALICE, ["y@flush.box.test"], "flush")
    d.wait_log(rf"event=deferred .*qid={b} ")
    unblock(root, "flush.box.test")
    assert ctl(d, "flush").stdout == "flushed 1 message\n"
    d.wait_log(rf"event=delivered .*qid={b} ")

    # delete: gone, and no bounce
    c, _ = submit(d, ALICE, ["z@del.box.test"], "delete")
    d.wait_log(rf"event=deferred .*qid={c} ")
    settled(d, c)
    assert ctl(d, "delete", c).stdout == f"{c}: deleted (no bounce)\n"
    d.wait_log(rf"event=queue\.deleted .*qid={c} ")
    wait_until(lambda: d.spool_files("queue") == [], 5 * SLOW, what="an empty queue")
    assert ctl(d, "list").stdout.splitlines()[-1] == "0 messages, 0 held"
    assert d.mails(ALICE) == []

    # errors
    p = ctl(d, "show", c, check=False)
    assert (p.returncode, p.stdout, p.stderr) == (1, "", f"submitctl: unknown queue id {c}\n")
    p = ctl(d, "frob", check=False)
    assert p.returncode == 1 and p.stderr.startswith("submitctl: usage: queue list | show ID | flush [ID]"), p
    p = ctl(d, check=False)
    assert p.returncode == 2 and "give a subcommand" in p.stderr, p
    log = d.log_text()
    assert re.search(rf"event=queue\.held .*qid={a} .*reason=\"looks odd\"", log), log
    assert re.search(rf"event=queue\.released .*qid={a} ", log), log
    assert re.search(r"event=control\.request uid=\d+ verb=queue sub=delete status=ok", log), log
    d.stop()
    p = ctl(d, "list", check=False)
    assert p.returncode == 1 and "cannot connect to" in p.stderr and "(is submitd running?)" in p.stderr, p


RAW_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect:", e.strerror)
    sys.exit(0)
s.sendall(b"queue list\\n")
data = b""
while not data.endswith(b"\\n.\\n"):
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(data.decode().splitlines()[0])
"""


def raw_as(uid, gid, sock):
    import sys
    p = subprocess.run([sys.executable, "-c", RAW_CLIENT, str(sock)], user=uid, group=gid, extra_groups=[],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_control_socket_path_mode_and_owner(make_daemon):
    """An explicit control-socket path; the socket belongs to the user the
    daemon runs as (mode 0660): that user may use it, others may not."""
    if os.geteuid() != 0:
        pytest.skip("needs root (privilege drop)")
    try:
        u = pwd.getpwnam("submitd")
    except KeyError:
        pytest.skip("no submitd user")
    import shutil
    import tempfile
    from pathlib import Path
    base = Path(tempfile.mkdtemp(prefix="submitd-ctl-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        sock = base / "run" / "submitd.ctl"
        sock.parent.mkdir(mode=0o755)
        d = make_daemon(start=False, user="submitd", top={"control-socket": str(sock)})
        relocate_for_user(d, base, u)
        d.start()
        st = os.lstat(sock)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
        assert (st.st_uid, st.st_gid) == (u.pw_uid, u.pw_gid)
        assert not (d.spool / "control.sock").exists()
        assert ctl(d, "list").stdout.splitlines()[-1] == "0 messages, 0 held"  # root
        assert raw_as(u.pw_uid, u.pw_gid, sock) == "ok"  # the daemon's user
        assert raw_as(65534, 65534, sock) == "connect: Permission denied"  # anybody else
        d.stop()
        # the dropped daemon could not remove it from a root-owned directory:
        # the next start (as root) replaces the stale socket
        d.start()
        assert ctl(d, "list").returncode == 0
        d.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
