"""The submission path with rspamd scanning on and off, and rspamd's own rate.

    python -m bench.submission_scan [--messages 600] [--connections 8]

One worker, 465 with AUTH, DKIM-signed, quotas on (SQLite), into smtp-sink; a
private rspamd (tests/support/rspamd_server.py) scores every message when the
scanner is on.  In the same run, rspamd's own rate on the same message is
measured by posting it straight to /checkv2 with the same concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.submission_quota import LOGIN, SMTP_SINK, load, wait_port, write_config
from gateway.checks.rspamd import RspamdClient
from tests.support.ports import free_port
from tests.support.rspamd_server import RspamdServer

BODY = (f"From: {LOGIN}\r\nTo: x@elsewhere.example\r\nSubject: bench\r\n\r\n"
        + ("y" * 76 + "\r\n") * 13).encode()


def run_row(scanner_url: str | None, messages: int, connections: int) -> float:
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="portcullis-bench-") as tmp:
        try:
            sink_port = free_port()
            sink = [SMTP_SINK, f"127.0.0.1:{sink_port}", "256"]
            if os.geteuid() == 0:
                sink[1:1] = ["-u", "nobody"]
            procs.append(subprocess.Popen(sink, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(sink_port, procs[-1])
            config, port = write_config(Path(tmp), sink_port, {"backend": "sqlite", "path": "state.db"})
            if scanner_url:
                data = yaml.safe_load(config.read_text())
                data["scanner"] = {"url": scanner_url, "timeout": 10}
                config.write_text(yaml.safe_dump(data))
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench.submission_quota", "--serve", str(config)]))
            wait_port(port, procs[-1])
            return asyncio.run(load(port, messages, connections))
        finally:
            for p in reversed(procs):
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()


async def rspamd_direct(url: str, messages: int, connections: int) -> float:
    client = RspamdClient(url, 30, "bench.gateway.test", max_connections=connections)
    left = messages

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await client.scan(BODY, sender=LOGIN, recipients=["x@elsewhere.example"],
                              ip="192.0.2.10", helo="client.example", user=LOGIN)

    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(connections)))
    finally:
        await client.close()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=600)
    ap.add_argument("--connections", type=int, default=8)
    args = ap.parse_args()
    rspamd = RspamdServer().start()
    try:
        off = run_row(None, args.messages, args.connections)
        on = run_row(rspamd.url, args.messages, args.connections)
        direct = asyncio.run(rspamd_direct(rspamd.url, args.messages, args.connections))
    finally:
        rspamd.stop()
    print(f"\n{args.messages} messages, {args.connections} connections, into smtp-sink "
          f"(one worker, 465 + AUTH, DKIM, quotas on)")
    print(f"{'path':<44} {'msg/s':>8}")
    for name, seconds in (("submission, scanning off", off), ("submission, scanning on", on),
                          ("rspamd alone, same message (/checkv2)", direct)):
        print(f"{name:<44} {args.messages / seconds:>8.0f}")
    print(f"scanning on / off: {off / on:.0%}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
