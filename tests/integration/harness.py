"""Integration-test harness for submitd: owns the Daemon wrapper (config
rendering, start/stop by PID, log and Maildir helpers), a raw SMTP client
over plain/TLS sockets that exposes exact replies, and message helpers
(building, dot-stuffing, byte-exact checks of delivered Maildir files).
Used by conftest.py and the test_*.py files of this directory."""

import base64
import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SUBMITD_BUILD", str(REPO / "build")))
SUBMITD = BUILD / "submitd"
SUBMITCTL = BUILD / "submitctl"
MKCERT = Path(os.environ.get("SUBMITD_MKCERT", str(REPO / "scripts" / "mkcert.sh")))
SAN = os.environ.get("SUBMITD_SAN") == "1"
# SUBMITD_VALGRIND=1 runs every daemon under valgrind memcheck (make valgrind):
# a leak or memory error fails the test at stop().
VALGRIND = os.environ.get("SUBMITD_VALGRIND") == "1"
# Timeouts are multiplied by this under ASan/UBSan or valgrind.
SLOW = 15 if VALGRIND else 4 if SAN else 1

HOSTNAME = "mx.test"
QID_RE = re.compile(rb"^[0-9A-Z]{16}$")
QUEUED_RE = re.compile(r"^2\.0\.0 Ok: queued as ([0-9A-Z]{16})$")

SAN_PATTERNS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer")


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    """A currently free TCP port on loopback (bind :0, read, close)."""
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def have_ipv6_loopback():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        s.bind(("::1", 0))
        return True
    except OSError:
        return False
    finally:
        s.close()


def san_env(env=None):
    env = dict(os.environ if env is None else env)
    if SAN:
        env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0"
        env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    return env


