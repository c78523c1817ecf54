"""A private Postfix instance for tests (Debian's postfix package): its own
config_directory, queue_directory and data_directory in a fresh directory
under /tmp, smtpd services on free loopback ports defined by the test,
Cyrus SASL (sasldb, PLAIN/LOGIN) for submission logins, a log file of its
own (maillog_file), and every message discarded (nothing leaves the
machine). The master runs in the foreground (master -d) as a child of the
test and is stopped by its PID; the directory is removed afterwards.

Needs root (the master starts as root and runs its daemons as the postfix
user) and the packages postfix, sasl2-bin and libsasl2-modules. It never
touches /etc/postfix or a system-wide Postfix (none needs to run)."""

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

MASTER = Path("/usr/lib/postfix/sbin/master")

# The daemons a minimal instance needs besides the smtpd services.
_MASTER_BASE = """\
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""

# postfix-files: the queue directories, their owners and modes.
_QUEUE_DIRS = [("active", 0o700, None), ("bounce", 0o700, None), ("corrupt", 0o700, None),
               ("defer", 0o700, None), ("deferred", 0o700, None), ("flush", 0o700, None), ("hold", 0o700, None),
               ("incoming", 0o700, None), ("private", 0o700, None), ("maildrop", 0o730, "postdrop"),
               ("public", 0o710, "postdrop"), ("pid", 0o755, "root"), ("saved", 0o700, None),
               ("trace", 0o700, None)]


def unavailable():
    """Why a private Postfix cannot run here, or None."""
    if os.geteuid() != 0:
        return "a private Postfix needs root (its master starts as root and drops to the postfix user)"
    if not MASTER.exists() or not shutil.which("saslpasswd2"):
        return "postfix / sasl2-bin not installed (scripts/deps.sh test installs them)"
    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError:
        return "the postfix user or postdrop group is missing"
    return None


class PrivatePostfix:
    """services: {name: (port, ["-o", "key=value", ...])} smtpd services.
    users: {"user@domain": password} for SASL."""

    def __init__(self, crt, key, services, users, main_extra=""):
        self.dir = Path(tempfile.mkdtemp(prefix="submitd-test-postfix-", dir="/tmp"))
        os.chmod(self.dir, 0o755)
        self.conf = self.dir / "conf"
        self.queue = self.dir / "queue"
        self.log = self.dir / "maillog"
        self.services = services
        self.proc = None
        self.conf.mkdir()
        (self.conf / "sasl").mkdir()
        shutil.copy(crt, self.conf / "cert.pem")
        shutil.copy(key, self.conf / "key.pem")
        os.chmod(self.conf / "key.pem", 0o600)
        d = self.dir
        (self.conf / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.test
mydomain = postfix.test
myorigin = postfix.test
mydestination = postfix.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtpd_banner = $myhostname ESMTP Postfix
maillog_file = {self.log}
maillog_file_prefixes = {d}
alias_maps =
alias_database =
local_recipient_maps =
default_transport = discard
local_transport = discard
relay_transport = discard
smtpd_tls_cert_file = {self.conf}/cert.pem
smtpd_tls_key_file = {self.conf}/key.pem
smtpd_tls_security_level = may
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
smtpd_sasl_auth_enable = no
{main_extra}
""")
        lines = []
        for name, (port, opts) in services.items():
            lines.append(f"127.0.0.1:{port} inet n - n - - smtpd")
            lines.append(f"  -o syslog_name=postfix/{name}")
            lines += [f"  {o}" for o in opts]
        (self.conf / "master.cf").write_text("\n".join(lines) + "\n" + _MASTER_BASE)
        # Debian's Cyrus reads $config_directory/sasl/smtpd.conf
        sasldb = self.conf / "sasl" / "sasldb2"
        (self.conf / "sasl" / "smtpd.conf").write_text(
            f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nsasldb_path: {sasldb}\nmech_list: PLAIN LOGIN\n")
        for login, password in users.items():
            user, _, realm = login.partition("@")
            p = subprocess.run(["saslpasswd2", "-p", "-c", "-f", str(sasldb), "-u", realm, user],
                               input=password.encode() + b"\n", capture_output=True, timeout=30)
            assert p.returncode == 0, f"saslpasswd2: {p.stderr!r}"
        os.chown(sasldb, 0, grp.getgrnam("postfix").gr_gid)
        os.chmod(sasldb, 0o640)
        self._make_dirs()

    def _make_dirs(self):
        pw = pwd.getpwnam("postfix")
        self.queue.mkdir()
        for name, mode, group in _QUEUE_DIRS:
            p = self.queue / name
            p.mkdir()
            if group == "root":
                os.chown(p, 0, 0)
            else:
                os.chown(p, pw.pw_uid, grp.getgrnam(group).gr_gid if group else -1)
            os.chmod(p, mode)
        (self.dir / "data").mkdir()
        os.chown(self.dir / "data", pw.pw_uid, -1)
        os.chmod(self.dir / "data", 0o700)

    def start(self, timeout=15):
        out = open(self.dir / "master.out", "wb")
        self.proc = subprocess.Popen([str(MASTER), "-c", str(self.conf), "-d"], stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT, cwd=str(self.dir))
        out.close()
        deadline = time.monotonic() + timeout
        pending = [port for port, _ in self.services.values()]
        while pending:
            if self.proc.poll() is not None:
                raise AssertionError(f"postfix master exited with {self.proc.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("postfix did not listen in time:\n" + self.log_text())
            try:
                with socket.create_connection(("127.0.0.1", pending[0]), timeout=1) as s:
                    s.recv(100)  # the greeting: an smtpd runs
                pending.pop(0)
            except OSError:
                time.sleep(0.05)
        return self

    def log_text(self):
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no maillog)"

    def daemons(self):
        """PIDs of processes of this instance (the master passes
        MAIL_CONFIG=<our config directory> to every daemon it starts)."""
        mark = f"MAIL_CONFIG={self.conf}".encode()
        pids = []
        for e in os.listdir("/proc"):
            if not e.isdigit():
                continue
            try:
                with open(f"/proc/{e}/environ", "rb") as f:
                    if mark in f.read().split(b"\0"):
                        pids.append(int(e))
            except OSError:
                continue
        return pids

    def stop(self):
        """SIGTERM to the master's PID (it stops its daemons), waits until
        none of them is left, then removes the directory. Returns the PIDs
        still alive after 10 s (none expected)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        deadline = time.monotonic() + 10
        left = self.daemons()
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = self.daemons()
        shutil.rmtree(self.dir, ignore_errors=True)
        return left
