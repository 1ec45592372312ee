"""Peak memory for one large message, over its size (issue 14, defect 9).

    python bench/memory.py [--sizes 20,50] [--reference /work/wt-base]

Each row starts ``portcullis serve --workers 1`` (one process) from a source
tree, warms it with a small message, then sends one large message through a
path and reports the process's peak RSS growth (VmHWM, reset just before, minus
VmRSS just before) over the message size.  Paths:

    inbound+checks       the MX, every check on (SPF, DKIM verified against a
                         key in a private NSD, DMARC, ARC), into smtp-sink
    submission+signing   587 with STARTTLS and AUTH, DKIM-signed (RSA-2048)

The reference rows run the same bench on another tree (by default the commit
before issue 14's work, as a git worktree) in the same run.  Goal: under 2.0.
Needs root (smtp-sink drops privileges) and Debian's postfix and nsd.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.inbound import wait_port
from tests.support.authdns import AuthDNS
from tests.support.dkim_keys import rsa_key
from tests.support.gateway_process import (
    GatewayProcess,
    sender_zone,
    signed_inbound_message,
    submitted_message,
)
from tests.support.ports import free_port

MB = 1_000_000
HERE = Path(__file__).resolve().parent.parent


def measure(tree: Path, path: str, size: int, tmp: Path, sink_port: int, dns_port: int,
            message: bytes) -> float:
    gateway = GatewayProcess(tmp, tree, downstream_port=sink_port, dns_port=dns_port).start()
    try:
        send = gateway.send_inbound if path == "inbound+checks" else gateway.send_submission
        small = signed_inbound_message(5000, rsa_key(2048)) if path == "inbound+checks" \
            else submitted_message(5000)
        code, text = send(small)  # warm: modules, pools, caches
        assert code == 250, (code, text)
        outcome: list[tuple[int, bytes]] = []
        growth = gateway.peak_growth(lambda: outcome.append(send(message)))
        assert outcome[0][0] == 250, outcome
        return growth / len(message)
    finally:
        gateway.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20,50", help="message sizes in MB, comma-separated")
    parser.add_argument("--reference", default="/work/wt-base",
                        help="another source tree to measure in the same run ('' for none)")
    args = parser.parse_args()
    sizes = [int(float(s) * MB) for s in args.sizes.split(",")]
    trees = [("this tree", HERE)]
    if args.reference:
        trees.insert(0, (f"reference {args.reference}", Path(args.reference)))
    tmp = Path(tempfile.mkdtemp(prefix="portcullis-memory-"))
    key = rsa_key(2048)
    sink_port = free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{sink_port}", "1024"])
    dns = AuthDNS(sender_zone(key), tmp).start()
    rows = []
    try:
        wait_port(sink_port)
        for size in sizes:
            messages = {"inbound+checks": signed_inbound_message(size, key),
                        "submission+signing": submitted_message(size)}
            for label, tree in trees:
                for path, message in messages.items():
                    run = tmp / f"{len(rows)}"
                    run.mkdir()
                    ratio = measure(tree, path, size, run, sink_port, dns.port, message)
                    rows.append((label, path, len(message), ratio))
                    print(f"  {label:<28} {path:<20} {len(message) / MB:>5.0f} MB  {ratio:5.2f}x",
                          file=sys.stderr)
    finally:
        dns.stop()
        sink.terminate()
        sink.wait(10)
    print("\nPeak RSS growth of the gateway process over the message size (VmHWM)\n")
    print(f"{'tree':<40} {'path':<20} {'size':>8} {'peak/size':>10}")
    for label, path, size, ratio in rows:
        print(f"{label:<40} {path:<20} {size / MB:>6.0f}MB {ratio:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