def wait_until(pred, timeout, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------
# Accounts

# login -> (password, senders, extra submitctl args)
USERS = {
    "alice@example.test": ("alice-Pw-1x!", ["alice@example.test", "alias@example.test"],
                           ["--scheme", "sha512-crypt"]),
    "bob@example.test": ("bob-Pw-2y?", ["bob@example.test"], ["--scheme", "sha512-crypt"]),
    "carol": ("carol-Pw-3z#", ["@carol.test"], ["--scheme", "sha512-crypt"]),
    # the default scheme (argon2id)
    "argon@example.test": ("argon-Pw-4w$", ["argon@example.test"], []),
    "dave@example.test": ("dave-Pw-5v%", ["dave@example.test"], ["--scheme", "sha512-crypt"]),
}
SUSPENDED = ["dave@example.test"]


def require_build():
    missing = [str(p) for p in (SUBMITD, SUBMITCTL) if not os.access(p, os.X_OK)]
    if missing:
        raise AssertionError("not built: " + ", ".join(missing) + f" (SUBMITD_BUILD={BUILD})")


def submitctl(args, password=None, check=True):
    env = san_env()
    env.pop("SUBMITD_PASSWORD", None)
    if password is not None:
        env["SUBMITD_PASSWORD"] = password
    p = subprocess.run([str(SUBMITCTL)] + args, env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    if check:
        assert p.returncode == 0, f"submitctl {args} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def add_user(accounts, login, password, senders, extra=()):
    args = ["-a", str(accounts), "user", "add", login]
    for s in senders:
        args += ["--sender", s]
    args += list(extra)
    return submitctl(args, password=password)


def pw(login):
    return USERS[login][0]


ALICE = "alice@example.test"
BOB = "bob@example.test"
CAROL = "carol"
ARGON = "argon@example.test"
DAVE = "dave@example.test"


# --------------------------------------------------------------------------
# Daemon


class Daemon:
    """One submitd process with its own directory: config, spool, Maildir,
    accounts copy, pid file and stderr log."""

    def __init__(self, root, certs, accounts_src, *, user="root", limits=None,
                 tls=None, top=None, listeners=None, transport_path=None,
                 queue=None, cert_pairs=None, listener_extra=(), extra=""):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.certs = certs
        self.conf = self.root / "submitd.conf"
        self.spool = self.root / "spool"
        self.maildir = self.root / "mail"
        self.accounts = self.root / "accounts"
        self.pid_file = self.root / "submitd.pid"
        self.log_path = self.root / "submitd.log"
        self.user = user
        self.accounts.write_bytes(Path(accounts_src).read_bytes())
        os.chmod(self.accounts, 0o600)
        self.limits = {"auth-delay": "50", "auth-delay-max": "400"}
        self.limits.update(limits or {})
        self.tls = {"min-version": "1.2"}
        self.tls.update(tls or {})
        self.top = dict(top or {})
        self.queue = dict(queue or {})
        self.cert_pairs = cert_pairs or [(certs["ecdsa_crt"], certs["ecdsa_key"])]
        self.transport_path = transport_path or str(self.maildir)
        if listeners is None:
            self.port = free_port()
            self.tls_port = free_port()
            listeners = [
                {"name": "submission", "addresses": ["127.0.0.1"], "port": self.port,
                 "mode": "starttls", "extra": list(listener_extra)},
                {"name": "submissions", "addresses": ["127.0.0.1"], "port": self.tls_port,
                 "mode": "implicit-tls", "extra": list(listener_extra)},
            ]
        else:
            self.port = next((l["port"] for l in listeners if l["mode"] == "starttls"), None)
            self.tls_port = next((l["port"] for l in listeners if l["mode"] == "implicit-tls"), None)
        self.listeners = listeners
        self.extra = extra  # raw config text appended (e.g. dkim blocks)
        self.proc = None
        self.logf = None
        self.start_mark = 0
        self.write_config()

    # ---- config
    def render(self):
        out = [
            "# written by tests/integration/harness.py",
            f"hostname {HOSTNAME}",
            f"user {self.user}",
            "workers 2",
            f"spool-dir {self.spool}",
            f"accounts {self.accounts}",
            f"pid-file {self.pid_file}",
            "log stderr",
        ]
        if "log-level" not in self.top:
            out.append("log-level info")
        for k, v in self.top.items():
            if v is not None:
                out.append(f"{k} {v}")
        out.append("tls {")
        for crt, key in self.cert_pairs:
            out.append(f"    certificate {crt} {key}")
        for k, v in self.tls.items():
            out.append(f"    {k} {v}")
        out.append("}")
        out.append("limits {")
        for k, v in self.limits.items():
            out.append(f"    {k} {v}")
        out.append("}")
        for l in self.listeners:
            out.append(f"listener {l['name']} {{")
            for a in l["addresses"]:
                out.append(f"    address {a}")
            out.append(f"    port {l['port']}")
            out.append(f"    mode {l['mode']}")
            for line in l.get("extra", []):
                out.append(f"    {line}")
            out.append("}")
        if self.queue:
            out.append("queue {")
            for k, v in self.queue.items():
                out.append(f"    {k} {v}")
            out.append("}")
        out += ["transport local {", "    type maildir", f"    path {self.transport_path}", "}",
                "route * local", ""]
        if self.extra:
            out += [self.extra, ""]
        return "\n".join(out)

    def write_config(self, text=None):
        self.conf.write_text(self.render() if text is None else text)

    # ---- process
    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log_size(self):
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, since=0):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n=60):
        return "\n".join(self.log_text().splitlines()[-n:])

    def start(self, timeout=10):
        assert not self.running(), "daemon already running"
        self.start_mark = self.log_size()
        self.logf = open(self.log_path, "ab")
        argv = [str(SUBMITD), "-c", str(self.conf)]
        if VALGRIND:
            argv = ["valgrind", "--quiet", "--leak-check=full", "--errors-for-leak-kinds=definite",
                    "--show-leak-kinds=definite", "--error-exitcode=97", "--trace-children=no",
                    f"--log-file={self.root}/valgrind.%p.log"] + argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=subprocess.STDOUT, env=san_env(),
                                     cwd=str(self.root))
        deadline = time.monotonic() + timeout * SLOW
        while True:
            if "event=ready" in self.log_text(self.start_mark):
                return self
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                raise AssertionError(f"submitd exited with {rc} before event=ready; log:\n"
                                     + self.log_text(self.start_mark))
            if time.monotonic() > deadline:
                self._kill()
                raise AssertionError("submitd not ready within %ss; log:\n%s"
                                     % (timeout * SLOW, self.log_text(self.start_mark)))
            time.sleep(0.02)

    def _kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._close_log()

    def _close_log(self):
        if self.logf is not None:
            self.logf.close()
            self.logf = None

    def signal(self, sig):
        assert self.running(), "daemon not running:\n" + self.log_tail()
        os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout=10):
        try:
            rc = self.proc.wait(timeout * SLOW)
        except subprocess.TimeoutExpired:
            self._kill()
            self.proc = None
            raise AssertionError(f"submitd did not exit within {timeout * SLOW}s; SIGKILLed; log:\n"
                                 + self.log_tail())
        self.proc = None
        self._close_log()
        return rc

    def stop(self, timeout=10, expect_rc=0):
        """SIGTERM by PID, wait, assert the exit code and (SAN) a clean log."""
        if not self.running():
            rc = self.proc.returncode if self.proc else None
            self.proc = None
            self._close_log()
            if rc is not None:
                assert rc == expect_rc, f"submitd had already exited with {rc}; log:\n{self.log_tail()}"
            self.check_sanitizers()
            return rc
        os.kill(self.proc.pid, signal.SIGTERM)
        rc = self.wait_exit(timeout)
        assert rc == expect_rc, f"submitd exit code {rc}, expected {expect_rc}; log:\n{self.log_tail()}"
        self.check_sanitizers()
        return rc

    def kill9(self):
        assert self.running()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        self._close_log()

    def check_sanitizers(self):
        if VALGRIND:
            bad = [p for p in self.root.glob("valgrind.*.log") if p.stat().st_size > 0]
            assert not bad, "valgrind reports:\n" + "\n".join(p.read_text() for p in bad)
            return
        if not SAN:
            return
        bad = [l for l in self.log_text().splitlines() if any(p in l for p in SAN_PATTERNS)]
        assert not bad, "sanitizer reports in the daemon log:\n" + self.log_text()

    def assert_alive(self):
        assert self.running(), "submitd died; log:\n" + self.log_tail()

    # ---- log
    def wait_log(self, pattern, since=0, timeout=10):
        rx = re.compile(pattern)

        def found():
            for line in self.log_text(since).splitlines():
                if rx.search(line):
                    return line
            return None
        try:
            return wait_until(found, timeout * SLOW, what=f"log line /{pattern}/")
        except AssertionError:
            raise AssertionError(f"no log line matching /{pattern}/ ; log:\n" + self.log_text(since))

    def log_lines(self, pattern, since=0):
        rx = re.compile(pattern)
        return [l for l in self.log_text(since).splitlines() if rx.search(l)]

    # ---- Maildir / spool
    def mail_files(self, maildir=None):
        new = Path(maildir or self.maildir) / "new"
        if not new.is_dir():
            return []
        return sorted(p for p in new.iterdir() if p.is_file())

    def mails(self, rcpt=None, maildir=None):
        out = []
        for p in self.mail_files(maildir):
            try:
                data = p.read_bytes()
            except FileNotFoundError:
                continue
            if rcpt is None or delivered_to(data) == rcpt:
                out.append(data)
        return out

    def wait_mail(self, n, rcpt=None, timeout=10, maildir=None):
        """Waits until at least n files (for rcpt, if given) are in new/;
        returns their contents."""
        try:
            wait_until(lambda: len(self.mails(rcpt, maildir)) >= n, timeout * SLOW,
                       what=f"{n} Maildir file(s) for {rcpt}")
        except AssertionError:
            raise AssertionError(f"expected {n} Maildir file(s) for {rcpt}, have "
                                 f"{len(self.mails(rcpt, maildir))}; log:\n{self.log_tail()}")
        return self.mails(rcpt, maildir)

    def spool_files(self, sub):
        """Names in spool/SUB. In tmp/, the files of delivered messages kept
        for reuse (free.PID.N, see docs/spool-format.md) are left out: they
        hold no message; only unfinished messages count."""
        d = self.spool / sub
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if not (sub == "tmp" and p.name.startswith("free.")))

    # ---- clients
    def client(self, tls_port=False, **kw):
        return SMTPClient(self.tls_port if tls_port else self.port, certs=self.certs, **kw)

    def login(self, user, password, implicit=False, helo="client.test"):
        """A client that is past greeting, (STARTTLS,) EHLO and AUTH PLAIN."""
        c = self.client(tls_port=implicit, implicit_tls=implicit)
        c.expect_greeting()
        c.ehlo(helo)
        if not implicit:
            c.starttls()
            c.ehlo(helo)
        c.auth_plain(user, password)
        return c


