"""How fast does rspamd scan, and what does our client add?

Starts a private rspamd (tests/support/rspamd_server.py: Debian's rspamd, stock
rules, network modules off) and, in the same run, on the same messages and at the
same concurrency, measures:

- ``direct``: rspamd's own rate: bare HTTP POSTs to /checkv2 with the same fact
  headers (one pooled aiohttp session, the body read and nothing parsed), the
  fastest any client can go;
- ``client``: our RspamdClient.scan (the SMTP facts as headers, JSON parsed into a
  ScanResult), as the gateway would call it;

then ``direct`` again, because the machine may be shared with other test runs and
the two direct figures show how much the load moved meanwhile.

    /work/venv/bin/python bench/scan.py [--seconds 5] [--concurrency 8] [--workers 2]

The SMTP-path figures (messages/s through the gateway into smtp-sink with scanning
on and off) are measured separately (see docs/content.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from gateway.checks.rspamd import RspamdClient
from tests.support.rspamd_server import GTUBE, RspamdServer

HEAD = (
    b"From: Alice Example <alice@acme.example>\r\n"
    b"To: Bob Example <bob@example.org>\r\n"
    b"Date: Mon, 23 Nov 2026 19:00:00 +0000\r\n"
    b"Message-ID: <%d.bench@acme.example>\r\n"
    b"MIME-Version: 1.0\r\n"
)
LINE = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit.  Sed do eiusmod tempor.\r\n"


def messages() -> list[tuple[str, bytes]]:
    """A small, varied set: plain text, HTML with links, multipart with an attachment, GTUBE."""
    plain = (HEAD % 1 + b"Subject: Quarterly report\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
             + LINE * 60)
    html = (HEAD % 2 + b"Subject: Our spring offers\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            + b"<html><body>" + b"".join(
                b'<p>Offer %d: <a href="https://shop%d.example.com/p?id=%d">buy now</a></p>\r\n'
                % (i, i, i) for i in range(40)) + b"</body></html>\r\n")
    attachment = os.urandom(30_000).hex().encode()
    multipart = (HEAD % 3 + b"Subject: Photos\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
                 b"--XX\r\nContent-Type: text/plain\r\n\r\n" + LINE * 10
                 + b"--XX\r\nContent-Type: application/octet-stream\r\n"
                 b"Content-Disposition: attachment; filename=data.bin\r\n\r\n"
                 + b"\r\n".join(attachment[i:i + 76] for i in range(0, len(attachment), 76))
                 + b"\r\n--XX--\r\n")
    gtube = HEAD % 4 + b"Subject: test\r\n\r\n" + GTUBE + b"\r\n"
    return [("plain", plain), ("html", html), ("multipart", multipart), ("gtube", gtube)]


async def run_for(seconds: float, concurrency: int, one: Callable[[bytes], Awaitable[None]],
                  corpus: list[bytes]) -> tuple[int, list[float], float]:
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    done = 0

    async def worker(k: int) -> None:
        nonlocal done
        i = k
        while time.monotonic() < deadline:
            started = time.monotonic()
            await one(corpus[i % len(corpus)])
            latencies.append(time.monotonic() - started)
            done += 1
            i += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return done, latencies, time.monotonic() - started


def report(name: str, done: int, latencies: list[float], elapsed: float) -> str:
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [0.0] * 99
    return (f"{name:<8} {done / elapsed:8.1f} msg/s   p50 {q[49] * 1000:6.1f} ms   "
            f"p99 {q[98] * 1000:6.1f} ms   ({done} scans in {elapsed:.1f} s)")


async def bench(url: str, seconds: float, concurrency: int) -> list[str]:
    corpus = [m for _, m in messages()]
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))

    # The same facts our client sends, so both ask rspamd for the same work.
    facts = {"From": "alice@acme.example", "Rcpt": "bob@example.org", "IP": "192.0.2.10",
             "Helo": "laptop.acme.example", "User": "alice@acme.example", "Queue-Id": "bench",
             "MTA-Name": "bench.isp.example"}

    async def direct(message: bytes) -> None:
        async with session.post(url + "/checkv2", data=message, headers=facts) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"rspamd answered HTTP {resp.status}")

    client = RspamdClient(url, 30.0, "bench.isp.example", max_connections=concurrency)

    async def ours(message: bytes) -> None:
        await client.scan(message, sender="alice@acme.example", recipients=["bob@example.org"],
                          ip="192.0.2.10", helo="laptop.acme.example", user="alice@acme.example",
                          queue_id="bench")

    try:
        await run_for(min(3.0, seconds), concurrency, direct, corpus)  # warm up
        lines = [report("direct", *await run_for(seconds, concurrency, direct, corpus)),
                 report("client", *await run_for(seconds, concurrency, ours, corpus)),
                 report("direct", *await run_for(seconds, concurrency, direct, corpus))]
    finally:
        await session.close()
        await client.close()
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="rspamd normal worker processes")
    args = ap.parse_args()
    server = RspamdServer(workers=args.workers, hyperscan=True).start()
    try:
        sizes = ", ".join(f"{name} {len(m) // 1024 or 1} KB" for name, m in messages())
        print(f"rspamd {args.workers} workers, concurrency {args.concurrency}, messages: {sizes}")
        print(f"cpus: {os.cpu_count()}, load average before: "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (shared machine)")
        for line in asyncio.run(bench(server.url, args.seconds, args.concurrency)):
            print(line)
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
