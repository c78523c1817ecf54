#!/usr/bin/python3
"""The driver of `make bench` (issue 7; the DKIM figure of issue 4), started by
bench/run.sh once Postfix and Haraka are installed.

It renders private instances of Postfix, Haraka and submitd on loopback ports
as equivalent submission services (STARTTLS required before AUTH PLAIN, one
test user, relay to bench/sink, each one's default durable queue, the same
ECDSA P-256 certificate), checks that equivalence, then runs the scenarios
with bench/loadgen, alternating servers, BENCH_RUNS runs each:

  (a) 50 sessions x 10 msgs of 4 KiB, 1 rcpt, STARTTLS + AUTH PLAIN
  (b) 1 msg per connection, STARTTLS + AUTH PLAIN
  (c) as (a) without TLS or AUTH (submitd: a listener with `trusted 127.0.0.1/32`)
  (d) BENCH_IDLE (10,000) idle TLS sessions: server memory
  (e) relayed to the sink during (a): relayed/accepted, time to drain
  (f) submitd with DKIM signing off / rsa-sha256 2048 / ed25519-sha256, load (a)
  (g) as (a) with 100 KiB messages

For each run it records the server's CPU time (utime+stime of all its
processes, with reaped children, from /proc/PID/stat) from the start of the
load until its queue is drained, per message delivered, and the peak of the
summed RSS of its processes. It prints medians with submitd/peer ratios,
writes every run to BUILD/bench/results.json and the tables between the
bench markers of docs/performance.md. Every process it starts is stopped by
PID.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import smtplib
import ssl
import statistics
import subprocess
import threading
import time
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
USER = "bench@example.test"
PASSWORD = "bench-Pw-7q!"
RCPT_DOMAIN = "sink.test"
DOC_BEGIN = "<!-- bench:begin (written by bench/bench.py: edits between these markers are lost) -->"
DOC_END = "<!-- bench:end -->"


def env_int(name, default):
    v = os.environ.get(name, "")
    return int(v) if v.strip() else default


def log(msg):
    print(msg, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def raise_nofile():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --------------------------------------------------------------------------
# /proc accounting


def proc_table(live_only=False):
    """pid -> (ppid, cpu ticks incl. reaped children, start time); with
    live_only, zombies (exited, not reaped) are left out."""
    t = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rindex(")") + 2:].split()
        if live_only and rest[0] in ("Z", "X"):
            continue
        t[int(d)] = (int(rest[1]), sum(int(x) for x in rest[11:15]), int(rest[19]))
    return t


def tree(roots, table=None):
    table = proc_table() if table is None else table
    kids = {}
    for pid, (ppid, _, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [r for r in roots if r in table]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_ticks(roots):
    table = proc_table()
    return sum(table[p][1] for p in tree(roots, table))


def rss_bytes(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return total


def pss_bytes(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def machine_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v), idle


class Sampler:
    """Samples the summed RSS and PSS of a process tree every 0.25 s; keeps
    the peaks. PSS splits shared pages among the processes that map them,
    so that the 100 smtpd processes of Postfix are not counted 100 times."""

    def __init__(self, roots):
        self.roots = roots
        self.peak = 0
        self.peak_pss = 0
        self.stop_ev = threading.Event()
        self.th = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop_ev.is_set():
            pids = tree(self.roots)
            self.peak = max(self.peak, rss_bytes(pids))
            self.peak_pss = max(self.peak_pss, pss_bytes(pids))
            self.stop_ev.wait(0.25)

    def __enter__(self):
        self.th.start()
        return self

    def __exit__(self, *a):
        self.stop_ev.set()
        self.th.join()


# --------------------------------------------------------------------------
# processes we start


class Procs:
    """Every process tree this script starts, stopped by PID at the end."""

    def __init__(self):
        self.items = []  # (name, pid, popen or None)

    def add(self, name, pid, popen=None):
        self.items.append((name, pid, popen))

    def _wait_popen(self, pid, timeout):
        for _, ipid, popen in self.items:
            if ipid == pid and popen is not None:
                try:
                    popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass

    def stop(self, pid, timeout=15):
        """SIGTERM to pid, then waits for it and every process of its tree
        as it was (same PID and start time); SIGKILL to what is left."""
        table = proc_table()
        members = {p: table[p][2] for p in tree([pid], table)}
        if pid in members:  # not gone (and its PID not reused) already
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self._wait_popen(pid, timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            table = proc_table(live_only=True)
            if not any(p in table and table[p][2] == st for p, st in members.items()):
                break
            time.sleep(0.1)
        table = proc_table(live_only=True)
        for p, st in members.items():
            if p in table and table[p][2] == st:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._wait_popen(pid, 5)
        self.items = [i for i in self.items if i[1] != pid]

    def stop_all(self):
        for name, pid, popen in list(reversed(self.items)):
            self.stop(pid)


def wait_port(port, timeout=30, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.settimeout(5)
                if s.recv(512).startswith(b"220"):
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def run_cmd(args, **kw):
    return subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, **kw)


# --------------------------------------------------------------------------
# the sink


class Sink:
    def __init__(self, ctx):
        self.ctx = ctx
        self.port = free_port()
        self.stats = ctx.work / "sink.stats"

    def start(self):
        logf = open(self.ctx.work / "sink.log", "wb")
        self.proc = subprocess.Popen([str(self.ctx.bin / "sink"), "-l", f"127.0.0.1:{self.port}",
                                      "-s", str(self.stats)], stdin=subprocess.DEVNULL, stdout=logf,
                                     stderr=subprocess.STDOUT)
        self.ctx.procs.add("sink", self.proc.pid, self.proc)
        if not wait_port(self.port, 10, self.proc):
            raise SystemExit("bench: the sink did not start; see " + str(self.ctx.work / "sink.log"))

    def count(self):
        try:
            m = re.search(r"msgs=(\d+)", self.stats.read_text())
            return int(m.group(1)) if m else 0
        except OSError:
            return 0


# --------------------------------------------------------------------------
# servers


class Server:
    name = "?"
    label = "?"

    def __init__(self, ctx):
        self.ctx = ctx
        self.dir = ctx.work / self.name
        self.port = free_port()  # the submission port (STARTTLS)
        self.plain_port = free_port()  # scenario (c): no TLS, no AUTH

    def roots(self):
        return [self.pid]

    def queued(self):
        return 0

    def delivered(self):
        return self.ctx.sink.count()

    def cleanup(self):
        pass

    def supports(self, scen):
        return True


class Submitd(Server):
    def __init__(self, ctx, name, dkim=None):
        self.name = name
        super().__init__(ctx)  # plain_port: the `trusted` listener of scenario (c)
        self.label = {"submitd": "submitd", "submitd-rsa": "submitd + DKIM rsa-sha256",
                      "submitd-ed25519": "submitd + DKIM ed25519"}.get(name, name)
        self.dkim = dkim

    def config(self, transport):
        c = self.ctx
        d = self.dir
        out = [f"# {self.name}: written by bench/bench.py",
               "hostname bench.test", "user root", "workers 0",
               f"spool-dir {d}/spool", f"accounts {c.work}/submitd-accounts",
               f"pid-file {d}/submitd.pid", "log stderr", "log-level info",
               "tls {", f"    certificate {c.crt} {c.key}", "}",
               "listener submission {", "    address 127.0.0.1", f"    port {self.port}",
               "    mode starttls", "    max-connections 100000", "    max-connections-per-ip 100000", "}",
               "listener trusted {", "    address 127.0.0.1", f"    port {self.plain_port}", "    mode starttls",
               "    trusted 127.0.0.1/32", "    max-connections 100000", "    max-connections-per-ip 100000", "}"]
        out += transport
        out.append("route * sink")
        out += self.ctx.submitd_extra
        if self.dkim:
            out += ["dkim example.test {", f"    key {self.dkim[0]} {self.dkim[1]}", "}"]
        return "\n".join(out) + "\n"

    def start(self):
        c = self.ctx
        self.dir.mkdir(parents=True, exist_ok=True)
        transport = ["transport sink {", "    type smarthost", f"    url smtp://127.0.0.1:{c.sink.port}",
                     "    starttls optional", "}"]
        (self.dir / "submitd.conf").write_text(self.config(transport))
        logf = open(self.dir / "submitd.log", "wb")
        self.proc = subprocess.Popen([str(c.build / "submitd"), "-c", str(self.dir / "submitd.conf")],
                                     stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                     cwd=str(self.dir))
        self.pid = self.proc.pid
        c.procs.add(self.name, self.pid, self.proc)
        if not wait_port(self.port, 30, self.proc):
            raise SystemExit(f"bench: {self.name} did not start; see {self.dir}/submitd.log")

    def queued(self):
        q = self.dir / "spool" / "queue"
        try:
            return sum(1 for n in os.listdir(q) if not n.endswith(".st"))
        except OSError:
            return 0

    def version(self):
        try:
            r = run_cmd(["git", "-C", str(TOP), "describe", "--always", "--dirty"])
            return "git " + r.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"


class Postfix(Server):
    name = "postfix"
    label = "Postfix"

    def start(self):
        c = self.ctx
        d = self.dir
        for sub in ("etc", "etc/sasl", "queue", "data"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        shutil.chown(d / "data", "postfix", "postfix")
        main = f"""# Postfix for the submitd benchmark: written by bench/bench.py
compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{c.sink.port}
smtp_dns_support_level = disabled
smtp_tls_security_level = none
alias_maps =
alias_database =
local_recipient_maps =
biff = no
maillog_file_prefixes = {d}
maillog_file = {d}/maillog
smtpd_tls_chain_files = {c.key}, {c.crt}
smtpd_tls_security_level = encrypt
smtpd_tls_auth_only = yes
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = {d}/etc/sasl
smtpd_relay_restrictions = permit_sasl_authenticated, reject
"""
        (d / "etc" / "main.cf").write_text(main)
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            if not line.strip() or line.startswith("#") or line[0] in " \t":
                continue
            f = line.split()
            if f[0] in ("smtp", "submission", "smtps") and f[1] == "inet":
                continue
            if f[1] == "unix" and f[7] == "pipe":
                continue
            f[4] = "n"  # no chroot: the queue is private and holds no /etc copies
            lines.append(" ".join(f))
        lines.append(f"127.0.0.1:{self.port} inet n - n - - smtpd")
        lines.append(f"127.0.0.1:{self.plain_port} inet n - n - - smtpd -o smtpd_tls_security_level=none "
                     "-o smtpd_sasl_auth_enable=no -o smtpd_relay_restrictions=permit_mynetworks,reject")
        (d / "etc" / "master.cf").write_text("\n".join(lines) + "\n")
        # Debian's Postfix reads $config_directory/sasl/smtpd.conf
        sasl = d / "etc" / "sasl"
        (sasl / "smtpd.conf").write_text(
            f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nsasldb_path: {sasl}/sasldb2\n"
            "mech_list: PLAIN LOGIN\n")
        local, realm = USER.split("@")
        r = subprocess.run(["saslpasswd2", "-p", "-c", "-f", str(sasl / "sasldb2"), "-u", realm, local],
                           input=PASSWORD, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise SystemExit("bench: saslpasswd2: " + r.stderr)
        shutil.chown(sasl / "sasldb2", "postfix", "postfix")
        os.chmod(sasl / "sasldb2", 0o600)
        logf = open(d / "start.log", "wb")
        env = dict(os.environ, MAIL_CONFIG=str(d / "etc"))
        r = subprocess.run(["postfix", "-c", str(d / "etc"), "start"], stdin=subprocess.DEVNULL, stdout=logf,
                           stderr=subprocess.STDOUT, env=env, timeout=60)
        pidf = d / "queue" / "pid" / "master.pid"
        deadline = time.monotonic() + 20
        while not pidf.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if r.returncode != 0 or not pidf.exists():
            raise SystemExit(f"bench: postfix did not start; see {d}/start.log and {d}/maillog")
        self.pid = int(pidf.read_text().split()[0])
        c.procs.add("postfix", self.pid)
        if not wait_port(self.port, 30):
            raise SystemExit(f"bench: postfix does not answer; see {d}/maillog")

    def queued(self):
        n = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, files in os.walk(self.dir / "queue" / sub):
                n += len(files)
        return n

    def version(self):
        r = run_cmd(["postconf", "-c", str(self.dir / "etc"), "-h", "mail_version"])
        return r.stdout.strip()


class Haraka(Server):
    name = "haraka"
    label = "Haraka"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.pkg = ctx.build / "bench" / "haraka" / "node_modules" / "Haraka"

    def start(self):
        c = self.ctx
        d = self.dir
        r = run_cmd(["node", str(self.pkg / "bin" / "haraka"), "-i", str(d)])
        if r.returncode != 0:
            raise SystemExit("bench: haraka -i failed: " + r.stdout + r.stderr)
        cfg = d / "config"
        (cfg / "smtp.ini").write_text(
            f"listen=127.0.0.1:{self.port},127.0.0.1:{self.plain_port}\n"
            "; one process per core, as Haraka's performance notes advise\nnodes=cpus\n")
        (cfg / "me").write_text("haraka.bench.test\n")
        (cfg / "plugins").write_text("bench_policy\ntls\nauth/flat_file\nqueue/smtp_forward\n")
        shutil.copy(c.crt, cfg / "tls_cert.pem")
        shutil.copy(c.key, cfg / "tls_key.pem")
        (cfg / "tls.ini").write_text("[main]\nkey=tls_key.pem\ncert=tls_cert.pem\n")
        # Haraka makes dhparams.pem at its first start (openssl dhparam 2048:
        # a minute of CPU); give it one, made once (DHE is unused with TLS 1.3)
        dh = c.build / "bench" / "dhparams.pem"
        if not dh.exists():
            r = run_cmd(["openssl", "dhparam", "-dsaparam", "-out", str(dh), "2048"])
            if r.returncode != 0:
                raise SystemExit("bench: openssl dhparam: " + r.stderr)
        shutil.copy(dh, cfg / "dhparams.pem")
        (cfg / "auth_flat_file.ini").write_text(f"[core]\nmethods=PLAIN,LOGIN\n\n[users]\n{USER}={PASSWORD}\n")
        (cfg / "smtp_forward.ini").write_text(
            f"[main]\nhost=127.0.0.1\nport={c.sink.port}\nenable_outbound=false\nenable_tls=false\n\n"
            f"[{RCPT_DOMAIN}]\nhost=127.0.0.1\nport={c.sink.port}\n")
        (cfg / "outbound.ini").write_text("[main]\nenable_tls=false\n")
        (cfg / "bench_policy.ini").write_text(f"[main]\nplain_port={self.plain_port}\n")
        (cfg / "host_list").write_text("")
        (d / "plugins" / "bench_policy.js").write_text(HARAKA_POLICY)
        logf = open(d / "haraka.log", "wb")
        self.proc = subprocess.Popen(["node", str(self.pkg / "bin" / "haraka"), "-c", str(d)],
                                     stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, cwd=str(d))
        self.pid = self.proc.pid
        c.procs.add("haraka", self.pid, self.proc)
        if not wait_port(self.port, 60, self.proc) or not wait_port(self.plain_port, 30, self.proc):
            raise SystemExit(f"bench: haraka did not start; see {d}/haraka.log")
        time.sleep(1)  # the cluster's second worker

    def queued(self):
        try:
            return sum(1 for n in os.listdir(self.dir / "queue") if not n.startswith("error."))
        except OSError:
            return 0

    def version(self):
        v = json.loads((self.pkg / "package.json").read_text())["version"]
        node = run_cmd(["node", "--version"]).stdout.strip()
        return f"{v} (Node.js {node})"


HARAKA_POLICY = """// bench_policy: written by submitd's bench/bench.py for the benchmark only.
// The plain port (scenario c) relays for loopback clients without TLS or
// AUTH. On the submission port a loopback client is treated as a public one,
// so that auth/flat_file offers AUTH only after STARTTLS (it allows AUTH in
// plaintext from private addresses), and AUTH before STARTTLS is refused.
exports.register = function () {
    this.cfg = this.config.get('bench_policy.ini')
}
exports.hook_connect_init = function (next, connection) {
    if (connection.local.port === Number(this.cfg.main.plain_port)) connection.relaying = true
    else connection.remote.is_private = false
    next()
}
exports.hook_unrecognized_command = function (next, connection, params) {
    if (params[0].toUpperCase() === 'AUTH' && !connection.tls.enabled) {
        return next(DENY, 'Must issue a STARTTLS command first')
    }
    next()
}
"""


# --------------------------------------------------------------------------
# equivalence check


def settle(srv, timeout=60):
    """Waits until the server's processes are idle (under 5% of a core over
    half a second), so that start-up work is not measured."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c0 = cpu_ticks(srv.roots())
        time.sleep(0.5)
        if (cpu_ticks(srv.roots()) - c0) / CLK < 0.025:
            return True
    return False