def relocate_for_user(d, base, u):
    """For a daemon that drops to user u (pwd entry): moves what it touches
    after the drop (spool, Maildir, accounts copy) under base, a 0755
    directory (pytest's own temp root is 0700), owned so that u can use
    it, and rewrites the config."""
    import shutil
    d.spool = base / "spool"
    d.maildir = base / "mail"
    d.transport_path = str(d.maildir)
    for p in (d.spool, d.maildir):
        p.mkdir(mode=0o700)
        os.chown(p, u.pw_uid, u.pw_gid)
    acc = base / "accounts"
    shutil.copy(d.accounts, acc)
    os.chown(acc, 0, u.pw_gid)
    os.chmod(acc, 0o640)
    d.accounts = acc
    d.write_config()


class Factory:
    def __init__(self, base, certs, accounts):
        self.base = base
        self.certs = certs
        self.accounts = accounts
        self.daemons = []

    def __call__(self, start=True, **kw):
        root = self.base / f"d{len(self.daemons)}"
        d = Daemon(root, self.certs, self.accounts, **kw)
        self.daemons.append(d)
        if start:
            d.start()
        return d

    def finish(self):
        errors = []
        for d in self.daemons:
            try:
                if d.running():
                    d.stop()
                else:
                    d.check_sanitizers()
            except AssertionError as e:
                errors.append(str(e))
            finally:
                if d.running():
                    d._kill()
        if errors:
            raise AssertionError("\n\n".join(errors))


