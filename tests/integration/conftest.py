"""pytest fixtures for the submitd integration suite: the session-wide test
certificates (scripts/mkcert.sh) and accounts file (build/submitctl), a
per-test daemon factory and a per-module shared daemon. Every daemon a
fixture starts is stopped by PID in the finalizer (exit code 0 asserted,
sanitizer reports checked when SUBMITD_SAN=1)."""

import os
import subprocess

import pytest

from harness import MKCERT, SUSPENDED, USERS, Factory, add_user, require_build, submitctl


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    """ECDSA and RSA self-signed certificates for localhost, made once."""
    d = tmp_path_factory.mktemp("certs")
    assert MKCERT.exists(), f"{MKCERT} is missing"
    for kind in ("ecdsa", "rsa"):
        p = subprocess.run(["sh", str(MKCERT), str(d), "localhost", kind], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, f"mkcert.sh {kind} failed:\n{p.stdout}\n{p.stderr}"
    c = {
        "dir": d,
        "ecdsa_crt": d / "localhost-ecdsa.crt", "ecdsa_key": d / "localhost-ecdsa.key",
        "rsa_crt": d / "localhost-rsa.crt", "rsa_key": d / "localhost-rsa.key",
    }
    for k, v in c.items():
        if k != "dir":
            assert v.exists(), f"mkcert.sh did not make {v}"
    return c


@pytest.fixture(scope="session")
def accounts_file(tmp_path_factory):
    """The accounts file with USERS, made with submitctl (chmod 600)."""
    require_build()
    d = tmp_path_factory.mktemp("accounts")
    path = d / "accounts"
    for login, (pw, senders, extra) in USERS.items():
        add_user(path, login, pw, senders, extra)
    for login in SUSPENDED:
        submitctl(["-a", str(path), "user", "suspend", login])
    os.chmod(path, 0o600)
    text = path.read_text()
    for login, (pw, _, _) in USERS.items():
        assert login in text
        assert pw not in text, "plaintext password in the accounts file"
    return path


@pytest.fixture
def make_daemon(tmp_path, certs, accounts_file):
    """make_daemon(**Daemon kwargs) -> a started Daemon, stopped at teardown."""
    f = Factory(tmp_path, certs, accounts_file)
    yield f
    f.finish()


@pytest.fixture(scope="module")
def server(tmp_path_factory, certs, accounts_file):
    """One daemon with the default test config shared by a module's tests."""
    f = Factory(tmp_path_factory.mktemp("shared"), certs, accounts_file)
    d = f()
    yield d
    f.finish()


@pytest.fixture
def srv(server):
    """The shared daemon, checked alive before and after the test."""
    server.assert_alive()
    yield server
    server.assert_alive()


def _started(cls):
    """A fixture body: start(*a, **kw) makes a cls, all stopped at teardown."""
    started = []

    def start(*a, **kw):
        obj = cls(*a, **kw)
        started.append(obj)
        return obj
    return started, start


@pytest.fixture
def receivers():
    """receivers(**Receiver kwargs) -> a running aiosmtpd Receiver (harness.py), stopped at teardown."""
    from harness import Receiver
    started, start = _started(Receiver)
    yield start
    for r in started:
        r.stop()


@pytest.fixture
def dnsserver():
    """dnsserver(root, args=..., local=...) -> a running dnsmasq DnsServer (harness.py), stopped at teardown."""
    from harness import DnsServer
    started, start = _started(DnsServer)
    yield start
    for s in started:
        s.stop()
