"""An AUTH storm against one gateway process: the replies, the process's memory, and
how long the event loop took to answer a NOOP meanwhile (issue 14, defect 2).

    python -m bench.auth_storm [--connections 100] [--logins 1] [--command-timeout 3]

Starts `portcullis serve` (one worker, SQLite store, implicit TLS on a free loopback
port), opens ``--connections`` TLS sessions, then sends one AUTH PLAIN on each at
the same moment: wrong passwords for ``--logins`` logins taken in turn (with one
login, one connection has the right password).  Meanwhile one more session sends
NOOP every 50 ms; its slowest answer is how long the event loop stalled.  RSS and
its peak (VmRSS, VmHWM) are read from /proc before, right after, and 5 s after the
storm.  Run it with PYTHONPATH pointing at the checkout to measure.
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import smtplib
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import yaml

from tests.support.ports import free_port

PASSWORD = "bench password"


def write_config(d: Path, logins: int, command_timeout: float) -> int:
    from gateway.accounts.passwords import hash_password
    from gateway.dkim.keystore import generate_selector

    generate_selector(d / "keys", "acme.example", "bench", "ed25519-sha256")
    (d / "policy").mkdir()
    accounts = [{"login": f"user{i}@acme.example", "password": hash_password(PASSWORD)}
                for i in range(min(logins, 3))]
    (d / "policy" / "acme.yaml").write_text(yaml.safe_dump({
        "customer": "acme", "domains": ["acme.example"], "accounts": accounts}))
    port = free_port()
    (d / "gateway.yaml").write_text(yaml.safe_dump({
        "hostname": "bench.gateway.test",
        "listeners": {"submissions": {"port": port}},
        "downstream": {"outbound": f"smtp://127.0.0.1:{free_port()}"},
        "policy_dir": "policy",
        "dkim": {"keys_dir": "keys", "check_published": False},
        "store": {"backend": "sqlite", "path": str(d / "state.db")},
        "limits": {"command_timeout": command_timeout},
        # Every login from one address: the per-address lock must not be what bites.
        "lockout": {"ip_failures": 100_000},
    }))
    return port


def memory(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) // 1024
    return out


def client(port: int, ctx: ssl.SSLContext) -> smtplib.SMTP_SSL:
    c = smtplib.SMTP_SSL("127.0.0.1", port, timeout=60, context=ctx)
    c.ehlo("bench.example")
    return c


def storm(port: int, n: int, logins: int) -> tuple[Counter, float]:
    ctx = ssl._create_unverified_context()  # the gateway's development certificate
    results: list[object] = [None] * n
    ready = threading.Barrier(n + 1, timeout=120)
    stall = [0.0]
    done = threading.Event()

    def one(i: int) -> None:
        login = f"user{i % logins}@acme.example"
        password = PASSWORD if (logins == 1 and i == n // 2) else f"wrong{i}"
        try:
            c = client(port, ctx)
        except OSError as exc:
            results[i] = f"connect: {type(exc).__name__}"
            ready.abort()
            return
        try:
            ready.wait()
            blob = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
            code, text = c.docmd("AUTH", "PLAIN " + blob)
            results[i] = f"{code} {text[:40].decode()}"
        except smtplib.SMTPServerDisconnected:
            results[i] = "closed without a reply"
        except (OSError, threading.BrokenBarrierError) as exc:
            results[i] = type(exc).__name__
        finally:
            c.close()

    def probe() -> None:
        c = client(port, ctx)
        ready.wait()
        while not done.is_set():
            start = time.monotonic()
            c.noop()
            stall[0] = max(stall[0], time.monotonic() - start)
            time.sleep(0.05)
        c.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    prober = threading.Thread(target=probe)
    for t in [*threads, prober]:
        t.start()
    for t in threads:
        t.join(120)
    done.set()
    prober.join(30)
    return Counter(results), stall[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--logins", type=int, default=1)
    parser.add_argument("--command-timeout", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="portcullis-bench-") as tmp:
        d = Path(tmp)
        port = write_config(d, args.logins, args.command_timeout)
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "-c", str(d / "gateway.yaml")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                cwd=d)  # not this directory: the gateway is the one PYTHONPATH names
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    client(port, ssl._create_unverified_context()).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit("the gateway did not start") from None
                    time.sleep(0.2)
            before = memory(proc.pid)
            start = time.monotonic()
            codes, stall = storm(port, args.connections, args.logins)
            took = time.monotonic() - start
            after = memory(proc.pid)
            time.sleep(5)
            settled = memory(proc.pid)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    print(f"{args.connections} connections, {args.logins} login(s), command_timeout {args.command_timeout:g} s")
    print(f"replies: {dict(sorted(codes.items(), key=str))}")
    print(f"storm took {took:.1f} s; slowest NOOP meanwhile {stall * 1000:.0f} ms")
    print(f"RSS MB: before {before['VmRSS']} (peak {before['VmHWM']}), right after {after['VmRSS']} (peak {after['VmHWM']}), "
          f"5 s later {settled['VmRSS']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