def check_server(ctx, srv):
    """STARTTLS before AUTH, no relay without AUTH, a message reaches the
    sink. Returns a list of problems."""
    problems = []
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    tok = __import__("base64").b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    try:
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=20) as s:
            s.ehlo("check.test")
            if s.has_extn("auth"):
                problems.append("AUTH offered before STARTTLS")
            code, _ = s.docmd("AUTH", "PLAIN " + tok)
            if code < 500:
                problems.append(f"AUTH before STARTTLS answered {code}")
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=20) as s:
            s.ehlo("check.test")
            s.starttls(context=tls)
            s.ehlo("check.test")
            code1, _ = s.docmd("MAIL", f"FROM:<{USER}>")
            code2, _ = s.docmd("RCPT", f"TO:<x@{RCPT_DOMAIN}>") if code1 < 400 else (550, b"")
            if code2 < 400:
                problems.append("relays without AUTH")
        before = srv.delivered()
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=20) as s:
            s.ehlo("check.test")
            s.starttls(context=tls)
            s.ehlo("check.test")
            s.login(USER, PASSWORD)
            s.sendmail(USER, [f"check@{RCPT_DOMAIN}"],
                       f"From: <{USER}>\r\nTo: <check@{RCPT_DOMAIN}>\r\nSubject: check\r\n"
                       "Message-ID: <check@bench.test>\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n\r\nhi\r\n")
        deadline = time.monotonic() + 30
        while srv.delivered() <= before and time.monotonic() < deadline:
            time.sleep(0.1)
        if srv.delivered() <= before:
            problems.append("the accepted test message was not delivered within 30 s")
    except (OSError, smtplib.SMTPException) as e:
        problems.append(f"check failed: {e!r}")
    return problems


