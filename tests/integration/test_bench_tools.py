"""Smoke tests of the benchmark tools (bench/loadgen, bench/sink; make bench):
a 2-second loadgen run against the daemon over STARTTLS + AUTH PLAIN with
zero errors and every counted message in the Maildir, the same against the
sink without TLS (its counter matches), and idle mode holding TLS sessions.
Built into SUBMITD_BUILD/bench/ by the Makefile's integration target."""

import json
import os
import subprocess
import time

import pytest

from harness import ALICE, BUILD, SLOW, pw, wait_until, free_port

LOADGEN = BUILD / "bench" / "loadgen"
SINK = BUILD / "bench" / "sink"

pytestmark = pytest.mark.skipif(not os.access(LOADGEN, os.X_OK) or not os.access(SINK, os.X_OK),
                                reason=f"bench tools not built in {BUILD}/bench (make bench-build)")


def loadgen(args, timeout=60):
    p = subprocess.run([str(LOADGEN)] + args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout * SLOW)
    lines = p.stdout.strip().splitlines()
    assert lines, f"loadgen printed nothing (rc {p.returncode}):\n{p.stderr}"
    return p.returncode, json.loads(lines[-1]), p.stderr


def test_loadgen_against_submitd(make_daemon, tmp_path):
    d = make_daemon()
    passfile = tmp_path / "pass"
    passfile.write_text(pw(ALICE) + "\n")
    rc, r, err = loadgen(["-p", str(d.port), "-m", "starttls", "-c", "4", "-n", "3", "-s", "2000", "-r", "2",
                          "-t", "2", "-u", ALICE, "-w", str(passfile), "-f", ALICE, "-T", "example.net"])
    assert rc == 0 and r["errors"] == 0, err
    assert r["mode"] == "starttls" and r["conc"] == 4 and r["rcpts"] == 2 and r["seconds"] == 2
    assert r["msgs"] > 0 and r["handshakes"] > 0
    assert r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
    # every message counted was accepted: 2 Maildir files each (one per recipient)
    d.wait_mail(2 * r["msgs"])
    sample = d.mails()[0]
    assert b"Subject: loadgen 2000 bytes" in sample
    assert b"The quick brown fox" in sample


def test_loadgen_against_sink_plain(tmp_path):
    port = free_port()
    stats = tmp_path / "sink.stats"
    sink = subprocess.Popen([str(SINK), "-l", f"127.0.0.1:{port}", "-s", str(stats)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: stats.exists(), 10 * SLOW, what="sink stats file")
        rc, r, err = loadgen(["-p", str(port), "-m", "plain", "-c", "3", "-n", "4", "-s", "5000", "-t", "2",
                              "-P"])
        assert rc == 0 and r["errors"] == 0, err
        assert r["msgs"] > 0 and r["handshakes"] == 0 and r["pipeline"] == 1

        def counted():
            t = stats.read_text()
            n = int(t.split("msgs=")[1].split()[0])
            return n if n >= r["msgs"] else None
        wait_until(counted, 5 * SLOW, what="the sink to count the messages")
    finally:
        sink.terminate()
        assert sink.wait(10) == 0
    final = dict(kv.split("=") for kv in stats.read_text().split())
    assert int(final["msgs"]) >= r["msgs"] and int(final["rcpts"]) == int(final["msgs"])
    assert int(final["open"]) == 0


def test_loadgen_idle_sessions(make_daemon):
    d = make_daemon()
    p = subprocess.Popen([str(LOADGEN), "-p", str(d.port), "-m", "starttls", "-I", "10", "-c", "5", "-t", "30"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(p.stdout.readline())
        assert ready["event"] == "idle_ready"
        assert ready["held"] == 10 and ready["wanted"] == 10 and ready["errors"] == 0
        time.sleep(0.2)
        p.stdin.close()
        done = json.loads(p.stdout.readline())
        assert done == {"event": "idle_done", "held": 10, "dropped_while_held": 0,
                        "client_cpu_s": done["client_cpu_s"]}
        assert p.wait(10 * SLOW) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    # the daemon saw 10 TLS sessions
    assert len(d.log_lines(r"event=tls\.established")) >= 10