# --------------------------------------------------------------------------
# Raw SMTP client


class ConnectionClosed(Exception):
    pass


class Reply:
    def __init__(self, lines):
        self.lines = lines  # str lines without CRLF
        self.code = int(lines[-1][:3])
        self.texts = [l[4:] for l in lines]
        self.text = self.texts[-1]
        m = re.match(r"^(\d\.\d{1,3}\.\d{1,3})(?: |$)", self.text)
        self.enh = m.group(1) if m else None

    def __repr__(self):
        return "Reply(%r)" % ("\\r\\n".join(self.lines),)


def assert_reply(r, code, enh=None):
    assert isinstance(r, Reply), f"expected a reply, got {r!r}"
    assert r.code == code, f"expected {code} {enh or ''}, got {r!r}"
    if enh is not None:
        assert r.enh == enh, f"expected {code} {enh}, got {r!r}"
    return r


def tls_context(certs=None, verify=True):
    if verify and certs is not None:
        ctx = ssl.create_default_context(cafile=str(certs["ecdsa_crt"]))
        if "rsa_crt" in certs:
            ctx.load_verify_locations(cafile=str(certs["rsa_crt"]))
        ctx.check_hostname = True
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class SMTPClient:
    def __init__(self, port, host="127.0.0.1", implicit_tls=False, certs=None, timeout=10,
                 family=None, source=None, verify=True):
        self.certs = certs
        self.verify = verify
        self.timeout = timeout * SLOW
        if family is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        if source:
            s.bind((source, 0))
        s.connect((host, port))
        self.sock = s
        self.buf = b""
        self.tls = False
        if implicit_tls:
            self.sock = tls_context(certs, verify).wrap_socket(s, server_hostname="localhost")
            self.tls = True

    # ---- raw io
    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def _fill(self):
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError, BrokenPipeError):
            chunk = b""
        if not chunk:
            raise ConnectionClosed("connection closed by server (buffer %r)" % self.buf[:200])
        self.buf += chunk

    def readline(self):
        while b"\r\n" not in self.buf:
            if len(self.buf) > 100000:
                raise AssertionError("reply line too long: %r" % self.buf[:200])
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        lines = []
        while True:
            raw = self.readline()
            line = raw.decode("utf-8", "replace")
            assert re.match(r"^\d{3}[ -]", line) or re.match(r"^\d{3}$", line), \
                f"malformed reply line {raw!r}"
            lines.append(line)
            if len(line) == 3 or line[3] == " ":
                return Reply(lines)

    def cmd(self, line):
        self.send(line + "\r\n" if isinstance(line, str) else line + b"\r\n")
        return self.reply()

    def check(self, line, code, enh=None):
        return assert_reply(self.cmd(line), code, enh)

    def expect(self, code, enh=None):
        return assert_reply(self.reply(), code, enh)

    def pending(self, wait=0.3):
        """Bytes the server sent that were not read yet (waits a little)."""
        self.sock.settimeout(wait)
        try:
            while True:
                try:
                    chunk = self.sock.recv(65536)
                except (socket.timeout, TimeoutError, ssl.SSLWantReadError):
                    break
                except (ConnectionResetError, ssl.SSLError, OSError):
                    break
                if not chunk:
                    break
                self.buf += chunk
        finally:
            self.sock.settimeout(self.timeout)
        return self.buf

    def is_closed(self, timeout=5):
        """True when the server closes the connection within timeout
        (any unread data is discarded)."""
        deadline = time.monotonic() + timeout * SLOW
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                break
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
                return True
            if not chunk:
                return True
            self.buf += chunk
        self.sock.settimeout(self.timeout)
        return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    # ---- SMTP steps
    def expect_greeting(self):
        r = self.reply()
        assert r.code == 220 and r.text.startswith(HOSTNAME + " ESMTP"), f"greeting {r!r}"
        return r

    def ehlo(self, name="client.test"):
        r = self.cmd(f"EHLO {name}")
        assert r.code == 250, f"EHLO: {r!r}"
        assert r.texts[0].startswith(f"{HOSTNAME} Hello"), f"EHLO first line: {r!r}"
        self.exts = [t.upper() for t in r.texts[1:]]
        return r

    def starttls(self):
        r = self.cmd("STARTTLS")
        assert_reply(r, 220, "2.0.0")
        assert self.buf == b"", f"data after 220 to STARTTLS: {self.buf!r}"
        self.sock = tls_context(self.certs, self.verify).wrap_socket(self.sock,
                                                                    server_hostname="localhost")
        self.tls = True
        return r

    def auth_plain(self, user, password, expect=235, enh="2.7.0"):
        tok = b64(f"\0{user}\0{password}")
        return assert_reply(self.cmd(f"AUTH PLAIN {tok}"), expect, enh)

    def auth_login(self, user, password, expect=235, enh="2.7.0"):
        r = self.cmd("AUTH LOGIN")
        assert_reply(r, 334)
        assert base64.b64decode(r.text).lower().startswith(b"username"), r
        r = self.cmd(b64(user))
        assert_reply(r, 334)
        assert base64.b64decode(r.text).lower().startswith(b"password"), r
        return assert_reply(self.cmd(b64(password)), expect, enh)

    def send_mail(self, frm, rcpts, msg, mail_params=""):
        """MAIL/RCPT/DATA with the message (CRLF bytes, not yet stuffed);
        returns the queue id."""
        self.check(f"MAIL FROM:<{frm}>{mail_params}", 250, "2.1.0")
        for r in rcpts:
            self.check(f"RCPT TO:<{r}>", 250, "2.1.5")
        self.check("DATA", 354)
        self.send(dot_stuff(msg) + b".\r\n")
        return queued_id(self.reply())


