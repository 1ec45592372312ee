"""Inbound throughput and latency: the gateway against Postfix, in one run.

    python bench/inbound.py [--messages 4000] [--sessions 20] [--size 5120] [--warmup 500]
                            [--baseline CHECKOUT] [--rounds 1]

Drives N concurrent sessions with Postfix's smtp-source (a new connection per
message, 5 KB messages) into Postfix's smtp-sink, five ways:

    reference   smtp-source → smtp-sink
    postfix     smtp-source → Postfix relay (a private instance) → smtp-sink
    floor       smtp-source → bench/bare_proxy.py (aiosmtpd + aiosmtplib, nothing else) → smtp-sink
    gateway/1   smtp-source → portcullis serve --workers 1 → smtp-sink
    gateway/N   smtp-source → portcullis serve --workers auto → smtp-sink

and prints messages/s with the ratio against the Postfix relay.  The gateway rows
start afresh for each of ``--rounds`` rounds, with ``--baseline`` this checkout and
the baseline in turn (the one measured second ran up to 10% faster with
``--workers auto``, whichever code it was), and show the medians.  Then it paces
a Python client at half the one-worker peak and prints p50/p99 transaction
latency through the gateway and straight into smtp-sink, and their difference
(the latency the gateway adds).  Needs root (smtp-sink drops to nobody, Postfix
runs as postfix) and Debian's postfix package.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.interpreter import interpreter
from gateway.accounts.passwords import hash_password
from tests.support.ports import free_port
from tests.support.postfix import PostfixInstance

FROM, TO = "sender@other.example", "bob@acme.example"


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(100).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers on port {port}")


def smtp_source_command(sessions: int, size: int, message_file: Path | None = None,
                        sender: str = FROM) -> list[str]:
    """smtp-source with its load, less ``-m`` and the address: ``size`` bytes of
    filler, or ``message_file`` (LF line ends), from ``sender`` to TO."""
    body = ["-F", str(message_file)] if message_file else ["-l", str(size)]
    return ["smtp-source", "-s", str(sessions), *body, "-f", sender, "-t", TO,
            "-M", "client.example"]


def smtp_source(port: int, messages: int, sessions: int, size: int,
                message_file: Path | None = None, sender: str = FROM) -> float:
    """Messages per second as smtp-source measures them from the outside."""
    start = time.perf_counter()
    subprocess.run([*smtp_source_command(sessions, size, message_file, sender),
                    "-m", str(messages), f"127.0.0.1:{port}"], check=True, timeout=600)
    return messages / (time.perf_counter() - start)


def add_load_options(parser: argparse.ArgumentParser, messages: int) -> None:
    """The smtp-source load every inbound bench drives: how much, how wide, how big."""
    parser.add_argument("--messages", type=int, default=messages)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=5120)
    parser.add_argument("--warmup", type=int, default=500,
                        help="untimed messages sent through each path before its timed run")
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                        help="also run the gateway from this checkout (e.g. a git worktree of "
                             "the commit before a change) and print the ratio against it")


def dkim_settings(keys_dir: str, checkout: Path | None = None) -> dict:
    """The gateway file's ``dkim:`` for a bench: its keys are in no DNS, so the
    publication check (dkim.check_published) is off, in a checkout that has it (an
    older one's config would refuse the key)."""
    root = checkout if checkout is not None else Path(__file__).resolve().parent.parent
    has_check = "check_published" in (root / "gateway" / "config" / "dkim.py").read_text()
    return {"keys_dir": keys_dir, **({"check_published": False} if has_check else {})}


def checkout_env(checkout: Path | None) -> dict:
    """Popen arguments that run ``python -m gateway.cli`` from another checkout: with -m
    the working directory comes first on sys.path, before the editable install."""
    if checkout is None:
        return {}
    return {"cwd": str(checkout), "env": {**os.environ, "PYTHONPATH": str(checkout)}}


def warm_up(port: int, args: argparse.Namespace, at_least: int = 0, **source) -> None:  # type: ignore[no-untyped-def]
    """The same untimed load through every path before it is timed: Postfix spawns its
    smtpd processes, the gateway fills its downstream pool (and DNS cache)."""
    count = max(args.warmup, at_least)
    if count:
        smtp_source(port, count, args.sessions, args.size, **source)


def timed_run(port: int, args: argparse.Namespace, **source) -> float:  # type: ignore[no-untyped-def]
    return smtp_source(port, args.messages, args.sessions, args.size, **source)


def start_gateway(tmp: Path, sink_port: int, workers: str, extra: str = "",
                  name: str = "", checkout: Path | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    name = name or workers
    policy = tmp / f"policy-{name}"
    policy.mkdir()
    (policy / "acme.yaml").write_text(
        "customer: acme\ndomains: [acme.example]\naccounts:\n"
        f"  - {{login: alice@acme.example, password: '{hash_password('x')}'}}\n")
    config = tmp / f"gateway-{name}.yaml"
    config.write_text(
        "hostname: mx.bench.example\n"
        f"listeners: {{inbound: {{port: {port}}}}}\n"
        f"downstream: {{inbound: {{url: 'smtp://127.0.0.1:{sink_port}', pool_size: 32}}}}\n"
        f"policy_dir: {policy}\n" + extra)
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "-c", str(config),
                             "--workers", workers, "--log-level", "WARNING"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            **checkout_env(checkout))
    wait_port(port)
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


async def one_transaction(port: int, body: bytes, source: str | None = None) -> float:
    """One message on a new connection (from ``source``, a loopback address, when
    given): seconds from connect to the final reply after DATA."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, local_addr=(source, 0) if source is not None else None)

    async def expect(prefix: bytes) -> None:
        while True:
            line = await reader.readline()
            if not line.startswith(prefix):
                raise RuntimeError(f"unexpected reply {line!r}")
            if line[3:4] == b" ":
                return

    await expect(b"220")
    for command, reply in ((b"EHLO client.example", b"250"), (f"MAIL FROM:<{FROM}>".encode(), b"250"),
                           (f"RCPT TO:<{TO}>".encode(), b"250"), (b"DATA", b"354")):
        writer.write(command + b"\r\n")
        await expect(reply)
    writer.write(body + b".\r\n")
    await expect(b"250")
    elapsed = time.perf_counter() - start
    writer.write(b"QUIT\r\n")
    await expect(b"221")
    writer.close()
    return elapsed


async def paced_latency(port: int, rate: float, duration: float, size: int) -> list[float]:
    """Start transactions at a fixed rate (bounded: rate × duration of them).

    The client's own long-lived objects are frozen first: its full collections
    walked them (17-25 ms, seen with gc.callbacks) in the middle of the run, and
    every transaction then open counted the client's pause as the gateway's."""
    gc.collect()
    gc.freeze()
    line = b"x" * 76 + b"\r\n"
    body = (f"From: {FROM}\r\nTo: {TO}\r\nSubject: bench\r\n\r\n".encode()
            + line * max(1, size // len(line)))
    count = int(rate * duration)
    tasks = []
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one_transaction(port, body)))
    return list(await asyncio.gather(*tasks))


def run_client(coro):  # type: ignore[no-untyped-def]
    """The paced client shares the machine's cores with what it measures: on uvloop
    when installed, it takes about half the CPU asyncio's own loop would."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def percentile(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_options(parser, messages=4000)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1,
                        help="gateway rows measured this many times, this checkout and the "
                             "baseline in turn; the table has the medians")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/inbound.py needs root (smtp-sink and Postfix drop privileges)", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="portcullis-bench-"))
    sink_port = free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{sink_port}", "1024"])
    rows: list[tuple[str, float]] = []

    def timed(port: int) -> float:
        warm_up(port, args)
        return timed_run(port, args)

    try:
        wait_port(sink_port)
        rows.append(("smtp-source → smtp-sink (reference)",
                     timed(sink_port)))

        postfix = PostfixInstance(free_port(), f"[127.0.0.1]:{sink_port}", relay_domains=["acme.example"])
        postfix.start()
        try:
            rows.append(("smtp-source → Postfix relay → smtp-sink",
                         timed(postfix.port)))
        finally:
            postfix.stop()

        # The floor for aiosmtpd + aiosmtplib here: a bare proxy, no product in it.
        bare_port = free_port()
        bare = subprocess.Popen([sys.executable, str(Path(__file__).with_name("bare_proxy.py")),
                                 str(bare_port), str(sink_port)])
        try:
            wait_port(bare_port)
            rows.append(("smtp-source → bare aiosmtpd proxy (floor) → smtp-sink",
                         timed(bare_port)))
        finally:
            stop(bare)

        # Each gateway row from a fresh start, this checkout and the baseline in turn
        # (each round starts with the other): the one run second was faster by up to
        # 10% with --workers auto, whichever code it ran.
        gateway_rates = {}
        for workers in ("1", "auto"):
            found: dict[str, list[float]] = {"this": [], "baseline": []}
            for r in range(args.rounds):
                order = [("this", None)] + ([("baseline", args.baseline)] if args.baseline else [])
                for who, checkout in order[::-1] if r % 2 else order:
                    # The plain path: relay rules, Received:, smuggling guard; no SPF/DKIM/
                    # DMARC (bench/inbound_checks.py measures those).
                    proc, port = start_gateway(tmp, sink_port, workers, "inbound_checks: false\n",
                                               name=f"{who}-{workers}-{r}", checkout=checkout)
                    try:
                        found[who].append(timed(port))
                    finally:
                        stop(proc)
            gateway_rates[workers] = statistics.median(found["this"])
            rows.append((f"smtp-source → portcullis --workers {workers} → smtp-sink", gateway_rates[workers]))
            if args.baseline is not None:
                rows.append((f"  the same, baseline {args.baseline.name}", statistics.median(found["baseline"])))

        proc1, port1 = start_gateway(tmp, sink_port, "1", "inbound_checks: false\n", name="latency")
        try:
            warm_up(port1, args)
            half = gateway_rates["1"] / 2
            through = run_client(paced_latency(port1, half, args.latency_seconds, args.size))
        finally:
            stop(proc1)
        direct = run_client(paced_latency(sink_port, half, args.latency_seconds, args.size))
    finally:
        sink.terminate()
        sink.wait(10)

    postfix_rate = rows[1][1]
    print(f"\nInbound path, {args.messages} messages of {args.size} bytes, {args.sessions} sessions, "
          f"a new connection per message, {os.cpu_count()} cores; gateway rows: the median of "
          f"{args.rounds} round(s); gateways on {interpreter()}\n")
    print(f"{'path':<58} {'msg/s':>9} {'× Postfix relay':>16}")
    for name, rate in rows:
        print(f"{name:<58} {rate:>9.0f} {rate / postfix_rate:>16.2f}")
    if args.baseline is not None:
        print("\nagainst the baseline checkout (this checkout's rate / the baseline's, same run):")
        for i, (name, rate) in enumerate(rows):
            if name.startswith("  the same, baseline"):
                print(f"  {rows[i - 1][0]:<56} {rows[i - 1][1] / rate:>6.3f}")
    print(f"\nLatency per transaction (connect to end of DATA) at {half:.0f} msg/s "
          f"(half the one-worker peak), {len(through)} transactions")
    print(f"{'path':<58} {'p50 ms':>9} {'p99 ms':>9}")
    for name, values in (("through portcullis --workers 1", through), ("straight into smtp-sink", direct)):
        print(f"{name:<58} {percentile(values, 50) * 1000:>9.2f} {percentile(values, 99) * 1000:>9.2f}")
    print(f"{'added by the gateway':<58} "
          f"{(percentile(through, 50) - percentile(direct, 50)) * 1000:>9.2f} "
          f"{(percentile(through, 99) - percentile(direct, 99)) * 1000:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
