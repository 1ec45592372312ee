"""What a new connection costs before its first byte: GatewaySMTP's constructor.

aiosmtpd's ``SMTP.__init__`` finds its hooks, commands and AUTH mechanisms with
``dir()`` and ``inspect.getmembers()`` on the connection and on the handler, for
every connection.  This times the constructor (best of several rounds, µs each):

* as the gateway runs it (``HookDiscovery``: dir() lists the hook names only);
* the same classes (connection and handler) with Python's own ``dir()``: what
  aiosmtpd does unhelped;
* with ``--baseline CHECKOUT``: the constructor of another checkout, in a process
  of its own started in the same run (e.g. a worktree of the commit before a change).

    python bench/connection_setup.py [--baseline CHECKOUT] [--rounds 7] [--n 2000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter from one checkout; prints "<label> <µs>" lines.
TIMING = r"""
import asyncio, sys, time
from gateway.smtp.handler import GatewayHandler
from gateway.smtp.protocol import GatewaySMTP

rounds, n, variants = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
loop = asyncio.new_event_loop()
class FullDir(GatewaySMTP):
    __dir__ = object.__dir__

class FullDirHandler(GatewayHandler):
    __dir__ = object.__dir__

def construct(cls, handler):
    return cls(handler, listener="inbound", offers_auth=False, implicit_tls=False,
               max_errors=10, data_timeout=60, max_line_length=998, hostname="mx.test",
               ident="ESMTP Portcullis", data_size_limit=10_000_000, decode_data=False,
               timeout=60, command_call_limit=1000, loop=loop)

for label in variants:
    cls, handler_cls = (FullDir, FullDirHandler) if label == "full-dir" else (
        GatewaySMTP, GatewayHandler)
    handler = handler_cls.__new__(handler_cls)  # its hooks are found, never called
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            construct(cls, handler)
        best = min(best, (time.perf_counter() - start) / n)
    print(label, f"{best * 1e6:.1f}")
"""


def timed(checkout: Path, rounds: int, n: int, *variants: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", TIMING, str(rounds), str(n), *variants],
        cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)},
        capture_output=True, text=True, check=True, timeout=600)
    return {label: float(us) for label, us in (line.split() for line in out.stdout.splitlines())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    rows = timed(HERE, args.rounds, args.n, "gateway", "full-dir")
    print(f"GatewaySMTP() as the gateway runs it:   {rows['gateway']:7.1f} µs")
    print(f"the same with Python's own dir():       {rows['full-dir']:7.1f} µs")
    if args.baseline is not None:
        base = timed(args.baseline.resolve(), args.rounds, args.n, "gateway")["gateway"]
        print(f"the baseline checkout ({args.baseline.name}): {base:7.1f} µs"
              f"   (this checkout / baseline: {rows['gateway'] / base:.2f})")


if __name__ == "__main__":
    main()