def queued_id(r):
    assert r.code == 250, f"message not accepted: {r!r}"
    m = QUEUED_RE.match(r.text)
    assert m, f"250 reply without a queue id: {r!r}"
    return m.group(1)


def b64(s):
    if isinstance(s, str):
        s = s.encode("utf-8")
    return base64.b64encode(s).decode("ascii")


# --------------------------------------------------------------------------
# Messages


_msg_counter = [0]


def make_msg(frm, to, subject="test", body=None, extra_headers=()):
    """A message with CRLF line endings, Date: and Message-ID: present (so
    the server adds none) and a line starting with a dot."""
    _msg_counter[0] += 1
    if body is None:
        body = [f"Hello, this is message {subject}.", ".a line starting with a dot",
                "..two dots", "", "bye", "end"]
    hdr = [f"From: <{frm}>", f"To: <{to}>", f"Subject: {subject}",
           "Date: Mon, 01 Jan 2024 00:00:00 +0000",
           f"Message-ID: <{time.time_ns()}.{os.getpid()}.{_msg_counter[0]}@client.test>"]
    hdr += list(extra_headers)
    return ("\r\n".join(hdr) + "\r\n\r\n" + "\r\n".join(body) + "\r\n").encode("utf-8")


def dot_stuff(msg):
    """Dot-stuffs a CRLF message for DATA (does not add the terminator)."""
    lines = msg.split(b"\r\n")
    out = [b"." + l if l.startswith(b".") else l for l in lines]
    data = b"\r\n".join(out)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def delivered_to(data):
    m = re.search(rb"^Delivered-To: <([^>]*)>$", data, re.M)
    return m.group(1).decode("utf-8", "replace") if m else None


