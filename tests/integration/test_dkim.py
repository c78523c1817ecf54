"""DKIM signing checked by verifiers the project does not write: dkimpy
(python3-dkim) and opendkim (Debian's opendkim, in its test mode `-t`) check
every signature of both algorithms; Perl's Mail::DKIM (libmail-dkim-perl)
checks the rsa-sha256 ones as a third (Debian 12's version predates RFC 8463
and reports ed25519 as unsupported). Keys come from `submitctl dkim keygen`.
The TXT records it prints are served by a real DNS server (dnsmasq) on a
loopback port, which dkimpy and Mail::DKIM query. opendkim reads the same
records from its TestPublicKeys file: its libunbound resolver, given a
forward-zone to the dnsmasq port, sent no query at all."""

import os
import re
import subprocess
import time
from pathlib import Path

import dkim
import pytest

from harness import ALICE, CAROL, SLOW, SUBMITD, DnsServer, dot_stuff, make_msg, pw, san_env, submitctl

HERE = Path(__file__).resolve().parent
DOMAIN = "example.test"


def keygen(d, selector, *args):
    p = submitctl(["dkim", "keygen", DOMAIN, selector, "--dir", str(d)] + list(args))
    out = p.stdout
    m = re.search(rf"^{re.escape(selector)}\._domainkey\.{re.escape(DOMAIN)}\.\s+IN\s+TXT\s+(.*?)$"
                  r"(?:\n|\Z)", out, re.M | re.S)
    assert m, out
    record = "".join(re.findall(r'"([^"]*)"', out[m.start():]))
    assert record.startswith("v=DKIM1; k="), record
    key = d / f"{DOMAIN}.{selector}.key"
    assert key.exists(), out
    assert (key.stat().st_mode & 0o077) & ~0o040 == 0
    return key, record


@pytest.fixture(scope="module")
def dkimenv(tmp_path_factory):
    d = tmp_path_factory.mktemp("dkim")
    keydir = d / "keys"
    rsa_key, rsa_rec = keygen(keydir, "rsa1", "--rsa", "2048")
    ed_key, ed_rec = keygen(keydir, "ed1", "--ed25519")
    # opendkim: "NAME VALUE" lines, the record as keygen printed it, strings joined
    (d / "opendkim.keys").write_text(f"rsa1._domainkey.{DOMAIN} {rsa_rec}\n"
                                     f"ed1._domainkey.{DOMAIN} {ed_rec}\n")
    (d / "opendkim.conf").write_text(f"Mode v\nSyslog no\nAuthservID verifier.test\n"
                                     f"TestPublicKeys {d / 'opendkim.keys'}\n")
    args = []
    for sel, rec in (("rsa1", rsa_rec), ("ed1", ed_rec)):
        parts = [rec[i:i + 200] for i in range(0, len(rec), 200)]
        args.append(f"--txt-record={sel}._domainkey.{DOMAIN}," + ",".join(parts))
    dnsd = DnsServer(d / "dns", args=args)
    try:
        assert list(dnsd.resolver.resolve(f"rsa1._domainkey.{DOMAIN}", "TXT"))
        yield {"dir": d, "rsa_key": rsa_key, "ed_key": ed_key, "port": dnsd.port, "resolver": dnsd.resolver,
               "records": {"rsa1": rsa_rec, "ed1": ed_rec}}
    finally:
        dnsd.stop()


def block(env, canon="relaxed/relaxed", keys=("rsa1", "ed1"), extra=()):
    lines = [f"dkim {DOMAIN} {{"]
    for sel in keys:
        k = env["rsa_key"] if sel == "rsa1" else env["ed_key"]
        lines.append(f"    key {sel} {k}")
    lines.append(f"    canonicalization {canon}")
    lines += [f"    {e}" for e in extra]
    lines.append("}")
    return "\n".join(lines)


