"""Small SMTP servers with chosen faults, for the submitcheck tests
(test_submitcheck.py): a threaded line-based server on a free loopback port
that can speak STARTTLS or implicit TLS with any protocol range, offer and
accept AUTH before TLS, answer AUTH with a chosen reply, or keep plaintext
pipelined after STARTTLS and run it inside TLS (the STARTTLS command
injection bug). Also a port that accepts and never answers, and one whose
accept queue is full (connection attempts time out, like a filtered port).
Everything runs in the test process and is stopped by stop()."""

import socket
import ssl
import threading
import warnings

from harness import free_port


def server_tls_context(crt, key, min_version=None, max_version=None, ciphers=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(crt), str(key))
    if ciphers:
        ctx.set_ciphers(ciphers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 on purpose
        if min_version is not None:
            ctx.minimum_version = min_version
        if max_version is not None:
            ctx.maximum_version = max_version
    return ctx


class FakeSMTP:
    """mode: "starttls" or "implicit". auth_reply: the final reply to a
    complete AUTH exchange (235 unless set). auth_before_tls: True offers
    and accepts AUTH on the plaintext connection, "offer" announces it there
    but refuses it. inject: keep bytes pipelined after STARTTLS and execute
    them after the handshake (vulnerable). strict: answer STARTTLS with
    something pipelined after it by 554 and hang up (Postfix 3.9's
    smtpd_forbid_unauth_pipelining)."""

    def __init__(self, tls_ctx, mode="starttls", auth_reply="235 2.7.0 Authentication successful",
                 auth_before_tls=False, inject=False, strict=False, hostname="fake.test"):
        self.ctx = tls_ctx
        self.mode = mode
        self.auth_reply = auth_reply
        self.auth_before_tls = auth_before_tls
        self.inject = inject
        self.strict = strict
        self.hostname = hostname
        self.port = None
        self.lsock = None
        self.conns = []
        self.threads = []
        self.lock = threading.Lock()
        self.stopping = False
        self.log = []  # commands received, in order (secrets included: tests only)

    def start(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        self.lsock = s
        self.port = s.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self.threads.append(t)
        return self

    def stop(self):
        self.stopping = True
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)  # wakes a session thread blocked in recv
            except OSError:
                pass
            try:
                c.close()
            except OSError:
                pass
        with self.lock:
            threads = list(self.threads)
        for t in threads:
            t.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()

    def _accept_loop(self):
        while not self.stopping:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            c.settimeout(10)
            with self.lock:
                self.conns.append(c)
            t = threading.Thread(target=self._session_safe, args=(c,), daemon=True)
            t.start()
            with self.lock:
                self.threads.append(t)

    def _session_safe(self, sock):
        try:
            _Session(self, sock).run()
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass


class _Session:
    def __init__(self, srv, sock):
        self.srv = srv
        self.sock = sock
        self.buf = b""
        self.tls = False

    def send(self, *lines):
        self.sock.sendall(b"".join(l.encode() + b"\r\n" for l in lines))

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ValueError("closed")
            self.buf += chunk
        l, self.buf = self.buf.split(b"\n", 1)
        return l.rstrip(b"\r").decode("utf-8", "replace")

    def start_tls(self):
        self.sock = self.srv.ctx.wrap_socket(self.sock, server_side=True)
        with self.srv.lock:
            self.srv.conns.append(self.sock)
        self.tls = True

    def auth(self, args):
        parts = args.split(" ", 1)
        mech = parts[0].upper()
        if not self.tls and self.srv.auth_before_tls is not True:
            return self.send("530 5.7.0 Must issue a STARTTLS command first")
        if mech not in ("PLAIN", "LOGIN"):
            return self.send("504 5.5.4 Unrecognized authentication type")
        steps = 1 if mech == "PLAIN" else 2
        if len(parts) > 1:
            steps -= 1
        for i in range(steps):
            self.send("334 " + ("" if mech == "PLAIN" else ("VXNlcm5hbWU6" if i == 0 else "UGFzc3dvcmQ6")))
            resp = self.line()
            self.srv.log.append(resp)
            if resp == "*":
                return self.send("501 5.7.0 Authentication cancelled")
        self.send(self.srv.auth_reply)

    def run(self):
        if self.srv.mode == "implicit":
            self.start_tls()
        self.send(f"220 {self.srv.hostname} ESMTP fake")
        while True:
            l = self.line()
            self.srv.log.append(l)
            verb, _, args = l.partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "HELO"):
                ext = ["PIPELINING", "SIZE 1000000", "8BITMIME"]
                if self.srv.mode == "starttls" and not self.tls:
                    ext.append("STARTTLS")
                if self.tls or self.srv.auth_before_tls:
                    ext.append("AUTH PLAIN LOGIN")
                lines = [self.srv.hostname] + ext
                self.send(*[("250-" if i < len(lines) - 1 else "250 ") + x for i, x in enumerate(lines)])
            elif verb == "STARTTLS" and not self.tls and self.srv.mode == "starttls":
                if self.srv.strict and self.buf:
                    self.send("554 5.5.0 Error: SMTP protocol synchronization")
                    return
                self.send("220 2.0.0 Ready to start TLS")
                kept = self.buf
                self.buf = b""
                self.start_tls()
                if self.srv.inject:
                    self.buf = kept  # the bug: plaintext read before TLS is run as if it came inside TLS
            elif verb == "AUTH":
                self.auth(args)
            elif verb in ("MAIL", "RCPT", "RSET", "NOOP"):
                self.send("250 2.0.0 Ok")
            elif verb == "DATA":
                self.send("354 End data with <CR><LF>.<CR><LF>")
                while self.line() != ".":
                    pass
                self.send("250 2.0.0 Ok: queued as FAKE0123456789")
            elif verb == "QUIT":
                self.send("221 2.0.0 Bye")
                return
            else:
                self.send("500 5.5.2 Error: command not recognized")


class SilentPort:
    """A port whose kernel completes the TCP handshake but where nobody ever
    speaks (the greeting never comes)."""

    def __enter__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        return self

    def __exit__(self, *a):
        self.sock.close()


class FilteredPort:
    """A port whose accept queue is full: new connection attempts get no
    answer and time out, as behind a firewall that drops packets."""

    def __enter__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fill = []
        for _ in range(4):
            c = socket.socket()
            c.settimeout(0.3)
            try:
                c.connect(("127.0.0.1", self.port))
            except OSError:
                c.close()
                break
            self.fill.append(c)
        return self

    def __exit__(self, *a):
        for c in self.fill:
            c.close()
        self.sock.close()


def closed_port():
    """A loopback port nothing listens on (connection refused)."""
    return free_port()