def split_delivered(data):
    """(return_path_line, delivered_to_line, received_header, rest) of a
    delivered Maildir file."""
    def line_at(p):
        e = data.index(b"\n", p)
        return data[p:e], e + 1
    rp, pos = line_at(0)
    dt, pos = line_at(pos)
    rcv, pos = line_at(pos)
    assert rcv.startswith(b"Received: "), f"third line is not Received: {data[:500]!r}"
    while data[pos:pos + 1] in (b" ", b"\t"):
        more, pos = line_at(pos)
        rcv += b"\n" + more
    return rp, dt, rcv, data[pos:]


def assert_delivered(data, frm, rcpt, msg, qid=None, esmtpsa=True, tls13=True,
                     secrets=(), helo="client.test", proto=None):
    """Byte-exact check of one Maildir file: Return-Path, Delivered-To,
    Received (regex), then msg with CRLF -> LF. proto: the exact `with`
    protocol (RFC 3848: "ESMTP", "ESMTPS", ...) instead of esmtpsa; the TLS
    description follows it only for the TLS ones (ESMTPS, ESMTPSA)."""
    rp, dt, rcv, rest = split_delivered(data)
    assert rp == f"Return-Path: <{frm}>".encode(), rp
    assert dt == f"Delivered-To: <{rcpt}>".encode(), dt
    assert b"\r" not in rcv
    unfolded = re.sub(rb"\s+", b" ", rcv).decode("utf-8", "replace")
    with_ = re.escape(proto) if proto else "ESMTPSA" if esmtpsa else r"E?SMTPS?A?"
    tlsv = r"TLSv1\.3 " if tls13 else ""
    tls_part = "" if proto in ("ESMTP", "ESMTPA") else rf" \({tlsv}[^)]*\)"
    pat = (rf"^Received: from {re.escape(helo)} \(\[127\.0\.0\.1\]\) by mx\.test \(submitd\) "
           rf"with {with_}{tls_part} id ")
    assert re.match(pat, unfolded), f"Received header {unfolded!r} does not match {pat!r}"
    assert "by mx.test (submitd) with ESMTPSA (TLSv1.3" in unfolded or not (esmtpsa and tls13) or proto, unfolded
    if qid is not None:
        assert re.search(rf" id {qid}(?: for <[^>]+>)?;", unfolded), f"id {qid} not in {unfolded!r}"
    assert re.search(r"; \S.*\d{4}", unfolded), f"no date in {unfolded!r}"
    expected = msg.replace(b"\r\n", b"\n")
    assert rest == expected, f"delivered body differs:\n got {rest!r}\nwant {expected!r}"
    for s in secrets:
        assert s.encode() not in data, "secret found in delivered file"
        assert b64(s).encode() not in data


# --------------------------------------------------------------------------
# Loopback DNS server and SMTP receivers (relay tests; usable by any test)


class DnsServer:
    """dnsmasq on 127.0.0.1:<free port> serving only what `args` give
    (e.g. --mx-host=, --host-record=, --txt-record=); with `local`, it is
    authoritative for those domains (NXDOMAIN / NODATA instead of REFUSED
    for names it does not know). Stopped by PID."""

    def __init__(self, root, args=(), local=()):
        import dns.resolver  # python3-dnspython
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cmd = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--listen-address=127.0.0.1",
               "--bind-interfaces", f"--port={self.port}", f"--pid-file={self.root / 'dnsmasq.pid'}",
               "--user=root"]
        cmd += [f"--local=/{d}/" for d in local]
        cmd += list(args)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.resolver = dns.resolver.Resolver(configure=False)
        self.resolver.nameservers = ["127.0.0.1"]
        self.resolver.port = self.port
        self.resolver.lifetime = 5
        import dns.message
        import dns.query

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("dnsmasq exited: " + self.proc.stderr.read().decode("utf-8", "replace"))
            try:
                dns.query.udp(dns.message.make_query("probe.invalid", "A"), "127.0.0.1", port=self.port,
                              timeout=0.5)
                return True
            except Exception:
                return False
        try:
            wait_until(ready, 10, what="dnsmasq answering")
        except BaseException:
            self.stop()
            raise

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        if self.proc.stderr:
            self.proc.stderr.close()