# --------------------------------------------------------------------------
# scenarios

SCENARIOS = {
    "a": dict(title="(a) 10 msgs per session, STARTTLS + AUTH PLAIN", mode="starttls", n=10, size=4096, auth=True),
    "b": dict(title="(b) 1 msg per connection, STARTTLS + AUTH PLAIN", mode="starttls", n=1, size=4096, auth=True),
    "c": dict(title="(c) as (a) without TLS or AUTH", mode="plain", n=10, size=4096, auth=False),
    "g": dict(title="(g) as (a) with 100 KiB messages", mode="starttls", n=10, size=102400, auth=True),
}


def wait_drained(ctx, srv, timeout, stall=10):
    """Seconds until the server's queue is empty; None when it is not empty
    after timeout, or when it did not shrink for stall seconds."""
    t0 = time.monotonic()
    last, last_t = None, t0
    while time.monotonic() - t0 < timeout:
        n = srv.queued()
        if n == 0:
            return time.monotonic() - t0
        if last is None or n < last:
            last, last_t = n, time.monotonic()
        elif time.monotonic() - last_t > stall:
            return None
        time.sleep(0.1)
    return None


def load_run(ctx, srv, key):
    sc = SCENARIOS[key]
    port = srv.plain_port if sc["mode"] == "plain" else srv.port
    args = [str(ctx.bin / "loadgen"), "-p", str(port), "-m", sc["mode"], "-c", str(ctx.conc),
            "-n", str(sc["n"]), "-s", str(sc["size"]), "-r", "1", "-t", str(ctx.seconds),
            "-j", str(ctx.client_threads), "-T", RCPT_DOMAIN, "-f", USER]
    if sc["auth"]:
        args += ["-u", USER, "-w", str(ctx.work / "password")]
    # a queue that drains slower than this is reported, not waited for
    drain_max = max(15, 2 * ctx.seconds)
    pre = wait_drained(ctx, srv, drain_max)
    if pre is None:
        log(f"    warning: {srv.name} still has {srv.queued()} queued messages before the run")
    roots = srv.roots()
    d0 = srv.delivered()
    c0 = cpu_ticks(roots)
    m0 = machine_ticks()
    at_end = {}

    def window_end():
        at_end["delivered"] = srv.delivered()
        at_end["cpu"] = cpu_ticks(roots)
        at_end["machine"] = machine_ticks()
    timer = threading.Timer(ctx.seconds, window_end)
    t0 = time.monotonic()
    with Sampler(roots) as samp:
        timer.start()
        p = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=ctx.seconds + 120)
        timer.join()
        t_load = time.monotonic() - t0
        drain = wait_drained(ctx, srv, drain_max)
        time.sleep(0.15)
    d1 = srv.delivered()
    c1 = cpu_ticks(roots)
    try:
        res = json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise SystemExit(f"bench: loadgen failed against {srv.name}: {p.stdout}\n{p.stderr}")
    mt = at_end["machine"][0] - m0[0]
    mi = at_end["machine"][1] - m0[1]
    win_cpu_s = (at_end["cpu"] - c0) / CLK
    delivered = d1 - d0
    res.update(
        server=srv.name, scenario=key, load_s=round(t_load, 2),
        delivered=delivered, relayed_in_window=at_end["delivered"] - d0,
        relayed_per_s=round((at_end["delivered"] - d0) / ctx.seconds, 1),
        drain_s=None if drain is None else round(drain, 2), backlog_left=srv.queued(),
        server_cpu_s=round((c1 - c0) / CLK, 2),
        server_cpu_ms_per_msg=round(1000 * (c1 - c0) / CLK / delivered, 3) if delivered else None,
        server_cpu_pct_window=round(100 * win_cpu_s / ctx.seconds, 1),
        machine_busy_pct=round(100 * (mt - mi) / mt, 1) if mt else None,
        other_cpu_pct=None, peak_rss_mib=round(samp.peak / 2**20, 1),
        peak_pss_mib=round(samp.peak_pss / 2**20, 1),
        client_errors=p.stderr.strip().splitlines()[:5])
    if mt:
        ncpu = os.cpu_count() or 1
        # busy share of the whole machine not explained by this server or the client
        other = 100 * (mt - mi) / mt * ncpu - res["server_cpu_pct_window"] - res["client_cpu_pct"]
        res["other_cpu_pct"] = round(max(other, 0.0), 1)
    return res


