"""Daemon life cycle: durable queue across SIGTERM and SIGKILL restarts,
SIGHUP reload of accounts and config (a broken config keeps the old one),
SIGTERM with a transaction in flight, shutdown of idle sessions."""

import signal
import time

import pytest

from harness import (ALICE, BOB, SLOW, add_user, assert_delivered, dot_stuff, make_msg, pw,
                     queued_id, wait_until)


def submit_three(d, tag):
    sent = []
    with d.login(ALICE, pw(ALICE)) as c:
        for i in range(3):
            rcpt = f"{tag}{i}@dest.test"
            msg = make_msg(ALICE, rcpt, f"{tag}-{i}")
            qid = c.send_mail(ALICE, [rcpt], msg)
            sent.append((rcpt, msg, qid))
    return sent


def all_delivered_once(d, sent, timeout):
    """Each (rcpt, msg, qid) of sent in the Maildir exactly once, byte for
    byte, then nothing left in queue/ and no other mail."""
    for rcpt, msg, qid in sent:
        files = d.wait_mail(1, rcpt, timeout=timeout)
        assert len(files) == 1, rcpt
        assert_delivered(files[0], ALICE, rcpt, msg, qid=qid)
    wait_until(lambda: d.spool_files("queue") == [], 10 * SLOW, what="queue/ empty after delivery")
    assert len(d.mail_files()) == len(sent)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_restart_recovery(make_daemon, how):
    d = make_daemon(start=False)
    blocker = d.root / "blocker"
    blocker.write_text("a regular file: a Maildir cannot be made under it\n")
    d.transport_path = str(blocker / "mail")
    d.write_config()
    d.start()
    sent = submit_three(d, f"recover-{how}-")
    if how == "sigterm":
        # the failed attempts are temporary: nothing delivered, nothing lost
        time.sleep(0.5)
        d.stop()
    else:
        d.kill9()
    assert d.mail_files() == []
    files = [n for n in d.spool_files("queue") if not n.endswith(".st")]
    if how == "sigterm":
        # each failed attempt moved its message out of the journal into queue/
        assert len(files) == 3, d.spool_files("queue")
    else:
        # killed at once: a message whose first attempt had not failed yet
        # is still in the journal (docs/spool-format.md), recovered at start
        assert len(files) <= 3, d.spool_files("queue")
    d.transport_path = str(d.maildir)
    d.write_config()
    mark = d.log_size()
    d.start()
    if len(files) < 3:
        d.wait_log(rf"event=journal.recovered messages={3 - len(files)} ", since=mark)
    all_delivered_once(d, sent, 20)


def test_sighup_reload_accounts(make_daemon):
    d = make_daemon()
    newbie, newpw = "newbie@example.test", "newbie-Pw-9!"
    old = d.login(ALICE, pw(ALICE))  # a session from before the reload
    with d.client() as c:
        c.expect_greeting()
        c.ehlo()
        c.starttls()
        c.ehlo()
        c.auth_plain(newbie, newpw, expect=535, enh="5.7.8")
    add_user(d.accounts, newbie, newpw, [newbie], ["--scheme", "sha512-crypt"])
    mark = d.log_size()
    d.signal(signal.SIGHUP)
    d.wait_log(r"event=reload status=ok", since=mark)
    pid = d.pid
    with d.login(newbie, newpw) as c:
        msg = make_msg(newbie, "hup@dest.test", "after-hup")
        qid = c.send_mail(newbie, ["hup@dest.test"], msg)
    assert_delivered(d.wait_mail(1, "hup@dest.test")[0], newbie, "hup@dest.test", msg, qid=qid)
    # the old session keeps working
    msg = make_msg(ALICE, "hup-old@dest.test", "old-session")
    qid = old.send_mail(ALICE, ["hup-old@dest.test"], msg)
    old.check("QUIT", 221, "2.0.0")
    old.close()
    assert_delivered(d.wait_mail(1, "hup-old@dest.test")[0], ALICE, "hup-old@dest.test", msg, qid=qid)
    assert d.pid == pid
    d.assert_alive()


def test_sighup_broken_config_keeps_old(make_daemon):
    d = make_daemon()
    good = d.conf.read_text()
    d.conf.write_text(good + "\nthis-is-not-a-key 42\nlimits {\n")
    mark = d.log_size()
    d.signal(signal.SIGHUP)
    d.wait_log(r"level=error event=reload status=refused", since=mark)
    assert d.log_lines(r"event=reload\.error .*:\d+: ", since=mark), d.log_text(mark)
    assert not d.log_lines(r"event=reload status=ok", since=mark)
    d.assert_alive()
    with d.login(BOB, pw(BOB)) as c:
        msg = make_msg(BOB, "broken-hup@dest.test", "still-serving")
        qid = c.send_mail(BOB, ["broken-hup@dest.test"], msg)
    assert_delivered(d.wait_mail(1, "broken-hup@dest.test")[0], BOB, "broken-hup@dest.test", msg,
                     qid=qid)
    # fix it and reload again: works
    d.conf.write_text(good)
    mark = d.log_size()
    d.signal(signal.SIGHUP)
    d.wait_log(r"event=reload status=ok", since=mark)
    with d.login(BOB, pw(BOB)) as c:
        c.check("NOOP", 250, "2.0.0")


def test_sighup_reload_changes_limits(make_daemon):
    d = make_daemon()
    with d.login(ALICE, pw(ALICE)) as c:
        assert any(e.startswith("SIZE ") and e != "SIZE 20480" for e in c.exts), c.exts
    d.limits["message-size"] = "20K"
    d.write_config()
    mark = d.log_size()
    d.signal(signal.SIGHUP)
    d.wait_log(r"event=reload status=ok", since=mark)
    with d.login(ALICE, pw(ALICE)) as c:
        assert "SIZE 20480" in c.exts, c.exts


