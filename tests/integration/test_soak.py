"""Soak: the daemon under sustained load, relaying everything to bench/sink,
in rounds that alternate the benchmark's shapes (10 messages per STARTTLS
session, one message per connection, implicit TLS pipelined, several
recipients). After every round: no client saw an error and the daemon is
alive; at the end: every message accepted reached the sink exactly once, the
queue and the journal hold nothing, nothing was logged at error level, and
the daemon's memory did not grow from the first round to the last beyond a
bound (a leak of a few hundred bytes per message shows over a long soak;
with ASan, LeakSanitizer's report at the stop does that job).

`make test` runs it for SUBMITD_SOAK_SECONDS=6 (the smoke run, with the
ASan build as well); `make soak` for 600 seconds (SOAK_SECONDS=N to change)."""

import os
import time

import pytest

from harness import ALICE, LOADGEN, SAN, SINK, SLOW, loadgen, pw, running_sink, wait_until

SECONDS = float(os.environ.get("SUBMITD_SOAK_SECONDS", "6"))
ROUND = 30.0  # seconds per round at most
GROWTH_MAX_KIB = 48 * 1024  # RSS growth allowed from the end of round 1 to the end

pytestmark = pytest.mark.skipif(not os.access(LOADGEN, os.X_OK) or not os.access(SINK, os.X_OK),
                                reason="bench tools not built (make bench-build)")

# (name, loadgen arguments); the port is the STARTTLS one unless "implicit"
SHAPES = [
    ("a: 10 msgs per session", ["-m", "starttls", "-n", "10", "-s", "4096", "-r", "1"]),
    ("b: 1 msg per connection", ["-m", "starttls", "-n", "1", "-s", "4096", "-r", "1"]),
    ("implicit TLS, pipelined, 3 recipients", ["-m", "implicit", "-n", "5", "-s", "20000", "-r", "3", "-P"]),
]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def sink_counts(stats):
    return {k: int(v) for k, v in (kv.split("=") for kv in stats.read_text().split())}


def test_soak(make_daemon, tmp_path, capsys):
    passfile = tmp_path / "pass"
    passfile.write_text(pw(ALICE) + "\n")
    with running_sink(tmp_path) as (sink_port, stats):
        extra = "\n".join([
            "transport sink {", "    type smarthost", f"    url smtp://127.0.0.1:{sink_port}",
            "    starttls optional", "}", "route sink.test sink",
            # the soak is one account sending as fast as it can: the rate
            # limits and the sending baseline are not what it checks
            "ratelimit {", "    messages 1000000/1s", "    recipients 1000000/1s", "    bytes 1024G/1h",
            "    connections 1000000/1s", "    auth 1000000/1s", "    auth-login 1000000/1s", "}",
        ])
        d = make_daemon(extra=extra, listener_extra=["max-connections 1000", "max-connections-per-ip 1000"],
                        limits={"auth-delay": "0"})
        conc = "8" if SLOW > 1 else "20"
        deadline = time.monotonic() + SECONDS
        sent = rcpts = rounds = 0
        rss = []
        i = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0 and rounds >= len(SHAPES):
                break
            name, args = SHAPES[i % len(SHAPES)]
            i += 1
            secs = max(1, min(ROUND, int(left))) if left > 0 else 1
            port = d.tls_port if "implicit" in args else d.port
            rc, r, err = loadgen(["-p", str(port), "-c", conc, "-t", str(secs), "-u", ALICE, "-w", str(passfile),
                                  "-f", ALICE, "-T", "sink.test"] + args, timeout=secs + 60)
            assert rc == 0 and r["errors"] == 0, f"round {rounds + 1} ({name}): {err}\n{d.log_tail()}"
            assert r["msgs"] > 0, f"round {rounds + 1} ({name}) sent nothing"
            d.assert_alive()
            sent += r["msgs"]
            rcpts += r["msgs"] * r["rcpts"]
            rounds += 1
            rss.append(rss_kib(d.pid))

        # every message queued (the client counts only the 250s it read
        # before its time was up) reached the sink, once; nothing left behind
        wait_until(lambda: d.spool_files("queue") == [], 30 * SLOW, what="an empty queue")
        log = d.log_text()
        queued = log.count(" event=queued ")
        assert sent <= queued <= sent + rounds * int(conc), (queued, sent)
        wait_until(lambda: sink_counts(stats)["msgs"] >= queued, 30 * SLOW, interval=0.2,
                   what=f"the sink to have {queued} messages")
        time.sleep(0.5)
        c = sink_counts(stats)
        assert c["msgs"] == queued, (c, queued)
        assert rcpts <= c["rcpts"] <= rcpts + rounds * int(conc) * 3, (c, rcpts)
        errors = [l for l in log.splitlines() if "level=error" in l]
        assert not errors, "\n".join(errors[:20])
        growth = rss[-1] - rss[0]
        with capsys.disabled():
            print(f"\n[soak] {SECONDS:.0f}s: {rounds} rounds, {sent} messages, {rcpts} recipients relayed; "
                  f"RSS {rss[0] // 1024} -> {rss[-1] // 1024} MiB (max {max(rss) // 1024})")
        # (under ASan freed memory sits in its quarantine, and LeakSanitizer
        # checks for leaks at the stop instead)
        assert SAN or growth < GROWTH_MAX_KIB, f"RSS grew by {growth} KiB over the soak: {rss}"
        d.stop()
        closed = [l for l in d.log_text().splitlines() if "event=journal.closed" in l]
        assert closed and " live=0 " in closed[-1], closed