def idle_run(ctx, srv):
    """(d): hold ctx.idle TLS sessions; the server's memory while held."""
    wait_drained(ctx, srv, max(15, 2 * ctx.seconds))
    roots = srv.roots()
    pids = tree(roots)
    rss0, pss0 = rss_bytes(pids), pss_bytes(pids)
    args = [str(ctx.bin / "loadgen"), "-p", str(srv.port), "-m", "starttls", "-I", str(ctx.idle),
            "-c", "200", "-S", "5", "-t", "180"]
    p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ctx.procs.add("loadgen-idle", p.pid, p)
    try:
        ready = json.loads(p.stdout.readline())
        time.sleep(1.0)
        pids = tree(roots)
        rss1, pss1 = rss_bytes(pids), pss_bytes(pids)
        nproc = len(pids)
        p.stdin.close()
        done = json.loads(p.stdout.readline() or "{}")
        p.wait(60)
    finally:
        ctx.procs.stop(p.pid)
    held = ready.get("held", 0)
    res = dict(server=srv.name, scenario="d", wanted=ctx.idle, held=held, open_s=ready.get("open_s"),
               handshakes_per_s=ready.get("handshakes_per_s"), errors=ready.get("errors"),
               dropped_while_held=done.get("dropped_while_held"), processes=nproc,
               rss_before_mib=round(rss0 / 2**20, 1), rss_held_mib=round(rss1 / 2**20, 1),
               pss_before_mib=round(pss0 / 2**20, 1), pss_held_mib=round(pss1 / 2**20, 1),
               kib_per_session=round((rss1 - rss0) / 1024 / held, 1) if held else None,
               pss_kib_per_session=round((pss1 - pss0) / 1024 / held, 1) if held else None)
    time.sleep(1.0)  # let the server close them
    return res


# --------------------------------------------------------------------------
# report


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, digits=0):
    if v is None:
        return "–"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.1f}x"


def summarize(ctx, results):
    by = {}
    for r in results:
        by.setdefault((r["scenario"], r["server"]), []).append(r)

    def m(sc, srv, field):
        return med([r.get(field) for r in by.get((sc, srv), [])])
    return by, m


