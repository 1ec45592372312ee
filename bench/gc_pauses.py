"""The garbage collector's pauses in every Python process a command starts.

    python -m bench.gc_pauses [--over 2] -- python bench/inbound.py --rounds 1

Runs the command with a ``sitecustomize`` on PYTHONPATH that times each
collection (``gc.callbacks``) in every Python process it starts (the bench, the
gateways it starts, their workers), and prints, for each process, how many
collections took longer than ``--over`` milliseconds, by generation, with the
longest and the objects they freed.  A collection pauses the process's event
loop: one in a gateway lands in the middle of transactions (each connection
used to be a reference cycle that only a collection freed; start-up's full
collection ran after the listeners opened).  A diagnosis, not a target.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = '''
import gc, json, os, sys, time
_started = [0.0]
_out = os.path.join({folder!r}, f"{{os.getpid()}}.jsonl")
def _timed(phase, info):
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    took = (time.perf_counter() - _started[0]) * 1000
    if took >= {over!r}:
        with open(_out, "a") as f:
            f.write(json.dumps([" ".join(sys.argv)[:70], info["generation"], took,
                                info["collected"]]) + "\\n")
gc.callbacks.append(_timed)
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--over", type=float, default=2.0, help="milliseconds (default 2)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    with tempfile.TemporaryDirectory(prefix="portcullis-gc-") as folder:
        probe = Path(folder) / "probe"
        probe.mkdir()
        (probe / "sitecustomize.py").write_text(PROBE.format(folder=folder, over=args.over))
        path = os.pathsep.join(p for p in (str(probe), os.environ.get("PYTHONPATH", "")) if p)
        code = subprocess.run(command, env={**os.environ, "PYTHONPATH": path}, check=False).returncode
        print(f"\nCollections of {args.over:g} ms or more, by process (gen: count, longest, "
              f"objects freed in all)")
        for log in sorted(Path(folder).glob("*.jsonl"), key=lambda p: int(p.stem)):
            seen = [json.loads(line) for line in log.read_text().splitlines()]
            by_gen: dict[int, list[tuple[float, int]]] = collections.defaultdict(list)
            for _argv, gen, took, freed in seen:
                by_gen[gen].append((took, freed))
            parts = [f"gen{g}: {len(v)}, {max(t for t, _ in v):.1f} ms, {sum(f for _, f in v)}"
                     for g, v in sorted(by_gen.items())]
            print(f"  {log.stem:>7} {seen[0][0]:<70}  " + "; ".join(parts))
    return code


if __name__ == "__main__":
    sys.exit(main())
