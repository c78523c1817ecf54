"""Configuration check mode (submitd -t), listener rules (deny/allow,
per-IP connection limit, IPv6) and privilege dropping."""

import os
import pwd
import re
import shutil
import subprocess
import time

import pytest

from harness import (ALICE, BOB, SLOW, SUBMITD, SMTPClient, assert_delivered, free_port, have_ipv6_loopback,
                     make_msg, pw, relocate_for_user, san_env, wait_until)


def check_config(path):
    return subprocess.run([str(SUBMITD), "-t", "-c", str(path)], capture_output=True, text=True,
                          timeout=30 * SLOW, env=san_env(), stdin=subprocess.DEVNULL)


def line_of(text, needle):
    for i, l in enumerate(text.splitlines(), 1):
        if needle in l:
            return i
    raise AssertionError(f"{needle!r} not in config")


def test_check_good_config(make_daemon):
    d = make_daemon(start=False)
    p = check_config(d.conf)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "configuration ok" in (p.stdout + p.stderr).lower()


def test_check_bad_key_and_world_readable_key(make_daemon, tmp_path):
    d = make_daemon(start=False)
    key = tmp_path / "open.key"
    shutil.copy(d.certs["ecdsa_key"], key)
    os.chmod(key, 0o644)
    d.cert_pairs = [(d.certs["ecdsa_crt"], key)]
    text = d.render()
    text = text.replace("log-level info\n", "log-level info\nno-such-key 1\n")
    d.write_config(text)
    bad_line = line_of(text, "no-such-key")
    key_line = line_of(text, f"certificate {d.certs['ecdsa_crt']} {key}")
    p = check_config(d.conf)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert p.returncode == 1, out
    lines = out.splitlines()
    assert any(l.startswith(f"{d.conf}:{bad_line}: ") and "no-such-key" in l for l in lines), out
    assert any(l.startswith(f"{d.conf}:{key_line}: ") for l in lines), out
    # the daemon refuses to start with it as well
    p = subprocess.run([str(SUBMITD), "-c", str(d.conf)], capture_output=True, text=True,
                       timeout=30 * SLOW, env=san_env(), stdin=subprocess.DEVNULL)
    assert p.returncode != 0
    assert f"{d.conf}:{bad_line}:" in p.stdout + p.stderr


def test_check_reports_several_errors(make_daemon):
    d = make_daemon(start=False)
    text = d.render()
    text = text.replace("workers 2\n", "workers lots\n")
    text = text.replace("route * local\n", "route * nowhere\n")
    d.write_config(text)
    p = check_config(d.conf)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert f"{d.conf}:{line_of(text, 'workers lots')}: " in out, out
    assert f"{d.conf}:{line_of(text, 'route * nowhere')}: " in out, out


def test_check_open_accounts_file(make_daemon):
    d = make_daemon(start=False)
    os.chmod(d.accounts, 0o644)
    p = check_config(d.conf)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert str(d.accounts) in out or f"{d.conf}:{line_of(d.render(), 'accounts ')}:" in out, out


# ---------------------------------------------------------------- listeners

def test_listener_deny(make_daemon):
    port, ok_port = free_port(), free_port()
    d = make_daemon(listeners=[
        {"name": "denied", "addresses": ["127.0.0.1"], "port": port, "mode": "starttls",
         "extra": ["deny 127.0.0.1/32"]},
        {"name": "allowed", "addresses": ["127.0.0.1"], "port": ok_port, "mode": "implicit-tls",
         "extra": ["allow 127.0.0.0/8", "deny 10.0.0.0/8"]},
    ])
    with d.client() as c:
        r = c.reply()
        assert r.code == 554 and r.enh == "5.7.1", r
        assert c.is_closed()
    with d.login(ALICE, pw(ALICE), implicit=True) as c:
        c.check("NOOP", 250, "2.0.0")