def render(ctx, results, labels):
    """The markdown tables; labels: server name -> label, in order."""
    by, m = summarize(ctx, results)
    names = [n for n in labels if n in ("submitd", "postfix", "haraka")]
    peers = [n for n in names if n != "submitd"]
    out = []
    head = "| scenario | " + " | ".join(labels[n] for n in names) + " | " + \
        " | ".join(f"submitd/{labels[p]}" for p in peers) + " |"
    out += [head, "|" + "---|" * (1 + len(names) + len(peers))]

    def row(title, sc, field, digits=0, extra=None, lower_better=False):
        cells, vals = [], {}
        for n in names:
            v = m(sc, n, field)
            vals[n] = v
            if (sc, n) not in by:
                cells.append("–")
                continue
            txt = fmt(v, digits)
            if extra:
                e = extra(sc, n)
                if e:
                    txt += f" ({e})"
            cells.append(txt)
        rat = []
        for p in peers:
            if lower_better:
                rat.append(ratio(vals.get(p), vals.get("submitd")))
            else:
                rat.append(ratio(vals.get("submitd"), vals.get(p)))
        out.append(f"| {title} | " + " | ".join(cells) + " | " + " | ".join(rat) + " |")

    def p99(sc, n):
        v = m(sc, n, "p99_ms")
        return None if v is None else f"p99 {fmt(v, 1 if v < 10 else 0)} ms"

    def hs(sc, n):
        v = m(sc, n, "handshakes_per_s")
        return None if v is None else f"{fmt(v)} handshakes/s"

    def e_row():
        """(e): from the runs of (a)."""
        cells, vals = [], {}
        for n in names:
            key = ("a", n)
            if key not in by:
                cells.append("–")
                vals[n] = None
                continue
            rel, acc = m(*key, "relayed_per_s"), m(*key, "msgs_per_s")
            drain = m(*key, "drain_s")
            left = m(*key, "backlog_left")
            vals[n] = rel
            how = (f"drained {fmt(drain, 1)} s after" if drain is not None and not left
                   else f"{fmt(left)} still queued, no progress")
            cells.append(f"{fmt(rel)} ({100 * (rel or 0) / (acc or 1):.0f}% of {fmt(acc)} accepted; {how})")
        rat = [ratio(vals.get("submitd"), vals.get(p)) for p in peers]
        out.append("| (e) relayed to the sink during (a), msgs/s | " + " | ".join(cells) + " | "
                   + " | ".join(rat) + " |")

    for sc in ("a", "b", "c", "g"):
        if any(k[0] == sc for k in by):
            row(SCENARIOS[sc]["title"] + ", msgs/s", sc, "msgs_per_s", extra=hs if sc == "b" else p99)
    if any(k[0] == "a" for k in by):
        row("(a) server CPU ms per message (accept + relay)", "a", "server_cpu_ms_per_msg", 2,
            lower_better=True)
        row("(a) peak memory of the server's processes: PSS MiB", "a", "peak_pss_mib", 0, lower_better=True,
            extra=lambda sc, n: f"RSS {fmt(m(sc, n, 'peak_rss_mib'))}")
        e_row()
    if any(k[0] == "d" for k in by):
        row(f"(d) {ctx.idle:,} idle TLS sessions: sessions held", "d", "held")
        row("(d) server memory with them held: PSS MiB", "d", "pss_held_mib", lower_better=True,
            extra=lambda sc, n: f"RSS {fmt(m(sc, n, 'rss_held_mib'))} MiB; "
                                f"{fmt(m(sc, n, 'pss_kib_per_session'), 1)} KiB per session")
    if any(k[0] == "g" for k in by):
        row("(g) server CPU ms per message", "g", "server_cpu_ms_per_msg", 2, lower_better=True)
    out.append("")
    notes = []
    if ("d", "postfix") in by and m("d", "postfix", "held") < ctx.idle:
        notes.append("(d): Postfix runs one smtpd process per session, at most `default_process_limit` (100) "
                     "of them; further connections wait in the listen queue without a TLS handshake. Its "
                     "KiB per session is over the sessions it held.")
    notes.append("Memory is PSS (proportional set size: pages shared by several processes are split among "
                 "them) summed over the server's processes; the RSS sum counts Postfix's shared libraries "
                 "once per smtpd process.")
    if "submitd" in names:
        notes.append("Every server relays what it accepts to the same sink (submitd through its smarthost "
                     "transport, plain SMTP on loopback), during the run: the CPU figures cover accepting and "
                     "relaying. (e) is measured in the runs of (a).")
    out += [f"- {n}" for n in notes]
    # (f)
    f_rows = []
    off = m("a", "submitd", "msgs_per_s")
    off_cpu = m("a", "submitd", "server_cpu_ms_per_msg")
    for n, lab in (("submitd", "off"), ("submitd-rsa", "rsa-sha256 (2048 bits)"),
                   ("submitd-ed25519", "ed25519-sha256")):
        if ("a", n) in by:
            v = m("a", n, "msgs_per_s")
            cpu = m("a", n, "server_cpu_ms_per_msg")
            cost = "–" if n == "submitd" or not off else f"{100 * (off - v) / off:.1f}%"
            cpu_cost = ("–" if n == "submitd" or not off_cpu or cpu is None else
                        f"{cpu - off_cpu:+.2f} ms ({100 * (cpu - off_cpu) / off_cpu:+.0f}%)")
            f_rows.append(f"| {lab} | {fmt(v)} | {fmt(m('a', n, 'p99_ms'), 1)} | {fmt(cpu, 2)} | {cost} | "
                          f"{cpu_cost} |")
    if len(f_rows) > 1:
        out += ["", "(f) DKIM signing, submitd under the load of (a), alternating with the runs above:", "",
                "| signing | msgs/s | p99 ms | server CPU ms/msg | throughput cost | CPU cost per message |",
                "|---|---|---|---|---|---|"]
        out += f_rows
    # client and noise
    out += ["", "The load client and the rest of the machine during the load runs (medians over all of a "
            "server's runs; \"other\" is the machine's busy time, in % of one core, that neither the server "
            "nor loadgen used: the noise):", "",
            "| server | loadgen CPU % of one core | other processes' CPU % | errors (sum) |", "|---|---|---|---|"]
    for n, lab in labels.items():
        rs = [r for r in results if r["server"] == n and r["scenario"] != "d"]
        if rs:
            out.append(f"| {lab} | {fmt(med([r['client_cpu_pct'] for r in rs]))} | "
                       f"{fmt(med([r['other_cpu_pct'] for r in rs]))} | {sum(r['errors'] for r in rs)} |")
    return "\n".join(out)


