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
import sys
import time
from pathlib import Path

from bench.submission_quota import LOGIN, run_row
from gateway.checks.rspamd import RspamdClient
from tests.support.rspamd_server import RspamdServer

BODY = (f"From: {LOGIN}\r\nTo: x@elsewhere.example\r\nSubject: bench\r\n\r\n"
        + ("y" * 76 + "\r\n") * 13).encode()


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
        off = run_row("sqlite", True, args.messages, args.connections)
        on = run_row("sqlite", True, args.messages, args.connections,
                     extra={"scanner": {"url": rspamd.url, "timeout": 10}})
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
