"""The plain inbound path's CPU per message: this checkout against another, head to head.

    python bench/inbound_cpu.py --baseline CHECKOUT [--messages 3000] [--rounds 5]

Two one-worker gateways (inbound checks off) into one smtp-sink: this checkout's
and the baseline checkout's (e.g. a git worktree of the commit before a change).
Postfix's smtp-source sends each the same load (20 sessions, 5 KB messages, a new
connection per message), the two timed in interleaved rounds.  It prints each
one's rate and gateway CPU per message (from /proc), medians over the rounds, and
their ratio; and the median of the rounds' own CPU ratios (the two runs of a
round are back to back, their order alternating), the steadier figure on a busy
host.  With only two gateways up, this is steadier than bench/inbound.py's and
bench/inbound_checks.py's rows for a small difference on the plain path.
Needs root (smtp-sink drops privileges) and Debian's postfix.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.inbound import start_gateway, stop, wait_port
from bench.inbound_checks import process_tree_cpu
from tests.support.ports import free_port

SOURCE = ["smtp-source", "-s", "20", "-l", "5120", "-f", "a@other.example", "-t", "bob@acme.example"]


def send(port: int, messages: int) -> None:
    subprocess.run([*SOURCE, "-m", str(messages), f"127.0.0.1:{port}"], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, metavar="CHECKOUT")
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/inbound_cpu.py needs root (smtp-sink drops privileges)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="portcullis-bench-"))
    sink_port = free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{sink_port}", "1024"])
    gateways = {}
    rates: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    try:
        wait_port(sink_port)
        gateways["this checkout"] = start_gateway(tmp, sink_port, "1", "inbound_checks: false\n",
                                                  name="this")
        gateways[f"baseline {args.baseline}"] = start_gateway(
            tmp, sink_port, "1", "inbound_checks: false\n", name="baseline", checkout=args.baseline)
        for _proc, port in gateways.values():
            send(port, 500)  # warm: the downstream pool filled, the code paths taken
        for round_ in range(args.rounds):
            # ABBA: each round the other one goes first, so a drift in the machine's
            # load (other work on a shared host) weighs on both alike.
            order = list(gateways.items())
            for label, (proc, port) in order if round_ % 2 == 0 else reversed(order):
                before, started = process_tree_cpu(proc.pid), time.perf_counter()
                send(port, args.messages)
                rates.setdefault(label, []).append(args.messages / (time.perf_counter() - started))
                cpu.setdefault(label, []).append((process_tree_cpu(proc.pid) - before) / args.messages)
    finally:
        for proc, _port in gateways.values():
            stop(proc)
        sink.terminate()
        sink.wait(10)
    print(f"\nPlain inbound path, one worker, {args.messages} messages of 5 KB a round, "
          f"median of {args.rounds} interleaved rounds\n")
    print(f"{'gateway':<48} {'msg/s':>8} {'CPU/msg':>10}")
    for label in gateways:
        print(f"{label:<48} {statistics.median(rates[label]):>8.0f} "
              f"{1e6 * statistics.median(cpu[label]):>7.0f} us")
    this, base = list(gateways)
    print(f"\nthis / baseline: rate {statistics.median(rates[this]) / statistics.median(rates[base]):.3f}, "
          f"CPU per message {statistics.median(cpu[this]) / statistics.median(cpu[base]):.3f}")
    # Each round's two runs were back to back: their ratio is the steadier figure
    # when other work shares the machine.
    paired = sorted(t / b for t, b in zip(cpu[this], cpu[base], strict=True))
    print(f"CPU per message, this / baseline round by round: median {statistics.median(paired):.3f} "
          f"(from {paired[0]:.3f} to {paired[-1]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