def to_crlf(data):
    """A delivered Maildir file as the wire form a receiver would verify."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def dkimpy_results(env, data):
    res = env["resolver"]

    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        try:
            ans = res.resolve(name.rstrip("."), "TXT")
        except Exception:
            return b""
        return b"".join(b"".join(r.strings) for r in ans)
    msg = to_crlf(data)
    d = dkim.DKIM(msg)
    n = len([l for l in msg.split(b"\r\n\r\n")[0].split(b"\r\n") if l.lower().startswith(b"dkim-signature:")])
    out = []
    for i in range(n):
        try:
            out.append(bool(d.verify(idx=i, dnsfunc=dnsfunc)))
        except dkim.ValidationError:  # e.g. "body hash mismatch"
            out.append(False)
    return out


def perl_results(env, data):
    p = subprocess.run(["perl", str(HERE / "tools" / "dkimverify.pl"), str(env["port"])], input=data,
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    lines = p.stdout.decode().splitlines()
    return [l.split(" ", 2) for l in lines if not l.startswith("result=")]


def opendkim_results(env, data):
    """opendkim -t on the wire form: with -vv it prints the Authentication-Results
    field it would add, one "dkim=RESULT ... header.d=D ... header.a=ALG" per
    signature. Returns [(ALG, D, RESULT)]."""
    p = subprocess.run(["opendkim", "-x", str(env["dir"] / "opendkim.conf"), "-vv", "-t", "-"],
                       input=to_crlf(data), capture_output=True, timeout=60)
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, out + p.stderr.decode(errors="replace")[-2000:]
    m = re.search(r"^### INSHEADER: idx=\d+ hname='Authentication-Results' hvalue='([^']*)'", out,
                  re.M)
    assert m, out
    return [(alg, dom, res) for res, dom, alg in
            re.findall(r"\bdkim=(\w+)[^;]*?\bheader\.d=([^\s;]+)[^;]*?\bheader\.a=([^\s;]+)",
                       m.group(1))]


def send(d, msg, frm=ALICE, rcpt="dkim@dest.test", login=ALICE):
    with d.login(login, pw(login)) as c:
        c.send_mail(frm, [rcpt], msg)
    files = d.wait_mail(1, rcpt, timeout=30)
    return files[-1]


def assert_verifies(env, data, algs=("rsa-sha256", "ed25519-sha256")):
    sigs = re.findall(rb"^DKIM-Signature:.*?\ba=([\w-]+);", data, re.M | re.S)
    assert sorted(s.decode() for s in sigs) == sorted(algs), data[:1500]
    assert all(dkimpy_results(env, data)), "dkimpy: signature does not verify"
    od = opendkim_results(env, data)
    assert sorted(od) == sorted((alg, DOMAIN, "pass") for alg in algs), od
    perl = perl_results(env, data)
    assert sorted(a for a, _, _ in perl) == sorted(algs), perl
    for alg, dom, result in perl:
        assert dom == DOMAIN, perl
        if alg == "ed25519-sha256" and "unsupported algorithm" in result:
            continue  # Debian 12's Mail::DKIM predates RFC 8463: dkimpy checked it above
        assert result == "pass", perl


BODIES = {
    "plain": ["Hello, this is a test.", "bye"],
    "folded-and-trailing-blank-lines": ["line one", "", "", "", ""],
    "8bit": ["Grüße aus Köln — ünïcödé", "ещё строка"],
    "empty": [],
    "whitespace-edge-cases": ["trailing spaces   ", "\ttab first", "  ", "a  b\t\tc", ""],
}


@pytest.mark.parametrize("canon", ["relaxed/relaxed", "simple/simple", "relaxed/simple"])
@pytest.mark.parametrize("body", list(BODIES))
def test_signatures_verify(make_daemon, dkimenv, canon, body):
    d = make_daemon(extra=block(dkimenv, canon))
    extra = ["X-Folded: first part", "\tsecond part", "  third part"] if "folded" in body else []
    msg = make_msg(ALICE, "dkim@dest.test", f"dkim {canon} {body}", body=BODIES[body],
                   extra_headers=extra)
    if body == "empty":
        msg = msg.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    data = send(d, msg)
    assert f"c={canon}".encode() in data.replace(b"\n\t", b" ").replace(b"\n ", b" ")
    assert_verifies(dkimenv, data)


def test_added_message_id_and_date_are_signed(make_daemon, dkimenv):
    d = make_daemon(extra=block(dkimenv))
    msg = (f"From: <{ALICE}>\r\nTo: <x@dest.test>\r\nSubject: no id\r\n\r\nbody\r\n").encode()
    data = send(d, msg)
    head = data.split(b"\n\n")[0]
    assert b"\nMessage-ID: <" in head and b"\nDate: " in head
    h = re.search(rb"\bh=([^;]+);", head.replace(b"\n\t", b"").replace(b"\n ", b"")).group(1)
    names = [n.strip().lower() for n in h.split(b":")]
    assert b"message-id" in names and b"date" in names and names.count(b"from") == 2, names
    assert_verifies(dkimenv, data)


def test_large_body(make_daemon, dkimenv):
    d = make_daemon(extra=block(dkimenv), limits={"message-size": "20M"})
    line = "0123456789" * 7 + "abcdefg"
    body = [line] * (10 * 1024 * 1024 // len(line))  # > 10 MiB even with LF endings
    msg = make_msg(ALICE, "big-dkim@dest.test", "10MB", body=body)
    data = send(d, msg, rcpt="big-dkim@dest.test")
    assert len(data) > 10 * 1024 * 1024
    assert_verifies(dkimenv, data)


@pytest.mark.parametrize("how", ["header", "body"])
def test_tampering_fails(make_daemon, dkimenv, how):
    d = make_daemon(extra=block(dkimenv))
    msg = make_msg(ALICE, "tamper@dest.test", "untouched subject")
    data = send(d, msg, rcpt="tamper@dest.test")
    assert_verifies(dkimenv, data)  # the original passes: the check below can fail
    if how == "header":
        bad = data.replace(b"Subject: untouched subject", b"Subject: touched subject")
    else:
        bad = data.replace(b"\nbye\n", b"\nBYE\n")
    assert bad != data
    assert dkimpy_results(dkimenv, bad) == [False, False]
    od = opendkim_results(dkimenv, bad)
    assert sorted(od) == [("ed25519-sha256", DOMAIN, "fail"), ("rsa-sha256", DOMAIN, "fail")], od
    perl = perl_results(dkimenv, bad)
    assert len(perl) == 2 and all(r != "pass" for _, _, r in perl), perl


def test_other_domains_unsigned_and_one_algorithm(make_daemon, dkimenv):
    d = make_daemon(extra=block(dkimenv, keys=("ed1",)))
    data = send(d, make_msg("x@carol.test", "nosig@dest.test", "carol"), frm="x@carol.test",
                rcpt="nosig@dest.test", login=CAROL)
    assert b"DKIM-Signature:" not in data
    data = send(d, make_msg(ALICE, "edonly@dest.test", "ed only"), rcpt="edonly@dest.test")
    assert_verifies(dkimenv, data, algs=("ed25519-sha256",))
    # the queued line names the signatures; the unsigned message's has none
    queued = d.log_lines(r"event=queued ")
    assert len(queued) == 2, queued
    assert " dkim=" not in queued[0], queued[0]
    assert queued[1].endswith(f" dkim={DOMAIN}/ed1/ed25519-sha256"), queued[1]


def test_queued_line_names_both_signatures(make_daemon, dkimenv):
    d = make_daemon(extra=block(dkimenv))
    send(d, make_msg(ALICE, "both@dest.test", "both"), rcpt="both@dest.test")
    queued = d.log_lines(r"event=queued ")
    assert len(queued) == 1 and queued[0].endswith(f" dkim={DOMAIN}/rsa1/rsa-sha256,{DOMAIN}/ed1/ed25519-sha256"), \
        queued
    assert not d.log_lines(r"event=dkim\.signed"), "dkim.signed is a debug line"


def test_retry_sends_the_same_signed_bytes(make_daemon, dkimenv):
    """The signature is stored with the message: a delivery after a restart
    carries the very signature made at submission."""
    d = make_daemon(start=False, extra=block(dkimenv))
    blocker = d.root / "blocker"
    blocker.write_text("not a directory\n")
    d.transport_path = str(blocker / "mail")
    d.write_config()
    d.start()
    msg = make_msg(ALICE, "later@dest.test", "delivered later")
    with d.login(ALICE, pw(ALICE)) as c:
        c.send_mail(ALICE, ["later@dest.test"], msg)
    time.sleep(1.1)  # a later t= would show if it were signed again
    d.stop()
    d.transport_path = str(d.maildir)
    d.write_config()
    d.start()
    data = d.wait_mail(1, "later@dest.test", timeout=30)[0]
    t = int(re.search(rb"\bt=(\d+)", data).group(1))
    assert t <= int(time.time()) - 1
    assert_verifies(dkimenv, data)


def test_check_refuses_open_key(make_daemon, dkimenv, tmp_path):
    open_key = tmp_path / "open.key"
    open_key.write_bytes(dkimenv["ed_key"].read_bytes())
    os.chmod(open_key, 0o644)
    text = block(dkimenv, keys=("ed1",)).replace(str(dkimenv["ed_key"]), str(open_key))
    d = make_daemon(start=False, extra=text)
    rendered = d.render()
    line = next(i for i, l in enumerate(rendered.splitlines(), 1) if str(open_key) in l)
    p = subprocess.run([str(SUBMITD), "-t", "-c", str(d.conf)], capture_output=True, text=True,
                       timeout=30 * SLOW, env=san_env())
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"{d.conf}:{line}: " in p.stderr, p.stderr


def test_submitctl_dns_records(make_daemon, dkimenv):
    d = make_daemon(start=False, extra=block(dkimenv))
    p = submitctl(["-c", str(d.conf), "dns", DOMAIN])
    out = p.stdout
    assert re.search(rf'^{re.escape(DOMAIN)}\.\s+IN\s+TXT\s+"v=spf1 ', out, re.M), out
    assert re.search(rf'^_dmarc\.{re.escape(DOMAIN)}\.\s+IN\s+TXT\s+"v=DMARC1; p=', out, re.M), out
    joined = "".join(re.findall(r'"([^"]*)"', out))
    for rec in dkimenv["records"].values():
        assert rec in joined, (rec, out)