def workers_of_connections(d, cpu, n):
    """Opens n connections from this thread pinned to `cpu` (the SYN is
    handled on the connecting CPU over loopback); returns the worker index
    of each session, from its session.start line."""
    import socket
    mark = d.log_size()
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        for _ in range(n):
            with socket.create_connection(("127.0.0.1", d.port), timeout=10 * SLOW) as s:
                f = s.makefile("rb")
                assert f.readline().startswith(b"220 ")
                s.sendall(b"QUIT\r\n")
                assert f.readline().startswith(b"221 ")
    finally:
        os.sched_setaffinity(0, saved)
    wait_until(lambda: len(d.log_lines(r"event=session\.end", mark)) >= n, 10 * SLOW, what="session ends")
    starts = d.log_lines(r"event=session\.start .*listener=submission", mark)
    assert len(starts) == n, starts
    return [int(re.search(r" worker=(\d+)", l).group(1)) for l in starts]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_incoming_cpu_picks_the_worker_of_the_cpu(make_daemon):
    """With incoming-cpu (the default), worker i takes the connections whose
    SYN the kernel handled on the i-th CPU the daemon may use: a client
    pinned to one CPU lands on one worker, the other CPU on the other. With
    `incoming-cpu no` the kernel spreads them by hash over both."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    d = make_daemon()  # workers 2 (harness)
    assert workers_of_connections(d, cpus[0], 12) == [0] * 12
    assert workers_of_connections(d, cpus[1], 12) == [1] * 12
    d.stop()
    off = make_daemon(top={"incoming-cpu": "no"})
    seen = workers_of_connections(off, cpus[0], 24)
    assert set(seen) == {0, 1}, seen


def test_listener_allow_only_other_network(make_daemon):
    d = make_daemon(listener_extra=["allow 192.0.2.0/24"])
    with d.client() as c:
        r = c.reply()
        assert r.code == 554 and r.enh == "5.7.1", r
        assert c.is_closed()


def test_max_connections_per_ip(make_daemon):
    d = make_daemon(listener_extra=["max-connections-per-ip 2"])
    a, b = d.client(), d.client()
    a.expect_greeting()
    b.expect_greeting()
    with d.client() as c:
        r = c.reply()
        assert r.code == 421 and r.enh == "4.7.0", r
        assert c.is_closed()
    # the other listener counts separately
    with d.client(tls_port=True, implicit_tls=True) as t:
        t.expect_greeting()
    a.check("QUIT", 221, "2.0.0")
    a.close()
    # a slot is free again
    deadline = time.monotonic() + 5 * SLOW
    while True:
        c = d.client()
        r = c.reply()
        c.close()
        if r.code == 220 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.code == 220, r
    b.close()


def test_max_connections_total(make_daemon):
    d = make_daemon(listener_extra=["max-connections 2"])
    a, b = d.client(), d.client()
    a.expect_greeting()
    b.expect_greeting()
    with d.client() as c:
        r = c.reply()
        assert r.code == 421 and r.enh == "4.7.0", r
        assert c.is_closed()
    a.close()
    b.close()


@pytest.mark.skipif(not have_ipv6_loopback(), reason="::1 not available")
def test_ipv6_listener(make_daemon):
    port = free_port()
    tls_port = free_port()
    d = make_daemon(listeners=[
        {"name": "v6", "addresses": ["::1"], "port": port, "mode": "starttls"},
        {"name": "v6tls", "addresses": ["::1", "127.0.0.1"], "port": tls_port,
         "mode": "implicit-tls"},
    ])
    rcpt = "ipv6@dest.test"
    with SMTPClient(port, host="::1", certs=d.certs) as c:
        c.expect_greeting()
        r = c.ehlo()
        assert r.texts[0] == "mx.test Hello [::1]" or r.texts[0].startswith("mx.test Hello [IPv6:::1]") \
            or "::1" in r.texts[0], r
        c.starttls()
        c.ehlo()
        c.auth_plain(BOB, pw(BOB))
        msg = make_msg(BOB, rcpt, "ipv6")
        qid = c.send_mail(BOB, [rcpt], msg)
    data = d.wait_mail(1, rcpt)[0]
    assert f" id {qid}".encode() in data
    assert b"::1" in data.split(b"\n\n")[0] or b"::1" in data[:600]
    with SMTPClient(tls_port, host="::1", implicit_tls=True, certs=d.certs) as c:
        c.expect_greeting()
    with SMTPClient(tls_port, host="127.0.0.1", implicit_tls=True, certs=d.certs) as c:
        c.expect_greeting()


# ---------------------------------------------------------------- privileges

def submitd_user():
    try:
        return pwd.getpwnam("submitd")
    except KeyError:
        return None


@pytest.mark.skipif(os.geteuid() != 0 or submitd_user() is None,
                    reason="needs root and a 'submitd' user")
def test_privilege_drop(make_daemon, tmp_path_factory):
    u = submitd_user()
    # pytest's own temp root is 0700: the dropped daemon could not reach it
    import tempfile
    from pathlib import Path
    base = Path(tempfile.mkdtemp(prefix="submitd-priv-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        d = make_daemon(start=False, user="submitd")
        # everything the dropped daemon touches lives under base (0755)
        relocate_for_user(d, base, u)
        d.start()
        status = open(f"/proc/{d.pid}/status").read()
        uid_line = [l for l in status.splitlines() if l.startswith("Uid:")][0]
        assert uid_line.split()[1:] == [str(u.pw_uid)] * 4, uid_line
        gid_line = [l for l in status.splitlines() if l.startswith("Gid:")][0]
        assert gid_line.split()[1:] == [str(u.pw_gid)] * 4, gid_line
        rcpt = "priv@dest.test"
        msg = make_msg(ALICE, rcpt, "privdrop")
        with d.login(ALICE, pw(ALICE)) as c:
            qid = c.send_mail(ALICE, [rcpt], msg)
        files = d.wait_mail(1, rcpt)
        assert_delivered(files[0], ALICE, rcpt, msg, qid=qid)
        f = d.mail_files()[0]
        assert f.stat().st_uid == u.pw_uid
        d.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_user_root_warns(make_daemon):
    if os.geteuid() != 0:
        pytest.skip("not root")
    d = make_daemon()
    assert d.log_lines(r"level=warn event=startup\.user"), d.log_text()
