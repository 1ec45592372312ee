"""What XCLIENT costs: the gateway in front of Postfix, with and without
smtpd_authorized_xclient_hosts, in one run.

    python bench/xclient.py [--messages 2000] [--sessions 10] [--size 5120] [--warmup 200]
                            [--baseline CHECKOUT]

Clients connect from 127.0.0.2 (not an XCLIENT host, as a real customer is not),
a new connection per message, into ``portcullis serve --workers 1`` (MX, no
inbound checks), whose downstream is a private Postfix relaying to smtp-sink:

    plain      Postfix does not list the gateway: no XCLIENT, pooled connections
    xclient    Postfix lists 127.0.0.1 in smtpd_authorized_xclient_hosts and
               ..._xforward_hosts: XCLIENT + EHLO + XFORWARD per message, and
               (Postfix offers no second XCLIENT) no connection reuse

and prints messages/s with the ratio of xclient against plain.  Needs root and
Debian's postfix package.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.inbound import FROM, TO, checkout_env, one_transaction, start_gateway, stop, wait_port
from tests.support.ports import free_port
from tests.support.postfix import PostfixInstance

CLIENT = "127.0.0.2"


async def drive(port: int, messages: int, sessions: int, size: int) -> float:
    """Messages per second, ``sessions`` clients at once, ``messages`` in all (bounded)."""
    line = b"x" * 76 + b"\r\n"
    body = (f"From: {FROM}\r\nTo: {TO}\r\nSubject: bench\r\n\r\n".encode()
            + line * max(1, size // len(line)))
    left = iter(range(messages))

    async def client() -> None:
        for _ in left:
            await one_transaction(port, body, CLIENT)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(sessions)))
    return messages / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=5120)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                        help="also run the plain path's gateway from this checkout")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/xclient.py needs root (smtp-sink and Postfix drop privileges)", file=sys.stderr)
        return 2
    checkout_env(args.baseline)  # fails early on a bad path
    tmp = Path(tempfile.mkdtemp(prefix="portcullis-bench-xclient-"))
    sink_port = free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{sink_port}", "1024"])
    authorized = {"smtpd_authorized_xclient_hosts": "127.0.0.1",
                  "smtpd_authorized_xforward_hosts": "127.0.0.1"}
    rows: list[tuple[str, float, str]] = []
    try:
        wait_port(sink_port)
        runs = [("plain", {}, None), ("xclient", authorized, None)]
        if args.baseline is not None:
            runs.append((f"plain, baseline {args.baseline.name}", {}, args.baseline))
        for name, extra, checkout in runs:
            postfix = PostfixInstance(free_port(), f"[127.0.0.1]:{sink_port}",
                                      relay_domains=["acme.example"], extra=extra).start()
            try:
                proc, port = start_gateway(
                    tmp, postfix.port, "1", "inbound_checks: false\n",
                    name=name.replace(" ", "-").replace(",", ""), checkout=checkout)
                try:
                    asyncio.run(drive(port, args.warmup, args.sessions, args.size))
                    rate = asyncio.run(drive(port, args.messages, args.sessions, args.size))
                finally:
                    stop(proc)
                # Who Postfix saw: proof the run measured what its name says.
                log = postfix.log.read_text()
                seen = f"{log.count(f'client=unknown[{CLIENT}]')} as {CLIENT}, " \
                       f"{log.count('client=localhost[127.0.0.1]')} as the gateway"
                rows.append((name, rate, seen))
            finally:
                postfix.stop()
    finally:
        sink.terminate()
        sink.wait(10)
    plain = rows[0][1]
    print(f"\nGateway (--workers 1) → Postfix → smtp-sink, {args.messages} messages of "
          f"{args.size} bytes, {args.sessions} sessions from {CLIENT}, a new connection "
          f"per message, {os.cpu_count()} cores\n")
    print(f"{'downstream':<32} {'msg/s':>9} {'× plain':>9}   Postfix logged the client")
    for name, rate, seen in rows:
        print(f"{name:<32} {rate:>9.0f} {rate / plain:>9.2f}   {seen}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