class Receiver:
    """An SMTP server (python3-aiosmtpd) on host:port in a thread, the far
    end of the relay transports. Records every message handed over
    (envelope, ESMTP options, the exact un-dot-stuffed bytes, TLS, AUTH
    login), counts connections, keeps the raw chunks it read (to see
    pipelining), and answers as scripted:
      tls: "starttls" | "implicit" | None (needs certs)
      auth: {login: password} -> AUTH offered (after TLS by default);
        auth_exclude: mechanisms not offered (e.g. ["PLAIN"])
      rcpt_replies: {address: "550 5.1.1 ..."}
      data_replies: replies for successive DATA (then 250)
      pipelining, dsn: announce PIPELINING / DSN in the EHLO reply
      chunking: announce CHUNKING and take BDAT (RFC 3030; aiosmtpd has
        no BDAT of its own); bdat_commands records each BDAT argument."""

    def __init__(self, host="127.0.0.1", port=None, *, certs=None, tls=None, auth=None,
                 auth_require_tls=True, auth_exclude=(), rcpt_replies=None, data_replies=(), pipelining=True,
                 dsn=True, chunking=False):
        import ssl as _ssl
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import SMTP, AuthResult
        self.host = host
        self.port = port or free_port(host=host)
        self.messages = []
        self.auth_attempts = []
        self.connections = 0
        self.chunks = []
        self.rcpt_replies = dict(rcpt_replies or {})
        self.data_replies = list(data_replies)
        self.data_calls = 0
        self.pipelining = pipelining
        self.dsn = dsn
        self.chunking = chunking
        self.bdat_commands = []
        rx = self

        class Handler:
            async def handle_EHLO(self, server, session, envelope, hostname, responses):
                session.host_name = hostname
                extra = (["250-PIPELINING"] if rx.pipelining else []) + (["250-DSN"] if rx.dsn else []) + \
                    (["250-CHUNKING"] if rx.chunking else [])
                return responses[:-1] + extra + responses[-1:]

            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                if address in rx.rcpt_replies:
                    return rx.rcpt_replies[address]
                envelope.rcpt_tos.append(address)
                envelope.rcpt_options.extend(rcpt_options)
                return "250 2.1.5 OK"

            async def handle_DATA(self, server, session, envelope):
                rx.data_calls += 1
                reply = rx.data_replies.pop(0) if rx.data_replies else "250 2.0.0 accepted"
                rx.messages.append({
                    "mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
                    "mail_options": list(envelope.mail_options), "rcpt_options": list(envelope.rcpt_options),
                    "data": envelope.original_content, "tls": session.ssl is not None or tls == "implicit",
                    "auth": getattr(session, "relay_login", None),
                    "helo": session.host_name, "reply": reply,
                })
                return reply

        def authenticator(server, session, envelope, mechanism, data):
            login, password = data.login.decode(), data.password.decode()
            rx.auth_attempts.append((mechanism, login))
            ok = (auth or {}).get(login) == password
            if ok:
                session.relay_login = login
            return AuthResult(success=ok, handled=False)

        class RecvSMTP(SMTP):
            def connection_made(self, transport):
                if self._original_transport is None:
                    rx.connections += 1
                super().connection_made(transport)

            def data_received(self, data):
                rx.chunks.append(data)
                super().data_received(data)

            def _getparams(self, params):
                # accept the DSN parameters (RFC 3461) aiosmtpd does not know
                got = super()._getparams(params)
                if got is not None:
                    for k in ("RET", "ENVID", "NOTIFY", "ORCPT"):
                        got.pop(k, None)
                return got

            async def smtp_BDAT(self, arg):
                # RFC 3030: the chunk's bytes follow the command line at once
                m = re.fullmatch(r"(\d{1,12})( +LAST)?", arg or "", re.I)
                if not rx.chunking or not m:
                    await self.push("501 5.5.4 Syntax: BDAT size [LAST]")
                    self.transport.close()  # the chunk's length is unknown: the stream is lost
                    return
                size = int(m.group(1))
                data = await self._reader.readexactly(size) if size else b""
                rx.bdat_commands.append(arg)
                if not self.envelope.rcpt_tos:
                    await self.push("503 5.5.1 Error: need RCPT command")
                    return
                self.envelope.bdat = getattr(self.envelope, "bdat", b"") + data
                if not m.group(2):
                    await self.push(f"250 2.0.0 {size} octets received")
                    return
                self.envelope.original_content = self.envelope.content = self.envelope.bdat
                status = await self._call_handler_hook("DATA")
                self._set_post_data_state()
                await self.push(status)

        class RecvController(Controller):
            def factory(self):
                return RecvSMTP(self.handler, **self.SMTP_kwargs)

        kw = {}
        if tls:
            ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(certs["ecdsa_crt"]), str(certs["ecdsa_key"]))
            if tls == "starttls":
                kw["tls_context"] = ctx
            else:
                kw["ssl_context"] = ctx
        if auth is not None:
            kw["authenticator"] = authenticator
            # aiosmtpd 1.4 counts only STARTTLS as TLS: on an implicit TLS port it would never offer AUTH
            kw["auth_require_tls"] = auth_require_tls and tls != "implicit"
            kw["auth_exclude_mechanism"] = list(auth_exclude)
        self.controller = RecvController(Handler(), hostname=host, port=self.port, server_hostname="rx.test",
                                         **kw)
        self.controller.start()
        self.connections = 0  # not the controller's own readiness probe
        self.chunks = []

    def stop(self):
        self.controller.stop()

    def wait_messages(self, n, timeout=15):
        wait_until(lambda: len(self.accepted()) >= n, timeout * SLOW, what=f"{n} message(s) at {self.host}")
        return self.accepted()

    def accepted(self):
        return [m for m in self.messages if m["reply"].startswith("250")]

    def pipelined(self):
        """True when one read held MAIL FROM, RCPT TO and DATA together."""
        return any(b"MAIL FROM:" in c and b"RCPT TO:" in c and b"DATA\r\n" in c for c in self.chunks)


