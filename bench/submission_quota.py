"""Messages per second through the submission path, quotas off vs on (SQLite, Redis),
into Postfix's smtp-sink, printed as a table.

    python -m bench.submission_quota [--messages 1500] [--connections 8] [--rounds 1] [--baseline CHECKOUT]

Each row starts a gateway process (one worker, implicit TLS on a free loopback
port), a fresh smtp-sink as its downstream, and for the Redis row a private
redis-server; clients log in once per connection and send one-recipient messages
of about 1 KB until ``--messages`` were accepted.  "Quotas on" means the full
metering of docs/quotas.md on every message: suspension check at MAIL, the atomic
check-and-hold of every rate limit at RCPT, commit and compromise assessment after
DATA.  The client runs in this process and shares the machine's cores with the
gateway: compare rows with each other, not with other machines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.inbound import dkim_settings
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer

PASSWORD = "bench password"
LOGIN = "bench@acme.example"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
BIG = 10**9


def write_config(d: Path, sink_port: int, store: dict,
                 checkout: Path | None = None) -> tuple[Path, int]:
    from gateway.accounts.passwords import hash_password
    from gateway.dkim.keystore import generate_selector

    # Submitted mail is DKIM-signed as in production (an Ed25519 key).
    generate_selector(d / "keys", "acme.example", "bench", "ed25519-sha256")
    (d / "policy").mkdir()
    (d / "policy" / "acme.yaml").write_text(yaml.safe_dump({
        "customer": "acme", "domains": ["acme.example"],
        "accounts": [{"login": LOGIN, "password": hash_password(PASSWORD)}]}))
    port = free_port()
    (d / "gateway.yaml").write_text(yaml.safe_dump({
        "hostname": "bench.gateway.test",
        "listeners": {"submissions": {"port": port}},
        "downstream": {"outbound": f"smtp://127.0.0.1:{sink_port}"},
        "policy_dir": "policy",
        "dkim": dkim_settings("keys", checkout),
        "store": store,
        # Limits far above what the run sends: every check is made, none refuses.
        "quotas": {k: BIG for k in ("messages_per_hour", "messages_per_day", "recipients_per_hour",
                                    "recipients_per_day", "concurrent_connections",
                                    "recipient_domains_per_hour")},
        "compromise": {"ceiling_recipients_per_hour": BIG, "spike_minimum": BIG},
    }))
    return d / "gateway.yaml", port


def serve_in_this_process(config: str, quotas: bool) -> None:
    """The gateway process of one row (``--serve``): like `portcullis serve`, with the
    metering switchable for the comparison."""
    from gateway.config.load import load_config
    from gateway.serve import Gateway, configure_logging, install_event_loop_policy, tls_files

    configure_logging("WARNING")
    loaded = load_config(config)

    async def main() -> None:
        gateway = Gateway(loaded, tls_files(loaded.config), quotas=quotas)
        await gateway.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await gateway.stop()

    install_event_loop_policy()
    asyncio.run(main())


async def load(port: int, messages: int, connections: int) -> float:
    import aiosmtplib

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    body = (f"From: {LOGIN}\r\nTo: x@elsewhere.example\r\nSubject: bench\r\n\r\n"
            + "x" * 76 + "\r\n") * 1
    body += ("y" * 76 + "\r\n") * 12
    left = messages

    async def client() -> None:
        nonlocal left
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, use_tls=True, tls_context=ctx,
                               timeout=30)
        await smtp.connect()
        await smtp.login(LOGIN, PASSWORD)
        while left > 0:
            left -= 1
            errors, _ = await smtp.sendmail(LOGIN, ["x@elsewhere.example"], body)
            assert not errors, errors
        await smtp.quit()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    return time.perf_counter() - start


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited: {proc.args}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def run_row(backend: str, quotas: bool, messages: int, connections: int,
            extra: dict | None = None, checkout: Path | None = None) -> float:
    """One row: smtp-sink, a store, one gateway process (``extra`` added to its config)."""
    procs: list[subprocess.Popen] = []
    redis = None
    with tempfile.TemporaryDirectory(prefix="portcullis-bench-") as tmp:
        try:
            sink_port = free_port()
            sink = [SMTP_SINK, f"127.0.0.1:{sink_port}", "256"]
            if os.geteuid() == 0:
                sink[1:1] = ["-u", "nobody"]
            procs.append(subprocess.Popen(sink, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(sink_port, procs[-1])
            if backend == "redis":
                redis = RedisServer().start()
                store = {"backend": "redis", "url": redis.url}
            else:
                store = {"backend": "sqlite", "path": "state.db"}
            config, port = write_config(Path(tmp), sink_port, store, checkout)
            if extra:
                config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), **extra}))
            # From another checkout (--baseline): with -m the working directory comes
            # first on sys.path, so that checkout's gateway and bench are the ones run.
            where = ({"cwd": str(checkout), "env": {**os.environ, "PYTHONPATH": str(checkout)}}
                     if checkout is not None else {})
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench.submission_quota", "--serve", str(config)]
                + ([] if quotas else ["--no-quotas"]), **where))
            wait_port(port, procs[-1])
            return asyncio.run(load(port, messages, connections))
        finally:
            for p in reversed(procs):
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
            if redis is not None:
                redis.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1500)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--no-quotas", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                    help="also run each row's gateway from this checkout (e.g. a git worktree "
                         "of the commit before a change), rows interleaved, and print the ratio")
    ap.add_argument("--rounds", type=int, default=1,
                    help="times each row is run (interleaved with its baseline); the median is kept")
    args = ap.parse_args()
    if args.serve:
        serve_in_this_process(args.serve, not args.no_quotas)
        return
    rows = [("sqlite", False), ("sqlite", True), ("redis", True)]
    print(f"{args.messages} messages, {args.connections} connections, into smtp-sink")
    print(f"{'store':<8} {'quotas':<7} {'seconds':>8} {'msg/s':>8}")
    base = None
    for backend, quotas in rows:
        seen: list[float] = []
        baseline_seen: list[float] = []
        for _ in range(args.rounds):
            seen.append(run_row(backend, quotas, args.messages, args.connections))
            if args.baseline is not None:
                baseline_seen.append(run_row(backend, quotas, args.messages, args.connections,
                                             checkout=args.baseline))
        seconds = statistics.median(seen)
        rate = args.messages / seconds
        base = base or rate
        against = ""
        if baseline_seen:
            against = f"  {statistics.median(baseline_seen) / seconds:.3f}× the baseline"
        print(f"{backend if quotas else '-':<8} {'on' if quotas else 'off':<7} {seconds:>8.2f} "
              f"{rate:>8.0f}  ({rate / base:.0%} of quotas off){against}", flush=True)


if __name__ == "__main__":
    main()