def write_doc(ctx, table, meta):
    path = TOP / "docs" / "performance.md"
    gen = [DOC_BEGIN, "", f"Last run: {meta['date']}, `BENCH_SECONDS={ctx.seconds}`, {ctx.runs} runs per "
           f"scenario and server (medians), {ctx.conc} concurrent sessions, 1 recipient, "
           f"{ctx.client_threads} load-client thread{'s' if ctx.client_threads != 1 else ''}.", "",
           "| | |", "|---|---|",
           f"| machine | {meta['nproc']} cores ({meta['cpu']}), {meta['mem']}, Linux {meta['kernel']} |"]
    for k, v in meta["versions"].items():
        gen.append(f"| {k} | {v} |")
    gen += ["", table, "", DOC_END]
    block = "\n".join(gen)
    if path.exists():
        text = path.read_text()
        if DOC_BEGIN in text and DOC_END in text:
            a = text.index(DOC_BEGIN)
            b = text.index(DOC_END) + len(DOC_END)
            path.write_text(text[:a] + block + text[b:])
            return path
    path.write_text("# Performance\n\n" + block + "\n")
    return path


def machine_meta(servers):
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", open("/proc/meminfo").read()).group(1))
        mem = f"{kb / 2**20:.0f} GiB"
    except (OSError, AttributeError):
        pass
    versions = {}
    for s in servers:
        if s.name in ("submitd", "postfix", "haraka"):
            versions[s.label] = s.version()
    versions["OpenSSL"] = run_cmd(["openssl", "version"]).stdout.strip()
    return dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), nproc=os.cpu_count(), cpu=cpu,
                mem=mem, kernel=platform.release(), versions=versions)


# --------------------------------------------------------------------------


class Ctx:
    pass


def system_postfix():
    """PIDs of Postfix masters running the system configuration (no -c)."""
    out = []
    for pid in proc_table(live_only=True):
        try:
            if os.path.basename(os.readlink(f"/proc/{pid}/exe")) != "master":
                continue
            if b"-c" not in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                out.append(pid)
        except OSError:
            pass
    return out


# The rate limits of issue 5 (1000 messages per account and hour by default)
# raised out of the way, the limiter still consulted for every message:
# one account sends all the benchmark's mail.
RATELIMIT_BLOCK = ["ratelimit {", "    messages 1000000/1s", "    recipients 1000000/1s", "    bytes 1024G/1h",
                   "    connections 1000000/1s", "    auth 1000000/1s", "    auth-login 1000000/1s", "}"]


def config_accepted(ctx, lines):
    """True when `submitd -t` accepts a minimal config plus lines."""
    d = ctx.work / "detect"
    d.mkdir(exist_ok=True)
    conf = d / "submitd.conf"
    conf.write_text("\n".join([
        "hostname bench.test", "user root", f"spool-dir {d}/spool", f"accounts {ctx.work}/submitd-accounts",
        "tls {", f"    certificate {ctx.crt} {ctx.key}", "}",
        "listener s {", "    address 127.0.0.1", "    port 2", "    mode starttls", "}",
        "transport m {", "    type maildir", f"    path {d}/mail", "}"] + lines + ["route * m", ""]))
    r = run_cmd([str(ctx.build / "submitd"), "-t", "-c", str(conf)])
    return r.returncode == 0