def submit(d, frm, rcpts, subject="test", mail_params="", rcpt_params=None):
    """Logs in as ALICE on d and submits one make_msg message from frm to
    rcpts (rcpt_params: {rcpt: " NOTIFY=..."}). Returns (queue id, message)."""
    msg = make_msg(frm if frm else ALICE, rcpts[0], subject=subject)
    with d.login(ALICE, pw(ALICE)) as c:
        c.check(f"MAIL FROM:<{frm}>{mail_params}", 250, "2.1.0")
        for r in rcpts:
            c.check(f"RCPT TO:<{r}>{(rcpt_params or {}).get(r, '')}", 250, "2.1.5")
        c.check("DATA", 354)
        c.send(dot_stuff(msg) + b".\r\n")
        qid = queued_id(c.reply())
    return qid, msg


def received_parts(data):
    """Splits relayed bytes (CRLF) into (prepend header lines, the rest):
    the prepend block is Received: (folded) and, when signing, DKIM-Signature:."""
    pos = 0
    while True:
        m = re.match(rb"(Received|DKIM-Signature): [^\r]*\r\n(?:[ \t][^\r]*\r\n)*", data[pos:])
        if not m:
            return data[:pos], data[pos:]
        pos += m.end()


# ---- the benchmark's tools (bench/loadgen, bench/sink), built by `make integration`

LOADGEN = BUILD / "bench" / "loadgen"
SINK = BUILD / "bench" / "sink"


def loadgen(args, timeout=60):
    p = subprocess.run([str(LOADGEN)] + args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout * SLOW)
    lines = p.stdout.strip().splitlines()
    assert lines, f"loadgen printed nothing (rc {p.returncode}):\n{p.stderr}"
    return p.returncode, json.loads(lines[-1]), p.stderr


@contextlib.contextmanager
def running_sink(tmp_path):
    """bench/sink on a free port: yields (port, stats file); stopped by PID
    (SIGTERM, exit status 0) on the way out."""
    port = free_port()
    stats = tmp_path / "sink.stats"
    sink = subprocess.Popen([str(SINK), "-l", f"127.0.0.1:{port}", "-s", str(stats)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: stats.exists(), 10 * SLOW, what="sink stats file")
        yield port, stats
    finally:
        sink.terminate()
        assert sink.wait(10) == 0
