"""What a new connection costs before its first byte: GatewaySMTP's constructor.

aiosmtpd's ``SMTP.__init__`` finds its hooks, commands and AUTH mechanisms with
``dir()`` and ``inspect.getmembers()`` on the connection and on the handler, for
every connection; the adapter (gateway/smtp/aiosmtpd_adapter.py) leaves a
connection as that constructor would, with those names found once per class.
This times the constructor (best of several rounds, µs each):

* as the gateway runs it (``SMTPAdapter.init_as_aiosmtpd``);
* the same classes made by aiosmtpd's own ``SMTP.__init__`` with Python's own
  ``dir()``: what aiosmtpd does unhelped;
* with ``--baseline CHECKOUT``: the constructor of another checkout (e.g. a
  worktree of the commit before a change), in processes of its own, its rounds
  interleaved with this checkout's so that both see the same machine.

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
from aiosmtpd.smtp import SMTP
from gateway.smtp.handler import GatewayHandler
from gateway.smtp.protocol import GatewaySMTP

rounds, n, variants = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
loop = asyncio.new_event_loop()
class FullDir(GatewaySMTP):
    __dir__ = object.__dir__

    def init_as_aiosmtpd(self, handler, **kwargs):
        SMTP.__init__(self, handler, **kwargs)

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
    rows: dict[str, float] = {}
    base = float("inf")
    for _ in range(args.rounds):  # interleaved: one round of each at a time
        for label, us in timed(HERE, 1, args.n, "gateway", "full-dir").items():
            rows[label] = min(rows.get(label, us), us)
        if args.baseline is not None:
            base = min(base, timed(args.baseline.resolve(), 1, args.n, "gateway")["gateway"])
    print(f"GatewaySMTP() as the gateway runs it:   {rows['gateway']:7.1f} µs")
    print(f"aiosmtpd's SMTP.__init__, full dir():   {rows['full-dir']:7.1f} µs")
    if args.baseline is not None:
        print(f"the baseline checkout ({args.baseline.name}): {base:7.1f} µs"
              f"   (this checkout / baseline: {rows['gateway'] / base:.2f})")

if __name__ == "__main__":
    main()