def detect_smarthost(ctx):
    """True when this submitd build accepts a smarthost transport."""
    return config_accepted(ctx, ["transport sink {", "    type smarthost", "    url smtp://127.0.0.1:25",
                                 "    starttls optional", "}"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--report", action="store_true",
                    help="only render BUILD/bench/results.json again (and docs/performance.md)")
    a = ap.parse_args()
    ctx = Ctx()
    ctx.build = Path(a.build)
    ctx.bin = ctx.build / "bench"
    ctx.work = ctx.bin / "run"
    ctx.seconds = env_int("BENCH_SECONDS", 8)
    ctx.runs = env_int("BENCH_RUNS", 3)
    ctx.conc = env_int("BENCH_CONC", 50)
    ctx.idle = env_int("BENCH_IDLE", 10000)
    # memory is not noisy, and 10,000 handshakes per server take a while
    ctx.idle_runs = env_int("BENCH_IDLE_RUNS", 1)
    # one load-client thread per core: a single thread measured at 70% of a
    # core in (b) capped every server's handshakes it could start
    ctx.client_threads = env_int("BENCH_CLIENT_THREADS", os.cpu_count() or 1)
    only = [s.strip() for s in os.environ.get("BENCH_ONLY", "a,b,c,d,e,f,g").split(",") if s.strip()]
    want_servers = [s.strip() for s in os.environ.get("BENCH_SERVERS", "submitd,postfix,haraka").split(",")]
    skipped = os.environ.get("BENCH_SKIP", "").split()  # run.sh could not install these
    want_servers = [s for s in want_servers if s not in skipped]
    ctx.procs = Procs()
    if a.report:
        saved = json.loads((ctx.bin / "results.json").read_text())
        for k, v in saved["settings"].items():
            setattr(ctx, k, v)
        table = render(ctx, saved["results"], saved["labels"])
        log(table)
        if os.environ.get("BENCH_NO_DOC") != "1":
            log(f"bench: wrote {write_doc(ctx, table, saved['meta'])}")
        return
    raise_nofile()

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)

    if ctx.work.exists():
        shutil.rmtree(ctx.work)
    ctx.work.mkdir(parents=True)
    p = ctx.work
    while p != Path("/"):  # postfix and its user must reach the queue
        if p.stat().st_mode & 0o005 != 0o005:
            os.chmod(p, p.stat().st_mode | 0o005)
        if p == ctx.build.parent:
            break
        p = p.parent
    crt_key = run_cmd(["sh", str(TOP / "scripts" / "mkcert.sh"), str(ctx.work / "certs"), "localhost", "ecdsa"])
    ctx.crt, ctx.key = crt_key.stdout.split()
    (ctx.work / "password").write_text(PASSWORD + "\n")
    r = subprocess.run([str(ctx.build / "submitctl"), "-a", str(ctx.work / "submitd-accounts"), "user", "add",
                        USER, "--sender", "@example.test"], env=dict(os.environ, SUBMITD_PASSWORD=PASSWORD),
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise SystemExit("bench: submitctl user add: " + r.stderr)
    os.chmod(ctx.work / "submitd-accounts", 0o600)
    dk = {}
    for kind, opt in (("rsa", ["--rsa", "2048"]), ("ed25519", ["--ed25519"])):
        r = run_cmd([str(ctx.build / "submitctl"), "dkim", "keygen", "example.test", f"bench-{kind}"] + opt +
                    ["--dir", str(ctx.work / "dkim")])
        if r.returncode != 0:
            raise SystemExit("bench: submitctl dkim keygen: " + r.stderr)
        dk[kind] = (f"bench-{kind}", str(ctx.work / "dkim" / f"example.test.bench-{kind}.key"))
    if not detect_smarthost(ctx):
        raise SystemExit("bench: this submitd build has no smarthost transport to relay to the sink")
    ctx.submitd_extra = RATELIMIT_BLOCK if config_accepted(ctx, RATELIMIT_BLOCK) else []

    servers = []
    if "submitd" in want_servers:
        servers.append(Submitd(ctx, "submitd"))
    if "postfix" in want_servers:
        if os.geteuid() == 0 and shutil.which("postfix"):
            servers.append(Postfix(ctx))
        else:
            log("bench: Postfix skipped (needs root and the postfix package)")
    if "haraka" in want_servers:
        servers.append(Haraka(ctx))
    dkim_servers = []
    if "f" in only and "submitd" in want_servers:
        dkim_servers = [Submitd(ctx, "submitd-rsa", dk["rsa"]), Submitd(ctx, "submitd-ed25519", dk["ed25519"])]

    results = []
    t_start = time.monotonic()
    try:
        ctx.sink = Sink(ctx)
        ctx.sink.start()
        for s in servers + dkim_servers:
            s.start()
            if not settle(s):
                log(f"bench: warning: {s.label} is still busy 60 s after its start")
            problems = check_server(ctx, s)
            log(f"bench: {s.label} on 127.0.0.1:{s.port}: "
                + ("STARTTLS before AUTH, no relay without AUTH, delivery: ok" if not problems
                   else "PROBLEMS: " + "; ".join(problems)))
            if problems:
                raise SystemExit(1)
        meta = machine_meta(servers)
        log(f"bench: {ctx.runs} runs x {ctx.seconds}s per scenario and server; every server relays to the sink")
        plan = [k for k in ("a", "b", "c", "g") if k in only or (k == "a" and ("e" in only or "f" in only))]
        for key in plan:
            for run in range(ctx.runs):
                rot = servers + (dkim_servers if key == "a" else [])
                k = run % len(rot)
                rot = rot[k:] + rot[:k]  # alternate who goes first
                for s in rot:
                    if not s.supports(key):
                        continue
                    r = load_run(ctx, s, key)
                    r["run"] = run + 1
                    results.append(r)
                    log(f"  ({key}) run {run + 1} {s.label:28} {r['msgs_per_s']:9.1f} msgs/s  "
                        f"p99 {r['p99_ms']:8.1f} ms  hs/s {r['handshakes_per_s']:7.1f}  "
                        f"cpu {fmt(r['server_cpu_ms_per_msg'], 2):>6} ms/msg  relayed {r['relayed_per_s']:8.1f}/s  "
                        f"rss {r['peak_rss_mib']:6.0f} MiB  err {r['errors']}  client {r['client_cpu_pct']:.0f}%  "
                        f"other {fmt(r['other_cpu_pct'])}%")
                    for e in r["client_errors"][:2]:
                        log("      " + e)
        if "d" in only:
            for run in range(ctx.idle_runs):
                k = run % len(servers)
                for s in servers[k:] + servers[:k]:
                    r = idle_run(ctx, s)
                    r["run"] = run + 1
                    results.append(r)
                    log(f"  (d) run {run + 1} {s.label:28} held {r['held']}/{r['wanted']} in {r['open_s']} s, "
                        f"RSS {r['rss_before_mib']} -> {r['rss_held_mib']} MiB "
                        f"({fmt(r['kib_per_session'], 1)} KiB/session), {r['processes']} processes")
    except KeyboardInterrupt:
        log("bench: interrupted")
        raise SystemExit(130)
    finally:
        ctx.procs.stop_all()
        for s in servers + dkim_servers:
            s.cleanup()
        system = system_postfix()
        if system:
            log(f"bench: warning: a system Postfix is running (not started by this script): pid {system}")
    labels = {s.name: s.label for s in servers + dkim_servers}
    settings = dict(seconds=ctx.seconds, runs=ctx.runs, conc=ctx.conc, idle=ctx.idle)
    (ctx.bin / "results.json").write_text(json.dumps(dict(meta=meta, labels=labels, settings=settings,
                                                          results=results), indent=1))
    table = render(ctx, results, labels)
    log("")
    log(table)
    log(f"\nbench: {len(results)} runs in {time.monotonic() - t_start:.0f} s; all runs: {ctx.bin}/results.json")
    if os.environ.get("BENCH_NO_DOC") != "1" and ctx.runs >= 1:
        path = write_doc(ctx, table, meta)
        log(f"bench: wrote {path}")


if __name__ == "__main__":
    main()