def test_sigterm_with_transaction_in_flight(make_daemon):
    d = make_daemon(limits={"shutdown-timeout": "10s"})
    rcpt = "inflight@dest.test"
    msg = make_msg(ALICE, rcpt, "in-flight", body=["line %d" % i for i in range(200)])
    idle = d.login(BOB, pw(BOB))  # idle between transactions
    c = d.login(ALICE, pw(ALICE))
    c.check(f"MAIL FROM:<{ALICE}>", 250, "2.1.0")
    c.check(f"RCPT TO:<{rcpt}>", 250, "2.1.5")
    c.check("DATA", 354)
    data = dot_stuff(msg)
    c.send(data[:1000])
    time.sleep(0.2)
    d.signal(signal.SIGTERM)
    # the idle session is told the server is shutting down
    idle.expect(421, "4.3.2")
    assert idle.is_closed()
    idle.close()
    time.sleep(0.3)
    assert d.running(), "daemon exited with a transaction in flight"
    c.send(data[1000:] + b".\r\n")
    qid = queued_id(c.reply())
    c.close()
    rc = d.wait_exit(timeout=15)
    assert rc == 0, f"exit code {rc}; log:\n{d.log_tail()}"
    d.check_sanitizers()
    if not d.mails(rcpt):
        # accepted but not yet delivered before exit: it must be in the
        # durable queue and go out at the next start
        d.start()
    files = d.wait_mail(1, rcpt)
    assert_delivered(files[0], ALICE, rcpt, msg, qid=qid)


def test_sigterm_idle_daemon_exits_zero(make_daemon):
    d = make_daemon()
    c = d.client()
    c.expect_greeting()
    d.stop()
    c.expect(421, "4.3.2")
    c.close()


def test_threads_named_by_role(make_daemon):
    """Every thread is named submitd-<role>, so that top -H, ps -L and perf
    tell the pools apart."""
    import os
    d = make_daemon()
    names = set()
    for tid in os.listdir(f"/proc/{d.pid}/task"):
        with open(f"/proc/{d.pid}/task/{tid}/comm") as f:
            names.add(f.read().strip())
    # the main thread keeps the program's name; every other one has a role
    assert {"submitd-loop", "submitd-commit", "submitd-deliver", "submitd-auth", "submitd-control"} <= names, names
    assert all(n == "submitd" or n.startswith("submitd-") for n in names), names


def thread_policies(pid):
    """{thread name: set of scheduling policies} (field 41 of
    /proc/PID/task/TID/stat: 0 SCHED_OTHER, 3 SCHED_BATCH)."""
    import os
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                st = f.read()
        except FileNotFoundError:
            continue
        name = st[st.index("(") + 1:st.rindex(")")]
        policy = int(st[st.rindex(")") + 2:].split()[38])  # fields from 3 on
        out.setdefault(name, set()).add(policy)
    return out


def test_background_threads_do_not_preempt_the_loops(make_daemon):
    """Delivery, journal, commit, auth and abuse threads run as SCHED_BATCH
    (no wake-up preemption of the event loops); the loops stay
    SCHED_OTHER."""
    d = make_daemon()
    with d.login(ALICE, pw(ALICE)) as c:  # starts the journal's lane threads
        c.send_mail(ALICE, ["bg@dest.test"], make_msg(ALICE, "bg@dest.test", "bg"))
    d.wait_mail(1)
    pol = thread_policies(d.pid)
    assert pol["submitd-loop"] == {0}, pol
    for role in ("deliver", "journal", "commit", "auth", "abuse"):
        assert pol[f"submitd-{role}"] == {3}, (role, pol)


def test_journal_full_falls_back_to_files(make_daemon):
    """With `journal-segments 2` (16 MiB) and the messages kept from
    delivery (their smarthost accepts the connection and never greets),
    the journal fills: later messages are still accepted, as files in
    queue/ (the session's asynchronous commit hands them to a commit
    job). After a restart with the local route every message, from the
    journal and from files, is delivered exactly once and intact."""
    from fakesmtp import SilentPort

    body = ["x" * 76] * 2600  # about 200 KiB
    sent = []
    with SilentPort() as sp:
        d = make_daemon(top={"journal-segments": 2},
                        extra="\n".join(["transport stuck {", "    type smarthost",
                                         f"    url smtp://127.0.0.1:{sp.port}", "    max-connections 1", "    max-connections-per-host 1",
                                         "    connect-timeout 5s", "    command-timeout 120s", "}",
                                         "route dest.test stuck"]))
        with d.login(ALICE, pw(ALICE)) as c:
            for i in range(100):
                rcpt = f"full{i}@dest.test"
                msg = make_msg(ALICE, rcpt, f"full-{i}", body=body)
                sent.append((rcpt, msg, c.send_mail(ALICE, [rcpt], msg)))
        files = {n for n in d.spool_files("queue") if not n.endswith(".st")}
        qids = [q for _, _, q in sent]
        assert len(set(qids)) == 100
        assert len(d.spool_files("journal")) == 2, d.spool_files("journal")
        # about 40 records of 200 KiB fit in a segment: the rest became files
        in_files = [q for q in qids if q in files]
        assert 10 <= len(in_files) <= 60, (len(in_files), sorted(files))
        assert qids[-1] in files
    d.stop()  # the silent port is gone: the stuck connection was reset
    d.extra = ""
    d.write_config()
    d.start()
    all_delivered_once(d, sent, 30)
